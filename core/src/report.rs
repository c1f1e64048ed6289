//! Reports written without allocating: formatted into a buffer on the stack, handed to
//! [`crate::Platform::report`] as one string, rate-limited per kind.

use crate::sync::{AtomicUsize, Ordering};
use crate::Platform;
use core::fmt::{self, Write};

/// A fixed-size line buffer; text beyond its capacity is cut and marked with `…`.
pub struct ReportBuf {
    buf: [u8; 512],
    len: usize,
    cut: bool,
}

impl Default for ReportBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl ReportBuf {
    /// An empty buffer.
    pub const fn new() -> Self {
        ReportBuf { buf: [0; 512], len: 0, cut: false }
    }

    /// The text so far (always valid UTF-8: cuts fall on character boundaries).
    pub fn as_str(&self) -> &str {
        // SAFETY: `write_str` only ever copies whole UTF-8 characters.
        unsafe { core::str::from_utf8_unchecked(&self.buf[..self.len]) }
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// A string of at most `N` bytes kept inline (no allocation; `Copy`): a name or a line that a
/// snapshot carries. Longer text is cut on a character boundary.
///
/// ```
/// use ctxalloc_core::report::InlineStr;
/// assert_eq!(InlineStr::<4>::new("größer").as_str(), "grö");
/// assert_eq!(InlineStr::<3>::new("größer").as_str(), "gr"); // the `ö` (2 bytes) does not fit whole
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InlineStr<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> InlineStr<N> {
    /// The empty string.
    pub const EMPTY: InlineStr<N> = InlineStr { bytes: [0; N], len: 0 };

    /// `s`, cut to `N` bytes on a character boundary.
    pub fn new(s: &str) -> InlineStr<N> {
        let s = cut(s, N);
        let mut t = InlineStr::EMPTY;
        t.bytes[..s.len()].copy_from_slice(s.as_bytes());
        t.len = s.len();
        t
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> Default for InlineStr<N> {
    fn default() -> Self {
        InlineStr::EMPTY
    }
}

impl<const N: usize> fmt::Debug for InlineStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Write for ReportBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        const ROOM_FOR_MARK: usize = 5; // "…\n" is 4 bytes, plus one spare
        let room = (self.buf.len() - ROOM_FOR_MARK).saturating_sub(self.len);
        let n = cut(s, room).len();
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() && !self.cut {
            self.cut = true;
            let mark = "…".as_bytes();
            self.buf[self.len..self.len + mark.len()].copy_from_slice(mark);
            self.len += mark.len();
        }
        Ok(())
    }
}

/// Formats `args` as one line and writes it through the platform. A call out of the allocator:
/// never under one of its locks (debug builds check).
pub fn report<P: Platform>(platform: &P, args: fmt::Arguments<'_>) {
    crate::lock::check_call_out(platform, "report");
    report_fatal(platform, args);
}

/// [`report`] for a report the process does not survive (it aborts right after): written also
/// under an allocator lock — the process ends either way, and [`Platform::report`] never
/// allocates.
pub(crate) fn report_fatal<P: Platform>(platform: &P, args: fmt::Arguments<'_>) {
    let mut b = ReportBuf::new();
    let _ = b.write_fmt(args);
    if !b.as_str().ends_with('\n') {
        let _ = b.write_str("\n");
        if !b.as_str().ends_with('\n') {
            // Cut: force the newline over the last byte of the mark's spare room.
            b.buf[b.len] = b'\n';
            b.len += 1;
        }
    }
    platform.report(b.as_str());
}

/// Lets one report through per interval (R5.12: failure reports at most once per 10 s).
///
/// Times are kept in units of 2^20 ns (about a millisecond) in a word, so 32-bit targets
/// without 64-bit atomics have it too; differences are taken with wrapping arithmetic.
pub struct RateLimit {
    /// Time of the last report that got through, in 2^20 ns units; `usize::MAX` before the
    /// first. Any thread.
    last: AtomicUsize,
    /// Reports suppressed since then. Any thread.
    suppressed: AtomicUsize,
}

/// Nanoseconds → the limiter's time unit.
#[inline]
fn units(ns: u64) -> usize {
    (ns >> 20) as usize
}

impl Default for RateLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimit {
    /// A limiter that lets the first report through.
    pub const fn new() -> Self {
        RateLimit { last: AtomicUsize::new(usize::MAX), suppressed: AtomicUsize::new(0) }
    }

    /// Whether a report at `now_ns` may go out; if so, also how many were suppressed before it.
    pub fn allow(&self, now_ns: u64, interval_ns: u64) -> Option<usize> {
        let now = units(now_ns) & (usize::MAX >> 1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == usize::MAX || (now.wrapping_sub(last) & (usize::MAX >> 1)) >= units(interval_ns);
        if due && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reports_are_cut_on_a_char_boundary() {
        let mut b = ReportBuf::new();
        for _ in 0..200 {
            let _ = b.write_str("é-");
        }
        assert!(b.as_str().len() <= 512);
        assert!(b.as_str().ends_with('…'));
    }

    #[test]
    fn rate_limit_lets_one_through_per_interval() {
        const MS: u64 = 1 << 20;
        let r = RateLimit::new();
        assert_eq!(r.allow(5 * MS, 10 * MS), Some(0));
        assert_eq!(r.allow(6 * MS, 10 * MS), None);
        assert_eq!(r.allow(14 * MS, 10 * MS), None);
        assert_eq!(r.allow(15 * MS, 10 * MS), Some(2));
    }
}
