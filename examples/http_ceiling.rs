//! The HTTP stack's ceiling: the smallest axum service that does what every RPC route
//! does on the wire (read a JSON body, parse it, answer a small JSON body), with nothing
//! behind it. `bench/run.sh` drives it exactly as it drives the real service, so the
//! ratio of the two says how much the service itself costs on top of axum and tokio.
//!
//! Usage: `http_ceiling [ADDR]` (or `HTTP_CEILING_LISTEN=ADDR`), default 127.0.0.1:8099.
//! Serves `POST /users/Users/<anything>` and `GET /health`.
#![allow(clippy::unwrap_used)] // a measuring tool: a panic is a failed run

use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Request {
    id: Option<String>,
    session_id: Option<String>,
    username: Option<String>,
}

#[derive(Serialize)]
struct Item {
    id: String,
    username: String,
    email: String,
    created: String,
    updated: String,
}

#[derive(Serialize)]
struct Response {
    user: Item,
}

async fn echo(Json(request): Json<Request>) -> Json<Response> {
    let id = request
        .id
        .or(request.session_id)
        .or(request.username)
        .unwrap_or_default();
    Json(Response {
        user: Item {
            username: format!("u-{}", id.len()),
            email: "someone@example.com".to_string(),
            created: "1700000000".to_string(),
            updated: "1700000000".to_string(),
            id,
        },
    })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("HTTP_CEILING_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:8099".to_string())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let app = Router::new()
        .route("/users/Users/{method}", post(echo))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("http_ceiling listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await
}
