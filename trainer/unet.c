/* unet.c - the U-Net image path (unet.h, docs/model.md "The U-Net image
 * path"): diffusers' UNet2DModel layout with scale-shift (AdaGN) timestep
 * conditioning, the transformer in place of its middle block. Maps are NHWC
 * (nn/kernels.h); the kernels are the VAE's (convolution, GroupNorm,
 * upsampling, SiLU) plus kernels.def's U-Net entries.
 *
 * The down path's outputs are the skips S[0..K): conv_in, then every ResNet
 * block and downsampler in order. The up path pops them newest first, one
 * per ResNet block, so each skip's gradient from the up path is written
 * once, and the down path's backward adds its own. */
#include "unet.h"
#include "../common/error.h"
#include "../nn/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GN_EPS 1e-5f

enum { NORM1, CONV1 = 2, TEMB = 4, NORM2 = 6, CONV2 = 8, SHORT = 10 };

/* What backward needs of one ResNet block. */
typedef struct {
    const float *x; /* the input (the down path's previous map, or cat) */
    float *cat;     /* up path: [map, skip] */
    float *n1, *a1, *h1, *n2, *m2, *a2, *ss, *out;
    float *mean1, *rstd1, *mean2, *rstd2;
} block_acts;

struct unet_acts {
    int n;                        /* images the buffers hold */
    size_t kept;                  /* floats of the buffers backward reads (not the scratch) */
    int n_down;                   /* images of the last unet_down */
    float *xt, *s_temb, *te, *dte; /* the latents as a map; temb, silu(temb), dte */
    float **skip, **dskip;   /* [K] */
    block_acts *down, *up;   /* as u->down, u->up */
    float **up_in, **up_out; /* [levels - 1]: upsampled map, after its convolution */
    float *v, *no, *ao, *eps, *mean_o, *rstd_o;
    float *s1, *s2, *s3, *s4, *dss; /* backward scratch */
};

static int skips(const unet *u) { return 1 + u->levels * u->r + u->levels - 1; }
static int chan(const unet *u, int level) { return u->c->unet_channels[level]; }

static size_t add(param_set *ps, const char *name, int ndim, int64_t a, int64_t b, int64_t k, int decay) {
    int64_t shape[4] = {a, b, k, k};
    return params_add(ps, name, ndim, shape, decay);
}

/* name.weight [out, in, k, k] and name.bias [out]. */
static void add_conv(param_set *ps, size_t off[2], const char *name, int c_in, int c_out, int k) {
    char full[112];
    snprintf(full, sizeof full, "%.100s.weight", name);
    off[0] = add(ps, full, 4, c_out, c_in, k, 1);
    snprintf(full, sizeof full, "%.100s.bias", name);
    off[1] = add(ps, full, 1, c_out, 0, 0, 0);
}

static void add_norm(param_set *ps, size_t off[2], const char *name, int ch) {
    char full[112];
    snprintf(full, sizeof full, "%.100s.weight", name);
    off[0] = add(ps, full, 1, ch, 0, 0, 0);
    snprintf(full, sizeof full, "%.100s.bias", name);
    off[1] = add(ps, full, 1, ch, 0, 0, 0);
}

static void add_resnet(param_set *ps, unet_resnet *b, const char *prefix, int d) {
    char name[112];
    int cin = b->c_in + b->c_skip;
    snprintf(name, sizeof name, "%.80s.norm1", prefix);
    add_norm(ps, &b->t[NORM1], name, cin);
    snprintf(name, sizeof name, "%.80s.conv1", prefix);
    add_conv(ps, &b->t[CONV1], name, cin, b->c_out, 3);
    snprintf(name, sizeof name, "%.80s.time_emb_proj.weight", prefix);
    b->t[TEMB] = add(ps, name, 2, 2 * b->c_out, d, 0, 1);
    snprintf(name, sizeof name, "%.80s.time_emb_proj.bias", prefix);
    b->t[TEMB + 1] = add(ps, name, 1, 2 * b->c_out, 0, 0, 0);
    snprintf(name, sizeof name, "%.80s.norm2", prefix);
    add_norm(ps, &b->t[NORM2], name, b->c_out);
    snprintf(name, sizeof name, "%.80s.conv2", prefix);
    add_conv(ps, &b->t[CONV2], name, b->c_out, b->c_out, 3);
    b->shortcut = cin != b->c_out;
    if (b->shortcut) {
        snprintf(name, sizeof name, "%.80s.conv_shortcut", prefix);
        add_conv(ps, &b->t[SHORT], name, cin, b->c_out, 1);
    }
}

void unet_create(unet *u, param_set *ps, const model_config *c) {
    memset(u, 0, sizeof *u);
    u->c = c;
    u->levels = c->unet_levels;
    u->r = c->unet_layers_per_block;
    u->d = c->hidden_size;
    int L = u->levels, r = u->r;
    u->down = xcalloc((size_t)L * r, sizeof(unet_resnet));
    u->up = xcalloc((size_t)L * (r + 1), sizeof(unet_resnet));
    u->down_conv = xcalloc(L, sizeof *u->down_conv);
    u->up_conv = xcalloc(L, sizeof *u->up_conv);
    char name[112];
    add_conv(ps, u->conv_in, "image.unet.conv_in", c->latent_channels, chan(u, 0), 3);
    int *skip_ch = xcalloc(skips(u), sizeof(int)), k = 0, ch = chan(u, 0), side = c->latent_size;
    skip_ch[k++] = ch;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < r; j++) {
            unet_resnet *b = &u->down[i * r + j];
            *b = (unet_resnet){.c_in = ch, .c_out = chan(u, i), .side = side};
            snprintf(name, sizeof name, "image.unet.down_blocks.%d.resnets.%d", i, j);
            add_resnet(ps, b, name, u->d);
            skip_ch[k++] = ch = chan(u, i);
        }
        if (i < L - 1) {
            snprintf(name, sizeof name, "image.unet.down_blocks.%d.downsamplers.0.conv", i);
            add_conv(ps, u->down_conv[i], name, ch, ch, 3);
            skip_ch[k++] = ch;
            side /= 2;
        }
    }
    for (int j = 0; j < L; j++) {
        int o = chan(u, L - 1 - j);
        for (int q = 0; q <= r; q++) {
            unet_resnet *b = &u->up[j * (r + 1) + q];
            *b = (unet_resnet){.c_in = ch, .c_skip = skip_ch[--k], .c_out = o, .side = side};
            snprintf(name, sizeof name, "image.unet.up_blocks.%d.resnets.%d", j, q);
            add_resnet(ps, b, name, u->d);
            ch = o;
        }
        if (j < L - 1) {
            snprintf(name, sizeof name, "image.unet.up_blocks.%d.upsamplers.0.conv", j);
            add_conv(ps, u->up_conv[j], name, ch, ch, 3);
            side *= 2;
        }
    }
    free(skip_ch);
    add_norm(ps, u->norm_out, "image.unet.conv_norm_out", ch);
    add_conv(ps, u->conv_out, "image.unet.conv_out", ch, c->latent_channels, 3);
}

int unet_is_norm_weight(const char *name) {
    if (strncmp(name, "image.unet.", 11)) return 0;
    return strstr(name, ".norm1.weight") || strstr(name, ".norm2.weight") || strstr(name, "conv_norm_out.weight");
}

/* ---------------------------------------------------------------- buffers */

static void free_acts(unet *u) {
    unet_acts *a = u->acts;
    if (!a) return;
    int nd = u->levels * u->r, nu = u->levels * (u->r + 1);
    for (int b = 0; b < nd + nu; b++) {
        block_acts *x = b < nd ? &a->down[b] : &a->up[b - nd];
        float *bufs[] = {x->cat, x->n1, x->a1, x->h1, x->n2, x->m2, x->a2, x->ss, x->mean1, x->rstd1, x->mean2,
                         x->rstd2};
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) nn_free(bufs[i]);
        if (b >= nd) nn_free(x->out); /* a down block's out is its skip */
    }
    for (int k = 0; k < skips(u); k++) nn_free(a->skip[k]), nn_free(a->dskip[k]);
    for (int l = 0; l + 1 < u->levels; l++) nn_free(a->up_in[l]), nn_free(a->up_out[l]);
    float *bufs[] = {a->xt, a->s_temb, a->te, a->dte, a->v,  a->no,  a->ao, a->eps,
                     a->mean_o, a->rstd_o, a->s1, a->s2, a->s3, a->s4, a->dss};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) nn_free(bufs[i]);
    free(a->skip), free(a->dskip), free(a->down), free(a->up), free(a->up_in), free(a->up_out);
    free(a);
    u->acts = NULL;
}

void unet_free(unet *u) {
    free_acts(u);
    free(u->down), free(u->up), free(u->down_conv), free(u->up_conv);
    memset(u, 0, sizeof *u);
}

static float *kept(unet_acts *a, size_t n) {
    a->kept += n;
    return nn_alloc(n);
}

static void alloc_block(unet_acts *a, block_acts *x, const unet_resnet *b, int n, int groups, int up) {
    size_t M = (size_t)n * b->side * b->side, cin = b->c_in + b->c_skip;
    if (up) x->cat = kept(a, M * cin);
    x->n1 = kept(a, M * cin), x->a1 = kept(a, M * cin);
    x->h1 = kept(a, M * b->c_out), x->n2 = kept(a, M * b->c_out), x->m2 = kept(a, M * b->c_out);
    x->a2 = kept(a, M * b->c_out), x->ss = kept(a, (size_t)n * 2 * b->c_out);
    x->mean1 = nn_alloc_f32((size_t)n * groups), x->rstd1 = nn_alloc_f32((size_t)n * groups);
    x->mean2 = nn_alloc_f32((size_t)n * groups), x->rstd2 = nn_alloc_f32((size_t)n * groups);
    if (up) x->out = kept(a, M * b->c_out);
}

/* Buffers for n images; kept while n fits. */
static unet_acts *acts_for(unet *u, int n) {
    if (u->acts && u->acts->n >= n) return u->acts;
    free_acts(u);
    const model_config *c = u->c;
    int L = u->levels, r = u->r, G = c->unet_groups, K = skips(u), nd = L * r, nu = L * (r + 1);
    unet_acts *a = u->acts = xcalloc(1, sizeof *a);
    a->n = n;
    size_t big = (size_t)n * c->latent_size * c->latent_size, widest = c->latent_channels; /* pixels, channels */
    for (int i = 0; i < L; i++)
        if ((size_t)2 * chan(u, i) > widest) widest = 2 * chan(u, i);
    a->xt = kept(a, big * c->latent_channels);
    a->s_temb = kept(a, (size_t)n * u->d), a->te = kept(a, (size_t)n * u->d), a->dte = nn_alloc((size_t)n * u->d);
    a->down = xcalloc(nd, sizeof(block_acts));
    a->up = xcalloc(nu, sizeof(block_acts));
    a->skip = xcalloc(K, sizeof(float *));
    a->dskip = xcalloc(K, sizeof(float *));
    for (int b = 0; b < nd; b++) alloc_block(a, &a->down[b], &u->down[b], n, G, 0);
    for (int b = 0; b < nu; b++) alloc_block(a, &a->up[b], &u->up[b], n, G, 1);
    /* Skips: conv_in's at full size, then each block's and downsampler's. */
    int k = 0, side = c->latent_size;
    size_t *skip_floats = xcalloc(K, sizeof(size_t));
    skip_floats[k++] = big * chan(u, 0);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < r; j++) skip_floats[k++] = (size_t)n * side * side * chan(u, i);
        if (i < L - 1) side /= 2, skip_floats[k++] = (size_t)n * side * side * chan(u, i);
    }
    for (int q = 0; q < K; q++) a->skip[q] = kept(a, skip_floats[q]);
    for (int q = 0; q < K; q++) a->dskip[q] = nn_alloc(skip_floats[q]);
    for (int b = 0; b < nd; b++) a->down[b].out = a->skip[1 + b + b / r]; /* block b's output skip */
    a->up_in = xcalloc(L, sizeof(float *));
    a->up_out = xcalloc(L, sizeof(float *));
    for (int l = 0; l + 1 < L; l++) {
        int s = u->up[(l + 1) * (r + 1)].side, o = chan(u, L - 1 - l);
        a->up_in[l] = kept(a, (size_t)n * s * s * o), a->up_out[l] = kept(a, (size_t)n * s * s * o);
    }
    int last = chan(u, L - 1), c0 = chan(u, 0), g = c->latent_size >> (L - 1);
    a->v = kept(a, (size_t)n * g * g * last);
    a->no = kept(a, big * c0), a->ao = kept(a, big * c0), a->eps = kept(a, big * c->latent_channels);
    a->mean_o = nn_alloc_f32((size_t)n * G), a->rstd_o = nn_alloc_f32((size_t)n * G);
    a->s1 = nn_alloc(big * widest), a->s2 = nn_alloc(big * widest), a->s3 = nn_alloc(big * widest);
    a->s4 = nn_alloc(big * widest);
    free(skip_floats);
    a->dss = nn_alloc_f32((size_t)n * 2 * widest);
    return a;
}

/* ---------------------------------------------------------------- kernels */

static conv_shape shape3(int c_in, int c_out, int n, int side, int stride) {
    return (conv_shape){.c_in = c_in, .c_out = c_out, .n = n, .h = side, .w = side, .k = 3, .stride = stride,
                        .pad_t = 1, .pad_l = 1, .pad_b = 1, .pad_r = 1};
}

#define T(base, off) ((base) + (off))

static void resnet_forward(const unet *u, const float *W, const unet_resnet *b, block_acts *x, const float *in,
                           const float *te, int n) {
    int G = u->c->unet_groups, cin = b->c_in + b->c_skip, co = b->c_out, hw = b->side * b->side;
    size_t M = (size_t)n * hw;
    x->x = in;
    nn_group_norm_forward(x->n1, x->mean1, x->rstd1, in, T(W, b->t[NORM1]), T(W, b->t[NORM1 + 1]), cin, n, hw, G,
                          GN_EPS);
    nn_silu_forward(x->a1, x->n1, M * cin);
    conv_shape s1 = shape3(cin, co, n, b->side, 1), s2 = shape3(co, co, n, b->side, 1);
    nn_conv2d_forward(x->h1, x->a1, T(W, b->t[CONV1]), T(W, b->t[CONV1 + 1]), &s1);
    nn_linear_forward(x->ss, te, T(W, b->t[TEMB]), T(W, b->t[TEMB + 1]), n, u->d, 2 * co);
    nn_group_norm_forward(x->n2, x->mean2, x->rstd2, x->h1, T(W, b->t[NORM2]), T(W, b->t[NORM2 + 1]), co, n, hw, G,
                          GN_EPS);
    nn_scale_shift_forward(x->m2, x->n2, x->ss, n, hw, co);
    nn_silu_forward(x->a2, x->m2, M * co);
    nn_conv2d_forward(x->out, x->a2, T(W, b->t[CONV2]), T(W, b->t[CONV2 + 1]), &s2);
    if (b->shortcut) {
        float *sc = u->acts->s1;
        nn_linear_forward(sc, in, T(W, b->t[SHORT]), T(W, b->t[SHORT + 1]), (int)M, cin, co);
        nn_add(x->out, sc, M * co);
    } else {
        nn_add(x->out, in, M * co);
    }
}

/* dout -> dx (overwritten); parameter gradients into G, dte +=. */
static void resnet_backward(const unet *u, const float *W, float *G, const unet_resnet *b, const block_acts *x,
                            const float *dout, float *dx, int n) {
    unet_acts *a = u->acts;
    int Gr = u->c->unet_groups, cin = b->c_in + b->c_skip, co = b->c_out, hw = b->side * b->side;
    size_t M = (size_t)n * hw;
    conv_shape s1 = shape3(cin, co, n, b->side, 1), s2 = shape3(co, co, n, b->side, 1);
    if (b->shortcut)
        nn_linear_backward(dx, T(G, b->t[SHORT]), T(G, b->t[SHORT + 1]), dout, x->x, T(W, b->t[SHORT]), (int)M, cin,
                           co, 0);
    else
        nn_copy(dx, dout, M * co);
    nn_conv2d_backward(a->s1, T(G, b->t[CONV2]), T(G, b->t[CONV2 + 1]), dout, x->a2, T(W, b->t[CONV2]), &s2);
    nn_silu_backward(a->s1, a->s1, x->m2, M * co);
    nn_zero(a->dss, (size_t)n * 2 * co);
    nn_scale_shift_backward(a->s1, a->dss, a->s1, x->n2, x->ss, n, hw, co);
    nn_linear_backward(a->dte, T(G, b->t[TEMB]), T(G, b->t[TEMB + 1]), a->dss, a->te, T(W, b->t[TEMB]), n, u->d,
                       2 * co, 1);
    nn_group_norm_backward(a->s2, T(G, b->t[NORM2]), T(G, b->t[NORM2 + 1]), a->s1, x->h1, x->mean2, x->rstd2,
                           T(W, b->t[NORM2]), co, n, hw, Gr);
    nn_conv2d_backward(a->s1, T(G, b->t[CONV1]), T(G, b->t[CONV1 + 1]), a->s2, x->a1, T(W, b->t[CONV1]), &s1);
    nn_silu_backward(a->s1, a->s1, x->n1, M * cin);
    nn_group_norm_backward(a->s2, T(G, b->t[NORM1]), T(G, b->t[NORM1 + 1]), a->s1, x->x, x->mean1, x->rstd1,
                           T(W, b->t[NORM1]), cin, n, hw, Gr);
    nn_add(dx, a->s2, M * cin);
}

/* ------------------------------------------------------------------ paths */

void unet_down(unet *u, const float *W, const float *temb, const float *patch_x, int n, float *rows) {
    const model_config *c = u->c;
    unet_acts *a = acts_for(u, n);
    int L = u->levels, r = u->r, p = c->patch_size, g = c->latent_size / p, k = 0;
    a->n_down = n;
    nn_copy(a->s_temb, temb, (size_t)n * u->d);
    nn_silu_forward(a->te, temb, (size_t)n * u->d);
    nn_patches_to_map(a->xt, patch_x, n, g, p, c->latent_channels);
    conv_shape s = shape3(c->latent_channels, chan(u, 0), n, c->latent_size, 1);
    nn_conv2d_forward(a->skip[k++], a->xt, T(W, u->conv_in[0]), T(W, u->conv_in[1]), &s);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < r; j++, k++)
            resnet_forward(u, W, &u->down[i * r + j], &a->down[i * r + j], a->skip[k - 1], a->te, n);
        if (i < L - 1) {
            const unet_resnet *b = &u->down[i * r + r - 1];
            s = shape3(b->c_out, b->c_out, n, b->side, 2);
            nn_conv2d_forward(a->skip[k], a->skip[k - 1], T(W, u->down_conv[i][0]), T(W, u->down_conv[i][1]), &s);
            k++;
        }
    }
    nn_copy(rows, a->skip[k - 1], (size_t)n * g * g * chan(u, L - 1));
}

void unet_up(unet *u, const float *W, const float *rows, float *pred) {
    const model_config *c = u->c;
    unet_acts *a = u->acts;
    int L = u->levels, r = u->r, K = skips(u), p = c->patch_size, g = c->latent_size / p, n = a->n_down;
    const float *map = a->v;
    nn_copy(a->v, rows, (size_t)n * g * g * chan(u, L - 1));
    for (int j = 0, k = K; j < L; j++) {
        for (int q = 0; q <= r; q++) {
            const unet_resnet *b = &u->up[j * (r + 1) + q];
            block_acts *x = &a->up[j * (r + 1) + q];
            size_t M = (size_t)n * b->side * b->side;
            int cin = b->c_in + b->c_skip;
            nn_copy_columns(x->cat, cin, 0, map, b->c_in, 0, M, b->c_in);
            nn_copy_columns(x->cat, cin, b->c_in, a->skip[--k], b->c_skip, 0, M, b->c_skip);
            resnet_forward(u, W, b, x, x->cat, a->te, n);
            map = x->out;
        }
        if (j < L - 1) {
            const unet_resnet *b = &u->up[j * (r + 1) + r];
            nn_upsample2x_forward(a->up_in[j], map, n, b->side, b->side, b->c_out);
            conv_shape s = shape3(b->c_out, b->c_out, n, 2 * b->side, 1);
            nn_conv2d_forward(a->up_out[j], a->up_in[j], T(W, u->up_conv[j][0]), T(W, u->up_conv[j][1]), &s);
            map = a->up_out[j];
        }
    }
    int c0 = chan(u, 0), hw = c->latent_size * c->latent_size;
    nn_group_norm_forward(a->no, a->mean_o, a->rstd_o, map, T(W, u->norm_out[0]), T(W, u->norm_out[1]), c0, n, hw,
                          c->unet_groups, GN_EPS);
    nn_silu_forward(a->ao, a->no, (size_t)n * hw * c0);
    conv_shape s = shape3(c0, c->latent_channels, n, c->latent_size, 1);
    nn_conv2d_forward(a->eps, a->ao, T(W, u->conv_out[0]), T(W, u->conv_out[1]), &s);
    nn_map_to_patches(pred, a->eps, n, g, p, c->latent_channels);
}

void unet_up_backward(unet *u, const float *W, float *G, const float *dpred, float *drows) {
    const model_config *c = u->c;
    unet_acts *a = u->acts;
    int L = u->levels, r = u->r, n = a->n_down, p = c->patch_size, g = c->latent_size / p;
    int c0 = chan(u, 0), hw = c->latent_size * c->latent_size;
    nn_zero(a->dte, (size_t)n * u->d);
    float *dmap = a->s3, *dcat = a->s4; /* the current map's gradient; a block input's */
    nn_patches_to_map(dmap, dpred, n, g, p, c->latent_channels);
    conv_shape s = shape3(c0, c->latent_channels, n, c->latent_size, 1);
    nn_conv2d_backward(a->s1, T(G, u->conv_out[0]), T(G, u->conv_out[1]), dmap, a->ao, T(W, u->conv_out[0]), &s);
    nn_silu_backward(a->s1, a->s1, a->no, (size_t)n * hw * c0);
    nn_group_norm_backward(dmap, T(G, u->norm_out[0]), T(G, u->norm_out[1]), a->s1, a->up[L * (r + 1) - 1].out,
                           a->mean_o, a->rstd_o, T(W, u->norm_out[0]), c0, n, hw, c->unet_groups);
    /* Backward meets the blocks in the reverse of their order, so the t-th
     * block met popped skip t. */
    for (int j = L - 1, k = 0; j >= 0; j--) {
        if (j < L - 1) {
            const unet_resnet *b = &u->up[j * (r + 1) + r];
            conv_shape su = shape3(b->c_out, b->c_out, n, 2 * b->side, 1);
            nn_conv2d_backward(a->s1, T(G, u->up_conv[j][0]), T(G, u->up_conv[j][1]), dmap, a->up_in[j],
                               T(W, u->up_conv[j][0]), &su);
            nn_upsample2x_backward(dmap, a->s1, n, b->side, b->side, b->c_out);
        }
        for (int q = r; q >= 0; q--, k++) {
            const unet_resnet *b = &u->up[j * (r + 1) + q];
            size_t M = (size_t)n * b->side * b->side;
            int cin = b->c_in + b->c_skip;
            resnet_backward(u, W, G, b, &a->up[j * (r + 1) + q], dmap, dcat, n);
            nn_copy_columns(a->dskip[k], b->c_skip, 0, dcat, cin, b->c_in, M, b->c_skip);
            nn_copy_columns(dmap, b->c_in, 0, dcat, cin, 0, M, b->c_in);
        }
    }
    nn_copy(drows, dmap, (size_t)n * g * g * chan(u, L - 1));
}

void unet_down_backward(unet *u, const float *W, float *G, const float *drows, float *dtemb) {
    const model_config *c = u->c;
    unet_acts *a = u->acts;
    int L = u->levels, r = u->r, n = a->n_down, K = skips(u), g = c->latent_size / c->patch_size;
    /* The deepest map fed the transformer as well as the first up block. */
    nn_add(a->dskip[K - 1], drows, (size_t)n * g * g * chan(u, L - 1));
    for (int i = L - 1, k = K - 1; i >= 0; i--) {
        if (i < L - 1) { /* the downsampler: skip k from skip k - 1 */
            const unet_resnet *b = &u->down[i * r + r - 1];
            conv_shape s = shape3(b->c_out, b->c_out, n, b->side, 2);
            nn_conv2d_backward(a->s3, T(G, u->down_conv[i][0]), T(G, u->down_conv[i][1]), a->dskip[k],
                               a->skip[k - 1], T(W, u->down_conv[i][0]), &s);
            nn_add(a->dskip[k - 1], a->s3, (size_t)n * b->side * b->side * b->c_out);
            k--;
        }
        for (int j = r - 1; j >= 0; j--, k--) {
            const unet_resnet *b = &u->down[i * r + j];
            resnet_backward(u, W, G, b, &a->down[i * r + j], a->dskip[k], a->s3, n);
            nn_add(a->dskip[k - 1], a->s3, (size_t)n * b->side * b->side * b->c_in);
        }
    }
    conv_shape s = shape3(c->latent_channels, chan(u, 0), n, c->latent_size, 1);
    nn_conv2d_backward(NULL, T(G, u->conv_in[0]), T(G, u->conv_in[1]), a->dskip[0], a->xt, T(W, u->conv_in[0]), &s);
    /* te = silu(temb) fed every block's time_emb_proj */
    nn_silu_backward(a->s1, a->dte, a->s_temb, (size_t)n * u->d);
    nn_add(dtemb, a->s1, (size_t)n * u->d);
}

/* Multiply-adds of a convolution's forward pass. */
static double conv_macs(int c_in, int c_out, int side_out, int k, int n) {
    return (double)n * side_out * side_out * c_in * c_out * k * k;
}

static double resnet_macs(const unet_resnet *b, int d, int n) {
    int cin = b->c_in + b->c_skip;
    return conv_macs(cin, b->c_out, b->side, 3, n) + conv_macs(b->c_out, b->c_out, b->side, 3, n) +
           (b->shortcut ? conv_macs(cin, b->c_out, b->side, 1, n) : 0) + (double)n * d * 2 * b->c_out;
}

double unet_flops(const unet *u, int n) {
    const model_config *c = u->c;
    int L = u->levels, r = u->r;
    double macs = conv_macs(c->latent_channels, chan(u, 0), c->latent_size, 3, n) +
                  conv_macs(chan(u, 0), c->latent_channels, c->latent_size, 3, n);
    for (int b = 0; b < L * r; b++) macs += resnet_macs(&u->down[b], u->d, n);
    for (int b = 0; b < L * (r + 1); b++) macs += resnet_macs(&u->up[b], u->d, n);
    for (int i = 0; i + 1 < L; i++) {
        const unet_resnet *down = &u->down[i * r + r - 1], *up = &u->up[i * (r + 1) + r];
        macs += conv_macs(down->c_out, down->c_out, down->side / 2, 3, n);
        macs += conv_macs(up->c_out, up->c_out, 2 * up->side, 3, n);
    }
    return 6.0 * macs; /* 2 per multiply-add, forward and the two products of backward */
}

size_t unet_activation_floats(const unet *u) { return u->acts ? u->acts->kept : 0; }
