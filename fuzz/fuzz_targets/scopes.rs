//! `scopes`: random sequences of scope saves and restores — in order and out of order, through
//! a cookie or its C form (`into_raw`/`from_raw`) —, lock-tied holds and releases in any order,
//! and the reclaim path's `replace`, on one thread's [`ScopeState`], against a model of the
//! context word. Checked after every step: the word is exactly the union of what the open
//! cookie scopes newly set and the bits with a hold; a save returns exactly the bits it newly
//! set; and (with debug assertions) a restore is reported as a mispair exactly when its scope
//! is not the innermost open one, naming both scopes' flags.
//!
//! Nesting (counting scopes closed out of order but not yet popped, as debug builds do) stays
//! within the depth debug builds track by name (16); deeper scopes are counted but not named,
//! which the core's unit tests cover.

#![no_main]

use core::cell::Cell;
use core::panic::Location;
use ctxalloc_core::{Cookie, Gfp, ScopeState};
use ctxalloc_fuzz::Input;
use libfuzzer_sys::fuzz_target;

const TRACKED: usize = 16;

/// Any scope flags (the low five bits), sometimes with bits a scope cannot set.
fn flags(input: &mut Input<'_>) -> Gfp {
    let b = input.byte();
    let extra = if b & 0x80 != 0 { Gfp::NOWARN | Gfp::ZERO } else { Gfp::KERNEL };
    Gfp::from_bits_truncate(u32::from(b) & 0x3f) | extra
}

/// A scope on the model's stack: open (with its cookie), or closed out of order and waiting
/// for the scopes above it to close — as debug builds keep it.
struct Frame {
    cookie: Option<Cookie>,
    /// What the save asked for (scope bits only).
    flags: Gfp,
}

/// Bits a scope can set: `Gfp::SCOPE_MASK`.
const SCOPE_BITS: usize = Gfp::SCOPE_MASK.bits().count_ones() as usize;
fuzz_target!(|data: &[u8]| {
    let s = ScopeState::new();
    let mut input = Input(data);
    let mut stack: Vec<Frame> = Vec::new();
    // The model: the bits the open cookie scopes set, and a hold count per scope bit.
    let mut word = Gfp::KERNEL;
    // One hold count per scope bit (NOFS … FORBID).
    let mut holds = [0u32; SCOPE_BITS];
    let held = |holds: &[u32; SCOPE_BITS]| {
        (0..SCOPE_BITS)
            .filter(|&i| holds[i] != 0)
            .fold(Gfp::KERNEL, |g, i| g | Gfp::from_bits_truncate(1 << i))
    };
    while !input.is_empty() {
        match input.byte() % 8 {
            0..=2 if stack.len() < TRACKED => {
                let flags = flags(&mut input);
                let scope_bits = flags & Gfp::SCOPE_MASK;
                let cookie = s.save(flags, Location::caller());
                assert_eq!(cookie.bits(), scope_bits - word, "a save returns exactly the bits it newly set");
                word = word | scope_bits;
                stack.push(Frame { cookie: Some(cookie), flags: scope_bits });
            }
            3..=5 if stack.iter().any(|f| f.cookie.is_some()) => {
                // Usually the innermost; sometimes one further out.
                let open: Vec<usize> = (0..stack.len()).filter(|&i| stack[i].cookie.is_some()).collect();
                let back =
                    if input.byte() % 3 == 0 { usize::from(input.byte() % 4).min(open.len() - 1) } else { 0 };
                let i = open[open.len() - 1 - back];
                let innermost = stack.last().unwrap().flags;
                let cookie = stack[i].cookie.take().unwrap();
                let flags = stack[i].flags;
                let bits = cookie.bits();
                let cookie = if input.byte() % 2 == 0 { Cookie::from_raw(cookie.into_raw()) } else { cookie };
                let reported = Cell::new(None);
                s.restore(cookie, |m| reported.set(Some((m.restored.flags, m.open.flags))));
                word = word - bits;
                let was_top = i == stack.len() - 1;
                while stack.last().is_some_and(|f| f.cookie.is_none()) {
                    stack.pop();
                }
                if cfg!(debug_assertions) {
                    let expected = (!was_top).then_some((flags, innermost));
                    assert_eq!(
                        reported.get(),
                        expected,
                        "mispair report for restoring scope {i} of {}",
                        stack.len()
                    );
                }
            }
            6 => {
                let flags = flags(&mut input);
                let bits = (flags & Gfp::SCOPE_MASK).bits();
                if input.byte() % 2 == 0 {
                    s.hold(flags);
                    for (i, h) in holds.iter_mut().enumerate() {
                        *h += (bits >> i) & 1;
                    }
                } else if (0..SCOPE_BITS).all(|i| bits & (1 << i) == 0 || holds[i] > 0) {
                    s.release(flags);
                    for (i, h) in holds.iter_mut().enumerate() {
                        *h -= (bits >> i) & 1;
                    }
                }
            }
            7 => {
                // The reclaim path: its own word for a while, then the caller's back; holds stay.
                let inner = flags(&mut input) & Gfp::SCOPE_MASK;
                let before = s.replace(inner);
                assert_eq!(before, word);
                assert_eq!(s.current(), inner | held(&holds));
                assert_eq!(s.replace(before), inner);
            }
            _ => {}
        }
        assert_eq!(s.current(), word | held(&holds), "the context word differs from the model");
    }
    // Unwind everything, innermost first: the word returns to KERNEL, with no report.
    while let Some(f) = stack.pop() {
        if let Some(cookie) = f.cookie {
            s.restore(cookie, |m| panic!("in-order restore reported: {m}"));
        }
    }
    for (i, &n) in holds.iter().enumerate() {
        for _ in 0..n {
            s.release(Gfp::from_bits_truncate(1 << i));
        }
    }
    assert_eq!(s.current(), Gfp::KERNEL);
});
