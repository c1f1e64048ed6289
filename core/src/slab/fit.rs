//! The exact-fit tier: slab-sized requests above a threshold served by [`FitHeap`] — blocks of
//! their own size, in 16-byte granules behind an 8-byte header — from spans the page heap hands
//! out like any slab page (class [`FIT_CLASS`], no owner), and from the room behind segment
//! headers that no metadata uses. Off unless the embedder turns it on
//! ([`Core::set_exact_fit`]): it packs a fixed region (a kernel's) as tightly as a list allocator
//! does. Blocks of up to 272 bytes come and go through per-heap (per-CPU) quick lists without a
//! lock; every other allocation and free it serves takes one.
//!
//! Quick lists (`Heap::quick`, sizes in [`crate::fit::quick`]): a [`QuickList`] per block size,
//! laid out as a page's head, so that once a request of a size found its list the heap's
//! `small` table points the slab's own fast path at it: a quick allocation *is* the fast path
//! (no instruction added to it). A free of a small block whose own header says it is in use
//! pushes it on the calling heap's list (the free reaches [`free_slow`](Core::free_slow) as any
//! free into a page without an owner does). A list that reaches [`QUICK_DEPTH`] parks its older
//! half, a magazine, in the depot under the tier's lock; a list that runs dry takes a magazine
//! back — so blocks freed on one CPU and wanted on another move a batch per lock, neither
//! merged nor split. The depot holds at most a quarter of the tier's spans; beyond that a
//! magazine is freed into the spans. Not in `hardened` builds: their pop checks that a free
//! list stays within one segment, which a quick list's blocks need not.
//!
//! Placement: a request of a quick size pops the calling heap's list, else a magazine from the
//! depot. Otherwise it tries the spans held; with none fitting, the calling heap's lists and the
//! depot are given back (their blocks merge with their neighbours) and it tries again — the
//! tier grows only when what it holds cannot serve; then it takes a span — the first run of
//! [`FIT_SLICES`] free slices, else a shorter run in a segment already mapped (what is left
//! between slab pages near the end of a region), else a fresh segment. If no span can be had,
//! the request goes to its size class as if the tier were off: the slab's path runs reclaim
//! (whose trim gives the lists and the depot back too), honours the context and reports, so the
//! tier adds no reclaim loop of its own. What another CPU's lists hold (under 76 KiB each) is
//! the tier's only memory that a request cannot reach; they go back when that heap trims or
//! its thread exits.
//!
//! Frees into the spans: a block's header and its neighbour's must agree, and a block free
//! already is reported — both cheap, they are read to merge anyway; a block that went on a
//! quick list on the strength of its own header meets the neighbour check when the list gives
//! it back. A block on a quick list looks in use: freeing it a second time is not caught, as
//! for a slab block outside `hardened` builds. A span whose blocks are all free goes back to
//! the page heap at once (its slices stay committed, the next page of any class takes them
//! first).
//!
//! Locking: `Core::fit` is a leaf: nothing else is taken while it is held, and nothing is
//! called out; the page heap is asked for spans, and given them back, with it released. In a
//! kernel the shim's `enter` holds off every allocating interrupt handler around each allocator
//! call, so a handler never finds the lock held on its own CPU, nor its CPU's quick lists
//! half-edited. Ownership of the tier's state: `FitHeap` (bins, bitmap, counts, the depot) and
//! every header of a span it holds are read and written under the lock only, except a live
//! block's own size word, which its owner reads without it (`usable`, and a free deciding on a
//! quick list: only that block's allocation and free write it). A heap's quick lists are its
//! owner's, as its pages' free lists are; the child of `fork` forgets those of vanished
//! threads without reading them (their blocks stay in use: memory, not corruption).

use super::heap::{pop, Heap};
use super::page::{Page, QuickList, FIT_CLASS};
use super::remote::Block;
use super::SLICE_SIZE;
use crate::fit::quick::{block_of, class_of, class_of_block, usable_of};
use crate::fit::QUICK_CLASSES;
use crate::fit::{BadFree, FitHeap, Freed, MAGAZINE, QUICK_DEPTH};
use crate::gfp::Gfp;
use crate::platform::{ThreadCtx, ThreadState};
use crate::size_class::SMALL_MAX;
use crate::sync::Ordering;
use crate::{Core, Platform};
use core::alloc::Layout;
use core::ptr;

/// Slices an exact-fit span takes when a run that long is free (2 MiB: half a segment, the
/// longest aligned run the header slice leaves).
const FIT_SLICES: usize = 32;
/// The largest alignment the tier serves; larger ones go to their size class.
const FIT_MAX_ALIGN: usize = 4096;
/// Whether frees go through quick lists: not in `hardened` builds, whose pop checks that a
/// free list's next block lies in the same segment (a quick list's blocks come from any span).
const QUICK: bool = !cfg!(feature = "hardened");

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
    /// For a fixed region that should hold as much as it can — a kernel's heap. Blocks of up to
    /// 272 bytes are freed onto, and taken back from, the calling heap's (CPU's) quick lists
    /// without a lock (the allocation on the slab's own fast path), moving between CPUs in
    /// magazines of 16; every other allocation and free the tier serves takes one lock. On
    /// the kernel bench's random workload a 64 MiB region holds 97.2 % live with every size
    /// exact (91.2 % with size classes, talc 97.1 %). Blocks allocated before a change keep
    /// working (a free finds its block's kind by address); blocks on the calling CPU's quick
    /// lists keep serving their size after the tier is turned off, until the heap trims.
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
    /// (zeroed with `ZERO`), for the calling thread `t`: from its heap's quick list of the
    /// block's size if one serves it — refilled with a magazine from the depot when it runs
    /// dry, and from then on the fast path's page for the size — else from the spans held, else
    /// from a fresh span; null if none holds room and none can be had, even once the heap's
    /// quick lists and the depot are given back — the caller then goes to the size class.
    ///
    /// # Safety
    /// `layout` is slab-sized; `t` is the calling thread's context or [`ThreadCtx::none()`].
    #[inline(never)]
    pub(crate) unsafe fn fit_alloc(&self, t: *const ThreadCtx, layout: Layout, call: Gfp) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        let zero = call.contains(Gfp::ZERO);
        // SAFETY: per the contract.
        let mut heap = unsafe { (*t).heap.get() };
        let quick = if QUICK { class_of(size, align) } else { None };
        if let Some(class) = quick {
            if heap == Heap::empty() {
                // A thread whose every request the tier served has no heap yet: its quick lists
                // come with one (if the heap cannot be had, the lock serves).
                heap = self.quick_heap_attach(call);
            }
            if heap != Heap::empty() {
                // SAFETY: the calling thread's live heap; its quick lists hold blocks of live
                // spans (a span goes back only once every block of it is free in the tier).
                unsafe {
                    let list = QuickList::as_page(Heap::quick(heap, class));
                    if size <= SMALL_MAX {
                        // From now on the fast path pops this list for the size.
                        Heap::set_small(heap, size, list);
                    }
                    if !(*list).free.is_null() {
                        return pop(self, list, size, zero);
                    }
                }
            }
        }
        let mut p = {
            let mut fit = self.lock(&self.fit);
            let mag = match quick {
                Some(class) if heap != Heap::empty() => Some((class, fit.depot_take(class))),
                _ => None,
            };
            match mag {
                Some((class, mag)) if !mag.is_null() => {
                    drop(fit);
                    // SAFETY: the calling thread's live heap, whose list of the class is empty
                    // (the test above found it so); a magazine of that class, ours now.
                    return unsafe {
                        let list = Heap::quick(heap, class);
                        QuickList::fill(list, mag.cast(), MAGAZINE);
                        pop(self, QuickList::as_page(list), size, zero)
                    };
                }
                // SAFETY: the spans the heap holds are live (a span leaves it before it goes
                // back).
                _ => unsafe { fit.alloc(size, align) },
            }
        };
        if p.is_null() {
            // The tier grows only when what it holds cannot serve: first the blocks that wait on
            // the heap's quick lists and in the depot merge with their neighbours (a span is
            // 2 MiB: this is rare).
            // SAFETY: the calling thread's heap (or the empty one).
            p = unsafe { self.fit_alloc_flushed(heap, size, align) };
            if !p.is_null() {
                return zeroed_if(p, size, call);
            }
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
    /// free space of the spans held (no new span), once the calling heap's quick lists and the
    /// depot are given back. Near the end of a region the slab's pages of a class may all be
    /// full while exact-fit spans have room.
    pub(crate) fn fit_alloc_held(&self, size: usize, align: usize, call: Gfp) -> Option<*mut u8> {
        if self.fit_above.load(Ordering::Relaxed) == usize::MAX {
            return None;
        }
        // SAFETY: the platform hands out the calling thread's context (or `none`), whose heap is
        // its own or the empty heap.
        let p = unsafe { self.fit_alloc_flushed((*self.platform.thread_if_any()).heap.get(), size, align) };
        Some(zeroed_if(p, size, call)).filter(|p| !p.is_null())
    }

    /// A block from the spans held once `heap`'s quick lists and the depot are back in the tier
    /// (where their blocks merge with their neighbours); null if none holds room.
    ///
    /// # Safety
    /// `heap` is the calling thread's live heap or the empty heap.
    #[cold]
    unsafe fn fit_alloc_flushed(&self, heap: *mut Heap, size: usize, align: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.fit_quick_flush(heap) };
        let mut freed = ChainFreed::new();
        let p = {
            let mut fit = self.lock(&self.fit);
            // SAFETY: magazines off the depot; the spans the heap holds are live.
            unsafe {
                while let Some(mag) = fit.depot_take_any() {
                    freed.free(self, &mut fit, mag);
                }
                fit.alloc(size, align)
            }
        };
        // SAFETY: spans and reports the frees above left.
        unsafe { freed.finish(self) };
        p
    }

    /// Gives the calling thread a heap, for its quick lists, unless it has exited (its requests
    /// use no heap of its own) or no heap can be had at once in the context of `call` (the tier
    /// does not reclaim for its quick lists): then the empty heap.
    #[cold]
    fn quick_heap_attach(&self, call: Gfp) -> *mut Heap {
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*self.platform.thread() };
        match t.state() {
            ThreadState::Exited => Heap::empty(),
            _ if t.heap.get() != Heap::empty() => t.heap.get(),
            _ => self.thread_attach_now(t, call).unwrap_or(Heap::empty()),
        }
    }

    /// Gives the blocks of `heap`'s quick lists back to the tier.
    ///
    /// # Safety
    /// `heap` is owned by the caller (its thread's, or one whose thread is gone and whose lists
    /// are whole) or is the empty heap.
    pub(crate) unsafe fn fit_quick_flush(&self, heap: *mut Heap) {
        if !QUICK || heap == Heap::empty() {
            return;
        }
        let mut freed = ChainFreed::new();
        let mut fit = None;
        for class in 0..QUICK_CLASSES {
            // SAFETY: per the contract, the heap's lists are ours.
            unsafe {
                let chain = QuickList::take(Heap::quick(heap, class));
                if chain.is_null() {
                    continue;
                }
                let fit = fit.get_or_insert_with(|| self.lock(&self.fit));
                freed.free(self, fit, chain.cast());
            }
        }
        drop(fit);
        // SAFETY: spans and reports the frees above left.
        unsafe { freed.finish(self) };
    }

    /// With the tier no longer serving small `size`: points the fast path's entry for it back
    /// at its size class if it still points at a quick list (which keeps its blocks until the
    /// heap trims).
    ///
    /// # Safety
    /// `t` is the calling thread's context or [`ThreadCtx::none()`]; `size ≤ SMALL_MAX`.
    #[inline]
    pub(crate) unsafe fn fit_unpoint(&self, t: *const ThreadCtx, size: usize) {
        // SAFETY: per the contract; a live heap's table is its owner's.
        unsafe {
            let heap = (*t).heap.get();
            let page = Heap::direct_small(heap, size);
            let lists = Heap::quick(heap, 0).cast::<Page>()..Heap::quick(heap, QUICK_CLASSES).cast();
            if heap != Heap::empty() && lists.contains(&page) {
                Heap::set_small(heap, size, Heap::direct(heap, crate::size_class::small_class(size)));
            }
        }
    }

    /// Forgets `heap`'s quick lists without reading them: the child of `fork` does so for a
    /// heap whose thread is gone and may have been halfway through a push (their blocks stay in
    /// use for the tier: memory, not corruption).
    ///
    /// # Safety
    /// `heap` is live and nobody uses it.
    pub(crate) unsafe fn fit_quick_forget(&self, heap: *mut Heap) {
        for class in 0..QUICK_CLASSES {
            // SAFETY: per the contract.
            unsafe { QuickList::take(Heap::quick(heap, class)) };
        }
    }

    /// Bytes of exact-fit blocks waiting in the depot and on the calling thread's quick lists.
    pub(crate) fn fit_cached(&self) -> usize {
        let depot = self.lock(&self.fit).depot_bytes();
        // SAFETY: the platform hands out the calling thread's context (or `none`); its heap's
        // lists are its own.
        let heap = unsafe { (*self.platform.thread_if_any()).heap.get() };
        if heap == Heap::empty() {
            return depot;
        }
        (0..QUICK_CLASSES)
            // SAFETY: as above; `used` of a list counts its blocks down from `QUICK_EMPTY`.
            .map(|c| unsafe { QuickList::len(Heap::quick(heap, c)) as usize * block_of(c) })
            .sum::<usize>()
            + depot
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

    /// Frees `block` of the exact-fit span `page` (from `free_slow`, for the calling thread
    /// `t`): onto its heap's quick list of the block's size if one takes it (a list that fills
    /// parks its older half in the depot), else into the tier; a block free already, or a
    /// pointer no block starts at, is reported and nothing changes (a block on a quick list
    /// looks in use: a second free of it is not caught — as for a slab block, outside
    /// `hardened` builds).
    ///
    /// # Safety
    /// `page` is a live exact-fit span and `block` lies in it; `t` is the calling thread's
    /// context or [`ThreadCtx::none()`].
    #[inline]
    pub(crate) unsafe fn fit_free(&self, t: *const ThreadCtx, page: *mut Page, block: *mut Block) {
        let p = block.cast::<u8>();
        // SAFETY: the descriptor of a live span; per the contract for `t`.
        let (lo, hi, heap) = unsafe {
            let lo = (*page).start.addr();
            (lo, lo + (*page).capacity as usize, (*t).heap.get())
        };
        if QUICK && heap != Heap::empty() {
            // SAFETY: the span is live and `p` lies in it; the block is the caller's to give up.
            if let Ok(Some(class)) = unsafe { FitHeap::own_size(p, lo, hi) }.map(class_of_block) {
                // While the tier still serves the size.
                if usable_of(class) > self.fit_above.load(Ordering::Relaxed) {
                    // SAFETY: the calling thread's live heap and its list of the class.
                    unsafe {
                        let list = Heap::quick(heap, class);
                        Block::set_next(block, (*list).free);
                        (*list).free = block;
                        (*list).used -= 1;
                        if QuickList::len(list) >= QUICK_DEPTH {
                            self.fit_park(list, class);
                        }
                    }
                    return;
                }
            }
        }
        // SAFETY: forwarded.
        unsafe { self.fit_free_locked(page, p, lo, hi) }
    }

    /// [`fit_free`](Self::fit_free) into the tier, under its lock.
    ///
    /// # Safety
    /// `page` is the live exact-fit span `lo .. hi` and `p` lies in it.
    #[inline(never)]
    unsafe fn fit_free_locked(&self, page: *mut Page, p: *mut u8, lo: usize, hi: usize) {
        // SAFETY: per the contract.
        let freed = unsafe { self.lock(&self.fit).free(p, lo, hi) };
        match freed {
            Ok(Freed::Kept) => {}
            // SAFETY: every block of the span is free and the tier forgot it: nobody else
            // reaches it.
            Ok(Freed::SpanEmpty(_)) => unsafe { self.fit_span_free(page) },
            Err(BadFree::Twice) => self.bad_slab_free(p, "a block of an exact-fit span that is free already"),
            Err(BadFree::NotABlock) => self.bad_slab_free(p, "not the start of a block of an exact-fit span"),
        }
    }

    /// Takes the older half of the full quick list `list` (of `class`) off as a magazine and
    /// parks it in the depot, or frees its blocks into the tier if the depot is full.
    ///
    /// # Safety
    /// `list` is the calling thread's quick list of `class`, with `QUICK_DEPTH` blocks.
    #[cold]
    #[inline(never)]
    unsafe fn fit_park(&self, list: *mut QuickList, class: usize) {
        // SAFETY: per the contract: the list's links are blocks on it.
        let mag = unsafe {
            let mut last = (*list).free;
            for _ in 1..QUICK_DEPTH - MAGAZINE {
                last = Block::next(last);
            }
            let mag = Block::next(last);
            Block::set_next(last, ptr::null_mut());
            (*list).used += MAGAZINE;
            mag.cast::<u8>()
        };
        let mut freed = ChainFreed::new();
        {
            let mut fit = self.lock(&self.fit);
            // SAFETY: a magazine of `class` off a quick list, ours.
            if let Err(mag) = unsafe { fit.depot_put(class, mag) } {
                // SAFETY: as above.
                unsafe { freed.free(self, &mut fit, mag) };
            }
        }
        // SAFETY: spans and reports the frees above left.
        unsafe { freed.finish(self) };
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

    /// Gives back the depot's blocks, then every exact-fit span whose blocks are all free
    /// (`trim`).
    pub(crate) fn fit_trim(&self) {
        let mut freed = ChainFreed::new();
        {
            let mut fit = self.lock(&self.fit);
            while let Some(mag) = fit.depot_take_any() {
                // SAFETY: a magazine off the depot.
                unsafe { freed.free(self, &mut fit, mag) };
            }
        }
        // SAFETY: spans and reports the frees above left.
        unsafe { freed.finish(self) };
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

/// What freeing a chain of quick-list blocks under the tier's lock leaves to do once it is
/// released: spans found empty to give back, and blocks to report — a block whose free put it
/// on a list on the strength of its own header, and whose neighbours now disagree.
struct ChainFreed {
    /// Spans found empty, linked through their first word (unused: it comes before the first
    /// block's header).
    emptied: *mut u8,
    /// The first few bad blocks (more are counted as reports are, by `bad_slab_free`, only up
    /// to this many).
    bad: [*mut u8; 4],
    nbad: usize,
}

impl ChainFreed {
    fn new() -> Self {
        ChainFreed { emptied: ptr::null_mut(), bad: [ptr::null_mut(); 4], nbad: 0 }
    }

    /// Frees the blocks of `chain` (linked as a slab free list links) into `fit`, whose lock
    /// the caller holds.
    ///
    /// # Safety
    /// `chain` came off a quick list or the depot and nobody else reaches it; `fit` is `core`'s.
    unsafe fn free<P: Platform>(&mut self, core: &Core<P>, fit: &mut FitHeap, chain: *mut u8) {
        let mut chain = chain.cast::<Block>();
        while !chain.is_null() {
            // SAFETY: a block of the chain, in use for the tier until freed below, so its span
            // is live; a span that empties holds no later block of the chain.
            unsafe {
                let p = chain.cast::<u8>();
                chain = Block::next(chain);
                let page = core.page_of(p.addr());
                let lo = (*page).start.addr();
                match fit.free(p, lo, lo + (*page).capacity as usize) {
                    Ok(Freed::Kept) => {}
                    Ok(Freed::SpanEmpty(base)) => {
                        base.cast::<*mut u8>().write(self.emptied);
                        self.emptied = base;
                    }
                    Err(_) => {
                        if let Some(slot) = self.bad.get_mut(self.nbad) {
                            *slot = p;
                            self.nbad += 1;
                        }
                    }
                }
            }
        }
    }

    /// Reports the bad blocks and gives back the emptied spans (no lock held).
    ///
    /// # Safety
    /// The spans recorded were forgotten by `core`'s tier and hold no block.
    unsafe fn finish<P: Platform>(self, core: &Core<P>) {
        for &p in &self.bad[..self.nbad] {
            core.bad_slab_free(p, "not the start of a block of an exact-fit span");
        }
        let mut span = self.emptied;
        while !span.is_null() {
            // SAFETY: per the contract; the link was written by `free`.
            unsafe {
                let next = span.cast::<*mut u8>().read();
                core.fit_span_free_at(span);
                span = next;
            }
        }
    }
}
