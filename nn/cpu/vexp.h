/* vexp.h - an expf that vectorizes. glibc's expf is scalar unless the whole
 * program is built with -ffast-math; this one is Cephes' expf (range
 * reduction by ln 2, degree-6 polynomial), within 2 ulp of expf over the
 * float range, written so that `#pragma omp simd` loops vectorize it. */
#ifndef NN_CPU_VEXP_H
#define NN_CPU_VEXP_H

#include <math.h>
#include <stdint.h>

#pragma omp declare simd
static inline float vexpf(float x) {
    x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x); /* stay in normal floats */
    float k = rintf(x * 1.44269504088896341f);
    float r = fmaf(k, -0.693359375f, x); /* ln 2 split in two parts */
    r = fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    union {
        int32_t i;
        float f;
    } scale = {.i = ((int32_t)k + 127) << 23};
    return p * scale.f;
}

#pragma omp declare simd
static inline float sigmoid(float x) { return 1.0f / (1.0f + vexpf(-x)); }

#endif
