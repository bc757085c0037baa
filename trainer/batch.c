/* batch.c - batch files (docs/model.md section 7): load with validation, save,
 * and a synthetic generator for benchmarks and the quickstart. */
#include "batch.h"
#include "../common/error.h"
#include "../common/finite.h"
#include "../common/batch_file.h"
#include "../common/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void batch_free(batch *b) {
    free(b->tokens);
    free(b->modality);
    free(b->doc);
    free(b->image);
    free(b->latents);
    free(b->noise);
    free(b->timesteps);
    free(b->noise_limit);
    memset(b, 0, sizeof *b);
}

static void batch_alloc(batch *b, const model_config *c, int B, int L, int n_images) {
    size_t N = (size_t)B * L, lat = (size_t)n_images * c->latent_channels * c->latent_size * c->latent_size;
    b->B = B;
    b->L = L;
    b->n_images = n_images;
    b->tokens = xcalloc(N, sizeof(int32_t));
    b->modality = xcalloc(N, sizeof(int32_t));
    b->doc = xcalloc(N, sizeof(int32_t));
    b->image = xcalloc(N, sizeof(int32_t));
    b->latents = xcalloc(lat ? lat : 1, sizeof(float));
    b->noise = xcalloc(lat ? lat : 1, sizeof(float));
    b->timesteps = xcalloc(n_images ? n_images : 1, sizeof(int32_t));
    b->noise_limit = xcalloc(n_images ? n_images : 1, sizeof(int32_t));
}

/* Checks what the model relies on; see batch.h. */
static int batch_validate(const batch *b, const model_config *c, const char *path, char *err) {
    int G = cfg_patches_per_image(c);
    char *used = xcalloc(b->n_images ? b->n_images : 1, 1);
    int rc = 1;
    for (int r = 0; r < b->B; r++) {
        for (int i = 0; i < b->L; i++) {
            size_t at = (size_t)r * b->L + i;
            int m = b->modality[at];
            if (m < MOD_TOKEN || m > MOD_PAD) {
                set_error(err, "%s: tensor 'modality': row %d position %d: value %d is not 0, 1 or 2", path, r, i, m);
                goto out;
            }
            if (m == MOD_TOKEN && (b->tokens[at] < 0 || b->tokens[at] >= c->vocab_size)) {
                set_error(err, "%s: tensor 'tokens': row %d position %d: id %d outside 0..%d", path, r, i,
                          b->tokens[at], c->vocab_size - 1);
                goto out;
            }
            if (m != MOD_PATCH || (i > 0 && b->modality[at - 1] == MOD_PATCH && b->image[at - 1] == b->image[at]))
                continue;
            /* The first patch of an image: the whole run must be there. */
            int img = b->image[at];
            if (img < 0 || img >= b->n_images) {
                set_error(err, "%s: tensor 'image': row %d position %d: image %d outside 0..%d", path, r, i, img,
                          b->n_images - 1);
                goto out;
            }
            if (used[img]) {
                set_error(err, "%s: tensor 'image': row %d position %d: image %d appears twice", path, r, i, img);
                goto out;
            }
            used[img] = 1;
            int run = 0;
            while (i + run < b->L && b->modality[at + run] == MOD_PATCH && b->image[at + run] == img) {
                if (b->doc[at + run] != b->doc[at]) {
                    set_error(err, "%s: tensor 'doc': row %d position %d: image %d spans two documents", path, r,
                              i + run, img);
                    goto out;
                }
                run++;
            }
            if (run != G) {
                set_error(err, "%s: tensor 'image': row %d position %d: image %d has %d patch positions, expected %d",
                          path, r, i, img, run, G);
                goto out;
            }
        }
    }
    size_t per = (size_t)c->latent_channels * c->latent_size * c->latent_size;
    const float *data[2] = {b->latents, b->noise};
    const char *names[2] = {"latents", "noise"};
    for (int k = 0; k < 2; k++) {
        long long at = first_nonfinite(data[k], per * b->n_images);
        if (at >= 0) {
            set_error(err, "%s: tensor '%s': image %lld holds a NaN or an infinity", path, names[k],
                      at / (long long)per);
            goto out;
        }
    }
    for (int k = 0; k < b->n_images; k++) {
        if (b->timesteps[k] < 1 || b->timesteps[k] > c->diffusion_steps) {
            set_error(err, "%s: tensor 'timesteps': image %d: t = %d outside 1..%d", path, k, b->timesteps[k],
                      c->diffusion_steps);
            goto out;
        }
    }
    rc = 0;
out:
    free(used);
    return rc;
}

int batch_load(const char *path, const model_config *c, batch *b, char *err) {
    st_file f;
    memset(b, 0, sizeof *b);
    if (st_open(path, &f, err)) return 1;
    int rc = 1;
    const st_tensor *tok = st_find(&f, "tokens"), *lat = st_find(&f, "latents");
    if (!tok || tok->ndim != 2) {
        set_error(err, "%s: tensor 'tokens': %s", path, tok ? "must be 2-D [B, L]" : "missing");
        goto out;
    }
    if (!lat || lat->ndim != 4) {
        set_error(err, "%s: tensor 'latents': %s", path, lat ? "must be 4-D [n, C, h, w]" : "missing");
        goto out;
    }
    int B = (int)tok->shape[0], L = (int)tok->shape[1], n = (int)lat->shape[0];
    batch_alloc(b, c, B, L, n);
    int64_t rows[2] = {B, L}, imgs[1] = {n};
    int64_t lshape[4] = {n, c->latent_channels, c->latent_size, c->latent_size};
    if (st_read_i32(&f, "tokens", 2, rows, b->tokens, err) || st_read_i32(&f, "modality", 2, rows, b->modality, err) ||
        st_read_i32(&f, "doc", 2, rows, b->doc, err) || st_read_i32(&f, "image", 2, rows, b->image, err) ||
        st_read_f32(&f, "latents", 4, lshape, b->latents, err) || st_read_f32(&f, "noise", 4, lshape, b->noise, err) ||
        st_read_i32(&f, "timesteps", 1, imgs, b->timesteps, err) || batch_validate(b, c, path, err))
        goto out;
    rc = 0;
out:
    st_close(&f);
    if (rc) batch_free(b);
    return rc;
}

int batch_save(const char *path, const model_config *c, const batch *b, char *err) {
    batch_file f = {b->B,        b->L,   b->n_images, c->latent_channels, c->latent_size, c->latent_size, b->tokens,
                    b->modality, b->doc, b->image,    b->latents,         b->noise,       b->timesteps};
    return batch_file_write(path, &f, NULL, 0, err);
}

/* Writes one document at row position `at` (at most `room` positions): an
 * image-caption pair, caption first (80%) or image first, or a plain text
 * document. Returns its length, 0 when nothing fits. */
static int put_document(batch *b, const model_config *c, rng *r, int row, int at, int room, int *n_images,
                        int max_images) {
    int G = cfg_patches_per_image(c);
    int with_image = *n_images < max_images && room >= G + 7 && rng_uniform(r) < 0.8;
    int text = with_image ? rng_int(r, 3, 9) : rng_int(r, 8, 40);
    int extra = with_image ? G + 4 : 2; /* BOS EOS, and BOI EOI + patches */
    if (text + extra > room) text = room - extra;
    if (text < 1) return 0;
    int caption_first = rng_uniform(r) < 0.8;
    int doc = at == 0 ? 0 : b->doc[(size_t)row * b->L + at - 1] + 1;
    int img = with_image ? (*n_images)++ : -1;
    int i = at;
    size_t base = (size_t)row * b->L;
#define PUT(mod, tok, im)                                                                                              \
    do {                                                                                                               \
        b->modality[base + i] = (mod);                                                                                 \
        b->tokens[base + i] = (tok);                                                                                   \
        b->doc[base + i] = doc;                                                                                        \
        b->image[base + i] = (im);                                                                                     \
        i++;                                                                                                           \
    } while (0)
    PUT(MOD_TOKEN, c->bos_token_id, -1);
    int image_at = with_image ? (caption_first ? text : 0) : -1;
    for (int t = 0; t <= text; t++) {
        if (t == image_at) {
            PUT(MOD_TOKEN, c->boi_token_id, -1);
            for (int k = 0; k < G; k++) PUT(MOD_PATCH, 0, img);
            PUT(MOD_TOKEN, c->eoi_token_id, -1);
        }
        if (t < text) PUT(MOD_TOKEN, (int)(rng_u64(r) % (uint64_t)c->vocab_size), -1);
    }
    PUT(MOD_TOKEN, c->eos_token_id, -1);
#undef PUT
    if (with_image) {
        int T = c->diffusion_steps;
        b->timesteps[img] = caption_first ? rng_int(r, 1, T) : rng_int(r, 1, T / 2 > 0 ? T / 2 : 1);
        b->noise_limit[img] = !caption_first;
    }
    return i - at;
}

void batch_generate(batch *b, const model_config *c, int B, int L, rng *r) {
    int G = cfg_patches_per_image(c);
    int max_images = B * (L / (G + 4) + 1);
    batch_alloc(b, c, B, L, max_images);
    int n_images = 0;
    for (int row = 0; row < B; row++) {
        int at = 0;
        while (L - at >= 3) {
            int len = put_document(b, c, r, row, at, L - at, &n_images, max_images);
            if (len == 0) break;
            at += len;
        }
        for (; at < L; at++) {
            size_t k = (size_t)row * L + at;
            b->modality[k] = MOD_PAD;
            b->tokens[k] = 0;
            b->doc[k] = -1;
            b->image[k] = -1;
        }
    }
    b->n_images = n_images;
    size_t lat = (size_t)n_images * c->latent_channels * c->latent_size * c->latent_size;
    for (size_t k = 0; k < lat; k++) b->latents[k] = (float)rng_normal(r);
    for (size_t k = 0; k < lat; k++) b->noise[k] = (float)rng_normal(r);
}

int batch_from_rows(batch *b, const model_config *c, int B, int L, int n_images, const int32_t *tokens,
                    const int32_t *modality, const int32_t *doc, const int32_t *image, const int32_t *noise_limit,
                    const float *latents, const char *what, char *err) {
    size_t N = (size_t)B * L, lat = (size_t)n_images * c->latent_channels * c->latent_size * c->latent_size;
    batch_alloc(b, c, B, L, n_images);
    memcpy(b->tokens, tokens, sizeof(int32_t) * N);
    memcpy(b->modality, modality, sizeof(int32_t) * N);
    memcpy(b->doc, doc, sizeof(int32_t) * N);
    memcpy(b->image, image, sizeof(int32_t) * N);
    memcpy(b->noise_limit, noise_limit, sizeof(int32_t) * n_images);
    memcpy(b->latents, latents, sizeof(float) * lat);
    for (int k = 0; k < n_images; k++) b->timesteps[k] = 1; /* a valid placeholder until drawn */
    if (batch_validate(b, c, what, err) == 0) return 0;
    batch_free(b);
    return 1;
}

void batch_slice(batch *dst, const batch *src, const model_config *c, int row0, int rows) {
    size_t N = (size_t)rows * src->L, lat = (size_t)c->latent_channels * c->latent_size * c->latent_size;
    int *map = xmalloc(sizeof(int) * (src->n_images ? src->n_images : 1)), n = 0;
    for (int k = 0; k < src->n_images; k++) map[k] = -1;
    const int32_t *img = src->image + (size_t)row0 * src->L;
    for (size_t i = 0; i < N; i++)
        if (img[i] >= 0 && map[img[i]] < 0) map[img[i]] = n++;
    batch_alloc(dst, c, rows, src->L, n);
    memcpy(dst->tokens, src->tokens + (size_t)row0 * src->L, sizeof(int32_t) * N);
    memcpy(dst->modality, src->modality + (size_t)row0 * src->L, sizeof(int32_t) * N);
    memcpy(dst->doc, src->doc + (size_t)row0 * src->L, sizeof(int32_t) * N);
    for (size_t i = 0; i < N; i++) dst->image[i] = img[i] >= 0 ? map[img[i]] : -1;
    for (int k = 0; k < src->n_images; k++) {
        int j = map[k];
        if (j < 0) continue;
        memcpy(dst->latents + j * lat, src->latents + k * lat, sizeof(float) * lat);
        memcpy(dst->noise + j * lat, src->noise + k * lat, sizeof(float) * lat);
        dst->timesteps[j] = src->timesteps[k];
        dst->noise_limit[j] = src->noise_limit ? src->noise_limit[k] : 0;
    }
    free(map);
}

void batch_draw_noise(batch *b, const model_config *c, uint64_t seed, long step, long first_row) {
    size_t lat = (size_t)c->latent_channels * c->latent_size * c->latent_size;
    int T = c->diffusion_steps;
    for (int row = 0; row < b->B; row++) {
        const int32_t *img = b->image + (size_t)row * b->L;
        int ordinal = 0;
        for (int i = 0; i < b->L; i++) {
            int k = img[i];
            if (k < 0 || (i > 0 && img[i - 1] == k)) continue; /* not an image's first patch */
            rng r;
            rng_seed(&r,
                     rng_key(rng_key(rng_key(seed, (uint64_t)step), (uint64_t)(first_row + row)), (uint64_t)ordinal++));
            int limited = b->noise_limit && b->noise_limit[k];
            b->timesteps[k] = rng_int(&r, 1, limited && T / 2 > 0 ? T / 2 : T);
            for (size_t e = 0; e < lat; e++) b->noise[k * lat + e] = (float)rng_normal(&r);
        }
    }
}
