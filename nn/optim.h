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

/* An optimizer updates the flat parameter elements [off, off + n): all of
 * them, or with ZeRO-1 one rank's part, whose moments are all it keeps. */
typedef struct {
    optim_config cfg;
    long step;                  /* optimizer steps taken */
    size_t off, n;              /* the part of the flat parameters it owns */
    float *m, *v;               /* moments of that part: m[0] is element off */
} optimizer;

void optim_create(optimizer *o, const param_set *ps, optim_config cfg);
void optim_create_part(optimizer *o, optim_config cfg, size_t off, size_t n);
void optim_free(optimizer *o);

/* The moments in host memory (checkpoint I/O): the moments themselves when
 * the backend works in host memory, else copies, downloaded when `fetch`.
 * optim_host_release uploads the copies when `store`, and frees them. */
void optim_host_moments(const optimizer *o, float **m, float **v, int fetch);
void optim_host_release(const optimizer *o, float *m, float *v, int store);

/* Learning rate for step s (0-based). */
float optim_lr(const optim_config *c, long s);

/* Global L2 norm of the gradients (float64 accumulation). */
double grad_norm(const param_set *ps);

/* Clips the owned part of ps->g to cfg.clip_norm (gnorm is the norm of the
 * whole gradient), applies AdamW to the owned part of ps->w (weight decay on
 * the tensors marked `decay` only), advances the step. Returns the learning
 * rate used. */
float optim_step(optimizer *o, param_set *ps, double gnorm);

#endif
