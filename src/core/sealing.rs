//! Secrets the service must read back, sealed at rest under the operator's keys.
//!
//! Passwords, session ids and one-time tokens are stored as hashes: the service never
//! needs them back. A TOTP secret is different: every code is computed from it, so it is
//! stored whole, and a copy of the database (a backup, a stolen disk) would hand out
//! every user's second factor. With `--encryption-key`, such a secret is stored as
//!
//! ```text
//! sealed:v1:<key id>:<base64url of nonce (12 bytes) | AES-256-GCM ciphertext and tag>
//! ```
//!
//! The key id is the first 4 bytes of the key's SHA-256, in hex, so that the right key
//! is found without naming keys. The associated data binds a sealed value to what it
//! is and to its user: one copied to another user's row does not open. Several keys may
//! be given: the first seals, every one opens, so a key is replaced by putting the new
//! one first, running `users-service reseal`, then dropping the old one.
//!
//! Without a key, secrets are stored in clear, as before; a value in clear (stored
//! before a key was set) is read as it is, until `reseal` seals it.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use base64::engine::general_purpose::{GeneralPurpose, STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::Error;
use crate::store::{FactorStore, Store, StoreError};

/// What a sealed value starts with.
const PREFIX: &str = "sealed:v1:";
/// Bytes of a key (AES-256).
pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// What a sealed value is; part of its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// A user's TOTP secret.
    TotpSecret,
}

impl Sealed {
    fn label(self) -> &'static str {
        match self {
            Sealed::TotpSecret => "totp-secret",
        }
    }
}

/// One key, with its id.
#[derive(Clone)]
struct SealingKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The operator's keys: the first seals, all open. Empty: secrets stay in clear.
#[derive(Clone, Default)]
pub struct SealingKeys {
    keys: Vec<SealingKey>,
}

impl fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The ids only: they name the keys and reveal nothing of them.
        f.debug_list()
            .entries(self.keys.iter().map(|key| &key.id))
            .finish()
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("a secret is sealed under key {0}, which is not among --encryption-key's keys")]
    UnknownKey(String),
    #[error("a sealed secret does not open under key {0}: altered, or not this user's")]
    Refused(String),
    #[error("a sealed secret is malformed")]
    Malformed,
}

impl SealingKeys {
    /// Keys written as base64 (standard or URL-safe, padded or not) of 32 bytes each,
    /// separated by commas or new lines; blank entries are skipped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys: Vec<SealingKey> = Vec::new();
        for (n, entry) in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let bytes = decode_key(entry).ok_or_else(|| {
                format!(
                    "key {} is not base64 of {KEY_BYTES} bytes (make one with `openssl rand -base64 32`)",
                    n + 1
                )
            })?;
            let id = key_id(&bytes);
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("key {} is given twice", n + 1));
            }
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|e| e.to_string())?;
            keys.push(SealingKey { id, cipher });
        }
        Ok(Self { keys })
    }

    /// Whether secrets are sealed at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the key that seals, if any.
    pub fn current(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// `clear`, sealed under the first key for `owner` (in clear without keys).
    pub fn seal(&self, what: Sealed, owner: &str, clear: &str) -> Result<String, Error> {
        let Some(key) = self.keys.first() else {
            return Ok(clear.to_string());
        };
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(what, owner);
        let sealed = key
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: clear.as_bytes(),
                    aad: &aad,
                },
            )
            .map_err(|_| Error::internal("AES-GCM refused to seal"))?;
        let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(format!(
            "{PREFIX}{}:{}",
            key.id,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// The secret `stored` holds: opened if sealed, as it is if in clear.
    pub fn open(&self, what: Sealed, owner: &str, stored: &str) -> Result<String, OpenError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, body) = rest.split_once(':').ok_or(OpenError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| OpenError::UnknownKey(id.to_string()))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < NONCE_BYTES {
            return Err(OpenError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| OpenError::Malformed)?;
        let aad = associated_data(what, owner);
        let clear = key
            .cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Refused(id.to_string()))?;
        String::from_utf8(clear).map_err(|_| OpenError::Malformed)
    }

    /// Whether `stored` is sealed under the key that seals now (what `reseal` leaves
    /// alone). Without keys, whether it is in clear.
    pub fn is_current(&self, stored: &str) -> bool {
        match (self.current(), sealed_under(stored)) {
            (Some(current), Some(id)) => current == id,
            (None, None) => true,
            _ => false,
        }
    }
}

/// The id of the key a stored value is sealed under; None for a value in clear.
pub fn sealed_under(stored: &str) -> Option<&str> {
    stored
        .strip_prefix(PREFIX)
        .map(|rest| rest.split_once(':').map_or(rest, |(id, _)| id))
}

/// Bytes of a key's SHA-256 that name it, and the hex digits they make.
const KEY_ID_BYTES: usize = 4;
const KEY_ID_LEN: u32 = 2 * KEY_ID_BYTES as u32;

/// The stored TOTP secrets, counted by the key that sealed them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredSecrets {
    /// Secrets in clear.
    pub clear: i64,
    /// Secrets sealed under keys not given, and those keys' ids.
    pub without_key: i64,
    pub unknown_keys: Vec<String>,
}

impl StoredSecrets {
    /// An error naming the keys missing, if some secrets are sealed under them.
    pub fn keys_missing(&self) -> Result<(), String> {
        if self.without_key == 0 {
            return Ok(());
        }
        Err(format!(
            "{} TOTP secret(s) are encrypted under key(s) {} that --encryption-key does not give",
            self.without_key,
            self.unknown_keys.join(",")
        ))
    }
}

/// Counts the stored TOTP secrets by key: one scan of the table.
pub async fn count_stored(
    store: &dyn FactorStore,
    keys: &SealingKeys,
) -> Result<StoredSecrets, StoreError> {
    let mut found = StoredSecrets::default();
    for (key, count) in store.totp_secrets_by_prefix(PREFIX, KEY_ID_LEN).await? {
        match key {
            None => found.clear += count,
            Some(id) if !keys.keys.iter().any(|k| k.id == id) => {
                found.without_key += count;
                found.unknown_keys.push(id);
            }
            Some(_) => {}
        }
    }
    Ok(found)
}

/// What a start finds of the stored TOTP secrets: warns of those no given key opens
/// (their users cannot pass the second step with a code) and of those still in clear
/// while a key is given (`reseal` seals them).
pub async fn check_stored(store: &dyn Store, keys: &SealingKeys, tenant: Option<&str>) {
    let found = match count_stored(store, keys).await {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(error = %err, "the stored TOTP secrets could not be counted");
            return;
        }
    };
    let of = tenant.map_or_else(String::new, |t| format!(" (tenant {t})"));
    if keys.enabled() && found.clear > 0 {
        tracing::warn!(
            secrets = found.clear,
            "TOTP secrets{of} are stored in clear although --encryption-key is set: run `users-service reseal`"
        );
    }
    if found.without_key > 0 {
        tracing::warn!(
            secrets = found.without_key,
            keys = %found.unknown_keys.join(","),
            "TOTP secrets{of} are encrypted under keys --encryption-key does not give: their users cannot pass the second step with a code"
        );
    }
    // Said last: what a start found is all above.
    tracing::debug!(
        clear = found.clear,
        without_key = found.without_key,
        "the stored TOTP secrets{of} are counted"
    );
}

/// What [`reseal`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    /// Secrets sealed under the current key (from clear or from an older key).
    pub sealed: u64,
    /// Secrets already under it.
    pub unchanged: u64,
    /// Secrets changed by a user meanwhile (a new enrolment, sealed as it was made).
    pub skipped: u64,
}

/// Why [`reseal`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("reseal needs the key to encrypt with: --encryption-key or --encryption-key-file")]
    NoKey,
    #[error("the database failed")]
    Store(#[from] StoreError),
    #[error("the TOTP secret of user {user_id} cannot be read: {source}")]
    Unsealed { user_id: String, source: OpenError },
    #[error("cannot seal a secret")]
    Seal(#[source] Error),
    #[error("{0}: give them after the first")]
    KeysMissing(String),
}

/// Secrets read per page.
const RESEAL_PAGE: u32 = 500;

/// Seals every stored TOTP secret under the first of `keys`: those in clear (stored
/// before a key was set) and those under an older key, which must be among `keys`.
/// Each secret is replaced only if it is still the one read, so a user's enrolment
/// made meanwhile stays; the service may keep running.
pub async fn reseal(store: &dyn Store, keys: &SealingKeys) -> Result<Resealed, ResealError> {
    if !keys.enabled() {
        return Err(ResealError::NoKey);
    }
    // Every secret must open before any is rewritten.
    count_stored(store, keys)
        .await?
        .keys_missing()
        .map_err(ResealError::KeysMissing)?;
    let mut done = Resealed::default();
    let mut after = None;
    loop {
        let page = store.factors_page(after.take(), RESEAL_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.user_id.clone());
        for factors in page {
            let user_id = factors.user_id;
            let stored = factors.totp.secret;
            if keys.is_current(&stored) {
                done.unchanged += 1;
                continue;
            }
            let clear = keys
                .open(Sealed::TotpSecret, &user_id, &stored)
                .map_err(|source| ResealError::Unsealed {
                    user_id: user_id.clone(),
                    source,
                })?;
            let sealed = keys
                .seal(Sealed::TotpSecret, &user_id, &clear)
                .map_err(ResealError::Seal)?;
            if store
                .replace_totp_secret(&user_id, &stored, &sealed)
                .await?
            {
                done.sealed += 1;
            } else {
                done.skipped += 1;
            }
        }
    }
    Ok(done)
}

fn decode_key(entry: &str) -> Option<Zeroizing<Vec<u8>>> {
    let trimmed = entry.trim_end_matches('=');
    let readings: [(&GeneralPurpose, &str); 3] = [
        (&STANDARD, entry),
        (&STANDARD_NO_PAD, trimmed),
        (&URL_SAFE_NO_PAD, trimmed),
    ];
    readings
        .into_iter()
        .filter_map(|(engine, text)| engine.decode(text).ok().map(Zeroizing::new))
        .find(|bytes| bytes.len() == KEY_BYTES)
}

fn key_id(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    digest[..KEY_ID_BYTES]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn associated_data(what: Sealed, owner: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + owner.len());
    aad.extend_from_slice(b"users-service:");
    aad.extend_from_slice(what.label().as_bytes());
    aad.push(0);
    aad.extend_from_slice(owner.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    #[test]
    fn a_sealed_secret_opens_for_its_owner_only() {
        let keys = SealingKeys::parse(A).unwrap();
        let sealed = keys.seal(Sealed::TotpSecret, "u1", SECRET).unwrap();
        assert!(sealed.starts_with("sealed:v1:"), "{sealed}");
        assert!(!sealed.contains(SECRET));
        assert_eq!(
            keys.open(Sealed::TotpSecret, "u1", &sealed).unwrap(),
            SECRET
        );
        assert!(matches!(
            keys.open(Sealed::TotpSecret, "u2", &sealed),
            Err(OpenError::Refused(_))
        ));
        // Sealed twice, two different values (a fresh nonce each time).
        assert_ne!(sealed, keys.seal(Sealed::TotpSecret, "u1", SECRET).unwrap());
    }

    #[test]
    fn the_first_key_seals_and_every_key_opens() {
        let old = SealingKeys::parse(A).unwrap();
        let sealed_old = old.seal(Sealed::TotpSecret, "u1", SECRET).unwrap();
        let both = SealingKeys::parse(&format!("{B},\n{A}")).unwrap();
        let sealed_new = both.seal(Sealed::TotpSecret, "u1", SECRET).unwrap();
        assert_eq!(sealed_under(&sealed_new), both.current());
        assert_ne!(sealed_under(&sealed_new), sealed_under(&sealed_old));
        for sealed in [&sealed_old, &sealed_new] {
            assert_eq!(both.open(Sealed::TotpSecret, "u1", sealed).unwrap(), SECRET);
        }
        assert!(!both.is_current(&sealed_old));
        assert!(both.is_current(&sealed_new));
        assert!(!both.is_current(SECRET));
        // The old key alone does not know the new one.
        assert!(matches!(
            old.open(Sealed::TotpSecret, "u1", &sealed_new),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn without_keys_secrets_stay_in_clear_and_clear_ones_read_as_they_are() {
        let none = SealingKeys::default();
        assert!(!none.enabled());
        assert_eq!(none.seal(Sealed::TotpSecret, "u1", SECRET).unwrap(), SECRET);
        assert!(none.is_current(SECRET));
        let keys = SealingKeys::parse(A).unwrap();
        assert_eq!(keys.open(Sealed::TotpSecret, "u1", SECRET).unwrap(), SECRET);
        let sealed = keys.seal(Sealed::TotpSecret, "u1", SECRET).unwrap();
        assert!(matches!(
            none.open(Sealed::TotpSecret, "u1", &sealed),
            Err(OpenError::UnknownKey(_))
        ));
    }

    #[test]
    fn an_altered_value_does_not_open() {
        let keys = SealingKeys::parse(A).unwrap();
        let sealed = keys.seal(Sealed::TotpSecret, "u1", SECRET).unwrap();
        let mut bytes = sealed.into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(keys.open(Sealed::TotpSecret, "u1", &altered).is_err());
        let id = keys.current().unwrap();
        for malformed in [format!("sealed:v1:{id}"), format!("sealed:v1:{id}:!!")] {
            assert_eq!(
                keys.open(Sealed::TotpSecret, "u1", &malformed),
                Err(OpenError::Malformed)
            );
        }
    }

    #[test]
    fn keys_are_base64_of_32_bytes_and_never_shown() {
        let url_safe = URL_SAFE_NO_PAD.encode(STANDARD.decode(B).unwrap());
        assert!(SealingKeys::parse(&url_safe).unwrap().enabled());
        assert!(SealingKeys::parse("").unwrap().keys.is_empty());
        assert!(SealingKeys::parse(" , \n").unwrap().keys.is_empty());
        let short = STANDARD.encode([7u8; 16]);
        assert!(SealingKeys::parse(&short).unwrap_err().contains("32 bytes"));
        assert!(SealingKeys::parse("not base64!").is_err());
        assert!(SealingKeys::parse(&format!("{A},{A}"))
            .unwrap_err()
            .contains("twice"));
        let shown = format!("{:?}", SealingKeys::parse(&format!("{A},{B}")).unwrap());
        assert!(!shown.contains(A) && !shown.contains(&A[..12]), "{shown}");
        assert_eq!(shown.matches('"').count(), 4, "two ids: {shown}");
    }
}
