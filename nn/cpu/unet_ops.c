/* unet_ops.c - CPU kernels of the U-Net image path (kernels.def): moving
 * between a batch's patches and its NHWC latent maps, AdaGN's per-image
 * scale and shift, and channel slices of maps (skip concatenations).
 * Every sum runs in a fixed order per output, so no result depends on the
 * thread count. */
#include "cpu.h"

#include <string.h>

/* Patch (i, gy, gx) is row (i * g + gy) * g + gx; its element
 * (py * p + px) * C + c is map[i, gy * p + py, gx * p + px, c]: for a fixed
 * (i, gy, py), p * C floats of each patch in the row of cells are one run of
 * the map's row. */
static void move_patches(float *map, float *patches, int n, int g, int p, int C, int to_map) {
    size_t run = (size_t)p * C, P = run * p, side = (size_t)g * p;
#pragma omp parallel for schedule(static) collapse(2)
    for (int i = 0; i < n; i++)
        for (int y = 0; y < g * p; y++) {
            int gy = y / p, py = y % p;
            for (int gx = 0; gx < g; gx++) {
                float *cell = patches + (((size_t)i * g + gy) * g + gx) * P + py * run;
                float *pix = map + (((size_t)i * side + y) * side + (size_t)gx * p) * C;
                if (to_map)
                    memcpy(pix, cell, run * sizeof(float));
                else
                    memcpy(cell, pix, run * sizeof(float));
            }
        }
}

void cpu_patches_to_map(float *map, const float *patches, int n, int g, int p, int C) {
    move_patches(map, (float *)patches, n, g, p, C, 1);
}

void cpu_map_to_patches(float *patches, const float *map, int n, int g, int p, int C) {
    move_patches((float *)map, patches, n, g, p, C, 0);
}

void cpu_scale_shift_forward(float *y, const float *x, const float *ss, int n, int hw, int C) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < (size_t)n * hw; r++) {
        const float *scale = ss + (r / hw) * 2 * C, *shift = scale + C;
#pragma omp simd
        for (int c = 0; c < C; c++) y[r * C + c] = x[r * C + c] * (1.0f + scale[c]) + shift[c];
    }
}

void cpu_scale_shift_backward(float *dx, float *dss, const float *dy, const float *x, const float *ss, int n, int hw,
                              int C) {
    /* The sums first (dx may overwrite dy): per image and channel, over the
     * pixels in order. */
#pragma omp parallel for schedule(static) collapse(2)
    for (int i = 0; i < n; i++)
        for (int c = 0; c < C; c++) {
            float dscale = 0, dshift = 0;
            for (int q = 0; q < hw; q++) {
                size_t e = ((size_t)i * hw + q) * C + c;
                dscale += dy[e] * x[e];
                dshift += dy[e];
            }
            dss[(size_t)i * 2 * C + c] += dscale;
            dss[(size_t)i * 2 * C + C + c] += dshift;
        }
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < (size_t)n * hw; r++) {
        const float *scale = ss + (r / hw) * 2 * C;
#pragma omp simd
        for (int c = 0; c < C; c++) dx[r * C + c] = dy[r * C + c] * (1.0f + scale[c]);
    }
}

void cpu_copy_columns(float *dst, int ld_dst, int dst_col, const float *src, int ld_src, int src_col, size_t rows,
                      int cols) {
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++)
        memcpy(dst + r * ld_dst + dst_col, src + r * ld_src + src_col, (size_t)cols * sizeof(float));
}
