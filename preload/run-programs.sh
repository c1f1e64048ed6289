#!/usr/bin/env bash
# Real programs nobody here wrote, on ctxalloc: git, python3 (its own test suite, with
# PYTHONMALLOC=malloc and threads), sqlite3 and gcc, each under LD_PRELOAD of the release
# library. A check fails if the program fails, if its output differs from the same run on the
# C library's malloc, or if interposition did not happen: every process must append a line with
# calls > 0 to CTXALLOC_PRELOAD_LOG (and report no bad free).
#
#   preload/run-programs.sh            # all four
#   preload/run-programs.sh sqlite3    # one
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p ctxalloc-preload
lib="$PWD/target/release/libctxalloc_preload.so"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# on NAME EXE-PATTERN COMMAND…: runs COMMAND under the library; checks the log.
on() {
  local name=$1 pattern=$2
  shift 2
  local log="$work/$name.log"
  : >"$log"
  local t0=$SECONDS
  if ! LD_PRELOAD="$lib" CTXALLOC_PRELOAD_LOG="$log" "$@"; then
    echo "FAIL $name: the program failed under ctxalloc"
    failed=1
    return 1
  fi
  local procs calls bad
  procs=$(grep -c "exe [^ ]*$pattern" "$log" || true)
  calls=$(grep "exe [^ ]*$pattern" "$log" | awk '{for (i = 1; i < NF; i++) if ($i == "calls") s += $(i + 1)} END {print s + 0}')
  bad=$(grep -v -c "bad-frees 0$" "$log" || true)
  if [ "$procs" -eq 0 ] || [ "$calls" -eq 0 ]; then
    echo "FAIL $name: no process matching '$pattern' logged calls into ctxalloc (not interposed?)"
    failed=1
    return 1
  fi
  if [ "$bad" -ne 0 ]; then
    echo "FAIL $name: a process reported bad frees:"
    grep -v "bad-frees 0$" "$log"
    failed=1
    return 1
  fi
  echo "ok $name: $procs processes matching '$pattern', $calls calls into ctxalloc, $((SECONDS - t0)) s"
}

# same NAME FILE-A FILE-B: the run on ctxalloc printed what the run on glibc printed.
same() {
  if ! cmp -s "$2" "$3"; then
    echo "FAIL $1: output differs from the run on the C library's malloc"
    diff "$2" "$3" | head -20
    failed=1
  fi
}

run_git() {
  command -v git >/dev/null || { echo "skip git: not installed"; return; }
  git clone -q --no-local . "$work/repo"
  local script='
    set -e
    cd "$1"
    git log --stat --format=%H%n%an%n%s >"$2/log"
    git grep -n "unsafe" -- "*.rs" | wc -l >>"$2/log"
    git diff --stat HEAD~10 HEAD >>"$2/log"
    git blame -s core/src/alloc.rs | cut -c1-8 | sort | uniq -c | sort -rn | head -5 >>"$2/log"
    git fsck --full --no-progress
    git -c gc.auto=0 repack -adq
    git fsck --full --no-progress
    git count-objects -v | grep -v size >>"$2/log"
  '
  mkdir -p "$work/git-glibc" "$work/git-ctx"
  bash -c "$script" _ "$work/repo" "$work/git-glibc"
  # The repack above changed the repository: a fresh clone for the second run.
  rm -rf "$work/repo" && git clone -q --no-local . "$work/repo"
  on git /git bash -c "$script" _ "$work/repo" "$work/git-ctx" && same git "$work/git-glibc/log" "$work/git-ctx/log"
  (cd "$work/repo" && LD_PRELOAD="$lib" git -c user.name=ci -c user.email=ci@ctxalloc.invalid \
    commit -q --allow-empty -m "a commit made on ctxalloc") || { echo "FAIL git: commit"; failed=1; }
}

run_python() {
  local py
  py=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null) || { echo "skip python3: not installed"; return; }
  "$py" -c 'import test.support' 2>/dev/null || { echo "skip python3: no test suite"; return; }
  # Thread-heavy and allocation-heavy parts of CPython's own suite. One test is left out: it
  # fails on this machine's interpreter with or without ctxalloc ("threading is already
  # imported": the site setup imports threading).
  local tests=(test_threading test_thread test_threading_local test_queue
    test_dict test_list test_set test_json test_re test_bytes test_collections test_itertools
    test_functools test_weakref test_gc test_pickle test_struct test_deque test_heapq)
  PYTHONMALLOC=malloc on python3 /python3 sh -c 'out=$1; shift; "$@" >"$out" 2>&1' _ "$work/python.out" \
    "$py" -m test -j2 --ignore test_import_from_another_thread "${tests[@]}" || { tail -30 "$work/python.out"; return; }
  grep -E "^Total tests:|^Result:" "$work/python.out"
}

run_sqlite() {
  command -v sqlite3 >/dev/null || { echo "skip sqlite3: not installed"; return; }
  cat >"$work/workload.sql" <<'SQL'
PRAGMA cache_size = -65536;
CREATE TABLE author(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE book(id INTEGER PRIMARY KEY, author INTEGER, title TEXT, year INTEGER, body BLOB);
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000)
  INSERT INTO author SELECT x, 'author-' || x FROM n;
WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 200000)
  INSERT INTO book SELECT x, 1 + (x * 7919) % 5000, printf('title %08d', (x * 104729) % 1000003),
    1900 + x % 125, zeroblob(16 + x % 700) FROM n;
CREATE INDEX book_author ON book(author);
CREATE INDEX book_title ON book(title);
SELECT count(*), sum(length(body)), min(title), max(title) FROM book;
SELECT a.name, count(*), sum(b.year) FROM book b JOIN author a ON a.id = b.author
  GROUP BY a.id ORDER BY count(*) DESC, a.id LIMIT 5;
UPDATE book SET body = zeroblob(2000) WHERE year % 7 = 0;
DELETE FROM book WHERE year % 11 = 0;
SELECT count(*), sum(length(body)) FROM book;
SELECT year, count(*) FROM book GROUP BY year ORDER BY 2 DESC, 1 LIMIT 3;
VACUUM;
PRAGMA integrity_check;
SQL
  sqlite3 "$work/glibc.db" <"$work/workload.sql" >"$work/sqlite-glibc.out"
  on sqlite3 /sqlite3 sh -c 'sqlite3 "$1" <"$2" >"$3"' _ "$work/ctx.db" "$work/workload.sql" "$work/sqlite-ctx.out" &&
    same sqlite3 "$work/sqlite-glibc.out" "$work/sqlite-ctx.out"
}

run_gcc() {
  command -v gcc >/dev/null || { echo "skip gcc: not installed"; return; }
  local src=preload/tests/c/api.c
  gcc -O2 -g -c -I preload/include "$src" -o "$work/glibc.o"
  on gcc /cc1 gcc -O2 -g -c -I preload/include "$src" -o "$work/ctx.o" && same gcc "$work/glibc.o" "$work/ctx.o"
}

which=${1:-all}
[ "$which" = all ] || [ "$which" = git ] && run_git
[ "$which" = all ] || [ "$which" = python3 ] && run_python
[ "$which" = all ] || [ "$which" = sqlite3 ] && run_sqlite
[ "$which" = all ] || [ "$which" = gcc ] && run_gcc
exit $failed
