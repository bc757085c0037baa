/* render_images.c - rasterizes SVG and PNG pictures to square lossless WebP,
 * in-process and on every core; data/build_images.py runs it.
 *
 *   render_images [--threads N] < JOBS
 *
 * JOBS has one line per picture, "INPUT<TAB>OUTPUT<TAB>SIZE". Each INPUT is
 * drawn the way `rsvg-convert -a -w SIZE -h SIZE -b white` draws it (librsvg,
 * 96 dpi, aspect ratio kept, scaled to fit SIZE x SIZE) and, when its shape is
 * not square, centred on a white SIZE x SIZE canvas. A PNG INPUT (recognized by
 * its signature) is drawn through the same square SVG wrapper that
 * build_images.py used to write, so it is scaled by librsvg exactly as before.
 * OUTPUT is written atomically: OUTPUT.tmp, fsync, rename.
 *
 * stdout: one line per picture that failed, "fail<TAB>OUTPUT<TAB>REASON";
 * nothing for those that worked (their OUTPUT exists).
 * Exit status: 0 all written, 1 some failed (each has its line), 2 bad
 * arguments or a malformed job line (one line on stderr, nothing rendered).
 *
 * Threads take the jobs one at a time (OpenMP, dynamic schedule): the time per
 * picture varies a lot between sources, so a static split would leave cores idle.
 * Each thread uses its own RsvgHandle and cairo surface; librsvg handles are
 * independent of each other. */
#include <cairo.h>
#include <librsvg/rsvg.h>
#include <webp/encode.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SIZE 16384 /* cairo's limit is 32767; this is plenty and bounds memory */
#define DPI 96.0       /* rsvg-convert's default */
#define REASON_LEN 400

typedef struct {
    char *in, *out;
    int size;
} job;

static const char usage[] = "usage: render_images [--threads N] < lines \"INPUT<TAB>OUTPUT<TAB>SIZE\"";

static void bad_args(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("render_images: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void set_reason(char *reason, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, REASON_LEN, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ inputs */

static int read_file(const char *path, unsigned char **data, size_t *len, char *reason) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_reason(reason, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            fclose(f);
            set_reason(reason, "out of memory reading %s", path);
            return -1;
        }
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        cap *= 2;
        unsigned char *nb = realloc(buf, cap);
        if (!nb) free(buf);
        buf = nb;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        set_reason(reason, "cannot read %s", path);
        return -1;
    }
    *data = buf;
    *len = n;
    return 0;
}

static const unsigned char PNG_SIG[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static char *base64(const unsigned char *d, size_t n) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *o = malloc(4 * ((n + 2) / 3) + 1), *p = o;
    if (!o) return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)d[i] << 16 | (uint32_t)d[i + 1] << 8 | d[i + 2];
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = tab[(v >> 6) & 63];
        *p++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)d[i] << 16 | (i + 1 < n ? (uint32_t)d[i + 1] << 8 : 0);
        *p++ = tab[v >> 18];
        *p++ = tab[(v >> 12) & 63];
        *p++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *p++ = '=';
    }
    *p = 0;
    return o;
}

/* The SVG that shows a PNG centred on a square canvas, aspect kept: byte for
 * byte what build_images.py's png_wrapper() wrote before this program existed,
 * so the PNG stamps are resampled by librsvg exactly as they were. */
static char *png_wrapper(const unsigned char *png, size_t len, size_t *out_len, char *reason) {
    if (len < 24 || memcmp(png, PNG_SIG, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0) {
        set_reason(reason, "not a PNG file");
        return NULL;
    }
    uint32_t w = (uint32_t)png[16] << 24 | (uint32_t)png[17] << 16 | (uint32_t)png[18] << 8 | png[19];
    uint32_t h = (uint32_t)png[20] << 24 | (uint32_t)png[21] << 16 | (uint32_t)png[22] << 8 | png[23];
    if (w == 0 || h == 0 || w > INT_MAX || h > INT_MAX) {
        set_reason(reason, "PNG has a bad size %ux%u", w, h);
        return NULL;
    }
    uint32_t side = w > h ? w : h;
    char *b64 = base64(png, len);
    if (!b64) {
        set_reason(reason, "out of memory");
        return NULL;
    }
    const char *fmt = "<svg xmlns=\"http://www.w3.org/2000/svg\" xmlns:xlink=\"http://www.w3.org/1999/xlink\""
                      " width=\"%u\" height=\"%u\" viewBox=\"0 0 %u %u\">"
                      "<image x=\"%g\" y=\"%g\" width=\"%u\" height=\"%u\" preserveAspectRatio=\"xMidYMid meet\""
                      " xlink:href=\"data:image/png;base64,%s\"/></svg>";
    double x = (side - w) / 2.0, y = (side - h) / 2.0;
    int n = snprintf(NULL, 0, fmt, side, side, side, side, x, y, w, h, b64);
    char *svg = n < 0 ? NULL : malloc((size_t)n + 1);
    if (svg) snprintf(svg, (size_t)n + 1, fmt, side, side, side, side, x, y, w, h, b64);
    free(b64);
    if (!svg)
        set_reason(reason, "out of memory");
    else
        *out_len = (size_t)n;
    return svg;
}

/* Pixels of a physical length at DPI, or -1 for font-relative and percentage
 * units (those need a font size or a viewport). */
static double length_px(RsvgLength l) {
    switch (l.unit) {
        case RSVG_UNIT_PX: return l.length;
        case RSVG_UNIT_IN: return l.length * DPI;
        case RSVG_UNIT_CM: return l.length * DPI / 2.54;
        case RSVG_UNIT_MM: return l.length * DPI / 25.4;
        case RSVG_UNIT_PT: return l.length * DPI / 72.0;
        case RSVG_UNIT_PC: return l.length * DPI / 6.0;
        default: return -1.0;
    }
}

/* The document's natural size in pixels, as rsvg-convert computes it: the
 * width and height of the <svg> element; with percentages, the viewBox's
 * size (or its aspect ratio applied to the one absolute side); without
 * either, the extents of what the document draws. */
static int natural_size(RsvgHandle *h, double *w, double *hh, char *reason) {
    if (rsvg_handle_get_intrinsic_size_in_pixels(h, w, hh)) goto check;
    gboolean has_w, has_h, has_vb;
    RsvgLength lw, lh;
    RsvgRectangle vb;
    rsvg_handle_get_intrinsic_dimensions(h, &has_w, &lw, &has_h, &lh, &has_vb, &vb);
    if (has_vb && vb.width > 0 && vb.height > 0) {
        double pw = length_px(lw), ph = length_px(lh);
        if (lw.unit == RSVG_UNIT_PERCENT && lh.unit == RSVG_UNIT_PERCENT) {
            *w = vb.width;
            *hh = vb.height;
            goto check;
        }
        if (lh.unit == RSVG_UNIT_PERCENT && pw > 0) {
            *w = pw;
            *hh = pw * vb.height / vb.width;
            goto check;
        }
        if (lw.unit == RSVG_UNIT_PERCENT && ph > 0) {
            *w = ph * vb.width / vb.height;
            *hh = ph;
            goto check;
        }
    }
    {
        RsvgRectangle unit = {0, 0, 1, 1}, ink, logical;
        GError *err = NULL;
        if (!rsvg_handle_get_geometry_for_layer(h, NULL, &unit, &ink, &logical, &err)) {
            set_reason(reason, "cannot measure the SVG: %s", err ? err->message : "unknown error");
            g_clear_error(&err);
            return -1;
        }
        *w = ink.width;
        *hh = ink.height;
    }
check:
    if (!(*w > 0) || !(*hh > 0)) {
        set_reason(reason, "the SVG has no dimensions");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ output */

static int write_atomic(const char *path, const uint8_t *data, size_t len, char *reason) {
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp) {
        set_reason(reason, "out of memory");
        return -1;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        set_reason(reason, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            set_reason(reason, "cannot write %s: %s", tmp, n < 0 ? strerror(errno) : "short write");
            goto fail;
        }
        off += (size_t)n;
    }
    /* fsync before the rename: a renamed file must never be found empty
     * after a crash, since build_images.py takes an existing output as done. */
    if (fsync(fd) != 0) {
        set_reason(reason, "cannot fsync %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) != 0) {
        fd = -1;
        set_reason(reason, "cannot close %s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        set_reason(reason, "cannot rename %s: %s", tmp, strerror(errno));
        goto fail;
    }
    free(tmp);
    return 0;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    free(tmp);
    return -1;
}

/* ------------------------------------------------------------------ one job */

static int render_one(const job *jb, char *reason) {
    int S = jb->size, rc = -1;
    unsigned char *file = NULL, *rgba = NULL;
    uint8_t *webp = NULL;
    char *wrapper = NULL;
    size_t flen = 0, wlen = 0;
    RsvgHandle *h = NULL;
    cairo_surface_t *surf = NULL;
    cairo_t *cr = NULL;
    GError *err = NULL;

    if (read_file(jb->in, &file, &flen, reason) != 0) return -1;
    if (flen >= 8 && memcmp(file, PNG_SIG, 8) == 0) {
        if (!(wrapper = png_wrapper(file, flen, &wlen, reason))) goto done;
        h = rsvg_handle_new_from_data((const guint8 *)wrapper, wlen, &err);
    } else {
        /* Load from the file, not the bytes read, so that the document's base
         * is its own path, as with rsvg-convert (relative references). */
        GFile *gf = g_file_new_for_path(jb->in);
        h = rsvg_handle_new_from_gfile_sync(gf, RSVG_HANDLE_FLAGS_NONE, NULL, &err);
        g_object_unref(gf);
    }
    if (!h) {
        set_reason(reason, "cannot load the SVG: %s", err ? err->message : "unknown error");
        goto done;
    }
    rsvg_handle_set_dpi(h, DPI);

    double nw, nh;
    if (natural_size(h, &nw, &nh, reason) != 0) goto done;
    /* Fit in S x S, aspect kept: the larger side becomes S. (rsvg-convert -a
     * sizes a square box by the height, so a wide document overflowed it;
     * build_images.py squares such documents first, so both agree.) */
    double fw, fh;
    if (nw > nh) {
        fw = S;
        fh = nh * (S / nw);
    } else {
        fw = nw * (S / nh);
        fh = S;
    }

    surf = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, S, S);
    cr = cairo_create(surf);
    cairo_set_source_rgba(cr, 1, 1, 1, 1);
    cairo_paint(cr);
    /* The same transform as rsvg-convert (scale the context, viewport at the
     * natural size), plus centring; a square document gets a zero offset. */
    cairo_translate(cr, (S - fw) / 2.0, (S - fh) / 2.0);
    cairo_scale(cr, fw / nw, fh / nh);
    RsvgRectangle viewport = {0, 0, nw, nh};
    if (!rsvg_handle_render_document(h, cr, &viewport, &err)) {
        set_reason(reason, "cannot render the SVG: %s", err ? err->message : "unknown error");
        goto done;
    }
    if (cairo_status(cr) != CAIRO_STATUS_SUCCESS) {
        set_reason(reason, "cairo: %s", cairo_status_to_string(cairo_status(cr)));
        goto done;
    }
    cairo_surface_flush(surf);

    /* cairo's ARGB32 is premultiplied, native-endian; the white background
     * makes every pixel opaque in practice, but a document could still clear
     * pixels, so those keep their alpha (un-premultiplied as cairo's PNG
     * writer, and so rsvg-convert, does). */
    const unsigned char *px = cairo_image_surface_get_data(surf);
    int stride = cairo_image_surface_get_stride(surf);
    rgba = malloc((size_t)S * S * 4);
    if (!rgba) {
        set_reason(reason, "out of memory");
        goto done;
    }
    int opaque = 1;
    for (int y = 0; y < S; y++) {
        const uint32_t *row = (const uint32_t *)(px + (size_t)y * stride);
        unsigned char *o = rgba + (size_t)y * S * 4;
        for (int x = 0; x < S; x++) {
            uint32_t p = row[x], a = p >> 24, r = (p >> 16) & 255, g = (p >> 8) & 255, b = p & 255;
            if (a != 255) {
                opaque = 0;
                if (a == 0) {
                    r = g = b = 0;
                } else {
                    r = (r * 255 + a / 2) / a;
                    g = (g * 255 + a / 2) / a;
                    b = (b * 255 + a / 2) / a;
                }
            }
            o[4 * x] = (unsigned char)r;
            o[4 * x + 1] = (unsigned char)g;
            o[4 * x + 2] = (unsigned char)b;
            o[4 * x + 3] = (unsigned char)a;
        }
    }
    size_t n;
    if (opaque) {
        /* Pack to RGB so the file carries no alpha channel, like cwebp's output
         * of rsvg-convert's opaque PNG. */
        for (size_t i = 0; i < (size_t)S * S; i++) {
            rgba[3 * i] = rgba[4 * i];
            rgba[3 * i + 1] = rgba[4 * i + 1];
            rgba[3 * i + 2] = rgba[4 * i + 2];
        }
        n = WebPEncodeLosslessRGB(rgba, S, S, 3 * S, &webp);
    } else {
        n = WebPEncodeLosslessRGBA(rgba, S, S, 4 * S, &webp);
    }
    if (n == 0 || !webp) {
        set_reason(reason, "WebP encoding failed");
        goto done;
    }
    rc = write_atomic(jb->out, webp, n, reason);
done:
    g_clear_error(&err);
    if (webp) WebPFree(webp);
    free(rgba);
    if (cr) cairo_destroy(cr);
    if (surf) cairo_surface_destroy(surf);
    if (h) g_object_unref(h);
    free(wrapper);
    free(file);
    return rc;
}

/* ------------------------------------------------------------------ main */

/* Splits stdin into jobs; any malformed line is a caller's bug: exit 2. */
static job *read_jobs(size_t *count) {
    size_t cap = 1024, n = 0, lineno = 0, llen = 0;
    job *jobs = malloc(cap * sizeof *jobs);
    char *line = NULL;
    ssize_t got;
    if (!jobs) bad_args("out of memory");
    while ((got = getline(&line, &llen, stdin)) >= 0) {
        lineno++;
        if (got > 0 && line[got - 1] == '\n') line[--got] = 0;
        if (got == 0) continue;
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t1 || !t2 || strchr(t2 + 1, '\t') || t1 == line || t2 == t1 + 1)
            bad_args("stdin line %zu: expected INPUT<TAB>OUTPUT<TAB>SIZE", lineno);
        *t1 = *t2 = 0;
        char *end;
        errno = 0;
        long s = strtol(t2 + 1, &end, 10);
        if (errno || end == t2 + 1 || *end || s < 1 || s > MAX_SIZE)
            bad_args("stdin line %zu: SIZE must be 1..%d, got '%s'", lineno, MAX_SIZE, t2 + 1);
        if (n == cap) {
            cap *= 2;
            job *nj = realloc(jobs, cap * sizeof *jobs);
            if (!nj) bad_args("out of memory");
            jobs = nj;
        }
        jobs[n].in = strdup(line);
        jobs[n].out = strdup(t1 + 1);
        jobs[n].size = (int)s;
        if (!jobs[n].in || !jobs[n].out) bad_args("out of memory");
        n++;
    }
    free(line);
    *count = n;
    return jobs;
}

/* Makes the renames durable: one fsync per distinct output folder. */
static void sync_dirs(const job *jobs, size_t n) {
    char prev[PATH_MAX] = "";
    for (size_t i = 0; i < n; i++) {
        const char *slash = strrchr(jobs[i].out, '/');
        char dir[PATH_MAX];
        size_t len = slash ? (size_t)(slash - jobs[i].out) : 0;
        if (len >= sizeof dir) continue;
        if (slash && len == 0) len = 1; /* "/file" */
        if (slash)
            memcpy(dir, jobs[i].out, len);
        else
            dir[len++] = '.';
        dir[len] = 0;
        if (strcmp(dir, prev) == 0) continue;
        strcpy(prev, dir);
        int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
}

int main(int argc, char **argv) {
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            puts(usage);
            return 0;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            char *end;
            errno = 0;
            long t = strtol(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || t < 1 || t > 1024)
                bad_args("--threads must be 1..1024, got '%s'", argv[i]);
            threads = (int)t;
        } else {
            bad_args("unknown argument '%s' (%s)", argv[i], usage);
        }
    }
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }

    size_t n;
    job *jobs = read_jobs(&n);
    size_t failed = 0;
    /* The library's type system and font setup, once, before the threads. */
    g_object_unref(rsvg_handle_new());

#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(+ : failed)
    for (size_t i = 0; i < n; i++) {
        char reason[REASON_LEN] = "";
        if (render_one(&jobs[i], reason) != 0) {
            for (char *p = reason; *p; p++) /* one line per failure */
                if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
#pragma omp critical(out)
            {
                printf("fail\t%s\t%s\n", jobs[i].out, reason);
                fflush(stdout);
            }
            failed++;
        }
    }
    sync_dirs(jobs, n);
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].in);
        free(jobs[i].out);
    }
    free(jobs);
    return failed ? 1 : 0;
}
