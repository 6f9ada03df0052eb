//! The e-mail flows end to end, on SQLite and on PostgreSQL: the service sends real SMTP
//! to a server on loopback (tests/common/smtp.rs), and each test reads the delivered
//! message to finish the flow as a user would: verify by link, reset by code, sign in by
//! magic link. Reuse, expiry, replacement, races, failed delivery and the limits too.

mod common;

use common::smtp::{Mail, SmtpSink};
use common::{assert_m3o_error, TestApp, PASSWORD};
use reqwest::StatusCode;
use serde_json::{json, Value};
use users_service::config::ServeConfig;

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
    concurrent_uses_of_one_token_succeed_once(false, super::defaults);
    unknown_addresses_get_no_mail_and_the_same_answer(false, super::defaults);
    a_failed_delivery_is_503_and_leaves_no_usable_token(true, super::defaults);
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

/// The first http(s) address in a text.
fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|word| word.starts_with("http://") || word.starts_with("https://"))
        .unwrap_or_else(|| panic!("no link in {text:?}"))
        .to_string()
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
    let link = link_in(&mail.body);
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
    let link = link_in(&sink.next_mail(email).await.body);
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

async fn a_failed_delivery_is_503_and_leaves_no_usable_token(app: TestApp, sink: SmtpSink) {
    create(&app, "bounce").await;
    let email = "bounce@example.com";
    let answer = app
        .m3o(
            "SendMagicLink",
            json!({"email": email, "text_content": "$micro_verification_link", "address": "app.example.com", "endpoint": "m"}),
        )
        .await;
    assert_m3o_error(
        &answer,
        "SendMagicLink",
        503,
        "the e-mail could not be sent",
    );
    let answer = send_verification(&app, email).await;
    assert_m3o_error(
        &answer,
        "SendVerificationEmail",
        503,
        "the e-mail could not be sent",
    );
    assert_eq!(sink.delivered(), 0);
    // The tokens those e-mails carried were withdrawn.
    assert_eq!(app.count_rows("tokens").await, 0);
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
    let link = link_in(&sink.next_mail(email).await.body);
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
    let link = link_in(&sink.next_mail(email).await.body);
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
