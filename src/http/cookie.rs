//! The browser's session: an `HttpOnly` cookie that holds the session id, so that no
//! script on any page ever reads it.

use axum::http::{header, HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};

use crate::domain::SecretToken;

/// The session cookie's name (a tenant's adds `_<tenant>`).
pub const SESSION_COOKIE: &str = "users_session";

/// The console's cookie: proof that this browser was given the admin key (a tenant's
/// adds `_<tenant>`).
pub const CONSOLE_COOKIE: &str = "users_console";
/// Where the console's cookie is sent: the console's own pages only.
pub const CONSOLE_PATH: &str = "/admin";

/// The names of a user pool's cookies. With tenants each tenant has its own
/// (`users_session_acme`), so one browser may be signed in to several tenants at once,
/// and to several tenants' consoles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieNames {
    pub session: String,
    pub console: String,
}

impl Default for CookieNames {
    fn default() -> Self {
        Self {
            session: SESSION_COOKIE.to_string(),
            console: CONSOLE_COOKIE.to_string(),
        }
    }
}

impl CookieNames {
    /// The cookies of `tenant`'s pool (tenant names are lower-case letters, digits and
    /// `_`, all allowed in a cookie's name).
    pub fn of_tenant(tenant: &str) -> Self {
        Self {
            session: format!("{SESSION_COOKIE}_{tenant}"),
            console: format!("{CONSOLE_COOKIE}_{tenant}"),
        }
    }
}

/// The value of the cookie `name` among the request's cookies, if it has one.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The session id a request's `Cookie` header carries, if it carries a well-formed one.
/// Whether it may sign the request is the guard's call (`Guard::cookie_allowed`).
pub fn session_cookie(headers: &HeaderMap, names: &CookieNames) -> Option<SecretToken> {
    cookie_value(headers, &names.session)
        .and_then(|value| SecretToken::parse("cookie", Some(value.to_owned())).ok())
}

/// The console's cookie, as sent.
pub fn console_cookie<'a>(headers: &'a HeaderMap, names: &CookieNames) -> Option<&'a str> {
    cookie_value(headers, &names.console)
}

/// `Set-Cookie` of an `HttpOnly` cookie, for `max_age` seconds (0 forgets it), and
/// `Secure` when the service's public address is https.
fn set_cookie(
    name: &str,
    value: &str,
    same_site: SameSite,
    path: &'static str,
    max_age: i64,
    secure: bool,
) -> Option<HeaderValue> {
    let cookie = Cookie::build((name, value))
        .http_only(true)
        .same_site(same_site)
        .secure(secure)
        .path(path)
        .max_age(cookie::time::Duration::seconds(max_age.max(0)));
    HeaderValue::from_str(&cookie.to_string()).ok()
}

/// `Set-Cookie` for a new session: `HttpOnly`, `SameSite=Lax`, `Path=/`, for as long as
/// the session lives, and `Secure` when the service's public address is https.
pub fn set_session(
    names: &CookieNames,
    token: &SecretToken,
    max_age: i64,
    secure: bool,
) -> Option<HeaderValue> {
    set_cookie(
        &names.session,
        token.expose(),
        SameSite::Lax,
        "/",
        max_age,
        secure,
    )
}

/// `Set-Cookie` that makes the browser forget the session.
pub fn clear_session(names: &CookieNames, secure: bool) -> HeaderValue {
    set_cookie(&names.session, "", SameSite::Lax, "/", 0, secure)
        .unwrap_or_else(|| HeaderValue::from_static("users_session=; Max-Age=0; Path=/"))
}

/// `Set-Cookie` for the console: `HttpOnly`, `SameSite=Strict` (no other site's link or
/// form brings it along), sent to `/admin` only.
pub fn set_console(
    names: &CookieNames,
    value: &str,
    max_age: i64,
    secure: bool,
) -> Option<HeaderValue> {
    set_cookie(
        &names.console,
        value,
        SameSite::Strict,
        CONSOLE_PATH,
        max_age,
        secure,
    )
}

/// `Set-Cookie` that signs the console out of this browser.
pub fn clear_console(names: &CookieNames, secure: bool) -> HeaderValue {
    set_cookie(
        &names.console,
        "",
        SameSite::Strict,
        CONSOLE_PATH,
        0,
        secure,
    )
    .unwrap_or_else(|| HeaderValue::from_static("users_console=; Max-Age=0; Path=/admin"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_lax_and_secure_when_asked() {
        let token = SecretToken::generate();
        let names = CookieNames::default();
        let value = set_session(&names, &token, 3600, true).unwrap();
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
        let plain = set_session(&names, &token, 3600, false).unwrap();
        assert!(!plain.to_str().unwrap().contains("Secure"));
        assert!(clear_session(&names, false)
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
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
        let (plain, acme) = (CookieNames::default(), CookieNames::of_tenant("acme"));
        assert_eq!(
            session_cookie(&headers, &plain).map(|t| t.digest()),
            Some(token.digest())
        );
        assert!(session_cookie(&headers, &acme).is_none(), "no tenant's");
        headers.insert(header::COOKIE, HeaderValue::from_static("users_session="));
        assert!(session_cookie(&headers, &plain).is_none());
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("users_session_x=1; users_console=abc.def"),
        );
        assert!(session_cookie(&headers, &plain).is_none());
        assert_eq!(console_cookie(&headers, &plain), Some("abc.def"));
        assert_eq!(console_cookie(&headers, &acme), None);
        let theirs = SecretToken::generate();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!(
                "users_session={}; users_session_acme={}; users_console_acme=a.b",
                token.expose(),
                theirs.expose()
            ))
            .unwrap(),
        );
        assert_eq!(
            session_cookie(&headers, &acme).map(|t| t.digest()),
            Some(theirs.digest()),
            "each pool reads its own"
        );
        assert_eq!(
            session_cookie(&headers, &plain).map(|t| t.digest()),
            Some(token.digest())
        );
        assert_eq!(console_cookie(&headers, &acme), Some("a.b"));
        assert_eq!(acme.session, "users_session_acme");
    }

    #[test]
    fn the_console_cookie_is_strict_and_only_for_the_console() {
        let names = CookieNames::of_tenant("acme");
        let value = set_console(&names, "v", 600, false).unwrap();
        let text = value.to_str().unwrap();
        for part in [
            "users_console_acme=v",
            "HttpOnly",
            "SameSite=Strict",
            "Path=/admin",
            "Max-Age=600",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
        assert!(clear_console(&names, true)
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
    }
}
