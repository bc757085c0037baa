/* tile_bf16.c - a small bf16 matrix product, C = alpha A B + beta C with
 * bf16 operands, float32 accumulation and a float32 C, for the bf16
 * attention's block products (16 x span x head_dim and the like, each on
 * one thread inside a parallel region), and the packing of its operands.
 * oneDNN's matmul primitive is made for large problems: on these it ran at
 * 45-56 GFLOP/s, slower than float32 sgemm; this kernel runs at about 400
 * (one Zen 5 core, 64 x 64 x 64, operands in cache).
 *
 * Layout. Both operands come as "pairs" (tile_bf16.h): a uint32 holding
 * two bf16 neighbours along the contraction dimension, which is what
 * VDPBF16PS multiplies and adds into one float32 lane. B is stored pair-row
 * by pair-row, B[p, n] = (B[2p, n], B[2p+1, n]), so 16 consecutive n are
 * one zmm. A's pair (i, p) is broadcast to all lanes; it is addressed with
 * two strides, so the same kernel reads A row-major (rows of pairs along
 * K) or transposed (pairs of rows interleaved), and the attention never
 * transposes a bf16 matrix. The packers turn float32 matrices into these
 * layouts, rounding to nearest even exactly like bf16.h's
 * round_bf16, so the attention multiplies the same bf16 values as the rest
 * of the bf16 path; a missing half (odd K) is zero.
 *
 * Kernel (AVX512-BF16). C is computed in tiles of MR = 4 rows x 64
 * columns: 16 zmm accumulators, enough independent VDPBF16PS chains to
 * cover their latency, fed per pair of K by 4 loads of B and 4 broadcasts
 * of A. Each tile runs over all of K, then is scaled and added to beta C
 * once. Column tails use masked loads and stores, row tails a tile with
 * fewer rows (the kernel is instantiated for every row and column-vector
 * count). Each C element is one fixed sequence of operations, so results
 * do not depend on the caller's threading. The packers round 16 floats at
 * a time with integer operations (VCVTNEPS2BF16 would flush denormals,
 * which round_bf16 keeps) and pair them with 16-bit permutes; the
 * transposing one goes through 16 x 16 transposes of pairs.
 *
 * Without AVX512-BF16 (a build for another target, e.g. x86-64-v3) plain C
 * loops pack and multiply on the same layouts: slower, but the attention
 * keeps one code path. */
#include "tile_bf16.h"
#include "bf16.h"

#include <string.h>

#ifdef __AVX512BF16__
#include <immintrin.h>

/* x rounded to bf16 (as round_bf16 in bf16.h: nearest even, a NaN
 * stays a quiet NaN), in the high half of each 32-bit lane. */
static inline __m512i round_high(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                                 _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
    __mmask16 nan =
        _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x00400000));
}

/* The first n of 16 lanes. */
static inline __mmask16 first(int n) { return n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* The first n of 16 floats, the other lanes zero. Whole vectors take a
 * plain load: masked loads ran 3 times slower on rows not in cache (a
 * task's q, k, v and dout rows, a page apart). */
static inline __m512 load_first(const float *s, int n) {
    return n >= 16 ? _mm512_loadu_ps(s) : _mm512_maskz_loadu_ps(first(n), s);
}

static inline void store_first(uint32_t *d, int n, __m512i x) {
    if (n >= 16)
        _mm512_storeu_si512(d, x);
    else
        _mm512_mask_storeu_epi32(d, first(n), x);
}

/* 16 pairs from the first n floats of s[0..32) (the rest read as zero). */
static inline __m512i pairs_of(const float *s, int n) {
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33, 31, 29, 27, 25,
                                         23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(round_high(load_first(s, n)), odd, round_high(load_first(s + 16, n - 16)));
}

void bf16_pairs_along_cols(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c += 32)
            store_first(dst + (size_t)r * ld_dst + c / 2, (cols - c + 1) / 2,
                        pairs_of(src + (size_t)r * ld_src + c, cols - c));
}

void bf16_pairs_along_rows(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    for (int p = 0; p < (rows + 1) / 2; p++) {
        const float *s0 = src + (size_t)2 * p * ld_src, *s1 = s0 + ld_src;
        int both = 2 * p + 1 < rows;
        for (int c = 0; c < cols; c += 16) {
            __m512i r0 = round_high(load_first(s0 + c, cols - c));
            __m512i r1 = both ? round_high(load_first(s1 + c, cols - c)) : _mm512_setzero_si512();
            /* low halves from row 2p, high halves from row 2p+1 */
            store_first(dst + (size_t)p * ld_dst + c, cols - c,
                        _mm512_mask_blend_epi16(0x55555555, r1, _mm512_srli_epi32(r0, 16)));
        }
    }
}

/* r[i] = column i of the 16 x 16 matrix whose rows were r[0..15]. */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + j], 128-bit lane k: rows i..i+3 of column 4k + j */
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int j = 0; j < 4; j++) { /* a 4 x 4 transpose of 128-bit lanes */
        __m512i ab_lo = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), ab_hi = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xee);
        __m512i cd_lo = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44);
        __m512i cd_hi = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xee);
        t[j] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xdd);
        t[8 + j] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

void bf16_pairs_transposed(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    /* 16 rows by up to 128 columns at a time: the rows' pairs into a tile,
     * row by row (whole rows of the source in order), then each 16 x 16
     * block of the tile transposed into 16 runs of 16 rows. */
    uint32_t tile[16][64];
    for (int r0 = 0; r0 < rows; r0 += 16) {
        int nr = rows - r0 < 16 ? rows - r0 : 16;
        for (int c0 = 0; c0 < cols; c0 += 128) {
            int nc = cols - c0 < 128 ? cols - c0 : 128;
            for (int i = 0; i < 16; i++)
                for (int c = 0; c < nc; c += 32)
                    _mm512_storeu_si512(&tile[i][c / 2],
                                        i < nr ? pairs_of(src + (size_t)(r0 + i) * ld_src + c0 + c, nc - c)
                                               : _mm512_setzero_si512());
            for (int p0 = 0; p0 < (nc + 1) / 2; p0 += 16) {
                __m512i v[16];
                for (int i = 0; i < 16; i++) v[i] = _mm512_loadu_si512(&tile[i][p0]);
                transpose16(v);
                int np = (nc + 1) / 2 - p0 < 16 ? (nc + 1) / 2 - p0 : 16;
                for (int p = 0; p < np; p++) store_first(dst + (size_t)(c0 / 2 + p0 + p) * ld_dst + r0, nr, v[p]);
            }
        }
    }
}

#define MR 4 /* rows of a tile; a tile's columns are NV = 4 vectors of 16 */

/* One tile: mr rows by nv vectors of C (the last with column mask `last`).
 * Inlined with constant mr and nv, the accumulators live in registers. */
static inline __attribute__((always_inline)) void tile(int mr, int nv, __mmask16 last, int K2, float alpha,
                                                       const uint32_t *A, int a_row, int a_pair, const uint32_t *B,
                                                       int ldb, float beta, float *C, int ldc) {
    __m512 acc[MR][4];
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[i][v] = _mm512_setzero_ps();
    for (int p = 0; p < K2; p++) {
        const uint32_t *b = B + (size_t)p * ldb;
        __m512bh bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++)
            bv[v] =
                (__m512bh)(v == nv - 1 ? _mm512_maskz_loadu_epi32(last, b + 16 * v) : _mm512_loadu_si512(b + 16 * v));
        const uint32_t *a = A + (size_t)p * a_pair;
#pragma GCC unroll 4
        for (int i = 0; i < mr; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[(size_t)i * a_row]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], ai, bv[v]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 4
    for (int i = 0; i < mr; i++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) {
            float *c = C + (size_t)i * ldc + 16 * v;
            __mmask16 m = v == nv - 1 ? last : 0xffff;
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) r = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m, c), r);
            _mm512_mask_storeu_ps(c, m, r);
        }
}

typedef void tile_fn(__mmask16 last, int K2, float alpha, const uint32_t *A, int a_row, int a_pair, const uint32_t *B,
                     int ldb, float beta, float *C, int ldc);

#define TILE(mr, nv)                                                                                                   \
    static void tile_##mr##x##nv(__mmask16 last, int K2, float alpha, const uint32_t *A, int a_row, int a_pair,        \
                                 const uint32_t *B, int ldb, float beta, float *C, int ldc) {                          \
        tile(mr, nv, last, K2, alpha, A, a_row, a_pair, B, ldb, beta, C, ldc);                                         \
    }
#define TILES(mr) TILE(mr, 1) TILE(mr, 2) TILE(mr, 3) TILE(mr, 4)
TILES(1)
TILES(2)
TILES(3)
TILES(4)
static tile_fn *const tiles[MR][4] = {{tile_1x1, tile_1x2, tile_1x3, tile_1x4},
                                      {tile_2x1, tile_2x2, tile_2x3, tile_2x4},
                                      {tile_3x1, tile_3x2, tile_3x3, tile_3x4},
                                      {tile_4x1, tile_4x2, tile_4x3, tile_4x4}};

void bf16_gemm(int M, int N, int K2, float alpha, const uint32_t *A, int a_row, int a_pair, const uint32_t *B, int ldb,
               float beta, float *C, int ldc) {
    /* Column panels outside, so a panel of B is reused (from L1 at the
     * attention's sizes) by every row tile. */
    for (int j0 = 0; j0 < N; j0 += 64) {
        int nj = N - j0 < 64 ? N - j0 : 64, nv = (nj + 15) / 16;
        __mmask16 last = (__mmask16)(0xffffu >> (16 * nv - nj));
        for (int i0 = 0; i0 < M; i0 += MR) {
            int mr = M - i0 < MR ? M - i0 : MR;
            tiles[mr - 1][nv - 1](last, K2, alpha, A + (size_t)i0 * a_row, a_row, a_pair, B + j0, ldb, beta,
                                  C + (size_t)i0 * ldc + j0, ldc);
        }
    }
}

#else

void bf16_pairs_along_cols(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * ld_src;
        uint32_t *d = dst + (size_t)r * ld_dst;
#pragma omp simd
        for (int p = 0; p < cols / 2; p++) d[p] = round_bf16(s[2 * p]) | (uint32_t)round_bf16(s[2 * p + 1]) << 16;
        if (cols % 2) d[cols / 2] = round_bf16(s[cols - 1]);
    }
}

void bf16_pairs_along_rows(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    for (int p = 0; p < (rows + 1) / 2; p++) {
        const float *s0 = src + (size_t)2 * p * ld_src, *s1 = s0 + ld_src;
        uint32_t *d = dst + (size_t)p * ld_dst;
        if (2 * p + 1 < rows) {
#pragma omp simd
            for (int c = 0; c < cols; c++) d[c] = round_bf16(s0[c]) | (uint32_t)round_bf16(s1[c]) << 16;
        } else {
#pragma omp simd
            for (int c = 0; c < cols; c++) d[c] = round_bf16(s0[c]);
        }
    }
}

void bf16_pairs_transposed(uint32_t *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    enum { RB = 16 }; /* rows at a time: row pieces in, runs of RB pairs out */
    uint32_t tile[RB][64];
    for (int r0 = 0; r0 < rows; r0 += RB) {
        int nr = rows - r0 < RB ? rows - r0 : RB;
        for (int c0 = 0; c0 < cols; c0 += 128) {
            int nc = cols - c0 < 128 ? cols - c0 : 128, np = (nc + 1) / 2;
            bf16_pairs_along_cols(&tile[0][0], 64, src + (size_t)r0 * ld_src + c0, ld_src, nr, nc);
            for (int p = 0; p < np; p++)
                for (int r = 0; r < nr; r++) dst[(size_t)(c0 / 2 + p) * ld_dst + r0 + r] = tile[r][p];
        }
    }
}

static inline float lo_half(uint32_t x) {
    uint32_t u = x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline float hi_half(uint32_t x) {
    uint32_t u = x & 0xffff0000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void bf16_gemm(int M, int N, int K2, float alpha, const uint32_t *A, int a_row, int a_pair, const uint32_t *B, int ldb,
               float beta, float *C, int ldc) {
    float acc[64];
    for (int i = 0; i < M; i++)
        for (int j0 = 0; j0 < N; j0 += 64) {
            int nj = N - j0 < 64 ? N - j0 : 64;
            for (int j = 0; j < nj; j++) acc[j] = 0.0f;
            for (int p = 0; p < K2; p++) {
                uint32_t a = A[(size_t)i * a_row + (size_t)p * a_pair];
                float a0 = lo_half(a), a1 = hi_half(a);
                const uint32_t *b = B + (size_t)p * ldb + j0;
#pragma omp simd
                for (int j = 0; j < nj; j++) acc[j] += a0 * lo_half(b[j]) + a1 * hi_half(b[j]);
            }
            float *c = C + (size_t)i * ldc + j0;
            for (int j = 0; j < nj; j++) c[j] = alpha * acc[j] + (beta != 0.0f ? beta * c[j] : 0.0f);
        }
}

#endif
