/* proc — a child process running another program, its output in a log
 * file: what the loopback harness starts its aggregator and nodes with and
 * the aggregator its `fedlora eval` children with. */
#ifndef FL_UTIL_PROC_H
#define FL_UTIL_PROC_H

#include <sys/types.h>

typedef struct {
    const char *log;        /* stdout and stderr go here (created, mode 0644) */
    int append;             /* 1: append to the log; 0: truncate it */
    const char *const *env; /* "NAME=VALUE" strings set in the child, NULL-terminated (or NULL) */
    int nice;               /* added to the child's nice value (0: none) */
    int own_group;          /* 1: the child leads a process group of its own, so that a
                               terminal's Ctrl-C reaches the parent only */
} proc_options;

/* Starts bin with argv (argv[0] included, NULL-terminated) and stdin from
 * /dev/null: nothing may wait for an answer. *pid gets the child. An exec
 * that fails ends the child with status 127. */
int proc_spawn(pid_t *pid, const char *bin, const char *const *argv, const proc_options *o);

#endif
