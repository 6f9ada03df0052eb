//! Health checks, and what the service answers while it waits for its database.
//!
//! * `GET /health/live`: 200 while the process serves HTTP at all, database or not. An
//!   orchestrator restarts a replica that stops answering it.
//! * `GET /health/ready` and `GET /health`: 200 when the database answers one round
//!   trip, 503 otherwise (and while the start waits for it). A load balancer sends
//!   traffic only to a replica that is ready.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::WireError;
use super::{rpc_method_of, AppState};
use crate::error::Error;

pub const HEALTH_PATH: &str = "/health";
pub const LIVE_PATH: &str = "/health/live";
pub const READY_PATH: &str = "/health/ready";

/// The health routes of the running service.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(HEALTH_PATH, get(ready))
        .route(READY_PATH, get(ready))
        .route(LIVE_PATH, get(live))
}

/// The names the health routes carry in their errors.
pub fn route_name(path: &str) -> Option<&'static str> {
    match path {
        HEALTH_PATH | READY_PATH => Some("Health"),
        LIVE_PATH => Some("Live"),
        _ => None,
    }
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, WireError> {
    let mut health = Ok(());
    for users in state.everyone.all() {
        health = users.health().await;
        if health.is_err() {
            break;
        }
    }
    match health {
        Ok(()) => Ok(Json(json!({"status": "ok"}))),
        // Whatever went wrong, the service is not healthy: 503, never 500.
        Err(err) => Err(WireError::from_error(
            "Health",
            Error::Unavailable {
                outage: err.outage().unwrap_or(crate::error::Outage::Unreachable),
                source: Box::new(err),
            },
        )),
    }
}

/// What the service answers while its start waits for the database: alive, not ready,
/// and 503 in the Micro error shape (with `Retry-After`) for everything else. It holds
/// no state and changes nothing.
pub fn starting_routes() -> Router {
    Router::new().route(LIVE_PATH, get(live)).fallback(starting)
}

async fn starting(uri: Uri) -> Response {
    let detail = "the service is starting: its database does not answer yet; retry shortly";
    let error = match (rpc_method_of(&uri), route_name(uri.path())) {
        (Some((service, _, method)), _) => {
            WireError::in_service(service, method, StatusCode::SERVICE_UNAVAILABLE, detail)
        }
        (None, Some(name)) => WireError::new(name, StatusCode::SERVICE_UNAVAILABLE, detail),
        (None, None) => WireError::new("Unknown", StatusCode::SERVICE_UNAVAILABLE, detail),
    };
    let mut response = error.with_header(header::RETRY_AFTER, "1").into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
