//! What an operator relies on: a start that waits for its database, health checks,
//! request ids and logs.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::process::{command, http, Service};
use common::Backend;

/// A TCP port that refuses PostgreSQL until told to forward to the real server: a
/// database that "is not up yet", on one address for the whole test.
struct LateDatabase {
    port: u16,
    up: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl LateDatabase {
    fn start(target: String) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(false));
        let is_up = up.clone();
        runtime.spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !is_up.load(Ordering::SeqCst) {
                    // Down: the connection is closed at once, as by a server not there.
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            port,
            up,
            _runtime: runtime,
        }
    }
}

/// Asserts the answers of a service that waits for its database: alive, not ready,
/// and 503 in the Micro error shape for the methods of both surfaces.
fn assert_waiting(service: &Service) {
    let (status, body) = http(service.addr, "GET", "/health/live", "");
    assert_eq!(status, 200, "{body}");
    for path in ["/health/ready", "/health"] {
        let (status, body) = http(service.addr, "GET", path, "");
        assert_eq!(status, 503, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["id"], "users.Health", "{body}");
    }
    let create = r#"{"username":"early","email":"early@example.com","password":"correct-horse-1"}"#;
    for (path, id) in [
        ("/users/Users/Create", "users.Create"),
        ("/v1/user/Create", "user.Create"),
    ] {
        let (status, body) = http(service.addr, "POST", path, create);
        assert_eq!(status, 503, "{path}: {body}");
        let error: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["id"], id, "{body}");
        assert_eq!(error["code"], 503, "{body}");
        assert_eq!(error["status"], "Service Unavailable", "{body}");
        assert!(
            error["detail"].as_str().unwrap().contains("starting"),
            "{body}"
        );
    }
}

/// Once the database answers, the service migrates, becomes ready and serves.
fn assert_serving(service: &mut Service) {
    service.wait_for_lines("users-service ready", 1);
    let (status, body) = http(service.addr, "GET", "/health/ready", "");
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        service.addr,
        "POST",
        "/users/Users/Create",
        r#"{"username":"late","email":"late@example.com","password":"correct-horse-1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(service.addr, "GET", "/health/live", "");
    assert_eq!(status, 200);
}

#[test]
fn on_postgres_the_start_waits_for_a_database_that_comes_up_later() {
    let test = "on_postgres_the_start_waits_for_a_database_that_comes_up_later";
    if common::postgres_admin_url(test).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime
        .block_on(common::TestDatabase::create(Backend::Postgres, test))
        .unwrap();
    let mut url = url::Url::parse(&db.raw_url).unwrap();
    let target = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let late = LateDatabase::start(target);
    url.set_port(Some(late.port)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0", "--db-wait", "120"])
        .env("DATABASE_URL", url.as_str());
    let mut service = Service::start(cmd);
    assert_waiting(&service);
    // Still waiting after more than one retry.
    service.wait_for_lines("the database does not answer yet", 2);
    assert_waiting(&service);

    late.up.store(true, Ordering::SeqCst);
    assert_serving(&mut service);
    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{logs:#?}");
}

#[test]
fn on_sqlite_the_start_waits_for_its_directory_to_appear() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("volume");
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0", "--db-wait", "120"])
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", data.join("users.db").display()),
        );
    let mut service = Service::start(cmd);
    assert_waiting(&service);
    service.wait_for_lines("the database does not answer yet", 2);

    std::fs::create_dir(&data).unwrap();
    assert_serving(&mut service);
    assert!(data.join("users.db").exists());
    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{logs:#?}");
}

/// The wait is bounded: past `--db-wait`, the start fails with the database's error.
#[test]
fn a_database_that_never_comes_stops_the_start_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("never").join("users.db");
    let output = command(dir.path())
        .args(["--listen", "127.0.0.1:0", "--db-wait", "1"])
        .env("DATABASE_URL", format!("sqlite://{}", missing.display()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the database does not answer yet"),
        "it tried again before giving up: {stderr}"
    );
    assert!(stderr.contains("cannot open the database"), "{stderr}");
}

/// A stop asked for while the start waits ends the process cleanly.
#[test]
fn sigterm_while_waiting_for_the_database_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("never").join("users.db");
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0", "--db-wait", "600"])
        .env("DATABASE_URL", format!("sqlite://{}", missing.display()));
    let service = Service::start(cmd);
    assert_waiting(&service);
    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{logs:#?}");
}

/// Once serving, `/health/live` answers without touching the database, and
/// `/health/ready` checks it as `/health` does.
#[tokio::test]
async fn live_and_ready_answer_while_serving_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) =
            common::TestApp::spawn(backend, "live_and_ready_answer_while_serving").await
        else {
            continue;
        };
        for path in ["/health", "/health/ready", "/health/live"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            let body: serde_json::Value = response.json().await.unwrap();
            assert_eq!(body["status"], "ok");
        }
        // Ready follows the database: closed, it is not ready, but the process lives.
        app.store.close().await;
        let response = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        let response = app
            .client
            .get(app.url("/health/live"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}
