//! Scopes: save and restore bits of a thread's context word, with the kernel's semantics
//! (R1.4: a save returns only the bits it newly set, a restore clears exactly those) and what the
//! kernel lacks (R1.6): in debug builds every open scope is remembered with the place that opened
//! it, so a restore out of order is reported naming both scopes.
//!
//! Lock-tied scopes ([`hold`](ScopeState::hold) / [`release`](ScopeState::release)) are counted
//! per bit instead: a lock guard may be dropped in any order (hand-over-hand locking), so it
//! cannot be a LIFO cookie. The word the allocator sees is the union of both.
//!
//! A [`ScopeState`] belongs to one thread (or one task); it is reached through
//! [`Platform::thread`](crate::Platform::thread) and never shared.

use crate::gfp::Gfp;
use core::cell::Cell;
use core::fmt;
use core::marker::PhantomData;
use core::panic::Location;

/// Scope bits that [`ScopeState::hold`] counts (`Gfp::SCOPE_MASK` is bits 0‥5).
const HOLD_BITS: usize = 6;

/// How many nested scopes debug builds remember by name; deeper ones are still counted.
#[cfg(debug_assertions)]
const TRACKED: usize = 16;

/// One open scope, as debug builds remember it.
#[cfg(debug_assertions)]
#[derive(Clone, Copy)]
struct Frame {
    /// The flags the scope asked for (not only the bits it newly set).
    flags: Gfp,
    /// Where it was opened.
    at: Option<&'static Location<'static>>,
    /// Cleared when restored out of order; the frame is popped once everything above it is.
    open: bool,
}

#[cfg(debug_assertions)]
impl Frame {
    const NONE: Frame = Frame { flags: Gfp::KERNEL, at: None, open: false };
}

/// The context word of one thread, and (in debug builds) the stack of scopes open on it.
///
/// Touched only by the thread it belongs to: plain `Cell`s, no atomics.
pub struct ScopeState {
    /// The cookie scopes' word: the union of the bits of every open `save` scope.
    word: Cell<u32>,
    /// Lock-tied scopes: for each scope bit (0‥5), how many holds are open.
    holds: [Cell<u16>; HOLD_BITS],
    /// The bits whose count in `holds` is non-zero.
    held: Cell<u32>,
    /// Which debugging hooks want to see this thread's allocations (`debug::ARM_*` bits; the
    /// `FORBID` bit follows the word). Read first by every allocation when a hook feature is
    /// built in; zero means the plain path.
    #[cfg(feature = "hooks")]
    armed: Cell<u8>,
    /// Number of open scopes (debug builds).
    #[cfg(debug_assertions)]
    depth: Cell<u32>,
    /// The innermost `TRACKED` open scopes, indexed by depth (debug builds).
    #[cfg(debug_assertions)]
    frames: [Cell<Frame>; TRACKED],
}

/// What [`ScopeState::restore`] found when a cookie was not the innermost open scope.
#[derive(Clone, Copy, Debug)]
pub struct Mispair {
    /// The scope being restored.
    pub restored: ScopeInfo,
    /// The innermost scope still open inside it.
    pub open: ScopeInfo,
}

/// A scope as a mispair report names it.
#[derive(Clone, Copy, Debug)]
pub struct ScopeInfo {
    /// The flags the scope asked for.
    pub flags: Gfp,
    /// Where it was opened, if remembered.
    pub at: Option<&'static Location<'static>>,
}

impl fmt::Display for ScopeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} scope", self.flags)?;
        match self.at {
            Some(at) => write!(f, " saved at {}:{}:{}", at.file(), at.line(), at.column()),
            None => f.write_str(" (place not recorded)"),
        }
    }
}

impl fmt::Display for Mispair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ctxalloc: scope restored out of order: restoring {} while {} is still open inside \
             it; restore scopes in the reverse order of saving",
            self.restored, self.open
        )
    }
}

/// The token a scope save returns: the bits that save newly set, to be handed back to the
/// matching restore. It is `#[must_use]` and not `Send`: a scope belongs to the thread that
/// opened it.
///
/// ```
/// use ctxalloc_core::{Gfp, ScopeState};
/// let s = ScopeState::new();
/// let outer = s.save(Gfp::NOFS, core::panic::Location::caller());
/// let inner = s.save(Gfp::NOFS, core::panic::Location::caller());
/// assert!(inner.bits().is_empty()); // already set: the inner restore changes nothing
/// s.restore(inner, |_| unreachable!());
/// assert_eq!(s.current(), Gfp::NOFS);
/// s.restore(outer, |_| unreachable!());
/// assert_eq!(s.current(), Gfp::KERNEL);
/// ```
#[must_use = "the scope stays in force until this cookie is restored"]
pub struct Cookie {
    bits: Gfp,
    #[cfg(debug_assertions)]
    depth: u32,
    _not_send: PhantomData<*const ()>,
}

impl Cookie {
    /// The bits this scope newly set (empty if they were all set already).
    #[inline]
    pub fn bits(&self) -> Gfp {
        self.bits
    }

    /// The cookie as one integer, for callers that cannot hold a Rust value (C's
    /// `ctxalloc_nofs_save()`): the bits in the low 32 bits, the scope's depth (debug builds,
    /// for mispair reports) in the high 32.
    ///
    /// ```
    /// use ctxalloc_core::{Cookie, Gfp, ScopeState};
    /// let s = ScopeState::new();
    /// let raw = s.save(Gfp::NOIO, core::panic::Location::caller()).into_raw();
    /// s.restore(Cookie::from_raw(raw), |_| unreachable!());
    /// assert_eq!(s.current(), Gfp::KERNEL);
    /// ```
    #[inline]
    pub fn into_raw(self) -> u64 {
        #[cfg(debug_assertions)]
        let depth = u64::from(self.depth) << 32;
        #[cfg(not(debug_assertions))]
        let depth = 0;
        u64::from(self.bits.bits()) | depth
    }

    /// A cookie from [`into_raw`](Self::into_raw). A forged value cannot break memory safety:
    /// at worst it clears scope bits early (as a wrong restore does in the kernel), which debug
    /// builds report as a mispair.
    #[inline]
    pub fn from_raw(raw: u64) -> Cookie {
        Cookie {
            bits: Gfp::from_bits_truncate(raw as u32) & Gfp::SCOPE_MASK,
            #[cfg(debug_assertions)]
            depth: (raw >> 32) as u32,
            _not_send: PhantomData,
        }
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cookie({})", self.bits)
    }
}

impl Default for ScopeState {
    fn default() -> Self {
        Self::new()
    }
}

impl ScopeState {
    /// An empty context word with no scope open.
    pub const fn new() -> ScopeState {
        ScopeState {
            word: Cell::new(0),
            holds: [const { Cell::new(0) }; HOLD_BITS],
            held: Cell::new(0),
            #[cfg(feature = "hooks")]
            armed: Cell::new(0),
            #[cfg(debug_assertions)]
            depth: Cell::new(0),
            #[cfg(debug_assertions)]
            frames: [const { Cell::new(Frame::NONE) }; TRACKED],
        }
    }

    /// The context word: the bits of every open scope, cookie or lock-tied.
    #[inline]
    pub fn current(&self) -> Gfp {
        Gfp::from_bits_truncate(self.word.get() | self.held.get())
    }

    /// Opens a lock-tied scope: counts one hold of each bit of `flags` (bits a scope cannot set
    /// are ignored). Holds are released by [`release`](Self::release) in any order; a bit stays
    /// set while any hold (or cookie scope) has it. A count saturates at 65 535 nested holds of
    /// one bit, which then stays set for the thread's life.
    ///
    /// ```
    /// use ctxalloc_core::{Gfp, ScopeState};
    /// let s = ScopeState::new();
    /// s.hold(Gfp::NOIO);
    /// s.hold(Gfp::NOFS);
    /// s.release(Gfp::NOIO); // released before the inner hold: fine for a lock
    /// assert_eq!(s.current(), Gfp::NOFS);
    /// s.release(Gfp::NOFS);
    /// assert_eq!(s.current(), Gfp::KERNEL);
    /// ```
    #[inline]
    pub fn hold(&self, flags: Gfp) {
        let bits = (flags & Gfp::SCOPE_MASK).bits();
        for (i, count) in self.holds.iter().enumerate() {
            if bits & (1 << i) != 0 {
                count.set(count.get().saturating_add(1));
            }
        }
        self.held.set(self.held.get() | bits);
        self.sync_armed(bits);
    }

    /// Closes a lock-tied scope opened by [`hold`](Self::hold) with the same `flags`.
    #[inline]
    pub fn release(&self, flags: Gfp) {
        let bits = (flags & Gfp::SCOPE_MASK).bits();
        for (i, count) in self.holds.iter().enumerate() {
            if bits & (1 << i) != 0 {
                let n = count.get();
                debug_assert!(n > 0, "release without a hold of {}", Gfp::from_bits_truncate(1 << i));
                // A saturated count is never decremented: its bit stays held.
                if n != u16::MAX {
                    count.set(n.saturating_sub(1));
                    if n <= 1 {
                        self.held.set(self.held.get() & !(1 << i));
                    }
                }
            }
        }
        self.sync_armed(bits);
    }

    /// Opens a scope: sets `flags` (bits a scope cannot set are ignored) and returns the bits that
    /// were not already set (R1.4).
    #[inline]
    pub fn save(&self, flags: Gfp, at: &'static Location<'static>) -> Cookie {
        let flags = flags & Gfp::SCOPE_MASK;
        let old = self.word.get();
        self.word.set(old | flags.bits());
        self.sync_armed(flags.bits());
        #[cfg(not(debug_assertions))]
        let _ = at;
        #[cfg(debug_assertions)]
        let depth = {
            let d = self.depth.get();
            if let Some(frame) = self.frames.get(d as usize) {
                frame.set(Frame { flags, at: Some(at), open: true });
            }
            self.depth.set(d + 1);
            d
        };
        Cookie {
            bits: Gfp::from_bits_truncate(flags.bits() & !old),
            #[cfg(debug_assertions)]
            depth,
            _not_send: PhantomData,
        }
    }

    /// Closes a scope: clears exactly the cookie's bits. In debug builds, if the cookie's scope is
    /// not the innermost open one, `on_mispair` is called with both scopes first.
    #[inline]
    pub fn restore(&self, cookie: Cookie, on_mispair: impl FnOnce(Mispair)) {
        #[cfg(debug_assertions)]
        self.pop(cookie.depth, on_mispair);
        #[cfg(not(debug_assertions))]
        let _ = on_mispair;
        self.word.set(self.word.get() & !cookie.bits.bits());
        self.sync_armed(cookie.bits.bits());
    }

    /// Enters `flags` for a stretch that ends with [`exit`](Self::exit) of the returned word —
    /// one poll of a scoped future: the word goes back *exactly* (cookie scopes opened inside
    /// must be closed inside; one left open is dropped). Cheaper than a cookie: no depth, and
    /// the exit stores without reading.
    ///
    /// ```
    /// let s = ctxalloc_core::ScopeState::new();
    /// let prev = s.enter(ctxalloc_core::Gfp::NOFS);
    /// assert_eq!(s.current(), ctxalloc_core::Gfp::NOFS);
    /// s.exit(prev);
    /// assert!(s.current().is_empty());
    /// ```
    #[inline(always)]
    pub fn enter(&self, flags: Gfp) -> Gfp {
        let flags = flags & Gfp::SCOPE_MASK;
        let old = self.word.get();
        self.word.set(old | flags.bits());
        self.sync_armed(flags.bits());
        Gfp::from_bits_truncate(old)
    }

    /// Ends what [`enter`](Self::enter) began: the word is `prev` again.
    #[inline(always)]
    pub fn exit(&self, prev: Gfp) {
        let old = self.word.replace(prev.bits());
        self.sync_armed(old ^ prev.bits());
    }

    /// Replaces the cookie scopes' word: for the reclaim path, which runs shrinkers with a context
    /// of its own and puts the caller's back afterwards. Returns the previous word. Lock-tied
    /// holds stay in force: a thread holding a `NOFS` lock never reclaims from filesystem
    /// shrinkers, whatever it replaces.
    #[inline]
    pub fn replace(&self, word: Gfp) -> Gfp {
        let old = Gfp::from_bits_truncate(self.word.replace(word.bits()));
        self.sync_armed(old.bits() | word.bits());
        old
    }

    /// Moves every open scope — the cookie scopes' word, the lock-tied holds and (debug builds)
    /// the open scopes' records — into `to`, leaving this state empty; what `to` held before is
    /// overwritten. A kernel whose context words live per CPU moves the running task's scopes
    /// out of the CPU's state into the task at a context switch, and the next task's in.
    ///
    /// ```
    /// use ctxalloc_core::{Gfp, ScopeState};
    /// let (cpu, task) = (ScopeState::new(), ScopeState::new());
    /// let c = cpu.save(Gfp::NOFS, core::panic::Location::caller());
    /// cpu.hold(Gfp::NOIO);
    /// cpu.move_to(&task); // switched out
    /// assert_eq!(cpu.current(), Gfp::KERNEL);
    /// assert_eq!(task.current(), Gfp::NOFS | Gfp::NOIO);
    /// task.move_to(&cpu); // switched in again, perhaps on another CPU
    /// cpu.release(Gfp::NOIO);
    /// cpu.restore(c, |_| unreachable!("the scope's record moved with it"));
    /// assert_eq!(cpu.current(), Gfp::KERNEL);
    /// ```
    pub fn move_to(&self, to: &ScopeState) {
        let changed = self.current().bits() | to.current().bits();
        to.word.set(self.word.replace(0));
        for (from, into) in self.holds.iter().zip(&to.holds) {
            into.set(from.replace(0));
        }
        to.held.set(self.held.replace(0));
        #[cfg(debug_assertions)]
        {
            to.depth.set(self.depth.replace(0));
            for (from, into) in self.frames.iter().zip(&to.frames) {
                into.set(from.replace(Frame::NONE));
            }
        }
        self.sync_armed(changed);
        to.sync_armed(changed);
    }

    /// The debugging hooks armed on this thread (`debug::ARM_*`).
    #[cfg(feature = "hooks")]
    #[inline(always)]
    pub(crate) fn armed(&self) -> u8 {
        self.armed.get()
    }

    /// Arms (`on`) or disarms one hook bit.
    #[cfg(feature = "hooks")]
    #[inline]
    pub(crate) fn set_armed(&self, bit: u8, on: bool) {
        let a = self.armed.get() & !bit;
        self.armed.set(if on { a | bit } else { a });
    }

    /// Keeps the `FORBID` hook bit equal to the word's `FORBID` bit, after a change of
    /// `changed` bits (a constant for most scopes: the test folds away unless it is `FORBID`).
    #[inline(always)]
    fn sync_armed(&self, changed: u32) {
        #[cfg(feature = "forbid-alloc")]
        if changed & Gfp::FORBID.bits() != 0 {
            self.set_armed(crate::debug::ARM_FORBID, self.current().contains(Gfp::FORBID));
        }
        let _ = changed;
    }

    #[cfg(debug_assertions)]
    fn info(&self, depth: u32) -> ScopeInfo {
        match self.frames.get(depth as usize) {
            Some(f) => {
                let f = f.get();
                ScopeInfo { flags: f.flags, at: f.at }
            }
            None => ScopeInfo { flags: Gfp::KERNEL, at: None },
        }
    }

    /// Closes the frame at `depth`. Invariant kept: the top frame (`depth − 1`) is always open,
    /// so when the restored scope is not the top, the top is the innermost scope still open.
    #[cfg(debug_assertions)]
    fn pop(&self, depth: u32, on_mispair: impl FnOnce(Mispair)) {
        let top = self.depth.get();
        if depth >= top {
            // Only reachable by forging cookies (they are neither `Clone` nor `Send`).
            return;
        }
        let mut new_top = top;
        if depth + 1 == top {
            new_top = depth;
        } else {
            on_mispair(Mispair { restored: self.info(depth), open: self.info(top - 1) });
            if let Some(f) = self.frames.get(depth as usize) {
                f.set(Frame { open: false, ..f.get() });
            }
        }
        // Pop the frames that were closed out of order and are now on top.
        while new_top > 0 && self.frames.get(new_top as usize - 1).is_some_and(|f| !f.get().open) {
            new_top -= 1;
        }
        self.depth.set(new_top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    #[test]
    fn save_of_set_bit_is_empty_and_nesting_exact() {
        let s = ScopeState::new();
        let a = s.save(Gfp::NOFS, here());
        assert_eq!(a.bits(), Gfp::NOFS);
        let b = s.save(Gfp::NOFS | Gfp::NOIO, here());
        assert_eq!(b.bits(), Gfp::NOIO);
        let c = s.save(Gfp::NOFS, here());
        assert!(c.bits().is_empty());
        s.restore(c, |m| panic!("{m}"));
        assert_eq!(s.current(), Gfp::NOFS | Gfp::NOIO);
        s.restore(b, |m| panic!("{m}"));
        assert_eq!(s.current(), Gfp::NOFS);
        s.restore(a, |m| panic!("{m}"));
        assert_eq!(s.current(), Gfp::KERNEL);
    }

    #[test]
    fn restoring_a_never_clears_b() {
        let s = ScopeState::new();
        let a = s.save(Gfp::NOFS, here());
        let b = s.save(Gfp::NORECLAIM, here());
        let mut reported = false;
        s.restore(a, |_| reported = true);
        assert_eq!(s.current(), Gfp::NORECLAIM, "A's restore must leave B's bits");
        assert_eq!(reported, cfg!(debug_assertions));
        s.restore(b, |m| panic!("second restore is in order now: {m}"));
        assert_eq!(s.current(), Gfp::KERNEL);
    }

    #[test]
    fn holds_release_in_any_order_and_compose_with_cookies() {
        let s = ScopeState::new();
        s.hold(Gfp::NOIO);
        s.hold(Gfp::NOFS);
        s.hold(Gfp::NOFS);
        s.release(Gfp::NOIO);
        assert_eq!(s.current(), Gfp::NOFS);
        // A cookie scope inside, restored while the holds are open: the held bit survives.
        let c = s.save(Gfp::NOFS | Gfp::NORECLAIM, here());
        assert_eq!(c.bits(), Gfp::NOFS | Gfp::NORECLAIM, "the cookie word did not have NOFS");
        s.restore(c, |m| panic!("{m}"));
        assert_eq!(s.current(), Gfp::NOFS, "the holds keep NOFS");
        s.release(Gfp::NOFS);
        assert_eq!(s.current(), Gfp::NOFS, "one hold left");
        s.release(Gfp::NOFS | Gfp::ZERO);
        assert_eq!(s.current(), Gfp::KERNEL);
        // `replace` (the reclaim path) leaves holds alone.
        s.hold(Gfp::NOIO);
        let old = s.replace(Gfp::MEMALLOC);
        assert_eq!(s.current(), Gfp::MEMALLOC | Gfp::NOIO);
        s.replace(old);
        s.release(Gfp::NOIO);
        assert_eq!(s.current(), Gfp::KERNEL);
    }

    #[test]
    fn non_scope_bits_are_ignored() {
        let s = ScopeState::new();
        let c = s.save(Gfp::NOWARN | Gfp::ZERO | Gfp::NOFS, here());
        assert_eq!(s.current(), Gfp::NOFS);
        s.restore(c, |m| panic!("{m}"));
    }

    #[cfg(debug_assertions)]
    struct Buf([u8; 512], usize);
    #[cfg(debug_assertions)]
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let b = s.as_bytes();
            self.0[self.1..self.1 + b.len()].copy_from_slice(b);
            self.1 += b.len();
            Ok(())
        }
    }
    #[cfg(debug_assertions)]
    impl Buf {
        fn as_str(&self) -> &str {
            core::str::from_utf8(&self.0[..self.1]).unwrap()
        }
    }

    #[cfg(debug_assertions)]
    #[test]
    fn out_of_order_names_both_scopes() {
        use core::fmt::Write;
        let s = ScopeState::new();
        let outer_at = here();
        let inner_at = here();
        let outer = s.save(Gfp::NOFS, outer_at);
        let inner = s.save(Gfp::NOIO, inner_at);
        let mut msg = Buf([0; 512], 0);
        s.restore(outer, |m| write!(msg, "{m}").unwrap());
        let mut want_outer = Buf([0; 512], 0);
        write!(want_outer, "restoring the NOFS scope saved at {}:{}", outer_at.file(), outer_at.line())
            .unwrap();
        let mut want_inner = Buf([0; 512], 0);
        write!(want_inner, "the NOIO scope saved at {}:{}", inner_at.file(), inner_at.line()).unwrap();
        assert!(msg.as_str().contains(want_outer.as_str()), "{}", msg.as_str());
        assert!(msg.as_str().contains(want_inner.as_str()), "{}", msg.as_str());
        s.restore(inner, |m| panic!("{m}"));
        assert_eq!(s.current(), Gfp::KERNEL);
        // The stack is empty again: a new pair nests cleanly.
        let a = s.save(Gfp::NOFS, here());
        let b = s.save(Gfp::NOIO, here());
        s.restore(b, |m| panic!("{m}"));
        s.restore(a, |m| panic!("{m}"));
    }

    #[cfg(debug_assertions)]
    #[test]
    fn deep_nesting_beyond_tracked_frames() {
        let s = ScopeState::new();
        let mut cookies = [const { None }; 40];
        for (i, c) in cookies.iter_mut().enumerate() {
            let bit = if i % 2 == 0 { Gfp::NOFS } else { Gfp::NOIO };
            *c = Some(s.save(bit, here()));
        }
        for c in cookies.iter_mut().rev() {
            s.restore(c.take().unwrap(), |m| panic!("{m}"));
        }
        assert_eq!(s.current(), Gfp::KERNEL);
        assert_eq!(s.depth.get(), 0);
    }
}
