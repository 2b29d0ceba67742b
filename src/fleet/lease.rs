//! One session's hold on a backend: counts it active until released or dropped, exactly
//! once, whichever way the session ends and on whichever worker.

use crate::fleet::backend::Backend;
use std::sync::Arc;

#[derive(Debug)]
pub struct Lease {
    backend: Arc<Backend>,
    /// This session is the breaker's half-open trial and its connect has no outcome yet.
    trial: bool,
}

impl Lease {
    /// The lease of a session already counted on `backend` ([`Backend::try_acquire`]).
    pub(crate) fn counted(backend: Arc<Backend>, trial: bool) -> Lease {
        Lease { backend, trial }
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// The connect's outcome is known: the session is no longer a pending trial. Returns
    /// whether it was one.
    pub(crate) fn settle_trial(&mut self) -> bool {
        std::mem::replace(&mut self.trial, false)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.release();
        if self.trial {
            self.backend
                .shared_breaker()
                .update(|b| b.on_trial_abandoned());
        }
    }
}
