//! Fault tolerance: the process killed in the middle of a write storm, a password change
//! racing logins and logouts, and a SQLite database whose disk fills up or turns
//! read-only.
//!
//! The PostgreSQL variants need `TEST_DATABASE_URL` and say they were skipped without it.
//! The disk tests mount a small tmpfs, which needs root; without that permission they
//! say they were skipped, unless `USERS_REQUIRE_PRIVILEGED_TESTS` is set, in which case
//! they fail.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{command, Service};
use common::{assert_error, Backend, TestApp, TestDatabase, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::{Barrier, Notify};
use tokio::task::{block_in_place, JoinSet};
use users_service::config::ServeConfig;

/// Longest any single request of these tests may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Turns the brute-force and sign-up limits off: these tests send many logins and
/// sign-ups from one address, some of them with a password that no longer works.
fn limits_off(config: &mut ServeConfig) {
    config.limits.login_max_failures = 0;
    config.limits.login_max_failures_per_ip = 0;
    config.limits.create_per_hour = 0;
}

/// The real binary on `db`, with the limits off.
fn start_service(db: &TestDatabase, dir: &Path) -> Service {
    let mut cmd = command(dir);
    cmd.args(["--listen", "127.0.0.1:0", "--database-url", &db.raw_url])
        .env("USERS_LOGIN_MAX_FAILURES", "0")
        .env("USERS_LOGIN_MAX_FAILURES_PER_IP", "0")
        .env("USERS_CREATE_PER_HOUR", "0");
    block_in_place(|| Service::start(cmd))
}

/// SIGKILL: the process gets no chance to finish anything.
fn crash(service: &mut Service) {
    block_in_place(|| {
        service.child.kill().expect("SIGKILL sent");
        service.child.wait().expect("killed process reaped");
    });
}

/// SIGTERM, and the exit status once the process has stopped.
fn terminate(service: Service) -> std::process::ExitStatus {
    block_in_place(|| service.terminate().0)
}

/// A client of the Micro RPC routes of one running service.
struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("client"),
            base: format!("http://{addr}"),
        }
    }

    fn url(&self, method: &str) -> String {
        format!("{}/users/Users/{method}", self.base)
    }

    async fn call(&self, method: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(method))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} got no answer: {e}"));
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} answered non-JSON ({e}): {text:?}"));
        (status, value)
    }

    /// Logs in by username.
    async fn login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        self.call("Login", json!({"username": username, "password": password}))
            .await
    }
}

// ---------------------------------------------------------------------------------------
// 1. Crash safety: every write the service acknowledged survives a SIGKILL.
// ---------------------------------------------------------------------------------------

/// Concurrent clients of the storm.
const STORM_CLIENTS: usize = 6;
/// Steps each client takes at most. A step is one request, or two (Login, then
/// UpdatePassword) one time in four: these clients send at most 375 requests.
const STORM_OPS_PER_CLIENT: usize = 50;
/// More clients, each of which creates one account and then only updates its profile
/// (even ones) or signs in and out again (odd ones): Updates and Logouts have no
/// password hash to compute, so they commit many at a time, share the group syncs of
/// SQLite (and Logouts its batched transactions), and arrive together at PostgreSQL's
/// commits.
const FAST_CLIENTS: usize = 8;
/// Updates each of them sends at most; the kill normally stops them first.
const FAST_OPS_PER_CLIENT: usize = 2_000;
/// The process is killed once the first clients' writes have been acknowledged this
/// many times...
const KILL_AFTER_ACKS: usize = 120;
/// ...or when the storm has run this long, whichever comes first.
const STORM_TIME_LIMIT: Duration = Duration::from_secs(20);
/// Fewer acknowledged writes than this at the kill would make the test meaningless.
const MIN_ACKS: usize = 20;

/// What became of one request of the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Answered 200: the change must survive the crash.
    Acked,
    /// Sent, but the connection died before an answer: the change may or may not have
    /// been applied, and if it was, then completely.
    Unknown,
    /// The connection was refused: the request never reached the service.
    NotSent,
}

/// One account of the storm: everything asked of it and what was acknowledged. Each
/// account belongs to one client, which sends its requests one at a time, so at most one
/// request per account (its last) can be in flight at the crash.
#[derive(Debug)]
struct Account {
    id: String,
    /// Profile version `v` is username `<base>-v<v>` and email `<base>-v<v>@example.com`;
    /// Create writes version 0 and each Update the next version, both fields at once.
    base: String,
    created: Fate,
    /// The last acknowledged version, and the one whose Update was in flight at the crash.
    version: u32,
    version_in_flight: Option<u32>,
    /// Every password given to the account in order (Create's first), and the index of
    /// the last acknowledged one and of the one whose change was in flight at the crash.
    passwords: Vec<String>,
    password: usize,
    password_in_flight: Option<usize>,
    /// Sessions from acknowledged Logins, each with the index of the password it was
    /// opened with.
    sessions: Vec<(String, usize)>,
    /// Sessions whose Logout was acknowledged, and the one whose Logout was in flight.
    ended: Vec<String>,
    ending: Option<String>,
}

impl Account {
    fn new(client: usize, n: usize) -> Self {
        Self {
            id: format!("storm-{client}-{n}"),
            base: format!("c{client}-a{n}"),
            created: Fate::NotSent,
            version: 0,
            version_in_flight: None,
            passwords: vec![format!("storm-pass-{client}-{n}-0-x")],
            password: 0,
            password_in_flight: None,
            sessions: Vec::new(),
            ended: Vec::new(),
            ending: None,
        }
    }

    fn username(&self, version: u32) -> String {
        format!("{}-v{version}", self.base)
    }

    fn email(&self, version: u32) -> String {
        format!("{}-v{version}@example.com", self.base)
    }
}

/// Shared by the storm's clients and the test that kills the process.
struct Storm {
    api: Api,
    /// Writes acknowledged to the first `STORM_CLIENTS` clients, which trigger the kill.
    acks: AtomicUsize,
    /// Writes acknowledged to every client.
    all_acks: AtomicUsize,
    kill_now: Notify,
    /// Set just before the SIGKILL: a request that fails before then is a failure of
    /// the service, not of the crash.
    killed: AtomicBool,
}

impl Storm {
    /// Sends one write, and returns what became of it with the answer's body (null when
    /// there is none). Any answer but 200 while the service is up fails the test.
    async fn send(&self, client: usize, method: &str, body: Value) -> (Fate, Value) {
        match self
            .api
            .client
            .post(self.api.url(method))
            .json(&body)
            .send()
            .await
        {
            // The status line is written once the handler has finished (and committed):
            // it acknowledges the write even if the body is then cut off by the kill.
            Ok(response) if response.status() == StatusCode::OK => {
                self.all_acks.fetch_add(1, Ordering::SeqCst);
                if client < STORM_CLIENTS
                    && self.acks.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER_ACKS
                {
                    self.kill_now.notify_one();
                }
                (Fate::Acked, response.json().await.unwrap_or(Value::Null))
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                panic!("{method} answered {status} during the storm: {text}");
            }
            Err(err) => {
                assert!(
                    self.killed.load(Ordering::SeqCst),
                    "{method} failed while the service was up: {err}"
                );
                let fate = if err.is_connect() {
                    Fate::NotSent
                } else {
                    Fate::Unknown
                };
                (fate, Value::Null)
            }
        }
    }
}

/// One client of the storm: creates accounts and changes their profiles and passwords,
/// one request at a time, until its requests fail (the process was killed) or it has
/// sent its share. Returns its accounts, and whether the kill interrupted it.
async fn storm_client(storm: Arc<Storm>, client: usize) -> (Vec<Account>, bool) {
    let mut accounts = Vec::new();
    let steps = if client < STORM_CLIENTS {
        STORM_OPS_PER_CLIENT
    } else {
        FAST_OPS_PER_CLIENT
    };
    for op in 0..steps {
        if !storm_step(&storm, client, op, &mut accounts).await {
            return (accounts, true);
        }
    }
    (accounts, false)
}

/// The client's `op`th step: a Create, an Update, or a Login then an UpdatePassword.
/// False when a request was not acknowledged; what it may have done is recorded.
async fn storm_step(storm: &Storm, client: usize, op: usize, accounts: &mut Vec<Account>) -> bool {
    let fast = client >= STORM_CLIENTS;
    if accounts.is_empty() || (!fast && op.is_multiple_of(4)) {
        let mut account = Account::new(client, accounts.len());
        let body = json!({
            "id": account.id,
            "username": account.username(0),
            "email": account.email(0),
            "password": account.passwords[0],
        });
        account.created = storm.send(client, "Create", body).await.0;
        let acked = account.created == Fate::Acked;
        accounts.push(account);
        return acked;
    }
    // Every account here was acknowledged (the client stops at the first request that
    // was not); spread the changes over them.
    let n = (op * 5 + client) % accounts.len();
    let account = &mut accounts[n];
    if fast && client % 2 == 1 {
        // Its password never changes: a session it does not end must survive.
        let Some(Some(session)) = sign_in(storm, client, account).await else {
            // Not acknowledged, or the body was cut off by the kill: nothing to end.
            return false;
        };
        let logout = json!({"session_id": session});
        match storm.send(client, "Logout", logout).await.0 {
            Fate::Acked => account.ended.push(session),
            Fate::Unknown => account.ending = Some(session),
            Fate::NotSent => return false,
        }
        return account.ending.is_none();
    }
    if !fast && op % 4 == 2 {
        // A session under the current password first, for the change to revoke.
        if sign_in(storm, client, account).await.is_none() {
            return false;
        }
        let next = account.passwords.len();
        let new_password = format!("storm-pass-{client}-{n}-{next}-x");
        let body = json!({
            "user_id": account.id,
            "old_password": account.passwords[account.password],
            "new_password": new_password,
            "confirm_password": new_password,
        });
        account.passwords.push(new_password);
        match storm.send(client, "UpdatePassword", body).await.0 {
            Fate::Acked => account.password = next,
            Fate::Unknown => account.password_in_flight = Some(next),
            Fate::NotSent => {}
        }
        account.password == next
    } else {
        let next = account.version + 1;
        let body = json!({
            "id": account.id,
            "username": account.username(next),
            "email": account.email(next),
        });
        match storm.send(client, "Update", body).await.0 {
            Fate::Acked => account.version = next,
            Fate::Unknown => account.version_in_flight = Some(next),
            Fate::NotSent => {}
        }
        account.version == next
    }
}

/// Signs in to `account` with its current username and password: `None` when the
/// Login was not acknowledged; otherwise the session's id, kept in the account's
/// sessions with the password it was opened with (`None` inside when the body was cut
/// off by the kill).
async fn sign_in(storm: &Storm, client: usize, account: &mut Account) -> Option<Option<String>> {
    let login = json!({
        "username": account.username(account.version),
        "password": account.passwords[account.password],
    });
    let (fate, answer) = storm.send(client, "Login", login).await;
    if fate != Fate::Acked {
        return None;
    }
    let session = answer["session"]["id"].as_str().map(str::to_owned);
    if let Some(id) = &session {
        account.sessions.push((id.clone(), account.password));
    }
    Some(session)
}

/// Runs the storm against the real binary on `db`, kills the process with SIGKILL in
/// the middle of it, and checks the database after a restart.
///
/// What is accepted after the crash, for each account:
/// - Create acknowledged: the user exists. Create in flight: the user exists, complete
///   (as below), or not at all. Create refused at connect: the user does not exist.
/// - Its username and email are both those of one profile version (never one field of
///   one version and the other of another): the last acknowledged version, or the
///   version whose Update was in flight at the crash.
/// - Exactly one of every password the account was ever given logs in: the last
///   acknowledged one, or the one whose change was in flight at the crash. Every other
///   password, the ones an acknowledged change replaced included, answers 401.
/// - A change is never half-applied: the sessions opened with the password that works
///   are all readable, and every session opened with an earlier one is revoked.
/// - The store holds no user the storm did not create, and every user has a password
///   hash.
async fn acknowledged_writes_survive_a_crash(backend: Backend, test: &str) {
    let sqlite = matches!(backend, Backend::Sqlite);
    let Some(db) = TestDatabase::create(backend, test).await else {
        return;
    };
    let cwd = tempfile::tempdir().unwrap();
    let mut first = start_service(&db, cwd.path());
    let storm = Arc::new(Storm {
        api: Api::new(first.addr),
        acks: AtomicUsize::new(0),
        all_acks: AtomicUsize::new(0),
        kill_now: Notify::new(),
        killed: AtomicBool::new(false),
    });
    let mut clients = JoinSet::new();
    for client in 0..STORM_CLIENTS + FAST_CLIENTS {
        clients.spawn(storm_client(storm.clone(), client));
    }
    // The kill is triggered by the acknowledgements; the time limit only bounds the
    // test on a machine too slow to reach them.
    let _ = tokio::time::timeout(STORM_TIME_LIMIT, storm.kill_now.notified()).await;
    if sqlite {
        every_acknowledged_write_was_synced(&storm).await;
    }
    storm.killed.store(true, Ordering::SeqCst);
    crash(&mut first);
    let acked = storm.acks.load(Ordering::SeqCst);
    wait_for_orphaned_backends(&db).await;

    let (mut accounts, mut interrupted) = (Vec::new(), 0);
    while let Some(result) = clients.join_next().await {
        let (mine, cut_off) = result.expect("storm client");
        accounts.extend(mine);
        interrupted += usize::from(cut_off);
    }
    assert!(
        acked >= MIN_ACKS,
        "only {acked} writes were acknowledged in {STORM_TIME_LIMIT:?}"
    );
    assert!(
        interrupted > 0,
        "the kill came after the storm had ended: no client was interrupted"
    );
    eprintln!(
        "{test}: killed after {acked} + {} acknowledged writes ({} of them Logouts); {} \
         accounts; {interrupted} of {} clients interrupted",
        storm.all_acks.load(Ordering::SeqCst) - acked,
        accounts.iter().map(|a| a.ended.len()).sum::<usize>(),
        accounts.len(),
        STORM_CLIENTS + FAST_CLIENTS
    );

    // Straight after the crash, before the service runs again: every user in the store
    // is one the storm may have created, and every one has a password hash.
    let export = block_in_place(|| {
        command(cwd.path())
            .args(["export", "--database-url", &db.raw_url])
            .output()
            .expect("export runs")
    });
    assert!(
        export.status.success(),
        "export after the crash failed: {}",
        String::from_utf8_lossy(&export.stderr)
    );
    let mut exported = HashSet::new();
    for line in String::from_utf8(export.stdout).unwrap().lines() {
        let record: Value = serde_json::from_str(line).expect("export writes JSON lines");
        if record["type"] != "user" {
            continue;
        }
        let id = record["id"].as_str().expect("user id").to_owned();
        let account = accounts
            .iter()
            .find(|a| a.id == id)
            .unwrap_or_else(|| panic!("a user the storm did not create: {record}"));
        assert_ne!(
            account.created,
            Fate::NotSent,
            "a Create refused at connect exists: {record}"
        );
        assert!(
            record["password_hash"]
                .as_str()
                .is_some_and(|h| h.starts_with("$argon2id$")),
            "a user without a password hash: {record}"
        );
        exported.insert(id);
    }

    let second = start_service(&db, cwd.path());
    let api = Api::new(second.addr);
    for account in &accounts {
        if account.created == Fate::NotSent {
            continue;
        }
        let (status, body) = api.call("Read", json!({"id": account.id})).await;
        if account.created == Fate::Unknown && status == StatusCode::NOT_FOUND {
            assert!(
                !exported.contains(&account.id),
                "exported, yet not found: {account:?}"
            );
            continue;
        }
        assert_eq!(status, 200, "acknowledged Create lost: {account:?}: {body}");
        assert!(
            exported.contains(&account.id),
            "missing from the export: {account:?}"
        );
        let user = &body["user"];
        let username = user["username"].as_str().unwrap();
        let versions = [Some(account.version), account.version_in_flight];
        let version = versions
            .into_iter()
            .flatten()
            .find(|v| username == account.username(*v))
            .unwrap_or_else(|| {
                panic!("username is neither the acknowledged nor the in-flight one: {account:?}: {user}")
            });
        assert_eq!(
            user["email"],
            account.email(version),
            "half-applied Update (username of version {version}, email of another): \
             {account:?}: {user}"
        );
        let (status, found) = api
            .call("Search", json!({"email": account.email(version)}))
            .await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(found["users"], json!([user]), "{account:?}");

        let mut working = Vec::new();
        for (i, password) in account.passwords.iter().enumerate() {
            let answer = api.login(username, password).await;
            match answer.0.as_u16() {
                200 => working.push(i),
                401 => assert_error(&answer, "Login", 401, "incorrect"),
                other => panic!("Login answered {other}: {}", answer.1),
            }
        }
        let accepted = [Some(account.password), account.password_in_flight];
        assert!(
            working.len() == 1 && accepted.contains(&Some(working[0])),
            "passwords that log in: {working:?}; expected exactly one of {accepted:?}: \
             {account:?}"
        );
        for (session, opened_with) in &account.sessions {
            let answer = api
                .call("ReadSession", json!({"session_id": session}))
                .await;
            if account.ended.contains(session) {
                assert_eq!(
                    answer.0, 401,
                    "an acknowledged Logout was lost: {account:?}: {}",
                    answer.1
                );
                assert_error(&answer, "ReadSession", 401, "session not found");
            } else if account.ending.as_ref() == Some(session) {
                assert!(
                    [200, 401].contains(&answer.0.as_u16()),
                    "a session whose Logout was in flight: {account:?}: {}",
                    answer.1
                );
            } else if *opened_with == working[0] {
                assert_eq!(
                    answer.0, 200,
                    "a session of the password in force is gone: {account:?}: {}",
                    answer.1
                );
            } else {
                assert_eq!(
                    answer.0, 401,
                    "a session of a replaced password survived: {account:?}: {}",
                    answer.1
                );
                assert_error(&answer, "ReadSession", 401, "session not found");
            }
        }
    }
    assert!(terminate(second).success());
}

/// On SQLite, in the middle of the storm: the group syncs have made at least as many
/// writes durable as had been acknowledged before this looked, so no write was answered
/// before its sync (each acknowledged request made one write or more); and the
/// checkpoints beside the writer are running.
async fn every_acknowledged_write_was_synced(storm: &Storm) {
    let acked = storm.all_acks.load(Ordering::SeqCst);
    let metrics = storm
        .api
        .client
        .get(format!("{}/metrics", storm.api.base))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{metrics}"))
    };
    let synced = counter("users_db_synced_writes_total ");
    let syncs = counter("users_db_wal_syncs_total ");
    let checkpoints = counter("users_db_wal_checkpoints_total ");
    let resets = counter("users_db_wal_resets_total ");
    assert!(
        synced >= acked as u64,
        "{acked} writes were acknowledged, but the group syncs made only {synced} durable"
    );
    // The storm's writes are checkpointed beside the writer while it is killed.
    assert!(checkpoints > 0, "no WAL checkpoint during the storm");
    eprintln!(
        "{acked} writes acknowledged; {synced} made durable by {syncs} WAL syncs; \
         {checkpoints} checkpoints, {resets} of the WAL"
    );
}

/// On PostgreSQL, a backend of the killed process can still be finishing a statement it
/// had received (a COMMIT, say): waits until every one has gone, so that the checks see
/// the final state of the database rather than one that changes under them.
async fn wait_for_orphaned_backends(db: &TestDatabase) {
    if !db.raw_url.starts_with("postgres") {
        return;
    }
    let mut conn = sqlx::PgConnection::connect(&db.raw_url)
        .await
        .expect("connect to the test database");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for _ in 0..200 {
        let (left,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_activity");
        if left == 0 {
            conn.close().await.expect("connection closed");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} backends of the killed process are still connected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("backends of the killed process are still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_writes_survive_a_crash() {
    acknowledged_writes_survive_a_crash(
        Backend::Sqlite,
        "faults::sqlite_acknowledged_writes_survive_a_crash",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_writes_survive_a_crash() {
    acknowledged_writes_survive_a_crash(
        Backend::Postgres,
        "faults::postgres_acknowledged_writes_survive_a_crash",
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. A password change racing logins and logouts.
// ---------------------------------------------------------------------------------------

const RACE_ROUNDS: usize = 6;
/// Concurrent clients logging in with the old password in each round.
const RACE_LOGINS: usize = 4;
/// Logins each of them sends at most per round.
const RACE_ATTEMPTS: usize = 40;

fn race_password(round: usize) -> String {
    format!("storm-pass-{round}-x")
}

/// What one login client saw in a round.
#[derive(Default)]
struct Logins {
    /// Every session id a Login answered.
    sessions: Vec<String>,
    /// Logins that began before UpdatePassword answered and were refused: they overlapped
    /// the change.
    overlapped: usize,
}

/// Logs in with `password` over and over, logging every other session it gets out at
/// once, until it has sent two logins that began after `changed` was set (or its
/// attempts are used up).
async fn log_in_repeatedly(
    app: Arc<TestApp>,
    password: String,
    changed: Arc<AtomicBool>,
    start: Arc<Barrier>,
    client: usize,
) -> Logins {
    start.wait().await;
    let mut seen = Logins::default();
    let mut late = 0;
    for _ in 0..RACE_ATTEMPTS {
        let after_change = changed.load(Ordering::SeqCst);
        let answer = app
            .call("Login", json!({"username": "racer", "password": password}))
            .await;
        match answer.0.as_u16() {
            200 => {
                assert!(
                    !after_change,
                    "a Login with the old password that began after UpdatePassword had \
                     answered 200 succeeded: {}",
                    answer.1
                );
                let id = answer.1["session"]["id"].as_str().unwrap().to_owned();
                if (client + seen.sessions.len()).is_multiple_of(2) {
                    let (status, body) = app.call("Logout", json!({"session_id": id})).await;
                    assert_eq!(status, 200, "{body}");
                }
                seen.sessions.push(id);
            }
            401 => {
                assert_error(&answer, "Login", 401, "incorrect");
                if !after_change {
                    seen.overlapped += 1;
                }
            }
            other => panic!("Login answered {other}: {}", answer.1),
        }
        if after_change {
            late += 1;
            if late == 2 {
                break;
            }
        }
    }
    seen
}

/// The rule: once UpdatePassword has answered 200, every session created with the old
/// password is refused by ReadSession (revoked, or never created), whatever the
/// interleaving, and a Login with the old password answers 401.
///
/// With `slow_revocation`, every statement that deletes sessions stalls for a moment
/// before its transaction goes on, as a commit does on a slow disk: UpdatePassword then
/// holds its new hash, and its revocation, uncommitted for that long while the logins
/// with the old password keep coming (PostgreSQL only).
async fn old_sessions_never_outlive_a_password_change(
    backend: Backend,
    test: &str,
    slow_revocation: bool,
) {
    let Some(app) = TestApp::spawn_with(backend, test, limits_off).await else {
        return;
    };
    if slow_revocation {
        let mut conn = sqlx::PgConnection::connect(&app.db.raw_url)
            .await
            .expect("connect to the test database");
        for sql in [
            "CREATE FUNCTION slow_revocation() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(0.25); RETURN NULL; END $$",
            "CREATE TRIGGER slow_revocation AFTER DELETE ON sessions \
             FOR EACH STATEMENT EXECUTE FUNCTION slow_revocation()",
        ] {
            sqlx::query(sql).execute(&mut conn).await.expect(sql);
        }
        conn.close().await.expect("connection closed");
    }
    let app = Arc::new(app);
    let (status, body) = app
        .call(
            "Create",
            json!({"id": "racer", "username": "racer", "email": "racer@example.com",
                   "password": race_password(0)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let (mut checked, mut overlapped) = (0, 0);
    for round in 0..RACE_ROUNDS {
        let (old, new) = (race_password(round), race_password(round + 1));
        let changed = Arc::new(AtomicBool::new(false));
        let start = Arc::new(Barrier::new(RACE_LOGINS + 1));
        let mut logins = JoinSet::new();
        for client in 0..RACE_LOGINS {
            logins.spawn(log_in_repeatedly(
                app.clone(),
                old.clone(),
                changed.clone(),
                start.clone(),
                client,
            ));
        }
        start.wait().await;
        let (status, body) = app
            .call(
                "UpdatePassword",
                json!({"user_id": "racer", "old_password": old, "new_password": new,
                       "confirm_password": new}),
            )
            .await;
        assert_eq!(status, 200, "round {round}: {body}");
        changed.store(true, Ordering::SeqCst);

        let mut sessions = Vec::new();
        while let Some(result) = logins.join_next().await {
            let seen = result.expect("login client");
            sessions.extend(seen.sessions);
            overlapped += seen.overlapped;
        }
        for id in &sessions {
            let answer = app.call("ReadSession", json!({"session_id": id})).await;
            assert_eq!(
                answer.0, 401,
                "round {round}: a session opened with the old password outlived the \
                 change: {}",
                answer.1
            );
            assert_error(&answer, "ReadSession", 401, "session not found");
        }
        let answer = app
            .call("Login", json!({"username": "racer", "password": old}))
            .await;
        assert_error(&answer, "Login", 401, "incorrect");
        // The check above is not vacuous: a session of the new password is readable.
        let fresh = app.login("racer", &new).await;
        let (status, body) = app
            .call("ReadSession", json!({"session_id": fresh["id"]}))
            .await;
        assert_eq!(status, 200, "{body}");
        checked += sessions.len();
    }
    eprintln!("{test}: {checked} sessions checked; {overlapped} logins overlapped a change");
    assert!(checked > 0, "no Login with the old password ever succeeded");
    assert!(overlapped > 0, "no Login ever overlapped a password change");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_old_sessions_never_outlive_a_password_change() {
    old_sessions_never_outlive_a_password_change(
        Backend::Sqlite,
        "faults::sqlite_old_sessions_never_outlive_a_password_change",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_old_sessions_never_outlive_a_password_change() {
    old_sessions_never_outlive_a_password_change(
        Backend::Postgres,
        "faults::postgres_old_sessions_never_outlive_a_password_change",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_old_sessions_never_outlive_a_slow_password_change() {
    old_sessions_never_outlive_a_password_change(
        Backend::Postgres,
        "faults::postgres_old_sessions_never_outlive_a_slow_password_change",
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3. A SQLite database whose disk fills up or turns read-only.
// ---------------------------------------------------------------------------------------

/// Runs a command; Err with what it printed when it fails or cannot run.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            stderr.lines().next().unwrap_or("failed").trim()
        ))
    }
}

/// A tmpfs mounted on a directory, unmounted (and the directory removed) when dropped,
/// whether the test passed or not.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`. When this machine does not allow it, says the
    /// test was skipped and returns None, or fails if `USERS_REQUIRE_PRIVILEGED_TESTS`
    /// is set.
    fn mount(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        let options = format!("size={size}");
        match run(
            "mount",
            &["-t", "tmpfs", "-o", &options, "tmpfs", path_str(dir)],
        ) {
            Ok(()) => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Err(why) => {
                common::skip(
                    test,
                    &format!("cannot mount a tmpfs ({why})"),
                    "USERS_REQUIRE_PRIVILEGED_TESTS",
                );
                None
            }
        }
    }

    /// `ro` or `rw`.
    fn remount(&self, mode: &str) {
        let options = format!("remount,{mode}");
        run("mount", &["-o", &options, path_str(&self.dir)])
            .unwrap_or_else(|why| panic!("remount {mode} failed: {why}"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = path_str(&self.dir);
        // A server that is still shutting down may hold the file open: detach lazily
        // then, and the kernel frees the tmpfs once it lets go.
        if run("umount", &[dir]).is_err() {
            let _ = run("umount", &["-l", dir]);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// The directory that holds a SQLite test database.
fn sqlite_dir(db: &TestDatabase) -> PathBuf {
    db_path(db).parent().expect("a directory").to_path_buf()
}

fn db_path(db: &TestDatabase) -> PathBuf {
    let path = db
        .raw_url
        .strip_prefix("sqlite://")
        .expect("a SQLite database");
    PathBuf::from(path)
}

/// Copies the WAL into the database and truncates it to nothing.
fn truncate_wal(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("database opened");
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0, "the WAL could not be truncated");
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    const CHUNK: usize = 64 * 1024;
    let mut file = std::fs::File::create(path).expect("filler created");
    let chunk = vec![0u8; CHUNK];
    // Far more chunks than the tmpfs holds: the loop ends at ENOSPC.
    for _ in 0..1024 {
        if let Err(err) = file.write_all(&chunk) {
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::StorageFull,
                "filling the disk: {err}"
            );
            return;
        }
    }
    panic!("the file system never filled up");
}

/// The one account of the disk tests, and its session.
async fn sign_up(api: &Api) -> (Value, Value) {
    let (status, body) = api
        .call(
            "Create",
            json!({"id": "asim", "username": "asim", "email": "asim@example.com",
                   "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let user = body["user"].clone();
    let (status, body) = api.login("asim", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    (user, body["session"].clone())
}

/// Every kind of write answers 503 in the Micro error shape with `detail`.
async fn writes_are_refused(api: &Api, detail: &str) {
    let new_password = "storm-pass-1-x";
    let writes = [
        (
            "Create",
            json!({"id": "during", "username": "during", "email": "during@example.com",
                   "password": PASSWORD}),
        ),
        (
            "Update",
            json!({"id": "asim", "email": "changed@example.com"}),
        ),
        ("Login", json!({"username": "asim", "password": PASSWORD})),
        (
            "UpdatePassword",
            json!({"user_id": "asim", "old_password": PASSWORD, "new_password": new_password,
                   "confirm_password": new_password}),
        ),
    ];
    for (method, body) in writes {
        let answer = api.call(method, body).await;
        assert_eq!(
            answer.0, 503,
            "{method} was not refused with {detail:?}: {}",
            answer.1
        );
        assert_error(&answer, method, 503, detail);
    }
}

/// Read, Search and ReadSession answer 200 with the data as it was before the fault:
/// the refused Update changed nothing and the refused UpdatePassword revoked nothing.
async fn reads_still_work(api: &Api, user: &Value, session: &Value) {
    let (status, body) = api.call("Read", json!({"id": "asim"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], *user);
    let (status, body) = api.call("Search", json!({"username": "asim"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], json!([user]));
    let (status, body) = api
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"], *session);
}

/// After the fault is gone: the refused writes left nothing behind, and writes work again.
async fn writes_work_again(api: &Api) {
    let (status, body) = api.call("Search", json!({"username": "during"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], json!([]), "a refused Create left a user");
    let (status, body) = api
        .call(
            "Create",
            json!({"id": "during", "username": "during", "email": "during@example.com",
                   "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api
        .call(
            "Update",
            json!({"id": "asim", "email": "changed@example.com"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email"], "changed@example.com");
    // The refused UpdatePassword did not change the password.
    let (status, body) = api.login("asim", PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let new_password = "storm-pass-2-x";
    let (status, body) = api
        .call(
            "UpdatePassword",
            json!({"user_id": "asim", "old_password": PASSWORD, "new_password": new_password,
                   "confirm_password": new_password}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.login("asim", new_password).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_refuses_writes_with_503_and_keeps_serving_reads() {
    const TEST: &str = "faults::sqlite_disk_full_refuses_writes_with_503_and_keeps_serving_reads";
    let db = TestDatabase::create(Backend::Sqlite, TEST)
        .await
        .expect("sqlite always runs");
    let dir = sqlite_dir(&db);
    // Declared before the service, so that it is dropped (unmounted) after it.
    let Some(tmpfs) = Tmpfs::mount(&dir, "2m", TEST) else {
        return;
    };
    let app = TestApp::spawn_on(db, limits_off).await;
    let api = Api::new(app.addr);
    let (user, session) = sign_up(&api).await;

    // SQLite writes into WAL space it already has when it can (the WAL starts over once
    // checkpointed), and such a write needs no new disk space. Emptying the WAL first
    // makes every write below need some.
    block_in_place(|| truncate_wal(&db_path(&app.db)));
    let filler = dir.join("filler");
    block_in_place(|| fill(&filler));
    writes_are_refused(&api, "the database is out of disk space").await;
    reads_still_work(&api, &user, &session).await;

    std::fs::remove_file(&filler).expect("filler removed");
    reads_still_work(&api, &user, &session).await;
    writes_work_again(&api).await;

    let db = app.into_database().await;
    drop(tmpfs);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_only_database_refuses_writes_with_503_and_keeps_serving_reads() {
    const TEST: &str =
        "faults::sqlite_read_only_database_refuses_writes_with_503_and_keeps_serving_reads";
    let db = TestDatabase::create(Backend::Sqlite, TEST)
        .await
        .expect("sqlite always runs");
    let dir = sqlite_dir(&db);
    // Declared before the services, so that it is dropped (unmounted) after them.
    let Some(tmpfs) = Tmpfs::mount(&dir, "2m", TEST) else {
        return;
    };
    let cwd = tempfile::tempdir().unwrap();

    // Linux refuses to remount a file system read-only while a process has a file on it
    // open for writing, as a running service has its database ("mount point is busy"),
    // and after a clean shutdown SQLite removes the -wal and -shm files without which a
    // WAL database cannot be opened on a read-only file system at all. So the test
    // takes the path on which a read-only database does meet a service: the machine
    // crashes and its volume comes back read-only.
    let mut before = start_service(&db, cwd.path());
    let (user, session) = sign_up(&Api::new(before.addr)).await;
    crash(&mut before);
    tmpfs.remount("ro");
    let probe = std::fs::write(dir.join("probe"), b"x");
    assert!(probe.is_err(), "the file system still takes writes");

    let read_only = start_service(&db, cwd.path());
    let api = Api::new(read_only.addr);
    writes_are_refused(&api, "the database is read-only").await;
    reads_still_work(&api, &user, &session).await;
    assert!(terminate(read_only).success());

    tmpfs.remount("rw");
    let writable = start_service(&db, cwd.path());
    let api = Api::new(writable.addr);
    reads_still_work(&api, &user, &session).await;
    writes_work_again(&api).await;
    assert!(terminate(writable).success());

    drop(tmpfs);
    drop(db);
}

mod hang_ups {
    use super::*;

    on_both_stores!(
        config = crate::limits_off,
        clients_hanging_up_mid_write_leave_the_writes_working,
    );
}

/// Clients that give up on their writes at every point of the way (on SQLite, one of
/// them once left the writing connection in a transaction that failed every later
/// write): the writes after them all succeed.
async fn clients_hanging_up_mid_write_leave_the_writes_working(app: TestApp) {
    let user = app.create_user("hangup").await;
    let id = user["id"].as_str().unwrap().to_string();
    let url = app.url("/users/Users/Update");
    let mut tasks = JoinSet::new();
    for n in 0..400u64 {
        let (url, id) = (url.clone(), id.clone());
        tasks.spawn(async move {
            // Each on a connection of its own, given up after 0.2 to 3.2 ms: the
            // server drops the request wherever it is then.
            let client = reqwest::Client::builder()
                .timeout(Duration::from_micros(200 + (n * 37) % 3000))
                .build()
                .unwrap();
            let _ = client
                .post(url)
                .json(&json!({"id": id, "username": format!("hangup{n}")}))
                .send()
                .await;
        });
        if tasks.len() >= 16 {
            tasks.join_next().await;
        }
    }
    while tasks.join_next().await.is_some() {}
    for n in 0..10 {
        let (status, body) = app
            .call("Update", json!({"id": id, "username": format!("after{n}")}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
