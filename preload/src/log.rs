//! The interposition log: with `CTXALLOC_PRELOAD_LOG=<file>`, each process counts the calls
//! into the C allocator that leave its inline fast paths and, at exit, appends one line to the
//! file:
//!
//! ```text
//! ctxalloc-preload: pid 4242 exe /usr/bin/git slow-path calls 1873 usage 4.1 MiB peak 4.3 MiB os-maps 3 bad-frees 0
//! ```
//!
//! The first allocation of every size on every thread takes the slow path, so a line with
//! calls > 0 proves the program's allocations reached ctxalloc. The fast paths (`malloc`'s and
//! `operator new`'s pop, every `free`) count nothing: a test of the flag there cost every call
//! three instructions of about twenty. Without the variable nothing is counted (one load of a
//! read-mostly flag per slow call). Everything here is written with `write(2)` from stack
//! buffers: it runs inside `exit`, after stdio may be gone.
//!
//! Threads: `COUNTING` is written once by the library's constructor, before `main`; `CALLS` is
//! incremented by every thread (Relaxed: a count, ordered with nothing) and read at exit.

use ctxalloc_core::report::ReportBuf;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether calls are counted (the log variable was set when the library was loaded).
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Calls into the C allocator that left its inline fast paths since the library's constructor
/// ran.
static CALLS: AtomicU64 = AtomicU64::new(0);

const LOG_VAR: &std::ffi::CStr = c"CTXALLOC_PRELOAD_LOG";

/// Counts one call off the fast paths, if counting.
#[inline(always)]
pub(crate) fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

/// The library's constructor: turns counting on if the log variable names a file this process
/// can append to, and says in one line why not otherwise.
extern "C" fn on_load() {
    // SAFETY: a NUL-terminated name; getenv does not allocate.
    let path = unsafe { libc::getenv(LOG_VAR.as_ptr()) };
    if path.is_null() {
        return;
    }
    match open_log(path) {
        Ok(fd) => {
            // SAFETY: the descriptor just opened.
            unsafe { libc::close(fd) };
            COUNTING.store(true, Ordering::Relaxed);
        }
        Err(errno) => cannot_open(path, errno),
    }
}

/// Opens the log for appending (creating it); the errno on failure.
fn open_log(path: *const libc::c_char) -> Result<i32, i32> {
    // SAFETY: a NUL-terminated path from the environment; the flags create or append.
    let fd =
        unsafe { libc::open(path, libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC, 0o644) };
    if fd < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(fd)
    }
}

/// `ctxalloc-preload: ignoring CTXALLOC_PRELOAD_LOG="/x/y": cannot append to it (errno 2)`.
fn cannot_open(path: *const libc::c_char, errno: i32) {
    // SAFETY: a NUL-terminated string from the environment.
    let shown = unsafe { std::ffi::CStr::from_ptr(path) }.to_str().unwrap_or("(not UTF-8)");
    write_line(&format_args!(
        "ctxalloc-preload: ignoring CTXALLOC_PRELOAD_LOG={shown:?}: cannot append to it (errno {errno})"
    ));
}

/// One line on stderr, formatted without allocating.
pub(crate) fn write_line(msg: &fmt::Arguments<'_>) {
    let mut b = ReportBuf::new();
    let _ = writeln!(b, "{msg}");
    write_all(libc::STDERR_FILENO, b.as_str());
}

/// `write(2)` of all of `s` (short writes continued; errors end it).
fn write_all(fd: i32, s: &str) {
    let mut b = s.as_bytes();
    while !b.is_empty() {
        // SAFETY: writes from a live buffer.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n <= 0 {
            break;
        }
        b = &b[n as usize..];
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
    let fd = match open_log(path) {
        Ok(fd) => fd,
        Err(errno) => return cannot_open(path, errno),
    };
    let mut exe = [0u8; 256];
    // SAFETY: readlink writes at most `exe.len()` bytes into the buffer.
    let n = unsafe { libc::readlink(c"/proc/self/exe".as_ptr(), exe.as_mut_ptr().cast(), exe.len()) };
    let exe = std::str::from_utf8(&exe[..n.max(0) as usize]).unwrap_or("?");
    let s = ctxalloc::stats();
    let mut w = ReportBuf::new();
    let _ = writeln!(
        w,
        "ctxalloc-preload: pid {} exe {exe} slow-path calls {} usage {} peak {} os-maps {} bad-frees {}",
        std::process::id(),
        CALLS.load(Ordering::Relaxed),
        Mib(s.usage),
        Mib(s.peak),
        s.os_maps,
        s.bad_frees
    );
    write_all(fd, w.as_str());
    // SAFETY: the descriptor opened above.
    unsafe { libc::close(fd) };
}

#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;

#[used]
#[link_section = ".fini_array"]
static ON_EXIT: extern "C" fn() = on_exit;

/// Bytes as MiB with one decimal.
struct Mib(usize);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenths = self.0 as u64 * 10 / (1 << 20);
        write!(f, "{}.{} MiB", tenths / 10, tenths % 10)
    }
}
