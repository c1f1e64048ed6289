//! The exact-fit tier: slab-sized requests above a threshold served by [`FitHeap`] — blocks of
//! their own size, in 16-byte granules behind an 8-byte header — from spans the page heap hands
//! out like any slab page (class [`FIT_CLASS`], no owner), and from the room behind segment
//! headers that no metadata uses. Off unless the embedder turns it on
//! ([`Core::set_exact_fit`]): it packs a fixed region (a kernel's) as tightly as a list allocator
//! does, at the price of one lock for every allocation and free it serves.
//!
//! Placement: an allocation tries the spans held; with none fitting it takes a span — the
//! first run of [`FIT_SLICES`] free slices, else a shorter run in a segment already mapped
//! (what is left between slab pages near the end of a region), else a fresh segment — and tries
//! again. If no span can be had, the request goes to its size class as if the tier were off:
//! the slab's path runs reclaim, honours the context and reports, so the tier adds no reclaim
//! loop of its own.
//!
//! Frees: a block of an exact-fit span has no owner, so the slab's fast path never takes it:
//! it reaches [`free_slow`](Core::free_slow), which hands it here. The block's header and its
//! neighbour's must agree, and a block free already is reported (both cheap: they are read to
//! merge anyway). A span whose blocks are all free goes back to the page heap at once (its
//! slices stay committed, the next page of any class takes them first).
//!
//! Locking: `Core::fit` is a leaf: nothing else is taken while it is held, and nothing is
//! called out; the page heap is asked for spans, and given them back, with it released. In a
//! kernel the shim's `enter` holds off every allocating interrupt handler around each allocator
//! call, so a handler never finds the lock held on its own CPU. Ownership of the tier's state:
//! `FitHeap` (bins, bitmap, counts) and every header of a span it holds are read and written
//! under the lock only, except a live block's own size word, which its owner reads without it
//! (`usable`: only that block's allocation and free write it).

use super::page::{Page, FIT_CLASS};
use super::remote::Block;
use super::SLICE_SIZE;
use crate::fit::{BadFree, FitHeap, Freed};
use crate::gfp::Gfp;
use crate::sync::Ordering;
use crate::{Core, Platform};
use core::alloc::Layout;
use core::ptr;

/// Slices an exact-fit span takes when a run that long is free (2 MiB: half a segment, the
/// longest aligned run the header slice leaves).
const FIT_SLICES: usize = 32;
/// The largest alignment the tier serves; larger ones go to their size class.
const FIT_MAX_ALIGN: usize = 4096;

/// `p` (a block of at least `size` bytes, or null), cleared first if `call` asks for `ZERO`.
#[inline]
fn zeroed_if(p: *mut u8, size: usize, call: Gfp) -> *mut u8 {
    if !p.is_null() && call.contains(Gfp::ZERO) {
        // SAFETY: the block has at least `size` bytes.
        unsafe { p.write_bytes(0, size) };
    }
    p
}

impl<P: Platform> Core<P> {
    /// Serves slab-sized requests of more than `above` bytes (`None`: none — the default) from
    /// exact-fit spans instead of size classes: no rounding beyond 16 bytes, 8 bytes of header
    /// per block, free space of any span usable by any size, and the room behind segment
    /// headers used too. `Some(0)` serves every size so; alignments above 4 KiB stay in the
    /// slab. Sizes the tier serves skip the slab's fast path (their classes get no pages while
    /// the tier has room).
    ///
    /// For a fixed region that should hold as much as it can — a kernel's heap — rather than
    /// scale across CPUs: every allocation and free the tier serves takes one lock. On the
    /// kernel bench's random workload a 64 MiB region holds 97 % live with every size exact
    /// (91 % with size classes, talc 97 %). Blocks allocated before a change keep working (a
    /// free finds its block's kind by address).
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// core.set_exact_fit(Some(1024));
    /// let l = Layout::from_size_align(2100, 8).unwrap();
    /// let p = unsafe { core.alloc(l) };
    /// assert_eq!(core.ksize(p), 2104); // its own size (in 16-byte granules), not a 2304 B class
    /// assert_eq!(core.stats().exact_fit_used, 2112); // with its 8-byte header
    /// unsafe { core.dealloc(p, l) };
    /// # }
    /// ```
    pub fn set_exact_fit(&self, above: Option<usize>) {
        self.fit_above.store(above.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Whether the tier serves a slab-sized `layout`.
    #[inline]
    pub(crate) fn fit_wanted(&self, layout: Layout) -> bool {
        layout.size() > self.fit_above.load(Ordering::Relaxed) && layout.align() <= FIT_MAX_ALIGN
    }

    /// A block for the slab-sized `layout` from the tier, in the effective context of `call`
    /// (zeroed with `ZERO`); null if no span holds room and none can be had — the caller then
    /// goes to the size class.
    ///
    /// # Safety
    /// `layout` is slab-sized.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn fit_alloc(&self, layout: Layout, call: Gfp) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: the spans the heap holds are live (a span leaves it before it goes back).
        let mut p = unsafe { self.lock(&self.fit).alloc(size, align) };
        if p.is_null() {
            let Some((span, behind_header)) = self.fit_span(call) else {
                return ptr::null_mut();
            };
            let unused = {
                let mut fit = self.lock(&self.fit);
                // SAFETY: fresh spans of ours, 16-byte aligned, multiples of 16 bytes.
                unsafe {
                    fit.add_span(span.0, span.1);
                    if let Some((base, len)) = behind_header {
                        fit.add_span(base, len);
                    }
                    p = fit.alloc(size, align);
                    // The room behind the header served (or another thread's free did): the
                    // fresh span goes back untouched rather than sit idle.
                    fit.take_if_empty(span.0, span.1)
                }
            };
            if unused {
                // SAFETY: the tier forgot the span, which holds no block.
                unsafe { self.fit_span_free_at(span.0) };
            }
        }
        zeroed_if(p, size, call)
    }

    /// The last resort of a slab request before a refusal, with the tier on: a block from the
    /// free space of the spans held (no new span). Near the end of a region the slab's pages of
    /// a class may all be full while exact-fit spans have room.
    pub(crate) fn fit_alloc_held(&self, size: usize, align: usize, call: Gfp) -> Option<*mut u8> {
        if self.fit_above.load(Ordering::Relaxed) == usize::MAX {
            return None;
        }
        // SAFETY: the spans the heap holds are live.
        let p = unsafe { self.lock(&self.fit).alloc(size, align) };
        Some(zeroed_if(p, size, call)).filter(|p| !p.is_null())
    }

    /// A fresh span for the tier: the first free run of `FIT_SLICES` slices in the segments
    /// mapped, else the longest shorter one, else a fresh segment's; and with it the room
    /// behind its segment's header if that is unused. `None` if the accounting or the page
    /// source refuses.
    #[allow(clippy::type_complexity)]
    fn fit_span(&self, call: Gfp) -> Option<((*mut u8, usize), Option<(*mut u8, usize)>)> {
        let eff = self.effective_of(call, self.thread());
        let mut n = FIT_SLICES;
        let page = loop {
            // SAFETY: an exact-fit span has no owner.
            match unsafe { self.span_take(ptr::null_mut(), FIT_CLASS as usize, n, eff, false) } {
                Ok(page) => break page,
                Err(super::segment::Miss::Refused) => return None,
                Err(super::segment::Miss::NoSegment) if n > 1 => n /= 2,
                Err(super::segment::Miss::NoSegment) => {
                    n = FIT_SLICES;
                    // SAFETY: as above.
                    match unsafe { self.span_take(ptr::null_mut(), FIT_CLASS as usize, n, eff, true) } {
                        Ok(page) => break page,
                        Err(_) => return None,
                    }
                }
            }
        };
        // SAFETY: a live span's descriptor.
        unsafe { Some((((*page).start, n * SLICE_SIZE), self.header_span_take(page, eff))) }
    }

    /// Frees `block` of the exact-fit span `page` (from `free_slow`); a block free already, or
    /// a pointer no block starts at, is reported and nothing changes.
    ///
    /// # Safety
    /// `page` is a live exact-fit span and `block` lies in it.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn fit_free(&self, page: *mut Page, block: *mut Block) {
        let p = block.cast::<u8>();
        // SAFETY: the descriptor of a live span.
        let (lo, len) = unsafe { ((*page).start.addr(), (*page).capacity as usize) };
        // SAFETY: the span is live and `p` lies in it.
        let freed = unsafe { self.lock(&self.fit).free(p, lo, lo + len) };
        match freed {
            Ok(Freed::Kept) => {}
            // SAFETY: every block of the span is free and the tier forgot it: nobody else
            // reaches it.
            Ok(Freed::SpanEmpty(_)) => unsafe { self.fit_span_free(page) },
            Err(BadFree::Twice) => self.bad_slab_free(p, "a block of an exact-fit span that is free already"),
            Err(BadFree::NotABlock) => self.bad_slab_free(p, "not the start of a block of an exact-fit span"),
        }
    }

    /// Gives back the exact-fit span starting at `base`, which the tier has forgotten.
    ///
    /// # Safety
    /// `base` starts a live exact-fit span that holds no block and that nothing reaches.
    unsafe fn fit_span_free_at(&self, base: *mut u8) {
        // SAFETY: a live span's first byte maps to its descriptor.
        unsafe { self.fit_span_free(self.page_of(base.addr())) }
    }

    /// Gives back the exact-fit span `page`, which the tier has forgotten.
    ///
    /// # Safety
    /// As [`fit_span_free_at`](Self::fit_span_free_at).
    unsafe fn fit_span_free(&self, page: *mut Page) {
        // SAFETY: forwarded.
        unsafe {
            if Self::is_header_span(page) {
                self.header_span_free(page);
            } else {
                self.span_free(page);
            }
        }
    }

    /// Gives back every exact-fit span whose blocks are all free (`trim`).
    pub(crate) fn fit_trim(&self) {
        loop {
            // SAFETY: the spans the heap holds are live.
            let Some(base) = (unsafe { self.lock(&self.fit).take_empty_span() }) else { return };
            // SAFETY: the tier forgot the span, which holds no block.
            unsafe { self.fit_span_free_at(base) };
        }
    }

    /// Bytes usable at `ptr`, a block of the live slab page `page` (of either kind); 0 if
    /// `page` is an exact-fit span and no block in use starts at `ptr`.
    ///
    /// # Safety
    /// `page` is a live page and `ptr` lies in it.
    #[inline]
    pub(crate) unsafe fn slab_usable(page: *const Page, ptr: *const u8) -> usize {
        // SAFETY: per the contract.
        unsafe {
            if Page::is_fit(page) {
                let lo = (*page).start.addr();
                FitHeap::usable(ptr, lo, lo + (*page).capacity as usize).unwrap_or(0)
            } else {
                (*page).block_size as usize
            }
        }
    }
}
