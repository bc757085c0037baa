/* commands.h - the vae_service commands that live outside main.c. */
#ifndef VAE_SERVICE_COMMANDS_H
#define VAE_SERVICE_COMMANDS_H

#include "../common/cli.h"
#include "../vae/vae.h"

int vae_cmd_train(const args *a);   /* train.c */
int vae_cmd_eval(const args *a);    /* train.c */
int vae_cmd_encode(const args *a);  /* latents.c */
int vae_cmd_decode(const args *a);  /* latents.c */
int vae_cmd_serve(const args *a);   /* serve.c */

/* --loss l2 (the default) or l1; bad input exits 2 naming the command. */
vae_loss_kind vae_loss_arg(const args *a, const char *command);   /* train.c */
/* --precision bf16|fp32 (fallback when absent): 1 for bf16. train.c */
int vae_precision_arg(const args *a, const char *command, const char *fallback);

#endif
