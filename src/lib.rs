//! `users-service`: user accounts and password sign-in over HTTP, wire-compatible with
//! the Micro `users` service (`POST /users/Users/<Method>`) and M3O's User API
//! (`POST /v1/user/<Method>`).
//!
//! The layers, each depending only on the ones listed before it:
//!
//! * [`error`]: the outcomes a client can act on, one kind each.
//! * [`metrics`]: the counters and gauges every layer updates, served as `GET /metrics`.
//! * [`domain`]: validated types (parse, don't validate), the records the core returns,
//!   and the secrets it hands out (session and e-mail tokens, reset codes).
//! * [`store`]: persistence, as traits by concern (accounts, sessions, one-time tokens
//!   and the e-mail outbox, counters, transfer), implemented once in SQL for SQLite and
//!   PostgreSQL.
//! * [`core`]: every rule of the service behind one type, [`core::users::Users`], with
//!   the password policy, the limits, hashing, e-mail and its sender, export and import.
//! * [`http`]: the router, the guard in front of it, the two wire surfaces and their
//!   error shape, all calling the same core.
//! * [`config`] and [`server`]: the command line and the running process, which put the
//!   layers together; [`admin`]: the operator's `user` commands on the same core;
//!   [`log_line`] and [`log_sink`]: how a log line is made, and where it goes.

pub mod admin;
pub mod config;
pub mod core;
pub mod domain;
pub mod error;
pub mod http;
pub mod log_line;
pub mod log_sink;
pub mod metrics;
pub mod server;
pub mod store;

pub use error::Error;
