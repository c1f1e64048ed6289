//! # ctxalloc-kernel
//!
//! ctxalloc for `no_std` kernels, firmware and bare metal: the same core as the std shim, with
//! per-CPU heaps, context words per CPU or per task, and a static memory region as the page
//! source.
//!
//! What an embedder writes:
//!
//! ```
//! use ctxalloc_kernel::{KernelAlloc, PerCpu, Platform, ThreadCtx};
//!
//! struct Machine;
//! static CPUS: PerCpu<2> = PerCpu::new();
//! fn cpu_id() -> usize { 0 } // mhartid, the APIC id, a per-CPU register…
//!
//! // SAFETY: one context per CPU; this example's kernel never preempts an allocating CPU.
//! unsafe impl Platform for Machine {
//!     fn context(&self) -> *const ThreadCtx { CPUS.get(cpu_id()) }
//!     fn now_ns(&self) -> u64 { 0 }
//!     fn report(&self, _msg: &str) {}
//! }
//!
//! // #[global_allocator] in the kernel image:
//! static HEAP: KernelAlloc<Machine> = KernelAlloc::new(Machine);
//!
//! # fn main() {
//! # let region = Box::leak(vec![0u8; 8 << 20].into_boxed_slice());
//! // At boot, before the first allocation:
//! unsafe { HEAP.init(region.as_mut_ptr(), region.len()) };
//! let nofs = HEAP.scope(ctxalloc_kernel::Gfp::NOFS); // this CPU's allocations are NOFS
//! let p = HEAP.alloc_with(core::alloc::Layout::new::<[u64; 8]>(), ctxalloc_kernel::Gfp::KERNEL).unwrap();
//! unsafe { HEAP.dealloc_with(p, core::alloc::Layout::new::<[u64; 8]>()) };
//! drop(nofs);
//! # }
//! ```
//!
//! In a preemptive kernel the context belongs to the task: give each task a [`TaskContext`] and
//! call [`KernelAlloc::switch_task`] from the context switch; report interrupt nesting through
//! [`Platform::in_atomic`], and allocations in interrupt handlers become `GFP_ATOMIC` by
//! themselves ([`Platform`] has the protocol, with the lines an embedder writes).
//!
//! The page source is `linked_list_allocator` behind a `spin` lock over the region, handing out
//! page-aligned spans; the core's slab sits on top with per-CPU heaps and lock-free cross-CPU
//! frees, so that lock is off the fast path. Scopes, reclaim (shrinkers, with the region's size
//! as the limit), mempools and large allocations (contiguous spans: there is no mapping hook)
//! work as in the std shim.
//!
//! ## Features and configuration
//!
//! None: everything is what the embedder passes — the region to [`KernelAlloc::init`], the
//! context word through [`Platform::context`]. Sizes from boot arguments parse with
//! `ctxalloc_core::parse::parse_size`, as the std shim reads `CTXALLOC_LIMIT`.

#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod platform;
mod pool;
mod region;
mod task;

pub use ctxalloc_core::{
    emergency_reserve, AllocError, ContextHolder, Cookie, Core, Effective, Gfp, Mempool, PoolBox,
    ReclaimClass, ScanResult, ScopedSpinLock, ShrinkControl, Shrinker, ShrinkerId, Stats, ThreadCtx,
    SEGMENT_SIZE,
};
pub use platform::{PerCpu, Platform};
pub use pool::KernelMempool;
pub use region::{Region, PAGE};
pub use task::TaskContext;

use core::alloc::{GlobalAlloc, Layout};
use core::panic::Location;
use core::ptr::NonNull;

/// The allocator: a core over the embedder's platform and a region.
///
/// Every entry point runs between the platform's [`enter`](Platform::enter) and
/// [`leave`](Platform::leave) (preemption held off, for per-CPU contexts).
pub struct KernelAlloc<P: Platform> {
    core: Core<Region<P>>,
}

impl<P: Platform> KernelAlloc<P> {
    /// An allocator over `platform`, with no memory until [`init`](Self::init) (or the
    /// platform's [`early_region`](Platform::early_region)).
    pub const fn new(platform: P) -> Self {
        KernelAlloc { core: Core::new(Region::new(platform)) }
    }

    /// Gives the allocator its region and makes the region's size the memory limit (so reclaim
    /// runs before the region is exhausted, with the usual emergency reserve; a region below
    /// [`Core::MIN_LIMIT`] is reported and has no limit but its size). A second call is ignored.
    ///
    /// Small objects live in [`SEGMENT_SIZE`]-aligned segments: align the region's start (and
    /// size) to it, and all of it can hold small objects; otherwise the unaligned ends serve only
    /// large (contiguous) allocations.
    ///
    /// # Safety
    /// `[start, start + len)` is valid, writable memory used by nothing else, for ever.
    pub unsafe fn init(&self, start: *mut u8, len: usize) {
        // SAFETY: the caller's contract.
        if unsafe { self.core.platform().init(start, len) } {
            // A region too small for a limit's reserve is bounded by its own size alone.
            if let Err(e) = self.on_cpu(|c| c.set_limit(c.platform().size())) {
                ctxalloc_core::report::report(
                    self.core.platform(),
                    format_args!("ctxalloc-kernel: the region's size is no limit: {e}"),
                );
            }
        }
    }

    /// The core: statistics, limits, reclaim, per-call allocation, mempools. Its methods do not
    /// run between the platform's `enter` and `leave` by themselves: in a preemptive kernel,
    /// call them with preemption off, or use this type's own methods, which do.
    pub fn core(&self) -> &Core<Region<P>> {
        &self.core
    }

    /// Runs `f` between the platform's `enter` and `leave`.
    #[inline(always)]
    pub(crate) fn on_cpu<'a, R>(&'a self, f: impl FnOnce(&'a Core<Region<P>>) -> R) -> R {
        let p = self.core.platform().platform();
        let token = p.enter();
        let r = f(&self.core);
        p.leave(token);
        r
    }

    /// Allocates with per-call flags, united with this CPU's context word.
    ///
    /// # Errors
    /// [`AllocError`] when no memory can be had in the effective context.
    #[track_caller]
    pub fn alloc_with(&self, layout: Layout, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
        self.on_cpu(|c| c.alloc_with(layout, gfp))
    }

    /// Frees a block of this allocator.
    ///
    /// # Safety
    /// `ptr` is a live block of this allocator with `layout`.
    pub unsafe fn dealloc_with(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: forwarded.
        self.on_cpu(|c| unsafe { c.dealloc(ptr.as_ptr(), layout) });
    }

    /// Frees a block without its layout (`kfree`): null is ignored, a pointer this allocator
    /// never handed out is reported through the platform and ignored.
    ///
    /// # Safety
    /// `ptr` is null, a live block of this allocator that the caller gives up, or a pointer it
    /// never handed out.
    pub unsafe fn kfree(&self, ptr: *mut u8) {
        // SAFETY: forwarded.
        self.on_cpu(|c| unsafe { c.kfree(ptr) });
    }

    /// Bytes usable at `ptr` without its layout (`ksize`); 0 for null or a foreign pointer.
    pub fn ksize(&self, ptr: *const u8) -> usize {
        self.core.ksize(ptr)
    }

    /// Resizes a block without its layout (`krealloc`, 16-byte alignment): null allocates;
    /// new memory is allocated in the effective context of `gfp`. Null on failure, the old
    /// block untouched.
    ///
    /// # Safety
    /// `ptr` is null or a live block of this allocator; `new_size` ≤ `isize::MAX`.
    pub unsafe fn krealloc(&self, ptr: *mut u8, new_size: usize, gfp: Gfp) -> *mut u8 {
        // SAFETY: forwarded.
        self.on_cpu(|c| unsafe { c.krealloc(ptr, new_size, gfp) })
    }

    /// The running task's (this CPU's) context word.
    pub fn current(&self) -> Gfp {
        self.on_cpu(|c| c.current())
    }

    /// Whether this CPU is in atomic context now ([`Platform::in_atomic`]): what allocations
    /// made here get ([`Gfp::ATOMIC`] added) follows from it.
    pub fn in_atomic(&self) -> bool {
        self.core.platform().platform().in_atomic()
    }

    /// Opens a scope (the kernel's `memalloc_flags_save`); restore it with
    /// [`memalloc_flags_restore`](Self::memalloc_flags_restore), innermost first. The scope
    /// belongs to the running task: it moves with the task at [`switch_task`](Self::switch_task).
    #[track_caller]
    pub fn memalloc_flags_save(&self, flags: Gfp) -> Cookie {
        let at = Location::caller();
        // Between enter and leave: a preemption in the middle of the word's update would move
        // a half-written word to the task and write the rest into the next task's.
        self.on_cpu(|c| c.scope_save(flags, at))
    }

    /// Closes a scope.
    pub fn memalloc_flags_restore(&self, cookie: Cookie) {
        self.on_cpu(|c| c.scope_restore(cookie));
    }

    /// The context switch's part of the allocator, for kernels whose context belongs to the
    /// task (see [`TaskContext`]): moves the scopes of `prev` (the task leaving this CPU) from
    /// the CPU into `prev`, and those of `next` (the task about to run here) from `next` into
    /// the CPU. Call it on the switching CPU before it runs `next`'s code, with preemption held
    /// off (the scheduler's own critical section; it also runs between the platform's `enter`
    /// and `leave`). It allocates nothing and takes no lock. `prev` and `next` may be the same
    /// task (a switch to itself keeps its scopes).
    ///
    /// ```
    /// # use ctxalloc_kernel::*;
    /// # struct M; static CPUS: PerCpu<1> = PerCpu::new();
    /// # unsafe impl Platform for M {
    /// #     fn context(&self) -> *const ThreadCtx { CPUS.get(0) }
    /// #     fn now_ns(&self) -> u64 { 0 }
    /// #     fn report(&self, _: &str) {}
    /// # }
    /// # static HEAP: KernelAlloc<M> = KernelAlloc::new(M);
    /// static A: TaskContext = TaskContext::new();
    /// static B: TaskContext = TaskContext::new();
    /// // Task A runs and opens a scope …
    /// let cookie = HEAP.memalloc_nofs_save();
    /// HEAP.switch_task(&A, &B); // … and is preempted: B runs, unrestricted
    /// assert_eq!(HEAP.current(), Gfp::KERNEL);
    /// assert_eq!(A.saved(), Gfp::NOFS);
    /// HEAP.switch_task(&B, &A); // A resumes (on this CPU or another): still NOFS
    /// assert_eq!(HEAP.current(), Gfp::NOFS);
    /// HEAP.memalloc_flags_restore(cookie);
    /// ```
    pub fn switch_task(&self, prev: &TaskContext, next: &TaskContext) {
        if core::ptr::eq(prev, next) {
            return;
        }
        self.on_cpu(|_| {
            // SAFETY: the platform's contract hands out this CPU's context, used by this CPU
            // only between enter and leave.
            let cpu = unsafe { &*self.core.platform().platform().context() }.scope();
            // SAFETY: this CPU is the one switching both tasks (the caller's protocol).
            unsafe {
                cpu.move_to(prev.state());
                next.state().move_to(cpu);
            }
        });
    }

    /// `memalloc_nofs_save()`.
    #[track_caller]
    pub fn memalloc_nofs_save(&self) -> Cookie {
        self.memalloc_flags_save(Gfp::NOFS)
    }

    /// `memalloc_noio_save()`.
    #[track_caller]
    pub fn memalloc_noio_save(&self) -> Cookie {
        self.memalloc_flags_save(Gfp::GFP_NOIO)
    }

    /// Opens a scope until the returned guard is dropped.
    #[track_caller]
    pub fn scope(&self, flags: Gfp) -> ScopeGuard<'_, P> {
        ScopeGuard { alloc: self, cookie: Some(self.memalloc_flags_save(flags)) }
    }

    /// Registers a shrinker for the rest of the program's life (or until
    /// [`unregister_shrinker`](Self::unregister_shrinker)).
    ///
    /// # Errors
    /// [`AllocError`] if the registry cannot grow.
    pub fn register_shrinker(
        &'static self,
        shrinker: &'static dyn Shrinker,
    ) -> Result<ShrinkerId, AllocError> {
        // SAFETY: the shrinker is `'static`, and so is the allocator.
        self.on_cpu(|c| unsafe { c.register_shrinker(NonNull::from(shrinker)) }).ok_or(AllocError)
    }

    /// Unregisters a shrinker, waiting for calls in flight.
    pub fn unregister_shrinker(&self, id: ShrinkerId) {
        // SAFETY: ids come from `register_shrinker`, which needs a `'static` allocator: the
        // slot lives for the program. (Unregistering an id twice unregisters nothing or,
        // if its slot was reused, the later shrinker — never memory unsafety.)
        self.on_cpu(|c| unsafe { c.unregister_shrinker(id) });
    }

    /// A mempool of `min_nr` elements of `layout` over this allocator, whose calls run between
    /// the platform's `enter` and `leave` like every other entry point.
    ///
    /// # Errors
    /// [`AllocError`] if the preallocation fails.
    #[track_caller]
    pub fn mempool(&self, layout: Layout, min_nr: usize) -> Result<KernelMempool<'_, P>, AllocError> {
        KernelMempool::new(self, layout, min_nr)
    }

    /// A snapshot of the allocator's state.
    pub fn stats(&self) -> Stats {
        self.on_cpu(|c| c.stats())
    }
}

// SAFETY: `hold`/`release` touch only the running task's scopes in this CPU's context, between
// enter and leave (so a preemption cannot split the update); they never allocate nor unwind.
unsafe impl<P: Platform> ContextHolder for KernelAlloc<P> {
    #[inline]
    fn hold(&self, flags: Gfp) {
        self.on_cpu(|c| c.scope_hold(flags));
    }
    #[inline]
    fn release(&self, flags: Gfp) {
        self.on_cpu(|c| c.scope_release(flags));
    }
    #[inline]
    fn relax(&self) {
        self.core.platform().platform().relax();
    }
}

/// A scope on the current CPU (task); dropping it closes the scope.
#[must_use = "the scope closes when the guard is dropped"]
pub struct ScopeGuard<'a, P: Platform> {
    alloc: &'a KernelAlloc<P>,
    cookie: Option<Cookie>,
}

impl<P: Platform> Drop for ScopeGuard<'_, P> {
    fn drop(&mut self) {
        if let Some(c) = self.cookie.take() {
            self.alloc.memalloc_flags_restore(c);
        }
    }
}

// SAFETY: the core returns null or a fresh block of at least `layout.size()` bytes aligned to
// `layout.align()`, frees only what it handed out, and never unwinds; `enter`/`leave` bracket
// each call so the per-CPU context is used by one CPU at a time.
unsafe impl<P: Platform> GlobalAlloc for KernelAlloc<P> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        self.on_cpu(|c| unsafe { c.alloc(layout) })
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        self.on_cpu(|c| unsafe { c.dealloc(ptr, layout) })
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        self.on_cpu(|c| unsafe { c.alloc_zeroed(layout) })
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        self.on_cpu(|c| unsafe { c.realloc(ptr, layout, new_size) })
    }
}

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
