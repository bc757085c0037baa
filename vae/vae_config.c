/* vae_config.c - diffusers AutoencoderKL config.json: load, validate, save. */
#include "vae.h"
#include "../common/json_file.h"

#include <math.h>
#include <string.h>

/* An integer field; def < 0 means required. */
static int get_int(const cJSON *root, const char *path, const char *name, int def, int *out, char *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v) {
        if (def < 0) return set_error(err, "%s: field '%s': missing", path, name);
        *out = def;
        return 0;
    }
    if (cJSON_IsBool(v)) {
        *out = cJSON_IsTrue(v);
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble)
        return set_error(err, "%s: field '%s': not an integer", path, name);
    *out = (int)v->valuedouble;
    return 0;
}

static int get_float(const cJSON *root, const char *path, const char *name, float def, float *out, char *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return set_error(err, "%s: field '%s': not a finite number", path, name);
    *out = (float)v->valuedouble;
    return 0;
}

/* Every entry of a block-type list must be the block this VAE implements. */
static int check_types(const cJSON *root, const char *path, const char *name, const char *want, int n, char *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name), *e;
    if (!v) return 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return set_error(err, "%s: field '%s': must list %d block types", path, name, n);
    cJSON_ArrayForEach(e, v) if (!cJSON_IsString(e) || strcmp(e->valuestring, want) != 0) return set_error(
        err, "%s: field '%s': only %s is supported", path, name, want);
    return 0;
}

static int validate(const vae_config *c, const char *path, char *err) {
    if (c->in_channels <= 0 || c->out_channels <= 0 || c->latent_channels <= 0)
        return set_error(err, "%s: field 'in_channels/out_channels/latent_channels': must be > 0", path);
    if (c->layers_per_block <= 0) return set_error(err, "%s: field 'layers_per_block': must be > 0", path);
    if (c->norm_num_groups <= 0) return set_error(err, "%s: field 'norm_num_groups': must be > 0", path);
    if (c->n_blocks * (c->layers_per_block + 1) + 2 > VAE_MAX_RESNETS)
        return set_error(err, "%s: field 'layers_per_block': %d blocks of %d ResNets exceed %d", path, c->n_blocks,
                         c->layers_per_block + 1, VAE_MAX_RESNETS - 2);
    for (int b = 0; b < c->n_blocks; b++) {
        int ch = c->block_out_channels[b];
        if (ch <= 0 || ch % c->norm_num_groups)
            return set_error(err, "%s: field 'block_out_channels': %d is not a positive multiple of norm_num_groups %d",
                             path, ch, c->norm_num_groups);
    }
    return 0;
}

int vae_config_load(const char *path, vae_config *c, char *err) {
    cJSON *root = json_read_object(path, err);
    if (!root) return -1;
    memset(c, 0, sizeof *c);
    int rc = -1;
    const cJSON *blocks = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels"), *e;
    if (!cJSON_IsArray(blocks) || cJSON_GetArraySize(blocks) < 1 || cJSON_GetArraySize(blocks) > VAE_MAX_BLOCKS) {
        set_error(err, "%s: field 'block_out_channels': must be a list of 1 to %d channel counts", path,
                  VAE_MAX_BLOCKS);
        goto out;
    }
    cJSON_ArrayForEach(e, blocks) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int)e->valuedouble) {
            set_error(err, "%s: field 'block_out_channels': not a list of integers", path);
            goto out;
        }
        c->block_out_channels[c->n_blocks++] = (int)e->valuedouble;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "act_fn");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0)) {
        set_error(err, "%s: field 'act_fn': only \"silu\" is supported", path);
        goto out;
    }
    if (get_int(root, path, "in_channels", 3, &c->in_channels, err) ||
        get_int(root, path, "out_channels", 3, &c->out_channels, err) ||
        get_int(root, path, "latent_channels", -1, &c->latent_channels, err) ||
        get_int(root, path, "layers_per_block", 1, &c->layers_per_block, err) ||
        get_int(root, path, "norm_num_groups", 32, &c->norm_num_groups, err) ||
        get_int(root, path, "sample_size", 256, &c->sample_size, err) ||
        get_int(root, path, "use_quant_conv", 1, &c->use_quant_conv, err) ||
        get_int(root, path, "use_post_quant_conv", 1, &c->use_post_quant_conv, err) ||
        get_int(root, path, "mid_block_add_attention", 1, &c->mid_block_add_attention, err) ||
        get_float(root, path, "scaling_factor", 1.0f, &c->scaling_factor, err) ||
        get_float(root, path, "shift_factor", 0.0f, &c->shift_factor, err) ||
        check_types(root, path, "down_block_types", "DownEncoderBlock2D", c->n_blocks, err) ||
        check_types(root, path, "up_block_types", "UpDecoderBlock2D", c->n_blocks, err) || validate(c, path, err))
        goto out;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

cJSON *vae_config_json(const vae_config *c) {
    cJSON *root = cJSON_CreateObject();
    cJSON *down = cJSON_AddArrayToObject(root, "down_block_types");
    cJSON *up = cJSON_AddArrayToObject(root, "up_block_types");
    cJSON *blocks = cJSON_AddArrayToObject(root, "block_out_channels");
    cJSON_AddStringToObject(root, "_class_name", "AutoencoderKL");
    for (int b = 0; b < c->n_blocks; b++) {
        cJSON_AddItemToArray(down, cJSON_CreateString("DownEncoderBlock2D"));
        cJSON_AddItemToArray(up, cJSON_CreateString("UpDecoderBlock2D"));
        cJSON_AddItemToArray(blocks, cJSON_CreateNumber(c->block_out_channels[b]));
    }
    cJSON_AddStringToObject(root, "act_fn", "silu");
    cJSON_AddNumberToObject(root, "in_channels", c->in_channels);
    cJSON_AddNumberToObject(root, "out_channels", c->out_channels);
    cJSON_AddNumberToObject(root, "latent_channels", c->latent_channels);
    cJSON_AddNumberToObject(root, "layers_per_block", c->layers_per_block);
    cJSON_AddNumberToObject(root, "norm_num_groups", c->norm_num_groups);
    cJSON_AddNumberToObject(root, "sample_size", c->sample_size);
    cJSON_AddNumberToObject(root, "scaling_factor", c->scaling_factor);
    if (c->shift_factor != 0.0f)
        cJSON_AddNumberToObject(root, "shift_factor", c->shift_factor);
    else
        cJSON_AddNullToObject(root, "shift_factor");
    cJSON_AddBoolToObject(root, "use_quant_conv", c->use_quant_conv);
    cJSON_AddBoolToObject(root, "use_post_quant_conv", c->use_post_quant_conv);
    cJSON_AddBoolToObject(root, "mid_block_add_attention", c->mid_block_add_attention);
    return root;
}

int vae_config_save(const char *path, const vae_config *c, char *err) {
    return json_write(path, vae_config_json(c), err);
}
