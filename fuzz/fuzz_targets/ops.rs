//! `ops`: random alloc / free / realloc / zeroed-alloc sequences — with and without a layout
//! (`kfree`, `krealloc`: C's free and realloc) — with random sizes and alignments, scopes
//! entered and left, random memory limits, the exact-fit tier turned on and off, and injected
//! page-source failures, on the core over
//! the deterministic mock platform. The model checks every step: blocks aligned, inside the
//! arena, never overlapping, contents intact (also across realloc), zeroed memory zero; the
//! context word always equals the union of the open scopes; `usage()` equal to what the
//! structures hold (`audit_usage`), never below the live bytes nor above what is mapped; a
//! NOFAIL allocation that fits never fails; and, once everything is freed, every byte given
//! back.

#![no_main]

use ctxalloc_core::mock::{model::Model, MockPlatform};
use ctxalloc_core::{Core, Gfp, SEGMENT_SIZE, SLICE_SIZE};

/// The mock arena.
const ARENA: usize = 16 << 20;
use ctxalloc_fuzz::Input;
use libfuzzer_sys::fuzz_target;

/// The scopes the fuzzer opens. Not NOFAIL: a NOFAIL allocation the arena cannot satisfy waits
/// for a free that a single-threaded run never makes — a hang by design (R5.10), which the
/// reclaim tests cover with a second thread that frees.
const SCOPES: [Gfp; 4] = [Gfp::NOFS, Gfp::NOIO, Gfp::NORECLAIM, Gfp::MEMALLOC];

fuzz_target!(|data: &[u8]| {
    let core = Core::new(MockPlatform::new(ARENA));
    let mut input = Input(data);
    let mut cookies = Vec::new();
    let mut word = Gfp::KERNEL;
    {
        let mut m = Model::new(&core);
        while !input.is_empty() {
            match input.byte() % 16 {
                0..=4 => {
                    let size = input.size();
                    let align = 1usize << (input.byte() % 22);
                    let flags = if input.byte() % 4 == 0 { Gfp::ZERO | Gfp::NOWARN } else { Gfp::NOWARN };
                    m.alloc(size, align, flags);
                }
                5..=7 => m.free(usize::from(input.u16())),
                8 => {
                    let pick = usize::from(input.u16());
                    let size = input.size();
                    m.realloc(pick, size);
                }
                9 => {
                    let flags = SCOPES[usize::from(input.byte()) % SCOPES.len()];
                    let c = core.scope_save(flags, core::panic::Location::caller());
                    cookies.push((c, word));
                    word = word | flags;
                }
                10 => {
                    if let Some((c, before)) = cookies.pop() {
                        core.scope_restore(c);
                        word = before;
                    }
                }
                11 => m.kfree(usize::from(input.u16())),
                12 => {
                    let pick = usize::from(input.u16());
                    let size = input.size();
                    m.krealloc(pick, size);
                }
                13 => {
                    // A limit somewhere around the current usage, or none.
                    let limit = match input.byte() % 4 {
                        0 => None,
                        n => Some(core.usage() / 2 + usize::from(n) * usize::from(input.u16()) * 64),
                    };
                    match limit {
                        // One below the smallest workable limit is refused, changing nothing.
                        Some(l) => {
                            let before = core.limit();
                            if core.set_limit(l).is_err() {
                                assert_eq!(core.limit(), before);
                            }
                        }
                        None => core.remove_limit(),
                    }
                }
                14 => {
                    // NOFAIL for a request that surely fits — a fresh segment under the limit
                    // and in the arena — must not fail (it may reclaim, retry, use the reserve).
                    let size = input.size().min(256 << 10);
                    let room = SEGMENT_SIZE + 2 * size + 2 * SLICE_SIZE;
                    let fits_limit = core.limit().is_none_or(|l| core.usage() + room <= l);
                    let fits_arena = core.platform().mapped_bytes() + 2 * room <= ARENA;
                    let pending_failures = input.byte() % 2 == 0;
                    // (A context that may not wait — NORECLAIM — fails NOFAIL by design.)
                    let eff = core.effective(Gfp::NOFAIL);
                    if fits_limit && fits_arena && eff.nofail() && eff.may_wait() {
                        if pending_failures {
                            core.platform().fail_next_maps(2);
                        }
                        let ok = m.alloc(size, 8, Gfp::NOFAIL);
                        assert!(
                            ok,
                            "NOFAIL failed for {size} bytes that fit (context {word}, limit {:?}, usage {}, \
                             mapped {})\n{:?}\n{}",
                            core.limit(),
                            core.usage(),
                            core.platform().mapped_bytes(),
                            core.platform().reports(),
                            core.stats()
                        );
                        core.platform().fail_next_maps(0);
                    }
                }
                _ => match input.byte() % 4 {
                    0 => core.platform().fail_next_maps(usize::from(input.byte() % 4)),
                    1 => core.trim(),
                    // The exact-fit tier on (for every size, or above a random one) or off;
                    // blocks allocated either way stay live across the change.
                    2 => core.set_exact_fit(match input.byte() % 3 {
                        0 => None,
                        1 => Some(0),
                        _ => Some(usize::from(input.u16())),
                    }),
                    _ => m.check_all(),
                },
            }
            assert_eq!(core.current(), word, "context word differs from the open scopes");
            let usage = core.usage();
            assert!(usage >= m.live_bytes(), "usage {usage} below live bytes {}", m.live_bytes());
            assert!(usage <= core.platform().mapped_bytes(), "usage above what is mapped");
            assert_eq!(core.audit_usage(), usage, "usage differs from what the structures hold");
        }
        m.check_all();
        m.free_all();
    }
    while let Some((c, _)) = cookies.pop() {
        core.scope_restore(c);
    }
    assert_eq!(core.current(), Gfp::KERNEL);
    assert_eq!(core.stats().scope_mispairs, 0);
    core.platform().fail_next_maps(0);
    core.remove_limit();
    core.thread_exit();
    core.trim();
    let s = core.stats();
    assert_eq!((s.slab_pages, s.vmap_areas, s.abandoned_pages), (0, 0, 0), "{s}");
    // Only the segment holding the heaps (pinned, its header slice charged) and the vmap table
    // stay.
    assert!(s.segments <= 1, "{s}");
    assert!(s.usage <= SLICE_SIZE + 4096, "memory not given back\n{s}");
    assert_eq!(core.audit_usage(), s.usage);
    let mapped = core.platform().mapped_bytes();
    assert!(mapped <= s.segments * SEGMENT_SIZE + 4096, "mapped {mapped} after everything was freed\n{s}");
});
