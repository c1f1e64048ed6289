#!/usr/bin/env bash
# Instructions per malloc+free pair in a C program, per allocator, from callgrind: glibc's
# malloc benchtest from the bench-c kit (`../shared/bench-c/src/glibc-bench/bench-malloc-simple.c`:
# 16–64 B blocks, 25–1600 live, freed half FIFO, half LIFO; one thread, then a second) built at
# two lengths; only instructions inside malloc and free are collected, and the difference
# between the runs is divided by the difference in pairs, so start-up cancels out.
# Usage: benches/callgrind-c.sh      (needs valgrind, cc, and the peers' Debian packages:
#        libmimalloc2.0, libjemalloc2, libtcmalloc-minimal4; a missing peer is skipped)
set -euo pipefail
cd "$(dirname "$0")/.."
src=../shared/bench-c/src/glibc-bench/bench-malloc-simple.c
[ -f "$src" ] || { echo "callgrind-c.sh: $src not found (the bench-c kit sits beside the checkout)" >&2; exit 1; }
cargo build -q --release -p ctxalloc-preload
target=${CARGO_TARGET_DIR:-target}
out=$target/callgrind-c
mkdir -p "$out"
# The program's own length: NUM_ITERS allocations per test (4 block counts × 4 passes × 3 sizes).
for n in 100000 200000; do
  sed "s/#define NUM_ITERS 2000000/#define NUM_ITERS $n/" "$src" >"$out/simple-$n.c"
  cc -w -O3 -DNDEBUG -o "$out/simple-$n" "$out/simple-$n.c" -lpthread
done
# Pairs per run: each test allocates (NUM_ITERS / n) × n blocks, n in 25 100 400 1600.
pairs() { awk -v i="$1" 'BEGIN { for (k = 0; k < 4; k++) { n = 25 * 4 ^ k; s += int(i / n) * n }; print s * 4 * 3 }'; }
lib=/usr/lib/x86_64-linux-gnu
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null --trace-children=yes \
    --toggle-collect='*malloc*' --toggle-collect='*free*' --toggle-collect='_Zda*' \
    env LD_PRELOAD="$1" "$2" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p' | tail -1
}
printf '%-10s %s\n' allocator "instructions per malloc+free pair (glibc-simple)"
for a in ctxalloc mimalloc jemalloc tcmalloc; do
  case $a in
    ctxalloc) so=$PWD/$target/release/libctxalloc_preload.so ;;
    mimalloc) so=$(ls $lib/libmimalloc.so.2* 2>/dev/null | head -1) ;;
    jemalloc) so=$lib/libjemalloc.so.2 ;;
    tcmalloc) so=$lib/libtcmalloc_minimal.so.4 ;;
  esac
  [ -n "$so" ] && [ -e "$so" ] || { printf '%-10s %s\n' $a "(not installed)"; continue; }
  one=$(count "$so" "$out/simple-100000")
  two=$(count "$so" "$out/simple-200000")
  printf '%-10s %s\n' $a "$(awk -v a="$one" -v b="$two" -v p="$(pairs 100000)" -v q="$(pairs 200000)" 'BEGIN { printf "%.2f", (b - a) / (q - p) }')"
done
