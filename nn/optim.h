/* optim.h - AdamW over a param_set, with global-norm gradient clipping and
 * the learning-rate schedule (linear warmup, then cosine decay to a floor);
 * and an exponential moving average (EMA) of the weights. */
#ifndef NN_OPTIM_H
#define NN_OPTIM_H

#include "params.h"

typedef struct {
    float lr; /* peak learning rate */
    int warmup_steps, total_steps;
    float min_lr_ratio; /* 0.1: decay to 10% of the peak */
    float beta1, beta2, eps, weight_decay, clip_norm;
} optim_config;

/* beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, clip 1.0, floor 10%. */
optim_config optim_defaults(float lr, int warmup_steps, int total_steps);

/* An optimizer updates the flat parameter elements [off, off + n): all of
 * them, or with ZeRO-1 one rank's part, whose moments are all it keeps. */
typedef struct {
    optim_config cfg;
    long step;     /* optimizer steps taken */
    size_t off, n; /* the part of the flat parameters it owns */
    float *m, *v;  /* moments of that part: m[0] is element off */
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

/* The EMA of a contiguous part of the flat float32 weights, in a backend
 * buffer, updated after every optimizer step (docs/conventions.md, "EMA"):
 *   avg = d_t avg + (1 - d_t) w,  d_t = min(decay, (1 + t) / (10 + t)),
 * t the updates taken before this one, and d_0 = 0: the first update copies
 * the weights (diffusers' EMAModel). */
typedef struct {
    float decay;   /* the target decay, in (0, 1) */
    long updates;  /* updates taken (t) */
    size_t off, n; /* the part of the flat weights it averages */
    float *avg;    /* n floats: avg[0] averages element off */
} weight_ema;

void ema_create(weight_ema *e, float decay, size_t off, size_t n);
void ema_free(weight_ema *e);
/* d_t for the target decay. */
float ema_decay_at(float decay, long t);
/* One update from the flat weights w (a backend buffer holding all of them). */
void ema_step(weight_ema *e, const float *w);
/* The average in host memory, as optim_host_moments: the buffer itself on a
 * host-memory backend, else a copy, downloaded when `fetch`;
 * ema_host_release uploads the copy when `store`, and frees it. */
float *ema_host(const weight_ema *e, int fetch);
void ema_host_release(const weight_ema *e, float *avg, int store);

#endif
