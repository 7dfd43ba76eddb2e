/* fuzz_kvec.c - libFuzzer harness for kvec.h's promises under hostile input
   (make fuzz; the seed corpus is tests/fuzz_corpus).

   Each input is read as a small program: the shape of a cache (1 to 3
   layers, up to 300 tokens so that window attention crosses its 64-key tiles
   and 128-row chunks, 1 to 3 KV heads, grouped queries, every dtype), a
   layout (token-major, head-major, padded, V transposed, K and V interleaved
   in one buffer), a config (any policy, budget mode, window, pooling and
   K-VEC term, valid or not), a budget, a plan, a scratch size, the values
   (from a seed, with NaN or Inf where the input says), one "hostile" change
   (K and V in one buffer, queries over the keys, the cache inside the
   scratch, plans sharing memory, a plan descriptor or a stride or an extent
   that lies, sizes past int64) and the entry point to call: kvec_evict_ex
   (with and without a plan), kvec_evict_batch, kvec_evict_layer layer by
   layer, kvec_score_layer + kvec_select_layer, kvec_select + kvec_compact,
   kvec_compact_packed, kvec_plan_offsets and kvec_plan_mask, the decode
   functions, and the host side of the kvec_cuda_* calls (kvec_cuda.cu
   through tests/cuda_emulator.h, kernels not run: tests/fuzz_cuda_host.h).

   Every pointer handed to kvec is a real allocation of exactly the size its
   descriptor implies, so any fault ASan reports is kvec's. After an error,
   every byte of the cache, plan, coverage and decode state must be as it
   was; after a success the plan must be strictly ascending, within its
   capacity, keep the window, hold the documented counts, and the first rows
   of every head must be the original rows it names. */
#define KVEC_IMPLEMENTATION
#include "../kvec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reading the input ---------------------------------------------------- */

typedef struct fz_input { const uint8_t *data; size_t size, at; } fz_input;

static unsigned fz_byte(fz_input *in) { return in->at < in->size ? in->data[in->at++] : 0u; }
static int64_t fz_range(fz_input *in, int64_t lo, int64_t hi) { /* lo .. hi */
    unsigned v = fz_byte(in) | fz_byte(in) << 8;
    return lo + (int64_t)(v % (unsigned)(hi - lo + 1));
}

/* Values that break size arithmetic. */
static int64_t fz_hostile(fz_input *in) {
    static const int64_t values[] = { 0, -1, 1, INT64_MAX, INT64_MIN, INT64_MAX / 2, INT64_MAX / 4 + 1,
                                      (int64_t)1 << 31, ((int64_t)1 << 61) + 1, (int64_t)1 << 62, INT32_MAX,
                                      -((int64_t)1 << 40), (int64_t)1 << 57 };
    return values[fz_byte(in) % (sizeof values / sizeof values[0])];
}

static uint64_t fz_rng;
static uint64_t fz_next(void) {
    fz_rng = fz_rng * 6364136223846793005ull + 1442695040888963407ull;
    return fz_rng >> 11;
}

/* ---- memory: every buffer kvec may touch, to compare after the call ----- */

enum { FZ_MAX_BUFFERS = 64 };
typedef struct fz_memory {
    unsigned char *buffer[FZ_MAX_BUFFERS], *copy[FZ_MAX_BUFFERS];
    size_t size[FZ_MAX_BUFFERS];
    int n, compared[FZ_MAX_BUFFERS]; /* 0: scratch, may change */
} fz_memory;

static void *fz_alloc(fz_memory *m, size_t bytes, int compared) {
    unsigned char *p = (unsigned char *)malloc(bytes ? bytes : 1);
    if (!p || m->n == FZ_MAX_BUFFERS) abort();
    memset(p, 0xa5, bytes);
    m->buffer[m->n] = p; m->size[m->n] = bytes; m->compared[m->n] = compared; m->copy[m->n] = NULL;
    m->n++;
    return p;
}

static void fz_snapshot(fz_memory *m) {
    int i;
    for (i = 0; i < m->n; i++) {
        free(m->copy[i]);
        m->copy[i] = (unsigned char *)malloc(m->size[i] ? m->size[i] : 1);
        memcpy(m->copy[i], m->buffer[i], m->size[i]);
    }
}

static void fz_expect_unchanged(const fz_memory *m, kvec_result r, const char *call) {
    int i;
    for (i = 0; i < m->n; i++)
        if (m->compared[i] && m->copy[i] && memcmp(m->copy[i], m->buffer[i], m->size[i]) != 0) {
            fprintf(stderr, "%s returned %s but changed buffer %d\n", call, kvec_result_string(r), i);
            abort();
        }
}

static void fz_free(fz_memory *m) {
    int i;
    for (i = 0; i < m->n; i++) { free(m->buffer[i]); free(m->copy[i]); }
    m->n = 0;
}

#define FZ_ASSERT(cond, ...)                                        \
    do {                                                            \
        if (!(cond)) { fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); abort(); } \
    } while (0)

/* ---- caches --------------------------------------------------------------- */

enum { FZ_TOKEN_MAJOR, FZ_HEAD_MAJOR, FZ_PADDED, FZ_V_TRANSPOSED, FZ_KV_INTERLEAVED, FZ_LAYOUTS };

typedef struct fz_shape {
    int64_t L, N, Hk, g, D, Dv, Wq, E;
    kvec_dtype kv, q;
    int layout;
    int nan_at; /* 0 none, 1 a key, 2 a query, 3 a value, 4 out_proj */
} fz_shape;

static int64_t fz_elem(kvec_dtype t) { return t == KVEC_DTYPE_F32 ? 4 : 2; }

static size_t fz_view_bytes(const kvec_tensor *v) {
    return (size_t)((v->n_tokens - 1) * v->stride_token + (v->n_heads - 1) * v->stride_head +
                    (v->head_dim - 1) * v->stride_dim + fz_elem(v->dtype));
}

static void fz_fill(kvec_tensor *v, int poison) {
    int64_t t, h, d, e = fz_elem(v->dtype);
    for (t = 0; t < v->n_tokens; t++)
        for (h = 0; h < v->n_heads; h++)
            for (d = 0; d < v->head_dim; d++) {
                char *p = (char *)v->data + t * v->stride_token + h * v->stride_head + d * v->stride_dim;
                float x = (float)((int64_t)(fz_next() % 2001) - 1000) / 400.0f;
                if (e == 4) memcpy(p, &x, 4);
                else {
                    uint16_t u = v->dtype == KVEC_DTYPE_F16 ? kvec_f32_to_f16(x) : kvec_f32_to_bf16(x);
                    memcpy(p, &u, 2);
                }
            }
    if (poison) { /* one NaN or Inf */
        const int64_t t0 = (int64_t)(fz_next() % (uint64_t)v->n_tokens), h0 = (int64_t)(fz_next() % (uint64_t)v->n_heads);
        char *p = (char *)v->data + t0 * v->stride_token + h0 * v->stride_head;
        float x = fz_next() & 1 ? NAN : INFINITY;
        if (e == 4) memcpy(p, &x, 4);
        else { uint16_t u = v->dtype == KVEC_DTYPE_F16 ? kvec_f32_to_f16(x) : kvec_f32_to_bf16(x); memcpy(p, &u, 2); }
    }
}

/* A [n][h][d] view in a layout, in its own allocation (or at `at`). */
static kvec_tensor fz_view(fz_memory *m, kvec_dtype t, int layout, int is_values, int64_t n, int64_t h, int64_t d) {
    kvec_tensor v;
    const int64_t e = fz_elem(t);
    v.dtype = t; v.n_tokens = n; v.n_heads = h; v.head_dim = d;
    v.stride_dim = e; v.stride_head = d * e; v.stride_token = h * d * e;
    if (layout == FZ_HEAD_MAJOR) { v.stride_token = d * e; v.stride_head = n * d * e; }
    if (layout == FZ_PADDED) { v.stride_head = (d + 3) * e; v.stride_token = h * (d + 3) * e + 8 * e; }
    if (layout == FZ_V_TRANSPOSED && is_values) { v.stride_token = e; v.stride_dim = n * e; v.stride_head = d * n * e; }
    v.data = fz_alloc(m, fz_view_bytes(&v), 1);
    return v;
}

static void fz_layer(fz_memory *m, const fz_shape *s, kvec_layer *layer) {
    if (s->layout == FZ_KV_INTERLEAVED) { /* [token][K | V][head][dim], one buffer */
        const int64_t e = fz_elem(s->kv), row = s->Hk * (s->D + s->Dv) * e;
        char *buffer = (char *)fz_alloc(m, (size_t)(s->N * row), 1);
        layer->keys = kvec_tensor_contiguous(buffer, s->kv, s->N, s->Hk, s->D);
        layer->values = kvec_tensor_contiguous(buffer + s->Hk * s->D * e, s->kv, s->N, s->Hk, s->Dv);
        layer->keys.stride_token = layer->values.stride_token = row;
    } else {
        layer->keys = fz_view(m, s->kv, s->layout, 0, s->N, s->Hk, s->D);
        layer->values = fz_view(m, s->kv, s->layout, 1, s->N, s->Hk, s->Dv);
    }
    layer->queries = fz_view(m, s->q, FZ_TOKEN_MAJOR, 0, s->Wq, s->Hk * s->g, s->D);
    layer->out_proj = fz_view(m, s->kv, FZ_TOKEN_MAJOR, 0, s->E, s->Hk * s->g, s->Dv);
    fz_fill(&layer->keys, s->nan_at == 1 && fz_next() % 3 == 0);
    fz_fill(&layer->values, s->nan_at == 3 && fz_next() % 3 == 0);
    fz_fill(&layer->queries, s->nan_at == 2 && fz_next() % 3 == 0);
    fz_fill(&layer->out_proj, s->nan_at == 4 && fz_next() % 3 == 0);
}

static void fz_read_shape(fz_input *in, fz_shape *s) {
    static const kvec_dtype dtypes[3] = { KVEC_DTYPE_F32, KVEC_DTYPE_F16, KVEC_DTYPE_BF16 };
    s->L = fz_range(in, 1, 3);
    s->N = fz_byte(in) & 1 ? fz_range(in, 1, 40) : fz_range(in, 1, 300);
    s->Hk = fz_range(in, 1, 3);
    s->g = fz_range(in, 1, 3);
    s->D = fz_range(in, 1, 24);
    s->Dv = fz_byte(in) & 1 ? s->D : fz_range(in, 1, 24);
    s->Wq = fz_range(in, 1, s->N);
    s->E = fz_range(in, 1, 12);
    s->kv = dtypes[fz_byte(in) % 3];
    s->q = dtypes[fz_byte(in) % 3];
    s->layout = (int)(fz_byte(in) % FZ_LAYOUTS);
    s->nan_at = (int)(fz_byte(in) % 12); /* mostly finite */
}

static void fz_read_config(fz_input *in, const fz_shape *s, kvec_config *c) {
    memset(c, 0, sizeof *c);
    c->policy = (kvec_policy)fz_range(in, 0, KVEC_POLICY_COUNT_);
    c->budget_mode = (kvec_budget_mode)fz_range(in, 0, 5);
    switch (fz_byte(in) % 8) {
    case 0: c->window = 0; break;
    case 1: c->window = fz_hostile(in); break;
    default: c->window = fz_range(in, 1, s->N + 4); break;
    }
    c->pool_kernel = fz_byte(in) % 8 == 0 ? fz_hostile(in) : fz_range(in, 0, 9);
    c->pooling = (kvec_pooling)fz_range(in, 0, 3);
    c->sink_tokens = fz_range(in, -1, 8);
    c->pyramid_beta = (float)fz_range(in, 0, 40) * 0.5f;
    c->seed = fz_byte(in);
    c->terms.enabled = fz_byte(in) % 4 == 0 ? 0 : (uint32_t)fz_range(in, 0, 63) | (fz_byte(in) & 1 ? KVEC_TERM_NONE : 0);
    c->terms.mu = (float)fz_range(in, -4, 4) * 0.5f;
    c->terms.beta = (float)fz_range(in, 0, 5) * 0.25f;
    c->terms.gamma = (float)fz_range(in, -2, 2);
    c->terms.focus_cv = (float)fz_range(in, 0, 8) * 0.5f;
    c->terms.attention_share = (float)fz_range(in, -1, 5) * 0.25f;
    c->head_floor = (float)fz_range(in, -2, 5) * 0.25f;
}

static int64_t fz_read_budget(fz_input *in, const fz_shape *s, const kvec_config *c) {
    kvec_config r;
    int64_t W = kvec_resolve_config(c, &r) == KVEC_OK ? r.window : 32;
    switch (fz_byte(in) % 8) {
    case 0: return fz_hostile(in);
    case 1: return W - 1;
    default: return W > INT64_MAX - 400 ? W : W + fz_range(in, 0, s->N);
    }
}

/* A plan for L layers of Hk heads: the capacity kvec asks for, or more, or
   less; or a descriptor that lies in a way kvec must see. Its arrays are
   exactly the size it states. */
static kvec_plan fz_plan(fz_memory *m, fz_input *in, int64_t L, int64_t Hk, int64_t capacity) {
    kvec_plan p;
    int64_t i;
    const unsigned how = fz_byte(in) % 16;
    if (how == 1) capacity -= 1;
    if (how == 2) capacity += fz_range(in, 1, 9);
    if (capacity < 0) capacity = 0;
    p.n_layers = L; p.n_kv_heads = Hk; p.capacity = capacity;
    p.kept_count = (int64_t *)fz_alloc(m, (size_t)(L * Hk) * sizeof(int64_t), 1);
    p.kept_positions = (int64_t *)fz_alloc(m, (size_t)(L * Hk * capacity) * sizeof(int64_t), 1);
    for (i = 0; i < L * Hk; i++) p.kept_count[i] = -7;
    if (how == 3) p.n_kv_heads = -1;
    if (how == 4) p.capacity = INT64_MAX / 2;       /* sizes past int64 */
    if (how == 5) p.n_layers = fz_hostile(in) > 0 ? L : 0;
    if (how == 6) p.kept_positions = p.kept_count;  /* the two arrays overlap */
    return p;
}

static size_t fz_scratch_bytes(fz_input *in, size_t needed) {
    switch (fz_byte(in) % 10) {
    case 0: return needed ? needed - 1 : 0;
    case 1: return needed + (size_t)fz_range(in, 1, 200);
    default: return needed;
    }
}

/* ---- checking a success ---------------------------------------------------- */

/* Element (t, h, d) of a view, its bytes. */
static const char *fz_at(const kvec_tensor *v, int64_t t, int64_t h, int64_t d) {
    return (const char *)v->data + t * v->stride_token + h * v->stride_head + d * v->stride_dim;
}

/* The layer's K and V as they were: [N][Hk][D] elements, copied out. */
typedef struct fz_original { char *k, *v; } fz_original;

static void fz_keep_original(const kvec_layer *layer, fz_original *o) {
    const kvec_tensor *k = &layer->keys, *v = &layer->values;
    int64_t t, h, d, ek = fz_elem(k->dtype);
    o->k = o->v = NULL;
    if (kvec_validate_tensor(k) != KVEC_OK || kvec_validate_tensor(v) != KVEC_OK || v->n_tokens != k->n_tokens ||
        v->n_heads != k->n_heads || v->dtype != k->dtype)
        return; /* not read: kvec refuses it */
    o->k = (char *)malloc((size_t)(k->n_tokens * k->n_heads * k->head_dim * ek));
    o->v = (char *)malloc((size_t)(v->n_tokens * v->n_heads * v->head_dim * ek));
    for (t = 0; t < k->n_tokens; t++)
        for (h = 0; h < k->n_heads; h++) {
            for (d = 0; d < k->head_dim; d++)
                memcpy(o->k + ((t * k->n_heads + h) * k->head_dim + d) * ek, fz_at(k, t, h, d), (size_t)ek);
            for (d = 0; d < v->head_dim; d++)
                memcpy(o->v + ((t * v->n_heads + h) * v->head_dim + d) * ek, fz_at(v, t, h, d), (size_t)ek);
        }
}

/* Layer l of the plan is valid for the layer and its rows were moved. */
static void fz_check_layer(const kvec_config *c, const kvec_layer *layer, const fz_original *o,
                           const kvec_plan *plan, int64_t l, int64_t layer_budget) {
    const kvec_tensor *k = &layer->keys, *v = &layer->values;
    const int64_t N = k->n_tokens, Hk = k->n_heads, e = fz_elem(k->dtype);
    int64_t j, r, d;
    FZ_ASSERT(o->k && o->v, "kvec accepted a layer the harness found invalid");
    for (j = 0; j < Hk; j++) {
        const int64_t head = l * plan->n_kv_heads + j, count = plan->kept_count[head];
        const int64_t *pos = plan->kept_positions + head * plan->capacity;
        FZ_ASSERT(count >= 0 && count <= plan->capacity && count <= N, "count %lld out of range", (long long)count);
        if (c->budget_mode <= KVEC_BUDGET_PYRAMID || layer_budget >= N)
            FZ_ASSERT(count == (layer_budget < N ? layer_budget : N), "head keeps %lld, budget %lld",
                      (long long)count, (long long)layer_budget);
        for (r = 0; r < count; r++)
            FZ_ASSERT(pos[r] >= 0 && pos[r] < N && (r == 0 || pos[r] > pos[r - 1]), "plan not ascending");
        if (layer_budget < N)
            for (r = 0; r < c->window; r++)
                FZ_ASSERT(count >= c->window && pos[count - c->window + r] == N - c->window + r, "window not kept");
        for (r = 0; r < count; r++) {
            for (d = 0; d < k->head_dim; d++)
                FZ_ASSERT(memcmp(fz_at(k, r, j, d), o->k + ((pos[r] * Hk + j) * k->head_dim + d) * e, (size_t)e) == 0,
                          "kept key row %lld is not the original row %lld", (long long)r, (long long)pos[r]);
            for (d = 0; d < v->head_dim; d++)
                FZ_ASSERT(memcmp(fz_at(v, r, j, d), o->v + ((pos[r] * Hk + j) * v->head_dim + d) * e, (size_t)e) == 0,
                          "kept value row %lld is not the original row %lld", (long long)r, (long long)pos[r]);
        }
    }
}

/* Shared pools: the heads of a pool keep G * B together. */
static void fz_check_pool(const kvec_config *c, const kvec_plan *plan, int64_t L, int64_t Hk, int64_t N,
                          int64_t budget) {
    int64_t l, j, total = 0;
    if (c->budget_mode < KVEC_BUDGET_ADAPTIVE || budget >= N) return;
    for (l = 0; l < L; l++) {
        int64_t layer_total = 0;
        for (j = 0; j < Hk; j++) layer_total += plan->kept_count[l * plan->n_kv_heads + j];
        if (c->budget_mode == KVEC_BUDGET_ADAPTIVE) FZ_ASSERT(layer_total == Hk * budget, "adaptive pool total");
        total += layer_total;
    }
    FZ_ASSERT(total == L * Hk * budget, "pool total");
}

/* ---- the calls ---------------------------------------------------------------- */

typedef struct fz_case {
    fz_input *in;
    fz_memory mem;
    fz_shape shape;
    kvec_config config;
    kvec_layer layers[3];
    kvec_cache cache;
    int64_t budget;
} fz_case;

/* A stride or extent no valid view has: negative, or past int64 once
   multiplied (2^62 only where three or more steps are taken). */
static int64_t fz_refused(fz_input *in, int allow_quarter) {
    static const int64_t values[] = { 0, -1, INT64_MIN, INT64_MAX, -((int64_t)1 << 40), (int64_t)1 << 62 };
    const int64_t v = values[fz_byte(in) % (allow_quarter ? 6 : 5)];
    return v;
}

/* Applies one hostile change to the cache; returns 1 if it did. */
static int fz_spoil_cache(fz_case *f) {
    kvec_layer *layer = &f->layers[fz_byte(f->in) % f->shape.L];
    switch (fz_byte(f->in) % 24) {
    case 0: layer->values = layer->keys; return 1;                         /* K and V in one place */
    case 1: layer->queries = layer->keys; return 1;                        /* queries over the keys */
    /* Lies kvec must see: a valid descriptor of memory that is not there
       would be the harness's fault, so only sizes that are refused. */
    case 2: layer->keys.stride_token = fz_refused(f->in, f->shape.N >= 3); return 1;
    case 3: layer->keys.n_tokens = fz_refused(f->in, 0); return 1;
    case 4: layer->values.head_dim = fz_refused(f->in, 0); return 1;
    case 5: layer->queries.n_heads = fz_refused(f->in, 0); return 1;
    case 6: layer->keys.stride_head = 0; return 1;
    case 7: layer->keys.data = (char *)layer->keys.data + 1; return 1;      /* misaligned */
    case 8: f->layers[f->shape.L - 1] = f->layers[0]; return f->shape.L > 1; /* one layer twice */
    case 9: f->cache.n_layers = fz_hostile(f->in) > 0 ? f->cache.n_layers : 0; return 1;
    case 10: layer->out_proj.data = NULL; return 1;
    case 11: layer->queries.data = NULL; return 1;
    default: return 0;
    }
}

static void fz_evict_ex(fz_case *f) {
    kvec_config *c = &f->config;
    fz_input *in = f->in;
    kvec_plan plan;
    fz_original orig[3];
    size_t needed = 0, bytes;
    int64_t capacity = 0, l;
    const int no_plan = fz_byte(in) % 4 == 0, spoiled = fz_spoil_cache(f);
    void *scratch;
    kvec_result r;
    if (kvec_scratch_bytes(c, &f->cache, 1, &needed) != KVEC_OK) needed = 64;
    if (kvec_plan_capacity(c, f->budget, f->shape.L, f->shape.N, &capacity) != KVEC_OK || capacity > f->shape.N) capacity = f->shape.N;
    plan = fz_plan(&f->mem, in, f->shape.L, f->shape.Hk, capacity);
    bytes = fz_scratch_bytes(in, needed);
    if (fz_byte(in) % 16 == 0 && kvec_validate_tensor(&f->layers[0].keys) == KVEC_OK) { /* the scratch over layer 0's keys */
        scratch = f->layers[0].keys.data;
        bytes = fz_view_bytes(&f->layers[0].keys);
    } else {
        scratch = fz_alloc(&f->mem, bytes, 0);
    }
    for (l = 0; l < f->shape.L; l++) fz_keep_original(&f->layers[l], &orig[l]);
    fz_snapshot(&f->mem);
    r = kvec_evict_ex(c, &f->cache, f->budget, no_plan ? NULL : &plan, scratch, bytes);
    if (r != KVEC_OK) {
        fz_expect_unchanged(&f->mem, r, "kvec_evict_ex");
    } else {
        kvec_config resolved;
        (void)spoiled;
        kvec_resolve_config(c, &resolved);
        if (!no_plan) {
            for (l = 0; l < f->shape.L; l++) {
                int64_t lb;
                kvec_layer_budget(&resolved, f->budget, l, f->shape.L, f->shape.N, &lb);
                fz_check_layer(&resolved, &f->layers[l], &orig[l], &plan, l, lb);
            }
            fz_check_pool(&resolved, &plan, resolved.budget_mode == KVEC_BUDGET_GLOBAL ? 1 : f->shape.L,
                          resolved.budget_mode == KVEC_BUDGET_GLOBAL ? f->shape.L * f->shape.Hk : f->shape.Hk,
                          f->shape.N, f->budget);
        }
    }
    for (l = 0; l < f->shape.L; l++) { free(orig[l].k); free(orig[l].v); }
}

static void fz_evict_layers(fz_case *f) {
    kvec_config *c = &f->config;
    fz_input *in = f->in;
    kvec_plan plan;
    kvec_coverage coverage;
    uint8_t *kept = (uint8_t *)fz_alloc(&f->mem, (size_t)f->shape.N, 1);
    int64_t capacity = 0, l;
    size_t needed = 64;
    void *scratch;
    fz_spoil_cache(f);
    if (kvec_plan_capacity(c, f->budget, f->shape.L, f->shape.N, &capacity) != KVEC_OK || capacity > f->shape.N) capacity = f->shape.N;
    plan = fz_plan(&f->mem, in, f->shape.L, f->shape.Hk, capacity);
    kvec_coverage_init(&coverage, kept, (size_t)f->shape.N, f->shape.N);
    for (l = 0; l < f->shape.L; l++) if (kvec_layer_scratch_bytes(c, &f->layers[l], &needed) == KVEC_OK) break;
    scratch = fz_alloc(&f->mem, needed, 0);
    for (l = 0; l < f->cache.n_layers && l < 3; l++) {
        fz_original orig;
        kvec_result r;
        int64_t lb;
        const kvec_coverage before = coverage;
        fz_keep_original(&f->layers[l], &orig);
        fz_snapshot(&f->mem);
        r = kvec_evict_layer(c, &f->layers[l], l, f->shape.L, f->budget, fz_byte(in) % 8 ? &coverage : NULL, &plan,
                             scratch, fz_scratch_bytes(in, needed));
        if (r != KVEC_OK) {
            fz_expect_unchanged(&f->mem, r, "kvec_evict_layer");
            FZ_ASSERT(coverage.next_layer == before.next_layer, "coverage moved on error");
        } else {
            kvec_config resolved;
            kvec_resolve_config(c, &resolved);
            kvec_layer_budget(&resolved, f->budget, l, f->shape.L, f->shape.N, &lb);
            fz_check_layer(&resolved, &f->layers[l], &orig, &plan, l, lb);
        }
        free(orig.k); free(orig.v);
    }
}

static void fz_batch(fz_case *f) {
    /* two sequences: the case's cache and a copy of its first layers */
    fz_memory *m = &f->mem;
    kvec_layer second[3];
    kvec_cache caches[2];
    kvec_plan plans[2];
    fz_shape s2 = f->shape;
    int64_t capacity = 0, l;
    size_t needed = 64;
    void *scratch;
    kvec_result r;
    s2.N = fz_range(f->in, 1, 200);
    s2.Wq = s2.Wq < s2.N ? s2.Wq : s2.N;
    for (l = 0; l < s2.L; l++) fz_layer(m, &s2, &second[l]);
    caches[0] = f->cache;
    caches[1].layers = second; caches[1].n_layers = s2.L;
    fz_spoil_cache(f);
    if (kvec_plan_capacity(&f->config, f->budget, f->shape.L, 300, &capacity) != KVEC_OK) capacity = 300;
    plans[0] = fz_plan(m, f->in, f->shape.L, f->shape.Hk, capacity);
    plans[1] = fz_plan(m, f->in, s2.L, s2.Hk, capacity);
    if (fz_byte(f->in) % 8 == 0) plans[1].kept_positions = plans[0].kept_positions;
    kvec_scratch_bytes(&f->config, caches, 2, &needed);
    scratch = fz_alloc(m, needed, 0);
    fz_snapshot(m);
    r = kvec_evict_batch(&f->config, caches, 2, f->budget, fz_byte(f->in) % 4 ? plans : NULL, scratch,
                         fz_scratch_bytes(f->in, needed));
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_evict_batch");
}

/* External scores: kvec_select, kvec_compact, then the per-layer steps. */
static void fz_select(fz_case *f) {
    fz_memory *m = &f->mem;
    const int64_t L = f->shape.L, Hk = f->shape.Hk, N = f->shape.N;
    float *scores = (float *)fz_alloc(m, (size_t)(L * Hk * N) * sizeof(float), 1);
    kvec_plan plan;
    int64_t capacity = 0, i;
    size_t needed;
    void *scratch;
    kvec_result r;
    for (i = 0; i < L * Hk * N; i++) {
        const unsigned kind = (unsigned)(fz_next() % 16);
        scores[i] = kind == 0 ? NAN : kind == 1 ? (float)(fz_next() % 3) : (float)(fz_next() % 1000) / 7.0f;
    }
    if (kvec_plan_capacity(&f->config, f->budget, L, N, &capacity) != KVEC_OK || capacity > N) capacity = N;
    plan = fz_plan(m, f->in, L, Hk, capacity);
    needed = kvec_select_scratch_bytes(&f->config, L, Hk, N);
    scratch = fz_alloc(m, needed, 0);
    fz_snapshot(m);
    r = kvec_select(&f->config, scores, L, Hk, N, f->budget, &plan, scratch, fz_scratch_bytes(f->in, needed));
    if (r != KVEC_OK) { fz_expect_unchanged(m, r, "kvec_select"); return; }
    if (fz_byte(f->in) % 4 == 0) { /* then a hand-made plan */
        int64_t h = (int64_t)(fz_next() % (uint64_t)(L * Hk));
        if (plan.kept_count[h] > 1) plan.kept_positions[h * plan.capacity + 1] = (int64_t)(fz_next() % (uint64_t)(N + 2)) - 1;
    }
    fz_spoil_cache(f);
    {
        fz_original orig[3];
        for (i = 0; i < L; i++) fz_keep_original(&f->layers[i], &orig[i]);
        fz_snapshot(m);
        r = kvec_compact(&f->cache, &plan);
        if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_compact");
        for (i = 0; i < L; i++) { free(orig[i].k); free(orig[i].v); }
    }
}

static void fz_score_select_layer(fz_case *f) {
    fz_memory *m = &f->mem;
    const int64_t Hk = f->shape.Hk, N = f->shape.N;
    float *scores = (float *)fz_alloc(m, (size_t)(Hk * N) * sizeof(float), 1);
    uint8_t *kept = (uint8_t *)fz_alloc(m, (size_t)N, 1);
    kvec_coverage coverage;
    kvec_plan plan;
    size_t needed = 64, select_bytes;
    void *scratch;
    kvec_result r;
    fz_spoil_cache(f);
    kvec_coverage_init(&coverage, kept, (size_t)N, N);
    kvec_layer_scratch_bytes(&f->config, &f->layers[0], &needed);
    scratch = fz_alloc(m, needed, 0);
    fz_snapshot(m);
    r = kvec_score_layer(&f->config, &f->layers[0], 0, f->budget, fz_byte(f->in) % 2 ? &coverage : NULL,
                         fz_byte(f->in) % 16 ? scores : (float *)f->layers[0].keys.data, scratch,
                         fz_scratch_bytes(f->in, needed));
    if (r != KVEC_OK) { fz_expect_unchanged(m, r, "kvec_score_layer"); return; }
    plan = fz_plan(m, f->in, 1, Hk, N);
    select_bytes = kvec_select_scratch_bytes(&f->config, 1, Hk, N);
    scratch = fz_alloc(m, select_bytes, 0);
    fz_snapshot(m);
    r = kvec_select_layer(&f->config, scores, Hk, N, f->budget, 0, fz_byte(f->in) % 2 ? &coverage : NULL, &plan,
                          scratch, fz_scratch_bytes(f->in, select_bytes));
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_select_layer");
}

/* A plan from kvec_select (adaptive, uneven heads), then its offsets, mask
   and packed compaction, in place or into new views. */
static void fz_packed(fz_case *f) {
    fz_memory *m = &f->mem;
    kvec_layer *layer = &f->layers[0];
    const int64_t Hk = f->shape.Hk, N = f->shape.N;
    float *scores = (float *)fz_alloc(m, (size_t)(Hk * N) * sizeof(float), 1);
    int32_t *cu = (int32_t *)fz_alloc(m, (size_t)(Hk + 1) * sizeof(int32_t), 1);
    int64_t longest = 0, i, total = 0, rows = fz_range(f->in, 0, N + 1);
    float *mask = (float *)fz_alloc(m, (size_t)(Hk * (rows > 0 ? rows : 1)) * sizeof(float), 1);
    kvec_plan plan = fz_plan(m, f->in, 1, Hk, N);
    kvec_tensor pk, pv;
    size_t needed = kvec_select_scratch_bytes(&f->config, 1, Hk, N);
    void *scratch = fz_alloc(m, needed, 0);
    kvec_result r;
    for (i = 0; i < Hk * N; i++) scores[i] = (float)(fz_next() % 50);
    if (kvec_select(&f->config, scores, 1, Hk, N, f->budget, &plan, scratch, needed) != KVEC_OK) {
        const int honest = plan.n_layers == 1 && plan.n_kv_heads == Hk && plan.capacity > 0 &&
                           plan.capacity <= N + 9 && plan.kept_positions != plan.kept_count;
        for (i = 0; i < Hk && honest; i++) { /* a hand-made plan, in the arrays it has */
            plan.kept_count[i] = (int64_t)(fz_next() % 3);
            plan.kept_positions[i * plan.capacity] = (int64_t)(fz_next() % (uint64_t)N);
            if (plan.capacity > 1) plan.kept_positions[i * plan.capacity + 1] = (int64_t)(fz_next() % (uint64_t)(N + 1));
        }
    }
    fz_snapshot(m);
    r = kvec_plan_offsets(&plan, fz_byte(f->in) % 8 ? 0 : fz_hostile(f->in), cu, &longest);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_plan_offsets");
    fz_snapshot(m);
    r = kvec_plan_mask(&plan, 0, fz_byte(f->in) % 8 ? rows : Hk >= 2 ? INT64_MAX : -1, mask);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_plan_mask");
    for (i = 0; i < Hk && plan.n_kv_heads == Hk; i++) total += plan.kept_count[i] > 0 ? plan.kept_count[i] : 0;
    if (fz_byte(f->in) % 2 && f->shape.layout == FZ_HEAD_MAJOR) { /* in place */
        pk = layer->keys; pk.n_heads = 1; pk.n_tokens = N * Hk;
        pv = layer->values; pv.n_heads = 1; pv.n_tokens = N * Hk;
    } else {
        const int64_t delta = fz_range(f->in, -1, 2), T = total + delta > 0 ? total + delta : 1;
        pk = fz_view(m, f->shape.kv, FZ_TOKEN_MAJOR, 0, T, 1, f->shape.D);
        pv = fz_view(m, f->shape.kv, FZ_TOKEN_MAJOR, 0, T, 1, f->shape.Dv);
        if (fz_byte(f->in) % 8 == 0) pv = pk;
    }
    fz_spoil_cache(f);
    fz_snapshot(m);
    r = kvec_compact_packed(layer, &plan, 0, &pk, &pv);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_compact_packed");
}

/* The decode functions on a state from kvec_decode_init, then spoiled. */
static void fz_decode(fz_case *f) {
    fz_memory *m = &f->mem;
    fz_input *in = f->in;
    const int64_t L = f->shape.L, Hk = f->shape.Hk, H = Hk * f->shape.g, capacity = f->shape.N;
    kvec_decode_state state;
    size_t bytes = 0, needed = 64;
    void *memory, *scratch;
    float *att = (float *)fz_alloc(m, (size_t)((H + 1) * capacity) * sizeof(float), 1);
    float *gates = (float *)fz_alloc(m, (size_t)(Hk * capacity) * sizeof(float), 1);
    float *scores = (float *)fz_alloc(m, (size_t)(L * Hk * capacity) * sizeof(float), 1);
    kvec_plan plan;
    int64_t i, step, l;
    kvec_result r;
    if (kvec_decode_state_bytes(L, Hk, capacity, &bytes) != KVEC_OK) return;
    memory = fz_alloc(m, bytes, 1);
    plan = fz_plan(m, in, L, Hk, capacity);
    for (i = 0; i < H * capacity; i++) att[i] = (float)(fz_next() % 100) / 100.0f;
    for (i = 0; i < Hk * capacity; i++) gates[i] = -(float)(fz_next() % 100) / 100.0f;
    r = kvec_decode_init(&state, memory, bytes, L, Hk, capacity, fz_range(in, 0, capacity),
                         fz_byte(in) % 8 ? fz_range(in, capacity, capacity + 100) : fz_hostile(in), NULL);
    if (r != KVEC_OK) return;
    for (step = 0; step < 6; step++) {
        kvec_decode_state spoiled = state;
        const unsigned op = fz_byte(in) % 6;
        /* only lies kvec must see (a larger state than its memory is not one) */
        switch (fz_byte(in) % 12) {
        case 0: spoiled.n_kv_heads = fz_byte(in) % 2 ? 0 : INT64_MAX / 2; break;
        case 1: spoiled.n_rows = fz_byte(in) % 2 ? -1 : state.capacity + 1; break;
        case 2: spoiled.capacity = fz_byte(in) % 2 ? 0 : INT64_MAX; break;
        case 3: spoiled.attention = (float *)(void *)spoiled.positions; break;
        case 4: spoiled.next_position = state.n_rows - 1; break;
        case 5: spoiled.n_layers = -1; break;
        default: break;
        }
        fz_snapshot(m);
        switch (op) {
        case 0: r = kvec_decode_append(&spoiled, fz_byte(in) % 4 ? fz_range(in, 0, 4) : fz_hostile(in)); break;
        case 1: {
            static const int64_t big = (int64_t)1 << 40; /* big * big overflows */
            const unsigned how = fz_byte(in) % 8;
            r = kvec_decode_observe(&spoiled, fz_range(in, -1, L), att,
                                    how == 0 ? 0 : how == 1 ? H + 1 : how == 2 ? big : H,
                                    how == 2 ? big : how == 3 ? state.n_rows - 1 : how == 4 ? capacity : state.n_rows);
            break;
        }
        case 2: r = kvec_decode_retention(&spoiled, fz_range(in, 0, L - 1), gates, fz_range(in, -1, state.n_rows)); break;
        case 3: r = kvec_decode_retention_scores(&spoiled, fz_byte(in) % 8 ? scores : spoiled.retention); break;
        default: {
            for (l = 0; l < L; l++) f->layers[l].keys.n_tokens = f->layers[l].values.n_tokens = state.n_rows;
            if (state.n_rows == 0 || kvec_decode_scratch_bytes(&f->config, &f->cache, &needed) != KVEC_OK) needed = 64;
            scratch = fz_alloc(m, needed, 0);
            fz_snapshot(m);
            r = kvec_decode_evict(&f->config, &spoiled, &f->cache, op == 4 ? NULL : scores, f->budget, &plan,
                                  scratch, fz_scratch_bytes(in, needed));
            for (l = 0; l < L; l++) f->layers[l].keys.n_tokens = f->layers[l].values.n_tokens = capacity;
            break;
        }
        }
        if (r != KVEC_OK) fz_expect_unchanged(m, r, "a decode call");
        else {
            FZ_ASSERT(spoiled.n_rows >= 0 && spoiled.n_rows <= spoiled.capacity, "decode rows out of range");
            if (spoiled.positions == state.positions && spoiled.capacity == state.capacity &&
                spoiled.n_kv_heads == state.n_kv_heads && spoiled.attention == state.attention)
                state = spoiled; /* a state kvec accepted is the state now */
        }
    }
}

/* Reconstruction scores over layer 0's keys: a pass of R rows repeating a
   chunk of the context, shapes and chunk bounds sometimes wrong or hostile.
   A refusal leaves every buffer as it was; a success writes probabilities
   (finite, in [0, 1]) into the chunk's columns and nothing else. */
static void fz_reconstruction(fz_case *f) {
    fz_memory *m = &f->mem;
    fz_input *in = f->in;
    const fz_shape *sh = &f->shape;
    kvec_layer *layer = &f->layers[0];
    const int64_t N = sh->N, Hk = sh->Hk;
    kvec_reconstruction pass;
    float *scores = (float *)fz_alloc(m, (size_t)(Hk * N) * sizeof(float), 1), *before;
    size_t needed = 0, given;
    void *scratch;
    int64_t i, R = fz_range(in, 1, N + 8);
    kvec_result r;
    pass.queries = fz_view(m, sh->q, FZ_TOKEN_MAJOR, 0, R, Hk * sh->g, sh->D);
    pass.keys = fz_view(m, sh->kv, sh->layout == FZ_KV_INTERLEAVED ? FZ_TOKEN_MAJOR : sh->layout, 0, R, Hk, sh->D);
    fz_fill(&pass.queries, sh->nan_at == 2 && fz_next() % 3 == 0);
    fz_fill(&pass.keys, sh->nan_at == 1 && fz_next() % 3 == 0);
    if (fz_byte(in) % 8) {
        pass.chunk_begin = fz_range(in, 0, N - 1);
        pass.chunk_end = fz_byte(in) % 8 ? pass.chunk_begin + fz_range(in, 1, R) : fz_hostile(in);
    } else {
        pass.chunk_begin = fz_hostile(in);
        pass.chunk_end = fz_hostile(in);
    }
    switch (fz_byte(in) % 12) {
    case 0: pass.keys = layer->keys; pass.keys.n_tokens = R < N ? R : N; break; /* reads may share */
    case 1: pass.queries.data = scores; break;                                 /* written over a read */
    case 2: pass.keys.n_heads = Hk + 1; break;
    case 3: pass.queries.head_dim = fz_hostile(in); break;
    case 4: pass.keys.stride_token = -fz_range(in, 1, 64); break;             /* refused, never followed */
    default: break;
    }
    for (i = 0; i < Hk * N; i++) scores[i] = -1.0f;
    if (kvec_reconstruction_scratch_bytes(&f->config, layer, &pass, &needed) != KVEC_OK || needed > ((size_t)1 << 26))
        needed = 256;
    given = fz_scratch_bytes(in, needed);
    scratch = fz_alloc(m, given, 0);
    before = (float *)malloc((size_t)(Hk * N) * sizeof(float));
    memcpy(before, scores, (size_t)(Hk * N) * sizeof(float));
    fz_snapshot(m);
    if (fz_byte(in) % 4 == 0) { /* the device path's host side: no kernel runs, nothing may be written */
        r = kvec_cuda_reconstruction_scores(&f->config, layer, &pass, fz_byte(in) % 16 ? scores : NULL, scratch, given, NULL);
        fz_expect_unchanged(m, r, "kvec_cuda_reconstruction_scores");
        free(before);
        return;
    }
    r = kvec_reconstruction_scores(&f->config, layer, &pass, fz_byte(in) % 16 ? scores : NULL, scratch, given);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_reconstruction_scores");
    else
        for (i = 0; i < Hk * N; i++) {
            const int64_t t = i % N;
            if (t >= pass.chunk_begin && t < pass.chunk_end)
                FZ_ASSERT(scores[i] >= 0.0f && scores[i] <= 1.0f, "reconstruction score %g outside [0, 1]", scores[i]);
            else
                FZ_ASSERT(scores[i] == before[i], "reconstruction wrote outside its chunk");
        }
    free(before);
}

/* Expected attention over layer 0: query statistics added from a few
   chunks of queries (post-RoPE, hostile positions and rope settings at
   times), then scores. A refusal leaves every buffer as it was (the stats'
   sums included); a success writes every column, +inf for the sinks and
   finite, non-negative values elsewhere. */
static void fz_expected(fz_case *f) {
    fz_memory *m = &f->mem;
    fz_input *in = f->in;
    const fz_shape *sh = &f->shape;
    kvec_layer *layer = &f->layers[0];
    const int64_t N = sh->N, Hk = sh->Hk, H = Hk * sh->g;
    kvec_query_stats stats;
    kvec_expected_attention ea;
    float *scores = (float *)fz_alloc(m, (size_t)(Hk * N) * sizeof(float), 1);
    size_t stats_bytes = 0, needed = 0, given;
    void *memory, *scratch;
    int64_t i, chunks = fz_range(in, 0, 3), position = 0;
    kvec_result r;
    if (kvec_query_stats_bytes(H, sh->D, &stats_bytes) != KVEC_OK) return;
    memory = fz_alloc(m, stats_bytes, 1);
    if (kvec_query_stats_init(&stats, memory, stats_bytes, H, sh->D) != KVEC_OK) abort();
    ea.stats = &stats;
    ea.rope.theta = fz_byte(in) % 8 ? 10000.0 + fz_range(in, 0, 1000000) : (double)fz_hostile(in);
    ea.rope.dims = fz_byte(in) % 4 ? 0 : fz_range(in, -2, sh->D + 2);
    ea.rope.interleaved = (int)fz_range(in, 0, 2) % (fz_byte(in) % 8 ? 2 : 3);
    for (i = 0; i < chunks; i++) {
        const int64_t rows = fz_range(in, 1, 40);
        kvec_tensor q = fz_view(m, sh->q, fz_byte(in) % 2 ? FZ_TOKEN_MAJOR : FZ_PADDED, 0, rows, H, sh->D);
        const int64_t first = fz_byte(in) % 8 ? position : fz_hostile(in);
        fz_fill(&q, sh->nan_at == 2 && fz_next() % 3 == 0);
        if (fz_byte(in) % 16 == 0) q.n_heads = H + 1;
        fz_snapshot(m);
        r = kvec_query_stats_add(&stats, &q, first, &ea.rope);
        if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_query_stats_add");
        position += rows;
    }
    ea.first_position = fz_byte(in) % 8 ? position : fz_hostile(in);
    ea.n_future = fz_byte(in) % 8 ? fz_range(in, 0, 600) : fz_hostile(in);
    if (fz_byte(in) % 8 == 0) ea.rope.theta = NAN;
    if (kvec_expected_attention_scratch_bytes(&f->config, layer, &ea, &needed) != KVEC_OK || needed > ((size_t)1 << 26))
        needed = 256;
    given = fz_scratch_bytes(in, needed);
    scratch = fz_alloc(m, given, 0);
    for (i = 0; i < Hk * N; i++) scores[i] = -1.0f;
    fz_snapshot(m);
    r = kvec_expected_attention_scores(&f->config, layer, &ea, fz_byte(in) % 16 ? scores : (float *)memory, scratch,
                                       given);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_expected_attention_scores");
    else
        for (i = 0; i < Hk * N; i++)
            FZ_ASSERT(scores[i] >= 0.0f && !isnan(scores[i]), "expected attention score %g", scores[i]);
}

/* K-VEC's coverage over given scores of layer 0: non-negative masses, +inf
   at times, a negative or NaN one sometimes. A refusal leaves every buffer
   as it was; a success leaves the window's columns and the +inf ones as
   they were. */
static void fz_coverage_scores(fz_case *f) {
    fz_memory *m = &f->mem;
    fz_input *in = f->in;
    kvec_layer *layer = &f->layers[0];
    const int64_t N = f->shape.N, Hk = f->shape.Hk;
    float *scores = (float *)fz_alloc(m, (size_t)(Hk * N) * sizeof(float), 1), *before;
    size_t needed = 0, given;
    void *scratch;
    int64_t i;
    kvec_result r;
    for (i = 0; i < Hk * N; i++) {
        const unsigned kind = fz_byte(in) % 32;
        scores[i] = kind == 0 ? INFINITY : kind == 1 ? 0.0f : kind == 2 && fz_byte(in) % 4 == 0 ? -1.0f
                  : kind == 3 && fz_byte(in) % 4 == 0 ? NAN : (float)(fz_next() % 1000) / 997.0f;
    }
    if (kvec_coverage_scores_scratch_bytes(&f->config, layer, &needed) != KVEC_OK || needed > ((size_t)1 << 26))
        needed = 256;
    given = fz_scratch_bytes(in, needed);
    scratch = fz_alloc(m, given, 0);
    before = (float *)malloc((size_t)(Hk * N) * sizeof(float));
    memcpy(before, scores, (size_t)(Hk * N) * sizeof(float));
    fz_snapshot(m);
    r = kvec_coverage_scores(&f->config, layer, fz_byte(in) % 16 ? scores : (float *)layer->keys.data, scratch, given);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_coverage_scores");
    else {
        kvec_config c;
        FZ_ASSERT(kvec_resolve_config(&f->config, &c) == KVEC_OK, "a config the call took");
        for (i = 0; i < Hk * N; i++)
            if (i % N >= N - c.window || isinf(before[i]))
                FZ_ASSERT(scores[i] == before[i] || (isnan(scores[i]) && isnan(before[i])), "coverage changed a kept score");
            else
                FZ_ASSERT(!isnan(scores[i]), "coverage wrote NaN");
    }
    free(before);
}

/* The host side of the device path (tests/fuzz_cuda_host.h: no kernel runs). */
static void fz_cuda(fz_case *f) {
    fz_memory *m = &f->mem;
    const int64_t L = f->shape.L, Hk = f->shape.Hk, N = f->shape.N;
    float *scores = (float *)fz_alloc(m, (size_t)(L * Hk * N) * sizeof(float), 1);
    kvec_plan plan = fz_plan(m, f->in, L, Hk, N);
    size_t needed = 0;
    void *scratch;
    kvec_result r;
    fz_spoil_cache(f);
    /* a window of 2^61 asks for that much: answered, never allocated here */
    if (kvec_cuda_scratch_bytes(&f->config, &f->cache, &needed) != KVEC_OK || needed > ((size_t)1 << 26)) needed = 128;
    needed = fz_scratch_bytes(f->in, needed);
    scratch = fz_alloc(m, needed, 0);
    fz_snapshot(m);
    switch (fz_byte(f->in) % 4) {
    case 0: r = kvec_cuda_evict(&f->config, &f->cache, f->budget, &plan, scratch, needed, NULL); break;
    case 1: r = kvec_cuda_score(&f->config, &f->cache, f->budget, scores, scratch, needed, NULL); break;
    case 2:
        r = kvec_cuda_select(&f->config, scores, fz_byte(f->in) % 8 ? L : fz_hostile(f->in), Hk, N, f->budget, &plan,
                             scratch, needed, NULL);
        break;
    default: r = kvec_cuda_compact(&f->cache, &plan, scratch, needed, NULL); break;
    }
    /* kernels do not run: the host itself must never write the cache or plan */
    fz_expect_unchanged(m, r, "a kvec_cuda_* call");
}

/* A learned scorer (linear or MLP, hostile kinds and extents at times)
   over hidden states of layer 0's dtype, NaN in the weights or states
   sometimes, scores written into a strided array. A refusal leaves every
   buffer as it was; a success writes columns 0 .. T-1 of each row with
   numbers (log retention <= 0) and nothing past them. */
static void fz_learned(fz_case *f) {
    fz_memory *m = &f->mem;
    fz_input *in = f->in;
    kvec_scorer s;
    const int64_t E = fz_range(in, 1, 40), Hk = fz_range(in, 1, 4), F = fz_range(in, 1, 24), T = fz_range(in, 1, 70);
    /* hostile extents only where they must be refused or stay inside what is allocated */
    static const int64_t too_big[4] = { INT64_MAX, INT64_MAX / 2, INT64_MAX / 4 + 1, (int64_t)1 << 62 };
    const int64_t stride = fz_byte(in) % 8 ? T + fz_range(in, 0, 5)
                         : fz_byte(in) % 2 ? T - fz_range(in, 1, 3) : too_big[fz_byte(in) % 4];
    const int64_t rows = Hk * (stride > 0 && stride < 1000 ? stride : T + 5);
    float *w1, *b1, *w2, *b2, *scores, *before;
    kvec_tensor hidden;
    size_t needed = 0, given;
    void *scratch;
    int64_t i, j;
    kvec_result r;
    memset(&s, 0, sizeof s);
    s.kind = (kvec_scorer_kind)(fz_byte(in) % 8 ? 1 + fz_byte(in) % 2 : fz_byte(in) % 4);
    s.output = (kvec_scorer_output)(fz_byte(in) % 8 ? fz_byte(in) % 2 : fz_byte(in) % 3);
    s.n_embd = fz_byte(in) % 16 ? E : fz_byte(in) % 2 ? E + 1 : fz_byte(in) % 2 ? -fz_range(in, 0, 3) : too_big[fz_byte(in) % 4];
    s.n_kv_heads = fz_byte(in) % 16 ? Hk : fz_byte(in) % 2 ? -fz_range(in, 0, 3) : too_big[fz_byte(in) % 4];
    s.n_hidden = s.kind == KVEC_SCORER_MLP ? (fz_byte(in) % 16 ? F : fz_byte(in) % 2 ? -fz_range(in, 0, 3)
                                                                   : too_big[fz_byte(in) % 4])
                                           : (fz_byte(in) % 16 ? 0 : F);
    w1 = (float *)fz_alloc(m, (size_t)((F > Hk ? F : Hk) * E) * sizeof(float), 1);
    b1 = (float *)fz_alloc(m, (size_t)(F > Hk ? F : Hk) * sizeof(float), 1);
    w2 = (float *)fz_alloc(m, (size_t)(Hk * F) * sizeof(float), 1);
    b2 = (float *)fz_alloc(m, (size_t)Hk * sizeof(float), 1);
    for (i = 0; i < (F > Hk ? F : Hk) * E; i++) w1[i] = (float)((int)(fz_next() % 2001) - 1000) / 2000.0f;
    for (i = 0; i < (F > Hk ? F : Hk); i++) b1[i] = (float)((int)(fz_next() % 201) - 100) / 100.0f;
    for (i = 0; i < Hk * F; i++) w2[i] = (float)((int)(fz_next() % 2001) - 1000) / 2000.0f;
    for (i = 0; i < Hk; i++) b2[i] = (float)((int)(fz_next() % 201) - 100) / 100.0f;
    if (fz_byte(in) % 16 == 0) w1[fz_next() % (uint64_t)E] = NAN;
    if (fz_byte(in) % 16 == 0) b2[0] = INFINITY;
    s.weight = fz_byte(in) % 32 ? w1 : NULL;
    s.bias = b1;
    s.weight2 = s.kind == KVEC_SCORER_MLP || fz_byte(in) % 4 == 0 ? w2 : NULL;
    s.bias2 = s.weight2 ? b2 : NULL;
    hidden = fz_view(m, f->shape.kv, fz_byte(in) % 2 ? FZ_TOKEN_MAJOR : FZ_PADDED, 0, T, 1, E);
    fz_fill(&hidden, f->shape.nan_at == 1 && fz_next() % 3 == 0);
    if (fz_byte(in) % 16 == 0) hidden.n_heads = 2;
    scores = (float *)fz_alloc(m, (size_t)rows * sizeof(float), 1);
    for (i = 0; i < rows; i++) scores[i] = -12345.0f;
    before = (float *)malloc((size_t)rows * sizeof(float));
    memcpy(before, scores, (size_t)rows * sizeof(float));
    if (kvec_learned_scores_scratch_bytes(&s, &needed) != KVEC_OK || needed > ((size_t)1 << 26)) needed = 256;
    given = fz_scratch_bytes(in, needed);
    scratch = fz_alloc(m, given, 0);
    fz_snapshot(m);
    r = kvec_learned_scores(&s, &hidden, fz_byte(in) % 16 ? scores : w1, stride, scratch, given);
    if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_learned_scores");
    else
        for (j = 0; j < s.n_kv_heads && stride < 1000; j++)
            for (i = 0; i < stride; i++) {
                const float x = scores[j * stride + i];
                if (i >= T) FZ_ASSERT(x == before[j * stride + i], "learned scores wrote past column T");
                else FZ_ASSERT(!isnan(x) && (s.output != KVEC_SCORER_LOG_RETENTION || x <= 0.0f),
                               "learned score %g (output %d)", x, (int)s.output);
            }
    free(before);
    /* Head 0's scores as masses (kvec_learned_masses): into a buffer of
       their own, in place, or one float along (an overlap), with hostile
       lengths (only those that must be refused: a length the caller's
       memory cannot hold is the caller's error), sinks, headers and kinds
       at times. A refusal changes
       nothing; a success gives +inf to the sinks, 0 to the header, and a
       positive number to every other position. */
    if (r == KVEC_OK && stride > 0 && stride < 1000) {
        const int64_t n = fz_byte(in) % 8 ? fz_range(in, 1, T) : fz_byte(in) % 2 ? -fz_range(in, 0, 3) : too_big[fz_byte(in) % 4];
        const int64_t sinks = fz_byte(in) % 16 ? fz_range(in, 0, 6) : -1;
        const int64_t header = fz_byte(in) % 8 ? fz_range(in, 0, n > 0 && n <= T ? n : 0)
                             : fz_byte(in) % 2 && n < INT64_MAX - 3 ? n + fz_range(in, 1, 3) : fz_hostile(in);
        const kvec_scorer_output output = fz_byte(in) % 8 ? s.output : (kvec_scorer_output)(fz_byte(in) % 5);
        const unsigned where = fz_byte(in) % 4;
        float *out = where == 0 ? scores : where == 1 && rows > T ? scores + 1 : (float *)fz_alloc(m, (size_t)T * sizeof(float), 1);
        fz_snapshot(m);
        r = kvec_learned_masses(output, fz_byte(in) % 32 ? scores : NULL, n, sinks, header, out);
        if (r != KVEC_OK) fz_expect_unchanged(m, r, "kvec_learned_masses");
        else
            for (i = 0; i < n; i++)
                FZ_ASSERT(i < sinks ? out[i] == INFINITY : i < header ? out[i] == 0.0f : out[i] > 0.0f && isfinite(out[i]),
                          "mass %g at %lld (sinks %lld, header %lld)", out[i], (long long)i, (long long)sinks,
                          (long long)header);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in;
    fz_case f;
    int64_t l;
    unsigned op;
    in.data = data; in.size = size; in.at = 0;
    memset(&f, 0, sizeof f);
    f.in = &in;
    op = fz_byte(&in) % 12;
    fz_read_shape(&in, &f.shape);
    fz_read_config(&in, &f.shape, &f.config);
    fz_rng = (uint64_t)fz_byte(&in) * 0x9e3779b97f4a7c15ull + 1;
    for (l = 0; l < f.shape.L; l++) fz_layer(&f.mem, &f.shape, &f.layers[l]);
    f.cache.layers = f.layers;
    f.cache.n_layers = f.shape.L;
    f.budget = fz_read_budget(&in, &f.shape, &f.config);
    switch (op) {
    case 0: case 1: fz_evict_ex(&f); break;
    case 2: fz_evict_layers(&f); break;
    case 3: fz_batch(&f); break;
    case 4: fz_select(&f); break;
    case 5: fz_packed(&f); break;
    case 6: fz_decode(&f); break;
    case 8: fz_reconstruction(&f); break;
    case 9: fz_expected(&f); break;
    case 10: fz_coverage_scores(&f); break;
    case 11: fz_learned(&f); break;
    default: if (fz_byte(&in) % 2) fz_cuda(&f); else fz_score_select_layer(&f); break;
    }
    fz_free(&f.mem);
    return 0;
}
