//! Reclaim over the mock platform: the limit and its reserve, shrinkers filtered by context,
//! deferred work, NOFAIL, NORETRY/MAYFAIL, background reclaim (checklist items 6–16 of
//! kernel-semantics.md). Blocks are vmap-sized (128 KiB), so every free gives back exactly its
//! bytes and the figures are exact.

use super::*;
use crate::{Cause, ReclaimClass, ScanResult, ShrinkControl, Shrinker, ShrinkerStats};
use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use std::boxed::Box;
use std::sync::Mutex;

pub(super) const BLOCK: usize = 128 << 10;

pub(super) fn block() -> Layout {
    Layout::from_size_align(BLOCK, 8).unwrap()
}

/// Objects that live for the rest of the test binary, kept reachable from a static so that
/// leak checkers (miri's included) do not report them.
static KEPT: Mutex<Vec<&'static (dyn core::any::Any + Send + Sync)>> = Mutex::new(Vec::new());

/// Leaks `value` and keeps it reachable from `KEPT`.
pub(super) fn keep<T: Send + Sync + 'static>(value: T) -> &'static T {
    let kept: &'static T = Box::leak(Box::new(value));
    KEPT.lock().unwrap().push(kept);
    kept
}

/// A core that lives for the rest of the test binary (shrinkers need a `'static` core).
pub(super) fn leaked_core(mib: usize, limit_mib: usize) -> &'static Core<MockPlatform> {
    let core = keep(Core::new(MockPlatform::new(mib << 20)));
    core.set_limit(limit_mib << 20).expect("a workable limit");
    core
}

/// A cache of blocks allocated from the core; its shrinker frees them.
pub(super) struct Cache {
    core: &'static Core<MockPlatform>,
    name: &'static str,
    class: ReclaimClass,
    blocks: Mutex<Vec<usize>>,
    /// `count` calls, `scan` calls, and `nr_to_scan` of each scan.
    counts: AtomicUsize,
    scans: Mutex<Vec<usize>>,
    /// The context word of the reclaiming thread, and `sc.gfp`, at each scan.
    pub(super) contexts: Mutex<Vec<(Gfp, Gfp)>>,
    /// Scans in progress (to catch recursion).
    depth: AtomicUsize,
    max_depth: AtomicUsize,
    /// Allocate a block inside `scan` (a shrinker needing memory to free memory).
    allocate_in_scan: bool,
    /// Return `Stop` from every scan.
    stop: bool,
}

impl Cache {
    pub(super) fn new(core: &'static Core<MockPlatform>, name: &'static str, class: ReclaimClass) -> Cache {
        Cache {
            core,
            name,
            class,
            blocks: Mutex::new(Vec::new()),
            counts: AtomicUsize::new(0),
            scans: Mutex::new(Vec::new()),
            contexts: Mutex::new(Vec::new()),
            depth: AtomicUsize::new(0),
            max_depth: AtomicUsize::new(0),
            allocate_in_scan: false,
            stop: false,
        }
    }

    /// Registers the cache (leaked: it outlives the test's core).
    pub(super) fn register(self) -> &'static Cache {
        let c: &'static Cache = keep(self);
        // SAFETY: the cache is never freed.
        unsafe { c.core.register_shrinker(NonNull::from(c as &dyn Shrinker)) }.expect("registered");
        c
    }

    /// Allocates `n` blocks into the cache (plain context).
    pub(super) fn fill(&self, n: usize) {
        for _ in 0..n {
            let p = self.core.alloc_with(block(), Gfp::NOWARN).expect("filling the cache");
            self.blocks.lock().unwrap().push(p.as_ptr().addr());
        }
    }

    pub(super) fn scans(&self) -> usize {
        self.scans.lock().unwrap().len()
    }

    pub(super) fn stats(&self) -> ShrinkerStats {
        let mut out = ShrinkerStats::default();
        self.core.for_each_shrinker(|name, _, s| {
            if name == self.name {
                out = s;
            }
        });
        out
    }
}

impl Shrinker for Cache {
    fn name(&self) -> &str {
        self.name
    }
    fn class(&self) -> ReclaimClass {
        self.class
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.counts.fetch_add(1, Ordering::Relaxed);
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let d = self.depth.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_depth.fetch_max(d, Ordering::SeqCst);
        self.scans.lock().unwrap().push(sc.nr_to_scan);
        self.contexts.lock().unwrap().push((self.core.current(), sc.gfp));
        let result = if self.stop {
            ScanResult::Stop
        } else {
            if self.allocate_in_scan {
                // Needs memory to free memory: must neither recurse nor fail at the limit.
                let p = self.core.alloc_with(Layout::from_size_align(4096, 8).unwrap(), Gfp::KERNEL);
                assert!(p.is_ok(), "a shrinker's allocation may use the reserve");
                // SAFETY: just allocated.
                unsafe { self.core.dealloc(p.unwrap().as_ptr(), Layout::from_size_align(4096, 8).unwrap()) };
            }
            let mut freed = 0;
            for _ in 0..sc.nr_to_scan {
                let Some(a) = self.blocks.lock().unwrap().pop() else { break };
                // SAFETY: a live block of `block()`.
                unsafe { self.core.dealloc(self.core.platform().ptr_from_addr(a), block()) };
                freed += 1;
            }
            ScanResult::Freed(freed)
        };
        self.depth.fetch_sub(1, Ordering::SeqCst);
        result
    }
    fn batch(&self) -> usize {
        8
    }
}

/// Allocates plain blocks until the limit refuses; returns them.
pub(super) fn fill_to_limit(core: &Core<MockPlatform>) -> Vec<usize> {
    let mut v = Vec::new();
    while let Ok(p) = core.alloc_with(block(), Gfp::NOWARN | Gfp::NORECLAIM) {
        v.push(p.as_ptr().addr());
    }
    v
}

pub(super) fn free_blocks(core: &Core<MockPlatform>, v: Vec<usize>) {
    for a in v {
        // SAFETY: live blocks of `block()`.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), block()) };
    }
}

#[test]
fn each_context_stops_at_its_ceiling() {
    let core = leaked_core(64, 32);
    let limit = 32 << 20;
    let reserve = crate::emergency_reserve(limit);
    let plain = fill_to_limit(core);
    let u = core.usage();
    assert!(u <= limit - reserve && u + 2 * BLOCK > limit - reserve, "plain stops at limit − reserve: {u}");

    // NOMEMALLOC beats a MEMALLOC scope: no reserve.
    let c = core.scope_save(Gfp::MEMALLOC, Location::caller());
    assert!(core.alloc_with(block(), Gfp::NOMEMALLOC | Gfp::NOWARN).is_err());
    core.scope_restore(c);

    // NOFAIL may use half the reserve.
    let nofail = core.alloc_with(block(), Gfp::NOFAIL).expect("NOFAIL dips into the reserve");
    let u = core.usage();
    assert!(u > limit - reserve && u <= limit - reserve / 2, "{u}");

    // MEMALLOC may use all of it, and no more.
    let c = core.scope_save(Gfp::MEMALLOC, Location::caller());
    let deep = fill_to_limit(core);
    core.scope_restore(c);
    assert!(!deep.is_empty());
    let u = core.usage();
    assert!(u <= limit && u + 2 * BLOCK > limit, "MEMALLOC stops at the limit: {u}");
    let s = core.stats();
    assert!(s.reserve_uses >= 2, "{s}");
    assert!(s.peak <= limit, "usage never exceeds the limit: {s}");

    free_blocks(core, plain);
    free_blocks(core, deep);
    // SAFETY: live block.
    unsafe { core.dealloc(nofail.as_ptr(), block()) };
}

#[test]
fn nofs_never_reaches_an_fs_shrinker_even_when_it_is_the_only_way() {
    let core = leaked_core(64, 16);
    let fs = Cache::new(core, "fs-cache", ReclaimClass::Fs).register();
    let io = Cache::new(core, "io-cache", ReclaimClass::Io).register();
    fs.fill(100);
    io.fill(2);
    let rest = fill_to_limit(core);

    let c = core.scope_save(Gfp::NOFS, Location::caller());
    let counts = fs.counts.load(Ordering::Relaxed);
    let r = core.alloc_with(block(), Gfp::NOWARN);
    core.scope_restore(c);
    assert_eq!(fs.scans(), 0, "an FS shrinker was scanned under NOFS");
    assert_eq!(fs.counts.load(Ordering::Relaxed), counts, "an FS shrinker was counted under NOFS");
    assert!(io.scans() > 0, "the IO shrinker may run under NOFS");
    assert!(fs.stats().skipped > 0);
    // The IO cache held two blocks: with them gone the allocation succeeds or fails, but the FS
    // cache is untouched either way.
    assert_eq!(fs.blocks.lock().unwrap().len(), 100);
    if let Ok(p) = r {
        // SAFETY: live block.
        unsafe { core.dealloc(p.as_ptr(), block()) };
    }
    // Now NOIO: neither FS nor IO shrinkers, even with the IO cache refilled.
    io.fill(1);
    let more = fill_to_limit(core);
    let io_scans = io.scans();
    let c = core.scope_save(Gfp::NOIO, Location::caller());
    let r = core.alloc_with(block(), Gfp::NOWARN);
    core.scope_restore(c);
    assert!(r.is_err(), "nothing else could free memory");
    assert_eq!(fs.scans(), 0);
    assert_eq!(io.scans(), io_scans, "an IO shrinker was scanned under NOIO");
    assert!(core.stats().failures(Cause::Exhausted) >= 1);
    free_blocks(core, rest);
    free_blocks(core, more);
}

#[test]
fn deferred_work_is_done_by_the_next_unconstrained_reclaim() {
    let core = leaked_core(64, 16);
    let fs = Cache::new(core, "deferring", ReclaimClass::Fs).register();
    fs.fill(60);
    // An unconstrained reclaim counts the cache (and may scan a little).
    core.reclaim(BLOCK);
    let freeable = fs.blocks.lock().unwrap().len();
    let rest = fill_to_limit(core);
    let scans = fs.scans();
    // Pressure under NOFS: the cache may not be scanned, its work is deferred, capped.
    let c = core.scope_save(Gfp::NOFS, Location::caller());
    assert!(core.alloc_with(block(), Gfp::NOWARN).is_err());
    core.scope_restore(c);
    assert_eq!(fs.scans(), scans);
    let deferred = fs.stats().deferred;
    assert!(deferred > 0, "skipped work was deferred");
    // Capped at twice what the last count saw (60 blocks).
    assert!(deferred <= 2 * 60, "deferred {deferred} capped at 2 × 60");
    // The next reclaim in a clean context (here the background pass) does it.
    core.background_reclaim();
    assert!(fs.scans() > scans, "the deferred work ran");
    assert!(fs.stats().deferred < deferred, "{:?}", fs.stats());
    assert!(fs.blocks.lock().unwrap().len() < freeable, "the deferred scan freed blocks");
    free_blocks(core, rest);
}

#[test]
fn counting_zero_means_no_scan_and_scans_come_in_batches() {
    let core = leaked_core(64, 16);
    let empty = Cache::new(core, "empty", ReclaimClass::Other).register();
    let full = Cache::new(core, "batched", ReclaimClass::Other).register();
    full.fill(40);
    core.reclaim(64 << 20);
    assert!(empty.counts.load(Ordering::Relaxed) > 0);
    assert_eq!(empty.scans(), 0, "count 0 means no scan");
    let scans = full.scans.lock().unwrap().clone();
    assert!(!scans.is_empty());
    assert!(scans.iter().all(|&n| n <= full.batch()), "nr_to_scan ≤ batch: {scans:?}");
    assert!(full.blocks.lock().unwrap().is_empty(), "a reclaim that needs everything gets it");
}

#[test]
fn stop_ends_a_shrinker_for_the_pass() {
    let core = leaked_core(64, 16);
    let mut c = Cache::new(core, "stopper", ReclaimClass::Other);
    c.stop = true;
    let c = c.register();
    c.fill(50);
    let rounds = core.stats().reclaim_rounds;
    core.reclaim(BLOCK);
    let rounds = (core.stats().reclaim_rounds - rounds) as usize;
    // A round visits at most 13 priorities; `Stop` ends the shrinker's part of each, however much
    // it could scan (50 objects, batches of 8: six or more scans a priority without it).
    assert!(rounds >= 1);
    assert!(c.scans() <= 13 * rounds, "{} scans in {rounds} rounds", c.scans());
    assert_eq!(c.blocks.lock().unwrap().len(), 50);
}

#[test]
fn a_shrinkers_own_allocation_neither_recurses_nor_fails() {
    let core = leaked_core(64, 16);
    let mut c = Cache::new(core, "allocating", ReclaimClass::Other);
    c.allocate_in_scan = true;
    let c = c.register();
    c.fill(10);
    let rest = fill_to_limit(core);
    // This allocation must reclaim; the shrinker allocates while the core is at the limit.
    let p = core.alloc_with(block(), Gfp::NOWARN).expect("reclaim made room");
    assert!(c.scans() > 0);
    assert_eq!(c.max_depth.load(Ordering::SeqCst), 1, "reclaim recursed into the shrinker");
    for (word, gfp) in c.contexts.lock().unwrap().iter() {
        assert!(word.contains(Gfp::MEMALLOC), "shrinkers run with MEMALLOC set: {word}");
        assert!(!gfp.contains(Gfp::MEMALLOC), "sc.gfp is the allocation's context: {gfp}");
    }
    assert_eq!(core.current(), Gfp::KERNEL, "MEMALLOC was cleared after reclaim");
    // SAFETY: live block.
    unsafe { core.dealloc(p.as_ptr(), block()) };
    free_blocks(core, rest);
}

#[test]
fn noreclaim_and_memalloc_call_no_shrinker() {
    let core = leaked_core(64, 16);
    let c = Cache::new(core, "untouchable", ReclaimClass::Other).register();
    c.fill(20);
    let rest = fill_to_limit(core);
    for scope in [Gfp::NORECLAIM, Gfp::MEMALLOC] {
        let k = core.scope_save(scope, Location::caller());
        let r = core.alloc_with(block(), Gfp::NOWARN | Gfp::NOMEMALLOC);
        core.scope_restore(k);
        assert!(r.is_err());
    }
    assert_eq!(c.scans(), 0);
    assert!(core.stats().failures(Cause::NoReclaim) >= 2);
    assert!(core.platform().background_wakeups() > 0, "background reclaim was woken instead");
    free_blocks(core, rest);
}

#[test]
fn nofail_waits_until_another_thread_frees() {
    let core = leaked_core(64, 16);
    let held = fill_to_limit(core);
    let c = core.scope_save(Gfp::NOFAIL, Location::caller());
    let nofail_in_reserve = core.alloc_with(block(), Gfp::KERNEL).unwrap(); // takes the reserve
    let mut extra = Vec::new();
    // Use up the NOFAIL share of the reserve.
    while core.stats().usage + BLOCK <= (16 << 20) - crate::emergency_reserve(16 << 20) / 2 {
        extra.push(core.alloc_with(block(), Gfp::KERNEL).unwrap().as_ptr().addr());
    }
    thread::scope(|s| {
        s.spawn(|| {
            // Free once the NOFAIL allocation below is waiting — a condition, not a sleep.
            while core.stats().nofail_waits == 0 {
                thread::yield_now();
            }
            free_blocks(core, held);
        });
        let p = core.alloc_with(block(), Gfp::KERNEL).expect("NOFAIL never fails when memory comes back");
        // SAFETY: live block.
        unsafe { core.dealloc(p.as_ptr(), block()) };
    });
    core.scope_restore(c);
    assert!(core.stats().nofail_waits > 0);
    // SAFETY: live blocks.
    unsafe { core.dealloc(nofail_in_reserve.as_ptr(), block()) };
    free_blocks(core, extra);
}

#[test]
fn nofail_that_may_not_wait_fails_once_without_looping() {
    let core = leaked_core(64, 16);
    let rest = fill_to_limit(core);
    let k = core.scope_save(Gfp::NORECLAIM, Location::caller());
    let rounds = core.stats().reclaim_rounds;
    let r = core.alloc_with(block(), Gfp::NOFAIL);
    core.scope_restore(k);
    assert!(r.is_err());
    let s = core.stats();
    assert_eq!(s.failures(Cause::NofailDenied), 1, "{s}");
    assert_eq!(s.reclaim_rounds, rounds, "no reclaim loop");
    assert!(core.platform().reports().iter().any(|m| m.contains("cannot wait")));
    free_blocks(core, rest);
}

#[test]
fn mayfail_and_noretry_override_a_nofail_scope() {
    let core = leaked_core(64, 16);
    // A shrinker that always claims progress but frees nothing useful.
    struct Liar;
    impl Shrinker for Liar {
        fn class(&self) -> ReclaimClass {
            ReclaimClass::Other
        }
        fn count(&self, _: &ShrinkControl) -> usize {
            1000
        }
        fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
            ScanResult::Freed(sc.nr_to_scan)
        }
    }
    static LIAR: Liar = Liar;
    // SAFETY: a static shrinker.
    unsafe { core.register_shrinker(NonNull::from(&LIAR as &dyn Shrinker)) }.unwrap();
    let rest = fill_to_limit(core);
    let k = core.scope_save(Gfp::NOFAIL, Location::caller());
    // Take the NOFAIL share of the reserve so that the next NOFAIL request would wait.
    let mut share = Vec::new();
    while let Ok(p) = core.alloc_with(block(), Gfp::NORECLAIM | Gfp::NOWARN | Gfp::MAYFAIL) {
        share.push(p.as_ptr().addr());
    }
    let rounds = core.stats().reclaim_rounds;
    assert!(core.alloc_with(block(), Gfp::NORETRY | Gfp::NOWARN).is_err());
    assert_eq!(core.stats().reclaim_rounds - rounds, 1, "NORETRY: one reclaim round");
    assert!(core.alloc_with(block(), Gfp::MAYFAIL | Gfp::NOWARN).is_err(), "MAYFAIL fails");
    core.scope_restore(k);
    assert!(core.stats().failures(Cause::NoRetry) == 1);
    free_blocks(core, rest);
    free_blocks(core, share);
}

#[test]
fn a_request_larger_than_the_limit_fails_at_once_even_nofail() {
    let core = leaked_core(64, 8);
    let rounds = core.stats().reclaim_rounds;
    let r = core.alloc_with(Layout::from_size_align(16 << 20, 8).unwrap(), Gfp::NOFAIL);
    assert!(r.is_err());
    let s = core.stats();
    assert_eq!(s.failures(Cause::TooLarge), 1);
    assert_eq!(s.reclaim_rounds, rounds);
    assert!(core.platform().reports().iter().any(|m| m.contains("larger than the memory limit")));
}

#[test]
fn usage_never_exceeds_the_limit_under_four_threads_with_shrinkers() {
    let core = leaked_core(96, 24);
    let caches: Vec<&'static Cache> =
        [("t-fs", ReclaimClass::Fs), ("t-io", ReclaimClass::Io), ("t-other", ReclaimClass::Other)]
            .into_iter()
            .map(|(n, c)| Cache::new(core, n, c).register())
            .collect();
    let ops = if MIRI { 40 } else { 3000 };
    thread::scope(|s| {
        for t in 0..4u64 {
            let caches = &caches;
            s.spawn(move || {
                let mut rng = Rng(t + 11);
                let mut mine = Vec::new();
                for _ in 0..ops {
                    let scope = [Gfp::KERNEL, Gfp::NOFS, Gfp::NOIO, Gfp::NOFAIL][rng.below(4) as usize];
                    let k = core.scope_save(scope, Location::caller());
                    let size = [64usize, 4000, 30_000, BLOCK][rng.below(4) as usize];
                    let l = Layout::from_size_align(size, 8).unwrap();
                    if let Ok(p) = core.alloc_with(l, Gfp::NOWARN) {
                        if rng.below(3) == 0 && size == BLOCK {
                            caches[rng.below(3) as usize].blocks.lock().unwrap().push(p.as_ptr().addr());
                        } else {
                            mine.push((p.as_ptr().addr(), l));
                        }
                    }
                    core.scope_restore(k);
                    assert!(core.usage() <= 24 << 20, "usage {} over the limit", core.usage());
                    if mine.len() > 40 {
                        let (a, l) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                        // SAFETY: a live block of `l`.
                        unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
                    }
                }
                for (a, l) in mine {
                    // SAFETY: live blocks.
                    unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
                }
                core.thread_exit();
            });
        }
    });
    let s = core.stats();
    assert!(s.peak <= 24 << 20, "{s}");
}

#[test]
fn at_the_limit_a_small_request_takes_a_free_block_of_a_larger_class() {
    // 4 KiB blocks: a few thousand fill the limit (miri interprets each).
    let core = leaked_core(64, 8);
    let (big, small) =
        (Layout::from_size_align(4096, 16).unwrap(), Layout::from_size_align(3000, 8).unwrap());
    let mut blocks = Vec::new();
    while let Ok(p) = core.alloc_with(big, Gfp::NORECLAIM | Gfp::NOWARN) {
        blocks.push(p.as_ptr().addr());
    }
    // Every other block back: its pages keep free slots, none empties.
    let kept: Vec<usize> = blocks.iter().copied().step_by(2).collect();
    for a in blocks.iter().copied().skip(1).step_by(2) {
        // SAFETY: a live block of `big`.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), big) };
    }
    let usage = core.usage();
    let n = if MIRI { 4 } else { 32 };
    let got: Vec<_> = (0..n).map(|_| core.alloc_with(small, Gfp::NORECLAIM | Gfp::NOWARN).unwrap()).collect();
    assert_eq!(core.usage(), usage, "no new memory: the free 4 KiB slots served");
    assert!(got.iter().all(|p| core.ksize(p.as_ptr()) == 4096));
    assert_eq!(core.stats().larger_class_allocs, n as u64);
    for p in got {
        // SAFETY: live blocks of `small`.
        unsafe { core.dealloc(p.as_ptr(), small) };
    }
    for a in kept {
        // SAFETY: live blocks of `big`.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), big) };
    }
    assert_eq!(core.stats().alloc_failures, 1, "only the filling loop's last attempt failed");
}
