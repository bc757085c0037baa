/* backend.c - the nn_* functions of kernels.h: each calls the selected
 * backend's kernel; device selection by name. */
#include "backend.h"
#include "cpu/cpu.h"
#include "../common/error.h"

#include <string.h>

const nn_backend nn_cpu_backend = {
    .name = "cpu",
    .host_memory = 1,
#define NN_V(name, params, args) .name = cpu_##name,
#define NN_R(type, name, params, args) .name = cpu_##name,
#include "kernels.def"
#undef NN_V
#undef NN_R
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

#define NN_V(name, params, args)                                                                                       \
    void nn_##name params {                                                                                            \
        need(be->name != NULL, #name);                                                                                 \
        be->name args;                                                                                                 \
    }
#define NN_R(type, name, params, args)                                                                                 \
    type nn_##name params {                                                                                            \
        need(be->name != NULL, #name);                                                                                 \
        return be->name args;                                                                                          \
    }
#include "kernels.def"
#undef NN_V
#undef NN_R

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

void nn_init_device(const char *device, int threads) {
    const nn_backend *b = nn_backend_by_name(device);
    if (!b && strcmp(device, "cuda") == 0)
        die_input("--device cuda: this program was built without CUDA (make CUDA=1)");
    if (!b) die_input("--device %s: unknown device (cpu, cuda, or cpu-device: the CPU on the GPU's code path)", device);
    nn_init(threads); /* host-side work (plans, data) uses the CPU threads either way */
    nn_use_backend(b);
    if (b->init) b->init();
}
