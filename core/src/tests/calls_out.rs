//! The rule that no allocator lock is held across a call out of the allocator: the thread-exit
//! deadlock that C programs hit (a thread start under the `abandoned` lock that allocated), the
//! deferral that fixed it, the fork window, and the debug-build guard that finds the next one.

use super::new_core;
use crate::mock::MockPlatform;
use crate::{Core, Platform};
use core::alloc::Layout;
use std::boxed::Box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;
use std::vec::Vec;

const L: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// A core whose platform's background hook allocates and frees through the core — as
/// `pthread_create` does through `calloc` in a C program — and counts its runs.
struct Hooked {
    /// From `Box::into_raw`: the hook keeps a pointer to it, which a move of a `Box` would
    /// invalidate.
    core: CorePtr,
    runs: Arc<AtomicUsize>,
}

/// The core's address, for the hook.
struct CorePtr(*const Core<MockPlatform>);
// SAFETY: a shared reference's address; `Core` is `Sync`.
unsafe impl Send for CorePtr {}
// SAFETY: as above.
unsafe impl Sync for CorePtr {}

impl CorePtr {
    /// # Safety
    /// The core is alive.
    unsafe fn get(&self) -> &Core<MockPlatform> {
        // SAFETY: per the contract.
        unsafe { &*self.0 }
    }
}

impl Hooked {
    fn new(mib: usize) -> Hooked {
        let core = CorePtr(Box::into_raw(Box::new(new_core(mib))));
        let runs = Arc::new(AtomicUsize::new(0));
        let (r, at) = (runs.clone(), CorePtr(core.0));
        // SAFETY: just made.
        unsafe { core.get() }.platform().on_background_wanted(move || {
            // SAFETY: the core stays in its box until `Hooked` drops, which removes this hook
            // first; a plain allocation and its free.
            unsafe {
                let core = at.get();
                let p = core.alloc(L);
                assert!(!p.is_null());
                core.dealloc(p, L);
            }
            r.fetch_add(1, Ordering::Relaxed);
        });
        Hooked { core, runs }
    }

    fn core(&self) -> &Core<MockPlatform> {
        // SAFETY: alive until `drop`.
        unsafe { self.core.get() }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::Relaxed)
    }
}

impl Drop for Hooked {
    fn drop(&mut self) {
        self.core().platform().clear_background_hook();
        // SAFETY: from `Box::into_raw` in `new`; the hook that pointed to it is gone.
        drop(unsafe { Box::from_raw(self.core.0.cast_mut()) });
    }
}

/// The shape of the hang: a thread's blocks are all freed by another thread, the thread exits,
/// its heap's now-empty pages are the first dirty memory, which wants the background thread —
/// whose start allocates. Before the fix that allocation, on the exiting thread, waited for the
/// `abandoned` lock its own thread held (a debug build now reports it instead). Now neither the
/// frees nor the exit start it (a C library may free under a lock that thread creation takes:
/// glibc reaps a thread's TLS under its stack-cache lock): the next allocation's slow path
/// does, at its entry, and the start's own allocation succeeds there.
#[test]
fn a_thread_start_at_thread_exit_may_allocate() {
    let h = Hooked::new(16);
    let core = h.core();
    core.platform().set_background_runs(false);
    let before = AtomicUsize::new(0);
    let n = if super::MIRI { 40 } else { 2000 };
    let (tx, rx) = mpsc::channel::<Vec<usize>>();
    let (freed_tx, freed_rx) = mpsc::channel::<()>();
    thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: plain allocations, handed to the main thread, which frees them.
            let blocks = (0..n).map(|_| unsafe { core.alloc(L) }.addr()).collect();
            tx.send(blocks).unwrap();
            freed_rx.recv().unwrap();
            core.thread_exit();
        });
        let blocks = rx.recv().unwrap();
        // Allocations (above) may start it; from here on only frees and an exit run.
        before.store(h.runs(), Ordering::Relaxed);
        for a in blocks {
            // SAFETY: live blocks of `L`, given up by their thread (remote frees).
            unsafe { core.dealloc(core.platform().ptr_from_addr(a), L) };
        }
        freed_tx.send(()).unwrap();
    });
    let before = before.load(Ordering::Relaxed);
    assert_eq!(h.runs(), before, "a free or a thread exit started the background thread");
    let big = Layout::from_size_align(1 << 20, 8).unwrap();
    // SAFETY: a valid layout; an allocation's slow path (vmap), then its free.
    unsafe {
        let p = core.alloc(big);
        assert!(!p.is_null());
        core.dealloc(p, big);
    }
    assert!(h.runs() > before, "the wanted background thread was never started");
    assert!(core.platform().reports().is_empty(), "{:?}", core.platform().reports());
}

/// Work found under a lock waits for the lock's release, then runs on the same thread.
#[test]
fn a_call_out_found_under_a_lock_runs_once_it_is_released() {
    let h = Hooked::new(16);
    let core = h.core();
    {
        let _ab = core.lock(&core.abandoned);
        let _pages = core.lock(&core.pages);
        core.wake_background_thread();
        assert_eq!(h.runs(), 0, "called out under the lock");
    }
    // Once, or more: the hook's own free may give a page back and wake again.
    assert!(h.runs() >= 1, "the deferred wake was lost");
    assert!(core.platform().reports().is_empty(), "{:?}", core.platform().reports());
}

/// Between `fork_prepare` and `fork_parent`, the forking thread's own allocations (another
/// `atfork` handler's) use the locks it keeps, and what they would call out waits until the
/// locks are released.
#[test]
fn the_forking_thread_allocates_while_it_keeps_the_fork_locks() {
    let h = Hooked::new(16);
    let core = h.core();
    let (done, finished) = mpsc::channel();
    thread::scope(|s| {
        s.spawn(|| {
            core.fork_prepare();
            // SAFETY: plain allocations and frees; sizes that take the slow path and the vmap.
            unsafe {
                for size in [64, 5000, 200_000] {
                    let l = Layout::from_size_align(size, 8).unwrap();
                    let p = core.alloc(l);
                    assert!(!p.is_null());
                    core.dealloc(p, l);
                }
            }
            core.wake_background_thread();
            let during = h.runs();
            // SAFETY: this thread ran `fork_prepare` above.
            unsafe { core.fork_parent() };
            done.send((during, h.runs())).unwrap();
        });
        // A thread spinning on its own fork locks would never answer: fail instead of hanging
        // (the scope still waits for it, but the failure is printed first).
        let (during, after) = finished.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            std::eprintln!("the forking thread deadlocked on its own fork locks");
            std::process::abort()
        });
        assert_eq!(during, 0, "called out while holding the fork locks");
        assert!(after >= 1, "the deferred wake was lost");
    });
}

/// The guard: entering the allocator while holding one of its locks is reported with the lock
/// and the entry point, and aborts (the mock's abort panics).
#[cfg(debug_assertions)]
#[test]
fn the_guard_reports_an_allocation_under_an_allocator_lock() {
    let core = new_core(16);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = core.lock(&core.abandoned);
        // SAFETY: a plain allocation (never made: the guard stops it).
        unsafe { core.alloc(L) }
    }));
    assert!(r.is_err(), "the allocation went ahead");
    let reports = core.platform().reports();
    assert!(
        reports.iter().any(|r| r.contains("entered the allocator through `alloc`")
            && r.contains("holds the allocator's `abandoned` lock")
            && r.contains("aborting")),
        "{reports:?}"
    );
}

/// The guard, on the other side: a call out made while a lock is held — the background
/// thread's start that allocated in the hang — is reported naming the call and the lock.
#[cfg(debug_assertions)]
#[test]
fn the_guard_reports_a_call_out_under_an_allocator_lock() {
    let h = Hooked::new(16);
    let core = h.core();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _g = core.lock(&core.pages);
        core.wake_background_now();
    }));
    assert!(r.is_err(), "the call out went ahead");
    assert_eq!(h.runs(), 0);
    let reports = core.platform().reports();
    assert!(
        reports.iter().any(|r| r.contains("called out of the allocator through `background_wanted`")
            && r.contains("holds the allocator's `pages` lock")),
        "{reports:?}"
    );
    // And the lock was released by the unwinding guard: the core still works.
    // SAFETY: a plain allocation and its free.
    unsafe {
        let p = core.alloc(L);
        assert!(!p.is_null());
        core.dealloc(p, L);
    }
}
