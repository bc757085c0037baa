/* proc.h - child processes and temporary folders for the tests that run a
 * service binary (test_vae_serve, test_dataloader_serve): spawn with stdout
 * (and stderr) on pipes, read a line with a timeout, wait for an exit with a
 * deadline, remove a folder tree. */
#ifndef TESTS_PROC_H
#define TESTS_PROC_H

#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* fork + execv with stdout (and, when err_fd is given, stderr) to pipes. */
static inline pid_t spawn(char *const argv[], int *out_fd, int *err_fd) {
    int po[2], pe[2] = {-1, -1};
    if (pipe(po) || (err_fd && pipe(pe))) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(po[1], 1);
        if (err_fd) dup2(pe[1], 2);
        close(po[0]), close(po[1]);
        if (err_fd) close(pe[0]), close(pe[1]);
        execv(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    if (err_fd) close(pe[1]);
    *out_fd = po[0];
    if (err_fd) *err_fd = pe[0];
    return pid;
}

/* SIGKILL to *pid (when there is one), reaped; *pid becomes -1. */
static inline void kill_wait(pid_t *pid) {
    if (*pid > 0) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
        *pid = -1;
    }
}

/* Reads what fd gives until EOF, a newline (stop_at_newline) or the timeout. */
static inline int read_text(int fd, char *buf, size_t len, int stop_at_newline, int timeout_ms) {
    size_t n = 0;
    buf[0] = '\0';
    while (n + 1 < len) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0) return -1;
        ssize_t k = read(fd, buf + n, 1);
        if (k <= 0) break;
        n++;
        buf[n] = '\0';
        if (stop_at_newline && buf[n - 1] == '\n') break;
    }
    return (int)n;
}

/* waitpid with a deadline: 0 and *status when the child ended in time. */
static inline int wait_exit(pid_t pid, int timeout_ms, int *status) {
    for (int t = 0; t < timeout_ms; t += 20) {
        pid_t r = waitpid(pid, status, WNOHANG);
        if (r == pid) return 0;
        if (r < 0) return -1;
        usleep(20000);
    }
    return -1;
}

static inline int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline int remove_tree(const char *dir) { return nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

#endif
