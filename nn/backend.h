/* backend.h - a backend as a table of its kernels (kernels.def), and the
 * selected one, which every nn_* function calls (as ggml's backends do).
 * A backend may leave kernels it does not need NULL (the GPU backend has no
 * VAE kernels): calling one is a fatal error naming it. */
#ifndef NN_BACKEND_H
#define NN_BACKEND_H

#include "kernels.h"

typedef struct {
    const char *name;
    int host_memory;    /* see nn_host_memory */
    void (*init)(void); /* once selected; may be NULL */
#define NN_V(name, params, args) void(*name) params;
#define NN_R(type, name, params, args) type(*name) params;
#include "kernels.def"
#undef NN_V
#undef NN_R
} nn_backend;

extern const nn_backend nn_cpu_backend;
#ifdef NN_CUDA
extern const nn_backend nn_cuda_backend; /* nn/cuda/backend_cuda.c */
#endif

/* Makes b the backend of every nn_* call (kernel tests compare two). */
void nn_use_backend(const nn_backend *b);
const nn_backend *nn_current_backend(void);
const nn_backend *nn_backend_by_name(const char *name); /* NULL: not built in */

#endif
