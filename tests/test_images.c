/* test_images.c - tests of vae/image_source.c, member_reader.c and
 * image_decode.c on images made here: image_decode on PNG (RGB, gray,
 * gray+alpha, palette with transparency), JPEG and WebP (lossy, lossless
 * with alpha): alpha on white, center crop, antialiased resize, refusal of
 * headers over 16384 pixels a side; then a
 * tar shard (ustar headers, GNU long names, pax paths) and a folder holding
 * good samples and one of every kind of bad one, read in order with exact
 * skip counts; a truncated tar; rank/nranks splitting; damaged shards that
 * must not crash the reader. Files live in a mkdtemp folder, removed at the end. */
#include "check.h"
#include "../vae/image_decode.h"
#include "../vae/image_source.h"

#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stb/stb_image_write.h>
#include <webp/decode.h>
#include <webp/encode.h>

static char dir[] = "/tmp/test_images.XXXXXX";

static const char *in_dir(const char *name) {
    static char path[4][4096];
    static int next;
    char *p = path[next++ % 4];
    snprintf(p, sizeof path[0], "%s/%s", dir, name);
    return p;
}

/* ---- byte buffers --------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) exit(1);
    }
    if (n) memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void put_be32(buf *b, uint32_t v) {
    unsigned char x[4] = {v >> 24, v >> 16, v >> 8, v};
    put(b, x, 4);
}

static void stb_put(void *ctx, void *data, int n) { put(ctx, data, (size_t)n); }

static buf png(int w, int h, int comp, const unsigned char *px) {
    buf b = {0};
    if (!stbi_write_png_to_func(stb_put, &b, w, h, comp, px, w * comp)) exit(1);
    return b;
}

static buf jpg(int w, int h, int comp, const unsigned char *px) {
    buf b = {0};
    if (!stbi_write_jpg_to_func(stb_put, &b, w, h, comp, px, 95)) exit(1);
    return b;
}

static buf webp_lossy(int w, int h, const unsigned char *rgb) {
    uint8_t *out;
    size_t n = WebPEncodeRGB(rgb, w, h, w * 3, 95, &out);
    buf b = {0};
    put(&b, out, n);
    WebPFree(out);
    return b;
}

static buf webp_lossless_rgba(int w, int h, const unsigned char *rgba) {
    uint8_t *out;
    size_t n = WebPEncodeLosslessRGBA(rgba, w, h, w * 4, &out);
    buf b = {0};
    put(&b, out, n);
    WebPFree(out);
    return b;
}

static unsigned char *solid(int w, int h, int comp, const int *c) {
    unsigned char *px = malloc((size_t)w * h * comp);
    for (int i = 0; i < w * h; i++)
        for (int k = 0; k < comp; k++) px[i * comp + k] = (unsigned char)c[k];
    return px;
}

static buf solid_png(int w, int h, int r, int g, int b) {
    unsigned char *px = solid(w, h, 3, (int[]){r, g, b});
    buf out = png(w, h, 3, px);
    free(px);
    return out;
}

/* A side x side PNG of pseudo-random pixels: it barely compresses, so
 * cutting the file cuts its image data. */
static buf noisy_png(int side) {
    unsigned char *px = malloc((size_t)side * side * 3);
    uint32_t st = 12345;
    for (int i = 0; i < side * side * 3; i++) px[i] = (unsigned char)((st = st * 1103515245u + 12345u) >> 16);
    buf b = png(side, side, 3, px);
    free(px);
    return b;
}

/* ---- PNG written by hand: palettes and lying headers ---------------------- */

static uint32_t crc32_of(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0xedb88320u : c >> 1;
    }
    return c ^ 0xffffffffu;
}

static void png_chunk(buf *b, const char *type, const unsigned char *data, size_t n) {
    buf c = {0};
    put(&c, type, 4);
    put(&c, data, n);
    put_be32(b, (uint32_t)n);
    put(b, c.p, c.n);
    put_be32(b, crc32_of(c.p, c.n));
    free(c.p);
}

/* A PNG with the given IHDR and raw scanlines (filter byte included), stored
 * in uncompressed deflate blocks; plte/trns optional. */
static buf png_by_hand(uint32_t w, uint32_t h, int color_type, const unsigned char *raw, size_t raw_n,
                       const unsigned char *plte, size_t plte_n, const unsigned char *trns, size_t trns_n) {
    buf b = {0};
    put(&b, "\x89PNG\r\n\x1a\n", 8);
    unsigned char ihdr[13] = {w >> 24, w >> 16, w >> 8, w, h >> 24, h >> 16, h >> 8, h, 8, (unsigned char)color_type,
                              0,       0,       0};
    png_chunk(&b, "IHDR", ihdr, sizeof ihdr);
    if (plte) png_chunk(&b, "PLTE", plte, plte_n);
    if (trns) png_chunk(&b, "tRNS", trns, trns_n);
    buf z = {0};
    put(&z, "\x78\x01", 2);
    size_t off = 0;
    do {
        size_t n = raw_n - off > 65535 ? 65535 : raw_n - off;
        unsigned char hdr[5] = {off + n == raw_n, n & 0xff, n >> 8, ~n & 0xff, (~n >> 8) & 0xff};
        put(&z, hdr, 5);
        put(&z, raw + off, n);
        off += n;
    } while (off < raw_n);
    uint32_t a = 1, s = 0;
    for (size_t i = 0; i < raw_n; i++) {
        a = (a + raw[i]) % 65521;
        s = (s + a) % 65521;
    }
    put_be32(&z, s << 16 | a);
    png_chunk(&b, "IDAT", z.p, z.n);
    png_chunk(&b, "IEND", NULL, 0);
    free(z.p);
    return b;
}

/* A PNG whose IHDR claims w x h (RGB) with a few bytes of image data. */
static buf png_claiming(uint32_t w, uint32_t h) {
    unsigned char raw[4] = {0};
    return png_by_hand(w, h, 2, raw, sizeof raw, NULL, 0, NULL, 0);
}

/* 16x16 palette image: top half palette entry 0 (opaque blue), bottom half
 * entry 1 (fully transparent red). */
static buf palette_png(void) {
    unsigned char raw[16 * 17];
    for (int y = 0; y < 16; y++) {
        raw[y * 17] = 0;
        memset(raw + y * 17 + 1, y < 8 ? 0 : 1, 16);
    }
    unsigned char plte[6] = {0, 0, 255, 255, 0, 0}, trns[2] = {255, 0};
    return png_by_hand(16, 16, 3, raw, sizeof raw, plte, 6, trns, 2);
}

/* 16x16 RGBA: left half transparent black, right half opaque (10, 20, 30),
 * except column 0 which is half-transparent black. */
static unsigned char *half_transparent(void) {
    unsigned char *px = malloc(16 * 16 * 4);
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++) {
            unsigned char *p = px + (y * 16 + x) * 4;
            if (x < 8) {
                p[0] = p[1] = p[2] = 0;
                p[3] = x == 0 ? 128 : 0;
            } else {
                p[0] = 10, p[1] = 20, p[2] = 30, p[3] = 255;
            }
        }
    return px;
}

/* ---- checking decoded images ---------------------------------------------- */

/* Largest difference, in 0..255 units, between the pixels of the region
 * [x0,x1) x [y0,y1) of a [3,n,n] image and the color c. */
static double region_error(const float *rgb, int n, int x0, int x1, int y0, int y1, const int *c) {
    double worst = 0;
    for (int ch = 0; ch < 3; ch++)
        for (int y = y0; y < y1; y++)
            for (int x = x0; x < x1; x++) {
                double v = (rgb[(size_t)ch * n * n + (size_t)y * n + x] + 1.0) * 127.5;
                double d = fabs(v - c[ch]);
                if (d > worst) worst = d;
            }
    return worst;
}

static double image_error(const float *rgb, int n, int r, int g, int b) {
    return region_error(rgb, n, 0, n, 0, n, (int[]){r, g, b});
}

static int in_range(const float *rgb, int n) {
    for (size_t i = 0; i < (size_t)3 * n * n; i++)
        if (!(rgb[i] >= -1.0f && rgb[i] <= 1.0f)) return 0;
    return 1;
}

static int decodes(const buf *b, int size, float *rgb) {
    skip_reason why = SKIP_REASONS;
    int rc = image_decode(b->p, b->n, size, rgb, &why);
    if (rc != 0) printf("# decode failed: %s\n", skip_reason_name(why));
    return rc == 0;
}

static skip_reason refusal(const unsigned char *p, size_t n, int size) {
    float *rgb = malloc((size_t)3 * size * size * sizeof *rgb);
    skip_reason why = SKIP_REASONS;
    int rc = image_decode(p, n, size, rgb, &why);
    free(rgb);
    return rc == 0 ? SKIP_REASONS : why;
}

static void test_decode(void) {
    float rgb[3 * 64 * 64];

    buf b = solid_png(32, 32, 200, 100, 50);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 200, 100, 50) < 0.51, "png rgb 32 -> 16 keeps the color");
    CHECK(decodes(&b, 64, rgb) && image_error(rgb, 64, 200, 100, 50) < 0.51, "png rgb 32 -> 64 keeps the color");
    CHECK(in_range(rgb, 64), "png values in [-1, 1]");
    free(b.p);

    b = solid_png(16, 16, 255, 0, 255);
    CHECK(decodes(&b, 16, rgb) && rgb[0] == 1.0f && rgb[16 * 16] == -1.0f && rgb[2 * 16 * 16] == 1.0f,
          "255 maps to 1 and 0 to -1 exactly");
    free(b.p);

    unsigned char *gray = solid(20, 20, 1, (int[]){90});
    b = png(20, 20, 1, gray);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 90, 90, 90) < 0.51, "grayscale png becomes gray rgb");
    free(b.p);
    free(gray);

    unsigned char *ga = solid(16, 16, 2, (int[]){0, 0}); /* gray + alpha, transparent */
    b = png(16, 16, 2, ga);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 255, 255, 255) < 0.01,
          "transparent gray+alpha png becomes white");
    free(b.p);
    free(ga);

    b = palette_png();
    CHECK(decodes(&b, 16, rgb) && region_error(rgb, 16, 0, 16, 0, 8, (int[]){0, 0, 255}) < 0.01 &&
              region_error(rgb, 16, 0, 16, 8, 16, (int[]){255, 255, 255}) < 0.01,
          "palette png: opaque entry kept, transparent entry white");
    free(b.p);

    unsigned char *rgba = half_transparent();
    b = png(16, 16, 4, rgba);
    CHECK(decodes(&b, 16, rgb) && region_error(rgb, 16, 1, 8, 0, 16, (int[]){255, 255, 255}) < 0.01 &&
              region_error(rgb, 16, 8, 16, 0, 16, (int[]){10, 20, 30}) < 0.01,
          "rgba png: transparent is white, opaque kept");
    CHECK(region_error(rgb, 16, 0, 1, 0, 16, (int[]){127, 127, 127}) <= 1,
          "rgba png: alpha 128 black on white is mid gray");
    free(b.p);
    buf wl = webp_lossless_rgba(16, 16, rgba);
    CHECK(decodes(&wl, 16, rgb) && region_error(rgb, 16, 1, 8, 0, 16, (int[]){255, 255, 255}) < 0.01 &&
              region_error(rgb, 16, 8, 16, 0, 16, (int[]){10, 20, 30}) < 0.01,
          "lossless rgba webp: transparent is white, opaque exact");
    free(rgba);

    /* Non-square: thirds red | green | blue; the center crop is all green. */
    unsigned char wide[48 * 16 * 3], tall[16 * 48 * 3];
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 48; x++) {
            int third = x / 16;
            unsigned char *p = wide + (y * 48 + x) * 3, *q = tall + (x * 16 + y) * 3;
            for (int c = 0; c < 3; c++) p[c] = q[c] = c == third ? 255 : 0;
        }
    b = png(48, 16, 3, wide);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 0, 255, 0) < 0.01, "wide image: center crop");
    free(b.p);
    b = png(16, 48, 3, tall);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 0, 255, 0) < 0.01, "tall image: center crop");
    free(b.p);
    b = png(48, 16, 3, wide);
    CHECK(decodes(&b, 8, rgb) && image_error(rgb, 8, 0, 255, 0) < 0.51, "wide image: crop then shrink");
    free(b.p);

    /* 300x200: red margins of 50 columns (cropped away) around a one-pixel
     * checkerboard. Shrunk to 64 with an antialiasing filter it is a flat
     * mid gray; point sampling would give black and white. */
    unsigned char *big = malloc(300 * 200 * 3);
    for (int y = 0; y < 200; y++)
        for (int x = 0; x < 300; x++) {
            unsigned char *p = big + (y * 300 + x) * 3;
            if (x < 50 || x >= 250)
                p[0] = 255, p[1] = p[2] = 0;
            else
                p[0] = p[1] = p[2] = (x + y) % 2 ? 255 : 0;
        }
    b = png(300, 200, 3, big);
    /* The outermost pixels see the clamped edge, which repeats one parity. */
    CHECK(decodes(&b, 64, rgb) && region_error(rgb, 64, 1, 63, 1, 63, (int[]){128, 128, 128}) <= 1 &&
              image_error(rgb, 64, 128, 128, 128) <= 8,
          "300x200 -> 64: checkerboard averages to gray, red margins cropped away");
    free(b.p);
    /* A 4-pixel stripe period through the same path keeps no stripe either. */
    for (int y = 0; y < 200; y++)
        for (int x = 50; x < 250; x++) memset(big + (y * 300 + x) * 3, (x / 2) % 2 ? 255 : 0, 3);
    b = png(300, 200, 3, big);
    CHECK(decodes(&b, 64, rgb) && region_error(rgb, 64, 1, 63, 0, 64, (int[]){128, 128, 128}) <= 8,
          "300x200 -> 64: 4-pixel stripes average to gray");
    free(b.p);
    free(big);

    b = solid_png(8, 8, 40, 80, 120);
    CHECK(decodes(&b, 32, rgb) && image_error(rgb, 32, 40, 80, 120) < 0.51, "upscaling keeps a flat color");
    free(b.p);

    unsigned char *px = solid(32, 32, 3, (int[]){30, 160, 220});
    b = jpg(32, 32, 3, px);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 30, 160, 220) <= 6, "jpeg rgb decodes close to its color");
    free(b.p);
    buf w = webp_lossy(32, 32, px);
    CHECK(decodes(&w, 16, rgb) && image_error(rgb, 16, 30, 160, 220) <= 8, "lossy webp decodes close to its color");
    free(px);
    gray = solid(32, 32, 1, (int[]){128});
    b = jpg(32, 32, 1, gray);
    CHECK(decodes(&b, 16, rgb) && image_error(rgb, 16, 128, 128, 128) <= 3, "grayscale jpeg becomes gray rgb");
    free(b.p);
    free(gray);

    /* Refusals. */
    CHECK(refusal((const unsigned char *)"", 0, 16) == SKIP_NOT_AN_IMAGE, "empty file: not an image");
    CHECK(refusal(NULL, 0, 16) == SKIP_NOT_AN_IMAGE, "no data: not an image");
    const char *text = "this is a caption, not a picture\n";
    CHECK(refusal((const unsigned char *)text, strlen(text), 16) == SKIP_NOT_AN_IMAGE, "text: not an image");
    CHECK(refusal((const unsigned char *)"GIF89a\1\0\1\0\0\0\0;", 14, 16) == SKIP_NOT_AN_IMAGE, "gif: not an image");
    CHECK(refusal((const unsigned char *)"\x89PNG", 4, 16) == SKIP_NOT_AN_IMAGE, "4 bytes of png magic: not an image");

    buf noisy = noisy_png(64);
    CHECK(refusal(noisy.p, noisy.n / 2, 16) == SKIP_CORRUPT_IMAGE, "truncated png: corrupt");
    CHECK(refusal(noisy.p, 20, 16) == SKIP_CORRUPT_IMAGE, "png cut inside IHDR: corrupt");
    noisy.p[noisy.n / 2] ^= 0xff; /* flip bits inside the zlib stream */
    skip_reason r = refusal(noisy.p, noisy.n, 16);
    CHECK(r == SKIP_CORRUPT_IMAGE || r == SKIP_REASONS, "png with flipped bits: corrupt or decoded, no crash");
    free(noisy.p);
    CHECK(refusal(w.p, w.n / 2, 16) == SKIP_CORRUPT_IMAGE, "truncated lossy webp: corrupt");
    CHECK(refusal(wl.p, wl.n - 8, 16) == SKIP_CORRUPT_IMAGE, "truncated lossless webp: corrupt");
    free(w.p);
    free(wl.p);
    b = jpg(32, 32, 3, (px = solid(32, 32, 3, (int[]){1, 2, 3})));
    r = refusal(b.p, b.n / 2, 16);
    CHECK(r == SKIP_CORRUPT_IMAGE || r == SKIP_REASONS, "truncated jpeg: corrupt or partly decoded, no crash");
    CHECK(refusal(b.p, 60, 16) == SKIP_CORRUPT_IMAGE, "jpeg cut before its frame header: corrupt");
    free(b.p);
    free(px);

    b = png_claiming(20000, 20000);
    CHECK(refusal(b.p, b.n, 16) == SKIP_TOO_LARGE, "png claiming 20000x20000: too large");
    free(b.p);
    b = png_claiming(16385, 1);
    CHECK(refusal(b.p, b.n, 16) == SKIP_TOO_LARGE, "png claiming 16385x1: too large");
    free(b.p);
    b = png_claiming(1, 20000);
    CHECK(refusal(b.p, b.n, 16) == SKIP_TOO_LARGE, "png claiming 1x20000: too large");
    free(b.p);
    b = png_claiming(0, 5);
    CHECK(refusal(b.p, b.n, 16) == SKIP_CORRUPT_IMAGE, "png claiming 0x5: corrupt");
    free(b.p);
    b = png_claiming(16, 16); /* 4 bytes of data for 16 rows */
    CHECK(refusal(b.p, b.n, 16) == SKIP_CORRUPT_IMAGE, "png with too little image data: corrupt");
    free(b.p);
    /* The limit itself is allowed: 16384 x 2. */
    px = solid(16384, 2, 3, (int[]){7, 8, 9});
    b = png(16384, 2, 3, px);
    CHECK(decodes(&b, 4, rgb) && image_error(rgb, 4, 7, 8, 9) < 0.51, "16384 pixels a side is allowed");
    free(b.p);
    free(px);
    /* JPEG frame header claiming 20000 x 20000. */
    const unsigned char big_jpeg[] = {0xff, 0xd8, 0xff, 0xe0, 0,    4, 0, 0,    0xff, 0xc0, 0,   11,
                                      8,    0x4e, 0x20, 0x4e, 0x20, 1, 1, 0x11, 0,    0xff, 0xd9};
    CHECK(refusal(big_jpeg, sizeof big_jpeg, 16) == SKIP_TOO_LARGE, "jpeg claiming 20000x20000: too large");
    /* WebP extended header (VP8X) with a 20000 x 20000 canvas. */
    unsigned char vp8x[30] = "RIFF\x16\0\0\0WEBPVP8X\x0a\0\0\0";
    uint32_t m = 20000 - 1;
    unsigned char dims[6] = {m & 0xff, m >> 8 & 0xff, m >> 16, m & 0xff, m >> 8 & 0xff, m >> 16};
    memcpy(vp8x + 24, dims, 6);
    r = refusal(vp8x, sizeof vp8x, 16);
    CHECK(r == SKIP_TOO_LARGE || r == SKIP_CORRUPT_IMAGE, "webp claiming 20000x20000: refused (%s)",
          skip_reason_name(r));
}

/* ---- tar shards written by hand -------------------------------------------- */

static void tar_header(buf *b, const char *name, size_t size, char type) {
    unsigned char h[512] = {0};
    size_t n = strlen(name);
    memcpy(h, name, n < 100 ? n : 100);
    memcpy(h + 100, "0000644", 8);
    memcpy(h + 108, "0001750", 8);
    memcpy(h + 116, "0001750", 8);
    char num[16];
    snprintf(num, sizeof num, "%011llo", (unsigned long long)size);
    memcpy(h + 124, num, 12);
    memcpy(h + 136, "14712345670", 12);
    h[156] = (unsigned char)type;
    memcpy(h + 257, "ustar", 6);
    memcpy(h + 263, "00", 2);
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++) sum += h[i];
    snprintf(num, sizeof num, "%06o", sum);
    memcpy(h + 148, num, 7);
    put(b, h, 512);
}

static void tar_pad(buf *b) {
    static const unsigned char zero[512];
    put(b, zero, (512 - b->n % 512) % 512);
}

static void tar_add(buf *b, const char *name, const void *data, size_t n) {
    tar_header(b, name, n, '0');
    put(b, data, n);
    tar_pad(b);
}

static void tar_text(buf *b, const char *name, const char *text) { tar_add(b, name, text, strlen(text)); }

static void tar_image(buf *b, const char *name, buf img) {
    tar_add(b, name, img.p, img.n);
    free(img.p);
}

/* A member whose name goes in a GNU long-name record. */
static void tar_add_gnu_long(buf *b, const char *name, const void *data, size_t n) {
    tar_header(b, "././@LongLink", strlen(name) + 1, 'L');
    put(b, name, strlen(name) + 1);
    tar_pad(b);
    tar_add(b, "truncated-name", data, n);
}

/* A member whose name goes in a pax extended header. */
static void tar_add_pax(buf *b, const char *name, const void *data, size_t n) {
    char rec[1024];
    size_t len = strlen(name) + 8, got;
    for (;;) { /* the record's length counts its own digits */
        got = (size_t)snprintf(rec, sizeof rec, "%zu path=%s\n", len, name);
        if (got == len) break;
        len = got;
    }
    char mtime[64];
    int mlen = snprintf(mtime, sizeof mtime, "20 mtime=1700000000\n");
    tar_header(b, "PaxHeaders.0/x", got + (size_t)mlen, 'x');
    put(b, rec, got);
    put(b, mtime, (size_t)mlen);
    tar_pad(b);
    tar_add(b, "short-name", data, n);
}

static void tar_end(buf *b) {
    static const unsigned char zero[1024];
    put(b, zero, sizeof zero);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp || (n && fwrite(data, 1, n, fp) != n) || fclose(fp) != 0) {
        perror(path);
        exit(1);
    }
}

static char *read_all(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0) put(&b, chunk, n);
    fclose(fp);
    put(&b, "", 1);
    return (char *)b.p;
}

/* ---- stderr capture -------------------------------------------------------- */

static int saved_stderr = -1;

static void stderr_to(const char *path) {
    fflush(stderr);
    saved_stderr = dup(2);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (saved_stderr < 0 || fd < 0 || dup2(fd, 2) < 0) exit(1);
    close(fd);
}

static void stderr_back(void) {
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
}

static int count_lines_starting(const char *text, const char *prefix) {
    int n = 0;
    for (const char *p = text; p && *p;) {
        if (!strncmp(p, prefix, strlen(prefix))) n++;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : NULL;
    }
    return n;
}

/* ---- the shard and folder --------------------------------------------------- */

enum { SOLID, LEFT_RIGHT, TOP_BOTTOM };

typedef struct {
    const char *key, *caption, *json;
    int layout;
    int c1[3], c2[3]; /* whole image / left or top half, right or bottom half */
    double tol;
} expect;

static char deep_key[200];

static expect good[] = {
    {"s000", "a red square", "{\"w\": 32}", SOLID, {200, 100, 50}, {0}, 0.51},
    {"s001", "two words", NULL, SOLID, {30, 160, 220}, {0}, 6},
    {"s002", "caf\xc3\xa9 \xe2\x98\x95 \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac", NULL, SOLID, {90, 200, 120}, {0}, 8},
    {"s014", "upper case extensions", NULL, LEFT_RIGHT, {255, 255, 255}, {10, 20, 30}, 0.01},
    {"s015", "png data in a .jpg", NULL, SOLID, {255, 0, 0}, {0}, 0.01},
    {deep_key, "long names", NULL, SOLID, {77, 77, 77}, {0}, 0.51},
    {"s017", "with a class member", "[1, 2]", SOLID, {0, 0, 0}, {0}, 0.01},
    {"s018", "last good one of the shard", NULL, SOLID, {1, 2, 3}, {0}, 0.51},
    {"f000", "palette", NULL, TOP_BOTTOM, {0, 0, 255}, {255, 255, 255}, 0.01},
    {"f001", "lossless webp", NULL, LEFT_RIGHT, {255, 255, 255}, {10, 20, 30}, 0.01},
    {"f002", "gray jpeg", NULL, SOLID, {128, 128, 128}, {0}, 3},
};
#define N_GOOD ((int)(sizeof good / sizeof good[0]))

static const long want_skips[SKIP_REASONS] = {
    [SKIP_CORRUPT_IMAGE] = 3, /* s003 (truncated png), s019 (cut by the tar's end), f003 */
    [SKIP_NOT_AN_IMAGE] = 2,  /* s004 (text in .png), s005 (empty) */
    [SKIP_TOO_LARGE] = 1,     /* s006 (20000x20000 header) */
    [SKIP_NO_CAPTION] = 3,    /* s007 (no .txt), s008 (blank), f005 */
    [SKIP_BAD_UTF8] = 4,      /* s009..s012 */
    [SKIP_DUPLICATE_KEY] = 2, /* s000 again, s018 again in the folder */
    [SKIP_UNSAFE_NAME] = 2,   /* ../evil, /abs/s020 */
    [SKIP_NO_IMAGE] = 2,      /* s013, f004 */
};

static size_t write_shard_a(void) {
    buf t = {0};
    tar_image(&t, "s000.png", solid_png(32, 32, 200, 100, 50));
    tar_text(&t, "s000.txt", "a red square");
    tar_text(&t, "s000.json", "{\"w\": 32}");

    unsigned char *px = solid(32, 32, 3, (int[]){30, 160, 220});
    tar_image(&t, "s001.jpg", jpg(32, 32, 3, px));
    free(px);
    tar_text(&t, "s001.txt", "  two words \n");

    px = solid(32, 32, 3, (int[]){90, 200, 120});
    tar_image(&t, "s002.webp", webp_lossy(32, 32, px));
    free(px);
    tar_text(&t, "s002.txt",
             "\xef\xbb\xbf"
             "caf\xc3\xa9 \xe2\x98\x95 \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac\r\n");

    buf img = solid_png(16, 16, 5, 5, 5);
    buf noisy = noisy_png(40);
    tar_add(&t, "s003.png", noisy.p, noisy.n * 2 / 3);
    free(noisy.p);
    tar_text(&t, "s003.txt", "truncated image");

    tar_text(&t, "s004.png", "I am a caption, not a PNG\n");
    tar_text(&t, "s004.txt", "not an image");

    tar_add(&t, "s005.png", "", 0);
    tar_text(&t, "s005.txt", "empty image");

    tar_image(&t, "s006.png", png_claiming(20000, 20000));
    tar_text(&t, "s006.txt", "too large");

    tar_add(&t, "s007.png", img.p, img.n); /* no caption */

    tar_add(&t, "s008.png", img.p, img.n);
    tar_text(&t, "s008.txt", " \n\t  \r\n");

    const char *bad_utf8[4] = {"overlong \xc0\xaf slash", "surrogate \xed\xa0\x80", "too high \xf4\x90\x80\x80",
                               "cut \xe2\x82"};
    for (int i = 0; i < 4; i++) {
        char name[32];
        snprintf(name, sizeof name, "s%03d.png", 9 + i);
        tar_add(&t, name, img.p, img.n);
        snprintf(name, sizeof name, "s%03d.txt", 9 + i);
        tar_text(&t, name, bad_utf8[i]);
    }

    tar_text(&t, "s013.txt", "caption without an image");

    tar_add(&t, "s000.png", img.p, img.n); /* the key again */
    tar_text(&t, "s000.txt", "duplicate");

    tar_add(&t, "../evil.png", img.p, img.n);
    tar_text(&t, "../evil.txt", "escapes the folder");
    tar_add(&t, "/abs/s020.png", img.p, img.n);
    tar_text(&t, "/abs/s020.txt", "absolute");
    tar_header(&t, "dir/", 0, '5');

    unsigned char *rgba = half_transparent();
    tar_image(&t, "s014.PNG", png(16, 16, 4, rgba));
    free(rgba);
    tar_text(&t, "s014.TXT", "upper case extensions");

    tar_image(&t, "s015.jpg", solid_png(16, 16, 255, 0, 0));
    tar_text(&t, "s015.txt", "png data in a .jpg");

    unsigned char *g = solid(16, 16, 1, (int[]){77});
    buf gp = png(16, 16, 1, g);
    free(g);
    char name[256];
    snprintf(name, sizeof name, "%s.png", deep_key);
    tar_add_gnu_long(&t, name, gp.p, gp.n);
    free(gp.p);
    snprintf(name, sizeof name, "%s.txt", deep_key);
    tar_add_pax(&t, name, "long names", 10);

    tar_image(&t, "s017.png", solid_png(16, 16, 0, 0, 0));
    tar_text(&t, "._s017.png", "resource fork");
    tar_text(&t, "README", "no extension");
    tar_text(&t, "s017.cls", "3");
    tar_text(&t, "s017.json", "[1, 2]");
    tar_text(&t, "s017.txt", "with a class member");

    tar_image(&t, "s018.png", solid_png(16, 16, 1, 2, 3));
    tar_text(&t, "s018.txt", "last good one of the shard");

    /* s019: the header claims 5000 bytes, the file ends after 100. */
    tar_header(&t, "s019.png", 5000, '0');
    noisy = noisy_png(40);
    put(&t, noisy.p, 100);
    free(noisy.p);
    free(img.p);

    write_file(in_dir("a.tar"), t.p, t.n);
    size_t n_bytes = t.n;
    free(t.p);
    return n_bytes;
}

static void write_folder_b(void) {
    mkdir(in_dir("b"), 0755);
    mkdir(in_dir("b/subdir"), 0755);
    buf p = palette_png();
    write_file(in_dir("b/f000.png"), p.p, p.n);
    free(p.p);
    write_file(in_dir("b/f000.txt"), "palette\n", 8);
    unsigned char *rgba = half_transparent();
    p = webp_lossless_rgba(16, 16, rgba);
    free(rgba);
    write_file(in_dir("b/f001.webp"), p.p, p.n);
    write_file(in_dir("b/f005.webp"), p.p, p.n);
    free(p.p);
    write_file(in_dir("b/f001.txt"), "lossless webp", 13);
    unsigned char *g = solid(24, 24, 1, (int[]){128});
    p = jpg(24, 24, 1, g);
    free(g);
    write_file(in_dir("b/f002.jpeg"), p.p, p.n);
    write_file(in_dir("b/f002.txt"), "gray jpeg", 9);
    free(p.p);
    p = noisy_png(40);
    write_file(in_dir("b/f003.png"), p.p, p.n / 2);
    free(p.p);
    write_file(in_dir("b/f003.txt"), "cut", 3);
    write_file(in_dir("b/f004.txt"), "no image here", 13);
    p = solid_png(8, 8, 1, 1, 1);
    write_file(in_dir("b/s018.png"), p.p, p.n);
    free(p.p);
    write_file(in_dir("b/s018.txt"), "duplicate across inputs", 23);
    write_file(in_dir("b/.DS_Store"), "junk", 4);
    write_file(in_dir("b/README"), "junk", 4);
}

/* Reads a whole source, checking the good samples against `good`. Returns
 * the number read; *in_order tells whether every one matched. */
static int read_good(image_source *s, int *in_order) {
    image_sample smp;
    int n = 0;
    *in_order = 1;
    while (image_source_next(s, &smp)) {
        if (n >= N_GOOD) {
            printf("# extra sample %s\n", smp.key);
            *in_order = 0;
            n++;
            continue;
        }
        const expect *e = &good[n++];
        int h = smp.size / 2;
        double err = e->layout == SOLID ? image_error(smp.rgb, smp.size, e->c1[0], e->c1[1], e->c1[2])
            : e->layout == LEFT_RIGHT   ? fmax(region_error(smp.rgb, smp.size, 1, h, 0, smp.size, e->c1),
                                               region_error(smp.rgb, smp.size, h, smp.size, 0, smp.size, e->c2))
                                        : fmax(region_error(smp.rgb, smp.size, 0, smp.size, 0, h, e->c1),
                                               region_error(smp.rgb, smp.size, 0, smp.size, h, smp.size, e->c2));
        int ok = !strcmp(smp.key, e->key) && !strcmp(smp.caption, e->caption) &&
            (e->json ? smp.json && !strcmp(smp.json, e->json) : !smp.json) && smp.size == 16 && err <= e->tol &&
            in_range(smp.rgb, smp.size);
        if (!ok) {
            printf("# sample %d: key %s caption '%s' json %s error %.2f; want %s '%s'\n", n - 1, smp.key, smp.caption,
                   smp.json ? smp.json : "(none)", err, e->key, e->caption);
            *in_order = 0;
        }
    }
    return n;
}

static void test_source(void) {
    char deep[130];
    memset(deep, 'd', 120);
    deep[120] = '\0';
    snprintf(deep_key, sizeof deep_key, "deep/%s/s016", deep);
    size_t shard_bytes = write_shard_a();
    write_folder_b();

    char spec[8192], err[ERR_LEN];
    snprintf(spec, sizeof spec, "%s/*.tar,%s", dir, in_dir("b"));
    image_source *s = image_source_open(spec, 16, 0, 1, err);
    CHECK(s != NULL, "open shard and folder");
    if (!s) {
        printf("# %s\n", err);
        return;
    }
    CHECK(image_source_count_inputs(s) == 2 && !strcmp(image_source_input_path(s, 0), in_dir("a.tar")) &&
              !strcmp(image_source_input_path(s, 1), in_dir("b")) && !image_source_input_path(s, 2),
          "two inputs, in the listed order");

    const char *log = in_dir("stderr.log");
    stderr_to(log);
    int in_order;
    int n = read_good(s, &in_order);
    stderr_back();
    char *text = read_all(log);
    for (char *p = text, *nl; p && *p; p = nl + 1) {
        nl = strchr(p, '\n');
        if (!nl) break;
        printf("# %.*s\n", (int)(nl - p), p);
    }
    CHECK(n == N_GOOD && in_order, "good samples in order with captions, json and pixels (%d of %d)", n, N_GOOD);
    CHECK(image_source_good(s) == N_GOOD, "good count");
    long total = 0;
    int counts_ok = 1;
    for (int r = 0; r < SKIP_REASONS; r++) {
        total += image_source_skipped(s, r);
        if (image_source_skipped(s, r) != want_skips[r]) {
            printf("# %s: %ld skipped, want %ld\n", skip_reason_name(r), image_source_skipped(s, r), want_skips[r]);
            counts_ok = 0;
        }
    }
    CHECK(counts_ok, "skip counts per reason exact");
    CHECK(count_lines_starting(text, "skip ") == total, "one 'skip' log line per skipped sample");
    char line[512];
    snprintf(line, sizeof line, "skip %s s006: too large", in_dir("a.tar"));
    CHECK(strstr(text, line) != NULL, "log line names input, key and reason");
    snprintf(line, sizeof line, "skip %s s019: corrupt image", in_dir("a.tar"));
    CHECK(strstr(text, line) != NULL, "the sample cut by the tar's end is skipped");
    CHECK(count_lines_starting(text, "image_source: ") == 1 && strstr(text, "truncated"),
          "the truncated tar is logged once");
    snprintf(line, sizeof line, "skip %s s018: duplicate key", in_dir("b"));
    CHECK(strstr(text, line) != NULL, "duplicate key across inputs");
    free(text);

    char summary[512];
    image_source_summary(s, summary, sizeof summary);
    printf("# %s\n", summary);
    CHECK(!strcmp(summary,
                  "11 good, 19 skipped (corrupt image: 3, not an image: 2, too large: 1, no caption: 3, "
                  "bad utf-8: 4, duplicate key: 2, unsafe name: 2, no image: 2)"),
          "summary");
    char tiny[8];
    image_source_summary(s, tiny, sizeof tiny);
    CHECK(strlen(tiny) == 7, "summary truncates safely");

    image_sample smp;
    CHECK(image_source_next(s, &smp) == 0 && image_source_next(s, &smp) == 0, "stays at the end");

    /* Reading again is not a duplicate; select restricts to one input. */
    stderr_to(in_dir("stderr2.log"));
    image_source_select(s, -1);
    n = read_good(s, &in_order);
    image_source_select(s, 1);
    int folder_n = 0, folder_ok = 1;
    while (image_source_next(s, &smp))
        folder_ok &= smp.key[0] == 'f' && folder_n < 3 && !strcmp(smp.key, good[8 + folder_n++].key);
    image_source_select(s, 0);
    int first = image_source_next(s, &smp);
    int first_ok = first && !strcmp(smp.key, "s000"); /* then stop in the middle */
    image_source_select(s, 7);
    int none = image_source_next(s, &smp) == 0;
    stderr_back();
    CHECK(n == N_GOOD && in_order, "select(-1) reads everything again, no false duplicates");
    CHECK(folder_ok && folder_n == 3, "select(1) reads the folder only");
    CHECK(first_ok, "select(0) restarts the shard");
    CHECK(none, "select of a missing input reads nothing");
    CHECK(image_source_skipped(s, SKIP_DUPLICATE_KEY) == 2 * 2 + 1, "duplicates counted again only where real");
    image_source_close(s);

    /* A shard cut at many places, and one with damaged bytes: never a crash,
     * never more good samples than there are. */
    char *whole = read_all(in_dir("a.tar"));
    int max_good = 0, ran = 0;
    /* Thousands of log lines go to a file; a sanitizer report would go there
     * too, and the folder is left in place when the program dies. */
    printf("# damaged shards log to %s\n", in_dir("damage.log"));
    fflush(stdout);
    stderr_to(in_dir("damage.log"));
    for (size_t cut = 0; cut <= shard_bytes; cut += 61) {
        write_file(in_dir("cut.tar"), whole, cut);
        image_source *c = image_source_open(in_dir("cut.tar"), 16, 0, 1, err);
        if (!c) break;
        int k = 0;
        while (image_source_next(c, &smp)) k++;
        max_good = k > max_good ? k : max_good;
        image_source_close(c);
        ran++;
    }
    uint32_t st = 99;
    for (int round = 0; round < 150; round++) {
        char *bad = malloc(shard_bytes);
        memcpy(bad, whole, shard_bytes);
        for (int k = 0; k < 6; k++) {
            st = st * 1664525u + 1013904223u;
            size_t at = (st >> 8) % shard_bytes;
            st = st * 1664525u + 1013904223u;
            /* Hit headers often: half of the flips land in the first bytes of a block. */
            if (k % 2) at = (at / 512 * 512 + (st >> 8) % 160) % shard_bytes;
            bad[at] = (char)(st >> 24);
        }
        write_file(in_dir("bad.tar"), bad, shard_bytes);
        free(bad);
        image_source *c = image_source_open(in_dir("bad.tar"), 16, 0, 1, err);
        if (!c) break;
        while (image_source_next(c, &smp))
            ;
        image_source_close(c);
        ran++;
    }
    stderr_back();
    free(whole);
    CHECK(ran == (int)(shard_bytes / 61) + 1 + 150 && max_good <= 8, "cut and damaged shards read safely (%d runs)",
          ran);

    /* A member claiming 8 GiB in a small file: refused without allocating. */
    buf t = {0};
    tar_header(&t, "huge.png", 0, '0');
    memcpy(t.p + 124, "77777777777", 11);
    unsigned sum = 0;
    memset(t.p + 148, ' ', 8);
    for (int i = 0; i < 512; i++) sum += t.p[i];
    snprintf((char *)t.p + 148, 8, "%06o", sum);
    tar_text(&t, "huge.txt", "claims 8 GiB");
    write_file(in_dir("huge.tar"), t.p, t.n);
    free(t.p);
    stderr_to(in_dir("stderr3.log"));
    s = image_source_open(in_dir("huge.tar"), 16, 0, 1, err);
    int none_read = s && image_source_next(s, &smp) == 0;
    stderr_back();
    text = read_all(in_dir("stderr3.log"));
    CHECK(none_read &&
              (image_source_skipped(s, SKIP_TOO_LARGE) == 1 || image_source_skipped(s, SKIP_CORRUPT_IMAGE) == 1),
          "member claiming 8 GiB: skipped (%s)", text ? text : "");
    free(text);
    image_source_close(s);
}

/* ---- rank splitting, open errors ---------------------------------------------- */

static void test_ranks(void) {
    mkdir(in_dir("ranks"), 0755);
    for (int i = 0; i < 3; i++) {
        buf t = {0};
        for (int j = 0; j < 2; j++) {
            char name[64];
            snprintf(name, sizeof name, "r%d_%d.png", i, j);
            tar_image(&t, name, solid_png(8, 8, 10 * i, 10 * j, 0));
            snprintf(name, sizeof name, "r%d_%d.txt", i, j);
            tar_text(&t, name, name);
        }
        tar_end(&t);
        char path[64];
        snprintf(path, sizeof path, "ranks/%d.tar", 2 - i); /* file order differs from key order */
        write_file(in_dir(path), t.p, t.n);
        free(t.p);
    }
    char spec[4200], err[ERR_LEN];
    snprintf(spec, sizeof spec, "%s", in_dir("ranks/*.tar"));
    for (int nranks = 1; nranks <= 4; nranks++) {
        int seen[3][2] = {{0}}, total = 0, inputs = 0, ok = 1;
        for (int rank = 0; rank < nranks; rank++) {
            image_source *s = image_source_open(spec, 8, rank, nranks, err);
            if (!s) {
                ok = 0;
                printf("# %s\n", err);
                continue;
            }
            inputs += image_source_count_inputs(s);
            for (int i = 0; i < image_source_count_inputs(s); i++) { /* input k of 0,1,2.tar goes to rank k % nranks */
                char want[64];
                snprintf(want, sizeof want, "ranks/%d.tar", rank + i * nranks);
                ok &= !strcmp(image_source_input_path(s, i), in_dir(want));
            }
            image_sample smp;
            while (image_source_next(s, &smp)) {
                int a, b;
                if (sscanf(smp.key, "r%d_%d", &a, &b) == 2 && a >= 0 && a < 3 && b >= 0 && b < 2) seen[a][b]++;
                total++;
            }
            ok &= image_source_good(s) == image_source_count_inputs(s) * 2;
            image_source_close(s);
        }
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 2; b++) ok &= seen[a][b] == 1;
        CHECK(ok && total == 6 && inputs == 3, "%d rank(s): every sample once, none lost", nranks);
    }

    snprintf(spec, sizeof spec, "%s,%s", in_dir("ranks/0.tar"), in_dir("ranks/*.tar"));
    image_source *s = image_source_open(spec, 8, 0, 1, err);
    CHECK(s && image_source_count_inputs(s) == 3, "a path listed twice is one input");
    image_source_close(s);

    snprintf(spec, sizeof spec, "%s", in_dir("ranks/*.zip"));
    err[0] = '\0';
    CHECK(!image_source_open(spec, 8, 0, 1, err) && strstr(err, "matches nothing") && strstr(err, "ranks/*.zip"),
          "a glob matching nothing fails: %s", err);
    snprintf(spec, sizeof spec, "%s,%s", in_dir("ranks/0.tar"), in_dir("missing.tar"));
    CHECK(!image_source_open(spec, 8, 0, 1, err) && strstr(err, "missing.tar"), "a missing path fails: %s", err);
    write_file(in_dir("notes.md"), "x", 1);
    snprintf(spec, sizeof spec, "%s", in_dir("notes.md"));
    CHECK(!image_source_open(spec, 8, 0, 1, err) && strstr(err, "notes.md"), "a file that is not a .tar fails: %s",
          err);
    CHECK(!image_source_open(in_dir("ranks"), 8, 2, 2, err), "rank out of range fails: %s", err);
    CHECK(!image_source_open(in_dir("ranks"), 0, 0, 1, err), "size 0 fails: %s", err);
    CHECK(!image_source_open("", 8, 0, 1, err), "empty spec fails: %s", err);
    CHECK(!image_source_open(",", 8, 0, 1, err), "spec of commas fails: %s", err);

    for (int r = 0; r < SKIP_REASONS; r++)
        CHECK(skip_reason_name(r) && strlen(skip_reason_name(r)) > 0, "reason %d named '%s'", r, skip_reason_name(r));
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

int main(void) {
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_decode();
    test_source();
    test_ranks();
    CHECK(nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "temporary folder removed");
    return CHECK_DONE();
}
