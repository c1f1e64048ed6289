/*
 * ctxalloc.h — scoped allocation contexts for C and C++ programs on ctxalloc.
 *
 * Installed (preload/install.sh), link with `pkg-config --cflags --libs ctxalloc` (-lctxalloc);
 * or run under LD_PRELOAD=/abs/path/libctxalloc.so.0 (or the build tree's
 * libctxalloc_preload.so) — then declare these functions weak, or look them up with dlsym, if
 * the program must also run without it. The manual: ctxalloc.3.md. malloc, free, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc,
 * pvalloc and malloc_usable_size are the library's own; every allocation made inside a scope on
 * a thread — by the program, libc or any library — obeys that scope.
 *
 *     pthread_mutex_lock(&cache->lock);          // the cache's shrinker takes this lock
 *     ctxalloc_cookie_t c = ctxalloc_nofs_save(); // so nothing in here may reclaim into it
 *     insert(cache, strdup(key), value);
 *     ctxalloc_nofs_restore(c);
 *     pthread_mutex_unlock(&cache->lock);
 *
 * Scopes nest and are per thread; restore them in the reverse order of saving (debug builds of
 * the library report an out-of-order restore naming both scopes).
 */
#ifndef CTXALLOC_H
#define CTXALLOC_H

#include <stddef.h>
#include <stdint.h>

/* The version this header belongs to; ctxalloc_version() is the library's. */
#define CTXALLOC_VERSION_MAJOR 0
#define CTXALLOC_VERSION_MINOR 1
#define CTXALLOC_VERSION_PATCH 0
#define CTXALLOC_VERSION "0.1.0"
/* One number to compare: CTXALLOC_VERSION_NUMBER >= CTXALLOC_MAKE_VERSION(0, 2, 0). */
#define CTXALLOC_MAKE_VERSION(major, minor, patch) ((major) * 10000 + (minor) * 100 + (patch))
#define CTXALLOC_VERSION_NUMBER \
    CTXALLOC_MAKE_VERSION(CTXALLOC_VERSION_MAJOR, CTXALLOC_VERSION_MINOR, CTXALLOC_VERSION_PATCH)

/* What the compiler may assume of what the allocating functions return (GCC and Clang). */
#if defined(__GNUC__) || defined(__clang__)
#define CTXALLOC_MALLOC __attribute__((malloc, warn_unused_result))
#define CTXALLOC_ALLOC_SIZE(n) __attribute__((alloc_size(n)))
#define CTXALLOC_ALLOC_SIZE2(n, m) __attribute__((alloc_size(n, m)))
#define CTXALLOC_ALLOC_ALIGN(n) __attribute__((alloc_align(n)))
#define CTXALLOC_NODISCARD __attribute__((warn_unused_result))
#else
#define CTXALLOC_MALLOC
#define CTXALLOC_ALLOC_SIZE(n)
#define CTXALLOC_ALLOC_SIZE2(n, m)
#define CTXALLOC_ALLOC_ALIGN(n)
#define CTXALLOC_NODISCARD
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The library's version, "MAJOR.MINOR.PATCH". */
const char *ctxalloc_version(void);

/* Context flags: scope flags (set by the *_save functions) and per-call modifiers. */
#define CTXALLOC_KERNEL     0u
#define CTXALLOC_NOFS       (1u << 0)  /* reclaim never calls a filesystem-class shrinker */
#define CTXALLOC_NOIO       (1u << 1)  /* nor an I/O-class one (implies NOFS) */
#define CTXALLOC_NORECLAIM  (1u << 2)  /* no direct reclaim, no waiting: fail fast */
#define CTXALLOC_NOFAIL     (1u << 3)  /* satisfiable allocations never fail: reclaim, wait */
#define CTXALLOC_MEMALLOC   (1u << 4)  /* the reclaimer's own context: may use the reserve */
#define CTXALLOC_FORBID     (1u << 5)  /* no allocation at all: reported (feature forbid-alloc) */
#define CTXALLOC_MAYFAIL    (1u << 8)  /* per call: overrides a NOFAIL scope */
#define CTXALLOC_NORETRY    (1u << 9)  /* per call: one reclaim round, then fail */
#define CTXALLOC_NOMEMALLOC (1u << 10) /* per call: never the emergency reserve */
#define CTXALLOC_NOWARN     (1u << 11) /* per call: no failure report */
#define CTXALLOC_ZERO       (1u << 12) /* per call: zeroed memory */
#define CTXALLOC_HIGH       (1u << 13) /* per call: may use a quarter of the emergency reserve */
/* GFP_ATOMIC: no reclaim, no waiting, a quarter of the reserve (an interrupt handler's). */
#define CTXALLOC_ATOMIC     (CTXALLOC_NORECLAIM | CTXALLOC_HIGH)

/* What a *_save returns and its *_restore takes back. */
typedef uint64_t ctxalloc_cookie_t;

ctxalloc_cookie_t ctxalloc_nofs_save(void);
void ctxalloc_nofs_restore(ctxalloc_cookie_t cookie);
ctxalloc_cookie_t ctxalloc_noio_save(void);
void ctxalloc_noio_restore(ctxalloc_cookie_t cookie);
ctxalloc_cookie_t ctxalloc_noreclaim_save(void);
void ctxalloc_noreclaim_restore(ctxalloc_cookie_t cookie);
ctxalloc_cookie_t ctxalloc_nofail_save(void);
void ctxalloc_nofail_restore(ctxalloc_cookie_t cookie);
/* Any combination of the scope flags (the low five bits). */
ctxalloc_cookie_t ctxalloc_flags_save(unsigned flags);
void ctxalloc_flags_restore(ctxalloc_cookie_t cookie);
/* The calling thread's context word. */
unsigned ctxalloc_current(void);

/* The allocating functions with per-call flags, united with the thread's context
 * (CTXALLOC_NOWARN, CTXALLOC_NORETRY, CTXALLOC_MAYFAIL, CTXALLOC_ZERO…); release with free().
 * On failure: NULL and errno ENOMEM (EINVAL for an alignment that is not a power of two);
 * realloc_gfp leaves the old block untouched then. */
CTXALLOC_MALLOC CTXALLOC_ALLOC_SIZE(1) void *ctxalloc_malloc_gfp(size_t size, unsigned gfp);
CTXALLOC_MALLOC CTXALLOC_ALLOC_SIZE2(1, 2) void *ctxalloc_calloc_gfp(size_t n, size_t size, unsigned gfp);
CTXALLOC_NODISCARD CTXALLOC_ALLOC_SIZE(2) void *ctxalloc_realloc_gfp(void *p, size_t size, unsigned gfp);
CTXALLOC_MALLOC CTXALLOC_ALLOC_ALIGN(1) CTXALLOC_ALLOC_SIZE(2)
void *ctxalloc_aligned_alloc_gfp(size_t align, size_t size, unsigned gfp);

/* A memory limit in bytes (0: none); usage is what the library holds from the system.
 * Returns 0, or EINVAL (nothing changed) for a limit below ctxalloc_min_limit(): the emergency
 * reserve's floor plus what a first allocation needs. */
int ctxalloc_set_limit(size_t bytes);
size_t ctxalloc_min_limit(void);
size_t ctxalloc_limit(void);
size_t ctxalloc_usage(void);
/* Asks the shrinkers to free `bytes` now; returns the bytes freed. */
size_t ctxalloc_reclaim(size_t bytes);

/* A size as CTXALLOC_LIMIT reads it ("512M", "64MiB", "2G", "4096"): 0 and *bytes set, or
 * EINVAL (not a size) or ERANGE (does not fit) and *bytes untouched. */
int ctxalloc_parse_size(const char *text, size_t *bytes);

/* The statistics table, cut to `len` and NUL-terminated; returns its full length. */
size_t ctxalloc_stats(char *buf, size_t len);
void ctxalloc_print_stats(int fd);

/* Shrinkers: caches the allocator may ask to give memory back when it reaches the limit.
 * A shrinker of class FS is never called (not even count) on behalf of an allocation inside a
 * NOFS or NOIO scope, one of class IO never inside NOIO; so it may take any lock that code
 * holding the matching scope holds. count must not block (read a counter, or try the lock and
 * return 0); scan frees up to nr_to_scan objects and returns how many, or CTXALLOC_SHRINK_STOP.
 * Both may be called from any thread, with the MEMALLOC context set; gfp is the context of the
 * allocation being served. batch 0 means 128. */
enum ctxalloc_class { CTXALLOC_CLASS_FS = 0, CTXALLOC_CLASS_IO = 1, CTXALLOC_CLASS_OTHER = 2 };
#define CTXALLOC_SHRINK_STOP ((size_t)-1)
typedef size_t (*ctxalloc_count_fn)(void *arg, unsigned gfp);
typedef size_t (*ctxalloc_scan_fn)(void *arg, size_t nr_to_scan, unsigned gfp);
typedef struct ctxalloc_shrinker ctxalloc_shrinker;

/* Null if the class is unknown, a callback is missing, or no memory could be had. */
ctxalloc_shrinker *ctxalloc_register_shrinker(const char *name, int cls, ctxalloc_count_fn count,
                                              ctxalloc_scan_fn scan, size_t batch, void *arg);
/* Unregisters, waiting for calls in flight. */
void ctxalloc_unregister_shrinker(ctxalloc_shrinker *shrinker);

#ifdef __cplusplus
}
#endif

#endif /* CTXALLOC_H */
