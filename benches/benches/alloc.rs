//! Criterion benches, every allocator in one run: (a) single-thread churn of 16–256 B blocks with
//! 64+ live, (b) glibc-simple, (c) producer/consumer cross-thread frees; and (d) what entering
//! and leaving a scope costs (ctxalloc only).
//!
//! `cargo bench -p ctxalloc-benches --bench alloc`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ctxalloc_benches::{churn, glibc_simple, producer_consumer, with_allocator, Slots, ALLOCATORS};
use std::time::{Duration, Instant};

const SIZES: [usize; 8] = [16, 24, 32, 48, 64, 96, 128, 256];

fn bench_churn(c: &mut Criterion) {
    let mut g = c.benchmark_group("churn_16_256B");
    g.throughput(Throughput::Elements(1));
    for live in [64usize, 1024] {
        for name in ALLOCATORS {
            g.bench_function(BenchmarkId::new(name, live), |b| {
                with_allocator!(name, |a| {
                    let mut s = Slots::new(a, live, &SIZES);
                    b.iter(|| churn(a, &mut s, 1));
                    s.free(a);
                })
            });
        }
    }
    g.finish();
}

fn bench_glibc_simple(c: &mut Criterion) {
    let mut g = c.benchmark_group("glibc_simple");
    g.throughput(Throughput::Elements(2 * (25 + 100 + 400 + 1600)));
    for name in ALLOCATORS {
        g.bench_function(name, |b| {
            with_allocator!(name, |a| {
                let mut buf = Vec::with_capacity(1600);
                b.iter(|| glibc_simple(a, 1, &mut buf));
            })
        });
    }
    g.finish();
}

fn bench_producer_consumer(c: &mut Criterion) {
    let mut g = c.benchmark_group("producer_consumer");
    const N: usize = 100_000;
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    for name in ALLOCATORS {
        g.bench_function(name, |b| {
            with_allocator!(name, |a| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        producer_consumer(a, N);
                        t += start.elapsed();
                    }
                    t
                })
            })
        });
    }
    g.finish();
}

fn bench_scope(c: &mut Criterion) {
    let mut g = c.benchmark_group("scope_enter_leave");
    g.bench_function("memalloc_nofs_save+restore", |b| {
        b.iter(|| {
            let cookie = ctxalloc::memalloc_nofs_save();
            ctxalloc::memalloc_nofs_restore(std::hint::black_box(cookie));
        })
    });
    g.bench_function("scope(NOFS) guard", |b| {
        b.iter(|| {
            let g = ctxalloc::scope(ctxalloc::Gfp::NOFS);
            std::hint::black_box(());
            drop(g);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench_churn, bench_glibc_simple, bench_producer_consumer, bench_scope
}
criterion_main!(benches);
