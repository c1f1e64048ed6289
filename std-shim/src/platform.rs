//! The std [`Platform`]: a `const` thread-local context without destructor (one `%fs`-relative
//! access on the fast path), `mmap` as the page source, futexes for waiting, `pthread_atfork`,
//! and a second thread-local whose only job is to run [`Core::thread_exit`].

use crate::CORE;
use ctxalloc_core::{BackgroundThread, Platform, ThreadCtx};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

const PAGE: usize = 4096;

/// The std platform. Stateless: everything per-thread lives in thread-locals.
pub(crate) struct StdPlatform;

thread_local! {
    /// The thread's heap pointer and context word. `const`, no destructor: accessing it is one
    /// thread-pointer-relative address computation, with no lazy-initialisation test.
    static THREAD: ThreadCtx = const { ThreadCtx::new() };

    /// Registered (by first access) when the thread gets a heap; its destructor abandons the
    /// heap. Kept apart from `THREAD` so the fast path never pays for a destructor state test.
    static EXIT_HOOK: ExitHook = const { ExitHook };
}

struct ExitHook;

impl Drop for ExitHook {
    fn drop(&mut self) {
        CORE.thread_exit();
    }
}

/// Whether the `fork` handlers are registered and the environment was read.
static ATFORK: AtomicBool = AtomicBool::new(false);

/// Whether a background thread runs (in this process: a child of `fork` has none): set by
/// whoever starts one, cleared by the thread as it exits when idle (the protocol and its loom
/// model: `ctxalloc_core::BackgroundThread`).
static BACKGROUND: BackgroundThread = BackgroundThread::new();

/// `CTXALLOC_BACKGROUND=off`: never start the background reclaimer (all reclaim is then direct,
/// on the allocating threads — deterministic, and no extra thread).
static BACKGROUND_OFF: AtomicBool = AtomicBool::new(false);

/// Starts the background reclaimer if it is not running (and the pressure monitor, if it has
/// something to watch). Safe to call from an allocation's slow path: it creates bare pthreads
/// (the C library allocates their stacks and TLS itself).
pub(crate) fn start_background() {
    if background_off() {
        return;
    }
    crate::container::pressure::start_if_wanted();
    if BACKGROUND.want() && !spawn(background_main) {
        BACKGROUND.forget();
        StdPlatform.report("ctxalloc: could not start the background reclaimer; reclaim stays direct\n");
    }
}

/// `CTXALLOC_BACKGROUND=off`: no background thread of any kind.
pub(crate) fn background_off() -> bool {
    BACKGROUND_OFF.load(Ordering::Acquire)
}

/// Starts a detached pthread running `main` (which never unwinds); whether it started.
pub(crate) fn spawn(main: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> bool {
    let mut tid: libc::pthread_t = 0;
    // SAFETY: `main` touches only the allocator's own state and never unwinds.
    let r = unsafe { libc::pthread_create(&mut tid, ptr::null(), main, ptr::null_mut()) };
    if r == 0 {
        // SAFETY: a thread we just created; nobody joins it.
        unsafe { libc::pthread_detach(tid) };
    }
    r == 0
}

/// Writes a report to stderr without allocating (`ctxalloc_core::report::report`: one line,
/// never under an allocator lock).
pub(crate) fn report(args: std::fmt::Arguments<'_>) {
    ctxalloc_core::report::report(&StdPlatform, args);
}

/// The background thread (the kernel's kswapd): sleeps until usage passes the low watermark,
/// then reclaims in a clean context down to the high watermark and runs deferred work; and
/// gives back free memory that has waited `PURGE_DELAY_NS` (an idle program shrinks). Started
/// by the first limit or the first free page.
///
/// It exits once it has had nothing to do for [`IDLE_EXIT_NS`] (`CTXALLOC_BACKGROUND_IDLE`) —
/// while the heap holds little (memory later frees could leave waiting for the purge is no
/// more than the purge slack: a free never starts this thread), or when it is the process's
/// last thread — and the next wake starts a new one: a process whose threads all end with
/// `pthread_exit` ends when the last one does, instead of living on for a thread it never
/// created (seen under LD_PRELOAD: CPython's `test_threading` forks from a thread, and the
/// child's last thread calls `pthread_exit`).
extern "C" fn background_main(_: *mut libc::c_void) -> *mut libc::c_void {
    #[cfg(target_os = "linux")]
    // SAFETY: names the calling thread; the name is a NUL-terminated literal under 16 bytes.
    unsafe {
        libc::pthread_setname_np(libc::pthread_self(), c"ctxalloc-kswapd".as_ptr());
    }
    loop {
        // Dirty memory that has waited is given back; while some is waiting, look again
        // after the purge delay, else wait for a wake until the idle timeout.
        let pending = CORE.purge_aged();
        let timeout =
            if pending { ctxalloc_core::PURGE_DELAY_NS } else { IDLE_EXIT_NS.load(Ordering::Relaxed) };
        if CORE.background_wait(timeout) {
            CORE.background_reclaim();
            continue;
        }
        // With memory in the heap that frees to come could leave waiting (a free never starts
        // this thread), stay — unless this is the process's last thread: then leaving ends it.
        if pending || CORE.background_pending() || (CORE.background_should_stay() && !last_thread()) {
            continue;
        }
        // Idle: leave, unless work arrived while we decided to (see `BackgroundThread`).
        if BACKGROUND.may_exit(|| CORE.background_pending()) {
            return ptr::null_mut();
        }
    }
}

/// Whether the calling thread is the only one left in the process (`num_threads` of
/// `/proc/self/stat`, read without allocating); false where that cannot be read.
fn last_thread() -> bool {
    let Some(path) = crate::container::fs::StackPath::of(&[b"/proc/self/stat"]) else { return false };
    let mut buf = [0u8; 1024];
    let Ok(stat) = crate::container::fs::read_file(&path, &mut buf) else { return false };
    // After the command's closing parenthesis (the name may hold spaces and parentheses): the
    // state is the 3rd field, `num_threads` the 20th.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else { return false };
    let field = stat[close + 1..].split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).nth(17);
    field == Some(b"1".as_slice())
}

/// How long the background thread waits for work before it exits: 1 s, or
/// `CTXALLOC_BACKGROUND_IDLE` (tests make it short so that the thread idles out and is started
/// again often).
static IDLE_EXIT_NS: AtomicU64 = AtomicU64::new(1_000_000_000);

/// Writes a one-line warning about an environment value that is not used, without allocating:
/// `ctxalloc: ignoring NAME="value": expected …`.
fn warn_env(name: &str, value: &[u8], expected: &str) {
    warn_env_why(name, value, format_args!("expected {expected}"));
}

/// [`warn_env`] with the reason in full: `ctxalloc: ignoring NAME="value": why`.
fn warn_env_why(name: &str, value: &[u8], why: std::fmt::Arguments<'_>) {
    let shown = std::str::from_utf8(&value[..value.len().min(64)]).unwrap_or("(not UTF-8)");
    report(format_args!("ctxalloc: ignoring {name}={shown:?}: {why}\n"));
}

/// `CTXALLOC_SHOW_STATS=1`: the statistics table goes to stderr at exit.
static SHOW_STATS: AtomicBool = AtomicBool::new(false);

/// The `atexit` handler of `CTXALLOC_SHOW_STATS`.
extern "C" fn show_stats_at_exit() {
    crate::print_stats(libc::STDERR_FILENO);
}

/// Formats into a stack buffer, written out with `write(2)` when full and on `flush`: text for a
/// file descriptor without allocating (it may run inside `exit`, after stdio is gone).
pub(crate) struct FdWriter {
    fd: i32,
    buf: [u8; 1024],
    len: usize,
}

impl FdWriter {
    pub(crate) fn new(fd: i32) -> Self {
        FdWriter { fd, buf: [0; 1024], len: 0 }
    }

    pub(crate) fn flush(&mut self) {
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

impl std::fmt::Write for FdWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
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

/// The value of the environment variable `name`, without allocating.
fn getenv(name: &std::ffi::CStr) -> Option<&'static [u8]> {
    // SAFETY: a NUL-terminated name; the result is null or a NUL-terminated string that stays
    // valid while nobody calls setenv (which a program does not do while allocating for the
    // first time).
    let v = unsafe { libc::getenv(name.as_ptr()) };
    // SAFETY: as above.
    (!v.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes())
}

/// Reads the environment without allocating: `CTXALLOC_BACKGROUND`, `CTXALLOC_SHOW_STATS`,
/// `CTXALLOC_BACKGROUND_IDLE`, `CTXALLOC_PRESSURE`, `CTXALLOC_CGROUP_ROOT` and `CTXALLOC_LIMIT`
/// (a value that does not parse, or a limit that cannot work, is reported in one line and not
/// used; `auto` and `N%` read the cgroup).
fn read_environment() {
    if let Some(v) = getenv(c"CTXALLOC_BACKGROUND_IDLE") {
        match crate::env::parse_duration_ns(v) {
            Ok(ns) => IDLE_EXIT_NS.store(ns, Ordering::Relaxed),
            Err(()) => warn_env(
                "CTXALLOC_BACKGROUND_IDLE",
                v,
                "a duration with a unit (500ms, 2s, 100us) or 0; the background thread idles out after 1 s",
            ),
        }
    }
    if let Some(v) = getenv(c"CTXALLOC_BACKGROUND") {
        match crate::env::parse_switch(v) {
            Some(on) => BACKGROUND_OFF.store(!on, Ordering::Release),
            None => warn_env("CTXALLOC_BACKGROUND", v, crate::env::SWITCH_SYNTAX),
        }
    }
    if let Some(v) = getenv(c"CTXALLOC_SHOW_STATS") {
        match crate::env::parse_switch(v) {
            Some(on) => SHOW_STATS.store(on, Ordering::Relaxed),
            None => warn_env("CTXALLOC_SHOW_STATS", v, crate::env::SWITCH_SYNTAX),
        }
    }
    if let Some(v) = getenv(c"CTXALLOC_PRESSURE") {
        if let Err(e) = crate::container::pressure::from_environment(v) {
            warn_env("CTXALLOC_PRESSURE", v, e.0);
        } else if background_off() && !v.trim_ascii().eq_ignore_ascii_case(b"off") {
            warn_env(
                "CTXALLOC_PRESSURE",
                v,
                "no value while CTXALLOC_BACKGROUND=off (no monitor thread runs)",
            );
        }
    }
    if let Some(v) = getenv(c"CTXALLOC_CGROUP_ROOT") {
        if !crate::container::cgroup::Cgroups::set_system_root(v) {
            warn_env("CTXALLOC_CGROUP_ROOT", v, "a directory path of at most 255 bytes");
        }
    }
    if let Some(v) = getenv(c"CTXALLOC_LIMIT") {
        if let Some(auto) = crate::container::cgroup::AutoLimit::parse(v) {
            match auto {
                Ok(how) => crate::container::cgroup::from_environment(how),
                Err(()) => warn_env("CTXALLOC_LIMIT", v, "a percentage from 1% to 100%"),
            }
            return;
        }
        match ctxalloc_core::parse::parse_limit(v) {
            Ok(None) => CORE.remove_limit(),
            Ok(Some(limit)) => {
                if let Err(e) = CORE.set_limit(limit) {
                    warn_env_why("CTXALLOC_LIMIT", v, format_args!("{e}"));
                }
            }
            Err(e) => warn_env_why(
                "CTXALLOC_LIMIT",
                v,
                format_args!(
                    "{e}; expected {}, \"auto\", a percentage (80%) or \"none\"",
                    ctxalloc_core::parse::SIZE_SYNTAX
                ),
            ),
        }
    }
}

extern "C" fn fork_prepare() {
    CORE.fork_prepare();
}

extern "C" fn fork_parent() {
    // SAFETY: `fork_prepare` ran on this thread just before.
    unsafe { CORE.fork_parent() };
}

extern "C" fn fork_child() {
    // The background reclaimer and the monitor did not survive the fork; they restart when
    // wanted.
    BACKGROUND.forget();
    crate::container::pressure::forget_after_fork();
    // SAFETY: the child's only thread, which ran `fork_prepare`.
    unsafe { CORE.fork_child() };
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `mmap` of fresh, private, zeroed memory; `None` on failure.
///
/// # Safety
/// `len` is a multiple of the page size.
unsafe fn mmap(len: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping touches nothing that exists.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

// SAFETY: `thread` returns the calling thread's own `const` thread-local, alive as long as the
// thread; `map` returns fresh anonymous mappings (zeroed) whose provenance it exposes, so
// `ptr_from_addr`'s default recovers it; `purge` uses MADV_DONTNEED, after which private
// anonymous memory reads as zero; nothing here allocates through the global allocator (the
// exit-hook registration uses the C runtime's own allocator) or calls back into the core except
// the thread-exit and fork hooks, which the core expects.
unsafe impl Platform for StdPlatform {
    const PAGE_SIZE: usize = PAGE;
    const MAP_ZEROED: bool = true;
    const CAN_PURGE: bool = true;

    #[inline(always)]
    fn thread(&self) -> *const ThreadCtx {
        #[cfg(all(feature = "tls-initial-exec", target_arch = "x86_64", target_os = "linux", not(miri)))]
        return initial_exec::thread();
        #[allow(unreachable_code)]
        THREAD.with(|t| t as *const ThreadCtx)
    }

    #[inline(always)]
    fn thread_if_any(&self) -> *const ThreadCtx {
        #[cfg(all(feature = "tls-initial-exec", target_arch = "x86_64", target_os = "linux", not(miri)))]
        return initial_exec::slot();
        #[allow(unreachable_code)]
        self.thread()
    }

    fn thread_attached(&self) {
        // The environment first: registering the `fork` handlers and the destructor allocates
        // (glibc's `pthread_atfork` and `__cxa_thread_atexit_impl` call malloc), and such an
        // allocation may start the background thread, which `CTXALLOC_BACKGROUND=off` forbids.
        if !ATFORK.swap(true, Ordering::AcqRel) {
            read_environment();
            // SAFETY: plain C functions that never unwind.
            unsafe { libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child)) };
            if SHOW_STATS.load(Ordering::Relaxed) {
                // SAFETY: a plain C function that never unwinds; it only formats and writes.
                unsafe { libc::atexit(show_stats_at_exit) };
            }
        }
        // First access registers the destructor; during thread teardown it fails harmlessly.
        let _ = EXIT_HOOK.try_with(|_| ());
    }

    fn background_wanted(&self) {
        start_background();
    }

    fn background_if_running(&self) -> bool {
        BACKGROUND.runs()
    }

    #[cfg(miri)]
    unsafe fn map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        // Miri's mmap cannot trim a mapping to an alignment: posix_memalign stands in.
        let mut p = ptr::null_mut();
        // SAFETY: a power-of-two alignment that is a multiple of the pointer size.
        if unsafe { libc::posix_memalign(&mut p, align.max(PAGE), len) } != 0 {
            return None;
        }
        // SAFETY: `len` fresh bytes; mappings read as zero.
        unsafe { p.cast::<u8>().write_bytes(0, len) };
        // As for a real mapping: `ptr_from_addr` rebuilds pointers into it from addresses.
        p.expose_provenance();
        NonNull::new(p.cast())
    }

    #[cfg(miri)]
    unsafe fn unmap(&self, ptr: NonNull<u8>, _len: usize) {
        // SAFETY: a whole "mapping" from `map` above.
        unsafe { libc::free(ptr.as_ptr().cast()) };
    }

    #[cfg(miri)]
    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize) -> bool {
        // What MADV_DONTNEED does to private anonymous memory.
        // SAFETY: the range lies in one mapping and holds nothing anyone reads.
        unsafe { ptr.as_ptr().write_bytes(0, len) };
        true
    }

    #[cfg(not(miri))]
    unsafe fn map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        // SAFETY: `len` is page-rounded by the caller.
        let p = unsafe { mmap(len)? };
        if p.addr() % align == 0 {
            p.expose_provenance();
            return NonNull::new(p);
        }
        // Not aligned: map enough to contain an aligned range, trim both ends.
        // SAFETY: `p`/`len` is the mapping just made.
        unsafe { libc::munmap(p.cast(), len) };
        let total = len.checked_add(align - PAGE)?;
        // SAFETY: page-rounded.
        let p = unsafe { mmap(total)? };
        let head = p.addr().next_multiple_of(align) - p.addr();
        let tail = total - head - len;
        // SAFETY: both trims lie inside the mapping just made and hold nothing.
        unsafe {
            if head != 0 {
                libc::munmap(p.cast(), head);
            }
            if tail != 0 {
                libc::munmap(p.add(head + len).cast(), tail);
            }
        }
        // SAFETY: inside the mapping.
        let p = unsafe { p.add(head) };
        p.expose_provenance();
        NonNull::new(p)
    }

    #[cfg(not(miri))]
    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: the core hands back a whole mapping it no longer uses.
        let r = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        debug_assert_eq!(r, 0, "munmap failed: errno {}", errno());
    }

    #[cfg(not(miri))]
    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: the range lies in one mapping and holds nothing anyone reads.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTNEED) == 0 }
    }

    #[cfg(all(target_os = "linux", not(miri)))]
    unsafe fn remap(&self, ptr: NonNull<u8>, old_len: usize, new_len: usize) -> Option<NonNull<u8>> {
        // SAFETY: `ptr`/`old_len` is a whole mapping the caller owns.
        let p = unsafe { libc::mremap(ptr.as_ptr().cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            return None;
        }
        let p = p.cast::<u8>();
        p.expose_provenance();
        NonNull::new(p)
    }

    #[cfg(all(not(miri), target_os = "linux"))]
    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: a range inside one of our mappings; the advice changes no content.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
    }

    #[cfg(not(miri))]
    unsafe fn map_at(&self, addr: NonNull<u8>, len: usize) -> bool {
        // SAFETY: a fresh private anonymous mapping at a page-aligned address; the kernel
        // refuses (EEXIST) rather than replace anything there.
        let p = unsafe {
            libc::mmap(
                addr.as_ptr().cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return false;
        }
        if p != addr.as_ptr().cast() {
            // A kernel older than 4.17 takes the flag for a hint: not where it was wanted.
            // SAFETY: the mapping just made, nobody's.
            unsafe { libc::munmap(p, len) };
            return false;
        }
        p.cast::<u8>().expose_provenance();
        true
    }

    fn report(&self, msg: &str) {
        let mut b = msg.as_bytes();
        while !b.is_empty() {
            // SAFETY: writes from a live buffer to stderr.
            let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
            if n < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                return;
            }
            b = &b[n as usize..];
        }
    }

    fn abort(&self) -> ! {
        // SAFETY: ends the process; nothing to uphold.
        unsafe { libc::abort() }
    }

    #[cfg(all(feature = "hooks", not(miri)))]
    fn backtrace(&self, frames: &mut [usize]) -> usize {
        unwind::backtrace(frames)
    }

    #[cfg(all(feature = "hooks", not(miri)))]
    fn describe_addr(&self, addr: usize, w: &mut dyn std::fmt::Write) {
        unwind::describe(addr, w)
    }

    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: writes the current time into `ts`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    #[cfg(target_os = "linux")]
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: u64) {
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: a private futex wait on a live word; returns on wake, timeout, mismatch or
        // signal, all of which the caller handles by re-checking.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                &ts as *const libc::timespec,
            )
        };
    }

    #[cfg(not(target_os = "linux"))]
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: u64) {
        let step = timeout_ns.min(1_000_000);
        if word.load(Ordering::Acquire) == expected {
            let ts = libc::timespec { tv_sec: 0, tv_nsec: step as libc::c_long };
            // SAFETY: sleeps.
            unsafe { libc::nanosleep(&ts, ptr::null_mut()) };
        }
    }

    #[cfg(target_os = "linux")]
    fn wake_all(&self, word: &AtomicU32) {
        // SAFETY: a private futex wake on a live word.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }

    #[cfg(not(target_os = "linux"))]
    fn wake_all(&self, _word: &AtomicU32) {}

    #[inline]
    fn relax(&self) {
        // SAFETY: yields the CPU.
        unsafe { libc::sched_yield() };
    }
}

/// The thread's context in a shared library, without `__tls_get_addr`: an 8-byte slot in the
/// library's *initial-exec* TLS — at a fixed offset from the thread pointer, found through one
/// GOT load — holds the address of the thread's `THREAD` (`ThreadCtx::none()` until the thread's
/// first allocation). Two instructions instead of a call per allocation and per free
/// (measured: 6.8 % of glibc-thread's time was `__tls_get_addr`), and no test: `none` has the
/// empty heap. Rust's `thread_local!` in a `cdylib` always takes the general-dynamic model;
/// `#[thread_local]` and `-Z tls-model` are unstable, hence the assembly.
#[cfg(all(feature = "tls-initial-exec", target_arch = "x86_64", target_os = "linux", not(miri)))]
mod initial_exec {
    use super::THREAD;
    use ctxalloc_core::ThreadCtx;

    // The slot: TLS initialised to the address of `NO_THREAD` (`.tdata`: the loader relocates
    // the initialisation image before it copies it for the first thread, and every thread
    // starts from the relocated image), global within the library (codegen units and LTO may
    // put the definition and the references in different objects) but hidden: not exported,
    // so another copy in the process is another slot.
    core::arch::global_asm!(
        ".section .tdata,\"awT\",@progbits",
        ".p2align 3",
        ".globl ctxalloc_thread_slot",
        ".hidden ctxalloc_thread_slot",
        ".type ctxalloc_thread_slot, @object",
        ".size ctxalloc_thread_slot, 8",
        "ctxalloc_thread_slot:",
        ".quad {none}",
        ".text",
        none = sym ctxalloc_core::NO_THREAD,
    );

    /// This thread's slot: its `THREAD`, or `ThreadCtx::none()` before its first allocation.
    #[inline(always)]
    pub(super) fn slot() -> *const ThreadCtx {
        let v: usize;
        // SAFETY: reads this thread's slot: its offset from the thread pointer comes from the
        // GOT entry the linker made for the initial-exec reference; `%fs` is the thread pointer.
        unsafe {
            core::arch::asm!(
                "movq ctxalloc_thread_slot@GOTTPOFF(%rip), {o}",
                "movq %fs:({o}), {v}",
                o = out(reg) _,
                v = lateout(reg) v,
                options(att_syntax, nostack, readonly, preserves_flags),
            );
        }
        core::ptr::with_exposed_provenance(v)
    }

    #[inline(always)]
    pub(super) fn thread() -> *const ThreadCtx {
        let t = slot();
        if t != ThreadCtx::none() {
            return t;
        }
        first()
    }

    /// The thread's first access: the slot learns its `THREAD`.
    #[cold]
    #[inline(never)]
    fn first() -> *const ThreadCtx {
        let t = THREAD.with(|t| t as *const ThreadCtx);
        let v = t.expose_provenance();
        // SAFETY: writes this thread's slot (as above).
        unsafe {
            core::arch::asm!(
                "movq ctxalloc_thread_slot@GOTTPOFF(%rip), {o}",
                "movq {v}, %fs:({o})",
                o = out(reg) _,
                v = in(reg) v,
                options(att_syntax, nostack, preserves_flags),
            );
        }
        t
    }
}

/// Return addresses without allocating, for the debugging hooks' reports: the unwinder that
/// `std` links already (`_Unwind_Backtrace`, which reads `.eh_frame_hdr` in place), and
/// `dladdr` to name the module of each address.
#[cfg(all(feature = "hooks", not(miri)))]
mod unwind {
    use std::ffi::{c_int, c_void, CStr};

    #[repr(C)]
    struct Context {
        _opaque: [u8; 0],
    }
    type Trace = extern "C" fn(*mut Context, *mut c_void) -> c_int;
    const URC_NO_REASON: c_int = 0;
    const URC_END_OF_STACK: c_int = 5;

    extern "C" {
        fn _Unwind_Backtrace(trace: Trace, arg: *mut c_void) -> c_int;
        fn _Unwind_GetIP(ctx: *mut Context) -> usize;
    }

    /// The frame of [`backtrace`] itself is skipped. The allocator's own frames follow (how
    /// many depends on inlining, so none is skipped blindly), then the caller's.
    const SKIP: usize = 1;

    struct State<'a> {
        frames: &'a mut [usize],
        seen: usize,
        n: usize,
    }

    extern "C" fn step(ctx: *mut Context, arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the `State` passed to `_Unwind_Backtrace` below, alive for its call.
        let st = unsafe { &mut *arg.cast::<State<'_>>() };
        // SAFETY: `ctx` is the unwinder's context for this frame.
        let ip = unsafe { _Unwind_GetIP(ctx) };
        st.seen += 1;
        if st.seen > SKIP && ip != 0 {
            if st.n == st.frames.len() {
                return URC_END_OF_STACK;
            }
            st.frames[st.n] = ip;
            st.n += 1;
        }
        URC_NO_REASON
    }

    pub(super) fn backtrace(frames: &mut [usize]) -> usize {
        let mut st = State { frames, seen: 0, n: 0 };
        // SAFETY: `step` only touches `st`, which outlives the call.
        unsafe { _Unwind_Backtrace(step, (&raw mut st).cast()) };
        st.n
    }

    /// `module+0xoffset` (the offset `addr2line -e module` takes), or the bare address.
    pub(super) fn describe(addr: usize, w: &mut dyn std::fmt::Write) {
        // SAFETY: an all-zero `Dl_info` is valid (null pointers).
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // A return address points after the call: look up the call instruction's module.
        // SAFETY: `dladdr` only reads the loader's tables and fills `info`.
        let found = unsafe { libc::dladdr(addr.wrapping_sub(1) as *const c_void, &mut info) } != 0;
        if found && !info.dli_fname.is_null() {
            // SAFETY: a NUL-terminated path owned by the loader, valid while the module is loaded.
            let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes();
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
            let name = std::str::from_utf8(name).unwrap_or("?");
            let _ = write!(w, "{name}+{:#x}", addr - info.dli_fbase as usize);
        } else {
            let _ = write!(w, "{addr:#x}");
        }
    }
}
