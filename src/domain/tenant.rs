//! Tenants: the isolated user pools one service can hold (`--tenancy namespace`).

use std::fmt;
use std::str::FromStr;

/// Longest tenant name.
pub const TENANT_MAX_LEN: usize = 32;

/// A tenant's name, as the `Micro-Namespace` header carries it: 1-32 characters, a
/// lower-case ASCII letter first, then lower-case letters, digits and `_`. Names this
/// plain can name a PostgreSQL schema and a file with no quoting or escaping.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantName(String);

impl TenantName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TenantName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok || s.len() > TENANT_MAX_LEN {
            return Err(format!(
                "{s:?} is not a tenant name: 1-{TENANT_MAX_LEN} characters, a lower-case \
                 letter first, then lower-case letters, digits and _"
            ));
        }
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        for good in ["a", "acme", "acme_2", "a23456789012345678901234567890bc"] {
            assert_eq!(good.parse::<TenantName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            "Acme",
            "2acme",
            "_acme",
            "ac-me",
            "ac.me",
            "a b",
            "../x",
            "a234567890123456789012345678901bc",
        ] {
            assert!(bad.parse::<TenantName>().is_err(), "{bad:?}");
        }
    }
}
