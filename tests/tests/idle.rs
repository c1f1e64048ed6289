//! An idle program gives freed memory back: after a burst is freed, with no further allocator
//! call, the background thread purges what has waited the purge delay. Then the thread itself
//! goes, so a process whose threads all `pthread_exit` still ends — and comes back when threads
//! exit and free memory again, also while others free their blocks. (Usage is process-wide: the
//! later scenarios run in child processes.)

use ctxalloc_tests::{assert_child_passes, is_child, wait_until};
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

/// Live threads of this process named like ctxalloc's background thread. Without allocating
/// through ctxalloc (the C library's directory buffer is the C library's): a poll that churned
/// ctxalloc memory would keep the background thread busy.
fn background_threads() -> usize {
    let mut n = 0;
    // SAFETY: opendir/readdir/closedir on a NUL-terminated path; each entry's name is a
    // NUL-terminated string valid until the next readdir; the comm path and the name are read
    // into stack buffers of the given sizes.
    unsafe {
        let dir = libc::opendir(c"/proc/self/task".as_ptr());
        assert!(!dir.is_null(), "/proc/self/task");
        loop {
            let e = libc::readdir(dir);
            if e.is_null() {
                break;
            }
            let tid = std::ffi::CStr::from_ptr((*e).d_name.as_ptr()).to_bytes();
            if tid.starts_with(b".") {
                continue;
            }
            let mut path = [0u8; 64];
            let prefix = b"/proc/self/task/";
            let suffix = b"/comm\0";
            path[..prefix.len()].copy_from_slice(prefix);
            path[prefix.len()..prefix.len() + tid.len()].copy_from_slice(tid);
            path[prefix.len() + tid.len()..][..suffix.len()].copy_from_slice(suffix);
            let fd = libc::open(path.as_ptr().cast(), libc::O_RDONLY);
            if fd < 0 {
                continue; // the thread ended meanwhile
            }
            let mut name = [0u8; 32];
            let len = libc::read(fd, name.as_mut_ptr().cast(), name.len());
            libc::close(fd);
            if len > 0 && name[..len as usize].starts_with(b"ctxalloc-kswapd") {
                n += 1;
            }
        }
        libc::closedir(dir);
    }
    n
}

/// Allocates and frees 16 MB: dirty memory that wakes the background thread.
fn burst() {
    let b: Vec<Box<[u8; 1000]>> = (0..16_000).map(|i| Box::new([i as u8; 1000])).collect();
    drop(b);
}

#[test]
fn the_background_thread_ends_when_idle_so_a_process_of_exited_threads_ends() {
    assert_child_passes("child_background_thread_lifecycle", &[]);
}

#[test]
fn child_background_thread_lifecycle() {
    if !is_child("child_background_thread_lifecycle") {
        return;
    }
    burst();
    wait_until(60, "the background thread started", || background_threads() == 1);
    wait_until(60, "the idle background thread exited", || background_threads() == 0);
    burst();
    wait_until(60, "a new background thread started", || background_threads() == 1);

    // A process whose last thread leaves without exit() ends then — also when the background
    // thread was running: it exits once idle.
    // SAFETY: fork in a process whose other threads (the test harness's, the background
    // thread) hold no lock the child needs: ctxalloc's fork handlers take its locks.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        burst();
        while background_threads() == 0 {
            std::thread::yield_now();
        }
        // This thread ends, not the process (pthread_exit's forced unwind would abort in
        // Rust frames; the raw exit does what it does at the end, without unwinding).
        // SAFETY: nothing on this thread's stack is needed again.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
        unreachable!();
    }
    let mut status = 0;
    // SAFETY: waits for our own child. If the child never ended, the parent's watchdog kills
    // this process and shows where it hung.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
}

#[test]
fn the_background_thread_stays_while_the_heap_holds_memory_frees_could_leave_waiting() {
    assert_child_passes(
        "child_background_thread_stays_for_held_memory",
        &[("CTXALLOC_BACKGROUND_IDLE", "1ms")],
    );
}

/// A program allocates, holds its memory with nothing for the background thread to do, then
/// frees it all and goes quiet. A free never starts the thread: had it idled out during the
/// hold (1 ms here), the freed memory would stay resident for good. It stays while the heap
/// holds more than the purge slack, and purges.
#[test]
fn child_background_thread_stays_for_held_memory() {
    if !is_child("child_background_thread_stays_for_held_memory") {
        return;
    }
    let before = ctxalloc::usage();
    let held: Vec<Box<[u8; 1000]>> = (0..64_000).map(|i| Box::new([i as u8; 1000])).collect();
    ctxalloc::trim(); // nothing waits for a purge: the thread has nothing to do
    wait_until(60, "the background thread started", || background_threads() == 1);
    // A thousand looks at /proc (tens of milliseconds) — a thousand idle timeouts: it stays.
    assert!((0..1000).all(|_| background_threads() == 1), "the background thread left");
    drop(held);
    wait_until(60, "the freed memory was purged", || ctxalloc::usage() <= before + (4 << 20));
}

#[test]
fn threads_exit_while_the_background_thread_idles_out_and_restarts() {
    assert_child_passes("child_thread_churn_and_background_restarts", &[("CTXALLOC_BACKGROUND_IDLE", "1ms")]);
}

/// Rounds of threads that allocate, hand their blocks to other threads and exit while those free
/// them (remote frees into pages whose heap is being abandoned); between rounds the background
/// thread idles out (trim leaves it nothing to wait for; it leaves after 1 ms) and the next
/// round's exits start it again. The suite's build has the debug guard on: a call out of the
/// allocator under one of its locks aborts the child.
#[test]
fn child_thread_churn_and_background_restarts() {
    if !is_child("child_thread_churn_and_background_restarts") {
        return;
    }
    const ROUNDS: usize = 100;
    let mut restarted = 0;
    for round in 0..ROUNDS {
        ctxalloc::trim();
        wait_until(60, "the background thread idled out", || background_threads() == 0);
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Box<[u8]>>>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let freers: Vec<_> = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while let Ok(batch) = rx.lock().unwrap().recv() {
                        for b in &batch {
                            assert!(b.iter().all(|&x| x == b.len() as u8), "a block was overwritten");
                        }
                        n += batch.len();
                    }
                    n
                })
            })
            .collect();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for b in 0..16 {
                        let batch = (0..64)
                            .map(|i| {
                                let len = 16
                                    + ((round * 7 + w * 13 + b * 5 + i) % 13)
                                        * if i % 8 == 0 { 160 } else { 8 };
                                vec![len as u8; len].into_boxed_slice()
                            })
                            .collect();
                        tx.send(batch).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
        let freed: usize = freers.into_iter().map(|f| f.join().unwrap()).sum();
        assert_eq!(freed, 4 * 16 * 64);
        if background_threads() > 0 {
            restarted += 1;
        }
    }
    // The exits of a round start it again (it stays for the purge delay, past the round's end).
    assert!(
        restarted >= ROUNDS / 2,
        "the background thread restarted in only {restarted} of {ROUNDS} rounds"
    );
}

#[test]
fn a_malformed_idle_timeout_is_reported_once_and_ignored() {
    let out = assert_child_passes("child_malformed_idle_timeout", &[("CTXALLOC_BACKGROUND_IDLE", "5")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("ignoring CTXALLOC_BACKGROUND_IDLE=\"5\": expected a duration").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn child_malformed_idle_timeout() {
    if !is_child("child_malformed_idle_timeout") {
        return;
    }
    burst();
    wait_until(60, "the background thread started", || background_threads() == 1);
}

/// Switches read in any case: `OFF` is understood (the pressure monitor is then refused, with
/// its own line), `disable` is no switch and says so — neither is a silent default.
#[test]
fn background_switch_reads_any_case_and_rejects_other_words() {
    let out = assert_child_passes(
        "child_idle_switches",
        &[("CTXALLOC_BACKGROUND", "OFF"), ("CTXALLOC_PRESSURE", "on"), ("CTXALLOC_SHOW_STATS", "maybe")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr
            .matches("ignoring CTXALLOC_PRESSURE=\"on\": expected no value while CTXALLOC_BACKGROUND=off")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("ignoring CTXALLOC_SHOW_STATS=\"maybe\": expected on or off").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("ctxalloc statistics"), "{stderr}");

    let out = assert_child_passes("child_idle_switches", &[("CTXALLOC_BACKGROUND", "disable")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("ignoring CTXALLOC_BACKGROUND=\"disable\": expected on or off").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn child_idle_switches() {
    if !is_child("child_idle_switches") {
        return;
    }
    burst();
}

/// `CTXALLOC_SHOW_STATS=1`: the statistics table on stderr at exit, once, after the test's own
/// output.
#[test]
fn show_stats_prints_the_table_at_exit() {
    let out = assert_child_passes("child_idle_switches", &[("CTXALLOC_SHOW_STATS", "1")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("ctxalloc statistics").count(), 1, "{stderr}");
    let table = &stderr[stderr.find("ctxalloc statistics").unwrap()..];
    assert!(table.contains("peak usage") && table.contains("idle purges"), "{table}");
    assert!(!stderr.contains("ignoring"), "{stderr}");
}
