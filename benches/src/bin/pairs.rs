//! `pairs <allocator> <n>`: `n` alloc+free pairs of 32 bytes with 64 blocks kept live (or, for
//! `scopes`, `n` NOFS save+restore pairs), for counting instructions under callgrind (`benches/callgrind.sh` runs it twice and takes the
//! difference, so start-up cancels out).

use ctxalloc_benches::{with_allocator, Called};
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;

#[inline(never)]
fn run<A: GlobalAlloc>(a: &Called<A>, n: usize) {
    let l = Layout::from_size_align(32, 8).unwrap();
    let mut live = [std::ptr::null_mut(); 64];
    for p in live.iter_mut() {
        // SAFETY: non-zero size.
        *p = unsafe { a.alloc(l) };
    }
    for i in 0..n {
        // SAFETY: `live` holds blocks of `l`; each freed block is replaced.
        unsafe {
            // The layout is opaque to the optimiser, as at a real `__rust_alloc` call site.
            let q = a.alloc(black_box(l));
            a.dealloc(live[i % 64], black_box(l));
            live[i % 64] = black_box(q);
        }
    }
    for p in live {
        // SAFETY: live blocks of `l`.
        unsafe { a.dealloc(p, l) };
    }
}

/// The floor: a thread-local intrusive free list of 32-byte blocks carved from a static arena,
/// no size classes, no ownership — what the harness costs around the cheapest possible
/// allocator (`floor` in the table).
struct Floor;

thread_local! {
    static FLOOR_FREE: std::cell::Cell<*mut u8> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

// SAFETY: hands out distinct 32-byte blocks (the workload never asks for more); test use only.
unsafe impl GlobalAlloc for Floor {
    #[inline]
    unsafe fn alloc(&self, _l: Layout) -> *mut u8 {
        FLOOR_FREE.with(|f| {
            let p = f.get();
            if p.is_null() {
                // A fresh block; only the warm-up gets here.
                return Box::into_raw(Box::new([0u64; 4])).cast();
            }
            // SAFETY: blocks on the list store the next pointer in their first word.
            f.set(unsafe { p.cast::<*mut u8>().read() });
            p
        })
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        FLOOR_FREE.with(|f| {
            // SAFETY: a 32-byte block this allocator handed out.
            unsafe { p.cast::<*mut u8>().write(f.get()) };
            f.set(p);
        })
    }
}

/// ctxalloc with C's free: blocks are freed without their layout (`ctxalloc::kfree`, what the
/// preload library's `free` calls).
struct Unsized;

// SAFETY: forwards to ctxalloc; `kfree` takes any block ctxalloc handed out.
unsafe impl GlobalAlloc for Unsized {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { ctxalloc::CtxAlloc::new().alloc(l) }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, _l: Layout) {
        // SAFETY: a live block of ctxalloc's.
        unsafe { ctxalloc::kfree(p) }
    }
}

ctxalloc_tests::host_platform!(KernelCpus);
ctxalloc_tests::host_platform!(KernelFitCpus);

/// The kernel shim (threads as CPUs) over a leaked region of 64 MiB, with its exact-fit tier
/// serving every size if `fit` (its small blocks then come and go through the CPU's quick lists).
fn kernel<P: ctxalloc_kernel::Platform + 'static>(
    p: P,
    fit: bool,
) -> &'static Called<ctxalloc_kernel::KernelAlloc<P>> {
    const REGION: usize = 64 << 20;
    let l = Layout::from_size_align(REGION, ctxalloc_kernel::SEGMENT_SIZE).unwrap();
    // SAFETY: a non-zero layout; the region is leaked, ours for ever.
    let k = unsafe {
        let base = std::alloc::alloc_zeroed(l);
        assert!(!base.is_null());
        let k = Box::leak(Box::new(Called(ctxalloc_kernel::KernelAlloc::new(p))));
        k.0.init(base, REGION);
        k
    };
    k.0.core().remove_limit();
    if fit {
        k.0.core().set_exact_fit(Some(0));
    }
    k
}

/// `n` alloc+free pairs of 32 bytes (64 live) through one allocator, for callgrind
/// (`benches/callgrind.sh` runs it with N and 2N and divides the difference by N).
#[derive(clap::Parser, Debug)]
#[command(name = "pairs")]
struct Args {
    /// ctxalloc, ctxalloc-kfree, kernel, kernel-fit, mimalloc, jemalloc, system, floor, or
    /// scopes (save+restore pairs)
    #[arg(default_value = "ctxalloc")]
    which: String,
    /// Pairs to run
    #[arg(default_value_t = 1_000_000)]
    n: usize,
    /// `scope`: run inside a NOFS|NOIO scope
    #[arg(value_parser = ["scope"])]
    scope: Option<String>,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let (which, n) = (args.which, args.n);
    let _g = args.scope.is_some().then(|| ctxalloc::scope(ctxalloc::Gfp::NOFS | ctxalloc::Gfp::NOIO));
    if which == "scopes" {
        // `n` memalloc_nofs_save/restore pairs (callgrind.sh's last row).
        for _ in 0..n {
            let c = ctxalloc::memalloc_nofs_save();
            ctxalloc::memalloc_nofs_restore(black_box(c));
        }
        return;
    }
    if which == "floor" {
        run(&Called(Floor), n);
        return;
    }
    if which == "kernel" {
        run(kernel(KernelCpus, false), n);
        return;
    }
    if which == "kernel-fit" {
        run(kernel(KernelFitCpus, true), n);
        return;
    }
    if which == "ctxalloc-kfree" {
        run(&Called(Unsized), n);
        return;
    }
    with_allocator!(which.as_str(), |a| run(a, n));
}
