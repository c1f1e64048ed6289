//! One slab page: a span of slices cut into blocks of one size class, with two free lists.
//!
//! * `free` — blocks ready to hand out, a LIFO stack: the fast path pops here, and the owner's
//!   frees push here, so the block handed out next is the one freed last — still in the cache.
//! * `remote` — blocks other threads freed ([`RemoteList`]), taken by the owner when `free`
//!   runs dry (free-list sharding: a cross-thread free never touches the owner's list).
//!
//! mimalloc keeps the owner's frees on a third list, `local_free`, swapped in when `free` runs
//! dry, so that the slow path runs at a fixed rhythm. The price is reuse distance: a freed
//! block waits a whole batch before it is handed out again, by then out of the L1 cache. Under
//! callgrind's cache model (L1 32 KiB, L2 512 KiB) glibc's malloc-thread loop took 1.34 L1 misses
//! an iteration with the third list and 0.59 without it (mimalloc 0.71, tcmalloc 0.41); a
//! larson-like churn 2.92 and 2.51 (tcmalloc 1.99). Remote frees wait until `free` runs dry —
//! at most a page of blocks, which `used` still counts.

use super::heap::Heap;
use super::remote::{Block, RemoteList};
use crate::sync::AtomicPtr;
use crate::{Core, Platform};
use core::ptr;

/// Descriptor of one slab page. Lives in its segment's header; its address never changes.
///
/// Field ownership: "owner" means the thread whose heap owns the page — or, while the page is
/// abandoned, whoever holds the abandoned-list lock. The page heap initialises the descriptor
/// under its lock before handing the page to an owner.
#[repr(C)]
pub struct Page {
    /// Blocks ready to allocate. Owner only. Hot: first field.
    pub(crate) free: *mut Block,
    /// Blocks handed out and not yet back on `free` (blocks on `remote` still count). Owner
    /// only. Zero means the page can be given back.
    pub(crate) used: u32,
    /// Block size in bytes. Constant while the page is live.
    pub(crate) block_size: u32,
    /// The owning heap; null while abandoned. Written by the owner when it adopts or abandons the
    /// page (under the abandoned-list lock) and by the page heap at creation; read (Relaxed) by
    /// every freeing thread, which only compares it with its own heap.
    pub(crate) owner: AtomicPtr<Heap>,
    /// Blocks other threads freed. Any thread pushes; the owner takes.
    pub(crate) remote: RemoteList,
    /// First block. Constant while live.
    pub(crate) start: *mut u8,
    /// Blocks that fit (an exact-fit span: its length in bytes). Constant while live.
    pub(crate) capacity: u32,
    /// Blocks carved so far; memory past them is untouched. Owner only.
    pub(crate) reserved: u32,
    /// Links in the owner's page queue or the abandoned list. Owner only.
    pub(crate) next: *mut Page,
    /// See `next`.
    pub(crate) prev: *mut Page,
    /// Size class. Constant while live.
    pub(crate) class: u8,
    /// Slices the page spans. Set by the page heap; constant while live.
    pub(crate) slices: u8,
    /// On the owner's full list rather than its queue. Owner only.
    pub(crate) in_full: bool,
    /// For an empty page kept for reuse: the heap's slow-path count at which it goes back
    /// ([`RETIRE_CYCLES`](crate::slab::heap::RETIRE_CYCLES) after it emptied). Owner only.
    pub(crate) retire_at: u32,
}

/// `Page::class` of an exact-fit span (`slab::fit`): blocks of any size, each with its size in
/// a header, no owner — every free of one takes the exact-fit lock. Reset when the span goes
/// back, so a late free into it is reported as one into a given-back page.
pub(crate) const FIT_CLASS: u8 = u8::MAX;
const _: () = assert!(crate::size_class::NUM_CLASSES < FIT_CLASS as usize);

/// A quick list of exact-fit blocks (`Heap::quick`, see `slab::fit`): a [`Page`]'s first two
/// fields — the only ones the allocation fast path reads — at the same offsets, and nothing
/// else, so that a heap's `small` table can point the fast path at it as at a page
/// ([`as_page`](Self::as_page)). Owned by its heap's thread.
#[repr(C)]
pub(crate) struct QuickList {
    /// The blocks, linked as a page's free list links them.
    pub(crate) free: *mut Block,
    /// [`QUICK_EMPTY`] minus the number of blocks on the list: a push counts it down, the fast
    /// path's pop (which counts a page's blocks in use up) counts it up.
    pub(crate) used: u32,
}

const _: () = assert!(
    core::mem::offset_of!(Page, free) == core::mem::offset_of!(QuickList, free)
        && core::mem::offset_of!(Page, used) == core::mem::offset_of!(QuickList, used)
);

/// `QuickList::used` of an empty list (any value above a list's longest length would do).
pub(crate) const QUICK_EMPTY: u32 = 1 << 16;

impl QuickList {
    /// An empty list.
    pub(crate) const EMPTY: QuickList = QuickList { free: ptr::null_mut(), used: QUICK_EMPTY };

    /// Blocks on the list.
    ///
    /// # Safety
    /// `list` is live and owned by the caller.
    #[inline]
    pub(crate) unsafe fn len(list: *const QuickList) -> u32 {
        // SAFETY: per the contract.
        unsafe { QUICK_EMPTY - (*list).used }
    }

    /// Empties `list`; its blocks, as a chain linked through their first words (null if none).
    ///
    /// # Safety
    /// `list` is live and owned by the caller.
    #[inline]
    pub(crate) unsafe fn take(list: *mut QuickList) -> *mut Block {
        // SAFETY: per the contract.
        unsafe { core::mem::replace(&mut *list, QuickList::EMPTY).free }
    }

    /// Makes the empty `list` hold `chain`, `len` blocks linked through their first words.
    ///
    /// # Safety
    /// `list` is live, empty and owned by the caller; `chain` is `len` blocks of its size, ours.
    #[inline]
    pub(crate) unsafe fn fill(list: *mut QuickList, chain: *mut Block, len: u32) {
        // SAFETY: per the contract.
        unsafe { *list = QuickList { free: chain, used: QUICK_EMPTY - len } }
    }

    /// `list` as the page the fast path pops: only `free` and `used` are ever read or written
    /// through it. The list must not be a heap's last field, so that the page's extent stays
    /// inside the heap.
    #[inline(always)]
    pub(crate) fn as_page(list: *mut QuickList) -> *mut Page {
        list.cast()
    }
}

/// A `Page` that may live in a `static`.
#[repr(transparent)]
pub(crate) struct StaticPage(pub(crate) Page);

// SAFETY: the only static page, `EMPTY_PAGE`, is never written: its `free` list is empty, so
// every path that would modify a page leaves the fast path first.
unsafe impl Sync for StaticPage {}

/// The page every empty slot of a heap's `direct` table points to: its `free` list is empty, so
/// the fast path falls through to the slow path without a separate "is there a page?" test.
pub(crate) static EMPTY_PAGE: StaticPage = StaticPage(Page::new());

/// Most bytes carved in one go: carving touches memory, so it is done a little at a time — but
/// each carve is a trip through the slow path, and a page cycling through 4 KiB batches paid
/// one every 16 blocks of 256 B (churn with 1024 live: 10.8 → 7.4 ns at 16 KiB; 64 KiB was
/// 5.1 ns but touched memory sparse classes never use: mstress peak RSS +25 %).
const CARVE_BYTES: usize = 16384;

impl Page {
    /// An unused descriptor; all-zero memory is the same.
    pub(crate) const fn new() -> Page {
        Page {
            free: ptr::null_mut(),
            used: 0,
            block_size: 0,
            owner: AtomicPtr::new(ptr::null_mut()),
            remote: RemoteList::new(),
            start: ptr::null_mut(),
            capacity: 0,
            reserved: 0,
            next: ptr::null_mut(),
            prev: ptr::null_mut(),
            class: 0,
            slices: 0,
            in_full: false,
            retire_at: 0,
        }
    }

    /// Whether `page` is a live exact-fit span.
    ///
    /// # Safety
    /// `page` is a descriptor (live, given back, or the empty page).
    #[inline]
    pub(crate) unsafe fn is_fit(page: *const Page) -> bool {
        // SAFETY: per the contract; `class` is constant while the page is live.
        unsafe { (*page).class == FIT_CLASS }
    }

    /// The address of the static empty page.
    #[inline(always)]
    pub(crate) fn empty() -> *mut Page {
        (&raw const EMPTY_PAGE.0).cast_mut()
    }

    /// Carves up to a page's worth of untouched blocks onto the empty `free` list. Returns
    /// whether any block was carved.
    ///
    /// # Safety
    /// `page` is live and owned by the caller; its `free` list is empty.
    pub(crate) unsafe fn extend(page: *mut Page) -> bool {
        // SAFETY: the caller owns the live page; every block carved lies inside its span.
        unsafe {
            debug_assert!((*page).free.is_null());
            let left = (*page).capacity - (*page).reserved;
            if left == 0 {
                return false;
            }
            let bs = (*page).block_size as usize;
            let n = ((CARVE_BYTES / bs).max(1) as u32).min(left);
            let first = (*page).start.add((*page).reserved as usize * bs);
            let mut b = first;
            for _ in 1..n {
                let next = b.add(bs);
                Block::set_next(b.cast(), next.cast());
                b = next;
            }
            Block::set_next(b.cast(), ptr::null_mut());
            (*page).free = first.cast();
            (*page).reserved += n;
            true
        }
    }

    /// Moves the remote list onto `free` if `free` is empty. Returns whether `free` now has a
    /// block.
    ///
    /// # Safety
    /// `page` is live and owned by the caller.
    #[inline]
    pub(crate) unsafe fn collect<P: Platform>(core: &Core<P>, page: *mut Page) -> bool {
        // SAFETY: the caller owns the page, hence its owner-only fields and every block on its
        // free and (once taken) remote lists.
        unsafe {
            if !(*page).free.is_null() {
                return true;
            }
            let remote = (*page).remote.take();
            if !remote.is_null() {
                core.absorb_remote(page, remote);
            }
            !(*page).free.is_null()
        }
    }

    /// Pushes `block` onto `free`: a free by the owner. Returns whether the page is now empty.
    ///
    /// # Safety
    /// `page` is live and owned by the caller; `block` is one of its blocks in use.
    #[inline(always)]
    pub(crate) unsafe fn push_free(page: *mut Page, block: *mut Block) -> bool {
        // SAFETY: per the contract.
        unsafe {
            Block::set_next(block, (*page).free);
            (*page).free = block;
            (*page).used -= 1;
            (*page).used == 0
        }
    }

    /// Whether the page could hand out a block after a collect or an extend (a hint for pages
    /// on the full list: the remote list may grow at any time).
    ///
    /// # Safety
    /// `page` is live and owned by the caller.
    #[inline]
    pub(crate) unsafe fn has_room(page: *mut Page) -> bool {
        // SAFETY: owner-only fields read by the owner; `remote` is atomic.
        unsafe {
            !(*page).free.is_null() || (*page).remote.has_blocks() || (*page).reserved < (*page).capacity
        }
    }
}

/// An intrusive doubly linked list of pages (through `Page::next`/`prev`). A page is on at most
/// one list at a time. Whoever owns the list owns the links of its pages.
pub(crate) struct PageQueue {
    pub(crate) head: *mut Page,
    pub(crate) tail: *mut Page,
    pub(crate) len: u32,
}

impl PageQueue {
    pub(crate) const EMPTY: PageQueue = PageQueue { head: ptr::null_mut(), tail: ptr::null_mut(), len: 0 };

    /// Appends `p`.
    ///
    /// # Safety
    /// `p` is a live page on no list; the caller owns both.
    pub(crate) unsafe fn push_back(&mut self, p: *mut Page) {
        // SAFETY: per the contract, the links of `p` and of the list's pages are ours.
        unsafe {
            (*p).next = ptr::null_mut();
            (*p).prev = self.tail;
            if self.tail.is_null() {
                self.head = p;
            } else {
                (*self.tail).next = p;
            }
            self.tail = p;
        }
        self.len += 1;
    }

    /// Prepends `p`.
    ///
    /// # Safety
    /// As [`push_back`](Self::push_back).
    pub(crate) unsafe fn push_front(&mut self, p: *mut Page) {
        // SAFETY: per the contract, the links of `p` and of the list's pages are ours.
        unsafe {
            (*p).prev = ptr::null_mut();
            (*p).next = self.head;
            if self.head.is_null() {
                self.tail = p;
            } else {
                (*self.head).prev = p;
            }
            self.head = p;
        }
        self.len += 1;
    }

    /// Unlinks `p`.
    ///
    /// # Safety
    /// `p` is on this list; the caller owns it.
    pub(crate) unsafe fn remove(&mut self, p: *mut Page) {
        // SAFETY: per the contract, `p` and its neighbours are on this list, which we own.
        unsafe {
            let (prev, next) = ((*p).prev, (*p).next);
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).prev = prev;
            }
            (*p).next = ptr::null_mut();
            (*p).prev = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Unlinks and returns the first page, or null.
    ///
    /// # Safety
    /// The caller owns the list.
    pub(crate) unsafe fn pop_front(&mut self) -> *mut Page {
        let p = self.head;
        if !p.is_null() {
            // SAFETY: `p` is on this list.
            unsafe { self.remove(p) };
        }
        p
    }
}
