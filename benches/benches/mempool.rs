//! What a mempool alloc/free pair costs: served by the allocator (the pool's cheap first attempt
//! succeeds: the common case), and served from the pool's reserve (the allocator refuses: the
//! case the pool exists for), next to a plain `alloc_with`/`dealloc` pair of the same layout.
//!
//! `cargo bench -p ctxalloc-benches --bench mempool`

use criterion::{criterion_group, criterion_main, Criterion};
use ctxalloc::{Gfp, Mempool};
use std::alloc::Layout;
use std::hint::black_box;
use std::time::Duration;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("mempool_pair");
    let small = Layout::from_size_align(256, 8).unwrap();
    g.bench_function("plain alloc_with+dealloc 256 B", |b| {
        b.iter(|| {
            let p = ctxalloc::alloc_with(black_box(small), Gfp::NOIO).unwrap();
            // SAFETY: just allocated with `small`.
            unsafe { ctxalloc::dealloc(p, small) };
        })
    });
    let pool = Mempool::new(small, 2).unwrap();
    g.bench_function("from the allocator 256 B", |b| {
        b.iter(|| {
            let e = pool.alloc(black_box(Gfp::NOIO)).unwrap();
            // SAFETY: an element of `pool`.
            unsafe { pool.free(e) };
        })
    });

    // The allocator refuses: 64 MiB elements (mapped, never touched), and a limit that leaves
    // 32 MiB free — room for criterion, none for an element.
    let big = Layout::from_size_align(64 << 20, 64).unwrap();
    let reserve_pool = Mempool::new(big, 2).unwrap();
    let u = ctxalloc::usage();
    let mut limit = u + (32 << 20);
    while limit - ctxalloc::emergency_reserve(limit) < u + (32 << 20) {
        limit += 1 << 20;
    }
    ctxalloc::set_limit(limit).expect("a workable limit");
    assert!(ctxalloc::alloc_with(big, Gfp::NORECLAIM | Gfp::NOWARN).is_err(), "the allocator refuses");
    g.bench_function("from the reserve 64 MiB (allocator refuses)", |b| {
        b.iter(|| {
            let e = reserve_pool.alloc(black_box(Gfp::NOIO)).unwrap();
            // SAFETY: an element of `reserve_pool`.
            unsafe { reserve_pool.free(e) };
        })
    });
    g.bench_function("alloc_preallocated+free 64 MiB", |b| {
        b.iter(|| {
            let e = reserve_pool.alloc_preallocated().unwrap();
            // SAFETY: an element of `reserve_pool`.
            unsafe { reserve_pool.free(e) };
        })
    });
    ctxalloc::remove_limit();
    g.finish();
    let s = ctxalloc::stats();
    assert!(s.mempool_reserve_uses > 0 && s.mempool_waits == 0, "{s}");
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
