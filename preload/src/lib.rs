//! # ctxalloc-preload
//!
//! ctxalloc for C and C++ programs. `libctxalloc_preload.so` exports the C allocator —
//! `malloc`, `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`, `aligned_alloc`,
//! `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`, `malloc_trim`, `malloc_stats`, on
//! x86_64 Linux C++'s `operator new` and `operator delete` in every form (`cxx`) — and
//! the scoped-context API of `include/ctxalloc.h`: `ctxalloc_nofs_save()` /
//! `ctxalloc_nofs_restore()` and their NOIO, NORECLAIM and NOFAIL siblings, a memory limit,
//! and shrinkers with C callbacks. A FUSE daemon or a storage engine written in C gets what
//! kernel code has: open a NOFS scope while holding a lock its cache's shrinker needs, and
//! every `malloc` inside — its own, libc's, a library's — obeys it.
//!
//! ```text
//! LD_PRELOAD=/abs/path/libctxalloc_preload.so program …     # every malloc is ctxalloc's
//! cc app.c -I preload/include -L target/release -lctxalloc_preload   # or link it, for the API
//! ```
//!
//! `free(p)` has no size: the segment map finds a slab block from its address, the vmap
//! registry a large area; anything else is reported on stderr with the pointer and ignored
//! ([`ctxalloc::kfree`]). Environment: `CTXALLOC_LIMIT` (also `auto` and `80%`, from the
//! cgroup), `CTXALLOC_PRESSURE`, `CTXALLOC_CGROUP_ROOT`, `CTXALLOC_BACKGROUND` and
//! `CTXALLOC_BACKGROUND_IDLE` as for Rust programs, and `CTXALLOC_PRELOAD_LOG=<file>`: at exit,
//! each process appends one line with its pid, the calls into this library that left its
//! inline fast paths (every thread's first allocation of each size does) and its statistics —
//! the proof that interposition happened (CI checks it for git, python3, sqlite3 and gcc).
//!
//! Modules: `malloc` (the C allocator), `cxx` (C++'s operators), `api` (the `ctxalloc_*`
//! functions), `log` (the interposition log). No function here unwinds: a panic aborts (`extern "C"`).

mod api;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod cxx;
mod log;
mod malloc;

/// The Rust side of this library allocates through ctxalloc too.
#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();
