//! # ctxalloc-kernel
//!
//! ctxalloc for `no_std` kernels and bare metal: the same core as the std shim, with per-CPU (or
//! per-task) context words and a static memory region as the page source.
//!
//! **Status:** this crate is the placeholder the foundation promises; `KernelAlloc<P>` with
//! `const fn new(P)` and `unsafe fn init(&self, start, len)`, the region page source over
//! `linked_list_allocator`, and the riscv64 QEMU image arrive with the kernel-shim issue. What
//! it offers today is the core's embedder-facing API, so that a kernel can already implement
//! [`Platform`] and drive a [`Core`] directly:
//!
//! ```
//! use ctxalloc_kernel::{Core, Gfp, Platform};
//! fn allocate_in_nofs<P: Platform>(core: &Core<P>) -> bool {
//!     let c = core.scope_save(Gfp::NOFS, core::panic::Location::caller());
//!     let ok = core.alloc_with(core::alloc::Layout::new::<[u64; 8]>(), Gfp::KERNEL).is_ok();
//!     core.scope_restore(c);
//!     ok
//! }
//! ```

#![no_std]
#![warn(missing_docs)]

pub use ctxalloc_core::{AllocError, Cookie, Core, Effective, Gfp, Platform, ReclaimClass, Stats, ThreadCtx};
