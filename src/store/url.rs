//! Which database to use, from `--database-url`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::domain::TenantName;

/// `sqlite://PATH` or `postgres://...` (also `postgresql://...`).
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl FromStr for DatabaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("sqlite://").or(s.strip_prefix("sqlite:")) {
            if path.is_empty() || path.starts_with(':') || path.contains('?') {
                return Err(format!(
                    "expected sqlite://PATH to a database file (for example sqlite://users.db), got {s:?}"
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_string()));
        }
        Err("unsupported database URL: use sqlite://PATH or postgres://USER@HOST/DB".to_string())
    }
}

impl DatabaseUrl {
    /// Where `tenant`'s pool lives in this database: on SQLite a file of its own beside
    /// the configured one (`users.db` holds no tenant, `users.acme.db` holds `acme`),
    /// on PostgreSQL the schema [`tenant_schema`] of the same database (the URL is the
    /// same; the store sets its `search_path`).
    pub fn for_tenant(&self, tenant: Option<&TenantName>) -> DatabaseUrl {
        match (self, tenant) {
            (Self::Sqlite(path), Some(tenant)) => {
                let stem = path
                    .file_stem()
                    .map_or_else(|| "users".into(), |s| s.to_string_lossy().into_owned());
                let name = match path.extension() {
                    Some(ext) => format!("{stem}.{tenant}.{}", ext.to_string_lossy()),
                    None => format!("{stem}.{tenant}"),
                };
                Self::Sqlite(path.with_file_name(name))
            }
            _ => self.clone(),
        }
    }
}

/// The PostgreSQL schema that holds `tenant`'s pool.
pub fn tenant_schema(tenant: &TenantName) -> String {
    format!("tenant_{tenant}")
}

/// Shows the URL without its password, so it can be logged.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => match redact_password(url) {
                Some(redacted) => f.write_str(&redacted),
                None => f.write_str("postgres://[unparseable URL]"),
            },
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `scheme://user:secret@host/...` becomes `scheme://user:***@host/...`.
fn redact_password(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let redacted_authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let query_free_tail = tail.split('?').next().unwrap_or("");
    Some(format!("{scheme}://{redacted_authority}{query_free_tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_backends() {
        assert_eq!(
            "sqlite://users.db".parse::<DatabaseUrl>().unwrap(),
            DatabaseUrl::Sqlite("users.db".into())
        );
        assert_eq!(
            "sqlite:///data/users.db".parse::<DatabaseUrl>().unwrap(),
            DatabaseUrl::Sqlite("/data/users.db".into())
        );
        assert!(matches!(
            "postgres://postgres@127.0.0.1/test"
                .parse::<DatabaseUrl>()
                .unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!("mysql://x".parse::<DatabaseUrl>().is_err());
        assert!("sqlite::memory:".parse::<DatabaseUrl>().is_err());
        assert!("sqlite://".parse::<DatabaseUrl>().is_err());
    }

    #[test]
    fn a_tenant_has_a_file_of_its_own_beside_the_configured_one() {
        let acme: TenantName = "acme".parse().unwrap();
        let url: DatabaseUrl = "sqlite:///data/users.db".parse().unwrap();
        assert_eq!(
            url.for_tenant(Some(&acme)),
            DatabaseUrl::Sqlite("/data/users.acme.db".into())
        );
        assert_eq!(url.for_tenant(None), url);
        let bare: DatabaseUrl = "sqlite://users".parse().unwrap();
        assert_eq!(
            bare.for_tenant(Some(&acme)),
            DatabaseUrl::Sqlite("users.acme".into())
        );
        let pg: DatabaseUrl = "postgres://u@h/db".parse().unwrap();
        assert_eq!(pg.for_tenant(Some(&acme)), pg);
        assert_eq!(tenant_schema(&acme), "tenant_acme");
    }

    #[test]
    fn display_hides_the_password_and_query() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/users?password=x"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/users");
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
