/* sources.c - open and validate the text and latent datasets (sources.h). */
#include "sources.h"
#include "../common/crc32c.h"
#include "../common/finite.h"
#include "../common/error.h"
#include "../common/json_file.h"
#include "../common/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

uint64_t fnv1a(uint64_t h, const void *data, size_t len) {
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* A shard entry's "file": a plain name inside the dataset folder. */
static const char *entry_file(const cJSON *e, const char *json, char *err) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(e, "file");
    if (!cJSON_IsString(f) || !f->valuestring[0] || strchr(f->valuestring, '/')) {
        set_error(err, "%s: field 'shards': an entry has no plain \"file\" name", json);
        return NULL;
    }
    return f->valuestring;
}

static int entry_int(const cJSON *e, const char *name, const char *json, const char *file, int64_t *out, char *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(e, name);
    if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > 9e15 ||
        j->valuedouble != (double)(int64_t)j->valuedouble)
        return set_error(err, "%s: shard %s: field '%s' missing or not a count", json, file, name);
    *out = (int64_t)j->valuedouble;
    return 0;
}

static int entry_crc(const cJSON *e, const char *json, const char *file, uint32_t *out, char *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(e, "crc32c");
    char *end;
    if (!cJSON_IsString(j) || strlen(j->valuestring) != 8 || (*out = (uint32_t)strtoul(j->valuestring, &end, 16), *end))
        return set_error(err, "%s: shard %s: field 'crc32c' missing or not 8 hex digits", json, file);
    return 0;
}

/* A bad shard stops the run, or with skip_bad_shards is reported and left out. */
static int bad_shard(sources *s, const source_options *o, char *err) {
    if (!o->skip_bad_shards) return -1;
    fprintf(stderr, "skip shard: %s\n", err);
    s->bad_shards++;
    return 0;
}

static void *resize(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) die("out of memory");
    return p;
}

static int open_text(sources *s, const char *dir, const spm *tok, const char *tok_path, const source_options *o,
                     char *err) {
    char json[4096], path[4200];
    snprintf(json, sizeof json, "%s/dataset.json", dir);
    cJSON *ds = json_read_object(json, err);
    if (!ds) return -1;
    int rc = -1;
    uint32_t tok_crc, want = 0;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(ds, "tokenizer"),
                *shards = cJSON_GetObjectItemCaseSensitive(ds, "shards");
    if (crc32c_file(tok_path, &tok_crc, err)) goto out;
    if (!cJSON_IsObject(t) || entry_crc(t, json, "(tokenizer)", &want, err)) {
        set_error(err, "%s: field 'tokenizer': missing or without \"crc32c\"", json);
        goto out;
    }
    if (want != tok_crc) {
        set_error(err, "%s: tokenized with another tokenizer (crc32c %08x, --tokenizer %s has %08x)", json, want,
                  tok_path, tok_crc);
        goto out;
    }
    s->ids = *spm_get_ids(tok);
    s->fingerprint = fnv1a(s->fingerprint, &tok_crc, 4);
    if (!cJSON_IsArray(shards)) {
        set_error(err, "%s: field 'shards': missing or not a list", json);
        goto out;
    }
    int n = cJSON_GetArraySize(shards);
    s->shards = xcalloc(n, sizeof(token_shard));
    int64_t base = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, shards) {
        const char *file = entry_file(e, json, err);
        int64_t docs = 0;
        uint32_t crc = 0;
        if (!file || entry_int(e, "docs", json, file, &docs, err) || entry_crc(e, json, file, &crc, err)) goto out;
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int64_t first_id = base;
        base += docs;
        token_shard *sh = &s->shards[s->n_shards];
        if (token_shard_open(path, sh, err) == 0) {
            if (sh->crc != crc)
                set_error(err, "%s: checksum %08x, dataset.json says %08x", path, sh->crc, crc);
            else if (sh->tokenizer != tok_crc)
                set_error(err, "%s: tokenized with another tokenizer", path);
            else if ((int64_t)sh->n_docs != docs)
                set_error(err, "%s: %llu documents, dataset.json says %lld", path, (unsigned long long)sh->n_docs,
                          (long long)docs);
            else if (sh->vocab_size > (uint32_t)s->ids.vocab_size)
                set_error(err, "%s: vocabulary larger than the tokenizer's", path);
            else
                goto good;
            token_shard_close(sh);
        }
        if (bad_shard(s, o, err)) goto out;
        continue;
    good:
        s->fingerprint = fnv1a(s->fingerprint, &crc, 4);
        size_t need = (size_t)s->n_docs + sh->n_docs;
        s->doc_shard = resize(s->doc_shard, need * sizeof(int32_t));
        s->doc_start = resize(s->doc_start, need * sizeof(uint64_t));
        s->doc_len = resize(s->doc_len, need * sizeof(uint32_t));
        s->doc_id = resize(s->doc_id, need * sizeof(int64_t));
        for (uint64_t d = 0; d < sh->n_docs; d++) {
            uint64_t start, len;
            token_shard_doc(sh, d, &start, &len);
            if (len == 0 || len > UINT32_MAX - 2) {
                s->empty_docs++;
                continue;
            }
            s->doc_shard[s->n_docs] = s->n_shards;
            s->doc_start[s->n_docs] = start;
            s->doc_len[s->n_docs] = (uint32_t)len;
            s->doc_id[s->n_docs] = first_id + (int64_t)d;
            s->n_docs++;
        }
        s->n_shards++;
    }
    if (s->n_docs == 0) {
        set_error(err, "%s: no usable text document", json);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(ds);
    return rc;
}

/* Reads a list of n numbers (std: each > 0) into out. */
static int dim(const cJSON *ds, const char *name, const char *json, int *out, char *err) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(ds, name);
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= 1 && j->valuedouble <= 4096) || j->valuedouble != (int)j->valuedouble)
        return set_error(err, "%s: field '%s': expected an integer in 1..4096", json, name);
    *out = (int)j->valuedouble;
    return 0;
}

/* 1 when a float tensor of a mapped shard holds a NaN or an infinity: one
 * would poison every step that draws its image. Read through a buffer, as
 * the tensor may be unaligned in the file. */
static int has_nonfinite(const st_file *f, const st_tensor *t) {
    float buf[4096];
    size_t n = (size_t)(t->end - t->begin) / sizeof(float);
    const uint8_t *p = f->buf + f->data_start + t->begin;
    for (size_t at = 0; at < n; at += 4096) {
        size_t k = n - at < 4096 ? n - at : 4096;
        memcpy(buf, p + at * sizeof(float), k * sizeof(float));
        if (first_nonfinite(buf, k) >= 0) return 1;
    }
    return 0;
}

/* Checks a latent shard against its dataset.json entry and the tensors
 * that rows need; on success *n is its sample count. */
static int check_latent_shard(const char *path, st_file *f, int64_t bytes, uint32_t crc, int64_t samples, char *err) {
    struct stat st;
    uint32_t got;
    if (stat(path, &st) != 0) return set_error(err, "%s: cannot open: %s", path, strerror(errno));
    if ((int64_t)st.st_size != bytes)
        return set_error(err, "%s: %lld bytes, dataset.json says %lld", path, (long long)st.st_size, (long long)bytes);
    if (crc32c_file(path, &got, err)) return -1;
    if (got != crc) return set_error(err, "%s: checksum %08x, dataset.json says %08x", path, got, crc);
    if (st_open(path, f, err)) return -1;
    const st_tensor *m = st_find(f, "mean"), *cb = st_find(f, "caption_bytes"), *co = st_find(f, "caption_offsets");
    const char *why = NULL;
    if (!m || m->dtype != ST_F32 || m->ndim != 4)
        why = "tensor 'mean': missing or not F32 [n, C, h, w]";
    else if (m->shape[0] != samples)
        why = "tensor 'mean': sample count differs from dataset.json";
    else if (!cb || cb->dtype != ST_U8 || cb->ndim != 1)
        why = "tensor 'caption_bytes': missing or not U8 [bytes]";
    else if (!co || co->dtype != ST_I64 || co->ndim != 1 || co->shape[0] != samples + 1)
        why = "tensor 'caption_offsets': missing or not I64 [n + 1]";
    if (!why && has_nonfinite(f, m)) why = "tensor 'mean': holds a NaN or an infinity";
    if (!why) {
        int64_t prev = 0;
        for (int64_t i = 0; i <= samples && !why; i++) {
            int64_t o;
            memcpy(&o, f->buf + f->data_start + co->begin + i * 8, 8);
            if ((i == 0 && o != 0) || o < prev || o > cb->shape[0])
                why = "tensor 'caption_offsets': not increasing within caption_bytes";
            prev = o;
        }
    }
    if (why) {
        set_error(err, "%s: %s", path, why);
        st_close(f);
        return -1;
    }
    return 0;
}

/* Tokenizes caption i of a shard; 0 when it is usable, else the count it
 * adds to. */
static long *caption_problem(sources *s, const spm *tok, const char *text, size_t len, int max_caption, int32_t **ids,
                             long *n) {
    char err[ERR_LEN];
    size_t cap = 0;
    *ids = NULL;
    *n = 0;
    int blank = 1;
    for (size_t i = 0; i < len && blank; i++)
        blank = text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r';
    if (blank) return &s->caption_empty;
    *n = spm_encode(tok, text, len, ids, &cap, err);
    if (*n < 0) return &s->caption_unknown;
    if (*n == 0) return &s->caption_empty;
    for (long k = 0; k < *n; k++)
        if ((*ids)[k] == s->ids.unk) return &s->caption_unknown;
    if (*n > max_caption) return &s->caption_long;
    return NULL;
}

/* The usable latents, normalized once into one block of memory that asks
 * for huge pages: batches then copy them as they are (reading them from the
 * mapped shards and normalizing per batch took most of a batch's time). */
static void normalize_latents(sources *s, const uint8_t *const *latent) {
    size_t plane = (size_t)s->h * s->w, per = (size_t)s->C * plane, bytes = sizeof(float) * per * s->n_images;
    size_t huge = (size_t)2 << 20, rounded = (bytes + huge - 1) / huge * huge;
    s->x0 = aligned_alloc(huge, rounded ? rounded : huge);
    if (!s->x0) die("out of memory for %zu bytes of latents", bytes);
    madvise(s->x0, rounded, MADV_HUGEPAGE);
    for (int64_t i = 0; i < s->n_images; i++)
        for (int c = 0; c < s->C; c++) {
            double m = s->ch_mean[c], inv = 1.0 / s->ch_std[c];
            const uint8_t *z = latent[i] + c * plane * sizeof(float); /* maybe unaligned in the shard */
            float *x = s->x0 + i * per + c * plane;
            for (size_t q = 0; q < plane; q++) {
                float v;
                memcpy(&v, z + q * sizeof(float), sizeof v);
                x[q] = (float)(((double)v - m) * inv);
            }
        }
}

static int open_latents(sources *s, const char *dir, const spm *tok, const source_options *o, char *err) {
    char json[4096], path[4200];
    const uint8_t **latent = NULL; /* [n_images] F32 [C, h, w] inside the mapped shards */
    int n_lat = 0;
    st_file *lat = NULL;
    snprintf(json, sizeof json, "%s/dataset.json", dir);
    cJSON *ds = json_read_object(json, err);
    if (!ds) return -1;
    int rc = -1;
    const cJSON *shards = cJSON_GetObjectItemCaseSensitive(ds, "shards"), *e;
    if (dim(ds, "C", json, &s->C, err) || dim(ds, "h", json, &s->h, err) || dim(ds, "w", json, &s->w, err)) goto out;
    s->ch_mean = xcalloc(s->C, sizeof(double));
    s->ch_std = xcalloc(s->C, sizeof(double));
    if (json_number_list(ds, "channel_mean", s->C, 0, s->ch_mean, json, err) ||
        json_number_list(ds, "channel_std", s->C, 1, s->ch_std, json, err))
        goto out;
    if (!cJSON_IsArray(shards)) {
        set_error(err, "%s: field 'shards': missing or not a list", json);
        goto out;
    }
    lat = xcalloc(cJSON_GetArraySize(shards), sizeof(st_file));
    int64_t base = 0;
    int dims[3] = {s->C, s->h, s->w};
    s->fingerprint = fnv1a(s->fingerprint, dims, sizeof dims);
    s->fingerprint = fnv1a(s->fingerprint, s->ch_mean, sizeof(double) * s->C);
    s->fingerprint = fnv1a(s->fingerprint, s->ch_std, sizeof(double) * s->C);
    cJSON_ArrayForEach(e, shards) {
        const char *file = entry_file(e, json, err);
        int64_t samples = 0, bytes = 0;
        uint32_t crc = 0;
        if (!file || entry_int(e, "samples", json, file, &samples, err) ||
            entry_int(e, "bytes", json, file, &bytes, err) || entry_crc(e, json, file, &crc, err))
            goto out;
        snprintf(path, sizeof path, "%s/%s", dir, file);
        int64_t first_id = base;
        base += samples;
        st_file *f = &lat[n_lat];
        if (check_latent_shard(path, f, bytes, crc, samples, err)) {
            if (bad_shard(s, o, err)) goto out;
            continue;
        }
        n_lat++;
        s->n_lat_shards++;
        s->fingerprint = fnv1a(s->fingerprint, &crc, 4);
        const st_tensor *m = st_find(f, "mean"), *cb = st_find(f, "caption_bytes"), *co = st_find(f, "caption_offsets");
        if (m->shape[1] != s->C || m->shape[2] != s->h || m->shape[3] != s->w) {
            fprintf(stderr, "skip shard %s: latents [%lld, %lld, %lld], dataset.json says [%d, %d, %d]\n", path,
                    (long long)m->shape[1], (long long)m->shape[2], (long long)m->shape[3], s->C, s->h, s->w);
            s->wrong_shape += (long)samples;
            continue;
        }
        size_t need = (size_t)(s->n_images + samples), per = sizeof(float) * s->C * s->h * s->w;
        latent = resize(latent, need * sizeof(uint8_t *));
        s->caption = resize(s->caption, need * sizeof(int32_t *));
        s->caption_len = resize(s->caption_len, need * sizeof(int32_t));
        s->image_id = resize(s->image_id, need * sizeof(int64_t));
        const uint8_t *data = f->buf + f->data_start;
        for (int64_t i = 0; i < samples; i++) {
            int64_t off[2];
            memcpy(off, data + co->begin + i * 8, 16);
            int32_t *ids;
            long n;
            long *problem = caption_problem(s, tok, (const char *)data + cb->begin + off[0], (size_t)(off[1] - off[0]),
                                            o->max_caption, &ids, &n);
            if (problem) {
                (*problem)++;
                free(ids);
                continue;
            }
            latent[s->n_images] = data + m->begin + (size_t)i * per;
            s->caption[s->n_images] = ids;
            s->caption_len[s->n_images] = (int32_t)n;
            s->image_id[s->n_images] = first_id + i;
            s->n_images++;
        }
    }
    normalize_latents(s, latent);
    rc = 0;
out:
    for (int i = 0; i < n_lat; i++) st_close(&lat[i]);
    free(lat);
    free(latent);
    cJSON_Delete(ds);
    return rc;
}

int sources_open(sources *s, const char *text_dir, const char *latent_dir, const spm *tok, const char *tok_path,
                 const source_options *o, char *err) {
    memset(s, 0, sizeof *s);
    s->fingerprint = FNV1A_START;
    if (open_text(s, text_dir, tok, tok_path, o, err) || (latent_dir && open_latents(s, latent_dir, tok, o, err))) {
        sources_close(s);
        return -1;
    }
    s->fingerprint = fnv1a(s->fingerprint, &s->n_docs, 8);
    s->fingerprint = fnv1a(s->fingerprint, &s->n_images, 8);
    return 0;
}

void sources_close(sources *s) {
    for (int i = 0; i < s->n_shards; i++) token_shard_close(&s->shards[i]);
    for (int64_t i = 0; i < s->n_images; i++) free(s->caption[i]);
    free(s->shards);
    free(s->doc_shard);
    free(s->doc_start);
    free(s->doc_len);
    free(s->doc_id);
    free(s->ch_mean);
    free(s->ch_std);
    free(s->x0);
    free(s->caption);
    free(s->caption_len);
    free(s->image_id);
    memset(s, 0, sizeof *s);
}

void sources_text(const sources *s, int64_t d, uint32_t from, uint32_t n, int32_t *out) {
    token_shard_read(&s->shards[s->doc_shard[d]], s->doc_start[d] + from, n, out);
}

void sources_summary(const sources *s, char *buf, size_t len) {
    snprintf(
        buf, len,
        "%lld text documents in %d shards, %lld images [%d, %d, %d] in %d shards; left out: %ld bad shards, "
        "%ld empty documents, captions: %ld empty, %ld not tokenizable, %ld too long; %ld latents of the wrong shape",
        (long long)s->n_docs, s->n_shards, (long long)s->n_images, s->C, s->h, s->w, s->n_lat_shards, s->bad_shards,
        s->empty_docs, s->caption_empty, s->caption_unknown, s->caption_long, s->wrong_shape);
}
