/* commands.h - the dataloader commands that live outside main.c. */
#ifndef DATALOADER_COMMANDS_H
#define DATALOADER_COMMANDS_H

#include "../common/cli.h"

int dl_cmd_tokenize(const args *a);   /* tokenize.c */
int dl_cmd_serve(const args *a);      /* serve.c */
int dl_cmd_inspect(const args *a);    /* inspect.c */

#endif
