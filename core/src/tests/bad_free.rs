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
fn a_double_free_from_another_thread_is_found_when_the_owner_collects() {
    let core = new_core(16);
    let b = blocks(&core, 20);
    let (twice, once) = (b[3].addr(), b[5].addr());
    thread::scope(|s| {
        s.spawn(|| {
            let p = |a| core.platform().ptr_from_addr(a);
            // SAFETY: deliberately wrong — block 3 freed twice, from a thread that does not own
            // its page (the remote list now holds a cycle); block 5 once.
            unsafe {
                core.dealloc(p(twice), BLOCK);
                core.dealloc(p(twice), BLOCK);
                core.dealloc(p(once), BLOCK);
            }
        });
    });
    // The owner's next allocation collects the remote list: more blocks than are in use.
    let again = blocks(&core, 2);
    assert_eq!(core.stats().bad_frees, 1);
    let reports = core.platform().reports();
    let want = std::format!("free of {:p} (no size given) ignored: freed twice", b[3]);
    assert!(reports.iter().any(|r| r.contains(&want)), "{reports:?}");
    // The two blocks freed come back, once each; no live block is handed out again.
    let mut got: Vec<usize> = again.iter().map(|p| p.addr()).collect();
    got.sort();
    let mut want_back = std::vec![twice, once];
    want_back.sort();
    assert_eq!(got, want_back);
    for (i, &p) in b.iter().enumerate() {
        if i != 3 && i != 5 {
            // SAFETY: live blocks of BLOCK.
            unsafe { core.dealloc(p, BLOCK) };
        }
    }
    for p in again {
        // SAFETY: live blocks of BLOCK.
        unsafe { core.dealloc(p, BLOCK) };
    }
    assert_eq!(core.stats().bad_frees, 1, "the rebuilt page empties cleanly");
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
    // From another thread too (taken at its word: no list walk).
    let again = b[1].addr();
    let r = thread::scope(|s| {
        s.spawn(|| {
            let p = core.platform().ptr_from_addr(again);
            // SAFETY: deliberately wrong: freed a third time.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe { core.dealloc(p, BLOCK) }))
        })
        .join()
        .unwrap()
    });
    assert!(r.is_err(), "a remote double free aborts");
    // Live blocks — untouched since allocation, or holding pointers near themselves — are not
    // mistaken for free ones.
    // SAFETY: live blocks of BLOCK.
    unsafe {
        b[2].cast::<usize>().write(b[3].addr());
        core.dealloc(b[0], BLOCK);
        core.dealloc(b[2], BLOCK);
        core.dealloc(b[3], BLOCK);
    }
    assert_eq!(core.stats().bad_frees, 2);
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
    // The two frees are on top of `free`; the next allocation pops the corrupted block and
    // decodes its link.
    aborts(&core, "heap corruption", || {
        for _ in 0..64 {
            // SAFETY: a valid layout.
            unsafe { core.alloc(BLOCK) };
        }
    });
}
