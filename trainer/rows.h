/* rows.h - where a trainer rank's rows come from: the dataloader service
 * (dataloader_client/client.h) or, without one, a generated set (benchmarks, tests,
 * the quickstart).
 *
 * A step's global batch is world x accum x B rows. Micro-batch j of rank r is
 * what the loader serves to rank r*accum + j of a world of world*accum, i.e.
 * global rows (r*accum + j)*B ...: so ranks and accumulation steps split the
 * same global batch whichever way (the equivalence tests rely on it). */
#ifndef TRAINER_ROWS_H
#define TRAINER_ROWS_H

#include "batch.h"

#include <cjson/cJSON.h>

typedef struct row_source row_source;

/* Rows of the loader at `endpoint` (comma-separated replicas allowed),
 * starting at first_step. Loads the model config from config_path, taking
 * what it leaves out from the loader (vocabulary and special token ids,
 * latent channels and size, patch size) and refusing what disagrees; B and L
 * are the loader's rows per rank and sequence length. key: the file of the
 * loader's public key (CURVE), or NULL. */
row_source *rows_open_loader(const char *endpoint, const char *key, const char *config_path, int accum, long first_step,
                             model_config *c, int *B, int *L, char *err);
/* A generated global batch (seed), the same every step. */
row_source *rows_open_generated(const model_config *c, int accum, int B, int L, unsigned long long seed);
void rows_close(row_source *s);
/* The loader's info (tokenizer and latent statistics paths, fingerprint,
 * packing settings); NULL for generated rows. */
const cJSON *rows_loader_info(const row_source *s);

/* The next step's accum micro-batches of this rank (valid until the next
 * call; their noise is still to be drawn). wait_s: time spent waiting for
 * the loader. */
int rows_next(row_source *s, batch **micro, double *wait_s, char *err);

#endif
