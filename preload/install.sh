#!/usr/bin/env bash
# Installs the C library as a C library: the shared object under its versioned name with the
# SONAME and development links, the header, a pkg-config file and the manual.
#
#   preload/install.sh [--prefix DIR] [--destdir DIR] [--libdir DIR] [--no-build]
#
#   $PREFIX/lib/libctxalloc.so.0.1.0       the library (SONAME libctxalloc.so.0)
#   $PREFIX/lib/libctxalloc.so.0 -> …      what programs linked against it load
#   $PREFIX/lib/libctxalloc.so   -> …      what -lctxalloc finds
#   $PREFIX/include/ctxalloc.h
#   $PREFIX/lib/pkgconfig/ctxalloc.pc      pkg-config --cflags --libs ctxalloc
#   $PREFIX/share/doc/ctxalloc/ctxalloc.3.md
#
# --destdir stages the tree under another root (packaging): paths inside the files stay $PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local destdir= libdir= build=1
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --libdir) libdir=${2:?--libdir needs a directory}; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $prefix in /*) ;; *) echo "install.sh: --prefix must be an absolute path, not '$prefix'" >&2; exit 2 ;; esac
libdir=${libdir:-$prefix/lib}

version=$(cargo pkgid -p ctxalloc-preload | sed 's/.*@//')
major=${version%%.*}
[ "$build" = 1 ] && cargo build --release -p ctxalloc-preload
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
built=$target/release/libctxalloc_preload.so
[ -f "$built" ] || { echo "install.sh: $built not built (run without --no-build)" >&2; exit 1; }

header_version=$(sed -n 's/^#define CTXALLOC_VERSION "\(.*\)"$/\1/p' preload/include/ctxalloc.h)
if [ "$header_version" != "$version" ]; then
  echo "install.sh: ctxalloc.h says $header_version, the crate is $version" >&2
  exit 1
fi

lib=$destdir$libdir inc=$destdir$prefix/include pc=$destdir$libdir/pkgconfig doc=$destdir$prefix/share/doc/ctxalloc
install -d "$lib" "$inc" "$pc" "$doc"
install -m 755 "$built" "$lib/libctxalloc.so.$version"
ln -sf "libctxalloc.so.$version" "$lib/libctxalloc.so.$major"
ln -sf "libctxalloc.so.$major" "$lib/libctxalloc.so"
install -m 644 preload/include/ctxalloc.h "$inc/ctxalloc.h"
install -m 644 preload/ctxalloc.3.md "$doc/ctxalloc.3.md"
cat >"$pc/ctxalloc.pc" <<PC
prefix=$prefix
libdir=$libdir
includedir=\${prefix}/include

Name: ctxalloc
Description: malloc whose allocations obey scoped contexts (NOFS, NOIO, NOFAIL…), with limits and shrinkers
URL: https://github.com/ctxalloc/ctxalloc
Version: $version
Libs: -L\${libdir} -lctxalloc
Libs.private: -lpthread -ldl
Cflags: -I\${includedir}
PC
echo "installed ctxalloc $version under $destdir$prefix"
