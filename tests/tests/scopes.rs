//! Scope semantics (checklist items 1–5 of kernel-semantics.md): nesting restores the word
//! exactly, a save of an already-set bit returns an empty cookie, NOIO implies NOFS, scopes are
//! per thread, and an out-of-order restore is reported naming both scopes (debug builds).

use ctxalloc::Gfp;
use ctxalloc_tests::{is_child, run_child};
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

#[test]
fn nesting_restores_the_word_exactly() {
    let a = ctxalloc::memalloc_nofs_save();
    let b = ctxalloc::memalloc_noio_save();
    let c = ctxalloc::memalloc_nofail_save();
    assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NOIO | Gfp::NOFAIL);
    ctxalloc::memalloc_nofail_restore(c);
    assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NOIO);
    ctxalloc::memalloc_noio_restore(b);
    assert_eq!(ctxalloc::current(), Gfp::NOFS);
    ctxalloc::memalloc_nofs_restore(a);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
}

#[test]
fn saving_a_bit_already_set_returns_an_empty_cookie() {
    let outer = ctxalloc::memalloc_nofs_save();
    let inner = ctxalloc::memalloc_nofs_save();
    assert!(inner.bits().is_empty());
    ctxalloc::memalloc_nofs_restore(inner);
    assert_eq!(ctxalloc::current(), Gfp::NOFS, "the inner restore leaves the outer scope");
    ctxalloc::memalloc_nofs_restore(outer);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
}

#[test]
fn noio_implies_nofs() {
    ctxalloc::with_scope(Gfp::NOIO, || {
        assert_eq!(ctxalloc::current(), Gfp::NOIO);
        let e = ctxalloc::effective(Gfp::KERNEL);
        assert!(e.gfp().contains(Gfp::NOFS));
        assert!(!e.may_call(ctxalloc::ReclaimClass::Fs));
        assert!(!e.may_call(ctxalloc::ReclaimClass::Io));
        assert_eq!(e, ctxalloc::effective(Gfp::NOFS));
    });
}

#[test]
fn scopes_belong_to_one_thread() {
    let _g = ctxalloc::scope(Gfp::NOFS | Gfp::NORECLAIM);
    let seen = thread::spawn(|| {
        let before = ctxalloc::current();
        let _h = ctxalloc::scope(Gfp::NOIO);
        (before, ctxalloc::current())
    })
    .join()
    .unwrap();
    assert_eq!(seen, (Gfp::KERNEL, Gfp::NOIO));
    assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NORECLAIM, "another thread's scope is not ours");
}

#[test]
fn guards_and_closures_nest() {
    {
        let _a = ctxalloc::scope(Gfp::NOFS);
        let v = ctxalloc::with_scope(Gfp::NOFAIL, || {
            assert_eq!(ctxalloc::current(), Gfp::NOFS | Gfp::NOFAIL);
            vec![0u8; 1 << 20]
        });
        assert_eq!(v.len(), 1 << 20);
        assert_eq!(ctxalloc::current(), Gfp::NOFS);
    }
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
}

#[test]
fn scope_flags_that_are_not_scope_bits_are_ignored() {
    let c = ctxalloc::memalloc_flags_save(Gfp::NOWARN | Gfp::ZERO | Gfp::NOIO);
    assert_eq!(ctxalloc::current(), Gfp::NOIO);
    ctxalloc::memalloc_flags_restore(c);
}

/// Runs in a child: restores the outer of two scopes first.
#[test]
fn child_restores_out_of_order() {
    if !is_child("child_restores_out_of_order") {
        return;
    }
    let outer = ctxalloc::memalloc_nofs_save();
    let inner = ctxalloc::memalloc_noio_save();
    ctxalloc::memalloc_nofs_restore(outer);
    assert_eq!(ctxalloc::current(), Gfp::NOIO, "restoring A never clears B's bits");
    ctxalloc::memalloc_noio_restore(inner);
    assert_eq!(ctxalloc::current(), Gfp::KERNEL);
    println!("mispairs={}", ctxalloc::stats().scope_mispairs);
}

#[test]
fn out_of_order_restore_is_reported_naming_both_scopes() {
    let out = run_child("child_restores_out_of_order");
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if cfg!(debug_assertions) {
        assert!(stderr.contains("scope restored out of order"), "{stderr}");
        assert!(stderr.contains("restoring the NOFS scope saved at tests/tests/scopes.rs:"), "{stderr}");
        assert!(stderr.contains("the NOIO scope saved at tests/tests/scopes.rs:"), "{stderr}");
        assert!(stdout.contains("mispairs=1"), "{stdout}");
    } else {
        assert!(!stderr.contains("out of order"), "release builds keep kernel semantics: {stderr}");
        assert!(stdout.contains("mispairs=0"), "{stdout}");
    }
}
