/* packer.h - the rows: which text and images go where, as a pure function of
 * the row's global index, the config and the datasets.
 *
 * Two endless streams are cut into rows. The image stream is the image-
 * caption documents in a seeded permutation per epoch (epoch e of the stream
 * is permutation (seed, e) of every usable image); each occurrence draws,
 * from (seed, epoch, image), whether its caption comes first, and drops it
 * in an evenly spaced drop_caption of the image's epochs (packer.c), so
 * that an epoch's start is a closed form: any step is found in one pass
 * over the images. The text stream is `BOS doc EOS` of every usable document in
 * permutation (seed, e), back to back. Let S(j) be the positions of the
 * first j image documents and q = image_fraction * L. Row r holds
 *   - image documents [a(r), a(r+1)), a(r) = max { j : S(j) <= floor(q r) },
 *   - then text stream positions [r L - S(a(r)), (r + 1) L - S(a(r+1))),
 *     each piece of a document its own document in the row,
 * so a row is always full (no pads), any window of rows holds within one
 * image document of q positions per row, and a row's contents follow from
 * prefix sums of document lengths alone: no earlier row is ever built.
 * Every image and text position appears once per epoch of its stream, and
 * each row belongs to one rank, so ranks never share a sample in an epoch.
 *
 * The global batch of step s is rows [s G, (s + 1) G), G = world x B; rank
 * r takes rows s G + r B .. s G + r B + B - 1. */
#ifndef DATALOADER_PACKER_H
#define DATALOADER_PACKER_H

#include "sources.h"
#include "../dataloader_client/wire.h"

#include <stdint.h>

typedef struct {
    int L, patch, max_caption;
    double image_fraction, caption_first, drop_caption;
    int no_noise_limit; /* 0: image-first pairs draw t in 1..T/2 (the paper's);
                                  1: in 1..T like the others (its ablation) */
    uint64_t seed;
} pack_config;

typedef struct {
    int image;          /* 1: image-caption document, 0: text piece */
    int64_t index;      /* usable image or text document */
    uint32_t from, len; /* positions within the document */
    int caption_first, dropped;
} pack_item;

/* The items of some consecutive rows, and the counts of their batch. */
typedef struct {
    int rows;
    int *row_items; /* [rows + 1]: row i is items [row_items[i], row_items[i+1]) */
    pack_item *items;
    int n_items, cap, n_images;
} pack_plan;

typedef struct packer packer;

/* Checks the config against the data (patch size divides h and w, an image
 * document fits a row, image_fraction leaves room for the longest one). */
packer *packer_create(const sources *s, const pack_config *c, char *err);
void packer_free(packer *p);

/* Dataset and config together, as clients pin them. */
uint64_t packer_fingerprint(const packer *p);
int packer_patches(const packer *p); /* N = (h/p)(w/p) */

/* Plans rows [row0, row0 + n). Not thread-safe: epoch caches. */
void packer_plan(packer *p, int64_t row0, int n, pack_plan *out);
void pack_plan_free(pack_plan *pl);

/* Writes the planned rows into b, whose arrays hold B = pl->rows rows of L,
 * pl->n_images latents and pl->n_items sample ids. */
void packer_fill(const packer *p, const pack_plan *pl, dl_batch *b);

#endif
