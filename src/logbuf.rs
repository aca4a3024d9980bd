//! Buffered log output. Writing every log line to stderr costs one `write` syscall per request
//! on the data plane; instead lines are appended to a shared buffer and a background thread
//! writes the buffer out every 50 ms (or at once when it passes 1 MiB, so memory stays bounded
//! and a burst is never held back). `flush` drains it; the server calls it on exit.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const FLUSH_EVERY: Duration = Duration::from_millis(50);
const HIGH_WATER: usize = 1 << 20;

static BUFFER: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// The buffer written out last time, emptied, kept for the next swap: the live buffer keeps its
/// capacity instead of growing again from nothing (copying itself) after every flush.
static SPARE: Mutex<Vec<u8>> = Mutex::new(Vec::new());
/// Process id the flusher thread runs in (a daemonising fork leaves the thread behind).
static FLUSHER_PID: AtomicU32 = AtomicU32::new(0);

/// Write everything buffered to stderr now.
pub fn flush() {
    // One flusher at a time owns the spare; the live buffer is locked only for the swap.
    let mut spare = SPARE.lock().unwrap_or_else(|p| p.into_inner());
    {
        let mut b = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
        if b.is_empty() {
            return;
        }
        std::mem::swap(&mut *b, &mut *spare);
    }
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&spare);
    let _ = err.flush();
    spare.clear();
    if spare.capacity() > 2 * HIGH_WATER {
        *spare = Vec::new();
    }
}

thread_local! {
    /// This thread already made sure the flusher runs (getpid is a syscall: once per thread,
    /// not once per line). Threads started after a daemon fork check again.
    static FLUSHER_CHECKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn ensure_flusher() {
    if FLUSHER_CHECKED.with(|c| c.replace(true)) {
        return;
    }
    let pid = std::process::id();
    if FLUSHER_PID.load(Ordering::Relaxed) == pid {
        return;
    }
    if FLUSHER_PID.swap(pid, Ordering::AcqRel) == pid {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("log-flusher".into())
        .spawn(|| loop {
            std::thread::sleep(FLUSH_EVERY);
            flush();
        });
}

/// A `MakeWriter` for tracing-subscriber.
#[derive(Clone, Copy, Default)]
pub struct BufferedStderr;

pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        ensure_flusher();
        let full = {
            let mut b = BUFFER.lock().unwrap_or_else(|p| p.into_inner());
            b.extend_from_slice(buf);
            b.len() >= HIGH_WATER
        };
        if full {
            flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter
    }
}
