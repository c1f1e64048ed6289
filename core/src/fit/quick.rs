//! Quick lists and their depot. Each slab heap (each CPU in a kernel) keeps a stack of freed
//! blocks per small block size in front of the [`FitHeap`]: a free of a block of at most
//! [`QUICK_MAX_BLOCK`] bytes pushes it there, and the next request of its size on the same heap
//! pops it — no lock, no merge, no search. The kernel's per-CPU quicklists, and dlmalloc's fast
//! bins, for the same reason: most small frees are followed by a request of the same size. The
//! lists themselves are the slab's (`slab::fit` keeps them as pages of the heap, so that the
//! slab's own fast path pops them); here are their sizes and the depot behind them.
//!
//! A block on a quick list or in the depot stays in use as far as the heap and its neighbours
//! know: they do not merge with it. Its first word links its list.
//!
//! Bounded: a list holds fewer than [`QUICK_DEPTH`] blocks; the push that fills it takes the
//! older half off as a magazine of [`MAGAZINE`] blocks for the [`Depot`], where any heap whose
//! list of that size runs dry takes it whole. The slab hands everything back to the heap before
//! it refuses a request, when it trims, and when a heap's thread exits: what the lists and the
//! depot hold is never what stands between a request and a refusal on the same heap.

use super::{FitHeap, GRANULE, HEADER, MIN_BLOCK};
use core::ptr;

/// Number of quick lists: block sizes 32, 48, … 272 (requests of up to 264 bytes).
pub(crate) const QUICK_CLASSES: usize = 16;
/// The largest block a quick list holds.
pub(crate) const QUICK_MAX_BLOCK: usize = MIN_BLOCK + (QUICK_CLASSES - 1) * GRANULE;
/// A list reaching this many blocks gives up a magazine; so each holds fewer, and a heap's
/// lists under `QUICK_DEPTH · Σ block sizes` = 76 KiB.
pub(crate) const QUICK_DEPTH: u32 = 32;
/// Blocks of a magazine: the half of a full list that moves to or from the [`Depot`] at once.
pub(crate) const MAGAZINE: u32 = QUICK_DEPTH / 2;

/// The block size of list `class`.
#[inline]
pub(crate) const fn block_of(class: usize) -> usize {
    MIN_BLOCK + class * GRANULE
}

/// The list that serves a request of `size` bytes at `align`, if one does.
#[inline]
pub(crate) const fn class_of(size: usize, align: usize) -> Option<usize> {
    let block = FitHeap::block_for(size);
    if align <= GRANULE && block <= QUICK_MAX_BLOCK {
        Some((block - MIN_BLOCK) / GRANULE)
    } else {
        None
    }
}

/// The list that holds a free block of `block` bytes (a block size: a multiple of 16 of at
/// least 32), if one does.
#[inline]
pub(crate) const fn class_of_block(block: usize) -> Option<usize> {
    if block <= QUICK_MAX_BLOCK {
        Some((block - MIN_BLOCK) / GRANULE)
    } else {
        None
    }
}

/// Bytes a caller may use in a block of list `class`.
#[inline]
pub(crate) const fn usable_of(class: usize) -> usize {
    block_of(class) - HEADER
}

/// Full magazines parked by the heaps whose lists filled, for any heap whose list of the same
/// size runs dry: a block freed on one CPU and wanted on another moves in a batch of
/// [`MAGAZINE`], one lock for all of them, and is neither merged nor split on the way (the
/// magazine layer of Bonwick and Adams's slab allocator). Part of the [`FitHeap`], under its
/// lock.
///
/// A magazine is a chain of blocks linked through their first words (as the slab links them);
/// the depot links magazines through their first block's second word (every block has at least
/// 24 bytes for its caller). Bounded: it holds at most a quarter of the heap's spans; a
/// magazine beyond that is handed back for the caller to free into the heap. (An eighth was
/// too little for the kernel bench's two CPUs exchanging batches of 2048 blocks: magazines
/// spilled into the spans and the exchange ran at the lock's speed, 18.5 ms against 3.7.)
pub(crate) struct Depot {
    /// Per class, the first blocks of its magazines.
    heads: [*mut u8; QUICK_CLASSES],
    /// Bytes of the blocks parked, headers included.
    bytes: usize,
}

impl Depot {
    /// No magazine.
    pub(crate) const fn new() -> Self {
        Depot { heads: [ptr::null_mut(); QUICK_CLASSES], bytes: 0 }
    }

    /// Bytes of the blocks parked, headers included.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl FitHeap {
    /// Parks the magazine `mag` of list `class`, unless the depot is full: then it is handed
    /// back (`Err`), for the caller to free its blocks into the heap.
    ///
    /// # Safety
    /// `mag` is a magazine of [`MAGAZINE`] blocks of `class`, in use for this heap, that nobody
    /// else reaches.
    pub(crate) unsafe fn depot_put(&mut self, class: usize, mag: *mut u8) -> Result<(), *mut u8> {
        let bytes = MAGAZINE as usize * block_of(class);
        if self.depot.bytes + bytes > self.span_bytes() / 4 {
            return Err(mag);
        }
        // SAFETY: per the contract; the first block's second word is nobody's.
        unsafe { mag.cast::<*mut u8>().add(1).write(self.depot.heads[class]) };
        self.depot.heads[class] = mag;
        self.depot.bytes += bytes;
        Ok(())
    }

    /// A magazine of list `class`, or null if none is parked.
    pub(crate) fn depot_take(&mut self, class: usize) -> *mut u8 {
        let mag = self.depot.heads[class];
        if !mag.is_null() {
            // SAFETY: a magazine parked here: its first block's second word links the next.
            self.depot.heads[class] = unsafe { mag.cast::<*mut u8>().add(1).read() };
            self.depot.bytes -= MAGAZINE as usize * block_of(class);
        }
        mag
    }

    /// Some magazine, of any list, or `None` if the depot is empty (draining it).
    pub(crate) fn depot_take_any(&mut self) -> Option<*mut u8> {
        (0..QUICK_CLASSES).map(|class| self.depot_take(class)).find(|m| !m.is_null())
    }

    /// Bytes of the blocks parked in the depot, headers included.
    pub(crate) fn depot_bytes(&self) -> usize {
        self.depot.bytes()
    }
}

// SAFETY: the depot holds pointers into spans of its heap, with which it moves, under the heap's
// owner's lock.
unsafe impl Send for Depot {}

#[cfg(test)]
mod tests {
    use super::super::tests::span;
    use super::*;

    #[test]
    fn list_sizes_meet_the_heaps_block_sizes() {
        for size in 1..=QUICK_MAX_BLOCK - HEADER {
            let class = class_of(size, 16).expect("a quick size");
            assert_eq!(block_of(class), FitHeap::block_for(size), "{size}");
            assert_eq!(class_of_block(block_of(class)), Some(class));
            assert!(usable_of(class) >= size);
        }
        assert_eq!(class_of(QUICK_MAX_BLOCK - HEADER + 1, 8), None);
        assert_eq!(class_of(100, 32), None, "only the heap aligns further");
        assert_eq!(class_of_block(QUICK_MAX_BLOCK + GRANULE), None);
    }

    /// A magazine of `MAGAZINE` fresh blocks of 100 bytes from `heap`.
    ///
    /// # Safety
    /// The heap's spans are live and hold room.
    unsafe fn magazine(heap: &mut FitHeap) -> *mut u8 {
        // SAFETY: per the contract; the blocks are ours.
        unsafe {
            let blocks: std::vec::Vec<*mut u8> = (0..MAGAZINE).map(|_| heap.alloc(100, 8)).collect();
            for w in blocks.windows(2) {
                w[0].cast::<*mut u8>().write(w[1]);
            }
            blocks[MAGAZINE as usize - 1].cast::<*mut u8>().write(ptr::null_mut());
            blocks[0]
        }
    }

    #[test]
    fn the_depot_parks_magazines_up_to_a_quarter_of_the_spans() {
        let len = 64 * 1024;
        let mut buf = span(len);
        let base = buf.as_mut_ptr().cast::<u8>();
        let mut heap = FitHeap::new();
        let class = class_of(100, 8).unwrap();
        // SAFETY: a 16-byte aligned buffer of ours for the span's life.
        unsafe {
            heap.add_span(base, len);
            let mut parked = 0;
            // A quarter of 64 KiB is 16 KiB: nine magazines of 16 · 112 B fit, a tenth does not.
            while heap.depot_bytes() + 16 * 112 <= len / 4 {
                let m = magazine(&mut heap);
                assert_eq!(heap.depot_put(class, m), Ok(()));
                parked += 1;
            }
            assert_eq!((parked, heap.depot_bytes()), (9, 9 * 16 * 112));
            let extra = magazine(&mut heap);
            assert_eq!(heap.depot_put(class, extra), Err(extra), "full");
            assert_eq!(heap.depot_take(class + 1), ptr::null_mut());
            let mut taken = 0;
            while let Some(m) = heap.depot_take_any() {
                assert!(!m.cast::<*mut u8>().read().is_null(), "a whole magazine");
                taken += 1;
            }
            assert_eq!((taken, heap.depot_bytes()), (parked, 0));
        }
    }
}
