//! Domain types. Every value that crosses the wire is parsed into one of these types
//! before the core sees it, so a rule such as "a username is 1-64 characters of ..."
//! is written exactly once, here.

mod audit;
mod factors;
mod one_time;
mod secret;
mod tenant;

pub use audit::{rfc3339, Actor, Audit, AuditEvent, AuditPage, EventKind, EventQuery};
pub use factors::{
    RecoveryCode, SecondFactor, SecondStep, SignIn, SignInMethod, TotpCode, RECOVERY_CODES,
    TOTP_DIGITS,
};
pub use one_time::{Purpose, ResetCode, RESET_CODE_MAX_WRONG};
pub use secret::{sha256_hex, SecretToken, SessionHandle, TokenDigest};
pub use tenant::{TenantName, TENANT_MAX_LEN};

use std::collections::BTreeMap;
use std::fmt;

use email_address::{EmailAddress, Options as EmailOptions};
use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

use crate::error::Error;

/// Longest accepted user id.
pub const ID_MAX_LEN: usize = 128;
/// Longest accepted username.
pub const USERNAME_MAX_LEN: usize = 64;
/// Longest accepted e-mail address (RFC 5321 path limit).
pub const EMAIL_MAX_LEN: usize = 254;
/// Shortest accepted new password, in Unicode code points.
pub const PASSWORD_MIN_LEN: usize = 8;
/// Longest accepted password, in Unicode code points. Longer input is refused, never truncated.
pub const PASSWORD_MAX_LEN: usize = 1024;
/// Most keys a profile may have.
pub const PROFILE_MAX_KEYS: usize = 64;
/// Longest profile key, in characters.
pub const PROFILE_KEY_MAX_LEN: usize = 64;
/// Longest profile value, in bytes.
pub const PROFILE_VALUE_MAX_BYTES: usize = 4096;
/// Search page size when none (or 0) is given.
pub const DEFAULT_LIMIT: u32 = 25;
/// Largest accepted search page size.
pub const MAX_LIMIT: u32 = 1000;

/// Returns the value of a required text field, or the 400 that names it.
pub fn required(field: &'static str, raw: Option<String>) -> Result<String, Error> {
    match raw {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(Error::required(field)),
    }
}

/// Treats an absent and an empty optional field alike, as protobuf does.
pub fn optional(raw: Option<String>) -> Option<String> {
    raw.filter(|v| !v.is_empty())
}

/// Letters, digits, '-', '_' and '.': the alphabet of ids and usernames.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.len() > max || !value.chars().all(is_name_char) {
        return Err(Error::invalid(
            field,
            format!("must be 1-{max} characters of letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

/// A user id: 1-128 characters of letters, digits, '-', '_', '.'. Case-sensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let value = required(field, raw)?;
        check_name(field, &value, ID_MAX_LEN)?;
        Ok(Self(value))
    }

    /// A fresh random id (UUIDv4), for Create without an id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// Whether the id is a UUID in its canonical, hyphenated form (8-4-4-4-12 hex
    /// digits), as the ids this service makes are.
    pub fn is_uuid(&self) -> bool {
        let bytes = self.0.as_bytes();
        bytes.len() == 36
            && bytes.iter().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode compatibility normalisation (NFKC): look-alike forms such as fullwidth
/// letters become their plain equivalents before any rule or comparison applies.
fn nfkc(value: &str) -> String {
    value.nfkc().collect()
}

/// A username, stored and compared NFKC-normalised and lowercased. After normalisation
/// only ASCII letters, digits, '-', '_' and '.' remain allowed, so two usernames that
/// look alike are the same username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: Option<String>) -> Result<Self, Error> {
        let value = nfkc(&required("username", raw)?);
        check_name("username", &value, USERNAME_MAX_LEN)?;
        Ok(Self(value.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An e-mail address, stored and compared NFKC-normalised and lowercased. Addresses
/// must be ASCII after normalisation: internationalised addresses are refused, which
/// rules out look-alike duplicates built from other scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: Option<String>) -> Result<Self, Error> {
        let value = nfkc(&required("email", raw)?);
        if value.chars().count() > EMAIL_MAX_LEN {
            return Err(Error::invalid(
                "email",
                format!("must be at most {EMAIL_MAX_LEN} characters"),
            ));
        }
        // A plain addr-spec with a dotted domain: no display names ("Name <a@b.c>"), no
        // IP literals, no whitespace or control characters anywhere.
        let options = EmailOptions::default()
            .with_required_tld()
            .without_domain_literal()
            .without_display_text();
        let plain = value.is_ascii() && !value.chars().any(|c| c.is_whitespace() || c.is_control());
        if !plain || EmailAddress::parse_with_options(&value, options).is_err() {
            return Err(Error::invalid("email", "must be a valid e-mail address"));
        }
        Ok(Self(value.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password in transit. Never printed: `Debug` is redacted by `SecretString`.
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    /// A new password: 8 to 1024 Unicode code points, taken as given (no trimming, no
    /// composition rules), without control characters. The configurable part of the
    /// policy (a higher minimum, the common-password list) is `policy::PasswordPolicy`.
    pub fn new_password(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let value = SecretString::from(required(field, raw)?);
        if value.expose_secret().chars().any(char::is_control) {
            return Err(Error::invalid(field, "must not contain control characters"));
        }
        let len = value.expose_secret().chars().count();
        if len < PASSWORD_MIN_LEN {
            return Err(Error::invalid(
                field,
                format!("must be at least {PASSWORD_MIN_LEN} characters"),
            ));
        }
        Self::check_max(field, len)?;
        Ok(Self(value))
    }

    /// A password offered as proof (Login, old password): only required and bounded, since
    /// the policy applies when a password is set, not when it is checked.
    pub fn candidate(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let value = SecretString::from(required(field, raw)?);
        Self::check_max(field, value.expose_secret().chars().count())?;
        Ok(Self(value))
    }

    fn check_max(field: &'static str, len: usize) -> Result<(), Error> {
        if len > PASSWORD_MAX_LEN {
            return Err(Error::invalid(
                field,
                format!("must be at most {PASSWORD_MAX_LEN} characters"),
            ));
        }
        Ok(())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Who is signing in: a username or an e-mail address.
#[derive(Debug, Clone)]
pub enum LoginName {
    Username(Username),
    Email(Email),
}

impl LoginName {
    /// The username wins when both are given, as in the Micro original.
    pub fn parse(username: Option<String>, email: Option<String>) -> Result<Self, Error> {
        match (optional(username), optional(email)) {
            (Some(u), _) => Ok(Self::Username(Username::parse(Some(u))?)),
            (None, Some(e)) => Ok(Self::Email(Email::parse(Some(e))?)),
            (None, None) => Err(Error::invalid("username", "or email is required")),
        }
    }
}

/// Create's input.
#[derive(Debug)]
pub struct NewAccount {
    /// The id the caller chose, if any.
    pub id: Option<UserId>,
    pub username: Username,
    pub email: Email,
    pub secret: NewSecret,
    pub profile: Profile,
}

/// How a new account will prove its password.
#[derive(Debug)]
pub enum NewSecret {
    /// The password, to be hashed.
    Password(Password),
    /// A hash of it made by another system (the core checks its format and cost).
    Hash(String),
}

impl NewAccount {
    pub fn parse(
        id: Option<String>,
        username: Option<String>,
        email: Option<String>,
        password: Option<String>,
        profile: Option<BTreeMap<String, String>>,
    ) -> Result<Self, Error> {
        Self::parse_moving_in(id, username, email, password, None, profile)
    }

    /// As [`NewAccount::parse`], with the password given either in the clear or as
    /// `password_hash`, a hash another system made of it: one of the two.
    pub fn parse_moving_in(
        id: Option<String>,
        username: Option<String>,
        email: Option<String>,
        password: Option<String>,
        password_hash: Option<String>,
        profile: Option<BTreeMap<String, String>>,
    ) -> Result<Self, Error> {
        let id = optional(id)
            .map(|id| UserId::parse("id", Some(id)))
            .transpose()?;
        let username = Username::parse(username)?;
        let email = Email::parse(email)?;
        let secret = match (optional(password), optional(password_hash)) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "password_hash",
                    "give a password or a password_hash, not both",
                ))
            }
            (None, Some(hash)) if hash.len() > PASSWORD_HASH_MAX_LEN => {
                return Err(Error::invalid(
                    "password_hash",
                    format!("must be at most {PASSWORD_HASH_MAX_LEN} characters"),
                ))
            }
            (None, Some(hash)) => NewSecret::Hash(hash),
            (password, None) => NewSecret::Password(Password::new_password("password", password)?),
        };
        Ok(Self {
            id,
            username,
            email,
            secret,
            profile: Profile::parse(profile.unwrap_or_default())?,
        })
    }
}

/// The longest password hash Create takes (a Firebase hash with its project's key is
/// about 250 characters).
pub const PASSWORD_HASH_MAX_LEN: usize = 512;

/// Update's input: only the fields given non-empty change.
#[derive(Debug)]
pub struct AccountChanges {
    pub username: Option<Username>,
    pub email: Option<Email>,
    /// Replaces the whole profile when given (an empty map clears it).
    pub profile: Option<Profile>,
}

impl AccountChanges {
    pub fn parse(
        username: Option<String>,
        email: Option<String>,
        profile: Option<BTreeMap<String, String>>,
    ) -> Result<Self, Error> {
        Ok(Self {
            username: optional(username)
                .map(|u| Username::parse(Some(u)))
                .transpose()?,
            email: optional(email).map(|e| Email::parse(Some(e))).transpose()?,
            profile: profile.map(Profile::parse).transpose()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.username.is_none() && self.email.is_none() && self.profile.is_none()
    }
}

/// Free-form data an app keeps about a user: at most 64 keys of 1-64 characters, each
/// value at most 4 KiB, no control characters in keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Profile(BTreeMap<String, String>);

impl Profile {
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, Error> {
        if map.len() > PROFILE_MAX_KEYS {
            return Err(Error::invalid(
                "profile",
                format!("must have at most {PROFILE_MAX_KEYS} keys"),
            ));
        }
        for (key, value) in &map {
            let len = key.chars().count();
            if len == 0 || len > PROFILE_KEY_MAX_LEN || key.chars().any(char::is_control) {
                return Err(Error::invalid(
                    "profile",
                    format!(
                        "keys must be 1-{PROFILE_KEY_MAX_LEN} characters without control characters"
                    ),
                ));
            }
            if value.len() > PROFILE_VALUE_MAX_BYTES {
                return Err(Error::invalid(
                    "profile",
                    format!("values must be at most {PROFILE_VALUE_MAX_BYTES} bytes"),
                ));
            }
        }
        Ok(Self(map))
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// Which account a request names: by id, username or e-mail address (the first given).
#[derive(Debug, Clone)]
pub enum AccountKey {
    Id(UserId),
    Username(Username),
    Email(Email),
}

impl AccountKey {
    pub fn parse(
        id: Option<String>,
        username: Option<String>,
        email: Option<String>,
    ) -> Result<Self, Error> {
        match (optional(id), optional(username), optional(email)) {
            (Some(id), _, _) => Ok(Self::Id(UserId::parse("id", Some(id))?)),
            (None, Some(u), _) => Ok(Self::Username(Username::parse(Some(u))?)),
            (None, None, Some(e)) => Ok(Self::Email(Email::parse(Some(e))?)),
            (None, None, None) => Err(Error::invalid("id", "(or username or email) is required")),
        }
    }
}

/// UpdatePassword's input.
#[derive(Debug)]
pub struct PasswordChange {
    pub user_id: UserId,
    pub old_password: Password,
    pub new_password: Password,
}

impl PasswordChange {
    pub fn parse(
        user_id: Option<String>,
        old_password: Option<String>,
        new_password: Option<String>,
        confirm_password: Option<String>,
    ) -> Result<Self, Error> {
        let user_id = UserId::parse("user_id", user_id)?;
        let old_password = Password::candidate("old_password", old_password)?;
        let new_password = confirmed_password(new_password, confirm_password)?;
        Ok(Self {
            user_id,
            old_password,
            new_password,
        })
    }
}

/// One page of a listing: a limit in 1..=1000 and an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u64,
}

impl Page {
    /// `limit` 0 or absent means the default, as in protobuf; negative values are refused.
    pub fn parse(limit: Option<i64>, offset: Option<i64>) -> Result<Self, Error> {
        let limit = match limit.unwrap_or(0) {
            0 => DEFAULT_LIMIT,
            l if l < 0 => return Err(Error::invalid("limit", "must not be negative")),
            l if l > i64::from(MAX_LIMIT) => {
                return Err(Error::invalid(
                    "limit",
                    format!("must be at most {MAX_LIMIT}"),
                ))
            }
            // In range 1..=MAX_LIMIT, so the conversion cannot fail.
            l => u32::try_from(l).unwrap_or(MAX_LIMIT),
        };
        let offset = u64::try_from(offset.unwrap_or(0))
            .map_err(|_| Error::invalid("offset", "must not be negative"))?;
        Ok(Self { limit, offset })
    }
}

/// Search's input: exact, case-insensitive matches; at least one criterion.
#[derive(Debug)]
pub struct UserQuery {
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub page: Page,
}

impl UserQuery {
    pub fn parse(
        username: Option<String>,
        email: Option<String>,
        limit: Option<i64>,
        offset: Option<i64>,
    ) -> Result<Self, Error> {
        let changes = AccountChanges::parse(username, email, None)?;
        if changes.is_empty() {
            return Err(Error::invalid("username", "or email is required"));
        }
        Ok(Self {
            username: changes.username,
            email: changes.email,
            page: Page::parse(limit, offset)?,
        })
    }
}

/// Longest e-mail body an app may supply.
pub const MAIL_TEXT_MAX_BYTES: usize = 32 * 1024;
/// Longest subject and sender name.
pub const MAIL_HEADER_MAX_LEN: usize = 200;
/// A password reset code's life when the request gives none, and the longest allowed.
pub const DEFAULT_RESET_EXPIRATION: i64 = 1800;
pub const MAX_RESET_EXPIRATION: i64 = 86_400;

/// What an app writes in one of the service's e-mails: the body (`text_content`, with
/// placeholders), the subject and the sender's display name.
#[derive(Debug, Clone)]
pub struct MailText {
    pub subject: Option<String>,
    pub text: String,
    pub from_name: Option<String>,
}

impl MailText {
    pub fn parse(
        subject: Option<String>,
        text: Option<String>,
        from_name: Option<String>,
    ) -> Result<Self, Error> {
        let text = required("text_content", text)?;
        if text.len() > MAIL_TEXT_MAX_BYTES {
            return Err(Error::invalid(
                "text_content",
                format!("must be at most {MAIL_TEXT_MAX_BYTES} bytes"),
            ));
        }
        // Header values: a line break would start a new header.
        let header = |field: &'static str, value: Option<String>| match optional(value) {
            Some(v) if v.chars().count() > MAIL_HEADER_MAX_LEN => Err(Error::invalid(
                field,
                format!("must be at most {MAIL_HEADER_MAX_LEN} characters"),
            )),
            Some(v) if v.chars().any(char::is_control) => {
                Err(Error::invalid(field, "must not contain control characters"))
            }
            v => Ok(v),
        };
        Ok(Self {
            subject: header("subject", subject)?,
            text,
            from_name: header("from_name", from_name)?,
        })
    }
}

/// An absolute http or https address a browser is sent to after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUrl(url::Url);

impl RedirectUrl {
    pub fn parse(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let value = required(field, raw)?;
        match url::Url::parse(&value) {
            Ok(url)
                if matches!(url.scheme(), "http" | "https")
                    && url.host_str().is_some_and(|h| !h.is_empty())
                    && url.username().is_empty()
                    && url.password().is_none() =>
            {
                Ok(Self(url))
            }
            _ => Err(Error::invalid(
                field,
                "must be an absolute http or https address",
            )),
        }
    }

    /// `scheme://host[:port]`, as the redirect allow-list names addresses.
    pub fn origin(&self) -> String {
        self.0.origin().ascii_serialization()
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Where a magic link points: `https://<address>/<endpoint>/<token>`, the app's own
/// page that calls VerifyToken.
#[derive(Debug, Clone)]
pub struct MagicLinkTarget {
    /// The link without its token: `https://<address>[/<endpoint>]`.
    prefix: String,
    /// What follows the token: a query of the service's own page, or nothing.
    suffix: String,
}

impl MagicLinkTarget {
    pub fn parse(address: Option<String>, endpoint: Option<String>) -> Result<Self, Error> {
        let address = required("address", address)?;
        // A host with an optional port, nothing else: no scheme, path or credentials.
        let parsed = url::Url::parse(&format!("https://{address}"));
        let plain = matches!(&parsed, Ok(u) if u.path() == "/" && u.query().is_none()
            && u.fragment().is_none() && u.username().is_empty() && u.password().is_none()
            && u.host_str().is_some_and(|h| !h.is_empty()));
        if !plain || address.ends_with('/') || address.len() > 255 {
            return Err(Error::invalid(
                "address",
                "must be a host name with an optional port, such as app.example.com",
            ));
        }
        let endpoint = optional(endpoint).unwrap_or_default();
        let endpoint = endpoint.trim_matches('/').to_string();
        let path_char =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '/');
        if endpoint.len() > 255
            || !endpoint.chars().all(path_char)
            || endpoint.split('/').any(|seg| seg == "." || seg == "..")
        {
            return Err(Error::invalid(
                "endpoint",
                "must be a path of letters, digits, '-', '_', '.', '~' and '/'",
            ));
        }
        let prefix = if endpoint.is_empty() {
            format!("https://{address}")
        } else {
            format!("https://{address}/{endpoint}")
        };
        Ok(Self {
            prefix,
            suffix: String::new(),
        })
    }

    /// A link to one of this service's own pages: `base` is its public address and
    /// path, as configured (not input), and `query` what follows the token (`""`, or
    /// `?namespace=<tenant>` for a tenant's page).
    pub fn own_page(base: &str, query: &str) -> Self {
        Self {
            prefix: base.trim_end_matches('/').to_string(),
            suffix: query.to_string(),
        }
    }

    pub fn link(&self, token: &str) -> String {
        format!("{}/{token}{}", self.prefix, self.suffix)
    }
}

/// How long a password reset code lives, in seconds: 1 to 86400, 1800 when not given.
pub fn reset_expiration(raw: Option<i64>) -> Result<i64, Error> {
    match raw.unwrap_or(0) {
        0 => Ok(DEFAULT_RESET_EXPIRATION),
        s if (1..=MAX_RESET_EXPIRATION).contains(&s) => Ok(s),
        _ => Err(Error::invalid(
            "expiration",
            format!("must be between 1 and {MAX_RESET_EXPIRATION} seconds"),
        )),
    }
}

/// ResetPassword's input.
#[derive(Debug)]
pub struct PasswordReset {
    pub email: Email,
    pub code: String,
    pub new_password: Password,
}

impl PasswordReset {
    pub fn parse(
        email: Option<String>,
        code: Option<String>,
        new_password: Option<String>,
        confirm_password: Option<String>,
    ) -> Result<Self, Error> {
        let email = Email::parse(email)?;
        let code = required("code", code)?;
        if code.len() > 64 {
            return Err(Error::invalid("code", "must be at most 64 characters"));
        }
        let new_password = confirmed_password(new_password, confirm_password)?;
        Ok(Self {
            email,
            code,
            new_password,
        })
    }
}

/// A new password and its confirmation, which must be equal.
fn confirmed_password(
    new_password: Option<String>,
    confirm_password: Option<String>,
) -> Result<Password, Error> {
    let new_password = Password::new_password("new_password", new_password)?;
    let confirm = SecretString::from(required("confirm_password", confirm_password)?);
    if confirm.expose_secret() != new_password.expose() {
        return Err(Error::invalid(
            "confirm_password",
            "does not match new_password",
        ));
    }
    Ok(new_password)
}

/// A stored user, as the API shows it (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds.
    pub updated: i64,
    /// Whether the e-mail address was verified, and when (Unix seconds; 0: never).
    pub verified: bool,
    pub verification_date: i64,
    pub profile: Profile,
}

/// A live session. `id` is the bearer token itself, known only to its holder.
pub struct Session {
    pub id: SecretToken,
    pub user_id: String,
    pub username: String,
    pub email: String,
    pub created: i64,
    pub expires: i64,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &"[REDACTED]")
            .field("user_id", &self.user_id)
            .field("created", &self.created)
            .field("expires", &self.expires)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn usernames_are_lowercased_and_limited_to_the_name_alphabet() {
        assert_eq!(
            Username::parse(s("Asim.B-1_x")).unwrap().as_str(),
            "asim.b-1_x"
        );
        assert!(Username::parse(s("a b")).is_err());
        assert!(Username::parse(s("ä")).is_err());
        // Fullwidth look-alikes normalise to the plain name.
        assert_eq!(Username::parse(s("Ａｓｉｍ")).unwrap().as_str(), "asim");
        assert!(Username::parse(s("as\u{0}im")).is_err());
        assert!(Username::parse(s(&"a".repeat(64))).is_ok());
        assert!(Username::parse(s(&"a".repeat(65))).is_err());
        let err = Username::parse(None).unwrap_err();
        assert_eq!(err.to_string(), "username is required");
        assert!(Username::parse(s("")).is_err());
    }

    #[test]
    fn ids_follow_the_name_alphabet_up_to_128() {
        assert!(UserId::parse("id", s(&"x".repeat(128))).is_ok());
        assert!(UserId::parse("id", s(&"x".repeat(129))).is_err());
        assert!(UserId::parse("id", s("a/b")).is_err());
        assert!(UserId::parse("id", s("a\0b")).is_err());
        assert_eq!(UserId::parse("id", s("Ab")).unwrap().as_str(), "Ab");
        assert!(
            UserId::parse("id", s("ff3c06de-9e43-41c7-9bab-578f6b4ad32b"))
                .unwrap()
                .is_uuid()
        );
        assert!(
            UserId::parse("id", s("FF3C06DE-9E43-41C7-9BAB-578F6B4AD32B"))
                .unwrap()
                .is_uuid()
        );
        for not_uuid in [
            "admin",
            "ff3c06de9e4341c79bab578f6b4ad32b",
            "ff3c06de-9e43-41c7-9bab-578f6b4ad32",
            "gf3c06de-9e43-41c7-9bab-578f6b4ad32b",
            "ff3c06de_9e43-41c7-9bab-578f6b4ad32b",
        ] {
            assert!(
                !UserId::parse("id", s(not_uuid)).unwrap().is_uuid(),
                "{not_uuid}"
            );
        }
        let generated = UserId::generate();
        assert_eq!(
            uuid::Uuid::parse_str(generated.as_str())
                .unwrap()
                .get_version_num(),
            4
        );
    }

    #[test]
    fn emails_are_validated_and_lowercased() {
        assert_eq!(
            Email::parse(s("Asim@Example.COM")).unwrap().as_str(),
            "asim@example.com"
        );
        for bad in [
            "asim",
            "asim@",
            "@example.com",
            "a b@example.com",
            "Asim <a@example.com>",
            "a@[127.0.0.1]",
            "a@localhost",
            "a\0@example.com",
        ] {
            assert!(Email::parse(s(bad)).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            Email::parse(s("ａｓｉｍ@ｅｘａｍｐｌｅ.com"))
                .unwrap()
                .as_str(),
            "asim@example.com"
        );
        // Other scripts are refused rather than compared: Cyrillic 'а' looks like 'a'.
        assert!(Email::parse(s("\u{430}sim@example.com")).is_err());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(s(&long)).is_err());
    }

    #[test]
    fn new_passwords_count_code_points_and_are_never_truncated() {
        assert!(Password::new_password("password", s("1234567")).is_err());
        assert!(Password::new_password("password", s("12345678")).is_ok());
        // Eight code points of four bytes each: long enough.
        assert!(Password::new_password("password", s("🔑🔑🔑🔑🔑🔑🔑🔑")).is_ok());
        assert!(Password::new_password("password", s(&"é".repeat(1024))).is_ok());
        let err = Password::new_password("password", s(&"x".repeat(1025))).unwrap_err();
        assert_eq!(err.to_string(), "password must be at most 1024 characters");
        for control in ["passw\0rd123", "password\n123", "pass\u{7f}word1"] {
            let err = Password::new_password("password", s(control)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "password must not contain control characters"
            );
        }
        let kept = Password::new_password("password", s(" spaced out ")).unwrap();
        assert_eq!(kept.expose(), " spaced out ");
    }

    #[test]
    fn password_debug_output_is_redacted() {
        let p = Password::candidate("password", s("hunter2hunter2")).unwrap();
        assert!(!format!("{p:?}").contains("hunter2"));
    }

    #[test]
    fn password_change_requires_matching_confirmation() {
        let err = PasswordChange::parse(s("u1"), s("old"), s("newpassword1"), s("newpassword2"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "confirm_password does not match new_password"
        );
        let err = PasswordChange::parse(s("u1"), s("old"), s("short"), s("short")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "new_password must be at least 8 characters"
        );
        assert!(
            PasswordChange::parse(s("u1"), s("old"), s("newpassword1"), s("newpassword1")).is_ok()
        );
    }

    #[test]
    fn pages_default_and_bound_the_limit() {
        assert_eq!(
            Page::parse(None, None).unwrap(),
            Page {
                limit: 25,
                offset: 0
            }
        );
        assert_eq!(
            Page::parse(Some(0), Some(5)).unwrap(),
            Page {
                limit: 25,
                offset: 5
            }
        );
        assert_eq!(Page::parse(Some(1000), None).unwrap().limit, 1000);
        assert!(Page::parse(Some(1001), None).is_err());
        assert!(Page::parse(Some(-1), None).is_err());
        assert!(Page::parse(None, Some(-1)).is_err());
    }

    #[test]
    fn login_prefers_username_and_needs_one_identifier() {
        assert!(
            matches!(LoginName::parse(s("Asim"), s("a@example.com")).unwrap(), LoginName::Username(u) if u.as_str() == "asim")
        );
        assert!(
            matches!(LoginName::parse(s(""), s("A@example.com")).unwrap(), LoginName::Email(e) if e.as_str() == "a@example.com")
        );
        assert_eq!(
            LoginName::parse(None, s("")).unwrap_err().to_string(),
            "username or email is required"
        );
    }
}
