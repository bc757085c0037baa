/* image_write.h - images out: [3, H, W] floats in [-1, 1] to 8-bit RGB,
 * lossless WebP files and PNG grids, each written atomically (temp name,
 * fsync, rename). */
#ifndef VAE_IMAGE_WRITE_H
#define VAE_IMAGE_WRITE_H

#include <stdint.h>

/* [-1, 1] to 0..255, rounded and clamped. */
static inline uint8_t image_u8(float x) {
    float v = (x + 1.0f) * 127.5f + 0.5f;
    return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

/* rgb[H, W, 3] (interleaved) from img[3, H, W]. */
void image_to_rgb8(uint8_t *rgb, const float *img, int H, int W);

int image_write_webp(const char *path, const uint8_t *rgb, int H, int W, char *err);

/* n images rgb[n, H, W, 3] in rows of `cols`, as one PNG. */
int image_write_grid_png(const char *path, const uint8_t *rgb, int n, int cols, int H, int W, char *err);

#endif
