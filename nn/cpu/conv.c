/* conv.c - CPU 2-D convolution as im2col + one GEMM per chunk of images,
 * on channel-major [C, n, H, W] maps (see kernels.h), and nearest 2x
 * upsampling.
 *
 * The column matrix of a chunk is [c_in*k*k, m*ho*wo]; chunks are sized so
 * it stays under COL_FLOATS, which bounds memory at large image sizes.
 * Chunks run in order and accumulate dw with beta = 1, so results do not
 * depend on the thread count of the GEMM library beyond its own blocking. */
#include "../kernels.h"

#include <string.h>

#define COL_FLOATS (8u << 20)   /* 32 MB of columns at most */

/* Column matrices reuse one buffer per role: allocating (and zeroing) tens
 * of megabytes per call cost more page faults than the GEMM took. Convolution
 * is called from one thread at a time (it parallelizes inside). */
static float *scratch(int which, size_t n) {
    static float *buf[2];
    static size_t cap[2];
    if (n > cap[which]) {
        nn_free(buf[which]);
        buf[which] = nn_alloc(n);
        cap[which] = n;
    }
    return buf[which];
}

static int is_pointwise(const conv_shape *s) {
    return s->k == 1 && s->stride == 1 && !s->pad_t && !s->pad_l && !s->pad_b && !s->pad_r;
}

static int images_per_chunk(const conv_shape *s) {
    size_t per_image = (size_t)s->c_in * s->k * s->k * conv_out_h(s) * conv_out_w(s);
    size_t m = per_image ? COL_FLOATS / per_image : 1;
    if (m < 1) m = 1;
    return m > (size_t)s->n ? s->n : (int)m;
}

/* col[(c, ky, kx), (i, oy, ox)] = x[c, i0 + i, oy*stride - pad_t + ky, ox*stride - pad_l + kx] */
static void im2col(float *col, const float *x, const conv_shape *s, int i0, int m) {
    int ho = conv_out_h(s), wo = conv_out_w(s), k = s->k, rows = s->c_in * k * k;
    size_t cols = (size_t)m * ho * wo;
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        int c = r / (k * k), ky = (r / k) % k, kx = r % k;
        float *out = col + (size_t)r * cols;
        for (int i = 0; i < m; i++) {
            const float *plane = x + ((size_t)c * s->n + i0 + i) * s->h * s->w;
            for (int oy = 0; oy < ho; oy++) {
                int y = oy * s->stride - s->pad_t + ky;
                float *o = out + ((size_t)i * ho + oy) * wo;
                if (y < 0 || y >= s->h) { memset(o, 0, sizeof(float) * wo); continue; }
                for (int ox = 0; ox < wo; ox++) {
                    int xx = ox * s->stride - s->pad_l + kx;
                    o[ox] = (xx >= 0 && xx < s->w) ? plane[(size_t)y * s->w + xx] : 0.0f;
                }
            }
        }
    }
}

/* The adjoint of im2col: dx[c, i0 + i, ...] += dcol[...]. One thread owns
 * all rows of a channel, so no two threads add into the same element. */
static void col2im(float *dx, const float *dcol, const conv_shape *s, int i0, int m) {
    int ho = conv_out_h(s), wo = conv_out_w(s), k = s->k;
    size_t cols = (size_t)m * ho * wo;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_in; c++)
        for (int kk = 0; kk < k * k; kk++) {
            int ky = kk / k, kx = kk % k;
            const float *in = dcol + ((size_t)c * k * k + kk) * cols;
            for (int i = 0; i < m; i++) {
                float *plane = dx + ((size_t)c * s->n + i0 + i) * s->h * s->w;
                for (int oy = 0; oy < ho; oy++) {
                    int y = oy * s->stride - s->pad_t + ky;
                    if (y < 0 || y >= s->h) continue;
                    const float *g = in + ((size_t)i * ho + oy) * wo;
                    for (int ox = 0; ox < wo; ox++) {
                        int xx = ox * s->stride - s->pad_l + kx;
                        if (xx >= 0 && xx < s->w) plane[(size_t)y * s->w + xx] += g[ox];
                    }
                }
            }
        }
}

void nn_conv2d_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    int hw_out = conv_out_h(s) * conv_out_w(s), K = s->c_in * s->k * s->k;
    int ldy = s->n * hw_out, step = images_per_chunk(s);
    float *col = is_pointwise(s) ? NULL : scratch(0, (size_t)K * step * hw_out);
    for (int i0 = 0; i0 < s->n; i0 += step) {
        int m = s->n - i0 < step ? s->n - i0 : step;
        const float *B = x + (size_t)i0 * hw_out;   /* pointwise: x is its own column matrix */
        int ldb = ldy;
        if (col) { im2col(col, x, s, i0, m); B = col; ldb = m * hw_out; }
        nn_gemm(0, 0, s->c_out, m * hw_out, K, 1.0f, w, K, B, ldb, 0.0f, y + (size_t)i0 * hw_out, ldy);
    }
    if (!b) return;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_out; c++) {
        float *row = y + (size_t)c * ldy;
        for (int j = 0; j < ldy; j++) row[j] += b[c];
    }
}

void nn_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const conv_shape *s) {
    int hw_out = conv_out_h(s) * conv_out_w(s), K = s->c_in * s->k * s->k;
    int ldy = s->n * hw_out, step = images_per_chunk(s);
    int pointwise = is_pointwise(s);
    float *col = pointwise ? NULL : scratch(0, (size_t)K * step * hw_out);
    float *dcol = pointwise ? NULL : scratch(1, (size_t)K * step * hw_out);
    if (dx && !pointwise) nn_zero(dx, (size_t)s->c_in * s->n * s->h * s->w);
    for (int i0 = 0; i0 < s->n; i0 += step) {
        int m = s->n - i0 < step ? s->n - i0 : step;
        const float *dyc = dy + (size_t)i0 * hw_out;
        const float *B = x + (size_t)i0 * hw_out;
        int ldb = ldy;
        if (col) { im2col(col, x, s, i0, m); B = col; ldb = m * hw_out; }
        nn_gemm(0, 1, s->c_out, K, m * hw_out, 1.0f, dyc, ldy, B, ldb, 1.0f, dw, K);
        if (!dx) continue;
        if (pointwise) {
            nn_gemm(1, 0, K, m * hw_out, s->c_out, 1.0f, w, K, dyc, ldy, 0.0f, dx + (size_t)i0 * hw_out, ldy);
        } else {
            nn_gemm(1, 0, K, m * hw_out, s->c_out, 1.0f, w, K, dyc, ldy, 0.0f, dcol, m * hw_out);
            col2im(dx, dcol, s, i0, m);
        }
    }
    if (!db) return;
    #pragma omp parallel for schedule(static)
    for (int c = 0; c < s->c_out; c++) {
        const float *row = dy + (size_t)c * ldy;
        double sum = 0.0;
        for (int j = 0; j < ldy; j++) sum += row[j];
        db[c] += (float)sum;
    }
}

void nn_upsample2x_forward(float *y, const float *x, int planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++)
        for (int r = 0; r < 2 * h; r++) {
            const float *src = x + ((size_t)p * h + r / 2) * w;
            float *dst = y + ((size_t)p * 2 * h + r) * 2 * w;
            for (int c = 0; c < 2 * w; c++) dst[c] = src[c / 2];
        }
}

void nn_upsample2x_backward(float *dx, const float *dy, int planes, int h, int w) {
    #pragma omp parallel for schedule(static)
    for (int p = 0; p < planes; p++)
        for (int r = 0; r < h; r++) {
            const float *g0 = dy + ((size_t)p * 2 * h + 2 * r) * 2 * w, *g1 = g0 + 2 * w;
            float *dst = dx + ((size_t)p * h + r) * w;
            for (int c = 0; c < w; c++) dst[c] = g0[2 * c] + g0[2 * c + 1] + g1[2 * c] + g1[2 * c + 1];
        }
}
