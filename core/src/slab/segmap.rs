//! The segment map: which 4 MiB of address space hold a live slab segment.
//!
//! The `GlobalAlloc` interface never needs it — a `Layout` says which backend owns a block. It
//! is for frees that come without a size: C's `free(p)`, `malloc_usable_size(p)`, `realloc(p, n)`
//! (the kernel's `kfree`, `ksize`, `krealloc`). There the map tells a slab block (mask the
//! address, index the header) from a vmap area (look it up in the registry) from a pointer
//! ctxalloc never handed out (reported, not followed).
//!
//! Two parts. The *tags*: a table in `Core` of [`INLINE_LEN`] words (64 KiB; on 32-bit targets
//! 4 KiB, a word for every segment there is), where segment `s` is recorded as `s + 1` at slot
//! `s mod INLINE_LEN` — so that C's `free` finds a block's segment live with a shift, a mask and
//! one compare of a loaded word, no range test and no base: an address whose tag differs is not
//! in the table, whatever its bits. A program's segments lie close together and rarely share a
//! slot (two live segments 32 GiB apart, exactly); a segment whose slot is taken is recorded in
//! the *leaves* instead: a fixed top array of leaf pointers in `Core` (16 KiB on 64-bit targets,
//! covering 48 bits of address space), each leaf a bitmap of 4 KiB for 32 768 segments, mapped
//! from the page source the first time a segment needs it, and never returned. A segment stays
//! where it was recorded until it is removed, so each lookup has one answer.
//!
//! Threads: a segment is recorded by the thread adding it, before it takes the page-heap lock
//! to link the segment (so a new leaf is mapped under no lock), removed by the thread unmapping
//! the segment, and read by any thread without a lock. A tag is claimed with a
//! compare-and-swap from 0 (the loser of a race for a slot goes to the leaves) and cleared with
//! one from its own value; a leaf pointer is published by a compare-and-swap (AcqRel) after the
//! leaf is zeroed — of two threads mapping a leaf for the same range, the loser unmaps its own —
//! and read with Acquire. Tags and bits are set (Relaxed) before the page-heap lock that links
//! the segment is released, so a thread that got a block of the segment — through any
//! synchronisation with the thread that allocated it — sees the mark. A mark is cleared only
//! after the segment's last block was freed: a reader that then finds it clear was handed a
//! stale pointer, which is reported as foreign.

use super::SEGMENT_SHIFT;
use crate::sync::{AtomicUsize, Atomics, Ordering};
use crate::{Core, Platform};
use core::ptr;

/// Address bits the leaves cover: user space on every 64-bit target Linux supports without a
/// hint (47–48 bits), all of it on 32-bit targets. (The tags need no bound.)
const ADDR_BITS: usize = if usize::BITS >= 64 { 48 } else { usize::BITS as usize };
/// Bytes of one mapped leaf.
const LEAF_BYTES: usize = 4096;
/// log2 of the segments one leaf covers (a bit each).
const LEAF_SHIFT: usize = 15;
const _: () = assert!(LEAF_BYTES * 8 == 1 << LEAF_SHIFT);
/// Words in one leaf.
#[cfg(any(test, feature = "mock"))]
const WORDS: usize = LEAF_BYTES / core::mem::size_of::<usize>();
/// Bits in one word.
const WORD_BITS: usize = usize::BITS as usize;
/// Top-level entries.
const TOP: usize = 1 << (ADDR_BITS - SEGMENT_SHIFT).saturating_sub(LEAF_SHIFT);
/// Slots of the tag table: 8 192 (32 GiB of address space before two segments share a slot),
/// or every segment of a smaller address space.
pub(crate) const INLINE_LEN: usize =
    1 << if ADDR_BITS - SEGMENT_SHIFT < 13 { ADDR_BITS - SEGMENT_SHIFT } else { 13 };

/// See the module documentation. Leaf pointers in `leaves` point to [`WORDS`] atomic words
/// each (`usize`: 32-bit targets without 64-bit atomics have a map too).
pub(crate) struct SegMap {
    leaves: Atomics<*mut AtomicUsize, TOP>,
    /// The tags: slot `s mod INLINE_LEN` holds `s + 1` while segment `s` is recorded there,
    /// else 0 (or another segment's tag). Inside the map, so that it takes nothing from the
    /// page source for most programs and every kernel region (in a region, a page taken there
    /// would break the alignment of a whole segment).
    inline: Atomics<usize, INLINE_LEN>,
    /// The lowest and highest top-level entries with a leaf, and the lowest and highest tag
    /// slots ever claimed (`usize::MAX` and 0 while none is): audits walk only these (under
    /// miri, a walk of every slot at each audit made the model test time out). Atomic minimum
    /// and maximum.
    lo: AtomicUsize,
    hi: AtomicUsize,
    slot_lo: AtomicUsize,
    slot_hi: AtomicUsize,
}

impl SegMap {
    pub(crate) const fn new() -> Self {
        SegMap {
            leaves: Atomics::null(),
            inline: Atomics::<usize, INLINE_LEN>::zeroed(),
            lo: AtomicUsize::new(usize::MAX),
            hi: AtomicUsize::new(0),
            slot_lo: AtomicUsize::new(usize::MAX),
            slot_hi: AtomicUsize::new(0),
        }
    }

    /// The tag slot of segment `seg` and the tag that records it there.
    #[inline(always)]
    fn slot(seg: usize) -> (usize, usize) {
        (seg % INLINE_LEN, seg + 1)
    }

    /// The segment number and top index of `addr`, or `None` beyond the leaves' address space.
    #[inline]
    fn index(addr: usize) -> Option<(usize, usize)> {
        let seg = addr >> SEGMENT_SHIFT;
        let top = seg >> LEAF_SHIFT;
        (top < TOP).then_some((seg, top))
    }

    /// The word of segment `seg`'s bit in the leaf of top entry `top`, and the bit, if that
    /// entry has a leaf.
    #[inline]
    fn bit(&self, seg: usize, top: usize) -> Option<(&AtomicUsize, usize)> {
        let within = seg & ((1 << LEAF_SHIFT) - 1);
        let p = self.leaves.at(top).load(Ordering::Acquire);
        // SAFETY: a published leaf holds WORDS words (`within / WORD_BITS` < WORDS) and is never
        // unmapped.
        (!p.is_null()).then(|| (unsafe { &*p.add(within / WORD_BITS) }, 1 << (within % WORD_BITS)))
    }

    /// Whether `addr` lies in a live slab segment. Any thread, no lock.
    #[inline]
    pub(crate) fn contains(&self, addr: usize) -> bool {
        if self.contains_fast(addr) {
            return true;
        }
        let Some((seg, top)) = Self::index(addr) else {
            return false;
        };
        self.bit(seg, top).is_some_and(|(w, bit)| w.load(Ordering::Relaxed) & bit != 0)
    }

    /// Whether `addr` lies in a live segment recorded by its tag — for the fast paths of frees
    /// without a size (and of every free under `hardened`): a shift, a mask, a load and a
    /// compare. `false` is not final (the segment may be in a leaf): the caller asks
    /// [`contains`](Self::contains) out of line.
    #[inline(always)]
    pub(crate) fn contains_fast(&self, addr: usize) -> bool {
        let (slot, tag) = Self::slot(addr >> SEGMENT_SHIFT);
        self.inline.at(slot).load(Ordering::Relaxed) == tag
    }

    /// Calls `f` with the base address of every segment marked live. For audits: the caller
    /// keeps segments from coming and going meanwhile.
    #[cfg(any(test, feature = "mock"))]
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize)) {
        let (lo, hi) = (self.slot_lo.load(Ordering::Relaxed), self.slot_hi.load(Ordering::Relaxed));
        for i in lo..=hi.min(INLINE_LEN - 1) {
            let tag = self.inline.at(i).load(Ordering::Relaxed);
            if tag != 0 {
                f((tag - 1) << SEGMENT_SHIFT);
            }
        }
        let (lo, hi) = (self.lo.load(Ordering::Relaxed), self.hi.load(Ordering::Relaxed));
        for top in lo..=hi.min(TOP - 1) {
            let p = self.leaves.at(top).load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            let base = top << LEAF_SHIFT;
            for w in 0..WORDS {
                // SAFETY: a published leaf of WORDS words.
                let mut bits = unsafe { &*p.add(w) }.load(Ordering::Relaxed);
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    f((base + w * WORD_BITS + b) << SEGMENT_SHIFT);
                }
            }
        }
    }
}

impl<P: Platform> Core<P> {
    /// Marks the segment at `base` live; `false` if its slot is taken and it lies beyond the
    /// leaves or no leaf could be had (the caller then gives the segment back). The caller holds
    /// no allocator lock (a new leaf comes from the page source) and has not linked the segment
    /// yet.
    pub(crate) fn segmap_insert(&self, base: usize) -> bool {
        let map = &self.segmap;
        let seg = base >> SEGMENT_SHIFT;
        let (slot, tag) = SegMap::slot(seg);
        if map.inline.at(slot).compare_exchange(0, tag, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            map.slot_lo.fetch_min(slot, Ordering::Relaxed);
            map.slot_hi.fetch_max(slot, Ordering::Relaxed);
            return true;
        }
        // The slot holds another live segment: this one goes to its leaf.
        let Some((seg, top)) = SegMap::index(base) else {
            return false;
        };
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
        let (w, bit) = map.bit(seg, top).expect("a leaf was published above");
        w.fetch_or(bit, Ordering::Relaxed);
        true
    }

    /// Marks the segment at `base` dead, before it is unmapped. Any thread (the mark is updated
    /// atomically; its leaf exists if it was recorded in one).
    pub(crate) fn segmap_remove(&self, base: usize) {
        let map = &self.segmap;
        let (slot, tag) = SegMap::slot(base >> SEGMENT_SHIFT);
        if map.inline.at(slot).compare_exchange(tag, 0, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return;
        }
        if let Some((w, bit)) = SegMap::index(base).and_then(|(seg, top)| map.bit(seg, top)) {
            w.fetch_and(!bit, Ordering::Relaxed);
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
    fn an_empty_map_holds_nothing() {
        let m = SegMap::new();
        for addr in [0, 1 << SEGMENT_SHIFT, usize::MAX >> 1, usize::MAX] {
            assert!(!m.contains_fast(addr) && !m.contains(addr), "{addr:#x}");
        }
    }

    /// Two live segments whose tags share a slot: the second goes to a leaf, both are found
    /// until each is removed, and a slot given back serves the next segment.
    #[test]
    fn segments_that_share_a_tag_slot_are_both_found() {
        use crate::mock::MockPlatform;
        let core = Core::new(MockPlatform::new(16 << 20));
        let map = &core.segmap;
        if INLINE_LEN >= 1 << (ADDR_BITS - SEGMENT_SHIFT) {
            // A tag slot for every segment there is (32-bit targets): no two share one.
            return;
        }
        // A free slot (the mock's own segments may hold some) and segments far below the mock's.
        let i = (1..INLINE_LEN).find(|&i| map.inline.at(i).load(Ordering::Relaxed) == 0).unwrap();
        let a = i << SEGMENT_SHIFT;
        let span = INLINE_LEN << SEGMENT_SHIFT;
        let (b, c) = (a + span, a + 2 * span);
        assert!(core.segmap_insert(a) && core.segmap_insert(b));
        assert!(map.contains_fast(a + 100) && !map.contains_fast(b + 100));
        assert!(map.contains(a) && map.contains(b + 100) && !map.contains(c));
        let mut seen = [0; 2];
        let mut n = 0;
        map.for_each(|s| {
            if s == a || s == b {
                seen[n] = s;
                n += 1;
            }
        });
        assert_eq!((n, seen[0], seen[1]), (2, a, b));
        core.segmap_remove(a);
        assert!(!map.contains(a) && map.contains(b));
        // The slot is free again: the next segment takes it; `b` stays in its leaf.
        assert!(core.segmap_insert(c) && map.contains_fast(c));
        core.segmap_remove(b);
        core.segmap_remove(c);
        assert!(!map.contains(b) && !map.contains(c) && !map.contains(a));
    }
}
