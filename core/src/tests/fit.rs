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
    let core = new_core(if MIRI { 16 } else { 64 });
    core.set_exact_fit(Some(1024));
    let mut m = Model::new(&core);
    let mut rng = Rng(11);
    let steps = if MIRI { 150 } else { 20_000 };
    for _ in 0..steps {
        let pick = rng.next() as usize;
        match rng.below(8) {
            0..=2 => {
                let size = 1 + rng.below(9000) as usize;
                let flags = if rng.below(4) == 0 { Gfp::ZERO } else { Gfp::KERNEL };
                m.alloc(size, 8 << rng.below(6), flags);
            }
            3 => m.free(pick),
            4 => m.kfree(pick),
            5 => {
                m.realloc(pick, 1 + rng.below(9000) as usize);
            }
            6 => {
                m.krealloc(pick, 1 + rng.below(9000) as usize);
            }
            _ => m.check_all(),
        }
    }
    assert!(core.stats().exact_fit_bytes > 0, "the tier served some: {}", core.stats());
    m.free_all();
    assert_eq!(core.stats().exact_fit_used, 0);
    assert_eq!(core.stats().bad_frees, 0);
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
    core.set_exact_fit(None);
    let l = Layout::from_size_align(2100, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { core.alloc(l) };
    assert_eq!(core.ksize(p), 2304, "off again: the size class");
    // SAFETY: as above.
    unsafe { core.dealloc(p, l) };
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
    let core = new_core(32);
    core.set_exact_fit(Some(1024));
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
                    let l = Layout::from_size_align(1025 + rng.below(3000) as usize, 8).unwrap();
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
    assert_eq!(core.stats().exact_fit_used, 0);
    assert_eq!(core.stats().bad_frees, 0);
    assert_all_returned(&core);
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
