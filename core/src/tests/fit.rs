//! The exact-fit tier (`Core::set_exact_fit`) through the core's API.

use super::reclaim::{keep, leaked_core};
use super::*;
use crate::{ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use core::ptr::NonNull;
use std::sync::Mutex;

/// The kernel bench's workload: random sizes 16 B – 4 KiB at alignments 8–64, a third of the
/// steps freeing a random live block instead, until the first refusal. The most bytes held live
/// (as asked for), as a share of the arena.
fn efficiency(core: &Core<MockPlatform>, arena: usize) -> f64 {
    let mut rng = Rng(7);
    let mut live: Vec<(usize, Layout)> = Vec::new();
    let (mut bytes, mut best) = (0usize, 0usize);
    loop {
        if !live.is_empty() && rng.below(3) == 0 {
            let (a, l) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: a live block of `l`.
            unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
            bytes -= l.size();
            continue;
        }
        let l = Layout::from_size_align(16 + rng.below(4081) as usize, 8 << rng.below(4)).unwrap();
        let Ok(p) = core.alloc_with(l, Gfp::NOWARN) else { break };
        live.push((p.as_ptr().addr(), l));
        bytes += l.size();
        best = best.max(bytes);
    }
    for (a, l) in live {
        // SAFETY: as above.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
    }
    best as f64 / arena as f64
}

#[test]
#[cfg_attr(
    miri,
    ignore = "fills a region three times over; the other exact-fit tests run the same paths under miri"
)]
fn exact_fit_packs_a_region_as_tightly_as_a_list_allocator() {
    // 64 MiB: the kernel bench's region, where talc 4.4 holds 97.1 %.
    let arena = 64 << 20;
    let classes = Core::new(MockPlatform::new(arena));
    let fit = Core::new(MockPlatform::new(arena));
    fit.set_exact_fit(Some(0));
    let above_256 = Core::new(MockPlatform::new(arena));
    above_256.set_exact_fit(Some(256));
    let (e_classes, e_fit, e_256) =
        (efficiency(&classes, arena), efficiency(&fit, arena), efficiency(&above_256, arena));
    std::println!(
        "efficiency: size classes {:.2} %, exact fit {:.2} %, exact fit above 256 B {:.2} %",
        100.0 * e_classes,
        100.0 * e_fit,
        100.0 * e_256
    );
    assert!(e_fit >= 0.97, "exact fit held {:.2} % of the region", 100.0 * e_fit);
    assert!(e_classes < e_256 && e_256 < e_fit, "{e_classes} < {e_256} < {e_fit}");
    for core in [&fit, &above_256] {
        assert_eq!(core.stats().exact_fit_used, 0, "{}", core.stats());
        assert_all_returned(core);
    }
}

#[test]
fn exact_fit_blocks_keep_their_contents_through_every_entry_point() {
    // Above 1 KiB (the spans' free lists alone), and every size (small blocks through the quick
    // lists too).
    for (above, max) in [(1024, 9000), (0, 600)] {
        let core = new_core(if MIRI { 16 } else { 64 });
        core.set_exact_fit(Some(above));
        let mut m = Model::new(&core);
        let mut rng = Rng(11);
        let steps = if MIRI { 150 } else { 20_000 };
        for _ in 0..steps {
            let pick = rng.next() as usize;
            match rng.below(8) {
                0..=2 => {
                    let size = 1 + rng.below(max) as usize;
                    let flags = if rng.below(4) == 0 { Gfp::ZERO } else { Gfp::KERNEL };
                    m.alloc(size, 8 << rng.below(6), flags);
                }
                3 => m.free(pick),
                4 => m.kfree(pick),
                5 => {
                    m.realloc(pick, 1 + rng.below(max) as usize);
                }
                6 => {
                    m.krealloc(pick, 1 + rng.below(max) as usize);
                }
                _ => m.check_all(),
            }
        }
        assert!(core.stats().exact_fit_bytes > 0, "the tier served some: {}", core.stats());
        m.free_all();
        assert_eq!(core.stats().exact_fit_used, 0);
        assert_eq!(core.stats().bad_frees, 0);
        assert_all_returned(&core);
        assert_eq!(core.stats().exact_fit_cached, 0, "trim empties the calling heap's quick lists");
    }
}

// `hardened` builds have no quick lists (their free-list check wants one segment per list).
#[cfg(not(feature = "hardened"))]
#[test]
fn a_small_exact_fit_block_waits_on_its_heaps_quick_list_for_its_size() {
    let core = new_core(16);
    core.set_exact_fit(Some(0));
    let l = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: valid layouts; every block freed once.
    unsafe {
        let a = core.alloc(l);
        assert_eq!(core.ksize(a), 104);
        core.dealloc(a, l);
        let s = core.stats();
        assert_eq!((s.exact_fit_used, s.exact_fit_cached), (0, 112), "{s}");
        let b = core.alloc(Layout::from_size_align(97, 16).unwrap());
        assert_eq!(b, a, "a request of the same block size takes it back");
        core.dealloc(b, l);
        // A list keeps at most QUICK_DEPTH (32) blocks; a full one parks its older half, a
        // magazine of 16, in the depot, where another thread's empty list of the size finds it.
        let many: Vec<usize> = (0..200).map(|_| core.alloc(l).addr()).collect();
        for &a in &many {
            core.dealloc(core.platform().ptr_from_addr(a), l);
        }
        let s = core.stats();
        assert_eq!(s.exact_fit_cached, 200 * 112, "{s}");
        assert_eq!(s.exact_fit_used, 0, "{s}");
        let other: Vec<usize> = thread::scope(|sc| {
            sc.spawn(|| {
                let got: Vec<usize> = (0..160).map(|_| core.alloc(l).addr()).collect();
                for &a in &got {
                    core.dealloc(core.platform().ptr_from_addr(a), l);
                }
                core.thread_exit();
                got
            })
            .join()
            .unwrap()
        });
        assert!(other.iter().all(|a| many.contains(a)), "the parked magazines served the other thread");
        let s = core.stats();
        assert!(s.exact_fit_cached < 200 * 112, "its lists went back when it exited: {s}");
        assert_eq!(s.exact_fit_used, 0, "{s}");
    }
    assert_all_returned(&core);
    assert_eq!(core.stats().exact_fit_cached, 0);
}

#[cfg(not(feature = "hardened"))]
#[test]
#[cfg_attr(
    miri,
    ignore = "fills a region with 80-byte blocks; the model test runs the quick lists under miri"
)]
fn before_a_refusal_the_quick_lists_blocks_merge_again() {
    // The region full of 80-byte blocks; 31 neighbours freed onto the quick list (one short of
    // a full list): only their merged space holds a 2 KiB request.
    let core = new_core(8);
    core.set_exact_fit(Some(0));
    let small = Layout::from_size_align(64, 8).unwrap();
    let mut live = Vec::new();
    while let Ok(p) = core.alloc_with(small, Gfp::NOWARN) {
        live.push(p.as_ptr());
    }
    live.sort();
    let run = live.windows(31).position(|w| w.windows(2).all(|p| p[1].addr() - p[0].addr() == 80));
    let at = run.expect("31 neighbours");
    // SAFETY: live blocks of `small`, each freed once.
    unsafe {
        for p in live.drain(at..at + 31) {
            core.dealloc(p, small);
        }
    }
    assert_eq!(core.stats().exact_fit_cached, 31 * 80);
    let big = Layout::from_size_align(2000, 8).unwrap();
    let p = core.alloc_with(big, Gfp::NOWARN).expect("the freed neighbours, merged");
    assert_eq!(core.stats().exact_fit_cached, 0);
    // SAFETY: as above.
    unsafe {
        core.dealloc(p.as_ptr(), big);
        for p in live {
            core.dealloc(p, small);
        }
    }
    assert_all_returned(&core);
}

#[test]
fn exact_fit_sizes_are_their_own() {
    let core = new_core(16);
    core.set_exact_fit(Some(1024));
    for (size, align) in [(1025, 8), (2100, 8), (3000, 64), (5000, 256), (60_000, 8)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout.
        let p = unsafe { core.alloc(l) };
        assert_eq!(p.addr() % align, 0);
        let usable = core.ksize(p);
        assert!(usable >= size && usable < size + 16, "{size}: {usable}");
        // SAFETY: a live block of `l`.
        assert_eq!(unsafe { core.usable_size(p, l) }, usable);
        // SAFETY: as above.
        unsafe { core.dealloc(p, l) };
    }
    // Small sizes stay on the fast path; above-page alignments and vmap sizes stay theirs.
    for (size, align) in [(1000, 8), (2000, 8192), (SLAB_MAX + 1, 8)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout.
        let p = unsafe { core.alloc(l) };
        assert!(core.ksize(p) > size + 16 || size > SLAB_MAX, "{size}: {}", core.ksize(p));
        // SAFETY: a live block of `l`.
        unsafe { core.dealloc(p, l) };
    }
    // A small size the tier serves: the fast path pops the heap's quick list for it (refilled
    // by a free); with the tier off again and the list given back (a trim), the size class
    // serves it.
    core.set_exact_fit(Some(0));
    let small = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: a valid layout.
    unsafe {
        let p = core.alloc(small);
        assert_eq!(core.ksize(p), 104);
        core.dealloc(p, small);
        let q = core.alloc(small);
        assert_eq!(core.ksize(q), 104);
        core.dealloc(q, small);
    }
    core.set_exact_fit(None);
    core.trim();
    for (size, align, class) in [(2100, 8, 2304), (100, 8, 112)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout.
        let p = unsafe { core.alloc(l) };
        assert_eq!(core.ksize(p), class, "off again: the size class");
        // SAFETY: as above.
        unsafe { core.dealloc(p, l) };
    }
    assert_all_returned(&core);
}

#[cfg(not(feature = "hardened"))]
#[test]
fn a_bad_free_of_an_exact_fit_block_is_reported_and_changes_nothing() {
    let core = new_core(16);
    core.set_exact_fit(Some(1024));
    let l = Layout::from_size_align(3000, 8).unwrap();
    // SAFETY: valid layouts; the bad frees below are the point: reported, not followed.
    unsafe {
        let (a, b) = (core.alloc(l), core.alloc(l));
        assert_eq!(core.ksize(a.add(16)), 0, "no block starts inside one");
        core.kfree(a.add(16));
        core.kfree(a.add(8));
        assert_eq!(core.stats().bad_frees, 2);
        core.dealloc(a, l);
        core.kfree(a);
        assert_eq!(core.stats().bad_frees, 3, "{:?}", core.platform().reports());
        assert!(core.platform().reports().iter().any(|r| r.contains("free already")));
        let c = core.alloc(l);
        assert_eq!(c, a, "the hole is reused whole");
        core.dealloc(b, l);
        core.dealloc(c, l);
    }
    assert_eq!(core.stats().exact_fit_used, 0);
    assert_all_returned(&core);
}

#[cfg(feature = "hardened")]
#[test]
fn hardened_a_double_free_of_an_exact_fit_block_aborts() {
    let core = new_core(16);
    core.set_exact_fit(Some(1024));
    let l = Layout::from_size_align(3000, 8).unwrap();
    // SAFETY: a valid layout; the second free is the point: caught before it is followed.
    unsafe {
        let (a, b) = (core.alloc(l), core.alloc(l));
        core.dealloc(a, l);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| core.dealloc(a, l)));
        assert!(r.is_err(), "no abort");
        assert!(core.platform().reports().iter().any(|r| r.contains("free already")));
        core.dealloc(b, l);
    }
}

#[test]
fn exact_fit_blocks_freed_by_other_threads_come_back() {
    // Large blocks (into the spans' free lists) and small ones (onto the freeing thread's quick
    // lists, given back when it exits).
    for (above, lo, spread) in [(1024, 1025, 3000), (0, 1, 264)] {
        let core = new_core(32);
        core.set_exact_fit(Some(above));
        let n = if MIRI { 10 } else { 2000 };
        let (tx, rx) = mpsc::channel::<Vec<usize>>();
        thread::scope(|s| {
            s.spawn(|| {
                for batch in rx {
                    for a in batch {
                        let p = core.platform().ptr_from_addr(a);
                        // SAFETY: a live block handed over.
                        unsafe { core.kfree(p) };
                    }
                }
                core.thread_exit();
            });
            let mut rng = Rng(3);
            for _ in 0..4 {
                let batch: Vec<usize> = (0..n)
                    .map(|_| {
                        let l = Layout::from_size_align(lo + rng.below(spread) as usize, 8).unwrap();
                        // SAFETY: a valid layout.
                        let p = unsafe { core.alloc(l) };
                        assert!(!p.is_null());
                        p.addr()
                    })
                    .collect();
                tx.send(batch).unwrap();
            }
            drop(tx);
        });
        let s = core.stats();
        assert_eq!((s.exact_fit_used, s.exact_fit_cached), (0, 0), "{s}");
        assert_eq!(s.bad_frees, 0);
        assert_all_returned(&core);
    }
}

/// Exact-fit blocks a shrinker frees.
struct FitCache {
    core: &'static Core<MockPlatform>,
    blocks: Mutex<Vec<usize>>,
}

impl Shrinker for FitCache {
    fn name(&self) -> &str {
        "fit-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Other
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let mut freed = 0;
        for _ in 0..sc.nr_to_scan {
            let Some(a) = self.blocks.lock().unwrap().pop() else { break };
            // SAFETY: a live block of `FIT_BLOCK`.
            unsafe { self.core.dealloc(self.core.platform().ptr_from_addr(a), FIT_BLOCK) };
            freed += 1;
        }
        ScanResult::Freed(freed)
    }
}

const FIT_BLOCK: Layout = match Layout::from_size_align(3000, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

#[test]
fn at_the_limit_exact_fit_requests_reclaim_through_their_size_class() {
    // A cache of exact-fit blocks fills the limit; the next request's size class runs reclaim
    // (the tier has no reclaim loop of its own), the shrinker frees, the request succeeds.
    let core = leaked_core(64, 8);
    core.set_exact_fit(Some(1024));
    let cache: &'static FitCache = keep(FitCache { core, blocks: Mutex::new(Vec::new()) });
    // SAFETY: the cache is never freed.
    unsafe { core.register_shrinker(NonNull::from(cache as &dyn Shrinker)) }.expect("registered");
    while let Ok(p) = core.alloc_with(FIT_BLOCK, Gfp::NORECLAIM | Gfp::NOWARN) {
        cache.blocks.lock().unwrap().push(p.as_ptr().addr());
    }
    let before = cache.blocks.lock().unwrap().len();
    assert!(before > 2000, "{before} blocks of 3000 B under 8 MiB");
    let p = core.alloc_with(FIT_BLOCK, Gfp::KERNEL).expect("reclaim made room");
    assert!(cache.blocks.lock().unwrap().len() < before, "the shrinker ran");
    // SAFETY: a live block of `FIT_BLOCK`; then the cache's.
    unsafe {
        core.dealloc(p.as_ptr(), FIT_BLOCK);
        for a in cache.blocks.lock().unwrap().drain(..) {
            core.dealloc(core.platform().ptr_from_addr(a), FIT_BLOCK);
        }
    }
    assert_eq!(core.stats().exact_fit_used, 0);
}
