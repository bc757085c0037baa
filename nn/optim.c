/* optim.c - AdamW, clipping, the learning-rate schedule and the weights'
 * moving average (optim.h). */
#include "optim.h"
#include "kernels.h"
#include "../common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

optim_config optim_defaults(float lr, int warmup_steps, int total_steps) {
    return (optim_config){.lr = lr,
                          .warmup_steps = warmup_steps,
                          .total_steps = total_steps,
                          .min_lr_ratio = 0.1f,
                          .beta1 = 0.9f,
                          .beta2 = 0.95f,
                          .eps = 1e-8f,
                          .weight_decay = 0.1f,
                          .clip_norm = 1.0f};
}

void optim_create_part(optimizer *o, optim_config cfg, size_t off, size_t n) {
    memset(o, 0, sizeof *o);
    o->cfg = cfg;
    o->off = off;
    o->n = n;
    o->m = nn_alloc_f32(n);
    o->v = nn_alloc_f32(n);
}

void optim_create(optimizer *o, const param_set *ps, optim_config cfg) { optim_create_part(o, cfg, 0, ps->numel); }

void optim_free(optimizer *o) {
    nn_free(o->m);
    nn_free(o->v);
    memset(o, 0, sizeof *o);
}

void optim_host_moments(const optimizer *o, float **m, float **v, int fetch) {
    *m = o->m;
    *v = o->v;
    if (nn_host_memory()) return;
    *m = xmalloc(sizeof(float) * (o->n ? o->n : 1));
    *v = xmalloc(sizeof(float) * (o->n ? o->n : 1));
    if (!fetch) return;
    nn_download(*m, o->m, o->n);
    nn_download(*v, o->v, o->n);
}

void optim_host_release(const optimizer *o, float *m, float *v, int store) {
    if (nn_host_memory()) return;
    if (store) {
        nn_upload(o->m, m, o->n);
        nn_upload(o->v, v, o->n);
    }
    free(m);
    free(v);
}

float optim_lr(const optim_config *c, long s) {
    if (s < c->warmup_steps) return c->lr * (float)(s + 1) / (float)c->warmup_steps;
    double span = c->total_steps - c->warmup_steps;
    double progress = span > 0 ? (double)(s - c->warmup_steps) / span : 1.0;
    if (progress > 1.0) progress = 1.0;
    double floor = c->min_lr_ratio;
    return (float)(c->lr * (floor + (1.0 - floor) * 0.5 * (1.0 + cos(M_PI * progress))));
}

double grad_norm(const param_set *ps) { return sqrt(nn_sum_squared_diff(ps->g, NULL, ps->numel)); }

float optim_step(optimizer *o, param_set *ps, double gnorm) {
    const optim_config *c = &o->cfg;
    if (c->clip_norm > 0 && gnorm > c->clip_norm) nn_scale(ps->g + o->off, (float)(c->clip_norm / gnorm), o->n);
    float lr = optim_lr(c, o->step);
    o->step++;
    float bc1 = 1.0f - powf(c->beta1, (float)o->step), bc2 = 1.0f - powf(c->beta2, (float)o->step);
    size_t end = o->off + o->n;
    for (int i = 0; i < ps->n; i++) { /* each tensor's overlap with the part */
        const param_info *p = &ps->info[i];
        size_t a = p->offset > o->off ? p->offset : o->off;
        size_t b = p->offset + p->numel < end ? p->offset + p->numel : end;
        if (a >= b) continue;
        nn_adamw(ps->w + a, ps->g + a, o->m + (a - o->off), o->v + (a - o->off), b - a, lr, c->beta1, c->beta2, c->eps,
                 p->decay ? c->weight_decay : 0.0f, bc1, bc2);
    }
    return lr;
}

void ema_create(weight_ema *e, float decay, size_t off, size_t n) {
    *e = (weight_ema){.decay = decay, .off = off, .n = n, .avg = nn_alloc_f32(n)};
}

void ema_free(weight_ema *e) {
    nn_free(e->avg);
    memset(e, 0, sizeof *e);
}

float ema_decay_at(float decay, long t) {
    if (t == 0) return 0.0f;
    double warm = (1.0 + t) / (10.0 + t);
    return warm < decay ? (float)warm : decay;
}

void ema_step(weight_ema *e, const float *w) {
    long t = e->updates++;
    if (e->n == 0) return; /* a part with no elements: w + off may be past w's end */
    if (t == 0)
        nn_copy(e->avg, w + e->off, e->n); /* d_0 = 0: exactly the weights */
    else
        nn_ema_update(e->avg, w + e->off, e->n, ema_decay_at(e->decay, t));
}

float *ema_host(const weight_ema *e, int fetch) {
    if (nn_host_memory()) return e->avg;
    float *h = xmalloc(sizeof(float) * (e->n ? e->n : 1));
    if (fetch) nn_download(h, e->avg, e->n);
    return h;
}

void ema_host_release(const weight_ema *e, float *avg, int store) {
    if (nn_host_memory()) return;
    if (store) nn_upload(e->avg, avg, e->n);
    free(avg);
}
