/* Allocates, prints a line, exits: a program for the environment checks of tests/preload.rs. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    char *s = strdup("/");
    puts(s);
    free(s);
    return 0;
}
