/* attention.cu - CUDA backend: flash attention over per-query key ranges
 * (kernels.def: query i sees keys [lo[i], hi[i]] of its row), forward and
 * backward, on tensor cores (WMMA, bfloat16 in, float32 accumulation).
 *
 * Forward: a block per (query tile of BQ, head, row) walks the key tiles of
 * [min lo, max hi] of its queries and skips those no query of it may see
 * (attn_tiles.h); an online softmax keeps each query's running max and sum,
 * so only out and the log-sum-exp are written (O(L) statistics, no L x L
 * scores or mask anywhere). Backward recomputes the probabilities from the
 * log-sum-exp: dK and dV by key tile over the queries that see it, dQ by
 * query tile over its key tiles; each block owns its outputs (no atomics, a
 * fixed order: deterministic). Each warp owns 16 query rows of a tile. */
#include "reduce.cuh"
#include "../attn_tiles.h"

#include <math.h>
#include <mma.h>

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

#define BQ 64 /* queries per tile */
#define BK 64 /* keys per tile */
#define WARPS 4
#define ATT_THREADS (32 * WARPS)

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc_frag;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a_row;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> a_col;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b_col;

/* Rows [0, n) of a [*, ld] bfloat16 matrix, columns [0, hd), into a BQ x HD
 * (or BK x HD) tile zero-padded to HD columns and 64 rows. */
template <int HD> __device__ void load_tile(bf16 *dst, const bf16 *src, size_t ld, int n, int hd) {
    if (hd == HD && (uintptr_t)src % 16 == 0 && ld % 8 == 0) { /* 8 values (16 bytes) per load */
        for (int e = threadIdx.x; e < 64 * HD / 8; e += blockDim.x) {
            int r = e / (HD / 8), c = e % (HD / 8) * 8;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (r < n) v = *(const uint4 *)(src + (size_t)r * ld + c);
            *(uint4 *)(dst + r * HD + c) = v;
        }
        return;
    }
    for (int e = threadIdx.x; e < 64 * HD; e += blockDim.x) {
        int r = e / HD, c = e % HD;
        dst[e] = (r < n && c < hd) ? src[(size_t)r * ld + c] : __float2bfloat16(0.0f);
    }
}

/* S[16 rows of warp w, 64] = A[16 rows, HD] @ B[64, HD]^T, A and B row-major
 * tiles in shared memory, S float32 with row stride 64. */
template <int HD> __device__ void warp_abt(float *S, const bf16 *A, const bf16 *B, int w) {
    acc_frag acc;
    for (int cb = 0; cb < 4; cb++) {
        wmma::fill_fragment(acc, 0.0f);
        for (int k = 0; k < HD / 16; k++) {
            a_row a;
            b_col b;
            wmma::load_matrix_sync(a, A + w * 16 * HD + k * 16, HD);
            wmma::load_matrix_sync(b, B + cb * 16 * HD + k * 16, HD);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(S + w * 16 * 64 + cb * 16, acc, 64, wmma::mem_row_major);
    }
}

/* C[16 rows of warp w, HD] += P[16 rows, 64] @ M[64, HD] (P row-major with
 * stride 64), or P^T when p_transposed (then P is [64, 64] and the warp's
 * rows are its columns). C float32 with row stride HD. */
template <int HD, bool p_transposed> __device__ void warp_pm(float *C, const bf16 *P, const bf16 *M, int w) {
    acc_frag acc;
    for (int cb = 0; cb < HD / 16; cb++) {
        wmma::load_matrix_sync(acc, C + w * 16 * HD + cb * 16, HD, wmma::mem_row_major);
        for (int k = 0; k < 4; k++) {
            b_row b;
            wmma::load_matrix_sync(b, M + k * 16 * HD + cb * 16, HD);
            if (p_transposed) {
                a_col a;
                wmma::load_matrix_sync(a, P + k * 16 * 64 + w * 16, 64);
                wmma::mma_sync(acc, a, b, acc);
            } else {
                a_row a;
                wmma::load_matrix_sync(a, P + w * 16 * 64 + k * 16, 64);
                wmma::mma_sync(acc, a, b, acc);
            }
        }
        wmma::store_matrix_sync(C + w * 16 * HD + cb * 16, acc, HD, wmma::mem_row_major);
    }
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Whether query tile row r (query range [lo_r, hi_r]) may see key j0 + c. */
__device__ __forceinline__ bool allowed(int lo_r, int hi_r, int j) { return j >= lo_r && j <= hi_r; }

/* ------------------------------------------------------------ forward */

template <int HD> struct fwd_layout {
    static const size_t q = 0, k = q + BQ * HD * 2, v = k + BK * HD * 2, p = v + BK * HD * 2, s = p + BQ * BK * 2,
                        o = s + BQ * BK * 4, rows = o + BQ * HD * 4, bytes = rows + BQ * 16;
};

template <int HD> __global__ void __launch_bounds__(ATT_THREADS)
    attn_fwd(bf16 *out, float *lse, const bf16 *qkv, const int32_t *lo, const int32_t *hi, int L, int H, int hd,
             float scale) {
    typedef fwd_layout<HD> lay;
    extern __shared__ __align__(128) unsigned char sm[];
    bf16 *Qs = (bf16 *)(sm + lay::q), *Ks = (bf16 *)(sm + lay::k), *Vs = (bf16 *)(sm + lay::v);
    bf16 *Ps = (bf16 *)(sm + lay::p);
    float *Ss = (float *)(sm + lay::s), *Os = (float *)(sm + lay::o);
    float *row_m = (float *)(sm + lay::rows), *row_l = row_m + BQ;
    int *row_lo = (int *)(row_l + BQ), *row_hi = row_lo + BQ;
    __shared__ int span[2];
    int q0 = blockIdx.x * BQ, h = blockIdx.y, w = threadIdx.x / 32, lane = threadIdx.x % 32;
    int d = H * hd, nq = min(BQ, L - q0);
    size_t row0 = (size_t)blockIdx.z * L, ld3 = 3 * (size_t)d;
    const bf16 *Q = qkv + row0 * ld3 + h * hd, *K = Q + d, *V = Q + 2 * d;
    const int32_t *lo_b = lo + row0, *hi_b = hi + row0;

    load_tile<HD>(Qs, Q + q0 * ld3, ld3, nq, hd);
    for (int e = threadIdx.x; e < BQ * HD; e += blockDim.x) Os[e] = 0.0f;
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
        row_lo[r] = r < nq ? lo_b[q0 + r] : 1; /* an empty range for rows past the end */
        row_hi[r] = r < nq ? hi_b[q0 + r] : 0;
        row_m[r] = -INFINITY;
        row_l[r] = 0.0f;
    }
    if (threadIdx.x == 0) attn_qtile_keys(lo_b, hi_b, q0, nq, &span[0], &span[1]);
    __syncthreads();
    for (int j0 = span[0]; j0 <= span[1]; j0 += BK) {
        int j1 = min(j0 + BK - 1, span[1]);
        int sees = threadIdx.x < BQ && attn_sees(row_lo[threadIdx.x], row_hi[threadIdx.x], j0, j1);
        if (!__syncthreads_or(sees)) continue; /* fully masked tile */
        load_tile<HD>(Ks, K + j0 * ld3, ld3, j1 - j0 + 1, hd);
        load_tile<HD>(Vs, V + j0 * ld3, ld3, j1 - j0 + 1, hd);
        __syncthreads();
        warp_abt<HD>(Ss, Qs, Ks, w);
        __syncwarp();
        for (int rr = 0; rr < 16; rr++) {
            int r = w * 16 + rr, ja = j0 + lane, jb = ja + 32;
            bool va = ja <= j1 && allowed(row_lo[r], row_hi[r], ja), vb = jb <= j1 && allowed(row_lo[r], row_hi[r], jb);
            float sa = va ? Ss[r * BK + lane] * scale : -INFINITY, sb = vb ? Ss[r * BK + lane + 32] * scale : -INFINITY;
            float m_old = row_m[r], m_new = fmaxf(m_old, warp_max(fmaxf(sa, sb)));
            float pa = va ? __expf(sa - m_new) : 0.0f, pb = vb ? __expf(sb - m_new) : 0.0f;
            float alpha = m_old == -INFINITY ? 0.0f : __expf(m_old - m_new), sum = warp_sum(pa + pb);
            Ps[r * BK + lane] = __float2bfloat16(pa);
            Ps[r * BK + lane + 32] = __float2bfloat16(pb);
            for (int c = lane; c < HD; c += 32) Os[r * HD + c] *= alpha;
            __syncwarp();
            if (lane == 0) {
                row_m[r] = m_new;
                row_l[r] = row_l[r] * alpha + sum;
            }
        }
        __syncwarp();
        warp_pm<HD, false>(Os, Ps, Vs, w);
        __syncthreads(); /* K and V are replaced next */
    }
    for (int e = threadIdx.x; e < nq * hd; e += blockDim.x) {
        int r = e / hd, c = e % hd;
        out[(row0 + q0 + r) * d + h * hd + c] = __float2bfloat16(Os[r * HD + c] / row_l[r]);
    }
    for (int r = threadIdx.x; r < nq; r += blockDim.x) lse[(row0 + q0 + r) * H + h] = row_m[r] + logf(row_l[r]);
}

/* ----------------------------------------------------------- backward */

/* D[i, h] = dout_i . out_i over the head: one warp per (position, head). */
__global__ void attn_dot(float *D, const bf16 *dout, const bf16 *out, size_t n, int H, int hd) {
    size_t t = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) / 32;
    if (t >= n * H) return;
    size_t i = t / H;
    int h = t % H, lane = threadIdx.x % 32;
    const bf16 *g = dout + i * H * hd + h * hd, *o = out + i * H * hd + h * hd;
    float s = 0.0f;
    for (int c = lane; c < hd; c += 32) s += __bfloat162float(g[c]) * __bfloat162float(o[c]);
    s = warp_sum(s);
    if (lane == 0) D[t] = s;
}

/* For the warp's 16 query rows of a tile: with S = Q K^T and dP = dO V^T
 * already in Ss and dPs, P = exp(scale S - lse) on the allowed keys and
 * dS = P (dP - D) (bfloat16 into Ps, dSs). */
__device__ void probs_and_dscores(bf16 *Ps, bf16 *dSs, const float *Ss, const float *dPs, const float *row_lse,
                                  const float *row_D, const int *row_lo, const int *row_hi, int j0, int j1, float scale,
                                  int w) {
    int lane = threadIdx.x % 32;
    for (int rr = 0; rr < 16; rr++) {
        int r = w * 16 + rr;
        for (int c = lane; c < BK; c += 32) {
            int j = j0 + c;
            float p = j <= j1 && allowed(row_lo[r], row_hi[r], j) ? __expf(Ss[r * BK + c] * scale - row_lse[r]) : 0.0f;
            Ps[r * BK + c] = __float2bfloat16(p);
            dSs[r * BK + c] = __float2bfloat16(p * (dPs[r * BK + c] - row_D[r]));
        }
    }
}

template <int HD> struct bwd_layout {
    /* q, dO, k, v tiles; S and dP; P and dS; two float32 accumulators. */
    static const size_t q = 0, dout = q + BQ * HD * 2, k = dout + BQ * HD * 2, v = k + BK * HD * 2, s = v + BK * HD * 2,
                        dp = s + BQ * BK * 4, p = dp + BQ * BK * 4, ds = p + BQ * BK * 2, acc = ds + BQ * BK * 2,
                        rows = acc + 2 * 64 * HD * 4, bytes = rows + BQ * 16;
};

/* Loads query rows [q0, q0 + nq): q and dO tiles and the per-row lse, D, range. */
template <int HD> __device__ void load_queries(bf16 *Qs, bf16 *dOs, float *row_lse, float *row_D, int *row_lo,
                                               int *row_hi, const bf16 *Q, const bf16 *dO, const float *lse,
                                               const float *D, const int32_t *lo_b, const int32_t *hi_b, size_t ld3,
                                               int d, int H, int h, int q0, int nq, int hd) {
    load_tile<HD>(Qs, Q + q0 * ld3, ld3, nq, hd);
    load_tile<HD>(dOs, dO + (size_t)q0 * d, d, nq, hd);
    for (int r = threadIdx.x; r < BQ; r += blockDim.x) {
        bool in = r < nq;
        row_lse[r] = in ? lse[(size_t)(q0 + r) * H + h] : 0.0f;
        row_D[r] = in ? D[(size_t)(q0 + r) * H + h] : 0.0f;
        row_lo[r] = in ? lo_b[q0 + r] : 1;
        row_hi[r] = in ? hi_b[q0 + r] : 0;
    }
}

#define BWD_POINTERS                                                                                                   \
    typedef bwd_layout<HD> lay;                                                                                        \
    extern __shared__ __align__(128) unsigned char sm[];                                                               \
    bf16 *Qs = (bf16 *)(sm + lay::q), *dOs = (bf16 *)(sm + lay::dout), *Ks = (bf16 *)(sm + lay::k);                    \
    bf16 *Vs = (bf16 *)(sm + lay::v), *Ps = (bf16 *)(sm + lay::p), *dSs = (bf16 *)(sm + lay::ds);                      \
    float *Ss = (float *)(sm + lay::s), *dPs = (float *)(sm + lay::dp), *acc = (float *)(sm + lay::acc);               \
    float *row_lse = (float *)(sm + lay::rows), *row_D = row_lse + BQ;                                                 \
    int *row_lo = (int *)(row_D + BQ), *row_hi = row_lo + BQ;                                                          \
    int h = blockIdx.y, w = threadIdx.x / 32, d = H * hd;                                                              \
    size_t row0 = (size_t)blockIdx.z * L, ld3 = 3 * (size_t)d;                                                         \
    const bf16 *Q = qkv + row0 * ld3 + h * hd, *K = Q + d, *V = Q + 2 * d, *dO = dout + row0 * d + h * hd;             \
    const float *lse_b = lse + row0 * H, *D_b = D + row0 * H;                                                          \
    const int32_t *lo_b = lo + row0, *hi_b = hi + row0;                                                                \
    bf16 *dQ = dqkv + row0 * ld3 + h * hd;

/* dK, dV of key tile blockIdx.x: over the query tiles that see it. */
template <int HD> __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_kv(bf16 *dqkv, const bf16 *dout, const float *lse, const float *D, const bf16 *qkv, const int32_t *lo,
                const int32_t *hi, int L, int H, int hd, float scale) {
    BWD_POINTERS
    float *dKs = acc, *dVs = acc + 64 * HD;
    bf16 *dK = dQ + d, *dV = dQ + 2 * d;
    __shared__ int span[2];
    int j0 = blockIdx.x * BK, nk = min(BK, L - j0), j1 = j0 + nk - 1;
    load_tile<HD>(Ks, K + j0 * ld3, ld3, nk, hd);
    load_tile<HD>(Vs, V + j0 * ld3, ld3, nk, hd);
    for (int e = threadIdx.x; e < 2 * 64 * HD; e += blockDim.x) acc[e] = 0.0f;
    if (threadIdx.x == 0) attn_ktile_queries(lo_b, hi_b, L, j0, j1, &span[0], &span[1]);
    __syncthreads();
    for (int q0 = span[0]; q0 <= span[1]; q0 += BQ) {
        int nq = min(BQ, span[1] - q0 + 1);
        load_queries<HD>(Qs, dOs, row_lse, row_D, row_lo, row_hi, Q, dO, lse_b, D_b, lo_b, hi_b, ld3, d, H, h, q0, nq,
                         hd);
        __syncthreads();
        warp_abt<HD>(Ss, Qs, Ks, w);
        warp_abt<HD>(dPs, dOs, Vs, w);
        __syncwarp();
        probs_and_dscores(Ps, dSs, Ss, dPs, row_lse, row_D, row_lo, row_hi, j0, j1, scale, w);
        __syncthreads(); /* the key rows' products need every query row */
        warp_pm<HD, true>(dVs, Ps, dOs, w);
        warp_pm<HD, true>(dKs, dSs, Qs, w);
        __syncthreads();
    }
    for (int e = threadIdx.x; e < nk * hd; e += blockDim.x) {
        int r = e / hd, c = e % hd;
        dK[(size_t)(j0 + r) * ld3 + c] = __float2bfloat16(dKs[r * HD + c] * scale);
        dV[(size_t)(j0 + r) * ld3 + c] = __float2bfloat16(dVs[r * HD + c]);
    }
}

/* dQ of query tile blockIdx.x: over the key tiles its queries see. */
template <int HD> __global__ void __launch_bounds__(ATT_THREADS)
    attn_bwd_q(bf16 *dqkv, const bf16 *dout, const float *lse, const float *D, const bf16 *qkv, const int32_t *lo,
               const int32_t *hi, int L, int H, int hd, float scale) {
    BWD_POINTERS
    float *dQs = acc;
    __shared__ int span[2];
    int q0 = blockIdx.x * BQ, nq = min(BQ, L - q0);
    load_queries<HD>(Qs, dOs, row_lse, row_D, row_lo, row_hi, Q, dO, lse_b, D_b, lo_b, hi_b, ld3, d, H, h, q0, nq, hd);
    for (int e = threadIdx.x; e < BQ * HD; e += blockDim.x) dQs[e] = 0.0f;
    if (threadIdx.x == 0) attn_qtile_keys(lo_b, hi_b, q0, nq, &span[0], &span[1]);
    __syncthreads();
    for (int j0 = span[0]; j0 <= span[1]; j0 += BK) {
        int j1 = min(j0 + BK - 1, span[1]);
        int sees = threadIdx.x < BQ && attn_sees(row_lo[threadIdx.x], row_hi[threadIdx.x], j0, j1);
        if (!__syncthreads_or(sees)) continue;
        load_tile<HD>(Ks, K + j0 * ld3, ld3, j1 - j0 + 1, hd);
        load_tile<HD>(Vs, V + j0 * ld3, ld3, j1 - j0 + 1, hd);
        __syncthreads();
        warp_abt<HD>(Ss, Qs, Ks, w);
        warp_abt<HD>(dPs, dOs, Vs, w);
        __syncwarp();
        probs_and_dscores(Ps, dSs, Ss, dPs, row_lse, row_D, row_lo, row_hi, j0, j1, scale, w);
        __syncwarp();
        warp_pm<HD, false>(dQs, dSs, Ks, w);
        __syncthreads();
    }
    for (int e = threadIdx.x; e < nq * hd; e += blockDim.x) {
        int r = e / hd, c = e % hd;
        dQ[(size_t)(q0 + r) * ld3 + c] = __float2bfloat16(dQs[r * HD + c] * scale);
    }
}

/* ---------------------------------------------------------- dispatch */

/* Runs kernel<HD> for the smallest HD of 16, 32, 64, 128 that holds head_dim
 * (padded with zeros), with its shared memory allowed. */
#define DISPATCH_HD(head_dim, LAYOUT, KERNEL, grid, ...)                                                               \
    do {                                                                                                               \
        if (head_dim > 128) die("cuda attention: head_dim %d (at most 128)", head_dim);                                \
        if (head_dim <= 16)                                                                                            \
            LAUNCH_HD(16, LAYOUT, KERNEL, grid, __VA_ARGS__);                                                          \
        else if (head_dim <= 32)                                                                                       \
            LAUNCH_HD(32, LAYOUT, KERNEL, grid, __VA_ARGS__);                                                          \
        else if (head_dim <= 64)                                                                                       \
            LAUNCH_HD(64, LAYOUT, KERNEL, grid, __VA_ARGS__);                                                          \
        else                                                                                                           \
            LAUNCH_HD(128, LAYOUT, KERNEL, grid, __VA_ARGS__);                                                         \
    } while (0)
#define LAUNCH_HD(HD, LAYOUT, KERNEL, grid, ...)                                                                       \
    do {                                                                                                               \
        size_t bytes_ = LAYOUT<HD>::bytes;                                                                             \
        CUDA_CHECK(cudaFuncSetAttribute(KERNEL<HD>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes_));        \
        CUDA_LAUNCH(KERNEL<HD>, grid, ATT_THREADS, bytes_, __VA_ARGS__);                                               \
    } while (0)

static void check_types(const float *qkv, const float *out, const float *lse) {
    if (cuda_is_f32(qkv, "attention qkv") || cuda_is_f32(out, "attention out") || !cuda_is_f32(lse, "attention lse"))
        die("cuda attention: qkv and out must be activation (bfloat16) buffers, lse float32");
}

extern "C" void cuda_attention_forward(float *out, float *lse, const float *qkv, const int32_t *lo, const int32_t *hi,
                                       int B, int L, int H, int head_dim) {
    if (B == 0 || L == 0) return;
    check_types(qkv, out, lse);
    dim3 grid((L + BQ - 1) / BQ, H, B);
    float scale = 1.0f / sqrtf((float)head_dim);
    DISPATCH_HD(head_dim, fwd_layout, attn_fwd, grid, (bf16 *)out, lse, (const bf16 *)qkv, lo, hi, L, H, head_dim,
                scale);
}

extern "C" void cuda_attention_backward(float *dqkv, const float *dout, const float *out, const float *lse,
                                        const float *qkv, const int32_t *lo, const int32_t *hi, int B, int L, int H,
                                        int head_dim) {
    if (B == 0 || L == 0) return;
    check_types(qkv, out, lse);
    check_types(dqkv, dout, lse);
    size_t n = (size_t)B * L;
    float *D = (float *)cuda_scratch(SCRATCH_ROWS, sizeof(float) * n * H);
    CUDA_LAUNCH(attn_dot, cuda_blocks(n * H * 32, 256), 256, 0, D, (const bf16 *)dout, (const bf16 *)out, n, H,
                head_dim);
    float scale = 1.0f / sqrtf((float)head_dim);
    dim3 kgrid((L + BK - 1) / BK, H, B), qgrid((L + BQ - 1) / BQ, H, B);
    DISPATCH_HD(head_dim, bwd_layout, attn_bwd_kv, kgrid, (bf16 *)dqkv, (const bf16 *)dout, lse, D, (const bf16 *)qkv,
                lo, hi, L, H, head_dim, scale);
    DISPATCH_HD(head_dim, bwd_layout, attn_bwd_q, qgrid, (bf16 *)dqkv, (const bf16 *)dout, lse, D, (const bf16 *)qkv,
                lo, hi, L, H, head_dim, scale);
}
