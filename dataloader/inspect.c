/* inspect.c - `dataloader inspect`: fetch one batch as a trainer would and
 * describe it.
 *
 *   dataloader inspect --endpoint E --step S --rank R --world W [--dump FILE.safetensors]
 *                      [--timeout-ms MS] [--diffusion-steps T] [--loader-key FILE]
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
#include "../common/batch_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    long positions, pads, image_positions, images, caption_first, image_first, dropped, docs, text_docs;
} stats;

/* Walks the documents of every row. An image document's caption is before
 * its patches (caption first), after them (image first), or absent. */
static stats describe(const dl_batch *b) {
    stats st = {0};
    int N = b->patch > 0 ? (b->h / b->patch) * (b->w / b->patch) : 0;
    for (int r = 0; r < b->B; r++) {
        const int32_t *mod = b->modality + (size_t)r * b->L, *doc = b->doc + (size_t)r * b->L;
        for (int i = 0; i < b->L;) {
            st.positions++;
            if (mod[i] == 2) {
                st.pads++;
                i++;
                continue;
            }
            int end = i, first_patch = -1;
            while (end < b->L && mod[end] != 2 && doc[end] == doc[i]) {
                if (mod[end] == 1 && first_patch < 0) first_patch = end;
                end++;
            }
            st.positions += end - i - 1;
            st.docs++;
            if (first_patch < 0) {
                st.text_docs++;
                i = end;
                continue;
            }
            st.images++;
            st.image_positions += end - i;
            int before = first_patch - i - 2, after = end - (first_patch + N) - 2; /* BOS..BOI, EOI..EOS */
            if (before > 0)
                st.caption_first++;
            else if (after > 0)
                st.image_first++;
            else
                st.dropped++;
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
    batch_file f = {b->B,        b->L,   b->n_images, b->C,       b->h,  b->w, b->tokens,
                    b->modality, b->doc, b->image,    b->latents, noise, t};
    st_entry extra[2] = {
        {"noise_limit", ST_I32, 1, {b->n_images}, b->noise_limit},
        {"sample_ids", ST_I64, 1, {b->n_docs}, b->sample_ids},
    };
    char err[ERR_LEN];
    if (batch_file_write(path, &f, extra, 2, err)) die("%s", err);
    free(noise);
    free(t);
}

static int cmd_inspect(const args *a) {
    char err[ERR_LEN];
    const char *endpoint = arg_str(a, "endpoint");
    int64_t step = arg_int(a, "step");
    int world = (int)arg_int(a, "world"), rank = (int)arg_int(a, "rank");
    int T = (int)arg_int(a, "diffusion-steps");
    if (rank >= world) die_input("%s %s: --rank %d is not below --world %d", a->prog->name, a->cmd->name, rank, world);
    dl_client_options o = {
        .prefetch = 0, .timeout_ms = (int)arg_int(a, "timeout-ms"), .tries = 2, .server_key = arg_str(a, "loader-key")};
    dl_client *c = dl_client_open(endpoint, rank, world, step, &o, err);
    if (!c) die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
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
    const char *path = arg_str(a, "dump");
    if (path) dump(path, &b, T);
    dl_client_close(c);
    return 0;
}

static const cli_flag inspect_flags[] = {
    {"endpoint", FLAG_TEXT | FLAG_REQUIRED, "tcp://HOST:PORT", NULL, NULL, "the loader"},
    {"loader-key", FLAG_TEXT, "FILE", NULL, NULL, "the loader's public key (server.pub of `keygen`): CURVE"},
    {"step", FLAG_INT, "S", "[0, inf)", "0", "the step"},
    {"rank", FLAG_INT, "R", "[0, inf)", "0", "the rank (below --world)"},
    {"world", FLAG_INT, "W", "[1, inf)", "1", "ranks"},
    {"dump", FLAG_TEXT, "FILE.safetensors", NULL, NULL, "also write the batch file (docs/model.md section 7)"},
    {"timeout-ms", FLAG_INT, "MS", "[1, inf)", "5000", "wait this long for each of 2 tries"},
    {"diffusion-steps", FLAG_INT, "T", "[1, inf)", "1000", "T of the timesteps drawn for --dump"},
    {0},
};

const cli_command dl_inspect_command = {
    "inspect", "fetches one batch as a trainer would and describes it", cmd_inspect, {inspect_flags}};
