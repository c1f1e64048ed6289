#!/usr/bin/env bash
# blockcache throughput at limits of 16, 64 and 256 MiB and without a limit (128 MiB of data,
# 4 threads), one row per run: ops/s, peak usage, reclaim activity — read from the example's
# `--json` output.
# Usage: benches/blockcache.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-10}
cargo build -q --release --example blockcache
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
printf '| limit | ops/s | peak usage | reclaim rounds | background reclaims | evicted | written back by reclaim | recycled | written through | lost |\n|---|---|---|---|---|---|---|---|---|---|\n'
for l in 16M 64M 256M none; do
  "$target/release/examples/blockcache" --limit "$l" --seconds "$S" --json | python3 -c '
import json, sys
r = json.load(sys.stdin)
a = r["allocator"]
print("| %s | %.0f | %d MiB | %d | %d | %d | %d | %d | %d | %d |" % (
    sys.argv[1], r["ops_per_s"], r["peak_usage_bytes"] >> 20, a["reclaim_rounds"], a["background_reclaims"],
    r["evicted"], r["written_back"], r["recycled"], r["written_through"], r["lost"]))' "$l"
done
