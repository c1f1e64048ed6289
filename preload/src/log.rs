//! The interposition log: with `CTXALLOC_PRELOAD_LOG=<file>`, each process counts the calls it
//! makes into the C allocator and, at exit, appends one line to the file:
//!
//! ```text
//! ctxalloc-preload: pid 4242 exe /usr/bin/git calls 18734 usage 4.1 MiB peak 4.3 MiB os-maps 3 bad-frees 0
//! ```
//!
//! A line with calls > 0 proves the program's allocations reached ctxalloc. Without the
//! variable nothing is counted (one load of a read-mostly flag per call). Everything here is
//! written with `write(2)` from stack buffers: it runs inside `exit`, after stdio may be gone.
//!
//! Threads: `COUNTING` is written once by the library's constructor, before `main`; `CALLS` is
//! incremented by every thread (Relaxed: a count, ordered with nothing) and read at exit.

use std::fmt::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether calls are counted (the log variable was set when the library was loaded).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Calls into the C allocator since the library's constructor ran.
static CALLS: AtomicU64 = AtomicU64::new(0);

const LOG_VAR: &std::ffi::CStr = c"CTXALLOC_PRELOAD_LOG";

/// Counts one call, if counting.
#[inline(always)]
pub(crate) fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The library's constructor: turns counting on if the log variable is set.
extern "C" fn on_load() {
    // SAFETY: a NUL-terminated name; getenv does not allocate.
    if !unsafe { libc::getenv(LOG_VAR.as_ptr()) }.is_null() {
        COUNTING.store(true, Ordering::Relaxed);
    }
}

/// The library's destructor (run by `exit`): appends this process's line to the log.
extern "C" fn on_exit() {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: as in `on_load`.
    let path = unsafe { libc::getenv(LOG_VAR.as_ptr()) };
    if path.is_null() {
        return;
    }
    // SAFETY: a NUL-terminated path from the environment; the flags create or append.
    let fd =
        unsafe { libc::open(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        return;
    }
    let mut exe = [0u8; 256];
    // SAFETY: readlink writes at most `exe.len()` bytes into the buffer.
    let n = unsafe { libc::readlink(c"/proc/self/exe".as_ptr(), exe.as_mut_ptr().cast(), exe.len()) };
    let exe = std::str::from_utf8(&exe[..n.max(0) as usize]).unwrap_or("?");
    let s = ctxalloc::stats();
    let mut w = FdWriter::new(fd);
    let _ = writeln!(
        w,
        "ctxalloc-preload: pid {} exe {exe} calls {} usage {} peak {} os-maps {} bad-frees {}",
        std::process::id(),
        CALLS.load(Ordering::Relaxed),
        Mib(s.usage),
        Mib(s.peak),
        s.os_maps,
        s.bad_frees
    );
    w.flush();
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

#[used]
#[link_section = ".fini_array"]
static ON_EXIT: extern "C" fn() = on_exit;

/// Writes ctxalloc's statistics table to `fd` (`malloc_stats`).
pub(crate) fn write_stats(fd: i32) {
    let mut w = FdWriter::new(fd);
    let _ = write!(w, "{}", ctxalloc::stats());
    w.flush();
}

/// Bytes as MiB with one decimal.
struct Mib(usize);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 as u64 * 10 / (1 << 20);
        write!(f, "{}.{} MiB", tenths / 10, tenths % 10)
    }
}

/// Formats into a stack buffer, written out with `write(2)` when full and on `flush`.
struct FdWriter {
    fd: i32,
    buf: [u8; 1024],
    len: usize,
}

impl FdWriter {
    fn new(fd: i32) -> Self {
        FdWriter { fd, buf: [0; 1024], len: 0 }
    }

    fn flush(&mut self) {
        let mut b = &self.buf[..self.len];
        while !b.is_empty() {
            // SAFETY: writes from a live buffer.
            let n = unsafe { libc::write(self.fd, b.as_ptr().cast(), b.len()) };
            if n <= 0 {
                break;
            }
            b = &b[n as usize..];
        }
        self.len = 0;
    }
}

impl Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}
