//! Mempools: a reserve of preallocated elements that guarantees forward progress when the
//! allocator cannot (the kernel's `mm/mempool.c`, rules R3.1–R3.10).
//!
//! ## An allocation, step by step (R3.2–R3.5)
//!
//! 1. The request's flags gain NOMEMALLOC (a pool never touches the global emergency reserve,
//!    even in a MEMALLOC scope), NORETRY (the backend never waits for ever: the pool is the
//!    fallback) and NOWARN.
//! 2. A *cheap* backend attempt: NORECLAIM added, so no shrinker runs and nothing waits.
//! 3. Failing that, an element from the reserve (LIFO).
//! 4. The reserve empty and the first attempt cheap: one backend attempt at full strength
//!    (direct reclaim allowed, still NORETRY).
//! 5. A caller that may not wait (NORECLAIM in its effective context) gets `None`. Any other
//!    sleeps until an element is given back (at most 5 s, then retries from step 2): a sleeping
//!    `alloc` never returns `None`.
//!
//! `free` gives the element back to the reserve while it holds fewer than `min_nr` (waking
//! sleepers), otherwise to the backend. Forward progress holds as in the kernel (R3.10): provided
//! every element handed out is eventually freed, and freeing it does not depend on another
//! element of the same pool, every sleeping `alloc` completes.

mod reserve;

use crate::gfp::Gfp;
use crate::sync::Ordering;
use crate::{AllocError, Core, Platform};
use core::alloc::Layout;
use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;
use reserve::{Reserve, Take};

/// How long a sleeping `alloc` waits before it tries the backend again (R3.5).
pub const WAIT_NS: u64 = 5_000_000_000;

/// A pool of `min_nr` preallocated elements of one layout, drawn on only when the allocator
/// fails.
///
/// ```
/// use ctxalloc_core::{mock::MockPlatform, Core, Gfp, Mempool};
/// use core::alloc::Layout;
/// let core = Core::new(MockPlatform::new(16 << 20));
/// let pool = Mempool::new(&core, Layout::new::<[u64; 8]>(), 2).unwrap();
/// assert_eq!(pool.curr_nr(), 2);
/// let e = pool.alloc(Gfp::NOIO).unwrap(); // from the allocator: the reserve is untouched
/// assert_eq!(pool.curr_nr(), 2);
/// unsafe { pool.free(e) };
/// ```
///
/// Shared by every thread that uses it: the reserve has its own lock (see `reserve.rs`), the rest
/// is read-only.
pub struct Mempool<'c, P: Platform> {
    core: &'c Core<P>,
    /// The caller's layout (`layout()`).
    layout: Layout,
    /// What elements are allocated as: the caller's layout grown to hold the reserve's link.
    elem: Layout,
    /// The preallocated elements. Its `min` is `min_nr` (at least 1).
    reserve: Reserve,
}

// SAFETY: the reserve's elements are plain memory owned by the pool, handed out whole; the
// reserve is synchronised by its lock and atomics.
unsafe impl<P: Platform> Sync for Mempool<'_, P> {}
// SAFETY: as above.
unsafe impl<P: Platform> Send for Mempool<'_, P> {}

impl<'c, P: Platform> Mempool<'c, P> {
    /// Creates a pool of `layout` and preallocates `min_nr` elements, in the calling thread's
    /// context, or fails whole and frees what it took (R3.1). A pool of 0 keeps one element (as
    /// the kernel does since 2025): a sleeping `alloc` needs something to wait for.
    ///
    /// # Errors
    /// [`AllocError`] if the preallocation fails.
    #[track_caller]
    pub fn new(core: &'c Core<P>, layout: Layout, min_nr: usize) -> Result<Self, AllocError> {
        let elem = Layout::from_size_align(
            layout.size().max(size_of::<usize>()),
            layout.align().max(align_of::<usize>()),
        )
        .map_err(|_| AllocError)?;
        let pool = Mempool { core, layout, elem, reserve: Reserve::new(min_nr.max(1)) };
        for _ in 0..min_nr.max(1) {
            let e = core.alloc_with(elem, Gfp::KERNEL)?; // `pool`'s drop frees the others
                                                         // SAFETY: a fresh element of the pool's layout; the reserve is short of `min`.
            unsafe { pool.reserve.give(e, || pool.relax()) };
        }
        Ok(pool)
    }

    /// The layout the pool serves.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Elements in the reserve now.
    pub fn curr_nr(&self) -> usize {
        self.reserve.len()
    }

    fn relax(&self) {
        self.core.platform().relax();
    }

    /// Allocates an element, following the steps in the module documentation. `None` only for a
    /// caller that may not wait (NORECLAIM in its effective context) once the reserve is empty.
    /// `Gfp::ZERO` zeroes the element, also one from the reserve.
    #[track_caller]
    pub fn alloc(&self, gfp: Gfp) -> Option<NonNull<u8>> {
        let full = gfp | Gfp::NOMEMALLOC | Gfp::NORETRY | Gfp::NOWARN;
        // Step 2, the common case: it succeeds without the context word being read.
        if let Ok(e) = self.core.alloc_with(self.elem, full | Gfp::NORECLAIM) {
            return Some(e);
        }
        let may_wait = self.core.effective(full).may_wait();
        // A caller that may not wait already made its full-strength attempt: the cheap one.
        let mut tried_full = !may_wait;
        loop {
            match self.reserve.take(tried_full && may_wait, || self.relax()) {
                Take::Element(e) => {
                    if gfp.contains(Gfp::ZERO) {
                        // SAFETY: the element is ours, `elem.size()` bytes.
                        unsafe { e.as_ptr().write_bytes(0, self.elem.size()) };
                    }
                    self.core.counters.mempool_reserve_uses.fetch_add(1, Ordering::Relaxed);
                    return Some(e);
                }
                Take::Empty(_) if !may_wait => return None,
                Take::Empty(_) if !tried_full => tried_full = true,
                Take::Empty(ticket) => {
                    self.core.counters.mempool_waits.fetch_add(1, Ordering::Relaxed);
                    self.core.platform().wait(&self.reserve.returned, ticket, WAIT_NS);
                    self.reserve.stop_waiting(|| self.relax());
                }
            }
            // Step 4 (once), or after a wait: the allocator at full strength.
            if let Ok(e) = self.core.alloc_with(self.elem, full) {
                return Some(e);
            }
        }
    }

    /// An element from the reserve only; never calls the allocator, never sleeps (R3.8).
    pub fn alloc_preallocated(&self) -> Option<NonNull<u8>> {
        match self.reserve.take(false, || self.relax()) {
            Take::Element(e) => Some(e),
            Take::Empty(_) => None,
        }
    }

    /// Frees an element: back to the reserve while it holds fewer than `min_nr`, waking
    /// sleepers; otherwise to the allocator (R3.6).
    ///
    /// # Safety
    /// `e` came from this pool's `alloc` (or `alloc_preallocated`) and is not used afterwards.
    pub unsafe fn free(&self, e: NonNull<u8>) {
        if self.reserve.may_want() {
            // SAFETY: an element of this pool, now ours.
            match unsafe { self.reserve.give(e, || self.relax()) } {
                Some(true) => return self.core.platform().wake_all(&self.reserve.returned),
                Some(false) => return,
                None => {}
            }
        }
        // SAFETY: allocated by this core with `elem`.
        unsafe { self.core.dealloc(e.as_ptr(), self.elem) };
    }

    /// The number of elements the pool keeps.
    pub fn min_nr(&self) -> usize {
        self.reserve.min()
    }

    /// Changes `min_nr` (R3.9): shrinking frees the surplus at once; growing allocates what it
    /// can now, in the calling thread's context, and lets later frees fill the rest. Never fails.
    #[track_caller]
    pub fn resize(&self, min_nr: usize) {
        let min = min_nr.max(1);
        self.reserve.set_min(min, || self.relax());
        while let Some(e) = self.reserve.pop_surplus(true, || self.relax()) {
            // SAFETY: allocated by this core with `elem`, no longer in the reserve.
            unsafe { self.core.dealloc(e.as_ptr(), self.elem) };
        }
        for _ in self.reserve.len()..min {
            let Ok(e) = self.core.alloc_with(self.elem, Gfp::NOWARN) else { break };
            // SAFETY: a fresh element of the pool's layout.
            unsafe { self.free(e) };
        }
    }

    /// Moves `value` into an element; the box gives the element back to the pool on drop.
    /// `Err(value)` when [`alloc`](Self::alloc) returns `None`.
    ///
    /// # Panics
    /// If `T` does not fit the pool's layout.
    #[track_caller]
    pub fn boxed<T>(&self, value: T, gfp: Gfp) -> Result<PoolBox<'_, 'c, P, T>, T> {
        let t = Layout::new::<T>();
        assert!(
            t.size() <= self.elem.size() && t.align() <= self.elem.align(),
            "a {t:?} does not fit a pool of {:?}",
            self.layout
        );
        match self.alloc(gfp - Gfp::ZERO) {
            Some(e) => {
                let p = e.cast::<T>();
                // SAFETY: the element is large and aligned enough for a `T`, and ours.
                unsafe { p.as_ptr().write(value) };
                Ok(PoolBox { pool: self, ptr: p, _owns: PhantomData })
            }
            None => Err(value),
        }
    }
}

impl<P: Platform> Drop for Mempool<'_, P> {
    fn drop(&mut self) {
        while let Some(e) = self.reserve.pop_surplus(false, || self.relax()) {
            // SAFETY: allocated by this core with `elem`, no longer in the reserve.
            unsafe { self.core.dealloc(e.as_ptr(), self.elem) };
        }
    }
}

/// A value in a mempool element; dropping it drops the value and frees the element to its pool.
pub struct PoolBox<'p, 'c, P: Platform, T> {
    pool: &'p Mempool<'c, P>,
    ptr: NonNull<T>,
    _owns: PhantomData<T>,
}

// SAFETY: a `PoolBox` owns its `T` like a `Box`; the pool is `Sync`.
unsafe impl<P: Platform, T: Send> Send for PoolBox<'_, '_, P, T> {}
// SAFETY: as above.
unsafe impl<P: Platform, T: Sync> Sync for PoolBox<'_, '_, P, T> {}

impl<P: Platform, T> PoolBox<'_, '_, P, T> {
    /// Takes the value out, freeing the element.
    pub fn into_inner(this: Self) -> T {
        let this = ManuallyDrop::new(this);
        // SAFETY: the value is initialised and read once; the element is freed right after and
        // `this` is never dropped.
        unsafe {
            let v = this.ptr.as_ptr().read();
            this.pool.free(this.ptr.cast());
            v
        }
    }
}

impl<P: Platform, T> Deref for PoolBox<'_, '_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: initialised and owned by the box.
        unsafe { self.ptr.as_ref() }
    }
}

impl<P: Platform, T> DerefMut for PoolBox<'_, '_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: initialised and owned by the box; `&mut self` is unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<P: Platform, T> Drop for PoolBox<'_, '_, P, T> {
    fn drop(&mut self) {
        // SAFETY: the value is initialised and dropped once; then its element goes back.
        unsafe {
            self.ptr.as_ptr().drop_in_place();
            self.pool.free(self.ptr.cast());
        }
    }
}
