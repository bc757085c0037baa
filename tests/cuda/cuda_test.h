/* cuda_test.h - what the CUDA tests share (CUDA=1 only): random inputs,
 * copies between the host and CUDA buffers, and the NaN-safe comparison
 * against the CPU backend's result. Each test program includes it once. */
#ifndef TESTS_CUDA_TEST_H
#define TESTS_CUDA_TEST_H

#include "../check.h"
#include "../../nn/backend.h"
#include "../../common/error.h"
#include "../../common/rng.h"
#include "../../common/safetensors.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TOL 2e-2 /* of the largest reference value */

static rng r;

static void cpu(void) { nn_use_backend(&nn_cpu_backend); }
static void cuda(void) { nn_use_backend(&nn_cuda_backend); }

static float *randn(size_t n, float scale) {
    float *x = xmalloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = (float)(scale * rng_normal(&r));
    return x;
}

/* x rounded to bfloat16 in place: what an activation buffer holds. */
static float *bf16_round(float *x, size_t n) {
    uint16_t *b = xmalloc(2 * (n ? n : 1));
    st_f32_to_bf16(x, b, n);
    st_bf16_to_f32(b, x, n);
    free(b);
    return x;
}

/* A CUDA buffer (activation, or float32 when f32) holding host x. */
static float *gpu(const float *x, size_t n, int f32) {
    cuda();
    float *d = f32 ? nn_alloc_f32(n) : nn_alloc(n);
    nn_upload(d, x, n);
    return d;
}

static int32_t *gpu_i32(const int32_t *x, size_t n) {
    cuda();
    int32_t *d = nn_alloc_i32(n);
    nn_upload_i32(d, x, n);
    return d;
}

static float *host(const float *d, size_t n) {
    cuda();
    float *h = xmalloc(sizeof(float) * (n ? n : 1));
    nn_download(h, d, n);
    return h;
}

/* Largest |got - ref| over the largest |ref|; a NaN in got makes it NaN,
 * which every `e <= tol` check fails. */
static double rel_err(const float *got, const float *ref, size_t n) {
    double e = 0, m = 1e-30;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (isnan(d) || d > e) e = d; /* once NaN, e stays NaN */
        if (fabs(ref[i]) > m) m = fabs(ref[i]);
    }
    return e / m;
}

/* Compares CUDA buffer d with the host reference ref. */
static inline void close_to(const char *what, const float *d, const float *ref, size_t n) {
    float *h = host(d, n);
    double e = rel_err(h, ref, n);
    CHECK(e <= TOL, "%s: error %.2e of the largest value (n %zu)", what, e, n);
    free(h);
}

#endif
