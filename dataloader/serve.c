/* serve.c - `dataloader serve`: packed rows for every trainer rank over
 * ZeroMQ.
 *
 *   dataloader serve --text TEXT_DIR --latents LATENT_DIR --tokenizer TOK.model
 *       --patch-size P [--endpoint tcp://127.0.0.1:5555] [--seq-len 256]
 *       [--rows-per-rank 8] [--seed 0] [--image-fraction 0.5]
 *       [--caption-first 0.8] [--drop-caption 0.1] [--max-caption 64]
 *       [--noise-limit on|off] [--skip-bad-shards] [--curve-key DIR | --insecure]
 *
 * One ROUTER socket answers any number of clients (dataloader_client/client.h, or
 * anything that speaks wire.h): a batch request (step, rank, world) gets rank
 * r's B rows of step s (packer.h), an info request the special ids and
 * shapes as JSON. Requests are answered one at a time in arrival order:
 * building a batch takes microseconds, and a ROUTER never blocks on a slow
 * client (its replies queue on its own pipe, or are dropped and re-asked), so
 * one slow trainer cannot stall the others. Every reply payload is sent
 * without a copy. A request with another protocol version, another
 * fingerprint or bad fields gets an error reply; a frame over 4 KiB never
 * arrives (ZeroMQ drops it and its connection). Rows do not depend on the
 * process: a restarted loader, or a second replica, serves the same rows.
 * SIGINT and SIGTERM end the loop; the exit line counts what was served.
 * Beyond loopback it speaks CURVE with --curve-key (common/zmq_keys.h), or
 * binds without it only when told --insecure. */
#include "commands.h"
#include "packer.h"
#include "sources.h"
#include "../tokenizer/spm.h"
#include "../dataloader_client/wire.h"
#include "../common/crc32c.h"
#include "../common/error.h"
#include "../common/timing.h"
#include "../common/zmq_service.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POLL_MS 200
#define MAX_FRAMES (ZSVC_MAX_ENVELOPE + 2)

typedef struct {
    const sources *s;
    packer *p;
    pack_config c;
    int B;
    char tokenizer_path[4096], latent_stats_path[4096]; /* absolute: checkpoints copy them */
    pack_plan plan;
    long requests, batches, infos, errors, lost;
} server;

static void release_free(void *data, void *hint) {
    (void)hint;
    free(data);
}

static void reply(server *sv, zmq_service *svc, const zsvc_request *req, dl_reply *h, void *payload, size_t len) {
    uint8_t head[DL_REPLY_HEADER_BYTES];
    h->version = DL_PROTOCOL;
    h->payload_bytes = len;
    h->payload_crc = crc32c(0, payload, len);
    dl_reply_encode(h, head);
    zsvc_part part = {payload, len, release_free};
    if (zsvc_send(svc, req, head, sizeof head, &part, 1)) sv->lost++;
}

static void reply_error(server *sv, zmq_service *svc, const zsvc_request *req, const dl_request *r, const char *err) {
    dl_reply h = {.status = DL_ERROR,
                  .fingerprint = packer_fingerprint(sv->p),
                  .step = r->step,
                  .rank = r->rank,
                  .world = r->world};
    sv->errors++;
    size_t len = strlen(err);
    char *copy = xmalloc(len);
    memcpy(copy, err, len);
    reply(sv, svc, req, &h, copy, len);
}

static char *info_json(const server *sv) {
    const sources *s = sv->s;
    const spm_ids *ids = &s->ids;
    char fp[32];
    snprintf(fp, sizeof fp, "%016llx", (unsigned long long)packer_fingerprint(sv->p));
    cJSON *j = cJSON_CreateObject();
    cJSON_AddNumberToObject(j, "version", DL_PROTOCOL);
    cJSON_AddStringToObject(j, "fingerprint", fp);
    cJSON_AddNumberToObject(j, "vocab_size", ids->vocab_size);
    cJSON_AddNumberToObject(j, "bos_token_id", ids->bos);
    cJSON_AddNumberToObject(j, "eos_token_id", ids->eos);
    cJSON_AddNumberToObject(j, "boi_token_id", ids->boi);
    cJSON_AddNumberToObject(j, "eoi_token_id", ids->eoi);
    cJSON_AddNumberToObject(j, "pad_token_id", ids->pad);
    cJSON_AddNumberToObject(j, "seq_len", sv->c.L);
    cJSON_AddNumberToObject(j, "rows_per_rank", sv->B);
    cJSON_AddNumberToObject(j, "patch_size", sv->c.patch);
    cJSON_AddNumberToObject(j, "latent_channels", s->C);
    cJSON_AddNumberToObject(j, "latent_h", s->h);
    cJSON_AddNumberToObject(j, "latent_w", s->w);
    cJSON_AddNumberToObject(j, "patches_per_image", packer_patches(sv->p));
    cJSON_AddNumberToObject(j, "image_fraction", sv->c.image_fraction);
    cJSON_AddNumberToObject(j, "caption_first", sv->c.caption_first);
    cJSON_AddNumberToObject(j, "drop_caption", sv->c.drop_caption);
    cJSON_AddBoolToObject(j, "noise_limit", !sv->c.no_noise_limit);
    cJSON_AddNumberToObject(j, "seed", (double)sv->c.seed);
    cJSON_AddNumberToObject(j, "text_documents", (double)s->n_docs);
    cJSON_AddNumberToObject(j, "images", (double)s->n_images);
    cJSON_AddStringToObject(j, "tokenizer_path", sv->tokenizer_path);
    if (sv->latent_stats_path[0]) cJSON_AddStringToObject(j, "latent_stats_path", sv->latent_stats_path);
    char *text = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!text) die("out of memory");
    return text;
}

/* Answers one waiting request; 0 when none was waiting. */
static int serve_one(server *sv, zmq_service *svc) {
    zmq_msg_t frames[MAX_FRAMES];
    zsvc_request req;
    if (!zsvc_recv(svc, frames, MAX_FRAMES, &req)) return 0;
    sv->requests++;
    char err[ERR_LEN];
    dl_request r;
    int body = req.n - req.nenv;
    if (req.dropped || body != 1) {
        memset(&r, 0, sizeof r);
        set_error(err, "a request is one frame after the envelope, got %d", body + req.dropped);
        reply_error(sv, svc, &req, &r, err);
    } else if (dl_request_parse(zmq_msg_data(&frames[req.nenv]), zmq_msg_size(&frames[req.nenv]), &r, err)) {
        reply_error(sv, svc, &req, &r, err);
    } else if (r.op == DL_OP_INFO) {
        char *text = info_json(sv);
        dl_reply h = {.status = DL_INFO, .fingerprint = packer_fingerprint(sv->p)};
        sv->infos++;
        reply(sv, svc, &req, &h, text, strlen(text));
    } else if (r.fingerprint && r.fingerprint != packer_fingerprint(sv->p)) {
        set_error(err, "dataset/config fingerprint %016llx differs from this loader's %016llx",
                  (unsigned long long)r.fingerprint, (unsigned long long)packer_fingerprint(sv->p));
        reply_error(sv, svc, &req, &r, err);
    } else if (((double)r.step + 1) * r.world * sv->B * sv->c.L >= 0x1p53) {
        set_error(err, "step %lld is past the last row this loader can address", (long long)r.step);
        reply_error(sv, svc, &req, &r, err);
    } else {
        int64_t row0 = r.step * r.world * sv->B + (int64_t)r.rank * sv->B;
        packer_plan(sv->p, row0, sv->B, &sv->plan);
        dl_reply h = {.status = DL_OK,
                      .fingerprint = packer_fingerprint(sv->p),
                      .step = r.step,
                      .rank = r.rank,
                      .world = r.world,
                      .B = sv->B,
                      .L = sv->c.L,
                      .n_images = sv->plan.n_images,
                      .n_docs = sv->plan.n_items,
                      .C = sv->s->C,
                      .h = sv->s->h,
                      .w = sv->s->w,
                      .patch = sv->c.patch};
        size_t off[7], len = dl_payload_layout(&h, off);
        uint8_t *payload = xmalloc(len);
        for (int k = 0; k < 7; k++) { /* zero the alignment gaps (checksummed too); fill writes the rest */
            size_t end = k < 6 ? off[k + 1] : len;
            if (end > off[k]) memset(payload + end - 8, 0, 8);
        }
        dl_batch b;
        dl_batch_view(&b, payload, &h);
        packer_fill(sv->p, &sv->plan, &b);
        sv->batches++;
        reply(sv, svc, &req, &h, payload, len);
    }
    zsvc_request_close(&req);
    return 1;
}

static int cmd_serve(const args *a) {
    char err[ERR_LEN], summary[1024];
    const char *tok_path = arg_str(a, "tokenizer");
    zsvc_auth auth; /* first: a missing key should not wait for the datasets to load */
    if (zsvc_auth_from_args(a, arg_str(a, "endpoint"), &auth, err))
        die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    pack_config c = {
        .L = (int)arg_int(a, "seq-len"),
        .patch = arg_given(a, "patch-size") ? (int)arg_int(a, "patch-size") : 0,
        .max_caption = (int)arg_int(a, "max-caption"),
        .image_fraction = arg_num(a, "image-fraction"),
        .caption_first = arg_num(a, "caption-first"),
        .drop_caption = arg_num(a, "drop-caption"),
        .seed = (uint64_t)arg_int(a, "seed"),
    };
    c.no_noise_limit = strcmp(arg_str(a, "noise-limit"), "off") == 0;
    if (c.image_fraction > 0 && c.patch == 0) die_input("%s %s: missing --patch-size", a->prog->name, a->cmd->name);
    int B = (int)arg_int(a, "rows-per-rank");
    if ((int64_t)B * c.L > (1 << 24))
        die_input("%s %s: --rows-per-rank x --seq-len over 2^24 positions", a->prog->name, a->cmd->name);
    source_options o = {.skip_bad_shards = arg_switch(a, "skip-bad-shards"), .max_caption = c.max_caption};
    spm *tok = spm_load(tok_path, err);
    if (!tok) die_input("%s", err);
    sources s;
    if (sources_open(&s, arg_str(a, "text"), arg_str(a, "latents"), tok, tok_path, &o, err)) die_input("%s", err);
    spm_free(tok);
    server sv = {.s = &s, .c = c, .B = B};
    if (!realpath(tok_path, sv.tokenizer_path)) die_input("%s: %s", tok_path, strerror(errno));
    if (arg_str(a, "latents")) {
        char stats[4096];
        snprintf(stats, sizeof stats, "%s/dataset.json", arg_str(a, "latents"));
        if (!realpath(stats, sv.latent_stats_path)) die_input("%s: %s", stats, strerror(errno));
    }
    sv.p = packer_create(&s, &c, err);
    if (!sv.p) die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    /* Every batch is a fresh buffer of about 100 kB freed by ZeroMQ's thread:
     * keep such blocks in the heap rather than mapping and trimming pages
     * for each (page faults were a tenth of a batch's time). */
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    zmq_service svc;
    if (zsvc_open(&svc, arg_str(a, "endpoint"), DL_MAX_REQUEST, &auth, err))
        die_input("%s %s: %s", a->prog->name, a->cmd->name, err);
    sources_summary(&s, summary, sizeof summary); /* after every check: bad input stays one line */
    fprintf(stderr, "%s\n", summary);
    printf("serving on %s fingerprint %016llx\n", svc.endpoint, (unsigned long long)packer_fingerprint(sv.p));
    fflush(stdout);
    double t0 = now_s();
    while (!zsvc_stopping())
        if (zsvc_wait(&svc, POLL_MS))
            while (!zsvc_stopping() && serve_one(&sv, &svc)) {} /* all that waits, one poll */
    zsvc_close(&svc);
    fprintf(stderr, "dataloader serve: %ld requests (%ld batches, %ld info, %ld errors, %ld replies lost) in %.1f s\n",
            sv.requests, sv.batches, sv.infos, sv.errors, sv.lost, now_s() - t0);
    pack_plan_free(&sv.plan);
    packer_free(sv.p);
    sources_close(&s);
    return 0;
}

static const cli_flag serve_flags[] = {
    {"text", FLAG_TEXT | FLAG_REQUIRED, "TEXT_DIR", NULL, NULL, "token shards of `dataloader tokenize`"},
    {"latents", FLAG_TEXT, "LATENT_DIR", NULL, NULL, "latent shards of `vae_service encode` (without: text rows only)"},
    {"tokenizer", FLAG_TEXT | FLAG_REQUIRED, "TOK.model", NULL, NULL, "the tokenizer the text was tokenized with"},
    {"patch-size", FLAG_INT, "P", "[1, inf)", NULL, "latent patch side (needed with images)"},
    {"endpoint", FLAG_TEXT, "tcp://HOST:PORT", NULL, "tcp://127.0.0.1:5555", "where to bind"},
    {"seq-len", FLAG_INT, "L", "[4, inf)", "256", "positions per row"},
    {"rows-per-rank", FLAG_INT, "B", "[1, inf)", "8", "rows per rank and step"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the order, the pairings and the caption drops"},
    {"image-fraction", FLAG_NUM, "F", "[0, 1)", "0.5",
     "share of the positions in image-caption documents (text fills the rest)"},
    {"caption-first", FLAG_NUM, "F", "[0, 1]", "0.8", "share of the pairs with the caption before the image"},
    {"drop-caption", FLAG_NUM, "F", "[0, 1]", "0.1", "share of the images without a caption (for guidance)"},
    {"max-caption", FLAG_INT, "N", "[1, inf)", "64", "caption tokens kept"},
    {"noise-limit", FLAG_CHOICE, "on|off", NULL, "on", "image-first images get t in 1..T/2"},
    {"skip-bad-shards", FLAG_SWITCH, NULL, NULL, NULL,
     "serve without the shards that fail their checks, instead of refusing"},
    {0},
};

const cli_command dl_serve_command = {"serve",
                                      "serves every trainer rank its packed rows of any step over ZeroMQ",
                                      cmd_serve,
                                      {serve_flags, zsvc_auth_flags}};
