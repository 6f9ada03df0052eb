//! Wire compatibility with the clients of the Micro `users` service: field spellings,
//! content types, empty bodies, the error shape, the routes and CORS.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::{assert_error, TestApp, PASSWORD};
use serde_json::{json, Value};

on_both_stores!(
    camel_case_and_snake_case_fields_are_both_accepted,
    unknown_fields_are_ignored,
);

async fn camel_case_and_snake_case_fields_are_both_accepted(app: TestApp) {
    let user = app.create_user("asim").await;
    // The seed document's own camelCase example.
    let (status, body) = app
        .call(
            "UpdatePassword",
            json!({"userId": user["id"], "oldPassword": PASSWORD, "newPassword": "newpassword1", "confirmPassword": "newpassword1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app
        .call(
            "UpdatePassword",
            json!({"user_id": user["id"], "old_password": "newpassword1", "new_password": "newpassword2", "confirm_password": "newpassword2"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let session = app.login("asim", "newpassword2").await;
    for spelling in ["session_id", "sessionId"] {
        let (status, body) = app
            .call("ReadSession", json!({spelling: session["id"]}))
            .await;
        assert_eq!(status, 200, "{spelling}: {body}");
    }
    let (status, _) = app
        .call("Logout", json!({"sessionId": session["id"]}))
        .await;
    assert_eq!(status, 200);
    let answer = app
        .call("ReadSession", json!({"sessionId": session["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found");
    // Both spellings at once is ambiguous: a clear 400, not a guess.
    let answer = app
        .call("ReadSession", json!({"session_id": "a", "sessionId": "b"}))
        .await;
    assert_error(&answer, "ReadSession", 400, "duplicate field");
}

async fn unknown_fields_are_ignored(app: TestApp) {
    let (status, body) = app
        .call(
            "Create",
            json!({"username": "asim", "email": "asim@example.com", "password": PASSWORD, "groups": {"a": [1, 2]}, "verified": true}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Output-only fields sent by a client change nothing.
    assert_eq!(body["user"]["verified"], false);
}

async fn sqlite_app(test: &str) -> TestApp {
    TestApp::spawn(common::Backend::Sqlite, test)
        .await
        .expect("sqlite")
}

#[tokio::test]
async fn a_json_body_is_read_whatever_the_content_type() {
    let app = sqlite_app("content_type").await;
    let body =
        json!({"username": "asim", "email": "asim@example.com", "password": PASSWORD}).to_string();
    let (status, created) = app
        .post_raw("Create", &body, Some("application/x-www-form-urlencoded"))
        .await;
    assert_eq!(status, 200, "curl -d sends a form content type: {created}");
    let id = json!({"id": created["user"]["id"]}).to_string();
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/json; charset=utf-8"),
    ] {
        let (status, read) = app.post_raw("Read", &id, content_type).await;
        assert_eq!(status, 200, "{content_type:?}: {read}");
    }
}

#[tokio::test]
async fn an_empty_body_is_an_empty_object() {
    let app = sqlite_app("empty_body").await;
    let answer = app.post_raw("Read", "", None).await;
    assert_error(
        &answer,
        "Read",
        400,
        "id (or username or email) is required",
    );
    let answer = app.post_raw("Login", "", Some("application/json")).await;
    assert_error(&answer, "Login", 400, "username or email is required");
}

#[tokio::test]
async fn malformed_bodies_are_400s_that_say_where() {
    let app = sqlite_app("malformed").await;
    let answer = app.post_raw("Read", r#"{"id": "x""#, None).await;
    assert_error(&answer, "Read", 400, "line 1 column");
    let answer = app.post_raw("Read", r#"{"id": 5}"#, None).await;
    assert_error(&answer, "Read", 400, "invalid JSON body at `id`");
    let answer = app.post_raw("Read", r#"["x"]"#, None).await;
    assert_error(&answer, "Read", 400, "expected a JSON object");
    let answer = app.post_raw("Read", "id=5", None).await;
    assert_error(&answer, "Read", 400, "invalid JSON body");
    let answer = app.post_raw("Read", r#"{"id": "a"} trailing"#, None).await;
    assert_error(&answer, "Read", 400, "trailing characters");
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = sqlite_app("too_large").await;
    let big = json!({"id": "x", "pad": "p".repeat(64 * 1024)}).to_string();
    let answer = app.post_raw("Read", &big, Some("application/json")).await;
    assert_error(&answer, "Read", 413, "larger than 65536 bytes");
    // Just under the limit is read (and the id is then simply unknown).
    let fits = json!({"id": "x", "pad": "p".repeat(64 * 1024 - 40)}).to_string();
    assert!(fits.len() <= 64 * 1024);
    let answer = app.post_raw("Read", &fits, Some("application/json")).await;
    assert_error(&answer, "Read", 404, "user not found");
    // Create and Update carry profiles and take up to 320 KiB.
    let profile_sized = json!({"id": "x", "pad": "p".repeat(300 * 1024)}).to_string();
    let answer = app
        .post_raw("Update", &profile_sized, Some("application/json"))
        .await;
    assert_error(&answer, "Update", 404, "user not found");
    let too_big = json!({"id": "x", "pad": "p".repeat(320 * 1024)}).to_string();
    let answer = app
        .post_raw("Update", &too_big, Some("application/json"))
        .await;
    assert_error(&answer, "Update", 413, "larger than 327680 bytes");
}

#[tokio::test]
async fn unknown_methods_are_404_and_other_verbs_405() {
    let app = sqlite_app("routes").await;
    let answer = app.call("Frobnicate", json!({})).await;
    assert_error(
        &answer,
        "Frobnicate",
        404,
        "unknown method Users.Frobnicate",
    );

    for verb in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = app
            .client
            .request(verb.clone(), app.url("/users/Users/Read"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["allow"], "POST");
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_error(&(status, body), "Read", 405, "use POST");
    }
    let response = app.client.post(app.url("/health")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_error(&(status, body), "Health", 405, "use GET");
    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 404);
}

#[tokio::test]
async fn health_answers_after_a_database_round_trip() {
    let app = sqlite_app("health").await;
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "ok"}));
}

#[tokio::test]
async fn responses_are_json() {
    let app = sqlite_app("json").await;
    for (path, body) in [
        ("/users/Users/Read", "{}"),
        ("/users/Users/Search", r#"{"username":"x"}"#),
    ] {
        let response = app
            .client
            .post(app.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_and_matches_the_router() {
    let app = sqlite_app("openapi").await;
    let response = app
        .client
        .get(app.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/yaml");
    let served = response.text().await.unwrap();
    let on_disk =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml")).unwrap();
    assert_eq!(served, on_disk);

    let spec: Value = serde_yaml_ng::from_str(&served).expect("openapi.yaml is YAML");
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut in_spec: Vec<(String, String)> = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for verb in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&verb.as_str()) {
                in_spec.push((verb.to_uppercase(), path.clone()));
            }
        }
    }
    in_spec.sort();
    let mut in_router: Vec<(String, String)> = users_service::http::served_routes()
        .into_iter()
        .map(|(verb, path)| (verb.to_string(), path))
        .collect();
    in_router.sort();
    assert_eq!(in_spec, in_router, "openapi.yaml and the router disagree");

    // And the router really serves each of them (no 404 for any documented route).
    for (verb, path) in &in_router {
        let method = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
        let status = app
            .client
            .request(method, app.url(path))
            .body("{}")
            .send()
            .await
            .unwrap()
            .status();
        assert_ne!(status, 404, "{verb} {path}");
        assert_ne!(status, 405, "{verb} {path}");
    }
}

/// A preflight from `origin` for a POST to Login.
async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("/users/Users/Login"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization,micro-namespace",
        )
        .send()
        .await
        .unwrap()
}

/// Every route the service serves, and some it does not, with each verb.
fn every_route() -> Vec<(reqwest::Method, String)> {
    let mut routes: Vec<(reqwest::Method, String)> = users_service::http::served_routes()
        .into_iter()
        .map(|(verb, path)| {
            (
                reqwest::Method::from_bytes(verb.as_str().as_bytes()).unwrap(),
                path,
            )
        })
        .collect();
    for path in ["/", "/users/Users/Nope", "/v1/user/Login", "/health"] {
        for verb in [
            reqwest::Method::GET,
            reqwest::Method::POST,
            reqwest::Method::OPTIONS,
        ] {
            routes.push((verb, path.to_string()));
        }
    }
    routes
}

#[tokio::test]
async fn browsers_on_this_machine_may_call_by_default() {
    let app = sqlite_app("cors_loopback").await;
    for origin in [
        "http://localhost:3000",
        "http://127.0.0.1:5173",
        "http://[::1]:8000",
    ] {
        let response = preflight(&app, origin).await;
        assert!(response.status().is_success(), "{}", response.status());
        let headers = response.headers();
        assert_eq!(headers["access-control-allow-origin"], origin);
        let allowed = headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        for header in ["content-type", "authorization", "micro-namespace"] {
            assert!(allowed.contains(header), "{allowed}");
        }
        assert!(headers["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST"));
    }

    // The actual request carries the header too, errors included, and a page may read
    // Retry-After.
    let response = app
        .client
        .post(app.url("/users/Users/Read"))
        .header("origin", "http://localhost:3000")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let headers = response.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "http://localhost:3000"
    );
    let exposed = headers["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("retry-after"), "{exposed}");
}

/// Without an admin key, a page on any other site is refused before anything is done,
/// on every route: it cannot drive the service on the operator's machine.
#[tokio::test]
async fn pages_on_other_origins_are_refused_before_any_work() {
    let app = sqlite_app("cors_refused").await;
    let user = app.create_user("asim").await;
    for (verb, path) in every_route() {
        let response = app
            .client
            .request(verb.clone(), app.url(&path))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .header("content-type", "text/plain")
            .body(json!({"id": user["id"]}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{verb} {path}");
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], 403, "{body}");
        assert_eq!(body["status"], "Forbidden");
        assert!(
            body["detail"].as_str().unwrap().contains("origin"),
            "{body}"
        );
    }
    // A simple (no-preflight) POST of a text/plain body changed nothing.
    for method in ["Delete", "Create"] {
        let response = app
            .client
            .post(app.url(&format!("/users/Users/{method}")))
            .header("origin", "null")
            .header("content-type", "text/plain")
            .body(json!({"id": user["id"], "username": "mallory", "email": "m@example.com", "password": PASSWORD}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], format!("users.{method}"));
    }
    assert_eq!(app.count_rows("users").await, 1);
    app.login("asim", PASSWORD).await;
}

#[tokio::test]
async fn with_an_admin_key_any_origin_may_call() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, "cors_key", |config| {
        config.access.api_key = Some("s3cret-admin-key".into());
    })
    .await
    .unwrap();
    let response = preflight(&app, "https://app.example").await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn answers_vary_by_origin_with_or_without_one() {
    let app = sqlite_app("cors_vary").await;
    let vary = "origin, access-control-request-method, access-control-request-headers";
    for origin in [None, Some("http://localhost:3000")] {
        let mut request = app.client.post(app.url("/users/Users/Read")).body("{}");
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400);
        let headers = response.headers();
        assert_eq!(headers["vary"], vary, "origin {origin:?}");
        // The CORS answer is for browsers, which always send Origin.
        assert_eq!(
            headers.get("access-control-allow-origin").is_some(),
            origin.is_some(),
            "origin {origin:?}"
        );
    }
}

#[tokio::test]
async fn cors_origins_can_be_restricted() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, "cors_list", |config| {
        config.access.api_key = Some("s3cret-admin-key".into());
        config.cors_origins = vec!["https://good.example".into(), "https://also.example".into()];
    })
    .await
    .unwrap();
    let good = preflight(&app, "https://good.example").await;
    assert_eq!(
        good.headers()["access-control-allow-origin"],
        "https://good.example"
    );
    let bad = preflight(&app, "https://evil.example").await;
    assert_eq!(bad.status(), 403);
    assert!(bad.headers().get("access-control-allow-origin").is_none());
}

/// A page whose own host name is made to resolve to the service's address (DNS
/// rebinding) sends that name in `Host`: refused with 421 on every route.
#[tokio::test]
async fn requests_for_other_hosts_are_refused() {
    let app = TestApp::spawn_with(common::Backend::Sqlite, "hosts", |config| {
        config.access.allowed_hosts = vec!["users.internal".into()];
    })
    .await
    .unwrap();
    let port = app.addr.port();
    for (verb, path) in every_route() {
        let response = app
            .client
            .request(verb.clone(), app.url(&path))
            .header("host", format!("rebound.evil.example:{port}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 421, "{verb} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], 421, "{body}");
        assert_eq!(body["status"], "Misdirected Request");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "users.internal".to_string(),
        format!("USERS.internal:{port}"),
    ] {
        let response = app
            .client
            .get(app.url("/health"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
}

/// Answers may hold sessions and accounts: no cache keeps them, and no browser reads
/// them as anything but what they say they are.
#[tokio::test]
async fn every_answer_is_marked_no_store_and_nosniff() {
    let app = sqlite_app("no_store").await;
    for (verb, path) in every_route() {
        for origin in [
            None,
            Some("http://localhost:3000"),
            Some("https://evil.example"),
        ] {
            let mut request = app.client.request(verb.clone(), app.url(&path)).body("{}");
            if let Some(origin) = origin {
                request = request.header("origin", origin);
            }
            let response = request.send().await.unwrap();
            let headers = response.headers();
            // The one static file among the routes is revalidated by its ETag; answers
            // refused before any route are never stored.
            let cache = if path == "/micro.js" && response.status() == 200 {
                "no-cache"
            } else {
                "no-store"
            };
            assert_eq!(headers["cache-control"], cache, "{verb} {path} {origin:?}");
            if cache == "no-cache" {
                assert!(headers.contains_key("etag"), "{verb} {path}");
            }
            assert_eq!(
                headers["x-content-type-options"], "nosniff",
                "{verb} {path} {origin:?}"
            );
        }
    }
}
