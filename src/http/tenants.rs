//! Which tenant's pool answers a request (`--tenancy namespace`, docs/tenancy.md).
//!
//! In order: the `Micro-Namespace` header, which must name a configured tenant (or, on
//! what a browser opens without headers, a verification link, a hosted page under
//! `/ui/` or the console under `/admin`, its `namespace=`); else a
//! tenant's own admin key in `Authorization: Bearer`; else `--default-tenant`. A route
//! that belongs to no tenant (health, metrics, the OpenAPI document) is answered for
//! the service as a whole. Anything else names no tenant and is refused.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, Uri};
use subtle::ConstantTimeEq;

use super::access::key_digest;
use super::health::{HEALTH_PATH, LIVE_PATH, READY_PATH};
use super::{METRICS_PATH, VERIFY_PATH};
use crate::domain::TenantName;

/// The header Micro.js and the Micro clients send the namespace in.
pub const NAMESPACE_HEADER: &str = "micro-namespace";

/// How requests find their tenant.
pub struct TenantSelection {
    /// Each tenant's own admin keys (SHA-256), with their tenant.
    pub keys: Vec<([u8; 32], TenantName)>,
    /// Where a request that names no tenant goes.
    pub default: Option<TenantName>,
}

/// Why no tenant answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoTenant {
    /// The header names a tenant this service does not have (or no tenant name).
    Unknown,
    /// Nothing names a tenant and there is no default.
    Unnamed,
}

impl NoTenant {
    pub fn detail(&self) -> &'static str {
        match self {
            Self::Unknown => "the Micro-Namespace header names no tenant of this service",
            Self::Unnamed => {
                "this service holds several tenants: name one in the Micro-Namespace header"
            }
        }
    }
}

/// Whether `path` is one of the hosted pages (`/ui`, `/ui/...`) or the console's
/// (`/admin`, `/admin/...`): what a browser opens without headers, so a tenant's are
/// named in their query (`namespace=`).
pub fn is_browser_page(path: &str) -> bool {
    ["/ui", "/admin"].iter().any(|root| {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The `namespace` of the query of what a browser opens without headers: a
/// verification link, a hosted page or the admin console (whose links, forms and
/// redirects carry it).
fn link_namespace(uri: &Uri) -> Option<String> {
    let path = uri.path();
    if path != VERIFY_PATH && !is_browser_page(path) {
        return None;
    }
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(name, _)| name == "namespace")
        .map(|(_, value)| value.into_owned())
        .filter(|name| !name.is_empty())
}

/// Whether `path` belongs to the service as a whole rather than to a tenant: health,
/// metrics, the OpenAPI document and the static files (micro.js, which pages of every
/// tenant load, and the hosted pages' style, logo and script).
pub fn serves_every_tenant(path: &str) -> bool {
    matches!(
        path,
        HEALTH_PATH
            | LIVE_PATH
            | READY_PATH
            | METRICS_PATH
            | "/openapi.yaml"
            | "/micro.js"
            | "/ui/style.css"
            | "/ui/brand.css"
            | "/ui/logo"
            | "/ui/passkeys.js"
    )
}

impl TenantSelection {
    /// The tenant `headers` select among `known`, or None for a route of the whole
    /// service that names none.
    pub fn choose<'a, T>(
        &self,
        known: &'a HashMap<TenantName, T>,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Option<&'a T>, NoTenant> {
        let path = uri.path();
        // A header that is not text names no tenant of ours; an empty one names none.
        let named = headers
            .get(NAMESPACE_HEADER)
            .map(|value| value.to_str().map_or("\u{fffd}", str::trim).to_string())
            .filter(|name| !name.is_empty())
            .or_else(|| link_namespace(uri));
        if let Some(name) = named {
            return name
                .parse::<TenantName>()
                .ok()
                .and_then(|tenant| known.get(&tenant))
                .map(Some)
                .ok_or(NoTenant::Unknown);
        }
        if let Some(tenant) = self.key_tenant(headers) {
            return known.get(tenant).map(Some).ok_or(NoTenant::Unknown);
        }
        if let Some(tenant) = &self.default {
            return known.get(tenant).map(Some).ok_or(NoTenant::Unknown);
        }
        if serves_every_tenant(path) {
            return Ok(None);
        }
        Err(NoTenant::Unnamed)
    }

    /// The tenant whose own admin key the request bears, comparing every key.
    fn key_tenant(&self, headers: &HeaderMap) -> Option<&TenantName> {
        if self.keys.is_empty() {
            return None;
        }
        let presented = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let digest = key_digest(presented);
        let mut found = None;
        for (expected, tenant) in &self.keys {
            if bool::from(digest.ct_eq(expected)) {
                found = Some(tenant);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn tenant(name: &str) -> TenantName {
        name.parse().unwrap()
    }

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn the_header_then_the_key_then_the_default_choose() {
        let known: HashMap<TenantName, &str> =
            [(tenant("acme"), "acme"), (tenant("globex"), "globex")].into();
        let selection = TenantSelection {
            keys: vec![(key_digest("globex-key"), tenant("globex"))],
            default: None,
        };
        let mut headers = HeaderMap::new();
        assert_eq!(
            selection.choose(&known, &headers, &uri("/users/Users/Read")),
            Err(NoTenant::Unnamed)
        );
        assert_eq!(
            selection.choose(&known, &headers, &uri("/health")),
            Ok(None)
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer globex-key"),
        );
        assert_eq!(
            selection.choose(&known, &headers, &uri("/users/Users/Read")),
            Ok(Some(&"globex"))
        );
        headers.insert(NAMESPACE_HEADER, HeaderValue::from_static("acme"));
        assert_eq!(
            selection.choose(&known, &headers, &uri("/users/Users/Read")),
            Ok(Some(&"acme")),
            "the header wins over the key"
        );
        for bad in ["initech", "ACME", "../acme"] {
            headers.insert(NAMESPACE_HEADER, HeaderValue::from_static(bad));
            assert_eq!(
                selection.choose(&known, &headers, &uri("/health")),
                Err(NoTenant::Unknown)
            );
        }
        headers.insert(
            NAMESPACE_HEADER,
            HeaderValue::from_bytes(b"acme\xff").unwrap(),
        );
        assert_eq!(
            selection.choose(&known, &headers, &uri("/users/Users/Read")),
            Err(NoTenant::Unknown),
            "a header that is not text is no tenant, not an absent one"
        );
        let with_default = TenantSelection {
            keys: Vec::new(),
            default: Some(tenant("acme")),
        };
        assert_eq!(
            with_default.choose(&known, &HeaderMap::new(), &uri("/ui/login")),
            Ok(Some(&"acme"))
        );
        // A verification link, the hosted pages and the console name their tenant in
        // the query; no other route may (the API takes the header).
        for link in [
            "/v1/user/verify?token=t&namespace=globex",
            "/ui/signin?namespace=globex",
            "/ui?namespace=globex",
            "/ui/magic/t?namespace=globex",
            "/admin?namespace=globex",
            "/admin/users?q=x&namespace=globex",
        ] {
            assert_eq!(
                with_default.choose(&known, &HeaderMap::new(), &uri(link)),
                Ok(Some(&"globex")),
                "{link}"
            );
        }
        for elsewhere in [
            "/users/Users/Read?namespace=globex",
            "/administrator?namespace=globex",
            "/uix?namespace=globex",
        ] {
            assert_eq!(
                with_default.choose(&known, &HeaderMap::new(), &uri(elsewhere)),
                Ok(Some(&"acme")),
                "{elsewhere}"
            );
        }
        let unknown = uri("/ui/signin?namespace=initech");
        assert_eq!(
            with_default.choose(&known, &HeaderMap::new(), &unknown),
            Err(NoTenant::Unknown)
        );
    }
}
