//! Thread churn (mstress/mleak-like): a thousand short-lived threads whose objects outlive them.
//! Their pages are abandoned at exit, adopted by whoever frees into them, and given back when
//! empty: after everything is freed, `usage()` returns close to where it started.

use ctxalloc_tests::Block;
use std::alloc::Layout;
use std::sync::mpsc;
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

#[test]
fn a_thousand_threads_whose_objects_outlive_them() {
    // Warm up this thread's heap and the process's structures, then take the baseline.
    drop(
        (0..1000)
            .map(|i| Block::new(Layout::from_size_align(1 + i % 700, 8).unwrap(), 0))
            .collect::<Vec<_>>(),
    );
    ctxalloc::trim();
    let start = ctxalloc::usage();

    let (tx, rx) = mpsc::channel::<Vec<Block>>();
    let mut kept = Vec::new();
    for wave in 0..125 {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let tx = tx.clone();
                thread::spawn(move || {
                    let seed = (wave * 8 + t) as u64;
                    let v: Vec<Block> = (0..200)
                        .map(|i| {
                            let size = [16, 24, 100, 500, 3000, 20_000, 100_000][i % 7];
                            Block::new(Layout::from_size_align(size, 8).unwrap(), seed * 1000 + i as u64)
                        })
                        .collect();
                    tx.send(v).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Objects of earlier waves are freed while later threads run: frees into pages of
        // threads that exited, concurrently with abandonment.
        kept.extend(rx.try_iter());
        if kept.len() > 40 {
            kept.drain(..20).for_each(drop);
        }
    }
    drop(tx);
    let peak_live = ctxalloc::usage();
    kept.extend(rx.try_iter());
    drop(rx); // the channel's last block was allocated by an exited sender
    drop(kept);

    let after = ctxalloc::usage();
    let s = ctxalloc::stats();
    assert_eq!(s.abandoned_pages, 0, "every abandoned page was emptied and given back\n{s}");
    assert_eq!(s.vmap_areas, 0, "{s}");
    // What may stay: this thread's one page per class, the spare segment, dirty slices below
    // the purge threshold (16 MiB plus an eighth of the usage when it was last checked), the
    // vacant heaps of exited threads with a page per class they used (at most 8, about 0.6 MiB
    // each here), and freed large areas in vmap's cache — at most as many bytes as are in use
    // outside it, plus 4 MiB.
    let outside = start + (16 << 20) + peak_live / 8 + 8 * (1 << 20);
    assert!(after <= 2 * outside + (4 << 20), "usage {after} vs start {start} (peak {peak_live})\n{s}");
    ctxalloc::trim();
    let trimmed = ctxalloc::usage();
    assert!(trimmed <= start + (1 << 20), "after trim: {trimmed} vs start {start}\n{s}");
}
