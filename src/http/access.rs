//! Who may call what: the admin key, the public methods, and the client's address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::cookie::session_cookie;
use super::{AppState, RPC_METHODS};
use crate::domain::{SecretToken, TenantName};

/// The admin keys and the methods that do not need one.
#[derive(Clone)]
pub struct AccessPolicy {
    /// SHA-256 of each admin key: the service's, then (with tenants) the tenant's own.
    /// Comparing digests in constant time hides both a key's content and its length.
    key_digests: Vec<[u8; 32]>,
    /// The tenant this policy is for ("" without tenants): part of every MAC, so that
    /// what one tenant's console signed is void in another's.
    scope: String,
    public: Vec<&'static str>,
}

/// SHA-256 of an admin key, as [`AccessPolicy`] keeps it.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

impl AccessPolicy {
    /// `public_methods` are names of RPC methods; Create is public only while sign-up
    /// is open.
    pub fn new(
        key: Option<SecretString>,
        public_methods: &[String],
        open_signup: bool,
    ) -> Result<Self, String> {
        let mut public = Vec::new();
        for name in public_methods
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
        {
            let known = RPC_METHODS
                .iter()
                .find(|m| **m == name)
                .ok_or_else(|| format!("unknown method {name:?} in the public methods"))?;
            if *known == "Create" && !open_signup {
                continue;
            }
            public.push(*known);
        }
        // The second step of a sign-in goes with its first: it needs a challenge that
        // only a right password (or magic link) gives.
        // So does signing in with a passkey, which proves more than a password.
        if public.contains(&"Login") {
            for method in ["LoginMfa", "StartPasskeyLogin", "FinishPasskeyLogin"] {
                if !public.contains(&method) {
                    public.push(method);
                }
            }
        }
        let key_digests = match key {
            Some(key) if key.expose_secret().trim().is_empty() => {
                return Err("the admin key is empty".to_string())
            }
            Some(key) => vec![key_digest(key.expose_secret())],
            None => Vec::new(),
        };
        Ok(Self {
            key_digests,
            scope: String::new(),
            public,
        })
    }

    /// The same policy for `tenant`, whose own admin keys (digests) are admitted beside
    /// the service's.
    pub fn for_tenant(&self, tenant: &TenantName, keys: &[[u8; 32]]) -> Self {
        let mut policy = self.clone();
        policy.key_digests.extend_from_slice(keys);
        policy.scope = tenant.to_string();
        policy
    }

    pub fn has_key(&self) -> bool {
        !self.key_digests.is_empty()
    }

    /// Whether a caller that did (`admin`) or did not present the admin key may call
    /// `method` without a session.
    pub fn allows(&self, method: &str, admin: bool) -> bool {
        self.key_digests.is_empty() || admin || self.public.contains(&method)
    }

    pub fn is_admin(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|presented| self.key_matches(presented))
    }

    /// Whether `presented` is an admin key (false when none is set). Every key is
    /// compared, whichever matches.
    pub fn key_matches(&self, presented: &str) -> bool {
        let digest = key_digest(presented);
        let mut found = subtle::Choice::from(0);
        for expected in &self.key_digests {
            found |= digest.ct_eq(expected);
        }
        found.into()
    }

    /// HMAC-SHA256 of `message` under the admin key (None when none is set): what
    /// proves, without holding the key, that its holder signed the message. Every
    /// replica with the same key makes and accepts the same MACs; a new key voids them.
    pub fn mac(&self, message: &[u8]) -> Option<[u8; 32]> {
        use hmac::Mac;
        let key = self.key_digests.first()?;
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(b"users-service admin key MAC\0");
        if !self.scope.is_empty() {
            mac.update(b"tenant\0");
            mac.update(self.scope.as_bytes());
            mac.update(b"\0");
        }
        mac.update(message);
        Some(mac.finalize().into_bytes().into())
    }
}

/// The methods a user's own session may call, on that user's account only.
pub const SELF_SERVICE: &[&str] = &[
    "Read",
    "Update",
    "UpdatePassword",
    "Delete",
    "LogoutAll",
    "ListSessions",
    "RevokeSession",
    "ReadSecondFactors",
    "StartTotp",
    "ConfirmTotp",
    "DisableTotp",
    "StartPasskeyRegistration",
    "FinishPasskeyRegistration",
    "ListPasskeys",
    "RenamePasskey",
    "DeletePasskey",
];

/// What the service knows of a caller.
#[derive(Debug)]
pub struct Caller {
    /// The client's address: the peer, or what a trusted proxy says it forwarded for.
    pub ip: Option<IpAddr>,
    /// Presented the admin key.
    pub admin: bool,
    /// A session id that may sign the request: `Authorization: Bearer <session id>`
    /// (anything but the admin key), or the session cookie of a page the guard lets act
    /// with it. Whether it names a live session is looked up only when a method needs it.
    pub session: Option<SecretToken>,
    /// Its `User-Agent` (a cheap copy of the header; made text only when a session is
    /// opened).
    pub user_agent: Option<HeaderValue>,
    /// The request's id, made by [`super::App::handle`].
    pub request_id: Option<std::sync::Arc<str>>,
}

impl Caller {
    /// The caller as the core sees one that nothing signs (a link opened in a browser):
    /// its address and request only.
    pub fn anonymous(&self) -> crate::core::users::Requester {
        crate::core::users::Requester {
            ip: self.ip,
            request_id: self.request_id.clone(),
            ..Default::default()
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        let admin = state.access.is_admin(&parts.headers);
        let session = if admin {
            None
        } else {
            bearer(&parts.headers)
                .and_then(|presented| {
                    SecretToken::parse("session", Some(presented.to_owned())).ok()
                })
                .or_else(|| {
                    state
                        .guard
                        .cookie_allowed(&parts.headers)
                        .then(|| session_cookie(&parts.headers, &state.ui.cookies))
                        .flatten()
                })
        };
        Ok(Caller {
            ip: peer.map(|peer| client_ip(peer, &parts.headers, &state.trusted_proxies)),
            admin,
            session,
            user_agent: parts.headers.get(header::USER_AGENT).cloned(),
            request_id: parts
                .extensions
                .get::<super::request_id::RequestId>()
                .map(super::request_id::RequestId::shared),
        })
    }
}

/// What `Authorization: Bearer <value>` presents.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The client's address. X-Forwarded-For is read only when the peer is a trusted proxy;
/// then the nearest address in it that is not itself a trusted proxy is the client (the
/// ones further left could have been written by anyone).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers("203.0.113.7");
        assert_eq!(
            client_ip(ip("198.51.100.1"), &h, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.7"));
        // A client cannot spoof by prepending: the rightmost untrusted hop wins.
        let h = headers("1.1.1.1, 203.0.113.7, 10.0.0.9");
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("203.0.113.7"));
        // Garbage stops the walk at the last good hop.
        let h = headers("nonsense, 10.0.0.9");
        assert_eq!(client_ip(ip("10.1.2.3"), &h, &trusted), ip("10.0.0.9"));
        assert_eq!(
            client_ip(ip("10.1.2.3"), &HeaderMap::new(), &trusted),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_admin_key_opens_every_method_and_public_ones_need_none() {
        let policy = AccessPolicy::new(
            Some(SecretString::from("k3y")),
            &["Login".to_string(), "Create".to_string()],
            false,
        )
        .unwrap();
        let anonymous = Caller {
            ip: None,
            admin: false,
            session: None,
            user_agent: None,
            request_id: None,
        };
        let admin = Caller {
            ip: None,
            admin: true,
            session: None,
            user_agent: None,
            request_id: None,
        };
        assert!(policy.allows("Login", anonymous.admin));
        assert!(!policy.allows("Create", anonymous.admin), "sign-up closed");
        assert!(!policy.allows("Delete", anonymous.admin));
        assert!(policy.allows("Delete", admin.admin));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer k3y"),
        );
        assert!(policy.is_admin(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k3"));
        assert!(!policy.is_admin(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("k3y"));
        assert!(!policy.is_admin(&h));
        assert!(AccessPolicy::new(None, &["Nope".to_string()], true).is_err());
    }
}
