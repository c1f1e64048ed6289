//! The process's memory limit, as its cgroups set it: `/proc/self/cgroup` names the cgroup in
//! each hierarchy, `/proc/self/mountinfo` where each hierarchy is mounted, and the limit files
//! along the path from the process's cgroup up to the mount's root say how much the group may
//! use. The smallest wins: a parent's limit binds its children.
//!
//! cgroup v2 (the unified hierarchy): `memory.max` (the kernel's OOM line) and `memory.high`
//! (where the kernel starts throttling and reclaiming the group hard); `"max"` means none.
//! cgroup v1: `memory.limit_in_bytes`, whose "none" is a huge number (`PAGE_COUNTER_MAX`
//! pages): any value from 2^62 up counts as none. A hybrid system (v1 memory controller and a
//! v2 tree, as this project's CI machines have) is read in both; whichever limits is used.

// Errors carry their path by value: they are built inside the allocator's first allocation,
// where nothing may be boxed.
#![allow(clippy::result_large_err)]

use super::fs::{for_each_line, read_file, ReadError, StackPath};
use std::fmt;

/// Values from this up mean "no limit" (cgroup v1 writes `PAGE_COUNTER_MAX · PAGE_SIZE`).
const V1_UNLIMITED: u64 = 1 << 62;

/// Which file a limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitFile {
    /// cgroup v2 `memory.max`.
    Max,
    /// cgroup v2 `memory.high`.
    High,
    /// cgroup v1 `memory.limit_in_bytes`.
    V1,
}

impl LimitFile {
    /// The file's name.
    pub fn name(self) -> &'static str {
        match self {
            LimitFile::Max => "memory.max",
            LimitFile::High => "memory.high",
            LimitFile::V1 => "memory.limit_in_bytes",
        }
    }
}

/// The binding memory limit of the process's cgroups.
#[derive(Clone, Copy)]
pub struct CgroupLimit {
    /// The limit, in bytes.
    pub bytes: u64,
    /// The file that set it.
    pub file: LimitFile,
    dir: StackPath,
}

impl CgroupLimit {
    /// The cgroup directory whose file set the limit (under the root the [`Cgroups`] reads).
    pub fn dir(&self) -> &str {
        std::str::from_utf8(self.dir.as_bytes()).unwrap_or("(not UTF-8)")
    }
}

impl fmt::Debug for CgroupLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} of {}", self.file.name(), self.bytes, self.dir)
    }
}

/// Why no cgroup limit could be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CgroupErrorKind {
    /// The process is in no cgroup hierarchy with a memory controller (`/proc/self/cgroup`
    /// missing, or naming none).
    NotInCgroup,
    /// Every limit file along the path says "no limit" (or there is none).
    Unlimited,
    /// A limit file holds something that is not a size.
    Malformed,
    /// A file could not be read.
    Unreadable,
    /// The limit it gives is below [`MIN_LIMIT`](crate::MIN_LIMIT).
    TooSmall,
}

/// Why no cgroup limit could be had, with the file or directory concerned; `Display` is one
/// line.
#[derive(Clone, Copy)]
pub struct CgroupError {
    /// What went wrong.
    pub kind: CgroupErrorKind,
    path: StackPath,
    /// A Malformed file's first bytes, or the errno of an Unreadable one.
    detail: [u8; 24],
    detail_len: usize,
    errno: i32,
    /// A TooSmall limit.
    limit: usize,
}

impl CgroupError {
    fn new(kind: CgroupErrorKind, path: &StackPath) -> CgroupError {
        CgroupError { kind, path: *path, detail: [0; 24], detail_len: 0, errno: 0, limit: 0 }
    }

    fn malformed(path: &StackPath, content: &[u8]) -> CgroupError {
        let mut e = CgroupError::new(CgroupErrorKind::Malformed, path);
        let n = content.len().min(e.detail.len());
        e.detail[..n].copy_from_slice(&content[..n]);
        e.detail_len = n;
        e
    }

    fn read(path: &StackPath, r: ReadError) -> CgroupError {
        let mut e = CgroupError::new(CgroupErrorKind::Unreadable, path);
        e.errno = match r {
            ReadError::Os(errno) => errno,
            _ => 0,
        };
        e
    }

    /// The file or directory concerned.
    pub fn path(&self) -> &str {
        std::str::from_utf8(self.path.as_bytes()).unwrap_or("(not UTF-8)")
    }
}

impl fmt::Debug for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CgroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.path;
        match self.kind {
            CgroupErrorKind::NotInCgroup => write!(f, "not in a cgroup with a memory controller ({p})"),
            CgroupErrorKind::Unlimited => {
                write!(f, "no memory limit (memory.max/high or memory.limit_in_bytes) from {p} up")
            }
            CgroupErrorKind::Malformed => {
                // Written inside the allocator: no lossy conversion (it would allocate).
                let d = &self.detail[..self.detail_len];
                let shown = match std::str::from_utf8(d) {
                    Ok(s) => s,
                    // Cut inside a character, or not text: what is text of it.
                    Err(e) => std::str::from_utf8(&d[..e.valid_up_to()]).unwrap_or(""),
                };
                write!(f, "{p} holds {:?}, not a size or \"max\"", shown.trim_ascii())
            }
            CgroupErrorKind::Unreadable if self.errno != 0 => {
                write!(f, "cannot read {p} (errno {})", self.errno)
            }
            CgroupErrorKind::Unreadable => write!(f, "cannot read {p} (too long)"),
            CgroupErrorKind::TooSmall => {
                write!(f, "{}", ctxalloc_core::LimitError { limit: self.limit, min: crate::MIN_LIMIT })
            }
        }
    }
}

impl std::error::Error for CgroupError {}

/// Where the cgroup and proc filesystems are: `/` for the process itself; tests point it at a
/// fixture tree holding `proc/self/cgroup`, optionally `proc/self/mountinfo` and
/// `proc/meminfo`, and the cgroup directories the mountinfo names (or, without one,
/// `sys/fs/cgroup` for v2 and `sys/fs/cgroup/memory` for v1).
///
/// ```
/// let limit = ctxalloc::cgroup::Cgroups::system().memory_limit();
/// match limit {
///     Ok(l) => println!("{} bytes from {} of {}", l.bytes, l.file.name(), l.dir()),
///     Err(e) => println!("none: {e}"),
/// }
/// ```
#[derive(Clone, Copy)]
pub struct Cgroups {
    /// The prefix of every path read, without a trailing `/` (empty for the system).
    root: StackPath,
}

/// The root [`Cgroups::system`] reads under; unset: `/`. Set once, at the first allocation.
static SYSTEM_ROOT: std::sync::OnceLock<StackPath> = std::sync::OnceLock::new();

/// One hierarchy the process is in.
struct Hierarchy {
    v2: bool,
    /// The process's cgroup path in the hierarchy (from `/proc/self/cgroup`).
    path: StackPath,
    /// Where the hierarchy is mounted (under the root) and the hierarchy's directory there.
    mount: StackPath,
    mount_root: StackPath,
}

impl Cgroups {
    /// The process's own: under `/`, or under `CTXALLOC_CGROUP_ROOT` if the environment
    /// names another root (a test's fixture tree, or a cgroup filesystem mounted elsewhere).
    pub fn system() -> Cgroups {
        Cgroups { root: SYSTEM_ROOT.get().copied().unwrap_or_default() }
    }

    /// `CTXALLOC_CGROUP_ROOT`, at the first allocation; `false` if it is too long.
    pub(crate) fn set_system_root(root: &[u8]) -> bool {
        root_path(root).is_some_and(|p| SYSTEM_ROOT.set(p).is_ok())
    }

    /// A tree under `root` (for tests); `None` if the path is too long (over 255 bytes) or not
    /// UTF-8.
    ///
    /// ```
    /// use ctxalloc::cgroup::{Cgroups, LimitFile};
    /// let root = std::env::temp_dir().join(format!("cg-doc-{}", std::process::id()));
    /// std::fs::create_dir_all(root.join("proc/self")).unwrap();
    /// std::fs::create_dir_all(root.join("sys/fs/cgroup/job")).unwrap();
    /// std::fs::write(root.join("proc/self/cgroup"), "0::/job\n").unwrap();
    /// std::fs::write(root.join("sys/fs/cgroup/job/memory.max"), "268435456\n").unwrap();
    /// let l = Cgroups::at(&root).unwrap().memory_limit().unwrap();
    /// assert_eq!((l.bytes, l.file), (256 << 20, LimitFile::Max));
    /// std::fs::remove_dir_all(&root).unwrap();
    /// ```
    pub fn at(root: &std::path::Path) -> Option<Cgroups> {
        Some(Cgroups { root: root_path(root.to_str()?.as_bytes())? })
    }

    fn path(&self, parts: &[&[u8]]) -> Option<StackPath> {
        let mut p = self.root;
        parts.iter().all(|part| p.push(part)).then_some(p)
    }

    /// The binding limit: the smallest `memory.max`, `memory.high` (v2) or
    /// `memory.limit_in_bytes` (v1) from the process's cgroup up to each hierarchy's root.
    pub fn memory_limit(&self) -> Result<CgroupLimit, CgroupError> {
        let (cgroup, found) = self.hierarchies()?;
        let mut best: Option<CgroupLimit> = None;
        let mut last_dir = cgroup;
        for h in found.iter().flatten() {
            last_dir = self.walk(h, &mut best)?;
        }
        best.ok_or_else(|| CgroupError::new(CgroupErrorKind::Unlimited, &last_dir))
    }

    /// The hierarchies the process is in — the unified one (v2) first, then v1's memory
    /// controller — with where each is mounted; and the `/proc/self/cgroup` read.
    fn hierarchies(&self) -> Result<(StackPath, [Option<Hierarchy>; 2]), CgroupError> {
        let cgroup = self.path(&[b"/proc/self/cgroup"]).unwrap_or_default();
        let mut buf = [0u8; 4096];
        let text = match read_file(&cgroup, &mut buf) {
            Ok(t) => t,
            Err(ReadError::Missing) => return Err(CgroupError::new(CgroupErrorKind::NotInCgroup, &cgroup)),
            Err(r) => return Err(CgroupError::read(&cgroup, r)),
        };
        let mut found: [Option<Hierarchy>; 2] = [None, None];
        for line in text.split(|&b| b == b'\n') {
            let mut f = line.splitn(3, |&b| b == b':');
            let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
            let v2 = id == b"0" && controllers.is_empty();
            let v1 = controllers.split(|&b| b == b',').any(|c| c == b"memory");
            let slot = &mut found[usize::from(v1)];
            if (v2 || v1) && slot.is_none() {
                let Some(path) = StackPath::of(&[path]) else { continue };
                let mount: &[u8] = if v2 { b"/sys/fs/cgroup" } else { b"/sys/fs/cgroup/memory" };
                *slot = Some(Hierarchy {
                    v2,
                    path,
                    mount: StackPath::of(&[mount]).unwrap_or_default(),
                    mount_root: StackPath::of(&[b"/"]).unwrap_or_default(),
                });
            }
        }
        if found.iter().all(Option::is_none) {
            return Err(CgroupError::new(CgroupErrorKind::NotInCgroup, &cgroup));
        }
        self.find_mounts(&mut found);
        Ok((cgroup, found))
    }

    /// The process's cgroup directory in `h` (under the root), and the length of its mount's
    /// path, above which the walk to the root stops; `None` if the path is too long.
    fn dir_of(&self, h: &Hierarchy) -> Option<(StackPath, usize)> {
        let rel = relative(h.path.as_bytes(), h.mount_root.as_bytes());
        let mut dir = self.path(&[h.mount.as_bytes()])?;
        let floor = dir.len();
        if !rel.is_empty() && rel != b"/" && !dir.push(rel.strip_suffix(b"/").unwrap_or(rel)) {
            return None;
        }
        Some((dir, floor))
    }

    /// Replaces the default mount points by what `/proc/self/mountinfo` says, if it exists.
    fn find_mounts(&self, found: &mut [Option<Hierarchy>; 2]) {
        let Some(info) = self.path(&[b"/proc/self/mountinfo"]) else { return };
        let (mut v2_done, mut v1_done) = (false, false);
        let _ = for_each_line(&info, |line| {
            // id parent major:minor root mount-point options [optional…] - fstype source super
            let mut fields = line.split(|&b| b == b' ');
            let (Some(_), Some(_), Some(_), Some(root), Some(point)) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return true;
            };
            let mut rest = fields.skip_while(|f| *f != b"-").skip(1);
            let (Some(fstype), Some(_), Some(opts)) = (rest.next(), rest.next(), rest.next()) else {
                return true;
            };
            let is_v2 = fstype == b"cgroup2";
            let is_v1 = fstype == b"cgroup" && opts.split(|&b| b == b',').any(|o| o == b"memory");
            let [v2, v1] = found;
            for (h, done, want) in [(v2, &mut v2_done, is_v2), (v1, &mut v1_done, is_v1)] {
                if let (Some(h), false, true) = (h.as_mut(), *done, want) {
                    if let (Some(m), Some(r)) = (unescape(point), unescape(root)) {
                        h.mount = m;
                        h.mount_root = r;
                        *done = true;
                    }
                }
            }
            !(v2_done && v1_done)
        });
    }

    /// Reads the limit files from the process's cgroup of `h` up to its mount, keeping the
    /// smallest in `best`; returns the directory it started from.
    fn walk(&self, h: &Hierarchy, best: &mut Option<CgroupLimit>) -> Result<StackPath, CgroupError> {
        let Some((mut dir, floor)) = self.dir_of(h) else {
            return Err(CgroupError::read(&h.mount, ReadError::TooLong));
        };
        let start = dir;
        let files: &[LimitFile] = if h.v2 { &[LimitFile::Max, LimitFile::High] } else { &[LimitFile::V1] };
        loop {
            for &file in files {
                let mut path = dir;
                if !path.push(b"/") || !path.push(file.name().as_bytes()) {
                    return Err(CgroupError::read(&dir, ReadError::TooLong));
                }
                let mut buf = [0u8; 64];
                let content = match read_file(&path, &mut buf) {
                    Ok(c) => c,
                    Err(ReadError::Missing) => continue,
                    Err(ReadError::TooLong) => return Err(CgroupError::malformed(&path, &buf)),
                    Err(r) => return Err(CgroupError::read(&path, r)),
                };
                match parse_limit_value(content) {
                    Err(()) => return Err(CgroupError::malformed(&path, content)),
                    Ok(None) => {}
                    Ok(Some(bytes)) => {
                        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
                            *best = Some(CgroupLimit { bytes, file, dir });
                        }
                    }
                }
            }
            if !dir.pop_above(floor) {
                return Ok(start);
            }
        }
    }

    /// The machine's memory: `MemTotal` of `/proc/meminfo`, in bytes.
    ///
    /// ```
    /// # if std::path::Path::new("/proc/meminfo").exists() {
    /// let total = ctxalloc::cgroup::Cgroups::system().physical_memory().unwrap();
    /// assert!(total >= 1 << 20);
    /// # }
    /// ```
    pub fn physical_memory(&self) -> Option<u64> {
        let path = self.path(&[b"/proc/meminfo"])?;
        let mut total = None;
        for_each_line(&path, |line| {
            if let Some(rest) = line.strip_prefix(b"MemTotal:") {
                let rest = rest.trim_ascii();
                let kb = rest.strip_suffix(b"kB").unwrap_or(rest).trim_ascii();
                total = parse_u64(kb).and_then(|k| k.checked_mul(1024));
                return false;
            }
            true
        })
        .ok()?;
        total
    }

    /// The file a memory-pressure trigger goes on: the cgroup's own `memory.pressure` (v2) if
    /// the process's v2 cgroup has one, else the system-wide `/proc/pressure/memory`.
    pub(crate) fn pressure_file(&self) -> StackPath {
        self.cgroup_pressure_file().or_else(|| self.path(&[b"/proc/pressure/memory"])).unwrap_or_default()
    }

    fn cgroup_pressure_file(&self) -> Option<StackPath> {
        let (_, found) = self.hierarchies().ok()?;
        let (mut p, _) = self.dir_of(found[0].as_ref()?)?;
        if !p.push(b"/memory.pressure") {
            return None;
        }
        super::fs::Fd::open(&p, libc::O_RDONLY).ok().map(|_| p)
    }
}

/// A root to read under: without its trailing `/`s, at most 255 bytes (so that the paths built
/// under it fit).
fn root_path(root: &[u8]) -> Option<StackPath> {
    let mut n = root.len();
    while n > 0 && root[n - 1] == b'/' {
        n -= 1;
    }
    StackPath::of(&[&root[..n]]).filter(|p| p.len() <= 255)
}

/// The cgroup path `path` relative to a mount of the hierarchy's directory `root`: all of it
/// under a mount of `/`; the rest under a mount of one of its ancestors; nothing (the mount
/// itself) otherwise — a namespaced or bind-mounted view whose root is the process's cgroup.
fn relative<'a>(path: &'a [u8], root: &[u8]) -> &'a [u8] {
    if root == b"/" {
        return path;
    }
    match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest[0] == b'/' => rest,
        _ => b"",
    }
}

/// A mountinfo field with its octal escapes (`\040` for a blank) undone.
fn unescape(field: &[u8]) -> Option<StackPath> {
    let mut p = StackPath::new();
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = field[i + 1..i + 4].iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            if !p.push(&[v as u8]) {
                return None;
            }
            i += 4;
        } else {
            if !p.push(&[b]) {
                return None;
            }
            i += 1;
        }
    }
    Some(p)
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// A limit file's value: `Ok(None)` for no limit (`max`, or v1's huge number).
fn parse_limit_value(v: &[u8]) -> Result<Option<u64>, ()> {
    let v = v.trim_ascii();
    if v == b"max" {
        return Ok(None);
    }
    match parse_u64(v) {
        Some(n) if n >= V1_UNLIMITED => Ok(None),
        Some(n) => Ok(Some(n)),
        None => Err(()),
    }
}

/// How a limit is taken from the container: `CTXALLOC_LIMIT=auto` or `=80%`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoLimit {
    /// The cgroup's limit less room for what is not the heap: 10 % of it, at least 16 MiB and
    /// at most half. No cgroup limit: no limit.
    Auto,
    /// This percentage (1–100) of the cgroup's limit or, where the process's cgroups set none,
    /// of the machine's memory (`MemTotal`).
    Percent(u8),
}

impl AutoLimit {
    /// `auto` (either case) or `N%` (1 ≤ N ≤ 100, blanks allowed around): `None` for
    /// anything that is neither — a plain size, say —, `Some(Err)` for a percentage out of
    /// range or malformed (`0%`, `150%`, `1.5%`).
    ///
    /// ```
    /// use ctxalloc::cgroup::AutoLimit;
    /// assert_eq!(AutoLimit::parse(b"AUTO"), Some(Ok(AutoLimit::Auto)));
    /// assert_eq!(AutoLimit::parse(b" 80 % "), Some(Ok(AutoLimit::Percent(80))));
    /// assert_eq!(AutoLimit::parse(b"150%"), Some(Err(())));
    /// assert_eq!(AutoLimit::parse(b"512M"), None);
    /// ```
    pub fn parse(v: &[u8]) -> Option<Result<AutoLimit, ()>> {
        let v = v.trim_ascii();
        if v.eq_ignore_ascii_case(b"auto") {
            return Some(Ok(AutoLimit::Auto));
        }
        let n = v.strip_suffix(b"%")?.trim_ascii();
        Some(match parse_u64(n) {
            Some(p @ 1..=100) => Ok(AutoLimit::Percent(p as u8)),
            _ => Err(()),
        })
    }

    /// What a fraction leaves of a cgroup limit of `bytes`.
    fn apply(self, bytes: u64) -> u64 {
        match self {
            AutoLimit::Auto => bytes - headroom(bytes),
            AutoLimit::Percent(p) => bytes / 100 * u64::from(p) + bytes % 100 * u64::from(p) / 100,
        }
    }
}

/// The form `CTXALLOC_LIMIT` takes: `auto`, `80%`.
impl fmt::Display for AutoLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AutoLimit::Auto => f.write_str("auto"),
            AutoLimit::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What `auto` leaves free of a cgroup limit of `bytes` for the rest of what the cgroup
/// charges: other processes' and this one's non-heap memory — thread stacks, code and data of
/// the binary and its libraries, kernel memory (socket buffers, page tables) — and the page
/// cache the group's file I/O keeps. The page cache is reclaimable by the kernel, so it needs
/// only its working set; 10 % of the limit (at least 16 MiB, at most half) covers a
/// single-process container's stacks and code with room for that.
fn headroom(bytes: u64) -> u64 {
    (bytes / 10).max(16 << 20).min(bytes / 2)
}

/// A limit worked out from the container, and the line saying how.
#[derive(Clone, Copy, Debug)]
pub struct Resolved {
    /// The limit, in bytes.
    pub limit: usize,
    origin: ctxalloc_core::LimitOrigin,
}

impl Resolved {
    /// How the limit was worked out ("auto: 90 % of memory.max 2048 MiB of …"), as
    /// [`stats`](crate::stats) shows it.
    pub fn origin(&self) -> &str {
        self.origin.as_str()
    }
}

impl Cgroups {
    /// The limit `how` takes from these cgroups (or, for a percentage outside a
    /// memory-limited cgroup, from the machine's memory). Reads files only; sets nothing.
    ///
    /// ```
    /// use ctxalloc::cgroup::{AutoLimit, Cgroups};
    /// // A percentage of something is always there: the cgroup's limit or the machine's memory.
    /// let r = Cgroups::system().resolve(AutoLimit::Percent(50)).expect("readable");
    /// assert!(r.limit > 0);
    /// println!("{} bytes = {}", r.limit, r.origin());
    /// ```
    pub fn resolve(&self, how: AutoLimit) -> Result<Resolved, CgroupError> {
        let mut text = ctxalloc_core::report::ReportBuf::new();
        let w: &mut dyn fmt::Write = &mut text;
        let limit = match (self.memory_limit(), how) {
            (Ok(l), _) => {
                let limit = how.apply(l.bytes);
                let _ = match how {
                    AutoLimit::Auto => write!(
                        w,
                        "auto: {} {} MiB of {} less {} MiB for what is not the heap",
                        l.file.name(),
                        l.bytes >> 20,
                        l.dir,
                        (l.bytes - limit) >> 20
                    ),
                    AutoLimit::Percent(p) => {
                        write!(w, "{p} % of {} {} MiB of {}", l.file.name(), l.bytes >> 20, l.dir)
                    }
                };
                limit
            }
            (Err(e), AutoLimit::Percent(p))
                if matches!(e.kind, CgroupErrorKind::NotInCgroup | CgroupErrorKind::Unlimited) =>
            {
                let Some(total) = self.physical_memory() else {
                    let meminfo = self.path(&[b"/proc/meminfo"]).unwrap_or_default();
                    return Err(CgroupError::read(&meminfo, ReadError::Missing));
                };
                let _ = write!(w, "{p} % of the machine's {} MiB (MemTotal; {e})", total >> 20);
                how.apply(total)
            }
            (Err(e), _) => return Err(e),
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        if ctxalloc_core::LimitError::check(limit, crate::MIN_LIMIT).is_err() {
            let mut e = CgroupError::new(CgroupErrorKind::TooSmall, &StackPath::new());
            e.limit = limit;
            return Err(e);
        }
        Ok(Resolved { limit, origin: ctxalloc_core::LimitOrigin::new(text.as_str()) })
    }
}

/// The `AutoLimit` the current limit follows (re-read by the monitor thread): 0 none, 255
/// `Auto`, else the percentage. Any thread, SeqCst (the monitor's exit decision reads it).
static FOLLOWING: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
/// A failed re-read was reported (once until one succeeds again). Monitor thread.
static REREAD_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn encode(how: AutoLimit) -> u8 {
    match how {
        AutoLimit::Auto => 255,
        AutoLimit::Percent(p) => p,
    }
}

fn following() -> Option<AutoLimit> {
    match FOLLOWING.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        255 => Some(AutoLimit::Auto),
        p => Some(AutoLimit::Percent(p)),
    }
}

/// Sets the memory limit from the process's cgroup (see [`AutoLimit`] and
/// [`Cgroups::resolve`]) and follows it: the monitor thread reads the cgroup again every
/// [`REREAD_SECONDS`](crate::pressure::REREAD_SECONDS) and sets the new limit when the
/// container was resized, until [`set_limit`](crate::set_limit) sets one by hand. On error the
/// limit is left as it was. What `CTXALLOC_LIMIT=auto` and `=N%` do; [`stats`](crate::stats)
/// says where the limit came from.
///
/// ```
/// use ctxalloc::cgroup::{set_limit_from_cgroup, AutoLimit};
/// match set_limit_from_cgroup(AutoLimit::Auto) {
///     Ok(limit) => println!("limit {limit} bytes: {}", ctxalloc::stats().limit_origin.as_str()),
///     Err(e) => println!("no container limit: {e}"),
/// }
/// ctxalloc::remove_limit();
/// ```
pub fn set_limit_from_cgroup(how: AutoLimit) -> Result<usize, CgroupError> {
    let r = Cgroups::system().resolve(how)?;
    apply(how, &r);
    // The background reclaimer for the limit, and the monitor that follows it.
    crate::platform::start_background();
    Ok(r.limit)
}

fn apply(how: AutoLimit, r: &Resolved) {
    FOLLOWING.store(encode(how), std::sync::atomic::Ordering::SeqCst);
    // `resolve` refused a limit below MIN_LIMIT: this one is accepted.
    let _ = crate::CORE.set_limit_from(r.limit, r.origin());
}

/// `CTXALLOC_LIMIT=auto` or `=N%`, at the first allocation (nothing allocates here): sets the
/// limit or says in one line why there is none.
pub(crate) fn from_environment(how: AutoLimit) {
    match Cgroups::system().resolve(how) {
        Ok(r) => {
            apply(how, &r);
            // The monitor that follows the limit starts with the background thread, from the
            // next allocation's slow path (threads are not started inside this one).
            crate::CORE.want_background();
        }
        Err(e) => {
            crate::platform::report(format_args!("ctxalloc: CTXALLOC_LIMIT={how}: no limit: {e}\n"));
        }
    }
}

/// A limit set by hand: stop following the cgroup.
pub(crate) fn forget() {
    FOLLOWING.store(0, std::sync::atomic::Ordering::SeqCst);
}

/// Whether the limit follows the cgroup (the monitor thread then re-reads it).
pub(crate) fn is_following() -> bool {
    following().is_some()
}

/// The monitor thread's re-read: a new limit if the cgroup's changed; a failure is reported
/// once and keeps the old limit.
pub(crate) fn reread() {
    let Some(how) = following() else { return };
    match Cgroups::system().resolve(how) {
        Ok(r) => {
            REREAD_WARNED.store(false, std::sync::atomic::Ordering::SeqCst);
            if crate::CORE.limit() != Some(r.limit) && following() == Some(how) {
                apply(how, &r);
            }
        }
        Err(e) => {
            if !REREAD_WARNED.swap(true, std::sync::atomic::Ordering::SeqCst) {
                crate::platform::report(format_args!(
                    "ctxalloc: re-reading the cgroup limit: {e}; the limit stays\n"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_values() {
        assert_eq!(parse_limit_value(b"max\n"), Ok(None));
        assert_eq!(parse_limit_value(b"2147483648\n"), Ok(Some(2 << 30)));
        assert_eq!(parse_limit_value(b"9223372036854771712\n"), Ok(None), "v1's unlimited");
        for bad in [&b"garbage"[..], b"", b"-1", b"12 MB", b"99999999999999999999999"] {
            assert_eq!(parse_limit_value(bad), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn paths_relative_to_a_mount() {
        assert_eq!(relative(b"/a/b", b"/"), b"/a/b");
        assert_eq!(relative(b"/docker/x/y", b"/docker/x"), b"/y");
        assert_eq!(relative(b"/docker/x", b"/docker/x"), b"");
        assert_eq!(relative(b"/docker/xy", b"/docker/x"), b"", "a prefix of a name is not a parent");
        assert_eq!(unescape(b"/mnt/a\\040b").unwrap().as_bytes(), b"/mnt/a b");
        assert_eq!(unescape(b"/x\\04").unwrap().as_bytes(), b"/x\\04", "not an escape");
    }

    /// A fixture tree: `(path under the root, contents)`.
    struct Fixture(std::path::PathBuf);

    impl Fixture {
        fn new(name: &str, files: &[(&str, &str)]) -> Fixture {
            let root = std::env::temp_dir().join(format!("ctxalloc-cg-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for (path, text) in files {
                let p = root.join(path);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, text).unwrap();
            }
            std::fs::create_dir_all(&root).unwrap();
            Fixture(root)
        }

        fn cgroups(&self) -> Cgroups {
            Cgroups::at(&self.0).unwrap()
        }

        fn dir(&self, rel: &str) -> String {
            format!("{}{rel}", self.0.display())
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MEMINFO: (&str, &str) = ("proc/meminfo", "MemTotal:        4194304 kB\nMemFree:  1 kB\n");
    const V2_MOUNT: &str = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn v2_the_smallest_limit_along_the_path_wins() {
        let f = Fixture::new(
            "v2-nested",
            &[
                ("proc/self/cgroup", "0::/app.slice/web\n"),
                ("proc/self/mountinfo", V2_MOUNT),
                ("sys/fs/cgroup/app.slice/web/memory.max", "max\n"),
                ("sys/fs/cgroup/app.slice/web/memory.high", "3221225472\n"),
                ("sys/fs/cgroup/app.slice/memory.max", "2147483648\n"),
                ("sys/fs/cgroup/app.slice/memory.high", "max\n"),
            ],
        );
        let l = f.cgroups().memory_limit().unwrap();
        assert_eq!((l.bytes, l.file), (2 << 30, LimitFile::Max), "{l:?}");
        assert_eq!(l.dir(), f.dir("/sys/fs/cgroup/app.slice"), "the parent's limit binds the child");
        let r = f.cgroups().resolve(AutoLimit::Auto).unwrap();
        assert_eq!(r.limit, (2 << 30) - (2 << 30) / 10, "auto leaves 10 %");
        assert!(r.origin().starts_with("auto: memory.max 2048 MiB of "), "{}", r.origin());
        assert!(r.origin().ends_with("app.slice less 204 MiB for what is not the heap"), "{}", r.origin());
        let r = f.cgroups().resolve(AutoLimit::Percent(80)).unwrap();
        assert_eq!(r.limit, (2u64 << 30) as usize / 100 * 80 + (2u64 << 30) as usize % 100 * 80 / 100);
        assert!(r.origin().starts_with("80 % of memory.max 2048 MiB of"), "{}", r.origin());
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn v2_memory_high_counts_and_a_small_limit_keeps_half() {
        let f = Fixture::new(
            "v2-high",
            &[
                ("proc/self/cgroup", "0::/job\n"),
                ("sys/fs/cgroup/job/memory.max", "100663296\n"),
                ("sys/fs/cgroup/job/memory.high", "25165824\n"),
            ],
        );
        // No mountinfo: the default mount point.
        let l = f.cgroups().memory_limit().unwrap();
        assert_eq!((l.bytes, l.file), (24 << 20, LimitFile::High));
        let r = f.cgroups().resolve(AutoLimit::Auto).unwrap();
        assert_eq!(r.limit, 12 << 20, "16 MiB of room would leave less than half: half is kept");
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn v1_and_a_namespaced_mount() {
        let f = Fixture::new(
            "v1",
            &[
                ("proc/self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"),
                (
                    "proc/self/mountinfo",
                    "40 30 0:35 /docker/abc /sys/fs/cgroup/memory ro,nosuid master:17 - cgroup cgroup rw,memory\n\
                     41 30 0:36 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu,cpuacct\n",
                ),
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "536870912\n"),
            ],
        );
        let l = f.cgroups().memory_limit().unwrap();
        assert_eq!((l.bytes, l.file), (512 << 20, LimitFile::V1), "{l:?}");
        assert_eq!(l.dir(), f.dir("/sys/fs/cgroup/memory"), "the mount is the process's cgroup");
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn hybrid_reads_both_and_v1_unlimited_is_none() {
        let f = Fixture::new(
            "hybrid",
            &[
                ("proc/self/cgroup", "4:memory:/batch\n0::/\n"),
                (
                    "proc/self/mountinfo",
                    "25 24 0:22 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                     26 24 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
                ),
                ("sys/fs/cgroup/memory/batch/memory.limit_in_bytes", "9223372036854771712\n"),
                ("sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("sys/fs/cgroup/unified/memory.pressure", "some avg10=0.00\n"),
                MEMINFO,
            ],
        );
        let e = f.cgroups().memory_limit().unwrap_err();
        assert_eq!(e.kind, CgroupErrorKind::Unlimited, "{e}");
        assert!(e.to_string().starts_with("no memory limit"), "{e}");
        assert!(f.cgroups().resolve(AutoLimit::Auto).is_err(), "auto without a cgroup limit: none");
        let r = f.cgroups().resolve(AutoLimit::Percent(50)).unwrap();
        assert_eq!(r.limit, 2 << 30, "50 % of MemTotal 4 GiB");
        assert!(r.origin().starts_with("50 % of the machine's 4096 MiB (MemTotal;"), "{}", r.origin());
        assert_eq!(
            f.cgroups().pressure_file().to_string(),
            f.dir("/sys/fs/cgroup/unified/memory.pressure"),
            "v2's own pressure file"
        );
        let f = Fixture::new("pressure-v1", &[("proc/self/cgroup", "4:memory:/\n")]);
        assert_eq!(
            f.cgroups().pressure_file().to_string(),
            f.dir("/proc/pressure/memory"),
            "v1: the system's"
        );
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let f = Fixture::new(
            "garbage",
            &[("proc/self/cgroup", "0::/x\n"), ("sys/fs/cgroup/x/memory.max", "lots of memory\n"), MEMINFO],
        );
        for how in [AutoLimit::Auto, AutoLimit::Percent(50)] {
            let Err(e) = f.cgroups().resolve(how) else { panic!("garbage accepted") };
            assert_eq!(e.kind, CgroupErrorKind::Malformed);
            assert_eq!(
                e.to_string(),
                format!(
                    "{} holds \"lots of memory\", not a size or \"max\"",
                    f.dir("/sys/fs/cgroup/x/memory.max")
                )
            );
        }
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn missing_files_mean_no_cgroup() {
        let f = Fixture::new("missing", &[MEMINFO]);
        let e = f.cgroups().memory_limit().unwrap_err();
        assert_eq!(e.kind, CgroupErrorKind::NotInCgroup);
        assert!(e.path().ends_with("/proc/self/cgroup"), "{e}");
        assert_eq!(
            f.cgroups().resolve(AutoLimit::Percent(25)).unwrap().limit,
            1 << 30,
            "25 % of the machine"
        );
        let f = Fixture::new("no-memory", &[("proc/self/cgroup", "3:cpu:/\n")]);
        assert_eq!(f.cgroups().memory_limit().unwrap_err().kind, CgroupErrorKind::NotInCgroup);
        let e = f.cgroups().resolve(AutoLimit::Percent(25)).unwrap_err();
        assert!(e.to_string().contains("meminfo"), "no MemTotal either: {e}");
        // A cgroup whose directories hold no limit files at all.
        let f = Fixture::new(
            "no-files",
            &[("proc/self/cgroup", "0::/a/b\n"), ("sys/fs/cgroup/a/b/cgroup.procs", "1\n")],
        );
        assert_eq!(f.cgroups().memory_limit().unwrap_err().kind, CgroupErrorKind::Unlimited);
    }

    /// This machine's own files: whatever they say, the reader agrees with them.
    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn this_machine_agrees_with_its_files() {
        let cg = Cgroups::system();
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        match cg.memory_limit() {
            Ok(l) => {
                let file = format!("{}/{}", l.dir(), l.file.name());
                let v = std::fs::read_to_string(&file).unwrap();
                assert_eq!(v.trim().parse::<u64>().unwrap(), l.bytes, "{file}");
                println!("limit {} MiB from {file}", l.bytes >> 20);
            }
            Err(e) => {
                println!("no cgroup limit here: {e}");
                match e.kind {
                    CgroupErrorKind::NotInCgroup => {
                        assert!(!text.contains("memory:") && !text.contains("0::"), "{text}")
                    }
                    CgroupErrorKind::Unlimited => {
                        // Every limit file in the directory named is "max" or v1's huge figure.
                        for name in ["memory.max", "memory.high", "memory.limit_in_bytes"] {
                            if let Ok(v) = std::fs::read_to_string(format!("{}/{name}", e.path())) {
                                assert_eq!(parse_limit_value(v.as_bytes()), Ok(None), "{name}: {v}");
                            }
                        }
                    }
                    _ => panic!("this machine's cgroup files are readable: {e}"),
                }
            }
        }
        let total = cg.physical_memory().expect("/proc/meminfo has MemTotal");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kb: u64 = meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(total, kb * 1024);
    }
}
