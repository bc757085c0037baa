/* test_dataloader.c - the dataloader's packing, in process (no sockets):
 * sources opened from a generated fixture (tests/dl_fixture.h) with its bad
 * samples counted; rows well formed (documents, BOS/BOI/EOI/EOS, image runs,
 * text pieces equal to the tokenized documents, latents normalized);
 * determinism (fresh packers, any order of access, a jump to any step),
 * 2 ranks x 4 rows == 1 rank x 8 rows; no text position or image twice in an
 * epoch; the image fraction of every batch within 5 points of the target and
 * the caption-first / dropped-caption rates over many images; epoch
 * boundaries; config errors; token shard corruption named. */
#include "check.h"
#include "dl_fixture.h"
#include "proc.h"
#include "../dataloader/packer.h"
#include "../dataloader/sources.h"
#include "../dataloader/token_shard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SEQ 256
#define PATCH 2

typedef struct {
    void *payload;
    dl_batch b;
    size_t len;
} owned;

static float *raw_latents; /* [200, C, h, w]: the fixture's shards 0 and 1, as written */

/* Rank `rank` of `world` at `step`, B rows each, as the service builds it. */
static owned get(packer *p, const sources *s, int64_t step, int rank, int world, int B) {
    static pack_plan plan;
    packer_plan(p, step * world * B + (int64_t)rank * B, B, &plan);
    dl_reply h = {.step = step,
                  .rank = rank,
                  .world = world,
                  .B = B,
                  .L = SEQ,
                  .n_images = plan.n_images,
                  .n_docs = plan.n_items,
                  .C = s->C,
                  .h = s->h,
                  .w = s->w,
                  .patch = PATCH};
    size_t off[7];
    owned o = {.len = dl_payload_layout(&h, off)};
    o.payload = calloc(1, o.len);
    dl_batch_view(&o.b, o.payload, &h);
    packer_fill(p, &plan, &o.b);
    return o;
}

static int64_t usable_doc(const sources *s, int64_t id) {
    int64_t lo = 0, hi = s->n_docs - 1; /* doc_id is increasing */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (s->doc_id[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return s->doc_id[lo] == id ? lo : -1;
}

static int64_t usable_image(const sources *s, int64_t id) {
    for (int64_t i = 0; i < s->n_images; i++)
        if (s->image_id[i] == id) return i;
    return -1;
}

/* Checks every row of b against the sources; returns a reason or NULL. */
static const char *malformed(const sources *s, const dl_batch *b, int N) {
    const spm_ids *ids = &s->ids;
    int img = 0, d_global = 0;
    size_t per = (size_t)s->C * s->h * s->w;
    for (int r = 0; r < b->B; r++) {
        const int32_t *tok = b->tokens + (size_t)r * SEQ, *mod = b->modality + (size_t)r * SEQ;
        const int32_t *doc = b->doc + (size_t)r * SEQ, *im = b->image + (size_t)r * SEQ;
        int d_row = 0;
        for (int i = 0; i < SEQ;) {
            if (mod[i] == 2) {
                i++;
                continue;
            }
            if (doc[i] != d_row) return "documents are not numbered 0, 1, ... in a row";
            int end = i, patches = 0;
            while (end < SEQ && mod[end] != 2 && doc[end] == doc[i]) patches += mod[end++] == 1;
            int64_t sid = b->sample_ids[d_global++];
            if (patches) {
                int64_t u = usable_image(s, -1 - sid);
                if (u < 0) return "an image's sample id is not a usable image";
                int k = i;
                while (mod[k] != 1) k++;
                int before = k - i - 2, after = end - (k + N) - 2;
                if (patches != N || tok[i] != ids->bos || tok[end - 1] != ids->eos || tok[k - 1] != ids->boi ||
                    tok[k + N] != ids->eoi)
                    return "an image document is not BOS [caption] BOI patches EOI [caption] EOS";
                if (before > 0 && after > 0) return "a caption on both sides of an image";
                int cap = before > 0 ? before : after;
                const int32_t *c = tok + (before > 0 ? i + 1 : k + N + 1);
                if (cap && (cap != s->caption_len[u] || memcmp(c, s->caption[u], sizeof(int32_t) * cap)))
                    return "a caption differs from its sample's tokens";
                for (int q = k; q < k + N; q++)
                    if (im[q] != img) return "image indices are not 0, 1, ... in order";
                if (b->noise_limit[img] != (before == 0 && after > 0)) return "noise_limit is not 'image first'";
                const float *x = b->latents + img * per, *z = raw_latents + (-1 - sid) * per;
                for (size_t q = 0; q < per; q++) {
                    int c2 = (int)(q / (s->h * s->w));
                    if (fabs(x[q] - (z[q] - s->ch_mean[c2]) / s->ch_std[c2]) > 1e-5) return "latents not normalized";
                }
                img++;
            } else {
                int64_t u = usable_doc(s, sid);
                if (u < 0) return "a text sample id is not a usable document";
                /* Where the piece sits in BOS doc EOS: BOS only at its start. */
                int n = (int)s->doc_len[u], len = end - i;
                int32_t *want = malloc(sizeof(int32_t) * (n + 2));
                want[0] = ids->bos;
                sources_text(s, u, 0, n, want + 1);
                want[n + 1] = ids->eos;
                int found = 0;
                for (int from = 0; from + len <= n + 2 && !found; from++)
                    found = memcmp(want + from, tok + i, sizeof(int32_t) * len) == 0;
                free(want);
                if (!found) return "a text piece is not a piece of its document";
            }
            d_row++;
            i = end;
        }
    }
    if (img != b->n_images || d_global != b->n_docs) return "counts in the header differ from the rows";
    return NULL;
}

/* Image-document positions over non-pad positions. */
static double image_fraction(const dl_batch *b, long *pads) {
    long img = 0, nonpad = 0;
    *pads = 0;
    for (int r = 0; r < b->B; r++)
        for (int i = 0; i < SEQ;) {
            const int32_t *mod = b->modality + (size_t)r * SEQ, *doc = b->doc + (size_t)r * SEQ;
            if (mod[i] == 2) {
                (*pads)++;
                i++;
                continue;
            }
            int end = i, patches = 0;
            while (end < SEQ && mod[end] != 2 && doc[end] == doc[i]) patches += mod[end++] == 1;
            nonpad += end - i;
            if (patches) img += end - i;
            i = end;
        }
    return (double)img / nonpad;
}

static int same(const owned *a, const owned *b) {
    return a->len == b->len && memcmp(a->payload, b->payload, a->len) == 0;
}

int main(void) {
    fixture fx;
    char err[ERR_LEN];
    if (fixture_make(&fx, 300, 2, 100, 1, 4, 8, 8)) {
        CHECK(0, "fixture made");
        return 1;
    }
    spm *tok = spm_load(fx.tok, err);
    sources s;
    source_options so = {.skip_bad_shards = 0, .max_caption = 64};
    int opened = tok && sources_open(&s, fx.text, fx.latents, tok, fx.tok, &so, err) == 0;
    CHECK(opened, "sources open (%s)", opened ? "text and latents" : err);
    if (!opened) return 1;
    CHECK(s.n_images == 198 && s.caption_empty == 1 && s.caption_long == 1 && s.wrong_shape == 100,
          "images: 198 usable, 1 empty and 1 long caption and 100 latents of the wrong shape counted (%lld, %ld, %ld, "
          "%ld)",
          (long long)s.n_images, s.caption_empty, s.caption_long, s.wrong_shape);
    raw_latents = malloc(sizeof(float) * 200 * s.C * s.h * s.w);
    for (int k = 0; k < 2; k++) {
        char shard[256];
        st_file f;
        int64_t shape[4] = {100, s.C, s.h, s.w};
        snprintf(shard, sizeof shard, "%s/shard-%05d.safetensors", fx.latents, k);
        if (st_open(shard, &f, err) ||
            st_read_f32(&f, "mean", 4, shape, raw_latents + (size_t)k * 100 * s.C * s.h * s.w, err))
            CHECK(0, "read %s: %s", shard, err);
        st_close(&f);
    }
    CHECK(s.n_docs == 300 && s.ids.boi >= 0 && s.ids.eoi >= 0 && s.ids.bos != s.ids.eos,
          "text: 300 documents, special ids");

    pack_config c = {.L = SEQ,
                     .patch = PATCH,
                     .max_caption = 64,
                     .image_fraction = 0.5,
                     .caption_first = 0.8,
                     .drop_caption = 0.1,
                     .seed = 1234};
    packer *p = packer_create(&s, &c, err);
    CHECK(p != NULL, "packer created (%s)", p ? "" : err);
    int N = packer_patches(p);
    CHECK(N == 16, "16 patches per 8x8 latent with patch 2");

    /* Well-formed rows, the mix of every batch, and the rates. */
    const char *bad = NULL;
    double worst = 0;
    long images = 0, first = 0, dropped = 0, pads = 0, limited = 0, positions = 0;
    double lat_sum = 0, lat_sq = 0;
    long lat_n = 0;
    for (int step = 0; step < 300; step++) {
        owned o = get(p, &s, step, 0, 1, 8);
        if (!bad) bad = malformed(&s, &o.b, N);
        long pd;
        double f = image_fraction(&o.b, &pd);
        if (fabs(f - 0.5) > worst) worst = fabs(f - 0.5);
        pads += pd;
        positions += 8 * SEQ;
        for (int i = 0; i < o.b.n_images; i++) limited += o.b.noise_limit[i];
        for (size_t q = 0; q < (size_t)o.b.n_images * s.C * s.h * s.w; q++) {
            lat_sum += o.b.latents[q];
            lat_sq += (double)o.b.latents[q] * o.b.latents[q];
            lat_n++;
        }
        images += o.b.n_images;
        for (int r = 0; r < 8; r++)
            for (int i = 1; i < SEQ; i++) {
                const int32_t *t = o.b.tokens + r * SEQ, *m = o.b.modality + r * SEQ, *d = o.b.doc + r * SEQ;
                /* BOS at a document start followed by BOI: caption after or none. */
                if (m[i] == 0 && t[i] == s.ids.boi && m[i - 1] == 0 && t[i - 1] == s.ids.bos && d[i] == d[i - 1]) {
                    int e = i + N + 1;
                    if (e + 1 < SEQ && t[e + 1] == s.ids.eos && d[e + 1] == d[i]) dropped++;
                } else if (m[i] == 0 && t[i] == s.ids.boi && d[i] == d[i - 1])
                    first++;
            }
        free(o.payload);
    }
    CHECK(!bad, "300 batches of 8 rows are well formed (%s)",
          bad ? bad : "documents, markers, captions, text pieces, latents");
    CHECK(worst <= 0.05, "every batch of 8 x 256 is within 5 points of the 0.5 image fraction (worst %.4f)", worst);
    CHECK(pads < 0.03 * positions, "pad fraction under 3%% (%.4f)", (double)pads / positions);
    double rate_first = (double)first / (images - dropped), rate_drop = (double)dropped / images;
    CHECK(fabs(rate_first - 0.8) < 0.03, "caption first in 80%% of captioned images (%.3f of %ld)", rate_first,
          images - dropped);
    CHECK(fabs(rate_drop - 0.1) < 0.02, "caption dropped for 10%% of images (%.3f of %ld)", rate_drop, images);
    CHECK(limited == images - dropped - first, "noise_limit flags exactly the image-first pairs (%ld)", limited);
    double mean = lat_sum / lat_n, sd = sqrt(lat_sq / lat_n - mean * mean);
    CHECK(fabs(mean) < 0.05 && fabs(sd - 1) < 0.05, "latents normalized: mean %.4f, std %.4f", mean, sd);

    /* Another image fraction. */
    pack_config c3 = c;
    c3.image_fraction = 0.3;
    packer *p3 = packer_create(&s, &c3, err);
    worst = 0;
    for (int step = 0; step < 100; step++) {
        owned o = get(p3, &s, step, 0, 1, 8);
        long pd;
        double f = image_fraction(&o.b, &pd);
        if (fabs(f - 0.3) > worst) worst = fabs(f - 0.3);
        free(o.payload);
    }
    CHECK(worst <= 0.05, "--image-fraction 0.3: every batch within 5 points (worst %.4f)", worst);
    CHECK(packer_fingerprint(p3) != packer_fingerprint(p), "the fingerprint covers the config");
    packer_free(p3);

    /* --noise-limit off (the paper's ablation): the same rows, no image limited. */
    pack_config cn = c;
    cn.no_noise_limit = 1;
    packer *pn = packer_create(&s, &cn, err);
    long limited_off = 0, same_rows = 1;
    for (int step = 0; step < 20; step++) {
        owned a = get(pn, &s, step, 0, 1, 8), b = get(p, &s, step, 0, 1, 8);
        for (int i = 0; i < a.b.n_images; i++) limited_off += a.b.noise_limit[i];
        same_rows &= a.b.n_images == b.b.n_images && !memcmp(a.b.tokens, b.b.tokens, sizeof(int32_t) * 8 * SEQ);
        free(a.payload);
        free(b.payload);
    }
    CHECK(limited_off == 0 && same_rows, "--noise-limit off: the same rows with no image noise-limited");
    CHECK(packer_fingerprint(pn) != packer_fingerprint(p), "the fingerprint covers the noise limit");
    packer_free(pn);

    /* Determinism: fresh packers, jumps, any order; world equivalence. */
    packer *q = packer_create(&s, &c, err);
    CHECK(packer_fingerprint(q) == packer_fingerprint(p), "two packers of one config have one fingerprint");
    int ok = 1;
    static const int64_t jumps[] = {900, 3, 5000, 0, 77, 5001, 2, 123456};
    for (int k = 0; k < 8; k++) {
        packer *fresh = packer_create(&s, &c, err);
        for (int rank = 0; rank < 2; rank++) {
            owned a = get(fresh, &s, jumps[k], rank, 2, 4), b = get(q, &s, jumps[k], rank, 2, 4);
            ok &= same(&a, &b);
            free(a.payload);
            free(b.payload);
        }
        packer_free(fresh);
    }
    CHECK(ok, "a jump to any step (0 .. 123456, in any order) gives what a fresh loader gives");
    ok = 1;
    for (int64_t step = 0; step < 40 && ok; step++) {
        owned one = get(p, &s, step, 0, 1, 8), r0 = get(q, &s, step, 0, 2, 4), r1 = get(q, &s, step, 1, 2, 4);
        size_t half = (size_t)4 * SEQ;
        ok &= !memcmp(one.b.tokens, r0.b.tokens, half * 4) && !memcmp(one.b.tokens + half, r1.b.tokens, half * 4);
        ok &= !memcmp(one.b.modality + half, r1.b.modality, half * 4) && !memcmp(one.b.doc + half, r1.b.doc, half * 4);
        ok &= one.b.n_images == r0.b.n_images + r1.b.n_images && one.b.n_docs == r0.b.n_docs + r1.b.n_docs;
        size_t per = (size_t)s.C * s.h * s.w;
        ok &= !memcmp(one.b.latents + r0.b.n_images * per, r1.b.latents, r1.b.n_images * per * 4);
        ok &= !memcmp(one.b.sample_ids + r0.b.n_docs, r1.b.sample_ids, r1.b.n_docs * 8);
        for (size_t i = 0; i < half; i++)
            ok &= one.b.image[half + i] == (r1.b.image[i] < 0 ? -1 : r1.b.image[i] + r0.b.n_images);
        free(one.payload);
        free(r0.payload);
        free(r1.payload);
    }
    CHECK(ok, "2 ranks x 4 rows see exactly the global batch of 1 rank x 8 rows (40 steps)");

    /* No text position and no image twice in an epoch (so no two ranks
     * share one): walk the plans of the first rows. */
    int64_t text_epoch = 0;
    for (int64_t d = 0; d < s.n_docs; d++) text_epoch += s.doc_len[d] + 2;
    uint8_t **seen = calloc(s.n_docs, sizeof(uint8_t *));
    char *img_seen = calloc(s.n_images, 1);
    int64_t text_used = 0, img_used = 0;
    int twice = 0;
    pack_plan pl = {0};
    for (int64_t row = 0;; row++) {
        packer_plan(q, row, 1, &pl);
        int64_t img_row = 0;
        for (int k = 0; k < pl.n_items; k++)
            if (pl.items[k].image) img_row++;
        if (text_used + SEQ > text_epoch || img_used + img_row > s.n_images) break;
        for (int k = 0; k < pl.n_items; k++) {
            const pack_item *it = &pl.items[k];
            if (it->image) {
                twice |= img_seen[it->index]++;
                img_used++;
                continue;
            }
            if (!seen[it->index]) seen[it->index] = calloc(s.doc_len[it->index] + 2, 1);
            for (uint32_t x = it->from; x < it->from + it->len; x++) twice |= seen[it->index][x]++;
            text_used += it->len;
        }
    }
    CHECK(!twice && img_used > 100 && text_used > 1000,
          "within an epoch no image (%lld used) and no text position (%lld) appears twice", (long long)img_used,
          (long long)text_used);
    for (int64_t d = 0; d < s.n_docs; d++) free(seen[d]);
    free(seen);
    free(img_seen);

    /* Epoch boundaries: a later image epoch is another order, rows stay well formed. */
    packer_plan(q, 0, 40, &pl);
    int64_t first_ids[8], n_first = 0;
    for (int k = 0; k < pl.n_items && n_first < 8; k++)
        if (pl.items[k].image) first_ids[n_first++] = pl.items[k].index;
    int64_t far = 40000; /* past several epochs of both streams */
    bad = NULL;
    for (int64_t step = far; step < far + 30 && !bad; step++) {
        owned o = get(q, &s, step, 0, 1, 8);
        bad = malformed(&s, &o.b, N);
        free(o.payload);
    }
    CHECK(!bad, "rows across later epoch boundaries are well formed (%s)", bad ? bad : "");
    /* Image epoch e starts at the first row whose images passed e * n_images. */
    pack_plan pl2 = {0};
    int64_t per_row = SEQ / 2 / 40 + 1, row_e1 = (int64_t)(s.n_images / per_row) + 50; /* a row inside epoch 1 */
    packer_plan(q, row_e1, 40, &pl2);
    int differs = 0;
    for (int k = 0, m = 0; k < pl2.n_items && m < n_first; k++)
        if (pl2.items[k].image) differs |= pl2.items[k].index != first_ids[m++];
    CHECK(differs, "a later epoch draws another permutation");

    /* Finding a step costs the same at any step: a fresh loader builds steps
     * 10^6 and 2^40 (rows far past 2^40 epochs of images) as it builds step
     * 0, well formed and the same on a second asking. */
    static const int64_t far_steps[] = {1000000, (int64_t)1 << 40};
    bad = NULL;
    int same_twice = 1;
    for (int k = 0; k < 2 && !bad; k++) {
        packer *fresh = packer_create(&s, &c, err);
        owned a = get(fresh, &s, far_steps[k], 0, 1, 8), b = get(q, &s, far_steps[k], 0, 1, 8);
        bad = malformed(&s, &a.b, N);
        same_twice &= same(&a, &b);
        free(a.payload);
        free(b.payload);
        packer_free(fresh);
    }
    CHECK(!bad && same_twice, "steps 10^6 and 2^40 are well formed and the same from a fresh loader (%s)",
          bad ? bad : "");

    /* Each image's caption is dropped in exactly a tenth of its epochs,
     * evenly spaced: over the first 100 epochs of images, 10 times each. */
    long *drops = calloc(s.n_images, sizeof(long)), occurrences = 0;
    for (int64_t row = 0; occurrences < 100 * s.n_images; row++) {
        packer_plan(q, row, 1, &pl);
        for (int k = 0; k < pl.n_items && occurrences < 100 * s.n_images; k++)
            if (pl.items[k].image) {
                drops[pl.items[k].index] += pl.items[k].dropped;
                occurrences++;
            }
    }
    int evenly = 1;
    for (int64_t i = 0; i < s.n_images; i++) evenly &= drops[i] == 10;
    CHECK(evenly, "over 100 epochs every image's caption is dropped exactly 10 times (--drop-caption 0.1)");
    free(drops);
    pack_plan_free(&pl);
    pack_plan_free(&pl2);

    /* Config errors. */
    pack_config e1 = c, e2 = c;
    e1.patch = 3;
    e2.image_fraction = 0.85;
    packer *x1 = packer_create(&s, &e1, err);
    CHECK(!x1 && strstr(err, "--patch-size 3"), "a patch size that does not divide 8 is refused (%s)", err);
    packer *x2 = packer_create(&s, &e2, err);
    CHECK(!x2 && strstr(err, "--image-fraction"),
          "a fraction that leaves no room for an image document is refused (%s)", err);

    /* Token shard corruption is named. */
    char path[256], copy[256], cmd[700];
    snprintf(path, sizeof path, "%s/corpus.tok", fx.text);
    snprintf(copy, sizeof copy, "%s/bad.tok", fx.dir);
    token_shard ts;
    static const struct {
        long at;
        int byte;
        const char *want;
    } damage[] = {{0, 'X', "wrong magic"},
                  {8, 7, "version 7"},
                  {12, 9, "unknown dtype"},
                  {200, 0x55, "checksum mismatch"},
                  {-1, 0, "size"}};
    for (int k = 0; k < 5; k++) {
        snprintf(cmd, sizeof cmd, "cp %s %s", path, copy);
        if (system(cmd)) {
            CHECK(0, "copy a shard: %s", cmd);
            break;
        }
        FILE *f = fopen(copy, "r+b");
        if (damage[k].at >= 0) {
            fseek(f, damage[k].at, SEEK_SET);
            fputc(damage[k].byte, f);
        }
        fclose(f);
        if (damage[k].at < 0) truncate(copy, 100);
        int rc = token_shard_open(copy, &ts, err);
        CHECK(rc != 0 && strstr(err, damage[k].want) && strstr(err, "bad.tok"), "damaged token shard: %s (%s)",
              damage[k].want, err);
    }
    CHECK(token_shard_open(path, &ts, err) == 0 && ts.n_docs == 300, "the intact shard opens");
    token_shard_close(&ts);

    packer_free(p);
    packer_free(q);
    sources_close(&s);
    spm_free(tok);
    free(raw_latents);
    CHECK(remove_tree(fx.dir) == 0, "temporary folder removed");
    return CHECK_DONE();
}
