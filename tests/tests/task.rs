//! Scopes that follow a task, on tokio's multi-thread runtime: scoped futures and async scoped
//! locks across `.await` and workers, cancellation, and the async blockcache pattern under a
//! memory limit (with a control that fails without the scope).

use ctxalloc::{AsyncScopedMutex, Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use ctxalloc_tests::{assert_child_passes, child_stderr, is_child, limit_to};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// A multi-thread runtime whose workers have all started (a starting thread allocates: not
/// something to leave for later under a tight limit).
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let started = Arc::new((std::sync::Mutex::new(0usize), std::sync::Condvar::new()));
    let s = started.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(move || {
            *s.0.lock().unwrap() += 1;
            s.1.notify_all();
        })
        .enable_all()
        .build()
        .unwrap();
    let n = started.0.lock().unwrap();
    drop(started.1.wait_while(n, |n| *n < workers).unwrap());
    rt
}

/// What a task saw at one of its allocations: the thread it ran on and the word there.
type Seen = Vec<(ThreadId, Gfp)>;

/// Allocates, and records the thread and its context word as the allocation left them.
fn allocate_and_look(seen: &mut Seen) {
    let v = std::hint::black_box(vec![7u8; 200]);
    seen.push((std::thread::current().id(), ctxalloc::current()));
    drop(v);
}

/// A little work between awaits, so that workers' queues fill and idle workers steal.
fn busy() {
    let mut x = 0u64;
    for i in 0..20_000u64 {
        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
    }
}

/// Whether a task ran on more than one thread.
fn hopped(seen: &Seen) -> bool {
    seen.iter().any(|(t, _)| *t != seen[0].0)
}

/// Rounds of a workload, each asserting what it must, until one shows a task on two workers
/// (which the scheduler decides: every round is checked, migration is required of one).
const ROUNDS: usize = 20;

#[test]
fn scoped_tasks_carry_their_scope_to_every_worker_and_to_no_other_task() {
    let rt = runtime(3);
    let mut migrated = 0;
    let mut round = 0;
    while migrated == 0 && round < ROUNDS {
        round += 1;
        let (scoped, plain): (Vec<Seen>, Vec<Seen>) = rt.block_on(async {
            let mut scoped = Vec::new();
            let mut plain = Vec::new();
            for i in 0..48 {
                let body = async move {
                    let mut seen = Seen::new();
                    for _ in 0..100 {
                        allocate_and_look(&mut seen);
                        busy();
                        tokio::task::yield_now().await;
                    }
                    seen
                };
                if i % 2 == 0 {
                    scoped.push(ctxalloc::spawn_scoped(Gfp::NOFS, body));
                } else {
                    plain.push(tokio::spawn(body));
                }
            }
            let mut s = Vec::new();
            for h in scoped {
                s.push(h.await.unwrap());
            }
            let mut p = Vec::new();
            for h in plain {
                p.push(h.await.unwrap());
            }
            (s, p)
        });
        for seen in &scoped {
            assert!(seen.iter().all(|(_, w)| *w == Gfp::NOFS), "a scoped task lost its scope: {seen:?}");
        }
        for seen in &plain {
            assert!(seen.iter().all(|(_, w)| *w == Gfp::KERNEL), "another task's scope leaked: {seen:?}");
        }
        migrated = scoped.iter().filter(|s| hopped(s)).count();
    }
    assert!(migrated > 0, "in {ROUNDS} rounds no scoped task moved between workers: the test proved nothing");
    println!("round {round}: {migrated} of 24 scoped tasks ran on more than one worker");
}

#[test]
fn a_guard_held_across_awaits_scopes_every_poll_of_its_task_only() {
    let rt = runtime(2);
    let cache = Arc::new(AsyncScopedMutex::new(Vec::<Vec<u8>>::new(), Gfp::NOFS, "task-cache"));
    let mut hopped_holding = false;
    let mut round = 0;
    while !hopped_holding && round < ROUNDS {
        round += 1;
        let (holders, bystanders) = rt.block_on(async {
            let holders: Vec<_> = (0..8)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(ctxalloc::scoped(Gfp::KERNEL, async move {
                        let (mut held, mut after) = (Seen::new(), Seen::new());
                        for _ in 0..25 {
                            let mut c = cache.lock().await;
                            for _ in 0..4 {
                                tokio::task::yield_now().await; // may resume on another worker
                                busy();
                                allocate_and_look(&mut held);
                                c.push(vec![1; 64]);
                            }
                            drop(c);
                            tokio::task::yield_now().await;
                            allocate_and_look(&mut after);
                        }
                        (held, after)
                    }))
                })
                .collect();
            let bystanders: Vec<_> = (0..8)
                .map(|_| {
                    tokio::spawn(async {
                        let mut seen = Seen::new();
                        for _ in 0..200 {
                            allocate_and_look(&mut seen);
                            busy();
                            tokio::task::yield_now().await;
                        }
                        seen
                    })
                })
                .collect();
            let mut r = Vec::new();
            for h in holders {
                r.push(h.await.unwrap());
            }
            let mut b = Vec::new();
            for h in bystanders {
                b.push(h.await.unwrap());
            }
            (r, b)
        });
        for (held, after) in &holders {
            assert!(
                held.iter().all(|(_, w)| w.contains(Gfp::NOFS)),
                "lost the lock's scope across an await: {held:?}"
            );
            assert!(after.iter().all(|(_, w)| *w == Gfp::KERNEL), "the scope outlived the guard: {after:?}");
        }
        for seen in &bystanders {
            assert!(
                seen.iter().all(|(_, w)| *w == Gfp::KERNEL),
                "a bystander saw the holder's scope: {seen:?}"
            );
        }
        hopped_holding = holders.iter().any(|(held, _)| hopped(held));
    }
    assert!(hopped_holding, "in {ROUNDS} rounds no holder resumed on another worker while holding the lock");
}

#[test]
fn a_task_cancelled_while_holding_a_guard_leaves_no_bits_anywhere() {
    let rt = runtime(2);
    let lock = Arc::new(AsyncScopedMutex::new(0u32, Gfp::NOIO, "task-cancel"));
    rt.block_on(async {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let l = lock.clone();
        let task = tokio::spawn(ctxalloc::scoped(Gfp::NOFS, async move {
            let _g = l.lock().await;
            let _ = tx.send(()); // holding it now
            std::future::pending::<()>().await;
        }));
        rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(lock.try_lock().is_some(), "the guard was dropped with the task");
        // Every worker, many times: no bit of the cancelled task anywhere.
        let probes: Vec<_> = (0..64)
            .map(|_| {
                tokio::spawn(async {
                    tokio::task::yield_now().await;
                    ctxalloc::current()
                })
            })
            .collect();
        for p in probes {
            assert_eq!(p.await.unwrap(), Gfp::KERNEL);
        }
    });
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
}

#[test]
fn scoped_futures_nest_with_each_other_and_with_thread_scopes_and_restore_on_panic() {
    let rt = runtime(2);
    rt.block_on(async {
        let words = tokio::spawn(ctxalloc::scoped(Gfp::NOFS, async {
            let outer = ctxalloc::current();
            let inner = ctxalloc::scoped(Gfp::NOIO, async {
                tokio::task::yield_now().await;
                ctxalloc::current()
            })
            .await;
            let thread = ctxalloc::with_scope(Gfp::NORECLAIM, ctxalloc::current);
            (outer, inner, thread, ctxalloc::current())
        }))
        .await
        .unwrap();
        assert_eq!(words, (Gfp::NOFS, Gfp::NOFS | Gfp::NOIO, Gfp::NOFS | Gfp::NORECLAIM, Gfp::NOFS));
        // A guard's bits come and go with it, within one poll too; the future's own stay.
        let m = AsyncScopedMutex::new((), Gfp::NOIO | Gfp::NOFS, "task-exact");
        let (with, without) = ctxalloc::scoped(Gfp::NOFS, async {
            let g = m.lock().await;
            let with = ctxalloc::current();
            drop(g);
            (with, ctxalloc::current())
        })
        .await;
        assert_eq!((with, without), (Gfp::NOFS | Gfp::NOIO, Gfp::NOFS));
        // A panicking poll: the word is restored on the worker, which then polls other tasks.
        let boom = tokio::spawn(ctxalloc::scoped(Gfp::NOFS, async { panic!("inside a scoped poll") }));
        assert!(boom.await.unwrap_err().is_panic());
        for _ in 0..32 {
            assert_eq!(tokio::spawn(async { ctxalloc::current() }).await.unwrap(), Gfp::KERNEL);
        }
    });
}

#[test]
fn a_lock_taken_outside_a_scoped_future_is_reported() {
    let err = child_stderr("child_unscoped_lock");
    assert_eq!(err.matches("async scoped lock `unscoped` taken at").count(), 1, "reported once: {err}");
    assert!(err.contains("outside a scoped future"), "{err}");
}

#[test]
fn child_unscoped_lock() {
    if !is_child("child_unscoped_lock") {
        return;
    }
    let rt = runtime(2);
    let lock = AsyncScopedMutex::new(0u32, Gfp::NOFS, "unscoped");
    rt.block_on(async {
        for _ in 0..3 {
            *lock.lock().await += 1; // not inside ctxalloc::scoped
        }
    });
    assert_eq!(*lock.try_lock().unwrap(), 3);
}

// ---------------------------------------------------------------------------------------------
// The blockcache pattern, async: a cache behind an async lock, an FS-class shrinker that needs
// the lock, tasks that allocate while holding it across awaits, under a memory limit.

/// A 16 KiB block from the allocator's fallible API (NORETRY: one reclaim pass, then null).
struct Block(std::ptr::NonNull<u8>);

const BLOCK: std::alloc::Layout = match std::alloc::Layout::from_size_align(16 << 10, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

impl Block {
    /// `None` when memory is short (the caller goes on without it).
    fn new() -> Option<Block> {
        ctxalloc::alloc_with(BLOCK, Gfp::NORETRY | Gfp::NOWARN).ok().map(Block)
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated with `BLOCK` by `Block::new`.
        unsafe { ctxalloc::dealloc(self.0, BLOCK) };
    }
}

// SAFETY: a block is plain memory owned by its `Block`.
unsafe impl Send for Block {}

struct AsyncCache {
    blocks: AsyncScopedMutex<Vec<Block>>,
    len: AtomicUsize,
    scans: AtomicUsize,
    freed: AtomicUsize,
    /// Scans that ran for the very task holding the lock (reclaim recursing into its cache).
    recursions: AtomicUsize,
}

impl Shrinker for AsyncCache {
    fn name(&self) -> &str {
        "async-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.len.load(Ordering::Relaxed)
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::Relaxed);
        if self.blocks.held_by_current_task() {
            // A synchronous shrinker would now wait for its own task: the deadlock.
            self.recursions.fetch_add(1, Ordering::Relaxed);
            return ScanResult::Stop;
        }
        // Held by another task (maybe across an await): never wait for it.
        let Some(mut b) = self.blocks.try_lock() else { return ScanResult::Stop };
        let n = sc.nr_to_scan.min(b.len());
        let keep = b.len() - n;
        b.truncate(keep);
        self.len.store(keep, Ordering::Relaxed);
        self.freed.fetch_add(n, Ordering::Relaxed);
        ScanResult::Freed(n)
    }
}

/// Lets the executor run other tasks once, allocating nothing (tokio's `yield_now` allocates
/// its deferred-wake list, which a lock holder at the limit cannot always get).
struct YieldOnce(bool);

impl std::future::Future for YieldOnce {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if std::mem::replace(&mut self.0, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// What one run of the pattern showed.
#[derive(Debug)]
struct Run {
    /// Scans of the cache's shrinker, and those that ran for the task holding its lock.
    scans: usize,
    recursions: usize,
    /// Blocks the shrinker freed.
    freed: usize,
    /// Times reclaim passed the shrinker over because the allocating context forbade it.
    skipped: usize,
    /// Blocks the holder got before memory ran out under its lock.
    filled: usize,
}

/// A task holds the cache's lock across awaits and fills the cache — each block allocated
/// under the lock, fallibly — until memory runs out under a 16 MiB limit (direct reclaim has
/// then run for it); it lets the lock go, and the block-on thread allocates more, so that
/// reclaim takes from the cache. Only the holder allocates near the limit, and only fallibly.
fn async_cache_under_a_limit(flags: Gfp) -> Run {
    let cache = Arc::new(AsyncCache {
        blocks: AsyncScopedMutex::new(Vec::with_capacity(1 << 16), flags, "async-cache"),
        len: AtomicUsize::new(0),
        scans: AtomicUsize::new(0),
        freed: AtomicUsize::new(0),
        recursions: AtomicUsize::new(0),
    });
    let handle = ctxalloc::register_shrinker(cache.clone());
    handle.takes(&cache.blocks);
    let rt = runtime(2);
    let limit = limit_to(16 << 20);
    let filled = rt.block_on(async {
        let c = cache.clone();
        let filled = ctxalloc::spawn_scoped(Gfp::KERNEL, async move {
            let mut b = c.blocks.lock().await;
            let mut filled = 0;
            loop {
                YieldOnce(false).await; // held across an await
                let Some(block) = Block::new() else { break filled }; // reclaim ran for us
                b.push(block);
                c.len.store(b.len(), Ordering::Relaxed);
                filled += 1;
            }
        })
        .await
        .unwrap();
        // The lock is free: a plain allocation now reclaims from the cache.
        let more: Vec<Block> = (0..64).filter_map(|_| Block::new()).collect();
        drop(more);
        filled
    });
    drop(limit);
    let skipped = ctxalloc::stats()
        .shrinkers()
        .iter()
        .find(|r| r.name() == "async-cache")
        .map_or(0, |r| r.stats.skipped);
    drop(handle);
    Run {
        scans: cache.scans.load(Ordering::Relaxed),
        recursions: cache.recursions.load(Ordering::Relaxed),
        freed: cache.freed.load(Ordering::Relaxed),
        skipped,
        filled,
    }
}

#[test]
fn under_a_limit_the_lock_holder_never_reclaims_from_its_own_cache() {
    assert_child_passes("child_async_cache_scoped", &[("CTXALLOC_PRESSURE", "off")]);
}

#[test]
fn child_async_cache_scoped() {
    if !is_child("child_async_cache_scoped") {
        return;
    }
    let r = async_cache_under_a_limit(Gfp::NOFS);
    assert_eq!(r.recursions, 0, "reclaim called the cache's shrinker for the task holding its lock: {r:?}");
    assert!(r.filled > 100 && r.skipped > 0, "reclaim ran for the holder and passed the cache over: {r:?}");
    assert!(r.scans > 0 && r.freed > 0, "and took from the cache once the lock was free: {r:?}");
}

/// The control: the same lock without its scope, and reclaim recurses into the holder's cache.
#[test]
fn without_the_scope_the_lock_holder_reclaims_from_its_own_cache() {
    let err = child_stderr("child_async_cache_unscoped");
    // The reclaim-order checker (built into this suite) knows the async lock too.
    assert!(
        err.contains(
            "lock `async-cache` is held across an allocation that may reclaim from filesystem shrinkers"
        ),
        "{err}"
    );
}

#[test]
fn child_async_cache_unscoped() {
    if !is_child("child_async_cache_unscoped") {
        return;
    }
    let r = async_cache_under_a_limit(Gfp::KERNEL);
    assert!(r.recursions > 0, "the control must fail: {r:?}");
}

/// A lock guard is `Send` (held across `.await` in a spawned task) and the scoped future too.
#[test]
fn guards_and_scoped_futures_are_send() {
    fn send<T: Send>(_: &T) {}
    let m = AsyncScopedMutex::new(0u8, Gfp::NOFS, "send");
    let fut = ctxalloc::scoped(Gfp::NOFS, async {
        let g = m.lock().await;
        YieldOnce(false).await;
        drop(g);
    });
    send(&fut);
}
