//! The kernel shim's per-task contexts on the host: threads play tasks, two simulated CPUs are
//! handed between them by a scheduler with one shared run queue (so tasks migrate), and a
//! signal plays the interrupt.
//!
//! * A task holds a NOFS or NOIO scope (as a cookie or through a `ScopedSpinLock`) across its
//!   preemptions and migrations while it allocates from a small region whose FS- and IO-class
//!   shrinkers record the task they ran for. A shrinker that runs for a task whose scope forbids
//!   its class, or in interrupt context, is a violation; so is a task that finds its context
//!   word other than its own scope.
//! * `SIGUSR1` is the interrupt: its handler allocates packet buffers and takes from a mempool
//!   with no flags — atomic context, derived by the allocator. `enter`/`leave` hold it off
//!   (the handler runs at the `leave`), so it never finds its CPU's heap mid-update; a shrinker
//!   raises one at itself inside the allocator, so that deferral is exercised every run.
//! * The same scenario with the allocator's part of every other context switch skipped must
//!   report violations: the checks can fail.

use ctxalloc_kernel::{
    Gfp, KernelAlloc, KernelMempool, PerCpu, Platform, ReclaimClass, ScanResult, ScopedSpinLock,
    ShrinkControl, Shrinker, TaskContext, ThreadCtx,
};
use std::alloc::Layout;
use std::cell::Cell;
use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread;

const CPUS: usize = 2;
const TASKS: usize = 8;
const ROUNDS: usize = 40;
const REGION: usize = 8 << 20;
const BLK: usize = 64 << 10;
const NOT_ON_A_CPU: usize = usize::MAX;

fn blk() -> Layout {
    Layout::from_size_align(BLK, 4096).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The simulated machine: which CPU the calling thread's task runs on, and its interrupt state.
// Thread-locals of atomics: the signal handler runs on the same thread and must see the
// interrupted code's writes (an atomic access is a compiler barrier).

thread_local! {
    static CPU: AtomicUsize = const { AtomicUsize::new(NOT_ON_A_CPU) };
    static TASK: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Nesting of "interrupts off" (the allocator's enter, the scheduler's critical section).
    static IRQ_OFF: AtomicUsize = const { AtomicUsize::new(0) };
    /// An interrupt arrived while they were off: run it when they come on again.
    static PENDING: AtomicBool = const { AtomicBool::new(false) };
    /// Interrupt nesting: non-zero inside the handler (atomic context).
    static IRQ_DEPTH: AtomicUsize = const { AtomicUsize::new(0) };
}

/// Whether the calling thread's task holds a CPU (an interrupt belongs to a CPU).
fn on_a_cpu() -> bool {
    CPU.with(|c| c.load(Ordering::SeqCst)) != NOT_ON_A_CPU
}

fn irq_off() {
    IRQ_OFF.with(|c| c.fetch_add(1, Ordering::SeqCst));
}

/// Interrupts on again: a held-off interrupt runs now if the thread's task holds a CPU. A task
/// that has just given its CPU up (finished) keeps it pending: an interrupt belongs to a CPU,
/// and this thread has none any more.
fn irq_on() {
    if IRQ_OFF.with(|c| c.fetch_sub(1, Ordering::SeqCst)) == 1
        && on_a_cpu()
        && PENDING.with(|p| p.swap(false, Ordering::SeqCst))
    {
        DEFERRED.fetch_add(1, Ordering::Relaxed);
        interrupt();
    }
}

/// The platform: per-CPU contexts, interrupts held off between enter and leave.
struct Sim(&'static PerCpu<CPUS>);

// SAFETY: the context of the CPU the calling thread's task holds; a CPU is held by one task at
// a time (the scheduler hands it over under its lock), and enter/leave hold the interrupt
// handler — the only other user on that thread — off.
unsafe impl Platform for Sim {
    fn context(&self) -> *const ThreadCtx {
        let cpu = CPU.with(|c| c.load(Ordering::SeqCst));
        assert!(cpu < CPUS, "an allocation from a task that holds no CPU");
        self.0.get(cpu)
    }
    fn enter(&self) -> usize {
        irq_off();
        0
    }
    fn leave(&self, _: usize) {
        irq_on();
    }
    fn in_atomic(&self) -> bool {
        IRQ_DEPTH.with(|d| d.load(Ordering::SeqCst)) > 0
    }
    fn now_ns(&self) -> u64 {
        ctxalloc_tests::host::now_ns()
    }
    fn report(&self, msg: &str) {
        ctxalloc_tests::host::report(msg);
    }
    fn relax(&self) {
        thread::yield_now();
    }
}

// ---------------------------------------------------------------------------------------------
// One scenario: an allocator, its caches and pool, the tasks and the scheduler.

struct Cache {
    class: ReclaimClass,
    blocks: Mutex<Vec<usize>>,
}

struct Sched {
    queue: VecDeque<usize>,
    cpu_of: [usize; TASKS],
}

struct Scenario {
    alloc: &'static KernelAlloc<Sim>,
    pool: KernelMempool<'static, Sim>,
    fs: Cache,
    io: Cache,
    /// Each task's scoped lock (of its kind's scope): one per task, as a spinning waiter would
    /// keep its CPU from the preempted holder — the host's tasks are preempted only where they
    /// give their CPU up.
    locks: [ScopedSpinLock<'static, KernelAlloc<Sim>, ()>; TASKS],
    ctx: [TaskContext; TASKS],
    idle: [TaskContext; CPUS],
    declared: [AtomicUsize; TASKS],
    threads: [AtomicUsize; TASKS],
    finished: [AtomicBool; TASKS],
    sched: Mutex<Sched>,
    wake: Condvar,
    /// Skip the allocator's part of every other switch (the checks must then fail).
    skip_switches: bool,
    switches: AtomicUsize,
    migrations: AtomicUsize,
    violations: AtomicUsize,
    irq_allocs: AtomicUsize,
    scoped_scans: AtomicUsize,
}

/// The scenario the signal handler and the shrinkers act on.
static ACTIVE: AtomicPtr<Scenario> = AtomicPtr::new(std::ptr::null_mut());
static DEFERRED: AtomicUsize = AtomicUsize::new(0);
static INTERRUPTS: AtomicUsize = AtomicUsize::new(0);

fn active() -> &'static Scenario {
    // SAFETY: set before any task starts, to a leaked scenario; never cleared while one runs.
    unsafe { &*ACTIVE.load(Ordering::SeqCst) }
}

impl Scenario {
    fn violation(&self) {
        self.violations.fetch_add(1, Ordering::Relaxed);
    }

    fn declared(&self, task: usize) -> Gfp {
        Gfp::from_bits_truncate(self.declared[task].load(Ordering::SeqCst) as u32)
    }

    /// The allocator's part of a context switch on the calling thread's CPU.
    fn switch(&self, prev: &TaskContext, next: &TaskContext) {
        let n = self.switches.fetch_add(1, Ordering::Relaxed);
        if !(self.skip_switches && n % 2 == 1) {
            self.alloc.switch_task(prev, next);
        }
    }

    /// Preemption: give the CPU to the next task in the run queue, if any, and wait to be given
    /// one again — this CPU or the other.
    fn preempt(&self, me: usize) {
        irq_off();
        let mut s = self.sched.lock().unwrap();
        if let Some(next) = s.queue.pop_front() {
            let cpu = CPU.with(|c| c.load(Ordering::SeqCst));
            self.switch(&self.ctx[me], &self.ctx[next]);
            CPU.with(|c| c.store(NOT_ON_A_CPU, Ordering::SeqCst));
            s.cpu_of[me] = NOT_ON_A_CPU;
            s.cpu_of[next] = cpu;
            s.queue.push_back(me);
            self.wake.notify_all();
            while s.cpu_of[me] == NOT_ON_A_CPU {
                s = self.wake.wait(s).unwrap();
            }
            let now = s.cpu_of[me];
            CPU.with(|c| c.store(now, Ordering::SeqCst));
            if now != cpu {
                self.migrations.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(s);
        irq_on();
    }

    /// Waits for the first CPU, then runs the task.
    fn start(&self, me: usize) {
        TASK.with(|t| t.set(me));
        // SAFETY: pthread_self has no preconditions.
        self.threads[me].store(unsafe { libc::pthread_self() } as usize, Ordering::SeqCst);
        irq_off();
        let mut s = self.sched.lock().unwrap();
        while s.cpu_of[me] == NOT_ON_A_CPU {
            s = self.wake.wait(s).unwrap();
        }
        CPU.with(|c| c.store(s.cpu_of[me], Ordering::SeqCst));
        drop(s);
        irq_on();
    }

    /// The task is done: its CPU goes to the next task, or idles.
    fn finish(&self, me: usize) {
        if !self.ctx[me].saved().is_empty() {
            self.violation();
        }
        irq_off();
        let mut s = self.sched.lock().unwrap();
        let cpu = CPU.with(|c| c.load(Ordering::SeqCst));
        match s.queue.pop_front() {
            Some(next) => {
                self.switch(&self.ctx[me], &self.ctx[next]);
                s.cpu_of[next] = cpu;
            }
            None => self.switch(&self.ctx[me], &self.idle[cpu]),
        }
        s.cpu_of[me] = NOT_ON_A_CPU;
        CPU.with(|c| c.store(NOT_ON_A_CPU, Ordering::SeqCst));
        self.finished[me].store(true, Ordering::SeqCst);
        self.wake.notify_all();
        drop(s);
        irq_on();
        if !self.ctx[me].saved().is_empty() {
            self.violation(); // a scope left open moved out with the finished task
        }
    }

    /// Sends the interrupt to another task that has not finished (it may be on a CPU or
    /// waiting for one; the handler then runs when it gets one).
    fn interrupt_someone(&self, me: usize, n: usize) {
        let t = (me + 1 + n % (TASKS - 1)) % TASKS;
        let th = self.threads[t].load(Ordering::SeqCst);
        if th != 0 && !self.finished[t].load(Ordering::SeqCst) {
            // SAFETY: a live (not yet joined) thread of this scenario.
            unsafe { libc::pthread_kill(th as libc::pthread_t, libc::SIGUSR1) };
        }
    }

    fn expect(&self, me: usize) {
        if self.alloc.current() != self.declared(me) {
            self.violation();
        }
    }

    fn allocate_into(&self, me: usize, cache: &Cache, n: usize, step: &mut usize) {
        for _ in 0..n {
            if let Ok(p) = self.alloc.alloc_with(blk(), Gfp::NOWARN) {
                cache.blocks.lock().unwrap().push(p.as_ptr().addr());
            }
            self.expect(me);
            *step += 1;
            if step.is_multiple_of(3) {
                self.interrupt_someone(me, *step);
            }
            self.preempt(me); // inside the scope too: it must follow the task
            self.expect(me);
        }
    }

    fn task(&self, me: usize) {
        /// A task that panics holds its CPU for ever: end the process instead of hanging.
        struct AbortOnPanic;
        impl Drop for AbortOnPanic {
            fn drop(&mut self) {
                if thread::panicking() {
                    eprintln!("a task panicked: aborting (the scheduler would wait for its CPU for ever)");
                    std::process::abort();
                }
            }
        }
        let _guard = AbortOnPanic;
        self.start(me);
        // With switches skipped, only the cookie forms: a lock-tied hold released on a CPU that
        // never got it trips a debug assertion, where a cookie's damage is what the checks see.
        let kind = if self.skip_switches { me % 2 } else { me % 4 };
        let scope = if kind.is_multiple_of(2) { Gfp::NOFS } else { Gfp::GFP_NOIO };
        let mut step = 0;
        for round in 0..ROUNDS {
            self.declared[me].store(scope.bits() as usize, Ordering::SeqCst);
            let cache = if me.is_multiple_of(2) { &self.fs } else { &self.io };
            match kind {
                0 | 1 => {
                    let c = if kind == 0 {
                        self.alloc.memalloc_nofs_save()
                    } else {
                        self.alloc.memalloc_noio_save()
                    };
                    self.allocate_into(me, cache, 3, &mut step);
                    self.alloc.memalloc_flags_restore(c);
                }
                _ => {
                    let g = self.locks[me].lock();
                    self.allocate_into(me, cache, 3, &mut step);
                    drop(g);
                }
            }
            self.declared[me].store(0, Ordering::SeqCst);
            self.expect(me);
            self.allocate_into(me, if round % 2 == 0 { &self.fs } else { &self.io }, 1, &mut step);
        }
        self.finish(me);
    }
}

impl Shrinker for Cache {
    fn name(&self) -> &str {
        "task-cache"
    }
    fn class(&self) -> ReclaimClass {
        self.class
    }
    fn count(&self, _: &ShrinkControl) -> usize {
        self.blocks.try_lock().map_or(0, |b| b.len())
    }
    fn scan(&self, sc: &mut ShrinkControl) -> ScanResult {
        let s = active();
        let task = TASK.with(|t| t.get());
        if IRQ_DEPTH.with(|d| d.load(Ordering::SeqCst)) > 0 {
            s.violation(); // reclaim in interrupt context
        } else if task < TASKS {
            let declared = s.declared(task);
            let forbidden = match self.class {
                ReclaimClass::Fs => declared.intersects(Gfp::NOFS | Gfp::NOIO),
                ReclaimClass::Io => declared.contains(Gfp::NOIO),
                ReclaimClass::Other => false,
            };
            if forbidden {
                s.violation();
            }
            if !declared.is_empty() {
                s.scoped_scans.fetch_add(1, Ordering::Relaxed);
            }
            // An interrupt at a task inside the allocator: held off until its leave.
            // SAFETY: raise has no preconditions; the handler is installed.
            unsafe { libc::raise(libc::SIGUSR1) };
        }
        let Ok(mut b) = self.blocks.try_lock() else { return ScanResult::Stop };
        let mut n = 0;
        while n < sc.nr_to_scan {
            let Some(a) = b.pop() else { break };
            // SAFETY: a live block of this allocator, owned by the cache.
            unsafe { s.alloc.dealloc_with(NonNull::new(a as *mut u8).unwrap(), blk()) };
            n += 1;
        }
        ScanResult::Freed(n)
    }
}

/// The interrupt handler's work, in atomic context: packet buffers and a mempool element, no
/// flags passed.
fn interrupt() {
    let Some(s) = NonNull::new(ACTIVE.load(Ordering::SeqCst)) else { return };
    // SAFETY: a leaked scenario.
    let s = unsafe { s.as_ref() };
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
    IRQ_DEPTH.with(|d| d.fetch_add(1, Ordering::SeqCst));
    if !s.alloc.in_atomic() || !s.alloc.core().effective(Gfp::KERNEL).gfp().contains(Gfp::ATOMIC) {
        s.violation();
    }
    let n = INTERRUPTS.load(Ordering::Relaxed);
    let mut got = [None; 4];
    for (i, slot) in got.iter_mut().enumerate() {
        let l = Layout::from_size_align(64 + (n * 131 + i * 577) % 1472, 8).unwrap();
        if let Ok(p) = s.alloc.alloc_with(l, Gfp::KERNEL) {
            // SAFETY: a fresh block of `l.size()` bytes.
            unsafe { p.as_ptr().write_bytes(0x5a, l.size()) };
            *slot = Some((p, l));
            s.irq_allocs.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(e) = s.pool.alloc(Gfp::KERNEL) {
        // SAFETY: an element of this pool.
        unsafe { s.pool.free(e) };
    }
    for (p, l) in got.into_iter().flatten() {
        // SAFETY: allocated above.
        unsafe { s.alloc.dealloc_with(p, l) };
    }
    IRQ_DEPTH.with(|d| d.fetch_sub(1, Ordering::SeqCst));
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    if !on_a_cpu() || IRQ_OFF.with(|c| c.load(Ordering::SeqCst)) > 0 {
        // Held off: it runs at the next irq_on (for a task waiting for a CPU, once it has one).
        PENDING.with(|p| p.store(true, Ordering::SeqCst));
        return;
    }
    interrupt();
}

/// Runs one scenario to the end; returns it for its counters.
fn run(alloc: &'static KernelAlloc<Sim>, skip_switches: bool) -> &'static Scenario {
    // Set up from no CPU's task: borrow CPU 0 for it (no task runs yet).
    CPU.with(|c| c.store(0, Ordering::SeqCst));
    // Aligned to a segment, so that all of it can hold small objects.
    let layout = Layout::from_size_align(REGION, ctxalloc_kernel::SEGMENT_SIZE).unwrap();
    // SAFETY: a non-zero size; the region is leaked to the allocator for ever.
    unsafe {
        let region = std::alloc::alloc_zeroed(layout);
        assert!(!region.is_null());
        alloc.init(region, REGION);
    }
    let pool = alloc.mempool(Layout::from_size_align(1536, 8).unwrap(), 4).unwrap();
    let s: &'static Scenario = Box::leak(Box::new(Scenario {
        alloc,
        pool,
        fs: Cache { class: ReclaimClass::Fs, blocks: Mutex::new(Vec::new()) },
        io: Cache { class: ReclaimClass::Io, blocks: Mutex::new(Vec::new()) },
        locks: std::array::from_fn(|t| {
            ScopedSpinLock::new(alloc, (), if t % 4 == 2 { Gfp::NOFS } else { Gfp::GFP_NOIO })
        }),
        ctx: [const { TaskContext::new() }; TASKS],
        idle: [const { TaskContext::new() }; CPUS],
        declared: [const { AtomicUsize::new(0) }; TASKS],
        threads: [const { AtomicUsize::new(0) }; TASKS],
        finished: [const { AtomicBool::new(false) }; TASKS],
        sched: Mutex::new(Sched { queue: (CPUS..TASKS).collect(), cpu_of: [NOT_ON_A_CPU; TASKS] }),
        wake: Condvar::new(),
        skip_switches,
        switches: AtomicUsize::new(0),
        migrations: AtomicUsize::new(0),
        violations: AtomicUsize::new(0),
        irq_allocs: AtomicUsize::new(0),
        scoped_scans: AtomicUsize::new(0),
    }));
    alloc.register_shrinker(&s.fs).unwrap();
    alloc.register_shrinker(&s.io).unwrap();
    CPU.with(|c| c.store(NOT_ON_A_CPU, Ordering::SeqCst));
    ACTIVE.store((s as *const Scenario).cast_mut(), Ordering::SeqCst);
    {
        let mut q = s.sched.lock().unwrap();
        for cpu in 0..CPUS {
            q.cpu_of[cpu] = cpu; // tasks 0 and 1 start on the two CPUs
        }
    }
    let tasks: Vec<_> = (0..TASKS).map(|t| thread::spawn(move || s.task(t))).collect();
    // Join only once every task has finished: a task may still signal another until it has
    // itself finished, and a joined thread's id must not be signalled.
    let mut q = s.sched.lock().unwrap();
    while !s.finished.iter().all(|f| f.load(Ordering::SeqCst)) {
        q = s.wake.wait(q).unwrap();
    }
    drop(q);
    for t in tasks {
        t.join().unwrap();
    }
    s
}

/// Runs `f` on the test's own thread as if it were CPU 0's task (no task runs any more).
fn borrowing_cpu0<R>(f: impl FnOnce() -> R) -> R {
    CPU.with(|c| c.store(0, Ordering::SeqCst));
    let r = f();
    CPU.with(|c| c.store(NOT_ON_A_CPU, Ordering::SeqCst));
    r
}

fn install_handler() {
    // SAFETY: a plain handler for SIGUSR1, restarting interrupted calls (the scheduler's
    // condition variable, the shrinkers' locks).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
    }
}

#[test]
fn scopes_follow_tasks_across_cpus_and_interrupts_allocate_in_atomic_context() {
    static CPUS_A: PerCpu<CPUS> = PerCpu::new();
    static A: KernelAlloc<Sim> = KernelAlloc::new(Sim(&CPUS_A));
    static CPUS_B: PerCpu<CPUS> = PerCpu::new();
    static B: KernelAlloc<Sim> = KernelAlloc::new(Sim(&CPUS_B));
    install_handler();

    let s = run(&A, false);
    let (switches, migrations) = (s.switches.load(Ordering::Relaxed), s.migrations.load(Ordering::Relaxed));
    let stats = borrowing_cpu0(|| A.stats());
    eprintln!(
        "{switches} switches, {migrations} migrations, {} interrupts ({} held off to a leave), {} interrupt \
         allocations, {} shrinker scans for scoped tasks, {} violations",
        INTERRUPTS.load(Ordering::Relaxed),
        DEFERRED.load(Ordering::Relaxed),
        s.irq_allocs.load(Ordering::Relaxed),
        s.scoped_scans.load(Ordering::Relaxed),
        s.violations.load(Ordering::Relaxed),
    );
    assert_eq!(s.violations.load(Ordering::Relaxed), 0, "a scope did not follow its task");
    assert!(switches >= TASKS * ROUNDS, "every preemption point switched: {switches}");
    assert!(migrations > 0, "tasks resumed on the other CPU");
    assert!(
        DEFERRED.load(Ordering::Relaxed) > 0,
        "an interrupt inside the allocator was held off to its leave"
    );
    assert!(s.irq_allocs.load(Ordering::Relaxed) > 0, "interrupt handlers allocated");
    assert!(
        s.scoped_scans.load(Ordering::Relaxed) > 0,
        "reclaim ran for tasks in scopes (what the test is about)"
    );
    assert!(stats.peak <= stats.limit.unwrap(), "{stats}");
    assert_eq!(stats.bad_frees, 0);

    // The same, with the allocator's part of every other switch left out: the checks fire.
    let forced = run(&B, true);
    assert!(forced.violations.load(Ordering::Relaxed) > 0, "skipped switches went unnoticed");
}
