/*
 * ctxalloc.h — scoped allocation contexts for C and C++ programs on ctxalloc.
 *
 * Link with -lctxalloc_preload, or run under LD_PRELOAD=/abs/path/libctxalloc_preload.so (then
 * declare these functions weak, or look them up with dlsym, if the program must also run
 * without it). malloc, free, calloc, realloc, posix_memalign, aligned_alloc, memalign, valloc,
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

#ifdef __cplusplus
extern "C" {
#endif

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

/* malloc with per-call flags, united with the thread's context; release with free(). */
void *ctxalloc_malloc_gfp(size_t size, unsigned gfp);

/* A memory limit in bytes (0: none); usage is what the library holds from the system. */
void ctxalloc_set_limit(size_t bytes);
size_t ctxalloc_limit(void);
size_t ctxalloc_usage(void);
/* Asks the shrinkers to free `bytes` now; returns the bytes freed. */
size_t ctxalloc_reclaim(size_t bytes);

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
