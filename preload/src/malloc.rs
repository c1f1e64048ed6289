//! The C allocator over ctxalloc: every glibc entry point that hands out or takes back heap
//! memory (one left to glibc would pass our pointers to glibc's free).
//!
//! Semantics follow glibc where C leaves a choice: `malloc(0)` returns a unique minimal block;
//! `realloc(p, 0)` frees `p` and returns null; `memalign` rounds a non-power-of-two alignment
//! up; `aligned_alloc` accepts any power of two. Failures set `errno` to `ENOMEM` (`EINVAL` for
//! a bad alignment) — `posix_memalign` returns the code instead. Every block of more than 8
//! bytes is aligned to 16 (`max_align_t`); one of at most 8 bytes to 8 — all an object that
//! fits it can need (C17), as mimalloc, jemalloc and tcmalloc do: half the memory, and half
//! the cache lines, for the smallest requests.

use crate::log::count;
use core::ffi::c_void;
use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// The alignment `malloc` asks for: every block has it, and every block of more than
/// [`ctxalloc::TINY_MAX`] bytes has C's `max_align_t` (16) through its size class.
const MALLOC_ALIGN: usize = ctxalloc::MIN_ALIGN;
/// The page size `valloc` and `pvalloc` align to.
const PAGE: usize = 4096;

static ALLOC: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

pub(crate) fn set_errno(e: i32) {
    // SAFETY: the calling thread's errno location.
    unsafe { *libc::__errno_location() = e };
}

/// Allocates `size` bytes at `align` (a power of two), zeroed if asked; null and `ENOMEM` if
/// the layout is impossible or no memory can be had. Out of line: `malloc`'s slow path, which
/// it jumps to.
#[inline(never)]
fn alloc(size: usize, align: usize, zero: bool) -> *mut c_void {
    let p = alloc_raw(size, align, zero);
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p
}

/// [`alloc`] without `errno`. Out of line: `malloc` inlines its own fast path. Counted for the
/// log: every call that leaves the inline fast paths comes through here.
#[inline(never)]
fn alloc_raw(size: usize, align: usize, zero: bool) -> *mut c_void {
    count();
    let Ok(layout) = Layout::from_size_align(size, align.max(MALLOC_ALIGN)) else {
        return ptr::null_mut();
    };
    // SAFETY: any layout is accepted (a zero size gets a minimal block).
    unsafe {
        if zero {
            ALLOC.alloc_zeroed(layout).cast()
        } else {
            ALLOC.alloc(layout).cast()
        }
    }
}

/// `operator new`'s allocation of `size` bytes at `align` (a power of two), without `errno`:
/// a block or null. The small sizes at the minimum alignment inline their fast path.
#[inline(always)]
pub(crate) fn alloc_block(size: usize, align: usize) -> *mut c_void {
    if align <= MALLOC_ALIGN {
        if let Some(p) = ctxalloc::alloc_cached(size) {
            return p.as_ptr().cast();
        }
    }
    alloc_raw(size, align, false)
}

/// `malloc(3)`: the fast path inline, and a jump to the slow path (which sets `errno`) — no
/// frame on either.
#[no_mangle]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    if let Some(p) = ctxalloc::alloc_cached(size) {
        return p.as_ptr().cast();
    }
    alloc(size, MALLOC_ALIGN, false)
}

/// `calloc(3)`: null and `ENOMEM` if `n * size` overflows. Fresh memory is not cleared twice.
/// A small block the thread has ready is popped and cleared inline, as `malloc` pops it.
#[no_mangle]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        Some(total) => {
            if let Some(p) = ctxalloc::alloc_cached(total) {
                // SAFETY: a fresh block of at least `total` bytes.
                unsafe { p.as_ptr().write_bytes(0, total) };
                return p.as_ptr().cast();
            }
            alloc(total, MALLOC_ALIGN, true)
        }
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `free(3)`: null is ignored; a pointer ctxalloc never handed out is reported and ignored.
///
/// # Safety
/// `p` is null or a live block from this allocator, given up.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: forwarded contract (foreign pointers are detected, not followed).
    unsafe { ctxalloc::kfree(p.cast()) }
}

/// C23 `free_sized`: the size is not needed.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// C23 `free_aligned_sized`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: forwarded contract.
    unsafe { free(p) }
}

/// `realloc(3)`: null `p` allocates; size 0 frees and returns null (glibc); on failure null,
/// `ENOMEM`, and `p` untouched.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: forwarded contract.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    count();
    // SAFETY: forwarded contract.
    unsafe { resize(p, size, ctxalloc::Gfp::KERNEL) }
}

/// What `realloc` and `ctxalloc_realloc_gfp` do to a live block for a non-zero size: resized
/// in the context `gfp` adds to, or null, `ENOMEM` and `p` untouched.
///
/// # Safety
/// `p` is a live block from this allocator (a foreign pointer is reported).
#[inline]
pub(crate) unsafe fn resize(p: *mut c_void, size: usize, gfp: ctxalloc::Gfp) -> *mut c_void {
    if size > isize::MAX as usize - MALLOC_ALIGN {
        set_errno(libc::ENOMEM);
        return ptr::null_mut();
    }
    // SAFETY: a live block (or a foreign pointer, reported); the size is bounded above.
    let q = unsafe { ctxalloc::krealloc(p.cast(), size, gfp) };
    if q.is_null() {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// `reallocarray(3)`: `realloc(p, n * size)`, null and `ENOMEM` on overflow.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: forwarded contract.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: `EINVAL` unless `align` is a power of two multiple of
/// `sizeof(void *)`; `ENOMEM` if no memory; `*out` is written only on success.
///
/// # Safety
/// `out` is valid for a write.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_power_of_two() || !align.is_multiple_of(size_of::<*mut c_void>()) {
        return libc::EINVAL;
    }
    let saved = errno();
    let p = alloc(size, align, false);
    if p.is_null() {
        set_errno(saved);
        return libc::ENOMEM;
    }
    // SAFETY: the caller's out pointer.
    unsafe { *out = p };
    0
}

fn errno() -> i32 {
    // SAFETY: the calling thread's errno location.
    unsafe { *libc::__errno_location() }
}

/// `aligned_alloc(3)`: any power-of-two alignment (glibc); otherwise null and `EINVAL`.
#[no_mangle]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    alloc(size, align, false)
}

/// `memalign(3)`: a non-power-of-two alignment is rounded up to one (glibc).
#[no_mangle]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(a) => alloc(size, a, false),
        None => {
            set_errno(libc::EINVAL);
            ptr::null_mut()
        }
    }
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    alloc(size, PAGE, false)
}

/// `pvalloc(3)`: page-aligned, the size rounded up to whole pages (one page for 0).
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    match size.max(1).checked_next_multiple_of(PAGE) {
        Some(n) => alloc(n, PAGE, false),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`: the block's size class or the area's length; 0 for null.
///
/// # Safety
/// `p` is null or a live block from this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    ctxalloc::ksize(p.cast())
}

/// `malloc_trim(3)`: gives free memory back to the system; returns 1.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> i32 {
    ctxalloc::trim();
    1
}

/// `malloc_stats(3)`: ctxalloc's statistics table on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    ctxalloc::print_stats(2);
}
