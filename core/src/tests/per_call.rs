//! Per-call flags on every path (checklist items 17–19): the vmap path's internal descriptor
//! allocation inherits a per-call NOFS, NOFAIL retries page-source failures on the vmap path,
//! and kvmalloc fallbacks are freed by the backend that owns them.

use super::reclaim::{block, fill_to_limit, free_blocks, leaked_core, Cache, BLOCK};
use super::*;
use crate::vmap::VmArea;
use crate::ReclaimClass;

/// Allocates blocks of the descriptor's size class until no new slab page can be had; returns
/// them. Afterwards a vmap descriptor needs a fresh slab page.
fn fill_descriptor_class(core: &Core<MockPlatform>) -> Vec<usize> {
    let l = Layout::new::<VmArea>();
    let mut v = Vec::new();
    while let Ok(p) = core.alloc_with(l, Gfp::NORECLAIM | Gfp::NOWARN) {
        v.push(p.as_ptr().addr());
    }
    v
}

#[test]
fn a_per_call_nofs_large_allocation_never_enters_an_fs_shrinker_through_its_descriptor() {
    let core = leaked_core(64, 16);
    let fs = Cache::new(core, "fs-cache", ReclaimClass::Fs).register();
    // The FS cache holds everything the limit allows: it is the only thing reclaim could free.
    let room = fill_to_limit(core);
    let n = room.len();
    free_blocks(core, room);
    fs.fill(n);
    let small = fill_descriptor_class(core);
    let big = Layout::from_size_align(1 << 20, 8).unwrap();
    let maps = core.platform().map_contexts().len();

    // The descriptor is what hits the limit: it needs a slab page, in a NOFS scope (R2.1).
    assert!(core.alloc_with(big, Gfp::NOFS | Gfp::NORETRY | Gfp::NOWARN).is_err());
    assert_eq!(fs.scans(), 0, "the FS shrinker was never entered");
    assert!(fs.stats().skipped > 0, "reclaim passed over it because of the context");
    assert_eq!(core.platform().map_contexts().len(), maps, "the area itself was never mapped");

    // Control: the same request without NOFS may reclaim from the cache, and succeeds.
    let p = core.alloc_with(big, Gfp::KERNEL).expect("reclaim frees the cache");
    assert!(fs.scans() > 0);
    // SAFETY: live blocks.
    unsafe { core.dealloc(p.as_ptr(), big) };
    for a in small {
        // SAFETY: live blocks of the descriptor's layout.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), Layout::new::<VmArea>()) };
    }
}

#[test]
fn nofail_on_the_vmap_path_retries_page_source_failures() {
    let core = new_core(32);
    let big = Layout::from_size_align(1 << 20, 8).unwrap();
    let warm = core.alloc_with(big, Gfp::KERNEL).unwrap();
    // SAFETY: live block.
    unsafe { core.dealloc(warm.as_ptr(), big) };
    // The freed area is cached: give it back, so the next one needs the page source.
    core.trim();
    // The next maps fail (ENOMEM): NOFAIL waits and retries instead of failing.
    core.platform().fail_next_maps(3);
    let p = core.alloc_with(big, Gfp::NOFAIL).expect("NOFAIL retries the mapping");
    assert!(core.stats().nofail_waits > 0, "{}", core.stats());
    // Without NOFAIL a lasting failure is final.
    core.platform().fail_all_maps(true);
    assert!(core.alloc_with(big, Gfp::NORETRY | Gfp::NOWARN).is_err());
    core.platform().fail_all_maps(false);
    // SAFETY: live block.
    unsafe { core.dealloc(p.as_ptr(), big) };
}

#[test]
fn kvmalloc_falls_back_to_vmap_and_frees_go_to_the_owner() {
    let core = leaked_core(64, 16);
    // Warm the vmap registry and keep the descriptor class's page in use (one live area), then
    // leave 32 KiB of room: less than a 64 KiB slab page, more than a 20 KiB area.
    let warm = core.alloc_with(block(), Gfp::KERNEL).unwrap().as_ptr().addr();
    let u = core.usage();
    let mut limit = u + (32 << 10);
    while limit - crate::emergency_reserve(limit) < u + (32 << 10) {
        limit += 4096;
    }
    core.set_limit(limit).expect("a workable limit");
    let l = Layout::from_size_align(20 << 10, 8).unwrap();
    let before = core.stats();
    let p = core.alloc_with(l, Gfp::NOFS).expect("served by vmap when the slab cannot");
    assert_eq!(core.stats().vmap_areas, before.vmap_areas + 1, "a kvmalloc fallback");
    // SAFETY: 20 KiB of ours.
    unsafe {
        p.as_ptr().write_bytes(0x5A, 20 << 10);
        assert!(core.usable_size(p.as_ptr(), l) >= 20 << 10);
    }
    // A context that may not wait gets no fallback (R2.9).
    assert!(core.alloc_with(l, Gfp::NORECLAIM | Gfp::NOWARN).is_err());
    // Realloc keeps the contents, whichever backend ends up holding them.
    // SAFETY: live block of `l`.
    let q = unsafe { core.realloc_gfp(p.as_ptr(), l, 8 << 10, Gfp::KERNEL) };
    assert!(!q.is_null());
    // SAFETY: 8 KiB of ours.
    assert!(unsafe { core::slice::from_raw_parts(q, 8 << 10) }.iter().all(|&b| b == 0x5A));
    let l8 = Layout::from_size_align(8 << 10, 8).unwrap();
    // The free finds the owner from the address: the vmap area is unmapped, not pushed on a
    // slab list.
    // SAFETY: live block of `l8`.
    unsafe { core.dealloc(q, l8) };
    let after = core.stats();
    assert_eq!(after.vmap_areas, before.vmap_areas);
    assert_eq!(after.bad_frees, 0);
    assert!(after.usage <= u + BLOCK, "{after}");
    core.remove_limit();
    // Without pressure the slab serves the same request (no area).
    let s = core.alloc_with(l, Gfp::KERNEL).unwrap();
    assert_eq!(core.stats().vmap_areas, before.vmap_areas);
    // SAFETY: live block.
    unsafe { core.dealloc(s.as_ptr(), l) };
    free_blocks(core, std::vec![warm]);
}

#[test]
fn realloc_with_zero_clears_the_new_tail() {
    let core = new_core(16);
    let l = Layout::from_size_align(100, 8).unwrap();
    let p = core.alloc_with(l, Gfp::KERNEL).unwrap();
    // SAFETY: 100 bytes of ours; the block is bigger (112), so the realloc stays in place.
    unsafe {
        p.as_ptr().write_bytes(0xFF, 100);
        let q = core.realloc_gfp(p.as_ptr(), l, 110, Gfp::ZERO);
        assert_eq!(q, p.as_ptr(), "in place");
        let s = core::slice::from_raw_parts(q, 110);
        assert!(s[..100].iter().all(|&b| b == 0xFF) && s[100..].iter().all(|&b| b == 0));
        let r = core.realloc_gfp(q, Layout::from_size_align(110, 8).unwrap(), 5000, Gfp::ZERO);
        let s = core::slice::from_raw_parts(r, 5000);
        assert!(s[..100].iter().all(|&b| b == 0xFF) && s[110..].iter().all(|&b| b == 0));
        core.dealloc(r, Layout::from_size_align(5000, 8).unwrap());
    }
}

#[test]
fn scoped_spin_locks_carry_their_scope_and_release_in_any_order() {
    let core = new_core(8);
    let a = crate::ScopedSpinLock::new(&core, 1u32, Gfp::NOFS);
    let b = crate::ScopedSpinLock::new(&core, 2u32, Gfp::NOIO);
    let ga = a.lock();
    let gb = b.try_lock().expect("free");
    assert_eq!(core.current(), Gfp::NOFS | Gfp::NOIO);
    assert!(b.try_lock().is_none(), "held");
    drop(ga);
    assert_eq!(core.current(), Gfp::NOIO, "b's scope outlives a's guard");
    // A NOIO-scoped holder's allocation is NOIO (and so NOFS) in effect.
    assert!(core.effective(Gfp::KERNEL).gfp().contains(Gfp::NOFS));
    drop(gb);
    assert_eq!(core.current(), Gfp::KERNEL);
    assert_eq!((*a.lock(), *b.lock()), (1, 2));
    assert_eq!(core.current(), Gfp::KERNEL);
}
