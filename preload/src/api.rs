//! The `ctxalloc_*` C functions of `include/ctxalloc.h`: scopes, per-call flags, the limit,
//! statistics and shrinkers with C callbacks. Thin: each forwards to the `ctxalloc` crate.
//!
//! A scope's cookie is a `uint64_t` ([`Cookie::into_raw`]); flag values are [`Gfp`]'s bits
//! (the header's `CTXALLOC_*` constants; a test checks they agree).

use crate::malloc::set_errno;
use core::ffi::{c_char, c_int, c_void, CStr};
use ctxalloc::{Cookie, Gfp, ReclaimClass, ScanResult, ShrinkControl, Shrinker, ShrinkerHandle};
use std::fmt::Write;
use std::sync::Arc;

macro_rules! c_scope_pair {
    ($save:ident, $restore:ident, $rust_save:ident, $rust_restore:ident) => {
        #[doc = concat!("`", stringify!($save), "()`: see `", stringify!($rust_save), "` in the ctxalloc crate.")]
        #[no_mangle]
        pub extern "C" fn $save() -> u64 {
            ctxalloc::$rust_save().into_raw()
        }

        #[doc = concat!("`", stringify!($restore), "(cookie)`: closes the scope its save opened.")]
        #[no_mangle]
        pub extern "C" fn $restore(cookie: u64) {
            ctxalloc::$rust_restore(Cookie::from_raw(cookie));
        }
    };
}

c_scope_pair!(ctxalloc_nofs_save, ctxalloc_nofs_restore, memalloc_nofs_save, memalloc_nofs_restore);
c_scope_pair!(ctxalloc_noio_save, ctxalloc_noio_restore, memalloc_noio_save, memalloc_noio_restore);
c_scope_pair!(
    ctxalloc_noreclaim_save,
    ctxalloc_noreclaim_restore,
    memalloc_noreclaim_save,
    memalloc_noreclaim_restore
);
c_scope_pair!(ctxalloc_nofail_save, ctxalloc_nofail_restore, memalloc_nofail_save, memalloc_nofail_restore);

/// `ctxalloc_flags_save(flags)`: opens a scope of any scope flags (others are ignored).
#[no_mangle]
pub extern "C" fn ctxalloc_flags_save(flags: u32) -> u64 {
    ctxalloc::memalloc_flags_save(Gfp::from_bits_truncate(flags)).into_raw()
}

/// `ctxalloc_flags_restore(cookie)`.
#[no_mangle]
pub extern "C" fn ctxalloc_flags_restore(cookie: u64) {
    ctxalloc::memalloc_flags_restore(Cookie::from_raw(cookie));
}

/// `ctxalloc_current()`: this thread's context word.
#[no_mangle]
pub extern "C" fn ctxalloc_current() -> u32 {
    ctxalloc::current().bits()
}

/// `ctxalloc_version()`: the library's version, `"MAJOR.MINOR.PATCH"` (the header's
/// `CTXALLOC_VERSION` is the one a program was compiled against).
#[no_mangle]
pub extern "C" fn ctxalloc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// `size` bytes at `align` (a power of two, at least `max_align_t`'s) with per-call flags; null
/// and `errno` `ENOMEM` on failure, `EINVAL` for a bad alignment.
fn alloc_gfp(size: usize, align: usize, gfp: Gfp) -> *mut c_void {
    let Ok(layout) = std::alloc::Layout::from_size_align(size, align.max(ctxalloc::MIN_ALIGN)) else {
        set_errno(if align.is_power_of_two() { libc::ENOMEM } else { libc::EINVAL });
        return std::ptr::null_mut();
    };
    match ctxalloc::alloc_with(layout, gfp) {
        Ok(p) => p.as_ptr().cast(),
        Err(_) => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `ctxalloc_malloc_gfp(size, gfp)`: `malloc` with per-call flags united with the context
/// (`CTXALLOC_ZERO`, `CTXALLOC_NOWARN`, `CTXALLOC_MAYFAIL`…); free it with `free`.
#[no_mangle]
pub extern "C" fn ctxalloc_malloc_gfp(size: usize, gfp: u32) -> *mut c_void {
    alloc_gfp(size, 0, Gfp::from_bits_truncate(gfp))
}

/// `ctxalloc_calloc_gfp(n, size, gfp)`: `calloc` with per-call flags; null and `ENOMEM` if
/// `n * size` overflows.
#[no_mangle]
pub extern "C" fn ctxalloc_calloc_gfp(n: usize, size: usize, gfp: u32) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => alloc_gfp(total, 0, Gfp::from_bits_truncate(gfp) | Gfp::ZERO),
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// `ctxalloc_aligned_alloc_gfp(align, size, gfp)`: `aligned_alloc` (any power of two) with
/// per-call flags; free it with `free`.
#[no_mangle]
pub extern "C" fn ctxalloc_aligned_alloc_gfp(align: usize, size: usize, gfp: u32) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    alloc_gfp(size, align, Gfp::from_bits_truncate(gfp))
}

/// `ctxalloc_realloc_gfp(p, size, gfp)`: `realloc` with per-call flags (a null `p` allocates,
/// size 0 frees and returns null); on failure null, `ENOMEM`, and `p` untouched.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn ctxalloc_realloc_gfp(p: *mut c_void, size: usize, gfp: u32) -> *mut c_void {
    if p.is_null() {
        return ctxalloc_malloc_gfp(size, gfp);
    }
    if size == 0 {
        // SAFETY: forwarded contract.
        unsafe { ctxalloc::kfree(p.cast()) };
        return std::ptr::null_mut();
    }
    // SAFETY: forwarded contract.
    unsafe { crate::malloc::resize(p, size, Gfp::from_bits_truncate(gfp)) }
}

/// `ctxalloc_set_limit(bytes)`: a memory limit; 0 removes it. Returns 0, or `EINVAL` (and
/// changes nothing) for a limit below `ctxalloc_min_limit()`.
#[no_mangle]
pub extern "C" fn ctxalloc_set_limit(bytes: usize) -> c_int {
    if bytes == 0 {
        ctxalloc::remove_limit();
        return 0;
    }
    match ctxalloc::set_limit(bytes) {
        Ok(()) => 0,
        Err(_) => libc::EINVAL,
    }
}

/// `ctxalloc_min_limit()`: the smallest limit `ctxalloc_set_limit` accepts.
#[no_mangle]
pub extern "C" fn ctxalloc_min_limit() -> usize {
    ctxalloc::MIN_LIMIT
}

/// `ctxalloc_parse_size(text, &bytes)`: a size as `CTXALLOC_LIMIT` reads it (`512M`, `64MiB`,
/// `2G`, `4096`); 0 and `*bytes` set, or `EINVAL` (not a size) or `ERANGE` (too large) and
/// `*bytes` untouched.
///
/// # Safety
/// `text` is a NUL-terminated string; `bytes` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn ctxalloc_parse_size(text: *const c_char, bytes: *mut usize) -> c_int {
    if text.is_null() || bytes.is_null() {
        return libc::EINVAL;
    }
    // SAFETY: the caller's NUL-terminated string.
    let t = unsafe { CStr::from_ptr(text) }.to_bytes();
    match ctxalloc_core::parse::parse_size(t) {
        Ok(n) => {
            // SAFETY: the caller's out pointer.
            unsafe { *bytes = n };
            0
        }
        Err(ctxalloc_core::parse::SizeError::Overflow) => libc::ERANGE,
        Err(_) => libc::EINVAL,
    }
}

/// `ctxalloc_limit()`: the limit, 0 for none.
#[no_mangle]
pub extern "C" fn ctxalloc_limit() -> usize {
    ctxalloc::limit().unwrap_or(0)
}

/// `ctxalloc_usage()`: bytes from the operating system, at page granularity.
#[no_mangle]
pub extern "C" fn ctxalloc_usage() -> usize {
    ctxalloc::usage()
}

/// `ctxalloc_reclaim(bytes)`: asks the shrinkers for `bytes` now; returns the bytes freed.
#[no_mangle]
pub extern "C" fn ctxalloc_reclaim(bytes: usize) -> usize {
    ctxalloc::reclaim(bytes)
}

/// `ctxalloc_stats(buf, len)`: the statistics table as text, cut to fit and NUL-terminated;
/// returns the length of the whole table (as `snprintf`).
///
/// # Safety
/// `buf` is valid for `len` bytes of writes (or `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn ctxalloc_stats(buf: *mut c_char, len: usize) -> usize {
    struct Into<'a> {
        out: &'a mut [u8],
        total: usize,
    }
    impl Write for Into<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.out.len().saturating_sub(1).saturating_sub(self.total);
            let n = s.len().min(room);
            let at = self.total.min(self.out.len());
            self.out[at..at + n].copy_from_slice(&s.as_bytes()[..n]);
            self.total += s.len();
            Ok(())
        }
    }
    let out: &mut [u8] = if len == 0 || buf.is_null() {
        &mut []
    } else {
        // SAFETY: the caller's buffer of `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(buf.cast(), len) }
    };
    let mut w = Into { out, total: 0 };
    let _ = write!(w, "{}", ctxalloc::stats());
    if !w.out.is_empty() {
        let end = w.total.min(w.out.len() - 1);
        w.out[end] = 0;
    }
    w.total
}

/// `ctxalloc_print_stats(fd)`: the statistics table written to a file descriptor.
#[no_mangle]
pub extern "C" fn ctxalloc_print_stats(fd: c_int) {
    ctxalloc::print_stats(fd);
}

/// `CTXALLOC_SHRINK_STOP`: what a C `scan` callback returns to end its part of the pass.
const SHRINK_STOP: usize = usize::MAX;

/// A shrinker whose `count` and `scan` are C callbacks on an opaque argument. The callbacks
/// must be callable from any thread (the header says so); they run with MEMALLOC set.
struct CShrinker {
    name: [u8; 32],
    name_len: usize,
    class: ReclaimClass,
    count: unsafe extern "C" fn(*mut c_void, u32) -> usize,
    scan: unsafe extern "C" fn(*mut c_void, usize, u32) -> usize,
    batch: usize,
    arg: *mut c_void,
}

// SAFETY: the C caller promises (header) that the callbacks and `arg` may be used from any
// thread; the rest is plain data.
unsafe impl Send for CShrinker {}
// SAFETY: as above.
unsafe impl Sync for CShrinker {}

impl Shrinker for CShrinker {
    fn name(&self) -> &str {
        std::str::from_utf8(&self.name[..self.name_len]).unwrap_or("c-shrinker")
    }
    fn class(&self) -> ReclaimClass {
        self.class
    }
    fn count(&self, sc: &ShrinkControl) -> usize {
        // SAFETY: the registered callback and argument.
        unsafe { (self.count)(self.arg, sc.gfp.bits()) }
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        // SAFETY: the registered callback and argument.
        match unsafe { (self.scan)(self.arg, sc.nr_to_scan, sc.gfp.bits()) } {
            SHRINK_STOP => ScanResult::Stop,
            n => ScanResult::Freed(n),
        }
    }
    fn batch(&self) -> usize {
        if self.batch == 0 {
            128
        } else {
            self.batch
        }
    }
}

/// `ctxalloc_register_shrinker(name, class, count, scan, batch, arg)`: registers a cache;
/// returns the handle for [`ctxalloc_unregister_shrinker`], or null if `class` is unknown, a
/// callback is missing, or no memory could be had. The name is copied (its first 31 bytes).
///
/// # Safety
/// `name` is null or NUL-terminated; the callbacks and `arg` stay valid, and may be called
/// from any thread, until the shrinker is unregistered.
#[no_mangle]
pub unsafe extern "C" fn ctxalloc_register_shrinker(
    name: *const c_char,
    class: c_int,
    count: Option<unsafe extern "C" fn(*mut c_void, u32) -> usize>,
    scan: Option<unsafe extern "C" fn(*mut c_void, usize, u32) -> usize>,
    batch: usize,
    arg: *mut c_void,
) -> *mut c_void {
    let class = match class {
        0 => ReclaimClass::Fs,
        1 => ReclaimClass::Io,
        2 => ReclaimClass::Other,
        _ => return std::ptr::null_mut(),
    };
    let (Some(count), Some(scan)) = (count, scan) else {
        return std::ptr::null_mut();
    };
    let mut s = CShrinker { name: [0; 32], name_len: 0, class, count, scan, batch, arg };
    if !name.is_null() {
        // SAFETY: the caller's NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
        let mut n = bytes.len().min(31);
        while std::str::from_utf8(&bytes[..n]).is_err() {
            n -= 1;
        }
        s.name[..n].copy_from_slice(&bytes[..n]);
        s.name_len = n;
    }
    match ctxalloc::try_register_shrinker(Arc::new(s)) {
        Some(handle) => Box::into_raw(Box::new(handle)).cast(),
        None => std::ptr::null_mut(),
    }
}

/// `ctxalloc_unregister_shrinker(handle)`: unregisters, waiting for calls in flight; null is
/// ignored.
///
/// # Safety
/// `handle` is null or from [`ctxalloc_register_shrinker`], not yet unregistered.
#[no_mangle]
pub unsafe extern "C" fn ctxalloc_unregister_shrinker(handle: *mut c_void) {
    if !handle.is_null() {
        // SAFETY: per the contract, a `Box<ShrinkerHandle>` we handed out.
        drop(unsafe { Box::from_raw(handle.cast::<ShrinkerHandle>()) });
    }
}
