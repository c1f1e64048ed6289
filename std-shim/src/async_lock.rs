//! `AsyncScopedMutex`: an async mutex (on `async-lock`'s, runtime-agnostic) whose guard may be
//! held across `.await` and carries an allocation scope to every poll of the task holding it —
//! on whichever worker — and to no other task.
//!
//! The guard adds the lock's bits to the task's scope record (see [`crate::task`]): the lock
//! must be taken inside a scoped future ([`scoped`](crate::scoped),
//! [`spawn_scoped`](crate::spawn_scoped)). Taken outside one, the scope cannot follow the
//! task; debug builds report it once per lock.

use crate::task::{self, TaskScope};
use crate::tracked::Tracked;
use ctxalloc_core::{Gfp, LockClass};
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

/// An async mutex whose holder allocates inside a scope, across `.await`s and workers.
///
/// The blockcache pattern, async: the cache's shrinker takes the cache lock, so everything
/// the task holding it allocates — before, across and after its awaits — must be NOFS.
///
/// ```
/// use ctxalloc::{AsyncScopedMutex, Gfp};
/// let cache = AsyncScopedMutex::new(Vec::<Vec<u8>>::new(), Gfp::NOFS, "cache");
/// let task = ctxalloc::scoped(Gfp::KERNEL, async {
///     let mut c = cache.lock().await;
///     std::future::ready(()).await; // (a real await may resume on another worker)
///     assert!(ctxalloc::current().contains(Gfp::NOFS));
///     c.push(vec![0; 4096]); // NOFS: reclaim cannot call back into the cache
/// });
/// # let waker = std::task::Waker::noop();
/// # let mut cx = std::task::Context::from_waker(&waker);
/// # let mut task = std::pin::pin!(task);
/// # use std::future::Future;
/// # assert!(task.as_mut().poll(&mut cx).is_ready());
/// assert!(!ctxalloc::current().contains(Gfp::NOFS));
/// ```
pub struct AsyncScopedMutex<T: ?Sized> {
    flags: Gfp,
    class: LockClass,
    /// The scope record of the task holding the lock (null: none, or one outside a scoped
    /// future). Written by the holder under the lock; read by anyone (shrinkers). SeqCst.
    owner: AtomicPtr<TaskScope>,
    /// Taking it outside a scoped future was reported (debug builds, once).
    warned: AtomicBool,
    inner: async_lock::Mutex<T>,
}

impl<T> AsyncScopedMutex<T> {
    /// A mutex whose guard carries `flags`, called `name` in the checker's reports.
    pub fn new(value: T, flags: Gfp, name: &'static str) -> Self {
        let inner = async_lock::Mutex::new(value);
        // The mutex's wait queue is allocated by its first unlock. Have it now, not in the
        // holder's drop — which may come at the limit, inside the lock's own scope.
        drop(inner.try_lock());
        AsyncScopedMutex {
            flags: flags & Gfp::SCOPE_MASK,
            class: LockClass::new(name),
            owner: AtomicPtr::new(std::ptr::null_mut()),
            warned: AtomicBool::new(false),
            inner,
        }
    }
}

impl<T: ?Sized> AsyncScopedMutex<T> {
    /// The flags its guard carries.
    pub fn flags(&self) -> Gfp {
        self.flags
    }

    /// Takes the lock (waiting without its scope; the wait's own bookkeeping is allocated in
    /// the reclaim context, so that waiting never fails for want of memory); from then on,
    /// every poll of this task runs with the lock's flags until the guard is dropped.
    #[track_caller]
    pub fn lock(&self) -> impl std::future::Future<Output = AsyncScopedMutexGuard<'_, T>> {
        let at = std::panic::Location::caller();
        async move {
            // Waiting allocates the waiter's queue entry (async-lock's listener). A task must be
            // able to wait however short memory is — the holder it waits for is what will free
            // some —, so that entry is allocated in the reclaim context: from the emergency
            // reserve if need be, never reclaiming (which would try this very lock), never
            // blocking the worker.
            let mut wait = std::pin::pin!(self.inner.lock());
            let guard = std::future::poll_fn(|cx| {
                let c = crate::CORE.scope_save(Gfp::MEMALLOC, at);
                let r = wait.as_mut().poll(cx);
                crate::CORE.scope_restore(c);
                r
            })
            .await;
            self.attach(guard, at, true)
        }
    }

    /// Takes the lock if it is free: for shrinkers (which must never wait for a lock a task
    /// may hold across an `.await`) and synchronous code. Inside a scoped poll the guard carries
    /// the scope like [`lock`](Self::lock)'s; outside one it carries none, silently (a shrinker
    /// on the background thread runs in the reclaim context anyway).
    #[track_caller]
    pub fn try_lock(&self) -> Option<AsyncScopedMutexGuard<'_, T>> {
        let at = std::panic::Location::caller();
        self.inner.try_lock().map(|g| self.attach(g, at, false))
    }

    /// Whether the task being polled on this thread holds the lock: what a shrinker asks before
    /// it would wait for a lock its own task holds (reclaim inside an allocation of the
    /// holder).
    pub fn held_by_current_task(&self) -> bool {
        let owner = self.owner.load(Ordering::SeqCst);
        !owner.is_null() && std::ptr::eq(owner, task::current_record())
    }

    /// The name the checker and reports use.
    pub fn name(&self) -> &'static str {
        self.class.name()
    }

    fn attach<'a>(
        &'a self,
        guard: async_lock::MutexGuard<'a, T>,
        at: &'static std::panic::Location<'static>,
        warn: bool,
    ) -> AsyncScopedMutexGuard<'a, T> {
        let record = task::attach(self.flags);
        match &record {
            Some(r) => {
                self.owner.store(Arc::as_ptr(r).cast_mut(), Ordering::SeqCst);
                #[cfg(feature = "lockcheck")]
                task::lock_taken(r, &self.class, at);
            }
            None => {
                if warn
                    && cfg!(debug_assertions)
                    && !self.flags.is_empty()
                    && !self.warned.swap(true, Ordering::Relaxed)
                {
                    outside(self.class.name(), at);
                }
            }
        }
        AsyncScopedMutexGuard { lock: self, record, guard }
    }
}

#[cold]
fn outside(name: &str, at: &std::panic::Location<'_>) {
    crate::platform::report(format_args!(
        "ctxalloc: async scoped lock `{name}` taken at {at} outside a scoped future (ctxalloc::scoped, \
             spawn_scoped): its scope does not follow the task\n"
    ));
}

impl<T: ?Sized> Tracked for AsyncScopedMutex<T> {
    fn lock_class(&self) -> &LockClass {
        &self.class
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for AsyncScopedMutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncScopedMutex")
            .field("name", &self.class.name())
            .field("flags", &self.flags)
            .finish()
    }
}

/// The guard of an [`AsyncScopedMutex`]: while it lives, the task that took it runs with the
/// lock's flags. `Send` when `T` is, so it may be held across `.await` in a spawned task.
#[must_use = "the lock is released when the guard is dropped"]
pub struct AsyncScopedMutexGuard<'a, T: ?Sized> {
    lock: &'a AsyncScopedMutex<T>,
    record: Option<Arc<TaskScope>>,
    guard: async_lock::MutexGuard<'a, T>,
}

impl<T: ?Sized> AsyncScopedMutexGuard<'_, T> {
    /// The flags it carries.
    pub fn flags(&self) -> Gfp {
        self.lock.flags
    }
}

impl<T: ?Sized> Drop for AsyncScopedMutexGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            self.lock.owner.store(std::ptr::null_mut(), Ordering::SeqCst);
            #[cfg(feature = "lockcheck")]
            task::lock_dropped(&r, &self.lock.class);
            task::detach(&r, self.lock.flags);
        }
        // `guard` unlocks after this.
    }
}

impl<T: ?Sized> Deref for AsyncScopedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> DerefMut for AsyncScopedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}
