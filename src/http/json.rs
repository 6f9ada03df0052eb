//! Request decoding as the Micro gateway did it: the body is JSON whatever the
//! Content-Type says (curl -d sends a form type), and an empty body means `{}`.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use std::fmt;

use crate::error::Error;

/// Deepest accepted nesting of arrays and objects. No request needs more than two
/// levels; the bound keeps hostile bodies from costing recursion.
pub const MAX_DEPTH: usize = 32;

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body: &[u8] = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => b"{}",
        Some(b'{') => body,
        // serde would also read an array as a struct's fields in order; a request is
        // always an object.
        Some(_) => {
            return Err(Error::Malformed(
                "invalid JSON body: expected a JSON object".to_string(),
            ))
        }
    };
    if depth_exceeds(body, MAX_DEPTH) {
        return Err(Error::Malformed(format!(
            "invalid JSON body: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    // Decoding the same bytes is deterministic: a body that fails here fails again in
    // `malformed`, where the path to the bad field is tracked. Tracking it on every
    // request cost the ones that succeed a quarter more (docs/performance/read-path-syscalls.md).
    let value = T::deserialize(&mut json).map_err(|_| malformed::<T>(body))?;
    json.end()
        .map_err(|err| Error::Malformed(format!("invalid JSON body: {err}")))?;
    Ok(value)
}

/// Why `body` does not decode as a `T`, naming the field at fault when there is one.
fn malformed<T: DeserializeOwned>(body: &[u8]) -> Error {
    let mut json = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut json) {
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if path == "." || path == "?" {
                Error::Malformed(format!("invalid JSON body: {inner}"))
            } else {
                Error::Malformed(format!("invalid JSON body at `{path}`: {inner}"))
            }
        }
        // Unreachable for serde_json, which decodes the same bytes the same way twice;
        // still an answer rather than a panic.
        Ok(_) => Error::Malformed("invalid JSON body".to_string()),
    }
}

/// Whether arrays and objects in `body` nest deeper than `max`, counting brackets outside
/// strings. One pass, no allocation.
fn depth_exceeds(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// An int64 sent either as a JSON number or as a decimal string (protobuf JSON writes
/// 64-bit integers as strings and accepts both). `null` is absent.
pub fn int_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    struct IntVisitor;

    impl<'de> Visitor<'de> for IntVisitor {
        type Value = Option<i64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer or a string holding a decimal integer")
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::custom("integer out of range"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            // 10.0 is an integer in JSON's eyes; 10.5 is not.
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(Some(v as i64))
            } else {
                Err(E::invalid_value(de::Unexpected::Float(v), &self))
            }
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            if v.is_empty() {
                return Ok(None);
            }
            v.parse::<i64>()
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    deserializer.deserialize_any(IntVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        name: Option<String>,
        #[serde(default, deserialize_with = "int_or_string")]
        n: Option<i64>,
    }

    #[test]
    fn an_empty_body_is_an_empty_object() {
        let p: Probe = decode(b"").unwrap();
        assert!(p.name.is_none() && p.n.is_none());
        let p: Probe = decode(b"  \n").unwrap();
        assert!(p.name.is_none());
    }

    #[test]
    fn integers_come_as_numbers_or_decimal_strings() {
        for (body, n) in [
            (&br#"{"n": 7}"#[..], Some(7)),
            (br#"{"n": "7"}"#, Some(7)),
            (br#"{"n": -3}"#, Some(-3)),
            (br#"{"n": 7.0}"#, Some(7)),
            (br#"{"n": null}"#, None),
            (br#"{"n": ""}"#, None),
        ] {
            let p: Probe = decode(body).unwrap();
            assert_eq!(p.n, n, "{}", String::from_utf8_lossy(body));
        }
        for body in [
            &br#"{"n": "7x"}"#[..],
            br#"{"n": 7.5}"#,
            br#"{"n": true}"#,
            br#"{"n": 18446744073709551615}"#,
        ] {
            assert!(
                decode::<Probe>(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{{\"x\": {}{}}}", "[".repeat(40), "]".repeat(40));
        let err = decode::<Probe>(deep.as_bytes()).unwrap_err().to_string();
        assert_eq!(err, "invalid JSON body: nested deeper than 32 levels");
        let fine = format!("{{\"x\": {}{}}}", "[".repeat(31), "]".repeat(31));
        assert!(decode::<Probe>(fine.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let quoted = format!("{{\"name\": \"{}\\\"\"}}", "[".repeat(100));
        assert!(decode::<Probe>(quoted.as_bytes()).is_ok(), "{quoted}");
    }

    #[test]
    fn errors_say_where() {
        let err = decode::<Probe>(br#"{"name": 5}"#).unwrap_err().to_string();
        assert!(
            err.contains("`name`") && err.contains("line 1 column"),
            "{err}"
        );
        let err = decode::<Probe>(br#"{"name": "x""#).unwrap_err().to_string();
        assert!(
            err.starts_with("invalid JSON body") && err.contains("line 1"),
            "{err}"
        );
        let err = decode::<Probe>(br#"{} {}"#).unwrap_err().to_string();
        assert!(err.contains("trailing characters"), "{err}");
        for not_an_object in [&br#"["x", 1]"#[..], b"null", b"5", b"\"x\""] {
            let err = decode::<Probe>(not_an_object).unwrap_err().to_string();
            assert_eq!(err, "invalid JSON body: expected a JSON object");
        }
    }
}

/// An int64 as protobuf JSON writes it: a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int64(pub i64);

impl serde::Serialize for Int64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // itoa rather than `collect_str`, which goes through a formatter and a string
        // escaper for ten digits.
        serializer.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

/// `{}`: the answer of methods that return nothing.
#[derive(serde::Serialize)]
pub struct Empty {}

impl From<()> for Empty {
    fn from((): ()) -> Self {
        Self {}
    }
}
