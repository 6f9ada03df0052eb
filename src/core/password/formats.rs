//! The password hash formats the service can check: its own argon2id, and those other
//! systems write, so that accounts moved in from them keep their passwords. A foreign
//! hash is checked as it is until the account's next sign-in, which replaces it with
//! the configured argon2id.
//!
//! | Format | As written by | Stored as |
//! | --- | --- | --- |
//! | `$argon2id$v=19$m=..,t=..,p=..$salt$hash` (and `$argon2i$`) | this service, PHC tools | itself |
//! | `argon2$argon2id$...` | Django's `Argon2PasswordHasher` | itself |
//! | `$2a$`, `$2b$`, `$2y$` + cost | bcrypt (PocketBase, Supabase, Auth0, ...) | itself |
//! | `$scrypt$ln=..,r=..,p=..$salt$hash` | PHC tools (passlib, RustCrypto) | itself |
//! | `<32 hex>:<128 hex>` | better-auth (scrypt N=2^14, r=16, p=1 over the NFKC form) | itself |
//! | `$firescrypt$ln=..,r=..,p=..$salt$hash$separator$signer` | Firebase Auth, with its project's parameters | built on import |
//! | `$pbkdf2-sha256$i=..,l=..$salt$hash` (`-sha512`; or passlib's `$pbkdf2-sha256$rounds$...`) | PHC tools | itself |
//! | `pbkdf2_sha256$rounds$salt$hash` (`pbkdf2_sha512`) | Django's `PBKDF2PasswordHasher` | itself |
//!
//! What a hash costs to check is bounded when it comes in ([`CostLimits`]), so that an
//! import cannot plant a hash that takes a minute of CPU, or a gigabyte, to check.

use argon2::password_hash::PasswordHash;
use argon2::Params;
use base64::Engine;
use subtle::ConstantTimeEq;
use unicode_normalization::UnicodeNormalization;

/// The most a hash that comes in from elsewhere may cost to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimits {
    /// bcrypt's cost (log2 of its rounds).
    pub bcrypt_cost: u32,
    /// scrypt's N as a power of two; N·r·p may be at most 8 times 2^this (the work of
    /// N = 2^this, r = 8, p = 1).
    pub scrypt_log_n: u8,
    /// PBKDF2's iterations.
    pub pbkdf2_iterations: u32,
    /// argon2's memory, in KiB.
    pub argon2_m_kib: u32,
    /// argon2's passes.
    pub argon2_t: u32,
}

impl Default for CostLimits {
    fn default() -> Self {
        Self {
            bcrypt_cost: 14,
            scrypt_log_n: 17,
            pbkdf2_iterations: 2_000_000,
            argon2_m_kib: 1024 * 1024,
            argon2_t: 10,
        }
    }
}

/// A stored hash, read.
pub enum StoredHash<'a> {
    /// argon2, checked by the hasher itself (with its memory kept between checks);
    /// `django` when written in Django's form, replaced at the next sign-in whatever
    /// its parameters.
    Argon2 {
        hash: PasswordHash<'a>,
        django: bool,
    },
    /// A format of another system.
    Foreign(Foreign),
}

/// A foreign hash, with what checking it needs.
pub enum Foreign {
    Bcrypt {
        hash: String,
        cost: u32,
    },
    Scrypt {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
        /// The password is checked in its NFKC form (better-auth's).
        nfkc: bool,
    },
    /// Firebase's scrypt: the key derived from the password and the salt followed by
    /// the project's separator encrypts the project's signer key with AES-256-CTR.
    Firebase {
        log_n: u8,
        r: u32,
        p: u32,
        salt: Vec<u8>,
        signer_key: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2 {
        sha512: bool,
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// Lengths a derived key may have, in bytes.
const KEY_LENGTHS: std::ops::RangeInclusive<usize> = 16..=128;

impl<'a> StoredHash<'a> {
    /// Reads a stored hash in one of the formats above; the error says what is wrong.
    pub fn parse(stored: &'a str) -> Result<Self, String> {
        if stored.starts_with("argon2$") {
            // Django's: its algorithm's name, then a PHC string.
            let hash = argon2(&stored["argon2".len()..])?;
            return Ok(StoredHash::Argon2 { hash, django: true });
        }
        if stored.starts_with("$argon2") {
            let hash = argon2(stored)?;
            return Ok(StoredHash::Argon2 {
                hash,
                django: false,
            });
        }
        foreign(stored).map(StoredHash::Foreign)
    }

    /// Refuses a hash that costs more to check than `limits` allow, or that is made
    /// with parameters no checker accepts.
    pub fn check_cost(&self, limits: &CostLimits) -> Result<(), String> {
        match self {
            StoredHash::Argon2 { hash, .. } => {
                let params = Params::try_from(hash)
                    .map_err(|e| format!("argon2 parameters are unusable: {e}"))?;
                if params.m_cost() > limits.argon2_m_kib || params.t_cost() > limits.argon2_t {
                    return Err(format!(
                        "argon2 m={} KiB, t={} costs more than allowed (m <= {}, t <= {})",
                        params.m_cost(),
                        params.t_cost(),
                        limits.argon2_m_kib,
                        limits.argon2_t
                    ));
                }
                Ok(())
            }
            StoredHash::Foreign(foreign) => foreign.check_cost(limits),
        }
    }
}

fn argon2(phc: &str) -> Result<PasswordHash<'_>, String> {
    let hash = PasswordHash::new(phc).map_err(|e| format!("not a readable argon2 hash: {e}"))?;
    argon2::Algorithm::try_from(hash.algorithm)
        .map_err(|e| format!("not a readable argon2 hash: {e}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("not a readable argon2 hash: no salt or no hash".into());
    }
    Params::try_from(&hash).map_err(|e| format!("argon2 parameters are unusable: {e}"))?;
    Ok(hash)
}

fn foreign(stored: &str) -> Result<Foreign, String> {
    if ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored.starts_with(prefix))
    {
        // $2b$12$ + 22 characters of salt + 31 of hash, read as the checker reads it.
        let parts = stored
            .parse::<bcrypt::HashParts>()
            .map_err(|e| format!("not a readable bcrypt hash: {e}"))?;
        return Ok(Foreign::Bcrypt {
            hash: stored.to_string(),
            cost: parts.get_cost(),
        });
    }
    if let Some(rest) = stored.strip_prefix("$scrypt$") {
        let [params, salt, hash] = fields(rest, "scrypt")?;
        let (log_n, r, p) = scrypt_params(params)?;
        let hash = key(b64(hash, "hash")?)?;
        usable_scrypt(log_n, r, p, hash.len())?;
        return Ok(Foreign::Scrypt {
            log_n,
            r,
            p,
            salt: b64(salt, "salt")?,
            hash,
            nfkc: false,
        });
    }
    if let Some(rest) = stored.strip_prefix("$firescrypt$") {
        let [params, salt, hash, separator, signer] = fields(rest, "firescrypt")?;
        let (log_n, r, p) = scrypt_params(params)?;
        usable_scrypt(log_n, r, p, 32)?;
        let mut salt = b64(salt, "salt")?;
        salt.extend(b64(separator, "salt separator")?);
        let signer_key = b64(signer, "signer key")?;
        let hash = b64(hash, "hash")?;
        if hash.len() != signer_key.len() || !KEY_LENGTHS.contains(&hash.len()) {
            return Err("a firescrypt hash is as long as its signer key".into());
        }
        return Ok(Foreign::Firebase {
            log_n,
            r,
            p,
            salt,
            signer_key,
            hash,
        });
    }
    for (prefix, sha512) in [
        ("$pbkdf2-sha256$", false),
        ("$pbkdf2-sha512$", true),
        ("pbkdf2_sha256$", false),
        ("pbkdf2_sha512$", true),
    ] {
        let Some(rest) = stored.strip_prefix(prefix) else {
            continue;
        };
        let [params, salt, hash] = fields(rest, "pbkdf2")?;
        let django = !prefix.starts_with('$');
        let iterations = if django || params.bytes().all(|b| b.is_ascii_digit()) {
            params.parse::<u32>().ok()
        } else {
            params
                .split(',')
                .find_map(|kv| kv.strip_prefix("i="))
                .and_then(|i| i.parse::<u32>().ok())
        }
        .filter(|i| *i > 0)
        .ok_or("pbkdf2 iterations are unreadable")?;
        // Django's salt is text, used as it is; PHC's is base64.
        let salt = if django {
            salt.as_bytes().to_vec()
        } else {
            b64(salt, "salt")?
        };
        return Ok(Foreign::Pbkdf2 {
            sha512,
            iterations,
            salt,
            hash: key(b64(hash, "hash")?)?,
        });
    }
    if let Some((salt, hash)) = better_auth(stored) {
        return Ok(Foreign::Scrypt {
            log_n: 14,
            r: 16,
            p: 1,
            // The salt is the hex text itself, not the bytes it spells.
            salt: salt.as_bytes().to_vec(),
            hash,
            nfkc: true,
        });
    }
    Err("not a password hash format the service knows (argon2, bcrypt, scrypt, firescrypt, pbkdf2, better-auth)".into())
}

/// better-auth's `<salt: 32 hex>:<key: 128 hex>`.
fn better_auth(stored: &str) -> Option<(&str, Vec<u8>)> {
    let (salt, key) = stored.split_once(':')?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if salt.len() != 32 || key.len() != 128 || !hex(salt) || !hex(key) {
        return None;
    }
    let bytes = (0..key.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&key[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    Some((salt, bytes))
}

/// Exactly `N` `$`-separated fields.
fn fields<'s, const N: usize>(rest: &'s str, name: &str) -> Result<[&'s str; N], String> {
    let parts: Vec<&str> = rest.split('$').collect();
    parts
        .try_into()
        .map_err(|_| format!("not a readable {name} hash: it has {N} fields after its name"))
}

/// `ln=..,r=..,p=..`.
fn scrypt_params(params: &str) -> Result<(u8, u32, u32), String> {
    let (mut log_n, mut r, mut p) = (None, None, None);
    for kv in params.split(',') {
        match kv.split_once('=') {
            Some(("ln", v)) => log_n = v.parse::<u8>().ok(),
            Some(("r", v)) => r = v.parse::<u32>().ok(),
            Some(("p", v)) => p = v.parse::<u32>().ok(),
            _ => return Err(format!("unknown scrypt parameter {kv:?}")),
        }
    }
    match (log_n, r, p) {
        (Some(log_n @ 1..=63), Some(r @ 1..), Some(p @ 1..)) => Ok((log_n, r, p)),
        _ => Err("scrypt needs ln, r and p, each at least 1".into()),
    }
}

/// Refuses scrypt parameters the checker would refuse.
fn usable_scrypt(log_n: u8, r: u32, p: u32, len: usize) -> Result<(), String> {
    scrypt::Params::new(log_n, r, p, len)
        .map(|_| ())
        .map_err(|e| format!("scrypt parameters are unusable: {e}"))
}

/// Base64 as the formats write it: standard or with `.` for `+` (passlib's), padded or
/// not.
fn b64(text: &str, what: &str) -> Result<Vec<u8>, String> {
    let text = text.trim_end_matches('=').replace('.', "+");
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .map_err(|_| format!("the {what} is not base64"))
}

fn key(hash: Vec<u8>) -> Result<Vec<u8>, String> {
    if KEY_LENGTHS.contains(&hash.len()) {
        Ok(hash)
    } else {
        Err(format!(
            "a hash of {} bytes is outside {}..={}",
            hash.len(),
            KEY_LENGTHS.start(),
            KEY_LENGTHS.end()
        ))
    }
}

fn scrypt_cost(log_n: u8, r: u32, p: u32, limits: &CostLimits) -> Result<(), String> {
    let work = (u128::from(r) * u128::from(p)) << log_n;
    let most = 8u128 << limits.scrypt_log_n;
    if log_n > limits.scrypt_log_n || work > most {
        return Err(format!(
            "scrypt N=2^{log_n}, r={r}, p={p} costs more than allowed (N <= 2^{}, N*r*p <= 2^{})",
            limits.scrypt_log_n,
            limits.scrypt_log_n + 3
        ));
    }
    Ok(())
}

impl Foreign {
    fn check_cost(&self, limits: &CostLimits) -> Result<(), String> {
        match self {
            Foreign::Bcrypt { cost, .. } => {
                if !(4..=31).contains(cost) {
                    return Err(format!("bcrypt cost {cost} is outside 4..=31"));
                }
                if *cost > limits.bcrypt_cost {
                    return Err(format!(
                        "bcrypt cost {cost} costs more than allowed (<= {})",
                        limits.bcrypt_cost
                    ));
                }
                Ok(())
            }
            Foreign::Scrypt { log_n, r, p, .. } | Foreign::Firebase { log_n, r, p, .. } => {
                scrypt_cost(*log_n, *r, *p, limits)
            }
            Foreign::Pbkdf2 { iterations, .. } => {
                if *iterations > limits.pbkdf2_iterations {
                    return Err(format!(
                        "pbkdf2 with {iterations} iterations costs more than allowed (<= {})",
                        limits.pbkdf2_iterations
                    ));
                }
                Ok(())
            }
        }
    }

    /// Whether `password` matches; slow by design, so it runs on the hashing pool.
    pub fn verify(&self, password: &str) -> Result<bool, String> {
        match self {
            Foreign::Bcrypt { hash, .. } => {
                bcrypt::verify(password, hash).map_err(|e| format!("bcrypt: {e}"))
            }
            Foreign::Scrypt {
                log_n,
                r,
                p,
                salt,
                hash,
                nfkc,
            } => {
                let normalised: String;
                let password = if *nfkc {
                    normalised = password.nfkc().collect();
                    normalised.as_str()
                } else {
                    password
                };
                let derived = scrypt(password, salt, *log_n, *r, *p, hash.len())?;
                Ok(bool::from(derived.ct_eq(hash)))
            }
            Foreign::Firebase {
                log_n,
                r,
                p,
                salt,
                signer_key,
                hash,
            } => {
                use aes::cipher::{KeyIvInit, StreamCipher};
                let derived = scrypt(password, salt, *log_n, *r, *p, 32)?;
                let mut sealed = signer_key.clone();
                let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new_from_slices(&derived, &[0; 16])
                    .map_err(|e| format!("firescrypt: {e}"))?;
                cipher.apply_keystream(&mut sealed);
                Ok(bool::from(sealed.ct_eq(hash)))
            }
            Foreign::Pbkdf2 {
                sha512,
                iterations,
                salt,
                hash,
            } => {
                let mut derived = vec![0u8; hash.len()];
                if *sha512 {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
                        password.as_bytes(),
                        salt,
                        *iterations,
                        &mut derived,
                    );
                } else {
                    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                        password.as_bytes(),
                        salt,
                        *iterations,
                        &mut derived,
                    );
                }
                Ok(bool::from(derived.ct_eq(hash)))
            }
        }
    }
}

fn scrypt(
    password: &str,
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
    len: usize,
) -> Result<Vec<u8>, String> {
    let params =
        scrypt::Params::new(log_n, r, p, len).map_err(|e| format!("scrypt parameters: {e}"))?;
    let mut derived = vec![0u8; len];
    scrypt::scrypt(password.as_bytes(), salt, &params, &mut derived)
        .map_err(|e| format!("scrypt: {e}"))?;
    Ok(derived)
}

/// The `$firescrypt$` hash of a Firebase Auth user, from its export (`passwordHash` and
/// `salt`, base64) and the project's hash parameters (the console's "Password hash
/// parameters": `base64_signer_key`, `base64_salt_separator`, `rounds`, `mem_cost`).
pub fn firebase_hash(
    password_hash: &str,
    salt: &str,
    project: &FirebaseProject,
) -> Result<String, String> {
    let standard = base64::engine::general_purpose::STANDARD_NO_PAD;
    let hash = standard.encode(b64(password_hash, "passwordHash")?);
    let salt = standard.encode(b64(salt, "salt")?);
    let stored = format!(
        "$firescrypt$ln={},r={},p=1${salt}${hash}${}${}",
        project.mem_cost,
        project.rounds,
        standard.encode(b64(&project.salt_separator, "salt separator")?),
        standard.encode(b64(&project.signer_key, "signer key")?),
    );
    foreign(&stored)?;
    Ok(stored)
}

/// A Firebase project's password hash parameters.
#[derive(Debug, Clone)]
pub struct FirebaseProject {
    pub signer_key: String,
    pub salt_separator: String,
    pub rounds: u32,
    pub mem_cost: u8,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(stored: &str, password: &str) -> bool {
        match StoredHash::parse(stored).unwrap() {
            StoredHash::Foreign(f) => f.verify(password).unwrap(),
            StoredHash::Argon2 { .. } => panic!("argon2 is the hasher's"),
        }
    }

    #[test]
    fn firebase_scrypt_matches_its_published_example() {
        // From firebase/scrypt's README: a project's parameters and one user.
        let project = FirebaseProject {
            signer_key: "jxspr8Ki0RYycVU8zykbdLGjFQ3McFUH0uiiTvC8pVMXAn210wjLNmdZJzxUECKbm0QsEmYUSDzZvpjeJ9WmXA==".into(),
            salt_separator: "Bw==".into(),
            rounds: 8,
            mem_cost: 14,
        };
        let stored = firebase_hash(
            "lSrfV15cpx95/sZS2W9c9Kp6i/LVgQNDNC/qzrCnh1SAyZvqmZqAjTdn3aoItz+VHjoZilo78198JAdRuid5lQ==",
            "42xEC+ixf3L2lw==",
            &project,
        )
        .unwrap();
        assert!(stored.starts_with("$firescrypt$ln=14,r=8,p=1$"));
        assert!(check(&stored, "user1password"));
        assert!(!check(&stored, "user1passwore"));
    }

    #[test]
    fn unknown_and_malformed_hashes_are_refused_with_a_reason() {
        for bad in [
            "",
            "plain-text",
            "$2b$12$short",
            "$2b$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz01234",
            "$scrypt$ln=14,r=8$c2FsdA$aGFzaA",
            "$scrypt$ln=14,r=8,p=1$c2FsdA$aGFzaA",
            "pbkdf2_sha256$many$salt$aGFzaGhhc2hoYXNoaGFzaA==",
            "$md5$abc",
            "md5$salt$hash",
        ] {
            assert!(StoredHash::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn costs_above_the_limits_are_refused() {
        let limits = CostLimits::default();
        let cost = |stored: &str| StoredHash::parse(stored).unwrap().check_cost(&limits);
        // A real hash's salt and output, under other costs.
        let salt_and_hash = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";
        assert!(cost(&format!("$2b$14${salt_and_hash}")).is_ok());
        assert!(cost(&format!("$2y$15${salt_and_hash}")).is_err());
        let h = "aGFzaGhhc2hoYXNoaGFzaA";
        assert!(cost(&format!("$scrypt$ln=17,r=8,p=1$c2FsdA${h}")).is_ok());
        assert!(cost(&format!("$scrypt$ln=18,r=8,p=1$c2FsdA${h}")).is_err());
        assert!(cost(&format!("$scrypt$ln=17,r=8,p=2$c2FsdA${h}")).is_err());
        assert!(cost(&format!("pbkdf2_sha256$2000000$salt${h}")).is_ok());
        assert!(cost(&format!("pbkdf2_sha256$2000001$salt${h}")).is_err());
        assert!(cost(&format!(
            "$argon2id$v=19$m=1048576,t=10,p=4$c2FsdHNhbHQ${h}"
        ))
        .is_ok());
        assert!(cost(&format!("$argon2id$v=19$m=1048577,t=2,p=1$c2FsdHNhbHQ${h}")).is_err());
        assert!(cost(&format!("$argon2id$v=19$m=19456,t=11,p=1$c2FsdHNhbHQ${h}")).is_err());
    }

    #[test]
    fn django_argon2_is_read_as_its_phc_string() {
        let h = "argon2$argon2id$v=19$m=102400,t=2,p=8$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        match StoredHash::parse(h).unwrap() {
            StoredHash::Argon2 { hash, django } => {
                assert_eq!(hash.algorithm.as_str(), "argon2id");
                assert!(django);
            }
            StoredHash::Foreign(_) => panic!("argon2 expected"),
        }
    }
}
