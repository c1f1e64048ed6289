#!/usr/bin/env bash
# blockcache throughput at limits of 16, 64 and 256 MiB and without a limit (128 MiB of data,
# 4 threads), one row per run: ops/s, peak usage, reclaim activity.
# Usage: benches/blockcache.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
S=${1:-10}
cargo build -q --release --example blockcache
printf '| limit | ops/s | peak usage | reclaim rounds | background passes | evicted | written back by reclaim | recycled | written through | lost |\n|---|---|---|---|---|---|---|---|---|---|\n'
for l in 16M 64M 256M none; do
  out=$(target/release/examples/blockcache --limit "$l" --seconds "$S" --quiet)
  ops=$(sed -n 's/^  \([0-9]*\) ops\/s.*/\1/p' <<<"$out")
  peak=$(sed -n 's/^  peak usage \([0-9]* MiB\).*/\1/p' <<<"$out" | head -1)
  rounds=$(sed -n 's/^  reclaim rounds *\([0-9]*\)/\1/p' <<<"$out")
  bg=$(sed -n 's/^  background passes *\([0-9]*\)/\1/p' <<<"$out")
  ev=$(sed -n 's/.*reclaim evicted \([0-9]*\) blocks and wrote back \([0-9]*\),.*/\1/p' <<<"$out")
  wb=$(sed -n 's/.*reclaim evicted \([0-9]*\) blocks and wrote back \([0-9]*\),.*/\2/p' <<<"$out")
  rc=$(sed -n 's/.*, \([0-9]*\) inserts recycled.*/\1/p' <<<"$out")
  wt=$(sed -n 's/.*and \([0-9]*\) writes went through.*/\1/p' <<<"$out")
  lost=$(sed -n 's/.*read back, \([0-9]*\) lost.*/\1/p' <<<"$out")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$l" "$ops" "$peak" "$rounds" "$bg" "$ev" "$wb" "$rc" "$wt" "$lost"
done
