//! Where the process is in its life, as one value that carries what each stage needs:
//! serving; standing by while the new process of an upgrade is on probation; draining
//! after SIGTERM or an upgrade (why, what was announced); or
//! stopping. The control thread moves it forward (from standing by, back to serving too);
//! `/healthz` reports it.

/// The process's stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Accepting and serving.
    Running,
    /// Not accepting: the new process of an upgrade serves on the same sockets, on
    /// probation (`upgrade-probation`). Live sessions go on; this process takes over
    /// again if the new one dies, and drains once the probation has passed.
    Standby,
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
            Lifecycle::Standby => "standing by",
            Lifecycle::Draining(_) => "draining",
            Lifecycle::Stopping => "stopping",
        }
    }

    /// Accepting new clients.
    pub fn is_running(&self) -> bool {
        *self == Lifecycle::Running
    }

    /// Serving, or ready to serve again: it keeps its view of the backends current
    /// (reloads, health checks).
    pub fn may_serve(&self) -> bool {
        matches!(self, Lifecycle::Running | Lifecycle::Standby)
    }
}
