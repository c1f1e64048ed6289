//! `ScopedMutex` and `ScopedRwLock`: the standard library's locks, carrying an allocation scope.
//! Taking the lock enters the scope on the taking thread; dropping the guard leaves it. There is
//! no cookie to carry, and guards may be dropped in any order (hand-over-hand locking): these are
//! lock-tied scopes, counted per bit, not LIFO cookies.
//!
//! Poisoning is not propagated: a panic while the lock was held does not make later `lock`
//! calls fail (the scope was left when the guard dropped during unwinding), like `parking_lot`.

use crate::tracked::{Track, Tracked};
use crate::CORE;
use ctxalloc_core::{Gfp, LockClass};
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::{
    Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError, TryLockResult,
};

/// The guard of a `try_*` that got the lock (poisoned or not); `None` if it was held.
fn acquired<G>(r: TryLockResult<G>) -> Option<G> {
    match r {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// A lock-tied scope held by the current thread; leaves it on drop. Not `Send`.
struct Held {
    flags: Gfp,
    _not_send: PhantomData<*const ()>,
}

impl Held {
    fn enter(flags: Gfp) -> Held {
        CORE.scope_hold(flags);
        Held { flags, _not_send: PhantomData }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        CORE.scope_release(self.flags);
    }
}

/// A mutex whose holder allocates inside a scope.
///
/// The blockcache pattern: the cache's shrinker takes the cache lock, so everything allocated
/// while holding it must be NOFS — said once, where the lock is declared.
///
/// ```
/// use ctxalloc::{Gfp, ScopedMutex};
/// let cache = ScopedMutex::new(Vec::<Vec<u8>>::new(), Gfp::NOFS);
/// {
///     let mut c = cache.lock();
///     assert!(ctxalloc::current().contains(Gfp::NOFS));
///     c.push(vec![0; 4096]); // NOFS: reclaim cannot call back into the cache
/// }
/// assert!(!ctxalloc::current().contains(Gfp::NOFS));
/// ```
pub struct ScopedMutex<T: ?Sized> {
    flags: Gfp,
    class: LockClass,
    inner: Mutex<T>,
}

impl<T> ScopedMutex<T> {
    /// A mutex holding `value`, whose holders allocate inside `flags` (scope bits only).
    pub const fn new(value: T, flags: Gfp) -> Self {
        Self::named(value, flags, "a ScopedMutex")
    }

    /// As [`new`](Self::new), called `name` in the reclaim-order checker's reports.
    pub const fn named(value: T, flags: Gfp, name: &'static str) -> Self {
        ScopedMutex { flags, class: LockClass::new(name), inner: Mutex::new(value) }
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> ScopedMutex<T> {
    /// The scope the lock carries.
    pub fn flags(&self) -> Gfp {
        self.flags
    }

    /// Takes the lock (blocking), then enters the scope.
    #[cfg_attr(feature = "lockcheck", track_caller)]
    pub fn lock(&self) -> ScopedMutexGuard<'_, T> {
        let track = Track::before(&self.class);
        let guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        ScopedGuard::new(guard, self.flags, track)
    }

    /// Takes the lock if it is free, entering the scope. A shrinker's way in: a shrinker must
    /// never block on a lock that an allocating thread may hold.
    #[cfg_attr(feature = "lockcheck", track_caller)]
    pub fn try_lock(&self) -> Option<ScopedMutexGuard<'_, T>> {
        let track = Track::before(&self.class);
        let guard = acquired(self.inner.try_lock())?;
        Some(ScopedGuard::new(guard, self.flags, track))
    }

    /// The value, through a unique reference (no locking, no scope).
    pub fn get_mut(&mut self) -> &mut T {
        self.inner.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> Tracked for ScopedMutex<T> {
    fn lock_class(&self) -> &LockClass {
        &self.class
    }
}

impl<T: fmt::Debug> fmt::Debug for ScopedMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedMutex").field("flags", &self.flags).field("inner", &self.inner).finish()
    }
}

/// A lock guard with the scope it holds: what `ScopedMutex` and `ScopedRwLock` hand out. Dropping
/// it leaves the scope, then releases the lock. Not `Send`: the scope belongs to this thread.
#[must_use = "the lock and its scope are released when the guard drops"]
pub struct ScopedGuard<G> {
    // Field order is drop order: the scope is left before the lock is released, and the
    // reclaim-order checker told after.
    held: Held,
    guard: G,
    _track: Track,
}

impl<G> ScopedGuard<G> {
    fn new(guard: G, flags: Gfp, track: Track) -> Self {
        ScopedGuard { held: Held::enter(flags), guard, _track: track }
    }

    /// The scope this guard holds.
    pub fn flags(&self) -> Gfp {
        self.held.flags
    }
}

impl<G: Deref> Deref for ScopedGuard<G> {
    type Target = G::Target;
    fn deref(&self) -> &G::Target {
        &self.guard
    }
}

impl<G: DerefMut> DerefMut for ScopedGuard<G> {
    fn deref_mut(&mut self) -> &mut G::Target {
        &mut self.guard
    }
}

/// The guard of a [`ScopedMutex`].
pub type ScopedMutexGuard<'a, T> = ScopedGuard<MutexGuard<'a, T>>;
/// The shared guard of a [`ScopedRwLock`].
pub type ScopedReadGuard<'a, T> = ScopedGuard<RwLockReadGuard<'a, T>>;
/// The exclusive guard of a [`ScopedRwLock`].
pub type ScopedWriteGuard<'a, T> = ScopedGuard<RwLockWriteGuard<'a, T>>;

/// A reader-writer lock whose holders — readers and writers alike — allocate inside a scope (a
/// shrinker that needs the write lock must not be entered by a reader's allocation either).
///
/// ```
/// use ctxalloc::{Gfp, ScopedRwLock};
/// let index = ScopedRwLock::new(vec![1u32, 2, 3], Gfp::NOIO);
/// let r = index.read();
/// assert_eq!(ctxalloc::current(), Gfp::NOIO); // which implies NOFS
/// assert_eq!(r.len(), 3);
/// drop(r);
/// index.write().push(4);
/// assert_eq!(ctxalloc::current(), Gfp::KERNEL);
/// ```
pub struct ScopedRwLock<T: ?Sized> {
    flags: Gfp,
    inner: RwLock<T>,
}

impl<T> ScopedRwLock<T> {
    /// A lock holding `value`, whose holders allocate inside `flags` (scope bits only).
    pub const fn new(value: T, flags: Gfp) -> Self {
        ScopedRwLock { flags, inner: RwLock::new(value) }
    }

    /// The value.
    pub fn into_inner(self) -> T {
        self.inner.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: ?Sized> ScopedRwLock<T> {
    /// The scope the lock carries.
    pub fn flags(&self) -> Gfp {
        self.flags
    }

    /// Takes the lock shared, then enters the scope.
    pub fn read(&self) -> ScopedReadGuard<'_, T> {
        let guard = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        ScopedGuard::new(guard, self.flags, Track::none())
    }

    /// Takes the lock exclusively, then enters the scope.
    pub fn write(&self) -> ScopedWriteGuard<'_, T> {
        let guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        ScopedGuard::new(guard, self.flags, Track::none())
    }

    /// Takes the lock shared if no writer holds it.
    pub fn try_read(&self) -> Option<ScopedReadGuard<'_, T>> {
        let guard = acquired(self.inner.try_read())?;
        Some(ScopedGuard::new(guard, self.flags, Track::none()))
    }

    /// Takes the lock exclusively if it is free.
    pub fn try_write(&self) -> Option<ScopedWriteGuard<'_, T>> {
        let guard = acquired(self.inner.try_write())?;
        Some(ScopedGuard::new(guard, self.flags, Track::none()))
    }
}

impl<T: fmt::Debug> fmt::Debug for ScopedRwLock<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopedRwLock").field("flags", &self.flags).field("inner", &self.inner).finish()
    }
}
