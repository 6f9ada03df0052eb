//! `GET /v1/user/verify?token=..&redirectUrl=..&failureRedirectUrl=..`: the link in a
//! verification e-mail. The user's browser opens it; it verifies the address and sends
//! the browser on to the app with a 302, to `redirectUrl` on success and to
//! `failureRedirectUrl` when the link is unknown, used or expired.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::WireError;
use super::m3o::M3o;
use super::{AppState, Surface};
use crate::domain::RedirectUrl;
use crate::domain::SecretToken;
use crate::error::Error;

#[derive(Deserialize)]
pub struct VerifyQuery {
    token: Option<String>,
    #[serde(rename = "redirectUrl", alias = "redirect_url")]
    redirect_url: Option<String>,
    #[serde(rename = "failureRedirectUrl", alias = "failure_redirect_url")]
    failure_redirect_url: Option<String>,
}

fn error(err: Error) -> WireError {
    WireError::from_error_in(M3o::SERVICE, "verify", err)
}

/// Both addresses are checked before the token is used: a link that cannot send the
/// browser anywhere safe is refused outright (400) and uses nothing, and with an
/// allow-list configured no link can make this service redirect elsewhere.
pub async fn verify_link(
    State(state): State<AppState>,
    caller: super::access::Caller,
    query: Result<Query<VerifyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, WireError> {
    let Query(query) =
        query.map_err(|_| error(Error::Malformed("the query string is malformed".into())))?;
    let users = &state.users;
    let redirect = RedirectUrl::parse("redirectUrl", query.redirect_url).map_err(error)?;
    users
        .check_redirect("redirectUrl", &redirect)
        .map_err(error)?;
    let failure =
        RedirectUrl::parse("failureRedirectUrl", query.failure_redirect_url).map_err(error)?;
    users
        .check_redirect("failureRedirectUrl", &failure)
        .map_err(error)?;
    let outcome = match SecretToken::parse("token", query.token) {
        Ok(token) => users.verify_email(token, &caller.anonymous()).await,
        Err(invalid) => Err(invalid),
    };
    let target = match outcome {
        Ok(()) => redirect,
        Err(Error::Invalid { .. }) => failure,
        // The database could not answer: the link may still be good, so say so rather
        // than send the browser to the failure page.
        Err(other) => return Err(error(other)),
    };
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, target.as_str().to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
    )
        .into_response())
}
