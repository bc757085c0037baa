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
 * same element and the result does not depend on scheduling.
 *
 * Two variants share that structure and the float32 softmax arithmetic:
 * float32 products (cpu_gemm), and bf16 products (--precision bf16) on
 * tile_bf16.c's kernel. The bf16 variant rounds each task's q, k, v (and
 * dout) once, into the pair layouts its six products read (tile_bf16.h):
 * positions as rows for the A operands, positions as columns or as pairs
 * of rows for the B operands. Pairs of positions start at position 0, so a
 * block's key span is widened to start at an even key; the extra key lies
 * outside every query's range and gets probability 0. Per block, the
 * probabilities and score gradients are rounded as rows (for P V and dS K)
 * or as pairs of rows, which read as their transposes (for P^T dO and
 * dS^T Q).
 *
 * The bf16 variant walks blocks of QBLOCK_BF16 = 16 queries. Its products
 * run at about 400 GFLOP/s on a core, so most of its time goes to the work
 * that grows with the span (exp, the dS arithmetic, rounding P and dS),
 * and a short block's span fits short documents more tightly: at the
 * reference configurations a query sees 17 keys on average while a block
 * of 64 spans 75, and 16-query blocks halved the bf16 attention's time
 * there (same time on one long causal document). The float32 variant
 * keeps blocks of 64 and with them its results. */
#include "cpu.h"
#include "matmul_bf16.h"
#include "tile_bf16.h"
#include "vexp.h"
#include "../../common/error.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

#define QBLOCK 64
#define QBLOCK_BF16 16
_Static_assert(QBLOCK_BF16 % 2 == 0, "bf16 query blocks start at even positions (pairs of positions)");

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

/* Scores of a query block: S[r, j] = scale * q_{q0+r} . k_{k0+j}. */
static void block_scores(float *S, const float *Q, const float *K, int ld, int q0, int nq, key_span ks, int head_dim,
                         float scale) {
    cpu_gemm(0, 1, nq, ks.nk, head_dim, scale, Q + (size_t)q0 * ld, ld, K + (size_t)ks.k0 * ld, ld, 0.0f, S, ks.nk);
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

/* Softmax of a block's scores S [nq, nk] (keys from k0), each query's
 * log-sum-exp into lse (at stride H). */
static void block_softmax(float *S, float *lse, int H, const int32_t *lo, const int32_t *hi, int q0, int nq, int k0,
                          int nk) {
    for (int r = 0; r < nq; r++)
        lse[(size_t)r * H] = softmax_range(S + (size_t)r * nk, lo[q0 + r] - k0, hi[q0 + r] - k0, nk);
}

/* Backward: the block's probabilities from its scores and the forward's
 * log-sum-exp, in place. */
static void block_probabilities(float *P, const float *lse, int H, const int32_t *lo, const int32_t *hi, int q0, int nq,
                                int k0, int nk) {
    for (int r = 0; r < nq; r++) {
        float *p = P + (size_t)r * nk;
        int a = lo[q0 + r] - k0, e = hi[q0 + r] - k0;
        float l = lse[(size_t)r * H];
#pragma omp simd
        for (int j = 0; j < nk; j++) p[j] = (j >= a && j <= e) ? vexpf(p[j] - l) : 0.0f;
    }
}

/* dS = P * (dP - D) in place of dP, with D_r = dout_r . out_r (rows of O
 * and dO at stride d). */
static void block_score_grads(float *dS, const float *P, const float *O, const float *dO, int d, int nq, int nk,
                              int head_dim) {
    for (int r = 0; r < nq; r++) {
        const float *o = O + (size_t)r * d, *g = dO + (size_t)r * d;
        float Di = 0.0f;
#pragma omp simd reduction(+ : Di)
        for (int c = 0; c < head_dim; c++) Di += g[c] * o[c];
        float *ds = dS + (size_t)r * nk;
        const float *p = P + (size_t)r * nk;
#pragma omp simd
        for (int j = 0; j < nk; j++) ds[j] = p[j] * (ds[j] - Di);
    }
}

void cpu_attention_forward(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B, int L,
                           int H, int head_dim) {
    int d = H * head_dim, ld = 3 * d;
    float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel
    {
        float *S = cpu_alloc((size_t)QBLOCK * L);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            const float *Q = qkv + (size_t)b * L * ld + h * head_dim, *K = Q + d, *V = Q + 2 * d;
            const int32_t *lo_b = lo + (size_t)b * L, *hi_b = hi + (size_t)b * L;
            for (int q0 = 0; q0 < L; q0 += QBLOCK) {
                int nq = L - q0 < QBLOCK ? L - q0 : QBLOCK;
                key_span ks = block_span(lo_b, hi_b, q0, nq);
                block_scores(S, Q, K, ld, q0, nq, ks, head_dim, scale);
                block_softmax(S, lse + ((size_t)b * L + q0) * H + h, H, lo_b, hi_b, q0, nq, ks.k0, ks.nk);
                cpu_gemm(0, 0, nq, head_dim, ks.nk, 1.0f, S, ks.nk, V + (size_t)ks.k0 * ld, ld, 0.0f,
                         out + ((size_t)b * L + q0) * d + h * head_dim, d);
            }
        }
        cpu_free(S);
    }
}

/* With P the probabilities and D_i = dout_i . out_i:
 *   dV += P^T dO,  dS = P * (dO V^T - D),  dQ = scale dS K,  dK += scale dS^T Q */
void cpu_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                            const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim) {
    int d = H * head_dim, ld = 3 * d;
    float scale = 1.0f / sqrtf((float)head_dim);
    cpu_zero(dqkv, (size_t)B * L * ld);
#pragma omp parallel
    {
        float *P = cpu_alloc((size_t)QBLOCK * L), *dS = cpu_alloc((size_t)QBLOCK * L);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            size_t row0 = (size_t)b * L;
            const float *Q = qkv + row0 * ld + h * head_dim, *K = Q + d, *V = Q + 2 * d;
            const float *dO = dout + row0 * d + h * head_dim, *O = out + row0 * d + h * head_dim;
            float *dQ = dqkv + row0 * ld + h * head_dim, *dK = dQ + d, *dV = dQ + 2 * d;
            const int32_t *lo_b = lo + row0, *hi_b = hi + row0;
            for (int q0 = 0; q0 < L; q0 += QBLOCK) {
                int nq = L - q0 < QBLOCK ? L - q0 : QBLOCK;
                key_span ks = block_span(lo_b, hi_b, q0, nq);
                block_scores(P, Q, K, ld, q0, nq, ks, head_dim, scale);
                block_probabilities(P, lse + (row0 + q0) * H + h, H, lo_b, hi_b, q0, nq, ks.k0, ks.nk);
                const float *dOb = dO + (size_t)q0 * d;
                cpu_gemm(0, 1, nq, ks.nk, head_dim, 1.0f, dOb, d, V + (size_t)ks.k0 * ld, ld, 0.0f, dS, ks.nk);
                cpu_gemm(1, 0, ks.nk, head_dim, nq, 1.0f, P, ks.nk, dOb, d, 1.0f, dV + (size_t)ks.k0 * ld, ld);
                block_score_grads(dS, P, O + (size_t)q0 * d, dOb, d, nq, ks.nk, head_dim);
                cpu_gemm(0, 0, nq, head_dim, ks.nk, scale, dS, ks.nk, K + (size_t)ks.k0 * ld, ld, 0.0f,
                         dQ + (size_t)q0 * ld, ld);
                cpu_gemm(1, 0, ks.nk, head_dim, nq, scale, dS, ks.nk, Q + (size_t)q0 * ld, ld, 1.0f,
                         dK + (size_t)ks.k0 * ld, ld);
            }
        }
        cpu_free(P);
        cpu_free(dS);
    }
}

/* A block's key span for the bf16 products: started at the even key at or
 * before the block's first (pairs of keys start at key 0); skip (0 or 1)
 * is the extra key in front. */
typedef struct {
    int k0, nk, skip;
} even_span;

static even_span block_even_span(const int32_t *lo, const int32_t *hi, int q0, int nq) {
    key_span ks = block_span(lo, hi, q0, nq);
    int skip = ks.k0 % 2;
    return (even_span){ks.k0 - skip, ks.nk + skip, skip};
}

/* One thread's buffers for the bf16 variant, for rows of L positions of
 * one head (hd columns, hp = (hd+1)/2 pairs of them):
 *   q, dout  [L, hp]        positions as rows: A of q k^T and dout v^T
 *   kt, vt   [hp, L]        positions as columns: B of q k^T and dout v^T
 *   v, k, qp, doutp [(L+1)/2, hd]  pairs of positions: B of P V, dS K,
 *                           dS^T Q and P^T dO
 *   rows     [QBLOCK_BF16, (L+2)/2]  a block's P or dS as rows of pairs
 *   cols     [QBLOCK_BF16/2, L+1]    a block's P or dS as pairs of rows
 * and float32 block scratch S, dS of QBLOCK_BF16 x (L+1) (a span can be
 * widened by one key). */
typedef struct {
    uint32_t *q, *dout, *kt, *vt, *v, *k, *qp, *doutp, *rows, *cols;
    float *S, *dS;
} bf16_buffers;

static bf16_buffers bf16_alloc(int L, int head_dim) {
    size_t by_rows = (size_t)L * ((head_dim + 1) / 2), by_pairs = (size_t)(L + 1) / 2 * head_dim;
    size_t task = by_rows > by_pairs ? by_rows : by_pairs, block = (size_t)QBLOCK_BF16 * (L + 1);
    bf16_buffers t;
    uint32_t **tasks[] = {&t.q, &t.dout, &t.kt, &t.vt, &t.v, &t.k, &t.qp, &t.doutp};
    for (int i = 0; i < 8; i++) *tasks[i] = xmalloc(task * sizeof(uint32_t));
    t.rows = xmalloc(block * sizeof(uint32_t)); /* block >= both sizes above */
    t.cols = xmalloc(block * sizeof(uint32_t));
    t.S = cpu_alloc(block);
    t.dS = cpu_alloc(block);
    return t;
}

static void bf16_free(bf16_buffers *t) {
    uint32_t *tasks[] = {t->q, t->dout, t->kt, t->vt, t->v, t->k, t->qp, t->doutp, t->rows, t->cols};
    for (int i = 0; i < 10; i++) free(tasks[i]);
    cpu_free(t->S);
    cpu_free(t->dS);
}

void cpu_attention_forward_bf16(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi, int B,
                                int L, int H, int head_dim) {
    int d = H * head_dim, ld = 3 * d, hp = (head_dim + 1) / 2;
    float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel
    {
        bf16_buffers t = bf16_alloc(L, head_dim);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            const float *Q = qkv + (size_t)b * L * ld + h * head_dim, *K = Q + d, *V = Q + 2 * d;
            const int32_t *lo_b = lo + (size_t)b * L, *hi_b = hi + (size_t)b * L;
            bf16_pairs_along_cols(t.q, hp, Q, ld, L, head_dim);
            bf16_pairs_transposed(t.kt, L, K, ld, L, head_dim);
            bf16_pairs_along_rows(t.v, head_dim, V, ld, L, head_dim);
            for (int q0 = 0; q0 < L; q0 += QBLOCK_BF16) {
                int nq = L - q0 < QBLOCK_BF16 ? L - q0 : QBLOCK_BF16;
                even_span ks = block_even_span(lo_b, hi_b, q0, nq);
                int kp = (ks.nk + 1) / 2;
                /* P = softmax(scale Q K^T), O = P V */
                bf16_gemm(nq, ks.nk, hp, scale, t.q + (size_t)q0 * hp, hp, 1, t.kt + ks.k0, L, 0.0f, t.S, ks.nk);
                block_softmax(t.S, lse + ((size_t)b * L + q0) * H + h, H, lo_b, hi_b, q0, nq, ks.k0, ks.nk);
                bf16_pairs_along_cols(t.rows, kp, t.S, ks.nk, nq, ks.nk);
                bf16_gemm(nq, head_dim, kp, 1.0f, t.rows, kp, 1, t.v + (size_t)ks.k0 / 2 * head_dim, head_dim, 0.0f,
                          out + ((size_t)b * L + q0) * d + h * head_dim, d);
            }
        }
        bf16_free(&t);
    }
}

/* cpu_attention_backward's products on bf16 operands. dV and dK are
 * updated on the block's own keys only: the extra key in front of a
 * widened span has probability 0 and nothing to add. */
void cpu_attention_backward_bf16(float *dqkv, const float *dout, const float *out, const float *lse, const float *qkv,
                                 const int32_t *lo, const int32_t *hi, int B, int L, int H, int head_dim) {
    int d = H * head_dim, ld = 3 * d, hp = (head_dim + 1) / 2;
    float scale = 1.0f / sqrtf((float)head_dim);
    cpu_zero(dqkv, (size_t)B * L * ld);
#pragma omp parallel
    {
        bf16_buffers t = bf16_alloc(L, head_dim);
#pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < B * H; task++) {
            int b = task / H, h = task % H;
            size_t row0 = (size_t)b * L;
            const float *Q = qkv + row0 * ld + h * head_dim, *K = Q + d, *V = Q + 2 * d;
            const float *dO = dout + row0 * d + h * head_dim, *O = out + row0 * d + h * head_dim;
            float *dQ = dqkv + row0 * ld + h * head_dim, *dK = dQ + d, *dV = dQ + 2 * d;
            const int32_t *lo_b = lo + row0, *hi_b = hi + row0;
            bf16_pairs_along_cols(t.q, hp, Q, ld, L, head_dim);
            bf16_pairs_along_cols(t.dout, hp, dO, d, L, head_dim);
            bf16_pairs_transposed(t.kt, L, K, ld, L, head_dim);
            bf16_pairs_transposed(t.vt, L, V, ld, L, head_dim);
            bf16_pairs_along_rows(t.k, head_dim, K, ld, L, head_dim);
            bf16_pairs_along_rows(t.qp, head_dim, Q, ld, L, head_dim);
            bf16_pairs_along_rows(t.doutp, head_dim, dO, d, L, head_dim);
            for (int q0 = 0; q0 < L; q0 += QBLOCK_BF16) {
                int nq = L - q0 < QBLOCK_BF16 ? L - q0 : QBLOCK_BF16, qp = (nq + 1) / 2;
                even_span ks = block_even_span(lo_b, hi_b, q0, nq);
                int kp = (ks.nk + 1) / 2, nk_own = ks.nk - ks.skip;
                float *P = t.S, *dS = t.dS;
                /* pairs of positions from the span's first key and the block's first query (both even) */
                const uint32_t *k_span = t.k + (size_t)ks.k0 / 2 * head_dim;
                const uint32_t *q_block = t.qp + (size_t)q0 / 2 * head_dim;
                const uint32_t *dout_block = t.doutp + (size_t)q0 / 2 * head_dim;
                /* P = softmax(scale Q K^T), dP = dO V^T (into dS) */
                bf16_gemm(nq, ks.nk, hp, scale, t.q + (size_t)q0 * hp, hp, 1, t.kt + ks.k0, L, 0.0f, P, ks.nk);
                block_probabilities(P, lse + (row0 + q0) * H + h, H, lo_b, hi_b, q0, nq, ks.k0, ks.nk);
                bf16_gemm(nq, ks.nk, hp, 1.0f, t.dout + (size_t)q0 * hp, hp, 1, t.vt + ks.k0, L, 0.0f, dS, ks.nk);
                /* dV += P^T dO */
                bf16_pairs_along_rows(t.cols, ks.nk, P, ks.nk, nq, ks.nk);
                bf16_gemm(nk_own, head_dim, qp, 1.0f, t.cols + ks.skip, 1, ks.nk, dout_block, head_dim, 1.0f,
                          dV + (size_t)(ks.k0 + ks.skip) * ld, ld);
                /* dS = P * (dP - D), dQ = scale dS K, dK += scale dS^T Q */
                block_score_grads(dS, P, O + (size_t)q0 * d, dO + (size_t)q0 * d, d, nq, ks.nk, head_dim);
                bf16_pairs_along_cols(t.rows, kp, dS, ks.nk, nq, ks.nk);
                bf16_gemm(nq, head_dim, kp, scale, t.rows, kp, 1, k_span, head_dim, 0.0f, dQ + (size_t)q0 * ld, ld);
                bf16_pairs_along_rows(t.cols, ks.nk, dS, ks.nk, nq, ks.nk);
                bf16_gemm(nk_own, head_dim, qp, scale, t.cols + ks.skip, 1, ks.nk, q_block, head_dim, 1.0f,
                          dK + (size_t)(ks.k0 + ks.skip) * ld, ld);
            }
        }
        bf16_free(&t);
    }
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
            block_scores(S, q + h * head_dim, k + h * head_dim, ld, q0, nq, ks, head_dim, scale);
            for (int r = 0; r < nq; r++)
                softmax_range(S + (size_t)r * ks.nk, lo[q0 + r] - ks.k0, hi[q0 + r] - ks.k0, ks.nk);
            cpu_gemm(0, 0, nq, head_dim, ks.nk, 1.0f, S, ks.nk, v + (size_t)ks.k0 * ld + h * head_dim, ld, 0.0f,
                     out + (size_t)q0 * d + h * head_dim, d);
        }
        cpu_free(S);
    }
    free(start);
}
