//! Exports of other systems, converted to this service's import format so that their
//! users move in with their ids, addresses and passwords (their hashes are checked as
//! they are until each user's next sign-in replaces them with argon2id).
//!
//! Each source's shape, and how to get it, is in docs/moving-in.md. Where a system has
//! no usernames, a user's username is made from their address's local part (made unique
//! within the import with `-2`, `-3`, ...).

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::{Line, UserLine, FORMAT, VERSION};
use crate::core::password::formats::{firebase_hash, FirebaseProject};
use crate::domain::USERNAME_MAX_LEN;

/// The systems `import --from` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// This service's own export (JSON lines), the default
    UsersService,
    /// PocketBase: the `users` collection's rows as a JSON array
    Pocketbase,
    /// Supabase Auth: rows of `auth.users` as a JSON array
    Supabase,
    /// Auth0: the bulk user export with password hashes (JSON lines)
    Auth0,
    /// Firebase Auth: `firebase auth:export --format=json`
    Firebase,
    /// Django: `manage.py dumpdata auth.user`
    Django,
    /// better-auth: its users joined with their credential accounts, as a JSON array
    BetterAuth,
}

/// One user as a source describes it.
#[derive(Default)]
struct Found {
    id: Option<String>,
    username: Option<String>,
    email: Option<String>,
    password_hash: Option<String>,
    created: Option<i64>,
    updated: Option<i64>,
    verified: bool,
    profile: BTreeMap<String, String>,
}

/// Converts `input`, an export of `source`, to this service's import format: a header
/// and one user line per record, in order (record N is line N + 1). `now` stands for
/// dates a source leaves out.
pub fn convert(
    source: Source,
    input: &str,
    firebase: Option<&FirebaseProject>,
    now: i64,
) -> Result<String, String> {
    let records = records(source, input)?;
    let mut taken = HashSet::new();
    let mut out = String::new();
    push(
        &mut out,
        &Line::Header {
            format: FORMAT.into(),
            version: VERSION,
        },
    )?;
    for (index, record) in records.iter().enumerate() {
        let found =
            read(source, record, firebase).map_err(|e| format!("record {}: {e}", index + 1))?;
        let email = found.email.unwrap_or_default();
        let username = match found.username.filter(|u| !u.is_empty()) {
            Some(username) => username,
            None => unique_username(&email, &mut taken),
        };
        let created = found.created.unwrap_or(now);
        let verification_date = if found.verified { created.max(1) } else { 0 };
        push(
            &mut out,
            &Line::User(UserLine {
                id: found.id.unwrap_or_default(),
                username,
                email,
                password_hash: found.password_hash.unwrap_or_default(),
                created,
                updated: found.updated.unwrap_or(created).max(created),
                verified: found.verified,
                verification_date,
                profile: found.profile,
            }),
        )?;
    }
    Ok(out)
}

fn push(out: &mut String, line: &Line) -> Result<(), String> {
    out.push_str(&serde_json::to_string(line).map_err(|e| e.to_string())?);
    out.push('\n');
    Ok(())
}

/// The source's records, in order.
fn records(source: Source, input: &str) -> Result<Vec<Value>, String> {
    let not_json = |e: serde_json::Error| format!("not a {source:?} export: {e}");
    match source {
        Source::UsersService => Err("this service's own export needs no conversion".into()),
        Source::Auth0 => input
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(not_json))
            .collect(),
        Source::Firebase => {
            let mut doc: Value = serde_json::from_str(input).map_err(not_json)?;
            match doc.get_mut("users").map(Value::take) {
                Some(Value::Array(users)) => Ok(users),
                _ => Err("a Firebase export is an object with a \"users\" array".into()),
            }
        }
        _ => match serde_json::from_str(input).map_err(not_json)? {
            Value::Array(rows) => Ok(rows),
            // PocketBase's API answers lists as {"items": [...]}.
            Value::Object(mut page) => match page.remove("items") {
                Some(Value::Array(rows)) => Ok(rows),
                _ => Err("expected a JSON array of records".into()),
            },
            _ => Err("expected a JSON array of records".into()),
        },
    }
}

fn read(
    source: Source,
    record: &Value,
    firebase: Option<&FirebaseProject>,
) -> Result<Found, String> {
    let row = record.as_object().ok_or("not a JSON object")?;
    let text = |key: &str| row.get(key).and_then(Value::as_str).map(str::to_string);
    let mut found = match source {
        Source::UsersService => Found::default(),
        Source::Pocketbase => Found {
            id: text("id"),
            username: text("username"),
            email: text("email"),
            password_hash: text("password"),
            created: row.get("created").and_then(time),
            updated: row.get("updated").and_then(time),
            verified: truthy(row.get("verified")),
            profile: profile(row, &["name"]),
        },
        Source::Supabase => Found {
            id: text("id"),
            email: text("email"),
            password_hash: text("encrypted_password"),
            created: row.get("created_at").and_then(time),
            updated: row.get("updated_at").and_then(time),
            verified: row.get("email_confirmed_at").is_some_and(|v| !v.is_null()),
            profile: row
                .get("raw_user_meta_data")
                .and_then(Value::as_object)
                .map(|m| profile(m, &[]))
                .unwrap_or_default(),
            ..Found::default()
        },
        Source::Auth0 => Found {
            id: row
                .get("_id")
                .and_then(|v| v.get("$oid").or(Some(v)))
                .and_then(Value::as_str)
                .map(str::to_string),
            email: text("email"),
            password_hash: text("passwordHash"),
            created: row.get("created_at").and_then(time),
            updated: row.get("updated_at").and_then(time),
            verified: truthy(row.get("email_verified")),
            ..Found::default()
        },
        Source::Firebase => {
            let project = firebase.ok_or(
                "a Firebase import needs the project's hash parameters (--firebase-signer-key, --firebase-salt-separator, --firebase-rounds, --firebase-mem-cost)",
            )?;
            let hash = match (text("passwordHash"), text("salt")) {
                (Some(hash), Some(salt)) => Some(firebase_hash(&hash, &salt, project)?),
                _ => None,
            };
            Found {
                id: text("localId"),
                email: text("email"),
                password_hash: hash,
                created: row.get("createdAt").and_then(time),
                verified: truthy(row.get("emailVerified")),
                profile: profile(row, &["displayName"]),
                ..Found::default()
            }
        }
        Source::Django => {
            let fields = row
                .get("fields")
                .and_then(Value::as_object)
                .ok_or("a dumpdata record has \"fields\"")?;
            let field = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
            Found {
                id: row.get("pk").map(|pk| match pk {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
                username: field("username"),
                email: field("email"),
                password_hash: field("password"),
                created: fields.get("date_joined").and_then(time),
                profile: profile(fields, &["first_name", "last_name"]),
                ..Found::default()
            }
        }
        Source::BetterAuth => Found {
            id: text("id"),
            email: text("email"),
            password_hash: text("password"),
            created: row.get("createdAt").and_then(time),
            updated: row.get("updatedAt").and_then(time),
            verified: truthy(row.get("emailVerified")),
            profile: profile(row, &["name"]),
            ..Found::default()
        },
    };
    if found.password_hash.as_deref().is_none_or(str::is_empty) {
        return Err("no password hash: this user cannot sign in with a password".into());
    }
    found.email = found.email.filter(|e| !e.is_empty());
    Ok(found)
}

/// The listed text fields that are set, as profile fields.
fn profile(row: &Map<String, Value>, keys: &[&str]) -> BTreeMap<String, String> {
    let wanted = |k: &str| keys.is_empty() || keys.contains(&k);
    row.iter()
        .filter(|(k, _)| wanted(k))
        .filter_map(|(k, v)| match v {
            Value::String(s) if !s.is_empty() => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

fn truthy(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        Some(Value::String(s)) => matches!(s.as_str(), "1" | "true" | "t"),
        _ => false,
    }
}

/// A time as the sources write it: RFC 3339 or SQL text (`2024-05-06 07:08:09.123Z`,
/// `+00:00` or `+00`), Auth0's `{"$date": ...}`, or milliseconds since the epoch
/// (Firebase's, as text or a number). Seconds since the epoch.
fn time(value: &Value) -> Option<i64> {
    match value {
        Value::Object(o) => o.get("$date").and_then(time),
        Value::Number(n) => n.as_i64().map(|ms| ms / 1000),
        Value::String(s) if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() => {
            s.parse::<i64>().ok().map(|ms| ms / 1000)
        }
        Value::String(s) => parse_datetime(s),
        _ => None,
    }
}

fn parse_datetime(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num =
        |from: usize, len: usize| -> Option<i64> { s.get(from..from + len)?.parse::<i64>().ok() };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // The zone, after any fraction: Z, +HH, +HH:MM or +HHMM; none is UTC.
    let rest = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest.as_bytes().first() {
        None | Some(b'Z') | Some(b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let digits: String = rest[1..].chars().filter(char::is_ascii_digit).collect();
            let h = digits.get(..2)?.parse::<i64>().ok()?;
            let m = digits
                .get(2..4)
                .map_or(Some(0), |m| m.parse::<i64>().ok())?;
            let total = h * 3600 + m * 60;
            if *sign == b'+' {
                total
            } else {
                -total
            }
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// A username from an address's local part, in this service's alphabet, unique among
/// `taken`.
fn unique_username(email: &str, taken: &mut HashSet<String>) -> String {
    let local = email
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut base: String = local
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .collect();
    if base.is_empty() {
        base = "user".into();
    }
    base.truncate(USERNAME_MAX_LEN - 8);
    let mut candidate = base.clone();
    let mut n = 1;
    while !taken.insert(candidate.clone()) {
        n += 1;
        candidate = format!("{base}-{n}");
    }
    candidate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_each_sources_form() {
        let t = |s: &str| time(&Value::String(s.into()));
        assert_eq!(t("2024-05-06T07:08:09Z"), Some(1_714_979_289));
        assert_eq!(t("2024-05-06 07:08:09.123Z"), Some(1_714_979_289));
        assert_eq!(t("2024-05-06T07:08:09.123456+00:00"), Some(1_714_979_289));
        assert_eq!(t("2024-05-06 09:08:09+02"), Some(1_714_979_289));
        assert_eq!(t("1714979289123"), Some(1_714_979_289));
        assert_eq!(
            time(&serde_json::json!({"$date": "2024-05-06T07:08:09.000Z"})),
            Some(1_714_979_289)
        );
        assert_eq!(t("yesterday"), None);
    }

    #[test]
    fn usernames_made_from_addresses_are_unique() {
        let mut taken = HashSet::new();
        assert_eq!(unique_username("Ada.L@example.com", &mut taken), "ada.l");
        assert_eq!(unique_username("ada.l@example.org", &mut taken), "ada.l-2");
        assert_eq!(unique_username("j+x@example.com", &mut taken), "j-x");
    }

    #[test]
    fn a_record_without_a_password_hash_is_refused_with_its_number() {
        let input = r#"[{"id":"a1","email":"a@example.com","password":"$2b$10$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234"},{"id":"b2","email":"b@example.com"}]"#;
        let err = convert(Source::Pocketbase, input, None, 0).unwrap_err();
        assert!(err.starts_with("record 2: no password hash"), "{err}");
    }
}
