/* data_parallel.c - gradient buckets reduced during backward, ZeRO-1 parts,
 * and the update; see data_parallel.h. */
#include "data_parallel.h"
#include "dist.h"
#include "kernels.h"
#include "../common/error.h"
#include "../common/timing.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dp_init(data_parallel *dp, param_set *ps, int zero, int overlap) {
    memset(dp, 0, sizeof *dp);
    dp->ps = ps;
    dp->overlap = overlap;
    dp->rank = dist_rank();
    dp->world = dist_size();
    dp->zero = zero && dp->world > 1;
    dp->part_off = xcalloc(dp->world, sizeof(size_t));
    dp->part_n = xcalloc(dp->world, sizeof(size_t));
    dp->counts = xcalloc(dp->world, sizeof(int));
    size_t total = ps->numel;
    for (int r = 0; r < dp->world; r++) {
        if (dp->zero)
            dist_part(total, r, dp->world, &dp->part_off[r], &dp->part_n[r]);
        else
            dp->part_n[r] = total;
    }
    if (dp->zero) dp->part_grad = nn_alloc_f32(dp->part_n[dp->rank]);
}

void dp_free(data_parallel *dp) {
    free(dp->part_off);
    free(dp->part_n);
    free(dp->counts);
    nn_free(dp->part_grad);
    memset(dp, 0, sizeof *dp);
}

void dp_optimizer(const data_parallel *dp, optimizer *o, optim_config cfg) {
    optim_create_part(o, cfg, dp->part_off[dp->rank], dp->part_n[dp->rank]);
}

/* The grad_hook: starts the reduction of one finished bucket. */
static void bucket_ready(void *ctx, size_t off, size_t n) {
    data_parallel *dp = ctx;
    float *g = dp->ps->g + off;
    if (n == 0) return;
    if (!dp->zero) {
        dist_allreduce_start(g, n);
    } else {
        size_t end = off + n, mine = dp->part_off[dp->rank];
        for (int r = 0; r < dp->world; r++) { /* the bucket's overlap with each part */
            size_t a = dp->part_off[r] > off ? dp->part_off[r] : off;
            size_t b = dp->part_off[r] + dp->part_n[r] < end ? dp->part_off[r] + dp->part_n[r] : end;
            dp->counts[r] = b > a ? (int)(b - a) : 0;
        }
        dist_reduce_scatter_start(g, n, dp->counts, dp->part_grad + (off > mine ? off - mine : 0));
    }
    dist_progress();
}

void dp_start_reduction(data_parallel *dp, grad_hook *hook) {
    dp->hook = dp->world > 1 && dp->overlap ? hook : NULL;
    if (dp->hook) *dp->hook = (grad_hook){bucket_ready, dp};
}

double dp_finish_reduction(data_parallel *dp) {
    param_set *ps = dp->ps;
    double t0 = now_s();
    if (dp->world > 1 && !dp->hook) bucket_ready(dp, 0, ps->numel);
    dist_wait_all();
    dp->wait_s += now_s() - t0;
    if (dp->hook) *dp->hook = (grad_hook){NULL, NULL};
    dp->hook = NULL;
    size_t off = dp->part_off[dp->rank], n = dp->part_n[dp->rank];
    if (!dp->zero) return sqrt(nn_sum_squared_diff(ps->g, NULL, ps->numel));
    nn_copy(ps->g + off, dp->part_grad, n);
    return dist_norm_of_parts(ps->g + off, n);
}

float dp_update(data_parallel *dp, optimizer *o, double gnorm) {
    float lr = optim_step(o, dp->ps, gnorm);
    if (dp->zero) dist_allgather_parts(dp->ps->w, dp->part_off, dp->part_n);
    return lr;
}
