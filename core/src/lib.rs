//! # ctxalloc-core
//!
//! The `no_std` core of ctxalloc: an allocator whose allocations obey the *context* they run in —
//! the Linux kernel's scoped allocation model (`memalloc_nofs_save()` and friends) for Rust, where
//! `GlobalAlloc` has no flags argument. Everything here is generic over a [`Platform`]; the std
//! shim (crate `ctxalloc`) and the kernel shim (crate `ctxalloc-kernel`) are thin layers over it.
//!
//! ## Layers
//!
//! ```text
//!  gfp, scope        flags, the effective-context rule, the context word and its scopes
//!  size_class        8 B, 16 B … 64 KiB, eight classes per doubling
//!  lock              the allocator's locks, counted per thread: no lock is held across a call
//!                    out of the allocator (work found under one is done after it; debug
//!                    builds abort on a violation)
//!  slab::remote      the lock-free remote-free list                   (loom-checked)
//!  slab::page        one slab page and its two free lists
//!  slab::segment     the page heap: 4 MiB segments, 64 KiB slices, commit/purge accounting
//!  slab::heap        per-thread heaps: fast paths, page queues, retire, remote free
//!  slab::abandon     pages of exited threads, the heap pool
//!  vmap              page-granular large areas and their registry
//!  page              the page-source layer and accounting (usage, limit, reserve, watermarks)
//!  reclaim           the policy after a refusal, shrinkers and their registry (loom-checked),
//!                    direct and background reclaim, NOFAIL waits, pressure passes
//!  alloc             `Core`: entry points, dispatch, realloc, thread exit, fork
//!  mempool           preallocated reserves with forward progress (reserve loom-checked)
//!  debug             forbid_alloc, fault injection, allocation tags, the reclaim-order checker
//!                    (each behind a feature; off, they cost nothing)
//!  scoped_lock       a spin lock that carries an allocation scope
//!  platform          what a shim provides
//! ```
//!
//! ## A first allocation, step by step
//!
//! 1. `Core::alloc(Layout { size: 24, align: 8 })`: size ≤ 1 KiB and align ≤ 8, so the fast
//!    path indexes the heap's page table by 8-byte granule: `(24 + 7) / 8 = 3`.
//! 2. [`Platform::thread`] returns the thread's [`ThreadCtx`]; its heap is the static empty heap,
//!    whose `small[3]` is the static empty page, whose `free` list is null: no special
//!    "initialised?" test was needed to get here — the ordinary "list empty" test sends us on.
//! 3. The slow path looks up the class (2: 32 B), sees the empty heap and the thread's state
//!    *New*: it takes a heap from the pool — new heaps are carved from the unused tail of a
//!    segment header, so the first one maps the first segment — and tells the platform, which
//!    registers the thread-exit hook.
//! 4. The heap's queue for class 2 is empty, no full page received frees, no abandoned page of
//!    class 2 exists: a fresh page is needed, and *only now* is the context word read — the
//!    effective context (call flags ∪ word) is what the page heap charges memory under.
//! 5. The page heap has that segment (4 MiB aligned to 4 MiB, header charged): it hands out
//!    slice 1 as a page of 2048 blocks of 32 B and records it in the segment's slice map.
//! 6. 512 blocks (16 KiB) are carved onto the page's `free` list; the first is popped and
//!    returned. The next 511 allocations of 17–32 B are each: two compares, TLS load, table
//!    load, page load, list pop.
//! 7. Freeing: `addr & !(4 MiB − 1)` is the segment, `(addr >> 16) & 63` its slice-map index,
//!    the page's `owner` is our heap, so the block goes on top of the page's `free` list (the
//!    next allocation of its class gets it back, still in the cache). Another
//!    thread freeing it would push it on the page's atomic remote list instead.
//!
//! ## Features
//!
//! On docs.rs every item is shown, each labelled with the feature it needs.
//!
//! | feature | what |
//! |---|---|
//! | `mock` | `mock::MockPlatform`: a deterministic in-memory platform with injectable failures (uses `std`), for tests, fuzzing and benchmarks of the core |
//! | `forbid-alloc` | `Gfp::FORBID` scopes report every allocation inside them |
//! | `fault-injection` | `FaultConfig`: scoped, reproducible allocation failures |
//! | `tags` | allocation tags: live bytes and calls per tag (`TagRow`) |
//! | `lockcheck` | the reclaim-order checker (`LockClass`) |
//! | `hardened` | encoded, validated free lists; double and foreign frees caught on the fast path |
//!
//! The core reads no environment variable: configuration is the shim's (the std shim's
//! `CTXALLOC_*` variables; sizes parse with [`parse::parse_size`]).
//!
//! ## Testing the core
//!
//! The `mock` feature provides `mock::MockPlatform`, an in-memory platform with injectable
//! failures, under which the core runs under miri with strict provenance.

#![no_std]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(test, feature = "mock"))]
extern crate std;

#[cfg(not(all(loom, test)))]
mod alloc;
#[cfg(not(all(loom, test)))]
mod debug;
#[cfg(not(all(loom, test)))]
mod fit;
#[cfg(not(all(loom, test)))]
mod gfp;
#[cfg(all(feature = "hardened", not(all(loom, test))))]
mod hardened;
#[cfg(not(all(loom, test)))]
mod lock;
#[cfg(not(all(loom, test)))]
mod mempool;
#[cfg(all(any(test, feature = "mock"), not(all(loom, test))))]
pub mod mock;
#[cfg(not(all(loom, test)))]
mod page;
#[cfg(not(all(loom, test)))]
pub mod parse;
#[cfg(not(all(loom, test)))]
mod platform;
#[cfg(not(all(loom, test)))]
mod reclaim;
#[cfg(not(all(loom, test)))]
pub mod report;
#[cfg(not(all(loom, test)))]
mod scope;
#[cfg(not(all(loom, test)))]
mod scoped_lock;
#[cfg(not(all(loom, test)))]
pub mod size_class;
#[cfg(not(all(loom, test)))]
mod slab;
#[cfg(not(all(loom, test)))]
mod stats;
mod sync;
#[cfg(all(test, not(all(loom, test))))]
mod tests;
#[cfg(not(all(loom, test)))]
mod track;
#[cfg(not(all(loom, test)))]
mod vmap;

/// Under loom only the lock-free structures (and what they name) are compiled.
#[cfg(all(loom, test))]
#[allow(dead_code)]
mod slab {
    #[path = "remote.rs"]
    pub(crate) mod remote;
}
#[cfg(all(loom, test))]
#[allow(dead_code, unused_imports)]
mod gfp;
#[cfg(all(loom, test))]
#[allow(dead_code)]
mod scoped_lock;
#[cfg(all(loom, test))]
#[allow(dead_code)]
mod mempool {
    #[path = "reserve.rs"]
    pub(crate) mod reserve;
}
#[cfg(all(loom, test))]
#[allow(dead_code)]
mod reclaim {
    #[path = "background.rs"]
    pub(crate) mod background;
    #[path = "registry.rs"]
    pub(crate) mod registry;
    #[path = "shrinker.rs"]
    pub(crate) mod shrinker;
}

#[cfg(not(all(loom, test)))]
pub use alloc::{AllocError, Core};
#[cfg(feature = "fault-injection")]
pub use debug::fault::{FaultConfig, FaultSaved};
#[cfg(feature = "tags")]
pub use debug::tags::{TagRow, MAX_TAGS};
#[cfg(not(all(loom, test)))]
pub use debug::LockClass;
#[cfg(not(all(loom, test)))]
pub use gfp::{Effective, Gfp, ReclaimClass, Reserve};
#[cfg(not(all(loom, test)))]
pub use mempool::{Mempool, PoolBox, WAIT_NS as MEMPOOL_WAIT_NS};
#[cfg(not(all(loom, test)))]
pub use page::{emergency_reserve, LimitError, RESERVE_FLOOR};
#[cfg(not(all(loom, test)))]
pub use page::{LimitOrigin, LIMIT_ORIGIN_MAX, PURGE_DELAY_NS};
#[cfg(not(all(loom, test)))]
pub use platform::{Platform, StaticThreadCtx, ThreadCtx, NO_THREAD};
#[cfg(not(all(loom, test)))]
pub use reclaim::background::BackgroundThread;
#[cfg(not(all(loom, test)))]
pub use reclaim::pressure::{PressureOutcome, PressurePolicy};
#[cfg(not(all(loom, test)))]
pub use reclaim::shrinker::{ScanResult, ShrinkControl, Shrinker};
#[cfg(not(all(loom, test)))]
pub use reclaim::{Cause, ShrinkerId, ShrinkerStats};
#[cfg(not(all(loom, test)))]
pub use scope::{Cookie, Mispair, ScopeInfo, ScopeState};
#[cfg(not(all(loom, test)))]
pub use scoped_lock::{ContextHolder, ScopedSpinGuard, ScopedSpinLock};
#[cfg(not(all(loom, test)))]
pub use slab::{SEGMENT_SIZE, SLICE_SIZE};
#[cfg(not(all(loom, test)))]
pub use stats::{ShrinkerRow, Stats, MAX_SHRINKER_ROWS};
#[cfg(not(all(loom, test)))]
pub use sync::{SpinGuard, SpinLock};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
