/* step_feed.c - a run's steps of input, each prepared on a host thread
 * while the step before it runs, or in turn (step_feed.h). One thread per
 * step, started when the previous step's input is taken and joined when
 * this one's is wanted: the join orders every access to the row source and
 * the prepared input, so nothing else is locked. */
#include "step_feed.h"
#include "../common/error.h"
#include "../common/timing.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct step_feed {
    row_source *rows;
    const model *m;
    int accum, B, rank;
    unsigned long long seed;
    long next, end; /* the step being prepared; the run's end */
    int ahead;      /* prepare on a thread, one step ahead */
    pthread_t thread;
    int busy;         /* a thread is preparing `next` */
    step_input ready; /* what it made */
    int failed;       /* ... or why it could not */
    char err[ERR_LEN];
};

static void *prepare(void *arg) {
    step_feed *f = arg;
    step_input *in = &f->ready;
    memset(in, 0, sizeof *in);
    batch *micro;
    f->failed = rows_next(f->rows, &micro, &in->loader_s, f->err) != 0;
    if (f->failed) return NULL;
    const model_config *c = &f->m->cfg;
    in->plans = xcalloc(f->accum, sizeof(plan));
    for (int j = 0; j < f->accum; j++) {
        batch_draw_noise(&micro[j], c, f->seed, f->next, (long)(f->rank * f->accum + j) * f->B);
        plan_build(&in->plans[j], &micro[j], c);
        in->counts[0] += in->plans[j].n_lm;
        in->counts[1] += (int64_t)in->plans[j].n_patch * cfg_patch_dim(c);
        in->flops += model_step_flops(f->m, &in->plans[j]);
    }
    return NULL;
}

/* Starts preparing step f->next on a thread. */
static void launch(step_feed *f) {
    if (pthread_create(&f->thread, NULL, prepare, f)) die("trainer: cannot start the thread that prepares steps");
    f->busy = 1;
}

step_feed *step_feed_start(row_source *rows, const model *m, int accum, int B, unsigned long long seed, int rank,
                           long first, long end, int ahead) {
    step_feed *f = xcalloc(1, sizeof *f);
    f->rows = rows, f->m = m, f->accum = accum, f->B = B, f->rank = rank, f->seed = seed;
    f->next = first, f->end = end, f->ahead = ahead;
    if (first < end && ahead) launch(f);
    return f;
}

int step_feed_next(step_feed *f, step_input *in, double *stall_s, char *err) {
    if (f->next >= f->end) die("step_feed_next: no step left before step %ld", f->end);
    double t0 = now_s();
    if (f->ahead)
        pthread_join(f->thread, NULL);
    else
        prepare(f);
    f->busy = 0;
    *stall_s = now_s() - t0;
    if (f->failed) {
        snprintf(err, ERR_LEN, "%s", f->err);
        return -1;
    }
    *in = f->ready;
    if (++f->next < f->end && f->ahead) launch(f);
    return 0;
}

void step_input_free(step_input *in, int accum) {
    for (int j = 0; j < accum; j++) plan_free(&in->plans[j]);
    free(in->plans);
}

void step_feed_stop(step_feed *f) {
    if (!f) return;
    if (f->busy) {
        pthread_join(f->thread, NULL);
        if (!f->failed) step_input_free(&f->ready, f->accum);
    }
    free(f);
}
