//! Mempools whose every call runs between the platform's `enter` and `leave`.

use crate::{KernelAlloc, Platform, Region};
use core::alloc::Layout;
use core::mem::ManuallyDrop;
use core::ptr::NonNull;
use ctxalloc_core::{AllocError, Gfp, Mempool};

/// A [`Mempool`] over a [`KernelAlloc`]: the same forward-progress guarantee, with each call
/// bracketed by the platform's `enter`/`leave` as the allocator's own entry points are (the
/// pool allocates from this CPU's heap). In atomic context ([`Platform::in_atomic`])
/// [`alloc`](Self::alloc) returns a reserved element or `None` and never waits.
///
/// ```
/// # use ctxalloc_kernel::*;
/// # struct M; static CPUS: PerCpu<1> = PerCpu::new();
/// # unsafe impl Platform for M {
/// #     fn context(&self) -> *const ThreadCtx { CPUS.get(0) }
/// #     fn now_ns(&self) -> u64 { 0 }
/// #     fn report(&self, _: &str) {}
/// # }
/// # static HEAP: KernelAlloc<M> = KernelAlloc::new(M);
/// # let region = Box::leak(vec![0u8; 8 << 20].into_boxed_slice());
/// # unsafe { HEAP.init(region.as_mut_ptr(), region.len()) };
/// let pool = HEAP.mempool(core::alloc::Layout::new::<[u8; 1500]>(), 4).unwrap();
/// let packet = pool.alloc(Gfp::KERNEL).unwrap();
/// unsafe { pool.free(packet) };
/// assert_eq!(pool.curr_nr(), 4);
/// ```
pub struct KernelMempool<'a, P: Platform> {
    alloc: &'a KernelAlloc<P>,
    /// Dropped inside `enter`/`leave` (it frees its reserve).
    pool: ManuallyDrop<Mempool<'a, Region<P>>>,
}

impl<'a, P: Platform> KernelMempool<'a, P> {
    /// Creates a pool and preallocates `min_nr` elements (see [`Mempool::new`]).
    ///
    /// # Errors
    /// [`AllocError`] if the preallocation fails.
    #[track_caller]
    pub fn new(alloc: &'a KernelAlloc<P>, layout: Layout, min_nr: usize) -> Result<Self, AllocError> {
        let pool = alloc.on_cpu(|c| Mempool::new(c, layout, min_nr))?;
        Ok(KernelMempool { alloc, pool: ManuallyDrop::new(pool) })
    }

    /// An element (see [`Mempool::alloc`]).
    #[track_caller]
    pub fn alloc(&self, gfp: Gfp) -> Option<NonNull<u8>> {
        self.alloc.on_cpu(|_| self.pool.alloc(gfp))
    }

    /// An element from the reserve only; never calls the allocator, never waits.
    pub fn alloc_preallocated(&self) -> Option<NonNull<u8>> {
        self.pool.alloc_preallocated()
    }

    /// Frees an element (see [`Mempool::free`]).
    ///
    /// # Safety
    /// `e` came from this pool and is not used afterwards.
    pub unsafe fn free(&self, e: NonNull<u8>) {
        // SAFETY: forwarded.
        self.alloc.on_cpu(|_| unsafe { self.pool.free(e) });
    }

    /// Elements in the reserve now.
    pub fn curr_nr(&self) -> usize {
        self.pool.curr_nr()
    }

    /// The number of elements the pool keeps.
    pub fn min_nr(&self) -> usize {
        self.pool.min_nr()
    }

    /// Changes `min_nr` (see [`Mempool::resize`]).
    #[track_caller]
    pub fn resize(&self, min_nr: usize) {
        self.alloc.on_cpu(|_| self.pool.resize(min_nr));
    }

    /// The layout the pool serves.
    pub fn layout(&self) -> Layout {
        self.pool.layout()
    }
}

impl<P: Platform> Drop for KernelMempool<'_, P> {
    fn drop(&mut self) {
        // SAFETY: dropped once, here; the field is not used afterwards.
        self.alloc.on_cpu(|_| unsafe { ManuallyDrop::drop(&mut self.pool) });
    }
}
