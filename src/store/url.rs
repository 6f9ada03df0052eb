//! Which database to use, from `--database-url`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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
    fn display_hides_the_password_and_query() {
        let url: DatabaseUrl = "postgres://app:s3cret@db:5432/users?password=x"
            .parse()
            .unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/users");
        assert!(!format!("{url:?}").contains("s3cret"));
    }
}
