//! `blockcache-async`: the main job in async form — tokio tasks read and write 4 KiB blocks of
//! files through the same decoded-block LRU cache and write-back buffer as `blockcache`, under
//! a memory limit, and every block is verified on disk at the end.
//!
//! The locks are `ctxalloc::AsyncScopedMutex`es — the cache's carries NOFS, the write-back
//! buffer's NOIO — and tasks hold them across `.await`s (an async step under the lock, where a
//! task may move to another worker). Each task runs inside `ctxalloc::scoped`, so the lock's
//! scope follows the task to every worker it resumes on, and reaches no other task. The
//! shrinkers only try the locks; a shrinker that finds its lock held by the very task it is
//! reclaiming for reports the recursion (with a blocking lock it would be a self-deadlock).
//!
//! ```text
//! cargo run --release --example blockcache-async -- [--limit 64M|none] [--seconds N]
//!     [--tasks N] [--workers N] [--files N] [--blocks-per-file N] [--no-scopes] [--watchdog S]
//!     [--quiet] [--json]
//! ```
//!
//! `--no-scopes` drops the locks' scopes: reclaim inside a lock holder's allocation then calls
//! the shrinker that needs that lock, and the run stops with exit status 3 naming both (2 if
//! the watchdog sees no progress, 1 on lost writes or I/O errors).

#[path = "../common/cli.rs"]
mod cli;
mod engine;

use clap::Parser;
use cli::{mib, LimitArg, Outcome, RunArgs};
use engine::{Failure, Options, Report};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

/// The blockcache job on tokio: tasks hold `AsyncScopedMutex`es (NOFS for the cache, NOIO for
/// the write-back buffer) across awaits, under a memory limit; every block is verified.
#[derive(Parser, Debug)]
#[command(name = "blockcache-async", version)]
struct Args {
    /// The memory limit: a size (64M, 64MiB, 1G) or `none` (or 0)
    #[arg(long, default_value = "64M", value_parser = limit)]
    limit: Limit,
    /// Run for this many seconds
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Tasks reading and writing blocks
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    tasks: u64,
    /// Tokio worker threads
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    workers: u64,
    #[command(flatten)]
    run: RunArgs,
}

/// `--limit`'s value: bytes, or none.
#[derive(Clone, Copy, Debug)]
struct Limit(Option<usize>);

/// `--limit`: as `blockcache`'s, without the cgroup forms.
fn limit(v: &str) -> Result<Limit, String> {
    match LimitArg::parse(v)? {
        LimitArg::None => Ok(Limit(None)),
        LimitArg::Bytes(b) => Ok(Limit(Some(b))),
        LimitArg::Cgroup(_) => Err("a limit from the cgroup is `--example blockcache`'s; give a size".into()),
    }
}

fn main() {
    let a = Args::parse();
    let o = Options {
        seconds: a.seconds,
        tasks: a.tasks as usize,
        workers: a.workers as usize,
        files: a.run.files as usize,
        blocks_per_file: a.run.blocks_per_file,
        limit: a.limit.0,
        no_scopes: a.run.no_scopes,
        watchdog: a.run.watchdog,
        progress: a.run.progress(),
    };
    if !a.run.json {
        println!(
            "blockcache-async: {} tasks on {} workers, {} files × {} blocks of 4 KiB ({}), limit {}, scopes: {}",
            o.tasks,
            o.workers,
            o.files,
            o.blocks_per_file,
            mib(o.files * o.blocks_per_file as usize * 4096),
            o.limit.map_or("none".into(), mib),
            if o.no_scopes {
                "none (--no-scopes)"
            } else {
                "NOFS with the cache lock, NOIO with the write-back lock (per task)"
            }
        );
    }
    match engine::run(&o) {
        Ok(r) if a.run.json => {
            println!("{}", json(&a, &r));
            if r.lost != 0 {
                std::process::exit(1);
            }
        }
        Ok(r) => text(&r),
        Err(f) => {
            eprintln!("blockcache-async: {f}");
            eprintln!("{}", ctxalloc::stats());
            std::process::exit(match f {
                Failure::Io(_) => 1,
                Failure::Stuck(_) => 2,
                Failure::Recursion { .. } => 3,
            });
        }
    }
}

fn text(r: &Report) {
    println!(
        "  {:.0} ops/s: {} ops in {:.1} s; cache hits {:.1} %; a lock holder resumed on another worker {} times",
        r.ops as f64 / r.seconds,
        r.ops,
        r.seconds,
        100.0 * r.hits as f64 / r.ops.max(1) as f64,
        r.hops,
    );
    let outcome = Outcome {
        peak: r.peak,
        limit: r.limit,
        asked: None,
        evicted: r.evicted,
        written_back: r.written_back,
        flushed: r.flushed,
        recycled: r.recycled,
        written_through: r.written_through,
    };
    println!("{outcome}");
    println!("  verification: {} blocks read back, {} lost", r.checked, r.lost);
    println!("{}", ctxalloc::stats());
    if r.lost != 0 {
        eprintln!("blockcache-async: {} writes were lost", r.lost);
        std::process::exit(1);
    }
}

/// The run's result as JSON.
fn json(a: &Args, r: &Report) -> serde_json::Value {
    let s = ctxalloc::stats();
    serde_json::json!({
        "tasks": a.tasks, "workers": a.workers, "files": a.run.files, "blocks_per_file": a.run.blocks_per_file,
        "scopes": !a.run.no_scopes,
        "limit_bytes": r.limit,
        "seconds": r.seconds,
        "ops_per_s": r.ops as f64 / r.seconds,
        "ops": r.ops, "hits": r.hits, "hops": r.hops,
        "peak_usage_bytes": r.peak,
        "evicted": r.evicted, "written_back": r.written_back, "flushed": r.flushed,
        "recycled": r.recycled, "written_through": r.written_through,
        "checked": r.checked, "lost": r.lost,
        "allocator": {
            "usage_bytes": s.usage, "peak_bytes": s.peak,
            "reclaim_rounds": s.reclaim_rounds, "background_reclaims": s.background_passes,
            "idle_purges": s.aged_purges, "failed_allocations": s.alloc_failures,
        },
    })
}
