//! Rust re-creations of the mimalloc-bench workloads the suite runs (`src/bin/suite.rs`), each
//! generic over the allocator it measures. Sizes and counts are scaled so one run takes about
//! a tenth of a second on this machine; the shapes (what is live, who frees what) are the
//! originals'.

use crate::{larson, ring, Batch, Rng};
use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// An 8-aligned layout of `size` bytes.
pub(crate) fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn alloc<A: GlobalAlloc>(a: &A, l: Layout) -> *mut u8 {
    // SAFETY: every layout here has a non-zero size.
    let p = unsafe { a.alloc(l) };
    assert!(!p.is_null(), "allocation of {} bytes failed", l.size());
    p
}

/// # Safety
/// `p` came from `a.alloc(l)` and is not used afterwards.
unsafe fn free<A: GlobalAlloc>(a: &A, p: *mut u8, l: Layout) {
    // SAFETY: per the contract.
    unsafe { a.dealloc(p, l) }
}

/// A size spread log-uniformly over `[lo, hi]`: as many 16–32 B blocks as 8–16 KiB ones
/// (rptest's distribution).
fn log_size(rng: &mut Rng, lo: usize, hi: usize) -> usize {
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    let x = l + (h - l) * (rng.below(1 << 20) as f64 / (1u64 << 20) as f64);
    (x.exp() as usize).clamp(lo, hi)
}

/// larsonN: `threads` server threads, 1000 live blocks of 8–1000 B each, 10 000 random
/// replacements a round for 200 rounds, the survivors handed to the next thread each round.
pub fn larson_n<A: GlobalAlloc + Sync>(a: &A, threads: usize) {
    let sizes: Vec<usize> = (1..=125).map(|i| i * 8).collect();
    larson(a, threads, 1000, 200, 10_000, &sizes);
}

/// xmalloc-testN: `threads` producers only allocate (16–512 B, in batches of 100), `threads`
/// consumers only free; 2 000 000 blocks in all.
pub fn xmalloc_n<A: GlobalAlloc + Sync>(a: &A, threads: usize) {
    const TOTAL: usize = 2_000_000;
    const BATCH: usize = 100;
    let (tx, rx) = mpsc::sync_channel::<Batch>(4 * threads);
    let rx = Mutex::new(rx);
    thread::scope(|s| {
        for i in 0..threads {
            let tx = tx.clone();
            s.spawn(move || {
                let mut rng = Rng::new(i as u64 + 1);
                for _ in 0..TOTAL / BATCH / threads {
                    let mut b = Batch(Vec::with_capacity(BATCH));
                    for _ in 0..BATCH {
                        let l = layout(16 + rng.below(497) as usize);
                        b.0.push((alloc(a, l), l));
                    }
                    tx.send(b).unwrap();
                }
            });
        }
        drop(tx);
        for _ in 0..threads {
            let rx = &rx;
            s.spawn(move || loop {
                let Ok(b) = rx.lock().unwrap().recv() else { break };
                for (p, l) in b.0 {
                    // SAFETY: a producer's block, handed to us.
                    unsafe { free(a, p, l) };
                }
            });
        }
    });
}

/// mstressN / mleakN: 20 generations of `threads` short-lived threads. Each frees its share of
/// the blocks the previous generation left behind, allocates 20 000 blocks (mostly 16–512 B,
/// one in a hundred 4–64 KiB), frees a random half as it goes, and leaves a quarter to the next
/// generation — objects outlive their thread. With `leak`, one block in a hundred is never
/// freed (mleak: the heap grows; does the allocator keep up without ballooning?).
pub fn mstress_n<A: GlobalAlloc + Sync>(a: &A, threads: usize, leak: bool) {
    let survivors = Mutex::new(Batch(Vec::new()));
    for generation in 0..20u64 {
        thread::scope(|s| {
            for i in 0..threads {
                let survivors = &survivors;
                s.spawn(move || {
                    let mut rng = Rng::new(generation * 64 + i as u64 + 1);
                    let inherited: Vec<_> = {
                        let mut all = survivors.lock().unwrap();
                        let take = all.0.len().div_ceil(threads - i);
                        let at = all.0.len() - take;
                        all.0.split_off(at)
                    };
                    for (p, l) in inherited {
                        // SAFETY: left by a thread of the previous generation, now ours.
                        unsafe { free(a, p, l) };
                    }
                    let mut mine = Vec::with_capacity(20_000);
                    for _ in 0..20_000 {
                        let size = if rng.below(100) == 0 {
                            4096 + rng.below(60 << 10) as usize
                        } else {
                            16 + rng.below(497) as usize
                        };
                        let l = layout(size);
                        let p = alloc(a, l);
                        // SAFETY: a fresh block of at least 16 bytes.
                        unsafe { p.cast::<u64>().write_unaligned(size as u64) };
                        mine.push((p, l));
                        if rng.below(2) == 0 {
                            let (p, l) = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            // SAFETY: ours.
                            unsafe { free(a, p, l) };
                        }
                    }
                    let mut keep = Vec::new();
                    for (p, l) in mine {
                        match rng.below(100) {
                            0 if leak => {}
                            0..=24 => keep.push((p, l)),
                            // SAFETY: ours.
                            _ => unsafe { free(a, p, l) },
                        }
                    }
                    survivors.lock().unwrap().0.extend(keep);
                });
            }
        });
    }
    for (p, l) in survivors.into_inner().unwrap().0 {
        // SAFETY: the last generation's survivors.
        unsafe { free(a, p, l) };
    }
}

/// cache-scratchN: the main thread allocates `threads` 8-byte objects back to back and hands
/// one to each thread, which frees it and then, 1000 times, allocates an 8-byte object and
/// writes it 50 000 times. An allocator that hands the freed neighbours to different threads makes
/// them share a cache line (passive false sharing).
pub fn cache_scratch_n<A: GlobalAlloc + Sync>(a: &A, threads: usize) {
    let l = layout(8);
    let objs: Vec<usize> = (0..threads).map(|_| alloc(a, l).expose_provenance()).collect();
    thread::scope(|s| {
        for &o in &objs {
            s.spawn(move || {
                // SAFETY: the object main allocated for us (rebuilt from its address: the
                // allocators here hand out exposed, plain memory).
                unsafe { free(a, std::ptr::with_exposed_provenance_mut(o), l) };
                for _ in 0..1000 {
                    let p = alloc(a, l);
                    for j in 0..50_000u64 {
                        // SAFETY: our 8-byte object.
                        unsafe { std::ptr::write_volatile(p.cast::<u64>(), j) };
                    }
                    // SAFETY: ours.
                    unsafe { free(a, p, l) };
                }
            });
        }
    });
}

/// rptestN: `threads` threads in a ring; each round a thread allocates 512 blocks of 8–16000 B
/// (log-uniform), frees a random half itself, and hands the other half to its successor, which
/// frees it: 1000 rounds.
pub fn rptest_n<A: GlobalAlloc + Sync>(a: &A, threads: usize) {
    const ROUNDS: usize = 1000;
    ring(threads, 2, |i, tx, rx| {
        let mut rng = Rng::new(i as u64 + 7);
        for _ in 0..ROUNDS {
            let mut give = Batch(Vec::with_capacity(256));
            let mut mine = Vec::with_capacity(256);
            for _ in 0..512 {
                let l = layout(log_size(&mut rng, 8, 16000));
                let p = alloc(a, l);
                // SAFETY: at least 8 bytes.
                unsafe { p.write(1) };
                if rng.below(2) == 0 {
                    give.0.push((p, l))
                } else {
                    mine.push((p, l))
                }
            }
            for (p, l) in mine {
                // SAFETY: ours.
                unsafe { free(a, p, l) };
            }
            tx.send(give).unwrap();
            let got = rx.recv().unwrap();
            for (p, l) in got.0 {
                // SAFETY: handed to us by our predecessor.
                unsafe { free(a, p, l) };
            }
        }
    });
}

/// malloc-large: 2000 buffers of 5–25 MiB, at most 20 live (a random one replaced each time),
/// each written at its first and last byte: the large (vmap) path and what it keeps mapped.
pub fn malloc_large<A: GlobalAlloc>(a: &A) {
    let mut rng = Rng::new(3);
    let mut live: [(*mut u8, Layout); 20] = [(std::ptr::null_mut(), layout(1)); 20];
    for _ in 0..2000 {
        let slot = &mut live[rng.below(20) as usize];
        if !slot.0.is_null() {
            // SAFETY: the slot's live buffer.
            unsafe { free(a, slot.0, slot.1) };
        }
        let l = layout((5 << 20) + rng.below(20 << 20) as usize);
        let p = alloc(a, l);
        // SAFETY: inside the buffer.
        unsafe {
            p.write(1);
            p.add(l.size() - 1).write(1);
        }
        *slot = (p, l);
    }
    for (p, l) in live {
        if !p.is_null() {
            // SAFETY: live buffers.
            unsafe { free(a, p, l) };
        }
    }
}

/// The resident set size now, in KiB (`/proc/self/statm`).
pub fn rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4
}

/// RSS after idle: one burst of 256 MiB in 64 B–4 KiB blocks, all freed, then resident memory
/// sampled every 50 ms for 1 s with no allocator call. Returns (RSS before the burst, at its
/// peak, and the samples after it), in KiB.
pub fn rss_idle<A: GlobalAlloc>(a: &A) -> (usize, usize, Vec<(Duration, usize)>) {
    let before = rss_kib();
    let mut rng = Rng::new(5);
    let mut live = Vec::new();
    let mut bytes = 0;
    while bytes < 256 << 20 {
        let l = layout(64 + rng.below(4033) as usize);
        let p = alloc(a, l);
        // SAFETY: a fresh block: touch each of its pages.
        unsafe { (0..l.size()).step_by(4096).for_each(|o| p.add(o).write(1)) };
        live.push((p, l));
        bytes += l.size();
    }
    let peak = rss_kib();
    for (p, l) in live {
        // SAFETY: ours.
        unsafe { free(a, p, l) };
    }
    let start = Instant::now();
    let mut samples = vec![(Duration::ZERO, rss_kib())];
    for i in 1..=20 {
        thread::sleep((start + Duration::from_millis(50 * i)).saturating_duration_since(Instant::now()));
        samples.push((start.elapsed(), rss_kib()));
    }
    (before, peak, samples)
}

/// A deterministic JSON document of about `mib` MiB: an array of records with strings, numbers,
/// nested arrays and objects, as a log or an API dump would have.
pub fn json_document(mib: usize) -> String {
    let mut rng = Rng::new(11);
    let mut s = String::from("[");
    let mut i = 0u64;
    while s.len() < mib << 20 {
        if i > 0 {
            s.push(',');
        }
        let tags: Vec<String> =
            (0..rng.below(6)).map(|t| format!("\"tag-{}\"", rng.below(1000) + t)).collect();
        s.push_str(&format!(
            r#"{{"id":{i},"name":"user-{}","score":{}.{},"active":{},"tags":[{}],"address":{{"street":"{} Main St","city":"city-{}","zip":"{:05}"}},"history":[{},{},{}]}}"#,
            rng.below(1 << 30),
            rng.below(1000),
            rng.below(100),
            rng.below(2) == 0,
            tags.join(","),
            rng.below(9999),
            rng.below(500),
            rng.below(100_000),
            rng.below(1 << 20),
            rng.below(1 << 20),
            rng.below(1 << 20),
        ));
        i += 1;
    }
    s.push(']');
    s
}

/// The real-program workload: parse `doc` into a `serde_json::Value` and serialise it again,
/// through the process's global allocator (the suite's child sets it to the allocator under
/// test). Returns the output's length.
pub fn json_round_trip(doc: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(doc).expect("valid JSON");
    let out = serde_json::to_string(&v).expect("serialisable");
    black_box(out.len())
}
