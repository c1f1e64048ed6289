//! What an embedder (a kernel, a firmware, a bare-metal program) provides, and the per-CPU
//! storage for the core's per-CPU state.

use core::cell::UnsafeCell;
use core::sync::atomic::AtomicU32;
use ctxalloc_core::ThreadCtx;

/// The embedder's side of ctxalloc.
///
/// # Where the context word lives
///
/// The core keeps, per CPU, a [`ThreadCtx`]: the heap the fast path pops from and the context
/// word of the code running there. [`context`](Platform::context) returns the calling CPU's,
/// typically from a [`PerCpu`] array indexed by the CPU id. Two modes:
///
/// * **Per CPU** (a kernel that never preempts a task inside a scope): the scopes are the
///   CPU's. Nothing else to do.
/// * **Per task** (a preemptive kernel — the Linux model, where `current->flags` carries the
///   scope): the heaps stay per CPU, the scopes belong to the task. Each task control block holds
///   a [`TaskContext`](crate::TaskContext), and the context switch calls
///   [`KernelAlloc::switch_task`](crate::KernelAlloc::switch_task)`(prev, next)` before it
///   runs `next`: the CPU's scopes move into `prev`'s `TaskContext`, `next`'s move into the CPU.
///   The allocator reads and writes the word only between `enter` and `leave`, so it never
///   keeps a task's word across a point where a switch can happen; a task resumed on another
///   CPU finds its scopes there. Scopes, scoped locks and mempools work the same in both modes.
///
/// ```text
/// fn context_switch(prev: &Task, next: &Task) {        // preemption is off here
///     HEAP.switch_task(&prev.alloc_ctx, &next.alloc_ctx); // one line per allocator
///     switch_stacks(prev, next);
/// }
/// ```
///
/// # Interrupts and atomic context
///
/// `enter` must hold off preemption **and every interrupt handler that allocates** on this CPU
/// until the matching `leave` (on a simple kernel: clear the interrupt-enable bit and restore
/// it). The per-CPU heap is then never seen half-updated by a handler on the same CPU, and no
/// handler spins on an allocator lock its own CPU holds. An interrupt that arrives meanwhile is
/// taken right after `leave`.
///
/// [`in_atomic`](Platform::in_atomic) reports atomic context — interrupt nesting, or preemption
/// held off by the caller: a count the embedder keeps. There every allocation is `GFP_ATOMIC`
/// without a flag being passed: no shrinker runs, nothing waits, NOFAIL is reported once and
/// fails, a quarter of the emergency reserve is open ([`Gfp::HIGH`](crate::Gfp::HIGH)), and a
/// mempool hands out a reserved element or nothing. A handler's allocations carry the
/// interrupted task's scope bits as well (as Linux's do: they can only restrict further).
///
/// ```text
/// fn interrupt_entry() {                                // the CPU took an interrupt
///     IRQ_DEPTH[cpu()] += 1;                            // in_atomic() is now true
///     handle_irq();                                     // may allocate: GFP_ATOMIC
///     IRQ_DEPTH[cpu()] -= 1;
/// }
/// ```
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

    /// Whether this CPU is in atomic context: inside an interrupt handler, or with preemption
    /// held off by the caller (a count the embedder keeps, the kernel's `preempt_count`) — not
    /// counting the allocator's own [`enter`](Self::enter). There every allocation behaves as
    /// [`Gfp::ATOMIC`](crate::Gfp::ATOMIC) without the caller passing it: no shrinker runs, it
    /// never waits, NOFAIL is reported once and failed, and it may use a quarter of the
    /// emergency reserve; a mempool returns a reserved element or nothing. Asked on slow paths
    /// only. The default is never.
    #[inline]
    fn in_atomic(&self) -> bool {
        false
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
