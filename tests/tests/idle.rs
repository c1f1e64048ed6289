//! An idle program gives freed memory back: after a burst is freed, with no further allocator
//! call, the background thread purges what has waited the purge delay. (One test in its own
//! binary: usage is process-wide.)

use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

#[test]
fn freed_memory_goes_back_while_the_program_is_idle() {
    let before = ctxalloc::usage();
    let burst: Vec<Box<[u8; 1000]>> = (0..64_000).map(|i| Box::new([i as u8; 1000])).collect();
    let peak = ctxalloc::usage();
    assert!(peak >= before + (60 << 20), "usage {peak} after a 64 MB burst");
    drop(burst);
    // Wait for the condition (not a duration): usage falls once the delay has passed. The
    // deadline only turns a lost purge into a failure instead of a hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ctxalloc::usage() > before + (4 << 20) {
        assert!(
            Instant::now() < deadline,
            "usage stayed at {} after the burst\n{}",
            ctxalloc::usage(),
            ctxalloc::stats()
        );
        std::thread::yield_now();
    }
}
