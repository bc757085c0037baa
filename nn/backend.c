/* backend.c - the nn_* functions of kernels.h: each calls the selected
 * backend's kernel; device selection by name. */
#include "backend.h"
#include "cpu/cpu.h"
#include "cpu/matmul_bf16.h"
#include "../common/error.h"
#include "../common/timing.h"

#include <stdlib.h>
#include <string.h>

const nn_backend nn_cpu_backend = {
    .name = "cpu",
    .precision = "fp32",
    .host_memory = 1,
#define NN_V(name, params, args) .name = cpu_##name,
#define NN_R(type, name, params, args) .name = cpu_##name,
#define NN_FUSED(name, params, args) /* NULL */
#include "kernels.def"
#undef NN_V
#undef NN_R
#undef NN_FUSED
};

/* The CPU's kernels behind the interface of a device backend: the model
 * keeps separate parameter copies and a plan mirror, and the trainer copies
 * to and from them, as on a GPU. The whole device path of model.c, train.c
 * and data_parallel.c runs, and must give the CPU's results bitwise. */
static nn_backend cpu_device;

static const nn_backend *be = &nn_cpu_backend;

static void need(int present, const char *kernel) {
    if (!present) die("nn_%s: not implemented by the %s backend", kernel, be->name);
}

/* The profile (nn_profile_start): each kernel's calls and seconds, the
 * device synchronized around every call so that its time is its own. */
enum {
#define NN_V(name, params, args) K_##name,
#define NN_R(type, name, params, args) K_##name,
#include "kernels.def"
#undef NN_V
#undef NN_R
    N_KERNELS
};
static const char *const kernel_name[N_KERNELS] = {
#define NN_V(name, params, args) #name,
#define NN_R(type, name, params, args) #name,
#include "kernels.def"
#undef NN_V
#undef NN_R
};
static int profiling;
static double prof_s[N_KERNELS];
static long prof_calls[N_KERNELS];

static double prof_begin(void) {
    be->sync();
    return now_s();
}

static void prof_end(int k, double t0) {
    be->sync();
    prof_s[k] += now_s() - t0;
    prof_calls[k]++;
}

/* The fused kernels of a backend that leaves them NULL: the plain kernels
 * they stand for, in turn (kernels.def). */
static void plain_linear_add_forward(float *y, const float *x, const float *W, const float *residual, int N, int in,
                                     int out) {
    nn_linear_forward(y, x, W, NULL, N, in, out);
    nn_add(y, residual, (size_t)N * out);
}

static void plain_rmsnorm_linear_forward(float *y, float *n, const float *x, const float *w, const float *W, int N,
                                         int d, int out, float eps) {
    nn_rmsnorm_forward(n, x, w, N, d, eps);
    nn_linear_forward(y, n, W, NULL, N, d, out);
}

static void plain_swiglu_linear_add_forward(float *y, float *act, const float *gu, const float *W,
                                            const float *residual, int N, int f, int out) {
    nn_swiglu_forward(act, gu, N, f);
    nn_linear_add_forward(y, act, W, residual, N, f, out);
}

/* The body of a void dispatcher: the backend's kernel, timed when profiling. */
#define CALL_V(name, args)                                                                                             \
    if (!profiling) {                                                                                                  \
        be->name args;                                                                                                 \
        return;                                                                                                        \
    }                                                                                                                  \
    double t0 = prof_begin();                                                                                          \
    be->name args;                                                                                                     \
    prof_end(K_##name, t0);

#define NN_V(name, params, args)                                                                                       \
    void nn_##name params {                                                                                            \
        need(be->name != NULL, #name);                                                                                 \
        CALL_V(name, args)                                                                                             \
    }
#define NN_FUSED(name, params, args)                                                                                   \
    void nn_##name params {                                                                                            \
        if (!be->name) {                                                                                               \
            plain_##name args;                                                                                         \
            return;                                                                                                    \
        }                                                                                                              \
        CALL_V(name, args)                                                                                             \
    }
#define NN_R(type, name, params, args)                                                                                 \
    type nn_##name params {                                                                                            \
        need(be->name != NULL, #name);                                                                                 \
        if (!profiling) return be->name args;                                                                          \
        double t0 = prof_begin();                                                                                      \
        type r = be->name args;                                                                                        \
        prof_end(K_##name, t0);                                                                                        \
        return r;                                                                                                      \
    }
#include "kernels.def"
#undef NN_V
#undef NN_R
#undef NN_FUSED
#undef CALL_V

void nn_profile_start(void) {
    profiling = 1;
    memset(prof_s, 0, sizeof prof_s);
    memset(prof_calls, 0, sizeof prof_calls);
}

static int by_time(const void *a, const void *b) {
    double ta = prof_s[*(const int *)a], tb = prof_s[*(const int *)b];
    return (ta < tb) - (ta > tb);
}

void nn_profile_report(FILE *f, int steps, double step_s) {
    profiling = 0;
    int order[N_KERNELS];
    double total = 0.0;
    for (int k = 0; k < N_KERNELS; k++) order[k] = k, total += prof_s[k];
    qsort(order, N_KERNELS, sizeof *order, by_time);
    fprintf(f, "%-26s %9s %10s %7s\n", "kernel", "calls", "ms/step", "share");
    for (int i = 0; i < N_KERNELS && prof_s[order[i]] > 0.0; i++) {
        int k = order[i];
        fprintf(f, "%-26s %9.1f %10.2f %6.1f%%\n", kernel_name[k], (double)prof_calls[k] / steps,
                1e3 * prof_s[k] / steps, 100.0 * prof_s[k] / steps / step_s);
    }
    fprintf(f, "%-26s %9s %10.2f %6.1f%%\n", "(outside kernels)", "", 1e3 * (step_s - total / steps),
            100.0 * (1.0 - total / steps / step_s));
}

void nn_use_backend(const nn_backend *b) { be = b; }

const nn_backend *nn_current_backend(void) { return be; }

int nn_host_memory(void) { return be->host_memory; }

const nn_backend *nn_backend_by_name(const char *name) {
    if (strcmp(name, "cpu") == 0) return &nn_cpu_backend;
    if (strcmp(name, "cpu-device") == 0) {
        cpu_device = nn_cpu_backend;
        cpu_device.name = "cpu-device";
        cpu_device.host_memory = 0;
        return &cpu_device;
    }
#ifdef NN_CUDA
    if (strcmp(name, "cuda") == 0) return &nn_cuda_backend;
#endif
    return NULL;
}

/* A CPU table with its matrix products on bf16 operands. */
static const nn_backend *cpu_in_bf16(const nn_backend *fp32) {
    static nn_backend t[2]; /* of cpu and of cpu-device */
    nn_backend *b = &t[fp32->host_memory ? 0 : 1];
    *b = *fp32;
    b->linear_forward = cpu_linear_forward_bf16;
    b->linear_backward = cpu_linear_backward_bf16;
    b->attention_forward = cpu_attention_forward_bf16;
    b->attention_backward = cpu_attention_backward_bf16;
    b->linear_add_forward = cpu_linear_add_forward_bf16;
    b->rmsnorm_linear_forward = cpu_rmsnorm_linear_forward_bf16;
    b->swiglu_linear_add_forward = cpu_swiglu_linear_add_forward_bf16;
    b->precision = "bf16";
    return b;
}

void nn_init_device(const char *device, const char *precision, int threads) {
    const nn_backend *b = nn_backend_by_name(device);
    if (!b && strcmp(device, "cuda") == 0)
        die_input("--device cuda: this program was built without CUDA (make CUDA=1)");
    if (!b) die_input("--device %s: unknown device (cpu, cuda, or cpu-device: the CPU on the GPU's code path)", device);
    int cuda = strcmp(device, "cuda") == 0;
    if (precision && strcmp(precision, "bf16") != 0 && strcmp(precision, "fp32") != 0)
        die_input("--precision %s: unknown precision (fp32 or bf16)", precision);
    if (precision && cuda && strcmp(precision, "fp32") == 0)
        die_input("--precision fp32: the cuda backend computes in bf16 (its activations are bf16)");
    if (precision && !cuda && strcmp(precision, "bf16") == 0) b = cpu_in_bf16(b);
    nn_init(threads); /* host-side work (plans, data) uses the CPU threads either way */
    nn_use_backend(b);
    if (b->init) b->init();
}
