/* vae.h - the VAE of the image side: diffusers' AutoencoderKL architecture
 * (the Stable Diffusion VAE), configured by the same config.json fields and
 * stored under the same tensor names, so a pretrained diffusers VAE loads as
 * it is. Forward (encode, decode) and backward for training, on the backend
 * interface of nn/kernels.h.
 *
 * Images are [n, 3, H, W] in [-1, 1]; latents [n, C, H/f, W/f] with
 * f = 2^(len(block_out_channels) - 1). Internally maps are [n, H, W, C]. */
#ifndef VAE_VAE_H
#define VAE_VAE_H

#include "../common/error.h"
#include "../nn/params.h"

#include <cjson/cJSON.h>

#define VAE_MAX_BLOCKS 8
/* ResNet blocks of the decoder (blocks x (layers_per_block + 1) + 2 in the
 * mid block) are bounded so that a pass records them in a fixed array. */
#define VAE_MAX_RESNETS (VAE_MAX_BLOCKS * 4 + 2)

typedef struct {
    int in_channels, out_channels, latent_channels;
    int n_blocks, block_out_channels[VAE_MAX_BLOCKS];
    int layers_per_block, norm_num_groups, sample_size;
    float scaling_factor, shift_factor; /* shift 0 when the config says null */
    int use_quant_conv, use_post_quant_conv, mid_block_add_attention;
} vae_config;

/* Reads and validates a diffusers AutoencoderKL config.json (every check of
 * a config is here, so a model built from a loaded config is always valid). */
int vae_config_load(const char *path, vae_config *c, char *err);
int vae_config_save(const char *path, const vae_config *c, char *err);
/* The config as diffusers writes it (what vae_config_save writes; a
 * checkpoint's config.json). Free with cJSON_Delete. */
cJSON *vae_config_json(const vae_config *c);
static inline int vae_downscale(const vae_config *c) { return 1 << (c->n_blocks - 1); }

typedef struct vae_model vae_model;

vae_model *vae_create(const vae_config *c);
void vae_free(vae_model *v);
const vae_config *vae_cfg(const vae_model *v);
param_set *vae_params(vae_model *v);
/* PyTorch's default init for convs and linears (kaiming-uniform, a = sqrt(5),
 * and uniform biases), GroupNorm weight 1 and bias 0; from one seed. */
void vae_init_weights(vae_model *v, unsigned long long seed);

/* Mixed precision: the 3x3 convolutions read their inputs rounded to
 * bfloat16 and accumulate and write float32 (nn/kernels.h); 1.4x faster
 * training here. Everything else, and the weights, stay float32. Off by
 * default: encode, decode and the parity tests run in float32. */
void vae_set_bf16(vae_model *v, int on);

/* VAE folder: config.json + diffusion_pytorch_model.safetensors. */
vae_model *vae_load(const char *dir, char *err);
int vae_save(vae_model *v, const char *dir, char *err);

/* Encoder: mean and logvar [n, C, h, w] (after quant_conv, logvar clamped
 * to [-30, 20]). Inference only. */
void vae_encode(vae_model *v, const float *images, int n, int H, int W, float *mean, float *logvar);
/* Decoder: images [n, 3, H, W] from latents [n, C, h, w]. Inference only. */
void vae_decode(vae_model *v, const float *latents, int n, int h, int w, float *images);

/* The reconstruction term: mean |recon - x| (L1) or mean (recon - x)^2
 * (L2) over all pixel values. */
typedef enum { VAE_LOSS_L1, VAE_LOSS_L2 } vae_loss_kind;

typedef struct {
    double loss, rec_loss, kl; /* loss = rec_loss + kl_weight * kl */
    double psnr;               /* mean over images, of the reconstruction */
} vae_losses;

/* One training evaluation: z = mean + exp(logvar/2) * eps (eps [n, C, h, w]),
 * recon = decode(z), rec_loss of `loss` over all elements,
 * kl = sum(mean^2 + exp(logvar) - 1 - logvar) / 2 / (n * 3 * H * W).
 * With want_grads, adds the gradient of loss into the params' g. */
vae_losses vae_train_step(vae_model *v, const float *images, const float *eps, int n, int H, int W, vae_loss_kind loss,
                          float kl_weight, int want_grads);

/* PSNR (dB) of a reconstruction against the original, both in [-1, 1]. */
double vae_psnr(const float *recon, const float *orig, size_t n);

#endif
