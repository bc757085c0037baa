/* infer.h - forward passes for generation: new positions appended to S
 * sequences, each attending to what its sequence already holds
 * (docs/model.md section 2 within one document that starts at position 0).
 *
 * With the KV cache, a forward costs the new rows only: their keys and
 * values are stored per layer and sequence, and their queries attend over
 * the cache. Without it (recompute), every forward runs the model over each
 * sequence from its start, exactly as training would see it: the reference
 * the cache is tested against, and what the benchmark compares it to.
 *
 * A forward is committed (its rows become part of their sequences: prompt,
 * sampled tokens, a finished image and its EOI) or not (a denoising step:
 * the patches are seen by nothing later, and the next forward at the same
 * positions replaces them). */
#ifndef TRAINER_INFER_H
#define TRAINER_INFER_H

#include "model.h"

#include <stdint.h>

/* The new rows of one forward. The rows of a sequence are consecutive and
 * an image is its N patch rows in order (infer_rows_image). */
typedef struct {
    int n, cap;
    int32_t *seq, *mod, *tok, *img, *k; /* per row: sequence, MOD_TOKEN or MOD_PATCH, token,
                                             image index, patch index in the image */
    int n_img, img_cap, lat;
    float *x;   /* [n_img, lat]: each image's input latent (x_t, or clean) */
    int32_t *t; /* [n_img]: its timestep */
} infer_rows;

void infer_rows_clear(infer_rows *r);
void infer_rows_free(infer_rows *r);
void infer_rows_token(infer_rows *r, int seq, int32_t tok);
/* The N patches of latent x [C, h, w] at timestep t; returns the image index. */
int infer_rows_image(infer_rows *r, int seq, const float *x, int t, const model_config *c);

typedef struct infer infer;

/* S sequences of at most cap positions each. */
infer *infer_create(model *m, int S, int cap, int recompute);
void infer_free(infer *f);
int infer_len(const infer *f, int seq);

/* h_final [r->n, d] of the new rows (a backend buffer, valid until the next
 * call), or NULL with err when a sequence would pass its cap. */
const float *infer_forward(infer *f, const infer_rows *r, int commit, char *err);

/* Heads on rows of h (the last forward's): logits [n, V] of rows idx[0..n);
 * the predicted noise of every image of r, unpatchified into eps
 * [r->n_img, C, h, w]. idx, logits and eps are host memory. */
void infer_logits(infer *f, const float *h, const int32_t *idx, int n, float *logits);
void infer_eps(infer *f, const float *h, const infer_rows *r, float *eps);

#endif
