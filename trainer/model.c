/* model.c - the Transfusion model on the backend interface of nn/kernels.h:
 * parameter layout, init, checkpoint I/O, forward and backward.
 * The math is docs/model.md's; this file only sequences kernels. */
#include "block.h"
#include "plan_mirror.h"
#include "../common/error.h"
#include "../common/rng.h"
#include "../nn/backend.h"
#include "../nn/kernels.h"
#include "../common/dir.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LM positions per cross-entropy chunk (model_set_ce_chunk): unless set,
 * as many as keep a chunk's logits within CE_LOGITS values (each chunk
 * reads lm_head's weight twice, and adds into its gradient once), but at
 * least CE_MIN_CHUNK; never more than the plan's positions. At the
 * reference config (vocabulary 8192) one chunk holds every position of a
 * batch of 8 x 256. */
#define CE_LOGITS ((size_t)16 << 20) /* 64 MiB in float32 */
#define CE_MIN_CHUNK 256
static int ce_chunk_set;

void model_set_ce_chunk(int positions) { ce_chunk_set = positions; }

/* ---------------------------------------------------------------- layout */

static void add_param(model *m, const char *name, int64_t rows, int64_t cols, int decay) {
    int64_t shape[2] = {rows, cols};
    params_add(&m->ps, name, cols ? 2 : 1, shape, decay);
}

/* Points the views of `v` into a flat array laid out as m->params. */
static void bind_views(weights *v, float *base, const model *m) {
    const param_info *p = m->ps.info;
    int nl = m->cfg.num_hidden_layers, i = 0;
    v->embed = base + p[i++].offset;
    for (int l = 0; l < nl; l++) {
        layer_weights *lw = &v->layers[l];
        lw->ln1 = base + p[i++].offset;
        lw->wqkv = base + p[i].offset;
        i += 3; /* q, k, v adjacent */
        lw->wo = base + p[i++].offset;
        lw->ln2 = base + p[i++].offset;
        lw->wgu = base + p[i].offset;
        i += 2; /* gate, up adjacent */
        lw->wd = base + p[i++].offset;
    }
    v->norm = base + p[i++].offset;
    v->lm_head = base + p[i++].offset;
    v->patch_in_w = base + p[i++].offset;
    v->patch_in_b = base + p[i++].offset;
    v->pos_embed = base + p[i++].offset;
    v->time0_w = base + p[i++].offset;
    v->time0_b = base + p[i++].offset;
    v->time2_w = base + p[i++].offset;
    v->time2_b = base + p[i++].offset;
    i = (int)(params_find(&m->ps, "image.patch_out.weight") - p); /* past the U-Net's, if any */
    v->patch_out_w = base + p[i++].offset;
    v->patch_out_b = base + p[i++].offset;
}

void model_create(model *m, const model_config *c) {
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    int d = c->hidden_size, f = c->intermediate_size, V = c->vocab_size, nl = c->num_hidden_layers;
    int P = cfg_patch_features(c);
    char name[96];
    add_param(m, "model.embed_tokens.weight", V, d, 0);
    for (int l = 0; l < nl; l++) {
        static const char *proj[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
        static const char *mlp[] = {"gate_proj", "up_proj"};
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add_param(m, name, d, 0, 0);
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", l, proj[k]);
            add_param(m, name, d, d, 1);
        }
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add_param(m, name, d, 0, 0);
        for (int k = 0; k < 2; k++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.%s.weight", l, mlp[k]);
            add_param(m, name, f, d, 1);
        }
        snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", l);
        add_param(m, name, d, f, 1);
    }
    add_param(m, "model.norm.weight", d, 0, 0);
    add_param(m, "lm_head.weight", V, d, 1);
    add_param(m, "image.patch_in.weight", d, P, 1);
    add_param(m, "image.patch_in.bias", d, 0, 0);
    add_param(m, "image.pos_embed", c->max_image_patches, d, 0);
    add_param(m, "image.time_embed.0.weight", d, c->timestep_dim, 1);
    add_param(m, "image.time_embed.0.bias", d, 0, 0);
    add_param(m, "image.time_embed.2.weight", d, d, 1);
    add_param(m, "image.time_embed.2.bias", d, 0, 0);
    if (c->image_unet && !nn_current_backend()->conv2d_forward) /* a backend without convolutions */
        die_input("\"image_encoder\": \"unet\": the %s backend has no convolution kernels yet (use --device cpu)",
                  nn_current_backend()->name);
    if (c->image_unet) unet_create(&m->unet, &m->ps, &m->cfg);
    add_param(m, "image.patch_out.weight", P, d, 1);
    add_param(m, "image.patch_out.bias", P, 0, 0);
    params_alloc(&m->ps);
    m->dev = m->ps;
    m->dev_copies = !nn_host_memory();
    if (m->dev_copies) {
        m->dev.w = nn_alloc_f32(m->ps.numel);
        m->dev.g = nn_alloc_f32(m->ps.numel);
    }
    m->W.layers = xcalloc(nl, sizeof(layer_weights));
    m->G.layers = xcalloc(nl, sizeof(layer_weights));
    bind_views(&m->W, m->dev.w, m);
    bind_views(&m->G, m->dev.g, m);
}

void model_upload_weights(model *m) {
    if (m->dev_copies) nn_upload(m->dev.w, m->ps.w, m->ps.numel);
}

void model_download(model *m, int weights, int grads) {
    if (weights && m->dev_copies) nn_download(m->ps.w, m->dev.w, m->ps.numel);
    if (grads && m->dev_copies) nn_download(m->ps.g, m->dev.g, m->ps.numel);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

void model_init_weights(model *m, unsigned long long seed) {
    rng r;
    rng_seed(&r, seed);
    double out_std = 0.02 / sqrt(2.0 * m->cfg.num_hidden_layers);
    for (int i = 0; i < m->ps.n; i++) {
        const param_info *p = &m->ps.info[i];
        float *w = m->ps.w + p->offset;
        if (ends_with(p->name, "norm.weight") || unet_is_norm_weight(p->name)) {
            for (size_t k = 0; k < p->numel; k++) w[k] = 1.0f;
        } else if (ends_with(p->name, ".bias")) {
            memset(w, 0, p->numel * sizeof(float));
        } else {
            double std = (strstr(p->name, "o_proj") || strstr(p->name, "down_proj")) ? out_std : 0.02;
            for (size_t k = 0; k < p->numel; k++) w[k] = (float)(std * rng_normal(&r));
        }
    }
}

/* ------------------------------------------------------------- workspace */

typedef struct {
    float *x; /* residual stream entering the layer [N, d] */
    float *n1, *qkv, *att, *lse, *x_mid, *n2, *gu, *act;
} layer_acts;

struct workspace {
    int N, n_patch, n_images; /* capacities */
    layer_acts *layers;
    float *x_final, *h; /* last residual, final norm output */
    float *patch_in, *t_h1, *t_a1, *temb;
    /* The U-Net runs on whole images in slots: image_of_slot[s] is the plan
     * image in slot s, and patch q is row slot_of_patch[q] = s * N + k of the
     * slot-ordered arrays (host copies, then the kernels' buffers). */
    int n_slots;
    int32_t *slot_of_patch_h, *image_of_slot_h, *slot_of_patch, *image_of_slot;
    int32_t *patch_of_row_h, *rows_slot; /* sampling: the plan's patch at each row; model_unet_eps's slots */
    float *u_rows, *du_rows, *v_rows;    /* [n_patch, F] in plan order: the deepest map, its gradient, patch_out's */
    float *f_slots, *p_slots;            /* [n_patch, F], [n_patch, P] in slot order */
    float *temb_slots, *dtemb_slots;     /* [n_images, d] in slot order */
    float *pred;                         /* [n_patch, P], then its gradient */
    float *rows;                         /* gathered rows [N, d] */
    float *dh, *dx, *dn, *datt, *dqkv, *dgu, *dact;
    int ce_chunk, ce_cap;         /* positions of a cross-entropy chunk; of its buffers */
    float *logits, *lm_h, *lm_dh; /* one chunk (made by lm_head as needed) */
    plan_mirror *pm;              /* the plan in backend buffers; NULL in host memory */
};

static void workspace_free(workspace *ws, int nl) {
    if (!ws) return;
    for (int l = 0; l < nl; l++) {
        layer_acts *a = &ws->layers[l];
        float *bufs[] = {a->x, a->n1, a->qkv, a->att, a->lse, a->x_mid, a->n2, a->gu, a->act};
        for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    }
    free(ws->layers);
    float *bufs[] = {ws->x_final, ws->h,      ws->patch_in, ws->t_h1,    ws->t_a1,       ws->temb,        ws->u_rows,
                     ws->du_rows, ws->v_rows, ws->f_slots,  ws->p_slots, ws->temb_slots, ws->dtemb_slots, ws->pred,
                     ws->rows,    ws->dh,     ws->dx,       ws->dn,      ws->datt,       ws->dqkv,        ws->dgu,
                     ws->dact,    ws->logits, ws->lm_h,     ws->lm_dh};
    nn_free(ws->slot_of_patch), nn_free(ws->image_of_slot), nn_free(ws->rows_slot);
    free(ws->slot_of_patch_h), free(ws->image_of_slot_h), free(ws->patch_of_row_h);
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    plan_mirror_free(ws->pm);
    free(ws);
}

/* Activations for a plan; reused while the plan's sizes fit. */
static workspace *workspace_for(model *m, const plan *p) {
    workspace *ws = m->ws;
    if (ws && p->N <= ws->N && p->n_patch <= ws->n_patch && p->n_images <= ws->n_images) return ws;
    const model_config *c = &m->cfg;
    int nl = c->num_hidden_layers;
    workspace_free(ws, nl);
    size_t N = p->N, d = c->hidden_size, f = c->intermediate_size, H = c->num_attention_heads;
    size_t np = p->n_patch, ni = p->n_images, P = cfg_patch_dim(c);
    ws = xcalloc(1, sizeof *ws);
    ws->N = p->N;
    ws->n_patch = p->n_patch;
    ws->n_images = p->n_images;
    ws->layers = xcalloc(nl, sizeof(layer_acts));
    for (int l = 0; l < nl; l++) {
        layer_acts *a = &ws->layers[l];
        a->x = nn_alloc(N * d);
        a->n1 = nn_alloc(N * d);
        a->qkv = nn_alloc(N * 3 * d);
        a->att = nn_alloc(N * d);
        a->lse = nn_alloc_f32(N * H);
        a->x_mid = nn_alloc(N * d);
        a->n2 = nn_alloc(N * d);
        a->gu = nn_alloc(N * 2 * f);
        a->act = nn_alloc(N * f);
    }
    ws->x_final = nn_alloc(N * d);
    ws->h = nn_alloc(N * d);
    ws->patch_in = nn_alloc(np * d);
    ws->t_h1 = nn_alloc(ni * d);
    ws->t_a1 = nn_alloc(ni * d);
    ws->temb = nn_alloc(ni * d);
    ws->pred = nn_alloc(np * P);
    if (c->image_unet) {
        size_t F = cfg_patch_features(c);
        ws->u_rows = nn_alloc(np * F), ws->du_rows = nn_alloc(np * F), ws->v_rows = nn_alloc(np * F);
        ws->f_slots = nn_alloc(np * F), ws->p_slots = nn_alloc(np * P);
        ws->temb_slots = nn_alloc(ni * d), ws->dtemb_slots = nn_alloc(ni * d);
        ws->slot_of_patch_h = xmalloc(sizeof(int32_t) * (np + 1)), ws->slot_of_patch = nn_alloc_i32(np + 1);
        ws->image_of_slot_h = xmalloc(sizeof(int32_t) * (ni + 1)), ws->image_of_slot = nn_alloc_i32(ni + 1);
        ws->patch_of_row_h = xmalloc(sizeof(int32_t) * (N + 1)), ws->rows_slot = nn_alloc_i32(np + 1);
    }
    ws->rows = nn_alloc(N * d);
    size_t scratch = N > ni ? N : ni; /* dn, datt also serve the timestep MLP */
    ws->dh = nn_alloc(N * d);
    ws->dx = nn_alloc(N * d);
    ws->dn = nn_alloc(scratch * d);
    ws->datt = nn_alloc(scratch * d);
    ws->dqkv = nn_alloc(N * 3 * d);
    ws->dgu = nn_alloc(N * 2 * f);
    ws->dact = nn_alloc(N * f);
    size_t chunk = ce_chunk_set ? (size_t)ce_chunk_set : CE_LOGITS / c->vocab_size;
    chunk = !ce_chunk_set && chunk < CE_MIN_CHUNK ? CE_MIN_CHUNK : chunk > N ? N : chunk;
    ws->ce_chunk = (int)chunk;
    if (!nn_host_memory()) ws->pm = plan_mirror_create(p->N, p->n_patch, p->n_images, c);
    m->ws = ws;
    return ws;
}

/* The plan the kernels read: p itself, or its copy in backend buffers. */
static const plan *kernel_plan(workspace *ws, const plan *p) { return ws->pm ? plan_mirror_upload(ws->pm, p) : p; }

void model_free(model *m) {
    workspace_free(m->ws, m->cfg.num_hidden_layers);
    unet_free(&m->unet);
    if (m->dev_copies) {
        nn_free(m->dev.w);
        nn_free(m->dev.g);
    }
    params_free(&m->ps);
    free(m->W.layers);
    free(m->G.layers);
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------- forward */

/* The U-Net's slots of a plan (host memory): its images in the order their
 * patches first appear, each of which must have all of its patches (a
 * validated batch cuts no image; an image without patches, such as another
 * sequence's in sampling, takes no slot). */
static void image_slots(const model *m, workspace *ws, const plan *hp) {
    int N = cfg_patches_per_image(&m->cfg), *slot = xmalloc(sizeof(int) * (hp->n_images + 1));
    int *seen = xcalloc((size_t)hp->n_images * N + 1, sizeof(int));
    for (int i = 0; i < hp->n_images; i++) slot[i] = -1;
    ws->n_slots = 0;
    for (int i = 0; i < hp->N; i++) ws->patch_of_row_h[i] = -1;
    for (int q = 0; q < hp->n_patch; q++) {
        ws->patch_of_row_h[hp->patch_row[q]] = q;
        int i = hp->patch_image[q];
        if (slot[i] < 0) ws->image_of_slot_h[slot[i] = ws->n_slots++] = i;
        ws->slot_of_patch_h[q] = slot[i] * N + hp->patch_k[q];
        seen[(size_t)slot[i] * N + hp->patch_k[q]]++;
    }
    for (size_t e = 0; e < (size_t)ws->n_slots * N; e++)
        if (seen[e] != 1)
            die("the U-Net image path needs whole images: image %d has patch %d %d times", ws->image_of_slot_h[e / N],
                (int)(e % N), seen[e]);
    nn_upload_i32(ws->slot_of_patch, ws->slot_of_patch_h, hp->n_patch);
    nn_upload_i32(ws->image_of_slot, ws->image_of_slot_h, ws->n_slots);
    free(seen);
    free(slot);
}

/* The workspace and the kernels' plan for a host plan hp. */
static const plan *begin(model *m, const plan *hp, workspace **out) {
    workspace *ws = *out = workspace_for(m, hp);
    if (m->cfg.image_unet) image_slots(m, ws, hp);
    return kernel_plan(ws, hp);
}

/* Input vectors: token embeddings, patch_in(x_t) + pos_embed[k] + temb(t)
 * (the U-Net's down path in front of patch_in, with it), zeros at pads. */
static void embed_inputs(model *m, const plan *p, workspace *ws, float *x) {
    const model_config *c = &m->cfg;
    const weights *W = &m->W;
    int d = c->hidden_size, F = cfg_patch_features(c);
    nn_zero(x, (size_t)p->N * d);
    nn_gather_rows(ws->rows, W->embed, p->tok_id, p->n_tok, d);
    nn_scatter_rows(x, ws->rows, p->tok_row, p->n_tok, d);

    nn_linear_forward(ws->t_h1, p->time_feat, W->time0_w, W->time0_b, p->n_images, c->timestep_dim, d);
    nn_silu_forward(ws->t_a1, ws->t_h1, (size_t)p->n_images * d);
    nn_linear_forward(ws->temb, ws->t_a1, W->time2_w, W->time2_b, p->n_images, d, d);

    const float *features = p->patch_x;
    if (c->image_unet && p->n_patch) {
        int n = ws->n_slots;
        nn_scatter_rows(ws->p_slots, p->patch_x, ws->slot_of_patch, p->n_patch, cfg_patch_dim(c));
        nn_gather_rows(ws->temb_slots, ws->temb, ws->image_of_slot, n, d);
        unet_down(&m->unet, m->dev.w, ws->temb_slots, ws->p_slots, n, ws->f_slots);
        nn_gather_rows(ws->u_rows, ws->f_slots, ws->slot_of_patch, p->n_patch, F);
        features = ws->u_rows;
    }
    nn_linear_forward(ws->patch_in, features, W->patch_in_w, W->patch_in_b, p->n_patch, F, d);
    nn_gather_rows(ws->rows, W->pos_embed, p->patch_k, p->n_patch, d);
    nn_add(ws->patch_in, ws->rows, (size_t)p->n_patch * d);
    nn_gather_rows(ws->rows, ws->temb, p->patch_image, p->n_patch, d);
    nn_add(ws->patch_in, ws->rows, (size_t)p->n_patch * d);
    nn_scatter_rows(x, ws->patch_in, p->patch_row, p->n_patch, d);
}

void block_qkv(const model_config *c, const layer_weights *w, const float *x, float *n1, float *qkv, const int32_t *pos,
               const float *rope_cos, const float *rope_sin, int N) {
    int d = c->hidden_size, H = c->num_attention_heads, hd = cfg_head_dim(c);
    nn_rmsnorm_linear_forward(qkv, n1, x, w->ln1, w->wqkv, N, d, 3 * d, c->rms_norm_eps);
    nn_rope(qkv, 3 * d, pos, N, 2 * H, hd, rope_cos, rope_sin, 0); /* q and k */
}

void block_out(const model_config *c, const layer_weights *w, const float *x, const float *att, float *x_mid, float *n2,
               float *gu, float *act, float *x_out, int N) {
    int d = c->hidden_size, f = c->intermediate_size;
    nn_linear_add_forward(x_mid, att, w->wo, x, N, d, d);
    nn_rmsnorm_linear_forward(gu, n2, x_mid, w->ln2, w->wgu, N, d, 2 * f, c->rms_norm_eps);
    nn_swiglu_linear_add_forward(x_out, act, gu, w->wd, x_mid, N, f, d);
}

static void layer_forward(const model_config *c, const layer_weights *w, layer_acts *a, float *x_out, const plan *p) {
    block_qkv(c, w, a->x, a->n1, a->qkv, p->pos, p->rope_cos, p->rope_sin, p->N);
    nn_attention_forward(a->att, a->lse, a->qkv, p->lo, p->hi, p->B, p->L, c->num_attention_heads, cfg_head_dim(c));
    block_out(c, w, a->x, a->att, a->x_mid, a->n2, a->gu, a->act, x_out, p->N);
}

static void forward_trunk(model *m, const plan *p, workspace *ws) {
    const model_config *c = &m->cfg;
    int nl = c->num_hidden_layers;
    embed_inputs(m, p, ws, ws->layers[0].x);
    for (int l = 0; l < nl; l++)
        layer_forward(c, &m->W.layers[l], &ws->layers[l], l + 1 < nl ? ws->layers[l + 1].x : ws->x_final, p);
    nn_rmsnorm_forward(ws->h, ws->x_final, m->W.norm, p->N, c->hidden_size, c->rms_norm_eps);
}

void model_embed(model *m, const plan *p, float *x) {
    workspace *ws;
    const plan *kp = begin(m, p, &ws);
    embed_inputs(m, kp, ws, x);
}

const float *model_hidden(model *m, const plan *p) {
    workspace *ws;
    const plan *kp = begin(m, p, &ws);
    forward_trunk(m, kp, ws);
    return ws->h;
}

/* ------------------------------------------------------------------ heads */

/* LM head + cross-entropy over LM targets [from, to) in chunks of
 * ws->ce_chunk positions: the logits of a chunk become their gradient in place and are
 * dropped, so no [positions x vocab] tensor is ever kept. Adds dloss/dh into
 * ws->dh. */
static double lm_head(model *m, const plan *p, workspace *ws, int from, int to, float scale, int want_grads) {
    int d = m->cfg.hidden_size, V = m->cfg.vocab_size;
    int chunk = to - from < ws->ce_chunk ? to - from : ws->ce_chunk;
    if (chunk > ws->ce_cap) { /* sized by the LM positions seen, not the plan's capacity */
        nn_free(ws->logits), nn_free(ws->lm_h), nn_free(ws->lm_dh);
        ws->logits = nn_alloc((size_t)chunk * V);
        ws->lm_h = nn_alloc((size_t)chunk * d);
        ws->lm_dh = nn_alloc((size_t)chunk * d);
        ws->ce_cap = chunk;
    }
    double ce = 0.0;
    for (int c0 = from; c0 < to; c0 += ws->ce_chunk) {
        int n = to - c0 < ws->ce_chunk ? to - c0 : ws->ce_chunk;
        nn_gather_rows(ws->lm_h, ws->h, p->lm_row + c0, n, d);
        nn_linear_forward(ws->logits, ws->lm_h, m->W.lm_head, NULL, n, d, V);
        ce += nn_cross_entropy(ws->logits, p->lm_target + c0, n, V, want_grads ? scale : 0.0f);
        if (!want_grads) continue;
        nn_linear_backward(ws->lm_dh, m->G.lm_head, NULL, ws->logits, ws->lm_h, m->W.lm_head, n, d, V, 0);
        nn_scatter_add_rows(ws->dh, ws->lm_dh, p->lm_row + c0, n, d);
    }
    return ce;
}

/* The U-Net's predicted noise pred [n, P] of n patches from their final
 * hidden rows h [n, d]: patch_out into v_rows, into their slots (slot[i]:
 * backend buffer), the up path, and back out. Slots no patch fills get
 * zeros: images never mix in the U-Net. */
static void unet_eps(model *m, workspace *ws, const float *h, const int32_t *slot, int n, float *pred) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, P = cfg_patch_dim(c), F = cfg_patch_features(c), N = cfg_patches_per_image(c);
    nn_linear_forward(ws->v_rows, h, m->W.patch_out_w, m->W.patch_out_b, n, d, F);
    nn_zero(ws->f_slots, (size_t)ws->n_slots * N * F);
    nn_scatter_rows(ws->f_slots, ws->v_rows, slot, n, F);
    unet_up(&m->unet, m->dev.w, ws->f_slots, ws->p_slots);
    nn_gather_rows(pred, ws->p_slots, slot, n, P);
}

/* The U-Net's predictions of every patch of the plan, into ws->pred in
 * plan order (ws->rows keeps the patches' hidden rows for backward). */
static void unet_predict(model *m, const plan *p, workspace *ws) {
    nn_gather_rows(ws->rows, ws->h, p->patch_row, p->n_patch, m->cfg.hidden_size);
    unet_eps(m, ws, ws->rows, ws->slot_of_patch, p->n_patch, ws->pred);
}

/* Backward of unet_predict: dpred in ws->pred -> dloss/dh added into ws->dh. */
static void unet_predict_backward(model *m, const plan *p, workspace *ws) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, P = cfg_patch_dim(c), F = cfg_patch_features(c), np = p->n_patch;
    nn_scatter_rows(ws->p_slots, ws->pred, ws->slot_of_patch, np, P);
    unet_up_backward(&m->unet, m->dev.w, m->dev.g, ws->p_slots, ws->f_slots);
    nn_gather_rows(ws->v_rows, ws->f_slots, ws->slot_of_patch, np, F);
    nn_linear_backward(ws->dn, m->G.patch_out_w, m->G.patch_out_b, ws->v_rows, ws->rows, m->W.patch_out_w, np, d, F, 0);
    nn_scatter_add_rows(ws->dh, ws->dn, p->patch_row, np, d);
}

/* patch_out head + squared error against eps over patches [from, to). Adds
 * dloss/dh into ws->dh. With the U-Net, ws->pred must hold unet_predict's
 * predictions (which need whole images, so they are made for every patch at
 * once), and gradients are taken over every patch. */
static double diffusion_head(model *m, const plan *p, workspace *ws, int from, int to, float scale, int want_grads) {
    int d = m->cfg.hidden_size, P = cfg_patch_dim(&m->cfg), n = to - from;
    float *pred = ws->pred;
    if (m->cfg.image_unet) {
        if (from) { /* rows [from, to) to the front of p_slots (free after unet_predict's gather): a row
                     * offset as a column offset, since pointer arithmetic in an activation buffer is
                     * invalid where activations are bfloat16 */
            nn_copy_columns(ws->p_slots, P, 0, ws->pred, P, from * P, (size_t)n, P);
            pred = ws->p_slots;
        }
    } else {
        nn_gather_rows(ws->rows, ws->h, p->patch_row + from, n, d);
        nn_linear_forward(pred, ws->rows, m->W.patch_out_w, m->W.patch_out_b, n, d, P);
    }
    double se = nn_squared_error(pred, pred, p->patch_eps + (size_t)from * P, (size_t)n * P, want_grads ? scale : 0.0f);
    if (!want_grads) return se;
    /* pred now holds dpred; ws->dn is free scratch here. */
    if (m->cfg.image_unet) {
        unet_predict_backward(m, p, ws);
    } else {
        nn_linear_backward(ws->dn, m->G.patch_out_w, m->G.patch_out_b, pred, ws->rows, m->W.patch_out_w, n, d, P, 0);
        nn_scatter_add_rows(ws->dh, ws->dn, p->patch_row + from, n, d);
    }
    return se;
}

void model_unet_eps(model *m, const float *h, const int32_t *plan_rows, int n, float *pred) {
    workspace *ws = m->ws;
    int32_t *slot = xmalloc(sizeof(int32_t) * (n + 1));
    for (int i = 0; i < n; i++) {
        int q = ws && plan_rows[i] >= 0 && plan_rows[i] < ws->N ? ws->patch_of_row_h[plan_rows[i]] : -1;
        if (q < 0) die("model_unet_eps: row %d of the last plan is not a patch", plan_rows[i]);
        slot[i] = ws->slot_of_patch_h[q];
    }
    nn_upload_i32(ws->rows_slot, slot, n);
    free(slot);
    unet_eps(m, ws, h, ws->rows_slot, n, pred);
}

/* --------------------------------------------------------------- backward */

/* On entry ws->dx holds dloss/d(layer output); on exit dloss/d(layer input). */
static void layer_backward(const model_config *c, const layer_weights *w, layer_weights *g, const layer_acts *a,
                           workspace *ws, const plan *p) {
    int N = p->N, d = c->hidden_size, f = c->intermediate_size;
    int H = c->num_attention_heads, hd = cfg_head_dim(c);
    float eps = c->rms_norm_eps;
    nn_linear_backward(ws->dact, g->wd, NULL, ws->dx, a->act, w->wd, N, f, d, 0);
    nn_swiglu_backward(ws->dgu, ws->dact, a->gu, N, f);
    nn_linear_backward(ws->dn, g->wgu, NULL, ws->dgu, a->n2, w->wgu, N, d, 2 * f, 0);
    nn_rmsnorm_backward(ws->dx, g->ln2, ws->dn, a->x_mid, w->ln2, N, d, eps);

    nn_linear_backward(ws->datt, g->wo, NULL, ws->dx, a->att, w->wo, N, d, d, 0);
    nn_attention_backward(ws->dqkv, ws->datt, a->att, a->lse, a->qkv, p->lo, p->hi, p->B, p->L, H, hd);
    nn_rope(ws->dqkv, 3 * d, p->pos, N, 2 * H, hd, p->rope_cos, p->rope_sin, 1);
    nn_linear_backward(ws->dn, g->wqkv, NULL, ws->dqkv, a->n1, w->wqkv, N, d, 3 * d, 0);
    nn_rmsnorm_backward(ws->dx, g->ln1, ws->dn, a->x, w->ln1, N, d, eps);
}

/* Gradients of the input vectors: embeddings, patch_in, pos_embed, the
 * timestep MLP. dx is dloss/d(input vectors). */
static void embed_backward(model *m, const plan *p, workspace *ws) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, F = cfg_patch_features(c), ni = p->n_images;
    weights *G = &m->G;
    nn_gather_rows(ws->rows, ws->dx, p->tok_row, p->n_tok, d);
    nn_scatter_add_rows(G->embed, ws->rows, p->tok_id, p->n_tok, d);

    float *dpatch = ws->rows;
    nn_gather_rows(dpatch, ws->dx, p->patch_row, p->n_patch, d);
    int unet = c->image_unet && p->n_patch;
    nn_linear_backward(unet ? ws->du_rows : NULL, G->patch_in_w, G->patch_in_b, dpatch, unet ? ws->u_rows : p->patch_x,
                       m->W.patch_in_w, p->n_patch, F, d, 0);
    nn_scatter_add_rows(G->pos_embed, dpatch, p->patch_k, p->n_patch, d);
    float *dtemb = ws->dn, *da1 = ws->datt; /* free scratch here */
    nn_zero(dtemb, (size_t)ni * d);
    nn_scatter_add_rows(dtemb, dpatch, p->patch_image, p->n_patch, d);
    if (unet) {
        nn_scatter_rows(ws->f_slots, ws->du_rows, ws->slot_of_patch, p->n_patch, F);
        nn_zero(ws->dtemb_slots, (size_t)ws->n_slots * d);
        unet_down_backward(&m->unet, m->dev.w, m->dev.g, ws->f_slots, ws->dtemb_slots);
        nn_scatter_add_rows(dtemb, ws->dtemb_slots, ws->image_of_slot, ws->n_slots, d);
    }
    nn_linear_backward(da1, G->time2_w, G->time2_b, dtemb, ws->t_a1, m->W.time2_w, ni, d, d, 0);
    nn_silu_backward(da1, da1, ws->t_h1, (size_t)ni * d);
    nn_linear_backward(NULL, G->time0_w, G->time0_b, da1, p->time_feat, m->W.time0_w, ni, c->timestep_dim, d, 0);
}

loss_sums model_step(model *m, const plan *p, double norm_lm, double norm_latent, int want_grads) {
    const model_config *c = &m->cfg;
    int d = c->hidden_size, nl = c->num_hidden_layers;
    workspace *ws;
    p = begin(m, p, &ws);
    loss_sums s = {0, 0, p->n_lm, (long)p->n_patch * cfg_patch_dim(c)};
    forward_trunk(m, p, ws);
    if (want_grads) nn_zero(ws->dh, (size_t)p->N * d);
    float lm_scale = norm_lm > 0 ? (float)(1.0 / norm_lm) : 0.0f;
    float diff_scale = norm_latent > 0 ? (float)(c->lambda_diffusion / norm_latent) : 0.0f;
    s.ce_sum = lm_head(m, p, ws, 0, p->n_lm, lm_scale, want_grads);
    if (c->image_unet && p->n_patch) unet_predict(m, p, ws);
    s.se_sum = diffusion_head(m, p, ws, 0, p->n_patch, diff_scale, want_grads);
    if (!want_grads) return s;

    nn_zero(ws->dx, (size_t)p->N * d);
    nn_rmsnorm_backward(ws->dx, m->G.norm, ws->dh, ws->x_final, m->W.norm, p->N, d, c->rms_norm_eps);
    /* Flat layout: embed_tokens | layers 0..nl-1 | norm | lm_head | image.*
     * (model_create). Layer l's range is final once its backward is done; the
     * norm and lm_head go with the last layer, the ends after embed_backward. */
    size_t heads_end = (size_t)(m->G.lm_head - m->dev.g) + (size_t)c->vocab_size * d, next = heads_end;
    for (int l = nl - 1; l >= 0; l--) {
        layer_backward(c, &m->W.layers[l], &m->G.layers[l], &ws->layers[l], ws, p);
        size_t start = (size_t)(m->G.layers[l].ln1 - m->dev.g);
        if (m->grad_ready.ready) m->grad_ready.ready(m->grad_ready.ctx, start, next - start);
        next = start;
    }
    embed_backward(m, p, ws);
    if (m->grad_ready.ready) {
        m->grad_ready.ready(m->grad_ready.ctx, 0, next);
        m->grad_ready.ready(m->grad_ready.ctx, heads_end, m->ps.numel - heads_end);
    }
    return s;
}

/* The end of the run of entries of rows[from..n) in the same batch row as
 * rows[from] (the plan's index lists increase, so a row's entries are one run). */
static int row_run_end(const int32_t *rows, int from, int n, int L) {
    int to = from;
    while (to < n && rows[to] / L == rows[from] / L) to++;
    return to;
}

void model_row_losses(model *m, const plan *hp, double *ce, double *se) {
    workspace *ws;
    const plan *p = begin(m, hp, &ws);
    forward_trunk(m, p, ws);
    for (int r = 0; r < hp->B; r++) ce[r] = se[r] = 0.0;
    for (int a = 0, b; a < hp->n_lm; a = b) {
        b = row_run_end(hp->lm_row, a, hp->n_lm, hp->L);
        ce[hp->lm_row[a] / hp->L] = lm_head(m, p, ws, a, b, 0.0f, 0);
    }
    if (m->cfg.image_unet && hp->n_patch) unet_predict(m, p, ws);
    for (int a = 0, b; a < hp->n_patch; a = b) {
        b = row_run_end(hp->patch_row, a, hp->n_patch, hp->L);
        se[hp->patch_row[a] / hp->L] = diffusion_head(m, p, ws, a, b, 0.0f, 0);
    }
}

size_t model_activation_floats(const model *m, const plan *p) {
    const model_config *c = &m->cfg;
    size_t N = p->N, d = c->hidden_size, f = c->intermediate_size, H = c->num_attention_heads;
    size_t per_layer = N * (8 * d + 3 * f + H); /* x n1 qkv att x_mid n2 | gu act | lse */
    return c->num_hidden_layers * per_layer + 2 * N * d + (size_t)p->n_patch * d + unet_activation_floats(&m->unet);
}

double model_step_flops(const model *m, const plan *p) {
    const model_config *c = &m->cfg;
    double d = c->hidden_size, f = c->intermediate_size, P = cfg_patch_features(c);
    double per_pos = c->num_hidden_layers * (4 * d * d + 3 * d * f);
    double pairs = 0; /* allowed (query, key) pairs */
    for (int i = 0; i < p->N; i++) pairs += p->hi[i] - p->lo[i] + 1;
    double flops = 6.0 * p->N * per_pos;
    flops += 6.0 * p->n_lm * d * c->vocab_size;
    flops += 6.0 * p->n_patch * 2 * d * P + 6.0 * p->n_images * (c->timestep_dim + d) * d;
    flops += 12.0 * d * pairs * c->num_hidden_layers;
    if (c->image_unet) flops += unet_flops(&m->unet, p->n_images);
    return flops;
}

/* ------------------------------------------------------------ checkpoints */

int model_save(const model *m, const char *dir, char *err) {
    char path[4096];
    if (make_dir(dir, err)) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config_save(path, &m->cfg, err)) return -1;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return params_save(&m->ps, m->ps.w, path, err);
}

int model_load(model *m, const char *dir, char *err) {
    char path[4096];
    model_config c;
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config_load(path, &c, err)) return -1;
    model_create(m, &c);
    if (params_load_dir(&m->ps, dir, err) == 0) {
        model_upload_weights(m);
        return 0;
    }
    model_free(m);
    return -1;
}
