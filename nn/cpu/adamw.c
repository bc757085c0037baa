/* adamw.c - CPU optimizer kernels: scaling (clipping), AdamW and the
 * weights' moving average. */
#include "cpu.h"

#include <math.h>

void cpu_scale(float *x, float s, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

void cpu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
               float wd, float bc1, float bc2) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
        v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
        float mhat = m[i] / bc1, vhat = v[i] / bc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

void cpu_ema_update(float *ema, const float *w, size_t n, float decay) {
    float k = 1.0f - decay;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] += k * (w[i] - ema[i]);
}
