//! The binary as an operator runs it: flags, start-up errors, defaults, logs, signals.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::process::{
    command, http, http_with, json_field, signal, signal_term, Service, DEADLINE,
};

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path()).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, env) in [
        ("--listen", "USERS_LISTEN"),
        ("--database-url", "DATABASE_URL"),
        ("--session-ttl", "USERS_SESSION_TTL"),
        ("--cors-origins", "USERS_CORS_ORIGINS"),
        ("--db-max-connections", "USERS_DB_MAX_CONNECTIONS"),
        ("--db-acquire-timeout", "USERS_DB_ACQUIRE_TIMEOUT"),
        ("--db-wait", "USERS_DB_WAIT"),
        ("--log-format", "USERS_LOG_FORMAT"),
        ("--smtp-url", "USERS_SMTP_URL"),
        ("--mail-from", "USERS_MAIL_FROM"),
        ("--public-url", "USERS_PUBLIC_URL"),
        ("--redirect-allowlist", "USERS_REDIRECT_ALLOWLIST"),
        ("--magic-link-ttl", "USERS_MAGIC_LINK_TTL"),
        ("--mails-per-hour", "USERS_MAILS_PER_HOUR"),
        ("--mail-max-attempts", "USERS_MAIL_MAX_ATTEMPTS"),
        ("--mail-retry-delay", "USERS_MAIL_RETRY_DELAY"),
        ("--allowed-hosts", "USERS_ALLOWED_HOSTS"),
        ("--max-connections-per-ip", "USERS_MAX_CONNECTIONS_PER_IP"),
        ("--new-connection-timeout", "USERS_NEW_CONNECTION_TIMEOUT"),
        ("--keep-alive-timeout", "USERS_KEEP_ALIVE_TIMEOUT"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
        assert!(
            help.contains(&format!("env: {env}=")) || help.contains(&format!("env: {env}]")),
            "{env} missing from --help:\n{help}"
        );
    }
    assert!(help.contains("[default: 127.0.0.1:8080]"));
    assert!(help.contains("[default: sqlite://users.db]"));
    assert!(help.contains("[default: 604800]"));
}

#[test]
fn bad_configuration_fails_at_start_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let missing_dir = format!("sqlite://{}/no/such/dir/users.db", dir.path().display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--database-url", "mysql://localhost/users"],
            "unsupported database URL",
        ),
        (vec!["--listen", "nonsense"], "--listen"),
        (vec!["--session-ttl", "0"], "--session-ttl"),
        (vec!["--session-ttl", "soon"], "--session-ttl"),
        (vec!["--db-max-connections", "0"], "--db-max-connections"),
        (
            vec!["--smtp-url", "http://mail.example.com"],
            "invalid SMTP URL",
        ),
        (
            vec!["--mail-from", "not an address"],
            "invalid sender address",
        ),
        (
            vec!["--public-url", "ftp://example.com"],
            "USERS_PUBLIC_URL",
        ),
        (
            vec!["--redirect-allowlist", "https://app.example.com/path"],
            "USERS_REDIRECT_ALLOWLIST",
        ),
        (vec!["--listen", &taken_addr], "cannot listen on"),
        (
            vec!["--database-url", &missing_dir, "--db-wait", "0"],
            "cannot open the database",
        ),
        (
            vec![
                "--database-url",
                "postgres://postgres@127.0.0.1:1/users",
                "--db-acquire-timeout",
                "1",
                "--db-wait",
                "0",
            ],
            "cannot open the database postgres://postgres@127.0.0.1:1/users",
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = command(dir.path());
        cmd.args(&args);
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let output = cmd.output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{args:?} should fail");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: exactly one line, got:\n{stderr}");
        assert!(lines[0].contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    drop(taken);
}

#[test]
fn starts_with_defaults_creating_users_db_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"]);
    let service = Service::start(cmd);
    let (status, body) = http(service.addr, "GET", "/health", "");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    assert!(
        dir.path().join("users.db").exists(),
        "users.db is created in the working directory"
    );
    let (exit, logs) = service.terminate();
    assert!(
        exit.success(),
        "SIGTERM is a clean stop: {exit:?} {logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("users-service stopped")),
        "{logs:#?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("TOTP secrets are stored in clear")),
        "{logs:#?}"
    );
}

#[test]
fn the_encryption_key_is_named_at_start_by_its_id_and_never_printed() {
    const KEY: &str = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=";
    let id = users_service::core::sealing::SealingKeys::parse(KEY)
        .unwrap()
        .current()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("USERS_ENCRYPTION_KEY", KEY);
    let service = Service::start(cmd);
    let (_, logs) = service.terminate();
    assert!(
        logs.iter()
            .any(|l| l.contains("TOTP secrets are encrypted at rest")
                && l.contains(&format!("key={id}"))),
        "{logs:#?}"
    );
    assert!(!logs.iter().any(|l| l.contains(&KEY[..16])), "{logs:#?}");
    // From a file, one key a line: the first encrypts.
    const NEXT: &str = "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=";
    let next_id = users_service::core::sealing::SealingKeys::parse(NEXT)
        .unwrap()
        .current()
        .unwrap()
        .to_string();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("{NEXT}\n{KEY}\n")).unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("USERS_ENCRYPTION_KEY_FILE", &file);
    let (_, logs) = Service::start(cmd).terminate();
    assert!(
        logs.iter()
            .any(|l| l.contains("TOTP secrets are encrypted at rest")
                && l.contains(&format!("key={next_id}"))),
        "{logs:#?}"
    );
    // A key that is not one is refused at start.
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("USERS_ENCRYPTION_KEY", "too-short");
    let output = cmd.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("not base64 of 32 bytes"), "{stderr}");
    assert!(!stderr.contains("too-short"), "{stderr}");
}

#[test]
fn logs_one_line_per_request_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "debug");
    let service = Service::start(cmd);
    let password = "s3cret-Passw0rd";
    let (status, _) = http(
        service.addr,
        "POST",
        "/users/Users/Create",
        &format!(r#"{{"username":"asim","email":"asim@example.com","password":"{password}"}}"#),
    );
    assert_eq!(status, 200);
    let (status, body) = http(
        service.addr,
        "POST",
        "/users/Users/Login",
        &format!(r#"{{"username":"asim","password":"{password}"}}"#),
    );
    assert_eq!(status, 200);
    let session = json_field(&body, "/session/id");
    let (status, _) = http(
        service.addr,
        "POST",
        "/users/Users/ReadSession",
        &format!(r#"{{"session_id":"{session}"}}"#),
    );
    assert_eq!(status, 200);
    let (status, _) = http(
        service.addr,
        "POST",
        "/users/Users/Login",
        r#"{"username":"asim","password":"wrong-password-123"}"#,
    );
    assert_eq!(status, 401);
    let (_, logs) = service.terminate();
    let request_lines: Vec<&String> = logs.iter().filter(|l| l.contains(" request ")).collect();
    assert_eq!(request_lines.len(), 4, "one line per request: {logs:#?}");
    let login = request_lines[1];
    assert!(
        login.contains("method=POST") && login.contains("path=/users/Users/Login"),
        "{login}"
    );
    assert!(
        login.contains("status=200") && login.contains("latency_ms="),
        "{login}"
    );
    assert!(request_lines[3].contains("status=401"));
    let all = logs.join("\n");
    for secret in [password, "wrong-password-123", session.as_str(), "$argon2"] {
        assert!(
            !all.contains(secret),
            "the log contains a secret ({secret}):\n{all}"
        );
    }
}

#[test]
fn without_smtp_mails_are_logged_with_their_link_and_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--public-url",
        "https://id.example.com/",
    ])
    .env("RUST_LOG", "info");
    let mut service = Service::start(cmd);
    let (status, _) = http(
        service.addr,
        "POST",
        "/v1/user/Create",
        r#"{"username":"asim","email":"asim@example.com","password":"s3cret-Passw0rd"}"#,
    );
    assert_eq!(status, 200);
    let (status, body) = http(
        service.addr,
        "POST",
        "/v1/user/SendVerificationEmail",
        r#"{"email":"asim@example.com","text_content":"Open $micro_verification_link","redirect_url":"https://app.example.com/ok","failure_redirect_url":"https://app.example.com/no"}"#,
    );
    assert_eq!((status, body.as_str()), (200, "{}"));
    // The outbox sends (here: logs) the mail after the answer; a stop before then
    // leaves it queued for the next start.
    service.wait_for_lines("mail not sent", 1);
    let (_, logs) = service.terminate();
    assert!(
        logs.iter().any(|l| l.contains("no SMTP server is set")),
        "start-up says mail is not sent: {logs:#?}"
    );
    let mail = logs
        .iter()
        .find(|l| l.contains("mail not sent"))
        .unwrap_or_else(|| panic!("no mail line: {logs:#?}"));
    assert!(mail.contains("WARN"), "{mail}");
    assert!(mail.contains("to=\"asim@example.com\""), "{mail}");
    // The link, on the public address, so the flow can be finished by hand.
    assert!(
        mail.contains("body=Open https://id.example.com/v1/user/verify?token="),
        "{mail}"
    );
}

/// With tenants, SIGHUP reloads them: a tenant added to `--tenants-file` is served, a
/// file that cannot be used is logged and changes nothing, and a tenant removed is
/// refused and its pool closed; the process goes on and stops cleanly.
#[test]
fn sighup_reloads_the_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tenants");
    std::fs::write(&list, "acme\n").unwrap();
    let mut cmd = command(dir.path());
    // A short request deadline: a removed tenant's pool closes two seconds after.
    cmd.args(["--listen", "127.0.0.1:0", "--request-timeout", "1"])
        .args(["--tenancy", "namespace", "--tenants-file"])
        .arg(&list);
    let mut service = Service::start(cmd);
    let addr = service.addr;
    let create = |name: &str, tenant: &str| {
        let body = format!(
            r#"{{"username":"{name}","email":"{name}@example.com","password":"correct-horse-1"}}"#
        );
        http_with(
            addr,
            "POST",
            "/users/Users/Create",
            &body,
            &[("Micro-Namespace", tenant)],
        )
    };
    assert_eq!(create("ann", "acme").0, 200);
    assert_eq!(create("bea", "globex").0, 400);
    let hang_up = |child: &std::process::Child| signal(child, "HUP");

    std::fs::write(&list, "acme\nglobex\n").unwrap();
    hang_up(&service.child);
    service.wait_for_lines("tenants reloaded", 1);
    let (status, body) = create("bea", "globex");
    assert_eq!(status, 200, "{body}");

    std::fs::write(&list, "acme\nNot A Name\n").unwrap();
    hang_up(&service.child);
    service.wait_for_lines("the tenants were not reloaded", 1);
    let (status, body) = create("cid", "globex");
    assert_eq!(status, 200, "{body}");

    // acme removed: refused at once, its pool closed after the request deadline.
    std::fs::write(&list, "globex\n").unwrap();
    hang_up(&service.child);
    service.wait_for_lines("tenants reloaded", 2);
    assert_eq!(create("dee", "acme").0, 400);
    service.wait_for_lines("the removed tenants' pools are closed", 1);

    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{exit:?} {logs:#?}");
}

#[test]
fn sigterm_finishes_the_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"]);
    let service = Service::start(cmd);
    let body =
        r#"{"username":"inflight","email":"inflight@example.com","password":"correct-horse-1"}"#;
    let mut stream = TcpStream::connect(service.addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // With Expect: 100-continue the server says "100 Continue" once the handler is
    // reading the body: from then on the request is in flight.
    write!(
        stream,
        "POST /users/Users/Create HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert!(String::from_utf8_lossy(&interim).starts_with("HTTP/1.1 100 Continue"));
    signal_term(&service.child);
    stream.write_all(body.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""username":"inflight""#));
    let mut service = service;
    let (exit, _) = service.wait();
    assert!(exit.success());
    assert!(
        TcpStream::connect(service.addr).is_err(),
        "no longer listening"
    );
}

#[test]
fn a_public_address_needs_an_admin_key_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without an admin key"),
        "{stderr}"
    );

    let mut cmd = command(dir.path());
    cmd.args(["--listen", "0.0.0.0:0", "--allow-unauthenticated"]);
    let service = Service::start(cmd);
    let (exit, logs) = service.terminate();
    assert!(exit.success());
    assert!(
        logs.iter()
            .any(|l| l.contains("WARN") && l.contains("no admin key is set")),
        "{logs:#?}"
    );

    let mut cmd = command(dir.path());
    cmd.args(["--listen", "0.0.0.0:0"])
        .env("USERS_API_KEY", "k");
    let service = Service::start(cmd);
    let (exit, logs) = service.terminate();
    assert!(exit.success());
    assert!(
        !logs.iter().any(|l| l.contains("no admin key")),
        "{logs:#?}"
    );
}

#[test]
fn the_admin_key_can_be_read_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("admin.key");
    std::fs::write(&key_file, "file-key-123\n").unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0", "--api-key-file"])
        .arg(&key_file);
    let service = Service::start(cmd);
    let (status, body) = http(service.addr, "POST", "/users/Users/Read", r#"{"id":"x"}"#);
    assert_eq!(status, 401, "{body}");
    let (status, body) = http_with(
        service.addr,
        "POST",
        "/users/Users/Read",
        r#"{"id":"x"}"#,
        &[("Authorization", "Bearer file-key-123")],
    );
    assert_eq!(status, 404, "the key is accepted: {body}");
    service.terminate();

    let output = command(dir.path())
        .args(["--listen", "127.0.0.1:0", "--api-key-file", "/no/such/key"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        !output.status.success() && stderr.contains("cannot read the admin key file"),
        "{stderr}"
    );
}

#[test]
fn argon2_parameters_below_the_owasp_minimum_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        ["--argon2-m-kib", "8192"],
        ["--argon2-t", "1"],
        ["--argon2-p", "0"],
    ] {
        let output = command(dir.path()).args(args).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}

/// Everything a deployment does in a day, logged at the most verbose level: the log
/// must still hold no password, hash, session id, token digest or admin key, while the
/// security events are there as structured fields.
#[test]
fn a_full_run_logs_security_events_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let key = "admin-key-never-logged";
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .env("USERS_API_KEY", key);
    let service = Service::start(cmd);
    let addr = service.addr;
    let admin = [("Authorization", format!("Bearer {key}"))];
    let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (first, second, wrong) = ("first-Passw0rd!", "second-Passw0rd!", "wrong-Passw0rd!");
    let post = |method: &str, body: String, headers: &[(&str, &str)]| {
        http_with(
            addr,
            "POST",
            &format!("/users/Users/{method}"),
            &body,
            headers,
        )
    };

    let (status, body) = post(
        "Create",
        format!(r#"{{"username":"asim","email":"asim@example.com","password":"{first}"}}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let id = json_field(&body, "/user/id");
    let (status, body) = post(
        "Login",
        format!(r#"{{"email":"asim@example.com","password":"{first}"}}"#),
        &[],
    );
    assert_eq!(status, 200);
    let session = json_field(&body, "/session/id");
    assert_eq!(
        post(
            "ReadSession",
            format!(r#"{{"sessionId":"{session}"}}"#),
            &[]
        )
        .0,
        200
    );
    assert_eq!(
        post("Read", format!(r#"{{"id":"{id}"}}"#), &[]).0,
        401,
        "key rejected"
    );
    assert_eq!(
        post(
            "Read",
            format!(r#"{{"id":"{id}"}}"#),
            &[("Authorization", "Bearer guess")]
        )
        .0,
        401
    );
    assert_eq!(post("Read", format!(r#"{{"id":"{id}"}}"#), &admin).0, 200);
    assert_eq!(
        post("Search", r#"{"username":"asim"}"#.to_string(), &admin).0,
        200
    );
    assert_eq!(
        post(
            "Update",
            format!(r#"{{"id":"{id}","email":"asim2@example.com"}}"#),
            &admin
        )
        .0,
        200
    );
    let change = format!(
        r#"{{"userId":"{id}","oldPassword":"{first}","newPassword":"{second}","confirmPassword":"{second}"}}"#
    );
    assert_eq!(post("UpdatePassword", change, &[]).0, 200);
    assert_eq!(
        post(
            "ReadSession",
            format!(r#"{{"session_id":"{session}"}}"#),
            &[]
        )
        .0,
        401
    );
    for _ in 0..5 {
        assert_eq!(
            post(
                "Login",
                format!(r#"{{"username":"asim","password":"{wrong}"}}"#),
                &[]
            )
            .0,
            401
        );
    }
    assert_eq!(
        post(
            "Login",
            format!(r#"{{"username":"asim","password":"{second}"}}"#),
            &[]
        )
        .0,
        429
    );
    assert_eq!(
        post("Logout", format!(r#"{{"session_id":"{session}"}}"#), &[]).0,
        200
    );
    assert_eq!(post("Delete", format!(r#"{{"id":"{id}"}}"#), &admin).0, 200);
    let (_, logs) = service.terminate();
    let all = logs.join("\n");

    let digest = {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(session.as_bytes()))
    };
    for secret in [
        first,
        second,
        wrong,
        key,
        session.as_str(),
        digest.as_str(),
        "$argon2",
        "Bearer",
    ] {
        assert!(
            !all.contains(secret),
            "the log contains a secret ({secret})"
        );
    }
    for event in [
        "event=\"user_created\"",
        "event=\"api_key_rejected\"",
        "event=\"password_changed\"",
        "event=\"login_failed\"",
        "event=\"lockout\"",
        "event=\"user_deleted\"",
    ] {
        assert!(
            all.contains(event),
            "missing security event {event} in:\n{all}"
        );
    }
}

/// `DATABASE_URL` with a password in it: neither `--help` nor any log line, at the most
/// verbose level, shows the password.
#[test]
fn the_database_password_never_appears_in_help_or_logs() {
    let Some(admin) = common::postgres_admin_url("the_database_password_never_appears") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime
        .block_on(common::TestDatabase::create(
            common::Backend::Postgres,
            "the_database_password_never_appears",
        ))
        .unwrap();
    drop(admin);
    // PostgreSQL here trusts local connections, so any password is accepted.
    let secret = "hunter2-db-secret";
    let (scheme, rest) = db.raw_url.split_once("://").unwrap();
    let (userinfo, host) = rest.split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    let url = format!("{scheme}://{user}:{secret}@{host}");

    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["migrate", "--help"],
        vec!["export", "--help"],
    ] {
        let output = command(dir.path())
            .args(&args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("--database-url"), "{args:?}: {help}");
        assert!(
            !help.contains(secret),
            "{args:?} shows the password:\n{help}"
        );
    }

    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .env("DATABASE_URL", &url);
    let service = Service::start(cmd);
    let (status, _) = http(service.addr, "GET", "/health", "");
    assert_eq!(status, 200);
    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{logs:#?}");
    assert!(
        logs.iter().any(|l| l.contains(&format!("{user}:***@"))),
        "the URL is logged, masked: {logs:#?}"
    );
    let shown: Vec<&String> = logs.iter().filter(|l| l.contains(secret)).collect();
    assert!(shown.is_empty(), "{shown:#?}");

    // And a database that cannot be reached is named without it too.
    let unreachable = format!("postgres://{user}:{secret}@127.0.0.1:1/nowhere");
    let output = command(dir.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--db-acquire-timeout",
            "1",
            "--db-wait",
            "1",
        ])
        .env("DATABASE_URL", &unreachable)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the database"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
}

/// The SQLite database and its `-wal` and `-shm` files are created readable by their
/// owner only.
#[test]
fn the_sqlite_files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0"]);
    let service = Service::start(cmd);
    let (status, body) = http(
        service.addr,
        "POST",
        "/users/Users/Create",
        r#"{"username":"asim","email":"asim@example.com","password":"correct-horse-1"}"#,
    );
    assert_eq!(status, 200, "{body}");
    for file in ["users.db", "users.db-wal", "users.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} has mode {:o}", mode & 0o777);
    }
    let (exit, _) = service.terminate();
    assert!(exit.success());
}

/// The nice value in a `/proc/.../stat` line (its 19th field).
#[cfg(target_os = "linux")]
fn nice_in_stat(stat: &str) -> i32 {
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(16).unwrap().parse().unwrap()
}

/// `--hash-nice` lowers the password hashing threads of the binary (Linux), and only
/// them: each `argon2-N` thread runs that many nice values below the others.
#[cfg(target_os = "linux")]
#[test]
fn the_hashing_threads_run_below_the_rest_of_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--listen", "127.0.0.1:0", "--hash-nice", "7"]);
    let service = Service::start(cmd);
    // The child starts at this thread's nice value.
    let base = nice_in_stat(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
    let tasks = format!("/proc/{}/task", service.child.id());
    let mut hashing = Vec::new();
    let mut others = Vec::new();
    for task in std::fs::read_dir(tasks).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let nice = nice_in_stat(&std::fs::read_to_string(task.join("stat")).unwrap());
        if name.starts_with("argon2-") {
            hashing.push(nice);
        } else {
            others.push(nice);
        }
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(hashing, vec![(base + 7).min(19); cores], "one per core");
    assert!(others.iter().all(|nice| *nice == base), "{others:?}");
    let (exit, logs) = service.terminate();
    assert!(exit.success(), "{exit:?} {logs:#?}");
}
