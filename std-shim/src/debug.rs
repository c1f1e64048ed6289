//! Finding the missing scope, testing error paths, knowing who uses the memory: the debugging
//! aids, each behind a cargo feature of this crate (`forbid-alloc`, `fault-injection`, `tags`,
//! `lockcheck`, or `debug` for all four). Built in, each costs one byte test per allocation;
//! not built in, nothing.
//!
//! * [`forbid_alloc`]: a scope for real-time code — any allocation inside is reported with its
//!   size and where it was made (and aborts the process after [`set_forbid_strict`]).
//! * [`fault::inject`]: fail the current thread's allocations, reproducibly, as the kernel's
//!   failslab does — and only inside the guard.
//! * [`tags::tag`]: count bytes and calls per tag; [`tags::allocinfo`] reports them like
//!   `/proc/allocinfo`.
//! * The reclaim-order checker (`lockcheck`): see [`TrackedMutex`](crate::TrackedMutex) and
//!   [`ShrinkerHandle::takes`](crate::ShrinkerHandle::takes).

use crate::{scope, ScopeGuard, CORE};
use ctxalloc_core::Gfp;

/// Opens a scope in which nothing may allocate (`Gfp::FORBID`): each allocation inside is
/// reported with its size and return addresses and counted in
/// [`Stats::forbidden_allocs`](crate::Stats), or aborts the process in strict mode. Checked
/// only with the `forbid-alloc` feature; without it the scope is set and nothing looks at it.
/// Frees are allowed (a real-time thread may give memory back).
///
/// ```
/// let samples = vec![0.5f32; 64]; // allocate before the real-time part
/// {
///     let _rt = ctxalloc::forbid_alloc();
///     let peak = samples.iter().copied().fold(0.0, f32::max); // allocates nothing
///     assert_eq!(peak, 0.5);
/// }
/// ```
#[track_caller]
#[inline]
pub fn forbid_alloc() -> ScopeGuard {
    scope(Gfp::FORBID)
}

/// Strict mode for [`forbid_alloc`]: abort on the first allocation inside one (`true`), or
/// report each and go on (`false`, the default).
pub fn set_forbid_strict(strict: bool) {
    CORE.set_forbid_strict(strict);
}

/// Scoped fault injection (feature `fault-injection`).
#[cfg(feature = "fault-injection")]
pub mod fault {
    use crate::CORE;
    pub use ctxalloc_core::FaultConfig;
    use ctxalloc_core::FaultSaved;
    use std::marker::PhantomData;

    /// Fails the current thread's allocations as `config` says until the guard drops; other
    /// threads are untouched. NOFAIL requests are never failed; a failed one gets the reclaim
    /// pass a real refusal would, so fallbacks (a mempool's reserve, kvmalloc's vmap attempt)
    /// run as under real pressure. The same seed fails the same allocations.
    ///
    /// ```
    /// use ctxalloc::{alloc_with, fault, Gfp};
    /// use std::alloc::Layout;
    /// let l = Layout::from_size_align(256, 8).unwrap();
    /// let g = fault::inject(fault::FaultConfig { fail_nth: 2, ..Default::default() });
    /// let first = alloc_with(l, Gfp::NOWARN);
    /// let second = alloc_with(l, Gfp::NOWARN);
    /// assert_eq!((g.injected(), g.calls()), (1, 2));
    /// drop(g);
    /// assert!(first.is_ok() && second.is_err());
    /// # unsafe { ctxalloc::dealloc(first.unwrap(), l) };
    /// ```
    #[must_use = "failures stop when the guard is dropped"]
    pub fn inject(config: FaultConfig) -> FaultGuard {
        FaultGuard { saved: CORE.fault_inject(config), _not_send: PhantomData }
    }

    /// The guard of [`inject`]. Not `Send`: the injection belongs to the thread.
    #[derive(Debug)]
    pub struct FaultGuard {
        saved: FaultSaved,
        _not_send: PhantomData<*const ()>,
    }

    impl FaultGuard {
        /// Failures injected since the guard began.
        pub fn injected(&self) -> u64 {
            CORE.fault_injected()
        }

        /// Allocations the guard has seen (eligible for failure) since it began.
        pub fn calls(&self) -> u64 {
            CORE.fault_calls()
        }
    }

    impl Drop for FaultGuard {
        fn drop(&mut self) {
            CORE.fault_restore(self.saved);
        }
    }
}

/// Allocation tags (feature `tags`).
#[cfg(feature = "tags")]
pub mod tags {
    use crate::CORE;
    pub use ctxalloc_core::{TagRow, MAX_TAGS};
    use std::marker::PhantomData;

    /// Tags the current thread's allocations `name` until the guard drops. The innermost tag
    /// wins; a block's bytes leave its tag when it is freed, by any thread. At most
    /// [`MAX_TAGS`] − 1 names; past that, the guard tags nothing.
    ///
    /// ```
    /// #[global_allocator]
    /// static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
    ///
    /// fn main() {
    ///     let v = {
    ///         let _t = ctxalloc::tags::tag("doc-example");
    ///         vec![0u8; 1000]
    ///     };
    ///     let row = |n| ctxalloc::tags::rows().into_iter().find(|r| r.name == n).unwrap();
    ///     assert_eq!((row("doc-example").bytes, row("doc-example").live), (1000, 1));
    ///     drop(v);
    ///     let r = row("doc-example");
    ///     assert_eq!((r.bytes, r.live, r.calls), (0, 0, 1));
    /// }
    /// ```
    #[must_use = "the tag ends when the guard is dropped"]
    pub fn tag(name: &'static str) -> TagGuard {
        let prev = match CORE.tag_id(name) {
            Some(id) => CORE.tag_set(id),
            None => CORE.tag_set(0),
        };
        TagGuard { prev, _not_send: PhantomData }
    }

    /// The guard of [`tag`]. Not `Send`: the tag belongs to the thread.
    #[derive(Debug)]
    pub struct TagGuard {
        prev: u16,
        _not_send: PhantomData<*const ()>,
    }

    impl Drop for TagGuard {
        fn drop(&mut self) {
            CORE.tag_set(self.prev);
        }
    }

    /// Every tag and its counters (allocates the `Vec`; call it outside the allocator).
    pub fn rows() -> Vec<TagRow> {
        CORE.tag_rows().into_iter().flatten().collect()
    }

    /// The `/proc/allocinfo`-like report: live bytes, live blocks, calls and name per tag,
    /// largest first.
    ///
    /// ```
    /// assert!(ctxalloc::tags::allocinfo().starts_with("allocinfo - version: 1.0"));
    /// ```
    pub fn allocinfo() -> String {
        let mut s = String::new();
        let _ = CORE.write_allocinfo(&mut s);
        s
    }
}
