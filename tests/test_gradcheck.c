/* test_gradcheck.c - finite-difference check of the gradient of every
 * parameter tensor on tiny configs (the linear image path, and the U-Net
 * path with two and with three levels) and a generated packed batch.
 * For each tensor it probes the entry with the largest analytic gradient and
 * two random entries: (loss(w + h) - loss(w - h)) / 2h must match the
 * analytic gradient to 0.2% of the tensor's largest gradient. Losses are
 * summed in float64 by the model; h is sized for float32 activations.
 * The bound is per tensor, not per element (as test_parity.sh's is): a
 * central difference errs by h^2 times the third derivative plus float32
 * rounding of the loss over 2h, neither of which shrinks with the probed
 * entry, so a small entry cannot be held to a fraction of itself. The
 * element-wise check of every gradient entry is test_parity.sh's, against
 * float64 autograd. */
#include "check.h"
#include "../trainer/model.h"
#include "../nn/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double loss_of(model *m, const plan *p) {
    double n_latent = (double)p->n_patch * cfg_patch_dim(&m->cfg);
    loss_sums s = model_step(m, p, p->n_lm, n_latent, 0);
    return s.ce_sum / p->n_lm + m->cfg.lambda_diffusion * s.se_sum / n_latent;
}

static void check_config(const model_config *c, const char *label, double tol) {
    rng r;
    rng_seed(&r, 7);
    batch b;
    plan p;
    model m;
    batch_generate(&b, c, 2, 40, &r);
    plan_build(&p, &b, c);
    model_create(&m, c);
    /* Random weights everywhere (norms and biases too) so every path counts. */
    for (int i = 0; i < m.ps.n; i++) {
        const param_info *pi = &m.ps.info[i];
        int is_norm = strstr(pi->name, "norm.weight") != NULL || unet_is_norm_weight(pi->name);
        for (size_t k = 0; k < pi->numel; k++)
            m.ps.w[pi->offset + k] = (float)((is_norm ? 1.0 : 0.0) + 0.2 * rng_normal(&r));
    }
    CHECK(p.n_lm > 0 && p.n_patch > 0, "%s: the batch has LM targets (%d) and patches (%d)", label, p.n_lm,
          p.n_patch);
    /* Evaluation's per-row losses (model_row_losses) add up to the batch's. */
    double *ce = calloc(p.B, sizeof(double)), *se = calloc(p.B, sizeof(double)), ce_sum = 0, se_sum = 0;
    model_row_losses(&m, &p, ce, se);
    for (int i = 0; i < p.B; i++) ce_sum += ce[i], se_sum += se[i];
    loss_sums whole = model_step(&m, &p, p.n_lm, (double)p.n_patch * cfg_patch_dim(c), 0);
    CHECK(fabs(ce_sum - whole.ce_sum) <= 1e-6 * whole.ce_sum && fabs(se_sum - whole.se_sum) <= 1e-6 * whole.se_sum,
          "%s: the rows' losses add up to the batch's (%.9g, %.9g against %.9g, %.9g)", label, ce_sum, se_sum,
          whole.ce_sum, whole.se_sum);
    free(ce);
    free(se);
    nn_zero(m.ps.g, m.ps.numel);
    model_step(&m, &p, p.n_lm, (double)p.n_patch * cfg_patch_dim(c), 1);

    const float h = 1e-2f;
    for (int i = 0; i < m.ps.n; i++) {
        const param_info *pi = &m.ps.info[i];
        const float *g = m.ps.g + pi->offset;
        size_t argmax = 0;
        float gmax = 0;
        for (size_t k = 0; k < pi->numel; k++)
            if (fabsf(g[k]) > gmax) {
                gmax = fabsf(g[k]);
                argmax = k;
            }
        double worst = 0;
        size_t probes[3] = {argmax, rng_u64(&r) % pi->numel, rng_u64(&r) % pi->numel};
        for (int q = 0; q < 3; q++) {
            float *w = m.ps.w + pi->offset + probes[q], w0 = *w;
            *w = w0 + h;
            double lp = loss_of(&m, &p);
            *w = w0 - h;
            double lm = loss_of(&m, &p);
            *w = w0;
            double fd = (lp - lm) / (2.0 * h), err = fabs(fd - g[probes[q]]);
            if (err > worst) worst = err;
        }
        CHECK(gmax > 0 && worst <= tol * gmax + 1e-5, "%s: gradient of %s (max |g| %.3g, worst fd error %.3g)", label,
              pi->name, gmax, worst);
    }
    model_free(&m);
    plan_free(&p);
    batch_free(&b);
}

int main(void) {
    model_config c = {.vocab_size = 41,
                      .hidden_size = 24,
                      .num_hidden_layers = 2,
                      .num_attention_heads = 3,
                      .intermediate_size = 40,
                      .rms_norm_eps = 1e-5f,
                      .rope_theta = 10000,
                      .latent_channels = 3,
                      .latent_size = 4,
                      .patch_size = 2,
                      .max_image_patches = 5,
                      .timestep_dim = 16,
                      .diffusion_steps = 1000,
                      .lambda_diffusion = 5,
                      .bos_token_id = 1,
                      .eos_token_id = 2,
                      .boi_token_id = 39,
                      .eoi_token_id = 40};
    nn_init(1); /* tiny maps: OpenMP would cost more than it saves */
    check_config(&c, "linear", 2e-3);
    model_config u = c;
    u.image_unet = 1, u.unet_levels = 2, u.unet_channels[0] = 4, u.unet_channels[1] = 6;
    u.unet_layers_per_block = 1, u.unet_groups = 2;
    /* Stacks of GroupNorm have larger third derivatives: at h = 1e-2 the
     * U-Net's worst error was 0.38% of the tensor's largest gradient, 1.4% at
     * 2e-2 (truncation, ~h^2) and 0.6% at 5e-3 (float32 rounding, ~1/h), so
     * 1e-2 is the best step and 1% the bound. */
    check_config(&u, "unet", 1e-2);
    /* three levels, two blocks each: skips of several sizes, blocks without a shortcut */
    u.latent_size = 8, u.patch_size = 4, u.unet_levels = 3, u.unet_channels[2] = 6, u.unet_layers_per_block = 2;
    check_config(&u, "unet 3 levels", 1e-2);
    return CHECK_DONE();
}
