//! The memory limit, shrinkers, and reclaim on request.
//!
//! Set a limit (`set_limit`, or `CTXALLOC_LIMIT=512M` in the environment), register the
//! program's caches as shrinkers, and mark the code that holds their locks with NOFS / NOIO
//! scopes: under pressure the allocator reclaims from exactly the caches the allocating code may
//! touch, in the background and, when that is not enough, on the allocating thread.

use crate::tracked::Tracked;
use crate::CORE;
use ctxalloc_core::{LimitError, Shrinker, ShrinkerId};
use std::ptr::NonNull;
use std::sync::Arc;

/// Sets the memory limit, in bytes.
///
/// Usage (what [`usage`](crate::usage) reports) never exceeds it. Below the limit lies an
/// emergency reserve (1/32 of the limit, 256 KiB – 64 MiB, at most half of it): plain
/// allocations stop at `limit − reserve`, NOFAIL ones may use half the reserve, the reclaim
/// context (shrinkers) all of it. Setting a limit starts the background reclaimer (unless the
/// environment says `CTXALLOC_BACKGROUND=off`). A limit below [`MIN_LIMIT`] — the reserve's
/// floor plus what a first allocation needs — is refused and changes nothing.
///
/// ```
/// ctxalloc::set_limit(1 << 30).expect("a workable limit");
/// assert_eq!(ctxalloc::limit(), Some(1 << 30));
/// let e = ctxalloc::set_limit(100 << 10).unwrap_err();
/// assert_eq!(e.min, ctxalloc::MIN_LIMIT);
/// assert_eq!(ctxalloc::limit(), Some(1 << 30));
/// ctxalloc::remove_limit();
/// ```
pub fn set_limit(bytes: usize) -> Result<(), LimitError> {
    // Refused before anything changes (the cgroup is still followed, no thread started).
    LimitError::check(bytes, MIN_LIMIT)?;
    crate::container::cgroup::forget();
    crate::platform::start_background();
    CORE.set_limit(bytes)
}

/// Removes the memory limit (and stops following the cgroup's).
///
/// ```
/// ctxalloc::remove_limit();
/// assert_eq!(ctxalloc::limit(), None);
/// ```
pub fn remove_limit() {
    crate::container::cgroup::forget();
    CORE.remove_limit();
}

/// The smallest limit [`set_limit`] accepts (see [`Core::MIN_LIMIT`](ctxalloc_core::Core::MIN_LIMIT)).
///
/// ```
/// assert!(ctxalloc::MIN_LIMIT > ctxalloc::RESERVE_FLOOR);
/// ```
pub const MIN_LIMIT: usize = ctxalloc_core::Core::<crate::platform::StdPlatform>::MIN_LIMIT;

/// The memory limit, if any.
pub fn limit() -> Option<usize> {
    CORE.limit()
}

/// Reclaims now, in a clean context, until `bytes` were given back to the operating system or
/// the shrinkers have nothing more to give (like cgroup v2's `memory.reclaim`). Returns the
/// bytes given back.
///
/// ```
/// let given = ctxalloc::reclaim(1 << 20);
/// assert!(given <= ctxalloc::stats().peak);
/// ```
pub fn reclaim(bytes: usize) -> usize {
    CORE.reclaim(bytes)
}

/// A registered shrinker: dropping it unregisters the shrinker, waiting for calls in flight
/// (so do not drop it from inside the shrinker).
#[must_use = "dropping the handle unregisters the shrinker"]
pub struct ShrinkerHandle {
    id: ShrinkerId,
    /// The registry's reference to the shrinker (`Arc::into_raw`).
    shrinker: NonNull<dyn Shrinker>,
}

// SAFETY: the handle only unregisters (any thread may) and then drops an `Arc` of a
// `Send + Sync` shrinker.
unsafe impl Send for ShrinkerHandle {}
// SAFETY: shared references to the handle give access to nothing.
unsafe impl Sync for ShrinkerHandle {}

impl ShrinkerHandle {
    /// Declares that this shrinker takes `lock` — what kernel code does with
    /// `fs_reclaim_acquire(); might_lock(); fs_reclaim_release()` at init — so that the
    /// reclaim-order checker (feature `lockcheck`) reports an allocation under the lock that
    /// could reclaim into the shrinker before memory is ever short. The checker also learns it
    /// by itself the first time the shrinker runs and takes the lock.
    ///
    /// ```
    /// use ctxalloc::{ReclaimClass, ScanResult, ShrinkControl, Shrinker, TrackedMutex};
    /// use std::sync::Arc;
    /// struct Cache(TrackedMutex<Vec<Vec<u8>>>);
    /// struct CacheShrinker(Arc<Cache>);
    /// impl Shrinker for CacheShrinker {
    ///     fn name(&self) -> &str { "cache" }
    ///     fn class(&self) -> ReclaimClass { ReclaimClass::Fs }
    ///     fn count(&self, _: &ShrinkControl) -> usize { 0 }
    ///     fn scan(&self, _: &mut ShrinkControl) -> ScanResult {
    ///         let Some(mut c) = self.0 .0.try_lock() else { return ScanResult::Stop };
    ///         c.clear();
    ///         ScanResult::Freed(0)
    ///     }
    /// }
    /// let cache = Arc::new(Cache(TrackedMutex::new(Vec::new(), "cache")));
    /// let h = ctxalloc::register_shrinker(Arc::new(CacheShrinker(cache.clone())));
    /// h.takes(&cache.0);
    /// ```
    pub fn takes<L: Tracked + ?Sized>(&self, lock: &L) {
        #[cfg(feature = "lockcheck")]
        CORE.lock_taken_by(lock.lock_class(), self.id);
        #[cfg(not(feature = "lockcheck"))]
        let _ = lock;
    }
}

impl std::fmt::Debug for ShrinkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: the registry's reference keeps the shrinker alive while the handle lives.
        let name = unsafe { self.shrinker.as_ref() }.name();
        f.debug_struct("ShrinkerHandle").field("name", &name).finish()
    }
}

impl Drop for ShrinkerHandle {
    fn drop(&mut self) {
        // SAFETY: the id of this handle, registered on the static `CORE`, unregistered once.
        unsafe { CORE.unregister_shrinker(self.id) };
        // SAFETY: from `Arc::into_raw` in `register_shrinker`; the registry no longer uses it.
        drop(unsafe { Arc::from_raw(self.shrinker.as_ptr()) });
    }
}

/// Registers a cache as a shrinker. Reclaim calls it on whichever thread is reclaiming, with
/// the MEMALLOC context set; it is never called — not even `count` — on behalf of an
/// allocation whose context forbids its [`ReclaimClass`](crate::ReclaimClass).
///
/// ```
/// use ctxalloc::{ReclaimClass, ScanResult, ShrinkControl, Shrinker};
/// use std::sync::{Arc, Mutex};
///
/// struct Cache(Mutex<Vec<Vec<u8>>>);
/// impl Shrinker for Cache {
///     fn name(&self) -> &str { "my-cache" }
///     fn class(&self) -> ReclaimClass { ReclaimClass::Fs }
///     fn count(&self, _: &ShrinkControl) -> usize {
///         self.0.try_lock().map_or(0, |c| c.len()) // never block: the holder may be reclaiming
///     }
///     fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
///         let Ok(mut c) = self.0.try_lock() else { return ScanResult::Stop };
///         let n = sc.nr_to_scan.min(c.len());
///         let keep = c.len() - n;
///         c.truncate(keep);
///         ScanResult::Freed(n)
///     }
/// }
/// let cache = Arc::new(Cache(Mutex::new(vec![vec![0; 4096]; 100])));
/// let handle = ctxalloc::register_shrinker(cache.clone());
/// // … inserting into the cache while holding its lock happens inside a NOFS scope …
/// drop(handle); // unregisters, waiting for calls in flight
/// ```
///
/// # Panics
/// If no memory can be had for the registry (a page, even at the limit).
pub fn register_shrinker(shrinker: Arc<dyn Shrinker>) -> ShrinkerHandle {
    try_register_shrinker(shrinker).expect("ctxalloc: no memory for the shrinker registry")
}

/// [`register_shrinker`] that returns `None` instead of panicking when no memory can be had
/// for the registry (the shrinker is dropped).
///
/// ```
/// # use ctxalloc::{ReclaimClass, ScanResult, ShrinkControl, Shrinker};
/// struct Nothing;
/// impl Shrinker for Nothing {
///     fn name(&self) -> &str { "nothing" }
///     fn class(&self) -> ReclaimClass { ReclaimClass::Other }
///     fn count(&self, _: &ShrinkControl) -> usize { 0 }
///     fn scan(&self, _: &mut ShrinkControl) -> ScanResult { ScanResult::Stop }
/// }
/// let handle = ctxalloc::try_register_shrinker(std::sync::Arc::new(Nothing));
/// assert!(handle.is_some());
/// ```
pub fn try_register_shrinker(shrinker: Arc<dyn Shrinker>) -> Option<ShrinkerHandle> {
    let raw = Arc::into_raw(shrinker).cast_mut();
    // SAFETY: `Arc::into_raw` is never null.
    let ptr = unsafe { NonNull::new_unchecked(raw) };
    // SAFETY: the registry's reference keeps the shrinker alive until the handle's drop has
    // unregistered it; `CORE` is a static.
    match unsafe { CORE.register_shrinker(ptr) } {
        Some(id) => {
            // Something to give back on request: memory pressure is worth watching now.
            crate::container::pressure::shrinker_registered();
            Some(ShrinkerHandle { id, shrinker: ptr })
        }
        None => {
            // SAFETY: not registered; take the reference back.
            drop(unsafe { Arc::from_raw(raw) });
            None
        }
    }
}
