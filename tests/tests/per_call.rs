//! Per-call flags through `Flagged`, locks that carry their scope, and mempools — through the
//! global allocator. Scenarios that set a limit run in child processes (`child_*`), with
//! background reclaim off so that only the reclaim under test runs.

use ctxalloc::allocator_api2::vec::Vec as FVec;
use ctxalloc::{Flagged, Gfp, Mempool, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use ctxalloc::{ScopedMutex, ScopedRwLock};
use ctxalloc_tests::{assert_child_passes, is_child, limit_to, run_child_env};
use std::alloc::Layout;
use std::ops::DerefMut;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const NO_BACKGROUND: &[(&str, &str)] = &[("CTXALLOC_BACKGROUND", "off")];
const BUF: usize = 128 << 10;

/// A number for the calling thread (for "is the shrinker running on the lock holder?").
fn me() -> u64 {
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ID.with(|id| *id)
}

/// Drops up to `n` of the newest buffers; returns how many.
fn drop_newest(v: &mut Vec<Vec<u8>>, n: usize) -> usize {
    let n = n.min(v.len());
    v.truncate(v.len() - n);
    n
}

// ---------------------------------------------------------------------------------------------
// Scoped locks

#[test]
fn scoped_mutexes_nest_and_restore_exactly_in_any_order() {
    let a = ScopedMutex::new(1, Gfp::NOFS);
    let b = ScopedMutex::new(2, Gfp::NOIO);
    let c = ScopedMutex::new(3, Gfp::NORECLAIM);
    {
        let ga = a.lock();
        assert_eq!(ctxalloc::current(), Gfp::NOFS);
        let gb = b.lock();
        assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NOIO);
        drop(gb);
        assert_eq!(ctxalloc::current(), Gfp::NOFS, "inner left exactly");
        drop(ga);
        assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    }
    // Hand over hand: a, b, drop a, c, drop b, drop c — every guard keeps its own bits.
    let ga = a.lock();
    let gb = b.lock();
    drop(ga);
    assert_eq!(ctxalloc::current(), Gfp::NOIO, "b's scope survives a's release");
    let gc = c.lock();
    drop(gb);
    assert_eq!(ctxalloc::current(), Gfp::NORECLAIM);
    drop(gc);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    // With a cookie scope inside: the lock's bit outlives the cookie's restore.
    let ga = a.lock();
    let cookie = ctxalloc::memalloc_nofs_save();
    ctxalloc::memalloc_nofs_restore(cookie);
    assert_eq!(ctxalloc::current(), Gfp::NOFS);
    drop(ga);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    // try_lock enters the scope too, and a held lock gives none.
    let g = a.try_lock().unwrap();
    assert!(a.try_lock().is_none());
    assert_eq!(g.flags(), Gfp::NOFS);
    assert_eq!(ctxalloc::current(), Gfp::NOFS);
    drop(g);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    // Another thread is unaffected by this thread's locks.
    let _g = a.lock();
    assert_eq!(thread::spawn(ctxalloc::current).join().unwrap(), Gfp::KERNEL);
}

#[test]
fn scoped_rwlock_readers_and_writers_carry_the_scope() {
    let l = ScopedRwLock::new(vec![1u32], Gfp::NOIO);
    let r1 = l.read();
    let r2 = l.try_read().unwrap();
    assert_eq!(ctxalloc::current(), Gfp::NOIO);
    assert!(ctxalloc::effective(Gfp::KERNEL).gfp().contains(Gfp::NOFS), "NOIO implies NOFS");
    drop(r1);
    assert!(ctxalloc::current().contains(Gfp::NOIO), "the second reader still holds it");
    drop(r2);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    l.write().push(2);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    assert_eq!(l.into_inner(), vec![1, 2]);
}

/// The blockcache pattern: the cache's FS shrinker needs the cache lock; a thread holding it
/// allocates. `probe` is an other-class shrinker with memory to give, so reclaim on the holder
/// has something it may do; it records whether it ran on the holder.
struct Pattern<L> {
    cache: L,
    /// Entries in the cache.
    len: AtomicUsize,
    /// The thread holding the cache lock (shared with the probe).
    holder: Arc<AtomicU64>,
    recursions: AtomicUsize,
    evicted: AtomicUsize,
}

/// The cache's lock: a `ScopedMutex` (the pattern done right) or a plain `Mutex` (the control).
trait CacheLock: Send + Sync + 'static {
    fn lock(&self) -> impl DerefMut<Target = Vec<Vec<u8>>> + '_;
    fn try_lock(&self) -> Option<impl DerefMut<Target = Vec<Vec<u8>>> + '_>;
}

impl CacheLock for ScopedMutex<Vec<Vec<u8>>> {
    fn lock(&self) -> impl DerefMut<Target = Vec<Vec<u8>>> + '_ {
        ScopedMutex::lock(self)
    }
    fn try_lock(&self) -> Option<impl DerefMut<Target = Vec<Vec<u8>>> + '_> {
        ScopedMutex::try_lock(self)
    }
}

impl CacheLock for Mutex<Vec<Vec<u8>>> {
    fn lock(&self) -> impl DerefMut<Target = Vec<Vec<u8>>> + '_ {
        Mutex::lock(self).unwrap()
    }
    fn try_lock(&self) -> Option<impl DerefMut<Target = Vec<Vec<u8>>> + '_> {
        Mutex::try_lock(self).ok()
    }
}

impl<L: CacheLock> Pattern<L> {
    /// Pushes `blocks` (allocated while the lock is held) with the lock held, as its holder.
    fn push_holding(&self, blocks: impl Iterator<Item = Vec<u8>>) {
        let mut g = self.cache.lock();
        self.holder.store(me(), Ordering::SeqCst);
        for b in blocks {
            g.push(b);
        }
        self.holder.store(0, Ordering::SeqCst);
    }

    /// Evicts the oldest entry if the lock is free; whether it did.
    fn evict(&self) -> bool {
        let Some(mut g) = self.cache.try_lock() else { return false };
        !g.is_empty() && {
            drop(g.remove(0));
            true
        }
    }
}

struct CacheShrinker<L: 'static>(Arc<Pattern<L>>);

impl<L: CacheLock> Shrinker for CacheShrinker<L> {
    fn name(&self) -> &str {
        "pattern-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.0.len.load(Ordering::SeqCst)
    }
    fn batch(&self) -> usize {
        1
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let p = &self.0;
        if p.holder.load(Ordering::SeqCst) == me() {
            // lock() here would self-deadlock: this is the bug scopes exist to prevent.
            p.recursions.fetch_add(1, Ordering::SeqCst);
            return ScanResult::Stop;
        }
        match (0..sc.nr_to_scan).take_while(|_| p.evict()).count() {
            0 => ScanResult::Stop,
            n => {
                p.evicted.fetch_add(n, Ordering::SeqCst);
                p.len.fetch_sub(n, Ordering::SeqCst);
                ScanResult::Freed(n)
            }
        }
    }
}

struct Probe {
    stash: Mutex<Vec<Vec<u8>>>,
    holder_of: Arc<AtomicU64>,
    on_holder: AtomicUsize,
}

impl Shrinker for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Other
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.stash.try_lock().map_or(0, |s| s.len())
    }
    fn batch(&self) -> usize {
        1
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        if self.holder_of.load(Ordering::SeqCst) == me() {
            self.on_holder.fetch_add(1, Ordering::SeqCst);
        }
        ScanResult::Freed(drop_newest(&mut self.stash.lock().unwrap(), sc.nr_to_scan))
    }
}

/// Runs the pattern: fill the cache to the limit from outside the lock, then allocate while
/// holding it. Returns (recursions, probe calls on the holder).
fn run_pattern<L: CacheLock>(cache: L) -> (usize, usize) {
    let holder = Arc::new(AtomicU64::new(0));
    let p = Arc::new(Pattern {
        cache,
        len: AtomicUsize::new(0),
        holder: holder.clone(),
        recursions: AtomicUsize::new(0),
        evicted: AtomicUsize::new(0),
    });
    let probe = Arc::new(Probe {
        stash: Mutex::new((0..16).map(|_| vec![1u8; BUF]).collect()),
        holder_of: holder.clone(),
        on_holder: AtomicUsize::new(0),
    });
    let _c = ctxalloc::register_shrinker(Arc::new(CacheShrinker(p.clone())));
    let _p = ctxalloc::register_shrinker(probe.clone());
    let _limit = limit_to(4 << 20);
    // Outside the lock: plain allocations, reclaim may evict from the cache.
    for _ in 0..100 {
        let b = vec![2u8; BUF];
        p.push_holding(std::iter::once(b));
        p.len.fetch_add(1, Ordering::SeqCst);
    }
    assert!(p.evicted.load(Ordering::SeqCst) > 0, "filling past the limit evicted from the cache");
    // Holding the lock: every allocation needs reclaim. No scope call: a `ScopedMutex` carries
    // NOFS, a plain `Mutex` nothing.
    p.push_holding((0..8).map(|_| vec![3u8; BUF]));
    (p.recursions.load(Ordering::SeqCst), probe.on_holder.load(Ordering::SeqCst))
}

#[test]
fn blockcache_pattern_is_safe_with_a_scoped_mutex_and_no_scope_calls() {
    assert_child_passes("child_pattern_scoped", NO_BACKGROUND);
}

#[test]
fn child_pattern_scoped() {
    if !is_child("child_pattern_scoped") {
        return;
    }
    let (recursions, on_holder) = run_pattern(ScopedMutex::new(Vec::new(), Gfp::NOFS));
    assert_eq!(recursions, 0, "the FS shrinker never ran on the lock holder");
    assert!(on_holder > 0, "reclaim did run on the holder (it reclaimed from the probe)");
}

/// The control: the same pattern with a plain mutex recurses into the cache's shrinker.
#[test]
fn without_the_scope_the_pattern_recurses() {
    let out = run_child_env("child_pattern_plain", NO_BACKGROUND);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn child_pattern_plain() {
    if !is_child("child_pattern_plain") {
        return;
    }
    let (recursions, _) = run_pattern(Mutex::new(Vec::new()));
    assert!(recursions > 0, "without NOFS, reclaim entered the FS shrinker on the holder");
}

// ---------------------------------------------------------------------------------------------
// Flagged

#[test]
fn flagged_collections_allocate_grow_and_zero() {
    let mut v = FVec::new_in(Flagged(Gfp::NOFS));
    for i in 0..10_000u32 {
        v.push(i);
    }
    assert_eq!(v.iter().map(|&x| u64::from(x)).sum::<u64>(), 49_995_000);
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v.len(), 10);
    // ZERO: every allocation and every growth reads as zero beyond what was written.
    let mut z: FVec<u8, _> = FVec::with_capacity_in(100, Flagged(Gfp::ZERO));
    z.resize(100, 7);
    z.reserve(50_000);
    // SAFETY: capacity ≥ 50 100; the allocator zeroed the bytes beyond the first 100.
    let tail = unsafe { std::slice::from_raw_parts(z.as_ptr().add(100), 50_000) };
    assert!(tail.iter().all(|&b| b == 0));
    // Over-aligned layouts move correctly.
    let mut big = FVec::<[u8; 4096], _>::new_in(Flagged(Gfp::NOIO));
    big.push([9; 4096]);
    big.push([8; 4096]);
    assert_eq!(big[1][4095], 8);
    // Blocks from `Flagged` can be freed by the free functions and the other way round.
    let l = Layout::from_size_align(3000, 64).unwrap();
    let p = ctxalloc::alloc_with(l, Gfp::KERNEL).unwrap();
    // SAFETY: a live block of `l`.
    unsafe { ctxalloc::allocator_api2::alloc::Allocator::deallocate(&Flagged(Gfp::NOFS), p, l) };
}

/// A cache that is the only reclaimable memory, FS class.
struct FsCache {
    bufs: Mutex<Vec<Vec<u8>>>,
    scans: AtomicUsize,
}

impl Shrinker for FsCache {
    fn name(&self) -> &str {
        "fs-only"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.bufs.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let Ok(mut b) = self.bufs.try_lock() else { return ScanResult::Stop };
        ScanResult::Freed(drop_newest(&mut b, sc.nr_to_scan))
    }
}

/// Registers an FS cache holding all the memory a fresh 8 MiB limit allows.
fn fs_cache_at_limit() -> (Arc<FsCache>, ctxalloc::ShrinkerHandle, ctxalloc_tests::LimitGuard) {
    let cache = Arc::new(FsCache { bufs: Mutex::new(Vec::new()), scans: AtomicUsize::new(0) });
    let h = ctxalloc::register_shrinker(cache.clone());
    let limit = limit_to(8 << 20);
    loop {
        let mut x = Vec::new();
        if ctxalloc::with_scope(Gfp::NORECLAIM, || x.try_reserve_exact(BUF)).is_err() {
            break;
        }
        cache.bufs.lock().unwrap().push(x);
    }
    (cache, h, limit)
}

#[test]
fn a_flagged_nofs_vec_never_enters_an_fs_shrinker() {
    assert_child_passes("child_flagged_nofs", NO_BACKGROUND);
}

#[test]
fn child_flagged_nofs() {
    if !is_child("child_flagged_nofs") {
        return;
    }
    let (cache, _h, _limit) = fs_cache_at_limit();
    let mut v = FVec::<u8, _>::new_in(Flagged(Gfp::NOFS | Gfp::NORETRY | Gfp::NOWARN));
    assert!(v.try_reserve_exact(1 << 20).is_err(), "nothing but the FS cache could free memory");
    assert_eq!(cache.scans.load(Ordering::SeqCst), 0, "and NOFS kept reclaim out of it");
    let mut w = FVec::<u8, _>::new_in(Flagged(Gfp::KERNEL));
    assert!(w.try_reserve_exact(1 << 20).is_ok(), "without NOFS reclaim frees the cache");
    assert!(cache.scans.load(Ordering::SeqCst) > 0);
}

/// Checklist 15: a per-call MAYFAIL (and NORETRY) overrides a NOFAIL scope — through the
/// allocator API path too.
#[test]
fn mayfail_and_noretry_override_a_nofail_scope_through_flagged() {
    assert_child_passes("child_flagged_mayfail", NO_BACKGROUND);
}

#[test]
fn child_flagged_mayfail() {
    if !is_child("child_flagged_mayfail") {
        return;
    }
    let _limit = limit_to(4 << 20);
    let (a, b) = ctxalloc::with_scope(Gfp::NOFAIL, || {
        let mut a = FVec::<u8, _>::new_in(Flagged(Gfp::MAYFAIL | Gfp::NOWARN));
        let mut b = FVec::<u8, _>::new_in(Flagged(Gfp::NORETRY | Gfp::NOWARN));
        (a.try_reserve_exact(16 << 20).is_err(), b.try_reserve_exact(16 << 20).is_err())
    });
    assert!(a && b, "both failed instead of waiting for ever");
    let s = ctxalloc::stats();
    assert_eq!(s.nofail_waits, 0, "{s}");
}

// ---------------------------------------------------------------------------------------------
// Mempool

/// R3.10 with real sleeps: the allocator fails for good (limit reached, no shrinker), 8 threads
/// each take one element at a time from a pool of 2, hold it, free it: all complete 10⁴ rounds.
#[test]
fn mempool_forward_progress_when_the_allocator_always_fails() {
    assert_child_passes("child_mempool_progress", NO_BACKGROUND);
}

#[test]
fn child_mempool_progress() {
    if !is_child("child_mempool_progress") {
        return;
    }
    let pool = Arc::new(Mempool::new(Layout::from_size_align(BUF, 64).unwrap(), 2).unwrap());
    let start = Arc::new(std::sync::Barrier::new(9));
    let threads: Vec<_> = (0..8u64)
        .map(|i| {
            let (pool, start) = (pool.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for r in 0..10_000u64 {
                    let e = pool.alloc(Gfp::NOIO).expect("a sleeping mempool alloc never fails");
                    // SAFETY: an element of ours, 128 KiB; the mark proves exclusive use.
                    unsafe {
                        e.as_ptr().cast::<u64>().write(i << 32 | r);
                        thread::yield_now();
                        assert_eq!(e.as_ptr().cast::<u64>().read(), i << 32 | r);
                        pool.free(e);
                    }
                }
            })
        })
        .collect();
    // The threads exist; leave 64 KiB of room for small allocations: no element fits.
    let u = ctxalloc::usage();
    let mut limit = u + (64 << 10);
    while limit - ctxalloc::emergency_reserve(limit) < u + (64 << 10) {
        limit += 4096;
    }
    let _limit = limit_to(limit - u);
    let mut probe = Vec::<u8>::new();
    assert!(
        ctxalloc::with_scope(Gfp::NORECLAIM, || probe.try_reserve_exact(BUF)).is_err(),
        "the allocator fails"
    );
    start.wait();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pool.curr_nr(), 2);
    let s = ctxalloc::stats();
    assert_eq!(s.mempool_reserve_uses, 80_000, "every element came from the reserve: {s}");
}
