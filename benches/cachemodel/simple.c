/* glibc's malloc-simple benchmark loop: batches of 25, 100, 400 and 1600 blocks of 16, 32, 64
 * and 128 bytes, written, then half freed in FIFO and half in LIFO order. benches/cachemodel.sh
 * runs it under callgrind's cache model. */
#include <stdio.h>
#include <stdlib.h>

static char *arr[1600];

static void batches(long steps, size_t size, int n) {
    for (long j = 0; j < steps; j++) {
        for (int i = 0; i < n; i++) {
            arr[i] = malloc(size);
            for (size_t g = 0; g < size; g++) arr[i][g] = (char)g;
        }
        for (int i = 0; i < n / 2; i++) free(arr[i]);
        for (int i = n - 1; i >= n / 2; i--) free(arr[i]);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: simple ALLOCATIONS\n");
        return 2;
    }
    long total = atol(argv[1]);
    int n[4] = {25, 100, 400, 1600};
    size_t size[4] = {16, 32, 64, 128};
    for (int s = 0; s < 4; s++)
        for (int i = 0; i < 4; i++) batches(total / n[i], size[s], n[i]);
    return 0;
}
