//! State shared between heaps: pages whose thread exited, the pool of heaps, the orphan heap.
//!
//! An exiting thread abandons its pages that still hold live blocks (`Core::heap_abandon`). A
//! thread freeing into such a page adopts it (its later frees are local); a thread without a heap
//! frees into it under the lock; an allocating thread adopts pages of the class it needs before
//! taking fresh memory. A page's last free gives it back, so memory of exited threads returns.

use super::heap::Heap;
use super::page::{Page, PageQueue};
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

/// The pool of heaps, under `Core::heaps`.
pub(crate) struct HeapPool {
    /// Heaps no thread owns, linked through `pool_next`.
    pub(crate) free: *mut Heap,
    /// Every heap ever created, linked through `all_next` (never unlinked).
    pub(crate) all: *mut Heap,
    /// Heaps owned by a thread.
    pub(crate) live: usize,
}

// SAFETY: the pool owns the heaps it lists; it moves between threads under its lock.
unsafe impl Send for HeapPool {}

impl HeapPool {
    pub(crate) const fn new() -> Self {
        HeapPool { free: ptr::null_mut(), all: ptr::null_mut(), live: 0 }
    }
}

/// The heap of threads that have exited, under `Core::orphan`; null until first needed.
pub(crate) struct OrphanSlot(pub(crate) *mut Heap);

// SAFETY: the heap is used only by the holder of the lock.
unsafe impl Send for OrphanSlot {}
