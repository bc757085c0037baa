/* rope.c - CPU rotary position embedding, Hugging Face rotate_half layout:
 * element j of a head pairs with element j + head_dim/2. */
#include "cpu.h"

void cpu_rope(float *x, int stride, const int32_t *pos, int N, int n_heads, int head_dim, const float *cos_tab,
              const float *sin_tab, int inverse) {
    int half = head_dim / 2;
    float sign = inverse ? -1.0f : 1.0f; /* R(-a) = R(a)^T */
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *c = cos_tab + (size_t)pos[i] * half;
        const float *s = sin_tab + (size_t)pos[i] * half;
        for (int h = 0; h < n_heads; h++) {
            float *a = x + (size_t)i * stride + h * head_dim, *b = a + half;
#pragma omp simd
            for (int j = 0; j < half; j++) {
                float a0 = a[j], b0 = b[j], sj = sign * s[j];
                a[j] = a0 * c[j] - b0 * sj;
                b[j] = b0 * c[j] + a0 * sj;
            }
        }
    }
}
