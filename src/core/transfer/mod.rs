//! Moving accounts between stores: `users-service export` writes every user (with its
//! password hash as a PHC string) and every live session as JSON lines; `import` reads
//! them back into any store, all or nothing. Users keep their passwords and sessions
//! keep working, so an app can move from SQLite to PostgreSQL without anyone noticing.
//!
//! The format, one JSON object per line:
//!
//! ```text
//! {"type":"header","format":"users-service","version":1}
//! {"type":"user","id":"...","username":"...","email":"...","password_hash":"$argon2id$...","created":1700000000,"updated":1700000000,"verified":true,"verification_date":1700000100,"profile":{"plan":"free"}}
//! {"type":"session","token_hash":"<sha256 hex>","user_id":"...","created":1700000000,"expires":1700604800}
//! (and, when known, "client_ip", "user_agent", "last_seen", "method" and "second_factor")
//! {"type":"deleted_user","id":"...","deleted":1700000000}
//! {"type":"second_factors","user_id":"...","totp_secret":"<base32>","totp_created":1700000000,"totp_confirmed":1700000030,"totp_last_step":56666667,"recovery_codes":["<sha256 hex>"]}
//! ```
//!
//! `passkey` records carry a passkey: its credential as webauthn-rs keeps it (the public
//! key, the counter), its name and use.
//!
//! `second_factors` records carry a user's TOTP secret in the clear (an authenticator
//! app needs it back, so the service keeps it whole; an export opens the ones sealed
//! under `--encryption-key`, and an import seals them under the first key given) and
//! the digests of the unused recovery codes: an export is more sensitive than a
//! database whose secrets are sealed.
//!
//! A `service_key` record carries a key the service made for itself: the one its
//! passkey sign-ins by a name without passkeys make their decoy credentials with, so
//! that those stay the same after a move (`{"type":"service_key","name":
//! "passkey_decoys","key":"<base64url>","created":1700000000}`). An import adds it to
//! a store that has none; a store with another refuses the import, or with
//! `--skip-existing` keeps its own.
//!
//! `deleted_user` records carry the ids of deleted accounts, so that the target store
//! never issues them again either; an import refuses a user with such an id.
//!
//! `verified`, `verification_date` and `profile` may be left out (files written before
//! they existed): they default to false, 0 and `{}`. One-time e-mail tokens are not
//! exported; they live minutes to a day and can be sent again.

pub mod sources;

use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

use crate::core::password::formats::FirebaseProject;
use sources::Source;

use crate::core::password::{CostLimits, StoredHash};
use crate::core::sealing::{OpenError, Sealed, SealingKeys};
use crate::core::users::bounded_user_agent;
use crate::core::users::passkeys::check_service_key;
use crate::domain::{Email, Profile, User, UserId, Username};
use crate::domain::{SecondFactor, SignIn, SignInMethod, TokenDigest};
use crate::store::{
    Credentials, DeletedUser, Imported, Importer, ServiceKey, StoreError, StoredFactors,
    StoredPasskey, StoredSession, TotpRecord, TransferStore,
};

const FORMAT: &str = "users-service";
const VERSION: u32 = 1;
/// Rows read per query while exporting.
const PAGE: u32 = 1000;
/// Problems listed in a refused import's report; the rest are counted.
const MAX_LISTED: usize = 20;
/// Records written per statement by an import.
const BATCH: usize = 500;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header {
        format: String,
        version: u32,
    },
    User(UserLine),
    Session {
        token_hash: String,
        user_id: String,
        created: i64,
        expires: i64,
        /// What the user sees of the session (ListSessions); older exports lack them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_ip: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<i64>,
        /// How it was signed in: `password` or `magic_link`, and `totp` or
        /// `recovery_code` when a second step was taken; older exports lack them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        second_factor: Option<String>,
    },
    DeletedUser {
        id: String,
        deleted: i64,
    },
    /// A user's TOTP secret (`totp_confirmed` absent while enrolment is only started)
    /// and the SHA-256 digests of their unused recovery codes.
    SecondFactors {
        user_id: String,
        totp_secret: String,
        totp_created: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        totp_confirmed: Option<i64>,
        totp_last_step: i64,
        #[serde(default)]
        recovery_codes: Vec<String>,
    },
    /// A passkey: the credential as webauthn-rs keeps it (its public key and counter).
    Passkey {
        credential_id: String,
        user_id: String,
        name: String,
        passkey: serde_json::Value,
        counter: i64,
        created: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_used: Option<i64>,
    },
    /// A key the service made for itself (a secret).
    ServiceKey {
        name: String,
        key: String,
        created: i64,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserLine {
    id: String,
    username: String,
    email: String,
    password_hash: String,
    created: i64,
    updated: i64,
    #[serde(default)]
    verified: bool,
    #[serde(default)]
    verification_date: i64,
    #[serde(default)]
    profile: BTreeMap<String, String>,
}

/// How an import treats what it reads.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Skip users and sessions whose id already exists instead of refusing the import.
    pub skip_existing: bool,
    /// The most a password hash may cost to check.
    pub limits: CostLimits,
    /// The keys TOTP secrets are sealed under as they are written.
    pub sealing: SealingKeys,
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("cannot read or write the data")]
    Io(#[from] std::io::Error),
    #[error("the database failed")]
    Store(#[from] StoreError),
    #[error("{}", refusal(.problems, *.total))]
    Refused { problems: Vec<String>, total: usize },
    #[error("the TOTP secret of user {user_id} cannot be read: {source}")]
    Unsealed { user_id: String, source: OpenError },
}

fn refusal(problems: &[String], total: usize) -> String {
    let mut text = format!("import refused, nothing was written ({total} problem(s)):");
    for problem in problems {
        text.push_str("\n  ");
        text.push_str(problem);
    }
    if total > problems.len() {
        text.push_str(&format!("\n  ... and {} more", total - problems.len()));
    }
    text
}

/// Counts of what an export wrote or an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub users: u64,
    pub sessions: u64,
    /// Ids of deleted accounts.
    pub deleted_users: u64,
    /// Users' second factors (a TOTP secret with its recovery codes).
    pub second_factors: u64,
    pub passkeys: u64,
    /// Keys the service made for itself.
    pub service_keys: u64,
    /// Records an import skipped: existing ones under `--skip-existing`, and sessions
    /// that had expired.
    pub skipped: u64,
}

/// Writes the header, every user, every session live at `now` and every id of a deleted
/// account.
pub async fn export(
    store: &dyn TransferStore,
    now: i64,
    sealing: &SealingKeys,
    out: &mut impl Write,
) -> Result<Summary, TransferError> {
    let mut summary = Summary::default();
    write_line(
        out,
        &Line::Header {
            format: FORMAT.into(),
            version: VERSION,
        },
    )?;
    let mut after = None;
    loop {
        let page = store.users_page(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.user.created, last.user.id.clone()));
        for Credentials {
            user,
            password_hash,
        } in page
        {
            write_line(
                out,
                &Line::User(UserLine {
                    id: user.id,
                    username: user.username,
                    email: user.email,
                    password_hash,
                    created: user.created,
                    updated: user.updated,
                    verified: user.verified,
                    verification_date: user.verification_date,
                    profile: user.profile.into_map(),
                }),
            )?;
            summary.users += 1;
        }
    }
    let mut after = None;
    loop {
        let page = store.sessions_page(after.take(), now, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.digest.clone());
        for session in page {
            write_line(
                out,
                &Line::Session {
                    token_hash: session.digest.as_str().to_owned(),
                    user_id: session.user_id,
                    created: session.created,
                    expires: session.expires,
                    client_ip: session.client_ip,
                    user_agent: session.user_agent,
                    last_seen: session.last_seen,
                    method: session.sign_in.map(|s| s.method.as_str().to_owned()),
                    second_factor: session
                        .sign_in
                        .and_then(|s| s.second_factor)
                        .map(|f| f.as_str().to_owned()),
                },
            )?;
            summary.sessions += 1;
        }
    }
    let mut after = None;
    loop {
        let page = store.deleted_users_page(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for DeletedUser { id, deleted } in page {
            write_line(out, &Line::DeletedUser { id, deleted })?;
            summary.deleted_users += 1;
        }
    }
    let mut after = None;
    loop {
        let page = store.factors_page(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        for StoredFactors {
            user_id,
            totp,
            recovery_codes,
        } in page
        {
            let totp_secret = sealing
                .open(Sealed::TotpSecret, &user_id, &totp.secret)
                .map_err(|source| TransferError::Unsealed {
                    user_id: user_id.clone(),
                    source,
                })?;
            write_line(
                out,
                &Line::SecondFactors {
                    user_id,
                    totp_secret,
                    totp_created: totp.created,
                    totp_confirmed: totp.confirmed,
                    totp_last_step: totp.last_step,
                    recovery_codes: recovery_codes
                        .iter()
                        .map(|c| c.as_str().to_owned())
                        .collect(),
                },
            )?;
            summary.second_factors += 1;
        }
    }
    let mut after = None;
    loop {
        let page = store.passkeys_page(after.take(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.credential_id.clone());
        for key in page {
            let passkey = serde_json::from_str(&key.passkey)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            write_line(
                out,
                &Line::Passkey {
                    credential_id: key.credential_id,
                    user_id: key.user_id,
                    name: key.name,
                    passkey,
                    counter: key.counter,
                    created: key.created,
                    last_used: key.last_used,
                },
            )?;
            summary.passkeys += 1;
        }
    }
    for ServiceKey {
        name,
        value,
        created,
    } in store.service_keys().await?
    {
        write_line(
            out,
            &Line::ServiceKey {
                name,
                key: value,
                created,
            },
        )?;
        summary.service_keys += 1;
    }
    out.flush()?;
    Ok(summary)
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), TransferError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// What a refused import reports: how many problems, and the [`MAX_LISTED`] first by
/// line number in full (records are checked in batches, so not always in line order).
#[derive(Default)]
struct Report {
    problems: Vec<(usize, String)>,
    total: usize,
}

impl Report {
    fn add(&mut self, line: usize, problem: impl Into<String>) {
        self.total += 1;
        self.problems.push((line, problem.into()));
        if self.problems.len() >= 2 * MAX_LISTED {
            self.keep_first();
        }
    }

    fn keep_first(&mut self) {
        self.problems.sort_by_key(|(line, _)| *line);
        self.problems.truncate(MAX_LISTED);
    }

    /// The problems listed, by line; or, for an export of another system converted
    /// to this format, by record (the header is line 1, its first record line 2).
    fn into_listed(mut self, converted: bool) -> Vec<String> {
        self.keep_first();
        self.problems
            .into_iter()
            .map(|(line, problem)| match converted {
                false => format!("line {line}: {problem}"),
                true => format!("record {}: {problem}", line.saturating_sub(1).max(1)),
            })
            .collect()
    }
}

/// Records waiting to be written, with their line numbers.
struct Batch<T> {
    lines: Vec<usize>,
    records: Vec<T>,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            lines: Vec::with_capacity(BATCH),
            records: Vec::with_capacity(BATCH),
        }
    }

    fn push(&mut self, line: usize, record: T) {
        self.lines.push(line);
        self.records.push(record);
    }

    fn is_full(&self) -> bool {
        self.records.len() >= BATCH
    }
}

async fn flush_users(
    importer: &mut dyn Importer,
    batch: &mut Batch<Credentials>,
    summary: &mut Summary,
    report: &mut Report,
) -> Result<(), TransferError> {
    let outcomes = importer.users(&batch.records).await?;
    for ((line, record), outcome) in batch.lines.iter().zip(&batch.records).zip(outcomes) {
        match outcome {
            Imported::Inserted => summary.users += 1,
            Imported::Skipped => summary.skipped += 1,
            Imported::Taken(field) => report.add(
                *line,
                format!("user {:?}: {field} is already taken", record.user.id),
            ),
            Imported::Deleted => report.add(
                *line,
                format!(
                    "user {:?}: the id belongs to a deleted account",
                    record.user.id
                ),
            ),
            Imported::UnknownUser => {}
        }
    }
    batch.lines.clear();
    batch.records.clear();
    Ok(())
}

async fn flush_sessions(
    importer: &mut dyn Importer,
    batch: &mut Batch<StoredSession>,
    summary: &mut Summary,
    report: &mut Report,
) -> Result<(), TransferError> {
    let outcomes = importer.sessions(&batch.records).await?;
    for ((line, record), outcome) in batch.lines.iter().zip(&batch.records).zip(outcomes) {
        match outcome {
            Imported::Inserted => summary.sessions += 1,
            Imported::Skipped => summary.skipped += 1,
            Imported::Taken(_) => report.add(*line, "the session already exists"),
            Imported::UnknownUser | Imported::Deleted => report.add(
                *line,
                format!("session of unknown user {:?}", record.user_id),
            ),
        }
    }
    batch.lines.clear();
    batch.records.clear();
    Ok(())
}

async fn flush_factors(
    importer: &mut dyn Importer,
    batch: &mut Batch<StoredFactors>,
    summary: &mut Summary,
    report: &mut Report,
) -> Result<(), TransferError> {
    let outcomes = importer.factors(&batch.records).await?;
    for ((line, record), outcome) in batch.lines.iter().zip(&batch.records).zip(outcomes) {
        match outcome {
            Imported::Inserted => summary.second_factors += 1,
            Imported::Skipped => summary.skipped += 1,
            Imported::Taken(_) => report.add(
                *line,
                format!("user {:?} has second factors already", record.user_id),
            ),
            Imported::UnknownUser | Imported::Deleted => report.add(
                *line,
                format!("second factors of unknown user {:?}", record.user_id),
            ),
        }
    }
    batch.lines.clear();
    batch.records.clear();
    Ok(())
}

async fn flush_passkeys(
    importer: &mut dyn Importer,
    batch: &mut Batch<StoredPasskey>,
    summary: &mut Summary,
    report: &mut Report,
) -> Result<(), TransferError> {
    let outcomes = importer.passkeys(&batch.records).await?;
    for ((line, record), outcome) in batch.lines.iter().zip(&batch.records).zip(outcomes) {
        match outcome {
            Imported::Inserted => summary.passkeys += 1,
            Imported::Skipped => summary.skipped += 1,
            Imported::Taken(_) => report.add(
                *line,
                format!("passkey {:?} exists already", record.credential_id),
            ),
            Imported::UnknownUser | Imported::Deleted => report.add(
                *line,
                format!("passkey of unknown user {:?}", record.user_id),
            ),
        }
    }
    batch.lines.clear();
    batch.records.clear();
    Ok(())
}

async fn flush_deleted_users(
    importer: &mut dyn Importer,
    batch: &mut Batch<DeletedUser>,
    summary: &mut Summary,
    report: &mut Report,
) -> Result<(), TransferError> {
    let outcomes = importer.deleted_users(&batch.records).await?;
    for ((line, record), outcome) in batch.lines.iter().zip(&batch.records).zip(outcomes) {
        match outcome {
            Imported::Inserted => summary.deleted_users += 1,
            Imported::Skipped => summary.skipped += 1,
            _ => report.add(
                *line,
                format!("deleted id {:?} is the id of a user", record.id),
            ),
        }
    }
    batch.lines.clear();
    batch.records.clear();
    Ok(())
}

/// Reads an export of `source` (this service's, or another system's, converted first;
/// see [`sources`]) and imports it as [`import`] does.
pub async fn import_from(
    store: &dyn TransferStore,
    now: i64,
    source: Source,
    mut input: impl AsyncBufRead + Unpin,
    firebase: Option<&FirebaseProject>,
    options: ImportOptions,
) -> Result<Summary, TransferError> {
    if source == Source::UsersService {
        return import(store, now, input, &options).await;
    }
    let mut text = String::new();
    input.read_to_string(&mut text).await?;
    let converted = sources::convert(source, &text, firebase, now).map_err(|problem| {
        TransferError::Refused {
            problems: vec![problem],
            total: 1,
        }
    })?;
    import_lines(store, now, converted.as_bytes(), &options, true).await
}

/// Reads an export and adds it to `store` in one transaction. Every line is checked
/// (format, validation, conflicts) before anything is committed; any problem refuses
/// the whole import with a report of each one. Records are written in batches.
pub async fn import(
    store: &dyn TransferStore,
    now: i64,
    input: impl AsyncBufRead + Unpin,
    options: &ImportOptions,
) -> Result<Summary, TransferError> {
    import_lines(store, now, input, options, false).await
}

/// [`import`]; `converted`: the lines are another system's export converted
/// ([`sources`]), so problems are reported by record rather than by line.
async fn import_lines(
    store: &dyn TransferStore,
    now: i64,
    input: impl AsyncBufRead + Unpin,
    options: &ImportOptions,
    converted: bool,
) -> Result<Summary, TransferError> {
    let mut importer = store.begin_import(options.skip_existing).await?;
    let mut summary = Summary::default();
    let mut report = Report::default();
    let mut users = Batch::new();
    let mut sessions = Batch::new();
    let mut deleted = Batch::new();
    let mut factors = Batch::new();
    let mut passkeys = Batch::new();
    let mut service_keys = Batch::new();
    let mut lines = input.lines();
    let mut number = 0usize;
    let mut saw_header = false;
    while let Some(text) = lines.next_line().await? {
        number += 1;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = match serde_json::from_str(&text) {
            Ok(line) => line,
            Err(err) => {
                report.add(number, format!("not a record of this format: {err}"));
                continue;
            }
        };
        match line {
            Line::Header { format, version } => {
                if saw_header || format != FORMAT || version != VERSION {
                    report.add(number, format!("unexpected header (format {format:?}, version {version}); expected one {FORMAT:?} version {VERSION} header first"));
                }
                saw_header = true;
            }
            _ if !saw_header => {
                report.add(
                    number,
                    format!("the first record must be the {FORMAT:?} header"),
                );
                saw_header = true;
            }
            Line::User(line) => match check_user(line, &options.limits) {
                Ok(credentials) => {
                    users.push(number, credentials);
                    if users.is_full() {
                        flush_users(importer.as_mut(), &mut users, &mut summary, &mut report)
                            .await?;
                    }
                }
                Err(problem) => report.add(number, problem),
            },
            Line::Session {
                token_hash,
                user_id,
                created,
                expires,
                client_ip,
                user_agent,
                last_seen,
                method,
                second_factor,
            } => match check_session(token_hash, user_id, created, expires).and_then(|session| {
                Ok(StoredSession {
                    client_ip,
                    user_agent: user_agent.map(|agent| bounded_user_agent(&agent).to_owned()),
                    last_seen,
                    sign_in: check_sign_in(method.as_deref(), second_factor.as_deref())?,
                    ..session
                })
            }) {
                Ok(session) if session.expires <= now => summary.skipped += 1,
                Ok(session) => {
                    // A session's user may be among the users not written yet.
                    flush_users(importer.as_mut(), &mut users, &mut summary, &mut report).await?;
                    sessions.push(number, session);
                    if sessions.is_full() {
                        flush_sessions(importer.as_mut(), &mut sessions, &mut summary, &mut report)
                            .await?;
                    }
                }
                Err(problem) => report.add(number, problem),
            },
            Line::SecondFactors {
                user_id,
                totp_secret,
                totp_created,
                totp_confirmed,
                totp_last_step,
                recovery_codes,
            } => match check_factors(
                user_id,
                TotpRecord {
                    secret: totp_secret,
                    created: totp_created,
                    confirmed: totp_confirmed,
                    last_step: totp_last_step,
                },
                recovery_codes,
                &options.sealing,
            ) {
                Ok(record) => {
                    // Its user may be among the users not written yet.
                    flush_users(importer.as_mut(), &mut users, &mut summary, &mut report).await?;
                    factors.push(number, record);
                    if factors.is_full() {
                        flush_factors(importer.as_mut(), &mut factors, &mut summary, &mut report)
                            .await?;
                    }
                }
                Err(problem) => report.add(number, problem),
            },
            Line::Passkey {
                credential_id,
                user_id,
                name,
                passkey,
                counter,
                created,
                last_used,
            } => match check_passkey(StoredPasskey {
                credential_id,
                user_id,
                name,
                passkey: passkey.to_string(),
                counter,
                created,
                last_used,
            }) {
                Ok(key) => {
                    flush_users(importer.as_mut(), &mut users, &mut summary, &mut report).await?;
                    passkeys.push(number, key);
                    if passkeys.is_full() {
                        flush_passkeys(importer.as_mut(), &mut passkeys, &mut summary, &mut report)
                            .await?;
                    }
                }
                Err(problem) => report.add(number, problem),
            },
            Line::ServiceKey { name, key, created } => match check_service_key(&name, &key) {
                Ok(()) => service_keys.push(
                    number,
                    ServiceKey {
                        name,
                        value: key,
                        created,
                    },
                ),
                Err(problem) => report.add(number, problem),
            },
            Line::DeletedUser { id, deleted: at } => {
                match UserId::parse("id", Some(id)) {
                    Ok(id) if at >= 0 => {
                        // Users not written yet are checked against it when they are.
                        flush_users(importer.as_mut(), &mut users, &mut summary, &mut report)
                            .await?;
                        deleted.push(
                            number,
                            DeletedUser {
                                id: id.as_str().to_owned(),
                                deleted: at,
                            },
                        );
                        if deleted.is_full() {
                            flush_deleted_users(
                                importer.as_mut(),
                                &mut deleted,
                                &mut summary,
                                &mut report,
                            )
                            .await?;
                        }
                    }
                    Ok(_) => report.add(number, "deleted must be >= 0"),
                    Err(problem) => report.add(number, problem.to_string()),
                }
            }
        }
    }
    flush_users(importer.as_mut(), &mut users, &mut summary, &mut report).await?;
    flush_sessions(importer.as_mut(), &mut sessions, &mut summary, &mut report).await?;
    flush_deleted_users(importer.as_mut(), &mut deleted, &mut summary, &mut report).await?;
    flush_factors(importer.as_mut(), &mut factors, &mut summary, &mut report).await?;
    flush_passkeys(importer.as_mut(), &mut passkeys, &mut summary, &mut report).await?;
    let outcomes = importer.service_keys(&service_keys.records).await?;
    for ((line, key), outcome) in service_keys
        .lines
        .iter()
        .zip(&service_keys.records)
        .zip(outcomes)
    {
        match outcome {
            Imported::Inserted => summary.service_keys += 1,
            Imported::Skipped => summary.skipped += 1,
            _ => report.add(
                *line,
                format!(
                    "service key {:?}: the database has another (--skip-existing keeps it)",
                    key.name
                ),
            ),
        }
    }
    if !saw_header {
        report.add(number.max(1), "empty input: no header");
    }
    if report.total > 0 {
        // Dropping the importer rolls its transaction back.
        drop(importer);
        let total = report.total;
        return Err(TransferError::Refused {
            problems: report.into_listed(converted),
            total,
        });
    }
    importer.commit().await?;
    Ok(summary)
}

/// The same rules as Create, so an import cannot bring in what the API would refuse;
/// usernames and e-mails are normalised the same way.
fn check_user(line: UserLine, limits: &CostLimits) -> Result<Credentials, String> {
    let UserLine {
        id,
        username,
        email,
        password_hash,
        created,
        updated,
        verified,
        verification_date,
        profile,
    } = line;
    let id = UserId::parse("id", Some(id)).map_err(|e| e.to_string())?;
    let username = Username::parse(Some(username)).map_err(|e| e.to_string())?;
    let email = Email::parse(Some(email)).map_err(|e| e.to_string())?;
    let profile = Profile::parse(profile).map_err(|e| e.to_string())?;
    let hash = StoredHash::parse(&password_hash).map_err(|e| format!("password_hash: {e}"))?;
    hash.check_cost(limits)
        .map_err(|e| format!("password_hash: {e}"))?;
    if created < 0 || updated < created {
        return Err("created must be >= 0 and updated >= created".into());
    }
    if verification_date < 0 || (verification_date > 0) != verified {
        return Err("verification_date must be > 0 exactly when verified is true".into());
    }
    Ok(Credentials {
        user: User {
            id: id.as_str().to_owned(),
            username: username.as_str().to_owned(),
            email: email.as_str().to_owned(),
            created,
            updated,
            verified,
            verification_date,
            profile,
        },
        password_hash,
    })
}

fn check_session(
    token_hash: String,
    user_id: String,
    created: i64,
    expires: i64,
) -> Result<StoredSession, String> {
    if !is_digest(&token_hash) {
        return Err("token_hash must be 64 lowercase hex digits (a SHA-256)".into());
    }
    let user_id = UserId::parse("user_id", Some(user_id)).map_err(|e| e.to_string())?;
    if created < 0 || expires < created {
        return Err("created must be >= 0 and expires >= created".into());
    }
    Ok(StoredSession {
        digest: TokenDigest::from_stored(token_hash),
        user_id: user_id.as_str().to_owned(),
        created,
        expires,
        client_ip: None,
        user_agent: None,
        last_seen: None,
        sign_in: None,
    })
}

fn is_digest(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A user's second factors: a base32 secret the service can use (sealed under
/// `sealing`'s key as it is stored), and digests.
fn check_factors(
    user_id: String,
    mut totp: TotpRecord,
    recovery_codes: Vec<String>,
    sealing: &SealingKeys,
) -> Result<StoredFactors, String> {
    let user_id = UserId::parse("user_id", Some(user_id)).map_err(|e| e.to_string())?;
    crate::core::totp::check_secret(&totp.secret).map_err(|e| format!("totp_secret: {e}"))?;
    if totp.created < 0 || totp.last_step < 0 || totp.confirmed.is_some_and(|c| c < 0) {
        return Err("totp_created, totp_confirmed and totp_last_step must be >= 0".into());
    }
    totp.secret = sealing
        .seal(Sealed::TotpSecret, user_id.as_str(), &totp.secret)
        .map_err(|e| e.to_string())?;
    if let Some(bad) = recovery_codes.iter().find(|c| !is_digest(c)) {
        return Err(format!(
            "recovery code {bad:?} is not 64 lowercase hex digits (a SHA-256)"
        ));
    }
    Ok(StoredFactors {
        user_id: user_id.as_str().to_owned(),
        totp,
        recovery_codes: recovery_codes
            .into_iter()
            .map(TokenDigest::from_stored)
            .collect(),
    })
}

/// A passkey the service can use: its credential parses, under its id.
fn check_passkey(key: StoredPasskey) -> Result<StoredPasskey, String> {
    UserId::parse("user_id", Some(key.user_id.clone())).map_err(|e| e.to_string())?;
    crate::core::users::passkey_name(Some(key.name.clone())).map_err(|e| e.to_string())?;
    let parsed: webauthn_rs::prelude::Passkey = serde_json::from_str(&key.passkey)
        .map_err(|e| format!("passkey {:?} is not a credential: {e}", key.credential_id))?;
    use base64::Engine;
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parsed.cred_id());
    if id != key.credential_id {
        return Err(format!(
            "passkey {:?}: credential_id is not the credential's id",
            key.credential_id
        ));
    }
    if key.counter < 0 || key.created < 0 {
        return Err("a passkey's counter and created must be >= 0".into());
    }
    Ok(key)
}

/// A session's `method` and `second_factor`, both optional (older exports).
fn check_sign_in(
    method: Option<&str>,
    second_factor: Option<&str>,
) -> Result<Option<SignIn>, String> {
    let Some(method) = method else {
        return match second_factor {
            None => Ok(None),
            Some(_) => Err("second_factor needs a method".into()),
        };
    };
    let method = SignInMethod::from_stored(method)
        .ok_or_else(|| format!("method {method:?} is not password or magic_link"))?;
    let second_factor = second_factor
        .map(|f| {
            SecondFactor::from_stored(f)
                .ok_or_else(|| format!("second_factor {f:?} is not totp or recovery_code"))
        })
        .transpose()?;
    Ok(Some(SignIn {
        method,
        second_factor,
    }))
}
