/* Threads that allocate and exit while other threads free their blocks, with ctxalloc's
 * background thread idling out between rounds and started again by the next round's exits —
 * the shape of mimalloc-bench's xmalloc-test that hung: an exiting thread gave a page back,
 * which started the background thread, whose pthread_create allocated (calloc) on the exiting
 * thread while it held the allocator's `abandoned` lock.
 *
 * Run with CTXALLOC_BACKGROUND_IDLE=1ms (the harness sets it). Each round:
 *   1. waits until no ctxalloc background thread exists (it idles out after malloc_trim);
 *   2. starts WORKERS threads that allocate blocks of mixed sizes, fill them with a pattern
 *      and hand them over in batches, and exit while FREERS threads check and free the blocks;
 *   3. joins them, notes whether the background thread was running again, and trims.
 * It prints one line per round ("round N"): the harness treats silence as a hang and shows
 * the stacks. At the end: "rounds R restarted S", and exit status 0 if every block came back
 * intact. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 200
#define WORKERS 4
#define FREERS 2
#define BATCH 64
#define BATCHES 24 /* per worker: 1536 blocks */

struct batch {
    struct batch *next;
    int n;
    unsigned char *p[BATCH];
    size_t len[BATCH];
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t more = PTHREAD_COND_INITIALIZER;
static struct batch *queue;
static int producers_left;
static long freed, corrupt;

static void die(const char *what) {
    printf("FAIL %s\n", what);
    fflush(stdout);
    exit(1);
}

/* Live threads of this process named like ctxalloc's background thread. Without allocating
 * (no opendir: its buffer would come from ctxalloc, and a poll that churns memory keeps the
 * background thread busy): getdents64 into a stack buffer. */
static int background_threads(void) {
    int n = 0;
    int dir = open("/proc/self/task", O_RDONLY | O_DIRECTORY);
    if (dir < 0) die("open /proc/self/task");
    char buf[8192];
    long got;
    while ((got = syscall(SYS_getdents64, dir, buf, sizeof buf)) > 0) {
        for (long off = 0; off < got;) {
            struct linux_dirent64 {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *e = (void *)(buf + off);
            off += e->reclen;
            if (e->name[0] == '.') continue;
            char path[300], name[32] = {0};
            snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->name);
            int fd = open(path, O_RDONLY);
            if (fd < 0) continue; /* the thread ended meanwhile */
            ssize_t len = read(fd, name, sizeof name - 1);
            close(fd);
            if (len > 0 && strncmp(name, "ctxalloc-kswapd", 15) == 0) n++;
        }
    }
    close(dir);
    return n;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static unsigned char pattern(uintptr_t seed, size_t i) { return (unsigned char)(seed * 31 + i * 7); }

static void *worker(void *arg) {
    uintptr_t seed = (uintptr_t)arg;
    for (int b = 0; b < BATCHES; b++) {
        struct batch *bt = malloc(sizeof *bt);
        if (!bt) die("malloc of a batch");
        bt->n = BATCH;
        for (int i = 0; i < BATCH; i++) {
            /* 16 B .. 2 KiB, most small: several size classes, several pages each. */
            uintptr_t r = (seed * 2654435761u + (uintptr_t)(b * BATCH + i) * 40503u) % 13;
            size_t len = 16 + r * (i % 8 == 0 ? 160 : 8);
            unsigned char *p = malloc(len);
            if (!p) die("malloc of a block");
            for (size_t k = 0; k < len; k++) p[k] = pattern((uintptr_t)p, k);
            bt->p[i] = p;
            bt->len[i] = len;
        }
        pthread_mutex_lock(&lock);
        bt->next = queue;
        queue = bt;
        pthread_cond_signal(&more);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    producers_left--;
    pthread_cond_broadcast(&more);
    pthread_mutex_unlock(&lock);
    return NULL; /* exits: its heap is abandoned while the freers still free into it */
}

static void *freer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (!queue && producers_left > 0) pthread_cond_wait(&more, &lock);
        struct batch *bt = queue;
        if (bt) queue = bt->next;
        pthread_mutex_unlock(&lock);
        if (!bt) return NULL;
        long bad = 0, n = bt->n;
        for (int i = 0; i < n; i++) {
            unsigned char *p = bt->p[i];
            for (size_t k = 0; k < bt->len[i]; k++)
                if (p[k] != pattern((uintptr_t)p, k)) {
                    bad++;
                    break;
                }
            free(p);
        }
        free(bt);
        __atomic_fetch_add(&freed, n, __ATOMIC_RELAXED);
        __atomic_fetch_add(&corrupt, bad, __ATOMIC_RELAXED);
    }
}

int main(void) {
    int restarted = 0;
    for (int round = 0; round < ROUNDS; round++) {
        /* 1. The background thread is gone (malloc_trim left it nothing to wait for). */
        double deadline = now() + 20;
        while (background_threads() != 0) {
            if (now() > deadline) die("the background thread did not idle out within 20 s");
            sched_yield();
        }
        /* 2. Allocating threads exit while others free their blocks. */
        pthread_t w[WORKERS], f[FREERS];
        producers_left = WORKERS;
        for (int i = 0; i < FREERS; i++)
            if (pthread_create(&f[i], NULL, freer, NULL)) die("pthread_create");
        for (int i = 0; i < WORKERS; i++)
            if (pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)(round * WORKERS + i + 1))) die("pthread_create");
        for (int i = 0; i < WORKERS; i++) pthread_join(w[i], NULL);
        for (int i = 0; i < FREERS; i++) pthread_join(f[i], NULL);
        /* 3. Started again by this round? Then let it idle out. */
        if (background_threads() > 0) restarted++;
        malloc_trim(0);
        printf("round %d\n", round);
        fflush(stdout);
    }
    long expect = (long)ROUNDS * WORKERS * BATCHES * BATCH;
    printf("rounds %d restarted %d freed %ld of %ld corrupt %ld\n", ROUNDS, restarted, freed, expect, corrupt);
    return freed == expect && corrupt == 0 ? 0 : 1;
}
