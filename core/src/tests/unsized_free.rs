//! Blocks without a layout — `kfree`, `ksize`, `krealloc`, what C's `free`,
//! `malloc_usable_size` and `realloc` become: every backend is found from the address alone,
//! and pointers ctxalloc never handed out are reported, not followed.

use super::*;
use crate::size_class::{MIN_ALIGN, SMALL_MAX};

/// C's `malloc`: `krealloc` of null.
fn kmalloc(core: &Core<MockPlatform>, n: usize) -> *mut u8 {
    // SAFETY: null allocates; `n` is far below isize::MAX.
    unsafe { core.krealloc(core::ptr::null_mut(), n, Gfp::KERNEL) }
}

/// Bytes the pattern covers: all of them, or every 61st under miri (which interprets each).
const STEP: usize = if MIRI { 61 } else { 1 };

/// Fills `n` bytes at `p` with a pattern derived from `seed`.
fn fill(p: *mut u8, n: usize, seed: u8) {
    for i in (0..n).step_by(STEP) {
        // SAFETY: the caller's block has `n` bytes.
        unsafe { p.add(i).write(seed.wrapping_add(i as u8)) };
    }
}

/// Whether the first `n` bytes at `p` still hold the pattern of `seed`.
fn intact(p: *const u8, n: usize, seed: u8) -> bool {
    // SAFETY: the caller's block has `n` bytes.
    (0..n).step_by(STEP).all(|i| unsafe { p.add(i).read() } == seed.wrapping_add(i as u8))
}

#[test]
fn kfree_ksize_and_krealloc_find_every_backend_from_the_address() {
    let core = new_core(if MIRI { 24 } else { 64 });
    let sizes: &[usize] = if MIRI {
        &[1, 100, 5000, SLAB_MAX + 1]
    } else {
        &[0, 1, 16, 100, 1000, 4096, 5000, 40_000, SLAB_MAX, SLAB_MAX + 1, 300_000, 3 << 20]
    };
    for (k, &from) in sizes.iter().enumerate() {
        for &to in sizes {
            let seed = k as u8;
            let p = kmalloc(&core, from);
            assert!(!p.is_null() && p.addr().is_multiple_of(MIN_ALIGN), "{from}");
            assert!(core.ksize(p) >= from, "ksize {} < {from}", core.ksize(p));
            fill(p, from, seed);
            // SAFETY: a live block.
            let q = unsafe { core.krealloc(p, to, Gfp::KERNEL) };
            assert!(!q.is_null() && q.addr().is_multiple_of(MIN_ALIGN), "{from} → {to}");
            assert!(core.ksize(q) >= to, "{from} → {to}: ksize {}", core.ksize(q));
            assert!(intact(q, from.min(to), seed), "{from} → {to}: bytes lost");
            // SAFETY: the live block.
            unsafe { core.kfree(q) };
        }
    }
    // Blocks from the layout API are found too, whatever their alignment.
    for (size, align) in [(24, 8), (64, 64), (3000, 1024), (8192, 4096), (100, 8192), (1 << 20, 1 << 16)] {
        let l = Layout::from_size_align(size, align).unwrap();
        // SAFETY: a valid layout.
        let p = unsafe { core.alloc(l) };
        assert!(core.ksize(p) >= size);
        // SAFETY: a live block, given up.
        unsafe { core.kfree(p) };
    }
    assert_eq!(core.stats().bad_frees, 0);
    assert_all_returned(&core);
}

#[test]
fn kfree_of_a_pointer_ctxalloc_never_handed_out_is_reported_not_followed() {
    let core = new_core(16);
    let mut local = [0u8; 64];
    let foreign = local.as_mut_ptr();
    // SAFETY: the contract allows pointers ctxalloc never handed out.
    unsafe { core.kfree(foreign) };
    assert_eq!(core.ksize(foreign), 0);
    // SAFETY: as above.
    assert!(unsafe { core.krealloc(foreign, 10, Gfp::KERNEL) }.is_null());
    // SAFETY: null is ignored.
    unsafe { core.kfree(core::ptr::null_mut()) };
    assert_eq!(core.stats().bad_frees, 2);
    let want = std::format!("{foreign:p}");
    let r = core.platform().reports();
    assert!(r.iter().filter(|m| m.contains(&want) && m.contains("no size given")).count() == 2, "{r:?}");
    assert_eq!(local, [0; 64], "nothing was written through the foreign pointer");

    // A large area freed twice: the second is reported.
    let big = kmalloc(&core, 1 << 20);
    // SAFETY: a live area, then a stale pointer (reported).
    unsafe {
        core.kfree(big);
        core.kfree(big);
    }
    assert_eq!(core.stats().bad_frees, 3);

    // A slab block whose page went back: inside a segment (or an unmapped one), not live.
    let small = kmalloc(&core, 100);
    // SAFETY: the live block, given up.
    unsafe { core.kfree(small) };
    core.trim();
    assert_eq!(core.stats().slab_pages, 0);
    assert_eq!(core.ksize(small), 0);
    // SAFETY: a stale pointer: the contract allows it once its page is gone (reported).
    unsafe { core.kfree(small) };
    assert_eq!(core.stats().bad_frees, 4);
    assert_all_returned(&core);
}

#[test]
fn kfree_into_a_segment_slice_of_no_page_is_reported_and_writes_nothing() {
    // The segment map's fast test finds the segment; the slice maps to the empty page (here
    // the header slice, past the header): the free is reported with the pointer, not followed.
    let core = new_core(16);
    let live = kmalloc(&core, 100);
    let inside = (live.addr() & !(SEGMENT_SIZE - 1)) + SLICE_SIZE - 64;
    let p = core.platform().ptr_from_addr(inside);
    // SAFETY: the header slice is mapped while the segment is live.
    let before = unsafe { core::ptr::read(p.cast::<[u8; 64]>()) };
    // SAFETY: the contract allows any pointer.
    unsafe { core.kfree(p) };
    assert_eq!(core.stats().bad_frees, 1);
    let want = std::format!("{p:p}");
    let r = core.platform().reports();
    assert!(r.iter().any(|m| m.contains(&want) && m.contains("not in a live slab page")), "{r:?}");
    // SAFETY: as above.
    assert_eq!(unsafe { core::ptr::read(p.cast::<[u8; 64]>()) }, before, "written through");
    assert_eq!(core.ksize(p), 0);
    // SAFETY: the live block, given up.
    unsafe { core.kfree(live) };
    assert_all_returned(&core);
}

/// `alloc_cached` (C's `malloc` fast path, whose own slow path sets `errno`): a block the
/// thread has ready, else null with nothing done.
#[test]
fn alloc_cached_takes_only_a_block_the_thread_has_ready() {
    let core = new_core(16);
    // A thread that has allocated nothing has nothing ready: null, and no page was made.
    assert!(core.alloc_cached(24).is_null());
    assert_eq!(core.stats().slab_pages, 0);
    let l = Layout::from_size_align(24, MIN_ALIGN).unwrap();
    // SAFETY: a valid layout; the block is freed with it.
    let p = unsafe { core.alloc(l) };
    // SAFETY: the live block of `l`.
    unsafe { core.dealloc(p, l) };
    // The block just freed is on top of the list for its size.
    let q = core.alloc_cached(24);
    assert_eq!(q, p);
    assert!(core.ksize(q) >= 24);
    // Beyond the fast path's sizes: null, whatever the thread has.
    assert!(core.alloc_cached(SMALL_MAX + 1).is_null());
    // SAFETY: a block of `l`.
    unsafe { core.dealloc(q, l) };
    // With a debugging hook armed, the block waits for the caller's slow path, which runs it.
    #[cfg(feature = "fault-injection")]
    {
        let saved = core.fault_inject(crate::FaultConfig { fail_nth: 1, ..crate::FaultConfig::DEFAULT });
        assert!(core.alloc_cached(24).is_null());
        assert!(core.alloc_with(l, Gfp::NOWARN).is_err());
        assert_eq!(core.fault_injected(), 1);
        core.fault_restore(saved);
        assert_eq!(core.alloc_cached(24), p);
        // SAFETY: a block of `l`.
        unsafe { core.dealloc(p, l) };
    }
    assert_all_returned(&core);
}
