#!/usr/bin/env bash
# The mimalloc-bench suite: every workload × thread count × allocator, each in its own process,
# with mimalloc v3 (the crate's default) and v2 side by side. Arguments go to the runner
# (`--runs N`, `--only NAME`).
# Usage: benches/suite.sh [--runs N] [--only NAME]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p ctxalloc-benches --bin suite
# A second build whose mimalloc is v2 (one binary cannot link both).
CARGO_TARGET_DIR=target/mimalloc-v2 cargo build -q --release -p ctxalloc-benches --bin suite --features mimalloc-v2
SUITE_MIMALLOC_V2="$PWD/target/mimalloc-v2/release/suite" exec target/release/suite "$@"
