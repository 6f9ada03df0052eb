//! Secret tokens: session ids, and the one-time tokens of e-mailed links, made the same
//! way. A token is 256 bits from the operating system's CSPRNG, written as URL-safe
//! base64. The store keeps only its SHA-256 digest and looks it up by that, so a copy of
//! the database hands out no live session or link.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::domain::required;
use crate::error::Error;

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// Longest session id accepted from a client; anything longer cannot be one of ours.
const TOKEN_MAX_LEN: usize = 1024;

/// A session id or the token of an e-mailed link, as the client holds it.
pub struct SecretToken(SecretString);

impl SecretToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        OsRng.fill_bytes(&mut bytes);
        Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// A session id sent by a client. Any non-empty value is accepted: one that is not
    /// ours simply matches no session.
    pub fn parse(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let value = required(field, raw)?;
        if value.chars().count() > TOKEN_MAX_LEN {
            return Err(Error::invalid(
                field,
                format!("must be at most {TOKEN_MAX_LEN} characters"),
            ));
        }
        Ok(Self(SecretString::from(value)))
    }

    /// The digest under which the store keeps this session.
    pub fn digest(&self) -> TokenDigest {
        TokenDigest::of(self.0.expose_secret().as_bytes())
    }

    /// The token as a secret string, for a layer that knows no domain types.
    pub fn into_secret(self) -> SecretString {
        self.0
    }

    /// The token itself, for the one response that hands it to its holder.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken([REDACTED])")
    }
}

/// Hex SHA-256 of a session token: the session's key in the store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TokenDigest(String);

impl TokenDigest {
    /// Hex SHA-256 of `secret`.
    pub fn of(secret: &[u8]) -> Self {
        Self(sha256_hex(secret))
    }

    /// A digest read back from the store (export/import).
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The session's public handle: the digest's first hex digits.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle::from_stored(&self.0)
    }
}

/// How a user names one of their sessions (ListSessions, RevokeSession): the first 16
/// hex digits of its token's digest. It reveals nothing of the token, and among one
/// user's sessions it is unique for all practical purposes (64 bits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHandle(String);

impl SessionHandle {
    pub const LEN: usize = 16;

    pub fn parse(field: &'static str, value: Option<String>) -> Result<Self, Error> {
        let value = value.unwrap_or_default();
        let value = value.trim();
        if value.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if value.len() != Self::LEN || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                field,
                format!("must be the {} hex digits ListSessions gives", Self::LEN),
            ));
        }
        Ok(Self(value.to_ascii_lowercase()))
    }

    /// A handle read back from the store.
    pub fn from_stored(hex: &str) -> Self {
        Self(hex.chars().take(Self::LEN).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// SHA-256 of `data` in lowercase hex: how the store keys what it must not hold in the
/// clear (session and one-time tokens, rate-limit subjects).
pub fn sha256_hex(data: &[u8]) -> String {
    // Into a buffer rather than through `format!("{:x}")`, whose formatter runs once per
    // byte and cost every session lookup more than the lookup's own SQL parameters
    // (docs/performance/read-path-syscalls.md).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(Sha256::digest(data)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0x0f)];
    }
    String::from_utf8_lossy(&hex).into_owned()
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenDigest([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_256_bits_in_url_safe_base64() {
        let token = SecretToken::generate();
        let raw = URL_SAFE_NO_PAD.decode(token.expose()).unwrap();
        assert_eq!(raw.len(), 32);
        assert!(token
            .expose()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(token.expose(), SecretToken::generate().expose());
    }

    #[test]
    fn the_digest_is_sha256_of_the_token() {
        let token = SecretToken::parse("session_id", Some("abc".into())).unwrap();
        assert_eq!(
            token.digest().as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let token = SecretToken::generate();
        assert!(!format!("{token:?}").contains(token.expose()));
        assert!(!format!("{:?}", token.digest()).contains(token.digest().as_str()));
    }
}
