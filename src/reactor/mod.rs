//! What both kinds of thread run their loops on, below both the workers and the control
//! thread: the timer wheel ([`timer`]), connection ids and their poll tokens ([`token`]),
//! and throttled warnings ([`throttle`]). Nothing here knows of sessions, backends or
//! services.

pub mod throttle;
pub mod timer;
pub mod token;

pub use throttle::{Throttle, suppressed_note};
pub use token::ConnId;
