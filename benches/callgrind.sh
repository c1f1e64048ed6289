#!/usr/bin/env bash
# Instructions per 32-byte alloc+free pair (64 blocks live), per allocator, from callgrind:
# runs `pairs` with N and 2N pairs and divides the difference by N, so start-up cancels out.
# Usage: benches/callgrind.sh [N]     (needs valgrind; builds the release binary first)
#        FEATURES=hardened benches/callgrind.sh    (ctxalloc built with those features)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200000}
target=target
if [ -n "${FEATURES:-}" ]; then target=target/features-${FEATURES//,/-}; fi
CARGO_TARGET_DIR=$target cargo build -q --release -p ctxalloc-benches --bin pairs ${FEATURES:+--features "$FEATURES"}
bin=$target/release/pairs
count() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'; }
printf '%-22s %s\n' allocator "instructions per alloc+free pair"
for a in floor ctxalloc "ctxalloc scope" ctxalloc-kfree kernel kernel-fit mimalloc jemalloc system scopes; do
  set -- $a
  one=$(count "$1" "$N" ${2:+$2})
  two=$(count "$1" $((2 * N)) ${2:+$2})
  label="$a${2:+ (inside NOFS|NOIO)}"
  [ "$a" = scopes ] && label="scope save+restore"
  [ "$a" = ctxalloc-kfree ] && label="ctxalloc, free unsized"
  [ "$a" = kernel ] && label="kernel shim (host CPUs)"
  [ "$a" = kernel-fit ] && label="kernel shim, exact fit"
  printf "%-22s %s\n" "$label" "$(awk -v a="$one" -v b="$two" -v n="$N" "BEGIN { printf \"%.2f\", (b - a) / n }")"
done
