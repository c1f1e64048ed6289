//! Mempools over the process's allocator (see `ctxalloc_core::Mempool` for the algorithm).

use crate::platform::StdPlatform;
use crate::CORE;
use ctxalloc_core::{self as core_, AllocError, Gfp};
use std::alloc::Layout;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// A pool of `min_nr` preallocated elements of one layout that guarantees forward progress when
/// the allocator cannot (the kernel's `mempool_t`, rules R3.1–R3.10):
///
/// 1. a cheap attempt at the allocator (no reclaim, no waiting, never the emergency reserve);
/// 2. an element from the reserve (LIFO);
/// 3. the reserve empty: one attempt at full strength (direct reclaim);
/// 4. a caller that may not wait (`NORECLAIM`) gets `None`; any other sleeps until an element is
///    freed back (re-trying the allocator every 5 s) — a sleeping `alloc` never returns `None`.
///
/// ```
/// use ctxalloc::{Gfp, Mempool};
/// use std::alloc::Layout;
/// // Two request descriptors that writeback can always get, even when memory is exhausted.
/// let pool = Mempool::new(Layout::new::<[u64; 32]>(), 2).unwrap();
/// let a = pool.alloc(Gfp::NOIO).unwrap();
/// let b = pool.alloc(Gfp::NOIO).unwrap();
/// unsafe {
///     pool.free(a);
///     pool.free(b);
/// }
/// pool.resize(4);
/// assert_eq!(pool.min_nr(), 4);
/// ```
pub struct Mempool(core_::Mempool<'static, StdPlatform>);

impl Mempool {
    /// Creates a pool and preallocates `min_nr` elements (at least one) in the calling thread's
    /// context, or fails whole and frees what it took.
    ///
    /// # Errors
    /// [`AllocError`] if the preallocation fails.
    #[track_caller]
    pub fn new(layout: Layout, min_nr: usize) -> Result<Mempool, AllocError> {
        core_::Mempool::new(&CORE, layout, min_nr).map(Mempool)
    }

    /// Allocates an element (the steps above). `Gfp::ZERO` zeroes it, also one from the
    /// reserve. `None` only for a caller that may not wait, once the reserve is empty.
    #[track_caller]
    pub fn alloc(&self, gfp: Gfp) -> Option<NonNull<u8>> {
        self.0.alloc(gfp)
    }

    /// An element from the reserve only: never calls the allocator, never sleeps.
    pub fn alloc_preallocated(&self) -> Option<NonNull<u8>> {
        self.0.alloc_preallocated()
    }

    /// Frees an element: back to the reserve while it holds fewer than `min_nr` (waking a
    /// sleeper), otherwise to the allocator.
    ///
    /// # Safety
    /// `ptr` came from this pool and is not used afterwards.
    pub unsafe fn free(&self, ptr: NonNull<u8>) {
        // SAFETY: forwarded.
        unsafe { self.0.free(ptr) }
    }

    /// Changes `min_nr`: shrinking frees the surplus at once; growing takes what it can now and
    /// lets later frees fill the rest.
    #[track_caller]
    pub fn resize(&self, min_nr: usize) {
        self.0.resize(min_nr);
    }

    /// The number of elements the pool keeps.
    pub fn min_nr(&self) -> usize {
        self.0.min_nr()
    }

    /// Elements in the reserve now.
    pub fn curr_nr(&self) -> usize {
        self.0.curr_nr()
    }

    /// The layout the pool serves.
    pub fn layout(&self) -> Layout {
        self.0.layout()
    }
}

impl fmt::Debug for Mempool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mempool")
            .field("layout", &self.layout())
            .field("min_nr", &self.min_nr())
            .field("curr_nr", &self.curr_nr())
            .finish()
    }
}

/// A mempool of `T`s: [`alloc`](TypedMempool::alloc) moves a value into an element and returns a
/// box that gives the element back to the pool when dropped.
///
/// ```
/// use ctxalloc::{Gfp, TypedMempool};
/// struct Request { sector: u64, len: u32 }
/// let pool = TypedMempool::<Request>::new(2).unwrap();
/// let r = pool.alloc(Request { sector: 8, len: 4096 }, Gfp::NOIO).ok().unwrap();
/// assert_eq!(r.sector + u64::from(r.len), 4104);
/// drop(r); // back to the pool
/// assert_eq!(pool.curr_nr(), 2);
/// ```
pub struct TypedMempool<T> {
    pool: Mempool,
    _t: PhantomData<fn(T) -> T>,
}

impl<T> TypedMempool<T> {
    /// A pool of `min_nr` (at least one) preallocated `T`-sized elements.
    ///
    /// # Errors
    /// [`AllocError`] if the preallocation fails.
    #[track_caller]
    pub fn new(min_nr: usize) -> Result<TypedMempool<T>, AllocError> {
        Ok(TypedMempool { pool: Mempool::new(Layout::new::<T>(), min_nr)?, _t: PhantomData })
    }

    /// Moves `value` into an element. `Err(value)` only for a caller that may not wait, once
    /// the reserve is empty.
    #[track_caller]
    pub fn alloc(&self, value: T, gfp: Gfp) -> Result<PoolBox<'_, T>, T> {
        self.pool.0.boxed(value, gfp).map(PoolBox)
    }

    /// The untyped pool.
    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// Elements in the reserve now.
    pub fn curr_nr(&self) -> usize {
        self.pool.curr_nr()
    }

    /// Changes `min_nr` (see [`Mempool::resize`]).
    #[track_caller]
    pub fn resize(&self, min_nr: usize) {
        self.pool.resize(min_nr);
    }
}

/// A `T` in an element of a [`TypedMempool`]; dropping it frees the element to the pool.
pub struct PoolBox<'p, T>(core_::PoolBox<'p, 'static, StdPlatform, T>);

impl<T> PoolBox<'_, T> {
    /// Takes the value out, freeing the element.
    pub fn into_inner(this: Self) -> T {
        core_::PoolBox::into_inner(this.0)
    }
}

impl<T> Deref for PoolBox<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for PoolBox<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for PoolBox<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}
