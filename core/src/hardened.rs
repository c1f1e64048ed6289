//! `hardened`: the free lists and frees checked on the fast path (mimalloc's secure mode, in
//! part).
//!
//! * Every free-list link is stored XOR-ed with a per-process key, so a use-after-free write or
//!   an overflow into a freed block cannot steer the allocator to an address of its choosing:
//!   the decoded link of a corrupted block almost never lies in the block's own segment, which
//!   `pop` checks before following it — and aborts, naming the page and the block, if not.
//! * A block handed out has its link word cleared, so a *live* block's first word is 0 or the
//!   caller's data, and a *free* block's decodes to a link in its own segment (or null). A free
//!   whose block looks free is a double free: the owner confirms it by walking the page's three
//!   lists (it may read all three); another thread takes the keyed link at its word — caller
//!   data near the block never decodes near it (the key's top bit is set), other data does with
//!   odds of 2⁻⁴¹. It is reported with the pointer and the process aborts.
//! * A free first checks the segment map: a pointer outside every segment is reported and
//!   aborts instead of being followed.
//!
//! Bad frees found on the slow paths (`slab/check.rs`) also abort under `hardened`; without it
//! they are reported and ignored.

use crate::slab::remote::Block;
use crate::slab::SEGMENT_SIZE;
use crate::sync::{AtomicUsize, Ordering};

/// The link key; 0 until the first slow path sets it (before any link is written). Its top
/// bit is set, so a cleared link word (0) never decodes into a segment.
static KEY: AtomicUsize = AtomicUsize::new(0);

/// The key. Relaxed: it is written once, before any block exists that a thread could free.
#[inline(always)]
pub(crate) fn key() -> usize {
    KEY.load(Ordering::Relaxed)
}

/// Sets the key from `entropy` (and the addresses ASLR randomises), once.
#[inline]
pub(crate) fn ensure(entropy: u64) {
    if key() != 0 {
        return;
    }
    let local = 0u8;
    let mut z = entropy ^ (&raw const local).addr() as u64 ^ ((&raw const KEY).addr() as u64).rotate_left(32);
    // splitmix64's finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let k = (z as usize) | (1 << (usize::BITS - 1));
    let _ = KEY.compare_exchange(0, k, Ordering::Relaxed, Ordering::Relaxed);
}

/// A link as stored.
#[inline(always)]
pub(crate) fn encode(p: *mut Block) -> *mut Block {
    p.map_addr(|a| a ^ key())
}

/// A link as stored, decoded (XOR is its own inverse).
#[inline(always)]
pub(crate) fn decode(p: *mut Block) -> *mut Block {
    encode(p)
}

/// Whether `next`, decoded from `block`'s link word, can be a link: null or in `block`'s
/// segment.
#[inline(always)]
pub(crate) fn plausible(block: *mut Block, next: *mut Block) -> bool {
    next.is_null() || (next.addr() ^ block.addr()) < SEGMENT_SIZE
}

/// `block`'s link word as stored (its first word), read before a free overwrites it.
///
/// # Safety
/// `block` is readable for a word.
#[inline(always)]
pub(crate) unsafe fn link_word(block: *mut Block) -> usize {
    // SAFETY: per the contract.
    unsafe { block.cast::<usize>().read() }
}

/// Puts a link word read by [`link_word`] back.
///
/// # Safety
/// `block` is writable for a word.
#[inline(always)]
pub(crate) unsafe fn set_link_word(block: *mut Block, raw: usize) {
    // SAFETY: per the contract.
    unsafe { block.cast::<usize>().write(raw) }
}

/// Whether `raw`, the first word of `block` before it was freed, is a plausible encoded link —
/// the block was free already. A cleared (live, untouched) block reads 0, which is not.
#[inline(always)]
pub(crate) fn is_link(block: *mut Block, raw: usize) -> bool {
    raw != 0 && plausible(block, block.with_addr(raw ^ key()))
}
