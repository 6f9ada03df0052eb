//! The browser's session: an `HttpOnly` cookie that holds the session id, so that no
//! script on any page ever reads it.

use axum::http::{header, HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};

use crate::domain::SecretToken;

/// The cookie's name.
pub const SESSION_COOKIE: &str = "users_session";

/// The session id a request's `Cookie` header carries, if it carries a well-formed one.
/// Whether it may sign the request is the guard's call (`Guard::cookie_allowed`).
pub fn session_cookie(headers: &HeaderMap) -> Option<SecretToken> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == SESSION_COOKIE)
        .and_then(|cookie| SecretToken::parse("cookie", Some(cookie.value().to_owned())).ok())
}

/// `Set-Cookie` for a new session: `HttpOnly`, `SameSite=Lax`, `Path=/`, for as long as
/// the session lives, and `Secure` when the service's public address is https.
pub fn set_session(token: &SecretToken, max_age: i64, secure: bool) -> Option<HeaderValue> {
    let cookie = Cookie::build((SESSION_COOKIE, token.expose().to_owned()))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::seconds(max_age.max(0)));
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn clear_session(secure: bool) -> HeaderValue {
    let cookie = Cookie::build((SESSION_COOKIE, ""))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .max_age(cookie::time::Duration::ZERO);
    HeaderValue::from_str(&cookie.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("users_session=; Max-Age=0; Path=/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_lax_and_secure_when_asked() {
        let token = SecretToken::generate();
        let value = set_session(&token, 3600, true).unwrap();
        let text = value.to_str().unwrap();
        for part in [
            "HttpOnly",
            "SameSite=Lax",
            "Secure",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        let plain = set_session(&token, 3600, false).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
        assert!(clear_session(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn the_session_is_read_among_other_cookies() {
        let token = SecretToken::generate();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=1; {SESSION_COOKIE}={}; b=2", token.expose()))
                .unwrap(),
        );
        assert_eq!(
            session_cookie(&headers).map(|t| t.digest()),
            Some(token.digest())
        );
        headers.insert(header::COOKIE, HeaderValue::from_static("users_session="));
        assert!(session_cookie(&headers).is_none());
    }
}
