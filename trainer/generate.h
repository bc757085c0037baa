/* generate.h - Transfusion generation: K samples run together, in LM mode
 * (next token: temperature, top-k, top-p; stop at EOS or a token budget)
 * until a sample emits BOI, then in diffusion mode for that image (D reverse
 * steps from Gaussian noise over a subsequence of the training steps, DDIM or
 * DDPM, with classifier-free guidance), after which the clean image and EOI
 * enter its sequence and LM mode continues.
 *
 * Samples are sequences 0..K-1 of an infer.h context; with guidance, the
 * unconditional branch of sample i is sequence K + i, holding `BOS BOI` and
 * the image being denoised (the image without its caption, as caption
 * dropout showed it in training). A finished image enters its sequence as its
 * clean latent with the timestep features of t = 1, the least-noised level
 * training sees (and what captioning feeds a given image).
 *
 * Every random draw of sample i comes from its own stream, seeded by (seed,
 * i): the same seed and thread count give the same samples. */
#ifndef TRAINER_GENERATE_H
#define TRAINER_GENERATE_H

#include "infer.h"

#include <stdint.h>

typedef struct {
    int n;             /* samples K */
    int context;       /* positions per sequence */
    int max_tokens;    /* sampled tokens per sample, EOS and BOI included */
    float temperature; /* 0: greedy (argmax) */
    float top_p;       /* 1: off */
    int top_k;         /* 0: off */
    int steps;         /* denoising steps D (1..T) */
    float eta;         /* 0: DDIM, 1: DDPM ancestral */
    float clip;        /* predicted x0 clipped to [-clip, clip]; 0: off */
    float cfg;         /* guidance scale G; 1: no unconditional branch */
    uint64_t seed;
    int text_only;  /* BOI is never sampled (captions; the LM benchmark) */
    int ignore_eos; /* EOS is never sampled (the LM benchmark) */
    int min_tokens; /* nor before this many sampled tokens (a caption: at least a word) */
    int recompute;  /* no KV cache: every forward recomputes each sequence */
} gen_options;

typedef struct {
    int n_tok;
    int32_t *tok; /* after the prefix: the sampled tokens, and EOI after each image */
    int n_img;
    float *img;       /* [n_img, C, h, w]: the generated (normalized) latents */
    const char *stop; /* "eos", "max_tokens" or "context" */
} gen_sample;

/* Called with the logits each sampled token is drawn from (tests). */
typedef void (*gen_logits_fn)(void *ctx, int sample, const float *logits, int V);

/* Runs from prefix (rows of sequences 0..K-1, each starting with BOS; a
 * prefix that ends with BOI starts with an image). out[K] is filled (free
 * with gen_sample_free). Returns non-zero with err when a prefix does not
 * fit the context. */
int generate(model *m, const gen_options *o, const infer_rows *prefix, gen_sample *out, gen_logits_fn on_logits,
             void *ctx, char *err);
void gen_sample_free(gen_sample *s);

#endif
