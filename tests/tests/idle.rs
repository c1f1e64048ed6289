//! An idle program gives freed memory back: after a burst is freed, with no further allocator
//! call, the background thread purges what has waited the purge delay. Then the thread itself
//! goes, so a process whose threads all `pthread_exit` still ends. (Usage is process-wide: the
//! second scenario runs in a child process.)

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
