#!/usr/bin/env python3
"""Prints the latest criterion run of `benches/alloc.rs` as a table of medians with ratios:
ctxalloc / mimalloc, / jemalloc, / System (below 1.00 means ctxalloc is faster).

Usage: cargo bench -p ctxalloc-benches --bench alloc && python3 benches/report.py [--criterion DIR]

The results are read from criterion's output directory: DIR, or `criterion` under the target
directory cargo reports (so CARGO_TARGET_DIR and build.target-dir are honoured)."""
import argparse, json, os, subprocess, sys

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--criterion", metavar="DIR", help="criterion's output directory")
args = parser.parse_args()
if args.criterion:
    root = args.criterion
else:
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=os.path.dirname(os.path.abspath(__file__)), check=True,
                          capture_output=True, text=True).stdout
    root = os.path.join(json.loads(meta)["target_directory"], "criterion")
allocs = ["ctxalloc", "mimalloc", "jemalloc", "system"]
rows = []
for group in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    gdir = os.path.join(root, group)
    if not os.path.isdir(os.path.join(gdir, "ctxalloc")):
        continue
    variants = [""]
    sub = os.path.join(gdir, "ctxalloc")
    if not os.path.exists(os.path.join(sub, "new")):
        variants = sorted(d for d in os.listdir(sub) if d != "report")
    for v in variants:
        med = {}
        for a in allocs:
            f = os.path.join(gdir, a, v, "new", "estimates.json")
            if os.path.exists(f):
                with open(f) as fh:
                    med[a] = json.load(fh)["median"]["point_estimate"]
        if len(med) == len(allocs):
            rows.append((group + (f" ({v} live)" if v else ""), med))
if not rows:
    sys.exit(f"no criterion results in {root}: run `cargo bench -p ctxalloc-benches --bench alloc` first")

def fmt(ns):
    for unit, div in (("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.2f} {unit}"
    return f"{ns:.2f} ns"

print("| workload | ctxalloc | mimalloc | jemalloc | System | ÷ mimalloc | ÷ jemalloc | ÷ System |")
print("|---|---|---|---|---|---|---|---|")
for name, m in rows:
    c = m["ctxalloc"]
    print(f"| {name} | {fmt(c)} | {fmt(m['mimalloc'])} | {fmt(m['jemalloc'])} | {fmt(m['system'])} "
          f"| {c / m['mimalloc']:.2f} | {c / m['jemalloc']:.2f} | {c / m['system']:.2f} |")
