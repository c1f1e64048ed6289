//! Scopes on the calling thread's context word: the kernel's `memalloc_*_save`/`_restore` pairs,
//! an RAII guard, and a closure form.
//!
//! A scope restricts every allocation made inside it on this thread — including the ones made
//! by code that never heard of ctxalloc (`Vec::push`, `format!`, a library's internals) — and
//! only ever restricts: opening a scope can take permissions away, never grant them.
//!
//! Save returns only the bits it newly set (R1.4), so nested scopes unwind exactly. In debug
//! builds a restore out of order is reported on stderr naming both scopes and where they were
//! opened (the kernel cannot detect it), and counted in [`Stats::scope_mispairs`](crate::Stats).

use crate::{Cookie, Gfp, CORE};
use std::panic::Location;

/// This thread's context word: the union of every open scope's flags.
///
/// ```
/// use ctxalloc::Gfp;
/// assert_eq!(ctxalloc::current(), Gfp::KERNEL);
/// let _g = ctxalloc::scope(Gfp::NOFS);
/// assert_eq!(ctxalloc::current(), Gfp::NOFS);
/// ```
#[inline]
pub fn current() -> Gfp {
    CORE.current()
}

/// Opens a scope that sets `flags` (the bits a scope can set: NOFS, NOIO, NORECLAIM, NOFAIL,
/// MEMALLOC; others are ignored). Returns the bits that were not already set.
///
/// The kernel's `memalloc_flags_save`. Prefer [`scope`] unless the scope must outlive a lexical
/// block.
///
/// ```
/// use ctxalloc::Gfp;
/// let c = ctxalloc::memalloc_flags_save(Gfp::NOFS | Gfp::NOIO);
/// assert!(ctxalloc::effective(Gfp::KERNEL).gfp().contains(Gfp::NOFS));
/// ctxalloc::memalloc_flags_restore(c);
/// ```
#[track_caller]
#[inline]
pub fn memalloc_flags_save(flags: Gfp) -> Cookie {
    CORE.scope_save(flags, Location::caller())
}

/// Closes a scope opened by [`memalloc_flags_save`] (or any `memalloc_*_save`): clears exactly
/// the bits its save set.
#[inline]
pub fn memalloc_flags_restore(cookie: Cookie) {
    CORE.scope_restore(cookie);
}

macro_rules! scope_pair {
    ($save:ident, $restore:ident, $flag:ident, $what:literal) => {
        #[doc = concat!("Opens a ", stringify!($flag), " scope: ", $what, "\n\nReturns the cookie for [`", stringify!($restore), "`].\n\n```\nlet c = ctxalloc::", stringify!($save), "();\nassert!(ctxalloc::current().contains(ctxalloc::Gfp::", stringify!($flag), "));\nctxalloc::", stringify!($restore), "(c);\nassert!(ctxalloc::current().is_empty());\n```")]
        #[track_caller]
        #[inline]
        pub fn $save() -> Cookie {
            CORE.scope_save(Gfp::$flag, Location::caller())
        }

        #[doc = concat!("Closes a scope opened by [`", stringify!($save), "`].")]
        #[inline]
        pub fn $restore(cookie: Cookie) {
            CORE.scope_restore(cookie);
        }
    };
}

scope_pair!(
    memalloc_nofs_save,
    memalloc_nofs_restore,
    NOFS,
    "reclaim on behalf of allocations inside it never calls a filesystem-class shrinker."
);
scope_pair!(
    memalloc_noio_save,
    memalloc_noio_restore,
    NOIO,
    "reclaim never calls an I/O- or filesystem-class shrinker (NOIO implies NOFS)."
);
scope_pair!(
    memalloc_noreclaim_save,
    memalloc_noreclaim_restore,
    NORECLAIM,
    "no direct reclaim and no waiting: allocations fail fast instead. (The kernel's function of \
     this name sets `PF_MEMALLOC`; that is `memalloc_flags_save(Gfp::MEMALLOC)` here.)"
);
scope_pair!(
    memalloc_nofail_save,
    memalloc_nofail_restore,
    NOFAIL,
    "satisfiable allocations never fail: they reclaim, use part of the reserve, and wait. A \
     per-call MAYFAIL or NORETRY overrides it."
);

/// An open scope; dropping it closes the scope. Not `Send`: a scope belongs to its thread.
///
/// ```
/// use ctxalloc::Gfp;
/// {
///     let _outer = ctxalloc::scope(Gfp::NOFS);
///     let _inner = ctxalloc::scope(Gfp::NOIO);
///     assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NOIO);
/// }
/// assert_eq!(ctxalloc::current(), Gfp::KERNEL);
/// ```
#[must_use = "the scope closes when the guard is dropped"]
pub struct ScopeGuard {
    cookie: Option<Cookie>,
}

impl std::fmt::Debug for ScopeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeGuard").field("cookie", &self.cookie).finish()
    }
}

impl Drop for ScopeGuard {
    #[inline]
    fn drop(&mut self) {
        if let Some(c) = self.cookie.take() {
            CORE.scope_restore(c);
        }
    }
}

/// Opens a scope until the returned guard is dropped.
#[track_caller]
#[inline]
pub fn scope(flags: Gfp) -> ScopeGuard {
    ScopeGuard { cookie: Some(CORE.scope_save(flags, Location::caller())) }
}

/// Runs `f` inside a scope; the scope closes when `f` returns or unwinds.
///
/// ```
/// use ctxalloc::Gfp;
/// let v = ctxalloc::with_scope(Gfp::NOFS, || {
///     assert!(ctxalloc::current().contains(Gfp::NOFS));
///     vec![1, 2, 3] // allocated under NOFS
/// });
/// assert_eq!(v.len(), 3);
/// ```
#[track_caller]
#[inline]
pub fn with_scope<R>(flags: Gfp, f: impl FnOnce() -> R) -> R {
    let _g = scope(flags);
    f()
}
