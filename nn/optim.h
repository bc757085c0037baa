/* optim.h - AdamW over a param_set, with global-norm gradient clipping and
 * the learning-rate schedule (linear warmup, then cosine decay to a floor). */
#ifndef NN_OPTIM_H
#define NN_OPTIM_H

#include "params.h"

typedef struct {
    float lr;                   /* peak learning rate */
    int warmup_steps, total_steps;
    float min_lr_ratio;         /* 0.1: decay to 10% of the peak */
    float beta1, beta2, eps, weight_decay, clip_norm;
} optim_config;

/* beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, clip 1.0, floor 10%. */
optim_config optim_defaults(float lr, int warmup_steps, int total_steps);

typedef struct {
    optim_config cfg;
    long step;                  /* optimizer steps taken */
    float *m, *v;               /* moments, laid out as the parameters */
} optimizer;

void optim_create(optimizer *o, const param_set *ps, optim_config cfg);
void optim_free(optimizer *o);

/* Learning rate for step s (0-based). */
float optim_lr(const optim_config *c, long s);

/* Global L2 norm of the gradients (float64 accumulation). */
double grad_norm(const param_set *ps);

/* Clips ps->g to cfg.clip_norm, applies AdamW (weight decay on the tensors
 * marked `decay` only), advances the step. Returns the learning rate used. */
float optim_step(optimizer *o, param_set *ps, double gnorm);

#endif
