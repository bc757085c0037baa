/* dist.h - data-parallel processes: rank, size, all-reduce, barrier.
 *
 * Under mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE in each rank's
 * environment) this is MPI; a process started on its own is rank 0 of 1 and
 * never touches MPI, so single-process runs and tests need no launcher.
 * (A CUDA backend would reduce gradients with NCCL behind the same calls.) */
#ifndef NN_DIST_H
#define NN_DIST_H

#include <stddef.h>
#include <stdint.h>

void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);

void dist_allreduce_sum(float *x, size_t n);          /* in place, every rank gets the sum */
void dist_allreduce_sum_f64(double *x, int n);
void dist_allreduce_sum_i64(int64_t *x, int n);
/* Gathers one int64 from every rank into all[size] on every rank. */
void dist_allgather_i64(int64_t value, int64_t *all);
void dist_barrier(void);

#endif
