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
//!     [--tasks N] [--workers N] [--files N] [--blocks-per-file N] [--no-scopes] [--watchdog S] [--quiet]
//! ```
//!
//! `--no-scopes` drops the locks' scopes: reclaim inside a lock holder's allocation then calls
//! the shrinker that needs that lock, and the run stops with exit status 3 naming both (2 if
//! the watchdog sees no progress, 1 on lost writes or I/O errors).

mod engine;

use engine::{Failure, Options};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const USAGE: &str =
    "usage: blockcache-async [--limit 64M|none] [--seconds N] [--tasks N] [--workers N] [--files N] \
                     [--blocks-per-file N] [--no-scopes] [--watchdog SECONDS] [--quiet]";

fn parse() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--limit" => {
                let v = val()?;
                o.limit = if v.eq_ignore_ascii_case("none") {
                    None
                } else {
                    let (n, shift) = match v.chars().last().map(|c| c.to_ascii_uppercase()) {
                        Some('K') => (&v[..v.len() - 1], 10),
                        Some('M') => (&v[..v.len() - 1], 20),
                        Some('G') => (&v[..v.len() - 1], 30),
                        _ => (&v[..], 0),
                    };
                    let n: usize = n.parse().map_err(|e| format!("--limit {v}: {e}"))?;
                    Some(
                        n.checked_shl(shift)
                            .filter(|l| l >> shift == n)
                            .ok_or(format!("--limit {v}: too large"))?,
                    )
                }
            }
            "--seconds" => o.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--tasks" => o.tasks = num(val()?)? as usize,
            "--workers" => o.workers = num(val()?)? as usize,
            "--files" => o.files = num(val()?)? as usize,
            "--blocks-per-file" => o.blocks_per_file = num(val()?)?,
            "--watchdog" => o.watchdog = num(val()?)?,
            "--no-scopes" => o.no_scopes = true,
            "--quiet" => o.progress = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.tasks == 0 || o.workers == 0 || o.files == 0 || o.blocks_per_file < 8 {
        return Err("--tasks, --workers and --files must be positive, --blocks-per-file at least 8".into());
    }
    Ok(o)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(64);
        }
    };
    println!(
        "blockcache-async: {} tasks on {} workers, {} files × {} blocks of 4 KiB ({} MiB), limit {}, scopes: {}",
        o.tasks,
        o.workers,
        o.files,
        o.blocks_per_file,
        (o.files as u64 * o.blocks_per_file * 4096) >> 20,
        o.limit.map_or("none".into(), |l| format!("{} MiB", l >> 20)),
        if o.no_scopes { "none (--no-scopes)" } else { "NOFS with the cache lock, NOIO with the write-back lock (per task)" }
    );
    match engine::run(&o) {
        Ok(r) => {
            println!(
                "  {:.0} ops/s: {} ops in {:.1} s; cache hits {:.1} %; a lock holder resumed on another worker {} times",
                r.ops as f64 / r.seconds,
                r.ops,
                r.seconds,
                100.0 * r.hits as f64 / r.ops.max(1) as f64,
                r.hops,
            );
            println!(
                "  peak usage {} MiB{}; reclaim evicted {} blocks and wrote back {}, the flusher wrote {}; short of \
                 memory, {} inserts recycled a buffer and {} writes went through",
                r.peak >> 20,
                r.limit.map_or(String::new(), |l| format!(" of a {} MiB limit", l >> 20)),
                r.evicted,
                r.written_back,
                r.flushed,
                r.recycled,
                r.written_through,
            );
            println!("  verification: {} blocks read back, {} lost", r.checked, r.lost);
            println!("{}", ctxalloc::stats());
            if r.lost != 0 {
                eprintln!("blockcache-async: {} writes were lost", r.lost);
                std::process::exit(1);
            }
        }
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
