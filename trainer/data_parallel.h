/* data_parallel.h - data-parallel training over nn/dist.h.
 *
 * Every rank runs forward and backward on its own rows; the loss is already
 * normalized by the step's global counts, so the step's gradient is the sum
 * over ranks. Buckets (one per layer, then the embeddings and heads) start
 * reducing as soon as backward has finished them (model.h's grad_ready), so
 * communication overlaps the rest of backward.
 *
 * ZeRO-1 (the default with more than one rank): rank r owns the contiguous
 * part [off_r, off_r + n_r) of the flat parameters and keeps Adam moments for
 * that part only. Buckets are reduce-scattered, so each rank receives the
 * summed gradient of its part alone; it updates its part, and the parts are
 * all-gathered into every rank's weights. Without ZeRO, buckets are
 * all-reduced and every rank updates all parameters. */
#ifndef TRAINER_DATA_PARALLEL_H
#define TRAINER_DATA_PARALLEL_H

#include "model.h"
#include "../nn/optim.h"

typedef struct {
    int rank, world, zero;
    int overlap;                /* 1: buckets start during backward; 0: all after it (to measure) */
    double wait_s;              /* time spent waiting for the reductions, summed over steps */
    size_t *part_off, *part_n;  /* [world]: every rank's part */
    int *counts;                /* [world]: scratch for one bucket */
    float *part_grad;           /* ZeRO: this rank's part of the summed gradient */
    model *m;
} data_parallel;

void dp_init(data_parallel *dp, model *m, int zero, int overlap);
void dp_free(data_parallel *dp);
/* The optimizer of this rank: its part with ZeRO, else everything. */
void dp_optimizer(const data_parallel *dp, optimizer *o, optim_config cfg);
/* Call before the step's last backward: its buckets reduce as they finish. */
void dp_start_reduction(data_parallel *dp);
/* After that backward: waits for the buckets; returns the global gradient norm. */
double dp_finish_reduction(data_parallel *dp);
/* Clips and applies the update, then shares the updated parts. Returns the lr. */
float dp_update(data_parallel *dp, optimizer *o, double gnorm);

#endif
