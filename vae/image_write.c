/* image_write.c - 8-bit conversion, lossless WebP and PNG grids (image_write.h). */
#include "image_write.h"
#include "../common/atomic_file.h"
#include "../common/error.h"

#include <stb/stb_image_write.h>
#include <stdlib.h>
#include <webp/encode.h>

void image_to_rgb8(uint8_t *rgb, const float *img, int H, int W) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int ch = 0; ch < 3; ch++)
                rgb[((size_t)y * W + x) * 3 + ch] = image_u8(img[((size_t)ch * H + y) * W + x]);
}

int image_write_webp(const char *path, const uint8_t *rgb, int H, int W, char *err) {
    uint8_t *webp = NULL;
    size_t bytes = WebPEncodeLosslessRGB(rgb, W, H, W * 3, &webp);
    int rc = bytes ? atomic_write(path, &(file_piece){webp, bytes}, 1, err)
                   : set_error(err, "%s: WebP encoding failed", path);
    WebPFree(webp);
    return rc;
}

/* stb writes PNG to memory through this callback; the bytes then go out
 * with atomic_write. */
typedef struct {
    uint8_t *p;
    size_t n;
    int failed;
} mem_buf;

static void to_mem(void *ctx, void *data, int size) {
    mem_buf *b = ctx;
    uint8_t *q = realloc(b->p, b->n + size);
    if (!q) {
        b->failed = 1;
        return;
    }
    for (int i = 0; i < size; i++) q[b->n + i] = ((const uint8_t *)data)[i];
    b->p = q;
    b->n += size;
}

int image_write_grid_png(const char *path, const uint8_t *rgb, int n, int cols, int H, int W, char *err) {
    if (cols > n) cols = n;
    int rows = (n + cols - 1) / cols, GW = cols * W, GH = rows * H;
    uint8_t *img = xcalloc((size_t)GW * GH * 3, 1);
    for (int i = 0; i < n; i++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W * 3; x++)
                img[((size_t)(i / cols) * H + y) * GW * 3 + (size_t)(i % cols) * W * 3 + x] =
                    rgb[((size_t)i * H + y) * W * 3 + x];
    mem_buf b = {0};
    int ok = stbi_write_png_to_func(to_mem, &b, GW, GH, 3, img, GW * 3) && !b.failed;
    int rc = ok ? atomic_write(path, &(file_piece){b.p, b.n}, 1, err) : set_error(err, "%s: PNG encoding failed", path);
    free(b.p);
    free(img);
    return rc;
}
