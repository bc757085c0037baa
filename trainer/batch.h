/* batch.h - a packed training batch (docs/model.md section 7).
 *
 * A batch is what a batch file holds: B rows of L positions, each with a
 * token, a modality (0 token, 1 patch, 2 pad), a document number and, for
 * patches, the index of its image in `latents` (plan.h derives from it what
 * the model runs on). */
#ifndef TRAINER_BATCH_H
#define TRAINER_BATCH_H

#include "../common/config.h"
#include "../common/rng.h"

#include <stdint.h>

enum { MOD_TOKEN = 0, MOD_PATCH = 1, MOD_PAD = 2 };

typedef struct {
    int B, L, n_images;
    int32_t *tokens, *modality, *doc, *image; /* [B*L] each */
    float *latents, *noise;                   /* [n_images, C, h, w] */
    int32_t *timesteps;                       /* [n_images], 1..T */
    int32_t *noise_limit;                     /* [n_images]: 1 = image first, t in 1..T/2 */
} batch;

/* Reads and validates a batch file against the config: dtypes, shapes, token
 * ids in range, each image one contiguous run of exactly patches-per-image
 * positions inside one document, timesteps in 1..T. Errors name the file and
 * the tensor (and the row and position where it matters). */
int batch_load(const char *path, const model_config *c, batch *b, char *err);
int batch_save(const char *path, const model_config *c, const batch *b, char *err);
void batch_free(batch *b);

/* A synthetic packed batch for benchmarks and the quickstart: rows of
 * image-caption pairs (both orders) and text documents, about half of the
 * positions in image patches, pads at row ends; random tokens and latents. */
void batch_generate(batch *b, const model_config *c, int B, int L, rng *r);

/* A batch of B rows of L positions from arrays laid out as a batch's (the
 * dataloader's rows): copied, then validated as batch_load does (errors name
 * `what`). Timesteps and noise are left for batch_draw_noise. */
int batch_from_rows(batch *b, const model_config *c, int B, int L, int n_images, const int32_t *tokens,
                    const int32_t *modality, const int32_t *doc, const int32_t *image, const int32_t *noise_limit,
                    const float *latents, const char *what, char *err);

/* dst = rows [row0, row0 + rows) of src, its images renumbered in order of
 * appearance (a rank's or a micro-batch's share of a global batch). */
void batch_slice(batch *dst, const batch *src, const model_config *c, int row0, int rows);

/* Draws every image's timestep (1..T, or 1..T/2 where noise_limit is set)
 * and noise from a counter-based generator keyed by (seed, step, global row,
 * image within the row), where row r of b is global row first_row + r. The
 * draws are a pure function of the key, so a run gives the same noise on any
 * number of ranks or accumulation steps. */
void batch_draw_noise(batch *b, const model_config *c, uint64_t seed, long step, long first_row);

#endif
