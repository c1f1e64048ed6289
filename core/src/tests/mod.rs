//! Tests of the whole core over the mock platform. They run natively and under miri (strict
//! provenance, Stacked Borrows); miri gets smaller counts.

use crate::mock::model::Model;
use crate::mock::MockPlatform;
use crate::size_class::SLAB_MAX;
use crate::{Core, Gfp, Platform, ThreadCtx, SEGMENT_SIZE, SLICE_SIZE};
use core::alloc::Layout;
use std::sync::mpsc;
use std::thread;
use std::vec::Vec;

const MIRI: bool = cfg!(miri);

fn new_core(mib: usize) -> Core<MockPlatform> {
    Core::new(MockPlatform::new(mib << 20))
}

/// xorshift64*: deterministic, seedable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Frees everything the calling thread keeps and checks that all memory came back: only the
/// segment holding the heaps (pinned, its header slice charged) and the vmap table (if any) stay.
fn assert_all_returned(core: &Core<MockPlatform>) {
    core.trim();
    let s = core.stats();
    assert_eq!(s.slab_pages, 0, "{s}");
    assert!(s.segments <= 1, "{s}");
    assert_eq!(s.vmap_areas, 0, "{s}");
    assert_eq!(s.abandoned_pages, 0, "{s}");
    assert!(s.usage <= SLICE_SIZE + 4096, "usage {} after everything was freed\n{s}", s.usage);
    // Beyond the segments: the vmap table, a page.
    let mapped = core.platform().mapped_bytes();
    assert!(mapped <= s.segments * SEGMENT_SIZE + 4096, "mapped {mapped} after everything was freed\n{s}");
}

#[test]
fn sizes_and_alignments_through_the_contract() {
    let core = new_core(if MIRI { 24 } else { 96 });
    let mut m = Model::new(&core);
    let sizes: &[usize] = if MIRI {
        &[1, 16, 17, 1025, 4000, SLAB_MAX, SLAB_MAX + 1, 100_000]
    } else {
        &[
            1,
            2,
            7,
            8,
            15,
            16,
            17,
            24,
            31,
            32,
            33,
            100,
            127,
            128,
            129,
            500,
            1000,
            1024,
            1025,
            2000,
            4095,
            4096,
            4097,
            10_000,
            32_768,
            40_000,
            SLAB_MAX,
            SLAB_MAX + 1,
            100_000,
            1 << 20,
            3 << 20,
        ]
    };
    let max_align = if MIRI { 1 << 16 } else { 2 << 20 };
    for &size in sizes {
        let mut align = 1;
        while align <= max_align {
            assert!(m.alloc(size, align, Gfp::KERNEL), "alloc({size}, {align})");
            assert!(m.alloc(size, align, Gfp::ZERO), "alloc_zeroed({size}, {align})");
            align *= if MIRI { 16 } else { 2 };
            // Keep memory bounded: a few blocks stay live across sizes.
            while m.len() > 6 {
                m.free(m.len() / 2);
            }
        }
    }
    m.check_all();
    m.free_all();
    assert_all_returned(&core);
}

#[test]
fn realloc_preserves_bytes_on_every_path() {
    let core = new_core(32);
    let mut m = Model::new(&core);
    // slab → slab (in place and moving), slab → vmap, vmap → vmap (grow by remap, shrink in
    // place), vmap → slab, aligned.
    for align in [8, 64, 4096] {
        assert!(m.alloc(20, align, Gfp::KERNEL));
        let i = m.len() - 1;
        let big = if MIRI { 80_000 } else { 1 << 20 };
        let steps = [24, 30, 200, 5000, 70_000, 2 * big, big, big / 2, 100_000.min(big), 3000, 10];
        for new in steps {
            assert!(m.realloc(i, new), "realloc to {new} (align {align})");
        }
    }
    m.free_all();
    assert_all_returned(&core);
}

#[test]
fn zeroed_memory_is_zero_also_when_reused() {
    let core = new_core(16);
    let mut m = Model::new(&core);
    // Dirty blocks of several classes, freed, then reused by zeroed allocations.
    for round in 0..3 {
        for size in [16, 48, 256, 3000, 20_000, 100_000] {
            for _ in 0..(if MIRI { 3 } else { 40 }) {
                assert!(m.alloc(size, 8, if round == 0 { Gfp::KERNEL } else { Gfp::ZERO }));
            }
        }
        m.free_all();
    }
}

#[test]
fn random_operations_against_the_model() {
    let core = new_core(64);
    for seed in 1..=(if MIRI { 1u64 } else { 8 }) {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut m = Model::new(&core);
        for _ in 0..(if MIRI { 150 } else { 20_000 }) {
            match rng.below(10) {
                0..=4 => {
                    let size = match rng.below(20) {
                        0 => rng.below(if MIRI { 100_000 } else { 400_000 }) as usize,
                        1..=3 => rng.below(SLAB_MAX as u64 + 1) as usize,
                        _ => rng.below(600) as usize,
                    };
                    let big = rng.below(8) == 0;
                    let align = 1 << rng.below(if big { 14 } else { 5 });
                    let flags = if rng.below(4) == 0 { Gfp::ZERO } else { Gfp::KERNEL };
                    m.alloc(size, align, flags);
                }
                5..=6 => m.free(rng.next() as usize),
                7 => m.kfree(rng.next() as usize),
                8 => {
                    let new = if rng.below(5) == 0 { rng.below(300_000) } else { rng.below(2000) };
                    m.realloc(rng.next() as usize, new as usize);
                }
                _ => {
                    let new = if rng.below(5) == 0 { rng.below(300_000) } else { rng.below(2000) };
                    m.krealloc(rng.next() as usize, new as usize);
                }
            }
            let usage = core.usage();
            assert!(usage >= m.live_bytes(), "usage {usage} below live bytes {}", m.live_bytes());
            assert!(usage <= core.platform().mapped_bytes());
            assert_eq!(core.audit_usage(), usage, "the accounting drifted from the structures");
        }
        m.check_all();
    }
    assert_all_returned(&core);
}

#[test]
fn cross_thread_frees_are_reused_by_the_owner() {
    let core = new_core(32);
    let rounds = if MIRI { 2 } else { 20 };
    let n = if MIRI { 50 } else { 5000 };
    let (tx, rx) = mpsc::sync_channel::<Vec<usize>>(1);
    let l = Layout::from_size_align(48, 8).unwrap();
    thread::scope(|s| {
        let core = &core;
        s.spawn(move || {
            for batch in rx {
                for a in batch {
                    // SAFETY: blocks allocated by the producer with `l`.
                    unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
                }
            }
            core.thread_exit();
        });
        let mut peak = 0;
        for _ in 0..rounds {
            let batch: Vec<usize> = (0..n)
                // SAFETY: a valid layout.
                .map(|_| unsafe { core.alloc(l) }.addr())
                .collect();
            assert!(batch.iter().all(|&a| a != 0));
            tx.send(batch).unwrap();
            peak = peak.max(core.usage());
        }
        drop(tx);
        // Two batches in flight at most: remote frees were reused, not leaked.
        let per_batch = n * 48;
        assert!(peak <= 4 * per_batch + (1 << 20), "peak {peak} for batches of {per_batch}");
    });
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn a_thread_whose_first_call_is_a_free_frees_remotely_then_allocates() {
    // The fast paths ask the platform for a context it already has (the mock: none until
    // `thread` ran on the thread); a thread without one frees to the owner's remote list and
    // gets its context on its first allocation.
    let core = new_core(8);
    let l = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a valid layout.
    let p = unsafe { core.alloc(l) };
    assert!(!p.is_null());
    let a = p.addr();
    thread::scope(|s| {
        s.spawn(|| {
            assert_eq!(core.platform().thread_if_any(), ThreadCtx::none());
            // SAFETY: the main thread's block, given up.
            unsafe { core.kfree(core.platform().ptr_from_addr(a)) };
            assert_eq!(core.platform().thread_if_any(), ThreadCtx::none(), "a remote free needs no context");
            // SAFETY: a valid layout.
            let q = unsafe { core.alloc(l) };
            assert!(!q.is_null() && q.addr() != a);
            assert_ne!(core.platform().thread_if_any(), ThreadCtx::none());
            // SAFETY: this thread's block.
            unsafe { core.dealloc(q, l) };
            core.thread_exit();
        });
    });
    // The owner finds the block on its page's remote list.
    let per_page = SLICE_SIZE / 48 + 1;
    let mut got = Vec::new();
    let found = (0..per_page).any(|_| {
        // SAFETY: a valid layout.
        let q = unsafe { core.alloc(l) };
        got.push(q);
        q.addr() == a
    });
    assert!(found, "the remotely freed block never came back");
    for q in got {
        // SAFETY: blocks of `l`.
        unsafe { core.dealloc(q, l) };
    }
    core.thread_exit();
    assert_all_returned(&core);
}

/// A thread allocates `n` blocks of a few sizes and exits; its blocks outlive it.
fn blocks_of_an_exited_thread(core: &Core<MockPlatform>, n: usize) -> Vec<(usize, Layout)> {
    let sizes = [16, 100, 2000, 30_000];
    thread::scope(|s| {
        s.spawn(|| {
            let v: Vec<_> = (0..n)
                .map(|i| {
                    let l = Layout::from_size_align(sizes[i % sizes.len()], 8).unwrap();
                    // SAFETY: valid layout.
                    let p = unsafe { core.alloc(l) };
                    assert!(!p.is_null());
                    (p.addr(), l)
                })
                .collect();
            core.thread_exit();
            v
        })
        .join()
        .unwrap()
    })
}

#[test]
fn the_next_thread_takes_an_exited_threads_heap_whole() {
    // What larson and thread pools do: a thread hands its blocks to its successor and exits.
    // The successor gets the vacant heap — its pages, for every class — so it allocates
    // without a fresh page and its frees of the blocks are local: pages empty out at once.
    let core = new_core(32);
    let n = if MIRI { 40 } else { 3000 };
    let blocks = blocks_of_an_exited_thread(&core, n);
    let s = core.stats();
    assert_eq!((s.heaps, s.vacant_heaps, s.abandoned_pages), (0, 1, 0), "{s}");
    let pages = s.slab_pages;
    thread::scope(|s| {
        s.spawn(|| {
            let l = Layout::from_size_align(100, 8).unwrap();
            // SAFETY: valid layout; the thread's first allocation takes the vacant heap.
            let p = unsafe { core.alloc(l) };
            let st = core.stats();
            assert_eq!((st.heaps, st.vacant_heaps, st.slab_pages), (1, 0, pages), "{st}");
            for &(b, l) in &blocks {
                // SAFETY: live blocks with their layouts.
                unsafe { core.dealloc(core.platform().ptr_from_addr(b), l) };
            }
            // SAFETY: this thread's block.
            unsafe { core.dealloc(p, l) };
            // Local frees: every page went back or is the one kept per class, without a trim.
            let st = core.stats();
            assert!(st.slab_pages <= 4, "{st}");
            core.thread_exit();
        });
    });
    assert_all_returned(&core);
}

#[test]
fn freeing_the_blocks_of_an_exited_thread_gives_its_pages_back_while_its_heap_waits() {
    // Frees into a vacant heap's pages are remote frees; the freeing thread collects the page
    // and gives it back once it holds no live block — no trim, no next thread needed.
    let core = new_core(32);
    let n = if MIRI { 40 } else { 3000 };
    let blocks = blocks_of_an_exited_thread(&core, n);
    let before = core.stats();
    assert_eq!(before.vacant_heaps, 1, "{before}");
    for &(b, l) in &blocks {
        // SAFETY: live blocks with their layouts.
        unsafe { core.dealloc(core.platform().ptr_from_addr(b), l) };
    }
    let s = core.stats();
    assert_eq!(s.vacant_heaps, 1, "the heap still waits for a thread\n{s}");
    // What stays: the page each class allocates from (the next thread's warm start), and the
    // one the last of its blocks was freed into if that is it.
    assert!(s.slab_pages <= 4 && s.slab_pages < before.slab_pages, "{before}\n{s}");
    assert_all_returned(&core);
}

#[test]
fn at_most_max_vacant_heaps_wait_and_the_oldest_is_dissolved() {
    // One more thread than vacant heaps are kept, all holding a heap at once, then all exiting
    // with a block live: the heap vacated first is dissolved, its page abandoned.
    let core = new_core(64);
    let l = Layout::from_size_align(100, 8).unwrap();
    let n = crate::slab::MAX_VACANT + 1;
    let all_have_heaps = std::sync::Barrier::new(n);
    let kept: Vec<usize> = thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    // SAFETY: a valid layout.
                    let p = unsafe { core.alloc(l) };
                    all_have_heaps.wait();
                    core.thread_exit();
                    p.addr()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let s = core.stats();
    assert_eq!((s.heaps, s.vacant_heaps), (0, crate::slab::MAX_VACANT), "{s}");
    assert_eq!(s.abandoned_pages, 1, "the oldest vacant heap was dissolved\n{s}");
    for p in kept {
        // SAFETY: live blocks of `l`.
        unsafe { core.dealloc(core.platform().ptr_from_addr(p), l) };
    }
    assert_all_returned(&core);
}

#[test]
fn pages_of_exited_threads_are_adopted_and_returned() {
    let core = new_core(32);
    let n = if MIRI { 40 } else { 3000 };
    let blocks = blocks_of_an_exited_thread(&core, n);
    // Dissolved (as its purge delay or a trim does): its pages with live blocks are abandoned.
    core.trim();
    let s = core.stats();
    assert!(s.abandoned_pages > 0, "{s}");
    assert_eq!((s.heaps, s.vacant_heaps), (0, 0), "the exited heap went back to the pool\n{s}");
    // Half freed by a thread without a heap (locked path), half by one with a heap (adoption).
    let (a, b) = blocks.split_at(blocks.len() / 2);
    thread::scope(|s| {
        s.spawn(|| {
            for &(p, l) in a {
                // SAFETY: live blocks with their layouts.
                unsafe { core.dealloc(core.platform().ptr_from_addr(p), l) };
            }
        });
    });
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: valid layout; gives this thread a heap.
    unsafe { core.dealloc(core.alloc(l), l) };
    for &(p, l) in b {
        // SAFETY: live blocks with their layouts.
        unsafe { core.dealloc(core.platform().ptr_from_addr(p), l) };
    }
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn allocation_after_thread_exit_uses_the_orphan_heap() {
    let core = new_core(16);
    thread::scope(|s| {
        s.spawn(|| {
            let l = Layout::from_size_align(40, 8).unwrap();
            // SAFETY: valid layout.
            let a = unsafe { core.alloc(l) };
            core.thread_exit();
            // What a later thread-local destructor would do.
            // SAFETY: valid layout.
            let b = unsafe { core.alloc(l) };
            assert!(!a.is_null() && !b.is_null() && a != b);
            // SAFETY: live blocks.
            unsafe {
                core.dealloc(a, l);
                core.dealloc(b, l);
            }
        });
    });
    assert_eq!(core.stats().heaps, 1, "only the orphan heap is held");
}

#[test]
fn vmap_descriptor_is_allocated_in_the_callers_context() {
    // R2.1: the descriptor of a per-call NOFS large allocation comes from the slab inside a NOFS
    // scope, so the page source (and, later, reclaim) sees NOFS; afterwards the word is clean.
    let core = new_core(16);
    let l = Layout::from_size_align(1 << 20, 8).unwrap();
    let p = core.alloc_with(l, Gfp::NOFS | Gfp::NOWARN).unwrap();
    assert_eq!(core.current(), Gfp::KERNEL, "the internal scope was closed");
    let ctx = core.platform().map_contexts();
    // Maps: the segment for the heap and the descriptor (NOFS), the vmap table, the area itself.
    assert!(ctx.len() >= 3, "{ctx:?}");
    assert_eq!(ctx[0], Gfp::NOFS, "segment mapped for the descriptor: {ctx:?}");
    // A NOIO request carries NOIO (and so NOFS) into its metadata too.
    let q = core.alloc_with(Layout::from_size_align(3 << 20, 4096).unwrap(), Gfp::NOIO);
    assert!(q.is_ok());
    // SAFETY: live blocks.
    unsafe {
        core.dealloc(p.as_ptr(), l);
        core.dealloc(q.unwrap().as_ptr(), Layout::from_size_align(3 << 20, 4096).unwrap());
    }
    assert_all_returned(&core);
}

/// A failure at the limit names the real ceiling: the limit and the reserve below it.
#[test]
fn a_failure_at_the_limit_names_the_reserve() {
    let core = new_core(8);
    core.set_limit(400 << 10).expect("above the minimum");
    let l = Layout::from_size_align(300 << 10, 8).unwrap();
    assert!(core.alloc_with(l, Gfp::NORECLAIM).is_err());
    let reports = core.platform().reports();
    assert!(
        reports.iter().any(|r| r.contains("of limit 400 KiB, 200 KiB of it the emergency reserve")),
        "{reports:?}"
    );
    assert!(core.set_limit(Core::<MockPlatform>::MIN_LIMIT - 1).is_err());
    assert_eq!(core.limit(), Some(400 << 10));
    core.remove_limit();
}

#[test]
fn exhaustion_returns_null_and_reports_once() {
    let core = new_core(8);
    core.platform().fail_all_maps(true);
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: valid layout.
    assert!(unsafe { core.alloc(l) }.is_null());
    assert!(core.alloc_with(Layout::from_size_align(1 << 20, 8).unwrap(), Gfp::KERNEL).is_err());
    assert!(core.alloc_with(l, Gfp::NOWARN).is_err());
    let reports = core.platform().reports();
    assert_eq!(reports.len(), 1, "rate-limited to one: {reports:?}");
    assert!(reports[0].contains("allocation of 64 bytes failed"), "{reports:?}");
    assert_eq!(core.stats().alloc_failures, 3);
    // An impossible size fails cleanly.
    core.platform().fail_all_maps(false);
    assert!(core
        .alloc_with(Layout::from_size_align(isize::MAX as usize - 4096, 8).unwrap(), Gfp::NOWARN)
        .is_err());
    // And memory flows again once the source recovers.
    // SAFETY: valid layout.
    let p = unsafe { core.alloc(l) };
    assert!(!p.is_null());
    // SAFETY: live block.
    unsafe { core.dealloc(p, l) };
}

/// Regression (fuzz target `ops`): a thread's first allocation, NOFAIL inside a MEMALLOC
/// scope, failed when the page source refused the segment for the thread's heap — the heap was
/// charged as a plain allocation, which in that scope may not reclaim and so failed at once.
#[test]
fn a_nofail_first_allocation_gets_its_heap_despite_page_source_failures() {
    let core = new_core(32);
    let c = core.scope_save(Gfp::MEMALLOC, core::panic::Location::caller());
    core.platform().fail_next_maps(2);
    let l = Layout::from_size_align(128, 8).unwrap();
    let p = core.alloc_with(l, Gfp::NOFAIL).expect("NOFAIL must not fail when memory exists");
    core.scope_restore(c);
    // SAFETY: the live block.
    unsafe { core.dealloc(p.as_ptr(), l) };
    assert_eq!(core.stats().alloc_failures, 0);
}

#[test]
fn injected_page_source_failures_lose_nothing() {
    let core = new_core(32);
    let mut m = Model::new(&core);
    let mut rng = Rng(77);
    for i in 0..(if MIRI { 100 } else { 5000 }) {
        if i % 50 == 0 {
            core.platform().fail_next_maps(rng.below(3) as usize);
        }
        if rng.below(3) < 2 {
            let big = if MIRI { 70_000 } else { 200_000 };
            let size = if rng.below(10) == 0 { big } else { rng.below(3000) as usize };
            m.alloc(size, 8, Gfp::NOWARN);
        } else {
            m.free(rng.next() as usize);
        }
    }
    m.check_all();
    m.free_all();
    assert_all_returned(&core);
}

#[test]
fn a_bad_large_free_is_reported_with_the_pointer() {
    let core = new_core(8);
    let l = Layout::from_size_align(100_000, 8).unwrap();
    // SAFETY: valid layout.
    let p = unsafe { core.alloc(l) };
    // SAFETY: live block, then freed twice.
    unsafe {
        core.dealloc(p, l);
        core.dealloc(p, l);
    }
    let r = core.platform().reports();
    let want = std::format!("{p:p}");
    assert!(r.iter().any(|m| m.contains(&want) && m.contains("double free")), "{r:?}");
    assert_eq!(core.stats().bad_frees, 1);
}

#[test]
fn scopes_through_the_core() {
    let core = new_core(8);
    let here = core::panic::Location::caller();
    let a = core.scope_save(Gfp::NOFS, here);
    let b = core.scope_save(Gfp::NOIO, here);
    assert_eq!(core.current(), Gfp::NOFS | Gfp::NOIO);
    assert!(core.effective(Gfp::KERNEL).gfp().contains(Gfp::NOFS));
    core.scope_restore(a);
    core.scope_restore(b);
    assert_eq!(core.current(), Gfp::KERNEL);
    let mispairs = core.stats().scope_mispairs;
    assert_eq!(mispairs, u64::from(cfg!(debug_assertions)));
    if cfg!(debug_assertions) {
        assert!(core.platform().reports()[0].contains("out of order"));
    }
    // Scopes are per thread.
    let c = core.scope_save(Gfp::NOFS, here);
    thread::scope(|s| {
        s.spawn(|| assert_eq!(core.current(), Gfp::KERNEL));
    });
    core.scope_restore(c);
}

#[test]
fn fork_child_abandons_the_heaps_of_missing_threads() {
    let core = new_core(16);
    let l = Layout::from_size_align(256, 8).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let (btx, brx) = mpsc::channel::<Vec<usize>>();
    thread::scope(|s| {
        let core = &core;
        s.spawn(move || {
            // SAFETY: valid layout.
            let v: Vec<usize> = (0..20).map(|_| unsafe { core.alloc(l) }.addr()).collect();
            btx.send(v).unwrap();
            rx.recv().unwrap(); // stays alive, like a thread that exists in the parent only
        });
        let blocks = brx.recv().unwrap();
        // SAFETY: gives this thread a heap.
        unsafe { core.dealloc(core.alloc(l), l) };
        // What pthread_atfork does around fork(), with this thread as the child's only one.
        core.fork_prepare();
        // SAFETY: this thread ran fork_prepare; the other thread is treated as gone.
        unsafe { core.fork_child() };
        let st = core.stats();
        assert!(st.abandoned_pages >= 1, "{st}");
        assert_eq!(st.heaps, 1, "{st}");
        for a in blocks {
            // SAFETY: live blocks of the "vanished" thread.
            unsafe { core.dealloc(core.platform().ptr_from_addr(a), l) };
        }
        tx.send(()).unwrap();
    });
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn dirty_slices_are_purged_past_the_threshold() {
    if MIRI {
        return; // needs tens of MiB of blocks
    }
    let slack = crate::slab::PURGE_SLACK;
    let core = new_core((3 * slack) >> 20);
    let l = Layout::from_size_align(4096, 8).unwrap();
    // Twice the slack and more of 4 KiB blocks; keep one block per four 64 KiB pages so
    // segments stay partly used (a quarter of the pages stay).
    let n = (2 * slack + (8 << 20)) / 4096;
    // SAFETY: valid layout.
    let blocks: Vec<*mut u8> = (0..n).map(|_| unsafe { core.alloc(l) }).collect();
    let per_page = 16;
    for (i, &p) in blocks.iter().enumerate() {
        if i % (per_page * 4) != 0 {
            // SAFETY: live blocks.
            unsafe { core.dealloc(p, l) };
        }
    }
    let s = core.stats();
    assert!(s.purged_bytes > 0, "{s}");
    // Kept: the pages in use and at most the slack (plus an eighth of usage) of dirty ones.
    assert!(s.usage < (n * 4096) / 4 + slack + s.usage / 8 + (1 << 20), "{s}");
    for (i, &p) in blocks.iter().enumerate() {
        if i % (per_page * 4) == 0 {
            // SAFETY: live blocks.
            unsafe { core.dealloc(p, l) };
        }
    }
    assert_all_returned(&core);
}

#[test]
fn fork_child_leaves_a_heap_caught_in_a_slow_path_alone() {
    let core = new_core(16);
    let l = Layout::from_size_align(256, 8).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    let (htx, hrx) = mpsc::channel::<usize>();
    thread::scope(|s| {
        let core = &core;
        s.spawn(move || {
            // SAFETY: valid layout; the block stays live in this thread's heap.
            let p = unsafe { core.alloc(l) };
            // SAFETY: this thread's context.
            let heap = unsafe { (*core.platform().thread()).heap.get() };
            // As if the thread were inside `find_page` when the process forked.
            // SAFETY: this thread owns the heap.
            unsafe { (*heap).busy.store(true, core::sync::atomic::Ordering::Release) };
            htx.send(heap.addr()).unwrap();
            rx.recv().unwrap();
            // SAFETY: the block and heap are still ours in the "parent".
            unsafe {
                (*heap).busy.store(false, core::sync::atomic::Ordering::Release);
                core.dealloc(p, l);
            }
        });
        let _ = hrx.recv().unwrap();
        // SAFETY: gives this thread a heap.
        unsafe { core.dealloc(core.alloc(l), l) };
        let before = core.stats();
        core.fork_prepare();
        // SAFETY: this thread ran fork_prepare.
        unsafe { core.fork_child() };
        let after = core.stats();
        assert_eq!(after.heaps, before.heaps, "the busy heap was not abandoned\n{after}");
        assert_eq!(after.abandoned_pages, 0, "{after}");
        tx.send(()).unwrap();
    });
}

mod atomic;
mod bad_free;
mod calls_out;
mod fit;
mod mempool;
mod per_call;
mod pressure;
mod reclaim;
mod unsized_free;

#[test]
fn the_only_page_of_a_class_is_kept_empty_for_the_next_slow_paths() {
    // A class whose only page empties keeps it (and its free list) for RETIRE_CYCLES slow
    // paths of the heap, then gives it back.
    let core = new_core(16);
    let small = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: a valid layout; the block is freed at once.
    let p = unsafe { core.alloc(small) };
    // SAFETY: as above.
    unsafe { core.dealloc(p, small) };
    assert_eq!(core.ksize(p), 48, "the empty page was kept");
    // SAFETY: as above.
    let q = unsafe { core.alloc(small) };
    let page = |a: *mut u8| a.addr() & !(SLICE_SIZE - 1);
    assert_eq!(page(q), page(p), "the kept page served the next allocation");
    // SAFETY: as above.
    unsafe { core.dealloc(q, small) };
    // Each allocation takes at most one slow path: the page goes back after RETIRE_CYCLES.
    let big = Layout::from_size_align(16 << 10, 8).unwrap();
    let mut held = Vec::new();
    while core.ksize(p) != 0 {
        // SAFETY: a valid layout.
        held.push(unsafe { core.alloc(big) });
        assert!(held.len() < 10_000, "the empty page was never given back");
    }
    let cycles = crate::slab::heap::RETIRE_CYCLES as usize;
    assert!(held.len() >= cycles, "given back after {} allocations", held.len());
    for b in held {
        // SAFETY: blocks of `big`.
        unsafe { core.dealloc(b, big) };
    }
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn freed_memory_goes_back_after_the_purge_delay_without_a_trim() {
    // An idle program holds no empty page, and the background thread's `purge_aged` gives back
    // the dirty slices once they have waited PURGE_DELAY_NS — not before (a working set that
    // shrinks and regrows keeps its pages). The mock's clock advances 1 ms per reading.
    let core = new_core(if MIRI { 16 } else { 64 });
    let mut live = Vec::new();
    let sizes = if MIRI { 64..=1024 } else { 64..=4096 };
    for size in sizes.clone().step_by(if MIRI { 240 } else { 16 }) {
        let l = Layout::from_size_align(size, 8).unwrap();
        for _ in 0..(if MIRI { 4 } else { 64 }) {
            live.push((core.alloc_with(l, Gfp::KERNEL).unwrap(), l));
        }
    }
    assert!(core.stats().slab_pages >= if MIRI { 5 } else { 40 }, "{}", core.stats());
    for (p, l) in live {
        // SAFETY: live blocks of `l`.
        unsafe { core.dealloc(p.as_ptr(), l) };
    }
    // A live thread keeps at most one empty page per class (for its next slow paths, tested
    // below); at exit its heap waits, whole, for the next thread — until the purge delay.
    let classes = sizes.step_by(if MIRI { 240 } else { 16 }).count();
    assert!(core.stats().slab_pages <= classes, "{}", core.stats());
    core.thread_exit();
    let s = core.stats();
    assert_eq!((s.heaps, s.vacant_heaps), (0, 1), "{s}");
    assert!(s.slab_pages <= classes, "{s}");
    let dirty = core.usage();
    assert!(dirty > SLICE_SIZE, "{s}");
    assert!(core.purge_aged(), "dirty memory is waiting");
    assert_eq!(core.usage(), dirty, "nothing purged before the delay");
    let mut calls = 1;
    while core.purge_aged() {
        calls += 1;
        assert!(calls < 10_000, "never purged");
    }
    assert!(calls as u64 * 1_000_000 >= crate::PURGE_DELAY_NS / 2, "purged after {calls} ms");
    let s = core.stats();
    assert!(s.usage <= SLICE_SIZE, "usage {} after the purge\n{s}", s.usage);
    assert_eq!((s.slab_pages, s.vacant_heaps), (0, 0), "the vacant heap was dissolved\n{s}");
    // The statistics say who gave it back: idle purges, every byte of it.
    assert!(s.aged_purges >= 1, "{s}");
    assert_eq!(s.aged_purged_bytes, (dirty - s.usage) as u64, "{s}");
}

#[test]
fn a_large_area_cache_in_use_outlives_the_purge_delay_and_goes_once_idle() {
    // The aged flush skips a cache that served an allocation during the delay; once nothing
    // is served for a delay, the areas go back. (The mock's clock advances 1 ms per reading.)
    let core = new_core(64);
    let ballast = Layout::from_size_align(16 << 20, 8).unwrap();
    let b = core.alloc_with(ballast, Gfp::KERNEL).unwrap();
    let l = Layout::from_size_align(2 << 20, 8).unwrap();
    // SAFETY: a valid layout; the area is freed into the cache.
    unsafe { core.dealloc(core.alloc(l), l) };
    let maps = core.stats().os_maps;
    let rounds = 4 * (crate::PURGE_DELAY_NS / 1_000_000);
    for _ in 0..rounds {
        core.purge_aged();
        // SAFETY: as above.
        unsafe { core.dealloc(core.alloc(l), l) };
    }
    assert_eq!(core.stats().os_maps, maps, "every allocation was served from the cache");
    let busy = core.usage();
    assert!(busy >= (16 << 20) + (2 << 20), "{}", core.stats());
    let mut calls = 0;
    while core.usage() == busy {
        core.purge_aged();
        calls += 1;
        assert!(calls < 10_000, "the idle cache was never flushed");
    }
    assert!(core.usage() < (16 << 20) + (2 << 20), "{}", core.stats());
    // SAFETY: the live ballast.
    unsafe { core.dealloc(b.as_ptr(), ballast) };
    core.trim();
    assert_all_returned(&core);
}

#[test]
fn a_large_area_grows_in_place_when_the_addresses_after_it_are_free() {
    // realloc of a large area: a mapping right after it, nothing moved or copied.
    let core = new_core(64);
    let l = Layout::from_size_align(1 << 20, 8).unwrap();
    // The first area maps the registry's table after it; the second has free addresses after it
    // (the mock maps next-fit, upwards).
    let first = core.alloc_with(l, Gfp::KERNEL).unwrap();
    let p = core.alloc_with(l, Gfp::KERNEL).unwrap();
    // SAFETY: 1 MiB of ours.
    unsafe { p.as_ptr().write_bytes(0x5A, 1 << 20) };
    let usage = core.usage();
    // SAFETY: a live area of `l`, resized within vmap.
    let q = unsafe { core.realloc(p.as_ptr(), l, 3 << 20) };
    assert_eq!(q, p.as_ptr(), "grown in place");
    assert_eq!(core.usage(), usage + (2 << 20), "the growth is charged");
    // SAFETY: 3 MiB of ours.
    let bytes = unsafe { core::slice::from_raw_parts(q, 3 << 20) };
    assert!(bytes[..1 << 20].iter().step_by(if MIRI { 4093 } else { 1 }).all(|&b| b == 0x5A));
    // SAFETY: the live areas, at their sizes.
    unsafe {
        core.dealloc(q, Layout::from_size_align(3 << 20, 8).unwrap());
        core.dealloc(first.as_ptr(), l);
    }
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn segments_of_a_large_heap_without_a_limit_are_advised_huge_pages() {
    // Small heaps keep their 4 KiB granularity; past 32 MiB, fresh segments are advised huge
    // pages — large areas never, nor anything under a limit (resident memory would outgrow what
    // it counts).
    let core = new_core(if MIRI { 96 } else { 128 });
    let l = Layout::from_size_align(60_000, 8).unwrap();
    let mut v = Vec::new();
    while core.usage() < 24 << 20 {
        v.push(core.alloc_with(l, Gfp::KERNEL).unwrap());
    }
    assert_eq!(core.platform().huge_advised(), 0, "a small heap");
    while core.usage() < 40 << 20 {
        v.push(core.alloc_with(l, Gfp::KERNEL).unwrap());
    }
    let advised = core.platform().huge_advised();
    assert!(advised >= SEGMENT_SIZE && advised.is_multiple_of(SEGMENT_SIZE), "{advised}");
    let big = Layout::from_size_align(4 << 20, 8).unwrap();
    let area = core.alloc_with(big, Gfp::KERNEL).unwrap();
    assert_eq!(core.platform().huge_advised(), advised, "not a large area: it may be touched sparsely");
    // SAFETY: live blocks of their layouts.
    unsafe {
        core.dealloc(area.as_ptr(), big);
        for p in v.drain(..) {
            core.dealloc(p.as_ptr(), l);
        }
    }
    core.trim();
    core.set_limit(100 << 20).expect("a workable limit");
    while core.usage() < 40 << 20 {
        v.push(core.alloc_with(l, Gfp::KERNEL).unwrap());
    }
    assert_eq!(core.platform().huge_advised(), advised, "none under a limit");
    for p in v {
        // SAFETY: live blocks of `l`.
        unsafe { core.dealloc(p.as_ptr(), l) };
    }
    core.remove_limit();
    core.thread_exit();
    assert_all_returned(&core);
}

#[test]
fn a_freed_large_area_serves_the_next_one() {
    // The area cache: a freed area is kept mapped and serves the next large allocations (no
    // new mapping): split when longer, merged when freed, grown when shorter; ZERO still gets
    // zeroes; trim and the purge delay give it back.
    let core = new_core(64);
    // In use meanwhile: the cache may hold as much (plus 4 MiB).
    let ballast = Layout::from_size_align(24 << 20, 8).unwrap();
    let b = core.alloc_with(ballast, Gfp::KERNEL).unwrap();
    let l = Layout::from_size_align(3 << 20, 8).unwrap();
    let p = core.alloc_with(l, Gfp::KERNEL).unwrap();
    // SAFETY: 3 MiB of ours.
    unsafe { p.as_ptr().write_bytes(0xAB, 3 << 20) };
    // SAFETY: live area of `l`.
    unsafe { core.dealloc(p.as_ptr(), l) };
    let maps = core.stats().os_maps;
    let smaller = Layout::from_size_align(2 << 20, 8).unwrap();
    let q = core.alloc_with(smaller, Gfp::ZERO).unwrap();
    assert_eq!(core.stats().os_maps, maps, "served from the cache");
    assert_eq!(q, p, "the cached area");
    // SAFETY: 2 MiB of ours.
    let zeroed = unsafe { core::slice::from_raw_parts(q.as_ptr(), 2 << 20) };
    assert!(zeroed.iter().step_by(if MIRI { 4093 } else { 1 }).all(|&b| b == 0));
    // The rest of the split area (a third) serves the next one; freed, the two merge again.
    let third = Layout::from_size_align(1 << 20, 8).unwrap();
    let r = core.alloc_with(third, Gfp::KERNEL).unwrap();
    assert_eq!(core.stats().os_maps, maps, "served from the cache");
    // SAFETY: inside the 3 MiB area.
    assert_eq!(r.as_ptr(), unsafe { p.as_ptr().add(2 << 20) }, "the split-off rest");
    // SAFETY: live areas of `smaller` and `third`.
    unsafe {
        core.dealloc(q.as_ptr(), smaller);
        core.dealloc(r.as_ptr(), third);
    }
    let whole = core.alloc_with(l, Gfp::KERNEL).unwrap();
    assert_eq!((whole, core.stats().os_maps), (p, maps), "merged back into one area");
    // SAFETY: live area of `l`.
    unsafe { core.dealloc(whole.as_ptr(), l) };
    // Too short a cached area grows in place — a mapping of the growth beside it (below, where
    // the platform has room, else above) — keeping its touched pages; zeroed if asked.
    let bigger = Layout::from_size_align(5 << 20, 8).unwrap();
    let usage = core.usage();
    let r = core.alloc_with(bigger, Gfp::ZERO).unwrap();
    assert_eq!(core.stats().os_maps, maps + 1, "the growth mapped, not the whole");
    let below = p.as_ptr().addr() - (2 << 20);
    assert!(r.as_ptr().addr() == p.as_ptr().addr() || r.as_ptr().addr() == below, "grown in place");
    assert_eq!(core.usage(), usage + (2 << 20), "the growth is charged");
    // SAFETY: 5 MiB of ours.
    let zeroed = unsafe { core::slice::from_raw_parts(r.as_ptr(), 5 << 20) };
    assert!(zeroed.iter().step_by(if MIRI { 4093 } else { 1 }).all(|&b| b == 0));
    // SAFETY: 5 MiB of ours, then freed.
    unsafe {
        r.as_ptr().add((5 << 20) - 1).write(1);
        core.dealloc(r.as_ptr(), bigger);
    }
    assert!(core.usage() >= (24 << 20) + (5 << 20), "cached areas stay charged");
    // SAFETY: the live ballast.
    unsafe { core.dealloc(b.as_ptr(), ballast) };
    // The purge delay gives it back (the mock's clock advances 1 ms per reading).
    let mut calls = 0;
    while core.purge_aged() {
        calls += 1;
        assert!(calls < 10_000, "never purged");
    }
    assert_all_returned(&core);
    // Under a limit, a freed area goes back at once.
    core.set_limit(32 << 20).expect("a workable limit");
    let s = core.alloc_with(l, Gfp::KERNEL).unwrap();
    let u = core.usage();
    // SAFETY: live area of `l`.
    unsafe { core.dealloc(s.as_ptr(), l) };
    assert_eq!(core.usage(), u - (3 << 20));
}
