//! The reclaim-order checker (feature `lockcheck`): a tracked lock held across an allocation
//! that may reclaim from a shrinker class, which a shrinker of that class takes, is reported
//! once — naming the lock, the shrinker and the allocation — while memory is plentiful and no
//! reclaim ever ran; a scope forbidding the class keeps it silent. Reports go to stderr, so
//! each scenario runs in a child process.

use ctxalloc::{
    Gfp, ReclaimClass, ScanResult, ScopedMutex, ShrinkControl, Shrinker, ShrinkerHandle, TrackedMutex,
};
use ctxalloc_tests::{child_stderr, is_child};
use std::hint::black_box;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// A cache whose shrinker (of `class`) tries its lock.
struct Cache {
    items: TrackedMutex<Vec<Box<[u8]>>>,
}

struct CacheShrinker(Arc<Cache>, ReclaimClass, &'static str);

impl Shrinker for CacheShrinker {
    fn name(&self) -> &str {
        self.2
    }
    fn class(&self) -> ReclaimClass {
        self.1
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        1000
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let Some(mut items) = self.0.items.try_lock() else { return ScanResult::Stop };
        let n = sc.nr_to_scan.min(items.len());
        let keep = items.len() - n;
        items.truncate(keep);
        ScanResult::Freed(n)
    }
}

/// A cache of items whose shrinker, of `class`, tries its lock; registered.
fn cache_with_shrinker(class: ReclaimClass, name: &'static str) -> (Arc<Cache>, ShrinkerHandle) {
    let cache = Arc::new(Cache { items: TrackedMutex::new(Vec::with_capacity(64), "items") });
    let h = ctxalloc::register_shrinker(Arc::new(CacheShrinker(cache.clone(), class, name)));
    (cache, h)
}

#[test]
fn a_declared_shrinker_lock_held_across_an_allocation_is_reported_before_any_reclaim() {
    let err = child_stderr("child_declared");
    assert_eq!(err.matches("ctxalloc: lockcheck:").count(), 1, "reported once: {err}");
    assert!(
        err.contains("lock `items` is held across an allocation that may reclaim from filesystem shrinkers"),
        "{err}"
    );
    assert!(err.contains("shrinker `item-cache` (filesystem class) is declared to take `items`"), "{err}");
    assert!(
        err.contains(
            "the allocation: 4096 bytes in context ZERO, under `items` locked at tests/tests/lockcheck.rs:"
        ),
        "{err}"
    );
    assert!(err.contains("fix: allocate under `items` inside a NOFS scope"), "{err}");
}

#[test]
fn child_declared() {
    if !is_child("child_declared") {
        return;
    }
    let (cache, h) = cache_with_shrinker(ReclaimClass::Fs, "item-cache");
    h.takes(&cache.items);
    for _ in 0..3 {
        let mut items = cache.items.lock();
        items.push(black_box(vec![0u8; 4096].into_boxed_slice())); // no scope: reported, once
    }
    let s = ctxalloc::stats();
    assert_eq!(s.lockcheck_reports, 1);
    assert_eq!(s.reclaim_rounds, 0, "memory was plentiful: reclaim never ran");
}

#[test]
fn the_shrinker_side_is_learned_when_the_shrinker_runs() {
    let err = child_stderr("child_learned");
    assert!(err.contains("shrinker `learned-cache` (I/O class) takes `items`"), "{err}");
    assert!(err.contains("may reclaim from I/O shrinkers"), "{err}");
}

#[test]
fn child_learned() {
    if !is_child("child_learned") {
        return;
    }
    let (cache, _h) = cache_with_shrinker(ReclaimClass::Io, "learned-cache");
    {
        let mut items = cache.items.lock();
        let _nofs = ctxalloc::scope(Gfp::NOFS); // forbids filesystem shrinkers, not I/O ones
        items.push(black_box(vec![1u8; 100].into_boxed_slice()));
    }
    assert_eq!(ctxalloc::stats().lockcheck_reports, 0, "the shrinker has not run yet");
    ctxalloc::reclaim(1 << 20); // runs it on this thread, lock not held: it takes the lock
    assert_eq!(ctxalloc::stats().lockcheck_reports, 1);
}

#[test]
fn scopes_that_forbid_the_class_keep_it_silent() {
    let err = child_stderr("child_silent");
    assert!(!err.contains("lockcheck"), "{err}");
}

#[test]
fn child_silent() {
    if !is_child("child_silent") {
        return;
    }
    let (cache, h) = cache_with_shrinker(ReclaimClass::Io, "io-cache");
    h.takes(&cache.items);
    {
        let mut items = cache.items.lock();
        let _noio = ctxalloc::scope(Gfp::NOIO);
        items.push(black_box(vec![0u8; 4096].into_boxed_slice()));
    }
    {
        let mut items = cache.items.lock();
        let _noreclaim = ctxalloc::scope(Gfp::NORECLAIM); // no reclaim at all
        items.push(black_box(vec![0u8; 64].into_boxed_slice()));
    }
    // A ScopedMutex carrying NOIO that the shrinker is declared to take: its scope is enough.
    let scoped = ScopedMutex::named(Vec::<u64>::new(), Gfp::NOIO, "scoped");
    h.takes(&scoped);
    scoped.lock().push(black_box(7));
    ctxalloc::reclaim(1 << 20);
    assert_eq!(ctxalloc::stats().lockcheck_reports, 0);
}

#[test]
fn a_scoped_mutex_with_the_wrong_scope_is_reported() {
    let err = child_stderr("child_wrong_scope");
    assert!(
        err.contains("lock `journal` is held across an allocation that may reclaim from I/O shrinkers"),
        "{err}"
    );
}

#[test]
fn child_wrong_scope() {
    if !is_child("child_wrong_scope") {
        return;
    }
    struct Journal(Arc<ScopedMutex<Vec<u64>>>);
    impl Shrinker for Journal {
        fn name(&self) -> &str {
            "journal-writeback"
        }
        fn class(&self) -> ReclaimClass {
            ReclaimClass::Io
        }
        fn count(&self, _: &ShrinkControl) -> usize {
            0
        }
        fn scan(&self, _: &mut ShrinkControl) -> ScanResult {
            match self.0.try_lock() {
                Some(mut j) => {
                    j.clear();
                    ScanResult::Freed(0)
                }
                None => ScanResult::Stop,
            }
        }
    }
    // NOFS is not enough for a lock an I/O-class shrinker takes.
    let journal = Arc::new(ScopedMutex::named(Vec::new(), Gfp::NOFS, "journal"));
    let h = ctxalloc::register_shrinker(Arc::new(Journal(journal.clone())));
    h.takes(&*journal);
    journal.lock().push(black_box(1));
    assert_eq!(ctxalloc::stats().lockcheck_reports, 1);
}
