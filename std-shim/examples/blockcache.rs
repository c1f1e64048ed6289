//! `blockcache`: a storage-engine-like workload on real files, running on ctxalloc.
//!
//! Worker threads read and write fixed-size blocks of files in a temporary directory. Decoded
//! blocks live in an LRU cache behind one lock; dirty blocks wait in a write-back buffer until a
//! flusher writes them to their files. The code that inserts into the cache holds the cache lock
//! inside a NOFS scope: whatever it allocates (the block, the map's growth) must never make
//! reclaim call back into the cache — which would need the lock it holds. (The shrinkers that
//! make that deadlock real arrive with the memory limit; the scope discipline is here already.)
//!
//! At the end every file is read back and every block compared with the last version written:
//! nothing may be lost.
//!
//! ```text
//! cargo run --release --example blockcache -- [--seconds N] [--threads N] [--files N]
//! ```

use ctxalloc::Gfp;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const BLOCK: usize = 4096;

/// Command-line options.
struct Options {
    seconds: f64,
    threads: usize,
    files: usize,
    blocks_per_file: u64,
    cache_blocks: usize,
}

impl Options {
    fn parse() -> Result<Options, String> {
        let mut o = Options { seconds: 5.0, threads: 4, files: 8, blocks_per_file: 2048, cache_blocks: 8192 };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--seconds" => {
                    o.seconds = val("--seconds")?.parse().map_err(|e| format!("--seconds: {e}"))?
                }
                "--threads" => {
                    o.threads = val("--threads")?.parse().map_err(|e| format!("--threads: {e}"))?
                }
                "--files" => o.files = val("--files")?.parse().map_err(|e| format!("--files: {e}"))?,
                "--cache-blocks" => {
                    o.cache_blocks =
                        val("--cache-blocks")?.parse().map_err(|e| format!("--cache-blocks: {e}"))?
                }
                "-h" | "--help" => {
                    return Err(
                        "usage: blockcache [--seconds N] [--threads N] [--files N] [--cache-blocks N]".into(),
                    )
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        if o.threads == 0 || o.files == 0 || o.cache_blocks == 0 {
            return Err("--threads, --files and --cache-blocks must be positive".into());
        }
        Ok(o)
    }
}

/// A block's identity.
type Key = (u32, u64);

/// The contents of version `v` of block `k`: derived, so the final check needs no copy.
fn contents(k: Key, v: u64, out: &mut [u8]) {
    let mut x = (u64::from(k.0) << 40) ^ (k.1 << 8) ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
    for w in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// One cached block.
struct Entry {
    data: Box<[u8]>,
    /// Version of `data`.
    version: u64,
    /// Last use, for LRU eviction.
    tick: u64,
}

/// The decoded-block cache: one lock, LRU by a use counter (eviction scans a sample).
struct Cache {
    map: HashMap<Key, Entry>,
    tick: u64,
    capacity: usize,
    hits: u64,
    misses: u64,
    evictions: u64,
}

impl Cache {
    /// Inserts under the lock. Everything allocated here runs inside a NOFS scope: the block,
    /// the map's rehash. With shrinkers registered, reclaim from here will skip the cache's own
    /// (filesystem-class) shrinker instead of deadlocking on this lock.
    fn insert(&mut self, k: Key, data: Box<[u8]>, version: u64) {
        let _nofs = ctxalloc::scope(Gfp::NOFS);
        if self.map.get(&k).is_some_and(|e| e.version >= version) {
            return; // a racing reader brought an older copy
        }
        self.tick += 1;
        if self.map.len() >= self.capacity {
            self.evict();
        }
        self.map.insert(k, Entry { data, version, tick: self.tick });
    }

    fn evict(&mut self) {
        // Approximate LRU: the oldest of a small sample.
        let victim = self.map.iter().take(16).min_by_key(|(_, e)| e.tick).map(|(k, _)| *k);
        if let Some(k) = victim {
            self.map.remove(&k);
            self.evictions += 1;
        }
    }
}

/// Dirty blocks waiting to be written to their files.
struct WriteBack {
    dirty: HashMap<Key, (Box<[u8]>, u64)>,
}

struct Store {
    files: Vec<File>,
    cache: Mutex<Cache>,
    writeback: Mutex<WriteBack>,
    /// The version every block must have on disk at the end.
    versions: Vec<Vec<AtomicU64>>,
    reads: AtomicU64,
    writes: AtomicU64,
    flushed: AtomicU64,
}

impl Store {
    fn read(&self, k: Key) -> io::Result<u64> {
        let mut c = self.cache.lock().unwrap();
        c.tick += 1;
        let tick = c.tick;
        if let Some(e) = c.map.get_mut(&k) {
            e.tick = tick;
            let v = e.version;
            // The block carries its version: a hit checks the cached copy is the one recorded.
            if e.data[..8] != v.to_le_bytes() {
                return Err(io::Error::other(format!("cached block {k:?} corrupted")));
            }
            c.hits += 1;
            return Ok(v);
        }
        c.misses += 1;
        drop(c);
        // A miss: the newest data is in the write-back buffer or on disk.
        let pending = self.writeback.lock().unwrap().dirty.get(&k).map(|(d, v)| (d.clone(), *v));
        let (data, version) = match pending {
            Some(p) => p,
            None => {
                let mut buf = vec![0u8; BLOCK].into_boxed_slice();
                self.files[k.0 as usize].read_exact_at(&mut buf, k.1 * BLOCK as u64)?;
                let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
                (buf, v)
            }
        };
        self.cache.lock().unwrap().insert(k, data, version);
        Ok(version)
    }

    fn write(&self, k: Key) {
        let v = self.versions[k.0 as usize][k.1 as usize].fetch_add(1, Ordering::AcqRel) + 1;
        let mut data = vec![0u8; BLOCK].into_boxed_slice();
        contents(k, v, &mut data[8..]);
        data[..8].copy_from_slice(&v.to_le_bytes());
        {
            let mut w = self.writeback.lock().unwrap();
            // Versions only move forward: a racing older write must not win.
            let newer = w.dirty.get(&k).is_none_or(|(_, old)| *old < v);
            if newer {
                let _nofs = ctxalloc::scope(Gfp::NOFS);
                w.dirty.insert(k, (data.clone(), v));
            }
        }
        self.cache.lock().unwrap().insert(k, data, v);
    }

    /// Writes every dirty block to its file.
    fn flush(&self) -> io::Result<()> {
        let batch = std::mem::take(&mut self.writeback.lock().unwrap().dirty);
        for ((f, b), (data, v)) in batch {
            // Another flush may have written a newer version meanwhile: check the disk.
            let mut head = [0u8; 8];
            self.files[f as usize].read_exact_at(&mut head, b * BLOCK as u64)?;
            if u64::from_le_bytes(head) < v {
                self.files[f as usize].write_all_at(&data, b * BLOCK as u64)?;
            }
            self.flushed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn tempdir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("blockcache-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn run(o: &Options) -> io::Result<bool> {
    let dir = tempdir()?;
    let mut files = Vec::new();
    for i in 0..o.files {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(format!("f{i}")))?;
        // Version 0 of every block, written up front.
        let mut buf = vec![0u8; BLOCK];
        for b in 0..o.blocks_per_file {
            contents((i as u32, b), 0, &mut buf[8..]);
            buf[..8].copy_from_slice(&0u64.to_le_bytes());
            f.write_all_at(&buf, b * BLOCK as u64)?;
        }
        files.push(f);
    }
    let store = Arc::new(Store {
        files,
        cache: Mutex::new(Cache {
            map: HashMap::new(),
            tick: 0,
            capacity: o.cache_blocks,
            hits: 0,
            misses: 0,
            evictions: 0,
        }),
        writeback: Mutex::new(WriteBack { dirty: HashMap::new() }),
        versions: (0..o.files).map(|_| (0..o.blocks_per_file).map(|_| AtomicU64::new(0)).collect()).collect(),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        flushed: AtomicU64::new(0),
    });

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for t in 0..o.threads {
        let (s, stop) = (store.clone(), stop.clone());
        let (nfiles, nblocks) = (o.files as u64, o.blocks_per_file);
        workers.push(thread::spawn(move || -> io::Result<()> {
            let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Skewed keys: a hot set that fits the cache, and a long tail that does not.
                let hot = x % 4 != 0;
                let f = (x >> 8) % nfiles;
                let b = if hot { (x >> 16) % (nblocks / 8) } else { (x >> 16) % nblocks };
                let k = (f as u32, b);
                if (x >> 40) % 5 == 0 {
                    s.write(k);
                    s.writes.fetch_add(1, Ordering::Relaxed);
                } else {
                    s.read(k)?;
                    s.reads.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
    }
    let flusher = {
        let (s, stop) = (store.clone(), stop.clone());
        thread::spawn(move || -> io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(20));
                s.flush()?;
            }
            Ok(())
        })
    };

    let deadline = start + Duration::from_secs_f64(o.seconds);
    let mut peak = 0;
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now())));
        peak = peak.max(ctxalloc::usage());
        let ops = store.reads.load(Ordering::Relaxed) + store.writes.load(Ordering::Relaxed);
        eprint!(
            "\r{:5.1} s  {:>10} ops  {:>8.0} ops/s  usage {:>6} MiB   ",
            start.elapsed().as_secs_f64(),
            ops,
            ops as f64 / start.elapsed().as_secs_f64(),
            ctxalloc::usage() >> 20
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    flusher.join().expect("flusher panicked")?;
    store.flush()?;
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!();

    // Every block on disk must hold the last version written.
    let mut buf = vec![0u8; BLOCK];
    let mut want = vec![0u8; BLOCK];
    let mut lost = 0u64;
    for (f, file) in store.files.iter().enumerate() {
        for b in 0..o.blocks_per_file {
            file.read_exact_at(&mut buf, b * BLOCK as u64)?;
            let v = store.versions[f][b as usize].load(Ordering::Acquire);
            contents((f as u32, b), v, &mut want[8..]);
            want[..8].copy_from_slice(&v.to_le_bytes());
            if buf != want {
                lost += 1;
            }
        }
    }
    let (reads, writes) = (store.reads.load(Ordering::Relaxed), store.writes.load(Ordering::Relaxed));
    let c = store.cache.lock().unwrap();
    println!(
        "blockcache: {} threads, {} files × {} blocks of {} B, cache {} blocks",
        o.threads, o.files, o.blocks_per_file, BLOCK, o.cache_blocks
    );
    println!(
        "  {:.0} ops/s ({reads} reads, {writes} writes in {elapsed:.1} s); cache hits {:.1} %, {} evictions; {} blocks flushed",
        (reads + writes) as f64 / elapsed,
        100.0 * c.hits as f64 / (c.hits + c.misses).max(1) as f64,
        c.evictions,
        store.flushed.load(Ordering::Relaxed)
    );
    println!("  peak usage {} MiB (no limit set)", peak.max(ctxalloc::stats().peak) >> 20);
    println!("  verification: {} blocks checked, {lost} lost", o.files as u64 * o.blocks_per_file);
    println!("{}", ctxalloc::stats());
    drop(c);
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(lost == 0)
}

fn main() {
    let o = match Options::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match run(&o) {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("blockcache: writes were lost");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("blockcache: {e}");
            std::process::exit(1);
        }
    }
}
