/* data_parallel.h - data-parallel training of one parameter set over
 * dist.h: gradient buckets reduced while backward runs, ZeRO-1 parts, the
 * global gradient norm and the update. Both training loops use it (the
 * Transformer's, trainer/train.c, and the VAE's, vae_service/train.c).
 *
 * Every rank runs forward and backward on its own rows, with the loss
 * already normalized by the step's global counts, so the step's gradient is
 * the sum over ranks. A backward that reports finished buckets (a
 * grad_hook, params.h) lets each bucket start reducing at once, so
 * communication overlaps the rest of backward; one that does not is reduced
 * as one bucket after it.
 *
 * ZeRO-1 (the default with more than one rank): rank r owns the contiguous
 * part [off_r, off_r + n_r) of the flat parameters and keeps Adam moments for
 * that part only. Buckets are reduce-scattered, so each rank receives the
 * summed gradient of its part alone; it updates its part, and the parts are
 * all-gathered into every rank's weights. Without ZeRO, buckets are
 * all-reduced and every rank updates all parameters. */
#ifndef NN_DATA_PARALLEL_H
#define NN_DATA_PARALLEL_H

#include "optim.h"
#include "params.h"

typedef struct {
    int rank, world, zero;
    int overlap;               /* 1: buckets start during backward; 0: all after it (to measure) */
    double wait_s;             /* time spent waiting for the reductions, summed over steps */
    size_t *part_off, *part_n; /* [world]: every rank's part */
    int *counts;               /* [world]: scratch for one bucket */
    float *part_grad;          /* ZeRO: this rank's part of the summed gradient */
    param_set *ps;             /* the weights and gradients it works on */
    grad_hook *hook;           /* the backward's, while a reduction runs */
} data_parallel;

void dp_init(data_parallel *dp, param_set *ps, int zero, int overlap);
void dp_free(data_parallel *dp);
/* The optimizer of this rank: its part with ZeRO, else everything. */
void dp_optimizer(const data_parallel *dp, optimizer *o, optim_config cfg);
/* Call before the step's last backward. hook (may be NULL: a backward that
 * reports no buckets) is set so that its buckets reduce as they finish. */
void dp_start_reduction(data_parallel *dp, grad_hook *hook);
/* After that backward: reduces what is left, waits for the buckets, clears
 * the hook; returns the global gradient norm. */
double dp_finish_reduction(data_parallel *dp);
/* Clips and applies the update, then shares the updated parts. Returns the lr. */
float dp_update(data_parallel *dp, optimizer *o, double gnorm);

#endif
