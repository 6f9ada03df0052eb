//! Abuse resistance: the admin key, brute-force and sign-up limits, the password policy,
//! rehashing, normalisation and hostile input. Each test names the rule it holds.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use std::sync::Arc;

use common::{assert_error, Backend, TestApp, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::{Barrier, Notify};
use users_service::config::ServeConfig;
use users_service::store::{AccountStore, Lookup};

const WRONG: &str = "not-the-password";

/// Only the per-account limit, so a test sees its lockouts alone.
fn account_limit_only(config: &mut ServeConfig) {
    config.limits.login_max_failures_per_ip = 0;
}

on_both_stores!(
    config = crate::account_limit_only,
    five_failures_lock_the_account_with_a_growing_retry_after,
    unknown_accounts_are_limited_exactly_like_known_ones,
    a_success_resets_the_account_counter,
    update_password_failures_lock_the_user_id_alone,
    the_limit_holds_across_replicas,
    a_lockout_does_not_link_a_username_to_its_email,
    update_password_checks_the_limits_then_the_old_password_then_the_rules,
);

/// Every request says which client it comes from (`X-Forwarded-For`, believed from
/// loopback), so a test can speak for many addresses.
fn behind_proxy(config: &mut ServeConfig) {
    config.access.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// Without the sign-up limit, for tests that create many accounts.
fn no_signup_limit(config: &mut ServeConfig) {
    config.limits.create_per_hour = 0;
}

mod ids {
    use super::*;

    on_both_stores!(
        config = crate::no_signup_limit,
        deleted_ids_are_never_issued_again,
    );
}

/// Concurrency: the limits hold however the requests are timed, on both stores and
/// across two replicas (point 1 of the lockout rules), and a burst is one lockout
/// (point 2).
mod bursts {
    use super::*;

    on_both_stores!(
        config = crate::behind_proxy,
        a_burst_at_one_account_gets_no_more_checks_than_its_limit,
        a_burst_from_one_address_gets_no_more_checks_than_its_limit,
        a_burst_of_reset_codes_from_one_address_is_bounded_too,
        one_burst_is_one_lockout,
    );
}

/// The default configuration.
mod defaults {
    use super::*;

    on_both_stores!(
        rehash_on_login_when_the_parameters_are_raised,
        the_password_policy_refuses_common_and_identity_passwords,
        look_alike_names_cannot_be_registered_twice,
        a_check_the_service_could_not_make_counts_against_no_one,
    );
}

async fn login(app: &TestApp, username: &str, password: &str) -> (u16, Option<String>, Value) {
    let (status, headers, body) = app
        .send(
            "Login",
            json!({"username": username, "password": password}),
            &[],
        )
        .await;
    let retry = headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status.as_u16(), retry, body)
}

async fn fail_times(app: &TestApp, username: &str, times: usize) {
    for attempt in 1..=times {
        let (status, _, body) = login(app, username, WRONG).await;
        assert_eq!(status, 401, "attempt {attempt}: {body}");
    }
}

async fn five_failures_lock_the_account_with_a_growing_retry_after(app: TestApp) {
    app.create_user("asim").await;
    fail_times(&app, "asim", 5).await;
    // Locked: even the right password is refused, before any hashing.
    let (status, retry, body) = login(&app, "asim", PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("60"));
    assert_eq!(body["id"], "users.Login");
    assert_eq!(body["status"], "Too Many Requests");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("retry in 60 seconds"));

    // The lock lifts after Retry-After; the next lockout lasts twice as long.
    app.clock.advance(60);
    fail_times(&app, "asim", 5).await;
    let (status, retry, _) = login(&app, "asim", PASSWORD).await;
    assert_eq!((status, retry.as_deref()), (429, Some("120")));
    app.clock.advance(119);
    let (status, retry, _) = login(&app, "asim", PASSWORD).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")));
    app.clock.advance(1);
    app.login("asim", PASSWORD).await;
}

async fn unknown_accounts_are_limited_exactly_like_known_ones(app: TestApp) {
    app.create_user("known").await;
    let mut seen = Vec::new();
    for name in ["known", "unknown"] {
        let mut statuses = Vec::new();
        for _ in 0..7 {
            let (status, retry, body) = login(&app, name, WRONG).await;
            statuses.push((status, retry, body["detail"].clone()));
        }
        seen.push(statuses);
    }
    assert_eq!(seen[0], seen[1], "the limiter must not tell accounts apart");
    assert_eq!(seen[0][5].0, 429);
}

/// A check the service could not make, because its database failed after the attempt
/// was reserved, counts neither against the name nor against the address: a broken
/// database locks no one out, and nothing about the password was learnt.
async fn a_check_the_service_could_not_make_counts_against_no_one(app: TestApp) {
    app.create_user("asim").await;
    // The accounts' table goes away: the limiter's counters still work, the read of
    // the account that follows the reservation fails.
    app.db
        .execute("ALTER TABLE users RENAME TO users_away")
        .await;
    let reset = json!({"email": "asim@example.com", "code": "ABCDEFG123", "new_password": "newpassword-1", "confirm_password": "newpassword-1"});
    // Beyond the limits of the name (5) and of the address (5) together.
    for attempt in 1..=6 {
        let (status, _, body) = login(&app, "asim", PASSWORD).await;
        assert_eq!(status, 500, "Login {attempt}: {body}");
        assert_eq!(body["detail"], "internal error", "{body}");
        let answer = app.call("ResetPassword", reset.clone()).await;
        assert_error(&answer, "ResetPassword", 500, "internal error");
    }
    app.db
        .execute("ALTER TABLE users_away RENAME TO users")
        .await;
    // Neither the name nor the address is locked out: a wrong reset code is counted
    // as the first failure of the address, and the password signs in.
    let answer = app.call("ResetPassword", reset).await;
    assert_error(&answer, "ResetPassword", 400, "code is wrong");
    app.login("asim", PASSWORD).await;
    fail_times(&app, "asim", 3).await;
    app.login("asim", PASSWORD).await;
}

async fn a_success_resets_the_account_counter(app: TestApp) {
    app.create_user("asim").await;
    fail_times(&app, "asim", 4).await;
    app.login("asim", PASSWORD).await;
    fail_times(&app, "asim", 4).await;
    app.login("asim", PASSWORD).await;
}

/// UpdatePassword names the account by its id: that id has a budget of its own, apart
/// from the username's and the e-mail address's.
async fn update_password_failures_lock_the_user_id_alone(app: TestApp) {
    let user = app.create_user("asim").await;
    let change = |old: &str| json!({"user_id": user["id"], "old_password": old, "new_password": "newpassword1", "confirm_password": "newpassword1"});
    for _ in 0..5 {
        let answer = app.call("UpdatePassword", change(WRONG)).await;
        assert_error(&answer, "UpdatePassword", 401, "old_password is incorrect");
    }
    let answer = app.call("UpdatePassword", change(PASSWORD)).await;
    assert_error(&answer, "UpdatePassword", 429, "too many attempts");
    // Login by username is another identifier, with its own count.
    fail_times(&app, "asim", 4).await;
    app.login("asim", PASSWORD).await;
}

/// Point 4: locking a username out says nothing about which e-mail address belongs to
/// the same account.
async fn a_lockout_does_not_link_a_username_to_its_email(app: TestApp) {
    app.create_user("asim").await;
    fail_times(&app, "asim", 5).await;
    assert_eq!(login(&app, "asim", PASSWORD).await.0, 429);
    let by_email = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let (status, _, body) = app
                .send("Login", json!({"email": email, "password": password}), &[])
                .await;
            (status.as_u16(), body)
        }
    };
    let (known, known_body) = by_email("asim@example.com", WRONG).await;
    let (unknown, unknown_body) = by_email("nobody@example.com", WRONG).await;
    assert_eq!((known, &known_body), (unknown, &unknown_body));
    assert_eq!(known, 401, "{known_body}");
    // And the owner can still sign in with the address.
    assert_eq!(by_email("asim@example.com", PASSWORD).await.0, 200);
}

/// Point 3: a wrong old password is answered 401 whatever the new password is, the
/// lockout comes before both, and unknown ids cost an attempt too.
async fn update_password_checks_the_limits_then_the_old_password_then_the_rules(app: TestApp) {
    let user = app.create_user("asim").await;
    let change = |old: &str, new: &str| json!({"user_id": user["id"], "old_password": old, "new_password": new, "confirm_password": new});
    // A new password that the rules refuse (the account's own e-mail address) does not
    // tell a guesser anything before the old password is proved.
    for _ in 0..5 {
        let answer = app
            .call("UpdatePassword", change(WRONG, "asim@example.com"))
            .await;
        assert_error(&answer, "UpdatePassword", 401, "old_password is incorrect");
    }
    let answer = app
        .call("UpdatePassword", change(PASSWORD, "asim@example.com"))
        .await;
    assert_error(&answer, "UpdatePassword", 429, "too many attempts");
    app.clock.advance(60);
    // With the right old password, the rules speak.
    let answer = app
        .call("UpdatePassword", change(PASSWORD, "asim@example.com"))
        .await;
    assert_error(
        &answer,
        "UpdatePassword",
        400,
        "new_password must not be the same as the username or email",
    );
}
async fn the_limit_holds_across_replicas(app: TestApp) {
    app.create_user("asim").await;
    let replica = app.replica(account_limit_only).await;
    let other = replica.addr;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let (status, _, _) = login(&app, "asim", WRONG).await;
        assert_eq!(status, 401);
    }
    for _ in 0..2 {
        let status = client
            .post(format!("http://{other}/users/Users/Login"))
            .json(&json!({"username": "asim", "password": WRONG}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401);
    }
    let (status, _, _) = login(&app, "asim", PASSWORD).await;
    assert_eq!(
        status, 429,
        "3 failures on one replica + 2 on the other lock the account"
    );
}

async fn rehash_on_login_when_the_parameters_are_raised(app: TestApp) {
    app.create_user("asim").await;
    let stored = |store: std::sync::Arc<users_service::store::SqlStore>| async move {
        let name = users_service::domain::Username::parse(Some("asim".into())).unwrap();
        store
            .credentials(Lookup::Username(&name))
            .await
            .unwrap()
            .unwrap()
            .password_hash
    };
    let before = stored(app.store.clone()).await;
    assert!(before.contains("$m=19456,t=2,p=1$"), "{before}");
    // The same database under stronger parameters.
    let replica = app
        .replica(|config| {
            config.passwords.argon2_m_kib = 24_576;
            config.passwords.argon2_t = 3;
        })
        .await;
    let replica = replica.addr;
    let client = reqwest::Client::new();
    let login = |password: &'static str| {
        client
            .post(format!("http://{replica}/users/Users/Login"))
            .json(&json!({"username": "asim", "password": password}))
            .send()
    };
    assert_eq!(login(WRONG).await.unwrap().status(), 401);
    assert_eq!(
        stored(app.store.clone()).await,
        before,
        "a failed login rehashes nothing"
    );
    assert_eq!(login(PASSWORD).await.unwrap().status(), 200);
    let after = stored(app.store.clone()).await;
    assert!(after.contains("$m=24576,t=3,p=1$"), "{after}");
    assert_eq!(login(PASSWORD).await.unwrap().status(), 200);
    assert_eq!(
        stored(app.store.clone()).await,
        after,
        "already strong enough: kept"
    );
    // The old server (weaker parameters) still verifies the stronger hash.
    app.login("asim", PASSWORD).await;
}

async fn the_password_policy_refuses_common_and_identity_passwords(app: TestApp) {
    let create = |password: &str| json!({"username": "asimasim", "email": "asim@example.com", "password": password});
    for common in ["password1", "Password1", "qwertyuiop", "iloveyou"] {
        let answer = app.call("Create", create(common)).await;
        assert_error(
            &answer,
            "Create",
            400,
            "password is one of the most commonly used passwords",
        );
    }
    for identity in ["AsimAsim", "asim@example.com"] {
        let answer = app.call("Create", create(identity)).await;
        assert_error(
            &answer,
            "Create",
            400,
            "password must not be the same as the username or email",
        );
    }
    let answer = app.call("Create", create("tab\there-123")).await;
    assert_error(
        &answer,
        "Create",
        400,
        "password must not contain control characters",
    );
    // Counted in code points, not bytes: eight emoji are eight characters.
    let (status, body) = app.call("Create", create("🔑🔒🔑🔒🔑🔒🔑🔒")).await;
    assert_eq!(status, 200, "{body}");
    let answer = app
        .call(
            "UpdatePassword",
            json!({"user_id": body["user"]["id"], "old_password": "🔑🔒🔑🔒🔑🔒🔑🔒", "new_password": "password123", "confirm_password": "password123"}),
        )
        .await;
    assert_error(
        &answer,
        "UpdatePassword",
        400,
        "new_password is one of the most commonly used",
    );
}

async fn look_alike_names_cannot_be_registered_twice(app: TestApp) {
    app.create_user("asim").await;
    // Fullwidth letters normalise (NFKC) to the same username and e-mail.
    let answer = app
        .call(
            "Create",
            json!({"username": "Ａｓｉｍ", "email": "other@example.com", "password": PASSWORD}),
        )
        .await;
    assert_error(&answer, "Create", 409, "username is already taken");
    let answer = app
        .call(
            "Create",
            json!({"username": "other", "email": "ａｓｉｍ@example.com", "password": PASSWORD}),
        )
        .await;
    assert_error(&answer, "Create", 409, "email is already taken");
    // Other scripts cannot hide in an address: Cyrillic 'а' looks like 'a'.
    let answer = app
        .call(
            "Create",
            json!({"username": "other", "email": "\u{430}sim@example.com", "password": PASSWORD}),
        )
        .await;
    assert_error(
        &answer,
        "Create",
        400,
        "email must be a valid e-mail address",
    );
    for bad in ["as\u{0}im", "as\u{7}im", "as\nim"] {
        let answer = app
            .call(
                "Create",
                json!({"username": bad, "email": "x@example.com", "password": PASSWORD}),
            )
            .await;
        assert_error(&answer, "Create", 400, "username must be");
    }
    // The fullwidth name signs in to the same account.
    app.login("Ａｓｉｍ", PASSWORD).await;
}

async fn sqlite_with(test: &str, configure: impl FnOnce(&mut ServeConfig)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, test, configure)
        .await
        .unwrap()
}

const KEY: &str = "s3cret-admin-key";

#[tokio::test]
async fn the_admin_key_guards_every_method_but_the_public_ones() {
    let app = sqlite_with("admin_key", |c| c.access.api_key = Some(KEY.into())).await;
    let bearer = format!("Bearer {KEY}");
    // Public by default: Create (open sign-up), Login, Logout, ReadSession, UpdatePassword.
    let user = app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;
    let (status, _) = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200);
    for (method, body) in [
        ("Read", json!({"id": user["id"]})),
        (
            "Update",
            json!({"id": user["id"], "email": "new@example.com"}),
        ),
        ("Search", json!({"username": "asim"})),
        ("Delete", json!({"id": user["id"]})),
    ] {
        for headers in [
            vec![],
            vec![("authorization", "Bearer wrong")],
            vec![("authorization", KEY)],
        ] {
            let (status, response_headers, body) = app.send(method, body.clone(), &headers).await;
            assert_eq!(response_headers["www-authenticate"], "Bearer");
            assert_error(&(status, body), method, 401, "needs the admin key");
        }
    }
    let (status, _, body) = app
        .send(
            "Read",
            json!({"id": user["id"]}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = app
        .send(
            "Delete",
            json!({"id": user["id"]}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn closed_sign_up_and_a_custom_public_set() {
    let app = sqlite_with("closed_signup", |c| {
        c.access.api_key = Some(KEY.into());
        c.access.open_signup = false;
        c.access.public_methods = vec!["Login".into(), "Create".into()];
    })
    .await;
    let bearer = format!("Bearer {KEY}");
    let create = json!({"username": "asim", "email": "asim@example.com", "password": PASSWORD});
    let (status, _, body) = app.send("Create", create.clone(), &[]).await;
    assert_error(&(status, body), "Create", 401, "admin key");
    let (status, _, _) = app
        .send("Create", create, &[("authorization", &bearer)])
        .await;
    assert_eq!(status, 200);
    let session = app.login("asim", PASSWORD).await;
    let (status, _, body) = app
        .send("ReadSession", json!({"session_id": session["id"]}), &[])
        .await;
    assert_error(&(status, body), "ReadSession", 401, "admin key");
}

#[tokio::test]
async fn the_per_address_limit_believes_forwarded_for_only_from_trusted_proxies() {
    let app = sqlite_with("per_ip", |c| {
        c.limits.login_max_failures = 0;
        c.access.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    app.create_user("asim").await;
    async fn attempt(
        app: &TestApp,
        client: &str,
    ) -> (reqwest::StatusCode, reqwest::header::HeaderMap, Value) {
        app.send(
            "Login",
            json!({"username": "asim", "password": WRONG}),
            &[("x-forwarded-for", client)],
        )
        .await
    }
    for _ in 0..5 {
        assert_eq!(attempt(&app, "203.0.113.1").await.0, 401);
    }
    let (status, headers, _) = attempt(&app, "203.0.113.1").await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "60");
    // Another client behind the same proxy is not locked out.
    assert_eq!(attempt(&app, "203.0.113.2").await.0, 401);

    // Without trust, X-Forwarded-For is ignored: every attempt is the peer's.
    let untrusted = sqlite_with("per_ip_untrusted", |c| c.limits.login_max_failures = 0).await;
    untrusted.create_user("asim").await;
    for i in 0..5 {
        let forwarded = format!("198.51.100.{i}");
        let (status, _, _) = untrusted
            .send(
                "Login",
                json!({"username": "asim", "password": WRONG}),
                &[("x-forwarded-for", &forwarded)],
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, _, _) = untrusted
        .send(
            "Login",
            json!({"username": "asim", "password": PASSWORD}),
            &[("x-forwarded-for", "192.0.2.99")],
        )
        .await;
    assert_eq!(
        status, 429,
        "spoofed addresses do not escape the peer's limit"
    );
}

#[tokio::test]
async fn limits_set_to_zero_are_off() {
    let app = sqlite_with("limits_off", |c| {
        c.limits.login_max_failures = 0;
        c.limits.login_max_failures_per_ip = 0;
        c.limits.create_per_hour = 0;
    })
    .await;
    app.create_user("asim").await;
    fail_times(&app, "asim", 12).await;
    app.login("asim", PASSWORD).await;
    for i in 0..25 {
        app.create_user(&format!("user{i}")).await;
    }
}

#[tokio::test]
async fn sign_ups_are_limited_per_address() {
    let app = sqlite_with("signups", |c| {
        c.limits.create_per_hour = 3;
        c.access.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let create = |name: &str, client: &'static str| {
        let body =
            json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
        let app = &app;
        async move {
            app.send("Create", body, &[("x-forwarded-for", client)])
                .await
        }
    };
    assert_eq!(create("a1", "203.0.113.1").await.0, 200);
    // A refused duplicate is a probe too: it counts.
    assert_eq!(create("a1", "203.0.113.1").await.0, 409);
    assert_eq!(create("a2", "203.0.113.1").await.0, 200);
    let (status, headers, body) = create("a3", "203.0.113.1").await;
    assert_error(&(status, body), "Create", 429, "too many attempts");
    assert_eq!(headers["retry-after"], "3600");
    assert_eq!(
        create("b1", "203.0.113.2").await.0,
        200,
        "other addresses are not affected"
    );
    app.clock.advance(3600);
    assert_eq!(
        create("a3", "203.0.113.1").await.0,
        200,
        "a new hour, a new allowance"
    );
}

#[tokio::test]
async fn unknown_accounts_cost_the_same_argon2_work_as_known_ones() {
    let app = sqlite_with("same_work", |_| {}).await;
    app.create_user("asim").await;
    let before = app.users.argon2_runs();
    assert_eq!(login(&app, "asim", WRONG).await.0, 401);
    assert_eq!(app.users.argon2_runs(), before + 1);
    assert_eq!(login(&app, "nobody", WRONG).await.0, 401);
    assert_eq!(
        app.users.argon2_runs(),
        before + 2,
        "an unknown account costs one verification too"
    );
}

#[tokio::test]
async fn locked_out_attempts_cost_no_hashing() {
    let app = sqlite_with("no_hash_when_locked", |_| {}).await;
    app.create_user("asim").await;
    fail_times(&app, "asim", 5).await;
    let before = app.users.argon2_runs();
    for _ in 0..20 {
        assert_eq!(login(&app, "asim", PASSWORD).await.0, 429);
        assert_eq!(
            login(&app, "nobody", PASSWORD).await.0,
            429,
            "the address is locked too"
        );
    }
    assert_eq!(app.users.argon2_runs(), before);
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let app = sqlite_with("nesting", |_| {}).await;
    let body = format!(
        "{{\"id\": \"x\", \"extra\": {}{}}}",
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let answer = app.post_raw("Read", &body, None).await;
    assert_error(&answer, "Read", 400, "nested deeper than 32 levels");
    let answer = app
        .call("ReadSession", json!({"session_id": "x".repeat(1025)}))
        .await;
    assert_error(
        &answer,
        "ReadSession",
        400,
        "session_id must be at most 1024 characters",
    );
}

/// Raw HTTP on a socket, for clients that misbehave on purpose.
fn connect(app: &TestApp) -> TcpStream {
    let stream = TcpStream::connect(app.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let app = sqlite_with("slow_clients", |c| c.request_timeout = 1).await;
    // A body that never finishes: 408 in the Micro error shape.
    let mut slow_body = connect(&app);
    write!(
        slow_body,
        "POST /users/Users/Read HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{{\"id\":"
    )
    .unwrap();
    // Headers that never finish: the connection is closed.
    let mut slow_headers = connect(&app);
    write!(
        slow_headers,
        "POST /users/Users/Read HTTP/1.1\r\nHost: localhost\r\n"
    )
    .unwrap();
    let (body_answer, header_answer) = tokio::task::spawn_blocking(move || {
        (read_all(&mut slow_body), read_all(&mut slow_headers))
    })
    .await
    .unwrap();
    assert!(body_answer.starts_with("HTTP/1.1 408"), "{body_answer}");
    let json: Value = serde_json::from_str(body_answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["id"], "users.Read");
    assert_eq!(json["code"], 408);
    assert!(!header_answer.starts_with("HTTP/1.1 2"), "{header_answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_answered_503() {
    let app = sqlite_with("connection_cap", |c| {
        c.max_connections = 2;
        c.max_connections_per_ip = Some(2);
    })
    .await;
    // Two connections that have sent a request each: both slots are in use.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&app);
        write!(stream, "GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut third = connect(&app);
    let answer = tokio::task::spawn_blocking(move || read_all(&mut third))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["code"], 503);
    assert_eq!(json["status"], "Service Unavailable");
    // Closing one frees a slot.
    drop(held.pop());
    let mut fourth = None;
    for _ in 0..100 {
        let mut stream = connect(&app);
        write!(
            stream,
            "GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let answer = tokio::task::spawn_blocking(move || read_all(&mut stream))
            .await
            .unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            fourth = Some(answer);
            break;
        }
        // The server notices the closed connection asynchronously.
        tokio::task::yield_now().await;
    }
    assert!(fourth.is_some(), "a freed slot is reused");
}

#[tokio::test]
async fn the_minimum_password_length_can_be_raised() {
    let app = sqlite_with("min_length", |c| c.passwords.password_min_length = 12).await;
    let create = |password: &str| json!({"username": "asim", "email": "asim@example.com", "password": password});
    let answer = app.call("Create", create("eleven-char")).await;
    assert_error(
        &answer,
        "Create",
        400,
        "password must be at least 12 characters",
    );
    let (status, body) = app.call("Create", create("twelve-chars")).await;
    assert_eq!(status, 200, "{body}");
    let answer = app
        .call(
            "UpdatePassword",
            json!({"user_id": body["user"]["id"], "old_password": "twelve-chars", "new_password": "elevenchars", "confirm_password": "elevenchars"}),
        )
        .await;
    assert_error(
        &answer,
        "UpdatePassword",
        400,
        "new_password must be at least 12 characters",
    );
    // Existing passwords shorter than a newly raised minimum still sign in.
    app.login("asim", "twelve-chars").await;
}

/// Sends every request of `burst` at once (each a body and the address it comes from),
/// alternating between the app and `replica`; once the first answer is a 429 (or, if
/// none is, once all are answered), sends `last` too. Returns the burst's statuses and
/// `last`'s.
async fn burst_then(
    app: &TestApp,
    replica: &common::Replica,
    method: &str,
    burst: Vec<(Value, String)>,
    last: (Value, String),
) -> (Vec<StatusCode>, StatusCode) {
    let barrier = Arc::new(Barrier::new(burst.len()));
    let refused = Arc::new(Notify::new());
    let unanswered = Arc::new(std::sync::atomic::AtomicUsize::new(burst.len()));
    let client = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (body, from)) in burst.into_iter().enumerate() {
        let path = format!("/users/Users/{method}");
        let url = if i % 2 == 0 {
            app.url(&path)
        } else {
            replica.url(&path)
        };
        let (client, barrier, refused) = (client.clone(), barrier.clone(), refused.clone());
        let unanswered = unanswered.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let status = client
                .post(url)
                .header("x-forwarded-for", from)
                .json(&body)
                .send()
                .await
                .expect("sent")
                .status();
            let last_answer = unanswered.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1;
            if status == StatusCode::TOO_MANY_REQUESTS || last_answer {
                // Stores a permit if no one waits yet: the last request is not missed.
                refused.notify_one();
            }
            status
        });
    }
    refused.notified().await;
    let (body, from) = last;
    let (last_status, _, _) = app
        .send(method, body, &[("x-forwarded-for", from.as_str())])
        .await;
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("task"));
    }
    (statuses, last_status)
}

fn count(statuses: &[StatusCode], status: u16) -> usize {
    statuses.iter().filter(|s| s.as_u16() == status).count()
}

/// 60 wrong passwords for one account at once, each from an address of its own and
/// through either of two replicas, then the right one: at most 5 argon2 verifications
/// run, and no session is opened.
async fn a_burst_at_one_account_gets_no_more_checks_than_its_limit(app: TestApp) {
    app.create_user("asim").await;
    let replica = app.replica(behind_proxy).await;
    let runs = || app.users.argon2_runs() + replica.users.argon2_runs();
    let before = runs();
    let burst = (0..60)
        .map(|i| {
            (
                json!({"username": "asim", "password": WRONG}),
                format!("203.0.113.{i}"),
            )
        })
        .collect();
    let right = (
        json!({"username": "asim", "password": PASSWORD}),
        "198.51.100.1".to_string(),
    );
    let (statuses, last) = burst_then(&app, &replica, "Login", burst, right).await;
    let checked = count(&statuses, 401);
    assert_eq!(checked + count(&statuses, 429), 60, "{statuses:?}");
    assert!((1..=5).contains(&checked), "{checked} checks: {statuses:?}");
    assert_eq!(runs() - before, checked as u64, "one verification per 401");
    assert_eq!(last, 429, "the right password comes too late");
    assert_eq!(app.count_rows("sessions").await, 0);
}

/// 60 wrong passwords from one address at once, each for another name (some with an
/// account, some without): at most 5 verifications.
async fn a_burst_from_one_address_gets_no_more_checks_than_its_limit(app: TestApp) {
    for i in 0..3 {
        app.create_user(&format!("user{i}")).await;
    }
    app.create_user("asim").await;
    let replica = app.replica(behind_proxy).await;
    let runs = || app.users.argon2_runs() + replica.users.argon2_runs();
    let before = runs();
    let from = "203.0.113.7".to_string();
    let burst = (0..60)
        .map(|i| {
            (
                json!({"username": format!("user{i}"), "password": WRONG}),
                from.clone(),
            )
        })
        .collect();
    let right = (json!({"username": "asim", "password": PASSWORD}), from);
    let (statuses, last) = burst_then(&app, &replica, "Login", burst, right).await;
    let checked = count(&statuses, 401);
    assert_eq!(checked + count(&statuses, 429), 60, "{statuses:?}");
    assert!((1..=5).contains(&checked), "{checked} checks: {statuses:?}");
    assert_eq!(runs() - before, checked as u64);
    assert_eq!(last, 429);
    assert_eq!(app.count_rows("sessions").await, 0);
}

/// 40 reset codes from one address at once: at most 5 are checked.
async fn a_burst_of_reset_codes_from_one_address_is_bounded_too(app: TestApp) {
    app.create_user("asim").await;
    let replica = app.replica(behind_proxy).await;
    let from = "203.0.113.7".to_string();
    let guess = |i: usize| json!({"email": "asim@example.com", "code": format!("ABCDEFG{i:03}"), "new_password": "newpassword-1", "confirm_password": "newpassword-1"});
    let burst = (0..40).map(|i| (guess(i), from.clone())).collect();
    let (statuses, last) =
        burst_then(&app, &replica, "ResetPassword", burst, (guess(99), from)).await;
    let checked = count(&statuses, 400);
    assert_eq!(checked + count(&statuses, 429), 40, "{statuses:?}");
    assert!(
        (1..=5).contains(&checked),
        "{checked} codes checked: {statuses:?}"
    );
    assert_eq!(last, 429);
}

/// A burst of 60 failures is one lockout of the base length, not twelve that double;
/// the next lockout doubles only for failures after this one has ended.
async fn one_burst_is_one_lockout(app: TestApp) {
    app.create_user("asim").await;
    let replica = app.replica(behind_proxy).await;
    let from = "203.0.113.7".to_string();
    let burst = (0..60)
        .map(|_| (json!({"username": "asim", "password": WRONG}), from.clone()))
        .collect();
    let last = (json!({"username": "asim", "password": WRONG}), from.clone());
    burst_then(&app, &replica, "Login", burst, last).await;
    let attempt = |password: &'static str| {
        let app = &app;
        async move {
            let (status, headers, _) = app
                .send(
                    "Login",
                    json!({"username": "asim", "password": password}),
                    &[("x-forwarded-for", "198.51.100.1")],
                )
                .await;
            let retry = headers
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<i64>().unwrap());
            (status.as_u16(), retry)
        }
    };
    let (status, retry) = attempt(PASSWORD).await;
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|r| (1..=60).contains(&r)), "{retry:?}");
    app.clock.advance(60);
    for _ in 0..5 {
        assert_eq!(attempt(WRONG).await.0, 401);
    }
    assert_eq!(attempt(PASSWORD).await, (429, Some(120)));
}

#[tokio::test]
async fn ipv6_clients_share_the_per_address_limit_by_their_64() {
    let app = sqlite_with("ipv6_64", |c| {
        c.limits.login_max_failures = 0;
        behind_proxy(c);
    })
    .await;
    app.create_user("asim").await;
    let attempt = |from: &'static str| {
        let app = &app;
        async move {
            app.send(
                "Login",
                json!({"username": "asim", "password": WRONG}),
                &[("x-forwarded-for", from)],
            )
            .await
            .0
            .as_u16()
        }
    };
    for from in [
        "2001:db8:0:1::1",
        "2001:db8:0:1::2",
        "2001:db8:0:1:ffff::3",
        "2001:db8:0:1:1:2:3:4",
        "2001:db8:0:1::5",
    ] {
        assert_eq!(attempt(from).await, 401, "{from}");
    }
    assert_eq!(attempt("2001:db8:0:1::99").await, 429, "the same /64");
    assert_eq!(attempt("2001:db8:0:2::1").await, 401, "another /64");
}

/// Point 6: an id that belonged to a deleted account is never issued again, not even
/// to a Create that races with the Delete.
async fn deleted_ids_are_never_issued_again(app: TestApp) {
    let create = |id: &str, name: &str| json!({"id": id, "username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
    let id = "ff3c06de-9e43-41c7-9bab-578f6b4ad32b";
    let (status, body) = app.call("Create", create(id, "asim")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.call("Delete", json!({"id": id})).await;
    assert_eq!(status, 200);
    let answer = app.call("Create", create(id, "stranger")).await;
    assert_error(&answer, "Create", 409, "id is already taken");
    // Other ids, and no id at all, still work.
    app.create_user("other").await;

    // A Create of an id racing with the Delete of that id: whichever comes first, the
    // Create is refused, as the id is live or gone.
    for round in 0..10 {
        let id = format!("00000000-0000-4000-8000-{round:012}");
        let (status, body) = app
            .call("Create", create(&id, &format!("first{round}")))
            .await;
        assert_eq!(status, 200, "{body}");
        let (deleted, created) = tokio::join!(
            app.call("Delete", json!({"id": id})),
            app.call("Create", create(&id, &format!("second{round}"))),
        );
        assert_eq!(deleted.0, 200, "{}", deleted.1);
        assert_error(&created, "Create", 409, "id is already taken");
    }
    assert_eq!(app.count_rows("users").await, 1, "only `other` is left");
}

#[tokio::test]
async fn without_the_key_a_chosen_id_must_be_a_uuid() {
    let app = sqlite_with("uuid_ids", |c| c.access.api_key = Some(KEY.into())).await;
    let bearer = format!("Bearer {KEY}");
    let create = |id: &str, name: &str| json!({"id": id, "username": name, "email": format!("{name}@example.com"), "password": PASSWORD});
    for id in ["admin", "1", "ff3c06de9e4341c79bab578f6b4ad32b"] {
        let (status, _, body) = app.send("Create", create(id, "mallory"), &[]).await;
        assert_error(&(status, body), "Create", 400, "id must be a UUID");
    }
    // The seed's own example, a UUID chosen by the client, works.
    let (status, _, body) = app
        .send(
            "Create",
            create("ff3c06de-9e43-41c7-9bab-578f6b4ad32b", "asim"),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // With the key, any id the contract allows.
    let (status, _, body) = app
        .send(
            "Create",
            create("admin", "root"),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], "admin");
    // Without a key configured, every caller is trusted: any id.
    let open = sqlite_with("any_ids", |_| {}).await;
    let (status, _, body) = open.send("Create", create("admin", "root"), &[]).await;
    assert_eq!(status, 200, "{body}");
}

/// A connection from `source` (a loopback address of this machine) that has been
/// answered one request, kept alive; or the refusal it got instead.
async fn held_connection(app: &TestApp, source: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut head)).await;
    assert!(read.is_ok(), "no answer");
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// Point 7: one client cannot hold every connection; another address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_the_connections() {
    // 8 connections in all: 2 per address by default.
    let app = sqlite_with("connection_share", |c| c.max_connections = 8).await;
    let (_first, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 200");
    let (_second, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 200");
    let (mut third, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 503");
    let mut rest = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut third, &mut rest)
        .await
        .unwrap();
    assert!(
        rest.contains("too many connections from this address"),
        "{rest}"
    );
    let (_other, answer) = held_connection(&app, "127.0.0.2").await;
    assert_eq!(answer, "HTTP/1.1 200", "another address is served");
}

/// Reads until the server closes the connection; what it sent meanwhile.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_to_end(stream, &mut out),
    )
    .await;
    assert!(read.is_ok(), "the server did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// Point 7: a connection that never sends a request is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed() {
    let app = sqlite_with("silent_connection", |c| {
        c.new_connection_timeout = 1;
        c.keep_alive_timeout = 3600;
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    assert_eq!(until_closed(&mut silent).await, "");
}

/// Point 7: each answer gives a kept-alive connection the whole keep-alive time again,
/// so a client asking more often than that keeps its connection past it; once it stops
/// asking, the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_keeps_asking_is_kept_past_the_keep_alive_time() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = sqlite_with("keeps_asking", |c| {
        c.new_connection_timeout = 3600;
        c.keep_alive_timeout = 1;
    })
    .await;
    let (mut stream, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 200");
    let started = std::time::Instant::now();
    let mut asked = 1;
    // The pauses are what is tested: each shorter than the keep-alive time, together
    // three times longer.
    while started.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut rest = vec![0u8; 4096];
        // What is left of the previous answer (its headers and body).
        let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut rest)).await;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut head));
        assert!(
            matches!(read.await, Ok(Ok(_))),
            "request {asked} found the connection closed"
        );
        assert_eq!(&head, b"HTTP/1.1 200");
        asked += 1;
    }
    assert!(asked >= 8, "{asked}");
    let rest = until_closed(&mut stream).await;
    assert!(rest.ends_with(r#"{"status":"ok"}"#), "{rest}");
}

/// Point 7: a request whose headers stop coming after a kept-alive answer is cut off at
/// the request timeout, not at the far later end of the keep-alive time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_stop_coming_on_a_kept_alive_connection_are_cut_off() {
    use tokio::io::AsyncWriteExt;
    let app = sqlite_with("stalled_headers", |c| {
        c.new_connection_timeout = 3600;
        c.keep_alive_timeout = 3600;
        c.request_timeout = 1;
    })
    .await;
    let (mut stream, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 200");
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    // until_closed gives up after 20 s; the keep-alive time is an hour.
    let rest = until_closed(&mut stream).await;
    assert!(rest.ends_with(r#"{"status":"ok"}"#), "{rest}");
}

/// Point 7: a kept-alive connection that sends no next request is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    let app = sqlite_with("idle_connection", |c| {
        c.new_connection_timeout = 3600;
        c.keep_alive_timeout = 1;
    })
    .await;
    let (mut idle, answer) = held_connection(&app, "127.0.0.1").await;
    assert_eq!(answer, "HTTP/1.1 200");
    let rest = until_closed(&mut idle).await;
    assert!(rest.ends_with(r#"{"status":"ok"}"#), "{rest}");
}
