/* The C library from an installed tree:
 *
 *     cc hello.c $(pkg-config --cflags --libs ctxalloc) -o hello && ./hello
 *
 * Linked (not preloaded), ctxalloc is the program's malloc from its first call. */
#include <ctxalloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    if (CTXALLOC_VERSION_NUMBER < CTXALLOC_MAKE_VERSION(0, 1, 0)) return 1;
    size_t limit;
    if (ctxalloc_parse_size("256M", &limit) != 0 || ctxalloc_set_limit(limit) != 0) return 2;

    ctxalloc_cookie_t nofs = ctxalloc_nofs_save(); /* nothing in here reclaims into a filesystem */
    char *s = strdup("allocated inside a NOFS scope");
    unsigned ctx = ctxalloc_current();
    ctxalloc_nofs_restore(nofs);

    void *z = ctxalloc_calloc_gfp(16, 64, CTXALLOC_NOWARN);
    int ok = s && z && (ctx & CTXALLOC_NOFS) && ctxalloc_usage() <= ctxalloc_limit();
    printf("ctxalloc %s (header %s): %s, usage %zu of %zu bytes: %s\n", ctxalloc_version(), CTXALLOC_VERSION,
           s, ctxalloc_usage(), ctxalloc_limit(), ok ? "ok" : "FAILED");
    free(z);
    free(s);
    return ok ? 0 : 3;
}
