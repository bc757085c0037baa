/* group_norm.c - CPU GroupNorm on NHWC maps [n, hw, C]: statistics per
 * image over each group of C/groups channels (diffusers' VAE uses it with
 * eps 1e-6 everywhere).
 *
 * Each pass over a map runs along pixels with the channels of a pixel as
 * the vector. Sums are taken per channel over fixed chunks of GN_CHUNK
 * pixels in float, then added up per group in float64 in chunk order, so
 * the result does not depend on the thread count. Then y = x * a + c with
 * per-image, per-channel a and c (forward), and likewise dx (backward). */
#include "cpu.h"
#include "vexp.h"

#include <math.h>

#define GN_CHUNK 256

typedef struct {
    int C, n, hw, groups, cpg;
    size_t chunks;
} gn_dims;

static gn_dims dims_of(int C, int n, int hw, int groups) {
    return (gn_dims){C, n, hw, groups, C / groups, ((size_t)hw + GN_CHUNK - 1) / GN_CHUNK};
}

/* Pixels [p0, p1) of image i for task t of the n * chunks tasks. */
static const float *chunk_of(const gn_dims *d, const float *map, size_t t, int *p0, int *p1, int *i) {
    *i = (int)(t / d->chunks);
    *p0 = (int)(t % d->chunks) * GN_CHUNK;
    *p1 = *p0 + GN_CHUNK < d->hw ? *p0 + GN_CHUNK : d->hw;
    return map + (size_t)*i * d->hw * d->C;
}

/* Sum over the chunks of image i and the channels of group g of part[i, chunk, c]. */
static double group_sum(const gn_dims *d, const float *part, int i, int g) {
    double s = 0.0;
    for (size_t ch = 0; ch < d->chunks; ch++) {
        const float *p = part + ((size_t)i * d->chunks + ch) * d->C + g * d->cpg;
        for (int c = 0; c < d->cpg; c++) s += p[c];
    }
    return s;
}

/* center[i, c] = mean[i, c / cpg]: the group statistic spread to channels. */
static void spread(const gn_dims *d, float *per_channel, const float *per_group) {
    for (int i = 0; i < d->n; i++)
        for (int c = 0; c < d->C; c++) per_channel[(size_t)i * d->C + c] = per_group[i * d->groups + c / d->cpg];
}

/* y = group_norm(x), or silu of it with `silu`. */
static void forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C, int n,
                    int hw, int groups, float eps, int silu) {
    gn_dims d = dims_of(C, n, hw, groups);
    size_t tasks = (size_t)n * d.chunks;
    float *part = cpu_alloc(tasks * C), *mu = cpu_alloc((size_t)n * C), *a = cpu_alloc((size_t)n * C);
    double count = (double)d.cpg * hw;
/* Two passes (mean, then squared deviations from it), as a one-pass
     * variance loses digits when the mean is large against the spread. */
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tasks; t++) {
        int p0, p1, i;
        const float *xi = chunk_of(&d, x, t, &p0, &p1, &i);
        float *s = part + t * C;
        for (int p = p0; p < p1; p++) {
#pragma omp simd
            for (int c = 0; c < C; c++) s[c] += xi[(size_t)p * C + c];
        }
    }
    for (int i = 0; i < n; i++)
        for (int g = 0; g < groups; g++) mean[i * groups + g] = (float)(group_sum(&d, part, i, g) / count);
    spread(&d, mu, mean);
    cpu_zero(part, tasks * C);
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tasks; t++) {
        int p0, p1, i;
        const float *xi = chunk_of(&d, x, t, &p0, &p1, &i), *m = mu + (size_t)i * C;
        float *s = part + t * C;
        for (int p = p0; p < p1; p++) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float e = xi[(size_t)p * C + c] - m[c];
                s[c] += e * e;
            }
        }
    }
    for (int i = 0; i < n; i++)
        for (int g = 0; g < groups; g++)
            rstd[i * groups + g] = (float)(1.0 / sqrt(group_sum(&d, part, i, g) / count + eps));
    spread(&d, a, rstd);
    for (int i = 0; i < n; i++) /* y = (x - mu) * rstd * w + b = x * a + (b - mu * a) */
        for (int c = 0; c < C; c++) {
            size_t k = (size_t)i * C + c;
            a[k] *= w[c];
            mu[k] = b[c] - mu[k] * a[k];
        }
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tasks; t++) {
        int p0, p1, i;
        const float *xi = chunk_of(&d, x, t, &p0, &p1, &i), *ai = a + (size_t)i * C, *ci = mu + (size_t)i * C;
        float *yi = y + (size_t)i * hw * C;
        for (int p = p0; p < p1; p++) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float v = xi[(size_t)p * C + c] * ai[c] + ci[c];
                yi[(size_t)p * C + c] = silu ? v * sigmoid(v) : v;
            }
        }
    }
    cpu_free(part);
    cpu_free(mu);
    cpu_free(a);
}

void cpu_group_norm_forward(float *y, float *mean, float *rstd, const float *x, const float *w, const float *b, int C,
                            int n, int hw, int groups, float eps) {
    forward(y, mean, rstd, x, w, b, C, n, hw, groups, eps, 0);
}

void cpu_group_norm_silu_forward(float *act, float *mean, float *rstd, const float *x, const float *w, const float *b,
                                 int C, int n, int hw, int groups, float eps) {
    forward(act, mean, rstd, x, w, b, C, n, hw, groups, eps, 1);
}

/* With xhat = (x - mean) * rstd and g = dy * w:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   over the group
 *   dw += sum(dy * xhat), db += sum(dy)                  per channel
 * from the per-channel sums S1 = sum(dy) and S2 = sum(dy * (x - mean)). */
void cpu_group_norm_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *mean,
                             const float *rstd, const float *w, int C, int n, int hw, int groups) {
    gn_dims d = dims_of(C, n, hw, groups);
    size_t tasks = (size_t)n * d.chunks, nc = (size_t)n * C;
    float *p1s = cpu_alloc(tasks * C), *p2s = cpu_alloc(tasks * C);
    float *mu = cpu_alloc(nc), *r = cpu_alloc(nc), *a = cpu_alloc(nc), *bcoef = cpu_alloc(nc), *ccoef = cpu_alloc(nc);
    double *s1 = (double *)cpu_alloc(2 * nc), *s2 = (double *)cpu_alloc(2 * nc);
    double count = (double)d.cpg * hw;
    spread(&d, mu, mean);
    spread(&d, r, rstd);
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tasks; t++) {
        int p0, p1, i;
        const float *xi = chunk_of(&d, x, t, &p0, &p1, &i), *gi = dy + (size_t)i * hw * C, *m = mu + (size_t)i * C;
        float *u = p1s + t * C, *v = p2s + t * C;
        for (int p = p0; p < p1; p++) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                float g = gi[(size_t)p * C + c];
                u[c] += g;
                v[c] += g * (xi[(size_t)p * C + c] - m[c]);
            }
        }
    }
    for (int i = 0; i < n; i++)
        for (size_t ch = 0; ch < d.chunks; ch++)
            for (int c = 0; c < C; c++) {
                size_t k = (size_t)i * C + c, q = ((size_t)i * d.chunks + ch) * C + c;
                s1[k] += p1s[q];
                s2[k] += p2s[q];
            }
    for (int c = 0; c < C; c++) { /* images in order: deterministic */
        double sw = 0.0, sb = 0.0;
        for (int i = 0; i < n; i++) {
            size_t k = (size_t)i * C + c;
            sw += s2[k] * r[k];
            sb += s1[k];
        }
        dw[c] += (float)sw;
        db[c] += (float)sb;
    }
    /* dx = dy * a - (x - mu) * b + c per image and channel */
    for (int i = 0; i < n; i++)
        for (int g = 0; g < groups; g++) {
            double mg = 0.0, mgx = 0.0;
            for (int c = g * d.cpg; c < (g + 1) * d.cpg; c++) {
                size_t k = (size_t)i * C + c;
                mg += w[c] * s1[k];
                mgx += w[c] * s2[k] * r[k];
            }
            mg /= count;
            mgx /= count;
            for (int c = g * d.cpg; c < (g + 1) * d.cpg; c++) {
                size_t k = (size_t)i * C + c;
                a[k] = r[k] * w[c];
                bcoef[k] = (float)(r[k] * r[k] * mgx);
                ccoef[k] = (float)(-r[k] * mg);
            }
        }
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < tasks; t++) {
        int p0, p1, i;
        const float *xi = chunk_of(&d, x, t, &p0, &p1, &i), *gi = dy + (size_t)i * hw * C;
        const float *m = mu + (size_t)i * C, *ai = a + (size_t)i * C, *bi = bcoef + (size_t)i * C,
                    *ci = ccoef + (size_t)i * C;
        float *o = dx + (size_t)i * hw * C;
        for (int p = p0; p < p1; p++) {
#pragma omp simd
            for (int c = 0; c < C; c++) {
                size_t k = (size_t)p * C + c;
                o[k] = gi[k] * ai[c] - (xi[k] - m[c]) * bi[c] + ci[c];
            }
        }
    }
    cpu_free(p1s);
    cpu_free(p2s);
    cpu_free(mu);
    cpu_free(r);
    cpu_free(a);
    cpu_free(bcoef);
    cpu_free(ccoef);
    cpu_free(s1);
    cpu_free(s2);
}
