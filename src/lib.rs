//! `users-service`: user accounts and password sign-in over HTTP, wire-compatible with
//! the Micro `users` service (`POST /users/Users/<Method>`).
//!
//! The crate is layered so that each rule lives in one place:
//!
//! * [`domain`]: validated newtypes (parse, don't validate) and the records the core returns.
//! * [`service`]: the one core, [`service::Users`], that every wire surface calls.
//! * [`store`]: the [`store::Store`] trait and its SQL implementation for SQLite and PostgreSQL.
//! * [`password`] and [`session`]: argon2id hashing off the async runtime, session tokens.
//! * [`tokens`], [`mail`] and [`outbox`]: the one-time tokens of e-mailed links and
//!   codes, sending those e-mails over SMTP, and the sender that delivers queued ones.
//! * [`policy`] and [`limits`]: the password policy, brute-force and sign-up limits.
//! * [`http`]: the router, the two wire surfaces (Micro `users` and M3O's User API) and
//!   their error shape.
//! * [`transfer`]: export and import of users and sessions between stores.
//! * [`config`] and [`server`]: command-line configuration and the running process.

pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod http;
pub mod limits;
pub mod mail;
pub mod outbox;
pub mod password;
pub mod policy;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod tokens;
pub mod transfer;

pub use error::Error;
