/* test_config.c - unit tests of common/config.c: loading with defaults, the
 * save/load round trip, and the rejection of bad configs with a message
 * that names the file and the field. */
#include "check.h"
#include "../common/config.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[] = "/tmp/test_config.XXXXXX";

static const char *base_json = "{\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":2,"
                               "\"num_attention_heads\":4,\"intermediate_size\":48,\"latent_channels\":4,"
                               "\"latent_size\":4,\"patch_size\":2,\"max_image_patches\":4}";

static const char *in_dir(const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

static void write_text(const char *name, const char *text) {
    FILE *fp = fopen(in_dir(name), "w");
    if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0) {
        perror(in_dir(name));
        exit(1);
    }
}

/* Writes the base config with `key` set to the JSON `value` (or removed
 * when value is NULL) and loads it. */
static int load_with(const char *name, const char *key, const char *value, model_config *c, char *err) {
    cJSON *root = cJSON_Parse(base_json);
    cJSON_DeleteItemFromObjectCaseSensitive(root, key);
    if (value) cJSON_AddItemToObject(root, key, cJSON_CreateRaw(value));
    char *text = cJSON_PrintUnformatted(root);
    write_text(name, text);
    cJSON_free(text);
    cJSON_Delete(root);
    err[0] = '\0';
    return config_load(in_dir(name), c, err);
}

/* Does loading fail with a message naming the file and containing want? */
static int rejects(const char *name, const char *key, const char *value, const char *want) {
    model_config c;
    char err[ERR_LEN];
    int rc = load_with(name, key, value, &c, err);
    printf("# %s\n", err);
    return rc != 0 && strstr(err, name) && strstr(err, want) && !strchr(err, '\n');
}

static void test_valid(void) {
    model_config c;
    char err[ERR_LEN] = "";
    write_text("base.json", base_json);
    int rc = config_load(in_dir("base.json"), &c, err);
    CHECK(rc == 0, "valid_load %s", err);
    CHECK(c.vocab_size == 64 && c.hidden_size == 32 && c.num_hidden_layers == 2 && c.num_attention_heads == 4 &&
              c.intermediate_size == 48 && c.latent_channels == 4 && c.latent_size == 4 && c.patch_size == 2 &&
              c.max_image_patches == 4,
          "valid_load_fields");
    CHECK(c.rms_norm_eps == 1e-5f && c.rope_theta == 10000.0f && c.timestep_dim == 256 && c.diffusion_steps == 1000 &&
              c.lambda_diffusion == 5.0f,
          "defaults");
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.boi_token_id == 62 && c.eoi_token_id == 63,
          "default_token_ids");
    CHECK(cfg_head_dim(&c) == 8 && cfg_patch_dim(&c) == 16 && cfg_patches_per_image(&c) == 4, "derived_sizes");

    CHECK(c.image_causal == 0, "image_attention defaults to bidirectional");
    rc = load_with("causal.json", "image_attention", "\"causal\"", &c, err);
    CHECK(rc == 0 && c.image_causal == 1, "image_attention causal loads %s", err);

    rc = load_with("extra.json", "torch_dtype", "\"float32\"", &c, err);
    CHECK(rc == 0, "unknown_field_ignored %s", err);
}

static void test_round_trip(void) {
    model_config c = {
        .vocab_size = 32002,
        .hidden_size = 384,
        .num_hidden_layers = 6,
        .num_attention_heads = 6,
        .intermediate_size = 1024,
        .rms_norm_eps = 1e-6f,
        .rope_theta = 500000.0f,
        .latent_channels = 4,
        .latent_size = 32,
        .patch_size = 2,
        .max_image_patches = 256,
        .timestep_dim = 128,
        .diffusion_steps = 1000,
        .lambda_diffusion = 0.3f,
        .bos_token_id = 1,
        .eos_token_id = 2,
        .boi_token_id = 32000,
        .eoi_token_id = 32001,
        .image_causal = 1,
    };
    char err[ERR_LEN] = "";
    int rc = config_save(in_dir("saved.json"), &c, err);
    CHECK(rc == 0, "save %s", err);

    model_config back;
    memset(&back, 0xff, sizeof back);
    rc = config_load(in_dir("saved.json"), &back, err);
    CHECK(rc == 0 && memcmp(&c, &back, sizeof c) == 0, "save_load_round_trip %s", err);

    char text[4096] = "";
    FILE *fp = fopen(in_dir("saved.json"), "r");
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    text[n] = '\0';
    if (fp) fclose(fp);
    CHECK(strstr(text, "0.3") && !strstr(text, "0.300000") && strstr(text, "1e-06") && strstr(text, "\t500000,"),
          "floats_written_short");
    CHECK(strchr(text, '\n') != strrchr(text, '\n'), "pretty_printed");

    int temps = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) temps += strstr(e->d_name, ".tmp.") != NULL;
    if (d) closedir(d);
    CHECK(temps == 0, "save_leaves_no_temp_file");

    c.num_attention_heads = 0;
    rc = config_save(in_dir("invalid.json"), &c, err);
    CHECK(rc != 0 && access(in_dir("invalid.json"), F_OK) != 0, "save_refuses_invalid");
}

static void test_invalid(void) {
    CHECK(rejects("missing.json", "hidden_size", NULL, "field 'hidden_size': missing"), "missing_field");
    CHECK(rejects("zero_heads.json", "num_attention_heads", "0", "field 'num_attention_heads': must be > 0"),
          "zero_heads");
    CHECK(rejects("not_divisible.json", "hidden_size", "30",
                  "field 'hidden_size': 30 is not divisible by num_attention_heads 4"),
          "hidden_not_divisible_by_heads");
    CHECK(rejects("odd_head_dim.json", "hidden_size", "12", "field 'hidden_size'"), "odd_head_dim");
    CHECK(rejects("patch.json", "patch_size", "3", "field 'patch_size': 3 does not divide latent_size 4"),
          "patch_not_dividing");
    CHECK(rejects("few_patches.json", "max_image_patches", "3", "field 'max_image_patches'"),
          "max_image_patches_too_small");
    CHECK(rejects("string.json", "hidden_size", "\"32\"", "field 'hidden_size': not a number"), "string_value");
    CHECK(rejects("fraction.json", "hidden_size", "32.5", "field 'hidden_size': 32.5 is not an integer"),
          "non_integer");
    CHECK(rejects("huge.json", "vocab_size", "1e12", "field 'vocab_size'"), "int_out_of_range");
    CHECK(rejects("negative.json", "intermediate_size", "-1", "field 'intermediate_size'"), "negative_size");
    CHECK(rejects("timestep.json", "timestep_dim", "255", "field 'timestep_dim'"), "odd_timestep_dim");
    CHECK(rejects("steps.json", "diffusion_steps", "1", "field 'diffusion_steps'"), "one_diffusion_step");
    CHECK(rejects("eps.json", "rms_norm_eps", "0", "field 'rms_norm_eps'"), "zero_eps");
    CHECK(rejects("theta.json", "rope_theta", "-1", "field 'rope_theta'"), "negative_theta");
    CHECK(rejects("lambda.json", "lambda_diffusion", "-0.5", "field 'lambda_diffusion'"), "negative_lambda");
    CHECK(rejects("inf.json", "lambda_diffusion", "1e999", "field 'lambda_diffusion'"), "infinite_float");
    CHECK(rejects("big.json", "rope_theta", "1e300", "field 'rope_theta'"), "float_out_of_range");
    CHECK(rejects("boi.json", "boi_token_id", "64", "field 'boi_token_id': 64 is not in [0, vocab_size 64)"),
          "token_id_out_of_range");
    CHECK(rejects("tiny_vocab.json", "vocab_size", "1", "field 'bos_token_id'"), "default_ids_need_vocab");
    CHECK(rejects("attention.json", "image_attention", "\"full\"", "field 'image_attention'"),
          "image_attention_unknown_value");
    CHECK(rejects("attention_num.json", "image_attention", "1", "field 'image_attention'"),
          "image_attention_not_a_string");

    model_config c;
    char err[ERR_LEN] = "";
    write_text("not_json.json", "vocab_size = 64\n");
    int rc = config_load(in_dir("not_json.json"), &c, err);
    CHECK(rc != 0 && strstr(err, "not_json.json") && strstr(err, "not valid JSON"), "non_json_file %s", err);

    write_text("array.json", "[1, 2]");
    rc = config_load(in_dir("array.json"), &c, err);
    CHECK(rc != 0 && strstr(err, "array.json") && strstr(err, "not a JSON object"), "json_not_object %s", err);

    write_text("trailing.json", "{\"vocab_size\": 64} {");
    rc = config_load(in_dir("trailing.json"), &c, err);
    CHECK(rc != 0 && strstr(err, "trailing.json"), "trailing_garbage %s", err);

    rc = config_load(in_dir("absent.json"), &c, err);
    CHECK(rc != 0 && strstr(err, "absent.json"), "missing_file %s", err);
}

/* The base config plus `extra` fields (JSON members), loaded. */
static int load_extra(const char *name, const char *extra, model_config *c, char *err) {
    char text[1024];
    snprintf(text, sizeof text, "%.*s,%s}", (int)strlen(base_json) - 1, base_json, extra);
    write_text(name, text);
    err[0] = '\0';
    return config_load(in_dir(name), c, err);
}

/* "image_encoder": "unet" and its settings: defaults, the round trip,
 * refusals naming the file and the field. */
static void test_unet(void) {
    model_config c, back;
    char err[ERR_LEN];
    int rc = load_extra("unet.json", "\"image_encoder\":\"unet\"", &c, err);
    CHECK(rc == 0 && c.image_unet == 1 && c.unet_levels == 2 && c.unet_channels[0] == 64 && c.unet_channels[1] == 128 &&
              c.unet_layers_per_block == 1 && c.unet_groups == 8 && cfg_patch_features(&c) == 128,
          "unet: defaults [64, 128], 1 block, 8 groups; a patch becomes 128 features (%s)", err);
    rc = load_extra("lin.json", "\"image_encoder\":\"linear\"", &c, err);
    CHECK(rc == 0 && c.image_unet == 0 && cfg_patch_features(&c) == cfg_patch_dim(&c), "linear: the default path");
    write_text("unet3.json", "{\"vocab_size\":64,\"hidden_size\":32,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                             "\"intermediate_size\":48,\"latent_channels\":4,\"latent_size\":8,\"patch_size\":4,"
                             "\"max_image_patches\":4,\"image_encoder\":\"unet\",\"unet_channels\":[8,8,16],"
                             "\"unet_layers_per_block\":2,\"unet_groups\":4}");
    rc = config_load(in_dir("unet3.json"), &c, err);
    CHECK(rc == 0 && c.unet_levels == 3 && c.unet_channels[2] == 16 && c.unet_layers_per_block == 2, "unet: 3 levels %s",
          err);
    rc = config_save(in_dir("unet_saved.json"), &c, err) || config_load(in_dir("unet_saved.json"), &back, err);
    CHECK(rc == 0 && memcmp(&c, &back, sizeof c) == 0, "unet: save and load round trip %s", err);
    struct {
        const char *extra, *want;
    } bad[] = {
        {"\"image_encoder\":\"vit\"", "'image_encoder'"},
        {"\"image_encoder\":\"unet\",\"unet_channels\":[64,128,256]", "'patch_size': 2, but 3 U-Net levels"},
        {"\"image_encoder\":\"unet\",\"unet_channels\":[12,24]", "'unet_groups': 8 does not divide"},
        {"\"image_encoder\":\"unet\",\"unet_channels\":[]", "'unet_channels'"},
        {"\"image_encoder\":\"unet\",\"unet_channels\":[64,\"x\"]", "'unet_channels': entry 1"},
        {"\"image_encoder\":\"unet\",\"unet_groups\":0", "'unet_groups'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = load_extra("unet_bad.json", bad[i].extra, &c, err);
        printf("# %s\n", err);
        CHECK(rc != 0 && strstr(err, "unet_bad.json") && strstr(err, bad[i].want), "unet: refused %s", bad[i].extra);
    }
}

int main(void) {
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_valid();
    test_round_trip();
    test_invalid();
    test_unet();

    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.') unlink(in_dir(e->d_name));
    if (d) closedir(d);
    rmdir(dir);
    return CHECK_DONE();
}
