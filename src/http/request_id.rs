//! Request ids: each request carries one, so that one request can be found in the logs
//! and the audit trail, across a proxy and this service.
//!
//! An incoming `X-Request-Id` (set by a proxy or the client) of 1 to 128 printable
//! ASCII characters is kept; otherwise the service makes one, 32 hexadecimal digits of
//! randomness. Either way it is echoed in the answer's `X-Request-Id`, named in every
//! log line of the request (`request_id`) and recorded with the request's audit events.

use std::fmt;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderName, HeaderValue};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a request.
pub const MAX_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// The request's own id when it sent an acceptable one, else a new one.
    pub fn of(headers: &HeaderMap) -> Self {
        headers
            .get(REQUEST_ID)
            .and_then(|value| Self::parse(value.as_bytes()))
            .unwrap_or_else(Self::generate)
    }

    fn parse(bytes: &[u8]) -> Option<Self> {
        let acceptable = !bytes.is_empty()
            && bytes.len() <= MAX_LEN
            && bytes.iter().all(|b| (0x20..0x7f).contains(b))
            && bytes.iter().any(|b| *b != b' ');
        // Printable ASCII is UTF-8.
        acceptable
            .then(|| std::str::from_utf8(bytes).ok().map(|s| Self(Arc::from(s))))
            .flatten()
    }

    fn generate() -> Self {
        // From the thread's generator (ChaCha, seeded by the system): a uuid v4 asked the
        // kernel for its randomness on every request, a system call each.
        let hex = hex(rand::random());
        // Hexadecimal digits are ASCII; the id is copied once, into its Arc.
        Self(Arc::from(std::str::from_utf8(&hex).unwrap_or_default()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The id as a response header value.
    pub fn header_value(&self) -> Option<HeaderValue> {
        HeaderValue::from_str(&self.0).ok()
    }
}

/// `bits` in 32 lowercase hexadecimal digits, on the stack.
fn hex(bits: u128) -> [u8; 32] {
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    hex
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_its_bits_in_hexadecimal() {
        for bits in [0, 1, 0xfedc_ba98_7654_3210_0123_4567_89ab_cdef, u128::MAX] {
            assert_eq!(hex(bits), format!("{bits:032x}").as_bytes());
        }
    }

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn a_printable_id_of_at_most_128_characters_is_kept() {
        assert_eq!(
            RequestId::of(&with(b"req-42 from proxy")).as_str(),
            "req-42 from proxy"
        );
        let longest = "a".repeat(MAX_LEN);
        assert_eq!(RequestId::of(&with(longest.as_bytes())).as_str(), longest);
    }

    #[test]
    fn anything_else_is_replaced_by_a_new_id() {
        let too_long = "a".repeat(MAX_LEN + 1);
        for bad in [
            too_long.as_bytes(),
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            b"   ",
        ] {
            let id = RequestId::of(&with(bad));
            assert_eq!(id.as_str().len(), 32, "{bad:?}");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let a = RequestId::of(&HeaderMap::new());
        let b = RequestId::of(&HeaderMap::new());
        assert_ne!(a, b);
    }
}
