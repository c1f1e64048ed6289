//! Bad frees in the slab: the checks that are cheap enough for every build (a page that
//! empties must hold each of its blocks exactly once), and those `hardened` adds to the fast
//! path (the segment map; a free of a block that is free already; free-list links). Found
//! problems are reported with the pointer; under `hardened` the process then aborts, otherwise
//! the free is ignored or the page repaired — never followed into corruption.

use super::page::Page;
use super::remote::Block;
use crate::{Core, Platform};
use core::ptr;

/// Blocks a page can hold at most for the duplicate search (64 KiB of 16-byte blocks).
const MAX_BLOCKS: usize = 4096;

impl<P: Platform> Core<P> {
    /// A free found bad on a slab path: report it; abort under `hardened`.
    #[cold]
    pub(crate) fn bad_slab_free(&self, ptr: *mut u8, why: &str) {
        self.bad_free(ptr, None, why);
        #[cfg(feature = "hardened")]
        self.platform.abort();
    }

    /// `used` of `page` reached zero: before the page is given back, check that its lists hold
    /// exactly the blocks carved from it, each once. A block freed twice makes them revisit a
    /// block (or share a tail) and their length differ from `reserved`. Returns whether the
    /// page may be retired; if not, it was repaired: its distinct free blocks are on
    /// `local_free` and the rest count as used.
    ///
    /// # Safety
    /// The caller owns `page`, which is live with `used == 0`.
    pub(crate) unsafe fn retire_check(&self, page: *mut Page) -> bool {
        // SAFETY: the owner reads its own lists; a bound on the walk stops at any cycle.
        unsafe {
            let reserved = (*page).reserved as usize;
            let mut n = 0usize;
            for head in [(*page).free, (*page).local_free] {
                let mut b = head;
                while !b.is_null() && n <= reserved {
                    n += 1;
                    b = Block::next(b);
                }
            }
            if n == reserved {
                return true;
            }
            self.repair_page(page)
        }
    }

    /// Rebuilds `page`'s lists without repeats and reports the first block seen twice.
    ///
    /// # Safety
    /// As [`retire_check`](Self::retire_check).
    #[cold]
    unsafe fn repair_page(&self, page: *mut Page) -> bool {
        // SAFETY: as above; every block visited lies in the page (checked before following).
        unsafe {
            let bs = (*page).block_size as usize;
            let start = (*page).start;
            let cap = ((*page).capacity as usize).min(MAX_BLOCKS);
            let mut seen = [0u64; MAX_BLOCKS / 64];
            let mut distinct: *mut Block = ptr::null_mut();
            let mut count = 0u32;
            let mut repeated: *mut Block = ptr::null_mut();
            for head in [(*page).free, (*page).local_free] {
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
            (*page).free = ptr::null_mut();
            (*page).local_free = distinct;
            (*page).used = (*page).reserved - count;
            let at = if repeated.is_null() { start } else { repeated.cast() };
            self.bad_slab_free(
                at,
                "freed twice: the page's free lists revisit it (found when the page emptied; \
                 the page is kept, its other blocks are safe)",
            );
            (*page).used == 0
        }
    }

    /// `hardened`: a link decoded to an address outside its block's segment — memory of a freed
    /// block was overwritten (a use after free or an overflow). Reports and aborts.
    #[cfg(feature = "hardened")]
    #[cold]
    pub(crate) fn corrupt_link(&self, page: *mut Page, block: *mut Block, next: *mut Block) -> ! {
        crate::report::report(
            &self.platform,
            format_args!(
                "ctxalloc: heap corruption: the free block {block:p} of the page at {page:p} links to \
                 {next:p}, outside its segment — a write after free or an overflow into a freed \
                 block; aborting"
            ),
        );
        self.platform.abort()
    }

    /// `hardened`: whether `block` is on one of `page`'s three lists. The owner calls it when a
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
            for head in [(*page).free, (*page).local_free, (*page).remote.peek()] {
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
