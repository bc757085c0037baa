/* timing.h - wall-clock seconds and the median of repeated timings, for
 * progress lines and benchmarks. */
#ifndef COMMON_TIMING_H
#define COMMON_TIMING_H

#include <stdlib.h>
#include <time.h>

static inline double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static inline int timing_compare(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Sorts t[0..n) and returns its median (the upper one for even n). */
static inline double median_sorted(double *t, int n) {
    qsort(t, n, sizeof(double), timing_compare);
    return t[n / 2];
}

#endif
