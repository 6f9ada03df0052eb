//! Sessions' life cycle and the second factor: how sessions were signed in, idle
//! timeouts, ending all other sessions, TOTP enrolment and the second step of a sign-in
//! (LoginMfa), recovery codes, turning TOTP off and the admin's reset, over real HTTP
//! on SQLite and PostgreSQL. Codes come from the tests' own RFC 6238 authenticator
//! (tests/common/totp.rs), checked here against the RFC's test vectors.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use base64::Engine;
use common::{assert_error, micro, totp, TestApp, PASSWORD};
use reqwest::StatusCode;
use serde_json::json;
use users_service::config::ServeConfig;

const KEY: &str = "s3cret-admin-key";

fn with_key(config: &mut ServeConfig) {
    config.access.api_key = Some(KEY.into());
}

on_both_stores!(
    config = crate::with_key,
    enrolling_totp_makes_sign_in_take_a_second_step,
    each_code_and_recovery_code_is_accepted_once,
    wrong_codes_count_toward_the_sign_in_lockout,
    a_code_sent_at_once_to_two_replicas_opens_one_session,
    totp_is_turned_off_with_a_code_or_the_password_or_by_the_admin,
    only_the_users_own_session_enrols,
    sessions_record_how_they_were_signed_in,
    logout_all_may_keep_the_current_session,
    a_key_set_later_reads_clear_secrets_and_reseal_seals_and_rotates_them,
);

mod passkeys {
    use super::*;

    /// Passkeys need a domain name for the relying party.
    pub(super) fn on_localhost(config: &mut ServeConfig) {
        with_key(config);
        config.mail.public_url = Some("http://localhost:8080".to_string());
    }

    on_both_stores!(
        config = crate::passkeys::on_localhost,
        the_passkey_methods_check_their_callers_and_input,
        a_sign_in_without_a_name_is_a_ceremony_of_its_own,
        a_sign_in_by_a_name_without_passkeys_lists_a_decoy,
    );

    /// Three passkey sign-ins per address and hour.
    pub(super) fn three_an_hour(config: &mut ServeConfig) {
        on_localhost(config);
        config.limits.passkey_sign_ins_per_hour = 3;
    }

    mod limited {
        use super::*;

        on_both_stores!(
            config = crate::passkeys::three_an_hour,
            passkey_sign_ins_started_at_once_on_two_replicas_keep_the_address_limit,
        );
    }
}

mod sealed {
    use super::*;

    /// TOTP secrets sealed under one key.
    pub(super) fn with_encryption_key(config: &mut ServeConfig) {
        with_key(config);
        config.sealing.encryption_key = Some(crate::SEALING_A.into());
    }

    on_both_stores!(
        config = crate::sealed::with_encryption_key,
        totp_secrets_are_sealed_at_rest_and_open_for_their_own_user_only,
    );
}

/// Two keys for the secrets at rest (base64 of 32 bytes each).
const SEALING_A: &str = "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=";
const SEALING_B: &str = "ASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4mrze8=";

mod idle {
    use super::*;

    pub(super) fn idle_timeout(config: &mut ServeConfig) {
        with_key(config);
        config.session_idle_timeout = 600;
    }

    on_both_stores!(
        config = crate::idle::idle_timeout,
        an_unused_session_ends_after_the_idle_timeout,
        a_use_near_the_idle_timeout_counts_at_once_on_another_replica,
        a_sessions_use_is_written_soon_and_by_a_clean_stop,
        a_use_not_yet_written_keeps_the_session_alive_here,
    );
}

/// RFC 6238, Appendix B (SHA-1): the eight-digit codes' last six digits, for the
/// secret "12345678901234567890" (in base32 below).
#[test]
fn the_tests_authenticator_follows_rfc_6238() {
    let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
    for (at, expected) in [
        (59, "287082"),
        (1_111_111_109, "081804"),
        (1_234_567_890, "005924"),
        (2_000_000_000, "279037"),
    ] {
        assert_eq!(totp::code(secret, at), expected, "T = {at}");
    }
}

/// Creates `name` with the admin key and signs in; returns its id and session id.
async fn user_with_session(app: &TestApp, name: &str) -> (String, String) {
    let (status, body) = micro(
        app,
        "Create",
        KEY,
        json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["user"]["id"].as_str().unwrap().to_string();
    let session = app.login(name, PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    (id, session)
}

/// Turns TOTP on for the session's user; returns the secret and the recovery codes.
async fn enrol(app: &TestApp, session: &str) -> (String, Vec<String>) {
    let (status, started) = micro(app, "StartTotp", session, json!({})).await;
    assert_eq!(status, 200, "{started}");
    let secret = started["secret"].as_str().unwrap().to_string();
    let code = totp::code(&secret, app.clock_now());
    let (status, confirmed) = micro(app, "ConfirmTotp", session, json!({"code": code})).await;
    assert_eq!(status, 200, "{confirmed}");
    let codes = confirmed["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    (secret, codes)
}

/// Signs in with the password, expecting the second step; returns its challenge id.
async fn first_step(app: &TestApp, name: &str) -> String {
    let (status, body) = app
        .call("Login", json!({"username": name, "password": PASSWORD}))
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["id"], "users.Login");
    assert!(
        body["detail"].as_str().unwrap().starts_with("mfa_required"),
        "{body}"
    );
    assert!(body.get("session").is_none());
    let expires: i64 = body["challenge_expires"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires, app.clock_now() + 300, "{body}");
    body["challenge_id"].as_str().unwrap().to_string()
}

async fn alive(app: &TestApp, session: &str) -> bool {
    let (status, _) = app
        .call("ReadSession", json!({"session_id": session}))
        .await;
    status == 200
}

async fn enrolling_totp_makes_sign_in_take_a_second_step(app: TestApp) {
    let (id, session) = user_with_session(&app, "alice").await;
    let other = app.login("alice", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Started: a secret for the app, as text, URI and QR code; not on yet.
    let (status, started) = micro(&app, "StartTotp", &session, json!({})).await;
    assert_eq!(status, 200, "{started}");
    let secret = started["secret"].as_str().unwrap();
    assert_eq!(secret.len(), 32, "160 bits in base32");
    let uri = started["uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    assert!(uri.contains("alice%40example.com"), "{uri}");
    assert!(started["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    let (_, factors) = micro(&app, "ReadSecondFactors", &session, json!({})).await;
    assert_eq!(factors["totp"], false, "{factors}");
    assert_eq!(factors["totp_pending"], true, "{factors}");
    let (status, _) = app
        .call("Login", json!({"username": "alice", "password": PASSWORD}))
        .await;
    assert_eq!(status, 200, "not on until confirmed");

    // A wrong first code confirms nothing.
    let wrong = format!(
        "{:06}",
        (totp::code(secret, app.clock_now()).parse::<u32>().unwrap() + 1) % 1_000_000
    );
    let answer = micro(&app, "ConfirmTotp", &session, json!({"code": wrong})).await;
    assert_error(&answer, "ConfirmTotp", 401, "code is incorrect");
    let answer = micro(&app, "ConfirmTotp", &session, json!({"code": "12345"})).await;
    assert_error(&answer, "ConfirmTotp", 400, "6 digits");

    // Confirmed: ten recovery codes, and every other session ends.
    let code = totp::code(secret, app.clock_now());
    let (status, confirmed) = micro(&app, "ConfirmTotp", &session, json!({"code": code})).await;
    assert_eq!(status, 200, "{confirmed}");
    let codes = confirmed["recovery_codes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    assert!(codes
        .iter()
        .all(|c| c.as_str().unwrap().len() == 11 && c.as_str().unwrap().as_bytes()[5] == b'-'));
    assert!(alive(&app, &session).await, "the enrolling session stays");
    assert!(!alive(&app, &other).await, "the others end");
    assert_eq!(app.count_rows("recovery_codes").await, 10);
    let (_, factors) = micro(&app, "ReadSecondFactors", KEY, json!({"user_id": id})).await;
    assert_eq!(factors["totp"], true, "{factors}");
    assert_eq!(factors["recovery_codes_left"], "10", "{factors}");
    let answer = micro(&app, "StartTotp", &session, json!({})).await;
    assert_error(&answer, "StartTotp", 400, "on already");

    // Now the password alone opens no session, on either route family.
    let sessions_before = app.count_rows("sessions").await;
    let challenge = first_step(&app, "alice").await;
    let (status, m3o) = app
        .m3o(
            "Login",
            json!({"email": "alice@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 401, "{m3o}");
    assert_eq!(m3o["id"], "user.Login");
    assert!(m3o["challenge_id"].is_string());
    assert_eq!(app.count_rows("sessions").await, sessions_before);
    // A wrong password is still just a wrong password.
    let answer = app
        .call(
            "Login",
            json!({"username": "alice", "password": "wrong-password"}),
        )
        .await;
    assert_error(&answer, "Login", 401, "incorrect");

    // The M3O Login replaced the first challenge (one per user and first step).
    app.clock.advance(30);
    let code = totp::code(secret, app.clock_now());
    let answer = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_error(&answer, "LoginMfa", 401, "challenge not found");
    let challenge = m3o["challenge_id"].as_str().unwrap();
    let (status, body) = app
        .m3o("LoginMfa", json!({"challengeId": challenge, "code": code}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"]["userId"], id.as_str());
    let new_session = body["session"]["id"].as_str().unwrap();
    assert!(alive(&app, new_session).await);
    // The challenge is used up.
    app.clock.advance(30);
    let code = totp::code(secret, app.clock_now());
    let answer = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_error(&answer, "LoginMfa", 401, "challenge not found");

    // A challenge lives five minutes.
    let challenge = first_step(&app, "alice").await;
    app.clock.advance(301);
    let code = totp::code(secret, app.clock_now());
    let answer = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_error(&answer, "LoginMfa", 401, "challenge not found");
}

async fn each_code_and_recovery_code_is_accepted_once(app: TestApp) {
    let (id, session) = user_with_session(&app, "bob").await;
    let (secret, codes) = enrol(&app, &session).await;

    // The code that confirmed enrolment was used: it opens nothing.
    let challenge = first_step(&app, "bob").await;
    let code = totp::code(&secret, app.clock_now());
    let answer = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_error(&answer, "LoginMfa", 401, "used already");

    // The previous step's code is still accepted (one step either side), once; then
    // neither it nor an older one is.
    app.clock.advance(60);
    let previous = totp::code(&secret, app.clock_now() - 30);
    let (status, body) = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": previous}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let challenge = first_step(&app, "bob").await;
    let answer = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": previous}),
        )
        .await;
    assert_error(&answer, "LoginMfa", 401, "used already");
    let two_back = totp::code(&secret, app.clock_now() - 60);
    let answer = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": two_back}),
        )
        .await;
    assert_error(&answer, "LoginMfa", 401, "incorrect");

    // A recovery code opens a session once, typed in any case and without its dash.
    let typed = codes[3].to_lowercase().replace('-', " ");
    let (status, body) = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "recovery_code": typed}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let new_session = body["session"]["id"].as_str().unwrap();
    let (_, listed) = micro(&app, "ListSessions", new_session, json!({"user_id": id})).await;
    let by_recovery = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["second_factor"] == "recovery_code")
        .count();
    assert_eq!(by_recovery, 1, "{listed}");
    let challenge = first_step(&app, "bob").await;
    let answer = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "recovery_code": codes[3]}),
        )
        .await;
    assert_error(&answer, "LoginMfa", 401, "incorrect");
    let (_, factors) = micro(&app, "ReadSecondFactors", &session, json!({})).await;
    assert_eq!(factors["recovery_codes_left"], "9", "{factors}");

    // Both, or neither, is a 400.
    let answer = app
        .call("LoginMfa", json!({"challenge_id": challenge}))
        .await;
    assert_error(&answer, "LoginMfa", 400, "code is required");
    let answer = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": "123456", "recovery_code": codes[0]}),
        )
        .await;
    assert_error(&answer, "LoginMfa", 400, "cannot both");
}

async fn wrong_codes_count_toward_the_sign_in_lockout(app: TestApp) {
    let (_, session) = user_with_session(&app, "carol").await;
    let (secret, _) = enrol(&app, &session).await;
    app.clock.advance(30);
    let challenge = first_step(&app, "carol").await;
    let right = totp::code(&secret, app.clock_now());
    let wrong = format!(
        "{:06}",
        (right.parse::<u32>().unwrap() + 500_000) % 1_000_000
    );
    // The default limit: five failures in the window.
    for _ in 0..5 {
        let answer = app
            .call(
                "LoginMfa",
                json!({"challenge_id": challenge, "code": wrong}),
            )
            .await;
        assert_error(&answer, "LoginMfa", 401, "incorrect");
    }
    let (status, headers, body) = app
        .send(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": right}),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(headers.contains_key("retry-after"));
    // The lockout also holds for turning TOTP off with the password.
    let answer = micro(&app, "DisableTotp", &session, json!({"password": PASSWORD})).await;
    assert_eq!(answer.0, StatusCode::TOO_MANY_REQUESTS, "{}", answer.1);
    // Once it is over, the right code works.
    app.clock.advance(61);
    let right = totp::code(&secret, app.clock_now());
    let (status, body) = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "code": right}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn a_code_sent_at_once_to_two_replicas_opens_one_session(app: TestApp) {
    let (id, session) = user_with_session(&app, "dave").await;
    let (secret, _) = enrol(&app, &session).await;
    let replica = app.replica(with_key).await;
    app.clock.advance(30);
    let challenge = first_step(&app, "dave").await;
    let code = totp::code(&secret, app.clock_now());
    let body = json!({"challenge_id": challenge, "code": code});
    let sends = (0..20).map(|i| {
        let url = if i % 2 == 0 {
            app.url("/users/Users/LoginMfa")
        } else {
            replica.url("/users/Users/LoginMfa")
        };
        let client = app.client.clone();
        let body = body.clone();
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            response.status()
        }
    });
    let statuses = futures_join_all(sends).await;
    let opened = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(opened, 1, "{statuses:?}");
    // The others: the code is used (401), or they were past the sign-in limit (429).
    assert!(statuses.iter().all(|s| [
        StatusCode::OK,
        StatusCode::UNAUTHORIZED,
        StatusCode::TOO_MANY_REQUESTS
    ]
    .contains(s)));
    let (_, listed) = micro(&app, "ListSessions", KEY, json!({"user_id": id})).await;
    assert_eq!(
        listed["sessions"].as_array().unwrap().len(),
        2,
        "the enrolling session and one new one: {listed}"
    );
}

/// Runs the futures at once (tokio tasks), in order of the answers' positions.
async fn futures_join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

async fn totp_is_turned_off_with_a_code_or_the_password_or_by_the_admin(app: TestApp) {
    let (id, session) = user_with_session(&app, "erin").await;
    let (secret, _) = enrol(&app, &session).await;

    // With the password.
    let answer = micro(
        &app,
        "DisableTotp",
        &session,
        json!({"password": "wrong-password"}),
    )
    .await;
    assert_error(&answer, "DisableTotp", 401, "incorrect");
    let answer = micro(&app, "DisableTotp", &session, json!({})).await;
    assert_error(&answer, "DisableTotp", 400, "code is required");
    let (status, body) = micro(&app, "DisableTotp", &session, json!({"password": PASSWORD})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.count_rows("recovery_codes").await, 0);
    app.login("erin", PASSWORD).await;
    let answer = micro(&app, "DisableTotp", &session, json!({"password": PASSWORD})).await;
    assert_eq!(
        answer.0, 200,
        "turning off what is off is fine: {}",
        answer.1
    );

    // With a current code.
    let (secret2, _) = enrol(&app, &session).await;
    assert_ne!(secret, secret2, "a new secret each time");
    let used = totp::code(&secret2, app.clock_now());
    let answer = micro(&app, "DisableTotp", &session, json!({"code": used})).await;
    assert_error(&answer, "DisableTotp", 401, "incorrect");
    app.clock.advance(30);
    let code = totp::code(&secret2, app.clock_now());
    let (status, body) = micro(&app, "DisableTotp", &session, json!({"code": code})).await;
    assert_eq!(status, 200, "{body}");
    app.login("erin", PASSWORD).await;

    // By the admin, for a user who lost the device and the codes.
    enrol(&app, &session).await;
    first_step(&app, "erin").await;
    let answer = micro(&app, "ResetSecondFactors", &session, json!({"user_id": id})).await;
    assert_error(&answer, "ResetSecondFactors", 401, "admin key");
    let (status, body) = micro(&app, "ResetSecondFactors", KEY, json!({"user_id": id})).await;
    assert_eq!(status, 200, "{body}");
    app.login("erin", PASSWORD).await;
    let answer = micro(&app, "ResetSecondFactors", KEY, json!({"user_id": id})).await;
    assert_error(&answer, "ResetSecondFactors", 404, "no second factor");
    let answer = micro(
        &app,
        "ResetSecondFactors",
        KEY,
        json!({"user_id": "nobody"}),
    )
    .await;
    assert_error(&answer, "ResetSecondFactors", 404, "user not found");
}

async fn only_the_users_own_session_enrols(app: TestApp) {
    let (alice, session) = user_with_session(&app, "frank").await;
    let (bob, _) = user_with_session(&app, "grace").await;
    // The admin key sets up no one's authenticator.
    let answer = micro(&app, "StartTotp", KEY, json!({})).await;
    assert_error(&answer, "StartTotp", 403, "own live session");
    // Nor does an unsigned call.
    let answer = app.call("StartTotp", json!({})).await;
    assert_error(&answer, "StartTotp", 401, "own live session");
    // A session reads and turns off its own factors only.
    let answer = micro(&app, "ReadSecondFactors", &session, json!({"user_id": bob})).await;
    assert_error(&answer, "ReadSecondFactors", 403, "its own account");
    let answer = micro(
        &app,
        "DisableTotp",
        &session,
        json!({"user_id": bob, "password": PASSWORD}),
    )
    .await;
    assert_error(&answer, "DisableTotp", 403, "its own account");
    let (status, _) = micro(
        &app,
        "ReadSecondFactors",
        &session,
        json!({"user_id": alice}),
    )
    .await;
    assert_eq!(status, 200);
    // ConfirmTotp with nothing started.
    let answer = micro(&app, "ConfirmTotp", &session, json!({"code": "123456"})).await;
    assert_error(&answer, "ConfirmTotp", 400, "StartTotp first");
}

async fn sessions_record_how_they_were_signed_in(app: TestApp) {
    let (id, session) = user_with_session(&app, "heidi").await;
    let (_, listed) = micro(&app, "ListSessions", &session, json!({})).await;
    let item = &listed["sessions"][0];
    assert_eq!(item["method"], "password", "{listed}");
    assert!(item.get("second_factor").is_none(), "{listed}");
    let (secret, _) = enrol(&app, &session).await;
    app.clock.advance(30);
    let challenge = first_step(&app, "heidi").await;
    let code = totp::code(&secret, app.clock_now());
    let (status, _) = app
        .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_eq!(status, 200);
    let (_, listed) = micro(&app, "ListSessions", KEY, json!({"user_id": id})).await;
    let kinds: Vec<(&str, Option<&str>)> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["method"].as_str().unwrap(), s["second_factor"].as_str()))
        .collect();
    assert_eq!(kinds.len(), 2, "{listed}");
    assert!(kinds.contains(&("password", None)), "{listed}");
    assert!(kinds.contains(&("password", Some("totp"))), "{listed}");
}

async fn logout_all_may_keep_the_current_session(app: TestApp) {
    let (id, session) = user_with_session(&app, "ivan").await;
    let other = app.login("ivan", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = micro(
        &app,
        "LogoutAll",
        KEY,
        json!({"user_id": id, "keep_current": true}),
    )
    .await;
    assert_error(&answer, "LogoutAll", 400, "keep_current");
    let (status, body) = micro(&app, "LogoutAll", &session, json!({"keepCurrent": true})).await;
    assert_eq!(status, 200, "{body}");
    assert!(alive(&app, &session).await);
    assert!(!alive(&app, &other).await);
    let (status, _) = micro(&app, "LogoutAll", &session, json!({})).await;
    assert_eq!(status, 200);
    assert!(!alive(&app, &session).await);
}

/// What can be checked without a browser (the ceremonies themselves run in headless
/// Chromium, tests/browser/test_passkeys.py): who may start them, the options they
/// answer, and what a bad credential or an unknown passkey gets.
async fn the_passkey_methods_check_their_callers_and_input(app: TestApp) {
    let (id, session) = user_with_session(&app, "kim").await;
    let answer = micro(&app, "StartPasskeyRegistration", KEY, json!({})).await;
    assert_error(&answer, "StartPasskeyRegistration", 403, "own live session");
    let (status, start) = micro(&app, "StartPasskeyRegistration", &session, json!({})).await;
    assert_eq!(status, 200, "{start}");
    let options = &start["options"]["publicKey"];
    assert_eq!(options["rp"]["id"], "localhost", "{start}");
    assert_eq!(options["user"]["name"], "kim@example.com", "{start}");
    assert_eq!(
        options["authenticatorSelection"]["userVerification"], "required",
        "{start}"
    );
    // A discoverable credential where the authenticator can keep one, so that it can
    // sign in without a name.
    assert_eq!(
        options["authenticatorSelection"]["residentKey"], "preferred",
        "{start}"
    );
    let challenge = start["challenge_id"].as_str().unwrap();
    assert_eq!(challenge.len(), 43);
    assert_ne!(
        options["challenge"], challenge,
        "the WebAuthn challenge is not the id"
    );

    // A credential that is not one: 400, and the ceremony is still there to finish.
    let answer = micro(
        &app,
        "FinishPasskeyRegistration",
        &session,
        json!({"challenge_id": challenge, "credential": {"id": "x"}}),
    )
    .await;
    assert_error(&answer, "FinishPasskeyRegistration", 400, "credential");
    let answer = micro(
        &app,
        "FinishPasskeyRegistration",
        &session,
        json!({"challenge_id": challenge}),
    )
    .await;
    assert_error(
        &answer,
        "FinishPasskeyRegistration",
        400,
        "credential is required",
    );
    // Another user's session cannot finish it.
    let (_, other) = user_with_session(&app, "lee").await;
    let answer = micro(
        &app,
        "FinishPasskeyRegistration",
        &other,
        json!({"challenge_id": challenge, "credential": {"id": "x", "rawId": "eA", "type": "public-key", "response": {"attestationObject": "AA", "clientDataJSON": "AA"}}}),
    )
    .await;
    assert_error(
        &answer,
        "FinishPasskeyRegistration",
        401,
        "challenge not found",
    );

    // No passkey yet: none listed (a sign-in by name gets a decoy: the test below).
    let (status, listed) = micro(&app, "ListPasskeys", &session, json!({})).await;
    assert_eq!((status, listed), (StatusCode::OK, json!({"passkeys": []})));
    let answer = app
        .call(
            "FinishPasskeyLogin",
            json!({"challenge_id": challenge, "credential": {"id": "x"}}),
        )
        .await;
    assert_error(&answer, "FinishPasskeyLogin", 400, "credential");
    let answer = micro(&app, "DeletePasskey", &session, json!({"passkey": "nope"})).await;
    assert_error(&answer, "DeletePasskey", 404, "passkey not found");
    let answer = micro(
        &app,
        "RenamePasskey",
        &session,
        json!({"passkey": "nope", "name": "x"}),
    )
    .await;
    assert_error(&answer, "RenamePasskey", 404, "passkey not found");
    let answer = micro(&app, "RenamePasskey", &session, json!({"passkey": "nope"})).await;
    assert_error(&answer, "RenamePasskey", 400, "name is required");
    let answer = micro(&app, "ListPasskeys", &other, json!({"user_id": id})).await;
    assert_error(&answer, "ListPasskeys", 403, "its own account");
}

/// A credential as the browser would send it for a sign-in, signed by no passkey of
/// this service; `user_handle` is the account it claims (base64url), if any.
fn unknown_assertion(user_handle: Option<&str>) -> serde_json::Value {
    json!({
        "id": "AAAAAAAAAAAAAAAAAAAAAA",
        "rawId": "AAAAAAAAAAAAAAAAAAAAAA",
        "type": "public-key",
        "response": {
            "authenticatorData": "AAAA",
            "clientDataJSON": "e30",
            "signature": "AAAA",
            "userHandle": user_handle,
        },
        "extensions": {},
    })
}

/// StartPasskeyLogin without a name answers a ceremony for any account's passkey, the
/// same whoever asks: no credentials listed, user verification required. Each start is
/// its own ceremony (none withdraws another), an unknown passkey's signature is refused
/// without using the ceremony up, and an expired one is gone, then swept.
async fn a_sign_in_without_a_name_is_a_ceremony_of_its_own(app: TestApp) {
    user_with_session(&app, "kim").await;
    let mut challenges = Vec::new();
    for body in [json!({}), json!({"username": "", "email": ""}), json!({})] {
        let (status, start) = app.call("StartPasskeyLogin", body).await;
        assert_eq!(status, 200, "{start}");
        let options = &start["options"]["publicKey"];
        assert_eq!(options["rpId"], "localhost", "{start}");
        assert_eq!(options["userVerification"], "required", "{start}");
        assert!(
            options["allowCredentials"]
                .as_array()
                .is_none_or(Vec::is_empty),
            "no account's credentials are listed: {start}"
        );
        challenges.push(start["challenge_id"].as_str().unwrap().to_string());
    }
    assert_eq!(app.count_rows("passkey_sign_ins").await, 3);
    let m3o = app.m3o("StartPasskeyLogin", json!({})).await;
    assert_eq!(m3o.0, 200, "{m3o:?}");

    // A signature that names no passkey of this service, or no account: refused, and
    // the ceremony is still there to finish.
    for handle in [None, Some("AAAAAAAAAAAAAAAAAAAAAA")] {
        let answer = app
            .call(
                "FinishPasskeyLogin",
                json!({"challenge_id": challenges[0], "credential": unknown_assertion(handle)}),
            )
            .await;
        assert_error(&answer, "FinishPasskeyLogin", 401, "was not accepted");
    }
    assert_eq!(app.count_rows("passkey_sign_ins").await, 4);
    assert_eq!(app.count_rows("sessions").await, 1, "only kim's own");

    // Five minutes on, the ceremonies are over, and the sweeper takes them.
    app.clock.advance(301);
    let answer = app
        .call(
            "FinishPasskeyLogin",
            json!({"challenge_id": challenges[1], "credential": unknown_assertion(None)}),
        )
        .await;
    assert_error(&answer, "FinishPasskeyLogin", 401, "challenge not found");
    app.users.sweep().await.unwrap();
    assert_eq!(app.count_rows("passkey_sign_ins").await, 0);
}

/// A sign-in by a name without passkeys, known or not, answers as one for a name with
/// passkeys: a ceremony that lists one or two credentials, the same for that name on every ask
/// and on every replica (their first asks at once included: one key is made), another
/// for another name. Its ceremony refuses every signature, as a real one refuses a
/// stranger's, opens no session, and is not used up.
async fn a_sign_in_by_a_name_without_passkeys_lists_a_decoy(app: TestApp) {
    user_with_session(&app, "kim").await;
    let replica = app.replica(passkeys::on_localhost).await;
    let names = [
        json!({"username": "kim"}),
        json!({"username": "nobody"}),
        json!({"email": "kim@example.com"}),
    ];
    let starts = (0..12).map(|i| {
        let url = if i % 2 == 0 {
            app.url("/users/Users/StartPasskeyLogin")
        } else {
            replica.url("/users/Users/StartPasskeyLogin")
        };
        let (client, body) = (app.client.clone(), names[i % 3].clone());
        async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            (
                i % 3,
                status,
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    });
    let mut ids: [Vec<Vec<String>>; 3] = Default::default();
    let mut challenges = Vec::new();
    for (name, status, start) in futures_join_all(starts).await {
        assert_eq!(status, StatusCode::OK, "{start}");
        let options = &start["options"];
        assert_eq!(
            options.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["publicKey"],
            "as for a name with passkeys (no mediation): {start}"
        );
        let mut keys: Vec<_> = options["publicKey"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "allowCredentials",
                "challenge",
                "rpId",
                "timeout",
                "userVerification"
            ],
            "{start}"
        );
        assert_eq!(options["publicKey"]["userVerification"], "required");
        let credentials = options["publicKey"]["allowCredentials"].as_array().unwrap();
        assert!((1..=2).contains(&credentials.len()), "{start}");
        for credential in credentials {
            assert_eq!(credential["type"], "public-key", "{start}");
            let id = credential["id"].as_str().unwrap();
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(id)
                .expect("base64url");
            assert!([16, 20, 32, 64].contains(&bytes.len()), "{id}");
        }
        ids[name].push(common::listed_credentials(&start));
        challenges.push(start["challenge_id"].as_str().unwrap().to_string());
    }
    for (name, seen) in ids.iter().enumerate() {
        assert_eq!(seen.len(), 4);
        assert!(
            seen.iter().all(|listed| listed == &seen[0]),
            "name {name}: {seen:?}"
        );
    }
    assert_ne!(ids[0][0], ids[1][0], "another name, another decoy");
    assert_ne!(ids[0][0], ids[2][0], "the e-mail address, another decoy");
    assert_eq!(app.count_rows("service_keys").await, 1);
    assert_eq!(app.count_rows("passkey_sign_ins").await, 12);

    // A signature for the decoy: refused as a stranger's, and the ceremony stays.
    let decoy = &ids[0][0][0];
    let mut assertion = unknown_assertion(None);
    assertion["id"] = json!(decoy);
    assertion["rawId"] = json!(decoy);
    for credential in [assertion, unknown_assertion(Some("AAAAAAAAAAAAAAAAAAAAAA"))] {
        let answer = app
            .call(
                "FinishPasskeyLogin",
                json!({"challenge_id": challenges[0], "credential": credential}),
            )
            .await;
        assert_error(&answer, "FinishPasskeyLogin", 401, "was not accepted");
    }
    assert_eq!(app.count_rows("passkey_sign_ins").await, 12);
    assert_eq!(app.count_rows("sessions").await, 1, "only kim's own");
}

/// Ten passkey sign-ins started at once from one address, half on each of two
/// replicas, with three allowed an hour: three ceremonies are kept, the rest are
/// refused with 429 before anything is stored, a start for a name counts too, and
/// another hour allows three more.
async fn passkey_sign_ins_started_at_once_on_two_replicas_keep_the_address_limit(app: TestApp) {
    let replica = app.replica(passkeys::three_an_hour).await;
    let sends = (0..10).map(|i| {
        let url = if i % 2 == 0 {
            app.url("/users/Users/StartPasskeyLogin")
        } else {
            replica.url("/users/Users/StartPasskeyLogin")
        };
        let client = app.client.clone();
        async move {
            let response = client.post(url).json(&json!({})).send().await.unwrap();
            response.status()
        }
    });
    let statuses = futures_join_all(sends).await;
    let started = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((started, limited), (3, 7), "{statuses:?}");
    assert_eq!(app.count_rows("passkey_sign_ins").await, 3);
    let answer = app
        .call("StartPasskeyLogin", json!({"username": "nobody"}))
        .await;
    assert_error(&answer, "StartPasskeyLogin", 429, "");
    app.clock.advance(3_601);
    let (status, start) = app.call("StartPasskeyLogin", json!({})).await;
    assert_eq!(status, 200, "{start}");
}

/// On an IP address (the default public address), passkeys are off and say why.
#[tokio::test]
async fn passkeys_are_off_without_a_domain_name() {
    let app = TestApp::spawn_with(
        common::Backend::Sqlite,
        "second_factor::passkeys_off",
        with_key,
    )
    .await
    .unwrap();
    let (_, session) = user_with_session(&app, "mo").await;
    let answer = micro(&app, "StartPasskeyRegistration", &session, json!({})).await;
    assert_error(
        &answer,
        "StartPasskeyRegistration",
        400,
        "passkeys need --public-url",
    );
}

/// A use is written a moment after the request, except one that keeps a session from
/// going idle within seconds: that one is written before the answer, so another
/// replica, which sees only what is written, does not end the session.
async fn a_use_near_the_idle_timeout_counts_at_once_on_another_replica(app: TestApp) {
    let (_, session) = user_with_session(&app, "kim").await;
    let other = app.replica(idle::idle_timeout).await;
    // 595 of the 600 seconds gone: this use is urgent.
    app.clock.advance(595);
    assert!(alive(&app, &session).await);
    app.clock.advance(10);
    let response = app
        .client
        .post(other.url("/users/Users/ReadSession"))
        .json(&json!({"session_id": session}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the other replica sees the use: {}",
        response.text().await.unwrap()
    );
}

/// A use noted in memory counts on this replica before it is written: 100 s after
/// sign-in the session is used (written about a second later), and 520 s after that,
/// past the 600 s idle timeout counted from the sign-in, it is still live. (Should the
/// note have been written already, the database says the same.)
async fn a_use_not_yet_written_keeps_the_session_alive_here(app: TestApp) {
    let (_, session) = user_with_session(&app, "max").await;
    app.clock.advance(100);
    assert!(alive(&app, &session).await);
    app.clock.advance(520);
    assert!(alive(&app, &session).await, "the noted use counts");
}

/// A use noted in memory reaches the database on its own within moments, and a clean
/// stop writes what is still noted.
async fn a_sessions_use_is_written_soon_and_by_a_clean_stop(app: TestApp) {
    let (_, first) = user_with_session(&app, "lee").await;
    let second = app.login("lee", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.clock.advance(5);
    let used = format!("sessions WHERE last_seen = {}", app.clock_now());
    assert!(alive(&app, &first).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.count_rows(&used).await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the use was not written within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(alive(&app, &second).await);
    let db = app.into_database().await;
    assert_eq!(db.count_rows(&used).await, 2, "both uses are written");
}

async fn an_unused_session_ends_after_the_idle_timeout(app: TestApp) {
    let (id, session) = user_with_session(&app, "judy").await;
    let idle = app.login("judy", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Used every 5 minutes (ReadSession counts as use), the first lives on; the
    // second, unused for 10 minutes, ends.
    for _ in 0..4 {
        app.clock.advance(299);
        assert!(alive(&app, &session).await);
    }
    assert!(!alive(&app, &idle).await);
    let (_, listed) = micro(&app, "ListSessions", KEY, json!({"user_id": id})).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1, "{listed}");
    let last_seen: i64 = listed["sessions"][0]["last_seen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(last_seen, app.clock_now());
    // The sweeper deletes it.
    let before = app.count_rows("sessions").await;
    app.users.sweep().await.unwrap();
    assert_eq!(app.count_rows("sessions").await, before - 1);
    // Use never reaches beyond the absolute lifetime (seven days).
    let created = app.clock_now() - 4 * 299;
    let mut uses = 0;
    while alive(&app, &session).await {
        app.clock.advance(599);
        uses += 1;
        assert!(uses < 2000, "the session outlived its lifetime");
    }
    let lived = app.clock_now() - created;
    assert!((604_800..604_800 + 599).contains(&lived), "{lived}");
}

/// The secret as the store holds it.
async fn stored_secret(app: &TestApp, id: &str) -> String {
    use users_service::store::FactorStore;
    app.users_store().totp(id).await.unwrap().unwrap().secret
}

/// The second step with a current code: the session it opens, or the error.
async fn second_step(app: &TestApp, name: &str, secret: &str) -> (StatusCode, serde_json::Value) {
    let challenge = first_step(app, name).await;
    let code = totp::code(secret, app.clock_now());
    app.call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await
}

async fn totp_secrets_are_sealed_at_rest_and_open_for_their_own_user_only(app: TestApp) {
    let (alice, session) = user_with_session(&app, "alice").await;
    let (secret, _) = enrol(&app, &session).await;
    let stored = stored_secret(&app, &alice).await;
    assert!(stored.starts_with("sealed:v1:"), "{stored}");
    assert!(!stored.contains(&secret), "the secret is not in the row");
    app.clock.advance(30);
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 200, "{body}");

    // Alice's sealed secret copied to Bob's row does not open for Bob: a 500 that
    // says nothing of why (the log does), and no enrolment confirmed.
    let (bob, bob_session) = user_with_session(&app, "bob").await;
    let (status, _) = micro(&app, "StartTotp", &bob_session, json!({})).await;
    assert_eq!(status, 200);
    let moved = app
        .db
        .execute(&format!(
            "UPDATE totp SET secret = '{stored}' WHERE user_id = '{bob}'"
        ))
        .await;
    assert_eq!(moved, 1);
    let code = totp::code(&secret, app.clock_now());
    let answer = micro(&app, "ConfirmTotp", &bob_session, json!({"code": code})).await;
    assert_eq!(answer.0, 500, "{}", answer.1);
    assert_eq!(answer.1["detail"], "internal error", "{}", answer.1);
    let (_, factors) = micro(&app, "ReadSecondFactors", KEY, json!({"user_id": bob})).await;
    assert_eq!(factors["totp"], false, "{factors}");
}

async fn a_key_set_later_reads_clear_secrets_and_reseal_seals_and_rotates_them(app: TestApp) {
    use users_service::core::sealing::{reseal, Resealed, Sealed, SealingKeys};
    // Enrolled with no key: the secret is stored as it is.
    let (alice, session) = user_with_session(&app, "alice").await;
    let (secret, recovery_codes) = enrol(&app, &session).await;
    assert_eq!(stored_secret(&app, &alice).await, secret);
    let no_key = reseal(app.users_store().as_ref(), &SealingKeys::default()).await;
    assert!(no_key.is_err(), "reseal needs a key");

    // Each start below is a later time step, so each code is a new one.
    let mut later = 0;
    let mut restart = |app: TestApp, keys: Option<String>| {
        later += 90;
        let shift = later;
        async move {
            let db = app.into_database().await;
            let app = TestApp::spawn_on(db, |config| {
                with_key(config);
                config.sealing.encryption_key = keys.map(Into::into);
            })
            .await;
            app.clock.advance(shift);
            app
        }
    };

    // A key set later: the secret in clear still opens, and stays as it is.
    let app = restart(app, Some(SEALING_A.into())).await;
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored_secret(&app, &alice).await, secret);

    // reseal seals it under the key; the sign-in goes on working.
    let a = SealingKeys::parse(SEALING_A).unwrap();
    let done = reseal(app.users_store().as_ref(), &a).await.unwrap();
    assert_eq!(
        done,
        Resealed {
            sealed: 1,
            unchanged: 0,
            skipped: 0
        }
    );
    let under_a = stored_secret(&app, &alice).await;
    assert!(a.is_current(&under_a), "{under_a}");
    app.clock.advance(30);
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 200, "{body}");
    let again = reseal(app.users_store().as_ref(), &a).await.unwrap();
    assert_eq!(
        again,
        Resealed {
            sealed: 0,
            unchanged: 1,
            skipped: 0
        }
    );
    // A reseal replaces a secret only if it is still the one it read: a user who
    // enrolled again meanwhile keeps the new enrolment.
    {
        use users_service::store::FactorStore;
        let (bob, bob_session) = user_with_session(&app, "bob").await;
        let (status, _) = micro(&app, "StartTotp", &bob_session, json!({})).await;
        assert_eq!(status, 200);
        let read_by_reseal = stored_secret(&app, &bob).await;
        let (status, restarted) = micro(&app, "StartTotp", &bob_session, json!({})).await;
        assert_eq!(status, 200, "{restarted}");
        let enrolled = stored_secret(&app, &bob).await;
        assert_ne!(enrolled, read_by_reseal);
        let resealed = a
            .seal(Sealed::TotpSecret, &bob, "JBSWY3DPEHPK3PXP")
            .unwrap();
        let replaced = app
            .users_store()
            .replace_totp_secret(&bob, &read_by_reseal, &resealed)
            .await
            .unwrap();
        assert!(!replaced, "the stale secret is not replaced");
        assert_eq!(stored_secret(&app, &bob).await, enrolled);
        let code = totp::code(restarted["secret"].as_str().unwrap(), app.clock_now());
        let (status, body) = micro(&app, "ConfirmTotp", &bob_session, json!({"code": code})).await;
        assert_eq!(status, 200, "the new enrolment stands: {body}");
        // Bob's factors go, so that the counts below are Alice's alone.
        let (status, body) = micro(&app, "ResetSecondFactors", KEY, json!({"user_id": bob})).await;
        assert_eq!(status, 200, "{body}");
    }

    // What a start counts of them (on both stores): one secret, under key A.
    let by_key = {
        use users_service::store::FactorStore;
        app.users_store()
            .totp_secrets_by_prefix("sealed:v1:", 8)
            .await
            .unwrap()
    };
    assert_eq!(by_key, vec![(a.current().map(str::to_string), 1)]);

    // Rotation: the new key first, the old one after it, then reseal; then the new
    // key alone is enough.
    let both = format!("{SEALING_B},{SEALING_A}");
    let app = restart(app, Some(both.clone())).await;
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 200, "the old key still opens: {body}");
    let keys = SealingKeys::parse(&both).unwrap();
    let done = reseal(app.users_store().as_ref(), &keys).await.unwrap();
    assert_eq!(done.sealed, 1);
    let app = restart(app, Some(SEALING_B.into())).await;
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 200, "{body}");

    // Without its key, a sealed secret opens no sign-in; a recovery code still does.
    // Codes that could not be checked count against no one: more of them than the
    // sign-in limit (5) lock nothing.
    let mut app = restart(app, None).await;
    let (status, body) = second_step(&app, "alice", &secret).await;
    assert_eq!(status, 500, "{body}");
    let challenge = first_step(&app, "alice").await;
    for _ in 0..7 {
        let code = totp::code(&secret, app.clock_now());
        let (status, body) = app
            .call("LoginMfa", json!({"challenge_id": challenge, "code": code}))
            .await;
        assert_eq!(status, 500, "{body}");
    }
    let (status, body) = app
        .call(
            "LoginMfa",
            json!({"challenge_id": challenge, "recovery_code": recovery_codes[0]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}
