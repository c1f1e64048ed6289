//! Pressure passes over the mock platform: a proportional scan that deepens over a streak and
//! never takes a whole cache at once, the context it runs in, memory given back below (and
//! without) a limit, and the rate limit.

use super::reclaim::{leaked_core, Cache, BLOCK};
use super::*;
use crate::{PressurePolicy, ReclaimClass, Shrinker};
use core::panic::Location;
use std::vec;

/// No rate limit: every event runs a pass (the mock clock ticks 1 ms per reading).
const EVERY: PressurePolicy =
    PressurePolicy { min_interval_ns: 0, streak_ns: u64::MAX, start_priority: 4, min_priority: 2 };

#[test]
fn a_pressure_pass_scans_in_proportion_and_gives_memory_back_below_the_limit() {
    let core = leaked_core(40, 32);
    let cache = Cache::new(core, "pressure-fs", ReclaimClass::Fs).register();
    cache.fill(128); // 16 MiB: half the limit, nowhere near a watermark
    let before = core.usage();
    let first = core.pressure_event(&EVERY);
    // (128 >> 4) · 4 / 2 = 16 objects, in batches of 8.
    assert!(first.ran);
    assert_eq!((first.priority, first.freed), (4, 16), "{first:?}");
    assert!(first.given >= 16 * BLOCK, "freed blocks go back to the page source at once: {first:?}");
    assert!(core.usage() + 16 * BLOCK <= before);

    // A streak goes one priority deeper per event, down to the floor; no pass empties the cache.
    let mut left = 112;
    let mut freed = vec![first.freed];
    for want in [3, 2, 2] {
        let o = core.pressure_event(&EVERY);
        assert_eq!(o.priority, want, "{o:?}");
        assert!(o.freed > 0 && o.freed < left, "a pass takes part of the cache, never all: {o:?} of {left}");
        left -= o.freed;
        freed.push(o.freed);
    }
    assert!(freed[..3].windows(2).all(|w| w[0] < w[1]), "deeper passes scan more: {freed:?}");
    let s = core.stats();
    assert_eq!((s.pressure_events, s.pressure_passes), (4, 4), "{s}");
    assert_eq!(s.pressure_freed as usize, freed.iter().sum::<usize>());
    assert!(s.pressure_given_bytes as usize >= (128 - left) * BLOCK, "{s}");
    assert_eq!(s.background_passes, 0, "pressure reclaims although usage is far below the limit");
}

#[test]
fn a_pressure_pass_runs_in_a_clean_context_and_with_no_limit_at_all() {
    let core = leaked_core(24, 16);
    core.remove_limit();
    let fs = Cache::new(core, "pressure-clean-fs", ReclaimClass::Fs).register();
    let io = Cache::new(core, "pressure-clean-io", ReclaimClass::Io).register();
    fs.fill(32);
    io.fill(32);
    // The reporting thread's own scope does not restrict the pass, and is back afterwards.
    let c = core.scope_save(Gfp::NOFS, Location::caller());
    let o = core.pressure_event(&PressurePolicy { start_priority: 2, ..EVERY });
    assert_eq!(core.current(), Gfp::NOFS);
    core.scope_restore(c);
    assert!(o.ran && o.freed > 0, "{o:?}");
    for cache in [fs, io] {
        assert!(cache.scans() > 0, "{} ran", cache.name());
        for (word, gfp) in cache.contexts.lock().unwrap().iter() {
            assert!(word.contains(Gfp::MEMALLOC), "shrinkers run with MEMALLOC set: {word:?}");
            assert!(!gfp.contains(Gfp::NOFS) && !gfp.contains(Gfp::NOIO), "a clean context: {gfp:?}");
        }
    }
}

#[test]
fn events_inside_the_minimum_interval_are_counted_and_skipped() {
    let core = leaked_core(24, 16);
    let cache = Cache::new(core, "pressure-burst", ReclaimClass::Other).register();
    cache.fill(64);
    // The mock clock moves 1 ms per reading: a 1 s interval skips the rest of the burst.
    let p = PressurePolicy { min_interval_ns: 1_000_000_000, ..EVERY };
    let seen = core.pressure_handled();
    let outcomes: Vec<_> = (0..10).map(|_| core.pressure_event(&p)).collect();
    assert!(outcomes[0].ran);
    assert!(outcomes[1..].iter().all(|o| !o.ran && o.freed == 0), "{outcomes:?}");
    let s = core.stats();
    assert_eq!((s.pressure_events, s.pressure_passes), (10, 1), "{s}");
    assert_eq!(core.pressure_wait(seen, 0), seen.wrapping_add(10), "every event is handled");
    assert_eq!(cache.stats().calls, 1, "one pass: (64 >> 4) · 4 / 2 = 8 objects, one batch");
}
