/* rows.c - a rank's rows from the dataloader or a generated set; see rows.h. */
#include "rows.h"
#include "../common/error.h"
#include "../common/timing.h"
#include "../dataloader_client/client.h"
#include "../nn/dist.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct row_source {
    model_config cfg;
    int accum, B, L;
    dl_client **clients; /* [accum], NULL for generated rows */
    cJSON *info;         /* the loader's info */
    batch *micro;        /* [accum] */
};

row_source *rows_open_generated(const model_config *c, int accum, int B, int L, unsigned long long seed) {
    row_source *s = xcalloc(1, sizeof *s);
    s->cfg = *c;
    s->accum = accum;
    s->B = B;
    s->L = L;
    s->micro = xcalloc(accum, sizeof(batch));
    int world = dist_size(), rank = dist_rank();
    rng r;
    rng_seed(&r, seed);
    batch global;
    batch_generate(&global, c, world * accum * B, L, &r);
    for (int j = 0; j < accum; j++) batch_slice(&s->micro[j], &global, c, (rank * accum + j) * B, B);
    batch_free(&global);
    return s;
}

/* The config fields the loader dictates, from its info JSON. */
static cJSON *loader_fields(const cJSON *info, const char *endpoint, char *err) {
    static const char *const ids[] = {"vocab_size",   "bos_token_id",    "eos_token_id", "boi_token_id",
                                      "eoi_token_id", "latent_channels", "patch_size"};
    cJSON *g = cJSON_CreateObject();
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(info, ids[i]);
        if (!cJSON_IsNumber(v)) {
            set_error(err, "loader %s: info field '%s' missing", endpoint, ids[i]);
            cJSON_Delete(g);
            return NULL;
        }
        cJSON_AddNumberToObject(g, ids[i], v->valuedouble);
    }
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(info, "latent_h"),
                *w = cJSON_GetObjectItemCaseSensitive(info, "latent_w");
    if (!cJSON_IsNumber(h) || !cJSON_IsNumber(w) || h->valuedouble != w->valuedouble) {
        set_error(err, "loader %s: latents must be square (info latent_h, latent_w)", endpoint);
        cJSON_Delete(g);
        return NULL;
    }
    cJSON_AddNumberToObject(g, "latent_size", h->valuedouble);
    return g;
}

row_source *rows_open_loader(const char *endpoint, const char *key, const char *config_path, int accum, long first_step,
                             model_config *c, int *B, int *L, char *err) {
    row_source *s = xcalloc(1, sizeof *s);
    s->accum = accum;
    s->micro = xcalloc(accum, sizeof(batch));
    s->clients = xcalloc(accum, sizeof(dl_client *));
    int world = dist_size(), rank = dist_rank();
    char source[512];
    cJSON *info = NULL, *given = NULL;
    dl_client_options o = {4, 2000, 30, 0, key}; /* the defaults, and CURVE when key is given */
    for (int j = 0; j < accum; j++)
        if (!(s->clients[j] = dl_client_open(endpoint, rank * accum + j, world * accum, first_step, &o, err)))
            goto fail;
    char *text = dl_client_info(s->clients[0], err);
    if (!text) goto fail;
    info = cJSON_Parse(text);
    free(text);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(info, "rows_per_rank");
    const cJSON *len = cJSON_GetObjectItemCaseSensitive(info, "seq_len");
    if (!cJSON_IsNumber(rows) || !cJSON_IsNumber(len)) {
        set_error(err, "loader %s: info without rows_per_rank and seq_len", endpoint);
        goto fail;
    }
    if (!(given = loader_fields(info, endpoint, err))) goto fail;
    snprintf(source, sizeof source, "the loader at %s", endpoint);
    if (config_load_given(config_path, given, source, c, err)) goto fail;
    s->cfg = *c;
    *B = s->B = rows->valueint;
    *L = s->L = len->valueint;
    s->info = info;
    cJSON_Delete(given);
    return s;
fail:
    cJSON_Delete(info);
    cJSON_Delete(given);
    rows_close(s);
    return NULL;
}

void rows_close(row_source *s) {
    if (!s) return;
    for (int j = 0; j < s->accum; j++) {
        if (s->clients && s->clients[j]) dl_client_close(s->clients[j]);
        batch_free(&s->micro[j]);
    }
    free(s->clients);
    free(s->micro);
    cJSON_Delete(s->info);
    free(s);
}

const cJSON *rows_loader_info(const row_source *s) { return s->info; }

int rows_next(row_source *s, batch **micro, double *wait_s, char *err) {
    *micro = s->micro;
    *wait_s = 0;
    if (!s->clients) return 0;
    for (int j = 0; j < s->accum; j++) {
        dl_batch d;
        double t0 = now_s();
        if (dl_client_next(s->clients[j], &d, err)) return 1;
        *wait_s += now_s() - t0;
        const model_config *c = &s->cfg;
        char what[96];
        snprintf(what, sizeof what, "loader step %lld rank %d", (long long)d.step, d.rank);
        if (d.B != s->B || d.L != s->L || d.C != c->latent_channels || d.h != c->latent_size || d.w != c->latent_size ||
            d.patch != c->patch_size)
            return set_error(
                err, "%s: rows of %dx%d with %dx%dx%d latents (patch %d), expected %dx%d and %dx%dx%d (patch %d)", what,
                d.B, d.L, d.C, d.h, d.w, d.patch, s->B, s->L, c->latent_channels, c->latent_size, c->latent_size,
                c->patch_size);
        batch_free(&s->micro[j]);
        if (batch_from_rows(&s->micro[j], c, d.B, d.L, d.n_images, d.tokens, d.modality, d.doc, d.image, d.noise_limit,
                            d.latents, what, err))
            return 1;
    }
    return 0;
}
