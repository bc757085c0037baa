/* test_infer_kernels.c (CUDA=1 only; run on a GPU) - generation on the CUDA
 * backend against the CPU backend:
 *   - cuda_attention_rows against the CPU kernel on random bfloat16-rounded
 *     rows, head_dim 16, 64 and 128, key ranges of one key, of a whole
 *     3000-key cache, of several sequences (causal rows, an image's rows
 *     sharing their last key, as generation has them) and random ones with
 *     lengths across the kernel's tile edge: the largest error at most 2e-2
 *     of the largest reference value;
 *   - generate() on a random configs/tiny.json model, the same weights and
 *     seed on both backends: greedy text tokens identical (with the KV cache
 *     and without it), and the latents of guided DDIM images within
 *     TOL_IMAGE (see there).
 * A NaN anywhere fails. */
#include "cuda_test.h"
#include "../../trainer/generate.h"

#include <string.h>

/* The GPU keeps activations and its GEMMs' weight copies in bfloat16: on the
 * CPU, rounding the weights alone to bfloat16 moves these latents by 1.3e-3
 * of their largest value (4, the x0 clip; 10 DDIM steps, guidance 3), and
 * with the activations' rounding an H200 was 2.8e-3 off. A wrong key range
 * or cache row changes the predicted noise by its own size, far more. */
#define TOL_IMAGE 2e-2
/* A random model's logits are near-Gaussian, so the two best are often
 * close. With these weights and prompts the smallest gap (0.015) is the
 * largest among seeds 1-300 and 7x the logit change that rounding the weights
 * to bfloat16 causes: there, greedy tokens can be compared exactly. */
#define WEIGHTS_SEED 278

/* n normal values rounded to bfloat16: what an activation buffer holds. */
static float *randn_bf16(size_t n) { return bf16_round(randn(n, 1.0f), n); }

/* ------------------------------------------------------ attention_rows */

enum { ONE_KEY, WHOLE_CACHE, SEQUENCES, RANDOM };
static const char *const pattern_name[] = {"one key each", "the whole cache", "4 sequences with an image",
                                           "random ranges"};

static void test_rows(int H, int hd, int n, int keys, int pattern) {
    int d = H * hd, per = n / 4, cap = keys / 4;
    float *q = randn_bf16((size_t)n * 3 * d), *kv = randn_bf16((size_t)keys * 3 * d);
    float *out = xmalloc(sizeof(float) * n * d);
    int32_t *lo = xmalloc(sizeof(int32_t) * n), *hi = xmalloc(sizeof(int32_t) * n);
    for (int i = 0; i < n; i++) {
        if (pattern == ONE_KEY) {
            lo[i] = hi[i] = (int32_t)(rng_u64(&r) % keys);
        } else if (pattern == WHOLE_CACHE) {
            lo[i] = 0;
            hi[i] = keys - 1;
        } else if (pattern == SEQUENCES) { /* the last `per` positions of sequence s */
            int s = i / per < 3 ? i / per : 3, j = i - s * per, last = cap - per + j;
            if (j >= 8 && j < 24) last = cap - per + 23; /* an image: rows 8..23 see each other */
            lo[i] = s * cap;
            hi[i] = s * cap + last;
        } else { /* 63..67 keys: across the 64-key tile */
            int len = i % 4 == 0 ? 62 + i % 5 : (int)(rng_u64(&r) % 1000);
            lo[i] = (int32_t)(rng_u64(&r) % (keys - len));
            hi[i] = lo[i] + len;
        }
    }
    cpu();
    nn_attention_rows(out, q, kv, lo, hi, n, H, hd);
    float *g_q = gpu(q, (size_t)n * 3 * d, 0), *g_kv = gpu(kv, (size_t)keys * 3 * d, 0),
          *g_out = nn_alloc((size_t)n * d);
    int32_t *g_lo = gpu_i32(lo, n), *g_hi = gpu_i32(hi, n);
    nn_attention_rows(g_out, g_q, g_kv, g_lo, g_hi, n, H, hd);
    float *got = host(g_out, (size_t)n * d);
    double e = rel_err(got, out, (size_t)n * d);
    CHECK(e <= TOL, "attention_rows, %d heads of %d, %d rows over %d keys, %s: error %.2e of the largest value", H, hd,
          n, keys, pattern_name[pattern], e);
    void *bufs[] = {g_q, g_kv, g_out, g_lo, g_hi};
    for (size_t k = 0; k < sizeof bufs / sizeof *bufs; k++) nn_free(bufs[k]);
    free(q);
    free(kv);
    free(out);
    free(lo);
    free(hi);
    free(got);
}

/* ------------------------------------------------------------ generate */

typedef struct {
    const model_config *c;
    double gap; /* smallest gap between the two best logits the sampler may pick */
    int n;
    float *logits; /* every logits vector, in order */
} trace;

static void record(void *ctx, int sample, const float *l, int V) {
    (void)sample;
    trace *t = ctx;
    double a = -INFINITY, b = -INFINITY;
    for (int v = 0; v < V; v++) {
        if (v == t->c->eoi_token_id || v == t->c->boi_token_id || v == t->c->eos_token_id) continue; /* masked */
        if (l[v] > a) {
            b = a;
            a = l[v];
        } else if (l[v] > b)
            b = l[v];
    }
    if (a - b < t->gap) t->gap = a - b;
    t->logits = realloc(t->logits, sizeof(float) * V * (t->n + 1));
    if (!t->logits) die("out of memory");
    memcpy(t->logits + (size_t)t->n++ * V, l, sizeof(float) * V);
}

/* generate() on backend b with the random model of WEIGHTS_SEED; t may be NULL. */
static int run(const nn_backend *b, const model_config *c, const gen_options *o, const infer_rows *prefix,
               gen_sample *out, trace *t) {
    nn_use_backend(b);
    model m;
    model_create(&m, c);
    model_init_weights(&m, WEIGHTS_SEED);
    model_upload_weights(&m);
    char err[ERR_LEN];
    int rc = generate(&m, o, prefix, out, t ? record : NULL, t, err);
    if (rc) printf("generate on %s: %s\n", b->name, err);
    model_free(&m);
    return rc;
}

static int same_tokens(const gen_sample *a, const gen_sample *b, int K) {
    for (int i = 0; i < K; i++)
        if (a[i].n_tok != b[i].n_tok || memcmp(a[i].tok, b[i].tok, sizeof(int32_t) * a[i].n_tok) != 0) return 0;
    return 1;
}

/* Greedy text from three prefixes: a prompt, a short one, and a given clean
 * image then a token (as caption places it). */
static void test_text(const model_config *c) {
    int lat = c->latent_channels * c->latent_size * c->latent_size, V = c->vocab_size;
    float *img = xmalloc(sizeof(float) * lat);
    rng ri;
    rng_seed(&ri, 3);
    for (int i = 0; i < lat; i++) img[i] = (float)rng_normal(&ri);
    infer_rows p = {0};
    infer_rows_token(&p, 0, c->bos_token_id);
    for (int i = 0; i < 4; i++) infer_rows_token(&p, 0, 10 + 17 * i);
    infer_rows_token(&p, 1, c->bos_token_id);
    infer_rows_token(&p, 1, 99);
    infer_rows_token(&p, 2, c->bos_token_id);
    infer_rows_token(&p, 2, c->boi_token_id);
    infer_rows_image(&p, 2, img, 1, c);
    infer_rows_token(&p, 2, c->eoi_token_id);
    infer_rows_token(&p, 2, 42);
    gen_options o = {.n = 3,
                     .context = 64,
                     .max_tokens = 16,
                     .temperature = 0,
                     .top_p = 1,
                     .steps = 10,
                     .cfg = 1,
                     .clip = 4,
                     .seed = 1,
                     .text_only = 1,
                     .ignore_eos = 1};
    gen_sample a[3], g[3], gr[3];
    trace ta = {.c = c, .gap = INFINITY}, tg = {.c = c, .gap = INFINITY};
    int rc = run(&nn_cpu_backend, c, &o, &p, a, &ta) | run(&nn_cuda_backend, c, &o, &p, g, &tg);
    o.recompute = 1;
    rc |= run(&nn_cuda_backend, c, &o, &p, gr, NULL);
    int same = !rc && same_tokens(a, g, 3);
    double worst = 0, scale = 0;
    for (size_t k = 0; same && k < (size_t)ta.n * V; k++) {
        double e = fabs((double)tg.logits[k] - ta.logits[k]);
        if (isnan(e) || e > worst) worst = e;
        if (fabs(ta.logits[k]) > scale) scale = fabs(ta.logits[k]);
    }
    CHECK(same,
          "generate, greedy text: the CPU's %d tokens on the GPU with the KV cache (logits within %.1e, "
          "up to %.2f; the smallest top-2 gap on the CPU %.1e)",
          3 * o.max_tokens, worst, scale, ta.gap);
    CHECK(!rc && same_tokens(a, gr, 3), "generate, greedy text: the same tokens on the GPU without the cache");
    for (int i = 0; i < 3; i++) {
        gen_sample_free(&a[i]);
        gen_sample_free(&g[i]);
        gen_sample_free(&gr[i]);
    }
    free(ta.logits);
    free(tg.logits);
    free(img);
    infer_rows_free(&p);
}

/* One image per sample from `BOS prompt BOI`, DDIM with guidance: the
 * unconditional branches run as rows of the same forwards. */
static void test_images(const model_config *c) {
    int lat = c->latent_channels * c->latent_size * c->latent_size, K = 2;
    infer_rows p = {0};
    for (int s = 0; s < K; s++) {
        infer_rows_token(&p, s, c->bos_token_id);
        for (int i = 0; i < 3; i++) infer_rows_token(&p, s, 10 + 17 * i + s);
        infer_rows_token(&p, s, c->boi_token_id);
    }
    gen_options o = {.n = K,
                     .context = 64,
                     .max_tokens = 0,
                     .temperature = 0,
                     .top_p = 1,
                     .steps = 10,
                     .cfg = 3,
                     .clip = 4,
                     .seed = 1};
    gen_sample a[2], g[2];
    int rc = run(&nn_cpu_backend, c, &o, &p, a, NULL) | run(&nn_cuda_backend, c, &o, &p, g, NULL);
    int ok = !rc;
    double worst = 0;
    for (int i = 0; ok && i < K; i++) {
        ok = a[i].n_img == 1 && g[i].n_img == 1;
        double e = ok ? rel_err(g[i].img, a[i].img, lat) : NAN;
        if (isnan(e) || e > worst) worst = e;
    }
    CHECK(ok && worst <= TOL_IMAGE,
          "generate, %d guided DDIM images (10 steps): latents within %.2e of the largest "
          "CPU value",
          K, worst);
    for (int i = 0; i < K; i++) {
        gen_sample_free(&a[i]);
        gen_sample_free(&g[i]);
    }
    infer_rows_free(&p);
}

int main(void) {
    nn_init_device("cuda", NULL, 0);
    rng_seed(&r, 42);
    static const int shapes[][2] = {{4, 16}, {4, 64}, {2, 128}}; /* heads, head_dim */
    for (int k = 0; k < 3; k++)
        for (int pattern = ONE_KEY; pattern <= RANDOM; pattern++)
            test_rows(shapes[k][0], shapes[k][1], 96, 3000, pattern);
    model_config c;
    char err[ERR_LEN];
    if (config_load("configs/tiny.json", &c, err)) die_input("%s", err);
    test_text(&c);
    test_images(&c);
    return CHECK_DONE();
}
