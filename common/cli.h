/* cli.h - command-line parsing shared by the tools: `PROG COMMAND --flag
 * value ... --switch`. Unknown flags, missing values and malformed numbers
 * are bad input: one line naming the flag, exit 2. */
#ifndef COMMON_CLI_H
#define COMMON_CLI_H

typedef struct {
    int argc;
    char **argv;
    const char *prog, *cmd;
    const char *const *flags;   /* known names; a trailing '!' marks a switch (no value) */
} args;

typedef struct {
    const char *name;
    int (*run)(const args *a);
    const char *const *flags;   /* NULL-terminated */
} command;

/* Finds argv[1] among cmds, checks its flags, runs it. Prints usage and
 * returns 2 when the command is unknown. */
int cli_main(const char *prog, int argc, char **argv, const command *cmds, int n, const char *usage);

const char *arg_str(const args *a, const char *name, const char *def);
const char *arg_required(const args *a, const char *name);
long arg_int(const args *a, const char *name, long def, long min);
double arg_float(const args *a, const char *name, double def);   /* must be > 0 */
int arg_switch(const args *a, const char *name);                  /* 1 when given */

#endif
