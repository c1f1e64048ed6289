//! A deterministic in-memory [`Platform`] for tests, fuzzing and miri: one arena, a page bitmap,
//! injectable page-source failures, captured reports, a clock that ticks per call.
//!
//! Pointers are rebuilt from the arena's base pointer ([`Platform::ptr_from_addr`]), so miri's
//! strict provenance and Stacked Borrows checks stay on for the whole core.
//!
//! It uses `std` (thread-locals, a mutex); the rest of the crate does not.

pub mod model;

use crate::gfp::Gfp;
use crate::platform::{Platform, ThreadCtx};
use crate::slab::SEGMENT_SIZE;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::boxed::Box;
use std::cell::RefCell;
use std::string::String;
use std::sync::Mutex;
use std::vec::Vec;

const PAGE: usize = 4096;

/// The mock platform. See the module documentation.
///
/// ```
/// use ctxalloc_core::{mock::MockPlatform, Core};
/// use core::alloc::Layout;
/// let core = Core::new(MockPlatform::new(16 << 20));
/// let l = Layout::from_size_align(1 << 20, 8).unwrap(); // a vmap area
/// let p = unsafe { core.alloc(l) };
/// assert!(!p.is_null());
/// assert!(core.usage() >= 1 << 20);
/// unsafe { core.dealloc(p, l) };
/// ```
pub struct MockPlatform {
    /// Start of the arena: every pointer the core gets derives from it.
    base: NonNull<u8>,
    /// Arena length in bytes.
    len: usize,
    /// One bit per page: mapped; and where the next search starts (next fit).
    mapped: Mutex<(Vec<u64>, usize)>,
    /// Pages mapped now, and the most ever.
    mapped_pages: AtomicUsize,
    /// Fail this many `map` calls before succeeding again.
    fail_maps: AtomicUsize,
    /// Fail every `map` while set.
    fail_all: core::sync::atomic::AtomicBool,
    /// Reports written so far.
    reports: Mutex<Vec<String>>,
    /// The context word of the calling thread at each successful `map`.
    map_contexts: Mutex<Vec<Gfp>>,
    /// Echo reports to stderr.
    echo: bool,
    /// Ticks 1 ms per `now_ns` call.
    clock: AtomicU64,
    /// Calls of `background_wanted`.
    background_wakeups: AtomicUsize,
    huge_advised: AtomicUsize,
    /// Run by `background_wanted`: a test's stand-in for a thread start that allocates.
    on_background: Mutex<Option<std::sync::Arc<dyn Fn() + Send + Sync>>>,
    /// What `background_if_running` answers: false stands for "no background thread runs".
    background_runs: AtomicBool,
    /// What `in_atomic` answers, for every thread: a test's stand-in for an interrupt handler.
    in_atomic: AtomicBool,
    /// Distinguishes mock instances in the per-thread context table.
    id: usize,
}

// SAFETY: the arena pointer is only used to derive pointers; all mutable state is atomic or
// behind a mutex.
unsafe impl Sync for MockPlatform {}
// SAFETY: as above.
unsafe impl Send for MockPlatform {}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

std::thread_local! {
    /// This thread's context for each mock instance it has used.
    static CONTEXTS: RefCell<Vec<(usize, Box<ThreadCtx>)>> = const { RefCell::new(Vec::new()) };
    /// The instance and context `thread` returned last on this thread: one compare instead of
    /// a search (the core asks for its context on every allocation, free and lock — under
    /// miri each search is interpreted).
    static LAST: core::cell::Cell<(usize, *const ThreadCtx)> = const { core::cell::Cell::new((0, core::ptr::null())) };
}

/// A zeroed arena of a dropped instance.
struct Arena(NonNull<u8>, usize);

// SAFETY: an arena nobody uses; only its owner (the cache, then one instance) touches it.
unsafe impl Send for Arena {}

/// Zeroed arenas of dropped instances, reused by the next `new` of the same size: a fuzzer
/// creating an instance per input then pays no fresh-memory page faults. A global (not a
/// thread-local) so leak checkers see the arenas as reachable.
static ARENAS: Mutex<Vec<Arena>> = Mutex::new(Vec::new());

/// Keep at most this many zeroed arenas.
const CACHED_ARENAS: usize = 2;

impl MockPlatform {
    /// An arena of `len` bytes (rounded up to a segment), aligned to a segment.
    pub fn new(len: usize) -> Self {
        let len = len.next_multiple_of(SEGMENT_SIZE);
        let cached = {
            let mut a = ARENAS.lock().unwrap();
            a.iter().position(|x| x.1 == len).map(|i| a.swap_remove(i).0)
        };
        let base = cached.unwrap_or_else(|| {
            let layout = std::alloc::Layout::from_size_align(len, SEGMENT_SIZE).expect("arena layout");
            // SAFETY: non-zero size.
            let base = unsafe { std::alloc::alloc_zeroed(layout) };
            NonNull::new(base).expect("mock arena allocation failed")
        });
        MockPlatform {
            base,
            len,
            mapped: Mutex::new((std::vec![0u64; (len / PAGE).div_ceil(64)], 0)),
            mapped_pages: AtomicUsize::new(0),
            fail_maps: AtomicUsize::new(0),
            fail_all: core::sync::atomic::AtomicBool::new(false),
            reports: Mutex::new(Vec::new()),
            map_contexts: Mutex::new(Vec::new()),
            echo: std::env::var_os("CTXALLOC_MOCK_ECHO").is_some(),
            clock: AtomicU64::new(0),
            background_wakeups: AtomicUsize::new(0),
            huge_advised: AtomicUsize::new(0),
            on_background: Mutex::new(None),
            background_runs: AtomicBool::new(true),
            in_atomic: AtomicBool::new(false),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Makes every thread's allocations run as in atomic context (an interrupt handler, or
    /// preemption off) while `on`: [`Platform::in_atomic`] answers it.
    pub fn set_in_atomic(&self, on: bool) {
        self.in_atomic.store(on, Ordering::Relaxed);
    }

    /// Makes the next `n` `map` calls fail.
    pub fn fail_next_maps(&self, n: usize) {
        self.fail_maps.store(n, Ordering::Relaxed);
    }

    /// Makes every `map` call fail while `on`.
    pub fn fail_all_maps(&self, on: bool) {
        self.fail_all.store(on, Ordering::Relaxed);
    }

    /// Bytes mapped now.
    pub fn mapped_bytes(&self) -> usize {
        self.mapped_pages.load(Ordering::Relaxed) * PAGE
    }

    /// Every report written so far.
    pub fn reports(&self) -> Vec<String> {
        self.reports.lock().unwrap().clone()
    }

    /// The calling thread's context word at each successful `map` so far — what an internal
    /// scope looked like from the page source.
    pub fn map_contexts(&self) -> Vec<Gfp> {
        self.map_contexts.lock().unwrap().clone()
    }

    /// How often the core asked for background reclaim (there is no background thread here:
    /// tests call `Core::background_reclaim` themselves).
    pub fn background_wakeups(&self) -> usize {
        self.background_wakeups.load(Ordering::Relaxed)
    }

    /// Bytes the core advised to be backed by huge pages so far.
    pub fn huge_advised(&self) -> usize {
        self.huge_advised.load(Ordering::Relaxed)
    }

    /// Makes `background_wanted` run `f` on the calling thread — what the std platform's
    /// thread start does when it allocates the new thread's stack and TLS through the
    /// allocator in a C program. `f` may allocate through the core.
    pub fn on_background_wanted(&self, f: impl Fn() + Send + Sync + 'static) {
        *self.on_background.lock().unwrap() = Some(std::sync::Arc::new(f));
    }

    /// Whether a background thread is taken to run: with `false`, `background_if_running`
    /// wakes nothing and answers false (the std platform with its thread idled out).
    pub fn set_background_runs(&self, runs: bool) {
        self.background_runs.store(runs, Ordering::Relaxed);
    }

    /// Removes the hook of [`on_background_wanted`](Self::on_background_wanted).
    pub fn clear_background_hook(&self) {
        *self.on_background.lock().unwrap() = None;
    }

    /// Whether `[addr, addr+len)` lies in the arena.
    pub fn contains(&self, addr: usize, len: usize) -> bool {
        let b = self.base.as_ptr().addr();
        addr >= b && addr + len <= b + self.len
    }

    fn set_range(&self, bits: &mut [u64], first: usize, n: usize, on: bool) {
        for i in first..first + n {
            let was = bits[i / 64] >> (i % 64) & 1 == 1;
            assert_ne!(was, on, "mock: page {i} mapped twice or unmapped twice");
            bits[i / 64] ^= 1 << (i % 64);
        }
    }
}

impl Drop for MockPlatform {
    fn drop(&mut self) {
        // This thread's context for this instance goes too (other threads' go with them).
        let _ = CONTEXTS.try_with(|c| c.borrow_mut().retain(|(id, _)| *id != self.id));
        let _ = LAST.try_with(|l| {
            if l.get().0 == self.id {
                l.set((0, core::ptr::null()));
            }
        });
        // Zero what is still mapped (unmapped ranges were zeroed by `unmap`), then keep the
        // arena for the next instance, or free it.
        let bits = &self.mapped.get_mut().unwrap().0;
        for (w, &word) in bits.iter().enumerate().filter(|_| Self::MAP_ZEROED) {
            let mut m = word;
            while m != 0 {
                let page = w * 64 + m.trailing_zeros() as usize;
                // SAFETY: a page of the arena (free memory in it may be poisoned: fuzz builds).
                unsafe {
                    let p = self.base.as_ptr().add(page * PAGE);
                    crate::track::unpoison(p, PAGE);
                    p.write_bytes(0, PAGE);
                }
                m &= m - 1;
            }
        }
        let kept = {
            let mut a = ARENAS.lock().unwrap_or_else(|e| e.into_inner());
            (a.len() < CACHED_ARENAS).then(|| a.push(Arena(self.base, self.len))).is_some()
        };
        if !kept {
            let layout = std::alloc::Layout::from_size_align(self.len, SEGMENT_SIZE).unwrap();
            // SAFETY: allocated in `new` with this layout.
            unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
        }
    }
}

// SAFETY: `thread` returns a per-thread, per-instance context kept alive by the thread-local
// table; `map` hands out disjoint, zeroed, page-aligned ranges of the arena; pointers are rebuilt
// from the arena's base; nothing calls back into the core.
unsafe impl Platform for MockPlatform {
    /// Natively the mock zeroes what it unmaps, like `mmap`; under miri (where every byte of a
    /// memset is interpreted) it does not, like a kernel's static region — so miri exercises
    /// the core's "memory is not zeroed" paths and the native tests the zeroed ones.
    const MAP_ZEROED: bool = !cfg!(miri);
    const CAN_PURGE: bool = true;

    fn thread(&self) -> *const ThreadCtx {
        let (id, ctx) = LAST.with(|l| l.get());
        if id == self.id {
            return ctx;
        }
        let ctx = CONTEXTS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some((_, ctx)) = c.iter().find(|(id, _)| *id == self.id) {
                return &**ctx as *const ThreadCtx;
            }
            c.push((self.id, Box::new(ThreadCtx::new())));
            &*c.last().unwrap().1 as *const ThreadCtx
        });
        LAST.with(|l| l.set((self.id, ctx)));
        ctx
    }

    fn in_atomic(&self) -> bool {
        self.in_atomic.load(Ordering::Relaxed)
    }

    /// `ThreadCtx::none()` until `thread` ran on this thread for this instance (and again after
    /// another instance was used on it): the fast paths' way in for a thread without a context
    /// is exercised too.
    fn thread_if_any(&self) -> *const ThreadCtx {
        let (id, ctx) = LAST.with(|l| l.get());
        if id == self.id {
            ctx
        } else {
            ThreadCtx::none()
        }
    }

    unsafe fn map(&self, len: usize, align: usize) -> Option<NonNull<u8>> {
        if self.fail_all.load(Ordering::Relaxed) {
            return None;
        }
        if self.fail_maps.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return None;
        }
        assert!(len.is_multiple_of(PAGE) && align.is_power_of_two() && align >= PAGE);
        let n = len / PAGE;
        let step = align / PAGE;
        let total = self.len / PAGE;
        let mut guard = self.mapped.lock().unwrap();
        let (bits, cursor) = &mut *guard;
        let is_set = |bits: &[u64], i: usize| bits[i / 64] >> (i % 64) & 1 == 1;
        // Next fit: from where the last mapping ended, then from the start.
        for (from, to) in [(*cursor, total), (0, (*cursor + n).min(total))] {
            let mut start = from.next_multiple_of(step);
            while start + n <= to {
                match (start..start + n).find(|&i| is_set(bits, i)) {
                    None => {
                        self.set_range(bits, start, n, true);
                        *cursor = start + n;
                        self.mapped_pages.fetch_add(n, Ordering::Relaxed);
                        drop(guard);
                        // SAFETY: `thread` returns this thread's live context.
                        let ctx = unsafe { (*self.thread()).scope().current() };
                        self.map_contexts.lock().unwrap().push(ctx);
                        let p = self.ptr_from_addr(self.base.as_ptr().addr() + start * PAGE);
                        return NonNull::new(p);
                    }
                    Some(busy) => start = (busy + 1).next_multiple_of(step),
                }
            }
        }
        None
    }

    unsafe fn advise_huge(&self, ptr: NonNull<u8>, len: usize) {
        assert!(self.contains(ptr.as_ptr().addr(), len), "mock: advice outside the arena");
        self.huge_advised.fetch_add(len, Ordering::Relaxed);
    }

    unsafe fn map_at(&self, addr: NonNull<u8>, len: usize) -> bool {
        if self.fail_all.load(Ordering::Relaxed)
            || self.fail_maps.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
            || !self.contains(addr.as_ptr().addr(), len)
        {
            return false;
        }
        assert!(len.is_multiple_of(PAGE) && addr.as_ptr().addr().is_multiple_of(PAGE));
        let first = (addr.as_ptr().addr() - self.base.as_ptr().addr()) / PAGE;
        let n = len / PAGE;
        let mut guard = self.mapped.lock().unwrap();
        let bits = &mut guard.0;
        if (first..first + n).any(|i| bits[i / 64] >> (i % 64) & 1 == 1) {
            return false;
        }
        self.set_range(bits, first, n, true);
        self.mapped_pages.fetch_add(n, Ordering::Relaxed);
        true
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, len: usize) {
        assert!(self.contains(ptr.as_ptr().addr(), len), "mock: unmap outside the arena");
        if Self::MAP_ZEROED {
            // Unmapped memory reads as zero when mapped again.
            // SAFETY: the range is a mapping of ours that nobody uses any more.
            unsafe { ptr.as_ptr().write_bytes(0, len) };
        }
        let first = (ptr.as_ptr().addr() - self.base.as_ptr().addr()) / PAGE;
        let mut bits = self.mapped.lock().unwrap();
        self.set_range(&mut bits.0, first, len / PAGE, false);
        self.mapped_pages.fetch_sub(len / PAGE, Ordering::Relaxed);
    }

    unsafe fn purge(&self, ptr: NonNull<u8>, len: usize) -> bool {
        assert!(self.contains(ptr.as_ptr().addr(), len), "mock: purge outside the arena");
        if Self::MAP_ZEROED {
            // What MADV_DONTNEED does to the pages. The range is free memory, which fuzz builds
            // keep poisoned: the "kernel" writes it all the same.
            crate::track::unpoison(ptr.as_ptr(), len);
            // SAFETY: the range holds nothing anyone reads.
            unsafe { ptr.as_ptr().write_bytes(0, len) };
            crate::track::poison(ptr.as_ptr(), len);
        }
        true
    }

    unsafe fn remap(&self, ptr: NonNull<u8>, old_len: usize, new_len: usize) -> Option<NonNull<u8>> {
        // Like mremap(MREMAP_MAYMOVE): shrink in place, grow by moving.
        if new_len <= old_len {
            let first = (ptr.as_ptr().addr() - self.base.as_ptr().addr()) / PAGE;
            let tail = (old_len - new_len) / PAGE;
            if tail > 0 {
                if Self::MAP_ZEROED {
                    let tail_ptr = self.ptr_from_addr(ptr.as_ptr().addr() + new_len);
                    // SAFETY: the tail is part of the mapping and is being given up.
                    unsafe { tail_ptr.write_bytes(0, old_len - new_len) };
                }
                let mut bits = self.mapped.lock().unwrap();
                self.set_range(&mut bits.0, first + new_len / PAGE, tail, false);
                self.mapped_pages.fetch_sub(tail, Ordering::Relaxed);
            }
            return Some(ptr);
        }
        // SAFETY: forwarded; then copy and release the old mapping.
        unsafe {
            let new = self.map(new_len, PAGE)?;
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old_len);
            self.unmap(ptr, old_len);
            Some(new)
        }
    }

    #[inline]
    fn ptr_from_addr(&self, addr: usize) -> *mut u8 {
        self.base.as_ptr().with_addr(addr)
    }

    fn report(&self, msg: &str) {
        if self.echo {
            std::eprint!("{msg}");
        }
        self.reports.lock().unwrap().push(String::from(msg));
    }

    /// A panic, so that tests can observe what would abort a real process.
    fn abort(&self) -> ! {
        panic!("ctxalloc (mock platform): abort")
    }

    fn now_ns(&self) -> u64 {
        self.clock.fetch_add(1_000_000, Ordering::Relaxed)
    }

    fn wait(&self, word: &AtomicU32, expected: u32, _timeout_ns: u64) {
        if word.load(Ordering::Acquire) == expected {
            std::thread::yield_now();
        }
    }

    fn wake_all(&self, _word: &AtomicU32) {}

    fn background_wanted(&self) {
        self.background_wakeups.fetch_add(1, Ordering::Relaxed);
        // Not under the mutex: the hook may come back here.
        let hook = self.on_background.lock().unwrap().clone();
        if let Some(f) = hook {
            f();
        }
    }

    fn background_if_running(&self) -> bool {
        // A wake, not a start: no hook (nothing is created, nothing allocates).
        let runs = self.background_runs.load(Ordering::Relaxed);
        if runs {
            self.background_wakeups.fetch_add(1, Ordering::Relaxed);
        }
        runs
    }

    fn relax(&self) {
        std::thread::yield_now();
    }
}
