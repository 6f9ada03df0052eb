//! The e-mail flows end to end, on SQLite and on PostgreSQL: the service sends real SMTP
//! to a server on loopback (tests/common/smtp.rs), and each test reads the delivered
//! message to finish the flow as a user would: verify by link, reset by code, sign in by
//! magic link. Reuse, expiry, replacement, races, failed delivery and the limits too.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::smtp::{Mail, SmtpSink};
use common::{assert_m3o_error, TestApp, PASSWORD};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use users_service::config::ServeConfig;
use users_service::core::outbox::OutboxStats;

/// Starts an SMTP sink and the service configured to send through it.
async fn spawn(
    backend: common::Backend,
    test: &str,
    rejecting: bool,
    configure: fn(&mut ServeConfig),
) -> Option<(TestApp, SmtpSink)> {
    let sink = if rejecting {
        SmtpSink::start_rejecting().await
    } else {
        SmtpSink::start().await
    };
    let url = sink.url();
    let app = TestApp::spawn_with(backend, test, |config| {
        config.mail.smtp_url = Some(url);
        config.mail.mail_from = "accounts@example.com".to_string();
        configure(config);
    })
    .await?;
    Some((app, sink))
}

/// Defines each `async fn name(app: TestApp, sink: SmtpSink)` as `sqlite::name` and
/// `postgres::name`, with `(rejecting, configure)`: whether the SMTP server refuses
/// every message, and what to change in the service's configuration.
macro_rules! mail_tests {
    ($($name:ident($reject:expr, $configure:expr);)+) => {
        mail_tests!(@backend sqlite, Sqlite, $($name($reject, $configure);)+);
        mail_tests!(@backend postgres, Postgres, $($name($reject, $configure);)+);
    };
    (@backend $module:ident, $backend:ident, $($name:ident($reject:expr, $configure:expr);)+) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let test = concat!(stringify!($module), "::", stringify!($name));
                    let backend = crate::common::Backend::$backend;
                    let Some((app, sink)) =
                        super::spawn(backend, test, $reject, $configure).await
                    else {
                        return; // PostgreSQL not configured: reported as skipped.
                    };
                    super::$name(app, sink).await;
                }
            )+
        }
    };
}

fn defaults(_: &mut ServeConfig) {}

mail_tests! {
    verification_link_verifies_the_address_and_redirects(false, super::defaults);
    verify_email_takes_the_token_through_the_api(false, super::defaults);
    verification_links_expire_after_a_day(false, super::defaults);
    a_new_link_replaces_the_previous_one(false, super::defaults);
    password_reset_by_code_sets_the_password_and_ends_sessions(false, super::defaults);
    reset_codes_expire(false, super::defaults);
    magic_link_signs_in_once(false, super::defaults);
    magic_links_expire(false, super::defaults);
    a_magic_link_asks_an_enrolled_user_for_the_second_step(false, super::defaults);
    concurrent_uses_of_one_token_succeed_once(false, super::defaults);
    unknown_addresses_get_no_mail_and_the_same_answer(false, super::defaults);
    a_message_that_keeps_failing_is_given_up_and_its_link_withdrawn(true, |c| c.mail.mail_max_attempts = 2);
    a_message_queued_while_smtp_is_down_arrives_when_it_is_back(false, super::defaults);
    the_answer_and_its_time_do_not_tell_addresses_apart(false, |c| c.limits.mails_per_hour = 0);
    each_message_is_sent_once_by_one_of_several_senders(false, |c| c.limits.create_per_hour = 0);
    mails_are_limited_per_recipient(false, |c| c.limits.mails_per_hour = 2);
    redirects_outside_the_allow_list_are_refused(false, |c| {
        c.mail.redirect_allowlist = vec!["https://app.example.com".into()]
    });
    the_micro_surface_runs_the_same_flows(false, super::defaults);
    a_new_address_is_unverified_and_old_links_stop_working(false, super::defaults);
    a_reset_code_is_void_after_five_wrong_tries(false, super::behind_proxy);
    wrong_reset_codes_do_not_lock_the_account(false, super::behind_proxy);
    a_right_reset_code_works_for_a_locked_account_and_unlocks_it(false, super::behind_proxy);
}

const REDIRECT: &str = "https://app.example.com/verified?from=mail";
const FAILURE: &str = "https://app.example.com/failed";

/// Creates an account through the M3O surface and returns it.
async fn create(app: &TestApp, username: &str) -> Value {
    let (status, body) = app
        .m3o(
            "Create",
            json!({"username": username, "email": format!("{username}@example.com"), "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["account"].clone()
}

/// The value of a query parameter of `url`.
fn query_param(url: &str, name: &str) -> String {
    reqwest::Url::parse(url)
        .expect("a URL")
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no {name} in {url}"))
}

async fn send_verification(app: &TestApp, email: &str) -> (StatusCode, Value) {
    app.m3o(
        "SendVerificationEmail",
        json!({
            "email": email,
            "subject": "Welcome to Example — confirm",
            "text_content": "Hi! Open $micro_verification_link to confirm your address.",
            "redirect_url": REDIRECT,
            "failure_redirect_url": FAILURE,
            "from_name": "Example App",
        }),
    )
    .await
}

/// Sends a verification e-mail and returns the delivered message and its link.
async fn verification_mail(app: &TestApp, sink: &SmtpSink, email: &str) -> (Mail, String) {
    let answer = send_verification(app, email).await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    let mail = sink.next_mail(email).await;
    let link = mail.link();
    (mail, link)
}

/// Opens a link as a browser would, without following the redirect.
async fn open(link: &str) -> (StatusCode, Option<String>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client.get(link).send().await.expect("GET sent");
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("ASCII location").to_string());
    (response.status(), location)
}

async fn read_account(app: &TestApp, id: &Value) -> Value {
    let (status, body) = app.m3o("Read", json!({"id": id})).await;
    assert_eq!(status, 200, "{body}");
    body["account"].clone()
}

async fn verification_link_verifies_the_address_and_redirects(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "vera").await;
    assert_eq!(account["verified"], false);
    let (mail, link) = verification_mail(&app, &sink, "vera@example.com").await;
    assert_eq!(mail.to, vec!["vera@example.com"]);
    assert_eq!(mail.from, "accounts@example.com");
    assert_eq!(mail.subject, "Welcome to Example — confirm");
    let from = mail.header("From").expect("a From header");
    assert!(from.contains("Example App"), "{from}");
    assert!(mail.body.starts_with("Hi! Open "), "{}", mail.body);
    assert!(
        mail.body.ends_with(" to confirm your address."),
        "{}",
        mail.body
    );
    assert!(
        link.starts_with(&format!("{}/v1/user/verify?token=", app.base)),
        "{link}"
    );
    assert_eq!(query_param(&link, "redirectUrl"), REDIRECT);
    assert_eq!(query_param(&link, "failureRedirectUrl"), FAILURE);

    app.clock.advance(5);
    assert_eq!(
        open(&link).await,
        (StatusCode::FOUND, Some(REDIRECT.to_string()))
    );
    let account = read_account(&app, &account["id"]).await;
    assert_eq!(account["verified"], true);
    assert_eq!(
        account["verification_date"],
        app.clock_now().to_string(),
        "{account}"
    );
    // Used up: the same link now goes to the failure address and changes nothing.
    assert_eq!(
        open(&link).await,
        (StatusCode::FOUND, Some(FAILURE.to_string()))
    );
}

async fn verify_email_takes_the_token_through_the_api(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "tokia").await;
    let (_, link) = verification_mail(&app, &sink, "tokia@example.com").await;
    let token = query_param(&link, "token");
    let answer = app.m3o("VerifyEmail", json!({"token": token})).await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    assert_eq!(read_account(&app, &account["id"]).await["verified"], true);
    let again = app.m3o("VerifyEmail", json!({"token": token})).await;
    assert_m3o_error(
        &again,
        "VerifyEmail",
        400,
        "token is unknown or already used",
    );
    let made_up = app.m3o("VerifyEmail", json!({"token": "made-up"})).await;
    assert_m3o_error(
        &made_up,
        "VerifyEmail",
        400,
        "token is unknown or already used",
    );
}

async fn verification_links_expire_after_a_day(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "late").await;
    let (_, link) = verification_mail(&app, &sink, "late@example.com").await;
    app.clock.advance(24 * 3600 + 1);
    assert_eq!(
        open(&link).await,
        (StatusCode::FOUND, Some(FAILURE.to_string()))
    );
    assert_eq!(read_account(&app, &account["id"]).await["verified"], false);
    // The API says why.
    let (_, link) = verification_mail(&app, &sink, "late@example.com").await;
    app.clock.advance(24 * 3600 + 1);
    let answer = app
        .m3o("VerifyEmail", json!({"token": query_param(&link, "token")}))
        .await;
    assert_m3o_error(&answer, "VerifyEmail", 400, "token has expired");
}

async fn a_new_link_replaces_the_previous_one(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "twice").await;
    let (_, first) = verification_mail(&app, &sink, "twice@example.com").await;
    let (_, second) = verification_mail(&app, &sink, "twice@example.com").await;
    assert_ne!(query_param(&first, "token"), query_param(&second, "token"));
    assert_eq!(
        open(&first).await,
        (StatusCode::FOUND, Some(FAILURE.to_string()))
    );
    assert_eq!(read_account(&app, &account["id"]).await["verified"], false);
    assert_eq!(
        open(&second).await,
        (StatusCode::FOUND, Some(REDIRECT.to_string()))
    );
    assert_eq!(read_account(&app, &account["id"]).await["verified"], true);
}

/// Sends a reset e-mail and returns the code it carried.
async fn reset_code(app: &TestApp, sink: &SmtpSink, email: &str, expiration: Value) -> String {
    let answer = app
        .m3o(
            "SendPasswordResetEmail",
            json!({
                "email": email,
                "subject": "Reset your password",
                "textContent": "Your code is $code. It expires soon.",
                "fromName": "Example App",
                "expiration": expiration,
            }),
        )
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    let mail = sink.next_mail(email).await;
    let code = mail
        .body
        .strip_prefix("Your code is ")
        .and_then(|rest| rest.strip_suffix(". It expires soon."))
        .unwrap_or_else(|| panic!("unexpected body {:?}", mail.body))
        .to_string();
    assert_eq!(code.len(), 10, "{code}");
    assert!(code
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    code
}

async fn reset(app: &TestApp, email: &str, code: &str, password: &str) -> (StatusCode, Value) {
    app.m3o(
        "ResetPassword",
        json!({"email": email, "code": code, "new_password": password, "confirm_password": password}),
    )
    .await
}

async fn login(app: &TestApp, email: &str, password: &str) -> (StatusCode, Value) {
    app.m3o("Login", json!({"email": email, "password": password}))
        .await
}

async fn password_reset_by_code_sets_the_password_and_ends_sessions(app: TestApp, sink: SmtpSink) {
    create(&app, "resa").await;
    let email = "resa@example.com";
    let (status, session) = login(&app, email, PASSWORD).await;
    assert_eq!(status, 200);
    let session_id = session["session"]["id"].clone();
    let code = reset_code(&app, &sink, email, json!(null)).await;

    let wrong = reset(&app, email, "ABCDEFGHJK", "newpassword-1").await;
    assert_m3o_error(
        &wrong,
        "ResetPassword",
        400,
        "code is wrong, already used or expired",
    );
    let mismatch = app
        .m3o(
            "ResetPassword",
            json!({"email": email, "code": code, "newPassword": "newpassword-1", "confirmPassword": "newpassword-2"}),
        )
        .await;
    assert_m3o_error(
        &mismatch,
        "ResetPassword",
        400,
        "confirm_password does not match",
    );
    let weak = reset(&app, email, &code, "password").await;
    assert_m3o_error(&weak, "ResetPassword", 400, "new_password");

    // Codes are typed by people: case does not matter.
    let done = reset(&app, email, &code.to_lowercase(), "newpassword-1").await;
    assert_eq!(done, (StatusCode::OK, json!({})));
    let old_session = app
        .m3o("ReadSession", json!({"session_id": session_id}))
        .await;
    assert_m3o_error(&old_session, "ReadSession", 401, "session not found");
    assert_eq!(login(&app, email, "newpassword-1").await.0, 200);
    assert_eq!(login(&app, email, PASSWORD).await.0, 401);
    let reused = reset(&app, email, &code, "newpassword-2").await;
    assert_m3o_error(
        &reused,
        "ResetPassword",
        400,
        "code is wrong, already used or expired",
    );
    assert_eq!(login(&app, email, "newpassword-1").await.0, 200);
}

async fn reset_codes_expire(app: TestApp, sink: SmtpSink) {
    create(&app, "brief").await;
    let email = "brief@example.com";
    // int64 as protobuf JSON writes it: a string.
    let code = reset_code(&app, &sink, email, json!("60")).await;
    app.clock.advance(61);
    let late = reset(&app, email, &code, "newpassword-1").await;
    assert_m3o_error(
        &late,
        "ResetPassword",
        400,
        "code is wrong, already used or expired",
    );
    assert_eq!(login(&app, email, PASSWORD).await.0, 200);
    // The default is 30 minutes.
    let code = reset_code(&app, &sink, email, json!(null)).await;
    app.clock.advance(1799);
    assert_eq!(reset(&app, email, &code, "newpassword-1").await.0, 200);
}

/// Sends a magic link and returns the token at its end.
async fn magic_token(app: &TestApp, sink: &SmtpSink, email: &str) -> String {
    let answer = app
        .m3o(
            "SendMagicLink",
            json!({
                "email": email,
                "subject": "Sign in",
                "text_content": "Sign in: $micro_verification_link",
                "from_name": "Example App",
                "address": "app.example.com",
                "endpoint": "auth/magic",
            }),
        )
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    let link = sink.next_mail(email).await.link();
    link.strip_prefix("https://app.example.com/auth/magic/")
        .unwrap_or_else(|| panic!("unexpected link {link}"))
        .to_string()
}

async fn magic_link_signs_in_once(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "magda").await;
    let token = magic_token(&app, &sink, "magda@example.com").await;
    assert_eq!(token.len(), 43, "256 bits in URL-safe base64");
    let (status, answer) = app.m3o("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["is_valid"], true, "{answer}");
    let session = &answer["session"];
    assert_eq!(session["userId"], account["id"]);
    let (status, read) = app
        .m3o("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["session"], *session);

    let (status, again) = app.m3o("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 200);
    assert_eq!(
        again,
        json!({"is_valid": false, "message": "token not found"})
    );
}

async fn a_magic_link_asks_an_enrolled_user_for_the_second_step(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "mira").await;
    let session = app.login("mira", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = format!("Bearer {session}");
    let (_, _, started) = app
        .send("StartTotp", json!({}), &[("authorization", &bearer)])
        .await;
    let secret = started["secret"].as_str().unwrap().to_string();
    let code = common::totp::code(&secret, app.clock_now());
    let (status, _, _) = app
        .send(
            "ConfirmTotp",
            json!({"code": code}),
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(status, 200);

    // The link proves the address, not the second factor: it answers a challenge.
    let token = magic_token(&app, &sink, "mira@example.com").await;
    let (status, answer) = app.m3o("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["id"], "user.VerifyToken");
    assert!(answer["detail"]
        .as_str()
        .unwrap()
        .starts_with("mfa_required"));
    let challenge = answer["challenge_id"].as_str().unwrap().to_string();
    // The link is used up.
    let (status, again) = app.m3o("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 200);
    assert_eq!(again["is_valid"], false, "{again}");

    app.clock.advance(30);
    let code = common::totp::code(&secret, app.clock_now());
    let (status, body) = app
        .m3o("LoginMfa", json!({"challenge_id": challenge, "code": code}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"]["userId"], account["id"]);
    let (_, _, listed) = app
        .send("ListSessions", json!({}), &[("authorization", &bearer)])
        .await;
    let by_link = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["method"] == "magic_link" && s["second_factor"] == "totp")
        .count();
    assert_eq!(by_link, 1, "{listed}");
}

async fn magic_links_expire(app: TestApp, sink: SmtpSink) {
    create(&app, "slow").await;
    let token = magic_token(&app, &sink, "slow@example.com").await;
    app.clock.advance(61);
    let (status, answer) = app.m3o("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer,
        json!({"is_valid": false, "message": "token expired"})
    );
}

/// Fires `n` copies of one request at once and returns the answers.
async fn at_once(app: &TestApp, n: usize, method: &str, body: Value) -> Vec<(StatusCode, Value)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = reqwest::Client::new();
        let url = app.url(&format!("/v1/user/{method}"));
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let response = client.post(url).json(&body).send().await.expect("sent");
            let status = response.status();
            (status, response.json::<Value>().await.expect("JSON"))
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("task"));
    }
    answers
}

async fn concurrent_uses_of_one_token_succeed_once(app: TestApp, sink: SmtpSink) {
    create(&app, "race").await;
    let email = "race@example.com";

    let token = magic_token(&app, &sink, email).await;
    let answers = at_once(&app, 8, "VerifyToken", json!({"token": token})).await;
    let valid = answers
        .iter()
        .filter(|(_, a)| a["is_valid"] == true)
        .count();
    assert_eq!(valid, 1, "{answers:?}");
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");

    let (_, link) = verification_mail(&app, &sink, email).await;
    let token = query_param(&link, "token");
    let answers = at_once(&app, 8, "VerifyEmail", json!({"token": token})).await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 400),
        "{answers:?}"
    );

    let code = reset_code(&app, &sink, email, json!(null)).await;
    let answers = at_once(
        &app,
        4,
        "ResetPassword",
        json!({"email": email, "code": code, "new_password": "newpassword-1", "confirm_password": "newpassword-1"}),
    )
    .await;
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _)| *s == 200 || *s == 400),
        "{answers:?}"
    );
    assert_eq!(app.count_rows("tokens").await, 0);
}

async fn unknown_addresses_get_no_mail_and_the_same_answer(app: TestApp, sink: SmtpSink) {
    let nobody = "nobody@example.com";
    let reset_sent = app
        .m3o(
            "SendPasswordResetEmail",
            json!({"email": nobody, "text_content": "code $code"}),
        )
        .await;
    assert_eq!(reset_sent, (StatusCode::OK, json!({})));
    let magic = app
        .m3o(
            "SendMagicLink",
            json!({"email": nobody, "text_content": "$micro_verification_link", "address": "app.example.com", "endpoint": "m"}),
        )
        .await;
    assert_eq!(magic, (StatusCode::OK, json!({})));
    assert_eq!(
        send_verification(&app, nobody).await,
        (StatusCode::OK, json!({}))
    );
    // A known address, sent after the unknown ones, is the only delivery: each send
    // completes before its answer, so nothing else can still be on its way.
    create(&app, "known").await;
    reset_code(&app, &sink, "known@example.com", json!(null)).await;
    assert_eq!(sink.delivered(), 1);
    assert_eq!(app.count_rows("tokens").await, 1);
    // A made-up code for an unknown address fails like a wrong one.
    let guess = reset(&app, nobody, "ABCDEFGHJK", "newpassword-1").await;
    assert_m3o_error(
        &guess,
        "ResetPassword",
        400,
        "code is wrong, already used or expired",
    );
}

async fn a_message_that_keeps_failing_is_given_up_and_its_link_withdrawn(
    app: TestApp,
    sink: SmtpSink,
) {
    create(&app, "bounce").await;
    let email = "bounce@example.com";
    // The SMTP server refuses every message, but the answer does not say so: it is the
    // answer every address gets.
    let answer = app
        .m3o(
            "SendMagicLink",
            json!({"email": email, "text_content": "$micro_verification_link", "address": "app.example.com", "endpoint": "m"}),
        )
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    outbox_until(&app, "the first attempt failed", |s| s.failed == 1).await;
    assert_eq!(app.count_rows("outbox WHERE state = 'queued'").await, 1);
    // The second attempt (--mail-max-attempts 2, here) is the last.
    app.clock.advance(10);
    app.users.outbox().wake();
    outbox_until(&app, "the message was given up", |s| s.dead == 1).await;
    assert_eq!(sink.delivered(), 0);
    assert_eq!(
        app.count_rows("outbox WHERE state = 'dead' AND body = '' AND token_hash IS NULL")
            .await,
        1,
        "kept as a record, without its body"
    );
    // The link no one received was withdrawn.
    assert_eq!(app.count_rows("tokens").await, 0);
}

/// Waits (at most 20 s) until the app's e-mail sender has done `done`.
async fn outbox_until(app: &TestApp, what: &str, done: impl Fn(&OutboxStats) -> bool) {
    let mut stats = app.users.outbox().stats();
    let reached = tokio::time::timeout(Duration::from_secs(20), stats.wait_for(|s| done(s)))
        .await
        .is_ok();
    assert!(reached, "{what}: not within 20 s ({:?})", *stats.borrow());
}

/// The SMTP server is down when the e-mail is asked for: the request still answers at
/// once, and the message arrives once the server is back.
async fn a_message_queued_while_smtp_is_down_arrives_when_it_is_back(app: TestApp, sink: SmtpSink) {
    create(&app, "patient").await;
    let email = "patient@example.com";
    sink.stop().await;
    let answer = app
        .m3o(
            "SendPasswordResetEmail",
            json!({"email": email, "text_content": "Your code is $code. It expires soon."}),
        )
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    outbox_until(&app, "the attempt while SMTP was down failed", |s| {
        s.failed == 1
    })
    .await;
    sink.resume().await;
    // The retry is due after --mail-retry-delay (10 seconds).
    app.clock.advance(10);
    app.users.outbox().wake();
    let mail = sink.next_mail(email).await;
    let code = mail
        .body
        .strip_prefix("Your code is ")
        .and_then(|rest| rest.strip_suffix(". It expires soon."))
        .unwrap_or_else(|| panic!("unexpected body {:?}", mail.body))
        .to_string();
    assert_eq!(reset(&app, email, &code, "newpassword-1").await.0, 200);
}

/// A known address and an unknown one, with the SMTP server up and down: the same
/// answer, and the same time (the medians of 30 tries each within 5 ms).
async fn the_answer_and_its_time_do_not_tell_addresses_apart(app: TestApp, sink: SmtpSink) {
    create(&app, "known").await;
    let send = |email: &'static str| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let answer = app
                .m3o(
                    "SendPasswordResetEmail",
                    json!({"email": email, "text_content": "code $code"}),
                )
                .await;
            (answer, started.elapsed())
        }
    };
    // (address, SMTP up): the times of its tries. Interleaved, all four in every
    // round, so that whatever else the machine does falls on each alike.
    let cases = [
        ("known@example.com", true),
        ("nobody@example.com", true),
        ("known@example.com", false),
        ("nobody@example.com", false),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..30 {
        for (i, (email, smtp_up)) in cases.iter().enumerate() {
            if i == 2 {
                sink.stop().await;
            }
            let (answer, took) = send(email).await;
            assert_eq!(
                answer,
                (StatusCode::OK, json!({})),
                "{email}, SMTP up: {smtp_up}"
            );
            times[i].push(took);
        }
        sink.resume().await;
    }
    let medians: Vec<_> = cases
        .iter()
        .zip(times)
        .map(|(case, mut times)| {
            times.sort();
            (case, times[times.len() / 2])
        })
        .collect();
    let fastest = medians.iter().map(|m| m.1).min().unwrap();
    let slowest = medians.iter().map(|m| m.1).max().unwrap();
    assert!(
        slowest - fastest < Duration::from_millis(5),
        "medians (address, SMTP up, time): {medians:?}"
    );
}

/// Two replicas, each with its sender, and messages that both could take: each is
/// delivered once.
async fn each_message_is_sent_once_by_one_of_several_senders(app: TestApp, sink: SmtpSink) {
    let url = sink.url();
    let replica = app
        .replica(move |c| {
            c.mail.smtp_url = Some(url);
            c.limits.create_per_hour = 0;
        })
        .await;
    let names: Vec<String> = (0..12).map(|i| format!("many{i}")).collect();
    for name in &names {
        create(&app, name).await;
    }
    // Queued while the SMTP server is down, so that both senders find all of them due
    // at once when it is back.
    sink.stop().await;
    for (i, name) in names.iter().enumerate() {
        let url = if i % 2 == 0 {
            app.url("/v1/user/SendPasswordResetEmail")
        } else {
            replica.url("/v1/user/SendPasswordResetEmail")
        };
        let status = app
            .client
            .post(url)
            .json(&json!({"email": format!("{name}@example.com"), "text_content": "code $code"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200);
    }
    let failed = || {
        app.users.outbox().stats().borrow().failed + replica.users.outbox().stats().borrow().failed
    };
    let mut app_stats = app.users.outbox().stats();
    let mut replica_stats = replica.users.outbox().stats();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while failed() < 12 {
        let changed = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = app_stats.changed() => {}
                _ = replica_stats.changed() => {}
            }
        })
        .await;
        assert!(changed.is_ok(), "{} first attempts failed", failed());
    }
    sink.resume().await;
    app.clock.advance(10);
    app.users.outbox().wake();
    replica.users.outbox().wake();
    for name in &names {
        sink.next_mail(&format!("{name}@example.com")).await;
    }
    let sent =
        || app.users.outbox().stats().borrow().sent + replica.users.outbox().stats().borrow().sent;
    while sent() < 12 {
        let changed = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                _ = app_stats.changed() => {}
                _ = replica_stats.changed() => {}
            }
        })
        .await;
        assert!(changed.is_ok(), "{} recorded as sent", sent());
    }
    assert_eq!(app.count_rows("outbox WHERE state = 'sent'").await, 12);
    assert_eq!(sink.delivered(), 12, "each message once");
}

/// The service is killed while messages are queued; once it is back (and the SMTP
/// server too), they are delivered, each exactly once.
async fn queued_mail_survives_a_crash_and_is_sent_once(backend: common::Backend, test: &str) {
    use common::process::{command, http, Service};
    let sink = SmtpSink::start().await;
    sink.stop().await;
    let Some(db) = common::TestDatabase::create(backend, test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let mut cmd = command(dir.path());
        cmd.args(["--listen", "127.0.0.1:0", "--database-url", &db.raw_url])
            .env("USERS_SMTP_URL", sink.url())
            // One attempt each while the SMTP server is down, then none for an hour: so
            // that none is being sent when the service is killed.
            .env("USERS_MAIL_RETRY_DELAY", "3600")
            .env("USERS_CREATE_PER_HOUR", "0");
        tokio::task::block_in_place(|| Service::start(cmd))
    };
    let mut service = start();
    let names = ["crash0", "crash1", "crash2"];
    tokio::task::block_in_place(|| {
        for name in names {
            let account = format!(
                r#"{{"username":"{name}","email":"{name}@example.com","password":"{PASSWORD}"}}"#
            );
            assert_eq!(
                http(service.addr, "POST", "/users/Users/Create", &account).0,
                200
            );
            let mail = format!(r#"{{"email":"{name}@example.com","text_content":"code $code"}}"#);
            let (status, body) = http(
                service.addr,
                "POST",
                "/v1/user/SendPasswordResetEmail",
                &mail,
            );
            assert_eq!((status, body.as_str()), (200, "{}"));
        }
        service.wait_for_lines("mail_failed", names.len());
        service.child.kill().expect("SIGKILL sent");
        service.child.wait().expect("killed process reaped");
    });
    assert_eq!(db.count_rows("outbox WHERE state = 'queued'").await, 3);
    // An hour later, as far as the queue is concerned: the retries are due.
    assert_eq!(db.execute("UPDATE outbox SET next_attempt = 0").await, 3);
    sink.resume().await;
    let mut service = start();
    // Each is recorded as sent (logged after the record), and nothing else is sent.
    tokio::task::block_in_place(|| service.wait_for_lines("mail_sent", names.len()));
    for name in names {
        sink.next_mail(&format!("{name}@example.com")).await;
    }
    let (exit, _) = tokio::task::block_in_place(|| service.terminate());
    assert!(exit.success());
    assert_eq!(sink.delivered(), names.len());
    assert_eq!(db.count_rows("outbox WHERE state = 'sent'").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queued_mail_survives_a_crash_and_is_sent_once() {
    queued_mail_survives_a_crash_and_is_sent_once(
        common::Backend::Sqlite,
        "sqlite::queued_mail_survives_a_crash",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_queued_mail_survives_a_crash_and_is_sent_once() {
    queued_mail_survives_a_crash_and_is_sent_once(
        common::Backend::Postgres,
        "postgres::queued_mail_survives_a_crash",
    )
    .await;
}

async fn mails_are_limited_per_recipient(app: TestApp, sink: SmtpSink) {
    create(&app, "many").await;
    let email = "many@example.com";
    for _ in 0..2 {
        reset_code(&app, &sink, email, json!(null)).await;
    }
    let (status, headers, body) = app
        .send_to(
            "/v1/user/SendPasswordResetEmail",
            json!({"email": email, "text_content": "$code"}),
            &[],
        )
        .await;
    assert_m3o_error(
        &(status, body),
        "SendPasswordResetEmail",
        429,
        "too many attempts",
    );
    let retry: i64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry), "{retry}");
    // Another kind of e-mail to the same address has its own count.
    magic_token(&app, &sink, email).await;
    // Unknown addresses are counted the same way, so the limit reveals nothing.
    for expected in [200, 200, 429] {
        let (status, _) = app
            .m3o(
                "SendPasswordResetEmail",
                json!({"email": "ghost@example.com", "text_content": "$code"}),
            )
            .await;
        assert_eq!(status.as_u16(), expected);
    }
    app.clock.advance(3600);
    reset_code(&app, &sink, email, json!(null)).await;
}

async fn redirects_outside_the_allow_list_are_refused(app: TestApp, sink: SmtpSink) {
    create(&app, "safe").await;
    let email = "safe@example.com";
    let answer = app
        .m3o(
            "SendVerificationEmail",
            json!({"email": email, "text_content": "$micro_verification_link",
                   "redirect_url": "https://evil.example.net/", "failure_redirect_url": FAILURE}),
        )
        .await;
    assert_m3o_error(
        &answer,
        "SendVerificationEmail",
        400,
        "redirect_url is not an allowed",
    );
    assert_eq!(sink.delivered(), 0);
    let (_, link) = verification_mail(&app, &sink, email).await;
    // A link edited to send the browser elsewhere is refused outright and uses nothing.
    let token = query_param(&link, "token");
    let edited = format!(
        "{}/v1/user/verify?token={token}&redirectUrl={}&failureRedirectUrl=https%3A%2F%2Fevil.example.net%2F",
        app.base,
        "https%3A%2F%2Fapp.example.com%2Fok"
    );
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "user.verify");
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("failureRedirectUrl is not an allowed"));
    // The untouched link still works.
    assert_eq!(
        open(&link).await,
        (StatusCode::FOUND, Some(REDIRECT.to_string()))
    );
    // Only http and https addresses, whatever the allow-list.
    let answer = app
        .m3o(
            "SendVerificationEmail",
            json!({"email": email, "text_content": "x", "redirect_url": "javascript:alert(1)", "failure_redirect_url": FAILURE}),
        )
        .await;
    assert_m3o_error(
        &answer,
        "SendVerificationEmail",
        400,
        "must be an absolute http or https address",
    );
}

async fn the_micro_surface_runs_the_same_flows(app: TestApp, sink: SmtpSink) {
    let user = app.create_user("micro").await;
    let email = "micro@example.com";
    let (status, body) = app
        .call(
            "SendMagicLink",
            json!({"email": email, "textContent": "$micro_verification_link", "address": "app.example.com:8443", "endpoint": "/in/"}),
        )
        .await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    let link = sink.next_mail(email).await.link();
    let token = link
        .strip_prefix("https://app.example.com:8443/in/")
        .expect("the magic link's form");
    let (status, answer) = app.call("VerifyToken", json!({"token": token})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["is_valid"], true);
    // The Micro session view, with the user's names.
    assert_eq!(answer["session"]["user_id"], user["id"]);
    assert_eq!(answer["session"]["username"], "micro");

    let (status, body) = app
        .call(
            "SendVerificationEmail",
            json!({"email": email, "text_content": "$micro_verification_link", "redirectUrl": REDIRECT, "failureRedirectUrl": FAILURE}),
        )
        .await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    let link = sink.next_mail(email).await.link();
    let (status, body) = app
        .call("VerifyEmail", json!({"token": query_param(&link, "token")}))
        .await;
    assert_eq!((status.as_u16(), body), (200, json!({})));
    let (_, read) = app.call("Read", json!({"email": email})).await;
    assert_eq!(read["user"]["verified"], true);
    assert_eq!(
        read["user"]["verification_date"],
        app.clock_now().to_string()
    );
}

async fn a_new_address_is_unverified_and_old_links_stop_working(app: TestApp, sink: SmtpSink) {
    let account = create(&app, "mover").await;
    let id = &account["id"];
    let (_, link) = verification_mail(&app, &sink, "mover@example.com").await;
    assert_eq!(open(&link).await.1.as_deref(), Some(REDIRECT));
    assert_eq!(read_account(&app, id).await["verified"], true);
    // Updating other fields, or to the same address, keeps the verification.
    app.m3o(
        "Update",
        json!({"id": id, "email": "Mover@example.com", "profile": {"a": "b"}}),
    )
    .await;
    assert_eq!(read_account(&app, id).await["verified"], true);

    let (_, pending) = verification_mail(&app, &sink, "mover@example.com").await;
    let code = reset_code(&app, &sink, "mover@example.com", json!(null)).await;
    let answer = app
        .m3o("Update", json!({"id": id, "email": "moved@example.com"}))
        .await;
    assert_eq!(answer, (StatusCode::OK, json!({})));
    let moved = read_account(&app, id).await;
    assert_eq!(moved["verified"], false, "{moved}");
    assert_eq!(moved["verification_date"], "0");
    // What was sent to the old address no longer works.
    assert_eq!(open(&pending).await.1.as_deref(), Some(FAILURE));
    let answer = reset(&app, "moved@example.com", &code, "newpassword-1").await;
    assert_m3o_error(&answer, "ResetPassword", 400, "code is wrong");
    assert_eq!(read_account(&app, id).await["verified"], false);
}

fn behind_proxy(config: &mut ServeConfig) {
    config.access.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
}

/// Calls an M3O method as the client at `from` (believed: see `behind_proxy`).
async fn m3o_from(app: &TestApp, method: &str, body: Value, from: &str) -> (StatusCode, Value) {
    let (status, _, body) = app
        .send_to(
            &format!("/v1/user/{method}"),
            body,
            &[("x-forwarded-for", from)],
        )
        .await;
    (status, body)
}

fn reset_body(email: &str, code: &str, password: &str) -> Value {
    json!({"email": email, "code": code, "new_password": password, "confirm_password": password})
}

/// Wrong codes tried against a reset code, at once and from as many addresses as
/// there are tries, void it after five: the right code then fails, and a new code is
/// needed.
async fn a_reset_code_is_void_after_five_wrong_tries(app: TestApp, sink: SmtpSink) {
    create(&app, "guessed").await;
    let email = "guessed@example.com";
    let code = reset_code(&app, &sink, email, json!(null)).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut tries = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (url, barrier) = (app.url("/v1/user/ResetPassword"), barrier.clone());
        let body = reset_body(email, &format!("WRONGCODE{}", i % 10), "newpassword-1");
        tries.spawn(async move {
            barrier.wait().await;
            reqwest::Client::new()
                .post(url)
                .header("x-forwarded-for", format!("203.0.113.{i}"))
                .json(&body)
                .send()
                .await
                .expect("sent")
                .status()
        });
    }
    while let Some(status) = tries.join_next().await {
        assert_eq!(status.expect("task"), 400);
    }
    let late = m3o_from(
        &app,
        "ResetPassword",
        reset_body(email, &code, "newpassword-1"),
        "198.51.100.1",
    )
    .await;
    assert_m3o_error(
        &late,
        "ResetPassword",
        400,
        "code is wrong, already used or expired",
    );
    assert_eq!(login(&app, email, PASSWORD).await.0, 200);
    let code = reset_code(&app, &sink, email, json!(null)).await;
    assert_eq!(reset(&app, email, &code, "newpassword-1").await.0, 200);
}

/// Wrong codes count against the address they come from, not against the account's
/// sign-in: no one can lock a person out by guessing at their recovery.
async fn wrong_reset_codes_do_not_lock_the_account(app: TestApp, sink: SmtpSink) {
    create(&app, "target").await;
    let email = "target@example.com";
    reset_code(&app, &sink, email, json!(null)).await;
    for i in 0..4 {
        let (status, _) = m3o_from(
            &app,
            "ResetPassword",
            reset_body(email, "WRONGCODE1", "newpassword-1"),
            &format!("203.0.113.{i}"),
        )
        .await;
        assert_eq!(status, 400);
    }
    // The address that guessed five times is locked out...
    let from = "198.51.100.7";
    for _ in 0..5 {
        let (status, _) = m3o_from(
            &app,
            "ResetPassword",
            reset_body(email, "WRONGCODE2", "newpassword-1"),
            from,
        )
        .await;
        assert_eq!(status, 400);
    }
    let (status, _) = m3o_from(
        &app,
        "ResetPassword",
        reset_body(email, "WRONGCODE3", "newpassword-1"),
        from,
    )
    .await;
    assert_eq!(status, 429);
    // ...and the account is not.
    let (status, body) = m3o_from(
        &app,
        "Login",
        json!({"email": email, "password": PASSWORD}),
        "192.0.2.1",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A right reset code works while the account's username and e-mail address are both
/// locked out, and ends those lockouts.
async fn a_right_reset_code_works_for_a_locked_account_and_unlocks_it(
    app: TestApp,
    sink: SmtpSink,
) {
    create(&app, "locked").await;
    let email = "locked@example.com";
    for (i, name) in [json!({"username": "locked"}), json!({"email": email})]
        .into_iter()
        .enumerate()
    {
        let mut wrong = name.clone();
        wrong["password"] = json!("not-the-password");
        for attempt in 0..6 {
            let from = format!("203.0.{i}.{attempt}");
            let (status, _) = m3o_from(&app, "Login", wrong.clone(), &from).await;
            assert_eq!(status, if attempt < 5 { 401 } else { 429 });
        }
    }
    let code = reset_code(&app, &sink, email, json!(null)).await;
    let (status, body) = m3o_from(
        &app,
        "ResetPassword",
        reset_body(email, &code, "newpassword-1"),
        "198.51.100.1",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for name in [json!({"username": "locked"}), json!({"email": email})] {
        let mut right = name;
        right["password"] = json!("newpassword-1");
        let (status, body) = m3o_from(&app, "Login", right, "192.0.2.1").await;
        assert_eq!(status, 200, "{body}");
    }
}
