//! The kernel shim against the other region allocators a `no_std` kernel would use, each over a
//! 64 MiB region of its own, in one criterion run: `KernelAlloc` (threads as CPUs) as it comes
//! and with its exact-fit tier serving every size (`ctxalloc-kernel-fit`:
//! `Core::set_exact_fit(Some(0))`), `linked_list_allocator::LockedHeap` and `talc` (`Talck`
//! over a spin lock). Before the timings
//! it prints each one's heap efficiency: the most bytes a random workload held live before the
//! first refusal, as a share of the region. Workloads: mixed small sizes with random lifetimes
//! (64 and 4096 live), same-size churn (the list allocators' best case), larson on two threads,
//! and an all-cross-thread exchange on two threads.
//!
//! `cargo bench -p ctxalloc-benches --bench kernel`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ctxalloc_benches::{churn, exchange, larson, mixed_churn, Rng, Slots};
use ctxalloc_kernel::{KernelAlloc, SEGMENT_SIZE};
use linked_list_allocator::LockedHeap;
use std::alloc::{GlobalAlloc, Layout};
use talc::{ErrOnOom, Span, Talc, Talck};

const REGION: usize = 64 << 20;
const SIZES: [usize; 8] = [16, 24, 32, 48, 64, 96, 128, 256];
const NAMES: [&str; 4] = ["ctxalloc-kernel", "ctxalloc-kernel-fit", "talc", "linked_list"];

ctxalloc_tests::host_platform!(ChurnCpus);
ctxalloc_tests::host_platform!(RingCpus);
ctxalloc_tests::host_platform!(FillCpus);
ctxalloc_tests::host_platform!(SkewedCpus);
ctxalloc_tests::host_platform!(Fit256Cpus);
ctxalloc_tests::host_platform!(LarsonCpus);

/// A leaked, zeroed region of `REGION` bytes, `skew` bytes past a segment boundary: 0 is what
/// an embedder's segment-aligned static gives; a skewed region loses its unaligned ends to
/// everything but large (vmap) areas.
fn region(skew: usize) -> *mut u8 {
    let l = Layout::from_size_align(REGION + SEGMENT_SIZE, SEGMENT_SIZE).unwrap();
    // SAFETY: a non-zero layout; leaked, ours for ever.
    let base = unsafe { std::alloc::alloc_zeroed(l) };
    assert!(!base.is_null());
    base.wrapping_add(skew)
}

fn kernel<P: ctxalloc_kernel::Platform + 'static>(p: P) -> &'static KernelAlloc<P> {
    kernel_at(p, 0)
}

/// [`kernel`] with the exact-fit tier serving every size: the region packed as a list
/// allocator packs it, one lock per allocation.
fn kernel_fit<P: ctxalloc_kernel::Platform + 'static>(p: P) -> &'static KernelAlloc<P> {
    let k = kernel_at(p, 0);
    k.core().set_exact_fit(Some(0));
    k
}

fn kernel_at<P: ctxalloc_kernel::Platform + 'static>(p: P, skew: usize) -> &'static KernelAlloc<P> {
    let k = Box::leak(Box::new(KernelAlloc::new(p)));
    // SAFETY: a leaked region, ours for ever.
    unsafe { k.init(region(skew), REGION) };
    // A benchmark measures the allocator, not reclaim: no limit.
    k.core().remove_limit();
    k
}

fn talc() -> &'static Talck<spin::Mutex<()>, ErrOnOom> {
    let t = Box::leak(Box::new(Talc::new(ErrOnOom).lock::<spin::Mutex<()>>()));
    // SAFETY: a leaked region, ours for ever.
    unsafe { t.lock().claim(Span::from_base_size(region(0), REGION)) }.unwrap();
    t
}

fn linked_list() -> &'static LockedHeap {
    let h = Box::leak(Box::new(LockedHeap::empty()));
    // SAFETY: a leaked region, ours for ever.
    unsafe { h.lock().init(region(0), REGION) };
    h
}

/// Runs `$body` with `$a` bound to the allocator called `$name` (`$cpus`: the host platform
/// of a `KernelAlloc`; one instance per platform type, since a context belongs to one allocator).
macro_rules! with_region_allocator {
    ($name:expr, $cpus:ident, |$a:ident| $body:expr) => {
        match $name {
            "ctxalloc-kernel" => {
                static ONE: std::sync::OnceLock<&'static KernelAlloc<$cpus>> = std::sync::OnceLock::new();
                let $a = *ONE.get_or_init(|| kernel($cpus));
                $body
            }
            "ctxalloc-kernel-fit" => {
                // A platform type of its own: a context belongs to one allocator.
                mod fit {
                    ctxalloc_tests::host_platform!(Cpus);
                }
                static ONE: std::sync::OnceLock<&'static KernelAlloc<fit::Cpus>> = std::sync::OnceLock::new();
                let $a = *ONE.get_or_init(|| kernel_fit(fit::Cpus));
                $body
            }
            "talc" => {
                static ONE: std::sync::OnceLock<&'static Talck<spin::Mutex<()>, ErrOnOom>> =
                    std::sync::OnceLock::new();
                let $a = *ONE.get_or_init(talc);
                $body
            }
            _ => {
                static ONE: std::sync::OnceLock<&'static LockedHeap> = std::sync::OnceLock::new();
                let $a = *ONE.get_or_init(linked_list);
                $body
            }
        }
    };
}

/// Random sizes (16 B – 4 KiB, alignment 8–64) allocated, a third of the time a random live
/// block freed instead, until the first refusal: the most bytes held live, ÷ the region.
fn efficiency<A: GlobalAlloc>(a: &A) -> f64 {
    let mut rng = Rng::new(7);
    let mut live: Vec<(*mut u8, Layout)> = Vec::new();
    let (mut bytes, mut best) = (0usize, 0usize);
    loop {
        if !live.is_empty() && rng.below(3) == 0 {
            let (p, l) = live.swap_remove(rng.below(live.len() as u64) as usize);
            // SAFETY: allocated by `a` with `l`.
            unsafe { a.dealloc(p, l) };
            bytes -= l.size();
            continue;
        }
        let l = Layout::from_size_align(16 + rng.below(4081) as usize, 8 << rng.below(4)).unwrap();
        // SAFETY: a valid, non-zero layout.
        let p = unsafe { a.alloc(l) };
        if p.is_null() {
            break;
        }
        live.push((p, l));
        bytes += l.size();
        best = best.max(bytes);
    }
    for (p, l) in live {
        // SAFETY: as above.
        unsafe { a.dealloc(p, l) };
    }
    best as f64 / REGION as f64
}

fn bench(c: &mut Criterion) {
    println!("heap efficiency (most bytes live before the first refusal ÷ 64 MiB region, segment-aligned):");
    for name in NAMES {
        let e = with_region_allocator!(name, FillCpus, |a| efficiency(a));
        println!("  {name:<20} {:.2} %", 100.0 * e);
    }
    let skewed = efficiency(kernel_at(SkewedCpus, SEGMENT_SIZE / 2));
    println!("  ctxalloc-kernel, region off segment alignment by 2 MiB: {:.2} %", 100.0 * skewed);
    // Exact fit above 256 B: the workloads below (16–256 B) stay on the per-CPU slab.
    let k = kernel(Fit256Cpus);
    k.core().set_exact_fit(Some(256));
    println!("  ctxalloc-kernel, exact fit above 256 B: {:.2} %", 100.0 * efficiency(k));

    // Mixed small sizes, random lifetimes: a random live block freed, one of a random size
    // allocated — the heap fragments as a kernel's does.
    let mut g = c.benchmark_group("kernel_mixed_16_256B");
    g.throughput(Throughput::Elements(1));
    for live in [64usize, 4096] {
        for name in NAMES {
            g.bench_function(BenchmarkId::new(name, live), |b| {
                with_region_allocator!(name, ChurnCpus, |a| {
                    let mut s = Slots::new(a, live, &SIZES);
                    let mut rng = Rng::new(live as u64);
                    b.iter(|| mixed_churn(a, &mut s, &SIZES, &mut rng, 1));
                    s.free(a);
                })
            });
        }
    }
    g.finish();

    // The friendliest case for a list allocator: the oldest block freed, one of the same size
    // allocated at once (it refills the hole just made).
    let mut g = c.benchmark_group("kernel_same_size_churn_16_256B");
    g.throughput(Throughput::Elements(1));
    for name in NAMES {
        g.bench_function(BenchmarkId::new(name, 4096), |b| {
            with_region_allocator!(name, ChurnCpus, |a| {
                let mut s = Slots::new(a, 4096, &SIZES);
                b.iter(|| churn(a, &mut s, 1));
                s.free(a);
            })
        });
    }
    g.finish();

    // Larson on two threads (two CPUs): 1000 live blocks each, 10 000 random replacements a
    // round, then the sets change hands — most frees local, the survivors' cross-CPU.
    let mut g = c.benchmark_group("kernel_larson_2_threads");
    g.throughput(Throughput::Elements(2 * 10 * 10_000));
    g.sample_size(20);
    for name in NAMES {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            with_region_allocator!(name, LarsonCpus, |a| b.iter(|| larson(a, 2, 1000, 10, 10_000, &SIZES)))
        });
    }
    g.finish();

    // Two threads (two CPUs), each freeing everything the other allocated, in batches of 2048:
    // the worst case for per-CPU caches, every free a cross-CPU one.
    let mut g = c.benchmark_group("kernel_exchange_2_threads");
    const ROUNDS: usize = 25;
    const BATCH: usize = 2048;
    g.throughput(Throughput::Elements((2 * ROUNDS * BATCH) as u64));
    g.sample_size(20);
    for name in NAMES {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            with_region_allocator!(name, RingCpus, |a| b.iter(|| exchange(a, 2, ROUNDS, BATCH, &SIZES)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
