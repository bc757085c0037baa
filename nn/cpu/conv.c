/* conv.c - CPU 2-D convolution and nearest 2x upsampling on NHWC maps (see
 * kernels.h).
 *
 * A 1x1 stride-1 convolution of an NHWC map is a linear layer over its
 * pixels (one GEMM); every other shape goes to oneDNN's direct kernels
 * (conv_onednn.c). The bias gradient is a column sum of dy. */
#include "cpu.h"
#include "conv_onednn.h"

static int is_pointwise(const conv_shape *s) {
    return s->k == 1 && s->stride == 1 && !s->pad_t && !s->pad_l && !s->pad_b && !s->pad_r;
}

void cpu_conv2d_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    if (is_pointwise(s))
        cpu_linear_forward(y, x, w, b, s->n * s->h * s->w, s->c_in, s->c_out);
    else
        conv_onednn_forward(y, x, w, b, s);
}

void cpu_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                         const conv_shape *s) {
    if (is_pointwise(s)) {
        cpu_linear_backward(dx, dw, db, dy, x, w, s->n * s->h * s->w, s->c_in, s->c_out, 0);
        return;
    }
    conv_onednn_backward(dx, dw, dy, x, w, s);
    if (db) cpu_add_column_sums(db, dy, (size_t)s->n * conv_out_h(s) * conv_out_w(s), s->c_out);
}

void cpu_upsample2x_forward(float *y, const float *x, int n, int h, int w, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n * 2 * h; r++) { /* output rows of every image */
        const float *src = x + (size_t)(r / 2) * w * C;
        float *dst = y + (size_t)r * 2 * w * C;
        for (int c = 0; c < w; c++)
            for (int half = 0; half < 2; half++) {
                float *o = dst + (size_t)(2 * c + half) * C;
#pragma omp simd
                for (int k = 0; k < C; k++) o[k] = src[(size_t)c * C + k];
            }
    }
}

void cpu_upsample2x_backward(float *dx, const float *dy, int n, int h, int w, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < n * h; r++) { /* input rows of every image */
        const float *g0 = dy + (size_t)2 * r * 2 * w * C, *g1 = g0 + (size_t)2 * w * C;
        float *dst = dx + (size_t)r * w * C;
        for (int c = 0; c < w; c++) {
            const float *a = g0 + (size_t)2 * c * C, *b = g1 + (size_t)2 * c * C;
            float *o = dst + (size_t)c * C;
#pragma omp simd
            for (int k = 0; k < C; k++) o[k] = a[k] + a[C + k] + b[k] + b[C + k];
        }
    }
}
