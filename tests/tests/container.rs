//! In a container: the limit taken from the cgroup (`CTXALLOC_LIMIT=auto`, `=N%`), followed
//! when the cgroup changes, and reclaim on memory pressure (a fake source the test fires, and
//! the kernel's own trigger where it allows one). Every scenario runs in a child process of
//! its own (the limit and the monitor are process-wide); fixture cgroup trees are reached
//! through `CTXALLOC_CGROUP_ROOT`. Nothing here creates or changes a real cgroup.

use ctxalloc::cgroup::{AutoLimit, Cgroups};
use ctxalloc::pressure::{self, Watching};
use ctxalloc::{ReclaimClass, ScanResult, ShrinkControl, Shrinker};
use ctxalloc_tests::{assert_child_passes, is_child, wait_until};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// A cache of 256 KiB buffers (vmap areas: a free gives their pages back exactly).
struct Cache {
    buffers: Mutex<Vec<Box<[u8]>>>,
    scans: AtomicUsize,
    scanned: AtomicUsize,
}

impl Shrinker for Cache {
    fn name(&self) -> &str {
        "pressure-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.buffers.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut b = self.buffers.lock().unwrap();
        let n = sc.nr_to_scan.min(b.len());
        let keep = b.len() - n;
        b.truncate(keep);
        self.scanned.fetch_add(n, Ordering::Relaxed);
        ScanResult::Freed(n)
    }
    fn batch(&self) -> usize {
        8
    }
}

/// A fixture cgroup tree under the temporary directory: a v2 cgroup `/app` with `memory.max`.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str, max: &str) -> Tree {
        let root = std::env::temp_dir().join(format!("ctxalloc-container-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::create_dir_all(root.join("sys/fs/cgroup/app")).unwrap();
        std::fs::write(root.join("proc/self/cgroup"), "0::/app\n").unwrap();
        std::fs::write(
            root.join("proc/self/mountinfo"),
            "30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        )
        .unwrap();
        let t = Tree(root);
        t.set_max(max);
        t
    }

    fn set_max(&self, max: &str) {
        // Write and rename: a reader never sees a half-written file.
        let tmp = self.0.join("sys/fs/cgroup/app/.memory.max");
        std::fs::write(&tmp, max).unwrap();
        std::fs::rename(tmp, self.0.join("sys/fs/cgroup/app/memory.max")).unwrap();
    }

    fn root(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn pressure_from_a_source_runs_the_shrinkers_and_gives_memory_back() {
    // Also with no background thread at all: an explicit `watch_fd` still starts the monitor.
    for env in [("CTXALLOC_PRESSURE", "off"), ("CTXALLOC_BACKGROUND", "off")] {
        assert_child_passes("child_pressure_source", &[env]);
    }
}

#[test]
fn child_pressure_source() {
    if !is_child("child_pressure_source") {
        return;
    }
    assert_eq!(ctxalloc::limit(), None, "no limit: pressure works without one");
    let cache = Arc::new(Cache {
        buffers: Mutex::new(Vec::new()),
        scans: AtomicUsize::new(0),
        scanned: AtomicUsize::new(0),
    });
    let _handle = ctxalloc::register_shrinker(cache.clone());
    cache.buffers.lock().unwrap().extend((0..256).map(|i| vec![i as u8; 256 << 10].into_boxed_slice()));
    let before = ctxalloc::usage();

    let fds = pipe();
    pressure::watch_fd(fds[0]);
    assert!(fire(fds), "the monitor answered");
    pressure::unwatch_fd();
    // SAFETY: our pipe, no longer watched.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }

    let s = ctxalloc::stats();
    assert_eq!((s.pressure_events, s.pressure_passes), (1, 1), "{s}");
    // (256 >> 5) · 4 / 2 = 16 buffers: part of the cache, not all of it.
    assert_eq!(cache.scanned.load(Ordering::Relaxed), 16, "{s}");
    assert_eq!(cache.buffers.lock().unwrap().len(), 240);
    assert!(s.pressure_given_bytes >= 16 * (256 << 10), "{s}");
    assert!(ctxalloc::usage() + 16 * (256 << 10) <= before, "usage {} → {}", before, ctxalloc::usage());
    assert!(s.to_string().contains("pressure passes"), "{s}");
}

#[test]
fn the_limit_comes_from_the_cgroup_and_follows_a_resize() {
    let tree = Tree::new("follow", "1073741824\n");
    let out = assert_child_passes(
        "child_limit_follows_the_cgroup",
        &[("CTXALLOC_LIMIT", "auto"), ("CTXALLOC_CGROUP_ROOT", tree.root()), ("FIXTURE", tree.root())],
    );
    // The fixture has no pressure file: pressure (wanted because the limit follows the
    // cgroup) is off, said in one line, and the rest works.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ctxalloc:")).collect();
    let want = format!(
        "ctxalloc: no reclaim on memory pressure: cannot register a trigger on {}/proc/pressure/memory: the file is missing",
        tree.root()
    );
    assert!(lines.len() == 1 && lines[0].starts_with(&want), "{stderr}");
}

#[test]
fn child_limit_follows_the_cgroup() {
    if !is_child("child_limit_follows_the_cgroup") {
        return;
    }
    let tree = PathBuf::from(std::env::var("FIXTURE").unwrap());
    let gib = 1usize << 30;
    assert_eq!(ctxalloc::limit(), Some(gib - gib / 10), "auto: 90 % of memory.max");
    let s = ctxalloc::stats();
    let origin = s.limit_origin.as_str();
    assert_eq!(
        origin,
        format!(
            "auto: memory.max 1024 MiB of {}/sys/fs/cgroup/app less 102 MiB for what is not the heap",
            tree.display()
        )
    );
    assert!(s.to_string().contains(&format!("= {origin}")), "stats show where the limit came from:\n{s}");
    // The container is resized: the monitor reads the cgroup again within a few seconds.
    let t = Tree(tree);
    t.set_max("536870912\n");
    let half = gib / 2;
    wait_until(60, "the new limit", || ctxalloc::limit() == Some(half - half / 10));
    assert!(ctxalloc::stats().limit_origin.as_str().starts_with("auto: memory.max 512 MiB"));
    std::mem::forget(t); // the parent removes the tree
                         // A limit set by hand is no longer followed.
    ctxalloc::set_limit(300 << 20).expect("a workable limit");
    assert_eq!(ctxalloc::stats().limit_origin.as_str(), "");
}

#[test]
fn a_percentage_of_the_machine_outside_a_memory_limited_cgroup() {
    let tree = Tree::new("percent", "max\n");
    std::fs::write(tree.0.join("proc/meminfo"), "MemTotal:        8388608 kB\n").unwrap();
    assert_child_passes("child_percent", &[("CTXALLOC_LIMIT", "25%"), ("CTXALLOC_CGROUP_ROOT", tree.root())]);
}

#[test]
fn child_percent() {
    if !is_child("child_percent") {
        return;
    }
    assert_eq!(ctxalloc::limit(), Some(2 << 30), "25 % of 8 GiB");
    let s = ctxalloc::stats();
    assert!(
        s.limit_origin.as_str().starts_with("25 % of the machine's 8192 MiB (MemTotal; no memory limit"),
        "{s}"
    );
}

#[test]
fn this_machine_gives_what_its_files_say() {
    // Whatever this machine's cgroups say, the environment gives the same as the API.
    let want = Cgroups::system().resolve(AutoLimit::Percent(50)).expect("MemTotal at least");
    let limit = want.limit.to_string();
    let origin = want.origin().to_string();
    assert_child_passes(
        "child_this_machine",
        &[("CTXALLOC_LIMIT", "50%"), ("WANT_LIMIT", &limit), ("WANT_ORIGIN", &origin)],
    );
}

#[test]
fn child_this_machine() {
    if !is_child("child_this_machine") {
        return;
    }
    let want: usize = std::env::var("WANT_LIMIT").unwrap().parse().unwrap();
    assert_eq!(ctxalloc::limit(), Some(want));
    assert_eq!(ctxalloc::stats().limit_origin.as_str(), std::env::var("WANT_ORIGIN").unwrap());
}

/// `max`, garbage and a missing tree: one line each, and no limit.
#[test]
fn no_cgroup_limit_is_one_line_and_no_limit() {
    let max = Tree::new("max", "max\n");
    let garbage = Tree::new("garbage", "garbage\n");
    let missing = std::env::temp_dir().join(format!("ctxalloc-container-{}-missing", std::process::id()));
    for (root, says) in [
        (max.root(), "no memory limit".to_string()),
        (garbage.root(), format!("{}/sys/fs/cgroup/app/memory.max holds \"garbage\"", garbage.root())),
        (missing.to_str().unwrap(), "not in a cgroup with a memory controller".to_string()),
    ] {
        let out = assert_child_passes(
            "child_no_limit",
            &[("CTXALLOC_LIMIT", "auto"), ("CTXALLOC_CGROUP_ROOT", root)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ctxalloc:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(lines[0].starts_with("ctxalloc: CTXALLOC_LIMIT=auto: no limit: "), "{stderr}");
        assert!(lines[0].contains(&says), "{stderr}");
    }
}

#[test]
fn child_no_limit() {
    if !is_child("child_no_limit") {
        return;
    }
    assert_eq!(ctxalloc::limit(), None);
}

/// Bad values: one line each naming the variable, nothing silently defaulted.
#[test]
fn bad_values_are_warned_about() {
    for (var, value, says) in [
        ("CTXALLOC_LIMIT", "0%", "expected a percentage from 1% to 100%"),
        ("CTXALLOC_LIMIT", "150 %", "expected a percentage from 1% to 100%"),
        ("CTXALLOC_PRESSURE", "sometimes", "expected some:THRESHOLD/WINDOW"),
        ("CTXALLOC_PRESSURE", "some:1s/100ms", "expected a window of 500ms to 10s"),
        ("CTXALLOC_PRESSURE", "full:3s/2s", "expected a threshold above 0 and not above the window"),
    ] {
        let out = assert_child_passes("child_no_limit", &[(var, value)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = format!("ctxalloc: ignoring {var}={value:?}: {says}");
        assert_eq!(stderr.matches(&line).count(), 1, "{line}\n{stderr}");
        assert_eq!(stderr.lines().filter(|l| l.starts_with("ctxalloc:")).count(), 1, "{stderr}");
    }
}

/// The kernel's own trigger, through the monitor: registered where the kernel allows it,
/// else reported in one line (and the test says why it did not run further).
#[test]
fn the_monitor_registers_the_kernel_trigger_or_says_why_not() {
    let out = assert_child_passes("child_kernel_trigger", &[("CTXALLOC_PRESSURE", "on")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("refused:") {
        println!("not run further: {}", stdout.lines().find(|l| l.contains("refused:")).unwrap());
        assert_eq!(
            stderr.matches("ctxalloc: no reclaim on memory pressure: cannot register a trigger").count(),
            1,
            "{stderr}"
        );
    } else {
        assert!(stdout.contains("watching:"), "{stdout}");
        assert!(!stderr.contains("ctxalloc:"), "{stderr}");
    }
}

#[test]
fn child_kernel_trigger() {
    if !is_child("child_kernel_trigger") {
        return;
    }
    // Any allocation's slow path starts the monitor; it registers the trigger at once.
    let v: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 100 << 10]).collect();
    drop(v);
    wait_until(60, "the monitor registered or was refused", || pressure::status() != Watching::Nothing);
    match pressure::status() {
        Watching::Trigger { file } => {
            assert!(file.ends_with("memory.pressure") || file == "/proc/pressure/memory", "{file}");
            println!("watching: {file}");
        }
        Watching::Refused { file, why } => println!("refused: {file}: {why}"),
        Watching::Nothing => unreachable!(),
    }
    pressure::unwatch();
    wait_until(60, "the trigger is dropped", || pressure::status() == Watching::Nothing);
}

/// Pipes for the fake pressure source.
fn pipe() -> [i32; 2] {
    let mut fds = [0; 2];
    // SAFETY: fills two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    fds
}

/// Fires one event into `fds` and waits for the allocator's answer.
fn fire(fds: [i32; 2]) -> bool {
    let seen = pressure::handled();
    // SAFETY: one byte from a live buffer into our pipe.
    let wrote = unsafe { libc::write(fds[1], b"!".as_ptr().cast(), 1) } == 1;
    wrote && pressure::wait(seen, Duration::from_secs(60)) != seen
}

/// The monitor does not survive `fork`; the child's own starts when wanted and answers the
/// child's events, and the parent's keeps answering the parent's.
#[test]
fn after_fork_the_child_watches_with_a_monitor_of_its_own() {
    assert_child_passes("child_fork", &[("CTXALLOC_PRESSURE", "off")]);
}

#[test]
fn child_fork() {
    if !is_child("child_fork") {
        return;
    }
    let parent = pipe();
    pressure::watch_fd(parent[0]);
    assert!(fire(parent), "the parent's monitor answers");
    // SAFETY: the child allocates, starts a thread through the allocator's own monitor, and
    // leaves with `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let mine = pipe();
        pressure::watch_fd(mine[0]);
        let ok = fire(mine) && ctxalloc::stats().pressure_events == 2;
        // SAFETY: ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for our child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's monitor answered: {status:#x}"
    );
    assert!(fire(parent), "the parent's monitor still answers");
    assert_eq!(
        ctxalloc::stats().pressure_events,
        2,
        "the child's event was the child's: {}",
        ctxalloc::stats()
    );
    pressure::unwatch_fd();
}
