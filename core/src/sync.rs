//! Atomics, an interior-mutability cell and a spin lock — switched to loom's under `cfg(loom)` so
//! the lock-free structures can be model-checked.
//!
//! Only the modules that loom models (`slab::remote`) are compiled under `cfg(loom)`: everything
//! else needs `const` constructors, which loom's types do not have. Loom is a dev-dependency (a
//! dependent's lockfile never lists it), so the switch is `cfg(all(loom, test))`: the library
//! that `cargo test` builds beside the test harness (for the doctests' self-dependency) stays
//! the ordinary one.

#[cfg(all(loom, test))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

#[cfg(not(all(loom, test)))]
pub(crate) use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};

#[cfg(not(all(loom, test)))]
use core::cell::UnsafeCell;
#[cfg(not(all(loom, test)))]
use core::ops::{Deref, DerefMut};

/// An array of `N` atomic words kept in *one* `UnsafeCell`: every access goes through an atomic
/// made from a pointer to its element (`AtomicUsize::from_ptr`…), and nothing else
/// reads or writes the array. Equivalent to `[AtomicUsize; N]`, except under miri, whose Stacked
/// Borrows retag of every `&Core` walks each `UnsafeCell` of the structure: the segment map's
/// 10 240 atomics made each method call on the core cost as much.
#[cfg(not(all(loom, test)))]
#[repr(transparent)]
pub(crate) struct Atomics<T, const N: usize>(UnsafeCell<[T; N]>);

// SAFETY: the elements are only ever accessed through atomics (see the type's documentation),
// which may be shared between threads.
#[cfg(not(all(loom, test)))]
unsafe impl<T, const N: usize> Sync for Atomics<T, N> {}
// SAFETY: as an array of atomics, it may move to another thread with what it holds.
#[cfg(not(all(loom, test)))]
unsafe impl<T, const N: usize> Send for Atomics<T, N> {}

#[cfg(not(all(loom, test)))]
impl<const N: usize> Atomics<usize, N> {
    /// All zero.
    pub(crate) const fn zeroed() -> Self {
        Atomics(UnsafeCell::new([0; N]))
    }

    /// Element `i`. Panics if out of bounds.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> &AtomicUsize {
        assert!(i < N);
        // SAFETY: in bounds; a `usize` has an `AtomicUsize`'s size and alignment (on every
        // target with `AtomicUsize`); the array is only accessed through such atomics, for as
        // long as `self` is borrowed.
        unsafe { AtomicUsize::from_ptr(self.0.get().cast::<usize>().add(i)) }
    }
}

#[cfg(not(all(loom, test)))]
impl<P, const N: usize> Atomics<*mut P, N> {
    /// All null.
    pub(crate) const fn null() -> Self {
        Atomics(UnsafeCell::new([core::ptr::null_mut(); N]))
    }

    /// Element `i`. Panics if out of bounds.
    #[inline(always)]
    pub(crate) fn at(&self, i: usize) -> &AtomicPtr<P> {
        assert!(i < N);
        // SAFETY: in bounds; a pointer has an `AtomicPtr`'s size and alignment; the array is
        // only accessed through such atomics, for as long as `self` is borrowed.
        unsafe { AtomicPtr::from_ptr(self.0.get().cast::<*mut P>().add(i)) }
    }
}

/// An `UnsafeCell` with loom's closure API, so that loom can check every access for data races.
#[cfg(not(all(loom, test)))]
#[repr(transparent)]
pub(crate) struct RawCell<T>(UnsafeCell<T>);

#[cfg(not(all(loom, test)))]
impl<T> RawCell<T> {
    /// A cell holding `v`.
    #[allow(dead_code)]
    pub(crate) const fn new(v: T) -> Self {
        RawCell(UnsafeCell::new(v))
    }

    /// Reads through a shared pointer to the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Writes through a mutable pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

#[cfg(all(loom, test))]
pub(crate) use loom::cell::UnsafeCell as RawCell;

/// Under loom, the spin lock is loom's mutex (same API as the `SpinLock` below), so that the
/// structures built on it (the mempool reserve) can be model-checked.
#[cfg(all(loom, test))]
pub(crate) struct SpinLock<T>(loom::sync::Mutex<T>);

#[cfg(all(loom, test))]
pub(crate) type SpinGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

#[cfg(all(loom, test))]
impl<T> SpinLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SpinLock(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock_with(&self, _relax: impl Fn()) -> SpinGuard<'_, T> {
        self.0.lock().unwrap()
    }

    pub(crate) fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        self.0.try_lock().ok()
    }
}

/// A test-and-test-and-set spin lock.
///
/// ctxalloc's locks guard only the allocator's own slow-path structures (the page heap, the
/// abandoned-page lists, the heap pool, the vmap registry). None is ever held while a shrinker
/// runs or while the caller waits, so a thread that holds one never needs another thread to make
/// progress except by releasing it; the spin is bounded by the critical sections, which are short
/// and never allocate through the global allocator.
///
/// Waiters spin for a while, then call the `relax` hook they were given (the platform's yield).
#[cfg(not(all(loom, test)))]
pub struct SpinLock<T> {
    /// `true` while held. Acquire on lock, Release on unlock.
    locked: AtomicBool,
    /// Touched only by the holder.
    value: UnsafeCell<T>,
}

// SAFETY: the lock serialises all access to `value`; `T: Send` lets the value move between the
// threads that hold the lock in turn.
#[cfg(not(all(loom, test)))]
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: owning the lock owns the value.
#[cfg(not(all(loom, test)))]
unsafe impl<T: Send> Send for SpinLock<T> {}

#[cfg(not(all(loom, test)))]
impl<T> SpinLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        SpinLock { locked: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// Acquires the lock, calling `relax` between rounds of spinning.
    #[inline]
    pub fn lock_with(&self, relax: impl Fn()) -> SpinGuard<'_, T> {
        loop {
            if !self.locked.swap(true, Ordering::Acquire) {
                return SpinGuard { lock: self };
            }
            let mut spins = 0u32;
            while self.locked.load(Ordering::Relaxed) {
                if spins < 100 {
                    core::hint::spin_loop();
                    spins += 1;
                } else {
                    relax();
                }
            }
        }
    }

    /// Acquires the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        if self.locked.swap(true, Ordering::Acquire) {
            None
        } else {
            Some(SpinGuard { lock: self })
        }
    }

    /// The protected value, for a guard that holds the lock without a `SpinGuard` (the core's
    /// counted locks).
    #[inline(always)]
    pub(crate) fn data_ptr(&self) -> *mut T {
        self.value.get()
    }

    /// Marks the lock free without a guard: for the child of `fork`, where the thread that held
    /// the lock no longer exists.
    ///
    /// # Safety
    /// No guard of this lock may be alive in the calling thread, and no other thread may exist
    /// that could hold one.
    pub unsafe fn force_unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    /// Releases a lock taken with `core::mem::forget(guard)` (the `fork` prepare handler keeps
    /// the locks held across `fork`).
    ///
    /// # Safety
    /// The calling thread must hold the lock through a forgotten guard.
    pub unsafe fn unlock_forgotten(&self) {
        self.locked.store(false, Ordering::Release);
    }
}

/// Holds a [`SpinLock`]; dropping it releases the lock.
#[cfg(not(all(loom, test)))]
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

#[cfg(not(all(loom, test)))]
impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held by this thread.
        unsafe { &*self.lock.value.get() }
    }
}

#[cfg(not(all(loom, test)))]
impl<T> DerefMut for SpinGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard proves the lock is held by this thread, and `&mut self` that no other
        // reference obtained through this guard is alive.
        unsafe { &mut *self.lock.value.get() }
    }
}

#[cfg(not(all(loom, test)))]
impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.locked.store(false, Ordering::Release);
    }
}
