/* inspect.c - `dataloader inspect`: fetch one batch as a trainer would and
 * describe it.
 *
 *   dataloader inspect --endpoint E --step S --rank R --world W [--dump FILE.safetensors]
 *                      [--timeout-ms MS] [--diffusion-steps T]
 *
 * Prints one JSON line: positions, pad and image fractions (image-caption
 * document positions over non-pad positions), images, caption-first,
 * image-first and dropped-caption counts, documents and text documents.
 * --dump writes the batch file of docs/model.md section 7 (tokens, modality, doc,
 * image, latents, plus noise ~ N(0, 1) and timesteps drawn from (step, rank),
 * 1..T/2 for noise-limited images, so `trainer loss` reads it as it is), and
 * noise_limit I32 [n] and sample_ids I64 [documents]. */
#include "../dataloader_client/client.h"
#include "commands.h"
#include "../common/error.h"
#include "../common/rng.h"
#include "../common/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { long positions, pads, image_positions, images, caption_first, image_first, dropped, docs, text_docs; } stats;

/* Walks the documents of every row. An image document's caption is before
 * its patches (caption first), after them (image first), or absent. */
static stats describe(const dl_batch *b) {
    stats st = {0};
    int N = b->patch > 0 ? (b->h / b->patch) * (b->w / b->patch) : 0;
    for (int r = 0; r < b->B; r++) {
        const int32_t *mod = b->modality + (size_t)r * b->L, *doc = b->doc + (size_t)r * b->L;
        for (int i = 0; i < b->L;) {
            st.positions++;
            if (mod[i] == 2) { st.pads++; i++; continue; }
            int end = i, first_patch = -1;
            while (end < b->L && mod[end] != 2 && doc[end] == doc[i]) {
                if (mod[end] == 1 && first_patch < 0) first_patch = end;
                end++;
            }
            st.positions += end - i - 1;
            st.docs++;
            if (first_patch < 0) { st.text_docs++; i = end; continue; }
            st.images++;
            st.image_positions += end - i;
            int before = first_patch - i - 2, after = end - (first_patch + N) - 2;   /* BOS..BOI, EOI..EOS */
            if (before > 0) st.caption_first++;
            else if (after > 0) st.image_first++;
            else st.dropped++;
            i = end;
        }
    }
    return st;
}

static void dump(const char *path, const dl_batch *b, int T) {
    size_t lat = (size_t)b->n_images * b->C * b->h * b->w;
    float *noise = xmalloc(sizeof(float) * (lat ? lat : 1));
    int32_t *t = xmalloc(sizeof(int32_t) * (b->n_images ? b->n_images : 1));
    rng r;
    rng_seed(&r, (uint64_t)b->step * 65537u + (uint64_t)b->rank);
    for (size_t k = 0; k < lat; k++) noise[k] = (float)rng_normal(&r);
    for (int i = 0; i < b->n_images; i++) t[i] = rng_int(&r, 1, b->noise_limit[i] && T >= 2 ? T / 2 : T);
    st_entry e[9] = {
        {"tokens", ST_I32, 2, {b->B, b->L}, b->tokens},
        {"modality", ST_I32, 2, {b->B, b->L}, b->modality},
        {"doc", ST_I32, 2, {b->B, b->L}, b->doc},
        {"image", ST_I32, 2, {b->B, b->L}, b->image},
        {"latents", ST_F32, 4, {b->n_images, b->C, b->h, b->w}, b->latents},
        {"noise", ST_F32, 4, {b->n_images, b->C, b->h, b->w}, noise},
        {"timesteps", ST_I32, 1, {b->n_images}, t},
        {"noise_limit", ST_I32, 1, {b->n_images}, b->noise_limit},
        {"sample_ids", ST_I64, 1, {b->n_docs}, b->sample_ids},
    };
    char err[ERR_LEN];
    if (st_write(path, e, 9, err)) die("%s", err);
    free(noise);
    free(t);
}

int dl_cmd_inspect(const args *a) {
    char err[ERR_LEN];
    const char *endpoint = arg_required(a, "endpoint");
    int64_t step = arg_int(a, "step", 0, 0);
    int world = (int)arg_int(a, "world", 1, 1), rank = (int)arg_int(a, "rank", 0, 0);
    int T = (int)arg_int(a, "diffusion-steps", 1000, 1);
    if (rank >= world) die_input("%s %s: --rank %d is not below --world %d", a->prog, a->cmd, rank, world);
    dl_client_options o = {.prefetch = 0, .timeout_ms = (int)arg_int(a, "timeout-ms", 5000, 1), .tries = 2};
    dl_client *c = dl_client_open(endpoint, rank, world, step, &o, err);
    if (!c) die_input("%s %s: %s", a->prog, a->cmd, err);
    dl_batch b;
    if (dl_client_next(c, &b, err)) die("%s", err);
    stats st = describe(&b);
    long nonpad = st.positions - st.pads;
    printf("{\"step\":%lld,\"rank\":%d,\"world\":%d,\"rows\":%d,\"seq_len\":%d,\"fingerprint\":\"%016llx\","
           "\"pad_fraction\":%.4f,\"image_fraction\":%.4f,\"images\":%ld,\"caption_first\":%ld,\"image_first\":%ld,"
           "\"dropped_captions\":%ld,\"documents\":%ld,\"text_documents\":%ld}\n",
           (long long)b.step, b.rank, b.world, b.B, b.L, (unsigned long long)dl_client_fingerprint(c),
           st.positions ? (double)st.pads / st.positions : 0.0, nonpad ? (double)st.image_positions / nonpad : 0.0,
           st.images, st.caption_first, st.image_first, st.dropped, st.docs, st.text_docs);
    const char *path = arg_str(a, "dump", NULL);
    if (path) dump(path, &b, T);
    dl_client_close(c);
    return 0;
}
