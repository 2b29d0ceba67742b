//! Where the process is in its life, as one value that carries what each stage needs:
//! serving; draining after SIGTERM or an upgrade (why, to whom it handed over, what was
//! announced); or stopping. The control thread moves it forward; `/healthz` reports it.

/// The process's stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Accepting and serving.
    Running,
    /// Not accepting; live sessions may finish for up to `drain-timeout`.
    Draining(Drain),
    /// Sessions are being cut; the process exits as soon as every worker has stopped.
    Stopping,
}

/// A drain under way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    /// What started it (`SIGTERM`, `upgrade to pid 42`).
    pub why: String,
    /// The process an upgrade handed over to, if that is why.
    pub successor: Option<u32>,
    /// Sessions open once every listener had closed (`None` until then: the line that says
    /// how many are left waits for it, so it is true when read).
    pub announced: Option<usize>,
    /// SIGTERMs and SIGINTs since the drain began.
    pub stop_signals: u32,
}

impl Lifecycle {
    pub fn as_str(&self) -> &'static str {
        match self {
            Lifecycle::Running => "running",
            Lifecycle::Draining(_) => "draining",
            Lifecycle::Stopping => "stopping",
        }
    }

    /// Accepting new clients.
    pub fn is_running(&self) -> bool {
        *self == Lifecycle::Running
    }

    /// The process an upgrade handed over to, if it has.
    pub fn successor(&self) -> Option<u32> {
        match self {
            Lifecycle::Draining(drain) => drain.successor,
            _ => None,
        }
    }
}
