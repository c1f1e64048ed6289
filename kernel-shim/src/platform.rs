//! What an embedder (a kernel, a firmware, a bare-metal program) provides, and the per-CPU
//! storage for the core's per-CPU state.

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicU32;
use ctxalloc_core::ThreadCtx;

/// The embedder's side of ctxalloc.
///
/// # Where the context word lives
///
/// The core keeps, per CPU (or per task), a [`ThreadCtx`]: the heap the fast path pops from and
/// the context word scopes set. [`context`](Platform::context) returns the calling CPU's (or
/// task's) one:
///
/// * a **non-preemptive kernel, or one that holds preemption off** around allocator calls
///   ([`enter`](Platform::enter) / [`leave`](Platform::leave)): a [`PerCpu`] array indexed by the
///   CPU id. The context word is then per CPU, as the kernel's `PF_MEMALLOC_*` bits are per task:
///   a scope must not be held across a point where the task can move to another CPU.
/// * a **preemptive kernel with task-local storage**: a `ThreadCtx` in each task, handed over by
///   `context`; `enter`/`leave` may then do nothing.
///
/// # Safety
///
/// * `context` returns a pointer to a `ThreadCtx` that belongs to the calling CPU (or task), stays
///   valid for as long as that CPU (task) can allocate, and is never used by two CPUs at once —
///   which, for per-CPU storage, `enter` guarantees by holding off preemption and interrupt
///   handlers that allocate until the matching `leave`.
/// * No method allocates through the allocator, unwinds, or calls back into ctxalloc.
/// * `wait` may return early (spuriously); it must not sleep for ever once `*word != expected`.
pub unsafe trait Platform: Sync {
    /// The calling CPU's (or task's) context.
    fn context(&self) -> *const ThreadCtx;

    /// Called before every allocator operation: hold off preemption (and allocating interrupt
    /// handlers) on this CPU. Returns a token for [`leave`](Self::leave).
    #[inline(always)]
    fn enter(&self) -> usize {
        0
    }

    /// Called after every allocator operation with the token of the matching `enter`.
    #[inline(always)]
    fn leave(&self, token: usize) {
        let _ = token;
    }

    /// A memory region to use if nothing called [`KernelAlloc::init`](crate::KernelAlloc::init)
    /// before the first allocation (a `static` heap array, say).
    fn early_region(&self) -> Option<(*mut u8, usize)> {
        None
    }

    /// Sleeps (or spins, or `wfi`s) while `*word == expected`, at most `timeout_ns`.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: u64) {
        let _ = (word, expected, timeout_ns);
        self.relax();
    }

    /// Wakes every waiter on `word` (an IPI, an event; nothing for spinning waiters).
    fn wake_all(&self, word: &AtomicU32) {
        let _ = word;
    }

    /// A monotonic clock in nanoseconds (a cycle counter scaled will do).
    fn now_ns(&self) -> u64;

    /// Writes a report line (a UART, a log ring). Must not allocate.
    fn report(&self, msg: &str);

    /// Called while spinning for a lock.
    #[inline]
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// One `ThreadCtx` per CPU, in a `static`.
///
/// ```
/// use ctxalloc_kernel::PerCpu;
/// static CPUS: PerCpu<4> = PerCpu::new();
/// let ctx = CPUS.get(2); // what `Platform::context` returns on CPU 2
/// assert!(!ctx.is_null());
/// ```
pub struct PerCpu<const N: usize>([Slot; N]);

/// One CPU's context, on its own cache line.
#[repr(align(64))]
struct Slot(UnsafeCell<ThreadCtx>);

// SAFETY: each slot is used only by its own CPU (the `Platform` contract), so sharing the array
// between CPUs shares no slot.
unsafe impl<const N: usize> Sync for PerCpu<N> {}

impl<const N: usize> Default for PerCpu<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> PerCpu<N> {
    /// `N` fresh contexts.
    pub const fn new() -> Self {
        PerCpu([const { Slot(UnsafeCell::new(ThreadCtx::new())) }; N])
    }

    /// The context of CPU `cpu`.
    ///
    /// # Panics
    /// If `cpu >= N`.
    #[inline(always)]
    pub fn get(&self, cpu: usize) -> *const ThreadCtx {
        self.0[cpu].0.get()
    }
}
