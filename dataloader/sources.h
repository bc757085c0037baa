/* sources.h - what `dataloader serve` packs rows from: the token shards of a
 * TEXT_DIR and the latent shards of a LATENT_DIR (vae_service encode), opened
 * once and validated: token shards stay memory-mapped, the usable latents are
 * normalized into memory, each caption is tokenized.
 *
 * Text documents and images are numbered twice: by their index among the
 * usable ones (what the packer draws from) and by their sample id, the
 * position in their dataset's shard order (what rows report; stable when a
 * shard or sample is left out). */
#ifndef DATALOADER_SOURCES_H
#define DATALOADER_SOURCES_H

#include "../tokenizer/spm.h"
#include "token_shard.h"

#include <stdint.h>

typedef struct {
    int skip_bad_shards; /* leave a bad shard out (and report it) instead of stopping */
    int max_caption;     /* captions of more tokens are skipped */
} source_options;

typedef struct {
    /* text */
    int n_shards;
    token_shard *shards;
    int64_t n_docs;      /* usable documents */
    int32_t *doc_shard;  /* [n_docs] */
    uint64_t *doc_start; /* [n_docs] first token in its shard */
    uint32_t *doc_len;   /* [n_docs] tokens (BOS and EOS not counted) */
    int64_t *doc_id;     /* [n_docs] sample id */
    spm_ids ids;         /* the text dataset's special ids (its tokenizer's) */
    /* images */
    int C, h, w;
    double *ch_mean, *ch_std; /* [C] normalization of dataset.json */
    int n_lat_shards;         /* latent shards read */
    int64_t n_images;         /* usable images */
    float *x0;                /* [n_images, C, h, w]: the latents normalized, (z - mean) / std */
    int32_t **caption;        /* [n_images] tokens */
    int32_t *caption_len;
    int64_t *image_id; /* [n_images] sample id */
    /* left out, counted */
    long bad_shards, empty_docs, caption_empty, caption_unknown, caption_long, wrong_shape;
    uint64_t fingerprint; /* of both datasets and the tokenizer */
} sources;

/* Opens both datasets. tok must be the tokenizer the text was tokenized with
 * (compared by CRC-32C of tok_path). Bad input: one line in err (naming the
 * file and field), -1. */
int sources_open(sources *s, const char *text_dir, const char *latent_dir, const spm *tok, const char *tok_path,
                 const source_options *o, char *err);
void sources_close(sources *s);

/* Copies n tokens of usable document d from token `from`. */
void sources_text(const sources *s, int64_t d, uint32_t from, uint32_t n, int32_t *out);

/* One line: what was loaded and what was left out. */
void sources_summary(const sources *s, char *buf, size_t len);

/* FNV-1a, 64-bit: the fingerprints of datasets and configs. */
uint64_t fnv1a(uint64_t h, const void *data, size_t len);
#define FNV1A_START 0xcbf29ce484222325ull

#endif
