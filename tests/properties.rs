//! Property tests of request decoding and validation: whatever bytes or text a client
//! sends, decoding and the domain parsers answer with a value or a 400-class error,
//! never a panic, and every value they accept keeps the documented invariants.
#![allow(clippy::unwrap_used)] // test code: a panic is a failed run

use proptest::collection::vec;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use unicode_normalization::UnicodeNormalization;

use users_service::domain::{
    Email, LoginName, NewAccount, NewSecret, Page, Password, UserId, Username, DEFAULT_LIMIT,
    EMAIL_MAX_LEN, ID_MAX_LEN, MAX_LIMIT, PASSWORD_MAX_LEN, PASSWORD_MIN_LEN, USERNAME_MAX_LEN,
};
use users_service::http::json::{decode, MAX_DEPTH};
use users_service::http::methods::{
    AccountRequest, CreateRequest, IdRequest, ListRequest, LoginRequest, ResetPasswordRequest,
    SearchRequest, SendMagicLinkRequest, SendPasswordResetEmailRequest,
    SendVerificationEmailRequest, SessionRequest, TokenRequest, UpdatePasswordRequest,
    UpdateRequest, UserIdRequest,
};
use users_service::Error;

const CASES: u32 = 256;

// ---- Helpers ---------------------------------------------------------------------------

/// What decoding a body as `T` gave: `Ok(None)` accepted, `Ok(Some(detail))` refused as
/// malformed. Any other error kind fails the property.
fn decoded<T: DeserializeOwned>(body: &[u8]) -> Result<Option<String>, TestCaseError> {
    match decode::<T>(body) {
        Ok(_) => Ok(None),
        Err(Error::Malformed(detail)) => {
            prop_assert!(
                detail.starts_with("invalid JSON body"),
                "detail {detail:?} for {:?}",
                String::from_utf8_lossy(body)
            );
            Ok(Some(detail))
        }
        Err(other) => Err(TestCaseError::fail(format!(
            "decoding {:?} failed with {other:?}, not Error::Malformed",
            String::from_utf8_lossy(body)
        ))),
    }
}

/// Decodes `body` as every request type (and as a plain JSON value); each must accept it
/// or refuse it as malformed.
fn decode_as_every_request(body: &[u8]) -> Result<(), TestCaseError> {
    decoded::<Value>(body)?;
    decoded::<CreateRequest>(body)?;
    decoded::<IdRequest>(body)?;
    decoded::<UpdateRequest>(body)?;
    decoded::<SearchRequest>(body)?;
    decoded::<UpdatePasswordRequest>(body)?;
    decoded::<LoginRequest>(body)?;
    decoded::<SessionRequest>(body)?;
    decoded::<AccountRequest>(body)?;
    decoded::<ListRequest>(body)?;
    decoded::<UserIdRequest>(body)?;
    decoded::<TokenRequest>(body)?;
    decoded::<SendVerificationEmailRequest>(body)?;
    decoded::<SendPasswordResetEmailRequest>(body)?;
    decoded::<ResetPasswordRequest>(body)?;
    decoded::<SendMagicLinkRequest>(body)?;
    Ok(())
}

/// Nesting depth of arrays and objects: a scalar is 0, `{}` and `[]` are 1.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn nfkc(value: &str) -> String {
    value.nfkc().collect()
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A parse result reduced to what can be compared: the accepted text or the message.
fn shown<T>(result: Result<T, Error>, text: impl Fn(&T) -> String) -> Result<String, String> {
    result.as_ref().map(text).map_err(ToString::to_string)
}

// ---- Strategies ------------------------------------------------------------------------

/// Characters chosen to stress normalisation, case mapping and the name and e-mail rules:
/// the name alphabet, fullwidth forms, compatibility characters that NFKC turns into
/// ASCII (or into several characters), whitespace and control characters, look-alikes
/// from other scripts, and anything at all.
fn tricky_char() -> impl Strategy<Value = char> {
    const NAME: &str = "abcxyzABCXYZ0189._-";
    const SPECIAL: &str = "@.+\"\\<>()[],;: \t\n\r\0\u{7F}\u{85}\u{9F}\u{A0}\u{3000}\u{2028}\
        \u{200B}\u{FEFF}\u{301}\u{212A}\u{212B}\u{FB00}\u{FB01}\u{2460}\u{216B}\u{B9}\u{2075}\
        \u{17F}\u{130}\u{131}\u{430}\u{FE6B}\u{2024}\u{FE52}\u{2011}\u{1D400}\u{3392}\u{FDFA}\
        \u{1F511}ßΣéǅ";
    prop_oneof![
        4 => prop::sample::select(NAME.chars().collect::<Vec<_>>()),
        2 => prop::char::range('\u{FF01}', '\u{FF5E}'),
        2 => prop::sample::select(SPECIAL.chars().collect::<Vec<_>>()),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    vec(tricky_char(), 0..=max).prop_map(|chars| chars.into_iter().collect())
}

/// Arbitrary text: fully random, near-miss names, or characters chosen to be tricky.
fn any_text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![any::<String>(), "[A-Za-z0-9._-]{0,70}", tricky_string(max)].boxed()
}

/// Mostly address-shaped text: `local@domain.tld` with tricky parts, plus plain ASCII
/// addresses whose lengths straddle the 254-character limit.
fn email_like() -> BoxedStrategy<String> {
    let tricky = (
        tricky_string(20),
        prop::sample::select(vec!["@", "@", "\u{FF20}", "", "@@"]),
        tricky_string(20),
        prop::sample::select(vec![".", "\u{FF0E}", ""]),
        "[a-zA-Z]{0,6}",
    )
        .prop_map(|(local, at, domain, dot, tld)| format!("{local}{at}{domain}{dot}{tld}"));
    let long = (1usize..=70, vec(1usize..=66, 2..=5)).prop_map(|(local, labels)| {
        let domain: Vec<String> = labels.iter().map(|n| "d".repeat(*n)).collect();
        format!("{}@{}", "L".repeat(local), domain.join("."))
    });
    prop_oneof![
        3 => tricky,
        2 => "[a-zA-Z0-9._%+-]{1,20}@[a-zA-Z0-9-]{1,15}(\\.[a-zA-Z0-9-]{1,10}){1,2}",
        1 => long,
        1 => any::<String>(),
    ]
    .boxed()
}

/// Password candidates whose lengths straddle the 8 and 1024 code-point bounds: a few
/// tricky characters repeated to a length near a bound, or anything.
fn password_like() -> BoxedStrategy<String> {
    let around = |lengths: std::ops::RangeInclusive<usize>| {
        (vec(tricky_char(), 1..6), lengths)
            .prop_map(|(seed, n)| seed.iter().cycle().take(n).collect::<String>())
    };
    prop_oneof![
        tricky_string(24),
        around(0..=12),
        around(1015..=1030),
        any::<String>(),
    ]
    .boxed()
}

fn maybe(text: BoxedStrategy<String>) -> impl Strategy<Value = Option<String>> {
    prop_oneof![1 => Just(None), 1 => Just(Some(String::new())), 6 => text.prop_map(Some)]
}

/// JSON values without floats (which need not survive a round trip exactly).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        tricky_string(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((any_text(12), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A JSON object, sometimes wrapped deep in arrays and objects so that its depth
/// straddles [`MAX_DEPTH`].
fn json_object() -> impl Strategy<Value = Value> {
    (json_value(), 0usize..40, vec(any::<bool>(), 40)).prop_map(|(value, wraps, kinds)| {
        let mut value = value;
        for as_array in kinds.into_iter().take(wraps) {
            value = if as_array {
                Value::Array(vec![value])
            } else {
                json!({ "k": value })
            };
        }
        match value {
            Value::Object(_) => value,
            other => json!({ "v": other }),
        }
    })
}

/// Bodies assembled from JSON tokens, the request field names in both spellings, and
/// edge-case numbers, strings and escapes: mostly almost-JSON.
fn json_ish() -> impl Strategy<Value = String> {
    // Tokens separated by `|`.
    const TOKENS: &str =
        "{|{|}|}|[|]|:|:|,|,|\"|\\| |\n|null|true|false|0|-1|1.5|10.0|-0|1e400|1e15|\
        9007199254740993|9223372036854775807|9223372036854775808|-9223372036854775809|\
        18446744073709551616|\"\"|\"x\"|\"10\"|\"-3\"|\"1.5\"|\"\\u0000\"|\"\\ud800\"|\
        \"\\uD83D\\uDD11\"|\"\\\"\"|\"[[[[\"|\"id\"|\"username\"|\"email\"|\
        \"password\"|\"limit\"|\"offset\"|\"user_id\"|\"userId\"|\"old_password\"|\
        \"oldPassword\"|\"new_password\"|\"newPassword\"|\"confirm_password\"|\
        \"confirmPassword\"|\"session_id\"|\"sessionId\"|\"\\u0075ser_id\"|\u{FEFF}|\
        \u{C}|\u{A0}";
    let tokens: Vec<&str> = TOKENS.split('|').collect();
    vec(prop::sample::select(tokens), 0..48).prop_map(|tokens| tokens.concat())
}

/// A request field: its snake_case name, its lowerCamelCase name, whether it holds an
/// integer.
type Field = (&'static str, &'static str, bool);

/// Each request type's fields.
const REQUEST_FIELDS: &[(&str, &[Field])] = &[
    (
        "Create",
        &[
            ("id", "id", false),
            ("username", "username", false),
            ("email", "email", false),
            ("password", "password", false),
        ],
    ),
    (
        "Read",
        &[
            ("id", "id", false),
            ("username", "username", false),
            ("email", "email", false),
        ],
    ),
    ("Delete", &[("id", "id", false)]),
    (
        "Update",
        &[
            ("id", "id", false),
            ("username", "username", false),
            ("email", "email", false),
        ],
    ),
    (
        "Search",
        &[
            ("username", "username", false),
            ("email", "email", false),
            ("limit", "limit", true),
            ("offset", "offset", true),
        ],
    ),
    (
        "UpdatePassword",
        &[
            ("user_id", "userId", false),
            ("old_password", "oldPassword", false),
            ("new_password", "newPassword", false),
            ("confirm_password", "confirmPassword", false),
        ],
    ),
    (
        "Login",
        &[
            ("username", "username", false),
            ("email", "email", false),
            ("password", "password", false),
        ],
    ),
    ("Session", &[("session_id", "sessionId", false)]),
    (
        "List",
        &[("limit", "limit", true), ("offset", "offset", true)],
    ),
    ("LogoutAll", &[("user_id", "userId", false)]),
    ("Token", &[("token", "token", false)]),
    (
        "SendVerificationEmail",
        &[
            ("email", "email", false),
            ("subject", "subject", false),
            ("text_content", "textContent", false),
            ("redirect_url", "redirectUrl", false),
            ("failure_redirect_url", "failureRedirectUrl", false),
            ("from_name", "fromName", false),
        ],
    ),
    (
        "SendPasswordResetEmail",
        &[
            ("email", "email", false),
            ("subject", "subject", false),
            ("text_content", "textContent", false),
            ("from_name", "fromName", false),
            ("expiration", "expiration", true),
        ],
    ),
    (
        "ResetPassword",
        &[
            ("email", "email", false),
            ("code", "code", false),
            ("new_password", "newPassword", false),
            ("confirm_password", "confirmPassword", false),
        ],
    ),
    (
        "SendMagicLink",
        &[
            ("email", "email", false),
            ("subject", "subject", false),
            ("text_content", "textContent", false),
            ("from_name", "fromName", false),
            ("address", "address", false),
            ("endpoint", "endpoint", false),
        ],
    ),
];

/// Decodes `body` as the request type named `kind`.
fn decoded_as(kind: &str, body: &[u8]) -> Result<Option<String>, TestCaseError> {
    match kind {
        "Create" => decoded::<CreateRequest>(body),
        "Read" => decoded::<AccountRequest>(body),
        "Delete" => decoded::<IdRequest>(body),
        "List" => decoded::<ListRequest>(body),
        "LogoutAll" => decoded::<UserIdRequest>(body),
        "Token" => decoded::<TokenRequest>(body),
        "SendVerificationEmail" => decoded::<SendVerificationEmailRequest>(body),
        "SendPasswordResetEmail" => decoded::<SendPasswordResetEmailRequest>(body),
        "ResetPassword" => decoded::<ResetPasswordRequest>(body),
        "SendMagicLink" => decoded::<SendMagicLinkRequest>(body),
        "Update" => decoded::<UpdateRequest>(body),
        "Search" => decoded::<SearchRequest>(body),
        "UpdatePassword" => decoded::<UpdatePasswordRequest>(body),
        "Login" => decoded::<LoginRequest>(body),
        "Session" => decoded::<SessionRequest>(body),
        other => unreachable!("{other}"),
    }
}

fn request_kind() -> impl Strategy<Value = (&'static str, &'static [Field])> {
    prop::sample::select(REQUEST_FIELDS.to_vec())
}

/// A value the field accepts: any string for text fields; for integer fields a JSON
/// integer in i64, its decimal string, an integral float, or null / "".
fn good_field_value(integer: bool) -> BoxedStrategy<Value> {
    if integer {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<i64>().prop_map(|n| Value::from(n.to_string())),
            (-1_000_000i64..1_000_000).prop_map(|n| json!(n as f64)),
            Just(Value::Null),
            Just(json!("")),
        ]
        .boxed()
    } else {
        prop_oneof![
            8 => any::<String>().prop_map(Value::String),
            1 => Just(Value::Null),
        ]
        .boxed()
    }
}

/// A value the field refuses.
fn bad_field_value(integer: bool) -> BoxedStrategy<Value> {
    if integer {
        prop_oneof![
            Just(json!(true)),
            Just(json!([])),
            Just(json!({})),
            Just(json!(1.5)),
            Just(json!(1e300)),
            Just(json!("ten")),
            Just(json!("1.0")),
            Just(json!("9223372036854775808")),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::from),
        ]
        .boxed()
    } else {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::Bool),
            Just(json!([])),
            Just(json!({})),
            Just(json!(["x"])),
        ]
        .boxed()
    }
}

// ---- Decoding ----------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn decoding_arbitrary_bytes_gives_a_value_or_malformed(body in vec(any::<u8>(), 0..256)) {
        decode_as_every_request(&body)?;
        let mut framed = b"{".to_vec();
        framed.extend_from_slice(&body);
        decode_as_every_request(&framed)?;
    }

    #[test]
    fn decoding_json_ish_text_gives_a_value_or_malformed(text in json_ish()) {
        decode_as_every_request(text.as_bytes())?;
        decode_as_every_request(format!("{{{text}").as_bytes())?;
        decode_as_every_request(format!("{{\"id\": \"x\", {text}}}").as_bytes())?;
    }

    #[test]
    fn decoding_accepts_only_what_json_accepts(text in json_ish()) {
        // What decode accepts is one JSON object (or blank, meaning `{}`).
        let body = text.as_bytes();
        if let Ok(value) = decode::<Value>(body) {
            if body.iter().all(u8::is_ascii_whitespace) {
                prop_assert_eq!(value, json!({}));
            } else {
                let parsed: Value = serde_json::from_slice(body)
                    .map_err(|e| TestCaseError::fail(format!("decode accepted {text:?}: {e}")))?;
                prop_assert!(parsed.is_object());
                prop_assert!(depth(&parsed) <= MAX_DEPTH);
                prop_assert_eq!(value, parsed);
            }
        }
    }

    #[test]
    fn json_objects_decode_exactly_up_to_the_nesting_limit(value in json_object()) {
        let body = serde_json::to_vec(&value).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        for body in [body, pretty] {
            match decode::<Value>(&body) {
                Ok(decoded) => {
                    prop_assert!(depth(&value) <= MAX_DEPTH, "depth {} accepted", depth(&value));
                    prop_assert_eq!(&decoded, &value);
                }
                Err(Error::Malformed(detail)) => {
                    prop_assert!(depth(&value) > MAX_DEPTH, "depth {}: {}", depth(&value), detail);
                    prop_assert_eq!(
                        detail,
                        format!("invalid JSON body: nested deeper than {MAX_DEPTH} levels")
                    );
                }
                Err(other) => prop_assert!(false, "{:?}", other),
            }
            // Whatever the request type, the answer is a value or a 400.
            decode_as_every_request(&body)?;
        }
    }

    #[test]
    fn non_objects_are_refused(
        value in prop_oneof![
            json_value(),
            vec(json_value(), 0..4).prop_map(Value::Array),
        ]
        .prop_map(|v| if v.is_object() { Value::Array(vec![v]) } else { v })
    ) {
        let body = serde_json::to_vec(&value).unwrap();
        for kind in REQUEST_FIELDS.iter().map(|(kind, _)| *kind) {
            prop_assert_eq!(
                decoded_as(kind, &body)?,
                Some("invalid JSON body: expected a JSON object".to_string()),
                "{} {}", kind, value
            );
        }
    }
}

// ---- Field spellings -------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Every field may be written in snake_case or lowerCamelCase, in any mix; unknown
    /// fields are ignored.
    #[test]
    fn requests_accept_either_spelling_of_every_field(
        (kind, fields) in request_kind(),
        camel in vec(any::<bool>(), 4),
        values in vec((good_field_value(false), good_field_value(true)), 4),
        unknown in vec(("[a-zA-Z_]{1,12}", json_value()), 0..3),
    ) {
        let mut body = Map::new();
        for (((snake, camel_name, integer), camel), (text, int)) in
            fields.iter().zip(camel).zip(values)
        {
            let name = if camel { camel_name } else { snake };
            body.insert(name.to_string(), if *integer { int } else { text });
        }
        for (name, value) in unknown {
            let known = fields.iter().any(|(s, c, _)| name == *s || name == *c);
            if !known {
                body.insert(name, value);
            }
        }
        let body = serde_json::to_vec(&Value::Object(body)).unwrap();
        prop_assert_eq!(decoded_as(kind, &body)?, None, "{} {}", kind, String::from_utf8_lossy(&body));
    }

    /// Both spellings name the same field: a value of the wrong type is refused under
    /// either name (so the name was recognised), and giving both is a duplicate.
    #[test]
    fn both_spellings_are_the_same_field(
        (kind, fields) in request_kind(),
        pick in any::<prop::sample::Index>(),
        bad in (bad_field_value(false), bad_field_value(true)),
        good in (good_field_value(false), good_field_value(true)),
    ) {
        let (snake, camel, integer) = *pick.get(fields);
        let bad = if integer { bad.1 } else { bad.0 };
        let good = if integer { good.1 } else { good.0 };
        for name in [snake, camel] {
            let body = serde_json::to_vec(&json!({ name: bad.clone() })).unwrap();
            let refused = decoded_as(kind, &body)?;
            prop_assert!(refused.is_some(), "{} accepted {}", kind, String::from_utf8_lossy(&body));
            let detail = refused.unwrap();
            prop_assert!(detail.contains(&format!("`{name}`")), "{}", detail);

            let body = serde_json::to_vec(&json!({ name: good.clone() })).unwrap();
            prop_assert_eq!(decoded_as(kind, &body)?, None, "{} {}", kind, String::from_utf8_lossy(&body));
        }
        if snake != camel {
            let body = format!(
                "{{{}: {}, {}: {}}}",
                json!(snake), good, json!(camel), good
            );
            let refused = decoded_as(kind, body.as_bytes())?;
            prop_assert!(
                refused.as_deref().is_some_and(|d| d.contains("duplicate field")),
                "{} {}: {:?}", kind, body, refused
            );
        }
    }
}

// ---- Domain parsers ----------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn usernames_are_normalised_name_characters(raw in any_text(80)) {
        let parsed = Username::parse(Some(raw.clone()));
        if let Ok(name) = &parsed {
            let name = name.as_str();
            let len = name.chars().count();
            prop_assert!((1..=USERNAME_MAX_LEN).contains(&len), "{:?} -> {:?}", raw, name);
            prop_assert!(
                name.chars().all(|c| is_name_char(c) && !c.is_ascii_uppercase()),
                "{:?} -> {:?}", raw, name
            );
            // Parsing is idempotent.
            let again = Username::parse(Some(name.to_string()));
            prop_assert_eq!(again.as_ref().ok(), parsed.as_ref().ok());
        }
        // Names that normalise alike are the same name, whatever their form.
        let text = |u: &Username| u.as_str().to_string();
        prop_assert_eq!(
            shown(Username::parse(Some(nfkc(&raw))), text),
            shown(Username::parse(Some(raw.clone())), text)
        );
        let decomposed: String = raw.nfd().collect();
        prop_assert_eq!(
            shown(Username::parse(Some(decomposed)), text),
            shown(Username::parse(Some(raw.clone())), text)
        );
        // On ASCII, which NFKC leaves alone, the rule is exactly the documented one.
        if raw.is_ascii() {
            let valid = !raw.is_empty() && raw.len() <= USERNAME_MAX_LEN && raw.chars().all(is_name_char);
            prop_assert_eq!(parsed.is_ok(), valid, "{:?}", raw);
            if valid {
                prop_assert_eq!(parsed.unwrap().as_str().to_string(), raw.to_ascii_lowercase());
                prop_assert_eq!(
                    shown(Username::parse(Some(raw.to_ascii_uppercase())), text),
                    Ok(raw.to_ascii_lowercase())
                );
            }
        }
    }

    #[test]
    fn emails_are_normalised_plain_ascii(raw in email_like()) {
        let parsed = Email::parse(Some(raw.clone()));
        if let Ok(email) = &parsed {
            let email = email.as_str();
            prop_assert!(email.is_ascii(), "{:?} -> {:?}", raw, email);
            prop_assert!(!email.chars().any(|c| c.is_ascii_uppercase()), "{:?} -> {:?}", raw, email);
            prop_assert!(
                !email.chars().any(|c| c.is_whitespace() || c.is_control()),
                "{:?} -> {:?}", raw, email
            );
            prop_assert!(!email.is_empty() && email.len() <= EMAIL_MAX_LEN, "{:?} -> {} chars", raw, email.len());
            prop_assert!(email.contains('@'), "{:?} -> {:?}", raw, email);
            let again = Email::parse(Some(email.to_string()));
            prop_assert_eq!(again.as_ref().ok(), parsed.as_ref().ok());
        }
        let text = |e: &Email| e.as_str().to_string();
        prop_assert_eq!(
            shown(Email::parse(Some(nfkc(&raw))), text),
            shown(Email::parse(Some(raw.clone())), text)
        );
        if raw.is_ascii() {
            // Case never decides whether an address is accepted.
            prop_assert_eq!(
                shown(Email::parse(Some(raw.to_ascii_uppercase())), text),
                shown(Email::parse(Some(raw.clone())), text)
            );
        } else if !nfkc(&raw).is_ascii() {
            prop_assert!(parsed.is_err(), "{:?} accepted", raw);
        }
    }

    #[test]
    fn user_ids_are_taken_exactly_as_given(raw in any_text(140)) {
        let valid = !raw.is_empty()
            && raw.chars().count() <= ID_MAX_LEN
            && raw.chars().all(is_name_char);
        match UserId::parse("id", Some(raw.clone())) {
            Ok(id) => {
                prop_assert!(valid, "{:?} accepted", raw);
                prop_assert_eq!(id.as_str(), raw.as_str());
                prop_assert_eq!(UserId::parse("id", Some(raw.clone())).unwrap(), id);
            }
            Err(err) => {
                prop_assert!(!valid, "{:?} refused: {}", raw, err);
                prop_assert!(err.to_string().starts_with("id "), "{}", err);
            }
        }
    }

    #[test]
    fn new_passwords_are_kept_exactly_and_bounded(raw in password_like()) {
        let len = raw.chars().count();
        let valid = (PASSWORD_MIN_LEN..=PASSWORD_MAX_LEN).contains(&len)
            && !raw.chars().any(char::is_control);
        match Password::new_password("password", Some(raw.clone())) {
            Ok(password) => {
                prop_assert!(valid, "{} code points accepted", len);
                prop_assert_eq!(password.expose(), raw.as_str());
                // Its debug output does not depend on it.
                let placeholder = Password::candidate("password", Some("x".to_string())).unwrap();
                prop_assert_eq!(format!("{password:?}"), format!("{placeholder:?}"));
            }
            Err(err) => {
                prop_assert!(!valid, "{} code points refused: {}", len, err);
                prop_assert!(err.to_string().starts_with("password "), "{}", err);
            }
        }
        // A password offered as proof needs only to be given and bounded.
        let candidate_valid = (1..=PASSWORD_MAX_LEN).contains(&len);
        match Password::candidate("password", Some(raw.clone())) {
            Ok(password) => {
                prop_assert!(candidate_valid);
                prop_assert_eq!(password.expose(), raw.as_str());
            }
            Err(_) => prop_assert!(!candidate_valid, "{} code points refused", len),
        }
    }

    #[test]
    fn pages_hold_a_limit_between_1_and_1000(
        limit in prop_oneof![Just(None), (-2i64..1003).prop_map(Some), any::<i64>().prop_map(Some)],
        offset in prop_oneof![Just(None), (-2i64..3).prop_map(Some), any::<i64>().prop_map(Some)],
    ) {
        let valid = limit.is_none_or(|l| (0..=i64::from(MAX_LIMIT)).contains(&l))
            && offset.is_none_or(|o| o >= 0);
        match Page::parse(limit, offset) {
            Ok(page) => {
                prop_assert!(valid, "{:?} {:?} accepted", limit, offset);
                prop_assert!((1..=MAX_LIMIT).contains(&page.limit), "{:?}", page);
                let expected = match limit {
                    None | Some(0) => DEFAULT_LIMIT,
                    Some(l) => u32::try_from(l).unwrap(),
                };
                prop_assert_eq!(page.limit, expected);
                prop_assert_eq!(page.offset, offset.unwrap_or(0).unsigned_abs());
            }
            Err(err) => {
                prop_assert!(!valid, "{:?} {:?} refused: {}", limit, offset, err);
                let message = err.to_string();
                prop_assert!(message.starts_with("limit ") || message.starts_with("offset "), "{}", message);
            }
        }
    }

    #[test]
    fn login_names_prefer_the_username(
        username in maybe(any_text(70)),
        email in maybe(email_like()),
    ) {
        let given = |v: &Option<String>| v.as_ref().is_some_and(|v| !v.is_empty());
        let parsed = LoginName::parse(username.clone(), email.clone());
        if given(&username) {
            let expected = Username::parse(username.clone());
            match (parsed, expected) {
                (Ok(LoginName::Username(got)), Ok(want)) => prop_assert_eq!(got, want),
                (Err(got), Err(want)) => prop_assert_eq!(got.to_string(), want.to_string()),
                (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
            }
        } else if given(&email) {
            let expected = Email::parse(email.clone());
            match (parsed, expected) {
                (Ok(LoginName::Email(got)), Ok(want)) => prop_assert_eq!(got, want),
                (Err(got), Err(want)) => prop_assert_eq!(got.to_string(), want.to_string()),
                (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
            }
        } else {
            prop_assert_eq!(
                parsed.map(|_| ()).map_err(|e| e.to_string()),
                Err("username or email is required".to_string())
            );
        }
    }

    #[test]
    fn new_accounts_are_valid_in_every_part(
        id in maybe(any_text(40)),
        username in maybe(any_text(70)),
        email in maybe(email_like()),
        password in prop::option::of(password_like()),
    ) {
        let parsed = NewAccount::parse(id.clone(), username.clone(), email.clone(), password.clone(), None);
        // The fields are checked in order; the first bad one is the answer.
        let id_given = id.as_ref().is_some_and(|v| !v.is_empty());
        let expected_id = if id_given { UserId::parse("id", id.clone()).map(Some) } else { Ok(None) };
        let first_error = expected_id
            .as_ref()
            .err()
            .map(ToString::to_string)
            .or_else(|| Username::parse(username.clone()).err().map(|e| e.to_string()))
            .or_else(|| Email::parse(email.clone()).err().map(|e| e.to_string()))
            .or_else(|| Password::new_password("password", password.clone()).err().map(|e| e.to_string()));
        match (parsed, first_error) {
            (Ok(account), None) => {
                // Without an id, none is chosen: the core makes one.
                prop_assert_eq!(&account.id, &expected_id.unwrap());
                prop_assert_eq!(&account.username, &Username::parse(username).unwrap());
                prop_assert_eq!(&account.email, &Email::parse(email).unwrap());
                match &account.secret {
                    NewSecret::Password(given) => {
                        prop_assert_eq!(given.expose(), password.as_deref().unwrap())
                    }
                    NewSecret::Hash(_) => prop_assert!(false, "a password was given, not a hash"),
                }
            }
            (Err(got), Some(want)) => prop_assert_eq!(got.to_string(), want),
            (got, want) => prop_assert!(false, "{:?} but expected {:?}", got.map(|a| a.id), want),
        }
    }
}

// ---- A few fixed cases the generators might take a while to reach ------------------------

#[test]
fn nesting_right_at_the_limit() {
    for levels in 1..=40usize {
        // `levels` counts the outer object.
        let inner = levels - 1;
        let body = format!("{{\"x\": {}0{}}}", "[".repeat(inner), "]".repeat(inner));
        let accepted = decode::<Value>(body.as_bytes()).is_ok();
        assert_eq!(accepted, levels <= MAX_DEPTH, "{levels} levels");
    }
    let quoted = format!("{{\"x\": \"{}\"}}", "[{".repeat(100));
    assert!(decode::<Value>(quoted.as_bytes()).is_ok());
}

#[test]
fn compatibility_forms_normalise_to_plain_names() {
    let name = |raw: &str| Username::parse(Some(raw.to_string())).map(|u| u.as_str().to_string());
    assert_eq!(name("Ａｓｉｍ").unwrap(), "asim");
    assert_eq!(name("\u{212A}elvin").unwrap(), "kelvin");
    assert_eq!(name("\u{FB01}le").unwrap(), "file");
    assert_eq!(name("a\u{2024}b").unwrap(), "a.b");
    assert!(
        name("\u{212B}").is_err(),
        "Angstrom sign is not ASCII after NFKC"
    );
    assert!(
        name(&"\u{FB00}".repeat(33)).is_err(),
        "66 characters after NFKC"
    );
    let email = |raw: &str| Email::parse(Some(raw.to_string())).map(|e| e.as_str().to_string());
    assert_eq!(email("Ａ\u{FE6B}Example.ＣＯＭ").unwrap(), "a@example.com");
    assert!(email("\u{430}@example.com").is_err());
}
