//! Reclaim: what an allocation may do when the page source or the memory limit refuses it, and
//! what the background reclaimer does. All of it is decided by the allocation's effective
//! context (R4, R5 of kernel-semantics.md):
//!
//! 1. drain the allocator's own caches (dirty slices, the spare segment, this thread's empty
//!    pages) — always allowed;
//! 2. direct reclaim, unless NORECLAIM or MEMALLOC: shrinkers of the classes the context allows,
//!    with MEMALLOC set on this thread while they run; the others' work is deferred (R4.3);
//! 3. the reserve: a deeper charge for NOFAIL (half) and MEMALLOC (all) — applied by the charge
//!    itself;
//! 4. NOFAIL (and allowed to wait): sleep until memory is given back or a timeout, report a
//!    stall every 10 s, retry for ever;
//! 5. otherwise fail: after one pass for NORETRY, after 16 consecutive rounds without progress
//!    for the rest; at once for a request larger than the limit, or for NOFAIL in a context
//!    that cannot wait.
//!
//! Nothing here runs under an allocator lock: the callers release every lock before asking
//! [`Core::reclaim_step`] what to do, and retry afterwards.

pub(crate) mod background;
pub(crate) mod pressure;
pub(crate) mod registry;
pub(crate) mod shrinker;

use crate::gfp::{Effective, Gfp, ReclaimClass};
use crate::lock::{deferred, CallOuts, Lock};
use crate::report::{report, RateLimit};
use crate::sync::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::panic::Location;
use core::ptr::NonNull;
use pressure::{PressureCounters, PressureState};
use registry::{Chunk, Registry, Slot};
use shrinker::{ScanResult, ShrinkControl, Shrinker};

/// The kernel's `DEF_PRIORITY`: a round starts by scanning `freeable >> 12` objects.
const DEF_PRIORITY: u32 = 12;
/// Rounds without progress before a default request gives up (R5.6).
const MAX_NO_PROGRESS: u32 = 16;
/// Rounds in all before a request that may fail gives up even if shrinkers keep reporting
/// progress (objects they free may never add up to what this allocation needs).
const MAX_ROUNDS: u32 = 64;
/// How often a stalled NOFAIL allocation says so (R5.12's interval).
const STALL_REPORT_NS: u64 = 10_000_000_000;
/// Longest a NOFAIL waiter sleeps before retrying on its own.
const MAX_WAIT_NS: u64 = 100_000_000;
/// Least a direct-reclaim round aims to give back: 32 pages (the kernel's SWAP_CLUSTER_MAX).
const MIN_TARGET: usize = 32 * 4096;

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cause {
    /// Larger than the limit (or than the address space): no amount of reclaim helps.
    TooLarge = 0,
    /// No memory (the limit or the page source refused), and the context allows no direct
    /// reclaim (NORECLAIM, MEMALLOC).
    NoReclaim = 1,
    /// NORETRY: one reclaim pass did not help.
    NoRetry = 2,
    /// 16 reclaim rounds in a row freed nothing (or 64 in all did not make room).
    Exhausted = 3,
    /// NOFAIL in a context that may not wait (NORECLAIM): reported once, not looped on.
    NofailDenied = 4,
}

impl Cause {
    const COUNT: usize = 5;

    fn describe(self) -> &'static str {
        match self {
            Cause::TooLarge => "larger than the memory limit",
            Cause::NoReclaim => "no memory, and the context forbids reclaim",
            Cause::NoRetry => "no memory after one reclaim pass (NORETRY)",
            Cause::Exhausted => "no memory, and reclaim could not make room",
            Cause::NofailDenied => "NOFAIL cannot be honoured in a context that may not wait (NORECLAIM)",
        }
    }
}

/// What an allocation should do after a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Try again.
    Retry,
    /// Give up.
    Fail(Cause),
}

/// The reclaim state of one allocation, kept across its retries.
pub(crate) struct Attempt {
    /// Bytes the refused charge asked for.
    bytes: usize,
    /// The allocator's own caches were drained.
    drained: bool,
    /// Direct-reclaim rounds run.
    rounds: u32,
    /// Consecutive rounds that freed nothing.
    no_progress: u32,
    /// Priority the next round starts at (lower scans more).
    priority: u32,
    /// When a NOFAIL wait began (0: not waiting yet), and the last stall report.
    wait_start: u64,
    last_stall: u64,
    /// Next wait timeout.
    wait_ns: u64,
    /// A NOFAIL wait happened: retries may use the whole reserve.
    waited: bool,
}

impl Attempt {
    /// A fresh attempt for a charge of `bytes`.
    pub(crate) fn new(bytes: usize) -> Attempt {
        Attempt {
            bytes,
            drained: false,
            rounds: 0,
            no_progress: 0,
            priority: DEF_PRIORITY,
            wait_start: 0,
            last_stall: 0,
            wait_ns: 1_000_000,
            waited: false,
        }
    }

    /// The context of the next retry: `eff`, or — for a NOFAIL request that had to wait —
    /// `eff` with the whole reserve.
    #[inline]
    pub(crate) fn context(&self, eff: Effective) -> Effective {
        if self.waited {
            eff.after_wait()
        } else {
            eff
        }
    }
}

/// Reclaim's shared state, in `Core::reclaim`.
pub(crate) struct Reclaim {
    /// Registered shrinkers.
    pub(crate) registry: Registry,
    /// Bumped when memory is given back while someone waits: NOFAIL waiters sleep on it.
    pub(crate) freed_seq: AtomicU32,
    /// NOFAIL waiters now.
    waiters: AtomicUsize,
    /// Bumped to wake the background reclaimer, which sleeps on it.
    bg_seq: AtomicU32,
    /// A wake-up is pending or a background pass runs: no need to wake again.
    /// A free found memory to purge while no background thread ran: the next allocation's
    /// slow path starts one (a free never does). Any thread, AcqRel.
    start_wanted: AtomicBool,
    bg_busy: AtomicBool,
    /// Background passes in a row that lowered no usage. Written by the background pass and by
    /// a waker that finds it idle (Relaxed: a hint for how often to retry).
    bg_idle: AtomicU32,
    /// Statistics.
    pub(crate) direct_rounds: AtomicUsize,
    pub(crate) background_passes: AtomicUsize,
    pub(crate) nofail_waits: AtomicUsize,
    pub(crate) nofail_stalls: AtomicUsize,
    pub(crate) failures: [AtomicUsize; Cause::COUNT],
    /// One report per kind per 10 s.
    stall_reports: RateLimit,
    denied_reports: RateLimit,
    /// Pacing of pressure passes (`pressure`): whoever reports an event, briefly. A leaf lock,
    /// held across `fork`.
    pub(crate) pressure: Lock<PressureState>,
    /// Pressure events and what they gave back. Atomic.
    pub(crate) pressure_counters: PressureCounters,
}

impl Reclaim {
    pub(crate) const fn new() -> Reclaim {
        Reclaim {
            registry: Registry::new(),
            freed_seq: AtomicU32::new(0),
            waiters: AtomicUsize::new(0),
            bg_seq: AtomicU32::new(0),
            start_wanted: AtomicBool::new(false),
            bg_busy: AtomicBool::new(false),
            bg_idle: AtomicU32::new(0),
            direct_rounds: AtomicUsize::new(0),
            background_passes: AtomicUsize::new(0),
            nofail_waits: AtomicUsize::new(0),
            nofail_stalls: AtomicUsize::new(0),
            failures: [const { AtomicUsize::new(0) }; Cause::COUNT],
            stall_reports: RateLimit::new(),
            denied_reports: RateLimit::new(),
            pressure: Lock::held_across_fork("pressure", PressureState::new()),
            pressure_counters: PressureCounters::new(),
        }
    }
}

/// A registered shrinker. Dropping it does *not* unregister (the core has no destructor
/// context); call [`Core::unregister_shrinker`].
#[derive(Clone, Copy)]
pub struct ShrinkerId(pub(crate) NonNull<Slot>);

// SAFETY: an identifier of a registry slot, which lives as long as its core and is only
// touched through the core's registry protocol (atomics).
unsafe impl Send for ShrinkerId {}
// SAFETY: as above; `&ShrinkerId` gives access to nothing.
unsafe impl Sync for ShrinkerId {}

impl core::fmt::Debug for ShrinkerId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ShrinkerId({:p})", self.0)
    }
}

/// The objects a shrinker should scan at `priority` (R4.4), before the batching loop:
/// `delta = (freeable >> priority) · 4 / seeks` (`freeable / 2` if `seeks == 0`).
#[inline]
fn delta(freeable: usize, priority: u32, seeks: u32) -> usize {
    if seeks == 0 {
        freeable / 2
    } else {
        (freeable >> priority).saturating_mul(4) / seeks as usize
    }
}

/// Adds `more` to a deferred count, capped at `cap` (R4.4: at most twice the freeable objects).
fn defer(slot: &Slot, more: usize, cap: usize) {
    let mut cur = slot.deferred.load(Ordering::Relaxed);
    loop {
        let new = cur.saturating_add(more).min(cap);
        match slot.deferred.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(c) => cur = c,
        }
    }
}

/// Background passes in a row that may lower nothing before the pass stops asking for the next
/// (kswapd gives up after `MAX_RECLAIM_RETRIES`, 16, failed passes too).
pub(crate) const BG_RETRIES: u32 = 16;

impl<P: Platform> Core<P> {
    // -------------------------------------------------------------------------------------
    // Shrinker registration
    // -------------------------------------------------------------------------------------

    /// Registers a shrinker. `None` if no memory could be had for the registry.
    ///
    /// # Safety
    /// `shrinker` stays valid until [`unregister_shrinker`](Self::unregister_shrinker) of the
    /// returned id returns; `self` is not dropped while a shrinker is registered on it (the
    /// registry lives in the core's own memory).
    pub unsafe fn register_shrinker(&self, shrinker: NonNull<dyn Shrinker>) -> Option<ShrinkerId> {
        const _: () = assert!(size_of::<Chunk>() <= crate::slab::META_MAX);
        // Registry metadata (permanent, zeroed): charged in the reclaim context, so registering
        // at the limit works.
        let new_chunk = || {
            self.meta_alloc(size_of::<Chunk>(), Effective::new(Gfp::MEMALLOC, Gfp::KERNEL)).map(NonNull::cast)
        };
        // SAFETY: forwarded contract.
        unsafe { self.reclaim.registry.register(shrinker, new_chunk) }
            .map(|slot| ShrinkerId(NonNull::from(slot)))
    }

    /// Unregisters a shrinker, waiting for calls in flight; afterwards it is never called again.
    /// Must not be called from inside that shrinker.
    ///
    /// # Safety
    /// `id` came from [`register_shrinker`](Self::register_shrinker) of a core that is still
    /// alive (normally this one), and was not unregistered before.
    pub unsafe fn unregister_shrinker(&self, id: ShrinkerId) {
        // SAFETY: per the contract, the slot lives in a live core's registry.
        let slot = unsafe { id.0.as_ref() };
        self.reclaim.registry.unregister(slot, |word, v| self.out("wait").wait(word, v, MAX_WAIT_NS));
    }

    // -------------------------------------------------------------------------------------
    // Accounting entry points
    // -------------------------------------------------------------------------------------

    /// Charges `bytes` in context `eff`; wakes background reclaim past the low watermark.
    #[inline]
    pub(crate) fn charge(&self, bytes: usize, eff: Effective) -> bool {
        let ok = self.acct.charge(bytes, eff);
        if ok && self.acct.above_low_watermark() {
            self.wake_background();
        }
        ok
    }

    /// Gives `bytes` back and wakes NOFAIL waiters, if any (once no lock is held).
    #[inline]
    pub(crate) fn uncharge(&self, bytes: usize) {
        self.acct.uncharge(bytes);
        if self.reclaim.waiters.load(Ordering::SeqCst) != 0 {
            self.reclaim.freed_seq.fetch_add(1, Ordering::SeqCst);
            self.call_out(deferred::WAKE_WAITERS);
        }
    }

    /// Does `work` (`lock::deferred` bits) now if the calling thread holds no allocator lock,
    /// else as soon as it releases its last one.
    #[inline]
    pub(crate) fn call_out(&self, work: u8) {
        let t = self.thread();
        t.locks.defer(work);
        if t.locks.may_call_out() {
            self.run_deferred(t);
        }
    }

    // -------------------------------------------------------------------------------------
    // The policy
    // -------------------------------------------------------------------------------------

    /// What an allocation in context `eff` does after its charge was refused (or the page
    /// source failed). Called with no allocator lock held.
    pub(crate) fn reclaim_step(&self, eff: Effective, at: &mut Attempt) -> Step {
        if let Some(limit) = self.acct.limit() {
            if at.bytes > limit {
                return Step::Fail(Cause::TooLarge);
            }
        }
        if eff.nofail_denied() {
            return Step::Fail(Cause::NofailDenied);
        }
        if !at.drained {
            at.drained = true;
            self.drain_own_caches();
            return Step::Retry;
        }
        self.wake_background();
        if eff.may_reclaim() {
            if eff.gfp().contains(Gfp::NORETRY) && at.rounds >= 1 {
                return Step::Fail(Cause::NoRetry);
            }
            let progress = self.direct_reclaim_round(eff, at);
            if progress || !eff.nofail() {
                if !eff.nofail() && (at.no_progress >= MAX_NO_PROGRESS || at.rounds >= MAX_ROUNDS) {
                    return Step::Fail(Cause::Exhausted);
                }
                return Step::Retry;
            }
        }
        if eff.nofail() && eff.may_wait() {
            self.wait_for_memory(eff, at);
            return Step::Retry;
        }
        Step::Fail(if eff.may_reclaim() { Cause::Exhausted } else { Cause::NoReclaim })
    }

    /// Counts a failure and reports it (unless NOWARN; rate-limited); returns null.
    #[cold]
    pub(crate) fn reclaim_failed(&self, size: usize, eff: Effective, cause: Cause) -> *mut u8 {
        self.reclaim.failures[cause as usize].fetch_add(1, Ordering::Relaxed);
        if cause == Cause::NofailDenied {
            // "Reported once", not on every retry of a caller's loop.
            if eff.warn()
                && self.reclaim.denied_reports.allow(self.platform.now_ns(), STALL_REPORT_NS).is_some()
            {
                report(
                    &self.platform,
                    format_args!(
                        "ctxalloc: NOFAIL allocation of {size} bytes in context {} cannot wait for \
                         memory (NORECLAIM): failing instead of looping",
                        eff.gfp()
                    ),
                );
            }
            self.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
            return core::ptr::null_mut();
        }
        self.alloc_failed_because(size, eff, cause.describe())
    }

    /// Gives back what the allocator keeps for speed: the page heap's dirty slices and spare
    /// segment, and this thread's empty pages.
    fn drain_own_caches(&self) {
        self.trim();
    }

    /// One direct-reclaim round: priorities from the attempt's down to 0, stopping at the first
    /// that frees anything (the allocation then retries). Shrinkers run with MEMALLOC set on
    /// this thread. Returns whether anything was freed.
    pub(crate) fn direct_reclaim_round(&self, eff: Effective, at: &mut Attempt) -> bool {
        self.reclaim.direct_rounds.fetch_add(1, Ordering::Relaxed);
        at.rounds += 1;
        let target = at.bytes.max(MIN_TARGET);
        let before = self.acct.usage();
        let mut freed = 0;
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*self.platform.thread() };
        let cookie = t.scope.save(Gfp::MEMALLOC, Location::caller());
        loop {
            freed += self.shrink_all(eff, at.priority, false);
            let given = before.saturating_sub(self.acct.usage());
            if freed > 0 || given >= target || at.priority == 0 {
                break;
            }
            at.priority -= 1;
        }
        t.scope.restore(cookie, |m| self.mispair(m));
        let progress = freed > 0 || self.acct.usage() < before;
        if progress {
            at.no_progress = 0;
        } else {
            at.no_progress += 1;
            at.priority = DEF_PRIORITY;
        }
        progress
    }

    /// Runs every shrinker `eff` allows at `priority` and defers the work of the others; with
    /// `deferred_only`, only the work deferred earlier. Returns objects freed.
    fn shrink_all(&self, eff: Effective, priority: u32, deferred_only: bool) -> usize {
        let mut freed = 0;
        self.reclaim.registry.for_each(
            |w| self.out("wake_all").wake_all(w),
            |slot, s| {
                if deferred_only && slot.deferred.load(Ordering::Relaxed) == 0 {
                    return;
                }
                if eff.may_call(s.class()) {
                    freed += self.shrink_one(slot, s, eff, priority, deferred_only);
                } else {
                    // Not in this context: defer what it would have scanned (R4.3), estimated
                    // from its last count — `count` is not called where the shrinker may not run.
                    slot.skipped.fetch_add(1, Ordering::Relaxed);
                    let freeable = slot.last_freeable.load(Ordering::Relaxed);
                    defer(slot, delta(freeable, priority, s.seeks()), freeable.saturating_mul(2));
                }
            },
        );
        freed
    }

    /// `do_shrink_slab` (R4.1, R4.2, R4.4).
    fn shrink_one(
        &self,
        slot: &Slot,
        s: &dyn Shrinker,
        eff: Effective,
        priority: u32,
        deferred_only: bool,
    ) -> usize {
        // The checker learns which locks the shrinker takes while it runs.
        #[cfg(feature = "lockcheck")]
        let _mark = self.shrinker_mark(s);
        let mut sc = ShrinkControl::new(eff.gfp(), 0);
        let freeable = s.count(&sc);
        slot.last_freeable.store(freeable, Ordering::Relaxed);
        if freeable == 0 {
            return 0;
        }
        let deferred = slot.deferred.swap(0, Ordering::Relaxed);
        let batch = s.batch().max(1);
        let delta = if deferred_only { 0 } else { delta(freeable, priority, s.seeks()) };
        let cap = freeable.saturating_mul(2);
        let mut total = (deferred >> priority).saturating_add(delta).min(cap);
        let (mut scanned, mut freed) = (0usize, 0usize);
        while total >= batch || total >= freeable {
            let n = total.min(batch);
            sc = ShrinkControl::new(eff.gfp(), n);
            slot.calls.fetch_add(1, Ordering::Relaxed);
            match s.scan(&mut sc) {
                ScanResult::Stop => break,
                ScanResult::Freed(k) => freed += k,
            }
            let did = sc.nr_scanned.min(total);
            if did == 0 {
                break;
            }
            total -= did;
            scanned += did;
        }
        slot.freed.fetch_add(freed, Ordering::Relaxed);
        defer(slot, deferred.saturating_add(delta).saturating_sub(scanned), cap);
        freed
    }

    /// Sleeps until memory is given back, background reclaim makes progress, or a timeout (the
    /// caller retries either way); reports a stall every 10 s.
    fn wait_for_memory(&self, eff: Effective, at: &mut Attempt) {
        let now = self.platform.now_ns();
        if at.wait_start == 0 {
            at.wait_start = now;
            at.last_stall = now;
        } else if now.saturating_sub(at.last_stall) >= STALL_REPORT_NS {
            at.last_stall = now;
            self.reclaim.nofail_stalls.fetch_add(1, Ordering::Relaxed);
            if eff.warn() && self.reclaim.stall_reports.allow(now, STALL_REPORT_NS).is_some() {
                report(
                    &self.platform,
                    format_args!(
                        "ctxalloc: NOFAIL allocation of {} bytes in context {} stalled for {} s \
                         ({}); still retrying",
                        at.bytes,
                        eff.gfp(),
                        now.saturating_sub(at.wait_start) / 1_000_000_000,
                        crate::page::UsageOf { usage: self.acct.usage(), limit: self.acct.limit() },
                    ),
                );
            }
        }
        self.reclaim.nofail_waits.fetch_add(1, Ordering::Relaxed);
        self.reclaim.waiters.fetch_add(1, Ordering::SeqCst);
        let seq = self.reclaim.freed_seq.load(Ordering::SeqCst);
        self.out("wait").wait(&self.reclaim.freed_seq, seq, at.wait_ns);
        self.reclaim.waiters.fetch_sub(1, Ordering::SeqCst);
        at.wait_ns = (at.wait_ns * 2).min(MAX_WAIT_NS);
        at.drained = false;
        at.waited = true;
    }

    // -------------------------------------------------------------------------------------
    // Background reclaim
    // -------------------------------------------------------------------------------------

    /// Wakes the background reclaimer (once until it has run); if none runs, the next
    /// allocation's slow path starts one (a charge happens in the middle of an allocation).
    pub(crate) fn wake_background(&self) {
        if self.acct.limit().is_none() || self.reclaim.bg_busy.swap(true, Ordering::AcqRel) {
            return;
        }
        // New demand: the passes it wakes may retry again.
        self.reclaim.bg_idle.store(0, Ordering::Relaxed);
        self.purge_wanted();
    }

    /// Starts or wakes the platform's background thread. Only where an allocation may be made
    /// on this thread as if it were a new call — starting a thread allocates — and never on a
    /// free: at an allocation slow path's entry ([`start_background_if_wanted`]). Under an
    /// allocator lock, once the lock is released.
    ///
    /// [`start_background_if_wanted`]: Self::start_background_if_wanted
    pub(crate) fn wake_background_thread(&self) {
        self.call_out(deferred::WAKE_BACKGROUND);
    }

    /// The background thread has work (memory waits for its purge — found by a free, a trim,
    /// a thread exit —, the heap grew, or a charge passed the low watermark): wakes it if it
    /// runs, else has the next allocation's slow path start it — a free never starts a thread
    /// ([`Platform::background_if_running`]). Under an allocator lock, once it is released.
    pub(crate) fn purge_wanted(&self) {
        self.call_out(deferred::PURGE_WANTED);
    }

    /// What a free that leaves memory to purge asks for, with no lock held: wakes the platform's
    /// background thread if it runs, else has it started by the next allocation's slow path.
    /// Also for an embedder that configured background work (a pressure monitor, a limit to
    /// follow) where starting a thread is not allowed — inside an allocation.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// let core = ctxalloc_core::Core::new(ctxalloc_core::mock::MockPlatform::new(8 << 20));
    /// core.want_background(); // the mock has no thread: nothing happens until one is asked for
    /// assert_eq!(core.stats().background_passes, 0);
    /// # }
    /// ```
    pub fn want_background(&self) {
        if self.out("background_if_running").background_if_running() {
            self.nudge_background();
        } else {
            self.reclaim.start_wanted.store(true, Ordering::Release);
        }
    }

    /// On an allocation's slow path (no lock held): starts the background thread a free asked
    /// for. One load when nothing was asked.
    #[inline]
    pub(crate) fn start_background_if_wanted(&self) {
        if self.reclaim.start_wanted.load(Ordering::Relaxed)
            && self.reclaim.start_wanted.swap(false, Ordering::AcqRel)
        {
            self.wake_background_thread();
        }
    }

    /// Wakes a sleeping background thread, if one runs (none is started): its work changed.
    pub(crate) fn nudge_background(&self) {
        self.reclaim.bg_seq.fetch_add(1, Ordering::SeqCst);
        self.out("wake_all").wake_all(&self.reclaim.bg_seq);
    }

    /// [`wake_background_thread`](Self::wake_background_thread), with no lock held.
    pub(crate) fn wake_background_now(&self) {
        self.out("background_wanted").background_wanted();
        self.nudge_background();
    }

    /// Whether a background thread that exits when idle should stay although it has nothing to
    /// do now: the heap holds more than the purge slack (16 MiB), so frees to come could leave that much
    /// memory waiting for its purge — and a free never starts the thread (see
    /// [`Platform::background_if_running`](crate::Platform::background_if_running)): a program
    /// that frees its memory and then goes quiet would keep it resident for good.
    pub fn background_should_stay(&self) -> bool {
        self.acct.usage() > crate::slab::PURGE_SLACK
    }

    /// Whether the background thread has work: reclaim was asked for, or freed memory waits
    /// for its purge. A platform whose background thread exits when idle (the std one) checks
    /// this *after* announcing the exit: whoever set up work before that announcement is seen
    /// here, whoever set it up after sees the thread gone and starts another.
    pub fn background_pending(&self) -> bool {
        if self.reclaim.bg_busy.load(Ordering::SeqCst) {
            return true;
        }
        let areas = self.lock(&self.vmap).clock.armed();
        let heaps = self.lock(&self.heaps).clock.armed();
        areas || heaps || self.lock(&self.pages).clock.armed()
    }

    /// Sleeps until background reclaim is wanted, or `timeout_ns`; returns whether it is
    /// wanted. For the platform's background thread.
    pub fn background_wait(&self, timeout_ns: u64) -> bool {
        let seq = self.reclaim.bg_seq.load(Ordering::SeqCst);
        if !self.reclaim.bg_busy.load(Ordering::SeqCst) {
            self.out("wait").wait(&self.reclaim.bg_seq, seq, timeout_ns);
        }
        self.reclaim.bg_busy.load(Ordering::SeqCst)
    }

    /// One background pass, in a clean context (every shrinker class): the work deferred by
    /// constrained contexts, then — if usage is above the high watermark — the allocator's own
    /// caches and one sweep of priorities that stops at the first that frees anything. Returns
    /// objects freed. For the platform's background thread (`kswapd`).
    ///
    /// One sweep per pass, not "free until below the watermark": objects freed inside slab pages
    /// make room for new allocations without lowering usage, so chasing usage would empty whole
    /// caches. Each charge of fresh memory above the low watermark wakes the pass again, so
    /// background reclaim keeps pace with the demand for new pages. Charges made during a pass
    /// find it busy and wake nothing, so a pass that leaves usage above the high watermark asks
    /// for the next itself — as kswapd balances until its watermark is met — until 16 passes
    /// in a row lowered nothing (a shrinker that found its lock taken
    /// returns `Stop`: the next pass may do better). Before, a fill that ended during such a
    /// pass left usage above the low watermark for good (`background_reclaim_brings_usage_down`
    /// saw it about once in 60 runs).
    pub fn background_reclaim(&self) -> usize {
        self.reclaim.bg_busy.store(true, Ordering::SeqCst);
        self.reclaim.background_passes.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*self.platform.thread() };
        let clean = Effective::new(Gfp::KERNEL, Gfp::KERNEL);
        let old = t.scope.replace(Gfp::MEMALLOC);
        let start = self.acct.usage();
        let mut freed = self.shrink_all(clean, 0, true);
        if self.acct.above_high_watermark() {
            self.pages_trim();
            let before = self.acct.usage();
            for priority in (0..=DEF_PRIORITY).rev() {
                freed += self.shrink_all(clean, priority, false);
                if freed > 0 || self.acct.usage() < before || !self.acct.above_high_watermark() {
                    break;
                }
            }
        }
        t.scope.replace(old);
        // Still above the high watermark, and not yet BG_RETRIES passes in a row without
        // progress: another pass (`background_wait` returns at once while `bg_busy` is set).
        let idle =
            if self.acct.usage() < start { 0 } else { self.reclaim.bg_idle.load(Ordering::Relaxed) + 1 };
        self.reclaim.bg_idle.store(idle, Ordering::Relaxed);
        let again = idle < BG_RETRIES && self.acct.above_high_watermark();
        self.reclaim.bg_busy.store(again, Ordering::SeqCst);
        freed
    }

    /// Direct reclaim on request, in a clean context: shrink until `bytes` were given back or
    /// nothing more can be freed (cgroup v2's `memory.reclaim`). Returns the bytes given back.
    pub fn reclaim(&self, bytes: usize) -> usize {
        let before = self.acct.usage();
        let eff = Effective::new(Gfp::KERNEL, Gfp::KERNEL);
        let mut at = Attempt::new(bytes);
        self.drain_own_caches();
        while before.saturating_sub(self.acct.usage()) < bytes && at.rounds < MAX_ROUNDS {
            if !self.direct_reclaim_round(eff, &mut at) {
                break;
            }
        }
        before.saturating_sub(self.acct.usage())
    }

    /// Calls `f` with the name and statistics of every registered shrinker.
    pub fn for_each_shrinker(&self, mut f: impl FnMut(&str, ReclaimClass, ShrinkerStats)) {
        self.reclaim.registry.for_each(
            |w| self.out("wake_all").wake_all(w),
            |slot, s| {
                f(
                    s.name(),
                    s.class(),
                    ShrinkerStats {
                        calls: slot.calls.load(Ordering::Relaxed),
                        freed: slot.freed.load(Ordering::Relaxed),
                        skipped: slot.skipped.load(Ordering::Relaxed),
                        deferred: slot.deferred.load(Ordering::Relaxed),
                    },
                )
            },
        );
    }
}

/// Statistics of one shrinker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShrinkerStats {
    /// `scan` calls.
    pub calls: usize,
    /// Objects freed.
    pub freed: usize,
    /// Times it was passed over because the context forbade it.
    pub skipped: usize,
    /// Objects of scanning deferred now.
    pub deferred: usize,
}
