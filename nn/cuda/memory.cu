/* memory.cu - CUDA backend: device selection, buffers (bfloat16
 * activations, float32 and int32 buffers, bfloat16 mirrors of float32
 * buffers that GEMMs read), host <-> device copies, scratch. */
#include "typed.cuh"

extern "C" {
#include "../../common/safetensors.h"
#include "../dist.h"
}

#include <stdlib.h>
#include <vector>

cudaStream_t cuda_stream;
buf_table cuda_buffers;
static void *scratch[SCRATCH_SLOTS];
static size_t scratch_bytes[SCRATCH_SLOTS];

extern "C" void cuda_check(cudaError_t e, const char *what, const char *file, int line) {
    if (e != cudaSuccess) die("CUDA: %s failed at %s:%d: %s", what, file, line, cudaGetErrorString(e));
}

void cuda_launched(const char *kernel, const char *file, int line) {
    static int blocking = -1;
    if (blocking < 0) blocking = getenv("CUDA_LAUNCH_BLOCKING") && atoi(getenv("CUDA_LAUNCH_BLOCKING")) == 1;
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess && blocking) e = cudaStreamSynchronize(cuda_stream);
    if (e != cudaSuccess) die("CUDA: kernel %s launched at %s:%d: %s", kernel, file, line, cudaGetErrorString(e));
}

/* One GPU per rank: ranks on a node take the node's GPUs in turn. */
extern "C" void cuda_init(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
        die("--device cuda: no CUDA device is visible (%s)", cudaGetErrorString(cudaGetLastError()));
    const char *local = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    CUDA_CHECK(cudaSetDevice((local ? atoi(local) : 0) % count));
    CUDA_CHECK(cudaStreamCreateWithFlags(&cuda_stream, cudaStreamNonBlocking));
    if (dist_size() > 1) cuda_nccl_init();
}

extern "C" buf_entry *cuda_buffer(const void *p, const char *what) {
    buf_entry *e = buf_table_find(&cuda_buffers, p);
    if (!e) die("cuda backend: %s: %p is not a buffer of this backend (nn_alloc*)", what, p);
    return e;
}

extern "C" int cuda_is_f32(const void *p, const char *what) {
    buf_entry *e = cuda_buffer(p, what);
    if (e->type == BUF_I32) die("cuda backend: %s: an int32 buffer where floats are expected", what);
    return e->type == BUF_F32;
}

static void *device_alloc(size_t n, buf_type t) {
    void *p = NULL;
    size_t bytes = (n ? n : 1) * buf_type_size(t);
    CUDA_CHECK(cudaMalloc(&p, bytes));
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, cuda_stream));
    buf_table_add(&cuda_buffers, p, n, t);
    return p;
}

extern "C" float *cuda_alloc(size_t n) { return (float *)device_alloc(n, BUF_BF16); }
extern "C" float *cuda_alloc_f32(size_t n) { return (float *)device_alloc(n, BUF_F32); }
extern "C" int32_t *cuda_alloc_i32(size_t n) { return (int32_t *)device_alloc(n, BUF_I32); }

extern "C" void cuda_free(void *p) {
    if (!p) return;
    buf_entry e = buf_table_remove(&cuda_buffers, p);
    if (!e.base) die("cuda backend: nn_free of %p, which is not the start of a buffer", p);
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream)); /* kernels may still use it */
    CUDA_CHECK(cudaFree(p));
    if (e.mirror) CUDA_CHECK(cudaFree(e.mirror));
}

__global__ void f32_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" void cuda_mirror_sync(const float *p, size_t n) {
    buf_entry *e = cuda_buffer(p, "mirror");
    if (!e->mirror || n == 0) return;
    size_t i = buf_index(e, p);
    CUDA_LAUNCH(f32_to_bf16, cuda_blocks(n, 256), 256, 0, (__nv_bfloat16 *)e->mirror + i, p, n);
}

extern "C" const void *cuda_bf16_view(const void *p, const char *what) {
    buf_entry *e = cuda_buffer(p, what);
    if (e->type == BUF_BF16) return p;
    if (e->type != BUF_F32) die("cuda backend: %s: an int32 buffer as a GEMM operand", what);
    if (!e->mirror) {
        CUDA_CHECK(cudaMalloc(&e->mirror, (e->n ? e->n : 1) * 2));
        cuda_mirror_sync((const float *)e->base, e->n);
    }
    return (const __nv_bfloat16 *)e->mirror + buf_index(e, p);
}

extern "C" void *cuda_scratch(int slot, size_t bytes) {
    if (bytes <= scratch_bytes[slot]) return scratch[slot];
    if (scratch[slot]) {
        CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
        CUDA_CHECK(cudaFree(scratch[slot]));
    }
    scratch_bytes[slot] = bytes + bytes / 4;
    CUDA_CHECK(cudaMalloc(&scratch[slot], scratch_bytes[slot]));
    return scratch[slot];
}

extern "C" void cuda_zero(float *x, size_t n) {
    buf_entry *e = cuda_buffer(x, "nn_zero");
    CUDA_CHECK(cudaMemsetAsync(x, 0, n * buf_type_size(e->type), cuda_stream));
    if (e->type == BUF_F32) cuda_mirror_sync(x, n);
}

extern "C" void cuda_copy(float *dst, const float *src, size_t n) {
    buf_entry *d = cuda_buffer(dst, "nn_copy dst"), *s = cuda_buffer(src, "nn_copy src");
    if (d->type != s->type) die("cuda backend: nn_copy between buffers of different types");
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * buf_type_size(d->type), cudaMemcpyDeviceToDevice, cuda_stream));
    if (d->type == BUF_F32) cuda_mirror_sync(dst, n);
}

extern "C" void cuda_upload(float *dst, const float *host, size_t n) {
    if (n == 0) return;
    if (cuda_is_f32(dst, "nn_upload")) {
        CUDA_CHECK(cudaMemcpyAsync(dst, host, n * 4, cudaMemcpyHostToDevice, cuda_stream));
        cuda_mirror_sync(dst, n);
    } else {
        std::vector<uint16_t> b(n);
        st_f32_to_bf16(host, b.data(), n); /* round to nearest even, as the device does */
        CUDA_CHECK(cudaMemcpyAsync(dst, b.data(), n * 2, cudaMemcpyHostToDevice, cuda_stream));
    }
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream)); /* the host buffer may go after return */
}

extern "C" void cuda_download(float *host, const float *src, size_t n) {
    if (n == 0) return;
    if (cuda_is_f32(src, "nn_download")) {
        CUDA_CHECK(cudaMemcpyAsync(host, src, n * 4, cudaMemcpyDeviceToHost, cuda_stream));
        CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
        return;
    }
    std::vector<uint16_t> b(n);
    CUDA_CHECK(cudaMemcpyAsync(b.data(), src, n * 2, cudaMemcpyDeviceToHost, cuda_stream));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
    st_bf16_to_f32(b.data(), host, n);
}

extern "C" void cuda_upload_i32(int32_t *dst, const int32_t *host, size_t n) {
    if (n == 0) return;
    cuda_buffer(dst, "nn_upload_i32");
    CUDA_CHECK(cudaMemcpyAsync(dst, host, n * 4, cudaMemcpyHostToDevice, cuda_stream));
    CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
}

extern "C" void cuda_sync(void) { CUDA_CHECK(cudaStreamSynchronize(cuda_stream)); }
