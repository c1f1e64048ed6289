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
//!     [--watchdog SECONDS] [--quiet]
//! ```
//!
//! `--limit auto` (or `80%`) takes the limit from the process's cgroup and prints where it came
//! from. `--pressure` fires a memory-pressure event every second (or every MS milliseconds)
//! through a pipe the allocator's pressure monitor watches, and prints how each shrank the
//! caches.
//!
//! `--no-scopes` drops the scopes and shows what they prevent: reclaim recursing into a lock
//! its own thread holds. The run stops with exit status 3 and names the lock and the shrinker
//! (status 2 if the watchdog sees no progress, 1 on lost writes or I/O errors).

mod engine;

use engine::{Failure, Options};

#[global_allocator]
static GLOBAL: ctxalloc::CtxAlloc = ctxalloc::CtxAlloc::new();

const USAGE: &str =
    "usage: blockcache [--limit 64M|none|auto|N%] [--seconds N] [--ops N] [--threads N] [--files N] \
                     [--blocks-per-file N] [--pressure [MS]] [--no-scopes] [--watchdog SECONDS] [--quiet]";

fn parse_size(v: &str) -> Result<Option<usize>, String> {
    if v.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (num, shift) = match v.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&v[..v.len() - 1], 10),
        Some('M') => (&v[..v.len() - 1], 20),
        Some('G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    let n: usize = num.parse().map_err(|e| format!("--limit {v}: {e}"))?;
    Ok(Some(n << shift))
}

fn parse() -> Result<Options, String> {
    let mut o = Options::default();
    let mut args = std::env::args().skip(1).peekable();
    while let Some(a) = args.next() {
        if a == "--pressure" {
            let ms = match args.peek().map(|v| v.parse::<u64>()) {
                Some(Ok(ms)) => {
                    args.next();
                    ms
                }
                _ => 1000,
            };
            o.pressure_every = Some(std::time::Duration::from_millis(ms.max(1)));
            continue;
        }
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value\n{USAGE}"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{a} {v}: {e}"));
        match a.as_str() {
            "--limit" => {
                let v = val()?;
                match ctxalloc::cgroup::AutoLimit::parse(v.as_bytes()) {
                    Some(Ok(how)) => (o.limit_auto, o.limit) = (Some(how), None),
                    Some(Err(())) => return Err(format!("--limit {v}: a percentage from 1% to 100%")),
                    None => o.limit = parse_size(&v)?,
                }
            }
            "--seconds" => o.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--ops" => o.ops = Some(num(val()?)?),
            "--threads" => o.threads = num(val()?)? as usize,
            "--files" => o.files = num(val()?)? as usize,
            "--blocks-per-file" => o.blocks_per_file = num(val()?)?,
            "--watchdog" => o.watchdog = num(val()?)?,
            "--no-scopes" => o.no_scopes = true,
            "--quiet" => o.progress = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.threads == 0 || o.files == 0 || o.blocks_per_file < 8 {
        return Err("--threads and --files must be positive, --blocks-per-file at least 8".into());
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
    let scopes = if o.no_scopes {
        "none (--no-scopes)"
    } else {
        "NOFS under the cache lock, NOIO under the write-back lock"
    };
    let limit = match o.limit_auto {
        Some(how) => match ctxalloc::cgroup::Cgroups::system().resolve(how) {
            Ok(r) => format!("{} MiB ({})", r.limit >> 20, r.origin()),
            Err(e) => format!(
                "none (--limit {}: {e})",
                std::env::args().skip_while(|a| a != "--limit").nth(1).unwrap_or_default()
            ),
        },
        None => o.limit.map_or("none".into(), |l| format!("{} MiB", l >> 20)),
    };
    println!(
        "blockcache: {} threads, {} files × {} blocks of 4 KiB ({} MiB), limit {limit}, scopes: {scopes}",
        o.threads,
        o.files,
        o.blocks_per_file,
        (o.files as u64 * o.blocks_per_file * 4096) >> 20,
    );
    if let Some(every) = o.pressure_every {
        println!(
            "  a memory-pressure event every {} ms through a pipe the allocator watches",
            every.as_millis()
        );
    }
    match engine::run(&o) {
        Ok(r) => {
            let ops = r.reads + r.writes;
            println!(
                "  {:.0} ops/s: {} reads, {} writes in {:.1} s; cache hits {:.1} %",
                ops as f64 / r.seconds,
                r.reads,
                r.writes,
                r.seconds,
                100.0 * r.hits as f64 / (r.hits + r.misses).max(1) as f64
            );
            println!(
                "  peak usage {} MiB{}; reclaim evicted {} blocks and wrote back {}, the flusher wrote {}; \
                 short of memory, {} inserts recycled a buffer and {} writes went through",
                r.peak >> 20,
                r.limit.map_or(String::new(), |l| format!(" of a {} MiB limit", l >> 20)),
                r.evicted,
                r.written_back,
                r.flushed,
                r.recycled,
                r.written_through
            );
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
                        if e.ran { format!("gave back {} KiB", e.given >> 10) } else { "skipped (rate limit)".into() }
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
