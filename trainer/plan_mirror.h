/* plan_mirror.h - a plan (plan.h) copied into backend buffers, for
 * backends that do not work in host memory: the index arrays as int32, the
 * RoPE tables, the noise targets and the timestep features' float32, and the
 * noised patches (a GEMM input) as an activation buffer. */
#ifndef TRAINER_PLAN_MIRROR_H
#define TRAINER_PLAN_MIRROR_H

#include "plan.h"

typedef struct plan_mirror plan_mirror;

/* Buffers for plans of up to N positions, n_patch patches and n_images images. */
plan_mirror *plan_mirror_create(int N, int n_patch, int n_images, const model_config *c);
/* Copies p in; returns a plan with p's counts and the mirror's buffers
 * (valid until the next upload). p must fit the capacities. */
const plan *plan_mirror_upload(plan_mirror *pm, const plan *p);
void plan_mirror_free(plan_mirror *pm);

#endif
