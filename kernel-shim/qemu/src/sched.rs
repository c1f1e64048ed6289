//! A small preemptive kernel on both harts: machine-timer interrupts, a round-robin scheduler
//! with one run queue shared by the harts (so tasks migrate), and tasks whose allocation
//! context is their own — per-task contexts of `ctxalloc-kernel` ([`TaskContext`],
//! [`KernelAlloc::switch_task`]).
//!
//! What it checks, and counts:
//!
//! * Eight tasks of four kinds hold a NOFS or a NOIO scope, as a cookie
//!   (`memalloc_*_save`) or through a [`ScopedSpinLock`], across preemptions and migrations,
//!   while allocating blocks of the `TASKS` allocator's small region. An FS-class and an
//!   IO-class shrinker over two caches of those blocks record the task they ran for: a shrinker
//!   running for a task whose scope forbids its class, or in interrupt context, is a violation;
//!   so is a task that finds its context word other than its scope after any allocation.
//! * Every timer tick allocates and frees packet-sized buffers and takes an element from a
//!   mempool, in atomic context (no flag passed): the allocator derives `GFP_ATOMIC` from
//!   [`Platform::in_atomic`]. Ticks never land inside the allocator: `enter`/`leave` hold
//!   interrupts off, and ticks that arrived meanwhile are counted.
//! * Preemptions, migrations and interrupt-context allocations are printed; any violation fails
//!   the run. `--features force-violation` skips the allocator's part of every other context
//!   switch, so scopes leak between tasks: that run must fail.
//!
//! The context of a preempted task is a trap frame on its own stack; the trap handler runs on a
//! per-hart trap stack (in `mscratch`), so a task that the other hart resumes at once never
//! shares its stack with this hart's handler.

use crate::{hart_id, irq_depth, Virt, HARTS};
use core::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use ctxalloc_kernel::{
    Gfp, KernelAlloc, KernelMempool, PerCpu, ReclaimClass, ScanResult, ScopedSpinLock, ShrinkControl,
    Shrinker, TaskContext,
};

/// Tasks in the run queue (four kinds, two of each).
pub const TASKS_N: usize = 8;
/// Timer period: 0.5 ms of the 10 MHz `mtime`.
const TICK: u64 = 5_000;
/// Words in a trap frame: x0‥x31 (x0 and sp unused), mepc, mstatus; 16-byte multiple.
const FRAME_WORDS: usize = 36;
const STACK: usize = 64 << 10;
const CLINT_MTIMECMP: usize = 0x0200_4000;
/// Scheduling rounds each task runs: allocations under its scope, then outside it.
const ROUNDS: usize = 150;

core::arch::global_asm!(
    ".section .text",
    ".balign 16",
    ".global trap_entry",
    "trap_entry:",
    "  addi sp, sp, -288",
    // Every register but x0 and sp (sp is the frame's end).
    ".irp n, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    r"  sd x\n, \n*8(sp)",
    ".endr",
    "  csrr t0, mepc",
    "  sd t0, 256(sp)",
    "  csrr t0, mstatus",
    "  sd t0, 264(sp)",
    "  mv a0, sp",
    // The handler runs on this hart's trap stack; it returns the frame to resume.
    "  csrr sp, mscratch",
    "  call trap_handler",
    "  mv sp, a0",
    "  ld t0, 256(sp)",
    "  csrw mepc, t0",
    "  ld t0, 264(sp)",
    "  csrw mstatus, t0",
    ".irp n, 1,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31",
    r"  ld x\n, \n*8(sp)",
    ".endr",
    "  addi sp, sp, 288",
    "  mret",
);

// ---------------------------------------------------------------------------------------------
// The allocator the tasks use, its region, shrinkers and mempool

static TASK_CPUS: PerCpu<HARTS> = PerCpu::new();
/// The tasks' allocator: a small region, so reclaim runs all the time.
pub static TASKS: KernelAlloc<Virt> = KernelAlloc::new(Virt(&TASK_CPUS));
pub const TASKS_REGION: usize = 8 << 20;

const BLK: usize = 64 << 10;
fn blk() -> Layout {
    Layout::from_size_align(BLK, 4096).unwrap()
}

/// Which task (index, or `IDLE`) runs on each hart. Written by that hart's trap handler only.
static CURRENT: [AtomicUsize; HARTS] = [const { AtomicUsize::new(IDLE) }; HARTS];
const IDLE: usize = usize::MAX;

/// The scope each task declares it is in now (its intent, kept apart from the allocator's
/// word): what the shrinkers and the tasks' own checks compare against.
static DECLARED: [AtomicUsize; TASKS_N] = [const { AtomicUsize::new(0) }; TASKS_N];

pub static VIOLATIONS: AtomicUsize = AtomicUsize::new(0);
pub static PREEMPTIONS: AtomicUsize = AtomicUsize::new(0);
pub static MIGRATIONS: AtomicUsize = AtomicUsize::new(0);
pub static TICKS: AtomicUsize = AtomicUsize::new(0);
pub static IRQ_ALLOCS: AtomicUsize = AtomicUsize::new(0);
pub static IRQ_POOL_TAKES: AtomicUsize = AtomicUsize::new(0);
pub static SCANS_FOR_SCOPED: AtomicUsize = AtomicUsize::new(0);
pub static TASK_ALLOCS: AtomicUsize = AtomicUsize::new(0);
static DONE: AtomicUsize = AtomicUsize::new(0);

fn violation(what: &str, task: usize) {
    if VIOLATIONS.fetch_add(1, Ordering::Relaxed) < 4 {
        // Written without the print lock: a task may hold it.
        crate::raw_print(format_args!("violation: {what} (task {task}, hart {})\n", hart_id()));
    }
}

/// A cache of blocks; its shrinker frees them and checks whom it runs for.
struct Cache {
    class: ReclaimClass,
    /// Preallocated to hold every block the region has: pushing never allocates.
    blocks: spin::Mutex<alloc::vec::Vec<usize>>,
}

impl Shrinker for Cache {
    fn name(&self) -> &str {
        match self.class {
            ReclaimClass::Fs => "task-fs-cache",
            _ => "task-io-cache",
        }
    }
    fn class(&self) -> ReclaimClass {
        self.class
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let task = CURRENT[hart_id()].load(Ordering::Relaxed);
        if irq_depth() > 0 {
            violation("a shrinker ran in interrupt context", task);
        } else if task != IDLE {
            let declared = Gfp::from_bits_truncate(DECLARED[task].load(Ordering::Relaxed) as u32);
            let forbidden = match self.class {
                ReclaimClass::Fs => declared.intersects(Gfp::NOFS | Gfp::NOIO),
                ReclaimClass::Io => declared.contains(Gfp::NOIO),
                ReclaimClass::Other => false,
            };
            if forbidden {
                violation("a shrinker ran for a task whose scope forbids its class", task);
            }
            if !declared.is_empty() {
                SCANS_FOR_SCOPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(mut b) = self.blocks.try_lock() else { return ScanResult::Stop };
        let mut n = 0;
        while n < sc.nr_to_scan {
            let Some(a) = b.pop() else { break };
            // SAFETY: a live block of the tasks' allocator, owned by the cache.
            unsafe { TASKS.dealloc_with(NonNull::new(a as *mut u8).unwrap(), blk()) };
            n += 1;
        }
        ScanResult::Freed(n)
    }
}

static FS_CACHE: Cache = Cache { class: ReclaimClass::Fs, blocks: spin::Mutex::new(alloc::vec::Vec::new()) };
static IO_CACHE: Cache = Cache { class: ReclaimClass::Io, blocks: spin::Mutex::new(alloc::vec::Vec::new()) };

/// Packet buffers for the interrupt handlers.
const PACKET: usize = 1536;
static POOL: spin::Once<KernelMempool<'static, Virt>> = spin::Once::new();

/// Scoped locks: taking one enters its scope (lock-tied, released in any order).
static NOFS_LOCK: ScopedSpinLock<'static, KernelAlloc<Virt>, usize> =
    ScopedSpinLock::new(&TASKS, 0, Gfp::NOFS);
static NOIO_LOCK: ScopedSpinLock<'static, KernelAlloc<Virt>, usize> =
    ScopedSpinLock::new(&TASKS, 0, Gfp::GFP_NOIO);

// ---------------------------------------------------------------------------------------------
// Tasks

struct Task {
    /// The saved trap frame (its address) while the task is switched out.
    frame: AtomicUsize,
    /// The hart it last ran on.
    hart: AtomicUsize,
    finished: AtomicBool,
    /// Its scopes while switched out, one per allocator.
    ctx: [TaskContext; 2],
}

static TASK: [Task; TASKS_N] = [const {
    Task {
        frame: AtomicUsize::new(0),
        hart: AtomicUsize::new(usize::MAX),
        finished: AtomicBool::new(false),
        ctx: [TaskContext::new(), TaskContext::new()],
    }
}; TASKS_N];

/// The idle "task" of each hart: `kmain`'s loop, never in the run queue.
static IDLE_FRAME: [AtomicUsize; HARTS] = [const { AtomicUsize::new(0) }; HARTS];
static IDLE_CTX: [[TaskContext; 2]; HARTS] = [const { [TaskContext::new(), TaskContext::new()] }; HARTS];

#[repr(C, align(16))]
struct Stacks<const N: usize>([[u8; STACK]; N]);
static mut TASK_STACKS: Stacks<TASKS_N> = Stacks([[0; STACK]; TASKS_N]);
static mut TRAP_STACKS: Stacks<HARTS> = Stacks([[0; STACK]; HARTS]);

/// The run queue both harts take from: a ring of task indices. Only trap handlers (interrupts
/// off) touch it.
struct RunQueue {
    ring: [usize; TASKS_N],
    head: usize,
    len: usize,
}

static RUNQ: spin::Mutex<RunQueue> = spin::Mutex::new(RunQueue { ring: [0; TASKS_N], head: 0, len: 0 });

impl RunQueue {
    fn push(&mut self, t: usize) {
        self.ring[(self.head + self.len) % TASKS_N] = t;
        self.len += 1;
    }
    fn pop(&mut self) -> Option<usize> {
        (self.len > 0).then(|| {
            let t = self.ring[self.head];
            self.head = (self.head + 1) % TASKS_N;
            self.len -= 1;
            t
        })
    }
}

fn ctx_of(t: usize, hart: usize) -> &'static [TaskContext; 2] {
    if t == IDLE {
        &IDLE_CTX[hart]
    } else {
        &TASK[t].ctx
    }
}

/// The context switch: the allocators' part, then the frame to resume.
fn switch(hart: usize, prev: usize, next: usize) {
    static SWITCHES: AtomicUsize = AtomicUsize::new(0);
    let n = SWITCHES.fetch_add(1, Ordering::Relaxed);
    let skip = cfg!(feature = "force-violation") && n % 2 == 1;
    if !skip {
        let (p, q) = (ctx_of(prev, hart), ctx_of(next, hart));
        crate::HEAP.switch_task(&p[0], &q[0]);
        TASKS.switch_task(&p[1], &q[1]);
    }
    CURRENT[hart].store(next, Ordering::Relaxed);
    if next != IDLE {
        let last = TASK[next].hart.swap(hart, Ordering::Relaxed);
        if last != usize::MAX && last != hart {
            MIGRATIONS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn set_timer(hart: usize) {
    // SAFETY: this hart's mtimecmp in the CLINT of `virt`.
    unsafe { ((CLINT_MTIMECMP + 8 * hart) as *mut u64).write_volatile(crate::mtime() + TICK) };
}

/// Interrupt-context work: packet buffers from the tasks' allocator and its mempool, with no
/// flag passed — the allocator sees `in_atomic` and makes every request `GFP_ATOMIC`.
fn tick_work(hart: usize) {
    let n = TICKS.fetch_add(1, Ordering::Relaxed);
    if !TASKS.in_atomic() {
        violation("the allocator does not see atomic context in a handler", IDLE);
    }
    let mut got = [None; 4];
    for (i, slot) in got.iter_mut().enumerate() {
        let size = 64 + (n * 131 + i * 577 + hart * 97) % (PACKET - 64);
        let l = Layout::from_size_align(size, 8).unwrap();
        if let Ok(p) = TASKS.alloc_with(l, Gfp::KERNEL) {
            // SAFETY: a fresh block of `size` bytes.
            unsafe { p.as_ptr().write_bytes(0xa5, size) };
            *slot = Some((p, l));
            IRQ_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(pool) = POOL.get() {
        if let Some(e) = pool.alloc(Gfp::KERNEL) {
            IRQ_POOL_TAKES.fetch_add(1, Ordering::Relaxed);
            // SAFETY: an element of this pool.
            unsafe { pool.free(e) };
        }
    }
    for (p, l) in got.into_iter().flatten() {
        // SAFETY: blocks allocated above.
        unsafe { TASKS.dealloc_with(p, l) };
    }
}

#[no_mangle]
extern "C" fn trap_handler(frame: usize) -> usize {
    let hart = hart_id();
    let cause: usize;
    // SAFETY: reads CSRs.
    unsafe { core::arch::asm!("csrr {}, mcause", out(reg) cause) };
    if cause != (1 << 63) | 7 {
        let (epc, tval): (usize, usize);
        // SAFETY: reads CSRs.
        unsafe { core::arch::asm!("csrr {}, mepc", "csrr {}, mtval", out(reg) epc, out(reg) tval) };
        panic!("trap: mcause {cause:#x} mepc {epc:#x} mtval {tval:#x}");
    }
    set_timer(hart);
    crate::IRQ_DEPTH[hart].fetch_add(1, Ordering::Relaxed);
    tick_work(hart);
    crate::IRQ_DEPTH[hart].fetch_sub(1, Ordering::Relaxed);

    let prev = CURRENT[hart].load(Ordering::Relaxed);
    let finished = prev != IDLE && TASK[prev].finished.load(Ordering::Relaxed);
    let mut q = RUNQ.lock();
    // The next task; a finished one with nothing to follow it gives the hart back to idle.
    let Some(next) = q.pop().or(finished.then_some(IDLE)) else { return frame };
    // The outgoing task's frame and scopes are saved before it becomes visible in the queue:
    // the other hart may take it the moment the lock is released.
    if prev == IDLE {
        IDLE_FRAME[hart].store(frame, Ordering::Relaxed);
    } else {
        TASK[prev].frame.store(frame, Ordering::Relaxed);
    }
    switch(hart, prev, next);
    if prev != IDLE && !finished {
        q.push(prev);
        PREEMPTIONS.fetch_add(1, Ordering::Relaxed);
    }
    drop(q);
    if next == IDLE {
        IDLE_FRAME[hart].load(Ordering::Relaxed)
    } else {
        TASK[next].frame.load(Ordering::Relaxed)
    }
}

/// A finished task waits for its next tick, which switches away for good (or to idle).
fn finish(me: usize) -> ! {
    TASK[me].finished.store(true, Ordering::Release);
    DONE.fetch_add(1, Ordering::Release);
    loop {
        // SAFETY: waits for the timer; the handler does not queue a finished task again.
        unsafe { core::arch::asm!("wfi") };
    }
}

/// Checks the task's context word against what it declared.
fn expect(me: usize, want: Gfp) {
    if TASKS.current() != want {
        violation("the context word is not the task's own scope", me);
    }
}

fn allocate_into(me: usize, cache: &Cache, rounds: usize, want: Gfp) {
    for _ in 0..rounds {
        if let Ok(p) = TASKS.alloc_with(blk(), Gfp::NOWARN) {
            TASK_ALLOCS.fetch_add(1, Ordering::Relaxed);
            cache.blocks.lock().push(p.as_ptr() as usize);
        }
        expect(me, want);
        for _ in 0..2_000 {
            core::hint::spin_loop(); // work between allocations: ticks land here
        }
        expect(me, want);
    }
}

#[no_mangle]
extern "C" fn task_main(me: usize) -> ! {
    let kind = me % 4;
    let scope = if kind.is_multiple_of(2) { Gfp::NOFS } else { Gfp::NOIO | Gfp::NOFS };
    let cache = if me.is_multiple_of(2) { &FS_CACHE } else { &IO_CACHE };
    for round in 0..ROUNDS {
        // In the scope: the cookie form or the scoped-lock form.
        DECLARED[me].store(scope.bits() as usize, Ordering::Relaxed);
        match kind {
            0 | 1 => {
                let cookie = if kind == 0 { TASKS.memalloc_nofs_save() } else { TASKS.memalloc_noio_save() };
                allocate_into(me, cache, 3, scope);
                TASKS.memalloc_flags_restore(cookie);
            }
            _ => {
                let lock = if kind == 2 { &NOFS_LOCK } else { &NOIO_LOCK };
                let mut g = lock.lock();
                *g += 1;
                allocate_into(me, cache, 3, scope);
                drop(g);
            }
        }
        DECLARED[me].store(0, Ordering::Relaxed);
        expect(me, Gfp::KERNEL);
        // Outside it: may reclaim from either cache.
        allocate_into(me, if round % 2 == 0 { &FS_CACHE } else { &IO_CACHE }, 1, Gfp::KERNEL);
    }
    finish(me)
}

/// Sets up the tasks and the caches (hart 0, before any timer runs).
pub fn setup() {
    for c in [&FS_CACHE, &IO_CACHE] {
        c.blocks.lock().reserve(2 * TASKS_REGION / BLK);
        TASKS.register_shrinker(c).expect("shrinker");
    }
    POOL.call_once(|| TASKS.mempool(Layout::from_size_align(PACKET, 8).unwrap(), 4).expect("pool"));
    let mut q = RUNQ.lock();
    for (t, task) in TASK.iter().enumerate() {
        // SAFETY: the task's own stack, unused so far; the frame sits at its top.
        let top = unsafe { (&raw mut TASK_STACKS.0[t]).cast::<u8>().add(STACK) };
        let frame = top.wrapping_sub(FRAME_WORDS * 8).cast::<usize>();
        let mstatus = (3 << 11) | (1 << 7); // MPP = M, MPIE: interrupts on after mret
                                            // SAFETY: writes the first frame inside the task's stack.
        unsafe {
            frame.write_bytes(0, FRAME_WORDS);
            frame.add(10).write(t); // a0
            frame.add(32).write(task_main as *const () as usize); // mepc
            frame.add(33).write(mstatus);
        }
        task.frame.store(frame as usize, Ordering::Relaxed);
        q.push(t);
    }
}

/// Starts this hart's timer and runs its idle loop until every task has finished; then
/// interrupts go off for good.
pub fn run(hart: usize) {
    extern "C" {
        fn trap_entry();
    }
    // SAFETY: this hart's trap stack top into mscratch, the trap vector, then the timer and
    // interrupts on.
    unsafe {
        let top = (&raw mut TRAP_STACKS.0[hart]).cast::<u8>().add(STACK) as usize;
        core::arch::asm!("csrw mscratch, {}", in(reg) top);
        core::arch::asm!("csrw mtvec, {}", in(reg) trap_entry as *const () as usize);
        set_timer(hart);
        core::arch::asm!("csrs mie, {}", in(reg) 1usize << 7);
        core::arch::asm!("csrs mstatus, {}", in(reg) 1usize << 3);
    }
    while DONE.load(Ordering::Acquire) < TASKS_N {
        // SAFETY: sleeps until the next interrupt.
        unsafe { core::arch::asm!("wfi") };
    }
    // SAFETY: interrupts off: the idle loop only ends on this hart.
    unsafe { core::arch::asm!("csrc mstatus, {}", in(reg) 1usize << 3) };
}
