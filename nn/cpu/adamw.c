/* adamw.c - CPU optimizer kernels: deterministic sums of squares (gradient
 * norm, squared error), scaling, AdamW. */
#include "../kernels.h"

#include <math.h>

/* sum (x - y)^2 in float64 (y may be NULL). The sum is split into blocks of
 * a fixed size, each summed by one thread, and the block sums are added in
 * order: the result is the same for any thread count. */
#define SUM_BLOCK 65536
double nn_sum_squared_diff(const float *x, const float *y, size_t n) {
    size_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    double *block = (double *)nn_alloc(2 * (nb ? nb : 1));
    #pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        size_t i0 = b * SUM_BLOCK, i1 = i0 + SUM_BLOCK < n ? i0 + SUM_BLOCK : n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) {
            double e = (double)x[i] - (y ? (double)y[i] : 0.0);
            s += e * e;
        }
        block[b] = s;
    }
    double total = 0.0;
    for (size_t b = 0; b < nb; b++) total += block[b];
    nn_free(block);
    return total;
}

void nn_scale(float *x, float s, size_t n) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

void nn_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr,
              float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        float mhat = m[i] / bc1, vhat = v[i] / bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}
