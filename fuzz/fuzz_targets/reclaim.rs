//! `reclaim`: random shrinker sets — classes, batch sizes, object sizes, counts that lie
//! (report nothing), scans that stop — under a random memory limit, with allocations made in
//! random contexts (NOFS, NOIO, NORECLAIM scopes; NORETRY, MAYFAIL per call) and background
//! passes in between. Checked on every shrinker call and after every step:
//!
//! * a shrinker is called (`count` or `scan`) on behalf of an allocation only if that
//!   allocation's effective context allows its class — never an FS shrinker under NOFS or NOIO,
//!   never an IO one under NOIO, none under NORECLAIM — with `sc.gfp` equal to that context and
//!   MEMALLOC set on the thread while it runs;
//! * a pass that skips a shrinker keeps its deferred work (up to twice its last count);
//! * a background pass hands the deferred work over and keeps the rest: afterwards the deferred
//!   count is what was deferred, capped at twice the count, minus what the shrinker was asked
//!   to scan — nothing lost, nothing invented;
//! * usage stays within the limit (plus the emergency reserve MEMALLOC may use) and equals what
//!   the structures hold.

#![no_main]

use core::alloc::Layout;
use core::cell::Cell;
use core::ptr::NonNull;
use ctxalloc_core::mock::MockPlatform;
use ctxalloc_core::{Core, Effective, Gfp, Platform, ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use ctxalloc_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;

const ARENA: usize = 24 << 20;

thread_local! {
    /// The effective context of the allocation being made now, or `None` for a background pass
    /// (whose context is clean).
    static SERVING: Cell<Option<Effective>> = const { Cell::new(None) };
}

/// A cache of blocks allocated from the core. Its behaviour comes from the input.
struct Cache {
    core: *const Core<MockPlatform>,
    class: ReclaimClass,
    batch: usize,
    object: Layout,
    /// Report 0 from `count` every `lie_every`-th call (0: never).
    lie_every: u8,
    /// Return `Stop` from `scan` every `stop_every`-th call (0: never).
    stop_every: u8,
    blocks: Mutex<Vec<usize>>,
    counts: Cell<u32>,
    scans: Cell<u32>,
    /// What `count` returned last, and `nr_to_scan` summed over the scans that freed.
    last_count: Cell<usize>,
    asked: Cell<usize>,
    stopped: Cell<bool>,
}

// SAFETY: the fuzz target is single-threaded; the core outlives every cache registered on it
// (they are unregistered before it is dropped).
unsafe impl Send for Cache {}
// SAFETY: as above.
unsafe impl Sync for Cache {}

impl Cache {
    fn core(&self) -> &Core<MockPlatform> {
        // SAFETY: see the Send impl.
        unsafe { &*self.core }
    }

    /// Checks the context of a call on behalf of `sc.gfp`.
    fn check_context(&self, sc: &ShrinkControl) {
        let here = self.core().current();
        assert!(here.contains(Gfp::MEMALLOC), "a shrinker ran without MEMALLOC: {here}");
        match SERVING.with(Cell::get) {
            Some(eff) => {
                assert_eq!(sc.gfp, eff.gfp(), "sc.gfp is not the allocation's context");
                assert!(
                    eff.may_call(self.class),
                    "{:?} shrinker called in context {}",
                    self.class,
                    eff.gfp()
                );
            }
            None => assert_eq!(sc.gfp, Gfp::KERNEL, "a background pass runs in a clean context"),
        }
    }

    fn fill(&self, n: usize) {
        for _ in 0..n {
            match self.core().alloc_with(self.object, Gfp::NORECLAIM | Gfp::NOWARN) {
                Ok(p) => self.blocks.lock().unwrap().push(p.as_ptr().addr()),
                Err(_) => return,
            }
        }
    }

    fn free(&self, n: usize) -> usize {
        let mut b = self.blocks.lock().unwrap();
        let n = n.min(b.len());
        for _ in 0..n {
            let a = b.pop().unwrap();
            // SAFETY: a live block of `object`, given up.
            unsafe { self.core().dealloc(self.core().platform().ptr_from_addr(a), self.object) };
        }
        n
    }
}

impl Shrinker for Cache {
    fn name(&self) -> &str {
        "fuzz-cache"
    }
    fn class(&self) -> ReclaimClass {
        self.class
    }
    fn count(&self, sc: &ShrinkControl) -> usize {
        self.check_context(sc);
        self.counts.set(self.counts.get() + 1);
        let n = if self.lie_every != 0 && self.counts.get() % u32::from(self.lie_every) == 0 {
            0
        } else {
            self.blocks.lock().unwrap().len()
        };
        self.last_count.set(n);
        n
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.check_context(sc);
        self.scans.set(self.scans.get() + 1);
        if self.stop_every != 0 && self.scans.get() % u32::from(self.stop_every) == 0 {
            self.stopped.set(true);
            return ScanResult::Stop;
        }
        self.asked.set(self.asked.get() + sc.nr_to_scan);
        ScanResult::Freed(self.free(sc.nr_to_scan))
    }
    fn batch(&self) -> usize {
        self.batch
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.free(usize::MAX);
    }
}

const CLASSES: [ReclaimClass; 3] = [ReclaimClass::Fs, ReclaimClass::Io, ReclaimClass::Other];
const SCOPES: [Gfp; 5] = [Gfp::KERNEL, Gfp::NOFS, Gfp::NOIO, Gfp::NORECLAIM, Gfp::KERNEL];
const CALLS: [Gfp; 4] = [Gfp::KERNEL, Gfp::NORETRY, Gfp::MAYFAIL, Gfp::KERNEL];

fuzz_target!(|data: &[u8]| {
    let core = Core::new(MockPlatform::new(ARENA));
    let mut input = Input(data);
    let n = 1 + usize::from(input.byte() % 4);
    let caches: Vec<Box<Cache>> = (0..n)
        .map(|_| {
            Box::new(Cache {
                core: &core,
                class: CLASSES[usize::from(input.byte()) % 3],
                batch: 1 + usize::from(input.byte() % 64),
                object: Layout::from_size_align(1024 << (input.byte() % 7), 8).unwrap(),
                lie_every: input.byte() % 5,
                stop_every: input.byte() % 7,
                blocks: Mutex::new(Vec::new()),
                counts: Cell::new(0),
                scans: Cell::new(0),
                last_count: Cell::new(0),
                asked: Cell::new(0),
                stopped: Cell::new(false),
            })
        })
        .collect();
    let ids: Vec<_> = caches
        .iter()
        // SAFETY: each cache is unregistered below before it (and the core) is dropped.
        .map(|c| unsafe { core.register_shrinker(NonNull::from(&**c as &dyn Shrinker)) }.expect("registry"))
        .collect();
    let limit = 4 << 20 | usize::from(input.byte()) << 16;
    core.set_limit(limit).expect("a workable limit");
    for c in &caches {
        c.fill(usize::from(input.byte()));
    }
    let mine = Layout::from_size_align(16 << 10, 8).unwrap();
    let mut live: Vec<usize> = Vec::new();
    let deferred = |core: &Core<MockPlatform>| -> Vec<usize> {
        core.stats().shrinkers().iter().map(|r| r.stats.deferred).collect()
    };
    while !input.is_empty() {
        match input.byte() % 6 {
            0..=2 => {
                // An allocation in a random context: it may reclaim.
                let scope = SCOPES[usize::from(input.byte()) % SCOPES.len()];
                let call = CALLS[usize::from(input.byte()) % CALLS.len()] | Gfp::NOWARN;
                let layout = Layout::from_size_align(1024 << (input.byte() % 7), 8).unwrap();
                let before = deferred(&core);
                let counts: Vec<usize> = caches.iter().map(|c| c.last_count.get()).collect();
                let cookie = core.scope_save(scope, core::panic::Location::caller());
                let eff = core.effective(call);
                SERVING.with(|s| s.set(Some(eff)));
                let r = core.alloc_with(layout, call);
                SERVING.with(|s| s.set(None));
                core.scope_restore(cookie);
                if let Ok(p) = r {
                    // SAFETY: a live block of `layout`; kept by address with its layout's size
                    // class chosen so the free below uses the same layout.
                    unsafe { core.dealloc(p.as_ptr(), layout) };
                    if let Ok(q) = core.alloc_with(mine, Gfp::NORECLAIM | Gfp::NOWARN) {
                        live.push(q.as_ptr().addr());
                    }
                }
                // A shrinker the context forbids kept its deferred work (capped at twice its
                // last count, which it could not have updated: it was not called).
                let after = deferred(&core);
                for (i, c) in caches.iter().enumerate() {
                    if !eff.may_call(c.class) {
                        assert!(
                            after[i] >= before[i].min(counts[i].saturating_mul(2)),
                            "deferred work lost on a skip"
                        );
                    }
                }
            }
            3 => {
                // A background pass, without a limit: only the deferred work is done.
                let before = deferred(&core);
                for c in &caches {
                    c.asked.set(0);
                    c.stopped.set(false);
                    c.last_count.set(usize::MAX);
                }
                let saved = core.limit();
                core.remove_limit();
                core.background_reclaim();
                if let Some(l) = saved {
                    core.set_limit(l).expect("the limit it had");
                }
                let after = deferred(&core);
                for (i, c) in caches.iter().enumerate() {
                    let f = c.last_count.get();
                    if f == usize::MAX || f == 0 {
                        // Not asked (nothing deferred) or nothing to free: the work stays.
                        assert_eq!(after[i], before[i], "deferred work changed without a scan");
                    } else {
                        let cap = 2 * f;
                        assert!(c.asked.get() <= before[i].min(cap), "asked for more than was deferred");
                        assert_eq!(
                            after[i],
                            (before[i] - c.asked.get()).min(cap),
                            "deferred work not conserved"
                        );
                    }
                }
            }
            4 => {
                if let Some(a) = live.pop() {
                    // SAFETY: a live block of `mine`.
                    unsafe { core.dealloc(core.platform().ptr_from_addr(a), mine) };
                }
            }
            _ => {
                let c = &caches[usize::from(input.byte()) % caches.len()];
                c.fill(usize::from(input.byte() % 16));
            }
        }
        let usage = core.usage();
        assert!(
            usage <= limit + ctxalloc_core::emergency_reserve(limit),
            "usage {usage} over the limit {limit}"
        );
        assert_eq!(core.audit_usage(), usage);
    }
    for a in live {
        // SAFETY: live blocks of `mine`.
        unsafe { core.dealloc(core.platform().ptr_from_addr(a), mine) };
    }
    for id in ids {
        // SAFETY: ids of this core, each unregistered once.
        unsafe { core.unregister_shrinker(id) };
    }
    drop(caches);
});
