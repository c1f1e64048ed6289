//! Exact fit: blocks of any size, in 16-byte granules, carved from spans with boundary tags and
//! kept in segregated free lists — what a slab cannot do (a size class rounds up by as much as
//! 12.5 %, and a page of one class holds free slots no other size can use), for an embedder who
//! wants a fixed region packed as tightly as a list allocator packs it
//! ([`Core::set_exact_fit`](crate::Core::set_exact_fit)).
//!
//! The algorithm knows no lock, no page and no platform: the caller hands it spans and takes back
//! the spans that empty; `slab::fit` puts it behind a lock and over slab spans.
//!
//! Layout (dlmalloc's boundary tags). Every block starts with an 8-byte header word: its size —
//! a multiple of 16 that counts the header — with three flags in the low bits: [`FREE`],
//! [`PREV_FREE`] (the block before is free) and [`FIRST`] (the span's first block). Blocks start
//! 8 bytes past a multiple of 16, so the caller's bytes, behind the header, are 16-byte aligned.
//! A free block keeps its list links where the caller's bytes were and its size again in its
//! last word (the footer), which is how a block finds a free neighbour before it; a block in use
//! has no footer, so its overhead is the header alone. A span is `[8 bytes unused][blocks…]
//! [sentinel]`: the sentinel is a header of size 0, in use, that stops a merge.
//!
//! Invariants, for every block `b` of a span (checked by `validate_span` in tests):
//! `next(b) = b + size(b)`; `size(b) ≥ MIN_BLOCK`, `size(b) ≡ 0 (mod 16)`, `b ≡ 8 (mod 16)`;
//! `PREV_FREE(next(b)) ⇔ FREE(b)`; `FREE(b) ⇒ footer(b) = size(b)`; no two neighbours are both
//! free; `FREE(b)` ⇔ `b` is on the list of bin `bin_of(size(b))`; `FIRST(b)` ⇔ `b` starts the
//! span; `used = Σ size(b)` over the blocks in use (a block on a quick list or in the depot is in
//! use for the heap).
//!
//! Quick lists sit in front of the heap, one set per slab heap (per CPU in a kernel): a small
//! block freed waits there, still in use as far as the heap knows, for the next request of its
//! size on the same heap — no lock, no merge, no search. [`quick`] has their sizes and the
//! [depot](quick::Depot) where full halves of them wait for any heap.
//!
//! Search. Bins are 16 B apart below 512 B, then eight per doubling (as the size classes are);
//! a bitmap finds the first non-empty bin at or above a size. A request looks at a few blocks
//! of the first such bin for the smallest that holds it (at its alignment), bin after bin — the
//! good fit of TLSF, made exact within a bin — and splits off the rest.

use core::ptr;

pub(crate) mod quick;

use quick::Depot;
pub(crate) use quick::{MAGAZINE, QUICK_CLASSES, QUICK_DEPTH};

/// Granule of every block size and of the caller's addresses.
pub(crate) const GRANULE: usize = 16;
/// Bytes in front of the caller's bytes.
pub(crate) const HEADER: usize = 8;
/// The smallest block: a header, two list links and a footer (when free).
const MIN_BLOCK: usize = 32;
/// Header flag: the block is free.
const FREE: usize = 1;
/// Header flag: the block before is free (its footer, the word before this header, holds its
/// size).
const PREV_FREE: usize = 2;
/// Header flag: the block starts its span.
const FIRST: usize = 4;
/// The flag bits of a header.
const FLAGS: usize = GRANULE - 1;
/// Number of bins: enough for blocks of up to 2^20 bytes ([`bin_of`]); larger blocks share the
/// last bin.
const BINS: usize = 128;
/// Bins below this one hold blocks of one size each (16 bytes apart).
const EXACT_BINS: usize = 512 / GRANULE;
/// Blocks looked at in a bin for the smallest that fits.
const SCAN: usize = 8;

const _: () = assert!(HEADER + 2 * core::mem::size_of::<usize>() + HEADER <= MIN_BLOCK);

/// A free block: its header word, then the links of its bin's list (a block in use has the
/// caller's bytes there).
#[repr(C)]
struct FreeBlock {
    /// Size and flags.
    head: usize,
    next: *mut FreeBlock,
    prev: *mut FreeBlock,
}

/// The free lists of every span given to it.
///
/// Not thread-safe: the caller serialises every call (`Core` keeps it under a lock).
pub(crate) struct FitHeap {
    /// Heads of the bins' lists (doubly linked through [`FreeBlock`]).
    bins: [*mut FreeBlock; BINS],
    /// Bit `b` set ⇔ bin `b` is non-empty.
    map: [u64; BINS / 64],
    /// Bytes of the blocks in use, headers included.
    used: usize,
    /// Bytes of the spans held.
    spans: usize,
    /// Magazines of quick-list blocks parked for any heap (blocks in use as far as the lists
    /// and `used` go).
    depot: Depot,
}

// SAFETY: the heap holds only pointers into the spans it was given; it moves between threads
// under its owner's lock.
unsafe impl Send for FitHeap {}

/// What a free found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// The block is back on a free list.
    Kept,
    /// The span starting at this address is now one free block: it is no longer on any list,
    /// and the caller gives it back.
    SpanEmpty(*mut u8),
}

/// Why a pointer given to [`FitHeap::free`] was refused (nothing was changed).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BadFree {
    /// The block is free already.
    Twice,
    /// No block starts there (its header disagrees with its neighbours').
    NotABlock,
}

/// Bytes from block `b` to where a block whose caller's bytes are `align`ed can start: 0, or
/// enough for a free block in front ([`MIN_BLOCK`]).
#[inline]
fn front_gap(b: *const FreeBlock, align: usize) -> usize {
    if align <= GRANULE {
        return 0;
    }
    let user = b.addr() + HEADER;
    let gap = user.next_multiple_of(align) - user;
    if gap != 0 && gap < MIN_BLOCK {
        gap + align
    } else {
        gap
    }
}

/// The bin of a block of `size` bytes (a multiple of 16, ≥ [`MIN_BLOCK`]).
#[inline]
const fn bin_of(size: usize) -> usize {
    if size < 512 {
        return size / GRANULE;
    }
    let k = (usize::BITS - 1 - size.leading_zeros()) as usize; // ≥ 9
    let b = 32 + (k - 9) * 8 + ((size >> (k - 3)) & 7);
    if b < BINS {
        b
    } else {
        BINS - 1
    }
}

/// The header word at `b`.
///
/// # Safety
/// `b` is a header in a live span.
#[inline]
unsafe fn head(b: *const u8) -> usize {
    // SAFETY: per the contract; headers are 8-byte aligned.
    unsafe { b.cast::<usize>().read() }
}

/// Writes the header word at `b`.
///
/// # Safety
/// As [`head`].
#[inline]
unsafe fn set_head(b: *mut u8, word: usize) {
    // SAFETY: per the contract.
    unsafe { b.cast::<usize>().write(word) }
}

/// Marks the free block `b` of `size` bytes with flags `flags` (FREE added) and writes its
/// footer; the header after it gets `PREV_FREE`.
///
/// # Safety
/// `b .. b + size` is a block of a live span, followed by a header.
#[inline]
unsafe fn mark_free(b: *mut u8, size: usize, flags: usize) {
    // SAFETY: per the contract; the footer is the block's last word.
    unsafe {
        set_head(b, size | flags | FREE);
        set_head(b.add(size - HEADER), size);
        let next = b.add(size);
        set_head(next, head(next) | PREV_FREE);
    }
}

impl FitHeap {
    /// No span, no block.
    pub(crate) const fn new() -> Self {
        FitHeap { bins: [ptr::null_mut(); BINS], map: [0; BINS / 64], used: 0, spans: 0, depot: Depot::new() }
    }

    /// Bytes of the blocks in use, headers included.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Bytes of the spans held.
    pub(crate) fn span_bytes(&self) -> usize {
        self.spans
    }

    /// The block size a request of `size` bytes takes (header included).
    #[inline]
    pub(crate) const fn block_for(size: usize) -> usize {
        let s = (size + HEADER).next_multiple_of(GRANULE);
        if s < MIN_BLOCK {
            MIN_BLOCK
        } else {
            s
        }
    }

    /// Gives the heap the span `base .. base + len` as one free block.
    ///
    /// # Safety
    /// `base` is 16-byte aligned, `len` a multiple of 16 of at least `2 * MIN_BLOCK`, and the
    /// span is writable memory nobody else uses until [`free`](Self::free) hands it back.
    pub(crate) unsafe fn add_span(&mut self, base: *mut u8, len: usize) {
        debug_assert!(
            base.addr().is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE) && len >= 2 * MIN_BLOCK
        );
        let size = len - 2 * HEADER;
        // SAFETY: the block and the sentinel lie in the span, which is ours.
        unsafe {
            let first = base.add(HEADER);
            set_head(first.add(size), 0);
            mark_free(first, size, FIRST);
            self.insert(first.cast(), size);
        }
        self.spans += len;
    }

    /// If the span at `base` of `len` bytes is one free block, takes it off its list and
    /// forgets the span: the caller gives it back.
    ///
    /// # Safety
    /// `base .. base + len` is a live span given to this heap.
    pub(crate) unsafe fn take_if_empty(&mut self, base: *mut u8, len: usize) -> bool {
        // SAFETY: the span's first header is behind its unused first word.
        unsafe {
            let b = base.add(HEADER);
            if head(b) != (len - 2 * HEADER) | FIRST | FREE {
                return false;
            }
            self.remove(b.cast(), len - 2 * HEADER);
        }
        self.spans -= len;
        true
    }

    /// Some span that is one free block, off the lists and forgotten (its base, for the caller
    /// to give back); `None` if every span holds a block in use.
    ///
    /// # Safety
    /// The spans given are live.
    pub(crate) unsafe fn take_empty_span(&mut self) -> Option<*mut u8> {
        for bin in 0..BINS {
            let mut x = self.bins[bin];
            // SAFETY: list members are free blocks in live spans.
            unsafe {
                while !x.is_null() {
                    let h = (*x).head;
                    let size = h & !FLAGS;
                    if h & FIRST != 0 && head(x.cast::<u8>().add(size)) & !FLAGS == 0 {
                        self.remove(x, size);
                        self.spans -= size + 2 * HEADER;
                        return Some(x.cast::<u8>().sub(HEADER));
                    }
                    x = (*x).next;
                }
            }
        }
        None
    }

    /// A block for `size` bytes aligned to `align` (a power of two): the caller's bytes, or null
    /// if no free block of the spans held is large enough.
    ///
    /// # Safety
    /// The spans given are live.
    pub(crate) unsafe fn alloc(&mut self, size: usize, align: usize) -> *mut u8 {
        let need = Self::block_for(size);
        // SAFETY: the spans are live; every block reached lies in one of them.
        unsafe {
            let x = self.take(need, align);
            if x.is_null() {
                return ptr::null_mut();
            }
            let mut b = x.cast::<u8>();
            let mut size_b = (*x).head & !FLAGS;
            // A free block's neighbour before is in use: only FIRST can be set besides FREE.
            let mut flags = (*x).head & FIRST;
            let gap = front_gap(x, align);
            if gap != 0 {
                // The front becomes a free block of its own (FIRST stays with it).
                mark_free(b, gap, flags);
                self.insert(x, gap);
                b = b.add(gap);
                size_b -= gap;
                flags = PREV_FREE;
            }
            let next = b.add(size_b);
            if size_b - need >= MIN_BLOCK {
                // The rest, a free block; the header after it keeps PREV_FREE.
                let rest = b.add(need);
                mark_free(rest, size_b - need, 0);
                self.insert(rest.cast(), size_b - need);
                size_b = need;
            } else {
                set_head(next, head(next) & !PREV_FREE);
            }
            set_head(b, size_b | flags);
            self.used += size_b;
            b.add(HEADER)
        }
    }

    /// Bytes the caller may use at `p`, if a block in use starts there as far as its header
    /// tells; `None` for a free block or a header that does not fit the span `lo .. hi` (a
    /// pointer into a block, or none ctxalloc handed out).
    ///
    /// # Safety
    /// `lo .. hi` is a live span given to this heap. Without the heap's lock the answer is
    /// exact only for a block the caller owns (only its allocation and free write its header).
    pub(crate) unsafe fn usable(p: *const u8, lo: usize, hi: usize) -> Option<usize> {
        // SAFETY: forwarded.
        unsafe { Self::own_size(p, lo, hi) }.ok().map(|size| size - HEADER)
    }

    /// The size of the block in use at `p` (header included) as far as its own header tells
    /// (no neighbour is read): `Twice` for a free block, `NotABlock` for a header that does not
    /// fit the span `lo .. hi`.
    ///
    /// # Safety
    /// As [`usable`](Self::usable).
    #[inline]
    pub(crate) unsafe fn own_size(p: *const u8, lo: usize, hi: usize) -> Result<usize, BadFree> {
        if !p.addr().is_multiple_of(GRANULE) || p.addr() < lo + 2 * HEADER || p.addr() >= hi {
            return Err(BadFree::NotABlock);
        }
        // SAFETY: the header lies in the span (checked above).
        let h = unsafe { head(p.sub(HEADER)) };
        let size = h & !FLAGS;
        if h & FREE != 0 {
            return Err(BadFree::Twice);
        }
        if size < MIN_BLOCK || p.addr() - HEADER + size + HEADER > hi {
            return Err(BadFree::NotABlock);
        }
        Ok(size)
    }

    /// Frees `p`, merging it with free neighbours. `lo .. hi` are the bounds of the span `p`
    /// claims to be in: a pointer no block can start at, whose header disagrees with its
    /// neighbours', or that is free already, is refused and nothing changes. A span found
    /// empty is forgotten ([`Freed::SpanEmpty`]).
    ///
    /// # Safety
    /// `lo .. hi` is a live span given to this heap and `p` lies in it.
    pub(crate) unsafe fn free(&mut self, p: *mut u8, lo: usize, hi: usize) -> Result<Freed, BadFree> {
        if !p.addr().is_multiple_of(GRANULE) || p.addr() < lo + 2 * HEADER {
            return Err(BadFree::NotABlock);
        }
        // SAFETY: every header is read only once the checks before keep it inside the span.
        unsafe {
            let mut b = p.sub(HEADER);
            let h = head(b);
            if h & FREE != 0 {
                return Err(BadFree::Twice);
            }
            let mut size = h & !FLAGS;
            if size < MIN_BLOCK || b.addr() + size + HEADER > hi {
                return Err(BadFree::NotABlock);
            }
            let next = b.add(size);
            let next_head = head(next);
            if next_head & PREV_FREE != 0 {
                return Err(BadFree::NotABlock);
            }
            let mut flags = h & FIRST;
            let mut prev: *mut u8 = ptr::null_mut();
            if h & PREV_FREE != 0 {
                let ps = head(b.sub(HEADER));
                if ps < MIN_BLOCK || !ps.is_multiple_of(GRANULE) || b.addr() - (lo + HEADER) < ps {
                    return Err(BadFree::NotABlock);
                }
                prev = b.sub(ps);
                if head(prev) & (FREE | !FLAGS) != FREE | ps {
                    return Err(BadFree::NotABlock);
                }
            }
            self.used -= size;
            if next_head & FREE != 0 {
                let n = next_head & !FLAGS;
                self.remove(next.cast(), n);
                size += n;
            }
            if !prev.is_null() {
                let ps = head(prev) & !FLAGS;
                self.remove(prev.cast(), ps);
                flags = head(prev) & FIRST;
                b = prev;
                size += ps;
            }
            mark_free(b, size, flags);
            if flags & FIRST != 0 && head(b.add(size)) & !FLAGS == 0 {
                self.spans -= hi - lo;
                return Ok(Freed::SpanEmpty(b.sub(HEADER)));
            }
            self.insert(b.cast(), size);
            Ok(Freed::Kept)
        }
    }

    /// Checks the invariants of the span `base .. base + len` and returns the bytes in use in
    /// it (tests).
    ///
    /// # Safety
    /// The span was given to this heap and is live.
    #[cfg(test)]
    pub(crate) unsafe fn validate_span(&self, base: *mut u8, len: usize) -> usize {
        let mut used = 0;
        let mut prev_free = false;
        let mut b = base.wrapping_add(HEADER);
        let mut first = true;
        // SAFETY: walked by sizes, which the invariants keep inside the span.
        unsafe {
            loop {
                let h = head(b);
                let size = h & !FLAGS;
                assert_eq!(h & PREV_FREE != 0, prev_free, "PREV_FREE at {b:p}");
                if size == 0 {
                    assert_eq!(b.addr(), base.addr() + len - HEADER, "sentinel at the span's end");
                    return used;
                }
                assert_eq!(h & FIRST != 0, first, "FIRST at {b:p}");
                assert!(size >= MIN_BLOCK && size.is_multiple_of(GRANULE), "size {size} at {b:p}");
                let free = h & FREE != 0;
                assert!(!(free && prev_free), "two free neighbours at {b:p}");
                if free {
                    assert_eq!(head(b.add(size - HEADER)), size, "footer of {b:p}");
                    assert!(self.on_list(b.cast(), size), "free block {b:p} on no list");
                } else {
                    used += size;
                }
                prev_free = free;
                first = false;
                b = b.add(size);
            }
        }
    }

    /// Whether `b` is on its bin's list (tests).
    #[cfg(test)]
    unsafe fn on_list(&self, b: *mut FreeBlock, size: usize) -> bool {
        let mut x = self.bins[bin_of(size)];
        while !x.is_null() {
            if x == b {
                return true;
            }
            // SAFETY: list members are free blocks in live spans.
            x = unsafe { (*x).next };
        }
        false
    }

    /// The smallest of the first few free blocks that hold `need` bytes at an `align`ed
    /// address, in the first bin that has one at or above `need`'s bin (the own bin may hold
    /// smaller blocks, and a block of a higher bin may not fit once aligned); off its list.
    /// Null if none.
    ///
    /// # Safety
    /// The spans are live.
    unsafe fn take(&mut self, need: usize, align: usize) -> *mut FreeBlock {
        let mut bin = self.first_bin_from(bin_of(need));
        // SAFETY: list members are free blocks in live spans.
        unsafe {
            while let Some(b) = bin {
                if b < EXACT_BINS && align <= GRANULE {
                    // One size per bin, at least `need`: the first block is as good as any.
                    let x = self.bins[b];
                    self.remove(x, (*x).head & !FLAGS);
                    return x;
                }
                let mut best: *mut FreeBlock = ptr::null_mut();
                let mut best_size = usize::MAX;
                let mut x = self.bins[b];
                let mut n = 0;
                while !x.is_null() && n < SCAN {
                    let s = (*x).head & !FLAGS;
                    if s < best_size && front_gap(x, align) + need <= s {
                        best = x;
                        best_size = s;
                        if s == need {
                            break;
                        }
                    }
                    x = (*x).next;
                    n += 1;
                }
                if !best.is_null() {
                    self.remove(best, best_size);
                    return best;
                }
                bin = self.first_bin_from(b + 1);
            }
        }
        ptr::null_mut()
    }

    /// The first non-empty bin at or after `from`.
    fn first_bin_from(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= self.map.len() {
            return None;
        }
        let mut bits = self.map[w] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w == self.map.len() {
                return None;
            }
            bits = self.map[w];
        }
    }

    /// Puts the free block `b` of `size` bytes on its bin's list.
    ///
    /// # Safety
    /// `b` is a free block of a live span, on no list.
    unsafe fn insert(&mut self, b: *mut FreeBlock, size: usize) {
        let bin = bin_of(size);
        let head = self.bins[bin];
        // SAFETY: `b` and the list's head are free blocks in live spans.
        unsafe {
            (*b).next = head;
            (*b).prev = ptr::null_mut();
            if !head.is_null() {
                (*head).prev = b;
            }
        }
        self.bins[bin] = b;
        self.map[bin / 64] |= 1 << (bin % 64);
    }

    /// Takes the free block `b` of `size` bytes off its bin's list.
    ///
    /// # Safety
    /// `b` is on the list of `bin_of(size)`.
    unsafe fn remove(&mut self, b: *mut FreeBlock, size: usize) {
        let bin = bin_of(size);
        // SAFETY: list members are free blocks in live spans.
        unsafe {
            let (next, prev) = ((*b).next, (*b).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.bins[bin] = next;
                if next.is_null() {
                    self.map[bin / 64] &= !(1 << (bin % 64));
                }
            } else {
                (*prev).next = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// 16 bytes, 16-byte aligned (`u128` is 8-byte aligned on s390x).
    #[derive(Clone, Copy)]
    #[repr(C, align(16))]
    pub(in crate::fit) struct Granule([u8; 16]);

    /// A 16-byte aligned buffer for spans.
    pub(in crate::fit) fn span(len: usize) -> Vec<Granule> {
        std::vec![Granule([0; 16]); len / 16]
    }

    #[test]
    fn bins_are_ordered_and_cover_every_size() {
        let mut last = bin_of(MIN_BLOCK);
        for size in (MIN_BLOCK..=1 << 20).step_by(GRANULE) {
            let b = bin_of(size);
            assert!(b >= last && b < BINS, "size {size}");
            last = b;
        }
        assert!(bin_of((1 << 20) - GRANULE) < BINS - 1, "a span of up to 1 MiB has bins of its own");
    }

    #[test]
    fn a_span_splits_and_merges_back_whole() {
        let mut mem = span(4096);
        let base = mem.as_mut_ptr().cast::<u8>();
        let mut h = FitHeap::new();
        // SAFETY: the buffer outlives the heap's use of it.
        unsafe {
            h.add_span(base, 4096);
            let a = h.alloc(100, 8);
            let b = h.alloc(1000, 8);
            let c = h.alloc(17, 8);
            assert!(!a.is_null() && !b.is_null() && !c.is_null());
            assert_eq!(FitHeap::usable(a, base.addr(), base.addr() + 4096), Some(104));
            assert_eq!(FitHeap::usable(a.add(16), base.addr(), base.addr() + 4096), None, "inside a block");
            assert_eq!(h.validate_span(base, 4096), h.used());
            assert_eq!(h.used(), 112 + 1008 + 32);
            assert_eq!(h.free(b, base.addr(), base.addr() + 4096), Ok(Freed::Kept));
            assert_eq!(h.free(b, base.addr(), base.addr() + 4096), Err(BadFree::Twice));
            assert_eq!(h.free(a.add(16), base.addr(), base.addr() + 4096), Err(BadFree::NotABlock));
            assert_eq!(h.free(a, base.addr(), base.addr() + 4096), Ok(Freed::Kept));
            h.validate_span(base, 4096);
            assert_eq!(h.free(c, base.addr(), base.addr() + 4096), Ok(Freed::SpanEmpty(base)));
            assert_eq!(h.used(), 0);
        }
    }

    #[test]
    fn a_freed_hole_is_reused_exactly() {
        let mut mem = span(8192);
        let base = mem.as_mut_ptr().cast::<u8>();
        let mut h = FitHeap::new();
        // SAFETY: as above.
        unsafe {
            h.add_span(base, 8192);
            let a = h.alloc(1000, 8);
            let _b = h.alloc(64, 8);
            assert_eq!(h.free(a, base.addr(), base.addr() + 8192), Ok(Freed::Kept));
            // The hole before `b` fits exactly: it is taken, not the span's tail.
            assert_eq!(h.alloc(1000, 8), a);
        }
    }

    #[test]
    fn aligned_blocks_are_aligned_and_leave_their_front_free() {
        let len = 1 << 16;
        let mut mem = span(len);
        let base = mem.as_mut_ptr().cast::<u8>();
        let mut h = FitHeap::new();
        let mut live = Vec::new();
        // SAFETY: as above.
        unsafe {
            h.add_span(base, len);
            for (i, align) in [32usize, 64, 128, 256, 4096, 16, 64].into_iter().enumerate() {
                let p = h.alloc(100 + i * 40, align);
                assert!(!p.is_null());
                assert_eq!(p.addr() % align, 0, "align {align}");
                assert!(FitHeap::usable(p, base.addr(), base.addr() + len).unwrap() >= 100 + i * 40);
                live.push(p);
                h.validate_span(base, len);
            }
            for p in live {
                h.free(p, base.addr(), base.addr() + len).unwrap();
            }
            assert_eq!(h.used(), 0);
        }
    }

    #[test]
    fn random_blocks_never_overlap_and_the_spans_come_back_empty() {
        const LEN: usize = 1 << 16;
        let rounds = if cfg!(miri) { 300 } else { 20_000 };
        let mut mems = [span(LEN), span(LEN)];
        let bases: Vec<*mut u8> = mems.iter_mut().map(|m| m.as_mut_ptr().cast::<u8>()).collect();
        let mut h = FitHeap::new();
        let mut live: Vec<(*mut u8, usize, u8)> = Vec::new();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let span_of = |p: *mut u8| {
            bases.iter().copied().find(|b| (b.addr()..b.addr() + LEN).contains(&p.addr())).unwrap()
        };
        // SAFETY: the buffers outlive the heap's use of them.
        unsafe {
            for &b in &bases {
                h.add_span(b, LEN);
            }
            let mut empty = 0;
            for i in 0..rounds {
                if !live.is_empty() && rnd(3) == 0 {
                    let (p, size, tag) = live.swap_remove(rnd(live.len() as u64) as usize);
                    assert!(
                        std::slice::from_raw_parts(p, size).iter().all(|&x| x == tag),
                        "block overwritten"
                    );
                    let s = span_of(p);
                    if let Freed::SpanEmpty(at) = h.free(p, s.addr(), s.addr() + LEN).unwrap() {
                        assert_eq!(at, s);
                        h.add_span(s, LEN);
                        empty += 1;
                    }
                    continue;
                }
                let size = 1 + rnd(3000) as usize;
                let align = 8usize << rnd(4);
                let p = h.alloc(size, align);
                if p.is_null() {
                    continue;
                }
                assert_eq!(p.addr() % align, 0);
                let tag = i as u8;
                p.write_bytes(tag, size);
                live.push((p, size, tag));
            }
            let used: usize = bases.iter().map(|&b| h.validate_span(b, LEN)).sum();
            assert_eq!(used, h.used());
            for (p, _, _) in live.drain(..) {
                let s = span_of(p);
                if let Freed::SpanEmpty(_) = h.free(p, s.addr(), s.addr() + LEN).unwrap() {
                    empty += 1;
                }
            }
            assert!(empty >= 2, "both spans emptied at the end");
            assert_eq!(h.used(), 0);
        }
    }
}
