#!/usr/bin/env bash
# Allocation patterns of mimalloc-bench's programs, measured without the noise of a shared
# machine: callgrind counts the instructions and simulates the caches (L1 32 KiB, and the
# 512 KiB L2 of this machine's cores as its last level), for ctxalloc's C library and the
# allocators Debian packages (mimalloc 2.0, jemalloc 5.3, tcmalloc), each through LD_PRELOAD,
# and glibc. Prints, per program and allocator, per step: instructions, L1 misses, L2 misses,
# and an estimate of cycles (instructions + 12 × L1 misses + 40 × L2 misses). A step is one
# free and one malloc.
#
#   benches/cachemodel.sh [--allocs A,B,...] [--only churn,churn-small,thread,simple]
#   CTXALLOC_LIB=/path/to/libctxalloc_preload.so benches/cachemodel.sh --allocs ctxalloc
#
# The programs (benches/cachemodel/*.c) are ours: larson's step (`churn`: free a random block of
# 5000, allocate one of 8–1000 B, write two bytes; `churn-small`: 1000 blocks of 8–64 B),
# glibc's malloc-thread loop single-threaded (`thread`) and malloc-simple's batches (`simple`).
# Needs valgrind; installs the peers' libraries with apt if missing (as ../shared/bench-c does).
set -euo pipefail
cd "$(dirname "$0")/.."
allocs="ctxalloc mimalloc jemalloc tcmalloc glibc"
only="churn churn-small thread simple"
while [ $# -gt 0 ]; do
  case "$1" in
    --allocs) allocs=${2//,/ }; shift 2 ;;
    --only) only=${2//,/ }; shift 2 ;;
    *) echo "usage: $0 [--allocs A,B] [--only churn,churn-small,thread,simple]" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null || { echo "cachemodel.sh: needs valgrind" >&2; exit 1; }
libdir=/usr/lib/x86_64-linux-gnu
declare -A lib=(
  [mimalloc]=$libdir/libmimalloc.so.2 [jemalloc]=$libdir/libjemalloc.so.2
  [tcmalloc]=$libdir/libtcmalloc_minimal.so.4 [glibc]=""
)
missing=()
for a in $allocs; do
  case $a in
    mimalloc) [ -e "${lib[mimalloc]}" ] || missing+=(libmimalloc2.0) ;;
    jemalloc) [ -e "${lib[jemalloc]}" ] || missing+=(libjemalloc2) ;;
    tcmalloc) [ -e "${lib[tcmalloc]}" ] || missing+=(libtcmalloc-minimal4) ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=$(command -v sudo || true)
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
# CTXALLOC_LIB=path measures another build of the library (an earlier commit's, say).
if [ -z "${CTXALLOC_LIB:-}" ]; then
  cargo build -q --release -p ctxalloc-preload
fi
lib[ctxalloc]=${CTXALLOC_LIB:-$PWD/${CARGO_TARGET_DIR:-target}/release/libctxalloc_preload.so}
out=${CARGO_TARGET_DIR:-target}/cachemodel
mkdir -p "$out"
for p in churn thread simple; do
  cc -O2 -o "$out/$p" "benches/cachemodel/$p.c" -lm
done

printf '| program | allocator | instructions / step | L1 misses / step | L2 misses / step | est. cycles / step |\n'
printf '|---|---|---|---|---|---|\n'
for p in $only; do
  case $p in
    churn) cmd=("$out/churn" 5000 8 1000 2000000); steps=2000000 ;;
    churn-small) cmd=("$out/churn" 1000 8 64 2000000); steps=2000000 ;;
    thread) cmd=("$out/thread" 3000000); steps=3000000 ;;
    simple) cmd=("$out/simple" 200000); steps=$((16 * 200000)) ;;
    *) echo "cachemodel.sh: no program '$p'" >&2; exit 2 ;;
  esac
  for a in $allocs; do
    r=$(valgrind --tool=callgrind --trace-children=yes --cache-sim=yes --LL=524288,8,64 \
      --callgrind-out-file=/dev/null env ${lib[$a]:+LD_PRELOAD=${lib[$a]}} "${cmd[@]}" 2>&1 >/dev/null)
    awk -v p="$p" -v a="$a" -v n="$steps" '
      /I   refs/ { gsub(",", "", $4); ir = $4 }
      /D1  misses/ { gsub(",", "", $4); d1 = $4 }
      /LL misses/ { gsub(",", "", $4); ll = $4 }
      END { printf "| %s | %s | %.1f | %.3f | %.3f | %.1f |\n", p, a, ir / n, d1 / n, ll / n, (ir + 12 * d1 + 40 * ll) / n }' <<<"$r"
  done
done
