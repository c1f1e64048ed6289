//! The mimalloc-bench suite, re-created in Rust: every workload × thread count × allocator in a
//! process of its own (so peak RSS is the allocator's), several runs each, one table.
//!
//! `cargo run --release -p ctxalloc-benches --bin suite [-- --runs N] [--only NAME]`, or
//! `benches/suite.sh`, which also builds a second binary whose mimalloc is v2.
//!
//! A child (`suite run <workload> <threads>`, allocator in `SUITE_ALLOC`) makes that allocator
//! its global allocator too — its own vectors and channels, and everything `serde_json` does,
//! go through it, as in a real program — and prints `RESULT <ns> <peak KiB> [details]`.

use ctxalloc_benches::{glibc_simple, mbench, with_allocator};
use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

/// The peers ctxalloc is compared with, and ctxalloc.
const ALLOCATORS: [&str; 4] = ["ctxalloc", "mimalloc", "jemalloc", "system"];

/// Workloads and the thread counts each runs at.
const WORKLOADS: [(&str, &[usize]); 10] = [
    ("glibc-simple", &[1]),
    ("larsonN", &[1, 2, 4]),
    ("xmalloc-testN", &[1, 2, 4]),
    ("mstressN", &[1, 2, 4]),
    ("mleakN", &[1, 2, 4]),
    ("cache-scratchN", &[1, 2, 4]),
    ("rptestN", &[1, 2, 4]),
    ("malloc-large", &[1]),
    ("json", &[1]),
    ("rss-idle", &[1]),
];

// ---------------------------------------------------------------------------------------------
// The child's global allocator: the one named by SUITE_ALLOC, chosen at the first allocation
// (before `main`) and never changed, so every block is freed by the allocator that made it.

const SYSTEM: u8 = 1;
const CTXALLOC: u8 = 2;
const MIMALLOC: u8 = 3;
const JEMALLOC: u8 = 4;

struct Switch(AtomicU8);

impl Switch {
    #[inline]
    fn which(&self) -> u8 {
        match self.0.load(Ordering::Relaxed) {
            0 => {
                // SAFETY: getenv does not allocate; the name is NUL-terminated.
                let v = unsafe { libc::getenv(c"SUITE_ALLOC".as_ptr()) };
                let w = if v.is_null() {
                    SYSTEM
                } else {
                    // SAFETY: a NUL-terminated string from the environment.
                    match unsafe { std::ffi::CStr::from_ptr(v) }.to_bytes() {
                        b"ctxalloc" => CTXALLOC,
                        b"mimalloc" => MIMALLOC,
                        b"jemalloc" => JEMALLOC,
                        _ => SYSTEM,
                    }
                };
                self.0.store(w, Ordering::Relaxed);
                w
            }
            w => w,
        }
    }
}

macro_rules! dispatch {
    ($self:ident, |$a:ident| $e:expr) => {
        match $self.which() {
            CTXALLOC => {
                let $a = &ctxalloc::CtxAlloc::new();
                $e
            }
            MIMALLOC => {
                let $a = &mimalloc::MiMalloc;
                $e
            }
            JEMALLOC => {
                let $a = &tikv_jemallocator::Jemalloc;
                $e
            }
            _ => {
                let $a = &System;
                $e
            }
        }
    };
}

// SAFETY: forwards every call to one allocator, the same for the whole process.
unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        dispatch!(self, |a| unsafe { a.alloc(l) })
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded (the same allocator made it).
        dispatch!(self, |a| unsafe { a.dealloc(p, l) })
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded.
        dispatch!(self, |a| unsafe { a.alloc_zeroed(l) })
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded.
        dispatch!(self, |a| unsafe { a.realloc(p, l, n) })
    }
}

#[global_allocator]
static GLOBAL: Switch = Switch(AtomicU8::new(0));

// ---------------------------------------------------------------------------------------------
// Child

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn child(workload: &str, threads: usize) {
    let name = std::env::var("SUITE_ALLOC").unwrap_or_else(|_| "system".into());
    let doc = (workload == "json").then(|| mbench::json_document(8));
    let mut details = String::new();
    let start = Instant::now();
    with_allocator!(name.as_str(), |a| match workload {
        "glibc-simple" => glibc_simple(a, 4000, &mut Vec::with_capacity(1600)),
        "larsonN" => mbench::larson_n(a, threads),
        "xmalloc-testN" => mbench::xmalloc_n(a, threads),
        "mstressN" => mbench::mstress_n(a, threads, false),
        "mleakN" => mbench::mstress_n(a, threads, true),
        "cache-scratchN" => mbench::cache_scratch_n(a, threads),
        "rptestN" => mbench::rptest_n(a, threads),
        "malloc-large" => mbench::malloc_large(a),
        "json" => {
            for _ in 0..3 {
                mbench::json_round_trip(doc.as_deref().unwrap());
            }
        }
        "rss-idle" => {
            let (before, peak, samples) = mbench::rss_idle(a);
            // Time until resident memory is back within 2× of the pre-burst level.
            let back = samples.iter().find(|&&(_, kib)| kib <= 2 * before).map(|&(t, _)| t.as_millis());
            let last = samples.last().unwrap().1;
            details = format!(
                "{before} {peak} {last} {}",
                back.map_or_else(|| "never".to_string(), |ms| ms.to_string())
            );
        }
        other => panic!("unknown workload {other}"),
    });
    let ns = start.elapsed().as_nanos();
    println!("RESULT {ns} {} {details}", peak_rss_kib());
}

// ---------------------------------------------------------------------------------------------
// Runner

struct Run {
    ns: u128,
    peak_kib: usize,
    details: Vec<String>,
}

fn run_child(exe: &str, alloc: &str, workload: &str, threads: usize) -> Run {
    let out = Command::new(exe)
        .args(["run", workload, &threads.to_string()])
        .env("SUITE_ALLOC", alloc)
        .output()
        .expect("spawn the suite child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).unwrap_or_else(|| {
        panic!(
            "{workload} ({threads} threads) on {alloc} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut f = line.split_whitespace();
    Run {
        ns: f.next().unwrap().parse().unwrap(),
        peak_kib: f.next().unwrap().parse().unwrap(),
        details: f.map(String::from).collect(),
    }
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn mib(kib: usize) -> String {
    format!("{:.0}", kib as f64 / 1024.0)
}

/// The mimalloc-bench workloads, every allocator, each run in its own process; prints a
/// markdown table of median times and peak RSS.
#[derive(clap::Parser, Debug)]
#[command(name = "suite")]
struct Args {
    /// Runs per workload and allocator (the median is shown)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Only the workloads whose name contains this
    #[arg(long)]
    only: Option<String>,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(clap::Subcommand, Debug)]
enum Child {
    /// One workload in this process, on the allocator named by SUITE_ALLOC (what the runner
    /// starts for each measurement)
    #[command(hide = true)]
    Run { workload: String, threads: usize },
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    if let Some(Child::Run { workload, threads }) = &args.child {
        child(workload, *threads);
        return;
    }
    let (runs, only) = (args.runs, args.only);
    let exe = std::env::current_exe().unwrap().to_string_lossy().into_owned();
    // Columns: (label, binary, SUITE_ALLOC).
    let mut columns: Vec<(String, String, &str)> =
        ALLOCATORS.iter().map(|&a| (a.to_string(), exe.clone(), a)).collect();
    if let Ok(v2) = std::env::var("SUITE_MIMALLOC_V2") {
        columns.insert(2, ("mimalloc-v2".into(), v2, "mimalloc"));
    }

    println!(
        "mimalloc-bench workloads, median of {runs} runs, each in its own process: time, peak RSS (MiB);"
    );
    println!("ratio = ctxalloc's time ÷ the fastest peer's (mimalloc, jemalloc, system).\n");
    print!("| workload |");
    for (label, _, _) in &columns {
        print!(" {label} |");
    }
    println!(" ctxalloc ÷ fastest peer |");
    println!("|---|{}---|", "---|".repeat(columns.len()));
    for (workload, threads) in WORKLOADS {
        if only.as_deref().is_some_and(|o| !workload.contains(o)) {
            continue;
        }
        for &t in threads {
            let row = if threads.len() > 1 {
                format!("{} {t}", workload.trim_end_matches('N'))
            } else {
                workload.to_string()
            };
            print!("| {row} |");
            let mut times = Vec::new();
            for (_, bin, alloc) in &columns {
                let rs: Vec<Run> = (0..runs).map(|_| run_child(bin, alloc, workload, t)).collect();
                let ns = median(rs.iter().map(|r| r.ns).collect());
                let peak = median(rs.iter().map(|r| r.peak_kib).collect());
                if workload == "rss-idle" {
                    // before peak last back-ms, from the median-time run
                    let d = &rs.iter().find(|r| r.ns == ns).unwrap().details;
                    print!(
                        " {} → {} → {} MiB, ≤2× pre in {} |",
                        mib(d[0].parse().unwrap()),
                        mib(d[1].parse().unwrap()),
                        mib(d[2].parse().unwrap()),
                        if d[3] == "never" { "> 1 s".into() } else { format!("{} ms", d[3]) }
                    );
                } else {
                    print!(" {:.1} ms · {} |", ns as f64 / 1e6, mib(peak));
                }
                times.push(ns);
            }
            let peers = times[1..].iter().copied().min().unwrap();
            if workload == "rss-idle" {
                println!(" — |");
            } else {
                println!(" {:.2} |", times[0] as f64 / peers as f64);
            }
        }
    }
}
