//! Bad frees: a double free is found on the slow path when its page empties (and the page is
//! repaired, not corrupted); under `hardened` it is caught on the fast path, as are foreign
//! pointers and overwritten free-list links, and each aborts (the mock platform turns the
//! abort into a panic the test can catch).

use super::*;

const BLOCK: Layout = match Layout::from_size_align(3000, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// `n` blocks of [`BLOCK`] from a fresh core: all in one page.
fn blocks(core: &Core<MockPlatform>, n: usize) -> Vec<*mut u8> {
    // SAFETY: a valid layout; each block is fresh.
    (0..n).map(|_| unsafe { core.alloc(BLOCK) }).collect()
}

#[cfg(not(feature = "hardened"))]
#[test]
fn a_double_free_is_reported_when_its_page_empties_and_the_page_is_repaired() {
    let core = new_core(16);
    let b = blocks(&core, 20);
    let twice = b[3];
    // SAFETY: deliberately wrong — block 3 freed twice; the rest once.
    unsafe {
        core.dealloc(twice, BLOCK);
        core.dealloc(twice, BLOCK);
        for &p in b.iter().filter(|&&p| p != twice).take(18) {
            core.dealloc(p, BLOCK);
        }
    }
    // `used` reached zero with block 19 still live: the page was checked, not given back.
    assert_eq!(core.stats().bad_frees, 1);
    let reports = core.platform().reports();
    let want = std::format!("free of {twice:p} (no size given) ignored: freed twice");
    assert!(reports.iter().any(|r| r.contains(&want)), "{reports:?}");
    // The live block is intact and not handed out again; every other block comes back once.
    let last = b[19];
    // SAFETY: block 19 is live.
    unsafe { last.write_bytes(0x5a, BLOCK.size()) };
    let again = blocks(&core, 19);
    let mut sorted = again.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 19, "no block handed out twice");
    assert!(!again.contains(&last), "the live block is not reused");
    // SAFETY: block 19 is live and was not touched by the allocator.
    assert!(unsafe { core::slice::from_raw_parts(last, BLOCK.size()) }.iter().all(|&x| x == 0x5a));
    for p in again.into_iter().chain([last]) {
        // SAFETY: live blocks of BLOCK.
        unsafe { core.dealloc(p, BLOCK) };
    }
    assert_eq!(core.stats().bad_frees, 1, "the repaired page empties cleanly");
}

#[cfg(feature = "hardened")]
fn aborts(core: &Core<MockPlatform>, what: &str, f: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    assert!(r.is_err(), "{what}: no abort");
    let reports = core.platform().reports();
    assert!(reports.iter().any(|r| r.contains(what)), "{what}: {reports:?}");
}

#[cfg(feature = "hardened")]
#[test]
fn hardened_a_double_free_aborts_at_the_second_free() {
    let core = new_core(16);
    let b = blocks(&core, 4);
    // SAFETY: a live block.
    unsafe { core.dealloc(b[1], BLOCK) };
    let want = std::format!("free of {:p} (no size given) ignored: freed twice", b[1]);
    // SAFETY: deliberately wrong: freed again.
    aborts(&core, &want, || unsafe { core.dealloc(b[1], BLOCK) });
    // A live block whose first word was never written is not mistaken for a free one.
    // SAFETY: live blocks.
    unsafe {
        core.dealloc(b[0], BLOCK);
        core.dealloc(b[2], BLOCK);
    }
    assert_eq!(core.stats().bad_frees, 1);
}

#[cfg(feature = "hardened")]
#[test]
fn hardened_a_foreign_pointer_aborts() {
    let core = new_core(16);
    drop(blocks(&core, 1));
    let mut local = [0u64; 8];
    let p = local.as_mut_ptr().cast::<u8>();
    let want = std::format!("free of {p:p} (no size given) ignored: not a block ctxalloc handed out");
    // SAFETY: deliberately wrong: not ours.
    aborts(&core, &want, || unsafe { core.dealloc(p, Layout::new::<[u64; 8]>()) });
}

#[cfg(feature = "hardened")]
#[test]
fn hardened_an_overwritten_free_link_aborts_before_it_is_followed() {
    let core = new_core(16);
    let b = blocks(&core, 3);
    // SAFETY: live blocks, freed; then a write after free over the link of the last one freed.
    unsafe {
        core.dealloc(b[0], BLOCK);
        core.dealloc(b[1], BLOCK);
        b[1].cast::<usize>().write(0x4141_4141_4141_4141);
    }
    // The two frees are on `local_free`; allocating until it is collected pops the corrupted
    // block and decodes its link.
    aborts(&core, "heap corruption", || {
        for _ in 0..64 {
            // SAFETY: a valid layout.
            unsafe { core.alloc(BLOCK) };
        }
    });
}
