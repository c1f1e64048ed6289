//! Per-task contexts: the context word belongs to the task, the heaps to the CPU.
//!
//! A kernel keeps the allocation context in the task (`current->flags`): a task inside
//! `memalloc_nofs_save()` may be preempted and resumed on another CPU, and its allocations stay
//! NOFS there, while the per-CPU caches stay with the CPU. In this mode every CPU still has one
//! [`ThreadCtx`](ctxalloc_core::ThreadCtx) (its heap and the *running* task's scopes), and each
//! task has a [`TaskContext`] that holds its scopes while it is switched out. The embedder's
//! context switch calls [`KernelAlloc::switch_task`](crate::KernelAlloc::switch_task), which
//! moves the outgoing task's scopes from the CPU into its `TaskContext` and the incoming task's
//! from its `TaskContext` into the CPU.

use core::cell::UnsafeCell;
use ctxalloc_core::{Gfp, ScopeState};

/// A task's open allocation scopes — cookie scopes, lock-tied holds and (debug builds) their
/// records — while the task is not running. Empty while it runs (its scopes are then in the
/// CPU's context).
///
/// Put one in each task control block (`TaskContext::new()` is `const`).
///
/// ```
/// use ctxalloc_kernel::{Gfp, TaskContext};
/// static IDLE: TaskContext = TaskContext::new();
/// assert_eq!(IDLE.saved(), Gfp::KERNEL);
/// ```
pub struct TaskContext(UnsafeCell<ScopeState>);

// SAFETY: a `TaskContext` is touched only by `KernelAlloc::switch_task` (between the platform's
// `enter` and `leave`, on the CPU that switches the task out or in — one CPU at a time, since a
// task is switched in on one CPU only after it was switched out on another, and the embedder's
// run queue orders the two) and by `saved` (a plain read, documented as a snapshot).
unsafe impl Sync for TaskContext {}
// SAFETY: as above; the state holds no pointers into a CPU.
unsafe impl Send for TaskContext {}

impl Default for TaskContext {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskContext {
    /// A task with no scope open.
    pub const fn new() -> Self {
        TaskContext(UnsafeCell::new(ScopeState::new()))
    }

    /// The context word the task will resume with (empty while it runs): for diagnostics and
    /// tests, read by the scheduler while the task is switched out.
    pub fn saved(&self) -> Gfp {
        // SAFETY: a read of `Cell`s; only a switch writes them (see the `Sync` argument).
        unsafe { (*self.0.get()).current() }
    }

    /// The state behind it.
    ///
    /// # Safety
    /// The caller is `switch_task` on the one CPU switching this task (see `Sync`).
    pub(crate) unsafe fn state(&self) -> &ScopeState {
        // SAFETY: the caller's contract: no other CPU touches it now.
        unsafe { &*self.0.get() }
    }
}
