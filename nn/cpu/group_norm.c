/* group_norm.c - CPU GroupNorm on channel-major [C, n, hw] maps: statistics
 * per image over each group of C/groups channels (diffusers' VAE uses it
 * with eps 1e-6 everywhere). */
#include "cpu.h"

#include <math.h>

void cpu_group_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int C, int n, int hw, int groups, float eps) {
    int cpg = C / groups;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n * groups; t++) {
        int i = t / groups, g = t % groups;
        /* Two passes (mean, then squared deviations): float sums per plane,
         * which vectorize, added up in float64 across planes. */
        double sum = 0.0, sq = 0.0;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            const float *p = x + ((size_t)c * n + i) * hw;
            float ps = 0.0f;
            #pragma omp simd reduction(+:ps)
            for (int j = 0; j < hw; j++) ps += p[j];
            sum += ps;
        }
        double mu = sum / ((double)cpg * hw);
        float muf = (float)mu;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            const float *p = x + ((size_t)c * n + i) * hw;
            float ps = 0.0f;
            #pragma omp simd reduction(+:ps)
            for (int j = 0; j < hw; j++) ps += (p[j] - muf) * (p[j] - muf);
            sq += ps;
        }
        float r = (float)(1.0 / sqrt(sq / ((double)cpg * hw) + eps));
        mean[t] = (float)mu;
        rstd[t] = r;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            const float *p = x + ((size_t)c * n + i) * hw;
            float *q = y + ((size_t)c * n + i) * hw;
            float scale = r * w[c], m = (float)mu;
            #pragma omp simd
            for (int j = 0; j < hw; j++) q[j] = (p[j] - m) * scale + b[c];
        }
    }
}

/* With xhat = (x - mean) * rstd and g = dy * w:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   over the group
 *   dw += sum(dy * xhat), db += sum(dy)                  per channel */
void cpu_group_norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                            const float *mean, const float *rstd, const float *w,
                            int C, int n, int hw, int groups) {
    int cpg = C / groups;
    double count = (double)cpg * hw;
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < n * groups; t++) {
        int i = t / groups, g = t % groups;
        float mu = mean[t], r = rstd[t];
        double sg = 0.0, sgx = 0.0;
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            const float *p = x + ((size_t)c * n + i) * hw, *d = dy + ((size_t)c * n + i) * hw;
            for (int j = 0; j < hw; j++) {
                double gj = (double)d[j] * w[c];
                sg += gj;
                sgx += gj * (p[j] - mu) * r;
            }
        }
        float mg = (float)(sg / count), mgx = (float)(sgx / count);
        for (int c = g * cpg; c < (g + 1) * cpg; c++) {
            const float *p = x + ((size_t)c * n + i) * hw, *d = dy + ((size_t)c * n + i) * hw;
            float *q = dx + ((size_t)c * n + i) * hw;
            #pragma omp simd
            for (int j = 0; j < hw; j++) q[j] = r * (d[j] * w[c] - mg - (p[j] - mu) * r * mgx);
        }
    }
    /* Channels in parallel, images and pixels in order: deterministic. */
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
        double sw = 0.0, sb = 0.0;
        for (int i = 0; i < n; i++) {
            int t = i * groups + c / cpg;
            const float *p = x + ((size_t)c * n + i) * hw, *d = dy + ((size_t)c * n + i) * hw;
            for (int j = 0; j < hw; j++) {
                sw += (double)d[j] * (p[j] - mean[t]) * rstd[t];
                sb += d[j];
            }
        }
        dw[c] += (float)sw;
        db[c] += (float)sb;
    }
}
