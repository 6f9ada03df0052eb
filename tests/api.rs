//! Black-box tests of every RPC method over real HTTP, on SQLite and on PostgreSQL.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

mod common;

use common::{assert_error, is_unix_seconds_string, TestApp, PASSWORD};
use serde_json::{json, Value};

on_both_stores!(
    create_returns_the_user_normalised_with_string_timestamps,
    create_generates_a_uuid_v4_id_when_none_is_given,
    create_requires_username_email_and_password,
    create_validates_every_field,
    create_refuses_a_taken_id_username_or_email,
    read_returns_the_user_or_404,
    update_changes_only_the_fields_given,
    update_validates_and_refuses_taken_values,
    update_of_an_unknown_user_is_404,
    delete_removes_the_user_and_its_sessions,
    search_matches_exactly_and_case_insensitively,
    search_pages_and_validates_its_arguments,
    update_password_replaces_the_password_and_revokes_sessions,
    update_password_refuses_bad_input,
    login_accepts_username_or_email_case_insensitively,
    login_gives_one_answer_for_unknown_user_and_wrong_password,
    login_requires_an_identifier_and_a_password,
    logout_ends_the_session_and_is_idempotent,
    a_logout_is_seen_by_every_session_check_that_begins_after_it,
    an_update_is_seen_by_every_read_that_begins_after_it,
    read_session_refuses_unknown_and_expired_sessions,
    expired_sessions_are_swept,
);

async fn create_returns_the_user_normalised_with_string_timestamps(app: TestApp) {
    let id = "ff3c06de-9e43-41c7-9bab-578f6b4ad32b";
    let (status, body) = app
        .call(
            "Create",
            json!({"id": id, "username": "Asim", "email": "Asim@Example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let user = &body["user"];
    assert_eq!(user["id"], id);
    assert_eq!(user["username"], "asim");
    assert_eq!(user["email"], "asim@example.com");
    assert!(is_unix_seconds_string(&user["created"]), "{user}");
    assert_eq!(user["created"], user["updated"]);
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    // The fields M3O's User API added, present with their defaults.
    assert_eq!(user["verified"], false);
    assert_eq!(user["verification_date"], "0");
    assert_eq!(user["profile"], json!({}));
    assert_eq!(user.as_object().unwrap().len(), 8, "{user}");

    let (status, read) = app.call("Read", json!({"id": id})).await;
    assert_eq!(status, 200);
    assert_eq!(read["user"], *user);
}

async fn create_generates_a_uuid_v4_id_when_none_is_given(app: TestApp) {
    let user = app.create_user("noid").await;
    let id = uuid::Uuid::parse_str(user["id"].as_str().unwrap()).expect("a UUID");
    assert_eq!(id.get_version_num(), 4);
    // An empty id counts as absent.
    let (status, body) = app
        .call(
            "Create",
            json!({"id": "", "username": "emptyid", "email": "e@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(uuid::Uuid::parse_str(body["user"]["id"].as_str().unwrap()).is_ok());
}

async fn create_requires_username_email_and_password(app: TestApp) {
    let full = json!({"username": "asim", "email": "asim@example.com", "password": PASSWORD});
    for field in ["username", "email", "password"] {
        let mut missing = full.clone();
        missing.as_object_mut().unwrap().remove(field);
        let answer = app.call("Create", missing).await;
        assert_error(&answer, "Create", 400, &format!("{field} is required"));
        let mut empty = full.clone();
        empty[field] = json!("");
        let answer = app.call("Create", empty).await;
        assert_error(&answer, "Create", 400, &format!("{field} is required"));
    }
    // Nothing was created along the way.
    let (_, found) = app.call("Search", json!({"username": "asim"})).await;
    assert_eq!(found, json!({"users": []}));
}

async fn create_validates_every_field(app: TestApp) {
    let cases = [
        (json!({"id": "a/b"}), "id must be 1-128 characters"),
        (
            json!({"id": "x".repeat(129)}),
            "id must be 1-128 characters",
        ),
        (
            json!({"username": "a b"}),
            "username must be 1-64 characters",
        ),
        (
            json!({"username": "x".repeat(65)}),
            "username must be 1-64 characters",
        ),
        (
            json!({"email": "not-an-email"}),
            "email must be a valid e-mail address",
        ),
        (
            json!({"email": format!("{}@example.com", "a".repeat(250))}),
            "email must be at most 254",
        ),
        (
            json!({"password": "short"}),
            "password must be at least 8 characters",
        ),
        (
            json!({"password": "x".repeat(1025)}),
            "password must be at most 1024 characters",
        ),
    ];
    for (patch, detail) in cases {
        let mut body =
            json!({"username": "valid", "email": "valid@example.com", "password": PASSWORD});
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let answer = app.call("Create", body).await;
        assert_error(&answer, "Create", 400, detail);
    }
    // Limits are inclusive.
    let (status, body) = app
        .call(
            "Create",
            json!({"id": "x".repeat(128), "username": "u".repeat(64), "email": "edge@example.com", "password": "p".repeat(1024)}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn create_refuses_a_taken_id_username_or_email(app: TestApp) {
    let (status, _) = app
        .call(
            "Create",
            json!({"id": "user-1", "username": "asim", "email": "asim@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200);
    let taken = [
        (
            json!({"id": "user-1", "username": "other", "email": "other@example.com"}),
            "id is already taken",
        ),
        (
            json!({"username": "ASIM", "email": "other@example.com"}),
            "username is already taken",
        ),
        (
            json!({"username": "other", "email": "Asim@EXAMPLE.com"}),
            "email is already taken",
        ),
    ];
    for (mut body, detail) in taken {
        body["password"] = json!(PASSWORD);
        let answer = app.call("Create", body).await;
        assert_error(&answer, "Create", 409, detail);
    }
    let (_, found) = app.call("Search", json!({"username": "other"})).await;
    assert_eq!(
        found,
        json!({"users": []}),
        "a refused Create changes nothing"
    );
}

async fn read_returns_the_user_or_404(app: TestApp) {
    let user = app.create_user("reader").await;
    let (status, body) = app.call("Read", json!({"id": user["id"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["user"], user);
    let answer = app.call("Read", json!({"id": "nobody"})).await;
    assert_error(&answer, "Read", 404, "user not found");
    let answer = app.call("Read", json!({})).await;
    assert_error(
        &answer,
        "Read",
        400,
        "id (or username or email) is required",
    );
}

async fn update_changes_only_the_fields_given(app: TestApp) {
    let user = app.create_user("asim").await;
    app.clock.advance(10);
    let (status, body) = app
        .call(
            "Update",
            json!({"id": user["id"], "email": "Asim+Update@example.com"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let updated = &body["user"];
    assert_eq!(updated["username"], "asim", "an omitted username is kept");
    assert_eq!(updated["email"], "asim+update@example.com");
    assert_eq!(updated["created"], user["created"]);
    let created: i64 = user["created"].as_str().unwrap().parse().unwrap();
    assert_eq!(updated["updated"], (created + 10).to_string());

    let (status, body) = app
        .call(
            "Update",
            json!({"id": user["id"], "username": "Asim2", "email": ""}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["username"], "asim2");
    assert_eq!(
        body["user"]["email"], "asim+update@example.com",
        "an empty email is kept"
    );

    // No fields: the user comes back unchanged.
    let (status, same) = app.call("Update", json!({"id": user["id"]})).await;
    assert_eq!(status, 200);
    assert_eq!(same["user"], body["user"]);
    let (_, read) = app.call("Read", json!({"id": user["id"]})).await;
    assert_eq!(read["user"], body["user"]);
}

async fn update_validates_and_refuses_taken_values(app: TestApp) {
    let asim = app.create_user("asim").await;
    app.create_user("other").await;
    let answer = app
        .call("Update", json!({"id": asim["id"], "username": "OTHER"}))
        .await;
    assert_error(&answer, "Update", 409, "username is already taken");
    let answer = app
        .call(
            "Update",
            json!({"id": asim["id"], "email": "other@example.com"}),
        )
        .await;
    assert_error(&answer, "Update", 409, "email is already taken");
    let answer = app
        .call("Update", json!({"id": asim["id"], "email": "nope"}))
        .await;
    assert_error(
        &answer,
        "Update",
        400,
        "email must be a valid e-mail address",
    );
    let answer = app.call("Update", json!({"username": "x"})).await;
    assert_error(&answer, "Update", 400, "id is required");
    let (_, read) = app.call("Read", json!({"id": asim["id"]})).await;
    assert_eq!(read["user"], asim, "refused updates change nothing");
}

async fn update_of_an_unknown_user_is_404(app: TestApp) {
    let answer = app
        .call("Update", json!({"id": "nobody", "username": "x"}))
        .await;
    assert_error(&answer, "Update", 404, "user not found");
}

async fn delete_removes_the_user_and_its_sessions(app: TestApp) {
    let user = app.create_user("leaving").await;
    let session = app.login("leaving", PASSWORD).await;
    let (status, body) = app.call("Delete", json!({"id": user["id"]})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({}));
    let answer = app.call("Read", json!({"id": user["id"]})).await;
    assert_error(&answer, "Read", 404, "user not found");
    let answer = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found");
    let answer = app
        .call(
            "Login",
            json!({"username": "leaving", "password": PASSWORD}),
        )
        .await;
    assert_error(&answer, "Login", 401, "incorrect");
    let answer = app.call("Delete", json!({"id": user["id"]})).await;
    assert_error(&answer, "Delete", 404, "user not found");
    // The username and email are free again.
    app.create_user("leaving").await;
}

async fn search_matches_exactly_and_case_insensitively(app: TestApp) {
    let asim = app.create_user("asim").await;
    app.create_user("asim2").await;
    let (status, body) = app.call("Search", json!({"username": "ASIM"})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"users": [asim]}));
    let (_, body) = app
        .call("Search", json!({"email": "Asim@Example.com"}))
        .await;
    assert_eq!(body, json!({"users": [asim]}));
    let (_, body) = app
        .call(
            "Search",
            json!({"username": "asim", "email": "asim@example.com"}),
        )
        .await;
    assert_eq!(body, json!({"users": [asim]}), "both given, both match");
    let (_, body) = app
        .call(
            "Search",
            json!({"username": "asim", "email": "asim2@example.com"}),
        )
        .await;
    assert_eq!(body, json!({"users": []}), "both given, only one matches");
    let (_, body) = app.call("Search", json!({"username": "asi"})).await;
    assert_eq!(body, json!({"users": []}), "no prefix matching");
}

async fn search_pages_and_validates_its_arguments(app: TestApp) {
    let asim = app.create_user("asim").await;
    let (_, body) = app
        .call(
            "Search",
            json!({"username": "asim", "limit": "1", "offset": "0"}),
        )
        .await;
    assert_eq!(
        body,
        json!({"users": [asim]}),
        "limit and offset as strings"
    );
    let (_, body) = app
        .call(
            "Search",
            json!({"username": "asim", "limit": 1000, "offset": 1}),
        )
        .await;
    assert_eq!(body, json!({"users": []}), "offset skips");
    let (_, body) = app
        .call("Search", json!({"username": "asim", "limit": 0}))
        .await;
    assert_eq!(body, json!({"users": [asim]}), "limit 0 is the default");

    let answer = app
        .call("Search", json!({"username": "", "email": ""}))
        .await;
    assert_error(&answer, "Search", 400, "username or email is required");
    let answer = app.call("Search", json!({})).await;
    assert_error(&answer, "Search", 400, "username or email is required");
    let answer = app
        .call("Search", json!({"username": "asim", "limit": 1001}))
        .await;
    assert_error(&answer, "Search", 400, "limit must be at most 1000");
    let answer = app
        .call("Search", json!({"username": "asim", "limit": -1}))
        .await;
    assert_error(&answer, "Search", 400, "limit must not be negative");
    let answer = app
        .call("Search", json!({"username": "asim", "offset": "-5"}))
        .await;
    assert_error(&answer, "Search", 400, "offset must not be negative");
    let answer = app
        .call("Search", json!({"username": "asim", "limit": "ten"}))
        .await;
    assert_error(&answer, "Search", 400, "`limit`");
}

async fn update_password_replaces_the_password_and_revokes_sessions(app: TestApp) {
    let user = app.create_user("asim").await;
    let first = app.login("asim", PASSWORD).await;
    let second = app.login("asim", PASSWORD).await;
    app.clock.advance(5);
    let (status, body) = app
        .call(
            "UpdatePassword",
            json!({"user_id": user["id"], "old_password": PASSWORD, "new_password": "newpassword1", "confirm_password": "newpassword1"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({}));
    for session in [&first, &second] {
        let answer = app
            .call("ReadSession", json!({"session_id": session["id"]}))
            .await;
        assert_error(&answer, "ReadSession", 401, "session not found");
    }
    let answer = app
        .call("Login", json!({"username": "asim", "password": PASSWORD}))
        .await;
    assert_error(&answer, "Login", 401, "incorrect");
    app.login("asim", "newpassword1").await;
    let (_, read) = app.call("Read", json!({"id": user["id"]})).await;
    assert_ne!(
        read["user"]["updated"], user["updated"],
        "a password change bumps updated"
    );
}

async fn update_password_refuses_bad_input(app: TestApp) {
    let user = app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;
    let base = json!({"user_id": user["id"], "old_password": PASSWORD, "new_password": "newpassword1", "confirm_password": "newpassword1"});
    let with = |k: &str, v: serde_json::Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let answer = app
        .call(
            "UpdatePassword",
            with("confirm_password", json!("newpassword2")),
        )
        .await;
    assert_error(
        &answer,
        "UpdatePassword",
        400,
        "confirm_password does not match new_password",
    );
    let answer = app
        .call("UpdatePassword", with("new_password", json!("short")))
        .await;
    assert_error(
        &answer,
        "UpdatePassword",
        400,
        "new_password must be at least 8 characters",
    );
    let answer = app
        .call(
            "UpdatePassword",
            with("old_password", json!("wrong-password")),
        )
        .await;
    assert_error(&answer, "UpdatePassword", 401, "old_password is incorrect");
    let answer = app
        .call("UpdatePassword", with("user_id", json!("nobody")))
        .await;
    assert_error(&answer, "UpdatePassword", 404, "user not found");
    for field in [
        "user_id",
        "old_password",
        "new_password",
        "confirm_password",
    ] {
        let mut b = base.clone();
        b.as_object_mut().unwrap().remove(field);
        let answer = app.call("UpdatePassword", b).await;
        assert_error(
            &answer,
            "UpdatePassword",
            400,
            &format!("{field} is required"),
        );
    }
    // None of that changed the password or ended the session.
    app.login("asim", PASSWORD).await;
    let (status, _) = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200);
}

async fn login_accepts_username_or_email_case_insensitively(app: TestApp) {
    let user = app.create_user("asim").await;
    let session = app.login("ASIM", PASSWORD).await;
    assert_eq!(session["user_id"], user["id"]);
    assert_eq!(session["username"], "asim");
    assert_eq!(session["email"], "asim@example.com");
    let created: i64 = session["created"].as_str().unwrap().parse().unwrap();
    let expires: i64 = session["expires"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        expires - created,
        604_800,
        "sessions last seven days by default"
    );
    let id = session["id"].as_str().unwrap();
    assert!(id.len() >= 43, "at least 256 bits: {id}");
    assert!(id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert_eq!(session.as_object().unwrap().len(), 6, "{session}");

    let (status, body) = app
        .call(
            "Login",
            json!({"email": "ASIM@example.COM", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session"]["user_id"], user["id"]);
    assert_ne!(
        body["session"]["id"], session["id"],
        "every login opens its own session"
    );
}

async fn login_gives_one_answer_for_unknown_user_and_wrong_password(app: TestApp) {
    app.create_user("asim").await;
    let wrong = app
        .call(
            "Login",
            json!({"username": "asim", "password": "wrong-password"}),
        )
        .await;
    let unknown = app
        .call(
            "Login",
            json!({"username": "nobody", "password": "wrong-password"}),
        )
        .await;
    let unknown_email = app
        .call(
            "Login",
            json!({"email": "nobody@example.com", "password": "wrong-password"}),
        )
        .await;
    assert_error(
        &wrong,
        "Login",
        401,
        "username, email or password is incorrect",
    );
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, unknown_email);
}

async fn login_requires_an_identifier_and_a_password(app: TestApp) {
    let answer = app.call("Login", json!({"password": PASSWORD})).await;
    assert_error(&answer, "Login", 400, "username or email is required");
    let answer = app.call("Login", json!({"username": "asim"})).await;
    assert_error(&answer, "Login", 400, "password is required");
    let answer = app
        .call("Login", json!({"username": "asim", "password": ""}))
        .await;
    assert_error(&answer, "Login", 400, "password is required");
}

async fn logout_ends_the_session_and_is_idempotent(app: TestApp) {
    app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;
    let other = app.login("asim", PASSWORD).await;
    let (status, body) = app
        .call("Logout", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({}));
    let answer = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found or expired");
    let (status, _) = app
        .call("ReadSession", json!({"session_id": other["id"]}))
        .await;
    assert_eq!(status, 200, "other sessions of the user live on");
    let (status, body) = app
        .call("Logout", json!({"session_id": session["id"]}))
        .await;
    assert_eq!((status.as_u16(), body), (200, json!({})), "twice is fine");
    let (status, _) = app
        .call("Logout", json!({"session_id": "never-existed"}))
        .await;
    assert_eq!(status, 200);
    let answer = app.call("Logout", json!({})).await;
    assert_error(&answer, "Logout", 400, "session_id is required");
}

/// Runs `method` with `body` without pause from four clients while `change` is made.
/// Each answer begun before `change` has answered must be `before`'s or `after`'s, and
/// each begun after it `after`'s (on SQLite, the reads before it have filled the read
/// cache). Returns once every client has had 50 answers begun after the change.
async fn seen_by_every_read_after(
    app: &TestApp,
    method: &str,
    body: Value,
    before: fn(&(reqwest::StatusCode, Value)) -> bool,
    after: fn(&(reqwest::StatusCode, Value)) -> bool,
    change: impl std::future::Future<Output = ()>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    const READERS: usize = 4;
    const AFTER: usize = 50;
    let changed = Arc::new(AtomicBool::new(false));
    let (started, mut reading) = tokio::sync::mpsc::channel(READERS);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let (client, url) = (
            app.client.clone(),
            format!("{}/users/Users/{method}", app.base),
        );
        let (body, changed, started) = (body.clone(), changed.clone(), started.clone());
        reads.spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let (mut seen_before, mut seen_after) = (0, 0);
            while seen_after < AFTER && Instant::now() < deadline {
                let begun_after = changed.load(Ordering::SeqCst);
                let response = client.post(&url).json(&body).send().await.unwrap();
                let answer = (response.status(), response.json().await.unwrap());
                if begun_after {
                    assert!(after(&answer), "a read begun after the change: {answer:?}");
                    seen_after += 1;
                } else if before(&answer) {
                    seen_before += 1;
                    if seen_before == 1 {
                        let _ = started.send(()).await;
                    }
                } else {
                    assert!(after(&answer), "a read racing the change: {answer:?}");
                }
            }
            seen_after
        });
    }
    for _ in 0..READERS {
        reading.recv().await.unwrap();
    }
    change.await;
    changed.store(true, Ordering::SeqCst);
    while let Some(seen_after) = reads.join_next().await {
        assert_eq!(seen_after.unwrap(), AFTER);
    }
}

async fn a_logout_is_seen_by_every_session_check_that_begins_after_it(app: TestApp) {
    app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;
    let logout = async {
        let (status, _) = app
            .call("Logout", json!({"session_id": session["id"]}))
            .await;
        assert_eq!(status, 200);
    };
    seen_by_every_read_after(
        &app,
        "ReadSession",
        json!({"session_id": session["id"]}),
        |(status, _)| *status == 200,
        |(status, _)| *status == 401,
        logout,
    )
    .await;
}

async fn an_update_is_seen_by_every_read_that_begins_after_it(app: TestApp) {
    let user = app.create_user("asim").await;
    let update = async {
        let (status, body) = app
            .call("Update", json!({"id": user["id"], "username": "asim2"}))
            .await;
        assert_eq!(status, 200, "{body}");
    };
    seen_by_every_read_after(
        &app,
        "Read",
        json!({"id": user["id"]}),
        |(status, body)| *status == 200 && body["user"]["username"] == "asim",
        |(status, body)| *status == 200 && body["user"]["username"] == "asim2",
        update,
    )
    .await;
}

async fn read_session_refuses_unknown_and_expired_sessions(app: TestApp) {
    app.create_user("asim").await;
    let session = app.login("asim", PASSWORD).await;
    let (status, body) = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["session"], session);

    let answer = app
        .call("ReadSession", json!({"session_id": "not-a-session"}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found or expired");
    let answer = app.call("ReadSession", json!({"session_id": ""})).await;
    assert_error(&answer, "ReadSession", 400, "session_id is required");

    app.clock.advance(604_800 - 1);
    let (status, _) = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_eq!(status, 200, "still valid one second before it expires");
    app.clock.advance(1);
    let answer = app
        .call("ReadSession", json!({"session_id": session["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found or expired");
}

async fn expired_sessions_are_swept(app: TestApp) {
    app.create_user("asim").await;
    let old = app.login("asim", PASSWORD).await;
    app.clock.advance(604_800 - 10);
    let fresh = app.login("asim", PASSWORD).await;
    assert_eq!(app.users.sweep().await.unwrap(), 0);
    app.clock.advance(10);
    assert_eq!(app.users.sweep().await.unwrap(), 1, "only the old one");
    let (status, _) = app
        .call("ReadSession", json!({"session_id": fresh["id"]}))
        .await;
    assert_eq!(status, 200);
    let answer = app
        .call("ReadSession", json!({"session_id": old["id"]}))
        .await;
    assert_error(&answer, "ReadSession", 401, "session not found");
}
