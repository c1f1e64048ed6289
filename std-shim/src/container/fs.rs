//! Reading small kernel files without allocating: the container code runs inside the
//! allocator's first allocation (`CTXALLOC_LIMIT=auto` is read there) and on the monitor
//! thread, so paths are built on the stack and files are read with `open`/`read` into stack
//! buffers.

use std::ffi::CStr;
use std::fmt;

/// Longest path built (longer ones are refused, never cut).
pub(crate) const PATH_MAX: usize = 512;

/// A NUL-terminated path on the stack.
#[derive(Clone, Copy)]
pub(crate) struct StackPath {
    buf: [u8; PATH_MAX],
    /// Bytes before the NUL.
    len: usize,
}

impl StackPath {
    pub(crate) const fn new() -> StackPath {
        StackPath { buf: [0; PATH_MAX], len: 0 }
    }

    /// `bytes` appended; `false` (and unchanged) if the path would not fit or holds a NUL.
    #[must_use]
    pub(crate) fn push(&mut self, bytes: &[u8]) -> bool {
        if self.len + bytes.len() >= PATH_MAX || bytes.contains(&0) {
            return false;
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
        self.buf[self.len] = 0;
        true
    }

    /// The path of `parts` joined as given.
    pub(crate) fn of(parts: &[&[u8]]) -> Option<StackPath> {
        let mut p = StackPath::new();
        parts.iter().all(|part| p.push(part)).then_some(p)
    }

    /// Drops the last `/component`; `false` if there is none left above `floor` bytes.
    pub(crate) fn pop_above(&mut self, floor: usize) -> bool {
        let Some(slash) = self.buf[..self.len].iter().rposition(|&b| b == b'/') else { return false };
        if slash < floor || self.len <= floor {
            return false;
        }
        self.len = slash;
        self.buf[self.len] = 0;
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn as_cstr(&self) -> &CStr {
        // `push` keeps a NUL at `len` and none before it.
        CStr::from_bytes_with_nul(&self.buf[..=self.len]).unwrap_or(c"")
    }
}

impl Default for StackPath {
    fn default() -> Self {
        StackPath::new()
    }
}

impl fmt::Display for StackPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("(a path that is not UTF-8)"))
    }
}

/// Why a file could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// It does not exist (`ENOENT`, `ENOTDIR`).
    Missing,
    /// Another `errno`.
    Os(i32),
    /// Larger than the buffer.
    TooLong,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Missing => f.write_str("missing"),
            ReadError::Os(e) => write!(f, "unreadable (errno {e})"),
            ReadError::TooLong => f.write_str("longer than expected"),
        }
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// An open file descriptor, closed on drop.
pub(crate) struct Fd(pub(crate) i32);

impl Fd {
    pub(crate) fn open(path: &StackPath, flags: i32) -> Result<Fd, ReadError> {
        loop {
            // SAFETY: a NUL-terminated path.
            let fd = unsafe { libc::open(path.as_cstr().as_ptr(), flags | libc::O_CLOEXEC) };
            if fd >= 0 {
                return Ok(Fd(fd));
            }
            match errno() {
                libc::EINTR => continue,
                libc::ENOENT | libc::ENOTDIR => return Err(ReadError::Missing),
                e => return Err(ReadError::Os(e)),
            }
        }
    }

    /// One `read`; 0 at the end.
    pub(crate) fn read(&self, buf: &mut [u8]) -> Result<usize, ReadError> {
        loop {
            // SAFETY: reads into a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            match errno() {
                libc::EINTR => continue,
                e => return Err(ReadError::Os(e)),
            }
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Reads the whole file at `path` into `buf`; the bytes read.
pub(crate) fn read_file<'b>(path: &StackPath, buf: &'b mut [u8]) -> Result<&'b [u8], ReadError> {
    let fd = Fd::open(path, libc::O_RDONLY)?;
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(ReadError::TooLong);
        }
        match fd.read(&mut buf[len..])? {
            0 => return Ok(&buf[..len]),
            n => len += n,
        }
    }
}

/// Calls `f` with each line of the file at `path` (without its newline), read through a 4 KiB
/// buffer; a line longer than the buffer is skipped. Stops early when `f` returns `false`.
pub(crate) fn for_each_line(path: &StackPath, mut f: impl FnMut(&[u8]) -> bool) -> Result<(), ReadError> {
    let fd = Fd::open(path, libc::O_RDONLY)?;
    let mut buf = [0u8; 4096];
    let (mut len, mut skipping) = (0, false);
    loop {
        let n = fd.read(&mut buf[len..])?;
        let end = n == 0;
        len += n;
        let mut start = 0;
        while let Some(nl) = buf[start..len].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            if !skipping && !f(line) {
                return Ok(());
            }
            skipping = false;
            start += nl + 1;
        }
        if end {
            if start < len && !skipping {
                f(&buf[start..len]);
            }
            return Ok(());
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            // A line longer than the buffer: drop what we have and skip to its end.
            len = 0;
            skipping = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_refuse_what_does_not_fit_and_pop_to_a_floor() {
        let mut p = StackPath::of(&[b"/sys/fs/cgroup", b"/a/b"]).unwrap();
        assert_eq!(p.as_bytes(), b"/sys/fs/cgroup/a/b");
        assert!(!p.push(&[b'x'; PATH_MAX]));
        assert!(!p.push(b"a\0b"));
        assert_eq!(p.as_bytes(), b"/sys/fs/cgroup/a/b", "a refused push changes nothing");
        let floor = b"/sys/fs/cgroup".len();
        assert!(p.pop_above(floor));
        assert_eq!(p.as_bytes(), b"/sys/fs/cgroup/a");
        assert!(p.pop_above(floor));
        assert_eq!(p.as_bytes(), b"/sys/fs/cgroup");
        assert!(!p.pop_above(floor), "never above the floor");
    }

    #[cfg_attr(miri, ignore = "reads files (miri isolates the file system)")]
    #[test]
    fn lines_come_whole_across_reads_and_overlong_ones_are_skipped() {
        let dir = std::env::temp_dir().join(format!("ctxalloc-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        let long = "y".repeat(5000);
        let mut text = String::new();
        for i in 0..500 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str(&long);
        text.push_str("\nlast");
        std::fs::write(&file, &text).unwrap();
        let path = StackPath::of(&[file.to_str().unwrap().as_bytes()]).unwrap();
        let mut seen = Vec::new();
        for_each_line(&path, |l| {
            seen.push(String::from_utf8(l.to_vec()).unwrap());
            true
        })
        .unwrap();
        assert_eq!(seen.len(), 501, "500 lines and the last; the overlong one skipped");
        assert_eq!(seen[499], "line 499");
        assert_eq!(seen[500], "last");
        let mut small = [0u8; 16];
        assert_eq!(read_file(&path, &mut small), Err(ReadError::TooLong));
        let missing = StackPath::of(&[dir.join("nope").to_str().unwrap().as_bytes()]).unwrap();
        assert_eq!(read_file(&missing, &mut small).err(), Some(ReadError::Missing));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
