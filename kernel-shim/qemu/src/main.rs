//! ctxalloc-kernel on bare metal: QEMU `virt`, riscv64, two harts, M-mode, no firmware.
//!
//! Both harts enter `_start`; hart 0 zeroes `.bss`, hands the allocator its region and releases
//! hart 1. Then both run the suite in lock step (a barrier between tests): per-hart scopes, slab
//! traffic with cross-hart frees, a shrinker under a small region with NOFS honoured, and a
//! mempool both harts draw on while that region is exhausted. Then it becomes a small preemptive
//! kernel (`sched`): timer interrupts on both harts, eight tasks on a shared run queue holding
//! scopes across preemption and migration, interrupt handlers allocating in atomic context.
//! Each result goes to the UART; hart 0 ends QEMU through the `sifive_test` device: pass, or
//! fail with the number of failed tests.
//!
//! `cd kernel-shim/qemu && cargo run --release`

#![no_std]
#![no_main]

extern crate alloc;

mod sched;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::alloc::Layout;
use core::fmt::{self, Write};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use ctxalloc_kernel::{
    Gfp, KernelAlloc, PerCpu, Platform, ReclaimClass, ScanResult, ShrinkControl, Shrinker, ThreadCtx,
};

const HARTS: usize = 2;
const UART: usize = 0x1000_0000;
const TEST_DEVICE: usize = 0x10_0000;
const CLINT_MTIME: usize = 0x0200_bff8;

core::arch::global_asm!(
    ".section .text.entry",
    ".global _start",
    "_start:",
    "  csrr a0, mhartid",
    "  li t0, 2",
    "  bgeu a0, t0, 2f",
    "  la sp, _stacks_top",
    "  slli t1, a0, 18",
    "  sub sp, sp, t1",
    "  call kmain",
    "2:",
    "  wfi",
    "  j 2b",
);

// ---------------------------------------------------------------------------------------------
// The machine

fn hart_id() -> usize {
    let id: usize;
    // SAFETY: reads a CSR, no side effects.
    unsafe { core::arch::asm!("csrr {}, mhartid", out(reg) id) };
    id
}

/// The CLINT's `mtime`: 10 MHz on `virt`.
fn mtime() -> u64 {
    // SAFETY: a read-only device register.
    unsafe { (CLINT_MTIME as *const u64).read_volatile() }
}

/// The UART, one line at a time.
static PRINT: spin::Mutex<()> = spin::Mutex::new(());

struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            // SAFETY: the 16550 of `virt`: wait for THR empty (LSR bit 5), then write.
            unsafe {
                while (((UART + 5) as *const u8).read_volatile() & 0x20) == 0 {}
                (UART as *mut u8).write_volatile(b);
            }
        }
        Ok(())
    }
}

macro_rules! println {
    ($($t:tt)*) => {{
        let _g = PRINT.lock();
        let _ = writeln!(Uart, $($t)*);
    }};
}

fn exit(failed: usize) -> ! {
    let code: u32 = if failed == 0 { 0x5555 } else { ((failed as u32) << 16) | 0x3333 };
    // SAFETY: the `sifive_test` device: this write ends QEMU.
    unsafe { (TEST_DEVICE as *mut u32).write_volatile(code) };
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // The print lock may be held by this hart: write without it.
    let _ = writeln!(Uart, "hart {}: panic: {info}", hart_id());
    exit(99)
}

/// Writes a line to the UART if nobody is printing one, else drops it: for reports from trap
/// handlers and tasks that must never wait for a lock a preempted task may hold.
fn raw_print(args: fmt::Arguments<'_>) {
    if let Some(_g) = RAW_PRINT.try_lock() {
        let _ = Uart.write_fmt(args);
    }
}

static RAW_PRINT: spin::Mutex<()> = spin::Mutex::new(());

/// Interrupt nesting per hart: non-zero inside a trap handler. Only its own hart touches it.
static IRQ_DEPTH: [AtomicUsize; HARTS] = [const { AtomicUsize::new(0) }; HARTS];
/// Timer ticks that arrived while a hart was inside the allocator, taken at its `leave`.
static HELD_OFF: AtomicUsize = AtomicUsize::new(0);

fn irq_depth() -> usize {
    IRQ_DEPTH[hart_id()].load(Ordering::Relaxed)
}

/// The platform of every allocator's harts, M-mode. Contexts are per hart; the tasks' scopes
/// move with them at each context switch (`sched`). `enter`/`leave` hold interrupts off around
/// every allocator call, so a timer handler that allocates never finds its hart's heap in the
/// middle of an update, and the task is not preempted while it uses the hart's context.
pub(crate) struct Virt(&'static PerCpu<HARTS>);

// SAFETY: one context per hart, used between `enter` and `leave` with interrupts (and so
// preemption) off on that hart; the scheduler moves the running task's scopes at each switch.
unsafe impl Platform for Virt {
    fn context(&self) -> *const ThreadCtx {
        self.0.get(hart_id())
    }
    #[inline(always)]
    fn enter(&self) -> usize {
        let old: usize;
        // SAFETY: clears mstatus.MIE, returning the old value.
        unsafe { core::arch::asm!("csrrci {}, mstatus, 8", out(reg) old) };
        old & 8
    }
    #[inline(always)]
    fn leave(&self, token: usize) {
        if token != 0 {
            let pending: usize;
            // SAFETY: reads mip, then sets mstatus.MIE again (it was set at the `enter`).
            unsafe {
                core::arch::asm!("csrr {}, mip", out(reg) pending);
                core::arch::asm!("csrsi mstatus, 8");
            }
            if pending & (1 << 7) != 0 {
                HELD_OFF.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    fn in_atomic(&self) -> bool {
        irq_depth() > 0
    }
    fn now_ns(&self) -> u64 {
        mtime() * 100
    }
    fn report(&self, msg: &str) {
        let _ = Uart.write_str(msg);
    }
}

static MAIN_CPUS: PerCpu<HARTS> = PerCpu::new();
static SMALL_CPUS: PerCpu<HARTS> = PerCpu::new();

#[global_allocator]
static HEAP: KernelAlloc<Virt> = KernelAlloc::new(Virt(&MAIN_CPUS));
/// A second allocator over a small region, for reclaim and the mempool.
static SMALL: KernelAlloc<Virt> = KernelAlloc::new(Virt(&SMALL_CPUS));

/// A heap region, aligned to a segment (4 MiB) so every byte of it can hold small objects.
#[repr(C, align(4194304))]
struct Region<const N: usize>([u8; N]);
const _: () = assert!(core::mem::align_of::<Region<0>>() == ctxalloc_kernel::SEGMENT_SIZE);

static mut HEAP_REGION: Region<{ 32 << 20 }> = Region([0; 32 << 20]);
static mut SMALL_REGION: Region<{ 8 << 20 }> = Region([0; 8 << 20]);
static mut TASKS_REGION: Region<{ sched::TASKS_REGION }> = Region([0; sched::TASKS_REGION]);

/// 1 until hart 0 has zeroed `.bss` and set up the allocators (in `.data`, not zeroed).
static BOOTED: AtomicUsize = AtomicUsize::new(1);

// ---------------------------------------------------------------------------------------------
// Lock step

struct Barrier {
    count: AtomicUsize,
    generation: AtomicUsize,
}

static BARRIER: Barrier = Barrier { count: AtomicUsize::new(0), generation: AtomicUsize::new(0) };

fn barrier() {
    let gen = BARRIER.generation.load(Ordering::Acquire);
    if BARRIER.count.fetch_add(1, Ordering::AcqRel) + 1 == HARTS {
        BARRIER.count.store(0, Ordering::Relaxed);
        BARRIER.generation.store(gen + 1, Ordering::Release);
    } else {
        while BARRIER.generation.load(Ordering::Acquire) == gen {
            core::hint::spin_loop();
        }
    }
}

static FAILED: AtomicUsize = AtomicUsize::new(0);
static PASSED: AtomicUsize = AtomicUsize::new(0);

fn check(name: &str, ok: bool) {
    if ok {
        PASSED.fetch_add(1, Ordering::Relaxed);
        println!("ok   {name} (hart {})", hart_id());
    } else {
        FAILED.fetch_add(1, Ordering::Relaxed);
        println!("FAIL {name} (hart {})", hart_id());
    }
}

// ---------------------------------------------------------------------------------------------
// The suite

fn per_hart_scopes(hart: usize) {
    let mine = if hart == 0 { Gfp::NOFS } else { Gfp::NORECLAIM };
    let g = HEAP.scope(mine);
    barrier(); // both scopes open now
    let v: Vec<u64> = (0..1000).collect(); // allocations under this hart's scope
    check("per-hart scopes: each hart sees only its own", HEAP.current() == mine && v.len() == 1000);
    barrier();
    drop(g);
    check("per-hart scopes: closed", HEAP.current() == Gfp::KERNEL);
}

/// Each hart allocates boxes and hands them to the other, which verifies and frees them.
static MAILBOX: [spin::Mutex<Vec<usize>>; HARTS] = [const { spin::Mutex::new(Vec::new()) }; HARTS];

fn cross_hart_frees(hart: usize) {
    let other = 1 - hart;
    for round in 0..20usize {
        let boxes: Vec<usize> = (0..500usize)
            .map(|i| {
                let size = 16 + (i * 37 + round * 11) % 2000;
                let b: Box<[u8]> = alloc::vec![(i ^ hart) as u8; size].into_boxed_slice();
                Box::into_raw(b) as *mut u8 as usize | (size << 40)
            })
            .collect();
        MAILBOX[other].lock().extend(boxes);
        barrier();
        let mine = core::mem::take(&mut *MAILBOX[hart].lock());
        let mut ok = true;
        for (i, packed) in mine.into_iter().enumerate() {
            let (addr, size) = (packed & ((1 << 40) - 1), packed >> 40);
            // SAFETY: a box the other hart made with this size and gave up.
            let b = unsafe { Box::from_raw(core::ptr::slice_from_raw_parts_mut(addr as *mut u8, size)) };
            ok &= b.iter().all(|&x| x == (i ^ other) as u8);
        }
        if !ok {
            check("cross-hart frees: contents intact", false);
            return;
        }
        barrier();
    }
    let s = HEAP.stats();
    check("cross-hart frees: 10 000 boxes freed by the other hart", s.bad_frees == 0);
}

/// A filesystem-class cache of 256 KiB blocks in the small region.
struct FsCache {
    blocks: spin::Mutex<Vec<usize>>,
    scans: AtomicUsize,
}

const BLK: usize = 256 << 10;

fn blk() -> Layout {
    Layout::from_size_align(BLK, 4096).unwrap()
}

impl Shrinker for FsCache {
    fn name(&self) -> &str {
        "qemu-fs-cache"
    }
    fn class(&self) -> ReclaimClass {
        ReclaimClass::Fs
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        self.scans.fetch_add(1, Ordering::SeqCst);
        let Some(mut b) = self.blocks.try_lock() else { return ScanResult::Stop };
        let mut n = 0;
        while n < sc.nr_to_scan {
            let Some(a) = b.pop() else { break };
            // SAFETY: a live block of the small allocator.
            unsafe { SMALL.dealloc_with(NonNull::new(a as *mut u8).unwrap(), blk()) };
            n += 1;
        }
        ScanResult::Freed(n)
    }
}

static CACHE: FsCache = FsCache { blocks: spin::Mutex::new(Vec::new()), scans: AtomicUsize::new(0) };

fn shrinker_and_nofs(hart: usize) {
    if hart == 0 {
        let registered = SMALL.register_shrinker(&CACHE).is_ok();
        while let Ok(p) = SMALL.alloc_with(blk(), Gfp::NORECLAIM | Gfp::NOWARN) {
            CACHE.blocks.lock().push(p.as_ptr() as usize);
        }
        let cached = CACHE.blocks.lock().len();
        let before = CACHE.scans.load(Ordering::SeqCst);
        let nofs = SMALL.scope(Gfp::NOFS);
        let refused = SMALL.alloc_with(blk(), Gfp::NORETRY | Gfp::NOWARN).is_err();
        let untouched = CACHE.scans.load(Ordering::SeqCst) == before;
        drop(nofs);
        check("small region: the FS cache filled it", registered && cached >= 8);
        check("NOFS: reclaim never entered the FS shrinker", refused && untouched);
        let p = SMALL.alloc_with(blk(), Gfp::KERNEL);
        check("reclaim: the shrinker made room", p.is_ok() && CACHE.scans.load(Ordering::SeqCst) > before);
        if let Ok(p) = p {
            // SAFETY: live block.
            unsafe { SMALL.dealloc_with(p, blk()) };
        }
        let s = SMALL.stats();
        check("usage never above the limit", s.peak <= s.limit.unwrap_or(0));
    }
    barrier();
}

static POOL: spin::Once<ctxalloc_kernel::KernelMempool<'static, Virt>> = spin::Once::new();

fn mempool_progress(hart: usize) {
    if hart == 0 {
        POOL.call_once(|| SMALL.mempool(blk(), 1).expect("pool"));
        // The cache keeps the small region full: the allocator refuses, the pool must serve.
        while let Ok(p) = SMALL.alloc_with(blk(), Gfp::NORECLAIM | Gfp::NOWARN) {
            CACHE.blocks.lock().push(p.as_ptr() as usize);
        }
        CACHE.scans.store(0, Ordering::SeqCst);
    }
    barrier();
    let pool = POOL.get().unwrap();
    let mut ok = true;
    for r in 0..300usize {
        // NOFS: the only reclaimable memory (the FS cache) is off limits; the pool serves.
        let e = pool.alloc(Gfp::NOFS).expect("a sleeping mempool alloc never fails");
        // SAFETY: an element of ours; the mark proves exclusive use.
        unsafe {
            e.as_ptr().cast::<usize>().write(hart << 32 | r);
            for _ in 0..50 {
                core::hint::spin_loop();
            }
            ok &= e.as_ptr().cast::<usize>().read() == hart << 32 | r;
            pool.free(e);
        }
    }
    barrier();
    check("mempool: 300 rounds on a pool of 1, region exhausted", ok && pool.curr_nr() == 1);
    if hart == 0 {
        let s = SMALL.stats();
        check(
            "mempool: served from its reserve, FS cache untouched under NOFS",
            s.mempool_reserve_uses > 0 && CACHE.scans.load(Ordering::SeqCst) == 0,
        );
    }
    barrier();
}

/// The second half: the preemptive kernel of `sched`, both harts, until every task is done.
fn preemptive(hart: usize) {
    use sched::*;
    if hart == 0 {
        setup();
    }
    barrier();
    run(hart);
    barrier();
    if hart == 0 {
        let load = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        println!(
            "preemptive: {TASKS_N} tasks, {} ticks, {} preemptions, {} migrations, {} task allocations, \
             {} interrupt allocations + {} mempool takes, {} ticks held off to an allocator call's end, \
             {} shrinker scans for scoped tasks, {} violations",
            load(&TICKS),
            load(&PREEMPTIONS),
            load(&MIGRATIONS),
            load(&TASK_ALLOCS),
            load(&IRQ_ALLOCS),
            load(&IRQ_POOL_TAKES),
            load(&HELD_OFF),
            load(&SCANS_FOR_SCOPED),
            load(&VIOLATIONS),
        );
        check(
            "preemptive: tasks were preempted and migrated",
            load(&PREEMPTIONS) > 0 && load(&MIGRATIONS) > 0,
        );
        check("preemptive: interrupt handlers allocated in atomic context", load(&IRQ_ALLOCS) > 0);
        check("preemptive: no scope violated across preemption and migration", load(&VIOLATIONS) == 0);
        let s = TASKS.stats();
        check("preemptive: usage never above the limit", s.peak <= s.limit.unwrap_or(0));
    }
    barrier();
}

#[no_mangle]
extern "C" fn kmain(hart: usize) -> ! {
    if hart == 0 {
        extern "C" {
            static mut _bss_start: u8;
            static mut _bss_end: u8;
        }
        // SAFETY: `.bss` is ours to zero before anything uses it (hart 1 waits on `BOOTED`,
        // which lives in `.data`).
        unsafe {
            let start = &raw mut _bss_start;
            let end = &raw mut _bss_end;
            start.write_bytes(0, end.addr() - start.addr());
            HEAP.init((&raw mut HEAP_REGION).cast(), 32 << 20);
            SMALL.init((&raw mut SMALL_REGION).cast(), 8 << 20);
            sched::TASKS.init((&raw mut TASKS_REGION).cast(), sched::TASKS_REGION);
        }
        println!("ctxalloc-kernel on QEMU virt: {HARTS} harts, 32 MiB heap, 8 MiB small region");
        BOOTED.store(2, Ordering::Release);
    } else {
        while BOOTED.load(Ordering::Acquire) != 2 {
            core::hint::spin_loop();
        }
    }
    barrier();
    per_hart_scopes(hart);
    barrier();
    cross_hart_frees(hart);
    barrier();
    shrinker_and_nofs(hart);
    mempool_progress(hart);
    barrier();
    preemptive(hart);
    if hart == 0 {
        let (p, f) = (PASSED.load(Ordering::SeqCst), FAILED.load(Ordering::SeqCst));
        println!("{p} passed, {f} failed");
        exit(f);
    }
    loop {
        // SAFETY: waits for an interrupt (none come): parks the hart until QEMU exits.
        unsafe { core::arch::asm!("wfi") };
    }
}
