/* rmsnorm.c - CPU RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w (Llama 2). */
#include "cpu.h"

#include <math.h>
#include <omp.h>

static float inv_rms(const float *x, int d, float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int j = 0; j < d; j++) ss += x[j] * x[j];
    return 1.0f / sqrtf(ss / d + eps);
}

void cpu_rmsnorm_row(float *y, const float *x, const float *w, int d, float eps) {
    float r = inv_rms(x, d, eps);
#pragma omp simd
    for (int j = 0; j < d; j++) y[j] = x[j] * r * w[j];
}

void cpu_rmsnorm_forward(float *y, const float *x, const float *w, int N, int d, float eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) cpu_rmsnorm_row(y + (size_t)i * d, x + (size_t)i * d, w, d, eps);
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
/* dw: each column summed over the rows in order (deterministic), a
 * thread's block of columns at a time, row by row: contiguous reads. */
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int j0 = (int)((long)d * t / nt), j1 = (int)((long)d * (t + 1) / nt);
        float *s = cpu_alloc((size_t)(j1 - j0));
        for (int i = 0; i < N; i++) {
            const float *gi = dy + (size_t)i * d, *xi = x + (size_t)i * d;
#pragma omp simd
            for (int j = j0; j < j1; j++) s[j - j0] += gi[j] * xi[j] * r[i];
        }
        for (int j = j0; j < j1; j++) dw[j] += s[j - j0];
        cpu_free(s);
    }
    cpu_free(r);
}
