//! Allocation flags (`Gfp`) and the effective-context rule.
//!
//! The kernel's `gfp_t` is a set of *permissions* (`__GFP_FS`, `__GFP_IO`, `__GFP_DIRECT_RECLAIM`)
//! that a scope clears (R1.2). ctxalloc stores the complement: a set of *restrictions*. The empty
//! set is `GFP_KERNEL` (may reclaim, may enter the filesystem and block I/O); every bit a scope or a
//! call adds only ever takes permissions away. Union is therefore always the right way to combine
//! a call's flags with the thread's context word, and "the context only ever restricts" holds by
//! construction.

use core::fmt;
use core::ops::{BitAnd, BitOr, BitOrAssign, Not, Sub};

/// A set of allocation flags: the restrictions a scope puts on every allocation inside it, plus
/// the per-call modifiers a single `alloc_with` may add.
///
/// ```
/// use ctxalloc_core::Gfp;
/// let nofs = Gfp::NOFS;
/// assert!(Gfp::GFP_NOIO.contains(Gfp::NOIO));
/// assert_eq!((nofs | Gfp::NOWARN).to_string(), "NOFS|NOWARN");
/// assert_eq!(Gfp::KERNEL.to_string(), "KERNEL");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Gfp(u32);

/// Names of the bits, in bit order, for `Display`.
const NAMES: [(Gfp, &str); 12] = [
    (Gfp::NOFS, "NOFS"),
    (Gfp::NOIO, "NOIO"),
    (Gfp::NORECLAIM, "NORECLAIM"),
    (Gfp::NOFAIL, "NOFAIL"),
    (Gfp::MEMALLOC, "MEMALLOC"),
    (Gfp::FORBID, "FORBID"),
    (Gfp::MAYFAIL, "MAYFAIL"),
    (Gfp::NORETRY, "NORETRY"),
    (Gfp::NOMEMALLOC, "NOMEMALLOC"),
    (Gfp::NOWARN, "NOWARN"),
    (Gfp::ZERO, "ZERO"),
    (Gfp::HIGH, "HIGH"),
];

impl Gfp {
    /// No restriction: reclaim may run every shrinker, the caller may wait. The kernel's
    /// `GFP_KERNEL`.
    pub const KERNEL: Gfp = Gfp(0);

    // --- bits a scope can set (the context word) ---------------------------------------------
    /// Reclaim must not call filesystem-class shrinkers (`PF_MEMALLOC_NOFS`).
    pub const NOFS: Gfp = Gfp(1 << 0);
    /// Reclaim must not call I/O- or filesystem-class shrinkers (`PF_MEMALLOC_NOIO`); implies
    /// [`Gfp::NOFS`] (R1.3).
    pub const NOIO: Gfp = Gfp(1 << 1);
    /// No synchronous reclaim and no waiting: fail fast (`GFP_NOWAIT`-like).
    pub const NORECLAIM: Gfp = Gfp(1 << 2);
    /// Never return null for a satisfiable request: reclaim, use part of the reserve, wait, retry.
    pub const NOFAIL: Gfp = Gfp(1 << 3);
    /// The reclaim context (`PF_MEMALLOC`): no recursion into reclaim, full emergency reserve.
    pub const MEMALLOC: Gfp = Gfp(1 << 4);
    /// No allocation at all (real-time code): every allocation inside is reported with its size,
    /// and aborts the process in strict mode. Checked only when built with the `forbid-alloc`
    /// feature (the check sits on the fast path); reclaim and the reserve ignore it.
    pub const FORBID: Gfp = Gfp(1 << 5);

    // --- per-call modifiers --------------------------------------------------------------------
    /// May fail after retrying; overrides a NOFAIL scope (`__GFP_RETRY_MAYFAIL`).
    pub const MAYFAIL: Gfp = Gfp(1 << 8);
    /// Fail after one reclaim pass; overrides a NOFAIL scope (`__GFP_NORETRY`).
    pub const NORETRY: Gfp = Gfp(1 << 9);
    /// Never use the emergency reserve, even under MEMALLOC (`__GFP_NOMEMALLOC`).
    pub const NOMEMALLOC: Gfp = Gfp(1 << 10);
    /// Do not report a failure (`__GFP_NOWARN`).
    pub const NOWARN: Gfp = Gfp(1 << 11);
    /// Return zeroed memory (`__GFP_ZERO`).
    pub const ZERO: Gfp = Gfp(1 << 12);
    /// High priority (`__GFP_HIGH`): may use a quarter of the emergency reserve, below the
    /// plain watermark and above NOFAIL's half and MEMALLOC's whole. What an allocation in
    /// atomic context gets without asking ([`Gfp::ATOMIC`]).
    pub const HIGH: Gfp = Gfp(1 << 13);

    // --- the kernel's composite masks, in restriction form (R5.13) -------------------------
    /// `GFP_NOFS`: may reclaim and do I/O, but not enter the filesystem.
    pub const GFP_NOFS: Gfp = Gfp::NOFS;
    /// `GFP_NOIO`: may reclaim, but neither do I/O nor enter the filesystem.
    pub const GFP_NOIO: Gfp = Gfp(Gfp::NOIO.0 | Gfp::NOFS.0);
    /// `GFP_NOWAIT`: no direct reclaim, no report.
    pub const GFP_NOWAIT: Gfp = Gfp(Gfp::NORECLAIM.0 | Gfp::NOWARN.0);
    /// `GFP_ATOMIC`: no reclaim, no waiting, a quarter of the reserve. Every allocation made
    /// while the platform reports atomic context ([`Platform::in_atomic`](crate::Platform::in_atomic):
    /// an interrupt handler, preemption held off) gets these bits added to its call's flags,
    /// so `Vec::push` in an interrupt handler neither sleeps nor reclaims.
    pub const ATOMIC: Gfp = Gfp(Gfp::NORECLAIM.0 | Gfp::HIGH.0);

    /// The bits a scope (`memalloc_flags_save`) may set in the context word.
    pub const SCOPE_MASK: Gfp = Gfp(0x3f);
    /// Every defined bit.
    pub const ALL: Gfp = Gfp(0x3f | 0x3f00);

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Flags from raw bits; undefined bits are dropped.
    ///
    /// ```
    /// # use ctxalloc_core::Gfp;
    /// assert_eq!(Gfp::from_bits_truncate(u32::MAX), Gfp::ALL);
    /// ```
    #[inline]
    pub const fn from_bits_truncate(bits: u32) -> Gfp {
        Gfp(bits & Gfp::ALL.0)
    }

    /// Whether no bit is set.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every bit of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Gfp) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit of `other` is set in `self`.
    #[inline]
    pub const fn intersects(self, other: Gfp) -> bool {
        self.0 & other.0 != 0
    }

    /// `self ∪ other`.
    #[inline]
    pub const fn union(self, other: Gfp) -> Gfp {
        Gfp(self.0 | other.0)
    }

    /// `self ∩ other`.
    #[inline]
    pub const fn intersection(self, other: Gfp) -> Gfp {
        Gfp(self.0 & other.0)
    }

    /// `self \ other`.
    #[inline]
    pub const fn difference(self, other: Gfp) -> Gfp {
        Gfp(self.0 & !other.0)
    }
}

impl BitOr for Gfp {
    type Output = Gfp;
    #[inline]
    fn bitor(self, rhs: Gfp) -> Gfp {
        self.union(rhs)
    }
}

impl BitOrAssign for Gfp {
    #[inline]
    fn bitor_assign(&mut self, rhs: Gfp) {
        *self = self.union(rhs);
    }
}

impl BitAnd for Gfp {
    type Output = Gfp;
    #[inline]
    fn bitand(self, rhs: Gfp) -> Gfp {
        self.intersection(rhs)
    }
}

impl Sub for Gfp {
    type Output = Gfp;
    #[inline]
    fn sub(self, rhs: Gfp) -> Gfp {
        self.difference(rhs)
    }
}

impl Not for Gfp {
    type Output = Gfp;
    #[inline]
    fn not(self) -> Gfp {
        Gfp(!self.0 & Gfp::ALL.0)
    }
}

impl fmt::Display for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("KERNEL");
        }
        let mut first = true;
        for (bit, name) in NAMES {
            if self.contains(bit) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Gfp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gfp({self})")
    }
}

/// Which kind of lock a shrinker may need, and so which scopes forbid calling it.
///
/// ```
/// use ctxalloc_core::{Effective, Gfp, ReclaimClass};
/// let e = Effective::new(Gfp::KERNEL, Gfp::NOIO);
/// assert!(!e.may_call(ReclaimClass::Fs));
/// assert!(!e.may_call(ReclaimClass::Io));
/// assert!(e.may_call(ReclaimClass::Other));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReclaimClass {
    /// Needs filesystem locks: skipped under NOFS (and NOIO).
    Fs,
    /// Needs to issue or wait for block I/O: skipped under NOIO.
    Io,
    /// Takes no lock an allocating filesystem or I/O path could hold.
    Other,
}

/// How deep into the emergency reserve a request may go (DESIGN.md "Memory limit and reclaim").
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Reserve {
    /// Stop at `limit − reserve`.
    None,
    /// HIGH (atomic context): up to a quarter of the reserve.
    Quarter,
    /// NOFAIL: up to half of the reserve.
    Half,
    /// MEMALLOC: all of it.
    Full,
}

/// The effective context of one allocation: the call's flags united with the thread's context
/// word, normalised by the rules of DESIGN.md ("The context word"):
///
/// * NOIO ⇒ NOFS (R1.3);
/// * MEMALLOC ⇒ no direct reclaim (R1.8);
/// * MAYFAIL or NORETRY ⇒ not NOFAIL (disputed point 2);
/// * NORECLAIM ∧ NOFAIL ⇒ not NOFAIL, remembered so the failure can be reported once (R5.10).
///
/// ```
/// use ctxalloc_core::{Effective, Gfp};
/// // A plain call inside a NOIO scope behaves as GFP_NOIO.
/// let e = Effective::new(Gfp::KERNEL, Gfp::NOIO);
/// assert_eq!(e.gfp(), Gfp::GFP_NOIO);
/// // A per-call MAYFAIL overrides a NOFAIL scope.
/// assert!(!Effective::new(Gfp::MAYFAIL, Gfp::NOFAIL).nofail());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Effective {
    gfp: Gfp,
    nofail_denied: bool,
    /// A NOFAIL request that already waited: it may now use the whole reserve (the kernel's
    /// "one no-watermark attempt", R5.10).
    deep: bool,
}

impl Effective {
    /// Combines a call's flags with a context word. Bits of `context` that a scope cannot set are
    /// ignored.
    #[inline]
    pub const fn new(call: Gfp, context: Gfp) -> Effective {
        let mut g = call.union(context.intersection(Gfp::SCOPE_MASK));
        if g.contains(Gfp::NOIO) {
            g = g.union(Gfp::NOFS);
        }
        if g.intersects(Gfp(Gfp::MAYFAIL.0 | Gfp::NORETRY.0)) {
            g = g.difference(Gfp::NOFAIL);
        }
        let mut nofail_denied = false;
        if g.contains(Gfp(Gfp::NOFAIL.0 | Gfp::NORECLAIM.0)) {
            g = g.difference(Gfp::NOFAIL);
            nofail_denied = true;
        }
        Effective { gfp: g, nofail_denied, deep: false }
    }

    /// The context of a NOFAIL request's retries after it had to wait: the whole reserve, as
    /// the kernel lets `__GFP_NOFAIL` make an attempt without watermarks (R5.10). A lock holder
    /// waiting for memory that only threads blocked on its lock could free then gets through.
    /// No effect on requests that are not NOFAIL.
    #[inline]
    pub const fn after_wait(self) -> Effective {
        Effective { deep: self.nofail(), ..self }
    }

    /// The normalised flags.
    #[inline]
    pub const fn gfp(self) -> Gfp {
        self.gfp
    }

    /// Whether this allocation may run direct reclaim (call shrinkers synchronously).
    #[inline]
    pub const fn may_reclaim(self) -> bool {
        !self.gfp.intersects(Gfp(Gfp::NORECLAIM.0 | Gfp::MEMALLOC.0))
    }

    /// Whether this allocation may wait for memory to be freed.
    #[inline]
    pub const fn may_wait(self) -> bool {
        !self.gfp.contains(Gfp::NORECLAIM)
    }

    /// Whether direct reclaim on behalf of this allocation may call a shrinker of `class`.
    #[inline]
    pub const fn may_call(self, class: ReclaimClass) -> bool {
        if !self.may_reclaim() {
            return false;
        }
        match class {
            ReclaimClass::Fs => !self.gfp.contains(Gfp::NOFS),
            ReclaimClass::Io => !self.gfp.contains(Gfp::NOIO),
            ReclaimClass::Other => true,
        }
    }

    /// Whether the allocation must not fail.
    #[inline]
    pub const fn nofail(self) -> bool {
        self.gfp.contains(Gfp::NOFAIL)
    }

    /// Whether NOFAIL was asked for in a context that cannot honour it (NORECLAIM): the failure
    /// is reported once instead of busy-looping (R5.10, disputed point 2).
    #[inline]
    pub const fn nofail_denied(self) -> bool {
        self.nofail_denied
    }

    /// Whether a failure of this allocation should be reported.
    #[inline]
    pub const fn warn(self) -> bool {
        !self.gfp.contains(Gfp::NOWARN)
    }

    /// Whether the memory must be zeroed.
    #[inline]
    pub const fn zero(self) -> bool {
        self.gfp.contains(Gfp::ZERO)
    }

    /// How much of the emergency reserve this allocation may use: NOMEMALLOC beats everything
    /// (R5.4), MEMALLOC takes all of it, NOFAIL half — all of it after it had to wait —, HIGH
    /// (atomic context) a quarter.
    #[inline]
    pub const fn reserve(self) -> Reserve {
        if self.gfp.contains(Gfp::NOMEMALLOC) {
            Reserve::None
        } else if self.gfp.contains(Gfp::MEMALLOC) || self.deep {
            Reserve::Full
        } else if self.gfp.contains(Gfp::NOFAIL) {
            Reserve::Half
        } else if self.gfp.contains(Gfp::HIGH) {
            Reserve::Quarter
        } else {
            Reserve::None
        }
    }

    /// The bits to install as an internal scope around metadata allocations made on behalf of
    /// this request (R2.1): every restriction the request carries, so that, for example, a
    /// descriptor allocated for a per-call `NOFS` large allocation is itself NOFS.
    #[inline]
    pub const fn scope_bits(self) -> Gfp {
        let mut g = self.gfp.intersection(Gfp::SCOPE_MASK);
        if self.nofail_denied {
            // Keep the request's NOFAIL intent visible inside: it still cannot be honoured there.
            g = g.union(Gfp::NOFAIL);
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_only_restricts() {
        // Checklist 1: for every call mask and context word, the effective set of restrictions
        // contains the call's restrictions (minus NOFAIL overrides) and the context's.
        // Every combination natively; a spread sample under miri.
        for call in (0..(1u32 << 14)).step_by(if cfg!(miri) { 61 } else { 1 }) {
            let call = Gfp::from_bits_truncate(call);
            for ctx in 0..32u32 {
                let ctx = Gfp::from_bits_truncate(ctx);
                let e = Effective::new(call, ctx);
                let expect = (call | ctx) - Gfp::NOFAIL;
                assert!(e.gfp().contains(expect), "{call} in {ctx} -> {}", e.gfp());
                if ctx.intersects(Gfp::NORECLAIM | Gfp::MEMALLOC) {
                    assert!(!e.may_reclaim());
                }
            }
        }
    }

    #[test]
    fn noio_implies_nofs() {
        let e = Effective::new(Gfp::KERNEL, Gfp::NOIO);
        assert!(e.gfp().contains(Gfp::NOFS));
        assert_eq!(e, Effective::new(Gfp::KERNEL, Gfp::NOIO | Gfp::NOFS));
    }

    #[test]
    fn nofail_overrides_and_misuse() {
        assert!(Effective::new(Gfp::KERNEL, Gfp::NOFAIL).nofail());
        assert!(!Effective::new(Gfp::NORETRY, Gfp::NOFAIL).nofail());
        assert!(!Effective::new(Gfp::MAYFAIL, Gfp::NOFAIL).nofail());
        let e = Effective::new(Gfp::NOFAIL, Gfp::NORECLAIM);
        assert!(!e.nofail());
        assert!(e.nofail_denied());
        assert!(!e.may_wait());
    }

    #[test]
    fn reserve_levels() {
        assert_eq!(Effective::new(Gfp::KERNEL, Gfp::KERNEL).reserve(), Reserve::None);
        assert_eq!(Effective::new(Gfp::NOFAIL, Gfp::KERNEL).reserve(), Reserve::Half);
        assert_eq!(Effective::new(Gfp::KERNEL, Gfp::MEMALLOC).reserve(), Reserve::Full);
        assert_eq!(Effective::new(Gfp::NOMEMALLOC, Gfp::MEMALLOC).reserve(), Reserve::None);
        assert_eq!(Effective::new(Gfp::ATOMIC, Gfp::KERNEL).reserve(), Reserve::Quarter);
        assert_eq!(Effective::new(Gfp::ATOMIC, Gfp::MEMALLOC).reserve(), Reserve::Full);
        assert_eq!(Effective::new(Gfp::ATOMIC | Gfp::NOMEMALLOC, Gfp::KERNEL).reserve(), Reserve::None);
    }

    #[test]
    fn atomic_neither_reclaims_nor_waits_nor_loops() {
        let e = Effective::new(Gfp::ATOMIC, Gfp::NOFAIL | Gfp::NOFS);
        assert!(!e.may_reclaim() && !e.may_wait() && !e.nofail());
        assert!(e.nofail_denied(), "NOFAIL in atomic context is reported once and failed");
        assert!(e.gfp().contains(Gfp::NOFS | Gfp::HIGH));
    }

    #[test]
    fn class_filter() {
        let nofs = Effective::new(Gfp::NOFS, Gfp::KERNEL);
        assert!(!nofs.may_call(ReclaimClass::Fs));
        assert!(nofs.may_call(ReclaimClass::Io));
        let memalloc = Effective::new(Gfp::KERNEL, Gfp::MEMALLOC);
        assert!(!memalloc.may_call(ReclaimClass::Other));
    }

    #[test]
    fn scope_mask_ignores_call_bits_in_context() {
        let e = Effective::new(Gfp::KERNEL, Gfp::NOWARN | Gfp::NOFS);
        assert_eq!(e.gfp(), Gfp::NOFS);
    }
}
