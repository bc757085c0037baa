/* eval.h - `trainer eval` (eval.c): held-out figures of a checkpoint.
 *
 *   trainer eval --ckpt DIR --vae VAE_DIR --images 'data/images-64/val-*.tar'
 *                [--text data/text/heldout] [--prompts configs/eval_prompts.txt]
 *                [--n 64] [--timesteps 4] [--candidates 16] [--text-docs 64]
 *                [--seed S] [--out eval.json] [--threads T] [--device D]
 *                [--steps D --sampler S --cfg G ...: generation, as `trainer sample`]
 *
 * On the first n images of --images (with their captions):
 *   diffusion_loss   the diffusion loss of each image, caption first, at
 *                    --timesteps draws of t per image (uniform in 1..T): with
 *                    its own caption, another held-out image's caption (a
 *                    fixed derangement) and none (BOS BOI image EOI EOS);
 *                    caption_gain_pct = how much lower it is with the right
 *                    caption than with the wrong one, overall and per quarter
 *                    of the timesteps. It measures whether the caption steers
 *                    the denoiser, not image quality.
 *   captioning       the caption's LM loss (nats per token, EOS included)
 *                    after its own clean image (t = 1) and after another
 *                    (image_gain_pct); caption retrieval: each image's own
 *                    caption ranked among --candidates held-out captions by
 *                    its loss given the image (top-1 and top-5, with chance).
 *                    It measures whether the model reads the image, not how
 *                    fluent its captions are.
 *   text             (--text) bits per UTF-8 byte on held-out documents that
 *                    fit the context, taken from the folder's files in turn.
 *   generation       (--prompts) one image per prompt with the sampling flags
 *                    of `trainer sample` (default DDPM 250 steps, cfg 5): the
 *                    Fréchet distance between Gaussian fits of the generated
 *                    and the real images' normalized latents, with the
 *                    distance between two halves of the real images beside
 *                    it (its floor at this sample size); and each generated
 *                    image's own prompt ranked among --candidates prompts by
 *                    the captioning loss. A latent distance says whether the
 *                    images are distributed like real ones, not whether a
 *                    person would find them good.
 * Timesteps, noise, pairings and candidates are fixed by --seed. Under
 * mpirun the rows are split over the ranks with the same result. Prints one
 * JSON object and writes it to --out. */
#ifndef TRAINER_EVAL_H
#define TRAINER_EVAL_H

#include "../common/cli.h"

#include <cjson/cJSON.h>

extern const cli_command eval_command;

/* The figures as one JSON object (the caller's to free), on every rank: the
 * work of `trainer eval` without its device setup and output; every rank
 * calls it. `trainer train --eval-every` runs it on the checkpoint it has
 * just saved. */
cJSON *eval_run(const args *a);

#endif
