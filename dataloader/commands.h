/* commands.h - the dataloader commands that live outside main.c. */
#ifndef DATALOADER_COMMANDS_H
#define DATALOADER_COMMANDS_H

#include "../common/cli.h"

extern const cli_command dl_tokenize_command; /* tokenize.c */
extern const cli_command dl_serve_command;    /* serve.c */
extern const cli_command dl_inspect_command;  /* inspect.c */

#endif
