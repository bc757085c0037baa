/* conv_onednn.c - k > 1 (or strided) convolutions through oneDNN's direct
 * kernels: forward, input gradient and weight gradient, on NHWC maps.
 *
 * oneDNN's AVX-512 kernels (brgconv, jit) read and write NHWC activations
 * as they are, so the maps go to the primitive without copies; only the
 * weights are reordered from PyTorch's [c_out, c_in, k, k] into the blocked
 * layout the kernel picked (a few KB per call). Where no fast kernel takes
 * NHWC for a shape, the primitive is rebuilt with layouts of oneDNN's choice
 * and reorders around it; its reference kernel is the last resort, correct
 * but slow. The weight gradient always goes through a reorder with a sum
 * post-op, which adds it into dw.
 *
 * With s->bf16 each pass reads bf16 and writes float32 (forward: x, w ->
 * y; input gradient: dy, w -> dx; weight gradient: x, dy -> dw): the
 * reorders in front round the float32 inputs, and the outputs need none. A
 * shape with no bf16 kernel falls back to float32.
 *
 * With s->fixed_weights (inference) a float32 forward runs as Winograd
 * where oneDNN has it (3x3, stride 1; asked only for channels in multiples
 * of 16, which it does not pad): twice as fast as the direct kernel here,
 * within 1e-6 relative of it. Winograd
 * wants its own layouts (a reorder of the map on each side) and a
 * transform of the weights that costs as much as the convolution itself,
 * so the transformed weights are kept (KEPT_WEIGHTS of them, keyed by the
 * caller's pointer, with a copy of the values they came from: a caller
 * that changes w in place gets a new transform, never a stale one). The
 * direct kernels' weight reorders are kept the same way.
 *
 * Primitives are built once per shape and pass and kept (up to MAX_SHAPES,
 * then the oldest is replaced). oneDNN splits the work in a fixed way for a
 * given thread count, so results repeat bit for bit, as the rest of the
 * backend's. */
#include "conv_onednn.h"
#include "../../common/error.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SHAPES 256
#define KEPT_WEIGHTS 256

typedef enum { PASS_FORWARD, PASS_DATA, PASS_WEIGHTS } conv_pass;

/* One tensor a primitive reads or writes: the caller's memory, and when the
 * primitive wants another layout its own buffer and the reorder between. */
typedef struct {
    int arg;
    dnnl_memory_t user, own; /* own NULL: the primitive uses user */
    dnnl_primitive_t reorder;
} operand;

/* forward: src, weights -> dst; data: diff_dst, weights -> diff_src;
 * weights: src, diff_dst -> diff_weights (added into the caller's). */
typedef struct {
    conv_shape s;
    conv_pass pass;
    int bias, built;
    dnnl_primitive_t conv;
    operand in[2], out;
    dnnl_memory_t bias_mem;
} conv_entry;

/* A caller's weight tensor in a primitive's layout (fixed_weights). */
typedef struct {
    const float *w; /* the caller's tensor */
    float *values;  /* what it held when `prepared` was made */
    size_t n;
    dnnl_memory_t prepared;
} kept_weights;

static dnnl_engine_t engine;
static dnnl_stream_t stream;
static conv_entry cache[MAX_SHAPES];
static int n_cached, next_victim;
static kept_weights kept[KEPT_WEIGHTS];
static int n_kept, next_kept_victim;

#define OK(call) ((call) == dnnl_success)
#define MUST(call)                                                                                                     \
    do {                                                                                                               \
        if (!OK(call)) die("oneDNN: %s failed", #call);                                                                \
    } while (0)

static void make_reorder(dnnl_primitive_t *p, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                         int accumulate) {
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd;
    if (accumulate) {
        MUST(dnnl_primitive_attr_create(&attr));
        MUST(dnnl_post_ops_create(&ops));
        MUST(dnnl_post_ops_append_sum(ops, 1.0f));
        MUST(dnnl_primitive_attr_set_post_ops(attr, ops));
    }
    MUST(dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, attr));
    MUST(dnnl_primitive_create(p, pd));
    dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
}

enum {
    BIND_OUTPUT = 1,     /* the primitive writes it */
    BIND_ACCUMULATE = 2, /* ... adding into the caller's values */
    BIND_LENT = 4,       /* its own buffer is lent at run time (lend_workspace, kept_form) */
};

/* The caller's layout `user` against the primitive's `prim`: a reorder
 * unless they are the same (and the result is not to be accumulated). */
static void bind(operand *o, int arg, const dnnl_memory_desc_t *user, const dnnl_memory_desc_t *prim, int flags) {
    o->arg = arg;
    MUST(dnnl_memory_create(&o->user, user, engine, DNNL_MEMORY_NONE));
    if (!(flags & BIND_ACCUMULATE) && dnnl_memory_desc_equal(user, prim)) return;
    MUST(dnnl_memory_create(&o->own, prim, engine, flags & BIND_LENT ? DNNL_MEMORY_NONE : DNNL_MEMORY_ALLOCATE));
    if (flags & BIND_OUTPUT)
        make_reorder(&o->reorder, prim, user, flags & BIND_ACCUMULATE);
    else
        make_reorder(&o->reorder, user, prim, 0);
}

static int is_reference(const_dnnl_primitive_desc_t pd) {
    const char *impl = "";
    dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
    return strncmp(impl, "ref", 3) == 0;
}

/* The primitive descriptor of e's pass with activations in `act` layout
 * (nhwc, or any: oneDNN's choice), reading bf16 when lowp; `alg` is the
 * forward's algorithm (direct or Winograd; a backward pass is direct). */
static dnnl_primitive_desc_t make_pd(const conv_entry *e, dnnl_format_tag_t act, int lowp, dnnl_alg_kind_t alg) {
    const conv_shape *s = &e->s;
    dnnl_dims_t src_dims = {s->n, s->c_in, s->h, s->w}, dst_dims = {s->n, s->c_out, conv_out_h(s), conv_out_w(s)};
    dnnl_dims_t wei_dims = {s->c_out, s->c_in, s->k, s->k}, bias_dims = {s->c_out};
    dnnl_dims_t strides = {s->stride, s->stride}, pad_l = {s->pad_t, s->pad_l}, pad_r = {s->pad_b, s->pad_r};
    dnnl_data_type_t in = lowp ? dnnl_bf16 : dnnl_f32;
    dnnl_memory_desc_t src, dst, wei, bias, fsrc, fdst, fwei;
    /* the pass's inputs in `in`, its output in float32 */
    dnnl_memory_desc_init_by_tag(&src, 4, src_dims, e->pass == PASS_DATA ? dnnl_f32 : in, act);
    dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, e->pass == PASS_FORWARD ? dnnl_f32 : in, act);
    dnnl_memory_desc_init_by_tag(&wei, 4, wei_dims, e->pass == PASS_WEIGHTS ? dnnl_f32 : in, dnnl_format_tag_any);
    dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_a);
    dnnl_convolution_desc_t fd, bd;
    dnnl_primitive_desc_t hint = NULL, pd = NULL;
    if (e->pass == PASS_FORWARD) {
        if (!OK(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_inference, alg, &src, &wei, e->bias ? &bias : NULL,
                                                   &dst, strides, pad_l, pad_r)) ||
            !OK(dnnl_primitive_desc_create(&pd, &fd, NULL, engine, NULL)))
            return NULL;
        return pd;
    }
    /* A backward pass is created with the forward it differentiates as a
     * hint: that forward reads and writes `in` throughout. */
    dnnl_memory_desc_init_by_tag(&fsrc, 4, src_dims, in, act);
    dnnl_memory_desc_init_by_tag(&fdst, 4, dst_dims, in, act);
    dnnl_memory_desc_init_by_tag(&fwei, 4, wei_dims, in, dnnl_format_tag_any);
    if (!OK(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &fsrc, &fwei, NULL,
                                               &fdst, strides, pad_l, pad_r)) ||
        !OK(dnnl_primitive_desc_create(&hint, &fd, NULL, engine, NULL)))
        return NULL;
    int ok = e->pass == PASS_DATA ? OK(dnnl_convolution_backward_data_desc_init(&bd, dnnl_convolution_direct, &src,
                                                                                &wei, &dst, strides, pad_l, pad_r))
                                  : OK(dnnl_convolution_backward_weights_desc_init(
                                        &bd, dnnl_convolution_direct, &src, &wei, NULL, &dst, strides, pad_l, pad_r));
    if (ok) ok = OK(dnnl_primitive_desc_create(&pd, &bd, NULL, engine, hint));
    dnnl_primitive_desc_destroy(hint);
    return ok ? pd : NULL;
}

/* The first fast kernel of: Winograd (a float32 forward of fixed weights),
 * NHWC, then oneDNN's layouts; bf16 (if asked), then float32. A reference
 * kernel only when there is nothing else. */
static dnnl_primitive_desc_t choose_pd(const conv_entry *e) {
    /* Winograd pads channels to multiples of 16: for the VAE's conv_in (3
     * channels) that costs 4x the direct kernel's time. */
    if (e->pass == PASS_FORWARD && e->s.fixed_weights && !e->s.bf16 && e->s.c_in % 16 == 0 && e->s.c_out % 16 == 0) {
        dnnl_primitive_desc_t pd = make_pd(e, dnnl_format_tag_any, 0, dnnl_convolution_winograd);
        if (pd && !is_reference(pd)) return pd;
        if (pd) dnnl_primitive_desc_destroy(pd);
    }
    dnnl_primitive_desc_t slow = NULL;
    for (int attempt = e->s.bf16 ? 0 : 2; attempt < 4; attempt++) {
        dnnl_primitive_desc_t pd =
            make_pd(e, attempt % 2 ? dnnl_format_tag_any : dnnl_nhwc, attempt < 2, dnnl_convolution_direct);
        if (!pd) continue;
        if (!is_reference(pd)) {
            if (slow) dnnl_primitive_desc_destroy(slow);
            return pd;
        }
        if (slow)
            dnnl_primitive_desc_destroy(pd);
        else
            slow = pd;
    }
    return slow;
}

static void build(conv_entry *e) {
    const conv_shape *s = &e->s;
    dnnl_primitive_desc_t pd = choose_pd(e);
    if (!pd) die("oneDNN: no convolution for k %d stride %d, %d -> %d channels", s->k, s->stride, s->c_in, s->c_out);
    dnnl_dims_t src_dims = {s->n, s->c_in, s->h, s->w}, dst_dims = {s->n, s->c_out, conv_out_h(s), conv_out_w(s)};
    dnnl_dims_t wei_dims = {s->c_out, s->c_in, s->k, s->k}, bias_dims = {s->c_out};
    dnnl_memory_desc_t src, dst, wei, bias;
    dnnl_memory_desc_init_by_tag(&src, 4, src_dims, dnnl_f32, dnnl_nhwc);
    dnnl_memory_desc_init_by_tag(&dst, 4, dst_dims, dnnl_f32, dnnl_nhwc);
    dnnl_memory_desc_init_by_tag(&wei, 4, wei_dims, dnnl_f32, dnnl_oihw);
    dnnl_memory_desc_init_by_tag(&bias, 1, bias_dims, dnnl_f32, dnnl_a);
#define MD(q) dnnl_primitive_desc_query_md(pd, q, 0)
    switch (e->pass) {
        case PASS_FORWARD:
            bind(&e->in[0], DNNL_ARG_SRC, &src, MD(dnnl_query_src_md), BIND_LENT);
            bind(&e->in[1], DNNL_ARG_WEIGHTS, &wei, MD(dnnl_query_weights_md), s->fixed_weights ? BIND_LENT : 0);
            bind(&e->out, DNNL_ARG_DST, &dst, MD(dnnl_query_dst_md), BIND_OUTPUT | BIND_LENT);
            MUST(dnnl_memory_create(&e->bias_mem, &bias, engine, DNNL_MEMORY_NONE));
            break;
        case PASS_DATA:
            bind(&e->in[0], DNNL_ARG_DIFF_DST, &dst, MD(dnnl_query_diff_dst_md), 0);
            bind(&e->in[1], DNNL_ARG_WEIGHTS, &wei, MD(dnnl_query_weights_md), 0);
            bind(&e->out, DNNL_ARG_DIFF_SRC, &src, MD(dnnl_query_diff_src_md), BIND_OUTPUT);
            break;
        case PASS_WEIGHTS:
            bind(&e->in[0], DNNL_ARG_SRC, &src, MD(dnnl_query_src_md), 0);
            bind(&e->in[1], DNNL_ARG_DIFF_DST, &dst, MD(dnnl_query_diff_dst_md), 0);
            bind(&e->out, DNNL_ARG_DIFF_WEIGHTS, &wei, MD(dnnl_query_diff_weights_md), BIND_OUTPUT | BIND_ACCUMULATE);
            break;
    }
#undef MD
    MUST(dnnl_primitive_create(&e->conv, pd));
    dnnl_primitive_desc_destroy(pd);
    e->built = 1;
}

static void release_operand(operand *o) {
    if (o->user) dnnl_memory_destroy(o->user);
    if (o->own) dnnl_memory_destroy(o->own);
    if (o->reorder) dnnl_primitive_destroy(o->reorder);
}

static void release(conv_entry *e) {
    if (!e->built) return;
    dnnl_primitive_destroy(e->conv);
    release_operand(&e->in[0]);
    release_operand(&e->in[1]);
    release_operand(&e->out);
    if (e->bias_mem) dnnl_memory_destroy(e->bias_mem);
}

/* The cached entry of (s, pass, bias), built if new; a full cache replaces
 * its oldest entry, never `keep` (an entry the caller still holds). */
static conv_entry *entry_for(const conv_shape *s, conv_pass pass, int bias, const conv_entry *keep) {
    for (int i = 0; i < n_cached; i++)
        if (cache[i].pass == pass && cache[i].bias == bias && memcmp(&cache[i].s, s, sizeof *s) == 0) return &cache[i];
    if (!engine) {
        MUST(dnnl_engine_create(&engine, dnnl_cpu, 0));
        MUST(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags));
    }
    conv_entry *e;
    if (n_cached < MAX_SHAPES) {
        e = &cache[n_cached++];
    } else { /* e.g. a server seeing many batch sizes */
        if (&cache[next_victim] == keep) next_victim = (next_victim + 1) % MAX_SHAPES;
        e = &cache[next_victim];
        next_victim = (next_victim + 1) % MAX_SHAPES;
        release(e);
    }
    memset(e, 0, sizeof *e);
    e->s = *s;
    e->pass = pass;
    e->bias = bias;
    build(e);
    return e;
}

static void run(dnnl_primitive_t p, int n, const dnnl_exec_arg_t *a) {
    if (!OK(dnnl_primitive_execute(p, stream, n, a))) die("oneDNN: a convolution failed");
}

static dnnl_memory_t used(const operand *o) { return o->own ? o->own : o->user; }

/* A forward's own buffers for the maps in and out (Winograd's blocked
 * layouts, as large as the maps) live only while it runs, so every forward
 * borrows them from one workspace instead of keeping its own. */
static void lend_workspace(conv_entry *e) {
    static char *workspace;
    static size_t workspace_size;
    operand *o[2] = {&e->in[0], &e->out};
    size_t offset[2], total = 0;
    for (int i = 0; i < 2; i++) {
        offset[i] = total;
        const dnnl_memory_desc_t *md;
        if (o[i]->own && OK(dnnl_memory_get_memory_desc(o[i]->own, &md)))
            total += (dnnl_memory_desc_get_size(md) + 63) / 64 * 64;
    }
    if (total > workspace_size) {
        free(workspace);
        workspace = aligned_alloc(64, total);
        if (!workspace) die("out of memory (%zu bytes for a convolution's workspace)", total);
        workspace_size = total;
    }
    for (int i = 0; i < 2; i++)
        if (o[i]->own) MUST(dnnl_memory_set_data_handle(o[i]->own, workspace + offset[i]));
}

/* Weights w (already bound to o->user) in the layout o's reorder makes: the
 * kept form while w holds the values it was made from, else made anew (in
 * the slot w had, or the oldest one). */
static dnnl_memory_t kept_form(const operand *o, const float *w, size_t n) {
    const dnnl_memory_desc_t *md;
    MUST(dnnl_memory_get_memory_desc(o->own, &md));
    kept_weights *k = NULL;
    for (int i = 0; i < n_kept && !k; i++) {
        const dnnl_memory_desc_t *kmd;
        MUST(dnnl_memory_get_memory_desc(kept[i].prepared, &kmd));
        if (kept[i].w == w && kept[i].n == n && dnnl_memory_desc_equal(kmd, md)) k = &kept[i];
    }
    if (k && memcmp(k->values, w, n * sizeof *w) == 0) return k->prepared;
    if (!k) {
        if (n_kept < KEPT_WEIGHTS) {
            k = &kept[n_kept++];
        } else {
            k = &kept[next_kept_victim];
            next_kept_victim = (next_kept_victim + 1) % KEPT_WEIGHTS;
            free(k->values);
            dnnl_memory_destroy(k->prepared);
        }
        *k = (kept_weights){w, xmalloc(n * sizeof *w), n, NULL};
        MUST(dnnl_memory_create(&k->prepared, md, engine, DNNL_MEMORY_ALLOCATE));
    }
    memcpy(k->values, w, n * sizeof *w);
    run(o->reorder, 2, (dnnl_exec_arg_t[]){{DNNL_ARG_FROM, o->user}, {DNNL_ARG_TO, k->prepared}});
    return k->prepared;
}

/* Runs e on inputs a, b into out. ready[i] (may be NULL) is input i already
 * in the primitive's layout, made by another pass: used as it is. */
static void run_entry(conv_entry *e, const float *a, const float *b, float *out, const float *bias,
                      const dnnl_memory_t ready[2]) {
    dnnl_memory_set_data_handle(e->in[0].user, (void *)a);
    dnnl_memory_set_data_handle(e->in[1].user, (void *)b);
    dnnl_memory_set_data_handle(e->out.user, out);
    dnnl_memory_t in[2];
    for (int i = 0; i < 2; i++) {
        in[i] = ready && ready[i] ? ready[i] : used(&e->in[i]);
        if (e->in[i].reorder && in[i] == e->in[i].own)
            run(e->in[i].reorder, 2, (dnnl_exec_arg_t[]){{DNNL_ARG_FROM, e->in[i].user}, {DNNL_ARG_TO, in[i]}});
    }
    dnnl_exec_arg_t args[4] = {
        {e->in[0].arg, in[0]}, {e->in[1].arg, in[1]}, {e->out.arg, used(&e->out)}, {DNNL_ARG_BIAS, e->bias_mem}};
    if (bias) dnnl_memory_set_data_handle(e->bias_mem, (void *)bias);
    run(e->conv, bias ? 4 : 3, args);
    if (e->out.reorder)
        run(e->out.reorder, 2, (dnnl_exec_arg_t[]){{DNNL_ARG_FROM, e->out.own}, {DNNL_ARG_TO, e->out.user}});
    dnnl_stream_wait(stream);
}

static int same_layout(dnnl_memory_t a, dnnl_memory_t b) {
    const dnnl_memory_desc_t *ma, *mb;
    return a && b && OK(dnnl_memory_get_memory_desc(a, &ma)) && OK(dnnl_memory_get_memory_desc(b, &mb)) &&
        dnnl_memory_desc_equal(ma, mb);
}

void conv_onednn_forward(float *y, const float *x, const float *w, const float *b, const conv_shape *s) {
    conv_entry *e = entry_for(s, PASS_FORWARD, b != NULL, NULL);
    dnnl_memory_t ready[2] = {NULL, NULL};
    if (s->fixed_weights && e->in[1].reorder) {
        MUST(dnnl_memory_set_data_handle(e->in[1].user, (void *)w));
        ready[1] = kept_form(&e->in[1], w, (size_t)s->c_out * s->c_in * s->k * s->k);
    }
    lend_workspace(e);
    run_entry(e, x, w, y, b, ready);
}

void conv_onednn_backward(float *dx, float *dw, const float *dy, const float *x, const float *w, const conv_shape *s) {
    conv_entry *wg = entry_for(s, PASS_WEIGHTS, 0, NULL);
    dnnl_memory_t dy_ready = NULL;
    if (dx) {
        conv_entry *dg = entry_for(s, PASS_DATA, 0, wg);
        run_entry(dg, dy, w, dx, NULL, NULL);
        /* Both passes read dy; when they want it in the same layout (bf16
         * NHWC), it is rounded once. */
        if (same_layout(dg->in[0].own, wg->in[1].own)) dy_ready = dg->in[0].own;
    }
    run_entry(wg, x, dy, dw, NULL, (dnnl_memory_t[2]){NULL, dy_ready});
}
