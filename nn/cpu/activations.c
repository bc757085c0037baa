/* activations.c - CPU SiLU and SwiGLU (Llama 2's MLP: silu(gate) * up). */
#include "cpu.h"
#include "vexp.h"

#include <math.h>

void cpu_silu_forward(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) y[i] = x[i] * sigmoid(x[i]);
}

/* silu'(x) = s + x * s * (1 - s), s = sigmoid(x) */
void cpu_silu_backward(float *dx, const float *dy, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float s = sigmoid(x[i]);
        dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
    }
}

void cpu_swiglu_row(float *act, const float *gu, int f) {
    const float *g = gu, *u = gu + f;
#pragma omp simd
    for (int j = 0; j < f; j++) act[j] = g[j] * sigmoid(g[j]) * u[j];
}

void cpu_swiglu_forward(float *act, const float *gu, int N, int f) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) cpu_swiglu_row(act + (size_t)i * f, gu + (size_t)i * 2 * f, f);
}

void cpu_swiglu_backward(float *dgu, const float *dact, const float *gu, int N, int f) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *g = gu + (size_t)i * 2 * f, *u = g + f, *da = dact + (size_t)i * f;
        float *dg = dgu + (size_t)i * 2 * f, *du = dg + f;
#pragma omp simd
        for (int j = 0; j < f; j++) {
            float s = sigmoid(g[j]);
            du[j] = da[j] * g[j] * s;
            dg[j] = da[j] * u[j] * (s + g[j] * s * (1.0f - s));
        }
    }
}
