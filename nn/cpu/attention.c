/* attention.c - CPU attention where each query i sees the contiguous key
 * range [lo[i], hi[i]] of its own row (docs/model.md section 2: causal
 * text, bidirectional inside an image, nothing across documents).
 *
 * Work is split by (row, head); each task walks its queries in blocks of
 * QBLOCK and computes only the key span the block needs, [min lo, max hi],
 * with single-threaded GEMMs. Scores live in a per-thread QBLOCK x L scratch
 * buffer; between forward and backward only the log-sum-exp of each query is
 * kept (O(L) per head), and backward recomputes the probabilities from it.
 * One task owns all of its row-head's outputs, so no two threads write the
 * same element and the result does not depend on scheduling. */
#include "cpu.h"
#include "matmul_bf16.h"
#include "vexp.h"
#include "../../common/error.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#define QBLOCK 64

typedef struct {
    int k0, nk;
} key_span;

static key_span block_span(const int32_t *lo, const int32_t *hi, int q0, int nq) {
    int k0 = lo[q0], k1 = hi[q0];
    for (int r = 1; r < nq; r++) {
        if (lo[q0 + r] < k0) k0 = lo[q0 + r];
        if (hi[q0 + r] > k1) k1 = hi[q0 + r];
    }
    return (key_span){k0, k1 - k0 + 1};
}

/* A matrix operand of the products below: float32, or (bf16 precision)
 * the same matrix rounded to bf16. */
typedef struct {
    const float *f;
    const bf16 *h;
} operand;

static operand at(operand m, size_t offset) {
    return m.h ? (operand){NULL, m.h + offset} : (operand){m.f + offset, NULL};
}

static void product(int ta, int tb, int M, int N, int K, float alpha, operand A, int lda, operand B, int ldb, float beta,
                    float *C, int ldc) {
    if (A.h)
        cpu_matmul_bf16(ta, tb, M, N, K, alpha, A.h, lda, B.h, ldb, beta, C, ldc);
    else
        cpu_gemm(ta, tb, M, N, K, alpha, A.f, lda, B.f, ldb, beta, C, ldc);
}

/* A block of probabilities or score gradients [nq, nk] as a product's
 * operand: itself, or rounded into h. */
static operand block_operand(const float *x, bf16 *h, int nq, int nk) {
    if (!h) return (operand){x, NULL};
    cpu_round_bf16(h, nk, x, nk, nq, nk);
    return (operand){NULL, h};
}

/* x[rows, cols] in the given precision: itself, or a rounded copy that the
 * caller frees. */
static operand whole(const float *x, size_t rows, int cols, int bf16_ops, bf16 **copy) {
    *copy = NULL;
    if (!bf16_ops) return (operand){x, NULL};
    *copy = xmalloc(rows * cols * sizeof(bf16));
    cpu_round_bf16(*copy, cols, x, cols, (int)rows, cols);
    return (operand){NULL, *copy};
}

/* Scores of a query block: S[r, j] = scale * q_{q0+r} . k_{k0+j}. */
static void block_scores(float *S, operand Q, operand K, int ld, int q0, int nq, key_span ks, int head_dim,
                         float scale) {
    product(0, 1, nq, ks.nk, head_dim, scale, at(Q, (size_t)q0 * ld), ld, at(K, (size_t)ks.k0 * ld), ld, 0.0f, S,
            ks.nk);
}

/* Softmax of s[a..e] in place, zero elsewhere in s[0..nk); returns the
 * log-sum-exp of the scores. */
static inline float softmax_range(float *s, int a, int e, int nk) {
    float mx = -FLT_MAX, sum = 0.0f;
#pragma omp simd reduction(max : mx)
    for (int j = a; j <= e; j++) mx = s[j] > mx ? s[j] : mx;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < nk; j++) {
        s[j] = (j >= a && j <= e) ? vexpf(s[j] - mx) : 0.0f;
        sum += s[j];
    }
    float inv = 1.0f / sum;
#pragma omp simd
    for (int j = a; j <= e; j++) s[j] *= inv;
    return mx + logf(sum);
}

/* bf16_ops: the products read bf16 operands (float32 scores, softmax and
 * accumulation). */
static void forward(float *out, float *lse, const float *qkv_f, const int32_t *lo, const int32_t *hi, int B, int L,
                    int H, int head_dim, int bf16_ops) {
    int d = H * head_dim, ld = 3 * d;
    float scale = 1.0f / sqrtf((float)head_dim);
    bf16 *qkv_h;
    operand qkv = whole(qkv_f, (size_t)B * L, ld, bf16_ops, &qkv_h);
#pragma omp parallel
    {
        float *S = cpu_alloc((size_t)QBLOCK * L);
        bf16 *Sh = bf16_ops ? xmalloc((size_t)QBLOCK * L * sizeof(bf16)) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            operand Q = at(qkv, (size_t)b * L * ld + h * head_dim), K = at(Q, d), V = at(Q, 2 * d);
            const int32_t *lo_b = lo + (size_t)b * L, *hi_b = hi + (size_t)b * L;
            for (int q0 = 0; q0 < L; q0 += QBLOCK) {
                int nq = L - q0 < QBLOCK ? L - q0 : QBLOCK;
                key_span ks = block_span(lo_b, hi_b, q0, nq);
                block_scores(S, Q, K, ld, q0, nq, ks, head_dim, scale);
                for (int r = 0; r < nq; r++)
                    lse[((size_t)b * L + q0 + r) * H + h] =
                        softmax_range(S + (size_t)r * ks.nk, lo_b[q0 + r] - ks.k0, hi_b[q0 + r] - ks.k0, ks.nk);
                product(0, 0, nq, head_dim, ks.nk, 1.0f, block_operand(S, Sh, nq, ks.nk), ks.nk,
                        at(V, (size_t)ks.k0 * ld), ld, 0.0f, out + ((size_t)b * L + q0) * d + h * head_dim, d);
            }
        }
        cpu_free(S);
        free(Sh);
    }
    free(qkv_h);
}

/* With P the probabilities and D_i = dout_i . out_i:
 *   dV += P^T dO,  dS = P * (dO V^T - D),  dQ = scale dS K,  dK += scale dS^T Q */
static void backward(float *dqkv, const float *dout_f, const float *out, const float *lse, const float *qkv_f,
                     const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim, int bf16_ops) {
    int d = H * head_dim, ld = 3 * d;
    float scale = 1.0f / sqrtf((float)head_dim);
    cpu_zero(dqkv, (size_t)B * L * ld);
    bf16 *qkv_h, *dout_h;
    operand qkv = whole(qkv_f, (size_t)B * L, ld, bf16_ops, &qkv_h);
    operand dout = whole(dout_f, (size_t)B * L, d, bf16_ops, &dout_h);
#pragma omp parallel
    {
        float *P = cpu_alloc((size_t)QBLOCK * L), *dS = cpu_alloc((size_t)QBLOCK * L);
        bf16 *Ph = bf16_ops ? xmalloc((size_t)QBLOCK * L * sizeof(bf16)) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            size_t row0 = (size_t)b * L;
            operand Q = at(qkv, row0 * ld + h * head_dim), K = at(Q, d), V = at(Q, 2 * d);
            operand dO = at(dout, row0 * d + h * head_dim);
            float *dQ = dqkv + row0 * ld + h * head_dim, *dK = dQ + d, *dV = dQ + 2 * d;
            const float *dO_f = dout_f + row0 * d + h * head_dim, *O = out + row0 * d + h * head_dim;
            const int32_t *lo_b = lo + row0, *hi_b = hi + row0;
            for (int q0 = 0; q0 < L; q0 += QBLOCK) {
                int nq = L - q0 < QBLOCK ? L - q0 : QBLOCK;
                key_span ks = block_span(lo_b, hi_b, q0, nq);
                block_scores(P, Q, K, ld, q0, nq, ks, head_dim, scale);
                for (int r = 0; r < nq; r++) {
                    float *p = P + (size_t)r * ks.nk;
                    int a = lo_b[q0 + r] - ks.k0, e = hi_b[q0 + r] - ks.k0;
                    float l = lse[(row0 + q0 + r) * H + h];
#pragma omp simd
                    for (int j = 0; j < ks.nk; j++) p[j] = (j >= a && j <= e) ? vexpf(p[j] - l) : 0.0f;
                }
                operand dOb = at(dO, (size_t)q0 * d);
                product(0, 1, nq, ks.nk, head_dim, 1.0f, dOb, d, at(V, (size_t)ks.k0 * ld), ld, 0.0f, dS, ks.nk);
                product(1, 0, ks.nk, head_dim, nq, 1.0f, block_operand(P, Ph, nq, ks.nk), ks.nk, dOb, d, 1.0f,
                        dV + (size_t)ks.k0 * ld, ld);
                for (int r = 0; r < nq; r++) {
                    const float *o = O + (size_t)(q0 + r) * d, *g = dO_f + (size_t)(q0 + r) * d;
                    float Di = 0.0f;
#pragma omp simd reduction(+ : Di)
                    for (int c = 0; c < head_dim; c++) Di += g[c] * o[c];
                    float *ds = dS + (size_t)r * ks.nk;
                    const float *p = P + (size_t)r * ks.nk;
#pragma omp simd
                    for (int j = 0; j < ks.nk; j++) ds[j] = p[j] * (ds[j] - Di);
                }
                operand dSb = block_operand(dS, Ph, nq, ks.nk); /* P's bf16 copy is done with */
                product(0, 0, nq, head_dim, ks.nk, scale, dSb, ks.nk, at(K, (size_t)ks.k0 * ld), ld, 0.0f,
                        dQ + (size_t)q0 * ld, ld);
                product(1, 0, ks.nk, head_dim, nq, scale, dSb, ks.nk, at(Q, (size_t)q0 * ld), ld, 1.0f,
                        dK + (size_t)ks.k0 * ld, ld);
            }
        }
        cpu_free(P);
        cpu_free(dS);
        free(Ph);
    }
    free(qkv_h);
    free(dout_h);
}

void cpu_attention_forward(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B, int L,
                           int H, int head_dim) {
    forward(out, lse, qkv, lo, hi, B, L, H, head_dim, 0);
}

void cpu_attention_forward_bf16(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B,
                                int L, int H, int head_dim) {
    forward(out, lse, qkv, lo, hi, B, L, H, head_dim, 1);
}

void cpu_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                            const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim) {
    backward(dqkv, dout, out, lse, qkv, lo, hi, B, L, H, head_dim, 0);
}

void cpu_attention_backward_bf16(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                                 const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim) {
    backward(dqkv, dout, out, lse, qkv, lo, hi, B, L, H, head_dim, 1);
}

/* Queries are grouped into blocks of up to QBLOCK consecutive rows with the
 * same lo (one sequence's new rows): a block's keys are one span, so its
 * scores are one GEMM, while queries of different sequences never pay for
 * each other's keys. q and kv rows are qkv rows: k at column d, v at 2d. */
void cpu_attention_rows(float *out, const float *q, const float *kv, const int32_t *lo, const int32_t *hi, int n, int H,
                        int head_dim) {
    int d = H * head_dim, ld = 3 * d, nb = 0, max_span = 1;
    float scale = 1.0f / sqrtf((float)head_dim);
    const float *k = kv + d, *v = kv + 2 * d;
    int *start = xmalloc(sizeof(int) * (n + 1));
    for (int r = 0; r < n; r++)
        if (r == 0 || lo[r] != lo[r - 1] || r - start[nb - 1] == QBLOCK) start[nb++] = r;
    start[nb] = n;
    for (int b = 0; b < nb; b++) {
        key_span ks = block_span(lo, hi, start[b], start[b + 1] - start[b]);
        if (ks.nk > max_span) max_span = ks.nk;
    }
#pragma omp parallel
    {
        float *S = cpu_alloc((size_t)QBLOCK * max_span);
#pragma omp for schedule(static)
        for (int task = 0; task < nb * H; task++) {
            int b = task / H, h = task % H, q0 = start[b], nq = start[b + 1] - q0;
            key_span ks = block_span(lo, hi, q0, nq);
            block_scores(S, (operand){q + h * head_dim, NULL}, (operand){k + h * head_dim, NULL}, ld, q0, nq, ks,
                         head_dim, scale);
            for (int r = 0; r < nq; r++)
                softmax_range(S + (size_t)r * ks.nk, lo[q0 + r] - ks.k0, hi[q0 + r] - ks.k0, ks.nk);
            cpu_gemm(0, 0, nq, head_dim, ks.nk, 1.0f, S, ks.nk, v + (size_t)ks.k0 * ld + h * head_dim, ld, 0.0f,
                     out + (size_t)q0 * d + h * head_dim, d);
        }
        cpu_free(S);
    }
    free(start);
}
