/* config.h - the model's hyperparameters (config.json of a checkpoint,
 * docs/model.md section 6): load, validate, save. */
#ifndef COMMON_CONFIG_H
#define COMMON_CONFIG_H

#include "error.h"

#include <cjson/cJSON.h>

#define CONFIG_UNET_LEVELS 6 /* the most U-Net levels (patch_size up to 32) */

typedef struct {
    int vocab_size;
    int hidden_size;
    int num_hidden_layers;
    int num_attention_heads;
    int intermediate_size;
    float rms_norm_eps; /* default 1e-5 (Llama 2) */
    float rope_theta;   /* default 10000 */
    int latent_channels;
    int latent_size; /* h = w of a latent */
    int patch_size;
    int max_image_patches;
    int timestep_dim;       /* default 256 */
    int diffusion_steps;    /* default 1000 */
    float lambda_diffusion; /* default 5 */
    int bos_token_id, eos_token_id, boi_token_id, eoi_token_id;
    /* defaults 1, 2, vocab_size-2, vocab_size-1 */
    int image_causal; /* "image_attention": "bidirectional" (0, the
                                   default: a patch sees its whole image) or
                                   "causal" (1: only the patches before it;
                                   the paper's ablation) */
    /* "image_encoder": "linear" (0, the default: patch_in and patch_out
     * are linear layers) or "unet" (1: U-Net down and up blocks around the
     * transformer, docs/model.md "The U-Net image path"); its settings: */
    int image_unet;
    int unet_levels;                       /* entries of unet_channels */
    int unet_channels[CONFIG_UNET_LEVELS]; /* default [64, 128] */
    int unet_layers_per_block;             /* default 1 */
    int unet_groups;                       /* default 8 */
} model_config;

/* Derived sizes. */
static inline int cfg_head_dim(const model_config *c) { return c->hidden_size / c->num_attention_heads; }
static inline int cfg_patch_dim(const model_config *c) { return c->latent_channels * c->patch_size * c->patch_size; }
/* Entries of the vector a patch becomes on each side of the transformer:
 * a patch's latents (linear path) or a cell of the U-Net's deepest map. */
static inline int cfg_patch_features(const model_config *c) {
    return c->image_unet ? c->unet_channels[c->unet_levels - 1] : cfg_patch_dim(c);
}
static inline int cfg_patches_per_image(const model_config *c) {
    int g = c->latent_size / c->patch_size;
    return g * g;
}

/* Reads a JSON config. Required: vocab_size, hidden_size, num_hidden_layers,
 * num_attention_heads, intermediate_size, latent_channels, latent_size,
 * patch_size, max_image_patches; the rest take the defaults above
 * (image_attention is a string, the others numbers). Then
 * validates (see config_validate). Returns non-zero with a one-line message
 * naming the file and the field. */
int config_load(const char *path, model_config *c, char *err);
/* The same, with `given` (a JSON object of config fields, e.g. what the
 * dataloader's tokenizer and latents dictate): a field the file leaves out is
 * taken from it, and a field the file sets must agree with it. `source`
 * names it in errors. */
int config_load_given(const char *path, const cJSON *given, const char *source, model_config *c, char *err);

/* Checks that every field makes sense: positive sizes, hidden_size divisible
 * by num_attention_heads, an even head_dim (RoPE), patch_size dividing
 * latent_size, max_image_patches >= patches per image, token ids < vocab. */
int config_validate(const model_config *c, const char *path, char *err);

/* Writes every field (atomically: temp, fsync, rename). */
int config_save(const char *path, const model_config *c, char *err);
/* Every field as config.json holds it (a checkpoint's config); c must be
 * valid. Free with cJSON_Delete. */
cJSON *config_json(const model_config *c);

#endif
