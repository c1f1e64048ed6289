//! Who runs the background thread: the hand-over between a thread that wants background work
//! done and a background thread that is about to exit because it had none.
//!
//! A platform's background thread may exit when idle (the std one does, after a second: a
//! process whose threads all end with `pthread_exit` must be able to end). Then a wake can race
//! with the exit: the waker sees the thread still registered and starts none, while the thread,
//! having checked for work just before the waker set it up, leaves. The protocol closes that
//! window with one flag and SeqCst on both sides:
//!
//! * a waker sets its work up first (arms a purge clock, sets `bg_busy`: under a lock or with
//!   SeqCst), then calls [`want`](BackgroundThread::want); if that returns `true` it starts a
//!   thread;
//! * an idle thread calls [`may_exit`](BackgroundThread::may_exit) with a check for work: it
//!   clears the flag, *then* looks for work; finding some, it takes the flag back unless a
//!   waker already has (and so started a successor).
//!
//! Either the thread's look sees the waker's work (it stays, or a successor already runs), or
//! the waker's swap sees the cleared flag (it starts a successor). The loom model below checks
//! that work is never stranded and never served by two threads.

use crate::sync::{AtomicBool, Ordering};

/// The flag: whether a background thread runs (or is being started).
///
/// Threads: every waker swaps it; the background thread clears and re-takes it. All SeqCst.
pub struct BackgroundThread {
    running: AtomicBool,
}

impl Default for BackgroundThread {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundThread {
    /// No thread yet.
    #[cfg(not(all(loom, test)))]
    pub const fn new() -> Self {
        BackgroundThread { running: AtomicBool::new(false) }
    }

    /// No thread yet.
    #[cfg(all(loom, test))]
    pub fn new() -> Self {
        BackgroundThread { running: AtomicBool::new(false) }
    }

    /// Called after setting up work: whether the caller must start a thread (none runs).
    ///
    /// ```
    /// let bg = ctxalloc_core::BackgroundThread::new();
    /// assert!(bg.want()); // start one
    /// assert!(!bg.want()); // it runs
    /// ```
    #[inline]
    pub fn want(&self) -> bool {
        !self.running.swap(true, Ordering::SeqCst)
    }

    /// Called by the background thread when it found nothing to do: whether it may exit now.
    /// `pending` looks for work again (it must see work set up before a waker's
    /// [`want`](Self::want)).
    ///
    /// ```
    /// let bg = ctxalloc_core::BackgroundThread::new();
    /// assert!(bg.want());
    /// assert!(!bg.may_exit(|| true)); // work arrived meanwhile: stay
    /// assert!(bg.may_exit(|| false)); // none: leave
    /// assert!(bg.want()); // the next wake starts a new one
    /// ```
    pub fn may_exit(&self, pending: impl FnOnce() -> bool) -> bool {
        // A swap, not a store: the same here, and loom models a store racing with an RMW
        // wrongly (tokio-rs/loom#254), which would make the model below fail spuriously.
        self.running.swap(false, Ordering::SeqCst);
        // No work: leave. Work: take the flag back — unless a waker took it first, and with it
        // the duty to start a successor.
        !pending() || self.running.swap(true, Ordering::SeqCst)
    }

    /// Whether a thread runs or is being started (false from the moment a thread announces
    /// its exit: that thread still sees work set up before it did, and stays for it).
    ///
    /// ```
    /// let b = ctxalloc_core::BackgroundThread::new();
    /// assert!(!b.runs());
    /// assert!(b.want());
    /// assert!(b.runs());
    /// ```
    pub fn runs(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Forgets the thread: it could not be started, or it did not survive a `fork`.
    pub fn forget(&self) {
        self.running.store(false, Ordering::SeqCst);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// An idle background thread decides to exit while a waker sets up work (under a lock, as
    /// the purge clocks are) and wakes: exactly one thread serves the work — the old one stays,
    /// or the waker starts a new one.
    #[test]
    fn a_wake_racing_with_the_exit_is_never_lost_nor_doubled() {
        loom::model(|| {
            let bg = Arc::new(BackgroundThread::new());
            assert!(bg.want()); // the running thread
            let work = Arc::new(Mutex::new(false));
            let servers = Arc::new(AtomicUsize::new(0));
            let waker = {
                let (bg, work, servers) = (bg.clone(), work.clone(), servers.clone());
                thread::spawn(move || {
                    *work.lock().unwrap() = true;
                    if bg.want() {
                        servers.fetch_add(1, Ordering::SeqCst); // a new thread
                    }
                })
            };
            let stays = !bg.may_exit(|| *work.lock().unwrap());
            if stays {
                servers.fetch_add(1, Ordering::SeqCst);
            }
            waker.join().unwrap();
            // The work is there: exactly one thread must serve it.
            assert_eq!(servers.load(Ordering::SeqCst), 1, "work stranded, or two threads");
        });
    }

    /// Two wakers and an exiting thread: never more than one thread runs.
    #[test]
    fn wakers_start_at_most_one_successor() {
        loom::model(|| {
            let bg = Arc::new(BackgroundThread::new());
            assert!(bg.want());
            let work = Arc::new(Mutex::new(false));
            let started = Arc::new(AtomicUsize::new(0));
            let wakers: std::vec::Vec<_> = (0..2)
                .map(|_| {
                    let (bg, work, started) = (bg.clone(), work.clone(), started.clone());
                    thread::spawn(move || {
                        *work.lock().unwrap() = true;
                        if bg.want() {
                            started.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            let stays = !bg.may_exit(|| *work.lock().unwrap());
            for w in wakers {
                w.join().unwrap();
            }
            let running = usize::from(stays) + started.load(Ordering::SeqCst);
            assert_eq!(running, 1, "{running} background threads for the wakes");
        });
    }
}
