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
    let method = if body.is_empty() { "GET" } else { "POST" };
    common::process::http_exchange(service.addr, method, path, body, headers)
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Scrapes `/metrics` as Prometheus does, and parses it with a Prometheus text parser.
async fn scrape(app: &common::TestApp, key: Option<&str>) -> prometheus_parse::Scrape {
    let mut request = app.client.get(app.url("/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` with these labels; a histogram's count.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match &found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        prometheus_parse::Value::Summary(_) => panic!("{name} is a summary"),
    }
}

/// Requests, password hashing, the database pool, limits and lockouts, sessions by
/// method and by cause, the outbox, and the build: each counted as it happens.
#[tokio::test]
async fn metrics_count_what_happens_on_both_stores() {
    use serde_json::json;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let sqlite = matches!(backend, Backend::Sqlite);
        let sink = common::smtp::SmtpSink::start().await;
        let url = sink.url();
        let Some(app) = common::TestApp::spawn_with(backend, "metrics_count_what_happens", |c| {
            c.mail.smtp_url = Some(url);
        })
        .await
        else {
            continue;
        };
        let before = scrape(&app, None).await;
        for name in [
            "users_sessions_created_total",
            "users_sessions_ended_total",
            "users_rate_limited_total",
            "users_lockouts_total",
        ] {
            assert!(
                before.samples.iter().any(|s| s.metric == name),
                "{name} is there from the start"
            );
        }
        assert_eq!(sample(&before, "users_build_info", &[]), 1.0);
        assert_eq!(
            sample(
                &before,
                "users_sessions_created_total",
                &[("method", "password")]
            ),
            0.0
        );

        let user = app.create_user("metered").await;
        let id = user["id"].as_str().unwrap().to_owned();
        // On SQLite the reads after the first are answered from the read cache, unless
        // something commits between them.
        for _ in 0..10 {
            let (status, body) = app.call("Read", json!({"id": id})).await;
            assert_eq!(status, 200, "{body}");
        }
        let first = app.login("metered", common::PASSWORD).await;
        let (status, _) = app.call("Logout", json!({"session_id": first["id"]})).await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            app.login("metered", common::PASSWORD).await;
        }
        let (status, _) = app.call("LogoutAll", json!({"user_id": id})).await;
        assert_eq!(status, 200);
        app.login("metered", common::PASSWORD).await;
        let (status, body) = app
            .call(
                "UpdatePassword",
                json!({"user_id": id, "old_password": common::PASSWORD,
                       "new_password": "newpassword1", "confirm_password": "newpassword1"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // An account deleted with a session open.
        let other = app.create_user("deleted").await;
        app.login("deleted", common::PASSWORD).await;
        let (status, _) = app.call("Delete", json!({"id": other["id"]})).await;
        assert_eq!(status, 200);
        // Five wrong passwords lock the account out; the sixth try is refused (429).
        lock_out(&app, "metered").await;
        let (status, body) = app
            .m3o(
                "SendVerificationEmail",
                json!({"email": "metered@example.com", "subject": "Confirm",
                       "text_content": "Open $micro_verification_link",
                       "redirect_url": "http://localhost/done",
                       "failure_redirect_url": "http://localhost/failed"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sink.next_mail("metered@example.com").await;
        let mut stats = app.users.outbox().stats();
        tokio::time::timeout(
            std::time::Duration::from_secs(20),
            stats.wait_for(|s| s.sent >= 1),
        )
        .await
        .unwrap()
        .unwrap();
        // Its sessions ended with the new password: none is left for the deletion.
        let (status, _) = app.call("Delete", json!({"id": id})).await;
        assert_eq!(status, 200);

        let after = scrape(&app, None).await;
        let requests = |method: &str, status: &str| {
            sample(
                &after,
                "users_http_requests_total",
                &[("family", "micro"), ("method", method), ("status", status)],
            )
        };
        assert_eq!(requests("Login", "200"), 5.0);
        assert_eq!(requests("Login", "401"), 5.0);
        assert_eq!(requests("Login", "429"), 1.0);
        assert_eq!(requests("Create", "200"), 2.0);
        assert_eq!(
            sample(
                &after,
                "users_http_request_duration_seconds",
                &[("family", "micro"), ("method", "Login")]
            ),
            11.0
        );
        let created = sample(
            &after,
            "users_sessions_created_total",
            &[("method", "password")],
        );
        assert_eq!(created, 5.0);
        let ended = |cause| sample(&after, "users_sessions_ended_total", &[("cause", cause)]);
        assert_eq!(ended("logout"), 1.0);
        assert_eq!(ended("logout_all"), 2.0);
        assert_eq!(ended("password_changed"), 1.0);
        assert_eq!(ended("user_deleted"), 1.0);
        // The account and the address (all of this came from one) were locked out.
        for limit in ["login_account", "login_address"] {
            assert_eq!(
                sample(&after, "users_lockouts_total", &[("limit", limit)]),
                1.0
            );
        }
        assert_eq!(
            sample(
                &after,
                "users_rate_limited_total",
                &[("limit", "login_account")]
            ),
            1.0
        );
        assert_eq!(sample(&after, "users_mail_sent_total", &[]), 1.0);
        // 5 good and 5 wrong passwords, 2 accounts made and 1 password changed: each
        // waited for a hashing thread, and none is waiting or running now.
        assert!(sample(&after, "users_argon2_wait_seconds", &[]) >= 13.0);
        assert_eq!(sample(&after, "users_argon2_waiting", &[]), 0.0);
        assert_eq!(sample(&after, "users_argon2_running", &[]), 0.0);
        assert!(sample(&after, "users_db_acquire_wait_seconds", &[]) >= 1.0);
        let idle = sample(&after, "users_db_connections", &[("state", "idle")]);
        let in_use = sample(&after, "users_db_connections", &[("state", "in_use")]);
        assert!(idle + in_use >= 1.0, "{idle} {in_use}");
        let cache = ["hits", "misses"].map(|kind| {
            (after.samples.iter())
                .find(|s| s.metric == format!("users_db_read_cache_{kind}_total"))
                .map(|_| sample(&after, &format!("users_db_read_cache_{kind}_total"), &[]))
        });
        if sqlite {
            let [Some(hits), Some(misses)] = cache else {
                panic!("the read cache's counters on SQLite: {cache:?}");
            };
            assert!(hits >= 1.0 && misses >= 1.0, "{hits} hits, {misses} misses");
        } else {
            assert_eq!(cache, [None, None], "no read cache on PostgreSQL");
        }
        // The scrape itself is counted, under its own family.
        assert_eq!(
            sample(
                &after,
                "users_http_requests_total",
                &[("family", "metrics"), ("method", "GET"), ("status", "200")]
            ),
            1.0
        );
    }
}

/// With an admin key, `/metrics` needs it; `--metrics-listen` serves it alone on its
/// own address, without the key, and the main listener no longer does.
#[tokio::test]
async fn metrics_need_the_admin_key_or_their_own_address_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = common::TestApp::spawn_with(backend, "metrics_need_the_admin_key", |c| {
            c.access.api_key = Some("s3cret-admin-key".into());
        })
        .await
        else {
            continue;
        };
        let refused = app.client.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        let error: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(error["id"], "users.Metrics");
        let wrong = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("not-the-key")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let scraped = scrape(&app, Some("s3cret-admin-key")).await;
        assert_eq!(
            sample(
                &scraped,
                "users_http_requests_total",
                &[("family", "metrics"), ("method", "GET"), ("status", "401")]
            ),
            2.0
        );
        // Both refusals are in the audit trail.
        let (status, refusals) = common::micro(
            &app,
            "ListAuditEvents",
            "s3cret-admin-key",
            serde_json::json!({"kind": "admin_key.refused"}),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            refusals["events"].as_array().unwrap().len(),
            2,
            "{refusals}"
        );
        let db = app.into_database().await;

        let app = common::TestApp::spawn_on(db, |c| {
            c.access.api_key = Some("s3cret-admin-key".into());
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        })
        .await;
        let metrics_addr = app.metrics_addr.unwrap();
        let own = app
            .client
            .get(format!("http://{metrics_addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), 200);
        let text = own.text().await.unwrap();
        assert!(text.contains("users_build_info"), "{text}");
        let main = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("s3cret-admin-key")
            .send()
            .await
            .unwrap();
        assert_eq!(main.status(), 404);
    }
}

/// Runs `users-service user ARGS` on `db`, with `stdin` as its standard input; the exit
/// status, standard output and standard error.
fn user_command(db: &common::TestDatabase, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .arg("user")
        .args(args)
        .env("DATABASE_URL", &db.raw_url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `users-service user create|get|list|delete|set-password|unlock|end-sessions`, on the
/// database of a running service: the same rules as the API, and the service sees each
/// change at once.
#[tokio::test]
async fn the_admin_commands_act_on_accounts_under_the_api_rules_on_both_stores() {
    use serde_json::json;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = common::TestApp::spawn_with(backend, "the_admin_commands", |c| {
            // The lockout below is the account's; the address stays free.
            c.limits.login_max_failures_per_ip = 0;
        })
        .await
        else {
            continue;
        };
        let db = &app.db;

        // create: the password from standard input, under the policy.
        let (ok, _, err) = user_command(
            db,
            &["create", "--username", "ops", "--email", "ops@example.com"],
            "short\n",
        );
        assert!(!ok);
        assert!(
            err.contains("password must be at least 8 characters"),
            "{err}"
        );
        let (ok, out, err) = user_command(
            db,
            &[
                "create",
                "--username",
                "ops",
                "--email",
                "ops@example.com",
                "--json",
            ],
            "correct-horse-1\n",
        );
        assert!(ok, "{err}");
        let created = json_of(&out);
        let id = created["user"]["id"].as_str().unwrap().to_owned();
        assert_eq!(created["user"]["username"], "ops");
        assert!(!out.contains("correct-horse-1") && !err.contains("correct-horse-1"));
        let (ok, _, err) = user_command(
            db,
            &[
                "create",
                "--username",
                "ops",
                "--email",
                "other@example.com",
            ],
            "correct-horse-1\n",
        );
        assert!(!ok);
        assert!(err.contains("username is already taken"), "{err}");

        // get, by id, username or e-mail; list.
        for by in [
            vec!["get", id.as_str(), "--json"],
            vec!["get", "--username", "OPS", "--json"],
            vec!["get", "--email", "ops@example.com", "--json"],
        ] {
            let (ok, out, err) = user_command(db, &by, "");
            assert!(ok, "{by:?}: {err}");
            assert_eq!(json_of(&out)["user"]["id"], id.as_str(), "{by:?}");
        }
        let (ok, out, _) = user_command(db, &["get", "--username", "ops"], "");
        assert!(ok);
        assert!(out.contains(&format!("id:        {id}")), "{out}");
        app.create_user("second").await;
        let (ok, out, _) = user_command(db, &["list", "--json"], "");
        assert!(ok);
        let mut names: Vec<String> = json_of(&out)["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ops", "second"]);
        // One page at a time, as text: a line per account, the pages apart.
        let page = |offset: &str| {
            let (ok, out, _) = user_command(db, &["list", "--limit", "1", "--offset", offset], "");
            assert!(ok);
            assert_eq!(out.lines().count(), 1, "{out}");
            out.split('\t').nth(1).unwrap().to_owned()
        };
        let mut paged = vec![page("0"), page("1")];
        paged.sort();
        assert_eq!(paged, ["ops", "second"]);

        // end-sessions: the service refuses the session at once.
        let session = app.login("ops", common::PASSWORD).await;
        let (ok, out, _) = user_command(db, &["end-sessions", "--username", "ops", "--json"], "");
        assert!(ok);
        assert_eq!(
            json_of(&out),
            json!({"user_id": id, "outcome": "sessions_ended"})
        );
        let (status, _) = app
            .call("ReadSession", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 401);

        // unlock: a locked-out account signs in again.
        lock_out(&app, "ops").await;
        let (ok, out, _) = user_command(db, &["unlock", &id], "");
        assert!(ok);
        assert_eq!(out.trim(), format!("unlocked: {id}"));
        let (kinds, _) = audit_kinds(&app, json!({"user_id": id, "kind": "lockout.lifted"})).await;
        assert_eq!(
            kinds,
            ["lockout.lifted"],
            "the command line's unlock is recorded"
        );
        let session = app.login("ops", common::PASSWORD).await;

        // set-password: the policy holds; a new password ends the sessions.
        let (ok, _, err) = user_command(db, &["set-password", &id], "ops\n");
        assert!(!ok);
        assert!(
            err.contains("password must be at least 8 characters"),
            "{err}"
        );
        let (ok, out, err) = user_command(
            db,
            &["set-password", "--email", "ops@example.com", "--json"],
            "newpassword1\r\n",
        );
        assert!(ok, "{err}");
        assert_eq!(json_of(&out)["outcome"], "password_set");
        let (status, _) = app
            .call("ReadSession", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 401);
        let (status, _) = app
            .call(
                "Login",
                json!({"username": "ops", "password": common::PASSWORD}),
            )
            .await;
        assert_eq!(status, 401);
        app.login("ops", "newpassword1").await;

        // delete: gone from the service; its id is never issued again.
        let (ok, out, _) = user_command(db, &["delete", "--username", "ops", "--json"], "");
        assert!(ok);
        assert_eq!(json_of(&out)["outcome"], "deleted");
        let (status, _) = app.call("Read", json!({"id": id})).await;
        assert_eq!(status, 404);
        let (ok, _, err) = user_command(db, &["get", &id], "");
        assert!(!ok);
        assert_eq!(err.trim(), "users-service: error: user not found");
        let (ok, _, err) = user_command(
            db,
            &[
                "create",
                "--id",
                &id,
                "--username",
                "again",
                "--email",
                "again@example.com",
            ],
            "correct-horse-1\n",
        );
        assert!(!ok);
        assert!(err.contains("id is already taken"), "{err}");
    }
}

/// Each `user` command says what it does, and takes `--json`.
#[test]
fn every_admin_command_has_help_and_a_json_option() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path())
        .args(["user", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "create",
        "get",
        "list",
        "delete",
        "set-password",
        "unlock",
        "end-sessions",
    ] {
        assert!(help.contains(&format!("  {name} ")), "{name} in {help}");
        let output = command(dir.path())
            .args(["user", name, "--help"])
            .output()
            .unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("--json"), "{name}: {help}");
        assert!(help.contains("--database-url"), "{name}: {help}");
    }
}

const KEY: &str = "s3cret-admin-key";

/// ListAuditEvents with the admin key; the events' kinds, and the whole answer.
async fn audit_kinds(
    app: &common::TestApp,
    query: serde_json::Value,
) -> (Vec<String>, serde_json::Value) {
    let (status, body) = common::micro(app, "ListAuditEvents", KEY, query).await;
    assert_eq!(status, 200, "{body}");
    let kinds = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    (kinds, body)
}

/// Each change is recorded with its kind, the user, the client's address, the request's
/// id, the outcome and the actor; a refused change records nothing; the trail is read
/// by user, kind and time, a page at a time, through the API and the command line; and
/// the sweeper forgets events past their retention.
#[tokio::test]
async fn the_audit_trail_records_who_did_what_from_where_on_both_stores() {
    use serde_json::json;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = common::TestApp::spawn_with(backend, "the_audit_trail_records", |c| {
            c.access.api_key = Some(KEY.into());
            c.audit_retention_days = 1;
        })
        .await
        else {
            continue;
        };
        let (status, _, created) = app
            .send_to(
                "/users/Users/Create",
                json!({"username": "audited", "email": "audited@example.com", "password": common::PASSWORD}),
                &[("x-request-id", "req-create-1")],
            )
            .await;
        assert_eq!(status, 200);
        let id = created["user"]["id"].as_str().unwrap().to_owned();
        // Refused changes record nothing: a taken username, an unknown account.
        let (status, _) = app
            .call("Create", json!({"username": "audited", "email": "x@example.com", "password": common::PASSWORD}))
            .await;
        assert_eq!(status, 409);
        let (status, _) = common::micro(
            &app,
            "Update",
            KEY,
            json!({"id": "nobody", "username": "n"}),
        )
        .await;
        assert_eq!(status, 404);

        let (status, _) = app
            .call(
                "Login",
                json!({"username": "audited", "password": "wrong-password"}),
            )
            .await;
        assert_eq!(status, 401);
        let session = app.login("audited", common::PASSWORD).await;
        let session_id = session["id"].as_str().unwrap().to_owned();
        let (status, _) = common::micro(
            &app,
            "Update",
            KEY,
            json!({"id": id, "profile": {"plan": "pro"}}),
        )
        .await;
        assert_eq!(status, 200);
        // A session signs its own UpdatePassword: the actor is the user.
        let (status, body) = common::micro(
            &app,
            "UpdatePassword",
            &session_id,
            json!({"user_id": id, "old_password": common::PASSWORD,
                   "new_password": "newpassword1", "confirm_password": "newpassword1"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let session = app.login("audited", "newpassword1").await;
        let (status, _) = app
            .call("Logout", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 200);
        // No key: refused, and recorded.
        let (status, _) = app.call("Read", json!({"id": id})).await;
        assert_eq!(status, 401);

        let (kinds, page) = audit_kinds(&app, json!({"user_id": id})).await;
        assert_eq!(
            kinds,
            [
                "session.ended",
                "login.succeeded",
                "password.changed",
                "account.updated",
                "login.succeeded",
                "login.failed",
                "account.created",
            ]
        );
        assert!(page.get("next").is_none(), "one page: {page}");
        let events = page["events"].as_array().unwrap();
        let created = &events[6];
        assert_eq!(created["request_id"], "req-create-1");
        assert_eq!(created["client_ip"], "127.0.0.1");
        assert_eq!(created["actor"], "self");
        assert_eq!(created["outcome"], "success");
        assert_eq!(created["user_id"], id.as_str());
        assert!(created["at"].as_str().unwrap().parse::<i64>().unwrap() > 0);
        assert_eq!(events[5]["outcome"], "failure");
        assert_eq!(events[3]["actor"], "admin", "Update with the key");
        assert_eq!(
            events[2]["actor"], "self",
            "UpdatePassword with the session"
        );
        // Each request's id is its own.
        let ids: std::collections::HashSet<&str> = events
            .iter()
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 7);
        let text = page.to_string();
        assert!(!text.contains(common::PASSWORD) && !text.contains("newpassword1"));
        assert!(!text.contains(&session_id));

        // By kind, across users: the refused key.
        let (kinds, page) = audit_kinds(&app, json!({"kind": "admin_key.refused"})).await;
        assert_eq!(kinds, ["admin_key.refused"]);
        assert_eq!(page["events"][0]["outcome"], "failure");
        assert!(page["events"][0].get("user_id").is_none());
        let (status, body) =
            common::micro(&app, "ListAuditEvents", KEY, json!({"kind": "nonsense"})).await;
        common::assert_error(&(status, body), "ListAuditEvents", 400, "kind");
        // Without the key, no one reads it.
        let (status, _) = app.call("ListAuditEvents", json!({})).await;
        assert_eq!(status, 401);

        // Keyset paging: three pages of at most 3, newest first, nothing twice.
        let mut seen = Vec::new();
        let mut before = None;
        for _ in 0..10 {
            let mut query = json!({"user_id": id, "limit": 3});
            if let Some(b) = &before {
                query["before"] = json!(b);
            }
            let (kinds, page) = audit_kinds(&app, query).await;
            seen.extend(kinds);
            before = page.get("next").cloned();
            if before.is_none() {
                break;
            }
        }
        assert_eq!(seen.len(), 7, "{seen:?}");

        // By time: nothing before the first event, all of them from it.
        let now = app.clock_now();
        let (kinds, _) = audit_kinds(&app, json!({"user_id": id, "until": now - 3600})).await;
        assert!(kinds.is_empty());
        let (kinds, _) = audit_kinds(
            &app,
            json!({"user_id": id, "since": now - 3600, "until": now + 1}),
        )
        .await;
        assert_eq!(kinds.len(), 7);

        // The command line reads the same trail.
        let dir = tempfile::tempdir().unwrap();
        let output = command(dir.path())
            .args([
                "audit",
                "--user-id",
                &id,
                "--kind",
                "account.created",
                "--json",
            ])
            .env("DATABASE_URL", &app.db.raw_url)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let cli = json_of(&String::from_utf8(output.stdout).unwrap());
        assert_eq!(cli["events"][0]["request_id"], "req-create-1");
        assert_eq!(cli["events"].as_array().unwrap().len(), 1);

        // Retention: a day; the sweeper forgets what is older.
        let (status, _) = common::micro(&app, "Delete", KEY, json!({"id": id})).await;
        assert_eq!(status, 200);
        let (kinds, _) = audit_kinds(&app, json!({"kind": "account.deleted"})).await;
        assert_eq!(kinds, ["account.deleted"]);
        app.clock.advance(2 * 86_400);
        let (status, _) = app.call("Create", json!({"username": "later", "email": "later@example.com", "password": common::PASSWORD})).await;
        assert_eq!(status, 200);
        app.users.sweep().await.unwrap();
        let (kinds, _) = audit_kinds(&app, json!({})).await;
        assert_eq!(
            kinds,
            ["account.created"],
            "only the event newer than a day is left"
        );
    }
}

/// The events of the e-mail flows, the lockout and the second factors: each recorded
/// with its account, on both stores.
#[tokio::test]
async fn lockouts_resets_verification_and_second_factors_are_audited_on_both_stores() {
    use serde_json::json;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let sink = common::smtp::SmtpSink::start().await;
        let url = sink.url();
        let Some(app) = common::TestApp::spawn_with(backend, "lockouts_resets_verification", |c| {
            c.access.api_key = Some(KEY.into());
            c.mail.smtp_url = Some(url);
            c.limits.login_max_failures_per_ip = 0;
        })
        .await
        else {
            continue;
        };
        let user = app.create_user("flows").await;
        let id = user["id"].as_str().unwrap().to_owned();
        let email = "flows@example.com";

        // E-mail verification.
        // (The e-mails are sent by the application's backend, with the key.)
        let (status, _) = common::call_as(
            &app,
            "/v1/user/SendVerificationEmail",
            KEY,
            json!({"email": email, "subject": "Confirm", "text_content": "Open $micro_verification_link",
                   "redirect_url": "http://localhost/done", "failure_redirect_url": "http://localhost/failed"}),
        )
        .await;
        assert_eq!(status, 200);
        let mail = sink.next_mail(email).await;
        let link = mail.link();
        let token = reqwest::Url::parse(&link)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "token")
            .unwrap()
            .1
            .into_owned();
        let (status, _) = app.m3o("VerifyEmail", json!({"token": token})).await;
        assert_eq!(status, 200);

        // A lockout, by five wrong passwords for the account's name.
        lock_out(&app, "flows").await;

        // A password reset (which also clears the lockout).
        let (status, _) = common::call_as(
            &app,
            "/v1/user/SendPasswordResetEmail",
            KEY,
            json!({"email": email, "text_content": "Your code is $code."}),
        )
        .await;
        assert_eq!(status, 200);
        let mail = sink.next_mail(email).await;
        let code = mail
            .body
            .strip_prefix("Your code is ")
            .and_then(|r| r.strip_suffix('.'))
            .unwrap()
            .to_owned();
        let (status, body) = app
            .m3o(
                "ResetPassword",
                json!({"email": email, "code": code, "new_password": "newpassword1", "confirm_password": "newpassword1"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        // TOTP on, a sign-in with its second step, then the admin's reset.
        let session = app.login("flows", "newpassword1").await;
        let session_id = session["id"].as_str().unwrap().to_owned();
        let (status, started) = common::micro(&app, "StartTotp", &session_id, json!({})).await;
        assert_eq!(status, 200);
        let secret = started["secret"].as_str().unwrap().to_owned();
        let (status, _) = common::micro(
            &app,
            "ConfirmTotp",
            &session_id,
            json!({"code": common::totp::code(&secret, app.clock_now())}),
        )
        .await;
        assert_eq!(status, 200);
        let (status, challenge) = app
            .call(
                "Login",
                json!({"username": "flows", "password": "newpassword1"}),
            )
            .await;
        assert_eq!(status, 401);
        app.clock.advance(30);
        let (status, body) = app
            .call(
                "LoginMfa",
                json!({"challenge_id": challenge["challenge_id"],
                       "code": common::totp::code(&secret, app.clock_now())}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, _) =
            common::micro(&app, "ResetSecondFactors", KEY, json!({"user_id": id})).await;
        assert_eq!(status, 200);

        let (kinds, page) = audit_kinds(&app, json!({"user_id": id})).await;
        assert_eq!(
            kinds,
            [
                "second_factor.changed",
                "login.succeeded",
                "second_factor.changed",
                "login.succeeded",
                "password.reset",
                // The fifth failure locks the account as it is counted, before its
                // own event is written.
                "login.failed",
                "lockout",
                "login.failed",
                "login.failed",
                "login.failed",
                "login.failed",
                "email.verified",
                "account.created",
            ]
        );
        let events = page["events"].as_array().unwrap();
        assert_eq!(events[0]["actor"], "admin", "the admin's reset");
        assert_eq!(events[2]["actor"], "self", "TOTP turned on by its user");
        assert_eq!(
            events[6]["actor"], "system",
            "the service locked the account"
        );
        assert_eq!(events[6]["client_ip"], "127.0.0.1");
        let text = page.to_string();
        for secret_text in [
            secret.as_str(),
            code.as_str(),
            token.as_str(),
            session_id.as_str(),
        ] {
            assert!(!text.contains(secret_text));
        }
    }
}

/// Webhooks are queued with the change they announce (a refused change queues none),
/// given up after `--webhook-max-attempts`, and counted in the metrics; a start with an
/// endpoint but no usable secret is refused.
#[tokio::test]
async fn webhooks_are_queued_with_their_change_and_given_up_after_their_attempts_on_both_stores() {
    use serde_json::json;
    use std::sync::atomic::AtomicUsize;
    // An endpoint that is always down (500), counting the deliveries it refuses.
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    let routes = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });

    for backend in [Backend::Sqlite, Backend::Postgres] {
        let hook = endpoint.clone();
        let Some(app) = common::TestApp::spawn_with(backend, "webhooks_are_queued", move |c| {
            c.webhooks.webhook_urls = vec![hook];
            c.webhooks.webhook_secret = Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
            c.webhooks.webhook_max_attempts = 2;
            c.webhooks.webhook_retry_delay = 1;
        })
        .await
        else {
            continue;
        };
        let before = refused.load(Ordering::SeqCst);
        app.create_user("announced").await;
        let (status, _) = app
            .call("Create", json!({"username": "announced", "email": "other@example.com", "password": common::PASSWORD}))
            .await;
        assert_eq!(status, 409);
        let queued = app.db.count_rows("outbox WHERE channel = 'webhook'").await;
        assert_eq!(
            queued, 1,
            "one user.created; the refused Create queued nothing"
        );

        // The first attempt is refused; the retry is due a second later (on the test's
        // clock), is refused too, and the delivery is given up.
        wait_for_metric(&app, "users_webhooks_failed_total", 1.0).await;
        app.clock.advance(5);
        wait_for_metric(&app, "users_webhooks_dead_total", 1.0).await;
        assert_eq!(refused.load(Ordering::SeqCst) - before, 2);
        let dead = app
            .db
            .count_rows("outbox WHERE channel = 'webhook' AND state = 'dead'")
            .await;
        assert_eq!(dead, 1);
        let scraped = scrape(&app, None).await;
        assert_eq!(sample(&scraped, "users_webhooks_sent_total", &[]), 0.0);

        // A Logout (batched with its neighbours on SQLite) queues its own announcement.
        let session = app.login("announced", common::PASSWORD).await;
        let (status, _) = app
            .call("Logout", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 200);
        let user_id = session["user_id"].as_str().expect("user id");
        let ended = app
            .db
            .count_rows(&format!(
                "outbox WHERE channel = 'webhook' AND kind = 'session.ended' \
                 AND user_id = '{user_id}' AND body LIKE '%\"user_id\":\"{user_id}\"%'"
            ))
            .await;
        assert_eq!(ended, 1, "one session.ended, with the user's id");
    }
}

/// Waits (at most 30 s) until the metric `name` reaches `value`.
async fn wait_for_metric(app: &common::TestApp, name: &str, value: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = sample(&scrape(app, None).await, name, &[]);
        if now >= value {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {now}, below {value}"
        );
        // Not a synchronisation sleep: the pause between bounded polls of /metrics.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn webhook_urls_need_a_usable_secret() {
    let dir = tempfile::tempdir().unwrap();
    for (secret, expected) in [
        (None, "needs a secret"),
        (Some("not-a-whsec-secret"), "whsec_"),
    ] {
        let mut cmd = command(dir.path());
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--webhook-urls",
            "http://127.0.0.1:9/hooks",
        ]);
        if let Some(secret) = secret {
            cmd.env("USERS_WEBHOOK_SECRET", secret);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        if let Some(secret) = secret {
            assert!(!stderr.contains(secret), "{stderr}");
        }
    }
}

/// Five wrong passwords for `username`: its account is locked out, and even the right
/// password is then refused (429).
async fn lock_out(app: &common::TestApp, username: &str) {
    use serde_json::json;
    for _ in 0..5 {
        let (status, _) = app
            .call(
                "Login",
                json!({"username": username, "password": "wrong-password"}),
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, _) = app
        .call(
            "Login",
            json!({"username": username, "password": common::PASSWORD}),
        )
        .await;
    assert_eq!(status, 429, "locked out");
}

/// A browser of the console, by hand: no redirects followed, the console's cookie kept
/// once given, and the page's `Origin` sent with every form post unless told otherwise.
struct Console {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

/// A console answer: status, `Location` and `Set-Cookie`, and the page.
struct Shown {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    page: String,
}

impl Console {
    fn new(app: &common::TestApp) -> Self {
        Self {
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookie: None,
        }
    }

    async fn shown(response: reqwest::Response) -> Shown {
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let (status, location, set_cookie) = (
            response.status().as_u16(),
            header(reqwest::header::LOCATION),
            header(reqwest::header::SET_COOKIE),
        );
        Shown {
            status,
            location,
            set_cookie,
            page: response.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Shown {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", format!("users_console={cookie}"));
        }
        Self::shown(request.send().await.unwrap()).await
    }

    async fn post_from(&self, origin: Option<&str>, path: &str, form: &[(&str, &str)]) -> Shown {
        let mut request = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", format!("users_console={cookie}"));
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        Self::shown(request.send().await.unwrap()).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Shown {
        self.post_from(Some(&self.base.clone()), path, form).await
    }

    /// Signs in with `key`; keeps the cookie it is given.
    async fn sign_in(&mut self, key: &str) -> Shown {
        let shown = self.post("/admin/signin", &[("key", key)]).await;
        if let Some(cookie) = &shown.set_cookie {
            let value = cookie
                .strip_prefix("users_console=")
                .and_then(|rest| rest.split(';').next())
                .unwrap();
            self.cookie = Some(value.to_owned());
        }
        shown
    }
}

/// The value of the first hidden `session` input of a page.
fn first_session_handle(page: &str) -> String {
    let at = page.find(r#"name="session" value=""#).unwrap() + r#"name="session" value=""#.len();
    page[at..at + 16].to_owned()
}

#[tokio::test]
async fn the_admin_console_acts_as_the_admin_key_from_its_own_pages_only_on_both_stores() {
    use serde_json::json;
    for postgres in [false, true] {
        let backend = || {
            if postgres {
                Backend::Postgres
            } else {
                Backend::Sqlite
            }
        };
        // Without an admin key, there is no console.
        let Some(open) = common::TestApp::spawn(backend(), "admin_console_off").await else {
            continue;
        };
        let console = Console::new(&open);
        assert_eq!(console.get("/admin").await.status, 404);
        assert_eq!(console.get("/admin/users").await.status, 404);
        let shown = console.post("/admin/signin", &[("key", "anything")]).await;
        assert_eq!(shown.status, 404);
        assert!(shown.set_cookie.is_none());
        drop(open);

        let sink = common::smtp::SmtpSink::start().await;
        let url = sink.url();
        let app = common::TestApp::spawn_with(backend(), "admin_console", |c| {
            c.access.api_key = Some(KEY.into());
            c.mail.smtp_url = Some(url);
            c.limits.login_max_failures_per_ip = 0;
        })
        .await
        .unwrap();
        let mut console = Console::new(&app);

        // Signed out, every page leads to the sign-in form; a post is refused.
        let shown = console.get("/admin").await;
        assert_eq!(shown.status, 200);
        assert!(shown.page.contains(r#"action="/admin/signin""#));
        assert_eq!(
            console.get("/admin/users").await.location.as_deref(),
            Some("/admin")
        );
        let user = app.create_user("ops").await;
        let id = user["id"].as_str().unwrap().to_owned();
        let page = format!("/admin/users/{id}");
        assert_eq!(console.get(&page).await.location.as_deref(), Some("/admin"));
        assert_eq!(
            console.post(&format!("{page}/unlock"), &[]).await.status,
            401
        );

        // A wrong key is refused and recorded; the right one from another site, or
        // without the page's Origin, is refused too.
        let shown = console.sign_in("not-the-key").await;
        assert_eq!(shown.status, 401);
        assert!(shown.set_cookie.is_none());
        assert!(shown.page.contains("That is not the admin key."));
        let (kinds, _) = audit_kinds(&app, json!({"kind": "admin_key.refused"})).await;
        assert_eq!(kinds, ["admin_key.refused"]);
        for origin in [Some("http://evil.example"), None] {
            let shown = console
                .post_from(origin, "/admin/signin", &[("key", KEY)])
                .await;
            assert_eq!(shown.status, 403, "{origin:?}");
            assert!(shown.set_cookie.is_none());
        }

        // The right key: a Strict, HttpOnly cookie for /admin that does not hold it.
        let shown = console.sign_in(KEY).await;
        assert_eq!(shown.status, 303);
        assert_eq!(shown.location.as_deref(), Some("/admin/users"));
        let cookie = shown.set_cookie.unwrap();
        for part in [
            "HttpOnly",
            "SameSite=Strict",
            "Path=/admin",
            "Max-Age=28800",
        ] {
            assert!(cookie.contains(part), "{part} missing from {cookie}");
        }
        assert!(!cookie.contains(KEY));
        assert_eq!(
            console.get("/admin").await.location.as_deref(),
            Some("/admin/users")
        );

        // A made-up cookie signs nothing.
        let real = console.cookie.clone();
        console.cookie = Some(format!("{}.AAAA", app.clock_now() + 60));
        assert_eq!(console.get("/admin/users").await.status, 303);
        console.cookie = real;

        // The list and the search.
        app.create_user("bystander").await;
        let shown = console.get("/admin/users").await;
        assert_eq!(shown.status, 200);
        assert!(shown.page.contains(">ops<") && shown.page.contains(">bystander<"));
        for q in ["ops", "ops@example.com", id.as_str()] {
            let shown = console
                .get(&format!("/admin/users?q={}", q.replace('@', "%40")))
                .await;
            assert!(shown.page.contains(">ops<"), "{q}");
            assert!(!shown.page.contains(">bystander<"), "{q}");
        }
        let shown = console.get("/admin/users?q=nobody").await;
        assert!(shown.page.contains("No user has this"));

        // The user's page: two sessions, a lockout.
        let first = app.login("ops", common::PASSWORD).await;
        let second = app.login("ops", common::PASSWORD).await;
        lock_out(&app, "ops").await;
        let shown = console.get(&page).await;
        assert_eq!(shown.status, 200);
        assert!(shown.page.contains("Locked out until"), "{}", shown.page);
        assert!(shown.page.contains("login.failed") && shown.page.contains("account.created"));
        assert!(!shown.page.contains(first["id"].as_str().unwrap()));

        // A post from another site is refused, even with the cookie, and changes nothing.
        let shown = console
            .post_from(Some("http://evil.example"), &format!("{page}/unlock"), &[])
            .await;
        assert_eq!(shown.status, 403);
        let (status, _) = app
            .call(
                "Login",
                json!({"username": "ops", "password": common::PASSWORD}),
            )
            .await;
        assert_eq!(status, 429, "still locked out");

        // Unlock.
        let shown = console.post(&format!("{page}/unlock"), &[]).await;
        assert_eq!(
            shown.location.as_deref(),
            Some(format!("{page}?notice=unlocked").as_str())
        );
        let third = app.login("ops", common::PASSWORD).await;
        assert!(console.get(&page).await.page.contains("Not locked out."));
        let (kinds, lifted) =
            audit_kinds(&app, json!({"user_id": id, "kind": "lockout.lifted"})).await;
        assert_eq!(kinds, ["lockout.lifted"], "{lifted}");
        assert_eq!(lifted["events"][0]["actor"], "admin");

        // End one session, then every one.
        let shown = console.get(&page).await;
        let handle = first_session_handle(&shown.page);
        let shown = console
            .post(&format!("{page}/sessions/end"), &[("session", &handle)])
            .await;
        assert_eq!(shown.status, 303);
        let live = |session: &serde_json::Value| {
            let id = session["id"].as_str().unwrap().to_owned();
            let app = &app;
            async move { app.call("ReadSession", json!({"session_id": id})).await.0 }
        };
        let statuses = [live(&first).await, live(&second).await, live(&third).await];
        assert_eq!(
            statuses.iter().filter(|s| **s == 401).count(),
            1,
            "one session ended: {statuses:?}"
        );
        let shown = console.post(&format!("{page}/sessions/end-all"), &[]).await;
        assert_eq!(shown.status, 303);
        for session in [&first, &second, &third] {
            assert_eq!(live(session).await, 401);
        }
        assert!(console.get(&page).await.page.contains("No live session."));

        // The profile.
        let shown = console
            .post(
                &format!("{page}/profile"),
                &[
                    ("username", "ops2"),
                    ("email", "ops2@example.com"),
                    ("profile", "team = blue\n\nrole=on-call"),
                ],
            )
            .await;
        assert_eq!(shown.status, 303, "{}", shown.page);
        let (status, read) = common::micro(&app, "Read", KEY, json!({"id": id})).await;
        assert_eq!(status, 200);
        assert_eq!(read["user"]["username"], "ops2");
        assert_eq!(read["user"]["email"], "ops2@example.com");
        assert_eq!(
            read["user"]["profile"],
            json!({"team": "blue", "role": "on-call"})
        );
        // A bad change is shown on the page and changes nothing.
        let shown = console
            .post(
                &format!("{page}/profile"),
                &[("username", "bystander"), ("email", "ops2@example.com")],
            )
            .await;
        assert_eq!(shown.status, 409);
        assert!(shown.page.contains("already taken"), "{}", shown.page);
        let shown = console
            .post(
                &format!("{page}/profile"),
                &[
                    ("username", "ops2"),
                    ("email", "ops2@example.com"),
                    ("profile", "no equals sign"),
                ],
            )
            .await;
        assert_eq!(shown.status, 400);
        let (_, read) = common::micro(&app, "Read", KEY, json!({"id": id})).await;
        assert_eq!(read["user"]["username"], "ops2");

        // The verification e-mail, again.
        let shown = console.post(&format!("{page}/verification"), &[]).await;
        assert_eq!(shown.status, 303, "{}", shown.page);
        let mail = sink.next_mail("ops2@example.com").await;
        assert!(
            mail.body.contains("/v1/user/verify?token="),
            "{}",
            mail.body
        );

        // Second factors: none to remove, then TOTP removed.
        let shown = console.post(&format!("{page}/factors/reset"), &[]).await;
        assert_eq!(shown.status, 404);
        let session = app.login("ops2", common::PASSWORD).await;
        let session_id = session["id"].as_str().unwrap().to_owned();
        let (_, started) = common::micro(&app, "StartTotp", &session_id, json!({})).await;
        let secret = started["secret"].as_str().unwrap().to_owned();
        let code = common::totp::code(&secret, app.clock_now());
        let (status, _) =
            common::micro(&app, "ConfirmTotp", &session_id, json!({"code": code})).await;
        assert_eq!(status, 200);
        assert!(console.get(&page).await.page.contains("on since"));
        let shown = console.post(&format!("{page}/factors/reset"), &[]).await;
        assert_eq!(shown.status, 303);
        let (_, factors) =
            common::micro(&app, "ReadSecondFactors", KEY, json!({"user_id": id})).await;
        assert_eq!(factors["totp"], false, "{factors}");

        // Every change is the admin's in the audit trail, with the console's request id.
        let (kinds, events) =
            audit_kinds(&app, json!({"user_id": id, "kind": "account.updated"})).await;
        assert_eq!(kinds, ["account.updated"]);
        assert_eq!(events["events"][0]["actor"], "admin");
        assert_eq!(events["events"][0]["client_ip"], "127.0.0.1");

        // Delete: a wrong confirmation changes nothing; the username deletes.
        let shown = console.get(&format!("{page}/delete")).await;
        assert!(shown.page.contains("Type the username to confirm"));
        let shown = console
            .post(&format!("{page}/delete"), &[("confirm", "ops")])
            .await;
        assert_eq!(shown.status, 400);
        let (status, _) = common::micro(&app, "Read", KEY, json!({"id": id})).await;
        assert_eq!(status, 200);
        let shown = console
            .post(&format!("{page}/delete"), &[("confirm", "ops2")])
            .await;
        assert_eq!(
            shown.location.as_deref(),
            Some("/admin/users?notice=deleted")
        );
        let (status, _) = common::micro(&app, "Read", KEY, json!({"id": id})).await;
        assert_eq!(status, 404);
        assert_eq!(console.get(&page).await.status, 404);

        // Signing out forgets the cookie; the sign-in lasts its hours and no more.
        let shown = console.post("/admin/signout", &[]).await;
        assert!(shown.set_cookie.unwrap().contains("Max-Age=0"));
        assert_eq!(
            console.get("/admin/users").await.status,
            200,
            "the cookie itself is still valid until it expires"
        );
        app.clock.advance(8 * 3600);
        assert_eq!(
            console.get("/admin/users").await.location.as_deref(),
            Some("/admin")
        );
    }
}
