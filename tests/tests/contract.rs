//! The `GlobalAlloc` contract, with `CtxAlloc` as this binary's global allocator: every size
//! from 1 B to 64 MiB, every power-of-two alignment from 1 B to 4 MiB, contents written and
//! verified, realloc preserving bytes, zeroed memory zero, no two live blocks overlapping.

use ctxalloc_tests::{Block, Model, Rng};
use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn sizes() -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = 1usize;
    while s <= 64 << 20 {
        v.extend([s, s + 1, s * 3 / 2 + 7]);
        s *= 2;
    }
    v.retain(|&s| s <= 64 << 20);
    v
}

#[test]
fn ctxalloc_is_the_global_allocator() {
    let before = ctxalloc::stats();
    let b: Vec<Box<[u8; 40]>> = (0..5000).map(|_| Box::new([1; 40])).collect();
    let after = ctxalloc::stats();
    assert!(after.slab_pages > before.slab_pages || after.usage > before.usage, "{after}");
    drop(b);
}

#[test]
fn every_size_and_alignment_is_served_and_kept_apart() {
    let mut model = Model::new();
    let mut seed = 1;
    for size in sizes() {
        let mut align = 1;
        while align <= 4 << 20 {
            let b = Block::new(Layout::from_size_align(size, align).unwrap(), seed);
            seed += 1;
            model.insert(b);
            align *= 2;
        }
        // Keep a handful live across sizes so blocks of different sizes must stay apart.
        let addrs = model.addrs();
        for a in addrs.iter().skip(8) {
            drop(model.take(*a));
        }
        model.verify_all();
    }
}

#[test]
fn realloc_grows_and_shrinks_preserving_bytes() {
    let steps = [
        1,
        8,
        24,
        100,
        1000,
        1024,
        1025,
        5000,
        65_536,
        65_537,
        200_000,
        4 << 20,
        64 << 20,
        3 << 20,
        100_000,
        70_000,
        60_000,
        2000,
        33,
        1,
    ];
    for align in [1, 16, 64, 4096, 1 << 16, 2 << 20] {
        let mut b = Block::new(Layout::from_size_align(5, align).unwrap(), align as u64);
        for &s in &steps {
            b.realloc(s);
        }
        b.verify();
    }
}

#[test]
fn zeroed_memory_is_zero_even_when_reused() {
    for size in [8, 16, 48, 200, 1024, 3000, 20_000, 65_536, 100_000, 5 << 20] {
        let l = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..3 {
            // Dirty a block of the class, free it, then ask for zeroed memory of the same class.
            // SAFETY: non-zero layouts; every block is freed with its layout.
            unsafe {
                let p = alloc(l);
                p.write_bytes(0xa5, size);
                dealloc(p, l);
                let z = alloc_zeroed(l);
                assert!(!z.is_null());
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0), "size {size}");
                dealloc(z, l);
            }
        }
    }
    let v = vec![0u64; 3 << 20];
    assert!(v.iter().all(|&x| x == 0));
}

#[test]
fn random_operations_against_the_model() {
    let mut rng = Rng::new(7);
    let mut model = Model::new();
    for i in 0..200_000u64 {
        match rng.below(8) {
            0..=3 => {
                let size = rng.size(4 << 20);
                let align = 1 << if rng.below(10) == 0 { rng.below(22) } else { rng.below(5) };
                model.insert(Block::new(Layout::from_size_align(size, align).unwrap(), i));
            }
            4..=5 if !model.is_empty() => {
                let addrs = model.addrs();
                let a = addrs[rng.below(addrs.len() as u64) as usize];
                drop(model.take(a));
            }
            6 if !model.is_empty() => {
                let addrs = model.addrs();
                let a = addrs[rng.below(addrs.len() as u64) as usize];
                let mut b = model.take(a).unwrap();
                b.realloc(rng.size(1 << 20));
                model.insert(b);
            }
            _ => {}
        }
        if model.len() > 3000 {
            let a = model.addrs()[0];
            drop(model.take(a));
        }
    }
    model.verify_all();
}

#[test]
fn impossible_layouts_return_null() {
    for (size, align) in [(isize::MAX as usize - (1 << 20), 1 << 20), (1 << 62, 8), (usize::MAX >> 2, 4096)] {
        if let Ok(l) = Layout::from_size_align(size, align) {
            // SAFETY: non-zero size; the result is checked. `black_box` keeps the compiler from
            // eliding an allocation whose result is only compared with null.
            let p = std::hint::black_box(unsafe { alloc(l) });
            assert!(p.is_null(), "{l:?} cannot be satisfied");
        }
    }
    // The allocator still works afterwards.
    assert_eq!(vec![3u8; 1000].iter().map(|&b| b as usize).sum::<usize>(), 3000);
}
