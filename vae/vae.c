/* vae.c - diffusers' AutoencoderKL on the backend interface (vae.h).
 *
 * Encoder: conv_in, down blocks of ResNet blocks (GroupNorm, SiLU, 3x3 conv,
 * twice, plus a 1x1 shortcut when channels change) each but the last ending
 * in a stride-2 conv on the input padded right and bottom by one, a mid block
 * (ResNet, single-head self-attention over the pixels, ResNet), GroupNorm,
 * SiLU, conv_out to mean | logvar, quant_conv. The decoder mirrors it with
 * nearest-2x upsampling followed by a 3x3 conv. GroupNorm eps is 1e-6.
 *
 * Every activation of a pass comes from an arena that is reset at the start
 * of the next pass; a forward pass records in small structs what its
 * backward needs. Maps are [n, H, W, C] (see nn/kernels.h); the interface
 * takes and returns PyTorch's [n, C, H, W]. */
#include "vae.h"
#include "../common/rng.h"
#include "../nn/kernels.h"
#include "../common/dir.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GN_EPS 1e-6f
#define LOGVAR_MIN -30.0f
#define LOGVAR_MAX 20.0f

/* ----------------------------------------------------------------- arena */

typedef struct {
    float *base;
    size_t cap, used;
} arena_block;
typedef struct {
    arena_block *blocks;
    int n, cur;
} arena;

#define ARENA_BLOCK_FLOATS ((size_t)16 << 20)

static float *arena_alloc(arena *a, size_t n) {
    n = (n + 15) & ~(size_t)15; /* 64-byte aligned pieces */
    while (a->cur < a->n && a->blocks[a->cur].cap - a->blocks[a->cur].used < n) a->cur++;
    if (a->cur == a->n) {
        a->blocks = realloc(a->blocks, sizeof(arena_block) * (a->n + 1));
        if (!a->blocks) die("out of memory");
        size_t cap = n > ARENA_BLOCK_FLOATS ? n : ARENA_BLOCK_FLOATS;
        a->blocks[a->n++] = (arena_block){nn_alloc(cap), cap, 0};
    }
    arena_block *b = &a->blocks[a->cur];
    float *p = b->base + b->used;
    b->used += n;
    return p;
}

static void arena_reset(arena *a) {
    for (int i = 0; i < a->n; i++) a->blocks[i].used = 0;
    a->cur = 0;
}

static void arena_free(arena *a) {
    for (int i = 0; i < a->n; i++) nn_free(a->blocks[i].base);
    free(a->blocks);
    memset(a, 0, sizeof *a);
}

/* ------------------------------------------------------------ parameters */

typedef struct {
    size_t w, b;
    int c_in, c_out, k, stride, pad_b;
} conv_p; /* pad_b: 1 = (0,1,0,1) */
typedef struct {
    size_t w, b;
    int C;
} norm_p;
typedef struct {
    norm_p norm1, norm2;
    conv_p conv1, conv2, shortcut;
    int has_shortcut, c_in, c_out;
} resnet_p;
typedef struct {
    norm_p norm;
    size_t wqkv, bqkv, wo, bo;
    int C;
} attn_p;
typedef struct {
    resnet_p *res;
    int n_res, has_sampler;
    conv_p sampler;
} block_p;

typedef struct {
    conv_p conv_in, conv_out;
    block_p blocks[VAE_MAX_BLOCKS];
    resnet_p mid1, mid2;
    attn_p attn;
    norm_p norm_out;
} coder_p;

struct vae_model {
    vae_config cfg;
    param_set ps;
    coder_p enc, dec;
    conv_p quant, post_quant;
    int bf16;     /* convolutions read bf16 (vae_set_bf16) */
    int training; /* the pass keeps what backward needs */
    arena arena;
};

static float *W(vae_model *v, size_t off) { return v->ps.w + off; }
static float *G(vae_model *v, size_t off) { return v->ps.g + off; }

#define NAME_LEN 128

/* Formats a tensor name; names come from the config's shape, so a name that
 * does not fit is a bug, not bad input. */
__attribute__((format(printf, 2, 3))) static void fmt_name(char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(name, NAME_LEN, fmt, ap);
    va_end(ap);
    if (len >= NAME_LEN) die("tensor name too long: %s", name);
}

static conv_p add_conv(vae_model *v, const char *prefix, int c_in, int c_out, int k, int stride, int pad_b) {
    char name[NAME_LEN];
    conv_p c = {0, 0, c_in, c_out, k, stride, pad_b};
    fmt_name(name, "%s.weight", prefix);
    c.w = params_add(&v->ps, name, 4, (int64_t[]){c_out, c_in, k, k}, 1);
    fmt_name(name, "%s.bias", prefix);
    c.b = params_add(&v->ps, name, 1, (int64_t[]){c_out}, 0);
    return c;
}

static norm_p add_norm(vae_model *v, const char *prefix, int C) {
    char name[NAME_LEN];
    norm_p n = {0, 0, C};
    fmt_name(name, "%s.weight", prefix);
    n.w = params_add(&v->ps, name, 1, (int64_t[]){C}, 0);
    fmt_name(name, "%s.bias", prefix);
    n.b = params_add(&v->ps, name, 1, (int64_t[]){C}, 0);
    return n;
}

static resnet_p add_resnet(vae_model *v, const char *prefix, int c_in, int c_out) {
    char name[NAME_LEN];
    resnet_p r = {.c_in = c_in, .c_out = c_out, .has_shortcut = c_in != c_out};
    fmt_name(name, "%s.norm1", prefix);
    r.norm1 = add_norm(v, name, c_in);
    fmt_name(name, "%s.conv1", prefix);
    r.conv1 = add_conv(v, name, c_in, c_out, 3, 1, 0);
    fmt_name(name, "%s.norm2", prefix);
    r.norm2 = add_norm(v, name, c_out);
    fmt_name(name, "%s.conv2", prefix);
    r.conv2 = add_conv(v, name, c_out, c_out, 3, 1, 0);
    if (r.has_shortcut) {
        fmt_name(name, "%s.conv_shortcut", prefix);
        r.shortcut = add_conv(v, name, c_in, c_out, 1, 1, 0);
    }
    return r;
}

/* q, k, v weights adjacent and their biases adjacent: one [3C, C] GEMM. */
static attn_p add_attn(vae_model *v, const char *prefix, int C) {
    char name[NAME_LEN];
    static const char *qkv[] = {"to_q", "to_k", "to_v"};
    attn_p a = {.C = C};
    fmt_name(name, "%s.group_norm", prefix);
    a.norm = add_norm(v, name, C);
    for (int i = 0; i < 3; i++) {
        fmt_name(name, "%s.%s.weight", prefix, qkv[i]);
        size_t off = params_add(&v->ps, name, 2, (int64_t[]){C, C}, 1);
        if (i == 0) a.wqkv = off;
    }
    for (int i = 0; i < 3; i++) {
        fmt_name(name, "%s.%s.bias", prefix, qkv[i]);
        size_t off = params_add(&v->ps, name, 1, (int64_t[]){C}, 0);
        if (i == 0) a.bqkv = off;
    }
    fmt_name(name, "%s.to_out.0.weight", prefix);
    a.wo = params_add(&v->ps, name, 2, (int64_t[]){C, C}, 1);
    fmt_name(name, "%s.to_out.0.bias", prefix);
    a.bo = params_add(&v->ps, name, 1, (int64_t[]){C}, 0);
    return a;
}

static void add_mid(vae_model *v, coder_p *cp, const char *coder, int C) {
    char name[NAME_LEN];
    fmt_name(name, "%s.mid_block.resnets.0", coder);
    cp->mid1 = add_resnet(v, name, C, C);
    if (v->cfg.mid_block_add_attention) {
        fmt_name(name, "%s.mid_block.attentions.0", coder);
        cp->attn = add_attn(v, name, C);
    }
    fmt_name(name, "%s.mid_block.resnets.1", coder);
    cp->mid2 = add_resnet(v, name, C, C);
}

/* Tensor order follows diffusers' state dict: names are what loading uses. */
static void add_encoder(vae_model *v) {
    const vae_config *c = &v->cfg;
    coder_p *e = &v->enc;
    char name[NAME_LEN];
    int nb = c->n_blocks, ch = c->block_out_channels[0];
    e->conv_in = add_conv(v, "encoder.conv_in", c->in_channels, ch, 3, 1, 0);
    for (int b = 0; b < nb; b++) {
        block_p *blk = &e->blocks[b];
        int out = c->block_out_channels[b];
        blk->n_res = c->layers_per_block;
        blk->res = calloc(blk->n_res, sizeof(resnet_p));
        for (int j = 0; j < blk->n_res; j++) {
            fmt_name(name, "encoder.down_blocks.%d.resnets.%d", b, j);
            blk->res[j] = add_resnet(v, name, j == 0 ? ch : out, out);
        }
        ch = out;
        if ((blk->has_sampler = b + 1 < nb)) {
            fmt_name(name, "encoder.down_blocks.%d.downsamplers.0.conv", b);
            blk->sampler = add_conv(v, name, ch, ch, 3, 2, 1);
        }
    }
    add_mid(v, e, "encoder", ch);
    e->norm_out = add_norm(v, "encoder.conv_norm_out", ch);
    e->conv_out = add_conv(v, "encoder.conv_out", ch, 2 * c->latent_channels, 3, 1, 0);
    if (c->use_quant_conv)
        v->quant = add_conv(v, "quant_conv", 2 * c->latent_channels, 2 * c->latent_channels, 1, 1, 0);
}

static void add_decoder(vae_model *v) {
    const vae_config *c = &v->cfg;
    coder_p *d = &v->dec;
    char name[NAME_LEN];
    int nb = c->n_blocks, ch = c->block_out_channels[nb - 1];
    if (c->use_post_quant_conv)
        v->post_quant = add_conv(v, "post_quant_conv", c->latent_channels, c->latent_channels, 1, 1, 0);
    d->conv_in = add_conv(v, "decoder.conv_in", c->latent_channels, ch, 3, 1, 0);
    add_mid(v, d, "decoder", ch);
    for (int b = 0; b < nb; b++) {
        block_p *blk = &d->blocks[b];
        int out = c->block_out_channels[nb - 1 - b];
        blk->n_res = c->layers_per_block + 1;
        blk->res = calloc(blk->n_res, sizeof(resnet_p));
        for (int j = 0; j < blk->n_res; j++) {
            fmt_name(name, "decoder.up_blocks.%d.resnets.%d", b, j);
            blk->res[j] = add_resnet(v, name, j == 0 ? ch : out, out);
        }
        ch = out;
        if ((blk->has_sampler = b + 1 < nb)) {
            fmt_name(name, "decoder.up_blocks.%d.upsamplers.0.conv", b);
            blk->sampler = add_conv(v, name, ch, ch, 3, 1, 0);
        }
    }
    d->norm_out = add_norm(v, "decoder.conv_norm_out", ch);
    d->conv_out = add_conv(v, "decoder.conv_out", ch, c->out_channels, 3, 1, 0);
}

vae_model *vae_create(const vae_config *c) {
    vae_model *v = xcalloc(1, sizeof *v);
    v->cfg = *c;
    add_encoder(v);
    add_decoder(v);
    params_alloc(&v->ps);
    return v;
}

void vae_free(vae_model *v) {
    if (!v) return;
    for (int b = 0; b < v->cfg.n_blocks; b++) {
        free(v->enc.blocks[b].res);
        free(v->dec.blocks[b].res);
    }
    params_free(&v->ps);
    arena_free(&v->arena);
    free(v);
}

const vae_config *vae_cfg(const vae_model *v) { return &v->cfg; }
void vae_set_bf16(vae_model *v, int on) { v->bf16 = on; }
param_set *vae_params(vae_model *v) { return &v->ps; }

void vae_init_weights(vae_model *v, unsigned long long seed) {
    rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < v->ps.n; i++) {
        const param_info *p = &v->ps.info[i];
        float *w = v->ps.w + p->offset;
        int is_norm = strstr(p->name, "norm") != NULL;
        if (is_norm) {
            float value = strstr(p->name, ".weight") ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->numel; k++) w[k] = value;
            continue;
        }
        /* The weight of this bias is the tensor before it (same layer) or,
         * for attention, the matching to_* weight: both give fan_in. */
        const param_info *weight = p->ndim >= 2 ? p : NULL;
        if (!weight) {
            char wname[128];
            snprintf(wname, sizeof wname, "%.*s.weight", (int)(strlen(p->name) - 5), p->name);
            weight = params_find(&v->ps, wname);
        }
        size_t fan_in = weight ? weight->numel / weight->shape[0] : 1;
        double bound = 1.0 / sqrt((double)fan_in);
        for (size_t k = 0; k < p->numel; k++) w[k] = (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
    }
}

/* ----------------------------------------------------------- layer ops */

static conv_shape shape_of(const vae_model *v, const conv_p *c, int n, int h, int w) {
    return (conv_shape){c->c_in,
                        c->c_out,
                        n,
                        h,
                        w,
                        c->k,
                        c->stride,
                        c->k == 3 && !c->pad_b,
                        c->k == 3 && !c->pad_b,
                        c->k == 3 ? 1 : 0,
                        c->k == 3 ? 1 : 0,
                        v->bf16,
                        !v->training};
}

static float *conv_fwd(vae_model *v, const conv_p *c, const float *x, int n, int *h, int *w) {
    conv_shape s = shape_of(v, c, n, *h, *w);
    int ho = conv_out_h(&s), wo = conv_out_w(&s);
    float *y = arena_alloc(&v->arena, (size_t)c->c_out * n * ho * wo);
    nn_conv2d_forward(y, x, W(v, c->w), W(v, c->b), &s);
    *h = ho;
    *w = wo;
    return y;
}

/* Returns dx (NULL when not wanted); h, w are the input's. */
static float *conv_bwd(vae_model *v, const conv_p *c, const float *dy, const float *x, int n, int h, int w,
                       int want_dx) {
    conv_shape s = shape_of(v, c, n, h, w);
    float *dx = want_dx ? arena_alloc(&v->arena, (size_t)c->c_in * n * h * w) : NULL;
    nn_conv2d_backward(dx, G(v, c->w), G(v, c->b), dy, x, W(v, c->w), &s);
    return dx;
}

typedef struct {
    float *y, *mean, *rstd;
} norm_rec;

static norm_rec norm_fwd(vae_model *v, const norm_p *p, const float *x, int n, int hw) {
    int groups = v->cfg.norm_num_groups;
    norm_rec r = {arena_alloc(&v->arena, (size_t)p->C * n * hw), arena_alloc(&v->arena, (size_t)n * groups),
                  arena_alloc(&v->arena, (size_t)n * groups)};
    nn_group_norm_forward(r.y, r.mean, r.rstd, x, W(v, p->w), W(v, p->b), p->C, n, hw, groups, GN_EPS);
    return r;
}

static float *norm_bwd(vae_model *v, const norm_p *p, const norm_rec *r, const float *dy, const float *x, int n,
                       int hw) {
    float *dx = arena_alloc(&v->arena, (size_t)p->C * n * hw);
    nn_group_norm_backward(dx, G(v, p->w), G(v, p->b), dy, x, r->mean, r->rstd, W(v, p->w), p->C, n, hw,
                           v->cfg.norm_num_groups);
    return dx;
}

static float *silu_fwd(vae_model *v, const float *x, size_t len) {
    float *y = arena_alloc(&v->arena, len);
    nn_silu_forward(y, x, len);
    return y;
}

static float *silu_bwd(vae_model *v, const float *dy, const float *x, size_t len) {
    float *dx = arena_alloc(&v->arena, len);
    nn_silu_backward(dx, dy, x, len);
    return dx;
}

/* GroupNorm -> SiLU, as every ResNet half and the output head start. */
typedef struct {
    const float *x;
    norm_rec norm;
    float *act;
} norm_act_rec;

static float *norm_act_fwd(vae_model *v, const norm_p *p, norm_act_rec *r, const float *x, int n, int hw) {
    r->x = x;
    if (!v->training) { /* inference: one fused pass, the norm's output is not kept */
        int groups = v->cfg.norm_num_groups;
        r->act = arena_alloc(&v->arena, (size_t)p->C * n * hw);
        float *stats = arena_alloc(&v->arena, (size_t)2 * n * groups);
        nn_group_norm_silu_forward(r->act, stats, stats + (size_t)n * groups, x, W(v, p->w), W(v, p->b), p->C, n, hw,
                                   groups, GN_EPS);
        return r->act;
    }
    r->norm = norm_fwd(v, p, x, n, hw);
    r->act = silu_fwd(v, r->norm.y, (size_t)p->C * n * hw);
    return r->act;
}

static float *norm_act_bwd(vae_model *v, const norm_p *p, const norm_act_rec *r, const float *dact, int n, int hw) {
    float *dy = silu_bwd(v, dact, r->norm.y, (size_t)p->C * n * hw);
    return norm_bwd(v, p, &r->norm, dy, r->x, n, hw);
}

/* --------------------------------------------------------------- ResNet */

typedef struct {
    const float *x;
    norm_act_rec n1, n2;
    float *h1;
} resnet_rec;

static float *resnet_fwd(vae_model *v, const resnet_p *p, resnet_rec *r, const float *x, int n, int h, int w) {
    int hh = h, ww = w;
    r->x = x;
    float *a1 = norm_act_fwd(v, &p->norm1, &r->n1, x, n, h * w);
    r->h1 = conv_fwd(v, &p->conv1, a1, n, &hh, &ww);
    float *a2 = norm_act_fwd(v, &p->norm2, &r->n2, r->h1, n, h * w);
    hh = h;
    ww = w;
    float *out = conv_fwd(v, &p->conv2, a2, n, &hh, &ww);
    size_t len = (size_t)p->c_out * n * h * w;
    if (p->has_shortcut) {
        hh = h;
        ww = w;
        nn_add(out, conv_fwd(v, &p->shortcut, x, n, &hh, &ww), len);
    } else {
        nn_add(out, x, len);
    }
    return out;
}

static float *resnet_bwd(vae_model *v, const resnet_p *p, const resnet_rec *r, const float *dout, int n, int h, int w) {
    int hw = h * w;
    float *da2 = conv_bwd(v, &p->conv2, dout, r->n2.act, n, h, w, 1);
    float *dh1 = norm_act_bwd(v, &p->norm2, &r->n2, da2, n, hw);
    float *da1 = conv_bwd(v, &p->conv1, dh1, r->n1.act, n, h, w, 1);
    float *dx = norm_act_bwd(v, &p->norm1, &r->n1, da1, n, hw);
    size_t len = (size_t)p->c_in * n * hw;
    if (p->has_shortcut)
        nn_add(dx, conv_bwd(v, &p->shortcut, dout, r->x, n, h, w, 1), len);
    else
        nn_add(dx, dout, len);
    return dx;
}

/* ------------------------------------------------------------ attention */

/* Single-head self-attention over the h*w pixels of each image, reusing the
 * transformer's attention kernel with every key allowed (lo 0, hi hw - 1).
 * The NHWC map is already the [pixels, C] rows the linears take. */
typedef struct {
    const float *x;
    norm_rec norm;
    float *qkv, *att, *lse;
    int32_t *lo, *hi;
} attn_rec;

static float *attn_fwd(vae_model *v, const attn_p *p, attn_rec *r, const float *x, int n, int hw) {
    int C = p->C, N = n * hw;
    r->x = x;
    r->norm = norm_fwd(v, &p->norm, x, n, hw);
    r->qkv = arena_alloc(&v->arena, (size_t)N * 3 * C);
    nn_linear_forward(r->qkv, r->norm.y, W(v, p->wqkv), W(v, p->bqkv), N, C, 3 * C);
    /* int32 key ranges share the float arena: both are 4 bytes. */
    r->lo = (int32_t *)arena_alloc(&v->arena, (size_t)N);
    r->hi = (int32_t *)arena_alloc(&v->arena, (size_t)N);
    for (int i = 0; i < N; i++) {
        r->lo[i] = 0;
        r->hi[i] = hw - 1;
    }
    r->att = arena_alloc(&v->arena, (size_t)N * C);
    r->lse = arena_alloc(&v->arena, (size_t)N);
    nn_attention_forward(r->att, r->lse, r->qkv, r->lo, r->hi, n, hw, 1, C);
    float *out = arena_alloc(&v->arena, (size_t)N * C);
    nn_linear_forward(out, r->att, W(v, p->wo), W(v, p->bo), N, C, C);
    nn_add(out, x, (size_t)N * C);
    return out;
}

static float *attn_bwd(vae_model *v, const attn_p *p, const attn_rec *r, const float *dout, int n, int hw) {
    int C = p->C, N = n * hw;
    float *datt = arena_alloc(&v->arena, (size_t)N * C);
    nn_linear_backward(datt, G(v, p->wo), G(v, p->bo), dout, r->att, W(v, p->wo), N, C, C, 0);
    float *dqkv = arena_alloc(&v->arena, (size_t)N * 3 * C);
    nn_attention_backward(dqkv, datt, r->att, r->lse, r->qkv, r->lo, r->hi, n, hw, 1, C);
    float *dy = arena_alloc(&v->arena, (size_t)N * C);
    nn_linear_backward(dy, G(v, p->wqkv), G(v, p->bqkv), dqkv, r->norm.y, W(v, p->wqkv), N, C, 3 * C, 0);
    float *dx = norm_bwd(v, &p->norm, &r->norm, dy, r->x, n, hw);
    nn_add(dx, dout, (size_t)N * C);
    return dx;
}

/* ---------------------------------------------------- encoder, decoder */

typedef struct {
    int n, h_in, w_in;
    const float *in;
    resnet_rec res[VAE_MAX_RESNETS]; /* blocks' in order, then mid1, mid2 */
    float *sampler_in[VAE_MAX_BLOCKS];
    attn_rec attn;
    float *h_in_mid; /* attention input */
    norm_act_rec out;
    float *quant_in;
} coder_rec;

static float *mid_fwd(vae_model *v, const coder_p *cp, coder_rec *r, int *k, float *h, int n, int hh, int ww) {
    h = resnet_fwd(v, &cp->mid1, &r->res[(*k)++], h, n, hh, ww);
    if (v->cfg.mid_block_add_attention) h = attn_fwd(v, &cp->attn, &r->attn, h, n, hh * ww);
    return resnet_fwd(v, &cp->mid2, &r->res[(*k)++], h, n, hh, ww);
}

static float *mid_bwd(vae_model *v, const coder_p *cp, const coder_rec *r, int *k, float *d, int n, int hh, int ww) {
    d = resnet_bwd(v, &cp->mid2, &r->res[--(*k)], d, n, hh, ww);
    if (v->cfg.mid_block_add_attention) d = attn_bwd(v, &cp->attn, &r->attn, d, n, hh * ww);
    return resnet_bwd(v, &cp->mid1, &r->res[--(*k)], d, n, hh, ww);
}

/* x [n, H, W, in_channels] -> moments [n, H/f, W/f, 2C] (mean | logvar per pixel) */
static float *encoder_fwd(vae_model *v, coder_rec *r, const float *x, int n, int H, int W_) {
    const coder_p *e = &v->enc;
    int hh = H, ww = W_, k = 0;
    r->n = n;
    r->h_in = H;
    r->w_in = W_;
    r->in = x;
    float *h = conv_fwd(v, &e->conv_in, x, n, &hh, &ww);
    for (int b = 0; b < v->cfg.n_blocks; b++) {
        const block_p *blk = &e->blocks[b];
        for (int j = 0; j < blk->n_res; j++) h = resnet_fwd(v, &blk->res[j], &r->res[k++], h, n, hh, ww);
        if (blk->has_sampler) {
            r->sampler_in[b] = h;
            h = conv_fwd(v, &blk->sampler, h, n, &hh, &ww);
        }
    }
    h = mid_fwd(v, e, r, &k, h, n, hh, ww);
    float *a = norm_act_fwd(v, &e->norm_out, &r->out, h, n, hh * ww);
    int h2 = hh, w2 = ww;
    h = conv_fwd(v, &e->conv_out, a, n, &h2, &w2);
    if (v->cfg.use_quant_conv) {
        r->quant_in = h;
        h = conv_fwd(v, &v->quant, h, n, &h2, &w2);
    }
    return h;
}

static void encoder_bwd(vae_model *v, const coder_rec *r, float *d) {
    const coder_p *e = &v->enc;
    int n = r->n, f = vae_downscale(&v->cfg), hh = r->h_in / f, ww = r->w_in / f;
    int k = 0;
    for (int b = 0; b < v->cfg.n_blocks; b++) k += e->blocks[b].n_res;
    k += 2;
    if (v->cfg.use_quant_conv) d = conv_bwd(v, &v->quant, d, r->quant_in, n, hh, ww, 1);
    d = conv_bwd(v, &e->conv_out, d, r->out.act, n, hh, ww, 1);
    d = norm_act_bwd(v, &e->norm_out, &r->out, d, n, hh * ww);
    d = mid_bwd(v, e, r, &k, d, n, hh, ww);
    for (int b = v->cfg.n_blocks - 1; b >= 0; b--) {
        const block_p *blk = &e->blocks[b];
        if (blk->has_sampler) {
            hh *= 2;
            ww *= 2;
            d = conv_bwd(v, &blk->sampler, d, r->sampler_in[b], n, hh, ww, 1);
        }
        for (int j = blk->n_res - 1; j >= 0; j--) d = resnet_bwd(v, &blk->res[j], &r->res[--k], d, n, hh, ww);
    }
    conv_bwd(v, &e->conv_in, d, r->in, n, hh, ww, 0);
}

/* z [n, h, w, C] -> images [n, h*f, w*f, out_channels] */
static float *decoder_fwd(vae_model *v, coder_rec *r, const float *z, int n, int h, int w) {
    const coder_p *dcp = &v->dec;
    int hh = h, ww = w, k = 0;
    r->n = n;
    r->h_in = h;
    r->w_in = w;
    r->in = z;
    if (v->cfg.use_post_quant_conv) {
        r->quant_in = (float *)z;
        z = conv_fwd(v, &v->post_quant, z, n, &hh, &ww);
    }
    r->h_in_mid = (float *)z; /* conv_in's input */
    float *x = conv_fwd(v, &dcp->conv_in, z, n, &hh, &ww);
    x = mid_fwd(v, dcp, r, &k, x, n, hh, ww);
    for (int b = 0; b < v->cfg.n_blocks; b++) {
        const block_p *blk = &dcp->blocks[b];
        for (int j = 0; j < blk->n_res; j++) x = resnet_fwd(v, &blk->res[j], &r->res[k++], x, n, hh, ww);
        if (blk->has_sampler) {
            int C = blk->sampler.c_in;
            float *up = arena_alloc(&v->arena, (size_t)C * n * 4 * hh * ww);
            nn_upsample2x_forward(up, x, n, hh, ww, C);
            hh *= 2;
            ww *= 2;
            r->sampler_in[b] = up;
            x = conv_fwd(v, &blk->sampler, up, n, &hh, &ww);
        }
    }
    float *a = norm_act_fwd(v, &dcp->norm_out, &r->out, x, n, hh * ww);
    return conv_fwd(v, &dcp->conv_out, a, n, &hh, &ww);
}

static float *decoder_bwd(vae_model *v, const coder_rec *r, float *d) {
    const coder_p *dcp = &v->dec;
    int n = r->n, f = vae_downscale(&v->cfg), hh = r->h_in * f, ww = r->w_in * f;
    int k = 2;
    for (int b = 0; b < v->cfg.n_blocks; b++) k += dcp->blocks[b].n_res;
    d = conv_bwd(v, &dcp->conv_out, d, r->out.act, n, hh, ww, 1);
    d = norm_act_bwd(v, &dcp->norm_out, &r->out, d, n, hh * ww);
    for (int b = v->cfg.n_blocks - 1; b >= 0; b--) {
        const block_p *blk = &dcp->blocks[b];
        if (blk->has_sampler) {
            float *dup = conv_bwd(v, &blk->sampler, d, r->sampler_in[b], n, hh, ww, 1);
            hh /= 2;
            ww /= 2;
            d = arena_alloc(&v->arena, (size_t)blk->sampler.c_in * n * hh * ww);
            nn_upsample2x_backward(d, dup, n, hh, ww, blk->sampler.c_in);
        }
        for (int j = blk->n_res - 1; j >= 0; j--) d = resnet_bwd(v, &blk->res[j], &r->res[--k], d, n, hh, ww);
    }
    d = mid_bwd(v, dcp, r, &k, d, n, hh, ww);
    d = conv_bwd(v, &dcp->conv_in, d, r->h_in_mid, n, hh, ww, 1);
    if (v->cfg.use_post_quant_conv) d = conv_bwd(v, &v->post_quant, d, r->quant_in, n, hh, ww, 1);
    return d;
}

/* ------------------------------------------------------------ interface */

/* [n, C, hw] (the interface's NCHW) -> [n, hw, C] (the maps here), and back. */
static void to_nhwc(float *dst, const float *src, int n, int C, size_t hw) {
    for (int i = 0; i < n; i++) nn_transpose(dst + (size_t)i * C * hw, src + (size_t)i * C * hw, C, (int)hw);
}

static void to_nchw(float *dst, const float *src, int n, int C, size_t hw) {
    for (int i = 0; i < n; i++) nn_transpose(dst + (size_t)i * C * hw, src + (size_t)i * C * hw, (int)hw, C);
}

static float clamp_logvar(float x) { return x < LOGVAR_MIN ? LOGVAR_MIN : (x > LOGVAR_MAX ? LOGVAR_MAX : x); }

void vae_encode(vae_model *v, const float *images, int n, int H, int W_, float *mean, float *logvar) {
    const vae_config *c = &v->cfg;
    int C = c->latent_channels, f = vae_downscale(c);
    size_t hw = (size_t)(H / f) * (W_ / f), per = (size_t)C * hw;
    v->training = 0;
    arena_reset(&v->arena);
    float *x = arena_alloc(&v->arena, (size_t)c->in_channels * n * H * W_);
    to_nhwc(x, images, n, c->in_channels, (size_t)H * W_);
    coder_rec *r = xcalloc(1, sizeof *r);
    float *mom = encoder_fwd(v, r, x, n, H, W_);
    float *planes = arena_alloc(&v->arena, 2 * per * n); /* [n, 2C, hw]: mean planes, then logvar's */
    to_nchw(planes, mom, n, 2 * C, hw);
    for (int i = 0; i < n; i++) {
        const float *m = planes + 2 * per * i;
        memcpy(mean + per * i, m, per * sizeof(float));
        for (size_t k = 0; k < per; k++) logvar[per * i + k] = clamp_logvar(m[per + k]);
    }
    free(r);
}

void vae_decode(vae_model *v, const float *latents, int n, int h, int w, float *images) {
    const vae_config *c = &v->cfg;
    int f = vae_downscale(c);
    v->training = 0;
    arena_reset(&v->arena);
    float *z = arena_alloc(&v->arena, (size_t)c->latent_channels * n * h * w);
    to_nhwc(z, latents, n, c->latent_channels, (size_t)h * w);
    coder_rec *r = xcalloc(1, sizeof *r);
    float *x = decoder_fwd(v, r, z, n, h, w);
    to_nchw(images, x, n, c->out_channels, (size_t)h * f * w * f);
    free(r);
}

double vae_psnr(const float *recon, const float *orig, size_t n) {
    /* Pixels in [-1, 1]: the error on the [0, 1] scale is half as large. */
    double mse = nn_sum_squared_diff(recon, orig, n) / (double)n / 4.0;
    return 10.0 * log10(1.0 / (mse > 1e-12 ? mse : 1e-12));
}

vae_losses vae_train_step(vae_model *v, const float *images, const float *eps, int n, int H, int W_, vae_loss_kind loss,
                          float kl_weight, int want_grads) {
    const vae_config *c = &v->cfg;
    int C = c->latent_channels, f = vae_downscale(c), h = H / f, w = W_ / f;
    size_t hw = (size_t)h * w, pixels = (size_t)n * hw, half = (size_t)C * pixels;
    size_t npix = (size_t)c->out_channels * n * H * W_;
    vae_losses out = {0};
    v->training = 1;
    arena_reset(&v->arena);
    float *x = arena_alloc(&v->arena, (size_t)c->in_channels * n * H * W_);
    to_nhwc(x, images, n, c->in_channels, (size_t)H * W_);
    float *e = arena_alloc(&v->arena, half);
    to_nhwc(e, eps, n, C, hw);
    coder_rec *er = xcalloc(1, sizeof *er), *dr = xcalloc(1, sizeof *dr);
    float *mom = encoder_fwd(v, er, x, n, H, W_); /* [pixels, 2C] */
    float *z = arena_alloc(&v->arena, half), *stdv = arena_alloc(&v->arena, half);
    double kl = 0.0;
    for (size_t p = 0; p < pixels; p++)
        for (int ch = 0; ch < C; ch++) {
            size_t k = p * C + ch;
            float mu = mom[2 * p * C + ch], lv = clamp_logvar(mom[(2 * p + 1) * C + ch]);
            stdv[k] = expf(0.5f * lv);
            z[k] = mu + stdv[k] * e[k];
            kl += 0.5 * ((double)mu * mu + (double)stdv[k] * stdv[k] - 1.0 - lv);
        }
    float *recon = decoder_fwd(v, dr, z, n, h, w);
    float *drecon = arena_alloc(&v->arena, npix);
    float scale = want_grads ? 1.0f / (float)npix : 0.0f;
    out.rec_loss = (loss == VAE_LOSS_L1 ? nn_abs_error(drecon, recon, x, npix, scale)
                                        : nn_squared_error(drecon, recon, x, npix, scale)) /
        (double)npix;
    out.kl = kl / (double)npix;
    out.loss = out.rec_loss + kl_weight * out.kl;
    size_t per = npix / n; /* an image is contiguous in NHWC too */
    for (int i = 0; i < n; i++) out.psnr += vae_psnr(recon + i * per, x + i * per, per) / n;
    if (want_grads) {
        float *dz = decoder_bwd(v, dr, drecon);
        float *dmom = arena_alloc(&v->arena, 2 * half);
        float kscale = kl_weight / (float)npix;
        for (size_t p = 0; p < pixels; p++)
            for (int ch = 0; ch < C; ch++) {
                size_t k = p * C + ch, mi = 2 * p * C + ch, li = mi + C;
                float lv = mom[li];
                int inside = lv >= LOGVAR_MIN && lv <= LOGVAR_MAX; /* clamp passes gradient inside */
                dmom[mi] = dz[k] + kscale * mom[mi];
                dmom[li] = inside ? dz[k] * e[k] * 0.5f * stdv[k] + kscale * 0.5f * (stdv[k] * stdv[k] - 1.0f) : 0.0f;
            }
        encoder_bwd(v, er, dmom);
    }
    free(er);
    free(dr);
    return out;
}

/* ------------------------------------------------------------- files */

#define VAE_WEIGHTS "diffusion_pytorch_model.safetensors"

vae_model *vae_load(const char *dir, char *err) {
    char path[4096];
    vae_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (vae_config_load(path, &c, err)) return NULL;
    vae_model *v = vae_create(&c);
    if (params_load_dir(&v->ps, dir, err) == 0) return v;
    vae_free(v);
    return NULL;
}

int vae_save(vae_model *v, const char *dir, char *err) {
    char path[4096];
    if (make_dir(dir, err)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (vae_config_save(path, &v->cfg, err)) return -1;
    snprintf(path, sizeof path, "%s/" VAE_WEIGHTS, dir);
    return params_save(&v->ps, v->ps.w, path, err);
}
