/* dist.h - data-parallel processes: rank, size, all-reduce, barrier.
 *
 * Under mpirun (Open MPI sets OMPI_COMM_WORLD_SIZE in each rank's
 * environment) this is MPI; a process started on its own is rank 0 of 1 and
 * never touches MPI, so single-process runs and tests need no launcher.
 * The collectives on gradient and weight buffers (the non-blocking ones and
 * dist_allgather_parts) go through MPI on host memory, or through the ops a
 * device backend installs (NCCL on GPU buffers, nn/cuda/dist_nccl.c). */
#ifndef NN_DIST_H
#define NN_DIST_H

#include <stddef.h>
#include <stdint.h>

void dist_init(int *argc, char ***argv);
void dist_finalize(void);
int dist_rank(void);
int dist_size(void);

void dist_allreduce_sum(float *x, size_t n); /* in place, every rank gets the sum */
void dist_allreduce_sum_f64(double *x, int n);
void dist_allreduce_sum_i64(int64_t *x, int n);
/* Gathers one int64 from every rank into all[size] on every rank. */
void dist_allgather_i64(int64_t value, int64_t *all);
void dist_barrier(void);

/* Non-blocking collectives for gradient buckets, started while backward is
 * still running and finished together by dist_wait_all (dist_progress lets
 * MPI move them along in between). Buffers must stay untouched until then.
 * - reduce-scatter: x[0, n) is summed over ranks, and each rank receives
 *   counts[rank] elements of the sum (those of its part) into recv;
 * - all-reduce: x[0, n) is summed over ranks in place. */
void dist_reduce_scatter_start(const float *x, size_t n, const int *counts, float *recv);
void dist_allreduce_start(float *x, size_t n);
void dist_progress(void);
void dist_wait_all(void);
/* Rank r's part of n elements tiled over `size` ranks: [r*n/size,
 * (r+1)*n/size), computed without overflow. Names each rank's checkpoint
 * shard and its ZeRO-1 optimizer range. */
void dist_part(size_t n, int rank, int size, size_t *offset, size_t *count);
/* The L2 norm of a vector split over the ranks, from this rank's part
 * (collective; with one process, the part's norm). */
double dist_norm_of_parts(const float *part, size_t n);
/* In place: rank r's counts[r] floats at x + offsets[r] go to every rank. */
void dist_allgather_parts(float *x, const size_t *offsets, const size_t *counts);

/* Bytes from rank root to every rank (blocking). */
void dist_broadcast(void *buf, size_t bytes, int root);

/* The buffer collectives of a device backend, replacing MPI's for them. */
typedef struct {
    void (*reduce_scatter_start)(const float *x, size_t n, const int *counts, float *recv);
    void (*allreduce_start)(float *x, size_t n);
    void (*wait_all)(void);
    void (*allgather_parts)(float *x, const size_t *offsets, const size_t *counts);
} dist_buffer_ops;
void dist_set_buffer_ops(const dist_buffer_ops *ops);

#endif
