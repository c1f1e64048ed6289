//! The preload library from C: `tests/c/api.c` is compiled against `include/ctxalloc.h` and run
//! with the library both linked and in `LD_PRELOAD`; every check it prints must pass, the
//! foreign free it makes must be reported with its address, and the interposition log must
//! show its calls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The library cargo built for this test: the lib target is also an `rlib`, so cargo builds it
/// (both crate types, into `deps/` next to this test binary) before running the test; a
/// `cargo build` of the package leaves a copy in `target/<profile>/` as well.
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let candidates = [
        deps.join("libctxalloc_preload.so"),
        deps.parent().expect("target/<profile>").join("libctxalloc_preload.so"),
    ];
    let found = candidates.iter().find(|lib| lib.exists());
    found.unwrap_or_else(|| panic!("libctxalloc_preload.so not built: looked for {candidates:?}")).clone()
}

/// Compiles `tests/c/<name>.c` (or `.cpp`) against the header and the library, linked as an
/// installed one is (`-lctxalloc`: the names `libctxalloc.so` and, its SONAME,
/// `libctxalloc.so.0`, point at the build); returns the program.
fn compile(name: &str, lib: &Path) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = tmp.join(format!("ctxalloc-c-{name}"));
    let libdir = tmp.join(format!("lib-{name}"));
    std::fs::create_dir_all(&libdir).expect("a directory for the library's names");
    for link in ["libctxalloc.so", "libctxalloc.so.0"] {
        let _ = std::fs::remove_file(libdir.join(link));
        std::os::unix::fs::symlink(lib, libdir.join(link)).expect("a link to the library");
    }
    let cxx = here.join(format!("tests/c/{name}.cpp")).exists();
    let (cc, std, source) = if cxx {
        (std::env::var("CXX").unwrap_or_else(|_| "c++".into()), "-std=c++17", format!("{name}.cpp"))
    } else {
        (std::env::var("CC").unwrap_or_else(|_| "cc".into()), "-std=c11", format!("{name}.c"))
    };
    let build = Command::new(&cc)
        .args([std, "-O1", "-g", "-Wall", "-Werror", "-pthread", "-I"])
        .arg(here.join("include"))
        .arg(here.join("tests/c").join(source))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", libdir.display()))
        .arg(format!("-Wl,-rpath,{}", libdir.display()))
        .arg("-lctxalloc")
        .output()
        .expect("running the C compiler");
    assert!(build.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&build.stderr));
    exe
}

#[test]
fn the_c_api_and_the_malloc_family_under_ld_preload() {
    let lib = library();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let exe = compile("api", &lib);

    let log = out_dir.join("c-api.log");
    let _ = std::fs::remove_file(&log);
    let run = Command::new(&exe)
        .env("LD_PRELOAD", &lib)
        .env("CTXALLOC_PRELOAD_LOG", &log)
        // Reclaim only on the allocating thread: the shrinker checks count its calls exactly.
        .env("CTXALLOC_BACKGROUND", "off")
        .output()
        .expect("running the C test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stdout.contains("0 failures"), "{}\n{stdout}\n{stderr}", run.status);
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 33, "{stdout}");

    // The foreign free was reported with its address, and nothing else was.
    let addr = stderr
        .lines()
        .find_map(|l| l.strip_prefix("foreign pointer "))
        .expect("the program printed the pointer it frees");
    assert!(
        stderr.lines().any(|l| l.contains(&format!("free of {addr} ")) && l.contains("not a block ctxalloc handed out")),
        "{stderr}"
    );

    // Interposition happened: the process logged its calls off the fast paths — at least the
    // 110 reallocs to a non-zero size of `malloc_family` (11 sizes × 10), each of which counts.
    let line = std::fs::read_to_string(&log).expect("the interposition log");
    let calls: u64 = line
        .split_whitespace()
        .skip_while(|w| *w != "calls")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(calls >= 110 && line.contains("slow-path calls"), "{line}");
    assert!(line.contains("bad-frees 1"), "{line}");
}

/// C++'s operators from a C++ program: every form of `new` and `delete` is ctxalloc's, and out
/// of memory (a 16 MiB limit, a 64 MiB `new`) the new_handler runs once, then `std::bad_alloc`
/// is thrown (through libstdc++'s form, jumped to), and the nothrow forms return null.
#[test]
fn cxx_operators_new_and_delete_and_bad_alloc() {
    let lib = library();
    let exe = compile("cxx", &lib);
    let run = Command::new(&exe).env("LD_PRELOAD", &lib).output().expect("running the C++ test");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stdout.contains("0 failures"), "{}\n{stdout}\n{stderr}", run.status);
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 7, "{stdout}");
}

/// The thread-exit hang of mimalloc-bench's xmalloc-test, as a regression test: threads that
/// allocate and exit while others free their blocks, 200 rounds, the background thread idling
/// out (1 ms) and started again in between. A round that prints nothing for 30 s is a hang: the
/// program's stacks are in the failure. The library is the test build, so the debug guard
/// (no call out under an allocator lock) is on.
#[test]
fn threads_exit_while_others_free_their_blocks_and_the_background_thread_restarts() {
    let lib = library();
    let exe = compile("thread_exit", &lib);
    let run = ctxalloc_tests::run_watched(
        Command::new(&exe).env("LD_PRELOAD", &lib).env("CTXALLOC_BACKGROUND_IDLE", "1ms"),
        Duration::from_secs(900),
        Some(Duration::from_secs(30)),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}\n{stdout}\n{stderr}", run.status);
    assert!(!stderr.contains("ctxalloc:"), "{stderr}");
    let last = stdout.lines().last().unwrap_or("");
    let restarted: usize = last
        .strip_prefix("rounds 200 restarted ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary line: {stdout}"));
    // The exits of a round start a background thread again (it lives for the purge delay,
    // 200 ms, past the round's end): in most rounds it is seen.
    assert!(restarted >= 100, "the background thread restarted in only {restarted} of 200 rounds\n{last}");
}

/// Configuration that cannot be used is said, not swallowed: a log file that cannot be opened
/// for appending gets one line (and the program runs); `CTXALLOC_SHOW_STATS=1` prints the
/// statistics table at exit — from a program that is not ours.
#[test]
fn an_unwritable_log_is_reported_and_show_stats_prints_at_exit() {
    let lib = library();
    // (Not coreutils: they close stderr in an exit handler that runs before the table's.)
    let exe = compile("exit_stats", &lib);
    let run = Command::new(&exe)
        .env("LD_PRELOAD", &lib)
        .env("CTXALLOC_PRELOAD_LOG", "/nonexistent-dir/ctxalloc.log")
        .env("CTXALLOC_SHOW_STATS", "1")
        .output()
        .expect("running the C program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stdout == "/\n", "{}\n{stdout}\n{stderr}", run.status);
    assert_eq!(
        stderr
            .matches("ignoring CTXALLOC_PRELOAD_LOG=\"/nonexistent-dir/ctxalloc.log\": cannot append to it (errno 2)")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(stderr.matches("ctxalloc statistics").count(), 1, "{stderr}");
}

/// Every flag the header defines has the value of the library's `Gfp` constant of that name,
/// and every `Gfp` bit has a header name: C and Rust callers pass the same bits.
#[test]
fn the_header_agrees_with_the_library() {
    use ctxalloc_core::Gfp;
    /// The value of `CTXALLOC_<name>`: `0u`, `(1u << n)`, or an or of other names.
    fn value(header: &str, name: &str) -> Option<u32> {
        let line = header.lines().find(|l| l.starts_with(&format!("#define CTXALLOC_{name} ")))?;
        let expr = line.split_once(&format!("CTXALLOC_{name}"))?.1.split("/*").next()?.trim();
        let mut v = 0;
        for term in expr.trim_start_matches('(').trim_end_matches(')').split('|').map(str::trim) {
            v |= match (term.strip_prefix("1u << "), term.strip_prefix("CTXALLOC_")) {
                (Some(shift), _) => 1 << shift.parse::<u32>().ok()?,
                (_, Some(other)) => value(header, other)?,
                _ => term.trim_end_matches('u').parse().ok()?,
            };
        }
        Some(v)
    }
    let header = include_str!("../include/ctxalloc.h");
    let names = [
        ("KERNEL", Gfp::KERNEL),
        ("NOFS", Gfp::NOFS),
        ("NOIO", Gfp::NOIO),
        ("NORECLAIM", Gfp::NORECLAIM),
        ("NOFAIL", Gfp::NOFAIL),
        ("MEMALLOC", Gfp::MEMALLOC),
        ("FORBID", Gfp::FORBID),
        ("MAYFAIL", Gfp::MAYFAIL),
        ("NORETRY", Gfp::NORETRY),
        ("NOMEMALLOC", Gfp::NOMEMALLOC),
        ("NOWARN", Gfp::NOWARN),
        ("ZERO", Gfp::ZERO),
        ("HIGH", Gfp::HIGH),
        ("ATOMIC", Gfp::ATOMIC),
    ];
    let mut covered = Gfp::KERNEL;
    for (name, gfp) in names {
        assert_eq!(value(header, name), Some(gfp.bits()), "CTXALLOC_{name}");
        covered |= gfp;
    }
    assert_eq!(covered, Gfp::ALL, "a Gfp bit without a name in the header");
}
