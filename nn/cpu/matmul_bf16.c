/* matmul_bf16.c - the CPU's bf16 matrix products (--precision bf16): C =
 * alpha op(A) op(B) + beta C with bfloat16 operands, float32 accumulation
 * and a float32 C, through oneDNN's matmul primitive (its AVX512-BF16
 * kernels run at about twice the float32 rate here).
 *
 * Operands are rounded to bf16 (nearest even) as they are read: the
 * weights stay float32 masters and are rounded on every use, which costs
 * one pass over them per product, against M passes of arithmetic. A
 * transposed operand needs no copy: the primitive takes any strides. The
 * linear layers hand over their B operand (a weight, or the layer input for
 * dW) in float32, and it is rounded straight into the blocked layout the
 * primitive prefers: about 800 GFLOP/s on 2 cores at the reference shapes,
 * against 650-720 with a plain bf16 B. That layout is almost always
 * BA16a64b2a, which pack_blocked writes on every thread with tile_bf16.c's
 * packers (oneDNN's own reorder into it, kept for any other layout, runs on
 * one thread and took a tenth of a bf16 step).
 *
 * Primitives are built once per problem (shape, strides, alpha, beta) and
 * kept (MAX_PROBLEMS; a full cache is emptied). They run with a
 * caller-provided scratchpad from the calling thread's state, so threads
 * may run products at once. For a given thread count oneDNN splits the
 * work the same way every time, so results repeat bit for bit. (The bf16
 * attention's small block products have their own kernel, tile_bf16.c.) */
#include "matmul_bf16.h"
#include "bf16.h"
#include "tile_bf16.h"
#include "../../common/error.h"

#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROBLEMS 512
#define MAX_THREADS 256

#define MUST(call)                                                                                                     \
    do {                                                                                                               \
        if ((call) != dnnl_success) die("oneDNN: %s failed", #call);                                                   \
    } while (0)

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc, nested;
    int residual; /* C = ... + R, R [M, N] at row stride ldc (a binary post-op) */
    float alpha, beta;
} problem;

typedef struct {
    problem p;
    dnnl_primitive_t prim, reorder; /* reorder: unless packed, from b_user (float32) to b */
    dnnl_memory_desc_t a, b, c, scratch, b_user;
    int packed; /* b is BA16a64b2a: pack_blocked writes it */
} entry;

/* Entries are found through an open-addressing table of 2 MAX_PROBLEMS
 * slots. A slot is published (atomically) only once its entry is built, so
 * lookups take no lock; only building one does. A full cache is emptied
 * between parallel regions, where no thread holds an entry. */
static entry cache[MAX_PROBLEMS];
static entry *slots[2 * MAX_PROBLEMS];
static int n_cached;
static dnnl_engine_t engine;

/* Per thread: a stream, a scratchpad, the rounded operands of a linear
 * layer and a reordered B. */
typedef struct {
    dnnl_stream_t stream;
    void *scratch, *ops, *blocked;
    size_t scratch_bytes, ops_bytes, blocked_bytes;
} thread_state;
static thread_state per_thread[MAX_THREADS];

static void *grow(void **buf, size_t *have, size_t bytes) {
    if (bytes <= *have) return *buf;
    free(*buf);
    *have = (bytes + 4095) / 4096 * 4096;
    *buf = aligned_alloc(64, *have);
    if (!*buf) die("out of memory (%zu bytes for a bf16 matrix product)", *have);
    return *buf;
}

static void need_engine(void) {
    if (__atomic_load_n(&engine, __ATOMIC_ACQUIRE)) return; /* no lock once made: every product asks */
#pragma omp critical(matmul_bf16_cache)
    if (!engine) {
        dnnl_engine_t e;
        MUST(dnnl_engine_create(&e, dnnl_cpu, 0));
        __atomic_store_n(&engine, e, __ATOMIC_RELEASE);
    }
}

static thread_state *this_thread(void) {
    need_engine();
    int t = omp_get_thread_num();
    if (omp_in_parallel() && omp_get_level() > 1) die("matmul_bf16: called from a nested parallel region");
    if (t >= MAX_THREADS) die("matmul_bf16: more than %d threads", MAX_THREADS);
    thread_state *s = &per_thread[t];
    if (!s->stream) MUST(dnnl_stream_create(&s->stream, engine, dnnl_stream_default_flags));
    return s;
}

/* A row-major matrix of `rows` x `cols` at row stride ld, or its transpose
 * (trans: the caller's op() reads it transposed, i.e. memory holds cols x
 * rows). */
static void desc(dnnl_memory_desc_t *md, int rows, int cols, int ld, int trans, dnnl_data_type_t t) {
    dnnl_dims_t dims = {rows, cols}, strides = {ld, 1};
    if (trans) strides[0] = 1, strides[1] = ld;
    MUST(dnnl_memory_desc_init_by_strides(md, 2, dims, t, strides));
}

static void build(entry *e) {
    const problem *p = &e->p;
    desc(&e->a, p->M, p->K, p->lda, p->ta, dnnl_bf16);
    desc(&e->b_user, p->K, p->N, p->ldb, p->tb, dnnl_f32);
    MUST(dnnl_memory_desc_init_by_tag(&e->b, 2, (dnnl_dims_t){p->K, p->N}, dnnl_bf16, dnnl_format_tag_any));
    desc(&e->c, p->M, p->N, p->ldc, 0, dnnl_f32);
    dnnl_matmul_desc_t md;
    MUST(dnnl_matmul_desc_init(&md, &e->a, &e->b, NULL, &e->c));
    dnnl_primitive_attr_t attr;
    MUST(dnnl_primitive_attr_create(&attr));
    MUST(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
    if (p->alpha != 1.0f) MUST(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &p->alpha));
    dnnl_post_ops_t ops = NULL;
    if (p->beta != 0.0f || p->residual) {
        MUST(dnnl_post_ops_create(&ops));
        if (p->beta != 0.0f) MUST(dnnl_post_ops_append_sum(ops, p->beta));
        if (p->residual) MUST(dnnl_post_ops_append_binary(ops, dnnl_binary_add, &e->c));
        MUST(dnnl_primitive_attr_set_post_ops(attr, ops));
    }
    dnnl_primitive_desc_t pd;
    MUST(dnnl_primitive_desc_create(&pd, &md, attr, engine, NULL));
    e->scratch = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    MUST(dnnl_primitive_create(&e->prim, pd));
    e->b = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t blocked;
    MUST(dnnl_memory_desc_init_by_tag(&blocked, 2, (dnnl_dims_t){p->K, p->N}, dnnl_bf16, dnnl_BA16a64b2a));
    e->packed = dnnl_memory_desc_equal(&e->b, &blocked);
    if (!e->packed) {
        dnnl_primitive_desc_t rpd;
        MUST(dnnl_reorder_primitive_desc_create(&rpd, &e->b_user, engine, &e->b, engine, NULL));
        MUST(dnnl_primitive_create(&e->reorder, rpd));
        dnnl_primitive_desc_destroy(rpd);
    }
    dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(attr);
}

static unsigned hash(const problem *p) {
    const unsigned char *b = (const unsigned char *)p;
    unsigned h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < sizeof *p; i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

/* The slot holding p, or the empty slot where it belongs. */
static entry **probe(const problem *p) {
    unsigned i = hash(p) % (2 * MAX_PROBLEMS);
    for (;; i = (i + 1) % (2 * MAX_PROBLEMS)) {
        entry *e = __atomic_load_n(&slots[i], __ATOMIC_ACQUIRE);
        if (!e || memcmp(&e->p, p, sizeof *p) == 0) return &slots[i];
    }
}

static const entry *entry_for(const problem *p) {
    entry **slot = probe(p), *found = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (found) return found;
#pragma omp critical(matmul_bf16_cache)
    {
        slot = probe(p); /* another thread may have built it meanwhile */
        found = *slot;
        if (!found) {
            if (n_cached == MAX_PROBLEMS) {
                if (omp_in_parallel()) die("matmul_bf16: more than %d problems in one parallel region", MAX_PROBLEMS);
                for (int i = 0; i < n_cached; i++) {
                    dnnl_primitive_destroy(cache[i].prim);
                    if (cache[i].reorder) dnnl_primitive_destroy(cache[i].reorder);
                }
                memset(slots, 0, sizeof slots);
                n_cached = 0;
                slot = probe(p);
            }
            found = &cache[n_cached++];
            memset(found, 0, sizeof *found);
            found->p = *p;
            build(found);
            __atomic_store_n(slot, found, __ATOMIC_RELEASE);
        }
    }
    return found;
}

/* B [K, N] in float32 (element (k, n) at B[k ld + n], or at B[n ld + k]
 * when tb) rounded into BA16a64b2a: blocks of 32 k by 64 n, stored n-block
 * by n-block, and in a block for each pair of k (0-1, 2-3, ...) the 64 n as
 * bf16 pairs (k, k+1), the operand order of VDPBF16PS. A block is a 16 x 64
 * matrix of tile_bf16.h's pairs: two rows of B interleaved, or B^T's rows
 * transposed. Padding is zero. */
static void pack_blocked(void *dst, const float *B, int ld, int tb, int K, int N) {
    int KB = (K + 31) / 32, NB = (N + 63) / 64;
#pragma omp parallel for schedule(static) if (!omp_in_parallel())
    for (int blk = 0; blk < NB * KB; blk++) {
        int k0 = blk % KB * 32, n0 = blk / KB * 64;
        int nk = K - k0 < 32 ? K - k0 : 32, nn = N - n0 < 64 ? N - n0 : 64; /* short at the edges */
        uint32_t *d = (uint32_t *)dst + (size_t)blk * 32 * 64 / 2;
        if (nk < 32 || nn < 64) memset(d, 0, 32 * 64 * sizeof(bf16));
        if (tb)
            bf16_pairs_transposed(d, 64, B + (size_t)n0 * ld + k0, ld, nn, nk);
        else
            bf16_pairs_along_rows(d, 64, B + (size_t)k0 * ld + n0, ld, nk, nn);
    }
}

/* C = alpha op(A) op(B) + beta C (+ R, unless NULL: at C's strides) with
 * A in bf16 and B in float32, rounded into the primitive's blocked layout. */
static void matmul(int ta, int tb, int M, int N, int K, float alpha, const bf16 *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc, const float *R) {
    if (M == 0 || N == 0) return;
    if (K == 0) { /* a product over nothing: C = beta C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = &C[(size_t)i * ldc + j];
                *c = (beta == 0.0f ? 0.0f : beta * *c) + (R ? R[(size_t)i * ldc + j] : 0.0f);
            }
        return;
    }
    thread_state *s = this_thread();
    /* (no padding: problems are compared with memcmp) */
    problem p = {ta, tb, M, N, K, lda, ldb, ldc, omp_in_parallel(), R != NULL, alpha, beta};
    const entry *e = entry_for(&p);
    dnnl_memory_t ma, mb, mc, ms, mr = NULL;
    MUST(dnnl_memory_create(&ma, &e->a, engine, (void *)A));
    void *blocked = grow(&s->blocked, &s->blocked_bytes, dnnl_memory_desc_get_size(&e->b));
    MUST(dnnl_memory_create(&mb, &e->b, engine, blocked));
    if (e->packed) {
        pack_blocked(blocked, B, ldb, tb, K, N);
    } else {
        dnnl_memory_t mu;
        MUST(dnnl_memory_create(&mu, &e->b_user, engine, (void *)B));
        dnnl_exec_arg_t rargs[] = {{DNNL_ARG_FROM, mu}, {DNNL_ARG_TO, mb}};
        MUST(dnnl_primitive_execute(e->reorder, s->stream, 2, rargs));
        dnnl_memory_destroy(mu);
    }
    MUST(dnnl_memory_create(&mc, &e->c, engine, C));
    MUST(dnnl_memory_create(&ms, &e->scratch, engine,
                            grow(&s->scratch, &s->scratch_bytes, dnnl_memory_desc_get_size(&e->scratch) + 64)));
    if (R) MUST(dnnl_memory_create(&mr, &e->c, engine, (void *)R));
    int post_op = p.beta != 0.0f; /* the residual's index among the post-ops: after the sum */
    dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, ma},
                              {DNNL_ARG_WEIGHTS, mb},
                              {DNNL_ARG_DST, mc},
                              {DNNL_ARG_SCRATCHPAD, ms},
                              {DNNL_ARG_ATTR_MULTIPLE_POST_OP(post_op) | DNNL_ARG_SRC_1, mr}};
    if (dnnl_primitive_execute(e->prim, s->stream, R ? 5 : 4, args) != dnnl_success)
        die("oneDNN: bf16 matmul failed for M=%d N=%d K=%d", M, N, K);
    MUST(dnnl_stream_wait(s->stream));
    dnnl_memory_destroy(ma), dnnl_memory_destroy(mb), dnnl_memory_destroy(mc), dnnl_memory_destroy(ms);
    if (mr) dnnl_memory_destroy(mr);
}

static void round_rows(bf16 *dst, int ld_dst, const float *src, int ld_src, int r0, int r1, int cols) {
    for (int r = r0; r < r1; r++) {
        const float *s = src + (size_t)r * ld_src;
        bf16 *d = dst + (size_t)r * ld_dst;
#pragma omp simd
        for (int c = 0; c < cols; c++) d[c] = round_bf16(s[c]);
    }
}

/* dst[r, c] = src[r, c] rounded, rows x cols, each side at its own row
 * stride; threaded unless small. */
static void round_matrix(bf16 *dst, int ld_dst, const float *src, int ld_src, int rows, int cols) {
    /* A small matrix on the calling thread: even a parallel region costs
     * microseconds. */
    if (omp_in_parallel() || (size_t)rows * cols < 65536) {
        round_rows(dst, ld_dst, src, ld_src, 0, rows, cols);
        return;
    }
#pragma omp parallel
    {
        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        round_rows(dst, ld_dst, src, ld_src, (int)((long)rows * t / nt), (int)((long)rows * (t + 1) / nt), cols);
    }
}

/* The calling thread's buffer for n bf16 operands of the given sizes. */
static void operands(bf16 **out, const size_t *sizes, int n) {
    thread_state *s = this_thread();
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (sizes[i] + 31) / 32 * 32;
    bf16 *p = grow(&s->ops, &s->ops_bytes, total * sizeof(bf16));
    for (int i = 0; i < n; i++) out[i] = p, p += (sizes[i] + 31) / 32 * 32;
}

/* The calling thread's buffer for a linear layer's input [N, in], rounded. */
static bf16 *input_operand(int N, int in) {
    bf16 *op[1];
    operands(op, (size_t[]){(size_t)N * in}, 1);
    return op[0];
}

/* y [N, out] = a @ W^T (+ residual), a [N, in] rounded. */
static void forward_product(float *y, const bf16 *a, const float *W, const float *residual, int N, int in, int out) {
    matmul(0, 1, N, out, in, 1.0f, a, in, W, in, 0.0f, y, out, residual);
}

/* The fused passes (kernels.def). The residual is added by the product as
 * it writes y (here it may be NULL: none); a normalized or gated row is made
 * in float32 (kept for backward) and rounded while it is still in cache,
 * instead of being read back for rounding by the product. */
void cpu_linear_add_forward_bf16(float *y, const float *x, const float *W, const float *residual, int N, int in,
                                 int out) {
    bf16 *a = input_operand(N, in);
    round_matrix(a, in, x, in, N, in);
    forward_product(y, a, W, residual, N, in, out);
}

void cpu_linear_forward_bf16(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    cpu_linear_add_forward_bf16(y, x, W, NULL, N, in, out);
    if (b) cpu_add_bias_rows(y, b, N, out);
}

void cpu_rmsnorm_linear_forward_bf16(float *y, float *n, const float *x, const float *w, const float *W, int N, int d,
                                     int out, float eps) {
    bf16 *a = input_operand(N, d);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        cpu_rmsnorm_row(n + (size_t)i * d, x + (size_t)i * d, w, d, eps);
        round_rows(a, d, n, d, i, i + 1, d);
    }
    forward_product(y, a, W, NULL, N, d, out);
}

void cpu_swiglu_linear_add_forward_bf16(float *y, float *act, const float *gu, const float *W, const float *residual,
                                        int N, int f, int out) {
    bf16 *a = input_operand(N, f);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        cpu_swiglu_row(act + (size_t)i * f, gu + (size_t)i * 2 * f, f);
        round_rows(a, f, act, f, i, i + 1, f);
    }
    forward_product(y, a, W, residual, N, f, out);
}

void cpu_linear_backward_bf16(float *dx, float *dW, float *db, const float *dy, const float *x, const float *W, int N,
                              int in, int out, int acc) {
    bf16 *op[1]; /* dy, rounded once for both products */
    operands(op, (size_t[]){(size_t)N * out}, 1);
    round_matrix(op[0], out, dy, out, N, out);
    if (dx) matmul(0, 0, N, in, out, 1.0f, op[0], out, W, in, acc ? 1.0f : 0.0f, dx, in, NULL);
    matmul(1, 0, out, in, N, 1.0f, op[0], out, x, in, 1.0f, dW, in, NULL);
    if (db) cpu_add_column_sums(db, dy, (size_t)N, out);
}
