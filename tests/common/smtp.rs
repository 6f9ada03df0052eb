//! A small, real SMTP server on loopback that keeps every message it is given, so the
//! e-mail flows can be tested end to end: the service talks SMTP to it exactly as it
//! would to a relay, and the test reads back the decoded subject and text body.
//!
//! It speaks enough ESMTP for `lettre` (and any plain client): EHLO/HELO, MAIL, RCPT,
//! DATA, RSET, NOOP and QUIT, with several connections at once and several messages
//! per connection. It never offers STARTTLS or AUTH, so the service must be configured
//! for a plain connection (see [`SmtpSink::url`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, timeout_at, Instant};

/// How long [`SmtpSink::next_mail`] waits before failing the test.
const MAIL_WAIT: Duration = Duration::from_secs(10);
/// How long the server waits for the client's next line. Long enough that a pooled,
/// idle connection is not dropped in the middle of a test, short enough that a client
/// that stops talking cannot keep a connection task alive for ever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes go to loopback and should never block; the bound only guards against a
/// client that stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted line, so a client that never sends a line break cannot grow a
/// buffer without limit.
const MAX_LINE: u64 = 1 << 20;
/// Largest accepted message.
const MAX_MESSAGE: usize = 32 << 20;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`), without angle brackets; empty for `<>`.
    pub from: String,
    /// The envelope recipients (`RCPT TO`), without angle brackets, in the order given.
    pub to: Vec<String>,
    /// The `Subject` header, unfolded and with RFC 2047 encoded-words decoded.
    pub subject: String,
    /// The text body: the first `text/plain` part of a multipart message (or the first
    /// part of any type when there is none), decoded per its `Content-Transfer-Encoding`
    /// and charset, with line breaks as `\n`. This is what the sender passed as text.
    pub body: String,
    /// The message exactly as the client sent it in DATA, dot-stuffing undone and
    /// without the terminating `.` line (so, for lettre, byte for byte the message it
    /// built).
    pub raw: String,
}

impl Mail {
    /// The first header called `name` (case-insensitive), unfolded, with RFC 2047
    /// encoded-words decoded: for example `From`, whose display name the envelope
    /// sender does not carry.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = split_headers(&self.raw);
        find_header(&headers, name).map(decode_encoded_words)
    }

    /// The first http(s) address in the body (the link an e-mail carries).
    pub fn link(&self) -> String {
        self.body
            .split_whitespace()
            .find(|word| word.starts_with("http://") || word.starts_with("https://"))
            .unwrap_or_else(|| panic!("no link in {:?}", self.body))
            .to_string()
    }
}

/// What the server and the test share.
struct Shared {
    /// Messages not yet taken by [`SmtpSink::next_mail`].
    queue: Mutex<VecDeque<Mail>>,
    /// The number of messages delivered so far. Every delivery bumps it, which also
    /// wakes whoever is waiting in `next_mail`.
    delivered: watch::Sender<usize>,
    /// Whether DATA is refused, to stand for a relay that fails every delivery.
    reject: bool,
}

/// A running SMTP server; it stops when this is dropped.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Kept bound while the server is stopped, so no one else takes its port.
    listener: Arc<TcpListener>,
    /// The server's accept loop: serving, or refusing while stopped.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl SmtpSink {
    /// Listens on 127.0.0.1:0 and accepts every message.
    pub async fn start() -> SmtpSink {
        Self::start_with(false).await
    }

    /// Listens, but answers every DATA with `554 5.0.0 rejected` (a failed delivery).
    pub async fn start_rejecting() -> SmtpSink {
        Self::start_with(true).await
    }

    async fn start_with(reject: bool) -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("SMTP sink binds a loopback port");
        let addr = listener.local_addr().expect("SMTP sink address");
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            delivered: watch::Sender::new(0),
            reject,
        });
        let listener = Arc::new(listener);
        let task = tokio::spawn(accept_loop(listener.clone(), shared.clone()));
        SmtpSink {
            addr,
            shared,
            listener,
            task: Mutex::new(Some(task)),
        }
    }

    /// Takes the server down, as a relay that is out of service: its connections are
    /// closed, and every new one is answered `421` (service not available) and closed,
    /// until [`SmtpSink::resume`].
    pub async fn stop(&self) {
        self.replace_loop(tokio::spawn(refuse_loop(self.listener.clone())))
            .await;
    }

    /// Brings the server back, with the messages it kept.
    pub async fn resume(&self) {
        self.replace_loop(tokio::spawn(accept_loop(
            self.listener.clone(),
            self.shared.clone(),
        )))
        .await;
    }

    async fn replace_loop(&self, next: JoinHandle<()>) {
        let previous = self
            .task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(next);
        if let Some(previous) = previous {
            previous.abort();
            // Once the task is gone, so are its connections.
            let _ = previous.await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL the service is configured with.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.addr.port())
    }

    /// Waits (at most 10 s, then panics) for the next message addressed to `to`
    /// (matched case-insensitively against the envelope recipients) and removes it
    /// from the queue.
    pub async fn next_mail(&self, to: &str) -> Mail {
        let wanted = bare_address(to).to_ascii_lowercase();
        let deadline = Instant::now() + MAIL_WAIT;
        // Subscribing before looking at the queue means a delivery that lands between
        // the look and the wait still marks the receiver as changed: nothing is missed.
        let mut changes = self.shared.delivered.subscribe();
        loop {
            if let Some(mail) = self.take(&wanted) {
                return mail;
            }
            match timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `shared`, which `self` keeps alive.
                Ok(Err(_)) => unreachable!("SMTP sink state dropped while in use"),
                Err(_) => panic!(
                    "no mail to {to} arrived at the SMTP sink within {MAIL_WAIT:?}; \
                     {} delivered in total, still queued: {:?}",
                    self.delivered(),
                    self.queued()
                        .iter()
                        .map(|m| (m.to.clone(), m.subject.clone()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    fn take(&self, wanted: &str) -> Option<Mail> {
        let mut queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        let index = queue
            .iter()
            .position(|mail| mail.to.iter().any(|r| r.eq_ignore_ascii_case(wanted)))?;
        queue.remove(index)
    }

    /// All messages received so far that are still queued, without waiting.
    pub fn queued(&self) -> Vec<Mail> {
        let queue = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.iter().cloned().collect()
    }

    /// How many messages were delivered in total (taken or not).
    pub fn delivered(&self) -> usize {
        *self.shared.delivered.borrow()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by this task, so aborting it
        // ends them too.
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }
}

/// Answers every connection `421` and closes it: a relay that is out of service.
async fn refuse_loop(listener: Arc<TcpListener>) {
    loop {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = timeout(
                WRITE_TIMEOUT,
                stream.write_all(b"421 4.3.2 localhost service not available\r\n"),
            )
            .await;
        }
    }
}

async fn accept_loop(listener: Arc<TcpListener>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve(stream, shared.clone()));
                }
            }
            // Reap finished connections so the set does not grow over a long test.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Why a connection ends early.
enum Stop {
    /// The client closed the connection.
    Closed,
    /// A read or write failed or timed out, or the client broke a limit.
    Failed,
}

impl From<std::io::Error> for Stop {
    fn from(_: std::io::Error) -> Self {
        Stop::Failed
    }
}

/// One SMTP transaction in progress.
#[derive(Default)]
struct Envelope {
    from: Option<String>,
    to: Vec<String>,
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    let (reader, mut writer) = stream.split();
    let mut reader = BufReader::new(reader);
    // Any failure just ends this connection; the client sees it closed.
    let _ = session(&mut reader, &mut writer, &shared).await;
}

async fn session<R, W>(reader: &mut R, writer: &mut W, shared: &Shared) -> Result<(), Stop>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    reply(writer, "220 localhost ESMTP\r\n").await?;
    let mut envelope = Envelope::default();
    let mut line = Vec::new();
    loop {
        match read_line(reader, &mut line).await {
            Ok(()) => {}
            Err(Stop::Failed) => {
                let _ = reply(writer, "421 4.4.2 localhost closing connection\r\n").await;
                return Err(Stop::Failed);
            }
            Err(Stop::Closed) => return Ok(()),
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end_matches(['\r', '\n']);
        let (verb, argument) = match command.split_once(' ') {
            Some((verb, argument)) => (verb.to_ascii_uppercase(), argument.trim()),
            None => (command.to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" => {
                envelope = Envelope::default();
                reply(
                    writer,
                    "250-localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n",
                )
                .await?;
            }
            "HELO" => {
                envelope = Envelope::default();
                reply(writer, "250 localhost\r\n").await?;
            }
            "MAIL" => match path_argument(argument, "FROM:") {
                None => reply(writer, "501 5.5.4 syntax: MAIL FROM:<address>\r\n").await?,
                Some(_) if envelope.from.is_some() => {
                    reply(writer, "503 5.5.1 nested MAIL command\r\n").await?
                }
                Some(from) => {
                    envelope.from = Some(from);
                    reply(writer, "250 2.1.0 OK\r\n").await?;
                }
            },
            "RCPT" => match path_argument(argument, "TO:") {
                None => reply(writer, "501 5.5.4 syntax: RCPT TO:<address>\r\n").await?,
                Some(_) if envelope.from.is_none() => {
                    reply(writer, "503 5.5.1 need MAIL before RCPT\r\n").await?
                }
                Some(to) if to.is_empty() => reply(writer, "501 5.1.3 empty recipient\r\n").await?,
                Some(to) => {
                    envelope.to.push(to);
                    reply(writer, "250 2.1.5 OK\r\n").await?;
                }
            },
            "DATA" => {
                if envelope.to.is_empty() {
                    reply(writer, "503 5.5.1 need RCPT before DATA\r\n").await?;
                    continue;
                }
                let done = std::mem::take(&mut envelope);
                if shared.reject {
                    reply(writer, "554 5.0.0 rejected\r\n").await?;
                    continue;
                }
                reply(writer, "354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let raw = match read_data(reader).await {
                    Ok(raw) => raw,
                    Err(DataError::TooBig) => {
                        let _ = reply(writer, "552 5.3.4 message too big\r\n").await;
                        return Err(Stop::Failed);
                    }
                    Err(DataError::Stop(stop)) => return Err(stop),
                };
                let mail = parse_mail(done.from.unwrap_or_default(), done.to, raw);
                shared
                    .queue
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(mail);
                // Counted after queueing, so a waiter woken by the count finds the mail.
                shared.delivered.send_modify(|n| *n += 1);
                reply(writer, "250 2.0.0 OK queued\r\n").await?;
            }
            "RSET" => {
                envelope = Envelope::default();
                reply(writer, "250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => reply(writer, "250 2.0.0 OK\r\n").await?,
            "QUIT" => {
                reply(writer, "221 2.0.0 localhost closing connection\r\n").await?;
                return Ok(());
            }
            "" => reply(writer, "500 5.5.2 empty command\r\n").await?,
            _ => reply(writer, "502 5.5.1 command not implemented\r\n").await?,
        }
    }
}

async fn reply<W: AsyncWrite + Unpin>(writer: &mut W, text: &str) -> Result<(), Stop> {
    match timeout(WRITE_TIMEOUT, async {
        writer.write_all(text.as_bytes()).await?;
        writer.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(Stop::Failed),
    }
}

/// Reads one line, line break included, into `line`.
async fn read_line<R>(reader: &mut R, line: &mut Vec<u8>) -> Result<(), Stop>
where
    R: AsyncBufRead + Unpin,
{
    line.clear();
    let read = timeout(
        READ_TIMEOUT,
        (&mut *reader).take(MAX_LINE).read_until(b'\n', line),
    )
    .await
    .map_err(|_| Stop::Failed)??;
    if read == 0 {
        return Err(Stop::Closed);
    }
    if !line.ends_with(b"\n") {
        // Either the line limit was hit or the client closed mid-line.
        return Err(Stop::Failed);
    }
    Ok(())
}

enum DataError {
    TooBig,
    Stop(Stop),
}

/// Reads the message after a 354, up to the `.` line, undoing dot-stuffing.
async fn read_data<R>(reader: &mut R) -> Result<String, DataError>
where
    R: AsyncBufRead + Unpin,
{
    let mut message: Vec<u8> = Vec::new();
    let mut line = Vec::new();
    // Only a CRLF starts a new line for the terminator and for dot-stuffing; a bare LF
    // inside the data does not (lettre stuffs dots the same way).
    let mut at_line_start = true;
    loop {
        // A close in the middle of DATA is a failure, not a goodbye.
        read_line(reader, &mut line)
            .await
            .map_err(|_| DataError::Stop(Stop::Failed))?;
        if at_line_start && line == b".\r\n" {
            break;
        }
        let content = match line.strip_prefix(b".") {
            Some(rest) if at_line_start => rest,
            _ => &line[..],
        };
        at_line_start = line.ends_with(b"\r\n");
        if message.len() + content.len() > MAX_MESSAGE {
            return Err(DataError::TooBig);
        }
        message.extend_from_slice(content);
    }
    // The line break before the final `.` belongs to the terminator, not to the
    // message (lettre always sends CRLF . CRLF after the message, whether or not the
    // message itself ends with a line break).
    if message.ends_with(b"\r\n") {
        message.truncate(message.len() - 2);
    } else if message.ends_with(b"\n") {
        message.truncate(message.len() - 1);
    }
    Ok(String::from_utf8_lossy(&message).into_owned())
}

/// The address in `FROM:<a@b> PARAMS` (after the `prefix`), without brackets and
/// parameters such as `BODY=8BITMIME`. `None` when the prefix is missing.
fn path_argument(argument: &str, prefix: &str) -> Option<String> {
    let head = argument.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = argument[prefix.len()..].trim_start();
    let path = match rest.strip_prefix('<') {
        Some(inner) => inner.split('>').next().unwrap_or(""),
        None => rest.split_whitespace().next().unwrap_or(""),
    };
    Some(path.trim().to_string())
}

/// `a@b` from `a@b`, `<a@b>` or `Name <a@b>`.
fn bare_address(address: &str) -> &str {
    let address = address.trim();
    match (address.rfind('<'), address.rfind('>')) {
        (Some(open), Some(close)) if open < close => address[open + 1..close].trim(),
        _ => address,
    }
}

// ---------------------------------------------------------------------------------
// Message parsing: just enough MIME to read back what a mail library wrote.
// ---------------------------------------------------------------------------------

fn parse_mail(from: String, to: Vec<String>, raw: String) -> Mail {
    let (headers, body) = split_headers(&raw);
    let subject = find_header(&headers, "subject")
        .map(decode_encoded_words)
        .unwrap_or_default();
    let body = text_body(&headers, body);
    Mail {
        from,
        to,
        subject,
        body,
        raw,
    }
}

/// Splits an entity into its unfolded headers and its body (which starts after the
/// first empty line).
fn split_headers(text: &str) -> (Vec<(String, String)>, &str) {
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        offset += line.len();
        let content = line.trim_end_matches(['\r', '\n']);
        if content.is_empty() {
            return (finish_headers(headers), &text[offset..]);
        }
        if content.starts_with([' ', '\t']) {
            // A folded continuation: unfolding removes only the line break, so the
            // leading white space stays part of the value.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(content);
            }
        } else if let Some((name, value)) = content.split_once(':') {
            headers.push((name.trim().to_string(), value.to_string()));
        }
    }
    // No empty line: the whole entity is headers.
    (finish_headers(headers), "")
}

fn finish_headers(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(name, value)| (name, value.trim().to_string()))
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A parsed `Content-Type`: the lowercased `type/subtype` and its parameters (names
/// lowercased, values unquoted).
struct ContentType {
    mime: String,
    params: Vec<(String, String)>,
}

impl ContentType {
    fn parse(value: Option<&str>) -> ContentType {
        // RFC 2045: without a Content-Type the entity is plain US-ASCII text.
        let value = value.unwrap_or("text/plain");
        let mut pieces = split_unquoted(value, ';').into_iter();
        let mime = pieces
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let params = pieces
            .filter_map(|piece| {
                let (name, value) = piece.split_once('=')?;
                Some((name.trim().to_ascii_lowercase(), unquote(value.trim())))
            })
            .collect();
        ContentType { mime, params }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits on `separator` outside double quotes.
fn split_unquoted(value: &str, separator: char) -> Vec<String> {
    let mut pieces = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        let current = pieces.last_mut().expect("never empty");
        if escaped {
            escaped = false;
            current.push(c);
        } else if quoted && c == '\\' {
            escaped = true;
            current.push(c);
        } else if c == '"' {
            quoted = !quoted;
            current.push(c);
        } else if c == separator && !quoted {
            pieces.push(String::new());
        } else {
            current.push(c);
        }
    }
    pieces
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => value.to_string(),
    }
}

/// The text a person would read: the first text/plain leaf, or failing that the first
/// leaf of any type, decoded.
fn text_body(headers: &[(String, String)], body: &str) -> String {
    find_leaf(headers, body, &|ct| ct.mime == "text/plain")
        .or_else(|| find_leaf(headers, body, &|_| true))
        .unwrap_or_default()
}

fn find_leaf(
    headers: &[(String, String)],
    body: &str,
    wanted: &dyn Fn(&ContentType) -> bool,
) -> Option<String> {
    let content_type = ContentType::parse(find_header(headers, "content-type"));
    if content_type.mime.starts_with("multipart/") {
        let boundary = content_type.param("boundary")?;
        return multipart_parts(body, boundary)
            .into_iter()
            .find_map(|part| {
                let (part_headers, part_body) = split_headers(part);
                find_leaf(&part_headers, part_body, wanted)
            });
    }
    if !wanted(&content_type) {
        return None;
    }
    let encoding = find_header(headers, "content-transfer-encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let bytes = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => decode_base64(body),
        // 7bit, 8bit and binary carry the text as is.
        _ => body.as_bytes().to_vec(),
    };
    let text = decode_charset(&bytes, content_type.param("charset").unwrap_or("utf-8"));
    // MIME text travels with CRLF line breaks; lettre turns the `\n` it is given into
    // CRLF, so turning them back gives the text the sender wrote.
    Some(text.replace("\r\n", "\n"))
}

/// The parts of a multipart body, each without the line break that belongs to the
/// following boundary line.
fn multipart_parts<'a>(body: &'a str, boundary: &str) -> Vec<&'a str> {
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        let content = line
            .trim_end_matches(['\r', '\n'])
            .trim_end_matches([' ', '\t']);
        let is_closing = content == closing;
        if content == delimiter || is_closing {
            if let Some(begin) = start {
                let part = &body[begin..line_start];
                let part = part
                    .strip_suffix("\r\n")
                    .or_else(|| part.strip_suffix('\n'))
                    .unwrap_or(part);
                parts.push(part);
            }
            if is_closing {
                return parts;
            }
            start = Some(offset);
        }
    }
    // A missing closing delimiter: keep what the last part had.
    if let Some(begin) = start {
        parts.push(&body[begin..]);
    }
    parts
}

fn decode_charset(bytes: &[u8], charset: &str) -> String {
    match charset.trim().to_ascii_lowercase().as_str() {
        // Latin-1 maps every byte to the code point of the same value.
        "iso-8859-1" | "latin1" | "latin-1" => bytes.iter().map(|&b| char::from(b)).collect(),
        // UTF-8, US-ASCII (a subset) and anything unknown.
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 2045 quoted-printable: `=XX` is a byte, a line ending in `=` is a soft line
/// break (the line continues), trailing white space on a line is transport padding.
fn decode_quoted_printable(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line
            .trim_end_matches('\r')
            .trim_end_matches([' ', '\t'])
            .as_bytes();
        let (line, soft_break) = match line.strip_suffix(b"=") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'=' {
                if let (Some(&h), Some(&l)) = (line.get(i + 1), line.get(i + 2)) {
                    if let (Some(h), Some(l)) = (hex_value(h), hex_value(l)) {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                }
            }
            // Not a valid escape: keep the byte as it is rather than lose text.
            out.push(line[i]);
            i += 1;
        }
        if !soft_break && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Standard base64, ignoring line breaks, padding and anything else outside the
/// alphabet.
fn decode_base64(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut count = 0;
    for b in text.bytes() {
        let value = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => continue,
        };
        bits = bits << 6 | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

/// One RFC 2047 encoded-word at the start of `text`: its charset, its decoded bytes and
/// its length in `text`.
fn encoded_word(text: &str) -> Option<(String, Vec<u8>, usize)> {
    let rest = text.strip_prefix("=?")?;
    let (charset, rest) = rest.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let end = rest.find("?=")?;
    let payload = &rest[..end];
    if charset.is_empty()
        || charset.contains(char::is_whitespace)
        || payload.contains(|c: char| c.is_whitespace() || c == '?')
    {
        return None;
    }
    let bytes = match encoding {
        "b" | "B" => decode_base64(payload),
        "q" | "Q" => {
            let mut out = Vec::with_capacity(payload.len());
            let raw = payload.as_bytes();
            let mut i = 0;
            while i < raw.len() {
                match raw[i] {
                    b'_' => out.push(b' '),
                    b'=' if i + 2 < raw.len() => {
                        match (hex_value(raw[i + 1]), hex_value(raw[i + 2])) {
                            (Some(h), Some(l)) => {
                                out.push(h << 4 | l);
                                i += 2;
                            }
                            _ => out.push(b'='),
                        }
                    }
                    other => out.push(other),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    // `rest` is the tail of `text` that starts at the payload.
    let length = text.len() - rest.len() + end + 2;
    // RFC 2231 allows a language after the charset: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or(charset).to_string();
    Some((charset, bytes, length))
}

/// Decodes every RFC 2047 encoded-word in a header value. White space between two
/// adjacent encoded-words is dropped (it only separates them), and their bytes are
/// joined before being read as text, in case an encoder split a character across them.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_charset = String::new();
    let mut rest = value;
    let mut after_word = false;

    fn flush(out: &mut String, pending: &mut Vec<u8>, charset: &str) {
        if !pending.is_empty() {
            out.push_str(&decode_charset(pending, charset));
            pending.clear();
        }
    }

    while !rest.is_empty() {
        if let Some((charset, bytes, length)) = encoded_word(rest) {
            if !charset.eq_ignore_ascii_case(&pending_charset) {
                flush(&mut out, &mut pending, &pending_charset);
                pending_charset = charset;
            }
            pending.extend(bytes);
            rest = &rest[length..];
            after_word = true;
            continue;
        }
        if after_word {
            let trimmed = rest.trim_start_matches([' ', '\t', '\r', '\n']);
            if trimmed.len() < rest.len() && encoded_word(trimmed).is_some() {
                rest = trimmed;
                continue;
            }
        }
        flush(&mut out, &mut pending, &pending_charset);
        after_word = false;
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    flush(&mut out, &mut pending, &pending_charset);
    out
}
