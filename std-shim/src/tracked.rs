//! `TrackedMutex`: a mutex the reclaim-order checker knows about, for locks that carry no scope
//! (with the `lockcheck` feature; without it, a plain mutex with a name).

use crate::CORE;
use ctxalloc_core::LockClass;
use std::fmt;
use std::ops::{Deref, DerefMut};
#[cfg(feature = "lockcheck")]
use std::panic::Location;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

/// A lock the reclaim-order checker knows about: [`TrackedMutex`] and
/// [`ScopedMutex`](crate::ScopedMutex).
pub trait Tracked {
    /// The checker's record of this lock.
    fn lock_class(&self) -> &LockClass;
}

/// The checker's hold on one tracked lock: taken *before* the lock is waited for (so a
/// shrinker about to deadlock is reported first), given back when dropped.
pub(crate) struct Track {
    #[cfg(feature = "lockcheck")]
    class: *const LockClass,
}

impl Track {
    /// Tells the checker this thread is taking `class`'s lock.
    #[cfg_attr(feature = "lockcheck", track_caller)]
    #[inline]
    pub(crate) fn before(class: &LockClass) -> Track {
        #[cfg(feature = "lockcheck")]
        {
            CORE.lock_acquire(class, Location::caller());
            Track { class }
        }
        #[cfg(not(feature = "lockcheck"))]
        {
            let _ = (class, &CORE);
            Track {}
        }
    }

    /// No lock to track (a lock the checker does not follow).
    #[inline]
    pub(crate) fn none() -> Track {
        Track {
            #[cfg(feature = "lockcheck")]
            class: std::ptr::null(),
        }
    }
}

impl Drop for Track {
    #[inline]
    fn drop(&mut self) {
        #[cfg(feature = "lockcheck")]
        if !self.class.is_null() {
            // SAFETY: the lock (and its class) outlives every guard of it, and so this.
            CORE.lock_release(unsafe { &*self.class });
        }
    }
}

/// A mutex for state a shrinker needs, whose holders allocate *without* a scope of their own
/// making — the lock the reclaim-order checker is for. With the `lockcheck` feature, holding it
/// across an allocation that may reclaim from a shrinker that takes it is reported once, with
/// the lock, the shrinker and the allocation, even if memory is plentiful.
///
/// ```
/// use ctxalloc::{Gfp, TrackedMutex};
/// let index = TrackedMutex::new(Vec::<u64>::new(), "index");
/// {
///     let mut i = index.lock();
///     let _nofs = ctxalloc::scope(Gfp::NOFS); // what makes allocating here safe
///     i.push(7);
/// }
/// assert_eq!(index.lock().len(), 1);
/// assert_eq!(index.name(), "index");
/// ```
pub struct TrackedMutex<T: ?Sized> {
    class: LockClass,
    inner: Mutex<T>,
}

impl<T> TrackedMutex<T> {
    /// A mutex holding `value`, called `name` in reports.
    pub const fn new(value: T, name: &'static str) -> Self {
        TrackedMutex { class: LockClass::new(name), inner: Mutex::new(value) }
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> TrackedMutex<T> {
    /// The lock's name.
    pub fn name(&self) -> &'static str {
        self.class.name()
    }

    /// Takes the lock, blocking. Poisoning is not propagated.
    #[cfg_attr(feature = "lockcheck", track_caller)]
    pub fn lock(&self) -> TrackedMutexGuard<'_, T> {
        let track = Track::before(&self.class);
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        TrackedMutexGuard { guard, _track: track }
    }

    /// Takes the lock if it is free. A shrinker that only tries still counts as taking it for
    /// the checker: it cannot deadlock, but it can never free anything for the lock's holder.
    #[cfg_attr(feature = "lockcheck", track_caller)]
    pub fn try_lock(&self) -> Option<TrackedMutexGuard<'_, T>> {
        let track = Track::before(&self.class);
        let guard = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        Some(TrackedMutexGuard { guard, _track: track })
    }

    /// The value, through a unique reference (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> Tracked for TrackedMutex<T> {
    fn lock_class(&self) -> &LockClass {
        &self.class
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for TrackedMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedMutex").field("name", &self.name()).field("inner", &&self.inner).finish()
    }
}

/// The guard of a [`TrackedMutex`]. Field order is drop order: the lock is released, then
/// the checker told.
#[must_use = "the lock is released when the guard drops"]
pub struct TrackedMutexGuard<'a, T: ?Sized> {
    guard: MutexGuard<'a, T>,
    _track: Track,
}

impl<T: ?Sized> Deref for TrackedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for TrackedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
