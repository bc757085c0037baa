/* test_train.c - training as a whole: an overfit run on one batch, bitwise
 * determinism, the learning-rate schedule, where weight decay applies, and
 * the EMA of the weights against a direct computation. */
#include "check.h"
#include "../trainer/model.h"
#include "../nn/optim.h"
#include "../nn/kernels.h"
#include "../common/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const model_config tiny = {.vocab_size = 64,
                                  .hidden_size = 48,
                                  .num_hidden_layers = 2,
                                  .num_attention_heads = 4,
                                  .intermediate_size = 96,
                                  .rms_norm_eps = 1e-5f,
                                  .rope_theta = 10000,
                                  .latent_channels = 4,
                                  .latent_size = 4,
                                  .patch_size = 2,
                                  .max_image_patches = 4,
                                  .timestep_dim = 32,
                                  .diffusion_steps = 1000,
                                  .lambda_diffusion = 5,
                                  .bos_token_id = 1,
                                  .eos_token_id = 2,
                                  .boi_token_id = 62,
                                  .eoi_token_id = 63};

/* Trains `steps` steps on one generated batch; returns first and last loss. */
static void train(model *m, int steps, float lr, double *first, double *last) {
    rng r;
    rng_seed(&r, 1);
    batch b;
    plan p;
    optimizer o;
    batch_generate(&b, &m->cfg, 2, 64, &r);
    plan_build(&p, &b, &m->cfg);
    optim_create(&o, &m->ps, optim_defaults(lr, 10, steps));
    double n_latent = (double)p.n_patch * cfg_patch_dim(&m->cfg);
    for (int s = 0; s < steps; s++) {
        nn_zero(m->ps.g, m->ps.numel);
        loss_sums ls = model_step(m, &p, p.n_lm, n_latent, 1);
        double loss = ls.ce_sum / p.n_lm + m->cfg.lambda_diffusion * ls.se_sum / n_latent;
        if (s == 0) *first = loss;
        *last = loss;
        optim_step(&o, &m->ps, grad_norm(&m->ps));
    }
    optim_free(&o);
    plan_free(&p);
    batch_free(&b);
}

/* After step t the EMA must be sum_{k <= t} c_k w_k over the weights w_k
 * after each step, c_k = (1 - d_k) prod_{k < s <= t} d_s with d_0 = 0:
 * computed here directly, in float64, from every step's weights, after each
 * step. A second EMA over a part that cuts tensors (as a rank keeps) must
 * give that part's bits. */
static void test_ema(void) {
    enum { T = 8 };
    const float decay = 0.9f;
    model m;
    rng r;
    batch b;
    plan p;
    optimizer o;
    weight_ema full, part;
    model_create(&m, &tiny);
    model_init_weights(&m, 7);
    rng_seed(&r, 2);
    batch_generate(&b, &m.cfg, 2, 64, &r);
    plan_build(&p, &b, &m.cfg);
    optim_create(&o, &m.ps, optim_defaults(3e-3f, 2, T));
    size_t n = m.ps.numel, off = n / 3 + 1, cnt = n / 2;
    ema_create(&full, decay, 0, n);
    ema_create(&part, decay, off, cnt);
    float *hist = xmalloc(sizeof(float) * T * n);
    double n_latent = (double)p.n_patch * cfg_patch_dim(&m.cfg), worst = 0, moved = 0;
    int first_copy = 0, part_same = 1;
    for (int t = 0; t < T; t++) {
        nn_zero(m.ps.g, n);
        model_step(&m, &p, p.n_lm, n_latent, 1);
        optim_step(&o, &m.ps, grad_norm(&m.ps));
        ema_step(&full, m.ps.w);
        ema_step(&part, m.ps.w);
        memcpy(hist + (size_t)t * n, m.ps.w, sizeof(float) * n);
        if (t == 0) first_copy = memcmp(full.avg, m.ps.w, sizeof(float) * n) == 0;
        part_same &= memcmp(part.avg, full.avg + off, sizeof(float) * cnt) == 0;
        double c[T];
        for (int k = 0; k <= t; k++) {
            c[k] = 1.0 - ema_decay_at(decay, k);
            for (int s = k + 1; s <= t; s++) c[k] *= ema_decay_at(decay, s);
        }
        for (size_t i = 0; i < n; i++) {
            double want = 0;
            for (int k = 0; k <= t; k++) want += c[k] * hist[(size_t)k * n + i];
            double e = fabs(full.avg[i] - want) / (1 + fabs(want)), d = fabs(full.avg[i] - m.ps.w[i]);
            worst = e > worst ? e : worst;
            moved = d > moved ? d : moved;
        }
    }
    CHECK(first_copy, "the EMA starts as the weights after the first step, bitwise");
    CHECK(full.updates == T && worst < 2e-7 && moved > 1e-4,
          "after each of %d steps the EMA is the direct weighted sum of every step's weights (within %.2g; up to "
          "%.2g from that step's weights)",
          T, worst, moved);
    CHECK(part_same, "an EMA of a part cutting tensors gives that part of the whole EMA bitwise, every step");
    CHECK(ema_decay_at(0.999f, 0) == 0 && ema_decay_at(0.999f, 1) == (float)(2.0 / 11) &&
              ema_decay_at(0.999f, 100) == (float)(101.0 / 110) && ema_decay_at(0.999f, 100000) == 0.999f &&
              ema_decay_at(0.5f, 9) == 0.5f,
          "d_t: 0 first (a copy), then (1 + t) / (10 + t) up to the decay");
    free(hist);
    ema_free(&full);
    ema_free(&part);
    optim_free(&o);
    plan_free(&p);
    batch_free(&b);
    model_free(&m);
}

int main(void) {
    nn_init(2);
    test_ema();
    model a, b;
    double first, last;

    model_create(&a, &tiny);
    model_init_weights(&a, 3);
    train(&a, 300, 3e-3f, &first, &last);
    CHECK(last * 10 <= first, "overfitting one batch lowers the loss 10x (%.4f -> %.4f)", first, last);
    model_free(&a);

    double f2, l2;
    model_create(&a, &tiny);
    model_init_weights(&a, 4);
    train(&a, 5, 1e-3f, &first, &last);
    model_create(&b, &tiny);
    model_init_weights(&b, 4);
    train(&b, 5, 1e-3f, &f2, &l2);
    CHECK(memcmp(a.ps.w, b.ps.w, a.ps.numel * sizeof(float)) == 0 && last == l2,
          "two runs with the same seed and threads give bitwise the same weights");
    model_free(&a);
    model_free(&b);

    optim_config oc = optim_defaults(1.0f, 10, 110);
    CHECK(fabsf(optim_lr(&oc, 0) - 0.1f) < 1e-6f && fabsf(optim_lr(&oc, 9) - 1.0f) < 1e-6f,
          "linear warmup reaches the peak at the end of warmup");
    CHECK(fabsf(optim_lr(&oc, 60) - 0.55f) < 1e-6f && fabsf(optim_lr(&oc, 110) - 0.1f) < 1e-6f &&
              fabsf(optim_lr(&oc, 500) - 0.1f) < 1e-6f,
          "cosine decay to 10%% of the peak, then flat");

    /* With zero gradients an AdamW step only decays: matrices shrink by
     * lr * wd, norms, biases, embeddings and pos_embed stay. */
    model_create(&a, &tiny);
    model_init_weights(&a, 5);
    for (size_t k = 0; k < a.ps.numel; k++) a.ps.w[k] += 0.5f;
    float *before = nn_alloc(a.ps.numel);
    nn_copy(before, a.ps.w, a.ps.numel);
    optimizer o;
    optim_create(&o, &a.ps, optim_defaults(0.01f, 0, 100));
    nn_zero(a.ps.g, a.ps.numel);
    float lr = optim_step(&o, &a.ps, 0.0);
    int ok = 1;
    for (int i = 0; i < a.ps.n; i++) {
        const param_info *p = &a.ps.info[i];
        for (size_t k = 0; k < p->numel; k++) {
            float w0 = before[p->offset + k], want = p->decay ? w0 - lr * 0.1f * w0 : w0;
            if (fabsf(a.ps.w[p->offset + k] - want) > 1e-6f) ok = 0;
        }
        int matrix = p->ndim == 2 && !strstr(p->name, "embed_tokens") && !strstr(p->name, "pos_embed");
        if (p->decay != matrix) ok = 0;
    }
    CHECK(ok, "weight decay applies to linear weight matrices only");
    optim_free(&o);
    nn_free(before);
    model_free(&a);

    /* Noise draws: keyed by (seed, step, global row, image in row), so a row
     * sliced out of a bigger batch draws what it drew in place. */
    rng r;
    rng_seed(&r, 9);
    batch whole, part;
    batch_generate(&whole, &tiny, 6, 64, &r);
    batch_slice(&part, &whole, &tiny, 2, 3);
    batch_draw_noise(&whole, &tiny, 5, 11, 100);
    batch_draw_noise(&part, &tiny, 5, 11, 102);
    size_t lat = (size_t)tiny.latent_channels * tiny.latent_size * tiny.latent_size;
    int first_img = -1, same = part.n_images > 0; /* the generator numbers images in row order */
    for (int i = 2 * 64; i < 6 * 64 && first_img < 0; i++) first_img = whole.image[i];
    for (int k = 0; k < part.n_images; k++)
        same &= part.timesteps[k] == whole.timesteps[first_img + k] &&
            memcmp(part.noise + k * lat, whole.noise + (first_img + k) * lat, lat * sizeof(float)) == 0;
    CHECK(same, "a slice of rows draws the same timesteps and noise as in the whole batch (%d images)", part.n_images);
    int32_t t0 = whole.timesteps[0];
    float e0 = whole.noise[0];
    batch_draw_noise(&whole, &tiny, 5, 12, 100);
    CHECK(whole.timesteps[0] != t0 || whole.noise[0] != e0, "the next step draws new noise");
    int limited = 0, in_range = 1;
    for (int s = 0; s < 50; s++) {
        batch_draw_noise(&whole, &tiny, 5, s, 0);
        for (int k = 0; k < whole.n_images; k++) {
            int T = whole.noise_limit[k] ? tiny.diffusion_steps / 2 : tiny.diffusion_steps;
            in_range &= whole.timesteps[k] >= 1 && whole.timesteps[k] <= T;
            limited += whole.noise_limit[k];
        }
    }
    CHECK(in_range && limited > 0, "t in 1..T, and 1..T/2 for image-first images (%d limited draws)", limited);
    batch_free(&whole);
    batch_free(&part);
    return CHECK_DONE();
}
