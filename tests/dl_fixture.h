/* dl_fixture.h - a small dataset for the dataloader tests, made in a
 * temporary folder: generated text (documents of 1 to 400 words, so some are
 * cut across rows), a SentencePiece model trained on it, token shards
 * written by `$BIN/dataloader tokenize`, and latent shards in the format of
 * vae_service encode (vae_service/latents.c) written directly: `mean` F32
 * [n, C, h, w] with channel c around c, captions and keys, dataset.json with
 * sizes, CRC-32C and the per-channel mean/std. Sample k of the latents has
 * caption "caption k ..." except for two bad ones per dataset: an empty
 * caption and one far over --max-caption. */
#ifndef TESTS_DL_FIXTURE_H
#define TESTS_DL_FIXTURE_H

#include "../common/crc32c.h"
#include "../common/json_file.h"
#include "../common/rng.h"
#include "../common/safetensors.h"
#include "../tokenizer/spm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char dir[64], tok[128], text[128], latents[128];
    int C, h, w, n_images; /* n_images: written, bad captions included */
} fixture;

static const char *const fx_words[] = {"the",  "quick", "brown", "fox",   "jumps", "over",   "a",     "lazy", "dog",
                                       "and",  "then",  "runs",  "far",   "into",  "forest", "where", "tall", "trees",
                                       "grow", "near",  "river", "light", "stone", "bird",   "sings"};
#define FX_WORDS (int)(sizeof fx_words / sizeof *fx_words)

static void fx_text(const char *path, int docs, uint64_t seed) {
    FILE *f = fopen(path, "w");
    rng r;
    rng_seed(&r, seed);
    for (int d = 0; d < docs; d++) {
        int words = rng_uniform(&r) < 0.1 ? rng_int(&r, 150, 400) : rng_int(&r, 1, 60);
        for (int k = 0; k < words; k++)
            fprintf(f, "%s%s", k ? (k % 17 == 0 ? "\n" : " ") : "", fx_words[rng_int(&r, 0, FX_WORDS - 1)]);
        fprintf(f, "\n\n");
    }
    fclose(f);
}

/* One latent shard of n samples [C, h, w]; sample k has id first + k. */
static int fx_latent_shard(const fixture *fx, const char *file, int first, int n, int C, cJSON *shards, double *s1,
                           double *s2, long *values) {
    char path[256], cap[2048], key[64], err[ERR_LEN];
    snprintf(path, sizeof path, "%s/%s", fx->latents, file);
    size_t per = (size_t)C * fx->h * fx->w;
    float *z = malloc(sizeof(float) * per * n);
    char *caps = malloc(2048 * (size_t)n), *keys = malloc(64 * (size_t)n);
    int64_t *coff = malloc(sizeof(int64_t) * (n + 1)), *koff = malloc(sizeof(int64_t) * (n + 1));
    rng r;
    rng_seed(&r, (uint64_t)first + 7);
    coff[0] = koff[0] = 0;
    for (int k = 0; k < n; k++) {
        int id = first + k;
        for (int c = 0; c < C; c++)
            for (int q = 0; q < fx->h * fx->w; q++) {
                float v = (float)(c + 0.5 * rng_normal(&r));
                z[(size_t)k * per + (size_t)c * fx->h * fx->w + q] = v;
                if (C == fx->C) {
                    s1[c] += v;
                    s2[c] += (double)v * v;
                }
            }
        if (id == 3)
            cap[0] = '\0';  /* empty: skipped */
        else if (id == 5) { /* too long: skipped */
            cap[0] = '\0';
            for (int w = 0; w < 100; w++) strcat(cap, "forest river ");
        } else
            snprintf(cap, sizeof cap, "caption %d: a %s %s", id, fx_words[id % FX_WORDS],
                     fx_words[(id / 3) % FX_WORDS]);
        snprintf(key, sizeof key, "sample_%05d", id);
        memcpy(caps + coff[k], cap, strlen(cap));
        coff[k + 1] = coff[k] + (int64_t)strlen(cap);
        memcpy(keys + koff[k], key, strlen(key));
        koff[k + 1] = koff[k] + (int64_t)strlen(key);
    }
    if (C == fx->C) *values += (long)n * fx->h * fx->w;
    st_entry e[5] = {
        {"mean", ST_F32, 4, {n, C, fx->h, fx->w}, z},  {"caption_bytes", ST_U8, 1, {coff[n]}, caps},
        {"caption_offsets", ST_I64, 1, {n + 1}, coff}, {"key_bytes", ST_U8, 1, {koff[n]}, keys},
        {"key_offsets", ST_I64, 1, {n + 1}, koff},
    };
    int rc = st_write(path, e, 5, err);
    uint32_t crc = 0;
    struct stat st;
    rc = rc || crc32c_file(path, &crc, err) || stat(path, &st);
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", crc);
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "file", file);
    cJSON_AddNumberToObject(j, "samples", n);
    cJSON_AddNumberToObject(j, "bytes", (double)st.st_size);
    cJSON_AddStringToObject(j, "crc32c", hex);
    cJSON_AddItemToArray(shards, j);
    free(z);
    free(caps);
    free(keys);
    free(coff);
    free(koff);
    return rc;
}

/* Latents: shards of per_shard samples; with wrong_shape, one more shard
 * whose latents have C + 1 channels. */
static int fx_latents(fixture *fx, int shards, int per_shard, int wrong_shape) {
    char err[ERR_LEN], path[256], file[64];
    mkdir(fx->latents, 0755);
    cJSON *root = cJSON_CreateObject(), *list = cJSON_CreateArray();
    double s1[64] = {0}, s2[64] = {0}, mean[64], sd[64];
    long values = 0;
    int rc = 0;
    for (int i = 0; i < shards + wrong_shape; i++) {
        snprintf(file, sizeof file, "shard-%05d.safetensors", i);
        rc |=
            fx_latent_shard(fx, file, i * per_shard, per_shard, i < shards ? fx->C : fx->C + 1, list, s1, s2, &values);
    }
    fx->n_images = (shards + wrong_shape) * per_shard;
    for (int c = 0; c < fx->C; c++) {
        mean[c] = s1[c] / values;
        sd[c] = sqrt(s2[c] / values - mean[c] * mean[c]);
    }
    cJSON_AddNumberToObject(root, "count", fx->n_images);
    cJSON_AddItemToObject(root, "shards", list);
    cJSON_AddNumberToObject(root, "C", fx->C);
    cJSON_AddNumberToObject(root, "h", fx->h);
    cJSON_AddNumberToObject(root, "w", fx->w);
    cJSON_AddStringToObject(root, "dtype", "F32");
    cJSON_AddItemToObject(root, "channel_mean", cJSON_CreateDoubleArray(mean, fx->C));
    cJSON_AddItemToObject(root, "channel_std", cJSON_CreateDoubleArray(sd, fx->C));
    snprintf(path, sizeof path, "%s/dataset.json", fx->latents);
    return rc | json_write(path, root, err);
}

/* The whole fixture; 0 on success. */
static int fixture_make(fixture *fx, int docs, int shards, int per_shard, int wrong_shape, int C, int h, int w) {
    char err[ERR_LEN], txt[192], cmd[1024];
    memset(fx, 0, sizeof *fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_dataloader.XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    fx->C = C;
    fx->h = h;
    fx->w = w;
    snprintf(fx->tok, sizeof fx->tok, "%s/tok.model", fx->dir);
    snprintf(fx->text, sizeof fx->text, "%s/text", fx->dir);
    snprintf(fx->latents, sizeof fx->latents, "%s/latents", fx->dir);
    snprintf(txt, sizeof txt, "%s/corpus.txt", fx->dir);
    fx_text(txt, docs, 1);
    const char *inputs[1] = {txt};
    if (spm_train(inputs, 1, 300, "unigram", 1, fx->tok, err)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    const char *bin = getenv("BIN") ? getenv("BIN") : "bin";
    snprintf(cmd, sizeof cmd, "%s/dataloader tokenize --tokenizer %s --input %s --out %s --threads 2 >/dev/null 2>&1",
             bin, fx->tok, txt, fx->text);
    if (system(cmd) != 0) return -1;
    return fx_latents(fx, shards, per_shard, wrong_shape);
}

#endif
