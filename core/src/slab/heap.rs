//! Per-thread heaps: the slab's fast paths read one heap and one page; everything else here is
//! the slow path — finding a page with room, retiring empty pages, freeing into other threads'
//! pages.
//!
//! A heap is owned by one thread (`ThreadCtx::heap`) and touched only by it, except:
//! * the heap pool links (`pool_next`, `all_next`, `live`) — under `Core::heaps`;
//! * after `fork`, the child abandons the heaps of threads that do not exist there.
//!
//! Heaps are never returned to the page source: a freeing thread may still compare a page's
//! `owner` with a heap pointer after that heap's thread is gone, and a recycled heap gets a new
//! thread, never a different type.

use super::page::{Page, PageQueue, QuickList};
use super::remote::{Block, Push};
use super::segment::Miss;
use super::MAX_VACANT;
use super::SLICE_SIZE;
use crate::fit::QUICK_CLASSES;
use crate::gfp::{Effective, Gfp};
use crate::platform::{ThreadCtx, ThreadState};
use crate::reclaim::{Attempt, Cause, Step};
use crate::size_class::{class_align, class_size, class_slices, NUM_CLASSES, SMALL_GRANULES};
use crate::sync::{fence, AtomicBool, Ordering};
use crate::{Core, Platform};
use core::ptr;

/// A thread's heap.
#[repr(C)]
pub struct Heap {
    /// `direct` for the small sizes, by 8-byte granule (`(size + 7) / 8`), so the fast path
    /// goes from a size to its page with no class lookup: entry `g` is `direct` of the class
    /// serving sizes `8(g−1)+1 ..= 8g`. Written with `direct`, by the owner.
    pub(crate) small: [*mut Page; SMALL_GRANULES],
    /// The page each class allocates from: the head of `queues[class]`, or the empty page.
    /// With `small`, the fast path's only read of the heap. Owner only.
    pub(crate) direct: [*mut Page; NUM_CLASSES],
    /// Quick lists: freed exact-fit blocks waiting for a request of their size, one per quick
    /// size, each laid out as a page's head so that `small` can point the fast path at it (see
    /// `slab::fit`; not the last field: a page's extent from any of them stays in the heap).
    /// Owner only.
    pub(crate) quick: [QuickList; QUICK_CLASSES],
    /// Pages that may have free blocks, per class.
    pub(crate) queues: [PageQueue; NUM_CLASSES],
    /// Pages found full, per class; scanned for frees before a fresh page is taken.
    pub(crate) full: [PageQueue; NUM_CLASSES],
    /// The pool's fields, from here to the next marker, have a cache line of their own:
    /// `vacant` is read by every thread freeing into one of the heap's pages, and must not
    /// share a line with what the owner writes on its slow paths.
    _pool_line: [CacheLine; 0],
    /// Next heap on the pool's free or vacant list. Pool lock.
    pub(crate) pool_next: *mut Heap,
    /// While vacant: when its thread left it (platform clock). Pool lock.
    pub(crate) vacated_at: u64,
    /// Next heap ever created. Pool lock; never unlinked.
    pub(crate) all_next: *mut Heap,
    /// Owned by a thread (or the orphan slot). Pool lock.
    pub(crate) live: bool,
    /// On the pool's vacant list. Written under the pool lock; read without it (Relaxed) by a
    /// thread freeing into one of the heap's pages, which then takes the lock and looks again.
    pub(crate) vacant: AtomicBool,
    _owner_line: [CacheLine; 0],
    /// Classes whose direct page went empty and is kept for reuse (bit `class`). Owner only.
    /// Invariant: bit set ⇒ `direct[class]` is a live page of this heap (it may be in use
    /// again; the next slow path clears the bit then).
    pub(crate) retired: u128,
    /// Slow paths taken (wrapping). Owner only.
    pub(crate) slow: u32,
    /// The earliest `retire_at` of the kept pages, when `retired ≠ 0`: before it, a slow path
    /// looks at none of them. Owner only.
    pub(crate) retire_due: u32,
    /// The owner is inside a slow path that edits the page lists. Written only by the owner
    /// (Release, so it is set before any list edit becomes visible); read by the child of
    /// `fork`, which must not walk lists a vanished thread left half-edited.
    pub(crate) busy: AtomicBool,
}

/// A zero-sized field of this type starts the next field on a new cache line.
#[repr(align(64))]
struct CacheLine;

/// Marks a heap busy for the scope of a slow path; restores the previous state (slow paths
/// nest: a retire inside an adoption).
struct Busy {
    heap: *mut Heap,
    prev: bool,
}

impl Busy {
    /// # Safety
    /// `heap` is live and owned by the caller for the guard's lifetime.
    #[inline]
    unsafe fn enter(heap: *mut Heap) -> Busy {
        // SAFETY: per the contract.
        let flag = unsafe { &(*heap).busy };
        let prev = flag.load(Ordering::Relaxed);
        flag.store(true, Ordering::Relaxed);
        fence(Ordering::Release);
        Busy { heap, prev }
    }
}

impl Drop for Busy {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the heap outlives the guard (see `enter`).
        unsafe { (*self.heap).busy.store(self.prev, Ordering::Release) };
    }
}

/// A `Heap` that may live in a `static`.
#[repr(transparent)]
pub struct StaticHeap(pub(crate) Heap);

// SAFETY: the only static heap, `EMPTY_HEAP`, is never written (see below).
unsafe impl Sync for StaticHeap {}

/// The heap of every thread that has none yet, or no longer has one. Its `direct` table points
/// only to the empty page, so the fast path always falls through to the slow path, which checks
/// for this heap before touching anything; it owns no page, so every free from such a thread
/// takes the remote path. It is never written.
pub static EMPTY_HEAP: StaticHeap = StaticHeap(Heap::empty_heap());

impl Heap {
    const fn empty_heap() -> Heap {
        Heap {
            small: [(&raw const super::page::EMPTY_PAGE.0).cast_mut(); SMALL_GRANULES],
            direct: [(&raw const super::page::EMPTY_PAGE.0).cast_mut(); NUM_CLASSES],
            quick: [QuickList::EMPTY; QUICK_CLASSES],
            queues: [PageQueue::EMPTY; NUM_CLASSES],
            full: [PageQueue::EMPTY; NUM_CLASSES],
            _pool_line: [],
            pool_next: ptr::null_mut(),
            vacated_at: 0,
            all_next: ptr::null_mut(),
            live: false,
            vacant: AtomicBool::new(false),
            _owner_line: [],
            retired: 0,
            slow: 0,
            retire_due: 0,
            busy: AtomicBool::new(false),
        }
    }

    /// The empty heap's address.
    #[inline(always)]
    pub(crate) fn empty() -> *mut Heap {
        (&raw const EMPTY_HEAP.0).cast_mut()
    }

    /// The page `class` allocates from.
    ///
    /// # Safety
    /// `heap` is live or the empty heap; `class < NUM_CLASSES`.
    #[inline(always)]
    pub(crate) unsafe fn direct(heap: *mut Heap, class: usize) -> *mut Page {
        // SAFETY: per the contract.
        unsafe { *(&raw const (*heap).direct).cast::<*mut Page>().add(class) }
    }

    /// The page the small `size` (at most `SMALL_MAX`, alignment at most `MIN_ALIGN`)
    /// allocates from.
    ///
    /// # Safety
    /// `heap` is live or the empty heap; `size <= SMALL_MAX`.
    #[inline(always)]
    pub(crate) unsafe fn direct_small(heap: *mut Heap, size: usize) -> *mut Page {
        // SAFETY: per the contract: the granule is at most `SMALL_MAX / 8`.
        unsafe { *(&raw const (*heap).small).cast::<*mut Page>().add((size + 7) >> 3) }
    }

    /// Sets the page `class` allocates from, in `direct` and, for a small class, in every
    /// granule of `small` it serves.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller; `class < NUM_CLASSES`.
    #[inline]
    unsafe fn set_direct(heap: *mut Heap, class: usize, page: *mut Page) {
        // SAFETY: per the contract; granules of a small class are below `SMALL_GRANULES`.
        unsafe {
            *(&raw mut (*heap).direct).cast::<*mut Page>().add(class) = page;
            let hi = class_size(class) / 8;
            if hi < SMALL_GRANULES {
                let lo = if class == 0 { 0 } else { class_size(class - 1) / 8 + 1 };
                for g in lo..=hi {
                    Heap::set_small(heap, g * 8, page);
                }
            }
        }
    }

    /// # Safety
    /// `heap` is live and owned by the caller; `class < NUM_CLASSES`.
    #[inline(always)]
    unsafe fn queue<'a>(heap: *mut Heap, class: usize) -> &'a mut PageQueue {
        // SAFETY: per the contract; the reference lives only while the owner works on it.
        unsafe { &mut *(&raw mut (*heap).queues).cast::<PageQueue>().add(class) }
    }

    /// # Safety
    /// As [`queue`](Self::queue).
    #[inline(always)]
    unsafe fn full<'a>(heap: *mut Heap, class: usize) -> &'a mut PageQueue {
        // SAFETY: per the contract.
        unsafe { &mut *(&raw mut (*heap).full).cast::<PageQueue>().add(class) }
    }

    /// The heap's quick list `class`.
    ///
    /// # Safety
    /// `heap` is live or the empty heap; `class ≤ QUICK_CLASSES` (the end, to compare with).
    #[inline(always)]
    pub(super) unsafe fn quick(heap: *mut Heap, class: usize) -> *mut QuickList {
        // SAFETY: per the contract.
        unsafe { (&raw mut (*heap).quick).cast::<QuickList>().add(class) }
    }

    /// Points the fast path's entry for small `size` at `page`.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller; `size ≤ SMALL_MAX`; `page` is one of its pages
    /// for blocks of at least `size` bytes (or the empty page).
    #[inline]
    pub(super) unsafe fn set_small(heap: *mut Heap, size: usize, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe { *(&raw mut (*heap).small).cast::<*mut Page>().add((size + 7) >> 3) = page }
    }

    /// Makes `page`, which has a free block and is on no list, the class's current page: the
    /// head of its queue and its `direct` entry.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller, and so is `page`; `class` is the page's class.
    #[inline]
    unsafe fn activate(heap: *mut Heap, class: usize, page: *mut Page) -> *mut Page {
        // SAFETY: per the contract.
        unsafe {
            Heap::queue(heap, class).push_front(page);
            Heap::set_direct(heap, class, page);
        }
        page
    }

    /// Whether `page` is on one of `heap`'s lists of `class`. `page` is only compared.
    ///
    /// # Safety
    /// The caller owns `heap`; `class < NUM_CLASSES`.
    unsafe fn holds(heap: *mut Heap, class: usize, page: *mut Page) -> bool {
        // SAFETY: per the contract, the lists and their pages are ours to walk.
        unsafe {
            for list in [Heap::queue(heap, class), Heap::full(heap, class)] {
                let mut p = list.head;
                while !p.is_null() {
                    if p == page {
                        return true;
                    }
                    p = (*p).next;
                }
            }
            false
        }
    }

    /// Takes `page` off `heap`'s lists (and its page table, moving the class on to the next
    /// queued page).
    ///
    /// # Safety
    /// The caller owns `heap` and `page`, which is on one of its lists.
    unsafe fn unlink(heap: *mut Heap, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe {
            let class = (*page).class as usize;
            if (*page).in_full {
                Heap::full(heap, class).remove(page);
                (*page).in_full = false;
            } else {
                let q = Heap::queue(heap, class);
                q.remove(page);
                if Heap::direct(heap, class) == page {
                    let next = if q.head.is_null() { Page::empty() } else { q.head };
                    Heap::set_direct(heap, class, next);
                }
            }
        }
    }

    /// Resets a heap to "owns nothing".
    ///
    /// # Safety
    /// `heap` points to memory for a heap that nobody else uses.
    pub(crate) unsafe fn init(heap: *mut Heap, all_next: *mut Heap) {
        // SAFETY: per the contract.
        unsafe {
            ptr::write(heap, Heap::empty_heap());
            (*heap).all_next = all_next;
        }
    }
}

/// Pops a block from a page known to have one and zeroes it if asked.
///
/// # Safety
/// `page` is live, owned by the caller, with a non-empty `free` list; `size` ≤ its block size.
#[inline(always)]
pub(crate) unsafe fn pop<P: Platform>(core: &Core<P>, page: *mut Page, size: usize, zero: bool) -> *mut u8 {
    // SAFETY: per the contract.
    unsafe {
        let block = (*page).free;
        let next = Block::next(block);
        #[cfg(feature = "hardened")]
        {
            if !crate::hardened::plausible(block, next) {
                core.corrupt_link(page, block, next);
            }
            Block::clear(block);
        }
        #[cfg(not(feature = "hardened"))]
        let _ = core;
        (*page).free = next;
        (*page).used += 1;
        crate::track::unpoison(block.cast(), size);
        // A slab block is always cleared, fresh or not: writing first also means that a
        // fresh page is faulted in by a write, never mapped to the zero page by a read and then
        // copied on the next write (a copy that flushes the TLB of every CPU the process runs on).
        if zero {
            ptr::write_bytes(block.cast::<u8>(), 0, size);
        }
        block.cast()
    }
}

/// Slow paths of its heap an empty page kept for reuse outlives (mimalloc's retire cycles):
/// a class whose only page empties and refills — per-thread churn over many classes — keeps
/// its page and its carved free list instead of giving the span back and taking it again.
pub(crate) const RETIRE_CYCLES: u32 = 16;
const _: () = assert!(NUM_CLASSES <= 128, "Heap::retired has a bit per class");

/// Why a free into a segment slice of no live page is bad.
pub(crate) const NOT_IN_A_PAGE: &str = "inside a ctxalloc segment but not in a live slab page";

impl<P: Platform> Core<P> {
    /// The slow path of a slab allocation: attaches a heap to a new thread, sends exited threads
    /// to the orphan heap, then finds a page with room.
    ///
    /// # Safety
    /// `t` is the calling thread's context or [`ThreadCtx::none()`]; `class < NUM_CLASSES`;
    /// `size ≤ class_size(class)`.
    #[inline(never)]
    pub(crate) unsafe fn alloc_slow(
        &self,
        t: *const ThreadCtx,
        class: usize,
        size: usize,
        call: Gfp,
    ) -> *mut u8 {
        // A thread the platform had no context for gets its own now.
        let t = if t == ThreadCtx::none() { self.platform.thread() } else { t };
        #[cfg(feature = "hardened")]
        crate::hardened::ensure(self.platform.now_ns());
        self.start_background_if_wanted();
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*t };
        let mut heap = t.heap.get();
        if heap == Heap::empty() {
            match t.state() {
                ThreadState::Exited => {
                    // SAFETY: forwarded.
                    return unsafe { self.alloc_orphan(t, class, size, call) };
                }
                _ => match self.thread_attach(t, call) {
                    Ok(h) => heap = h,
                    Err(cause) => {
                        return self.reclaim_failed(size, self.effective_of(call, t), cause);
                    }
                },
            }
        }
        // SAFETY: `heap` is this thread's live heap.
        unsafe {
            (*heap).slow = (*heap).slow.wrapping_add(1);
            if (*heap).retired != 0 && (*heap).slow.wrapping_sub((*heap).retire_due) as i32 >= 0 {
                self.collect_retired(heap);
            }
            self.heap_alloc(heap, t, class, size, call)
        }
    }

    /// The first kept page is due: kept pages whose time has come go back, a kept page in use
    /// again is no longer kept, and the next due time is the earliest of the rest.
    ///
    /// # Safety
    /// `heap` is the caller's live heap.
    #[cold]
    #[inline(never)]
    unsafe fn collect_retired(&self, heap: *mut Heap) {
        // SAFETY: the owner works on its own pages; a set bit names a live direct page.
        unsafe {
            let now = (*heap).slow;
            let mut due = None::<u32>;
            let mut bits = (*heap).retired;
            while bits != 0 {
                let class = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let page = Heap::direct(heap, class);
                if page == Page::empty() || (*page).used != 0 {
                    (*heap).retired &= !(1 << class);
                } else if now.wrapping_sub((*page).retire_at) as i32 >= 0 {
                    (*heap).retired &= !(1 << class);
                    self.page_free_empty(heap, page);
                } else {
                    let at = (*page).retire_at;
                    due = Some(due.map_or(at, |d| if at.wrapping_sub(d) as i32 > 0 { d } else { at }));
                }
            }
            if let Some(d) = due {
                (*heap).retire_due = d;
            }
        }
    }

    /// Allocates from `heap`, which the caller owns. When no page has room and no fresh page can
    /// be charged, asks the reclaim policy (outside every lock) and retries.
    ///
    /// # Safety
    /// As [`alloc_slow`](Self::alloc_slow); `heap` is live and owned by the caller.
    pub(crate) unsafe fn heap_alloc(
        &self,
        heap: *mut Heap,
        t: &ThreadCtx,
        class: usize,
        size: usize,
        call: Gfp,
    ) -> *mut u8 {
        // SAFETY: per the contract.
        unsafe {
            let page = Heap::direct(heap, class);
            if !(*page).free.is_null() {
                return pop(self, page, size, call.contains(Gfp::ZERO));
            }
            let mut attempt: Option<Attempt> = None;
            loop {
                let eff = self.effective_of(call, t);
                if let Ok(page) =
                    self.find_page(heap, class, attempt.as_ref().map_or(eff, |a| a.context(eff)), true)
                {
                    return pop(self, page, size, call.contains(Gfp::ZERO));
                }
                let at = attempt.get_or_insert_with(|| Attempt::new(class_slices(class) * SLICE_SIZE));
                if let Step::Fail(cause) = self.reclaim_step(eff, at) {
                    if let Some(p) = self.alloc_larger(heap, class, size, eff, call.contains(Gfp::ZERO)) {
                        return p;
                    }
                    if let Some(p) = self.fit_alloc_held(size, class_align(class), call) {
                        return p;
                    }
                    return self.reclaim_failed(size, eff, cause);
                }
            }
        }
    }

    /// The last resort before a refusal: a free block of a larger class — at most twice the
    /// size, at least as aligned — on a page this heap already has. That memory is charged
    /// already; a heap at its limit (or a kernel's region at its end) serves from the free
    /// slots of its other classes instead of refusing while they sit idle.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller; `class < NUM_CLASSES`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_larger(
        &self,
        heap: *mut Heap,
        class: usize,
        size: usize,
        eff: Effective,
        zero: bool,
    ) -> Option<*mut u8> {
        let (align, most) = (class_align(class), 2 * class_size(class));
        for larger in (class + 1..NUM_CLASSES).take_while(|&c| class_size(c) <= most) {
            if class_align(larger) < align {
                continue;
            }
            // SAFETY: the caller owns the heap; without `map`, only pages and free slices it
            // has already can serve.
            unsafe {
                let mut page = Heap::direct(heap, larger);
                if (*page).free.is_null() {
                    match self.find_page(heap, larger, eff, false) {
                        Ok(p) => page = p,
                        Err(_) => continue,
                    }
                }
                self.counters.larger_class_allocs.fetch_add(1, Ordering::Relaxed);
                return Some(pop(self, page, size, zero));
            }
        }
        None
    }

    /// A page of `class` with a block on its `free` list, made the class's direct page; `Err`
    /// when no memory can be had in context `eff` (or, without `map`, not without mapping a
    /// segment).
    ///
    /// Order: the queued pages (collecting their local and remote frees, carving untouched
    /// blocks) → full pages that received frees → abandoned pages of exited threads → a fresh
    /// page from the page heap. Only the last step needs new memory, and only it reads the
    /// context word.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller; `class < NUM_CLASSES`.
    unsafe fn find_page(
        &self,
        heap: *mut Heap,
        class: usize,
        eff: Effective,
        map: bool,
    ) -> Result<*mut Page, Miss> {
        // SAFETY: the caller owns the heap and every page on its lists.
        unsafe {
            let _busy = Busy::enter(heap);
            let q = Heap::queue(heap, class);
            let mut page = q.head;
            while !page.is_null() {
                let next = (*page).next;
                q.remove(page);
                if Page::collect(self, page) || Page::extend(page) {
                    return Ok(Heap::activate(heap, class, page));
                }
                (*page).in_full = true;
                Heap::full(heap, class).push_back(page);
                page = next;
            }
            Heap::set_direct(heap, class, Page::empty());

            let full = Heap::full(heap, class);
            let mut page = full.head;
            while !page.is_null() {
                let next = (*page).next;
                if Page::has_room(page) && (Page::collect(self, page) || Page::extend(page)) {
                    full.remove(page);
                    (*page).in_full = false;
                    return Ok(Heap::activate(heap, class, page));
                }
                page = next;
            }

            if let Some(page) = self.adopt(heap, class) {
                return Ok(Heap::activate(heap, class, page));
            }

            let page = self.span_alloc(heap, class, eff, map)?;
            Page::extend(page);
            Ok(Heap::activate(heap, class, page))
        }
    }

    /// Called by the owner when a page's last block came back. The only page of its class, a
    /// single slice, is kept as it is for [`RETIRE_CYCLES`] slow paths of the heap (so at most
    /// one empty page per class, given back by then, at `trim` or at thread exit; measured on
    /// glibc-thread: 17 % of the time was spent giving such pages back and taking them again).
    /// Any other goes to the page heap: its slices stay committed ("dirty") and are what the
    /// next page of any class takes first.
    ///
    /// # Safety
    /// `heap` owns `page`, whose `used` is zero.
    #[inline(never)]
    pub(crate) unsafe fn page_retire(&self, heap: *mut Heap, page: *mut Page) {
        // SAFETY: the owner works on its own lists.
        unsafe {
            let class = (*page).class as usize;
            let q = Heap::queue(heap, class);
            if !(*page).in_full && (*page).slices == 1 && q.head == page && q.tail == page {
                (*page).retire_at = (*heap).slow.wrapping_add(RETIRE_CYCLES);
                if (*heap).retired == 0 {
                    (*heap).retire_due = (*page).retire_at;
                }
                (*heap).retired |= 1 << class;
                return;
            }
            self.page_free_empty(heap, page);
        }
    }

    /// Takes an empty page off its list (and the direct table) and gives it to the page heap.
    ///
    /// # Safety
    /// As [`page_retire`](Self::page_retire).
    unsafe fn page_free_empty(&self, heap: *mut Heap, page: *mut Page) {
        // SAFETY: the owner works on its own lists.
        unsafe {
            let _busy = Busy::enter(heap);
            Heap::unlink(heap, page);
            self.span_free(page);
        }
    }

    /// Frees a block of a page the calling thread `t` does not own: into the exact-fit tier for
    /// a block of an exact-fit span, else a lock-free push onto the page's remote list, or — if
    /// the page's thread has exited — the abandoned-page path. Only the dispatch is here, so
    /// that each path saves the registers it needs itself.
    ///
    /// # Safety
    /// `block` is a live block of `page`, and `page` is not owned by the calling thread's heap;
    /// or `page` is the empty page or a given-back descriptor (the free is reported). `t` is
    /// the calling thread's context or [`ThreadCtx::none()`].
    #[inline(never)]
    pub(crate) unsafe fn free_slow(&self, t: *const ThreadCtx, page: *mut Page, block: *mut Block) {
        // SAFETY: the caller's block keeps the page live until it is pushed or freed.
        unsafe {
            if Page::is_fit(page) {
                return self.fit_free(t, page, block);
            }
            if page == Page::empty() {
                // A slice of no live page: what a free without a size may be given (a stale
                // pointer whose page went back), reported like any pointer ctxalloc does not
                // hold.
                return self.bad_free(block.cast(), None, NOT_IN_A_PAGE);
            }
            if (*page).block_size == 0 {
                // The page was given back: every block of it was freed already.
                return self.bad_slab_free(block.cast(), "its page holds no live block (freed twice?)");
            }
            self.free_remote(page, block)
        }
    }

    /// [`free_slow`](Self::free_slow) into a live slab page of another heap.
    ///
    /// # Safety
    /// `block` is a live block of the live slab page `page`, which the calling thread's heap
    /// does not own.
    #[inline(never)]
    unsafe fn free_remote(&self, page: *mut Page, block: *mut Block) {
        // SAFETY: the caller's block keeps the page live until it is pushed or freed; the
        // platform hands out the calling thread's context.
        unsafe {
            // Read before the push: after it, the page may be collected and given back.
            let owner = (*page).owner.load(Ordering::Relaxed);
            let class = (*page).class as usize;
            let vacant = !owner.is_null() && (*owner).vacant.load(Ordering::Relaxed);
            loop {
                if (*page).remote.push(block) == Push::Done {
                    if vacant {
                        self.vacant_collect(owner, class, page);
                    }
                    return;
                }
                if self.free_abandoned(&*self.platform.thread(), page, block) {
                    return;
                }
            }
        }
    }

    /// After a free into `page` of the vacant heap `heap`: takes the page's remote list onto
    /// its free list, and gives the page back if that emptied it — memory of an exited thread
    /// returns as its blocks are freed, while the heap waits for the next thread. Nothing if
    /// the heap is no longer vacant (a thread took it, or it was dissolved: its new owner, or
    /// the abandonment, took the list) or no longer holds the page (a free before this one gave
    /// it back); `page` is not read before it is found on the heap's lists.
    ///
    /// # Safety
    /// `heap` is a heap (heaps are never unmapped); `class < NUM_CLASSES`.
    #[cold]
    #[inline(never)]
    unsafe fn vacant_collect(&self, heap: *mut Heap, class: usize, page: *mut Page) {
        let empty = {
            let _pool = self.lock(&self.heaps);
            // SAFETY: a vacant heap and its pages belong to the holder of the pool lock; `page`
            // is dereferenced only once found on the heap's lists, which hold live pages only.
            unsafe {
                if !(*heap).vacant.load(Ordering::Relaxed) || !Heap::holds(heap, class, page) {
                    return;
                }
                let remote = (*page).remote.take();
                if !remote.is_null() {
                    self.absorb_remote(page, remote);
                }
                if (*page).used != 0 {
                    return;
                }
                Heap::unlink(heap, page);
                page
            }
        };
        // SAFETY: off the vacant heap's lists, no block in use: ours.
        unsafe { self.span_free(empty) };
    }

    /// Frees into an abandoned page: the freeing thread adopts the page if it has a heap (later
    /// frees are then local), otherwise frees under the abandoned-list lock, giving the page back
    /// when its last block returns. Returns false if the page was adopted by someone else
    /// meanwhile (the caller pushes again).
    ///
    /// # Safety
    /// As [`free_slow`](Self::free_slow).
    unsafe fn free_abandoned(&self, t: &ThreadCtx, page: *mut Page, block: *mut Block) -> bool {
        let heap = t.heap.get();
        let mut ab = self.lock(&self.abandoned);
        // SAFETY: under the abandoned-list lock we are the owner of an abandoned page.
        unsafe {
            if !(*page).remote.is_abandoned() {
                return false;
            }
            // On the lists, an abandoned page has no owner. One that kept its owner was empty
            // when its thread exited and is being (or was) given back: every block of it was
            // freed already.
            if !(*page).owner.load(Ordering::Relaxed).is_null() || (*page).block_size == 0 {
                drop(ab);
                self.bad_slab_free(block.cast(), "its page holds no live block (freed twice?)");
                return true;
            }
            let class = (*page).class as usize;
            if heap != Heap::empty() && t.state() == ThreadState::Active {
                let _busy = Busy::enter(heap);
                ab.remove(page);
                (*page).owner.store(heap, Ordering::Relaxed);
                (*page).remote.adopt();
                drop(ab);
                Heap::queue(heap, class).push_back(page);
                if Heap::direct(heap, class) == Page::empty() {
                    Heap::set_direct(heap, class, Heap::queue(heap, class).head);
                }
                if Page::push_free(page, block) {
                    self.page_retire(heap, page);
                }
            } else {
                if Page::push_free(page, block) {
                    ab.remove(page);
                    drop(ab);
                    self.span_free(page);
                }
            }
        }
        true
    }

    /// Gives up every page of a heap whose thread is exiting (or, after `fork`, no longer
    /// exists): its quick lists' blocks go back to the exact-fit tier, empty pages to the page
    /// heap, the others to the abandoned lists, where the next free into them or the next
    /// allocation of their class adopts them.
    ///
    /// # Safety
    /// The caller owns `heap` and no thread will use it until it is acquired again.
    pub(crate) unsafe fn heap_abandon(&self, heap: *mut Heap) {
        // The whole heap is abandoned under the abandoned-list lock, so that a freeing thread
        // that sees a page's abandoned bit finds the page on its list once it gets the lock.
        // Empty pages are collected and given back after it: giving back may call out (unmap,
        // a background-thread start), which no lock is held across.
        // SAFETY: the caller's heap.
        unsafe { self.fit_quick_flush(heap) };
        let mut empty = PageQueue::EMPTY;
        {
            let mut ab = self.lock(&self.abandoned);
            for class in 0..NUM_CLASSES {
                // SAFETY: the caller owns the heap and its pages.
                unsafe {
                    for list in [Heap::queue(heap, class), Heap::full(heap, class)] {
                        loop {
                            let page = list.pop_front();
                            if page.is_null() {
                                break;
                            }
                            let remote = (*page).remote.abandon();
                            if !remote.is_null() {
                                self.absorb_remote(page, remote);
                            }
                            (*page).in_full = false;
                            if (*page).used == 0 {
                                // No live block: nobody frees into it; it stays ours.
                                empty.push_back(page);
                            } else {
                                (*page).owner.store(ptr::null_mut(), Ordering::Relaxed);
                                ab.push(page);
                            }
                        }
                    }
                    Heap::set_direct(heap, class, Page::empty());
                }
            }
        }
        loop {
            // SAFETY: pages of ours with no block in use, on our local list only.
            unsafe {
                let page = empty.pop_front();
                if page.is_null() {
                    break;
                }
                self.span_free(page);
            }
        }
    }

    /// Adopts abandoned pages of `class` until one has room; full ones join the heap's full list.
    ///
    /// # Safety
    /// `heap` is live and owned by the caller.
    unsafe fn adopt(&self, heap: *mut Heap, class: usize) -> Option<*mut Page> {
        const MAX_TRIES: usize = 8;
        for _ in 0..MAX_TRIES {
            let page = {
                let mut ab = self.lock(&self.abandoned);
                let page = ab.pop(class);
                if page.is_null() {
                    return None;
                }
                // SAFETY: under the lock we own the abandoned page and hand it to `heap`.
                unsafe {
                    (*page).owner.store(heap, Ordering::Relaxed);
                    (*page).remote.adopt();
                }
                page
            };
            // SAFETY: the page is now ours.
            unsafe {
                if Page::collect(self, page) || Page::extend(page) {
                    return Some(page);
                }
                (*page).in_full = true;
                Heap::full(heap, class).push_back(page);
            }
        }
        None
    }

    /// Gives back the calling thread's pages that hold no live block and the exact-fit blocks
    /// of its quick lists (kept only to avoid churn): part of [`Core::trim`].
    ///
    /// # Safety
    /// `heap` is the caller's live heap.
    pub(crate) unsafe fn heap_trim(&self, heap: *mut Heap) {
        // SAFETY: the caller's live heap.
        unsafe { self.fit_quick_flush(heap) };
        // SAFETY: as above.
        let _busy = unsafe { Busy::enter(heap) };
        for class in 0..NUM_CLASSES {
            // SAFETY: the caller owns the heap and its pages.
            unsafe {
                let q = Heap::queue(heap, class);
                let mut page = q.head;
                while !page.is_null() {
                    let next = (*page).next;
                    Page::collect(self, page);
                    if (*page).used == 0 {
                        q.remove(page);
                        self.span_free(page);
                    }
                    page = next;
                }
                let next = if q.head.is_null() { Page::empty() } else { q.head };
                Heap::set_direct(heap, class, next);
            }
        }
        // SAFETY: as above.
        unsafe { (*heap).retired = 0 };
    }

    /// Readies an exiting thread's heap for vacancy: its quick lists' blocks go back to the
    /// exact-fit tier, every page takes its remote list, and the pages that hold no live block
    /// go back — except the page each class allocates from (the next thread's warm start).
    ///
    /// # Safety
    /// The caller owns `heap`.
    unsafe fn heap_tidy(&self, heap: *mut Heap) {
        // SAFETY: the caller's heap.
        unsafe { self.fit_quick_flush(heap) };
        for class in 0..NUM_CLASSES {
            // SAFETY: the caller owns the heap and its pages. Each list's head is read through
            // a reference that ends at once: freeing a page edits the lists.
            unsafe {
                for full in [false, true] {
                    let mut page =
                        if full { Heap::full(heap, class).head } else { Heap::queue(heap, class).head };
                    while !page.is_null() {
                        let next = (*page).next;
                        let remote = (*page).remote.take();
                        if !remote.is_null() {
                            self.absorb_remote(page, remote);
                        }
                        if (*page).used == 0 && page != Heap::direct(heap, class) {
                            self.page_free_empty(heap, page);
                        }
                        page = next;
                    }
                }
            }
        }
    }

    /// Gives the calling thread a heap: the newest vacant one, whole, or one charged in the
    /// context of the allocation that needs it (`call`: a NOFAIL first allocation must not fail
    /// on its heap either — found by the `ops` fuzz target).
    pub(crate) fn thread_attach(&self, t: &ThreadCtx, call: Gfp) -> Result<*mut Heap, Cause> {
        let heap = match self.heap_take_vacant() {
            Some(h) => h,
            None => self.heap_acquire(self.effective_of(call, t))?,
        };
        Ok(self.thread_attached(t, heap))
    }

    /// [`thread_attach`](Self::thread_attach) if a heap can be had at once: no reclaim, no
    /// report, `None` if the heap cannot be charged or mapped.
    pub(crate) fn thread_attach_now(&self, t: &ThreadCtx, call: Gfp) -> Option<*mut Heap> {
        let heap = match self.heap_take_vacant() {
            Some(h) => h,
            None => self.heap_take(self.effective_of(call, t)).ok()?,
        };
        Some(self.thread_attached(t, heap))
    }

    /// Makes `heap`, just taken, the calling thread's.
    fn thread_attached(&self, t: &ThreadCtx, heap: *mut Heap) -> *mut Heap {
        t.heap.set(heap);
        t.state.set(ThreadState::Active as u8);
        self.out("thread_attached").thread_attached();
        heap
    }

    /// Slab allocation for a thread that has exited (from a thread-local destructor that runs
    /// after ours, or a thread start our own exit asked for): the shared orphan heap, under its
    /// lock.
    ///
    /// Under the lock only what needs no call out is done: a block from the heap's pages, a
    /// page from the page heap's free spans. Mapping a segment, the orphan heap itself, the
    /// reclaim policy and the failure report happen with the lock released, and the attempt is
    /// made again. No direct reclaim (as before the lock was released for it: an exited
    /// thread's allocations stay NORECLAIM).
    ///
    /// # Safety
    /// As [`alloc_slow`](Self::alloc_slow).
    unsafe fn alloc_orphan(&self, t: &ThreadCtx, class: usize, size: usize, call: Gfp) -> *mut u8 {
        let call = call | Gfp::NORECLAIM;
        let zero = call.contains(Gfp::ZERO);
        let mut attempt: Option<Attempt> = None;
        loop {
            let eff = self.effective_of(call, t);
            let ctx = attempt.as_ref().map_or(eff, |a| a.context(eff));
            let miss = {
                let orphan = self.lock(&self.orphan);
                let heap = orphan.0;
                if heap.is_null() {
                    None
                } else {
                    // SAFETY: the orphan heap is owned by whoever holds its lock.
                    unsafe {
                        let page = Heap::direct(heap, class);
                        if !(*page).free.is_null() {
                            return pop(self, page, size, zero);
                        }
                        match self.find_page(heap, class, ctx, false) {
                            Ok(page) => return pop(self, page, size, zero),
                            Err(miss) => Some(miss),
                        }
                    }
                }
            };
            // The orphan lock is released: what is left may call out.
            match miss {
                None => {
                    let h = match self.heap_acquire(self.effective_of(Gfp::NORECLAIM, t)) {
                        Ok(h) => h,
                        Err(cause) => return self.reclaim_failed(size, eff, cause),
                    };
                    let mut orphan = self.lock(&self.orphan);
                    if orphan.0.is_null() {
                        orphan.0 = h;
                    } else {
                        drop(orphan);
                        // SAFETY: a fresh heap that owns nothing and that nobody saw.
                        unsafe { self.heap_release(h) };
                    }
                    continue;
                }
                Some(Miss::NoSegment) if self.segment_add(ctx).is_some() => continue,
                Some(_) => {}
            }
            let at = attempt.get_or_insert_with(|| Attempt::new(class_slices(class) * SLICE_SIZE));
            if let Step::Fail(cause) = self.reclaim_step(eff, at) {
                return self.reclaim_failed(size, eff, cause);
            }
        }
    }

    /// A heap from the pool, or a new one (charged in context `eff`, through reclaim if needed).
    /// The caller reports a failure, naming the allocation that needed the heap.
    pub(crate) fn heap_acquire(&self, eff: Effective) -> Result<*mut Heap, Cause> {
        let mut attempt = Attempt::new(core::mem::size_of::<Heap>());
        loop {
            match self.heap_take(attempt.context(eff)) {
                Ok(h) => return Ok(h),
                Err(()) => {
                    if let Step::Fail(cause) = self.reclaim_step(eff, &mut attempt) {
                        return Err(cause);
                    }
                }
            }
        }
    }

    /// A heap from the pool, or new metadata; `Err` if that could not be charged or mapped (no
    /// lock is held when the caller reclaims). New metadata is carved with the pool lock
    /// released: it may map a segment.
    fn heap_take(&self, eff: Effective) -> Result<*mut Heap, ()> {
        {
            let mut pool = self.lock(&self.heaps);
            let h = pool.free;
            if !h.is_null() {
                // SAFETY: heaps on the free list are ours under the pool lock.
                unsafe {
                    pool.free = (*h).pool_next;
                    Heap::init(h, (*h).all_next);
                    (*h).live = true;
                }
                pool.live += 1;
                return Ok(h);
            }
        }
        const _: () = assert!(core::mem::size_of::<Heap>() <= super::META_MAX);
        // Heaps are allocator metadata a thread needs before anything else: charged as its
        // first allocation would be.
        let h = self.meta_alloc(core::mem::size_of::<Heap>(), eff).ok_or(())?.as_ptr().cast::<Heap>();
        let mut pool = self.lock(&self.heaps);
        // SAFETY: fresh metadata of a heap's size, 64-byte aligned, ours; pool fields under the
        // pool lock.
        unsafe {
            Heap::init(h, pool.all);
            (*h).live = true;
        }
        pool.all = h;
        pool.live += 1;
        Ok(h)
    }

    /// Returns an abandoned heap to the pool.
    ///
    /// # Safety
    /// `heap` was abandoned and nobody uses it.
    pub(crate) unsafe fn heap_release(&self, heap: *mut Heap) {
        let mut pool = self.lock(&self.heaps);
        // SAFETY: pool fields under the pool lock.
        unsafe {
            (*heap).live = false;
            (*heap).pool_next = pool.free;
        }
        pool.free = heap;
        pool.live -= 1;
    }

    /// The newest vacant heap, now the caller's with every page it holds, or `None`.
    fn heap_take_vacant(&self) -> Option<*mut Heap> {
        let mut pool = self.lock(&self.heaps);
        let h = pool.take_vacant();
        if h.is_null() {
            return None;
        }
        if pool.vacant_count == 0 {
            pool.clock.disarm();
        }
        // SAFETY: a vacant heap, ours now under the pool lock.
        unsafe {
            (*h).live = true;
            (*h).vacant.store(false, Ordering::Relaxed);
        }
        pool.live += 1;
        Some(h)
    }

    /// Leaves the heap of an exiting thread vacant, whole, for the next thread to take; the
    /// oldest vacant heap beyond [`MAX_VACANT`] is dissolved. Starts the vacant heaps' purge
    /// clock (no thread is started: a thread's exit is like a free).
    ///
    /// # Safety
    /// `heap` was the exiting thread's; nobody else uses it.
    pub(crate) unsafe fn heap_vacate(&self, heap: *mut Heap) {
        // SAFETY: the caller's heap.
        unsafe { self.heap_tidy(heap) };
        let (surplus, first) = {
            let mut pool = self.lock(&self.heaps);
            let now = self.platform.now_ns();
            // SAFETY: the caller's heap; its pool fields under the pool lock.
            unsafe {
                (*heap).live = false;
                (*heap).vacant.store(true, Ordering::Relaxed);
                (*heap).vacated_at = now;
                (*heap).pool_next = pool.vacant;
            }
            pool.vacant = heap;
            pool.vacant_count += 1;
            pool.live -= 1;
            let first = pool.clock.arm(|| now);
            let surplus = if pool.vacant_count > MAX_VACANT {
                pool.take_oldest_vacant(|_| true)
            } else {
                ptr::null_mut()
            };
            (surplus, first)
        };
        if !surplus.is_null() {
            // SAFETY: taken off the vacant list: ours.
            unsafe { self.heap_dissolve(surplus) };
        }
        if first {
            self.purge_wanted();
        }
    }

    /// Dissolves vacant heaps — every one, or with `aged` those vacant for
    /// [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS) — and returns whether some are still waiting.
    pub(crate) fn heaps_dissolve(&self, aged: bool) -> bool {
        loop {
            let h = {
                let mut pool = self.lock(&self.heaps);
                let now = if aged { self.platform.now_ns() } else { 0 };
                let h =
                    pool.take_oldest_vacant(|at| !aged || now.saturating_sub(at) >= crate::PURGE_DELAY_NS);
                if h.is_null() {
                    pool.clock.disarm();
                    if pool.vacant_count == 0 {
                        return false;
                    }
                    // The younger ones wait their own delay.
                    pool.clock.arm(|| now);
                    return true;
                }
                h
            };
            // SAFETY: taken off the vacant list: ours.
            unsafe { self.heap_dissolve(h) };
        }
    }

    /// Abandons a vacant heap's pages and returns it to the free list.
    ///
    /// # Safety
    /// `heap` was taken off the vacant list; nobody else uses it.
    unsafe fn heap_dissolve(&self, heap: *mut Heap) {
        // SAFETY: per the contract.
        unsafe {
            (*heap).vacant.store(false, Ordering::Relaxed);
            self.heap_abandon(heap);
        }
        let mut pool = self.lock(&self.heaps);
        // SAFETY: pool fields under the pool lock.
        unsafe { (*heap).pool_next = pool.free };
        pool.free = heap;
    }
}
