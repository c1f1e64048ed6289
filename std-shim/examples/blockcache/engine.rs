//! The blockcache engine: worker threads read and write 4 KiB blocks of files through a
//! decoded-block LRU cache and a write-back buffer, under a memory limit. Shared by the
//! `blockcache` example and the conformance suite (which includes this file as a module); its
//! cache, block contents and temporary directory also serve `blockcache-async`.
//!
//! ## Locks, scopes and shrinkers
//!
//! | lock | held while allocating | scope while held | shrinker that takes it |
//! |---|---|---|---|
//! | `cache` | the decoded block | NOFS | `block-cache` (FS class) |
//! | `writeback` | the dirty copy | NOIO | `write-back` (IO class) |
//!
//! NOFS under the cache lock keeps reclaim from calling the cache's own shrinker; NOIO under the
//! write-back lock keeps it from the write-back shrinker *and* (NOIO ⇒ NOFS) from the cache's,
//! which breaks the cycle cache lock → write-back shrinker → write-back lock → cache shrinker.
//! A lock holder never waits for memory: it asks with NORETRY (one reclaim pass over the caches
//! its scope allows) and falls back on what it holds — the cache recycles its least recently used
//! buffer, the write-back buffer writes the block through to its file. The maps are sized up
//! front, so nothing else allocates under the locks. Shrinkers only *try* their lock, as the
//! kernel's filesystem shrinkers do (R4.6).
//!
//! `--no-scopes` drops the scopes: reclaim then calls a shrinker whose lock its own thread holds
//! — a self-deadlock with a blocking lock. The shrinker sees the lock's owner is the current
//! thread and reports it; a watchdog catches anything else that stops progress. Either way the
//! program exits non-zero naming the lock and the shrinker instead of hanging.
//!
//! Both locks are `ctxalloc::TrackedMutex`es and each shrinker declares the lock it takes
//! (`ShrinkerHandle::takes`). Built with the `lockcheck` feature, the reclaim-order checker
//! therefore reports the missing scope at the first allocation under a lock — while memory is
//! still plentiful, before reclaim has ever run, long before anything deadlocks.

use ctxalloc::{
    Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker, ShrinkerHandle, TrackedMutex, TrackedMutexGuard,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

/// Block size.
pub const BLOCK: usize = 4096;

/// A one-line progress display on stderr, drawn only when stderr is a terminal (indicatif
/// hides it otherwise: nothing is redrawn into a pipe or a file).
pub fn progress_bar(on: bool) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{msg}").expect("a valid template"));
    bar
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Run for this long, or …
    pub seconds: f64,
    /// … for this many operations in all, if set.
    pub ops: Option<u64>,
    pub threads: usize,
    pub files: usize,
    pub blocks_per_file: u64,
    /// The memory limit in bytes (`None`: no limit).
    pub limit: Option<usize>,
    /// Take the limit from the cgroup instead (`--limit auto`, `--limit 80%`).
    pub limit_auto: Option<ctxalloc::cgroup::AutoLimit>,
    /// Fire a memory-pressure event this often during the run (`--pressure`), through a pipe
    /// the allocator's pressure monitor watches.
    pub pressure_every: Option<Duration>,
    /// Drop the NOFS/NOIO scopes (to show the deadlock they prevent).
    pub no_scopes: bool,
    /// Seconds without progress after which the watchdog declares a deadlock.
    pub watchdog: u64,
    /// Print progress while running.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seconds: 10.0,
            ops: None,
            threads: 4,
            files: 8,
            blocks_per_file: 4096,
            limit: Some(64 << 20),
            limit_auto: None,
            pressure_every: None,
            no_scopes: false,
            watchdog: 5,
            progress: true,
        }
    }
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub reads: u64,
    pub writes: u64,
    pub seconds: f64,
    pub peak: usize,
    pub hits: u64,
    pub misses: u64,
    /// Blocks the cache's shrinker evicted.
    pub evicted: u64,
    /// Dirty blocks the write-back shrinker wrote to disk and freed (reclaim).
    pub written_back: u64,
    /// Dirty blocks the flusher thread wrote (no memory pressure needed).
    pub flushed: u64,
    /// Cache insertions that recycled a buffer because memory was short.
    pub recycled: u64,
    /// Writes that went straight to disk because memory was short.
    pub written_through: u64,
    pub checked: u64,
    pub lost: u64,
    /// The limit the run had.
    pub limit: Option<usize>,
    /// The pressure events fired (`--pressure`).
    pub pressure: Vec<PressureEvent>,
}

/// One pressure event of a `--pressure` run: the caches and usage just before it was fired
/// and once the allocator had answered it.
#[derive(Clone, Copy, Debug)]
pub struct PressureEvent {
    pub at: f64,
    pub cached: (usize, usize),
    pub dirty: (usize, usize),
    pub usage: (usize, usize),
    /// Bytes the allocator says the pass gave back.
    pub given: u64,
    /// Whether a pass ran (events closer than the rate limit are skipped).
    pub ran: bool,
    /// Fired after the workers stopped (nothing refills the caches).
    pub idle: bool,
}

/// Pressure events fired after the run (`--pressure`).
const IDLE_PRESSURE_EVENTS: usize = 4;

/// The fake pressure source: a pipe whose read end the allocator's monitor watches.
struct PressureSource {
    fds: [i32; 2],
}

impl PressureSource {
    fn new() -> io::Result<PressureSource> {
        let mut fds = [0; 2];
        // SAFETY: fills two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        ctxalloc::pressure::watch_fd(fds[0]);
        Ok(PressureSource { fds })
    }

    /// Fires one event and waits (at most 10 s) for the allocator's answer.
    fn fire(&self, s: &Store, at: f64) -> PressureEvent {
        let before = (s.cached.load(Ordering::Relaxed), s.dirty.load(Ordering::Relaxed), ctxalloc::usage());
        let st = ctxalloc::stats();
        let seen = ctxalloc::pressure::handled();
        // SAFETY: one byte from a live buffer into our pipe.
        unsafe { libc::write(self.fds[1], b"!".as_ptr().cast(), 1) };
        ctxalloc::pressure::wait(seen, Duration::from_secs(10));
        let after = ctxalloc::stats();
        PressureEvent {
            at,
            cached: (before.0, s.cached.load(Ordering::Relaxed)),
            dirty: (before.1, s.dirty.load(Ordering::Relaxed)),
            usage: (before.2, ctxalloc::usage()),
            given: after.pressure_given_bytes - st.pressure_given_bytes,
            ran: after.pressure_passes > st.pressure_passes,
            idle: false,
        }
    }
}

impl Drop for PressureSource {
    fn drop(&mut self) {
        ctxalloc::pressure::unwatch_fd();
        for fd in self.fds {
            // SAFETY: our own descriptors, no longer watched.
            unsafe { libc::close(fd) };
        }
    }
}

/// How a run can end badly.
#[derive(Debug)]
pub enum Failure {
    Io(io::Error),
    /// Reclaim recursed into a lock the reclaiming thread holds.
    Recursion {
        lock: &'static str,
        shrinker: &'static str,
    },
    /// No progress for the watchdog period; who held what.
    Deadlock(String),
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
                "deadlock: reclaim called shrinker `{shrinker}`, which needs lock `{lock}`, on a thread that \
                 already holds `{lock}` and allocated without a scope that forbids `{shrinker}`"
            ),
            Failure::Deadlock(who) => write!(f, "deadlock: no progress for the watchdog period; {who}"),
        }
    }
}

// -------------------------------------------------------------------------------------------
// A lock that knows its owner
// -------------------------------------------------------------------------------------------

/// A mutex that records which thread holds it and which shrinker waits for it, so recursion and
/// deadlocks can be named.
struct Owned<T> {
    name: &'static str,
    inner: TrackedMutex<T>,
    owner: Mutex<Option<ThreadId>>,
    waiting: Mutex<Option<&'static str>>,
}

struct OwnedGuard<'a, T> {
    lock: &'a Owned<T>,
    guard: TrackedMutexGuard<'a, T>,
}

impl<T> Owned<T> {
    fn new(name: &'static str, v: T) -> Owned<T> {
        Owned { name, inner: TrackedMutex::new(v, name), owner: Mutex::new(None), waiting: Mutex::new(None) }
    }

    #[track_caller]
    fn lock(&self) -> OwnedGuard<'_, T> {
        let guard = self.inner.lock();
        *self.owner.lock().unwrap() = Some(thread::current().id());
        OwnedGuard { lock: self, guard }
    }

    /// For shrinkers: `Err` if the calling thread holds the lock already (with a blocking lock
    /// that is a self-deadlock: the bug a missing scope causes); `Ok(None)` if another thread
    /// holds it (the shrinker stops); the guard otherwise.
    fn try_lock_from_shrinker(&self, shrinker: &'static str) -> Result<Option<OwnedGuard<'_, T>>, Failure> {
        if *self.owner.lock().unwrap() == Some(thread::current().id()) {
            *self.waiting.lock().unwrap() = Some(shrinker);
            return Err(Failure::Recursion { lock: self.name, shrinker });
        }
        let Some(guard) = self.inner.try_lock() else { return Ok(None) };
        *self.owner.lock().unwrap() = Some(thread::current().id());
        Ok(Some(OwnedGuard { lock: self, guard }))
    }

    fn describe(&self) -> String {
        format!(
            "lock `{}` held by {:?}, wanted by shrinker {:?}",
            self.name,
            self.owner.lock().unwrap(),
            self.waiting.lock().unwrap()
        )
    }
}

impl<T> Drop for OwnedGuard<'_, T> {
    fn drop(&mut self) {
        *self.lock.owner.lock().unwrap() = None;
    }
}

impl<T> std::ops::Deref for OwnedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for OwnedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

// -------------------------------------------------------------------------------------------
// The decoded-block cache: an LRU list over a slab of nodes
// -------------------------------------------------------------------------------------------

/// A block's identity: (file, block).
pub type Key = (u32, u64);

/// Dirty blocks by key: their data and version.
pub type Dirty = HashMap<Key, (Box<[u8]>, u64)>;

const NIL: usize = usize::MAX;

struct Node {
    key: Key,
    version: u64,
    data: Box<[u8]>,
    prev: usize,
    next: usize,
}

/// Least recently used at the tail.
pub struct Lru {
    map: HashMap<Key, usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Lru {
    /// Sized up front for `blocks`: the cache never grows its tables under the lock.
    pub fn with_capacity(blocks: usize) -> Lru {
        Lru {
            map: HashMap::with_capacity(blocks),
            nodes: Vec::with_capacity(blocks),
            free: Vec::with_capacity(blocks),
            head: NIL,
            tail: NIL,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (p, n) = (self.nodes[i].prev, self.nodes[i].next);
        if p == NIL {
            self.head = n
        } else {
            self.nodes[p].next = n
        }
        if n == NIL {
            self.tail = p
        } else {
            self.nodes[n].prev = p
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// The cached version of `k`, marking it used; the block must carry its version.
    pub fn get(&mut self, k: Key) -> Option<u64> {
        let i = *self.map.get(&k)?;
        self.unlink(i);
        self.push_front(i);
        let n = &self.nodes[i];
        assert_eq!(n.data[..8], n.version.to_le_bytes(), "cached block {k:?} corrupted");
        Some(n.version)
    }

    /// Inserts a copy of `src` unless a newer version is cached. The copy is allocated here, under
    /// the cache lock, with NORETRY; when memory is short the least recently used buffer is
    /// recycled instead (or, with an empty cache, the block is not cached). Returns whether it
    /// had to recycle.
    pub fn insert(&mut self, k: Key, src: &[u8], version: u64) -> bool {
        if let Some(&i) = self.map.get(&k) {
            if self.nodes[i].version < version {
                self.nodes[i].data.copy_from_slice(src);
                self.nodes[i].version = version;
                self.unlink(i);
                self.push_front(i);
            }
            return false;
        }
        let (data, recycled) = match alloc_block() {
            Some(b) => (b, false),
            None => match self.evict_take() {
                Some(b) => (b, true),
                None => return false,
            },
        };
        let mut node = Node { key: k, version, data, prev: NIL, next: NIL };
        node.data.copy_from_slice(src);
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.map.insert(k, i);
        self.push_front(i);
        recycled
    }

    /// Removes the least recently used block and returns its buffer.
    fn evict_take(&mut self) -> Option<Box<[u8]>> {
        let i = self.tail;
        if i == NIL {
            return None;
        }
        self.unlink(i);
        self.map.remove(&self.nodes[i].key);
        self.free.push(i);
        Some(std::mem::take(&mut self.nodes[i].data))
    }

    /// Drops up to `n` least recently used blocks; returns how many.
    pub fn evict(&mut self, n: usize) -> usize {
        (0..n).take_while(|_| self.evict_take().is_some()).count()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

// -------------------------------------------------------------------------------------------
// The store
// -------------------------------------------------------------------------------------------

/// A block buffer, or `None` if memory is short: NORETRY gives reclaim one pass — over the
/// shrinkers the caller's scope allows — and no waiting.
pub fn alloc_block() -> Option<Box<[u8]>> {
    let layout = std::alloc::Layout::from_size_align(BLOCK, 1).unwrap();
    let p = ctxalloc::alloc_with(layout, Gfp::NORETRY | Gfp::NOWARN).ok()?;
    // SAFETY: a fresh block of `BLOCK` bytes from the global allocator with the layout
    // `Box<[u8]>` frees it with.
    Some(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(p.as_ptr(), BLOCK)) })
}

/// The contents of version `v` of block `k` (past its 8-byte version header).
fn contents(k: Key, v: u64, out: &mut [u8]) {
    let mut x = (u64::from(k.0) << 40) ^ (k.1 << 8) ^ v.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5555;
    for w in out.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

/// A whole block: version header and contents.
pub fn block(k: Key, v: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&v.to_le_bytes());
    contents(k, v, &mut out[8..]);
}

struct Store {
    files: Vec<File>,
    cache: Owned<Lru>,
    writeback: Owned<Dirty>,
    /// Objects in each, for the shrinkers' lock-free `count`.
    cached: AtomicUsize,
    dirty: AtomicUsize,
    /// The version every block must have on disk at the end.
    versions: Vec<Vec<AtomicU64>>,
    no_scopes: bool,
    reads: AtomicU64,
    writes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
    written_back: AtomicU64,
    flushed: AtomicU64,
    recycled: AtomicU64,
    written_through: AtomicU64,
    /// First failure seen by a shrinker (they cannot return errors).
    failure: Mutex<Option<Failure>>,
    failed: AtomicBool,
}

impl Store {
    fn scope(&self, flags: Gfp) -> Option<ctxalloc::ScopeGuard> {
        (!self.no_scopes).then(|| ctxalloc::scope(flags))
    }

    /// A shrinker's way into one of the store's locks: the guard, or `None` (the shrinker
    /// stops) — a self-deadlock it would have caused is recorded as the run's failure.
    fn lock_for_shrinker<'a, T>(
        &self,
        lock: &'a Owned<T>,
        shrinker: &'static str,
    ) -> Option<OwnedGuard<'a, T>> {
        lock.try_lock_from_shrinker(shrinker).unwrap_or_else(|f| {
            self.fail(f);
            None
        })
    }

    fn fail(&self, f: Failure) {
        let mut slot = self.failure.lock().unwrap();
        if slot.is_none() {
            *slot = Some(f);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn read(&self, k: Key, buf: &mut [u8]) -> io::Result<()> {
        if self.cache.lock().get(k).is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        // The newest data is in the write-back buffer or on disk.
        let pending = {
            let w = self.writeback.lock();
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
        self.cache_insert(k, buf, version);
        Ok(())
    }

    /// Caches a copy, under the cache lock, inside a NOFS scope.
    fn cache_insert(&self, k: Key, buf: &[u8], version: u64) {
        let mut c = self.cache.lock();
        let _nofs = self.scope(Gfp::NOFS);
        if c.insert(k, buf, version) {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
        self.cached.store(c.len(), Ordering::Relaxed);
    }

    fn write(&self, k: Key, buf: &mut [u8]) -> io::Result<()> {
        let v = self.versions[k.0 as usize][k.1 as usize].fetch_add(1, Ordering::AcqRel) + 1;
        block(k, v, buf);
        {
            let mut w = self.writeback.lock();
            let _noio = self.scope(Gfp::NOIO);
            if w.get(&k).is_none_or(|(_, old)| *old < v) {
                match alloc_block() {
                    Some(mut copy) => {
                        copy.copy_from_slice(buf);
                        w.insert(k, (copy, v));
                    }
                    None => {
                        // Memory is short: write through instead of buffering.
                        w.remove(&k);
                        self.write_if_newer(k, buf, v)?;
                        self.written_through.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.dirty.store(w.len(), Ordering::Relaxed);
        }
        self.cache_insert(k, buf, v);
        Ok(())
    }

    /// Writes version `v` of block `k` unless its file holds a newer one already.
    fn write_if_newer(&self, k: Key, data: &[u8], v: u64) -> io::Result<()> {
        write_if_newer(&self.files, k, data, v)
    }

    /// Writes up to `n` dirty blocks to their files and frees them; returns how many.
    fn write_back(&self, w: &mut Dirty, n: usize) -> io::Result<usize> {
        let done = write_back(&self.files, w, n)?;
        self.dirty.store(w.len(), Ordering::Relaxed);
        Ok(done)
    }
}

/// Writes version `v` of block `k` to its file unless the file holds a newer one already.
pub fn write_if_newer(files: &[File], k: Key, data: &[u8], v: u64) -> io::Result<()> {
    let mut head = [0u8; 8];
    files[k.0 as usize].read_exact_at(&mut head, k.1 * BLOCK as u64)?;
    if u64::from_le_bytes(head) < v {
        files[k.0 as usize].write_all_at(data, k.1 * BLOCK as u64)?;
    }
    Ok(())
}

/// Writes up to `n` dirty blocks of `w` to their files and frees them; returns how many.
pub fn write_back(files: &[File], w: &mut Dirty, n: usize) -> io::Result<usize> {
    let mut done = 0;
    while done < n {
        let Some(&k) = w.keys().next() else { break };
        let (data, v) = w.remove(&k).unwrap();
        // A newer version may be on disk already (a flush raced): never go backwards.
        write_if_newer(files, k, &data, v)?;
        done += 1;
    }
    Ok(done)
}

/// The cache's shrinker: evicts least recently used blocks. Filesystem class.
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
        let Some(mut c) = s.lock_for_shrinker(&s.cache, "block-cache") else { return ScanResult::Stop };
        let n = c.evict(sc.nr_to_scan);
        s.cached.store(c.len(), Ordering::Relaxed);
        s.evicted.fetch_add(n as u64, Ordering::Relaxed);
        ScanResult::Freed(n)
    }
}

/// The write-back buffer's shrinker: frees dirty blocks by writing them out. I/O class.
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
        let Some(mut w) = s.lock_for_shrinker(&s.writeback, "write-back") else { return ScanResult::Stop };
        match s.write_back(&mut w, sc.nr_to_scan) {
            Ok(n) => {
                s.written_back.fetch_add(n as u64, Ordering::Relaxed);
                ScanResult::Freed(n)
            }
            Err(e) => {
                s.fail(Failure::Io(e));
                ScanResult::Stop
            }
        }
    }
}

pub fn tempdir() -> io::Result<PathBuf> {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "blockcache-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs the workload. The limit (if any) is set for the run and removed afterwards.
pub fn run(o: &Options) -> Result<Report, Failure> {
    let dir = tempdir()?;
    let result = run_in(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
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
    let store = Arc::new(Store {
        files,
        cache: Owned::new("cache", Lru::with_capacity(o.files * o.blocks_per_file as usize)),
        writeback: Owned::new("writeback", HashMap::with_capacity(o.files * o.blocks_per_file as usize)),
        cached: AtomicUsize::new(0),
        dirty: AtomicUsize::new(0),
        versions: (0..o.files).map(|_| (0..o.blocks_per_file).map(|_| AtomicU64::new(0)).collect()).collect(),
        no_scopes: o.no_scopes,
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        misses: AtomicU64::new(0),
        evicted: AtomicU64::new(0),
        written_back: AtomicU64::new(0),
        flushed: AtomicU64::new(0),
        recycled: AtomicU64::new(0),
        written_through: AtomicU64::new(0),
        failure: Mutex::new(None),
        failed: AtomicBool::new(false),
    });
    let handles: [ShrinkerHandle; 2] = [
        ctxalloc::register_shrinker(Arc::new(CacheShrinker(store.clone()))),
        ctxalloc::register_shrinker(Arc::new(WriteBackShrinker(store.clone()))),
    ];
    // Tell the reclaim-order checker (feature `lockcheck`) which lock each shrinker takes, so
    // an allocation under one without the scope is reported before memory is ever short.
    handles[0].takes(&store.cache.inner);
    handles[1].takes(&store.writeback.inner);
    let limit = match o.limit_auto {
        // `main` said where it comes from, or why there is none.
        Some(how) => ctxalloc::cgroup::set_limit_from_cgroup(how).ok(),
        None => {
            let limit = o.limit.map(|l| l.max(ctxalloc::usage() + (8 << 20)));
            if let Some(l) = limit {
                ctxalloc::set_limit(l).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            }
            limit
        }
    };
    let source = o.pressure_every.map(|_| PressureSource::new()).transpose()?;
    let mut pressure = Vec::with_capacity(1024);
    let mut next_pressure = o.pressure_every.map(|every| Instant::now() + every);

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut workers = Vec::new();
    for t in 0..o.threads {
        let (s, stop, o) = (store.clone(), stop.clone(), o.clone());
        workers.push(thread::Builder::new().name(format!("worker-{t}")).spawn(
            move || -> io::Result<()> {
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (t as u64 + 1);
                let mut buf = vec![0u8; BLOCK];
                let per_thread = o.ops.map(|n| n / o.threads as u64);
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && per_thread.is_none_or(|n| done < n)
                    && !s.failed.load(Ordering::Relaxed)
                {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // A hot eighth of the blocks gets three quarters of the traffic.
                    let f = (x >> 8) % o.files as u64;
                    let b = if !x.is_multiple_of(4) {
                        (x >> 16) % (o.blocks_per_file / 8)
                    } else {
                        (x >> 16) % o.blocks_per_file
                    };
                    let k = (f as u32, b);
                    if (x >> 40).is_multiple_of(5) {
                        s.write(k, &mut buf)?;
                        s.writes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        s.read(k, &mut buf)?;
                        s.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    done += 1;
                }
                Ok(())
            },
        )?);
    }
    let flusher = {
        let (s, stop) = (store.clone(), stop.clone());
        thread::Builder::new().name("flusher".into()).spawn(move || -> io::Result<()> {
            while !stop.load(Ordering::Relaxed) {
                thread::park_timeout(Duration::from_millis(20));
                let mut w = s.writeback.lock();
                let _noio = s.scope(Gfp::NOIO);
                let n = w.len();
                let done = s.write_back(&mut w, n)?;
                s.flushed.fetch_add(done as u64, Ordering::Relaxed);
            }
            Ok(())
        })?
    };

    // Progress, the watchdog, and the end of the run. The limit is lifted before a failure
    // is described (its text allocates much); the progress line allocates a little, as any
    // thread holding no lock may.
    let limit_text = limit.map_or("no limit".to_string(), |l| format!("{} MiB", l >> 20));
    let bar = progress_bar(o.progress);
    let deadline = start + Duration::from_secs_f64(o.seconds);
    let (mut last_ops, mut last_change, mut peak) = (0u64, Instant::now(), 0usize);
    let failure = loop {
        thread::sleep(Duration::from_millis(100));
        peak = peak.max(ctxalloc::usage());
        let ops = store.reads.load(Ordering::Relaxed) + store.writes.load(Ordering::Relaxed);
        if o.progress {
            bar.set_message(format!(
                "{:5.1} s {:>10} ops {:>9.0} ops/s  usage {:>5} MiB of {}",
                start.elapsed().as_secs_f64(),
                ops,
                ops as f64 / start.elapsed().as_secs_f64(),
                ctxalloc::usage() >> 20,
                limit_text,
            ));
        }
        if let (Some(src), Some(at), Some(every)) = (&source, next_pressure, o.pressure_every) {
            if Instant::now() >= at && pressure.len() < pressure.capacity() {
                pressure.push(src.fire(&store, start.elapsed().as_secs_f64()));
                next_pressure = Some(Instant::now() + every);
            }
        }
        if store.failed.load(Ordering::SeqCst) {
            ctxalloc::remove_limit();
            break store.failure.lock().unwrap().take();
        }
        if ops != last_ops {
            (last_ops, last_change) = (ops, Instant::now());
        } else if last_change.elapsed() >= Duration::from_secs(o.watchdog) {
            ctxalloc::remove_limit();
            let who = format!("{}; {}", store.cache.describe(), store.writeback.describe());
            break Some(Failure::Deadlock(who));
        }
        let done = o.ops.map_or(Instant::now() >= deadline, |n| ops >= n - n % o.threads as u64);
        if done {
            break None;
        }
    };
    bar.finish_and_clear();
    if let Some(f) = failure {
        // Threads may be deadlocked: leave them; the caller exits.
        return Err(f);
    }
    stop.store(true, Ordering::Relaxed);
    flusher.thread().unpark();
    // The watchdog also covers the end: every thread must finish within its period.
    let stopping = Instant::now();
    while !(workers.iter().all(|w| w.is_finished()) && flusher.is_finished()) {
        if stopping.elapsed() >= Duration::from_secs(o.watchdog) {
            ctxalloc::remove_limit();
            let who =
                format!("at the end of the run; {}; {}", store.cache.describe(), store.writeback.describe());
            return Err(Failure::Deadlock(who));
        }
        thread::sleep(Duration::from_millis(10));
    }
    for w in workers {
        w.join().expect("worker panicked")?;
    }
    flusher.join().expect("flusher panicked")?;
    let seconds = start.elapsed().as_secs_f64();
    // With the workers stopped nothing refills the caches: a few more events show what
    // pressure gives back from an idle process (spaced past the allocator's rate limit).
    if let (Some(src), Some(every)) = (&source, o.pressure_every) {
        for _ in 0..IDLE_PRESSURE_EVENTS {
            thread::sleep(every.max(Duration::from_millis(300)));
            let e = src.fire(&store, start.elapsed().as_secs_f64());
            pressure.push(PressureEvent { idle: true, ..e });
        }
    }
    {
        let mut w = store.writeback.lock();
        let n = w.len();
        let done = store.write_back(&mut w, n)?;
        store.flushed.fetch_add(done as u64, Ordering::Relaxed);
    }
    ctxalloc::remove_limit();
    drop(source);
    drop(handles);

    // Every block on disk must hold the last version written.
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
        reads: store.reads.load(Ordering::Relaxed),
        writes: store.writes.load(Ordering::Relaxed),
        seconds,
        peak,
        hits: store.hits.load(Ordering::Relaxed),
        misses: store.misses.load(Ordering::Relaxed),
        evicted: store.evicted.load(Ordering::Relaxed),
        written_back: store.written_back.load(Ordering::Relaxed),
        flushed: store.flushed.load(Ordering::Relaxed),
        recycled: store.recycled.load(Ordering::Relaxed),
        written_through: store.written_through.load(Ordering::Relaxed),
        checked: o.files as u64 * o.blocks_per_file,
        lost,
        limit,
        pressure,
    })
}
