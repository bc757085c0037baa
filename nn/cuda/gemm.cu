/* gemm.cu - CUDA backend: GEMMs through cuBLASLt (bfloat16 operands, float32
 * compute, bfloat16 or float32 output), linear layers with the bias in the
 * GEMM's epilogue, and the bias gradient as a deterministic column sum.
 *
 * The kernels are row-major; cuBLASLt is column-major, so C = op(A) op(B) is
 * computed as C^T = op(B)^T op(A)^T on the same memory. No activation
 * epilogue fits the model (cuBLASLt fuses ReLU and GELU; the model has SiLU
 * and SwiGLU), so only the bias is fused. */
#include "typed.cuh"
#include "reduce.cuh"

#include <cublasLt.h>
#include <string.h>

#define LT_CHECK(call)                                                                                                 \
    do {                                                                                                               \
        cublasStatus_t st_ = (call);                                                                                   \
        if (st_ != CUBLAS_STATUS_SUCCESS) die("cuBLASLt: %s failed (status %d)", #call, (int)st_);                     \
    } while (0)

static cublasLtHandle_t lt;
static void *lt_workspace;
static const size_t LT_WORKSPACE = 32u << 20;

/* Heuristic choices by problem: picked once per shape and alignment. */
typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, c_f32, epilogue;
    unsigned align[4];
    cublasLtMatmulAlgo_t algo;
} algo_entry;
static algo_entry algos[256];
static int n_algos;

static unsigned alignment(const void *p) {
    unsigned a = 256;
    while (a > 2 && ((uintptr_t)p % a)) a /= 2;
    return a;
}

static void lt_init(void) {
    if (lt) return;
    LT_CHECK(cublasLtCreate(&lt));
    CUDA_CHECK(cudaMalloc(&lt_workspace, LT_WORKSPACE));
}

/* Row-major C[M,N] = alpha op(A) op(B) + beta C; A, B bfloat16; C float32
 * when c_f32, else bfloat16; bias (bfloat16 [N], added to every row) or NULL. */
static void lt_gemm(int ta, int tb, int M, int N, int K, float alpha, const void *A, int lda, const void *B, int ldb,
                    float beta, void *C, int c_f32, int ldc, const void *bias) {
    if (M == 0 || N == 0 || (K == 0 && beta == 1.0f)) return; /* K = 0: a batch without images */
    if (K == 0) die("cuda gemm: K = 0 with beta %g", beta);
    lt_init();
    cudaDataType ct = c_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    LT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    cublasLtEpilogue_t epi = bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    if (bias) LT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    /* cuBLAS "A" is our B (C^T = op(B)^T op(A)^T), stored [N,K] or [K,N] column-major. */
    LT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb));
    LT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda));
    LT_CHECK(cublasLtMatrixLayoutCreate(&lc, ct, N, M, ldc));

    unsigned al[4] = {alignment(B), alignment(A), alignment(C), bias ? alignment(bias) : 256};
    algo_entry *hit = NULL;
    for (int i = 0; i < n_algos && !hit; i++) {
        algo_entry *e = &algos[i];
        if (e->ta == ta && e->tb == tb && e->M == M && e->N == N && e->K == K && e->lda == lda && e->ldb == ldb &&
            e->ldc == ldc && e->c_f32 == c_f32 && e->epilogue == (int)epi && !memcmp(e->align, al, sizeof al))
            hit = e;
    }
    if (!hit) {
        cublasLtMatmulPreference_t pref;
        LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &LT_WORKSPACE,
                                                      sizeof LT_WORKSPACE));
        /* The pointers' real alignment: the heuristic assumes 256 bytes otherwise. */
        cublasLtMatmulPreferenceAttributes_t which[3] = {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                         CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                         CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES};
        for (int i = 0; i < 3; i++) LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, which[i], &al[i], 4));
        LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], 4));
        cublasLtMatmulHeuristicResult_t res;
        int found = 0;
        LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 1, &res, &found));
        cublasLtMatmulPreferenceDestroy(pref);
        if (!found)
            die("cuBLASLt: no algorithm for M=%d N=%d K=%d (ta %d tb %d, alignments %u %u %u %u)", M, N, K, ta, tb,
                al[0], al[1], al[2], al[3]);
        hit = &algos[n_algos < 256 ? n_algos++ : 255];
        *hit = (algo_entry){ta, tb, M, N, K, lda, ldb, ldc, c_f32, (int)epi, {al[0], al[1], al[2], al[3]}, res.algo};
    }
    LT_CHECK(cublasLtMatmul(lt, op, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &hit->algo, lt_workspace, LT_WORKSPACE,
                            cuda_stream));
    cublasLtMatrixLayoutDestroy(la);
    cublasLtMatrixLayoutDestroy(lb);
    cublasLtMatrixLayoutDestroy(lc);
    cublasLtMatmulDescDestroy(op);
}

extern "C" void cuda_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc) {
    lt_gemm(transA, transB, M, N, K, alpha, cuda_bf16_view(A, "gemm A"), lda, cuda_bf16_view(B, "gemm B"), ldb, beta, C,
            cuda_is_f32(C, "gemm C"), ldc, NULL);
}

__global__ void add_bias_rows(tview y, const float *b, int N, int out) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < (size_t)N * out) st(y, i, ld(y, i) + b[i % out]);
}

extern "C" void cuda_linear_forward(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    int y_f32 = cuda_is_f32(y, "linear y");
    /* The epilogue adds a bfloat16 bias to a bfloat16 output; it wants the
     * bias 16-byte aligned (a parameter's offset in the flat array may not be). */
    const void *bb = b ? cuda_bf16_view(b, "linear b") : NULL;
    int fuse = bb && !y_f32 && alignment(bb) >= 16;
    lt_gemm(0, 1, N, out, in, 1.0f, cuda_bf16_view(x, "linear x"), in, cuda_bf16_view(W, "linear W"), in, 0.0f, y,
            y_f32, out, fuse ? bb : NULL);
    if (b && !fuse) {
        if (!cuda_is_f32(b, "linear b")) die("cuda backend: linear bias must be a float32 buffer");
        CUDA_LAUNCH(add_bias_rows, cuda_blocks((size_t)N * out, 256), 256, 0, tv(y, "linear y"), b, N, out);
    }
}

extern "C" void cuda_linear_backward(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W,
                                     int N, int in, int out, int acc) {
    const void *dy16 = cuda_bf16_view(dy, "linear dy");
    if (dx)
        lt_gemm(0, 0, N, in, out, 1.0f, dy16, out, cuda_bf16_view(W, "linear W"), in, acc ? 1.0f : 0.0f, dx,
                cuda_is_f32(dx, "linear dx"), in, NULL);
    lt_gemm(1, 0, out, in, N, 1.0f, dy16, out, cuda_bf16_view(x, "linear x"), in, 1.0f, dW,
            cuda_is_f32(dW, "linear dW"), in, NULL);
    if (db) cuda_colsum_add(db, tv(dy, "linear dy"), NULL, NULL, N, out);
}
