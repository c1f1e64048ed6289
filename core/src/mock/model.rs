//! A reference model for random operation sequences on a [`Core`] over the mock platform: it
//! remembers every live block with its layout and fill, and checks on every step that blocks are
//! aligned, inside the arena, never overlap, keep their contents (also across `realloc`), and
//! that zeroed allocations read as zero. Used by the core's tests and by the fuzz targets.

use super::MockPlatform;
use crate::{Core, Gfp};
use core::alloc::Layout;
use std::collections::BTreeMap;
use std::vec::Vec;

/// One live block.
#[derive(Clone, Copy, Debug)]
struct Live {
    layout: Layout,
    fill: u8,
}

/// The model. See the module documentation.
///
/// ```
/// use ctxalloc_core::{mock::{model::Model, MockPlatform}, Core, Gfp};
/// let core = Core::new(MockPlatform::new(32 << 20));
/// let mut m = Model::new(&core);
/// m.alloc(100, 8, Gfp::KERNEL);
/// m.alloc(5000, 4096, Gfp::ZERO);
/// m.realloc(0, 300);
/// m.free_all();
/// core.trim();
/// ```
pub struct Model<'a> {
    core: &'a Core<MockPlatform>,
    /// Live blocks by address.
    live: BTreeMap<usize, Live>,
    /// Live addresses, for picking one by index.
    addrs: Vec<usize>,
    /// Fill byte of the next block.
    next_fill: u8,
    /// Bytes requested by live blocks.
    live_bytes: usize,
}

impl<'a> Model<'a> {
    /// An empty model over `core`.
    pub fn new(core: &'a Core<MockPlatform>) -> Self {
        Model { core, live: BTreeMap::new(), addrs: Vec::new(), next_fill: 1, live_bytes: 0 }
    }

    /// Live blocks.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// Bytes requested by live blocks.
    pub fn live_bytes(&self) -> usize {
        self.live_bytes
    }

    /// The byte at offset `i` of a block filled with `fill`: a position-dependent pattern, so a
    /// block copied to the wrong offset is caught too.
    #[inline]
    fn pattern(fill: u8, i: usize) -> u8 {
        fill.wrapping_add(i as u8).wrapping_add((i >> 8) as u8)
    }

    /// The word at 8-aligned offset `i`: eight `pattern` bytes in memory order. Within a word
    /// `(i + k) >> 8` is constant, so byte `k` is `base + k`: a byte-wise add without carries.
    #[inline]
    fn word(fill: u8, i: usize) -> u64 {
        const H: u64 = 0x8080_8080_8080_8080;
        const K: u64 = 0x0706_0504_0302_0100;
        let base = u64::from(Self::pattern(fill, i)) * 0x0101_0101_0101_0101;
        let le = ((base & !H) + (K & !H)) ^ ((base ^ K) & H);
        u64::from_le(le)
    }

    /// The offsets of the 8-aligned words filled and checked: all of them natively; under miri
    /// (where every access is interpreted) two words of every 512 bytes — miri is there to catch
    /// undefined behaviour, the native runs and the fuzzer check every byte. The sample depends
    /// only on the position, so a prefix kept by `realloc` is checked at the words filled.
    #[cfg(not(miri))]
    fn words(head: usize, words: usize) -> impl Iterator<Item = usize> {
        (0..words).map(move |w| head + w * 8)
    }

    /// See the native version.
    #[cfg(miri)]
    fn words(head: usize, words: usize) -> impl Iterator<Item = usize> {
        (0..words).step_by(64).flat_map(move |w| (w..(w + 2).min(words)).map(move |w| head + w * 8))
    }

    /// Whether the `w`-th aligned word of a block is in the sample.
    #[inline]
    fn sampled(w: usize) -> bool {
        !cfg!(miri) || w % 64 < 2
    }

    /// The unaligned bytes filled and checked: the head, and the tail bytes whose word (the one
    /// a longer block would have there) is in the sample.
    fn bytes(head: usize, words: usize, len: usize) -> impl Iterator<Item = usize> {
        (0..head).chain((head + words * 8..len).filter(move |&i| Self::sampled((i - head) / 8)))
    }

    fn fill(p: *mut u8, len: usize, fill: u8) {
        let head = p.align_offset(8).min(len);
        let words = (len - head) / 8;
        for i in Self::bytes(head, words, len) {
            // SAFETY: `p` is a live block of at least `len` bytes.
            unsafe { p.add(i).write(Self::pattern(fill, i)) };
        }
        for i in Self::words(head, words) {
            // SAFETY: in bounds and 8-aligned.
            unsafe { p.add(i).cast::<u64>().write(Self::word(fill, i)) };
        }
    }

    fn verify(p: *const u8, len: usize, fill: u8) {
        let head = p.align_offset(8).min(len);
        let words = (len - head) / 8;
        for i in Self::bytes(head, words, len) {
            // SAFETY: `p` is a live block of at least `len` bytes.
            let got = unsafe { p.add(i).read() };
            assert_eq!(got, Self::pattern(fill, i), "block {p:p} byte {i} of {len} corrupted");
        }
        for i in Self::words(head, words) {
            // SAFETY: in bounds and 8-aligned.
            let got = unsafe { p.add(i).cast::<u64>().read() };
            assert_eq!(got, Self::word(fill, i), "block {p:p} word at {i} of {len} corrupted");
        }
    }

    fn ptr(&self, addr: usize) -> *mut u8 {
        crate::Platform::ptr_from_addr(self.core.platform(), addr)
    }

    /// Checks a new block against the model and the arena, then records and fills it.
    fn admit(&mut self, p: *mut u8, layout: Layout, zeroed: bool) {
        let addr = p.addr();
        let len = layout.size().max(1);
        assert_eq!(addr % layout.align(), 0, "{p:p} misaligned for {layout:?}");
        assert!(self.core.platform().contains(addr, len), "{p:p} outside the arena");
        if let Some((&a, l)) = self.live.range(..=addr).next_back() {
            assert!(a + l.layout.size().max(1) <= addr, "{p:p} overlaps the live block at {a:#x}");
        }
        if let Some((&a, _)) = self.live.range(addr + 1..).next() {
            assert!(addr + len <= a, "{p:p}+{len} overlaps the live block at {a:#x}");
        }
        if zeroed {
            let step = if cfg!(miri) { 61 } else { 1 };
            for i in (0..layout.size()).step_by(step).chain(layout.size().checked_sub(1)) {
                // SAFETY: a live block of `layout.size()` bytes.
                assert_eq!(unsafe { p.add(i).read() }, 0, "zeroed block {p:p} has byte {i} set");
            }
        }
        let fill = self.next_fill;
        self.next_fill = self.next_fill.wrapping_add(37);
        Self::fill(p, layout.size(), fill);
        self.live.insert(addr, Live { layout, fill });
        self.addrs.push(addr);
        self.live_bytes += layout.size();
    }

    /// Allocates `size` bytes aligned to `align` (a power of two) with `flags`; returns whether it
    /// succeeded.
    pub fn alloc(&mut self, size: usize, align: usize, flags: Gfp) -> bool {
        let Ok(layout) = Layout::from_size_align(size, align) else {
            return false;
        };
        match self.core.alloc_with(layout, flags) {
            Ok(p) => {
                self.admit(p.as_ptr(), layout, flags.contains(Gfp::ZERO));
                true
            }
            Err(_) => false,
        }
    }

    /// Removes the block at index `pick % len()` from the model after checking its contents;
    /// the caller frees it.
    fn take(&mut self, pick: usize) -> Option<(*mut u8, Layout)> {
        if self.addrs.is_empty() {
            return None;
        }
        let addr = self.addrs.swap_remove(pick % self.addrs.len());
        let l = self.live.remove(&addr).unwrap();
        let p = self.ptr(addr);
        Self::verify(p, l.layout.size(), l.fill);
        self.live_bytes -= l.layout.size();
        Some((p, l.layout))
    }

    /// Frees the block at index `pick % len()` after checking its contents.
    pub fn free(&mut self, pick: usize) {
        if let Some((p, layout)) = self.take(pick) {
            // SAFETY: a live block of this layout.
            unsafe { self.core.dealloc(p, layout) };
        }
    }

    /// Reallocates the block at index `pick % len()` to `new_size`; checks that the common prefix
    /// survived (or, on failure, that the old block is intact).
    pub fn realloc(&mut self, pick: usize, new_size: usize) -> bool {
        if self.addrs.is_empty() {
            return false;
        }
        let i = pick % self.addrs.len();
        let addr = self.addrs[i];
        let l = self.live[&addr];
        if Layout::from_size_align(new_size, l.layout.align()).is_err() {
            return false;
        }
        let p = self.ptr(addr);
        Self::verify(p, l.layout.size(), l.fill);
        // SAFETY: a live block of this layout; the new layout is valid.
        let q = unsafe { self.core.realloc(p, l.layout, new_size) };
        if q.is_null() {
            Self::verify(p, l.layout.size(), l.fill);
            return false;
        }
        self.moved(i, q, Layout::from_size_align(new_size, l.layout.align()).unwrap());
        true
    }

    /// Frees the block at index `pick % len()` without its layout ([`Core::kfree`]), after
    /// checking its contents and that [`Core::ksize`] covers it.
    pub fn kfree(&mut self, pick: usize) {
        if let Some((p, layout)) = self.take(pick) {
            let usable = self.core.ksize(p);
            assert!(usable >= layout.size(), "ksize {usable} below the block's {} bytes", layout.size());
            // SAFETY: a live block, given up.
            unsafe { self.core.kfree(p) };
        }
    }

    /// Resizes the block at index `pick % len()` without its layout ([`Core::krealloc`]): the
    /// result has C's alignment, and from then on the layout `(new_size, MIN_ALIGN)`.
    pub fn krealloc(&mut self, pick: usize, new_size: usize) -> bool {
        if self.addrs.is_empty() || new_size > isize::MAX as usize / 2 {
            return false;
        }
        let i = pick % self.addrs.len();
        let addr = self.addrs[i];
        let l = self.live[&addr];
        let p = self.ptr(addr);
        Self::verify(p, l.layout.size(), l.fill);
        // SAFETY: a live block; the size is bounded.
        let q = unsafe { self.core.krealloc(p, new_size, Gfp::NOWARN) };
        if q.is_null() {
            Self::verify(p, l.layout.size(), l.fill);
            return false;
        }
        self.moved(i, q, Layout::from_size_align(new_size, crate::size_class::MIN_ALIGN).unwrap());
        true
    }

    /// Records that the block at index `i` now lives at `q` with `layout` (after a realloc):
    /// checks the common prefix kept its contents, then admits the new block.
    fn moved(&mut self, i: usize, q: *mut u8, layout: Layout) {
        let addr = self.addrs.swap_remove(i);
        let l = self.live.remove(&addr).unwrap();
        Self::verify(q, l.layout.size().min(layout.size()), l.fill);
        self.live_bytes -= l.layout.size();
        self.admit(q, layout, false);
    }

    /// Checks the contents of every live block.
    pub fn check_all(&self) {
        for (&a, l) in &self.live {
            Self::verify(self.ptr(a), l.layout.size(), l.fill);
        }
    }

    /// Frees every live block.
    pub fn free_all(&mut self) {
        while !self.addrs.is_empty() {
            self.free(self.addrs.len() - 1);
        }
    }
}

impl Drop for Model<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.free_all();
        }
    }
}
