//! The core: every account, session and e-mail rule, behind [`users::Users`], which
//! each wire surface calls with already-validated domain values.
//!
//! * [`users`]: the methods, one per RPC, over a [`crate::store::Store`].
//! * [`policy`]: the rules for new passwords.
//! * [`limits`]: the brute-force limits (attempts reserved before each check), and the
//!   sign-up and e-mail limits.
//! * [`password`]: argon2id hashing on a bounded thread pool, and rehashing.
//! * [`mail`] and [`outbox`]: sending e-mail over SMTP, and the sender that delivers
//!   queued e-mails with retries.
//! * [`transfer`]: export and import of users, sessions and deleted ids.
//! * [`sealing`]: the operator's keys that encrypt TOTP secrets at rest.
//! * [`clock`]: wall-clock time, replaceable in tests.

pub mod clock;
pub mod limits;
pub mod mail;
pub mod outbox;
pub mod password;
pub mod policy;
pub mod sealing;
pub mod totp;
pub mod transfer;
pub mod users;
pub mod webhooks;
