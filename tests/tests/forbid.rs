//! `forbid_alloc()` (feature `forbid-alloc`): every allocation inside the scope is reported with
//! its size; strict mode aborts. Reports go to stderr and the counters are process-wide, so
//! each scenario runs in a child process.

use ctxalloc_tests::{assert_child_passes, child_stderr, is_child, run_child};
use std::hint::black_box;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

#[test]
fn an_allocation_inside_forbid_alloc_is_reported_with_its_size() {
    let err = child_stderr("child_report");
    assert_eq!(err.matches("inside forbid_alloc()").count(), 1, "{err}");
    assert!(err.contains("allocation of 1234 bytes inside forbid_alloc()"), "{err}");
    assert!(err.contains("allocated at"), "the report shows where: {err}");
}

#[test]
fn child_report() {
    if !is_child("child_report") {
        return;
    }
    let before = ctxalloc::stats().forbidden_allocs;
    let mut kept = Vec::with_capacity(4);
    {
        let _rt = ctxalloc::forbid_alloc();
        let v: Vec<u8> = black_box(Vec::with_capacity(1234)); // reported
        kept.push(v.len()); // within capacity: no allocation
        drop(v); // a free: allowed
    }
    let after_scope = black_box(vec![0u8; 99]); // outside: not reported
    assert_eq!(ctxalloc::stats().forbidden_allocs, before + 1);
    assert_eq!(after_scope.len() + kept.len(), 100);
}

#[test]
fn strict_mode_aborts_on_the_first_forbidden_allocation() {
    let out = run_child("child_strict");
    let err = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{}: {err}", out.status);
    assert!(
        err.contains("allocation of 77 bytes inside forbid_alloc() (context FORBID); strict mode: aborting"),
        "{err}"
    );
    assert!(!err.contains("not reached"), "{err}");
}

#[test]
fn child_strict() {
    if !is_child("child_strict") {
        return;
    }
    ctxalloc::set_forbid_strict(true);
    let _rt = ctxalloc::forbid_alloc();
    let v: Vec<u8> = black_box(Vec::with_capacity(77));
    eprintln!("not reached {}", v.capacity());
}

#[test]
fn a_lock_can_carry_forbid_and_nested_scopes_keep_it() {
    assert_child_passes("child_nested", &[]);
}

#[test]
fn child_nested() {
    if !is_child("child_nested") {
        return;
    }
    let before = ctxalloc::stats().forbidden_allocs;
    let rt = ctxalloc::ScopedMutex::new(0u32, ctxalloc::Gfp::FORBID);
    {
        let _g = rt.lock();
        let _nofs = ctxalloc::scope(ctxalloc::Gfp::NOFS);
        black_box(Box::new(5u64));
    }
    black_box(Box::new(6u64));
    assert_eq!(ctxalloc::stats().forbidden_allocs, before + 1);
}
