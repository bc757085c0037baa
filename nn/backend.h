/* backend.h - a backend as a table of its kernels (kernels.def), and the
 * selected one, which every nn_* function calls (as ggml's backends do).
 * A backend may leave kernels it does not need NULL (the GPU backend has no
 * VAE kernels): calling one is a fatal error naming it. */
#ifndef NN_BACKEND_H
#define NN_BACKEND_H

#include "kernels.h"

#include <stdio.h>

typedef struct {
    const char *name;
    const char *precision; /* of the matrix products' operands: "fp32" or "bf16" */
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

/* Kernel profile: from nn_profile_start on, every nn_* call is timed (the
 * device synchronized before and after, so a GPU loses its overlap: the
 * figures are each kernel's own time, not the step's). nn_profile_report
 * stops it and prints each kernel's calls and milliseconds per step and its
 * share of a step of step_s seconds, most expensive first, and the time
 * outside kernels. */
void nn_profile_start(void);
void nn_profile_report(FILE *f, int steps, double step_s);

#endif
