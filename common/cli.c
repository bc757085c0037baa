/* cli.c - command-line parsing (cli.h). */
#include "cli.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The known flag spec for name: "name" or "name!" (a switch); NULL if none. */
static const char *flag_spec(const args *a, const char *name) {
    size_t n = strlen(name);
    for (int k = 0; a->flags[k]; k++)
        if (strncmp(a->flags[k], name, n) == 0 && (a->flags[k][n] == '\0' || strcmp(a->flags[k] + n, "!") == 0))
            return a->flags[k];
    return NULL;
}

static int is_switch(const char *spec) { return spec[strlen(spec) - 1] == '!'; }

/* Index of --name in argv, or -1. */
static int find(const args *a, const char *name) {
    for (int i = 0; i < a->argc; i++) {
        if (strncmp(a->argv[i], "--", 2) != 0) continue;
        const char *spec = flag_spec(a, a->argv[i] + 2);
        if (strcmp(a->argv[i] + 2, name) == 0) return i;
        if (spec && !is_switch(spec)) i++;              /* skip the value */
    }
    return -1;
}

const char *arg_str(const args *a, const char *name, const char *def) {
    int i = find(a, name);
    return i < 0 ? def : a->argv[i + 1];
}

int arg_switch(const args *a, const char *name) { return find(a, name) >= 0; }

const char *arg_required(const args *a, const char *name) {
    const char *v = arg_str(a, name, NULL);
    if (!v) die_input("%s %s: missing --%s", a->prog, a->cmd, name);
    return v;
}

long arg_int(const args *a, const char *name, long def, long min) {
    const char *v = arg_str(a, name, NULL);
    if (!v) return def;
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < min)
        die_input("%s %s: --%s %s: expected an integer >= %ld", a->prog, a->cmd, name, v, min);
    return x;
}

double arg_float(const args *a, const char *name, double def) {
    const char *v = arg_str(a, name, NULL);
    if (!v) return def;
    char *end;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(x > 0))
        die_input("%s %s: --%s %s: expected a positive number", a->prog, a->cmd, name, v);
    return x;
}

/* Every argument must be a known --flag, with a value unless a switch. */
static void check_args(const args *a) {
    for (int i = 0; i < a->argc; i++) {
        const char *spec = strncmp(a->argv[i], "--", 2) == 0 ? flag_spec(a, a->argv[i] + 2) : NULL;
        if (!spec) die_input("%s %s: unknown argument '%s'", a->prog, a->cmd, a->argv[i]);
        if (is_switch(spec)) continue;
        if (i + 1 >= a->argc) die_input("%s %s: %s needs a value", a->prog, a->cmd, a->argv[i]);
        i++;
    }
}

int cli_main(const char *prog, int argc, char **argv, const command *cmds, int n, const char *usage) {
    for (int k = 0; argc >= 2 && k < n; k++) {
        if (strcmp(argv[1], cmds[k].name) != 0) continue;
        args a = {argc - 2, argv + 2, prog, cmds[k].name, cmds[k].flags};
        check_args(&a);
        return cmds[k].run(&a);
    }
    fputs(usage, stderr);
    return EXIT_BAD_INPUT;
}
