/* test_attention.c - the tiled attention kernel against a plain reference:
 * float64, one query at a time, scores over the allowed keys only. Random
 * q, k, v and random key ranges [lo, hi] per query (including single-key
 * pads and ranges reaching past the query, as images do); forward output,
 * log-sum-exp and the gradients of q, k, v must agree. Rows are longer than
 * one query block so block edges are crossed. */
#include "check.h"
#include "../common/rng.h"
#include "../nn/kernels.h"

#include <math.h>
#include <stdlib.h>

/* out and d(q,k,v) of loss = sum(out * dout) for one row and head. */
static void reference(double *out, double *lse, double *dqkv, const float *qkv, const float *dout, const int32_t *lo,
                      const int32_t *hi, int L, int H, int hd, int h) {
    int d = H * hd, ld = 3 * d;
    double scale = 1.0 / sqrt(hd);
    double *p = calloc(L, sizeof(double));
    for (int i = 0; i < L; i++) {
        const float *q = qkv + (size_t)i * ld + h * hd;
        double mx = -INFINITY, sum = 0;
        for (int j = lo[i]; j <= hi[i]; j++) {
            double s = 0;
            for (int c = 0; c < hd; c++) s += (double)q[c] * qkv[(size_t)j * ld + d + h * hd + c];
            p[j] = s * scale;
            if (p[j] > mx) mx = p[j];
        }
        for (int j = lo[i]; j <= hi[i]; j++) {
            p[j] = exp(p[j] - mx);
            sum += p[j];
        }
        lse[i] = mx + log(sum);
        for (int c = 0; c < hd; c++) out[(size_t)i * hd + c] = 0;
        for (int j = lo[i]; j <= hi[i]; j++) {
            p[j] /= sum;
            for (int c = 0; c < hd; c++) out[(size_t)i * hd + c] += p[j] * qkv[(size_t)j * ld + 2 * d + h * hd + c];
        }
        /* backward of this query */
        const float *g = dout + (size_t)i * d + h * hd;
        double D = 0;
        for (int c = 0; c < hd; c++) D += g[c] * out[(size_t)i * hd + c];
        for (int j = lo[i]; j <= hi[i]; j++) {
            const float *k = qkv + (size_t)j * ld + d + h * hd, *v = k + d;
            double dp = 0;
            for (int c = 0; c < hd; c++) dp += g[c] * v[c];
            double ds = p[j] * (dp - D) * scale;
            for (int c = 0; c < hd; c++) {
                dqkv[(size_t)i * ld + h * hd + c] += ds * k[c];
                dqkv[(size_t)j * ld + d + h * hd + c] += ds * q[c];
                dqkv[(size_t)j * ld + 2 * d + h * hd + c] += p[j] * g[c];
            }
        }
    }
    free(p);
}

int main(void) {
    const int B = 2, L = 150, H = 2, hd = 16, d = H * hd, ld = 3 * d;
    nn_init(2);
    rng r;
    rng_seed(&r, 3);
    size_t N = (size_t)B * L;
    float *qkv = nn_alloc(N * ld), *dout = nn_alloc(N * d), *out = nn_alloc(N * d);
    float *lse = nn_alloc(N * H), *dqkv = nn_alloc(N * ld);
    int32_t *lo = malloc(N * sizeof(int32_t)), *hi = malloc(N * sizeof(int32_t));
    for (size_t i = 0; i < N * ld; i++) qkv[i] = (float)rng_normal(&r);
    for (size_t i = 0; i < N * d; i++) dout[i] = (float)rng_normal(&r);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < L; i++) {
            int32_t *l = lo + b * L, *u = hi + b * L;
            int doc_start = i > 0 && rng_uniform(&r) > 0.05 ? l[i - 1] : i; /* new document */
            l[i] = doc_start;
            u[i] = rng_uniform(&r) < 0.2 ? i + rng_int(&r, 0, L - 1 - i < 9 ? L - 1 - i : 9) : i;
            if (rng_uniform(&r) < 0.03) l[i] = u[i] = i; /* a pad */
        }
    nn_attention_forward(out, lse, qkv, lo, hi, B, L, H, hd);
    nn_attention_backward(dqkv, dout, out, lse, qkv, lo, hi, B, L, H, hd);

    double *rout = calloc((size_t)L * hd, sizeof(double)), *rlse = calloc(L, sizeof(double));
    double *rd = calloc((size_t)L * ld, sizeof(double));
    double err_out = 0, err_lse = 0, err_grad = 0, max_grad = 0;
    for (int b = 0; b < B; b++) {
        for (size_t k = 0; k < (size_t)L * ld; k++) rd[k] = 0;
        for (int h = 0; h < H; h++) {
            reference(rout, rlse, rd, qkv + (size_t)b * L * ld, dout + (size_t)b * L * d, lo + b * L, hi + b * L, L, H,
                      hd, h);
            for (int i = 0; i < L; i++) {
                err_lse = fmax(err_lse, fabs(rlse[i] - lse[((size_t)b * L + i) * H + h]));
                for (int c = 0; c < hd; c++)
                    err_out = fmax(err_out, fabs(rout[(size_t)i * hd + c] - out[((size_t)b * L + i) * d + h * hd + c]));
            }
        }
        for (size_t k = 0; k < (size_t)L * ld; k++) {
            err_grad = fmax(err_grad, fabs(rd[k] - dqkv[(size_t)b * L * ld + k]));
            max_grad = fmax(max_grad, fabs(rd[k]));
        }
    }
    CHECK(err_out < 1e-5, "attention output matches the reference (max error %.2g)", err_out);
    CHECK(err_lse < 1e-5, "attention log-sum-exp matches the reference (max error %.2g)", err_lse);
    CHECK(err_grad < 1e-5 * max_grad, "attention q/k/v gradients match the reference (max error %.2g of %.2g)",
          err_grad, max_grad);
    free(rout);
    free(rlse);
    free(rd);
    free(lo);
    free(hi);
    nn_free(qkv);
    nn_free(dout);
    nn_free(out);
    nn_free(lse);
    nn_free(dqkv);
    return CHECK_DONE();
}
