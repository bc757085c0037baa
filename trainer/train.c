/* train.c - `trainer train`: a data-parallel training run.
 *
 * Each rank takes its rows of every step (rows.h: the dataloader, or one
 * generated global batch) and draws the step's noise, one step ahead on a
 * host thread (step_feed.h), runs forward and backward
 * with the loss normalized by the step's global counts, and the gradients are
 * reduced and applied by data_parallel.h (ZeRO-1 by default). Checkpoints
 * (checkpoint/ckpt.h) are written every --ckpt-every steps, at the end, and
 * when a rank gets SIGTERM, SIGINT or SIGUSR1 (the step is finished, saved,
 * and the run exits 0); --resume auto|PATH continues bitwise where a
 * checkpoint left off, on the same or another number of ranks. With --ema,
 * each rank keeps the moving average of the tensors of its checkpoint shard
 * (nn/optim.h), updated after every step and saved with the weights. Rank 0
 * prints one line per step and appends it as JSON to CKPT_DIR/metrics.jsonl.
 * With --eval-every K, every K-th step and the last are saved and measured
 * on held-out data by `trainer eval` (eval.h), in-process on all ranks; the
 * figures are appended to metrics.jsonl as {"step":S,"time_s":..,"eval":{..}}. */
#include "train.h"
#include "../nn/data_parallel.h"
#include "eval.h"
#include "model.h"
#include "rows.h"
#include "session.h"
#include "step_feed.h"
#include "../checkpoint/ckpt.h"
#include "../nn/stop_signal.h"
#include "../common/error.h"
#include "../common/finite.h"
#include "../common/json_file.h"
#include "../common/timing.h"
#include "../nn/dist.h"
#include "../nn/backend.h"
#include "../nn/kernels.h"
#include "../common/dir.h"

#include <errno.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int steps, warmup, log_every, B, A, L, ckpt_every, keep, keep_every, eval_every, max_bad;
    float lr, ema; /* ema: --ema's decay, 0 when not given */
    unsigned long long seed;
    const char *loader, *ckpt_dir, *resume, *out, *init_from;
} run_options;

/* trainer_state.json: what a resumed run needs besides weights, Adam and
 * the EMA's tensors. */
static cJSON *run_state(const run_options *o, const row_source *rows, const weight_ema *ema, long step, int world) {
    cJSON *s = cJSON_CreateObject();
    if (ema->avg) {
        cJSON *e = cJSON_AddObjectToObject(s, "ema");
        cJSON_AddNumberToObject(e, "decay", ema->decay);
        cJSON_AddNumberToObject(e, "updates", (double)ema->updates);
    }
    cJSON_AddNumberToObject(s, "positions_seen", (double)step * world * o->A * o->B * o->L);
    cJSON *sched = cJSON_AddObjectToObject(s, "lr_schedule");
    cJSON_AddNumberToObject(sched, "lr", o->lr);
    cJSON_AddNumberToObject(sched, "warmup_steps", o->warmup);
    cJSON_AddNumberToObject(sched, "total_steps", o->steps);
    cJSON_AddNumberToObject(sched, "min_lr_ratio", optim_defaults(o->lr, 0, 0).min_lr_ratio);
    cJSON_AddNumberToObject(s, "seed", (double)o->seed);
    cJSON_AddStringToObject(s, "precision", nn_current_backend()->precision);
    cJSON_AddNumberToObject(s, "grad_accum", o->A);
    cJSON_AddNumberToObject(s, "rows_per_rank", o->B);
    cJSON_AddNumberToObject(s, "seq_len", o->L);
    const cJSON *info = rows_loader_info(rows);
    if (info) {
        cJSON *l = cJSON_AddObjectToObject(s, "loader");
        cJSON_AddStringToObject(l, "endpoint", o->loader);
        cJSON_AddItemToObject(l, "info", cJSON_Duplicate(info, 1));
    }
    return s;
}

/* The loader fingerprint (dataset + tokenizer + packing) in a loader info. */
static const char *fingerprint_of(const cJSON *info) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(info, "fingerprint");
    return cJSON_IsString(f) ? f->valuestring : NULL;
}

/* Loads weights and this rank's Adam part from an open checkpoint.
 * A run resumes only on the data it was trained on: its rows of step s must
 * be the rows it would have had. */
static void resume_from(ckpt_reader *rd, const char *path, const row_source *rows, model *m, optimizer *opt) {
    char err[ERR_LEN];
    if (ckpt_load_training(rd, &m->ps, opt, err)) die_input("--resume: %s", err);
    model_upload_weights(m);
    const cJSON *was = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rd->state, "loader"), "info");
    const char *then = fingerprint_of(was), *now = fingerprint_of(rows_loader_info(rows));
    if ((then || now) && !(then && now && strcmp(then, now) == 0))
        die_input("--resume %s: trained on loader data %s, but the loader now serves %s", path,
                  then ? then : "(none: generated rows)", now ? now : "(none: generated rows)");
    if (dist_rank() == 0)
        fprintf(stderr, "resuming %s at step %ld (written by %d ranks)\n", path, rd->step, rd->world_size);
}

/* The EMA, none when ema->avg stays NULL: continued from the checkpoint when
 * it holds one (with --ema's decay if given, else its own), else started by
 * the next step when --ema asks for one. rd is NULL for a fresh start. */
static void start_ema(weight_ema *ema, const run_options *o, const ckpt_reader *rd, const model *m) {
    char err[ERR_LEN];
    float decay = o->ema;
    long updates = 0;
    if (rd && rd->has_ema) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(rd->state, "ema");
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(st, "decay"),
                    *u = cJSON_GetObjectItemCaseSensitive(st, "updates");
        if (!cJSON_IsNumber(d) || !(d->valuedouble > 0 && d->valuedouble < 1) || !cJSON_IsNumber(u) ||
            u->valuedouble < 0)
            die_input("--resume %s: trainer_state.json: an EMA needs ema.decay in (0, 1) and ema.updates", rd->dir);
        if (dist_rank() == 0 && decay && decay != (float)d->valuedouble)
            fprintf(stderr, "EMA: decay %g from now on (the checkpoint's was %g)\n", decay, d->valuedouble);
        if (!decay) decay = (float)d->valuedouble;
        updates = (long)u->valuedouble;
    } else if (rd && decay && dist_rank() == 0) {
        fprintf(stderr, "EMA: %s holds none; it starts at the weights of step %ld\n", rd->dir, rd->step + 1);
    }
    if (!decay) return;
    size_t off, n;
    ckpt_shard_range(&m->ps, dist_rank(), dist_size(), &off, &n);
    ema_create(ema, decay, off, n);
    ema->updates = updates;
    if (!updates) return;
    float *all = xmalloc(sizeof(float) * m->ps.numel), *avg = ema_host(ema, 0);
    if (ckpt_load_ema(rd, &m->ps, all, err)) die_input("--resume: %s", err);
    memcpy(avg, all + off, sizeof(float) * n);
    ema_host_release(ema, avg, 1);
    free(all);
}

/* Stops the run rather than write a checkpoint that holds a NaN or an
 * infinity: a run resumed from it could never recover. x holds n floats
 * from flat offset `off` of ps (a rank's part, or all of it). */
static void refuse_nonfinite(const param_set *ps, const float *x, size_t off, size_t n, long step, const char *what) {
    long long k = first_nonfinite(x, n);
    if (k < 0) return;
    size_t at = off + (size_t)k;
    int i = 0;
    while (i + 1 < ps->n && ps->info[i].offset + ps->info[i].numel <= at) i++;
    die("step %ld: the %s of tensor %s hold a NaN or an infinity; no checkpoint written", step, what, ps->info[i].name);
}

static void save(const run_options *o, const row_source *rows, model *m, const optimizer *opt, const weight_ema *ema,
                 long step) {
    char err[ERR_LEN];
    cJSON *state = run_state(o, rows, ema, step, dist_size());
    const cJSON *info = rows_loader_info(rows);
    ckpt_extra extras[2];
    int n = 0;
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(info, "tokenizer_path");
    const cJSON *stats = cJSON_GetObjectItemCaseSensitive(info, "latent_stats_path");
    if (cJSON_IsString(tok)) extras[n++] = (ckpt_extra){"tokenizer.model", tok->valuestring};
    if (cJSON_IsString(stats)) extras[n++] = (ckpt_extra){"latent_stats.json", stats->valuestring};
    float *mom1, *mom2, *avg = ema->avg ? ema_host(ema, 1) : NULL;
    model_download(m, 1, 0);
    optim_host_moments(opt, &mom1, &mom2, 1);
    refuse_nonfinite(&m->ps, m->ps.w, 0, m->ps.numel, step, "weights");
    refuse_nonfinite(&m->ps, mom1, opt->off, opt->n, step, "Adam moments");
    refuse_nonfinite(&m->ps, mom2, opt->off, opt->n, step, "Adam moments");
    if (avg) refuse_nonfinite(&m->ps, avg, ema->off, ema->n, step, "EMA");
    cJSON *config = config_json(&m->cfg);
    ckpt_save_request r = {.ps = &m->ps,
                           .config = config,
                           .step = step,
                           .opt_offset = opt->off,
                           .opt_count = opt->n,
                           .m = mom1,
                           .v = mom2,
                           .ema = avg,
                           .state = state,
                           .extras = extras,
                           .n_extras = n,
                           .keep = o->keep,
                           .keep_every = o->keep_every};
    double t0 = now_s();
    /* A failed save must never end in a run that looks successful. */
    if (ckpt_save(o->ckpt_dir, &r, err)) die("checkpoint at step %ld not saved: %s", step, err);
    if (dist_rank() == 0) fprintf(stderr, "saved %s/step_%08ld in %.2f s\n", o->ckpt_dir, step, now_s() - t0);
    cJSON_Delete(state);
    cJSON_Delete(config);
    optim_host_release(opt, mom1, mom2, 0);
    if (avg) ema_host_release(ema, avg, 0);
}

/* --eval-every's inputs, checked before the first step rather than at the
 * first evaluation, an hour in. */
static void check_eval_inputs(const args *a, const run_options *o) {
    const char *images = arg_str(a, "eval-images"), *vae = arg_str(a, "vae");
    const char *text = arg_str(a, "eval-text"), *prompts = arg_str(a, "eval-prompts");
    if (!o->ckpt_dir || !images || !vae)
        die_input("trainer train: --eval-every needs --ckpt-dir, --eval-images GLOB and --vae VAE_DIR");
    glob_t g;
    int none = glob(images, 0, NULL, &g) != 0;
    globfree(&g);
    if (none) die_input("trainer train: --eval-images %s: no such files", images);
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", vae);
    if (access(path, R_OK))
        die_input("trainer train: --vae %s: no config.json (a VAE folder of vae_service train)", vae);
    if (text && access(text, R_OK)) die_input("trainer train: --eval-text %s: cannot read: %s", text, strerror(errno));
    if (prompts && access(prompts, R_OK))
        die_input("trainer train: --eval-prompts %s: cannot read: %s", prompts, strerror(errno));
}

/* `trainer eval` on the step folder just saved (every rank takes part), its
 * figures appended to metrics.jsonl by rank 0. */
static void eval_saved_step(const args *a, const run_options *o, long step, FILE *metrics, double time_s) {
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/step_%08ld", o->ckpt_dir, step);
    const char *argv[20];
    int n = 0;
    argv[n++] = "--ckpt";
    argv[n++] = dir;
    argv[n++] = "--vae";
    argv[n++] = arg_str(a, "vae");
    argv[n++] = "--images";
    argv[n++] = arg_str(a, "eval-images");
    argv[n++] = "--n";
    argv[n++] = arg_str(a, "eval-n");
    argv[n++] = "--steps";
    argv[n++] = arg_str(a, "eval-sampler-steps");
    if (arg_given(a, "eval-text")) {
        argv[n++] = "--text";
        argv[n++] = arg_str(a, "eval-text");
    }
    if (arg_given(a, "eval-prompts")) {
        argv[n++] = "--prompts";
        argv[n++] = arg_str(a, "eval-prompts");
    }
    args ea = {n, (char **)argv, a->prog, &eval_command};
    cJSON *figures = eval_run(&ea);
    if (metrics) {
        char *text = cJSON_PrintUnformatted(figures);
        fprintf(metrics, "{\"step\":%ld,\"time_s\":%.3f,\"eval\":%s}\n", step, time_s, text);
        fflush(metrics);
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(figures, "diffusion_loss");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(figures, "captioning");
        printf("eval at step %ld: diffusion %.5f, caption gain %.2f%%, image gain %.2f%%, retrieval top-1 %.1f%% (%.0f "
               "s)\n",
               step, cJSON_GetObjectItemCaseSensitive(d, "own_caption")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(d, "caption_gain_pct")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(c, "image_gain_pct")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(c, "retrieval_top1_pct")->valuedouble,
               cJSON_GetObjectItemCaseSensitive(figures, "seconds")->valuedouble);
        fflush(stdout);
        cJSON_free(text);
    }
    cJSON_Delete(figures);
}

static FILE *open_metrics(const char *dir) {
    char path[4096], err[ERR_LEN];
    if (make_dir(dir, err)) die_input("%s", err);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "a+");
    if (!f) die_input("%s: cannot append: %s", path, strerror(errno));
    /* A run killed mid-line left a torn last line: end it, so the lines this
     * run appends stay whole. */
    if (fseek(f, -1, SEEK_END) == 0 && fgetc(f) != '\n') fputc('\n', f);
    return f;
}

/* --precision if given; else on the CPU bf16 (its 2,000-step held-out
 * losses were within 0.4% of float32's: docs/conventions.md), or a resumed
 * run's own (fp32 for checkpoints from before it was recorded), so that a
 * resumed run computes as it did; on a GPU its backend's. */
static const char *train_precision(const args *a, const ckpt_reader *rd) {
    const char *given = arg_given(a, "precision") ? arg_str(a, "precision") : NULL;
    const cJSON *was = rd ? cJSON_GetObjectItemCaseSensitive(rd->state, "precision") : NULL;
    const char *then = cJSON_IsString(was) ? was->valuestring : rd ? "fp32" : NULL;
    if (was && !(cJSON_IsString(was) && (strcmp(then, "fp32") == 0 || strcmp(then, "bf16") == 0)))
        die_input("--resume %s: trainer_state.json: precision: expected \"fp32\" or \"bf16\"", rd->dir);
    if (given && then && strcmp(given, then) != 0 && dist_rank() == 0)
        fprintf(stderr, "precision: %s from now on (the checkpoint was trained in %s)\n", given, then);
    if (given || strcmp(arg_str(a, "device"), "cuda") == 0) return given;
    return then ? then : "bf16";
}

static int cmd_train(const args *a) {
    run_options o = {
        .steps = (int)arg_int(a, "steps"),
        .warmup = (int)arg_int(a, "warmup"),
        .log_every = (int)arg_int(a, "log-every"),
        .B = (int)arg_int(a, "batch-rows"),
        .A = (int)arg_int(a, "grad-accum"),
        .L = (int)arg_int(a, "seq-len"),
        .ckpt_every = (int)arg_int(a, "ckpt-every"),
        .keep = (int)arg_int(a, "keep"),
        .keep_every = (int)arg_int(a, "keep-every"),
        .lr = (float)arg_num(a, "lr"),
        .seed = (unsigned long long)arg_int(a, "seed"),
        .loader = arg_str(a, "loader"),
        .ckpt_dir = arg_str(a, "ckpt-dir"),
        .resume = arg_str(a, "resume"),
        .out = arg_str(a, "out"),
        .init_from = arg_str(a, "init-from"),
        .ema = arg_given(a, "ema") ? (float)arg_num(a, "ema") : 0.0f,
        .eval_every = arg_given(a, "eval-every") ? (int)arg_int(a, "eval-every") : 0,
        .max_bad = (int)arg_int(a, "max-bad-steps"),
    };
    if (!(o.ema < 1)) /* as a float, 0.99999999 is 1 */
        die_input("trainer train: --ema %s: expected a decay below 1, e.g. 0.999", arg_str(a, "ema"));
    /* The model: a config (fresh weights) or a checkpoint's (its weights, a
     * fresh optimizer). */
    char config_path[4096];
    if (o.init_from)
        snprintf(config_path, sizeof config_path, "%s/config.json", o.init_from);
    else {
        const char *json = arg_given(a, "model") ? arg_str(a, "model") : arg_str(a, "config");
        if (!json) die_input("trainer train: missing --model MODEL.json (or --init-from CKPT_DIR)");
        snprintf(config_path, sizeof config_path, "%s", json);
    }
    if (o.resume && !o.ckpt_dir) die_input("trainer train: --resume needs --ckpt-dir");
    if (o.eval_every) check_eval_inputs(a, &o);
    stop_signal_install(); /* before any thread starts: see stop_signal.h */
    char err[ERR_LEN], path[4096];
    int world = dist_size(), rank = dist_rank();

    /* Where to start: a checkpoint's step (read first: the loader is asked
     * from there, and the run keeps its precision), or 0. */
    long start = 0;
    int found = 1;
    ckpt_reader rd;
    if (o.resume) {
        found = ckpt_resolve(o.ckpt_dir, o.resume, path, sizeof path, err);
        if (found < 0) die_input("--resume %s: %s", o.resume, err);
        if (found == 0 && ckpt_open(&rd, path, err)) die_input("--resume: %s", err);
        if (found == 0) start = rd.step;
    }
    nn_init_device(arg_str(a, "device"), train_precision(a, found == 0 ? &rd : NULL), (int)arg_int(a, "threads"));
    model_set_ce_chunk((int)arg_int(a, "ce-chunk"));
    model_config c;
    row_source *rows;
    if (o.loader) {
        int lb, ll;
        if (!(rows = rows_open_loader(o.loader, arg_str(a, "loader-key"), config_path, o.A, start, &c, &lb, &ll, err)))
            die_input("%s", err);
        if ((arg_given(a, "batch-rows") && lb != o.B) || (arg_given(a, "seq-len") && ll != o.L))
            die_input("trainer train: --batch-rows %d --seq-len %d, but the loader at %s serves %d rows of %d", o.B,
                      o.L, o.loader, lb, ll);
        o.B = lb;
        o.L = ll;
    } else {
        if (config_load(config_path, &c, err)) die_input("%s", err);
        rows = rows_open_generated(&c, o.A, o.B, o.L, o.seed);
    }
    model m;
    model_create(&m, &c);
    model_init_weights(&m, o.seed);
    if (o.init_from && params_load_dir(&m.ps, o.init_from, err)) die_input("--init-from: %s", err);
    model_upload_weights(&m);
    data_parallel dp;
    dp_init(&dp, &m.dev, !arg_switch(a, "no-zero"), !arg_switch(a, "no-overlap"));
    optimizer opt;
    dp_optimizer(&dp, &opt, optim_defaults(o.lr, o.warmup, o.steps));
    weight_ema ema = {0};
    if (found == 0) resume_from(&rd, path, rows, &m, &opt);
    start_ema(&ema, &o, found == 0 ? &rd : NULL, &m);
    if (found == 0) ckpt_close(&rd);
    FILE *metrics = rank == 0 && o.ckpt_dir ? open_metrics(o.ckpt_dir) : NULL;
    char ema_txt[32] = "off";
    if (ema.avg) snprintf(ema_txt, sizeof ema_txt, "decay %g", ema.decay);
    if (rank == 0)
        printf("training %zu parameters on %s: %d ranks x %d accumulation steps x %d rows x %d positions, "
               "%s %s, ZeRO-1 %s, EMA %s, steps %ld..%d\n",
               m.ps.numel, o.loader ? o.loader : "generated rows", world, o.A, o.B, o.L, nn_current_backend()->name,
               nn_current_backend()->precision, dp.zero ? "on" : "off", ema_txt, start + 1, o.steps);

    double first = 0, loss = 0, t0 = now_s();
    int bad_run = 0, diverged = 0; /* steps in a row whose update was skipped */
    /* Ahead on a device backend, whose host threads idle while it runs. */
    step_feed *feed = step_feed_start(rows, &m, o.A, o.B, o.seed, rank, start, o.steps, !nn_host_memory());
    for (long s = start; s < o.steps; s++) {
        double ts = now_s(), wait; /* for the step's input (or to prepare it) */
        step_input in;
        if (step_feed_next(feed, &in, &wait, err)) die("%s", err);
        /* The loss is normalized by the counts of the whole step
         * (docs/model.md section 5): every micro-batch of every rank. */
        int64_t counts[2] = {in.counts[0], in.counts[1]};
        double sums[2] = {0, 0};
        dist_allreduce_sum_i64(counts, 2);
        nn_zero(m.dev.g, m.ps.numel);
        for (int j = 0; j < o.A; j++) {
            if (j == o.A - 1) dp_start_reduction(&dp, &m.grad_ready);
            loss_sums ls = model_step(&m, &in.plans[j], (double)counts[0], (double)counts[1], 1);
            sums[0] += ls.ce_sum;
            sums[1] += ls.se_sum;
        }
        step_input_free(&in, o.A);
        double gnorm = dp_finish_reduction(&dp);
        double totals[5] = {sums[0], sums[1], in.flops, wait, dp.wait_s};
        dp.wait_s = 0;
        dist_allreduce_sum_f64(totals, 5);
        double lm = counts[0] ? totals[0] / counts[0] : 0, diff = counts[1] ? totals[1] / counts[1] : 0;
        loss = lm + c.lambda_diffusion * diff;
        if (s == start) first = loss;
        /* An update from a non-finite loss or gradient would poison the
         * weights for good: it is skipped, on every rank alike (both figures
         * are global), and a run that keeps producing them stops. */
        float lr = 0;
        if (isfinite(loss) && isfinite(gnorm)) {
            lr = dp_update(&dp, &opt, gnorm);
            if (ema.avg) ema_step(&ema, m.dev.w); /* after the all-gather: it reads whole tensors */
            bad_run = 0;
        } else {
            /* The step still counts: the schedule, and a resume (which sets
             * the optimizer's step from the checkpoint's), stay in step. */
            opt.step++;
            if (rank == 0)
                fprintf(stderr, "step %ld: loss %g, gradient norm %g: not finite, update skipped (%d in a row of %d)\n",
                        s + 1, loss, gnorm, bad_run + 1, o.max_bad);
        }
        if (!(isfinite(loss) && isfinite(gnorm)) && ++bad_run >= o.max_bad) {
            if (rank == 0)
                fprintf(
                    stderr,
                    "error: trainer train: %d steps in a row had a non-finite loss or gradient norm (--max-bad-steps); "
                    "stopped after step %ld without saving it (lower --lr, or check the data)\n",
                    bad_run, s + 1);
            diverged = 1;
            break;
        }
        double dt = now_s() - ts, pos_s = (double)world * o.A * o.B * o.L / dt, gflops = totals[2] / dt / 1e9;
        if (rank == 0 && ((s + 1) % o.log_every == 0 || s == start || s + 1 == o.steps)) {
            printf("step %4ld/%d  loss %.9f  lm %.6f  diffusion %.6f  lr %.2e  grad_norm %.4f  "
                   "%.0f positions/s  %.1f GFLOP/s  data %.3f s  %.1f s\n",
                   s + 1, o.steps, loss, lm, diff, lr, gnorm, pos_s, gflops, totals[3] / world, now_s() - t0);
            fflush(stdout);
        }
        if (metrics) {
            char b[4][32]; /* JSON has no NaN: a non-finite figure is null */
            fprintf(metrics,
                    "{\"step\":%ld,\"loss\":%s,\"lm_loss\":%s,\"diffusion_loss\":%s,\"lr\":%.6g,"
                    "\"grad_norm\":%s,\"positions_per_s\":%.1f,\"gflops_per_s\":%.2f,\"data_wait_s\":%.4f,"
                    "\"reduce_wait_s\":%.4f,\"step_s\":%.4f,\"time_s\":%.3f%s}\n",
                    s + 1, json_num(b[0], loss), json_num(b[1], lm), json_num(b[2], diff), lr, json_num(b[3], gnorm),
                    pos_s, gflops, totals[3] / world, totals[4] / world, dt, now_s() - t0,
                    bad_run ? ",\"skipped\":true" : "");
            fflush(metrics);
        }
        int stop = stop_signal_any_rank();
        int evaluate = o.eval_every && ((s + 1) % o.eval_every == 0 || s + 1 == o.steps);
        if (o.ckpt_dir && (stop || evaluate || s + 1 == o.steps || (o.ckpt_every && (s + 1) % o.ckpt_every == 0)))
            save(&o, rows, &m, &opt, &ema, s + 1);
        if (evaluate && !stop) eval_saved_step(a, &o, s + 1, metrics, now_s() - t0);
        if (stop) {
            if (rank == 0) fprintf(stderr, "stopped by a signal after step %ld\n", s + 1);
            break;
        }
    }
    step_feed_stop(feed);
    if (rank == 0 && start < o.steps && !diverged) printf("loss %.4f -> %.4f\n", first, loss);
    if (o.out && !diverged) model_download(&m, 1, 0);
    if (o.out && !diverged && rank == 0 && model_save(&m, o.out, err)) die("%s", err);
    if (metrics) fclose(metrics);
    rows_close(rows);
    optim_free(&opt);
    ema_free(&ema);
    dp_free(&dp);
    model_free(&m);
    return diverged;
}

static const cli_flag train_flags[] = {
    {"model", FLAG_TEXT, "MODEL.json", NULL, NULL, "the model's config: fresh weights"},
    {"config", FLAG_TEXT, "MODEL.json", NULL, NULL, "the same as --model (the name `trainer init` uses)"},
    {"init-from", FLAG_TEXT, "CKPT_DIR", NULL, NULL,
     "start from a checkpoint's weights (and config), a fresh optimizer"},
    {"loader", FLAG_TEXT, "tcp://HOST:PORT", NULL, NULL,
     "the dataloader (default: generated rows, for tests and benchmarks)"},
    {"loader-key", FLAG_TEXT, "FILE", NULL, NULL, "the loader's public key (server.pub of `dataloader keygen`): CURVE"},
    {"steps", FLAG_INT, "N", "[1, inf)", "300", "optimizer steps (the learning rate's schedule ends there)"},
    {"batch-rows", FLAG_INT, "B", "[1, inf)", "4", "rows per rank and micro-batch (the loader's, when given)"},
    {"grad-accum", FLAG_INT, "A", "[1, inf)", "1", "micro-batches per optimizer step"},
    {"seq-len", FLAG_INT, "L", "[2, inf)", "128", "positions per row (the loader's, when given)"},
    {"lr", FLAG_NUM, "LR", "(0, inf)", "1e-3", "peak learning rate (AdamW, linear warm-up, cosine decay)"},
    {"warmup", FLAG_INT, "W", "[0, inf)", "20", "warm-up steps"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights, the noise and the generated rows"},
    {"ema", FLAG_NUM, "DECAY", "(0, 1)", NULL, "keep a moving average of the weights, e.g. 0.999 (sampling uses it)"},
    {"no-zero", FLAG_SWITCH, NULL, NULL, NULL, "every rank keeps the whole optimizer state (no ZeRO-1)"},
    {"no-overlap", FLAG_SWITCH, NULL, NULL, NULL, "reduce the gradients after backward, not during it"},
    {"log-every", FLAG_INT, "K", "[1, inf)", "10", "print a step line every K steps"},
    {"out", FLAG_TEXT, "DIR", NULL, NULL, "write the final weights here (a consolidated checkpoint)"},
    {"ckpt-dir", FLAG_TEXT, "DIR", NULL, NULL, "the run's folder: step folders and metrics.jsonl"},
    {"ckpt-every", FLAG_INT, "K", "[0, inf)", "0", "save every K steps (0: at the end and on a stop signal only)"},
    {"keep", FLAG_INT, "N", "[0, inf)", "3", "newest step folders kept (0: all)"},
    {"keep-every", FLAG_INT, "M", "[0, inf)", "0", "also keep every step that is a multiple of M"},
    {"resume", FLAG_TEXT, "auto|STEP_DIR", NULL, NULL, "continue from the newest good step of --ckpt-dir, or this one"},
    {"max-bad-steps", FLAG_INT, "N", "[1, inf)", "5",
     "stop (exit 1) after N steps in a row with a non-finite loss or gradient norm; their updates are skipped"},
    {"eval-every", FLAG_INT, "K", "[1, inf)", NULL, "save and run `trainer eval` every K steps and at the end"},
    {"eval-images", FLAG_TEXT, "GLOB", NULL, NULL, "--eval-every's held-out images"},
    {"vae", FLAG_TEXT, "VAE_DIR", NULL, NULL, "--eval-every's VAE"},
    {"eval-text", FLAG_TEXT, "DIR", NULL, NULL, "--eval-every's held-out text"},
    {"eval-prompts", FLAG_TEXT, "FILE", NULL, NULL, "--eval-every's generation prompts"},
    {"eval-n", FLAG_INT, "N", "[2, inf)", "64", "--eval-every's images"},
    {"eval-sampler-steps", FLAG_INT, "D", "[1, inf)", "50", "--eval-every's denoising steps"},
    {0},
};

const cli_command train_command = {
    "train",
    "trains the model: data-parallel ranks under mpirun, sharded checkpoints, exact resume",
    cmd_train,
    {train_flags, device_flags, cli_threads_flags}};
