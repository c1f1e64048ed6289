//! `Flagged(gfp)`: the process's allocator as an `allocator_api2` allocator that adds per-call
//! flags to every allocation it makes — for the collections that take an allocator parameter.

use crate::CORE;
use allocator_api2::alloc::{AllocError, Allocator};
use ctxalloc_core::Gfp;
use std::alloc::Layout;
use std::ptr::{self, NonNull};

/// An allocator handle whose allocations carry `Gfp` flags, united with the thread's context word
/// when memory is needed. Everything it allocates can be freed by any ctxalloc handle (and the
/// other way round).
///
/// ```
/// use allocator_api2::vec::Vec;
/// use ctxalloc::{Flagged, Gfp};
/// // A vector whose growth never enters a filesystem shrinker and never reports a failure.
/// let mut v = Vec::new_in(Flagged(Gfp::NOFS | Gfp::NOWARN));
/// v.extend_from_slice(&[1u8, 2, 3]);
/// assert_eq!(v.len(), 3);
/// // A fallible reservation: MAYFAIL makes a big request fail instead of waiting for ever.
/// let mut big: Vec<u8, _> = Vec::new_in(Flagged(Gfp::MAYFAIL));
/// assert!(big.try_reserve(1 << 20).is_ok());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flagged(pub Gfp);

impl Flagged {
    /// Allocates `layout` with this handle's flags plus `extra`.
    #[track_caller]
    fn allocate_with(&self, layout: Layout, extra: Gfp) -> Result<NonNull<[u8]>, AllocError> {
        let p = CORE.alloc_with(layout, self.0 | extra).map_err(|_| AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }
}

// SAFETY: blocks are live until deallocated, fit their layouts, and any handle frees any block
// (all state is the process's allocator); copies of a `Flagged` are interchangeable.
unsafe impl Allocator for Flagged {
    #[track_caller]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_with(layout, Gfp::KERNEL)
    }

    #[track_caller]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        self.allocate_with(layout, Gfp::ZERO)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { CORE.dealloc(ptr.as_ptr(), layout) }
    }

    #[track_caller]
    unsafe fn grow(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract.
        unsafe { self.change(ptr, old, new, Gfp::KERNEL) }
    }

    #[track_caller]
    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract; ZERO clears the bytes beyond the old size.
        unsafe { self.change(ptr, old, new, Gfp::ZERO) }
    }

    #[track_caller]
    unsafe fn shrink(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the caller's contract.
        unsafe { self.change(ptr, old, new, Gfp::KERNEL) }
    }
}

impl Flagged {
    /// Grows or shrinks a block: for the same alignment through `realloc_with` (in place or by
    /// remap when it can), otherwise allocate, copy, free. With ZERO the bytes beyond the old
    /// size read as zero.
    ///
    /// # Safety
    /// `ptr` is a live block of `old`.
    #[track_caller]
    unsafe fn change(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        extra: Gfp,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.align() == old.align() {
            // SAFETY: the caller's contract; on failure the old block is untouched.
            let p = unsafe { CORE.realloc_gfp(ptr.as_ptr(), old, new.size(), self.0 | extra) };
            return Ok(NonNull::slice_from_raw_parts(NonNull::new(p).ok_or(AllocError)?, new.size()));
        }
        let p = self.allocate_with(new, extra)?;
        // SAFETY: both blocks are live and distinct; copy what both hold, then free the old.
        unsafe {
            ptr::copy_nonoverlapping(ptr.as_ptr(), p.cast::<u8>().as_ptr(), old.size().min(new.size()));
            CORE.dealloc(ptr.as_ptr(), old);
        }
        Ok(p)
    }
}
