/* block.h - the pieces of the model's forward that inference (infer.c)
 * runs on its own rows over a KV cache: the input embedding, a transformer
 * block in two halves around attention, and the whole forward to the final
 * norm (the no-cache reference). Internal to trainer/ (and its tests); other
 * folders use model.h. */
#ifndef TRAINER_BLOCK_H
#define TRAINER_BLOCK_H

#include "model.h"

/* Forward only to the final norm; returns h_final [N, d] (valid until the
 * next call; a backend buffer). Tests use it to check what each position can see. */
const float *model_hidden(model *m, const plan *p);

/* The input vectors of a plan's positions (docs/model.md section 3: token
 * embeddings, patch_in(x) + pos_embed[k] + temb(t), zeros at pads) into
 * x [N, d]. Inference (infer.c) embeds its new rows with it. */
void model_embed(model *m, const plan *p, float *x);

/* A transformer block in two halves around attention, shared by training and
 * inference (infer.c, which attends over a KV cache instead):
 * block_qkv: n1 = RMSNorm(x), qkv = n1 Wqkv^T with RoPE at pos on q and k;
 * block_out: x_mid = x + att Wo^T, x_out = x_mid + down(swiglu(gate|up(RMSNorm(x_mid)))).
 * Rows are N positions; rope tables as in plan. */
void block_qkv(const model_config *c, const layer_weights *w, const float *x, float *n1, float *qkv, const int32_t *pos,
               const float *rope_cos, const float *rope_sin, int N);
void block_out(const model_config *c, const layer_weights *w, const float *x, const float *att, float *x_mid, float *n2,
               float *gu, float *act, float *x_out, int N);

#endif
