/* sample.c - `trainer sample`, `trainer caption` and `trainer sample-bench`:
 * generation from a checkpoint (generate.h) with its tokenizer, latent
 * statistics and a VAE for the pixels.
 *
 *   sample  --ckpt DIR --vae VAE_DIR --prompt TEXT --out OUT_DIR [...]: K
 *           continuations; text to stdout and OUT_DIR/samples.jsonl, every
 *           image as OUT_DIR/sampleI-J.webp plus OUT_DIR/grid.png.
 *   caption --ckpt DIR --vae VAE_DIR --image FILE [--image FILE ...]: each
 *           image as `BOS BOI patches EOI [prompt]`, clean latents at t = 1,
 *           and the text that follows (greedy unless --temperature; EOS not
 *           before --min-tokens, 1).
 *   sample-bench --config MODEL.json: tokens/s and images/s of a fresh model,
 *           with and without the KV cache, with and without guidance.
 *
 * The model runs on the backend of --device (cpu, cuda, cpu-device); the VAE
 * has CPU kernels only and always runs on the CPU. */
#include "sample.h"
#include "session.h"
#include "../common/atomic_file.h"
#include "../common/error.h"
#include "../common/file_read.h"
#include "../common/timing.h"
#include "../nn/backend.h"
#include "../nn/kernels.h"
#include "../vae/image_decode.h"
#include "../vae/image_write.h"
#include "../common/dir.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- outputs */

/* Appends s to a growing buffer. */
static void append(char **buf, size_t *len, const char *s) {
    size_t n = strlen(s);
    *buf = realloc(*buf, *len + n + 1);
    if (!*buf) die("out of memory");
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

/* ---------------------------------------------------------------- sample */

static int cmd_sample(const args *a) {
    char err[ERR_LEN];
    session_init_device(a);
    session ss;
    session_open(&ss, a);
    model *m = &ss.m;
    const model_config *c = &m->cfg;
    const spm *tok = ss.tok;
    image_io *io = &ss.io;
    const char *prompt = arg_str(a, "prompt"), *out = arg_str(a, "out");
    int K = (int)arg_int(a, "n"), force_image = arg_switch(a, "image");
    gen_options o = session_text_options(a, ss.context, K);
    session_image_options(a, c, &o);
    int32_t *ids;
    long n = session_encode(&ss, "--prompt", prompt, 1 + (force_image ? 1 + cfg_patches_per_image(c) + 1 : 0), &ids);
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
        image_io_decode(io, c, gs[i].img, gs[i].n_img, rgb + (size_t)done * S * S * 3);
        cJSON *line = cJSON_CreateObject(), *images = cJSON_CreateArray();
        char *text = NULL;
        size_t tlen = 0;
        append(&text, &tlen, "");
        /* Image j is where the j-th EOI closes it (its BOI may be the prompt's). */
        for (int q = 0, j = 0, start = 0; q <= gs[i].n_tok; q++) {
            if (q < gs[i].n_tok && gs[i].tok[q] != c->eoi_token_id) continue;
            char *piece = session_decode(tok, gs[i].tok + start, q - start);
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
    free(gs);
    free(rgb);
    free(jsonl);
    free(ids);
    infer_rows_free(&prefix);
    session_close(&ss);
    return 0;
}

/* --------------------------------------------------------------- caption */

static int cmd_caption(const args *a) {
    char err[ERR_LEN];
    session_init_device(a);
    const char **files = xcalloc(a->argc, sizeof(char *));
    int K = arg_all(a, "image", files, a->argc);
    session ss;
    session_open(&ss, a);
    const model_config *c = &ss.m.cfg;
    image_io *io = &ss.io;
    int C = c->latent_channels, hw = c->latent_size * c->latent_size, S = io->size;
    gen_options o = session_text_options(a, ss.context, K);
    o.text_only = 1;
    o.cfg = 1.0f;
    o.steps = 1; /* no image is generated, but the sampler's schedule needs a length */
    /* After an image, EOS is likelier than any one first word of a caption
     * (most images in training are followed by EOS: caption first), so a
     * greedy caption would be empty. */
    o.min_tokens = (int)arg_int(a, "min-tokens");
    int32_t *ids;
    long n = session_encode(&ss, "--prompt", arg_str(a, "prompt"), 3 + cfg_patches_per_image(c), &ids);

    /* Pixels (decoded, center-cropped, resized), then the model's latents. */
    float *rgb = xmalloc(sizeof(float) * K * 3 * S * S), *mean = xmalloc(sizeof(float) * K * C * hw);
    for (int i = 0; i < K; i++) {
        size_t len;
        unsigned char *data = (unsigned char *)file_read(files[i], SIZE_MAX, &len, err);
        if (!data) die_input("--image %s", err);
        skip_reason why;
        if (image_decode(data, len, S, rgb + (size_t)i * 3 * S * S, &why))
            die_input("--image %s: cannot read the image: %s", files[i], skip_reason_name(why));
        free(data);
    }
    image_io_encode(io, c, rgb, K, mean);
    infer_rows prefix = {0};
    for (int i = 0; i < K; i++) {
        float *x = mean + (size_t)i * C * hw;
        infer_rows_token(&prefix, i, c->bos_token_id);
        infer_rows_token(&prefix, i, c->boi_token_id);
        infer_rows_image(&prefix, i, x, 1, c);
        infer_rows_token(&prefix, i, c->eoi_token_id);
        for (long q = 0; q < n; q++) infer_rows_token(&prefix, i, ids[q]);
    }
    gen_sample *gs = xcalloc(K, sizeof(gen_sample));
    if (generate(&ss.m, &o, &prefix, gs, NULL, NULL, err)) die_input("%s", err);
    for (int i = 0; i < K; i++) {
        char *text = session_decode(ss.tok, gs[i].tok, gs[i].n_tok);
        printf("%s\t%s\n", files[i], text);
        free(text);
        gen_sample_free(&gs[i]);
    }
    free(gs);
    free(rgb);
    free(mean);
    free(ids);
    free(files);
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

static int cmd_sample_bench(const args *a) {
    model_config c;
    char err[ERR_LEN];
    if (config_load(arg_str(a, "config"), &c, err)) die_input("%s", err);
    session_init_device(a);
    int K = (int)arg_int(a, "n"), P = (int)arg_int(a, "prompt-len");
    int M = (int)arg_int(a, "tokens"), D = (int)arg_int(a, "steps");
    int ctx = P + 1 + M + cfg_patches_per_image(&c) + 2;
    model m;
    model_create(&m, &c);
    model_init_weights(&m, (unsigned long long)arg_int(a, "seed"));
    model_upload_weights(&m);
    gen_options lm = {.n = K,
                      .context = ctx,
                      .max_tokens = M,
                      .temperature = 1.0f,
                      .top_p = 1.0f,
                      .steps = D,
                      .clip = 4.0f,
                      .cfg = 1.0f,
                      .text_only = 1,
                      .ignore_eos = 1};
    gen_options im = lm;
    im.text_only = 0;
    im.max_tokens = 0;
    im.cfg = (float)arg_num(a, "cfg");
    gen_options im1 = im;
    im1.cfg = 1.0f;
    gen_options lm_nc = lm, im_nc = im;
    lm_nc.recompute = im_nc.recompute = 1;
    time_generate(&m, lm, P, 0); /* warm-up: allocations, JIT kernels */
    double lm_s = time_generate(&m, lm, P, 0), lm_nc_s = time_generate(&m, lm_nc, P, 0);
    double im_s = time_generate(&m, im, P, 1), im1_s = time_generate(&m, im1, P, 1);
    double im_nc_s = time_generate(&m, im_nc, P, 1);
    printf("{\"samples\":%d,\"prompt_len\":%d,\"tokens\":%d,\"steps\":%d,\"cfg\":%g,\"threads\":%d,\"params\":%zu,"
           "\"lm_tokens_per_s\":%.2f,\"lm_tokens_per_s_no_cache\":%.2f,"
           "\"images_per_s\":%.4f,\"images_per_s_no_cfg\":%.4f,\"images_per_s_no_cache\":%.4f,\"device\":\"%s\"}\n",
           K, P, M, D, im.cfg, nn_threads(), m.ps.numel, K * M / lm_s, K * M / lm_nc_s, K / im_s, K / im1_s,
           K / im_nc_s, nn_current_backend()->name);
    model_free(&m);
    return 0;
}

static const cli_flag sample_flags[] = {
    {"prompt", FLAG_TEXT | FLAG_REQUIRED, "TEXT", NULL, NULL, "the text to continue"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "OUT_DIR", NULL, NULL, "where samples.jsonl, each image (WebP) and grid.png go"},
    {"n", FLAG_INT, "K", "[1, inf)", "1", "samples, generated together"},
    {"image", FLAG_SWITCH, NULL, NULL, NULL, "start an image right after the prompt (append BOI)"},
    {"temperature", FLAG_NUM, "T", "[0, inf)", "1", "softmax temperature of the text (0: greedy)"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the tokens drawn and the noise"},
    {0},
};

const cli_command sample_command = {"sample",
                                    "generates text and images from a prompt: images where the model opens one (BOI)",
                                    cmd_sample,
                                    {sample_flags, session_flags, text_flags, image_flags, device_flags, cli_threads_flags}};

static const cli_flag caption_flags[] = {
    {"image", FLAG_TEXT | FLAG_REQUIRED | FLAG_REPEATED, "FILE", NULL, NULL, "an image (WebP, PNG, JPEG) to caption"},
    {"prompt", FLAG_TEXT, "TEXT", NULL, "", "text before the image"},
    {"min-tokens", FLAG_INT, "N", "[0, inf)", "1", "tokens before EOS may end a caption"},
    {"temperature", FLAG_NUM, "T", "[0, inf)", "0", "softmax temperature (0: greedy)"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the tokens drawn"},
    {0},
};

const cli_command caption_command = {"caption",
                                     "writes a caption for each --image: the text the model generates after it",
                                     cmd_caption,
                                     {caption_flags, session_flags, text_flags, device_flags, cli_threads_flags}};

static const cli_flag sample_bench_flags[] = {
    {"config", FLAG_TEXT | FLAG_REQUIRED, "MODEL.json", NULL, NULL, "the model's config (random weights)"},
    {"n", FLAG_INT, "K", "[1, inf)", "4", "sequences generated together"},
    {"prompt-len", FLAG_INT, "P", "[0, inf)", "16", "prompt tokens"},
    {"tokens", FLAG_INT, "M", "[1, inf)", "128", "tokens generated"},
    {"steps", FLAG_INT, "D", "[1, inf)", "25", "denoising steps per image"},
    {"cfg", FLAG_NUM, "G", "(0, inf)", "5", "guidance scale"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights"},
    {0},
};

const cli_command sample_bench_command = {
    "sample-bench",
    "times generation: tokens/s and images/s, with and without the cache and guidance",
    cmd_sample_bench,
    {sample_bench_flags, device_flags, cli_threads_flags}};
