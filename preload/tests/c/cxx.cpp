/* C++'s operator new and delete under LD_PRELOAD (tests/preload.rs builds and runs this): every
 * form allocates from ctxalloc, and out of memory behaves as the standard says — the
 * new_handler is called, std::bad_alloc is thrown, the nothrow forms return null. Each check
 * prints "ok <name>" or "FAIL <name>: …"; the exit code is the number of failures. */
#include "ctxalloc.h"
#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <malloc.h>
#include <new>

static int failures;
/* Sizes the compiler must not see as constants (it may elide or reject allocations it knows). */
static volatile size_t big = size_t(64) << 20;

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

/* Whether `p` is a live block of ctxalloc's of at least `n` bytes aligned to `align`
 * (malloc_usable_size is 0 for a pointer ctxalloc did not hand out). */
static bool ours(void *p, size_t n, size_t align) {
    return p != nullptr && malloc_usable_size(p) >= n && (uintptr_t)p % align == 0;
}

static int handler_calls;
static void handler() {
    handler_calls++;
    std::set_new_handler(nullptr); /* the next failure throws */
}

int main() {
    volatile size_t n = 24;
    void *a = ::operator new(n);
    void *b = ::operator new[](n);
    void *c = ::operator new(n, std::nothrow);
    void *d = ::operator new[](n, std::nothrow);
    CHECK("new-forms-are-ctxalloc-blocks", ours(a, n, 16) && ours(b, n, 16) && ours(c, n, 16) && ours(d, n, 16),
          "%p %p %p %p", a, b, c, d);
    ::operator delete(a);
    ::operator delete[](b, size_t(n));
    ::operator delete(c, std::nothrow);
    ::operator delete[](d, std::nothrow);

    bool aligned = true;
    for (size_t al : {16, 64, 4096, 1 << 16}) {
        void *p = ::operator new(n, std::align_val_t(al));
        void *q = ::operator new[](size_t(5000), std::align_val_t(al), std::nothrow);
        aligned = aligned && ours(p, n, al) && ours(q, 5000, al);
        ::operator delete(p, std::align_val_t(al));
        ::operator delete[](q, size_t(5000), std::align_val_t(al));
    }
    CHECK("aligned-new-forms", aligned, "a block was not ctxalloc's or not aligned");

    int *v = new int[1000]();
    bool zero = true;
    for (int i = 0; i < 1000; i++) zero = zero && v[i] == 0;
    delete[] v;
    CHECK("new-expression-value-initialises", zero, "a non-zero int");

    /* Out of memory: under a limit, a new that cannot be served goes to libstdc++'s form, which
     * calls the handler, tries again and throws. */
    if (ctxalloc_set_limit(size_t(16) << 20) != 0) {
        CHECK("set-limit", false, "ctxalloc_set_limit refused 16 MiB");
        return failures;
    }
    std::set_new_handler(handler);
    bool threw = false;
    try {
        void *p = ::operator new(big);
        ::operator delete(p);
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK("new-throws-bad-alloc-after-the-handler", threw && handler_calls == 1, "threw %d, handler calls %d",
          threw, handler_calls);
    threw = false;
    try {
        char *p = new char[big];
        delete[] p;
    } catch (const std::bad_alloc &) {
        threw = true;
    }
    CHECK("new-array-throws-bad-alloc", threw, "no exception");
    void *p = ::operator new(big, std::nothrow);
    void *q = ::operator new[](big, std::align_val_t(64), std::nothrow);
    CHECK("nothrow-new-returns-null", p == nullptr && q == nullptr, "%p %p", p, q);
    void *r = ::operator new(n);
    CHECK("new-still-serves-small-blocks", ours(r, n, 16), "%p", r);
    ::operator delete(r);
    printf("%d failures\n", failures);
    return failures;
}
