//! The page heap: segments from the page source, cut into spans of slices for slab pages.
//!
//! A segment is 4 MiB, aligned to 4 MiB, so `addr & !SEGMENT_MASK` finds the header of any
//! block. Slice 0 holds the header; slices 1..64 are handed out as spans of 1, 2, 4 or 8 slices,
//! aligned to their length (so finding a free span is a few shifts over a 64-bit mask).
//!
//! Accounting is per slice: a slice is *committed* once handed out (charged to `usage()`), stays
//! committed while free ("dirty", reused first), and is *purged* — given back to the platform
//! and uncharged — once too many dirty bytes pile up, once dirty memory has waited
//! [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS) (the platform's background thread calls [`Core::purge_aged`]: an idle
//! program's resident set falls back without any allocator call), or on [`Core::trim`]. A
//! segment whose every slice is free is kept as the one spare, or returned to the page source.
//!
//! The header takes under 6 KiB of slice 0; the rest of that slice holds the allocator's
//! permanent metadata (heaps, shrinker-registry chunks: [`Core::meta_alloc`]). Metadata never
//! needs a span of its own from the page source — in a kernel's static region, a small span
//! there would break the alignment of a whole segment — and a segment holding metadata is
//! *pinned*: it is never returned.

use super::page::{Page, FIT_CLASS};
use super::{SEGMENT_MASK, SEGMENT_SIZE, SLICES, SLICE_SHIFT, SLICE_SIZE};
use crate::gfp::Effective;
use crate::page::PurgeClock;
use crate::size_class::{class_size, class_slices};
use crate::sync::Ordering;
use crate::{Core, Platform};
use core::ptr::{self, NonNull};

/// Bits of the slices a segment can hand out (all but the header slice).
const ALL_SLICES: u64 = !1;

/// Dirty bytes tolerated before free slices are purged at once (plus an eighth of `usage()`);
/// the rest waits for the background thread's purge delay. Purging is not free — the slices
/// are faulted in again when reused, and every purge flushes the TLB of each CPU the process
/// runs on — so a program whose threads free and reallocate in waves keeps its slices: 8 MiB
/// made the Rust suite's mstress fault 7 500 pages (mimalloc: 190), 16 MiB 4 200.
pub(crate) const PURGE_SLACK: usize = 16 << 20;

/// Segments whose dirty slices one trip of the page-heap lock takes for purging.
const PURGE_BATCH: usize = 16;

/// The header of a segment, at its start.
///
/// `slice_page` is written under the page-heap lock when a span is handed out or given back, and
/// read without a lock by threads freeing a block: a block is reachable only while its span is
/// live, and the write happened before the block was first handed out. The page-heap fields
/// (`free`, `committed`, `purging`, `next`, `prev`, `meta_end`) are touched only under the
/// page-heap lock. `pages[i]` follows [`Page`]'s rules while slice `i` starts a live span.
///
/// Invariants (under the lock): `purging ⊆ free ∩ committed`; the segment is on the partial
/// list iff `free ≠ 0` and it is not the spare; it is given back only when `free` is every
/// slice and `purging = 0`.
///
/// All-zero bytes plus `slice_page` pointing at the empty page everywhere are a valid empty
/// header.
#[repr(C)]
pub(crate) struct Segment {
    /// Slice → descriptor of the page covering it; the static empty page ([`Page::empty`]:
    /// block size 0, no owner) when free or the header — never null, so a free without a size
    /// needs no test before reading the descriptor.
    pub(crate) slice_page: [*mut Page; SLICES],
    /// Descriptors: the one at a span's first slice describes the span's page.
    pub(crate) pages: [Page; SLICES],
    /// Free slices (bit per slice).
    free: u64,
    /// Committed slices: handed out now, or free but not yet purged ("dirty"). Bit 0 is the
    /// header.
    committed: u64,
    /// Free slices a thread is purging outside the lock: not handed out, not dirty, and they
    /// keep the segment from being given back until the purge is done.
    purging: u64,
    /// Links in the page heap's list of segments with a free slice.
    next: *mut Segment,
    /// See `next`.
    prev: *mut Segment,
    /// End of the metadata carved from slice 0 (an offset from the segment's start), or 0 if
    /// none was: then the segment is not pinned. Under the page-heap lock.
    meta_end: usize,
}

const _: () = assert!(core::mem::size_of::<Segment>() <= SLICE_SIZE);

/// Alignment of every piece of metadata (a cache line: heaps are written by their thread only).
const META_ALIGN: usize = 64;

/// The most metadata one request may take: the room behind the header.
pub(crate) const META_MAX: usize = SLICE_SIZE - core::mem::size_of::<Segment>().next_multiple_of(META_ALIGN);

/// The page heap's state, under `Core::pages`.
pub(crate) struct PageHeap {
    /// Segments with at least one free slice (doubly linked; full segments are on no list).
    partial: *mut Segment,
    /// One segment with every slice free, kept to avoid a map/unmap cycle.
    spare: *mut Segment,
    /// Bytes in free, committed slices.
    dirty: usize,
    /// Segments mapped.
    pub(crate) segments: usize,
    /// The pinned segment metadata was last carved from (null before the first).
    meta: *mut Segment,
    /// Armed when dirty memory appears with none waiting before.
    pub(crate) clock: PurgeClock,
}

// SAFETY: the page heap only holds pointers into segments it owns; it moves between threads
// under its lock.
unsafe impl Send for PageHeap {}

impl PageHeap {
    pub(crate) const fn new() -> Self {
        PageHeap {
            partial: ptr::null_mut(),
            spare: ptr::null_mut(),
            dirty: 0,
            segments: 0,
            meta: ptr::null_mut(),
            clock: PurgeClock::new(),
        }
    }

    /// # Safety
    /// `s` is a live segment on no list; the caller holds the lock.
    unsafe fn link(&mut self, s: *mut Segment) {
        // SAFETY: page-heap fields of a live segment, under the lock.
        unsafe {
            (*s).prev = ptr::null_mut();
            (*s).next = self.partial;
            if !self.partial.is_null() {
                (*self.partial).prev = s;
            }
        }
        self.partial = s;
    }

    /// Takes `seg`'s dirty slices for a purge outside the lock: they become `purging` — not
    /// handed out, not dirty. Returns their mask (0: none).
    ///
    /// # Safety
    /// `seg` is live; the caller holds the lock.
    unsafe fn take_dirty(&mut self, seg: *mut Segment) -> u64 {
        // SAFETY: page-heap fields of a live segment, under the lock.
        unsafe {
            let m = (*seg).free & (*seg).committed & !(*seg).purging & ALL_SLICES;
            (*seg).purging |= m;
            self.dirty -= m.count_ones() as usize * SLICE_SIZE;
            m
        }
    }

    /// Keeps `seg`, whose every slice is free, as the spare, or takes it off the page heap to be
    /// given back: `Some((segment, its dirty bytes))`. `None` (nothing to do) if a slice is in
    /// use or being purged, or the segment is pinned.
    ///
    /// # Safety
    /// `seg` is live and on the partial list; the caller holds the lock.
    unsafe fn release_if_empty(&mut self, seg: *mut Segment) -> Option<(*mut Segment, usize)> {
        // SAFETY: page-heap fields of a live segment, under the lock.
        unsafe {
            if (*seg).free & ALL_SLICES != ALL_SLICES || (*seg).purging != 0 || (*seg).meta_end != 0 {
                return None;
            }
            self.unlink(seg);
            if self.spare.is_null() {
                self.spare = seg;
                return None;
            }
            let dirty = ((*seg).committed & ALL_SLICES).count_ones() as usize * SLICE_SIZE;
            self.dirty -= dirty;
            self.segments -= 1;
            Some((seg, dirty))
        }
    }

    /// # Safety
    /// `s` is on the partial list; the caller holds the lock.
    unsafe fn unlink(&mut self, s: *mut Segment) {
        // SAFETY: page-heap fields of a live segment, under the lock.
        unsafe {
            let (prev, next) = ((*s).prev, (*s).next);
            if prev.is_null() {
                self.partial = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            (*s).next = ptr::null_mut();
            (*s).prev = ptr::null_mut();
        }
    }
}

/// Why the page heap handed out no span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// The accounting or the page source refused (the caller asks the reclaim policy).
    Refused,
    /// No free span, and the caller asked not to map a segment (it holds a lock: it maps one
    /// with the lock released and tries again).
    NoSegment,
}

/// Bits of runs of `n` free slices (`n` a power of two ≤ 32) that start at a multiple of `n`.
#[inline]
fn runs(free: u64, n: usize) -> u64 {
    const ALIGNED: [u64; 6] = [
        !0,
        0x5555_5555_5555_5555,
        0x1111_1111_1111_1111,
        0x0101_0101_0101_0101,
        0x0001_0001_0001_0001,
        0x0000_0001_0000_0001,
    ];
    let mut x = free;
    let mut k = 1;
    while k < n {
        x &= x >> k;
        k <<= 1;
    }
    x & ALIGNED[n.trailing_zeros() as usize]
}

/// The mask of `n` slices from `idx`.
#[inline]
fn run_mask(idx: usize, n: usize) -> u64 {
    (((1u128 << n) - 1) as u64) << idx
}

/// The segment holding `page` (a descriptor inside its header).
#[inline]
fn segment_of_desc(page: *mut Page) -> *mut Segment {
    page.map_addr(|a| a & !SEGMENT_MASK).cast()
}

/// Where metadata carved from `seg`'s header slice would start.
///
/// # Safety
/// `seg` is live; the caller holds the page-heap lock.
unsafe fn meta_start(seg: *mut Segment) -> usize {
    // SAFETY: per the contract.
    match unsafe { (*seg).meta_end } {
        0 => core::mem::size_of::<Segment>().next_multiple_of(META_ALIGN),
        end => end,
    }
}

/// Bytes of the header slice the page heap charges: its pages that the header touches.
#[inline]
pub(crate) const fn header_bytes(page_size: usize) -> usize {
    core::mem::size_of::<Segment>().next_multiple_of(page_size)
}

impl<P: Platform> Core<P> {
    /// A fresh slab page of `class`, owned by `owner`; `Err` when the page source or the
    /// accounting refuses (the caller decides what the context allows next), or — with `map`
    /// false — when a segment would have to be mapped.
    ///
    /// # Safety
    /// `owner` is the caller's live heap.
    pub(crate) unsafe fn span_alloc(
        &self,
        owner: *mut super::heap::Heap,
        class: usize,
        eff: Effective,
        map: bool,
    ) -> Result<*mut Page, Miss> {
        // SAFETY: forwarded.
        unsafe { self.span_take(owner, class, class_slices(class), eff, map) }
    }

    /// A fresh span of `n` slices (a power of two ≤ 32) for a page of `class` — a size class,
    /// or [`FIT_CLASS`](super::page::FIT_CLASS) for an exact-fit span (no owner) — as
    /// [`span_alloc`](Self::span_alloc).
    ///
    /// # Safety
    /// As [`span_alloc`](Self::span_alloc); `owner` is null for an exact-fit span.
    pub(crate) unsafe fn span_take(
        &self,
        owner: *mut super::heap::Heap,
        class: usize,
        n: usize,
        eff: Effective,
        map: bool,
    ) -> Result<*mut Page, Miss> {
        loop {
            {
                let mut ph = self.lock(&self.pages);
                let mut seg = ph.partial;
                while !seg.is_null() {
                    // SAFETY: segments on the partial list are live; we hold the lock.
                    unsafe {
                        let free = (*seg).free & !(*seg).purging;
                        let all = runs(free, n);
                        if all != 0 {
                            let warm = all & runs(free & (*seg).committed, n);
                            let idx = (if warm != 0 { warm } else { all }).trailing_zeros() as usize;
                            let run = run_mask(idx, n);
                            let clean = run & !(*seg).committed;
                            let clean_bytes = clean.count_ones() as usize * SLICE_SIZE;
                            if clean_bytes != 0 && !self.charge(clean_bytes, eff) {
                                return Err(Miss::Refused);
                            }
                            ph.dirty -= (run & (*seg).committed).count_ones() as usize * SLICE_SIZE;
                            (*seg).free &= !run;
                            (*seg).committed |= run;
                            if (*seg).free & ALL_SLICES == 0 {
                                ph.unlink(seg);
                            }
                            let page = (&raw mut (*seg).pages).cast::<Page>().add(idx);
                            self.page_init(page, seg, idx, n, class, owner);
                            let map = (&raw mut (*seg).slice_page).cast::<*mut Page>();
                            for i in idx..idx + n {
                                *map.add(i) = page;
                            }
                            self.counters.slab_pages.fetch_add(1, Ordering::Relaxed);
                            return Ok(page);
                        }
                        seg = (*seg).next;
                    }
                }
                if !ph.spare.is_null() {
                    let s = core::mem::replace(&mut ph.spare, ptr::null_mut());
                    // SAFETY: the spare is a live segment on no list.
                    unsafe { ph.link(s) };
                    continue;
                }
            }
            if !map {
                return Err(Miss::NoSegment);
            }
            self.segment_add(eff).ok_or(Miss::Refused)?;
        }
    }

    /// `bytes` (at most [`META_MAX`]) of zeroed, permanent metadata, 64-byte aligned, carved
    /// from the header slice of a segment, which is pinned; the pages it newly touches are
    /// charged in context `eff`. `None` when the accounting or the page source refuses (the
    /// caller decides what the context allows next).
    pub(crate) fn meta_alloc(&self, bytes: usize, eff: Effective) -> Option<NonNull<u8>> {
        let bytes = bytes.next_multiple_of(META_ALIGN);
        debug_assert!(bytes <= META_MAX);
        loop {
            {
                let mut ph = self.lock(&self.pages);
                // The last metadata segment, else any with a free slice, else the spare.
                let fits = |seg: *mut Segment| {
                    // SAFETY: segments the page heap reaches are live; we hold its lock.
                    !seg.is_null() && unsafe { meta_start(seg) } + bytes <= SLICE_SIZE
                };
                let mut seg = ph.meta;
                if !fits(seg) {
                    seg = ph.partial;
                    while !seg.is_null() && !fits(seg) {
                        // SAFETY: a live segment on the partial list, under the lock.
                        seg = unsafe { (*seg).next };
                    }
                }
                if seg.is_null() && !ph.spare.is_null() {
                    seg = core::mem::replace(&mut ph.spare, ptr::null_mut());
                    // SAFETY: the spare is a live segment on no list; pinned, it stays listed.
                    unsafe { ph.link(seg) };
                }
                if !seg.is_null() {
                    // SAFETY: a live segment under the lock; `[start, end)` lies in its header
                    // slice behind the header, untouched by anything else.
                    unsafe {
                        let start = meta_start(seg);
                        let end = start + bytes;
                        let charged =
                            header_bytes(P::PAGE_SIZE).max((*seg).meta_end.next_multiple_of(P::PAGE_SIZE));
                        let more = end.next_multiple_of(P::PAGE_SIZE).saturating_sub(charged);
                        if more != 0 && !self.charge(more, eff) {
                            return None;
                        }
                        (*seg).meta_end = end;
                        ph.meta = seg;
                        let p = self.platform.ptr_from_addr(seg.addr() + start);
                        ptr::write_bytes(p, 0, bytes);
                        return Some(NonNull::new_unchecked(p));
                    }
                }
            }
            self.segment_add(eff)?;
        }
    }

    /// With the exact-fit tier on: the room behind the header of the segment holding the span
    /// `near` — if no metadata was carved there and it is not where metadata goes next (later
    /// metadata then takes another segment's room, or a fresh segment's) — as an
    /// exact-fit span described by slice 0's descriptor (unused otherwise): the segment is
    /// pinned while that span lives, like a metadata segment. In a kernel's region of 4 MiB
    /// segments that room is 1.4 % of the region. `None` if it is taken, or the accounting
    /// refuses its pages.
    ///
    /// # Safety
    /// `near` is a live span's descriptor.
    pub(crate) unsafe fn header_span_take(
        &self,
        near: *mut Page,
        eff: Effective,
    ) -> Option<(*mut u8, usize)> {
        let seg = segment_of_desc(near);
        let ph = self.lock(&self.pages);
        // SAFETY: a live segment (it holds `near`); page-heap fields and slice 0's descriptor
        // under the lock; the room lies in the header slice behind the header.
        unsafe {
            if (*seg).meta_end != 0 || ph.meta == seg {
                return None;
            }
            let start = meta_start(seg);
            if !self.charge(SLICE_SIZE - header_bytes(P::PAGE_SIZE), eff) {
                return None;
            }
            (*seg).meta_end = SLICE_SIZE;
            let page = (&raw mut (*seg).pages).cast::<Page>();
            let base = self.platform.ptr_from_addr(seg.addr() + start);
            crate::track::unpoison(base, SLICE_SIZE - start);
            ptr::write(page, Page::new());
            (*page).start = base;
            (*page).capacity = (SLICE_SIZE - start) as u32;
            (*page).class = FIT_CLASS;
            (*page).slices = 1;
            *(&raw mut (*seg).slice_page).cast::<*mut Page>() = page;
            Some((base, SLICE_SIZE - start))
        }
    }

    /// Whether `page` is slice 0's descriptor: an exact-fit span behind the segment's header.
    pub(crate) fn is_header_span(page: *mut Page) -> bool {
        let seg = segment_of_desc(page);
        // SAFETY: only the address of the descriptor array is taken.
        page == unsafe { (&raw mut (*seg).pages).cast::<Page>() }
    }

    /// Gives back the span of [`header_span_take`](Self::header_span_take), now empty: the
    /// segment is no longer pinned (and goes back if every slice is free).
    ///
    /// # Safety
    /// `page` is a live header span with no block in use, on no list; nobody touches it again.
    pub(crate) unsafe fn header_span_free(&self, page: *mut Page) {
        let seg = segment_of_desc(page);
        let unmap = {
            let mut ph = self.lock(&self.pages);
            // SAFETY: as in `header_span_take`.
            unsafe {
                *(&raw mut (*seg).slice_page).cast::<*mut Page>() = Page::empty();
                (*page).block_size = 0;
                (*page).class = 0;
                (*seg).meta_end = 0;
                ph.release_if_empty(seg)
            }
        };
        self.uncharge(SLICE_SIZE - header_bytes(P::PAGE_SIZE));
        if let Some((seg, dirty)) = unmap {
            // SAFETY: the segment is empty and on no list; nobody can reach it.
            unsafe { self.segment_unmap(seg, dirty) };
        }
    }

    /// Fills a fresh descriptor.
    ///
    /// # Safety
    /// `page` is the descriptor of slice `idx` of `seg`, whose span of `n` slices the caller has
    /// just taken under the page-heap lock.
    unsafe fn page_init(
        &self,
        page: *mut Page,
        seg: *mut Segment,
        idx: usize,
        n: usize,
        class: usize,
        owner: *mut super::heap::Heap,
    ) {
        let base = seg.addr() + idx * SLICE_SIZE;
        crate::track::unpoison(self.platform.ptr_from_addr(base), n * SLICE_SIZE);
        // SAFETY: the descriptor is ours until published; the span lies in the segment.
        unsafe {
            ptr::write(page, Page::new());
            // An exact-fit span has no block size (its blocks carry theirs); its capacity is
            // its length in bytes.
            if class == FIT_CLASS as usize {
                (*page).capacity = (n * SLICE_SIZE) as u32;
            } else {
                let bs = class_size(class);
                (*page).block_size = bs as u32;
                (*page).capacity = ((n * SLICE_SIZE) / bs) as u32;
            }
            (*page).start = self.platform.ptr_from_addr(base);
            (*page).class = class as u8;
            (*page).slices = n as u8;
            (*page).owner.store(owner, Ordering::Relaxed);
        }
    }

    /// Maps a segment and puts it on the partial list; `None` if the accounting or the page
    /// source refuses. The mapping — and the segment map's leaf, if one is needed — are made
    /// before the page-heap lock is taken: no lock is held across a call out.
    pub(crate) fn segment_add(&self, eff: Effective) -> Option<()> {
        // SAFETY: plain call; the result is a fresh segment.
        let seg = unsafe { self.segment_map(eff)? };
        if !self.segmap_insert(seg.addr()) {
            // SAFETY: the fresh segment nobody has seen: empty, unlinked, unreachable.
            unsafe { self.segment_unmap(seg, 0) };
            return None;
        }
        let mut ph = self.lock(&self.pages);
        ph.segments += 1;
        // SAFETY: a fresh segment on no list, under the lock.
        unsafe { ph.link(seg) };
        Some(())
    }

    /// Maps and initialises a segment, charging its header.
    ///
    /// # Safety
    /// None beyond the platform's contract.
    unsafe fn segment_map(&self, eff: Effective) -> Option<*mut Segment> {
        let hdr = header_bytes(P::PAGE_SIZE);
        if !self.charge(hdr, eff) {
            return None;
        }
        // SAFETY: the segment size is a multiple of any page size and a power of two.
        let Some(p) = (unsafe { self.os_map(SEGMENT_SIZE, SEGMENT_SIZE) }) else {
            self.uncharge(hdr);
            return None;
        };
        self.advise_huge(p.as_ptr().addr(), SEGMENT_SIZE);
        let seg = p.as_ptr().cast::<Segment>();
        // SAFETY: fresh memory of at least a slice; all-zero and the empty page in every slot
        // is a valid empty header.
        unsafe {
            if !P::MAP_ZEROED {
                ptr::write_bytes(p.as_ptr(), 0, core::mem::size_of::<Segment>());
            }
            (*seg).slice_page = [Page::empty(); SLICES];
            (*seg).free = ALL_SLICES;
            (*seg).committed = 1;
        }
        // The heap grows: a background thread will have memory to give back. It is started at
        // the next allocation's slow path — not here, in the middle of one, where the
        // allocation its start makes (`pthread_create` calls `calloc`) would find this
        // thread's heap half edited — and never by the free that finds the memory.
        self.purge_wanted();
        Some(seg)
    }

    /// Gives a slab page's span back to the page heap.
    ///
    /// # Safety
    /// `page` is live, has no block in use, and is on no list; nobody will touch it again.
    pub(crate) unsafe fn span_free(&self, page: *mut Page) {
        let seg = segment_of_desc(page);
        // SAFETY: `page` is a descriptor inside `seg`'s header.
        let idx = unsafe { page.offset_from((&raw mut (*seg).pages).cast::<Page>()) } as usize;
        // SAFETY: the page is live.
        let n = unsafe { (*page).slices } as usize;
        let run = run_mask(idx, n);
        self.counters.slab_pages.fetch_sub(1, Ordering::Relaxed);
        // Still ours: poisoned before another thread can take it.
        crate::track::poison(self.platform.ptr_from_addr(seg.addr() + idx * SLICE_SIZE), n * SLICE_SIZE);
        let (unmap, purge, purge_later);
        {
            let mut ph = self.lock(&self.pages);
            // SAFETY: the segment is live (it holds this page); page-heap fields under the lock.
            unsafe {
                let map = (&raw mut (*seg).slice_page).cast::<*mut Page>();
                for i in idx..idx + n {
                    *map.add(i) = Page::empty();
                }
                (*page).block_size = 0;
                (*page).class = 0;
                let was_full = (*seg).free & ALL_SLICES == 0;
                (*seg).free |= run;
                ph.dirty += n * SLICE_SIZE;
                if was_full {
                    ph.link(seg);
                }
                // Dirty memory appeared: have the background thread purge it if it waits.
                purge_later = P::CAN_PURGE && ph.clock.arm(|| self.platform.now_ns());
                unmap = ph.release_if_empty(seg);
                purge = if unmap.is_none()
                    && (*seg).free & ALL_SLICES != ALL_SLICES
                    && P::CAN_PURGE
                    && ph.dirty > PURGE_SLACK + self.acct.usage() / 8
                {
                    ph.take_dirty(seg)
                } else {
                    0
                };
            }
        }
        if purge != 0 {
            self.purge_taken(&[(seg, purge)]);
        }
        if let Some((seg, dirty)) = unmap {
            // SAFETY: the segment is empty and on no list; nobody can reach it.
            unsafe { self.segment_unmap(seg, dirty) };
        }
        if purge_later {
            self.purge_wanted();
        }
    }

    /// Returns an empty segment to the page source and uncharges it.
    ///
    /// # Safety
    /// `seg` is empty, unlinked and unreachable.
    unsafe fn segment_unmap(&self, seg: *mut Segment, dirty: usize) {
        self.uncharge(dirty + header_bytes(P::PAGE_SIZE));
        self.segmap_remove(seg.addr());
        // SAFETY: per the contract; `seg` came from `os_map(SEGMENT_SIZE, ..)`.
        unsafe { self.os_unmap(NonNull::new_unchecked(seg.cast()), SEGMENT_SIZE) };
    }

    /// Bytes the segment at `base` holds charged: its header pages (more if metadata grew past
    /// them) and its committed slices. For [`Core::audit_usage`].
    #[cfg(any(test, feature = "mock"))]
    pub(crate) fn segment_charged(&self, base: usize) -> usize {
        let _ph = self.lock(&self.pages);
        let seg = self.platform.ptr_from_addr(base).cast::<Segment>();
        // SAFETY: a live segment (the caller found it in the segment map and keeps segments
        // from going); its page-heap fields under the lock.
        unsafe {
            let header = header_bytes(P::PAGE_SIZE).max((*seg).meta_end.next_multiple_of(P::PAGE_SIZE));
            header + ((*seg).committed & ALL_SLICES).count_ones() as usize * SLICE_SIZE
        }
    }

    /// Purges the slices [`take_dirty`](PageHeap::take_dirty) took — `(segment, mask)` pairs —
    /// with no lock held, then hands them back to the page heap: purged ones uncommitted and
    /// uncharged, the others dirty again. A segment whose every slice is then free is kept as
    /// the spare or given back, as [`span_free`](Self::span_free) would have. Returns the bytes
    /// purged.
    fn purge_taken(&self, taken: &[(*mut Segment, u64)]) -> usize {
        debug_assert!(taken.len() <= PURGE_BATCH);
        let mut purged = [0u64; PURGE_BATCH];
        let mut given = 0;
        for (&(seg, mask), done) in taken.iter().zip(purged.iter_mut()) {
            let mut left = mask;
            while left != 0 {
                let start = left.trailing_zeros() as usize;
                let len = (left >> start).trailing_ones() as usize;
                let run = run_mask(start, len);
                let ptr = self.platform.ptr_from_addr(seg.addr() + start * SLICE_SIZE);
                // SAFETY: slices this thread took from the page heap: free, and no span is cut
                // from them (nor the segment given back) until they are handed back below.
                if unsafe { self.out("purge").purge(NonNull::new_unchecked(ptr), len * SLICE_SIZE) } {
                    *done |= run;
                    given += len * SLICE_SIZE;
                }
                left &= !run;
            }
        }
        if given != 0 {
            self.uncharge(given);
            self.counters.purged.fetch_add(given, Ordering::Relaxed);
        }
        let mut unmaps = [None; PURGE_BATCH];
        {
            let mut ph = self.lock(&self.pages);
            for ((&(seg, mask), &done), unmap) in taken.iter().zip(&purged).zip(unmaps.iter_mut()) {
                // SAFETY: the segments are live (their `purging` slices keep them); page-heap
                // fields under the lock.
                unsafe {
                    (*seg).purging &= !mask;
                    (*seg).committed &= !done;
                    ph.dirty += (mask & !done).count_ones() as usize * SLICE_SIZE;
                    *unmap = ph.release_if_empty(seg);
                }
            }
        }
        for (seg, dirty) in unmaps.into_iter().flatten() {
            // SAFETY: empty and off every list: nobody can reach it.
            unsafe { self.segment_unmap(seg, dirty) };
        }
        given
    }

    /// Gives back dirty memory that has waited [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS): every dirty slice, the
    /// spare segment and the cached large areas, as [`trim`](Self::trim) would. Returns
    /// whether dirty memory is still waiting (call again after [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS)). For the
    /// platform's background thread; calling it from anywhere else is harmless.
    pub fn purge_aged(&self) -> bool {
        let before = self.acct.usage();
        let waiting = self.purge_aged_inner();
        let given = before.saturating_sub(self.acct.usage());
        if given != 0 {
            self.counters.aged_purges.fetch_add(1, Ordering::Relaxed);
            self.counters.aged_purged.fetch_add(given, Ordering::Relaxed);
        }
        waiting
    }

    fn purge_aged_inner(&self) -> bool {
        let areas = self.area_cache_flush(true) | self.heaps_dissolve(true);
        {
            let ph = self.lock(&self.pages);
            if !ph.clock.due(|| self.platform.now_ns()) {
                return ph.clock.armed() || areas;
            }
        }
        self.pages_trim();
        let mut ph = self.lock(&self.pages);
        // New dirty memory since the trim waits its own delay.
        ph.clock.disarm();
        if ph.dirty != 0 {
            ph.clock.arm(|| self.platform.now_ns());
        }
        ph.clock.armed() || areas
    }

    /// Purges every dirty slice and returns the spare segment: the page heap's part of
    /// [`Core::trim`]. The purges are made outside the lock, [`PURGE_BATCH`] segments at a time.
    pub(crate) fn pages_trim(&self) {
        if P::CAN_PURGE {
            loop {
                let mut taken = [(ptr::null_mut(), 0u64); PURGE_BATCH];
                let mut n = 0;
                {
                    let mut ph = self.lock(&self.pages);
                    let mut seg = ph.partial;
                    while !seg.is_null() && n < PURGE_BATCH {
                        // SAFETY: live segment on the partial list, under the lock.
                        unsafe {
                            let m = ph.take_dirty(seg);
                            if m != 0 {
                                taken[n] = (seg, m);
                                n += 1;
                            }
                            seg = (*seg).next;
                        }
                    }
                }
                if n == 0 {
                    break;
                }
                let given = self.purge_taken(&taken[..n]);
                // A full batch: the list may hold more. Stop if the platform purged nothing (its
                // slices are dirty again and would be taken again).
                if n < PURGE_BATCH || given == 0 {
                    break;
                }
            }
        }
        let spare = {
            let mut ph = self.lock(&self.pages);
            let spare = core::mem::replace(&mut ph.spare, ptr::null_mut());
            let spare = if !spare.is_null() {
                // SAFETY: the spare is live; under the lock.
                let dirty = unsafe { (*spare).committed & ALL_SLICES }.count_ones() as usize * SLICE_SIZE;
                ph.dirty -= dirty;
                ph.segments -= 1;
                Some((spare, dirty))
            } else {
                None
            };
            if ph.dirty == 0 {
                // Everything was given back: nothing waits for the purge.
                ph.clock.disarm();
            }
            spare
        };
        if let Some((seg, dirty)) = spare {
            // SAFETY: the spare was empty and is now unreachable.
            unsafe { self.segment_unmap(seg, dirty) };
        }
    }

    /// The page covering `addr`: the empty page ([`Page::empty`]) for a slice of no live page.
    ///
    /// # Safety
    /// `addr` lies in a live segment.
    #[inline(always)]
    pub(crate) unsafe fn page_of(&self, addr: usize) -> *mut Page {
        let seg = self.platform.ptr_from_addr(addr & !SEGMENT_MASK).cast::<Segment>();
        let idx = (addr >> SLICE_SHIFT) & (SLICES - 1);
        // SAFETY: the segment header is mapped while any of its spans is live; the entry was
        // written before the block was handed out.
        unsafe { *(&raw const (*seg).slice_page).cast::<*mut Page>().add(idx) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_find_aligned_free_spans() {
        assert_eq!(runs(0b1111_0110, 1), 0b1111_0110);
        assert_eq!(runs(0b1111_0110, 2), 0b0101_0000);
        assert_eq!(runs(0b1111_0110, 4), 0b0001_0000);
        assert_eq!(runs(0b1111_0110, 8), 0);
        assert_eq!(runs(!1, 8), 0x0101_0101_0101_0100);
        assert_eq!(run_mask(62, 2), 0b11 << 62);
        assert_eq!(run_mask(56, 8), 0xff << 56);
    }
}
