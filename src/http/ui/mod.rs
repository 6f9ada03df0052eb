//! The browser's side of the service: `/micro.js` and the hosted pages under `/ui/`.
//!
//! The pages are server-rendered forms that work without JavaScript. They call the same
//! core as the API, so the rules, the limits and the error texts are the same. A
//! signed-in browser holds its session in an `HttpOnly` cookie ([`super::cookie`]);
//! every form post must come from a page the guard lets act with that cookie
//! (`Guard::cookie_allowed`), whether or not it carries one, so that no other site can
//! sign a browser in, out, or change its account.

mod pages;

use std::sync::LazyLock;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_http::set_header::SetResponseHeaderLayer;

use super::access::Caller;
use super::cookie::{clear_session, session_cookie, set_session, CookieNames};
use super::error::{status_of, WireError};
use super::tenants::is_browser_page;
use super::AppState;
use crate::core::users::{DisableProof, Requester};
use crate::domain::{
    reset_expiration, sha256_hex, AccountChanges, AccountKey, Email, LoginName, MagicLinkTarget,
    MailText, NewAccount, Password, PasswordChange, PasswordReset, RedirectUrl, SecondStep,
    SecretToken, Session, SessionHandle, TotpCode, UserId,
};
use crate::error::Error;
pub(crate) use pages::{document, field, when, Frame};
use pages::{Notice, Page};

/// Where magic links point: `<public URL>/ui/magic/<token>`.
pub const MAGIC_LINK_PREFIX: &str = "/ui/magic/";

/// The Micro.js-compatible client script.
pub const MICRO_JS: &str = include_str!("../assets/micro.js");
/// The pages' own stylesheet.
const STYLE_CSS: &str = include_str!("style.css");
/// The pages' passkey buttons (over Micro.js).
const PASSKEYS_JS: &str = include_str!("passkeys.js");

/// What operators set for the pages (`--ui-*`).
#[derive(Debug, Clone, Default)]
pub struct UiSettings {
    /// The name shown at the top of every page and in its title.
    pub title: String,
    /// The operator's stylesheet, served at `/ui/brand.css` after the pages' own.
    pub stylesheet: Option<Asset>,
    /// The operator's logo, served at `/ui/logo`.
    pub logo: Option<Asset>,
    /// Set the cookie `Secure` (the public address is https).
    pub secure_cookies: bool,
    /// Origins a return address may point at besides the service's own: the redirect
    /// allow-list and the credentialed origins.
    pub return_origins: Vec<String>,
    /// With tenants, the tenant these pages serve: a browser opens a page without the
    /// Micro-Namespace header, so every link, form and redirect of a tenant's pages (and
    /// of its console) names it in the query (`namespace=`), which the dispatch reads on
    /// `/ui/` and `/admin` paths.
    pub tenant: Option<String>,
    /// The names of the browser's cookies for these pages (a tenant's own).
    pub cookies: CookieNames,
}

/// The files under `/ui/` that every tenant's pages share (a tenant may have a look of
/// its own: `/ui/brand.css` and `/ui/logo` are its).
const SHARED_FILES: &[&str] = &["/ui/style.css", "/ui/passkeys.js"];

impl UiSettings {
    /// The same settings for the pages of `tenant`.
    pub fn for_tenant(&self, tenant: &str) -> Self {
        Self {
            tenant: Some(tenant.to_string()),
            cookies: CookieNames::of_tenant(tenant),
            ..self.clone()
        }
    }

    /// `to`, an address of these pages or of the console (`/ui/...`, `/admin/...`, with
    /// or without a query), naming their tenant when they serve one; any other address
    /// as it is. `amp` joins a query's parameters: `&`, or `&amp;` inside HTML.
    fn tenant_url(&self, to: &str, amp: &str) -> String {
        let Some(tenant) = &self.tenant else {
            return to.to_string();
        };
        let path = to.split(['?', '#']).next().unwrap_or_default();
        if !is_browser_page(path) || SHARED_FILES.contains(&path) {
            return to.to_string();
        }
        let (before, fragment) = to.split_once('#').map_or((to, ""), |(b, f)| (b, f));
        let joiner = if before.contains('?') { amp } else { "?" };
        let fragment = if fragment.is_empty() {
            String::new()
        } else {
            format!("#{fragment}")
        };
        format!("{before}{joiner}namespace={tenant}{fragment}")
    }

    /// An address of these pages for a redirect or a script: see [`Self::tenant_url`].
    pub fn page_url(&self, to: &str) -> String {
        self.tenant_url(to, "&")
    }

    /// A rendered page with every `href`, `action` and `src` that points at these pages
    /// or the console naming their tenant (the pages write their own addresses plain, as
    /// `/ui/...`). A form sent with GET, whose fields replace its action's query, gets
    /// the tenant as a hidden field.
    pub(crate) fn with_tenant_links(&self, html: String) -> String {
        let Some(tenant) = &self.tenant else {
            return html;
        };
        let field = format!(r#"<input type="hidden" name="namespace" value="{tenant}">"#);
        let mut html = html;
        let mut from = 0;
        while let Some(at) = html[from..].find("<form").map(|i| i + from) {
            let Some(end) = html[at..].find('>').map(|i| i + at + 1) else {
                break;
            };
            from = end;
            if html[at..end].contains(r#" method="get""#) {
                html.insert_str(end, &field);
                from += field.len();
            }
        }
        let mut out = String::with_capacity(html.len() + 256);
        let mut rest = html.as_str();
        while let Some(at) = ["href=\"", "action=\"", "src=\""]
            .iter()
            .filter_map(|attr| rest.find(attr).map(|i| (i, attr.len())))
            .min()
        {
            let (start, len) = at;
            let value_start = start + len;
            let Some(value_len) = rest[value_start..].find('"') else {
                break;
            };
            out.push_str(&rest[..value_start]);
            out.push_str(&self.tenant_url(&rest[value_start..value_start + value_len], "&amp;"));
            rest = &rest[value_start + value_len..];
        }
        out.push_str(rest);
        out
    }
}

/// Everything the browser side serves.
pub fn routes() -> Router<AppState> {
    let pages = Router::new()
        .route(
            "/ui",
            get(|State(state): State<AppState>| async move { see_other(&state, "/ui/account") }),
        )
        .route("/ui/style.css", get(style_css))
        .route("/ui/brand.css", get(brand_css))
        .route("/ui/logo", get(logo))
        .route("/ui/session", get(session_json))
        .route("/ui/signout", post(sign_out))
        .route("/ui/signin", get(sign_in_page).post(sign_in))
        .route("/ui/signin/code", post(sign_in_code))
        .route("/ui/signin/passkey", post(sign_in_passkey))
        .route("/ui/passkeys.js", get(passkeys_js))
        .route("/ui/signup", get(sign_up_page).post(sign_up))
        .route("/ui/forgot", get(forgot_page).post(forgot))
        .route("/ui/reset", get(reset_page).post(reset))
        .route("/ui/magic", get(magic_page).post(magic))
        .route("/ui/magic/{token}", get(magic_landing).post(magic_sign_in))
        .route("/ui/verified", get(verified))
        .route("/ui/account", get(account_page))
        .route("/ui/account/profile", post(update_profile))
        .route("/ui/account/password", post(change_password))
        .route("/ui/account/totp/start", post(totp_start))
        .route("/ui/account/totp/confirm", post(totp_confirm))
        .route("/ui/account/totp/disable", post(totp_disable))
        .route("/ui/account/passkeys/rename", post(rename_passkey))
        .route("/ui/account/passkeys/delete", post(delete_passkey))
        .route("/ui/sessions", get(sessions_page))
        .route("/ui/sessions/revoke", post(revoke_session))
        .route("/ui/sessions/revoke-all", post(revoke_all));
    page_headers(pages).route("/micro.js", get(micro_js))
}

/// The headers of every page, the console's included: no page may be framed by another
/// (clickjacking), load from another host, run a script of another host or an inline
/// one, or tell another site where the user was (a magic link's page holds its token in
/// its address).
pub(crate) fn page_headers(pages: Router<AppState>) -> Router<AppState> {
    pages
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                 img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            // Not `no-referrer`: under it browsers send `Origin: null` with the pages'
            // own form posts, which the guard must then refuse.
            HeaderValue::from_static("same-origin"),
        ))
}

/// The browser side's routes that scripts call, which `openapi.yaml` documents (the
/// HTML pages are not an API and are not in it).
pub const API_GET_PATHS: &[&str] = &["/micro.js", "/ui/session"];
pub const API_POST_PATHS: &[&str] = &["/ui/signout"];

/// A file served as it is, with its type and an `ETag` of its content, both worked out
/// once: browsers revalidate it (`no-cache`) and get 304 while it is unchanged.
#[derive(Debug, Clone)]
pub struct Asset {
    content_type: &'static str,
    bytes: Bytes,
    etag: String,
}

impl Asset {
    pub fn new(content_type: &'static str, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let etag = format!("\"{}\"", &sha256_hex(&bytes)[..24]);
        Self {
            content_type,
            bytes,
            etag,
        }
    }

    fn serve(&self, headers: &HeaderMap) -> Response {
        let fresh = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == self.etag));
        let common = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, "no-cache".to_string()),
        ];
        if fresh {
            (StatusCode::NOT_MODIFIED, common).into_response()
        } else {
            (
                common,
                [(header::CONTENT_TYPE, self.content_type)],
                self.bytes.clone(),
            )
                .into_response()
        }
    }
}

static MICRO_JS_ASSET: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/javascript; charset=utf-8", MICRO_JS.as_bytes()));
static PASSKEYS_JS_ASSET: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/javascript; charset=utf-8", PASSKEYS_JS.as_bytes()));
static STYLE_CSS_ASSET: LazyLock<Asset> =
    LazyLock::new(|| Asset::new("text/css; charset=utf-8", STYLE_CSS.as_bytes()));

async fn micro_js(headers: HeaderMap) -> Response {
    MICRO_JS_ASSET.serve(&headers)
}

async fn passkeys_js(headers: HeaderMap) -> Response {
    PASSKEYS_JS_ASSET.serve(&headers)
}

async fn style_css(headers: HeaderMap) -> Response {
    STYLE_CSS_ASSET.serve(&headers)
}

/// An operator's file (`--ui-stylesheet`, `--ui-logo`), or 404 when none is set.
fn operator_file(asset: Option<&Asset>, headers: &HeaderMap) -> Response {
    match asset {
        Some(asset) => asset.serve(headers),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn brand_css(State(state): State<AppState>, headers: HeaderMap) -> Response {
    operator_file(state.ui.stylesheet.as_ref(), &headers)
}

async fn logo(State(state): State<AppState>, headers: HeaderMap) -> Response {
    operator_file(state.ui.logo.as_ref(), &headers)
}

/// The browser's live session, read from its cookie (any method: reading a page is not
/// an act). None without a cookie or when the session ended.
async fn browser_session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, Error> {
    let Some(token) = session_cookie(headers, &state.ui.cookies) else {
        return Ok(None);
    };
    match state.users.read_session(token).await {
        Ok(session) => Ok(Some(session)),
        Err(Error::Unauthorized(_)) => Ok(None),
        Err(other) => Err(other),
    }
}

/// `GET /ui/session`: the signed-in user, for scripts (Micro.js); never the session id.
async fn session_json(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match browser_session(&state, &headers).await {
        Ok(Some(session)) => Json(json!({
            "user": {
                "id": session.user_id,
                "username": session.username,
                "email": session.email,
            },
            "expires": session.expires.to_string(),
        }))
        .into_response(),
        Ok(None) => WireError::new(
            "Session",
            StatusCode::UNAUTHORIZED,
            "this browser is not signed in",
        )
        .into_response(),
        Err(err) => WireError::from_error("Session", err).into_response(),
    }
}

/// A form post: its caller, which must come from a page that may act with the cookie,
/// and the browser's session, if it has a live one.
struct FormPost {
    requester: Requester,
    session: Option<Session>,
}

impl FromRequestParts<AppState> for FormPost {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if !state.guard.cookie_allowed(&parts.headers) {
            tracing::warn!(
                event = "request_refused",
                reason = "form post from another origin"
            );
            return Err(WireError::new(
                "Ui",
                StatusCode::FORBIDDEN,
                "this form must be sent from this service's own pages",
            )
            .into_response());
        }
        let session = match browser_session(state, &parts.headers).await {
            Ok(session) => session,
            Err(err) => return Err(failure(state, &parts.headers, err)),
        };
        let caller = match Caller::from_request_parts(parts, state).await {
            Ok(caller) => caller,
            Err(never) => match never {},
        };
        Ok(FormPost {
            requester: Requester {
                ip: caller.ip,
                trusted: false,
                session_user: session.as_ref().map(|s| s.user_id.clone()),
                session: session.as_ref().map(|s| s.id.digest()),
                user_agent: caller
                    .user_agent
                    .and_then(|v| v.to_str().ok().map(str::to_owned)),
                request_id: caller.request_id,
                admin: false,
            },
            session,
        })
    }
}

/// The text a page shows for an error: the API's own, except for faults of ours.
fn message_of(err: &Error) -> String {
    match err {
        Error::Internal(_) => "something went wrong on our side; try again later".to_string(),
        other => other.to_string(),
    }
}

/// A page shown again with the error above its form, with the API's status (and
/// `Retry-After` when limited).
fn with_error(state: &AppState, page: Page, err: &Error) -> Response {
    if matches!(err, Error::Internal(_) | Error::Unavailable { .. }) {
        tracing::error!(error = ?err, "a page could not be served");
    }
    let mut response = (
        status_of(err),
        page.error(message_of(err)).render(&state.ui),
    )
        .into_response();
    if let Error::TooManyRequests { retry_after } = err {
        if let Ok(value) = HeaderValue::from_str(&retry_after.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
    }
    response
}

/// Whether a script asked for JSON (Micro.js does) rather than a page.
fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// A failed form post: the Micro error for a script that asked for JSON, else a page.
fn failure(state: &AppState, headers: &HeaderMap, err: Error) -> Response {
    if wants_json(headers) {
        WireError::from_error("Ui", err).into_response()
    } else {
        error_page(state, &err)
    }
}

fn error_page(state: &AppState, err: &Error) -> Response {
    with_error(state, Page::plain("Something went wrong"), err)
}

/// A redirect to `to`, which names the pages' tenant when it is one of the pages.
fn see_other(state: &AppState, to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, state.ui.page_url(to))],
    )
        .into_response()
}

/// A redirect that also sets (or clears) the session cookie.
fn see_other_with_cookie(state: &AppState, to: &str, cookie: Option<HeaderValue>) -> Response {
    let mut response = see_other(state, to);
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn signed_in(state: &AppState, session: &Session, to: &str) -> Response {
    see_other_with_cookie(
        state,
        to,
        set_session(
            &state.ui.cookies,
            &session.id,
            session.expires.saturating_sub(session.created).max(0),
            state.ui.secure_cookies,
        ),
    )
}

/// Where to send the browser after signing in: the return address when it points at
/// this service or an origin the operator allowed, else the account page.
fn return_address(state: &AppState, return_to: Option<&str>) -> String {
    return_to
        .filter(|to| !to.is_empty())
        .and_then(|to| RedirectUrl::parse("return_to", Some(to.to_string())).ok())
        .filter(|url| {
            let origin = url.origin();
            state.users.is_own_origin(&origin) || state.ui.return_origins.contains(&origin)
        })
        .map(|url| url.as_str().to_string())
        .unwrap_or_else(|| state.ui.page_url("/ui/account"))
}

#[derive(Deserialize, Default)]
struct NoticeQuery {
    notice: Option<String>,
    return_to: Option<String>,
    email: Option<String>,
    failed: Option<String>,
}

async fn sign_in_page(State(state): State<AppState>, Query(q): Query<NoticeQuery>) -> Response {
    Page::sign_in(q.return_to.as_deref(), None)
        .notice(Notice::from_query(q.notice.as_deref()))
        .render(&state.ui)
        .into_response()
}

#[derive(Deserialize)]
struct SignInForm {
    login: Option<String>,
    password: Option<String>,
    return_to: Option<String>,
}

async fn sign_in(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<SignInForm>,
) -> Response {
    let login = form.login.clone().unwrap_or_default();
    let page = Page::sign_in(form.return_to.as_deref(), Some(&login));
    let name = if login.contains('@') {
        LoginName::parse(None, Some(login.clone()))
    } else {
        LoginName::parse(Some(login.clone()), None)
    };
    let attempt = async {
        let name = name?;
        let password = Password::candidate("password", form.password)?;
        state.users.login(name, password, &post.requester).await
    };
    match attempt.await {
        Ok(session) => {
            let to = return_address(&state, form.return_to.as_deref());
            signed_in(&state, &session, &to)
        }
        Err(err) => second_step_or(&state, page, err, form.return_to.as_deref()),
    }
}

#[derive(Deserialize)]
struct PasskeySignInBody {
    challenge_id: Option<String>,
    credential: Option<serde_json::Value>,
    return_to: Option<String>,
}

/// `POST /ui/signin/passkey` (JSON, from Micro.passkeys.signIn): the second step of a
/// passkey ceremony, which sets the session cookie; answers the user, the session's
/// expiry and where to go next.
async fn sign_in_passkey(
    State(state): State<AppState>,
    post: FormPost,
    Json(body): Json<PasskeySignInBody>,
) -> Response {
    let attempt = async {
        let challenge = SecretToken::parse("challenge_id", body.challenge_id)?;
        let credential = body
            .credential
            .ok_or_else(|| Error::required("credential"))?;
        state
            .users
            .finish_passkey_sign_in(challenge, credential, &post.requester)
            .await
    };
    match attempt.await {
        Ok(session) => {
            let redirect = return_address(&state, body.return_to.as_deref());
            let cookie = set_session(
                &state.ui.cookies,
                &session.id,
                session.expires.saturating_sub(session.created).max(0),
                state.ui.secure_cookies,
            );
            let mut response = Json(json!({
                "user": {"id": session.user_id, "username": session.username, "email": session.email},
                "expires": session.expires.to_string(),
                "redirect": redirect,
            }))
            .into_response();
            if let Some(cookie) = cookie {
                response.headers_mut().insert(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(err) => WireError::from_error("Ui", err).into_response(),
    }
}

/// The page of the second step when the first one asked for it; else `page` with the
/// error.
fn second_step_or(state: &AppState, page: Page, err: Error, return_to: Option<&str>) -> Response {
    match err {
        Error::SecondFactorRequired { challenge, .. } => {
            Page::second_step(secrecy::ExposeSecret::expose_secret(&challenge), return_to)
                .render(&state.ui)
                .into_response()
        }
        err => with_error(state, page, &err),
    }
}

#[derive(Deserialize)]
struct CodeForm {
    challenge_id: Option<String>,
    code: Option<String>,
    return_to: Option<String>,
}

/// The second step's form: a TOTP code (six digits) or a recovery code, in one field.
async fn sign_in_code(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<CodeForm>,
) -> Response {
    let challenge = form.challenge_id.clone().unwrap_or_default();
    let page = Page::second_step(&challenge, form.return_to.as_deref());
    let attempt = async {
        let challenge = SecretToken::parse("challenge_id", form.challenge_id)?;
        let code = form.code.unwrap_or_default();
        let digits = code.chars().filter(|c| !c.is_whitespace()).count()
            == crate::domain::TOTP_DIGITS
            && code
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_whitespace());
        let step = if digits {
            SecondStep::Totp(TotpCode::parse("code", Some(code))?)
        } else {
            SecondStep::parse(None, Some(code))?
        };
        state
            .users
            .login_mfa(challenge, step, &post.requester)
            .await
    };
    match attempt.await {
        Ok(session) => {
            let to = return_address(&state, form.return_to.as_deref());
            signed_in(&state, &session, &to)
        }
        Err(err) => with_error(&state, page, &err),
    }
}

async fn sign_up_page(State(state): State<AppState>) -> Response {
    if !state.access.allows("Create", false) {
        return Page::signup_closed().render(&state.ui).into_response();
    }
    Page::sign_up(None, None).render(&state.ui).into_response()
}

#[derive(Deserialize)]
struct SignUpForm {
    username: Option<String>,
    email: Option<String>,
    password: Option<String>,
}

/// Text of the e-mails the pages send; `$micro_verification_link` and `$code` are
/// replaced by the core.
const VERIFY_TEXT: &str = "Welcome! Confirm your e-mail address by opening this link:\n\n$micro_verification_link\n\nIf you did not sign up, ignore this e-mail.";
const RESET_TEXT: &str = "Your password reset code is $code\n\nEnter it on the page where you asked for it. If you did not ask, ignore this e-mail: your password stays as it is.";
const MAGIC_TEXT: &str = "Open this link to sign in:\n\n$micro_verification_link\n\nIf you did not ask for it, ignore this e-mail.";

async fn sign_up(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<SignUpForm>,
) -> Response {
    if !state.access.allows("Create", false) {
        return (
            StatusCode::FORBIDDEN,
            Page::signup_closed().render(&state.ui),
        )
            .into_response();
    }
    let page = Page::sign_up(form.username.as_deref(), form.email.as_deref());
    let password = form.password.clone();
    let created = async {
        let account = NewAccount::parse(
            None,
            form.username.clone(),
            form.email.clone(),
            form.password,
            None,
        )?;
        let user = state.users.create(account, post.requester.clone()).await?;
        let session = state
            .users
            .login(
                LoginName::parse(Some(user.username.clone()), None)?,
                Password::candidate("password", password)?,
                &post.requester,
            )
            .await?;
        Ok::<_, Error>((user, session))
    };
    let (user, session) = match created.await {
        Ok(done) => done,
        Err(err) => return with_error(&state, page, &err),
    };
    // A failure is logged: the account page offers to send it again.
    if let Err(err) = send_verification(&state, &user.email).await {
        tracing::warn!(error = %err, "the verification e-mail of a sign-up was not queued");
    }
    signed_in(&state, &session, "/ui/account?notice=welcome")
}

/// E-mails a verification link that lands on `/ui/verified` (after a sign-up, and from
/// the console).
pub(crate) async fn send_verification(state: &AppState, email: &str) -> Result<(), Error> {
    let base = state.users.public_url().trim_end_matches('/').to_string();
    let page = |path: &str| format!("{base}{}", state.ui.page_url(path));
    let sent = async {
        let email = Email::parse(Some(email.to_string()))?;
        let text = MailText::parse(None, Some(VERIFY_TEXT.to_string()), None)?;
        let redirect = RedirectUrl::parse("redirect_url", Some(page("/ui/verified")))?;
        let failure =
            RedirectUrl::parse("failure_redirect_url", Some(page("/ui/verified?failed=1")))?;
        state
            .users
            .send_verification_email(email, text, redirect, failure)
            .await
    };
    sent.await
}

async fn forgot_page(State(state): State<AppState>) -> Response {
    Page::forgot(None).render(&state.ui).into_response()
}

#[derive(Deserialize)]
struct EmailForm {
    email: Option<String>,
}

async fn forgot(
    State(state): State<AppState>,
    _post: FormPost,
    Form(form): Form<EmailForm>,
) -> Response {
    let page = Page::forgot(form.email.as_deref());
    let sent = async {
        let email = Email::parse(form.email.clone())?;
        let text = MailText::parse(None, Some(RESET_TEXT.to_string()), None)?;
        state
            .users
            .send_password_reset_email(email.clone(), text, reset_expiration(None)?)
            .await?;
        Ok::<_, Error>(email)
    };
    match sent.await {
        Ok(email) => see_other(
            &state,
            &format!(
                "/ui/reset?notice=code-sent&email={}",
                url::form_urlencoded::byte_serialize(email.as_str().as_bytes()).collect::<String>()
            ),
        ),
        Err(err) => with_error(&state, page, &err),
    }
}

async fn reset_page(State(state): State<AppState>, Query(q): Query<NoticeQuery>) -> Response {
    Page::reset(q.email.as_deref())
        .notice(Notice::from_query(q.notice.as_deref()))
        .render(&state.ui)
        .into_response()
}

#[derive(Deserialize)]
struct ResetForm {
    email: Option<String>,
    code: Option<String>,
    new_password: Option<String>,
    confirm_password: Option<String>,
}

async fn reset(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<ResetForm>,
) -> Response {
    let page = Page::reset(form.email.as_deref());
    let done = async {
        let reset = PasswordReset::parse(
            form.email.clone(),
            form.code,
            form.new_password,
            form.confirm_password,
        )?;
        state.users.reset_password(reset, &post.requester).await
    };
    match done.await {
        Ok(()) => see_other(&state, "/ui/signin?notice=password-reset"),
        Err(err) => with_error(&state, page, &err),
    }
}

async fn magic_page(State(state): State<AppState>) -> Response {
    Page::magic(None).render(&state.ui).into_response()
}

async fn magic(
    State(state): State<AppState>,
    _post: FormPost,
    Form(form): Form<EmailForm>,
) -> Response {
    let page = Page::magic(form.email.as_deref());
    let base = format!(
        "{}/ui/magic",
        state.users.public_url().trim_end_matches('/')
    );
    // The landing page's address is `/ui/magic/<token>`, then the tenant's query.
    let query = state
        .ui
        .page_url("/ui/magic")
        .strip_prefix("/ui/magic")
        .unwrap_or_default()
        .to_string();
    let sent = async {
        let email = Email::parse(form.email.clone())?;
        let text = MailText::parse(None, Some(MAGIC_TEXT.to_string()), None)?;
        state
            .users
            .send_magic_link(email, text, MagicLinkTarget::own_page(&base, &query))
            .await
    };
    match sent.await {
        Ok(()) => Page::magic(form.email.as_deref())
            .notice(Some(Notice::MagicLinkSent))
            .render(&state.ui)
            .into_response(),
        Err(err) => with_error(&state, page, &err),
    }
}

/// The magic link's landing page: a button, so that a mail scanner that opens links
/// does not use the link up; the browser's click signs in.
async fn magic_landing(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    Page::magic_landing(&token)
        .render(&state.ui)
        .into_response()
}

async fn magic_sign_in(
    State(state): State<AppState>,
    post: FormPost,
    Path(token): Path<String>,
) -> Response {
    let page = Page::magic(None);
    let used = async {
        let token = SecretToken::parse("token", Some(token))?;
        state.users.verify_token(token, &post.requester).await
    };
    match used.await {
        Ok(crate::core::users::TokenCheck::Valid(session)) => {
            signed_in(&state, &session, "/ui/account")
        }
        Ok(crate::core::users::TokenCheck::Invalid(why)) => {
            with_error(&state, page, &Error::invalid("link", why))
        }
        Err(err) => second_step_or(&state, page, err, None),
    }
}

async fn verified(State(state): State<AppState>, Query(q): Query<NoticeQuery>) -> Response {
    Page::verified(q.failed.is_none())
        .render(&state.ui)
        .into_response()
}

/// The account a browser's session belongs to.
fn account_of(session: &Session) -> Result<UserId, Error> {
    UserId::parse("id", Some(session.user_id.clone()))
}

/// The signed-in browser's session, or a redirect to the sign-in page that comes back.
async fn require_session(
    state: &AppState,
    headers: &HeaderMap,
    back: &str,
) -> Result<Session, Response> {
    match browser_session(state, headers).await {
        Ok(Some(session)) => Ok(session),
        Ok(None) => Err(see_other(
            state,
            &format!("/ui/signin?return_to={}", own_url(state, back)),
        )),
        Err(err) => Err(error_page(state, &err)),
    }
}

/// `path` (one of the pages) on the service's public address, form-encoded for a query
/// string.
fn own_url(state: &AppState, path: &str) -> String {
    let url = format!(
        "{}{}",
        state.users.public_url().trim_end_matches('/'),
        state.ui.page_url(path)
    );
    url::form_urlencoded::byte_serialize(url.as_bytes()).collect()
}

async fn account_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let session = match require_session(&state, &headers, "/ui/account").await {
        Ok(session) => session,
        Err(response) => return response,
    };
    match account(&state, &session).await {
        Ok(page) => page
            .notice(Notice::from_query(q.notice.as_deref()))
            .render(&state.ui)
            .into_response(),
        Err(err) => error_page(&state, &err),
    }
}

/// The account page of the browser's user.
async fn account(state: &AppState, session: &Session) -> Result<Page, Error> {
    let id = account_of(session)?;
    let factors = state.users.second_factors(&id).await?;
    let passkeys = state.users.list_passkeys(&id).await?;
    let user = state.users.read(&AccountKey::Id(id)).await?;
    Ok(Page::account(&user, &factors, &passkeys))
}

#[derive(Deserialize)]
struct ProfileForm {
    username: Option<String>,
    email: Option<String>,
}

/// The account page again, for a form on it that failed.
async fn account_with_error(state: &AppState, session: &Session, err: &Error) -> Response {
    match account(state, session).await {
        Ok(page) => with_error(state, page, err),
        Err(other) => error_page(state, &other),
    }
}

async fn update_profile(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<ProfileForm>,
) -> Response {
    let Some(session) = post.session else {
        return see_other(&state, "/ui/signin");
    };
    let updated = async {
        let id = account_of(&session)?;
        post.requester.may_act_on(id.as_str())?;
        let changes = AccountChanges::parse(form.username, form.email, None)?;
        state.users.update(&id, changes, &post.requester).await
    };
    match updated.await {
        Ok(_) => see_other(&state, "/ui/account?notice=saved"),
        Err(err) => account_with_error(&state, &session, &err).await,
    }
}

#[derive(Deserialize)]
struct PasswordForm {
    old_password: Option<String>,
    new_password: Option<String>,
    confirm_password: Option<String>,
}

/// Changes the password, which ends every session of the user, this browser's too; the
/// browser is then signed in again with the new password, and the others stay out.
async fn change_password(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<PasswordForm>,
) -> Response {
    let Some(session) = post.session else {
        return see_other(&state, "/ui/signin");
    };
    let new_password = form.new_password.clone();
    let changed = async {
        let change = PasswordChange::parse(
            Some(session.user_id.clone()),
            form.old_password,
            form.new_password,
            form.confirm_password,
        )?;
        post.requester.may_act_on(change.user_id.as_str())?;
        state.users.update_password(change, &post.requester).await?;
        state
            .users
            .login(
                LoginName::parse(Some(session.username.clone()), None)?,
                Password::candidate("new_password", new_password)?,
                &post.requester,
            )
            .await
    };
    match changed.await {
        Ok(new_session) => signed_in(&state, &new_session, "/ui/account?notice=password-changed"),
        // The password is changed; with two-factor sign-in, this browser signs in again
        // with a code.
        Err(err @ Error::SecondFactorRequired { .. }) => {
            let mut response = second_step_or(&state, Page::plain("Enter your code"), err, None);
            response.headers_mut().insert(
                header::SET_COOKIE,
                clear_session(&state.ui.cookies, state.ui.secure_cookies),
            );
            response
        }
        Err(err) => account_with_error(&state, &session, &err).await,
    }
}

#[derive(Deserialize)]
struct PasskeyForm {
    passkey: Option<String>,
    name: Option<String>,
}

async fn rename_passkey(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<PasskeyForm>,
) -> Response {
    let Some(session) = &post.session else {
        return see_other(&state, "/ui/signin");
    };
    let renamed = async {
        let id = account_of(session)?;
        let name =
            crate::core::users::passkey_name(Some(crate::domain::required("name", form.name)?))?;
        let passkey = crate::domain::required("passkey", form.passkey)?;
        state.users.rename_passkey(&id, &passkey, name).await
    };
    match renamed.await {
        Ok(()) => see_other(&state, "/ui/account?notice=saved"),
        Err(err) => account_with_error(&state, session, &err).await,
    }
}

async fn delete_passkey(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<PasskeyForm>,
) -> Response {
    let Some(session) = &post.session else {
        return see_other(&state, "/ui/signin");
    };
    let deleted = async {
        let id = account_of(session)?;
        let passkey = crate::domain::required("passkey", form.passkey)?;
        state
            .users
            .delete_passkey(&id, &passkey, &post.requester)
            .await
    };
    match deleted.await {
        Ok(()) => see_other(&state, "/ui/account?notice=passkey-deleted"),
        Err(err) => account_with_error(&state, session, &err).await,
    }
}

async fn totp_start(State(state): State<AppState>, post: FormPost) -> Response {
    let Some(session) = &post.session else {
        return see_other(&state, "/ui/signin");
    };
    match state.users.start_totp(&post.requester).await {
        Ok(enrolment) => Page::totp_enrol(&enrolment.secret, &enrolment.qr_svg)
            .render(&state.ui)
            .into_response(),
        Err(err) => account_with_error(&state, session, &err).await,
    }
}

#[derive(Deserialize)]
struct TotpForm {
    code: Option<String>,
}

async fn totp_confirm(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<TotpForm>,
) -> Response {
    let Some(session) = &post.session else {
        return see_other(&state, "/ui/signin");
    };
    let confirmed = async {
        let code = TotpCode::parse("code", form.code)?;
        state.users.confirm_totp(code, &post.requester).await
    };
    match confirmed.await {
        Ok(codes) => {
            let shown: Vec<String> = codes.iter().map(|c| c.display()).collect();
            Page::recovery_codes(&shown)
                .render(&state.ui)
                .into_response()
        }
        Err(err) => account_with_error(&state, session, &err).await,
    }
}

#[derive(Deserialize)]
struct TotpOffForm {
    totp_password: Option<String>,
}

async fn totp_disable(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<TotpOffForm>,
) -> Response {
    let Some(session) = &post.session else {
        return see_other(&state, "/ui/signin");
    };
    let disabled = async {
        let id = account_of(session)?;
        let password = Password::candidate("password", form.totp_password)?;
        state
            .users
            .disable_totp(&id, DisableProof::Password(password), &post.requester)
            .await
    };
    match disabled.await {
        Ok(()) => see_other(&state, "/ui/account?notice=totp-off"),
        Err(err) => account_with_error(&state, session, &err).await,
    }
}

async fn sessions_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let session = match require_session(&state, &headers, "/ui/sessions").await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let listed = async {
        let id = account_of(&session)?;
        state.users.list_sessions(&id).await
    };
    match listed.await {
        Ok(sessions) => Page::sessions(&sessions, &session.id.digest().handle())
            .notice(Notice::from_query(q.notice.as_deref()))
            .render(&state.ui)
            .into_response(),
        Err(err) => error_page(&state, &err),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    session: Option<String>,
}

async fn revoke_session(
    State(state): State<AppState>,
    post: FormPost,
    Form(form): Form<RevokeForm>,
) -> Response {
    let Some(session) = post.session else {
        return see_other(&state, "/ui/signin");
    };
    let revoked = async {
        let id = account_of(&session)?;
        let handle = SessionHandle::parse("session", form.session)?;
        state
            .users
            .revoke_session(&id, &handle, &post.requester)
            .await?;
        Ok::<_, Error>(handle == session.id.digest().handle())
    };
    match revoked.await {
        Ok(true) => see_other_with_cookie(
            &state,
            "/ui/signin?notice=signed-out",
            Some(clear_session(&state.ui.cookies, state.ui.secure_cookies)),
        ),
        Ok(false) => see_other(&state, "/ui/sessions?notice=session-ended"),
        Err(err) => error_page(&state, &err),
    }
}

async fn revoke_all(State(state): State<AppState>, post: FormPost) -> Response {
    let Some(session) = post.session else {
        return see_other(&state, "/ui/signin");
    };
    let ended = async {
        let id = account_of(&session)?;
        state.users.logout_all(&id, None, &post.requester).await
    };
    match ended.await {
        Ok(()) => see_other_with_cookie(
            &state,
            "/ui/signin?notice=signed-out-everywhere",
            Some(clear_session(&state.ui.cookies, state.ui.secure_cookies)),
        ),
        Err(err) => error_page(&state, &err),
    }
}

/// `POST /ui/signout`: ends this browser's session and forgets the cookie. A form gets
/// the sign-in page; a script (`Accept: application/json`, Micro.js) gets `{}`.
async fn sign_out(State(state): State<AppState>, headers: HeaderMap, post: FormPost) -> Response {
    let wants_json = wants_json(&headers);
    if let Some(session) = &post.session {
        if let Err(err) = state.users.logout(&session.id, &post.requester).await {
            return failure(&state, &headers, err);
        }
    }
    let cookie = clear_session(&state.ui.cookies, state.ui.secure_cookies);
    if wants_json {
        ([(header::SET_COOKIE, cookie)], Json(json!({}))).into_response()
    } else {
        see_other_with_cookie(&state, "/ui/signin?notice=signed-out", Some(cookie))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_pages_name_it_in_their_own_addresses_only() {
        let plain = UiSettings::default();
        assert_eq!(plain.page_url("/ui/account"), "/ui/account");
        let acme = plain.for_tenant("acme");
        for (to, named) in [
            ("/ui", "/ui?namespace=acme"),
            ("/ui/account", "/ui/account?namespace=acme"),
            (
                "/ui/account?notice=saved",
                "/ui/account?notice=saved&namespace=acme",
            ),
            ("/ui/sessions#list", "/ui/sessions?namespace=acme#list"),
            ("/ui/style.css", "/ui/style.css"),
            ("/ui/logo", "/ui/logo?namespace=acme"),
            ("/ui/passkeys.js", "/ui/passkeys.js"),
            ("/micro.js", "/micro.js"),
            ("/uix", "/uix"),
            (
                "https://app.example.com/ui/account",
                "https://app.example.com/ui/account",
            ),
            ("#main", "#main"),
        ] {
            assert_eq!(acme.page_url(to), named, "{to}");
        }
        let html = r##"<a href="#main">skip</a><link href="/ui/style.css"><form action="/ui/signin"></form><a href="/ui/account?notice=saved">x</a><a href="https://elsewhere/ui/x">y</a>"##;
        assert_eq!(
            acme.with_tenant_links(html.to_string()),
            r##"<a href="#main">skip</a><link href="/ui/style.css"><form action="/ui/signin?namespace=acme"></form><a href="/ui/account?notice=saved&amp;namespace=acme">x</a><a href="https://elsewhere/ui/x">y</a>"##
        );
        assert_eq!(plain.with_tenant_links(html.to_string()), html);
        let search = r#"<form class="search" method="get" action="/admin/users"><input name="q"></form><form method="post" action="/admin/signout"></form>"#;
        assert_eq!(
            acme.with_tenant_links(search.to_string()),
            r#"<form class="search" method="get" action="/admin/users?namespace=acme"><input type="hidden" name="namespace" value="acme"><input name="q"></form><form method="post" action="/admin/signout?namespace=acme"></form>"#
        );
        assert_eq!(
            acme.page_url("/admin?signed-out"),
            "/admin?signed-out&namespace=acme"
        );
    }
}
