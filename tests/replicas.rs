//! Several stateless replicas on one PostgreSQL database or one SQLite file, and a
//! database outage. The PostgreSQL tests need `TEST_DATABASE_URL`; without it they say
//! they were skipped.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{command, Service};
use common::{assert_error, Backend, TestApp, TestDatabase, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A replica: the real binary, on the shared database.
fn replica(db: &TestDatabase, dir: &std::path::Path) -> Service {
    let mut cmd = command(dir);
    cmd.args(["--listen", "127.0.0.1:0", "--database-url", &db.raw_url])
        // All of this test's sign-ups come from one address.
        .env("USERS_CREATE_PER_HOUR", "0");
    Service::start(cmd)
}

async fn call(
    client: &reqwest::Client,
    addr: SocketAddr,
    method: &str,
    body: Value,
) -> (StatusCode, Value) {
    let response = client
        .post(format!("http://{addr}/users/Users/{method}"))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    let status = response.status();
    (status, response.json().await.expect("JSON body"))
}

/// Creates the account `asim` through the replica at `addr`; its id.
async fn create_asim(client: &reqwest::Client, addr: SocketAddr) -> String {
    let (status, created) = call(
        client,
        addr,
        "Create",
        json!({"username": "asim", "email": "asim@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    created["user"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_database_agree_at_once() {
    let Some(db) = TestDatabase::create(Backend::Postgres, "replicas::two_replicas").await else {
        return;
    };
    // Replica A migrates the new database; B then starts on the migrated schema.
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path());
    let b = replica(&db, dir.path());
    let client = reqwest::Client::new();

    let user_id = create_asim(&client, a.addr).await;

    // A session created through A is read through B.
    let (status, login) = call(
        &client,
        a.addr,
        "Login",
        json!({"username": "asim", "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200);
    let session_id = login["session"]["id"].clone();
    let (status, read) = call(
        &client,
        b.addr,
        "ReadSession",
        json!({"session_id": session_id}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(read["session"], login["session"]);

    // Logout through B is refused by A at once.
    let (status, _) = call(&client, b.addr, "Logout", json!({"session_id": session_id})).await;
    assert_eq!(status, 200);
    let answer = call(
        &client,
        a.addr,
        "ReadSession",
        json!({"session_id": session_id}),
    )
    .await;
    assert_error(&answer, "ReadSession", 401, "session not found");

    // 20 concurrent Creates of one username spread over A and B: exactly one wins.
    let mut creates = tokio::task::JoinSet::new();
    for i in 0..20 {
        let client = client.clone();
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        creates.spawn(async move {
            call(
                &client,
                addr,
                "Create",
                json!({"username": "contested", "email": format!("c{i}@example.com"), "password": PASSWORD}),
            )
            .await
        });
    }
    let mut ok = 0;
    let mut conflicts = 0;
    while let Some(result) = creates.join_next().await {
        let answer = result.unwrap();
        match answer.0.as_u16() {
            200 => ok += 1,
            409 => {
                assert_error(&answer, "Create", 409, "username is already taken");
                conflicts += 1;
            }
            other => panic!("unexpected {other}: {}", answer.1),
        }
    }
    assert_eq!((ok, conflicts), (1, 19));

    // A password changed through A works for Login through B, and the old one does not.
    let (status, _) = call(
        &client,
        a.addr,
        "UpdatePassword",
        json!({"user_id": user_id, "old_password": PASSWORD, "new_password": "newpassword1", "confirm_password": "newpassword1"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        b.addr,
        "Login",
        json!({"username": "asim", "password": "newpassword1"}),
    )
    .await;
    assert_eq!(status, 200);
    let answer = call(
        &client,
        b.addr,
        "Login",
        json!({"username": "asim", "password": PASSWORD}),
    )
    .await;
    assert_error(&answer, "Login", 401, "incorrect");

    let (a_exit, _) = a.terminate();
    let (b_exit, _) = b.terminate();
    assert!(a_exit.success() && b_exit.success());
}

/// A `users-service user ...` command on `db`: whether it succeeded, and its output.
fn user_command(db: &TestDatabase, args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path())
        .arg("user")
        .args(args)
        .env("DATABASE_URL", &db.raw_url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// Each replica on a SQLite file keeps the sessions and users it has read until the
/// file changes (src/store/sql/read_cache.rs). A change through the other replica, or
/// through the command line, is seen by the very next session check, Read or Search.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_sqlite_file_see_each_others_changes_at_once() {
    let Some(db) = TestDatabase::create(Backend::Sqlite, "replicas::sqlite_file").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let a = replica(&db, dir.path());
    let b = replica(&db, dir.path());
    let client = reqwest::Client::new();
    let user_id = create_asim(&client, a.addr).await;
    let login = || async {
        let (status, login) = call(
            &client,
            a.addr,
            "Login",
            json!({"username": "asim", "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 200, "{login}");
        login["session"]["id"].clone()
    };
    // Reads each replica's answer twice: the second from its cache, if it kept one.
    let read_twice = |session: Value| {
        let client = client.clone();
        async move {
            let mut answers = Vec::new();
            for addr in [a.addr, b.addr, a.addr, b.addr] {
                answers
                    .push(call(&client, addr, "ReadSession", json!({"session_id": session})).await);
            }
            answers
        }
    };

    // A Logout through one replica.
    let session = login().await;
    for (status, read) in read_twice(session.clone()).await {
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["session"]["username"], "asim");
    }
    let (status, _) = call(&client, b.addr, "Logout", json!({"session_id": session})).await;
    assert_eq!(status, 200);
    for answer in read_twice(session).await {
        assert_error(&answer, "ReadSession", 401, "session not found");
    }

    // Reads of the account each way, each replica's twice: the answers, by replica.
    let read_user = |name: &'static str| {
        let (client, user_id) = (client.clone(), user_id.clone());
        async move {
            let mut answers = Vec::new();
            for addr in [a.addr, b.addr, a.addr, b.addr] {
                let by_id = call(&client, addr, "Read", json!({"id": user_id})).await;
                let by_name = call(&client, addr, "Read", json!({"username": name})).await;
                let (status, search) =
                    call(&client, addr, "Search", json!({"username": name})).await;
                assert_eq!(status, 200, "{search}");
                answers.push((by_id, by_name, search["users"].clone()));
            }
            answers
        }
    };

    // A change of the account through the other.
    let session = login().await;
    read_twice(session.clone()).await;
    for ((status, by_id), (status_by_name, by_name), found) in read_user("asim").await {
        assert_eq!(
            (status.as_u16(), status_by_name.as_u16()),
            (200, 200),
            "{by_id} {by_name}"
        );
        assert_eq!(by_id["user"]["username"], "asim");
        assert_eq!(by_name["user"]["id"], user_id.as_str());
        assert_eq!(found.as_array().map(Vec::len), Some(1), "{found}");
    }
    let (status, updated) = call(
        &client,
        b.addr,
        "Update",
        json!({"id": user_id, "username": "asim2"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    for (status, read) in read_twice(session.clone()).await {
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["session"]["username"], "asim2");
    }
    for ((status, by_id), by_old_name, found) in read_user("asim").await {
        assert_eq!(status, 200, "{by_id}");
        assert_eq!(by_id["user"]["username"], "asim2");
        assert_error(&by_old_name, "Read", 404, "user not found");
        assert_eq!(found, json!([]), "the old name finds no one");
    }
    for (_, (status, by_name), found) in read_user("asim2").await {
        assert_eq!(status, 200, "{by_name}");
        assert_eq!(found[0]["username"], "asim2");
    }

    // The command line, a process of its own.
    let (ok, output) = user_command(&db, &["end-sessions", &user_id]);
    assert!(ok, "{output}");
    for answer in read_twice(session).await {
        assert_error(&answer, "ReadSession", 401, "session not found");
    }
    read_user("asim2").await;
    let (ok, output) = user_command(&db, &["delete", &user_id]);
    assert!(ok, "{output}");
    for (by_id, by_name, found) in read_user("asim2").await {
        assert_error(&by_id, "Read", 404, "user not found");
        assert_error(&by_name, "Read", 404, "user not found");
        assert_eq!(found, json!([]));
    }

    let (a_exit, _) = a.terminate();
    let (b_exit, _) = b.terminate();
    assert!(a_exit.success() && b_exit.success());
}

/// A TCP relay in front of PostgreSQL that the test can cut and restore, standing in
/// for a database outage without stopping the server other tests share.
struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(addr: SocketAddr, upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind(addr).await.expect("relay binds");
        let addr = listener.local_addr().unwrap();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay {
            addr,
            upstream,
            tasks,
        }
    }

    /// Closes the listener and every relayed connection.
    async fn cut(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&self) -> Relay {
        Relay::start(self.addr, self.upstream).await
    }
}

/// The `host[:port]` part of a PostgreSQL URL, and the address it names.
fn host_port(url: &str) -> (String, SocketAddr) {
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host = authority.rsplit('@').next().unwrap().to_string();
    let with_port = if host.contains(':') {
        host.clone()
    } else {
        format!("{host}:5432")
    };
    let addr = with_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("TEST_DATABASE_URL's host must be an IP address or localhost");
    (host, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_quickly_and_recovers() {
    let Some(db) = TestDatabase::create(Backend::Postgres, "replicas::outage").await else {
        return;
    };
    let (host, upstream) = host_port(&db.raw_url);
    let relay = Relay::start("127.0.0.1:0".parse().unwrap(), upstream).await;
    let via_relay = db.raw_url.replacen(&host, &relay.addr.to_string(), 1);
    let app = TestApp::spawn_on(db, |config| {
        config.database.url = via_relay.parse().unwrap();
    })
    .await;
    app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;

    relay.cut().await;
    // The client gives up after 5 s: a hang fails the test instead of stalling it.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (method, body) in [
        ("ReadSession", json!({"session_id": session["id"]})),
        ("Read", json!({"id": "anyone"})),
        (
            "Create",
            json!({"username": "during", "email": "during@example.com", "password": PASSWORD}),
        ),
    ] {
        let response = impatient
            .post(app.url(&format!("/users/Users/{method}")))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} must answer within 5 s during an outage: {e}"));
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_error(&(status, body), method, 503, "the database is unavailable");
    }
    let health = impatient
        .get(app.url("/health"))
        .send()
        .await
        .expect("health answers within 5 s");
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["code"], 503);

    // The database comes back: the service recovers by itself.
    let _restored = relay.restore().await;
    let health = impatient.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let (status, body) = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.call("Search", json!({"username": "during"})).await;
    assert_eq!(status, 200);
}

/// The point reads on PostgreSQL keep connections of their own. When the server closes
/// them (a restart, an administrator's `pg_terminate_backend`), the next read on each
/// finds it closed and is made again on a new one: no request sees the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_reads_survive_the_server_closing_their_connections() {
    let Some(db) = TestDatabase::create(Backend::Postgres, "replicas::closed_readers").await else {
        return;
    };
    let raw_url = db.raw_url.clone();
    let app = TestApp::spawn_on(db, |_| {}).await;
    let user = app.create_user("rhea").await;
    let session = app.login("rhea", PASSWORD).await;
    let calls = [
        (
            app.url("/users/Users/ReadSession"),
            json!({"session_id": session["id"]}),
        ),
        (app.url("/users/Users/Read"), json!({"id": user["id"]})),
    ];
    // 16 reads at once, so that several reader connections are open.
    let reads = |round: usize| {
        let calls = calls.clone();
        async move {
            let client = reqwest::Client::new();
            let mut running = tokio::task::JoinSet::new();
            for n in 0..16 {
                let (url, body) = calls[n % 2].clone();
                let client = client.clone();
                running.spawn(async move {
                    let response = client.post(url).json(&body).send().await.unwrap();
                    (response.status(), response.text().await.unwrap())
                });
            }
            while let Some(answer) = running.join_next().await {
                let (status, body) = answer.unwrap();
                assert_eq!(status, StatusCode::OK, "round {round}: {body}");
            }
        }
    };
    reads(1).await;
    let mut admin = sqlx::PgConnection::connect(&raw_url).await.unwrap();
    let (closed,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(closed > 0, "the service had no connection to close");
    reads(2).await;
    reads(3).await;
}

/// Replicas that start at once on a new database all start, on SQLite as on
/// PostgreSQL: one applies the migrations while the others wait, and no migration is
/// applied twice (sqlx's migrator takes no lock on SQLite of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_a_new_database_all_start_on_both_stores() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for _ in 0..5 {
            let Some(db) = TestDatabase::create(backend, "replicas::starting_at_once").await else {
                break;
            };
            let config = users_service::config::DatabaseConfig::new(db.url.clone());
            let opening: Vec<_> = (0..6)
                .map(|_| {
                    let config = config.clone();
                    tokio::spawn(async move { users_service::server::open_store(&config).await })
                })
                .collect();
            for opened in opening {
                let store = opened.await.unwrap().unwrap_or_else(|err| {
                    panic!(
                        "{backend:?}: a replica did not start: {}",
                        users_service::error::chain(&err)
                    )
                });
                store.check_schema().await.unwrap();
                store.close().await;
            }
        }
    }
}
