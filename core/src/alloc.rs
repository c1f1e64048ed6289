//! `Core`: the allocator's shared state and its entry points — the fast paths, dispatch between
//! slab and vmap, realloc, per-call flags, thread exit, `fork`, trimming.
//!
//! Dispatch is by layout and deterministic: a layout some size class can serve (size ≤
//! [`SLAB_MAX`], alignment a class has) lives in the slab, every other in vmap. The `Layout` that
//! `dealloc` and `realloc` receive is the one the block was allocated (or last reallocated) with,
//! so a free always reaches the backend that owns the pointer.

use crate::fit::FitHeap;
use crate::gfp::{Effective, Gfp};
use crate::lock::{deferred, CallOuts, Lock, LockGuard};
use crate::page::{Accounting, LimitError, LimitOrigin, UsageOf};
use crate::platform::{ThreadCtx, ThreadState};
use crate::reclaim::Reclaim;
use crate::report::{report, RateLimit};
use crate::scope::{Cookie, Mispair};
use crate::size_class::{class_for, class_size, small_class, MIN_ALIGN, SMALL_MAX};
use crate::slab::abandon::{Abandoned, HeapPool, OrphanSlot};
use crate::slab::heap::{pop, Heap};
use crate::slab::page::Page;
use crate::slab::remote::Block;
use crate::slab::segmap::SegMap;
use crate::slab::segment::{header_bytes, PageHeap};
use crate::slab::SLICE_SIZE;
use crate::stats::Counters;
use crate::sync::{AtomicUsize, Ordering};
use crate::vmap::Registry;
use crate::Platform;
use core::alloc::Layout;
use core::fmt;
use core::panic::Location;
use core::ptr::{self, NonNull};

/// The allocator: one per process (std) or per kernel, usually in a `static`.
///
/// Locks, in the order they nest: `orphan` → `heaps` → `abandoned` → `vmap` → `pages`; `fit`
/// (the exact-fit tier) is a leaf, taken under none but `orphan` and taking none (and, with the
/// `tags` feature, the tag names and the tag table, taken alone). None is held across a call
/// out of the allocator — a platform hook, a futex wait or wake, a report — nor across a call
/// that could reclaim, wait, or allocate: what such a call would do is recorded and done once
/// the lock is released (see `lock`).
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use ctxalloc_core::{mock::MockPlatform, Core, Gfp};
/// use core::alloc::Layout;
/// let core = Core::new(MockPlatform::new(64 << 20));
/// let l = Layout::from_size_align(100, 8).unwrap();
/// unsafe {
///     let p = core.alloc(l);
///     assert!(!p.is_null());
///     p.write_bytes(7, 100);
///     core.dealloc(p, l);
/// }
/// let q = core.alloc_with(Layout::new::<[u64; 4]>(), Gfp::ZERO | Gfp::NOFS).unwrap();
/// assert_eq!(unsafe { q.cast::<[u64; 4]>().read() }, [0; 4]);
/// # }
/// ```
pub struct Core<P: Platform> {
    /// The environment. Immutable.
    pub(crate) platform: P,
    /// Bytes from the page source. Atomic.
    pub(crate) acct: Accounting,
    // The five locks below nest only in this order: orphan → heaps → abandoned → vmap → pages
    // (`fork_prepare` takes them so). A path holding one may take a later one, never an
    // earlier; none is held across a call out of the allocator (a platform hook — `map`,
    // `unmap`, `purge`, `remap`, thread start or wake, futex —, a report, a shrinker call, a
    // wait): work found under a lock is recorded in the thread's `LockState` and done by the
    // guard that releases the thread's last lock. Only the thread context, the clock and the
    // spin hook are used under them.
    /// Segments and spans.
    pub(crate) pages: Lock<PageHeap>,
    /// Which addresses are live segments (for [`kfree`](Self::kfree)); written under `pages`,
    /// read by anyone.
    pub(crate) segmap: SegMap,
    /// Pages of exited threads.
    pub(crate) abandoned: Lock<Abandoned>,
    /// Heaps not owned by a thread, and every heap.
    pub(crate) heaps: Lock<HeapPool>,
    /// The heap of exited threads.
    pub(crate) orphan: Lock<OrphanSlot>,
    /// Live vmap areas.
    pub(crate) vmap: Lock<Registry>,
    /// Live kvmalloc fallbacks: vmap areas serving a slab-sized layout (`alloc_with`, R2.9).
    /// While it is zero — always, in programs that never hit the fallback — frees of
    /// slab-sized layouts go straight to the slab. Incremented before such an area is handed
    /// out, decremented when it is freed (Relaxed: the free of an area happens after its
    /// allocation, so it sees the increment).
    pub(crate) kv_live: AtomicUsize,
    /// The exact-fit tier's free lists (see `slab::fit`). A leaf lock: nothing is taken or
    /// called out while it is held.
    pub(crate) fit: Lock<FitHeap>,
    /// Slab-sized requests above this many bytes go to the exact-fit tier (`usize::MAX`: none).
    /// Relaxed: a request that sees an old value is served by the other tier, which is right
    /// too.
    pub(crate) fit_above: AtomicUsize,
    /// Where the limit came from: set with it (`set_limit_from`), read by `stats`. A leaf
    /// lock, held across `fork`.
    pub(crate) limit_origin: Lock<LimitOrigin>,
    /// Shrinkers, waiters, background reclaim. Atomic.
    pub(crate) reclaim: Reclaim,
    /// Statistics. Atomic.
    pub(crate) counters: Counters,
    /// Allocation-failure reports: one per 10 s (R5.12).
    fail_reports: RateLimit,
    /// The debugging hooks' shared state (see `debug`).
    pub(crate) debug: crate::debug::DebugShared,
}

/// Where a pointer given without its layout lives.
enum Owner {
    /// A live slab block of this size class.
    Slab(usize),
    /// A live vmap area of this length.
    Vmap(usize),
    /// Not something ctxalloc handed out, and why not.
    Foreign(&'static str),
}

/// An allocation failed: no memory could be had in the allocation's context, or the layout is
/// impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllocError;

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory allocation failed")
    }
}

impl core::error::Error for AllocError {}

/// Slab-sized layouts above this size (one page) may be served by a kvmalloc fallback, so
/// their frees look at the address (R2.8: at most a page, the slab's answer is final).
const KV_MIN: usize = 4096;

/// Failure reports go out at most this often.
const FAIL_REPORT_INTERVAL_NS: u64 = 10_000_000_000;

impl<P: Platform> Core<P> {
    /// An allocator over `platform`; nothing is mapped until the first allocation.
    pub const fn new(platform: P) -> Self {
        Core {
            platform,
            acct: Accounting::new(),
            pages: Lock::held_across_fork("pages", PageHeap::new()),
            segmap: SegMap::new(),
            abandoned: Lock::held_across_fork("abandoned", Abandoned::new()),
            heaps: Lock::held_across_fork("heaps", HeapPool::new()),
            orphan: Lock::held_across_fork("orphan", OrphanSlot(ptr::null_mut())),
            vmap: Lock::held_across_fork("vmap", Registry::new()),
            kv_live: AtomicUsize::new(0),
            fit: Lock::held_across_fork("fit", FitHeap::new()),
            fit_above: AtomicUsize::new(usize::MAX),
            limit_origin: Lock::held_across_fork("limit_origin", LimitOrigin::EMPTY),
            reclaim: Reclaim::new(),
            counters: Counters::new(),
            fail_reports: RateLimit::new(),
            debug: crate::debug::DebugShared::new(),
        }
    }

    /// The platform.
    #[inline]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Takes one of the allocator's locks for the calling thread (counted: see `lock`).
    #[inline]
    pub(crate) fn lock<'a, T>(&'a self, l: &'a Lock<T>) -> LockGuard<'a, T> {
        l.lock(self.thread(), self, || self.platform.relax())
    }

    /// The platform, for a call out of the allocator named `what`: in debug builds, a call made
    /// while the thread holds an allocator lock is reported and the process aborts (it could
    /// come back for that lock).
    #[inline(always)]
    pub(crate) fn out(&self, what: &'static str) -> &P {
        crate::lock::check_call_out(&self.platform, what);
        &self.platform
    }

    /// Debug builds: whether the entry point named `entry` was reached while the calling thread
    /// (context `t`) holds an allocator lock — a call out under the lock came back into the
    /// allocator. Reported, then the process aborts: it would otherwise spin for ever on its
    /// own lock. Release builds: nothing.
    #[inline(always)]
    fn check_entry(&self, t: *const ThreadCtx, entry: &'static str) {
        #[cfg(debug_assertions)]
        {
            // SAFETY: the platform hands out the calling thread's context.
            let t = unsafe { &*t };
            if t.locks.locked() {
                crate::lock::violation(&self.platform, t, "entered the allocator through", entry);
            }
        }
        let _ = (t, entry);
    }

    /// [`check_entry`](Self::check_entry) for an entry point without the context in hand.
    #[inline(always)]
    pub(crate) fn entry(&self, entry: &'static str) {
        // A thread without a context holds no lock; `ThreadCtx::none()` holds none either.
        #[cfg(debug_assertions)]
        self.check_entry(self.platform.thread_if_any(), entry);
        let _ = entry;
    }

    // ---------------------------------------------------------------------------------------
    // Fast paths
    // ---------------------------------------------------------------------------------------

    /// Allocates a block for `layout` (`GlobalAlloc::alloc`): null if no memory can be had.
    ///
    /// The fast path: two compares, one thread-local load, one table load (by 8-byte granule,
    /// no class lookup), one page load, one list pop. It never reads the context word
    /// — context matters only when new memory is needed.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc` (a zero size is allowed and returns a minimal block).
    #[inline(always)]
    pub unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        if size <= SMALL_MAX {
            if layout.align() <= MIN_ALIGN {
                // SAFETY: a small size at the minimum alignment.
                return unsafe { self.alloc_small(size) };
            }
            if layout.align() <= 16 {
                // Every class above the 8-byte one is 16-byte aligned (hashbrown's tables, for
                // one, ask for 16): the class of at least 16 bytes, still inline.
                // SAFETY: a small size, served at an alignment every class of ≥ 16 B has.
                return unsafe { self.alloc_small(size.max(16)) };
            }
            // A separate exit, not `alloc_other`: with one shared target the two compares are
            // folded into flag arithmetic (two instructions more on every allocation).
            // SAFETY: forwarded.
            return unsafe { self.alloc_aligned(layout) };
        }
        // SAFETY: forwarded.
        unsafe { self.alloc_other(layout, Gfp::KERNEL) }
    }

    /// Frees a block (`GlobalAlloc::dealloc`).
    ///
    /// The fast path: one compare, page lookup by address, owner check, push on the page's
    /// local free list. `size | align < 4096` means a size below a page at an alignment of at
    /// most 2 KiB: the slab serves every such layout and no kvmalloc fallback is ever that
    /// small, so one compare decides. Other layouts take the out-of-line path, which also
    /// recognises the kvmalloc fallbacks of [`alloc_with`](Self::alloc_with) (the owner is
    /// found from the address, R2.11).
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`: `ptr` came from this allocator with this `layout` (or the
    /// layout of its last realloc).
    #[inline(always)]
    pub unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.entry("dealloc");
        #[cfg(feature = "tags")]
        if self.debug.tags.any_live() {
            // SAFETY: forwarded.
            return unsafe { self.dealloc_tagged(ptr, layout) };
        }
        // SAFETY: forwarded.
        unsafe { self.dealloc_plain(ptr, layout) }
    }

    /// [`dealloc`](Self::dealloc) while tagged blocks are live: the block leaves its tag first.
    /// Out of line, so that the fast path saves no register for it.
    ///
    /// # Safety
    /// As [`dealloc`](Self::dealloc).
    #[cfg(feature = "tags")]
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_tagged(&self, ptr: *mut u8, layout: Layout) {
        self.untag(ptr);
        // SAFETY: forwarded.
        unsafe { self.dealloc_plain(ptr, layout) }
    }

    /// [`dealloc`](Self::dealloc) without the hooks.
    ///
    /// # Safety
    /// As [`dealloc`](Self::dealloc).
    #[inline(always)]
    unsafe fn dealloc_plain(&self, ptr: *mut u8, layout: Layout) {
        if (layout.size() | layout.align()) < KV_MIN {
            // SAFETY: such a layout always lives in the slab.
            unsafe { self.slab_free(ptr) }
        } else {
            // SAFETY: forwarded.
            unsafe { self.dealloc_other(ptr, layout) }
        }
    }

    /// Allocates a zeroed block (`GlobalAlloc::alloc_zeroed`). Fresh memory is known to be zero
    /// and is not cleared again.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline]
    pub unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        self.with_hooks(layout.size(), Gfp::ZERO, || unsafe { self.alloc_gfp(layout, Gfp::ZERO) })
    }

    /// Pops a block for a small size at the minimum alignment, or takes the slow path. With a
    /// debugging hook built in, one byte of the thread's context (already in hand) is tested
    /// first.
    ///
    /// # Safety
    /// `size <= SMALL_MAX`.
    #[inline(always)]
    unsafe fn alloc_small(&self, size: usize) -> *mut u8 {
        // SAFETY: forwarded; `thread_if_any` is the calling thread's context or `none`.
        unsafe { self.alloc_small_at(self.platform.thread_if_any(), size) }
    }

    /// [`alloc_small`](Self::alloc_small) with the calling thread's context `t` in hand.
    ///
    /// # Safety
    /// `size <= SMALL_MAX`; `t` is the calling thread's context or [`ThreadCtx::none()`].
    #[inline(always)]
    unsafe fn alloc_small_at(&self, t: *const ThreadCtx, size: usize) -> *mut u8 {
        self.check_entry(t, "alloc");
        #[cfg(feature = "hooks")]
        // SAFETY: the platform hands out the calling thread's context.
        if unsafe { (*t).scope.armed() } != 0 {
            // SAFETY: forwarded.
            return unsafe { self.alloc_small_hooked(size) };
        }
        // SAFETY: forwarded.
        unsafe { self.alloc_small_in(t, size) }
    }

    /// [`alloc_small`](Self::alloc_small) through the hooks. Out of line and capturing nothing,
    /// so that the fast path spills nothing for it.
    ///
    /// # Safety
    /// `size <= SMALL_MAX`.
    #[cfg(feature = "hooks")]
    #[cold]
    #[inline(never)]
    unsafe fn alloc_small_hooked(&self, size: usize) -> *mut u8 {
        let t = self.platform.thread();
        // SAFETY: forwarded.
        self.alloc_hooked(size, Gfp::KERNEL, || unsafe { self.alloc_small_in(t, size) })
    }

    /// The fast path of [`alloc`](Self::alloc) for a small size at the minimum alignment, and
    /// nothing else: a block of at least `size` bytes from the calling thread's list for the
    /// size, or null — the list is empty, `size` is above `SMALL_MAX`, or a debugging hook is
    /// armed — with nothing done. For a caller with a slow path of its own behind it (the C
    /// library's `malloc`, whose slow path also sets `errno`, so that both paths end in a tail
    /// call); the block is freed as one of `Layout::from_size_align(size, MIN_ALIGN)`.
    #[inline(always)]
    pub fn alloc_cached(&self, size: usize) -> *mut u8 {
        if size > SMALL_MAX {
            return ptr::null_mut();
        }
        let t = self.platform.thread_if_any();
        self.check_entry(t, "alloc");
        #[cfg(feature = "hooks")]
        // SAFETY: the platform hands out the calling thread's context.
        if unsafe { (*t).scope.armed() } != 0 {
            return ptr::null_mut();
        }
        // SAFETY: as in `alloc_small_in`: a live heap or the empty heap, whose pages never have
        // a free block; a small size.
        unsafe {
            let page = Heap::direct_small((*t).heap.get(), size);
            if (*page).free.is_null() {
                return ptr::null_mut();
            }
            pop(self, page, size, false)
        }
    }

    /// [`alloc_small`](Self::alloc_small) for the calling thread's context `t`.
    ///
    /// # Safety
    /// `size <= SMALL_MAX`; `t` is the calling thread's context or [`ThreadCtx::none()`].
    #[inline(always)]
    unsafe fn alloc_small_in(&self, t: *const ThreadCtx, size: usize) -> *mut u8 {
        // SAFETY: the platform hands out the calling thread's context (or `none`), whose heap
        // is live or the empty heap; the empty heap's pages never have a free block.
        unsafe {
            let heap = (*t).heap.get();
            let page = Heap::direct_small(heap, size);
            if !(*page).free.is_null() {
                return pop(self, page, size, false);
            }
            self.alloc_small_slow(t, size)
        }
    }

    /// The slow path of [`alloc_small`](Self::alloc_small): the exact-fit tier if it serves
    /// the size (its classes' pages then never fill the fast path's table), else the slab's.
    ///
    /// # Safety
    /// As [`alloc_small_in`](Self::alloc_small_in).
    #[inline(never)]
    unsafe fn alloc_small_slow(&self, t: *const ThreadCtx, size: usize) -> *mut u8 {
        // Every exact-fit block is 16-byte aligned, all a small request asks.
        // SAFETY: 16 is a power of two and `size ≤ SMALL_MAX`.
        let layout = unsafe { Layout::from_size_align_unchecked(size, 16) };
        if self.fit_wanted(layout) {
            // SAFETY: a slab size.
            let p = unsafe { self.fit_alloc(t, layout, Gfp::KERNEL) };
            if !p.is_null() {
                return p;
            }
        } else {
            // SAFETY: the calling thread's heap (or the empty one, whose table is never written).
            unsafe { self.fit_unpoint(t, size) };
        }
        // SAFETY: forwarded.
        unsafe { self.alloc_slow(t, small_class(size), size, Gfp::KERNEL) }
    }

    /// Small sizes at alignments above the minimum.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline(never)]
    unsafe fn alloc_aligned(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        self.with_hooks(layout.size(), Gfp::KERNEL, || unsafe { self.alloc_gfp(layout, Gfp::KERNEL) })
    }

    /// Pops a block of `class`, or takes the slow path.
    ///
    /// # Safety
    /// `class` serves `size` at the caller's alignment.
    #[inline(always)]
    pub(crate) unsafe fn alloc_class(&self, class: usize, size: usize, call: Gfp) -> *mut u8 {
        let t = self.platform.thread();
        // SAFETY: the platform hands out the calling thread's context, whose heap is live or
        // the empty heap; the empty heap's pages never have a free block.
        unsafe {
            let heap = (*t).heap.get();
            let page = Heap::direct(heap, class);
            if !(*page).free.is_null() {
                return pop(self, page, size, call.contains(Gfp::ZERO));
            }
            self.alloc_slow(t, class, size, call)
        }
    }

    /// Frees a slab block. Under `hardened`, also: is the address in a live segment (one
    /// compare and one bitmap load for most programs), and did the block look free already.
    /// The block's old link word is loaded first but tested only after the push — a test before
    /// it would stall every free on that load (+90 % on churn with 1024 live blocks); a push
    /// that turns out wrong is undone. Anything unusual leaves for a cold function that calls
    /// back, so the fast path keeps its registers.
    ///
    /// # Safety
    /// `ptr` is a live slab block.
    #[inline(always)]
    pub(crate) unsafe fn slab_free(&self, ptr: *mut u8) {
        let addr = ptr.addr();
        #[cfg(feature = "hardened")]
        if !self.segmap.contains_fast(addr) {
            // SAFETY: forwarded; the address is checked there.
            return unsafe { self.slab_free_far(ptr) };
        }
        // SAFETY: a live block keeps its page and segment live (under `hardened`: the segment
        // is live, and a slice of no live page maps to the empty page, caught before use). The
        // block pointer is rebuilt from the mapping's provenance, not the caller's (which may be
        // narrower).
        unsafe {
            let page = self.page_of(addr);
            let block = self.platform.ptr_from_addr(addr).cast::<Block>();
            #[cfg(feature = "hardened")]
            if page == Page::empty() {
                return self.slab_free_suspect(page, block);
            }
            self.slab_free_in(page, block, true);
        }
    }

    /// Frees `block` of `page`: onto the page's local list if the calling thread owns it,
    /// otherwise the remote path. Under `hardened`, `check` tests first whether the block was
    /// free already (the suspect path frees with `false` once it has looked closer).
    ///
    /// # Safety
    /// `block` is a live block of the live slab page `page` (with `check`, under `hardened`, a
    /// block of it that may be free already).
    #[inline(always)]
    unsafe fn slab_free_in(&self, page: *mut Page, block: *mut Block, check: bool) {
        #[cfg(not(feature = "hardened"))]
        let _ = check;
        // SAFETY: per the contract; the platform hands out the calling thread's context.
        unsafe {
            #[cfg(feature = "hardened")]
            let raw = if check { crate::hardened::link_word(block) } else { 0 };
            crate::track::poison_block(block.cast(), (*page).block_size as usize);
            // A thread without a context (`ThreadCtx::none()`: the empty heap) owns no page:
            // the free is remote.
            let t = self.platform.thread_if_any();
            if (*page).owner.load(Ordering::Relaxed) == (*t).heap.get() {
                let heap = (*t).heap.get();
                #[cfg(feature = "hardened")]
                let head = (*page).free;
                let empty = Page::push_free(page, block);
                #[cfg(feature = "hardened")]
                if crate::hardened::is_link(block, raw) {
                    // Undo the push, then look closer.
                    crate::hardened::set_link_word(block, raw);
                    (*page).free = head;
                    (*page).used += 1;
                    return self.slab_free_suspect(page, block);
                }
                if empty {
                    self.page_retire(heap, page);
                }
                return;
            }
            #[cfg(feature = "hardened")]
            if crate::hardened::is_link(block, raw) {
                return self.slab_free_suspect(page, block);
            }
            self.free_slow(t, page, block);
        }
    }

    /// `hardened`: a free whose address the fast segment-map test did not find: the full
    /// lookup, then the checks of the fast path.
    ///
    /// # Safety
    /// As [`slab_free`](Self::slab_free), except that `ptr` may be anything.
    #[cfg(feature = "hardened")]
    #[cold]
    #[inline(never)]
    unsafe fn slab_free_far(&self, ptr: *mut u8) {
        if !self.segmap.contains(ptr.addr()) {
            return self.bad_slab_free(ptr, "not a block ctxalloc handed out");
        }
        // SAFETY: the segment is live.
        unsafe {
            let page = self.page_of(ptr.addr());
            let block = self.platform.ptr_from_addr(ptr.addr()).cast::<Block>();
            self.slab_free_in(page, block, true);
        }
    }

    /// `hardened`: a free into no slab page, or of a block that looks free already. The owner
    /// confirms a double free on the page's lists; another thread cannot walk them and takes the
    /// keyed link at its word. A false alarm (caller data that looks like a link) frees
    /// normally.
    ///
    /// # Safety
    /// `block` lies in a live segment; `page` is its slice's page, or null.
    #[cfg(feature = "hardened")]
    #[cold]
    #[inline(never)]
    unsafe fn slab_free_suspect(&self, page: *mut Page, block: *mut Block) {
        if page == Page::empty() {
            return self.bad_free(block.cast(), None, crate::slab::heap::NOT_IN_A_PAGE);
        }
        // SAFETY: a live page of a live segment; the owner may walk its own lists.
        unsafe {
            if Page::is_fit(page) {
                // Its blocks' headers tell a double free for sure.
                return self.fit_free(self.platform.thread_if_any(), page, block);
            }
            let own = (*page).owner.load(Ordering::Relaxed) == (*self.platform.thread()).heap.get();
            if !own || self.on_free_lists(page, block) {
                return self.bad_slab_free(block.cast(), "freed twice");
            }
            self.slab_free_in(page, block, false);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Dispatch
    // ---------------------------------------------------------------------------------------

    /// Allocation for layouts off the fast path: medium sizes, large alignments, vmap.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[inline(never)]
    unsafe fn alloc_other(&self, layout: Layout, call: Gfp) -> *mut u8 {
        // SAFETY: forwarded.
        self.with_hooks(layout.size(), call, || unsafe { self.alloc_gfp(layout, call) })
    }

    /// Allocation with per-call flags, any layout.
    ///
    /// # Safety
    /// As [`alloc`](Self::alloc).
    #[track_caller]
    pub(crate) unsafe fn alloc_gfp(&self, layout: Layout, call: Gfp) -> *mut u8 {
        self.entry("alloc");
        match class_for(layout.size(), layout.align()) {
            Some(class) => {
                if self.fit_wanted(layout) {
                    // SAFETY: a slab-sized layout.
                    let p = unsafe { self.fit_alloc(self.platform.thread_if_any(), layout, call) };
                    if !p.is_null() {
                        return p;
                    }
                }
                // SAFETY: the class serves the layout.
                unsafe { self.alloc_class(class, layout.size(), call) }
            }
            // SAFETY: forwarded.
            None => unsafe { self.vmap_alloc(layout, call) },
        }
    }

    /// Frees a block whose layout is off the fast path.
    ///
    /// # Safety
    /// As [`dealloc`](Self::dealloc).
    #[inline(never)]
    unsafe fn dealloc_other(&self, ptr: *mut u8, layout: Layout) {
        match class_for(layout.size(), layout.align()) {
            // SAFETY: the caller gives up `ptr`, a live block of `layout`.
            Some(_) if unsafe { self.kv_free(ptr, layout) } => {}
            // SAFETY: the layout lives in the slab.
            Some(_) => unsafe { self.slab_free(ptr) },
            // SAFETY: the layout lives in vmap.
            None => unsafe { self.vmap_free(ptr, layout) },
        }
    }

    /// Allocates with per-call flags (`ctxalloc::alloc_with`): the flags are united with the
    /// thread's context word whenever new memory is needed.
    ///
    /// Slab-sized requests above a page behave as the kernel's `kvmalloc` (R2.9): a cheap slab
    /// attempt (no direct reclaim unless MAYFAIL, no NOFAIL, no report), then — unless the
    /// context may not wait — a page-granular vmap area with the original flags, which needs
    /// no 64 KiB slab page and so succeeds closer to the limit. Any free or realloc finds such an
    /// area by its address.
    ///
    /// # Errors
    /// [`AllocError`] when no memory can be had in the effective context, or the layout is
    /// impossible.
    #[track_caller]
    pub fn alloc_with(&self, layout: Layout, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        NonNull::new(self.with_hooks(layout.size(), gfp, || self.alloc_with_plain(layout, gfp)))
            .ok_or(AllocError)
    }

    /// [`alloc_with`](Self::alloc_with) without the debugging hooks; null on failure.
    #[track_caller]
    #[inline]
    fn alloc_with_plain(&self, layout: Layout, gfp: Gfp) -> *mut u8 {
        if layout.size() > KV_MIN && class_for(layout.size(), layout.align()).is_some() {
            return self.kvmalloc(layout, gfp);
        }
        // SAFETY: any layout is acceptable; the result is a fresh block or null.
        unsafe { self.alloc_gfp(layout, gfp) }
    }

    /// The kvmalloc path of [`alloc_with`](Self::alloc_with) for a slab-sized `layout`.
    #[track_caller]
    #[inline(never)]
    fn kvmalloc(&self, layout: Layout, gfp: Gfp) -> *mut u8 {
        let mut cheap = (gfp | Gfp::NOWARN) - Gfp::NOFAIL;
        if !gfp.contains(Gfp::MAYFAIL) {
            cheap |= Gfp::NORECLAIM;
        }
        // SAFETY: the layout is a valid slab layout.
        let p = unsafe { self.alloc_gfp(layout, cheap) };
        if !p.is_null() || !self.effective(gfp).may_wait() {
            return p;
        }
        self.kv_live.fetch_add(1, Ordering::Relaxed);
        // SAFETY: any layout is acceptable to vmap.
        let p = unsafe { self.vmap_alloc(layout, gfp) };
        if p.is_null() {
            self.kv_live.fetch_sub(1, Ordering::Relaxed);
        }
        p
    }

    /// Frees `ptr` if it is a kvmalloc fallback (a vmap area serving a slab-sized layout);
    /// returns whether it was. Cheap when none is live.
    ///
    /// # Safety
    /// `ptr` is a live block of `layout` that the caller gives up if this returns `true`.
    unsafe fn kv_free(&self, ptr: *mut u8, layout: Layout) -> bool {
        if !self.kv_possible(layout) {
            return false;
        }
        // SAFETY: `ptr` is a live block; if it is registered as a vmap area, it is one, and the
        // caller gives it up.
        let freed = unsafe { self.vmap_free_if_area(ptr) };
        if freed {
            self.kv_live.fetch_sub(1, Ordering::Relaxed);
        }
        freed
    }

    /// If `ptr`, a live block of the slab-sized `layout`, is a kvmalloc fallback: its area's
    /// length; otherwise 0.
    fn kv_len(&self, ptr: *const u8, layout: Layout) -> usize {
        if !self.kv_possible(layout) {
            return 0;
        }
        self.vmap_usable(ptr)
    }

    /// Whether a block of the slab-sized `layout` may be a kvmalloc fallback: it is above a page
    /// and some fallback is live.
    #[inline]
    fn kv_possible(&self, layout: Layout) -> bool {
        layout.size() > KV_MIN && self.kv_live.load(Ordering::Relaxed) != 0
    }

    /// Resizes a block (`GlobalAlloc::realloc`): in place when the new size still fits the slab
    /// block without wasting half of it, or when vmap can resize the mapping; otherwise allocate,
    /// copy, free. On failure returns null and the old block is untouched.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`.
    #[inline]
    pub unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.realloc_gfp(ptr, layout, new_size, Gfp::KERNEL) }
    }

    /// [`realloc`](Self::realloc) with per-call flags (the kernel's `krealloc`): growth that needs
    /// new memory is allocated in the effective context of `call` (kvmalloc-style for
    /// slab sizes, see [`alloc_with`](Self::alloc_with)); with `ZERO` the bytes beyond the old
    /// size read as zero.
    ///
    /// # Safety
    /// As `GlobalAlloc::realloc`; `new_size` rounded up to `layout.align()` must not overflow
    /// `isize`.
    pub unsafe fn realloc_gfp(&self, ptr: *mut u8, layout: Layout, new_size: usize, call: Gfp) -> *mut u8 {
        self.entry("realloc");
        #[cfg(feature = "hooks")]
        if self.hooks_armed() || self.tags_live() {
            // SAFETY: forwarded.
            return self.realloc_hooked(ptr, new_size, call, || unsafe {
                self.realloc_gfp_plain(ptr, layout, new_size, call)
            });
        }
        // SAFETY: forwarded.
        unsafe { self.realloc_gfp_plain(ptr, layout, new_size, call) }
    }

    /// [`realloc_gfp`](Self::realloc_gfp) without the debugging hooks.
    ///
    /// # Safety
    /// As [`realloc_gfp`](Self::realloc_gfp).
    unsafe fn realloc_gfp_plain(&self, ptr: *mut u8, layout: Layout, new_size: usize, call: Gfp) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { self.realloc_move(ptr, layout, new_size, call) };
        if call.contains(Gfp::ZERO) && !p.is_null() && new_size > layout.size() {
            // SAFETY: the block has `new_size` bytes; those beyond the old size are new.
            unsafe { p.add(layout.size()).write_bytes(0, new_size - layout.size()) };
        }
        p
    }

    /// [`realloc_gfp`](Self::realloc_gfp) without the zeroing of the new tail.
    ///
    /// # Safety
    /// As [`realloc_gfp`](Self::realloc_gfp).
    unsafe fn realloc_move(&self, ptr: *mut u8, layout: Layout, new_size: usize, call: Gfp) -> *mut u8 {
        let align = layout.align();
        match (class_for(layout.size(), align), class_for(new_size, align)) {
            (Some(_), _) if self.kv_len(ptr, layout) != 0 => {}
            (Some(_), Some(new_class)) => {
                // SAFETY: a live slab block.
                let block = unsafe { Self::slab_usable(self.page_of(ptr.addr()), ptr) };
                if new_size <= block && class_size(new_class) * 2 >= block {
                    crate::track::unpoison(ptr, new_size);
                    return ptr;
                }
            }
            (None, None) => {
                // SAFETY: a live vmap area of `layout`, resized to another vmap size.
                let p = unsafe { self.vmap_resize(ptr, layout, new_size, call) };
                if !p.is_null() {
                    return p;
                }
            }
            _ => {}
        }
        // SAFETY: the caller guarantees the new layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
        let p = match self.alloc_with(new_layout, call - Gfp::ZERO) {
            Ok(p) => p.as_ptr(),
            Err(_) => ptr::null_mut(),
        };
        if !p.is_null() {
            // SAFETY: both blocks are live and distinct; the old one is at least `layout.size()`.
            unsafe {
                ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        p
    }

    /// The number of bytes usable at `ptr`, a live block of `layout` (at least `layout.size()`).
    ///
    /// # Safety
    /// `ptr` is a live block of this allocator with `layout`.
    pub unsafe fn usable_size(&self, ptr: *const u8, layout: Layout) -> usize {
        match class_for(layout.size(), layout.align()) {
            Some(_) => match self.kv_len(ptr, layout) {
                // SAFETY: a live slab block.
                0 => unsafe { Self::slab_usable(self.page_of(ptr.addr()), ptr) },
                n => n,
            },
            None => self.vmap_usable(ptr),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Blocks without a layout: C's free / malloc_usable_size / realloc (kfree, ksize, krealloc)
    // ---------------------------------------------------------------------------------------

    /// Which backend holds `ptr`, found from the address alone (the segment map, then the vmap
    /// registry). Cost: two loads for a slab block; a lock and a hash lookup otherwise.
    fn owner_of(&self, ptr: *const u8) -> Owner {
        if self.segmap.contains(ptr.addr()) {
            // SAFETY: the segment is live, so its header is mapped; a free or header slice maps
            // to the empty page, and a freed span's descriptor has block size 0.
            let page = unsafe { self.page_of(ptr.addr()) };
            // SAFETY: as above.
            if unsafe { (*page).block_size == 0 && !Page::is_fit(page) } {
                return Owner::Foreign(crate::slab::heap::NOT_IN_A_PAGE);
            }
            // SAFETY: as above: a live page, and the pointer lies in it.
            return match unsafe { Self::slab_usable(page, ptr) } {
                0 => Owner::Foreign("not the start of a block of an exact-fit span"),
                n => Owner::Slab(n),
            };
        }
        match self.vmap_usable(ptr) {
            0 => Owner::Foreign("not a block ctxalloc handed out"),
            len => Owner::Vmap(len),
        }
    }

    /// Frees a block without its layout — the kernel's `kfree`, C's `free`. Null is ignored; a
    /// pointer ctxalloc did not hand out is reported with its address and ignored (not
    /// followed), as is a second free of a large area.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let p = unsafe { core.alloc(Layout::from_size_align(100, 8).unwrap()) };
    /// assert!(core.ksize(p) >= 100); // its size class
    /// unsafe { core.kfree(p) };
    /// let foreign = [0u8; 16];
    /// unsafe { core.kfree(foreign.as_ptr().cast_mut()) }; // reported, ignored
    /// assert_eq!(core.stats().bad_frees, 1);
    /// # }
    /// ```
    ///
    /// # Safety
    /// `ptr` is null, a live block of this allocator that the caller gives up, or a pointer this
    /// allocator never handed out. (A slab block freed twice is not detected here.)
    #[inline]
    pub unsafe fn kfree(&self, ptr: *mut u8) {
        self.entry("kfree");
        #[cfg(feature = "tags")]
        if self.debug.tags.any_live() {
            // SAFETY: forwarded.
            return unsafe { self.kfree_slow(ptr) };
        }
        // The fast path: a block of a segment recorded by its tag in the segment map (a shift, a
        // mask, a load and a compare), then what `dealloc` does — a slice of no live page maps
        // to the empty page, which no heap owns: its free leaves for `free_slow`, which reports
        // it. Everything else — null, a large area, a pointer ctxalloc never handed out, a
        // segment recorded in a leaf — leaves for the slow path.
        let addr = ptr.addr();
        if self.segmap.contains_fast(addr) {
            // SAFETY: the segment is live, so its header is mapped; the pointer is a block the
            // caller gives up or lies in no live page (reported), rebuilt from the mapping's
            // provenance (under `hardened`, one that looks free already is looked at closer).
            return unsafe {
                self.slab_free_in(self.page_of(addr), self.platform.ptr_from_addr(addr).cast(), true)
            };
        }
        // SAFETY: forwarded.
        unsafe { self.kfree_slow(ptr) }
    }

    /// [`kfree`](Self::kfree) off its fast path.
    ///
    /// # Safety
    /// As [`kfree`](Self::kfree).
    #[cold]
    #[inline(never)]
    unsafe fn kfree_slow(&self, ptr: *mut u8) {
        if ptr.is_null() {
            return;
        }
        self.free_hook(ptr);
        match self.owner_of(ptr) {
            // SAFETY: a live slab block, given up by the caller.
            Owner::Slab(_) => unsafe { self.slab_free(ptr) },
            // A kvmalloc fallback freed here leaves `kv_live` high: frees of large slab
            // layouts then look up the registry, which is slower but right.
            Owner::Vmap(_) => {
                // SAFETY: a live area, given up by the caller.
                if !unsafe { self.vmap_free_if_area(ptr) } {
                    self.bad_free(ptr, None, "not a live large allocation");
                }
            }
            Owner::Foreign(why) => self.bad_free(ptr, None, why),
        }
    }

    /// Bytes usable at `ptr` without its layout — the kernel's `ksize`, C's
    /// `malloc_usable_size`: the block's size class or the area's length; 0 for null or a
    /// pointer ctxalloc did not hand out.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let l = Layout::from_size_align(300_000, 8).unwrap();
    /// let p = unsafe { core.alloc(l) };
    /// assert_eq!(core.ksize(p), 300_000usize.next_multiple_of(4096)); // a page-granular area
    /// assert_eq!(core.ksize(core::ptr::null()), 0);
    /// unsafe { core.kfree(p) };
    /// # }
    /// ```
    pub fn ksize(&self, ptr: *const u8) -> usize {
        self.entry("ksize");
        if ptr.is_null() {
            return 0;
        }
        match self.owner_of(ptr) {
            Owner::Slab(n) | Owner::Vmap(n) => n,
            Owner::Foreign(_) => 0,
        }
    }

    /// Resizes a block without its layout — the kernel's `krealloc`, C's `realloc`, keeping
    /// C's alignment ([`MIN_ALIGN`], 16 above 8 bytes). Null `ptr` allocates. In place when the block
    /// (or the area, by `remap`) can hold `new_size`; otherwise allocate in the effective
    /// context of `call`, copy, free. Null on failure, the old block untouched; null and a
    /// report for a pointer ctxalloc did not hand out.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, Gfp};
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// unsafe {
    ///     let p = core.krealloc(core::ptr::null_mut(), 10, Gfp::KERNEL); // malloc(10)
    ///     p.copy_from(b"ctxalloc!\0".as_ptr(), 10);
    ///     let q = core.krealloc(p, 200_000, Gfp::NOFS); // grows into a vmap area
    ///     assert_eq!(core::slice::from_raw_parts(q, 10), b"ctxalloc!\0");
    ///     core.kfree(q);
    /// }
    /// # }
    /// ```
    ///
    /// # Safety
    /// `ptr` is null or a live block of this allocator; `new_size` ≤ `isize::MAX`.
    pub unsafe fn krealloc(&self, ptr: *mut u8, new_size: usize, call: Gfp) -> *mut u8 {
        self.entry("krealloc");
        #[cfg(feature = "hooks")]
        if !ptr.is_null() && (self.hooks_armed() || self.tags_live()) {
            // SAFETY: forwarded.
            return self
                .realloc_hooked(ptr, new_size, call, || unsafe { self.krealloc_plain(ptr, new_size, call) });
        }
        // SAFETY: forwarded.
        unsafe { self.krealloc_plain(ptr, new_size, call) }
    }

    /// [`krealloc`](Self::krealloc) without the debugging hooks.
    ///
    /// # Safety
    /// As [`krealloc`](Self::krealloc).
    unsafe fn krealloc_plain(&self, ptr: *mut u8, new_size: usize, call: Gfp) -> *mut u8 {
        // SAFETY: MIN_ALIGN is a power of two; the caller bounds `new_size`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, MIN_ALIGN) };
        if ptr.is_null() {
            return self.alloc_with(new_layout, call).map_or(ptr::null_mut(), NonNull::as_ptr);
        }
        let old = match self.owner_of(ptr) {
            Owner::Slab(block) => {
                let fits = class_for(new_size, MIN_ALIGN).is_some_and(|c| class_size(c) * 2 >= block);
                if new_size <= block && fits {
                    crate::track::unpoison(ptr, new_size);
                    return ptr;
                }
                block
            }
            Owner::Vmap(len) => {
                if class_for(new_size, MIN_ALIGN).is_none() {
                    // SAFETY: a live area (its alignment is at most a page for C's callers;
                    // larger ones are refused by vmap_resize and moved below).
                    let layout = unsafe { Layout::from_size_align_unchecked(len, P::PAGE_SIZE) };
                    // SAFETY: a live area resized to a vmap size.
                    let p = unsafe { self.vmap_resize(ptr, layout, new_size, call) };
                    if !p.is_null() {
                        return p;
                    }
                }
                len
            }
            Owner::Foreign(why) => {
                self.bad_free(ptr, None, why);
                return ptr::null_mut();
            }
        };
        let Ok(p) = self.alloc_with(new_layout, call - Gfp::ZERO) else {
            return ptr::null_mut();
        };
        // All `old` bytes are the caller's (C may use a block's usable size), also those past
        // what was asked for, which fuzz builds keep poisoned.
        crate::track::unpoison(ptr, old);
        // SAFETY: both blocks are live and distinct; the old one has `old` usable bytes.
        unsafe {
            ptr::copy_nonoverlapping(ptr, p.as_ptr(), old.min(new_size));
            self.kfree(ptr);
        }
        p.as_ptr()
    }

    /// `usage()` recomputed from the structures that hold the memory: every live segment's
    /// charged header pages and committed slices (found through the segment map), every vmap
    /// area, cached area and the vmap table. Equal to [`usage`](Self::usage) whenever no
    /// allocation or free is in progress — the fuzz targets check it after every operation.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core};
    /// use core::alloc::Layout;
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// let l = Layout::from_size_align(1 << 20, 8).unwrap();
    /// let p = unsafe { core.alloc(l) };
    /// assert_eq!(core.audit_usage(), core.usage());
    /// unsafe { core.dealloc(p, l) };
    /// assert_eq!(core.audit_usage(), core.usage());
    /// # }
    /// ```
    #[cfg(any(test, feature = "mock"))]
    pub fn audit_usage(&self) -> usize {
        let mut total = self.vmap_charged();
        self.segmap.for_each(|base| total += self.segment_charged(base));
        total
    }

    /// Reports a failed allocation (unless NOWARN; at most once per 10 s) and returns null.
    #[cold]
    pub(crate) fn alloc_failed(&self, size: usize, eff: Effective) -> *mut u8 {
        self.alloc_failed_because(size, eff, "the page source is exhausted")
    }

    /// As [`alloc_failed`](Self::alloc_failed), saying why.
    #[cold]
    pub(crate) fn alloc_failed_because(&self, size: usize, eff: Effective, why: &str) -> *mut u8 {
        self.counters.alloc_failures.fetch_add(1, Ordering::Relaxed);
        if eff.warn() {
            if let Some(suppressed) = self.fail_reports.allow(self.platform.now_ns(), FAIL_REPORT_INTERVAL_NS)
            {
                report(
                    &self.platform,
                    format_args!(
                        "ctxalloc: allocation of {size} bytes failed in context {}: {why}; {} \
                         ({suppressed} similar reports suppressed)",
                        eff.gfp(),
                        UsageOf { usage: self.acct.usage(), limit: self.acct.limit() },
                    ),
                );
            }
        }
        ptr::null_mut()
    }

    // ---------------------------------------------------------------------------------------
    // Context
    // ---------------------------------------------------------------------------------------

    /// The calling thread's context.
    #[inline(always)]
    pub(crate) fn thread(&self) -> &ThreadCtx {
        // SAFETY: the platform hands out the calling thread's context, valid while it runs.
        unsafe { &*self.platform.thread() }
    }

    /// The calling thread's context word.
    #[inline]
    pub fn current(&self) -> Gfp {
        self.thread().scope.current()
    }

    /// The effective context an allocation with `call` flags would have here: the call's
    /// flags, the context word, and [`Gfp::ATOMIC`] if the platform reports atomic context.
    ///
    /// ```
    /// use ctxalloc_core::{mock::MockPlatform, Core, Gfp};
    /// let core = Core::new(MockPlatform::new(4 << 20));
    /// assert!(core.effective(Gfp::KERNEL).may_reclaim());
    /// core.platform().set_in_atomic(true); // an interrupt handler, say
    /// let e = core.effective(Gfp::KERNEL);
    /// assert!(!e.may_reclaim() && !e.may_wait() && e.gfp().contains(Gfp::HIGH));
    /// ```
    #[inline]
    pub fn effective(&self, call: Gfp) -> Effective {
        self.effective_of(call, self.thread())
    }

    /// [`effective`](Self::effective) for the thread context `t` (the caller's). Read on slow
    /// paths only: the fast path never asks the context word, nor the platform.
    #[inline]
    pub(crate) fn effective_of(&self, call: Gfp, t: &ThreadCtx) -> Effective {
        let call = if self.platform.in_atomic() { call | Gfp::ATOMIC } else { call };
        Effective::new(call, t.scope.current())
    }

    /// Opens a scope on the calling thread (see [`ScopeState::save`](crate::ScopeState::save)).
    #[inline]
    pub fn scope_save(&self, flags: Gfp, at: &'static Location<'static>) -> Cookie {
        self.thread().scope.save(flags, at)
    }

    /// Closes a scope on the calling thread; a restore out of order is reported (debug builds).
    #[inline]
    pub fn scope_restore(&self, cookie: Cookie) {
        self.thread().scope.restore(cookie, |m| self.mispair(m));
    }

    /// [`ScopeState::enter`](crate::ScopeState::enter) on the calling thread: what a scoped
    /// future does at the start of each poll.
    #[inline(always)]
    pub fn scope_enter(&self, flags: Gfp) -> Gfp {
        self.thread().scope.enter(flags)
    }

    /// [`ScopeState::exit`](crate::ScopeState::exit) on the calling thread: the poll's end.
    #[inline(always)]
    pub fn scope_exit(&self, prev: Gfp) {
        self.thread().scope.exit(prev);
    }

    /// Opens a lock-tied scope on the calling thread (see
    /// [`ScopeState::hold`](crate::ScopeState::hold)): what a scoped lock does when taken.
    #[inline]
    pub fn scope_hold(&self, flags: Gfp) {
        self.thread().scope.hold(flags);
    }

    /// Closes a lock-tied scope on the calling thread; holds may be released in any order.
    #[inline]
    pub fn scope_release(&self, flags: Gfp) {
        self.thread().scope.release(flags);
    }

    #[cold]
    pub(crate) fn mispair(&self, m: Mispair) {
        self.counters.scope_mispairs.fetch_add(1, Ordering::Relaxed);
        report(&self.platform, format_args!("{m}"));
    }

    // ---------------------------------------------------------------------------------------
    // Accounting, trimming, thread exit, fork
    // ---------------------------------------------------------------------------------------

    /// Bytes obtained from the page source and not given back.
    #[inline]
    pub fn usage(&self) -> usize {
        self.acct.usage()
    }

    /// The smallest limit [`set_limit`](Self::set_limit) accepts: the emergency reserve's floor
    /// ([`RESERVE_FLOOR`](crate::RESERVE_FLOOR)), a segment header and one slab page — what the
    /// first allocation needs. A program needs a slab page (64 KiB) for each size class it uses,
    /// so a useful limit is some MiB.
    pub const MIN_LIMIT: usize = crate::page::RESERVE_FLOOR + header_bytes(P::PAGE_SIZE) + SLICE_SIZE;

    /// Sets the memory limit, in bytes. Usage never exceeds it: plain requests stop at
    /// `limit − reserve` (the reserve is 1/32 of the limit, 256 KiB – 64 MiB, at most half of
    /// it), NOFAIL requests may use half the reserve, MEMALLOC (the reclaim context) all of it. A
    /// limit below the current usage makes allocations reclaim until usage is under it. A limit
    /// below [`MIN_LIMIT`](Self::MIN_LIMIT) is refused and changes nothing.
    pub fn set_limit(&self, bytes: usize) -> Result<(), LimitError> {
        self.set_limit_from(bytes, "")
    }

    /// Removes the memory limit.
    pub fn remove_limit(&self) {
        self.install_limit(None, "");
    }

    /// [`set_limit`](Self::set_limit), saying where the limit came from (shown by
    /// [`stats`](Self::stats); see [`LimitOrigin`](crate::LimitOrigin)).
    pub fn set_limit_from(&self, bytes: usize, origin: &str) -> Result<(), LimitError> {
        LimitError::check(bytes, Self::MIN_LIMIT)?;
        self.install_limit(Some(bytes), origin);
        Ok(())
    }

    fn install_limit(&self, limit: Option<usize>, origin: &str) {
        let origin = LimitOrigin::new(if limit.is_some() { origin } else { "" });
        {
            let mut o = self.lock(&self.limit_origin);
            *o = origin;
            self.acct.set_limit(limit);
        }
        if limit.is_some() && self.acct.above_low_watermark() {
            self.wake_background();
        }
    }

    /// The memory limit, if any.
    #[inline]
    pub fn limit(&self) -> Option<usize> {
        self.acct.limit()
    }

    /// Gives back what the allocator keeps only to go faster: the calling thread's empty pages,
    /// the heaps of exited threads (their empty pages back, the others abandoned), the spare
    /// segment, the cached large areas, and the physical memory of free slices.
    pub fn trim(&self) {
        self.entry("trim");
        let heap = self.thread().heap.get();
        if heap != Heap::empty() {
            // SAFETY: the calling thread's live heap.
            unsafe { self.heap_trim(heap) };
        }
        self.heaps_dissolve(false);
        self.area_cache_flush(false);
        self.fit_trim();
        self.pages_trim();
        // Nothing waits for a purge now: a background thread sleeping out the purge delay
        // looks again (and, idle, exits) instead of sleeping it out.
        self.nudge_background();
    }

    /// Call when the calling thread exits (the std shim does, from a thread-local destructor):
    /// its heap is left vacant, whole, for the next thread that needs one (see
    /// `slab::abandon`). Allocations the thread still makes afterwards (from later destructors)
    /// use the shared orphan heap; its frees keep working.
    pub fn thread_exit(&self) {
        let t = self.thread();
        let heap = t.heap.get();
        t.state.set(ThreadState::Exited as u8);
        if heap != Heap::empty() {
            t.heap.set(Heap::empty());
            // SAFETY: the heap was this thread's; no one else uses it.
            unsafe { self.heap_vacate(heap) };
        }
    }

    /// `pthread_atfork` prepare: takes every lock, in order, so that no other thread holds one
    /// when the process forks. Until [`fork_parent`](Self::fork_parent) or
    /// [`fork_child`](Self::fork_child), the calling thread's own allocations (another
    /// `atfork` handler's, the C library's) go through the locks it keeps; the call-outs they
    /// find wait until the locks are released.
    pub fn fork_prepare(&self) {
        let relax = || self.platform.relax();
        self.orphan.fork_acquire(relax);
        self.heaps.fork_acquire(relax);
        self.abandoned.fork_acquire(relax);
        self.vmap.fork_acquire(relax);
        self.pages.fork_acquire(relax);
        // Leaves: never held while another lock is taken.
        self.fit.fork_acquire(relax);
        self.limit_origin.fork_acquire(relax);
        self.reclaim.pressure.fork_acquire(relax);
        #[cfg(feature = "tags")]
        self.debug.tags.fork_prepare(relax);
        self.thread().locks.set_forking(true);
    }

    /// `pthread_atfork` parent: releases what [`fork_prepare`](Self::fork_prepare) took.
    ///
    /// # Safety
    /// The calling thread ran `fork_prepare` and has not released the locks since.
    pub unsafe fn fork_parent(&self) {
        // SAFETY: per the contract.
        unsafe { self.release_all() }
    }

    /// `pthread_atfork` child: releases the locks and abandons the heaps of the threads that do
    /// not exist in the child, so their pages can be freed into and reused. A heap whose thread
    /// was inside a slow path when the process forked may have half-edited lists: it is left
    /// alone (its pages stay owned by a thread that will never run — memory, not corruption).
    ///
    /// # Safety
    /// Called in the child of `fork`, on its only thread, which ran `fork_prepare` before forking.
    pub unsafe fn fork_child(&self) {
        // SAFETY: per the contract.
        unsafe { self.release_all() };
        // The child has no background thread: the next free memory arms the purge again.
        self.lock(&self.pages).clock.disarm();
        self.lock(&self.vmap).clock.disarm();
        let me = self.thread().heap.get();
        let orphan = self.lock(&self.orphan).0;
        let mut h = self.lock(&self.heaps).all;
        while !h.is_null() {
            // SAFETY: heaps are never unmapped; the child has one thread, so no heap but ours is
            // in use and `all_next` is immutable.
            unsafe {
                let next = (*h).all_next;
                if (*h).live && h != me && h != orphan && !(*h).busy.load(Ordering::Acquire) {
                    self.fit_quick_forget(h);
                    self.heap_abandon(h);
                    self.heap_release(h);
                }
                h = next;
            }
        }
    }

    /// # Safety
    /// The calling thread took every lock in [`fork_prepare`](Self::fork_prepare) and has not
    /// released them since.
    unsafe fn release_all(&self) {
        let t = self.thread();
        t.locks.set_forking(false);
        // SAFETY: per the contract.
        unsafe {
            #[cfg(feature = "tags")]
            self.debug.tags.fork_release();
            self.reclaim.pressure.fork_release();
            self.limit_origin.fork_release();
            self.fit.fork_release();
            self.pages.fork_release();
            self.vmap.fork_release();
            self.abandoned.fork_release();
            self.heaps.fork_release();
            self.orphan.fork_release();
        }
        // What the thread's allocations found to do while it held them.
        if t.locks.pending() {
            self.run_deferred(t);
        }
    }
}

impl<P: Platform> CallOuts for Core<P> {
    /// The call-outs found while the thread held an allocator lock: the reports of bad frees
    /// first, then the wakes; then, if a bad free under `hardened` asked for it, the abort. What
    /// they do may defer more (a thread start allocates, and frees under a lock): until none.
    fn run_deferred(&self, t: &ThreadCtx) {
        debug_assert!(t.locks.may_call_out());
        while t.locks.pending() {
            let d = t.locks.take();
            for &(addr, why) in &d.bad_frees[..d.bad_len] {
                self.report_bad_free(addr, None, why);
            }
            if d.bad_more != 0 {
                report(
                    &self.platform,
                    format_args!("ctxalloc: {} more bad frees found at the same time", d.bad_more),
                );
            }
            if d.work & deferred::WAKE_WAITERS != 0 {
                self.out("wake_all").wake_all(&self.reclaim.freed_seq);
            }
            if d.work & deferred::WAKE_BACKGROUND != 0 {
                self.wake_background_now();
            } else if d.work & deferred::PURGE_WANTED != 0 {
                self.want_background();
            }
            if d.work & deferred::ABORT != 0 {
                self.platform.abort();
            }
        }
    }
}
