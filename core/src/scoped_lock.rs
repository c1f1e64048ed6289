//! Locks that carry their scope: taking the lock enters an allocation scope on the taking
//! thread, dropping the guard leaves it — no cookie to carry (what Jan Kara asked for at LSFMM
//! 2024; the kernel has no such mechanism, disputed point 6).
//!
//! This is the `no_std` twin (a spin lock, for kernel builds); the std shim has `ScopedMutex`
//! and `ScopedRwLock` over the standard library's blocking locks. Both use the lock-tied scopes
//! of [`ScopeState::hold`](crate::ScopeState::hold), so guards may be dropped in any order.

use crate::gfp::Gfp;
use crate::sync::{SpinGuard, SpinLock};
#[cfg(not(all(loom, test)))]
use crate::{Core, Platform};
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};

/// Whatever keeps the calling thread's context word: [`Core`] does; a shim may wrap it.
///
/// # Safety
///
/// `hold` and `release` act on the calling thread's (or CPU's, with preemption off) context word
/// only, never allocate and never unwind.
pub unsafe trait ContextHolder: Sync {
    /// Opens a lock-tied scope of `flags` on the calling thread.
    fn hold(&self, flags: Gfp);
    /// Closes a lock-tied scope opened with the same `flags`.
    fn release(&self, flags: Gfp);
    /// Called while spinning for a lock.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

// SAFETY: `scope_hold`/`scope_release` touch only the calling thread's `ScopeState`.
#[cfg(not(all(loom, test)))]
unsafe impl<P: Platform> ContextHolder for Core<P> {
    #[inline]
    fn hold(&self, flags: Gfp) {
        self.scope_hold(flags);
    }
    #[inline]
    fn release(&self, flags: Gfp) {
        self.scope_release(flags);
    }
    #[inline]
    fn relax(&self) {
        self.platform().relax();
    }
}

/// A spin lock whose holder allocates inside a scope: `lock()` enters `flags` on the calling
/// thread, the guard's drop leaves it.
///
/// ```
/// use ctxalloc_core::{mock::MockPlatform, Core, Gfp, ScopedSpinLock};
/// let core = Core::new(MockPlatform::new(8 << 20));
/// let cache = ScopedSpinLock::new(&core, 0u64, Gfp::NOFS);
/// {
///     let mut c = cache.lock();
///     *c += 1; // every allocation here is NOFS: reclaim cannot need this lock
///     assert_eq!(core.current(), Gfp::NOFS);
/// }
/// assert_eq!(core.current(), Gfp::KERNEL);
/// ```
pub struct ScopedSpinLock<'h, H: ContextHolder, T> {
    /// The context holder of the threads that take the lock. Read-only.
    holder: &'h H,
    /// The scope every holder of the lock is in. Read-only.
    flags: Gfp,
    /// The lock and the value.
    lock: SpinLock<T>,
}

impl<'h, H: ContextHolder, T> ScopedSpinLock<'h, H, T> {
    /// A lock holding `value`, whose holders allocate inside `flags` (scope bits only).
    #[cfg(not(all(loom, test)))]
    pub const fn new(holder: &'h H, value: T, flags: Gfp) -> Self {
        ScopedSpinLock { holder, flags, lock: SpinLock::new(value) }
    }

    /// A lock holding `value` (loom's locks have no `const` constructor).
    #[cfg(all(loom, test))]
    pub fn new(holder: &'h H, value: T, flags: Gfp) -> Self {
        ScopedSpinLock { holder, flags, lock: SpinLock::new(value) }
    }

    /// The scope the lock carries.
    pub fn flags(&self) -> Gfp {
        self.flags
    }

    /// Takes the lock, then enters the scope.
    #[inline]
    pub fn lock(&self) -> ScopedSpinGuard<'_, 'h, H, T> {
        let guard = self.lock.lock_with(|| self.holder.relax());
        self.holder.hold(self.flags);
        ScopedSpinGuard { lock: self, guard, _not_send: PhantomData }
    }

    /// Takes the lock if it is free (a shrinker's way in), entering the scope.
    #[inline]
    pub fn try_lock(&self) -> Option<ScopedSpinGuard<'_, 'h, H, T>> {
        let guard = self.lock.try_lock()?;
        self.holder.hold(self.flags);
        Some(ScopedSpinGuard { lock: self, guard, _not_send: PhantomData })
    }
}

/// Holds a [`ScopedSpinLock`] and its scope; dropping it leaves the scope and releases the lock.
/// Not `Send`: the scope belongs to the thread that took the lock.
pub struct ScopedSpinGuard<'a, 'h, H: ContextHolder, T> {
    lock: &'a ScopedSpinLock<'h, H, T>,
    guard: SpinGuard<'a, T>,
    _not_send: PhantomData<*const ()>,
}

impl<H: ContextHolder, T> Deref for ScopedSpinGuard<'_, '_, H, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<H: ContextHolder, T> DerefMut for ScopedSpinGuard<'_, '_, H, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<H: ContextHolder, T> Drop for ScopedSpinGuard<'_, '_, H, T> {
    #[inline]
    fn drop(&mut self) {
        // The scope is left first; the lock is released when `guard` drops right after.
        self.lock.holder.release(self.lock.flags);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use core::cell::Cell;
    use loom::sync::Arc;
    use loom::thread;

    loom::thread_local! {
        /// Per-thread hold counts of NOFS and NOIO: a minimal context word.
        static HOLDS: Cell<(u32, u32)> = Cell::new((0, 0));
    }

    /// A context holder over the loom thread-local above.
    struct Tls;

    fn word() -> Gfp {
        HOLDS.with(|h| {
            let (fs, io) = h.get();
            let mut g = Gfp::KERNEL;
            if fs > 0 {
                g |= Gfp::NOFS;
            }
            if io > 0 {
                g |= Gfp::NOIO;
            }
            g
        })
    }

    // SAFETY: acts on the calling (loom) thread's counts only.
    unsafe impl ContextHolder for Tls {
        fn hold(&self, f: Gfp) {
            HOLDS.with(|h| {
                let (fs, io) = h.get();
                h.set((fs + u32::from(f.contains(Gfp::NOFS)), io + u32::from(f.contains(Gfp::NOIO))));
            });
        }
        fn release(&self, f: Gfp) {
            HOLDS.with(|h| {
                let (fs, io) = h.get();
                h.set((fs - u32::from(f.contains(Gfp::NOFS)), io - u32::from(f.contains(Gfp::NOIO))));
            });
        }
    }

    static HOLDER: Tls = Tls;

    /// Two threads take two scoped locks hand over hand (a, b, release a, release b) while
    /// updating the values: mutual exclusion holds (loom checks the cells), each thread's context
    /// is exactly the scopes of the guards it holds, and never another thread's.
    #[test]
    fn hand_over_hand_keeps_each_threads_scopes() {
        loom::model(|| {
            let a = Arc::new(ScopedSpinLock::new(&HOLDER, 0u32, Gfp::NOFS));
            let b = Arc::new(ScopedSpinLock::new(&HOLDER, 0u32, Gfp::NOIO));
            let run = {
                let (a, b) = (a.clone(), b.clone());
                move || {
                    assert_eq!(word(), Gfp::KERNEL);
                    let mut ga = a.lock();
                    *ga += 1;
                    assert_eq!(word(), Gfp::NOFS);
                    let mut gb = b.lock();
                    *gb += 1;
                    assert_eq!(word(), Gfp::NOFS | Gfp::NOIO);
                    drop(ga);
                    assert_eq!(word(), Gfp::NOIO, "b's scope outlives a's guard");
                    drop(gb);
                    assert_eq!(word(), Gfp::KERNEL);
                }
            };
            let t = thread::spawn(run.clone());
            run();
            t.join().unwrap();
            assert_eq!((*a.lock(), *b.lock()), (2, 2));
        });
    }
}
