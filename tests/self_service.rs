//! A user's own session as a credential: self-service on the API (both route families),
//! the list of one's sessions, the browser's cookie and what may send it, and the hosted
//! pages' forms, over real HTTP on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::{assert_error, call_as, micro, TestApp, PASSWORD};
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use users_service::config::ServeConfig;

const KEY: &str = "s3cret-admin-key";
/// A page on another origin that the operator listed.
const APP_ORIGIN: &str = "http://127.0.0.1:3000";

fn with_key(config: &mut ServeConfig) {
    config.access.api_key = Some(KEY.into());
    config.cors_origins = vec![APP_ORIGIN.to_string()];
}

on_both_stores!(
    config = crate::with_key,
    a_session_acts_on_its_own_account_and_no_other,
    a_session_lists_and_revokes_its_own_sessions,
    a_session_is_revoked_once_when_revoked_at_once_on_two_replicas,
    the_cookie_signs_only_requests_from_allowed_pages,
    the_pages_sign_in_show_errors_and_sign_out,
    micro_js_is_served_with_an_etag,
);

/// The operator's brand on the pages: a title, a stylesheet and a logo, all served
/// from the service itself.
#[tokio::test]
async fn the_pages_carry_the_operators_brand() {
    let dir = tempfile::tempdir().unwrap();
    let css = dir.path().join("brand.css");
    let logo = dir.path().join("logo.svg");
    std::fs::write(&css, "main { border-top: 4px solid #123456; }").unwrap();
    std::fs::write(&logo, "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").unwrap();
    let app = TestApp::spawn_with(common::Backend::Sqlite, "self_service::brand", |c| {
        c.ui.ui_title = "Acme <Accounts>".to_string();
        c.ui.ui_stylesheet = Some(css.clone());
        c.ui.ui_logo = Some(logo.clone());
    })
    .await
    .unwrap();
    let html = app
        .client
        .get(app.url("/ui/signin"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("<title>Sign in · Acme &lt;Accounts&gt;</title>"),
        "{html}"
    );
    assert!(html.contains(r#"href="/ui/brand.css""#) && html.contains(r#"src="/ui/logo""#));
    let served = app
        .client
        .get(app.url("/ui/brand.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], "text/css; charset=utf-8");
    assert!(served.text().await.unwrap().contains("#123456"));
    let served = app.client.get(app.url("/ui/logo")).send().await.unwrap();
    assert_eq!(served.headers()["content-type"], "image/svg+xml");
}

/// Without an admin key.
mod open {
    use super::*;

    on_both_stores!(a_session_is_held_to_its_own_account_without_an_admin_key);

    async fn a_session_is_held_to_its_own_account_without_an_admin_key(app: TestApp) {
        let alice = app.create_user("alice").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let bob = app.create_user("bob").await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let session = app.login("alice", PASSWORD).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        // Without a key every method is open, but a caller that signs with a session
        // acts as that user.
        let answer = micro(&app, "Delete", &session, json!({"id": bob})).await;
        assert_error(&answer, "Delete", 403, "its own account");
        let (status, _) = micro(&app, "Read", &session, json!({"id": alice})).await;
        assert_eq!(status, 200);
        let (status, _) = app.call("Read", json!({"id": bob})).await;
        assert_eq!(
            status, 200,
            "bob is still there, and open to unsigned calls"
        );
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Creates two users with the admin key; returns their ids and a session of the first.
async fn two_users(app: &TestApp) -> (String, String, String) {
    let mut ids = Vec::new();
    for name in ["alice", "bob"] {
        let (status, body) = micro(
            app,
            "Create",
            KEY,
            json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        ids.push(body["user"]["id"].as_str().unwrap().to_string());
    }
    let session = app.login("alice", PASSWORD).await;
    let bob = ids.pop().unwrap();
    let alice = ids.pop().unwrap();
    (alice, bob, session["id"].as_str().unwrap().to_string())
}

async fn a_session_acts_on_its_own_account_and_no_other(app: TestApp) {
    let (alice, bob, session) = two_users(&app).await;
    let bob_before = micro(&app, "Read", KEY, json!({"id": bob})).await.1;

    // Its own account, on both route families.
    let (status, body) = micro(&app, "Read", &session, json!({"id": alice})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["username"], "alice");
    let (status, body) = call_as(&app, "/v1/user/Read", &session, json!({"id": alice})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"]["id"], alice.as_str());
    let (status, body) = micro(
        &app,
        "Update",
        &session,
        json!({"id": alice, "profile": {"name": "Alice"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["profile"]["name"], "Alice");

    // Anyone else's: 403 for every self-service method, and nothing changes.
    let forbidden = [
        ("Read", json!({"id": bob})),
        ("Read", json!({"username": "bob"})),
        ("Read", json!({"email": "bob@example.com"})),
        ("Update", json!({"id": bob, "username": "mallory"})),
        ("Delete", json!({"id": bob})),
        ("LogoutAll", json!({"user_id": bob})),
        ("ListSessions", json!({"user_id": bob})),
        (
            "UpdatePassword",
            json!({"user_id": bob, "old_password": PASSWORD, "new_password": "newpassword1", "confirm_password": "newpassword1"}),
        ),
    ];
    for (method, body) in forbidden {
        let answer = micro(&app, method, &session, body.clone()).await;
        assert_error(&answer, method, 403, "its own account");
        let (status, m3o) = call_as(&app, &format!("/v1/user/{method}"), &session, body).await;
        if method != "Search" {
            assert_eq!(status, 403, "{method} on M3O: {m3o}");
            assert_eq!(m3o["id"], format!("user.{method}"));
        }
    }
    assert_eq!(
        micro(&app, "Read", KEY, json!({"id": bob})).await.1,
        bob_before
    );

    // Never the admin's methods.
    for method in ["Search", "List"] {
        let answer = micro(&app, method, &session, json!({"username": "bob"})).await;
        assert_error(&answer, method, 401, "admin key");
    }
    // A session that ended signs nothing.
    let (status, _) = micro(&app, "Logout", KEY, json!({"session_id": session})).await;
    assert_eq!(status, 200);
    let answer = micro(&app, "Read", &session, json!({"id": alice})).await;
    assert_error(&answer, "Read", 401, "own live session");

    // A new session may delete its own account, which ends it.
    let session = app.login("alice", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = micro(&app, "Delete", &session, json!({"id": alice})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = micro(&app, "Read", KEY, json!({"id": alice})).await;
    assert_eq!(status, 404);
    let (status, _) = micro(&app, "Read", KEY, json!({"id": bob})).await;
    assert_eq!(status, 200, "bob is still there");
}

async fn a_session_lists_and_revokes_its_own_sessions(app: TestApp) {
    let (alice, _bob, first) = two_users(&app).await;
    let (status, _, second) = app
        .send(
            "Login",
            json!({"username": "alice", "password": PASSWORD}),
            &[("user-agent", "Phone/1.0")],
        )
        .await;
    assert_eq!(status, 200);
    let second = second["session"]["id"].as_str().unwrap().to_string();
    let bob_session = app.login("bob", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, body) = micro(&app, "ListSessions", &first, json!({})).await;
    assert_eq!(status, 200, "{body}");
    let sessions = body["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{body}");
    for item in sessions {
        let handle = item["session"].as_str().unwrap();
        assert_eq!(handle.len(), 16);
        assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!first.contains(handle) && !second.contains(handle));
        assert_eq!(item["client_ip"], "127.0.0.1");
        assert!(common::is_unix_seconds_string(&item["created"]), "{item}");
        assert!(common::is_unix_seconds_string(&item["expires"]), "{item}");
    }
    let text = body.to_string();
    assert!(
        !text.contains(&first) && !text.contains(&second),
        "no session id is shown"
    );
    let phone = sessions
        .iter()
        .find(|s| s["user_agent"] == "Phone/1.0")
        .expect("the second session's browser")["session"]
        .as_str()
        .unwrap()
        .to_string();
    // Using a session is noted (last_seen), at most once a minute.
    assert!(
        sessions.iter().any(|s| s.get("last_seen").is_some()),
        "{body}"
    );

    // The admin sees the same list; M3O's route too.
    let (status, admin) = micro(&app, "ListSessions", KEY, json!({"user_id": alice})).await;
    assert_eq!(status, 200);
    assert_eq!(admin["sessions"].as_array().unwrap().len(), 2);
    let (status, m3o) = call_as(&app, "/v1/user/ListSessions", &first, json!({})).await;
    assert_eq!(status, 200, "{m3o}");
    assert_eq!(m3o["sessions"].as_array().unwrap().len(), 2);
    // The admin must name the user.
    let answer = micro(&app, "ListSessions", KEY, json!({})).await;
    assert_error(&answer, "ListSessions", 400, "user_id is required");

    // Revoking bob's session with alice's: not one of hers.
    let bob_handle = micro(&app, "ListSessions", &bob_session, json!({})).await.1["sessions"][0]
        ["session"]
        .as_str()
        .unwrap()
        .to_string();
    let answer = micro(
        &app,
        "RevokeSession",
        &first,
        json!({"session": bob_handle}),
    )
    .await;
    assert_error(&answer, "RevokeSession", 404, "session not found");
    let (status, _) = app
        .call("ReadSession", json!({"session_id": bob_session}))
        .await;
    assert_eq!(status, 200, "bob's session lives");

    let (status, body) = micro(&app, "RevokeSession", &first, json!({"session": phone})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.call("ReadSession", json!({"session_id": second})).await;
    assert_eq!(status, 401, "the revoked session ended");
    let (status, _) = app.call("ReadSession", json!({"session_id": first})).await;
    assert_eq!(status, 200, "the other one lives");
    let answer = micro(&app, "RevokeSession", &first, json!({"session": "nothex"})).await;
    assert_error(&answer, "RevokeSession", 400, "hex digits");
}

async fn a_session_is_revoked_once_when_revoked_at_once_on_two_replicas(app: TestApp) {
    let (_alice, _bob, first) = two_users(&app).await;
    let other = app.login("alice", PASSWORD).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let list = micro(&app, "ListSessions", &first, json!({})).await.1;
    let other_handle = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session"].as_str().unwrap().to_string())
        .find(|h| other_handle_of(&other).starts_with(h.as_str()))
        .unwrap();
    // Half of them through a second server on the same database.
    let replica = app.replica(with_key).await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..20 {
        let url = if n % 2 == 0 {
            app.url("/users/Users/RevokeSession")
        } else {
            replica.url("/users/Users/RevokeSession")
        };
        let request = app
            .client
            .post(url)
            .header("authorization", format!("Bearer {first}"))
            .json(&json!({"session": other_handle}));
        calls.spawn(async move { request.send().await.unwrap().status() });
    }
    let statuses = calls.join_all().await;
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let missing = statuses
        .iter()
        .filter(|s| **s == StatusCode::NOT_FOUND)
        .count();
    assert_eq!((ok, missing), (1, 19), "{statuses:?}");
}

/// The handle of a session, as the service derives it: its digest's first hex digits.
fn other_handle_of(session_id: &str) -> String {
    users_service::domain::TokenDigest::of(session_id.as_bytes())
        .as_str()
        .to_string()
}

/// Signs in through the hosted page, as a browser on the service's own origin would;
/// returns the `Set-Cookie` value's `name=value` part.
async fn sign_in_page(app: &TestApp, login: &str, origin: &str) -> reqwest::Response {
    no_redirects()
        .post(app.url("/ui/signin"))
        .header("origin", origin)
        .form(&[("login", login), ("password", PASSWORD)])
        .send()
        .await
        .unwrap()
}

/// GETs `path` with the browser's cookie (`name=value`).
async fn get_with_cookie(app: &TestApp, path: &str, cookie: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap()
}

fn cookie_of(response: &reqwest::Response) -> String {
    let set = response
        .headers()
        .get(SET_COOKIE)
        .expect("a cookie is set")
        .to_str()
        .unwrap()
        .to_string();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"] {
        assert!(set.contains(part), "{part} missing: {set}");
    }
    assert!(!set.contains("Secure"), "not Secure on http: {set}");
    set.split(';').next().unwrap().to_string()
}

async fn the_cookie_signs_only_requests_from_allowed_pages(app: TestApp) {
    let (alice, _bob, _) = two_users(&app).await;
    let own = format!("http://{}", app.addr);

    // A page on another origin cannot sign a browser in (login CSRF).
    let refused = sign_in_page(&app, "alice", "http://evil.example").await;
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().get(SET_COOKIE).is_none());

    let response = sign_in_page(&app, "alice", &own).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[LOCATION], "/ui/account");
    let cookie = cookie_of(&response);

    let read = |origin: Option<&'static str>, same: bool| {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, cookie.parse().unwrap());
        let own = own.clone();
        let app = &app;
        let alice = alice.clone();
        async move {
            let mut request = app
                .client
                .post(app.url("/users/Users/Read"))
                .headers(headers)
                .json(&json!({"id": alice}));
            if same {
                request = request.header("origin", own);
            } else if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            let response = request.send().await.unwrap();
            let credentials = response
                .headers()
                .get("access-control-allow-credentials")
                .map(|v| v.to_str().unwrap().to_string());
            (response.status(), credentials)
        }
    };
    // The service's own pages and the listed origin: the cookie signs.
    assert_eq!(read(None, true).await.0, 200);
    assert_eq!(
        read(Some(APP_ORIGIN), false).await,
        (StatusCode::OK, Some("true".into()))
    );
    // Another origin is refused outright (403); without an Origin (not a browser's
    // request) the cookie is ignored, and the method needs the key. (A page the guard
    // lets in without listing it, as "any origin" does, cannot use the cookie either:
    // see the guard's unit tests.)
    let (status, credentials) = read(Some("http://other.example"), false).await;
    assert_eq!(status, 403);
    assert_eq!(credentials, None, "no credentials for an unlisted origin");
    assert_eq!(read(None, false).await.0, 401);

    // The session as scripts see it: the user, never the id.
    let response = get_with_cookie(&app, "/ui/session", &cookie).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["id"], alice.as_str());
    assert!(!body.to_string().contains(cookie.split('=').nth(1).unwrap()));

    // Signing out from another origin is refused; from the listed one it works.
    let out = |origin: &str| {
        app.client
            .post(app.url("/ui/signout"))
            .header(COOKIE, &cookie)
            .header("origin", origin)
            .header("accept", "application/json")
            .send()
    };
    assert_eq!(out("http://other.example").await.unwrap().status(), 403);
    let response = out(APP_ORIGIN).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let response = get_with_cookie(&app, "/ui/session", &cookie).await;
    assert_eq!(response.status(), 401, "the session ended");
}

async fn the_pages_sign_in_show_errors_and_sign_out(app: TestApp) {
    two_users(&app).await;
    let own = format!("http://{}", app.addr);
    let page = app.client.get(app.url("/ui/signin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains(r#"<label for="login">Username or e-mail</label>"#),
        "{html}"
    );

    // A wrong password: the API's status and text, in an alert, and the name kept.
    let wrong = no_redirects()
        .post(app.url("/ui/signin"))
        .header("origin", &own)
        .form(&[
            ("login", "alice"),
            ("password", "wrong-password"),
            ("return_to", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let html = wrong.text().await.unwrap();
    assert!(
        html.contains(r#"role="alert""#)
            && html.contains("username, email or password is incorrect"),
        "{html}"
    );
    assert!(html.contains(r#"value="alice""#));

    // A return address on an origin nobody allowed is not followed.
    let response = no_redirects()
        .post(app.url("/ui/signin"))
        .header("origin", &own)
        .form(&[
            ("login", "alice"),
            ("password", PASSWORD),
            ("return_to", "https://evil.example/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()[LOCATION], "/ui/account");
    // One on the listed origin is.
    let response = no_redirects()
        .post(app.url("/ui/signin"))
        .header("origin", &own)
        .form(&[
            ("login", "alice@example.com"),
            ("password", PASSWORD),
            ("return_to", "http://127.0.0.1:3000/app?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()[LOCATION],
        "http://127.0.0.1:3000/app?x=1"
    );
    let cookie = cookie_of(&response);

    let account = get_with_cookie(&app, "/ui/account", &cookie).await;
    assert_eq!(account.status(), 200);
    assert!(account
        .text()
        .await
        .unwrap()
        .contains("Signed in as <strong>alice</strong>"));
    let anonymous = no_redirects()
        .get(app.url("/ui/account"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    assert!(anonymous.headers()[LOCATION]
        .to_str()
        .unwrap()
        .starts_with("/ui/signin?return_to="));

    // Too many wrong passwords: the wait is shown, and sent as Retry-After.
    let mut last = None;
    for _ in 0..6 {
        last = Some(
            no_redirects()
                .post(app.url("/ui/signin"))
                .header("origin", &own)
                .form(&[("login", "bob"), ("password", "wrong-password")])
                .send()
                .await
                .unwrap(),
        );
    }
    let limited = last.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert!(limited
        .text()
        .await
        .unwrap()
        .contains("too many attempts; retry in"));

    let out = no_redirects()
        .post(app.url("/ui/signout"))
        .header(COOKIE, &cookie)
        .header("origin", &own)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()[LOCATION], "/ui/signin?notice=signed-out");
}

async fn micro_js_is_served_with_an_etag(app: TestApp) {
    let response = app.client.get(app.url("/micro.js")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-cache");
    let etag = response.headers()["etag"].to_str().unwrap().to_string();
    let script = response.text().await.unwrap();
    for api in [
        "Micro.post",
        "requireLogin",
        "/ui/session",
        "Micro-Namespace",
    ] {
        assert!(script.contains(api), "{api} missing from micro.js");
    }
    let again = app
        .client
        .get(app.url("/micro.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], etag.as_str());
}
