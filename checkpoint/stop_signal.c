/* stop_signal.c - a stop flag set by SIGTERM, SIGINT, SIGUSR1 (stop_signal.h). */
#include "stop_signal.h"
#include "../nn/dist.h"

#include <signal.h>
#include <stdint.h>
#include <string.h>

static volatile sig_atomic_t pending;

static void on_signal(int sig) {
    if (!pending) pending = sig;
}

void stop_signal_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
}

int stop_signal_pending(void) { return pending; }

int stop_signal_any_rank(void) {
    int64_t any = pending != 0;
    dist_allreduce_sum_i64(&any, 1);
    return any != 0;
}
