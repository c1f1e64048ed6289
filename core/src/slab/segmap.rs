//! The segment map: one bit per 4 MiB of address space, set while a slab segment lives there.
//!
//! The `GlobalAlloc` interface never needs it — a `Layout` says which backend owns a block. It
//! is for frees that come without a size: C's `free(p)`, `malloc_usable_size(p)`, `realloc(p, n)`
//! (the kernel's `kfree`, `ksize`, `krealloc`). There the map tells a slab block (mask the
//! address, index the header) from a vmap area (look it up in the registry) from a pointer
//! ctxalloc never handed out (reported, not followed).
//!
//! Two levels: a fixed top array of leaf pointers in `Core` (16 KiB on 64-bit targets, covering
//! 48 bits of address space; one entry on 32-bit targets), and leaves of 4 KiB — 32 768 bits,
//! 128 GiB of address space each. The first leaf lives in `Core` too; further ones are mapped
//! from the page source the first time a segment lands in their range, and never returned. A
//! program's segments, and a kernel's region, usually need only the first.
//!
//! Threads: a bit is set by the thread adding its segment, before it takes the page-heap lock
//! to link the segment (so a new leaf is mapped under no lock), cleared by the thread unmapping
//! the segment, and read by any thread without a lock. A leaf pointer is published by a
//! compare-and-swap (AcqRel) after the leaf is zeroed — of two threads mapping a leaf for the
//! same range, the loser unmaps its own — and read with Acquire. The bit is set (Relaxed)
//! before the page-heap lock that links the segment is released, so a thread that got a block
//! of the segment — through any synchronisation with the thread that allocated it — sees the
//! bit. A bit is cleared only after the segment's last block was freed: a reader that then
//! finds it clear was handed a stale pointer, which is reported as foreign.

use super::SEGMENT_SHIFT;
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::ptr;

/// Address bits the map covers: user space on every 64-bit target Linux supports without a
/// hint (47–48 bits), all of it on 32-bit targets.
const ADDR_BITS: usize = if usize::BITS >= 64 { 48 } else { usize::BITS as usize };
/// Bytes of one leaf.
const LEAF_BYTES: usize = 4096;
/// log2 of the segments one leaf covers (a bit each).
const LEAF_SHIFT: usize = 15;
const _: () = assert!(LEAF_BYTES * 8 == 1 << LEAF_SHIFT);
/// Words in one leaf.
const WORDS: usize = LEAF_BYTES / core::mem::size_of::<usize>();
/// Bits in one word.
const WORD_BITS: usize = usize::BITS as usize;
/// Top-level entries.
const TOP: usize = 1 << (ADDR_BITS - SEGMENT_SHIFT).saturating_sub(LEAF_SHIFT);

/// See the module documentation. Leaf pointers in `leaves` point to [`WORDS`] atomic words
/// each (`usize`: 32-bit targets without 64-bit atomics have a map too).
pub(crate) struct SegMap {
    leaves: [AtomicPtr<AtomicUsize>; TOP],
    /// The first leaf needed, inside the map: most programs and every kernel region need only
    /// this one, so the map takes nothing from the page source (in a kernel's region, a page
    /// taken there would break the alignment of a whole segment). Claimed under the page-heap
    /// lock-free by the first insertion; `first_taken` says whether it is. `leaves` names it by the
    /// [`INLINE`] sentinel, not its address, so that a `Core` stays movable.
    first: [AtomicUsize; WORDS],
    first_taken: AtomicBool,
    /// The top index whose leaf is `first` (usize::MAX until one is): `hardened` frees look
    /// there first. Written once, by the thread that published `first`, before it sets a bit.
    first_top: AtomicUsize,
    /// The lowest and highest top-level entries with a leaf (`usize::MAX` and 0 while none
    /// has): audits walk only these. Atomic minimum and maximum.
    lo: AtomicUsize,
    hi: AtomicUsize,
}

/// The entry in `leaves` that stands for the inline `first` leaf: never a mapped address.
const INLINE: *mut AtomicUsize = ptr::dangling_mut();

impl SegMap {
    /// The leaf of top-level entry `top`, or null.
    #[inline]
    fn leaf(&self, top: usize) -> *mut AtomicUsize {
        match self.leaves[top].load(Ordering::Acquire) {
            INLINE => self.first.as_ptr().cast_mut(),
            p => p,
        }
    }

    pub(crate) const fn new() -> Self {
        SegMap {
            leaves: [const { AtomicPtr::new(ptr::null_mut()) }; TOP],
            first: [const { AtomicUsize::new(0) }; WORDS],
            first_taken: AtomicBool::new(false),
            first_top: AtomicUsize::new(usize::MAX),
            lo: AtomicUsize::new(usize::MAX),
            hi: AtomicUsize::new(0),
        }
    }

    /// Where the bit of the segment at `addr` lives: (top index, word index, bit), or `None`
    /// beyond the covered address space.
    #[inline]
    fn index(addr: usize) -> Option<(usize, usize, usize)> {
        let seg = addr >> SEGMENT_SHIFT;
        let top = seg >> LEAF_SHIFT;
        if top >= TOP {
            return None;
        }
        let within = seg & ((1 << LEAF_SHIFT) - 1);
        debug_assert!(within / WORD_BITS < WORDS);
        Some((top, within / WORD_BITS, 1 << (within % WORD_BITS)))
    }

    /// Whether `addr` lies in a live slab segment. Any thread, no lock.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        let Some((top, word, bit)) = Self::index(addr) else {
            return false;
        };
        let leaf = self.leaf(top);
        if leaf.is_null() {
            return false;
        }
        // SAFETY: a published leaf holds WORDS words (`word` < WORDS) and is never unmapped.
        unsafe { (*leaf.add(word)).load(Ordering::Relaxed) & bit != 0 }
    }
}

impl SegMap {
    /// Whether `addr` lies in a live segment under the inline leaf — for the `hardened` free
    /// fast path: most programs' segments all lie there (128 GiB of address space), found with
    /// one compare and one load. `false` is not final: the caller asks [`contains`](Self::contains)
    /// out of line.
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub(crate) fn contains_fast(&self, addr: usize) -> bool {
        let seg = addr >> SEGMENT_SHIFT;
        if seg >> LEAF_SHIFT != self.first_top.load(Ordering::Acquire) {
            return false;
        }
        let within = seg & ((1 << LEAF_SHIFT) - 1);
        self.first[within / WORD_BITS].load(Ordering::Relaxed) & (1 << (within % WORD_BITS)) != 0
    }

    /// Calls `f` with the base address of every segment marked live. For audits: the caller
    /// keeps segments from coming and going meanwhile.
    #[cfg(any(test, feature = "mock"))]
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize)) {
        let (lo, hi) = (self.lo.load(Ordering::Relaxed), self.hi.load(Ordering::Relaxed));
        for top in lo..=hi.min(TOP - 1) {
            let leaf = self.leaf(top);
            if leaf.is_null() {
                continue;
            }
            for w in 0..WORDS {
                // SAFETY: a published leaf of WORDS words.
                let mut bits = unsafe { (*leaf.add(w)).load(Ordering::Relaxed) };
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    f(((top << LEAF_SHIFT) + w * WORD_BITS + b) << SEGMENT_SHIFT);
                }
            }
        }
    }
}

impl<P: Platform> Core<P> {
    /// Marks the segment at `base` live; `false` if it lies beyond the map or no leaf could be
    /// had (the caller then gives the segment back). The caller holds no allocator lock (a new
    /// leaf comes from the page source) and has not linked the segment yet.
    pub(crate) fn segmap_insert(&self, base: usize) -> bool {
        let Some((top, word, bit)) = SegMap::index(base) else {
            return false;
        };
        let map = &self.segmap;
        let mut leaf = map.leaf(top);
        if leaf.is_null() && !map.first_taken.swap(true, Ordering::AcqRel) {
            // Zero already. Another thread may have published a mapped leaf for this range
            // meanwhile: then the inline leaf stays unused.
            if map.leaves[top]
                .compare_exchange(ptr::null_mut(), INLINE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                map.first_top.store(top, Ordering::Release);
            }
            leaf = map.leaf(top);
        }
        if leaf.is_null() {
            let len = LEAF_BYTES.next_multiple_of(P::PAGE_SIZE);
            // SAFETY: a page-multiple length at page alignment.
            let Some(p) = (unsafe { self.os_map(len, P::PAGE_SIZE) }) else {
                return false;
            };
            if !P::MAP_ZEROED {
                // SAFETY: fresh memory of `len` bytes.
                unsafe { p.as_ptr().write_bytes(0, len) };
            }
            let fresh = p.as_ptr().cast();
            leaf = match map.leaves[top].compare_exchange(
                ptr::null_mut(),
                fresh,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => fresh,
                Err(_) => {
                    // Another thread published one first: ours was never seen.
                    // SAFETY: the mapping made above, unused.
                    unsafe { self.os_unmap(p, len) };
                    map.leaf(top)
                }
            };
        }
        map.lo.fetch_min(top, Ordering::Relaxed);
        map.hi.fetch_max(top, Ordering::Relaxed);
        // SAFETY: a published leaf, never unmapped.
        unsafe { (*leaf.add(word)).fetch_or(bit, Ordering::Relaxed) };
        true
    }

    /// Marks the segment at `base` dead, before it is unmapped. Any thread (the bit's word is
    /// updated atomically; its leaf exists since the segment was inserted).
    pub(crate) fn segmap_remove(&self, base: usize) {
        let Some((top, word, bit)) = SegMap::index(base) else {
            return;
        };
        let leaf = self.segmap.leaf(top);
        if !leaf.is_null() {
            // SAFETY: a published leaf, never unmapped.
            unsafe { (*leaf.add(word)).fetch_and(!bit, Ordering::Relaxed) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_cover_the_address_space_and_no_more() {
        assert_eq!(SegMap::index(0), Some((0, 0, 1)));
        let seg = 1usize << SEGMENT_SHIFT;
        assert_eq!(SegMap::index(seg * (WORD_BITS + 1) + 5), Some((0, 1, 2)));
        let last = if ADDR_BITS < WORD_BITS { (1usize << ADDR_BITS) - 1 } else { usize::MAX };
        let (top, word, bit) = SegMap::index(last).unwrap();
        let segs = 1usize << (ADDR_BITS - SEGMENT_SHIFT);
        assert_eq!(
            (top, word, bit),
            (TOP - 1, ((segs - 1) % (1 << LEAF_SHIFT)) / WORD_BITS, 1 << (WORD_BITS - 1))
        );
        assert!(word < WORDS);
        if ADDR_BITS < WORD_BITS {
            assert_eq!(SegMap::index(1 << ADDR_BITS), None);
        }
    }
}
