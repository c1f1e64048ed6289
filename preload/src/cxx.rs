//! C++'s `operator new` and `operator delete`, every replaceable form (plain, array, nothrow,
//! aligned, sized): a C++ program's allocations come here directly instead of through
//! libstdc++'s wrappers, which add two jumps through the PLT and a size test to every `new` and
//! `delete` (about 4 % of larson's time).
//!
//! What C++ adds to `malloc` — the `new_handler` loop, `std::bad_alloc` — is left to libstdc++:
//! when ctxalloc has no memory for a `new`, the call is handed on, with its arguments as they
//! came, to the next definition of the same operator (libstdc++'s, found with
//! `dlsym(RTLD_NEXT)` the first time one is needed), which calls the handler, tries `malloc`
//! (ctxalloc) again, and throws or returns null as the standard says. The hand-over is a jump, not
//! a call, so the exception unwinds from libstdc++'s frame straight to the caller's: no frame of
//! ours is on the stack (a Rust frame cannot be unwound through here: the library aborts on
//! panic). Hence the `new` forms are written in assembly: a call of the fast path, and on null
//! the jump.
//!
//! A program that defines its own operators (or links libstdc++ statically) keeps them: its
//! definitions come first in the symbol search.

use core::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The `new` forms, in the order of their indices in the assembly below.
const NEW_FORMS: [&std::ffi::CStr; 8] = [
    c"_Znwm",
    c"_Znam",
    c"_ZnwmRKSt9nothrow_t",
    c"_ZnamRKSt9nothrow_t",
    c"_ZnwmSt11align_val_t",
    c"_ZnamSt11align_val_t",
    c"_ZnwmSt11align_val_tRKSt9nothrow_t",
    c"_ZnamSt11align_val_tRKSt9nothrow_t",
];

/// The next definitions of the `new` forms (libstdc++'s), found when first needed.
static NEXT: [AtomicPtr<c_void>; 8] = [const { AtomicPtr::new(std::ptr::null_mut()) }; 8];

/// `operator new(size)`'s fast path: a block, or null (the caller hands on to libstdc++).
extern "C" fn new_fast(size: usize) -> *mut c_void {
    crate::malloc::alloc_block(size, ctxalloc::MIN_ALIGN)
}

/// `operator new(size, align_val_t)`'s fast path: an aligned block, or null.
extern "C" fn new_aligned_fast(size: usize, align: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return std::ptr::null_mut();
    }
    crate::malloc::alloc_block(size, align.max(ctxalloc::MIN_ALIGN))
}

/// The next definition of the `new` form `i`: libstdc++'s, looked up once. A C++ program always
/// has one; without it the process ends with a message (there is nothing to throw with).
extern "C" fn next_new(i: usize) -> *mut c_void {
    let f = NEXT[i].load(Ordering::Acquire);
    if !f.is_null() {
        return f;
    }
    // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects loaded after this one.
    // No allocator lock is held here (dlsym may allocate).
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, NEW_FORMS[i].as_ptr()) };
    if f.is_null() {
        let name = NEW_FORMS[i].to_str().unwrap_or("operator new");
        crate::log::write_line(&format_args!(
            "ctxalloc-preload: out of memory in {name}, and no C++ runtime to throw std::bad_alloc: aborting"
        ));
        // SAFETY: ends the process.
        unsafe { libc::abort() }
    }
    NEXT[i].store(f, Ordering::Release);
    f
}

// The `new` forms. Each saves its arguments (size; alignment or the nothrow tag; the tag),
// calls its fast path, and returns the block; on null it asks `next_new` for libstdc++'s form
// and jumps there with the arguments restored. Three pushes keep the stack 16-byte aligned for
// the calls; the CFI directives keep the frames walkable (debuggers, profilers, the unwinder).
macro_rules! new_form {
    ($($name:ident = $index:literal, $fast:path;)*) => {$(
        /// A C++ `operator new` form: ctxalloc's block, or — out of memory — libstdc++'s form
        /// of the same operator (handler loop, `std::bad_alloc` or null), jumped to.
        ///
        /// # Safety
        /// Called as the C++ operator: the size (and alignment, a power of two) in the ABI's
        /// argument registers.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                ".cfi_startproc",
                "push %rdi",
                ".cfi_adjust_cfa_offset 8",
                "push %rsi",
                ".cfi_adjust_cfa_offset 8",
                "push %rdx",
                ".cfi_adjust_cfa_offset 8",
                "call {fast}",
                "test %rax, %rax",
                "jz 1f",
                "add $24, %rsp",
                ".cfi_adjust_cfa_offset -24",
                "ret",
                ".cfi_adjust_cfa_offset 24",
                "1:",
                concat!("mov $", $index, ", %edi"),
                "call {next}",
                "mov %rax, %r11",
                "pop %rdx",
                ".cfi_adjust_cfa_offset -8",
                "pop %rsi",
                ".cfi_adjust_cfa_offset -8",
                "pop %rdi",
                ".cfi_adjust_cfa_offset -8",
                "jmp *%r11",
                ".cfi_endproc",
                fast = sym $fast,
                next = sym next_new,
                options(att_syntax),
            )
        }
    )*};
}

new_form! {
    _Znwm = "0", new_fast;
    _Znam = "1", new_fast;
    _ZnwmRKSt9nothrow_t = "2", new_fast;
    _ZnamRKSt9nothrow_t = "3", new_fast;
    _ZnwmSt11align_val_t = "4", new_aligned_fast;
    _ZnamSt11align_val_t = "5", new_aligned_fast;
    _ZnwmSt11align_val_tRKSt9nothrow_t = "6", new_aligned_fast;
    _ZnamSt11align_val_tRKSt9nothrow_t = "7", new_aligned_fast;
}

/// The `delete` forms: every one is `free` (the size and alignment a sized or aligned `delete`
/// passes are not needed: the address finds the block).
macro_rules! delete_form {
    ($($name:ident ( $($arg:ident : $ty:ty),* ) ;)*) => {$(
        /// A C++ `operator delete` form: `free`.
        ///
        /// # Safety
        /// `p` is null or a live block from this allocator, given up.
        #[no_mangle]
        pub unsafe extern "C" fn $name(p: *mut c_void $(, $arg: $ty)*) {
            $(let _ = $arg;)*
            // SAFETY: forwarded contract.
            unsafe { crate::malloc::free(p) }
        }
    )*};
}

delete_form! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(_size: usize);
    _ZdaPvm(_size: usize);
    _ZdlPvRKSt9nothrow_t(_tag: *const c_void);
    _ZdaPvRKSt9nothrow_t(_tag: *const c_void);
    _ZdlPvSt11align_val_t(_align: usize);
    _ZdaPvSt11align_val_t(_align: usize);
    _ZdlPvmSt11align_val_t(_size: usize, _align: usize);
    _ZdaPvmSt11align_val_t(_size: usize, _align: usize);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(_align: usize, _tag: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(_align: usize, _tag: *const c_void);
}
