/* main.c - the VAE service's command line: the program's commands, each
 * with its table of flags (common/cli.h); `vae_service --help` and
 * `vae_service COMMAND --help` print them. init, forward, grads and bench
 * live here; train and eval in train.c, encode and decode in latents.c,
 * serve in serve.c, keygen in common/zmq_keys.c.
 *
 * Bad input exits with status 2 and one line naming the file and field. */
#include "commands.h"
#include "../vae/vae.h"
#include "../common/timing.h"
#include "../common/cli.h"
#include "../common/zmq_keys.h"
#include "../common/safetensors.h"
#include "../nn/dist.h"
#include "../nn/kernels.h"
#include "../nn/optim.h"
#include "../common/rng.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static vae_model *load_vae(const args *a) {
    char err[ERR_LEN];
    vae_model *v = vae_load(arg_str(a, "vae"), err);
    if (!v) die_input("%s", err);
    return v;
}

/* An images file: `images` F32 [n, in_channels, H, W], H and W multiples of
 * the VAE's downscale; optionally `eps` F32 [n, C, H/f, W/f]. */
typedef struct {
    int n, H, W;
    float *images, *eps;
} image_batch;

static image_batch load_images(const char *path, const vae_config *c, int want_eps) {
    char err[ERR_LEN];
    st_file f;
    if (st_open(path, &f, err)) die_input("%s", err);
    const st_tensor *t = st_find(&f, "images");
    if (!t || t->ndim != 4 || t->shape[1] != c->in_channels)
        die_input("%s: tensor 'images': %s", path, t ? "expected [n, in_channels, H, W]" : "missing");
    int f8 = vae_downscale(c);
    image_batch b = {(int)t->shape[0], (int)t->shape[2], (int)t->shape[3], NULL, NULL};
    if (b.H % f8 || b.W % f8 || b.n < 1) die_input("%s: tensor 'images': H and W must be multiples of %d", path, f8);
    b.images = xmalloc(sizeof(float) * b.n * c->in_channels * b.H * b.W);
    if (st_read_f32(&f, "images", 4, t->shape, b.images, err)) die_input("%s", err);
    if (want_eps) {
        int64_t shape[4] = {b.n, c->latent_channels, b.H / f8, b.W / f8};
        b.eps = xmalloc(sizeof(float) * shape[0] * shape[1] * shape[2] * shape[3]);
        if (st_read_f32(&f, "eps", 4, shape, b.eps, err)) die_input("%s", err);
    }
    st_close(&f);
    return b;
}

static int cmd_init(const args *a) {
    char err[ERR_LEN];
    vae_config c;
    if (vae_config_load(arg_str(a, "config"), &c, err)) die_input("%s", err);
    vae_model *v = vae_create(&c);
    vae_init_weights(v, (unsigned long long)arg_int(a, "seed"));
    if (vae_save(v, arg_str(a, "out"), err)) die("%s", err);
    printf("wrote %s: %zu parameters\n", arg_str(a, "out"), vae_params(v)->numel);
    vae_free(v);
    return 0;
}

static int cmd_forward(const args *a) {
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = load_vae(a);
    const vae_config *c = vae_cfg(v);
    image_batch b = load_images(arg_str(a, "images"), c, 0);
    int f = vae_downscale(c), h = b.H / f, w = b.W / f, C = c->latent_channels;
    size_t lat = (size_t)b.n * C * h * w;
    float *mean = xmalloc(sizeof(float) * lat), *logvar = xmalloc(sizeof(float) * lat);
    float *recon = xmalloc(sizeof(float) * b.n * c->out_channels * b.H * b.W);
    vae_encode(v, b.images, b.n, b.H, b.W, mean, logvar);
    vae_decode(v, mean, b.n, h, w, recon);
    st_entry e[3] = {{"mean", ST_F32, 4, {b.n, C, h, w}, mean},
                     {"logvar", ST_F32, 4, {b.n, C, h, w}, logvar},
                     {"recon", ST_F32, 4, {b.n, c->out_channels, b.H, b.W}, recon}};
    char err[ERR_LEN];
    if (st_write(arg_str(a, "out"), e, 3, err)) die("%s", err);
    free(mean);
    free(logvar);
    free(recon);
    free(b.images);
    vae_free(v);
    return 0;
}

static int cmd_grads(const args *a) {
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = load_vae(a);
    image_batch b = load_images(arg_str(a, "images"), vae_cfg(v), 1);
    float kl_weight = (float)arg_num(a, "kl-weight");
    vae_set_bf16(v, vae_bf16_arg(a));
    param_set *ps = vae_params(v);
    vae_losses l = vae_train_step(v, b.images, b.eps, b.n, b.H, b.W, vae_loss_arg(a), kl_weight, 1);
    printf("{\"loss\":%.9g,\"rec_loss\":%.9g,\"kl\":%.9g,\"psnr\":%.4f}\n", l.loss, l.rec_loss, l.kl, l.psnr);
    char err[ERR_LEN];
    if (params_save(ps, ps->g, arg_str(a, "out"), err)) die("%s", err);
    free(b.images);
    free(b.eps);
    vae_free(v);
    return 0;
}

/* Times encoding (the encoder mean, as `encode` runs it) or full training
 * steps (forward, backward, AdamW) on random images; one JSON line with the
 * median over --steps batches after one warm-up batch. */
static int cmd_bench(const args *a) {
    char err[ERR_LEN];
    vae_config c;
    if (vae_config_load(arg_str(a, "config"), &c, err)) die_input("%s", err);
    int size = (int)arg_int(a, "size"), batch = (int)arg_int(a, "batch");
    int steps = (int)arg_int(a, "steps"), train = arg_switch(a, "train"), f = vae_downscale(&c);
    if (size % f) die_input("vae_service bench: --size %d is not a multiple of the VAE's downscale %d", size, f);
    nn_init((int)arg_int(a, "threads"));
    vae_model *v = vae_create(&c);
    vae_init_weights(v, 0);
    vae_set_bf16(v, vae_bf16_arg(a));
    param_set *ps = vae_params(v);
    size_t per = (size_t)3 * size * size, lat = (size_t)c.latent_channels * (size / f) * (size / f);
    float *x = xmalloc(sizeof(float) * batch * per), *eps = xmalloc(sizeof(float) * batch * lat);
    float *mean = xmalloc(sizeof(float) * batch * lat), *logvar = xmalloc(sizeof(float) * batch * lat);
    rng r;
    rng_seed(&r, 1);
    for (size_t k = 0; k < batch * per; k++) x[k] = (float)(2.0 * rng_uniform(&r) - 1.0);
    for (size_t k = 0; k < batch * lat; k++) eps[k] = (float)rng_normal(&r);
    optimizer o;
    optim_create(&o, ps, optim_defaults(1e-4f, 0, steps + 1));
    double *times = xcalloc(steps, sizeof(double));
    for (int s = -1; s < steps; s++) {
        double t0 = now_s();
        if (train) {
            nn_zero(ps->g, ps->numel);
            vae_train_step(v, x, eps, batch, size, size, VAE_LOSS_L2, 1e-6f, 1);
            optim_step(&o, ps, grad_norm(ps));
        } else {
            vae_encode(v, x, batch, size, size, mean, logvar);
        }
        if (s >= 0) times[s] = now_s() - t0;
    }
    double med = median_sorted(times, steps);
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    printf("{\"images_per_s\":%.2f,\"size\":%d,\"threads\":%d,\"batch\":%d,\"mode\":\"%s\",\"batch_s\":%.4f,"
           "\"parameters\":%zu,\"peak_rss_mb\":%.1f}\n",
           batch / med, size, nn_threads(), batch, train ? "train" : "encode", med, ps->numel, u.ru_maxrss / 1024.0);
    free(x);
    free(eps);
    free(mean);
    free(logvar);
    free(times);
    optim_free(&o);
    vae_free(v);
    return 0;
}

static const cli_flag init_flags[] = {
    {"config", FLAG_TEXT | FLAG_REQUIRED, "VAE.json", NULL, NULL, "the VAE's config"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder to write"},
    {"seed", FLAG_INT, "S", "[0, inf)", "0", "fixes the weights"},
    {0},
};

static const cli_flag forward_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"images", FLAG_TEXT | FLAG_REQUIRED, "IN.safetensors", NULL, NULL, "`images` F32 [n, 3, H, W]"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "OUT.safetensors", NULL, NULL, "`mean`, `logvar` and `recon`"},
    {0},
};

static const cli_flag grads_flags[] = {
    {"vae", FLAG_TEXT | FLAG_REQUIRED, "VAE_DIR", NULL, NULL, "the VAE folder"},
    {"images", FLAG_TEXT | FLAG_REQUIRED, "IN.safetensors", NULL, NULL,
     "`images` F32 [n, 3, H, W] and `eps` [n, C, h, w]"},
    {"out", FLAG_TEXT | FLAG_REQUIRED, "GRADS.safetensors", NULL, NULL, "the gradient of every parameter"},
    {"kl-weight", FLAG_NUM, "W", "(0, inf)", "1e-6", "weight of the KL term"},
    {"loss", FLAG_CHOICE, "l2|l1", NULL, "l2", "the reconstruction loss"},
    {"precision", FLAG_CHOICE, "fp32|bf16", NULL, "fp32", "the convolutions' arithmetic"},
    {0},
};

static const cli_flag bench_flags[] = {
    {"config", FLAG_TEXT | FLAG_REQUIRED, "VAE.json", NULL, NULL, "the VAE's config (random weights)"},
    {"size", FLAG_INT, "S", "[8, inf)", "64", "image side in pixels"},
    {"batch", FLAG_INT, "B", "[1, inf)", "16", "images per step"},
    {"steps", FLAG_INT, "N", "[1, inf)", "5", "timed steps (after one warm-up step)"},
    {"train", FLAG_SWITCH, NULL, NULL, NULL, "time training steps (default: encoding)"},
    {"precision", FLAG_CHOICE, "fp32|bf16", NULL, "fp32", "the convolutions' arithmetic"},
    {0},
};

static const cli_command init_command = {
    "init", "writes a VAE folder with freshly initialized weights", cmd_init, {init_flags}};
static const cli_command forward_command = {
    "forward", "encodes and decodes an images file (conformance)", cmd_forward, {forward_flags, cli_threads_flags}};
static const cli_command grads_command = {"grads",
                                          "the loss and gradients of one training step on an images file (conformance)",
                                          cmd_grads,
                                          {grads_flags, cli_threads_flags}};
static const cli_command bench_command = {
    "bench", "times encoding or training steps on random images", cmd_bench, {bench_flags, cli_threads_flags}};

static const cli_command *const commands[] = {
    &vae_train_command, &vae_eval_command, &vae_encode_command, &vae_decode_command, &vae_serve_command,
    &bench_command,     &init_command,     &forward_command,    &grads_command,      &zkey_keygen_command,
};

static const cli_program program = {"vae_service",
                                    "Trains the VAE, encodes image datasets to latents once, decodes and serves.",
                                    commands, sizeof commands / sizeof *commands};

int main(int argc, char **argv) {
    nn_startup(argv);
    dist_init(&argc, &argv); /* MPI only when started by mpirun */
    int rc = cli_main(&program, argc, argv);
    dist_finalize();
    return rc;
}
