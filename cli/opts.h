/* opts — the small, uniform option parser every subcommand uses.
 *
 * Options are long only ("--name VALUE" or "--name=VALUE"; boolean flags take
 * no value), may come in any order, and an unknown or repeated option is a
 * usage error that shows the command's usage text, unless the option is a
 * list (opts_spec.list), which collects every value given. */
#ifndef FL_CLI_OPTS_H
#define FL_CLI_OPTS_H

typedef struct {
    const char *name;   /* without the leading "--" */
    const char **value; /* where the value goes (NULL for a flag or a list) */
    int *flag;          /* set to 1 when a flag is given (NULL for a valued option) */
    /* A repeatable option: its values go to list[0 .. *count), at most max
     * (value and flag NULL). */
    const char **list;
    int *count, max;
} opts_spec;

/* Parses argv[1..] (argv[0] is the subcommand's name). Returns -1 when the
 * command should go on; otherwise the exit status to return at once: 0 after
 * printing the usage for --help, 2 after a usage error. Positional arguments,
 * if `positional` is non-NULL, are collected there (up to max_positional). */
int opts_parse_all(int argc, char **argv, const opts_spec *spec, int n, const char *usage,
                   const char **positional, int max_positional, int *n_positional);
int opts_parse(int argc, char **argv, const opts_spec *spec, int n, const char *usage);

/* Prints "fedlora CMD: missing WHAT" and the usage; returns 2. */
int opts_missing(const char *usage, const char *what);
/* Prints "fedlora CMD: " + err_msg() on stderr; returns 1. */
int opts_fail(void);
/* Installs handler for SIGTERM and SIGINT (the commands that run until
 * stopped: they finish what they are doing, then stop cleanly). */
int opts_catch_stop(void (*handler)(int));
/* Parse numbers within bounds; on error set err_msg naming the option. */
int opts_int(const char *s, const char *name, long long lo, long long hi, long long *out);
int opts_double(const char *s, const char *name, double lo, double hi, double *out);

#endif
