/* plan_mirror.c - a plan in backend buffers (plan_mirror.h). */
#include "plan_mirror.h"
#include "../common/error.h"
#include "../nn/kernels.h"

#include <stdlib.h>

struct plan_mirror {
    plan p; /* counts of the last upload, the buffers below */
    int half, P, tdim;
};

plan_mirror *plan_mirror_create(int N, int n_patch, int n_images, const model_config *c) {
    plan_mirror *pm = xcalloc(1, sizeof *pm);
    plan *p = &pm->p;
    pm->half = cfg_head_dim(c) / 2;
    pm->P = cfg_patch_dim(c);
    pm->tdim = c->timestep_dim;
    int32_t **idx[] = {&p->lo,        &p->hi,          &p->pos,     &p->tok_row, &p->tok_id,
                       &p->patch_row, &p->patch_image, &p->patch_k, &p->lm_row,  &p->lm_target};
    for (size_t k = 0; k < sizeof idx / sizeof *idx; k++) *idx[k] = nn_alloc_i32(N);
    p->rope_cos = nn_alloc_f32((size_t)N * pm->half); /* L <= N rows */
    p->rope_sin = nn_alloc_f32((size_t)N * pm->half);
    p->patch_x = nn_alloc((size_t)n_patch * pm->P);
    p->patch_eps = nn_alloc_f32((size_t)n_patch * pm->P);
    p->time_feat = nn_alloc((size_t)n_images * pm->tdim);
    return pm;
}

/* Arrays the host plan does not have (NULL) are skipped: inference embeds
 * its new rows with a plan of what model_embed reads alone (infer.c's
 * rows_plan: no key ranges, positions, RoPE tables or noise targets). */
static void up_i32(int32_t *dst, const int32_t *src, size_t n) {
    if (src) nn_upload_i32(dst, src, n);
}

static void up(float *dst, const float *src, size_t n) {
    if (src) nn_upload(dst, src, n);
}

const plan *plan_mirror_upload(plan_mirror *pm, const plan *h) {
    plan *p = &pm->p;
    p->B = h->B;
    p->L = h->L;
    p->N = h->N;
    p->n_tok = h->n_tok;
    p->n_patch = h->n_patch;
    p->n_lm = h->n_lm;
    p->n_images = h->n_images;
    up_i32(p->lo, h->lo, h->N);
    up_i32(p->hi, h->hi, h->N);
    up_i32(p->pos, h->pos, h->N);
    up(p->rope_cos, h->rope_cos, (size_t)h->L * pm->half);
    up(p->rope_sin, h->rope_sin, (size_t)h->L * pm->half);
    up_i32(p->tok_row, h->tok_row, h->n_tok);
    up_i32(p->tok_id, h->tok_id, h->n_tok);
    up_i32(p->patch_row, h->patch_row, h->n_patch);
    up_i32(p->patch_image, h->patch_image, h->n_patch);
    up_i32(p->patch_k, h->patch_k, h->n_patch);
    up(p->patch_x, h->patch_x, (size_t)h->n_patch * pm->P);
    up(p->patch_eps, h->patch_eps, (size_t)h->n_patch * pm->P);
    up_i32(p->lm_row, h->lm_row, h->n_lm);
    up_i32(p->lm_target, h->lm_target, h->n_lm);
    up(p->time_feat, h->time_feat, (size_t)h->n_images * pm->tdim);
    return p;
}

void plan_mirror_free(plan_mirror *pm) {
    if (!pm) return;
    plan *p = &pm->p;
    void *bufs[] = {p->lo,        p->hi,          p->pos,     p->tok_row,   p->tok_id,
                    p->patch_row, p->patch_image, p->patch_k, p->lm_row,    p->lm_target,
                    p->rope_cos,  p->rope_sin,    p->patch_x, p->patch_eps, p->time_feat};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(pm);
}
