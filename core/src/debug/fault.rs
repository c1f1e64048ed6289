//! Scoped fault injection (R8.1): the kernel's `failslab`/`fail_page_alloc` attributes —
//! probability, interval, times, space, `fail-nth` — but per thread and per guard, so only the
//! code under test fails.
//!
//! A failure is decided once per allocation (NOFAIL requests are never failed) and then behaves
//! as memory that could not be had: one direct-reclaim pass over the shrinkers the context
//! allows, then null (reported unless NOWARN), so callers' fallbacks — a mempool's reserve,
//! kvmalloc's vmap attempt, a cache that recycles — run as they would under real pressure.

use crate::gfp::Effective;
use crate::reclaim::Attempt;
use crate::sync::Ordering;
use crate::{Core, Platform};
use core::cell::Cell;

/// What to fail. The fields follow the kernel's fault-injection attributes
/// (`Documentation/fault-injection/fault-injection.rst`).
///
/// ```
/// use ctxalloc_core::FaultConfig;
/// let half = FaultConfig { probability: 50, seed: 7, ..FaultConfig::DEFAULT };
/// assert_eq!(half.interval, 1);
/// let third_call = FaultConfig { fail_nth: 3, ..FaultConfig::DEFAULT };
/// assert_eq!(third_call.times, None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultConfig {
    /// Percent of eligible allocations to fail, 0–100.
    pub probability: u32,
    /// Only every `interval`-th eligible allocation may fail (1: any).
    pub interval: u32,
    /// Fail at most this many times (`None`: no limit).
    pub times: Option<u64>,
    /// Let this many bytes of eligible allocations succeed before failures begin.
    pub space: usize,
    /// If non-zero, fail exactly the `fail_nth`-th eligible allocation and nothing else
    /// (`/proc/<pid>/task/<tid>/fail-nth`); the other fields are ignored.
    pub fail_nth: u64,
    /// Allocations smaller than this are not eligible.
    pub min_size: usize,
    /// Seed of the generator behind `probability`: the same seed fails the same allocations.
    pub seed: u64,
    /// Report every injected failure (rate-limited reports otherwise, as for real failures).
    pub verbose: bool,
}

impl FaultConfig {
    /// Every eligible allocation fails, without limit.
    pub const DEFAULT: FaultConfig = FaultConfig {
        probability: 100,
        interval: 1,
        times: None,
        space: 0,
        fail_nth: 0,
        min_size: 0,
        seed: 0x853c_49e6_748f_ea9b,
        verbose: false,
    };
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A thread's fault-injection state. Touched only by its thread.
pub(crate) struct FaultState {
    config: Cell<FaultConfig>,
    /// Generator state (xorshift64*); never zero.
    rng: Cell<u64>,
    /// Eligible allocations seen since the guard began.
    calls: Cell<u64>,
    /// Failures injected since the guard began.
    failed: Cell<u64>,
    /// What is left of `space`.
    space: Cell<usize>,
}

/// A thread's fault-injection state as a guard saves it, to put back when it ends.
#[derive(Clone, Copy, Debug)]
pub struct FaultSaved {
    config: FaultConfig,
    rng: u64,
    calls: u64,
    failed: u64,
    space: usize,
    armed: bool,
}

impl FaultState {
    pub(crate) const fn new() -> FaultState {
        FaultState {
            config: Cell::new(FaultConfig::DEFAULT),
            rng: Cell::new(1),
            calls: Cell::new(0),
            failed: Cell::new(0),
            space: Cell::new(0),
        }
    }

    fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Whether to fail this allocation (the kernel's `should_fail_ex`, per thread).
    pub(crate) fn should_fail(&self, size: usize, eff: Effective) -> bool {
        let c = self.config.get();
        if eff.nofail() || size < c.min_size {
            return false;
        }
        let calls = self.calls.get() + 1;
        self.calls.set(calls);
        let fail = if c.fail_nth != 0 {
            calls == c.fail_nth
        } else if c.times.is_some_and(|t| self.failed.get() >= t) {
            false
        } else if self.space.get() > size {
            self.space.set(self.space.get() - size);
            false
        } else if c.interval > 1 && !calls.is_multiple_of(u64::from(c.interval)) {
            false
        } else {
            c.probability >= 100 || self.next_random() % 100 < u64::from(c.probability)
        };
        if fail {
            self.failed.set(self.failed.get() + 1);
        }
        fail
    }
}

impl<P: Platform> Core<P> {
    /// Starts failing the calling thread's allocations as `config` says; returns what to hand to
    /// [`fault_restore`](Self::fault_restore) when the guarded code ends. Guards nest: the inner
    /// one replaces the outer until restored.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, FaultConfig, Gfp};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let l = Layout::new::<u64>();
    /// let saved = core.fault_inject(FaultConfig { fail_nth: 2, ..FaultConfig::DEFAULT });
    /// let a = core.alloc_with(l, Gfp::NOWARN);
    /// let b = core.alloc_with(l, Gfp::NOWARN); // the second: fails
    /// let c = core.alloc_with(l, Gfp::NOFAIL); // NOFAIL is never failed
    /// assert_eq!(core.fault_injected(), 1);
    /// core.fault_restore(saved);
    /// assert!(a.is_ok() && b.is_err() && c.is_ok());
    /// unsafe { core.dealloc(a.unwrap().as_ptr(), l); core.dealloc(c.unwrap().as_ptr(), l) };
    /// # }
    /// ```
    pub fn fault_inject(&self, config: FaultConfig) -> FaultSaved {
        let t = self.thread();
        let f = &t.debug.fault;
        let saved = FaultSaved {
            config: f.config.get(),
            rng: f.rng.get(),
            calls: f.calls.get(),
            failed: f.failed.get(),
            space: f.space.get(),
            armed: t.scope.armed() & super::ARM_FAULT != 0,
        };
        f.config.set(config);
        // Spread the seed (xorshift needs a non-zero state; nearby seeds must differ).
        let x = config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xd1b5_4a32_d192_ed03;
        f.rng.set(if x == 0 { 1 } else { x });
        f.calls.set(0);
        f.failed.set(0);
        f.space.set(config.space);
        t.scope.set_armed(super::ARM_FAULT, true);
        saved
    }

    /// Ends the calling thread's innermost fault-injection guard.
    pub fn fault_restore(&self, saved: FaultSaved) {
        let t = self.thread();
        let f = &t.debug.fault;
        f.config.set(saved.config);
        f.rng.set(saved.rng);
        f.calls.set(saved.calls);
        f.failed.set(saved.failed);
        f.space.set(saved.space);
        t.scope.set_armed(super::ARM_FAULT, saved.armed);
    }

    /// Failures injected on the calling thread since its innermost guard began.
    pub fn fault_injected(&self) -> u64 {
        self.thread().debug.fault.failed.get()
    }

    /// Eligible allocations the calling thread made since its innermost guard began.
    pub fn fault_calls(&self) -> u64 {
        self.thread().debug.fault.calls.get()
    }

    /// An injected failure: the reclaim pass a refused allocation in `eff` would get, then null.
    #[cold]
    pub(super) fn inject_failure(&self, size: usize, eff: Effective) -> *mut u8 {
        self.debug.injected.fetch_add(1, Ordering::Relaxed);
        if eff.may_reclaim() {
            self.direct_reclaim_round(eff, &mut Attempt::new(size));
        }
        let verbose = self.thread().debug.fault.config.get().verbose;
        if verbose && eff.warn() {
            crate::report::report(
                &self.platform,
                format_args!(
                    "ctxalloc: fault injection: failing an allocation of {size} bytes in context {}",
                    eff.gfp()
                ),
            );
            self.report_backtrace("  at");
            self.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
            return core::ptr::null_mut();
        }
        self.alloc_failed_because(size, eff, "injected by fault::inject")
    }
}
