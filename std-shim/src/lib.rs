//! # ctxalloc
//!
//! A global allocator whose allocations obey the *context* they run in: the Linux kernel's
//! scoped allocation model (`memalloc_nofs_save()` and friends) for Rust programs, where
//! `Vec::push` has no flags argument to pass.
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
//!
//! fn insert_into_cache(cache: &std::sync::Mutex<Vec<Vec<u8>>>, block: &[u8]) {
//!     let mut c = cache.lock().unwrap();
//!     // Everything allocated while the lock is held must not make reclaim call back into the
//!     // cache (whose shrinker needs this lock): a NOFS scope says so once, for every callee.
//!     let _nofs = ctxalloc::scope(ctxalloc::Gfp::NOFS);
//!     c.push(block.to_vec());
//! }
//! ```
//!
//! The allocator itself is a thread-caching slab (size classes 16 B – 64 KiB, free-list sharding,
//! lock-free cross-thread frees) with page-granular `mmap` areas above that. Its fast paths never
//! read the context word: the context matters only when new memory is needed.
//!
//! Threads that exit hand their pages to the others; a child of `fork` can allocate; every
//! power-of-two alignment is supported.
//!
//! Async code carries its scopes per task, not per thread: [`scoped`] / [`WithScope`] and
//! [`AsyncScopedMutex`] (see [`task`]). In containers the limit can come from the cgroup and
//! reclaim can follow the kernel's pressure signal ([`cgroup`], [`pressure`]).
//!
//! ## Features
//!
//! On docs.rs every item is shown, each labelled with the feature it needs.
//!
//! | feature | what |
//! |---|---|
//! | `async` (default) | `AsyncScopedMutex` (on `async-lock`; any runtime) |
//! | `tokio` | `spawn_scoped`: `tokio::spawn` of a scoped future |
//! | `forbid-alloc` | `forbid_alloc()`: every allocation inside is reported (`set_forbid_strict`: aborts) |
//! | `fault-injection` | `fault::inject`: this thread's allocations fail, reproducibly |
//! | `tags` | `tags::tag`, `tags::allocinfo`: live bytes and calls per tag |
//! | `lockcheck` | the reclaim-order checker over `ScopedMutex`/`TrackedMutex` and `ShrinkerHandle::takes` |
//! | `debug` | the four above (each costs one byte test per allocation when built in, nothing when not) |
//! | `hardened` | encoded, validated free lists; double and foreign frees caught on the fast path, bad frees abort |
//! | `tls-initial-exec` | for a shared library loaded at startup (the C library): initial-exec TLS |
//!
//! ## Environment
//!
//! Read once, at the first allocation; a value that does not parse, or a limit that cannot work,
//! is reported in one line (`ctxalloc: ignoring CTXALLOC_LIMIT="100kb": …`) and not used. Words
//! are read in any case; sizes as [`parse::parse_size`] reads them.
//!
//! | variable | values |
//! |---|---|
//! | `CTXALLOC_LIMIT` | a size (`512M`, `64MiB`, `2G`), `auto` or `80%` (from the cgroup: [`cgroup`]), `none` or `0` |
//! | `CTXALLOC_PRESSURE` | `auto` (default), `on`, `off`, a PSI trigger `some:150ms/2s` ([`pressure`]) |
//! | `CTXALLOC_CGROUP_ROOT` | read the cgroup and proc files under this directory instead of `/` |
//! | `CTXALLOC_BACKGROUND` | `on` (default) or `off` (`1`/`0`, `yes`/`no`, `true`/`false`): `off` starts no background thread (reclaim only on allocating threads) |
//! | `CTXALLOC_BACKGROUND_IDLE` | how long the background reclaimer waits for work before it exits (`1s`, `500ms`) |
//! | `CTXALLOC_SHOW_STATS` | `on`: the statistics table ([`print_stats`]) on stderr at exit |

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async")]
mod async_lock;
mod container;
mod debug;
mod env;
mod flagged;
mod mempool;
mod platform;
mod reclaim;
mod scope;
mod scoped_lock;
pub mod task;
mod tracked;

/// `allocator_api2`, re-exported: its `Vec` and `Box` take a [`Flagged`] allocator.
pub use allocator_api2;
#[cfg(feature = "async")]
pub use async_lock::{AsyncScopedMutex, AsyncScopedMutexGuard};
pub use container::{cgroup, pressure};
/// Sizes as `CTXALLOC_LIMIT` reads them — the one parser shared with the examples and the C
/// library's `ctxalloc_parse_size`.
pub use ctxalloc_core::parse;
/// The largest size (at alignment [`MIN_ALIGN`]) whose allocation takes the inline fast path —
/// for wrappers such as C's `malloc` that test the size once and pass the rest on unchecked —
/// and the alignments every block has: [`MIN_ALIGN`], and 16 for every block of more than
/// [`TINY_MAX`] bytes.
///
/// ```
/// assert!(ctxalloc::SMALL_MAX >= 1024 && ctxalloc::MIN_ALIGN == 8 && ctxalloc::TINY_MAX == 8);
/// let p = Box::new([0u8; 9]); // more than TINY_MAX: 16-byte aligned
/// assert_eq!((&raw const *p).addr() % 16, 0);
/// ```
pub use ctxalloc_core::size_class::{MIN_ALIGN, SMALL_MAX, TINY_MAX};
pub use ctxalloc_core::{
    emergency_reserve, AllocError, Cause, Cookie, Effective, Gfp, LimitError, LimitOrigin, ReclaimClass,
    ScanResult, ShrinkControl, Shrinker, ShrinkerRow, ShrinkerStats, Stats, RESERVE_FLOOR,
};
#[cfg(feature = "fault-injection")]
pub use debug::fault;
#[cfg(feature = "tags")]
pub use debug::tags;
pub use debug::{forbid_alloc, set_forbid_strict};
pub use flagged::Flagged;
pub use mempool::{Mempool, PoolBox, TypedMempool};
pub use reclaim::{
    limit, reclaim, register_shrinker, remove_limit, set_limit, try_register_shrinker, ShrinkerHandle,
    MIN_LIMIT,
};
pub use scope::{
    current, memalloc_flags_restore, memalloc_flags_save, memalloc_nofail_restore, memalloc_nofail_save,
    memalloc_nofs_restore, memalloc_nofs_save, memalloc_noio_restore, memalloc_noio_save,
    memalloc_noreclaim_restore, memalloc_noreclaim_save, scope, with_scope, ScopeGuard,
};
pub use scoped_lock::{
    ScopedGuard, ScopedMutex, ScopedMutexGuard, ScopedReadGuard, ScopedRwLock, ScopedWriteGuard,
};
#[cfg(feature = "tokio")]
pub use task::spawn_scoped;
pub use task::{scoped, Scoped, TaskScope, WithScope};
pub use tracked::{Tracked, TrackedMutex, TrackedMutexGuard};

use ctxalloc_core::Core;
use platform::StdPlatform;
use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

/// The process's allocator state. Every `CtxAlloc` value is a handle to it.
static CORE: Core<StdPlatform> = Core::new(StdPlatform);

/// The global allocator.
///
/// ```no_run
/// #[global_allocator]
/// static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
/// ```
///
/// It is a handle: all state is process-wide, so the free functions of this crate
/// ([`usage`], [`stats`], scopes…) see what it allocated. It can also be used as a plain
/// `GlobalAlloc` value without being the global allocator.
#[derive(Clone, Copy, Debug, Default)]
pub struct CtxAlloc {
    _private: (),
}

impl CtxAlloc {
    /// The allocator handle.
    pub const fn new() -> Self {
        CtxAlloc { _private: () }
    }
}

// SAFETY: the core returns null or a fresh block of at least `layout.size()` bytes aligned to
// `layout.align()`, frees only what it handed out, and never unwinds.
unsafe impl GlobalAlloc for CtxAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { CORE.alloc(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { CORE.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { CORE.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { CORE.realloc(ptr, layout, new_size) }
    }
}

/// Allocates with per-call flags, united with this thread's context word. Any size: zero-sized
/// layouts get a minimal block.
///
/// ```
/// use ctxalloc::Gfp;
/// use std::alloc::Layout;
/// let l = Layout::from_size_align(4096, 64).unwrap();
/// let p = ctxalloc::alloc_with(l, Gfp::ZERO | Gfp::NOFS).unwrap();
/// assert!(unsafe { std::slice::from_raw_parts(p.as_ptr(), 4096) }.iter().all(|&b| b == 0));
/// unsafe { ctxalloc::dealloc(p, l) };
/// ```
///
/// # Errors
/// [`AllocError`] when no memory can be had in the effective context.
#[track_caller]
#[inline]
pub fn alloc_with(layout: Layout, gfp: Gfp) -> Result<NonNull<u8>, AllocError> {
    CORE.alloc_with(layout, gfp)
}

/// Resizes a block with per-call flags. On error the old block is untouched.
///
/// ```
/// use ctxalloc::Gfp;
/// use std::alloc::Layout;
/// let l = Layout::from_size_align(100, 8).unwrap();
/// let p = ctxalloc::alloc_with(l, Gfp::KERNEL).unwrap();
/// let q = unsafe { ctxalloc::realloc_with(p, l, 1 << 20, Gfp::NOIO) }.unwrap();
/// unsafe { ctxalloc::dealloc(q, Layout::from_size_align(1 << 20, 8).unwrap()) };
/// ```
///
/// # Safety
/// `ptr` is a live block of this allocator allocated with `layout`; `new_size` rounded up to
/// `layout.align()` does not overflow `isize`.
///
/// # Errors
/// [`AllocError`] when no memory can be had in the effective context.
pub unsafe fn realloc_with(
    ptr: NonNull<u8>,
    layout: Layout,
    new_size: usize,
    gfp: Gfp,
) -> Result<NonNull<u8>, AllocError> {
    // SAFETY: forwarded contract.
    NonNull::new(unsafe { CORE.realloc_gfp(ptr.as_ptr(), layout, new_size, gfp) }).ok_or(AllocError)
}

/// Frees a block from [`alloc_with`], [`realloc_with`] or the global allocator.
///
/// # Safety
/// `ptr` is a live block of this allocator with `layout` (the layout of its allocation or last
/// reallocation).
#[inline]
pub unsafe fn dealloc(ptr: NonNull<u8>, layout: Layout) {
    // SAFETY: forwarded contract.
    unsafe { CORE.dealloc(ptr.as_ptr(), layout) }
}

/// The effective context an allocation with per-call flags `gfp` would have on this thread
/// (the kernel's `current_gfp_context`).
///
/// ```
/// use ctxalloc::Gfp;
/// let _g = ctxalloc::scope(Gfp::NOIO);
/// assert_eq!(ctxalloc::effective(Gfp::KERNEL).gfp(), Gfp::GFP_NOIO); // NOIO ⇒ NOFS
/// ```
#[inline]
pub fn effective(gfp: Gfp) -> Effective {
    CORE.effective(gfp)
}

/// Bytes obtained from the operating system and not given back, at page granularity.
///
/// ```
/// let before = ctxalloc::usage();
/// let v: Vec<u8> = Vec::with_capacity(1 << 20);
/// # #[global_allocator] static G: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
/// assert!(ctxalloc::usage() >= before + (1 << 20));
/// drop(v);
/// ```
#[inline]
pub fn usage() -> usize {
    CORE.usage()
}

/// A snapshot of the allocator's statistics; `Display` prints a table.
///
/// ```
/// println!("{}", ctxalloc::stats());
/// ```
pub fn stats() -> Stats {
    CORE.stats()
}

/// Writes the statistics table to a file descriptor with `write(2)` from a stack buffer,
/// without allocating — from an `atexit` handler, a signal handler's deferred work, or C's
/// `malloc_stats`. What `CTXALLOC_SHOW_STATS=1` does at exit, to stderr.
///
/// ```
/// ctxalloc::print_stats(2);
/// ```
pub fn print_stats(fd: std::os::fd::RawFd) {
    let mut w = platform::FdWriter::new(fd);
    let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{}", CORE.stats()));
    w.flush();
}

/// Gives memory kept for speed back to the operating system: this thread's empty pages, the
/// spare segment, the cached large areas, and the physical pages of free slices
/// (`malloc_trim`). The background thread does the same for memory that has waited 200 ms.
///
/// ```
/// ctxalloc::trim();
/// ```
pub fn trim() {
    CORE.trim();
}

/// Bytes usable at `ptr`, a live block allocated with `layout` (at least `layout.size()`).
///
/// # Safety
/// `ptr` is a live block of this allocator with `layout`.
pub unsafe fn usable_size(ptr: NonNull<u8>, layout: Layout) -> usize {
    // SAFETY: forwarded contract.
    unsafe { CORE.usable_size(ptr.as_ptr(), layout) }
}

/// Frees a block without its layout — the kernel's `kfree`, what C's `free` is in
/// `ctxalloc-preload`. Null is ignored; a pointer ctxalloc never handed out is reported on
/// stderr with its address and ignored.
///
/// ```
/// # #[global_allocator] static G: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
/// let p = Box::into_raw(Box::new([7u8; 100])).cast::<u8>();
/// assert!(ctxalloc::ksize(p) >= 100);
/// unsafe { ctxalloc::kfree(p) };
/// ```
///
/// # Safety
/// `ptr` is null, a live block of this allocator that the caller gives up, or a pointer it
/// never handed out.
#[inline]
pub unsafe fn kfree(ptr: *mut u8) {
    // SAFETY: forwarded contract.
    unsafe { CORE.kfree(ptr) }
}

/// The allocation fast path alone: a block of at least `size` bytes (at most [`SMALL_MAX`],
/// aligned to [`MIN_ALIGN`], to 16 above [`TINY_MAX`]) if the calling thread has one ready on
/// its list for the size, else `None` with nothing done — no new page, no reclaim, no report.
/// For a wrapper with a slow path of its own (the C library's `malloc`: both of its paths then
/// end in a tail call). The block is an allocation of `Layout::from_size_align(size,
/// MIN_ALIGN)`.
///
/// ```
/// use std::alloc::{GlobalAlloc, Layout};
/// let l = Layout::from_size_align(24, ctxalloc::MIN_ALIGN).unwrap();
/// let a = ctxalloc::CtxAlloc::new();
/// // SAFETY: a non-zero layout; the block is freed with it.
/// unsafe { a.dealloc(a.alloc(l), l) };
/// let p = ctxalloc::alloc_cached(24).expect("the block just freed waits on this thread's list");
/// // SAFETY: a block of `l`.
/// unsafe { a.dealloc(p.as_ptr(), l) };
/// assert!(ctxalloc::alloc_cached(ctxalloc::SMALL_MAX + 1).is_none());
/// ```
#[inline(always)]
pub fn alloc_cached(size: usize) -> Option<NonNull<u8>> {
    NonNull::new(CORE.alloc_cached(size))
}

/// Bytes usable at `ptr` without its layout — the kernel's `ksize`, C's
/// `malloc_usable_size`; 0 for null or a pointer ctxalloc never handed out.
///
/// ```
/// let local = 0u64;
/// assert_eq!(ctxalloc::ksize((&raw const local).cast()), 0); // not ctxalloc's
/// ```
pub fn ksize(ptr: *const u8) -> usize {
    CORE.ksize(ptr)
}

/// Resizes a block without its layout — the kernel's `krealloc`, C's `realloc` (alignment
/// 16): null allocates; growth that needs new memory is allocated in the effective context of
/// `gfp`. Null on failure, with the old block untouched.
///
/// ```
/// use ctxalloc::Gfp;
/// let p = unsafe { ctxalloc::krealloc(std::ptr::null_mut(), 10, Gfp::KERNEL) };
/// let q = unsafe { ctxalloc::krealloc(p, 1 << 20, Gfp::NOFS) };
/// assert!(ctxalloc::ksize(q) >= 1 << 20);
/// unsafe { ctxalloc::kfree(q) };
/// ```
///
/// # Safety
/// `ptr` is null or a live block of this allocator; `new_size` ≤ `isize::MAX`.
pub unsafe fn krealloc(ptr: *mut u8, new_size: usize, gfp: Gfp) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { CORE.krealloc(ptr, new_size, gfp) }
}

#[cfg(test)]
#[global_allocator]
static TEST_GLOBAL: CtxAlloc = CtxAlloc::new();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_harness_runs_on_ctxalloc() {
        let v: Vec<Box<u64>> = (0..10_000).map(Box::new).collect();
        // Every box is a block of ctxalloc's (`ksize` is 0 for a pointer it did not hand out).
        assert!(v.iter().all(|b| ksize((&raw const **b).cast()) == 8));
        assert!(stats().slab_pages > 0);
        assert_eq!(v.iter().map(|b| **b).sum::<u64>(), 49_995_000);
    }

    #[test]
    fn zeroed_and_large_allocations() {
        // Miri interprets every byte: smaller, still a vmap area and a vmap growth.
        let (big, grown) = if cfg!(miri) { (200_000, 100_000) } else { (10 << 20, 2_000_000) };
        let v = vec![0u8; big];
        assert!(v.iter().all(|&b| b == 0));
        assert!(stats().vmap_areas >= 1);
        let mut w = vec![1u32; 1000];
        w.resize(grown, 7);
        assert_eq!(w[999], 1);
        assert_eq!(w[grown - 1], 7);
    }

    #[test]
    fn with_scope_closes_on_unwind() {
        let r = std::panic::catch_unwind(|| with_scope(Gfp::NOFS, || panic!("boom")));
        assert!(r.is_err());
        assert_eq!(current(), Gfp::KERNEL);
    }

    #[test]
    fn usable_size_covers_the_request() {
        for size in [1usize, 17, 1000, 5000, 70_000, 1 << 20] {
            let l = Layout::from_size_align(size, 8).unwrap();
            let p = alloc_with(l, Gfp::KERNEL).unwrap();
            // SAFETY: live block of `l`.
            let u = unsafe { usable_size(p, l) };
            assert!(u >= size && u < size * 2 + 64, "{size} -> {u}");
            // SAFETY: live block of `l`.
            unsafe { dealloc(p, l) };
        }
    }
}

/// The crate README's example, compiled and run as a doctest (the workspace README and the
/// guide are the `ctxalloc-tests` crate's doctests).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
