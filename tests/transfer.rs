//! Schema migrations as an operator runs them, and moving users between stores with
//! `export` and `import`.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::process::{command, http, run, Service};
use common::{assert_error, Backend, TestApp, TestDatabase, PASSWORD};
use serde_json::json;
use sqlx::Connection;
use users_service::store::MailStore;

on_both_stores!(
    migrate_then_no_migrate_and_a_newer_schema_is_refused,
    import_refuses_bad_input_and_writes_nothing,
    import_skips_expired_sessions,
    deleted_ids_move_with_the_users,
);

mod passkeys {
    use super::*;

    /// Passkeys need a domain name for the relying party.
    pub(super) fn on_localhost(config: &mut users_service::config::ServeConfig) {
        config.mail.public_url = Some("http://localhost:8080".to_string());
    }

    on_both_stores!(
        config = crate::passkeys::on_localhost,
        the_passkey_decoys_key_moves_with_the_accounts,
    );
}

async fn migrate_then_no_migrate_and_a_newer_schema_is_refused(app: TestApp) {
    // `app` ran the migrations on start; a fresh database is what we need here, so use
    // its backend with a new database.
    let backend_is_sqlite = app.db.raw_url.starts_with("sqlite");
    let backend = if backend_is_sqlite {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    drop(app);
    let db = TestDatabase::create(backend, "transfer::migrate")
        .await
        .unwrap();
    let url = db.raw_url.as_str();

    // Nothing is created by a command that only reads, or by --no-migrate.
    if backend_is_sqlite {
        let missing = url.replace("users.db", "missing.db");
        let (ok, _, stderr) = run(&["export", "--database-url", &missing], None);
        assert!(
            !ok && stderr.contains("there is no database file at"),
            "{stderr}"
        );
        let (ok, _, stderr) = run(&["--database-url", &missing, "--no-migrate"], None);
        assert!(
            !ok && stderr.contains("there is no database file at"),
            "{stderr}"
        );
        assert!(!std::path::Path::new(missing.trim_start_matches("sqlite://")).exists());
        // An empty file is an empty SQLite database.
        std::fs::File::create(url.trim_start_matches("sqlite://")).unwrap();
    }

    // --no-migrate on an empty database refuses to start and changes nothing.
    let (ok, _, stderr) = run(
        &[
            "--database-url",
            url,
            "--no-migrate",
            "--listen",
            "127.0.0.1:0",
        ],
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("no users-service schema: run `users-service migrate`"),
        "{stderr}"
    );

    let (ok, _, stderr) = run(&["migrate", "--database-url", url, "--no-migrate"], None);
    assert!(!ok && stderr.contains("would do nothing"), "{stderr}");
    let (ok, _, stderr) = run(&["migrate", "--database-url", url], None);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("migrations applied; the database schema is up to date"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&["migrate", "--database-url", url], None);
    assert!(ok, "migrate is idempotent: {stderr}");
    assert!(
        stderr.contains("schema is up to date; nothing to do"),
        "{stderr}"
    );

    // Once migrated, --no-migrate starts and serves.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args([
        "--database-url",
        url,
        "--no-migrate",
        "--listen",
        "127.0.0.1:0",
    ]);
    let service = Service::start(cmd);
    let (status, _) = http(service.addr, "GET", "/health", "");
    assert_eq!(status, 200);
    assert!(service.terminate().0.success());

    // A database migrated by a newer binary is refused, with and without --no-migrate.
    add_future_migration(url).await;
    for extra in [&[][..], &["--no-migrate"][..]] {
        let mut args = vec!["--database-url", url, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = run(&args, None);
        assert!(!ok);
        assert!(
            stderr.contains("schema is newer than this binary"),
            "{extra:?}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let (ok, _, stderr) = run(&["migrate", "--database-url", url], None);
    assert!(!ok && stderr.contains("upgrade users-service"), "{stderr}");
}

async fn add_future_migration(url: &str) {
    const SQL: &str =
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                       VALUES (99991231000000, 'from the future', TRUE, $1, 0)";
    let checksum: Vec<u8> = vec![0; 48];
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(SQL)
            .bind(checksum)
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(SQL)
            .bind(checksum)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// The keys the source and the target seal TOTP secrets under.
const SEALING_SOURCE: &str = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=";
const SEALING_TARGET: &str = "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=";

/// Users and sessions made through the API on SQLite, exported, imported into
/// PostgreSQL: everyone signs in with the same password and sessions still read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_from_sqlite_and_import_into_postgres_keeps_passwords_and_sessions() {
    let Some(target) =
        TestDatabase::create(Backend::Postgres, "transfer::sqlite_to_postgres").await
    else {
        return;
    };
    // The source seals TOTP secrets under one key, the target under another.
    let source = TestApp::spawn_with(Backend::Sqlite, "transfer::source", |config| {
        config.sealing.encryption_key = Some(SEALING_SOURCE.into());
    })
    .await
    .unwrap();
    let mut sessions = Vec::new();
    for name in ["asim", "bea", "chen"] {
        source.create_user(name).await;
        sessions.push(source.login(name, PASSWORD).await);
    }
    let (status, source_sessions) = source
        .call("ListSessions", json!({"user_id": sessions[0]["user_id"]}))
        .await;
    assert_eq!(status, 200, "{source_sessions}");
    // A profile and a verified address travel too. The verification token is planted
    // in the store (no mail server here) and used through the API.
    let (status, _) = source
        .call(
            "Update",
            json!({"id": asim_id(&source).await, "profile": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(status, 200);
    let token = users_service::domain::SecretToken::generate();
    let now = source.clock_now();
    let planted = source
        .store
        .queue_mail(
            users_service::store::EventLimit {
                key: "planted",
                max: 0,
                now,
                window: 3600,
            },
            Some(users_service::store::NewMail {
                token: users_service::store::NewToken {
                    digest: &token.digest(),
                    user_id: &asim_id(&source).await,
                    purpose: users_service::domain::Purpose::VerifyEmail,
                    created: now,
                    expires: now + 60,
                },
                recipient: "asim@example.com",
                from_name: None,
                subject: "Verify",
                body: "planted",
            }),
        )
        .await
        .unwrap();
    assert_eq!(planted, users_service::store::Queued::Queued);
    let (status, body) = source
        .call("VerifyEmail", json!({"token": token.expose()}))
        .await;
    assert_eq!(status, 200, "{body}");
    let source_users = source.call("Search", json!({"username": "asim"})).await.1;
    assert_eq!(source_users["users"][0]["verified"], true);
    // Chen signs in with a second factor: it must survive the move.
    let chen_session = sessions[2]["id"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {chen_session}");
    let (status, _, started) = source
        .send("StartTotp", json!({}), &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200, "{started}");
    let secret = started["secret"].as_str().unwrap().to_string();
    let (code, confirmed) = confirm_totp(&source, &bearer, &secret).await;
    let recovery = confirmed["recovery_codes"][0].as_str().unwrap().to_string();
    assert_eq!(source_users["users"][0]["profile"], json!({"plan": "pro"}));
    let source_db = source.into_database().await;

    // Without the key, the sealed secret cannot be written out: the export is refused
    // before it writes anything, and says why.
    let (ok, export, stderr) = run(&["export", "--database-url", &source_db.raw_url], None);
    assert!(
        !ok && stderr.contains("1 TOTP secret(s) are encrypted under key(s)")
            && stderr.contains("that --encryption-key does not give"),
        "{stderr}"
    );
    assert!(export.is_empty(), "nothing is written");
    let (ok, export, stderr) = run(
        &[
            "export",
            "--database-url",
            &source_db.raw_url,
            "--encryption-key",
            SEALING_SOURCE,
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let text = String::from_utf8(export.clone()).unwrap();
    assert!(
        text.contains(&format!("\"totp_secret\":\"{secret}\"")),
        "an export carries the secret opened: {text}"
    );
    assert_eq!(
        text.lines().count(),
        1 + 3 + 3 + 1,
        "header, users, sessions, chen's second factors:\n{text}"
    );
    assert!(text.contains("$argon2id$"), "hashes travel as PHC strings");
    assert!(
        !text.contains(&recovery) && !text.contains(&recovery.replace('-', "")),
        "recovery codes travel as digests"
    );
    assert!(
        !text.contains("verify_email"),
        "one-time tokens are not exported"
    );
    for session in &sessions {
        assert!(
            !text.contains(session["id"].as_str().unwrap()),
            "tokens themselves are never exported"
        );
    }

    let (ok, _, stderr) = run(
        &[
            "import",
            "--database-url",
            &target.raw_url,
            "--encryption-key",
            SEALING_TARGET,
        ],
        Some(&export),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("users=3 sessions=3 deleted_users=0 second_factors=1 passkeys=0 service_keys=0 skipped=0"),
        "{stderr}"
    );

    // Importing again is refused as a whole, with a report naming every duplicate...
    let (ok, _, stderr) = run(
        &["import", "--database-url", &target.raw_url],
        Some(&export),
    );
    assert!(!ok);
    assert!(
        stderr.contains("import refused, nothing was written (7 problem(s))"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 2: user") && stderr.contains("id is already taken"),
        "{stderr}"
    );
    // ...and is a no-op with --skip-existing.
    let (ok, _, stderr) = run(
        &[
            "import",
            "--database-url",
            &target.raw_url,
            "--skip-existing",
        ],
        Some(&export),
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("users=0 sessions=0 deleted_users=0 second_factors=0 passkeys=0 service_keys=0 skipped=7"),
        "{stderr}"
    );

    let app = TestApp::spawn_on(target, |config| {
        config.sealing.encryption_key = Some(SEALING_TARGET.into());
    })
    .await;
    let sealed = {
        use users_service::store::FactorStore;
        let chen = sessions[2]["user_id"].as_str().unwrap();
        app.users_store().totp(chen).await.unwrap().unwrap().secret
    };
    let target_keys = users_service::core::sealing::SealingKeys::parse(SEALING_TARGET).unwrap();
    assert!(
        target_keys.is_current(&sealed),
        "sealed under the target's key: {sealed}"
    );
    // What a user sees of the sessions (address, browser, last use) travels too.
    let user_id = sessions[0]["user_id"].clone();
    let (status, listed) = app.call("ListSessions", json!({"user_id": user_id})).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, source_sessions, "the session list is kept");
    assert_eq!(listed["sessions"][0]["client_ip"], "127.0.0.1", "{listed}");
    for name in ["asim", "bea"] {
        app.login(name, PASSWORD).await;
    }
    // Chen's second factor came along: the password alone opens nothing, the TOTP
    // secret and the recovery codes work, and the code used before the move is spent.
    let challenge = chen_challenge(&app).await;
    let (status, body) = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_eq!(status, 401, "{body}");
    app.clock.advance(30);
    let next = common::totp::code(&secret, app.clock_now());
    let (status, body) = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": next}))
        .await;
    assert_eq!(status, 200, "{body}");
    let challenge = chen_challenge(&app).await;
    let (status, body) = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "recovery_code": recovery}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for session in &sessions {
        let (status, body) = app
            .call("ReadSession", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["session"], *session);
    }
    let (_, users) = app.call("Search", json!({"username": "asim"})).await;
    assert_eq!(
        users, source_users,
        "ids, timestamps, profiles and verification are kept"
    );
}

/// Chen's password, answered with the second step's challenge.
async fn chen_challenge(app: &TestApp) -> String {
    let (status, body) = app
        .call("Login", json!({"username": "chen", "password": PASSWORD}))
        .await;
    assert_eq!(status, 401, "{body}");
    body["challenge_id"].as_str().unwrap().to_string()
}

async fn asim_id(app: &TestApp) -> String {
    let (_, found) = app.call("Read", json!({"username": "asim"})).await;
    found["user"]["id"].as_str().unwrap().to_string()
}

async fn import_refuses_bad_input_and_writes_nothing(app: TestApp) {
    app.create_user("taken").await;
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0FbYz1u0tQ9yq0Z5WQm8u8cB4kq2zCq9F2nX2mRjUaA";
    let user = |id: &str, name: &str, email: &str, hash: &str| {
        json!({"type": "user", "id": id, "username": name, "email": email, "password_hash": hash, "created": 1, "updated": 1}).to_string()
    };
    let lines = [
        json!({"type": "header", "format": "users-service", "version": 1}).to_string(),
        user("ok-1", "fine", "fine@example.com", hash),
        user("ok-2", "Taken", "other@example.com", hash),
        user("ok-3", "bad email", "not-an-email", hash),
        user("ok-4", "scrypt", "s@example.com", "$scrypt$ln=18,r=8,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA"),
        json!({"type": "session", "token_hash": "abc", "user_id": "ok-1", "created": 1, "expires": 9_999_999_999i64}).to_string(),
        json!({"type": "session", "token_hash": "a".repeat(64), "user_id": "ghost", "created": 1, "expires": 9_999_999_999i64}).to_string(),
        "{not json".to_string(),
        // A duplicate within the same file, and the same batch, is caught too.
        user("ok-5", "FINE", "fine2@example.com", hash),
    ];
    let input = lines.join("\n");
    let err = users_service::core::transfer::import(
        app.users_store().as_ref(),
        app.clock_now(),
        input.as_bytes(),
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    for expected in [
        "(7 problem(s))",
        "line 3: user \"ok-2\": username is already taken",
        "line 4: username must be",
        "line 5: password_hash: scrypt N=2^18, r=8, p=1 costs more than allowed",
        "line 6: token_hash must be 64 lowercase hex digits",
        "line 7: session of unknown user \"ghost\"",
        "line 8: not a record of this format",
        "line 9: user \"ok-5\": username is already taken",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // The valid user on line 2 was not kept either.
    let answer = app.call("Read", json!({"id": "ok-1"})).await;
    assert_error(&answer, "Read", 404, "user not found");

    let no_header = user("ok-1", "fine", "fine@example.com", hash);
    let err = users_service::core::transfer::import(
        app.users_store().as_ref(),
        app.clock_now(),
        no_header.as_bytes(),
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("the first record must be the \"users-service\" header"),
        "{err}"
    );
}

async fn import_skips_expired_sessions(app: TestApp) {
    app.create_user("asim").await;
    let live = app.login("asim", PASSWORD).await;
    app.clock.advance(604_800 - 1);
    let (_, export) = export_of(&app).await;
    let later = app.clock_now() + 1;
    let target = TestApp::spawn(Backend::Sqlite, "transfer::expired_target")
        .await
        .unwrap();
    let summary = users_service::core::transfer::import(
        target.users_store().as_ref(),
        later,
        &export[..],
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (summary.users, summary.sessions, summary.skipped),
        (1, 0, 1)
    );
    let answer = target
        .call("ReadSession", json!({"session_id": live["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found");
}

/// The credential ids StartPasskeyLogin lists for `name` (a name without passkeys:
/// its decoys).
async fn decoys_of(app: &TestApp, name: &str) -> Vec<String> {
    let (status, start) = app
        .call("StartPasskeyLogin", json!({ "username": name }))
        .await;
    assert_eq!(status, 200, "{start}");
    common::listed_credentials(&start)
}

/// The key the passkey decoys are made with moves with the accounts, so that a name
/// without passkeys is answered the same decoys after a move. A database that made a
/// key of its own refuses the import, or keeps its own with skipping asked for.
async fn the_passkey_decoys_key_moves_with_the_accounts(app: TestApp) {
    use users_service::core::transfer::{import, ImportOptions};
    app.create_user("kim").await;
    let kim = decoys_of(&app, "kim").await;
    let nobody = decoys_of(&app, "nobody").await;
    let (summary, export) = export_of(&app).await;
    assert_eq!((summary.users, summary.service_keys), (1, 1));
    let text = String::from_utf8(export.clone()).unwrap();
    let key_line: serde_json::Value = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["type"] == "service_key")
        .unwrap();
    assert_eq!(key_line["name"], "passkey_decoys", "{key_line}");
    let key = key_line["key"].as_str().unwrap().to_string();

    let on_postgres = app.db.raw_url.starts_with("postgres");
    let target = |name: &'static str| {
        let backend = if on_postgres {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        TestApp::spawn_with(backend, name, passkeys::on_localhost)
    };
    let import_into = |target: &TestApp, skip_existing: bool| {
        let (store, now, export) = (target.users_store(), target.clock_now(), export.clone());
        async move {
            import(
                store.as_ref(),
                now,
                &export[..],
                &ImportOptions {
                    skip_existing,
                    ..Default::default()
                },
            )
            .await
        }
    };

    // A new database takes the key: the same decoys for the same names.
    let moved = target("transfer::decoys_moved").await.unwrap();
    let summary = import_into(&moved, false).await.unwrap();
    assert_eq!((summary.users, summary.service_keys), (1, 1));
    assert_eq!(decoys_of(&moved, "kim").await, kim);
    assert_eq!(decoys_of(&moved, "nobody").await, nobody);
    // Imported once more, skipping what is there: the same key is nothing new.
    let summary = import_into(&moved, true).await.unwrap();
    assert_eq!((summary.service_keys, summary.skipped), (0, 2));

    // A database that made a key of its own (its own decoys) refuses the import, and
    // says so without the key.
    let own = target("transfer::decoys_own").await.unwrap();
    let own_decoys = decoys_of(&own, "nobody").await;
    assert_ne!(own_decoys, nobody);
    let err = import_into(&own, false).await.unwrap_err().to_string();
    assert!(
        err.contains("service key \"passkey_decoys\": the database has another"),
        "{err}"
    );
    assert!(!err.contains(&key), "the error repeats the key: {err}");
    let answer = own.call("Read", json!({"username": "kim"})).await;
    assert_error(&answer, "Read", 404, "user not found");
    // Skipping what is there keeps its own key.
    let summary = import_into(&own, true).await.unwrap();
    assert_eq!((summary.users, summary.service_keys), (1, 0));
    assert_eq!(decoys_of(&own, "nobody").await, own_decoys);

    // A key that is not one the service makes, or not 32 bytes, is refused, and the
    // problem does not repeat it.
    let header = json!({"type": "header", "format": "users-service", "version": 1}).to_string();
    let short = "c2hvcnQta2V5";
    for (line, expected) in [
        (
            json!({"type": "service_key", "name": "passkey_decoys", "key": short, "created": 1}),
            "line 2: service key \"passkey_decoys\" must be 32 bytes in base64url",
        ),
        (
            json!({"type": "service_key", "name": "other", "key": key, "created": 1}),
            "line 2: service key \"other\" is not one this service makes",
        ),
    ] {
        let input = format!("{header}\n{line}\n");
        let err = import(
            own.users_store().as_ref(),
            own.clock_now(),
            input.as_bytes(),
            &ImportOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains(short) && !err.contains(&key), "{err}");
    }
}

/// Deleted ids travel with the export: the target store never issues them either, and
/// an import cannot bring back a user under one.
async fn deleted_ids_move_with_the_users(app: TestApp) {
    let id = "0f1e2d3c-4b5a-4697-8877-665544332211";
    let (status, body) = app
        .call(
            "Create",
            json!({"id": id, "username": "gone", "email": "gone@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.create_user("asim").await;
    let (status, _) = app.call("Delete", json!({"id": id})).await;
    assert_eq!(status, 200);
    let (summary, export) = export_of(&app).await;
    assert_eq!((summary.users, summary.deleted_users), (1, 1));
    let text = String::from_utf8(export.clone()).unwrap();
    assert!(
        text.contains(&format!(
            r#"{{"type":"deleted_user","id":"{id}","deleted":"#
        )),
        "{text}"
    );

    let target = TestApp::spawn(Backend::Sqlite, "transfer::deleted_target")
        .await
        .unwrap();
    let summary = users_service::core::transfer::import(
        target.users_store().as_ref(),
        target.clock_now(),
        &export[..],
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((summary.users, summary.deleted_users), (1, 1));
    let answer = target
        .call(
            "Create",
            json!({"id": id, "username": "stranger", "email": "stranger@example.com", "password": PASSWORD}),
        )
        .await;
    assert_error(&answer, "Create", 409, "id is already taken");

    // A user under a deleted id is refused, and skipped with --skip-existing.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$0FbYz1u0tQ9yq0Z5WQm8u8cB4kq2zCq9F2nX2mRjUaA";
    let revenant = [
        json!({"type": "header", "format": "users-service", "version": 1}).to_string(),
        json!({"type": "user", "id": id, "username": "revenant", "email": "r@example.com", "password_hash": hash, "created": 1, "updated": 1}).to_string(),
    ]
    .join("\n");
    let err = users_service::core::transfer::import(
        target.users_store().as_ref(),
        target.clock_now(),
        revenant.as_bytes(),
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("the id belongs to a deleted account"), "{err}");
    let summary = users_service::core::transfer::import(
        target.users_store().as_ref(),
        target.clock_now(),
        revenant.as_bytes(),
        &users_service::core::transfer::ImportOptions {
            skip_existing: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((summary.users, summary.skipped), (0, 1));
    // And a deleted id cannot be one of a live user's.
    let asim = asim_id(&target).await;
    let clash = [
        json!({"type": "header", "format": "users-service", "version": 1}).to_string(),
        json!({"type": "deleted_user", "id": asim, "deleted": 1}).to_string(),
    ]
    .join("\n");
    let err = users_service::core::transfer::import(
        target.users_store().as_ref(),
        target.clock_now(),
        clash.as_bytes(),
        &users_service::core::transfer::ImportOptions {
            skip_existing: false,
            ..Default::default()
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("is the id of a user"), "{err}");
}

/// `reseal` from the command line: it needs a key, seals the secret a user enrolled
/// before a key was set, and the service with that key signs the user in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reseal_seals_the_secrets_stored_in_clear() {
    use users_service::store::FactorStore;
    let app = TestApp::spawn(Backend::Sqlite, "transfer::reseal")
        .await
        .unwrap();
    let user = app.create_user("dara").await;
    let id = user["id"].as_str().unwrap().to_string();
    let session = app.login("dara", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {session}");
    let (status, _, started) = app
        .send("StartTotp", json!({}), &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200, "{started}");
    let secret = started["secret"].as_str().unwrap().to_string();
    let db = app.into_database().await;
    // The start's warnings about the stored secrets, counted beside the start (until
    // its debug line says they are), with `key` given.
    let start_warnings = |key: &str| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = command(dir.path());
        cmd.args(["--database-url", &db.raw_url, "--listen", "127.0.0.1:0"])
            .env("USERS_ENCRYPTION_KEY", key)
            .env("RUST_LOG", "info,users_service::core::sealing=debug");
        let mut service = Service::start(cmd);
        service.wait_for_lines("the stored TOTP secrets are counted", 1);
        let (exit, logs) = service.terminate();
        assert!(exit.success(), "{logs:#?}");
        logs.into_iter()
            .filter(|l| l.contains("WARN") && l.contains("TOTP secrets"))
            .collect::<Vec<_>>()
    };
    let warned = start_warnings(SEALING_SOURCE);
    assert!(
        warned.len() == 1
            && warned[0].contains("secrets=1")
            && warned[0].contains("stored in clear although --encryption-key is set"),
        "{warned:#?}"
    );

    // `reseal` over the command line, with `key` if any.
    let reseal = |key: Option<&str>| {
        let mut args = vec!["reseal", "--database-url", db.raw_url.as_str()];
        args.extend(
            key.map(|key| ["--encryption-key", key])
                .into_iter()
                .flatten(),
        );
        let (ok, _, stderr) = run(&args, None);
        (ok, stderr)
    };
    let (ok, stderr) = reseal(None);
    assert!(!ok && stderr.contains("reseal needs the key"), "{stderr}");
    let (ok, stderr) = reseal(Some("c2hvcnQ="));
    assert!(!ok && stderr.contains("32 bytes"), "{stderr}");
    let (ok, stderr) = reseal(Some(SEALING_SOURCE));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("sealed=1 unchanged=0 changed_meanwhile=0"),
        "{stderr}"
    );
    assert!(!stderr.contains(SEALING_SOURCE), "the key is never printed");
    assert_eq!(start_warnings(SEALING_SOURCE), Vec::<String>::new());
    // A reseal without the key that sealed it is refused before it rewrites anything.
    let (ok, stderr) = reseal(Some(SEALING_TARGET));
    assert!(
        !ok && stderr.contains("give them after the first"),
        "{stderr}"
    );
    // Started without the key that sealed it: said, naming the key.
    let source_id = users_service::core::sealing::SealingKeys::parse(SEALING_SOURCE)
        .unwrap()
        .current()
        .unwrap()
        .to_string();
    let warned = start_warnings(SEALING_TARGET);
    assert!(
        warned.len() == 1
            && warned[0].contains("secrets=1")
            && warned[0].contains(&format!("keys={source_id}"))
            && warned[0].contains("--encryption-key does not give"),
        "{warned:#?}"
    );

    let app = TestApp::spawn_on(db, |config| {
        config.sealing.encryption_key = Some(SEALING_SOURCE.into());
    })
    .await;
    let stored = app.users_store().totp(&id).await.unwrap().unwrap().secret;
    assert!(
        stored.starts_with("sealed:v1:") && !stored.contains(&secret),
        "{stored}"
    );
    // The enrolment started before the reseal is confirmed with the same secret.
    confirm_totp(&app, &bearer, &secret).await;
}

/// Confirms the TOTP enrolment of the session in `bearer` with a current code of
/// `secret`; the code and the answer (with the recovery codes).
async fn confirm_totp(app: &TestApp, bearer: &str, secret: &str) -> (String, serde_json::Value) {
    let code = common::totp::code(secret, app.clock_now());
    let (status, _, confirmed) = app
        .send(
            "ConfirmTotp",
            json!({"code": code}),
            &[("authorization", bearer)],
        )
        .await;
    assert_eq!(status, 200, "{confirmed}");
    (code, confirmed)
}

/// What `export` writes of `app`'s store now (no encryption keys), with its counts.
async fn export_of(app: &TestApp) -> (users_service::core::transfer::Summary, Vec<u8>) {
    let mut export = Vec::new();
    let summary = users_service::core::transfer::export(
        app.users_store().as_ref(),
        app.clock_now(),
        &Default::default(),
        &mut export,
    )
    .await
    .unwrap();
    (summary, export)
}
