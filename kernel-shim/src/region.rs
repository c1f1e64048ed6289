//! The page source over a static region: `linked_list_allocator` behind a `spin` lock, handing
//! out page-aligned spans to the core (segments for the slab, whole areas for vmap — there is no
//! mapping hook, so a large area is a contiguous span). The lock is taken only when the core
//! needs pages: the fast paths never see it.

use crate::platform::Platform;
use core::alloc::Layout;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use ctxalloc_core::ThreadCtx;
use linked_list_allocator::Heap;

/// Pages are 4 KiB.
pub const PAGE: usize = 4096;

/// The embedder's platform and the region, as the core's `Platform`.
///
/// Shared by every CPU: `heap` under its spin lock; `base` written once by `init` (Release) and
/// read by every pointer rebuild (Acquire); `platform` read-only.
pub struct Region<P: Platform> {
    platform: P,
    heap: spin::Mutex<Heap>,
    /// Start of the region: every pointer the core gets derives from it (provenance).
    base: AtomicPtr<u8>,
}

impl<P: Platform> Region<P> {
    pub(crate) const fn new(platform: P) -> Self {
        Region { platform, heap: spin::Mutex::new(Heap::empty()), base: AtomicPtr::new(ptr::null_mut()) }
    }

    /// The embedder's platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Hands the region to the page source. Returns `false` if it already has one.
    ///
    /// # Safety
    /// `[start, start + len)` is valid, writable memory used by nothing else, for ever.
    pub(crate) unsafe fn init(&self, start: *mut u8, len: usize) -> bool {
        let mut heap = self.heap.lock();
        if !self.base.load(Ordering::Relaxed).is_null() {
            return false;
        }
        // Page-align the region; the linked list needs room for its first hole.
        let first = start.addr().next_multiple_of(PAGE);
        let len = len.saturating_sub(first - start.addr()) & !(PAGE - 1);
        if len < PAGE {
            return false;
        }
        let start = start.with_addr(first);
        // SAFETY: the caller's contract; the range is inside theirs.
        unsafe { heap.init(start, len) };
        self.base.store(start, Ordering::Release);
        true
    }

    /// Bytes in the region (0 before `init`).
    pub fn size(&self) -> usize {
        self.heap.lock().size()
    }

    fn ensure_init(&self) -> bool {
        if !self.base.load(Ordering::Acquire).is_null() {
            return true;
        }
        if let Some((start, len)) = self.platform.early_region() {
            // SAFETY: the platform promises the early region is ours. Another CPU may have won
            // the race to initialise: either way the region is there afterwards.
            unsafe { self.init(start, len) };
        }
        !self.base.load(Ordering::Acquire).is_null()
    }
}

// SAFETY: `thread` forwards the embedder's per-CPU (or per-task) context (its contract); `map`
// hands out page-aligned spans of the region, disjoint while held, whose provenance is the
// region's, which `ptr_from_addr` rebuilds from `base`; `unmap` returns exactly what `map` gave;
// nothing allocates through the allocator or calls back into the core.
unsafe impl<P: Platform> ctxalloc_core::Platform for Region<P> {
    const PAGE_SIZE: usize = PAGE;
    const MAP_ZEROED: bool = false;

    #[inline(always)]
    fn thread(&self) -> *const ThreadCtx {
        self.platform.context()
    }

    #[inline]
    fn in_atomic(&self) -> bool {
        self.platform.in_atomic()
    }

    unsafe fn map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        if !self.ensure_init() {
            return None;
        }
        let layout = Layout::from_size_align(len, align).ok()?;
        self.heap.lock().allocate_first_fit(layout).ok()
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize) {
        // SAFETY: a span `map` handed out, of `len` bytes (the list needs the size only).
        unsafe { self.heap.lock().deallocate(ptr, Layout::from_size_align_unchecked(len, PAGE)) };
    }

    #[inline(always)]
    fn ptr_from_addr(&self, addr: usize) -> *mut u8 {
        self.base.load(Ordering::Relaxed).with_addr(addr)
    }

    fn report(&self, msg: &str) {
        self.platform.report(msg);
    }

    fn now_ns(&self) -> u64 {
        self.platform.now_ns()
    }

    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: u64) {
        self.platform.wait(word, expected, timeout_ns);
    }

    fn wake_all(&self, word: &AtomicU32) {
        self.platform.wake_all(word);
    }

    #[inline]
    fn relax(&self) {
        self.platform.relax();
    }
}
