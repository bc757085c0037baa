/* cli.h - the command line of every program: `PROG COMMAND --flag value ...
 * --switch`, described once per command by a table of flags (name, type,
 * range, default, help line). The parser, the range checks, `--help` on the
 * program and on each command, the usage printed on a bad flag and the
 * command summaries in the READMEs (`make cli-docs`) all come from the
 * tables, so they cannot drift apart.
 *
 * Every value is checked before the command runs: an unknown flag, a missing
 * value or required flag, a malformed number, a number out of range or a
 * choice not listed, or a flag given twice that is not FLAG_REPEATED, is
 * bad input (one line naming the flag, exit 2). */
#ifndef COMMON_CLI_H
#define COMMON_CLI_H

enum {
    FLAG_TEXT,          /* any string: a path, an endpoint, a prompt */
    FLAG_INT,           /* a decimal integer within range */
    FLAG_NUM,           /* a number within range */
    FLAG_CHOICE,        /* one of the words of value, "ddpm|ddim" */
    FLAG_SWITCH,        /* no value: on when given */
    FLAG_TYPE = 7,      /* the bits above; the ones below are or'ed in */
    FLAG_REQUIRED = 8,  /* the command refuses to run without it */
    FLAG_REPEATED = 16, /* may be given more than once (arg_all) */
};

typedef struct {
    const char *name;  /* without the leading "--" */
    int kind;          /* a type, with FLAG_REQUIRED and FLAG_REPEATED */
    const char *value; /* the value's name in help (FILE, N); FLAG_CHOICE: the choices */
    const char *range; /* FLAG_INT, FLAG_NUM: an interval, "[1, inf)", "(0, 1]"; NULL: any */
    const char *def;   /* the default, as it would be typed; NULL: none */
    const char *help;  /* one line */
} cli_flag;

typedef struct args args;

typedef struct {
    const char *name;    /* "train", or two words: "tokenizer train" */
    const char *summary; /* one line */
    int (*run)(const args *a);
    const cli_flag *flags[6]; /* tables of flags, each ended by {0}; groups shared by commands */
} cli_command;

typedef struct {
    const char *name, *summary;
    const cli_command *const *commands;
    int n_commands;
} cli_program;

struct args {
    int argc;
    char **argv; /* the arguments after the command's name */
    const cli_program *prog;
    const cli_command *cmd;
};

/* Finds the command named by argv, checks its flags and runs it. `PROG
 * --help` and `PROG COMMAND --help` (or -h) print the help on stdout and
 * return 0; no command or an unknown one prints the usage and returns 2. */
int cli_main(const cli_program *p, int argc, char **argv);

/* A flag's value, or its default when not given (NULL when it has none).
 * Asking for a flag that the command does not declare is a bug: die. */
const char *arg_str(const args *a, const char *name);
long arg_int(const args *a, const char *name);
double arg_num(const args *a, const char *name);
int arg_switch(const args *a, const char *name);
int arg_given(const args *a, const char *name);
/* Every value of a repeated flag, in order; returns how many (at most max). */
int arg_all(const args *a, const char *name, const char **out, int max);

/* --threads, which every command that runs OpenMP code takes: 0 (the
 * default) leaves OpenMP's own count (OMP_NUM_THREADS, else every core). */
extern const cli_flag cli_threads_flags[];

/* The program's help, or one command's, as --help prints it. */
void cli_print_help(const cli_program *p, const cli_command *c);

#endif
