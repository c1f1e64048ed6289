//! Reclaim on pressure from outside: the machine (or the container) is short of memory although
//! the allocator is within its own limit — the kernel's PSI trigger fired, or the embedder's
//! own signal did. The kernel cannot ask a process to shrink its caches; this is how a process
//! answers when it is told.
//!
//! One event is one *pressure pass*, in a clean context (every shrinker class, MEMALLOC set on
//! the calling thread as for any reclaimer): the work that constrained contexts deferred, one
//! proportional scan of every shrinker, then the allocator's own caches (cached large areas,
//! the physical pages of free slices) given back at once instead of after the purge delay.
//!
//! The scan is proportional, as the kernel's shrinkers scan (R4.4): a shrinker holding
//! `freeable` objects is asked to scan `(freeable >> priority) · 4 / seeks` of them. A first
//! event scans at [`PressurePolicy::start_priority`] (5: 1/16 of each cache for the default
//! two seeks); each event that follows the last pass within [`PressurePolicy::streak_ns`]
//! scans one priority deeper, down to [`PressurePolicy::min_priority`] (2: half of each cache);
//! a quiet streak starts over. So a short spike costs a few percent of the caches, while a
//! machine under constant pressure gets them back over a few events instead of losing all of
//! them to the first. Events closer together than [`PressurePolicy::min_interval_ns`] are
//! counted and skipped: a source that fires in a burst costs one pass.

use super::Effective;
use crate::gfp::Gfp;
use crate::sync::{AtomicU32, AtomicUsize, Ordering};
use crate::{Core, Platform};

/// How pressure passes are paced. `Default` is what the std shim uses.
///
/// A pass ([`Core::pressure_event`]) runs every shrinker in a clean context, each scanning
/// `(freeable >> priority) · 4 / seeks` objects plus its share of deferred work, then gives
/// the allocator's own free memory back at once. A streak's first pass scans at
/// `start_priority`, each following event within `streak_ns` one priority deeper, down to
/// `min_priority`; events within `min_interval_ns` of the last pass are skipped.
///
/// ```
/// let p = ctxalloc_core::PressurePolicy::default();
/// assert!(p.min_priority <= p.start_priority);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PressurePolicy {
    /// Events closer than this to the last pass are counted and skipped.
    pub min_interval_ns: u64,
    /// An event within this of the last pass continues its streak (one priority deeper).
    pub streak_ns: u64,
    /// The priority of a streak's first pass: each shrinker scans `freeable >> start_priority`
    /// (· 4 / seeks) objects.
    pub start_priority: u32,
    /// The deepest priority a streak reaches.
    pub min_priority: u32,
}

impl PressurePolicy {
    /// 250 ms between passes at least; a streak ends after 10 s without an event; priorities
    /// 5 (1/16 of each cache) down to 3 (a quarter).
    pub const DEFAULT: PressurePolicy = PressurePolicy {
        min_interval_ns: 250_000_000,
        streak_ns: 10_000_000_000,
        start_priority: 5,
        min_priority: 3,
    };
}

impl Default for PressurePolicy {
    fn default() -> Self {
        PressurePolicy::DEFAULT
    }
}

/// What one pressure event did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PressureOutcome {
    /// Whether a pass ran (`false`: rate-limited).
    pub ran: bool,
    /// The priority it scanned at.
    pub priority: u32,
    /// Objects the shrinkers freed.
    pub freed: usize,
    /// Bytes given back to the page source: how much usage went down during the pass (net of
    /// what other threads allocated meanwhile).
    pub given: usize,
}

/// The pacing state, under `Reclaim::pressure`: any thread that reports an event, briefly (no
/// call out under it).
pub(crate) struct PressureState {
    /// When the last pass started; `None` before the first.
    last_ns: Option<u64>,
    /// The priority of the last pass.
    priority: u32,
}

impl PressureState {
    pub(crate) const fn new() -> PressureState {
        PressureState { last_ns: None, priority: 0 }
    }

    /// The priority for a pass at `now`, or `None` if it is too soon after the last; records
    /// the pass.
    fn next(&mut self, now: u64, p: &PressurePolicy) -> Option<u32> {
        let start = p.start_priority.max(p.min_priority);
        let priority = match self.last_ns {
            Some(last) if now.saturating_sub(last) < p.min_interval_ns => return None,
            Some(last) if now.saturating_sub(last) <= p.streak_ns => {
                self.priority.saturating_sub(1).max(p.min_priority).min(start)
            }
            _ => start,
        };
        self.last_ns = Some(now);
        self.priority = priority;
        Some(priority)
    }
}

/// Counters of pressure events. Any thread, Relaxed (`seq`: SeqCst, waited on).
pub(crate) struct PressureCounters {
    pub(crate) events: AtomicUsize,
    pub(crate) passes: AtomicUsize,
    pub(crate) freed: AtomicUsize,
    pub(crate) given: AtomicUsize,
    /// Bumped after every event has been handled (pass or skip); [`Core::pressure_wait`]
    /// sleeps on it.
    pub(crate) seq: AtomicU32,
}

impl PressureCounters {
    pub(crate) const fn new() -> PressureCounters {
        PressureCounters {
            events: AtomicUsize::new(0),
            passes: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
            given: AtomicUsize::new(0),
            seq: AtomicU32::new(0),
        }
    }
}

impl<P: Platform> Core<P> {
    /// Answers one memory-pressure event from outside (a PSI trigger, a container's signal):
    /// unless rate-limited by `policy`, runs a pressure pass (see [`PressurePolicy`]) — even
    /// below the limit, and with no limit at all. Call it with no
    /// allocator lock held, on a thread whose own scope does not matter (it is replaced for the
    /// pass): the std shim's pressure monitor thread.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, PressurePolicy};
    /// let core = Core::new(MockPlatform::new(8 << 20));
    /// let p = PressurePolicy { min_interval_ns: 0, ..PressurePolicy::default() };
    /// let first = core.pressure_event(&p);
    /// assert!(first.ran);
    /// assert_eq!(first.priority, p.start_priority);
    /// assert_eq!(core.pressure_event(&p).priority, p.start_priority - 1); // the streak goes on
    /// assert_eq!(core.stats().pressure_events, 2);
    /// # }
    /// ```
    pub fn pressure_event(&self, policy: &PressurePolicy) -> PressureOutcome {
        self.entry("pressure_event");
        let c = &self.reclaim.pressure_counters;
        c.events.fetch_add(1, Ordering::Relaxed);
        let now = self.platform.now_ns();
        let priority = self.lock(&self.reclaim.pressure).next(now, policy);
        let outcome = match priority {
            None => PressureOutcome::default(),
            Some(priority) => self.pressure_pass(priority),
        };
        if outcome.ran {
            c.passes.fetch_add(1, Ordering::Relaxed);
            c.freed.fetch_add(outcome.freed, Ordering::Relaxed);
            c.given.fetch_add(outcome.given, Ordering::Relaxed);
        }
        c.seq.fetch_add(1, Ordering::SeqCst);
        self.out("wake_all").wake_all(&c.seq);
        outcome
    }

    /// The pass: the proportional scan at `priority`, the own caches given back.
    fn pressure_pass(&self, priority: u32) -> PressureOutcome {
        let usage = self.acct.usage();
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*self.platform.thread() };
        let clean = Effective::new(Gfp::KERNEL, Gfp::KERNEL);
        let old = t.scope.replace(Gfp::MEMALLOC);
        // Deferred work is scanned at the pass's priority too (`deferred >> priority`): all of
        // it at once would undo the proportion.
        let freed = self.shrink_all(clean, priority, false);
        t.scope.replace(old);
        // What the shrinkers freed and the free memory the allocator kept, given back now.
        self.trim();
        let given = usage.saturating_sub(self.acct.usage());
        PressureOutcome { ran: true, priority, freed, given }
    }

    /// Sleeps until more than `seen` pressure events have been handled, or `timeout_ns`;
    /// returns the number handled so far (compare it with `seen`). For whoever fires a pressure
    /// source and wants to know the allocator has answered (tests, demonstrations).
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, PressurePolicy};
    /// let core = Core::new(MockPlatform::new(8 << 20));
    /// let seen = core.pressure_handled();
    /// core.pressure_event(&PressurePolicy::default());
    /// assert_eq!(core.pressure_wait(seen, 0), seen + 1);
    /// # }
    /// ```
    pub fn pressure_wait(&self, seen: u32, timeout_ns: u64) -> u32 {
        let seq = &self.reclaim.pressure_counters.seq;
        let now = seq.load(Ordering::SeqCst);
        if now == seen && timeout_ns > 0 {
            self.out("wait").wait(seq, seen, timeout_ns);
        }
        seq.load(Ordering::SeqCst)
    }

    /// Pressure events handled so far (wraps): the `seen` of [`pressure_wait`](Self::pressure_wait).
    pub fn pressure_handled(&self) -> u32 {
        self.reclaim.pressure_counters.seq.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::{PressurePolicy, PressureState};

    #[test]
    fn a_streak_deepens_to_the_floor_and_a_quiet_spell_starts_over() {
        let p = PressurePolicy { min_interval_ns: 10, streak_ns: 100, start_priority: 4, min_priority: 2 };
        let mut s = PressureState::new();
        assert_eq!(s.next(1_000, &p), Some(4));
        assert_eq!(s.next(1_005, &p), None, "inside the minimum interval");
        assert_eq!(s.next(1_050, &p), Some(3));
        assert_eq!(s.next(1_100, &p), Some(2));
        assert_eq!(s.next(1_150, &p), Some(2), "never below the floor");
        assert_eq!(s.next(1_251, &p), Some(4), "after a quiet spell the streak starts over");
    }

    #[test]
    fn a_floor_above_the_start_is_the_start() {
        let p = PressurePolicy { min_interval_ns: 0, streak_ns: 100, start_priority: 1, min_priority: 3 };
        let mut s = PressureState::new();
        assert_eq!(s.next(0, &p), Some(3));
        assert_eq!(s.next(1, &p), Some(3));
    }
}
