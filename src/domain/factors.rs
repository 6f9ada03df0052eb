//! How a session was signed in, and the second factors: TOTP codes and recovery codes.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};

use super::one_time::{random_code, CODE_LEN};
use super::{required, TokenDigest};
use crate::error::Error;

/// The first step of a sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInMethod {
    Password,
    MagicLink,
    Passkey,
}

impl SignInMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::MagicLink => "magic_link",
            Self::Passkey => "passkey",
        }
    }

    /// A method read back from the store or an export; None for an unknown one.
    pub fn from_stored(text: &str) -> Option<Self> {
        match text {
            "password" => Some(Self::Password),
            "magic_link" => Some(Self::MagicLink),
            "passkey" => Some(Self::Passkey),
            _ => None,
        }
    }
}

/// The second factor a sign-in used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    Totp,
    RecoveryCode,
    Passkey,
}

impl SecondFactor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Totp => "totp",
            Self::RecoveryCode => "recovery_code",
            Self::Passkey => "passkey",
        }
    }

    pub fn from_stored(text: &str) -> Option<Self> {
        match text {
            "totp" => Some(Self::Totp),
            "recovery_code" => Some(Self::RecoveryCode),
            "passkey" => Some(Self::Passkey),
            _ => None,
        }
    }
}

/// How a session was made: its first step and, if one was asked, its second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignIn {
    pub method: SignInMethod,
    pub second_factor: Option<SecondFactor>,
}

impl SignIn {
    pub fn one_step(method: SignInMethod) -> Self {
        Self {
            method,
            second_factor: None,
        }
    }
}

/// Digits of a TOTP code.
pub const TOTP_DIGITS: usize = 6;

/// A TOTP code as typed: six digits (spaces ignored, "123 456" is fine).
pub struct TotpCode(String);

impl TotpCode {
    pub fn parse(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let code: String = required(field, raw)?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(
                field,
                format!("must be the {TOTP_DIGITS} digits the authenticator app shows"),
            ));
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode([REDACTED])")
    }
}

/// A recovery code: ten characters of the reset codes' alphabet, shown as `ABCDE-FGHJK`
/// and accepted in any case, with or without the dash and spaces.
pub struct RecoveryCode(SecretString);

/// How many recovery codes a user gets when TOTP is confirmed.
pub const RECOVERY_CODES: usize = 10;

impl RecoveryCode {
    pub fn generate() -> Self {
        Self(SecretString::from(random_code(CODE_LEN)))
    }

    /// A code the user typed.
    pub fn parse(field: &'static str, raw: Option<String>) -> Result<Self, Error> {
        let code: String = required(field, raw)?
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if code.len() != CODE_LEN {
            return Err(Error::invalid(
                field,
                "must be one of the recovery codes given when two-factor sign-in was turned on",
            ));
        }
        Ok(Self(SecretString::from(code)))
    }

    /// As the user reads it: two groups of five.
    pub fn display(&self) -> String {
        let code = self.0.expose_secret();
        let (head, tail) = code.split_at(code.len() / 2);
        format!("{head}-{tail}")
    }

    /// Bound to its user (as reset codes are) and kept apart from them.
    pub fn digest(&self, user_id: &str) -> TokenDigest {
        let material = format!("recovery\n{user_id}\n{}", self.0.expose_secret());
        TokenDigest::of(material.as_bytes())
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode([REDACTED])")
    }
}

/// The second step a sign-in must take: a TOTP code or a recovery code.
#[derive(Debug)]
pub enum SecondStep {
    Totp(TotpCode),
    Recovery(RecoveryCode),
}

impl SecondStep {
    pub fn parse(code: Option<String>, recovery_code: Option<String>) -> Result<Self, Error> {
        match (super::optional(code), super::optional(recovery_code)) {
            (Some(code), None) => Ok(Self::Totp(TotpCode::parse("code", Some(code))?)),
            (None, Some(code)) => Ok(Self::Recovery(RecoveryCode::parse(
                "recovery_code",
                Some(code),
            )?)),
            (None, None) => Err(Error::invalid(
                "code",
                "is required (or a recovery_code instead)",
            )),
            (Some(_), Some(_)) => Err(Error::invalid(
                "code",
                "and recovery_code cannot both be given",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_codes_are_six_digits() {
        assert_eq!(
            TotpCode::parse("code", Some(" 123 456 ".into()))
                .unwrap()
                .as_str(),
            "123456"
        );
        for bad in ["12345", "1234567", "12a456", ""] {
            assert!(TotpCode::parse("code", Some(bad.into())).is_err(), "{bad}");
        }
    }

    #[test]
    fn recovery_codes_are_read_as_shown_in_any_case() {
        let code = RecoveryCode::generate();
        let typed = RecoveryCode::parse("r", Some(code.display().to_lowercase())).unwrap();
        assert_eq!(typed.digest("u1"), code.digest("u1"));
        assert_ne!(code.digest("u1"), code.digest("u2"));
        assert!(!format!("{code:?}").contains(&code.display()));
    }

    #[test]
    fn a_second_step_is_one_code_or_the_other() {
        assert!(matches!(
            SecondStep::parse(Some("123456".into()), None),
            Ok(SecondStep::Totp(_))
        ));
        assert!(SecondStep::parse(None, None).is_err());
        assert!(SecondStep::parse(Some("123456".into()), Some("ABCDE-FGHJK".into())).is_err());
    }
}
