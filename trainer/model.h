/* model.h - the Transfusion model (docs/model.md): parameters, init,
 * checkpoint I/O, and one fused forward + backward over a batch plan.
 *
 * All parameters live in one flat param_set (nn/params.h), so the optimizer
 * and the gradient all-reduce work on one buffer; each tensor keeps its
 * safetensors name. Within a layer q, k, v are adjacent (one [3d, d] GEMM)
 * and so are gate and up ([2f, d]). */
#ifndef TRAINER_MODEL_H
#define TRAINER_MODEL_H

#include "../common/config.h"
#include "plan.h"
#include "unet.h"
#include "../nn/params.h"

#include <stddef.h>

typedef struct {
    float *ln1, *wqkv, *wo, *ln2, *wgu, *wd;
} layer_weights;

/* Views into a flat parameter-shaped array (weights or gradients). */
typedef struct {
    float *embed, *norm, *lm_head;
    float *patch_in_w, *patch_in_b, *pos_embed;
    float *time0_w, *time0_b, *time2_w, *time2_b;
    float *patch_out_w, *patch_out_b;
    layer_weights *layers;
} weights;

typedef struct workspace workspace;

typedef struct {
    model_config cfg;
    param_set ps;         /* names, shapes; flat weights ps.w, gradients ps.g (host) */
    param_set dev;        /* what the kernels use: ps itself where the backend works
                                 * in host memory, else float32 copies in its buffers */
    int dev_copies;       /* 1: dev.w and dev.g are those copies (the model frees them) */
    weights W, G;         /* views into dev.w and dev.g */
    workspace *ws;        /* activations, sized for the last plan */
    grad_hook grad_ready; /* told as each layer's gradients are final (params.h) */
    unet unet;            /* the U-Net image path ("image_encoder": "unet") */
} model;

/* Loss sums of one forward pass; the loss is
 * ce_sum / N_lm + lambda * se_sum / N_latent with the step's counts. */
typedef struct {
    double ce_sum, se_sum;
    long n_lm, n_latent;
} loss_sums;

void model_create(model *m, const model_config *c);
void model_free(model *m);
/* Copy ps.w to dev.w (after weights were set on the host), and dev to ps
 * (before the host reads weights or gradients); nothing when they are one. */
void model_upload_weights(model *m);
void model_download(model *m, int weights, int grads);

/* Normal(0, 0.02) matrices and embeddings, o_proj/down_proj scaled by
 * 1/sqrt(2 * layers), norms 1, biases 0; deterministic in the seed. */
void model_init_weights(model *m, unsigned long long seed);

/* Checkpoint folder: config.json + model.safetensors (on load, the files of
 * model.safetensors.index.json's weight_map where the folder has one, else
 * every *.safetensors file is searched for each tensor). Load creates the
 * model and uploads its weights; save writes ps (download first). */
int model_load(model *m, const char *dir, char *err);
int model_save(const model *m, const char *dir, char *err);

/* LM positions per cross-entropy chunk from now on (--ce-chunk); 0, the
 * default: as many as keep a chunk's logits within 64 MiB of float32, at
 * least 256. Chunks bound memory; fewer chunks read lm_head's weight fewer
 * times. Results differ from one chunking to another by the float32
 * rounding of lm_head's gradient sum. */
void model_set_ce_chunk(int positions);

/* Forward over the plan, and with want_grads the backward too, adding the
 * gradient of  ce_sum / norm_lm + lambda * se_sum / norm_latent  into m->ps.g
 * (the caller zeroes it once per optimizer step). norm_lm and norm_latent are
 * the counts over the whole step (every micro-batch and rank). */
loss_sums model_step(model *m, const plan *p, double norm_lm, double norm_latent, int want_grads);

/* Sampling with the U-Net: the predicted noise pred [n, patch_dim] of n
 * patches of the last model_embed or model_hidden plan, from their final
 * hidden rows h [n, d] (a backend buffer) and their rows in that plan. */
void model_unet_eps(model *m, const float *h, const int32_t *plan_rows, int n, float *pred);

/* Forward only; each row's loss sums (ce[r] over its LM targets, se[r] over
 * its patches, both [B]): per-sample figures from one batch, for evaluation. */
void model_row_losses(model *m, const plan *p, double *ce, double *se);

/* Floats of the activations that backward needs for this plan (what the
 * workspace keeps per layer plus the final norm's input and output, and the
 * U-Net's for its last batch). */
size_t model_activation_floats(const model *m, const plan *p);

/* FLOPs of one forward + backward over the plan (matmuls and attention over
 * the allowed key ranges only). */
double model_step_flops(const model *m, const plan *p);

#endif
