//! Helpers for the conformance suite: a seedable RNG, blocks that carry a verifiable pattern, a
//! model that checks no two live blocks overlap, and running one test in a child process.
//!
//! Every test binary in `tests/` installs `CtxAlloc` as its global allocator; these helpers
//! allocate through `std::alloc`, so they exercise it.

use std::alloc::Layout;
use std::collections::BTreeMap;
use std::process::{Command, Output};

/// xorshift64*: deterministic and seedable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (zero is replaced).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A size skewed like real programs: mostly small, sometimes medium, rarely large.
    pub fn size(&mut self, max_large: usize) -> usize {
        match self.below(100) {
            0 => 1 + self.below(max_large as u64) as usize,
            1..=9 => 1 + self.below(64 * 1024) as usize,
            _ => 1 + self.below(512) as usize,
        }
    }
}

/// The pattern's `i`-th 8-byte word. A byte's value depends only on its offset, so a prefix
/// copied by `realloc` verifies against the same pattern whatever the block's length.
fn word(seed: u64, i: usize) -> u64 {
    (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).rotate_left((i % 63) as u32)
}

fn byte(seed: u64, i: usize) -> u8 {
    word(seed, i / 8).to_ne_bytes()[i % 8]
}

/// Fills `len` bytes at `p` with a pattern derived from `seed` and the position.
///
/// # Safety
/// `p` is valid for `len` bytes of writes.
pub unsafe fn fill(p: *mut u8, len: usize, seed: u64) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: in bounds; unaligned write is allowed.
        unsafe { p.add(i * 8).cast::<u64>().write_unaligned(word(seed, i)) };
    }
    for i in words * 8..len {
        // SAFETY: in bounds.
        unsafe { p.add(i).write(byte(seed, i)) };
    }
}

/// Checks a pattern written by [`fill`]; panics naming the block and offset.
///
/// # Safety
/// `p` is valid for `len` bytes of reads.
pub unsafe fn verify(p: *const u8, len: usize, seed: u64) {
    let words = len / 8;
    for i in 0..words {
        // SAFETY: in bounds.
        let got = unsafe { p.add(i * 8).cast::<u64>().read_unaligned() };
        assert_eq!(got, word(seed, i), "block {p:p} ({len} B) corrupted at word {i}");
    }
    for i in words * 8..len {
        // SAFETY: in bounds.
        let got = unsafe { p.add(i).read() };
        assert_eq!(got, byte(seed, i), "block {p:p} ({len} B) corrupted at byte {i}");
    }
}

/// A live block with a pattern, allocated through the global allocator. `Send`: tests move
/// blocks between threads to free them remotely.
#[derive(Debug)]
pub struct Block {
    ptr: usize,
    layout: Layout,
    seed: u64,
}

impl Block {
    /// Allocates and fills a block; panics if the allocator returns null.
    pub fn new(layout: Layout, seed: u64) -> Block {
        // SAFETY: tests never ask for zero-sized layouts through this helper.
        assert!(layout.size() > 0);
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null(), "allocation of {layout:?} failed");
        assert_eq!(p as usize % layout.align(), 0, "{p:p} misaligned for {layout:?}");
        // SAFETY: a fresh block of `layout.size()` bytes.
        unsafe { fill(p, layout.size(), seed) };
        Block { ptr: p as usize, layout, seed }
    }

    /// The block's address.
    pub fn addr(&self) -> usize {
        self.ptr
    }

    /// Its layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Checks the pattern.
    pub fn verify(&self) {
        // SAFETY: a live block of `layout.size()` bytes.
        unsafe { verify(self.ptr as *const u8, self.layout.size(), self.seed) };
    }

    /// Reallocates to `new_size`, checking that the common prefix survived, and refills.
    pub fn realloc(&mut self, new_size: usize) {
        self.verify();
        // SAFETY: a live block of `layout`; the new size is valid for its alignment.
        let q = unsafe { std::alloc::realloc(self.ptr as *mut u8, self.layout, new_size) };
        assert!(!q.is_null(), "realloc of {:?} to {new_size} failed", self.layout);
        assert_eq!(q as usize % self.layout.align(), 0);
        let keep = self.layout.size().min(new_size);
        // SAFETY: the new block holds at least `keep` bytes of the old pattern.
        unsafe { verify(q, keep, self.seed) };
        self.ptr = q as usize;
        self.layout = Layout::from_size_align(new_size, self.layout.align()).unwrap();
        // SAFETY: the new block of `new_size` bytes.
        unsafe { fill(q, new_size, self.seed) };
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.verify();
        // SAFETY: a live block of `layout`.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, self.layout) };
    }
}

/// Live blocks by address: inserting one that overlaps a live block panics.
#[derive(Default, Debug)]
pub struct Model {
    live: BTreeMap<usize, Block>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks that `b` overlaps no live block, then keeps it.
    pub fn insert(&mut self, b: Block) {
        let (a, len) = (b.addr(), b.layout().size());
        if let Some((&p, q)) = self.live.range(..=a).next_back() {
            assert!(p + q.layout().size() <= a, "{a:#x} overlaps the live block at {p:#x}");
        }
        if let Some((&p, _)) = self.live.range(a + 1..).next() {
            assert!(a + len <= p, "{a:#x}+{len} overlaps the live block at {p:#x}");
        }
        self.live.insert(a, b);
    }

    /// Removes (without freeing) the block at `addr`.
    pub fn take(&mut self, addr: usize) -> Option<Block> {
        self.live.remove(&addr)
    }

    /// Addresses of the live blocks.
    pub fn addrs(&self) -> Vec<usize> {
        self.live.keys().copied().collect()
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Checks every live block.
    pub fn verify_all(&self) {
        self.live.values().for_each(Block::verify);
    }
}

/// The environment variable that tells a test it runs as the child of [`run_child`].
pub const CHILD_ENV: &str = "CTXALLOC_TEST_CHILD";

/// Whether this process is the child [`run_child`] started for `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// Runs the test named `test` of the current test binary in a child process (which sees
/// [`is_child`]) and returns its output.
pub fn run_child(test: &str) -> Output {
    run_child_env(test, &[])
}

/// How long a child scenario may run before [`run_child`] declares it hung. A guard so that a
/// deadlock fails the test with the child's stacks instead of stalling the whole run; no
/// scenario is meant to come near it (the slowest takes about 10 s in a debug build).
pub const CHILD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// [`run_child`] with extra environment variables.
///
/// A child still running after [`CHILD_DEADLINE`] is killed; if `gdb` is installed, every
/// thread's stack is captured first and appended to the child's stderr (see [`run_watched`]).
pub fn run_child_env(test: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(std::env::current_exe().expect("test binary path"));
    c.args(["--exact", test, "--nocapture", "--test-threads=1"]).env(CHILD_ENV, test);
    for (k, v) in env {
        c.env(k, v);
    }
    run_watched(&mut c, CHILD_DEADLINE, None)
}

/// Runs `cmd` to its end and returns its output. It counts as hung when it runs past
/// `deadline`, or — with `quiet` — when that long passes without a line on its stdout (for a
/// program that reports its progress, a round a line: a per-round timeout). A hung program's
/// threads' stacks are captured with `gdb` (if installed) and appended to its stderr, after a
/// line that says so, and it is killed.
pub fn run_watched(
    cmd: &mut Command,
    deadline: std::time::Duration,
    quiet: Option<std::time::Duration>,
) -> Output {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;
    use std::sync::mpsc;
    enum Event {
        Line,
        Exited,
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning the program");
    let pid = child.id();
    let (tx, events) = mpsc::channel::<Event>();
    let out = child.stdout.take().expect("stdout");
    let lines = tx.clone();
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        let mut r = BufReader::new(out);
        while r.read_until(b'\n', &mut v).is_ok_and(|n| n > 0) {
            let _ = lines.send(Event::Line);
        }
        v
    });
    let mut err = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    std::thread::spawn(move || {
        let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::zeroed();
        // SAFETY: waitid(2) on our own child with WNOWAIT: it waits for the exit but leaves the
        // child unreaped, so its pid stays ours until `child.wait()` below; `info` is writable.
        unsafe { libc::waitid(libc::P_PID, pid, info.as_mut_ptr(), libc::WEXITED | libc::WNOWAIT) };
        let _ = tx.send(Event::Exited);
    });
    let start = std::time::Instant::now();
    let hung = loop {
        let left = deadline.saturating_sub(start.elapsed());
        let wait = quiet.map_or(left, |q| q.min(left));
        match events.recv_timeout(wait) {
            Ok(Event::Line) => {}
            Ok(Event::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) if wait == left => {
                break Some(format!("still running after {} s", deadline.as_secs()));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Some(format!("printed nothing for {} s", wait.as_secs()));
            }
        }
    };
    let stacks = hung.as_ref().map(|_| {
        let s = Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 30"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("(no stacks: gdb: {e})"));
        // SAFETY: kill(2) on our child, not yet reaped (only `child.wait()` below reaps it), so
        // the pid cannot have been reused; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        s
    });
    let status = child.wait().expect("waiting for the program");
    let mut out = Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    };
    if let (Some(why), Some(stacks)) = (hung, stacks) {
        let note = format!("\n--- hung ({why}): killed; its threads were:\n{stacks}");
        out.stderr.extend_from_slice(note.as_bytes());
    }
    out
}

/// Runs the child scenario `test` and asserts it passed, showing its output if not.
pub fn assert_child_passes(test: &str, env: &[(&str, &str)]) -> Output {
    let out = run_child_env(test, env);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child {test} failed: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the child scenario `test`, asserts it passed, and returns what it wrote to stderr
/// (where ctxalloc's reports go).
pub fn child_stderr(test: &str) -> String {
    String::from_utf8_lossy(&assert_child_passes(test, &[]).stderr).into_owned()
}

/// Spins (yielding) until `cond` holds; panics after `secs` seconds so that a broken test fails
/// instead of hanging. The deadline is a guard, not the synchronisation.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod watch_tests {
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn a_program_that_falls_silent_is_reported_hung_and_killed() {
        let out = super::run_watched(
            Command::new("sh").args(["-c", "echo started; exec sleep 600"]),
            Duration::from_secs(600),
            Some(Duration::from_secs(1)),
        );
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--- hung (printed nothing for 1 s): killed; its threads were:"), "{err}");
    }
}

/// Lifts the process's memory limit when dropped.
pub struct LimitGuard(pub usize);

impl Drop for LimitGuard {
    fn drop(&mut self) {
        ctxalloc::remove_limit();
    }
}

/// Limits the process to its current usage plus `extra` bytes. The first call also installs a
/// panic hook that lifts the limit before the report is formatted (formatting allocates, and
/// the guard's drop runs only after the hook).
pub fn limit_to(extra: usize) -> LimitGuard {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            ctxalloc::remove_limit();
            report(info);
        }));
    });
    let limit = ctxalloc::usage() + extra;
    ctxalloc::set_limit(limit).expect("a workable limit");
    LimitGuard(limit)
}

/// The kernel shim on the host: each thread plays a CPU.
pub mod host {
    use std::cell::Cell;
    use std::sync::{Mutex, OnceLock};

    /// CPU slots. A host thread takes a free one the first time it allocates and gives it back
    /// when it exits (after its last allocation: a pthread key destructor runs after the
    /// thread's Rust thread-local destructors), so the next thread runs on that "CPU" — with
    /// its heap, as a new task on a real CPU would. Nothing here allocates.
    pub const CPUS: usize = 256;

    thread_local! {
        static CPU: Cell<usize> = const { Cell::new(usize::MAX) };
    }

    /// Free slots, a stack; `len` of them valid.
    struct Free {
        slots: [u16; CPUS],
        len: usize,
    }

    static FREE: Mutex<Free> = Mutex::new(Free { slots: initial(), len: CPUS });

    const fn initial() -> [u16; CPUS] {
        let mut s = [0u16; CPUS];
        let mut i = 0;
        while i < CPUS {
            s[i] = (CPUS - 1 - i) as u16;
            i += 1;
        }
        s
    }

    static KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();

    extern "C" fn release(slot: *mut libc::c_void) {
        let mut f = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let len = f.len;
        f.slots[len] = (slot as usize - 1) as u16;
        f.len += 1;
    }

    /// This thread's CPU slot.
    pub fn cpu_id() -> usize {
        CPU.with(|c| {
            if c.get() == usize::MAX {
                let key = *KEY.get_or_init(|| {
                    let mut k = 0;
                    // SAFETY: creates a key with a destructor that does not allocate.
                    assert_eq!(unsafe { libc::pthread_key_create(&mut k, Some(release)) }, 0);
                    k
                });
                let id = {
                    let mut f = FREE.lock().unwrap_or_else(|e| e.into_inner());
                    assert!(f.len > 0, "more live host threads than CPU slots");
                    f.len -= 1;
                    f.slots[f.len] as usize
                };
                // SAFETY: a non-null value for our key: the destructor gets it back at exit.
                unsafe { libc::pthread_setspecific(key, (id + 1) as *mut libc::c_void) };
                c.set(id);
            }
            c.get()
        })
    }

    /// Writes a report to stderr without allocating.
    pub fn report(msg: &str) {
        // SAFETY: writes a buffer we own to stderr.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }

    /// Nanoseconds since the first call.
    pub fn now_ns() -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }

    /// Defines a host platform type `$name` for `ctxalloc_kernel` with its own per-CPU contexts
    /// (a context belongs to one allocator), optionally with a static early region of `$bytes`.
    #[macro_export]
    macro_rules! host_platform {
        ($name:ident) => {
            $crate::host_platform!(@define $name, None);
        };
        ($name:ident, region = $bytes:expr) => {
            $crate::host_platform!(@define $name, {
                static mut REGION: [u8; $bytes] = [0; $bytes];
                Some(((&raw mut REGION).cast::<u8>(), $bytes))
            });
        };
        (@define $name:ident, $region:expr) => {
            /// A host platform: threads as CPUs.
            pub struct $name;
            // SAFETY: one context per live host thread (a slot is reused only after its thread
            // has exited, as a CPU runs its next task); the early region,
            // if any, is a static of this platform's own.
            unsafe impl ::ctxalloc_kernel::Platform for $name {
                fn context(&self) -> *const ::ctxalloc_kernel::ThreadCtx {
                    static CTX: ::ctxalloc_kernel::PerCpu<{ $crate::host::CPUS }> =
                        ::ctxalloc_kernel::PerCpu::new();
                    CTX.get($crate::host::cpu_id())
                }
                fn early_region(&self) -> Option<(*mut u8, usize)> {
                    $region
                }
                fn wait(&self, word: &::std::sync::atomic::AtomicU32, expected: u32, _timeout_ns: u64) {
                    if word.load(::std::sync::atomic::Ordering::Acquire) == expected {
                        ::std::thread::yield_now();
                    }
                }
                fn now_ns(&self) -> u64 {
                    $crate::host::now_ns()
                }
                fn report(&self, msg: &str) {
                    $crate::host::report(msg);
                }
                fn relax(&self) {
                    ::std::thread::yield_now();
                }
            }
        };
    }
}

/// The workspace README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// The guide's examples (`docs/guide.md`), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/guide.md")]
struct GuideDoctests;
