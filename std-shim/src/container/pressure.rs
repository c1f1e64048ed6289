//! Reclaim on the kernel's memory-pressure signal, and the monitor thread that waits for it.
//!
//! When the machine or the container is short of memory, the kernel reclaims its own caches
//! but cannot ask a process to shrink its caches. Pressure stall information (PSI) says when
//! tasks stall waiting for memory; a *trigger* on `memory.pressure` (the cgroup's own, under
//! cgroup v2) or on `/proc/pressure/memory` wakes a `poll` when stalls pass a threshold within
//! a window. The monitor thread (`ctxalloc-watch`) waits on it and answers each event with a
//! pressure pass ([`ctxalloc_core::PressurePolicy`]): the shrinkers scanned in proportion, in a
//! clean context, and free memory given back — even below the allocator's own limit, with no
//! limit at all.
//!
//! `CTXALLOC_PRESSURE`:
//! * unset or `auto`: watch with the default trigger ([`Trigger::DEFAULT`]) once there is
//!   something to give back on request — a shrinker registered, or a limit that follows the
//!   cgroup;
//! * `on`: watch with the default trigger from the start;
//! * `some:150ms/2s`, `full:500ms/5s`: that trigger, from the start (the kernel's rules: a
//!   window of 500 ms – 10 s, a threshold above 0 and not above the window; an unprivileged
//!   process may only use whole multiples of 2 s as its window);
//! * `off`: never.
//!
//! Where the trigger cannot be registered (no PSI in the kernel, `psi=0`, a window the kernel
//! refuses), one line says why and the rest works. With `CTXALLOC_BACKGROUND=off` the monitor
//! thread runs only when [`watch`] or [`watch_fd`] asks for it (a limit from the cgroup is then
//! read once and not followed).
//!
//! The monitor thread also re-reads a limit that follows the cgroup every
//! [`REREAD_SECONDS`]. It exits when it has nothing left to watch; unlike the background
//! reclaimer it does not exit when idle — waiting is its work —, so a program whose last
//! thread ends with `pthread_exit` (not by returning from `main` or calling `exit`) and that
//! watches pressure should set `CTXALLOC_PRESSURE=off`.

// Errors carry their path by value: they are built inside the allocator's first allocation,
// where nothing may be boxed.
#![allow(clippy::result_large_err)]

use super::cgroup::Cgroups;
use super::fs::{Fd, StackPath};
use crate::platform::StdPlatform;
use crate::CORE;
use ctxalloc_core::Platform;
use ctxalloc_core::{BackgroundThread, PressurePolicy};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

/// How often a limit that follows the cgroup is read again.
pub const REREAD_SECONDS: u64 = 5;

/// Which stall a trigger measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// Some task stalled on memory (the kernel's `some`).
    Some,
    /// Every non-idle task stalled at once (`full`).
    Full,
}

/// A PSI trigger: fire when tasks stalled on memory for `threshold` within a `window`.
///
/// ```
/// use ctxalloc::pressure::{Stall, Trigger};
/// use std::time::Duration;
/// let t = Trigger::parse(b"full:500ms/5s").unwrap();
/// assert_eq!(t, Trigger { stall: Stall::Full, threshold: Duration::from_millis(500), window: Duration::from_secs(5) });
/// assert!(Trigger::parse(b"some:3s/1s").is_err()); // the threshold is longer than the window
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// `some` or `full`.
    pub stall: Stall,
    /// Stall time within the window that fires the trigger.
    pub threshold: Duration,
    /// The window (500 ms – 10 s).
    pub window: Duration,
}

/// What a malformed trigger specification should have been; `Display` is one line
/// ("expected …").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerError(pub(crate) &'static str);

impl fmt::Display for TriggerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected {}", self.0)
    }
}

impl std::error::Error for TriggerError {}

impl Trigger {
    /// 150 ms of `some` stall in a 2 s window (a window an unprivileged process may use).
    pub const DEFAULT: Trigger =
        Trigger { stall: Stall::Some, threshold: Duration::from_millis(150), window: Duration::from_secs(2) };

    /// `some:150ms/2s` or `full:…`: durations with a unit (`us`, `ms`, `s`).
    pub fn parse(v: &[u8]) -> Result<Trigger, TriggerError> {
        const FORM: TriggerError = TriggerError(
            "some:THRESHOLD/WINDOW or full:THRESHOLD/WINDOW (as some:150ms/2s), on, auto or off",
        );
        let v = v.trim_ascii();
        let colon = v.iter().position(|&b| b == b':').ok_or(FORM)?;
        let (kind, rest) = (&v[..colon], &v[colon + 1..]);
        let stall = if kind.eq_ignore_ascii_case(b"some") {
            Stall::Some
        } else if kind.eq_ignore_ascii_case(b"full") {
            Stall::Full
        } else {
            return Err(FORM);
        };
        let slash = rest.iter().position(|&b| b == b'/').ok_or(FORM)?;
        let threshold = crate::env::parse_duration_ns(&rest[..slash]).map_err(|()| FORM)?;
        let window = crate::env::parse_duration_ns(&rest[slash + 1..]).map_err(|()| FORM)?;
        if !(500_000_000..=10_000_000_000).contains(&window) {
            return Err(TriggerError("a window of 500ms to 10s"));
        }
        if threshold == 0 || threshold > window {
            return Err(TriggerError("a threshold above 0 and not above the window"));
        }
        Ok(Trigger {
            stall,
            threshold: Duration::from_nanos(threshold),
            window: Duration::from_nanos(window),
        })
    }

    /// What is written to the pressure file: `some 150000 2000000`, NUL-terminated.
    fn spec(&self, out: &mut [u8; 64]) -> usize {
        let mut b = ctxalloc_core::report::ReportBuf::new();
        let kind = match self.stall {
            Stall::Some => "some",
            Stall::Full => "full",
        };
        let _ = fmt::Write::write_fmt(
            &mut b,
            format_args!("{kind} {} {}", self.threshold.as_micros(), self.window.as_micros()),
        );
        let n = b.as_str().len().min(63);
        out[..n].copy_from_slice(&b.as_str().as_bytes()[..n]);
        out[n] = 0;
        n + 1
    }

    /// One word for [`TRIGGER`]: the stall kind in bit 63, the threshold's µs in bits 32–62,
    /// the window's in bits 0–31 (both ≤ 10 s, checked by `parse`).
    fn encode(&self) -> u64 {
        let us = |d: Duration| (d.as_micros() as u64) & 0x7fff_ffff;
        (u64::from(self.stall == Stall::Full) << 63) | (us(self.threshold) << 32) | us(self.window)
    }
}

/// What the monitor thread watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watching {
    /// No trigger (pressure not watched, or not yet: the monitor registers it shortly after it
    /// is wanted).
    Nothing,
    /// A trigger registered on this file.
    Trigger {
        /// `memory.pressure` of the cgroup, or `/proc/pressure/memory`.
        file: String,
    },
    /// The kernel refused the trigger (reported once on stderr).
    Refused {
        /// The file it was refused on.
        file: String,
        /// Why.
        why: &'static str,
    },
}

impl fmt::Display for Watching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Watching::Nothing => f.write_str("no trigger"),
            Watching::Trigger { file } => write!(f, "a trigger on {file}"),
            Watching::Refused { file, why } => write!(f, "no trigger: refused on {file}: {why}"),
        }
    }
}

/// What the monitor thread watches now.
///
/// ```
/// use ctxalloc::pressure::{status, Watching};
/// match status() {
///     Watching::Trigger { file } => println!("reclaim on pressure from {file}"),
///     Watching::Refused { file, why } => println!("no trigger on {file}: {why}"),
///     Watching::Nothing => println!("pressure not watched"),
/// }
/// ```
pub fn status() -> Watching {
    let v = STATUS.load(Ordering::Acquire);
    let file = || Cgroups::system().pressure_file().to_string();
    match v & 0xff {
        STATUS_TRIGGER => Watching::Trigger { file: file() },
        STATUS_REFUSED => {
            Watching::Refused { file: file(), why: WHY[usize::from(v >> 8).min(WHY.len() - 1)] }
        }
        _ => Watching::Nothing,
    }
}

/// The monitor's state for [`status`]: the kind in the low byte, an index into [`WHY`] above
/// it (the file is the configuration's, read again by `status`). Monitor thread writes
/// (Release); anyone reads. An atomic, not a lock: a `fork` can never leave it held.
static STATUS: AtomicU16 = AtomicU16::new(0);
const STATUS_TRIGGER: u16 = 1;
const STATUS_REFUSED: u16 = 2;

/// Why the kernel refused a trigger; `open_trigger` answers an index.
const WHY: [&str; 7] = [
    "the file is missing (a kernel without PSI, or booted with psi=0)",
    "it cannot be opened for writing",
    "the kernel refuses this trigger to an unprivileged process (use a window that is a multiple of 2s)",
    "the kernel refuses this trigger (threshold or window out of range)",
    "PSI is disabled in this kernel (psi=0)",
    "the kernel refused the trigger",
    "the trigger's cgroup is gone",
];
const WHY_GONE: u8 = 6;

fn set_status(kind: u16, why: u8) {
    STATUS.store(kind | (u16::from(why) << 8), Ordering::Release);
}

/// Registers `trigger` on the cgroup's own `memory.pressure` (cgroup v2) or else on
/// `/proc/pressure/memory`; returns the descriptor to `poll` for `POLLPRI` and the file used.
pub(crate) fn open_trigger(trigger: &Trigger) -> Result<(Fd, StackPath), (StackPath, u8)> {
    let path = Cgroups::system().pressure_file();
    let fd = match Fd::open(&path, libc::O_RDWR | libc::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(super::fs::ReadError::Missing) => return Err((path, 0)),
        Err(_) => return Err((path, 1)),
    };
    let mut spec = [0u8; 64];
    let n = trigger.spec(&mut spec);
    // SAFETY: writes `n` bytes of a live buffer to our own descriptor.
    let w = unsafe { libc::write(fd.0, spec.as_ptr().cast(), n) };
    if w < 0 {
        let why = match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => 2,
            Some(libc::EINVAL) => 3,
            Some(libc::EOPNOTSUPP) => 4,
            _ => 5,
        };
        return Err((path, why));
    }
    Ok((fd, path))
}

// -----------------------------------------------------------------------------------------
// The monitor's configuration, written by any thread, read by the monitor thread (which a
// write to `CONTROL` wakes). SeqCst throughout: a configuration set before `MONITOR.want()`
// must be seen by a monitor deciding to exit (the `BackgroundThread` protocol), and none of
// this is on a fast path.
// -----------------------------------------------------------------------------------------

/// `CTXALLOC_PRESSURE`: 0 auto, 1 on, 2 off.
static MODE: AtomicU8 = AtomicU8::new(MODE_AUTO);
const MODE_AUTO: u8 = 0;
const MODE_ON: u8 = 1;
const MODE_OFF: u8 = 2;
/// The trigger to register (`Trigger::encode`; 0: the default).
static TRIGGER: AtomicU64 = AtomicU64::new(0);
/// In auto mode: something can be given back on request (a shrinker, a cgroup limit).
static WANTED: AtomicBool = AtomicBool::new(false);
/// A descriptor whose readability is a pressure event (tests, embedders with their own
/// signal); -1 for none. Any thread writes; the monitor reads (SeqCst, against `CONTROL`).
static SOURCE_FD: AtomicI32 = AtomicI32::new(-1);

/// Whether the monitor thread runs (the same hand-over as the background reclaimer's).
static MONITOR: BackgroundThread = BackgroundThread::new();
/// The monitors' wake-up eventfd (-1 before the first monitor made one). Made once per process
/// and never closed while the process may poke it (a poke must never write into a descriptor
/// number reused for a file): only `fork_child` closes the child's copy (the child then makes
/// its own, so parent and child never drain each other's wakes). The monitor writes it;
/// anyone reads it and writes to the eventfd. SeqCst, against `SOURCE_FD` (see `unwatch_fd`).
static CONTROL: AtomicI32 = AtomicI32::new(-1);
/// The running monitor's trigger descriptor (-1: none), for `fork_child` to close.
static TRIGGER_FD: AtomicI32 = AtomicI32::new(-1);

fn decode(v: u64) -> Trigger {
    if v == 0 {
        return Trigger::DEFAULT;
    }
    let stall = if v >> 63 != 0 { Stall::Full } else { Stall::Some };
    Trigger {
        stall,
        threshold: Duration::from_micros((v >> 32) & 0x7fff_ffff),
        window: Duration::from_micros(v & 0xffff_ffff),
    }
}

/// The trigger the monitor should hold now, if any.
fn wanted_trigger() -> Option<Trigger> {
    match MODE.load(Ordering::SeqCst) {
        MODE_ON => Some(decode(TRIGGER.load(Ordering::SeqCst))),
        MODE_AUTO if WANTED.load(Ordering::SeqCst) || super::cgroup::is_following() => Some(Trigger::DEFAULT),
        _ => None,
    }
}

/// Whether the monitor has anything to do.
fn pending() -> bool {
    wanted_trigger().is_some() || SOURCE_FD.load(Ordering::SeqCst) >= 0 || super::cgroup::is_following()
}

/// Starts the monitor thread if it has something to do and none runs (unless
/// `CTXALLOC_BACKGROUND=off`); else wakes it to look at its configuration again. From a slow
/// path with no allocator lock held, or from the API.
pub(crate) fn start_if_wanted() {
    if !crate::platform::background_off() {
        start();
    }
}

/// [`start_if_wanted`], also under `CTXALLOC_BACKGROUND=off`: for an explicit [`watch`] or
/// [`watch_fd`].
fn start() {
    if !pending() {
        return;
    }
    if MONITOR.want() {
        if !crate::platform::spawn(monitor_main) {
            MONITOR.forget();
        }
    } else {
        poke();
    }
}

/// Wakes the monitor to read its configuration again.
fn poke() {
    let fd = CONTROL.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd, which stays open (`CONTROL`).
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// A shrinker was registered: in auto mode, pressure is now worth watching.
pub(crate) fn shrinker_registered() {
    if !WANTED.swap(true, Ordering::SeqCst) {
        start_if_wanted();
    }
}

/// `CTXALLOC_PRESSURE`, at the first allocation (nothing allocates or starts here).
pub(crate) fn from_environment(v: &[u8]) -> Result<(), TriggerError> {
    let t = v.trim_ascii();
    if t.eq_ignore_ascii_case(b"auto") {
        MODE.store(MODE_AUTO, Ordering::SeqCst);
    } else if t.eq_ignore_ascii_case(b"off") {
        MODE.store(MODE_OFF, Ordering::SeqCst);
    } else {
        if !t.eq_ignore_ascii_case(b"on") {
            TRIGGER.store(Trigger::parse(t)?.encode(), Ordering::SeqCst);
        }
        MODE.store(MODE_ON, Ordering::SeqCst);
        // The monitor starts from the next allocation's slow path.
        CORE.want_background();
    }
    Ok(())
}

/// Watches the kernel's memory pressure with `trigger` (`None`: [`Trigger::DEFAULT`]) from
/// now on, whatever `CTXALLOC_PRESSURE` said; the monitor thread reports in one line if the
/// kernel refuses the trigger.
///
/// ```
/// ctxalloc::pressure::watch(None);
/// ctxalloc::pressure::unwatch();
/// ```
pub fn watch(trigger: Option<Trigger>) {
    TRIGGER.store(trigger.map_or(0, |t| t.encode()), Ordering::SeqCst);
    MODE.store(MODE_ON, Ordering::SeqCst);
    start();
}

/// Stops watching the kernel's memory pressure (as `CTXALLOC_PRESSURE=off`).
pub fn unwatch() {
    MODE.store(MODE_OFF, Ordering::SeqCst);
    poke();
}

/// Treats every read of `fd` that returns data as a pressure event — an embedder's own
/// signal, or a test's pipe or eventfd —, until it reaches end of file or an error. The
/// descriptor stays the caller's: keep it open while it is watched (`unwatch_fd` first).
/// One at a time: a second call replaces the first.
///
/// ```
/// let mut fds = [0; 2];
/// // SAFETY: a pipe for the example.
/// assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
/// let seen = ctxalloc::pressure::handled();
/// ctxalloc::pressure::watch_fd(fds[0]);
/// // SAFETY: one byte from a live buffer.
/// unsafe { libc::write(fds[1], b"!".as_ptr().cast(), 1) };
/// assert!(ctxalloc::pressure::wait(seen, std::time::Duration::from_secs(60)) != seen);
/// ctxalloc::pressure::unwatch_fd();
/// # unsafe { libc::close(fds[0]); libc::close(fds[1]); }
/// ```
pub fn watch_fd(fd: std::os::fd::RawFd) {
    SOURCE_FD.store(fd, Ordering::SeqCst);
    start();
    poke();
}

/// Stops watching the descriptor given to [`watch_fd`]; returns once the monitor no longer
/// polls it (or at once if no monitor runs).
pub fn unwatch_fd() {
    SOURCE_FD.store(-1, Ordering::SeqCst);
    if !MONITOR.runs() {
        return;
    }
    // The monitor polls the source it read last; if it read it before the store above, it had
    // published `CONTROL` before that read, and the poke below (which reads `CONTROL` after the
    // store, all SeqCst) wakes it.
    // A round that ends after the store was read starts the next, which reads the store.
    let seen = ROUNDS.load(Ordering::SeqCst);
    poke();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ROUNDS.load(Ordering::SeqCst) == seen && MONITOR.runs() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        StdPlatform.wait(&ROUNDS, seen, left.as_nanos() as u64);
    }
}

/// Poll rounds the monitor has finished (wraps), which `unwatch_fd` waits on. Monitor thread
/// increments and wakes; SeqCst. An atomic and a futex, not a lock: a `fork` can never leave
/// it held.
static ROUNDS: AtomicU32 = AtomicU32::new(0);

/// The end of a monitor round (or of the monitor): wakes `unwatch_fd`.
fn round_done() {
    ROUNDS.fetch_add(1, Ordering::SeqCst);
    StdPlatform.wake_all(&ROUNDS);
}

/// Pressure events answered so far (wraps); the `seen` of [`wait`].
pub fn handled() -> u32 {
    CORE.pressure_handled()
}

/// Waits until more events than `seen` were answered, or `timeout`; returns the count now.
pub fn wait(seen: u32, timeout: Duration) -> u32 {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let now = CORE.pressure_wait(seen, left.as_nanos().min(u128::from(u64::MAX)) as u64);
        if now != seen || left.is_zero() {
            return now;
        }
    }
}

/// What a pass is paced by.
const POLICY: PressurePolicy = PressurePolicy::DEFAULT;

/// Forgets the monitor in a child of `fork` (it did not survive); closes the child's copies of
/// the descriptors only it used, and forgets the source descriptor (a child watches one only
/// if it says so). The next background start in the child starts a new monitor.
pub(crate) fn forget_after_fork() {
    SOURCE_FD.store(-1, Ordering::SeqCst);
    for fd in [CONTROL.swap(-1, Ordering::SeqCst), TRIGGER_FD.swap(-1, Ordering::SeqCst)] {
        if fd >= 0 {
            // SAFETY: the child's copies of descriptors only the dead monitor used.
            unsafe { libc::close(fd) };
        }
    }
    MONITOR.forget();
}

/// The monitor thread: polls its eventfd, the trigger and the test source; answers events,
/// re-reads the cgroup limit; exits when it has nothing left to watch.
extern "C" fn monitor_main(_: *mut libc::c_void) -> *mut libc::c_void {
    #[cfg(target_os = "linux")]
    // SAFETY: names the calling thread; a NUL-terminated literal under 16 bytes.
    unsafe {
        libc::pthread_setname_np(libc::pthread_self(), c"ctxalloc-watch".as_ptr());
    }
    let mut ctl = CONTROL.load(Ordering::SeqCst);
    if ctl < 0 {
        // SAFETY: creates a descriptor; no pointers.
        ctl = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        CONTROL.store(ctl, Ordering::SeqCst);
    }
    let mut trigger: Option<(Fd, Trigger)> = None;
    // The trigger last refused (reported once until the configuration changes).
    let mut refused: Option<Trigger> = None;
    let mut next_reread = std::time::Instant::now() + Duration::from_secs(REREAD_SECONDS);
    loop {
        let want = wanted_trigger();
        if trigger.as_ref().map(|t| t.1) != want {
            if let Some((fd, _)) = trigger.take() {
                TRIGGER_FD.store(-1, Ordering::SeqCst);
                drop(fd);
                set_status(0, 0);
            }
            if let Some(t) = want.filter(|t| refused != Some(*t)) {
                match open_trigger(&t) {
                    Ok((fd, _)) => {
                        set_status(STATUS_TRIGGER, 0);
                        TRIGGER_FD.store(fd.0, Ordering::SeqCst);
                        trigger = Some((fd, t));
                        refused = None;
                    }
                    Err((path, why)) => {
                        set_status(STATUS_REFUSED, why);
                        let why = WHY[usize::from(why)];
                        refused = Some(t);
                        crate::platform::report(format_args!(
                            "ctxalloc: no reclaim on memory pressure: cannot register a trigger on {path}: {why}\n"
                        ));
                    }
                }
            }
        }
        let source = SOURCE_FD.load(Ordering::SeqCst);
        if !pending() {
            // Nothing wanted: leave, unless something arrived meanwhile. (A trigger the kernel
            // refused is still wanted: the thread then waits for a change of configuration.)
            if MONITOR.may_exit(pending) {
                set_status(0, 0);
                round_done();
                return std::ptr::null_mut();
            }
            continue;
        }
        let mut fds = [
            libc::pollfd { fd: ctl, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: trigger.as_ref().map_or(-1, |t| t.0 .0), events: libc::POLLPRI, revents: 0 },
            libc::pollfd { fd: source, events: libc::POLLIN, revents: 0 },
        ];
        let timeout = if super::cgroup::is_following() {
            next_reread.saturating_duration_since(std::time::Instant::now()).as_millis().min(i32::MAX as u128)
                as i32
        } else {
            -1
        };
        // SAFETY: three live pollfd entries (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout) };
        if n > 0 {
            if fds[0].revents & libc::POLLIN != 0 {
                let mut v = 0u64;
                // SAFETY: reads 8 bytes into a live u64 from our eventfd.
                unsafe { libc::read(ctl, (&mut v as *mut u64).cast(), 8) };
            }
            if fds[1].revents & libc::POLLERR != 0 {
                crate::platform::report(format_args!(
                    "ctxalloc: the memory-pressure trigger's cgroup is gone; no longer watching\n"
                ));
                TRIGGER_FD.store(-1, Ordering::SeqCst);
                set_status(STATUS_REFUSED, WHY_GONE);
                refused = trigger.take().map(|t| t.1);
            } else if fds[1].revents & libc::POLLPRI != 0 {
                CORE.pressure_event(&POLICY);
            }
            if fds[2].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                let mut buf = [0u8; 64];
                // SAFETY: reads into a live buffer from the caller's descriptor.
                let r = unsafe { libc::read(source, buf.as_mut_ptr().cast(), buf.len()) };
                let again = r < 0
                    && matches!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EAGAIN | libc::EINTR)
                    );
                if r > 0 {
                    CORE.pressure_event(&POLICY);
                } else if !again || fds[2].revents & libc::POLLNVAL != 0 {
                    // End of file, an error, or no descriptor: stop watching it (polling it
                    // again would only return at once).
                    let _ = SOURCE_FD.compare_exchange(source, -1, Ordering::SeqCst, Ordering::SeqCst);
                }
            }
        }
        // `unwatch_fd` waits for a round to end: the next reads the source afresh.
        round_done();
        if super::cgroup::is_following() && std::time::Instant::now() >= next_reread {
            super::cgroup::reread();
            next_reread = std::time::Instant::now() + Duration::from_secs(REREAD_SECONDS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse_strictly_and_round_trip() {
        for t in [
            Trigger::DEFAULT,
            Trigger::parse(b"full:500ms/5s").unwrap(),
            Trigger::parse(b"SOME:1s/10s").unwrap(),
        ] {
            assert_eq!(decode(t.encode()), t);
        }
        for bad in [
            &b"some"[..],
            b"some:150ms",
            b"half:1s/2s",
            b"some:0ms/1s",
            b"some:1s/100ms",
            b"some:1/2s",
            b"some:1s/11s",
        ] {
            assert!(Trigger::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut spec = [0u8; 64];
        let n = Trigger::DEFAULT.spec(&mut spec);
        assert_eq!(&spec[..n], b"some 150000 2000000\0");
    }

    /// The real registration, where the kernel allows it; otherwise says why it did not run.
    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn the_kernel_takes_the_default_trigger_where_it_allows_one() {
        match open_trigger(&Trigger::DEFAULT) {
            Ok((fd, path)) => {
                let mut p = libc::pollfd { fd: fd.0, events: libc::POLLPRI, revents: 0 };
                // SAFETY: one live pollfd.
                let n = unsafe { libc::poll(&mut p, 1, 0) };
                assert!(n >= 0 && p.revents & (libc::POLLERR | libc::POLLNVAL) == 0, "{n} {:#x}", p.revents);
                println!("trigger registered on {path}");
            }
            Err((path, why)) => println!("not run: no trigger on {path}: {}", WHY[usize::from(why)]),
        }
    }

    /// This machine's `/proc/pressure/memory`, if it has one, reads as PSI says it should.
    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn this_machine_reports_memory_pressure_in_the_psi_format() {
        let Ok(text) = std::fs::read_to_string("/proc/pressure/memory") else {
            println!("not run: no /proc/pressure/memory");
            return;
        };
        let kinds: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
        assert_eq!(kinds, ["some", "full"], "{text}");
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').skip(1).collect();
            let keys: Vec<&str> = fields.iter().map(|f| f.split('=').next().unwrap()).collect();
            assert_eq!(keys, ["avg10", "avg60", "avg300", "total"], "{line}");
            let _total: u64 = fields[3]["total=".len()..].parse().expect("total is whole microseconds");
            let avg10: f64 = fields[0]["avg10=".len()..].parse().expect("avg10 is a percentage");
            assert!((0.0..=100.0).contains(&avg10), "{line}");
        }
    }
}
