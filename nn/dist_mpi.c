/* dist_mpi.c - dist.h over MPI (Open MPI), or a single process without it. */
#include "dist.h"
#include "../common/error.h"

#include <limits.h>
#include <mpi.h>
#include <stdlib.h>

static int use_mpi, rank, size = 1;

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
    if (!use_mpi) { all[0] = value; return; }
    MPI_Allgather(&value, 1, MPI_INT64_T, all, 1, MPI_INT64_T, MPI_COMM_WORLD);
}

void dist_barrier(void) {
    if (use_mpi) MPI_Barrier(MPI_COMM_WORLD);
}
