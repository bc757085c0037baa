/* plan.h - the index plan the model runs on (plan.c): everything derived
 * from a validated batch once per step: each query's key range, RoPE
 * positions, which rows are tokens / patches / LM targets, and the noised,
 * patchified latents. */
#ifndef TRAINER_PLAN_H
#define TRAINER_PLAN_H

#include "batch.h"

typedef struct {
    int B, L, N;                /* N = B*L */
    int32_t *lo, *hi, *pos;     /* [N]: key range (row-relative), RoPE position */
    float *rope_cos, *rope_sin; /* [L, head_dim/2] */
    int n_tok;                  /* token positions: row, id */
    int32_t *tok_row, *tok_id;
    int n_patch; /* patch positions in order: row, image, k */
    int32_t *patch_row, *patch_image, *patch_k;
    float *patch_x, *patch_eps; /* [n_patch, patch_dim]: noised x_t and eps */
    int n_lm;                   /* LM targets: row and target token */
    int32_t *lm_row, *lm_target;
    int n_images;
    float *time_feat; /* [n_images, timestep_dim] */
} plan;

/* RoPE cosines and sines [L, head_dim/2] of positions 0..L-1 (angles in
 * float64, rounded to float32). */
void rope_tables(float *rope_cos, float *rope_sin, int L, const model_config *c);

/* Builds the plan of a validated batch. */
void plan_build(plan *p, const batch *b, const model_config *c);
void plan_free(plan *p);

#endif
