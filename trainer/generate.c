/* generate.c - the sampling loop of generate.h: LM mode, diffusion mode with
 * classifier-free guidance, and the switches between them. */
#include "generate.h"
#include "diffusion.h"
#include "../common/error.h"
#include "../common/rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    model *m;
    const gen_options *o;
    infer *f;
    infer_rows rows;
    gen_sample *out;
    rng *r;        /* [K] one stream per sample */
    float *logits; /* [K, V]: what each sample's next token is drawn from */
    int32_t *last; /* [K] last token of each sample's sequence */
    int guided, lat;
    double *alpha_bar;
    int *ts;
    gen_logits_fn on_logits;
    void *ctx;
} gen_state;

static void push_token(gen_sample *s, int32_t tok) {
    if ((s->n_tok & (s->n_tok - 1)) == 0) { /* grow at powers of two */
        s->tok = realloc(s->tok, sizeof(int32_t) * (s->n_tok ? 2 * s->n_tok : 1));
        if (!s->tok) die("out of memory");
    }
    s->tok[s->n_tok++] = tok;
}

static void push_image(gen_sample *s, const float *x, int lat) {
    s->img = realloc(s->img, sizeof(float) * lat * (s->n_img + 1));
    if (!s->img) die("out of memory");
    memcpy(s->img + (size_t)s->n_img++ * lat, x, sizeof(float) * lat);
}

void gen_sample_free(gen_sample *s) {
    free(s->tok);
    free(s->img);
    memset(s, 0, sizeof *s);
}

/* --------------------------------------------------------------- LM mode */

typedef struct {
    float p;
    int id;
} cand;

static int by_prob(const void *a, const void *b) {
    const cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id; /* ties: a fixed order */
}

/* Draws a token from logits (modified: masked ids become -inf). */
static int sample_token(gen_state *g, float *l, int sampled, rng *r) {
    const model_config *c = &g->m->cfg;
    const gen_options *o = g->o;
    int V = c->vocab_size;
    l[c->eoi_token_id] = -INFINITY; /* EOI only ever follows an image */
    if (o->text_only) l[c->boi_token_id] = -INFINITY;
    if (o->ignore_eos || sampled < o->min_tokens) l[c->eos_token_id] = -INFINITY;
    int best = 0;
    for (int v = 1; v < V; v++)
        if (l[v] > l[best]) best = v;
    if (o->temperature <= 0) return best;
    cand *cs = xmalloc(sizeof(cand) * V);
    double sum = 0;
    for (int v = 0; v < V; v++) {
        cs[v].id = v;
        cs[v].p = (float)exp((l[v] - l[best]) / o->temperature);
        sum += cs[v].p;
    }
    int keep = o->top_k > 0 && o->top_k < V ? o->top_k : V;
    double kept = sum;
    if (keep < V || o->top_p < 1) { /* filtering needs them by probability */
        qsort(cs, V, sizeof(cand), by_prob);
        kept = 0;
        for (int i = 0; i < keep; i++) {
            kept += cs[i].p;
            if (kept >= o->top_p * sum) {
                keep = i + 1;
                break;
            }
        }
    }
    double u = rng_uniform(r) * kept, acc = 0;
    int tok = cs[keep - 1].id;
    for (int i = 0; i < keep; i++)
        if ((acc += cs[i].p) > u) {
            tok = cs[i].id;
            break;
        }
    free(cs);
    return tok;
}

/* Logits of the last row of each listed sample's sequence in h. */
static void take_logits(gen_state *g, const float *h) {
    int V = g->m->cfg.vocab_size, K = g->o->n;
    for (int i = g->rows.n - 1; i >= 0; i--) {
        int s = g->rows.seq[i];
        if (s >= K || (i + 1 < g->rows.n && g->rows.seq[i + 1] == s)) continue;
        infer_logits(g->f, h, &(int32_t){i}, 1, g->logits + (size_t)s * V);
    }
}

/* ---------------------------------------------------------- diffusion mode */

/* Denoises one image for each sample in set[0..n) (whose sequences end with
 * BOI), then commits the clean latents and EOI to their sequences. */
static int run_images(gen_state *g, const int *set, int n, char *err) {
    const model_config *c = &g->m->cfg;
    const gen_options *o = g->o;
    int lat = g->lat, K = o->n, per = g->guided ? 2 : 1;
    float *x = xmalloc(sizeof(float) * n * lat), *z = xmalloc(sizeof(float) * n * lat);
    float *eps = xmalloc(sizeof(float) * per * n * lat);
    for (int j = 0; j < n; j++)
        for (int e = 0; e < lat; e++) x[(size_t)j * lat + e] = (float)rng_normal(&g->r[set[j]]);
    int rc = 0;
    for (int s = o->steps; s >= 1 && !rc; s--) {
        int t = g->ts[s], tp = g->ts[s - 1];
        infer_rows_clear(&g->rows);
        for (int j = 0; j < n; j++) { /* image j: cond at per*j, uncond after it */
            infer_rows_image(&g->rows, set[j], x + (size_t)j * lat, t, c);
            if (g->guided) infer_rows_image(&g->rows, K + set[j], x + (size_t)j * lat, t, c);
        }
        const float *h = infer_forward(g->f, &g->rows, 0, err);
        if (!h) {
            rc = -1;
            break;
        }
        infer_eps(g->f, h, &g->rows, eps);
        for (int j = 0; j < n; j++) {
            float *e = eps + (size_t)per * j * lat;
            if (g->guided) {
                const float *eu = e + lat;
                for (int q = 0; q < lat; q++) e[q] = eu[q] + o->cfg * (e[q] - eu[q]);
            }
            if (o->eta > 0 && tp > 0)
                for (int q = 0; q < lat; q++) z[(size_t)j * lat + q] = (float)rng_normal(&g->r[set[j]]);
            diffusion_reverse_step(x + (size_t)j * lat, e, z + (size_t)j * lat, lat, g->alpha_bar[t], g->alpha_bar[tp],
                                   tp > 0 ? o->eta : 0.0, o->clip);
        }
    }
    if (!rc) {
        infer_rows_clear(&g->rows);
        for (int j = 0; j < n; j++) {
            infer_rows_image(&g->rows, set[j], x + (size_t)j * lat, 1, c);
            infer_rows_token(&g->rows, set[j], c->eoi_token_id);
        }
        const float *h = infer_forward(g->f, &g->rows, 1, err);
        if (!h)
            rc = -1;
        else
            take_logits(g, h);
        for (int j = 0; j < n && !rc; j++) {
            push_image(&g->out[set[j]], x + (size_t)j * lat, lat);
            push_token(&g->out[set[j]], c->eoi_token_id);
            g->last[set[j]] = c->eoi_token_id;
        }
    }
    free(x);
    free(z);
    free(eps);
    return rc;
}

/* ------------------------------------------------------------------ loop */

int generate(model *m, const gen_options *o, const infer_rows *prefix, gen_sample *out, gen_logits_fn on_logits,
             void *ctx, char *err) {
    const model_config *c = &m->cfg;
    int K = o->n, V = c->vocab_size, N = cfg_patches_per_image(c);
    gen_state g = {.m = m, .o = o, .out = out, .on_logits = on_logits, .ctx = ctx};
    g.guided = o->cfg != 1.0f && !o->text_only;
    g.lat = c->latent_channels * c->latent_size * c->latent_size;
    g.f = infer_create(m, g.guided ? 2 * K : K, o->context, o->recompute);
    g.r = xmalloc(sizeof(rng) * K);
    g.logits = xmalloc(sizeof(float) * K * V);
    g.last = xmalloc(sizeof(int32_t) * K);
    g.alpha_bar = xmalloc(sizeof(double) * (c->diffusion_steps + 1));
    g.ts = xmalloc(sizeof(int) * (o->steps + 1));
    diffusion_alpha_bar(g.alpha_bar, c->diffusion_steps);
    diffusion_timesteps(g.ts, o->steps, c->diffusion_steps);
    int *active = xmalloc(sizeof(int) * K), *sampled = xcalloc(K, sizeof(int)), *set = xmalloc(sizeof(int) * K);
    memset(out, 0, sizeof(gen_sample) * K);
    for (int i = 0; i < K; i++) {
        rng_seed(&g.r[i], o->seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1)));
        active[i] = 1;
    }

    /* Prefill: the prefixes, and BOS BOI of every unconditional branch. */
    for (int i = 0; i < prefix->n; i++) {
        int s = prefix->seq[i], im = prefix->img[i];
        if (prefix->mod[i] == MOD_TOKEN)
            infer_rows_token(&g.rows, s, prefix->tok[i]);
        else if (prefix->k[i] == 0)
            infer_rows_image(&g.rows, s, prefix->x + (size_t)im * g.lat, prefix->t[im], c);
        g.last[s] = prefix->mod[i] == MOD_TOKEN ? prefix->tok[i] : -1;
    }
    for (int i = 0; g.guided && i < K; i++) {
        infer_rows_token(&g.rows, K + i, c->bos_token_id);
        infer_rows_token(&g.rows, K + i, c->boi_token_id);
    }
    const float *h = infer_forward(g.f, &g.rows, 1, err);
    int rc = h ? 0 : -1;
    if (h) take_logits(&g, h);

    while (!rc) {
        int n = 0;
        for (int i = 0; i < K; i++)
            if (active[i] && g.last[i] == c->boi_token_id) set[n++] = i;
        if (n && (rc = run_images(&g, set, n, err))) break;
        infer_rows_clear(&g.rows);
        for (int i = 0; i < K; i++) {
            if (!active[i]) continue;
            if (sampled[i] >= o->max_tokens) {
                out[i].stop = "max_tokens";
                active[i] = 0;
                continue;
            }
            float *l = g.logits + (size_t)i * V;
            if (on_logits) on_logits(ctx, i, l, V);
            int tok = sample_token(&g, l, sampled[i], &g.r[i]);
            sampled[i]++;
            int need = tok == c->boi_token_id ? N + 2 : 1; /* BOI, patches, EOI */
            if (tok != c->eos_token_id && infer_len(g.f, i) + need > o->context) {
                out[i].stop = "context";
                active[i] = 0;
                continue;
            }
            push_token(&out[i], tok);
            if (tok == c->eos_token_id) {
                out[i].stop = "eos";
                active[i] = 0;
                continue;
            }
            infer_rows_token(&g.rows, i, tok);
            g.last[i] = tok;
        }
        if (g.rows.n == 0) break;
        if (!(h = infer_forward(g.f, &g.rows, 1, err)))
            rc = -1;
        else
            take_logits(&g, h);
    }
    if (rc)
        for (int i = 0; i < K; i++) gen_sample_free(&out[i]);
    infer_rows_free(&g.rows);
    infer_free(g.f);
    free(g.r);
    free(g.logits);
    free(g.last);
    free(g.alpha_bar);
    free(g.ts);
    free(active);
    free(sampled);
    free(set);
    return rc;
}
