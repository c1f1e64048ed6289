//! `mempool`: random sequences of pool allocations (in contexts that may and may not wait),
//! preallocated takes, frees, resizes, and backend pressure (filler blocks up to a memory limit,
//! injected page-source failures) on one [`Mempool`] over the core and the mock platform.
//! Checked after every step: the reserve never holds more than `min_nr`; no element is handed
//! out twice or overlaps another live block; every element keeps its contents until freed; an
//! allocation that may wait, made while the reserve holds an element, never fails; and once the
//! pool is dropped and everything freed, every byte is given back — no element was lost.
//!
//! A sleeping allocation (`Gfp::KERNEL`) is made only where it can end: with an element in the
//! reserve, or after giving one back first. With the reserve empty and nothing to give back, a
//! single thread's sleeping allocation waits for a free that nothing will make — by the kernel's
//! own semantics (R3.5) — so the harness asks for a non-sleeping one (`NORECLAIM`) instead.

#![no_main]

use core::alloc::Layout;
use core::ptr::NonNull;
use ctxalloc_core::mock::MockPlatform;
use ctxalloc_core::{Core, Gfp, Mempool, Platform, SLICE_SIZE};
use ctxalloc_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

const ARENA: usize = 16 << 20;

fn fill(p: NonNull<u8>, n: usize, v: u8) {
    // SAFETY: a live block of at least `n` bytes.
    unsafe { p.as_ptr().write_bytes(v, n) };
}

fn intact(p: NonNull<u8>, n: usize, v: u8) -> bool {
    // SAFETY: a live block of at least `n` bytes.
    (0..n).all(|i| unsafe { p.as_ptr().add(i).read() } == v)
}

fuzz_target!(|data: &[u8]| {
    let core = Core::new(MockPlatform::new(ARENA));
    let mut input = Input(data);
    let size = 8 + usize::from(input.byte()) * 32 % 20_000;
    let layout = Layout::from_size_align(size, 8 << (input.byte() % 4)).unwrap();
    let min = usize::from(input.byte() % 16);
    core.set_limit(4 << 20 | usize::from(input.byte()) << 15).expect("a workable limit");
    let Ok(pool) = Mempool::new(&core, layout, min) else {
        return; // the preallocation did not fit: refused whole
    };
    // Live blocks by address: (length, fill byte, whether it is a pool element).
    let mut live: BTreeMap<usize, (usize, u8, bool)> = BTreeMap::new();
    let filler = Layout::from_size_align(32 << 10, 8).unwrap();
    let mut next = 1u8;
    let admit =
        |live: &mut BTreeMap<usize, (usize, u8, bool)>, p: NonNull<u8>, len: usize, v: u8, elem: bool| {
            let a = p.as_ptr().addr();
            if let Some((&b, &(l, _, _))) = live.range(..=a).next_back() {
                assert!(b + l <= a, "{a:#x} handed out while the block at {b:#x} is live");
            }
            if let Some((&b, _)) = live.range(a + 1..).next() {
                assert!(a + len <= b, "{a:#x}+{len} overlaps the live block at {b:#x}");
            }
            fill(p, len, v);
            live.insert(a, (len, v, elem));
        };
    while !input.is_empty() {
        let op = input.byte() % 10;
        match op {
            0..=3 => {
                let mut gfp = if input.byte() % 2 == 0 { Gfp::NORECLAIM } else { Gfp::KERNEL };
                if gfp == Gfp::KERNEL && pool.curr_nr() == 0 {
                    // Only one thread runs: the free a sleeping allocation waits for comes first.
                    let elem =
                        live.iter().find(|(_, &(_, _, elem))| elem).map(|(&a, &(len, v, _))| (a, len, v));
                    match elem {
                        Some((a, len, v)) => {
                            live.remove(&a);
                            let p = NonNull::new(core.platform().ptr_from_addr(a)).unwrap();
                            assert!(intact(p, len, v), "the element at {a:#x} lost its contents");
                            // SAFETY: an element of this pool, given back once.
                            unsafe { pool.free(p) };
                        }
                        None => gfp = Gfp::NORECLAIM,
                    }
                }
                let had = pool.curr_nr();
                match pool.alloc(gfp) {
                    Some(e) => {
                        next = next.wrapping_add(1).max(1);
                        admit(&mut live, e, size, next, true);
                    }
                    None => assert!(
                        gfp.contains(Gfp::NORECLAIM) && had == 0,
                        "a pool allocation failed (context {gfp}, reserve {had})"
                    ),
                }
            }
            4 => {
                if let Some(e) = pool.alloc_preallocated() {
                    next = next.wrapping_add(1).max(1);
                    admit(&mut live, e, size, next, true);
                }
            }
            5 | 6 => {
                // Free a random live block: an element to the pool, a filler to the core.
                let k = usize::from(input.byte());
                if let Some((&a, &(len, v, elem))) = live.iter().nth(k % live.len().max(1)) {
                    live.remove(&a);
                    let p = NonNull::new(core.platform().ptr_from_addr(a)).unwrap();
                    assert!(intact(p, len, v), "the block at {a:#x} lost its contents");
                    if elem {
                        // SAFETY: an element of this pool, given back once.
                        unsafe { pool.free(p) };
                    } else {
                        // SAFETY: a live filler.
                        unsafe { core.dealloc(p.as_ptr(), filler) };
                    }
                }
            }
            7 => pool.resize(usize::from(input.byte() % 24)),
            8 => {
                // Pressure: fillers until the limit (or the arena) refuses.
                for _ in 0..input.byte() % 64 {
                    match core.alloc_with(filler, Gfp::NORECLAIM | Gfp::NOWARN) {
                        Ok(p) => {
                            next = next.wrapping_add(1).max(1);
                            admit(&mut live, p, filler.size(), next, false);
                        }
                        Err(_) => break,
                    }
                }
            }
            _ => core.platform().fail_next_maps(usize::from(input.byte() % 3)),
        }
        assert!(
            pool.curr_nr() <= pool.min_nr().max(1),
            "reserve {} above min_nr {}",
            pool.curr_nr(),
            pool.min_nr()
        );
    }
    core.platform().fail_next_maps(0);
    for (a, (len, v, elem)) in std::mem::take(&mut live) {
        let p = NonNull::new(core.platform().ptr_from_addr(a)).unwrap();
        assert!(intact(p, len, v));
        // SAFETY: live elements and fillers, each freed once.
        unsafe {
            if elem {
                pool.free(p);
            } else {
                core.dealloc(p.as_ptr(), filler);
            }
        }
    }
    drop(pool);
    core.remove_limit();
    core.thread_exit();
    core.trim();
    let s = core.stats();
    assert_eq!((s.slab_pages, s.vmap_areas), (0, 0), "an element was lost\n{s}");
    assert!(s.usage <= SLICE_SIZE + 4096, "memory not given back\n{s}");
});
