/* reduce.c - CPU float64 sums over large arrays (gradient norm, loss sums)
 * that give the same bits for any thread count: the array is cut into blocks
 * of a fixed size, each summed by one thread in LANES interleaved sums, and
 * the block sums are added in order. */
#include "cpu.h"

#include <math.h>

#define SUM_BLOCK 65536
#define LANES 8

static inline double term(float x, float y, int absolute) {
    double e = (double)x - (double)y;
    return absolute ? fabs(e) : e * e;
}

/* sum of (x - y)^2, or of |x - y| when absolute; y may be NULL (zeros). */
static double block_sum(const float *x, const float *y, size_t n, int absolute) {
    size_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double *block = (double *)cpu_alloc(2 * (nb ? nb : 1));
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
        /* LANES running sums (one vector of them), added in a fixed tree at
         * the end: one chain of dependent float64 adds ran at the adder's
         * latency, 6 ms a step over 17 M gradients. */
        double s[LANES] = {0};
        size_t i = i0;
        for (; i + LANES <= i1; i += LANES)
            for (int k = 0; k < LANES; k++) s[k] += term(x[i + k], y ? y[i + k] : 0.0f, absolute);
        for (int k = 0; i < i1; i++, k++) s[k] += term(x[i], y ? y[i] : 0.0f, absolute);
        block[b] = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    }
    double total = 0.0;
    for (size_t b = 0; b < nb; b++) total += block[b];
    cpu_free(block);
    return total;
}

double cpu_sum_squared_diff(const float *x, const float *y, size_t n) { return block_sum(x, y, n, 0); }

double cpu_abs_error(float *dpred, const float *pred, const float *target, size_t n, float grad_scale) {
    double total = block_sum(pred, target, n, 1); /* before dpred may overwrite pred */
    if (grad_scale != 0.0f) {
#pragma omp parallel for simd schedule(static)
        for (size_t i = 0; i < n; i++) {
            float e = pred[i] - target[i];
            dpred[i] = e > 0.0f ? grad_scale : (e < 0.0f ? -grad_scale : 0.0f);
        }
    }
    return total;
}
