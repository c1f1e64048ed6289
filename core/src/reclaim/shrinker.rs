//! The shrinker interface (R4): a cache that can give memory back when asked.

use crate::gfp::{Gfp, ReclaimClass};

/// A cache the allocator may ask to free objects when memory is short.
///
/// Reclaim calls [`count`](Shrinker::count), then [`scan`](Shrinker::scan) in batches of
/// [`batch`](Shrinker::batch) objects, on whichever thread is reclaiming: a thread whose
/// allocation hit the limit (direct reclaim) or the background reclaimer. Both run it with the
/// MEMALLOC context set, so allocations the shrinker makes never recurse into reclaim and may use
/// the emergency reserve.
///
/// The rules (the kernel's, R4.1–R4.6, plus one it lacks):
///
/// * A shrinker of class [`ReclaimClass::Fs`] is never called — neither `count` nor `scan` —
///   on behalf of an allocation inside a NOFS (or NOIO) scope; one of class
///   [`ReclaimClass::Io`] never inside a NOIO scope. The work it would have done is deferred and
///   handed to the next reclaim that may call it. A shrinker therefore may take any lock that
///   code holding the matching scope could hold.
/// * `count` returns how many objects could be freed now; 0 means "skip me". It must not block:
///   read a counter, or try the cache's lock and return 0 if it is held. The thread reclaiming
///   may be the one holding that lock — any code that allocates while holding it (a `Vec::push`
///   under the lock is enough) reclaims with the lock held, and a scope excludes only the `Fs`
///   and `Io` classes.
/// * `scan` frees up to `sc.nr_to_scan` objects and returns how many it freed, or
///   [`ScanResult::Stop`] to end its part of this reclaim pass (say, when a trylock fails). It
///   may lower `sc.nr_scanned` if it looked at fewer objects.
/// * `sc.gfp` is the effective context of the allocation being served.
///
/// ```
/// use ctxalloc_core::{Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// struct Cache(AtomicUsize); // stands for a real cache's object count
/// impl Shrinker for Cache {
///     fn name(&self) -> &str { "example-cache" }
///     fn class(&self) -> ReclaimClass { ReclaimClass::Fs }
///     fn count(&self, _: &ShrinkControl) -> usize { self.0.load(Ordering::Relaxed) }
///     fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
///         let n = sc.nr_to_scan.min(self.0.load(Ordering::Relaxed));
///         self.0.fetch_sub(n, Ordering::Relaxed);
///         ScanResult::Freed(n)
///     }
/// }
/// let c = Cache(AtomicUsize::new(300));
/// let mut sc = ShrinkControl::new(Gfp::KERNEL, 128);
/// assert_eq!(c.scan(&mut sc), ScanResult::Freed(128));
/// ```
pub trait Shrinker: Send + Sync {
    /// The shrinker's name, for reports and statistics.
    fn name(&self) -> &str {
        "shrinker"
    }

    /// Which locks it may need, and so which scopes forbid calling it.
    fn class(&self) -> ReclaimClass;

    /// Objects that could be freed now; 0 to be skipped.
    fn count(&self, sc: &ShrinkControl) -> usize;

    /// Frees up to `sc.nr_to_scan` objects.
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult;

    /// How costly an object is to recreate (the kernel's `seeks`, default 2): a higher value
    /// means a gentler scan. 0 means "scan half of what is freeable".
    fn seeks(&self) -> u32 {
        2
    }

    /// Objects per `scan` call (default 128).
    fn batch(&self) -> usize {
        128
    }
}

/// What reclaim tells a shrinker, and what the shrinker tells back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShrinkControl {
    /// The effective context of the allocation being served (a clean context for background
    /// reclaim).
    pub gfp: Gfp,
    /// Objects to scan in this call.
    pub nr_to_scan: usize,
    /// Objects scanned; preset to `nr_to_scan`, lowered by a shrinker that looked at fewer.
    pub nr_scanned: usize,
}

impl ShrinkControl {
    /// A control for scanning `nr_to_scan` objects on behalf of `gfp`.
    pub const fn new(gfp: Gfp, nr_to_scan: usize) -> ShrinkControl {
        ShrinkControl { gfp, nr_to_scan, nr_scanned: nr_to_scan }
    }
}

/// The outcome of one [`Shrinker::scan`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanResult {
    /// This many objects were freed.
    Freed(usize),
    /// Nothing more can be done in this pass (the kernel's `SHRINK_STOP`).
    Stop,
}
