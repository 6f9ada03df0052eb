//! Test harness: starts the real service on a random loopback port, on a fresh SQLite
//! file or a fresh PostgreSQL database, and talks to it over real HTTP.
#![allow(dead_code)]

pub mod process;
pub mod smtp;
pub mod totp;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use users_service::config::ServeConfig;
use users_service::core::clock::{Clock, ManualClock};
use users_service::core::users::Users;
use users_service::server::{Reloader, Server};
use users_service::store::{DatabaseUrl, SqlStore};

pub const PASSWORD: &str = "correct-horse-1";

/// Where a test's data lives.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server the Postgres tests use, from `TEST_DATABASE_URL`. When it is
/// unset the tests report that they were skipped, unless `USERS_REQUIRE_POSTGRES_TESTS`
/// is set (as CI does), in which case they fail.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip(
                test,
                "PostgreSQL: TEST_DATABASE_URL is not set",
                "USERS_REQUIRE_POSTGRES_TESTS",
            );
            None
        }
    }
}

/// Reports that `test` cannot run here (`why`). A skip never passes silently: it is
/// written to the real stderr, past the test harness's capture, and it is a failure
/// when the environment variable `required` says the test must run (as CI does).
pub fn skip(test: &str, why: &str, required: &str) {
    if std::env::var_os(required).is_some() {
        panic!("{test} cannot run ({why}) but {required} is set");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// `postgres://host/db?x` with the database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{database}?{q}"),
        None => format!("{host_part}/{database}"),
    }
}

/// A database of its own for one test, dropped when the test ends (pass or fail).
pub struct TestDatabase {
    pub url: DatabaseUrl,
    pub raw_url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    pub async fn create(backend: Backend, test: &str) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let raw_url = format!("sqlite://{}", dir.path().join("users.db").display());
                Some(Self {
                    url: raw_url.parse().expect("sqlite url"),
                    raw_url,
                    _dir: Some(dir),
                    postgres: None,
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url(test)?;
                // 39 characters: never the 43 of a session id, which the CI log scan looks for.
                let name = format!("ustest_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .expect("connect to TEST_DATABASE_URL");
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let _ = conn.close().await;
                let raw_url = with_database(&admin, &name);
                Some(Self {
                    url: raw_url.parse().expect("postgres url"),
                    raw_url,
                    _dir: None,
                    postgres: Some((admin, name)),
                })
            }
        }
    }
}

/// The credential ids a StartPasskeyLogin answer lists.
pub fn listed_credentials(start: &serde_json::Value) -> Vec<String> {
    start["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .unwrap_or_else(|| panic!("allowCredentials: {start}"))
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

impl TestDatabase {
    /// Counts the rows of `table` (which may be followed by a WHERE clause) straight
    /// from the database.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        if self.raw_url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.raw_url)
                .await
                .expect("connect");
            let (n,): (i64,) = sqlx::query_as(&sql)
                .fetch_one(&mut conn)
                .await
                .expect("count");
            n
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.raw_url)
                .await
                .expect("connect");
            let (n,): (i64,) = sqlx::query_as(&sql)
                .fetch_one(&mut conn)
                .await
                .expect("count");
            n
        }
    }

    /// Runs one statement straight on the database; how many rows it changed.
    pub async fn execute(&self, sql: &str) -> u64 {
        if self.raw_url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&self.raw_url)
                .await
                .expect("connect");
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect("statement")
                .rows_affected()
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&self.raw_url)
                .await
                .expect("connect");
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect("statement")
                .rows_affected()
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs outside any async context we can block on, so use a thread with its
        // own small runtime.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "warning: could not drop test database");
        }
    }
}

/// With `USERS_TEST_LOG_DIR` set, everything the in-process servers of this test binary
/// log, at the most verbose level, goes to a file there. CI scans those files for
/// secrets after the whole suite has run.
const JSON_LOG_SUITES: &[&str] = &["api", "mail", "second_factor", "operations"];

fn capture_logs() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let Some(dir) = std::env::var_os("USERS_TEST_LOG_DIR") else {
            return;
        };
        let exe = std::env::current_exe().ok();
        let name = exe
            .as_ref()
            .and_then(|p| p.file_stem())
            .and_then(|s| s.to_str())
            .unwrap_or("tests");
        let path = std::path::Path::new(&dir).join(format!("{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&path).expect("log file");
        // The service's own lines, to the file as they come. Some suites write them in
        // the JSON format (`--log-format json`), so that the scan covers both formats.
        let suite = name.rsplit_once('-').map_or(name, |(suite, _hash)| suite);
        let style = if JSON_LOG_SUITES.contains(&suite) {
            users_service::log_line::Style::Json
        } else {
            users_service::log_line::Style::Text { ansi: false }
        };
        let sink = users_service::log_sink::LogSink::new(Box::new(file), false);
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let _ = tracing_subscriber::registry()
            // rustls's trace lines print each TLS handshake's public random values (of
            // the PostgreSQL connections), which look like the digests the scan looks for.
            .with(tracing_subscriber::EnvFilter::new("trace,rustls=debug"))
            .with(users_service::log_line::Lines::new(sink, style))
            .try_init();
    });
}

/// A running service.
pub struct TestApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served alone, with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub users: Arc<Users>,
    pub store: Arc<SqlStore>,
    /// Reloads its tenants, as SIGHUP does to the binary.
    pub reloader: Reloader,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    pub db: TestDatabase,
}

impl TestApp {
    pub async fn spawn(backend: Backend, test: &str) -> Option<Self> {
        Self::spawn_with(backend, test, |_| {}).await
    }

    /// Starts the service with `configure` applied to the default test configuration.
    pub async fn spawn_with(
        backend: Backend,
        test: &str,
        configure: impl FnOnce(&mut ServeConfig),
    ) -> Option<Self> {
        let db = TestDatabase::create(backend, test).await?;
        Some(Self::spawn_on(db, configure).await)
    }

    /// Starts the service on an existing test database.
    pub async fn spawn_on(db: TestDatabase, configure: impl FnOnce(&mut ServeConfig)) -> Self {
        capture_logs();
        let mut config = ServeConfig::new(db.url.clone());
        configure(&mut config);
        let clock = Arc::new(ManualClock::new());
        let server = Server::build_with_clock(&config, clock.clone())
            .await
            .expect("server starts");
        let addr = server.local_addr().expect("bound address");
        let metrics_addr = server.metrics_addr();
        let users = server.users();
        let store = server.store();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            clock,
            users,
            store,
            reloader,
            shutdown: Some(tx),
            task: Some(task),
            db,
        }
    }

    /// Stops the server and hands back its database.
    pub async fn into_database(mut self) -> TestDatabase {
        self.stop().await;
        let placeholder = TestDatabase {
            url: self.db.url.clone(),
            raw_url: String::new(),
            _dir: None,
            postgres: None,
        };
        std::mem::replace(&mut self.db, placeholder)
    }

    /// Stops the server and waits for it to finish (the database stays).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }

    /// The store under the service, for tests of the store-level tools.
    pub fn users_store(&self) -> Arc<SqlStore> {
        self.store.clone()
    }

    /// The service's current time.
    pub fn clock_now(&self) -> i64 {
        self.clock.now()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POSTs a JSON body to `/users/Users/<method>`.
    pub async fn call(&self, method: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(method, &body.to_string(), Some("application/json"))
            .await
    }

    /// POSTs a JSON body to M3O's `/v1/user/<method>`.
    pub async fn m3o(&self, method: &str, body: Value) -> (StatusCode, Value) {
        self.post_to(
            &format!("/v1/user/{method}"),
            &body.to_string(),
            Some("application/json"),
        )
        .await
    }

    /// Counts the rows of `table` straight from the database, behind the service's back.
    pub async fn count_rows(&self, table: &str) -> i64 {
        self.db.count_rows(table).await
    }

    /// POSTs `body` as is to `/users/Users/<method>`, with the given Content-Type (or none).
    pub async fn post_raw(
        &self,
        method: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        self.post_to(&format!("/users/Users/{method}"), body, content_type)
            .await
    }

    /// POSTs `body` as is to `path`; the answer must be JSON.
    pub async fn post_to(
        &self,
        path: &str,
        body: &str,
        content_type: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.post(self.url(path)).body(body.to_string());
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text:?}"));
        (status, value)
    }

    /// POSTs a JSON body to `/users/Users/<method>` with extra headers; returns the
    /// status, headers and body.
    pub async fn send(
        &self,
        method: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send_to(&format!("/users/Users/{method}"), body, headers)
            .await
    }

    /// [`TestApp::send`] to any path.
    pub async fn send_to(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let value = response.json().await.expect("JSON body");
        (status, headers, value)
    }

    /// Starts a second server on the same database (a replica), sharing the clock.
    pub async fn replica(&self, configure: impl FnOnce(&mut ServeConfig)) -> Replica {
        let mut config = ServeConfig::new(self.db.url.clone());
        configure(&mut config);
        let server = Server::build_with_clock(&config, self.clock.clone())
            .await
            .expect("replica starts");
        let addr = server.local_addr().expect("bound address");
        let users = server.users();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Replica {
            addr,
            users,
            reloader,
            _stop: tx,
        }
    }

    /// Creates a user and returns it.
    pub async fn create_user(&self, username: &str) -> Value {
        let (status, body) = self
            .call(
                "Create",
                json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": PASSWORD,
                }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["user"].clone()
    }

    /// Logs a user in and returns the session.
    pub async fn login(&self, username: &str, password: &str) -> Value {
        let (status, body) = self
            .call("Login", json!({"username": username, "password": password}))
            .await;
        assert_eq!(status, 200, "{body}");
        body["session"].clone()
    }
}

/// POSTs `body` to `path` with `Authorization: Bearer <auth>` (the admin key or a
/// session id).
pub async fn call_as(app: &TestApp, path: &str, auth: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, body) = app
        .send_to(path, body, &[("authorization", &format!("Bearer {auth}"))])
        .await;
    (status, body)
}

/// [`call_as`] to `/users/Users/<method>`.
pub async fn micro(app: &TestApp, method: &str, auth: &str, body: Value) -> (StatusCode, Value) {
    call_as(app, &format!("/users/Users/{method}"), auth, body).await
}

/// A second server on a test's database; it stops when this is dropped.
pub struct Replica {
    pub addr: SocketAddr,
    pub users: Arc<Users>,
    /// Reloads its tenants, as SIGHUP does to the binary.
    pub reloader: Reloader,
    _stop: oneshot::Sender<()>,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts a Micro error: the status, the body's shape, and that its detail contains
/// `detail_part`.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), method: &str, code: u16, detail_part: &str) {
    assert_error_in(answer, "users", method, code, detail_part);
}

/// [`assert_error`] for an error of M3O's surface (`user.<Method>`).
#[track_caller]
pub fn assert_m3o_error(answer: &(StatusCode, Value), method: &str, code: u16, detail_part: &str) {
    assert_error_in(answer, "user", method, code, detail_part);
}

#[track_caller]
fn assert_error_in(
    (status, body): &(StatusCode, Value),
    service: &str,
    method: &str,
    code: u16,
    detail_part: &str,
) {
    assert_eq!(status.as_u16(), code, "{body}");
    assert_eq!(body["id"], format!("{service}.{method}"), "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(
        body["status"],
        status.canonical_reason().expect("reason"),
        "{body}"
    );
    let detail = body["detail"].as_str().expect("detail is a string");
    assert!(
        detail.contains(detail_part),
        "detail {detail:?} should contain {detail_part:?}"
    );
    assert_eq!(
        body.as_object().expect("object").len(),
        4,
        "exactly id, code, status, detail: {body}"
    );
}

/// Defines each listed `async fn name(app: TestApp)` as two tests, `sqlite::name` and
/// `postgres::name`, so the whole suite runs against both stores. With
/// `config = path::to::fn` first, that `fn(&mut ServeConfig)` adjusts the configuration.
#[macro_export]
macro_rules! on_both_stores {
    (config = $configure:path, $($name:ident),+ $(,)?) => {
        $crate::on_both_stores!(@expand $configure, $($name),+);
    };
    ($($name:ident),+ $(,)?) => {
        $crate::on_both_stores!(@expand $crate::common::default_config, $($name),+);
    };
    (@expand $configure:path, $($name:ident),+) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::common::TestApp::spawn_with(
                        $crate::common::Backend::Sqlite,
                        concat!("sqlite::", stringify!($name)),
                        $configure,
                    )
                    .await
                    .expect("sqlite always runs");
                    super::$name(app).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::common::TestApp::spawn_with(
                        $crate::common::Backend::Postgres,
                        concat!("postgres::", stringify!($name)),
                        $configure,
                    )
                    .await
                    {
                        super::$name(app).await;
                    }
                }
            )+
        }
    };
}

/// The configuration tests run with unless they say otherwise: the defaults.
pub fn default_config(_: &mut ServeConfig) {}

pub fn is_unix_seconds_string(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.parse::<i64>().is_ok_and(|n| n > 1_600_000_000))
}
