//! The main job in async form as a test: the `blockcache-async` engine (included from the
//! example) on tokio under a small limit — nothing lost with the scopes, and without them the
//! recursion caught (by the reclaim-order checker first, then by the shrinker that finds its
//! lock held by the very task it reclaims for), never a hang.

#[allow(dead_code)]
#[path = "../../std-shim/examples/blockcache-async/engine.rs"]
mod engine;

use ctxalloc_tests::{child_stderr, is_child, run_child};
use engine::{Failure, Options};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn small(no_scopes: bool) -> Options {
    Options {
        seconds: 3.0,
        tasks: 8,
        files: 4,
        blocks_per_file: 2048, // 32 MiB of data under a 16 MiB limit
        limit: Some(16 << 20),
        no_scopes,
        watchdog: 20,
        progress: false,
        ..Options::default()
    }
}

#[test]
fn async_tasks_under_a_small_limit_lose_no_write() {
    let err = child_stderr("child_async_small_limit");
    assert!(!err.contains("lockcheck"), "with its scopes the checker is silent: {err}");
}

#[test]
fn child_async_small_limit() {
    if !is_child("child_async_small_limit") {
        return;
    }
    let r = engine::run(&small(false)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.checked, 4 * 2048);
    assert!(r.evicted > 0 || r.written_back > 0 || r.recycled > 0, "the limit forced reclaim: {r:?}");
    assert!(r.peak <= (16 << 20) + (8 << 20), "{r:?}");
}

#[test]
fn async_without_scopes_the_recursion_is_named_not_hung() {
    let out = run_child("child_async_no_scopes");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let checked =
        err.find("ctxalloc: lockcheck: lock `").unwrap_or_else(|| panic!("no lockcheck report: {err}"));
    let caught = err.find("caught: deadlock: reclaim called shrinker").unwrap_or_else(|| panic!("{err}"));
    assert!(checked < caught, "the checker reports before the recursion happens: {err}");
}

#[test]
fn child_async_no_scopes() {
    if !is_child("child_async_no_scopes") {
        return;
    }
    // Long enough that memory runs out under a lock (it stops at the first recursion).
    match engine::run(&Options { seconds: 120.0, ..small(true) }) {
        Err(f @ Failure::Recursion { .. }) => eprintln!("caught: {f}"),
        Err(f) => panic!("{f}"),
        Ok(r) => panic!("no recursion in {:.0} s: {r:?}", r.seconds),
    }
    // The engine left its (possibly stuck) runtime behind; leave without unwinding into it.
    std::process::exit(0);
}
