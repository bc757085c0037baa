/* unet.h - the U-Net image path (docs/model.md, "The U-Net image path"):
 * its tensors in the model's flat parameter array, the down path (noised
 * latent patches -> one vector per patch, which image.patch_in reads) and
 * the up path (image.patch_out's vectors -> predicted noise patches), each
 * with its backward pass. model.c calls these for "image_encoder": "unet".
 *
 * Images are whole and in slots: rows [i * N, (i + 1) * N) of the patch
 * arrays are image i's patches in order k (N = patches per image; model.c
 * puts a plan's patches in that order), and the deepest map of the down
 * path, [n, g, g, c_last] in NHWC, is exactly those rows. Weights and
 * gradients are the model's flat arrays (base pointers); the U-Net keeps
 * offsets into them. */
#ifndef TRAINER_UNET_H
#define TRAINER_UNET_H

#include "../common/config.h"
#include "../nn/params.h"

#include <stddef.h>

typedef struct unet_acts unet_acts;

/* One ResNet block: its input has c_in channels, and in the up path a skip
 * of c_skip more is concatenated after them. t[] are the offsets of norm1,
 * conv1, time_emb_proj, norm2, conv2 and conv_shortcut (weight, then bias). */
typedef struct {
    int c_in, c_skip, c_out, side; /* side: the map's height = width */
    int shortcut;                   /* c_in + c_skip != c_out: a 1x1 convolution */
    size_t t[12];
} unet_resnet;

typedef struct {
    const model_config *c;
    int levels, r, d; /* d: hidden_size (the timestep embedding's width) */
    size_t conv_in[2], norm_out[2], conv_out[2];
    unet_resnet *down, *up;    /* [levels * r], [levels * (r + 1)] */
    size_t (*down_conv)[2];    /* [levels - 1]: the downsamplers */
    size_t (*up_conv)[2];      /* [levels - 1]: the upsamplers */
    unet_acts *acts;           /* sized for the last batch */
} unet;

/* Adds the U-Net's tensors to ps in the documented order. */
void unet_create(unet *u, param_set *ps, const model_config *c);
void unet_free(unet *u);

/* 1 for the names of GroupNorm weights (initialized to 1). */
int unet_is_norm_weight(const char *name);

/* Down path of n images: patches [n * N, patch_dim] -> rows [n * N, c_last]
 * (image i's patches, and its deepest map's cells, are rows i * N + k).
 * temb [n, d] is the images' timestep embedding (kept for backward). */
void unet_down(unet *u, const float *W, const float *temb, const float *patches, int n, float *rows);
/* Up path of the images of the last unet_down: rows [n * N, c_last] ->
 * pred [n * N, patch_dim]. */
void unet_up(unet *u, const float *W, const float *rows, float *pred);

/* Backward of the last unet_up: dpred [n * N, patch_dim] -> drows
 * (overwritten); gradients added into G. */
void unet_up_backward(unet *u, const float *W, float *G, const float *dpred, float *drows);
/* Backward of the last unet_down: drows [n * N, c_last] (the gradient of
 * its output); gradients added into G, and dtemb [n, d] += the timestep
 * embedding's gradient from both paths. */
void unet_down_backward(unet *u, const float *W, float *G, const float *drows, float *dtemb);

/* Floats of the activations backward reads, as allocated for the last
 * batch (0 before the first). */
size_t unet_activation_floats(const unet *u);

/* FLOPs of the forward and backward passes over n images. */
double unet_flops(const unet *u, int n);

#endif
