//! The main job as a test: the `blockcache` engine (included from the example) under a small
//! memory limit loses no write, and without its scopes it is stopped with a clear diagnosis
//! instead of hanging. Each run sets a process-wide limit, so each runs in a child process.

#[path = "../../std-shim/examples/blockcache/engine.rs"]
#[allow(dead_code)]
mod engine;

use ctxalloc_tests::{child_stderr, is_child};
use engine::{Failure, Options};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn small(no_scopes: bool) -> Options {
    Options {
        ops: Some(200_000),
        seconds: 600.0,
        threads: 4,
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
fn under_a_small_limit_no_write_is_lost() {
    let err = child_stderr("child_small_limit");
    assert!(!err.contains("lockcheck"), "with its scopes the checker is silent: {err}");
}

#[test]
fn child_small_limit() {
    if !is_child("child_small_limit") {
        return;
    }
    let r = engine::run(&small(false)).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.checked, 4 * 2048);
    assert!(r.evicted > 0 && r.written_back > 0, "the limit forced reclaim: {r:?}");
    assert!(r.peak <= (16 << 20) + (8 << 20), "{r:?}");
    let s = ctxalloc::stats();
    assert!(s.reclaim_rounds + s.background_passes > 0, "{s}");
}

#[test]
fn under_pressure_the_caches_shrink_and_no_write_is_lost() {
    child_stderr("child_pressure");
}

#[test]
fn child_pressure() {
    if !is_child("child_pressure") {
        return;
    }
    // No limit at all: only the pressure events shrink the caches.
    let o = Options {
        ops: Some(400_000),
        limit: None,
        pressure_every: Some(std::time::Duration::from_millis(300)),
        ..small(false)
    };
    let r = engine::run(&o).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.lost, 0, "{r:?}");
    assert!(!r.pressure.is_empty(), "the run fired pressure events: {r:?}");
    let s = ctxalloc::stats();
    assert_eq!(s.pressure_events as usize, r.pressure.len(), "{s}");
    assert!(s.pressure_passes > 0 && s.pressure_freed > 0, "passes freed cached blocks: {s}");
    assert!(r.evicted > 0, "the cache's shrinker ran although there is no limit: {r:?}");
    assert_eq!(s.reclaim_rounds, 0, "no direct reclaim: there is no limit");
}

#[test]
fn without_scopes_the_recursion_is_named_not_hung() {
    let err = child_stderr("child_no_scopes");
    let failed = err.find("run failed: deadlock").unwrap_or_else(|| panic!("{err}"));
    assert!(err[failed..].contains("lock `cache`") || err[failed..].contains("lock `writeback`"), "{err}");
    // The reclaim-order checker spoke first, at the first allocation under a lock.
    let checked =
        err.find("ctxalloc: lockcheck: lock `").unwrap_or_else(|| panic!("no lockcheck report: {err}"));
    assert!(checked < failed, "the checker reports before the deadlock: {err}");
}

#[test]
fn without_scopes_and_with_plenty_of_memory_the_checker_still_reports() {
    let err = child_stderr("child_no_scopes_no_limit");
    for (lock, shrinker, class) in
        [("cache", "block-cache", "filesystem"), ("writeback", "write-back", "I/O")]
    {
        let want = format!("lock `{lock}` is held across an allocation that may reclaim from {class} shrinkers, and shrinker `{shrinker}`");
        assert!(err.contains(&want), "{want}: {err}");
    }
}

#[test]
fn child_no_scopes_no_limit() {
    if !is_child("child_no_scopes_no_limit") {
        return;
    }
    let o = Options { ops: Some(20_000), limit: None, ..small(true) };
    let r = engine::run(&o).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(r.lost, 0);
    let s = ctxalloc::stats();
    assert_eq!(s.reclaim_rounds, 0, "no memory pressure: {s}");
    assert_eq!(s.lockcheck_reports, 2, "{s}");
}

#[test]
fn child_no_scopes() {
    if !is_child("child_no_scopes") {
        return;
    }
    let o = Options { ops: Some(5_000_000), ..small(true) };
    match engine::run(&o) {
        Err(f @ (Failure::Recursion { .. } | Failure::Deadlock(_))) => eprintln!("run failed: {f}"),
        Err(f) => panic!("unexpected failure: {f}"),
        Ok(r) => panic!("without scopes reclaim should have recursed into a held lock: {r:?}"),
    }
}
