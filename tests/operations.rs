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

/// `X-Request-Id` is kept when acceptable, made otherwise, echoed in the answer and
/// named in the request's log lines; `--log-format json` writes one JSON object per
/// line with stable field names.
#[test]
fn request_ids_are_echoed_and_logged_in_json_lines_on_both_stores() {
    let test = "request_ids_are_echoed_and_logged_in_json_lines";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = runtime.block_on(common::TestDatabase::create(backend, test)) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = command(dir.path());
        cmd.args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .env("DATABASE_URL", &db.raw_url);
        let service = Service::start(cmd);

        let chosen = "edge-7f3a 2026/12/04";
        let create =
            r#"{"username":"traced","email":"traced@example.com","password":"correct-horse-1"}"#;
        let (status, headers, body) =
            request(&service, "/users/Users/Create", create, Some(chosen));
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "x-request-id"), Some(chosen.to_string()));

        // None, or one that is too long: a new id, 32 hexadecimal digits.
        let too_long = "r".repeat(129);
        let mut made = Vec::new();
        for sent in [None, Some(too_long.as_str())] {
            let (status, headers, _) = request(&service, "/health/ready", "", sent);
            assert_eq!(status, 200);
            let id = header(&headers, "x-request-id").unwrap();
            assert_eq!(id.len(), 32, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            made.push(id);
        }
        assert_ne!(made[0], made[1]);
        // Refused by the origin rules, before any route: still with an id.
        let (status, headers, _) = request_with(
            &service,
            "/users/Users/Read",
            "{}",
            &[("Origin", "https://evil.example")],
        );
        assert_eq!(status, 403);
        let refused = header(&headers, "x-request-id").unwrap();

        let (exit, logs) = service.terminate();
        assert!(exit.success(), "{logs:#?}");
        let lines: Vec<serde_json::Value> = logs
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        for line in &lines {
            for field in ["timestamp", "level", "target"] {
                assert!(line.get(field).is_some(), "{field} in {line}");
            }
            // What happened: a sentence, or a security event's name, or both.
            assert!(
                line.get("message").is_some() || line.get("event").is_some(),
                "{line}"
            );
        }
        let of_request = |id: &str| -> Vec<&serde_json::Value> {
            lines
                .iter()
                .filter(|l| l["span"]["request_id"] == id)
                .collect()
        };
        let created = of_request(chosen);
        let done = created
            .iter()
            .find(|l| l["message"] == "request")
            .unwrap_or_else(|| panic!("the request line of {chosen}: {created:#?}"));
        assert_eq!(done["status"], 200);
        assert_eq!(done["span"]["method"], "POST");
        assert_eq!(done["span"]["path"], "/users/Users/Create");
        assert!(done["latency_ms"].as_f64().unwrap() > 0.0);
        for id in &made {
            assert_eq!(of_request(id).len(), 1, "{id}");
        }
        assert!(
            of_request(&refused)
                .iter()
                .any(|l| l["event"] == "request_refused"),
            "{lines:#?}"
        );
        let text = logs.join("\n");
        assert!(!text.contains("correct-horse-1"));
    }
}

fn request(
    service: &Service,
    path: &str,
    body: &str,
    id: Option<&str>,
) -> (u16, Vec<(String, String)>, String) {
    let headers: Vec<(&str, &str)> = id.map(|id| ("X-Request-Id", id)).into_iter().collect();
    request_with(service, path, body, &headers)
}

/// One request (GET without a body, POST with one); the status, headers and body.
fn request_with(
    service: &Service,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(service.addr).unwrap();
    stream
        .set_read_timeout(Some(common::process::DEADLINE))
        .unwrap();
    let method = if body.is_empty() { "GET" } else { "POST" };
    let extra: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}
