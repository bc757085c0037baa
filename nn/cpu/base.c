/* base.c - CPU backend: threads, memory, GEMM (oneDNN) and linear layers.
 *
 * GEMM goes through oneDNN's dnnl_sgemm: measured on this machine it is the
 * fastest fp32 GEMM available as a Debian package (see README, Speed). oneDNN
 * uses the same OpenMP runtime as the rest of the backend; inside an OpenMP
 * parallel region it runs on the calling thread only. */
#include "cpu.h"
#include "../../common/error.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void nn_startup(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    setenv("GOMP_SPINCOUNT", "1000", 1);
    execv("/proc/self/exe", argv); /* returns only on failure: run on as we are */
}

void nn_init(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
}

int nn_threads(void) { return omp_get_max_threads(); }

/* Buffers of 2 MiB and more sit on 2 MiB boundaries and ask for huge pages
 * (transparent huge pages are opt-in, "madvise", on Debian): the GEMMs and
 * the optimizer sweep whole weights and activations, and with 4 KiB pages
 * each of their rows is another TLB entry (measured: 1-5% of a step). */
#define HUGE_PAGE ((size_t)2 << 20)

static void *aligned_zeroed(size_t n, size_t size) {
    void *p = NULL;
    size_t bytes = (n ? n : 1) * size;
    int huge = bytes >= HUGE_PAGE;
    bytes = huge ? (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE : (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, huge ? HUGE_PAGE : 64, bytes) != 0) die("out of memory allocating %zu bytes", bytes);
    if (huge) madvise(p, bytes, MADV_HUGEPAGE); /* a hint: without it, 4 KiB pages */
    memset(p, 0, bytes);
    return p;
}

float *cpu_alloc(size_t n) { return aligned_zeroed(n, sizeof(float)); }
float *cpu_alloc_f32(size_t n) { return aligned_zeroed(n, sizeof(float)); }
int32_t *cpu_alloc_i32(size_t n) { return aligned_zeroed(n, sizeof(int32_t)); }

void cpu_free(void *p) { free(p); }

/* Large buffers in blocks over the threads: one core's memset reaches about
 * 20 GB/s here, and zeroing the gradients (69 MB at the reference config)
 * took 1% of a 2-thread bf16 step on one. */
#define MEM_BLOCK 65536 /* floats */

void cpu_zero(float *x, size_t n) {
    size_t nb = (n + MEM_BLOCK - 1) / MEM_BLOCK;
#pragma omp parallel for schedule(static) if (nb > 4 && !omp_in_parallel())
    for (size_t b = 0; b < nb; b++)
        memset(x + b * MEM_BLOCK, 0, sizeof(float) * (b + 1 < nb ? MEM_BLOCK : n - b * MEM_BLOCK));
}

void cpu_copy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof(float)); }
void cpu_upload(float *dst, const float *host, size_t n) { memcpy(dst, host, n * sizeof(float)); }
void cpu_download(float *host, const float *src, size_t n) { memcpy(host, src, n * sizeof(float)); }
void cpu_sync(void) {}
void cpu_upload_i32(int32_t *dst, const int32_t *host, size_t n) { memcpy(dst, host, n * sizeof(int32_t)); }

void cpu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
              int ldb, float beta, float *C, int ldc) {
    if (M == 0 || N == 0) return;
    dnnl_status_t st = dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (st != dnnl_success) die("dnnl_sgemm failed (status %d) for M=%d N=%d K=%d", (int)st, M, N, K);
}

void cpu_linear_forward(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    cpu_gemm(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out);
    if (b) cpu_add_bias_rows(y, b, N, out);
}

void cpu_add_bias_rows(float *y, const float *b, int N, int out) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        for (int j = 0; j < out; j++) y[(size_t)i * out + j] += b[j];
}

void cpu_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                         int in, int out, int acc) {
    if (dx) cpu_gemm(0, 0, N, in, out, 1.0f, dy, out, W, in, acc ? 1.0f : 0.0f, dx, in);
    cpu_gemm(1, 0, out, in, N, 1.0f, dy, out, x, in, 1.0f, dW, in);
    if (db) cpu_add_column_sums(db, dy, (size_t)N, out);
}

#define SUM_ROWS 64 /* rows per float partial sum */

void cpu_add_column_sums(float *sums, const float *x, size_t rows, int cols) {
    /* Fixed blocks of rows summed in float (vectorized along the row), then
     * the blocks of each column in order in float64: the blocks do not
     * depend on the thread count, so neither do the bits. */
    size_t nb = (rows + SUM_ROWS - 1) / SUM_ROWS;
    float *part = cpu_alloc(nb * cols);
#pragma omp parallel for schedule(static)
    for (size_t b = 0; b < nb; b++) {
        float *p = part + b * cols;
        size_t r1 = (b + 1) * SUM_ROWS < rows ? (b + 1) * SUM_ROWS : rows;
        for (size_t r = b * SUM_ROWS; r < r1; r++) {
            const float *row = x + r * cols;
#pragma omp simd
            for (int c = 0; c < cols; c++) p[c] += row[c];
        }
    }
#pragma omp parallel for schedule(static)
    for (int c = 0; c < cols; c++) {
        double s = 0.0;
        for (size_t b = 0; b < nb; b++) s += part[b * cols + c];
        sums[c] += (float)s;
    }
    cpu_free(part);
}

void cpu_add(float *y, const float *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

void cpu_gather_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * d, src + (size_t)idx[i] * d, d * sizeof(float));
}

void cpu_scatter_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)idx[i] * d, src + (size_t)i * d, d * sizeof(float));
}

void cpu_scatter_add_rows(float *dst, const float *src, const int32_t *idx, int n, int d) {
/* Rows may repeat (the same token twice), so split the columns, not the
     * rows, across threads: each element is summed in the order of i. */
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int c0 = (int)((long)d * t / nt), c1 = (int)((long)d * (t + 1) / nt);
        for (int i = 0; i < n; i++) {
            float *o = dst + (size_t)idx[i] * d;
            const float *s = src + (size_t)i * d;
            for (int c = c0; c < c1; c++) o[c] += s[c];
        }
    }
}

void cpu_transpose(float *dst, const float *src, int rows, int cols) {
/* Blocks of 32 x 32 keep both sides in cache. */
#pragma omp parallel for schedule(static) collapse(2)
    for (int r0 = 0; r0 < rows; r0 += 32)
        for (int c0 = 0; c0 < cols; c0 += 32)
            for (int r = r0; r < r0 + 32 && r < rows; r++)
                for (int c = c0; c < c0 + 32 && c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}
