//! Where the process is in its life, as one value: serving, draining after SIGTERM (or an
//! upgrade), or stopping. The control thread moves it forward; `/healthz` reports it.

/// The process's stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Accepting and serving.
    Running,
    /// Not accepting; live sessions may finish for up to `--drain-timeout`.
    Draining,
    /// Sessions are being cut; the process exits as soon as every worker has stopped.
    Stopping,
}

impl Lifecycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Draining => "draining",
            Lifecycle::Stopping => "stopping",
        }
    }

    /// Accepting new clients.
    pub fn is_running(self) -> bool {
        self == Lifecycle::Running
    }
}
