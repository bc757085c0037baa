/* train.c - `vae_service train` and `vae_service eval`.
 *
 * train: the whole image set is decoded once into memory (8-bit, exact: the
 * decoder's floats are x / 127.5 - 1 of 8-bit pixels), then AdamW steps on
 * random batches, each image mirrored left-right with probability 1/2, with
 * L2 (or L1) reconstruction + kl_weight * KL (vae.h). Sample j of step s of
 * the global batch (--batch per rank x ranks) is drawn from (seed, s, j)
 * alone, so a run draws the same samples however it is split over ranks.
 * Under mpirun the gradients are averaged over ranks and the update is
 * split ZeRO-1 style by nn/data_parallel.h. Checkpoints are those of the
 * Transformer (checkpoint/ckpt.h): a step folder in --ckpt-dir (default
 * VAE_DIR/checkpoints) every --save-every steps, at the end and on SIGTERM,
 * SIGINT or SIGUSR1 (the step is finished and saved, and the run exits 0),
 * the newest --keep kept; --resume auto|STEP_DIR continues bitwise on the
 * same ranks, and on any other number of them. Each save also rewrites the
 * diffusers folder VAE_DIR (config.json, diffusion_pytorch_model.safetensors)
 * that encode, decode and serve read. Rank 0 logs.
 *
 * eval: mean PSNR of the reconstructions (decoded from the posterior mean)
 * over a dataset, and optionally a PNG grid of originals over
 * reconstructions for a person to look at. */
#include "commands.h"
#include "../vae/image_source.h"
#include "../vae/image_write.h"
#include "../vae/vae.h"
#include "../common/timing.h"
#include "../common/dir.h"
#include "../common/rng.h"
#include "../checkpoint/ckpt.h"
#include "../nn/data_parallel.h"
#include "../nn/dist.h"
#include "../nn/kernels.h"
#include "../nn/stop_signal.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ image set */

typedef struct {
    int n, size;
    uint8_t *pixels; /* [n, 3, size, size] */
} image_set;

/* A training sample: image [3, size, size], mirrored left-right when flip. */
static void to_float_sample(float *dst, const uint8_t *src, int size, int flip) {
    for (int row = 0; row < 3 * size; row++)
        for (int c = 0; c < size; c++)
            dst[(size_t)row * size + c] = src[(size_t)row * size + (flip ? size - 1 - c : c)] / 127.5f - 1.0f;
}

/* Decodes every good sample of spec; prints progress and the skip summary. */
static image_set load_image_set(const char *spec, int size) {
    char err[ERR_LEN], summary[512];
    image_source *src = image_source_open(spec, size, 0, 1, err);
    if (!src) die_input("%s", err);
    image_set s = {0, size, NULL};
    size_t per = (size_t)3 * size * size, cap = 0;
    image_sample smp;
    double t0 = now_s();
    while (image_source_next(src, &smp) == 1) {
        if ((size_t)s.n == cap) {
            cap = cap ? 2 * cap : 1024;
            s.pixels = realloc(s.pixels, cap * per);
            if (!s.pixels) die("out of memory loading images");
        }
        for (size_t k = 0; k < per; k++) s.pixels[(size_t)s.n * per + k] = image_u8(smp.rgb[k]);
        if (++s.n % 2000 == 0) fprintf(stderr, "loaded %d images (%.0f/s)\n", s.n, s.n / (now_s() - t0));
    }
    image_source_summary(src, summary, sizeof summary);
    fprintf(stderr, "images: %s\n", summary);
    image_source_close(src);
    if (s.n == 0) die_input("%s: no usable images", spec);
    return s;
}

/* ----------------------------------------------------------- checkpoints */

typedef struct {
    const char *out, *ckpt_dir;
    int keep;
    uint64_t seed;
} run_files;

/* Collective. A checkpoint step folder (checkpoint/ckpt.h: atomic, verified,
 * resumable on any number of ranks), then the diffusers folder that encode,
 * decode and serve read, rewritten from the same weights by rank 0. */
static void save(const run_files *f, vae_model *v, const optimizer *o, long step) {
    char err[ERR_LEN];
    param_set *ps = vae_params(v);
    cJSON *config = vae_config_json(vae_cfg(v)), *state = cJSON_CreateObject();
    cJSON_AddNumberToObject(state, "seed", (double)f->seed);
    float *m, *mv;
    optim_host_moments(o, &m, &mv, 1);
    ckpt_save_request r = {.ps = ps,
                           .config = config,
                           .step = step,
                           .opt_offset = o->off,
                           .opt_count = o->n,
                           .m = m,
                           .v = mv,
                           .state = state,
                           .keep = f->keep};
    /* A failed save must never end in a run that looks successful. */
    if (ckpt_save(f->ckpt_dir, &r, err)) die("checkpoint at step %ld not saved: %s", step, err);
    optim_host_release(o, m, mv, 0);
    if (dist_rank() == 0 && vae_save(v, f->out, err)) die("%s", err);
    cJSON_Delete(config);
    cJSON_Delete(state);
}

/* The step folder --resume names (auto: the newest that verifies), or NULL
 * for a fresh start; *c gets its config. */
static const char *resume_path(const run_files *f, const char *spec, char *path, size_t len, vae_config *c) {
    char err[ERR_LEN], cfg[4096 + 16];
    int found = ckpt_resolve(f->ckpt_dir, spec, path, len, err);
    if (found < 0) die_input("--resume %s: %s", spec, err);
    if (found > 0) return NULL;
    snprintf(cfg, sizeof cfg, "%s/config.json", path);
    if (vae_config_load(cfg, c, err)) die_input("--resume: %s", err);
    return path;
}

/* Weights, this rank's Adam part and the step from the step folder. */
static void resume_from(const char *path, vae_model *v, optimizer *o, uint64_t *seed) {
    char err[ERR_LEN];
    ckpt_reader rd;
    if (ckpt_open(&rd, path, err) || ckpt_load_training(&rd, vae_params(v), o, err)) die_input("--resume: %s", err);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(rd.state, "seed");
    if (!cJSON_IsNumber(s) || s->valuedouble < 0) die_input("--resume %s: trainer_state.json: no seed", path);
    *seed = (uint64_t)s->valuedouble;
    if (dist_rank() == 0)
        fprintf(stderr, "resuming %s at step %ld (written by %d ranks)\n", path, rd.step, rd.world_size);
    ckpt_close(&rd);
}

/* Sample j of step s of the global batch: an image, mirrored or not, and its
 * latent noise, drawn from (seed, s, j) alone, so that any split of the
 * global batch over ranks draws the same samples. */
static void draw_sample(const image_set *set, uint64_t seed, long s, long j, float *x, float *eps, size_t lat) {
    rng r;
    rng_seed(&r, rng_key(rng_key(seed, (uint64_t)s), (uint64_t)j));
    uint64_t draw = rng_u64(&r);
    to_float_sample(x, set->pixels + (draw >> 1) % set->n * (size_t)3 * set->size * set->size, set->size,
                    (int)(draw & 1));
    for (size_t k = 0; k < lat; k++) eps[k] = (float)rng_normal(&r);
}

/* ---------------------------------------------------------------- train */

vae_loss_kind vae_loss_arg(const args *a) { return strcmp(arg_str(a, "loss"), "l1") == 0 ? VAE_LOSS_L1 : VAE_LOSS_L2; }

int vae_bf16_arg(const args *a) { return strcmp(arg_str(a, "precision"), "bf16") == 0; }

static int cmd_train(const args *a) {
    const char *out = arg_str(a, "out"), *resume = arg_str(a, "resume");
    int size = (int)arg_int(a, "size"), steps = (int)arg_int(a, "steps");
    int batch = (int)arg_int(a, "batch"), log_every = (int)arg_int(a, "log-every");
    int save_every = (int)arg_int(a, "save-every");
    /* --stop-at: end after that step as if interrupted (time-sliced jobs, resume tests). */
    long stop_at = arg_given(a, "stop-at") ? arg_int(a, "stop-at") : steps;
    /* lr 1e-3 and L2: on the 64 px set, 2e-3 and L1 (the first recipe) ended
     * 1 dB and 0.4 dB lower after the same steps (docs/conventions.md). */
    float lr = (float)arg_num(a, "lr"), kl_weight = (float)arg_num(a, "kl-weight");
    vae_loss_kind loss = vae_loss_arg(a);
    char err[ERR_LEN], ckpt_dir[4096], path[4096];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/checkpoints", out);
    run_files files = {out, arg_given(a, "ckpt-dir") ? arg_str(a, "ckpt-dir") : ckpt_dir, (int)arg_int(a, "keep"),
                       (uint64_t)arg_int(a, "seed")};
    if (make_dir(out, err)) die_input("%s", err); /* every rank: the checkpoints go inside */
    stop_signal_install();                        /* before any thread starts: see nn/stop_signal.h */
    nn_init((int)arg_int(a, "threads"));

    vae_config c;
    const char *from = resume ? resume_path(&files, resume, path, sizeof path, &c) : NULL;
    if (!from && !arg_given(a, "config")) die_input("vae_service train: missing --config (no checkpoint to resume)");
    if (!from && vae_config_load(arg_str(a, "config"), &c, err)) die_input("%s", err);
    vae_model *v = vae_create(&c);
    if (!from) vae_init_weights(v, files.seed);
    /* bf16 convolutions by default: 1.4x the steps in the same time, and
     * within 0.1 dB of float32 at equal steps (docs/conventions.md). */
    vae_set_bf16(v, vae_bf16_arg(a));
    int f = vae_downscale(&c);
    if (size % f) die_input("vae_service train: --size %d is not a multiple of the VAE's downscale %d", size, f);
    param_set *ps = vae_params(v);
    data_parallel dp;
    dp_init(&dp, ps, 1, 1);
    int rank = dp.rank, ranks = dp.world;
    optim_config oc = optim_defaults(lr, steps / 20 + 1, steps);
    oc.weight_decay = 0.0f; /* a small conv VAE: no decay, as diffusers' VAE training */
    optimizer o;
    dp_optimizer(&dp, &o, oc);
    if (from) resume_from(from, v, &o, &files.seed);

    image_set set = load_image_set(arg_str(a, "data"), size);
    size_t per = (size_t)3 * size * size, lat = (size_t)c.latent_channels * (size / f) * (size / f);
    float *x = xmalloc(sizeof(float) * batch * per), *eps = xmalloc(sizeof(float) * batch * lat);
    if (rank == 0)
        fprintf(stderr, "training %zu parameters on %d images of %dx%d, batch %d x %d ranks, %d steps\n", ps->numel,
                set.n, size, size, batch, ranks, steps);
    double t0 = now_s(), acc_loss = 0, acc_psnr = 0;
    long start = o.step, seen = 0;
    int acc_n = 0, stop = 0;
    while (o.step < steps && o.step < stop_at && !stop) {
        for (int i = 0; i < batch; i++)
            draw_sample(&set, files.seed, o.step, (long)rank * batch + i, x + i * per, eps + i * lat, lat);
        nn_zero(ps->g, ps->numel);
        dp_start_reduction(&dp, NULL);
        vae_losses l = vae_train_step(v, x, eps, batch, size, size, loss, kl_weight, 1);
        /* Each rank's gradient is of its own mean; the step's is their mean,
         * and data_parallel sums over ranks. */
        if (ranks > 1) nn_scale(ps->g, 1.0f / ranks, ps->numel);
        double stats[2] = {l.loss, l.psnr};
        dist_allreduce_sum_f64(stats, 2);
        dp_update(&dp, &o, dp_finish_reduction(&dp));
        acc_loss += stats[0] / ranks;
        acc_psnr += stats[1] / ranks;
        acc_n++;
        seen += (long)batch * ranks;
        if (rank == 0 && (o.step % log_every == 0 || o.step == steps)) {
            double dt = now_s() - t0;
            printf("step %5ld/%d  loss %.4f  psnr %.2f dB  %.1f images/s  eta %.0f s\n", o.step, steps,
                   acc_loss / acc_n, acc_psnr / acc_n, seen / dt, (steps - o.step) * (dt / (o.step - start)));
            fflush(stdout);
            acc_loss = acc_psnr = 0;
            acc_n = 0;
        }
        stop = stop_signal_any_rank();
        if (stop || o.step % save_every == 0 || o.step == steps || o.step == stop_at) save(&files, v, &o, o.step);
    }
    if (rank == 0 && stop) fprintf(stderr, "stopped by a signal after step %ld\n", o.step);
    if (rank == 0) printf("saved %s\n", out);
    free(x);
    free(eps);
    free(set.pixels);
    optim_free(&o);
    dp_free(&dp);
    vae_free(v);
    return 0;
}

/* ----------------------------------------------------------------- eval */

static int cmd_eval(const args *a) {
    char err[ERR_LEN], summary[512];
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = vae_load(arg_str(a, "vae"), err);
    if (!v) die_input("%s", err);
    const vae_config *c = vae_cfg(v);
    int size = (int)arg_int(a, "size"), batch = (int)arg_int(a, "batch"), f = vae_downscale(c);
    if (size % f) die_input("vae_service eval: --size %d is not a multiple of the VAE's downscale %d", size, f);
    const char *grid = arg_str(a, "grid");
    image_source *src = image_source_open(arg_str(a, "data"), size, 0, 1, err);
    if (!src) die_input("%s", err);
    size_t per = (size_t)3 * size * size, lat = (size_t)c->latent_channels * (size / f) * (size / f);
    float *x = xmalloc(sizeof(float) * batch * per), *rec = xmalloc(sizeof(float) * batch * per);
    float *mean = xmalloc(sizeof(float) * batch * lat), *logvar = xmalloc(sizeof(float) * batch * lat);
    /* The grid: rows of GRID_COLS originals, each over a row of their
     * reconstructions (tiles of [size, size, 3]; unused ones stay black). */
    enum { GRID = 32, GRID_COLS = 8 };
    uint8_t *tiles = xcalloc(2 * GRID * per, 1);
    double psnr_sum = 0;
    long count = 0;
    image_sample smp;
    for (int done = 0; !done;) {
        int n = 0;
        while (n < batch && !(done = image_source_next(src, &smp) != 1))
            memcpy(x + n++ * per, smp.rgb, per * sizeof(float));
        if (n == 0) break;
        vae_encode(v, x, n, size, size, mean, logvar);
        vae_decode(v, mean, n, size / f, size / f, rec);
        for (int i = 0; i < n; i++, count++) {
            psnr_sum += vae_psnr(rec + i * per, x + i * per, per);
            if (count < GRID) {
                size_t tile = (count / GRID_COLS) * 2 * GRID_COLS + count % GRID_COLS;
                image_to_rgb8(tiles + tile * per, x + i * per, size, size);
                image_to_rgb8(tiles + (tile + GRID_COLS) * per, rec + i * per, size, size);
            }
        }
    }
    image_source_summary(src, summary, sizeof summary);
    fprintf(stderr, "images: %s\n", summary);
    image_source_close(src);
    if (count == 0) die_input("%s: no usable images", arg_str(a, "data"));
    printf("{\"images\":%ld,\"psnr_db\":%.3f}\n", count, psnr_sum / count);
    int shown = count < GRID ? (int)count : GRID, cols = shown < GRID_COLS ? shown : GRID_COLS;
    int rows = 2 * ((shown + GRID_COLS - 1) / GRID_COLS);
    if (cols < GRID_COLS) /* one short row pair: its reconstructions move up */
        memmove(tiles + cols * per, tiles + GRID_COLS * per, cols * per);
    if (grid && image_write_grid_png(grid, tiles, rows * cols, cols, size, size, err)) die("%s", err);
    free(x);
    free(rec);
    free(mean);
    free(logvar);
    free(tiles);
    vae_free(v);
    return 0;
}

static const cli_flag train_flags[] = {
    {"data", FLAG_TEXT | FLAG_REQUIRED, "SHARDS", NULL, NULL,
     "image-caption tar shards or folders (comma-separated paths or globs)"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL,
     "the VAE folder (diffusers AutoencoderKL), rewritten at each save"},
    {"config", FLAG_TEXT, "VAE.json", NULL, NULL, "the VAE's config (needed unless resuming)"},
    {"size", FLAG_INT, "S", "[8, inf)", "64", "image side in pixels (center-cropped and resized)"},
    {"steps", FLAG_INT, "N", "[1, inf)", "2000", "optimizer steps"},
    {"batch", FLAG_INT, "B", "[1, inf)", "8", "images per rank and step"},
    {"lr", FLAG_NUM, "LR", "(0, inf)", "1e-3",
     "peak learning rate (AdamW, warm-up over 5% of the steps, cosine decay)"},
    {"loss", FLAG_CHOICE, "l2|l1", NULL, "l2", "the reconstruction loss"},
    {"kl-weight", FLAG_NUM, "W", "(0, inf)", "1e-3", "weight of the KL term"},
    {"precision", FLAG_CHOICE, "bf16|fp32", NULL, "bf16", "the convolutions' arithmetic"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights and the samples drawn"},
    {"log-every", FLAG_INT, "K", "[1, inf)", "25", "print a step line every K steps"},
    {"save-every", FLAG_INT, "K", "[1, inf)", "1000", "save every K steps (and at the end, and on a stop signal)"},
    {"ckpt-dir", FLAG_TEXT, "DIR", NULL, NULL, "the step folders (default: VAE_DIR/checkpoints)"},
    {"keep", FLAG_INT, "N", "[1, inf)", "2", "newest step folders kept"},
    {"resume", FLAG_TEXT, "auto|STEP_DIR", NULL, NULL, "continue from the newest good step of --ckpt-dir, or this one"},
    {"stop-at", FLAG_INT, "STEP", "[1, inf)", NULL,
     "save and stop after this step, as on a stop signal (default: --steps)"},
    {0},
};

const cli_command vae_train_command = {
    "train",
    "trains the VAE on images: data-parallel under mpirun, checkpoints, exact resume",
    cmd_train,
    {train_flags, cli_threads_flags}};

static const cli_flag eval_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"data", FLAG_TEXT | FLAG_REQUIRED, "SHARDS", NULL, NULL, "image-caption tar shards or folders"},
    {"size", FLAG_INT, "S", "[8, inf)", "64", "image side in pixels"},
    {"batch", FLAG_INT, "B", "[1, inf)", "32", "images per forward pass"},
    {"grid", FLAG_TEXT, "FILE.png", NULL, NULL, "also write originals over reconstructions"},
    {0},
};

const cli_command vae_eval_command = {
    "eval", "the mean PSNR of the VAE's reconstructions over a dataset", cmd_eval, {eval_flags, cli_threads_flags}};
