/* dist_nccl.c - dist.h's buffer collectives over NCCL for the CUDA backend:
 * the unique id goes from rank 0 to all over MPI; gradient buckets reduce on
 * a stream of their own, each after the compute stream has produced it, so
 * backward goes on while they travel; dist_wait_all makes the compute stream
 * (not the host) wait for them.
 *
 * NCCL's reduce-scatter and all-gather need equal counts per rank, while a
 * bucket overlaps the ZeRO parts unevenly: they are written as one group of
 * reduces (broadcasts) with rank r as the root of its own slice. */
#include "cuda_backend.h"
#include "../dist.h"
#include "../../common/error.h"

#include <nccl.h>

#define NCCL_CHECK(call)                                                                                               \
    do {                                                                                                               \
        ncclResult_t r_ = (call);                                                                                      \
        if (r_ != ncclSuccess) die("NCCL: %s failed: %s", #call, ncclGetErrorString(r_));                              \
    } while (0)

static ncclComm_t comm;
static cudaStream_t comm_stream;
static cudaEvent_t produced, reduced;

/* The communication stream waits for what the compute stream queued so far. */
static void after_compute(void) {
    CUDA_CHECK(cudaEventRecord(produced, cuda_stream));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream, produced, 0));
}

static void reduce_scatter_start(const float *x, size_t n, const int *counts, float *recv) {
    (void)n;
    after_compute();
    size_t off = 0;
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < dist_size(); r++) {
        if (counts[r])
            NCCL_CHECK(ncclReduce(x + off, recv, (size_t)counts[r], ncclFloat, ncclSum, r, comm, comm_stream));
        off += (size_t)counts[r];
    }
    NCCL_CHECK(ncclGroupEnd());
}

static void allreduce_start(float *x, size_t n) {
    after_compute();
    NCCL_CHECK(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm, comm_stream));
}

static void wait_all(void) {
    CUDA_CHECK(cudaEventRecord(reduced, comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream, reduced, 0));
}

static void allgather_parts(float *x, const size_t *offsets, const size_t *counts) {
    int last = dist_size() - 1;
    after_compute();
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r <= last; r++)
        if (counts[r])
            NCCL_CHECK(ncclBroadcast(x + offsets[r], x + offsets[r], counts[r], ncclFloat, r, comm, comm_stream));
    NCCL_CHECK(ncclGroupEnd());
    wait_all();
    cuda_mirror_sync(x, offsets[last] + counts[last]); /* the GEMMs' copy of the weights */
}

static const dist_buffer_ops nccl_ops = {reduce_scatter_start, allreduce_start, wait_all, allgather_parts};

void cuda_nccl_init(void) {
    ncclUniqueId id;
    if (dist_rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    dist_broadcast(&id, sizeof id, 0);
    NCCL_CHECK(ncclCommInitRank(&comm, dist_size(), id, dist_rank()));
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&produced, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&reduced, cudaEventDisableTiming));
    dist_set_buffer_ops(&nccl_ops);
}
