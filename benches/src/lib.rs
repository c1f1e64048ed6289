//! Allocator workloads, generic over `GlobalAlloc`, so one binary runs ctxalloc, `System`,
//! mimalloc and jemalloc side by side.
//!
//! Every allocator is called through [`Called`], whose methods are `#[inline(never)]`: a program
//! reaches its `#[global_allocator]` through one call (`__rust_alloc` → the allocator's
//! `GlobalAlloc::alloc`), and the workloads pay exactly that, for every allocator alike.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

/// An allocator reached through one out-of-line call, as a global allocator is.
pub struct Called<A>(pub A);

// SAFETY: forwards to `A`.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Called<A> {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.0.alloc(layout) }
    }
    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

/// The allocators compared, by name.
pub const ALLOCATORS: [&str; 4] = ["ctxalloc", "mimalloc", "jemalloc", "system"];

/// Runs `f` with the allocator called `name`.
#[macro_export]
macro_rules! with_allocator {
    ($name:expr, |$a:ident| $body:expr) => {
        match $name {
            "ctxalloc" => {
                let $a = &$crate::Called(::ctxalloc::CtxAlloc::new());
                $body
            }
            "mimalloc" => {
                let $a = &$crate::Called(::mimalloc::MiMalloc);
                $body
            }
            "jemalloc" => {
                let $a = &$crate::Called(::tikv_jemallocator::Jemalloc);
                $body
            }
            "system" => {
                let $a = &$crate::Called(::std::alloc::System);
                $body
            }
            other => panic!("unknown allocator {other}"),
        }
    };
}

/// Live objects for [`churn`]: `slots` blocks of sizes cycling through 16..=256 bytes.
pub struct Slots {
    slots: Vec<(*mut u8, Layout)>,
    next: usize,
}

impl Slots {
    /// Fills `n` slots from `a`.
    pub fn new<A: GlobalAlloc>(a: &A, n: usize, sizes: &[usize]) -> Slots {
        let slots = (0..n)
            .map(|i| {
                let l = Layout::from_size_align(sizes[i % sizes.len()], 8).unwrap();
                // SAFETY: non-zero size.
                (unsafe { a.alloc(l) }, l)
            })
            .collect();
        Slots { slots, next: 0 }
    }

    /// Frees every slot into `a`.
    pub fn free<A: GlobalAlloc>(self, a: &A) {
        for (p, l) in self.slots {
            // SAFETY: allocated by `a` with `l`.
            unsafe { a.dealloc(p, l) };
        }
    }
}

/// Single-thread churn: `iters` times, free the oldest live block and allocate one of the same
/// size class in its place (the live set stays `slots.len()` blocks, so pages stay in use).
#[inline(never)]
pub fn churn<A: GlobalAlloc>(a: &A, s: &mut Slots, iters: usize) {
    let n = s.slots.len();
    for _ in 0..iters {
        let (p, l) = s.slots[s.next];
        // SAFETY: a live block of `l`, replaced by a fresh one.
        unsafe {
            a.dealloc(p, l);
            let q = a.alloc(l);
            black_box(q);
            s.slots[s.next].0 = q;
        }
        s.next += 1;
        if s.next == n {
            s.next = 0;
        }
    }
}

/// mimalloc-bench's glibc-simple: batches of 25, 100, 400 and 1600 blocks of 16 bytes, each
/// batch freed half in allocation order (FIFO), half in reverse (LIFO).
#[inline(never)]
pub fn glibc_simple<A: GlobalAlloc>(a: &A, rounds: usize, buf: &mut Vec<*mut u8>) {
    let l = Layout::from_size_align(16, 8).unwrap();
    for _ in 0..rounds {
        for batch in [25usize, 100, 400, 1600] {
            buf.clear();
            for _ in 0..batch {
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(l) };
                // SAFETY: a fresh block of 16 bytes.
                unsafe { p.write(1) };
                buf.push(p);
            }
            let half = batch / 2;
            for &p in &buf[..half] {
                // SAFETY: live blocks of `l`.
                unsafe { a.dealloc(p, l) };
            }
            for &p in buf[half..].iter().rev() {
                // SAFETY: live blocks of `l`.
                unsafe { a.dealloc(p, l) };
            }
        }
    }
}

/// A fixed single-producer single-consumer ring of pointers: no allocation of its own.
struct Ring {
    slots: Vec<AtomicPtr<u8>>,
    head: AtomicUsize,
    tail: AtomicUsize,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            slots: (0..cap).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
            head: AtomicUsize::new(0),
            tail: AtomicUsize::new(0),
        }
    }
    fn push(&self, p: *mut u8) {
        let t = self.tail.load(Ordering::Relaxed);
        while t - self.head.load(Ordering::Acquire) == self.slots.len() {
            std::hint::spin_loop();
        }
        self.slots[t % self.slots.len()].store(p, Ordering::Relaxed);
        self.tail.store(t + 1, Ordering::Release);
    }
    fn pop(&self) -> *mut u8 {
        let h = self.head.load(Ordering::Relaxed);
        while self.tail.load(Ordering::Acquire) == h {
            std::hint::spin_loop();
        }
        let p = self.slots[h % self.slots.len()].load(Ordering::Relaxed);
        self.head.store(h + 1, Ordering::Release);
        p
    }
}

/// Producer/consumer (xmalloc-test-like): one thread allocates `n` blocks of 16..=256 bytes,
/// another frees them — every free is a cross-thread free.
pub fn producer_consumer<A: GlobalAlloc + Sync>(a: &A, n: usize) {
    let ring = Arc::new(Ring::new(1024));
    thread::scope(|s| {
        let r = ring.clone();
        s.spawn(move || {
            for i in 0..n {
                let l = Layout::from_size_align(16 + (i % 16) * 16, 8).unwrap();
                let p = r.pop();
                // SAFETY: allocated by the producer with this layout.
                unsafe { a.dealloc(p, l) };
            }
        });
        for i in 0..n {
            let l = Layout::from_size_align(16 + (i % 16) * 16, 8).unwrap();
            // SAFETY: non-zero size.
            let p = unsafe { a.alloc(l) };
            ring.push(p);
        }
    });
}

/// Makes sure `System` is linked and callable (used by the workloads' callers).
pub fn system() -> Called<System> {
    Called(System)
}
