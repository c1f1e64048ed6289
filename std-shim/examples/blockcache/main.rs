//! `blockcache`: a storage-engine-like workload on real files, running on ctxalloc under a
//! memory limit — the main job of this repository.
//!
//! Worker threads read and write 4 KiB blocks of files in a temporary directory. Decoded blocks
//! live in an LRU cache registered as a filesystem-class shrinker; dirty blocks wait in a
//! write-back buffer registered as an I/O-class shrinker that writes them out before freeing
//! them. The code that holds the cache lock allocates inside a NOFS scope, the code that holds
//! the write-back lock inside NOIO: under pressure, reclaim takes memory from exactly the caches
//! each thread may touch, and a lock holder short of memory recycles or writes through instead of
//! waiting. At the end every block is read back and checked: nothing is lost.
//!
//! ```text
//! cargo run --release --example blockcache -- [--limit 64M|none|auto|N%] [--seconds N] [--ops N]
//!     [--threads N] [--files N] [--blocks-per-file N] [--pressure [MS]] [--no-scopes]
//!     [--watchdog SECONDS] [--quiet] [--json]
//! ```
//!
//! `--help` lists them. `--json` prints the result as one JSON object on stdout (what
//! `benches/blockcache.sh` reads); the progress display is drawn only on a terminal.
//!
//! `--limit auto` (or `80%`) takes the limit from the process's cgroup and prints where it came
//! from. `--pressure` fires a memory-pressure event every second (or every MS milliseconds)
//! through a pipe the allocator's pressure monitor watches, and prints how each shrank the
//! caches.
//!
//! `--no-scopes` drops the scopes and shows what they prevent: reclaim recursing into a lock
//! its own thread holds. The run stops with exit status 3 and names the lock and the shrinker
//! (status 2 if the watchdog sees no progress, 1 on lost writes or I/O errors).

#[path = "../common/cli.rs"]
mod cli;
mod engine;

use clap::Parser;
use cli::{mib, LimitArg, Outcome, RunArgs};
use engine::{Failure, Options, Report};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// A storage-engine-like workload on real files under a memory limit, on ctxalloc: worker
/// threads read and write 4 KiB blocks through an LRU cache (a filesystem-class shrinker) and a
/// write-back buffer (an I/O-class shrinker); every block is verified at the end.
#[derive(Parser, Debug)]
#[command(name = "blockcache", version)]
struct Args {
    /// The memory limit: a size (64M, 64MiB, 1G), `none` (or 0), `auto` or a percentage
    /// (from the process's cgroup)
    #[arg(long, default_value = "64M", value_parser = LimitArg::parse)]
    limit: LimitArg,
    /// Run for this many seconds
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Run for this many operations instead
    #[arg(long)]
    ops: Option<u64>,
    /// Worker threads
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..))]
    threads: u64,
    /// Fire a memory-pressure event every MS milliseconds (1000 without a value) through a
    /// pipe the allocator's pressure monitor watches
    #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "1000",
          value_parser = clap::value_parser!(u64).range(1..))]
    pressure: Option<u64>,
    #[command(flatten)]
    run: RunArgs,
}

impl Args {
    fn options(&self) -> Options {
        Options {
            seconds: self.seconds,
            ops: self.ops,
            threads: self.threads as usize,
            files: self.run.files as usize,
            blocks_per_file: self.run.blocks_per_file,
            limit: match self.limit {
                LimitArg::Bytes(b) => Some(b),
                _ => None,
            },
            limit_auto: match self.limit {
                LimitArg::Cgroup(how) => Some(how),
                _ => None,
            },
            pressure_every: self.pressure.map(std::time::Duration::from_millis),
            no_scopes: self.run.no_scopes,
            watchdog: self.run.watchdog,
            progress: self.run.progress(),
        }
    }
}

/// The run's result as JSON: the report's counters and the allocator's.
fn json(a: &Args, r: &Report) -> serde_json::Value {
    let s = ctxalloc::stats();
    let pressure: Vec<_> = r
        .pressure
        .iter()
        .map(|e| {
            serde_json::json!({
                "at_s": e.at, "idle": e.idle, "ran": e.ran, "given_bytes": e.given,
                "cached": [e.cached.0, e.cached.1], "dirty": [e.dirty.0, e.dirty.1],
                "usage": [e.usage.0, e.usage.1],
            })
        })
        .collect();
    serde_json::json!({
        "threads": a.threads, "files": a.run.files, "blocks_per_file": a.run.blocks_per_file,
        "scopes": !a.run.no_scopes,
        "limit_bytes": r.limit,
        "limit_origin": s.limit_origin.as_str(),
        "seconds": r.seconds,
        "ops_per_s": (r.reads + r.writes) as f64 / r.seconds,
        "reads": r.reads, "writes": r.writes, "hits": r.hits, "misses": r.misses,
        "peak_usage_bytes": r.peak,
        "evicted": r.evicted, "written_back": r.written_back, "flushed": r.flushed,
        "recycled": r.recycled, "written_through": r.written_through,
        "checked": r.checked, "lost": r.lost,
        "pressure": pressure,
        "allocator": {
            "usage_bytes": s.usage, "peak_bytes": s.peak,
            "reclaim_rounds": s.reclaim_rounds, "background_reclaims": s.background_passes,
            "idle_purges": s.aged_purges, "reserve_uses": s.reserve_uses,
            "pressure_events": s.pressure_events, "pressure_passes": s.pressure_passes,
            "failed_allocations": s.alloc_failures,
        },
    })
}

fn main() {
    let args = Args::parse();
    let o = args.options();
    let scopes = if o.no_scopes {
        "none (--no-scopes)"
    } else {
        "NOFS under the cache lock, NOIO under the write-back lock"
    };
    let limit = match o.limit_auto {
        Some(how) => match ctxalloc::cgroup::Cgroups::system().resolve(how) {
            Ok(r) => format!("{} ({})", mib(r.limit), r.origin()),
            Err(e) => format!("none ({e})"),
        },
        None => o.limit.map_or("none".into(), mib),
    };
    if !args.run.json {
        println!(
            "blockcache: {} threads, {} files × {} blocks of 4 KiB ({}), limit {limit}, scopes: {scopes}",
            o.threads,
            o.files,
            o.blocks_per_file,
            mib(o.files * o.blocks_per_file as usize * engine::BLOCK),
        );
        if let Some(every) = o.pressure_every {
            println!(
                "  a memory-pressure event every {} ms through a pipe the allocator watches",
                every.as_millis()
            );
        }
    }
    match engine::run(&o) {
        Ok(r) if args.run.json => {
            println!("{}", json(&args, &r));
            if r.lost != 0 {
                std::process::exit(1);
            }
        }
        Ok(r) => text(&o, &r),
        Err(f) => {
            eprintln!("blockcache: {f}");
            eprintln!("{}", ctxalloc::stats());
            std::process::exit(match f {
                Failure::Io(_) => 1,
                Failure::Deadlock(_) => 2,
                Failure::Recursion { .. } => 3,
            });
        }
    }
}

/// The run's result as text.
fn text(o: &Options, r: &Report) {
    let ops = r.reads + r.writes;
    println!(
        "  {:.0} ops/s: {} reads, {} writes in {:.1} s; cache hits {:.1} %",
        ops as f64 / r.seconds,
        r.reads,
        r.writes,
        r.seconds,
        100.0 * r.hits as f64 / (r.hits + r.misses).max(1) as f64
    );
    let outcome = Outcome {
        peak: r.peak,
        limit: r.limit,
        asked: o.limit,
        evicted: r.evicted,
        written_back: r.written_back,
        flushed: r.flushed,
        recycled: r.recycled,
        written_through: r.written_through,
    };
    println!("{outcome}");
    if !r.pressure.is_empty() {
        println!("  pressure events (cache and write-back blocks, usage: before → after the pass):");
        for e in &r.pressure {
            println!(
                "    {:5.1} s{} cache {:>6} → {:>6}  dirty {:>5} → {:>5}  usage {:>4} → {:>4} MiB  {}",
                e.at,
                if e.idle { " (idle)" } else { "       " },
                e.cached.0,
                e.cached.1,
                e.dirty.0,
                e.dirty.1,
                e.usage.0 >> 20,
                e.usage.1 >> 20,
                if e.ran {
                    format!("gave back {} KiB", e.given >> 10)
                } else {
                    "skipped (rate limit)".into()
                }
            );
        }
    }
    if o.pressure_every.is_some() {
        println!("  the kernel's own pressure signal: {}", ctxalloc::pressure::status());
    }
    println!("  verification: {} blocks read back, {} lost", r.checked, r.lost);
    println!("{}", ctxalloc::stats());
    if r.lost != 0 {
        eprintln!("blockcache: {} writes were lost", r.lost);
        std::process::exit(1);
    }
}
