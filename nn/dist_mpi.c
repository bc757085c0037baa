/* dist_mpi.c - dist.h over MPI (Open MPI), or a single process without it. */
#include "dist.h"
#include "../common/error.h"
#include "kernels.h"

#include <limits.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

static int use_mpi, rank, size = 1;

static int as_count_bytes(size_t n) {
    if (n > INT_MAX) die("dist: a broadcast of %zu bytes exceeds MPI's int count", n);
    return (int)n;
}
static const dist_buffer_ops *ops; /* a device backend's, or NULL: MPI */

void dist_set_buffer_ops(const dist_buffer_ops *o) { ops = o; }

void dist_broadcast(void *buf, size_t bytes, int root) {
    if (use_mpi) MPI_Bcast(buf, as_count_bytes(bytes), MPI_BYTE, root, MPI_COMM_WORLD);
}

void dist_init(int *argc, char ***argv) {
    if (!getenv("OMPI_COMM_WORLD_SIZE")) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) die("MPI_Init failed");
    use_mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
}

void dist_finalize(void) {
    if (use_mpi) MPI_Finalize();
    use_mpi = 0;
}

int dist_rank(void) { return rank; }
int dist_size(void) { return size; }

void dist_allreduce_sum(float *x, size_t n) {
    /* MPI counts are int: reduce in pieces. */
    for (size_t off = 0; use_mpi && off < n; off += INT_MAX / 2) {
        size_t k = n - off < INT_MAX / 2 ? n - off : INT_MAX / 2;
        MPI_Allreduce(MPI_IN_PLACE, x + off, (int)k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
}

void dist_allreduce_sum_f64(double *x, int n) {
    if (use_mpi) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
}

void dist_allreduce_sum_i64(int64_t *x, int n) {
    if (use_mpi) MPI_Allreduce(MPI_IN_PLACE, x, n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
}

void dist_allgather_i64(int64_t value, int64_t *all) {
    if (!use_mpi) {
        all[0] = value;
        return;
    }
    MPI_Allgather(&value, 1, MPI_INT64_T, all, 1, MPI_INT64_T, MPI_COMM_WORLD);
}

void dist_barrier(void) {
    if (use_mpi) MPI_Barrier(MPI_COMM_WORLD);
}

/* Outstanding non-blocking collectives (a step's buckets). */
#define MAX_PENDING 4096
static MPI_Request pending[MAX_PENDING];
static int n_pending;

static MPI_Request *next_request(void) {
    if (n_pending == MAX_PENDING) die("dist: more than %d collectives in flight", MAX_PENDING);
    return &pending[n_pending++];
}

static int as_count(size_t n) {
    if (n > INT_MAX) die("dist: a bucket of %zu floats exceeds MPI's int count", n);
    return (int)n;
}

void dist_reduce_scatter_start(const float *x, size_t n, const int *counts, float *recv) {
    if (ops && use_mpi) {
        ops->reduce_scatter_start(x, n, counts, recv);
        return;
    }
    if (!use_mpi) {
        if (counts[0]) memmove(recv, x, sizeof(float) * (size_t)counts[0]);
        return;
    }
    as_count(n);
    MPI_Ireduce_scatter(x, recv, counts, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, next_request());
}

void dist_allreduce_start(float *x, size_t n) {
    if (ops && use_mpi)
        ops->allreduce_start(x, n);
    else if (use_mpi)
        MPI_Iallreduce(MPI_IN_PLACE, x, as_count(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, next_request());
}

void dist_progress(void) {
    int done;
    if (n_pending) MPI_Testall(n_pending, pending, &done, MPI_STATUSES_IGNORE);
}

void dist_wait_all(void) {
    if (ops && use_mpi) ops->wait_all();
    if (n_pending) MPI_Waitall(n_pending, pending, MPI_STATUSES_IGNORE);
    n_pending = 0;
}

void dist_part(size_t n, int rank, int size, size_t *offset, size_t *count) {
    size_t q = n / size, rem = n % size;
    size_t lo = rank * q + rank * rem / size, hi = (rank + 1) * q + (rank + 1) * rem / size;
    *offset = lo;
    *count = hi - lo;
}

double dist_norm_of_parts(const float *part, size_t n) {
    double sq = nn_sum_squared_diff(part, NULL, n);
    dist_allreduce_sum_f64(&sq, 1);
    return sqrt(sq);
}

void dist_allgather_parts(float *x, const size_t *offsets, const size_t *counts) {
    if (!use_mpi) return;
    if (ops) {
        ops->allgather_parts(x, offsets, counts);
        return;
    }
    int *cnt = xmalloc(sizeof(int) * size), *displ = xmalloc(sizeof(int) * size);
    for (int r = 0; r < size; r++) {
        cnt[r] = as_count(counts[r]);
        displ[r] = as_count(offsets[r]);
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, x, cnt, displ, MPI_FLOAT, MPI_COMM_WORLD);
    free(cnt);
    free(displ);
}
