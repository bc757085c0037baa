/* check.h - the tiny assertion harness of the C tests.
 * Each CHECK prints "ok <name>" or "FAIL <name>: <why>"; tests/run.sh counts
 * those lines over every test program and prints "N passed, N failed".
 * A test program exits non-zero when any of its checks failed. */
#ifndef TESTS_CHECK_H
#define TESTS_CHECK_H

#include <stdio.h>

static int check_failures;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        if (cond) {                                                                                                    \
            printf("ok ");                                                                                             \
            printf(__VA_ARGS__);                                                                                       \
            printf("\n");                                                                                              \
        } else {                                                                                                       \
            check_failures++;                                                                                          \
            printf("FAIL ");                                                                                           \
            printf(__VA_ARGS__);                                                                                       \
            printf(": %s (%s:%d)\n", #cond, __FILE__, __LINE__);                                                       \
        }                                                                                                              \
        fflush(stdout);                                                                                                \
    } while (0)

#define CHECK_DONE() (check_failures ? 1 : 0)

#endif
