//! Scoped fault injection (feature `fault-injection`): failures reach only the guarded thread,
//! follow the configuration reproducibly, never hit NOFAIL, and take the normal fallbacks —
//! a reclaim pass and a mempool's reserve.

use ctxalloc::fault::{self, FaultConfig};
use ctxalloc::{alloc_with, dealloc, Gfp, Mempool, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const L: Layout = Layout::new::<[u64; 8]>();
/// No report, and no reclaim pass for the injected failures (the reclaim test asks for one).
const QUIET: Gfp = Gfp::NOWARN.union(Gfp::NORECLAIM);

/// Allocates `n` times with `gfp` and frees; which attempts failed. The result's memory is
/// taken before `guard` starts failing this thread's allocations (it runs before the loop),
/// and the guard ends before the result is returned.
fn pattern_in<G>(n: usize, gfp: Gfp, guard: impl FnOnce() -> G) -> Vec<bool> {
    let mut out = Vec::with_capacity(n);
    let g = guard();
    attempts(&mut out, n, gfp);
    drop(g);
    out
}

/// Allocates `n` times with `gfp` and frees, pushing whether each failed onto `out`, which
/// has room for them (so that nothing else allocates).
fn attempts(out: &mut Vec<bool>, n: usize, gfp: Gfp) {
    for _ in 0..n {
        match alloc_with(L, gfp) {
            // SAFETY: a fresh block of `L`.
            Ok(p) => unsafe {
                dealloc(p, L);
                out.push(false)
            },
            Err(_) => out.push(true),
        }
    }
}

/// [`pattern_in`] without a guard of its own.
fn pattern(n: usize, gfp: Gfp) -> Vec<bool> {
    pattern_in(n, gfp, || ())
}

#[test]
fn injected_failures_reach_exactly_the_guarded_thread() {
    let start = Arc::new(Barrier::new(2));
    let done = Arc::new(Barrier::new(2));
    let other = {
        let (start, done) = (start.clone(), done.clone());
        std::thread::spawn(move || {
            start.wait();
            let failed = pattern(20_000, QUIET).iter().filter(|&&f| f).count();
            done.wait();
            failed
        })
    };
    let mut injected = (0, 0);
    let mine = pattern_in(20_000, QUIET, || {
        start.wait();
        Counted(fault::inject(FaultConfig::DEFAULT), &mut injected) // every allocation fails
    });
    done.wait();
    assert!(mine.iter().all(|&f| f), "every guarded allocation fails");
    assert_eq!(injected, (20_000, 20_000));
    assert_eq!(other.join().unwrap(), 0, "the other thread, allocating at the same time, never fails");
    assert!(pattern(100, QUIET).iter().all(|&f| !f), "nothing fails after the guard");
}

/// A guard that reports how many failures it injected when it ends.
/// (failures injected, allocations seen).
struct Counted<'a>(fault::FaultGuard, &'a mut (u64, u64));

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        *self.1 = (self.0.injected(), self.0.calls());
    }
}

#[test]
fn nofail_requests_are_never_failed() {
    let mut seen = (u64::MAX, u64::MAX);
    let ok = pattern_in(1000, Gfp::NOFAIL, || Counted(fault::inject(FaultConfig::DEFAULT), &mut seen));
    assert!(ok.iter().all(|&f| !f));
    assert_eq!(seen, (0, 0), "NOFAIL requests are not even eligible");
}

#[test]
fn the_same_seed_fails_the_same_allocations() {
    let run = |seed| {
        pattern_in(2000, QUIET, || {
            fault::inject(FaultConfig { probability: 30, seed, ..FaultConfig::DEFAULT })
        })
    };
    let a = run(42);
    let failed = a.iter().filter(|&&f| f).count();
    assert!((400..800).contains(&failed), "about 30 % of 2000: {failed}");
    assert_eq!(a, run(42), "same seed, same failures");
    assert_ne!(a, run(43), "another seed, other failures");
}

#[test]
fn fail_nth_times_interval_and_space_follow_the_kernel() {
    let with = |c: FaultConfig, n| {
        let p = pattern_in(n, QUIET, || fault::inject(c));
        p.iter().enumerate().filter(|(_, &f)| f).map(|(i, _)| i).collect::<Vec<_>>()
    };
    assert_eq!(with(FaultConfig { fail_nth: 5, ..FaultConfig::DEFAULT }, 20), vec![4]);
    assert_eq!(with(FaultConfig { times: Some(3), ..FaultConfig::DEFAULT }, 20), vec![0, 1, 2]);
    assert_eq!(with(FaultConfig { interval: 4, ..FaultConfig::DEFAULT }, 12), vec![3, 7, 11]);
    // 64-byte blocks: the first 256 bytes of budget let 4 through (the kernel's `space`).
    assert_eq!(with(FaultConfig { space: 257, times: Some(1), ..FaultConfig::DEFAULT }, 8), vec![4]);
    assert_eq!(with(FaultConfig { min_size: 65, ..FaultConfig::DEFAULT }, 8), Vec::<usize>::new());
}

#[test]
fn guards_nest_and_restore() {
    // Every result vector is allocated before the outer guard; the inner guard fails nothing.
    let (mut a, mut inner, mut b) = (Vec::with_capacity(2), Vec::with_capacity(50), Vec::with_capacity(2));
    let once = |out: &mut Vec<bool>, n| attempts(out, n, QUIET);
    let outer = fault::inject(FaultConfig { fail_nth: 3, ..FaultConfig::DEFAULT });
    once(&mut a, 2);
    {
        let _inner = fault::inject(FaultConfig { probability: 0, ..FaultConfig::DEFAULT });
        once(&mut inner, 50);
    }
    once(&mut b, 2);
    drop(outer);
    assert!(inner.iter().all(|&f| !f));
    assert_eq!((a, b), (vec![false, false], vec![true, false]), "the outer count resumes");
}

struct Counting {
    scans: AtomicUsize,
}

impl Shrinker for Counting {
    fn name(&self) -> &str {
        "fault-test"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Other
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        1000
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::Relaxed);
        sc.nr_scanned = sc.nr_to_scan;
        ScanResult::Freed(0)
    }
}

#[test]
fn an_injected_failure_gets_the_reclaim_pass_its_context_allows() {
    let s = Arc::new(Counting { scans: AtomicUsize::new(0) });
    let _h = ctxalloc::register_shrinker(s.clone());
    let before = s.scans.load(Ordering::Relaxed);
    {
        let _g = fault::inject(FaultConfig { fail_nth: 1, ..FaultConfig::DEFAULT });
        assert!(alloc_with(L, Gfp::NOWARN).is_err());
    }
    let after_default = s.scans.load(Ordering::Relaxed);
    {
        let _g = fault::inject(FaultConfig { fail_nth: 1, ..FaultConfig::DEFAULT });
        assert!(alloc_with(L, QUIET).is_err());
    }
    assert!(after_default > before, "the shrinker ran for the failed allocation");
    assert_eq!(s.scans.load(Ordering::Relaxed), after_default, "NORECLAIM: no reclaim pass");
}

#[test]
fn a_mempool_user_under_half_injected_failure_never_sees_null() {
    let pool = Arc::new(Mempool::new(Layout::new::<[u8; 512]>(), 4).unwrap());
    let reserve_before = ctxalloc::stats().mempool_reserve_uses;
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let g = fault::inject(FaultConfig { probability: 50, seed: t + 1, ..FaultConfig::DEFAULT });
                let mut nulls = 0;
                for i in 0..5000u32 {
                    // Two at a time per thread: four in all, the pool's minimum.
                    let a = pool.alloc(Gfp::NOIO | Gfp::NOWARN);
                    let b = pool.alloc(Gfp::KERNEL | Gfp::NOWARN);
                    for p in [a, b] {
                        match p {
                            Some(p) => unsafe {
                                // SAFETY: an element of 512 bytes, ours until freed.
                                p.as_ptr().write_bytes(i as u8, 512);
                                pool.free(p);
                            },
                            None => nulls += 1,
                        }
                    }
                }
                (nulls, g.injected())
            })
        })
        .collect();
    for w in workers {
        let (nulls, injected) = w.join().unwrap();
        assert_eq!(nulls, 0, "a sleeping mempool alloc never returns None");
        assert!(injected > 1000, "about half the allocator attempts failed: {injected}");
    }
    assert!(ctxalloc::stats().mempool_reserve_uses > reserve_before, "the reserve covered the failures");
}
