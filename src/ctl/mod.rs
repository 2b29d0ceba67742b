//! `tcplb ctl`: steering a running tcplb through its control socket. [`protocol`] is the
//! wire format and the commands, shared by both ends; [`client`] is the `tcplb ctl`
//! subcommand; the rows it shows are `admin::show`'s. The server end is the control
//! thread's (`control::ctl` accepts and reads, `control::commands` carries the commands
//! out).

pub mod client;
pub mod protocol;
