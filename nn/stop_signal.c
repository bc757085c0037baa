/* stop_signal.c - a stop flag set by SIGTERM, SIGINT, SIGUSR1 (stop_signal.h). */
#include "stop_signal.h"
#include "dist.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>
#include <stdint.h>
#include <string.h>

static volatile sig_atomic_t pending;

static void on_signal(int sig) {
    if (!pending) pending = sig;
}

static sigset_t stop_set;

/* The watcher: the only thread of ours that takes the signals. */
static void *watch(void *arg) {
    (void)arg;
    pthread_sigmask(SIG_UNBLOCK, &stop_set, NULL);
    for (;;) pause(); /* on_signal runs here */
    return NULL;
}

void stop_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&stop_set);
    static const int sigs[] = {SIGTERM, SIGINT, SIGUSR1};
    for (int i = 0; i < 3; i++) {
        sigaddset(&stop_set, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, watch, NULL) == 0)
        pthread_detach(t);
    else
        pthread_sigmask(SIG_UNBLOCK, &stop_set, NULL); /* no watcher: take them here, as before */
}

int stop_signal_pending(void) { return pending; }

int stop_signal_any_rank(void) {
    int64_t any = pending != 0;
    dist_allreduce_sum_i64(&any, 1);
    return any != 0;
}
