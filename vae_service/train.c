/* train.c - `vae_service train` and `vae_service eval`.
 *
 * train: the whole image set is decoded once into memory (8-bit, exact: the
 * decoder's floats are x / 127.5 - 1 of 8-bit pixels), then AdamW steps on
 * random batches, each image mirrored left-right with probability 1/2, with
 * L2 (or L1) reconstruction + kl_weight * KL (vae.h). The VAE
 * folder is rewritten atomically every --save-every steps and at the end;
 * VAE_DIR/train_state/state.safetensors holds weights, Adam moments, step
 * and every rank's sampler state in one file, so --resume continues exactly
 * (with the same number of ranks). Under mpirun each rank draws its own
 * batches and the gradients are averaged over ranks: N ranks of batch B
 * train as one process of batch N*B. The update is split ZeRO-1 style: rank
 * r keeps Adam moments for its part of the flat parameters only, receives
 * the averaged gradient of that part (reduce-scatter), updates it and sends
 * it to the others (all-gather): the traffic of one all-reduce, and each
 * rank runs 1/N of AdamW, a memory-bound pass over 7 floats per parameter.
 * Rank 0 logs and writes.
 *
 * eval: mean PSNR of the reconstructions (decoded from the posterior mean)
 * over a dataset, and optionally a PNG grid of originals over
 * reconstructions for a person to look at. */
#include "commands.h"
#include "../vae/image_source.h"
#include "../vae/image_write.h"
#include "../vae/vae.h"
#include "../common/timing.h"
#include "../common/rng.h"
#include "../common/safetensors.h"
#include "../nn/dist.h"
#include "../nn/kernels.h"
#include "../nn/optim.h"
#include "../common/dir.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ image set */

typedef struct {
    int n, size;
    uint8_t *pixels;            /* [n, 3, size, size] */
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

/* ----------------------------------------------------------- rank parts */

typedef struct {
    int rank, ranks;
    size_t *off, *n;            /* [ranks]: every rank's part of the flat parameters */
    int *counts;
    float *grad;                /* this rank's part of the averaged gradient */
} rank_parts;

static void parts_init(rank_parts *p, size_t numel) {
    p->rank = dist_rank();
    p->ranks = dist_size();
    p->off = xcalloc(p->ranks, sizeof(size_t));
    p->n = xcalloc(p->ranks, sizeof(size_t));
    p->counts = xcalloc(p->ranks, sizeof(int));
    for (int r = 0; r < p->ranks; r++) {
        dist_part(numel, r, p->ranks, &p->off[r], &p->n[r]);
        p->counts[r] = (int)p->n[r];
    }
    p->grad = nn_alloc(p->n[p->rank]);
}

static void parts_free(rank_parts *p) {
    free(p->off); free(p->n); free(p->counts);
    nn_free(p->grad);
}

/* Averages this rank's part of the gradient over ranks (into ps->g at the
 * part's offset); returns the global gradient norm. */
static double parts_reduce(rank_parts *p, param_set *ps) {
    size_t off = p->off[p->rank], n = p->n[p->rank];
    if (p->ranks > 1) {
        dist_reduce_scatter_start(ps->g, ps->numel, p->counts, p->grad);
        dist_wait_all();
        for (size_t k = 0; k < n; k++) ps->g[off + k] = p->grad[k] / p->ranks;
    }
    return dist_norm_of_parts(ps->g + off, n);
}

/* Collective: `mine` (this rank's part) into full[numel] on every rank. */
static void parts_gather(const rank_parts *p, const float *mine, float *full) {
    memcpy(full + p->off[p->rank], mine, sizeof(float) * p->n[p->rank]);
    dist_allgather_parts(full, p->off, p->n);
}

/* ---------------------------------------------------------- train state */

#define STATE_DIR "train_state"

/* Collective: every rank calls it; rank 0 writes (the moments of every
 * rank's part gathered into whole tensors). */
static int save_all(vae_model *v, const optimizer *o, const rank_parts *p, const rng *r, const char *dir,
                    char *err) {
    char path[4096];
    param_set *ps = vae_params(v);
    int nr = dist_size(), rc = 0;
    int64_t *counters = xmalloc(sizeof(int64_t) * (1 + nr));
    float *m = nn_alloc(ps->numel), *vv = nn_alloc(ps->numel);
    counters[0] = o->step;
    dist_allgather_i64((int64_t)r->state, counters + 1);
    parts_gather(p, o->m, m);
    parts_gather(p, o->v, vv);
    if (dist_rank() == 0) {
        rc = make_dir(dir, err);
        snprintf(path, sizeof path, "%s/" STATE_DIR, dir);
        if (!rc) rc = make_dir(path, err);
        st_entry e[4] = {{"weights", ST_F32, 1, {(int64_t)ps->numel}, ps->w},
                         {"adam_m", ST_F32, 1, {(int64_t)ps->numel}, m},
                         {"adam_v", ST_F32, 1, {(int64_t)ps->numel}, vv},
                         {"step_and_rng", ST_I64, 1, {1 + nr}, counters}};
        snprintf(path, sizeof path, "%s/" STATE_DIR "/state.safetensors", dir);
        /* The state file alone is enough to resume; the diffusers folder is
         * rewritten from it, so a crash in between loses nothing. */
        if (!rc) rc = st_write(path, e, 4, err);
        if (!rc) rc = vae_save(v, dir, err);
    }
    free(counters);
    nn_free(m);
    nn_free(vv);
    return rc;
}

static int load_state(vae_model *v, optimizer *o, const rank_parts *p, rng *r, const char *dir, char *err) {
    char path[4096];
    param_set *ps = vae_params(v);
    snprintf(path, sizeof path, "%s/" STATE_DIR "/state.safetensors", dir);
    st_file f;
    if (st_open(path, &f, err)) return -1;
    int64_t n[1] = {(int64_t)ps->numel}, counters[2];
    int nr = dist_size();
    const st_tensor *t = st_find(&f, "step_and_rng");
    float *m = nn_alloc(ps->numel), *vv = nn_alloc(ps->numel);
    int rc = -1;
    if (st_read_f32(&f, "weights", 1, n, ps->w, err) || st_read_f32(&f, "adam_m", 1, n, m, err) ||
        st_read_f32(&f, "adam_v", 1, n, vv, err))
        goto out;
    memcpy(o->m, m + p->off[p->rank], sizeof(float) * p->n[p->rank]);
    memcpy(o->v, vv + p->off[p->rank], sizeof(float) * p->n[p->rank]);
    if (!t || t->dtype != ST_I64 || t->ndim != 1 || t->shape[0] != 1 + nr) {
        set_error(err, "%s: tensor 'step_and_rng': expected I64 [%d] (resume with the ranks that wrote it)", path, 1 + nr);
        goto out;
    }
    memcpy(&counters[0], f.buf + f.data_start + t->begin, sizeof(int64_t));
    memcpy(&counters[1], f.buf + f.data_start + t->begin + sizeof(int64_t) * (1 + dist_rank()), sizeof(int64_t));
    o->step = counters[0];
    r->state = (uint64_t)counters[1];
    rc = 0;
out:
    st_close(&f);
    nn_free(m);
    nn_free(vv);
    return rc;
}

/* ---------------------------------------------------------------- train */

vae_loss_kind vae_loss_arg(const args *a, const char *command) {
    const char *name = arg_str(a, "loss", "l2");
    if (strcmp(name, "l2") == 0) return VAE_LOSS_L2;
    if (strcmp(name, "l1") == 0) return VAE_LOSS_L1;
    die_input("vae_service %s: --loss must be l1 or l2, not '%s'", command, name);
}

int vae_precision_arg(const args *a, const char *command, const char *fallback) {
    const char *name = arg_str(a, "precision", fallback);
    if (strcmp(name, "bf16") == 0) return 1;
    if (strcmp(name, "fp32") == 0) return 0;
    die_input("vae_service %s: --precision must be bf16 or fp32, not '%s'", command, name);
}

int vae_cmd_train(const args *a) {
    const char *out = arg_required(a, "out");
    int size = (int)arg_int(a, "size", 64, 8), steps = (int)arg_int(a, "steps", 2000, 1);
    int batch = (int)arg_int(a, "batch", 8, 1), log_every = (int)arg_int(a, "log-every", 25, 1);
    int save_every = (int)arg_int(a, "save-every", 1000, 1);
    /* --stop-at: end after that step as if interrupted (time-sliced jobs, resume tests). */
    long stop_at = arg_int(a, "stop-at", steps, 1);
    /* lr 1e-3 and L2: on the 64 px set, 2e-3 and L1 (the first recipe) ended
     * 1 dB and 0.4 dB lower after the same steps (docs/conventions.md). */
    float lr = (float)arg_float(a, "lr", 1e-3), kl_weight = (float)arg_float(a, "kl-weight", 1e-3);
    vae_loss_kind loss = vae_loss_arg(a, "train");
    int resume = arg_switch(a, "resume");
    char err[ERR_LEN], path[4096];
    nn_init((int)arg_int(a, "threads", 0, 1));

    vae_model *v;
    if (resume) {
        snprintf(path, sizeof path, "%s/config.json", out);
        vae_config c;
        if (vae_config_load(path, &c, err)) die_input("--resume: %s", err);
        v = vae_create(&c);
    } else {
        vae_config c;
        if (vae_config_load(arg_required(a, "config"), &c, err)) die_input("%s", err);
        v = vae_create(&c);
        vae_init_weights(v, (unsigned long long)arg_int(a, "seed", 0, 0));
    }
    /* bf16 convolutions by default: 1.4x the steps in the same time, and
     * within 0.1 dB of float32 at equal steps (docs/conventions.md). */
    vae_set_bf16(v, vae_precision_arg(a, "train", "bf16"));
    const vae_config *c = vae_cfg(v);
    int f = vae_downscale(c);
    if (size % f) die_input("vae_service train: --size %d is not a multiple of the VAE's downscale %d", size, f);
    rank_parts parts;
    parts_init(&parts, vae_params(v)->numel);
    int rank = parts.rank, ranks = parts.ranks;
    optim_config oc = optim_defaults(lr, steps / 20 + 1, steps);
    oc.weight_decay = 0.0f;             /* a small conv VAE: no decay, as diffusers' VAE training */
    optimizer o;
    optim_create_part(&o, oc, parts.off[rank], parts.n[rank]);
    rng r;
    rng_seed(&r, (unsigned long long)arg_int(a, "seed", 0, 0) + 1 + 0x9E3779B9ull * rank);
    if (resume) {
        if (load_state(v, &o, &parts, &r, out, err)) die_input("--resume: %s", err);
        if (rank == 0) fprintf(stderr, "resuming %s at step %ld\n", out, o.step);
    }

    image_set set = load_image_set(arg_required(a, "data"), size);
    size_t per = (size_t)3 * size * size, lat = (size_t)c->latent_channels * (size / f) * (size / f);
    float *x = xmalloc(sizeof(float) * batch * per), *eps = xmalloc(sizeof(float) * batch * lat);
    if (rank == 0)
        fprintf(stderr, "training %zu parameters on %d images of %dx%d, batch %d x %d ranks, %d steps\n",
                vae_params(v)->numel, set.n, size, size, batch, ranks, steps);
    double t0 = now_s(), acc_loss = 0, acc_psnr = 0;
    long start = o.step, seen = 0;
    int acc_n = 0;
    while (o.step < steps && o.step < stop_at) {
        for (int i = 0; i < batch; i++) {
            uint64_t draw = rng_u64(&r);
            to_float_sample(x + i * per, set.pixels + (draw >> 1) % set.n * per, size, (int)(draw & 1));
        }
        for (size_t k = 0; k < batch * lat; k++) eps[k] = (float)rng_normal(&r);
        param_set *ps = vae_params(v);
        nn_zero(ps->g, ps->numel);
        vae_losses l = vae_train_step(v, x, eps, batch, size, size, loss, kl_weight, 1);
        double stats[2] = {l.loss, l.psnr};
        dist_allreduce_sum_f64(stats, 2);
        optim_step(&o, ps, parts_reduce(&parts, ps));
        dist_allgather_parts(ps->w, parts.off, parts.n);
        acc_loss += stats[0] / ranks; acc_psnr += stats[1] / ranks; acc_n++; seen += (long)batch * ranks;
        if (rank == 0 && (o.step % log_every == 0 || o.step == steps)) {
            double dt = now_s() - t0;
            printf("step %5ld/%d  loss %.4f  psnr %.2f dB  %.1f images/s  eta %.0f s\n", o.step, steps,
                   acc_loss / acc_n, acc_psnr / acc_n, seen / dt, (steps - o.step) * (dt / (o.step - start)));
            fflush(stdout);
            acc_loss = acc_psnr = 0;
            acc_n = 0;
        }
        if (o.step % save_every == 0 || o.step == steps || o.step == stop_at)
            if (save_all(v, &o, &parts, &r, out, err)) die("%s", err);
    }
    if (rank == 0) printf("saved %s\n", out);
    free(x); free(eps); free(set.pixels);
    optim_free(&o);
    parts_free(&parts);
    vae_free(v);
    return 0;
}

/* ----------------------------------------------------------------- eval */

int vae_cmd_eval(const args *a) {
    char err[ERR_LEN], summary[512];
    nn_init((int)arg_int(a, "threads", 0, 1));
    vae_model *v = vae_load(arg_required(a, "vae"), err);
    if (!v) die_input("%s", err);
    const vae_config *c = vae_cfg(v);
    int size = (int)arg_int(a, "size", 64, 8), batch = (int)arg_int(a, "batch", 32, 1), f = vae_downscale(c);
    if (size % f) die_input("vae_service eval: --size %d is not a multiple of the VAE's downscale %d", size, f);
    const char *grid = arg_str(a, "grid", NULL);
    image_source *src = image_source_open(arg_required(a, "data"), size, 0, 1, err);
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
        while (n < batch && !(done = image_source_next(src, &smp) != 1)) memcpy(x + n++ * per, smp.rgb, per * sizeof(float));
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
    if (count == 0) die_input("%s: no usable images", arg_required(a, "data"));
    printf("{\"images\":%ld,\"psnr_db\":%.3f}\n", count, psnr_sum / count);
    int shown = count < GRID ? (int)count : GRID, cols = shown < GRID_COLS ? shown : GRID_COLS;
    int rows = 2 * ((shown + GRID_COLS - 1) / GRID_COLS);
    if (cols < GRID_COLS)                   /* one short row pair: its reconstructions move up */
        memmove(tiles + cols * per, tiles + GRID_COLS * per, cols * per);
    if (grid && image_write_grid_png(grid, tiles, rows * cols, cols, size, size, err)) die("%s", err);
    free(x); free(rec); free(mean); free(logvar); free(tiles);
    vae_free(v);
    return 0;
}
