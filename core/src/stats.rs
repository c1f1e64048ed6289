//! Statistics: counters bumped on slow paths only (the fast paths count nothing), and a
//! [`Stats`] snapshot whose `Display` is a readable table.

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
        }
    }
}

/// A snapshot of the allocator's state. Taking one locks each shared structure briefly and never
/// allocates.
///
/// ```
/// let s = ctxalloc_core::Stats::default();
/// assert!(s.to_string().contains("usage"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

/// `n` bytes as a short human-readable figure.
pub(crate) struct Bytes(pub(crate) u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n < 10 * 1024 {
            write!(f, "{n} B")
        } else if n < 10 * 1024 * 1024 {
            write!(f, "{} KiB", n / 1024)
        } else if n < 10 * 1024 * 1024 * 1024 {
            write!(f, "{} MiB", n >> 20)
        } else {
            write!(f, "{} GiB", n >> 30)
        }
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, &dyn fmt::Display); 14] = [
            ("usage", &Bytes(self.usage as u64)),
            ("peak usage", &Bytes(self.peak as u64)),
            ("segments", &self.segments),
            ("slab pages", &self.slab_pages),
            ("abandoned pages", &self.abandoned_pages),
            ("heaps", &self.heaps),
            ("vmap areas", &self.vmap_areas),
            ("vmap bytes", &Bytes(self.vmap_bytes as u64)),
            ("page-source maps", &self.os_maps),
            ("page-source unmaps", &self.os_unmaps),
            ("purged", &Bytes(self.purged_bytes)),
            ("failed allocations", &self.alloc_failures),
            ("bad frees", &self.bad_frees),
            ("scope mispairs", &self.scope_mispairs),
        ];
        writeln!(f, "ctxalloc statistics")?;
        for (name, value) in rows {
            writeln!(f, "  {name:<20} {value:>12}")?;
        }
        Ok(())
    }
}

impl<P: Platform> Core<P> {
    /// A snapshot of the allocator's state.
    pub fn stats(&self) -> Stats {
        let (vmap_areas, vmap_bytes) = self.vmap_totals();
        let c = &self.counters;
        Stats {
            usage: self.acct.usage(),
            peak: self.acct.peak(),
            segments: self.lock(&self.pages).segments,
            slab_pages: c.slab_pages.load(Ordering::Relaxed),
            abandoned_pages: self.lock(&self.abandoned).count,
            heaps: self.lock(&self.heaps).live,
            vmap_areas,
            vmap_bytes,
            os_maps: c.os_maps.load(Ordering::Relaxed) as u64,
            os_unmaps: c.os_unmaps.load(Ordering::Relaxed) as u64,
            purged_bytes: c.purged.load(Ordering::Relaxed) as u64,
            alloc_failures: c.alloc_failures.load(Ordering::Relaxed) as u64,
            bad_frees: c.bad_frees.load(Ordering::Relaxed) as u64,
            scope_mispairs: c.scope_mispairs.load(Ordering::Relaxed) as u64,
        }
    }
}
