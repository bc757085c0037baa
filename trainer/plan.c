/* plan.c - derives from a validated batch what the model needs per step:
 * each query's key range and RoPE position (docs/model.md section 2), the token,
 * patch and LM-target rows, and the noised, patchified latents (section 3). */
#include "plan.h"
#include "diffusion.h"
#include "../common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void plan_free(plan *p) {
    free(p->lo);
    free(p->hi);
    free(p->pos);
    free(p->rope_cos);
    free(p->rope_sin);
    free(p->tok_row);
    free(p->tok_id);
    free(p->patch_row);
    free(p->patch_image);
    free(p->patch_k);
    free(p->patch_x);
    free(p->patch_eps);
    free(p->lm_row);
    free(p->lm_target);
    free(p->time_feat);
    memset(p, 0, sizeof *p);
}

/* Key ranges: a document is a maximal run of non-pad positions with the same
 * `doc`; a pad is a document of its own; a patch also sees the rest of its
 * image (unless image attention is causal: then a patch is like a token). */
static void plan_ranges(plan *p, const batch *b, const model_config *c) {
    for (int r = 0; r < b->B; r++) {
        const int32_t *mod = b->modality + (size_t)r * b->L, *doc = b->doc + (size_t)r * b->L;
        const int32_t *img = b->image + (size_t)r * b->L;
        int32_t *lo = p->lo + (size_t)r * b->L, *hi = p->hi + (size_t)r * b->L;
        int start = 0;
        for (int i = 0; i < b->L; i++) {
            if (mod[i] == MOD_PAD || i == 0 || mod[i - 1] == MOD_PAD || doc[i] != doc[i - 1]) start = i;
            lo[i] = start;
            hi[i] = i;
        }
        for (int i = b->L - 1; i >= 0 && !c->image_causal; i--)
            if (mod[i] == MOD_PATCH)
                hi[i] = (i + 1 < b->L && mod[i + 1] == MOD_PATCH && img[i + 1] == img[i]) ? hi[i + 1] : i;
        for (int i = 0; i < b->L; i++) {
            /* The attention kernels' tile search (nn/attn_tiles.h) assumes it. */
            if (i > 0 && (lo[i] < lo[i - 1] || hi[i] < hi[i - 1]))
                die("plan: key ranges decrease at row %d, position %d ([%d, %d] after [%d, %d])", r, i, lo[i], hi[i],
                    lo[i - 1], hi[i - 1]);
            p->pos[(size_t)r * b->L + i] = i - lo[i];
        }
    }
}

void rope_tables(float *rope_cos, float *rope_sin, int L, const model_config *c) {
    int half = cfg_head_dim(c) / 2;
    for (int t = 0; t < L; t++)
        for (int j = 0; j < half; j++) {
            double a = t * pow((double)c->rope_theta, -2.0 * j / (2 * half));
            rope_cos[t * half + j] = (float)cos(a);
            rope_sin[t * half + j] = (float)sin(a);
        }
}

static void plan_rope_tables(plan *p, const model_config *c) {
    int half = cfg_head_dim(c) / 2;
    p->rope_cos = xmalloc(sizeof(float) * p->L * half);
    p->rope_sin = xmalloc(sizeof(float) * p->L * half);
    rope_tables(p->rope_cos, p->rope_sin, p->L, c);
}

/* x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, alpha_bar cast to
 * float32 first, then patchified. */
static void plan_patches(plan *p, const batch *b, const model_config *c) {
    int P = cfg_patch_dim(c);
    size_t lat = (size_t)c->latent_channels * c->latent_size * c->latent_size;
    double *alpha_bar = xmalloc(sizeof(double) * (c->diffusion_steps + 1));
    diffusion_alpha_bar(alpha_bar, c->diffusion_steps);
    float *xt = xmalloc(sizeof(float) * lat);
    p->patch_x = xmalloc(sizeof(float) * ((size_t)p->n_patch * P + 1));
    p->patch_eps = xmalloc(sizeof(float) * ((size_t)p->n_patch * P + 1));
    for (int q = 0; q < p->n_patch; q++) {
        int img = p->patch_image[q], k = p->patch_k[q];
        const float *x0 = b->latents + img * lat, *eps = b->noise + img * lat;
        if (k == 0) {
            float ab = (float)alpha_bar[b->timesteps[img]];
            float sa = sqrtf(ab), sb = sqrtf(1.0f - ab);
            for (size_t e = 0; e < lat; e++) xt[e] = sa * x0[e] + sb * eps[e];
        }
        diffusion_patchify(p->patch_x + (size_t)q * P, xt, k, c);
        diffusion_patchify(p->patch_eps + (size_t)q * P, eps, k, c);
    }
    free(xt);
    free(alpha_bar);
}

void plan_build(plan *p, const batch *b, const model_config *c) {
    memset(p, 0, sizeof *p);
    p->B = b->B;
    p->L = b->L;
    p->N = b->B * b->L;
    p->n_images = b->n_images;
    size_t N = (size_t)p->N;
    p->lo = xmalloc(sizeof(int32_t) * N);
    p->hi = xmalloc(sizeof(int32_t) * N);
    p->pos = xmalloc(sizeof(int32_t) * N);
    p->tok_row = xmalloc(sizeof(int32_t) * N);
    p->tok_id = xmalloc(sizeof(int32_t) * N);
    p->patch_row = xmalloc(sizeof(int32_t) * N);
    p->patch_image = xmalloc(sizeof(int32_t) * N);
    p->patch_k = xmalloc(sizeof(int32_t) * N);
    p->lm_row = xmalloc(sizeof(int32_t) * N);
    p->lm_target = xmalloc(sizeof(int32_t) * N);
    plan_ranges(p, b, c);
    plan_rope_tables(p, c);
    for (size_t i = 0; i < N; i++) {
        int m = b->modality[i];
        if (m == MOD_TOKEN) {
            p->tok_row[p->n_tok] = (int32_t)i;
            p->tok_id[p->n_tok++] = b->tokens[i];
            /* LM target: the next position is a token of the same document. */
            int col = (int)(i % b->L);
            if (col + 1 < b->L && b->modality[i + 1] == MOD_TOKEN && p->lo[i + 1] == p->lo[i]) {
                p->lm_row[p->n_lm] = (int32_t)i;
                p->lm_target[p->n_lm++] = b->tokens[i + 1];
            }
        } else if (m == MOD_PATCH) {
            int first = (i % b->L) == 0 || b->modality[i - 1] != MOD_PATCH || b->image[i - 1] != b->image[i];
            p->patch_row[p->n_patch] = (int32_t)i;
            p->patch_image[p->n_patch] = b->image[i];
            p->patch_k[p->n_patch] = first ? 0 : p->patch_k[p->n_patch - 1] + 1;
            p->n_patch++;
        }
    }
    plan_patches(p, b, c);
    p->time_feat = xmalloc(sizeof(float) * ((size_t)b->n_images * c->timestep_dim + 1));
    for (int k = 0; k < b->n_images; k++)
        diffusion_time_features(p->time_feat + (size_t)k * c->timestep_dim, b->timesteps[k], c->timestep_dim);
}
