//! Bad frees in the slab: the checks cheap enough for every build, on the paths that walk blocks
//! anyway (a page's remote list, taken by its owner, can hold at most `used` blocks: a block
//! freed twice by other threads makes it longer — a cycle — and is found there; a free into a
//! page that was given back), and those `hardened` adds on the fast path (the segment map; a
//! free of a block that is free already; free-list links before they are followed). Problems
//! are reported with the pointer;
//! under `hardened` the process then aborts, otherwise the free is ignored or the page's lists
//! rebuilt without repeats — never followed into corruption.

use super::page::Page;
use super::remote::Block;
use crate::{Core, Platform};
use core::ptr;

/// Blocks a page can hold at most for the duplicate search (a slice of the smallest class).
const MAX_BLOCKS: usize = super::SLICE_SIZE / crate::size_class::TINY_MAX;

impl<P: Platform> Core<P> {
    /// A free found bad on a slab path: report it; abort under `hardened` (found under an
    /// allocator lock, both once the lock is released: the page's lists are consistent again).
    #[cold]
    pub(crate) fn bad_slab_free(&self, ptr: *mut u8, why: &'static str) {
        self.bad_free(ptr, None, why);
        #[cfg(feature = "hardened")]
        {
            let t = self.thread();
            if t.locks.may_call_out() {
                self.platform.abort();
            }
            t.locks.defer(crate::lock::deferred::ABORT);
        }
    }

    /// Moves `remote`, the list just taken from `page`'s remote list, onto `free` and
    /// counts its blocks off `used`. Blocks on the remote list count as used, so it can hold at
    /// most `used`: a longer one (a block freed twice from other threads, which also closes the
    /// list into a cycle — the walk is bounded) is reported and the page's lists rebuilt.
    ///
    /// # Safety
    /// The caller owns `page`, which is live, and the blocks of `remote`.
    pub(crate) unsafe fn absorb_remote(&self, page: *mut Page, remote: *mut Block) {
        // SAFETY: the owner's lists; the walk stops after `used` blocks.
        unsafe {
            let used = (*page).used;
            let mut n = 1;
            let mut tail = remote;
            loop {
                if n > used {
                    self.repair_page(page, remote);
                    return;
                }
                let next = Block::next(tail);
                if next.is_null() {
                    break;
                }
                n += 1;
                tail = next;
            }
            Block::set_next(tail, (*page).free);
            (*page).free = remote;
            (*page).used -= n;
        }
    }

    /// Rebuilds `page`'s lists — `free` and the taken remote list `extra` — without repeats
    /// onto `free`, counts the blocks not on them as used, and reports the
    /// first block seen twice. Returns whether the page is now empty.
    ///
    /// # Safety
    /// The caller owns `page`, which is live, and the blocks of `extra`.
    #[cold]
    unsafe fn repair_page(&self, page: *mut Page, extra: *mut Block) -> bool {
        // SAFETY: as above; every block visited lies in the page (checked before following).
        unsafe {
            let bs = (*page).block_size as usize;
            let start = (*page).start;
            let cap = ((*page).capacity as usize).min(MAX_BLOCKS);
            let mut seen = [0u64; MAX_BLOCKS / 64];
            let mut distinct: *mut Block = ptr::null_mut();
            let mut count = 0u32;
            let mut repeated: *mut Block = ptr::null_mut();
            for head in [(*page).free, extra] {
                let mut b = head;
                while !b.is_null() {
                    let off = b.addr().wrapping_sub(start.addr());
                    let i = off / bs;
                    if off % bs != 0 || i >= cap {
                        break; // a corrupted link: stop following
                    }
                    let next = Block::next(b);
                    if seen[i / 64] & (1 << (i % 64)) != 0 {
                        if repeated.is_null() {
                            repeated = b;
                        }
                        break; // the rest of this chain was visited already
                    }
                    seen[i / 64] |= 1 << (i % 64);
                    Block::set_next(b, distinct);
                    distinct = b;
                    count += 1;
                    b = next;
                }
            }
            (*page).free = distinct;
            (*page).used = (*page).reserved - count;
            let at = if repeated.is_null() { start } else { repeated.cast() };
            self.bad_slab_free(
                at,
                "freed twice: the page's free lists revisit it (the page's lists were rebuilt; \
                 its other blocks are safe)",
            );
            (*page).used == 0
        }
    }

    /// `hardened`: a link decoded to an address outside its block's segment — memory of a freed
    /// block was overwritten (a use after free or an overflow). Reports and aborts (at once, also
    /// under a lock: the list cannot be followed further).
    #[cfg(feature = "hardened")]
    #[cold]
    pub(crate) fn corrupt_link(&self, page: *mut Page, block: *mut Block, next: *mut Block) -> ! {
        crate::report::report_fatal(
            &self.platform,
            format_args!(
                "ctxalloc: heap corruption: the free block {block:p} of the page at {page:p} links to \
                 {next:p}, outside its segment — a write after free or an overflow into a freed \
                 block; aborting"
            ),
        );
        self.platform.abort()
    }

    /// `hardened`: whether `block` is on one of `page`'s two lists. The owner calls it when a
    /// block it frees looks free already.
    ///
    /// # Safety
    /// The caller owns `page`, which is live.
    #[cfg(feature = "hardened")]
    #[cold]
    pub(crate) unsafe fn on_free_lists(&self, page: *mut Page, block: *mut Block) -> bool {
        // SAFETY: the owner reads its own lists and the remote list from its head (only the
        // owner takes from it, so what it reaches stays put); the walk is bounded.
        unsafe {
            let bound = (*page).reserved as usize + 1;
            for head in [(*page).free, (*page).remote.peek()] {
                let mut b = head;
                let mut n = 0;
                while !b.is_null() && n < bound {
                    if b == block {
                        return true;
                    }
                    let next = Block::next(b);
                    if !crate::hardened::plausible(b, next) {
                        self.corrupt_link(page, b, next);
                    }
                    b = next;
                    n += 1;
                }
            }
            false
        }
    }
}
