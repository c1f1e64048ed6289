//! The kernel shim on the host, threads playing CPUs: the global allocator of this binary is a
//! `KernelAlloc` over a static 256 MiB region (its `early_region`), and a second `KernelAlloc`
//! over a small region carries the reclaim and mempool scenarios.

use ctxalloc_kernel::{Gfp, KernelAlloc, ReclaimClass, ScanResult, ShrinkControl, Shrinker, SEGMENT_SIZE};
use ctxalloc_tests::{Block, Model, Rng};
use std::alloc::GlobalAlloc;
use std::alloc::Layout;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;

ctxalloc_tests::host_platform!(Host, region = 256 << 20);
ctxalloc_tests::host_platform!(Small);

#[global_allocator]
static GLOBAL: KernelAlloc<Host> = KernelAlloc::new(Host);

static SMALL: KernelAlloc<Small> = KernelAlloc::new(Small);
const SMALL_SIZE: usize = 8 << 20;

/// The small machine, initialised once; its tests take `SERIAL` (they share its limit).
fn small() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let region = Box::leak(vec![0u8; SMALL_SIZE].into_boxed_slice());
        // SAFETY: leaked: ours for ever.
        unsafe { SMALL.init(region.as_mut_ptr(), region.len()) };
    });
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_kernel_allocator_is_this_binarys_global_allocator() {
    let v: Vec<Box<[u8; 48]>> = (0..4000).map(|_| Box::new([7; 48])).collect();
    // Every block is the kernel allocator's (the usage figures move with the other tests'
    // traffic, and kept empty pages serve allocations without new ones).
    assert!(v.iter().all(|b| GLOBAL.ksize((&raw const **b).cast()) >= 48));
    assert_eq!(GLOBAL.stats().limit, None, "an early region has no limit unless one is set");
    drop(v);
}

#[test]
fn every_size_and_alignment_from_the_region() {
    let mut model = Model::new();
    let mut seed = 1;
    let mut size = 1usize;
    // Up to 4 MiB (21 blocks of 4–6 MiB live at the top): well inside the 256 MiB region even
    // with the other tests running beside it.
    while size <= 4 << 20 {
        for s in [size, size + 1, size * 3 / 2 + 7] {
            let mut align = 1;
            while align <= 1 << 20 {
                model.insert(Block::new(Layout::from_size_align(s, align).unwrap(), seed));
                seed += 1;
                align <<= 3;
            }
        }
        size <<= 1;
        if model.len() > 200 || size >= 256 << 10 {
            model.verify_all();
            for a in model.addrs() {
                drop(model.take(a));
            }
        }
    }
    model.verify_all();
}

#[test]
fn random_traffic_with_cross_cpu_frees() {
    let (tx, rx) = mpsc::sync_channel::<Vec<Block>>(4);
    let consumer = thread::spawn(move || {
        let mut n = 0;
        for batch in rx {
            for b in batch {
                b.verify();
                n += 1;
            }
        }
        n
    });
    let producers: Vec<_> = (0..2u64)
        .map(|t| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut rng = Rng::new(t + 11);
                for _ in 0..200 {
                    let batch = (0..50)
                        .map(|i| Block::new(Layout::from_size_align(rng.size(1 << 20), 8).unwrap(), i))
                        .collect();
                    tx.send(batch).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 2 * 200 * 50);
}

#[test]
fn scopes_are_per_cpu() {
    let g = GLOBAL.scope(Gfp::NOFS);
    assert_eq!(GLOBAL.current(), Gfp::NOFS);
    assert_eq!(thread::spawn(|| GLOBAL.current()).join().unwrap(), Gfp::KERNEL, "another CPU is unaffected");
    let c = GLOBAL.memalloc_noio_save();
    assert_eq!(GLOBAL.current(), Gfp::NOFS | Gfp::NOIO);
    GLOBAL.memalloc_flags_restore(c);
    drop(g);
    assert_eq!(GLOBAL.current(), Gfp::KERNEL);
}

/// A filesystem-class cache of 256 KiB blocks of the small machine.
struct FsCache {
    blocks: Mutex<Vec<usize>>,
    scans: AtomicUsize,
}

const BLK: usize = 256 << 10;

fn blk() -> Layout {
    Layout::from_size_align(BLK, 4096).unwrap()
}

impl Shrinker for FsCache {
    fn name(&self) -> &str {
        "kernel-fs-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let mut b = self.blocks.lock().unwrap();
        let mut n = 0;
        while n < sc.nr_to_scan {
            let Some(a) = b.pop() else { break };
            // SAFETY: a live block of the small machine.
            unsafe { SMALL.dealloc_with(std::ptr::NonNull::new(a as *mut u8).unwrap(), blk()) };
            n += 1;
        }
        ScanResult::Freed(n)
    }
}

static CACHE: FsCache = FsCache { blocks: Mutex::new(Vec::new()), scans: AtomicUsize::new(0) };

#[test]
fn a_shrinker_under_a_small_region_and_nofs_honoured() {
    let _s = small();
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        SMALL.register_shrinker(&CACHE).unwrap();
    });
    assert_eq!(SMALL.stats().limit, Some(SMALL_SIZE), "the region's size is the limit");
    // Fill the cache until the region refuses.
    while let Ok(p) = SMALL.alloc_with(blk(), Gfp::NORECLAIM | Gfp::NOWARN) {
        CACHE.blocks.lock().unwrap().push(p.as_ptr() as usize);
    }
    let cached = CACHE.blocks.lock().unwrap().len();
    // A 4 MiB segment for the slab's metadata shares the 8 MiB region.
    assert!(cached >= 8, "{cached}");
    let scans = CACHE.scans.load(Ordering::SeqCst);
    // Inside NOFS the FS cache is never reclaimed: the allocation fails instead.
    let nofs = SMALL.scope(Gfp::NOFS);
    assert!(SMALL.alloc_with(blk(), Gfp::NORETRY | Gfp::NOWARN).is_err());
    assert_eq!(CACHE.scans.load(Ordering::SeqCst), scans, "NOFS kept reclaim out of the FS cache");
    drop(nofs);
    // Without the scope, reclaim evicts from the cache and the allocation succeeds.
    let p = SMALL.alloc_with(blk(), Gfp::KERNEL).expect("reclaim made room");
    assert!(CACHE.scans.load(Ordering::SeqCst) > scans);
    let s = SMALL.stats();
    assert!(s.usage <= SMALL_SIZE && s.peak <= SMALL_SIZE, "{s}");
    // SAFETY: live block.
    unsafe { SMALL.dealloc_with(p, blk()) };
    for a in std::mem::take(&mut *CACHE.blocks.lock().unwrap()) {
        // SAFETY: live blocks.
        unsafe { SMALL.dealloc_with(std::ptr::NonNull::new(a as *mut u8).unwrap(), blk()) };
    }
}

#[test]
fn a_mempool_makes_progress_when_the_region_is_exhausted() {
    let _s = small();
    let pool = SMALL.mempool(blk(), 2).unwrap();
    let mut filler = Vec::new();
    while let Ok(p) = SMALL.alloc_with(blk(), Gfp::NORECLAIM | Gfp::NOWARN) {
        filler.push(p);
    }
    thread::scope(|s| {
        for t in 0..4usize {
            let pool = &pool;
            s.spawn(move || {
                for r in 0..500usize {
                    let e = pool.alloc(Gfp::NOIO).expect("a sleeping mempool alloc never fails");
                    // SAFETY: an element of ours; the mark proves exclusive use.
                    unsafe {
                        e.as_ptr().cast::<usize>().write(t << 32 | r);
                        thread::yield_now();
                        assert_eq!(e.as_ptr().cast::<usize>().read(), t << 32 | r);
                        pool.free(e);
                    }
                }
            });
        }
    });
    assert_eq!(pool.curr_nr(), 2);
    for p in filler {
        // SAFETY: live blocks.
        unsafe { SMALL.dealloc_with(p, blk()) };
    }
}

#[test]
fn large_areas_are_contiguous_spans_of_the_region() {
    let l = Layout::from_size_align(12 << 20, 1 << 20).unwrap();
    let p = GLOBAL.alloc_with(l, Gfp::ZERO).unwrap();
    assert_eq!(p.as_ptr() as usize % (1 << 20), 0);
    // SAFETY: 12 MiB of ours.
    unsafe {
        assert!(std::slice::from_raw_parts(p.as_ptr(), 12 << 20).iter().all(|&b| b == 0));
        p.as_ptr().write_bytes(0xA5, 12 << 20);
        GLOBAL.dealloc_with(p, l);
    }
}

ctxalloc_tests::host_platform!(Aligned);
static ALIGNED: KernelAlloc<Aligned> = KernelAlloc::new(Aligned);

#[test]
fn every_segment_of_an_aligned_region_holds_small_objects() {
    // The allocator's own metadata (per-CPU heaps, the shrinker registry) lives in segment
    // headers: it takes no span that would break a segment's alignment, so a region of two
    // segments holds small blocks up to its limit (its size less the emergency reserve).
    const SIZE: usize = 2 * SEGMENT_SIZE;
    let region_layout = Layout::from_size_align(SIZE, SEGMENT_SIZE).unwrap();
    // SAFETY: a non-zero layout; the region is never freed (the allocator keeps it).
    let region = unsafe { std::alloc::System.alloc_zeroed(region_layout) };
    assert!(!region.is_null());
    // SAFETY: ours for ever.
    unsafe { ALIGNED.init(region, SIZE) };
    let l = Layout::from_size_align(64, 8).unwrap();
    let mut blocks = Vec::new();
    while let Ok(p) = ALIGNED.alloc_with(l, Gfp::NOWARN) {
        blocks.push(p);
    }
    let held = blocks.len() * l.size();
    let limit = SIZE - ctxalloc_kernel::emergency_reserve(SIZE);
    assert!(
        held >= limit - limit / 16,
        "held {held} of a {SIZE}-byte region (limit {limit})\n{}",
        ALIGNED.stats()
    );
    assert_eq!(ALIGNED.stats().segments, 2);
    for p in blocks {
        // SAFETY: allocated above with `l`.
        unsafe { ALIGNED.dealloc_with(p, l) };
    }
}

#[test]
fn kfree_ksize_and_krealloc_find_blocks_from_their_address() {
    // C-style code in a kernel frees without a size: slab blocks and large areas are found
    // from the address alone, and a pointer from elsewhere is refused, not followed.
    let mut ptrs = Vec::new();
    for (i, size) in [1usize, 100, 3000, 40_000, 70_000, 3 << 20].into_iter().enumerate() {
        // SAFETY: null allocates; the size is small.
        let p = unsafe { GLOBAL.krealloc(std::ptr::null_mut(), size, Gfp::KERNEL) };
        assert!(!p.is_null() && GLOBAL.ksize(p) >= size);
        // SAFETY: `size` bytes of ours.
        unsafe { p.write_bytes(i as u8, size) };
        ptrs.push((p, size, i as u8));
    }
    for (p, size, v) in &mut ptrs {
        // SAFETY: a live block; it grows (or moves) keeping its bytes.
        let q = unsafe { GLOBAL.krealloc(*p, *size * 2 + 1, Gfp::NOFS) };
        assert!(!q.is_null());
        // SAFETY: the first `size` bytes were copied.
        assert!(unsafe { std::slice::from_raw_parts(q, *size) }.iter().all(|b| b == v));
        *p = q;
    }
    let bad_before = GLOBAL.stats().bad_frees;
    let local = [0u8; 64];
    // SAFETY: a pointer this allocator never handed out: reported and ignored.
    unsafe { GLOBAL.kfree(local.as_ptr().cast_mut()) };
    assert_eq!(GLOBAL.ksize(local.as_ptr()), 0);
    assert_eq!(GLOBAL.stats().bad_frees, bad_before + 1);
    for (p, _, _) in ptrs {
        // SAFETY: live blocks, given up.
        unsafe { GLOBAL.kfree(p) };
    }
    assert_eq!(GLOBAL.stats().bad_frees, bad_before + 1);
}
