//! One-time secrets sent by e-mail: verification and magic-link tokens (256 random bits,
//! like session tokens) and password reset codes (short enough to type). The store keeps
//! only their SHA-256, under the purpose they were made for.

use super::SignInMethod;
use rand::rngs::OsRng;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::TokenDigest;

/// What a one-time token is for. A user has at most one live token per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Proves the e-mail address (the verification link).
    VerifyEmail,
    /// Sets a new password (the reset code).
    ResetPassword,
    /// Opens a session (the magic link).
    MagicLink,
    /// Opens a session once a second factor is shown: the challenge a sign-in that
    /// passed its first step (this one) answers with, for a user with a second factor.
    SecondStep(SignInMethod),
    /// Adds a passkey: the registration ceremony in progress (its state is kept with it).
    PasskeyRegistration,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
            Self::MagicLink => "magic_link",
            Self::SecondStep(SignInMethod::Password) => "second_step:password",
            Self::SecondStep(SignInMethod::MagicLink) => "second_step:magic_link",
            Self::SecondStep(SignInMethod::Passkey) => "second_step:passkey",
            Self::PasskeyRegistration => "passkey_registration",
        }
    }

    /// The purpose a stored token was made for, if it is a sign-in's second step.
    pub fn second_step(stored: &str) -> Option<SignInMethod> {
        [SignInMethod::Password, SignInMethod::MagicLink]
            .into_iter()
            .find(|method| Self::SecondStep(*method).as_str() == stored)
    }
}

/// Wrong codes that may be tried against one reset code; then it is void, and a new one
/// must be sent.
pub const RESET_CODE_MAX_WRONG: i64 = 5;

/// Characters of a reset code: capitals and digits without the look-alikes 0/O and 1/I.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// 10 characters of 32: 50 bits, of which at most [`RESET_CODE_MAX_WRONG`] guesses are tried.
pub(super) const CODE_LEN: usize = 10;

/// `len` characters of [`CODE_ALPHABET`] from the operating system's CSPRNG.
pub(super) fn random_code(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| char::from(CODE_ALPHABET[rng.gen_range(0..CODE_ALPHABET.len())]))
        .collect()
}

/// A password reset code as the user reads it from the e-mail.
pub struct ResetCode(SecretString);

impl ResetCode {
    pub fn generate() -> Self {
        Self(SecretString::from(random_code(CODE_LEN)))
    }

    /// A code typed by a user: case and surrounding spaces do not matter.
    pub fn typed(raw: &str) -> Self {
        Self(SecretString::from(raw.trim().to_ascii_uppercase()))
    }

    /// Codes are short, so the digest binds the code to its user: the same code for two
    /// users is two different keys, and a code only ever works for the account it was
    /// sent to.
    pub fn digest(&self, user_id: &str) -> TokenDigest {
        let material = format!("{user_id}\n{}", self.0.expose_secret());
        TokenDigest::of(material.as_bytes())
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ResetCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetCode([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_use_the_unambiguous_alphabet() {
        let code = ResetCode::generate();
        assert_eq!(code.expose().len(), CODE_LEN);
        assert!(code.expose().bytes().all(|b| CODE_ALPHABET.contains(&b)));
    }

    #[test]
    fn typed_codes_match_whatever_their_case() {
        let code = ResetCode::generate();
        let typed = ResetCode::typed(&format!(" {} ", code.expose().to_lowercase()));
        assert_eq!(typed.digest("u1"), code.digest("u1"));
        assert_ne!(code.digest("u1"), code.digest("u2"));
    }
}
