//! What every request must pass before any route sees it.
//!
//! * **Its `Origin`**, when it has one (browsers send it with every cross-origin request
//!   and every POST), must be one the service lets in. Otherwise a page on any site the
//!   operator visits could call the service on the operator's machine: a `text/plain`
//!   POST needs no preflight, and the service reads JSON whatever the content type.
//! * **Its `Host`** must name the service: a loopback name or address, the listen
//!   address, the host of `--public-url`, or one of `--allowed-hosts`. Otherwise a page
//!   whose own host name is made to resolve to this machine (DNS rebinding) would be
//!   "same-origin" with it and could read its answers.
//!
//! Requests without `Origin` (curl, backends, the SDKs) pass the first rule; requests
//! without `Host` (HTTP/1.0 tools) pass the second: a browser always sends it.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, StatusCode};

use super::error::WireError;

/// Which web origins may call the service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    Any,
    /// `http(s)://localhost`, `127.0.0.0/8` and `[::1]`, on any port.
    Loopback,
    /// These, as `scheme://host[:port]` in lowercase without a default port.
    Listed(Vec<String>),
}

/// Which `Host` values name this service.
#[derive(Debug, Clone)]
struct Hosts {
    any: bool,
    /// Lowercase host names and addresses, without ports.
    names: Vec<String>,
    /// Every IP address (the service listens on all of them).
    any_ip: bool,
}

#[derive(Debug, Clone)]
pub struct Guard {
    origins: Origins,
    hosts: Hosts,
    /// Origins whose pages may act with a user's session cookie and read the answers of
    /// credentialed requests: those listed in `--cors-origins` and the service's own
    /// public address. Never "any origin", and not loopback pages by default.
    credentialed: Vec<String>,
    /// The origin of `--public-url`, if set: the service's own pages, as browsers
    /// behind a proxy see them.
    own: Option<String>,
}

/// What the guard is built from.
pub struct GuardConfig<'a> {
    /// `--cors-origins`; empty: the default below.
    pub cors_origins: &'a [String],
    /// With an admin key, any origin may call by default (a page cannot hold the key,
    /// so it reaches only the public methods, as any other client can); without one,
    /// only pages served from this machine.
    pub has_admin_key: bool,
    pub listen: SocketAddr,
    /// `--public-url`, if set.
    pub public_url: Option<&'a url::Url>,
    /// `--allowed-hosts`.
    pub allowed_hosts: &'a [String],
}

impl Guard {
    pub fn new(config: GuardConfig<'_>) -> Result<Self, String> {
        let listed: Vec<&str> = config
            .cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty())
            .collect();
        let origins = if listed.contains(&"*") {
            Origins::Any
        } else if !listed.is_empty() {
            let origins = listed
                .iter()
                .map(|o| {
                    normalise_origin(o).ok_or_else(|| {
                        format!("invalid CORS origin {o:?}: expected scheme://host[:port]")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Origins::Listed(origins)
        } else if config.has_admin_key {
            Origins::Any
        } else {
            Origins::Loopback
        };
        let public_host = config
            .public_url
            .and_then(|u| u.host_str().map(str::to_string));
        let mut credentialed = match &origins {
            Origins::Listed(list) => list.clone(),
            Origins::Any | Origins::Loopback => Vec::new(),
        };
        let own = config.public_url.and_then(|u| normalise_origin(u.as_str()));
        credentialed.extend(own.clone());
        let mut names = vec!["localhost".to_string()];
        let listen_ip = config.listen.ip();
        if !listen_ip.is_unspecified() {
            names.push(listen_ip.to_string());
        }
        names.extend(public_host.map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        }));
        let mut any = false;
        for host in config
            .allowed_hosts
            .iter()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
        {
            if host == "*" {
                any = true;
            } else if host.contains(['/', ':', '@', ' ']) && host.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "invalid allowed host {host:?}: expected a host name or an IP address, without a port"
                ));
            } else {
                names.push(
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase(),
                );
            }
        }
        Ok(Self {
            origins,
            hosts: Hosts {
                any,
                names,
                any_ip: listen_ip.is_unspecified(),
            },
            credentialed,
            own,
        })
    }

    /// Whether a request's session cookie may sign it (the defence against cross-site
    /// request forgery): the browser must say which page sent it (`Origin`), and that
    /// page must be the service's own (same host) or one of the credentialed origins.
    /// A page on another origin cannot act with the cookie, even where the guard lets
    /// it call the public methods.
    pub fn cookie_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .and_then(normalise_origin)
        else {
            return false;
        };
        self.credentialed.contains(&origin) || same_origin(&origin, headers)
    }

    /// Whether a form post comes from one of the service's own pages, and from no other
    /// origin, however trusted: what the admin console's forms must be sent from.
    pub fn own_page(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .and_then(normalise_origin)
            .is_some_and(|origin| {
                self.own.as_deref() == Some(origin.as_str()) || same_origin(&origin, headers)
            })
    }

    /// The origins whose pages may act with the cookie.
    pub fn credentialed_origins(&self) -> &[String] {
        &self.credentialed
    }

    /// Whether CORS answers may tell the browser to send cookies and expose the answer
    /// to a page on `origin` (`Access-Control-Allow-Credentials`).
    pub fn credentials_for(&self, origin: &str) -> bool {
        normalise_origin(origin).is_some_and(|o| self.credentialed.contains(&o))
    }

    /// Refuses a request from an origin that is not let in (403) or for a host that is
    /// not this service (421), before any work is done for it.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if let Some(host) = headers.get(header::HOST) {
            let allowed = host.to_str().ok().is_some_and(|h| self.host_allowed(h));
            if !allowed {
                return Err(Refusal::Host);
            }
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            // The service's own pages (/ui/) are always let in.
            let allowed = origin.to_str().ok().is_some_and(|o| {
                self.origin_allowed(o)
                    || normalise_origin(o).is_some_and(|o| same_origin(&o, headers))
            });
            if !allowed {
                return Err(Refusal::Origin);
            }
        }
        Ok(())
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::Any => true,
            Origins::Loopback => url::Url::parse(origin).is_ok_and(|url| {
                matches!(url.scheme(), "http" | "https")
                    && match url.host() {
                        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                        None => false,
                    }
            }),
            Origins::Listed(list) => normalise_origin(origin).is_some_and(|o| list.contains(&o)),
        }
    }

    fn host_allowed(&self, value: &str) -> bool {
        if self.hosts.any {
            return true;
        }
        let host = host_of(value);
        if self
            .hosts
            .names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(host))
        {
            return true;
        }
        match host.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || self.hosts.any_ip,
            Err(_) => false,
        }
    }
}

/// Whether `origin` (normalised) is the request's own: a page this service served
/// (same host and port as the `Host` the request names).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((host, authority), (Some(host), Some(authority)) if host.trim().eq_ignore_ascii_case(authority))
}

/// The host part of a `Host` header value: without the port, and an IPv6 address
/// without its brackets.
fn host_of(value: &str) -> &str {
    let value = value.trim();
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

/// `scheme://host[:port]` as browsers send it in `Origin`: lowercase, no default port,
/// no path. None when it is not an http(s) origin.
fn normalise_origin(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return None;
    }
    Some(url.origin().ascii_serialization())
}

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Origin,
    Host,
}

impl Refusal {
    /// The answer, in the Micro error shape of the route's surface (`method` names it).
    pub fn into_error(self, service: &str, method: &str) -> WireError {
        match self {
            Self::Origin => WireError::in_service(
                service,
                method,
                StatusCode::FORBIDDEN,
                "requests from this web page's origin are not allowed (see --cors-origins)",
            ),
            Self::Host => WireError::in_service(
                service,
                method,
                StatusCode::MISDIRECTED_REQUEST,
                "this service does not answer for the host named in the Host header (see --allowed-hosts)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn guard(
        cors: &[&str],
        key: bool,
        listen: &str,
        public: Option<&str>,
        allowed: &[&str],
    ) -> Guard {
        let cors: Vec<String> = cors.iter().map(|s| s.to_string()).collect();
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        let public = public.map(|p| {
            let p = if p.contains("://") {
                p.to_string()
            } else {
                format!("https://{p}")
            };
            url::Url::parse(&p).unwrap()
        });
        Guard::new(GuardConfig {
            cors_origins: &cors,
            has_admin_key: key,
            listen: listen.parse().unwrap(),
            public_url: public.as_ref(),
            allowed_hosts: &allowed,
        })
        .unwrap()
    }

    fn request(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(h) = host {
            headers.insert(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        if let Some(o) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        headers
    }

    #[test]
    fn the_cookie_signs_requests_from_the_service_itself_and_listed_origins_only() {
        let with = |host: &str, origin: Option<&str>| {
            let mut headers = request(Some(host), origin);
            headers.remove(header::COOKIE);
            headers
        };
        // The default without a key (loopback pages) and with one (any page) lets no
        // other page act with the cookie.
        for key in [false, true] {
            let g = guard(&[], key, "127.0.0.1:8080", None, &[]);
            assert!(g.cookie_allowed(&with("127.0.0.1:8080", Some("http://127.0.0.1:8080"))));
            assert!(!g.cookie_allowed(&with("127.0.0.1:8080", Some("http://127.0.0.1:3000"))));
            assert!(
                !g.cookie_allowed(&with("127.0.0.1:8080", None)),
                "no Origin"
            );
            assert!(!g.credentials_for("http://127.0.0.1:3000"));
        }
        let g = guard(
            &["http://127.0.0.1:3000"],
            true,
            "127.0.0.1:8080",
            Some("https://id.example.com"),
            &[],
        );
        assert!(g.cookie_allowed(&with("127.0.0.1:8080", Some("http://127.0.0.1:3000"))));
        assert!(g.credentials_for("http://127.0.0.1:3000"));
        assert!(g.credentials_for("https://id.example.com"));
        assert!(!g.cookie_allowed(&with("127.0.0.1:8080", Some("http://127.0.0.1:3001"))));
        assert!(!g.credentials_for("http://127.0.0.1:3001"));
        // "Any origin" never carries credentials.
        let g = guard(&["*"], true, "127.0.0.1:8080", None, &[]);
        assert!(!g.cookie_allowed(&with("127.0.0.1:8080", Some("http://evil.example"))));
        assert!(!g.credentials_for("http://evil.example"));
    }

    #[test]
    fn the_console_takes_posts_from_the_service_own_pages_only() {
        let g = guard(
            &["http://127.0.0.1:3000"],
            true,
            "127.0.0.1:8080",
            Some("https://id.example.com"),
            &[],
        );
        let own = |origin: Option<&str>| g.own_page(&request(Some("127.0.0.1:8080"), origin));
        assert!(own(Some("http://127.0.0.1:8080")));
        assert!(own(Some("https://id.example.com")), "the public address");
        assert!(
            !own(Some("http://127.0.0.1:3000")),
            "a credentialed app page"
        );
        assert!(!own(Some("http://evil.example")));
        assert!(!own(Some("null")));
        assert!(!own(None), "no Origin");
    }

    #[test]
    fn without_a_key_only_loopback_pages_may_call() {
        let g = guard(&[], false, "127.0.0.1:8080", None, &[]);
        let host = Some("127.0.0.1:8080");
        for ok in [
            "http://localhost:3000",
            "http://127.0.0.1:5173",
            "http://[::1]:8000",
            "https://localhost",
            "http://LOCALHOST:1",
        ] {
            assert_eq!(g.check(&request(host, Some(ok))), Ok(()), "{ok}");
        }
        for refused in [
            "https://evil.example",
            "http://localhost.evil.example",
            "null",
            "file://",
            "http://10.0.0.1:8080",
        ] {
            assert_eq!(
                g.check(&request(host, Some(refused))),
                Err(Refusal::Origin),
                "{refused}"
            );
        }
        assert_eq!(
            g.check(&request(host, None)),
            Ok(()),
            "no Origin: not a browser"
        );
    }

    #[test]
    fn with_a_key_any_origin_may_call_unless_a_list_is_given() {
        let g = guard(&[], true, "127.0.0.1:8080", None, &[]);
        assert_eq!(
            g.check(&request(None, Some("https://app.example.com"))),
            Ok(())
        );
        let g = guard(
            &["https://app.example.com", "http://localhost:3000"],
            true,
            "127.0.0.1:8080",
            None,
            &[],
        );
        assert_eq!(
            g.check(&request(None, Some("https://APP.example.com:443"))),
            Ok(())
        );
        assert_eq!(
            g.check(&request(None, Some("http://localhost:3000"))),
            Ok(())
        );
        assert_eq!(
            g.check(&request(None, Some("http://localhost:3001"))),
            Err(Refusal::Origin)
        );
        assert_eq!(
            g.check(&request(None, Some("https://evil.example"))),
            Err(Refusal::Origin)
        );
        let g = guard(&["*"], false, "127.0.0.1:8080", None, &[]);
        assert_eq!(
            g.check(&request(None, Some("https://evil.example"))),
            Ok(())
        );
        assert!(Guard::new(GuardConfig {
            cors_origins: &["not an origin".to_string()],
            has_admin_key: false,
            listen: "127.0.0.1:8080".parse().unwrap(),
            public_url: None,
            allowed_hosts: &[],
        })
        .is_err());
    }

    #[test]
    fn the_host_must_name_this_service() {
        let g = guard(
            &[],
            false,
            "127.0.0.1:8080",
            Some("users.example.com"),
            &["api.internal"],
        );
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "127.0.0.2",
            "[::1]:8080",
            "users.example.com",
            "Users.Example.com:443",
            "api.internal:9000",
        ] {
            assert_eq!(g.check(&request(Some(ok), None)), Ok(()), "{ok}");
        }
        for refused in [
            "evil.example:8080",
            "10.0.0.1:8080",
            "users.example.com.evil.example",
            "",
        ] {
            assert_eq!(
                g.check(&request(Some(refused), None)),
                Err(Refusal::Host),
                "{refused}"
            );
        }
        // Listening on every address: any address names it, still no foreign name.
        let g = guard(&[], true, "0.0.0.0:8080", None, &[]);
        assert_eq!(g.check(&request(Some("10.0.0.1:8080"), None)), Ok(()));
        assert_eq!(
            g.check(&request(Some("evil.example"), None)),
            Err(Refusal::Host)
        );
        let g = guard(&[], true, "10.0.0.5:8080", None, &[]);
        assert_eq!(g.check(&request(Some("10.0.0.5:8080"), None)), Ok(()));
        assert_eq!(
            g.check(&request(Some("10.0.0.6:8080"), None)),
            Err(Refusal::Host)
        );
        let g = guard(&[], true, "10.0.0.5:8080", None, &["*"]);
        assert_eq!(g.check(&request(Some("anything.example"), None)), Ok(()));
    }
}
