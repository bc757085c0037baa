/* test_image_kernels.c - the CPU image kernels (convolution, group norm,
 * upsampling, transpose) and the L1 loss against plain float64 references
 * written here: a naive 7-loop convolution over an explicitly padded copy of
 * the input and its hand-written backward, a two-pass group norm with its
 * analytic backward (itself checked against central finite differences in
 * float64), nearest upsampling by index arithmetic.
 *
 * Feature maps are [n, H, W, C] (NHWC); the references index them through
 * AT() and keep their own padded copies channel-major. Outputs that
 * the interface says are overwritten are prefilled with NaN; outputs that
 * are accumulated (dw, db) are prefilled with random values and must come
 * back as prefill + gradient. Tolerances are relative to the largest
 * magnitude of the reference: 1e-5 for forward values, 1e-4 for gradients.
 * Two convolutions (3x3 and 1x1) are VAE-sized; there only sampled outputs
 * are compared (first, last and random images), plus adjoint identities
 * <conv(x), g> = <x, dx> = <w, dw> summed in float64 over whole tensors. */
#include "check.h"
#include "../common/rng.h"
#include "../nn/kernels.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TOL_FWD 1e-5
#define TOL_GRAD 1e-4
/* Adjoint identities <A x, g> = <x, A^T g> in float64 over the kernel's
 * float32 outputs, relative to the sum of |terms| (the scale of float32
 * rounding in the products): observed ~1e-8, a wrong image or pixel moves
 * them by far more than 1e-6. */
#define TOL_ADJ 1e-6

/* Element (image i, row y, column x, channel c) of an NHWC map of H x W x C. */
#define AT(i, y, x, c, H, W, C) ((((size_t)(i) * (H) + (y)) * (W) + (x)) * (C) + (c))

static rng R;

static void fill(float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * rng_uniform(&R));
}

static void fill_nan(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = NAN;
}

static double *dalloc(size_t n) {
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* got[i] - base[i] against ref[i] (base may be NULL): max |error| must be at
 * most tol * max |ref|. NaN anywhere fails. */
static void compare(const char *what, const float *got, const float *base, const double *ref, size_t n, double tol) {
    double err = 0.0, mx = 0.0;
    size_t at = 0, nans = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - (base ? (double)base[i] : 0.0) - ref[i]);
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
        if (isnan(e)) {
            nans++;
            continue;
        }
        if (e > err) {
            err = e;
            at = i;
        }
    }
    CHECK(nans == 0 && err <= tol * mx, "%s: max err %.3g (at %zu) vs max |ref| %.3g, rel %.2g <= %.0e, %zu NaN of %zu",
          what, err, at, mx, mx > 0 ? err / mx : err, tol, nans, n);
}

/* Two float64 numbers that should agree up to tol relative to scale. */
static void compare_scalar(const char *what, double a, double b, double scale, double tol) {
    double err = fabs(a - b);
    CHECK(err <= tol * scale, "%s: %.10g vs %.10g, err %.3g vs scale %.3g (tol %.0e rel)", what, a, b, err, scale, tol);
}

/* ---------------------------------------------------------------------- */
/* convolution                                                             */

static size_t x_numel(const conv_shape *s) { return (size_t)s->c_in * s->n * s->h * s->w; }
static size_t y_numel(const conv_shape *s) { return (size_t)s->c_out * s->n * conv_out_h(s) * conv_out_w(s); }
static size_t w_numel(const conv_shape *s) { return (size_t)s->c_out * s->c_in * s->k * s->k; }

/* x copied into a zero border: [c_in, n, HP, WP]. */
static double *padded(const float *x, const conv_shape *s, int *HP, int *WP) {
    int hp = s->h + s->pad_t + s->pad_b, wp = s->w + s->pad_l + s->pad_r;
    double *xp = dalloc((size_t)s->c_in * s->n * hp * wp);
    for (int c = 0; c < s->c_in; c++)
        for (int i = 0; i < s->n; i++)
            for (int y = 0; y < s->h; y++)
                for (int x0 = 0; x0 < s->w; x0++)
                    xp[(((size_t)c * s->n + i) * hp + y + s->pad_t) * wp + x0 + s->pad_l] =
                        x[AT(i, y, x0, c, s->h, s->w, s->c_in)];
    *HP = hp;
    *WP = wp;
    return xp;
}

/* y[co, i, oy, ox] = b[co] + sum_{ci, ky, kx} w[co, ci, ky, kx] * xp[ci, i, oy*S + ky, ox*S + kx] */
static void ref_conv_forward(double *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    int hp, wp, ho = conv_out_h(s), wo = conv_out_w(s), k = s->k, S = s->stride;
    double *xp = padded(x, s, &hp, &wp);
    for (int co = 0; co < s->c_out; co++)
        for (int i = 0; i < s->n; i++)
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    double acc = b ? b[co] : 0.0;
                    for (int ci = 0; ci < s->c_in; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++)
                                acc += (double)w[((co * s->c_in + ci) * k + ky) * k + kx] *
                                    xp[(((size_t)ci * s->n + i) * hp + oy * S + ky) * wp + ox * S + kx];
                    y[AT(i, oy, ox, co, ho, wo, s->c_out)] = acc;
                }
    free(xp);
}

/* Gradients of sum(y * g): dx through the padded input (then cropped), dw, db. */
static void ref_conv_backward(double *dx, double *dw, double *db, const float *g, const float *x, const float *w,
                              const conv_shape *s) {
    int hp, wp, ho = conv_out_h(s), wo = conv_out_w(s), k = s->k, S = s->stride;
    double *xp = padded(x, s, &hp, &wp);
    double *dxp = dalloc((size_t)s->c_in * s->n * hp * wp);
    memset(dw, 0, w_numel(s) * sizeof(double));
    for (int co = 0; co < s->c_out; co++) {
        db[co] = 0.0;
        for (int i = 0; i < s->n; i++)
            for (int oy = 0; oy < ho; oy++)
                for (int ox = 0; ox < wo; ox++) {
                    double gv = g[AT(i, oy, ox, co, ho, wo, s->c_out)];
                    db[co] += gv;
                    for (int ci = 0; ci < s->c_in; ci++)
                        for (int ky = 0; ky < k; ky++)
                            for (int kx = 0; kx < k; kx++) {
                                size_t wi = ((size_t)(co * s->c_in + ci) * k + ky) * k + kx;
                                size_t xi = (((size_t)ci * s->n + i) * hp + oy * S + ky) * wp + ox * S + kx;
                                dw[wi] += gv * xp[xi];
                                dxp[xi] += gv * w[wi];
                            }
                }
    }
    for (int c = 0; c < s->c_in; c++)
        for (int i = 0; i < s->n; i++)
            for (int y = 0; y < s->h; y++)
                for (int x0 = 0; x0 < s->w; x0++)
                    dx[AT(i, y, x0, c, s->h, s->w, s->c_in)] =
                        dxp[(((size_t)c * s->n + i) * hp + y + s->pad_t) * wp + x0 + s->pad_l];
    free(xp);
    free(dxp);
}

/* Point references for the large case (bounds checks instead of padding). */
static double xat(const float *x, const conv_shape *s, int c, int i, int y, int x0) {
    if (y < 0 || y >= s->h || x0 < 0 || x0 >= s->w) return 0.0;
    return x[AT(i, y, x0, c, s->h, s->w, s->c_in)];
}

static double ref_y_at(const float *x, const float *w, const float *b, const conv_shape *s, int co, int i, int oy,
                       int ox) {
    int k = s->k;
    double acc = b ? b[co] : 0.0;
    for (int ci = 0; ci < s->c_in; ci++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++)
                acc += (double)w[((co * s->c_in + ci) * k + ky) * k + kx] *
                    xat(x, s, ci, i, oy * s->stride - s->pad_t + ky, ox * s->stride - s->pad_l + kx);
    return acc;
}

static double ref_dx_at(const float *g, const float *w, const conv_shape *s, int ci, int i, int y, int x0) {
    int k = s->k, ho = conv_out_h(s), wo = conv_out_w(s);
    double acc = 0.0;
    for (int co = 0; co < s->c_out; co++)
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx++) {
                int ty = y + s->pad_t - ky, tx = x0 + s->pad_l - kx;
                if (ty < 0 || tx < 0 || ty % s->stride || tx % s->stride) continue;
                int oy = ty / s->stride, ox = tx / s->stride;
                if (oy >= ho || ox >= wo) continue;
                acc += (double)w[((co * s->c_in + ci) * k + ky) * k + kx] * g[AT(i, oy, ox, co, ho, wo, s->c_out)];
            }
    return acc;
}

static double ref_dw_at(const float *g, const float *x, const conv_shape *s, int co, int ci, int ky, int kx) {
    int ho = conv_out_h(s), wo = conv_out_w(s);
    double acc = 0.0;
    for (int i = 0; i < s->n; i++)
        for (int oy = 0; oy < ho; oy++)
            for (int ox = 0; ox < wo; ox++)
                acc += (double)g[AT(i, oy, ox, co, ho, wo, s->c_out)] *
                    xat(x, s, ci, i, oy * s->stride - s->pad_t + ky, ox * s->stride - s->pad_l + kx);
    return acc;
}

static double dot(const float *a, const float *b, size_t n, double *abs_sum) {
    double s = 0.0, as = 0.0;
    for (size_t i = 0; i < n; i++) {
        double p = (double)a[i] * b[i];
        s += p;
        as += fabs(p);
    }
    if (abs_sum) *abs_sum = as;
    return s;
}

static void shape_name(char *buf, size_t len, const char *tag, const conv_shape *s) {
    snprintf(buf, len, "conv %s k%d s%d pad(t%d l%d b%d r%d) cin %d cout %d n %d %dx%d", tag, s->k, s->stride, s->pad_t,
             s->pad_l, s->pad_b, s->pad_r, s->c_in, s->c_out, s->n, s->h, s->w);
}

/* Full comparison of forward and backward on a small shape. */
static void conv_case(const char *tag, conv_shape s, int with_bias) {
    char nm[256], what[400];
    shape_name(nm, sizeof nm, tag, &s);
    size_t nx = x_numel(&s), ny = y_numel(&s), nw = w_numel(&s);
    float *x = nn_alloc(nx), *w = nn_alloc(nw), *b = nn_alloc(s.c_out), *g = nn_alloc(ny);
    float *y = nn_alloc(ny), *y2 = nn_alloc(ny), *ynb = nn_alloc(ny);
    float *dx = nn_alloc(nx), *dw = nn_alloc(nw), *db = nn_alloc(s.c_out);
    float *dw0 = nn_alloc(nw), *db0 = nn_alloc(s.c_out), *dw2 = nn_alloc(nw);
    fill(x, nx, -1, 1);
    fill(w, nw, -1, 1);
    fill(b, s.c_out, -1, 1);
    fill(g, ny, -1, 1);
    const float *bias = with_bias ? b : NULL;

    double *yr = dalloc(ny), *dxr = dalloc(nx), *dwr = dalloc(nw), *dbr = dalloc(s.c_out);
    ref_conv_forward(yr, x, w, bias, &s);
    ref_conv_backward(dxr, dwr, dbr, g, x, w, &s);

    fill_nan(y, ny);
    nn_conv2d_forward(y, x, w, bias, &s);
    snprintf(what, sizeof what, "%s%s forward y", nm, with_bias ? " +bias" : "");
    compare(what, y, NULL, yr, ny, TOL_FWD);

    fill_nan(y2, ny);
    nn_conv2d_forward(y2, x, w, bias, &s);
    snprintf(what, sizeof what, "%s forward is bitwise repeatable", nm);
    CHECK(memcmp(y, y2, ny * sizeof(float)) == 0, "%s", what);

    /* backward: dx overwritten (NaN prefill), dw and db added to */
    fill_nan(dx, nx);
    fill(dw0, nw, -1, 1);
    fill(db0, s.c_out, -1, 1);
    nn_copy(dw, dw0, nw);
    nn_copy(db, db0, s.c_out);
    nn_conv2d_backward(dx, dw, with_bias ? db : NULL, g, x, w, &s);
    snprintf(what, sizeof what, "%s backward dx (overwritten)", nm);
    compare(what, dx, NULL, dxr, nx, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward dw (added to prefill)", nm);
    compare(what, dw, dw0, dwr, nw, TOL_GRAD);
    if (with_bias) {
        snprintf(what, sizeof what, "%s backward db (added to prefill)", nm);
        compare(what, db, db0, dbr, s.c_out, TOL_GRAD);
    } else {
        snprintf(what, sizeof what, "%s backward with db NULL leaves the db buffer alone", nm);
        CHECK(memcmp(db, db0, s.c_out * sizeof(float)) == 0, "%s", what);
    }

    /* dx == NULL: dw (from zero) and db still right */
    nn_zero(dw2, nw);
    nn_zero(db, s.c_out);
    nn_conv2d_backward(NULL, dw2, db, g, x, w, &s);
    snprintf(what, sizeof what, "%s backward dx NULL: dw", nm);
    compare(what, dw2, NULL, dwr, nw, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward dx NULL: db", nm);
    compare(what, db, NULL, dbr, s.c_out, TOL_GRAD);

    /* adjoint identities of the bilinear map (x, w) -> conv(x, w):
     * <conv(x, w), g> = <x, dx> = <w, dw> */
    nn_conv2d_forward(ynb, x, w, NULL, &s);
    double sa, sb, sc;
    double a = dot(ynb, g, ny, &sa), bx = dot(x, dx, nx, &sb), cw = dot(w, dw2, nw, &sc);
    double scale = fmax(sa, fmax(sb, sc));
    snprintf(what, sizeof what, "%s adjoint <conv(x),g> = <x,dx>", nm);
    compare_scalar(what, a, bx, scale, TOL_ADJ);
    snprintf(what, sizeof what, "%s adjoint <conv(x),g> = <w,dw>", nm);
    compare_scalar(what, a, cw, scale, TOL_ADJ);

    free(yr);
    free(dxr);
    free(dwr);
    free(dbr);
    nn_free(x);
    nn_free(w);
    nn_free(b);
    nn_free(g);
    nn_free(y);
    nn_free(y2);
    nn_free(ynb);
    nn_free(dx);
    nn_free(dw);
    nn_free(db);
    nn_free(dw0);
    nn_free(db0);
    nn_free(dw2);
}

/* x rounded to the nearest bfloat16 (ties to even), as oneDNN's reorder does. */
static float bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u;
    memcpy(&x, &u, sizeof u);
    return x;
}

/* s.bf16: the kernel reads its inputs as bfloat16 and accumulates in
 * float32. The products of bf16 values are exact in float32, so against the
 * float64 reference on the rounded inputs it must agree as closely as the
 * float32 path does with the plain reference; db sums the unrounded dy. On a
 * CPU without bf16 dot products the kernel stays float32 and must match the
 * plain reference. */
static void conv_case_bf16(const char *tag, conv_shape s, int with_bias) {
    char nm[256], what[400];
    s.bf16 = 1;
    shape_name(nm, sizeof nm, tag, &s);
    int native = __builtin_cpu_supports("avx512bf16");
    size_t nx = x_numel(&s), ny = y_numel(&s), nw = w_numel(&s);
    float *x = nn_alloc(nx), *w = nn_alloc(nw), *b = nn_alloc(s.c_out), *g = nn_alloc(ny);
    float *xr = nn_alloc(nx), *wr = nn_alloc(nw), *gr = nn_alloc(ny);
    float *y = nn_alloc(ny), *dx = nn_alloc(nx), *dw = nn_alloc(nw), *db = nn_alloc(s.c_out);
    fill(x, nx, -1, 1);
    fill(w, nw, -1, 1);
    fill(b, s.c_out, -1, 1);
    fill(g, ny, -1, 1);
    for (size_t i = 0; i < nx; i++) xr[i] = native ? bf16_round(x[i]) : x[i];
    for (size_t i = 0; i < nw; i++) wr[i] = native ? bf16_round(w[i]) : w[i];
    for (size_t i = 0; i < ny; i++) gr[i] = native ? bf16_round(g[i]) : g[i];
    const float *bias = with_bias ? b : NULL;
    double *yr = dalloc(ny), *dxr = dalloc(nx), *dwr = dalloc(nw), *dbr = dalloc(s.c_out);
    double *unused_dx = dalloc(nx), *unused_dw = dalloc(nw);
    ref_conv_forward(yr, xr, wr, bias, &s);
    ref_conv_backward(dxr, dwr, dbr, gr, xr, wr, &s);
    ref_conv_backward(unused_dx, unused_dw, dbr, g, x, w, &s);
    const char *path = native ? "bf16 inputs" : "no bf16 on this CPU: float32";

    fill_nan(y, ny);
    nn_conv2d_forward(y, x, w, bias, &s);
    snprintf(what, sizeof what, "%s%s forward y (%s)", nm, with_bias ? " +bias" : "", path);
    compare(what, y, NULL, yr, ny, TOL_FWD);
    fill_nan(dx, nx);
    nn_zero(dw, nw);
    nn_zero(db, s.c_out);
    nn_conv2d_backward(dx, dw, db, g, x, w, &s);
    snprintf(what, sizeof what, "%s backward dx (%s)", nm, path);
    compare(what, dx, NULL, dxr, nx, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward dw (%s)", nm, path);
    compare(what, dw, NULL, dwr, nw, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward db (float32 dy)", nm);
    compare(what, db, NULL, dbr, s.c_out, TOL_GRAD);
    free(yr);
    free(dxr);
    free(dwr);
    free(dbr);
    free(unused_dx);
    free(unused_dw);
    nn_free(x);
    nn_free(w);
    nn_free(b);
    nn_free(g);
    nn_free(xr);
    nn_free(wr);
    nn_free(gr);
    nn_free(y);
    nn_free(dx);
    nn_free(dw);
    nn_free(db);
}

/* s.fixed_weights (inference): the forward may keep its transform of w
 * between calls, and a float32 3x3 stride-1 shape runs as Winograd. It must
 * match the float64 reference; repeat bit for bit; follow w when the same
 * buffer gets new values (the kept transform is checked, never read stale);
 * and keep two weight tensors of one shape apart. Where oneDNN has its
 * AVX-512 Winograd kernel (`winograd`: 1), the result must differ in some
 * bits from the direct kernel's, which shows Winograd ran. */
static void conv_case_fixed(const char *tag, conv_shape s, int with_bias, int winograd) {
    char nm[256], what[400];
    s.fixed_weights = 1;
    shape_name(nm, sizeof nm, tag, &s);
    conv_shape direct = s;
    direct.fixed_weights = 0;
    size_t nx = x_numel(&s), ny = y_numel(&s), nw = w_numel(&s);
    float *x = nn_alloc(nx), *w = nn_alloc(nw), *w2 = nn_alloc(nw), *b = nn_alloc(s.c_out);
    float *y = nn_alloc(ny), *y2 = nn_alloc(ny), *yd = nn_alloc(ny);
    double *yr = dalloc(ny), *yr2 = dalloc(ny);
    fill(x, nx, -1, 1);
    fill(w, nw, -1, 1);
    fill(w2, nw, -1, 1);
    fill(b, s.c_out, -1, 1);
    const float *bias = with_bias ? b : NULL;

    ref_conv_forward(yr, x, w, bias, &s);
    fill_nan(y, ny);
    nn_conv2d_forward(y, x, w, bias, &s);
    snprintf(what, sizeof what, "%s fixed weights: forward y", nm);
    compare(what, y, NULL, yr, ny, TOL_FWD);
    fill_nan(y2, ny);
    nn_conv2d_forward(y2, x, w, bias, &s);
    snprintf(what, sizeof what, "%s fixed weights: the kept transform repeats bit for bit", nm);
    CHECK(memcmp(y, y2, ny * sizeof(float)) == 0, "%s", what);
    nn_conv2d_forward(yd, x, w, bias, &direct);
    snprintf(what, sizeof what, "%s fixed weights: %s the direct kernel's bits", nm,
             winograd ? "Winograd differs from" : "same as");
    CHECK((memcmp(y, yd, ny * sizeof(float)) != 0) == winograd, "%s", what);

    /* a second tensor of the same shape, then new values in the first */
    ref_conv_forward(yr2, x, w2, bias, &s);
    nn_conv2d_forward(y2, x, w2, bias, &s);
    snprintf(what, sizeof what, "%s fixed weights: a second tensor of the shape has its own transform", nm);
    compare(what, y2, NULL, yr2, ny, TOL_FWD);
    fill(w, nw, -1, 1);
    ref_conv_forward(yr, x, w, bias, &s);
    nn_conv2d_forward(y, x, w, bias, &s);
    snprintf(what, sizeof what, "%s fixed weights: new values in the same buffer are followed", nm);
    compare(what, y, NULL, yr, ny, TOL_FWD);

    free(yr);
    free(yr2);
    nn_free(x);
    nn_free(w);
    nn_free(w2);
    nn_free(b);
    nn_free(y);
    nn_free(y2);
    nn_free(yd);
}

/* A VAE-sized shape: sampled entries, full identities. */
static void conv_case_large(const char *tag, conv_shape s, int with_bias, int samples_per_image) {
    char nm[256], what[400];
    shape_name(nm, sizeof nm, tag, &s);
    int ho = conv_out_h(&s), wo = conv_out_w(&s);

    size_t nx = x_numel(&s), ny = y_numel(&s), nw = w_numel(&s);
    float *x = nn_alloc(nx), *w = nn_alloc(nw), *b = nn_alloc(s.c_out), *g = nn_alloc(ny);
    float *y = nn_alloc(ny), *dx = nn_alloc(nx), *dw = nn_alloc(nw), *dw0 = nn_alloc(nw);
    float *db = nn_alloc(s.c_out), *db0 = nn_alloc(s.c_out);
    fill(x, nx, -1, 1);
    fill(w, nw, -1, 1);
    fill(b, s.c_out, -1, 1);
    fill(g, ny, -1, 1);
    const float *bias = with_bias ? b : NULL;

    /* images to sample: the first, the last and random ones */
    int imgs[8], ni = 0;
    imgs[ni++] = 0;
    imgs[ni++] = s.n - 1;
    while (ni < 8) imgs[ni++] = rng_int(&R, 0, s.n - 1);

    fill_nan(y, ny);
    nn_conv2d_forward(y, x, w, bias, &s);
    {
        size_t cap = (size_t)ni * (samples_per_image + 4), m = 0;
        float *got = nn_alloc(cap);
        double *ref = dalloc(cap);
        for (int t = 0; t < ni; t++) {
            int i = imgs[t];
            for (int q = 0; q < samples_per_image + 4; q++) {
                int co = rng_int(&R, 0, s.c_out - 1), oy, ox;
                if (q < 4) {
                    oy = (q & 1) ? ho - 1 : 0;
                    ox = (q & 2) ? wo - 1 : 0;
                } /* corners */
                else {
                    oy = rng_int(&R, 0, ho - 1);
                    ox = rng_int(&R, 0, wo - 1);
                }
                got[m] = y[AT(i, oy, ox, co, ho, wo, s.c_out)];
                ref[m++] = ref_y_at(x, w, bias, &s, co, i, oy, ox);
            }
        }
        snprintf(what, sizeof what, "%s%s forward y (%zu samples)", nm, with_bias ? " +bias" : "", m);
        compare(what, got, NULL, ref, m, TOL_FWD);
        size_t nan = 0;
        for (size_t j = 0; j < ny; j++) nan += isnan(y[j]) != 0;
        snprintf(what, sizeof what, "%s forward wrote every output (%zu NaN left)", nm, nan);
        CHECK(nan == 0, "%s", what);
        nn_free(got);
        free(ref);
    }

    fill_nan(dx, nx);
    fill(dw0, nw, -1, 1);
    fill(db0, s.c_out, -1, 1);
    nn_copy(dw, dw0, nw);
    nn_copy(db, db0, s.c_out);
    nn_conv2d_backward(dx, dw, db, g, x, w, &s);
    {
        size_t cap = (size_t)ni * (samples_per_image + 4), m = 0;
        float *got = nn_alloc(cap);
        double *ref = dalloc(cap);
        for (int t = 0; t < ni; t++) {
            int i = imgs[t];
            for (int q = 0; q < samples_per_image + 4; q++) {
                int ci = rng_int(&R, 0, s.c_in - 1), yy, xx;
                if (q < 4) {
                    yy = (q & 1) ? s.h - 1 : 0;
                    xx = (q & 2) ? s.w - 1 : 0;
                } else {
                    yy = rng_int(&R, 0, s.h - 1);
                    xx = rng_int(&R, 0, s.w - 1);
                }
                got[m] = dx[AT(i, yy, xx, ci, s.h, s.w, s.c_in)];
                ref[m++] = ref_dx_at(g, w, &s, ci, i, yy, xx);
            }
        }
        snprintf(what, sizeof what, "%s backward dx (%zu samples)", nm, m);
        compare(what, got, NULL, ref, m, TOL_GRAD);
        nn_free(got);
        free(ref);
    }
    {
        enum { NW = 12 };
        float got[NW], base[NW];
        double ref[NW];
        int k = s.k;
        for (int q = 0; q < NW; q++) {
            int co = rng_int(&R, 0, s.c_out - 1), ci = rng_int(&R, 0, s.c_in - 1);
            int ky = rng_int(&R, 0, k - 1), kx = rng_int(&R, 0, k - 1);
            if (q == 0) co = ci = ky = kx = 0;
            if (q == 1) {
                co = s.c_out - 1;
                ci = s.c_in - 1;
                ky = kx = k - 1;
            }
            size_t wi = ((size_t)(co * s.c_in + ci) * k + ky) * k + kx;
            got[q] = dw[wi];
            base[q] = dw0[wi];
            ref[q] = ref_dw_at(g, x, &s, co, ci, ky, kx);
        }
        snprintf(what, sizeof what, "%s backward dw (%d samples, added to prefill)", nm, NW);
        compare(what, got, base, ref, NW, TOL_GRAD);
    }
    {
        double *dbr = dalloc(s.c_out);
        size_t per = (size_t)s.n * ho * wo;
        for (int co = 0; co < s.c_out; co++)
            for (size_t j = 0; j < per; j++) dbr[co] += g[j * s.c_out + co];
        snprintf(what, sizeof what, "%s backward db (added to prefill)", nm);
        compare(what, db, db0, dbr, s.c_out, TOL_GRAD);
        free(dbr);
    }
    {
        /* <y - b, g> = <x, dx> over the whole batch; <w, dw> too from zero */
        double a = 0.0, sa = 0.0, sb, sc;
        size_t per = (size_t)s.n * ho * wo;
        for (int co = 0; co < s.c_out; co++)
            for (size_t j = 0; j < per; j++) {
                size_t q = j * s.c_out + co;
                double p = ((double)y[q] - (bias ? bias[co] : 0.0)) * g[q];
                a += p;
                sa += fabs(p);
            }
        double bx = dot(x, dx, nx, &sb);
        nn_zero(dw, nw);
        nn_conv2d_backward(NULL, dw, NULL, g, x, w, &s);
        double cw = dot(w, dw, nw, &sc);
        double scale = fmax(sa, fmax(sb, sc));
        snprintf(what, sizeof what, "%s adjoint <conv(x),g> = <x,dx> over the whole batch", nm);
        compare_scalar(what, a, bx, scale, TOL_ADJ);
        snprintf(what, sizeof what, "%s adjoint <conv(x),g> = <w,dw> (dx NULL, db NULL)", nm);
        compare_scalar(what, a, cw, scale, TOL_ADJ);
    }
    nn_free(x);
    nn_free(w);
    nn_free(b);
    nn_free(g);
    nn_free(y);
    nn_free(dx);
    nn_free(dw);
    nn_free(dw0);
    nn_free(db);
    nn_free(db0);
}

/* ---------------------------------------------------------------------- */
/* group norm                                                              */

/* float64 forward on [n, hw, C]; mean, rstd [n, groups] may be NULL. */
static void ref_gn_forward(double *y, double *mean, double *rstd, const double *x, const double *w, const double *b,
                           int C, int n, int hw, int groups, double eps) {
    int cpg = C / groups;
    for (int i = 0; i < n; i++)
        for (int gq = 0; gq < groups; gq++) {
            double s = 0.0, v = 0.0, cnt = (double)cpg * hw;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) s += x[AT(i, 0, j, c, 1, hw, C)];
            double mu = s / cnt;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) {
                    double d = x[AT(i, 0, j, c, 1, hw, C)] - mu;
                    v += d * d;
                }
            double r = 1.0 / sqrt(v / cnt + eps);
            if (mean) mean[i * groups + gq] = mu;
            if (rstd) rstd[i * groups + gq] = r;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) {
                    size_t k = AT(i, 0, j, c, 1, hw, C);
                    y[k] = (x[k] - mu) * r * w[c] + b[c];
                }
        }
}

/* Analytic gradients of sum(y * g) in float64. */
static void ref_gn_backward(double *dx, double *dw, double *db, const double *g, const double *x, const double *w,
                            int C, int n, int hw, int groups, double eps) {
    int cpg = C / groups;
    double cnt = (double)cpg * hw;
    for (int c = 0; c < C; c++) dw[c] = db[c] = 0.0;
    for (int i = 0; i < n; i++)
        for (int gq = 0; gq < groups; gq++) {
            double s = 0.0, v = 0.0;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) s += x[AT(i, 0, j, c, 1, hw, C)];
            double mu = s / cnt;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) {
                    double d = x[AT(i, 0, j, c, 1, hw, C)] - mu;
                    v += d * d;
                }
            double r = 1.0 / sqrt(v / cnt + eps), mg = 0.0, mgx = 0.0;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) {
                    size_t k = AT(i, 0, j, c, 1, hw, C);
                    double xh = (x[k] - mu) * r;
                    mg += g[k] * w[c];
                    mgx += g[k] * w[c] * xh;
                    dw[c] += g[k] * xh;
                    db[c] += g[k];
                }
            mg /= cnt;
            mgx /= cnt;
            for (int c = gq * cpg; c < (gq + 1) * cpg; c++)
                for (int j = 0; j < hw; j++) {
                    size_t k = AT(i, 0, j, c, 1, hw, C);
                    double xh = (x[k] - mu) * r;
                    dx[k] = r * (g[k] * w[c] - mg - xh * mgx);
                }
        }
}

static double gn_loss(const double *x, const double *w, const double *b, const double *g, double *ybuf, int C, int n,
                      int hw, int groups, double eps) {
    ref_gn_forward(ybuf, NULL, NULL, x, w, b, C, n, hw, groups, eps);
    double s = 0.0;
    for (size_t k = 0; k < (size_t)C * n * hw; k++) s += ybuf[k] * g[k];
    return s;
}

/* Central differences of sum(y * g) with respect to every entry of v. */
static void gn_fd(double *grad, double *v, size_t nv, const double *x, const double *w, const double *b,
                  const double *g, double *ybuf, int C, int n, int hw, int groups, double eps) {
    for (size_t k = 0; k < nv; k++) {
        double keep = v[k], h = 1e-6 * fmax(1.0, fabs(keep));
        v[k] = keep + h;
        double lp = gn_loss(x, w, b, g, ybuf, C, n, hw, groups, eps);
        v[k] = keep - h;
        double lm = gn_loss(x, w, b, g, ybuf, C, n, hw, groups, eps);
        v[k] = keep;
        grad[k] = (lp - lm) / (2 * h);
    }
}

static void to_double(double *d, const float *f, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = f[i];
}

/* x = offset + spread * (per-channel scale) * U(-1, 1) */
static void gn_case(int C, int n, int hw, int groups, double offset, double spread, int with_fd) {
    char nm[128], what[300];
    snprintf(nm, sizeof nm, "group_norm C %d groups %d n %d hw %d offset %g spread %g", C, groups, n, hw, offset,
             spread);
    const float eps = 1e-6f;
    size_t N = (size_t)C * n * hw;
    float *x = nn_alloc(N), *w = nn_alloc(C), *b = nn_alloc(C), *g = nn_alloc(N), *y = nn_alloc(N);
    float *mean = nn_alloc((size_t)n * groups), *rstd = nn_alloc((size_t)n * groups);
    float *dx = nn_alloc(N), *dw = nn_alloc(C), *db = nn_alloc(C), *dw0 = nn_alloc(C), *db0 = nn_alloc(C);
    /* per-channel scale and shift so groups differ */
    for (int c = 0; c < C; c++) {
        double sc = spread * (0.2 + 2.0 * rng_uniform(&R)), sh = offset + spread * 0.5 * (rng_uniform(&R) - 0.5);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < hw; j++) x[AT(i, 0, j, c, 1, hw, C)] = (float)(sh + sc * (2 * rng_uniform(&R) - 1));
    }
    fill(w, C, -1.5, 1.5);
    fill(b, C, -1, 1);
    fill(g, N, -1, 1);

    double *xd = dalloc(N), *wd = dalloc(C), *bd = dalloc(C), *gd = dalloc(N);
    double *yr = dalloc(N), *mr = dalloc((size_t)n * groups), *rr = dalloc((size_t)n * groups);
    double *dxr = dalloc(N), *dwr = dalloc(C), *dbr = dalloc(C);
    to_double(xd, x, N);
    to_double(wd, w, C);
    to_double(bd, b, C);
    to_double(gd, g, N);
    ref_gn_forward(yr, mr, rr, xd, wd, bd, C, n, hw, groups, eps);
    ref_gn_backward(dxr, dwr, dbr, gd, xd, wd, C, n, hw, groups, eps);

    fill_nan(y, N);
    fill_nan(mean, (size_t)n * groups);
    fill_nan(rstd, (size_t)n * groups);
    nn_group_norm_forward(y, mean, rstd, x, w, b, C, n, hw, groups, eps);
    snprintf(what, sizeof what, "%s forward y", nm);
    compare(what, y, NULL, yr, N, TOL_FWD);
    snprintf(what, sizeof what, "%s forward mean", nm);
    compare(what, mean, NULL, mr, (size_t)n * groups, TOL_FWD);
    snprintf(what, sizeof what, "%s forward rstd", nm);
    compare(what, rstd, NULL, rr, (size_t)n * groups, TOL_FWD);
    { /* the fused inference kernel: silu of the same y, bit for bit */
        float *act = nn_alloc(N), *act2 = nn_alloc(N);
        nn_silu_forward(act, y, N);
        fill_nan(act2, N);
        nn_group_norm_silu_forward(act2, mean, rstd, x, w, b, C, n, hw, groups, eps);
        CHECK(memcmp(act, act2, N * sizeof(float)) == 0, "%s group_norm_silu_forward equals silu(group_norm) bitwise",
              nm);
        nn_free(act);
        nn_free(act2);
    }
    { /* chunked sums: the same bits for any thread count */
        float *y1 = nn_alloc(N);
        int threads = nn_threads();
        nn_init(1);
        nn_group_norm_forward(y1, mean, rstd, x, w, b, C, n, hw, groups, eps);
        nn_init(threads);
        CHECK(memcmp(y, y1, N * sizeof(float)) == 0, "%s forward: 1 thread and %d threads give the same bits", nm,
              threads);
        nn_free(y1);
    }

    fill_nan(dx, N);
    fill(dw0, C, -1, 1);
    fill(db0, C, -1, 1);
    nn_copy(dw, dw0, C);
    nn_copy(db, db0, C);
    nn_group_norm_backward(dx, dw, db, g, x, mean, rstd, w, C, n, hw, groups);
    snprintf(what, sizeof what, "%s backward dx vs analytic (overwritten)", nm);
    compare(what, dx, NULL, dxr, N, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward dw vs analytic (added to prefill)", nm);
    compare(what, dw, dw0, dwr, C, TOL_GRAD);
    snprintf(what, sizeof what, "%s backward db vs analytic (added to prefill)", nm);
    compare(what, db, db0, dbr, C, TOL_GRAD);

    if (with_fd) {
        /* the analytic reference itself, and the kernel, against central
         * differences of sum(y * g) in float64 */
        double *fdx = dalloc(N), *fdw = dalloc(C), *fdb = dalloc(C), *ybuf = dalloc(N);
        gn_fd(fdx, xd, N, xd, wd, bd, gd, ybuf, C, n, hw, groups, eps);
        gn_fd(fdw, wd, C, xd, wd, bd, gd, ybuf, C, n, hw, groups, eps);
        gn_fd(fdb, bd, C, xd, wd, bd, gd, ybuf, C, n, hw, groups, eps);
        double e = 0.0, mx = 0.0;
        for (size_t k = 0; k < N; k++) {
            e = fmax(e, fabs(fdx[k] - dxr[k]));
            mx = fmax(mx, fabs(fdx[k]));
        }
        for (int c = 0; c < C; c++) {
            e = fmax(e, fmax(fabs(fdw[c] - dwr[c]), fabs(fdb[c] - dbr[c])));
            mx = fmax(mx, fmax(fabs(fdw[c]), fabs(fdb[c])));
        }
        CHECK(e <= 1e-6 * mx, "%s float64 analytic reference vs finite differences: max err %.3g vs max %.3g", nm, e,
              mx);
        snprintf(what, sizeof what, "%s backward dx vs finite differences", nm);
        compare(what, dx, NULL, fdx, N, TOL_GRAD);
        snprintf(what, sizeof what, "%s backward dw vs finite differences", nm);
        compare(what, dw, dw0, fdw, C, TOL_GRAD);
        snprintf(what, sizeof what, "%s backward db vs finite differences", nm);
        compare(what, db, db0, fdb, C, TOL_GRAD);
        free(fdx);
        free(fdw);
        free(fdb);
        free(ybuf);
    }

    free(xd);
    free(wd);
    free(bd);
    free(gd);
    free(yr);
    free(mr);
    free(rr);
    free(dxr);
    free(dwr);
    free(dbr);
    nn_free(x);
    nn_free(w);
    nn_free(b);
    nn_free(g);
    nn_free(y);
    nn_free(mean);
    nn_free(rstd);
    nn_free(dx);
    nn_free(dw);
    nn_free(db);
    nn_free(dw0);
    nn_free(db0);
}

/* ---------------------------------------------------------------------- */
/* upsampling, transpose, L1 loss                                          */

static void upsample_case(int n, int h, int w, int C) {
    char what[200];
    size_t nx = (size_t)n * h * w * C, ny = 4 * nx;
    float *x = nn_alloc(nx), *y = nn_alloc(ny), *g = nn_alloc(ny), *dx = nn_alloc(nx);
    double *dxr = dalloc(nx);
    fill(x, nx, -1, 1);
    fill(g, ny, -1, 1);
    fill_nan(y, ny);
    nn_upsample2x_forward(y, x, n, h, w, C);
    size_t bad = 0;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < 2 * h; r++)
            for (int c = 0; c < 2 * w; c++)
                for (int k = 0; k < C; k++) {
                    size_t src = AT(i, r / 2, c / 2, k, h, w, C), dst = AT(i, r, c, k, 2 * h, 2 * w, C);
                    if (memcmp(&y[dst], &x[src], sizeof(float))) bad++;
                    dxr[src] += g[dst];
                }
    CHECK(bad == 0, "upsample2x forward n %d %dx%d C %d: exact copy, %zu of %zu outputs differ", n, h, w, C, bad, ny);
    fill_nan(dx, nx);
    nn_upsample2x_backward(dx, g, n, h, w, C);
    snprintf(what, sizeof what, "upsample2x backward n %d %dx%d C %d dx (overwritten) vs 2x2 block sums", n, h, w, C);
    compare(what, dx, NULL, dxr, nx, TOL_FWD);
    double sa, sb, a = dot(y, g, ny, &sa), bb = dot(x, dx, nx, &sb);
    snprintf(what, sizeof what, "upsample2x n %d %dx%d C %d adjoint <up(x),g> = <x,up^T(g)>", n, h, w, C);
    compare_scalar(what, a, bb, fmax(sa, sb), TOL_ADJ);
    nn_free(x);
    nn_free(y);
    nn_free(g);
    nn_free(dx);
    free(dxr);
}

static void transpose_case(int rows, int cols) {
    size_t n = (size_t)rows * cols;
    float *src = nn_alloc(n), *dst = nn_alloc(n);
    fill(src, n, -1, 1);
    fill_nan(dst, n);
    nn_transpose(dst, src, rows, cols);
    size_t bad = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            if (memcmp(&dst[(size_t)c * rows + r], &src[(size_t)r * cols + c], sizeof(float))) bad++;
    CHECK(bad == 0, "transpose %dx%d: exact, %zu of %zu entries wrong", rows, cols, bad, n);
    nn_free(src);
    nn_free(dst);
}

static void abs_error_case(size_t n) {
    float *pred = nn_alloc(n), *target = nn_alloc(n), *dpred = nn_alloc(n), *alias = nn_alloc(n);
    fill(pred, n, -2, 2);
    fill(target, n, -2, 2);
    for (size_t i = 0; i < n; i += 97) target[i] = pred[i]; /* exact ties: gradient 0 */
    double ref = 0.0;
    for (size_t i = 0; i < n; i++) ref += fabs((double)pred[i] - target[i]);

    /* grad_scale 0: value only, dpred untouched */
    for (size_t i = 0; i < n; i++) dpred[i] = 7.0f;
    double v0 = nn_abs_error(dpred, pred, target, n, 0.0f);
    size_t touched = 0;
    for (size_t i = 0; i < n; i++) touched += dpred[i] != 7.0f;
    compare_scalar("abs_error value vs float64 sum (grad_scale 0)", v0, ref, ref, 1e-12);
    CHECK(touched == 0, "abs_error grad_scale 0 leaves dpred untouched (%zu of %zu written), n %zu", touched, n, n);

    const float gs = 0.375f;
    fill_nan(dpred, n);
    double v1 = nn_abs_error(dpred, pred, target, n, gs);
    size_t bad = 0, zeros = 0;
    for (size_t i = 0; i < n; i++) {
        float e = pred[i] - target[i], want = e > 0 ? gs : (e < 0 ? -gs : 0.0f);
        if (!(dpred[i] == want)) bad++;
        zeros += dpred[i] == 0.0f;
    }
    CHECK(v1 == v0, "abs_error value with gradient equals value without (%.17g vs %.17g)", v1, v0);
    CHECK(bad == 0 && zeros > 0,
          "abs_error gradient = %g * sign(pred - target), 0 at ties: %zu of %zu wrong, %zu zeros, n %zu", gs, bad, n,
          zeros, n);

    /* dpred == pred: value from the unmodified pred, gradient in place */
    nn_copy(alias, pred, n);
    double v2 = nn_abs_error(alias, alias, target, n, gs);
    CHECK(v2 == v0, "abs_error aliased dpred == pred: value %.17g vs %.17g", v2, v0);
    CHECK(memcmp(alias, dpred, n * sizeof(float)) == 0,
          "abs_error aliased dpred == pred: gradient identical to the separate-buffer one");

    /* same value for any thread count */
    int threads = nn_threads();
    nn_init(1);
    double v3 = nn_abs_error(dpred, pred, target, n, 0.0f);
    nn_init(threads);
    CHECK(v3 == v0, "abs_error value with 1 thread equals %d threads bitwise (%.17g vs %.17g)", threads, v3, v0);
    nn_free(pred);
    nn_free(target);
    nn_free(dpred);
    nn_free(alias);
}

int main(void) {
    nn_init(2);
    rng_seed(&R, 20240611);

    /* 3x3, stride 1, pad 1 (the VAE's resnet and mid convs) */
    conv_case("3x3",
              (conv_shape){.c_in = 3,
                           .c_out = 4,
                           .n = 3,
                           .h = 7,
                           .w = 5,
                           .k = 3,
                           .stride = 1,
                           .pad_t = 1,
                           .pad_l = 1,
                           .pad_b = 1,
                           .pad_r = 1},
              1);
    conv_case("3x3",
              (conv_shape){.c_in = 5,
                           .c_out = 2,
                           .n = 3,
                           .h = 5,
                           .w = 7,
                           .k = 3,
                           .stride = 1,
                           .pad_t = 1,
                           .pad_l = 1,
                           .pad_b = 1,
                           .pad_r = 1},
              0);
    /* 3x3, stride 2, padding only at bottom and right (diffusers' Downsample2D) */
    conv_case("down",
              (conv_shape){.c_in = 4,
                           .c_out = 6,
                           .n = 3,
                           .h = 7,
                           .w = 5,
                           .k = 3,
                           .stride = 2,
                           .pad_t = 0,
                           .pad_l = 0,
                           .pad_b = 1,
                           .pad_r = 1},
              1);
    conv_case("down",
              (conv_shape){.c_in = 3,
                           .c_out = 5,
                           .n = 3,
                           .h = 8,
                           .w = 6,
                           .k = 3,
                           .stride = 2,
                           .pad_t = 0,
                           .pad_l = 0,
                           .pad_b = 1,
                           .pad_r = 1},
              0);
    /* 1x1 pointwise (a GEMM over the pixels) */
    conv_case("1x1", (conv_shape){.c_in = 5, .c_out = 3, .n = 3, .h = 7, .w = 5, .k = 1, .stride = 1}, 1);
    conv_case("1x1", (conv_shape){.c_in = 4, .c_out = 6, .n = 3, .h = 5, .w = 7, .k = 1, .stride = 1}, 0);
    /* no padding at all with k 3, and a 1x1 with stride 2 (through oneDNN) */
    conv_case("valid", (conv_shape){.c_in = 3, .c_out = 2, .n = 3, .h = 7, .w = 5, .k = 3, .stride = 1}, 1);
    conv_case("1x1s2", (conv_shape){.c_in = 4, .c_out = 3, .n = 3, .h = 7, .w = 5, .k = 1, .stride = 2}, 1);
    /* every padding different, so a swapped pad_t / pad_l or h / w shows */
    conv_case("asym",
              (conv_shape){.c_in = 3,
                           .c_out = 4,
                           .n = 3,
                           .h = 7,
                           .w = 6,
                           .k = 3,
                           .stride = 2,
                           .pad_t = 2,
                           .pad_l = 0,
                           .pad_b = 1,
                           .pad_r = 2},
              1);
    conv_case("asym",
              (conv_shape){.c_in = 4,
                           .c_out = 3,
                           .n = 3,
                           .h = 5,
                           .w = 9,
                           .k = 3,
                           .stride = 1,
                           .pad_t = 0,
                           .pad_l = 2,
                           .pad_b = 2,
                           .pad_r = 1},
              0);

    /* the VAE's first level at 64 px, and a wide pointwise one */
    conv_case_large("3x3 large",
                    (conv_shape){.c_in = 32,
                                 .c_out = 4,
                                 .n = 40,
                                 .h = 64,
                                 .w = 64,
                                 .k = 3,
                                 .stride = 1,
                                 .pad_t = 1,
                                 .pad_l = 1,
                                 .pad_b = 1,
                                 .pad_r = 1},
                    1, 40);
    conv_case_large("1x1 large", (conv_shape){.c_in = 32, .c_out = 8, .n = 70, .h = 64, .w = 64, .k = 1, .stride = 1},
                    1, 20);

    /* bf16 inputs: the VAE's 3x3, downsampling and output convolutions */
    conv_case_bf16("3x3",
                   (conv_shape){.c_in = 16,
                                .c_out = 32,
                                .n = 2,
                                .h = 9,
                                .w = 7,
                                .k = 3,
                                .stride = 1,
                                .pad_t = 1,
                                .pad_l = 1,
                                .pad_b = 1,
                                .pad_r = 1},
                   1);
    conv_case_bf16(
        "down",
        (conv_shape){.c_in = 32, .c_out = 32, .n = 2, .h = 8, .w = 8, .k = 3, .stride = 2, .pad_b = 1, .pad_r = 1}, 1);
    conv_case_bf16("out",
                   (conv_shape){.c_in = 16,
                                .c_out = 3,
                                .n = 3,
                                .h = 6,
                                .w = 5,
                                .k = 3,
                                .stride = 1,
                                .pad_t = 1,
                                .pad_l = 1,
                                .pad_b = 1,
                                .pad_r = 1},
                   0);

    /* fixed weights (inference): Winograd where oneDNN has it (3x3, stride
     * 1, channels in multiples of 16, AVX-512), the direct kernel with its
     * weight reorder kept elsewhere */
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    conv_case_fixed("3x3",
                    (conv_shape){.c_in = 16,
                                 .c_out = 32,
                                 .n = 2,
                                 .h = 9,
                                 .w = 7,
                                 .k = 3,
                                 .stride = 1,
                                 .pad_t = 1,
                                 .pad_l = 1,
                                 .pad_b = 1,
                                 .pad_r = 1},
                    1, avx512);
    conv_case_fixed("3x3",
                    (conv_shape){.c_in = 32,
                                 .c_out = 16,
                                 .n = 3,
                                 .h = 8,
                                 .w = 8,
                                 .k = 3,
                                 .stride = 1,
                                 .pad_t = 1,
                                 .pad_l = 1,
                                 .pad_b = 1,
                                 .pad_r = 1},
                    0, avx512);
    conv_case_fixed(
        "down",
        (conv_shape){.c_in = 32, .c_out = 32, .n = 2, .h = 8, .w = 8, .k = 3, .stride = 2, .pad_b = 1, .pad_r = 1}, 1,
        0);
    conv_case_fixed("in",
                    (conv_shape){.c_in = 3,
                                 .c_out = 32,
                                 .n = 2,
                                 .h = 6,
                                 .w = 5,
                                 .k = 3,
                                 .stride = 1,
                                 .pad_t = 1,
                                 .pad_l = 1,
                                 .pad_b = 1,
                                 .pad_r = 1},
                    1, 0);

    gn_case(6, 2, 10, 3, 0.3, 1.0, 1);
    gn_case(6, 2, 10, 2, 0.3, 1.0, 1);
    gn_case(6, 2, 10, 6, 0.3, 1.0, 1);
    /* variance ~3e-7, comparable to eps 1e-6: eps must be inside the root */
    gn_case(6, 2, 10, 3, 0.0, 1e-3, 1);
    /* VAE-like width with a mean four times the spread */
    gn_case(64, 3, 257, 32, 4.0, 1.0, 0);

    upsample_case(2, 3, 5, 6);
    upsample_case(1, 1, 1, 2);
    upsample_case(3, 4, 2, 17);

    transpose_case(37, 70);
    transpose_case(70, 37);
    transpose_case(1, 33);
    transpose_case(33, 1);
    transpose_case(64, 32);

    abs_error_case(200003); /* several float64 sum blocks */
    abs_error_case(5);

    return CHECK_DONE();
}
