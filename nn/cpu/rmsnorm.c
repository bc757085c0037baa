/* rmsnorm.c - CPU RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w (Llama 2). */
#include "cpu.h"

#include <math.h>

static float inv_rms(const float *x, int d, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < d; j++) ss += x[j] * x[j];
    return 1.0f / sqrtf(ss / d + eps);
}

void cpu_rmsnorm_forward(float *y, const float *x, const float *w, int N, int d, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        float r = inv_rms(xi, d, eps);
#pragma omp simd
        for (int j = 0; j < d; j++) yi[j] = xi[j] * r * w[j];
    }
}

/* With r = rsqrt(mean(x^2) + eps):
 *   dx_j = r * w_j * dy_j - x_j * r^3 / d * sum_k dy_k w_k x_k
 *   dw_j = sum_rows dy_j * x_j * r                                         */
void cpu_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, int N, int d,
                          float eps) {
    float *r = cpu_alloc((size_t)N);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * d, *gi = dy + (size_t)i * d;
        float *dxi = dx + (size_t)i * d;
        float ri = inv_rms(xi, d, eps);
        r[i] = ri;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < d; j++) dot += gi[j] * w[j] * xi[j];
        float c = dot * ri * ri * ri / d;
#pragma omp simd
        for (int j = 0; j < d; j++) dxi[j] += ri * w[j] * gi[j] - xi[j] * c;
    }
/* dw: columns in parallel, rows in order, so the sum is deterministic. */
#pragma omp parallel for schedule(static)
    for (int j = 0; j < d; j++) {
        float s = 0.0f;
        for (int i = 0; i < N; i++) s += dy[(size_t)i * d + j] * x[(size_t)i * d + j] * r[i];
        dw[j] += s;
    }
    cpu_free(r);
}
