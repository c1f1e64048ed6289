//! The `Platform` trait: everything the core needs from its environment, and the per-thread state
//! the platform keeps for the core.
//!
//! The std shim implements it with `const` thread-locals, `mmap` and futexes; the kernel shim
//! with per-CPU (or per-task) words and a static region; the `mock` platform with an in-memory
//! arena. The core never calls anything else.

use crate::lock::LockState;
use crate::scope::ScopeState;
use crate::slab::heap::{Heap, EMPTY_HEAP};
use core::cell::Cell;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU32;

/// What a thread (or CPU) is to the core: its heap and its context word.
///
/// One `ThreadCtx` per thread, created by [`ThreadCtx::new`] in a `const` initialiser (so that a
/// thread-local needs no lazy-initialisation check and no destructor) and reached through
/// [`Platform::thread`]. Only the thread it belongs to touches it.
pub struct ThreadCtx {
    /// The thread's heap; [`EMPTY_HEAP`] until its first slow path, and again after it exits.
    /// The fast path reads this and nothing else of the context.
    pub(crate) heap: Cell<*mut Heap>,
    /// [`ThreadState`] as a byte.
    pub(crate) state: Cell<u8>,
    /// The context word and the scope stack.
    pub(crate) scope: ScopeState,
    /// The allocator locks the thread holds, and the call-outs it put off until it holds none
    /// (`lock`: the rule that no lock is held across a call out of the allocator).
    pub(crate) locks: LockState,
    /// The debugging hooks' per-thread state (see `debug`); next to nothing without them.
    #[cfg_attr(not(feature = "hooks"), allow(dead_code))]
    pub(crate) debug: crate::debug::DebugCtx,
}

/// A `ThreadCtx` that may live in a `static`: [`NO_THREAD`].
#[repr(transparent)]
pub struct StaticThreadCtx(ThreadCtx);

// SAFETY: the one static context, `NO_THREAD`, is never written: the fast paths only read its
// heap (the empty heap) and, in debug builds, its lock count and hook byte (zero); every path
// that would write to a context asks `Platform::thread` for the real one first.
unsafe impl Sync for StaticThreadCtx {}

/// What [`Platform::thread_if_any`] hands out on a thread the platform has no context for yet:
/// a shared context whose heap is the empty heap, so the fast paths need no test for it — an
/// allocation falls through to its slow path (which asks [`Platform::thread`] for the thread's
/// own), a free finds no page it owns. The core never writes to it.
pub static NO_THREAD: StaticThreadCtx = StaticThreadCtx(ThreadCtx::new());

/// Life cycle of a [`ThreadCtx`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum ThreadState {
    /// No heap yet: the first slow path attaches one.
    New = 0,
    /// Owns the heap in `heap`.
    Active = 1,
    /// The thread has run its exit hook: its heap was abandoned; further allocations (from other
    /// thread-local destructors) go through the shared orphan heap.
    Exited = 2,
}

impl Default for ThreadCtx {
    fn default() -> Self {
        Self::new()
    }
}

impl ThreadCtx {
    /// A thread with no heap and an empty context word.
    pub const fn new() -> ThreadCtx {
        ThreadCtx {
            heap: Cell::new(&raw const EMPTY_HEAP as *mut Heap),
            state: Cell::new(ThreadState::New as u8),
            scope: ScopeState::new(),
            locks: LockState::new(),
            debug: crate::debug::DebugCtx::new(),
        }
    }

    /// The address of [`NO_THREAD`].
    #[inline(always)]
    pub fn none() -> *const ThreadCtx {
        &raw const NO_THREAD.0
    }

    /// The thread's context word and scope stack.
    #[inline]
    pub fn scope(&self) -> &ScopeState {
        &self.scope
    }

    #[inline]
    pub(crate) fn state(&self) -> ThreadState {
        match self.state.get() {
            0 => ThreadState::New,
            1 => ThreadState::Active,
            _ => ThreadState::Exited,
        }
    }
}

/// The environment of the core.
///
/// # Safety
///
/// Implementors promise:
///
/// * [`thread`](Platform::thread) returns a pointer to a [`ThreadCtx`] that belongs to the calling
///   thread (or to the CPU it runs on, with preemption held off while the core uses it), stays
///   valid as long as that thread can call into the allocator, and is never used concurrently
///   by two threads.
/// * [`map`](Platform::map) returns `len` bytes aligned to `align`, readable and writable, not
///   overlapping anything else mapped and not yet unmapped; if [`MAP_ZEROED`](Platform::MAP_ZEROED)
///   they read as zero. The provenance of the returned pointer must be recoverable by
///   [`ptr_from_addr`](Platform::ptr_from_addr) for every address inside the mapping.
/// * [`unmap`](Platform::unmap), [`purge`](Platform::purge) and [`remap`](Platform::remap) act only
///   on what they are given, which is always a whole mapping (or, for `purge`, a page-aligned part
///   of one).
/// * No method unwinds. `thread`, `ptr_from_addr`, `now_ns` and `relax` never allocate and
///   never call into the core; the others do not allocate through the global allocator either,
///   except where the environment makes them (a C library's thread start allocates through
///   `malloc`, which may be this allocator) — see below.
///
/// # What the core calls when
///
/// The core never holds one of its locks across a call of this trait, except for the four
/// methods that cannot leave the allocator's own state: [`thread`](Platform::thread),
/// [`ptr_from_addr`](Platform::ptr_from_addr), [`now_ns`](Platform::now_ns) and
/// [`relax`](Platform::relax). Every other method — `map`, `unmap`, `purge`, `remap`,
/// `report`, `wait`, `wake_all`, `background_wanted`, `thread_attached`, `backtrace`,
/// `describe_addr` — is called with no allocator lock held, so an implementation may do what
/// a C library does there (start a thread, take the loader's lock, write to a pipe that is
/// full) even where that allocates through this very allocator. Work the core finds under a
/// lock (a wake, a report) is done once the lock is released. Debug builds check it: a call of
/// one of those methods, or an entry into the allocator, while the calling thread holds an
/// allocator lock is reported with the lock's name and aborts the process. ([`abort`] may be
/// called anywhere.)
///
/// [`abort`]: Platform::abort
pub unsafe trait Platform: Sync {
    /// The page size: a power of two, at least 4096.
    const PAGE_SIZE: usize = 4096;
    /// Whether fresh mappings (and purged ranges) read as zero.
    const MAP_ZEROED: bool;
    /// Whether [`purge`](Platform::purge) can give memory back while keeping the mapping.
    const CAN_PURGE: bool = false;

    /// The calling thread's context. Called on every allocation: keep it to one thread-local
    /// access.
    fn thread(&self) -> *const ThreadCtx;

    /// The calling thread's context if [`thread`](Platform::thread) has handed it out on this
    /// thread before, else [`ThreadCtx::none()`] — or, as by default, [`thread`](Platform::thread).
    /// The fast paths ask this, so that a platform whose `thread` sets the context up lazily
    /// keeps that call (and the registers it clobbers) off every allocation and free; `none`
    /// needs no test there: its heap is the empty heap, so an allocation takes its slow path,
    /// which asks `thread`, and a free finds no page it owns (a thread without a context owns
    /// none). Never null.
    #[inline(always)]
    fn thread_if_any(&self) -> *const ThreadCtx {
        self.thread()
    }

    /// Whether the calling CPU is in atomic context — an interrupt handler, or preemption held
    /// off by the code that called the allocator (the count a kernel keeps in `preempt_count`;
    /// not the allocator's own `enter`/`leave`). There every allocation's slow path adds
    /// [`Gfp::ATOMIC`](crate::Gfp::ATOMIC) to the call's flags: no direct reclaim, no waiting, no
    /// NOFAIL loop (reported once and failed), a quarter of the emergency reserve; a mempool
    /// hands out a reserved element or nothing. Asked only on slow paths, never by the fast
    /// path; must not allocate nor call into the core. The default is never.
    #[inline]
    fn in_atomic(&self) -> bool {
        false
    }

    /// Called once on a thread when it first gets a heap: register whatever will call
    /// [`Core::thread_exit`](crate::Core::thread_exit) when the thread ends.
    fn thread_attached(&self) {}

    /// Maps `len` bytes (a multiple of `PAGE_SIZE`) aligned to `align` (a power of two, at least
    /// `PAGE_SIZE`). `None` when the source is exhausted.
    ///
    /// # Safety
    /// `len` and `align` as described.
    unsafe fn map(&self, len: usize, align: usize) -> Option<NonNull<u8>>;

    /// Returns a mapping.
    ///
    /// # Safety
    /// `ptr`/`len` exactly as returned by `map` (or `remap`), not used afterwards.
    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize);

    /// Gives the physical memory behind a page-aligned range back, keeping the mapping; the range
    /// reads as zero afterwards if `MAP_ZEROED`. Returns whether anything was given back.
    ///
    /// # Safety
    /// The range lies inside one mapping and holds nothing anyone will read.
    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize) -> bool {
        let _ = (ptr, len);
        false
    }

    /// Resizes a mapping, moving it if needed (`mremap`). `None` if unsupported or out of memory;
    /// the old mapping is then untouched.
    ///
    /// # Safety
    /// `ptr`/`old_len` exactly as returned by `map` or `remap`; `new_len` a multiple of the page
    /// size.
    unsafe fn remap(&self, ptr: NonNull<u8>, old_len: usize, new_len: usize) -> Option<NonNull<u8>> {
        let _ = (ptr, old_len, new_len);
        None
    }

    /// Maps `len` bytes (a multiple of `PAGE_SIZE`) at exactly `addr` (page-aligned) if no
    /// mapping overlaps that range — a new mapping beside an existing one, so that an area can
    /// grow in place without moving (mmap's `MAP_FIXED_NOREPLACE`); false, mapping nothing,
    /// otherwise or if unsupported. The new range reads as zero if `MAP_ZEROED`.
    ///
    /// # Safety
    /// `addr` and `len` as described.
    unsafe fn map_at(&self, addr: NonNull<u8>, len: usize) -> bool {
        let _ = (addr, len);
        false
    }

    /// Advises the platform to back `[ptr, ptr + len)` — a part of a mapping, 2 MiB-aligned
    /// where it matters — with huge pages where it can (Linux: `MADV_HUGEPAGE`): one fault and
    /// one TLB entry per 2 MiB instead of 512. The core asks only for the slab segments of a
    /// heap that has grown large and has no limit (resident memory then grows in 2 MiB steps,
    /// past what the limit counts). The default does nothing.
    ///
    /// # Safety
    /// The range lies inside one mapping of the caller's.
    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        let _ = (ptr, len);
    }

    /// A pointer with the provenance of the mapping that contains `addr`. The default uses the
    /// provenance `map` exposed; a platform with one arena can rebuild from the arena's base
    /// (which keeps miri's strict checks on).
    #[inline(always)]
    fn ptr_from_addr(&self, addr: usize) -> *mut u8 {
        core::ptr::with_exposed_provenance_mut(addr)
    }

    /// Writes a report (one or more whole lines). Must not allocate.
    fn report(&self, msg: &str);

    /// A monotonic clock, in nanoseconds.
    fn now_ns(&self) -> u64;

    /// Sleeps while `*word == expected`, at most `timeout_ns`; may return early.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout_ns: u64);

    /// Wakes every waiter on `word`.
    fn wake_all(&self, word: &AtomicU32);

    /// Called (at the entry of an allocation's slow path, with no allocator lock held — never
    /// from a free) when background reclaim is wanted, or freed memory waits for its purge, and
    /// no thread was running ([`background_if_running`](Platform::background_if_running)): a
    /// platform that has a background thread makes sure it is running; it sleeps in
    /// [`Core::background_wait`](crate::Core::background_wait) and calls
    /// [`Core::background_reclaim`](crate::Core::background_reclaim). Starting the thread may
    /// allocate through this allocator (in a C program, `pthread_create` does).
    fn background_wanted(&self) {}

    /// Called instead of [`background_wanted`](Platform::background_wanted) when memory kept for
    /// speed starts waiting for its purge — found by a free, and a free must never start a
    /// thread: a C library may free while holding a lock its thread creation takes (glibc
    /// frees a reaped thread's TLS under its stack-cache lock, which `pthread_create` takes:
    /// the thread would wait on itself). Wakes the background thread if one runs and returns
    /// true; returns false if none runs, starting nothing (the core then asks
    /// `background_wanted` on the next allocation's slow path). The default calls
    /// `background_wanted` (a platform whose thread start takes no such lock).
    fn background_if_running(&self) -> bool {
        self.background_wanted();
        true
    }

    /// Ends the process (or halts the machine) at once, without unwinding: for a corrupted heap
    /// under `hardened` and a strict `forbid_alloc`. The default panics, which is right only
    /// where panics abort (a kernel); the std platform calls `abort(3)`.
    fn abort(&self) -> ! {
        panic!("ctxalloc: aborting")
    }

    /// Fills `frames` with the calling thread's return addresses, innermost first, skipping the
    /// allocator's own; returns how many. Must not allocate. The default records none.
    fn backtrace(&self, frames: &mut [usize]) -> usize {
        let _ = frames;
        0
    }

    /// Writes one return address for a report (the std platform writes `module+offset`). Must
    /// not allocate.
    fn describe_addr(&self, addr: usize, w: &mut dyn core::fmt::Write) {
        let _ = write!(w, "{addr:#x}");
    }

    /// Called while spinning on a lock: yield the CPU if there is anything else to run.
    #[inline]
    fn relax(&self) {
        core::hint::spin_loop();
    }
}
