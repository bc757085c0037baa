/* main.c - the trainer's command line.
 *
 *   trainer init  --config MODEL.json --out DIR [--seed S]
 *   trainer loss  --ckpt DIR --batch BATCH.safetensors [--grads OUT.safetensors]
 *   trainer bench --config MODEL.json --batch-rows B --seq-len L [--steps N] [--threads T]
 *   trainer train --config MODEL.json [--loader E] [--steps N] [--batch-rows B] [--grad-accum A] [--seq-len L]
 *                 [--lr LR] [--warmup W] [--seed S] [--no-zero] [--out DIR]
 *   (mpirun -np N trainer train ...: N data-parallel ranks)
 *   trainer export --ckpt STEP_DIR --out DIR [--dtype bf16|f32]
 *
 * Bad input (flags, files, records) exits with status 2 and one line on
 * stderr naming the file and the field or tensor. */
#include "batch.h"
#include "data_parallel.h"
#include "model.h"
#include "rows.h"
#include "../checkpoint/ckpt.h"
#include "../nn/optim.h"
#include "../common/timing.h"
#include "../common/cli.h"
#include "../common/error.h"
#include "../common/safetensors.h"
#include "../nn/dist.h"
#include "../nn/kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static model_config load_config(const char *path) {
    model_config c;
    char err[ERR_LEN];
    if (config_load(path, &c, err)) die_input("%s", err);
    return c;
}

static double peak_rss_mb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss / 1024.0;
}

/* ------------------------------------------------------------- commands */

static int cmd_init(const args *a) {
    model_config c = load_config(arg_required(a, "config"));
    const char *out = arg_required(a, "out");
    model m;
    char err[ERR_LEN];
    model_create(&m, &c);
    model_init_weights(&m, (unsigned long long)arg_int(a, "seed", 0, 0));
    if (model_save(&m, out, err)) die("%s", err);
    printf("wrote %s: %zu parameters\n", out, m.ps.numel);
    model_free(&m);
    return 0;
}

static int cmd_loss(const args *a) {
    const char *ckpt = arg_required(a, "ckpt"), *bpath = arg_required(a, "batch");
    const char *gpath = arg_str(a, "grads", NULL);
    nn_init((int)arg_int(a, "threads", 0, 1));
    model m;
    batch b;
    plan p;
    char err[ERR_LEN];
    if (model_load(&m, ckpt, err)) die_input("%s", err);
    if (batch_load(bpath, &m.cfg, &b, err)) die_input("%s", err);
    plan_build(&p, &b, &m.cfg);
    loss_sums s = model_step(&m, &p, (double)p.n_lm, (double)p.n_patch * cfg_patch_dim(&m.cfg), 1);
    double lm = s.n_lm ? s.ce_sum / s.n_lm : 0.0, diff = s.n_latent ? s.se_sum / s.n_latent : 0.0;
    printf("{\"loss\":%.9g,\"lm_loss\":%.9g,\"diffusion_loss\":%.9g,\"n_lm\":%ld,\"n_latent\":%ld,\"grad_norm\":%.9g}\n",
           lm + m.cfg.lambda_diffusion * diff, lm, diff, s.n_lm, s.n_latent, grad_norm(&m.ps));
    if (gpath && params_save(&m.ps, m.ps.g, gpath, err)) die("%s", err);
    plan_free(&p);
    batch_free(&b);
    model_free(&m);
    return 0;
}

/* A fresh model, its optimizer and one generated batch (with the flags
 * --config, --batch-rows, --seq-len, --seed, --threads): what bench times. */
typedef struct {
    batch b;
    plan p;
    model m;
    optimizer o;
} generated_run;

static void generated_run_open(generated_run *g, const args *a, int rows, int len, float lr,
                               int warmup, int steps) {
    model_config c = load_config(arg_required(a, "config"));
    int B = (int)arg_int(a, "batch-rows", rows, 1), L = (int)arg_int(a, "seq-len", len, 2);
    unsigned long long seed = (unsigned long long)arg_int(a, "seed", 0, 0);
    nn_init((int)arg_int(a, "threads", 0, 1));
    rng r;
    rng_seed(&r, seed);
    batch_generate(&g->b, &c, B, L, &r);
    plan_build(&g->p, &g->b, &c);
    model_create(&g->m, &c);
    model_init_weights(&g->m, seed);
    optim_create(&g->o, &g->m.ps, optim_defaults(lr, warmup, steps));
}

static void generated_run_close(generated_run *g) {
    optim_free(&g->o);
    model_free(&g->m);
    plan_free(&g->p);
    batch_free(&g->b);
}

/* One optimizer step on the generated batch; returns the loss. */
static double train_step(generated_run *g, double *gnorm, float *lr) {
    model *m = &g->m;
    nn_zero(m->ps.g, m->ps.numel);
    double n_latent = (double)g->p.n_patch * cfg_patch_dim(&m->cfg);
    loss_sums s = model_step(m, &g->p, (double)g->p.n_lm, n_latent, 1);
    *gnorm = grad_norm(&m->ps);
    *lr = optim_step(&g->o, &m->ps, *gnorm);
    return (s.n_lm ? s.ce_sum / s.n_lm : 0.0) + m->cfg.lambda_diffusion * (n_latent ? s.se_sum / n_latent : 0.0);
}

static int cmd_bench(const args *a) {
    int steps = (int)arg_int(a, "steps", 10, 1);
    generated_run g;
    generated_run_open(&g, a, 8, 256, 3e-4f, 10, 1000);
    double gnorm, *times = xcalloc(steps, sizeof(double));
    float lr;
    train_step(&g, &gnorm, &lr);                        /* warm-up: allocations, caches */
    for (int s = 0; s < steps; s++) {
        double t0 = now_s();
        train_step(&g, &gnorm, &lr);
        times[s] = now_s() - t0;
    }
    const plan *p = &g.p;
    double med = median_sorted(times, steps), flops = model_step_flops(&g.m, p);   /* times now sorted */
    double state_mb = 4.0 * g.m.ps.numel * sizeof(float) / 1048576.0;   /* weights, grads, m, v */
    double act_mb = model_activation_floats(&g.m, p) * sizeof(float) / 1048576.0;
    /* memory_ratio: peak RSS over what training needs at the least (weights,
     * gradients, Adam moments, and the activations backward reads). */
    printf("{\"step_s\":%.6f,\"min_step_s\":%.6f,\"positions_per_s\":%.1f,\"gflops_per_s\":%.1f,"
           "\"gflop_per_step\":%.2f,\"threads\":%d,\"params\":%zu,\"patch_fraction\":%.3f,"
           "\"peak_rss_mb\":%.1f,\"state_mb\":%.1f,\"activation_mb\":%.1f,\"memory_ratio\":%.2f}\n",
           med, times[0], p->N / med, flops / med / 1e9, flops / 1e9, nn_threads(), g.m.ps.numel,
           (double)p->n_patch / p->N, peak_rss_mb(), state_mb, act_mb, peak_rss_mb() / (state_mb + act_mb));
    free(times);
    generated_run_close(&g);
    return 0;
}

/* Data-parallel training on the dataloader's rows (--loader) or, without a
 * loader, on one generated global batch (rows.h says how ranks and
 * accumulation steps split a step's rows). The noise is drawn anew each
 * step (batch_draw_noise). */
static int cmd_train(const args *a) {
    int steps = (int)arg_int(a, "steps", 300, 1), warmup = (int)arg_int(a, "warmup", 20, 0);
    int log_every = (int)arg_int(a, "log-every", 10, 1), B = (int)arg_int(a, "batch-rows", 4, 1);
    int A = (int)arg_int(a, "grad-accum", 1, 1), L = (int)arg_int(a, "seq-len", 128, 2);
    unsigned long long seed = (unsigned long long)arg_int(a, "seed", 0, 0);
    const char *out = arg_str(a, "out", NULL), *loader = arg_str(a, "loader", NULL);
    char err[ERR_LEN];
    nn_init((int)arg_int(a, "threads", 0, 1));
    int world = dist_size(), rank = dist_rank();

    model_config c;
    row_source *rows;
    if (loader) {
        int lb, ll;
        if (!(rows = rows_open_loader(loader, arg_required(a, "config"), A, 0, &c, &lb, &ll, err))) die_input("%s", err);
        if ((arg_str(a, "batch-rows", NULL) && lb != B) || (arg_str(a, "seq-len", NULL) && ll != L))
            die_input("trainer train: --batch-rows %d --seq-len %d, but the loader at %s serves %d rows of %d",
                      B, L, loader, lb, ll);
        B = lb;
        L = ll;
    } else {
        c = load_config(arg_required(a, "config"));
        rows = rows_open_generated(&c, A, B, L, seed);
    }
    model m;
    model_create(&m, &c);
    model_init_weights(&m, seed);
    data_parallel dp;
    dp_init(&dp, &m, !arg_switch(a, "no-zero"));
    optimizer o;
    dp_optimizer(&dp, &o, optim_defaults((float)arg_float(a, "lr", 1e-3), warmup, steps));
    if (rank == 0)
        printf("training %zu parameters on %s: %d ranks x %d accumulation steps x %d rows x %d positions, "
               "ZeRO-1 %s\n", m.ps.numel, loader ? loader : "generated rows", world, A, B, L, dp.zero ? "on" : "off");

    double first = 0, loss = 0, t0 = now_s();
    for (int s = 0; s < steps; s++) {
        double ts = now_s(), wait;
        batch *micro;
        if (rows_next(rows, &micro, &wait, err)) die("%s", err);
        /* The loss is normalized by the counts of the whole step (contract
         * section 5): every micro-batch of every rank. */
        plan *p = xcalloc(A, sizeof(plan));
        int64_t counts[2] = {0, 0};
        double flops = 0, sums[2] = {0, 0};
        for (int j = 0; j < A; j++) {
            batch_draw_noise(&micro[j], &c, seed, s, (long)(rank * A + j) * B);
            plan_build(&p[j], &micro[j], &c);
            counts[0] += p[j].n_lm;
            counts[1] += (int64_t)p[j].n_patch * cfg_patch_dim(&c);
            flops += model_step_flops(&m, &p[j]);
        }
        dist_allreduce_sum_i64(counts, 2);
        nn_zero(m.ps.g, m.ps.numel);
        for (int j = 0; j < A; j++) {
            if (j == A - 1) dp_start_reduction(&dp);
            loss_sums ls = model_step(&m, &p[j], (double)counts[0], (double)counts[1], 1);
            sums[0] += ls.ce_sum;
            sums[1] += ls.se_sum;
            plan_free(&p[j]);
        }
        free(p);
        double gnorm = dp_finish_reduction(&dp);
        float lr = dp_update(&dp, &o, gnorm);
        double totals[4] = {sums[0], sums[1], flops, wait};
        dist_allreduce_sum_f64(totals, 4);
        double lm = counts[0] ? totals[0] / counts[0] : 0, diff = counts[1] ? totals[1] / counts[1] : 0;
        loss = lm + c.lambda_diffusion * diff;
        if (s == 0) first = loss;
        double dt = now_s() - ts;
        if (rank == 0 && (s % log_every == 0 || s == steps - 1)) {
            printf("step %4d/%d  loss %.9f  lm %.6f  diffusion %.6f  lr %.2e  grad_norm %.4f  "
                   "%.0f positions/s  %.1f GFLOP/s  data %.3f s  %.1f s\n",
                   s + 1, steps, loss, lm, diff, lr, gnorm, (double)world * A * B * L / dt, totals[2] / dt / 1e9,
                   totals[3] / world, now_s() - t0);
            fflush(stdout);
        }
    }
    if (rank == 0) printf("loss %.4f -> %.4f (%.1fx lower)\n", first, loss, first / loss);
    if (out && rank == 0 && model_save(&m, out, err)) die("%s", err);
    rows_close(rows);
    optim_free(&o);
    dp_free(&dp);
    model_free(&m);
    return 0;
}

/* A training checkpoint's step folder as one inference checkpoint. */
static int cmd_export(const args *a) {
    const char *ckpt = arg_required(a, "ckpt"), *out = arg_required(a, "out");
    const char *dtype = arg_str(a, "dtype", "f32");
    char err[ERR_LEN];
    if (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0) die_input("--dtype: '%s', expected bf16 or f32", dtype);
    if (ckpt_verify(ckpt, err)) die_input("%s", err);
    if (ckpt_export(ckpt, out, strcmp(dtype, "bf16") == 0 ? ST_BF16 : ST_F32, err)) die("%s", err);
    printf("wrote %s (%s)\n", out, dtype);
    return 0;
}

static const char usage[] =
    "usage: trainer init  --config MODEL.json --out DIR [--seed S]\n"
    "       trainer loss  --ckpt DIR --batch BATCH.safetensors [--grads OUT.safetensors] [--threads T]\n"
    "       trainer bench --config MODEL.json --batch-rows B --seq-len L [--steps N] [--threads T]\n"
    "       trainer train --config MODEL.json [--loader tcp://HOST:PORT] [--steps N] [--batch-rows B]\n"
    "                     [--grad-accum A] [--seq-len L]\n"
    "                     [--lr LR] [--warmup W] [--seed S] [--no-zero] [--log-every K] [--threads T]\n"
    "                     [--out DIR]    (under mpirun: data-parallel ranks)\n"
    "       trainer export --ckpt STEP_DIR --out DIR [--dtype bf16|f32]\n";

int main(int argc, char **argv) {
    static const char *const init_flags[] = {"config", "out", "seed", NULL};
    static const char *const loss_flags[] = {"ckpt", "batch", "grads", "threads", NULL};
    static const char *const bench_flags[] = {"config", "batch-rows", "seq-len", "steps", "threads", "seed", NULL};
    static const char *const train_flags[] = {"config", "batch-rows", "grad-accum", "seq-len", "steps", "threads",
                                              "seed", "lr", "warmup", "log-every", "no-zero!", "loader", "out",
                                              NULL};
    static const char *const export_flags[] = {"ckpt", "out", "dtype", NULL};
    static const command cmds[] = {
        {"init", cmd_init, init_flags}, {"loss", cmd_loss, loss_flags},
        {"bench", cmd_bench, bench_flags}, {"train", cmd_train, train_flags},
        {"export", cmd_export, export_flags},
    };
    nn_startup(argv);
    dist_init(&argc, &argv);            /* MPI only when started by mpirun */
    int rc = cli_main("trainer", argc, argv, cmds, sizeof cmds / sizeof *cmds, usage);
    dist_finalize();
    return rc;
}
