//! `fork` from a multithreaded process: the child can allocate (small, large, realloc, other
//! threads) and exits 0, however the parent's threads were caught.

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

fn child_work() -> bool {
    let v: Vec<Vec<u8>> = (0..2000).map(|i| vec![i as u8; i % 3000 + 1]).collect();
    let big = vec![7u8; 8 << 20];
    let mut s = String::new();
    for i in 0..1000 {
        s.push_str(&i.to_string());
    }
    // A thread in the child, freeing what the parent's threads allocated is not possible, but
    // freeing what the child allocated on another thread is.
    let h = thread::spawn(move || v.iter().map(|x| x.len()).sum::<usize>());
    let total = h.join().unwrap_or(0);
    total == (0..2000).map(|i| i % 3000 + 1).sum::<usize>() && big.iter().all(|&b| b == 7) && s.len() > 2000
}

#[test]
fn child_of_a_busy_process_allocates_and_exits_zero() {
    let stop = Arc::new(AtomicBool::new(false));
    let busy: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut keep = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    keep.push(vec![t as u8; (i * 37) % 5000 + 1]);
                    if i.is_multiple_of(3) {
                        keep.swap_remove((i * 7) % keep.len());
                    }
                    if keep.len() > 500 {
                        keep.truncate(100);
                    }
                    if i.is_multiple_of(1000) {
                        // Large areas too: the vmap registry lock must be fork-safe as well.
                        let l = Layout::from_size_align(300_000, 4096).unwrap();
                        let p = ctxalloc::alloc_with(l, ctxalloc::Gfp::KERNEL).unwrap();
                        // SAFETY: just allocated with `l`.
                        unsafe { ctxalloc::dealloc(p, l) };
                    }
                }
            })
        })
        .collect();

    for round in 0..30 {
        // SAFETY: the child only allocates, runs Rust code that the allocator supports after
        // fork, and leaves with `_exit`, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = child_work();
            // SAFETY: ends the child without running the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFEXITED(status), "round {round}: child died: status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "round {round}: child work failed");
    }
    stop.store(true, Ordering::Relaxed);
    for b in busy {
        b.join().unwrap();
    }
}
