/* packer.c - rows from prefix sums of document lengths (packer.h). */
#include "packer.h"
#include "../common/error.h"
#include "../common/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_TEXT_PERM = 1, TAG_IMAGE_PERM, TAG_DROP, TAG_ORDER };

/* One epoch of a stream: its permutation and the prefix sums of its
 * document lengths in that order. A few are kept, least recently used out:
 * a batch may straddle an epoch boundary, and ranks that run apart may ask
 * for steps in different epochs. */
#define CACHED_EPOCHS 8

typedef struct {
    int64_t epoch, used;
    int64_t *perm, *prefix; /* [n], [n + 1] */
} epoch_cache;

struct packer {
    const sources *s;
    pack_config c;
    int N;              /* patch positions per image */
    int64_t text_epoch; /* text stream positions per epoch */
    epoch_cache text[CACHED_EPOCHS], img[CACHED_EPOCHS];
    int64_t uses;       /* the clock of the caches' LRU */
    double *phase;      /* [n_images]: where each image's evenly spaced caption drops start */
    int64_t img_full;   /* image stream positions of an epoch if no caption were dropped */
    int64_t captions;   /* caption positions of an epoch, none dropped */
    int64_t epoch_at, epoch_start[2]; /* the last epoch found: its start and the next one's */
    uint64_t fingerprint;
};

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A counter-based draw: the same (seed, tag, epoch, index) gives the same
 * bits in any process, in any order of calls. */
static uint64_t draw(uint64_t seed, uint64_t tag, int64_t epoch, int64_t index) {
    return mix(mix(mix(seed + tag * 0x9E3779B97F4A7C15ull) + (uint64_t)epoch) + (uint64_t)index);
}

static double unit(uint64_t bits) { return (bits >> 11) * 0x1.0p-53; }

/* Image i's caption is dropped in a fraction drop_caption of its epochs,
 * evenly spaced from a random phase: floor(E d + phase_i) times in epochs
 * [0, E). A closed form, where a draw per epoch would leave the image
 * stream's epoch starts a sum over every epoch before (see epoch_start). */
static int64_t drops_before(const packer *p, int64_t E, int64_t i) {
    return (int64_t)floor((double)E * p->c.drop_caption + p->phase[i]);
}

static int dropped(const packer *p, int64_t e, int64_t i) { return drops_before(p, e + 1, i) > drops_before(p, e, i); }

static int caption_first(const packer *p, int64_t e, int64_t i) {
    return unit(draw(p->c.seed, TAG_ORDER, e, i)) < p->c.caption_first;
}

static int64_t image_doc_len(const packer *p, int64_t e, int64_t i) {
    return p->N + 4 + (dropped(p, e, i) ? 0 : p->s->caption_len[i]);
}

static void permute(int64_t *perm, int64_t n, uint64_t seed, uint64_t tag, int64_t e) {
    rng r;
    rng_seed(&r, draw(seed, tag, e, -1));
    for (int64_t k = 0; k < n; k++) perm[k] = k;
    for (int64_t k = n - 1; k > 0; k--) {
        int64_t j = (int64_t)(rng_u64(&r) % (uint64_t)(k + 1)), t = perm[k];
        perm[k] = perm[j];
        perm[j] = t;
    }
}

/* The cached epoch e, or the least recently used slot (epoch set to e, to fill). */
static epoch_cache *lookup(packer *p, epoch_cache *cache, int64_t n, int64_t e, int *hit) {
    epoch_cache *old = &cache[0];
    for (int k = 0; k < CACHED_EPOCHS; k++) {
        if (cache[k].epoch == e) {
            cache[k].used = ++p->uses;
            *hit = 1;
            return &cache[k];
        }
        if (cache[k].used < old->used) old = &cache[k];
    }
    old->epoch = e;
    old->used = ++p->uses;
    *hit = 0;
    if (!old->perm) {
        old->perm = xmalloc(sizeof(int64_t) * (n + 1));
        old->prefix = xmalloc(sizeof(int64_t) * (n + 1));
    }
    return old;
}

/* Epoch e of the image stream (image = 1) or the text stream. */
static const epoch_cache *epoch_of(packer *p, int image, int64_t e) {
    int64_t n = image ? p->s->n_images : p->s->n_docs;
    int hit;
    epoch_cache *c = lookup(p, image ? p->img : p->text, n, e, &hit);
    if (hit) return c;
    permute(c->perm, n, p->c.seed, image ? TAG_IMAGE_PERM : TAG_TEXT_PERM, e);
    c->prefix[0] = 0;
    for (int64_t k = 0; k < n; k++)
        c->prefix[k + 1] = c->prefix[k] + (image ? image_doc_len(p, e, c->perm[k]) : p->s->doc_len[c->perm[k]] + 2);
    return c;
}

/* Image stream positions before epoch E: E full epochs less every caption
 * dropped in them. One pass over the images, whatever E is. */
static int64_t epoch_start(const packer *p, int64_t E) {
    int64_t dropped_len = 0;
    for (int64_t i = 0; i < p->s->n_images; i++) dropped_len += p->s->caption_len[i] * drops_before(p, E, i);
    return E * p->img_full - dropped_len;
}

/* The epoch of the image stream that holds position T. An epoch's length
 * is within the captions' total of its mean, so the mean's estimate is off
 * by an epoch or two at most; consecutive rows ask for the same epoch, which
 * is kept. */
static int64_t epoch_holding(packer *p, int64_t T) {
    if (p->epoch_at >= 0 && p->epoch_start[0] <= T && T < p->epoch_start[1]) return p->epoch_at;
    double mean = (double)p->img_full - p->c.drop_caption * (double)p->captions;
    int64_t E = (int64_t)((double)T / mean);
    while (E > 0 && epoch_start(p, E) > T) E--;
    while (epoch_start(p, E + 1) <= T) E++;
    p->epoch_at = E;
    p->epoch_start[0] = epoch_start(p, E);
    p->epoch_start[1] = epoch_start(p, E + 1);
    return E;
}

/* Largest k in [0, n] with a[k] <= x (a increasing, a[0] <= x). */
static int64_t last_at_most(const int64_t *a, int64_t n, int64_t x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (a[mid] <= x)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* a = max { j : S(j) <= T } and S(a), for the image stream. */
static void images_before(packer *p, int64_t T, int64_t *a, int64_t *S) {
    if (p->s->n_images == 0 || p->c.image_fraction == 0) {
        *a = 0;
        *S = 0;
        return;
    }
    int64_t e = epoch_holding(p, T);
    const epoch_cache *c = epoch_of(p, 1, e);
    int64_t k = last_at_most(c->prefix, p->s->n_images, T - p->epoch_start[0]);
    *a = e * p->s->n_images + k;
    *S = p->epoch_start[0] + c->prefix[k];
}

static int64_t target(const packer *p, int64_t row) {
    return (int64_t)floor((double)row * p->c.image_fraction * p->c.L);
}

packer *packer_create(const sources *s, const pack_config *c, char *err) {
    if (c->L < 4) {
        set_error(err, "--seq-len %d: a row needs at least 4 positions", c->L);
        return NULL;
    }
    if (!(c->image_fraction >= 0 && c->image_fraction < 1) || !(c->caption_first >= 0 && c->caption_first <= 1) ||
        !(c->drop_caption >= 0 && c->drop_caption <= 1)) {
        set_error(err, "--image-fraction must be in [0, 1), --caption-first and --drop-caption in [0, 1]");
        return NULL;
    }
    packer *p = xcalloc(1, sizeof *p);
    p->s = s;
    p->c = *c;
    if (c->image_fraction > 0) {
        if (s->n_images == 0) {
            set_error(err, "--image-fraction %g: the latent dataset has no usable image", c->image_fraction);
            goto fail;
        }
        if (c->patch < 1 || s->h % c->patch || s->w % c->patch) {
            set_error(err, "--patch-size %d does not divide the latents' %d x %d", c->patch, s->h, s->w);
            goto fail;
        }
        p->N = (s->h / c->patch) * (s->w / c->patch);
        int longest = 0;
        for (int64_t i = 0; i < s->n_images; i++)
            if (s->caption_len[i] > longest) longest = s->caption_len[i];
        int doc = p->N + 4 + longest;
        double q = c->image_fraction * c->L;
        if (q + doc > c->L) {
            set_error(err,
                      "--image-fraction %g with --seq-len %d: image documents take up to %d positions, so "
                      "the fraction can be at most %.3f (or lower --max-caption)",
                      c->image_fraction, c->L, doc, (double)(c->L - doc) / c->L);
            goto fail;
        }
    }
    for (int k = 0; k < CACHED_EPOCHS; k++) p->text[k].epoch = p->img[k].epoch = -1; /* allocated when first used */
    for (int64_t d = 0; d < s->n_docs; d++) p->text_epoch += s->doc_len[d] + 2;
    p->phase = xcalloc(s->n_images ? s->n_images : 1, sizeof(double));
    for (int64_t i = 0; i < s->n_images; i++) {
        p->phase[i] = unit(draw(c->seed, TAG_DROP, 0, i));
        p->img_full += p->N + 4 + s->caption_len[i];
        p->captions += s->caption_len[i];
    }
    p->epoch_at = -1;
    /* The layout's version: rows of another layout are other rows. */
    static const uint32_t layout = 2;
    uint64_t h = fnv1a(s->fingerprint, &layout, sizeof layout);
    h = fnv1a(h, &c->L, sizeof c->L);
    h = fnv1a(h, &c->patch, sizeof c->patch);
    h = fnv1a(h, &c->max_caption, sizeof c->max_caption);
    h = fnv1a(h, &c->image_fraction, sizeof(double));
    h = fnv1a(h, &c->caption_first, sizeof(double));
    h = fnv1a(h, &c->drop_caption, sizeof(double));
    h = fnv1a(h, &c->no_noise_limit, sizeof c->no_noise_limit);
    h = fnv1a(h, &c->seed, sizeof c->seed);
    p->fingerprint = h ? h : 1; /* 0 means "any" on the wire */
    return p;
fail:
    free(p);
    return NULL;
}

void packer_free(packer *p) {
    if (!p) return;
    for (int k = 0; k < CACHED_EPOCHS; k++) {
        free(p->text[k].perm);
        free(p->text[k].prefix);
        free(p->img[k].perm);
        free(p->img[k].prefix);
    }
    free(p->phase);
    free(p);
}

uint64_t packer_fingerprint(const packer *p) { return p->fingerprint; }
int packer_patches(const packer *p) { return p->N; }

static pack_item *add_item(pack_plan *pl) {
    if (pl->n_items == pl->cap) {
        pl->cap = pl->cap * 2 + 64;
        pl->items = realloc(pl->items, sizeof(pack_item) * pl->cap);
        if (!pl->items) die("out of memory");
    }
    return &pl->items[pl->n_items++];
}

void packer_plan(packer *p, int64_t row0, int n, pack_plan *pl) {
    pl->rows = n;
    pl->n_items = pl->n_images = 0;
    pl->row_items = realloc(pl->row_items, sizeof(int) * (n + 1));
    if (!pl->row_items) die("out of memory");
    int64_t a0, S0, a1, S1, L = p->c.L, n_img = p->s->n_images;
    images_before(p, target(p, row0), &a0, &S0);
    for (int r = 0; r < n; r++) {
        int64_t row = row0 + r;
        images_before(p, target(p, row + 1), &a1, &S1);
        pl->row_items[r] = pl->n_items;
        for (int64_t j = a0; j < a1; j++) {
            int64_t e = j / n_img, i = epoch_of(p, 1, e)->perm[j % n_img];
            pack_item *it = add_item(pl);
            *it = (pack_item){1, i, 0, (uint32_t)image_doc_len(p, e, i), caption_first(p, e, i), dropped(p, e, i)};
            pl->n_images++;
        }
        /* Text positions before this row: every row's L minus its images. */
        int64_t x = row * L - S0, count = L - (S1 - S0);
        while (count > 0) {
            int64_t e = x / p->text_epoch, off = x % p->text_epoch;
            const epoch_cache *c = epoch_of(p, 0, e);
            int64_t k = last_at_most(c->prefix, p->s->n_docs - 1, off), d = c->perm[k];
            int64_t from = off - c->prefix[k], take = (int64_t)p->s->doc_len[d] + 2 - from;
            if (take > count) take = count;
            *add_item(pl) = (pack_item){0, d, (uint32_t)from, (uint32_t)take, 0, 0};
            x += take;
            count -= take;
        }
        a0 = a1;
        S0 = S1;
    }
    pl->row_items[n] = pl->n_items;
}

void pack_plan_free(pack_plan *pl) {
    free(pl->row_items);
    free(pl->items);
    memset(pl, 0, sizeof *pl);
}

void packer_fill(const packer *p, const pack_plan *pl, dl_batch *b) {
    const sources *s = p->s;
    const spm_ids *ids = &s->ids;
    int L = p->c.L, N = p->N, filler = ids->pad >= 0 ? ids->pad : 0;
    size_t per = (size_t)s->C * s->h * s->w;
    int img = 0;
    for (int r = 0; r < pl->rows; r++) {
        int32_t *tok = b->tokens + (size_t)r * L, *mod = b->modality + (size_t)r * L;
        int32_t *doc = b->doc + (size_t)r * L, *im = b->image + (size_t)r * L;
        int at = 0;
        for (int k = pl->row_items[r]; k < pl->row_items[r + 1]; k++) {
            const pack_item *it = &pl->items[k];
            int d = k - pl->row_items[r], len = (int)it->len;
            for (int i = at; i < at + len; i++) {
                doc[i] = d;
                mod[i] = 0;
                im[i] = -1;
            }
            if (!it->image) {
                b->sample_ids[k] = s->doc_id[it->index];
                uint32_t n = s->doc_len[it->index], end = it->from + it->len; /* positions: BOS, n tokens, EOS */
                uint32_t t0 = it->from > 0 ? it->from - 1 : 0, t1 = end - 1 < n ? end - 1 : n;
                int32_t *dst = tok + at;
                if (it->from == 0) *dst++ = ids->bos;
                if (t1 > t0) sources_text(s, it->index, t0, t1 - t0, dst);
                if (end == n + 2) tok[at + it->len - 1] = ids->eos;
                at += (int)it->len;
                continue;
            }
            b->sample_ids[k] = -1 - s->image_id[it->index];
            int cap = it->dropped ? 0 : s->caption_len[it->index];
            const int32_t *caption = s->caption[it->index];
            tok[at++] = ids->bos;
            if (it->caption_first) {
                memcpy(tok + at, caption, sizeof(int32_t) * cap);
                at += cap;
            }
            tok[at++] = ids->boi;
            for (int k2 = 0; k2 < N; k2++, at++) {
                tok[at] = filler;
                mod[at] = 1;
                im[at] = img;
            }
            tok[at++] = ids->eoi;
            if (!it->caption_first) {
                memcpy(tok + at, caption, sizeof(int32_t) * cap);
                at += cap;
            }
            tok[at++] = ids->eos;
            b->noise_limit[img] = !p->c.no_noise_limit && !it->caption_first && !it->dropped;
            memcpy(b->latents + (size_t)img * per, s->x0 + (size_t)it->index * per, sizeof(float) * per);
            img++;
        }
        for (; at < L; at++) {
            tok[at] = filler;
            mod[at] = 2;
            doc[at] = -1;
            im[at] = -1;
        }
    }
}
