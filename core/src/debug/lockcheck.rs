//! The reclaim-order checker (R7, lockdep's `fs_reclaim` annotation, done per lock):
//!
//! * **held across**: while a thread holds a tracked lock, every allocation whose effective
//!   context lets reclaim call shrinkers of class *c* records "*c*-reclaim may happen under
//!   this lock" — whether or not reclaim runs (memory may be plentiful);
//! * **taken by**: a tracked lock taken (or tried) by a shrinker of class *c* while it runs —
//!   or declared with [`Core::lock_taken_by`], the way kernel code primes lockdep with
//!   `fs_reclaim_acquire(); might_lock(); fs_reclaim_release()` at init — records "a *c*
//!   shrinker needs this lock".
//!
//! A lock with both for the same class is a deadlock waiting for memory pressure: the
//! allocation would reclaim, reclaim would call the shrinker, the shrinker would wait for the
//! lock its own caller holds. It is reported once per lock, naming the lock (and where it was
//! taken), the shrinker, and the allocation (size, context, return addresses). A scope that
//! forbids the class (NOFS for filesystem shrinkers, NOIO for I/O ones) makes the allocation
//! safe and records nothing.
//!
//! A try-lock counts too: it cannot deadlock, but a shrinker that must give up whenever the
//! lock's holder allocates never frees anything for that holder — the scope is still missing.

use super::{LockClass, FRAMES};
use crate::gfp::{Effective, ReclaimClass};
use crate::lock::Lock;
use crate::platform::ThreadCtx;
use crate::reclaim::shrinker::Shrinker;
use crate::reclaim::ShrinkerId;
use crate::report::report;
use crate::sync::{AtomicBool, AtomicU32, Ordering};
use crate::{Core, Platform};
use core::cell::Cell;
use core::panic::Location;
use core::ptr;

/// Tracked locks a thread can hold at once; deeper nesting is not checked.
const MAX_HELD: usize = 16;
/// Bytes of a shrinker's name kept for the report.
const NAME: usize = 48;
const CLASSES: [ReclaimClass; 3] = [ReclaimClass::Fs, ReclaimClass::Io, ReclaimClass::Other];

fn bit(c: ReclaimClass) -> u32 {
    match c {
        ReclaimClass::Fs => 1,
        ReclaimClass::Io => 2,
        ReclaimClass::Other => 4,
    }
}

fn class_name(c: ReclaimClass) -> &'static str {
    match c {
        ReclaimClass::Fs => "filesystem",
        ReclaimClass::Io => "I/O",
        ReclaimClass::Other => "unrestricted",
    }
}

/// The first allocation seen under a lock for one shrinker class.
#[derive(Clone, Copy)]
struct AllocSite {
    size: usize,
    ctx: crate::gfp::Gfp,
    lock_at: Option<&'static Location<'static>>,
    frames: [usize; FRAMES],
    nframes: usize,
}

/// The first shrinker seen taking a lock, for one class.
#[derive(Clone, Copy)]
struct ShrinkerSite {
    name: [u8; NAME],
    len: usize,
    declared: bool,
}

/// What a report needs, per shrinker class (indexed as `CLASSES`).
pub(crate) struct Record {
    alloc: [Option<AllocSite>; 3],
    shrinker: [Option<ShrinkerSite>; 3],
}

/// The checker's state of one lock. Any thread: the bit sets are atomics, the record is
/// written under its own spin lock (never held across anything but a copy).
pub(crate) struct ClassState {
    held_across: AtomicU32,
    taken_by: AtomicU32,
    reported: AtomicBool,
    record: Lock<Record>,
}

impl ClassState {
    pub(crate) const fn new() -> ClassState {
        ClassState {
            held_across: AtomicU32::new(0),
            taken_by: AtomicU32::new(0),
            reported: AtomicBool::new(false),
            record: Lock::new("lockcheck record", Record { alloc: [None; 3], shrinker: [None; 3] }),
        }
    }
}

/// Restores the thread's "running shrinker" mark on drop.
pub(crate) struct ShrinkerMark<'a> {
    cell: &'a Cell<(*const u8, usize, u32)>,
    old: (*const u8, usize, u32),
    /// The shrinker's name must outlive the mark.
    _name: core::marker::PhantomData<&'a str>,
}

impl Drop for ShrinkerMark<'_> {
    fn drop(&mut self) {
        self.cell.set(self.old);
    }
}

/// A thread's tracked locks and the shrinker it runs. Touched only by its thread.
pub(crate) struct Held {
    locks: [Cell<*const LockClass>; MAX_HELD],
    at: [Cell<Option<&'static Location<'static>>>; MAX_HELD],
    depth: Cell<usize>,
    /// The running shrinker's name (pointer, length) and class bit; 0 bit: none.
    shrinker: Cell<(*const u8, usize, u32)>,
}

impl Held {
    pub(crate) const fn new() -> Held {
        Held {
            locks: [const { Cell::new(ptr::null()) }; MAX_HELD],
            at: [const { Cell::new(None) }; MAX_HELD],
            depth: Cell::new(0),
            shrinker: Cell::new((ptr::null(), 0, 0)),
        }
    }
}

impl<P: Platform> Core<P> {
    /// Call before taking (or trying) the lock `class` belongs to: checks the lock against the
    /// shrinker this thread runs, if any, and counts it as held until
    /// [`lock_release`](Self::lock_release). Checking *before* blocking is what lets the
    /// report come out before a deadlock.
    ///
    /// ```
    /// # #[cfg(feature = "mock")] {
    /// use ctxalloc_core::{mock::MockPlatform, Core, LockClass};
    /// let core = Core::new(MockPlatform::new(64 << 20));
    /// static CACHE: LockClass = LockClass::new("cache");
    /// core.lock_acquire(&CACHE, core::panic::Location::caller());
    /// let v = Box::new([0u8; 64]); // no shrinker takes `cache`: nothing to report
    /// core.lock_release(&CACHE);
    /// assert_eq!(core.stats().lockcheck_reports, 0);
    /// # drop(v);
    /// # }
    /// ```
    pub fn lock_acquire(&self, class: &LockClass, at: &'static Location<'static>) {
        let t = self.thread();
        let h = &t.debug.locks;
        let (name, len, cbit) = h.shrinker.get();
        if cbit != 0 {
            // SAFETY: the name of the shrinker running on this thread, valid while it runs.
            let name = unsafe { core::slice::from_raw_parts(name, len) };
            self.lock_taken(class, cbit, name, false);
        }
        let d = h.depth.get();
        if let (Some(l), Some(a)) = (h.locks.get(d), h.at.get(d)) {
            l.set(class);
            a.set(Some(at));
        }
        h.depth.set(d + 1);
        t.scope.set_armed(super::ARM_LOCKS, true);
    }

    /// Call after releasing the lock (or after a try that failed).
    pub fn lock_release(&self, class: &LockClass) {
        let t = self.thread();
        let h = &t.debug.locks;
        let d = h.depth.get();
        if d == 0 {
            return;
        }
        // Guards may drop in any order: remove the innermost entry of this lock.
        let top = d.min(MAX_HELD);
        if let Some(i) = (0..top).rev().find(|&i| ptr::eq(h.locks[i].get(), class)) {
            for j in i..top - 1 {
                h.locks[j].set(h.locks[j + 1].get());
                h.at[j].set(h.at[j + 1].get());
            }
        }
        h.depth.set(d - 1);
        t.scope.set_armed(super::ARM_LOCKS, d > 1);
    }

    /// Declares that shrinker `id` takes the lock `class` belongs to, without running it — so
    /// that an allocation under the lock is reported while memory is still plentiful.
    pub fn lock_taken_by(&self, class: &LockClass, id: ShrinkerId) {
        self.reclaim.registry.for_each(
            |w| self.out("wake_all").wake_all(w),
            |slot, s| {
                if ptr::eq(slot, id.0.as_ptr()) {
                    self.lock_taken(class, bit(s.class()), s.name().as_bytes(), true);
                }
            },
        );
    }

    /// Marks the calling thread as running shrinker `s` until the mark drops: locks it takes
    /// meanwhile are "taken by" it.
    pub(crate) fn shrinker_mark<'a>(&'a self, s: &'a dyn Shrinker) -> ShrinkerMark<'a> {
        let h = &self.thread().debug.locks;
        let name = s.name();
        let old = h.shrinker.replace((name.as_ptr(), name.len(), bit(s.class())));
        ShrinkerMark { cell: &h.shrinker, old, _name: core::marker::PhantomData }
    }

    fn lock_taken(&self, class: &LockClass, cbit: u32, name: &[u8], declared: bool) {
        let st = &class.state;
        if st.taken_by.fetch_or(cbit, Ordering::AcqRel) & cbit == 0 {
            let i = cbit.trailing_zeros() as usize;
            let mut site = ShrinkerSite { name: [0; NAME], len: name.len().min(NAME), declared };
            site.name[..site.len].copy_from_slice(&name[..site.len]);
            let mut rec = self.lock(&st.record);
            rec.shrinker[i].get_or_insert(site);
        }
        self.lock_check(class);
    }

    /// The allocation hook: the calling thread holds tracked locks and allocates `size` bytes
    /// in `eff`.
    pub(super) fn lockcheck_alloc(&self, t: &ThreadCtx, size: usize, eff: Effective) {
        let mut cbits = 0;
        for c in CLASSES {
            if eff.may_call(c) {
                cbits |= bit(c);
            }
        }
        if cbits == 0 {
            return;
        }
        let h = &t.debug.locks;
        for i in 0..h.depth.get().min(MAX_HELD) {
            // SAFETY: a lock on the held stack is alive while held.
            let class = unsafe { &*h.locks[i].get() };
            let st = &class.state;
            let new = cbits & !st.held_across.fetch_or(cbits, Ordering::AcqRel);
            if new != 0 {
                let mut frames = [0; FRAMES];
                let nframes = self.out("backtrace").backtrace(&mut frames);
                let site = AllocSite { size, ctx: eff.gfp(), lock_at: h.at[i].get(), frames, nframes };
                let mut rec = self.lock(&st.record);
                for (k, c) in CLASSES.iter().enumerate() {
                    if new & bit(*c) != 0 {
                        rec.alloc[k].get_or_insert(site);
                    }
                }
            }
            self.lock_check(class);
        }
    }

    /// Reports the lock once if some class is both held across an allocation and needed by a
    /// shrinker.
    fn lock_check(&self, class: &LockClass) {
        let st = &class.state;
        let both = st.held_across.load(Ordering::Acquire) & st.taken_by.load(Ordering::Acquire);
        if both == 0 || st.reported.swap(true, Ordering::AcqRel) {
            return;
        }
        let k = both.trailing_zeros() as usize;
        let (alloc, shrinker) = {
            let rec = self.lock(&st.record);
            (rec.alloc[k], rec.shrinker[k])
        };
        let (Some(a), Some(s)) = (alloc, shrinker) else { return };
        self.debug.lock_reports.fetch_add(1, Ordering::Relaxed);
        let sname = core::str::from_utf8(&s.name[..s.len]).unwrap_or("?");
        let c = CLASSES[k];
        report(
            &self.platform,
            format_args!(
                "ctxalloc: lockcheck: lock `{}` is held across an allocation that may reclaim from \
                 {} shrinkers, and shrinker `{sname}` ({} class) {} `{}`: under memory pressure \
                 the allocation would call the shrinker while its own thread holds the lock",
                class.name,
                class_name(c),
                class_name(c),
                if s.declared { "is declared to take" } else { "takes" },
                class.name,
            ),
        );
        match a.lock_at {
            Some(at) => report(
                &self.platform,
                format_args!(
                    "  the allocation: {} bytes in context {}, under `{}` locked at {}:{}:{}",
                    a.size,
                    a.ctx,
                    class.name,
                    at.file(),
                    at.line(),
                    at.column()
                ),
            ),
            None => report(
                &self.platform,
                format_args!("  the allocation: {} bytes in context {}", a.size, a.ctx),
            ),
        }
        if a.nframes > 0 {
            self.report_frames("  allocated at", &a.frames[..a.nframes]);
        }
        report(
            &self.platform,
            format_args!(
                "  fix: allocate under `{}` inside a {} scope (or make it a ScopedMutex carrying it)",
                class.name,
                match c {
                    ReclaimClass::Fs => "NOFS",
                    ReclaimClass::Io => "NOIO",
                    ReclaimClass::Other => "NORECLAIM",
                }
            ),
        );
    }
}
