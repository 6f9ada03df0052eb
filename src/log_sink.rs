//! Where log lines go: standard error, many lines to a write.
//!
//! Writing each line with a system call of its own, under the lock of standard error
//! that the runtime's threads then queue on, cost a session check at `info` about a
//! tenth of the process's CPU (docs/performance/request-log.md). Here a line is added
//! to a buffer in memory, and the buffer is written:
//! - by the sink's own thread, [`FLUSH_PERIOD`] after the first line it holds;
//! - at once, by the thread that logs, when it holds [`FLUSH_AT`] bytes or when the
//!   line is a warning or an error;
//! - when the program ends or panics ([`LogSink::flush`]).
//!
//! So a line reaches the log at most [`FLUSH_PERIOD`] late, warnings and errors at once,
//! and a process killed outright (SIGKILL) loses at most that moment's info lines. On a
//! terminal every line is written as it comes.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in the buffer.
pub const FLUSH_PERIOD: Duration = Duration::from_millis(100);
/// Bytes that make the logging thread write the buffer itself.
pub const FLUSH_AT: usize = 64 * 1024;

/// A `MakeWriter` for tracing-subscriber; clones share one buffer.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the sink's thread when the buffer stops being empty.
    filled: Condvar,
    /// Each line written as it comes (a terminal).
    direct: bool,
}

struct State {
    pending: Vec<u8>,
    out: Box<dyn Write + Send>,
}

impl State {
    fn write_out(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Nowhere to report a failing log but the log: the lines are dropped.
        let _ = self.out.write_all(&self.pending);
        let _ = self.out.flush();
        self.pending.clear();
    }
}

impl LogSink {
    /// Standard error: buffered, unless it is a terminal.
    pub fn stderr() -> Self {
        use std::io::IsTerminal;
        Self::new(Box::new(io::stderr()), !io::stderr().is_terminal())
    }

    /// Lines to `out`, buffered when `buffered`; the sink's thread starts with it.
    pub fn new(out: Box<dyn Write + Send>, buffered: bool) -> Self {
        let sink = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    pending: Vec::with_capacity(FLUSH_AT),
                    out,
                }),
                filled: Condvar::new(),
                direct: !buffered,
            }),
        };
        if buffered {
            let shared = Arc::downgrade(&sink.shared);
            let started = std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || writer_thread(&shared));
            if started.is_err() {
                // Without the thread, lines would wait for the next warning: write each.
                return Self::new(sink.take_out(), false);
            }
        }
        sink
    }

    fn take_out(self) -> Box<dyn Write + Send> {
        std::mem::replace(&mut self.shared.lock().out, Box::new(io::sink()))
    }

    /// Writes every line held now.
    pub fn flush(&self) {
        self.shared.lock().write_out();
    }

    /// [`flush`](Self::flush), unless another thread holds the buffer (a panic inside
    /// the sink must not wait for itself).
    pub fn try_flush(&self) {
        if let Ok(mut state) = self.shared.state.try_lock() {
            state.write_out();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while appending leaves a buffer that is still bytes of whole lines
        // or of one cut line: still worth writing.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn writer_thread(shared: &std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        {
            let state = strong.lock();
            let waited = strong
                .filled
                .wait_timeout_while(state, Duration::from_secs(1), |s| s.pending.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            if waited.0.pending.is_empty() {
                // Nothing for a second: look again whether the sink still exists.
                continue;
            }
        }
        drop(strong);
        std::thread::sleep(FLUSH_PERIOD);
        let Some(strong) = shared.upgrade() else {
            return;
        };
        strong.lock().write_out();
    }
}

/// One event's writer: tracing-subscriber formats the whole line, then writes it once.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        if self.shared.direct {
            state.out.write_all(buf)?;
            return Ok(buf.len());
        }
        let was_empty = state.pending.is_empty();
        state.pending.extend_from_slice(buf);
        if self.urgent || state.pending.len() >= FLUSH_AT {
            state.write_out();
        } else if was_empty {
            self.shared.filled.notify_one();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            // More severe levels compare lower.
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// What the sink wrote, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
                .into_owned()
        }
    }

    fn log(sink: &LogSink, level: Level, line: &str) {
        let urgent = level <= Level::WARN;
        let mut writer = LineWriter {
            shared: &sink.shared,
            urgent,
        };
        writer.write_all(line.as_bytes()).expect("appended");
    }

    #[test]
    fn info_lines_are_written_by_the_sinks_thread_in_order() {
        let out = Captured::default();
        let sink = LogSink::new(Box::new(out.clone()), true);
        log(&sink, Level::INFO, "one\n");
        log(&sink, Level::INFO, "two\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.text().is_empty() {
            assert!(Instant::now() < deadline, "the lines were never written");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.text(), "one\ntwo\n");
    }

    #[test]
    fn a_warning_is_written_at_once_with_the_lines_before_it() {
        let out = Captured::default();
        let sink = LogSink::new(Box::new(out.clone()), true);
        log(&sink, Level::INFO, "before\n");
        log(&sink, Level::WARN, "warned\n");
        assert_eq!(out.text(), "before\nwarned\n");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let out = Captured::default();
        let sink = LogSink::new(Box::new(out.clone()), true);
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..FLUSH_AT / line.len() {
            log(&sink, Level::INFO, &line);
        }
        assert_eq!(out.text().len(), FLUSH_AT, "written as the buffer filled");
    }

    #[test]
    fn flush_writes_what_is_held_and_direct_writes_each_line() {
        let out = Captured::default();
        let sink = LogSink::new(Box::new(out.clone()), true);
        log(&sink, Level::INFO, "held\n");
        sink.flush();
        assert_eq!(out.text(), "held\n");

        let out = Captured::default();
        let sink = LogSink::new(Box::new(out.clone()), false);
        log(&sink, Level::INFO, "direct\n");
        assert_eq!(out.text(), "direct\n");
    }
}
