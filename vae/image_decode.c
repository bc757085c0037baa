/* image_decode.c - image files in memory to a square [-1, 1] tensor
 * (image_decode.h): format detection, the header's dimensions checked before
 * any pixel buffer exists, decoding by libwebp or stb_image, alpha on white,
 * center crop and resize. */
#include "image_decode.h"
#include "../common/error.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb/stb_image.h>
#include <stb/stb_image_resize.h>
#include <webp/decode.h>

enum { FORMAT_UNKNOWN, FORMAT_WEBP, FORMAT_PNG, FORMAT_JPEG };

static int detect_format(const unsigned char *p, size_t n) {
    if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) return FORMAT_WEBP;
    if (n >= 8 && !memcmp(p, "\x89PNG\r\n\x1a\n", 8)) return FORMAT_PNG;
    if (n >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff) return FORMAT_JPEG;
    return FORMAT_UNKNOWN;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Dimensions as the file's header states them, read here rather than by
 * stb_image because stb_image refuses some large headers with the same
 * failure as a corrupt one. -1 when no header is found. */
static int png_dimensions(const unsigned char *p, size_t n, uint32_t *w, uint32_t *h) {
    if (n < 24 || memcmp(p + 12, "IHDR", 4)) return -1;
    *w = be32(p + 16);
    *h = be32(p + 20);
    return 0;
}

static int jpeg_dimensions(const unsigned char *p, size_t n, uint32_t *w, uint32_t *h) {
    size_t i = 2;
    while (i + 4 <= n) {
        if (p[i] != 0xff) return -1;
        unsigned m = p[i + 1];
        if (m == 0xff) { /* fill byte */
            i++;
            continue;
        }
        if (m == 0xd8 || m == 0x01 || (m >= 0xd0 && m <= 0xd7)) { /* no length */
            i += 2;
            continue;
        }
        if (m == 0xd9 || m == 0xda) /* end of image or scan data before any frame */
            return -1;
        size_t len = (size_t)p[i + 2] << 8 | p[i + 3];
        if (len < 2) return -1;
        if (m >= 0xc0 && m <= 0xcf && m != 0xc4 && m != 0xc8 && m != 0xcc) { /* SOFn */
            if (i + 9 > n || len < 7) return -1;
            *h = (uint32_t)p[i + 5] << 8 | p[i + 6];
            *w = (uint32_t)p[i + 7] << 8 | p[i + 8];
            return 0;
        }
        i += 2 + len;
    }
    return -1;
}

/* stb_image's short failure code, such as "outofdata". */
static const char *stbi_reason(void) {
    const char *r = stbi_failure_reason();
    return r ? r : "unknown";
}

/* Pixels come from the library that allocated them. */
static void free_pixels(int format, unsigned char *px) {
    if (px && format == FORMAT_WEBP)
        WebPFree(px);
    else if (px)
        stbi_image_free(px);
}

int image_decode_detail(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why, char *detail,
                        size_t dlen) {
    detail[0] = '\0';
    if (size < 1 || size > IMAGE_MAX_SIDE) {
        snprintf(detail, dlen, "output size %d out of range", size);
        *why = SKIP_TOO_LARGE;
        return -1;
    }
    if (!data || len == 0) {
        snprintf(detail, dlen, "empty file");
        *why = SKIP_NOT_AN_IMAGE;
        return -1;
    }
    int format = detect_format(data, len);
    if (format == FORMAT_UNKNOWN) {
        snprintf(detail, dlen, "unknown format");
        *why = SKIP_NOT_AN_IMAGE;
        return -1;
    }
    if (len > INT_MAX) { /* stb_image takes an int length */
        snprintf(detail, dlen, "%zu bytes", len);
        *why = SKIP_TOO_LARGE;
        return -1;
    }

    /* The header's dimensions, checked before any pixel buffer exists. */
    uint32_t hw = 0, hh = 0;
    int ok;
    if (format == FORMAT_WEBP) {
        int w = 0, h = 0;
        ok = WebPGetInfo(data, len, &w, &h) && w > 0 && h > 0;
        hw = (uint32_t)w, hh = (uint32_t)h;
    } else {
        ok = (format == FORMAT_PNG ? png_dimensions(data, len, &hw, &hh) : jpeg_dimensions(data, len, &hw, &hh)) == 0;
    }
    if (!ok || hw == 0 || hh == 0) {
        snprintf(detail, dlen, "no valid header");
        *why = SKIP_CORRUPT_IMAGE;
        return -1;
    }
    if (hw > IMAGE_MAX_SIDE || hh > IMAGE_MAX_SIDE) {
        snprintf(detail, dlen, "header says %ux%u, limit %d a side", hw, hh, IMAGE_MAX_SIDE);
        *why = SKIP_TOO_LARGE;
        return -1;
    }
    if (format != FORMAT_WEBP) {
        /* stb_image must agree, so that what it allocates is what was checked. */
        int w, h, comp;
        if (!stbi_info_from_memory(data, (int)len, &w, &h, &comp) || (uint32_t)w != hw || (uint32_t)h != hh) {
            snprintf(detail, dlen, "bad header (stb_image: %s)", stbi_reason());
            *why = SKIP_CORRUPT_IMAGE;
            return -1;
        }
    }

    int w = 0, h = 0, comp;
    unsigned char *px = format == FORMAT_WEBP ? WebPDecodeRGBA(data, len, &w, &h)
                                              : stbi_load_from_memory(data, (int)len, &w, &h, &comp, 4);
    if (!px || (uint32_t)w != hw || (uint32_t)h != hh) {
        if (format == FORMAT_WEBP)
            snprintf(detail, dlen, "libwebp cannot decode it");
        else if (px)
            snprintf(detail, dlen, "decoded size differs from the header");
        else
            snprintf(detail, dlen, "stb_image: %s", stbi_reason());
        free_pixels(format, px);
        *why = SKIP_CORRUPT_IMAGE;
        return -1;
    }

    /* RGBA -> RGB in place, alpha composited on white: a transparent
     * background is usually meant to be the page, and white is what viewers
     * show. The RGB pixel i is written at 3i <= 4i, behind the reads. */
    size_t npx = (size_t)w * (size_t)h;
    for (size_t i = 0; i < npx; i++) {
        unsigned a = px[4 * i + 3];
        for (int c = 0; c < 3; c++)
            px[3 * i + c] = (unsigned char)((px[4 * i + c] * a + 255u * (255u - a) + 127u) / 255u);
    }

    /* Center crop to the shorter side (the extra pixel of an odd margin goes
     * to the right / bottom), then resize. stb_image_resize's default filters
     * are Mitchell when shrinking (antialiased: the kernel widens with the
     * scale) and Catmull-Rom when enlarging. Filtering works on the stored
     * sRGB values as they are (STBIR_COLORSPACE_LINEAR means "no
     * conversion"), as PIL and torchvision resize do, so the pixels match the
     * usual preprocessing of image models. */
    int side = w < h ? w : h;
    const unsigned char *crop = px + ((size_t)((h - side) / 2) * (size_t)w + (size_t)((w - side) / 2)) * 3;
    size_t stride = (size_t)w * 3;
    unsigned char *out = xmalloc((size_t)size * size * 3);
    if (side == size) {
        for (int y = 0; y < size; y++) memcpy(out + (size_t)y * size * 3, crop + y * stride, (size_t)size * 3);
    } else if (!stbir_resize_uint8_generic(crop, side, side, (int)stride, out, size, size, size * 3, 3,
                                           STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_FILTER_DEFAULT,
                                           STBIR_COLORSPACE_LINEAR, NULL)) {
        die("out of memory resizing a %dx%d image", side, side);
    }
    free_pixels(format, px);

    size_t plane = (size_t)size * size;
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) rgb[c * plane + i] = out[3 * i + c] / 127.5f - 1.0f;
    free(out);
    return 0;
}

int image_decode(const unsigned char *data, size_t len, int size, float *rgb, skip_reason *why) {
    char detail[256];
    return image_decode_detail(data, len, size, rgb, why, detail, sizeof detail);
}
