//! The configurable part of the password policy (NIST SP 800-63B 5.1.1.2): a minimum
//! length that can be raised above 8, a list of common passwords, and no password equal
//! to the account's own username or e-mail. There are no composition rules.

use std::collections::HashSet;
use std::sync::LazyLock;

use crate::domain::{Password, PASSWORD_MAX_LEN, PASSWORD_MIN_LEN};
use crate::error::Error;

/// The 19,640 most common passwords, lowercased (see data/README.md).
static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../data/common-passwords.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
});

#[derive(Debug, Clone, Copy)]
pub struct PasswordPolicy {
    min_len: usize,
}

impl PasswordPolicy {
    /// `min_len` must lie in 8..=1024 code points.
    pub fn new(min_len: usize) -> Result<Self, String> {
        if !(PASSWORD_MIN_LEN..=PASSWORD_MAX_LEN).contains(&min_len) {
            return Err(format!(
                "the minimum password length must be between {PASSWORD_MIN_LEN} and {PASSWORD_MAX_LEN}"
            ));
        }
        // Build the list now rather than on the first sign-up.
        LazyLock::force(&COMMON);
        Ok(Self { min_len })
    }

    /// Checks a new password of the account `username` / `email`.
    pub fn check(
        &self,
        field: &'static str,
        password: &Password,
        username: &str,
        email: &str,
    ) -> Result<(), Error> {
        let value = password.expose();
        if value.chars().count() < self.min_len {
            return Err(Error::invalid(
                field,
                format!("must be at least {} characters", self.min_len),
            ));
        }
        let folded = value.to_lowercase();
        if folded == username || folded == email {
            return Err(Error::invalid(
                field,
                "must not be the same as the username or email",
            ));
        }
        if COMMON.contains(folded.as_str()) {
            return Err(Error::invalid(
                field,
                "is one of the most commonly used passwords; choose another",
            ));
        }
        Ok(())
    }
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_len: PASSWORD_MIN_LEN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pw(v: &str) -> Password {
        Password::candidate("password", Some(v.to_string())).unwrap()
    }

    #[test]
    fn the_bundled_list_holds_at_least_ten_thousand_passwords() {
        assert!(COMMON.len() >= 10_000, "{}", COMMON.len());
        assert!(COMMON.contains("password1"));
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        let policy = PasswordPolicy::default();
        for common in [
            "password1",
            "PASSWORD1",
            "Password1",
            "12345678",
            "iloveyou",
        ] {
            let err = policy
                .check("password", &pw(common), "asim", "asim@example.com")
                .unwrap_err();
            assert!(
                err.to_string().contains("most commonly used"),
                "{common}: {err}"
            );
        }
        assert!(policy
            .check(
                "password",
                &pw("correct-horse-1"),
                "asim",
                "asim@example.com"
            )
            .is_ok());
    }

    #[test]
    fn the_username_or_email_is_not_a_password() {
        let policy = PasswordPolicy::default();
        let err = policy
            .check("password", &pw("AsimAsim"), "asimasim", "a@example.com")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "password must not be the same as the username or email"
        );
        assert!(policy
            .check(
                "password",
                &pw("Asim@Example.com"),
                "asim",
                "asim@example.com"
            )
            .is_err());
    }

    #[test]
    fn the_minimum_length_can_be_raised_but_not_lowered() {
        assert!(PasswordPolicy::new(7).is_err());
        assert!(PasswordPolicy::new(1025).is_err());
        let policy = PasswordPolicy::new(12).unwrap();
        let err = policy
            .check("new_password", &pw("elevenchars"), "u", "u@example.com")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "new_password must be at least 12 characters"
        );
        assert!(policy
            .check("new_password", &pw("twelve-chars"), "u", "u@example.com")
            .is_ok());
    }
}
