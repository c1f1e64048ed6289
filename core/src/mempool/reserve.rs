//! A mempool's reserve: a LIFO of preallocated elements threaded through the elements themselves
//! (so the reserve owns no memory of its own and growing it never allocates metadata), and the
//! futex word on which an `alloc` that found it empty sleeps.
//!
//! ## No lost wake-up
//!
//! An `alloc` that finds the list empty, *under the lock*, counts itself as a sleeper and reads
//! `returned` as its ticket; it then drops the lock and sleeps while `returned` still equals the
//! ticket. A `free` that refills pushes the element and bumps `returned` under the same lock, and
//! wakes if it saw a sleeper there. Either the refill's critical section comes first — the
//! `alloc` then pops the element and never sleeps — or it comes second: it sees the sleeper, and
//! the sleeper's futex compare finds `returned` moved (or the wake finds it asleep). The loom
//! model below checks both orders and every interleaving in between.

use crate::sync::{AtomicU32, AtomicUsize, Ordering, SpinLock};
use core::ptr::{self, NonNull};

/// The locked part of the reserve.
struct List {
    /// The most recently returned element; each element's first word points to the next one.
    head: *mut u8,
    /// Elements on the list.
    len: usize,
    /// The number of elements the pool keeps (`min_nr`).
    min: usize,
    /// Threads between "found it empty" and "stopped waiting".
    sleepers: usize,
}

/// The reserve. Every thread that uses the pool touches it:
///
/// * `list`: under its lock only;
/// * `len` and `min`: written under the lock (Relaxed), read without it by `give`'s pre-check — a free of
///   an element popped from the reserve happens after the pop, so it sees that pop's length or a
///   later one (the kernel's R3.7 barrier, by coherence);
/// * `returned`: bumped under the lock; read under the lock for a ticket, and by the platform's
///   futex compare without it.
pub(crate) struct Reserve {
    list: SpinLock<List>,
    len: AtomicUsize,
    /// `list.min`, written under the lock (Relaxed), for the same pre-check.
    min: AtomicUsize,
    /// The futex word sleepers wait on: how many elements were ever given back.
    pub(crate) returned: AtomicU32,
}

// SAFETY: the raw element pointers are owned by the reserve and only touched under its lock.
unsafe impl Send for List {}

/// What [`Reserve::take`] found.
pub(crate) enum Take {
    /// An element from the reserve.
    Element(NonNull<u8>),
    /// The reserve is empty; the caller was counted as a sleeper and may wait on `returned`
    /// while it equals the ticket, then must call [`Reserve::stop_waiting`].
    Empty(u32),
}

impl Reserve {
    /// An empty reserve that wants `min` elements.
    pub(crate) fn new(min: usize) -> Reserve {
        Reserve {
            list: SpinLock::new(List { head: ptr::null_mut(), len: 0, min, sleepers: 0 }),
            len: AtomicUsize::new(0),
            min: AtomicUsize::new(min),
            returned: AtomicU32::new(0),
        }
    }

    /// Elements in the reserve now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// How many elements the reserve keeps.
    pub(crate) fn min(&self) -> usize {
        self.min.load(Ordering::Relaxed)
    }

    /// Pops an element, or (if `sleep`) registers the caller as a sleeper and returns its ticket.
    pub(crate) fn take(&self, sleep: bool, relax: impl Fn()) -> Take {
        let mut l = self.list.lock_with(relax);
        match NonNull::new(l.head) {
            Some(e) => {
                // SAFETY: elements on the list are owned by it and hold the next pointer.
                l.head = unsafe { e.as_ptr().cast::<*mut u8>().read() };
                l.len -= 1;
                self.len.store(l.len, Ordering::Relaxed);
                Take::Element(e)
            }
            None => {
                if sleep {
                    l.sleepers += 1;
                }
                Take::Empty(self.returned.load(Ordering::Relaxed))
            }
        }
    }

    /// Ends a wait that [`take`](Self::take) registered.
    pub(crate) fn stop_waiting(&self, relax: impl Fn()) {
        self.list.lock_with(relax).sleepers -= 1;
    }

    /// Gives `e` to the reserve if it holds fewer than `min` elements. Returns `None` if it was
    /// not taken (the caller frees it), else whether a sleeper must be woken.
    ///
    /// # Safety
    /// `e` is an element of the pool's layout (at least a pointer in size and alignment) that
    /// nobody else uses.
    pub(crate) unsafe fn give(&self, e: NonNull<u8>, relax: impl Fn()) -> Option<bool> {
        let mut l = self.list.lock_with(relax);
        if l.len >= l.min {
            return None;
        }
        // SAFETY: the element is ours and big enough for a pointer.
        unsafe { e.as_ptr().cast::<*mut u8>().write(l.head) };
        l.head = e.as_ptr();
        l.len += 1;
        self.len.store(l.len, Ordering::Relaxed);
        self.returned.fetch_add(1, Ordering::Release);
        Some(l.sleepers > 0)
    }

    /// The pre-check of a free (R3.7): whether the reserve may be short. `false` means it was
    /// full when last seen and the element can go straight back to the backend.
    #[inline]
    pub(crate) fn may_want(&self) -> bool {
        self.len.load(Ordering::Relaxed) < self.min.load(Ordering::Relaxed)
    }

    /// Sets how many elements the reserve keeps.
    pub(crate) fn set_min(&self, min: usize, relax: impl Fn()) {
        let mut l = self.list.lock_with(relax);
        l.min = min;
        self.min.store(min, Ordering::Relaxed);
    }

    /// Pops an element if the reserve holds more than `min` (`keep = true`) or any (`false`).
    pub(crate) fn pop_surplus(&self, keep_min: bool, relax: impl Fn()) -> Option<NonNull<u8>> {
        let mut l = self.list.lock_with(relax);
        if keep_min && l.len <= l.min {
            return None;
        }
        let e = NonNull::new(l.head)?;
        // SAFETY: as in `take`.
        l.head = unsafe { e.as_ptr().cast::<*mut u8>().read() };
        l.len -= 1;
        self.len.store(l.len, Ordering::Relaxed);
        Some(e)
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::{Arc, Condvar, Mutex};
    use loom::thread;
    use std::boxed::Box;

    /// A futex, built the way the kernel builds one: compare under the bucket lock, wake under it.
    struct Futex {
        bucket: Mutex<()>,
        cv: Condvar,
    }

    impl Futex {
        fn new() -> Futex {
            Futex { bucket: Mutex::new(()), cv: Condvar::new() }
        }
        /// No timeout: a lost wake-up shows as a deadlock, which loom reports.
        fn wait(&self, word: &AtomicU32, expected: u32) {
            let g = self.bucket.lock().unwrap();
            if word.load(Ordering::Acquire) == expected {
                drop(self.cv.wait(g).unwrap());
            }
        }
        fn wake_all(&self) {
            let _g = self.bucket.lock().unwrap();
            self.cv.notify_all();
        }
    }

    fn element() -> NonNull<u8> {
        NonNull::new(Box::into_raw(Box::new(0usize)).cast()).unwrap()
    }

    /// `mempool_alloc`'s sleeping loop, reduced to the reserve.
    fn alloc(r: &Reserve, f: &Futex) -> NonNull<u8> {
        loop {
            match r.take(true, loom::thread::yield_now) {
                Take::Element(e) => return e,
                Take::Empty(ticket) => {
                    f.wait(&r.returned, ticket);
                    r.stop_waiting(loom::thread::yield_now);
                }
            }
        }
    }

    /// `mempool_free`.
    fn free(r: &Reserve, f: &Futex, e: NonNull<u8>) {
        // SAFETY: `e` is a boxed `usize` (pointer-sized) that the caller gives up.
        match unsafe { r.give(e, loom::thread::yield_now) } {
            Some(true) => f.wake_all(),
            Some(false) => {}
            // SAFETY: not taken: still the caller's box.
            None => drop(unsafe { Box::from_raw(e.as_ptr().cast::<usize>()) }),
        }
    }

    /// One element, held by the main thread; a second thread must sleep until it is freed.
    /// Whatever the interleaving of its "empty → sleep" with the free, it wakes.
    #[test]
    fn a_sleeping_alloc_is_woken_by_the_free() {
        loom::model(|| {
            let r = Arc::new(Reserve::new(1));
            let f = Arc::new(Futex::new());
            // SAFETY: a fresh pointer-sized box.
            unsafe { r.give(element(), loom::thread::yield_now) };
            let held = alloc(&r, &f);
            let t = {
                let (r, f) = (r.clone(), f.clone());
                thread::spawn(move || {
                    let e = alloc(&r, &f);
                    free(&r, &f, e);
                })
            };
            free(&r, &f, held);
            t.join().unwrap();
            let last = r.pop_surplus(false, loom::thread::yield_now).unwrap();
            // SAFETY: the last element, a box from `element`, no longer in the reserve.
            drop(unsafe { Box::from_raw(last.as_ptr().cast::<usize>()) });
        });
    }

    /// Two sleepers, one element returned twice in turn: both complete. (Three threads: bounded
    /// to three preemptions, which loom's authors find catches nearly all such bugs; the
    /// unbounded search takes hours.)
    #[test]
    fn two_sleepers_both_complete() {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(3);
        b.check(|| {
            let r = Arc::new(Reserve::new(1));
            let f = Arc::new(Futex::new());
            // SAFETY: a fresh pointer-sized box.
            unsafe { r.give(element(), loom::thread::yield_now) };
            let held = alloc(&r, &f);
            let spawn = || {
                let (r, f) = (r.clone(), f.clone());
                thread::spawn(move || {
                    let e = alloc(&r, &f);
                    free(&r, &f, e);
                })
            };
            let (a, b) = (spawn(), spawn());
            free(&r, &f, held);
            a.join().unwrap();
            b.join().unwrap();
            let last = r.pop_surplus(false, loom::thread::yield_now).unwrap();
            // SAFETY: the last element, a box from `element`, no longer in the reserve.
            drop(unsafe { Box::from_raw(last.as_ptr().cast::<usize>()) });
        });
    }
}
