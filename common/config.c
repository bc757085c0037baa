/* config.c - the model's config.json (config.h, docs/model.md
 * section 6): JSON via cJSON, defaults, validation and atomic saving.
 * Messages go into err, which must hold ERR_LEN (512) bytes like the
 * safetensors functions' buffers. */
#include "config.h"
#include "json_file.h"
#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    const char *name;
    size_t offset; /* into model_config */
    int is_float;
    int required;
} field;

#define INT_FIELD(f, req)                                                                                              \
    { #f, offsetof(model_config, f), 0, req }
#define FLOAT_FIELD(f)                                                                                                 \
    { #f, offsetof(model_config, f), 1, 0 }

/* In the order of model_config, which is the order config_save writes. */
static const field fields[] = {
    INT_FIELD(vocab_size, 1),          INT_FIELD(hidden_size, 1),       INT_FIELD(num_hidden_layers, 1),
    INT_FIELD(num_attention_heads, 1), INT_FIELD(intermediate_size, 1), FLOAT_FIELD(rms_norm_eps),
    FLOAT_FIELD(rope_theta),           INT_FIELD(latent_channels, 1),   INT_FIELD(latent_size, 1),
    INT_FIELD(patch_size, 1),          INT_FIELD(max_image_patches, 1), INT_FIELD(timestep_dim, 0),
    INT_FIELD(diffusion_steps, 0),     FLOAT_FIELD(lambda_diffusion),   INT_FIELD(bos_token_id, 0),
    INT_FIELD(eos_token_id, 0),        INT_FIELD(boi_token_id, 0),      INT_FIELD(eoi_token_id, 0),
};
#define N_FIELDS ((int)(sizeof fields / sizeof fields[0]))

/* "image_encoder" and, for "unet", its settings (defaults in config.h). */
static int load_image_encoder(const cJSON *root, const char *path, model_config *c, char *err) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "image_encoder");
    if (!e) return 0;
    if (!cJSON_IsString(e) || (strcmp(e->valuestring, "linear") && strcmp(e->valuestring, "unet")))
        return set_error(err, "%s: field 'image_encoder': expected \"linear\" or \"unet\"", path);
    if (strcmp(e->valuestring, "unet")) return 0;
    c->image_unet = 1;
    c->unet_levels = 2;
    c->unet_channels[0] = 64;
    c->unet_channels[1] = 128;
    c->unet_layers_per_block = 1;
    c->unet_groups = 8;
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(root, "unet_channels");
    if (ch) {
        int n = cJSON_GetArraySize(ch);
        if (!cJSON_IsArray(ch) || n < 1 || n > CONFIG_UNET_LEVELS)
            return set_error(err, "%s: field 'unet_channels': expected a list of 1 to %d channel counts", path,
                             CONFIG_UNET_LEVELS);
        c->unet_levels = n;
        for (int i = 0; i < n; i++) {
            const cJSON *v = cJSON_GetArrayItem(ch, i);
            if (!cJSON_IsNumber(v) || v->valuedouble != (int)v->valuedouble || v->valuedouble < 1 ||
                v->valuedouble > 65536)
                return set_error(err, "%s: field 'unet_channels': entry %d is not a count in [1, 65536]", path, i);
            c->unet_channels[i] = (int)v->valuedouble;
        }
    }
    const struct {
        const char *name;
        int *value;
    } ints[] = {{"unet_layers_per_block", &c->unet_layers_per_block}, {"unet_groups", &c->unet_groups}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, ints[i].name);
        if (!v) continue;
        if (!cJSON_IsNumber(v) || v->valuedouble != (int)v->valuedouble || v->valuedouble < 1 ||
            v->valuedouble > 65536)
            return set_error(err, "%s: field '%s': not a count in [1, 65536]", path, ints[i].name);
        *ints[i].value = (int)v->valuedouble;
    }
    return 0;
}

int config_load(const char *path, model_config *c, char *err) { return config_load_given(path, NULL, NULL, c, err); }

int config_load_given(const char *path, const cJSON *given, const char *source, model_config *c, char *err) {
    cJSON *root = json_read_object(path, err);
    if (!root) return -1;

    *c = (model_config){
        .rms_norm_eps = 1e-5f,
        .rope_theta = 10000.0f,
        .timestep_dim = 256,
        .diffusion_steps = 1000,
        .lambda_diffusion = 5.0f,
        .bos_token_id = 1,
        .eos_token_id = 2,
        .boi_token_id = -1,
        .eoi_token_id = -1,
    };
    int rc = 0;
    for (int i = 0; i < N_FIELDS && rc == 0; i++) {
        const field *f = &fields[i];
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, f->name);
        const cJSON *g = given ? cJSON_GetObjectItemCaseSensitive(given, f->name) : NULL;
        char *dst = (char *)c + f->offset;
        if (v && g && !(cJSON_IsNumber(v) && cJSON_IsNumber(g) && v->valuedouble == g->valuedouble)) {
            rc = set_error(err, "%s: field '%s': %g, but %s has %g", path, f->name,
                           cJSON_IsNumber(v) ? v->valuedouble : NAN, source, g->valuedouble);
            continue;
        }
        if (!v) v = g;
        if (!v) {
            if (f->required) rc = set_error(err, "%s: field '%s': missing", path, f->name);
            continue;
        }
        if (!cJSON_IsNumber(v)) {
            rc = set_error(err, "%s: field '%s': not a number", path, f->name);
            continue;
        }
        double d = v->valuedouble;
        if (f->is_float) {
            if (!(d >= -FLT_MAX && d <= FLT_MAX)) {
                rc = set_error(err, "%s: field '%s': %g is out of range", path, f->name, d);
            } else {
                float x = (float)d;
                memcpy(dst, &x, sizeof x);
            }
        } else {
            if (!(d >= -2147483648.0 && d <= 2147483647.0)) {
                rc = set_error(err, "%s: field '%s': %g is out of range", path, f->name, d);
            } else if (d != (double)(int)d) {
                rc = set_error(err, "%s: field '%s': %g is not an integer", path, f->name, d);
            } else {
                int x = (int)d;
                memcpy(dst, &x, sizeof x);
            }
        }
    }
    /* The one string field. */
    const cJSON *ia = cJSON_GetObjectItemCaseSensitive(root, "image_attention");
    if (rc == 0 && ia) {
        int causal = cJSON_IsString(ia) && strcmp(ia->valuestring, "causal") == 0;
        if (!causal && !(cJSON_IsString(ia) && strcmp(ia->valuestring, "bidirectional") == 0))
            rc = set_error(err, "%s: field 'image_attention': expected \"bidirectional\" or \"causal\"", path);
        c->image_causal = causal;
    }
    if (rc == 0) rc = load_image_encoder(root, path, c, err);
    /* BOI and EOI default to the two ids appended after the SentencePiece
     * vocabulary (docs/model.md section 1). */
    if (!cJSON_GetObjectItemCaseSensitive(root, "boi_token_id") &&
        !(given && cJSON_GetObjectItemCaseSensitive(given, "boi_token_id")))
        c->boi_token_id = c->vocab_size - 2;
    if (!cJSON_GetObjectItemCaseSensitive(root, "eoi_token_id") &&
        !(given && cJSON_GetObjectItemCaseSensitive(given, "eoi_token_id")))
        c->eoi_token_id = c->vocab_size - 1;
    cJSON_Delete(root);
    return rc != 0 ? rc : config_validate(c, path, err);
}

int config_validate(const model_config *c, const char *path, char *err) {
    const struct {
        const char *name;
        int value;
    } positive[] = {
        {"vocab_size", c->vocab_size},
        {"hidden_size", c->hidden_size},
        {"num_hidden_layers", c->num_hidden_layers},
        {"num_attention_heads", c->num_attention_heads},
        {"intermediate_size", c->intermediate_size},
        {"latent_channels", c->latent_channels},
        {"latent_size", c->latent_size},
        {"patch_size", c->patch_size},
        {"max_image_patches", c->max_image_patches},
        {"timestep_dim", c->timestep_dim},
    };
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        if (positive[i].value <= 0) return set_error(err, "%s: field '%s': must be > 0", path, positive[i].name);

    if (c->hidden_size % c->num_attention_heads != 0)
        return set_error(err, "%s: field 'hidden_size': %d is not divisible by num_attention_heads %d", path,
                         c->hidden_size, c->num_attention_heads);
    if (cfg_head_dim(c) % 2 != 0)
        return set_error(err,
                         "%s: field 'hidden_size': head_dim %d (hidden_size / "
                         "num_attention_heads) must be even for RoPE",
                         path, cfg_head_dim(c));
    if (c->latent_size % c->patch_size != 0)
        return set_error(err, "%s: field 'patch_size': %d does not divide latent_size %d", path, c->patch_size,
                         c->latent_size);
    /* In 64 bits: the square of a large grid would overflow an int. */
    long long grid = c->latent_size / c->patch_size;
    if (c->max_image_patches < grid * grid)
        return set_error(err,
                         "%s: field 'max_image_patches': %d is less than the %lld patches "
                         "of one image",
                         path, c->max_image_patches, grid * grid);
    if (c->timestep_dim % 2 != 0)
        return set_error(err, "%s: field 'timestep_dim': %d must be even", path, c->timestep_dim);
    if (c->diffusion_steps < 2)
        return set_error(err, "%s: field 'diffusion_steps': %d must be >= 2", path, c->diffusion_steps);

    /* Written as !(x > 0) so that NaN fails too. */
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        return set_error(err, "%s: field 'rms_norm_eps': %g must be > 0", path, c->rms_norm_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return set_error(err, "%s: field 'rope_theta': %g must be > 0", path, c->rope_theta);
    if (!(c->lambda_diffusion >= 0) || !isfinite(c->lambda_diffusion))
        return set_error(err, "%s: field 'lambda_diffusion': %g must be >= 0", path, c->lambda_diffusion);

    if (c->image_unet) {
        int levels = c->unet_levels;
        if (levels < 1 || levels > CONFIG_UNET_LEVELS || c->unet_layers_per_block < 1 || c->unet_groups < 1)
            return set_error(err, "%s: field 'unet_channels': 1 to %d levels, with unet_layers_per_block and "
                             "unet_groups >= 1", path, CONFIG_UNET_LEVELS);
        if (c->patch_size != 1 << (levels - 1))
            return set_error(err,
                             "%s: field 'patch_size': %d, but %d U-Net levels halve the latent %d times, so it "
                             "must be %d",
                             path, c->patch_size, levels, levels - 1, 1 << (levels - 1));
        for (int i = 0; i < levels; i++)
            if (c->unet_channels[i] < 1 || c->unet_channels[i] % c->unet_groups)
                return set_error(err, "%s: field 'unet_groups': %d does not divide unet_channels[%d] = %d", path,
                                 c->unet_groups, i, c->unet_channels[i]);
    }

    const struct {
        const char *name;
        int value;
    } ids[] = {
        {"bos_token_id", c->bos_token_id},
        {"eos_token_id", c->eos_token_id},
        {"boi_token_id", c->boi_token_id},
        {"eoi_token_id", c->eoi_token_id},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if (ids[i].value < 0 || ids[i].value >= c->vocab_size)
            return set_error(err, "%s: field '%s': %d is not in [0, vocab_size %d)", path, ids[i].name, ids[i].value,
                             c->vocab_size);
    return 0;
}

/* The shortest decimal that reads back as exactly v: "1e-05", not the
 * "9.99999975e-06" that a fixed %.9g would give, and "10000" rather than
 * "1e+04" for whole numbers. */
static void format_float(char *buf, size_t size, float v) {
    if (v > -1e15f && v < 1e15f && v == (float)(long long)v) {
        snprintf(buf, size, "%.0f", v);
        return;
    }
    for (int prec = 1; prec <= 9; prec++) {
        snprintf(buf, size, "%.*g", prec, v);
        if (strtof(buf, NULL) == v) return;
    }
}

cJSON *config_json(const model_config *c) {
    cJSON *root = cJSON_CreateObject();
    int ok = root != NULL;
    for (int i = 0; ok && i < N_FIELDS; i++) {
        const field *f = &fields[i];
        const char *src = (const char *)c + f->offset;
        cJSON *v;
        if (f->is_float) {
            float x;
            char num[32];
            memcpy(&x, src, sizeof x);
            format_float(num, sizeof num, x);
            v = cJSON_CreateRaw(num);
        } else {
            int x;
            memcpy(&x, src, sizeof x);
            v = cJSON_CreateNumber(x);
        }
        ok = v && cJSON_AddItemToObject(root, f->name, v);
        if (v && !ok) cJSON_Delete(v);
    }
    ok = ok && cJSON_AddStringToObject(root, "image_attention", c->image_causal ? "causal" : "bidirectional");
    if (ok && c->image_unet) { /* a linear config's file stays as it was */
        cJSON *ch = cJSON_CreateIntArray(c->unet_channels, c->unet_levels);
        ok = cJSON_AddStringToObject(root, "image_encoder", "unet") && ch && cJSON_AddItemToObject(root, "unet_channels", ch) &&
             cJSON_AddNumberToObject(root, "unet_layers_per_block", c->unet_layers_per_block) &&
             cJSON_AddNumberToObject(root, "unet_groups", c->unet_groups);
    }
    if (!ok) die("out of memory writing a model config");
    return root;
}

int config_save(const char *path, const model_config *c, char *err) {
    /* Never write a config that config_load would refuse. */
    if (config_validate(c, path, err) != 0) return -1;
    return json_write(path, config_json(c), err);
}
