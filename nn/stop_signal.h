/* stop_signal.h - a graceful stop for training: SIGTERM, SIGINT and SIGUSR1
 * only set a flag; the loop checks it after each step, saves a checkpoint
 * and exits cleanly (a batch scheduler's SIGTERM or SIGUSR1 warning, or
 * Ctrl-C, never interrupts a step or a save). */
#ifndef NN_STOP_SIGNAL_H
#define NN_STOP_SIGNAL_H

/* Blocks the three signals in the calling thread, and so in every thread it
 * starts afterwards (OpenMP, oneDNN), and receives them on a watcher thread
 * of its own. A signal must never interrupt a compute thread: oneDNN's JIT
 * GEMM kernels keep data below the stack pointer, which a signal frame
 * overwrites (seen here: heap corruption in 4 of 10 runs stopped by
 * SIGTERM). Threads started before the call (MPI's) get a handler
 * (SA_RESTART) that only sets the flag. Call it first thing, before any
 * parallel region. */
void stop_signal_install(void);

/* The signal received since install (the first one), or 0. This rank only. */
int stop_signal_pending(void);

/* Collective: non-zero on every rank when any rank received a signal, so all
 * ranks stop after the same step (mpirun may deliver to some ranks first). */
int stop_signal_any_rank(void);

#endif
