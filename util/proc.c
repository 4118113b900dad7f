/* proc — child processes with their output in a log (proc.h). */
#include "util/proc.h"

#include "util/err.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

int proc_spawn(pid_t *pid, const char *bin, const char *const *argv, const proc_options *o) {
    int fd = open(o->log, O_WRONLY | O_CREAT | O_CLOEXEC | (o->append ? O_APPEND : O_TRUNC), 0644);
    if (fd < 0) return err_errno("cannot create %s", o->log);
    fflush(NULL);
    pid_t p = fork();
    if (p < 0) {
        close(fd);
        return err_errno("fork");
    }
    if (p == 0) {
        int in = open("/dev/null", O_RDONLY);
        if (in < 0 || dup2(in, STDIN_FILENO) < 0 || dup2(fd, STDOUT_FILENO) < 0 ||
            dup2(fd, STDERR_FILENO) < 0)
            _exit(127);
        if (o->own_group) setpgid(0, 0);
        if (o->nice) setpriority(PRIO_PROCESS, 0, o->nice); /* best effort: it only yields */
        for (const char *const *e = o->env; e && *e; e++) putenv((char *)*e);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    close(fd);
    *pid = p;
    return 0;
}
