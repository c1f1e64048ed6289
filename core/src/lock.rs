//! The allocator's own locks, and the rule every one of them keeps:
//!
//! > **No allocator lock is held across a call out of the allocator.**
//!
//! A call out is anything that leaves the allocator's own code: the platform's hooks (starting
//! or waking the background thread, futex waits and wakes, `map`, `unmap`, `purge`, `remap`,
//! thread-attach registration, `getenv`), report writing, the unwinder and `dladdr`. In a C
//! program every one of them may come back into `malloc` on the same thread — `pthread_create`
//! allocates the new thread's TLS with `calloc`, `dladdr` waits for the loader's lock, which a
//! thread inside `dlopen` holds while it calls `malloc` — and would wait for the very lock its
//! caller holds. Work found under a lock (a wake, a report) is recorded in the thread's
//! [`LockState`] and done once the thread holds no allocator lock: the guard of the last lock
//! released runs it ([`CallOuts::run_deferred`]).
//!
//! What a thread may still do under a lock: read its [`ThreadCtx`], rebuild pointers
//! ([`Platform::ptr_from_addr`](crate::Platform::ptr_from_addr)), read the clock
//! ([`now_ns`](crate::Platform::now_ns)) and yield while spinning
//! ([`relax`](crate::Platform::relax)) — none of which enters anything that allocates.
//!
//! The guard that finds the next violation: every thread counts the allocator locks it holds
//! (one byte of its context, touched only when a lock is taken or released — slow paths). In
//! debug builds an allocation or free that enters the allocator, or a call out that leaves it,
//! while the count is not zero is reported — naming the innermost lock and the entry point or
//! call — and the process aborts, instead of spinning for ever on its own lock.
//!
//! ## `fork`
//!
//! `fork_prepare` takes every lock marked [`held_across_fork`](Lock::held_across_fork) and
//! keeps them until `fork_parent` or `fork_child`. Meanwhile the forking thread is their only
//! possible user and is inside no critical section, so its own allocations (another `atfork`
//! handler's, the C library's) go through those locks without spinning on them; call-outs
//! they find wait until the locks are released.

use crate::platform::{Platform, ThreadCtx};
use crate::sync::SpinLock;
use core::cell::Cell;
use core::ops::{Deref, DerefMut};

/// An allocator lock: a spin lock with a name for reports, taken through [`Lock::lock`] (by the
/// core: `Core::lock`), which counts it in the calling thread's [`LockState`].
pub(crate) struct Lock<T> {
    /// Named in reports of the guard (debug builds).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    name: &'static str,
    /// Taken by `fork_prepare` and held across `fork`.
    fork: bool,
    raw: SpinLock<T>,
}

impl<T> Lock<T> {
    /// A lock called `name` holding `value`.
    #[cfg_attr(not(feature = "lockcheck"), allow(dead_code))]
    pub(crate) const fn new(name: &'static str, value: T) -> Lock<T> {
        Lock { name, fork: false, raw: SpinLock::new(value) }
    }

    /// A lock that `fork_prepare` takes (in the documented order) and keeps across `fork`.
    pub(crate) const fn held_across_fork(name: &'static str, value: T) -> Lock<T> {
        Lock { name, fork: true, raw: SpinLock::new(value) }
    }

    /// Takes the lock for the thread whose context is `t`; `out` runs the work deferred while
    /// locks were held, once the last guard drops; `relax` is called while spinning.
    #[inline]
    pub(crate) fn lock<'a>(
        &'a self,
        t: &'a ThreadCtx,
        out: &'a dyn CallOuts,
        relax: impl Fn(),
    ) -> LockGuard<'a, T> {
        let st = &t.locks;
        // The forking thread already holds the fork locks (see the module documentation).
        let real = !(self.fork && st.forking.get());
        if real {
            core::mem::forget(self.raw.lock_with(relax));
        }
        st.depth.set(st.depth.get() + 1);
        #[cfg(debug_assertions)]
        let outer = st.innermost.replace(self.name);
        LockGuard {
            lock: self,
            t,
            out,
            real,
            #[cfg(debug_assertions)]
            outer,
        }
    }

    /// Takes the lock for `fork_prepare`, uncounted: the thread keeps it until
    /// [`fork_release`](Self::fork_release). Only for locks [`held_across_fork`](Self::held_across_fork).
    pub(crate) fn fork_acquire(&self, relax: impl Fn()) {
        debug_assert!(self.fork);
        core::mem::forget(self.raw.lock_with(relax));
    }

    /// Releases what [`fork_acquire`](Self::fork_acquire) took.
    ///
    /// # Safety
    /// The calling thread took the lock with `fork_acquire` (in this process or, after `fork`,
    /// in its parent) and has not released it since.
    pub(crate) unsafe fn fork_release(&self) {
        // SAFETY: per the contract.
        unsafe { self.raw.unlock_forgotten() }
    }
}

/// Work that is done after the last allocator lock is released: implemented by `Core`.
pub(crate) trait CallOuts {
    /// Does the work `t` deferred (see [`LockState`]). Called with no allocator lock held.
    fn run_deferred(&self, t: &ThreadCtx);
}

/// Holds an allocator [`Lock`]; dropping it releases the lock and, if it was the thread's last
/// one, runs the work deferred meanwhile.
pub(crate) struct LockGuard<'a, T> {
    lock: &'a Lock<T>,
    t: &'a ThreadCtx,
    out: &'a dyn CallOuts,
    /// False for a fork lock taken by the forking thread: nothing to release.
    real: bool,
    /// The innermost lock before this one ("" for none).
    #[cfg(debug_assertions)]
    outer: &'static str,
}

impl<T> Deref for LockGuard<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the guard proves the lock is held by this thread (really, or through the fork
        // locks it keeps).
        unsafe { &*self.lock.raw.data_ptr() }
    }
}

impl<T> DerefMut for LockGuard<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; `&mut self` means no other reference from this guard is alive, and
        // a thread holds at most one guard of a lock (locks are not re-entrant: the guard of
        // this module reports a second acquisition's entry in debug builds).
        unsafe { &mut *self.lock.raw.data_ptr() }
    }
}

impl<T> Drop for LockGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if self.real {
            // SAFETY: taken in `Lock::lock` by this thread through a forgotten guard.
            unsafe { self.lock.raw.unlock_forgotten() };
        }
        let st = &self.t.locks;
        #[cfg(debug_assertions)]
        st.innermost.set(self.outer);
        let depth = st.depth.get() - 1;
        st.depth.set(depth);
        if depth == 0 && st.deferred.get() != 0 && !st.forking.get() {
            self.out.run_deferred(self.t);
        }
    }
}

/// Work deferred while a lock was held ([`LockState`] bits).
pub(crate) mod deferred {
    /// Start or wake the background thread.
    pub(crate) const WAKE_BACKGROUND: u8 = 1 << 0;
    /// Wake the NOFAIL waiters (memory was given back).
    pub(crate) const WAKE_WAITERS: u8 = 1 << 1;
    /// Abort once the deferred reports are out (`hardened`: a bad free found under a lock).
    pub(crate) const ABORT: u8 = 1 << 2;
    /// Report the bad frees recorded in the [`LockState`](super::LockState).
    pub(crate) const REPORTS: u8 = 1 << 3;
    /// Wake the background thread if it runs, else leave its start to the next allocation
    /// (memory waits for its purge; see `Platform::background_if_running`).
    pub(crate) const PURGE_WANTED: u8 = 1 << 4;
}

/// Bad frees found under a lock that are reported once the lock is released; more are counted
/// and reported as a number.
const DEFERRED_BAD_FREES: usize = 2;

/// The allocator locks one thread holds, and the call-outs it put off until it holds none. In
/// [`ThreadCtx`]; touched only by its thread.
pub(crate) struct LockState {
    /// Allocator critical sections open on this thread (nested locks).
    depth: Cell<u8>,
    /// Between `fork_prepare` and `fork_parent`/`fork_child`: this thread holds the fork locks.
    forking: Cell<bool>,
    /// `deferred::*` bits: call-outs to make once no lock is held.
    deferred: Cell<u8>,
    /// Bad frees to report then: (address, why).
    bad_frees: [Cell<(usize, &'static str)>; DEFERRED_BAD_FREES],
    /// Entries used in `bad_frees`, and how many more were found.
    bad_len: Cell<u8>,
    bad_more: Cell<u32>,
    /// The innermost lock held, for the guard's report ("" for none; debug builds).
    #[cfg(debug_assertions)]
    innermost: Cell<&'static str>,
}

/// What a [`LockState`] had deferred, taken out of it by [`LockState::take`].
pub(crate) struct Deferred {
    /// `deferred::*` bits.
    pub(crate) work: u8,
    /// Bad frees: `(address, why)`, `bad_len` of them valid.
    pub(crate) bad_frees: [(usize, &'static str); DEFERRED_BAD_FREES],
    pub(crate) bad_len: usize,
    /// Bad frees beyond those.
    pub(crate) bad_more: u32,
}

impl LockState {
    pub(crate) const fn new() -> LockState {
        LockState {
            depth: Cell::new(0),
            forking: Cell::new(false),
            deferred: Cell::new(0),
            bad_frees: [const { Cell::new((0, "")) }; DEFERRED_BAD_FREES],
            bad_len: Cell::new(0),
            bad_more: Cell::new(0),
            #[cfg(debug_assertions)]
            innermost: Cell::new(""),
        }
    }

    /// Whether the thread may call out of the allocator now: it holds no allocator lock (and is
    /// not forking — then call-outs wait until the fork locks are released).
    #[inline]
    pub(crate) fn may_call_out(&self) -> bool {
        self.depth.get() == 0 && !self.forking.get()
    }

    /// Whether the thread is inside an allocator critical section.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn locked(&self) -> bool {
        self.depth.get() != 0
    }

    /// The innermost lock the thread holds, for a report.
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    pub(crate) fn innermost(&self) -> &'static str {
        #[cfg(debug_assertions)]
        return self.innermost.get();
        #[cfg(not(debug_assertions))]
        "(unnamed: a release build)"
    }

    /// Records `work` to be done once no lock is held.
    #[inline]
    pub(crate) fn defer(&self, work: u8) {
        self.deferred.set(self.deferred.get() | work);
    }

    /// Records a bad free to report once no lock is held.
    pub(crate) fn defer_bad_free(&self, addr: usize, why: &'static str) {
        let n = self.bad_len.get() as usize;
        match self.bad_frees.get(n) {
            Some(slot) => {
                slot.set((addr, why));
                self.bad_len.set(n as u8 + 1);
            }
            None => self.bad_more.set(self.bad_more.get().saturating_add(1)),
        }
        self.defer(deferred::REPORTS);
    }

    /// Takes everything deferred.
    pub(crate) fn take(&self) -> Deferred {
        let d = Deferred {
            work: self.deferred.replace(0),
            bad_frees: core::array::from_fn(|i| self.bad_frees[i].get()),
            bad_len: self.bad_len.replace(0) as usize,
            bad_more: self.bad_more.replace(0),
        };
        debug_assert!(d.bad_len <= DEFERRED_BAD_FREES);
        d
    }

    /// `fork_prepare` took the fork locks (`true`) or `fork_parent`/`fork_child` released them.
    pub(crate) fn set_forking(&self, on: bool) {
        self.forking.set(on);
    }

    /// Whether anything is deferred.
    pub(crate) fn pending(&self) -> bool {
        self.deferred.get() != 0
    }
}

/// The guard's report — fatal: written although the thread holds a lock — and the abort: `how` says what happened (entered the allocator, called out
/// of it), `what` through which entry point or call.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
#[cold]
#[inline(never)]
pub(crate) fn violation<P: Platform>(platform: &P, t: &ThreadCtx, how: &str, what: &str) -> ! {
    crate::report::report_fatal(
        platform,
        format_args!(
            "ctxalloc: {how} `{what}` while this thread holds the allocator's `{}` lock: no \
             allocator lock may be held across a call out of the allocator (it may come back for \
             the lock); aborting",
            t.locks.innermost()
        ),
    );
    platform.abort()
}

/// Debug builds: `what` is a call out of the allocator; the calling thread must hold no
/// allocator lock. (Release builds: nothing.)
#[inline(always)]
pub(crate) fn check_call_out<P: Platform>(platform: &P, what: &str) {
    #[cfg(debug_assertions)]
    {
        // SAFETY: the platform hands out the calling thread's context.
        let t = unsafe { &*platform.thread() };
        if t.locks.locked() {
            violation(platform, t, "called out of the allocator through", what);
        }
    }
    let _ = (platform, what);
}
