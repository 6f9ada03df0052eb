//! How a log line is made: a tracing layer of the service's own, writing each event
//! as one line of text or JSON to the [`LogSink`], with the request it belongs to.
//!
//! A request's fields (`request_id`, `method`, `path`) are set around the request with
//! [`in_request`], a task-local value that every line the request writes reads, rather
//! than a tracing span. A span made the subscriber's registry, the filter and the
//! formatter work on every request and every poll of it, and tracing-subscriber's
//! formatter went through `core::fmt` for each piece of each line: together they cost a
//! session check at `info` about a sixth of its rate (docs/performance/request-log.md).
//! Here a line is appended to a buffer the thread keeps, with the time's date and
//! second formatted once a second.
//!
//! The lines have the shape tracing-subscriber's `fmt` gave them:
//!
//! ```text
//! 2026-12-05T04:15:51.123456Z  INFO http{request_id=4bf92f3577b34da6 method=POST path=/users/Users/Create}: users_service::http: request status=200 latency_ms=39.118069
//! ```
//!
//! and in JSON, an object per line with the event's fields at the top level and the
//! request's under `span`:
//!
//! ```text
//! {"timestamp":"2026-12-05T04:15:51.123456Z","level":"INFO","message":"request","status":200,"latency_ms":39.118069,"target":"users_service::http","span":{"request_id":"4bf92f3577b34da6","method":"POST","path":"/users/Users/Create","name":"http"}}
//! ```
//!
//! Text lines escape control characters (a newline or a terminal escape in a value
//! cannot forge a line or repaint a terminal); JSON lines escape what JSON must.
//! Spans other than the request's are not written.

use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{Method, Uri};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::domain::rfc3339;
use crate::log_sink::LogSink;

/// How lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Words, `key=value` pairs; the level colored when `ansi`.
    Text { ansi: bool },
    /// One JSON object per line.
    Json,
}

/// The request a line belongs to.
#[derive(Debug, Clone)]
pub struct RequestFields {
    pub request_id: Arc<str>,
    pub method: Method,
    pub path: LoggedPath,
}

/// A request's path as its lines show it.
#[derive(Debug, Clone)]
pub enum LoggedPath {
    /// The request's own path (never its query, which could carry a secret).
    Of(Uri),
    /// A stand-in for a path that holds a secret.
    Fixed(&'static str),
}

impl LoggedPath {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Of(uri) => uri.path(),
            Self::Fixed(path) => path,
        }
    }
}

tokio::task_local! {
    static REQUEST: RequestFields;
}

/// Runs `work` as the request `fields` name: every line it writes carries them.
pub async fn in_request<F: Future>(fields: RequestFields, work: F) -> F::Output {
    REQUEST.scope(fields, work).await
}

/// The layer: each event the filter lets through, as one line to the sink.
pub struct Lines {
    sink: LogSink,
    style: Style,
}

impl Lines {
    pub fn new(sink: LogSink, style: Style) -> Self {
        Self { sink, style }
    }
}

thread_local! {
    /// The line being made, kept between lines so that making one allocates nothing.
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

/// A buffer grown past this by one long line is not kept.
const KEPT_CAPACITY: usize = 16 * 1024;

impl<S: Subscriber> Layer<S> for Lines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // An event of the `log` crate carries its real target and level as fields.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let write = |line: &mut String| {
            line.clear();
            let made =
                REQUEST.try_with(|request| make(line, self.style, event, meta, Some(request)));
            if made.is_err() {
                make(line, self.style, event, meta, None);
            }
            let _ = self.sink.make_writer_for(meta).write_all(line.as_bytes());
        };
        let kept = LINE.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                write(&mut line);
                if line.capacity() > KEPT_CAPACITY {
                    *line = String::with_capacity(512);
                }
            }
            // An event made while this thread makes a line (by a value's `Debug`).
            Err(_) => write(&mut String::new()),
        });
        if kept.is_err() {
            // The thread is ending.
            write(&mut String::new());
        }
    }
}

/// One whole line, ending in a newline, into `line`.
fn make(
    line: &mut String,
    style: Style,
    event: &Event<'_>,
    meta: &Metadata<'_>,
    request: Option<&RequestFields>,
) {
    match style {
        Style::Text { ansi } => {
            push_timestamp(line, SystemTime::now());
            line.push(' ');
            push_level(line, *meta.level(), ansi);
            line.push(' ');
            if let Some(r) = request {
                // The request id is printable ASCII, the method a token and the path
                // a URI's: nothing to escape.
                line.push_str("http{request_id=");
                line.push_str(&r.request_id);
                line.push_str(" method=");
                line.push_str(r.method.as_str());
                line.push_str(" path=");
                line.push_str(r.path.as_str());
                line.push_str("}: ");
            }
            line.push_str(meta.target());
            line.push_str(": ");
            event.record(&mut TextFields { line, first: true });
        }
        Style::Json => {
            line.push_str("{\"timestamp\":\"");
            push_timestamp(line, SystemTime::now());
            line.push_str("\",\"level\":\"");
            line.push_str(meta.level().as_str());
            line.push('"');
            event.record(&mut JsonFields { line });
            line.push_str(",\"target\":");
            push_json_str(line, meta.target());
            if let Some(r) = request {
                line.push_str(",\"span\":{\"request_id\":");
                push_json_str(line, &r.request_id);
                line.push_str(",\"method\":");
                push_json_str(line, r.method.as_str());
                line.push_str(",\"path\":");
                push_json_str(line, r.path.as_str());
                line.push_str(",\"name\":\"http\"}");
            }
            line.push('}');
        }
    }
    line.push('\n');
}

/// A field's name as written: without the `r#` of a raw identifier.
fn name_of(field: &Field) -> &str {
    let name = field.name();
    name.strip_prefix("r#").unwrap_or(name)
}

/// Fields an event of the `log` crate carries for its metadata, already written.
fn is_log_metadata(field: &Field) -> bool {
    field.name().starts_with("log.")
}

/// The text format's fields: the message first, as words, then `name=value` each,
/// values in their `Debug` form (strings quoted), control characters escaped.
struct TextFields<'a> {
    line: &'a mut String,
    first: bool,
}

impl TextFields<'_> {
    fn start(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.line.push(' ');
        }
        if field.name() != "message" {
            self.line.push_str(name_of(field));
            self.line.push('=');
        }
    }
}

impl Visit for TextFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if is_log_metadata(field) {
            return;
        }
        self.start(field);
        if field.name() == "message" {
            let _ = Escaped(self.line).write_str(value);
        } else {
            let _ = write!(Escaped(self.line), "{value:?}");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.start(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.start(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.start(field);
        push_f64(self.line, value);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.start(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if is_log_metadata(field) {
            return;
        }
        self.start(field);
        let _ = write!(Escaped(self.line), "{value:?}");
    }
}

/// Writes through to a line, escaping control characters as Rust does (`\n`,
/// `\u{1b}`).
struct Escaped<'a>(&'a mut String);

impl fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.chars().any(char::is_control) {
            self.0.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            if c.is_control() {
                self.0.extend(c.escape_default());
            } else {
                self.0.push(c);
            }
        }
        Ok(())
    }
}

/// The JSON format's fields: `,"name":value` each; numbers and booleans as such,
/// everything else as a string (`Debug` for what is not one).
struct JsonFields<'a> {
    line: &'a mut String,
}

impl JsonFields<'_> {
    fn start(&mut self, field: &Field) {
        self.line.push(',');
        push_json_str(self.line, name_of(field));
        self.line.push(':');
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if is_log_metadata(field) {
            return;
        }
        self.start(field);
        push_json_str(self.line, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.start(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.start(field);
        self.line.push_str(itoa::Buffer::new().format(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.start(field);
        if value.is_finite() {
            push_f64(self.line, value);
        } else {
            self.line.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.start(field);
        self.line.push_str(if value { "true" } else { "false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if is_log_metadata(field) {
            return;
        }
        self.start(field);
        self.line.push('"');
        let _ = write!(JsonEscaped(self.line), "{value:?}");
        self.line.push('"');
    }
}

/// A number as its shortest form that reads back the same (`39.118`, `2.0`), written
/// without `core::fmt`, which made the request line's `latency_ms` a percent of a
/// session check (docs/performance/request-log.md). Not finite: `NaN`, `inf`, `-inf`,
/// as `Debug` writes them.
fn push_f64(line: &mut String, value: f64) {
    if value.is_finite() {
        line.push_str(ryu::Buffer::new().format_finite(value));
    } else {
        let _ = write!(line, "{value:?}");
    }
}

fn push_json_str(line: &mut String, value: &str) {
    line.push('"');
    let _ = JsonEscaped(line).write_str(value);
    line.push('"');
}

/// Writes through to a line as the inside of a JSON string.
struct JsonEscaped<'a>(&'a mut String);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
            self.0.push_str(s);
            return Ok(());
        }
        for c in s.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.0, "\\u{:04x}", u32::from(c));
                }
                c => self.0.push(c),
            }
        }
        Ok(())
    }
}

fn push_level(line: &mut String, level: Level, ansi: bool) {
    // Right-aligned in five columns, as tracing-subscriber wrote them.
    let (text, color) = match level {
        Level::TRACE => ("TRACE", "35"),
        Level::DEBUG => ("DEBUG", "34"),
        Level::INFO => (" INFO", "32"),
        Level::WARN => (" WARN", "33"),
        Level::ERROR => ("ERROR", "31"),
    };
    if ansi {
        line.push_str("\x1b[");
        line.push_str(color);
        line.push('m');
        line.push_str(text);
        line.push_str("\x1b[0m");
    } else {
        line.push_str(text);
    }
}

thread_local! {
    /// The second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with microseconds: `2026-12-05T04:15:51.123456Z`.
fn push_timestamp(line: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let second = SECOND
        .try_with(|cached| {
            let (at, text) = cached.get();
            if at == secs {
                return text;
            }
            let text = date_time(secs);
            cached.set((secs, text));
            text
        })
        .unwrap_or_else(|_| date_time(secs));
    // ASCII digits and separators.
    line.push_str(std::str::from_utf8(&second).unwrap_or("0000-00-00T00:00:00"));
    line.push('.');
    let mut micros = since.subsec_micros();
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        // A digit.
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line.push_str(std::str::from_utf8(&digits).unwrap_or("000000"));
    line.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` seconds after the Unix epoch, in UTC.
fn date_time(secs: u64) -> [u8; 19] {
    let text = rfc3339(i64::try_from(secs).unwrap_or(i64::MAX));
    let mut second = *b"0000-00-00T00:00:00";
    if let Some(prefix) = text.as_bytes().get(..19) {
        second.copy_from_slice(prefix);
    }
    second
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `log` writes in `style`, each event in a request when `request`.
    fn lines(style: Style, request: Option<RequestFields>, log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let sink = LogSink::new(Box::new(captured.clone()), false);
        let subscriber = tracing_subscriber::registry().with(Lines::new(sink, style));
        tracing::subscriber::with_default(subscriber, || match request {
            Some(fields) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(in_request(fields, async { log() }));
            }
            None => log(),
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn request() -> RequestFields {
        RequestFields {
            request_id: Arc::from("4bf92f3577b34da6"),
            method: Method::POST,
            path: LoggedPath::Of(Uri::from_static("/users/Users/Create?secret=1")),
        }
    }

    /// The line without its timestamp, which is checked on its own.
    fn after_timestamp(line: &str) -> &str {
        let (stamp, rest) = line.split_at(27);
        assert!(stamp.ends_with('Z'), "{line}");
        rest
    }

    #[test]
    fn a_text_line_has_the_level_the_request_the_target_and_the_fields() {
        let got = lines(Style::Text { ansi: false }, Some(request()), || {
            tracing::info!(status = 200u16, latency_ms = 1.5, "request");
        });
        assert_eq!(got.len(), 1);
        assert_eq!(
            after_timestamp(&got[0]),
            "  INFO http{request_id=4bf92f3577b34da6 method=POST path=/users/Users/Create}: \
             users_service::log_line::tests: request status=200 latency_ms=1.5"
        );
    }

    /// Numbers read as `Debug` wrote them: a latency of any whole microseconds, and
    /// the forms at the ends of the range.
    #[test]
    fn a_number_is_written_as_debug_writes_it() {
        let latencies = (0..200_000u64).chain((0..40).map(|shift| 1u64 << shift));
        let others = [0.1, 0.3, -2.5, 1e-7, 1e21, 123_456_789.5, f64::MIN_POSITIVE];
        let values = latencies
            .map(|micros| micros as f64 / 1e3)
            .chain(others)
            .chain([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        for value in values {
            let mut line = String::new();
            push_f64(&mut line, value);
            assert_eq!(line, format!("{value:?}"));
        }
    }

    #[test]
    fn a_text_line_outside_a_request_names_none_and_quotes_strings() {
        let got = lines(Style::Text { ansi: false }, None, || {
            tracing::warn!(event = "lockout", user = "a b", ok = true, "locked");
        });
        assert_eq!(
            after_timestamp(&got[0]),
            "  WARN users_service::log_line::tests: locked event=\"lockout\" user=\"a b\" ok=true"
        );
    }

    #[test]
    fn control_characters_cannot_forge_a_text_line_or_repaint_a_terminal() {
        let got = lines(Style::Text { ansi: false }, None, || {
            let forged = "x\n2026-01-01T00:00:00.000000Z  INFO forged\u{1b}[2J";
            tracing::info!(client = %forged, "{forged}");
        });
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(!got[0].contains('\u{1b}'), "{}", got[0]);
        assert!(got[0].contains("x\\n2026"), "{}", got[0]);
    }

    #[test]
    fn a_json_line_is_one_object_with_the_fields_at_the_top_and_the_request_under_span() {
        let got = lines(Style::Json, Some(request()), || {
            tracing::info!(
                status = 200u16,
                latency_ms = 1.5,
                note = "a \"quoted\"\nline\u{1}",
                error = ?std::io::ErrorKind::NotFound,
                r#type = -3i64,
                "request"
            );
        });
        assert_eq!(got.len(), 1);
        let line: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "request");
        assert_eq!(line["status"], 200);
        assert_eq!(line["latency_ms"], 1.5);
        assert_eq!(line["note"], "a \"quoted\"\nline\u{1}");
        assert_eq!(line["error"], "NotFound");
        assert_eq!(line["type"], -3);
        assert_eq!(line["target"], "users_service::log_line::tests");
        assert_eq!(
            line["span"],
            serde_json::json!({
                "request_id": "4bf92f3577b34da6",
                "method": "POST",
                "path": "/users/Users/Create",
                "name": "http",
            })
        );
        let stamp = line["timestamp"].as_str().unwrap();
        assert_eq!(stamp.len(), 27, "{stamp}");
    }

    #[test]
    fn a_json_line_outside_a_request_has_no_span_and_a_path_can_be_replaced() {
        let got = lines(Style::Json, None, || tracing::error!(code = u64::MAX, "x"));
        let line: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert!(line.get("span").is_none(), "{line}");
        assert_eq!(line["code"], u64::MAX);
        let fixed = RequestFields {
            path: LoggedPath::Fixed("/ui/magic/<token>"),
            ..request()
        };
        let got = lines(Style::Json, Some(fixed), || tracing::info!("x"));
        let line: serde_json::Value = serde_json::from_str(&got[0]).unwrap();
        assert_eq!(line["span"]["path"], "/ui/magic/<token>");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut line = String::new();
            push_timestamp(
                &mut line,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            );
            line
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(4_102_444_799, 1), "2099-12-31T23:59:59.000001Z");
        // The cached second is the one asked for, not the last one formatted.
        assert_eq!(at(1_700_000_001, 0), "2023-11-14T22:13:21.000000Z");
        assert_eq!(at(1_700_000_000, 0), "2023-11-14T22:13:20.000000Z");
    }

    #[test]
    fn the_level_is_colored_only_on_a_terminal() {
        let got = lines(Style::Text { ansi: true }, None, || tracing::warn!("x"));
        assert!(got[0].contains("\x1b[33m WARN\x1b[0m"), "{:?}", got[0]);
    }
}
