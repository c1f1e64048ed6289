//! Atomic context (an interrupt handler, preemption off) over the mock platform: what
//! `Platform::in_atomic` does to an allocation without the caller passing a flag — no direct
//! reclaim, no waiting, no NOFAIL loop, a quarter of the emergency reserve (`Gfp::HIGH`), and a
//! mempool that hands out its reserve and then nothing.

use super::reclaim::{block, fill_to_limit, free_blocks, leaked_core, Cache, BLOCK};
use super::*;
use crate::{Mempool, ReclaimClass};
use core::panic::Location;

/// The limit of these tests, in MiB: under miri half as many blocks fill it (a quarter of its
/// reserve is then one block).
const LIMIT_MIB: usize = if MIRI { 16 } else { 32 };

/// Allocates blocks until refused, the way an interrupt handler would (no flags of its own).
fn fill_plainly(core: &Core<MockPlatform>) -> Vec<usize> {
    let mut v = Vec::new();
    while let Ok(p) = core.alloc_with(block(), Gfp::NOWARN) {
        v.push(p.as_ptr().addr());
    }
    v
}

#[test]
fn atomic_context_never_reclaims_and_takes_a_quarter_of_the_reserve() {
    let core = leaked_core(64, LIMIT_MIB);
    let limit = LIMIT_MIB << 20;
    let reserve = crate::emergency_reserve(limit);
    let cache = Cache::new(core, "atomic-cache", ReclaimClass::Other).register();
    cache.fill(16);
    let plain = fill_to_limit(core);
    assert!(core.usage() <= limit - reserve);

    core.platform().set_in_atomic(true);
    let atomic = fill_plainly(core);
    core.platform().set_in_atomic(false);
    assert_eq!(cache.scans(), 0, "a shrinker ran for an allocation in atomic context");
    assert!(!atomic.is_empty(), "atomic context may go below the plain watermark");
    let u = core.usage();
    assert!(u > limit - reserve && u <= limit - reserve + reserve / 4, "usage {u}: a quarter of {reserve}");
    assert!(u + 2 * BLOCK > limit - reserve + reserve / 4, "atomic context stops at its quarter: {u}");

    // The same request outside atomic context reclaims.
    let p = core.alloc_with(block(), Gfp::NOWARN).expect("reclaim frees the cache");
    assert!(cache.scans() > 0);
    free_blocks(core, std::vec![p.as_ptr().addr()]);
    free_blocks(core, atomic);
    free_blocks(core, plain);
}

#[test]
fn gfp_atomic_per_call_is_what_atomic_context_adds() {
    let core = leaked_core(64, LIMIT_MIB);
    let plain = fill_to_limit(core);
    let per_call = {
        let mut v = Vec::new();
        while let Ok(p) = core.alloc_with(block(), Gfp::ATOMIC | Gfp::NOWARN) {
            v.push(p.as_ptr().addr());
        }
        v
    };
    let at_call = core.usage();
    free_blocks(core, per_call);
    core.platform().set_in_atomic(true);
    let derived = fill_plainly(core);
    core.platform().set_in_atomic(false);
    assert_eq!(core.usage(), at_call, "GFP_ATOMIC per call and atomic context stop at one ceiling");
    assert_eq!(core.effective(Gfp::KERNEL), crate::Effective::new(Gfp::KERNEL, Gfp::KERNEL));
    free_blocks(core, derived);
    free_blocks(core, plain);
}

#[test]
fn nofail_in_atomic_context_is_reported_once_and_fails_without_waiting() {
    let core = leaked_core(64, LIMIT_MIB);
    let cache = Cache::new(core, "nofail-cache", ReclaimClass::Other).register();
    cache.fill(16);
    let plain = fill_to_limit(core);
    core.platform().set_in_atomic(true);
    let quarter = fill_plainly(core);
    let c = core.scope_save(Gfp::NOFAIL | Gfp::NOFS, Location::caller());
    let r = core.alloc_with(block(), Gfp::KERNEL);
    core.scope_restore(c);
    core.platform().set_in_atomic(false);
    assert!(r.is_err(), "NOFAIL cannot be honoured in atomic context");
    assert_eq!(cache.scans(), 0, "nor does it reclaim there");
    let reports = core.platform().reports();
    let denied: Vec<_> = reports.iter().filter(|m| m.contains("cannot wait for memory")).collect();
    assert_eq!(denied.len(), 1, "{reports:?}");
    assert!(denied[0].contains("NORECLAIM") && denied[0].contains("HIGH"), "{}", denied[0]);
    free_blocks(core, quarter);
    free_blocks(core, plain);
}

#[test]
fn a_mempool_in_atomic_context_hands_out_its_reserve_then_nothing() {
    let core = leaked_core(64, LIMIT_MIB);
    let pool = Mempool::new(core, block(), 2).unwrap();
    let plain = fill_to_limit(core);
    core.platform().set_in_atomic(true);
    let quarter = fill_plainly(core);
    let a = pool.alloc(Gfp::KERNEL).expect("a reserved element");
    let b = pool.alloc(Gfp::KERNEL).expect("a reserved element");
    assert!(pool.alloc(Gfp::KERNEL).is_none(), "an empty reserve in atomic context: nothing, no sleep");
    core.platform().set_in_atomic(false);
    let s = core.stats();
    assert_eq!((s.mempool_reserve_uses, s.mempool_waits), (2, 0), "{s}");
    // SAFETY: elements of this pool.
    unsafe {
        pool.free(a);
        pool.free(b);
    }
    assert_eq!(pool.curr_nr(), 2);
    free_blocks(core, quarter);
    free_blocks(core, plain);
}

#[test]
fn scopes_moved_between_contexts_keep_their_bits_and_pairing() {
    // A task switched out on one CPU and in on another, as the kernel shim's per-task mode does
    // it: the scope opened before the switch is closed after it, on the other CPU's state.
    let core = &new_core(8);
    let task = crate::ScopeState::new();
    let c = core.scope_save(Gfp::NOIO, Location::caller());
    core.scope_hold(Gfp::NOFS);
    core.thread().scope().move_to(&task);
    assert_eq!(core.current(), Gfp::KERNEL, "switched out: the CPU's word is empty");
    let raw = c.into_raw(); // a cookie is not Send: it travels as the integer C code keeps
    let other = thread::scope(|s| {
        s.spawn(move || {
            // Another CPU: its own context, into which the task is switched.
            task.move_to(core.thread().scope());
            let eff = core.effective(Gfp::KERNEL).gfp();
            core.scope_release(Gfp::NOFS);
            core.scope_restore(crate::Cookie::from_raw(raw));
            (eff, core.current())
        })
        .join()
        .unwrap()
    });
    assert_eq!(other, (Gfp::NOIO | Gfp::NOFS, Gfp::KERNEL));
    assert_eq!(core.stats().scope_mispairs, 0, "the cookie's record moved with the scope");
}
