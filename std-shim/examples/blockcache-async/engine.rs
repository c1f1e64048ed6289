//! The `blockcache-async` engine: tokio tasks over the `blockcache` engine's cache and block
//! format, with `AsyncScopedMutex`es held across awaits. Shared by the example and the
//! conformance suite (which includes this file as a module).

#[allow(dead_code)]
#[path = "../blockcache/engine.rs"]
mod sync_engine;

use ctxalloc::{AsyncScopedMutex, Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use sync_engine::{alloc_block, block, progress_bar, Dirty, Key, Lru, BLOCK};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub seconds: f64,
    pub tasks: usize,
    pub workers: usize,
    pub files: usize,
    pub blocks_per_file: u64,
    /// The memory limit in bytes (`None`: no limit).
    pub limit: Option<usize>,
    /// Drop the locks' scopes (to show the recursion they prevent).
    pub no_scopes: bool,
    /// Seconds without progress after which the run is declared stuck.
    pub watchdog: u64,
    /// Redraw a progress line (on a terminal only).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seconds: 10.0,
            tasks: 16,
            workers: 2,
            files: 8,
            blocks_per_file: 4096,
            limit: Some(64 << 20),
            no_scopes: false,
            watchdog: 5,
            progress: true,
        }
    }
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub ops: u64,
    pub seconds: f64,
    pub hits: u64,
    pub peak: usize,
    pub limit: Option<usize>,
    pub evicted: u64,
    pub written_back: u64,
    pub flushed: u64,
    pub recycled: u64,
    pub written_through: u64,
    /// Times a task holding a lock resumed on another worker than it was on before the await.
    pub hops: u64,
    pub checked: u64,
    pub lost: u64,
}

/// How a run can end badly.
#[derive(Debug)]
pub enum Failure {
    Io(io::Error),
    /// Reclaim called `shrinker`, which needs `lock`, for the task that holds it.
    Recursion {
        lock: &'static str,
        shrinker: &'static str,
    },
    /// No progress for the watchdog period.
    Stuck(u64),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "I/O error: {e}"),
            Failure::Recursion { lock, shrinker } => write!(
                f,
                "deadlock: reclaim called shrinker `{shrinker}`, which needs lock `{lock}`, for the task that holds \
                 `{lock}` (across an await) and allocated without a scope that forbids `{shrinker}`"
            ),
            Failure::Stuck(s) => write!(f, "no progress for {s} s"),
        }
    }
}

/// Lets other tasks run once — the async step under a lock — allocating nothing (a lock holder
/// at the limit has no memory to spare; tokio's `yield_now` allocates its deferred-wake list).
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            return Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

struct Store {
    files: Vec<File>,
    cache: AsyncScopedMutex<Lru>,
    writeback: AsyncScopedMutex<Dirty>,
    cached: AtomicUsize,
    dirty: AtomicUsize,
    versions: Vec<Vec<AtomicU64>>,
    ops: AtomicU64,
    hits: AtomicU64,
    evicted: AtomicU64,
    written_back: AtomicU64,
    flushed: AtomicU64,
    recycled: AtomicU64,
    written_through: AtomicU64,
    /// Workers resumed a task holding a lock on another thread than it took it on.
    hops: AtomicU64,
    /// A shrinker found its lock held by the task it reclaimed for.
    recursion: Mutex<Option<(&'static str, &'static str)>>,
    failed: AtomicBool,
}

impl Store {
    fn recursion(&self, lock: &'static str, shrinker: &'static str) {
        self.recursion.lock().unwrap().get_or_insert((lock, shrinker));
        self.failed.store(true, Ordering::SeqCst);
    }

    async fn read(&self, k: Key, buf: &mut [u8]) -> io::Result<()> {
        {
            let mut c = self.cache.lock().await;
            if c.get(k).is_some() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let pending = {
            let w = self.writeback.lock().await;
            w.get(&k).map(|(d, v)| {
                buf.copy_from_slice(d);
                *v
            })
        };
        let version = match pending {
            Some(v) => v,
            None => {
                self.files[k.0 as usize].read_exact_at(buf, k.1 * BLOCK as u64)?;
                u64::from_le_bytes(buf[..8].try_into().unwrap())
            }
        };
        self.insert(k, buf, version).await;
        Ok(())
    }

    /// Caches a copy under the cache lock, held across an await.
    async fn insert(&self, k: Key, buf: &[u8], version: u64) {
        let mut c = self.cache.lock().await;
        let before = std::thread::current().id();
        YieldOnce(false).await; // e.g. decompressing elsewhere; this task may move to another worker
        if std::thread::current().id() != before {
            self.hops.fetch_add(1, Ordering::Relaxed);
        }
        if c.insert(k, buf, version) {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
        self.cached.store(c.len(), Ordering::Relaxed);
    }

    async fn write(&self, k: Key, buf: &mut [u8]) -> io::Result<()> {
        let v = self.versions[k.0 as usize][k.1 as usize].fetch_add(1, Ordering::AcqRel) + 1;
        block(k, v, buf);
        {
            let mut w = self.writeback.lock().await;
            YieldOnce(false).await;
            if w.get(&k).is_none_or(|(_, old)| *old < v) {
                match alloc_block() {
                    Some(mut copy) => {
                        copy.copy_from_slice(buf);
                        w.insert(k, (copy, v));
                    }
                    None => {
                        w.remove(&k);
                        self.write_if_newer(k, buf, v)?;
                        self.written_through.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.dirty.store(w.len(), Ordering::Relaxed);
        }
        self.insert(k, buf, v).await;
        Ok(())
    }

    fn write_if_newer(&self, k: Key, data: &[u8], v: u64) -> io::Result<()> {
        sync_engine::write_if_newer(&self.files, k, data, v)
    }

    fn write_back(&self, w: &mut Dirty, n: usize) -> io::Result<usize> {
        let done = sync_engine::write_back(&self.files, w, n)?;
        self.dirty.store(w.len(), Ordering::Relaxed);
        Ok(done)
    }
}

struct CacheShrinker(Arc<Store>);

impl Shrinker for CacheShrinker {
    fn name(&self) -> &str {
        "block-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.0.cached.load(Ordering::Relaxed)
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let s = &self.0;
        if s.cache.held_by_current_task() {
            s.recursion("cache", "block-cache");
            return ScanResult::Stop;
        }
        let Some(mut c) = s.cache.try_lock() else { return ScanResult::Stop };
        let n = c.evict(sc.nr_to_scan);
        s.cached.store(c.len(), Ordering::Relaxed);
        s.evicted.fetch_add(n as u64, Ordering::Relaxed);
        ScanResult::Freed(n)
    }
}

struct WriteBackShrinker(Arc<Store>);

impl Shrinker for WriteBackShrinker {
    fn name(&self) -> &str {
        "write-back"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Io
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.0.dirty.load(Ordering::Relaxed)
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let s = &self.0;
        if s.writeback.held_by_current_task() {
            s.recursion("writeback", "write-back");
            return ScanResult::Stop;
        }
        let Some(mut w) = s.writeback.try_lock() else { return ScanResult::Stop };
        match s.write_back(&mut w, sc.nr_to_scan) {
            Ok(n) => {
                s.written_back.fetch_add(n as u64, Ordering::Relaxed);
                ScanResult::Freed(n)
            }
            Err(_) => ScanResult::Stop,
        }
    }
}

/// Runs the workload; the limit (if any) is set for the run and removed afterwards. On a
/// failure the runtime is leaked: its tasks may be stuck.
pub fn run(o: &Options) -> Result<Report, Failure> {
    let dir = sync_engine::tempdir()?;
    let r = run_in(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

fn run_in(o: &Options, dir: &std::path::Path) -> Result<Report, Failure> {
    let mut files = Vec::new();
    let mut buf = vec![0u8; BLOCK];
    for f in 0..o.files {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(format!("f{f}")))?;
        for b in 0..o.blocks_per_file {
            block((f as u32, b), 0, &mut buf);
            file.write_all_at(&buf, b * BLOCK as u64)?;
        }
        files.push(file);
    }
    let blocks = o.files * o.blocks_per_file as usize;
    let (cache_scope, wb_scope) =
        if o.no_scopes { (Gfp::KERNEL, Gfp::KERNEL) } else { (Gfp::NOFS, Gfp::NOIO) };
    let store = Arc::new(Store {
        files,
        cache: AsyncScopedMutex::new(Lru::with_capacity(blocks), cache_scope, "cache"),
        writeback: AsyncScopedMutex::new(Dirty::with_capacity(blocks), wb_scope, "writeback"),
        cached: AtomicUsize::new(0),
        dirty: AtomicUsize::new(0),
        versions: (0..o.files).map(|_| (0..o.blocks_per_file).map(|_| AtomicU64::new(0)).collect()).collect(),
        ops: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        evicted: AtomicU64::new(0),
        written_back: AtomicU64::new(0),
        flushed: AtomicU64::new(0),
        recycled: AtomicU64::new(0),
        written_through: AtomicU64::new(0),
        hops: AtomicU64::new(0),
        recursion: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let handles = [
        ctxalloc::register_shrinker(Arc::new(CacheShrinker(store.clone()))),
        ctxalloc::register_shrinker(Arc::new(WriteBackShrinker(store.clone()))),
    ];
    handles[0].takes(&store.cache);
    handles[1].takes(&store.writeback);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(o.workers).enable_all().build()?;
    let limit = o.limit.map(|l| l.max(ctxalloc::usage() + (8 << 20)));
    if let Some(l) = limit {
        ctxalloc::set_limit(l).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let outcome = rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..o.tasks {
            let (s, stop) = (store.clone(), stop.clone());
            let (files, per_file) = (o.files as u64, o.blocks_per_file);
            tasks.push(tokio::spawn(ctxalloc::scoped(Gfp::KERNEL, async move {
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                let mut buf = vec![0u8; BLOCK];
                while !stop.load(Ordering::Relaxed) && !s.failed.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let f = (x >> 8) % files;
                    let b =
                        if !x.is_multiple_of(4) { (x >> 16) % (per_file / 8) } else { (x >> 16) % per_file };
                    let k = (f as u32, b);
                    if (x >> 40).is_multiple_of(5) {
                        s.write(k, &mut buf).await?;
                    } else {
                        s.read(k, &mut buf).await?;
                    }
                    s.ops.fetch_add(1, Ordering::Relaxed);
                }
                io::Result::Ok(())
            })));
        }
        let flusher = {
            let (s, stop) = (store.clone(), stop.clone());
            tokio::spawn(ctxalloc::scoped(Gfp::KERNEL, async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let mut w = s.writeback.lock().await;
                    let n = w.len();
                    let done = s.write_back(&mut w, n)?;
                    s.flushed.fetch_add(done as u64, Ordering::Relaxed);
                }
                io::Result::Ok(())
            }))
        };
        // Progress, the watchdog and the end of the run.
        let (mut last, mut last_change, mut peak) = (0, Instant::now(), 0);
        let bar = progress_bar(o.progress);
        let deadline = start + Duration::from_secs_f64(o.seconds);
        let failure = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(ctxalloc::usage());
            let ops = store.ops.load(Ordering::Relaxed);
            if o.progress {
                bar.set_message(format!(
                    "{:5.1} s {ops:>10} ops  usage {:>4} MiB",
                    start.elapsed().as_secs_f64(),
                    ctxalloc::usage() >> 20
                ));
            }
            if store.failed.load(Ordering::SeqCst) {
                break Some(Ok(3));
            }
            if ops != last {
                (last, last_change) = (ops, Instant::now());
            } else if last_change.elapsed() >= Duration::from_secs(o.watchdog) {
                break Some(Ok(2));
            }
            if Instant::now() >= deadline {
                break None;
            }
        };
        bar.finish_and_clear();
        if failure.is_some() {
            return (failure, peak);
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            if let Err(e) = t.await.expect("task panicked") {
                return (Some(Err(e)), peak);
            }
        }
        if let Err(e) = flusher.await.expect("flusher panicked") {
            return (Some(Err(e)), peak);
        }
        (None, peak)
    });
    let seconds = start.elapsed().as_secs_f64();
    ctxalloc::remove_limit();
    let (failure, peak) = outcome;
    if let Some(f) = failure {
        std::mem::forget(rt);
        return Err(match f? {
            3 => {
                let (lock, shrinker) = store.recursion.lock().unwrap().unwrap_or(("?", "?"));
                Failure::Recursion { lock, shrinker }
            }
            _ => Failure::Stuck(o.watchdog),
        });
    }
    drop(rt);
    {
        let mut w = store.writeback.try_lock().expect("no task runs");
        let n = w.len();
        let done = store.write_back(&mut w, n)?;
        store.flushed.fetch_add(done as u64, Ordering::Relaxed);
    }
    drop(handles);
    let mut want = vec![0u8; BLOCK];
    let mut lost = 0;
    for (f, file) in store.files.iter().enumerate() {
        for b in 0..o.blocks_per_file {
            file.read_exact_at(&mut buf, b * BLOCK as u64)?;
            block((f as u32, b), store.versions[f][b as usize].load(Ordering::Acquire), &mut want);
            if buf != want {
                lost += 1;
            }
        }
    }
    Ok(Report {
        ops: store.ops.load(Ordering::Relaxed),
        seconds,
        hits: store.hits.load(Ordering::Relaxed),
        peak,
        limit,
        evicted: store.evicted.load(Ordering::Relaxed),
        written_back: store.written_back.load(Ordering::Relaxed),
        flushed: store.flushed.load(Ordering::Relaxed),
        recycled: store.recycled.load(Ordering::Relaxed),
        written_through: store.written_through.load(Ordering::Relaxed),
        hops: store.hops.load(Ordering::Relaxed),
        checked: blocks as u64,
        lost,
    })
}
