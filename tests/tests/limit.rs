//! The memory limit, shrinkers and reclaim through the global allocator. A limit is process-wide,
//! so every scenario runs in a child process of its own (`child_*`, started by the test of the
//! same name without the prefix); the parent asserts that the child passed.

use ctxalloc::{Cause, Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use ctxalloc_tests::{assert_child_passes, is_child, limit_to, wait_until, Rng};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const CHUNK: usize = 256 << 10;

fn chunk() -> Layout {
    Layout::from_size_align(CHUNK, 8).unwrap()
}

/// A cache of 256 KiB chunks; its shrinker frees them and records how it was called.
struct Cache {
    name: &'static str,
    class: ReclaimClass,
    chunks: Mutex<Vec<usize>>,
    counts: AtomicUsize,
    scans: AtomicUsize,
    /// A scan saw this thread's context without MEMALLOC, or `sc.gfp` forbidding its class.
    bad_context: AtomicBool,
}

impl Cache {
    fn new(name: &'static str, class: ReclaimClass) -> Arc<Cache> {
        Arc::new(Cache {
            name,
            class,
            chunks: Mutex::new(Vec::new()),
            counts: AtomicUsize::new(0),
            scans: AtomicUsize::new(0),
            bad_context: AtomicBool::new(false),
        })
    }

    /// Adds chunks until the limit refuses one (NORECLAIM: the filler does not reclaim itself).
    fn fill(&self, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match ctxalloc::alloc_with(chunk(), Gfp::NORECLAIM | Gfp::NOWARN) {
                Ok(p) => self.chunks.lock().unwrap().push(p.as_ptr() as usize),
                Err(_) => break,
            }
            n += 1;
        }
        n
    }

    fn len(&self) -> usize {
        self.chunks.lock().unwrap().len()
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
        // Never block: the thread holding the lock may be the one reclaiming (the workload
        // below pushes under the lock, and a push may allocate).
        self.chunks.try_lock().map_or(0, |c| c.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let allowed = ctxalloc::Effective::new(sc.gfp, Gfp::KERNEL).may_call(self.class);
        if !ctxalloc::current().contains(Gfp::MEMALLOC) || !allowed {
            self.bad_context.store(true, Ordering::Relaxed);
        }
        let Ok(mut c) = self.chunks.try_lock() else {
            return ScanResult::Stop;
        };
        let n = sc.nr_to_scan.min(c.len());
        for _ in 0..n {
            let p = c.pop().unwrap();
            // SAFETY: chunks are live blocks of `chunk()`.
            unsafe { ctxalloc::dealloc(NonNull::new(p as *mut u8).unwrap(), chunk()) };
        }
        ScanResult::Freed(n)
    }
    fn batch(&self) -> usize {
        4
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        for p in self.chunks.get_mut().unwrap().drain(..) {
            // SAFETY: chunks are live blocks of `chunk()`.
            unsafe { ctxalloc::dealloc(NonNull::new(p as *mut u8).unwrap(), chunk()) };
        }
    }
}

/// A limit of the current usage plus some bytes, removed again on drop — also when a failed
/// assertion unwinds, so that the harness can allocate its report.
// ---------------------------------------------------------------------------------------------

#[test]
fn limit_comes_from_the_environment() {
    assert_child_passes("child_limit_from_environment", &[("CTXALLOC_LIMIT", "48M")]);
}

#[test]
fn child_limit_from_environment() {
    if !is_child("child_limit_from_environment") {
        return;
    }
    assert_eq!(ctxalloc::limit(), Some(48 << 20));
}

#[test]
fn a_malformed_environment_limit_is_reported_once_and_ignored() {
    let out = assert_child_passes("child_malformed_limit", &[("CTXALLOC_LIMIT", "lots")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("ignoring CTXALLOC_LIMIT=\"lots\"").count(), 1, "{stderr}");
}

/// The shared size parser's reasons, and a limit that cannot work refused with the smallest
/// that can; `0` is no limit, as in C; sizes read as everywhere else (`64MiB`).
#[test]
fn environment_limits_are_read_strictly_and_refused_with_the_reason() {
    for (value, line) in [
        ("100kb", "ignoring CTXALLOC_LIMIT=\"100kb\": a limit of 100 KiB cannot work: the smallest is"),
        ("1.5G", "ignoring CTXALLOC_LIMIT=\"1.5G\": the unit after the number is not one of B, K, M, G, T"),
        ("99999999999999G", "ignoring CTXALLOC_LIMIT=\"99999999999999G\": the size does not fit"),
    ] {
        let out = assert_child_passes("child_malformed_limit", &[("CTXALLOC_LIMIT", value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches(line).count(), 1, "{value}: {stderr}");
    }
    let out = assert_child_passes("child_malformed_limit", &[("CTXALLOC_LIMIT", "0")]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("ignoring"), "{out:?}");
    assert_child_passes("child_limit_in_mib", &[("CTXALLOC_LIMIT", "64MiB")]);
}

#[test]
fn child_limit_in_mib() {
    if !is_child("child_limit_in_mib") {
        return;
    }
    assert_eq!(ctxalloc::limit(), Some(64 << 20));
}

/// A limit below the smallest workable one changes nothing; at it, the limit is set.
#[test]
fn a_limit_below_the_minimum_is_refused() {
    assert_child_passes("child_limit_below_the_minimum", &[]);
}

#[test]
fn child_limit_below_the_minimum() {
    if !is_child("child_limit_below_the_minimum") {
        return;
    }
    let e = ctxalloc::set_limit(ctxalloc::MIN_LIMIT - 1).unwrap_err();
    assert_eq!((e.limit, e.min), (ctxalloc::MIN_LIMIT - 1, ctxalloc::MIN_LIMIT));
    assert_eq!(ctxalloc::limit(), None);
}

#[test]
fn child_malformed_limit() {
    if !is_child("child_malformed_limit") {
        return;
    }
    assert_eq!(ctxalloc::limit(), None);
    let v: Vec<Vec<u8>> = (0..100).map(|i| vec![i as u8; 1000]).collect();
    assert_eq!(v.len(), 100);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn nofs_never_enters_an_fs_shrinker_and_noio_no_io_shrinker() {
    // No background reclaimer: it reclaims in a clean context and could empty the caches that
    // this scenario needs full (its own filtering is checked by every shrinker's `bad_context`).
    assert_child_passes("child_class_filter", &[("CTXALLOC_BACKGROUND", "off")]);
}

#[test]
fn child_class_filter() {
    if !is_child("child_class_filter") {
        return;
    }
    let fs = Cache::new("fs", ReclaimClass::Fs);
    let io = Cache::new("io", ReclaimClass::Io);
    let hf = ctxalloc::register_shrinker(fs.clone());
    let hi = ctxalloc::register_shrinker(io.clone());
    let _limit = limit_to(32 << 20);
    io.fill(4);
    fs.fill(usize::MAX);
    let (fs_counts, io_before) = (fs.counts.load(Ordering::Relaxed), io.len());

    // NOIO: neither cache may be touched; nothing else can free memory: the allocation fails.
    let r = ctxalloc::with_scope(Gfp::NOIO, || ctxalloc::alloc_with(chunk(), Gfp::NOWARN));
    assert!(r.is_err(), "only the forbidden caches could have made room");
    assert_eq!((fs.scans.load(Ordering::Relaxed), fs.counts.load(Ordering::Relaxed)), (0, fs_counts));
    assert_eq!(io.len(), io_before, "an IO shrinker ran under NOIO");

    // NOFS: the IO cache may give, the FS cache may not.
    let r = ctxalloc::with_scope(Gfp::NOFS, || ctxalloc::alloc_with(chunk(), Gfp::NOWARN));
    let p = r.expect("the IO cache made room");
    assert!(io.len() < io_before);
    assert_eq!(fs.scans.load(Ordering::Relaxed), 0, "an FS shrinker ran under NOFS");

    // No scope: the FS cache gives too.
    let q = ctxalloc::alloc_with(Layout::from_size_align(8 * CHUNK, 8).unwrap(), Gfp::NOWARN)
        .expect("FS made room");
    assert!(fs.scans.load(Ordering::Relaxed) > 0);
    assert!(!fs.bad_context.load(Ordering::Relaxed) && !io.bad_context.load(Ordering::Relaxed));
    // SAFETY: live blocks.
    unsafe {
        ctxalloc::dealloc(p, chunk());
        ctxalloc::dealloc(q, Layout::from_size_align(8 * CHUNK, 8).unwrap());
    }
    drop((hf, hi));
}

// ---------------------------------------------------------------------------------------------

#[test]
fn nofail_waits_while_another_thread_frees() {
    assert_child_passes("child_nofail_waits", &[]);
}

#[test]
fn child_nofail_waits() {
    if !is_child("child_nofail_waits") {
        return;
    }
    let held = Cache::new("held", ReclaimClass::Other); // not registered: only a thread frees it
    let freer = {
        let held = held.clone();
        thread::spawn(move || {
            wait_until(60, "a NOFAIL allocation waits", || ctxalloc::stats().nofail_waits > 0);
            held.chunks.lock().unwrap().drain(..).for_each(|p| {
                // SAFETY: live blocks of `chunk()`.
                unsafe { ctxalloc::dealloc(NonNull::new(p as *mut u8).unwrap(), chunk()) };
            });
        })
    };
    let _limit = limit_to(16 << 20);
    held.fill(usize::MAX);
    let failures = ctxalloc::stats().alloc_failures;
    // Through the global allocator, in a NOFAIL scope: more than the reserve holds.
    let v = ctxalloc::with_scope(Gfp::NOFAIL, || vec![7u8; 4 << 20]);
    assert!(v.iter().all(|&b| b == 7));
    freer.join().unwrap();
    let s = ctxalloc::stats();
    assert!(s.nofail_waits > 0 && s.alloc_failures == failures, "{s}");
    drop(v);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn nofail_under_noreclaim_fails_at_once_and_is_reported() {
    let out = assert_child_passes("child_nofail_noreclaim", &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot wait for memory"));
}

#[test]
fn child_nofail_noreclaim() {
    if !is_child("child_nofail_noreclaim") {
        return;
    }
    let held = Cache::new("held", ReclaimClass::Other);
    let _limit = limit_to(8 << 20);
    held.fill(usize::MAX);
    let r = ctxalloc::with_scope(Gfp::NORECLAIM, || {
        ctxalloc::alloc_with(Layout::from_size_align(1 << 20, 8).unwrap(), Gfp::NOFAIL)
    });
    assert!(r.is_err());
    assert_eq!(ctxalloc::stats().failures(Cause::NofailDenied), 1);
    drop(held);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn usage_never_exceeds_the_limit_under_four_threads_with_shrinkers() {
    assert_child_passes("child_four_threads", &[]);
}

#[test]
fn child_four_threads() {
    if !is_child("child_four_threads") {
        return;
    }
    let caches = [
        Cache::new("t-fs", ReclaimClass::Fs),
        Cache::new("t-io", ReclaimClass::Io),
        Cache::new("t-other", ReclaimClass::Other),
    ];
    let handles: Vec<_> = caches.iter().map(|c| ctxalloc::register_shrinker(c.clone())).collect();
    let guard = limit_to(40 << 20);
    let limit = guard.0;
    let over = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let caches = caches.clone();
            let over = over.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(t + 1);
                let mut mine: Vec<(NonNull<u8>, Layout)> = Vec::with_capacity(64);
                for _ in 0..20_000 {
                    let scope = [Gfp::KERNEL, Gfp::NOFS, Gfp::NOIO][rng.below(3) as usize];
                    let size = [48usize, 700, 9000, CHUNK][rng.below(4) as usize];
                    let l = Layout::from_size_align(size, 8).unwrap();
                    let r = ctxalloc::with_scope(scope, || ctxalloc::alloc_with(l, Gfp::NOWARN));
                    if let Ok(p) = r {
                        if size == CHUNK && rng.below(2) == 0 {
                            caches[rng.below(3) as usize].chunks.lock().unwrap().push(p.as_ptr() as usize);
                        } else if mine.len() < 64 {
                            mine.push((p, l));
                        } else {
                            // SAFETY: a live block of `l`.
                            unsafe { ctxalloc::dealloc(p, l) };
                        }
                    }
                    if ctxalloc::usage() > limit {
                        over.fetch_add(1, Ordering::Relaxed);
                    }
                    if rng.below(3) == 0 {
                        if let Some((p, l)) = mine.pop() {
                            // SAFETY: a live block of `l`.
                            unsafe { ctxalloc::dealloc(p, l) };
                        }
                    }
                }
                for (p, l) in mine {
                    // SAFETY: live blocks.
                    unsafe { ctxalloc::dealloc(p, l) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = ctxalloc::stats();
    assert_eq!(over.load(Ordering::Relaxed), 0, "usage went over the limit\n{s}");
    assert!(s.reclaim_rounds > 0 || s.background_passes > 0, "the workload never reached the limit\n{s}");
    assert!(caches.iter().all(|c| !c.bad_context.load(Ordering::Relaxed)));
    drop(guard);
    drop(handles);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn background_reclaim_brings_usage_down() {
    assert_child_passes("child_background", &[]);
}

#[test]
fn child_background() {
    if !is_child("child_background") {
        return;
    }
    let cache = Cache::new("bg", ReclaimClass::Fs);
    let h = ctxalloc::register_shrinker(cache.clone());
    let guard = limit_to(32 << 20);
    let limit = guard.0;
    // Fill past the low watermark: the background reclaimer wakes and shrinks the cache (in a
    // clean context, so an FS shrinker is fine) while this thread does nothing.
    let filled = cache.fill(usize::MAX);
    wait_until(60, "background reclaim ran", || {
        ctxalloc::stats().background_passes > 0 && cache.len() < filled
    });
    wait_until(60, "usage below the low watermark", || ctxalloc::usage() < limit - (2 << 20));
    assert!(!cache.bad_context.load(Ordering::Relaxed));
    drop(guard);
    drop(h);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn dropping_a_shrinker_handle_waits_for_the_scan_in_flight() {
    assert_child_passes("child_handle_waits", &[]);
}

#[test]
fn child_handle_waits() {
    if !is_child("child_handle_waits") {
        return;
    }
    struct Slow {
        in_scan: AtomicBool,
        release: AtomicBool,
        dropped: Arc<AtomicBool>,
        late: AtomicBool,
    }
    impl Shrinker for Slow {
        fn class(&self) -> ReclaimClass {
            ReclaimClass::Other
        }
        fn count(&self, _: &ShrinkControl) -> usize {
            1000
        }
        fn scan(&self, _: &mut ShrinkControl) -> ScanResult {
            self.in_scan.store(true, Ordering::SeqCst);
            wait_until(60, "the test releases the scan", || self.release.load(Ordering::SeqCst));
            if self.dropped.load(Ordering::SeqCst) {
                self.late.store(true, Ordering::SeqCst); // the handle's drop returned mid-scan
            }
            ScanResult::Stop
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let slow = Arc::new(Slow {
        in_scan: AtomicBool::new(false),
        release: AtomicBool::new(false),
        dropped: dropped.clone(),
        late: AtomicBool::new(false),
    });
    let handle = ctxalloc::register_shrinker(slow.clone());
    let reclaimer = thread::spawn(|| ctxalloc::reclaim(1 << 20));
    wait_until(60, "the scan started", || slow.in_scan.load(Ordering::SeqCst));
    let started = Arc::new(AtomicBool::new(false));
    let dropper = {
        let (started, dropped) = (started.clone(), dropped.clone());
        thread::spawn(move || {
            started.store(true, Ordering::SeqCst);
            drop(handle);
            dropped.store(true, Ordering::SeqCst);
        })
    };
    wait_until(60, "the dropper started", || started.load(Ordering::SeqCst));
    for _ in 0..1000 {
        thread::yield_now(); // give a wrong `drop` every chance to return early
    }
    slow.release.store(true, Ordering::SeqCst);
    reclaimer.join().unwrap();
    dropper.join().unwrap();
    assert!(!slow.late.load(Ordering::SeqCst), "unregistering returned while a scan was running");
    assert!(dropped.load(Ordering::SeqCst));
}
