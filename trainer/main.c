/* main.c - the trainer's command line: the program's commands, each with
 * its table of flags (common/cli.h); `trainer --help` and `trainer COMMAND
 * --help` print them. init, loss, bench and export live here; train,
 * sample, caption, sample-bench and eval in their own files.
 *
 * Bad input (flags, files, records) exits with status 2 and one line on
 * stderr naming the file and the field or tensor. */
#include "batch.h"
#include "eval.h"
#include "model.h"
#include "sample.h"
#include "session.h"
#include "train.h"
#include "../checkpoint/ckpt.h"
#include "../nn/backend.h"
#include "../nn/optim.h"
#include "../common/timing.h"
#include "../common/cli.h"
#include "../common/error.h"
#include "../common/json_file.h"
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
    model_config c = load_config(arg_str(a, "config"));
    const char *out = arg_str(a, "out");
    model m;
    char err[ERR_LEN];
    model_create(&m, &c);
    model_init_weights(&m, (unsigned long long)arg_int(a, "seed"));
    if (model_save(&m, out, err)) die("%s", err);
    printf("wrote %s: %zu parameters\n", out, m.ps.numel);
    model_free(&m);
    return 0;
}

static int cmd_loss(const args *a) {
    const char *ckpt = arg_str(a, "ckpt"), *bpath = arg_str(a, "batch");
    const char *gpath = arg_str(a, "grads");
    session_init_device(a);
    model m;
    batch b;
    plan p;
    char err[ERR_LEN];
    if (model_load(&m, ckpt, err)) die_input("%s", err);
    if (batch_load(bpath, &m.cfg, &b, err)) die_input("%s", err);
    plan_build(&p, &b, &m.cfg);
    loss_sums s = model_step(&m, &p, (double)p.n_lm, (double)p.n_patch * cfg_patch_dim(&m.cfg), 1);
    double lm = s.n_lm ? s.ce_sum / s.n_lm : 0.0, diff = s.n_latent ? s.se_sum / s.n_latent : 0.0;
    char num[4][32]; /* JSON has no NaN: a non-finite figure is null */
    printf("{\"loss\":%s,\"lm_loss\":%s,\"diffusion_loss\":%s,\"n_lm\":%ld,\"n_latent\":%ld,\"grad_norm\":%s}\n",
           json_num(num[0], lm + m.cfg.lambda_diffusion * diff), json_num(num[1], lm), json_num(num[2], diff), s.n_lm,
           s.n_latent, json_num(num[3], grad_norm(&m.dev)));
    model_download(&m, 0, 1);
    if (gpath && params_save(&m.ps, m.ps.g, gpath, err)) die("%s", err);
    plan_free(&p);
    batch_free(&b);
    model_free(&m);
    return 0;
}

/* A fresh model, its optimizer and one generated batch (with the flags
 * --config, --batch-rows, --seq-len, --seed, --threads; or the batch file
 * of --batch): what bench times. */
typedef struct {
    batch b;
    plan p;
    model m;
    optimizer o;
} generated_run;

static void generated_run_open(generated_run *g, const args *a, float lr, int warmup, int steps) {
    model_config c = load_config(arg_str(a, "config"));
    int B = (int)arg_int(a, "batch-rows"), L = (int)arg_int(a, "seq-len");
    unsigned long long seed = (unsigned long long)arg_int(a, "seed");
    session_init_device(a);
    rng r;
    rng_seed(&r, seed);
    const char *bpath = arg_str(a, "batch"); /* a peer's batch, to time the same work */
    char err[ERR_LEN];
    if (bpath && batch_load(bpath, &c, &g->b, err)) die_input("%s", err);
    if (!bpath) batch_generate(&g->b, &c, B, L, &r);
    plan_build(&g->p, &g->b, &c);
    model_create(&g->m, &c);
    model_init_weights(&g->m, seed);
    model_upload_weights(&g->m);
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
    nn_zero(m->dev.g, m->ps.numel);
    double n_latent = (double)g->p.n_patch * cfg_patch_dim(&m->cfg);
    loss_sums s = model_step(m, &g->p, (double)g->p.n_lm, n_latent, 1);
    *gnorm = grad_norm(&m->dev);
    *lr = optim_step(&g->o, &m->dev, *gnorm);
    nn_sync(); /* a step ends when the device is done */
    return (s.n_lm ? s.ce_sum / s.n_lm : 0.0) + m->cfg.lambda_diffusion * (n_latent ? s.se_sum / n_latent : 0.0);
}

static int cmd_bench(const args *a) {
    int steps = (int)arg_int(a, "steps");
    generated_run g;
    generated_run_open(&g, a, 3e-4f, 10, 1000);
    double gnorm, *times = xcalloc(steps, sizeof(double));
    float lr;
    train_step(&g, &gnorm, &lr); /* warm-up: allocations, caches */
    for (int s = 0; s < steps; s++) {
        double t0 = now_s();
        train_step(&g, &gnorm, &lr);
        times[s] = now_s() - t0;
    }
    const plan *p = &g.p;
    double med = median_sorted(times, steps), flops = model_step_flops(&g.m, p); /* times now sorted */
    double state_mb = 4.0 * g.m.ps.numel * sizeof(float) / 1048576.0;            /* weights, grads, m, v */
    double act_mb = model_activation_floats(&g.m, p) * sizeof(float) / 1048576.0;
    /* memory_ratio: peak RSS over what training needs at the least (weights,
     * gradients, Adam moments, and the activations backward reads). */
    printf("{\"step_s\":%.6f,\"min_step_s\":%.6f,\"positions_per_s\":%.1f,\"gflops_per_s\":%.1f,"
           "\"gflop_per_step\":%.2f,\"threads\":%d,\"params\":%zu,\"patch_fraction\":%.3f,"
           "\"peak_rss_mb\":%.1f,\"state_mb\":%.1f,\"activation_mb\":%.1f,\"memory_ratio\":%.2f,\"device\":\"%s\",\"precision\":\"%s\"",
           med, times[0], p->N / med, flops / med / 1e9, flops / 1e9, nn_threads(), g.m.ps.numel,
           (double)p->n_patch / p->N, peak_rss_mb(), state_mb, act_mb, peak_rss_mb() / (state_mb + act_mb),
           arg_str(a, "device"), nn_current_backend()->precision);
    /* Model FLOPs utilization against a given dense peak (989 TFLOP/s: H100 SXM bf16). */
    if (arg_given(a, "peak-tflops")) printf(",\"mfu\":%.4f", flops / med / (arg_num(a, "peak-tflops") * 1e12));
    printf("}\n");
    if (arg_switch(a, "profile")) { /* after the timed steps: its syncs and clocks slow the step a little */
        fflush(stdout);
        double t0 = now_s();
        nn_profile_start();
        for (int s = 0; s < steps; s++) train_step(&g, &gnorm, &lr);
        nn_profile_report(stderr, steps, (now_s() - t0) / steps);
    }
    free(times);
    generated_run_close(&g);
    return 0;
}

/* --weights: the EMA by default when the checkpoint has one (what sampling
 * uses too), else the weights. */
static int cmd_export(const args *a) {
    const char *ckpt = arg_str(a, "ckpt"), *out = arg_str(a, "out");
    const char *dtype = arg_str(a, "dtype");
    char err[ERR_LEN];
    ckpt_weights which, used;
    if (ckpt_weights_parse(arg_str(a, "weights"), &which, err)) die_input("%s", err);
    if (ckpt_verify(ckpt, err)) die_input("%s", err);
    if (which == CKPT_EMA && !ckpt_has_ema(ckpt))
        die_input("--weights ema: %s holds no EMA of the weights (trained without --ema)", ckpt);
    if (ckpt_export(ckpt, out, strcmp(dtype, "bf16") == 0 ? ST_BF16 : ST_F32, which, &used, err)) die("%s", err);
    printf("wrote %s (%s, %s weights)\n", out, dtype, used == CKPT_EMA ? "EMA" : "raw");
    return 0;
}

static const cli_flag init_flags[] = {
    {"config", FLAG_TEXT | FLAG_REQUIRED, "MODEL.json", NULL, NULL, "the model's config"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL, "the checkpoint folder to write"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights"},
    {0},
};

static const cli_flag loss_flags[] = {
    {"ckpt", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL, "a checkpoint folder"},
    {"batch", FLAG_TEXT | FLAG_REQUIRED, "BATCH.safetensors", NULL, NULL, "a batch file (docs/model.md section 7)"},
    {"grads", FLAG_TEXT, "OUT.safetensors", NULL, NULL, "also write the gradients here"},
    {0},
};

static const cli_flag bench_flags[] = {
    {"config", FLAG_TEXT | FLAG_REQUIRED, "MODEL.json", NULL, NULL, "the model's config (random weights)"},
    {"batch-rows", FLAG_INT, "B", "[1, inf)", "8", "rows of the generated batch"},
    {"seq-len", FLAG_INT, "L", "[2, inf)", "256", "positions per row"},
    {"steps", FLAG_INT, "N", "[1, inf)", "10", "timed steps (after one warm-up step)"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights and the batch"},
    {"batch", FLAG_TEXT, "BATCH.safetensors", NULL, NULL, "time this batch instead (a peer's, for the same work)"},
    {"peak-tflops", FLAG_NUM, "P", "(0, inf)", NULL, "also print the model FLOPs utilization against this peak"},
    {"profile", FLAG_SWITCH, NULL, NULL, NULL,
     "then time each kernel over as many steps again and print their shares (stderr)"},
    {0},
};

static const cli_flag export_flags[] = {
    {"ckpt", FLAG_TEXT | FLAG_REQUIRED, "STEP_DIR", NULL, NULL, "a step folder of a run"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "DIR", NULL, NULL,
     "the consolidated folder to write (config, weights, tokenizer, statistics)"},
    {"dtype", FLAG_CHOICE, "f32|bf16", NULL, "f32", "the weights' type"},
    {"weights", FLAG_CHOICE, "ema|raw", NULL, NULL, "which weights (default: the EMA where there is one)"},
    {0},
};

static const cli_command init_command = {
    "init", "writes a checkpoint with freshly initialized weights", cmd_init, {init_flags}};
static const cli_command loss_command = {"loss",
                                         "the loss and gradient norm of a checkpoint on a batch file (conformance)",
                                         cmd_loss,
                                         {loss_flags, device_flags, cli_threads_flags}};
static const cli_command bench_command = {"bench",
                                          "times training steps on a generated batch: step time, FLOP/s, memory",
                                          cmd_bench,
                                          {bench_flags, device_flags, cli_threads_flags}};
static const cli_command export_command = {
    "export", "a step folder as one consolidated checkpoint, f32 or bf16", cmd_export, {export_flags}};

static const cli_command *const commands[] = {
    &init_command,   &loss_command,    &bench_command,        &train_command, &export_command,
    &sample_command, &caption_command, &sample_bench_command, &eval_command,
};

static const cli_program program = {"trainer", "Trains the Transfusion model and generates from it.", commands,
                                    sizeof commands / sizeof *commands};

int main(int argc, char **argv) {
    nn_startup(argv);
    dist_init(&argc, &argv); /* MPI only when started by mpirun */
    int rc = cli_main(&program, argc, argv);
    dist_finalize();
    return rc;
}
