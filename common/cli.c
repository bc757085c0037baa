/* cli.c - the command line of every program (cli.h): parsing and checking
 * against a command's flag tables, and the help generated from them. */
#include "cli.h"
#include "error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FOR_EACH_FLAG(c, f)                                                                                            \
    for (int g_ = 0; g_ < 6 && (c)->flags[g_]; g_++)                                                                   \
        for (const cli_flag *f = (c)->flags[g_]; f->name; f++)

#define TYPE(f) ((f)->kind & FLAG_TYPE)

static const cli_flag *lookup(const cli_command *c, const char *name) {
    FOR_EACH_FLAG(c, f) if (strcmp(f->name, name) == 0) return f;
    return NULL;
}

static const cli_flag *declared(const args *a, const char *name) {
    const cli_flag *f = lookup(a->cmd, name);
    if (!f) die("%s %s: reads --%s, which its flag table does not declare", a->prog->name, a->cmd->name, name);
    return f;
}

/* Index of the first --name in argv, or -1 (argv has been checked, so every
 * flag but a switch is followed by its value). */
static int find(const args *a, const char *name) {
    for (int i = 0; i < a->argc; i++) {
        const cli_flag *f = lookup(a->cmd, a->argv[i] + 2);
        if (strcmp(a->argv[i] + 2, name) == 0) return i;
        if (TYPE(f) != FLAG_SWITCH) i++;
    }
    return -1;
}

/* ---- ranges: "[lo, hi]" with ( ) for open ends and inf for none ---- */

typedef struct {
    double lo, hi;
    int lo_open, hi_open;
} interval;

static interval parse_range(const char *r) {
    interval v;
    char *end;
    v.lo_open = r[0] == '(';
    v.lo = strtod(r + 1, &end);
    while (*end == ',' || *end == ' ') end++;
    v.hi = strtod(end, &end);
    v.hi_open = *end == ')';
    return v;
}

static int in_range(double x, const char *range) {
    if (!range) return 1;
    interval v = parse_range(range);
    return (v.lo_open ? x > v.lo : x >= v.lo) && (v.hi_open ? x < v.hi : x <= v.hi);
}

/* "an integer >= 1", "a number > 0", "a number in (0, 1]". */
static void describe(const cli_flag *f, char *buf, size_t len) {
    const char *what = TYPE(f) == FLAG_INT ? "an integer" : "a number";
    if (!f->range) {
        snprintf(buf, len, "%s", what);
        return;
    }
    interval v = parse_range(f->range);
    if (isinf(v.hi))
        snprintf(buf, len, "%s %s %g", what, v.lo_open ? ">" : ">=", v.lo);
    else
        snprintf(buf, len, "%s in %s", what, f->range);
}

static int is_choice(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *p = choices; p; p = strchr(p, '|'), p = p ? p + 1 : NULL)
        if (strncmp(p, v, n) == 0 && (p[n] == '|' || p[n] == '\0')) return 1;
    return 0;
}

/* ---- help ---- */

/* "PROG COMMAND --required VALUE ... [flags]", and where --help is not the
 * reader, "('PROG COMMAND --help' lists them)". */
static void print_synopsis(FILE *out, const cli_program *p, const cli_command *c, int hint) {
    fprintf(out, "%s %s", p->name, c->name);
    FOR_EACH_FLAG(c, f) if (f->kind & FLAG_REQUIRED) fprintf(out, " --%s %s", f->name, f->value);
    fprintf(out, " [flags]");
    if (hint) fprintf(out, " ('%s %s --help' lists them)", p->name, c->name);
    fprintf(out, "\n");
}

void cli_print_help(const cli_program *p, const cli_command *c) {
    if (!c) {
        printf("usage: %s COMMAND [flags]\n%s\n\ncommands:\n", p->name, p->summary);
        for (int k = 0; k < p->n_commands; k++) printf("  %-16s %s\n", p->commands[k]->name, p->commands[k]->summary);
        printf("\n'%s COMMAND --help' lists a command's flags.\n", p->name);
        return;
    }
    printf("usage: ");
    print_synopsis(stdout, p, c, 0);
    printf("%s\n\nflags:\n", c->summary);
    FOR_EACH_FLAG(c, f) {
        char head[96], kind[96] = "";
        snprintf(head, sizeof head, "--%s%s%s", f->name, f->value ? " " : "", f->value ? f->value : "");
        if (TYPE(f) == FLAG_INT || TYPE(f) == FLAG_NUM) describe(f, kind, sizeof kind);
        printf("  %-26s %s", head, f->help);
        if ((f->kind & FLAG_REQUIRED))
            printf(" (required)");
        else if (*kind || f->def || (f->kind & FLAG_REPEATED))
            printf(" (%s%s%s%s%s)", kind, *kind && f->def ? "; " : "", f->def ? "default " : "", f->def ? f->def : "",
                   (f->kind & FLAG_REPEATED) ? (*kind || f->def ? "; repeatable" : "repeatable") : "");
        printf("\n");
    }
}

/* ---- checking ---- */

__attribute__((noreturn, format(printf, 2, 3))) static void bad_args(const args *a, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* One line, as all bad input gets: the reason, then the usage. */
    fprintf(stderr, "error: %s %s: %s; usage: ", a->prog->name, a->cmd->name, line);
    print_synopsis(stderr, a->prog, a->cmd, 1);
    exit(EXIT_BAD_INPUT);
}

/* What is wrong with v as a value of f, into why ("expected an integer >= 1",
 * "expected a, b or c"); 0 when it is a valid value. */
static int invalid(const cli_flag *f, const char *v, char *why, size_t len) {
    char *end, kind[96];
    if (TYPE(f) == FLAG_INT || TYPE(f) == FLAG_NUM) {
        double x = TYPE(f) == FLAG_INT ? (double)strtol(v, &end, 10) : strtod(v, &end);
        if (*v != '\0' && *end == '\0' && !isnan(x) && in_range(x, f->range)) return 0;
        describe(f, kind, sizeof kind);
        snprintf(why, len, "expected %s", kind);
        return 1;
    }
    if (TYPE(f) != FLAG_CHOICE || is_choice(f->value, v)) return 0;
    snprintf(why, len, "expected ");   /* "a|b|c" reads "a, b or c" */
    for (const char *p = f->value, *bar; *p; p = bar ? bar + 1 : p + strlen(p)) {
        bar = strchr(p, '|');
        const char *sep = p == f->value ? "" : bar ? ", " : " or ";
        snprintf(why + strlen(why), len - strlen(why), "%s%.*s", sep, (int)(bar ? (size_t)(bar - p) : strlen(p)), p);
    }
    return 1;
}

/* Every argument a known --flag with a valid value; every required flag given. */
static void check_args(const args *a) {
    for (int i = 0; i < a->argc; i++) {
        const cli_flag *f = strncmp(a->argv[i], "--", 2) == 0 ? lookup(a->cmd, a->argv[i] + 2) : NULL;
        if (!f) bad_args(a, "unknown argument '%s'", a->argv[i]);
        if (!(f->kind & FLAG_REPEATED) && find(a, f->name) < i) bad_args(a, "--%s given more than once", f->name);
        if (TYPE(f) == FLAG_SWITCH) continue;
        if (i + 1 >= a->argc) bad_args(a, "%s needs a value", a->argv[i]);
        char why[256];
        i++;
        if (invalid(f, a->argv[i], why, sizeof why)) bad_args(a, "--%s %s: %s", f->name, a->argv[i], why);
    }
    FOR_EACH_FLAG(a->cmd, f)
    if ((f->kind & FLAG_REQUIRED) && find(a, f->name) < 0) bad_args(a, "missing --%s", f->name);
}

/* A default the command's own check would refuse is a bug in its table. */
static void check_defaults(const args *a) {
    char why[256];
    FOR_EACH_FLAG(a->cmd, f)
    if (f->def && invalid(f, f->def, why, sizeof why))
        die("%s %s: the default of --%s, %s, is not a valid value (%s)", a->prog->name, a->cmd->name, f->name, f->def,
            why);
}

static int wants_help(int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) return 1;
    return 0;
}

/* Words of argv that name c (1 or 2: "tokenizer train"), 0 if it does not. */
static int names(const cli_command *c, int argc, char **argv) {
    const char *space = strchr(c->name, ' ');
    if (!space) return argc >= 1 && strcmp(argv[0], c->name) == 0;
    size_t n = (size_t)(space - c->name);
    return argc >= 2 && strlen(argv[0]) == n && strncmp(argv[0], c->name, n) == 0 && strcmp(argv[1], space + 1) == 0
        ? 2
        : 0;
}

int cli_main(const cli_program *p, int argc, char **argv) {
    for (int k = 0; k < p->n_commands; k++) {
        const cli_command *c = p->commands[k];
        int w = names(c, argc - 1, argv + 1);
        if (!w) continue;
        args a = {argc - 1 - w, argv + 1 + w, p, c};
        check_defaults(&a);
        if (wants_help(a.argc, a.argv)) {
            cli_print_help(p, c);
            return 0;
        }
        check_args(&a);
        return c->run(&a);
    }
    if (argc >= 2 && wants_help(1, argv + 1)) {
        cli_print_help(p, NULL);
        return 0;
    }
    /* One line, as all bad input gets. */
    if (argc >= 2) fprintf(stderr, "error: %s: unknown command '%s'; ", p->name, argv[1]);
    fprintf(stderr, "usage: %s COMMAND [flags], COMMAND one of", p->name);
    for (int k = 0; k < p->n_commands; k++) fprintf(stderr, "%s %s", k ? "," : "", p->commands[k]->name);
    fprintf(stderr, " ('%s --help' says what each does)\n", p->name);
    return EXIT_BAD_INPUT;
}

const cli_flag cli_threads_flags[] = {
    {"threads", FLAG_INT, "T", "[0, inf)", "0", "CPU threads (0: OMP_NUM_THREADS, else every core)"},
    {0},
};

/* ---- values ---- */

const char *arg_str(const args *a, const char *name) {
    const cli_flag *f = declared(a, name);
    int i = find(a, name);
    return i >= 0 ? a->argv[i + 1] : f->def;
}

int arg_given(const args *a, const char *name) {
    declared(a, name);
    return find(a, name) >= 0;
}

int arg_switch(const args *a, const char *name) { return arg_given(a, name); }

static const char *number_text(const args *a, const char *name) {
    const char *v = arg_str(a, name);
    if (!v)
        die("%s %s: --%s has no value and no default; the caller must ask arg_given first", a->prog->name, a->cmd->name,
            name);
    return v;
}

/* Values and defaults were checked before the command ran. */
long arg_int(const args *a, const char *name) { return strtol(number_text(a, name), NULL, 10); }

double arg_num(const args *a, const char *name) { return strtod(number_text(a, name), NULL); }

int arg_all(const args *a, const char *name, const char **out, int max) {
    declared(a, name);
    int n = 0;
    for (int i = 0; i < a->argc; i++) {
        const cli_flag *f = lookup(a->cmd, a->argv[i] + 2);
        if (TYPE(f) == FLAG_SWITCH) continue;
        if (strcmp(f->name, name) == 0 && n < max) out[n++] = a->argv[i + 1];
        i++;
    }
    return n;
}
