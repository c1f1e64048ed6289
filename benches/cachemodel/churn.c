/* Larson's pattern, deterministic and single-threaded: `slots` live blocks of random sizes in
 * [min, max); each step frees a random one and allocates a new one in its place, writing two
 * bytes of it. benches/cachemodel.sh runs it under callgrind's cache model. */
#include <stdio.h>
#include <stdlib.h>

static unsigned long long s = 88172645463325252ULL;
static unsigned long long rnd(void) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: churn SLOTS MIN MAX STEPS\n");
        return 2;
    }
    int slots = atoi(argv[1]), min = atoi(argv[2]), max = atoi(argv[3]);
    long steps = atol(argv[4]);
    char **a = calloc(slots, sizeof *a);
    for (int i = 0; i < slots; i++) {
        a[i] = malloc(min + rnd() % (max - min));
        a[i][0] = 1;
    }
    for (long i = 0; i < steps; i++) {
        int v = rnd() % slots;
        free(a[v]);
        a[v] = malloc(min + rnd() % (max - min));
        a[v][0] = 'a';
        a[v][1] = 'b';
    }
    for (int i = 0; i < slots; i++) free(a[i]);
    free(a);
    return 0;
}
