/* latents.c - `vae_service encode` and `vae_service decode`: image datasets
 * to latent shards once, and latents back to images.
 *
 * encode writes one latent shard per input shard, LATENT_DIR/<input
 * name>.safetensors (so a rerun skips what is done, and MPI ranks split the
 * inputs), holding
 *   mean            F32 [n, C, h, w]   posterior mean (and `logvar` with --logvar)
 *   caption_bytes   U8  [total]        UTF-8 captions, back to back
 *   caption_offsets I64 [n + 1]        caption i is bytes [off[i], off[i+1])
 *   key_bytes, key_offsets             the samples' keys, the same way
 * A shard is written under a temporary name and renamed when complete.
 * LATENT_DIR/encode.json (written first) pins the VAE and size, so a resumed
 * run cannot mix latents of two VAEs; LATENT_DIR/dataset.json (written last)
 * lists the shards with sizes and CRC-32C, C/h/w, the VAE's config and weight
 * checksum, and the per-channel mean and std of the latents that the trainer
 * normalizes with: x0 = (z - mean) / std.
 * Under mpirun the input shards are split across ranks (input i goes to rank
 * i mod N): no sample is encoded twice or lost; rank 0 writes the JSON files. */
#include "commands.h"
#include "../vae/image_source.h"
#include "../vae/image_write.h"
#include "../vae/vae.h"
#include "../common/timing.h"
#include "../common/crc32c.h"
#include "../common/json_file.h"
#include "../common/safetensors.h"
#include "../nn/dist.h"
#include "../nn/kernels.h"
#include "../common/dir.h"

#include <libgen.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* "dir/train-00001.tar" -> "train-00001" */
static void shard_name(char *out, size_t len, const char *input) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", input);
    char *base = basename(tmp), *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = '\0';
    snprintf(out, len, "%s", base);
}

/* LATENT_DIR file names of the inputs' shards, in input order. */
static char **shard_file_names(const image_source *src, int n) {
    char **names = xcalloc(n, sizeof(char *));
    for (int i = 0; i < n; i++) {
        char name[1024];
        shard_name(name, sizeof name, image_source_input_path(src, i));
        names[i] = xmalloc(strlen(name) + 16);
        sprintf(names[i], "%s.safetensors", name);
    }
    return names;
}

/* "N good, M skipped (reason: k, ...)" summed over every rank. */
static void run_summary(const image_source *src, char *buf, size_t len) {
    int64_t counts[1 + SKIP_REASONS], skipped = 0;
    counts[0] = image_source_good(src);
    for (int r = 0; r < SKIP_REASONS; r++) counts[1 + r] = image_source_skipped(src, (skip_reason)r);
    dist_allreduce_sum_i64(counts, 1 + SKIP_REASONS);
    for (int r = 0; r < SKIP_REASONS; r++) skipped += counts[1 + r];
    size_t at = (size_t)snprintf(buf, len, "%lld good, %lld skipped", (long long)counts[0], (long long)skipped);
    for (int r = 0, first = 1; r < SKIP_REASONS && at < len; r++) {
        if (!counts[1 + r]) continue;
        at += (size_t)snprintf(buf + at, len - at, "%s%s: %lld", first ? " (" : ", ", skip_reason_name((skip_reason)r),
                               (long long)counts[1 + r]);
        first = 0;
    }
    if (skipped && at < len) snprintf(buf + at, len - at, ")");
}

/* What identifies a VAE in encode.json and dataset.json: its config and a
 * checksum of its weights. */
static cJSON *vae_identity(vae_model *v, const char *vae_dir, int size, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", vae_dir);
    cJSON *cfg = json_read_object(path, err);
    if (!cfg) return NULL;
    param_set *ps = vae_params(v);
    char crc[16];
    snprintf(crc, sizeof crc, "%08x", crc32c(0, ps->w, ps->numel * sizeof(float)));
    cJSON *id = cJSON_CreateObject();
    cJSON_AddItemToObject(id, "config", cfg);
    cJSON_AddStringToObject(id, "weights_crc32c", crc);
    cJSON_AddNumberToObject(id, "image_size", size);
    return id;
}

/* Growable byte string with offsets: captions and keys of a shard. */
typedef struct {
    char *bytes;
    size_t len, cap;
    int64_t *off;
    int n, cap_n;
} string_list;

static void strings_add(string_list *s, const char *str) {
    size_t k = strlen(str);
    if (s->len + k > s->cap) {
        s->cap = (s->len + k) * 2 + 256;
        s->bytes = realloc(s->bytes, s->cap);
    }
    if (s->n + 2 > s->cap_n) {
        s->cap_n = s->cap_n * 2 + 64;
        s->off = realloc(s->off, sizeof(int64_t) * s->cap_n);
    }
    if (!s->bytes || !s->off) die("out of memory");
    if (s->n == 0) s->off[0] = 0;
    memcpy(s->bytes + s->len, str, k);
    s->len += k;
    s->off[++s->n] = (int64_t)s->len;
}

static void strings_free(string_list *s) {
    free(s->bytes);
    free(s->off);
    memset(s, 0, sizeof *s);
}

/* Encodes every good sample of the selected input into one shard file. */
static long encode_input(vae_model *v, image_source *src, int input, const char *out_path, int size, int batch,
                         int keep_logvar, double t0, long *total) {
    const vae_config *c = vae_cfg(v);
    int f = vae_downscale(c), C = c->latent_channels, h = size / f;
    size_t per = (size_t)3 * size * size, lat = (size_t)C * h * h;
    float *x = xmalloc(sizeof(float) * batch * per);
    float *mean = NULL, *logvar = NULL, *bm = xmalloc(sizeof(float) * batch * lat),
          *bl = xmalloc(sizeof(float) * batch * lat);
    string_list caps = {0}, keys = {0};
    long n = 0, cap = 0;
    image_source_select(src, input);
    image_sample smp;
    for (int done = 0; !done;) {
        int m = 0;
        while (m < batch && !(done = image_source_next(src, &smp) != 1)) {
            memcpy(x + m++ * per, smp.rgb, per * sizeof(float));
            strings_add(&caps, smp.caption);
            strings_add(&keys, smp.key);
        }
        if (m == 0) break;
        vae_encode(v, x, m, size, size, bm, bl);
        if (n + m > cap) {
            cap = (n + m) * 2;
            mean = realloc(mean, sizeof(float) * cap * lat);
            logvar = keep_logvar ? realloc(logvar, sizeof(float) * cap * lat) : NULL;
            if (!mean || (keep_logvar && !logvar)) die("out of memory");
        }
        memcpy(mean + n * lat, bm, sizeof(float) * m * lat);
        if (keep_logvar) memcpy(logvar + n * lat, bl, sizeof(float) * m * lat);
        n += m;
        *total += m;
        fprintf(stderr, "\rencoded %ld images  %.1f images/s   ", *total, *total / (now_s() - t0));
    }
    char err[ERR_LEN];
    if (n > 0) {
        st_entry e[6] = {
            {"mean", ST_F32, 4, {n, C, h, h}, mean},
            {"caption_bytes", ST_U8, 1, {(int64_t)caps.len}, caps.bytes},
            {"caption_offsets", ST_I64, 1, {n + 1}, caps.off},
            {"key_bytes", ST_U8, 1, {(int64_t)keys.len}, keys.bytes},
            {"key_offsets", ST_I64, 1, {n + 1}, keys.off},
            {"logvar", ST_F32, 4, {n, C, h, h}, logvar},
        };
        if (st_write(out_path, e, keep_logvar ? 6 : 5, err)) die("%s", err);
    }
    free(x);
    free(bm);
    free(bl);
    free(mean);
    free(logvar);
    strings_free(&caps);
    strings_free(&keys);
    return n;
}

/* Per-channel mean and std over every latent of the listed shards, and the
 * shard entries of dataset.json (name, samples, bytes, crc32c). */
static int summarize(const char *dir, char **names, int n_shards, int C, cJSON *shards, double *ch_mean, double *ch_std,
                     long *count, char *err) {
    double *s1 = calloc(C, sizeof(double)), *s2 = calloc(C, sizeof(double));
    long values = 0;
    *count = 0;
    for (int k = 0; k < n_shards; k++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[k]);
        st_file f;
        uint32_t crc;
        if (st_open(path, &f, err) || crc32c_file(path, &crc, err)) {
            free(s1);
            free(s2);
            return -1;
        }
        const st_tensor *t = st_find(&f, "mean");
        if (!t || t->dtype != ST_F32 || t->ndim != 4 || t->shape[1] != C) {
            set_error(err, "%s: tensor 'mean': expected F32 [n, %d, h, w]", path, C);
            st_close(&f);
            free(s1);
            free(s2);
            return -1;
        }
        size_t plane = (size_t)t->shape[2] * t->shape[3];
        const uint8_t *data = f.buf + f.data_start + t->begin;
        for (int64_t i = 0; i < t->shape[0]; i++)
            for (int c = 0; c < C; c++)
                for (size_t j = 0; j < plane; j++) {
                    float z;
                    memcpy(&z, data + (((size_t)i * C + c) * plane + j) * sizeof(float), sizeof z);
                    s1[c] += z;
                    s2[c] += (double)z * z;
                }
        values += (long)t->shape[0] * plane;
        *count += (long)t->shape[0];
        char crc_hex[16];
        snprintf(crc_hex, sizeof crc_hex, "%08x", crc);
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "file", names[k]);
        cJSON_AddNumberToObject(e, "samples", (double)t->shape[0]);
        cJSON_AddNumberToObject(e, "bytes", (double)f.size);
        cJSON_AddStringToObject(e, "crc32c", crc_hex);
        cJSON_AddItemToArray(shards, e);
        st_close(&f);
    }
    for (int c = 0; c < C; c++) {
        ch_mean[c] = values ? s1[c] / values : 0.0;
        double var = values ? s2[c] / values - ch_mean[c] * ch_mean[c] : 1.0;
        ch_std[c] = sqrt(var > 1e-12 ? var : 1e-12);
    }
    free(s1);
    free(s2);
    return 0;
}

static int cmd_encode(const args *a) {
    char err[ERR_LEN], path[4096], summary[512];
    nn_init((int)arg_int(a, "threads"));
    const char *vae_dir = arg_str(a, "vae"), *out = arg_str(a, "out");
    vae_model *v = vae_load(vae_dir, err);
    if (!v) die_input("%s", err);
    const vae_config *c = vae_cfg(v);
    int size = (int)arg_int(a, "size"), batch = (int)arg_int(a, "batch");
    int keep_logvar = arg_switch(a, "logvar"), f = vae_downscale(c);
    if (size % f) die_input("vae_service encode: --size %d is not a multiple of the VAE's downscale %d", size, f);
    int rank = dist_rank();
    image_source *src = image_source_open(arg_str(a, "data"), size, rank, dist_size(), err);
    if (!src) die_input("%s", err);
    if (rank == 0 && make_dir(out, err)) die("%s", err);

    /* encode.json pins the VAE: resuming with another one would mix latents. */
    cJSON *id = vae_identity(v, vae_dir, size, err);
    if (!id) die_input("%s", err);
    snprintf(path, sizeof path, "%s/encode.json", out);
    if (rank != 0 || file_exists(path)) {
        dist_barrier(); /* rank 0 has checked or written it */
        cJSON *old = json_read_object(path, err);
        if (!old) die_input("%s", err);
        int same = cJSON_Compare(cJSON_GetObjectItem(old, "vae"), id, 1);
        cJSON_Delete(old);
        if (!same) die_input("%s: latents of another VAE or image size are here; use a new --out", path);
    } else {
        cJSON *root = cJSON_CreateObject();
        cJSON_AddItemReferenceToObject(root, "vae", id);
        if (json_write(path, root, err)) die("%s", err);
        dist_barrier();
    }

    int n_inputs = image_source_count_inputs(src);
    char **names = shard_file_names(src, n_inputs);
    long total = 0, skipped_inputs = 0;
    double t0 = now_s();
    for (int i = 0; i < n_inputs; i++) {
        snprintf(path, sizeof path, "%s/%s", out, names[i]);
        if (file_exists(path)) {
            skipped_inputs++;
            continue;
        } /* complete: renamed into place */
        encode_input(v, src, i, path, size, batch, keep_logvar, t0, &total);
        double dt = now_s() - t0;
        fprintf(stderr, "\rshard %d/%d %s: %ld images, %.1f images/s, eta %.0f s\n", i + 1, n_inputs, names[i], total,
                total / dt, dt / (i + 1 - skipped_inputs) * (n_inputs - i - 1));
    }
    run_summary(src, summary, sizeof summary);
    int64_t encoded = total;
    dist_allreduce_sum_i64(&encoded, 1);
    if (skipped_inputs) fprintf(stderr, "%ld shards were already encoded\n", skipped_inputs);
    for (int i = 0; i < n_inputs; i++) free(names[i]);
    free(names);
    image_source_close(src);
    dist_barrier(); /* every rank's shards are in place */
    if (rank != 0) {
        cJSON_Delete(id);
        vae_free(v);
        return 0;
    }

    /* dataset.json, from the shards of every input as they are on disk (an
     * input that had no good sample has no shard). */
    src = image_source_open(arg_str(a, "data"), size, 0, 1, err);
    if (!src) die_input("%s", err);
    n_inputs = image_source_count_inputs(src);
    names = shard_file_names(src, n_inputs);
    int n_shards = 0;
    for (int i = 0; i < n_inputs; i++) {
        snprintf(path, sizeof path, "%s/%s", out, names[i]);
        if (file_exists(path))
            names[n_shards++] = names[i];
        else
            free(names[i]);
    }
    int C = c->latent_channels, h = size / f;
    double *ch_mean = xcalloc(C, sizeof(double)), *ch_std = xcalloc(C, sizeof(double));
    long count;
    cJSON *root = cJSON_CreateObject(), *shards = cJSON_CreateArray();
    if (summarize(out, names, n_shards, C, shards, ch_mean, ch_std, &count, err)) die("%s", err);
    cJSON_AddNumberToObject(root, "count", (double)count);
    cJSON_AddItemToObject(root, "shards", shards);
    cJSON_AddNumberToObject(root, "C", C);
    cJSON_AddNumberToObject(root, "h", h);
    cJSON_AddNumberToObject(root, "w", h);
    cJSON_AddStringToObject(root, "dtype", "F32");
    cJSON_AddItemToObject(root, "channel_mean", cJSON_CreateDoubleArray(ch_mean, C));
    cJSON_AddItemToObject(root, "channel_std", cJSON_CreateDoubleArray(ch_std, C));
    cJSON_AddItemToObject(root, "vae", id);
    cJSON_AddStringToObject(root, "last_run", summary); /* what this run read and skipped */
    snprintf(path, sizeof path, "%s/dataset.json", out);
    if (json_write(path, root, err)) die("%s", err);
    printf("encoded %lld images this run; dataset %ld latents in %d shards (%s)\n", (long long)encoded, count, n_shards,
           summary);
    for (int i = 0; i < n_shards; i++) free(names[i]);
    free(names);
    free(ch_mean);
    free(ch_std);
    image_source_close(src);
    vae_free(v);
    return 0;
}

/* ---------------------------------------------------------------- decode */

/* Decodes one latent shard into KEY.webp files (lossless) in out. */
static long decode_file(vae_model *v, const char *path, const char *out, int limit, char *err) {
    const vae_config *c = vae_cfg(v);
    st_file f;
    if (st_open(path, &f, err)) return -1;
    const st_tensor *t = st_find(&f, "mean");
    if (!t || t->ndim != 4) {
        st_close(&f);
        return set_error(err, "%s: tensor 'mean': missing or not [n, C, h, w]", path);
    }
    if (t->shape[1] != c->latent_channels) {
        set_error(err, "%s: tensor 'mean': %lld channels, but this VAE has %d (latents of another VAE)", path,
                  (long long)t->shape[1], c->latent_channels);
        st_close(&f);
        return -1;
    }
    int n = (int)t->shape[0], h = (int)t->shape[2], w = (int)t->shape[3], fct = vae_downscale(c);
    int H = h * fct, W_ = w * fct;
    if (limit > 0 && n > limit) n = limit;
    size_t lat = (size_t)c->latent_channels * h * w, per = (size_t)3 * H * W_;
    float *z = xmalloc(sizeof(float) * t->shape[0] * lat), *img = xmalloc(sizeof(float) * per);
    if (st_read_f32(&f, "mean", 4, t->shape, z, err)) {
        st_close(&f);
        free(z);
        free(img);
        return -1;
    }
    const st_tensor *kb = st_find(&f, "key_bytes"), *ko = st_find(&f, "key_offsets");
    uint8_t *rgb = xmalloc((size_t)H * W_ * 3);
    for (int i = 0; i < n; i++) {
        vae_decode(v, z + i * lat, 1, h, w, img);
        image_to_rgb8(rgb, img, H, W_);
        char key[512] = "";
        if (kb && ko && ko->dtype == ST_I64 && ko->shape[0] > i + 1) {
            int64_t o[2];
            memcpy(o, f.buf + f.data_start + ko->begin + i * sizeof(int64_t), sizeof o);
            /* Offsets come from the file: use them only when they are sane. */
            if (o[0] >= 0 && o[1] >= o[0] && (size_t)o[1] <= kb->end - kb->begin && o[1] - o[0] < (int64_t)sizeof key) {
                memcpy(key, f.buf + f.data_start + kb->begin + o[0], (size_t)(o[1] - o[0]));
                key[o[1] - o[0]] = '\0';
            }
        }
        if (!key[0] || strchr(key, '/')) snprintf(key, sizeof key, "%06d", i);
        char file[4096];
        snprintf(file, sizeof file, "%s/%s.webp", out, key);
        if (image_write_webp(file, rgb, H, W_, err)) {
            n = -1;
            break;
        }
    }
    st_close(&f);
    free(z);
    free(img);
    free(rgb);
    return n;
}

static int cmd_decode(const args *a) {
    char err[ERR_LEN];
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = vae_load(arg_str(a, "vae"), err);
    if (!v) die_input("%s", err);
    const char *in = arg_str(a, "latents"), *out = arg_str(a, "out");
    int limit = (int)arg_int(a, "limit");
    if (make_dir(out, err)) die("%s", err);
    struct stat st;
    if (stat(in, &st) != 0) die_input("%s: no such file or folder", in);
    long n = 0;
    if (S_ISDIR(st.st_mode)) {
        char path[4096];
        snprintf(path, sizeof path, "%s/dataset.json", in);
        cJSON *ds = json_read_object(path, err);
        if (!ds) die_input("%s", err);
        const cJSON *shards = cJSON_GetObjectItem(ds, "shards"), *e;
        cJSON_ArrayForEach(e, shards) {
            const cJSON *file = cJSON_GetObjectItem(e, "file");
            if (!cJSON_IsString(file) || strchr(file->valuestring, '/'))
                die_input("%s: field 'shards': bad file entry", path);
            snprintf(path, sizeof path, "%s/%s", in, file->valuestring);
            long k = decode_file(v, path, out, limit > 0 ? limit - (int)n : 0, err);
            if (k < 0) die_input("%s", err);
            n += k;
            if (limit > 0 && n >= limit) break;
        }
        cJSON_Delete(ds);
    } else {
        n = decode_file(v, in, out, limit, err);
        if (n < 0) die_input("%s", err);
    }
    printf("decoded %ld images into %s\n", n, out);
    vae_free(v);
    return 0;
}

static const cli_flag encode_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"data", FLAG_TEXT | FLAG_REQUIRED, "SHARDS", NULL, NULL,
     "image-caption tar shards or folders (comma-separated paths or globs)"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "LATENT_DIR", NULL, NULL,
     "the latent dataset: one shard per input, dataset.json"},
    {"size", FLAG_INT, "S", "[8, inf)", "64", "image side in pixels (center-cropped and resized)"},
    {"batch", FLAG_INT, "B", "[1, inf)", "32", "images per forward pass"},
    {"logvar", FLAG_SWITCH, NULL, NULL, NULL, "also store the posterior's log-variance"},
    {0},
};

const cli_command vae_encode_command = {
    "encode",
    "encodes an image-caption dataset to latent shards, once (resumable, split over MPI ranks)",
    cmd_encode,
    {encode_flags, cli_threads_flags}};

static const cli_flag decode_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"latents", FLAG_TEXT | FLAG_REQUIRED, "FILE_OR_DIR", NULL, NULL, "a latent shard, or a latent dataset folder"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL, "where the images go, KEY.webp (lossless)"},
    {"limit", FLAG_INT, "N", "[0, inf)", "0", "decode at most N latents (0: all)"},
    {0},
};

const cli_command vae_decode_command = {
    "decode", "decodes latents back to images", cmd_decode, {decode_flags, cli_threads_flags}};
