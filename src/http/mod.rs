//! The HTTP surface: routes, middleware and the Micro wire format.

pub mod access;
pub mod error;
pub mod json;
pub mod micro;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::error::Error;
use crate::service::Users;
use access::{AccessPolicy, Caller};
use error::MicroError;
use ipnet::IpNet;
use micro::Rpc;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Prefix of every RPC route.
pub const RPC_PREFIX: &str = "/users/Users/";

/// The OpenAPI document, served as is.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub users: Arc<Users>,
    pub access: Arc<AccessPolicy>,
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// How long reading a request body, and then answering it, may each take.
    pub request_timeout: Duration,
}

/// Declares the RPC methods once: the router and the route list both come from here.
macro_rules! rpc_methods {
    ($($method:ident),+ $(,)?) => {
        /// The RPC method names, in the order of the Micro documentation.
        pub const RPC_METHODS: &[&str] = &[$(micro::$method::NAME),+];

        fn rpc_routes() -> Router<AppState> {
            Router::new()
                $(.route(&format!("{RPC_PREFIX}{}", micro::$method::NAME), post(rpc::<micro::$method>)))+
        }
    };
}

rpc_methods!(
    Create,
    Read,
    Update,
    Delete,
    Search,
    UpdatePassword,
    Login,
    Logout,
    ReadSession,
);

/// Every (verb, path) the router serves; the OpenAPI test holds the spec to this list.
pub fn served_routes() -> Vec<(Method, String)> {
    let mut routes: Vec<(Method, String)> = RPC_METHODS
        .iter()
        .map(|name| (Method::POST, format!("{RPC_PREFIX}{name}")))
        .collect();
    routes.push((Method::GET, "/health".to_string()));
    routes.push((Method::GET, "/openapi.yaml".to_string()));
    routes
}

/// The whole application. `cors_origins` empty means any origin may call it.
pub fn router(state: AppState, cors_origins: Vec<HeaderValue>) -> Router {
    rpc_routes()
        .route("/health", get(health))
        .route("/openapi.yaml", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors(cors_origins))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    // The path only: a query string could carry something secret.
                    tracing::info_span!(
                        "http",
                        method = %request.method(),
                        path = %request.uri().path(),
                    )
                })
                .on_request(())
                .on_response(|response: &Response<_>, latency: Duration, _: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency = ?latency,
                        "request"
                    );
                })
                .on_failure(()),
        )
        .with_state(state)
}

/// One handler for every RPC method: authorize, read, decode, call the core, encode.
async fn rpc<M: Rpc>(
    State(state): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<M::Response>, MicroError> {
    if !state.access.allows(M::NAME, &caller) {
        tracing::warn!(event = "api_key_rejected", method = M::NAME, client = ?caller.ip);
        return Err(MicroError::new(
            M::NAME,
            StatusCode::UNAUTHORIZED,
            "this method needs the admin key: Authorization: Bearer <key>",
        )
        .with_header(header::WWW_AUTHENTICATE, "Bearer"));
    }
    let body = read_body(M::NAME, body, state.request_timeout).await?;
    let request =
        json::decode::<M::Request>(&body).map_err(|e| MicroError::from_error(M::NAME, e))?;
    match tokio::time::timeout(
        state.request_timeout,
        M::call(&state.users, request, caller.ip),
    )
    .await
    {
        Ok(answer) => answer
            .map(Json)
            .map_err(|e| MicroError::from_error(M::NAME, e)),
        Err(_) => Err(MicroError::new(
            M::NAME,
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; retry shortly",
        )),
    }
}

/// Reads at most [`MAX_BODY_BYTES`] within `timeout`: a client that sends too much gets
/// 413, one that sends too slowly 408.
async fn read_body(method: &str, body: Body, timeout: Duration) -> Result<Bytes, MicroError> {
    let limited = http_body_util::Limited::new(body, MAX_BODY_BYTES);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => Err(MicroError::new(
            method,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(_)) => Err(MicroError::new(
            method,
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Err(_) => Err(MicroError::new(
            method,
            StatusCode::REQUEST_TIMEOUT,
            "the request body was not received in time",
        )),
    }
}

async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, MicroError> {
    match state.users.health().await {
        Ok(()) => Ok(Json(json!({"status": "ok"}))),
        // Whatever went wrong, the service is not healthy: 503, never 500.
        Err(err) => Err(MicroError::from_error("Health", Error::Unavailable(err))),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

/// The RPC method a path names, if it is under the RPC prefix.
fn rpc_method_of(uri: &Uri) -> Option<&str> {
    uri.path()
        .strip_prefix(RPC_PREFIX)
        .filter(|m| !m.is_empty() && !m.contains('/'))
}

async fn not_found(uri: Uri) -> MicroError {
    match rpc_method_of(&uri) {
        Some(method) => MicroError::new(
            method,
            StatusCode::NOT_FOUND,
            format!("unknown method Users.{method}"),
        ),
        None => MicroError::new("Unknown", StatusCode::NOT_FOUND, "no such route"),
    }
}

async fn method_not_allowed(uri: Uri) -> MicroError {
    match rpc_method_of(&uri) {
        Some(method) => MicroError::method_not_allowed(method, "POST"),
        None => {
            let name = match uri.path() {
                "/health" => "Health",
                "/openapi.yaml" => "OpenApi",
                _ => "Unknown",
            };
            MicroError::method_not_allowed(name, "GET")
        }
    }
}

/// Browsers on other origins may call every route; preflights pass for the headers such
/// pages send, including Micro.js's `Micro-Namespace`.
fn cors(origins: Vec<HeaderValue>) -> CorsLayer {
    let allow_origin = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins)
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("micro-namespace"),
        ])
        .max_age(Duration::from_secs(3600))
}
