//! TOTP (RFC 6238) as this service uses it: SHA-1, six digits, 30-second steps, a code
//! accepted for the step before and after the current one too. Computed by `totp-rs`;
//! the enrolment's QR code is drawn by `qrcode` as SVG.

use qrcode::render::svg;
use qrcode::QrCode;
use rand::rngs::OsRng;
use rand::RngCore;
use totp_rs::{Builder, Secret, Totp};

use crate::domain::TotpCode;
use crate::error::Error;

/// Seconds in a time step.
pub const STEP: u64 = 30;
/// Steps accepted either side of the current one.
const SKEW: u16 = 1;
/// Bytes of a secret: 160 bits, as RFC 4226 recommends.
const SECRET_BYTES: usize = 20;

/// What an authenticator app is given when TOTP is turned on.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The secret in base32, for typing in by hand.
    pub secret: String,
    /// The `otpauth://totp/...` URI that the QR code holds.
    pub uri: String,
    /// The QR code of `uri`, as an SVG document.
    pub qr_svg: String,
}

/// A new random secret, in base32.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    OsRng.fill_bytes(&mut bytes);
    Secret::from(bytes).to_base32()
}

fn totp(secret: &str, issuer: &str, account: &str) -> Result<Totp, Error> {
    let secret = Secret::try_from_base32(secret).map_err(|e| Error::internal(e.to_string()))?;
    // Neither may hold ':', which separates them in the URI's label.
    let clean = |text: &str| text.replace(':', " ");
    Builder::new()
        .with_secret(secret)
        .with_skew(SKEW)
        .with_step_duration(STEP)
        .with_issuer(Some(clean(issuer)))
        .with_account_name(clean(account))
        .build()
        .map_err(|e| Error::internal(e.to_string()))
}

/// Whether `secret` is base32 of a key the service can use (as an import brings it).
pub fn check_secret(secret: &str) -> Result<(), String> {
    let key = Secret::try_from_base32(secret).map_err(|e| e.to_string())?;
    Builder::new()
        .with_secret(key)
        .build()
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The URI and QR code that hand `secret` to an authenticator app, labelled with the
/// service's name (`issuer`) and the user's `account`.
pub fn enrolment(secret: String, issuer: &str, account: &str) -> Result<Enrolment, Error> {
    let uri = totp(&secret, issuer, account)?
        .to_url()
        .map_err(|e| Error::internal(e.to_string()))?;
    let qr_svg = QrCode::new(uri.as_bytes())
        .map_err(Error::internal)?
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    Ok(Enrolment {
        secret,
        uri,
        qr_svg,
    })
}

/// The time step `code` is right for at `now` (within the window), if any.
pub fn accepted_step(secret: &str, code: &TotpCode, now: i64) -> Result<Option<i64>, Error> {
    let totp = totp(secret, "", "")?;
    let now = u64::try_from(now).unwrap_or(0);
    Ok(totp
        .check(code.as_str(), now)
        .map(|step| i64::try_from(step).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, Appendix B: the SHA-1 secret "12345678901234567890" at T = 59 gives
    /// 94287082, whose last six digits are the code.
    #[test]
    fn codes_follow_rfc_6238() {
        let secret = Secret::from(b"12345678901234567890".to_vec()).to_base32();
        let code = TotpCode::parse("code", Some("287082".into())).unwrap();
        assert_eq!(accepted_step(&secret, &code, 59).unwrap(), Some(1));
        // One step either side, not two.
        assert_eq!(accepted_step(&secret, &code, 59 + 30).unwrap(), Some(1));
        assert_eq!(accepted_step(&secret, &code, 59 + 60).unwrap(), None);
        let wrong = TotpCode::parse("code", Some("287083".into())).unwrap();
        assert_eq!(accepted_step(&secret, &wrong, 59).unwrap(), None);
    }

    #[test]
    fn the_enrolment_holds_the_secret_in_its_uri_and_qr_code() {
        let secret = new_secret();
        let enrolment = enrolment(secret.clone(), "Acme: users", "ada@example.com").unwrap();
        assert!(enrolment.uri.starts_with("otpauth://totp/"));
        assert!(enrolment.uri.contains(&format!("secret={secret}")));
        assert!(enrolment.qr_svg.contains("<svg"));
    }
}
