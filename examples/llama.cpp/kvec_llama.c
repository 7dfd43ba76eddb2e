/* kvec_llama.c - kvec on llama.cpp's own KV cache (see kvec_llama.h).
   Includes kvec.h plainly: one file of the program defines
   KVEC_IMPLEMENTATION. */
#define _POSIX_C_SOURCE 199309L
#include "kvec_llama.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int kvl_fail(kvec_llama *kl, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(kl->error, sizeof kl->error, format, args);
    va_end(args);
    return -1;
}

static double kvl_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

/* "<prefix><il>" with nothing after the number: il, else -1. */
static int64_t kvl_layer_of(const char *name, const char *prefix) {
    size_t n = strlen(prefix);
    char *end;
    long il;
    if (strncmp(name, prefix, n) != 0 || name[n] < '0' || name[n] > '9') return -1;
    il = strtol(name + n, &end, 10);
    return *end == '\0' ? (int64_t)il : -1;
}

int kvec_llama_policy(const char *name, kvec_policy *policy) {
    static const char *const names[KVEC_POLICY_COUNT_] = {
        NULL, "kvec", "snapkv", "pyramidkv", "streaming", "h2o", "tova", "knorm", "keydiff", "random",
        "criticalkv", "laprox"};
    int p;
    for (p = 1; p < KVEC_POLICY_COUNT_; p++)
        if (names[p] && !strcmp(name, names[p])) { *policy = (kvec_policy)p; return 0; }
    return -1;
}

/* The host copies of device caches, freed after each eviction: they hold a
   whole prefix of K and V, which a long-running server should not keep. */
static void kvl_free_copies(kvec_llama *kl) {
    int64_t l;
    for (l = 0; kl->cells && l < kl->n_layers; l++) {
        free(kl->cells[l].copy);
        kl->cells[l].copy = NULL;
        kl->cells[l].copy_bytes = 0;
    }
}

int kvec_llama_init(kvec_llama *kl, const struct llama_model *model, int64_t window) {
    memset(kl, 0, sizeof *kl);
    kl->v_trans = -1;
    if (llama_model_is_recurrent(model) || llama_model_is_hybrid(model))
        return kvl_fail(kl, "recurrent and hybrid models keep a state, not a per-token cache: nothing for kvec to evict");
    if (llama_model_n_swa(model) > 0)
        return kvl_fail(kl, "sliding-window attention (SWA/iSWA) already evicts by position in its own cache: not supported");
    if (llama_model_has_encoder(model))
        return kvl_fail(kl, "encoder-decoder models are not supported");
    kl->n_layers = llama_model_n_layer(model);
    kl->n_heads = llama_model_n_head(model);
    kl->n_kv_heads = llama_model_n_head_kv(model);
    if (kl->n_layers <= 0 || kl->n_heads <= 0 || kl->n_kv_heads <= 0 || kl->n_heads % kl->n_kv_heads)
        return kvl_fail(kl, "unexpected head counts (%lld query heads, %lld KV heads)",
                        (long long)kl->n_heads, (long long)kl->n_kv_heads);
    kl->head_dim = llama_model_n_embd(model) / kl->n_heads; /* checked against Qcur at capture */
    kl->n_embd = llama_model_n_embd(model);
    kl->pending_layer = -1;
    kl->window = window;
    kl->k = (struct ggml_tensor **)calloc((size_t)kl->n_layers, sizeof *kl->k);
    kl->v = (struct ggml_tensor **)calloc((size_t)kl->n_layers, sizeof *kl->v);
    kl->rows_seen = (int64_t *)calloc((size_t)kl->n_layers, sizeof *kl->rows_seen);
    kl->cells = (kvec_llama_cells *)calloc((size_t)kl->n_layers, sizeof *kl->cells);
    if (!kl->k || !kl->v || !kl->rows_seen || !kl->cells) return kvl_fail(kl, "out of memory");
    return 0;
}

void kvec_llama_free(kvec_llama *kl) {
    kvl_free_copies(kl);
    free(kl->cells);
    free(kl->k);
    free(kl->v);
    free(kl->rows_seen);
    free(kl->queries);
    free(kl->ubatch_pos);
    free(kl->cell_of_pos);
    free(kl->learned);
    free(kl->learned_seen);
    free(kl->hidden_rows);
    free(kl->pending);
    free(kl->learned_scratch);
    memset(kl, 0, sizeof *kl);
}

int kvec_llama_set_scorers(kvec_llama *kl, const kvec_scorer *scorers) {
    size_t most = 0, bytes;
    int64_t l;
    kvec_result r;
    if (scorers) {
        for (l = 0; l < kl->n_layers; l++) {
            if ((r = kvec_learned_scores_scratch_bytes(&scorers[l], &bytes)) != KVEC_OK)
                return kvl_fail(kl, "the scorer of layer %lld: %s", (long long)l, kvec_result_string(r));
            if (scorers[l].n_embd != kl->n_embd || scorers[l].n_kv_heads != kl->n_kv_heads)
                return kvl_fail(kl, "the scorer of layer %lld reads %lld values and gives %lld KV heads; this model has "
                                    "%lld and %lld", (long long)l, (long long)scorers[l].n_embd,
                                (long long)scorers[l].n_kv_heads, (long long)kl->n_embd, (long long)kl->n_kv_heads);
            if (bytes > most) most = bytes;
        }
        if (most > kl->learned_scratch_bytes) {
            void *grown = realloc(kl->learned_scratch, most);
            if (!grown) return kvl_fail(kl, "out of memory");
            kl->learned_scratch = grown;
            kl->learned_scratch_bytes = most;
        }
        if (!kl->learned_seen && !(kl->learned_seen = (int64_t *)calloc((size_t)kl->n_layers, sizeof(int64_t))))
            return kvl_fail(kl, "out of memory");
    }
    kl->scorers = scorers;
    return 0;
}

void kvec_llama_context_params(kvec_llama *kl, struct llama_context_params *params) {
    params->cb_eval = kvec_llama_eval_cb;
    params->cb_eval_user_data = kl;
    params->n_seq_max = 1;
}

int kvec_llama_begin(kvec_llama *kl, int64_t n_prefix) {
    size_t q = (size_t)(kl->n_layers * kl->window * kl->n_heads * kl->head_dim);
    int64_t p;
    if (n_prefix <= kl->window)
        return kvl_fail(kl, "the prefix (%lld tokens) must be longer than the window (%lld)",
                        (long long)n_prefix, (long long)kl->window);
    free(kl->queries);
    free(kl->cell_of_pos);
    kl->queries = (float *)calloc(q, sizeof *kl->queries);
    kl->cell_of_pos = (int64_t *)malloc((size_t)n_prefix * sizeof *kl->cell_of_pos);
    if (!kl->queries || !kl->cell_of_pos) return kvl_fail(kl, "out of memory");
    free(kl->learned);
    kl->learned = NULL;
    if (kl->scorers) {
        if (!(kl->learned = (float *)malloc((size_t)(kl->n_layers * kl->n_kv_heads * n_prefix) * sizeof *kl->learned)))
            return kvl_fail(kl, "out of memory");
        memset(kl->learned_seen, 0, (size_t)kl->n_layers * sizeof *kl->learned_seen);
        kl->pending_layer = -1;
        kl->learned_ms = 0;
    }
    for (p = 0; p < n_prefix; p++) kl->cell_of_pos[p] = -1;
    memset(kl->rows_seen, 0, (size_t)kl->n_layers * sizeof *kl->rows_seen);
    kl->n_prefix = n_prefix;
    kl->n_ubatch_pos = 0;
    kl->error[0] = '\0';
    kl->armed = 1;
    return 0;
}

/* A write into the cache: remember which tensor it is, and how V is laid out. */
static void kvl_note_write(kvec_llama *kl, struct ggml_tensor *t) {
    struct ggml_tensor *dst = t->src[2], *root = t->src[2];
    int64_t il;
    if (!root) return;
    while (root->view_src) root = root->view_src;
    if ((il = kvl_layer_of(root->name, "cache_k_l")) >= 0 && il < kl->n_layers) {
        kl->k[il] = root;
    } else if ((il = kvl_layer_of(root->name, "cache_v_l")) >= 0 && il < kl->n_layers) {
        kl->v[il] = root;
        /* transposed V is written one element per row ([1][kv_size*Hk*D]) */
        kl->v_trans = dst->ne[0] == 1 && root->ne[0] > 1;
    }
}

/* attn_norm-<il>, f32 [n_tokens][E] (the layer's attention input): scored
   now, placed by position when Qcur-<il> gives the ubatch's positions. */
static void kvl_capture_hidden(kvec_llama *kl, struct ggml_tensor *t, int64_t il) {
    const int64_t n = t->ne[1], E = kl->n_embd;
    double started;
    kvec_tensor rows;
    kvec_result r;
    int on_host;
    if (t->type != GGML_TYPE_F32 || t->ne[0] != E || t->ne[2] != 1 || t->ne[3] != 1 ||
        t->nb[1] != (size_t)E * sizeof(float)) {
        kvl_fail(kl, "attn_norm-%lld is not f32 [tokens][%lld]: unsupported graph", (long long)il, (long long)E);
        return;
    }
    /* rows in host memory (the CPU backend) are scored where they lie; a
       device's (or an RPC server's) are copied to the host first */
    on_host = t->buffer && ggml_backend_buffer_is_host(t->buffer) && t->data;
    if (n > kl->pending_cap) {
        float *pending = (float *)realloc(kl->pending, (size_t)(n * kl->n_kv_heads) * sizeof *pending);
        if (!pending) { kvl_fail(kl, "out of memory"); return; }
        kl->pending = pending;
        kl->pending_cap = n;
    }
    if (!on_host && n > kl->hidden_cap) {
        float *hidden = (float *)realloc(kl->hidden_rows, (size_t)(n * E) * sizeof *hidden);
        if (!hidden) { kvl_fail(kl, "out of memory"); return; }
        kl->hidden_rows = hidden;
        kl->hidden_cap = n;
    }
    started = kvl_ms();
    if (!on_host) ggml_backend_tensor_get(t, kl->hidden_rows, 0, (size_t)(n * E) * sizeof(float));
    rows = kvec_tensor_contiguous(on_host ? t->data : (void *)kl->hidden_rows, KVEC_DTYPE_F32, n, 1, E);
    if ((r = kvec_learned_scores(&kl->scorers[il], &rows, kl->pending, n, kl->learned_scratch,
                                 kl->learned_scratch_bytes)) != KVEC_OK) {
        kvl_fail(kl, "learned scores, layer %lld: %s", (long long)il, kvec_result_string(r));
        return;
    }
    kl->pending_layer = il;
    kl->pending_rows = n;
    kl->learned_ms += kvl_ms() - started;
}

/* Layer il's pending scores to their positions (the ubatch's, just read). */
static void kvl_place_learned(kvec_llama *kl, int64_t il, int64_t n) {
    const int64_t N = kl->n_prefix, Hk = kl->n_kv_heads;
    int64_t i, j;
    if (kl->pending_layer != il || kl->pending_rows != n) {
        kvl_fail(kl, "attn_norm-%lld was not seen before Qcur-%lld with the same tokens: unsupported graph",
                 (long long)il, (long long)il);
        return;
    }
    for (i = 0; i < n; i++) {
        const int64_t p = kl->ubatch_pos[i];
        if (p < 0 || p >= N) continue;
        for (j = 0; j < Hk; j++) kl->learned[(il * Hk + j) * N + p] = kl->pending[j * n + i];
        kl->learned_seen[il]++;
    }
    kl->pending_layer = -1;
}

/* Qcur-<il>'s RoPE output, f32 [n_tokens][H][D]; src[1] the ubatch positions. */
static void kvl_capture_queries(kvec_llama *kl, struct ggml_tensor *t, int64_t il) {
    const struct ggml_tensor *pos = t->src[1];
    int64_t n = t->ne[2], row_bytes = kl->n_heads * kl->head_dim * (int64_t)sizeof(float), i;
    int64_t first = kl->n_prefix - kl->window;
    if (t->type != GGML_TYPE_F32 || t->ne[0] != kl->head_dim || t->ne[1] != kl->n_heads ||
        t->nb[1] != (size_t)(kl->head_dim * 4) || t->nb[2] != (size_t)row_bytes) {
        kvl_fail(kl, "Qcur-%lld is not f32 [tokens][%lld heads][%lld dims]: unsupported attention layout",
                 (long long)il, (long long)kl->n_heads, (long long)kl->head_dim);
        return;
    }
    if (!pos || pos->type != GGML_TYPE_I32 || pos->ne[0] != n) {
        kvl_fail(kl, "Qcur-%lld: positions are not one int32 per token (M-RoPE?): unsupported", (long long)il);
        return;
    }
    if (n > kl->ubatch_cap) {
        int32_t *grown = (int32_t *)realloc(kl->ubatch_pos, (size_t)n * sizeof *grown);
        if (!grown) { kvl_fail(kl, "out of memory"); return; }
        kl->ubatch_pos = grown;
        kl->ubatch_cap = n;
    }
    ggml_backend_tensor_get(pos, kl->ubatch_pos, 0, (size_t)n * sizeof(int32_t));
    kl->n_ubatch_pos = n;
    if (kl->learned) kvl_place_learned(kl, il, n);
    for (i = 0; i < n; i++) {
        int64_t p = kl->ubatch_pos[i];
        if (p < first || p >= kl->n_prefix) continue;
        ggml_backend_tensor_get(t, kl->queries + ((il * kl->window + (p - first)) * kl->n_heads * kl->head_dim),
                                (size_t)(i * row_bytes), (size_t)row_bytes);
        kl->rows_seen[il]++;
    }
}

/* Layer 0's K write: its index input is the cell of each ubatch token. */
static void kvl_capture_cells(kvec_llama *kl, struct ggml_tensor *t) {
    const struct ggml_tensor *idx = t->src[1];
    int64_t n = idx ? idx->ne[0] : 0, i;
    int64_t *cells;
    if (!idx || idx->type != GGML_TYPE_I64 || n != kl->n_ubatch_pos) {
        kvl_fail(kl, "the K write of layer 0 does not match the ubatch seen at Qcur-0");
        return;
    }
    if (!(cells = (int64_t *)malloc((size_t)n * sizeof *cells))) { kvl_fail(kl, "out of memory"); return; }
    ggml_backend_tensor_get(idx, cells, 0, (size_t)n * sizeof *cells);
    for (i = 0; i < n; i++) {
        int64_t p = kl->ubatch_pos[i];
        if (p >= 0 && p < kl->n_prefix) kl->cell_of_pos[p] = cells[i];
    }
    free(cells);
}

static int kvl_is_layer0_k_write(const struct ggml_tensor *t) {
    const struct ggml_tensor *root = t->src[2];
    if (!root) return 0;
    while (root->view_src) root = root->view_src;
    return strcmp(root->name, "cache_k_l0") == 0;
}

bool kvec_llama_eval_cb(struct ggml_tensor *t, bool ask, void *user_data) {
    kvec_llama *kl = (kvec_llama *)user_data;
    int64_t il;
    if (t->op == GGML_OP_SET_ROWS) {
        if (ask) kvl_note_write(kl, t);
        if (!kl->armed) return ask ? false : true;
        if (!kvl_is_layer0_k_write(t)) return ask ? false : true;
        if (!ask) kvl_capture_cells(kl, t);
        return true;
    }
    if (kl->armed && kl->learned && (il = kvl_layer_of(t->name, "attn_norm-")) >= 0 && il < kl->n_layers) {
        if (!ask) kvl_capture_hidden(kl, t, il);
        return true;
    }
    /* The name alone is not enough: the Q matmul and reshape are Qcur-<il> too. */
    if (t->op != GGML_OP_ROPE || !kl->armed) return ask ? false : true;
    il = kvl_layer_of(t->name, "Qcur-");
    if (il < 0 || il >= kl->n_layers) return ask ? false : true;
    if (!ask) kvl_capture_queries(kl, t, il);
    return true;
}

static int kvl_dtype(enum ggml_type type, kvec_dtype *dtype) {
    switch (type) {
    case GGML_TYPE_F32:  *dtype = KVEC_DTYPE_F32;  return 0;
    case GGML_TYPE_F16:  *dtype = KVEC_DTYPE_F16;  return 0;
    case GGML_TYPE_BF16: *dtype = KVEC_DTYPE_BF16; return 0;
    default:             return -1;
    }
}

/* What every eviction needs: the sequence is positions first .. N-1, the
   cache is one kvec can read, the window's queries were captured. */
static int kvl_check_common(kvec_llama *kl, struct llama_context *ctx, int64_t first) {
    llama_memory_t mem = llama_get_memory(ctx);
    int64_t N = kl->n_prefix, l, width = kl->n_kv_heads * kl->head_dim;
    kvec_dtype dtype;
    kl->armed = 0;
    if (kl->error[0]) return -1; /* from the capture */
    if (llama_n_seq_max(ctx) != 1)
        return kvl_fail(kl, "the context holds %u sequences: one sequence only (n_seq_max = 1)", llama_n_seq_max(ctx));
    if (!mem) return kvl_fail(kl, "the context has no memory module");
    if (llama_memory_seq_pos_min(mem, 0) != first || llama_memory_seq_pos_max(mem, 0) != N - 1)
        return kvl_fail(kl, "sequence 0 holds positions %d..%d, the capture expects %lld..%lld",
                        llama_memory_seq_pos_min(mem, 0), llama_memory_seq_pos_max(mem, 0), (long long)first, (long long)N - 1);
    if (kl->v_trans < 0) return kvl_fail(kl, "no write into the cache was seen: was the prefill decoded with this callback?");
    for (l = 0; l < kl->n_layers; l++) {
        const struct ggml_tensor *k = kl->k[l], *v = kl->v[l];
        if (!k) return kvl_fail(kl, "no cache_k_l%lld (SWA or shared-layer caches are named otherwise)", (long long)l);
        if (!v) return kvl_fail(kl, "no cache_v_l%lld: an MLA cache (no separate V) is not supported", (long long)l);
        if (kvl_dtype(k->type, &dtype) || kvl_dtype(v->type, &dtype))
            return kvl_fail(kl, "the KV cache is %s/%s: kvec reads f32, f16 and bf16 caches, not quantised ones",
                            ggml_type_name(k->type), ggml_type_name(v->type));
        if (k->ne[0] != width || v->ne[0] != width)
            return kvl_fail(kl, "layer %lld: cache rows of %lld/%lld values, expected %lld KV heads x %lld (MLA or per-layer head sizes)",
                            (long long)l, (long long)k->ne[0], (long long)v->ne[0],
                            (long long)kl->n_kv_heads, (long long)kl->head_dim);
        if (k->ne[2] != 1 || v->ne[2] != 1) return kvl_fail(kl, "the cache has several streams: one sequence only");
        if (!k->buffer || !v->buffer) return kvl_fail(kl, "layer %lld: the cache tensors have no buffer", (long long)l);
        if (k->nb[1] != (size_t)width * ggml_type_size(k->type) || v->nb[1] != (size_t)width * ggml_type_size(v->type))
            return kvl_fail(kl, "layer %lld: the cache rows are not contiguous", (long long)l);
        if (kl->rows_seen[l] != kl->window)
            return kvl_fail(kl, "layer %lld: %lld of the last %lld queries were captured",
                            (long long)l, (long long)kl->rows_seen[l], (long long)kl->window);
    }
    return 0;
}

int kvec_llama_check(kvec_llama *kl, struct llama_context *ctx) {
    int64_t N = kl->n_prefix, p;
    if (kvl_check_common(kl, ctx, 0)) return -1;
    for (p = 0; p < N; p++)
        if (kl->cell_of_pos[p] != kl->cell_of_pos[0] + p)
            return kvl_fail(kl, "prefix position %lld is in cell %lld: the prefix is not in consecutive cells",
                            (long long)p, (long long)kl->cell_of_pos[p]);
    return 0;
}

/* ---- the cells an eviction works on, in host memory ---- */

/* Points kl->cells[l] at cells [first, first + count) of layer l: the cache
   tensors themselves when they are in host memory, else the layer's host
   copy, read here. The cache is [cells][Hk*D] (K, and V with flash
   attention) or, for a transposed V, [Hk*D][cells]: one contiguous read per
   tensor, or one per V row. */
static int kvl_read_cells(kvec_llama *kl, int64_t l, int64_t first, int64_t count) {
    const struct ggml_tensor *k = kl->k[l], *v = kl->v[l];
    kvec_llama_cells *c = &kl->cells[l];
    const int64_t width = kl->n_kv_heads * kl->head_dim, kv_size = k->ne[1];
    const int64_t ek = (int64_t)ggml_type_size(k->type), ev = (int64_t)ggml_type_size(v->type);
    size_t k_bytes, v_bytes;
    int64_t i;
    int span;
    if (first < 0 || count <= 0 || count > kv_size - first || v->ne[1] != kv_size)
        return kvl_fail(kl, "layer %lld: cells %lld..%lld are not in the cache of %lld cells", (long long)l,
                        (long long)first, (long long)(first + count - 1), (long long)kv_size);
    c->first = first;
    c->count = count;
    c->k_elem = ek;
    if (ggml_backend_buffer_is_host(k->buffer) && ggml_backend_buffer_is_host(v->buffer)) {
        c->k = (char *)k->data + first * (int64_t)k->nb[1];
        c->k_cell = (int64_t)k->nb[1];
        if (!kl->v_trans) {
            c->v = (char *)v->data + first * (int64_t)v->nb[1];
            c->v_cell = (int64_t)v->nb[1];
            c->v_elem = ev;
        } else {
            c->v = (char *)v->data + first * ev;
            c->v_cell = ev;
            c->v_elem = kv_size * ev;
        }
        return 0;
    }
    /* device memory: [count][Hk*D] of K, then V in the cache's own layout.
       A transposed V is read in one call when the span from the first row's
       first cell to the last row's last cell is at most twice the cells
       wanted (a context not much longer than the prefix), else row by row. */
    k_bytes = (size_t)count * (size_t)(width * ek);
    v_bytes = (size_t)count * (size_t)(width * ev);
    span = kl->v_trans && (width - 1) * kv_size + count <= 2 * width * count;
    if (span) v_bytes = (size_t)((width - 1) * kv_size + count) * (size_t)ev;
    if (k_bytes + v_bytes > c->copy_bytes) {
        char *grown = (char *)realloc(c->copy, k_bytes + v_bytes);
        if (!grown) return kvl_fail(kl, "out of memory (a host copy of %zu bytes for layer %lld)", k_bytes + v_bytes, (long long)l);
        c->copy = grown;
        c->copy_bytes = k_bytes + v_bytes;
    }
    c->k = c->copy;
    c->k_cell = width * ek;
    c->v = c->copy + k_bytes;
    ggml_backend_tensor_get(k, c->k, (size_t)first * k->nb[1], k_bytes);
    if (!kl->v_trans) {
        c->v_cell = width * ev;
        c->v_elem = ev;
        ggml_backend_tensor_get(v, c->v, (size_t)first * v->nb[1], v_bytes);
    } else if (span) {
        c->v_cell = ev;
        c->v_elem = kv_size * ev;
        ggml_backend_tensor_get(v, c->v, (size_t)(first * ev), v_bytes);
    } else {
        c->v_cell = ev;
        c->v_elem = count * ev;
        for (i = 0; i < width; i++)
            ggml_backend_tensor_get(v, c->v + i * count * ev, (size_t)((i * kv_size + first) * ev), (size_t)(count * ev));
    }
    return 0;
}

/* Whether the layer's cells were read into a host copy (a device cache). */
static int kvl_in_copy(const kvec_llama_cells *c) {
    return c->copy != NULL && c->k == c->copy;
}

/* Writes cells [from, from + n) of layer l's host copy back to the device
   (nothing to do for a cache in host memory). */
static void kvl_write_cells(kvec_llama *kl, int64_t l, int64_t from, int64_t n) {
    struct ggml_tensor *k = kl->k[l], *v = kl->v[l];
    const kvec_llama_cells *c = &kl->cells[l];
    const int64_t width = kl->n_kv_heads * kl->head_dim, kv_size = k->ne[1], ev = (int64_t)ggml_type_size(v->type);
    int64_t i;
    if (!kvl_in_copy(c) || n <= 0) return;
    ggml_backend_tensor_set(k, c->k + (from - c->first) * c->k_cell, (size_t)from * k->nb[1], (size_t)(n * c->k_cell));
    if (!kl->v_trans) {
        ggml_backend_tensor_set(v, c->v + (from - c->first) * c->v_cell, (size_t)from * v->nb[1], (size_t)(n * c->v_cell));
        return;
    }
    for (i = 0; i < width; i++)
        ggml_backend_tensor_set(v, c->v + i * c->v_elem + (from - c->first) * ev, (size_t)((i * kv_size + from) * ev),
                                (size_t)(n * ev));
}

int kvec_llama_views(kvec_llama *kl, kvec_layer *layers) {
    int64_t l, c0 = kl->cell_of_pos[0], N = kl->n_prefix, D = kl->head_dim;
    for (l = 0; l < kl->n_layers; l++) {
        const kvec_llama_cells *c = &kl->cells[l];
        kvec_layer *L = &layers[l];
        if (kvl_read_cells(kl, l, c0, N)) return -1;
        memset(L, 0, sizeof *L);
        kvl_dtype(kl->k[l]->type, &L->keys.dtype);
        kvl_dtype(kl->v[l]->type, &L->values.dtype);
        L->keys.data = c->k;
        L->keys.n_tokens = N; L->keys.n_heads = kl->n_kv_heads; L->keys.head_dim = D;
        L->keys.stride_token = c->k_cell; L->keys.stride_head = D * c->k_elem; L->keys.stride_dim = c->k_elem;
        L->values.data = c->v;
        L->values.n_tokens = N; L->values.n_heads = kl->n_kv_heads; L->values.head_dim = D;
        L->values.stride_token = c->v_cell; L->values.stride_head = D * c->v_elem; L->values.stride_dim = c->v_elem;
        L->queries = kvec_tensor_contiguous(kl->queries + l * kl->window * kl->n_heads * D, KVEC_DTYPE_F32,
                                            kl->window, kl->n_heads, D);
    }
    return 0;
}

/* The learned scores as the masses kvec_select takes ([L][Hk][N],
   kvec_learned_masses; the first 4 positions always kept, no chat header
   told apart). With K-VEC, its uniqueness term over them
   (kvec_coverage_scores) per layer. */
static int kvl_learned_masses(kvec_llama *kl, const kvec_config *cfg, const kvec_layer *layers, float *masses) {
    const int64_t L = kl->n_layers, Hk = kl->n_kv_heads, N = kl->n_prefix;
    int64_t l, i;
    size_t bytes = 0;
    void *scratch;
    kvec_result r;
    for (l = 0; l < L; l++)
        if (kl->learned_seen[l] != N)
            return kvl_fail(kl, "layer %lld: %lld of %lld positions got learned scores (was the prefill decoded "
                                "after kvec_llama_set_scorers and kvec_llama_begin?)",
                            (long long)l, (long long)kl->learned_seen[l], (long long)N);
    for (i = 0; i < L * Hk; i++)
        if ((r = kvec_learned_masses(kl->scorers[0].output, kl->learned + i * N, N, 4, 0, masses + i * N)) != KVEC_OK)
            return kvl_fail(kl, "kvec: learned scores: %s", kvec_result_string(r));
    if (cfg->policy != KVEC_POLICY_KVEC) return 0;
    for (l = 0; l < L; l++) {
        size_t b;
        if ((r = kvec_coverage_scores_scratch_bytes(cfg, &layers[l], &b)) != KVEC_OK)
            return kvl_fail(kl, "kvec: %s", kvec_result_string(r));
        if (b > bytes) bytes = b;
    }
    if (!(scratch = malloc(bytes ? bytes : 1))) return kvl_fail(kl, "out of memory");
    for (l = 0; l < L; l++)
        if ((r = kvec_coverage_scores(cfg, &layers[l], masses + l * Hk * N, scratch, bytes)) != KVEC_OK) {
            free(scratch);
            return kvl_fail(kl, "kvec, layer %lld: %s", (long long)l, kvec_result_string(r));
        }
    free(scratch);
    return 0;
}

/* Scores and selects over layers[] (views of the prefix cells); with read,
   the views are made here, after the refusals. With learned, by the
   learned scores (kvl_learned_masses) instead of the policy's own. */
static int kvl_plan(kvec_llama *kl, const kvec_config *config, int64_t budget, kvec_plan *plan,
                    kvec_layer *layers, int read, int learned) {
    kvec_config resolved, cfg;
    kvec_coverage coverage;
    size_t score_bytes = 0, select_bytes, b;
    void *scratch = NULL, *select_scratch = NULL;
    uint8_t *coverage_memory = NULL;
    float *scores = NULL;
    int64_t l, N = kl->n_prefix, layer_budget;
    kvec_result r;
    int rc = -1, global;
    if (config) cfg = *config; else memset(&cfg, 0, sizeof cfg);
    if (!cfg.window) cfg.window = kl->window;
    if ((r = kvec_resolve_config(&cfg, &resolved)) != KVEC_OK) return kvl_fail(kl, "kvec config: %s", kvec_result_string(r));
    if (resolved.window != kl->window)
        return kvl_fail(kl, "config.window %lld, but %lld query rows were captured",
                        (long long)resolved.window, (long long)kl->window);
#ifndef KVEC_LLAMA_PER_HEAD
    if (resolved.budget_mode != KVEC_BUDGET_UNIFORM)
        return kvl_fail(kl, "%s budgets give heads different lengths: stock llama.cpp attends every head over the same cells "
                            "(build against llama.cpp with examples/llama.cpp/kvec-per-head.patch, see docs/LLAMA_CPP.md)",
                        resolved.budget_mode == KVEC_BUDGET_PYRAMID ? "pyramid" :
                        resolved.budget_mode == KVEC_BUDGET_ADAPTIVE ? "adaptive" : "global");
#endif
    if (learned) {
        if (!kl->scorers || !kl->learned)
            return kvl_fail(kl, "no learned scores: kvec_llama_set_scorers before kvec_llama_begin and the prefill");
        if (resolved.policy == KVEC_POLICY_KVEC && cfg.terms.enabled != 0 && cfg.terms.enabled != KVEC_TERM_UNIQUENESS)
            return kvl_fail(kl, "over learned scores K-VEC has one term, uniqueness: terms.enabled must be 0 or "
                                "KVEC_TERM_UNIQUENESS");
        if (resolved.policy == KVEC_POLICY_KVEC) cfg.terms.enabled = KVEC_TERM_UNIQUENESS;
    } else if (resolved.policy == KVEC_POLICY_CRITICALKV || resolved.policy == KVEC_POLICY_LAPROX)
        return kvl_fail(kl, "%s reads W_o, which llama.cpp holds quantised: not supported here", kvec_policy_name(resolved.policy));
    if (read && kvec_llama_views(kl, layers)) return -1;
    if (learned) { /* one selection over every layer's masses, under any budget mode */
        select_bytes = kvec_select_scratch_bytes(&cfg, kl->n_layers, kl->n_kv_heads, N);
        select_scratch = malloc(select_bytes ? select_bytes : 1);
        scores = (float *)malloc((size_t)(kl->n_layers * kl->n_kv_heads * N) * sizeof *scores);
        if (!select_scratch || !scores) { kvl_fail(kl, "out of memory"); goto done; }
        if (kvl_learned_masses(kl, &cfg, layers, scores)) goto done;
        if ((r = kvec_select(&cfg, scores, kl->n_layers, kl->n_kv_heads, N, budget, plan, select_scratch,
                             select_bytes)) != KVEC_OK) {
            kvl_fail(kl, "kvec: %s", kvec_result_string(r));
            goto done;
        }
        rc = 0;
        goto done;
    }
    for (l = 0; l < kl->n_layers; l++) {
        if ((r = kvec_layer_scratch_bytes(&cfg, &layers[l], &b)) != KVEC_OK) { kvl_fail(kl, "kvec: %s", kvec_result_string(r)); goto done; }
        if (b > score_bytes) score_bytes = b;
    }
    /* a global budget selects once over every layer's scores: [L][Hk][N] */
    global = resolved.budget_mode == KVEC_BUDGET_GLOBAL && budget < N;
    select_bytes = kvec_select_scratch_bytes(&cfg, global ? kl->n_layers : 1, kl->n_kv_heads, N);
    scratch = malloc(score_bytes ? score_bytes : 1);
    select_scratch = malloc(select_bytes ? select_bytes : 1);
    coverage_memory = (uint8_t *)malloc((size_t)N);
    scores = (float *)malloc((size_t)((global ? kl->n_layers : 1) * kl->n_kv_heads * N) * sizeof *scores);
    if (!scratch || !select_scratch || !coverage_memory || !scores) { kvl_fail(kl, "out of memory"); goto done; }
    if (global) {
        for (l = 0; l < kl->n_layers; l++)
            if ((r = kvec_score_layer(&cfg, &layers[l], l, budget, NULL, scores + l * kl->n_kv_heads * N,
                                      scratch, score_bytes)) != KVEC_OK) {
                kvl_fail(kl, "kvec, layer %lld: %s", (long long)l, kvec_result_string(r));
                goto done;
            }
        if ((r = kvec_select(&cfg, scores, kl->n_layers, kl->n_kv_heads, N, budget, plan,
                             select_scratch, select_bytes)) != KVEC_OK) {
            kvl_fail(kl, "kvec: %s", kvec_result_string(r));
            goto done;
        }
        rc = 0;
        goto done;
    }
    /* the coverage is needed only by K-VEC's cross-layer term, and costs one byte per token */
    if ((r = kvec_coverage_init(&coverage, coverage_memory, (size_t)N, N)) != KVEC_OK) { kvl_fail(kl, "kvec: %s", kvec_result_string(r)); goto done; }
    for (l = 0; l < kl->n_layers; l++) {
        if ((r = kvec_layer_budget(&cfg, budget, l, kl->n_layers, N, &layer_budget)) != KVEC_OK ||
            (r = kvec_score_layer(&cfg, &layers[l], l, layer_budget, &coverage, scores, scratch, score_bytes)) != KVEC_OK ||
            (r = kvec_select_layer(&cfg, scores, kl->n_kv_heads, N, layer_budget, l, &coverage, plan,
                                   select_scratch, select_bytes)) != KVEC_OK) {
            kvl_fail(kl, "kvec, layer %lld: %s", (long long)l, kvec_result_string(r));
            goto done;
        }
    }
    rc = 0;
done:
    free(scratch);
    free(select_scratch);
    free(coverage_memory);
    free(scores);
    return rc;
}

int kvec_llama_plan(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config,
                    int64_t budget, kvec_plan *plan) {
    kvec_layer *layers = (kvec_layer *)calloc((size_t)kl->n_layers, sizeof *layers);
    int rc;
    (void)ctx;
    if (!layers) return kvl_fail(kl, "out of memory");
    rc = kvl_plan(kl, config, budget, plan, layers, 1, 0);
    free(layers);
    kvl_free_copies(kl);
    return rc;
}

/* Element (token, head, 0..D-1) of a view, moved from one token to another. */
static void kvl_move(const kvec_tensor *t, int64_t head, int64_t from, int64_t to, int64_t esz) {
    char *src = (char *)t->data + from * t->stride_token + head * t->stride_head;
    char *dst = (char *)t->data + to * t->stride_token + head * t->stride_head;
    int64_t d;
    if (t->stride_dim == esz) { memcpy(dst, src, (size_t)(t->head_dim * esz)); return; }
    for (d = 0; d < t->head_dim; d++) memcpy(dst + d * t->stride_dim, src + d * t->stride_dim, (size_t)esz);
}

/* ---- the kept rows moved inside a device buffer ---- */

/* The backend that runs graphs on one device, initialised once per eviction. */
typedef struct kvl_device {
    ggml_backend_dev_t dev;
    ggml_backend_t backend;
    ggml_gallocr_t alloc;
} kvl_device;

static void kvl_device_free(kvl_device *d) {
    if (d->alloc) ggml_gallocr_free(d->alloc);
    if (d->backend) ggml_backend_free(d->backend);
    memset(d, 0, sizeof *d);
}

/* Head j's plan applied to one cache tensor of layer l, as graph nodes:
   GET_ROWS of the kept cells from a view of the prefix cells, SET_ROWS of
   them into the last cells. A transposed V ([Hk*D][cells]) is gathered from
   a contiguous transpose of the head's prefix cells and copied back. */
static struct ggml_tensor *kvl_move_nodes(struct ggml_context *ctx, struct ggml_tensor *cache, int trans,
                                          int64_t c0, int64_t N, int64_t j, int64_t D, struct ggml_tensor *from,
                                          struct ggml_tensor *to) {
    const size_t esz = ggml_type_size(cache->type);
    const int64_t kv_size = cache->ne[1];
    struct ggml_tensor *cells, *rows;
    if (!trans) {
        /* [D][N]: head j's D values of each prefix cell (rows cache->nb[1] apart) */
        cells = ggml_view_2d(ctx, cache, D, N, cache->nb[1], (size_t)c0 * cache->nb[1] + (size_t)(j * D) * esz);
        rows = ggml_get_rows(ctx, cells, from);
        return ggml_set_rows(ctx, cells, rows, to);
    }
    /* [N][D] view (cells contiguous, dims kv_size apart), made [D][N] contiguous */
    cells = ggml_view_2d(ctx, cache, N, D, (size_t)kv_size * esz, ((size_t)(j * D) * (size_t)kv_size + (size_t)c0) * esz);
    rows = ggml_cont(ctx, ggml_transpose(ctx, cells));
    rows = ggml_set_rows(ctx, rows, ggml_get_rows(ctx, rows, from), to);
    /* back to [N][D] contiguous before the copy into the strided view: the
       pinned CUDA backend's copy of a transposed source ignores the
       destination's strides (ggml issue 1497) */
    return ggml_cpy(ctx, ggml_cont(ctx, ggml_transpose(ctx, rows)), cells);
}

/* Layer l's plan applied inside its device buffer: one graph, run on the
   buffer's device, holding every head's moves of K and V; only the indices
   cross the bus. Returns 0 when moved, 1 when the device cannot run the
   graph (nothing changed: the caller moves the rows on the host), -1 when
   the graph failed to run. */
static int kvl_move_on_device(kvec_llama *kl, int64_t l, const kvec_plan *plan, kvl_device *device) {
    struct ggml_tensor *k = kl->k[l], *v = kl->v[l];
    const int64_t N = kl->n_prefix, c0 = kl->cell_of_pos[0], Hk = kl->n_kv_heads, D = kl->head_dim;
    const size_t graph_size = (size_t)(24 * Hk + 16);
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(ggml_backend_buffer_get_type(k->buffer));
    struct ggml_init_params params;
    struct ggml_context *ctx;
    struct ggml_cgraph *graph;
    struct ggml_tensor **from, **to;
    int32_t *from_cells = NULL;
    int64_t *to_cells = NULL, j, r, i;
    int rc = 1;
    if (!dev || ggml_backend_buft_get_device(ggml_backend_buffer_get_type(v->buffer)) != dev) return 1;
    if (device->dev != dev) {
        kvl_device_free(device);
        device->dev = dev;
        if (!(device->backend = ggml_backend_dev_init(dev, NULL)) ||
            !(device->alloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(device->backend)))) {
            kvl_device_free(device);
            return 1;
        }
    }
    params.mem_size = ggml_tensor_overhead() * graph_size + ggml_graph_overhead_custom(graph_size, false);
    params.mem_buffer = NULL;
    params.no_alloc = true;
    if (!(ctx = ggml_init(params))) return 1;
    graph = ggml_new_graph_custom(ctx, graph_size, false);
    from = (struct ggml_tensor **)calloc((size_t)Hk, sizeof *from);
    to = (struct ggml_tensor **)calloc((size_t)Hk, sizeof *to);
    from_cells = (int32_t *)malloc((size_t)plan->capacity * sizeof *from_cells);
    to_cells = (int64_t *)malloc((size_t)plan->capacity * sizeof *to_cells);
    if (!from || !to || !from_cells || !to_cells) goto done;
    for (j = 0; j < Hk; j++) {
        const int64_t c = plan->kept_count[l * Hk + j];
        /* the indices, relative to the prefix's first cell */
        from[j] = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, c);
        to[j] = ggml_new_tensor_1d(ctx, GGML_TYPE_I64, c);
        ggml_set_input(from[j]);
        ggml_set_input(to[j]);
        ggml_build_forward_expand(graph, kvl_move_nodes(ctx, k, 0, c0, N, j, D, from[j], to[j]));
        ggml_build_forward_expand(graph, kvl_move_nodes(ctx, v, kl->v_trans, c0, N, j, D, from[j], to[j]));
    }
    for (i = 0; i < ggml_graph_n_nodes(graph); i++)
        if (!ggml_backend_supports_op(device->backend, ggml_graph_node(graph, i))) goto done;
    if (!ggml_gallocr_alloc_graph(device->alloc, graph)) goto done;
    for (j = 0; j < Hk; j++) {
        const int64_t *kept = plan->kept_positions + (l * Hk + j) * plan->capacity;
        const int64_t c = plan->kept_count[l * Hk + j];
        for (r = 0; r < c; r++) {
            from_cells[r] = (int32_t)kept[r];
            to_cells[r] = N - c + r;
        }
        ggml_backend_tensor_set(from[j], from_cells, 0, (size_t)c * sizeof *from_cells);
        ggml_backend_tensor_set(to[j], to_cells, 0, (size_t)c * sizeof *to_cells);
    }
    rc = ggml_backend_graph_compute(device->backend, graph) == GGML_STATUS_SUCCESS ? 0 : -1;
    if (rc < 0) kvl_fail(kl, "layer %lld: the graph that moves the kept rows on %s failed", (long long)l,
                         ggml_backend_dev_name(dev));
done:
    free(from);
    free(to);
    free(from_cells);
    free(to_cells);
    ggml_free(ctx);
    return rc;
}

/* Applies a plan to layers[] (views of the prefix cells; with read, made
   here after the refusals, before anything changes). */
static int kvl_apply(kvec_llama *kl, struct llama_context *ctx, const kvec_plan *plan, kvec_layer *layers, int read) {
    int64_t N = kl->n_prefix, Hk = kl->n_kv_heads, B = 0, l, j, r;
    int uniform = 1;
    kvl_device device;
    memset(&device, 0, sizeof device);
    kl->moved_on_device = 0;
    if (kl->n_layers <= 0 || !plan->kept_count || !plan->kept_positions || plan->n_layers != kl->n_layers ||
        plan->n_kv_heads != Hk)
        return kvl_fail(kl, "an empty plan, or one for other head counts");
    /* B: the longest head; every head's count must be a valid length, its
       positions ascending prefix positions (the moves below rely on it) */
    for (l = 0; l < kl->n_layers; l++)
        for (j = 0; j < Hk; j++) {
            const int64_t *kept = plan->kept_positions + (l * Hk + j) * plan->capacity;
            int64_t c = plan->kept_count[l * Hk + j];
            if (c <= 0 || c > N || c > plan->capacity)
                return kvl_fail(kl, "layer %lld head %lld: plan keeps %lld of %lld", (long long)l, (long long)j,
                                (long long)c, (long long)N);
            for (r = 0; r < c; r++)
                if (kept[r] < (r ? kept[r - 1] + 1 : 0) || kept[r] >= N)
                    return kvl_fail(kl, "layer %lld head %lld: the plan's positions are not ascending positions of the prefix",
                                    (long long)l, (long long)j);
            if (c > B) B = c;
            if (c != plan->kept_count[0]) uniform = 0;
        }
#ifndef KVEC_LLAMA_PER_HEAD
    if (!uniform)
        return kvl_fail(kl, "the plan gives heads different lengths: stock llama.cpp needs uniform plans "
                            "(examples/llama.cpp/kvec-per-head.patch adds per-head lengths)");
#endif
    if (read && !(B == N && uniform) && kvec_llama_views(kl, layers)) return -1;
#ifdef KVEC_LLAMA_PER_HEAD
    {
        /* a head keeping c < B will see positions N-c .. only (the cells of
           N-B .. N-c-1 will hold other heads' rows); a uniform plan lifts
           every limit. Set first: a refusal leaves the cache untouched. */
        llama_pos *pos_min = NULL;
        int32_t set;
        if (!uniform) {
            if (!(pos_min = (llama_pos *)malloc((size_t)(kl->n_layers * Hk) * sizeof *pos_min)))
                return kvl_fail(kl, "out of memory");
            for (j = 0; j < kl->n_layers * Hk; j++) pos_min[j] = (llama_pos)(N - plan->kept_count[j]);
        }
        set = llama_memory_set_head_pos_min(llama_get_memory(ctx), pos_min, (int32_t)(kl->n_layers * Hk));
        free(pos_min);
        if (set != 0) return kvl_fail(kl, "llama_memory_set_head_pos_min refused the head limits (%d)", (int)set);
        kl->head_limits = !uniform;
    }
#endif
    if (B == N && uniform) return 0;
    llama_synchronize(ctx); /* the context's last compute is done before another backend touches the cache */
    /* kvec_compact would pack each head at the front; llama.cpp needs the
       kept rows at the tail (positions N-c .. N-1 for a head keeping c), so
       the plan is applied straight there. Row r goes to N-c+r >= its source
       p_r; in descending r no source is overwritten before it is read
       (p_r' <= N-c+r' < N-c+r for r' < r). */
    for (l = 0; l < kl->n_layers; l++) {
        kvec_layer *L = &layers[l];
        int64_t ek = (int64_t)ggml_type_size(kl->k[l]->type), ev = (int64_t)ggml_type_size(kl->v[l]->type);
        /* a cache in device memory: moved there, when its device runs the graph */
        if (kvl_in_copy(&kl->cells[l])) {
            const int moved = kvl_move_on_device(kl, l, plan, &device);
            if (moved < 0) { kvl_device_free(&device); return -1; }
            if (moved == 0) { kl->moved_on_device++; continue; }
        }
        for (j = 0; j < Hk; j++) {
            const int64_t *kept = plan->kept_positions + (l * Hk + j) * plan->capacity;
            const int64_t c = plan->kept_count[l * Hk + j];
            for (r = c - 1; r >= 0; r--) {
                if (kept[r] == N - c + r) continue;
                kvl_move(&L->keys, j, kept[r], N - c + r, ek);
                kvl_move(&L->values, j, kept[r], N - c + r, ev);
            }
        }
        /* a cache in device memory whose device cannot run the graph gets back the cells that changed */
        kvl_write_cells(kl, l, kl->cell_of_pos[0] + N - B, B);
    }
    kvl_device_free(&device);
    if (B < N && !llama_memory_seq_rm(llama_get_memory(ctx), 0, 0, (llama_pos)(N - B)))
        return kvl_fail(kl, "llama_memory_seq_rm refused to remove positions 0..%lld", (long long)(N - B - 1));
    return 0;
}

int kvec_llama_apply(kvec_llama *kl, struct llama_context *ctx, const kvec_plan *plan) {
    kvec_layer *layers = (kvec_layer *)calloc((size_t)kl->n_layers, sizeof *layers);
    int rc;
    if (!layers) return kvl_fail(kl, "out of memory");
    rc = kvl_apply(kl, ctx, plan, layers, 1);
    free(layers);
    kvl_free_copies(kl);
    return rc;
}

static int kvl_evict(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config, int64_t budget,
                     kvec_llama_stats *stats, int learned) {
    kvec_plan plan;
    kvec_layer *layers;
    int64_t N = kl->n_prefix, cap = budget < N ? budget : N, h;
    double t0 = kvl_ms(), t1;
    int rc;
    if (kvec_llama_check(kl, ctx)) return -1;
    /* adaptive and global budgets may give one head more than the average */
    if (kvec_plan_capacity(config, budget, kl->n_layers, N, &cap) != KVEC_OK || cap > N) cap = N;
    plan.n_layers = kl->n_layers;
    plan.n_kv_heads = kl->n_kv_heads;
    plan.capacity = cap;
    plan.kept_count = (int64_t *)malloc((size_t)(kl->n_layers * kl->n_kv_heads) * sizeof(int64_t));
    plan.kept_positions = (int64_t *)malloc((size_t)(kl->n_layers * kl->n_kv_heads * cap) * sizeof(int64_t));
    layers = (kvec_layer *)calloc((size_t)kl->n_layers, sizeof *layers);
    if (!plan.kept_count || !plan.kept_positions || !layers) {
        free(plan.kept_count); free(plan.kept_positions); free(layers);
        return kvl_fail(kl, "out of memory");
    }
    /* one read of a device cache serves the plan and the moves */
    rc = kvl_plan(kl, config, budget, &plan, layers, 1, learned);
    t1 = kvl_ms();
    if (rc == 0) rc = kvl_apply(kl, ctx, &plan, layers, 0);
    if (stats) {
        stats->plan_ms = t1 - t0;
        stats->move_ms = kvl_ms() - t1;
        stats->kept = stats->kept_max = N;
        if (rc == 0) {
            int64_t sum = 0;
            stats->kept_max = 0;
            for (h = 0; h < kl->n_layers * kl->n_kv_heads; h++) {
                sum += plan.kept_count[h];
                if (plan.kept_count[h] > stats->kept_max) stats->kept_max = plan.kept_count[h];
            }
            stats->kept = (sum + kl->n_layers * kl->n_kv_heads / 2) / (kl->n_layers * kl->n_kv_heads);
        }
    }
    free(plan.kept_count);
    free(plan.kept_positions);
    free(layers);
    kvl_free_copies(kl);
    return rc;
}

int kvec_llama_evict(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config, int64_t budget,
                     kvec_llama_stats *stats) {
    return kvl_evict(kl, ctx, config, budget, stats, 0);
}

int kvec_llama_evict_learned(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config, int64_t budget,
                             kvec_llama_stats *stats) {
    return kvl_evict(kl, ctx, config, budget, stats, 1);
}

int kvec_llama_keep_positions(kvec_llama *kl, struct llama_context *ctx, const uint8_t *keep) {
    llama_memory_t mem = llama_get_memory(ctx);
    int64_t N = kl->n_prefix, p = 0, q;
    if (!keep[N - 1]) return kvl_fail(kl, "the last prefix position must be kept (decoding goes on after it)");
    while (p < N) {
        if (keep[p]) { p++; continue; }
        for (q = p; q < N && !keep[q]; q++) {}
        if (!llama_memory_seq_rm(mem, 0, (llama_pos)p, (llama_pos)q))
            return kvl_fail(kl, "llama_memory_seq_rm refused positions %lld..%lld", (long long)p, (long long)q - 1);
        p = q;
    }
    return 0;
}

void kvec_llama_vote(const kvec_plan *plan, int64_t n_prefix, int64_t budget, int64_t window,
                     uint8_t *keep) {
    int64_t heads = plan->n_layers * plan->n_kv_heads, h, r, p, kept = 0, votes;
    int64_t *count = (int64_t *)calloc((size_t)n_prefix, sizeof *count);
    memset(keep, 0, (size_t)n_prefix);
    if (!count) { /* no memory: keep the most recent, still a valid set */
        for (p = n_prefix - budget; p < n_prefix; p++) keep[p] = 1;
        return;
    }
    for (h = 0; h < heads; h++)
        for (r = 0; r < plan->kept_count[h]; r++) count[plan->kept_positions[h * plan->capacity + r]]++;
    for (p = n_prefix - window; p < n_prefix; p++) { keep[p] = 1; kept++; }
    /* highest count first; within a count, later positions first */
    for (votes = heads; votes > 0 && kept < budget; votes--)
        for (p = n_prefix - window - 1; p >= 0 && kept < budget; p--)
            if (count[p] == votes) { keep[p] = 1; kept++; }
    free(count);
}

/* ---- eviction during decoding ---- */

int kvec_llama_continue(kvec_llama *kl, int64_t p_end) {
    int64_t p, *grown;
    if (!kl->cell_of_pos) return kvl_fail(kl, "kvec_llama_continue follows a kvec_llama_begin and its eviction");
    if (p_end - kl->window < kl->n_prefix)
        return kvl_fail(kl, "the next eviction at %lld needs the %lld queries before it decoded after this call (from %lld on)",
                        (long long)p_end, (long long)kl->window, (long long)kl->n_prefix);
    if (!(grown = (int64_t *)realloc(kl->cell_of_pos, (size_t)p_end * sizeof *grown))) return kvl_fail(kl, "out of memory");
    kl->cell_of_pos = grown;
    for (p = kl->n_prefix; p < p_end; p++) kl->cell_of_pos[p] = -1;
    /* learned scores belong to the prefill kvec_llama_begin armed (the
       re-eviction scores by the policy): not captured from here on */
    free(kl->learned);
    kl->learned = NULL;
    memset(kl->rows_seen, 0, (size_t)kl->n_layers * sizeof *kl->rows_seen);
    memset(kl->queries, 0, (size_t)(kl->n_layers * kl->window * kl->n_heads * kl->head_dim) * sizeof *kl->queries);
    kl->n_prefix = p_end;
    kl->n_ubatch_pos = 0;
    kl->error[0] = '\0';
    kl->armed = 1;
    return 0;
}

/* Head j's D elements of a cell, between layer cells (kvl_read_cells) and a
   row of a contiguous [n][Hk*D] buffer of the same element type (esz bytes).
   to_cache: buffer -> cells, else cells -> buffer. */
static void kvl_copy_head(const kvec_llama_cells *c, int is_v, int64_t cell, int64_t head, int64_t D, int64_t esz,
                          char *row, int to_cache) {
    const int64_t cell_bytes = is_v ? c->v_cell : c->k_cell, elem_bytes = is_v ? c->v_elem : c->k_elem;
    char *at = (is_v ? c->v : c->k) + (cell - c->first) * cell_bytes + head * D * elem_bytes, *buf = row + head * D * esz;
    int64_t d;
    if (elem_bytes == esz) {
        if (to_cache) memcpy(at, buf, (size_t)(D * esz)); else memcpy(buf, at, (size_t)(D * esz));
        return;
    }
    for (d = 0; d < D; d++) {
        if (to_cache) memcpy(at + d * elem_bytes, buf + d * esz, (size_t)esz);
        else memcpy(buf + d * esz, at + d * elem_bytes, (size_t)esz);
    }
}

/* The lowest and highest cell of positions [from, to) (no longer in
   position order once decoding refills the cells freed at the front). */
static void kvl_cell_range(const kvec_llama *kl, int64_t from, int64_t to, int64_t *lo, int64_t *hi) {
    int64_t p;
    *lo = *hi = kl->cell_of_pos[from];
    for (p = from; p < to; p++) {
        if (kl->cell_of_pos[p] < *lo) *lo = kl->cell_of_pos[p];
        if (kl->cell_of_pos[p] > *hi) *hi = kl->cell_of_pos[p];
    }
}

int kvec_llama_reevict(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config, int64_t budget,
                       kvec_llama_stats *stats) {
    llama_memory_t mem = llama_get_memory(ctx);
    int64_t N = kl->n_prefix, P0, n, B, l, j, r, p, i, Hk = kl->n_kv_heads, D = kl->head_dim, width = Hk * D, esz;
    int64_t cell_lo, cell_hi, dest_lo, dest_hi;
    kvec_config resolved, cfg;
    kvec_coverage coverage;
    kvec_plan plan;
    kvec_layer layer;
    kvec_result res;
    size_t score_bytes = 0, select_bytes, row_bytes, b;
    void *scratch = NULL, *select_scratch = NULL;
    uint8_t *coverage_memory = NULL;
    float *scores = NULL;
    char *keys = NULL, *values = NULL;
    double t0 = kvl_ms();
    int rc = -1;
    memset(&plan, 0, sizeof plan);
    if (stats) memset(stats, 0, sizeof *stats);
    P0 = mem ? llama_memory_seq_pos_min(mem, 0) : -1;
    if (kvl_check_common(kl, ctx, P0 < 0 ? 0 : P0)) return -1;
    if (kl->head_limits)
        return kvl_fail(kl, "the heads have different lengths (an earlier pyramid, adaptive or global eviction): "
                            "re-evicting them is not supported");
    n = N - P0;
    for (p = P0; p < N; p++)
        if (kl->cell_of_pos[p] < 0)
            return kvl_fail(kl, "the cell of position %lld is unknown: decode every position after kvec_llama_continue", (long long)p);
    if (config) cfg = *config; else memset(&cfg, 0, sizeof cfg);
    if (!cfg.window) cfg.window = kl->window;
    if ((res = kvec_resolve_config(&cfg, &resolved)) != KVEC_OK) return kvl_fail(kl, "kvec config: %s", kvec_result_string(res));
    if (resolved.budget_mode != KVEC_BUDGET_UNIFORM)
        return kvl_fail(kl, "eviction during decoding takes uniform budgets only");
    if (resolved.policy == KVEC_POLICY_CRITICALKV || resolved.policy == KVEC_POLICY_LAPROX)
        return kvl_fail(kl, "%s reads W_o, which llama.cpp holds quantised: not supported here", kvec_policy_name(resolved.policy));
    if (budget < kl->window) return kvl_fail(kl, "budget %lld is below the window (%lld)", (long long)budget, (long long)kl->window);
    B = budget < n ? budget : n;
    if (stats) stats->kept = stats->kept_max = B;
    if (B == n) return 0;

    /* one layer at a time: its held rows gathered in position order */
    esz = (int64_t)ggml_type_size(kl->k[0]->type);
    row_bytes = (size_t)(width * esz);
    if (ggml_type_size(kl->v[0]->type) != ggml_type_size(kl->k[0]->type))
        return kvl_fail(kl, "K and V caches of different element types are not supported here");
    memset(&layer, 0, sizeof layer);
    kvl_dtype(kl->k[0]->type, &layer.keys.dtype);
    layer.values.dtype = layer.keys.dtype;
    keys = (char *)malloc((size_t)n * row_bytes);
    values = (char *)malloc((size_t)n * row_bytes);
    layer.keys = kvec_tensor_contiguous(keys, layer.keys.dtype, n, Hk, D);
    layer.values = kvec_tensor_contiguous(values, layer.values.dtype, n, Hk, D);
    layer.queries = kvec_tensor_contiguous(kl->queries, KVEC_DTYPE_F32, kl->window, kl->n_heads, D);
    if ((res = kvec_layer_scratch_bytes(&cfg, &layer, &b)) != KVEC_OK) { kvl_fail(kl, "kvec: %s", kvec_result_string(res)); goto done; }
    score_bytes = b;
    select_bytes = kvec_select_scratch_bytes(&cfg, 1, Hk, n);
    scratch = malloc(score_bytes ? score_bytes : 1);
    select_scratch = malloc(select_bytes ? select_bytes : 1);
    coverage_memory = (uint8_t *)malloc((size_t)n);
    scores = (float *)malloc((size_t)(Hk * n) * sizeof *scores);
    plan.n_layers = kl->n_layers;
    plan.n_kv_heads = Hk;
    plan.capacity = B;
    plan.kept_count = (int64_t *)malloc((size_t)(kl->n_layers * Hk) * sizeof(int64_t));
    plan.kept_positions = (int64_t *)malloc((size_t)(kl->n_layers * Hk * B) * sizeof(int64_t));
    if (!keys || !values || !scratch || !select_scratch || !coverage_memory || !scores || !plan.kept_count ||
        !plan.kept_positions) { kvl_fail(kl, "out of memory"); goto done; }
    if ((res = kvec_coverage_init(&coverage, coverage_memory, (size_t)n, n)) != KVEC_OK) { kvl_fail(kl, "kvec: %s", kvec_result_string(res)); goto done; }
    /* the held cells span lo..hi; the kept rows go to the cells of N-B .. N-1 */
    kvl_cell_range(kl, P0, N, &cell_lo, &cell_hi);
    kvl_cell_range(kl, N - B, N, &dest_lo, &dest_hi);
    /* every layer read before any is rewritten (a device cache's copies) */
    for (l = 0; l < kl->n_layers; l++)
        if (kvl_read_cells(kl, l, cell_lo, cell_hi - cell_lo + 1)) goto done;
    for (l = 0; l < kl->n_layers; l++) {
        const kvec_llama_cells *cells = &kl->cells[l];
        const int64_t *kept;
        for (i = 0; i < n; i++)
            for (j = 0; j < Hk; j++) {
                kvl_copy_head(cells, 0, kl->cell_of_pos[P0 + i], j, D, esz, keys + (size_t)i * row_bytes, 0);
                kvl_copy_head(cells, 1, kl->cell_of_pos[P0 + i], j, D, esz, values + (size_t)i * row_bytes, 0);
            }
        layer.queries = kvec_tensor_contiguous(kl->queries + l * kl->window * kl->n_heads * D, KVEC_DTYPE_F32,
                                               kl->window, kl->n_heads, D);
        if ((res = kvec_score_layer(&cfg, &layer, l, B, &coverage, scores, scratch, score_bytes)) != KVEC_OK ||
            (res = kvec_select_layer(&cfg, scores, Hk, n, B, l, &coverage, &plan, select_scratch, select_bytes)) != KVEC_OK) {
            /* only a non-finite row can fail here, after the checks above;
               the layers before l are rewritten already */
            kvl_fail(kl, "kvec, layer %lld: %s (layers 0..%lld are rewritten: clear the cache)", (long long)l,
                     kvec_result_string(res), (long long)l - 1);
            goto done;
        }
        /* head j's r-th kept row goes into the cell of position N-B+r: the
           gathered copy is the source, so no row is overwritten before read */
        for (j = 0; j < Hk; j++) {
            kept = plan.kept_positions + (l * Hk + j) * B;
            for (r = 0; r < B; r++) {
                int64_t cell = kl->cell_of_pos[N - B + r];
                if (kept[r] == n - B + r) continue;
                kvl_copy_head(cells, 0, cell, j, D, esz, keys + (size_t)kept[r] * row_bytes, 1);
                kvl_copy_head(cells, 1, cell, j, D, esz, values + (size_t)kept[r] * row_bytes, 1);
            }
        }
        kvl_write_cells(kl, l, dest_lo, dest_hi - dest_lo + 1);
    }
    if (!llama_memory_seq_rm(mem, 0, (llama_pos)P0, (llama_pos)(N - B))) {
        kvl_fail(kl, "llama_memory_seq_rm refused to remove positions %lld..%lld", (long long)P0, (long long)(N - B - 1));
        goto done;
    }
    rc = 0;
done:
    if (stats) stats->plan_ms = kvl_ms() - t0;
    kvl_free_copies(kl);
    free(keys);
    free(values);
    free(scratch);
    free(select_scratch);
    free(coverage_memory);
    free(scores);
    free(plan.kept_count);
    free(plan.kept_positions);
    return rc;
}
