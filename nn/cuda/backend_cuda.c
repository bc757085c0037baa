/* backend_cuda.c - the CUDA backend's table (backend.h): bfloat16
 * activations, float32 parameters, gradients and optimizer state on one GPU
 * per rank. The VAE's kernels (convolution, group norm, upsampling,
 * transpose, absolute error) are not here: the VAE service trains on the CPU. */
#include "cuda_backend.h"
#include "../backend.h"

const nn_backend nn_cuda_backend = {
    .name = "cuda", .host_memory = 0, .init = cuda_init,
    .alloc = cuda_alloc, .alloc_f32 = cuda_alloc_f32, .alloc_i32 = cuda_alloc_i32, .free = cuda_free,
    .zero = cuda_zero, .copy = cuda_copy, .upload = cuda_upload, .download = cuda_download,
    .upload_i32 = cuda_upload_i32, .sync = cuda_sync, .gemm = cuda_gemm,
    .linear_forward = cuda_linear_forward, .linear_backward = cuda_linear_backward,
    .rmsnorm_forward = cuda_rmsnorm_forward, .rmsnorm_backward = cuda_rmsnorm_backward, .rope = cuda_rope,
    .attention_forward = cuda_attention_forward, .attention_backward = cuda_attention_backward,
    .attention_rows = cuda_attention_rows,
    .swiglu_forward = cuda_swiglu_forward, .swiglu_backward = cuda_swiglu_backward,
    .silu_forward = cuda_silu_forward, .silu_backward = cuda_silu_backward, .add = cuda_add,
    .gather_rows = cuda_gather_rows, .scatter_add_rows = cuda_scatter_add_rows, .scatter_rows = cuda_scatter_rows,
    .cross_entropy = cuda_cross_entropy, .squared_error = cuda_squared_error,
    .sum_squared_diff = cuda_sum_squared_diff, .scale = cuda_scale, .adamw = cuda_adamw,
    .ema_update = cuda_ema_update,
};
