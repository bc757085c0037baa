/* step_feed.h - a training run's steps of input, each prepared on a host
 * thread while the step before it runs: its micro-batches from the row
 * source (rows.h), their noise, their plans (plan.h) and counts. A GPU then
 * no longer idles while the host builds the next plan (29 ms a step for the
 * 0.16B batch of 8 x 2048 positions on this VM). Where the model's kernels
 * run on the CPU's cores themselves, a thread beside them slowed the step
 * (it takes a core from an OpenMP team, whose every barrier then waits): there
 * each step is prepared in turn when it is wanted. The plans are the same
 * bits either way: each step's noise depends on (seed, step, row) only.
 *
 * Ahead, the row source is used by the feed's threads alone from
 * step_feed_start to step_feed_stop (one at a time; rows_loader_info, which
 * reads what was fixed at open, stays usable). */
#ifndef TRAINER_STEP_FEED_H
#define TRAINER_STEP_FEED_H

#include "model.h"
#include "plan.h"
#include "rows.h"

#include <stdint.h>

typedef struct {
    plan *plans;       /* [accum], one per micro-batch */
    int64_t counts[2]; /* this rank's LM targets and noised latent elements */
    double flops;      /* model_step_flops, summed over the micro-batches */
    double loader_s;   /* time rows_next waited for the loader */
} step_input;

typedef struct step_feed step_feed;

/* The input of steps [first, end): micro-batch j of a step holds global
 * rows from (rank * accum + j) * B, noised with (seed, step, row)
 * (batch_draw_noise). ahead: step `first` is started on a host thread now,
 * and each next one when its predecessor is taken; else each is prepared
 * when it is taken. */
step_feed *step_feed_start(row_source *rows, const model *m, int accum, int B, unsigned long long seed, int rank,
                           long first, long end, int ahead);
/* The next step's input (stall_s: how long it was waited for, or taken to
 * prepare), and, ahead, starts preparing the one after unless it is `end`.
 * Fails with the row source's message (the run stops there). */
int step_feed_next(step_feed *f, step_input *in, double *stall_s, char *err);
void step_input_free(step_input *in, int accum);
/* Waits for a step in preparation and drops it. */
void step_feed_stop(step_feed *f);

#endif
