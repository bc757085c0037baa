/* conv.c - CPU 2-D convolution on channel-major [C, n, H, W] maps (see
 * kernels.h) as im2col + GEMM, and nearest 2x upsampling.
 *
 * The output columns (image, row, column) are cut into tiles whose column
 * matrix fits in L2; threads take tiles, and each builds its tile's columns
 * and runs a single-threaded GEMM on them while they are in cache. A whole-
 * batch column matrix is 9x the input and made every GEMM wait on memory.
 * Each output element is computed by one GEMM call, so results do not depend
 * on the thread count; the weight gradient sums per-thread partials in thread
 * order (the same bits for the same thread count). */
#include "cpu.h"
#include "conv_onednn.h"
#include "../../common/error.h"

#include <omp.h>
#include <stdlib.h>

#include <string.h>


static int is_pointwise(const conv_shape *s) {
    return s->k == 1 && s->stride == 1 && !s->pad_t && !s->pad_l && !s->pad_b && !s->pad_r;
}

#define TILE_BYTES (512 << 10)   /* a tile's column matrix: half of a Zen core's L2 */

/* This thread's tile buffer, kept between calls: a fresh 512 KB allocation
 * per call is an mmap, and its page faults cost as much as the im2col. */
static float *tile_buffer(size_t floats) {
    static __thread float *buf;
    static __thread size_t cap;
    if (floats > cap) {
        free(buf);
        buf = xmalloc(sizeof(float) * floats);
        cap = floats;
    }
    return buf;
}

#define TILE_SEGMENTS 64          /* output-row pieces of one tile (im2col_tile) */

/* Output columns per tile for a column matrix of `rows` rows and output rows
 * of wo columns: fits TILE_BYTES and spans at most TILE_SEGMENTS - 2 rows. */
static int tile_cols(int rows, int wo) {
    int t = (int)(TILE_BYTES / sizeof(float) / (size_t)rows) & ~15;
    if (t > (TILE_SEGMENTS - 2) * wo) t = (TILE_SEGMENTS - 2) * wo;
    return t < 16 ? 16 : t;
}

/* Output columns [ox0, ox1) of a kernel tap read input columns ox*stride +
 * shift, shift = kx - pad_l; outside that range they read the zero padding. */
static void tap_range(const conv_shape *s, int kx, int wo, int *ox0, int *ox1) {
    int shift = kx - s->pad_l;
    *ox0 = shift >= 0 ? 0 : (-shift + s->stride - 1) / s->stride;
    int last = s->w - 1 - shift;                 /* largest ox*stride allowed */
    *ox1 = last < 0 ? 0 : last / s->stride + 1;
    if (*ox1 > wo) *ox1 = wo;
    if (*ox0 > *ox1) *ox0 = *ox1;
}

/* Columns [j0, j0 + cnt) of the column matrix, column j = (i*ho + oy)*wo + ox:
 * col[(c, ky, kx), j] = x[c, i, oy*stride - pad_t + ky, ox*stride - pad_l + kx] (0 outside).
 * The tile is first cut into output-row segments, which every kernel tap
 * then copies from. */
static void im2col_tile(float *col, const float *x, const conv_shape *s, size_t j0, int cnt) {
    int ho = conv_out_h(s), wo = conv_out_w(s), k = s->k, st = s->stride, rows = s->c_in * k * k;
    typedef struct { int i, oy, ox, len, at; } segment;
    segment seg[TILE_SEGMENTS];                 /* tile_cols keeps cnt / wo + 2 within this */
    int nseg = 0;
    for (int done = 0; done < cnt;) {
        size_t j = j0 + done, row = j / wo;
        int ox = (int)(j % wo), len = wo - ox < cnt - done ? wo - ox : cnt - done;
        seg[nseg++] = (segment){(int)(row / ho), (int)(row % ho), ox, len, done};
        done += len;
    }
    for (int r = 0; r < rows; r++) {
        int c = r / (k * k), ky = (r / k) % k, kx = r % k, ox0, ox1, shift = kx - s->pad_l;
        tap_range(s, kx, wo, &ox0, &ox1);
        const float *xc = x + (size_t)c * s->n * s->h * s->w;
        for (int g = 0; g < nseg; g++) {
            const segment *q = &seg[g];
            float *o = col + (size_t)r * cnt + q->at - q->ox;   /* o[ox'] for ox' in [ox, ox + len) */
            int y = q->oy * st - s->pad_t + ky, end = q->ox + q->len;
            int a = q->ox > ox0 ? q->ox : ox0, e = end < ox1 ? end : ox1;
            if (y < 0 || y >= s->h || a >= e) {
                for (int u = q->ox; u < end; u++) o[u] = 0.0f;
                continue;
            }
            const float *in = xc + ((size_t)q->i * s->h + y) * s->w + shift;
            for (int u = q->ox; u < a; u++) o[u] = 0.0f;
            if (st == 1) {
                #pragma omp simd
                for (int u = a; u < e; u++) o[u] = in[u];
            } else {
                for (int u = a; u < e; u++) o[u] = in[u * st];
            }
            for (int u = e; u < end; u++) o[u] = 0.0f;
        }
    }
}

/* The adjoint of im2col: dx[c, i0 + i, ...] += dcol[...]. One thread owns
 * all rows of a channel, so no two threads add into the same element. */
static void col2im(float *dx, const float *dcol, const conv_shape *s, int i0, int m) {
    int ho = conv_out_h(s), wo = conv_out_w(s), k = s->k, st = s->stride;
    size_t cols = (size_t)m * ho * wo;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_in; c++)
        for (int kk = 0; kk < k * k; kk++) {
            int ky = kk / k, kx = kk % k, ox0, ox1, shift = kx - s->pad_l;
            tap_range(s, kx, wo, &ox0, &ox1);
            const float *in = dcol + ((size_t)c * k * k + kk) * cols;
            for (int i = 0; i < m; i++) {
                float *plane = dx + ((size_t)c * s->n + i0 + i) * s->h * s->w;
                for (int oy = 0; oy < ho; oy++) {
                    int y = oy * st - s->pad_t + ky;
                    if (y < 0 || y >= s->h) continue;
                    const float *g = in + ((size_t)i * ho + oy) * wo;
                    float *row = plane + (size_t)y * s->w + shift;
                    if (st == 1) {
                        #pragma omp simd
                        for (int ox = ox0; ox < ox1; ox++) row[ox] += g[ox];
                    } else {
                        for (int ox = ox0; ox < ox1; ox++) row[ox * st] += g[ox];
                    }
                }
            }
        }
}

void cpu_conv2d_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    int K = s->c_in * s->k * s->k;
    size_t total = (size_t)s->n * conv_out_h(s) * conv_out_w(s);
    if (!is_pointwise(s) && conv_onednn_forward(y, x, w, b, s)) return;
    if (is_pointwise(s)) {                      /* x is its own column matrix */
        cpu_gemm(0, 0, s->c_out, (int)total, K, 1.0f, w, K, x, (int)total, 0.0f, y, (int)total);
    } else {
        int tc = tile_cols(K, conv_out_w(s));
        size_t tiles = (total + tc - 1) / tc;
        #pragma omp parallel
        {
            float *col = tile_buffer((size_t)K * tc);
            #pragma omp for schedule(static)
            for (size_t t = 0; t < tiles; t++) {
                size_t j0 = t * tc;
                int cnt = total - j0 < (size_t)tc ? (int)(total - j0) : tc;
                im2col_tile(col, x, s, j0, cnt);
                cpu_gemm(0, 0, s->c_out, cnt, K, 1.0f, w, K, col, cnt, 0.0f, y + j0, (int)total);
            }
        }
    }
    if (!b) return;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_out; c++) {
        float *row = y + (size_t)c * total;
        for (size_t j = 0; j < total; j++) row[j] += b[c];
    }
}

/* dx of a stride-1 convolution is itself a convolution of dy: with the
 * kernel flipped and its in/out channels swapped, and padding k-1-pad on each
 * side. That is one im2col + GEMM with inner dimension c_out*k*k, instead of
 * a GEMM with inner dimension c_out writing a k*k times larger column matrix
 * that col2im then scatters. */
static void conv_backward_data_stride1(float *dx, const float *dy, const float *w, const conv_shape *s) {
    int k = s->k, kk = k * k;
    float *flipped = cpu_alloc((size_t)s->c_in * s->c_out * kk);
    for (int co = 0; co < s->c_out; co++)
        for (int ci = 0; ci < s->c_in; ci++)
            for (int t = 0; t < kk; t++)
                flipped[((size_t)ci * s->c_out + co) * kk + (kk - 1 - t)] = w[((size_t)co * s->c_in + ci) * kk + t];
    conv_shape t = {s->c_out, s->c_in, s->n, conv_out_h(s), conv_out_w(s), k, 1,
                    k - 1 - s->pad_t, k - 1 - s->pad_l, k - 1 - s->pad_b, k - 1 - s->pad_r};
    cpu_conv2d_forward(dx, dy, flipped, NULL, &t);
    cpu_free(flipped);
}

/* dw += dy @ col^T over tiles; per-thread partial sums, added in thread order. */
static void conv_backward_weights(float *dw, const float *dy, const float *x, const conv_shape *s) {
    int K = s->c_in * s->k * s->k, tc = tile_cols(K, conv_out_w(s)), nt = omp_get_max_threads();
    size_t total = (size_t)s->n * conv_out_h(s) * conv_out_w(s), tiles = (total + tc - 1) / tc;
    size_t wsize = (size_t)s->c_out * K;
    float *partial = cpu_alloc(wsize * nt);
    #pragma omp parallel num_threads(nt)
    {
        float *col = tile_buffer((size_t)K * tc), *mine = partial + wsize * omp_get_thread_num();
        #pragma omp for schedule(static)
        for (size_t t = 0; t < tiles; t++) {
            size_t j0 = t * tc;
            int cnt = total - j0 < (size_t)tc ? (int)(total - j0) : tc;
            im2col_tile(col, x, s, j0, cnt);
            cpu_gemm(0, 1, s->c_out, K, cnt, 1.0f, dy + j0, (int)total, col, cnt, 1.0f, mine, K);
        }
    }
    for (int t = 0; t < nt; t++) cpu_add(dw, partial + wsize * t, wsize);
    cpu_free(partial);
}

/* dx of a strided convolution: dcol = w^T dy per image, scattered back by
 * col2im (images in order, so the sums are deterministic). */
static void conv_backward_data_strided(float *dx, const float *dy, const float *w, const conv_shape *s) {
    int K = s->c_in * s->k * s->k, hw_out = conv_out_h(s) * conv_out_w(s);
    size_t total = (size_t)s->n * hw_out;
    float *col = cpu_alloc((size_t)K * hw_out);
    cpu_zero(dx, (size_t)s->c_in * s->n * s->h * s->w);
    for (int i = 0; i < s->n; i++) {
        cpu_gemm(1, 0, K, hw_out, s->c_out, 1.0f, w, K, dy + (size_t)i * hw_out, (int)total, 0.0f, col, hw_out);
        col2im(dx, col, s, i, 1);
    }
    cpu_free(col);
}

void cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const conv_shape *s) {
    int K = s->c_in * s->k * s->k;
    size_t total = (size_t)s->n * conv_out_h(s) * conv_out_w(s);
    if (is_pointwise(s)) {
        cpu_gemm(0, 1, s->c_out, K, (int)total, 1.0f, dy, (int)total, x, (int)total, 1.0f, dw, K);
        if (dx) cpu_gemm(1, 0, K, (int)total, s->c_out, 1.0f, w, K, dy, (int)total, 0.0f, dx, (int)total);
    } else {
        if (!conv_onednn_backward_weights(dw, dy, x, s)) conv_backward_weights(dw, dy, x, s);
        if (dx && s->stride == 1) conv_backward_data_stride1(dx, dy, w, s);
        else if (dx) conv_backward_data_strided(dx, dy, w, s);
    }
    if (!db) return;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_out; c++) {
        const float *row = dy + (size_t)c * total;
        double sum = 0.0;
        for (size_t j = 0; j < total; j++) sum += row[j];
        db[c] += (float)sum;
    }
}

void cpu_upsample2x_forward(float *y, const float *x, int planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++)
        for (int r = 0; r < 2 * h; r++) {
            const float *src = x + ((size_t)p * h + r / 2) * w;
            float *dst = y + ((size_t)p * 2 * h + r) * 2 * w;
            for (int c = 0; c < 2 * w; c++) dst[c] = src[c / 2];
        }
}

void cpu_upsample2x_backward(float *dx, const float *dy, int planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++)
        for (int r = 0; r < h; r++) {
            const float *g0 = dy + ((size_t)p * 2 * h + 2 * r) * 2 * w, *g1 = g0 + 2 * w;
            float *dst = dx + ((size_t)p * h + r) * w;
            for (int c = 0; c < w; c++) dst[c] = g0[2 * c] + g0[2 * c + 1] + g1[2 * c] + g1[2 * c + 1];
        }
}
