//! The admin console under `/admin`: server-rendered pages for the operator, over the
//! same core as the API, acting as the admin key does.
//!
//! The operator signs in by typing the admin key into a form (a POST: the key is never
//! in an address). The browser then holds a cookie that proves it was given the key
//! without holding it: an expiry and an HMAC of it under the key
//! ([`AccessPolicy::mac`](super::access::AccessPolicy::mac)), `HttpOnly`,
//! `SameSite=Strict`, sent to `/admin` only. Every replica with the same key accepts
//! it; a new key signs every console out. Every form post must also come from the
//! service's own pages (`Guard::own_page`), not even from the app origins trusted with
//! users' session cookies, so no other site can drive the console. Without an admin
//! key the console is off.

mod pages;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::access::Caller;
use super::cookie::{clear_console, console_cookie, set_console};
use super::error::status_of;
use super::ui::{page_headers, send_verification};
use super::AppState;
use crate::core::users::Requester;
use crate::domain::{
    AccountChanges, AccountKey, Email, EventKind, EventQuery, Page, SessionHandle, User, UserId,
    UserQuery, Username,
};
use crate::error::Error;
use pages::{ConsoleNotice, UserView};

/// How long a console sign-in lasts, in seconds.
pub const CONSOLE_TTL: i64 = 8 * 3600;
/// Users on one page of the list.
const USERS_PER_PAGE: u32 = 50;
/// Audit events on one page of a user's.
const EVENTS_PER_PAGE: u32 = 20;

/// The console's routes.
pub fn routes() -> Router<AppState> {
    page_headers(
        Router::new()
            .route("/admin", get(home))
            .route("/admin/signin", post(sign_in))
            .route("/admin/signout", post(sign_out))
            .route("/admin/users", get(users_page))
            .route("/admin/users/{id}", get(user_page))
            .route("/admin/users/{id}/profile", post(update_profile))
            .route("/admin/users/{id}/verification", post(resend_verification))
            .route("/admin/users/{id}/unlock", post(unlock))
            .route("/admin/users/{id}/sessions/end", post(end_session))
            .route("/admin/users/{id}/sessions/end-all", post(end_sessions))
            .route("/admin/users/{id}/factors/reset", post(reset_factors))
            .route("/admin/users/{id}/delete", get(delete_page).post(delete)),
    )
}

/// The cookie's value for a sign-in at `now`: `<expiry>.<MAC of the expiry>`.
fn console_token(state: &AppState, now: i64) -> Option<String> {
    let expires = now.saturating_add(CONSOLE_TTL);
    let mac = state.access.mac(token_message(expires).as_bytes())?;
    Some(format!(
        "{expires}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    ))
}

fn token_message(expires: i64) -> String {
    format!("console sign-in until {expires}")
}

/// Whether the cookie's value is a console sign-in, under the current key, that has
/// not expired at `now`.
fn token_valid(state: &AppState, value: &str, now: i64) -> bool {
    let Some((expires, mac)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return false;
    };
    if expires <= now || expires > now.saturating_add(CONSOLE_TTL) {
        return false;
    }
    let Ok(presented) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(mac) else {
        return false;
    };
    state
        .access
        .mac(token_message(expires).as_bytes())
        .is_some_and(|expected| bool::from(expected.as_slice().ct_eq(&presented)))
}

/// Whether the request carries a live console sign-in.
fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    console_cookie(headers, &state.ui.cookies)
        .is_some_and(|v| token_valid(state, v, state.users.now()))
}

/// The core's caller for the console: the operator, as the admin key is.
fn operator(caller: Caller) -> Requester {
    Requester {
        ip: caller.ip,
        trusted: true,
        admin: true,
        request_id: caller.request_id,
        ..Requester::default()
    }
}

/// A console page that may only be read signed in: its caller. Without a sign-in, the
/// browser is sent to the sign-in form; without an admin key, the console is off.
struct Viewer;

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if !state.access.has_key() {
            return Err(off(state));
        }
        if signed_in(state, &parts.headers) {
            Ok(Viewer)
        } else {
            Err(see_other(state, "/admin"))
        }
    }
}

/// A console form post: from the service's own pages, signed in.
struct Operator(Requester);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if !state.access.has_key() {
            return Err(off(state));
        }
        if let Some(refused) = foreign_post(&parts.headers, state) {
            return Err(refused);
        }
        if !signed_in(state, &parts.headers) {
            return Err(pages::sign_in(Some(
                "Your console sign-in ended. Sign in again with the admin key.",
            ))
            .render(state, StatusCode::UNAUTHORIZED));
        }
        let caller = match Caller::from_request_parts(parts, state).await {
            Ok(caller) => caller,
            Err(never) => match never {},
        };
        Ok(Operator(operator(caller)))
    }
}

/// The refusal of a form post that did not come from the service's own pages (the
/// origins trusted with users' session cookies included); None for one that did.
fn foreign_post(headers: &HeaderMap, state: &AppState) -> Option<Response> {
    if state.guard.own_page(headers) {
        return None;
    }
    tracing::warn!(
        event = "request_refused",
        reason = "console form post from another origin"
    );
    Some(
        pages::failure("This form must be sent from this service's own pages.")
            .render(state, StatusCode::FORBIDDEN),
    )
}

/// The page of a console that is off (no admin key is set).
fn off(state: &AppState) -> Response {
    pages::off().render(state, StatusCode::NOT_FOUND)
}

/// A redirect to `to`, which names the console's tenant (see `UiSettings::page_url`).
fn see_other(state: &AppState, to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, state.ui.page_url(to))],
    )
        .into_response()
}

fn see_other_with_cookie(state: &AppState, to: &str, cookie: HeaderValue) -> Response {
    let mut response = see_other(state, to);
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

/// `GET /admin`: the sign-in form, or the users when signed in.
async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !state.access.has_key() {
        return off(&state);
    }
    if signed_in(&state, &headers) {
        return see_other(&state, "/admin/users");
    }
    pages::sign_in(None).render(&state, StatusCode::OK)
}

#[derive(Deserialize)]
struct SignInForm {
    key: Option<String>,
}

/// `POST /admin/signin`: the admin key, exchanged for the console's cookie.
async fn sign_in(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !state.access.has_key() {
        return off(&state);
    }
    if let Some(refused) = foreign_post(&headers, &state) {
        return refused;
    }
    let key = form.key.unwrap_or_default();
    if !key.trim().is_empty() && state.access.key_matches(&key) {
        let cookie = console_token(&state, state.users.now()).and_then(|token| {
            set_console(
                &state.ui.cookies,
                &token,
                CONSOLE_TTL,
                state.ui.secure_cookies,
            )
        });
        if let Some(cookie) = cookie {
            tracing::info!(event = "console_signed_in", client = ?caller.ip);
            return see_other_with_cookie(&state, "/admin/users", cookie);
        }
    }
    tracing::warn!(event = "api_key_rejected", method = "Console", client = ?caller.ip);
    if let Err(err) = state
        .users
        .record(&caller.anonymous(), EventKind::AdminKeyRefused, None)
        .await
    {
        tracing::warn!(error = %err, "the refused key could not be recorded in the audit trail");
    }
    pages::sign_in(Some("That is not the admin key.")).render(&state, StatusCode::UNAUTHORIZED)
}

/// `POST /admin/signout`: forgets the console's cookie in this browser.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = foreign_post(&headers, &state) {
        return refused;
    }
    see_other_with_cookie(
        &state,
        "/admin?signed-out",
        clear_console(&state.ui.cookies, state.ui.secure_cookies),
    )
}

#[derive(Deserialize, Default)]
struct UsersQuery {
    q: Option<String>,
    offset: Option<u64>,
    notice: Option<String>,
}

/// `GET /admin/users`: every user a page at a time, oldest first, or those a search
/// finds by exact id, username or e-mail address.
async fn users_page(
    State(state): State<AppState>,
    _: Viewer,
    Query(query): Query<UsersQuery>,
) -> Response {
    let notice = ConsoleNotice::from_query(query.notice.as_deref());
    let search = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let offset = query.offset.unwrap_or(0);
    let found = match search {
        Some(q) => find_users(&state, q).await.map(|users| (users, None)),
        None => list_users(&state, offset).await,
    };
    match found {
        Ok((users, next)) => pages::users(&users, search, offset, next, notice),
        Err(err) => pages::failure(&message_of(&state, &err)),
    }
    .render(&state, StatusCode::OK)
}

/// One page of the list, and the offset of the next when there is one.
async fn list_users(state: &AppState, offset: u64) -> Result<(Vec<User>, Option<u64>), Error> {
    let mut users = state
        .users
        .list(Page {
            limit: USERS_PER_PAGE + 1,
            offset,
        })
        .await?;
    let more = users.len() > USERS_PER_PAGE as usize;
    users.truncate(USERS_PER_PAGE as usize);
    Ok((users, more.then(|| offset + u64::from(USERS_PER_PAGE))))
}

/// The users whose id, username or e-mail address is `q`.
async fn find_users(state: &AppState, q: &str) -> Result<Vec<User>, Error> {
    let mut found: Vec<User> = Vec::new();
    if let Ok(id) = UserId::parse("q", Some(q.to_string())) {
        match state.users.read(&AccountKey::Id(id)).await {
            Ok(user) => found.push(user),
            Err(Error::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
    }
    let by_name = Username::parse(Some(q.to_string()))
        .ok()
        .map(|_| (Some(q.to_string()), None));
    let by_email = Email::parse(Some(q.to_string()))
        .ok()
        .map(|_| (None, Some(q.to_string())));
    for (username, email) in [by_name, by_email].into_iter().flatten() {
        let query = UserQuery::parse(username, email, Some(i64::from(USERS_PER_PAGE)), None)?;
        for user in state.users.search(&query).await? {
            if !found.iter().any(|u| u.id == user.id) {
                found.push(user);
            }
        }
    }
    Ok(found)
}

#[derive(Deserialize, Default)]
struct UserPageQuery {
    notice: Option<String>,
    /// The audit events before this one (the "older events" link).
    before: Option<i64>,
}

/// `GET /admin/users/{id}`: one user and everything the console can do to them.
async fn user_page(
    State(state): State<AppState>,
    _: Viewer,
    Path(id): Path<String>,
    Query(query): Query<UserPageQuery>,
) -> Response {
    let notice = ConsoleNotice::from_query(query.notice.as_deref());
    user_view(&state, &id, query.before, None, notice).await
}

/// The user's page, with `error` (of an action just tried) or `notice` above it.
async fn user_view(
    state: &AppState,
    id: &str,
    before: Option<i64>,
    error: Option<&Error>,
    notice: Option<ConsoleNotice>,
) -> Response {
    let view = async {
        let id = UserId::parse("id", Some(id.to_string()))?;
        let user = state.users.read(&AccountKey::Id(id.clone())).await?;
        let events = EventQuery::parse(
            Some(user.id.clone()),
            None,
            None,
            None,
            before,
            Some(i64::from(EVENTS_PER_PAGE)),
        )?;
        Ok::<_, Error>(UserView {
            sessions: state.users.list_sessions(&id).await?,
            factors: state.users.second_factors(&id).await?,
            passkeys: state.users.list_passkeys(&id).await?,
            lockout: state.users.lockout(&id).await?,
            events: state.users.audit_events(&events).await?,
            now: state.users.now(),
            user,
        })
    };
    match view.await {
        Ok(view) => {
            let status = error.map_or(StatusCode::OK, status_of);
            let message = error.map(|err| message_of(state, err));
            pages::user(&view, message.as_deref(), notice).render(state, status)
        }
        Err(err) => pages::failure(&message_of(state, &err)).render(state, status_of(&err)),
    }
}

/// The text the console shows for an error: the API's own, except for faults of ours,
/// which go to the log.
fn message_of(_state: &AppState, err: &Error) -> String {
    match err {
        Error::Internal(_) | Error::Unavailable { .. } => {
            tracing::error!(error = ?err, "a console page could not be served");
            "Something went wrong on our side; the log has the details. Try again later."
                .to_string()
        }
        other => other.to_string(),
    }
}

/// After an action on a user: back to their page with `notice`, or the page again
/// with the action's error.
async fn after(
    state: &AppState,
    id: &str,
    outcome: Result<(), Error>,
    notice: ConsoleNotice,
) -> Response {
    match outcome {
        Ok(()) => see_other(
            state,
            &format!(
                "/admin/users/{}?notice={}",
                pages::path_segment(id),
                notice.as_query()
            ),
        ),
        Err(err) => user_view(state, id, None, Some(&err), None).await,
    }
}

fn user_id(id: &str) -> Result<UserId, Error> {
    UserId::parse("id", Some(id.to_string()))
}

#[derive(Deserialize)]
struct ProfileForm {
    username: Option<String>,
    email: Option<String>,
    /// `key=value` lines.
    profile: Option<String>,
}

/// Profile lines (`key=value`, one per line; blank lines skipped) as a map.
fn profile_of(text: &str) -> Result<std::collections::BTreeMap<String, String>, Error> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::invalid("profile", "each line must be key=value"))
        })
        .collect()
}

async fn update_profile(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    Form(form): Form<ProfileForm>,
) -> Response {
    let outcome = async {
        let id = user_id(&id)?;
        let profile = form.profile.as_deref().map(profile_of).transpose()?;
        let changes = AccountChanges::parse(form.username, form.email, profile)?;
        state.users.update(&id, changes, &caller).await.map(drop)
    };
    after(&state, &id, outcome.await, ConsoleNotice::Saved).await
}

async fn resend_verification(
    State(state): State<AppState>,
    Operator(_): Operator,
    Path(id): Path<String>,
) -> Response {
    let outcome = async {
        let user = state.users.read(&AccountKey::Id(user_id(&id)?)).await?;
        if user.verified {
            return Err(Error::invalid("email", "is already verified"));
        }
        send_verification(&state, &user.email).await
    };
    after(&state, &id, outcome.await, ConsoleNotice::VerificationSent).await
}

async fn unlock(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Response {
    let outcome = async { state.users.unlock(&user_id(&id)?, &caller).await };
    after(&state, &id, outcome.await, ConsoleNotice::Unlocked).await
}

#[derive(Deserialize)]
struct SessionForm {
    session: Option<String>,
}

async fn end_session(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    Form(form): Form<SessionForm>,
) -> Response {
    let outcome = async {
        let handle = SessionHandle::parse("session", form.session)?;
        state
            .users
            .revoke_session(&user_id(&id)?, &handle, &caller)
            .await
    };
    after(&state, &id, outcome.await, ConsoleNotice::SessionEnded).await
}

async fn end_sessions(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Response {
    let outcome = async { state.users.logout_all(&user_id(&id)?, None, &caller).await };
    after(&state, &id, outcome.await, ConsoleNotice::SessionsEnded).await
}

async fn reset_factors(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Response {
    let outcome = async {
        state
            .users
            .reset_second_factors(&user_id(&id)?, &caller)
            .await
    };
    after(&state, &id, outcome.await, ConsoleNotice::FactorsReset).await
}

/// `GET /admin/users/{id}/delete`: what deleting does, and the confirmation.
async fn delete_page(State(state): State<AppState>, _: Viewer, Path(id): Path<String>) -> Response {
    let read = async { state.users.read(&AccountKey::Id(user_id(&id)?)).await };
    match read.await {
        Ok(user) => pages::delete(&user, None).render(&state, StatusCode::OK),
        Err(err) => pages::failure(&message_of(&state, &err)).render(&state, status_of(&err)),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    /// The username, typed again.
    confirm: Option<String>,
}

/// `POST /admin/users/{id}/delete`: deletes the user when the confirmation is their
/// username.
async fn delete(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    let read = async {
        let id = user_id(&id)?;
        state
            .users
            .read(&AccountKey::Id(id.clone()))
            .await
            .map(|user| (id, user))
    };
    let (id, user) = match read.await {
        Ok(found) => found,
        Err(err) => {
            return pages::failure(&message_of(&state, &err)).render(&state, status_of(&err))
        }
    };
    let outcome = if form.confirm.as_deref().map(str::trim) == Some(user.username.as_str()) {
        state.users.delete(&id, &caller).await
    } else {
        Err(Error::invalid(
            "confirm",
            "must be the user's username, typed again",
        ))
    };
    match outcome {
        Ok(()) => see_other(
            &state,
            &format!("/admin/users?notice={}", ConsoleNotice::Deleted.as_query()),
        ),
        Err(err) => {
            let message = message_of(&state, &err);
            pages::delete(&user, Some(&message)).render(&state, status_of(&err))
        }
    }
}
