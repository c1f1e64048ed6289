//! AddressSanitizer annotations for fuzz builds (`cfg(fuzzing)`; cargo fuzz builds with ASan):
//! memory ctxalloc holds but nobody may touch is *poisoned*, so a use after free — by a caller or
//! by the allocator itself — is caught at the access. Everywhere else these are empty inline
//! functions: the fast paths pay nothing.
//!
//! What is poisoned, and when (mimalloc's ASan tracking does the same):
//! * a freed slab block, past its first word (the free-list link the allocator keeps there),
//!   from the moment it is freed until it is handed out again; the bytes of a live block past
//!   the size it was asked for stay poisoned too, so small overflows are caught;
//! * a slab page's whole span once the page is given back to the page heap, until it is carved
//!   again;
//! * a vmap area while it sits in the area cache.
//!
//! Everything the allocator gets from the page source is unpoisoned when mapped and before it is
//! unmapped, so no stale shadow outlives the mapping.

#[cfg(fuzzing)]
extern "C" {
    fn __asan_poison_memory_region(addr: *const u8, size: usize);
    fn __asan_unpoison_memory_region(addr: *const u8, size: usize);
}

/// Marks `n` bytes at `p` as unaddressable.
#[inline(always)]
pub(crate) fn poison(p: *const u8, n: usize) {
    #[cfg(fuzzing)]
    // SAFETY: changes ASan's shadow only; the range is memory the allocator holds.
    unsafe {
        __asan_poison_memory_region(p, n)
    };
    #[cfg(not(fuzzing))]
    let _ = (p, n);
}

/// Marks `n` bytes at `p` as addressable again.
#[inline(always)]
pub(crate) fn unpoison(p: *const u8, n: usize) {
    #[cfg(fuzzing)]
    // SAFETY: changes ASan's shadow only; the range is memory the allocator holds.
    unsafe {
        __asan_unpoison_memory_region(p, n)
    };
    #[cfg(not(fuzzing))]
    let _ = (p, n);
}

/// Poisons a freed block of `block_size` bytes past its free-list link.
#[inline(always)]
pub(crate) fn poison_block(p: *const u8, block_size: usize) {
    let link = core::mem::size_of::<usize>();
    if block_size > link {
        poison(p.wrapping_add(link), block_size - link);
    }
}
