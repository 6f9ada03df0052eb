//! Running the `users-service` binary as a separate process, as an operator would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_users-service");
/// Longest a start-up or shutdown may take before the test gives up.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The binary with a clean environment: no configuration leaks in from the caller.
/// Runs the binary with `args` to completion in a fresh directory, `stdin` given as its
/// input; returns (success, stdout, stderr).
#[allow(dead_code)] // not every test binary runs commands
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> (bool, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = command(dir.path())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        output.stdout,
        String::from_utf8(output.stderr).unwrap(),
    )
}

pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// A running `users-service` process whose stderr is collected line by line.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Service {
    pub fn start(mut cmd: Command) -> Service {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let addr = loop {
            let line = lines
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|_| panic!("no ready line; stderr so far: {seen:#?}"));
            seen.push(line.clone());
            // `listen=ADDR` in text logs, `"listen":"ADDR"` in JSON ones.
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            if let Some(rest) = line.split(r#""listen":""#).nth(1) {
                break rest.split('"').next().unwrap().parse().unwrap();
            }
        };
        Service {
            child,
            addr,
            lines,
            seen,
        }
    }

    /// Waits (at most [`DEADLINE`]) until the process has logged `count` lines
    /// containing `needle` since it started.
    pub fn wait_for_lines(&mut self, needle: &str, count: usize) {
        let deadline = std::time::Instant::now() + DEADLINE;
        while self.seen.iter().filter(|l| l.contains(needle)).count() < count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "{count} lines with {needle:?} did not come; stderr so far: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Sends SIGTERM and returns everything the process logged, once it has exited.
    pub fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        signal_term(&self.child);
        self.wait()
    }

    pub fn wait(&mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = wait_with_deadline(&mut self.child);
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn signal_term(child: &Child) {
    signal(child, "TERM");
}

/// Sends the signal `name` (as `kill` spells it: TERM, HUP) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

pub fn wait_with_deadline(child: &mut Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One blocking HTTP/1.1 request; returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(addr, method, path, body, &[])
}

/// As [`http`], with extra request headers.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, body, headers);
    (status, body)
}

/// One blocking HTTP/1.1 request with extra headers; returns the status, the response
/// headers (names in lowercase) and the body.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

pub fn json_field(body: &str, pointer: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    value
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap()
        .to_string()
}
