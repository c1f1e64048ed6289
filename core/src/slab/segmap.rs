//! The segment map: which 4 MiB of address space hold a live slab segment.
//!
//! The `GlobalAlloc` interface never needs it — a `Layout` says which backend owns a block. It
//! is for frees that come without a size: C's `free(p)`, `malloc_usable_size(p)`, `realloc(p, n)`
//! (the kernel's `kfree`, `ksize`, `krealloc`). There the map tells a slab block (mask the
//! address, index the header) from a vmap area (look it up in the registry) from a pointer
//! ctxalloc never handed out (reported, not followed).
//!
//! Two levels: a fixed top array of leaf pointers in `Core` (16 KiB on 64-bit targets, covering
//! 48 bits of address space; one entry on 32-bit targets), and windows of 32 768 segments —
//! 128 GiB of address space each. The first window needed lives in `Core` as a byte per
//! segment (32 KiB; on 32-bit targets, 1 KiB for the whole address space), so that C's `free`
//! finds a block's segment live with one subtraction, one compare and one byte load. Further
//! windows are bitmaps of 4 KiB mapped from the page source the first time a segment lands in
//! them, and never returned. A program's segments, and a kernel's region, usually need only the
//! first.
//!
//! Threads: a segment is marked by the thread adding it, before it takes the page-heap lock to
//! link the segment (so a new leaf is mapped under no lock), unmarked by the thread unmapping
//! the segment, and read by any thread without a lock. A leaf pointer is published by a
//! compare-and-swap (AcqRel) after the leaf is zeroed — of two threads mapping a leaf for the
//! same range, the loser unmaps its own — and read with Acquire; the inline window's base is
//! published (Release) by the thread whose swap claimed it, before it marks a segment. A mark
//! is set (Relaxed) before the page-heap lock that links the segment is released, so a thread
//! that got a block of the segment — through any synchronisation with the thread that
//! allocated it — sees the mark. A mark is cleared only after the segment's last block was
//! freed: a reader that then finds it clear was handed a stale pointer, which is reported as
//! foreign.

use super::SEGMENT_SHIFT;
use crate::sync::{AtomicBool, AtomicUsize, Atomics, Ordering};
use crate::{Core, Platform};
use core::ptr;
use core::sync::atomic::AtomicU8;

/// Address bits the map covers: user space on every 64-bit target Linux supports without a
/// hint (47–48 bits), all of it on 32-bit targets.
const ADDR_BITS: usize = if usize::BITS >= 64 { 48 } else { usize::BITS as usize };
/// Bytes of one mapped leaf.
const LEAF_BYTES: usize = 4096;
/// log2 of the segments one window covers (a bit each in a mapped leaf).
const LEAF_SHIFT: usize = 15;
const _: () = assert!(LEAF_BYTES * 8 == 1 << LEAF_SHIFT);
/// Words in one leaf.
#[cfg(any(test, feature = "mock"))]
const WORDS: usize = LEAF_BYTES / core::mem::size_of::<usize>();
/// Bits in one word.
const WORD_BITS: usize = usize::BITS as usize;
/// Top-level entries.
const TOP: usize = 1 << (ADDR_BITS - SEGMENT_SHIFT).saturating_sub(LEAF_SHIFT);
/// Segments in the inline window: a whole window, or the whole address space if smaller.
const INLINE_LEN: usize =
    1 << if ADDR_BITS - SEGMENT_SHIFT < LEAF_SHIFT { ADDR_BITS - SEGMENT_SHIFT } else { LEAF_SHIFT };
/// `inline_base` before the window is claimed: every segment number minus it is at least
/// `INLINE_LEN` (segment numbers are below 2^(ADDR_BITS − 22)).
const NO_BASE: usize = 1 << (usize::BITS - 1);

/// See the module documentation. Leaf pointers in `leaves` point to [`WORDS`] atomic words
/// each (`usize`: 32-bit targets without 64-bit atomics have a map too).
pub(crate) struct SegMap {
    leaves: Atomics<*mut AtomicUsize, TOP>,
    /// The first window needed, inside the map, a byte per segment (1: live): most programs and
    /// every kernel region need only this one, so the map takes nothing from the page source
    /// (in a kernel's region, a page taken there would break the alignment of a whole
    /// segment). Claimed lock-free by the first insertion; `inline_taken` says whether it is.
    /// `leaves` names it by the [`INLINE`] sentinel, not its address, so that a `Core` stays
    /// movable.
    inline: Atomics<u8, INLINE_LEN>,
    inline_taken: AtomicBool,
    /// The number of the first segment of the inline window (its top index × 2^15), or
    /// [`NO_BASE`]. Written once, by the thread that published the window, before it marks a
    /// segment.
    inline_base: AtomicUsize,
    /// The lowest and highest top-level entries with a leaf (`usize::MAX` and 0 while none
    /// has), and the lowest and highest segments marked in the inline window: audits walk only
    /// these. Atomic minimum and maximum.
    lo: AtomicUsize,
    hi: AtomicUsize,
    inline_lo: AtomicUsize,
    inline_hi: AtomicUsize,
}

/// The entry in `leaves` that stands for the inline window: never a mapped address.
const INLINE: *mut AtomicUsize = ptr::dangling_mut();

/// Where a segment's mark lives.
enum Mark<'a> {
    /// A byte of the inline window.
    Byte(&'a AtomicU8),
    /// A bit of a mapped leaf.
    Bit(&'a AtomicUsize, usize),
}

impl SegMap {
    pub(crate) const fn new() -> Self {
        SegMap {
            leaves: Atomics::null(),
            inline: Atomics::zeroed(),
            inline_taken: AtomicBool::new(false),
            inline_base: AtomicUsize::new(NO_BASE),
            lo: AtomicUsize::new(usize::MAX),
            hi: AtomicUsize::new(0),
            inline_lo: AtomicUsize::new(usize::MAX),
            inline_hi: AtomicUsize::new(0),
        }
    }

    /// The segment number and top index of `addr`, or `None` beyond the covered address space.
    #[inline]
    fn index(addr: usize) -> Option<(usize, usize)> {
        let seg = addr >> SEGMENT_SHIFT;
        let top = seg >> LEAF_SHIFT;
        (top < TOP).then_some((seg, top))
    }

    /// The mark of segment `seg` under top entry `top`, if that entry has a leaf.
    #[inline]
    fn mark(&self, seg: usize, top: usize) -> Option<Mark<'_>> {
        let within = seg & ((1 << LEAF_SHIFT) - 1);
        match self.leaves.at(top).load(Ordering::Acquire) {
            p if p.is_null() => None,
            INLINE => Some(Mark::Byte(self.inline.at(within % INLINE_LEN))),
            // SAFETY: a published leaf holds WORDS words (`within / WORD_BITS` < WORDS) and is
            // never unmapped.
            p => Some(Mark::Bit(unsafe { &*p.add(within / WORD_BITS) }, 1 << (within % WORD_BITS))),
        }
    }

    /// Whether `addr` lies in a live slab segment. Any thread, no lock.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        let Some((seg, top)) = Self::index(addr) else {
            return false;
        };
        match self.mark(seg, top) {
            None => false,
            Some(Mark::Byte(b)) => b.load(Ordering::Relaxed) != 0,
            Some(Mark::Bit(w, bit)) => w.load(Ordering::Relaxed) & bit != 0,
        }
    }

    /// Whether `addr` lies in a live segment of the inline window — for the fast paths of frees
    /// without a size (and of every free under `hardened`): most programs' segments all lie
    /// there (128 GiB of address space), found with a subtraction, a compare and a byte load.
    /// `false` is not final: the caller asks [`contains`](Self::contains) out of line.
    #[inline(always)]
    pub(crate) fn contains_fast(&self, addr: usize) -> bool {
        let i = (addr >> SEGMENT_SHIFT).wrapping_sub(self.inline_base.load(Ordering::Acquire));
        i < INLINE_LEN && self.inline.at(i).load(Ordering::Relaxed) != 0
    }

    /// Calls `f` with the base address of every segment marked live. For audits: the caller
    /// keeps segments from coming and going meanwhile.
    #[cfg(any(test, feature = "mock"))]
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize)) {
        let (lo, hi) = (self.lo.load(Ordering::Relaxed), self.hi.load(Ordering::Relaxed));
        for top in lo..=hi.min(TOP - 1) {
            let base = top << LEAF_SHIFT;
            match self.leaves.at(top).load(Ordering::Acquire) {
                p if p.is_null() => {}
                INLINE => {
                    let (a, b) =
                        (self.inline_lo.load(Ordering::Relaxed), self.inline_hi.load(Ordering::Relaxed));
                    for i in a..=b.min(INLINE_LEN - 1) {
                        if self.inline.at(i).load(Ordering::Relaxed) != 0 {
                            f((base + i) << SEGMENT_SHIFT);
                        }
                    }
                }
                leaf => {
                    for w in 0..WORDS {
                        // SAFETY: a published leaf of WORDS words.
                        let mut bits = unsafe { (*leaf.add(w)).load(Ordering::Relaxed) };
                        while bits != 0 {
                            let b = bits.trailing_zeros() as usize;
                            bits &= bits - 1;
                            f((base + w * WORD_BITS + b) << SEGMENT_SHIFT);
                        }
                    }
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
        let Some((seg, top)) = SegMap::index(base) else {
            return false;
        };
        let map = &self.segmap;
        if map.leaves.at(top).load(Ordering::Acquire).is_null()
            && !map.inline_taken.swap(true, Ordering::AcqRel)
        {
            // Zero already. Another thread may have published a mapped leaf for this range
            // meanwhile: then the inline window stays unused.
            if map
                .leaves
                .at(top)
                .compare_exchange(ptr::null_mut(), INLINE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                map.inline_base.store(top << LEAF_SHIFT, Ordering::Release);
            }
        }
        if map.leaves.at(top).load(Ordering::Acquire).is_null() {
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
            if map
                .leaves
                .at(top)
                .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread published one first: ours was never seen.
                // SAFETY: the mapping made above, unused.
                unsafe { self.os_unmap(p, len) };
            }
        }
        map.lo.fetch_min(top, Ordering::Relaxed);
        map.hi.fetch_max(top, Ordering::Relaxed);
        match map.mark(seg, top) {
            Some(Mark::Byte(b)) => {
                let within = seg & ((1 << LEAF_SHIFT) - 1);
                map.inline_lo.fetch_min(within, Ordering::Relaxed);
                map.inline_hi.fetch_max(within, Ordering::Relaxed);
                b.store(1, Ordering::Relaxed);
            }
            Some(Mark::Bit(w, bit)) => {
                w.fetch_or(bit, Ordering::Relaxed);
            }
            None => unreachable!("a leaf was published above"),
        }
        true
    }

    /// Marks the segment at `base` dead, before it is unmapped. Any thread (the mark is updated
    /// atomically; its leaf exists since the segment was inserted).
    pub(crate) fn segmap_remove(&self, base: usize) {
        let Some((seg, top)) = SegMap::index(base) else {
            return;
        };
        match self.segmap.mark(seg, top) {
            Some(Mark::Byte(b)) => b.store(0, Ordering::Relaxed),
            Some(Mark::Bit(w, bit)) => {
                w.fetch_and(!bit, Ordering::Relaxed);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_cover_the_address_space_and_no_more() {
        assert_eq!(SegMap::index(0), Some((0, 0)));
        let seg = 1usize << SEGMENT_SHIFT;
        assert_eq!(SegMap::index(seg * (WORD_BITS + 1) + 5), Some((WORD_BITS + 1, 0)));
        let last = if ADDR_BITS < WORD_BITS { (1usize << ADDR_BITS) - 1 } else { usize::MAX };
        let segs = 1usize << (ADDR_BITS - SEGMENT_SHIFT);
        assert_eq!(SegMap::index(last), Some((segs - 1, TOP - 1)));
        assert!(INLINE_LEN <= segs && INLINE_LEN <= 1 << LEAF_SHIFT);
        if ADDR_BITS < WORD_BITS {
            assert_eq!(SegMap::index(1 << ADDR_BITS), None);
        }
    }

    #[test]
    fn before_the_inline_window_is_claimed_nothing_is_in_it() {
        let m = SegMap::new();
        for addr in [0, 1 << SEGMENT_SHIFT, usize::MAX >> 1, usize::MAX] {
            assert!(!m.contains_fast(addr), "{addr:#x}");
        }
    }
}
