/* main.c - the trainer's command line.
 *
 *   trainer init  --config MODEL.json --out DIR [--seed S]
 *   trainer loss  --ckpt DIR --batch BATCH.safetensors [--grads OUT.safetensors]
 *   trainer bench --config MODEL.json --batch-rows B --seq-len L [--steps N] [--threads T]
 *                 [--device cpu|cuda] [--peak-tflops P] [--batch BATCH.safetensors]
 *   trainer train --model MODEL.json|--init-from CKPT [--loader E] [--steps N] [--batch-rows B] [--grad-accum A] [--seq-len L]
 *                 [--lr LR] [--warmup W] [--seed S] [--ema DECAY] [--no-zero] [--out DIR]
 *                 [--ckpt-dir DIR [--ckpt-every K] [--keep N] [--keep-every M] [--resume auto|STEP_DIR]]
 *                 [--eval-every K --eval-images GLOB --vae VAE_DIR [--eval-text DIR] [--eval-prompts FILE]
 *                  [--eval-n 64] [--eval-sampler-steps 50]]
 *                 (train.c)
 *   (mpirun -np N trainer train ...: N data-parallel ranks)
 *   trainer export --ckpt STEP_DIR --out DIR [--dtype bf16|f32] [--weights ema|raw]
 *   trainer sample --ckpt DIR --vae VAE_DIR --prompt TEXT --out OUT_DIR [...] [--device D]   (sample.c)
 *   trainer caption --ckpt DIR --vae VAE_DIR --image FILE [--image FILE ...] [--prompt TEXT] [--min-tokens 1] [--device D]
 *   trainer eval --ckpt DIR --vae VAE_DIR --images GLOB [--text DIR] [--prompts FILE] [--n N] [--seed S]
 *                [--out EVAL.json] ...   (eval.h)
 *   trainer sample-bench --config MODEL.json [--n K] [--prompt-len P] [--tokens M] [--steps D] [--cfg G]
 *                        [--device D]
 *
 * Bad input (flags, files, records) exits with status 2 and one line on
 * stderr naming the file and the field or tensor. */
#include "batch.h"
#include "eval.h"
#include "model.h"
#include "sample.h"
#include "train.h"
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
    nn_init_device(arg_str(a, "device", "cpu"), (int)arg_int(a, "threads", 0, 1));
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
           lm + m.cfg.lambda_diffusion * diff, lm, diff, s.n_lm, s.n_latent, grad_norm(&m.dev));
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

static void generated_run_open(generated_run *g, const args *a, int rows, int len, float lr,
                               int warmup, int steps) {
    model_config c = load_config(arg_required(a, "config"));
    int B = (int)arg_int(a, "batch-rows", rows, 1), L = (int)arg_int(a, "seq-len", len, 2);
    unsigned long long seed = (unsigned long long)arg_int(a, "seed", 0, 0);
    nn_init_device(arg_str(a, "device", "cpu"), (int)arg_int(a, "threads", 0, 1));
    rng r;
    rng_seed(&r, seed);
    const char *bpath = arg_str(a, "batch", NULL);      /* a peer's batch, to time the same work */
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
    nn_sync();                          /* a step ends when the device is done */
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
           "\"peak_rss_mb\":%.1f,\"state_mb\":%.1f,\"activation_mb\":%.1f,\"memory_ratio\":%.2f,\"device\":\"%s\"",
           med, times[0], p->N / med, flops / med / 1e9, flops / 1e9, nn_threads(), g.m.ps.numel,
           (double)p->n_patch / p->N, peak_rss_mb(), state_mb, act_mb, peak_rss_mb() / (state_mb + act_mb),
           arg_str(a, "device", "cpu"));
    /* Model FLOPs utilization against a given dense peak (989 TFLOP/s: H100 SXM bf16). */
    double peak = arg_float(a, "peak-tflops", 0);
    if (peak > 0) printf(",\"mfu\":%.4f", flops / med / (peak * 1e12));
    printf("}\n");
    free(times);
    generated_run_close(&g);
    return 0;
}

/* --weights: the EMA by default when the checkpoint has one (what sampling
 * uses too), else the weights. */
static int cmd_export(const args *a) {
    const char *ckpt = arg_required(a, "ckpt"), *out = arg_required(a, "out");
    const char *dtype = arg_str(a, "dtype", "f32");
    char err[ERR_LEN];
    ckpt_weights which, used;
    if (strcmp(dtype, "f32") != 0 && strcmp(dtype, "bf16") != 0) die_input("--dtype: '%s', expected bf16 or f32", dtype);
    if (ckpt_weights_parse(arg_str(a, "weights", NULL), &which, err)) die_input("%s", err);
    if (ckpt_verify(ckpt, err)) die_input("%s", err);
    if (which == CKPT_EMA && !ckpt_has_ema(ckpt))
        die_input("--weights ema: %s holds no EMA of the weights (trained without --ema)", ckpt);
    if (ckpt_export(ckpt, out, strcmp(dtype, "bf16") == 0 ? ST_BF16 : ST_F32, which, &used, err)) die("%s", err);
    printf("wrote %s (%s, %s weights)\n", out, dtype, used == CKPT_EMA ? "EMA" : "raw");
    return 0;
}

static const char usage[] =
    "usage: trainer init  --config MODEL.json --out DIR [--seed S]\n"
    "       trainer loss  --ckpt DIR --batch BATCH.safetensors [--grads OUT.safetensors] [--threads T] [--device D]\n"
    "       trainer bench --config MODEL.json --batch-rows B --seq-len L [--steps N] [--threads T]\n"
    "                     [--device cpu|cuda] [--peak-tflops P] [--batch BATCH.safetensors]\n"
    "       trainer train --model MODEL.json|--init-from CKPT_DIR [--loader tcp://HOST:PORT] [--steps N] [--batch-rows B]\n"
    "                     [--grad-accum A] [--seq-len L]\n"
    "                     [--lr LR] [--warmup W] [--seed S] [--ema DECAY] [--no-zero] [--no-overlap] [--log-every K]\n"
    "                     [--threads T]\n"
    "                     [--device cpu|cuda] [--out DIR] [--ckpt-dir DIR [--ckpt-every K] [--keep N] [--keep-every M]\n"
    "                     [--resume auto|STEP_DIR]]    (under mpirun: data-parallel ranks)\n"
    "                     [--eval-every K --eval-images GLOB --vae VAE_DIR [--eval-text DIR] [--eval-prompts FILE]\n"
    "                      [--eval-n 64] [--eval-sampler-steps 50]]   (held-out figures into metrics.jsonl)\n"
    "       trainer export --ckpt STEP_DIR --out DIR [--dtype bf16|f32] [--weights ema|raw]\n"
    "       trainer sample --ckpt DIR --vae VAE_DIR [--tokenizer TOK.model] --prompt TEXT --out OUT_DIR [--n K]\n"
    "                      [--seed S] [--max-tokens M] [--temperature T] [--top-p P] [--top-k K] [--steps D]\n"
    "                      [--sampler ddpm|ddim] [--eta E] [--cfg G] [--clip X] [--image] [--context C] [--no-cache] [--threads T]\n"
    "                      [--device cpu|cuda] [--weights ema|raw]\n"
    "       trainer caption --ckpt DIR --vae VAE_DIR [--tokenizer TOK.model] --image FILE [--image FILE ...]\n"
    "                       [--prompt TEXT] [--max-tokens M] [--min-tokens 1] [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
    "                       [--context C] [--threads T] [--device cpu|cuda] [--weights ema|raw]\n"
    "       trainer eval --ckpt DIR --vae VAE_DIR --images GLOB [--text DIR] [--prompts FILE] [--n 64]\n"
    "                    [--timesteps 4] [--candidates 16] [--text-docs 64] [--seed S] [--out EVAL.json]\n"
    "                    [--steps D] [--sampler ddpm|ddim] [--cfg G] [--context C] [--threads T] [--device cpu|cuda] [--weights ema|raw]\n"
    "       trainer sample-bench --config MODEL.json [--n K] [--prompt-len P] [--tokens M] [--steps D] [--cfg G]\n"
    "                       [--seed S] [--threads T] [--device cpu|cuda]\n";

int main(int argc, char **argv) {
    static const char *const init_flags[] = {"config", "out", "seed", NULL};
    static const char *const loss_flags[] = {"ckpt", "batch", "grads", "threads", "device", NULL};
    static const char *const bench_flags[] = {"config", "batch-rows", "seq-len", "steps", "threads", "seed", "device",
                                              "peak-tflops", "batch", NULL};
    static const char *const train_flags[] = {"config", "batch-rows", "grad-accum", "seq-len", "steps", "threads",
                                              "seed", "lr", "warmup", "log-every", "no-zero!", "no-overlap!", "loader", "out",
                                              "ckpt-dir", "ckpt-every", "keep", "keep-every", "resume", "init-from", "model",
                                              "device", "ema", "eval-every", "eval-images", "eval-text", "eval-prompts",
                                              "eval-n", "eval-sampler-steps", "vae", NULL};
    static const char *const export_flags[] = {"ckpt", "out", "dtype", "weights", NULL};
    static const char *const sample_flags[] = {"ckpt", "vae", "tokenizer", "prompt", "out", "n", "seed", "max-tokens",
                                               "temperature", "top-p", "top-k", "steps", "sampler", "eta", "cfg",
                                               "clip", "image!", "context", "no-cache!", "threads", "device", "weights", NULL};
    /* caption: every flag takes a value (its --image list is read by scanning argv) */
    static const char *const caption_flags[] = {"ckpt", "vae", "tokenizer", "image", "prompt", "max-tokens",
                                                "temperature", "top-p", "top-k", "seed", "context", "threads", "device",
                                                "weights", "min-tokens", NULL};
    static const char *const sbench_flags[] = {"config", "n", "prompt-len", "tokens", "steps", "cfg", "seed",
                                               "threads", "device", NULL};
    static const command cmds[] = {
        {"init", cmd_init, init_flags}, {"loss", cmd_loss, loss_flags},
        {"bench", cmd_bench, bench_flags}, {"train", trainer_cmd_train, train_flags},
        {"export", cmd_export, export_flags}, {"sample", trainer_cmd_sample, sample_flags},
        {"caption", trainer_cmd_caption, caption_flags}, {"sample-bench", trainer_cmd_sample_bench, sbench_flags},
        {"eval", trainer_cmd_eval, eval_flags},
    };
    nn_startup(argv);
    dist_init(&argc, &argv);            /* MPI only when started by mpirun */
    int rc = cli_main("trainer", argc, argv, cmds, sizeof cmds / sizeof *cmds, usage);
    dist_finalize();
    return rc;
}
