//! The HTTP surface: routes, middleware and the two wire surfaces, Micro `users`
//! (`/users/Users/<Method>`) and M3O's User API (`/v1/user/<Method>`). Both call the same
//! [`methods`] on the same core; only the answers' shapes differ.

pub mod access;
pub mod connection;
pub mod console;
pub mod cookie;
pub mod error;
pub mod guard;
pub mod health;
pub mod json;
pub mod m3o;
pub mod methods;
pub mod micro;
pub mod request_id;
pub mod tenants;
pub mod ui;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use crate::domain::EventKind;
use crate::domain::TenantName;
use crate::log_line::{self, LoggedPath, RequestFields};
use crate::metrics::{Metrics, RouteFamily, RouteLabels, Scrape};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use request_id::RequestId;
use serde::Serialize;
use std::collections::HashMap;
use tenants::{NoTenant, TenantSelection};
use tower::ServiceExt;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::core::users::{Requester, Users};
use crate::error::Error;
use access::{AccessPolicy, Caller};
use error::WireError;
use guard::Guard;
use ipnet::IpNet;
use m3o::M3o;
use methods::RpcMethod;
use micro::Micro;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest accepted body of the methods that carry a profile (Create, Update): a full
/// profile, 64 keys with 4 KiB values, written as plain JSON, fits with room to spare.
pub const PROFILE_BODY_BYTES: usize = 320 * 1024;

/// Prefix of the Micro RPC routes.
pub const RPC_PREFIX: &str = "/users/Users/";
/// Prefix of the M3O User API routes.
pub const M3O_PREFIX: &str = "/v1/user/";
/// Where verification links point (`GET`, opened by the user's browser).
pub const VERIFY_PATH: &str = "/v1/user/verify";

/// A wire surface: where its routes live and the service name its errors carry
/// (`users.Create` on Micro, `user.Create` on M3O).
pub trait Surface: Send + Sync + 'static {
    const SERVICE: &'static str;
    const PREFIX: &'static str;
}

/// How a surface writes the answer of method `M`.
pub trait Answer<M: RpcMethod>: Surface {
    type Response: Serialize + Send;
    fn answer(output: M::Output) -> Self::Response;
}

/// Lists the methods a surface answers and the response type of each, which is built
/// from the core's output with `From`.
macro_rules! answers {
    ($surface:ident { $($method:ident => $response:ty),+ $(,)? }) => {
        $(
            impl $crate::http::Answer<$method> for $surface {
                type Response = $response;
                fn answer(output: <$method as $crate::http::methods::RpcMethod>::Output) -> $response {
                    output.into()
                }
            }
        )+
    };
}
pub(crate) use answers;

/// `{"session": ...}` on both surfaces; `V` is the surface's session view.
#[derive(Serialize)]
pub struct SessionResponse<V> {
    pub session: V,
}

impl<V: From<crate::domain::Session>> From<crate::domain::Session> for SessionResponse<V> {
    fn from(session: crate::domain::Session) -> Self {
        Self {
            session: session.into(),
        }
    }
}

/// VerifyToken's answer on both surfaces: 200 whether or not the token was good, with
/// `is_valid` saying which; `V` is the surface's session view.
#[derive(Serialize)]
pub struct VerifyTokenResponse<V> {
    pub is_valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<V>,
    pub message: String,
}

impl<V: From<crate::domain::Session>> From<crate::core::users::TokenCheck>
    for VerifyTokenResponse<V>
{
    fn from(check: crate::core::users::TokenCheck) -> Self {
        match check {
            crate::core::users::TokenCheck::Valid(session) => Self {
                is_valid: true,
                session: Some(session.into()),
                message: String::new(),
            },
            crate::core::users::TokenCheck::Invalid(why) => Self {
                is_valid: false,
                session: None,
                message: why.to_string(),
            },
        }
    }
}

/// ListAuditEvents' answer on both surfaces: newest first; `next` is the `before` of
/// the next page, absent on the last one.
#[derive(Serialize)]
pub struct AuditEventsResponse {
    pub events: Vec<AuditEventView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<json::Int64>,
}

#[derive(Serialize)]
pub struct AuditEventView {
    pub id: json::Int64,
    pub at: json::Int64,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub outcome: String,
    pub actor: String,
}

impl From<crate::domain::AuditEvent> for AuditEventView {
    fn from(e: crate::domain::AuditEvent) -> Self {
        Self {
            id: json::Int64(e.id),
            at: json::Int64(e.at),
            kind: e.kind,
            user_id: e.user_id,
            client_ip: e.client_ip,
            request_id: e.request_id,
            outcome: e.outcome,
            actor: e.actor,
        }
    }
}

impl From<crate::domain::AuditPage> for AuditEventsResponse {
    fn from(page: crate::domain::AuditPage) -> Self {
        Self {
            events: page.events.into_iter().map(Into::into).collect(),
            next: page.next.map(json::Int64),
        }
    }
}

/// ListSessions' answer on both surfaces.
#[derive(Serialize)]
pub struct SessionsResponse {
    pub sessions: Vec<SessionItem>,
}

/// One of a user's sessions: a handle to revoke it by, never its id.
#[derive(Serialize)]
pub struct SessionItem {
    pub session: String,
    pub created: json::Int64,
    pub expires: json::Int64,
    /// When it last signed a request of its own user's (to the minute), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<json::Int64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// How it was signed in: `password` or `magic_link` (absent for sessions made
    /// before this was recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'static str>,
    /// The second factor its sign-in took: `totp` or `recovery_code`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub second_factor: Option<&'static str>,
}

impl From<Vec<crate::store::SessionDetails>> for SessionsResponse {
    fn from(sessions: Vec<crate::store::SessionDetails>) -> Self {
        Self {
            sessions: sessions
                .into_iter()
                .map(|s| SessionItem {
                    session: s.handle.as_str().to_owned(),
                    created: json::Int64(s.created),
                    expires: json::Int64(s.expires),
                    last_seen: s.last_seen.map(json::Int64),
                    client_ip: s.client_ip,
                    user_agent: s.user_agent,
                    method: s.sign_in.map(|i| i.method.as_str()),
                    second_factor: s
                        .sign_in
                        .and_then(|i| i.second_factor)
                        .map(crate::domain::SecondFactor::as_str),
                })
                .collect(),
        }
    }
}

/// StartTotp's answer on both surfaces.
#[derive(Serialize)]
pub struct TotpEnrolmentResponse {
    /// The secret in base32, to type into an authenticator app by hand.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub uri: String,
    /// The QR code, an SVG document.
    pub qr_svg: String,
}

impl From<crate::core::totp::Enrolment> for TotpEnrolmentResponse {
    fn from(e: crate::core::totp::Enrolment) -> Self {
        Self {
            secret: e.secret,
            uri: e.uri,
            qr_svg: e.qr_svg,
        }
    }
}

/// The first step of a passkey ceremony, on both surfaces.
#[derive(Serialize)]
pub struct CeremonyResponse {
    /// Names the ceremony in its second step.
    pub challenge_id: String,
    pub challenge_expires: json::Int64,
    /// What `navigator.credentials.create` or `.get` takes (`{"publicKey": ...}`), with
    /// binary values in base64url.
    pub options: serde_json::Value,
}

impl From<crate::core::users::Ceremony> for CeremonyResponse {
    fn from(c: crate::core::users::Ceremony) -> Self {
        Self {
            challenge_id: c.challenge.expose().to_owned(),
            challenge_expires: json::Int64(c.expires),
            options: c.options,
        }
    }
}

/// A passkey as its user sees it.
#[derive(Serialize)]
pub struct PasskeyView {
    pub id: String,
    pub name: String,
    pub created: json::Int64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used: Option<json::Int64>,
}

impl From<crate::core::users::PasskeyInfo> for PasskeyView {
    fn from(p: crate::core::users::PasskeyInfo) -> Self {
        Self {
            id: p.id,
            name: p.name,
            created: json::Int64(p.created),
            last_used: p.last_used.map(json::Int64),
        }
    }
}

#[derive(Serialize)]
pub struct PasskeyResponse {
    pub passkey: PasskeyView,
}

impl From<crate::core::users::PasskeyInfo> for PasskeyResponse {
    fn from(p: crate::core::users::PasskeyInfo) -> Self {
        Self { passkey: p.into() }
    }
}

#[derive(Serialize)]
pub struct PasskeysResponse {
    pub passkeys: Vec<PasskeyView>,
}

impl From<Vec<crate::core::users::PasskeyInfo>> for PasskeysResponse {
    fn from(keys: Vec<crate::core::users::PasskeyInfo>) -> Self {
        Self {
            passkeys: keys.into_iter().map(Into::into).collect(),
        }
    }
}

/// ConfirmTotp's answer: the recovery codes, shown this once.
#[derive(Serialize)]
pub struct RecoveryCodesResponse {
    pub recovery_codes: Vec<String>,
}

impl From<Vec<crate::domain::RecoveryCode>> for RecoveryCodesResponse {
    fn from(codes: Vec<crate::domain::RecoveryCode>) -> Self {
        Self {
            recovery_codes: codes
                .iter()
                .map(crate::domain::RecoveryCode::display)
                .collect(),
        }
    }
}

/// ReadSecondFactors' answer.
#[derive(Serialize)]
pub struct SecondFactorsResponse {
    /// Whether sign-in asks for a TOTP code.
    pub totp: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totp_since: Option<json::Int64>,
    /// An enrolment was started and awaits its first code.
    pub totp_pending: bool,
    pub recovery_codes_left: json::Int64,
}

impl From<crate::core::users::SecondFactors> for SecondFactorsResponse {
    fn from(f: crate::core::users::SecondFactors) -> Self {
        Self {
            totp: f.totp_since.is_some(),
            totp_since: f.totp_since.map(json::Int64),
            totp_pending: f.totp_pending,
            recovery_codes_left: json::Int64(f.recovery_codes_left),
        }
    }
}

/// The OpenAPI document, served as is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// What the handlers share, behind one `Arc`: axum's `State` clones it for every
/// request, one reference count rather than one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct Shared {
    pub users: Arc<Users>,
    pub access: Arc<AccessPolicy>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// How long reading a request body, and then answering it, may each take.
    pub request_timeout: Duration,
    /// Which origins and hosts are let in, and which pages may act with the cookie.
    pub guard: Arc<Guard>,
    /// The hosted pages' settings.
    pub ui: Arc<ui::UiSettings>,
    /// The metrics this pool's core counts in.
    pub metrics: Arc<Metrics>,
    /// What `GET /metrics` writes: the service's whole metrics, every tenant's.
    pub scrape: Arc<Scrape>,
    /// Whether `/metrics` is served here (behind the admin key), rather than on its own
    /// address.
    pub metrics_on_main: bool,
    /// Every pool's core (one without tenants): the service is ready when all answer.
    pub everyone: Arc<Everyone>,
}

/// Every pool's core, as tenants come and go.
#[derive(Default)]
pub struct Everyone(std::sync::RwLock<Vec<Arc<Users>>>);

impl FromIterator<Arc<Users>> for Everyone {
    fn from_iter<I: IntoIterator<Item = Arc<Users>>>(iter: I) -> Self {
        Self(std::sync::RwLock::new(iter.into_iter().collect()))
    }
}

impl Everyone {
    pub fn set(&self, all: Vec<Arc<Users>>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = all;
    }

    pub fn all(&self) -> Vec<Arc<Users>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Declares the routes of each surface once: the router and the route lists both come
/// from here.
macro_rules! surface_routes {
    ($surface:ident, $names:ident, $routes:ident: $($method:ident),+ $(,)?) => {
        /// The methods this surface answers.
        pub const $names: &[&str] = &[$(<methods::$method as RpcMethod>::NAME),+];

        fn $routes() -> Router<AppState> {
            Router::new()
                $(.route(
                    &format!("{}{}", <$surface as Surface>::PREFIX, <methods::$method as RpcMethod>::NAME),
                    post(rpc::<$surface, methods::$method>),
                ))+
        }
    };
}

surface_routes!(Micro, MICRO_METHODS, micro_routes:
    Create, Read, Update, Delete, Search, UpdatePassword, Login, Logout, ReadSession,
    List, LogoutAll, SendVerificationEmail, VerifyEmail, SendPasswordResetEmail,
    ResetPassword, SendMagicLink, VerifyToken, ListSessions, RevokeSession, LoginMfa,
    ReadSecondFactors, StartTotp, ConfirmTotp, DisableTotp, ResetSecondFactors,
    StartPasskeyRegistration, FinishPasskeyRegistration, StartPasskeyLogin,
    FinishPasskeyLogin, ListPasskeys, RenamePasskey, DeletePasskey, ListAuditEvents,
);

surface_routes!(M3o, M3O_METHODS, m3o_routes:
    Create, Read, Update, Delete, List, Login, Logout, LogoutAll, ReadSession,
    UpdatePassword, SendVerificationEmail, VerifyEmail, SendPasswordResetEmail,
    ResetPassword, SendMagicLink, VerifyToken, ListSessions, RevokeSession, LoginMfa,
    ReadSecondFactors, StartTotp, ConfirmTotp, DisableTotp, ResetSecondFactors,
    StartPasskeyRegistration, FinishPasskeyRegistration, StartPasskeyLogin,
    FinishPasskeyLogin, ListPasskeys, RenamePasskey, DeletePasskey, ListAuditEvents,
);

/// Every RPC method name, on either surface: what the public-method setting may name.
pub const RPC_METHODS: &[&str] = MICRO_METHODS;

/// Every (verb, path) the router serves; the OpenAPI test holds the spec to this list.
pub fn served_routes() -> Vec<(axum::http::Method, String)> {
    let rpc = |prefix: &str, names: &[&str]| {
        names
            .iter()
            .map(|name| (axum::http::Method::POST, format!("{prefix}{name}")))
            .collect::<Vec<_>>()
    };
    let mut routes = rpc(RPC_PREFIX, MICRO_METHODS);
    routes.extend(rpc(M3O_PREFIX, M3O_METHODS));
    for path in [
        VERIFY_PATH,
        health::HEALTH_PATH,
        health::READY_PATH,
        health::LIVE_PATH,
        METRICS_PATH,
        "/openapi.yaml",
    ]
    .iter()
    .chain(ui::API_GET_PATHS)
    {
        routes.push((axum::http::Method::GET, path.to_string()));
    }
    for path in ui::API_POST_PATHS {
        routes.push((axum::http::Method::POST, path.to_string()));
    }
    routes
}

/// The whole application: the [`guard`] in front of the routes, which are there twice
/// over, with the CORS layer, for the requests that take part in CORS, and without it,
/// for all others.
///
/// A browser sends `Origin` with every cross-origin request and with every preflight
/// (`OPTIONS`); CORS headers mean nothing to a request without it (curl, a backend, an
/// SDK), and working them out costs tower-http's layer a header map, a joined `Vary`
/// value and their copies on every request: a tenth of a ReadSession's instructions
/// (docs/performance/page-cache-allocator-cors.md). Requests without `Origin` skip the layer, and their
/// answers carry the same `Vary` header the layer sets, so a cache keeps answers for
/// different origins apart either way.
pub struct App {
    pools: Pools,
    /// Answers the requests no tenant was found for, through the CORS layer.
    refusals: Router,
    guard: Arc<Guard>,
    /// Where requests that no pool answered are counted.
    metrics: Arc<Metrics>,
}

/// The routes over one user pool.
struct Pool {
    cors: Router,
    plain: Router,
    metrics: Arc<Metrics>,
}

enum Pools {
    One(Pool),
    /// `--tenancy namespace`: one pool per tenant, replaced whole when the tenants are
    /// reloaded.
    Tenants(std::sync::RwLock<Arc<TenantPools>>),
}

/// The tenants' pools; `first` answers the routes of the whole service that name no
/// tenant.
struct TenantPools {
    by_name: HashMap<TenantName, Pool>,
    first: Option<TenantName>,
    selection: TenantSelection,
}

impl TenantPools {
    fn new(tenants: Vec<(TenantName, AppState)>, selection: TenantSelection) -> Self {
        let first = tenants.first().map(|(name, _)| name.clone());
        let by_name: HashMap<TenantName, Pool> = tenants
            .into_iter()
            .map(|(name, state)| (name, Pool::new(state)))
            .collect();
        Self {
            by_name,
            first,
            selection,
        }
    }
}

impl App {
    /// One user pool. `guard` decides which origins and hosts are let in; the CORS
    /// layer answers every origin it let in.
    pub fn new(state: AppState) -> Self {
        let guard = state.guard.clone();
        let metrics = state.metrics.clone();
        Self {
            pools: Pools::One(Pool::new(state)),
            refusals: refusals(guard.clone()),
            guard,
            metrics,
        }
    }

    /// A pool per tenant, chosen per request by `selection`;
    /// `metrics` counts the requests no tenant was found for.
    pub fn with_tenants(
        tenants: Vec<(TenantName, AppState)>,
        selection: TenantSelection,
        guard: Arc<Guard>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pools: Pools::Tenants(std::sync::RwLock::new(Arc::new(TenantPools::new(
                tenants, selection,
            )))),
            refusals: refusals(guard.clone()),
            guard,
            metrics,
        }
    }

    /// From now on, these tenants (a reload added or removed some, or changed their
    /// keys or look); requests under way finish with the pools they began with. Without
    /// tenancy, nothing changes.
    pub fn set_tenants(&self, tenants: Vec<(TenantName, AppState)>, selection: TenantSelection) {
        if let Pools::Tenants(pools) = &self.pools {
            let fresh = Arc::new(TenantPools::new(tenants, selection));
            *pools
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        }
    }
}

/// The router of [`refused`].
fn refusals(guard: Arc<Guard>) -> Router {
    Router::new().fallback(refused).layer(cors(guard))
}

impl Pool {
    fn new(state: AppState) -> Self {
        let guard = state.guard.clone();
        let metrics = state.metrics.clone();
        let routes = micro_routes()
            .merge(m3o_routes())
            .route(VERIFY_PATH, get(verify::verify_link))
            .merge(health::routes())
            .route(METRICS_PATH, get(serve_metrics))
            .route("/openapi.yaml", get(openapi))
            .merge(ui::routes())
            .merge(console::routes())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed);
        let cors = routes
            .clone()
            .layer(cors(guard.clone()))
            .with_state(state.clone());
        let plain = routes
            .layer(SetResponseHeaderLayer::appending(
                header::VARY,
                HeaderValue::from_static(CORS_VARY),
            ))
            .with_state(state);
        Self {
            cors,
            plain,
            metrics,
        }
    }

    /// The router that answers `request`.
    fn router_for<B>(&self, request: &Request<B>) -> &Router {
        if request.headers().contains_key(header::ORIGIN)
            || request.method() == axum::http::Method::OPTIONS
        {
            &self.cors
        } else {
            &self.plain
        }
    }
}

impl App {
    /// Answers one request: refused by the guard before any work, or routed. Every
    /// answer is marked not to be cached (it may hold a session or an account) and not
    /// to be sniffed as another content type.
    pub async fn handle(&self, mut request: Request<Body>) -> Response<Body> {
        let started = std::time::Instant::now();
        let route = route_labels(request.method(), request.uri().path());
        let id = RequestId::of(request.headers());
        // Every line the request writes names it; the path only, without the query,
        // which could carry something secret.
        let fields = RequestFields {
            request_id: id.shared(),
            method: request.method().clone(),
            path: loggable_path(request.uri()),
        };
        request.extensions_mut().insert(id.clone());
        log_line::in_request(fields, async move {
            let (mut response, metrics) = self.route(request).await;
            let headers = response.headers_mut();
            // Static files (micro.js, the pages' stylesheet) set their own: revalidate.
            if !headers.contains_key(header::CACHE_CONTROL) {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
            headers.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            if let Some(value) = id.header_value() {
                headers.insert(request_id::REQUEST_ID, value);
            }
            let status = response.status().as_u16();
            let latency = started.elapsed();
            metrics.request(route, status, latency);
            // The request's log line (docs/performance/request-log.md), its latency in
            // whole microseconds, so that the number reads as written.
            tracing::info!(
                status,
                latency_ms = latency.as_micros() as f64 / 1e3,
                "request"
            );
            response
        })
        .await
    }

    /// Refused by the guard before any work, or by the tenant rules, or routed; with
    /// the metrics the request counts in.
    async fn route(&self, request: Request<Body>) -> (Response<Body>, Arc<Metrics>) {
        // The method's name, for a refusal's error only.
        let named = |uri: &Uri| match rpc_method_of(uri) {
            Some((service, _, method)) => (service, method.to_string()),
            None => (Micro::SERVICE, "Unknown".to_string()),
        };
        if let Err(refusal) = self.guard.check(request.headers()) {
            tracing::warn!(event = "request_refused", reason = ?refusal, "refused by the origin or host rules");
            let (service, method) = named(request.uri());
            let response = refusal.into_error(service, &method).into_response();
            return (response, self.metrics.clone());
        }
        let (router, metrics) = match self.pool_for(&request) {
            Ok(chosen) => chosen,
            Err(why) => {
                tracing::info!(event = "request_refused", reason = ?why, "no tenant for the request");
                // Through the CORS layer, so that a page of an allowed origin reads why.
                let (service, method) = named(request.uri());
                let mut request = request;
                request.extensions_mut().insert(TenantRefusal {
                    service,
                    method,
                    why,
                });
                let response = match self.refusals.clone().oneshot(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                return (response, self.metrics.clone());
            }
        };
        let response = match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        (response, metrics)
    }
}

impl App {
    /// The router of the pool that answers `request`, and the metrics it counts in: its
    /// tenant's, or the process's for a route of the whole service that named no tenant.
    fn pool_for(&self, request: &Request<Body>) -> Result<(Router, Arc<Metrics>), NoTenant> {
        let tenants = match &self.pools {
            Pools::One(pool) => {
                return Ok((pool.router_for(request).clone(), pool.metrics.clone()))
            }
            Pools::Tenants(pools) => pools
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        };
        let TenantPools {
            by_name,
            first,
            selection,
        } = tenants.as_ref();
        match preflight_or(request, || {
            selection.choose(by_name, request.headers(), request.uri())
        })? {
            Some(pool) => Ok((pool.router_for(request).clone(), pool.metrics.clone())),
            None => first
                .as_ref()
                .and_then(|first| by_name.get(first))
                .map(|pool| (pool.router_for(request).clone(), self.metrics.clone()))
                .ok_or(NoTenant::Unnamed),
        }
    }
}

/// Why a request was refused for want of a tenant, for [`refused`].
#[derive(Clone)]
struct TenantRefusal {
    service: &'static str,
    method: String,
    why: NoTenant,
}

/// 400 for a request that names no tenant of this service.
async fn refused(axum::Extension(refusal): axum::Extension<TenantRefusal>) -> Response<Body> {
    WireError::in_service(
        refusal.service,
        &refusal.method,
        StatusCode::BAD_REQUEST,
        refusal.why.detail(),
    )
    .into_response()
}

/// A CORS preflight carries no `Micro-Namespace` (it only asks whether the header may
/// be sent) and is answered by the CORS layer alike for every tenant: it is the whole
/// service's. Any other request goes to `choose`.
fn preflight_or<'a, T>(
    request: &Request<Body>,
    choose: impl FnOnce() -> Result<Option<&'a T>, NoTenant>,
) -> Result<Option<&'a T>, NoTenant> {
    if request.method() == axum::http::Method::OPTIONS {
        Ok(None)
    } else {
        choose()
    }
}

/// The `Vary` header tower-http's CORS layer sets on every answer.
const CORS_VARY: &str = "origin, access-control-request-method, access-control-request-headers";

/// A path as request logs show it: a magic link's token (`/ui/magic/<token>`) is left
/// out.
fn loggable_path(uri: &Uri) -> LoggedPath {
    let path = uri.path();
    if path.starts_with(ui::MAGIC_LINK_PREFIX) && path.len() > ui::MAGIC_LINK_PREFIX.len() {
        LoggedPath::Fixed("/ui/magic/<token>")
    } else {
        LoggedPath::Of(uri.clone())
    }
}

/// One handler for every RPC method of every surface: authorize, read, decode, call
/// the core, encode the surface's answer.
async fn rpc<S: Answer<M>, M: RpcMethod>(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<S::Response>, WireError> {
    let error = |status: StatusCode, detail: &str| {
        WireError::in_service(S::SERVICE, M::NAME, status, detail)
    };
    let requester = requester(&state, M::NAME, caller)
        .await
        .map_err(|e| WireError::from_error_in(S::SERVICE, M::NAME, e))?
        .ok_or_else(|| {
            let detail = if access::SELF_SERVICE.contains(&M::NAME) {
                "this method needs the admin key (Authorization: Bearer <key>) or the user's own live session"
            } else {
                "this method needs the admin key: Authorization: Bearer <key>"
            };
            error(StatusCode::UNAUTHORIZED, detail).with_header(header::WWW_AUTHENTICATE, "Bearer")
        })?;
    let body = read_body(
        S::SERVICE,
        M::NAME,
        M::MAX_BODY,
        body,
        state.request_timeout,
    )
    .await?;
    let request = json::decode::<M::Request>(&body)
        .map_err(|e| WireError::from_error_in(S::SERVICE, M::NAME, e))?;
    match tokio::time::timeout(
        state.request_timeout,
        M::call(&state.users, request, requester),
    )
    .await
    {
        Ok(answer) => answer
            .map(|output| Json(S::answer(output)))
            .map_err(|e| WireError::from_error_in(S::SERVICE, M::NAME, e)),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; retry shortly",
        )),
    }
}

/// Who the core sees calling `method`, or None when the caller may not call it.
///
/// The admin key may call everything. A live session may sign the self-service
/// methods, and then the core lets them act on that session's account only, whether or
/// not an admin key is set. Otherwise the public methods are open to anyone, and every
/// method is when no admin key is set.
async fn requester(
    state: &AppState,
    method: &str,
    caller: Caller,
) -> Result<Option<Requester>, Error> {
    let Caller {
        ip,
        admin,
        session,
        user_agent,
        request_id,
    } = caller;
    let mut requester = Requester {
        ip,
        trusted: admin,
        session_user: None,
        session: None,
        user_agent: user_agent.and_then(|v| v.to_str().ok().map(str::to_owned)),
        request_id,
        admin,
    };
    if admin {
        return Ok(Some(requester));
    }
    if let Some(token) = session.filter(|_| access::SELF_SERVICE.contains(&method)) {
        // A session id that names no live session signs nothing; the request is then
        // judged as one without it.
        if let Some(user_id) = state.users.session_user(&token).await? {
            requester.session_user = Some(user_id);
            requester.session = Some(token.digest());
            return Ok(Some(requester));
        }
    }
    if !state.access.allows(method, admin) {
        tracing::warn!(event = "api_key_rejected", method, client = ?requester.ip);
        if let Err(err) = state
            .users
            .record(&requester, EventKind::AdminKeyRefused, None)
            .await
        {
            tracing::warn!(error = %err, "the refused key could not be recorded in the audit trail");
        }
        return Ok(None);
    }
    requester.trusted = !state.access.has_key();
    Ok(Some(requester))
}

/// Reads at most `max` bytes within `timeout`: a client that sends too much gets 413,
/// one that sends too slowly 408.
async fn read_body(
    service: &str,
    method: &str,
    max: usize,
    body: Body,
    timeout: Duration,
) -> Result<Bytes, WireError> {
    let limited = http_body_util::Limited::new(body, max);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(WireError::in_service(
            service,
            method,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {max} bytes"),
        )),
        Ok(Err(_)) => Err(WireError::in_service(
            service,
            method,
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Err(_) => Err(WireError::in_service(
            service,
            method,
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not received in time",
        )),
    }
}

/// Where the Prometheus metrics are served.
pub const METRICS_PATH: &str = "/metrics";

/// `GET /metrics` on the main listener: with the admin key when one is set (the
/// counters tell how the service is used), unless they are served on their own address.
async fn serve_metrics(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
) -> Response<Body> {
    if !state.metrics_on_main {
        return WireError::new(
            "Metrics",
            StatusCode::NOT_FOUND,
            "the metrics are served on --metrics-listen",
        )
        .into_response();
    }
    if state.access.has_key() && !state.access.is_admin(&headers) {
        tracing::warn!(event = "api_key_rejected", method = "Metrics", client = ?caller.ip);
        if let Err(err) = state
            .users
            .record(&caller.anonymous(), EventKind::AdminKeyRefused, None)
            .await
        {
            tracing::warn!(error = %err, "the refused key could not be recorded in the audit trail");
        }
        return WireError::new(
            "Metrics",
            StatusCode::UNAUTHORIZED,
            "the metrics need the admin key: Authorization: Bearer <key>",
        )
        .with_header(header::WWW_AUTHENTICATE, "Bearer")
        .into_response();
    }
    prometheus_text(&state.scrape)
}

fn prometheus_text(metrics: &Scrape) -> Response<Body> {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        metrics.render(),
    )
        .into_response()
}

/// The routes of `--metrics-listen`: `GET /metrics` alone, without a key (bind it to an
/// address only the scraper reaches).
pub fn metrics_routes(metrics: Arc<Scrape>) -> Router {
    Router::new().route(
        METRICS_PATH,
        get(move || {
            let metrics = metrics.clone();
            async move { prometheus_text(&metrics) }
        }),
    )
}

/// The metrics' labels for a request: its route family and method, from names the
/// service serves only, so that no request can make a new series.
fn route_labels(verb: &axum::http::Method, path: &str) -> RouteLabels {
    let rpc = |names: &[&'static str], name: &str| {
        names
            .iter()
            .find(|known| **known == name)
            .copied()
            .unwrap_or("unknown")
    };
    let verb = match *verb {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::OPTIONS => "OPTIONS",
        axum::http::Method::HEAD => "HEAD",
        _ => "other",
    };
    let (family, method) = if let Some(name) = path.strip_prefix(RPC_PREFIX) {
        (RouteFamily::micro, rpc(MICRO_METHODS, name))
    } else if path == VERIFY_PATH {
        (RouteFamily::ui, verb)
    } else if let Some(name) = path.strip_prefix(M3O_PREFIX) {
        (RouteFamily::m3o, rpc(M3O_METHODS, name))
    } else if path == "/ui" || path.starts_with("/ui/") || path == "/micro.js" {
        (RouteFamily::ui, verb)
    } else if health::route_name(path).is_some() {
        (RouteFamily::health, verb)
    } else if path == METRICS_PATH {
        (RouteFamily::metrics, verb)
    } else {
        (RouteFamily::other, verb)
    };
    RouteLabels { family, method }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

/// The surface (service name and its handler name in messages) and RPC method a path
/// names, if it is under one of the RPC prefixes.
fn rpc_method_of(uri: &Uri) -> Option<(&'static str, &'static str, &str)> {
    let path = uri.path();
    let (service, handler, method) = if let Some(m) = path.strip_prefix(RPC_PREFIX) {
        (Micro::SERVICE, "Users", m)
    } else if let Some(m) = path.strip_prefix(M3O_PREFIX) {
        (M3o::SERVICE, "User", m)
    } else {
        return None;
    };
    (!method.is_empty() && !method.contains('/')).then_some((service, handler, method))
}

async fn not_found(uri: Uri) -> WireError {
    match rpc_method_of(&uri) {
        Some((service, handler, method)) => WireError::in_service(
            service,
            method,
            StatusCode::NOT_FOUND,
            format!("unknown method {handler}.{method}"),
        ),
        None => WireError::new("Unknown", StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn method_not_allowed(uri: Uri) -> WireError {
    match (uri.path(), rpc_method_of(&uri)) {
        (VERIFY_PATH, _) => WireError::in_service(
            M3o::SERVICE,
            "verify",
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET for this route",
        )
        .with_header(header::ALLOW, "GET"),
        (_, Some((service, _, method))) => WireError::in_service(
            service,
            method,
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST for this route",
        )
        .with_header(header::ALLOW, "POST"),
        (path, None) => {
            let name = match path {
                "/openapi.yaml" => "OpenApi",
                _ => health::route_name(path).unwrap_or("Unknown"),
            };
            WireError::method_not_allowed(name, "GET")
        }
    }
}

/// Browsers on the origins the guard lets in may call every route; preflights pass for
/// the headers such pages send, including Micro.js's `Micro-Namespace`, and a page may
/// read `Retry-After`. Only the credentialed origins (listed in `--cors-origins`, or the
/// public address) are told that cookies may go with their requests.
fn cors(guard: Arc<Guard>) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_credentials(AllowCredentials::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| guard.credentials_for(o))
        }))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::OPTIONS,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("micro-namespace"),
        ])
        .expose_headers([header::RETRY_AFTER, header::WWW_AUTHENTICATE])
        .max_age(Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_magic_link_token_is_not_logged() {
        assert_eq!(
            loggable_path(&Uri::from_static("/ui/magic/c2VjcmV0LXRva2Vu")).as_str(),
            "/ui/magic/<token>"
        );
        assert_eq!(
            loggable_path(&Uri::from_static("/ui/magic")).as_str(),
            "/ui/magic"
        );
        assert_eq!(
            loggable_path(&Uri::from_static("/users/Users/Read")).as_str(),
            "/users/Users/Read"
        );
    }
}
