//! Debugging aids on the allocation path, each behind its own cargo feature: `forbid_alloc`
//! scopes (`forbid-alloc`), scoped fault injection (`fault-injection`), allocation tags (`tags`)
//! and the reclaim-order checker (`lockcheck`).
//!
//! ## Cost
//!
//! With none of the features built in, nothing here exists and the fast paths are unchanged.
//! With any of them, every allocation first tests one byte of the calling thread's context —
//! [`ScopeState::armed`](crate::ScopeState) — and takes the hooked path only when a hook wants
//! this thread: a `FORBID` scope is open, a tag is set, a fault guard is active, or a tracked
//! lock is held. Frees test one shared counter (live tagged blocks) when `tags` is built in.
//!
//! ## The hooked path
//!
//! 1. `busy` guards against re-entry: an allocation made while a hook runs (a report, a
//!    shrinker called by an injected failure's reclaim pass) takes the plain path.
//! 2. `forbid`: report the allocation (abort in strict mode).
//! 3. `lockcheck`: for each tracked lock this thread holds, note that it was held across an
//!    allocation whose context lets reclaim call each shrinker class, and report if a shrinker
//!    of such a class takes that lock.
//! 4. `fault`: maybe fail the allocation — after the reclaim pass a real refusal would get.
//! 5. The plain allocation; then `tags` records the block under the thread's tag.

#[cfg(feature = "fault-injection")]
pub(crate) mod fault;
#[cfg(feature = "lockcheck")]
pub(crate) mod lockcheck;
#[cfg(feature = "tags")]
pub(crate) mod tags;

#[cfg(feature = "hooks")]
use crate::gfp::Effective;
use crate::gfp::Gfp;
#[cfg(feature = "hooks")]
use crate::platform::ThreadCtx;
#[cfg(feature = "hooks")]
use crate::report::report;
use crate::sync::{AtomicBool, AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::cell::Cell;

/// [`ScopeState::armed`](crate::ScopeState) bit: a `FORBID` scope is open.
#[cfg(feature = "hooks")]
pub(crate) const ARM_FORBID: u8 = 1 << 0;
/// A tag is set.
#[cfg(feature = "tags")]
pub(crate) const ARM_TAG: u8 = 1 << 1;
/// A fault-injection guard is active.
#[cfg(feature = "fault-injection")]
pub(crate) const ARM_FAULT: u8 = 1 << 2;
/// A tracked lock is held.
#[cfg(feature = "lockcheck")]
pub(crate) const ARM_LOCKS: u8 = 1 << 3;

/// A lock the reclaim-order checker knows about: embed one in each lock (the std shim's
/// `TrackedMutex` and `ScopedMutex` do) and call `Core::lock_acquire` before taking it and
/// `Core::lock_release` after (feature `lockcheck`). Without that feature it is only a name.
///
/// ```
/// use ctxalloc_core::LockClass;
/// static CACHE: LockClass = LockClass::new("cache");
/// assert_eq!(CACHE.name(), "cache");
/// ```
pub struct LockClass {
    name: &'static str,
    /// The checker's record of this lock.
    #[cfg(feature = "lockcheck")]
    pub(crate) state: lockcheck::ClassState,
}

impl LockClass {
    /// A lock called `name` in reports.
    pub const fn new(name: &'static str) -> LockClass {
        LockClass {
            name,
            #[cfg(feature = "lockcheck")]
            state: lockcheck::ClassState::new(),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl core::fmt::Debug for LockClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "LockClass({})", self.name)
    }
}

/// Most frames a report shows for an allocation site.
#[cfg(feature = "hooks")]
pub(crate) const FRAMES: usize = 12;

/// The per-thread state of the hooks, in [`ThreadCtx`]. Touched only by its thread.
#[cfg_attr(not(feature = "hooks"), allow(dead_code))]
pub(crate) struct DebugCtx {
    /// A hook is running on this thread: allocations it makes take the plain path.
    busy: Cell<bool>,
    /// The thread's tag (0: none).
    #[cfg(feature = "tags")]
    pub(crate) tag: Cell<u16>,
    /// The thread's fault-injection state.
    #[cfg(feature = "fault-injection")]
    pub(crate) fault: fault::FaultState,
    /// The tracked locks the thread holds, and the shrinker it runs.
    #[cfg(feature = "lockcheck")]
    pub(crate) locks: lockcheck::Held,
}

impl DebugCtx {
    pub(crate) const fn new() -> DebugCtx {
        DebugCtx {
            busy: Cell::new(false),
            #[cfg(feature = "tags")]
            tag: Cell::new(0),
            #[cfg(feature = "fault-injection")]
            fault: fault::FaultState::new(),
            #[cfg(feature = "lockcheck")]
            locks: lockcheck::Held::new(),
        }
    }
}

/// The hooks' shared state, in `Core::debug`. All atomics (or locked), any thread.
#[cfg_attr(not(feature = "hooks"), allow(dead_code))]
pub(crate) struct DebugShared {
    /// Allocations made inside `FORBID` scopes.
    pub(crate) forbidden: AtomicUsize,
    /// Abort on a forbidden allocation instead of reporting it.
    pub(crate) forbid_strict: AtomicBool,
    /// Allocations failed by fault injection.
    pub(crate) injected: AtomicUsize,
    /// Reclaim-order violations reported.
    pub(crate) lock_reports: AtomicUsize,
    /// Live blocks and their tags.
    #[cfg(feature = "tags")]
    pub(crate) tags: tags::Tags,
}

impl DebugShared {
    pub(crate) const fn new() -> DebugShared {
        DebugShared {
            forbidden: AtomicUsize::new(0),
            forbid_strict: AtomicBool::new(false),
            injected: AtomicUsize::new(0),
            lock_reports: AtomicUsize::new(0),
            #[cfg(feature = "tags")]
            tags: tags::Tags::new(),
        }
    }
}

/// Sets `busy` for its lifetime.
#[cfg(feature = "hooks")]
struct Busy<'a>(&'a Cell<bool>);

#[cfg(feature = "hooks")]
impl<'a> Busy<'a> {
    fn enter(c: &'a Cell<bool>) -> Busy<'a> {
        c.set(true);
        Busy(c)
    }
}

#[cfg(feature = "hooks")]
impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<P: Platform> Core<P> {
    /// Whether a hook wants the calling thread's allocations. One byte load.
    #[cfg(feature = "hooks")]
    #[inline(always)]
    pub(crate) fn hooks_armed(&self) -> bool {
        self.thread().scope.armed() != 0
    }

    /// `plain()` — through the hooked path when a hook wants this thread. For the allocation
    /// entry points off the small-size fast path (which tests the byte on the context it holds).
    #[inline(always)]
    pub(crate) fn with_hooks(&self, size: usize, call: Gfp, plain: impl FnOnce() -> *mut u8) -> *mut u8 {
        #[cfg(feature = "hooks")]
        if self.hooks_armed() {
            return self.alloc_hooked(size, call, plain);
        }
        let _ = (size, call);
        plain()
    }

    /// The hooked allocation path (see the module documentation): `plain` makes the allocation.
    #[cfg(feature = "hooks")]
    #[cold]
    #[inline(never)]
    pub(crate) fn alloc_hooked(&self, size: usize, call: Gfp, plain: impl FnOnce() -> *mut u8) -> *mut u8 {
        let t = self.thread();
        let p = self.alloc_checked(t, size, call, plain);
        #[cfg(feature = "tags")]
        if t.scope.armed() & ARM_TAG != 0 && !t.debug.busy.get() && !p.is_null() {
            self.debug.tags.track(self, p.addr(), size, t.debug.tag.get());
        }
        p
    }

    /// The checks of the hooked path — forbid, lockcheck, fault injection — then `plain`. `t` is
    /// the calling thread's context.
    #[cfg(feature = "hooks")]
    fn alloc_checked(
        &self,
        t: &ThreadCtx,
        size: usize,
        call: Gfp,
        plain: impl FnOnce() -> *mut u8,
    ) -> *mut u8 {
        if t.debug.busy.get() {
            return plain();
        }
        let armed = t.scope.armed();
        {
            let _busy = Busy::enter(&t.debug.busy);
            let eff = self.effective_of(call, t);
            if armed & ARM_FORBID != 0 && eff.gfp().contains(Gfp::FORBID) {
                self.forbidden(size, eff);
            }
            #[cfg(feature = "lockcheck")]
            if armed & ARM_LOCKS != 0 {
                self.lockcheck_alloc(t, size, eff);
            }
            #[cfg(feature = "fault-injection")]
            if armed & ARM_FAULT != 0 && t.debug.fault.should_fail(size, eff) {
                return self.inject_failure(size, eff);
            }
            let _ = eff;
        }
        plain()
    }

    /// The hooked path of a resize: the checks of an allocation (a resize may need memory), then
    /// the resize itself with the hooks quiet — its inner allocation and free are this resize,
    /// not new events. The block keeps the tag that allocated it, at its new size (an untagged
    /// block resized under a tag joins that tag). `plain` resizes.
    #[cfg(feature = "hooks")]
    #[cold]
    #[inline(never)]
    pub(crate) fn realloc_hooked(
        &self,
        ptr: *mut u8,
        new_size: usize,
        call: Gfp,
        plain: impl FnOnce() -> *mut u8,
    ) -> *mut u8 {
        let t = self.thread();
        if t.debug.busy.get() {
            return plain();
        }
        #[cfg(feature = "tags")]
        let old = self.debug.tags.untrack(self, ptr.addr());
        let p = self.alloc_checked(t, new_size, call, || {
            let _busy = Busy::enter(&t.debug.busy);
            plain()
        });
        #[cfg(feature = "tags")]
        {
            let tags = &self.debug.tags;
            match old {
                // Failed: the old block is untouched and keeps its entry.
                Some((tag, size)) if p.is_null() => tags.insert(self, ptr.addr(), size, tag),
                Some((tag, _)) => tags.insert(self, p.addr(), new_size, tag),
                // An untagged block resized under a tag: a call of that tag.
                None if !p.is_null() && t.scope.armed() & ARM_TAG != 0 => {
                    tags.track(self, p.addr(), new_size, t.debug.tag.get())
                }
                None => {}
            }
        }
        #[cfg(not(feature = "tags"))]
        let _ = ptr;
        p
    }

    /// Whether any tagged block is live (then resizes and frees look the block up).
    #[cfg(feature = "hooks")]
    #[inline(always)]
    pub(crate) fn tags_live(&self) -> bool {
        #[cfg(feature = "tags")]
        return self.debug.tags.any_live();
        #[cfg(not(feature = "tags"))]
        false
    }

    /// A free, for the hooks: the block leaves its tag.
    #[inline(always)]
    pub(crate) fn free_hook(&self, ptr: *mut u8) {
        #[cfg(feature = "tags")]
        if self.debug.tags.any_live() {
            self.untag(ptr);
        }
        let _ = ptr;
    }

    /// The block leaves its tag (out of line: the free fast path keeps its registers).
    #[cfg(feature = "tags")]
    #[cold]
    #[inline(never)]
    pub(crate) fn untag(&self, ptr: *mut u8) {
        self.debug.tags.untrack(self, ptr.addr());
    }

    /// Reports (or, in strict mode, aborts on) an allocation inside a `FORBID` scope.
    #[cfg(feature = "hooks")]
    #[cold]
    fn forbidden(&self, size: usize, eff: Effective) {
        self.debug.forbidden.fetch_add(1, Ordering::Relaxed);
        let strict = self.debug.forbid_strict.load(Ordering::Relaxed);
        report(
            &self.platform,
            format_args!(
                "ctxalloc: allocation of {size} bytes inside forbid_alloc() (context {}){}",
                eff.gfp(),
                if strict { "; strict mode: aborting" } else { "" }
            ),
        );
        self.report_backtrace("  allocated at");
        if strict {
            self.platform.abort();
        }
    }

    /// Writes the calling thread's return addresses as one report line.
    #[cfg(feature = "hooks")]
    pub(crate) fn report_backtrace(&self, what: &str) {
        let mut frames = [0usize; FRAMES];
        let n = self.out("backtrace").backtrace(&mut frames);
        if n > 0 {
            self.report_frames(what, &frames[..n]);
        }
    }

    /// Writes `frames` as one report line, each as the platform describes it.
    #[cfg(feature = "hooks")]
    pub(crate) fn report_frames(&self, what: &str, frames: &[usize]) {
        let mut b = crate::report::ReportBuf::new();
        let _ = core::fmt::Write::write_str(&mut b, what);
        for &f in frames {
            let _ = core::fmt::Write::write_str(&mut b, " ");
            self.out("describe_addr").describe_addr(f, &mut b);
        }
        let _ = core::fmt::Write::write_str(&mut b, "\n");
        self.out("report").report(b.as_str());
    }

    /// Strict mode for `FORBID` scopes: abort on the first allocation inside one (`true`), or
    /// report each and go on (`false`, the default).
    pub fn set_forbid_strict(&self, strict: bool) {
        self.debug.forbid_strict.store(strict, Ordering::Relaxed);
    }
}
