/* commands.h - the vae_service commands that live outside main.c, and the
 * flags they share. */
#ifndef VAE_SERVICE_COMMANDS_H
#define VAE_SERVICE_COMMANDS_H

#include "../common/cli.h"
#include "../vae/vae.h"

/* The commands, each with its table of flags. */
extern const cli_command vae_train_command, vae_eval_command;    /* train.c */
extern const cli_command vae_encode_command, vae_decode_command; /* latents.c */
extern const cli_command vae_serve_command;                      /* serve.c */

/* --loss l2|l1 and --precision bf16|fp32 (1: bf16), which several
 * commands take with defaults of their own (train.c). */
vae_loss_kind vae_loss_arg(const args *a);
int vae_bf16_arg(const args *a);

#endif
