/* test_infer.c - generation (trainer/infer.c, generate.c) and the samplers
 * (trainer/diffusion.c):
 *   - KV cache against recomputing every sequence from its start: the same
 *     tokens and the logits of every step within 1e-5, through text, images
 *     generated mid-sequence with guidance, and a given clean image (with
 *     bidirectional and causal image attention, and the U-Net image path);
 *   - DDIM over all 1000 steps with eta 0 against the deterministic reverse
 *     process (the probability-flow ODE), solved in closed form for Gaussian
 *     data whose exact noise predictor is known;
 *   - DDPM ancestral sampling with an oracle noise predictor recovers a known
 *     latent, and its intermediate x_t have the forward process's marginals. */
#include "check.h"
#include "../trainer/diffusion.h"
#include "../trainer/generate.h"
#include "../common/rng.h"
#include "../nn/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------- KV cache vs recompute */

typedef struct {
    int n, cap;
    float *logits; /* every logits vector handed to the sampler, in order */
    int *sample;
} trace;

static void record(void *ctx, int sample, const float *l, int V) {
    trace *t = ctx;
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->logits = realloc(t->logits, sizeof(float) * t->cap * V);
        t->sample = realloc(t->sample, sizeof(int) * t->cap);
    }
    memcpy(t->logits + (size_t)t->n * V, l, sizeof(float) * V);
    t->sample[t->n++] = sample;
}

static model_config tiny_config(void) {
    model_config c = {.vocab_size = 64,
                      .hidden_size = 64,
                      .num_hidden_layers = 2,
                      .num_attention_heads = 4,
                      .intermediate_size = 160,
                      .rms_norm_eps = 1e-5f,
                      .rope_theta = 10000,
                      .latent_channels = 4,
                      .latent_size = 8,
                      .patch_size = 2,
                      .max_image_patches = 16,
                      .timestep_dim = 256,
                      .diffusion_steps = 1000,
                      .lambda_diffusion = 5,
                      .bos_token_id = 1,
                      .eos_token_id = 2,
                      .boi_token_id = 62,
                      .eoi_token_id = 63};
    return c;
}

/* Three samples: text that starts an image at once (guided), text only, and
 * a given clean image followed by text (as caption does). */
static void build_prefix(infer_rows *p, const model_config *c, const float *img) {
    int toks[] = {5, 9, 17, 33};
    infer_rows_token(p, 0, c->bos_token_id);
    for (int i = 0; i < 4; i++) infer_rows_token(p, 0, toks[i]);
    infer_rows_token(p, 0, c->boi_token_id);
    infer_rows_token(p, 1, c->bos_token_id);
    for (int i = 0; i < 3; i++) infer_rows_token(p, 1, toks[3 - i]);
    infer_rows_token(p, 2, c->bos_token_id);
    infer_rows_token(p, 2, c->boi_token_id);
    infer_rows_image(p, 2, img, 1, c);
    infer_rows_token(p, 2, c->eoi_token_id);
    infer_rows_token(p, 2, 7);
}

/* With causal image attention (the paper's ablation) a patch of the cache
 * must see only the patches before it, as training's plan has it. With the
 * U-Net, the cache runs it on the new image alone, recomputing on every
 * image of the batch. */
static void test_cache_vs_recompute(int causal, int unet) {
    model_config c = tiny_config();
    c.image_causal = causal;
    if (unet) {
        c.image_unet = 1, c.unet_levels = 2, c.unet_channels[0] = 16, c.unet_channels[1] = 32;
        c.unet_layers_per_block = 1, c.unet_groups = 4;
    }
    const char *how = causal ? ", causal image attention" : unet ? ", U-Net image path" : "";
    model m;
    model_create(&m, &c);
    model_init_weights(&m, 7);
    /* Larger logits than the 0.02 init gives make the comparison sharper and
     * the sampled tokens depend on them. */
    for (size_t i = 0; i < (size_t)c.vocab_size * c.hidden_size; i++) m.W.lm_head[i] *= 40;
    int lat = c.latent_channels * c.latent_size * c.latent_size, V = c.vocab_size;
    float *img = malloc(sizeof(float) * lat);
    rng r;
    rng_seed(&r, 3);
    for (int i = 0; i < lat; i++) img[i] = (float)rng_normal(&r);
    infer_rows prefix = {0};
    build_prefix(&prefix, &c, img);
    gen_options o = {.n = 3,
                     .context = 96,
                     .max_tokens = 24,
                     .temperature = 1.0f,
                     .top_p = 0.95f,
                     .top_k = 40,
                     .steps = 8,
                     .eta = 1.0f,
                     .clip = 4.0f,
                     .cfg = 3.0f,
                     .seed = 11};
    gen_sample a[3], b[3];
    trace ta = {0}, tb = {0};
    char err[ERR_LEN];
    int rc = generate(&m, &o, &prefix, a, record, &ta, err);
    o.recompute = 1;
    rc |= generate(&m, &o, &prefix, b, record, &tb, err);
    CHECK(rc == 0, "generate runs with the cache and without (%s)", rc ? err : "ok");
    int same = ta.n == tb.n, images = 0, tokens = 0;
    for (int i = 0; i < 3 && same; i++) {
        same = a[i].n_tok == b[i].n_tok && a[i].n_img == b[i].n_img &&
            memcmp(a[i].tok, b[i].tok, sizeof(int32_t) * a[i].n_tok) == 0;
        images += a[i].n_img;
        tokens += a[i].n_tok;
    }
    CHECK(same, "KV cache: the same %d tokens and %d images as recomputing every step%s", tokens, images, how);
    CHECK(images >= 1 && a[0].n_img >= 1, "the run went through diffusion mode and back (%d images)", images);
    double worst = 0, scale = 0, img_diff = 0;
    for (int s = 0; same && s < ta.n; s++)
        for (int v = 0; v < V; v++) {
            float x = ta.logits[(size_t)s * V + v], y = tb.logits[(size_t)s * V + v];
            if (isinf(x) && isinf(y)) continue;
            worst = fmax(worst, fabs(x - y));
            scale = fmax(scale, fabs(y));
        }
    for (int i = 0; same && i < 3; i++)
        for (int q = 0; q < a[i].n_img * lat; q++) img_diff = fmax(img_diff, fabs(a[i].img[q] - b[i].img[q]));
    CHECK(same && worst <= 1e-5,
          "KV cache: logits of all %d steps within 1e-5 of recompute (max diff %.2e, "
          "logits up to %.1f%s)",
          ta.n, worst, scale, how);
    /* Float rounding of eps (~1e-6) is amplified by the first steps'
     * 1 / sqrt(alpha_bar) (~2e4 at t = T) and by guidance; a wrong key range
     * would be off by O(1). */
    CHECK(same && img_diff <= 2e-2, "KV cache: generated latents within 2e-2 (max diff %.2e%s)", img_diff, how);

    /* The same seed gives the same samples; another seed other ones. */
    gen_sample d[3];
    o.recompute = 0;
    generate(&m, &o, &prefix, d, NULL, NULL, err);
    int equal = 1;
    for (int i = 0; i < 3; i++)
        equal &= d[i].n_tok == a[i].n_tok && memcmp(d[i].tok, a[i].tok, sizeof(int32_t) * a[i].n_tok) == 0 &&
            (a[i].n_img == 0 || memcmp(d[i].img, a[i].img, sizeof(float) * lat * a[i].n_img) == 0);
    CHECK(equal, "deterministic: the same seed gives bitwise the same samples");
    for (int i = 0; i < 3; i++) gen_sample_free(&d[i]);
    o.seed = 12;
    generate(&m, &o, &prefix, d, NULL, NULL, err);
    int differ = 0;
    for (int i = 0; i < 3; i++)
        differ |= d[i].n_tok != a[i].n_tok || memcmp(d[i].tok, a[i].tok, sizeof(int32_t) * a[i].n_tok) != 0;
    CHECK(differ, "another seed gives other samples");

    /* A prefix longer than the context is refused. */
    o.context = 8;
    gen_sample e[3];
    CHECK(generate(&m, &o, &prefix, e, NULL, NULL, err) != 0 && strstr(err, "context"),
          "a prefix longer than the context is refused (%s)", err);
    for (int i = 0; i < 3; i++) {
        gen_sample_free(&a[i]);
        gen_sample_free(&b[i]);
        gen_sample_free(&d[i]);
    }
    free(ta.logits);
    free(ta.sample);
    free(tb.logits);
    free(tb.sample);
    infer_rows_free(&prefix);
    free(img);
    model_free(&m);
}

/* -------------------------------------------------------------- samplers */

/* Data x0 ~ N(mu, s^2) per element: x_t ~ N(sqrt(ab) mu, ab s^2 + 1 - ab),
 * and the exact noise prediction is E[eps | x_t]. */
static void gauss_eps(float *eps, const float *x, int n, double ab, double mu, double s) {
    double var = ab * s * s + 1 - ab;
    for (int i = 0; i < n; i++) eps[i] = (float)(sqrt(1 - ab) * (x[i] - sqrt(ab) * mu) / var);
}

/* Runs a sampler from x (= x_T) over D steps with a noise predictor. */
typedef void (*eps_fn)(float *eps, const float *x, int n, double ab, const void *ctx);

static void run_sampler(float *x, int n, int D, double eta, eps_fn pred, const void *ctx, rng *r, int probe_step,
                        double *probe_mean, double *probe_var, const float *x0) {
    double *ab = malloc(sizeof(double) * 1001);
    int *ts = malloc(sizeof(int) * (D + 1));
    float *eps = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    diffusion_alpha_bar(ab, 1000);
    diffusion_timesteps(ts, D, 1000);
    for (int s = D; s >= 1; s--) {
        pred(eps, x, n, ab[ts[s]], ctx);
        for (int i = 0; i < n; i++) z[i] = (float)rng_normal(r);
        diffusion_reverse_step(x, eps, z, n, ab[ts[s]], ab[ts[s - 1]], ts[s - 1] > 0 ? eta : 0.0, 0.0);
        if (s - 1 == probe_step) { /* standardized residual of x at ts[s-1] */
            double a = ab[ts[s - 1]], m = 0, v = 0;
            for (int i = 0; i < n; i++) {
                double e = (x[i] - sqrt(a) * x0[i]) / sqrt(1 - a);
                m += e;
                v += e * e;
            }
            *probe_mean = m / n;
            *probe_var = v / n - (m / n) * (m / n);
        }
    }
    free(ab);
    free(ts);
    free(eps);
    free(z);
}

typedef struct {
    double mu, s;
} gauss;
static void gauss_pred(float *eps, const float *x, int n, double ab, const void *ctx) {
    const gauss *g = ctx;
    gauss_eps(eps, x, n, ab, g->mu, g->s);
}

static void oracle_pred(float *eps, const float *x, int n, double ab, const void *ctx) {
    const float *x0 = ctx;
    for (int i = 0; i < n; i++) eps[i] = (float)((x[i] - sqrt(ab) * x0[i]) / sqrt(1 - ab));
}

static void test_samplers(void) {
    int ts[5];
    diffusion_timesteps(ts, 4, 1000);
    CHECK(ts[0] == 0 && ts[1] == 250 && ts[4] == 1000, "4 sampler steps: t = 0, 250, ..., 1000");
    diffusion_timesteps(ts, 3, 1000);
    CHECK(ts[1] == 334 && ts[2] == 667 && ts[3] == 1000, "3 sampler steps: t = 334, 667, 1000");

    enum { n = 4096 };
    gauss g = {0.7, 0.5};
    double ab[1001];
    diffusion_alpha_bar(ab, 1000);
    float *xT = malloc(sizeof(float) * n), *x = malloc(sizeof(float) * n), *want = malloc(sizeof(float) * n);
    rng r;
    rng_seed(&r, 5);
    for (int i = 0; i < n; i++) xT[i] = (float)rng_normal(&r);
    /* The ODE keeps (x_t - sqrt(ab) mu) / sqrt(ab s^2 + 1 - ab) constant. */
    double aT = ab[1000];
    for (int i = 0; i < n; i++)
        want[i] = (float)(g.mu + g.s * (xT[i] - sqrt(aT) * g.mu) / sqrt(aT * g.s * g.s + 1 - aT));
    double err[3] = {0};
    int Ds[3] = {1000, 100, 10};
    for (int k = 0; k < 3; k++) {
        memcpy(x, xT, sizeof(float) * n);
        run_sampler(x, n, Ds[k], 0.0, gauss_pred, &g, &r, -1, NULL, NULL, NULL);
        for (int i = 0; i < n; i++) err[k] = fmax(err[k], fabs(x[i] - want[i]));
    }
    /* DDIM is a first-order (Euler) solver of that ODE: its error falls
     * about tenfold per tenfold steps. */
    CHECK(err[0] < 5e-3,
          "DDIM, 1000 steps, eta 0: the deterministic reverse process's x0 within 5e-3 "
          "(max error %.2e; data std 0.5)",
          err[0]);
    CHECK(err[1] > 5 * err[0] && err[2] > 5 * err[1],
          "DDIM converges to it at first order (10 steps: %.2e, "
          "100: %.2e, 1000: %.2e)",
          err[2], err[1], err[0]);
    memcpy(x, xT, sizeof(float) * n);
    double dd = 0;
    run_sampler(x, n, 1000, 1.0, gauss_pred, &g, &r, -1, NULL, NULL, NULL);
    for (int i = 0; i < n; i++) dd = fmax(dd, fabs(x[i] - want[i]));
    CHECK(dd > 0.1, "eta 1 (DDPM) is not the deterministic process (max difference %.2f)", dd);

    /* DDPM with the oracle: x0 back, and x_t ~ N(sqrt(ab) x0, 1 - ab) on the way. */
    float *x0 = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) x0[i] = (float)(2 * rng_normal(&r) - 0.3);
    for (int D = 1000; D >= 50; D /= 20) {
        for (int i = 0; i < n; i++) x[i] = (float)rng_normal(&r);
        double pm = 0, pv = 0, e = 0;
        run_sampler(x, n, D, 1.0, oracle_pred, x0, &r, D / 2, &pm, &pv, x0);
        for (int i = 0; i < n; i++) e = fmax(e, fabs(x[i] - x0[i]));
        CHECK(e < 1e-4, "DDPM, %d steps, oracle noise: recovers the latent (max error %.2e)", D, e);
        CHECK(fabs(pm) < 0.06 && fabs(pv - 1) < 0.08,
              "DDPM, %d steps: halfway, x_t has the forward marginal "
              "N(sqrt(ab) x0, 1 - ab) (standardized mean %.3f, variance %.3f)",
              D, pm, pv);
    }
    free(xT);
    free(x);
    free(want);
    free(x0);
}

int main(void) {
    nn_init(0);
    test_samplers();
    test_cache_vs_recompute(0, 0);
    test_cache_vs_recompute(1, 0);
    test_cache_vs_recompute(0, 1);
    return CHECK_DONE();
}
