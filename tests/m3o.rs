//! M3O's User API surface (`POST /v1/user/<Method>`) on both stores: the exact shapes
//! its SDKs decode, the methods it added (List, LogoutAll, Read by name, profiles) on
//! both surfaces, and the admin key on the new routes.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::{assert_error, assert_m3o_error, is_unix_seconds_string, TestApp, PASSWORD};
use serde_json::{json, Value};

on_both_stores!(
    accounts_have_the_m3o_shape,
    read_finds_an_account_by_id_username_or_email,
    update_answers_empty_and_replaces_the_profile_as_a_whole,
    profiles_are_bounded,
    list_pages_through_every_user_in_creation_order,
    sessions_name_their_user_user_id,
    logout_all_ends_every_session_of_one_user,
    update_password_and_delete_answer_empty,
    the_micro_surface_gains_list_logout_all_and_profiles,
);

async fn create(app: &TestApp, username: &str, profile: Value) -> Value {
    let (status, body) = app
        .m3o(
            "Create",
            json!({"username": username, "email": format!("{username}@Example.com"), "password": PASSWORD, "profile": profile}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["account"].clone()
}

async fn accounts_have_the_m3o_shape(app: TestApp) {
    let (status, body) = app
        .m3o(
            "Create",
            json!({"id": "acc-1", "username": "Asim", "email": "Asim@Example.com", "password": PASSWORD, "profile": {"plan": "free"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "only `account`: {body}");
    let account = &body["account"];
    assert_eq!(account["id"], "acc-1");
    assert_eq!(account["username"], "asim");
    assert_eq!(account["email"], "asim@example.com");
    assert!(is_unix_seconds_string(&account["created"]), "{account}");
    assert_eq!(account["created"], account["updated"]);
    assert_eq!(account["verified"], false);
    assert_eq!(account["verification_date"], "0");
    assert_eq!(account["profile"], json!({"plan": "free"}));
    assert_eq!(account.as_object().unwrap().len(), 8, "{account}");
    // The same rules as the Micro surface, with the M3O error id.
    let taken = app
        .m3o(
            "Create",
            json!({"username": "asim", "email": "other@example.com", "password": PASSWORD}),
        )
        .await;
    assert_m3o_error(&taken, "Create", 409, "username is already taken");
    let unknown = app.m3o("Nope", json!({})).await;
    assert_m3o_error(&unknown, "Nope", 404, "unknown method User.Nope");
}

async fn read_finds_an_account_by_id_username_or_email(app: TestApp) {
    let account = create(&app, "reader", json!({})).await;
    for key in [
        json!({"id": account["id"]}),
        json!({"username": "READER"}),
        json!({"email": "Reader@example.com"}),
        // The id wins when several are given.
        json!({"id": account["id"], "username": "someone-else"}),
    ] {
        let (status, body) = app.m3o("Read", key.clone()).await;
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body, json!({"account": account}), "{key}");
    }
    let missing = app
        .m3o("Read", json!({"email": "nobody@example.com"}))
        .await;
    assert_m3o_error(&missing, "Read", 404, "user not found");
    let none = app.m3o("Read", json!({})).await;
    assert_m3o_error(&none, "Read", 400, "id (or username or email) is required");
}

async fn update_answers_empty_and_replaces_the_profile_as_a_whole(app: TestApp) {
    let account = create(&app, "upd", json!({"a": "1", "b": "2"})).await;
    let id = &account["id"];
    app.clock.advance(7);
    let answer = app
        .m3o(
            "Update",
            json!({"id": id, "email": "New@Example.com", "profile": {"c": "3"}}),
        )
        .await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    let (_, read) = app.m3o("Read", json!({"id": id})).await;
    let read = &read["account"];
    assert_eq!(read["email"], "new@example.com");
    assert_eq!(read["username"], "upd");
    assert_eq!(read["profile"], json!({"c": "3"}), "replaced, not merged");
    assert_eq!(read["updated"], app.clock_now().to_string());
    // Without a profile the profile stays; an empty one clears it.
    app.m3o("Update", json!({"id": id, "username": "upd2"}))
        .await;
    let (_, read) = app.m3o("Read", json!({"id": id})).await;
    assert_eq!(read["account"]["profile"], json!({"c": "3"}));
    app.m3o("Update", json!({"id": id, "profile": {}})).await;
    let (_, read) = app.m3o("Read", json!({"id": id})).await;
    assert_eq!(read["account"]["profile"], json!({}));
    let missing = app
        .m3o("Update", json!({"id": "nobody", "profile": {}}))
        .await;
    assert_m3o_error(&missing, "Update", 404, "user not found");
}

async fn profiles_are_bounded(app: TestApp) {
    let full: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("k{i}"), json!("x".repeat(4096))))
        .collect();
    let account = create(&app, "bounded", Value::Object(full.clone())).await;
    assert_eq!(account["profile"].as_object().unwrap().len(), 64);
    let id = &account["id"];

    let mut too_many = full.clone();
    too_many.insert("k64".into(), json!("x"));
    let cases = [
        (Value::Object(too_many), "profile must have at most 64 keys"),
        (
            json!({"v": "x".repeat(4097)}),
            "profile values must be at most 4096 bytes",
        ),
        (
            json!({"k".repeat(65): "x"}),
            "profile keys must be 1-64 characters",
        ),
        (json!({"": "x"}), "profile keys must be 1-64 characters"),
        (json!({"a\nb": "x"}), "without control characters"),
    ];
    for (profile, detail) in cases {
        let answer = app
            .m3o("Update", json!({"id": id, "profile": profile}))
            .await;
        assert_m3o_error(&answer, "Update", 400, detail);
        let answer = app
            .m3o(
                "Create",
                json!({"username": "other", "email": "other@example.com", "password": PASSWORD, "profile": profile}),
            )
            .await;
        assert_m3o_error(&answer, "Create", 400, detail);
    }
    let not_strings = app
        .m3o("Update", json!({"id": id, "profile": {"n": 1}}))
        .await;
    assert_m3o_error(
        &not_strings,
        "Update",
        400,
        "invalid JSON body at `profile.n`",
    );
    // Refused updates changed nothing.
    let (_, read) = app.m3o("Read", json!({"id": id})).await;
    assert_eq!(read["account"]["profile"], Value::Object(full));
}

async fn list_pages_through_every_user_in_creation_order(app: TestApp) {
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create(&app, &format!("lister{i}"), json!({"n": i.to_string()})).await["id"].clone(),
        );
        app.clock.advance(1);
    }
    let (status, all) = app.m3o("List", json!({})).await;
    assert_eq!(status, 200);
    let listed: Vec<Value> = all["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(all["users"][2]["profile"], json!({"n": "2"}));
    let (_, page) = app.m3o("List", json!({"offset": 1, "limit": 2})).await;
    let page: Vec<Value> = page["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    assert_eq!(page, ids[1..3]);
    let (_, beyond) = app.m3o("List", json!({"offset": 5})).await;
    assert_eq!(beyond, json!({"users": []}));
    let too_many = app.m3o("List", json!({"limit": 1001})).await;
    assert_m3o_error(&too_many, "List", 400, "limit must be at most 1000");
    let negative = app.m3o("List", json!({"offset": -1})).await;
    assert_m3o_error(&negative, "List", 400, "offset must not be negative");
}

async fn sessions_name_their_user_user_id(app: TestApp) {
    let account = create(&app, "sess", json!({})).await;
    let (status, body) = app
        .m3o("Login", json!({"username": "sess", "password": PASSWORD}))
        .await;
    assert_eq!(status, 200, "{body}");
    let session = &body["session"];
    assert_eq!(session["userId"], account["id"]);
    assert!(is_unix_seconds_string(&session["created"]));
    assert!(is_unix_seconds_string(&session["expires"]));
    let keys: Vec<&String> = session.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["created", "expires", "id", "userId"]);
    // Both spellings of the request field.
    for request in [
        json!({"session_id": session["id"]}),
        json!({"sessionId": session["id"]}),
    ] {
        let (status, read) = app.m3o("ReadSession", request).await;
        assert_eq!(status, 200);
        assert_eq!(read, json!({"session": session}));
    }
    let wrong = app
        .m3o(
            "Login",
            json!({"email": "sess@example.com", "password": "not-the-password"}),
        )
        .await;
    assert_m3o_error(
        &wrong,
        "Login",
        401,
        "username, email or password is incorrect",
    );
    let answer = app.m3o("Logout", json!({"sessionId": session["id"]})).await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    let gone = app
        .m3o("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_m3o_error(&gone, "ReadSession", 401, "session not found or expired");
}

async fn logout_all_ends_every_session_of_one_user(app: TestApp) {
    let account = create(&app, "many", json!({})).await;
    create(&app, "bystander", json!({})).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let (_, body) = app
            .m3o("Login", json!({"username": "many", "password": PASSWORD}))
            .await;
        sessions.push(body["session"]["id"].clone());
    }
    let (_, other) = app
        .m3o(
            "Login",
            json!({"username": "bystander", "password": PASSWORD}),
        )
        .await;
    let answer = app
        .m3o("LogoutAll", json!({"user_id": account["id"]}))
        .await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    for session in &sessions {
        let (status, _) = app.m3o("ReadSession", json!({"session_id": session})).await;
        assert_eq!(status, 401);
    }
    let (status, _) = app
        .m3o("ReadSession", json!({"session_id": other["session"]["id"]}))
        .await;
    assert_eq!(status, 200, "another user's session is untouched");
    let unknown = app.m3o("LogoutAll", json!({"userId": "nobody"})).await;
    assert_m3o_error(&unknown, "LogoutAll", 404, "user not found");
    let missing = app.m3o("LogoutAll", json!({})).await;
    assert_m3o_error(&missing, "LogoutAll", 400, "user_id is required");
}

async fn update_password_and_delete_answer_empty(app: TestApp) {
    let account = create(&app, "pw", json!({})).await;
    let answer = app
        .m3o(
            "UpdatePassword",
            json!({"userId": account["id"], "old_password": PASSWORD, "new_password": "newpassword-1", "confirm_password": "newpassword-1"}),
        )
        .await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    let (status, _) = app
        .m3o(
            "Login",
            json!({"username": "pw", "password": "newpassword-1"}),
        )
        .await;
    assert_eq!(status, 200);
    let answer = app.m3o("Delete", json!({"id": account["id"]})).await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    let gone = app.m3o("Read", json!({"id": account["id"]})).await;
    assert_m3o_error(&gone, "Read", 404, "user not found");
    let again = app.m3o("Delete", json!({"id": account["id"]})).await;
    assert_m3o_error(&again, "Delete", 404, "user not found");
}

async fn the_micro_surface_gains_list_logout_all_and_profiles(app: TestApp) {
    let (status, body) = app
        .call(
            "Create",
            json!({"username": "mic", "email": "mic@example.com", "password": PASSWORD, "profile": {"lang": "en"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let user = body["user"].clone();
    assert_eq!(user["profile"], json!({"lang": "en"}));
    let (_, updated) = app
        .call(
            "Update",
            json!({"id": user["id"], "profile": {"lang": "fr"}}),
        )
        .await;
    assert_eq!(
        updated["user"]["profile"],
        json!({"lang": "fr"}),
        "Micro's Update still answers the user"
    );
    let (_, read) = app.call("Read", json!({"username": "mic"})).await;
    assert_eq!(read["user"], updated["user"]);
    let (_, list) = app.call("List", json!({"limit": "10"})).await;
    assert_eq!(list, json!({"users": [updated["user"]]}));
    let session = app.login("mic", PASSWORD).await;
    let answer = app.call("LogoutAll", json!({"userId": user["id"]})).await;
    assert_eq!(answer, (reqwest::StatusCode::OK, json!({})));
    let gone = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_error(&gone, "ReadSession", 401, "session not found");
}

#[tokio::test]
async fn the_admin_key_guards_the_m3o_routes_too() {
    let Some(app) = TestApp::spawn_with(common::Backend::Sqlite, "m3o_admin_key", |c| {
        c.access.api_key = Some("s3cret-admin-key".into());
    })
    .await
    else {
        return;
    };
    create(&app, "keyed", json!({})).await;
    let client = reqwest::Client::new();
    let post = |method: &str, token: Option<&str>, body: Value| {
        let mut request = client
            .post(app.url(&format!("/v1/user/{method}")))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // The SDKs always send a bearer token, often an old M3O key: on a public method it
    // is simply not the admin key, and the call goes through.
    let response = post(
        "Login",
        Some("an-old-m3o-key"),
        json!({"username": "keyed", "password": PASSWORD}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let response = post("List", Some("an-old-m3o-key"), json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "user.List");
    let response = post("List", Some("s3cret-admin-key"), json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    for method in [
        "SendVerificationEmail",
        "SendPasswordResetEmail",
        "SendMagicLink",
        "LogoutAll",
        "Read",
    ] {
        let response = post(method, None, json!({})).await.unwrap();
        assert_eq!(response.status(), 401, "{method} needs the key");
    }
    for method in ["VerifyEmail", "ResetPassword", "VerifyToken"] {
        let response = post(method, None, json!({})).await.unwrap();
        assert_eq!(
            response.status(),
            400,
            "{method} is public: it takes a secret of its own"
        );
    }
}

#[tokio::test]
async fn wrong_verbs_name_the_right_one() {
    let Some(app) = TestApp::spawn(common::Backend::Sqlite, "m3o_verbs").await else {
        return;
    };
    let response = reqwest::get(app.url("/v1/user/Create")).await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["id"], "user.Create");
    let response = reqwest::Client::new()
        .post(app.url("/v1/user/verify"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
}
