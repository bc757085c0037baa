/* sample.c - `trainer sample`, `trainer caption` and `trainer sample-bench`:
 * generation from a checkpoint (generate.h) with its tokenizer, latent
 * statistics and a VAE for the pixels.
 *
 *   sample  --ckpt DIR --vae VAE_DIR --prompt TEXT --out OUT_DIR [...]: K
 *           continuations; text to stdout and OUT_DIR/samples.jsonl, every
 *           image as OUT_DIR/sampleI-J.webp plus OUT_DIR/grid.png.
 *   caption --ckpt DIR --vae VAE_DIR --image FILE [--image FILE ...]: each
 *           image as `BOS BOI patches EOI [prompt]`, clean latents at t = 1,
 *           and the text that follows (greedy unless --temperature).
 *   sample-bench --config MODEL.json: tokens/s and images/s of a fresh model,
 *           with and without the KV cache, with and without guidance. */
#include "sample.h"
#include "generate.h"
#include "../checkpoint/ckpt.h"
#include "../common/atomic_file.h"
#include "../common/error.h"
#include "../common/file_read.h"
#include "../common/json_file.h"
#include "../common/timing.h"
#include "../dataloader/spm.h"
#include "../nn/kernels.h"
#include "../vae_service/image_source.h"
#include "../vae_service/image_write.h"
#include "../vae_service/vae.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
 * step). dir gets the folder that holds the weights and their extra files. */
static void load_checkpoint(const char *path, model *m, char *dir, size_t len) {
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
        die_input("%s: the checkpoint has no image parameters (image.patch_in.weight): it cannot generate or read images", dir);
    if (step) {
        ckpt_reader rd;
        if (ckpt_open(&rd, dir, err)) die_input("%s", err);
        model_create(m, &c);
        if (ckpt_load_weights(&rd, &m->ps, err)) die_input("%s", err);
        ckpt_close(&rd);
    } else if (model_load(m, dir, err)) {
        die_input("%s", err);
    }
}

/* The context: --context, else the sequence length the checkpoint was
 * trained at (trainer_state.json), else 256 (the loader's default). */
static int context_of(const args *a, const char *dir) {
    long ctx = arg_int(a, "context", 0, 1);
    if (ctx) return (int)ctx;
    char path[4400], err[ERR_LEN];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    cJSON *st = access(path, F_OK) == 0 ? json_read_object(path, err) : NULL;
    const cJSON *L = cJSON_GetObjectItemCaseSensitive(st, "seq_len");
    ctx = cJSON_IsNumber(L) && L->valuedouble >= 1 ? (long)L->valuedouble : 256;
    cJSON_Delete(st);
    return (int)ctx;
}

static spm *load_tokenizer(const args *a, const char *dir, const model_config *c) {
    char def[4400], err[ERR_LEN];
    snprintf(def, sizeof def, "%s/tokenizer.model", dir);
    const char *path = arg_str(a, "tokenizer", def);
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

/* What turns model latents into pixels and back: the VAE and the dataset's
 * per-channel statistics (latent_stats.json, the loader's dataset.json). */
typedef struct {
    vae_model *vae;
    double *mean, *std;
    int size;                   /* image side in pixels */
} image_io;

static void image_io_open(image_io *io, const args *a, const char *dir, const model_config *c) {
    char err[ERR_LEN], path[4400];
    io->vae = vae_load(arg_required(a, "vae"), err);
    if (!io->vae) die_input("%s", err);
    const vae_config *vc = vae_cfg(io->vae);
    if (vc->latent_channels != c->latent_channels)
        die_input("--vae %s: %d latent channels, but the checkpoint's model has %d", arg_required(a, "vae"),
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
    vae_free(io->vae);
    free(io->mean);
    free(io->std);
}

/* What sample and caption open: the checkpoint's model, tokenizer, VAE and
 * latent statistics, and the context. */
typedef struct {
    char dir[4096];
    model m;
    spm *tok;
    image_io io;
    int context;
} session;

static void session_open(session *s, const args *a) {
    load_checkpoint(arg_required(a, "ckpt"), &s->m, s->dir, sizeof s->dir);
    s->tok = load_tokenizer(a, s->dir, &s->m.cfg);
    image_io_open(&s->io, a, s->dir, &s->m.cfg);
    s->context = context_of(a, s->dir);
}

static void session_close(session *s) {
    image_io_close(&s->io);
    spm_free(s->tok);
    model_free(&s->m);
}

/* The prompt's ids into *ids (malloc'ed); refused when they and `extra`
 * more positions (BOS, an image) do not fit the context. */
static long encode_prompt(session *s, const char *prompt, long extra, int32_t **ids) {
    char err[ERR_LEN];
    size_t cap = 0;
    *ids = NULL;
    long n = spm_encode(s->tok, prompt, strlen(prompt), ids, &cap, err);
    if (n < 0) die_input("--prompt: %s", err);
    if (n + extra > s->context)
        die_input("--prompt: %ld tokens need %ld positions, but the model's context is %d", n, n + extra, s->context);
    return n;
}

/* ---------------------------------------------------------------- options */

static double arg_nonneg(const args *a, const char *name, double def) {
    const char *v = arg_str(a, name, NULL);
    if (!v) return def;
    char *end;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(x >= 0))
        die_input("%s %s: --%s %s: expected a number >= 0", a->prog, a->cmd, name, v);
    return x;
}

static gen_options options_from(const args *a, const model_config *c, int context, int K, float temperature) {
    gen_options o = {.n = K, .context = context};
    o.max_tokens = (int)arg_int(a, "max-tokens", 64, 0);
    o.temperature = (float)arg_nonneg(a, "temperature", temperature);
    o.top_p = (float)arg_float(a, "top-p", 1.0);
    if (o.top_p > 1) die_input("%s %s: --top-p %g: expected a number in (0, 1]", a->prog, a->cmd, o.top_p);
    o.top_k = (int)arg_int(a, "top-k", 0, 0);
    o.steps = (int)arg_int(a, "steps", 250, 1);
    if (o.steps > c->diffusion_steps)
        die_input("%s %s: --steps %d: the model has %d diffusion steps", a->prog, a->cmd, o.steps, c->diffusion_steps);
    const char *s = arg_str(a, "sampler", "ddpm");
    if (strcmp(s, "ddpm") && strcmp(s, "ddim")) die_input("%s %s: --sampler %s: expected ddpm or ddim", a->prog, a->cmd, s);
    o.eta = strcmp(s, "ddpm") == 0 ? 1.0f : (float)arg_nonneg(a, "eta", 0.0);
    o.cfg = (float)arg_nonneg(a, "cfg", 5.0);
    o.clip = (float)arg_nonneg(a, "clip", 4.0);
    o.seed = (uint64_t)arg_int(a, "seed", 0, 0);
    o.recompute = arg_switch(a, "no-cache");
    return o;
}

/* ---------------------------------------------------------------- outputs */

/* The text of tokens[0..n) without the special ones. */
static char *decode_text(const spm *tok, const int32_t *ids, int n) {
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

/* Appends s to a growing buffer. */
static void append(char **buf, size_t *len, const char *s) {
    size_t n = strlen(s);
    *buf = realloc(*buf, *len + n + 1);
    if (!*buf) die("out of memory");
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

/* Latents back to pixels: x0 * std + mean, then the VAE decoder. */
static void decode_latents(image_io *io, const model_config *c, const float *x, int n, uint8_t *rgb) {
    int C = c->latent_channels, hw = c->latent_size * c->latent_size, S = io->size;
    float *z = xmalloc(sizeof(float) * C * hw), *img = xmalloc(sizeof(float) * 3 * S * S);
    for (int i = 0; i < n; i++) {
        for (int ch = 0; ch < C; ch++)
            for (int q = 0; q < hw; q++)
                z[ch * hw + q] = (float)(x[((size_t)i * C + ch) * hw + q] * io->std[ch] + io->mean[ch]);
        vae_decode(io->vae, z, 1, c->latent_size, c->latent_size, img);
        image_to_rgb8(rgb + (size_t)i * S * S * 3, img, S, S);
    }
    free(z);
    free(img);
}

/* ---------------------------------------------------------------- sample */

int trainer_cmd_sample(const args *a) {
    char err[ERR_LEN];
    nn_init((int)arg_int(a, "threads", 0, 1));
    session ss;
    session_open(&ss, a);
    model *m = &ss.m;
    const model_config *c = &m->cfg;
    const spm *tok = ss.tok;
    image_io *io = &ss.io;
    const char *prompt = arg_required(a, "prompt"), *out = arg_required(a, "out");
    int K = (int)arg_int(a, "n", 1, 1), force_image = arg_switch(a, "image");
    gen_options o = options_from(a, c, ss.context, K, 1.0f);
    int32_t *ids;
    long n = encode_prompt(&ss, prompt, 1 + (force_image ? 1 + cfg_patches_per_image(c) + 1 : 0), &ids);
    infer_rows prefix = {0};
    for (int i = 0; i < K; i++) {
        infer_rows_token(&prefix, i, c->bos_token_id);
        for (long q = 0; q < n; q++) infer_rows_token(&prefix, i, ids[q]);
        if (force_image) infer_rows_token(&prefix, i, c->boi_token_id);
    }
    if (make_dir(out, err)) die_input("--out: %s", err);
    gen_sample *gs = xcalloc(K, sizeof(gen_sample));
    double t0 = now_s();
    if (generate(m, &o, &prefix, gs, NULL, NULL, err)) die_input("%s", err);
    double gen_s = now_s() - t0;

    int total = 0, S = io->size;
    for (int i = 0; i < K; i++) total += gs[i].n_img;
    uint8_t *rgb = xmalloc((size_t)(total + 1) * S * S * 3);
    char *jsonl = NULL, path[4200], name[64];
    size_t jlen = 0;
    for (int i = 0, done = 0; i < K; i++) {
        decode_latents(io, c, gs[i].img, gs[i].n_img, rgb + (size_t)done * S * S * 3);
        cJSON *line = cJSON_CreateObject(), *images = cJSON_CreateArray();
        char *text = NULL;
        size_t tlen = 0;
        append(&text, &tlen, "");
        /* Image j is where the j-th EOI closes it (its BOI may be the prompt's). */
        for (int q = 0, j = 0, start = 0; q <= gs[i].n_tok; q++) {
            if (q < gs[i].n_tok && gs[i].tok[q] != c->eoi_token_id) continue;
            char *piece = decode_text(tok, gs[i].tok + start, q - start);
            append(&text, &tlen, piece);
            free(piece);
            start = q + 1;
            if (q == gs[i].n_tok) break;
            snprintf(name, sizeof name, "sample%d-%d.webp", i, j);
            snprintf(path, sizeof path, "%s/%s", out, name);
            if (image_write_webp(path, rgb + (size_t)(done + j) * S * S * 3, S, S, err)) die("%s", err);
            cJSON_AddItemToArray(images, cJSON_CreateString(name));
            append(&text, &tlen, tlen ? " [image: " : "[image: ");
            append(&text, &tlen, name);
            append(&text, &tlen, "] ");
            j++;
        }
        while (tlen && text[tlen - 1] == ' ') text[--tlen] = '\0';
        done += gs[i].n_img;
        printf("[%d] %s%s%s\n", i, prompt, text[0] == '[' ? " " : "", text);
        cJSON_AddNumberToObject(line, "sample", i);
        cJSON_AddStringToObject(line, "prompt", prompt);
        cJSON_AddStringToObject(line, "text", text);
        cJSON_AddItemToObject(line, "images", images);
        cJSON_AddNumberToObject(line, "tokens", gs[i].n_tok);
        cJSON_AddStringToObject(line, "stop", gs[i].stop);
        char *js = cJSON_PrintUnformatted(line);
        append(&jsonl, &jlen, js);
        append(&jsonl, &jlen, "\n");
        free(js);
        free(text);
        cJSON_Delete(line);
    }
    snprintf(path, sizeof path, "%s/samples.jsonl", out);
    if (atomic_write(path, &(file_piece){jsonl, jlen}, 1, err)) die("%s", err);
    if (total) {
        snprintf(path, sizeof path, "%s/grid.png", out);
        if (image_write_grid_png(path, rgb, total, 8, S, S, err)) die("%s", err);
    }
    fprintf(stderr, "sample: %d samples, %d images in %.2f s (%s, %d steps, cfg %g) -> %s\n", K, total, gen_s,
            o.eta > 0 ? "ddpm" : "ddim", o.steps, o.cfg, out);
    for (int i = 0; i < K; i++) gen_sample_free(&gs[i]);
    free(gs); free(rgb); free(jsonl); free(ids);
    infer_rows_free(&prefix);
    session_close(&ss);
    return 0;
}

/* --------------------------------------------------------------- caption */

int trainer_cmd_caption(const args *a) {
    char err[ERR_LEN];
    nn_init((int)arg_int(a, "threads", 0, 1));
    int K = 0;
    const char **files = xcalloc(a->argc, sizeof(char *));
    for (int i = 0; i + 1 < a->argc; i++)
        if (strcmp(a->argv[i], "--image") == 0) files[K++] = a->argv[++i];
        else if (strncmp(a->argv[i], "--", 2) == 0) i++;             /* every other flag takes a value */
    if (K == 0) die_input("%s %s: missing --image", a->prog, a->cmd);
    session ss;
    session_open(&ss, a);
    const model_config *c = &ss.m.cfg;
    image_io *io = &ss.io;
    int C = c->latent_channels, hw = c->latent_size * c->latent_size, S = io->size;
    gen_options o = options_from(a, c, ss.context, K, 0.0f);
    o.text_only = 1;
    o.cfg = 1.0f;
    int32_t *ids;
    long n = encode_prompt(&ss, arg_str(a, "prompt", ""), 3 + cfg_patches_per_image(c), &ids);

    /* Pixels (decoded, center-cropped, resized), the VAE's mean, normalized
     * exactly as the dataloader normalizes training latents. */
    float *rgb = xmalloc(sizeof(float) * K * 3 * S * S), *mean = xmalloc(sizeof(float) * K * C * hw);
    float *logvar = xmalloc(sizeof(float) * K * C * hw);
    for (int i = 0; i < K; i++) {
        size_t len;
        unsigned char *data = (unsigned char *)file_read(files[i], SIZE_MAX, &len, err);
        if (!data) die_input("--image %s", err);
        skip_reason why;
        if (image_decode(data, len, S, rgb + (size_t)i * 3 * S * S, &why))
            die_input("--image %s: cannot read the image: %s", files[i], skip_reason_name(why));
        free(data);
    }
    vae_encode(io->vae, rgb, K, S, S, mean, logvar);
    infer_rows prefix = {0};
    for (int i = 0; i < K; i++) {
        float *x = mean + (size_t)i * C * hw;
        for (int ch = 0; ch < C; ch++)
            for (int q = 0; q < hw; q++)
                x[ch * hw + q] = (float)(((double)x[ch * hw + q] - io->mean[ch]) * (1.0 / io->std[ch]));
        infer_rows_token(&prefix, i, c->bos_token_id);
        infer_rows_token(&prefix, i, c->boi_token_id);
        infer_rows_image(&prefix, i, x, 1, c);
        infer_rows_token(&prefix, i, c->eoi_token_id);
        for (long q = 0; q < n; q++) infer_rows_token(&prefix, i, ids[q]);
    }
    gen_sample *gs = xcalloc(K, sizeof(gen_sample));
    if (generate(&ss.m, &o, &prefix, gs, NULL, NULL, err)) die_input("%s", err);
    for (int i = 0; i < K; i++) {
        char *text = decode_text(ss.tok, gs[i].tok, gs[i].n_tok);
        printf("%s\t%s\n", files[i], text);
        free(text);
        gen_sample_free(&gs[i]);
    }
    free(gs); free(rgb); free(mean); free(logvar); free(ids); free(files);
    infer_rows_free(&prefix);
    session_close(&ss);
    return 0;
}

/* ---------------------------------------------------------- sample-bench */

/* Seconds of one generate() run of K samples from BOS + P tokens (+ BOI). */
static double time_generate(model *m, gen_options o, int P, int image) {
    const model_config *c = &m->cfg;
    infer_rows prefix = {0};
    for (int i = 0; i < o.n; i++) {
        infer_rows_token(&prefix, i, c->bos_token_id);
        for (int q = 0; q < P; q++) infer_rows_token(&prefix, i, 5 + (q * 7919 + i * 31) % (c->vocab_size - 5));
        if (image) infer_rows_token(&prefix, i, c->boi_token_id);
    }
    gen_sample *gs = xcalloc(o.n, sizeof(gen_sample));
    char err[ERR_LEN];
    double t0 = now_s();
    if (generate(m, &o, &prefix, gs, NULL, NULL, err)) die_input("%s", err);
    double s = now_s() - t0;
    for (int i = 0; i < o.n; i++) gen_sample_free(&gs[i]);
    free(gs);
    infer_rows_free(&prefix);
    return s;
}

int trainer_cmd_sample_bench(const args *a) {
    model_config c;
    char err[ERR_LEN];
    if (config_load(arg_required(a, "config"), &c, err)) die_input("%s", err);
    nn_init((int)arg_int(a, "threads", 0, 1));
    int K = (int)arg_int(a, "n", 4, 1), P = (int)arg_int(a, "prompt-len", 16, 0);
    int M = (int)arg_int(a, "tokens", 128, 1), D = (int)arg_int(a, "steps", 25, 1);
    int ctx = P + 1 + M + cfg_patches_per_image(&c) + 2;
    model m;
    model_create(&m, &c);
    model_init_weights(&m, (unsigned long long)arg_int(a, "seed", 0, 0));
    gen_options lm = {.n = K, .context = ctx, .max_tokens = M, .temperature = 1.0f, .top_p = 1.0f,
                      .steps = D, .clip = 4.0f, .cfg = 1.0f, .text_only = 1, .ignore_eos = 1};
    gen_options im = lm;
    im.text_only = 0;
    im.max_tokens = 0;
    im.cfg = (float)arg_float(a, "cfg", 5.0);
    gen_options im1 = im;
    im1.cfg = 1.0f;
    gen_options lm_nc = lm, im_nc = im;
    lm_nc.recompute = im_nc.recompute = 1;
    time_generate(&m, lm, P, 0);                     /* warm-up: allocations, JIT kernels */
    double lm_s = time_generate(&m, lm, P, 0), lm_nc_s = time_generate(&m, lm_nc, P, 0);
    double im_s = time_generate(&m, im, P, 1), im1_s = time_generate(&m, im1, P, 1);
    double im_nc_s = time_generate(&m, im_nc, P, 1);
    printf("{\"samples\":%d,\"prompt_len\":%d,\"tokens\":%d,\"steps\":%d,\"cfg\":%g,\"threads\":%d,\"params\":%zu,"
           "\"lm_tokens_per_s\":%.2f,\"lm_tokens_per_s_no_cache\":%.2f,"
           "\"images_per_s\":%.4f,\"images_per_s_no_cfg\":%.4f,\"images_per_s_no_cache\":%.4f}\n",
           K, P, M, D, im.cfg, nn_threads(), m.ps.numel, K * M / lm_s, K * M / lm_nc_s, K / im_s, K / im1_s,
           K / im_nc_s);
    model_free(&m);
    return 0;
}
