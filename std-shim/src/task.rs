//! Scopes that follow a task: futures that carry their allocation scope across `.await` and
//! worker threads — the kernel's per-task context (`current->flags`), for async Rust.
//!
//! A thread's context word is wrong for a task in both directions: a task that enters NOFS,
//! awaits and resumes on another worker has lost its scope there, and a scope left on a worker
//! across an `.await` restricts whatever task that worker polls next. [`Scoped`] fixes both:
//! it owns the task's *scope record* and enters it on the polling thread for exactly the
//! duration of each poll of the inner future.
//!
//! ## The protocol
//!
//! * The record ([`TaskScope`], shared by the scoped future and the guards of the task's async
//!   locks) holds the scope's own flags and, per scope bit, how many guards of
//!   [`AsyncScopedMutex`](crate::AsyncScopedMutex) the task holds that carry it. Its `flags`
//!   word is their union.
//! * Each poll of a [`Scoped`] future: enters the future's own flags on the polling thread
//!   (`ScopeState::enter`: the word goes back exactly when the poll ends) and holds the bits of the task's live guards (a
//!   lock-tied hold, as a `ScopedMutex` guard's), publishes a *poll frame* in a thread-local
//!   so that the task's lock guards find their record, polls the inner future, and — when the
//!   poll returns, or unwinds — releases the holds and puts the word back. Nothing of the task
//!   remains on the thread between polls.
//! * A guard taken during a poll adds its lock's bits to the record (counted per bit) and holds
//!   them on the thread for the rest of that poll; later polls hold them from their start.
//!   Dropped during one of its task's polls, it takes its bits out of the record and, if no
//!   other guard carries them, off the thread at once. Dropped outside any poll — the task was
//!   cancelled, its future dropped — it touches only the record: no thread sees it.
//! * Scoped futures nest: an inner one enters its own record inside the outer's; a lock taken
//!   inside belongs to the innermost.
//!
//! The record is an `Arc`: a guard keeps it alive wherever it is dropped.

// The guard side (attach, add, remove) serves the async locks (feature `async`).
#![cfg_attr(not(feature = "async"), allow(dead_code))]

use crate::{Gfp, CORE};
use std::cell::Cell;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Scope bits a record counts (those of `Gfp::SCOPE_MASK`). A thread holds a bit once per poll
/// however many guards carry it.
const BITS: usize = 6;

/// A task's scope record: the flags of the scoped future that owns it, and the bits its held
/// async-lock guards add. Shared by the future and the guards (`Arc`); touched by whichever
/// thread polls the task and by a guard's drop (anywhere, also after cancellation). Atomics,
/// SeqCst: a poll on one worker must see the guards taken and dropped by the task's previous
/// poll on another (the executor's hand-over orders them too).
#[derive(Debug)]
pub struct TaskScope {
    /// The scoped future's own flags.
    base: Gfp,
    /// Guards held, per scope bit.
    counts: [AtomicU32; BITS],
    /// `base` | every bit whose count is not zero.
    flags: AtomicU32,
    /// The reclaim-order checker's view: the tracked locks the task holds.
    #[cfg(feature = "lockcheck")]
    held: std::sync::Mutex<Vec<HeldLock>>,
}

/// A tracked lock a task holds, and where it was taken.
#[cfg(feature = "lockcheck")]
#[derive(Debug)]
struct HeldLock(*const ctxalloc_core::LockClass, &'static Location<'static>);

// SAFETY: the class is only read (by the checker), and lives in its lock, which outlives the
// guard whose drop removes this entry.
#[cfg(feature = "lockcheck")]
unsafe impl Send for HeldLock {}
// SAFETY: as above.
#[cfg(feature = "lockcheck")]
unsafe impl Sync for HeldLock {}

impl TaskScope {
    fn new(base: Gfp) -> TaskScope {
        let base = base & Gfp::SCOPE_MASK;
        TaskScope {
            base,
            counts: Default::default(),
            flags: AtomicU32::new(base.bits()),
            // Room for a few locks now, so that taking one (perhaps at the limit, in its scope)
            // allocates nothing.
            #[cfg(feature = "lockcheck")]
            held: std::sync::Mutex::new(Vec::with_capacity(4)),
        }
    }

    /// The task's scope now: its own flags and those of the locks it holds.
    pub fn flags(&self) -> Gfp {
        Gfp::from_bits_truncate(self.flags.load(Ordering::SeqCst))
    }

    /// A guard carrying `flags` was taken.
    fn add(&self, flags: Gfp) {
        let bits = (flags & Gfp::SCOPE_MASK).bits();
        for (i, c) in self.counts.iter().enumerate() {
            if bits & (1 << i) != 0 {
                c.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.flags.fetch_or(bits, Ordering::SeqCst);
    }

    /// A guard carrying `flags` was dropped; returns the bits no guard holds any more (and the
    /// future's own flags do not have).
    fn remove(&self, flags: Gfp) -> u32 {
        let bits = (flags & Gfp::SCOPE_MASK).bits();
        let mut cleared = 0;
        for (i, c) in self.counts.iter().enumerate() {
            if bits & (1 << i) != 0 && c.fetch_sub(1, Ordering::SeqCst) == 1 {
                cleared |= 1 << i;
            }
        }
        // A bit goes when its last guard does, unless the future's own flags have it. (No guard
        // of the task is taken meanwhile on another thread: one thread polls a task at a time.)
        let cleared = cleared & !self.base.bits();
        self.flags.fetch_and(!cleared, Ordering::SeqCst);
        cleared
    }

    /// The bits the task's guards add to its own flags.
    fn guard_bits(&self) -> u32 {
        self.flags.load(Ordering::SeqCst) & !self.base.bits()
    }

    /// Guards of this task still alive.
    fn guards(&self) -> u32 {
        self.counts.iter().map(|c| c.load(Ordering::SeqCst)).max().unwrap_or(0)
    }
}

/// One poll of a scoped future on this thread: published in [`FRAME`] while it runs.
struct Frame {
    /// The scoped future's reference to its record (cloned by guards).
    record: *const Arc<TaskScope>,
    /// The record itself (`Arc::as_ptr` of the above): the task's identity.
    task: *const TaskScope,
    /// The guard bits this poll holds on the thread (`ScopeState::hold`, once per bit): those of
    /// the task's guards, taken at the poll's start or when a guard is taken during it, and let
    /// go when the bit's last guard is dropped during it, or at its end.
    held: Cell<u32>,
    /// The frame of an enclosing scoped future polled on this thread, if any.
    prev: *const Frame,
}

thread_local! {
    /// The innermost poll frame on this thread (null outside every scoped poll). Only its
    /// thread touches it.
    static FRAME: Cell<*const Frame> = const { Cell::new(ptr::null()) };
}

/// What the poll entered, undone on return or unwind.
struct PollExit<'a> {
    frame: &'a Frame,
    /// The word before the poll (`Core::scope_enter`).
    prev: Gfp,
}

impl Drop for PollExit<'_> {
    fn drop(&mut self) {
        FRAME.with(|f| f.set(self.frame.prev));
        let held = self.frame.held.get();
        if held != 0 {
            CORE.scope_release(Gfp::from_bits_truncate(held));
        }
        #[cfg(feature = "lockcheck")]
        // SAFETY: the record outlives the poll (the scoped future owns an `Arc` of it).
        for h in unsafe { &**self.frame.record }.held.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: the lock of a live guard (see `HeldLock`).
            CORE.lock_release(unsafe { &*h.0 });
        }
        CORE.scope_exit(self.prev);
    }
}

/// The task record of the innermost scoped poll on this thread, and holds `flags` on the thread
/// for the rest of that poll; `None` outside every scoped poll.
pub(crate) fn attach(flags: Gfp) -> Option<Arc<TaskScope>> {
    let frame = FRAME.with(|f| f.get());
    if frame.is_null() {
        return None;
    }
    // SAFETY: a published frame lives on the stack of the poll that runs below us.
    let frame = unsafe { &*frame };
    // SAFETY: the scoped future's `Arc` outlives its poll.
    let record = unsafe { &*frame.record }.clone();
    record.add(flags);
    let new = record.guard_bits() & !frame.held.get();
    if new != 0 {
        CORE.scope_hold(Gfp::from_bits_truncate(new));
        frame.held.set(frame.held.get() | new);
    }
    Some(record)
}

/// A guard carrying `flags` of the task of `record` was dropped: out of the record, and —
/// during one of the task's polls on this thread — off the thread, the bits no guard holds
/// any more. Dropped anywhere else (the task cancelled), only the record changes.
pub(crate) fn detach(record: &TaskScope, flags: Gfp) {
    let cleared = record.remove(flags);
    let mut frame = FRAME.with(|f| f.get());
    while !frame.is_null() {
        // SAFETY: published frames live on the stacks of the polls below us, and each scoped
        // future's `Arc` outlives its poll.
        let f = unsafe { &*frame };
        if ptr::eq(f.task, record) {
            let gone = cleared & f.held.get();
            if gone != 0 {
                CORE.scope_release(Gfp::from_bits_truncate(gone));
                f.held.set(f.held.get() & !gone);
            }
            return;
        }
        frame = f.prev;
    }
}

/// The record of the task being polled on this thread, if any.
pub(crate) fn current_record() -> *const TaskScope {
    let frame = FRAME.with(|f| f.get());
    if frame.is_null() {
        return ptr::null();
    }
    // SAFETY: a published frame lives on the stack of the poll below us.
    unsafe { &*frame }.task
}

/// The checker learns that the task of `record`, being polled here, took `class`'s lock.
#[cfg(feature = "lockcheck")]
pub(crate) fn lock_taken(
    record: &TaskScope,
    class: &ctxalloc_core::LockClass,
    at: &'static Location<'static>,
) {
    CORE.lock_acquire(class, at);
    record.held.lock().unwrap_or_else(|e| e.into_inner()).push(HeldLock(class, at));
}

/// The task of `record` let `class`'s lock go (during one of its polls, or dropped).
#[cfg(feature = "lockcheck")]
pub(crate) fn lock_dropped(record: &TaskScope, class: &ctxalloc_core::LockClass) {
    let mut held = record.held.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = held.iter().rposition(|h| ptr::eq(h.0, class)) {
        held.remove(i);
        if ptr::eq(current_record(), record) {
            CORE.lock_release(class);
        }
    }
}

/// A future whose every poll runs inside an allocation scope ([`scoped`],
/// [`WithScope::with_scope`]); see the [module documentation](crate::task) for the protocol.
/// `Send` when the inner future is.
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    /// Pinned structurally: never moved out of a pinned `Scoped` (no `Drop` impl moves it, no
    /// method hands out `&mut F` of a pinned one).
    inner: F,
    record: Arc<TaskScope>,
    at: &'static Location<'static>,
}

impl<F> Scoped<F> {
    /// The task's scope record (its flags now: [`TaskScope::flags`]).
    pub fn scope(&self) -> &TaskScope {
        &self.record
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is pinned structurally (see the struct); the rest is never moved.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above: `inner` lives in the pinned `Scoped` and does not move.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        let record: &Arc<TaskScope> = &this.record;
        let held = record.guard_bits();
        let frame =
            Frame { record, task: Arc::as_ptr(record), held: Cell::new(held), prev: FRAME.with(|f| f.get()) };
        let prev = CORE.scope_enter(record.base);
        if held != 0 {
            CORE.scope_hold(Gfp::from_bits_truncate(held));
        }
        #[cfg(feature = "lockcheck")]
        for h in record.held.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            // SAFETY: the lock of a live guard (see `HeldLock`).
            CORE.lock_acquire(unsafe { &*h.0 }, h.1);
        }
        FRAME.with(|f| f.set(&frame));
        let _exit = PollExit { frame: &frame, prev };
        let r = inner.poll(cx);
        if r.is_ready() && cfg!(debug_assertions) && record.guards() != 0 {
            outlived(this.at);
        }
        r
    }
}

#[cold]
fn outlived(at: &Location<'_>) {
    crate::platform::report(format_args!(
        "ctxalloc: a scoped future ({at}) finished while a guard of one of its async scoped locks lives on: \
             the lock's scope is no longer entered for it\n"
    ));
}

/// Runs `fut` with `flags` entered during every one of its polls, on whichever thread polls
/// it; the thread's word is back as it was when each poll returns (also by unwinding). The
/// record it owns carries the scopes of the async locks the task takes.
///
/// ```
/// use ctxalloc::Gfp;
/// let fut = ctxalloc::scoped(Gfp::NOFS, async {
///     assert!(ctxalloc::current().contains(Gfp::NOFS));
///     vec![0u8; 4096] // allocated under NOFS, on whatever worker polls this
/// });
/// assert_eq!(ctxalloc::current(), Gfp::KERNEL);
/// # let waker = std::task::Waker::noop();
/// # let mut cx = std::task::Context::from_waker(&waker);
/// # let mut fut = std::pin::pin!(fut);
/// # assert!(fut.as_mut().poll(&mut cx).is_ready());
/// # use std::future::Future;
/// ```
#[track_caller]
pub fn scoped<F: Future>(flags: Gfp, fut: F) -> Scoped<F> {
    Scoped { inner: fut, record: Arc::new(TaskScope::new(flags)), at: Location::caller() }
}

/// [`scoped`] as a method of every future.
///
/// ```
/// use ctxalloc::{Gfp, WithScope};
/// let fut = async { ctxalloc::current() }.with_scope(Gfp::NOIO);
/// # let waker = std::task::Waker::noop();
/// # let mut cx = std::task::Context::from_waker(&waker);
/// # let mut fut = std::pin::pin!(fut);
/// # use std::future::Future;
/// assert_eq!(fut.as_mut().poll(&mut cx), std::task::Poll::Ready(Gfp::NOIO));
/// ```
pub trait WithScope: Future + Sized {
    /// This future, with `flags` entered during each of its polls.
    #[track_caller]
    fn with_scope(self, flags: Gfp) -> Scoped<Self> {
        scoped(flags, self)
    }
}

impl<F: Future> WithScope for F {}

/// `tokio::spawn(scoped(flags, fut))`: a task whose scope follows it to every worker (feature
/// `tokio`).
///
/// ```
/// # #[cfg(feature = "tokio")] {
/// let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
/// let task = async { ctxalloc::spawn_scoped(ctxalloc::Gfp::NOFS, async { ctxalloc::current() }).await };
/// let word = rt.block_on(task).unwrap();
/// assert_eq!(word, ctxalloc::Gfp::NOFS);
/// # }
/// ```
#[cfg(feature = "tokio")]
#[track_caller]
pub fn spawn_scoped<F>(flags: Gfp, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(scoped(flags, fut))
}
