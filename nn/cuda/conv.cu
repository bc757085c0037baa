/* conv.cu - CUDA backend: 2-D convolutions of NHWC maps (kernels.h,
 * conv_shape) with cuDNN.
 *
 * cuDNN runs in float32 (CUDNN_DATA_FLOAT tensors, float32 compute, the
 * default math type, so TF32 tensor cores where cuDNN picks them): each call
 * converts its operands into float32 scratch (SCRATCH_CONV_*) and writes
 * the results back in their buffers' types. Why float32 and not cuDNN's
 * bfloat16 configuration: the weight gradient then comes out in float32 and
 * is added into dw without a bfloat16 rounding (as the GEMMs' float32 dW),
 * the bias joins the output before its one rounding, and one code path
 * serves bfloat16 and float32 buffers alike. Activations are bfloat16
 * values, exact in TF32; the weights round to TF32 (10 bits of mantissa)
 * at most, finer than the bfloat16 copy the GEMMs read.
 *
 * Layouts: maps are NHWC (CUDNN_TENSOR_NHWC). The weights are float32
 * [c_out, c_in, k, k] (PyTorch's, cuDNN's KCRS); each call copies them into
 * [c_out, k, k, c_in] (KRSC, cuDNN's NHWC filter layout, which its NHWC
 * kernels want), and the weight gradient comes back in KRSC and is added
 * into dw's KCRS. A symmetric padding is cuDNN's; an asymmetric one (the
 * VAE's downsampler) is applied to the float32 copy of x instead, and dx is
 * cropped from the padded map's gradient.
 *
 * Per shape (a small cache, as the CPU caches oneDNN primitives): the
 * descriptors and the algorithm of each direction, chosen once by cuDNN's
 * heuristics (no timing, so the same choice every run) among those cuDNN
 * marks deterministic; the bias gradient is the fixed-order column sum of
 * reduce.cu. The same inputs give the same bits run after run. */
#include "reduce.cuh"

#include <cudnn.h>

#include <stdlib.h>
#include <string.h>

static void cudnn_check(cudnnStatus_t s, const char *what, int line) {
    if (s != CUDNN_STATUS_SUCCESS) die("cuDNN: %s failed at conv.cu:%d: %s", what, line, cudnnGetErrorString(s));
}
#define CUDNN_CHECK(call) cudnn_check((call), #call, __LINE__)

typedef struct {
    int c_in, c_out, n, h, w, k, stride, pad_t, pad_l, pad_b, pad_r; /* the key */
    int hp, wp, ep_t, ep_l;  /* x as cuDNN sees it: padded to hp x wp, x's pixel (0, 0) at (ep_t, ep_l) */
    int ho, wo;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t f;
    cudnnConvolutionDescriptor_t conv;
    int have_fwd, have_bwd; /* algorithms chosen */
    cudnnConvolutionFwdAlgo_t fwd;
    cudnnConvolutionBwdDataAlgo_t bwd_data;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter;
    size_t ws_fwd, ws_data, ws_filter;
} conv_plan;

static cudnnHandle_t handle;
static conv_plan *plans;
static int n_plans, cap_plans;

static int same_key(const conv_plan *p, const conv_shape *s) {
    return p->c_in == s->c_in && p->c_out == s->c_out && p->n == s->n && p->h == s->h && p->w == s->w &&
           p->k == s->k && p->stride == s->stride && p->pad_t == s->pad_t && p->pad_l == s->pad_l &&
           p->pad_b == s->pad_b && p->pad_r == s->pad_r;
}

static conv_plan *plan_of(const conv_shape *s) {
    for (int i = 0; i < n_plans; i++)
        if (same_key(&plans[i], s)) return &plans[i];
    if (s->k < 1 || s->stride < 1 || s->c_in < 1 || s->c_out < 1 || s->pad_t < 0 || s->pad_l < 0 || s->pad_b < 0 ||
        s->pad_r < 0)
        die("cuda backend: conv2d: a bad shape (k %d, stride %d, c_in %d, c_out %d)", s->k, s->stride, s->c_in,
            s->c_out);
    if (!handle) {
        CUDNN_CHECK(cudnnCreate(&handle));
        CUDNN_CHECK(cudnnSetStream(handle, cuda_stream));
    }
    if (n_plans == cap_plans) {
        cap_plans = cap_plans ? 2 * cap_plans : 16;
        plans = (conv_plan *)realloc(plans, sizeof(conv_plan) * cap_plans);
        if (!plans) die("cuda backend: out of host memory");
    }
    conv_plan *p = &plans[n_plans++];
    memset(p, 0, sizeof *p);
    p->c_in = s->c_in, p->c_out = s->c_out, p->n = s->n, p->h = s->h, p->w = s->w, p->k = s->k;
    p->stride = s->stride, p->pad_t = s->pad_t, p->pad_l = s->pad_l, p->pad_b = s->pad_b, p->pad_r = s->pad_r;
    int sym = s->pad_t == s->pad_b && s->pad_l == s->pad_r;
    int cp_h = sym ? s->pad_t : 0, cp_w = sym ? s->pad_l : 0; /* cuDNN's padding */
    p->ep_t = sym ? 0 : s->pad_t, p->ep_l = sym ? 0 : s->pad_l;
    p->hp = sym ? s->h : s->h + s->pad_t + s->pad_b, p->wp = sym ? s->w : s->w + s->pad_l + s->pad_r;
    p->ho = conv_out_h(s), p->wo = conv_out_w(s);
    if (p->ho < 1 || p->wo < 1) die("cuda backend: conv2d: an empty output (%dx%d)", p->ho, p->wo);
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->f));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->c_in, p->hp, p->wp));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s->n, s->c_out, p->ho, p->wo));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->f, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, s->c_out, s->c_in, s->k, s->k));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv, cp_h, cp_w, s->stride, s->stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    int n, ho, wo, c;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv, p->x, p->f, &n, &c, &ho, &wo));
    if (n != s->n || c != s->c_out || ho != p->ho || wo != p->wo)
        die("cuda backend: conv2d: cuDNN's output %dx%dx%dx%d is not the shape's %dx%dx%dx%d", n, ho, wo, c, s->n,
            p->ho, p->wo, s->c_out);
    return p;
}

/* The first algorithm of cuDNN's heuristic order that it can run and marks
 * deterministic. */
template <typename Perf, typename Algo> static void pick(const Perf *perf, int count, Algo *algo, const char *what) {
    for (int i = 0; i < count; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) {
            *algo = perf[i].algo;
            return;
        }
    die("cuda backend: conv2d: cuDNN has no deterministic %s algorithm for this shape", what);
}

static void choose_forward(conv_plan *p) {
    if (p->have_fwd) return;
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle, p->x, p->f, p->conv, p->y,
                                                       CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &count, perf));
    pick(perf, count, &p->fwd, "forward");
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle, p->x, p->f, p->conv, p->y, p->fwd, &p->ws_fwd));
    p->have_fwd = 1;
}

static void choose_backward(conv_plan *p) {
    if (p->have_bwd) return;
    cudnnConvolutionBwdDataAlgoPerf_t dperf[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    cudnnConvolutionBwdFilterAlgoPerf_t fperf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(handle, p->f, p->y, p->conv, p->x,
                                                            CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &count, dperf));
    pick(dperf, count, &p->bwd_data, "backward-data");
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(handle, p->f, p->y, p->conv, p->x, p->bwd_data,
                                                             &p->ws_data));
    count = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(handle, p->x, p->y, p->conv, p->f,
                                                              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &count, fperf));
    pick(fperf, count, &p->bwd_filter, "backward-filter");
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, p->x, p->y, p->conv, p->f, p->bwd_filter,
                                                               &p->ws_filter));
    p->have_bwd = 1;
}

#define THREADS 256

/* dst[n, hp, wp, C] (float32) = src[n, h, w, C] placed at (ep_t, ep_l),
 * zeros around it (none when the map is not padded here). */
__global__ void map_to_f32(float *dst, tview src, int n, int h, int w, int C, int hp, int wp, int ep_t, int ep_l) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)n * hp * wp * C) return;
    int c = t % C, xx = (t / C) % wp - ep_l, yy = (t / ((size_t)C * wp)) % hp - ep_t;
    size_t i = t / ((size_t)C * wp * hp);
    dst[t] = yy >= 0 && yy < h && xx >= 0 && xx < w ? ld(src, ((i * h + yy) * w + xx) * C + c) : 0.0f;
}

/* dst[n, h, w, C] = src[n, hp, wp, C] at (ep_t, ep_l): the crop back. */
__global__ void map_from_f32(tview dst, const float *src, int n, int h, int w, int C, int hp, int wp, int ep_t,
                             int ep_l) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)n * h * w * C) return;
    int c = t % C, xx = (t / C) % w, yy = (t / ((size_t)C * w)) % h;
    size_t i = t / ((size_t)C * w * h);
    st(dst, t, src[((i * hp + yy + ep_t) * wp + xx + ep_l) * C + c]);
}

/* wk[o, r, s, c] = w[o, c, r, s]: KCRS to KRSC. */
__global__ void weights_krsc(float *wk, const float *w, int co, int ci, int kk) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)co * ci * kk) return;
    int c = t % ci, rs = (t / ci) % kk;
    size_t o = t / ((size_t)ci * kk);
    wk[t] = w[(o * ci + c) * kk + rs];
}

/* dw[o, c, r, s] += dwk[o, r, s, c] */
__global__ void add_weights_kcrs(float *dw, const float *dwk, int co, int ci, int kk) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t >= (size_t)co * ci * kk) return;
    int rs = t % kk, c = (t / kk) % ci;
    size_t o = t / ((size_t)ci * kk);
    dw[t] += dwk[(o * kk + rs) * ci + c];
}

/* y[i, c] = ys[i, c] + b[c] (b may be NULL), in y's type. */
__global__ void conv_out(tview y, const float *ys, const float *b, size_t n, int C) {
    size_t t = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (t < n) st(y, t, ys[t] + (b ? b[t % C] : 0.0f));
}

#define LAUNCH(kernel, n, ...) CUDA_LAUNCH(kernel, cuda_blocks((n), THREADS), THREADS, 0, __VA_ARGS__)

static float *weights_f32(const conv_plan *p, const float *w) {
    if (!cuda_is_f32(w, "conv2d w")) die("cuda backend: conv2d: weights must be float32");
    size_t nw = (size_t)p->c_out * p->c_in * p->k * p->k;
    float *wk = (float *)cuda_scratch(SCRATCH_CONV_W, sizeof(float) * nw);
    LAUNCH(weights_krsc, nw, wk, w, p->c_out, p->c_in, p->k * p->k);
    return wk;
}

static float *x_f32(const conv_plan *p, const float *x) {
    size_t nx = (size_t)p->n * p->hp * p->wp * p->c_in;
    float *xs = (float *)cuda_scratch(SCRATCH_CONV_X, sizeof(float) * nx);
    LAUNCH(map_to_f32, nx, xs, tv(x, "conv2d x"), p->n, p->h, p->w, p->c_in, p->hp, p->wp, p->ep_t, p->ep_l);
    return xs;
}

extern "C" void cuda_conv2d_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    if (s->n == 0) return;
    conv_plan *p = plan_of(s);
    choose_forward(p);
    if (b && !cuda_is_f32(b, "conv2d b")) die("cuda backend: conv2d: the bias must be float32");
    size_t ny = (size_t)p->n * p->ho * p->wo * p->c_out;
    float *xs = x_f32(p, x), *wk = weights_f32(p, w);
    float *ys = (float *)cuda_scratch(SCRATCH_CONV_Y, sizeof(float) * ny);
    void *ws = p->ws_fwd ? cuda_scratch(SCRATCH_CONV_WS, p->ws_fwd) : NULL;
    float one = 1.0f, zero = 0.0f;
    CUDNN_CHECK(cudnnConvolutionForward(handle, &one, p->x, xs, p->f, wk, p->conv, p->fwd, ws, p->ws_fwd, &zero, p->y,
                                        ys));
    tview ty = tv(y, "conv2d y");
    LAUNCH(conv_out, ny, ty, ys, b, ny, p->c_out);
    if (ty.f32) cuda_mirror_sync(y, ny); /* a GEMM may read it */
}

extern "C" void cuda_conv2d_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                                     const conv_shape *s) {
    if (s->n == 0) return;
    conv_plan *p = plan_of(s);
    choose_backward(p);
    size_t ny = (size_t)p->n * p->ho * p->wo * p->c_out, nw = (size_t)p->c_out * p->c_in * p->k * p->k;
    tview tdy = tv(dy, "conv2d dy");
    float *dys = (float *)cuda_scratch(SCRATCH_CONV_Y, sizeof(float) * ny);
    LAUNCH(map_to_f32, ny, dys, tdy, p->n, p->ho, p->wo, p->c_out, p->ho, p->wo, 0, 0);
    float one = 1.0f, zero = 0.0f;
    if (dx) {
        float *wk = weights_f32(p, w);
        size_t nxp = (size_t)p->n * p->hp * p->wp * p->c_in, nx = (size_t)p->n * p->h * p->w * p->c_in;
        float *dxs = (float *)cuda_scratch(SCRATCH_CONV_DX, sizeof(float) * nxp);
        void *ws = p->ws_data ? cuda_scratch(SCRATCH_CONV_WS, p->ws_data) : NULL;
        CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, p->f, wk, p->y, dys, p->conv, p->bwd_data, ws,
                                                 p->ws_data, &zero, p->x, dxs));
        tview tdx = tv(dx, "conv2d dx");
        LAUNCH(map_from_f32, nx, tdx, dxs, p->n, p->h, p->w, p->c_in, p->hp, p->wp, p->ep_t, p->ep_l);
        if (tdx.f32) cuda_mirror_sync(dx, nx);
    }
    if (dw) {
        if (!cuda_is_f32(dw, "conv2d dw")) die("cuda backend: conv2d: a weight gradient must be float32");
        float *xs = x_f32(p, x), *dwk = (float *)cuda_scratch(SCRATCH_CONV_DW, sizeof(float) * nw);
        void *ws = p->ws_filter ? cuda_scratch(SCRATCH_CONV_WS, p->ws_filter) : NULL;
        CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, &one, p->x, xs, p->y, dys, p->conv, p->bwd_filter, ws,
                                                   p->ws_filter, &zero, p->f, dwk));
        LAUNCH(add_weights_kcrs, nw, dw, dwk, p->c_out, p->c_in, p->k * p->k);
    }
    if (db) {
        size_t rows = (size_t)p->n * p->ho * p->wo;
        if (rows > 0x7fffffff) die("cuda backend: conv2d: %zu output pixels, more than a bias sum takes", rows);
        cuda_colsum_add(db, tdy, NULL, NULL, (int)rows, p->c_out);
    }
}
