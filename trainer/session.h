/* session.h - what generation and evaluation (sample.c, eval.c) open from a
 * checkpoint: the model on the backend of --device, its tokenizer, the VAE
 * and latent statistics that turn pixels into the model's latents and back,
 * and the context. Bad input (flags, files) dies with one line and exit 2.
 *
 * The VAE has CPU kernels only and host activations: every VAE call runs
 * between vae_on_cpu(1) and vae_on_cpu(0), whatever the model's device. */
#ifndef TRAINER_SESSION_H
#define TRAINER_SESSION_H

#include "generate.h"
#include "model.h"
#include "../common/cli.h"
#include "../tokenizer/spm.h"
#include "../vae/vae.h"

#include <stdint.h>

/* The VAE and the dataset's per-channel statistics (latent_stats.json). */
typedef struct {
    vae_model *vae;
    double *mean, *std;
    int size; /* image side in pixels */
} image_io;

typedef struct {
    char dir[4096];      /* the folder that holds the weights */
    const char *weights; /* which: "ema", "raw" (a step folder) or "export" */
    model m;
    spm *tok;
    image_io io;
    int context; /* --context, else the trained seq_len, else 256 */
} session;

/* --device (cpu, cuda, cpu-device), which every command that runs the
 * model takes with cli_threads_flags; session_init_device reads both. */
extern const cli_flag device_flags[];
void session_init_device(const args *a);
void vae_on_cpu(int on);

/* --ckpt: a consolidated folder (`trainer export`, `init`), a training step
 * folder (its checksums verified) or a run's checkpoint folder (its newest
 * step); --weights ema|raw (default: the EMA where the step has one); --vae;
 * --tokenizer (default: the checkpoint's tokenizer.model). */
extern const cli_flag session_flags[];
void session_open(session *s, const args *a);
void session_close(session *s);

/* text's ids into *ids (malloc'ed); refused, naming `what`, when they and
 * `extra` more positions do not fit the context. */
long session_encode(session *s, const char *what, const char *text, long extra, int32_t **ids);
/* The text of ids[0..n) without the special tokens (malloc'ed). */
char *session_decode(const spm *tok, const int32_t *ids, int n);

/* Options for K samples from the text flags (--max-tokens, --top-p,
 * --top-k) and the command's own --temperature and --seed, whose defaults
 * differ between commands. */
extern const cli_flag text_flags[];
gen_options session_text_options(const args *a, int context, int K);
/* The image flags (--steps, --sampler, --eta, --cfg, --clip, --no-cache). */
extern const cli_flag image_flags[];
void session_image_options(const args *a, const model_config *c, gen_options *o);

/* Pixels [n, 3, S, S] in [-1, 1] to latents [n, C, h, w]: the VAE's mean,
 * normalized with the statistics exactly as the dataloader normalizes
 * training latents. */
void image_io_encode(image_io *io, const model_config *c, const float *rgb, int n, float *latents);
/* Latents back to 8-bit RGB [n, S, S, 3]: x0 * std + mean, then the decoder. */
void image_io_decode(image_io *io, const model_config *c, const float *x, int n, uint8_t *rgb);

#endif
