//! tcplb: a Layer-4 (raw TCP) load balancer: N worker threads, each one single-threaded
//! event loop, sharing one view of the fleet through atomics; a control thread for
//! everything else.
//!
//! ```text
//!                      ┌─────────── control (process-wide) ───────────┐
//!  signals, upgrade ──►│ lifecycle: Running ⇄ Standby → Draining → …   │
//!  backends file, DNS ►│ discovery thread builds each fleet generation │──► Arc<Fleet>
//!  health probes ─────►│ admin endpoint, access log writer             │    (atomics per backend)
//!                      └───────────────────────────────────────────────┘
//!                                 │ commands + wakers        ▲ reads
//!       ┌──────────── worker 0 ───▼──────────┐   ┌─ worker N-1 ─┐
//!  SYN ─► listener ─► accept/shed ─► Session │   │    same      │
//!       │  Session = connect/retry + Duplex  │   └──────────────┘
//!       │  Duplex = two Directions, each on  │
//!       │   the buffer path (pooled buffers) │
//!       │   or the splice path (kernel pipes)│
//!       │  timers, run queue, slab, pools    │
//!       └────────────────────────────────────┘
//! ```
//!
//! - [`worker`]: the data path. Each worker accepts on its own `SO_REUSEPORT` listener (or
//!   shares one, or takes several: [`control::sockets`]) and runs its sessions
//!   ([`worker::session`]): with `--accept-proxy` the client's PROXY header is taken first
//!   ([`worker::proxy_header`]); a service with `routes` looks at the client's TLS ClientHello
//!   without taking it ([`worker::hello`]) to choose the pool; a backend is leased from the fleet, connected (retrying
//!   others; a `send-proxy` backend is sent its header), then a [`worker::duplex::Duplex`] of
//!   two [`worker::direction::Direction`]s moves bytes through fixed-size buffers from the
//!   worker's [`worker::pool`], or, for bulk flows on Linux, with `splice(2)` through
//!   kernel pipes from its [`worker::pipes`] pool ([`worker::splice`]). Deadlines live in
//!   the worker's [`worker::timer`] wheel.
//! - [`fleet`]: the backends, shared by every thread: identity, counters and health as
//!   atomics, one [`fleet::backend::Backend::state`] answer to "does it take sessions?",
//!   selection ([`fleet::select`]: least-active, round-robin, random-two, source-hash's
//!   Maglev table), leases, the breaker and check state machines, the builder of each
//!   generation and the discovery thread that runs it.
//! - [`control`]: start-up, signals, the lifecycle, health and agent checks, and handing fleet
//!   generations to the workers; the listening sockets ([`control::sockets`]: bound, or
//!   handed over by the process an upgrade replaces, or by systemd), the upgrade itself
//!   (`SIGUSR2`, [`control::upgrade`]), systemd's protocols ([`control::systemd`]) and the
//!   pid file.
//! - [`admin`]: `/metrics` (summed over workers), `/healthz`, `/backends`, the access log.
//! - [`ctl`]: `tcplb ctl`, the control socket's client and protocol; the control thread
//!   serves it ([`control::ctl`], [`control::commands`]'s commands change backends' runtime
//!   state, which every worker reads through [`fleet::backend::Backend::state`]).
//! - [`service`]: services and the [`service::Topology`] (every service and pool) the workers
//!   see.
//! - [`stats`]: counters and how a session ended (no dependencies); [`config`]: the command
//!   line and the config file; [`proxy_protocol`]: the PROXY protocol's bytes (decode, encode; pure);
//!   [`tls_hello`]: a TLS ClientHello's server name and protocols, for routing by them (pure); [`net`]:
//!   socket set-up; [`limits`]: the open-file limit; [`logging`]: non-blocking logs and
//!   throttled warnings; [`clock`]: time for shared state; [`lifecycle`]; [`version`]: the
//!   version, git commit and build date.
//!
//! The crate is a library so that tests and benchmarks reach the internals; the `tcplb`
//! binary (`src/main.rs`) is a thin wrapper around it.

pub mod access_log;
pub mod admin;
pub mod bpf;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod fleet;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod net;
pub mod proxy_protocol;
pub mod reactor;
pub mod service;
pub mod stats;
pub mod tls_hello;
pub mod version;
pub mod worker;
