/* The C allocator and the ctxalloc_* API, from C, under LD_PRELOAD (tests/preload.rs builds
 * and runs this). Each check prints "ok <name>" or "FAIL <name>: …" and the exit code is the
 * number of failures. */
#define _GNU_SOURCE
#include "ctxalloc.h"
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;
/* Sizes the compiler must not see as constants (it rejects impossible ones at compile time). */
static volatile size_t huge = SIZE_MAX;

#define CHECK(name, cond, ...)                                                                  \
    do {                                                                                        \
        if (cond) {                                                                             \
            printf("ok %s\n", name);                                                           \
        } else {                                                                                \
            printf("FAIL %s: ", name);                                                         \
            printf(__VA_ARGS__);                                                                \
            printf("\n");                                                                       \
            failures++;                                                                         \
        }                                                                                       \
        fflush(stdout);                                                                         \
    } while (0)

static int pattern_ok(const unsigned char *p, size_t n, unsigned char seed) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(seed + i)) return 0;
    return 1;
}

static void pattern(unsigned char *p, size_t n, unsigned char seed) {
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(seed + i);
}

static void malloc_family(void) {
    static const size_t sizes[] = {0, 1, 15, 16, 100, 4096, 5000, 65536, 65537, 1 << 20, 5 << 20};
    int aligned = 1, usable = 1, kept = 1;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        for (size_t j = 0; j < sizeof sizes / sizeof *sizes; j++) {
            size_t from = sizes[i], to = sizes[j];
            /* max_align_t (16) above 8 bytes; 8 for an object of at most 8 bytes (C17) */
            unsigned char *p = malloc(from);
            if (!p || (uintptr_t)p % (from > 8 ? 16 : 8) || malloc_usable_size(p) < from) aligned = 0;
            pattern(p, from, (unsigned char)i);
            unsigned char *q = realloc(p, to);
            if (to == 0) continue; /* realloc(p, 0) freed p */
            if (!q || (uintptr_t)q % (to > 8 ? 16 : 8)) aligned = 0;
            if (malloc_usable_size(q) < to) usable = 0;
            if (!pattern_ok(q, from < to ? from : to, (unsigned char)i)) kept = 0;
            free(q);
        }
    }
    CHECK("malloc-realloc-every-size-pair", aligned && usable && kept, "aligned %d usable %d kept %d",
          aligned, usable, kept);

    unsigned char *z = calloc(1000, 1000);
    int zero = z != NULL;
    for (size_t i = 0; zero && i < 1000000; i++) zero = z[i] == 0;
    memset(z, 0xab, 1000000);
    free(z);
    z = calloc(1000, 1000); /* likely the same memory: must be zero again */
    for (size_t i = 0; zero && i < 1000000; i++) zero = z[i] == 0;
    free(z);
    CHECK("calloc-zeroes-reused-memory", zero, "a byte was not zero");

    /* Small blocks: the block just freed is the one calloc pops (its inline path), dirty. */
    int small_zero = 1, reused = 0;
    for (size_t n = 1; n <= 1024; n += n < 64 ? 1 : 37) {
        unsigned char *d = malloc(n);
        memset(d, 0xcd, n);
        free(d);
        unsigned char *c = calloc(1, n);
        reused += c == d;
        for (size_t i = 0; c && i < n; i++) small_zero &= c[i] == 0;
        free(c);
    }
    CHECK("calloc-zeroes-small-reused-blocks", small_zero && reused > 0, "zero %d reused %d", small_zero, reused);

    errno = 0;
    void *o = calloc(huge / 2, 4);
    CHECK("calloc-overflow", o == NULL && errno == ENOMEM, "%p errno %d", o, errno);
    errno = 0;
    o = malloc(huge - 100);
    CHECK("malloc-impossible", o == NULL && errno == ENOMEM, "%p errno %d", o, errno);
    errno = 0;
    o = reallocarray(NULL, huge / 2, 3);
    CHECK("reallocarray-overflow", o == NULL && errno == ENOMEM, "%p errno %d", o, errno);

    int al = 1;
    for (size_t a = 1; a <= (1 << 22); a <<= 1) {
        void *p = NULL;
        int r = posix_memalign(&p, a < sizeof(void *) ? sizeof(void *) : a, 100);
        if (r || (uintptr_t)p % a) al = 0;
        free(p);
        p = aligned_alloc(a, 3 * a);
        if (!p || (uintptr_t)p % a) al = 0;
        free(p);
        p = memalign(a, 10);
        if (!p || (uintptr_t)p % a) al = 0;
        free(p);
    }
    void *v = valloc(10), *pv = pvalloc(10);
    if (!v || (uintptr_t)v % 4096 || !pv || (uintptr_t)pv % 4096 || malloc_usable_size(pv) < 4096) al = 0;
    free(v);
    free(pv);
    CHECK("every-alignment", al, "a block was misaligned");

    void *bad = (void *)1;
    int r = posix_memalign(&bad, 24, 10);
    CHECK("posix_memalign-einval", r == EINVAL && bad == (void *)1, "r %d", r);
    errno = 0;
    o = aligned_alloc(24, 48);
    CHECK("aligned_alloc-einval", o == NULL && errno == EINVAL, "%p errno %d", o, errno);

    char *s = strdup("strdup goes through malloc");
    CHECK("strdup", s && malloc_usable_size(s) >= 27, "usable %zu", malloc_usable_size(s));
    free(s);
    free(NULL);

    /* A pointer this allocator never handed out is reported (stderr) and ignored. */
    char local[32];
    void *volatile foreign = local; /* hidden from the compiler's free-of-a-stack-object check */
    fprintf(stderr, "foreign pointer %p\n", foreign);
    free(foreign);
    CHECK("foreign-free-survives", malloc_usable_size(foreign) == 0, "usable %zu", malloc_usable_size(foreign));
}

static void scopes(void) {
    CHECK("context-starts-clean", ctxalloc_current() == CTXALLOC_KERNEL, "%#x", ctxalloc_current());
    ctxalloc_cookie_t a = ctxalloc_nofs_save();
    unsigned in_a = ctxalloc_current();
    ctxalloc_cookie_t b = ctxalloc_noio_save();
    unsigned in_b = ctxalloc_current();
    ctxalloc_cookie_t c = ctxalloc_nofs_save(); /* already set: restores nothing */
    ctxalloc_nofs_restore(c);
    unsigned after_c = ctxalloc_current();
    ctxalloc_noio_restore(b);
    unsigned after_b = ctxalloc_current();
    ctxalloc_nofs_restore(a);
    CHECK("scopes-nest-exactly",
          in_a == CTXALLOC_NOFS && in_b == (CTXALLOC_NOFS | CTXALLOC_NOIO) && after_c == in_b &&
              after_b == CTXALLOC_NOFS && ctxalloc_current() == 0,
          "%#x %#x %#x %#x %#x", in_a, in_b, after_c, after_b, ctxalloc_current());
    ctxalloc_cookie_t f = ctxalloc_flags_save(CTXALLOC_NORECLAIM | CTXALLOC_NOFAIL);
    unsigned in_f = ctxalloc_current();
    ctxalloc_flags_restore(f);
    CHECK("flags-save", in_f == (CTXALLOC_NORECLAIM | CTXALLOC_NOFAIL) && ctxalloc_current() == 0, "%#x", in_f);
}

/* A cache of 256 KiB chunks with an FS-class shrinker. */
#define CHUNK (256 << 10)
struct cache {
    pthread_mutex_t lock;
    void *chunks[4096];
    size_t n;
    size_t scans, scans_under_nofs;
};

static size_t cache_count(void *arg, unsigned gfp) {
    struct cache *c = arg;
    (void)gfp;
    if (pthread_mutex_trylock(&c->lock)) return 0; /* never block in count */
    size_t n = c->n;
    pthread_mutex_unlock(&c->lock);
    return n;
}

static size_t cache_scan(void *arg, size_t nr, unsigned gfp) {
    struct cache *c = arg;
    c->scans++;
    if (gfp & (CTXALLOC_NOFS | CTXALLOC_NOIO)) c->scans_under_nofs++;
    if (pthread_mutex_trylock(&c->lock)) return CTXALLOC_SHRINK_STOP;
    size_t freed = 0;
    while (freed < nr && c->n) {
        free(c->chunks[--c->n]);
        freed++;
    }
    pthread_mutex_unlock(&c->lock);
    return freed;
}

static void shrinker_and_limit(void) {
    static struct cache c = {.lock = PTHREAD_MUTEX_INITIALIZER};
    ctxalloc_shrinker *h = ctxalloc_register_shrinker("c-cache", CTXALLOC_CLASS_FS, cache_count,
                                                      cache_scan, 4, &c);
    CHECK("register-shrinker", h != NULL, "null handle");
    CHECK("register-shrinker-bad-class", !ctxalloc_register_shrinker("x", 7, cache_count, cache_scan, 0, &c),
          "accepted class 7");
    size_t limit = ctxalloc_usage() + (32 << 20);
    int r = ctxalloc_set_limit(limit);
    CHECK("limit", r == 0 && ctxalloc_limit() == limit, "%d %zu", r, ctxalloc_limit());
    r = ctxalloc_set_limit(ctxalloc_min_limit() - 1);
    CHECK("limit-too-small-refused", r == EINVAL && ctxalloc_limit() == limit, "%d %zu", r, ctxalloc_limit());
    /* Fill the cache until the limit refuses (NORECLAIM: the filler does not reclaim), give
     * back what the allocator keeps for speed, fill again: now only the cache can free. */
    for (int round = 0; round < 2; round++) {
        for (;;) {
            void *p = ctxalloc_malloc_gfp(CHUNK, CTXALLOC_NORECLAIM | CTXALLOC_NOWARN);
            if (!p) break;
            pthread_mutex_lock(&c.lock);
            c.chunks[c.n++] = p;
            pthread_mutex_unlock(&c.lock);
        }
        malloc_trim(0);
    }
    size_t filled = c.n;
    /* Inside a NOFS scope the FS shrinker is never called: the allocation fails. */
    ctxalloc_cookie_t nofs = ctxalloc_nofs_save();
    void *denied = malloc(CHUNK);
    ctxalloc_nofs_restore(nofs);
    CHECK("nofs-never-enters-the-fs-shrinker", filled > 0 && denied == NULL && c.scans == 0,
          "filled %zu denied %p scans %zu", filled, denied, c.scans);
    /* Outside it, reclaim frees cache chunks and the allocation succeeds. */
    void *granted = malloc(CHUNK);
    CHECK("reclaim-makes-room", granted != NULL && c.scans > 0 && c.n < filled && c.scans_under_nofs == 0,
          "granted %p scans %zu left %zu/%zu", granted, c.scans, c.n, filled);
    CHECK("usage-within-limit", ctxalloc_usage() <= limit, "%zu > %zu", ctxalloc_usage(), limit);
    char buf[8192];
    size_t len = ctxalloc_stats(buf, sizeof buf);
    CHECK("stats", len > 0 && len < sizeof buf && strstr(buf, "usage") && strstr(buf, "c-cache"), "%s", buf);
    char small[16];
    size_t cut = ctxalloc_stats(small, sizeof small);
    CHECK("stats-cut-like-snprintf", cut == len && strlen(small) == sizeof small - 1, "%zu %zu", cut, len);
    free(granted);
    free(denied);
    ctxalloc_unregister_shrinker(h);
    r = ctxalloc_set_limit(0);
    CHECK("limit-removed", r == 0 && ctxalloc_limit() == 0, "%d %zu", r, ctxalloc_limit());
    while (c.n) free(c.chunks[--c.n]);
}

/* Threads allocate, hand blocks to each other, and free what they received. */
#define THREADS 4
#define PER 20000
static void *mailbox[THREADS][PER];

static void *worker(void *arg) {
    size_t me = (size_t)arg;
    for (size_t i = 0; i < PER; i++) {
        size_t n = 16 + (i * 7919 + me * 104729) % 2000;
        unsigned char *p = malloc(n);
        p[0] = (unsigned char)me;
        p[n - 1] = (unsigned char)me;
        mailbox[me][i] = p;
    }
    return NULL;
}

static void *freer(void *arg) {
    size_t from = ((size_t)arg + 1) % THREADS;
    int ok = 1;
    for (size_t i = 0; i < PER; i++) {
        unsigned char *p = mailbox[from][i];
        if (p[0] != from) ok = 0;
        free(p);
    }
    return (void *)(uintptr_t)ok;
}

static void threads(void) {
    pthread_t t[THREADS];
    for (size_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (size_t i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    int ok = 1;
    for (size_t i = 0; i < THREADS; i++) pthread_create(&t[i], NULL, freer, (void *)i);
    for (size_t i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        ok &= (int)(uintptr_t)r;
    }
    CHECK("cross-thread-frees", ok, "a block was corrupted");
}

/* The library is the version the header says; sizes parse as CTXALLOC_LIMIT reads them; the
 * per-call-flag variants of calloc, realloc and aligned_alloc. */
static void version_parse_and_gfp_variants(void) {
    CHECK("version", strcmp(ctxalloc_version(), CTXALLOC_VERSION) == 0, "library %s, header %s",
          ctxalloc_version(), CTXALLOC_VERSION);
    size_t n = 7;
    int r = ctxalloc_parse_size("64MiB", &n);
    CHECK("parse-size", r == 0 && n == (size_t)64 << 20, "%d %zu", r, n);
    n = 7;
    r = ctxalloc_parse_size("1.5G", &n);
    int r2 = ctxalloc_parse_size("99999999999999G", &n);
    CHECK("parse-size-errors", r == EINVAL && r2 == ERANGE && n == 7, "%d %d %zu", r, r2, n);

    unsigned char *z = ctxalloc_calloc_gfp(1000, 3, CTXALLOC_NOWARN);
    int zero = z != NULL;
    for (size_t i = 0; z && i < 3000; i++) zero &= z[i] == 0;
    CHECK("calloc-gfp-zeroes", zero, "%p", (void *)z);
    errno = 0;
    void *o = ctxalloc_calloc_gfp(huge, 2, CTXALLOC_NOWARN);
    CHECK("calloc-gfp-overflow", o == NULL && errno == ENOMEM, "%p errno %d", o, errno);
    pattern(z, 3000, 5);
    unsigned char *g = ctxalloc_realloc_gfp(z, 100000, CTXALLOC_NOWARN);
    CHECK("realloc-gfp-keeps", g && pattern_ok(g, 3000, 5), "%p", (void *)g);
    errno = 0;
    o = ctxalloc_realloc_gfp(g, huge, CTXALLOC_NOWARN);
    CHECK("realloc-gfp-failure-keeps-the-block", o == NULL && errno == ENOMEM && pattern_ok(g, 3000, 5),
          "%p errno %d", o, errno);
    free(g);
    int al = 1;
    for (size_t a = 1; a <= (1 << 20); a <<= 1) {
        void *p = ctxalloc_aligned_alloc_gfp(a, 24, CTXALLOC_ZERO);
        if (!p || (uintptr_t)p % a || *(unsigned char *)p != 0) al = 0;
        free(p);
    }
    CHECK("aligned-alloc-gfp", al, "a block was misaligned or not zeroed");
    errno = 0;
    o = ctxalloc_aligned_alloc_gfp(24, 24, 0);
    CHECK("aligned-alloc-gfp-einval", o == NULL && errno == EINVAL, "%p errno %d", o, errno);
}

int main(void) {
    malloc_family();
    scopes();
    shrinker_and_limit();
    version_parse_and_gfp_variants();
    threads();
    printf("%d failures\n", failures);
    return failures;
}
