//! State shared between heaps: heaps and pages whose thread exited, the pool of heaps, the
//! orphan heap.
//!
//! An exiting thread leaves its heap *vacant*, whole: its pages, their free lists and its page
//! table stay as they are (the pages keep it as their owner, so other threads' frees into them
//! go to their remote lists, as into any page they do not own). The next thread that needs a
//! heap takes the most recently vacated one — pages already faulted in, for every class, and
//! blocks its predecessor left it (a thread handing its work to its successor, as larson and
//! thread pools do, frees them locally from the first free). A vacant heap that waited
//! [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS), or one too many ([`MAX_VACANT`]), or any at
//! `trim`, is *dissolved*: its pages that still hold live blocks are abandoned
//! (`Core::heap_abandon`), the others go back. A thread freeing into an abandoned page adopts
//! it (its later frees are local); a thread without a heap frees into it under the lock; an
//! allocating thread adopts pages of the class it needs before taking fresh memory. A page's
//! last free gives it back, so memory of exited threads returns.

use super::heap::Heap;
use super::page::{Page, PageQueue};
use crate::page::PurgeClock;
use crate::size_class::NUM_CLASSES;
use core::ptr;

/// Abandoned pages per class, under `Core::abandoned`. While a page is on these lists, the holder
/// of the lock is its owner.
pub(crate) struct Abandoned {
    lists: [PageQueue; NUM_CLASSES],
    /// Pages on all lists.
    pub(crate) count: usize,
}

// SAFETY: the lists hold pages nobody else owns; they move between threads under the lock.
unsafe impl Send for Abandoned {}

impl Abandoned {
    pub(crate) const fn new() -> Self {
        Abandoned { lists: [PageQueue::EMPTY; NUM_CLASSES], count: 0 }
    }

    /// # Safety
    /// `page` is live, on no list, and its remote list is marked abandoned.
    pub(crate) unsafe fn push(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe { self.lists[(*page).class as usize].push_back(page) };
        self.count += 1;
    }

    /// # Safety
    /// `page` is on one of these lists.
    pub(crate) unsafe fn remove(&mut self, page: *mut Page) {
        // SAFETY: per the contract.
        unsafe { self.lists[(*page).class as usize].remove(page) };
        self.count -= 1;
    }

    /// An abandoned page of `class`, unlinked, or null.
    pub(crate) fn pop(&mut self, class: usize) -> *mut Page {
        // SAFETY: we hold the lists.
        let p = unsafe { self.lists[class].pop_front() };
        if !p.is_null() {
            self.count -= 1;
        }
        p
    }
}

/// Vacant heaps kept at most; the oldest beyond it is dissolved when another is vacated.
pub(crate) const MAX_VACANT: usize = 8;

/// The pool of heaps, under `Core::heaps`.
pub(crate) struct HeapPool {
    /// Heaps no thread owns and that own no page, linked through `pool_next`.
    pub(crate) free: *mut Heap,
    /// Vacant heaps — their thread exited, their pages kept — newest first, linked through
    /// `pool_next`. Whoever holds the lock owns them.
    pub(crate) vacant: *mut Heap,
    /// Heaps on `vacant`.
    pub(crate) vacant_count: usize,
    /// Armed when a heap is vacated with none waiting before: vacant heaps are memory kept for
    /// speed, dissolved by `Core::purge_aged` once they have waited.
    pub(crate) clock: PurgeClock,
    /// Every heap ever created, linked through `all_next` (never unlinked).
    pub(crate) all: *mut Heap,
    /// Heaps owned by a thread.
    pub(crate) live: usize,
}

// SAFETY: the pool owns the heaps it lists; it moves between threads under its lock.
unsafe impl Send for HeapPool {}

impl HeapPool {
    pub(crate) const fn new() -> Self {
        HeapPool {
            free: ptr::null_mut(),
            vacant: ptr::null_mut(),
            vacant_count: 0,
            clock: PurgeClock::new(),
            all: ptr::null_mut(),
            live: 0,
        }
    }

    /// Unlinks and returns the newest vacant heap, or null.
    pub(crate) fn take_vacant(&mut self) -> *mut Heap {
        let h = self.vacant;
        if !h.is_null() {
            // SAFETY: vacant heaps are ours under the pool lock.
            self.vacant = unsafe { (*h).pool_next };
            self.vacant_count -= 1;
        }
        h
    }

    /// Unlinks and returns the oldest vacant heap if `pick` accepts its vacating time, or null.
    pub(crate) fn take_oldest_vacant(&mut self, pick: impl FnOnce(u64) -> bool) -> *mut Heap {
        let mut link: *mut *mut Heap = &mut self.vacant;
        // SAFETY: vacant heaps are ours under the pool lock; the walk ends at the last one.
        unsafe {
            if (*link).is_null() {
                return ptr::null_mut();
            }
            while !(**link).pool_next.is_null() {
                link = &raw mut (**link).pool_next;
            }
            let h = *link;
            if !pick((*h).vacated_at) {
                return ptr::null_mut();
            }
            *link = ptr::null_mut();
            self.vacant_count -= 1;
            h
        }
    }
}

/// The heap of threads that have exited, under `Core::orphan`; null until first needed.
pub(crate) struct OrphanSlot(pub(crate) *mut Heap);

// SAFETY: the heap is used only by the holder of the lock.
unsafe impl Send for OrphanSlot {}
