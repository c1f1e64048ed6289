/* glibc's malloc-thread benchmark loop, single-threaded and for a fixed number of steps: 1024
 * slots, sizes from 4 B to 32 KiB with an inverse-square distribution, every byte of a new
 * block written. benches/cachemodel.sh runs it under callgrind's cache model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define WS 1024
static unsigned sizes[8000], offsets[WS * 4];

static unsigned block_size(unsigned r) {
    float min_pow = powf(4, -1), max_pow = powf(32768, -1);
    return (unsigned)powf((max_pow - min_pow) * ((float)r / RAND_MAX) + min_pow, -1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: thread STEPS\n");
        return 2;
    }
    long steps = atol(argv[1]);
    srand(88);
    for (int i = 0; i < 8000; i++) sizes[i] = block_size(rand());
    for (int i = 0; i < WS * 4; i++) offsets[i] = rand() % WS;
    void *a[WS] = {0};
    unsigned o = 0, b = 0;
    for (long i = 0; i < steps; i++) {
        o = o >= WS * 4 - 1 ? 0 : o + 1;
        b = b >= 7999 ? 0 : b + 1;
        unsigned idx = offsets[o], n = sizes[b];
        free(a[idx]);
        char *p = a[idx] = malloc(n);
        for (unsigned j = 0; j < n; j++) p[j] = (char)j;
    }
    for (int i = 0; i < WS; i++) free(a[i]);
    return 0;
}
