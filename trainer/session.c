/* session.c - what generation and evaluation open from a checkpoint
 * (session.h): the model on the --device backend, its tokenizer, the VAE and
 * latent statistics, the context; pixels to latents and back. */
#include "session.h"
#include "../checkpoint/ckpt.h"
#include "../common/error.h"
#include "../common/json_file.h"
#include "../nn/backend.h"
#include "../vae/image_write.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- device */

const cli_flag device_flags[] = {
    {"device", FLAG_TEXT, "cpu|cuda", NULL, "cpu",
     "the backend (cpu-device: the CPU's kernels on the GPU's code path)"},
    {"precision", FLAG_CHOICE, "fp32|bf16", NULL, NULL,
     "the matrix products' operands (default: the device's, fp32 on cpu, bf16 on cuda; "
     "train on cpu: bf16, or a resumed run's)"},
    {"ce-chunk", FLAG_INT, "N", "[0, inf)", "0",
     "LM positions per cross-entropy chunk where losses are taken (0: as many as keep a chunk's logits within "
     "64 MiB of float32)"},
    {0},
};

void session_init_device(const args *a) {
    nn_init_device(arg_str(a, "device"), arg_str(a, "precision"), (int)arg_int(a, "threads"));
    model_set_ce_chunk((int)arg_int(a, "ce-chunk"));
}

/* The VAE's kernels exist on the CPU backend alone (the CUDA backend leaves
 * them out) and its activations are host memory: every VAE call runs between
 * vae_on_cpu(1) and vae_on_cpu(0), which returns to the model's backend. */
void vae_on_cpu(int on) {
    static const nn_backend *model_backend;
    if (on) model_backend = nn_current_backend();
    nn_use_backend(on ? &nn_cpu_backend : model_backend);
}

/* ------------------------------------------------------------ checkpoint */

static int exists(const char *dir, const char *name) {
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* Whether any *.safetensors file of dir holds the tensor. */
static int has_tensor(const char *dir, const char *name) {
    DIR *dh = opendir(dir);
    struct dirent *e;
    int found = 0;
    while (dh && !found && (e = readdir(dh))) {
        size_t n = strlen(e->d_name);
        if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors") != 0 || e->d_name[0] == '.') continue;
        char path[4400], err[ERR_LEN];
        st_file f;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (st_open(path, &f, err) == 0) {
            found = st_find(&f, name) != NULL;
            st_close(&f);
        }
    }
    if (dh) closedir(dh);
    return found;
}

/* A checkpoint: a consolidated folder (config.json + *.safetensors, as
 * `trainer export` or `init` write), a training step folder (sharded, its
 * checksums verified), or a run's checkpoint folder (its newest complete
 * step). dir gets the folder that holds the weights and their extra files.
 * From a step folder, `which` weights: the EMA when there is one (AUTO) or
 * as --weights says; an export holds one set, its own. */
static const char *load_checkpoint(const char *path, ckpt_weights which, model *m, char *dir, size_t len) {
    char err[ERR_LEN];
    int step = exists(path, "model.safetensors.index.json");
    if (!exists(path, "config.json")) {
        int rc = ckpt_resolve(path, "auto", dir, len, err);
        if (rc == 1) die_input("--ckpt %s: no config.json and no checkpoint step folder", path);
        if (rc) die_input("--ckpt %s: %s", path, err);
        step = 1;
    } else {
        snprintf(dir, len, "%s", path);
        if (step && ckpt_verify(dir, err)) die_input("%s", err);
    }
    model_config c;
    char cfg[4400];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    if (config_load(cfg, &c, err)) die_input("%s", err);
    if (!has_tensor(dir, "image.patch_in.weight"))
        die_input(
            "%s: the checkpoint has no image parameters (image.patch_in.weight): it cannot generate or read images",
            dir);
    if (step) {
        ckpt_reader rd;
        if (ckpt_open(&rd, dir, err)) die_input("%s", err);
        model_create(m, &c);
        ckpt_weights used;
        if (ckpt_load_chosen(&rd, &m->ps, which, &used, err)) die_input("%s", err);
        ckpt_close(&rd);
        model_upload_weights(m); /* (model_load uploads them itself) */
        return used == CKPT_EMA ? "ema" : "raw";
    }
    if (which == CKPT_EMA)
        die_input("--weights ema: %s is an export, which holds one set of weights (export it with --weights ema)", dir);
    if (model_load(m, dir, err)) die_input("%s", err);
    return "export";
}

/* The context: --context, else the sequence length the checkpoint was
 * trained at (trainer_state.json), else 256 (the loader's default). */
static int context_of(const args *a, const char *dir) {
    if (arg_given(a, "context")) return (int)arg_int(a, "context");
    char path[4400], err[ERR_LEN];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    cJSON *st = access(path, F_OK) == 0 ? json_read_object(path, err) : NULL;
    const cJSON *L = cJSON_GetObjectItemCaseSensitive(st, "seq_len");
    long ctx = cJSON_IsNumber(L) && L->valuedouble >= 1 ? (long)L->valuedouble : 256;
    cJSON_Delete(st);
    return (int)ctx;
}

static spm *load_tokenizer(const args *a, const char *dir, const model_config *c) {
    char def[4400], err[ERR_LEN];
    snprintf(def, sizeof def, "%s/tokenizer.model", dir);
    const char *path = arg_given(a, "tokenizer") ? arg_str(a, "tokenizer") : def;
    spm *tok = spm_load(path, err);
    if (!tok) die_input("%s", err);
    const spm_ids *ids = spm_get_ids(tok);
    if (ids->vocab_size != c->vocab_size || ids->bos != c->bos_token_id || ids->eos != c->eos_token_id ||
        ids->boi != c->boi_token_id || ids->eoi != c->eoi_token_id)
        die_input("%s: vocabulary %d with BOS/EOS/BOI/EOI %d/%d/%d/%d, but the checkpoint has %d with %d/%d/%d/%d",
                  path, ids->vocab_size, ids->bos, ids->eos, ids->boi, ids->eoi, c->vocab_size, c->bos_token_id,
                  c->eos_token_id, c->boi_token_id, c->eoi_token_id);
    return tok;
}

static void image_io_open(image_io *io, const args *a, const char *dir, const model_config *c) {
    char err[ERR_LEN], path[4400];
    io->vae = vae_load(arg_str(a, "vae"), err);
    if (!io->vae) die_input("%s", err);
    const vae_config *vc = vae_cfg(io->vae);
    if (vc->latent_channels != c->latent_channels)
        die_input("--vae %s: %d latent channels, but the checkpoint's model has %d", arg_str(a, "vae"),
                  vc->latent_channels, c->latent_channels);
    io->size = c->latent_size * vae_downscale(vc);
    snprintf(path, sizeof path, "%s/latent_stats.json", dir);
    cJSON *ds = json_read_object(path, err);
    if (!ds) die_input("%s (the latent statistics the checkpoint records)", err);
    io->mean = xmalloc(sizeof(double) * c->latent_channels);
    io->std = xmalloc(sizeof(double) * c->latent_channels);
    if (json_number_list(ds, "channel_mean", c->latent_channels, 0, io->mean, path, err) ||
        json_number_list(ds, "channel_std", c->latent_channels, 1, io->std, path, err))
        die_input("%s", err);
    cJSON_Delete(ds);
}

static void image_io_close(image_io *io) {
    vae_on_cpu(1);
    vae_free(io->vae);
    vae_on_cpu(0);
    free(io->mean);
    free(io->std);
}

void session_open(session *s, const args *a) {
    ckpt_weights which;
    char err[ERR_LEN];
    if (ckpt_weights_parse(arg_str(a, "weights"), &which, err)) die_input("%s", err);
    s->weights = load_checkpoint(arg_str(a, "ckpt"), which, &s->m, s->dir, sizeof s->dir);
    s->tok = load_tokenizer(a, s->dir, &s->m.cfg);
    image_io_open(&s->io, a, s->dir, &s->m.cfg);
    s->context = context_of(a, s->dir);
}

void session_close(session *s) {
    image_io_close(&s->io);
    spm_free(s->tok);
    model_free(&s->m);
}

long session_encode(session *s, const char *what, const char *text, long extra, int32_t **ids) {
    char err[ERR_LEN];
    size_t cap = 0;
    *ids = NULL;
    long n = spm_encode(s->tok, text, strlen(text), ids, &cap, err);
    if (n < 0) die_input("%s: %s", what, err);
    if (n + extra > s->context)
        die_input("%s: %ld tokens need %ld positions, but the model's context is %d", what, n, n + extra, s->context);
    return n;
}

/* ---------------------------------------------------------------- options */

const cli_flag session_flags[] = {
    {"ckpt", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL,
     "a checkpoint: an export, a step folder or a run's folder (its newest step)"},
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE whose latents the model was trained on"},
    {"tokenizer", FLAG_TEXT, "TOK.model", NULL, NULL, "the tokenizer (default: the checkpoint's tokenizer.model)"},
    {"weights", FLAG_CHOICE, "ema|raw", NULL, NULL,
     "which weights of a step folder (default: the EMA where there is one)"},
    {"context", FLAG_INT, "C", "[1, inf)", NULL, "positions (default: the trained sequence length, else 256)"},
    {0},
};

const cli_flag text_flags[] = {
    {"max-tokens", FLAG_INT, "M", "[0, inf)", "64", "most tokens of text to generate"},
    {"top-p", FLAG_NUM, "P", "(0, 1]", "1", "nucleus sampling: the smallest set of tokens with this much probability"},
    {"top-k", FLAG_INT, "K", "[0, inf)", "0", "sample among the K likeliest tokens (0: all)"},
    {0},
};

const cli_flag image_flags[] = {
    {"steps", FLAG_INT, "D", "[1, inf)", "250", "denoising steps (at most the model's diffusion steps)"},
    {"sampler", FLAG_CHOICE, "ddpm|ddim", NULL, "ddpm", "the reverse process"},
    {"eta", FLAG_NUM, "E", "[0, inf)", "0", "DDIM's noise (0: deterministic); DDPM is eta 1"},
    {"cfg", FLAG_NUM, "G", "[0, inf)", "5", "classifier-free guidance scale (1: none)"},
    {"clip", FLAG_NUM, "X", "[0, inf)", "4", "clip the predicted clean latent to [-X, X] (0: no clipping)"},
    {"no-cache", FLAG_SWITCH, NULL, NULL, NULL,
     "recompute every position at each step instead of caching keys and values"},
    {0},
};

gen_options session_text_options(const args *a, int context, int K) {
    gen_options o = {.n = K, .context = context};
    o.max_tokens = (int)arg_int(a, "max-tokens");
    o.temperature = (float)arg_num(a, "temperature");
    o.top_p = (float)arg_num(a, "top-p");
    o.top_k = (int)arg_int(a, "top-k");
    o.seed = (uint64_t)arg_int(a, "seed");
    return o;
}

void session_image_options(const args *a, const model_config *c, gen_options *o) {
    o->steps = (int)arg_int(a, "steps");
    if (o->steps > c->diffusion_steps)
        die_input("%s %s: --steps %d: the model has %d diffusion steps", a->prog->name, a->cmd->name, o->steps,
                  c->diffusion_steps);
    const char *s = arg_str(a, "sampler");
    o->eta = strcmp(s, "ddpm") == 0 ? 1.0f : (float)arg_num(a, "eta");
    o->cfg = (float)arg_num(a, "cfg");
    o->clip = (float)arg_num(a, "clip");
    o->recompute = arg_switch(a, "no-cache");
}

/* ---------------------------------------------------------------- text and pixels */

char *session_decode(const spm *tok, const int32_t *ids, int n) {
    const spm_ids *s = spm_get_ids(tok);
    int32_t *keep = xmalloc(sizeof(int32_t) * (n + 1));
    int k = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] < s->pieces && ids[i] != s->bos && ids[i] != s->eos && ids[i] != s->boi && ids[i] != s->eoi &&
            ids[i] != s->pad)
            keep[k++] = ids[i];
    char *text = NULL, err[ERR_LEN];
    if (spm_decode(tok, keep, k, &text, err) < 0) die("%s", err);
    free(keep);
    return text;
}

void image_io_encode(image_io *io, const model_config *c, const float *rgb, int n, float *latents) {
    int C = c->latent_channels, hw = c->latent_size * c->latent_size, S = io->size;
    float *logvar = xmalloc(sizeof(float) * (size_t)n * C * hw);
    vae_on_cpu(1);
    vae_encode(io->vae, rgb, n, S, S, latents, logvar);
    vae_on_cpu(0);
    free(logvar);
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < C; ch++) {
            float *x = latents + ((size_t)i * C + ch) * hw;
            for (int q = 0; q < hw; q++) x[q] = (float)(((double)x[q] - io->mean[ch]) * (1.0 / io->std[ch]));
        }
}

void image_io_decode(image_io *io, const model_config *c, const float *x, int n, uint8_t *rgb) {
    int C = c->latent_channels, hw = c->latent_size * c->latent_size, S = io->size;
    float *z = xmalloc(sizeof(float) * C * hw), *img = xmalloc(sizeof(float) * 3 * S * S);
    for (int i = 0; i < n; i++) {
        for (int ch = 0; ch < C; ch++)
            for (int q = 0; q < hw; q++)
                z[ch * hw + q] = (float)(x[((size_t)i * C + ch) * hw + q] * io->std[ch] + io->mean[ch]);
        vae_on_cpu(1);
        vae_decode(io->vae, z, 1, c->latent_size, c->latent_size, img);
        vae_on_cpu(0);
        image_to_rgb8(rgb + (size_t)i * S * S * 3, img, S, S);
    }
    free(z);
    free(img);
}
