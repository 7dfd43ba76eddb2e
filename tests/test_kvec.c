/* test_kvec.c - kvec's test runner. Every test names the property it checks
   and compares kvec against a naive double-precision reference written
   straight from docs/SEMANTICS.md (explicit softmax rows, sorting instead of
   radix select, explicit gathers). Ends with "N passed, M failed". */
#define KVEC_IMPLEMENTATION
#include "../kvec.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(_OPENMP) && !defined(KVEC_NO_OPENMP)
#include <omp.h>
#define TEST_THREADS 1
#endif

static int g_passed, g_failed, g_quiet;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) g_passed++;                                                   \
        else {                                                                  \
            g_failed++;                                                         \
            printf("FAIL %s:%d %s: ", __FILE__, __LINE__, __func__);            \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

/* ---- random numbers ------------------------------------------------------ */

static uint64_t g_rng = 1;
static double uniform(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
static double normal(void) {
    double u = uniform() + 1e-12, v = uniform();
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* ---- test caches ---------------------------------------------------------- */

/* Logical values are kept in double arrays ([N][Hk][D] for K and V,
   [Wq][H][D] for Q); the kvec views are built over byte buffers in a chosen
   dtype and layout, holding the same numbers rounded to that dtype. */
enum layout { TOK_HEAD_DIM, HEAD_TOK_DIM, PADDED, TRANSPOSED_V };

enum { TEST_WIDTH = 24 }; /* E, the model width of the output projection */

typedef struct test_layer {
    int64_t N, Hk, H, D, Wq;
    double *k, *v, *q, *o;            /* logical values; o is W_o [E][H][D] */
    unsigned char *kb, *vb, *qb, *ob; /* storage */
    size_t kbytes, vbytes, qbytes, obytes;
    kvec_layer view;
} test_layer;

static size_t elem_size(kvec_dtype t) { return t == KVEC_DTYPE_F32 ? 4 : 2; }

static void store(unsigned char *p, kvec_dtype t, double x) {
    if (t == KVEC_DTYPE_F32) { float f = (float)x; memcpy(p, &f, 4); }
    else { uint16_t h = t == KVEC_DTYPE_F16 ? kvec_f32_to_f16((float)x) : kvec_f32_to_bf16((float)x); memcpy(p, &h, 2); }
}
static double fetch(const unsigned char *p, kvec_dtype t) {
    if (t == KVEC_DTYPE_F32) { float f; memcpy(&f, p, 4); return f; }
    { uint16_t h; memcpy(&h, p, 2); return t == KVEC_DTYPE_F16 ? kvec_f16_to_f32(h) : kvec_bf16_to_f32(h); }
}

/* A view of n_tok x n_head x dim elements in the given layout. */
static kvec_tensor make_view(unsigned char **buffer, size_t *bytes, kvec_dtype t, enum layout layout,
                             int is_values, int64_t n_tok, int64_t n_head, int64_t dim) {
    kvec_tensor v;
    const int64_t e = (int64_t)elem_size(t);
    v.dtype = t; v.n_tokens = n_tok; v.n_heads = n_head; v.head_dim = dim;
    switch (layout) {
    case HEAD_TOK_DIM:
        v.stride_dim = e; v.stride_token = dim * e; v.stride_head = n_tok * dim * e;
        break;
    case PADDED: /* 3 spare elements after each row, 8 after each token */
        v.stride_dim = e; v.stride_head = (dim + 3) * e; v.stride_token = n_head * (dim + 3) * e + 8 * e;
        break;
    case TRANSPOSED_V: /* values [head][dim][token]; keys stay [token][head][dim] */
        if (is_values) { v.stride_token = e; v.stride_dim = n_tok * e; v.stride_head = dim * n_tok * e; }
        else { v.stride_dim = e; v.stride_head = dim * e; v.stride_token = n_head * dim * e; }
        break;
    case TOK_HEAD_DIM:
    default:
        v.stride_dim = e; v.stride_head = dim * e; v.stride_token = n_head * dim * e;
        break;
    }
    *bytes = (size_t)((n_tok - 1) * v.stride_token + (n_head - 1) * v.stride_head + (dim - 1) * v.stride_dim + e);
    *buffer = (unsigned char *)calloc(*bytes, 1);
    v.data = *buffer;
    return v;
}

static unsigned char *element(const kvec_tensor *v, int64_t t, int64_t h, int64_t d) {
    return (unsigned char *)v->data + t * v->stride_token + h * v->stride_head + d * v->stride_dim;
}

/* Writes the logical values into the storage (rounding to the dtype) and
   reads them back, so the double arrays hold exactly what kvec sees. */
static void sync_tensor(const kvec_tensor *v, double *values) {
    int64_t t, h, d;
    for (t = 0; t < v->n_tokens; t++)
        for (h = 0; h < v->n_heads; h++)
            for (d = 0; d < v->head_dim; d++) {
                double *x = &values[(t * v->n_heads + h) * v->head_dim + d];
                store(element(v, t, h, d), v->dtype, *x);
                *x = fetch(element(v, t, h, d), v->dtype);
            }
}

/* Random values on the bf16 grid (so fp32, fp16 and bf16 hold the same
   numbers), with a few repeated key directions so that uniqueness matters. */
static void fill_values(test_layer *L, double key_scale) {
    int64_t i, n;
    n = L->N * L->Hk * L->D;
    for (i = 0; i < n; i++) {
        L->k[i] = kvec_bf16_to_f32(kvec_f32_to_bf16((float)(normal() * key_scale)));
        L->v[i] = kvec_bf16_to_f32(kvec_f32_to_bf16((float)normal()));
    }
    n = L->Wq * L->H * L->D;
    for (i = 0; i < n; i++) L->q[i] = kvec_bf16_to_f32(kvec_f32_to_bf16((float)normal()));
    n = TEST_WIDTH * L->H * L->D;
    for (i = 0; i < n; i++) L->o[i] = kvec_bf16_to_f32(kvec_f32_to_bf16((float)(normal() * (1 + i % 3))));
}

static void layer_init(test_layer *L, int64_t N, int64_t Hk, int64_t g, int64_t D, int64_t Wq,
                       kvec_dtype t, enum layout layout, uint64_t seed) {
    memset(L, 0, sizeof *L);
    L->N = N; L->Hk = Hk; L->H = Hk * g; L->D = D; L->Wq = Wq;
    L->k = (double *)malloc(sizeof(double) * (size_t)(N * Hk * D));
    L->v = (double *)malloc(sizeof(double) * (size_t)(N * Hk * D));
    L->q = (double *)malloc(sizeof(double) * (size_t)(Wq * L->H * D));
    L->o = (double *)malloc(sizeof(double) * (size_t)(TEST_WIDTH * L->H * D));
    g_rng = seed;
    fill_values(L, 1.0);
    L->view.keys = make_view(&L->kb, &L->kbytes, t, layout, 0, N, Hk, D);
    L->view.values = make_view(&L->vb, &L->vbytes, t, layout, 1, N, Hk, D);
    L->view.queries = make_view(&L->qb, &L->qbytes, KVEC_DTYPE_F32, TOK_HEAD_DIM, 0, Wq, L->H, D);
    sync_tensor(&L->view.keys, L->k);
    sync_tensor(&L->view.values, L->v);
    sync_tensor(&L->view.queries, L->q);
    L->view.out_proj = make_view(&L->ob, &L->obytes, t, TOK_HEAD_DIM, 0, TEST_WIDTH, L->H, D);
    sync_tensor(&L->view.out_proj, L->o);
}

static void layer_free(test_layer *L) {
    free(L->k); free(L->v); free(L->q); free(L->o); free(L->kb); free(L->vb); free(L->qb); free(L->ob);
}

typedef struct test_cache {
    int64_t n_layers;
    test_layer *layers;
    kvec_layer *views;
    kvec_cache cache;
} test_cache;

static void cache_init(test_cache *c, int64_t n_layers, int64_t N, int64_t Hk, int64_t g, int64_t D,
                       int64_t Wq, kvec_dtype t, enum layout layout, uint64_t seed) {
    int64_t l;
    c->n_layers = n_layers;
    c->layers = (test_layer *)calloc((size_t)n_layers, sizeof(test_layer));
    c->views = (kvec_layer *)calloc((size_t)n_layers, sizeof(kvec_layer));
    for (l = 0; l < n_layers; l++) {
        layer_init(&c->layers[l], N, Hk, g, D, Wq, t, layout, seed * 1000 + (uint64_t)l);
        c->views[l] = c->layers[l].view;
    }
    c->cache.layers = c->views;
    c->cache.n_layers = n_layers;
}

static void cache_free(test_cache *c) {
    int64_t l;
    for (l = 0; l < c->n_layers; l++) layer_free(&c->layers[l]);
    free(c->layers); free(c->views);
}

typedef struct test_plan {
    kvec_plan plan;
    int64_t *counts, *positions;
} test_plan;

static void plan_init(test_plan *p, int64_t n_layers, int64_t Hk, int64_t capacity) {
    p->counts = (int64_t *)calloc((size_t)(n_layers * Hk), sizeof(int64_t));
    p->positions = (int64_t *)calloc((size_t)(n_layers * Hk * capacity), sizeof(int64_t));
    p->plan.n_layers = n_layers; p->plan.n_kv_heads = Hk; p->plan.capacity = capacity;
    p->plan.kept_count = p->counts; p->plan.kept_positions = p->positions;
}
static void plan_free(test_plan *p) { free(p->counts); free(p->positions); }

static int plans_equal(const test_plan *a, const test_plan *b) {
    int64_t n = a->plan.n_layers * a->plan.n_kv_heads, h, r;
    for (h = 0; h < n; h++) {
        if (a->counts[h] != b->counts[h]) return 0;
        for (r = 0; r < a->counts[h]; r++)
            if (a->positions[h * a->plan.capacity + r] != b->positions[h * b->plan.capacity + r]) return 0;
    }
    return 1;
}

/* kvec_evict_ex with scratch and a plan of exactly the needed capacity. */
static kvec_result run_evict(const kvec_config *cfg, test_cache *c, int64_t budget, test_plan *p) {
    size_t bytes;
    int64_t capacity;
    void *scratch;
    kvec_result r;
    if ((r = kvec_plan_capacity(cfg, budget, c->n_layers, c->layers[0].N, &capacity)) != KVEC_OK) return r;
    if ((r = kvec_scratch_bytes(cfg, &c->cache, 1, &bytes)) != KVEC_OK) return r;
    plan_init(p, c->n_layers, c->layers[0].Hk, capacity);
    scratch = malloc(bytes);
    r = kvec_evict_ex(cfg, &c->cache, budget, &p->plan, scratch, bytes);
    free(scratch);
    return r;
}

/* ---- naive references ----------------------------------------------------- */

/* I[i] for KV head j using the last `rows` query rows, weight 1/g per head. */
static void naive_importance(const test_layer *L, int64_t j, int64_t rows, int64_t n_out,
                             double weight, double *I) {
    const int64_t g = L->H / L->Hk;
    double *logit = (double *)malloc(sizeof(double) * (size_t)L->N);
    int64_t hh, r, i, d;
    for (i = 0; i < n_out; i++) I[i] = 0.0;
    for (hh = 0; hh < g; hh++)
        for (r = L->Wq - rows; r < L->Wq; r++) {
            const int64_t h = j * g + hh, pos = L->N - L->Wq + r;
            double m = -1e300, z = 0.0;
            for (i = 0; i <= pos; i++) {
                double dot = 0.0;
                for (d = 0; d < L->D; d++)
                    dot += L->q[(r * L->H + h) * L->D + d] * L->k[(i * L->Hk + j) * L->D + d];
                logit[i] = dot / sqrt((double)L->D);
                if (logit[i] > m) m = logit[i];
            }
            for (i = 0; i <= pos; i++) z += exp(logit[i] - m);
            for (i = 0; i <= pos && i < n_out; i++) I[i] += weight * exp(logit[i] - m) / z;
        }
    free(logit);
}

static void naive_pool(const double *x, int64_t n, int64_t kernel, int use_max, double *out) {
    int64_t i, m, half = kernel / 2;
    for (i = 0; i < n; i++) {
        double acc = use_max ? -1e300 : 0.0;
        int64_t cnt = 0;
        for (m = i - half; m <= i + half; m++) {
            if (m < 0 || m >= n) continue;
            acc = use_max ? (x[m] > acc ? x[m] : acc) : acc + x[m];
            cnt++;
        }
        out[i] = use_max ? acc : acc / (double)cnt;
    }
}

static void naive_zscore(double *x, int64_t n) {
    double mean = 0.0, var = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) mean += x[i];
    mean /= (double)n;
    for (i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= (double)n;
    for (i = 0; i < n; i++) x[i] = (x[i] - mean) / (sqrt(var) + 1e-6);
}

static double naive_norm(const double *a, int64_t D) {
    double s = 0.0;
    int64_t d;
    for (d = 0; d < D; d++) s += a[d] * a[d];
    return sqrt(s);
}

/* U[i] = -cos(k_i, kbar), kbar = mean over all N of k/||k||. */
static void naive_uniqueness(const test_layer *L, int64_t j, int64_t n, double *U) {
    double *kbar = (double *)calloc((size_t)L->D, sizeof(double));
    int64_t i, d;
    for (i = 0; i < L->N; i++) {
        const double *k = &L->k[(i * L->Hk + j) * L->D];
        double norm = naive_norm(k, L->D);
        if (norm > 0) for (d = 0; d < L->D; d++) kbar[d] += k[d] / norm / (double)L->N;
    }
    for (i = 0; i < n; i++) {
        const double *k = &L->k[(i * L->Hk + j) * L->D];
        double dot = 0.0, nk = naive_norm(k, L->D), nb = naive_norm(kbar, L->D);
        for (d = 0; d < L->D; d++) dot += k[d] * kbar[d];
        U[i] = nk > 0 && nb > 0 ? -dot / (nk * nb) : 0.0;
    }
    free(kbar);
}

/* mean over the query heads h of KV head j of ||W_o^h v_i||_p, i < n. */
static void naive_output_norm(const test_layer *L, int64_t j, int64_t n, int p, double *out) {
    const int64_t g = L->H / L->Hk;
    int64_t i, hh, o, d;
    for (i = 0; i < n; i++) {
        out[i] = 0.0;
        for (hh = 0; hh < g; hh++) {
            const int64_t h = j * g + hh;
            double norm = 0.0;
            for (o = 0; o < TEST_WIDTH; o++) {
                double y = 0.0;
                for (d = 0; d < L->D; d++) y += L->o[(o * L->H + h) * L->D + d] * L->v[(i * L->Hk + j) * L->D + d];
                norm += p == 1 ? fabs(y) : y * y;
            }
            out[i] += (p == 1 ? norm : sqrt(norm)) / (double)g;
        }
    }
}

/* The budget check_scores scores for (CriticalKV's first stage reads it). */
static int64_t g_score_budget;

static int64_t naive_select(const double *scores, int64_t N, int64_t W, int64_t budget, int64_t *out);

/* Scores of KV head j per SEMANTICS.md (window positions excluded). */
static void naive_scores(const kvec_config *cfg_in, const test_layer *L, int64_t j,
                         const uint8_t *kept_before, double *s) {
    kvec_config c;
    const int64_t W = cfg_in->window ? cfg_in->window : 32, n = L->N - W, g = L->H / L->Hk;
    double *tmp = (double *)malloc(sizeof(double) * (size_t)L->N);
    double *u = (double *)malloc(sizeof(double) * (size_t)L->N);
    int64_t i, jj;
    kvec_resolve_config(cfg_in, &c);
    switch (c.policy) {
    case KVEC_POLICY_SNAPKV: case KVEC_POLICY_PYRAMIDKV: case KVEC_POLICY_KVEC:
        naive_importance(L, j, W, n, 1.0 / (double)g, tmp);
        naive_pool(tmp, n, c.pool_kernel, c.pooling == KVEC_POOL_MAX, s);
        if (c.policy == KVEC_POLICY_KVEC && (c.terms.enabled & KVEC_TERM_HEAD_FOCUS)) {
            double mean = 0, var = 0;
            for (i = 0; i < n; i++) mean += s[i];
            mean /= (double)n;
            for (i = 0; i < n; i++) var += (s[i] - mean) * (s[i] - mean);
            if (mean > 0 && sqrt(var / (double)n) / mean < c.terms.focus_cv) {
                naive_importance(L, j, 4 * W < L->Wq ? 4 * W : L->Wq, n, 1.0 / (double)g, tmp);
                naive_pool(tmp, n, c.pool_kernel, c.pooling == KVEC_POOL_MAX, s);
            }
        }
        if (c.policy == KVEC_POLICY_KVEC && (c.terms.enabled & (KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER))) {
            for (i = 0; i < n; i++) tmp[i] = s[i]; /* pool(I), for the rank union */
            naive_zscore(s, n);
            if (c.terms.enabled & KVEC_TERM_UNIQUENESS) {
                naive_uniqueness(L, j, n, u);
                naive_zscore(u, n);
                for (i = 0; i < n; i++) s[i] += c.terms.mu * u[i];
            }
            if (c.terms.enabled & KVEC_TERM_CROSS_LAYER)
                for (i = 0; i < n; i++) s[i] += kept_before[i] ? 0.0 : c.terms.gamma;
            if (c.terms.enabled & KVEC_TERM_RANK_UNION) {
                /* n - 2 min(rank by pool(I) (1 - a), rank by s a), a the attention
                   share; ranks 0 = best, ties to the lower position */
                const double a = (double)c.terms.attention_share;
                for (i = 0; i < n; i++) {
                    int64_t rank_p = 0, rank_s = 0, m;
                    double depth_p, depth_s;
                    for (m = 0; m < n; m++) {
                        rank_p += tmp[m] > tmp[i] || (tmp[m] == tmp[i] && m < i);
                        rank_s += s[m] > s[i] || (s[m] == s[i] && m < i);
                    }
                    depth_p = 2.0 * (double)rank_p * (1.0 - a);
                    depth_s = 2.0 * (double)rank_s * a;
                    u[i] = (double)n - (depth_p < depth_s ? depth_p : depth_s);
                }
                for (i = 0; i < n; i++) s[i] = u[i];
            }
        }
        break;
    case KVEC_POLICY_H2O:
        naive_importance(L, j, L->Wq, n, 1.0 / (double)g, s);
        for (i = 0; i < n; i++) s[i] /= (double)(L->Wq < L->N - i ? L->Wq : L->N - i);
        break;
    case KVEC_POLICY_TOVA:
        for (i = 0; i < n; i++) s[i] = 0.0;
        for (jj = 0; jj < L->Hk; jj++) {
            naive_importance(L, jj, 1, n, 1.0, tmp);
            for (i = 0; i < n; i++) s[i] += tmp[i] / (double)L->H;
        }
        break;
    case KVEC_POLICY_KNORM:
        for (i = 0; i < n; i++) s[i] = -naive_norm(&L->k[(i * L->Hk + j) * L->D], L->D);
        break;
    case KVEC_POLICY_KEYDIFF:
        naive_uniqueness(L, j, n, s);
        break;
    case KVEC_POLICY_CRITICALKV: {
        const int64_t first = g_score_budget > W ? (g_score_budget - W) / 2 : 0;
        int64_t *kept = (int64_t *)malloc(sizeof(int64_t) * (size_t)L->N), count;
        naive_importance(L, j, W, n, 1.0 / (double)g, tmp);
        naive_pool(tmp, n, c.pool_kernel, c.pooling == KVEC_POOL_MAX, s);
        for (i = 0; i < n; i++) tmp[i] = s[i];
        naive_output_norm(L, j, n, 1, u);
        for (i = 0; i < n; i++) s[i] = (s[i] + 1e-4) * u[i];
        /* the first stage: the best `first` by pool(I) (the window is not evictable) */
        count = naive_select(tmp, n, 0, first, kept);
        for (i = 0; i < count; i++) s[kept[i]] = 3.4028234663852886e38;
        free(kept);
        break;
    }
    case KVEC_POLICY_LAPROX: {
        double total = 0.0;
        for (jj = 0; jj < L->Hk; jj++) {
            naive_importance(L, jj, W, n, 1.0 / (double)g, tmp);
            naive_pool(tmp, n, c.pool_kernel, c.pooling == KVEC_POOL_MAX, u);
            naive_output_norm(L, jj, n, 2, tmp);
            for (i = 0; i < n; i++) {
                total += u[i] * tmp[i];
                if (jj == j) s[i] = u[i] * tmp[i];
            }
        }
        for (i = 0; i < n; i++) s[i] /= total / (double)(L->Hk * n);
        break;
    }
    case KVEC_POLICY_STREAMING:
        for (i = 0; i < n; i++) s[i] = i < c.sink_tokens ? 3.0e38 : (double)i;
        break;
    default:
        break;
    }
    free(tmp); free(u);
}

/* Kept positions by sorting: score descending, NaN last, ties to the lower
   position; then the window; ascending. Returns the count. */
static const double *g_sort_scores;
static int by_keep_order(const void *a, const void *b) {
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    double x = g_sort_scores[i], y = g_sort_scores[j];
    int xn = x != x, yn = y != y;
    if (xn != yn) return xn ? 1 : -1;
    if (!xn && x != y) return x > y ? -1 : 1;
    return i < j ? -1 : 1;
}
static int by_value(const void *a, const void *b) {
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    return i < j ? -1 : i > j;
}
static int64_t naive_select(const double *scores, int64_t N, int64_t W, int64_t budget, int64_t *out) {
    int64_t n = N - W, i, count;
    if (budget >= N) { for (i = 0; i < N; i++) out[i] = i; return N; }
    {
        int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
        for (i = 0; i < n; i++) order[i] = i;
        g_sort_scores = scores;
        qsort(order, (size_t)n, sizeof(int64_t), by_keep_order);
        for (count = 0; count < budget - W; count++) out[count] = order[count];
        free(order);
    }
    qsort(out, (size_t)count, sizeof(int64_t), by_value);
    for (i = n; i < N; i++) out[count++] = i;
    return count;
}

/* ---- tests: scores -------------------------------------------------------- */

static kvec_config policy_config(kvec_policy p, int64_t window) {
    kvec_config c;
    memset(&c, 0, sizeof c);
    c.policy = p;
    c.window = window;
    return c;
}

/* kvec_score_layer against the naive reference, for one config. */
static void check_scores(const char *what, const kvec_config *cfg, test_layer *L, const kvec_coverage *cov) {
    const int64_t W = cfg->window, n = L->N - W;
    float *scores = (float *)malloc(sizeof(float) * (size_t)(L->N * L->Hk));
    double *ref = (double *)malloc(sizeof(double) * (size_t)L->N);
    size_t bytes;
    void *scratch;
    int64_t j, i, bad = 0, window_ok = 1;
    double worst = 0.0;
    kvec_result r = kvec_layer_scratch_bytes(cfg, &L->view, &bytes);
    CHECK(r == KVEC_OK, "%s: scratch query: %s", what, kvec_result_string(r));
    scratch = malloc(bytes);
    r = kvec_score_layer(cfg, &L->view, 0, g_score_budget, cov, scores, scratch, bytes);
    CHECK(r == KVEC_OK, "%s: score: %s", what, kvec_result_string(r));
    for (j = 0; j < L->Hk && r == KVEC_OK; j++) {
        double scale = 0.0;
        naive_scores(cfg, L, j, cov ? cov->kept_before : NULL, ref);
        for (i = 0; i < n; i++) scale = fabs(ref[i]) > scale && ref[i] < 1e38 ? fabs(ref[i]) : scale;
        for (i = 0; i < n; i++) {
            double err = fabs((double)scores[j * L->N + i] - ref[i]) / (fabs(ref[i]) + 1e-3 * scale + 1e-12);
            if (ref[i] >= 1e38) err = scores[j * L->N + i] >= 1e38f ? 0.0 : 1.0;
            if (err > worst) worst = err;
            if (err > 1e-3) bad++;
        }
        for (i = n; i < L->N; i++) window_ok &= isinf(scores[j * L->N + i]) && scores[j * L->N + i] > 0;
    }
    CHECK(bad == 0, "%s: %ld scores differ from the naive reference (worst relative error %.3g)", what, (long)bad, worst);
    CHECK(window_ok, "%s: window positions must score +inf", what);
    free(scores); free(ref); free(scratch);
}

static void test_each_score_matches_naive_reference(void) {
    static const kvec_policy policies[] = { KVEC_POLICY_SNAPKV, KVEC_POLICY_PYRAMIDKV, KVEC_POLICY_KVEC,
                                            KVEC_POLICY_H2O, KVEC_POLICY_TOVA, KVEC_POLICY_KNORM,
                                            KVEC_POLICY_KEYDIFF, KVEC_POLICY_STREAMING,
                                            KVEC_POLICY_CRITICALKV, KVEC_POLICY_LAPROX };
    test_layer L;
    size_t p;
    int shape;
    for (shape = 0; shape < 3; shape++) {
        const int64_t N = shape == 0 ? 97 : shape == 1 ? 200 : 150, Hk = shape == 0 ? 1 : 2;
        const int64_t g = shape == 2 ? 1 : shape == 0 ? 3 : 4, D = shape == 1 ? 32 : 16, W = shape == 1 ? 16 : 8;
        layer_init(&L, N, Hk, g, D, 4 * W, shape == 1 ? KVEC_DTYPE_F16 : KVEC_DTYPE_F32, TOK_HEAD_DIM, 11 + (uint64_t)shape);
        for (p = 0; p < sizeof policies / sizeof policies[0]; p++) {
            kvec_config c = policy_config(policies[p], W);
            char what[64];
            sprintf(what, "%s shape %d", kvec_policy_name(policies[p]), shape);
            check_scores(what, &c, &L, NULL);
        }
        {
            kvec_config c = policy_config(KVEC_POLICY_CRITICALKV, W);
            g_score_budget = W + (N - W) / 3; /* the first stage takes a sixth */
            check_scores("CriticalKV with its first stage", &c, &L, NULL);
            g_score_budget = 0;
        }
        {
            kvec_config c = policy_config(KVEC_POLICY_SNAPKV, W);
            c.pooling = KVEC_POOL_MAX; c.pool_kernel = 7;
            check_scores("SnapKV max-pool 7", &c, &L, NULL);
            c.pool_kernel = 1;
            check_scores("SnapKV no pooling", &c, &L, NULL);
        }
        {
            kvec_config c = policy_config(KVEC_POLICY_KVEC, W);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_HEAD_FOCUS;
            c.terms.focus_cv = 100.0f; /* every head in focus mode: the 4W path runs */
            check_scores("K-VEC head focus", &c, &L, NULL);
            c.terms.enabled = KVEC_TERM_UNIQUENESS;
            c.terms.mu = 1.5f;
            check_scores("K-VEC mu 1.5", &c, &L, NULL);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION;
            check_scores("K-VEC rank union, mu 1.5", &c, &L, NULL);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION | KVEC_TERM_HEAD_FOCUS;
            check_scores("K-VEC rank union, head focus", &c, &L, NULL);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION;
            c.terms.attention_share = 0.3f;
            check_scores("K-VEC rank union, attention share 0.3", &c, &L, NULL);
            c.terms.attention_share = 0.8f;
            check_scores("K-VEC rank union, attention share 0.8", &c, &L, NULL);
        }
        {
            kvec_config c = policy_config(KVEC_POLICY_KVEC, W);
            uint8_t *mem = (uint8_t *)malloc((size_t)N);
            kvec_coverage cov;
            int64_t i;
            kvec_coverage_init(&cov, mem, (size_t)N, N);
            for (i = 0; i < N; i++) mem[i] = (uint8_t)(uniform() < 0.3);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER;
            check_scores("K-VEC cross-layer", &c, &L, &cov);
            c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER | KVEC_TERM_RANK_UNION;
            check_scores("K-VEC cross-layer, rank union", &c, &L, &cov);
            free(mem);
        }
        layer_free(&L);
    }
}

static void test_h2o_with_whole_prefix_queries(void) {
    test_layer L;
    kvec_config c = policy_config(KVEC_POLICY_H2O, 8);
    layer_init(&L, 140, 2, 2, 16, 140, KVEC_DTYPE_F32, TOK_HEAD_DIM, 5);
    check_scores("H2O, queries for the whole prefix", &c, &L, NULL);
    layer_free(&L);
}

static void test_random_is_seeded(void) {
    test_cache a, b, d;
    test_plan pa, pb, pd;
    kvec_config c = policy_config(KVEC_POLICY_RANDOM, 8);
    int64_t h;
    int counts_ok = 1;
    cache_init(&a, 2, 120, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 3);
    cache_init(&b, 2, 120, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 3);
    cache_init(&d, 2, 120, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 3);
    c.seed = 7;
    CHECK(run_evict(&c, &a, 40, &pa) == KVEC_OK, "random a");
    CHECK(run_evict(&c, &b, 40, &pb) == KVEC_OK, "random b");
    c.seed = 8;
    CHECK(run_evict(&c, &d, 40, &pd) == KVEC_OK, "random d");
    CHECK(plans_equal(&pa, &pb), "same seed must keep the same tokens");
    CHECK(!plans_equal(&pa, &pd), "another seed should keep other tokens");
    for (h = 0; h < 4; h++) counts_ok &= pa.counts[h] == 40;
    CHECK(counts_ok, "random keeps exactly the budget");
    plan_free(&pa); plan_free(&pb); plan_free(&pd);
    cache_free(&a); cache_free(&b); cache_free(&d);
}

/* ---- tests: selection ----------------------------------------------------- */

static void check_select(const char *what, const double *scores_d, int64_t Hk, int64_t N, int64_t W, int64_t budget) {
    kvec_config c = policy_config(KVEC_POLICY_SNAPKV, W);
    float *scores = (float *)malloc(sizeof(float) * (size_t)(Hk * N));
    int64_t *ref = (int64_t *)malloc(sizeof(int64_t) * (size_t)N);
    test_plan p;
    int64_t j, i, kept = budget < N ? budget : N;
    int same = 1;
    kvec_result r;
    for (i = 0; i < Hk * N; i++) scores[i] = (float)scores_d[i];
    plan_init(&p, 1, Hk, kept);
    r = kvec_select_layer(&c, scores, Hk, N, budget, 0, NULL, &p.plan, NULL, 0);
    CHECK(r == KVEC_OK, "%s: %s", what, kvec_result_string(r));
    for (j = 0; j < Hk; j++) {
        double *sd = (double *)malloc(sizeof(double) * (size_t)N);
        int64_t n;
        for (i = 0; i < N; i++) sd[i] = scores[j * N + i];
        n = naive_select(sd, N, W, budget, ref);
        same &= n == p.counts[j];
        for (i = 0; i < n && same; i++) same &= ref[i] == p.positions[j * kept + i];
        free(sd);
    }
    CHECK(same, "%s: selection differs from sorting", what);
    free(scores); free(ref); plan_free(&p);
}

static void test_selection_equals_sorting(void) {
    const int64_t N = 300, Hk = 3;
    double *s = (double *)malloc(sizeof(double) * (size_t)(N * Hk));
    int64_t i, budget;
    int trial;
    for (trial = 0; trial < 6; trial++) {
        for (i = 0; i < N * Hk; i++) {
            double u = uniform();
            s[i] = trial == 0 ? normal()
                 : trial == 1 ? (double)(int)(u * 5)            /* heavy ties */
                 : trial == 2 ? (u < 0.2 ? NAN : normal())       /* NaN ranks lowest */
                 : trial == 3 ? (u < 0.5 ? -0.0 : 0.0)           /* -0 equals +0 */
                 : trial == 4 ? (u < 0.1 ? -INFINITY : u < 0.2 ? INFINITY : normal() * 1e-30)
                 : 1.0;                                          /* all equal */
        }
        for (budget = 16; budget <= N + 10; budget += 71) {
            char what[64];
            sprintf(what, "trial %d budget %ld", trial, (long)budget);
            check_select(what, s, Hk, N, 16, budget);
        }
    }
    free(s);
}

static void test_ties_go_to_lower_position_and_nan_last(void) {
    /* 10 tokens, window 2: evictable 0..7. */
    double s[10] = { 1, 5, NAN, 5, 2, 5, NAN, 3, 0, 0 };
    kvec_config c = policy_config(KVEC_POLICY_SNAPKV, 2);
    float f[10];
    test_plan p;
    int i;
    for (i = 0; i < 10; i++) f[i] = (float)s[i];
    plan_init(&p, 1, 1, 5);
    CHECK(kvec_select_layer(&c, f, 1, 10, 4, 0, NULL, &p.plan, NULL, 0) == KVEC_OK, "select");
    /* best two of the evictable: the 5s at 1 and 3 (5 at 5 loses the tie) */
    CHECK(p.counts[0] == 4 && p.positions[0] == 1 && p.positions[1] == 3 && p.positions[2] == 8 &&
          p.positions[3] == 9, "got %ld: %ld %ld %ld %ld", (long)p.counts[0], (long)p.positions[0],
          (long)p.positions[1], (long)p.positions[2], (long)p.positions[3]);
    CHECK(kvec_select_layer(&c, f, 1, 10, 9, 0, NULL, &p.plan, NULL, 0) == KVEC_ERROR_PLAN_TOO_SMALL, "capacity 5 cannot hold 9");
    plan_free(&p);
    plan_init(&p, 1, 1, 10);
    CHECK(kvec_select_layer(&c, f, 1, 10, 9, 0, NULL, &p.plan, NULL, 0) == KVEC_OK, "select 9");
    /* 7 free slots over 8 evictable: everything but one NaN; the NaN at 6 goes */
    CHECK(p.counts[0] == 9 && p.positions[2] == 2 && p.positions[6] == 7, "NaN at 6 must be the one dropped");
    plan_free(&p);
}

static void test_budget_window_and_order_for_every_policy(void) {
    int p;
    for (p = KVEC_POLICY_KVEC; p < KVEC_POLICY_COUNT_; p++) {
        test_cache c;
        test_plan plan;
        kvec_config cfg = policy_config((kvec_policy)p, 8);
        int64_t l, j, r, layer_budget;
        int ok_count = 1, ok_window = 1, ok_order = 1;
        cache_init(&c, 3, 130, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 20 + (uint64_t)p);
        CHECK(run_evict(&cfg, &c, 40, &plan) == KVEC_OK, "%s evict", kvec_policy_name((kvec_policy)p));
        for (l = 0; l < 3; l++) {
            kvec_layer_budget(&cfg, 40, l, 3, 130, &layer_budget);
            for (j = 0; j < 2; j++) {
                const int64_t *pos = plan.positions + (l * 2 + j) * plan.plan.capacity;
                int64_t n = plan.counts[l * 2 + j];
                ok_count &= n == layer_budget;
                for (r = 0; r < 8; r++) ok_window &= pos[n - 8 + r] == 130 - 8 + r;
                for (r = 1; r < n; r++) ok_order &= pos[r] > pos[r - 1];
            }
        }
        CHECK(ok_count, "%s: kept count must equal the layer budget", kvec_policy_name((kvec_policy)p));
        CHECK(ok_window, "%s: window must be kept", kvec_policy_name((kvec_policy)p));
        CHECK(ok_order, "%s: positions ascending and unique", kvec_policy_name((kvec_policy)p));
        plan_free(&plan);
        cache_free(&c);
    }
}

static void test_kvec_without_terms_selects_what_snapkv_selects(void) {
    int trial;
    for (trial = 0; trial < 4; trial++) {
        test_cache a, b;
        test_plan pa, pb;
        kvec_config snap = policy_config(KVEC_POLICY_SNAPKV, 16), kv = policy_config(KVEC_POLICY_KVEC, 16);
        kv.terms.enabled = KVEC_TERM_NONE;
        cache_init(&a, 2, 150 + trial * 60, 2, 4, 32, 16, KVEC_DTYPE_BF16, TOK_HEAD_DIM, 40 + (uint64_t)trial);
        cache_init(&b, 2, 150 + trial * 60, 2, 4, 32, 16, KVEC_DTYPE_BF16, TOK_HEAD_DIM, 40 + (uint64_t)trial);
        CHECK(run_evict(&snap, &a, 48, &pa) == KVEC_OK, "snapkv");
        CHECK(run_evict(&kv, &b, 48, &pb) == KVEC_OK, "kvec none");
        CHECK(plans_equal(&pa, &pb), "trial %d: K-VEC with no term must equal SnapKV", trial);
        CHECK(memcmp(a.layers[1].kb, b.layers[1].kb, a.layers[1].kbytes) == 0, "same compacted keys");
        plan_free(&pa); plan_free(&pb); cache_free(&a); cache_free(&b);
    }
}

static int64_t ref_pyramid(int64_t B, int64_t W, int64_t l, int64_t L, int64_t N, double beta) {
    int64_t F = B - W;
    double lo, hi, f;
    if (B >= N) return N;
    if (L == 1 || N < 2 * F) return B;
    lo = (double)F / beta; hi = 2.0 * F - lo;
    if (hi >= (double)(N - W)) { hi = (double)(N - W); lo = 2.0 * F - hi; }
    f = floor(hi - (double)l * (hi - lo) / (double)(L - 1) + 0.5);
    if (f < 0) f = 0;
    if (f > (double)(N - W)) f = (double)(N - W);
    return W + (int64_t)f;
}

static void test_pyramid_budgets_follow_the_formula(void) {
    kvec_config c = policy_config(KVEC_POLICY_PYRAMIDKV, 8);
    int64_t B, N, L, l, got;
    int ok = 1, decreasing = 1;
    for (N = 50; N <= 2000; N += 390)
        for (B = 8; B <= N + 5; B += 37)
            for (L = 1; L <= 6; L++)
                for (l = 0; l < L; l++) {
                    kvec_result r = kvec_layer_budget(&c, B, l, L, N, &got);
                    ok &= r == KVEC_OK && got == ref_pyramid(B, 8, l, L, N, 20.0);
                    if (l > 0) {
                        int64_t prev;
                        kvec_layer_budget(&c, B, l - 1, L, N, &prev);
                        decreasing &= got <= prev;
                    }
                }
    CHECK(ok, "kvec_layer_budget differs from the PyramidKV formula");
    CHECK(decreasing, "pyramid budgets must not grow with depth");
    c.budget_mode = KVEC_BUDGET_UNIFORM;
    CHECK(kvec_layer_budget(&c, 100, 2, 4, 1000, &got) == KVEC_OK && got == 100, "uniform mode keeps B");
    CHECK(kvec_layer_budget(&c, 2000, 2, 4, 1000, &got) == KVEC_OK && got == 1000, "budget >= N keeps all");
    CHECK(kvec_layer_budget(&c, 7, 0, 4, 1000, &got) == KVEC_ERROR_BUDGET_BELOW_WINDOW, "budget < window");
}

/* ---- tests: compaction, dtypes, layouts ----------------------------------- */

/* After eviction, row r of head j must hold the original row kept[r]. */
static int compaction_matches_gather(const test_cache *before, const test_cache *after, const test_plan *p) {
    int64_t l, j, r, d;
    for (l = 0; l < after->n_layers; l++) {
        const test_layer *A = &after->layers[l], *B = &before->layers[l];
        for (j = 0; j < A->Hk; j++) {
            const int64_t *pos = p->positions + (l * A->Hk + j) * p->plan.capacity;
            for (r = 0; r < p->counts[l * A->Hk + j]; r++)
                for (d = 0; d < A->D; d++) {
                    double k = fetch(element(&A->view.keys, r, j, d), A->view.keys.dtype);
                    double v = fetch(element(&A->view.values, r, j, d), A->view.values.dtype);
                    if (k != B->k[(pos[r] * B->Hk + j) * B->D + d]) return 0;
                    if (v != B->v[(pos[r] * B->Hk + j) * B->D + d]) return 0;
                }
            /* rows past the count are left as they were */
            for (r = p->counts[l * A->Hk + j]; r < A->N; r++)
                for (d = 0; d < A->D; d++)
                    if (fetch(element(&A->view.keys, r, j, d), A->view.keys.dtype) != B->k[(r * B->Hk + j) * B->D + d])
                        return 0;
        }
    }
    return 1;
}

static void test_compaction_equals_reference_gather_in_every_layout(void) {
    static const enum layout layouts[] = { TOK_HEAD_DIM, HEAD_TOK_DIM, PADDED, TRANSPOSED_V };
    static const char *names[] = { "[tok][head][dim]", "[head][tok][dim]", "padded", "transposed V" };
    test_plan first;
    int li;
    for (li = 0; li < 4; li++) {
        test_cache before, after;
        test_plan p;
        kvec_config c = policy_config(KVEC_POLICY_KVEC, 8);
        cache_init(&before, 2, 120, 3, 2, 16, 8, KVEC_DTYPE_F16, layouts[li], 77);
        cache_init(&after, 2, 120, 3, 2, 16, 8, KVEC_DTYPE_F16, layouts[li], 77);
        CHECK(run_evict(&c, &after, 30, &p) == KVEC_OK, "%s evict", names[li]);
        CHECK(compaction_matches_gather(&before, &after, &p), "%s: compaction differs from a gather", names[li]);
        if (li == 0) first = p;
        else { CHECK(plans_equal(&first, &p), "%s: layout changed the kept set", names[li]); plan_free(&p); }
        cache_free(&before); cache_free(&after);
    }
    plan_free(&first);
}

static void test_same_selection_for_fp32_fp16_bf16(void) {
    static const kvec_dtype types[] = { KVEC_DTYPE_F32, KVEC_DTYPE_F16, KVEC_DTYPE_BF16 };
    static const kvec_policy policies[] = { KVEC_POLICY_KVEC, KVEC_POLICY_SNAPKV, KVEC_POLICY_KNORM, KVEC_POLICY_KEYDIFF,
                                            KVEC_POLICY_CRITICALKV, KVEC_POLICY_LAPROX };
    size_t p;
    for (p = 0; p < sizeof policies / sizeof policies[0]; p++) {
        test_plan plans[3];
        int t;
        for (t = 0; t < 3; t++) {
            test_cache c;
            kvec_config cfg = policy_config(policies[p], 8);
            /* values on the bf16 grid, small enough for fp16: identical numbers */
            cache_init(&c, 2, 100, 2, 2, 16, 8, types[t], TOK_HEAD_DIM, 91);
            CHECK(run_evict(&cfg, &c, 24, &plans[t]) == KVEC_OK, "dtype %d", t);
            cache_free(&c);
        }
        CHECK(plans_equal(&plans[0], &plans[1]), "%s: fp32 and fp16 keep different tokens", kvec_policy_name(policies[p]));
        CHECK(plans_equal(&plans[0], &plans[2]), "%s: fp32 and bf16 keep different tokens", kvec_policy_name(policies[p]));
        for (t = 0; t < 3; t++) plan_free(&plans[t]);
    }
}

/* ---- tests: per-layer, batch, threads ------------------------------------- */

static void test_layer_by_layer_equals_whole_cache(void) {
    static const uint32_t term_sets[] = { KVEC_TERM_UNIQUENESS, KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER,
                                          KVEC_TERM_CROSS_HEAD | KVEC_TERM_CROSS_LAYER,
                                          KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION | KVEC_TERM_CROSS_LAYER };
    size_t t;
    for (t = 0; t < sizeof term_sets / sizeof term_sets[0]; t++) {
        test_cache a, b;
        test_plan pa, pb;
        kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
        kvec_coverage cov;
        uint8_t *cov_mem = (uint8_t *)malloc(160);
        size_t bytes;
        void *scratch;
        int64_t l;
        int ok = 1;
        cfg.terms.enabled = term_sets[t];
        cache_init(&a, 3, 160, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 55);
        cache_init(&b, 3, 160, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 55);
        CHECK(run_evict(&cfg, &a, 40, &pa) == KVEC_OK, "whole cache");
        plan_init(&pb, 3, 2, pa.plan.capacity);
        kvec_coverage_init(&cov, cov_mem, 160, 160);
        for (l = 0; l < 3; l++) {
            kvec_layer_scratch_bytes(&cfg, &b.views[l], &bytes);
            scratch = malloc(bytes);
            ok &= kvec_evict_layer(&cfg, &b.views[l], l, 3, 40, &cov, &pb.plan, scratch, bytes) == KVEC_OK;
            free(scratch);
        }
        CHECK(ok, "terms %u: per-layer eviction failed", (unsigned)term_sets[t]);
        CHECK(plans_equal(&pa, &pb), "terms %u: per-layer plan differs from the whole-cache plan", (unsigned)term_sets[t]);
        for (l = 0; l < 3; l++)
            CHECK(memcmp(a.layers[l].kb, b.layers[l].kb, a.layers[l].kbytes) == 0 &&
                  memcmp(a.layers[l].vb, b.layers[l].vb, a.layers[l].vbytes) == 0,
                  "terms %u layer %ld: compacted bytes differ", (unsigned)term_sets[t], (long)l);
        CHECK(cov.next_layer == 3, "coverage saw three layers");
        plan_free(&pa); plan_free(&pb); cache_free(&a); cache_free(&b); free(cov_mem);
    }
}

static void test_cross_head_reserve_prefers_uncovered_tokens(void) {
    /* Two heads with identical scores: without the term they keep the same
       tokens; with beta = 0.5 the second head's reserve goes to tokens the
       first did not keep. */
    enum { N = 60, W = 4, B = 24 };
    float s[2 * N];
    kvec_config c = policy_config(KVEC_POLICY_KVEC, W);
    test_plan p;
    uint8_t flags[N];
    int64_t i, overlap = 0, r;
    for (i = 0; i < N; i++) s[i] = s[N + i] = (float)(N - i);
    c.terms.enabled = KVEC_TERM_CROSS_HEAD;
    c.terms.beta = 0.5f;
    plan_init(&p, 1, 2, B);
    CHECK(kvec_select_scratch_bytes(&c, 1, 3, N) == N, "cross-head selection needs N bytes");
    CHECK(kvec_select_layer(&c, s, 2, N, B, 0, NULL, &p.plan, flags, sizeof flags) == KVEC_OK, "select");
    for (r = 0; r < B; r++)
        for (i = 0; i < B; i++) overlap += p.positions[r] == p.positions[B + i];
    /* free slots 20, reserve 10: head 1 shares its first 10 plus the window */
    CHECK(overlap == 10 + W, "head 1 should share exactly 14 positions with head 0, shares %ld", (long)overlap);
    CHECK(p.counts[0] == B && p.counts[1] == B, "counts stay at the budget");
    CHECK(p.positions[B + 10] == 20, "head 1's reserve starts at the best uncovered token (got %ld)", (long)p.positions[B + 10]);
    plan_free(&p);
}

static void test_batch_equals_each_sequence_alone(void) {
    test_cache alone[2], batch[2];
    test_plan pa[2], pb[2];
    kvec_cache caches[2];
    kvec_plan plans[2];
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    size_t bytes;
    void *scratch;
    int s;
    for (s = 0; s < 2; s++) {
        cache_init(&alone[s], 2, 90 + 70 * s, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 60 + (uint64_t)s);
        cache_init(&batch[s], 2, 90 + 70 * s, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 60 + (uint64_t)s);
        CHECK(run_evict(&cfg, &alone[s], 32, &pa[s]) == KVEC_OK, "alone %d", s);
        plan_init(&pb[s], 2, 2, pa[s].plan.capacity);
        caches[s] = batch[s].cache;
        plans[s] = pb[s].plan;
    }
    CHECK(kvec_scratch_bytes(&cfg, caches, 2, &bytes) == KVEC_OK, "batch scratch");
    scratch = malloc(bytes);
    CHECK(kvec_evict_batch(&cfg, caches, 2, 32, plans, scratch, bytes) == KVEC_OK, "batch");
    for (s = 0; s < 2; s++) {
        CHECK(plans_equal(&pa[s], &pb[s]), "sequence %d: batch plan differs", s);
        CHECK(memcmp(alone[s].layers[1].kb, batch[s].layers[1].kb, alone[s].layers[1].kbytes) == 0, "sequence %d bytes", s);
        plan_free(&pa[s]); plan_free(&pb[s]); cache_free(&alone[s]); cache_free(&batch[s]);
    }
    free(scratch);
}

static void test_one_and_two_threads_identical(void) {
#ifdef TEST_THREADS
    int p;
    for (p = KVEC_POLICY_KVEC; p < KVEC_POLICY_COUNT_; p++) {
        test_layer L;
        kvec_config cfg = policy_config((kvec_policy)p, 8);
        float *s1, *s2;
        size_t bytes;
        void *scratch;
        layer_init(&L, 300, 4, 2, 32, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 99);
        s1 = (float *)malloc(sizeof(float) * 1200);
        s2 = (float *)malloc(sizeof(float) * 1200);
        kvec_layer_scratch_bytes(&cfg, &L.view, &bytes);
        scratch = malloc(bytes);
        omp_set_num_threads(1);
        kvec_score_layer(&cfg, &L.view, 0, 0, NULL, s1, scratch, bytes);
        omp_set_num_threads(2);
        kvec_score_layer(&cfg, &L.view, 0, 0, NULL, s2, scratch, bytes);
        CHECK(memcmp(s1, s2, sizeof(float) * 1200) == 0, "%s: scores differ between 1 and 2 threads", kvec_policy_name((kvec_policy)p));
        free(s1); free(s2); free(scratch); layer_free(&L);
    }
    {
        test_cache a, b;
        test_plan pa, pb;
        kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
        cache_init(&a, 3, 200, 4, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 5);
        cache_init(&b, 3, 200, 4, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 5);
        omp_set_num_threads(1);
        run_evict(&cfg, &a, 50, &pa);
        omp_set_num_threads(2);
        run_evict(&cfg, &b, 50, &pb);
        CHECK(plans_equal(&pa, &pb), "plans differ between 1 and 2 threads");
        CHECK(memcmp(a.layers[2].kb, b.layers[2].kb, a.layers[2].kbytes) == 0, "compacted keys differ between thread counts");
        plan_free(&pa); plan_free(&pb); cache_free(&a); cache_free(&b);
    }
#else
    if (!g_quiet) printf("skip test_one_and_two_threads_identical: built without OpenMP\n");
#endif
}

/* ---- tests: shared budgets (Ada-KV, global), external scores, varlen ----- */

/* Pool selection by sorting: G heads of scores [G][N]; every head first
   takes its best floor_slots evictable tokens, then the best remaining
   entries of all heads (score descending, NaN last, ties to the lower head,
   then the lower position) fill G * free_slots. counts [G], kept [G][N]. */
static const double *g_pool_scores;
static int64_t g_pool_n;
static int by_pool_order(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    double sx = g_pool_scores[x], sy = g_pool_scores[y];
    int xn = sx != sx, yn = sy != sy;
    if (xn != yn) return xn ? 1 : -1;
    if (!xn && sx != sy) return sx > sy ? -1 : 1;
    return x < y ? -1 : 1; /* flat index = (head, position) order */
}
static void naive_pool_select(const double *scores, int64_t G, int64_t N, int64_t W, int64_t free_slots,
                              int64_t floor_slots, int64_t *counts, int64_t *kept) {
    const int64_t n_ev = N - W;
    int64_t *order = (int64_t *)malloc(sizeof(int64_t) * (size_t)(G * N));
    unsigned char *taken = (unsigned char *)calloc((size_t)(G * N), 1);
    int64_t g, i, m = 0, left = G * free_slots;
    g_pool_scores = scores; g_pool_n = N;
    for (g = 0; g < G; g++) {
        int64_t *own = order, k;
        for (i = 0; i < n_ev; i++) own[i] = g * N + i;
        qsort(own, (size_t)n_ev, sizeof(int64_t), by_pool_order);
        for (k = 0; k < floor_slots && k < n_ev; k++) { taken[own[k]] = 1; left--; }
    }
    for (g = 0; g < G; g++)
        for (i = 0; i < n_ev; i++)
            if (!taken[g * N + i]) order[m++] = g * N + i;
    qsort(order, (size_t)m, sizeof(int64_t), by_pool_order);
    for (i = 0; i < m && i < left; i++) taken[order[i]] = 1;
    for (g = 0; g < G; g++) {
        counts[g] = 0;
        for (i = 0; i < N; i++)
            if (i >= n_ev || taken[g * N + i]) kept[g * N + counts[g]++] = i;
    }
    free(order); free(taken);
}

/* kvec_select under a budget mode against the sorting reference. */
static void check_pool(const char *what, kvec_budget_mode mode, float head_floor, const double *scores_d,
                       int64_t L, int64_t Hk, int64_t N, int64_t W, int64_t budget) {
    kvec_config c = policy_config(KVEC_POLICY_SNAPKV, W);
    const int64_t G = L * Hk, free_slots = budget - W;
    const int64_t floor_slots = head_floor < 0 ? 0 : (int64_t)floor((head_floor == 0 ? 0.2 : head_floor) * free_slots);
    float *scores = (float *)malloc(sizeof(float) * (size_t)(G * N));
    double *sd = (double *)malloc(sizeof(double) * (size_t)(G * N));
    int64_t *counts = (int64_t *)malloc(sizeof(int64_t) * (size_t)G);
    int64_t *kept = (int64_t *)malloc(sizeof(int64_t) * (size_t)(G * N));
    int64_t capacity = N, g, i, total = 0, lowest = N;
    size_t bytes;
    void *scratch;
    test_plan p;
    int same = 1;
    kvec_result r;
    c.budget_mode = mode;
    c.head_floor = head_floor;
    for (i = 0; i < G * N; i++) { scores[i] = (float)scores_d[i]; sd[i] = scores[i]; }
    CHECK(kvec_plan_capacity(&c, budget, L, N, &capacity) == KVEC_OK && capacity == N, "%s: capacity N", what);
    plan_init(&p, L, Hk, capacity);
    bytes = kvec_select_scratch_bytes(&c, L, Hk, N);
    CHECK(bytes == (size_t)((mode == KVEC_BUDGET_GLOBAL ? G : Hk) * N), "%s: scratch %zu bytes", what, bytes);
    scratch = malloc(bytes);
    r = kvec_select(&c, scores, L, Hk, N, budget, &p.plan, scratch, bytes);
    CHECK(r == KVEC_OK, "%s: %s", what, kvec_result_string(r));
    if (mode == KVEC_BUDGET_GLOBAL) naive_pool_select(sd, G, N, W, free_slots, floor_slots, counts, kept);
    else
        for (g = 0; g < L; g++)
            naive_pool_select(sd + g * Hk * N, Hk, N, W, free_slots, floor_slots, counts + g * Hk, kept + g * Hk * N);
    for (g = 0; g < G; g++) {
        same &= counts[g] == p.counts[g];
        for (i = 0; i < counts[g] && same; i++) same &= kept[g * N + i] == p.positions[g * capacity + i];
        total += p.counts[g];
        lowest = p.counts[g] < lowest ? p.counts[g] : lowest;
    }
    CHECK(same, "%s: selection differs from the sorting reference", what);
    CHECK(total == G * budget, "%s: pool not exact (%ld kept, %ld budgeted)", what, (long)total, (long)(G * budget));
    CHECK(lowest >= W + floor_slots, "%s: a head kept %ld < window + floor %ld", what, (long)lowest, (long)(W + floor_slots));
    free(scores); free(sd); free(counts); free(kept); free(scratch); plan_free(&p);
}

static void test_shared_pools_equal_sorting(void) {
    const int64_t L = 3, Hk = 4, N = 200, W = 8;
    double *s = (double *)malloc(sizeof(double) * (size_t)(L * Hk * N));
    int64_t i, budget;
    int trial;
    for (trial = 0; trial < 4; trial++) {
        for (i = 0; i < L * Hk * N; i++) {
            double u = uniform();
            /* heads on different scales, so pools really move slots */
            s[i] = trial == 0 ? normal() * (1 + (double)(i / N % 5))
                 : trial == 1 ? (double)(int)(u * 4)                 /* ties across heads */
                 : trial == 2 ? (u < 0.15 ? NAN : exp(normal() * 3)) /* NaN ranks lowest */
                 : 1.0;                                              /* all equal */
        }
        for (budget = W; budget < N; budget += 37) {
            char what[96];
            sprintf(what, "adaptive trial %d budget %ld", trial, (long)budget);
            check_pool(what, KVEC_BUDGET_ADAPTIVE, 0.0f, s, L, Hk, N, W, budget);
            sprintf(what, "global trial %d budget %ld", trial, (long)budget);
            check_pool(what, KVEC_BUDGET_GLOBAL, 0.0f, s, L, Hk, N, W, budget);
            sprintf(what, "global no floor trial %d budget %ld", trial, (long)budget);
            check_pool(what, KVEC_BUDGET_GLOBAL, -1.0f, s, L, Hk, N, W, budget);
            sprintf(what, "adaptive floor 0.5 trial %d budget %ld", trial, (long)budget);
            check_pool(what, KVEC_BUDGET_ADAPTIVE, 0.5f, s, L, Hk, N, W, budget);
        }
    }
    free(s);
}

/* kvec_evict_ex under a shared budget = the layer's own scores through
   kvec_select, then compaction equal to a gather of uneven heads. */
static void test_shared_pools_in_evict_equal_scores_then_select(void) {
    static const kvec_budget_mode modes[] = { KVEC_BUDGET_ADAPTIVE, KVEC_BUDGET_GLOBAL };
    static const kvec_policy policies[] = { KVEC_POLICY_SNAPKV, KVEC_POLICY_KVEC, KVEC_POLICY_KEYDIFF };
    const int64_t L = 3, N = 180, Hk = 3, W = 8, B = 40;
    size_t m, q;
    for (m = 0; m < 2; m++)
        for (q = 0; q < 3; q++) {
            test_cache before, after;
            test_plan pe, ps;
            kvec_config c = policy_config(policies[q], W);
            float *scores = (float *)malloc(sizeof(float) * (size_t)(L * Hk * N));
            size_t bytes;
            void *scratch;
            int64_t l, h, uneven = 0;
            int ok = 1;
            c.budget_mode = modes[m];
            cache_init(&before, L, N, Hk, 2, 16, W, KVEC_DTYPE_BF16, HEAD_TOK_DIM, 31 + q);
            cache_init(&after, L, N, Hk, 2, 16, W, KVEC_DTYPE_BF16, HEAD_TOK_DIM, 31 + q);
            for (l = 0; l < L; l++) {
                kvec_layer_scratch_bytes(&c, &before.views[l], &bytes);
                scratch = malloc(bytes);
                ok &= kvec_score_layer(&c, &before.views[l], l, 0, NULL, scores + l * Hk * N, scratch, bytes) == KVEC_OK;
                free(scratch);
            }
            plan_init(&ps, L, Hk, N);
            bytes = kvec_select_scratch_bytes(&c, L, Hk, N);
            scratch = malloc(bytes);
            ok &= kvec_select(&c, scores, L, Hk, N, B, &ps.plan, scratch, bytes) == KVEC_OK;
            free(scratch);
            CHECK(ok, "%s mode %d: score + select failed", kvec_policy_name(policies[q]), (int)modes[m]);
            CHECK(run_evict(&c, &after, B, &pe) == KVEC_OK, "%s mode %d: evict", kvec_policy_name(policies[q]), (int)modes[m]);
            CHECK(plans_equal(&pe, &ps), "%s mode %d: evict differs from score + select", kvec_policy_name(policies[q]), (int)modes[m]);
            CHECK(compaction_matches_gather(&before, &after, &pe), "%s mode %d: uneven compaction differs from a gather",
                  kvec_policy_name(policies[q]), (int)modes[m]);
            for (h = 1; h < L * Hk; h++) uneven |= pe.counts[h] != pe.counts[0];
            if (policies[q] == KVEC_POLICY_SNAPKV)
                CHECK(uneven, "mode %d: SnapKV scores should leave heads uneven", (int)modes[m]);
            free(scores); plan_free(&pe); plan_free(&ps); cache_free(&before); cache_free(&after);
        }
}

static void test_adaptive_layer_by_layer_equals_whole_cache(void) {
    test_cache a, b;
    test_plan pa, pb;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    int64_t l;
    int ok = 1;
    cfg.budget_mode = KVEC_BUDGET_ADAPTIVE;
    cfg.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER;
    cache_init(&a, 3, 160, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 56);
    cache_init(&b, 3, 160, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 56);
    CHECK(run_evict(&cfg, &a, 40, &pa) == KVEC_OK, "whole cache");
    plan_init(&pb, 3, 2, pa.plan.capacity);
    {
        kvec_coverage cov;
        uint8_t cov_mem[160];
        kvec_coverage_init(&cov, cov_mem, 160, 160);
        for (l = 0; l < 3; l++) {
            size_t bytes;
            void *scratch;
            kvec_layer_scratch_bytes(&cfg, &b.views[l], &bytes);
            scratch = malloc(bytes);
            ok &= kvec_evict_layer(&cfg, &b.views[l], l, 3, 40, &cov, &pb.plan, scratch, bytes) == KVEC_OK;
            free(scratch);
        }
    }
    CHECK(ok && plans_equal(&pa, &pb), "adaptive: per-layer plan differs from the whole-cache plan");
    CHECK(memcmp(a.layers[2].kb, b.layers[2].kb, a.layers[2].kbytes) == 0, "adaptive: compacted keys differ");
    plan_free(&pa); plan_free(&pb); cache_free(&a); cache_free(&b);
}

static void test_shared_pool_errors(void) {
    test_cache c;
    test_plan p;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8), r;
    float scores[2 * 100];
    int64_t counts_before[2], i;
    uint8_t flags[200];
    size_t bytes = 64;
    void *scratch = malloc(bytes);
    for (i = 0; i < 200; i++) scores[i] = (float)normal();
    cfg.budget_mode = KVEC_BUDGET_GLOBAL;
    cfg.terms.enabled = KVEC_TERM_CROSS_LAYER;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "global + cross-layer is refused");
    cfg.budget_mode = KVEC_BUDGET_ADAPTIVE;
    cfg.terms.enabled = KVEC_TERM_CROSS_HEAD;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "adaptive + cross-head is refused");
    cfg.terms.enabled = 0;
    cfg.head_floor = 1.5f;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "floor above 1 is refused");
    cfg.head_floor = -3.0f;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_OK && r.head_floor == -1.0f, "negative floor = none");
    CHECK(kvec_resolve_config(&r, &r) == KVEC_OK && r.head_floor == -1.0f, "none stays none when resolved again");
    cfg.budget_mode = (kvec_budget_mode)7;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "unknown budget mode");
    cfg = policy_config(KVEC_POLICY_KVEC, 8);
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_OK && r.terms.attention_share == 0.25f, "union share defaults to 0.25");
    cfg.terms.attention_share = 1.0f;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "union share 1 is refused");
    cfg.terms.attention_share = -0.25f;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "negative union share is refused");
    cfg.terms.attention_share = (float)NAN;
    CHECK(kvec_resolve_config(&cfg, &r) == KVEC_ERROR_BAD_CONFIG, "NaN union share is refused");

    cfg = policy_config(KVEC_POLICY_SNAPKV, 8);
    cfg.budget_mode = KVEC_BUDGET_GLOBAL;
    plan_init(&p, 1, 2, 100);
    for (i = 0; i < 2; i++) p.counts[i] = counts_before[i] = 77;
    CHECK(kvec_select_layer(&cfg, scores, 2, 100, 20, 0, NULL, &p.plan, flags, sizeof flags) == KVEC_ERROR_BAD_CONFIG,
          "global needs every layer: kvec_select_layer refuses it");
    CHECK(kvec_select(&cfg, scores, 1, 2, 100, 20, &p.plan, scratch, bytes) == KVEC_ERROR_SCRATCH_TOO_SMALL,
          "kvec_select checks its scratch");
    p.plan.capacity = 50;
    CHECK(kvec_select(&cfg, scores, 1, 2, 100, 20, &p.plan, flags, sizeof flags) == KVEC_ERROR_PLAN_TOO_SMALL,
          "a shared pool needs capacity N");
    CHECK(p.counts[0] == counts_before[0] && p.counts[1] == counts_before[1], "errors leave the plan alone");
    plan_free(&p);
    cache_init(&c, 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 3);
    plan_init(&p, 2, 2, 100);
    CHECK(kvec_evict_layer(&cfg, &c.views[0], 0, 2, 20, NULL, &p.plan, scratch, bytes) == KVEC_ERROR_BAD_CONFIG,
          "global needs every layer: kvec_evict_layer refuses it");
    plan_free(&p); cache_free(&c); free(scratch);
}

/* W_o through any strided view: a transposed copy ([H][Dv][E]) scores the same. */
static void test_out_proj_in_any_layout(void) {
    static const kvec_policy policies[] = { KVEC_POLICY_CRITICALKV, KVEC_POLICY_LAPROX };
    test_layer L;
    size_t p;
    layer_init(&L, 120, 2, 2, 16, 8, KVEC_DTYPE_BF16, TOK_HEAD_DIM, 17);
    for (p = 0; p < 2; p++) {
        kvec_config c = policy_config(policies[p], 8);
        kvec_layer transposed = L.view;
        float *a = (float *)malloc(sizeof(float) * 240), *b = (float *)malloc(sizeof(float) * 240);
        uint16_t *t = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)(TEST_WIDTH * L.H * L.D));
        int64_t o, h, d;
        size_t bytes;
        void *scratch;
        for (o = 0; o < TEST_WIDTH; o++)
            for (h = 0; h < L.H; h++)
                for (d = 0; d < L.D; d++)
                    memcpy(&t[(h * L.D + d) * TEST_WIDTH + o], element(&L.view.out_proj, o, h, d), 2);
        transposed.out_proj.data = t;
        transposed.out_proj.stride_token = 2;
        transposed.out_proj.stride_dim = TEST_WIDTH * 2;
        transposed.out_proj.stride_head = L.D * TEST_WIDTH * 2;
        kvec_layer_scratch_bytes(&c, &L.view, &bytes);
        scratch = malloc(bytes);
        CHECK(kvec_score_layer(&c, &L.view, 0, 40, NULL, a, scratch, bytes) == KVEC_OK &&
              kvec_score_layer(&c, &transposed, 0, 40, NULL, b, scratch, bytes) == KVEC_OK, "score");
        CHECK(memcmp(a, b, sizeof(float) * 240) == 0, "%s: a transposed W_o changes the scores", kvec_policy_name(policies[p]));
        free(a); free(b); free(t); free(scratch);
    }
    layer_free(&L);
}

static void test_output_aware_errors(void) {
    static const kvec_policy policies[] = { KVEC_POLICY_CRITICALKV, KVEC_POLICY_LAPROX };
    size_t p;
    for (p = 0; p < 2; p++) {
        test_cache c;
        test_plan plan;
        kvec_config cfg = policy_config(policies[p], 8);
        unsigned char *keys_before;
        void *saved;
        kvec_result r;
        cache_init(&c, 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 21);
        keys_before = (unsigned char *)malloc(c.layers[1].kbytes);
        memcpy(keys_before, c.layers[1].kb, c.layers[1].kbytes);
        saved = c.views[1].out_proj.data;
        c.views[1].out_proj.data = NULL;
        r = run_evict(&cfg, &c, 30, &plan); plan_free(&plan);
        CHECK(r == KVEC_ERROR_MISSING_OUT_PROJ, "%s without out_proj: %s", kvec_policy_name(policies[p]), kvec_result_string(r));
        c.views[1].out_proj.data = saved;
        c.views[1].out_proj.n_heads = 2; /* query heads are 4 */
        r = run_evict(&cfg, &c, 30, &plan); plan_free(&plan);
        CHECK(r == KVEC_ERROR_SHAPE_MISMATCH, "%s out_proj with the wrong heads: %s", kvec_policy_name(policies[p]), kvec_result_string(r));
        c.views[1].out_proj.n_heads = 4;
        store(element(&c.views[1].values, 5, 1, 3), KVEC_DTYPE_F16, NAN);
        r = run_evict(&cfg, &c, 30, &plan); plan_free(&plan);
        CHECK(r == KVEC_ERROR_NON_FINITE, "%s reads V: NaN in V is an error: %s", kvec_policy_name(policies[p]), kvec_result_string(r));
        CHECK(memcmp(keys_before, c.layers[1].kb, c.layers[1].kbytes) == 0, "%s: errors leave the cache alone", kvec_policy_name(policies[p]));
        cfg.policy = KVEC_POLICY_SNAPKV;
        c.views[1].out_proj.data = NULL;
        r = run_evict(&cfg, &c, 30, &plan); plan_free(&plan);
        CHECK(r == KVEC_OK, "SnapKV needs neither out_proj nor finite values: %s", kvec_result_string(r));
        free(keys_before); cache_free(&c);
    }
}

static void test_plan_offsets_and_mask(void) {
    int64_t counts[6] = { 5, 9, 0, 3, 7, 7 }, positions[6 * 10], longest = -1;
    int32_t cu[4];
    float mask[3 * 9];
    kvec_plan plan;
    int64_t j, i;
    int ok = 1;
    plan.n_layers = 2; plan.n_kv_heads = 3; plan.capacity = 10;
    plan.kept_count = counts; plan.kept_positions = positions;
    CHECK(kvec_plan_offsets(&plan, 1, cu, &longest) == KVEC_OK, "offsets");
    CHECK(cu[0] == 0 && cu[1] == 3 && cu[2] == 10 && cu[3] == 17 && longest == 7, "layer 1 offsets 0 3 10 17, longest 7");
    CHECK(kvec_plan_mask(&plan, 0, 9, mask) == KVEC_OK, "mask");
    for (j = 0; j < 3; j++)
        for (i = 0; i < 9; i++) ok &= mask[j * 9 + i] == (i < counts[j] ? 0.0f : -INFINITY);
    CHECK(ok, "mask is 0 below each head's count and -inf above");
    CHECK(kvec_plan_mask(&plan, 0, 8, mask) == KVEC_ERROR_BAD_EXTENT, "mask rows below the longest head");
    CHECK(kvec_plan_offsets(&plan, 2, cu, NULL) == KVEC_ERROR_BAD_LAYER_INDEX, "layer out of range");
    counts[4] = 11;
    CHECK(kvec_plan_offsets(&plan, 1, cu, NULL) == KVEC_ERROR_BAD_PLAN, "count above capacity");
}

/* Packed compaction: out of place and exactly in place over [head][tok][dim]. */
static void test_packed_compaction_equals_gather(void) {
    const int64_t L = 2, N = 150, Hk = 3, D = 16, W = 8, B = 30;
    int in_place;
    for (in_place = 0; in_place < 2; in_place++) {
        test_cache before, after;
        test_plan p;
        kvec_config c = policy_config(KVEC_POLICY_SNAPKV, W);
        int64_t l;
        int ok = 1;
        c.budget_mode = KVEC_BUDGET_ADAPTIVE;
        cache_init(&before, L, N, Hk, 2, D, W, KVEC_DTYPE_F16, HEAD_TOK_DIM, 11);
        cache_init(&after, L, N, Hk, 2, D, W, KVEC_DTYPE_F16, HEAD_TOK_DIM, 11);
        {   /* plan only: compact nothing yet */
            size_t bytes;
            void *scratch;
            float *scores = (float *)malloc(sizeof(float) * (size_t)(L * Hk * N));
            plan_init(&p, L, Hk, N);
            for (l = 0; l < L; l++) {
                kvec_layer_scratch_bytes(&c, &after.views[l], &bytes);
                scratch = malloc(bytes);
                kvec_score_layer(&c, &after.views[l], l, 0, NULL, scores + l * Hk * N, scratch, bytes);
                free(scratch);
            }
            bytes = kvec_select_scratch_bytes(&c, L, Hk, N);
            scratch = malloc(bytes);
            CHECK(kvec_select(&c, scores, L, Hk, N, B, &p.plan, scratch, bytes) == KVEC_OK, "select");
            free(scratch); free(scores);
        }
        for (l = 0; l < L; l++) {
            kvec_layer *v = &after.views[l];
            int32_t cu[4];
            unsigned char *kp = NULL, *vp = NULL;
            kvec_tensor pk = v->keys, pv = v->values;
            int64_t j, r, d;
            kvec_plan_offsets(&p.plan, l, cu, NULL);
            pk.n_heads = pv.n_heads = 1;
            pk.n_tokens = pv.n_tokens = cu[Hk];
            if (!in_place) {
                kp = (unsigned char *)malloc((size_t)(cu[Hk] * D * 2));
                vp = (unsigned char *)malloc((size_t)(cu[Hk] * D * 2));
                pk.data = kp; pv.data = vp;
            }
            ok &= kvec_compact_packed(v, &p.plan, l, &pk, &pv) == KVEC_OK;
            for (j = 0; j < Hk; j++) {
                const int64_t *pos = p.positions + (l * Hk + j) * N;
                for (r = 0; r < p.counts[l * Hk + j]; r++)
                    for (d = 0; d < D; d++) {
                        const test_layer *o = &before.layers[l];
                        ok &= fetch(element(&pk, cu[j] + r, 0, d), pk.dtype) == o->k[(pos[r] * Hk + j) * D + d];
                        ok &= fetch(element(&pv, cu[j] + r, 0, d), pv.dtype) == o->v[(pos[r] * Hk + j) * D + d];
                    }
            }
            free(kp); free(vp);
        }
        CHECK(ok, "%s packed compaction differs from a gather", in_place ? "in-place" : "out-of-place");
        plan_free(&p); cache_free(&before); cache_free(&after);
    }
    {   /* packing in place over a [tok][head][dim] layout would overwrite unread rows */
        test_cache c;
        test_plan p;
        kvec_tensor pk, pv;
        unsigned char *copy;
        int64_t h;
        cache_init(&c, 1, 50, 2, 1, 8, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 4);
        plan_init(&p, 1, 2, 50);
        for (h = 0; h < 2; h++) { int64_t r; p.counts[h] = 20; for (r = 0; r < 20; r++) p.positions[h * 50 + r] = 2 * r; }
        pk = c.views[0].keys; pv = c.views[0].values;
        pk.n_heads = pv.n_heads = 1; pk.n_tokens = pv.n_tokens = 40;
        pk.stride_token = pv.stride_token = 8 * 4;
        copy = (unsigned char *)malloc(c.layers[0].kbytes);
        memcpy(copy, c.layers[0].kb, c.layers[0].kbytes);
        CHECK(kvec_compact_packed(&c.views[0], &p.plan, 0, &pk, &pv) == KVEC_ERROR_OVERLAP, "overlap refused");
        CHECK(memcmp(copy, c.layers[0].kb, c.layers[0].kbytes) == 0, "refused packing leaves the keys alone");
        pv = pk;
        pk.data = copy;
        CHECK(kvec_compact_packed(&c.views[0], &p.plan, 0, &pk, &pv) == KVEC_ERROR_OVERLAP, "values packed onto keys refused");
        free(copy); plan_free(&p); cache_free(&c);
    }
}

static void test_global_one_and_two_threads_identical(void) {
#ifdef TEST_THREADS
    test_cache a, b;
    test_plan pa, pb;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    cfg.budget_mode = KVEC_BUDGET_GLOBAL;
    cache_init(&a, 3, 200, 4, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 6);
    cache_init(&b, 3, 200, 4, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 6);
    omp_set_num_threads(1);
    run_evict(&cfg, &a, 50, &pa);
    omp_set_num_threads(2);
    run_evict(&cfg, &b, 50, &pb);
    CHECK(plans_equal(&pa, &pb), "global plans differ between 1 and 2 threads");
    plan_free(&pa); plan_free(&pb); cache_free(&a); cache_free(&b);
#else
    if (!g_quiet) printf("skip test_global_one_and_two_threads_identical: built without OpenMP\n");
#endif
}

/* ---- tests: eviction during decoding -------------------------------------- */

/* A decoding cache of capacity rows per head: K and V [row][head][dim]
   fp32, dim 0 of every key and value row holding the row's position, so
   compaction can be checked against the state. */
typedef struct decode_cache {
    int64_t L, Hk, H, D, capacity;
    unsigned char **kb, **vb, **qb;
    kvec_layer *views;
    kvec_cache cache;
} decode_cache;

static void decode_cache_init(decode_cache *c, int64_t L, int64_t Hk, int64_t g, int64_t D, int64_t capacity,
                              int64_t window) {
    int64_t l;
    size_t bytes;
    c->L = L; c->Hk = Hk; c->H = Hk * g; c->D = D; c->capacity = capacity;
    c->kb = (unsigned char **)calloc((size_t)L, sizeof *c->kb);
    c->vb = (unsigned char **)calloc((size_t)L, sizeof *c->vb);
    c->qb = (unsigned char **)calloc((size_t)L, sizeof *c->qb);
    c->views = (kvec_layer *)calloc((size_t)L, sizeof *c->views);
    for (l = 0; l < L; l++) {
        int64_t i;
        float *q;
        c->views[l].keys = make_view(&c->kb[l], &bytes, KVEC_DTYPE_F32, TOK_HEAD_DIM, 0, capacity, Hk, D);
        c->views[l].values = make_view(&c->vb[l], &bytes, KVEC_DTYPE_F32, TOK_HEAD_DIM, 0, capacity, Hk, D);
        c->views[l].queries = make_view(&c->qb[l], &bytes, KVEC_DTYPE_F32, TOK_HEAD_DIM, 0, window, c->H, D);
        q = (float *)c->qb[l];
        for (i = 0; i < window * c->H * D; i++) q[i] = (float)normal();
    }
    c->cache.layers = c->views;
    c->cache.n_layers = L;
}

static void decode_cache_free(decode_cache *c) {
    int64_t l;
    for (l = 0; l < c->L; l++) { free(c->kb[l]); free(c->vb[l]); free(c->qb[l]); }
    free(c->kb); free(c->vb); free(c->qb); free(c->views);
}

/* Writes the token at `position` into row `row` of every head and layer. */
static void decode_cache_put(decode_cache *c, int64_t row, int64_t position) {
    int64_t l, j, d;
    for (l = 0; l < c->L; l++)
        for (j = 0; j < c->Hk; j++)
            for (d = 0; d < c->D; d++) {
                float k = d == 0 ? (float)position : (float)normal(), v = d == 0 ? (float)position : (float)normal();
                memcpy(element(&c->views[l].keys, row, j, d), &k, 4);
                memcpy(element(&c->views[l].values, row, j, d), &v, 4);
            }
}

static void decode_cache_rows(decode_cache *c, int64_t n_rows) {
    int64_t l;
    for (l = 0; l < c->L; l++) c->views[l].keys.n_tokens = c->views[l].values.n_tokens = n_rows;
}

/* Rows agree with the state: dim 0 of K and V is the state's position. */
static int decode_rows_match(decode_cache *c, const kvec_decode_state *s) {
    int64_t l, j, r;
    for (l = 0; l < c->L; l++)
        for (j = 0; j < c->Hk; j++)
            for (r = 0; r < s->n_rows; r++) {
                float k, v;
                const int64_t want = s->positions[(l * c->Hk + j) * s->capacity + r];
                memcpy(&k, element(&c->views[l].keys, r, j, 0), 4);
                memcpy(&v, element(&c->views[l].values, r, j, 0), 4);
                if (k != (float)want || v != (float)want) return 0;
            }
    return 1;
}

/* H2O while decoding: random attention observed token by token, evicted
   every 8 tokens; a naive model keeps (position, total) per row and
   selects by sorting. State, plan and rows must all agree with it. */
static void test_decode_h2o_state_equals_recomputation(void) {
    const int64_t L = 2, Hk = 2, g = 2, D = 8, C = 48, W = 4, B = 24, start = 20;
    decode_cache c;
    kvec_decode_state s;
    kvec_config cfg = policy_config(KVEC_POLICY_H2O, W);
    int64_t *pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)(L * Hk * C));
    float *acc = (float *)calloc((size_t)(L * Hk * C), sizeof(float));
    float *att = (float *)malloc(sizeof(float) * (size_t)(Hk * g * C));
    double *sd = (double *)malloc(sizeof(double) * (size_t)C);
    int64_t *kept = (int64_t *)malloc(sizeof(int64_t) * (size_t)C);
    size_t bytes, scratch_bytes;
    void *memory, *scratch;
    test_plan p;
    int64_t n = start, step, l, j, h, i, evictions = 0;
    int ok = 1, same_plan = 1, same_state = 1, same_rows = 1;
    decode_cache_init(&c, L, Hk, g, D, C, W);
    for (i = 0; i < start; i++) decode_cache_put(&c, i, i);
    for (i = 0; i < L * Hk * C; i++) pos[i] = i % C;
    CHECK(kvec_decode_state_bytes(L, Hk, C, &bytes) == KVEC_OK, "state bytes");
    memory = malloc(bytes);
    CHECK(kvec_decode_init(&s, memory, bytes, L, Hk, C, start, start, NULL) == KVEC_OK, "init");
    decode_cache_rows(&c, C);
    kvec_decode_scratch_bytes(&cfg, &c.cache, &scratch_bytes);
    scratch = malloc(scratch_bytes);
    plan_init(&p, L, Hk, B);
    for (step = 0; step < 100; step++) {
        const int64_t position = start + step;
        decode_cache_put(&c, n, position);
        ok &= kvec_decode_append(&s, 1) == KVEC_OK;
        for (l = 0; l < L * Hk; l++) { pos[l * C + n] = position; acc[l * C + n] = 0.0f; }
        n++;
        for (l = 0; l < L; l++) {
            for (h = 0; h < Hk * g; h++) { /* a softmax row over the n rows of the head */
                double z = 0.0;
                for (i = 0; i < n; i++) { att[h * C + i] = (float)exp(2.0 * normal()); z += att[h * C + i]; }
                for (i = 0; i < n; i++) att[h * C + i] = (float)(att[h * C + i] / z);
            }
            ok &= kvec_decode_observe(&s, l, att, Hk * g, C) == KVEC_OK;
            for (j = 0; j < Hk; j++)
                for (h = j * g; h < (j + 1) * g; h++)
                    for (i = 0; i < n; i++) acc[(l * Hk + j) * C + i] += att[h * C + i] * (1.0f / (float)g);
        }
        if (step % 8 == 7 && n > B) {
            decode_cache_rows(&c, n);
            ok &= kvec_decode_evict(&cfg, &s, &c.cache, NULL, B, &p.plan, scratch, scratch_bytes) == KVEC_OK;
            for (l = 0; l < L * Hk; l++) {
                int64_t count, r;
                for (i = 0; i < n; i++) sd[i] = acc[l * C + i];
                count = naive_select(sd, n, W, B, kept);
                same_plan &= count == p.counts[l];
                for (r = 0; r < count; r++) {
                    same_plan &= kept[r] == p.positions[l * B + r];
                    pos[l * C + r] = pos[l * C + kept[r]];
                    acc[l * C + r] = acc[l * C + kept[r]];
                }
            }
            n = B;
            evictions++;
            same_rows &= decode_rows_match(&c, &s);
        }
        same_state &= s.n_rows == n && s.next_position == position + 1;
        for (l = 0; l < L * Hk; l++)
            for (i = 0; i < n; i++)
                same_state &= s.positions[l * C + i] == pos[l * C + i] && s.attention[l * C + i] == acc[l * C + i];
    }
    CHECK(ok, "decode calls failed");
    CHECK(evictions == 12, "expected 12 evictions, saw %ld", (long)evictions);
    CHECK(same_plan, "H2O decode eviction differs from sorting the recomputed totals");
    CHECK(same_state, "decode state differs from recomputation from scratch");
    CHECK(same_rows, "compacted rows differ from the state's positions");
    free(pos); free(acc); free(att); free(sd); free(kept); free(memory); free(scratch);
    plan_free(&p); decode_cache_free(&c);
}

/* StreamingLLM, re-scoring SnapKV and K-VEC, and external scores, while decoding. */
static void test_decode_policies_keep_what_they_say(void) {
    const int64_t L = 2, Hk = 2, g = 2, D = 16, C = 80, W = 8, B = 40;
    static const kvec_policy policies[] = { KVEC_POLICY_STREAMING, KVEC_POLICY_SNAPKV, KVEC_POLICY_KVEC, KVEC_POLICY_RANDOM };
    size_t q;
    for (q = 0; q < 5; q++) {
        decode_cache c;
        kvec_decode_state s;
        kvec_config cfg = policy_config(q < 4 ? policies[q] : KVEC_POLICY_SNAPKV, W);
        float *scores = (float *)malloc(sizeof(float) * (size_t)(L * Hk * C));
        size_t bytes, scratch_bytes;
        void *memory, *scratch;
        test_plan p;
        int64_t n = B, step, i, l;
        int ok = 1, rows = 1, expected = 1;
        const char *name = q < 4 ? kvec_policy_name(policies[q]) : "external scores";
        decode_cache_init(&c, L, Hk, g, D, C, W);
        for (i = 0; i < B; i++) decode_cache_put(&c, i, i);
        kvec_decode_state_bytes(L, Hk, C, &bytes);
        memory = malloc(bytes);
        kvec_decode_init(&s, memory, bytes, L, Hk, C, B, B, NULL);
        decode_cache_rows(&c, C);
        kvec_decode_scratch_bytes(&cfg, &c.cache, &scratch_bytes);
        scratch = malloc(scratch_bytes);
        plan_init(&p, L, Hk, B);
        for (step = 0; step < 120; step++) {
            decode_cache_put(&c, n, B + step);
            ok &= kvec_decode_append(&s, 1) == KVEC_OK;
            n++;
            if (n == C) {
                decode_cache_rows(&c, n);
                for (l = 0; l < L * Hk; l++) /* external: newest first (score = position = -age) */
                    for (i = 0; i < n; i++) scores[l * n + i] = (float)s.positions[l * C + i];
                ok &= kvec_decode_evict(&cfg, &s, &c.cache, q == 4 ? scores : NULL, B, &p.plan, scratch,
                                        scratch_bytes) == KVEC_OK;
                n = B;
                rows &= decode_rows_match(&c, &s);
                for (l = 0; l < L * Hk; l++)
                    for (i = 0; i < B; i++) {
                        const int64_t at = s.positions[l * C + i], newest = s.next_position - 1;
                        if (q == 0) expected &= at == (i < 4 ? i : newest - (B - 1 - i));
                        if (q == 4) expected &= at == newest - (B - 1 - i);
                        if (i >= B - W) expected &= at == newest - (B - 1 - i); /* the recent buffer */
                        if (i > 0) expected &= at > s.positions[l * C + i - 1];
                    }
            }
        }
        CHECK(ok && s.n_rows == n, "%s: decode calls failed", name);
        CHECK(rows, "%s: rows differ from the state", name);
        CHECK(expected, "%s: kept positions are not what the policy keeps", name);
        free(scores); free(memory); free(scratch); plan_free(&p); decode_cache_free(&c);
    }
}

/* Learned retention while decoding: each token's gate per head decays with
   age; kvec's scores and kept rows equal a naive model's. */
static void test_decode_retention_gates(void) {
    const int64_t L = 2, Hk = 2, g = 1, D = 8, C = 40, W = 4, B = 20;
    decode_cache c;
    kvec_decode_state s;
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, W); /* the policy is replaced by the scores */
    float *gate = (float *)malloc(sizeof(float) * (size_t)(L * Hk * C)), fresh[2];
    float *scores = (float *)malloc(sizeof(float) * (size_t)(L * Hk * C));
    int64_t *pos = (int64_t *)malloc(sizeof(int64_t) * (size_t)(L * Hk * C)), kept[40];
    double sd[40];
    size_t bytes, scratch_bytes;
    void *memory, *scratch;
    test_plan p;
    int64_t n = 0, step, l, j, i;
    int ok = 1, same_scores = 1, same_kept = 1;
    decode_cache_init(&c, L, Hk, g, D, C, W);
    kvec_decode_state_bytes(L, Hk, C, &bytes);
    memory = malloc(bytes);
    kvec_decode_init(&s, memory, bytes, L, Hk, C, 0, 0, NULL);
    decode_cache_rows(&c, C);
    kvec_decode_scratch_bytes(&cfg, &c.cache, &scratch_bytes);
    scratch = malloc(scratch_bytes);
    plan_init(&p, L, Hk, B);
    for (step = 0; step < 90; step++) {
        decode_cache_put(&c, n, step);
        ok &= kvec_decode_append(&s, 1) == KVEC_OK;
        for (l = 0; l < L; l++) {
            for (j = 0; j < Hk; j++) {
                fresh[j] = (float)log(0.01 + 0.99 * uniform());
                gate[(l * Hk + j) * C + n] = fresh[j];
                pos[(l * Hk + j) * C + n] = step;
            }
            ok &= kvec_decode_retention(&s, l, fresh, 1) == KVEC_OK;
        }
        n++;
        if (n == C) {
            ok &= kvec_decode_retention_scores(&s, scores) == KVEC_OK;
            for (l = 0; l < L * Hk; l++)
                for (i = 0; i < n; i++)
                    same_scores &= scores[l * n + i] == gate[l * C + i] * (float)(step - pos[l * C + i]);
            decode_cache_rows(&c, n);
            ok &= kvec_decode_evict(&cfg, &s, &c.cache, scores, B, &p.plan, scratch, scratch_bytes) == KVEC_OK;
            for (l = 0; l < L * Hk; l++) {
                int64_t count, r;
                for (i = 0; i < n; i++) sd[i] = gate[l * C + i] * (float)(step - pos[l * C + i]);
                count = naive_select(sd, n, W, B, kept);
                for (r = 0; r < count; r++) {
                    gate[l * C + r] = gate[l * C + kept[r]];
                    pos[l * C + r] = pos[l * C + kept[r]];
                    same_kept &= s.positions[l * C + r] == pos[l * C + r] && s.retention[l * C + r] == gate[l * C + r];
                }
            }
            n = B;
        }
    }
    CHECK(ok, "retention calls failed");
    CHECK(same_scores, "decayed retention scores differ from log_retention * age");
    CHECK(same_kept, "rows kept by retention differ from the naive model");
    CHECK(kvec_decode_retention(&s, 0, fresh, s.n_rows + 1) == KVEC_ERROR_BAD_EXTENT, "more gates than rows");
    fresh[0] = NAN;
    CHECK(kvec_decode_retention(&s, 0, fresh, 1) == KVEC_ERROR_NON_FINITE, "NaN gate");
    free(gate); free(scores); free(pos); free(memory); free(scratch); plan_free(&p); decode_cache_free(&c);
}

static void test_decode_errors_touch_nothing(void) {
    decode_cache c;
    kvec_decode_state s, before;
    kvec_config cfg = policy_config(KVEC_POLICY_H2O, 4);
    float att[4 * 16];
    size_t bytes, scratch_bytes;
    void *memory, *scratch;
    unsigned char *copy;
    test_plan p;
    int64_t i;
    decode_cache_init(&c, 1, 2, 2, 8, 16, 4);
    for (i = 0; i < 16; i++) decode_cache_put(&c, i, i);
    decode_cache_rows(&c, 16);
    kvec_decode_scratch_bytes(&cfg, &c.cache, &scratch_bytes);
    scratch = malloc(scratch_bytes);
    kvec_decode_state_bytes(1, 2, 16, &bytes);
    memory = malloc(bytes);
    CHECK(kvec_decode_init(&s, memory, bytes - 1, 1, 2, 16, 10, 10, NULL) == KVEC_ERROR_SCRATCH_TOO_SMALL, "init: memory");
    CHECK(kvec_decode_init(&s, memory, bytes, 1, 2, 16, 17, 17, NULL) == KVEC_ERROR_BAD_EXTENT, "init: rows above capacity");
    CHECK(kvec_decode_init(&s, memory, bytes, 1, 2, 16, 10, 10, NULL) == KVEC_OK, "init");
    copy = (unsigned char *)malloc(bytes);
    memcpy(copy, memory, bytes);
    before = s;
    CHECK(kvec_decode_append(&s, 7) == KVEC_ERROR_STATE_MISMATCH, "append past capacity");
    for (i = 0; i < 4 * 16; i++) att[i] = 0.1f;
    att[17] = NAN;
    CHECK(kvec_decode_observe(&s, 0, att, 4, 16) == KVEC_ERROR_NON_FINITE, "NaN attention");
    CHECK(kvec_decode_observe(&s, 1, att, 4, 16) == KVEC_ERROR_BAD_LAYER_INDEX, "layer index");
    CHECK(kvec_decode_observe(&s, 0, att, 3, 16) == KVEC_ERROR_SHAPE_MISMATCH, "query heads not a multiple");
    plan_init(&p, 1, 2, 16);
    decode_cache_rows(&c, 12);
    CHECK(kvec_decode_evict(&cfg, &s, &c.cache, NULL, 8, &p.plan, scratch, scratch_bytes) == KVEC_ERROR_STATE_MISMATCH,
          "cache rows differ from the state's");
    decode_cache_rows(&c, 10);
    cfg.budget_mode = KVEC_BUDGET_PYRAMID;
    CHECK(kvec_decode_evict(&cfg, &s, &c.cache, NULL, 8, &p.plan, scratch, scratch_bytes) == KVEC_ERROR_BAD_CONFIG,
          "decoding keeps heads equal: pyramid budgets refused");
    cfg.budget_mode = KVEC_BUDGET_UNIFORM;
    CHECK(kvec_decode_evict(&cfg, &s, &c.cache, NULL, 3, &p.plan, scratch, scratch_bytes) == KVEC_ERROR_BUDGET_BELOW_WINDOW,
          "budget below the recent buffer");
    CHECK(memcmp(copy, memory, bytes) == 0 && s.n_rows == before.n_rows && s.next_position == before.next_position,
          "errors leave the state alone");
    CHECK(kvec_decode_evict(&cfg, &s, &c.cache, NULL, 8, &p.plan, scratch, scratch_bytes) == KVEC_OK && s.n_rows == 8,
          "then a valid eviction works");
    free(memory); free(copy); free(scratch); plan_free(&p); decode_cache_free(&c);
}

/* ---- tests: errors leave everything untouched ----------------------------- */

typedef struct snapshot { unsigned char *bytes[8]; size_t sizes[8]; int n; } snapshot;

static void snap(snapshot *s, test_cache *c, test_plan *p) {
    int64_t l;
    s->n = 0;
    for (l = 0; l < c->n_layers && s->n < 6; l++) {
        s->bytes[s->n] = (unsigned char *)malloc(c->layers[l].kbytes); memcpy(s->bytes[s->n], c->layers[l].kb, c->layers[l].kbytes); s->sizes[s->n++] = c->layers[l].kbytes;
        s->bytes[s->n] = (unsigned char *)malloc(c->layers[l].vbytes); memcpy(s->bytes[s->n], c->layers[l].vb, c->layers[l].vbytes); s->sizes[s->n++] = c->layers[l].vbytes;
    }
    s->sizes[6] = sizeof(int64_t) * (size_t)(p->plan.n_layers * p->plan.n_kv_heads);
    s->bytes[6] = (unsigned char *)malloc(s->sizes[6]); memcpy(s->bytes[6], p->counts, s->sizes[6]);
}
static int unchanged(const snapshot *s, test_cache *c, test_plan *p) {
    int64_t l;
    int i = 0, ok = 1;
    for (l = 0; l < c->n_layers && i < 6; l++) {
        ok &= memcmp(s->bytes[i++], c->layers[l].kb, c->layers[l].kbytes) == 0;
        ok &= memcmp(s->bytes[i++], c->layers[l].vb, c->layers[l].vbytes) == 0;
    }
    ok &= memcmp(s->bytes[6], p->counts, s->sizes[6]) == 0;
    return ok;
}
static void snap_free(snapshot *s) { int i; for (i = 0; i < s->n; i++) free(s->bytes[i]); free(s->bytes[6]); }

/* Runs kvec_evict_ex on a fresh 3-layer cache after `spoil` changed one
   thing, and checks the error and that nothing was written. */
typedef void (*spoiler)(test_cache *c, kvec_config *cfg, int64_t *budget, test_plan *p, size_t *scratch_bytes);

static void expect_error(const char *what, spoiler spoil, kvec_result expected) {
    test_cache c;
    test_plan p;
    snapshot s;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    int64_t budget = 30, capacity;
    size_t bytes;
    void *scratch;
    kvec_result r;
    cache_init(&c, 3, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 13);
    kvec_plan_capacity(&cfg, budget, 3, 100, &capacity);
    kvec_scratch_bytes(&cfg, &c.cache, 1, &bytes);
    plan_init(&p, 3, 2, capacity);
    scratch = malloc(bytes);
    spoil(&c, &cfg, &budget, &p, &bytes);
    snap(&s, &c, &p);
    r = kvec_evict_ex(&cfg, &c.cache, budget, &p.plan, scratch, bytes);
    CHECK(r == expected, "%s: expected %s, got %s", what, kvec_result_string(expected), kvec_result_string(r));
    CHECK(unchanged(&s, &c, &p), "%s: the cache or plan changed on error", what);
    snap_free(&s); free(scratch); plan_free(&p); cache_free(&c);
}

static void spoil_null_keys(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[1].keys.data = NULL; }
static void spoil_zero_tokens(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[0].values.head_dim = 0; }
static void spoil_negative_heads(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[2].keys.n_heads = -2; }
static void spoil_negative_stride(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[1].values.stride_head = -32; }
static void spoil_overlap(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[1].keys.stride_token = 16; /* < a row of 2 heads */ }
static void spoil_misaligned(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[2].keys.stride_token += 1; }
static void spoil_dtype(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[0].keys.dtype = KVEC_DTYPE_UNSET; }
static void spoil_v_shape(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[2].values.n_tokens = 99; }
static void spoil_q_shape(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[2].queries.head_dim = 8; }
static void spoil_budget(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)f; (void)p; (void)s; *b = 7; }
static void spoil_scratch(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)f; (void)b; (void)p; *s -= 1; }
static void spoil_nan_key_last_layer(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) {
    uint16_t nan = 0x7e00; (void)f; (void)b; (void)p; (void)s;
    memcpy(element(&c->views[2].keys, 57, 1, 3), &nan, 2);
}
static void spoil_inf_query(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) {
    float inf = INFINITY; (void)f; (void)b; (void)p; (void)s;
    memcpy(element(&c->views[2].queries, 7, 3, 0), &inf, 4);
}
static void spoil_no_queries(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[1].queries.data = NULL; }
static void spoil_few_queries(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->views[0].queries.n_tokens = 4; }
static void spoil_even_kernel(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)b; (void)p; (void)s; f->pool_kernel = 4; }
static void spoil_policy(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)b; (void)p; (void)s; f->policy = (kvec_policy)42; }
static void spoil_plan_capacity(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)f; (void)b; (void)s; p->plan.capacity -= 1; }
static void spoil_plan_layers(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)c; (void)f; (void)b; (void)s; p->plan.n_layers = 2; }
static void spoil_layers(test_cache *c, kvec_config *f, int64_t *b, test_plan *p, size_t *s) { (void)f; (void)b; (void)p; (void)s; c->cache.n_layers = 0; }

static void test_bad_inputs_return_errors_and_touch_nothing(void) {
    expect_error("NULL keys", spoil_null_keys, KVEC_ERROR_NULL_POINTER);
    expect_error("zero head_dim", spoil_zero_tokens, KVEC_ERROR_BAD_EXTENT);
    expect_error("negative heads", spoil_negative_heads, KVEC_ERROR_BAD_EXTENT);
    expect_error("negative stride", spoil_negative_stride, KVEC_ERROR_BAD_STRIDE);
    expect_error("overlapping rows", spoil_overlap, KVEC_ERROR_BAD_STRIDE);
    expect_error("misaligned stride", spoil_misaligned, KVEC_ERROR_MISALIGNED);
    expect_error("unset dtype", spoil_dtype, KVEC_ERROR_BAD_DTYPE);
    expect_error("V shape", spoil_v_shape, KVEC_ERROR_SHAPE_MISMATCH);
    expect_error("Q shape", spoil_q_shape, KVEC_ERROR_SHAPE_MISMATCH);
    expect_error("budget < window", spoil_budget, KVEC_ERROR_BUDGET_BELOW_WINDOW);
    expect_error("scratch too small", spoil_scratch, KVEC_ERROR_SCRATCH_TOO_SMALL);
    expect_error("NaN key in the last layer", spoil_nan_key_last_layer, KVEC_ERROR_NON_FINITE);
    expect_error("Inf query in the last layer", spoil_inf_query, KVEC_ERROR_NON_FINITE);
    expect_error("no queries", spoil_no_queries, KVEC_ERROR_MISSING_QUERIES);
    expect_error("too few query rows", spoil_few_queries, KVEC_ERROR_MISSING_QUERIES);
    expect_error("even pool kernel", spoil_even_kernel, KVEC_ERROR_BAD_CONFIG);
    expect_error("unknown policy", spoil_policy, KVEC_ERROR_BAD_CONFIG);
    expect_error("plan capacity", spoil_plan_capacity, KVEC_ERROR_PLAN_TOO_SMALL);
    expect_error("plan layers", spoil_plan_layers, KVEC_ERROR_PLAN_TOO_SMALL);
    expect_error("zero layers", spoil_layers, KVEC_ERROR_BAD_EXTENT);
}

static void test_per_layer_errors_touch_nothing(void) {
    test_cache c;
    test_plan p;
    snapshot s;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    kvec_coverage cov;
    uint8_t cov_mem[100], cov_copy[100];
    size_t bytes;
    void *scratch;
    uint16_t nan = 0x7e00;
    cache_init(&c, 3, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 17);
    plan_init(&p, 3, 2, 30);
    kvec_layer_scratch_bytes(&cfg, &c.views[0], &bytes);
    scratch = malloc(bytes);
    kvec_coverage_init(&cov, cov_mem, sizeof cov_mem, 100);
    snap(&s, &c, &p);
    memcpy(cov_copy, cov_mem, sizeof cov_mem);
    CHECK(kvec_evict_layer(&cfg, &c.views[0], 3, 3, 30, &cov, &p.plan, scratch, bytes) == KVEC_ERROR_BAD_LAYER_INDEX, "layer index");
    CHECK(kvec_evict_layer(&cfg, &c.views[1], 1, 3, 30, &cov, &p.plan, scratch, bytes) == KVEC_ERROR_BAD_COVERAGE, "out of order");
    cfg.terms.enabled = KVEC_TERM_CROSS_LAYER;
    CHECK(kvec_evict_layer(&cfg, &c.views[0], 0, 3, 30, NULL, &p.plan, scratch, bytes) == KVEC_ERROR_BAD_COVERAGE, "cross-layer needs coverage");
    cov.n_tokens = 99;
    CHECK(kvec_evict_layer(&cfg, &c.views[0], 0, 3, 30, &cov, &p.plan, scratch, bytes) == KVEC_ERROR_BAD_COVERAGE, "coverage for another length");
    cov.n_tokens = 100;
    memcpy(element(&c.views[0].keys, 3, 0, 0), &nan, 2);
    memcpy(s.bytes[0] + ((char *)element(&c.views[0].keys, 3, 0, 0) - (char *)c.layers[0].kb), &nan, 2);
    CHECK(kvec_evict_layer(&cfg, &c.views[0], 0, 3, 30, &cov, &p.plan, scratch, bytes) == KVEC_ERROR_NON_FINITE, "NaN key");
    CHECK(unchanged(&s, &c, &p) && memcmp(cov_copy, cov_mem, sizeof cov_mem) == 0 && cov.next_layer == 0,
          "per-layer errors must leave cache, plan and coverage untouched");
    {   /* compaction refuses a plan that is not strictly ascending */
        p.counts[0] = 3; p.positions[0] = 5; p.positions[1] = 5; p.positions[2] = 9;
        p.counts[1] = 0;
        CHECK(kvec_compact_layer(&c.views[1], &p.plan, 0) == KVEC_ERROR_BAD_PLAN, "bad plan");
        p.positions[1] = 100;
        CHECK(kvec_compact_layer(&c.views[1], &p.plan, 0) == KVEC_ERROR_BAD_PLAN, "position out of range");
        CHECK(memcmp(s.bytes[2], c.layers[1].kb, c.layers[1].kbytes) == 0, "a refused plan moves nothing");
    }
    snap_free(&s); free(scratch); plan_free(&p); cache_free(&c);
}

/* ---- tests: hostile arguments --------------------------------------------- */

/* A view over no memory (nothing is read): descriptors only. */
static kvec_tensor fake_view(uintptr_t address, kvec_dtype t, int64_t n_tok, int64_t n_head, int64_t dim) {
    kvec_tensor v = kvec_tensor_contiguous((void *)address, t, n_tok, n_head, dim);
    return v;
}

static void test_validation_never_overflows(void) {
    static float two[2];
    kvec_tensor t = fake_view((uintptr_t)two, KVEC_DTYPE_F32, 2, 1, 1);
    t.stride_token = (int64_t)1 << 62; /* stride * extent is past int64; the span is not */
    CHECK(kvec_validate_tensor(&t) == KVEC_OK, "two tokens 2^62 bytes apart are a valid description");
    t = fake_view((uintptr_t)two, KVEC_DTYPE_F32, 3, 1, 1);
    t.stride_token = (int64_t)1 << 62;
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_SIZE_OVERFLOW, "three tokens 2^62 apart: the span overflows");
    t = kvec_tensor_contiguous(two, KVEC_DTYPE_F32, 4, (int64_t)1 << 40, (int64_t)1 << 40);
    CHECK(t.stride_token < 0 && kvec_validate_tensor(&t) == KVEC_ERROR_BAD_STRIDE,
          "kvec_tensor_contiguous with overflowing strides gives a view validation refuses");
}

static void test_addresses_never_wrap(void) {
    kvec_tensor t = fake_view((uintptr_t)UINT64_C(0xffffffffffffffc0), KVEC_DTYPE_F32, 1000, 1, 1);
    float scores[4];
    kvec_plan plan;
    int64_t counts[2] = { 1, 1 };
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_SIZE_OVERFLOW, "a view past the end of the address space");
    t.n_tokens = 16; /* the last byte is exactly the last address */
    CHECK(kvec_validate_tensor(&t) == KVEC_OK, "a view ending at the last address");
    plan.n_layers = 1; plan.n_kv_heads = 2; plan.capacity = 1;
    plan.kept_count = counts;
    plan.kept_positions = (int64_t *)(uintptr_t)UINT64_C(0xfffffffffffffff8);
    CHECK(kvec_plan_mask(&plan, 0, 2, scores) == KVEC_ERROR_SIZE_OVERFLOW, "plan positions that wrap");
}

static void test_pyramid_budget_of_huge_lengths(void) {
    kvec_config cfg = policy_config(KVEC_POLICY_PYRAMIDKV, 0);
    int64_t b0 = 0, b1 = 0, capacity = 0;
    const int64_t N = INT64_MAX, B = INT64_MAX - 1;
    CHECK(kvec_layer_budget(&cfg, B, 0, 2, N, &b0) == KVEC_OK && kvec_layer_budget(&cfg, B, 1, 2, N, &b1) == KVEC_OK,
          "layer budgets of a huge cache");
    CHECK(b0 == B && b1 == B, "N < 2F: every layer keeps B (got %lld, %lld)", (long long)b0, (long long)b1);
    CHECK(kvec_plan_capacity(&cfg, B, 2, N, &capacity) == KVEC_OK && capacity == B, "capacity B");
    CHECK(kvec_plan_capacity(&cfg, 64, INT64_MAX, 1000, &capacity) == KVEC_OK && capacity > 0,
          "capacity of INT64_MAX layers is found without a loop over them");
}

static void test_select_scratch_of_huge_pools(void) {
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, 0);
    cfg.budget_mode = KVEC_BUDGET_GLOBAL;
    CHECK(kvec_select_scratch_bytes(&cfg, INT64_MAX / 2, 4, 1) == 0, "L * Hk overflows: 0 (bad arguments)");
    CHECK(kvec_select_scratch_bytes(&cfg, 3, 2, 10) == 60, "and the ordinary case");
}

static void test_plan_offsets_never_overflow(void) {
    int64_t counts[2] = { 1, INT64_MAX }, positions[1] = { 0 }, longest = 0;
    int32_t cu[3];
    kvec_plan plan;
    plan.n_layers = 1; plan.n_kv_heads = 2; plan.capacity = INT64_MAX;
    plan.kept_count = counts; plan.kept_positions = positions;
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_ERROR_SIZE_OVERFLOW,
          "a plan whose positions cannot exist is refused");
    plan.capacity = (int64_t)1 << 31; /* positions never read here: a place they could be, apart from the counts */
    plan.kept_positions = (int64_t *)(uintptr_t)0x100000;
    counts[0] = INT32_MAX; counts[1] = 1;
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_ERROR_SIZE_OVERFLOW, "offsets past int32");
    counts[0] = INT32_MAX - 1;
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_OK && cu[2] == INT32_MAX, "offsets up to int32");
}

static void test_plan_descriptors_are_checked(void) {
    int64_t counts[4] = { 1, 1, 1, 1 }, positions[4] = { 0 }, longest;
    int32_t cu[5];
    float mask[8];
    kvec_plan plan;
    plan.n_layers = 1; plan.n_kv_heads = -1; plan.capacity = 1;
    plan.kept_count = counts; plan.kept_positions = positions;
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_ERROR_BAD_EXTENT, "offsets: negative heads");
    CHECK(kvec_plan_mask(&plan, 0, 2, mask) == KVEC_ERROR_BAD_EXTENT, "mask: negative heads");
    plan.n_kv_heads = 2; plan.n_layers = 0;
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_ERROR_BAD_EXTENT, "offsets: no layers");
    plan.n_layers = 1; plan.capacity = -1;
    CHECK(kvec_plan_mask(&plan, 0, 2, mask) == KVEC_ERROR_BAD_EXTENT, "mask: negative capacity");
    plan.capacity = 1;
    CHECK(kvec_plan_mask(&plan, 0, -1, mask) == KVEC_ERROR_BAD_EXTENT, "mask: negative rows");
    CHECK(kvec_plan_mask(&plan, 0, 2, (float *)(void *)counts) == KVEC_ERROR_OVERLAP, "mask over the counts");
    CHECK(kvec_plan_offsets(&plan, 0, cu, &longest) == KVEC_OK && cu[2] == 2, "and a good plan");
}

static void test_scratch_queries_of_huge_caches(void) {
    static uint16_t tiny[4];
    kvec_layer layers[4];
    kvec_cache cache;
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, 0);
    size_t bytes = 0;
    int l;
    for (l = 0; l < 4; l++) { /* 2^61 tokens of 2 bytes: a valid description */
        layers[l].keys = fake_view((uintptr_t)tiny, KVEC_DTYPE_F16, (int64_t)1 << 61, 1, 1);
        layers[l].values = layers[l].keys;
        memset(&layers[l].queries, 0, sizeof layers[l].queries);
        memset(&layers[l].out_proj, 0, sizeof layers[l].out_proj);
    }
    cache.layers = layers; cache.n_layers = 4;
    cfg.budget_mode = KVEC_BUDGET_GLOBAL;
    CHECK(kvec_scratch_bytes(&cfg, &cache, 1, &bytes) == KVEC_ERROR_SIZE_OVERFLOW, "global pool of 4 * 2^61 scores");
    layers[0].keys = fake_view((uintptr_t)tiny, KVEC_DTYPE_F32, 1, 1, (int64_t)1 << 57);
    layers[0].values = layers[0].keys;
    CHECK(kvec_layer_scratch_bytes(&cfg, &layers[0], &bytes) == KVEC_ERROR_SIZE_OVERFLOW, "head_dim 2^57");
}

static void test_head_focus_window_never_overflows(void) {
    static uint16_t tiny[4];
    static float q[4];
    kvec_layer layer;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, ((int64_t)1 << 61) + 1);
    float scores[4];
    cfg.terms.enabled = KVEC_TERM_HEAD_FOCUS;
    layer.keys = fake_view((uintptr_t)tiny, KVEC_DTYPE_F16, ((int64_t)1 << 61) + 2, 1, 1);
    layer.values = layer.keys;
    layer.queries = kvec_tensor_contiguous(q, KVEC_DTYPE_F32, 1, 1, 1);
    memset(&layer.out_proj, 0, sizeof layer.out_proj);
    CHECK(kvec_score_layer(&cfg, &layer, 0, 0, NULL, scores, scores, sizeof scores) == KVEC_ERROR_MISSING_QUERIES,
          "4W past int64: the policy needs every row, and one was given");
}

/* A state from kvec_decode_init, with one field spoiled afterwards. */
static void test_decode_state_is_validated(void) {
    kvec_decode_state s, good;
    size_t bytes;
    void *memory;
    float att[8] = { 0 }, scores[64];
    kvec_decode_state_bytes(1, 2, 4, &bytes);
    memory = malloc(bytes);
    CHECK(kvec_decode_init(&s, memory, bytes, 1, 2, 4, 2, INT64_MAX, NULL) == KVEC_OK, "init near the last position");
    good = s;
    CHECK(kvec_decode_append(&s, 1) == KVEC_ERROR_SIZE_OVERFLOW && s.next_position == INT64_MAX && s.n_rows == 2,
          "a position past int64 is refused and nothing moves");
    CHECK(kvec_decode_append(&s, 0) == KVEC_OK, "appending nothing is fine");
    s = good; s.n_kv_heads = 0;
    CHECK(kvec_decode_observe(&s, 0, att, 2, 4) == KVEC_ERROR_STATE_MISMATCH, "observe: zero heads (was a division by zero)");
    CHECK(kvec_decode_append(&s, 1) == KVEC_ERROR_STATE_MISMATCH, "append: zero heads");
    CHECK(kvec_decode_retention(&s, 0, att, 1) == KVEC_ERROR_STATE_MISMATCH, "retention: zero heads");
    CHECK(kvec_decode_retention_scores(&s, scores) == KVEC_ERROR_STATE_MISMATCH, "retention scores: zero heads");
    s = good; s.n_rows = 5;
    CHECK(kvec_decode_append(&s, 0) == KVEC_ERROR_STATE_MISMATCH, "rows above capacity");
    s = good; s.next_position = 1;
    CHECK(kvec_decode_observe(&s, 0, att, 2, 4) == KVEC_ERROR_STATE_MISMATCH, "next position below the rows");
    s = good; s.capacity = INT64_MAX;
    CHECK(kvec_decode_append(&s, 0) == KVEC_ERROR_SIZE_OVERFLOW, "arrays that cannot exist");
    s = good; s.attention = (float *)(void *)s.positions;
    CHECK(kvec_decode_append(&s, 0) == KVEC_ERROR_OVERLAP, "arrays that overlap");
    s = good;
    CHECK(kvec_decode_observe(&s, 0, s.attention, 2, 4) == KVEC_ERROR_OVERLAP, "attention read from the state's own rows");
    CHECK(kvec_decode_observe(&s, 0, att, (int64_t)1 << 40, (int64_t)1 << 40) == KVEC_ERROR_SIZE_OVERFLOW,
          "an attention matrix whose size overflows");
    CHECK(kvec_decode_retention_scores(&s, scores) == KVEC_OK, "the state itself is fine");
    free(memory);
}

/* kvec_evict_ex and kvec_evict_batch without a plan give what they give with one. */
static void test_evict_without_a_plan(void) {
    static const kvec_budget_mode modes[4] = { KVEC_BUDGET_UNIFORM, KVEC_BUDGET_PYRAMID, KVEC_BUDGET_ADAPTIVE,
                                               KVEC_BUDGET_GLOBAL };
    int m, ok_results = 1, ok_bytes = 1;
    for (m = 0; m < 4; m++) {
        test_cache a, b, batch[2];
        test_plan p;
        kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
        size_t bytes;
        void *scratch;
        int64_t l;
        cfg.budget_mode = modes[m];
        if (m == 0) cfg.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER | KVEC_TERM_RANK_UNION;
        cache_init(&a, 3, 150, 2, 2, 16, 8, KVEC_DTYPE_F16, HEAD_TOK_DIM, 40 + (uint64_t)m);
        cache_init(&b, 3, 150, 2, 2, 16, 8, KVEC_DTYPE_F16, HEAD_TOK_DIM, 40 + (uint64_t)m);
        cache_init(&batch[0], 3, 150, 2, 2, 16, 8, KVEC_DTYPE_F16, HEAD_TOK_DIM, 40 + (uint64_t)m);
        cache_init(&batch[1], 3, 150, 2, 2, 16, 8, KVEC_DTYPE_F16, HEAD_TOK_DIM, 40 + (uint64_t)m);
        ok_results &= run_evict(&cfg, &a, 40, &p) == KVEC_OK;
        kvec_scratch_bytes(&cfg, &b.cache, 1, &bytes);
        scratch = malloc(bytes);
        ok_results &= kvec_evict_ex(&cfg, &b.cache, 40, NULL, scratch, bytes) == KVEC_OK;
        {
            kvec_cache both[2];
            size_t batch_bytes;
            both[0] = batch[0].cache; both[1] = batch[1].cache;
            kvec_scratch_bytes(&cfg, both, 2, &batch_bytes);
            free(scratch);
            scratch = malloc(batch_bytes);
            ok_results &= kvec_evict_batch(&cfg, both, 2, 40, NULL, scratch, batch_bytes) == KVEC_OK;
        }
        for (l = 0; l < 3; l++) {
            ok_bytes &= memcmp(a.layers[l].kb, b.layers[l].kb, a.layers[l].kbytes) == 0;
            ok_bytes &= memcmp(a.layers[l].vb, b.layers[l].vb, a.layers[l].vbytes) == 0;
            ok_bytes &= memcmp(a.layers[l].kb, batch[1].layers[l].kb, a.layers[l].kbytes) == 0;
        }
        free(scratch); plan_free(&p); cache_free(&a); cache_free(&b); cache_free(&batch[0]); cache_free(&batch[1]);
    }
    CHECK(ok_results, "a NULL plan is accepted by kvec_evict_ex and kvec_evict_batch");
    CHECK(ok_bytes, "and compacts exactly what a plan would have, in every budget mode");
}

static void test_cache_inside_the_scratch_is_refused(void) {
    test_cache c;
    test_plan p;
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, 8);
    size_t bytes;
    int64_t capacity;
    unsigned char *arena, *copy;
    uint16_t nan = 0x7e00;
    kvec_tensor *k;
    cache_init(&c, 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 21);
    kvec_plan_capacity(&cfg, 30, 2, 100, &capacity);
    plan_init(&p, 2, 2, capacity);
    kvec_scratch_bytes(&cfg, &c.cache, 1, &bytes);
    arena = (unsigned char *)malloc(bytes + c.layers[0].kbytes);
    /* layer 0's keys live at the start of the scratch; layer 1 has a NaN key */
    k = &c.views[0].keys;
    k->data = arena;
    memcpy(k->data, c.layers[0].kb, c.layers[0].kbytes);
    memcpy(element(&c.views[1].keys, 10, 1, 2), &nan, 2);
    copy = (unsigned char *)malloc(c.layers[0].kbytes);
    memcpy(copy, k->data, c.layers[0].kbytes);
    CHECK(kvec_evict_ex(&cfg, &c.cache, 30, &p.plan, arena, bytes) == KVEC_ERROR_OVERLAP, "keys inside the scratch");
    CHECK(memcmp(copy, k->data, c.layers[0].kbytes) == 0, "and the keys are untouched");
    free(copy); free(arena); plan_free(&p); cache_free(&c);
}

static void test_batch_plans_sharing_memory_are_refused(void) {
    test_cache c[2];
    test_plan p[2];
    kvec_cache both[2];
    kvec_plan plans[2];
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, 8);
    snapshot s0, s1;
    size_t bytes;
    void *scratch;
    int64_t capacity;
    cache_init(&c[0], 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 22);
    cache_init(&c[1], 2, 120, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 23);
    both[0] = c[0].cache; both[1] = c[1].cache;
    kvec_plan_capacity(&cfg, 30, 2, 120, &capacity);
    plan_init(&p[0], 2, 2, capacity);
    plan_init(&p[1], 2, 2, capacity);
    plans[0] = p[0].plan; plans[1] = p[1].plan;
    plans[1].kept_positions = plans[0].kept_positions; /* one positions array for both */
    kvec_scratch_bytes(&cfg, both, 2, &bytes);
    scratch = malloc(bytes);
    snap(&s0, &c[0], &p[0]); snap(&s1, &c[1], &p[1]);
    CHECK(kvec_evict_batch(&cfg, both, 2, 30, plans, scratch, bytes) == KVEC_ERROR_OVERLAP, "two plans, one array");
    CHECK(unchanged(&s0, &c[0], &p[0]) && unchanged(&s1, &c[1], &p[1]), "nothing written");
    plans[1] = p[1].plan;
    both[1].layers = both[0].layers; /* the same cache twice */
    CHECK(kvec_evict_batch(&cfg, both, 2, 30, plans, scratch, bytes) == KVEC_ERROR_OVERLAP, "one cache twice");
    CHECK(unchanged(&s0, &c[0], &p[0]), "nothing written");
    snap_free(&s0); snap_free(&s1); free(scratch);
    plan_free(&p[0]); plan_free(&p[1]); cache_free(&c[0]); cache_free(&c[1]);
}

/* K and V in one buffer: the same memory is refused, interleaved halves work. */
static void test_keys_and_values_sharing_memory(void) {
    const int64_t N = 90, Hk = 2, D = 8, W = 8, budget = 24, e = 4;
    test_cache ref;
    test_plan p, q;
    kvec_config cfg = policy_config(KVEC_POLICY_SNAPKV, W);
    kvec_layer layer;
    kvec_cache fused;
    size_t bytes;
    void *scratch;
    float *buffer = (float *)calloc((size_t)(N * 2 * Hk * D), sizeof(float));
    int64_t t, j, d, capacity, ok = 1;
    snapshot s;
    cache_init(&ref, 1, N, Hk, 2, D, W, KVEC_DTYPE_F32, TOK_HEAD_DIM, 24);
    /* [token][K or V][head][dim] */
    layer = ref.views[0];
    layer.keys.data = buffer;
    layer.keys.stride_token = layer.values.stride_token = 2 * Hk * D * e;
    layer.values.data = buffer + Hk * D;
    for (t = 0; t < N; t++)
        for (j = 0; j < Hk; j++)
            for (d = 0; d < D; d++) {
                memcpy(element(&layer.keys, t, j, d), element(&ref.views[0].keys, t, j, d), 4);
                memcpy(element(&layer.values, t, j, d), element(&ref.views[0].values, t, j, d), 4);
            }
    fused.layers = &layer; fused.n_layers = 1;
    kvec_plan_capacity(&cfg, budget, 1, N, &capacity);
    plan_init(&q, 1, Hk, capacity);
    kvec_scratch_bytes(&cfg, &fused, 1, &bytes);
    scratch = malloc(bytes);
    CHECK(kvec_evict_ex(&cfg, &fused, budget, &q.plan, scratch, bytes) == KVEC_OK, "interleaved K and V are accepted");
    CHECK(run_evict(&cfg, &ref, budget, &p) == KVEC_OK && plans_equal(&p, &q), "and select what separate buffers select");
    for (t = 0; t < budget; t++)
        for (j = 0; j < Hk; j++)
            for (d = 0; d < D; d++) {
                ok &= memcmp(element(&layer.keys, t, j, d), element(&ref.views[0].keys, t, j, d), 4) == 0;
                ok &= memcmp(element(&layer.values, t, j, d), element(&ref.views[0].values, t, j, d), 4) == 0;
            }
    CHECK(ok, "and compact the same rows");
    layer.values = layer.keys;
    snap(&s, &ref, &q);
    CHECK(kvec_evict_ex(&cfg, &fused, budget, &q.plan, scratch, bytes) == KVEC_ERROR_OVERLAP, "K and V the same memory");
    CHECK(kvec_compact(&fused, &q.plan) == KVEC_ERROR_OVERLAP, "compaction too");
    layer.values = ref.views[0].values;
    layer.queries.data = (char *)buffer + 4 * e; /* queries over the keys */
    CHECK(kvec_evict_ex(&cfg, &fused, budget, &q.plan, scratch, bytes) == KVEC_ERROR_OVERLAP, "queries over the keys");
    CHECK(unchanged(&s, &ref, &q), "refusals touch nothing");
    snap_free(&s); free(scratch); free(buffer); plan_free(&p); plan_free(&q); cache_free(&ref);
}

/* What is read as numbers is checked: keys always, values only by the
   output-aware policies that read them. */
static void test_which_tensors_must_be_finite(void) {
    static const kvec_policy reads_no_values[3] = { KVEC_POLICY_SNAPKV, KVEC_POLICY_STREAMING, KVEC_POLICY_RANDOM };
    uint16_t nan = 0x7e00;
    int i;
    for (i = 0; i < 3; i++) {
        test_cache c;
        test_plan p;
        kvec_config cfg = policy_config(reads_no_values[i], 8);
        cache_init(&c, 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 25);
        memcpy(element(&c.views[1].values, 5, 0, 0), &nan, 2);
        CHECK(run_evict(&cfg, &c, 30, &p) == KVEC_OK, "%s: NaN values are moved, not read", kvec_policy_name(cfg.policy));
        plan_free(&p);
        memcpy(element(&c.views[1].keys, 5, 0, 0), &nan, 2);
        CHECK(run_evict(&cfg, &c, 30, &p) == KVEC_ERROR_NON_FINITE, "%s: NaN keys are refused", kvec_policy_name(cfg.policy));
        plan_free(&p);
        CHECK(run_evict(&cfg, &c, 200, &p) == KVEC_ERROR_NON_FINITE, "%s: also when the budget keeps everything",
              kvec_policy_name(cfg.policy));
        plan_free(&p); cache_free(&c);
    }
    {
        test_cache c;
        test_plan p;
        kvec_config cfg = policy_config(KVEC_POLICY_CRITICALKV, 8);
        cache_init(&c, 2, 100, 2, 2, 16, 8, KVEC_DTYPE_F16, TOK_HEAD_DIM, 26);
        memcpy(element(&c.views[1].values, 5, 0, 0), &nan, 2);
        CHECK(run_evict(&cfg, &c, 30, &p) == KVEC_ERROR_NON_FINITE, "CriticalKV reads values: NaN refused");
        plan_free(&p); cache_free(&c);
    }
}

static void test_result_strings_are_distinct(void) {
    int a, b, ok = 1;
    for (a = 0; a >= -22; a--) {
        const char *s = kvec_result_string((kvec_result)a);
        ok &= s && s[0] && strcmp(s, "unknown kvec_result") != 0;
        for (b = a - 1; b >= -22; b--) ok &= strcmp(s, kvec_result_string((kvec_result)b)) != 0;
    }
    CHECK(ok, "every result code has its own description");
    CHECK(strcmp(kvec_result_string((kvec_result)-99), "unknown kvec_result") == 0, "unknown codes are named as such");
}

static void test_validation_of_views(void) {
    float data[64];
    kvec_tensor t = kvec_tensor_contiguous(data, KVEC_DTYPE_F32, 4, 2, 8);
    CHECK(kvec_validate_tensor(&t) == KVEC_OK, "contiguous view is valid");
    t.stride_head = 8 * 4 * 4; t.stride_token = 8 * 4; /* [head][tok][dim] of the same memory */
    CHECK(kvec_validate_tensor(&t) == KVEC_OK, "[head][tok][dim] is valid");
    t.stride_token = 8 * 4 - 4;
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_BAD_STRIDE, "rows overlapping by one element");
    t = kvec_tensor_contiguous(data, KVEC_DTYPE_F32, 4, 2, 8);
    t.stride_head = 0;
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_BAD_STRIDE, "two heads on the same memory");
    t.n_heads = 1;
    CHECK(kvec_validate_tensor(&t) == KVEC_OK, "stride of an axis of extent 1 does not matter");
    t = kvec_tensor_contiguous((char *)data + 1, KVEC_DTYPE_F16, 4, 2, 8);
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_MISALIGNED, "odd address for fp16");
    t = kvec_tensor_contiguous(data, KVEC_DTYPE_F32, 4, 2, 8);
    t.stride_token = INT64_MAX / 8 * 4; /* aligned, but 3 tokens overflow int64 */
    CHECK(kvec_validate_tensor(&t) == KVEC_ERROR_SIZE_OVERFLOW, "span overflow");
    CHECK(kvec_validate_tensor(NULL) == KVEC_ERROR_NULL_POINTER, "NULL view");
}

static void test_budget_at_least_n_keeps_everything(void) {
    test_cache c, before;
    test_plan p;
    kvec_config cfg = policy_config(KVEC_POLICY_KVEC, 8);
    int ok = 1;
    int64_t h, r;
    cache_init(&c, 2, 50, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 3);
    cache_init(&before, 2, 50, 2, 2, 16, 8, KVEC_DTYPE_F32, TOK_HEAD_DIM, 3);
    CHECK(run_evict(&cfg, &c, 80, &p) == KVEC_OK, "evict with a large budget");
    for (h = 0; h < 4; h++) {
        ok &= p.counts[h] == 50;
        for (r = 0; r < 50; r++) ok &= p.positions[h * p.plan.capacity + r] == r;
    }
    CHECK(ok, "budget >= N keeps all N positions");
    CHECK(memcmp(c.layers[0].kb, before.layers[0].kb, c.layers[0].kbytes) == 0, "and moves nothing");
    plan_free(&p); cache_free(&c); cache_free(&before);
}

static void test_convenience_evict(void) {
    test_cache c, before;
    test_plan ref;
    kvec_config cfg = policy_config(KVEC_POLICY_DEFAULT, 0);
    cache_init(&c, 2, 150, 2, 4, 16, 32, KVEC_DTYPE_F16, TOK_HEAD_DIM, 8);
    cache_init(&before, 2, 150, 2, 4, 16, 32, KVEC_DTYPE_F16, TOK_HEAD_DIM, 8);
    CHECK(kvec_evict(&c.cache, 64) == KVEC_OK, "kvec_evict");
    CHECK(run_evict(&cfg, &before, 64, &ref) == KVEC_OK, "explicit form with defaults");
    CHECK(memcmp(c.layers[1].kb, before.layers[1].kb, c.layers[1].kbytes) == 0 &&
          memcmp(c.layers[1].vb, before.layers[1].vb, c.layers[1].vbytes) == 0,
          "kvec_evict equals kvec_evict_ex with a zeroed config");
    CHECK(kvec_evict(&c.cache, 16) == KVEC_ERROR_BUDGET_BELOW_WINDOW, "default window is 32");
    plan_free(&ref); cache_free(&c); cache_free(&before);
}

static void test_conversions_round_to_nearest_even(void) {
    int ok = 1;
    uint32_t h;
    for (h = 0; h < 0x10000; h++) { /* every finite half round-trips */
        float f = kvec_f16_to_f32((uint16_t)h);
        if ((h & 0x7c00) != 0x7c00) ok &= kvec_f32_to_f16(f) == (uint16_t)h;
    }
    CHECK(ok, "fp16 -> fp32 -> fp16 is the identity on finite values");
    CHECK(kvec_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00, "1 + half an ulp rounds to even (down)");
    CHECK(kvec_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02, "1 + 1.5 ulp rounds to even (up)");
    CHECK(kvec_f32_to_f16(65520.0f) == 0x7c00, "65520 rounds to Inf");
    CHECK(kvec_f32_to_f16(5.9604645e-8f) == 0x0001, "smallest subnormal");
    CHECK(kvec_f32_to_bf16(1.0f + 1.0f / 256) == 0x3f80, "bf16 tie to even (down)");
    CHECK(kvec_f32_to_bf16(1.0f + 3.0f / 256) == 0x3f82, "bf16 tie to even (up)");
    CHECK(kvec_bf16_to_f32(0x4049) == 3.140625f, "bf16 decode");
    CHECK(isnan(kvec_f16_to_f32(kvec_f32_to_f16(NAN))) && isnan(kvec_bf16_to_f32(kvec_f32_to_bf16(NAN))), "NaN stays NaN");
}

/* ---- reconstruction scores --------------------------------------------------- */

/* One reconstruction call's inputs: the context's keys [N][Hk][D], the
   pass's queries [R][H][D] and keys [R][Hk][D], as doubles and as views. */
typedef struct test_pass {
    int64_t N, Hk, H, D, R;
    double *k, *pq, *pk;
    unsigned char *kb, *pqb, *pkb;
    size_t kbytes, pqbytes, pkbytes;
    kvec_layer layer;
    kvec_reconstruction pass;
} test_pass;

/* The keys in the given dtype; key_layout TRANSPOSED_V stores them
   [head][dim][token], as an engine with transposed keys holds them. */
static void make_pass(test_pass *t, int64_t N, int64_t Hk, int64_t H, int64_t D, int64_t R,
                      int64_t begin, int64_t end, kvec_dtype dtype, enum layout key_layout) {
    int64_t i;
    memset(t, 0, sizeof *t);
    t->N = N; t->Hk = Hk; t->H = H; t->D = D; t->R = R;
    t->k = (double *)malloc((size_t)(N * Hk * D) * sizeof(double));
    t->pq = (double *)malloc((size_t)(R * H * D) * sizeof(double));
    t->pk = (double *)malloc((size_t)(R * Hk * D) * sizeof(double));
    for (i = 0; i < N * Hk * D; i++) t->k[i] = normal();
    for (i = 0; i < R * H * D; i++) t->pq[i] = 1.5 * normal();
    for (i = 0; i < R * Hk * D; i++) t->pk[i] = normal();
    t->layer.keys = make_view(&t->kb, &t->kbytes, dtype, key_layout, key_layout == TRANSPOSED_V, N, Hk, D);
    t->pass.queries = make_view(&t->pqb, &t->pqbytes, dtype, PADDED, 0, R, H, D);
    t->pass.keys = make_view(&t->pkb, &t->pkbytes, dtype, key_layout, key_layout == TRANSPOSED_V, R, Hk, D);
    sync_tensor(&t->layer.keys, t->k);
    sync_tensor(&t->pass.queries, t->pq);
    sync_tensor(&t->pass.keys, t->pk);
    t->pass.chunk_begin = begin;
    t->pass.chunk_end = end;
}

static void free_pass(test_pass *t) {
    free(t->k); free(t->pq); free(t->pk);
    free(t->kb); free(t->pqb); free(t->pkb);
}

/* docs/SEMANTICS.md's formula in double precision: scores[j][i] for i in
   the chunk, explicit softmax rows over the sinks, the chunk and pass rows
   0 .. r. */
static void naive_reconstruction(const test_pass *t, int64_t sinks, double *scores) {
    const int64_t b = t->pass.chunk_begin, e = t->pass.chunk_end, g = t->H / t->Hk, D = t->D;
    const int64_t S = sinks < b ? sinks : b, n_keys = S + (e - b) + t->R;
    double *logit = (double *)malloc((size_t)n_keys * sizeof(double));
    int64_t j, h, r, i, d;
    for (i = 0; i < t->Hk * t->N; i++) scores[i] = 0.0;
    for (j = 0; j < t->Hk; j++)
        for (h = j * g; h < (j + 1) * g; h++)
            for (r = 0; r < t->R; r++) {
                const double *q = t->pq + (r * t->H + h) * D;
                double m = -INFINITY, sum = 0.0;
                int64_t n = 0;
                for (i = 0; i < S + (e - b) + r + 1; i++) {
                    const double *k = i < S ? t->k + (i * t->Hk + j) * D
                                    : i < S + (e - b) ? t->k + ((b + i - S) * t->Hk + j) * D
                                    : t->pk + ((i - S - (e - b)) * t->Hk + j) * D;
                    double dot = 0.0;
                    for (d = 0; d < D; d++) dot += q[d] * k[d];
                    logit[n] = dot / sqrt((double)D);
                    m = logit[n] > m ? logit[n] : m;
                    n++;
                }
                for (i = 0; i < n; i++) sum += exp(logit[i] - m);
                for (i = 0; i < e - b; i++) {
                    const double p = exp(logit[S + i] - m) / sum;
                    double *best = &scores[j * t->N + b + i];
                    *best = p > *best ? p : *best;
                }
            }
    free(logit);
}

/* kvec's scores for one pass, columns outside the chunk preset to -7. */
static kvec_result run_reconstruction(const kvec_config *c, const test_pass *t, float *scores) {
    size_t bytes = 0;
    void *scratch;
    kvec_result r;
    int64_t i;
    for (i = 0; i < t->Hk * t->N; i++) scores[i] = -7.0f;
    if ((r = kvec_reconstruction_scratch_bytes(c, &t->layer, &t->pass, &bytes)) != KVEC_OK) return r;
    scratch = malloc(bytes);
    r = kvec_reconstruction_scores(c, &t->layer, &t->pass, scores, scratch, bytes);
    free(scratch);
    return r;
}

static void test_reconstruction_matches_naive_reference(void) {
    /* N, Hk, H, D, R, begin, end, sinks: one tile and one row chunk; several
       key tiles, row chunks and sink tiles; a chunk at the end; no sinks
       (begin 0); a pass longer than its chunk by a prompt. */
    static const int64_t shapes[][8] = {
        { 40, 1, 1, 8, 20, 10, 30, 4 },   { 300, 2, 6, 16, 200, 90, 270, 70 },
        { 130, 3, 9, 8, 150, 0, 130, 4 }, { 97, 2, 4, 12, 61, 41, 97, 2 },
        { 64, 2, 2, 32, 70, 4, 60, 4 },
    };
    static const kvec_dtype dtypes[] = { KVEC_DTYPE_F32, KVEC_DTYPE_F16, KVEC_DTYPE_BF16 };
    size_t s, t;
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (t = 0; t < 3; t++) {
            const int64_t *x = shapes[s];
            test_pass p;
            kvec_config c = { 0 };
            float *scores = (float *)malloc((size_t)(x[1] * x[0]) * sizeof(float));
            double *want = (double *)malloc((size_t)(x[1] * x[0]) * sizeof(double));
            double worst = 0.0;
            int outside_untouched = 1;
            int64_t i;
            kvec_result r;
            make_pass(&p, x[0], x[1], x[2], x[3], x[4], x[5], x[6], dtypes[t], t == 1 ? TRANSPOSED_V : TOK_HEAD_DIM);
            c.sink_tokens = x[7];
            r = run_reconstruction(&c, &p, scores);
            naive_reconstruction(&p, x[7], want);
            for (i = 0; i < x[1] * x[0]; i++) {
                const int64_t pos = i % x[0];
                if (pos < x[5] || pos >= x[6]) outside_untouched &= scores[i] == -7.0f;
                else {
                    const double err = fabs(scores[i] - want[i]) / (want[i] + 1e-6);
                    worst = err > worst ? err : worst;
                }
            }
            CHECK(r == KVEC_OK, "shape %zu dtype %d: %s", s, (int)dtypes[t], kvec_result_string(r));
            CHECK(worst < 2e-4, "shape %zu dtype %d: relative error %g against the double reference", s,
                  (int)dtypes[t], worst);
            CHECK(outside_untouched, "shape %zu dtype %d: a score outside the chunk was written", s, (int)dtypes[t]);
            free(scores); free(want); free_pass(&p);
        }
}

/* A context key that every query of the pass matches far better than the
   rest takes nearly all the attention: its score is near 1, the others'
   near 0. The pass keys compete too: made identical to it, they halve it. */
static void test_reconstruction_finds_the_attended_key(void) {
    test_pass p;
    float scores[2 * 50];
    int64_t r, h, d;
    make_pass(&p, 50, 2, 2, 8, 40, 5, 45, KVEC_DTYPE_F32, TOK_HEAD_DIM);
    for (d = 0; d < 8; d++) p.k[(20 * 2 + 1) * 8 + d] = 0.0;
    p.k[(20 * 2 + 1) * 8 + 0] = 8.0; /* position 20, KV head 1 */
    for (r = 0; r < 40; r++)
        for (h = 0; h < 2; h++)
            for (d = 0; d < 8; d++) p.pq[(r * 2 + h) * 8 + d] = d == 0 ? 8.0 : 0.0;
    sync_tensor(&p.layer.keys, p.k);
    sync_tensor(&p.pass.queries, p.pq);
    CHECK(run_reconstruction(NULL, &p, scores) == KVEC_OK, "scores");
    CHECK(scores[50 + 20] > 0.99f, "the attended key scores %g", scores[50 + 20]);
    CHECK(scores[50 + 21] < 0.01f, "its neighbour scores %g", scores[50 + 21]);
    for (r = 0; r < 40; r++)
        for (d = 0; d < 8; d++) p.pk[(r * 2 + 1) * 8 + d] = p.k[(20 * 2 + 1) * 8 + d];
    sync_tensor(&p.pass.keys, p.pk);
    CHECK(run_reconstruction(NULL, &p, scores) == KVEC_OK, "scores");
    CHECK(fabs(scores[50 + 20] - 0.5) < 0.01, "with one equal pass key seen by row 0, the key scores %g (0.5)",
          scores[50 + 20]);
    free_pass(&p);
}

static void test_reconstruction_one_and_two_threads_identical(void) {
#ifdef TEST_THREADS
    test_pass p;
    float a[3 * 200], b[3 * 200];
    make_pass(&p, 200, 3, 6, 16, 180, 20, 190, KVEC_DTYPE_F16, TRANSPOSED_V);
    omp_set_num_threads(1);
    CHECK(run_reconstruction(NULL, &p, a) == KVEC_OK, "one thread");
    omp_set_num_threads(2);
    CHECK(run_reconstruction(NULL, &p, b) == KVEC_OK, "two threads");
    CHECK(memcmp(a, b, sizeof a) == 0, "one and two threads give the same bits");
    free_pass(&p);
#endif
}

/* Every refusal returns its code and writes no score. */
static void test_reconstruction_errors_touch_nothing(void) {
    test_pass p;
    float scores[2 * 60], before[2 * 60];
    size_t bytes = 0;
    void *scratch;
    kvec_reconstruction saved;
    kvec_result r;
    int64_t i;
    make_pass(&p, 60, 2, 4, 8, 30, 10, 30, KVEC_DTYPE_F32, TOK_HEAD_DIM);
    CHECK(kvec_reconstruction_scratch_bytes(NULL, &p.layer, &p.pass, &bytes) == KVEC_OK, "scratch bytes");
    scratch = malloc(bytes + 4096);
    for (i = 0; i < 120; i++) scores[i] = before[i] = (float)i;
    saved = p.pass;
#define REFUSED(code, what)                                                                             \
    do {                                                                                                \
        r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, scores, scratch, bytes);                 \
        CHECK(r == (code), "%s: %s, expected %s", what, kvec_result_string(r), kvec_result_string(code)); \
        CHECK(memcmp(scores, before, sizeof scores) == 0, "%s: scores written", what);                  \
        p.pass = saved;                                                                                 \
    } while (0)
    p.pass.chunk_end = 10; REFUSED(KVEC_ERROR_BAD_EXTENT, "an empty chunk");
    p.pass.chunk_begin = -1; REFUSED(KVEC_ERROR_BAD_EXTENT, "a negative begin");
    p.pass.chunk_end = 61; REFUSED(KVEC_ERROR_BAD_EXTENT, "a chunk past N");
    p.pass.chunk_begin = 0; p.pass.chunk_end = 40; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "a pass shorter than its chunk");
    p.pass.keys.n_tokens = 29; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "pass keys and queries of different lengths");
    p.pass.keys.n_heads = 1; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "pass keys with other heads than the layer's");
    p.pass.queries.n_heads = 3; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "query heads not a multiple of the KV heads");
    p.pass.queries.head_dim = 4; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "queries of another head_dim");
    p.pass.queries.data = NULL; REFUSED(KVEC_ERROR_MISSING_QUERIES, "no queries");
    p.pass.keys.data = NULL; REFUSED(KVEC_ERROR_NULL_POINTER, "no pass keys");
    p.pass.keys.dtype = KVEC_DTYPE_UNSET; REFUSED(KVEC_ERROR_BAD_DTYPE, "pass keys without a dtype");
    p.pass.keys.data = p.layer.keys.data;
    r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, scores, scratch, bytes);
    CHECK(r == KVEC_OK, "pass keys reading the context's memory (reads may share): %s", kvec_result_string(r));
    p.pass = saved;
    for (i = 0; i < 120; i++) before[i] = scores[i]; /* that call wrote its chunk */
    p.pass.keys.data = (char *)scores; REFUSED(KVEC_ERROR_OVERLAP, "pass keys inside the scores");
    r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, scores, (char *)p.kb, bytes);
    CHECK(r == KVEC_ERROR_OVERLAP || r == KVEC_ERROR_SCRATCH_TOO_SMALL, "scratch over the keys: %s", kvec_result_string(r));
    r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, scores, scratch, bytes - 1);
    CHECK(r == KVEC_ERROR_SCRATCH_TOO_SMALL, "scratch one byte short: %s", kvec_result_string(r));
    r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, NULL, scratch, bytes);
    CHECK(r == KVEC_ERROR_NULL_POINTER, "no scores: %s", kvec_result_string(r));
    r = kvec_reconstruction_scores(NULL, &p.layer, NULL, scores, scratch, bytes);
    CHECK(r == KVEC_ERROR_NULL_POINTER, "no pass: %s", kvec_result_string(r));
    {
        kvec_config bad = { 0 };
        bad.sink_tokens = -1;
        r = kvec_reconstruction_scores(&bad, &p.layer, &p.pass, scores, scratch, bytes);
        CHECK(r == KVEC_ERROR_BAD_CONFIG, "negative sinks: %s", kvec_result_string(r));
    }
    /* non-finite values where the softmax reads them, and where it does not */
    { float *q = (float *)p.pqb; q[5] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "NaN in a pass query"); q[5] = 0.0f; }
    { float *k = (float *)p.pkb; k[7] = INFINITY; REFUSED(KVEC_ERROR_NON_FINITE, "Inf in a pass key"); k[7] = 0.0f; }
    { float *k = (float *)p.kb + (12 * 2 + 1) * 8; k[0] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "NaN in a chunk key"); k[0] = 0.0f; }
    { float *k = (float *)p.kb + (2 * 2) * 8; k[0] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "NaN in a sink key"); k[0] = 0.0f; }
    {
        float *k = (float *)p.kb + (50 * 2) * 8;
        k[0] = NAN;
        r = kvec_reconstruction_scores(NULL, &p.layer, &p.pass, scores, scratch, bytes);
        CHECK(r == KVEC_OK, "NaN in a key the softmax does not read (after the chunk): %s", kvec_result_string(r));
        k[0] = 0.0f;
    }
#undef REFUSED
    free(scratch);
    free_pass(&p);
}

/* ---- expected attention and coverage over given scores -------------------- */

/* A layer for expected attention: keys [N][Hk][D] and values [N][Hk][Dv]
   in a dtype, and T queries ([T][H][D], fp32) drawn around a mean
   direction, stored post-RoPE (rotated at positions first .. first+T-1)
   while q keeps them before the rotation. */
typedef struct test_expected {
    int64_t N, Hk, H, D, Dv, T, first;
    double *k, *v, *q;
    unsigned char *kb, *vb;
    size_t kbytes, vbytes;
    float *q_post;
    kvec_layer layer;
    kvec_rope rope;
} test_expected;

static void rope_rotate(const kvec_rope *rope, int64_t D, double position, const double *in, double *out, int sign) {
    const int64_t dims = rope->dims ? rope->dims : D;
    int64_t i;
    memcpy(out, in, (size_t)D * sizeof(double));
    for (i = 0; i < dims / 2; i++) {
        const int64_t a = rope->interleaved ? 2 * i : i, b = rope->interleaved ? 2 * i + 1 : i + dims / 2;
        const double angle = sign * position * pow(rope->theta, -2.0 * (double)i / (double)dims);
        out[a] = in[a] * cos(angle) - in[b] * sin(angle);
        out[b] = in[b] * cos(angle) + in[a] * sin(angle);
    }
}

static void make_expected(test_expected *t, int64_t N, int64_t Hk, int64_t H, int64_t D, int64_t Dv, int64_t T,
                          int64_t first, kvec_dtype dtype, int interleaved, int64_t rope_dims) {
    int64_t i, h, d;
    memset(t, 0, sizeof *t);
    t->N = N; t->Hk = Hk; t->H = H; t->D = D; t->Dv = Dv; t->T = T; t->first = first;
    t->rope.theta = 10000.0; t->rope.interleaved = interleaved; t->rope.dims = rope_dims;
    t->k = (double *)malloc((size_t)(N * Hk * D) * sizeof(double));
    t->v = (double *)malloc((size_t)(N * Hk * Dv) * sizeof(double));
    t->q = (double *)malloc((size_t)(T * H * D) * sizeof(double));
    t->q_post = (float *)malloc((size_t)(T * H * D) * sizeof(float));
    for (i = 0; i < N * Hk * D; i++) t->k[i] = normal();
    for (i = 0; i < N * Hk * Dv; i++) t->v[i] = normal();
    for (i = 0; i < T; i++)
        for (h = 0; h < H; h++) {
            double post[64];
            double *q = t->q + (i * H + h) * D;
            for (d = 0; d < D; d++) q[d] = (d % 3 == h % 3 ? 1.0 : 0.0) + 0.7 * normal();
            rope_rotate(&t->rope, D, (double)(first + i), q, post, 1);
            for (d = 0; d < D; d++) t->q_post[(i * H + h) * D + d] = (float)post[d];
            for (d = 0; d < D; d++) q[d] = t->q_post[(i * H + h) * D + d]; /* what kvec reads, un-rotated below */
            rope_rotate(&t->rope, D, (double)(first + i), q, post, -1);
            memcpy(q, post, (size_t)D * sizeof(double));
        }
    t->layer.keys = make_view(&t->kb, &t->kbytes, dtype, TOK_HEAD_DIM, 0, N, Hk, D);
    t->layer.values = make_view(&t->vb, &t->vbytes, dtype, TRANSPOSED_V, 1, N, Hk, Dv);
    sync_tensor(&t->layer.keys, t->k);
    sync_tensor(&t->layer.values, t->v);
}

static void free_expected(test_expected *t) {
    free(t->k); free(t->v); free(t->q); free(t->q_post); free(t->kb); free(t->vb);
}

/* docs/SEMANTICS.md's expected attention in double: the mean and the
   covariance of the un-rotated queries, rotated by the mean rotation of
   positions future_first .. +n_future-1 (built as explicit D x D matrices),
   softmax over positions sinks .. N-1, mean over the group, times ||v||. */
static void naive_expected(const test_expected *t, int64_t sinks, int64_t future_first, int64_t n_future,
                           double *scores) {
    const int64_t D = t->D, g = t->H / t->Hk, N = t->N;
    double *R = (double *)calloc((size_t)(D * D), sizeof(double)), *mu = (double *)malloc((size_t)D * sizeof(double));
    double *cov = (double *)malloc((size_t)(D * D) * sizeof(double)), *tmp = (double *)malloc((size_t)(D * D) * sizeof(double));
    double *mr = (double *)malloc((size_t)D * sizeof(double)), *cr = (double *)malloc((size_t)(D * D) * sizeof(double));
    double *z = (double *)malloc((size_t)N * sizeof(double)), unit[64], col[64];
    int64_t p, j, x, i, d, e, f;
    for (p = 0; p < n_future; p++) /* column e of R(p) is R(p) applied to unit vector e */
        for (e = 0; e < D; e++) {
            for (d = 0; d < D; d++) unit[d] = d == e;
            rope_rotate(&t->rope, D, (double)(future_first + p), unit, col, 1);
            for (d = 0; d < D; d++) R[d * D + e] += col[d] / (double)n_future;
        }
    for (i = 0; i < t->Hk * N; i++) scores[i] = i % N < sinks ? INFINITY : 0.0;
    for (j = 0; j < t->Hk; j++)
        for (x = 0; x < g; x++) {
            const int64_t h = j * g + x;
            double max = -INFINITY, total = 0.0;
            for (d = 0; d < D; d++) {
                mu[d] = 0.0;
                for (i = 0; i < t->T; i++) mu[d] += t->q[(i * t->H + h) * D + d] / (double)t->T;
            }
            for (d = 0; d < D; d++)
                for (e = 0; e < D; e++) {
                    cov[d * D + e] = 0.0;
                    for (i = 0; i < t->T; i++)
                        cov[d * D + e] += (t->q[(i * t->H + h) * D + d] - mu[d]) * (t->q[(i * t->H + h) * D + e] - mu[e]) / (double)t->T;
                }
            for (d = 0; d < D; d++) {
                mr[d] = 0.0;
                for (e = 0; e < D; e++) mr[d] += R[d * D + e] * mu[e];
            }
            for (d = 0; d < D; d++)
                for (e = 0; e < D; e++) {
                    tmp[d * D + e] = 0.0;
                    for (f = 0; f < D; f++) tmp[d * D + e] += R[d * D + f] * cov[f * D + e];
                }
            for (d = 0; d < D; d++)
                for (e = 0; e < D; e++) {
                    cr[d * D + e] = 0.0;
                    for (f = 0; f < D; f++) cr[d * D + e] += tmp[d * D + f] * R[e * D + f];
                }
            for (i = sinks; i < N; i++) {
                const double *k = t->k + (i * t->Hk + j) * D;
                double lin = 0.0, quad = 0.0;
                for (d = 0; d < D; d++) {
                    lin += mr[d] * k[d];
                    for (e = 0; e < D; e++) quad += k[d] * cr[d * D + e] * k[e];
                }
                z[i] = lin / sqrt((double)D) + quad / (2.0 * (double)D);
                max = z[i] > max ? z[i] : max;
            }
            for (i = sinks; i < N; i++) total += exp(z[i] - max);
            for (i = sinks; i < N; i++) scores[j * N + i] += exp(z[i] - max) / total / (double)g;
        }
    for (j = 0; j < t->Hk; j++)
        for (i = sinks; i < N; i++) {
            double norm = 0.0;
            for (d = 0; d < t->Dv; d++) norm += t->v[(i * t->Hk + j) * t->Dv + d] * t->v[(i * t->Hk + j) * t->Dv + d];
            scores[j * N + i] *= sqrt(norm);
        }
    free(R); free(mu); free(cov); free(tmp); free(mr); free(cr); free(z);
}

/* Statistics of rows [from, T) added in `parts` calls; then kvec's scores. */
static kvec_result run_expected(const kvec_config *c, const test_expected *t, int64_t from, int parts,
                                int64_t future_first, int64_t n_future, float *scores) {
    kvec_query_stats stats;
    kvec_expected_attention ea;
    size_t bytes = 0, scratch_bytes = 0;
    void *memory, *scratch;
    kvec_result r;
    int part;
    if ((r = kvec_query_stats_bytes(t->H, t->D, &bytes)) != KVEC_OK) return r;
    memory = malloc(bytes);
    if ((r = kvec_query_stats_init(&stats, memory, bytes, t->H, t->D)) != KVEC_OK) { free(memory); return r; }
    for (part = 0; part < parts; part++) {
        const int64_t begin = from + (t->T - from) * part / parts, end = from + (t->T - from) * (part + 1) / parts;
        kvec_tensor q = kvec_tensor_contiguous(t->q_post + begin * t->H * t->D, KVEC_DTYPE_F32, end - begin, t->H, t->D);
        if (end > begin && (r = kvec_query_stats_add(&stats, &q, t->first + begin, &t->rope)) != KVEC_OK) {
            free(memory);
            return r;
        }
    }
    ea.stats = &stats; ea.rope = t->rope; ea.first_position = future_first; ea.n_future = n_future;
    if ((r = kvec_expected_attention_scratch_bytes(c, &t->layer, &ea, &scratch_bytes)) == KVEC_OK) {
        scratch = malloc(scratch_bytes);
        r = kvec_expected_attention_scores(c, &t->layer, &ea, scores, scratch, scratch_bytes);
        free(scratch);
    }
    free(memory);
    return r;
}

static void test_expected_attention_matches_naive_reference(void) {
    /* N, Hk, H, D, Dv, T, first position, interleaved, rope dims, sinks, n_future */
    static const int64_t shapes[][11] = {
        { 40, 1, 1, 8, 8, 30, 0, 0, 0, 4, 16 },     { 120, 2, 6, 16, 12, 100, 0, 1, 0, 4, 64 },
        { 90, 3, 3, 12, 12, 50, 7, 0, 8, 0, 1 },    { 70, 2, 4, 32, 16, 90, 100, 1, 16, 10, 512 },
    };
    static const kvec_dtype dtypes[] = { KVEC_DTYPE_F32, KVEC_DTYPE_F16, KVEC_DTYPE_BF16 };
    size_t s, u;
    for (s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (u = 0; u < 3; u++) {
            const int64_t *x = shapes[s];
            test_expected t;
            kvec_config c = { 0 };
            float *scores = (float *)malloc((size_t)(x[1] * x[0]) * sizeof(float));
            double *want = (double *)malloc((size_t)(x[1] * x[0]) * sizeof(double));
            double worst = 0.0;
            int sinks_kept = 1;
            int64_t i;
            kvec_result r;
            make_expected(&t, x[0], x[1], x[2], x[3], x[4], x[5], x[6], dtypes[u], (int)x[7], x[8]);
            c.sink_tokens = x[9]; /* 0: the default, 4 */
            r = run_expected(&c, &t, 0, 1, x[6] + x[5], x[10], scores);
            naive_expected(&t, x[9] ? x[9] : 4, x[6] + x[5], x[10], want);
            for (i = 0; i < x[1] * x[0]; i++) {
                if (isinf(want[i])) sinks_kept &= isinf(scores[i]) && scores[i] > 0;
                else {
                    const double err = fabs(scores[i] - want[i]) / (want[i] + 1e-6);
                    worst = err > worst ? err : worst;
                }
            }
            CHECK(r == KVEC_OK, "shape %zu dtype %d: %s", s, (int)dtypes[u], kvec_result_string(r));
            CHECK(worst < 1e-3, "shape %zu dtype %d: relative error %g against the double reference", s,
                  (int)dtypes[u], worst);
            CHECK(sinks_kept, "shape %zu dtype %d: the sinks score +inf", s, (int)dtypes[u]);
            free(scores); free(want); free_expected(&t);
        }
}

/* The statistics are sums: added in one call or in several, from the query
   log or from prefill chunks, they are the same bits. A key along the
   queries' mean direction scores above the rest. */
static void test_expected_attention_statistics_and_a_planted_key(void) {
    test_expected t;
    float one[2 * 80], three[2 * 80];
    int64_t d, i;
    make_expected(&t, 80, 2, 4, 16, 16, 60, 0, KVEC_DTYPE_F32, 0, 0);
    CHECK(run_expected(NULL, &t, 4, 1, 60, 0, one) == KVEC_OK, "one call");
    CHECK(run_expected(NULL, &t, 4, 3, 60, 0, three) == KVEC_OK, "three calls");
    CHECK(memcmp(one, three, sizeof one) == 0, "statistics added in one call or three give the same bits");
    /* KV head 0 serves query heads 0 and 1, whose means lean on d % 3 == 0 and 1 */
    for (d = 0; d < 16; d++) t.k[(50 * 2 + 0) * 16 + d] = d % 3 != 2 ? 3.0 : 0.0;
    sync_tensor(&t.layer.keys, t.k);
    /* the mean rotation is closed-form: 2^60 future positions cost what 512 do */
    CHECK(run_expected(NULL, &t, 4, 1, 60, (int64_t)1 << 60, three) == KVEC_OK && isfinite(three[2 * 80 - 1]),
          "2^60 future positions: scored, finite");
    CHECK(run_expected(NULL, &t, 4, 1, 60, 1, one) == KVEC_OK, "scores");
    {
        double share_50 = one[50], rest = 0.0;
        for (i = 4; i < 80; i++) rest += one[i];
        CHECK(share_50 > 0.2 * rest, "the key along the mean query holds %g of the head's %g", share_50, rest);
    }
    free_expected(&t);
}

static void test_expected_attention_one_and_two_threads_identical(void) {
#ifdef TEST_THREADS
    test_expected t;
    float a[3 * 150], b[3 * 150];
    make_expected(&t, 150, 3, 6, 16, 16, 140, 0, KVEC_DTYPE_F16, 1, 0);
    omp_set_num_threads(1);
    CHECK(run_expected(NULL, &t, 4, 2, 140, 0, a) == KVEC_OK, "one thread");
    omp_set_num_threads(2);
    CHECK(run_expected(NULL, &t, 4, 2, 140, 0, b) == KVEC_OK, "two threads");
    CHECK(memcmp(a, b, sizeof a) == 0, "one and two threads give the same bits");
    free_expected(&t);
#endif
}

/* Every refusal returns its code and writes nothing: no score, no sum. */
static void test_expected_attention_errors_touch_nothing(void) {
    test_expected t;
    kvec_query_stats stats;
    kvec_expected_attention ea, saved;
    kvec_layer saved_layer;
    kvec_tensor q;
    float scores[2 * 50], before[2 * 50];
    size_t bytes = 0, scratch_bytes = 0;
    unsigned char *memory, *stats_before;
    void *scratch;
    kvec_result r;
    int64_t i;
    make_expected(&t, 50, 2, 4, 8, 8, 40, 0, KVEC_DTYPE_F32, 0, 0);
    CHECK(kvec_query_stats_bytes(4, 8, &bytes) == KVEC_OK, "stats bytes");
    memory = (unsigned char *)malloc(bytes);
    stats_before = (unsigned char *)malloc(bytes);
    CHECK(kvec_query_stats_init(&stats, memory, bytes, 4, 8) == KVEC_OK, "stats init");
    q = kvec_tensor_contiguous(t.q_post, KVEC_DTYPE_F32, 40, 4, 8);
    CHECK(kvec_query_stats_add(&stats, &q, 0, &t.rope) == KVEC_OK, "stats add");
    ea.stats = &stats; ea.rope = t.rope; ea.first_position = 40; ea.n_future = 0;
    CHECK(kvec_expected_attention_scratch_bytes(NULL, &t.layer, &ea, &scratch_bytes) == KVEC_OK, "scratch bytes");
    scratch = malloc(scratch_bytes + 4096);
    for (i = 0; i < 100; i++) scores[i] = before[i] = (float)i;
    saved = ea; saved_layer = t.layer;
#define REFUSED(code, what)                                                                             \
    do {                                                                                                \
        r = kvec_expected_attention_scores(NULL, &t.layer, &ea, scores, scratch, scratch_bytes);         \
        CHECK(r == (code), "%s: %s, expected %s", what, kvec_result_string(r), kvec_result_string(code)); \
        CHECK(memcmp(scores, before, sizeof scores) == 0, "%s: scores written", what);                  \
        ea = saved; t.layer = saved_layer;                                                              \
    } while (0)
    ea.rope.theta = 1.0; REFUSED(KVEC_ERROR_BAD_CONFIG, "theta 1");
    ea.rope.theta = NAN; REFUSED(KVEC_ERROR_BAD_CONFIG, "theta NaN");
    ea.rope.dims = 7; REFUSED(KVEC_ERROR_BAD_CONFIG, "odd rope dims");
    ea.rope.dims = 10; REFUSED(KVEC_ERROR_BAD_CONFIG, "rope dims above head_dim");
    ea.rope.interleaved = 2; REFUSED(KVEC_ERROR_BAD_CONFIG, "an unknown pairing");
    ea.first_position = -1; REFUSED(KVEC_ERROR_BAD_EXTENT, "a negative position");
    ea.n_future = -5; REFUSED(KVEC_ERROR_BAD_EXTENT, "negative future positions");
    ea.first_position = INT64_MAX - 3; REFUSED(KVEC_ERROR_SIZE_OVERFLOW, "positions past int64");
    ea.stats = NULL; REFUSED(KVEC_ERROR_NULL_POINTER, "no stats");
    t.layer.values.n_tokens = 49; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "values shorter than keys");
    t.layer.values.data = NULL; REFUSED(KVEC_ERROR_NULL_POINTER, "no values");
    t.layer.keys.head_dim = 4; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "keys of another head_dim than the stats");
    stats.n_heads = 3; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "query heads not a multiple of the KV heads"); stats.n_heads = 4;
    stats.count = 0; REFUSED(KVEC_ERROR_MISSING_QUERIES, "no query seen"); stats.count = 40;
    stats.sum[3] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "NaN in the sums"); stats.sum[3] = 0.0;
    { float *k = (float *)t.kb + (20 * 2 + 1) * 8; k[2] = INFINITY; REFUSED(KVEC_ERROR_NON_FINITE, "Inf in a key"); k[2] = 0.0f; }
    r = kvec_expected_attention_scores(NULL, &t.layer, &ea, scores, scratch, scratch_bytes - 1);
    CHECK(r == KVEC_ERROR_SCRATCH_TOO_SMALL && !memcmp(scores, before, sizeof scores), "scratch one byte short: %s",
          kvec_result_string(r));
    r = kvec_expected_attention_scores(NULL, &t.layer, &ea, (float *)stats.sum, scratch, scratch_bytes);
    CHECK(r == KVEC_ERROR_OVERLAP, "scores over the stats: %s", kvec_result_string(r));
    r = kvec_expected_attention_scores(NULL, &t.layer, &ea, scores, t.kb, scratch_bytes);
    CHECK(r == KVEC_ERROR_OVERLAP || r == KVEC_ERROR_SCRATCH_TOO_SMALL, "scratch over the keys: %s", kvec_result_string(r));
#undef REFUSED
    /* adding: bad input leaves the sums as they were */
    memcpy(stats_before, memory, bytes);
    {
        kvec_rope bad = t.rope;
        int64_t count = stats.count;
        bad.dims = 3;
        CHECK(kvec_query_stats_add(&stats, &q, 0, &bad) == KVEC_ERROR_BAD_CONFIG, "odd rope dims refused");
        q.n_heads = 2;
        CHECK(kvec_query_stats_add(&stats, &q, 0, &t.rope) == KVEC_ERROR_SHAPE_MISMATCH, "queries of other heads refused");
        q.n_heads = 4;
        CHECK(kvec_query_stats_add(&stats, &q, -1, &t.rope) == KVEC_ERROR_BAD_EXTENT, "a negative position refused");
        CHECK(kvec_query_stats_add(&stats, &q, INT64_MAX - 10, &t.rope) == KVEC_ERROR_SIZE_OVERFLOW,
              "positions past int64 refused");
        t.q_post[17] = NAN;
        CHECK(kvec_query_stats_add(&stats, &q, 0, &t.rope) == KVEC_ERROR_NON_FINITE, "a NaN query refused");
        t.q_post[17] = 0.0f;
        {
            kvec_tensor inside = kvec_tensor_contiguous(stats.sum, KVEC_DTYPE_F32, 2, 4, 8);
            CHECK(kvec_query_stats_add(&stats, &inside, 0, &t.rope) == KVEC_ERROR_OVERLAP, "queries inside the sums refused");
        }
        CHECK(memcmp(stats_before, memory, bytes) == 0 && stats.count == count, "no refusal touched the sums");
        CHECK(kvec_query_stats_init(&stats, memory, bytes - 1, 4, 8) == KVEC_ERROR_SCRATCH_TOO_SMALL, "init: memory short");
        CHECK(kvec_query_stats_init(&stats, memory, bytes, 0, 8) == KVEC_ERROR_BAD_EXTENT, "init: no heads");
        CHECK(kvec_query_stats_bytes(INT64_MAX / 2, 1 << 20, &bytes) == KVEC_ERROR_SIZE_OVERFLOW, "bytes: overflow");
    }
    free(scratch); free(memory); free(stats_before); free_expected(&t);
}

/* K-VEC's coverage over given scores: ln(s) + mu z(U) on the evictable
   positions, against the formula in double; +inf and the window stay. */
static void test_coverage_over_given_scores(void) {
    test_expected t;
    kvec_config c = { 0 };
    float scores[2 * 60], before[2 * 60];
    double kbar[8], u[60];
    size_t bytes = 0;
    void *scratch;
    int64_t j, i, d, N = 60, W = 8;
    double worst = 0.0;
    make_expected(&t, 60, 2, 2, 8, 8, 4, 0, KVEC_DTYPE_BF16, 0, 0);
    c.window = W; c.terms.mu = 0.5f;
    for (i = 0; i < 2 * N; i++) scores[i] = before[i] = (float)(0.001 + uniform());
    scores[3] = before[3] = INFINITY;
    scores[N + 7] = before[N + 7] = 0.0f;
    CHECK(kvec_coverage_scores_scratch_bytes(&c, &t.layer, &bytes) == KVEC_OK, "scratch bytes");
    scratch = malloc(bytes);
    CHECK(kvec_coverage_scores(&c, &t.layer, scores, scratch, bytes) == KVEC_OK, "coverage scores");
    for (j = 0; j < 2; j++) {
        double mean = 0.0, var = 0.0, kn = 0.0;
        for (d = 0; d < 8; d++) kbar[d] = 0.0;
        for (i = 0; i < N; i++) {
            const double *k = t.k + (i * 2 + j) * 8;
            double n2 = 0.0;
            for (d = 0; d < 8; d++) n2 += k[d] * k[d];
            for (d = 0; d < 8; d++) kbar[d] += k[d] / sqrt(n2) / (double)N;
        }
        for (d = 0; d < 8; d++) kn += kbar[d] * kbar[d];
        for (i = 0; i < N - W; i++) {
            const double *k = t.k + (i * 2 + j) * 8;
            double dot = 0.0, n2 = 0.0;
            for (d = 0; d < 8; d++) { dot += k[d] * kbar[d]; n2 += k[d] * k[d]; }
            u[i] = -dot / sqrt(n2 * kn);
            mean += u[i] / (double)(N - W);
        }
        for (i = 0; i < N - W; i++) var += (u[i] - mean) * (u[i] - mean) / (double)(N - W);
        for (i = 0; i < N; i++) {
            const float got = scores[j * N + i], was = before[j * N + i];
            double want;
            if (i >= N - W || isinf(was)) { CHECK(got == was, "head %lld position %lld left as it was", (long long)j, (long long)i); continue; }
            want = log(was > 1e-30 ? was : 1e-30) + 0.5 * (u[i] - mean) / (sqrt(var) + 1e-6);
            worst = fabs(got - want) > worst ? fabs(got - want) : worst;
        }
    }
    CHECK(worst < 1e-4, "ln(s) + mu z(U) within %g of the double formula", worst);
    for (i = 0; i < 2 * N; i++) scores[i] = before[i];
    scores[N + 20] = -0.5f;
    memcpy(before, scores, sizeof scores);
    CHECK(kvec_coverage_scores(&c, &t.layer, scores, scratch, bytes) == KVEC_ERROR_BAD_SCORES &&
          !memcmp(scores, before, sizeof scores), "a negative score is refused, nothing written");
    scores[N + 20] = NAN; memcpy(before, scores, sizeof scores);
    CHECK(kvec_coverage_scores(&c, &t.layer, scores, scratch, bytes) == KVEC_ERROR_BAD_SCORES &&
          !memcmp(scores, before, sizeof scores), "a NaN score is refused, nothing written");
    scores[N + 20] = 1.0f; memcpy(before, scores, sizeof scores);
    CHECK(kvec_coverage_scores(&c, &t.layer, scores, scratch, bytes - 1) == KVEC_ERROR_SCRATCH_TOO_SMALL &&
          !memcmp(scores, before, sizeof scores), "scratch one byte short");
    CHECK(kvec_coverage_scores(&c, &t.layer, (float *)t.kb, scratch, bytes) == KVEC_ERROR_OVERLAP, "scores over the keys");
    CHECK(kvec_coverage_scores(&c, &t.layer, NULL, scratch, bytes) == KVEC_ERROR_NULL_POINTER, "no scores");
    free(scratch); free_expected(&t);
}

/* Scratch depends on the chunk and the pass, never on N. */
static void test_reconstruction_scratch_is_bounded_by_the_chunk(void) {
    kvec_layer layer;
    kvec_reconstruction pass;
    size_t small = 0, large = 0;
    memset(&layer, 0, sizeof layer);
    {
        float *k = (float *)calloc(3000 * 2 * 16, sizeof(float)), *q = (float *)calloc(300 * 4 * 16, sizeof(float));
        float *pk = (float *)calloc(300 * 2 * 16, sizeof(float));
        layer.keys = kvec_tensor_contiguous(k, KVEC_DTYPE_F32, 1000, 2, 16);
        pass.queries = kvec_tensor_contiguous(q, KVEC_DTYPE_F32, 300, 4, 16);
        pass.keys = kvec_tensor_contiguous(pk, KVEC_DTYPE_F32, 300, 2, 16);
        pass.chunk_begin = 500; pass.chunk_end = 756;
        CHECK(kvec_reconstruction_scratch_bytes(NULL, &layer, &pass, &small) == KVEC_OK, "N = 1000");
        layer.keys.n_tokens = 3000;
        CHECK(kvec_reconstruction_scratch_bytes(NULL, &layer, &pass, &large) == KVEC_OK, "N = 3000");
        CHECK(small == large && small > 0, "scratch %zu at N = 1000, %zu at N = 3000", small, large);
        free(k); free(q); free(pk);
    }
}

/* ---- learned scores -------------------------------------------------------- */

typedef struct test_scorer {
    kvec_scorer scorer;
    float *w1, *b1, *w2, *b2; /* fp32 weights, as the scorer reads them */
} test_scorer;

static double test_uniform(uint64_t *state) { /* in [-1, 1) */
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*state >> 11) / (double)(1ULL << 52) - 1.0;
}

static void make_scorer(test_scorer *t, kvec_scorer_kind kind, kvec_scorer_output output, int64_t E, int64_t Hk,
                        int64_t F, uint64_t seed) {
    const int64_t rows = kind == KVEC_SCORER_MLP ? F : Hk;
    int64_t i;
    memset(t, 0, sizeof *t);
    t->w1 = (float *)malloc((size_t)(rows * E) * sizeof(float));
    t->b1 = (float *)malloc((size_t)rows * sizeof(float));
    for (i = 0; i < rows * E; i++) t->w1[i] = (float)(0.4 * test_uniform(&seed));
    for (i = 0; i < rows; i++) t->b1[i] = (float)(0.3 * test_uniform(&seed));
    if (kind == KVEC_SCORER_MLP) {
        t->w2 = (float *)malloc((size_t)(Hk * F) * sizeof(float));
        t->b2 = (float *)malloc((size_t)Hk * sizeof(float));
        for (i = 0; i < Hk * F; i++) t->w2[i] = (float)(0.5 * test_uniform(&seed));
        for (i = 0; i < Hk; i++) t->b2[i] = (float)(0.2 * test_uniform(&seed));
    }
    t->scorer.kind = kind; t->scorer.output = output;
    t->scorer.n_embd = E; t->scorer.n_kv_heads = Hk; t->scorer.n_hidden = kind == KVEC_SCORER_MLP ? F : 0;
    t->scorer.weight = t->w1; t->scorer.bias = t->b1; t->scorer.weight2 = t->w2; t->scorer.bias2 = t->b2;
}

static void free_scorer(test_scorer *t) { free(t->w1); free(t->b1); free(t->w2); free(t->b2); }

/* The formula in double, on the values the view holds. */
static double learned_reference(const kvec_scorer *s, const double *x, int64_t j) {
    const int64_t E = s->n_embd, F = s->n_hidden;
    double y, a;
    int64_t f, e;
    if (s->kind == KVEC_SCORER_LINEAR) {
        y = s->bias[j];
        for (e = 0; e < E; e++) y += (double)s->weight[j * E + e] * x[e];
    } else {
        y = s->bias2[j];
        for (f = 0; f < F; f++) {
            a = s->bias[f];
            for (e = 0; e < E; e++) a += (double)s->weight[f * E + e] * x[e];
            y += (double)s->weight2[j * F + f] * (0.5 * a * (1.0 + erf(a / sqrt(2.0))));
        }
    }
    return s->output == KVEC_SCORER_LOG_RETENTION ? -log1p(exp(-y)) : y;
}

/* Hidden states [T][1][E] in a dtype and layout, values on the bf16 grid. */
static kvec_tensor make_hidden(unsigned char **buffer, double **values, kvec_dtype dtype, enum layout layout,
                               int64_t T, int64_t E, uint64_t seed) {
    size_t bytes;
    kvec_tensor v = make_view(buffer, &bytes, dtype, layout, 0, T, 1, E);
    int64_t i;
    *values = (double *)malloc((size_t)(T * E) * sizeof(double));
    for (i = 0; i < T * E; i++) (*values)[i] = kvec_bf16_to_f32(kvec_f32_to_bf16((float)(2.0 * test_uniform(&seed))));
    sync_tensor(&v, *values);
    return v;
}

static kvec_result run_learned(const kvec_scorer *s, const kvec_tensor *hidden, float *scores, int64_t stride) {
    size_t bytes;
    void *scratch;
    kvec_result r;
    if ((r = kvec_learned_scores_scratch_bytes(s, &bytes)) != KVEC_OK) return r;
    scratch = malloc(bytes);
    r = kvec_learned_scores(s, hidden, scores, stride, scratch, bytes);
    free(scratch);
    return r;
}

static void test_learned_scores_match_naive_reference(void) {
    static const kvec_dtype dtypes[3] = { KVEC_DTYPE_F32, KVEC_DTYPE_F16, KVEC_DTYPE_BF16 };
    const int64_t T = 70, E = 20, Hk = 3, F = 9, stride = 75; /* 70 tokens: three blocks, the last partial */
    int kind, output, k;
    for (kind = KVEC_SCORER_LINEAR; kind <= KVEC_SCORER_MLP; kind++)
        for (output = KVEC_SCORER_SCORE; output <= KVEC_SCORER_LOG_RETENTION; output++)
            for (k = 0; k < 3; k++) {
                test_scorer t;
                unsigned char *buffer;
                double *x, worst = 0.0;
                float scores[3 * 75];
                int64_t i, j, untouched = 0;
                kvec_tensor hidden = make_hidden(&buffer, &x, dtypes[k], k == 1 ? PADDED : TOK_HEAD_DIM, T, E, 7 + k);
                make_scorer(&t, (kvec_scorer_kind)kind, (kvec_scorer_output)output, E, Hk, F, 11 + kind);
                for (i = 0; i < 3 * 75; i++) scores[i] = -123.0f;
                CHECK(run_learned(&t.scorer, &hidden, scores, stride) == KVEC_OK, "kind %d output %d dtype %d", kind,
                      output, k);
                for (j = 0; j < Hk; j++) {
                    for (i = 0; i < T; i++) {
                        const double want = learned_reference(&t.scorer, x + i * E, j);
                        const double err = fabs(scores[j * stride + i] - want) / (1.0 + fabs(want));
                        worst = err > worst ? err : worst;
                    }
                    for (i = T; i < stride; i++) untouched += scores[j * stride + i] == -123.0f;
                }
                CHECK(worst < 2e-6, "kind %d output %d dtype %d: worst relative error %g", kind, output, k, worst);
                CHECK(untouched == Hk * (stride - T), "columns past T untouched");
                if (output == KVEC_SCORER_LOG_RETENTION)
                    for (i = 0; i < T; i++) CHECK(scores[i] <= 0.0f, "log retention <= 0");
                free_scorer(&t); free(buffer); free(x);
            }
}

/* Chunks scored into their columns equal one call; any thread count, the same bits. */
static void test_learned_scores_in_chunks_and_threads(void) {
    const int64_t T = 100, E = 24, Hk = 2, F = 40;
    test_scorer t;
    unsigned char *buffer;
    double *x;
    float whole[2 * 100], chunked[2 * 100];
    kvec_tensor hidden = make_hidden(&buffer, &x, KVEC_DTYPE_F16, TOK_HEAD_DIM, T, E, 3), part;
    make_scorer(&t, KVEC_SCORER_MLP, KVEC_SCORER_SCORE, E, Hk, F, 5);
    CHECK(run_learned(&t.scorer, &hidden, whole, T) == KVEC_OK, "one call");
    part = hidden;
    part.n_tokens = 37;
    CHECK(run_learned(&t.scorer, &part, chunked, T) == KVEC_OK, "first chunk");
    part.data = (unsigned char *)hidden.data + 37 * hidden.stride_token;
    part.n_tokens = T - 37;
    CHECK(run_learned(&t.scorer, &part, chunked + 37, T) == KVEC_OK, "second chunk");
    CHECK(memcmp(whole, chunked, sizeof whole) == 0, "chunks in their columns give the same bits as one call");
#ifdef TEST_THREADS
    omp_set_num_threads(1);
    CHECK(run_learned(&t.scorer, &hidden, chunked, T) == KVEC_OK, "one thread");
    omp_set_num_threads(2);
    CHECK(memcmp(whole, chunked, sizeof whole) == 0, "one and two threads give the same bits");
#endif
    free_scorer(&t); free(buffer); free(x);
    { /* finite inputs past float's range: numbers still, saturated */
        float w[2] = { 1e30f, 1e30f }, b = 0.0f, h[2] = { 1e10f, 1e10f }, w2[1] = { 0.0f }, b2 = 0.0f, out[1];
        kvec_scorer s = { KVEC_SCORER_LINEAR, KVEC_SCORER_SCORE, 2, 1, 0, NULL, NULL, NULL, NULL };
        kvec_tensor states = kvec_tensor_contiguous(h, KVEC_DTYPE_F32, 1, 1, 2);
        s.weight = w; s.bias = &b;
        CHECK(run_learned(&s, &states, out, 1) == KVEC_OK && out[0] == FLT_MAX, "a sum past float's range: %g", out[0]);
        w[0] = w[1] = -1e30f;
        CHECK(run_learned(&s, &states, out, 1) == KVEC_OK && out[0] == -FLT_MAX, "below it: %g", out[0]);
        s.kind = KVEC_SCORER_MLP; s.n_hidden = 1; s.weight2 = w2; s.bias2 = &b2; /* gelu(-inf-ish) * 0 */
        CHECK(run_learned(&s, &states, out, 1) == KVEC_OK && !isnan(out[0]), "an MLP's overflow: %g", out[0]);
    }
}

/* Every refusal returns its code and writes nothing. */
static void test_learned_scores_errors_touch_nothing(void) {
    const int64_t T = 40, E = 16, Hk = 2, F = 8;
    test_scorer t;
    kvec_scorer saved;
    unsigned char *buffer;
    double *x;
    float scores[2 * 40], before[2 * 40];
    size_t bytes = 0;
    void *scratch;
    kvec_result r;
    int64_t i;
    kvec_tensor hidden = make_hidden(&buffer, &x, KVEC_DTYPE_F32, TOK_HEAD_DIM, T, E, 9), saved_hidden;
    make_scorer(&t, KVEC_SCORER_MLP, KVEC_SCORER_SCORE, E, Hk, F, 13);
    CHECK(kvec_learned_scores_scratch_bytes(&t.scorer, &bytes) == KVEC_OK, "scratch bytes");
    scratch = malloc(bytes);
    for (i = 0; i < 2 * 40; i++) scores[i] = before[i] = (float)i;
    saved = t.scorer; saved_hidden = hidden;
#define REFUSED(code, what)                                                                             \
    do {                                                                                                \
        r = kvec_learned_scores(&t.scorer, &hidden, scores, T, scratch, bytes);                         \
        CHECK(r == (code), "%s: %s, expected %s", what, kvec_result_string(r), kvec_result_string(code)); \
        CHECK(memcmp(scores, before, sizeof scores) == 0, "%s: scores written", what);                  \
        t.scorer = saved; hidden = saved_hidden;                                                        \
    } while (0)
    t.scorer.kind = (kvec_scorer_kind)0; REFUSED(KVEC_ERROR_BAD_CONFIG, "an unknown kind");
    t.scorer.output = (kvec_scorer_output)7; REFUSED(KVEC_ERROR_BAD_CONFIG, "an unknown output");
    t.scorer.n_hidden = 0; REFUSED(KVEC_ERROR_BAD_EXTENT, "an MLP without hidden units");
    t.scorer.kind = KVEC_SCORER_LINEAR; REFUSED(KVEC_ERROR_BAD_EXTENT, "a linear scorer with hidden units");
    t.scorer.n_kv_heads = 0; REFUSED(KVEC_ERROR_BAD_EXTENT, "no KV heads");
    t.scorer.n_embd = 15; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "hidden states of another width");
    t.scorer.weight2 = NULL; REFUSED(KVEC_ERROR_NULL_POINTER, "an MLP without its second layer");
    t.scorer.bias = NULL; REFUSED(KVEC_ERROR_NULL_POINTER, "no bias");
    t.scorer.n_hidden = INT64_MAX / 4; REFUSED(KVEC_ERROR_SIZE_OVERFLOW, "hidden units past size_t");
    hidden.n_heads = 2; hidden.head_dim = 8; hidden.stride_head = 8 * 4; REFUSED(KVEC_ERROR_SHAPE_MISMATCH, "hidden states in two heads");
    hidden.dtype = (kvec_dtype)9; REFUSED(KVEC_ERROR_BAD_DTYPE, "an unknown dtype");
    t.w1[5] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "a NaN weight"); t.w1[5] = 0.1f;
    t.b2[1] = INFINITY; REFUSED(KVEC_ERROR_NON_FINITE, "an Inf bias"); t.b2[1] = 0.1f;
    ((float *)buffer)[3 * E + 2] = NAN; REFUSED(KVEC_ERROR_NON_FINITE, "a NaN hidden state");
    ((float *)buffer)[3 * E + 2] = 0.5f;
    r = kvec_learned_scores(&t.scorer, &hidden, scores, T - 1, scratch, bytes);
    CHECK(r == KVEC_ERROR_BAD_STRIDE && !memcmp(scores, before, sizeof scores), "a stride below T: %s", kvec_result_string(r));
    r = kvec_learned_scores(&t.scorer, &hidden, scores, INT64_MAX / 2, scratch, bytes);
    CHECK(r == KVEC_ERROR_SIZE_OVERFLOW && !memcmp(scores, before, sizeof scores), "rows past int64: %s", kvec_result_string(r));
    r = kvec_learned_scores(&t.scorer, &hidden, scores, T, scratch, bytes - 1);
    CHECK(r == KVEC_ERROR_SCRATCH_TOO_SMALL && !memcmp(scores, before, sizeof scores), "scratch one byte short: %s",
          kvec_result_string(r));
    r = kvec_learned_scores(&t.scorer, &hidden, t.w2, T, scratch, bytes);
    CHECK(r == KVEC_ERROR_OVERLAP, "scores over the weights: %s", kvec_result_string(r));
    r = kvec_learned_scores(&t.scorer, &hidden, (float *)buffer, T, scratch, bytes);
    CHECK(r == KVEC_ERROR_OVERLAP, "scores over the hidden states: %s", kvec_result_string(r));
    r = kvec_learned_scores(&t.scorer, &hidden, scores, T, buffer, bytes);
    CHECK(r == KVEC_ERROR_OVERLAP || r == KVEC_ERROR_SCRATCH_TOO_SMALL, "scratch over the hidden states: %s",
          kvec_result_string(r));
    CHECK(kvec_learned_scores(&t.scorer, NULL, scores, T, scratch, bytes) == KVEC_ERROR_NULL_POINTER, "no hidden");
    CHECK(kvec_learned_scores(NULL, &hidden, scores, T, scratch, bytes) == KVEC_ERROR_NULL_POINTER, "no scorer");
    CHECK(kvec_learned_scores_scratch_bytes(&t.scorer, NULL) == KVEC_ERROR_NULL_POINTER, "no bytes");
#undef REFUSED
    free(scratch); free_scorer(&t); free(buffer); free(x);
}

/* kvec_learned_masses against the formula written out: a score's exp, a
   gate's decayed log retention, the sinks kept, the header first to go;
   in place the same; bad input refused with nothing written. */
static void test_learned_masses(void) {
    enum { N = 50 };
    float y[N], masses[N], in_place[N], before[N];
    int64_t i, out;
    for (i = 0; i < N; i++) y[i] = (float)((i * 37) % 23 - 11) / (i % 3 == 0 ? 4.0f : 0.5f);
    y[7] = 200.0f; y[8] = -FLT_MAX; /* clamped to e^+-80 */
    for (out = 0; out < 2; out++) {
        const kvec_scorer_output output = out ? KVEC_SCORER_LOG_RETENTION : KVEC_SCORER_SCORE;
        int ok = 1;
        for (i = 0; i < N; i++) y[i] = out && y[i] > 0 ? -y[i] : y[i]; /* a gate's log retention is <= 0 */
        CHECK(kvec_learned_masses(output, y, N, 4, 10, masses) == KVEC_OK, "output %d", (int)output);
        for (i = 0; i < N; i++) {
            double z = out ? (double)(N - 1 - i) / N * y[i] : y[i];
            const float want = i < 4 ? INFINITY : i < 10 ? 0.0f : (float)exp(z < -80 ? -80 : z > 80 ? 80 : z);
            ok &= masses[i] == want;
        }
        CHECK(ok, "output %d: masses as the formula gives them", (int)output);
        memcpy(in_place, y, sizeof y);
        CHECK(kvec_learned_masses(output, in_place, N, 4, 10, in_place) == KVEC_OK &&
              !memcmp(in_place, masses, sizeof masses), "output %d: in place, the same", (int)output);
        if (out) { /* the gate's order is (N - 1 - i) log beta_i's: the newest token decays least */
            float flat[N];
            for (i = 0; i < N; i++) flat[i] = -0.01f;
            CHECK(kvec_learned_masses(output, flat, N, 0, 0, masses) == KVEC_OK, "a flat gate");
            for (i = 1, ok = 1; i < N; i++) ok &= masses[i] > masses[i - 1];
            CHECK(ok && masses[N - 1] == 1.0f, "a flat gate keeps the newest first (last %g)", masses[N - 1]);
        }
    }
    for (i = 0; i < N; i++) masses[i] = before[i] = (float)-i;
#define REFUSED(code, what, call)                                                                       \
    do {                                                                                                \
        const kvec_result r = (call);                                                                   \
        CHECK(r == (code), "%s: %s, expected %s", what, kvec_result_string(r), kvec_result_string(code)); \
        CHECK(!memcmp(masses, before, sizeof masses), "%s: masses written", what);                      \
    } while (0)
    REFUSED(KVEC_ERROR_NULL_POINTER, "no outputs", kvec_learned_masses(KVEC_SCORER_SCORE, NULL, N, 4, 0, masses));
    REFUSED(KVEC_ERROR_BAD_CONFIG, "an unknown output", kvec_learned_masses((kvec_scorer_output)2, y, N, 4, 0, masses));
    REFUSED(KVEC_ERROR_BAD_EXTENT, "no positions", kvec_learned_masses(KVEC_SCORER_SCORE, y, 0, 4, 0, masses));
    REFUSED(KVEC_ERROR_BAD_EXTENT, "negative sinks", kvec_learned_masses(KVEC_SCORER_SCORE, y, N, -1, 0, masses));
    REFUSED(KVEC_ERROR_BAD_EXTENT, "a header past the prefix", kvec_learned_masses(KVEC_SCORER_SCORE, y, N, 4, N + 1, masses));
    REFUSED(KVEC_ERROR_SIZE_OVERFLOW, "a length past size_t",
            kvec_learned_masses(KVEC_SCORER_SCORE, y, INT64_MAX / 2, 4, 0, masses));
    REFUSED(KVEC_ERROR_OVERLAP, "outputs one float along the masses",
            kvec_learned_masses(KVEC_SCORER_SCORE, masses + 1, N - 1, 4, 0, masses));
    y[20] = NAN;
    REFUSED(KVEC_ERROR_NON_FINITE, "a NaN output", kvec_learned_masses(KVEC_SCORER_SCORE, y, N, 4, 0, masses));
    CHECK(kvec_learned_masses(KVEC_SCORER_SCORE, y, N, 4, 0, NULL) == KVEC_ERROR_NULL_POINTER, "no masses");
#undef REFUSED
}

int main(int argc, char **argv) {
    g_quiet = argc > 1 && strcmp(argv[1], "--quiet") == 0;
#define RUN(test) do { if (!g_quiet) printf("%s\n", #test); test(); } while (0)
    RUN(test_each_score_matches_naive_reference);
    RUN(test_h2o_with_whole_prefix_queries);
    RUN(test_random_is_seeded);
    RUN(test_selection_equals_sorting);
    RUN(test_ties_go_to_lower_position_and_nan_last);
    RUN(test_budget_window_and_order_for_every_policy);
    RUN(test_kvec_without_terms_selects_what_snapkv_selects);
    RUN(test_pyramid_budgets_follow_the_formula);
    RUN(test_compaction_equals_reference_gather_in_every_layout);
    RUN(test_same_selection_for_fp32_fp16_bf16);
    RUN(test_layer_by_layer_equals_whole_cache);
    RUN(test_cross_head_reserve_prefers_uncovered_tokens);
    RUN(test_batch_equals_each_sequence_alone);
    RUN(test_one_and_two_threads_identical);
    RUN(test_shared_pools_equal_sorting);
    RUN(test_shared_pools_in_evict_equal_scores_then_select);
    RUN(test_adaptive_layer_by_layer_equals_whole_cache);
    RUN(test_shared_pool_errors);
    RUN(test_plan_offsets_and_mask);
    RUN(test_out_proj_in_any_layout);
    RUN(test_output_aware_errors);
    RUN(test_decode_h2o_state_equals_recomputation);
    RUN(test_decode_policies_keep_what_they_say);
    RUN(test_decode_retention_gates);
    RUN(test_decode_errors_touch_nothing);
    RUN(test_packed_compaction_equals_gather);
    RUN(test_global_one_and_two_threads_identical);
    RUN(test_bad_inputs_return_errors_and_touch_nothing);
    RUN(test_per_layer_errors_touch_nothing);
    RUN(test_validation_never_overflows);
    RUN(test_addresses_never_wrap);
    RUN(test_pyramid_budget_of_huge_lengths);
    RUN(test_select_scratch_of_huge_pools);
    RUN(test_plan_offsets_never_overflow);
    RUN(test_plan_descriptors_are_checked);
    RUN(test_scratch_queries_of_huge_caches);
    RUN(test_head_focus_window_never_overflows);
    RUN(test_decode_state_is_validated);
    RUN(test_evict_without_a_plan);
    RUN(test_cache_inside_the_scratch_is_refused);
    RUN(test_batch_plans_sharing_memory_are_refused);
    RUN(test_keys_and_values_sharing_memory);
    RUN(test_which_tensors_must_be_finite);
    RUN(test_result_strings_are_distinct);
    RUN(test_validation_of_views);
    RUN(test_budget_at_least_n_keeps_everything);
    RUN(test_convenience_evict);
    RUN(test_conversions_round_to_nearest_even);
    RUN(test_reconstruction_matches_naive_reference);
    RUN(test_reconstruction_finds_the_attended_key);
    RUN(test_reconstruction_one_and_two_threads_identical);
    RUN(test_reconstruction_errors_touch_nothing);
    RUN(test_reconstruction_scratch_is_bounded_by_the_chunk);
    RUN(test_expected_attention_matches_naive_reference);
    RUN(test_expected_attention_statistics_and_a_planted_key);
    RUN(test_expected_attention_one_and_two_threads_identical);
    RUN(test_expected_attention_errors_touch_nothing);
    RUN(test_coverage_over_given_scores);
    RUN(test_learned_scores_match_naive_reference);
    RUN(test_learned_scores_in_chunks_and_threads);
    RUN(test_learned_scores_errors_touch_nothing);
    RUN(test_learned_masses);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
