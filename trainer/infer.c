/* infer.c - generation forwards with a KV cache, or by recomputing every
 * sequence from its start (infer.h). The blocks are model.c's (block_qkv,
 * block_out, model_embed); only the attention differs: new rows attend over
 * the cache with nn_attention_rows.
 *
 * It runs on any backend: what the kernels read (activations, the cache,
 * positions, key ranges, slots, row indices, RoPE tables) lies in backend
 * buffers, and no pointer arithmetic happens inside an activation buffer
 * (bfloat16 on a GPU): the cache is one buffer per layer, rows are picked
 * with gathers and scatters by index. Host copies of the row indices serve
 * the host logic; logits and predicted noise come back with nn_download. */
#include "infer.h"
#include "block.h"
#include "diffusion.h"
#include "../common/error.h"
#include "../nn/kernels.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ rows */

static void grow(void **p, int *cap, int need, size_t size) {
    if (need <= *cap) return;
    int n = *cap ? *cap : 64;
    while (n < need) n *= 2;
    void *q = realloc(*p, size * n);
    if (!q) die("out of memory");
    *p = q;
    *cap = n;
}

void infer_rows_clear(infer_rows *r) { r->n = r->n_img = 0; }

void infer_rows_free(infer_rows *r) {
    free(r->seq);
    free(r->mod);
    free(r->tok);
    free(r->img);
    free(r->k);
    free(r->x);
    free(r->t);
    memset(r, 0, sizeof *r);
}

static int add_row(infer_rows *r, int seq, int mod, int32_t tok, int img, int k) {
    if (r->n == r->cap) {
        int cap = r->cap;
        int32_t **cols[] = {&r->seq, &r->mod, &r->tok, &r->img, &r->k};
        for (int c = 0; c < 5; c++) {
            cap = r->cap;
            grow((void **)cols[c], &cap, r->n + 1, sizeof(int32_t));
        }
        r->cap = cap;
    }
    r->seq[r->n] = seq;
    r->mod[r->n] = mod;
    r->tok[r->n] = tok;
    r->img[r->n] = img;
    r->k[r->n] = k;
    return r->n++;
}

void infer_rows_token(infer_rows *r, int seq, int32_t tok) { add_row(r, seq, MOD_TOKEN, tok, -1, 0); }

int infer_rows_image(infer_rows *r, int seq, const float *x, int t, const model_config *c) {
    r->lat = c->latent_channels * c->latent_size * c->latent_size;
    if (r->n_img == r->img_cap) {
        int cap = r->img_cap;
        grow((void **)&r->x, &cap, r->n_img + 1, sizeof(float) * r->lat);
        cap = r->img_cap;
        grow((void **)&r->t, &cap, r->n_img + 1, sizeof(int32_t));
        r->img_cap = cap;
    }
    memcpy(r->x + (size_t)r->n_img * r->lat, x, sizeof(float) * r->lat);
    r->t[r->n_img] = t;
    for (int k = 0; k < cfg_patches_per_image(c); k++) add_row(r, seq, MOD_PATCH, 0, r->n_img, k);
    return r->n_img++;
}

/* ---------------------------------------------------------------- state */

struct infer {
    model *m;
    int S, cap, recompute, rows_cap;
    int32_t *len; /* [S] committed positions */
    /* Per layer [S * cap, 3d]: the q | k | v rows of the committed positions,
     * whole (the layout nn_attention_rows reads; q unused), at slot s * cap + pos. */
    float **kv;
    float *rope_cos, *rope_sin; /* [cap, head_dim / 2] float32 */
    /* What each sequence holds, for recompute: per position token, modality
     * and image (an index into hist_x / hist_t). */
    int32_t *hist_tok, *hist_mod, *hist_img;
    float *hist_x;
    int32_t *hist_t;
    int hist_n, hist_x_cap, hist_t_cap;
    /* per new row, host: position, key range and cache slot, offset in its
     * sequence, and the row indices of a gather */
    int32_t *pos, *lo, *hi, *slot, *off, *idx;
    int32_t *d_pos, *d_lo, *d_hi, *d_slot, *d_idx; /* what the kernels read of them */
    float *x, *x_next, *n1, *qkv, *att, *x_mid, *n2, *gu, *act, *h;
    float *out;      /* [n, max(V, patch_dim)] float32: logits or predicted noise */
    float *out_host; /* [n, patch_dim]: the predicted noise, downloaded */
    int32_t *prow;   /* [n]: each row's row in the last model plan (the U-Net's eps) */
};

infer *infer_create(model *m, int S, int cap, int recompute) {
    const model_config *c = &m->cfg;
    infer *f = xcalloc(1, sizeof *f);
    f->m = m;
    f->S = S;
    f->cap = cap;
    f->recompute = recompute;
    f->len = xcalloc(S, sizeof(int32_t));
    size_t slots = (size_t)S * cap, half = cfg_head_dim(c) / 2;
    if (!recompute) { /* recompute runs the training forward, with its own plan */
        f->kv = xcalloc(c->num_hidden_layers, sizeof(float *));
        for (int l = 0; l < c->num_hidden_layers; l++) f->kv[l] = nn_alloc(slots * 3 * c->hidden_size);
        float *cs = xmalloc(sizeof(float) * cap * half), *sn = xmalloc(sizeof(float) * cap * half);
        rope_tables(cs, sn, cap, c);
        f->rope_cos = nn_alloc_f32((size_t)cap * half);
        f->rope_sin = nn_alloc_f32((size_t)cap * half);
        nn_upload(f->rope_cos, cs, (size_t)cap * half);
        nn_upload(f->rope_sin, sn, (size_t)cap * half);
        free(cs);
        free(sn);
    }
    f->hist_tok = xcalloc(slots, sizeof(int32_t));
    f->hist_mod = xcalloc(slots, sizeof(int32_t));
    f->hist_img = xcalloc(slots, sizeof(int32_t));
    return f;
}

static void free_row_buffers(infer *f) {
    free(f->pos);
    free(f->lo);
    free(f->hi);
    free(f->slot);
    free(f->off);
    free(f->idx);
    free(f->out_host);
    free(f->prow);
    void *bufs[] = {f->d_pos, f->d_lo, f->d_hi,  f->d_slot, f->d_idx, f->x,   f->x_next, f->n1,
                    f->qkv,   f->att,  f->x_mid, f->n2,     f->gu,    f->act, f->h,      f->out};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
}

void infer_free(infer *f) {
    if (!f) return;
    free_row_buffers(f);
    for (int l = 0; f->kv && l < f->m->cfg.num_hidden_layers; l++) nn_free(f->kv[l]);
    free(f->kv);
    nn_free(f->rope_cos);
    nn_free(f->rope_sin);
    free(f->len);
    free(f->hist_tok);
    free(f->hist_mod);
    free(f->hist_img);
    free(f->hist_x);
    free(f->hist_t);
    free(f);
}

int infer_len(const infer *f, int seq) { return f->len[seq]; }

static void ensure_rows(infer *f, int n) {
    if (n <= f->rows_cap) return;
    free_row_buffers(f);
    const model_config *c = &f->m->cfg;
    size_t N = n, d = c->hidden_size, ff = c->intermediate_size, Pd = cfg_patch_dim(c);
    size_t head = (size_t)c->vocab_size > Pd ? (size_t)c->vocab_size : Pd;
    int32_t **host[] = {&f->pos, &f->lo, &f->hi, &f->slot, &f->off, &f->idx, &f->prow};
    for (size_t k = 0; k < sizeof host / sizeof *host; k++) *host[k] = xmalloc(sizeof(int32_t) * N);
    int32_t **dev[] = {&f->d_pos, &f->d_lo, &f->d_hi, &f->d_slot, &f->d_idx};
    for (size_t k = 0; k < sizeof dev / sizeof *dev; k++) *dev[k] = nn_alloc_i32(N);
    f->x = nn_alloc(N * d);
    f->x_next = nn_alloc(N * d);
    f->n1 = nn_alloc(N * d);
    f->qkv = nn_alloc(N * 3 * d);
    f->att = nn_alloc(N * d);
    f->x_mid = nn_alloc(N * d);
    f->n2 = nn_alloc(N * d);
    f->gu = nn_alloc(N * 2 * ff);
    f->act = nn_alloc(N * ff);
    f->h = nn_alloc(N * d);
    f->out = nn_alloc_f32(N * head);
    f->out_host = xmalloc(sizeof(float) * N * Pd);
    f->rows_cap = n;
}

/* Each row's position in its sequence and the last position it may see
 * (itself for a token, its image's last patch for a patch, or itself with
 * causal image attention); a patch needs room for its whole image. */
static int place_rows(infer *f, const infer_rows *r, char *err) {
    int P = cfg_patches_per_image(&f->m->cfg);
    for (int i = 0; i < r->n; i++) {
        int s = r->seq[i];
        if (s < 0 || s >= f->S) die("infer: row %d: sequence %d of %d", i, s, f->S);
        f->off[i] = (i > 0 && r->seq[i - 1] == s) ? f->off[i - 1] + 1 : 0;
        if (f->off[i] == 0)
            for (int j = 0; j < i; j++)
                if (r->seq[j] == s) die("infer: the rows of sequence %d are not consecutive", s);
        f->pos[i] = f->len[s] + f->off[i];
        int last = r->mod[i] == MOD_PATCH ? f->pos[i] - r->k[i] + P - 1 : f->pos[i];
        if (last >= f->cap)
            return set_error(err, "sequence %d needs %d positions, more than the context of %d", s, last + 1, f->cap);
        if (f->m->cfg.image_causal) last = f->pos[i];
        f->slot[i] = s * f->cap + f->pos[i];
        f->lo[i] = s * f->cap;
        f->hi[i] = s * f->cap + last;
    }
    return 0;
}

/* The embedding plan of the new rows (model_embed reads tokens, patches,
 * images and their timesteps from it). */
static void rows_plan(plan *p, const infer_rows *r, const model_config *c) {
    int Pd = cfg_patch_dim(c), T = c->timestep_dim;
    memset(p, 0, sizeof *p);
    p->B = 1;
    p->L = p->N = r->n;
    p->n_images = r->n_img;
    p->tok_row = xmalloc(sizeof(int32_t) * (r->n + 1));
    p->tok_id = xmalloc(sizeof(int32_t) * (r->n + 1));
    p->patch_row = xmalloc(sizeof(int32_t) * (r->n + 1));
    p->patch_image = xmalloc(sizeof(int32_t) * (r->n + 1));
    p->patch_k = xmalloc(sizeof(int32_t) * (r->n + 1));
    p->patch_x = xmalloc(sizeof(float) * ((size_t)r->n * Pd + 1));
    for (int i = 0; i < r->n; i++) {
        if (r->mod[i] == MOD_TOKEN) {
            p->tok_row[p->n_tok] = i;
            p->tok_id[p->n_tok++] = r->tok[i];
        } else {
            p->patch_row[p->n_patch] = i;
            p->patch_image[p->n_patch] = r->img[i];
            p->patch_k[p->n_patch] = r->k[i];
            diffusion_patchify(p->patch_x + (size_t)p->n_patch++ * Pd, r->x + (size_t)r->img[i] * r->lat, r->k[i], c);
        }
    }
    p->time_feat = xmalloc(sizeof(float) * ((size_t)r->n_img * T + 1));
    for (int k = 0; k < r->n_img; k++) diffusion_time_features(p->time_feat + (size_t)k * T, r->t[k], T);
}

static void forward_cached(infer *f, const infer_rows *r) {
    model *m = f->m;
    const model_config *c = &m->cfg;
    int n = r->n, d = c->hidden_size, nl = c->num_hidden_layers;
    nn_upload_i32(f->d_pos, f->pos, n);
    nn_upload_i32(f->d_lo, f->lo, n);
    nn_upload_i32(f->d_hi, f->hi, n);
    nn_upload_i32(f->d_slot, f->slot, n);
    plan p;
    rows_plan(&p, r, c);
    model_embed(m, &p, f->x);
    plan_free(&p);
    for (int i = 0; i < n; i++) f->prow[i] = i;
    for (int l = 0; l < nl; l++) {
        const layer_weights *w = &m->W.layers[l];
        block_qkv(c, w, f->x, f->n1, f->qkv, f->d_pos, f->rope_cos, f->rope_sin, n);
        nn_scatter_rows(f->kv[l], f->qkv, f->d_slot, n, 3 * d);
        nn_attention_rows(f->att, f->qkv, f->kv[l], f->d_lo, f->d_hi, n, c->num_attention_heads, cfg_head_dim(c));
        block_out(c, w, f->x, f->att, f->x_mid, f->n2, f->gu, f->act, f->x_next, n);
        float *t = f->x;
        f->x = f->x_next;
        f->x_next = t;
    }
    nn_rmsnorm_forward(f->h, f->x, m->W.norm, n, d, c->rms_norm_eps);
}

/* The sequences of the rows as one batch, each from position 0 (history,
 * then the new rows, then pads), run through the training forward. */
static void forward_recompute(infer *f, const infer_rows *r) {
    model *m = f->m;
    const model_config *c = &m->cfg;
    int d = c->hidden_size, lat = c->latent_channels * c->latent_size * c->latent_size, Pd = cfg_patch_dim(c);
    int *row_of = xmalloc(sizeof(int) * f->S), B = 0, L = 1;
    for (int s = 0; s < f->S; s++) row_of[s] = -1;
    for (int i = 0; i < r->n; i++) {
        if (row_of[r->seq[i]] < 0) row_of[r->seq[i]] = B++;
        if (f->pos[i] + 1 > L) L = f->pos[i] + 1;
    }
    for (int s = 0; s < f->S; s++)
        if (row_of[s] >= 0 && f->len[s] > L) L = f->len[s];
    batch b = {.B = B, .L = L, .n_images = f->hist_n + r->n_img};
    size_t N = (size_t)B * L;
    b.tokens = xcalloc(N, sizeof(int32_t));
    b.modality = xcalloc(N, sizeof(int32_t));
    b.doc = xcalloc(N, sizeof(int32_t));
    b.image = xcalloc(N, sizeof(int32_t));
    b.latents = xcalloc((size_t)b.n_images * lat + 1, sizeof(float));
    b.noise = xcalloc((size_t)b.n_images * lat + 1, sizeof(float));
    b.timesteps = xcalloc(b.n_images + 1, sizeof(int32_t));
    if (f->hist_n) {
        memcpy(b.latents, f->hist_x, sizeof(float) * f->hist_n * lat);
        memcpy(b.timesteps, f->hist_t, sizeof(int32_t) * f->hist_n);
    }
    if (r->n_img) {
        memcpy(b.latents + (size_t)f->hist_n * lat, r->x, sizeof(float) * r->n_img * lat);
        memcpy(b.timesteps + f->hist_n, r->t, sizeof(int32_t) * r->n_img);
    }
    for (size_t i = 0; i < N; i++) b.modality[i] = MOD_PAD;
    for (int s = 0; s < f->S; s++) {
        if (row_of[s] < 0) continue;
        size_t base = (size_t)row_of[s] * L, h = (size_t)s * f->cap;
        for (int q = 0; q < f->len[s]; q++) {
            b.tokens[base + q] = f->hist_tok[h + q];
            b.modality[base + q] = f->hist_mod[h + q];
            b.image[base + q] = f->hist_img[h + q];
        }
    }
    for (int i = 0; i < r->n; i++) {
        size_t at = (size_t)row_of[r->seq[i]] * L + f->pos[i];
        b.tokens[at] = r->tok[i];
        b.modality[at] = r->mod[i];
        b.image[at] = r->mod[i] == MOD_PATCH ? f->hist_n + r->img[i] : -1;
    }
    plan p;
    plan_build(&p, &b, c);
    /* plan_build noises x0 by t; here the latents already are the inputs. */
    for (int q = 0; q < p.n_patch; q++)
        diffusion_patchify(p.patch_x + (size_t)q * Pd, b.latents + (size_t)p.patch_image[q] * lat, p.patch_k[q], c);
    const float *h = model_hidden(m, &p);
    for (int i = 0; i < r->n; i++) f->prow[i] = f->idx[i] = row_of[r->seq[i]] * L + f->pos[i];
    nn_upload_i32(f->d_idx, f->idx, r->n);
    nn_gather_rows(f->h, h, f->d_idx, r->n, d);
    plan_free(&p);
    batch_free(&b);
    free(row_of);
}

/* The rows become part of their sequences (the cache already holds their
 * keys and values; the history is kept for recompute). */
static void commit_rows(infer *f, const infer_rows *r) {
    int lat = r->lat;
    if (r->n_img) {
        grow((void **)&f->hist_x, &f->hist_x_cap, f->hist_n + r->n_img, sizeof(float) * lat);
        grow((void **)&f->hist_t, &f->hist_t_cap, f->hist_n + r->n_img, sizeof(int32_t));
        memcpy(f->hist_x + (size_t)f->hist_n * lat, r->x, sizeof(float) * r->n_img * lat);
        memcpy(f->hist_t + f->hist_n, r->t, sizeof(int32_t) * r->n_img);
    }
    for (int i = 0; i < r->n; i++) {
        size_t at = (size_t)r->seq[i] * f->cap + f->pos[i];
        f->hist_tok[at] = r->tok[i];
        f->hist_mod[at] = r->mod[i];
        f->hist_img[at] = r->mod[i] == MOD_PATCH ? f->hist_n + r->img[i] : -1;
    }
    for (int i = 0; i < r->n; i++)
        if (f->pos[i] + 1 > f->len[r->seq[i]]) f->len[r->seq[i]] = f->pos[i] + 1;
    f->hist_n += r->n_img;
}

const float *infer_forward(infer *f, const infer_rows *r, int commit, char *err) {
    ensure_rows(f, r->n > 0 ? r->n : 1);
    if (place_rows(f, r, err)) return NULL;
    if (r->n == 0) return f->h;
    if (f->recompute)
        forward_recompute(f, r);
    else
        forward_cached(f, r);
    if (commit) commit_rows(f, r);
    return f->h;
}

void infer_logits(infer *f, const float *h, const int32_t *idx, int n, float *logits) {
    const model_config *c = &f->m->cfg;
    nn_upload_i32(f->d_idx, idx, n);
    nn_gather_rows(f->n1, h, f->d_idx, n, c->hidden_size);
    nn_linear_forward(f->out, f->n1, f->m->W.lm_head, NULL, n, c->hidden_size, c->vocab_size);
    nn_download(logits, f->out, (size_t)n * c->vocab_size);
}

void infer_eps(infer *f, const float *h, const infer_rows *r, float *eps) {
    const model_config *c = &f->m->cfg;
    const weights *W = &f->m->W;
    int d = c->hidden_size, Pd = cfg_patch_dim(c), n = 0;
    for (int i = 0; i < r->n; i++)
        if (r->mod[i] == MOD_PATCH) f->idx[n++] = i;
    nn_upload_i32(f->d_idx, f->idx, n);
    nn_gather_rows(f->n1, h, f->d_idx, n, d);
    if (c->image_unet) {
        for (int q = 0; q < n; q++) f->idx[q] = f->prow[f->idx[q]];
        model_unet_eps(f->m, f->n1, f->idx, n, f->out);
        for (int q = 0, i = 0; i < r->n; i++) /* idx back to the rows, as below reads it */
            if (r->mod[i] == MOD_PATCH) f->idx[q++] = i;
    } else {
        nn_linear_forward(f->out, f->n1, W->patch_out_w, W->patch_out_b, n, d, Pd);
    }
    nn_download(f->out_host, f->out, (size_t)n * Pd);
    for (int q = 0; q < n; q++) {
        int i = f->idx[q];
        diffusion_unpatchify(eps + (size_t)r->img[i] * r->lat, f->out_host + (size_t)q * Pd, r->k[i], c);
    }
}
