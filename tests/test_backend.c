/* test_backend.c - the backend machinery that runs without a GPU: kernel
 * dispatch, the CUDA backend's buffer table, the attention tile ranges its
 * kernels visit, and the model's device path (separate parameter copies, the
 * plan mirror, uploads and downloads) run on a CPU backend that claims not to
 * work in host memory ("cpu-device"), against the ordinary CPU path. */
#include "check.h"
#include "../nn/attn_tiles.h"
#include "../nn/backend.h"
#include "../nn/buffer_table.h"
#include "../nn/optim.h"
#include "../trainer/model.h"
#include "../common/error.h"

#include <stdlib.h>
#include <string.h>

static int adds;
static void counting_add(float *y, const float *x, size_t n) {
    adds++;
    nn_cpu_backend.add(y, x, n);
}

static void test_dispatch(void) {
    int missing = 0, fused = 0;
#define NN_V(name, params, args) missing += nn_cpu_backend.name == NULL;
#define NN_R(type, name, params, args) missing += nn_cpu_backend.name == NULL;
#define NN_FUSED(name, params, args) fused += nn_cpu_backend.name != NULL;
#include "../nn/kernels.def"
#undef NN_V
#undef NN_R
#undef NN_FUSED
    CHECK(missing == 0, "the CPU backend implements every kernel of kernels.def");
    CHECK(fused == 0, "the float32 CPU backend fuses nothing (%d fused kernels): its bits are the plain kernels'",
          fused);
    nn_backend counting = nn_cpu_backend;
    counting.add = counting_add;
    float y[3] = {1, 2, 3}, x[3] = {10, 20, 30};
    nn_use_backend(&counting);
    nn_add(y, x, 3);
    nn_use_backend(&nn_cpu_backend);
    nn_add(y, x, 3);
    CHECK(adds == 1 && y[0] == 21 && y[2] == 63, "nn_add calls the selected backend's kernel (%d calls)", adds);
    /* A fused kernel a backend leaves NULL runs the plain kernels in turn. */
    adds = 0;
    nn_use_backend(&counting);
    float W[3 * 2] = {1, 2, 3, 4, 5, 6}, in[2 * 2] = {1, -1, 2, 0.5f}, out[2 * 3], res[2 * 3] = {1, 1, 1, 1, 1, 1};
    nn_linear_add_forward(out, in, W, res, 2, 2, 3);
    nn_use_backend(&nn_cpu_backend);
    CHECK(adds == 1 && out[0] == 0 && out[2] == 0 && out[3] == 4 && out[5] == 14,
          "nn_linear_add_forward without a fused kernel: linear_forward, then add (%d adds; %g %g %g %g)", adds, out[0],
          out[2], out[3], out[5]);
    CHECK(nn_backend_by_name("cpu") == &nn_cpu_backend && nn_backend_by_name("tpu") == NULL,
          "backends are found by name");
#ifdef NN_CUDA
    CHECK(nn_backend_by_name("cuda") == &nn_cuda_backend, "a CUDA=1 build has the cuda backend");
#else
    CHECK(nn_backend_by_name("cuda") == NULL, "a plain build has no cuda backend");
#endif
}

static void test_buffer_table(void) {
    buf_table t = {0};
    static float a[100], c[10];
    static uint16_t b[50];
    buf_table_add(&t, c, 10, BUF_F32);
    buf_table_add(&t, a, 100, BUF_F32);
    buf_table_add(&t, b, 50, BUF_BF16);
    buf_entry *e = buf_table_find(&t, a + 37);
    CHECK(e && e->base == (uintptr_t)a && buf_index(e, a + 37) == 37,
          "a pointer inside a buffer finds it and its index");
    e = buf_table_find(&t, b + 49);
    CHECK(e && e->type == BUF_BF16 && buf_index(e, b + 49) == 49, "bfloat16 elements count in 2 bytes");
    CHECK(buf_table_find(&t, (char *)b + 100) == NULL || buf_table_find(&t, (char *)b + 100)->base != (uintptr_t)b,
          "the byte after a buffer is not in it");
    buf_entry gone = buf_table_remove(&t, a);
    CHECK(gone.base == (uintptr_t)a && buf_table_find(&t, a + 1) == NULL && t.n == 2, "a removed buffer is unknown");
    CHECK(buf_table_remove(&t, c + 1).base == 0 && t.n == 2, "removing from inside a buffer removes nothing");
    buf_table_free(&t);
}

/* Every (query, key) pair the ranges allow lies in a tile the kernels visit,
 * and no visited tile is fully masked. */
static void test_tiles(const plan *p, int tile, const char *what) {
    int bad = 0, visited = 0, skipped = 0, nonmono = 0;
    for (int b = 0; b < p->B; b++) {
        const int32_t *lo = p->lo + (size_t)b * p->L, *hi = p->hi + (size_t)b * p->L;
        int L = p->L;
        for (int i = 1; i < L; i++) nonmono += lo[i] < lo[i - 1] || hi[i] < hi[i - 1];
        for (int q0 = 0; q0 < L; q0 += tile) {
            int nq = L - q0 < tile ? L - q0 : tile, k0, k1;
            attn_qtile_keys(lo, hi, q0, nq, &k0, &k1);
            for (int j0 = 0; j0 < L; j0 += tile) { /* brute force over every key tile */
                int j1 = j0 + tile - 1 < L - 1 ? j0 + tile - 1 : L - 1, any = 0;
                for (int r = 0; r < nq; r++) any |= attn_sees(lo[q0 + r], hi[q0 + r], j0, j1);
                int pairs = 0;
                for (int r = 0; r < nq; r++)
                    for (int j = j0; j <= j1; j++) pairs += j >= lo[q0 + r] && j <= hi[q0 + r];
                bad += (pairs > 0) != any;
                bad += any && (j1 < k0 || j0 > k1); /* needed, yet outside the span */
                visited += any;
                skipped += !any && j1 >= k0 && j0 <= k1; /* inside the span, yet masked */
            }
        }
        for (int j0 = 0; j0 < L; j0 += tile) {
            int j1 = j0 + tile - 1 < L - 1 ? j0 + tile - 1 : L - 1, q0, q1, first = -1, last = -2;
            attn_ktile_queries(lo, hi, L, j0, j1, &q0, &q1);
            for (int i = 0; i < L; i++)
                if (attn_sees(lo[i], hi[i], j0, j1)) {
                    if (first < 0) first = i;
                    last = i;
                }
            bad += q0 != first || q1 != last;
        }
    }
    CHECK(nonmono == 0, "%s: lo and hi are nondecreasing along each row", what);
    CHECK(bad == 0 && visited > 0,
          "%s: tiles of %d visited exactly where some pair is allowed (%d visited, %d "
          "masked tiles skipped inside spans)",
          what, tile, visited, skipped);
}

static void run_step(model *m, const plan *p, loss_sums *s, float *grads) {
    nn_zero(m->dev.g, m->ps.numel);
    *s = model_step(m, p, p->n_lm, (double)p->n_patch * cfg_patch_dim(&m->cfg), 1);
    model_download(m, 0, 1);
    memcpy(grads, m->ps.g, sizeof(float) * m->ps.numel);
}

/* The device path of model.c on the CPU's kernels gives bitwise the CPU path. */
static void test_device_path(const model_config *c, const plan *p) {
    const nn_backend *device = nn_backend_by_name("cpu-device");
    model a, b;
    model_create(&a, c);
    model_init_weights(&a, 7);
    nn_use_backend(device);
    model_create(&b, c);
    model_init_weights(&b, 7);
    model_upload_weights(&b);
    CHECK(b.dev.w != b.ps.w && b.W.embed == b.dev.w && a.dev.w == a.ps.w, "a device model computes on its own copies");
    size_t n = a.ps.numel;
    float *ga = xmalloc(sizeof(float) * n), *gb = xmalloc(sizeof(float) * n);
    loss_sums sa, sb;
    nn_use_backend(&nn_cpu_backend);
    run_step(&a, p, &sa, ga);
    nn_use_backend(device);
    run_step(&b, p, &sb, gb);
    CHECK(sa.ce_sum == sb.ce_sum && sa.se_sum == sb.se_sum && memcmp(ga, gb, sizeof(float) * n) == 0,
          "through the plan mirror and device copies: the same loss and gradients (%.6f %.6f)", sa.ce_sum, sb.ce_sum);
    optimizer oa, ob;
    optim_create(&oa, &a.ps, optim_defaults(1e-3f, 1, 10));
    optim_create(&ob, &b.ps, optim_defaults(1e-3f, 1, 10));
    nn_use_backend(&nn_cpu_backend);
    optim_step(&oa, &a.dev, grad_norm(&a.dev));
    nn_use_backend(device);
    optim_step(&ob, &b.dev, grad_norm(&b.dev));
    model_download(&b, 1, 0);
    float *m1, *m2;
    optim_host_moments(&ob, &m1, &m2, 1);
    CHECK(memcmp(a.ps.w, b.ps.w, sizeof(float) * n) == 0 && m1 != ob.m && memcmp(m1, oa.m, sizeof(float) * n) == 0 &&
              memcmp(m2, oa.v, sizeof(float) * n) == 0,
          "an AdamW step on the device copies, downloaded, is the CPU's");
    optim_host_release(&ob, m1, m2, 0);
    optim_free(&ob);
    model_free(&b);
    nn_use_backend(&nn_cpu_backend);
    optim_free(&oa);
    model_free(&a);
    free(ga);
    free(gb);
}

int main(void) {
    nn_init(2);
    test_dispatch();
    test_buffer_table();
    model_config c;
    char err[ERR_LEN];
    if (config_load("configs/tiny.json", &c, err)) {
        printf("FAIL config: %s\n", err);
        return 1;
    }
    rng r;
    rng_seed(&r, 5);
    batch b;
    plan p;
    batch_generate(&b, &c, 3, 200, &r);
    plan_build(&p, &b, &c);
    test_tiles(&p, 64, "generated batch 3 x 200");
    test_tiles(&p, 16, "generated batch 3 x 200");
    test_device_path(&c, &p);
    plan_free(&p);
    batch_free(&b);
    return CHECK_DONE();
}
