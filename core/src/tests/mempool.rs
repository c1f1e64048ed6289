//! Mempools over the mock platform (checklist items 20–22 of kernel-semantics.md, R3.1–R3.10).
//! Elements are vmap-sized (128 KiB), so every backend allocation needs fresh memory from the
//! page source and a limit makes the backend fail exactly when the test wants it to.

use super::reclaim::{block, fill_to_limit, free_blocks, leaked_core, Cache, BLOCK};
use super::*;
use crate::{Mempool, ReclaimClass};
use core::panic::Location;
use core::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A core at its limit: no new memory for plain, cheap or NOMEMALLOC requests.
fn core_at_limit() -> (&'static Core<MockPlatform>, Vec<usize>) {
    let core = leaked_core(64, 16);
    let filler = fill_to_limit(core);
    (core, filler)
}

#[test]
fn create_preallocates_min_nr_or_fails_whole() {
    let core = leaked_core(64, 16);
    free_blocks(core, std::vec![core.alloc_with(block(), Gfp::KERNEL).unwrap().as_ptr().addr()]);
    let before = core.usage(); // the heap and the vmap registry exist now
    let pool = Mempool::new(core, block(), 3).unwrap();
    assert_eq!(pool.curr_nr(), 3);
    assert_eq!(pool.min_nr(), 3);
    assert!(core.usage() >= before + 3 * BLOCK);
    drop(pool);
    assert_eq!(core.usage(), before, "dropping the pool frees its reserve");

    // Room for two elements, not three: creation fails and gives the two back.
    let filler = fill_to_limit(core);
    free_blocks(core, filler[..2].to_vec());
    let at = core.usage();
    assert!(Mempool::new(core, block(), 3).is_err());
    assert_eq!(core.usage(), at, "nothing kept from a failed creation");
    free_blocks(core, filler[2..].to_vec());

    // A pool of 0 still keeps one element: a sleeping alloc needs something to wait for.
    let zero = Mempool::new(core, block(), 0).unwrap();
    assert_eq!(zero.curr_nr(), 1);
}

#[test]
fn alloc_tries_the_backend_cheaply_then_the_reserve_lifo_then_at_full_strength() {
    let core = leaked_core(64, 16);
    let pool = Mempool::new(core, block(), 2).unwrap();
    // The reserve is LIFO: the last element given back is the first handed out.
    let a = pool.alloc_preallocated().unwrap();
    let b = pool.alloc_preallocated().unwrap();
    // SAFETY: elements of this pool.
    unsafe {
        pool.free(a);
        pool.free(b);
    }
    let cache = Cache::new(core, "pool-test", ReclaimClass::Other).register();
    let room = fill_to_limit(core);
    let n = room.len();
    free_blocks(core, room);
    cache.fill(n); // reclaimable memory fills the limit

    // 1. cheap: no shrinker runs; 2. the reserve, newest first.
    let first = pool.alloc(Gfp::KERNEL).unwrap();
    assert_eq!(first, b, "LIFO");
    assert_eq!(cache.scans(), 0, "the first attempt does not reclaim");
    let second = pool.alloc(Gfp::KERNEL).unwrap();
    assert_eq!(second, a);
    assert_eq!(cache.scans(), 0);
    // 3. the reserve is empty: one attempt at full strength, which reclaims.
    let third = pool.alloc(Gfp::KERNEL).unwrap();
    assert!(cache.scans() > 0, "the full-strength attempt ran direct reclaim");
    assert_eq!(core.stats().mempool_reserve_uses, 2);
    assert_eq!(core.stats().mempool_waits, 0);
    // SAFETY: elements of this pool.
    unsafe {
        pool.free(first);
        pool.free(second);
        pool.free(third);
    }
    assert_eq!(pool.curr_nr(), 2, "refilled to min_nr; the third went to the backend");
}

#[test]
fn without_reclaim_permission_it_returns_none_once_the_reserve_is_empty() {
    let (core, filler) = core_at_limit();
    free_blocks(core, filler[..2].to_vec());
    let pool = Mempool::new(core, block(), 2).unwrap();
    let _more = fill_to_limit(core);
    let c = core.scope_save(Gfp::NORECLAIM, Location::caller());
    let x = pool.alloc(Gfp::KERNEL).expect("reserve element 1");
    let y = pool.alloc(Gfp::KERNEL).expect("reserve element 2");
    assert!(pool.alloc(Gfp::KERNEL).is_none(), "NORECLAIM: null, no sleep");
    core.scope_restore(c);
    assert!(pool.alloc(Gfp::NORECLAIM).is_none(), "per-call NORECLAIM too");
    assert_eq!(core.stats().mempool_waits, 0);
    // SAFETY: elements of this pool.
    unsafe {
        pool.free(x);
        pool.free(y);
    }
}

#[test]
fn never_uses_the_emergency_reserve_even_in_a_memalloc_scope() {
    let (core, _filler) = core_at_limit();
    free_blocks(core, _filler[..1].to_vec());
    let pool = Mempool::new(core, block(), 1).unwrap();
    let reserve_uses = core.stats().reserve_uses;
    let c = core.scope_save(Gfp::MEMALLOC, Location::caller());
    // A plain MEMALLOC allocation could dip into the emergency reserve; the pool's may not.
    let e = pool.alloc(Gfp::KERNEL).expect("served from the pool's own reserve");
    core.scope_restore(c);
    assert_eq!(core.stats().reserve_uses, reserve_uses, "the global reserve is untouched");
    assert_eq!(core.stats().mempool_reserve_uses, 1);
    // SAFETY: element of this pool.
    unsafe { pool.free(e) };
}

#[test]
fn free_refills_below_min_and_a_sleeper_gets_it() {
    let (core, filler) = core_at_limit();
    free_blocks(core, filler[..1].to_vec());
    let pool = Arc::new(Mempool::new(core, block(), 1).unwrap());
    let held = pool.alloc(Gfp::KERNEL).unwrap();
    assert_eq!(pool.curr_nr(), 0);
    let sleeper = {
        let pool = pool.clone();
        thread::spawn(move || {
            let e = pool.alloc(Gfp::KERNEL).expect("a sleeping alloc never returns null");
            e.as_ptr().addr()
        })
    };
    // Wait until the sleeper has found the pool empty and gone to sleep. (That no wake-up is
    // lost between "empty" and "asleep" is loom's part: `mempool::reserve::loom_tests`.)
    while core.stats().mempool_waits == 0 {
        thread::yield_now();
    }
    // SAFETY: element of this pool.
    unsafe { pool.free(held) };
    let got = sleeper.join().unwrap();
    assert_eq!(got, held.as_ptr().addr(), "the sleeper got the element freed back");
    // A free when the reserve is full goes to the backend.
    let before = core.usage();
    // SAFETY: the element the sleeper got, now ours.
    unsafe { pool.free(NonNull::new(core.platform().ptr_from_addr(got)).unwrap()) };
    assert_eq!(pool.curr_nr(), 1);
    assert_eq!(core.usage(), before, "refilled, not freed");
    let spare = core.alloc_with(block(), Gfp::MEMALLOC).unwrap();
    // SAFETY: not from the pool's reserve, but of its layout: a full reserve sends it back.
    unsafe { pool.free(spare) };
    assert!(core.usage() < before + BLOCK, "a full reserve frees to the backend");
}

#[test]
fn resize_shrinks_at_once_and_grows_as_memory_allows() {
    let core = leaked_core(64, 16);
    let pool = Mempool::new(core, block(), 4).unwrap();
    let u = core.usage();
    pool.resize(1);
    assert_eq!((pool.min_nr(), pool.curr_nr()), (1, 1));
    assert_eq!(core.usage(), u - 3 * BLOCK, "the surplus is freed at once");
    // Growing with no memory to spare still succeeds; later frees fill the reserve.
    let filler = fill_to_limit(core);
    pool.resize(3);
    assert_eq!((pool.min_nr(), pool.curr_nr()), (3, 1));
    free_blocks(core, filler[..2].to_vec());
    let (x, y) = (pool.alloc(Gfp::KERNEL).unwrap(), pool.alloc(Gfp::KERNEL).unwrap());
    assert_eq!(pool.curr_nr(), 1, "both came from the backend");
    // SAFETY: elements of this pool.
    unsafe {
        pool.free(x);
        pool.free(y);
    }
    assert_eq!(pool.curr_nr(), 3, "frees filled the grown reserve");
    free_blocks(core, filler[2..].to_vec());
}

#[test]
fn zero_and_typed_boxes() {
    let core = leaked_core(64, 16);
    let pool = Mempool::new(core, block(), 1).unwrap();
    let e = pool.alloc_preallocated().unwrap();
    // SAFETY: a 32-byte element of ours.
    unsafe { e.as_ptr().write_bytes(0xAB, 32) };
    // SAFETY: element of this pool.
    unsafe { pool.free(e) };
    let filler = fill_to_limit(core);
    let z = pool.alloc(Gfp::ZERO | Gfp::NORECLAIM).unwrap();
    assert_eq!(z, e, "from the reserve");
    // SAFETY: 32 bytes of ours.
    assert!(unsafe { core::slice::from_raw_parts(z.as_ptr(), 32) }.iter().all(|&b| b == 0));
    // SAFETY: element of this pool.
    unsafe { pool.free(z) };

    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct Bio([u64; 4]);
    impl Drop for Bio {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let b = pool.boxed(Bio([7; 4]), Gfp::NORECLAIM).ok().unwrap();
    assert_eq!(b.0, [7; 4]);
    assert_eq!(pool.curr_nr(), 0);
    assert!(pool.boxed(Bio([8; 4]), Gfp::NORECLAIM).is_err(), "no memory, no reserve: the value comes back");
    assert_eq!(DROPS.load(Ordering::SeqCst), 1, "the returned value was dropped by the caller");
    drop(b);
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    assert_eq!(pool.curr_nr(), 1, "the box gave its element back");
    free_blocks(core, filler);
}

/// R3.10: the backend fails for good (the limit is reached and no shrinker can help), 8 threads
/// each take one element at a time from a pool of 2, hold it, free it: all complete.
#[test]
fn forward_progress_with_a_backend_that_always_fails() {
    let (core, _filler) = core_at_limit();
    free_blocks(core, _filler[..2].to_vec());
    let pool = Arc::new(Mempool::new(core, block(), 2).unwrap());
    let _rest = fill_to_limit(core);
    let rounds = if MIRI { 20 } else { 10_000 };
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            thread::spawn(move || {
                for r in 0..rounds {
                    let e = pool.alloc(Gfp::KERNEL).expect("never null");
                    // SAFETY: 128 KiB of ours; the mark proves exclusive ownership below.
                    unsafe { e.as_ptr().cast::<usize>().write(i * rounds + r) };
                    thread::yield_now();
                    // SAFETY: as above.
                    assert_eq!(unsafe { e.as_ptr().cast::<usize>().read() }, i * rounds + r);
                    // SAFETY: element of this pool.
                    unsafe { pool.free(e) };
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(pool.curr_nr(), 2);
    let s = core.stats();
    assert_eq!(s.mempool_reserve_uses, 8 * rounds as u64, "every element came from the reserve: {s}");
}
