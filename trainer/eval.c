/* eval.c - `trainer eval`: held-out figures of a checkpoint, as one JSON
 * object (eval.h says what each figure measures).
 *
 * Every figure is a loss the model computes on rows built here, in the
 * packer's layouts (caption first: BOS caption BOI image EOI EOS; image
 * first: BOS BOI image EOI caption EOS; text: BOS text EOS), one document per
 * row. The rows are cut into fixed batches of EVAL_ROWS in a fixed order and
 * the batches dealt to the ranks in turn, so every row is computed the same
 * way whatever the rank count; each rank fills its rows' slots of the result
 * arrays and a sum over ranks gathers them. Timesteps, noise, pairings and
 * candidates come from counter-based draws keyed by --seed and the image or
 * prompt index: two checkpoints are compared on the same work. */
#include "eval.h"
#include "diffusion.h"
#include "frechet.h"
#include "session.h"
#include "../common/atomic_file.h"
#include "../common/error.h"
#include "../common/file_read.h"
#include "../common/text_docs.h"
#include "../common/timing.h"
#include "../nn/dist.h"
#include "../vae/image_source.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_ROWS 16 /* rows per model call */
#define N_BUCKETS 4  /* timestep quarters: t <= T/4, ... */

/* ------------------------------------------------------------------ draws */

/* The generator of draw `what` for item i (order-free: a pure function of the key). */
static rng draw(uint64_t seed, uint64_t what, uint64_t i) {
    rng r;
    rng_seed(&r, seed ^ (0x9E3779B97F4A7C15ull * (what + 1)) ^ (0xD1B54A32D192ED03ull * (i + 1)));
    rng_u64(&r);
    return r;
}
enum { DRAW_TIME, DRAW_NOISE, DRAW_SHIFT, DRAW_CANDIDATES, DRAW_PROMPTS };

/* cand[0..K) for item i of n: i itself first, then K - 1 others drawn without repeats. */
static void candidates(int *cand, int K, int i, int n, uint64_t seed, uint64_t what) {
    rng r = draw(seed, what, (uint64_t)i);
    cand[0] = i;
    for (int k = 1; k < K; k++) {
        int c, dup;
        do {
            c = rng_int(&r, 0, n - 1);
            dup = 0;
            for (int q = 0; q < k; q++) dup |= cand[q] == c;
        } while (dup);
        cand[k] = c;
    }
}

/* ------------------------------------------------------------------- rows */

enum { ROW_GEN, ROW_CAP, ROW_TEXT };

/* One evaluation row: a document of one of the three layouts. */
typedef struct {
    int kind;
    const int32_t *text; /* caption or text ids (NULL: none) */
    int text_len;
    const float *x0;    /* ROW_GEN, ROW_CAP: the image's latent */
    int t;              /* ROW_GEN: the timestep */
    uint64_t noise_key; /* ROW_GEN: the noise draw's key */
} row;

typedef struct {
    row *rows;
    int n, cap;
} row_list;

static int add_row(row_list *l, row r) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        l->rows = realloc(l->rows, sizeof(row) * l->cap);
        if (!l->rows) die("out of memory");
    }
    l->rows[l->n] = r;
    return l->n++;
}

static int row_len(const row *r, int P) { return r->kind == ROW_TEXT ? r->text_len + 2 : r->text_len + P + 4; }

/* The losses of rows [a, b) into ce[], se[] (indexed like the list). */
static void run_batch(model *m, const row *rows, int a, int b, uint64_t seed, double *ce, double *se) {
    const model_config *c = &m->cfg;
    int P = cfg_patches_per_image(c), lat = c->latent_channels * c->latent_size * c->latent_size, L = 0, n_img = 0;
    for (int i = a; i < b; i++) {
        int len = row_len(&rows[i], P);
        L = len > L ? len : L;
        n_img += rows[i].kind != ROW_TEXT;
    }
    int B = b - a;
    size_t N = (size_t)B * L;
    int32_t *tok = xcalloc(N, sizeof(int32_t)), *mod = xmalloc(sizeof(int32_t) * N);
    int32_t *doc = xmalloc(sizeof(int32_t) * N), *img = xmalloc(sizeof(int32_t) * N);
    int32_t *limit = xcalloc(n_img + 1, sizeof(int32_t));
    float *x0 = xmalloc(sizeof(float) * ((size_t)n_img * lat + 1));
    int *clean = xcalloc(n_img + 1, sizeof(int));
    for (size_t q = 0; q < N; q++) {
        mod[q] = MOD_PAD;
        doc[q] = -1;
        img[q] = -1;
    }
    int k = 0;
    for (int i = a; i < b; i++) {
        const row *r = &rows[i];
        size_t at = (size_t)(i - a) * L;
        int pos = 0;
#define PUT_TOKEN(id)                                                                                                  \
    do {                                                                                                               \
        tok[at + pos] = (id);                                                                                          \
        mod[at + pos] = MOD_TOKEN;                                                                                     \
        doc[at + pos] = 0;                                                                                             \
        pos++;                                                                                                         \
    } while (0)
        PUT_TOKEN(c->bos_token_id);
        if (r->kind == ROW_TEXT) {
            for (int q = 0; q < r->text_len; q++) PUT_TOKEN(r->text[q]);
        } else {
            if (r->kind == ROW_GEN)
                for (int q = 0; q < r->text_len; q++) PUT_TOKEN(r->text[q]);
            PUT_TOKEN(c->boi_token_id);
            for (int q = 0; q < P; q++, pos++) {
                mod[at + pos] = MOD_PATCH;
                doc[at + pos] = 0;
                img[at + pos] = k;
            }
            PUT_TOKEN(c->eoi_token_id);
            if (r->kind == ROW_CAP)
                for (int q = 0; q < r->text_len; q++) PUT_TOKEN(r->text[q]);
            memcpy(x0 + (size_t)k * lat, r->x0, sizeof(float) * lat);
            clean[k++] = r->kind == ROW_CAP;
        }
        PUT_TOKEN(c->eos_token_id);
#undef PUT_TOKEN
    }
    batch bt;
    char err[ERR_LEN];
    if (batch_from_rows(&bt, c, B, L, n_img, tok, mod, doc, img, limit, x0, "eval rows", err)) die("%s", err);
    k = 0;
    for (int i = a; i < b; i++) {
        const row *r = &rows[i];
        if (r->kind == ROW_TEXT) continue;
        bt.timesteps[k] = r->kind == ROW_GEN ? r->t : 1;
        rng nr = draw(seed, DRAW_NOISE, r->noise_key);
        for (int e = 0; e < lat; e++)
            bt.noise[(size_t)k * lat + e] = r->kind == ROW_GEN ? (float)rng_normal(&nr) : 0.0f;
        k++;
    }
    plan p;
    plan_build(&p, &bt, c);
    /* An image-first row reads its image clean at t = 1, as `trainer caption` does. */
    int Pd = cfg_patch_dim(c);
    for (int q = 0; q < p.n_patch; q++)
        if (clean[p.patch_image[q]])
            diffusion_patchify(p.patch_x + (size_t)q * Pd, bt.latents + (size_t)p.patch_image[q] * lat, p.patch_k[q],
                               c);
    double *rce = xmalloc(sizeof(double) * B), *rse = xmalloc(sizeof(double) * B);
    model_row_losses(m, &p, rce, rse);
    for (int i = a; i < b; i++) {
        ce[i] = rce[i - a];
        se[i] = rse[i - a];
    }
    free(rce);
    free(rse);
    plan_free(&p);
    batch_free(&bt);
    free(tok);
    free(mod);
    free(doc);
    free(img);
    free(limit);
    free(x0);
    free(clean);
}

/* Every row's losses, batches dealt to the ranks in turn and gathered. */
static void run_rows(model *m, const row_list *l, uint64_t seed, double *ce, double *se, const char *what) {
    int nb = (l->n + EVAL_ROWS - 1) / EVAL_ROWS, rank = dist_rank(), size = dist_size();
    memset(ce, 0, sizeof(double) * (l->n + 1));
    memset(se, 0, sizeof(double) * (l->n + 1));
    double t0 = now_s(), shown = t0;
    for (int k = rank; k < nb; k += size) {
        int a = k * EVAL_ROWS, b = a + EVAL_ROWS < l->n ? a + EVAL_ROWS : l->n;
        run_batch(m, l->rows, a, b, seed, ce, se);
        if (rank == 0 && now_s() - shown > 10) {
            shown = now_s();
            fprintf(stderr, "eval: %s: %d of %d batches (%.0f s)\n", what, k + 1, nb, shown - t0);
        }
    }
    for (int a = 0; a < l->n; a += 1 << 20) { /* MPI counts are int */
        int n = l->n - a < (1 << 20) ? l->n - a : 1 << 20;
        dist_allreduce_sum_f64(ce + a, n);
        dist_allreduce_sum_f64(se + a, n);
    }
    if (rank == 0) fprintf(stderr, "eval: %s: %d rows in %.1f s\n", what, l->n, now_s() - t0);
}

/* ------------------------------------------------------------ held-out data */

typedef struct {
    int n;
    float *x0; /* [n, lat] normalized latents */
    int32_t **cap;
    int *cap_len;
} image_set;

/* The first n images of --images with their captions (at most max_cap tokens). */
static void read_images(image_set *s, session *ss, const char *spec, int n, int max_cap) {
    const model_config *c = &ss->m.cfg;
    int S = ss->io.size, lat = c->latent_channels * c->latent_size * c->latent_size;
    char err[ERR_LEN];
    image_source *src = image_source_open(spec, S, 0, 1, err);
    if (!src) die_input("--images: %s", err);
    float *rgb = xmalloc(sizeof(float) * (size_t)n * 3 * S * S);
    s->cap = xcalloc(n, sizeof(int32_t *));
    s->cap_len = xcalloc(n, sizeof(int));
    image_sample smp;
    int k = 0;
    while (k < n && image_source_next(src, &smp)) {
        memcpy(rgb + (size_t)k * 3 * S * S, smp.rgb, sizeof(float) * 3 * S * S);
        long len = session_encode(ss, "--images caption", smp.caption, 0, &s->cap[k]);
        s->cap_len[k++] = (int)(len < max_cap ? len : max_cap);
    }
    image_source_summary(src, err, sizeof err);
    image_source_close(src);
    if (k < 2) die_input("--images %s: %d usable image(s) (%s); eval needs at least 2", spec, k, err);
    s->n = k;
    s->x0 = xmalloc(sizeof(float) * (size_t)k * lat);
    image_io_encode(&ss->io, c, rgb, k, s->x0);
    free(rgb);
}

static void image_set_free(image_set *s) {
    for (int i = 0; i < s->n; i++) free(s->cap[i]);
    free(s->cap);
    free(s->cap_len);
    free(s->x0);
}

/* Documents of the .txt files of dir (common/text_docs.h: the dataloader's
 * rule), taken from the files in turn, until n non-blank documents that fit
 * the context; their token ids and bytes. */
typedef struct {
    int n;
    int32_t **ids;
    int *len;
    long bytes;
} text_set;

static void read_text(text_set *t, session *ss, const char *dir, int n) {
    char err[ERR_LEN], path[4400];
    DIR *dh = opendir(dir);
    if (!dh) die_input("--text %s: cannot open the folder", dir);
    struct dirent *e;
    char **names = NULL;
    int nf = 0;
    while ((e = readdir(dh))) {
        size_t L = strlen(e->d_name);
        if (L > 4 && strcmp(e->d_name + L - 4, ".txt") == 0 && e->d_name[0] != '.') {
            names = realloc(names, sizeof(char *) * (nf + 1));
            names[nf++] = strdup(e->d_name);
        }
    }
    closedir(dh);
    if (nf == 0) die_input("--text %s: no .txt file", dir);
    qsort(names, nf, sizeof(char *), (int (*)(const void *, const void *))strcmp);
    char **data = xcalloc(nf, sizeof(char *));
    span_list *docs = xcalloc(nf, sizeof(span_list));
    for (int f = 0; f < nf; f++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[f]);
        size_t len;
        if (!(data[f] = file_read(path, (size_t)1 << 30, &len, err))) die_input("--text %s", err);
        split_txt(data[f], len, &docs[f]);
    }
    memset(t, 0, sizeof *t);
    t->ids = xcalloc(n, sizeof(int32_t *));
    t->len = xcalloc(n, sizeof(int));
    for (size_t k = 0, live = 1; t->n < n && live; k++) { /* document k of every file in turn */
        live = 0;
        for (int f = 0; f < nf && t->n < n; f++) {
            if (k >= docs[f].n) continue;
            live = 1;
            const span *d = &docs[f].d[k];
            if (text_blank(d->text, d->len)) continue;
            int32_t *ids = NULL;
            size_t cap = 0;
            long len = spm_encode(ss->tok, d->text, d->len, &ids, &cap, err);
            if (len < 0) die_input("--text %s/%s: %s", dir, names[f], err);
            if (len + 2 > ss->context) {
                free(ids);
                continue;
            } /* longer than the context */
            t->ids[t->n] = ids;
            t->len[t->n++] = (int)len;
            t->bytes += (long)d->len;
        }
    }
    for (int f = 0; f < nf; f++) {
        free(data[f]);
        free(names[f]);
        free(docs[f].d);
    }
    free(data);
    free(docs);
    free(names);
    if (t->n == 0) die_input("--text %s: no document fits the context of %d", dir, ss->context);
}

/* ------------------------------------------------------------------ figures */

static double gain_pct(double right, double wrong) { return wrong > 0 ? 100.0 * (wrong - right) / wrong : 0.0; }

/* Top-1 and top-5 accuracy of ranking candidate 0 (the right one) among K
 * by the loss ce[base + k] (lower is better; a tie counts against it). */
static void retrieval(const double *ce, const int *base, int n, int K, double *top1, double *top5) {
    int h1 = 0, h5 = 0;
    for (int i = 0; i < n; i++) {
        int better = 0;
        for (int k = 1; k < K; k++) better += ce[base[i] + k] <= ce[base[i]];
        h1 += better == 0;
        h5 += better < 5;
    }
    *top1 = 100.0 * h1 / n;
    *top5 = 100.0 * h5 / n;
}

static char **read_prompts(const char *path, int *n) {
    char err[ERR_LEN];
    size_t len;
    char *data = file_read(path, (size_t)1 << 24, &len, err);
    if (!data) die_input("--prompts %s", err);
    char **out = NULL, *save = NULL;
    *n = 0;
    for (char *line = strtok_r(data, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ') line++;
        if (!*line || *line == '#') continue;
        out = realloc(out, sizeof(char *) * (*n + 1));
        out[(*n)++] = strdup(line);
    }
    free(data);
    if (*n < 2) die_input("--prompts %s: %d prompt(s); eval needs at least 2", path, *n);
    return out;
}

/* ------------------------------------------------------------------ command */

cJSON *eval_run(const args *a) {
    session ss;
    session_open(&ss, a);
    model *m = &ss.m;
    const model_config *c = &m->cfg;
    uint64_t seed = (uint64_t)arg_int(a, "seed");
    int n = (int)arg_int(a, "n"), draws = (int)arg_int(a, "timesteps");
    int K = (int)arg_int(a, "candidates"), T = c->diffusion_steps, P = cfg_patches_per_image(c);
    int lat = c->latent_channels * c->latent_size * c->latent_size;
    int max_cap = ss.context - P - 4;
    if (max_cap < 1)
        die_input("%s %s: the context %d cannot hold an image and a caption", a->prog->name, a->cmd->name, ss.context);
    double t_start = now_s();
    /* Every input is read first, so that bad input stops before any work. */
    const char *text_dir = arg_str(a, "text"), *prompts_path = arg_str(a, "prompts");
    text_set ts = {0};
    if (text_dir) read_text(&ts, &ss, text_dir, (int)arg_int(a, "text-docs"));
    int np = 0;
    char **prompts = prompts_path ? read_prompts(prompts_path, &np) : NULL;
    int32_t **pid = xcalloc(np + 1, sizeof(int32_t *));
    int *plen = xcalloc(np + 1, sizeof(int));
    for (int j = 0; j < np; j++) plen[j] = (int)session_encode(&ss, "--prompts", prompts[j], P + 4, &pid[j]);
    gen_options o = {.n = 1, .context = ss.context, .temperature = 1.0f, .top_p = 1.0f, .seed = seed};
    session_image_options(a, c, &o);
    image_set im;
    read_images(&im, &ss, arg_str(a, "images"), n, max_cap);
    n = im.n;
    if (K > n) K = n;
    cJSON *out = cJSON_CreateObject();
    cJSON_AddStringToObject(out, "checkpoint", ss.dir);
    cJSON_AddStringToObject(out, "weights", ss.weights);
    cJSON_AddStringToObject(out, "images_from", arg_str(a, "images"));
    cJSON_AddNumberToObject(out, "images", n);
    cJSON_AddNumberToObject(out, "seed", (double)seed);

    /* A fixed derangement: image i's "other" is i + shift (mod n), 0 < shift < n. */
    rng sr = draw(seed, DRAW_SHIFT, 0);
    int shift = rng_int(&sr, 1, n - 1);

    /* 1. Diffusion loss, caption first: own, another's and no caption, on the same t and noise. */
    row_list gen = {0};
    for (int i = 0; i < n; i++)
        for (int j = 0; j < draws; j++) {
            rng tr = draw(seed, DRAW_TIME, (uint64_t)i * draws + j);
            int t = rng_int(&tr, 1, T), o = (i + shift) % n;
            uint64_t key = (uint64_t)i * draws + j;
            add_row(&gen, (row){ROW_GEN, im.cap[i], im.cap_len[i], im.x0 + (size_t)i * lat, t, key});
            add_row(&gen, (row){ROW_GEN, im.cap[o], im.cap_len[o], im.x0 + (size_t)i * lat, t, key});
            add_row(&gen, (row){ROW_GEN, NULL, 0, im.x0 + (size_t)i * lat, t, key});
        }
    double *ce = xmalloc(sizeof(double) * (gen.n + 1)), *se = xmalloc(sizeof(double) * (gen.n + 1));
    run_rows(m, &gen, seed, ce, se, "diffusion loss");
    double sum[3] = {0}, bsum[N_BUCKETS][3] = {{0}}, norm = (double)P * cfg_patch_dim(c);
    int bcount[N_BUCKETS] = {0};
    for (int r = 0; r < gen.n; r += 3) {
        int bk = (gen.rows[r].t - 1) * N_BUCKETS / T;
        bcount[bk]++;
        for (int q = 0; q < 3; q++) {
            sum[q] += se[r + q] / norm;
            bsum[bk][q] += se[r + q] / norm;
        }
    }
    int pairs = gen.n / 3;
    cJSON *dl = cJSON_AddObjectToObject(out, "diffusion_loss");
    cJSON_AddNumberToObject(dl, "own_caption", sum[0] / pairs);
    cJSON_AddNumberToObject(dl, "other_caption", sum[1] / pairs);
    cJSON_AddNumberToObject(dl, "no_caption", sum[2] / pairs);
    cJSON_AddNumberToObject(dl, "caption_gain_pct", gain_pct(sum[0], sum[1]));
    cJSON_AddNumberToObject(dl, "timesteps_per_image", draws);
    cJSON *bl = cJSON_AddArrayToObject(dl, "buckets");
    for (int bk = 0; bk < N_BUCKETS; bk++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "t_from", bk * T / N_BUCKETS + 1);
        cJSON_AddNumberToObject(o, "t_to", (bk + 1) * T / N_BUCKETS);
        cJSON_AddNumberToObject(o, "rows", bcount[bk]);
        if (bcount[bk]) {
            cJSON_AddNumberToObject(o, "own_caption", bsum[bk][0] / bcount[bk]);
            cJSON_AddNumberToObject(o, "other_caption", bsum[bk][1] / bcount[bk]);
            cJSON_AddNumberToObject(o, "no_caption", bsum[bk][2] / bcount[bk]);
            cJSON_AddNumberToObject(o, "caption_gain_pct", gain_pct(bsum[bk][0], bsum[bk][1]));
        }
        cJSON_AddItemToArray(bl, o);
    }
    free(ce);
    free(se);

    /* 2. Captioning: each image with K candidate captions (its own first),
     *    and its own caption after another image. */
    row_list cap = {0};
    int *base = xmalloc(sizeof(int) * n), *other_row = xmalloc(sizeof(int) * n), *cand = xmalloc(sizeof(int) * K);
    for (int i = 0; i < n; i++) {
        candidates(cand, K, i, n, seed, DRAW_CANDIDATES);
        base[i] = cap.n;
        for (int k = 0; k < K; k++)
            add_row(&cap, (row){ROW_CAP, im.cap[cand[k]], im.cap_len[cand[k]], im.x0 + (size_t)i * lat, 1, 0});
        int o = (i + shift) % n;
        other_row[i] = add_row(&cap, (row){ROW_CAP, im.cap[i], im.cap_len[i], im.x0 + (size_t)o * lat, 1, 0});
    }
    ce = xmalloc(sizeof(double) * (cap.n + 1));
    se = xmalloc(sizeof(double) * (cap.n + 1));
    run_rows(m, &cap, seed, ce, se, "captioning");
    double own = 0, other = 0;
    long tokens = 0;
    for (int i = 0; i < n; i++) {
        own += ce[base[i]];
        other += ce[other_row[i]];
        tokens += im.cap_len[i] + 1;
    }
    double top1, top5;
    retrieval(ce, base, n, K, &top1, &top5);
    cJSON *cp = cJSON_AddObjectToObject(out, "captioning");
    cJSON_AddNumberToObject(cp, "own_image_loss", own / tokens);
    cJSON_AddNumberToObject(cp, "other_image_loss", other / tokens);
    cJSON_AddNumberToObject(cp, "image_gain_pct", gain_pct(own, other));
    cJSON_AddNumberToObject(cp, "candidates", K);
    cJSON_AddNumberToObject(cp, "retrieval_top1_pct", top1);
    cJSON_AddNumberToObject(cp, "retrieval_top5_pct", top5);
    cJSON_AddNumberToObject(cp, "chance_top1_pct", 100.0 / K);
    cJSON_AddNumberToObject(cp, "chance_top5_pct", 100.0 * (K < 5 ? K : 5) / K);
    free(ce);
    free(se);

    /* 3. Bits per byte on held-out text. */
    if (text_dir) {
        row_list tx = {0};
        for (int i = 0; i < ts.n; i++) add_row(&tx, (row){ROW_TEXT, ts.ids[i], ts.len[i], NULL, 0, 0});
        ce = xmalloc(sizeof(double) * (tx.n + 1));
        se = xmalloc(sizeof(double) * (tx.n + 1));
        run_rows(m, &tx, seed, ce, se, "text");
        double nats = 0;
        for (int i = 0; i < tx.n; i++) nats += ce[i];
        cJSON *t = cJSON_AddObjectToObject(out, "text");
        cJSON_AddNumberToObject(t, "documents", ts.n);
        cJSON_AddNumberToObject(t, "bytes", (double)ts.bytes);
        cJSON_AddNumberToObject(t, "text_bpb", nats / log(2.0) / (double)ts.bytes);
        free(ce);
        free(se);
        free(tx.rows);
        for (int i = 0; i < ts.n; i++) free(ts.ids[i]);
        free(ts.ids);
        free(ts.len);
    }

    /* 4. Generation from held-out prompts: latent Fréchet distance to the
     *    real images, and each generated image's own prompt among K. */
    if (prompts_path) {
        int Kp = K < np ? K : np;
        o.max_tokens = 0;
        float *made = xcalloc((size_t)np * lat, sizeof(float));
        double t0 = now_s();
        for (int j = 0; j < np; j++) {
            if (j % dist_size() != dist_rank()) continue;
            infer_rows prefix = {0};
            infer_rows_token(&prefix, 0, c->bos_token_id);
            for (int q = 0; q < plen[j]; q++) infer_rows_token(&prefix, 0, pid[j][q]);
            infer_rows_token(&prefix, 0, c->boi_token_id);
            gen_options oj = o;
            oj.seed = seed + (uint64_t)j;
            gen_sample gs;
            char err[ERR_LEN];
            if (generate(m, &oj, &prefix, &gs, NULL, NULL, err)) die_input("--prompts: %s", err);
            if (gs.n_img < 1) die("eval: prompt %d gave no image", j);
            memcpy(made + (size_t)j * lat, gs.img, sizeof(float) * lat);
            gen_sample_free(&gs);
            infer_rows_free(&prefix);
            if (dist_rank() == 0)
                fprintf(stderr, "eval: generated %d of %d images (%.0f s)\n", j + 1, np, now_s() - t0);
        }
        dist_allreduce_sum(made, (size_t)np * lat);
        row_list pr = {0};
        int *pbase = xmalloc(sizeof(int) * np), *pc = xmalloc(sizeof(int) * Kp);
        for (int j = 0; j < np; j++) {
            candidates(pc, Kp, j, np, seed, DRAW_PROMPTS);
            pbase[j] = pr.n;
            for (int k = 0; k < Kp; k++)
                add_row(&pr, (row){ROW_CAP, pid[pc[k]], plen[pc[k]], made + (size_t)j * lat, 1, 0});
        }
        ce = xmalloc(sizeof(double) * (pr.n + 1));
        se = xmalloc(sizeof(double) * (pr.n + 1));
        run_rows(m, &pr, seed, ce, se, "prompt retrieval");
        double p1, p5;
        retrieval(ce, pbase, np, Kp, &p1, &p5);
        cJSON *g = cJSON_AddObjectToObject(out, "generation");
        cJSON_AddNumberToObject(g, "prompts", np);
        cJSON_AddNumberToObject(g, "sampler_steps", o.steps);
        cJSON_AddNumberToObject(g, "cfg", o.cfg);
        cJSON_AddNumberToObject(g, "latent_fd", frechet_distance(made, np, im.x0, n, lat));
        cJSON_AddNumberToObject(g, "latent_fd_real_halves",
                                frechet_distance(im.x0, n / 2, im.x0 + (size_t)(n / 2) * lat, n - n / 2, lat));
        cJSON_AddNumberToObject(g, "prompt_retrieval_top1_pct", p1);
        cJSON_AddNumberToObject(g, "candidates", Kp);
        cJSON_AddNumberToObject(g, "chance_top1_pct", 100.0 / Kp);
        free(ce);
        free(se);
        free(pr.rows);
        free(pbase);
        free(pc);
        free(made);
    }
    for (int j = 0; j < np; j++) {
        free(pid[j]);
        free(prompts[j]);
    }
    free(pid);
    free(plen);
    free(prompts);
    cJSON_AddNumberToObject(out, "seconds", now_s() - t_start);
    free(gen.rows);
    free(cap.rows);
    free(base);
    free(other_row);
    free(cand);
    image_set_free(&im);
    session_close(&ss);
    return out;
}

static int cmd_eval(const args *a) {
    session_init_device(a);
    cJSON *out = eval_run(a);
    if (dist_rank() == 0) {
        char *text = cJSON_PrintUnformatted(out), err[ERR_LEN];
        printf("%s\n", text);
        const char *path = arg_str(a, "out");
        size_t len = strlen(text);
        text[len] = '\n';
        if (path && atomic_write(path, &(file_piece){text, len + 1}, 1, err)) die("%s", err);
        cJSON_free(text);
    }
    cJSON_Delete(out);
    return 0;
}

static const cli_flag eval_flags[] = {
    {"images", FLAG_TEXT | FLAG_REQUIRED, "GLOB", NULL, NULL,
     "held-out image-caption shards or folders (comma-separated paths or globs)"},
    {"text", FLAG_TEXT, "DIR", NULL, NULL, "held-out text documents: adds bits per byte"},
    {"prompts", FLAG_TEXT, "FILE", NULL, NULL, "one prompt a line: adds generation figures"},
    {"n", FLAG_INT, "N", "[2, inf)", "64", "images (the first N of --images)"},
    {"timesteps", FLAG_INT, "K", "[1, inf)", "4", "draws of t per image for the diffusion loss"},
    {"candidates", FLAG_INT, "K", "[2, inf)", "16", "captions ranked in retrieval"},
    {"text-docs", FLAG_INT, "N", "[1, inf)", "64", "documents of --text"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes timesteps, noise, pairings and candidates"},
    {"out", FLAG_TEXT, "EVAL.json", NULL, NULL, "also write the figures here"},
    {0},
};

const cli_command eval_command = {
    "eval",
    "held-out figures of a checkpoint: caption and image gains, retrieval, text bpb, generation",
    cmd_eval,
    {eval_flags, session_flags, image_flags, device_flags, cli_threads_flags}};
