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
use std::sync::{mpsc, Arc};
use std::thread;

pub use ctxalloc_tests::Rng;

pub mod mbench;

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

/// Single-thread random churn over mixed sizes: `iters` times, free a random live block and
/// allocate one of a random size from `sizes` in its place. Unlike [`churn`], the new block
/// rarely fits the hole just made, so the live set fragments the way a real heap does.
#[inline(never)]
pub fn mixed_churn<A: GlobalAlloc>(a: &A, s: &mut Slots, sizes: &[usize], rng: &mut Rng, iters: usize) {
    let n = s.slots.len() as u64;
    for _ in 0..iters {
        let i = rng.below(n) as usize;
        let (p, _) = s.slots[i];
        let l = pick(rng, sizes);
        // SAFETY: a live block of the slot's layout, replaced by a fresh one.
        unsafe {
            a.dealloc(p, s.slots[i].1);
            let q = a.alloc(l);
            black_box(q);
            s.slots[i] = (q, l);
        }
    }
}

/// Larson (mimalloc-bench's larsonN, as a server's worker threads): `threads` threads in a ring,
/// each with `slots` live blocks of mixed sizes; each round a thread replaces `ops` random blocks
/// of its set, then hands the whole set to its successor and takes over its predecessor's. The
/// survivors of a generation are freed by the next thread: part of the frees are cross-thread,
/// most are local, as in a real server.
pub fn larson<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    slots: usize,
    rounds: usize,
    ops: usize,
    sizes: &[usize],
) {
    ring(threads, 1, |i, tx, rx| {
        let mut rng = Rng::new(i as u64 + 1);
        let mut set = Batch(Vec::with_capacity(slots));
        for _ in 0..slots {
            let l = pick(&mut rng, sizes);
            // SAFETY: non-zero size.
            set.0.push((unsafe { a.alloc(l) }, l));
        }
        for _ in 0..rounds {
            for _ in 0..ops {
                let j = rng.below(slots as u64) as usize;
                let l = pick(&mut rng, sizes);
                let (p, old) = set.0[j];
                // SAFETY: a live block of the set, now ours, replaced by a fresh one.
                unsafe { a.dealloc(p, old) };
                // SAFETY: non-zero size.
                set.0[j] = (unsafe { a.alloc(l) }, l);
            }
            tx.send(set).unwrap();
            set = rx.recv().unwrap();
        }
        for (p, l) in set.0 {
            // SAFETY: the last generation's blocks, ours to free.
            unsafe { a.dealloc(p, l) };
        }
    });
}

/// A batch of blocks on its way to the thread that frees them.
struct Batch(Vec<(*mut u8, Layout)>);

/// Runs `body(i, to_successor, from_predecessor)` on `threads` threads joined in a ring by
/// channels of `capacity` batches.
fn ring<F>(threads: usize, capacity: usize, body: F)
where
    F: Fn(usize, mpsc::SyncSender<Batch>, mpsc::Receiver<Batch>) + Sync,
{
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..threads).map(|_| mpsc::sync_channel::<Batch>(capacity)).unzip();
    thread::scope(|sc| {
        for (i, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(i + 1) % threads].clone();
            let body = &body;
            sc.spawn(move || body(i, tx, rx));
        }
        drop(txs);
    });
}

/// An 8-aligned layout of a size drawn from `sizes`.
pub fn pick(rng: &mut Rng, sizes: &[usize]) -> Layout {
    mbench::layout(sizes[rng.below(sizes.len() as u64) as usize])
}

// SAFETY: the blocks are plain memory owned by the batch; whoever holds it may free them.
unsafe impl Send for Batch {}

/// Cross-thread exchange (xmalloc/larson-like, batched): `threads` threads in a ring; each
/// round every thread frees the batch it received from its predecessor and sends its successor
/// a fresh batch of `batch` blocks of mixed sizes. Every free is a cross-thread free, and the
/// hand-over costs one channel message per batch, not per block, so the allocator dominates.
pub fn exchange<A: GlobalAlloc + Sync>(a: &A, threads: usize, rounds: usize, batch: usize, sizes: &[usize]) {
    ring(threads, 1, |i, tx, rx| {
        let mut rng = Rng::new(i as u64 + 1);
        let fill = |b: &mut Batch, rng: &mut Rng| {
            for _ in 0..batch {
                let l = pick(rng, sizes);
                // SAFETY: non-zero size.
                b.0.push((unsafe { a.alloc(l) }, l));
            }
        };
        let mut b = Batch(Vec::with_capacity(batch));
        fill(&mut b, &mut rng);
        tx.send(b).unwrap();
        for round in 0..rounds {
            let mut b = rx.recv().unwrap();
            for (p, l) in b.0.drain(..) {
                // SAFETY: allocated by the predecessor with `l`, now ours.
                unsafe { a.dealloc(p, l) };
            }
            if round + 1 < rounds {
                fill(&mut b, &mut rng);
                tx.send(b).unwrap();
            }
        }
    });
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
