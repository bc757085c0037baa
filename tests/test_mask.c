/* test_mask.c - what each position can see, checked on the whole model:
 * change one input and see which final hidden states move.
 *
 * Row 0: doc A = BOS t t BOI p0 p1 p2 p3 EOI t EOS, doc B = BOS t t t EOS,
 *        then pads. Row 1: an image-first pair, then pads. */
#include "check.h"
#include "../trainer/block.h"
#include "../nn/kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { L = 24 };
static model m;
static model_config c;

/* Final hidden states of a batch, copied. */
static float *hidden(const batch *b) {
    plan p;
    plan_build(&p, b, &c);
    const float *h = model_hidden(&m, &p);
    size_t n = (size_t)p.N * c.hidden_size;
    float *copy = malloc(n * sizeof(float));
    memcpy(copy, h, n * sizeof(float));
    plan_free(&p);
    return copy;
}

/* Largest change of position i's hidden state (row-major index). */
static double moved(const float *a, const float *b, int i) {
    double mx = 0;
    for (int k = 0; k < c.hidden_size; k++)
        mx = fmax(mx, fabs((double)a[(size_t)i * c.hidden_size + k] - b[(size_t)i * c.hidden_size + k]));
    return mx;
}

/* Positions [from, to) of the row-major batch moved (all) or stayed (none). */
static int all_moved(const float *a, const float *b, int from, int to) {
    for (int i = from; i < to; i++)
        if (moved(a, b, i) < 1e-4) {
            printf("position %d moved only by %g\n", i, moved(a, b, i));
            return 0;
        }
    return 1;
}
static int none_moved(const float *a, const float *b, int from, int to) {
    for (int i = from; i < to; i++)
        if (moved(a, b, i) != 0.0) {
            printf("position %d moved by %g\n", i, moved(a, b, i));
            return 0;
        }
    return 1;
}

int main(void) {
    c = (model_config){.vocab_size = 50,
                       .hidden_size = 32,
                       .num_hidden_layers = 2,
                       .num_attention_heads = 4,
                       .intermediate_size = 48,
                       .rms_norm_eps = 1e-5f,
                       .rope_theta = 10000,
                       .latent_channels = 2,
                       .latent_size = 4,
                       .patch_size = 2,
                       .max_image_patches = 4,
                       .timestep_dim = 16,
                       .diffusion_steps = 1000,
                       .lambda_diffusion = 5,
                       .bos_token_id = 1,
                       .eos_token_id = 2,
                       .boi_token_id = 48,
                       .eoi_token_id = 49};
    nn_init(2);
    model_create(&m, &c);
    model_init_weights(&m, 11);
    for (size_t k = 0; k < m.ps.numel; k++) m.ps.w[k] *= 5.0f; /* every path visible, softmax not yet one-hot */

    /* modality per position: T token, P patch, _ pad */
    const char *rows[2] = {"TTTTPPPPTTTTTTTT________", "TTPPPPTTTT______________"};
    const int docs[2][L] = {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}};
    batch b = {.B = 2, .L = L, .n_images = 2};
    int lat = c.latent_channels * c.latent_size * c.latent_size;
    b.tokens = calloc(2 * L, 4);
    b.modality = calloc(2 * L, 4);
    b.doc = calloc(2 * L, 4);
    b.image = calloc(2 * L, 4);
    b.latents = calloc(2 * lat, 4);
    b.noise = calloc(2 * lat, 4);
    b.timesteps = calloc(2, 4);
    rng r;
    rng_seed(&r, 5);
    for (int row = 0; row < 2; row++)
        for (int i = 0; i < L; i++) {
            int k = row * L + i;
            b.modality[k] = rows[row][i] == 'T' ? MOD_TOKEN : rows[row][i] == 'P' ? MOD_PATCH : MOD_PAD;
            b.tokens[k] = rng_int(&r, 3, 47);
            b.doc[k] = b.modality[k] == MOD_PAD ? 7 : docs[row][i];
            b.image[k] = b.modality[k] == MOD_PATCH ? row : -1;
        }
    for (int k = 0; k < 2 * lat; k++) {
        b.latents[k] = (float)rng_normal(&r);
        b.noise[k] = (float)rng_normal(&r);
    }
    b.timesteps[0] = 300;
    b.timesteps[1] = 100;
    float *base = hidden(&b);

    /* 1. a text token sees no later position: change token 9 of doc A */
    b.tokens[9] += 1;
    float *h = hidden(&b);
    CHECK(none_moved(base, h, 0, 9), "text before position 9 is unchanged by token 9");
    CHECK(all_moved(base, h, 9, 11), "token 9 and the rest of its document move");
    CHECK(none_moved(base, h, 11, L), "the next document and the pads do not see token 9");
    CHECK(none_moved(base, h, L, 2 * L), "another row does not see token 9");
    b.tokens[9] -= 1;
    free(h);

    /* 2. a patch sees every patch of its image: change the latent of patch 3 only
     *    (patch k = 3 covers x[c, 2..3, 2..3]) */
    float saved = b.latents[2 * c.latent_size + 2];
    b.latents[2 * c.latent_size + 2] += 1.0f;
    h = hidden(&b);
    CHECK(all_moved(base, h, 4, 8), "every patch of the image sees its last patch");
    CHECK(none_moved(base, h, 0, 4), "the caption and BOI before the image do not see it");
    CHECK(all_moved(base, h, 8, 11), "EOI and the text after the image see it");
    CHECK(none_moved(base, h, 11, L), "the next document does not see the image");
    b.latents[2 * c.latent_size + 2] = saved;
    free(h);

    /* 3. nothing after the image: change the token after EOI */
    b.tokens[9] += 2;
    b.tokens[8] += 1;
    h = hidden(&b);
    CHECK(none_moved(base, h, 0, 8), "the image and everything before it do not see EOI or later");
    b.tokens[9] -= 2;
    b.tokens[8] -= 1;
    free(h);

    /* 4. nothing crosses a document: change the first token of doc B */
    b.tokens[12] += 1;
    h = hidden(&b);
    CHECK(none_moved(base, h, 0, 11), "document A does not see document B");
    CHECK(all_moved(base, h, 12, 16), "document B sees its own token");
    b.tokens[12] -= 1;
    free(h);

    /* 5. an image-first pair: the image sees nothing of the caption after it */
    b.tokens[L + 7] += 1;
    h = hidden(&b);
    CHECK(none_moved(base, h, L, L + 7), "row 1: the image and BOI do not see the caption after EOI");
    b.tokens[L + 7] -= 1;
    free(h);

    /* 6. pads: no NaN anywhere, no loss, and their token ids are ignored */
    int finite = 1;
    for (size_t k = 0; k < (size_t)2 * L * c.hidden_size; k++) finite &= isfinite(base[k]) != 0;
    CHECK(finite, "no NaN or Inf in any hidden state, pads included");
    for (int k = 0; k < 2 * L; k++)
        if (b.modality[k] == MOD_PAD) b.tokens[k] = 0;
    h = hidden(&b);
    CHECK(none_moved(base, h, 0, 2 * L), "token ids at pads change nothing");
    free(h);
    plan p;
    plan_build(&p, &b, &c);
    int lm_on_pad = 0;
    for (int k = 0; k < p.n_lm; k++) lm_on_pad |= b.modality[p.lm_row[k]] != MOD_TOKEN;
    CHECK(!lm_on_pad && p.n_lm == 5 + 4 + 4, "LM targets are token->token pairs of one document only (%d)", p.n_lm);
    nn_zero(m.ps.g, m.ps.numel);
    loss_sums s = model_step(&m, &p, p.n_lm, (double)p.n_patch * cfg_patch_dim(&c), 1);
    double gsum = 0;
    for (size_t k = 0; k < m.ps.numel; k++) gsum += m.ps.g[k];
    CHECK(isfinite(s.ce_sum) && isfinite(s.se_sum) && isfinite(gsum), "loss and gradients are finite with pads");
    plan_free(&p);
    free(base);
    batch_free(&b);
    model_free(&m);
    return CHECK_DONE();
}
