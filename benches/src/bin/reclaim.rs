//! The cost of the slow path: allocations per second of 64 KiB blocks kept in a cache, without
//! a limit (every block is fresh memory or a reused one) and under a limit where the cache is a
//! shrinker and every new block must first be reclaimed from it (direct reclaim on this thread,
//! background reclaim on its own).
//!
//! `cargo run --release -p ctxalloc-benches --bin reclaim`

use ctxalloc::{ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const BLOCK: usize = 64 << 10;

struct Cache(Mutex<VecDeque<Vec<u8>>>);

impl Shrinker for Cache {
    fn name(&self) -> &str {
        "bench-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Other
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.0.try_lock().map_or(0, |c| c.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let Ok(mut c) = self.0.try_lock() else { return ScanResult::Stop };
        let n = sc.nr_to_scan.min(c.len());
        c.drain(..n);
        ScanResult::Freed(n)
    }
    fn batch(&self) -> usize {
        16
    }
}

/// Allocates `n` blocks into the cache; without a limit the cache keeps at most `keep`.
fn run(cache: &Cache, n: usize, keep: Option<usize>) -> f64 {
    let start = Instant::now();
    for i in 0..n {
        let v = vec![i as u8; BLOCK];
        let mut c = cache.0.lock().unwrap();
        c.push_back(v);
        if keep.is_some_and(|k| c.len() > k) {
            c.pop_front();
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n = 200_000;
    let cache = Arc::new(Cache(Mutex::new(VecDeque::new())));
    // Warm-up, then the same working set (256 blocks = 16 MiB) without a limit.
    run(&cache, 1000, Some(256));
    let free = run(&cache, n, Some(256));
    cache.0.lock().unwrap().clear();
    ctxalloc::trim();

    let handle = ctxalloc::register_shrinker(cache.clone());
    ctxalloc::set_limit(ctxalloc::usage() + (16 << 20)).expect("a workable limit");
    let before = ctxalloc::stats();
    let reclaiming = run(&cache, n, None);
    let after = ctxalloc::stats();
    ctxalloc::remove_limit();
    drop(handle);

    println!("64 KiB allocations per second, 16 MiB working set");
    println!("  no limit (blocks reused by the program):        {free:>12.0}");
    println!("  at the limit (every block reclaimed first):      {reclaiming:>12.0}");
    println!("  ratio: {:.2}× the cost", free / reclaiming);
    println!(
        "  while reclaiming: {} direct-reclaim rounds, {} background reclaims, {} failures",
        after.reclaim_rounds - before.reclaim_rounds,
        after.background_passes - before.background_passes,
        after.alloc_failures - before.alloc_failures
    );
}
