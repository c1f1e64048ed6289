//! Statistics: counters bumped on slow paths only (the fast paths count nothing), and a
//! [`Stats`] snapshot whose `Display` is a readable table.

use crate::gfp::ReclaimClass;
use crate::page::LimitOrigin;
use crate::reclaim::{Cause, ShrinkerStats};
use crate::report::InlineStr;
use crate::sync::{AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::fmt;

/// Event counters. Any thread, Relaxed: they order nothing. Word-sized, so 32-bit targets
/// without 64-bit atomics have them too (they wrap there after 4 G events).
pub(crate) struct Counters {
    pub(crate) os_maps: AtomicUsize,
    pub(crate) os_unmaps: AtomicUsize,
    pub(crate) purged: AtomicUsize,
    pub(crate) slab_pages: AtomicUsize,
    pub(crate) alloc_failures: AtomicUsize,
    pub(crate) bad_frees: AtomicUsize,
    pub(crate) scope_mispairs: AtomicUsize,
    pub(crate) mempool_reserve_uses: AtomicUsize,
    pub(crate) mempool_waits: AtomicUsize,
    /// Small allocations served from a larger class's free block at the limit.
    pub(crate) larger_class_allocs: AtomicUsize,
    /// `purge_aged` calls that gave memory back, and the bytes they gave.
    pub(crate) aged_purges: AtomicUsize,
    pub(crate) aged_purged: AtomicUsize,
}

impl Counters {
    pub(crate) const fn new() -> Self {
        Counters {
            os_maps: AtomicUsize::new(0),
            os_unmaps: AtomicUsize::new(0),
            purged: AtomicUsize::new(0),
            slab_pages: AtomicUsize::new(0),
            alloc_failures: AtomicUsize::new(0),
            bad_frees: AtomicUsize::new(0),
            scope_mispairs: AtomicUsize::new(0),
            mempool_reserve_uses: AtomicUsize::new(0),
            mempool_waits: AtomicUsize::new(0),
            larger_class_allocs: AtomicUsize::new(0),
            aged_purges: AtomicUsize::new(0),
            aged_purged: AtomicUsize::new(0),
        }
    }
}

/// A snapshot of the allocator's state. Taking one locks each shared structure briefly and never
/// allocates.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// let core = ctxalloc_core::Core::new(ctxalloc_core::mock::MockPlatform::new(8 << 20));
/// assert!(core.stats().to_string().contains("usage"));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes obtained from the page source and not given back (what a limit is checked against).
    pub usage: usize,
    /// The highest `usage` so far.
    pub peak: usize,
    /// Segments mapped (4 MiB each).
    pub segments: usize,
    /// Slab pages in use by heaps or abandoned.
    pub slab_pages: usize,
    /// Slab pages whose thread exited and that still hold live blocks.
    pub abandoned_pages: usize,
    /// Heaps owned by threads.
    pub heaps: usize,
    /// Heaps whose thread exited, kept whole (their pages included) for the next thread.
    pub vacant_heaps: usize,
    /// Live vmap areas.
    pub vmap_areas: usize,
    /// Bytes mapped by live vmap areas.
    pub vmap_bytes: usize,
    /// Calls to the page source's `map`.
    pub os_maps: u64,
    /// Calls to the page source's `unmap`.
    pub os_unmaps: u64,
    /// Bytes given back by purging free slices.
    pub purged_bytes: u64,
    /// Allocations that returned null.
    pub alloc_failures: u64,
    /// Frees of pointers that were not live allocations (reported and ignored).
    pub bad_frees: u64,
    /// Scopes restored out of order (debug builds detect them).
    pub scope_mispairs: u64,
    /// The memory limit, if any.
    pub limit: Option<usize>,
    /// Where the limit came from (empty for one set by hand).
    pub limit_origin: LimitOrigin,
    /// Memory-pressure events reported from outside ([`Core::pressure_event`]).
    pub pressure_events: u64,
    /// Pressure passes run for them (the rest were rate-limited).
    pub pressure_passes: u64,
    /// Objects shrinkers freed in pressure passes.
    pub pressure_freed: u64,
    /// Bytes given back to the page source by pressure passes.
    pub pressure_given_bytes: u64,
    /// Charges that went into the emergency reserve.
    pub reserve_uses: u64,
    /// Direct-reclaim rounds run by allocating threads.
    pub reclaim_rounds: u64,
    /// Background-reclaim passes (shrinkers and caches above the watermark).
    pub background_passes: u64,
    /// Times memory that had waited [`PURGE_DELAY_NS`](crate::PURGE_DELAY_NS) unused was given
    /// back (by the background thread, as a program goes idle).
    pub aged_purges: u64,
    /// Bytes those purges gave back (usage before less usage after: what other threads charged
    /// meanwhile counts against it).
    pub aged_purged_bytes: u64,
    /// Times a NOFAIL allocation slept waiting for memory.
    pub nofail_waits: u64,
    /// Stall reports of NOFAIL allocations (one per 10 s stalled).
    pub nofail_stalls: u64,
    /// Mempool allocations served from a pool's reserve because the allocator failed.
    pub mempool_reserve_uses: u64,
    /// Times a mempool allocation slept waiting for an element to be freed.
    pub mempool_waits: u64,
    /// Small allocations that found no room in their class and no memory for a new page, and
    /// were served from a free block of a larger class instead of failing.
    pub larger_class_allocs: u64,
    /// Bytes of the exact-fit tier's spans ([`Core::set_exact_fit`]; counted in `slab_pages`
    /// too).
    pub exact_fit_bytes: usize,
    /// Bytes of those spans in blocks handed out, headers included.
    pub exact_fit_used: usize,
    /// Bytes of those spans in freed blocks kept for the next request of their size, headers
    /// included: in the depot and on the calling thread's (CPU's) quick lists. Another thread's
    /// lists — under 76 KiB each — count as in use.
    pub exact_fit_cached: usize,
    /// Allocations made inside `FORBID` scopes (feature `forbid-alloc`).
    pub forbidden_allocs: u64,
    /// Allocations failed by fault injection (feature `fault-injection`).
    pub injected_failures: u64,
    /// Locks the reclaim-order checker reported (feature `lockcheck`).
    pub lockcheck_reports: u64,
    /// Failed allocations by cause, indexed by [`Cause`] as `usize`.
    pub failures_by_cause: [u64; 5],
    /// Registered shrinkers (the first [`MAX_SHRINKER_ROWS`]).
    pub shrinkers: [ShrinkerRow; MAX_SHRINKER_ROWS],
    /// How many rows of `shrinkers` are filled.
    pub shrinker_rows: usize,
}

/// Shrinkers a [`Stats`] snapshot lists.
pub const MAX_SHRINKER_ROWS: usize = 16;

/// One shrinker in a [`Stats`] snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShrinkerRow {
    name: InlineStr<32>,
    /// Its class.
    pub class: ReclaimClass,
    /// Its counters.
    pub stats: ShrinkerStats,
}

impl Default for ShrinkerRow {
    fn default() -> Self {
        ShrinkerRow { name: InlineStr::EMPTY, class: ReclaimClass::Other, stats: ShrinkerStats::default() }
    }
}

impl ShrinkerRow {
    fn new(name: &str, class: ReclaimClass, stats: ShrinkerStats) -> ShrinkerRow {
        ShrinkerRow { name: InlineStr::new(name), class, stats }
    }

    /// The shrinker's name (cut to 32 bytes).
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl Stats {
    /// Failures of one cause.
    pub fn failures(&self, cause: Cause) -> u64 {
        self.failures_by_cause[cause as usize]
    }

    /// The shrinker rows that are filled.
    pub fn shrinkers(&self) -> &[ShrinkerRow] {
        &self.shrinkers[..self.shrinker_rows]
    }
}

/// `n` bytes as a short human-readable figure.
pub(crate) struct Bytes(pub(crate) u64);

/// A limit for display: a size or "none".
pub(crate) struct Limit(pub(crate) Option<usize>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => Bytes(l as u64).fmt(f),
            None => f.pad("none"),
        }
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padding applies to the whole figure.
        let mut buf = crate::report::ReportBuf::new();
        let n = self.0;
        let _ = if n < 10 * 1024 {
            fmt::Write::write_fmt(&mut buf, format_args!("{n} B"))
        } else if n < 10 * 1024 * 1024 {
            fmt::Write::write_fmt(&mut buf, format_args!("{} KiB", n / 1024))
        } else if n < 10 * 1024 * 1024 * 1024 {
            fmt::Write::write_fmt(&mut buf, format_args!("{} MiB", n >> 20))
        } else {
            fmt::Write::write_fmt(&mut buf, format_args!("{} GiB", n >> 30))
        };
        f.pad(buf.as_str())
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fail = |c: Cause| self.failures(c);
        let rows: [(&str, &dyn fmt::Display); 40] = [
            ("usage", &Bytes(self.usage as u64)),
            ("peak usage", &Bytes(self.peak as u64)),
            ("limit", &Limit(self.limit)),
            ("segments", &self.segments),
            ("slab pages", &self.slab_pages),
            ("abandoned pages", &self.abandoned_pages),
            ("heaps", &self.heaps),
            ("vacant heaps", &self.vacant_heaps),
            ("vmap areas", &self.vmap_areas),
            ("vmap bytes", &Bytes(self.vmap_bytes as u64)),
            ("page-source maps", &self.os_maps),
            ("page-source unmaps", &self.os_unmaps),
            ("purged", &Bytes(self.purged_bytes)),
            ("reserve uses", &self.reserve_uses),
            ("reclaim rounds", &self.reclaim_rounds),
            ("background reclaims", &self.background_passes),
            ("idle purges", &self.aged_purges),
            ("given back when idle", &Bytes(self.aged_purged_bytes)),
            ("pressure events", &self.pressure_events),
            ("pressure passes", &self.pressure_passes),
            ("given on pressure", &Bytes(self.pressure_given_bytes)),
            ("NOFAIL waits", &self.nofail_waits),
            ("NOFAIL stalls", &self.nofail_stalls),
            ("mempool reserve uses", &self.mempool_reserve_uses),
            ("mempool waits", &self.mempool_waits),
            ("served by a larger class", &self.larger_class_allocs),
            ("exact-fit spans", &Bytes(self.exact_fit_bytes as u64)),
            ("exact-fit in use", &Bytes(self.exact_fit_used as u64)),
            ("exact-fit cached", &Bytes(self.exact_fit_cached as u64)),
            ("failed allocations", &self.alloc_failures),
            ("  too large", &fail(Cause::TooLarge)),
            ("  no reclaim allowed", &fail(Cause::NoReclaim)),
            ("  NORETRY", &fail(Cause::NoRetry)),
            ("  reclaim exhausted", &fail(Cause::Exhausted)),
            ("  NOFAIL denied", &fail(Cause::NofailDenied)),
            ("bad frees", &self.bad_frees),
            ("scope mispairs", &self.scope_mispairs),
            ("forbidden allocations", &self.forbidden_allocs),
            ("injected failures", &self.injected_failures),
            ("lockcheck reports", &self.lockcheck_reports),
        ];
        writeln!(f, "ctxalloc statistics")?;
        for (name, value) in rows {
            writeln!(f, "  {name:<22} {value:>12}")?;
            if name == "limit" && !self.limit_origin.as_str().is_empty() {
                writeln!(f, "    = {}", self.limit_origin.as_str())?;
            }
        }
        if self.shrinker_rows > 0 {
            writeln!(
                f,
                "  {:<22} {:>5} {:>10} {:>12} {:>8} {:>10}",
                "shrinker", "class", "scans", "freed", "skipped", "deferred"
            )?;
            for r in self.shrinkers() {
                let class = match r.class {
                    ReclaimClass::Fs => "FS",
                    ReclaimClass::Io => "IO",
                    ReclaimClass::Other => "other",
                };
                let s = r.stats;
                writeln!(
                    f,
                    "  {:<22} {class:>5} {:>10} {:>12} {:>8} {:>10}",
                    r.name(),
                    s.calls,
                    s.freed,
                    s.skipped,
                    s.deferred
                )?;
            }
        }
        Ok(())
    }
}

impl<P: Platform> Core<P> {
    /// A snapshot of the allocator's state.
    pub fn stats(&self) -> Stats {
        let (vmap_areas, vmap_bytes) = self.vmap_totals();
        let c = &self.counters;
        let r = &self.reclaim;
        let mut shrinkers = [ShrinkerRow::default(); MAX_SHRINKER_ROWS];
        let mut shrinker_rows = 0;
        self.for_each_shrinker(|name, class, st| {
            if let Some(row) = shrinkers.get_mut(shrinker_rows) {
                *row = ShrinkerRow::new(name, class, st);
                shrinker_rows += 1;
            }
        });
        // One lock at a time: guards inside the struct expression would all live to its end,
        // holding `pages` while taking `heaps` (the reverse of the allocator's lock order).
        let segments = self.lock(&self.pages).segments;
        let abandoned_pages = self.lock(&self.abandoned).count;
        let (heaps, vacant_heaps) = {
            let pool = self.lock(&self.heaps);
            (pool.live, pool.vacant_count)
        };
        let limit_origin = *self.lock(&self.limit_origin);
        let exact_fit_cached = self.fit_cached();
        let (exact_fit_bytes, exact_fit_used) = {
            let fit = self.lock(&self.fit);
            // Blocks waiting in the depot or on quick lists are in use as far as the tier knows;
            // another thread's lists (under 76 KiB each) are counted as in use.
            (fit.span_bytes(), fit.used().saturating_sub(exact_fit_cached))
        };
        let pc = &r.pressure_counters;
        Stats {
            usage: self.acct.usage(),
            peak: self.acct.peak(),
            segments,
            slab_pages: c.slab_pages.load(Ordering::Relaxed),
            abandoned_pages,
            heaps,
            vacant_heaps,
            vmap_areas,
            vmap_bytes,
            os_maps: c.os_maps.load(Ordering::Relaxed) as u64,
            os_unmaps: c.os_unmaps.load(Ordering::Relaxed) as u64,
            purged_bytes: c.purged.load(Ordering::Relaxed) as u64,
            alloc_failures: c.alloc_failures.load(Ordering::Relaxed) as u64,
            bad_frees: c.bad_frees.load(Ordering::Relaxed) as u64,
            scope_mispairs: c.scope_mispairs.load(Ordering::Relaxed) as u64,
            limit: self.acct.limit(),
            limit_origin,
            pressure_events: pc.events.load(Ordering::Relaxed) as u64,
            pressure_passes: pc.passes.load(Ordering::Relaxed) as u64,
            pressure_freed: pc.freed.load(Ordering::Relaxed) as u64,
            pressure_given_bytes: pc.given.load(Ordering::Relaxed) as u64,
            reserve_uses: self.acct.reserve_uses.load(Ordering::Relaxed) as u64,
            reclaim_rounds: r.direct_rounds.load(Ordering::Relaxed) as u64,
            background_passes: r.background_passes.load(Ordering::Relaxed) as u64,
            aged_purges: c.aged_purges.load(Ordering::Relaxed) as u64,
            aged_purged_bytes: c.aged_purged.load(Ordering::Relaxed) as u64,
            nofail_waits: r.nofail_waits.load(Ordering::Relaxed) as u64,
            nofail_stalls: r.nofail_stalls.load(Ordering::Relaxed) as u64,
            mempool_reserve_uses: c.mempool_reserve_uses.load(Ordering::Relaxed) as u64,
            mempool_waits: c.mempool_waits.load(Ordering::Relaxed) as u64,
            larger_class_allocs: c.larger_class_allocs.load(Ordering::Relaxed) as u64,
            exact_fit_bytes,
            exact_fit_used,
            exact_fit_cached,
            forbidden_allocs: self.debug.forbidden.load(Ordering::Relaxed) as u64,
            injected_failures: self.debug.injected.load(Ordering::Relaxed) as u64,
            lockcheck_reports: self.debug.lock_reports.load(Ordering::Relaxed) as u64,
            failures_by_cause: core::array::from_fn(|i| r.failures[i].load(Ordering::Relaxed) as u64),
            shrinkers,
            shrinker_rows,
        }
    }
}
