//! The kernel shim against the other region allocators a `no_std` kernel would use, each over a
//! 64 MiB region of its own, in one criterion run: `KernelAlloc` (threads as CPUs),
//! `linked_list_allocator::LockedHeap` and `talc` (`Talck` over a spin lock). Before the timings
//! it prints each one's heap efficiency: the most bytes a random workload held live before the
//! first refusal, as a share of the region.
//!
//! `cargo bench -p ctxalloc-benches --bench kernel`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ctxalloc_benches::{churn, producer_consumer, Slots};
use ctxalloc_kernel::KernelAlloc;
use ctxalloc_tests::Rng;
use linked_list_allocator::LockedHeap;
use std::alloc::{GlobalAlloc, Layout};
use talc::{ErrOnOom, Span, Talc, Talck};

const REGION: usize = 64 << 20;
const SIZES: [usize; 8] = [16, 24, 32, 48, 64, 96, 128, 256];
const NAMES: [&str; 3] = ["ctxalloc-kernel", "talc", "linked_list"];

ctxalloc_tests::host_platform!(ChurnCpus);
ctxalloc_tests::host_platform!(RingCpus);
ctxalloc_tests::host_platform!(FillCpus);

fn region() -> *mut u8 {
    Box::leak(vec![0u8; REGION].into_boxed_slice()).as_mut_ptr()
}

fn kernel<P: ctxalloc_kernel::Platform + 'static>(p: P) -> &'static KernelAlloc<P> {
    let k = Box::leak(Box::new(KernelAlloc::new(p)));
    // SAFETY: a leaked region, ours for ever.
    unsafe { k.init(region(), REGION) };
    // A benchmark measures the allocator, not reclaim: no limit.
    k.core().set_limit(None);
    k
}

fn talc() -> &'static Talck<spin::Mutex<()>, ErrOnOom> {
    let t = Box::leak(Box::new(Talc::new(ErrOnOom).lock::<spin::Mutex<()>>()));
    // SAFETY: a leaked region, ours for ever.
    unsafe { t.lock().claim(Span::from_base_size(region(), REGION)) }.unwrap();
    t
}

fn linked_list() -> &'static LockedHeap {
    let h = Box::leak(Box::new(LockedHeap::empty()));
    // SAFETY: a leaked region, ours for ever.
    unsafe { h.lock().init(region(), REGION) };
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
    println!("heap efficiency (most bytes live before the first refusal ÷ 64 MiB region):");
    for name in NAMES {
        let e = with_region_allocator!(name, FillCpus, |a| efficiency(a));
        println!("  {name:<16} {:.1} %", 100.0 * e);
    }

    let mut g = c.benchmark_group("kernel_churn_16_256B");
    g.throughput(Throughput::Elements(1));
    for live in [64usize, 4096] {
        for name in NAMES {
            g.bench_function(BenchmarkId::new(name, live), |b| {
                with_region_allocator!(name, ChurnCpus, |a| {
                    let mut s = Slots::new(a, live, &SIZES);
                    b.iter(|| churn(a, &mut s, 1));
                    s.free(a);
                })
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("kernel_producer_consumer");
    const N: usize = 100_000;
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    for name in NAMES {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            with_region_allocator!(name, RingCpus, |a| b.iter(|| producer_consumer(a, N)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
