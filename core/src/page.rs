//! The page-source layer: every byte the core gets from the platform passes through here and is
//! accounted at page granularity — what the page source handed out and the core has not given
//! back (unmapped or purged). `usage()` is that number; the memory limit (see the reclaim issue)
//! is checked against it in [`Accounting::charge`].

use crate::gfp::{Effective, Reserve};
use crate::stats::Bytes;
use crate::sync::{AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::ptr::NonNull;

/// No limit.
const UNLIMITED: usize = usize::MAX;

/// How long memory kept only for speed (dirty slices, cached large areas) may wait before
/// [`Core::purge_aged`] gives it back: long enough that a working set that shrinks and regrows
/// keeps its pages (no madvise/fault cycles), short enough that a program going idle after a
/// burst is back to its size within a second.
pub const PURGE_DELAY_NS: u64 = 200_000_000;

/// Longest [`LimitOrigin`] text kept (longer ones are cut on a character boundary).
pub const LIMIT_ORIGIN_MAX: usize = 192;

/// Where the memory limit came from, in the embedder's words ("90 % of memory.max 2048 MiB of
/// /sys/fs/cgroup/app"): shown with the limit by [`Stats`](crate::Stats). Empty for a limit set
/// by [`Core::set_limit`]. Lives in `Core::limit_origin`, under its lock.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// let core = ctxalloc_core::Core::new(ctxalloc_core::mock::MockPlatform::new(8 << 20));
/// core.set_limit_from(6 << 20, "75 % of the board's RAM").unwrap();
/// assert_eq!(core.stats().limit_origin.as_str(), "75 % of the board's RAM");
/// core.remove_limit();
/// assert_eq!(core.stats().limit_origin.as_str(), "");
/// # }
/// ```
pub type LimitOrigin = crate::report::InlineStr<LIMIT_ORIGIN_MAX>;

/// When memory kept for speed started waiting for [`Core::purge_aged`]: the platform clock at
/// arming, or 0 when nothing waits. Lives in the structure whose memory it times, under that
/// structure's lock.
pub(crate) struct PurgeClock(u64);

impl PurgeClock {
    pub(crate) const fn new() -> Self {
        PurgeClock(0)
    }

    /// Starts the wait unless one is running; true if it started it (the caller then wakes the
    /// background thread). `now` is read only then.
    pub(crate) fn arm(&mut self, now: impl FnOnce() -> u64) -> bool {
        if self.0 != 0 {
            return false;
        }
        self.0 = now().max(1);
        true
    }

    /// Whether something is waiting.
    pub(crate) fn armed(&self) -> bool {
        self.0 != 0
    }

    /// Whether something has waited [`PURGE_DELAY_NS`]; `now` is read only if something waits.
    pub(crate) fn due(&self, now: impl FnOnce() -> u64) -> bool {
        self.0 != 0 && now().saturating_sub(self.0) >= PURGE_DELAY_NS
    }

    /// Nothing waits any more (it was given back, or — after `fork` — the next free memory
    /// arms the clock again and so starts the child's background thread).
    pub(crate) fn disarm(&mut self) {
        self.0 = 0;
    }
}

/// The size of a huge page (x86-64, arm64 with 4 KiB pages).
const HUGE_PAGE: usize = 2 << 20;
/// Usage from which fresh memory is advised to be backed by huge pages.
pub(crate) const HUGE_FROM: usize = 32 << 20;

/// Bytes charged, the most ever charged, and the limit. Any thread, Relaxed: the numbers are a
/// budget and statistics, not a synchronisation point (a charge is one CAS against the ceiling
/// of its context, so `usage` never passes the limit).
pub(crate) struct Accounting {
    usage: AtomicUsize,
    peak: AtomicUsize,
    /// The hard limit, or `UNLIMITED`.
    limit: AtomicUsize,
    /// Charges that went below `limit − reserve`.
    pub(crate) reserve_uses: AtomicUsize,
}

/// The emergency reserve below a memory limit of `limit` bytes: 1/32 of it, at least 256 KiB,
/// at most 64 MiB (and at most half the limit). Plain allocations stop at `limit` minus this.
///
/// ```
/// assert_eq!(ctxalloc_core::emergency_reserve(64 << 20), 2 << 20);
/// assert_eq!(ctxalloc_core::emergency_reserve(1 << 20), 256 << 10);
/// ```
#[inline]
pub fn emergency_reserve(limit: usize) -> usize {
    (limit / 32).clamp(RESERVE_FLOOR, 64 << 20).min(limit / 2)
}

/// The emergency reserve's floor: 256 KiB (below a limit of 512 KiB, half the limit).
pub const RESERVE_FLOOR: usize = 256 << 10;

/// A limit refused by [`Core::set_limit`]: below [`Core::MIN_LIMIT`], where the emergency reserve
/// leaves too little for even the first allocation.
///
/// ```
/// # #[cfg(feature = "mock")] {
/// use ctxalloc_core::{mock::MockPlatform, Core};
/// let core = Core::new(MockPlatform::new(8 << 20));
/// let e = core.set_limit(100 << 10).unwrap_err();
/// assert_eq!(e.min, Core::<MockPlatform>::MIN_LIMIT);
/// assert!(e.to_string().starts_with("a limit of 100 KiB cannot work"), "{e}");
/// assert_eq!(core.limit(), None); // nothing changed
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitError {
    /// The limit asked for.
    pub limit: usize,
    /// The smallest limit that can work.
    pub min: usize,
}

impl core::fmt::Display for LimitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "a limit of {} cannot work: the smallest is {} (the emergency reserve of up to {} below \
             the limit, and a segment header and one slab page for the first allocation)",
            Bytes(self.limit as u64),
            Bytes(self.min as u64),
            Bytes(RESERVE_FLOOR as u64),
        )
    }
}

impl LimitError {
    /// `Ok` if `limit` is at least `min`, else the error that says so: the one check behind
    /// every way of setting a limit.
    pub const fn check(limit: usize, min: usize) -> Result<(), LimitError> {
        if limit < min {
            Err(LimitError { limit, min })
        } else {
            Ok(())
        }
    }
}

impl core::error::Error for LimitError {}

/// Usage against the limit, for failure reports: `usage 12 KiB of limit 400 KiB, 200 KiB of it
/// the emergency reserve` — the ceiling a plain allocation met is the difference.
pub(crate) struct UsageOf {
    pub(crate) usage: usize,
    pub(crate) limit: Option<usize>,
}

impl core::fmt::Display for UsageOf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.limit {
            None => write!(f, "usage {}, no limit", Bytes(self.usage as u64)),
            Some(l) => write!(
                f,
                "usage {} of limit {}, {} of it the emergency reserve",
                Bytes(self.usage as u64),
                Bytes(l as u64),
                Bytes(emergency_reserve(l) as u64)
            ),
        }
    }
}

impl Accounting {
    pub(crate) const fn new() -> Self {
        Accounting {
            usage: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            limit: AtomicUsize::new(UNLIMITED),
            reserve_uses: AtomicUsize::new(0),
        }
    }

    /// The highest usage a context may charge to: plain requests stop at `limit − reserve`;
    /// HIGH (atomic context) may use a quarter of the reserve, NOFAIL half, MEMALLOC all of it,
    /// NOMEMALLOC none (DESIGN.md).
    #[inline]
    fn ceiling(limit: usize, level: Reserve) -> usize {
        let r = emergency_reserve(limit);
        match level {
            Reserve::None => limit - r,
            Reserve::Quarter => limit - r + r / 4,
            Reserve::Half => limit - r / 2,
            Reserve::Full => limit,
        }
    }

    /// Charges `bytes` for an allocation in context `eff`; false if that would take usage past
    /// the context's ceiling.
    #[inline]
    pub(crate) fn charge(&self, bytes: usize, eff: Effective) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let now = if limit == UNLIMITED {
            self.usage.fetch_add(bytes, Ordering::Relaxed) + bytes
        } else {
            let ceiling = Self::ceiling(limit, eff.reserve());
            let mut cur = self.usage.load(Ordering::Relaxed);
            loop {
                let new = match cur.checked_add(bytes) {
                    Some(n) if n <= ceiling => n,
                    _ => return false,
                };
                match self.usage.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break new,
                    Err(c) => cur = c,
                }
            }
        };
        if limit != UNLIMITED && now > Self::ceiling(limit, Reserve::None) {
            self.reserve_uses.fetch_add(1, Ordering::Relaxed);
        }
        self.peak.fetch_max(now, Ordering::Relaxed);
        true
    }

    /// Gives `bytes` back.
    #[inline]
    pub(crate) fn uncharge(&self, bytes: usize) {
        let before = self.usage.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(before >= bytes, "uncharged more than charged");
    }

    /// Bytes charged now.
    #[inline]
    pub(crate) fn usage(&self) -> usize {
        self.usage.load(Ordering::Relaxed)
    }

    /// The most ever charged.
    #[inline]
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The limit, if any.
    #[inline]
    pub(crate) fn limit(&self) -> Option<usize> {
        let l = self.limit.load(Ordering::Relaxed);
        (l != UNLIMITED).then_some(l)
    }

    /// Sets or clears the limit.
    pub(crate) fn set_limit(&self, limit: Option<usize>) {
        self.limit.store(limit.unwrap_or(UNLIMITED), Ordering::Relaxed);
    }

    /// The gap between the watermarks: 1/16 of what plain requests may use, at least 1 MiB.
    #[inline]
    fn gap(plain: usize) -> usize {
        (plain / 16).max(1 << 20).min(plain / 4)
    }

    /// Whether usage passed the low watermark (`plain ceiling − gap`): background reclaim is due.
    #[inline]
    pub(crate) fn above_low_watermark(&self) -> bool {
        match self.limit() {
            None => false,
            Some(l) => {
                let plain = Self::ceiling(l, Reserve::None);
                self.usage() > plain - Self::gap(plain)
            }
        }
    }

    /// Whether usage is above the high watermark (`plain ceiling − 2 · gap`): background
    /// reclaim continues until it is not.
    #[inline]
    pub(crate) fn above_high_watermark(&self) -> bool {
        match self.limit() {
            None => false,
            Some(l) => {
                let plain = Self::ceiling(l, Reserve::None);
                self.usage() > plain - 2 * Self::gap(plain)
            }
        }
    }
}

impl<P: Platform> Core<P> {
    /// Maps from the page source, counting the call.
    ///
    /// # Safety
    /// As [`Platform::map`].
    pub(crate) unsafe fn os_map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        let p = unsafe { self.out("map").map(len, align) };
        if let Some(p) = p {
            self.counters.os_maps.fetch_add(1, Ordering::Relaxed);
            crate::track::unpoison(p.as_ptr(), len);
        }
        p
    }

    /// Advises huge pages for `[addr, addr + len)`, a fresh segment, once the heap has grown
    /// past [`HUGE_FROM`] and has no limit (see [`Platform::advise_huge`]): for a 4 MiB segment
    /// of a heap of 100 MB, 512 page faults become 2 (serde_json parsing 8 MiB: page faults
    /// 56 k → 11 k, time −35 %); below the threshold, a small program keeps its resident set to
    /// the 4 KiB pages it touches. Not for large areas: a program that touches a few bytes of
    /// a 20 MiB buffer would get whole huge pages faulted in and zeroed (the Rust suite's
    /// malloc-large, which touches two bytes a buffer: 15 → 104 ms, 9 → 253 MiB resident).
    pub(crate) fn advise_huge(&self, addr: usize, len: usize) {
        if !P::CAN_PURGE || self.acct.limit().is_some() || self.acct.usage() < HUGE_FROM || len < HUGE_PAGE {
            return;
        }
        // SAFETY: part of a fresh mapping of ours; the advice changes no content.
        unsafe {
            self.out("advise_huge")
                .advise_huge(NonNull::new_unchecked(self.platform.ptr_from_addr(addr)), len)
        };
    }

    /// Maps at a given address beside a mapping, counting the call (see [`Platform::map_at`]).
    ///
    /// # Safety
    /// As [`Platform::map_at`].
    pub(crate) unsafe fn os_map_at(&self, addr: usize, len: usize) -> bool {
        let p = self.platform.ptr_from_addr(addr);
        // SAFETY: forwarded; a mapping's neighbourhood is never null.
        let mapped = unsafe { self.out("map_at").map_at(NonNull::new_unchecked(p), len) };
        if mapped {
            self.counters.os_maps.fetch_add(1, Ordering::Relaxed);
            crate::track::unpoison(p, len);
        }
        mapped
    }

    /// Unmaps, counting the call.
    ///
    /// # Safety
    /// As [`Platform::unmap`].
    pub(crate) unsafe fn os_unmap(&self, ptr: NonNull<u8>, len: usize) {
        self.counters.os_unmaps.fetch_add(1, Ordering::Relaxed);
        crate::track::unpoison(ptr.as_ptr(), len);
        // SAFETY: forwarded.
        unsafe { self.out("unmap").unmap(ptr, len) }
    }
}
