//! How a new session's backend is chosen within a group (the primaries, or the backups):
//! the [`Selector`] seam, one type per algorithm.
//!
//! A selector is built with each fleet generation over that generation's group, is shared
//! by every worker, and must pick without a lock and in time independent of the group's
//! size. It only chooses: taking the lease, the breaker's trial and failing open are the
//! fleet's (`fleet/mod.rs`).

pub mod least_active;

use crate::fleet::backend::Backend;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// What a pick may look at besides the backends' load and state.
#[derive(Clone, Copy, Debug)]
pub struct PickRequest<'a> {
    /// The client's address (for algorithms that keep a client on one backend).
    pub client: Option<IpAddr>,
    /// Milliseconds since the clock's epoch.
    pub now: u64,
    /// Backends (by id) already tried for this client: never picked again.
    pub tried: &'a [u64],
}

/// A balancing algorithm over one group of backends.
pub trait Selector: Send + Sync + fmt::Debug {
    /// The name `--balance` takes and `/backends` shows.
    fn name(&self) -> &'static str;

    /// The index in `members` of the backend a new session should go to: one whose state
    /// takes sessions at `request.now` and not in `request.tried`; `None` if there is none.
    fn pick(&self, members: &[Arc<Backend>], request: &PickRequest) -> Option<usize>;

    /// `members[index]`'s load, weight or state has changed.
    fn refresh(&self, _members: &[Arc<Backend>], _index: usize, _now: u64) {}

    /// Anything may have changed (after a reload was adopted by every worker).
    fn refresh_all(&self, _members: &[Arc<Backend>], _now: u64) {}
}

/// The algorithm `--balance` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    LeastActive,
}

impl Balance {
    /// A selector of this kind over `members`.
    pub fn build(self, members: &[Arc<Backend>], now: u64) -> Box<dyn Selector> {
        match self {
            Balance::LeastActive => Box::new(least_active::LeastActive::new(members, now)),
        }
    }
}
