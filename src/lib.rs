//! tcplb: a Layer-4 (raw TCP) load balancer: one event loop thread, with helper threads for
//! the work that would block it.
//!
//! A client connection is accepted by the [`reactor`], paired by a [`session`] with a backend
//! chosen by the [`balancer`] (least active sessions per unit of weight, among backends the
//! [`health`] state allows), and bytes are piped both ways by two [`pipe`]s through
//! fixed-size buffers from the [`pool`]. Deadlines live in the [`timer`] wheel.
//!
//! Around that core: [`config`] reads the command line; [`discovery`] resolves backend names
//! and re-reads the backends file off the reactor thread; [`probe`] runs active health
//! checks; [`admin`] serves `/metrics` ([`metrics`]), `/healthz` and `/backends`;
//! [`access_log`] writes one line per session; [`net`] wraps socket set-up; [`limits`] fits
//! the session cap in the open-file limit; [`logging`] sets up logs and throttles bursts of
//! warnings; [`context`] is the state the handlers share.
//!
//! The crate is a library so that tests and benchmarks reach the internals; the `tcplb`
//! binary (`src/main.rs`) is a thin wrapper around it.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod config;
pub mod context;
pub mod discovery;
pub mod health;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pipe;
pub mod pool;
pub mod probe;
pub mod reactor;
pub mod session;
pub mod timer;
