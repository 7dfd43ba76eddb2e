/* bench/speed.c - CPU speed of kvec's score, select and compact steps

   A cache shaped like Llama-3.1-8B (32 layers, 32 query heads, 8 KV heads,
   head dim 128, fp16 K and V in [token][kv_head][dim], fp32 window queries
   [32 rows][32 heads][128] per layer), filled with seeded random data, is
   scored, selected and compacted layer by layer for every policy, and each
   step is set against a reference the machine can do in the same run:
   OpenBLAS sgemm for the window-attention arithmetic, memcpy for the bytes
   compaction moves. Nothing here knows what the numbers should be.

       make bench                     # 8K and 32K tokens, every policy; 128K for snapkv and kvec
       build/speed --quick            # 8K, one repeat: a smoke run
       build/speed --sizes 8192 --repeats 7 --policies snapkv,kvec

   Where a run times fewer than the model's 32 layers (--layers, the 128K
   run, and CriticalKV and LaProx, whose output norms cost far more than
   attention), every time is multiplied by 32 / (layers timed) and the
   report says so: all layers have the same shape, so each costs the same.

   bench/README.md says how to read the output. */

#define _POSIX_C_SOURCE 200809L /* sysconf */

#define KVEC_IMPLEMENTATION
#include "../kvec.h"

/* OpenBLAS from PyPI (scipy-openblas32, fetched by scripts/find-openblas.sh
   where the system has none) prefixes its symbols with scipy_. */
#ifdef KVEC_BENCH_SCIPY_OPENBLAS
#define cblas_sgemm scipy_cblas_sgemm
#define openblas_set_num_threads scipy_openblas_set_num_threads
#define openblas_get_num_threads scipy_openblas_get_num_threads
#define openblas_get_parallel scipy_openblas_get_parallel
#define openblas_get_config scipy_openblas_get_config
#define openblas_get_corename scipy_openblas_get_corename
#endif
#include <cblas.h>
#include <omp.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef _OPENMP
#error "build with -fopenmp: the benchmark measures kvec's OpenMP path and its thread scaling"
#endif

/* >>shape: Llama-3.1-8B */
enum {
    N_LAYERS   = 32,
    N_QHEADS   = 32,
    N_KVHEADS  = 8,
    GROUP      = N_QHEADS / N_KVHEADS, /* query heads per KV head */
    HEAD_DIM   = 128,                  /* K and V alike */
    N_QROWS    = 32,                   /* window queries supplied per layer */
    WINDOW     = 32,                   /* kvec's default observation window */
    BUDGET_PCT = 20                    /* budget = 20% of N, per KV head */
};

/* What kvec.h's window attention (kvec__window_attention) executes, read
   from the implementation: per KV head it takes the g*R query rows as one
   chunk, padded up to a multiple of 2 vector widths (zero rows, still
   multiplied), and makes one pass over all N keys: each q.k once, kept
   (exponentiated) in the scratch until the rows' normalisers are known. If
   the implementation changes, change these; the report prints them. */
#define SCORE_PASSES_OVER_K 1
#ifdef KVEC__LANES
#define SCORE_ROW_MULTIPLE (2 * KVEC__LANES)
#else
#define SCORE_ROW_MULTIPLE 1 /* unknown: count no padding */
#endif

/* Dot-product FLOPs of one scoring of all layers: useful = once per
   (query head, row, key), executed = what kvec__window_attention runs. */
static double useful_flops(int64_t rows, int64_t n)
{
    return 2.0 * N_LAYERS * N_QHEADS * (double)rows * (double)n * HEAD_DIM;
}

static double executed_flops(int64_t rows, int64_t n)
{
    int64_t chunk = (N_QHEADS / N_KVHEADS) * rows;
    int64_t padded = (chunk + SCORE_ROW_MULTIPLE - 1) / SCORE_ROW_MULTIPLE * SCORE_ROW_MULTIPLE;
    return 2.0 * N_LAYERS * N_KVHEADS * (double)padded * HEAD_DIM * (double)n * SCORE_PASSES_OVER_K;
}

#define MAX_REPEATS 100
#define MAX_SIZES   16
#define DATA_SEED   0x6b766563u /* "kvec" */

/* >>policies */
typedef struct bench_policy {
    const char *name;   /* as on the command line and in the tables */
    kvec_policy policy;
    int64_t     rows;   /* query rows its window attention reads; 0 = none */
    int64_t     layers; /* at most this many layers timed (scaled to 32); 0 = all */
    const char *note;
} bench_policy;

/* The output projection of the output-aware policies: W_o of Llama-3.1-8B,
   hidden size E = 4096 rows per query head of 128 dims, fp16, one copy
   shared by every layer (the time does not depend on its values). */
enum { OUT_ROWS = 4096 };

static const bench_policy POLICIES[] = {
    { "kvec",       KVEC_POLICY_KVEC,       WINDOW,  0, "default terms (uniqueness)" },
    { "snapkv",     KVEC_POLICY_SNAPKV,     WINDOW,  0, "" },
    { "pyramidkv",  KVEC_POLICY_PYRAMIDKV,  WINDOW,  0, "pyramid budgets" },
    { "streaming",  KVEC_POLICY_STREAMING,  0,       0, "4 sinks + most recent" },
    { "h2o",        KVEC_POLICY_H2O,        N_QROWS, 0, "window queries only (Wq = 32), not the whole prefix" },
    { "tova",       KVEC_POLICY_TOVA,       1,       0, "last query row only" },
    { "knorm",      KVEC_POLICY_KNORM,      0,       0, "" },
    { "keydiff",    KVEC_POLICY_KEYDIFF,    0,       0, "" },
    { "random",     KVEC_POLICY_RANDOM,     0,       0, "" },
    { "criticalkv", KVEC_POLICY_CRITICALKV, WINDOW,  1, "W_o fp16 [4096][32][128]; ||W_o^h v||_1 per token and query head" },
    { "laprox",     KVEC_POLICY_LAPROX,     WINDOW,  2, "W_o fp16 [4096][32][128]; Gram W'W per query head, v'Gv per token" },
};
enum { N_POLICIES = (int)(sizeof POLICIES / sizeof POLICIES[0]) };

/* >>options */
typedef struct options {
    int64_t sizes[MAX_SIZES];
    int     n_sizes;
    int     repeats;              /* 0 = 5 up to 8K tokens, 3 above */
    int     selected[N_POLICIES]; /* 1 = run this policy */
    int     quick;
    int64_t layers;               /* layers timed per size (1..32) */
    int64_t long_n;               /* the long run's tokens, 0 = none */
    int64_t long_layers;          /* layers timed in the long run */
    const char *summary;          /* JSON lines for bench/speed_torch.py, or NULL */
    int64_t recon_chunk;          /* reconstruction scores: chunk tokens, 0 = not run */
    int64_t learned_tokens;       /* learned scores: tokens of one prefill chunk, 0 = not run */
} options;

static void usage(FILE *f)
{
    int p;
    fprintf(f,
        "usage: speed [--quick] [--sizes N1,N2,...] [--repeats R] [--policies a,b,...] [--layers L]\n"
        "             [--long N] [--long-layers L] [--summary FILE]\n"
        "  --quick        8192 tokens, 1 repeat, no long run (a smoke run); --sizes/--repeats still win\n"
        "  --sizes        token counts, default 8192,32768\n"
        "  --repeats      repeats per measurement (1..%d), default 5 up to 8192 tokens, 3 above\n"
        "  --layers       layers timed per size (1..%d, default all), times scaled to %d layers\n"
        "  --long         then snapkv and kvec alone at N tokens, 1 repeat (default 131072; 0: none)\n"
        "  --long-layers  layers timed in the long run (default 4), times scaled to %d layers\n"
        "  --summary      write the SnapKV and K-VEC totals per size as JSON lines to FILE\n"
        "  --reconstruction C  then reconstruction scores of one layer, a C-token chunk (default 2048; 0: none)\n"
        "  --learned T    then learned scores of one layer, a T-token prefill chunk (default 2048; 0: none)\n"
        "  --policies     any of:", MAX_REPEATS, N_LAYERS, N_LAYERS, N_LAYERS);
    for (p = 0; p < N_POLICIES; p++) fprintf(f, " %s", POLICIES[p].name);
    fprintf(f, " (default all)\n");
}

/* Calls item(text, length, ctx) for each entry of a comma list; 0 on an empty or bad entry. */
static int parse_list(const char *list, int (*item)(const char *, size_t, void *), void *ctx)
{
    const char *s = list;
    for (;;) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len == 0 || !item(s, len, ctx)) return 0;
        if (!end) return 1;
        s = end + 1;
    }
}

static int parse_size(const char *s, size_t len, void *ctx)
{
    options *o = (options *)ctx;
    char buf[32], *end;
    long long v;
    if (len >= sizeof buf || o->n_sizes == MAX_SIZES) return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    v = strtoll(buf, &end, 10);
    /* The budget (20% of N) must hold the window. */
    if (*end != '\0' || v * BUDGET_PCT / 100 < WINDOW) {
        fprintf(stderr, "speed: bad size '%s' (need 20%% of N >= window %d)\n", buf, WINDOW);
        return 0;
    }
    o->sizes[o->n_sizes++] = (int64_t)v;
    return 1;
}

static int parse_policy(const char *s, size_t len, void *ctx)
{
    options *o = (options *)ctx;
    int p;
    for (p = 0; p < N_POLICIES; p++)
        if (strlen(POLICIES[p].name) == len && memcmp(POLICIES[p].name, s, len) == 0) {
            o->selected[p] = 1;
            return 1;
        }
    fprintf(stderr, "speed: unknown policy '%.*s'\n", (int)len, s);
    return 0;
}

static int parse_options(int argc, char **argv, options *o)
{
    int i, p, any_policy = 0;
    memset(o, 0, sizeof *o);
    o->layers = N_LAYERS;
    o->long_n = -1; /* default below */
    o->recon_chunk = -1;
    o->learned_tokens = -1;
    o->long_layers = 4;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--quick") == 0) {
            o->quick = 1;
        } else if (strcmp(a, "--sizes") == 0 && v) {
            o->n_sizes = 0;
            if (!parse_list(v, parse_size, o)) return 0;
            i++;
        } else if (strcmp(a, "--repeats") == 0 && v) {
            o->repeats = atoi(v);
            if (o->repeats < 1 || o->repeats > MAX_REPEATS) {
                fprintf(stderr, "speed: --repeats must be 1..%d\n", MAX_REPEATS);
                return 0;
            }
            i++;
        } else if (strcmp(a, "--policies") == 0 && v) {
            memset(o->selected, 0, sizeof o->selected);
            if (!parse_list(v, parse_policy, o)) return 0;
            any_policy = 1;
            i++;
        } else if ((strcmp(a, "--layers") == 0 || strcmp(a, "--long-layers") == 0) && v) {
            long long layers = atoll(v);
            if (layers < 1 || layers > N_LAYERS) {
                fprintf(stderr, "speed: %s must be 1..%d\n", a, N_LAYERS);
                return 0;
            }
            if (strcmp(a, "--layers") == 0) o->layers = layers; else o->long_layers = layers;
            i++;
        } else if (strcmp(a, "--long") == 0 && v) {
            char *end;
            long long n = strtoll(v, &end, 10);
            if (*end != '\0' || (n != 0 && n * BUDGET_PCT / 100 < WINDOW)) {
                fprintf(stderr, "speed: bad --long '%s' (0, or 20%% of N >= window %d)\n", v, WINDOW);
                return 0;
            }
            o->long_n = n;
            i++;
        } else if (strcmp(a, "--reconstruction") == 0 && v) {
            char *end;
            long long c = strtoll(v, &end, 10);
            if (*end != '\0' || c < 0 || c > 65536) {
                fprintf(stderr, "speed: bad --reconstruction '%s' (0 .. 65536 tokens)\n", v);
                return 0;
            }
            o->recon_chunk = c;
            i++;
        } else if (strcmp(a, "--learned") == 0 && v) {
            char *end;
            long long t = strtoll(v, &end, 10);
            if (*end != '\0' || t < 0 || t > 65536) {
                fprintf(stderr, "speed: bad --learned '%s' (0 .. 65536 tokens)\n", v);
                return 0;
            }
            o->learned_tokens = t;
            i++;
        } else if (strcmp(a, "--summary") == 0 && v) {
            o->summary = v;
            i++;
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else {
            fprintf(stderr, "speed: unknown or incomplete option '%s'\n", a);
            return 0;
        }
    }
    if (!any_policy)
        for (p = 0; p < N_POLICIES; p++) o->selected[p] = 1;
    if (o->n_sizes == 0) {
        o->sizes[o->n_sizes++] = 8192;
        if (!o->quick) o->sizes[o->n_sizes++] = 32768;
    }
    if (o->quick && o->repeats == 0) o->repeats = 1;
    if (o->long_n < 0) o->long_n = o->quick ? 0 : 131072;
    if (o->recon_chunk < 0) o->recon_chunk = 2048;
    if (o->learned_tokens < 0) o->learned_tokens = 2048;
    return 1;
}

/* >>statistics */
typedef struct stats {
    double med, min, max;
} stats;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static stats stats_of(const double *x, int n)
{
    double s[MAX_REPEATS];
    stats r;
    memcpy(s, x, (size_t)n * sizeof *s);
    qsort(s, (size_t)n, sizeof *s, cmp_double);
    r.min = s[0];
    r.max = s[n - 1];
    r.med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    return r;
}

static double gib(double bytes) { return bytes / (1024.0 * 1024.0 * 1024.0); }

/* >>data: seeded, identical for any thread count */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double uniform_open01(uint64_t *state) /* (0, 1): safe for log() */
{
    return ((double)(splitmix64(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal01(uint64_t *state) /* Box-Muller, one of the pair */
{
    double u = uniform_open01(state), v = uniform_open01(state);
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

/* Two billion fp16 N(0,1) values at 32K tokens: drawing each through
   Box-Muller and a float-to-half conversion would take longer than the
   benchmark's smaller steps, so K and V index a table of 65536 draws with
   16 random bits each. Speed does not depend on which normal values occur. */
static uint16_t NORMAL_F16[65536];

static void init_normal_table(void)
{
    uint64_t s = DATA_SEED;
    int i;
    for (i = 0; i < 65536; i++) NORMAL_F16[i] = kvec_f32_to_f16((float)normal01(&s));
}

static void fill_normal_f16(uint16_t *x, size_t count, uint64_t seed)
{
    uint64_t s = seed;
    size_t i = 0;
    while (i < count) {
        uint64_t r = splitmix64(&s);
        int k;
        for (k = 0; k < 4 && i < count; k++, i++, r >>= 16) x[i] = NORMAL_F16[r & 0xffff];
    }
}

/* One memcpy per thread over equal parts: the reference for compaction's
   traffic, and the untimed restore of the cache between repeats. */
static void copy_parallel(void *dst, const void *src, size_t bytes)
{
#pragma omp parallel
    {
        size_t t = (size_t)omp_get_thread_num(), nt = (size_t)omp_get_num_threads();
        size_t begin = bytes / nt * t, end = t + 1 == nt ? bytes : bytes / nt * (t + 1);
        memcpy((char *)dst + begin, (const char *)src + begin, end - begin);
    }
}

/* >>bench state for one N */
typedef struct bench {
    int64_t    n, budget;
    int64_t    n_layers;      /* layers held and timed, of the model's N_LAYERS */
    uint16_t  *out_proj;      /* [E][H][D] fp16, shared by all layers; NULL unless needed */
    int        repeats, threads;
    size_t     layer_elems;   /* N * Hk * D: K (or V) of one layer */
    size_t     kv_bytes;      /* K and V of all layers, one copy */
    uint16_t  *pristine;      /* [L][K,V][N][Hk][D] fp16, never modified after filling */
    uint16_t  *work;          /* same layout; compacted in place, restored each repeat */
    float     *queries;       /* [L][Wq][H][D] */
    float     *scores;        /* [Hk][N] one layer's scores */
    kvec_layer layers[N_LAYERS];
    size_t     allocated;     /* bytes, for the report */
} bench;

static uint16_t *layer_k(uint16_t *base, const bench *b, int64_t l) { return base + (size_t)(2 * l) * b->layer_elems; }
static uint16_t *layer_v(uint16_t *base, const bench *b, int64_t l) { return base + (size_t)(2 * l + 1) * b->layer_elems; }

static void *xmalloc(size_t bytes, size_t *total)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "speed: out of memory allocating %.2f GiB (%.2f GiB already held)\n",
                gib((double)bytes), gib((double)*total));
        exit(1);
    }
    *total += bytes;
    return p;
}

static void bench_init(bench *b, int64_t n, int repeats, int64_t n_layers, int output_aware)
{
    size_t q_elems = (size_t)N_QROWS * N_QHEADS * HEAD_DIM;
    int64_t c, l;
    memset(b, 0, sizeof *b);
    b->n = n;
    b->n_layers = n_layers;
    b->budget = n * BUDGET_PCT / 100;
    b->repeats = repeats;
    b->threads = omp_get_max_threads();
    b->layer_elems = (size_t)n * N_KVHEADS * HEAD_DIM;
    b->kv_bytes = 2 * (size_t)n_layers * b->layer_elems * sizeof(uint16_t);
    b->pristine = (uint16_t *)xmalloc(b->kv_bytes, &b->allocated);
    b->work = (uint16_t *)xmalloc(b->kv_bytes, &b->allocated);
    b->queries = (float *)xmalloc((size_t)n_layers * q_elems * sizeof(float), &b->allocated);
    b->scores = (float *)xmalloc((size_t)N_KVHEADS * (size_t)n * sizeof(float), &b->allocated);
    memset(b->scores, 0, (size_t)N_KVHEADS * (size_t)n * sizeof(float));

    /* One stream per (layer, K or V) and per layer of queries, so the data
       does not depend on how OpenMP splits the loop. */
#pragma omp parallel for schedule(dynamic)
    for (c = 0; c < 2 * n_layers; c++) {
        uint64_t seed = DATA_SEED ^ ((uint64_t)n << 20) ^ (uint64_t)c;
        fill_normal_f16(b->pristine + (size_t)c * b->layer_elems, b->layer_elems, splitmix64(&seed));
    }
    /* q and k are N(0,1) per component, so q.k/sqrt(D) has standard
       deviation 1: the softmax over N keys is neither one-hot nor flat. */
    for (l = 0; l < n_layers; l++) {
        uint64_t s = DATA_SEED ^ ((uint64_t)n << 20) ^ (uint64_t)(1000 + l);
        size_t i;
        for (i = 0; i < q_elems; i++) b->queries[(size_t)l * q_elems + i] = (float)normal01(&s);
    }
    copy_parallel(b->work, b->pristine, b->kv_bytes);
    if (output_aware) {
        const size_t elems = (size_t)OUT_ROWS * N_QHEADS * HEAD_DIM;
        b->out_proj = (uint16_t *)xmalloc(elems * sizeof(uint16_t), &b->allocated);
        fill_normal_f16(b->out_proj, elems, DATA_SEED ^ 0x6f7574u);
    }

    for (l = 0; l < n_layers; l++) {
        b->layers[l].keys = kvec_tensor_contiguous(layer_k(b->work, b, l), KVEC_DTYPE_F16, n, N_KVHEADS, HEAD_DIM);
        b->layers[l].values = kvec_tensor_contiguous(layer_v(b->work, b, l), KVEC_DTYPE_F16, n, N_KVHEADS, HEAD_DIM);
        b->layers[l].queries = kvec_tensor_contiguous(b->queries + (size_t)l * q_elems, KVEC_DTYPE_F32,
                                                      N_QROWS, N_QHEADS, HEAD_DIM);
        if (b->out_proj)
            b->layers[l].out_proj = kvec_tensor_contiguous(b->out_proj, KVEC_DTYPE_F16, OUT_ROWS, N_QHEADS, HEAD_DIM);
    }
}

static void bench_free(bench *b)
{
    free(b->pristine);
    free(b->work);
    free(b->queries);
    free(b->scores);
    free(b->out_proj);
}

/* >>checks: a fast wrong answer is not a result */
static int g_problems; /* library misbehaviour seen; makes the exit status 1 */

static void problem(const char *policy, const char *fmt, int64_t a, int64_t b, int64_t c, int64_t d)
{
    fprintf(stderr, "speed: PROBLEM (%s): ", policy);
    fprintf(stderr, fmt, (long long)a, (long long)b, (long long)c, (long long)d);
    fputc('\n', stderr);
    g_problems++;
}

/* Counts as docs/SEMANTICS.md "Selection" demands: B_l per head (N if
   B_l >= N), ascending, in range, the last W positions always kept. */
static int check_plan(const bench *b, const char *policy, const kvec_plan *plan, const int64_t *budgets,
                      int64_t layers)
{
    int64_t l, j, r;
    for (l = 0; l < layers; l++)
        for (j = 0; j < N_KVHEADS; j++) {
            int64_t count = plan->kept_count[l * N_KVHEADS + j];
            int64_t want = budgets[l] < b->n ? budgets[l] : b->n;
            const int64_t *pos = plan->kept_positions + (l * N_KVHEADS + j) * plan->capacity;
            if (count != want) {
                problem(policy, "layer %lld head %lld keeps %lld positions, layer budget is %lld", l, j, count, want);
                return 0;
            }
            for (r = 0; r < count; r++)
                if (pos[r] < 0 || pos[r] >= b->n || (r > 0 && pos[r] <= pos[r - 1])) {
                    problem(policy, "layer %lld head %lld: kept position %lld is %lld (out of range or not ascending)",
                            l, j, r, pos[r]);
                    return 0;
                }
            for (r = 0; r < WINDOW; r++)
                if (pos[count - WINDOW + r] != b->n - WINDOW + r) {
                    problem(policy, "layer %lld head %lld: window position %lld missing (entry %lld)",
                            l, j, b->n - WINDOW + r, count - WINDOW + r);
                    return 0;
                }
        }
    return 1;
}

/* docs/SEMANTICS.md "Compaction": row r of head j holds original row p_r. */
static int check_compaction(bench *b, const char *policy, const kvec_plan *plan, int64_t layers)
{
    const size_t row = HEAD_DIM * sizeof(uint16_t), token = (size_t)N_KVHEADS * HEAD_DIM;
    int64_t l, j, r;
    for (l = 0; l < layers; l++)
        for (j = 0; j < N_KVHEADS; j++) {
            int64_t count = plan->kept_count[l * N_KVHEADS + j];
            const int64_t *pos = plan->kept_positions + (l * N_KVHEADS + j) * plan->capacity;
            for (r = 0; r < count; r++) {
                size_t dst = (size_t)r * token + (size_t)j * HEAD_DIM;
                size_t src = (size_t)pos[r] * token + (size_t)j * HEAD_DIM;
                if (memcmp(layer_k(b->work, b, l) + dst, layer_k(b->pristine, b, l) + src, row) != 0 ||
                    memcmp(layer_v(b->work, b, l) + dst, layer_v(b->pristine, b, l) + src, row) != 0) {
                    problem(policy, "layer %lld head %lld: compacted row %lld is not original row %lld",
                            l, j, r, pos[r]);
                    return 0;
                }
            }
        }
    return 1;
}

/* >>policy runs: score, select, compact, layer by layer as an engine would */
typedef struct policy_run {
    int         ran;
    kvec_result error;            /* KVEC_OK unless a call failed */
    char        where[96];        /* which call, which layer */
    int64_t     kept_rows;        /* all layers and heads, from the plan (scaled like the times) */
    int64_t     layers;           /* layers timed; every time is scaled by N_LAYERS / layers */
    size_t      score_scratch, select_scratch;
    double      score[MAX_REPEATS], select[MAX_REPEATS], compact[MAX_REPEATS];
    double      total[MAX_REPEATS], memcpy_ref[MAX_REPEATS];
} policy_run;

#define TRY(call, what, layer)                                                   \
    do {                                                                         \
        kvec_result r_ = (call);                                                 \
        if (r_ != KVEC_OK) {                                                     \
            out->error = r_;                                                     \
            snprintf(out->where, sizeof out->where, "%s, layer %lld", (what),    \
                     (long long)(layer));                                        \
            fprintf(stderr, "speed: %s: %s failed: %s (%d)\n", bp->name,         \
                    out->where, kvec_result_string(r_), (int)r_);                \
            goto done;                                                           \
        }                                                                        \
    } while (0)

static void run_policy(bench *b, const bench_policy *bp, policy_run *out)
{
    kvec_config cfg;
    kvec_plan plan;
    int64_t budgets[N_LAYERS], capacity = 0, l, i;
    void *scratch = NULL;
    size_t scratch_bytes, held = 0;
    int rep;

    memset(out, 0, sizeof *out);
    memset(&cfg, 0, sizeof cfg); /* every field default, like an engine would start */
    cfg.policy = bp->policy;
    memset(&plan, 0, sizeof plan);

    TRY(kvec_plan_capacity(&cfg, b->budget, N_LAYERS, b->n, &capacity), "kvec_plan_capacity", -1);
    for (l = 0; l < N_LAYERS; l++)
        TRY(kvec_layer_budget(&cfg, b->budget, l, N_LAYERS, b->n, &budgets[l]), "kvec_layer_budget", l);
    out->layers = bp->layers && bp->layers < b->n_layers ? bp->layers : b->n_layers;
    for (l = 0; l < out->layers; l++) { /* same shape everywhere, but ask for each */
        size_t bytes = 0;
        TRY(kvec_layer_scratch_bytes(&cfg, &b->layers[l], &bytes), "kvec_layer_scratch_bytes", l);
        if (bytes > out->score_scratch) out->score_scratch = bytes;
    }
    out->select_scratch = kvec_select_scratch_bytes(&cfg, 1, N_KVHEADS, b->n);
    scratch_bytes = out->score_scratch > out->select_scratch ? out->score_scratch : out->select_scratch;

    plan.n_layers = N_LAYERS;
    plan.n_kv_heads = N_KVHEADS;
    plan.capacity = capacity;
    plan.kept_count = (int64_t *)xmalloc((size_t)N_LAYERS * N_KVHEADS * sizeof(int64_t), &held);
    plan.kept_positions = (int64_t *)xmalloc((size_t)N_LAYERS * N_KVHEADS * (size_t)capacity * sizeof(int64_t), &held);
    scratch = xmalloc(scratch_bytes, &held);
    /* Not needed by kvec; touching the pages keeps first-use page faults
       out of the first repeat. */
    memset(scratch, 0, scratch_bytes);
    memset(plan.kept_positions, 0, (size_t)N_LAYERS * N_KVHEADS * (size_t)capacity * sizeof(int64_t));
    memset(plan.kept_count, 0, (size_t)N_LAYERS * N_KVHEADS * sizeof(int64_t)); /* layers not timed keep 0 */

    for (rep = 0; rep < b->repeats; rep++) {
        double t_score = 0, t_select = 0, t_compact = 0;
        size_t moved;
        fprintf(stderr, "  [N=%lld] %-9s repeat %d/%d\n", (long long)b->n, bp->name, rep + 1, b->repeats);
        copy_parallel(b->work, b->pristine, b->kv_bytes); /* compaction is in place */

        for (l = 0; l < out->layers; l++) {
            double t0, t1, t2, t3;
            kvec_result r_score, r_select, r_compact;
            /* Coverage is NULL: only K-VEC's cross-layer term reads it, and
               it is off by default. */
            t0 = omp_get_wtime();
            r_score = kvec_score_layer(&cfg, &b->layers[l], l, b->budget, NULL, b->scores, scratch, scratch_bytes);
            t1 = omp_get_wtime();
            TRY(r_score, "kvec_score_layer", l);
            r_select = kvec_select_layer(&cfg, b->scores, N_KVHEADS, b->n, budgets[l], l, NULL, &plan,
                                         scratch, scratch_bytes);
            t2 = omp_get_wtime();
            TRY(r_select, "kvec_select_layer", l);
            r_compact = kvec_compact_layer(&b->layers[l], &plan, l);
            t3 = omp_get_wtime();
            TRY(r_compact, "kvec_compact_layer", l);
            t_score += t1 - t0;
            t_select += t2 - t1;
            t_compact += t3 - t2;
        }
        out->score[rep] = t_score;
        out->select[rep] = t_select;
        out->compact[rep] = t_compact;
        out->total[rep] = t_score + t_select + t_compact;

        out->kept_rows = 0;
        for (i = 0; i < N_LAYERS * N_KVHEADS; i++) out->kept_rows += plan.kept_count[i];
        if (rep == 0 && (!check_plan(b, bp->name, &plan, budgets, out->layers) ||
                         !check_compaction(b, bp->name, &plan, out->layers)))
            fprintf(stderr, "speed: %s: timings below are of a wrong result\n", bp->name);

        /* The bytes compaction moves (kept K and V rows), copied once in one
           contiguous block; it overwrites the working copy, which the next
           repeat restores anyway. */
        moved = (size_t)out->kept_rows * 2 * HEAD_DIM * sizeof(uint16_t);
        {
            double t0 = omp_get_wtime();
            copy_parallel(b->work, b->pristine, moved);
            out->memcpy_ref[rep] = omp_get_wtime() - t0;
        }
    }
    {   /* to the whole model: every layer has the same shape */
        const double scale = (double)N_LAYERS / (double)out->layers;
        for (rep = 0; rep < b->repeats; rep++) {
            out->score[rep] *= scale; out->select[rep] *= scale; out->compact[rep] *= scale;
            out->total[rep] *= scale; out->memcpy_ref[rep] *= scale;
        }
        out->kept_rows = out->kept_rows * N_LAYERS / out->layers;
    }
    out->ran = 1;
done:
    free(plan.kept_count);
    free(plan.kept_positions);
    free(scratch);
}

/* Scoring only, all layers, at a given thread count. Scores do not change
   the cache, so one restore before the call is enough. keep_scores receives
   the last layer's scores, for the bit-identity check across thread counts. */
static kvec_result run_scoring(bench *b, const bench_policy *bp, int threads, double *times, float *keep_scores)
{
    kvec_config cfg;
    size_t scratch_bytes = 0;
    void *scratch;
    size_t held = 0;
    int64_t l;
    int rep;
    kvec_result r = KVEC_OK;

    memset(&cfg, 0, sizeof cfg);
    cfg.policy = bp->policy;
    r = kvec_layer_scratch_bytes(&cfg, &b->layers[0], &scratch_bytes);
    if (r != KVEC_OK) return r;
    scratch = xmalloc(scratch_bytes, &held);
    memset(scratch, 0, scratch_bytes);

    omp_set_num_threads(threads);
    for (rep = 0; rep < b->repeats && r == KVEC_OK; rep++) {
        double t = 0;
        fprintf(stderr, "  [N=%lld] %-9s scoring, %d thread%s, repeat %d/%d\n", (long long)b->n, bp->name,
                threads, threads == 1 ? "" : "s", rep + 1, b->repeats);
        for (l = 0; l < b->n_layers && r == KVEC_OK; l++) {
            double t0 = omp_get_wtime();
            r = kvec_score_layer(&cfg, &b->layers[l], l, b->budget, NULL, b->scores, scratch, scratch_bytes);
            t += omp_get_wtime() - t0;
        }
        times[rep] = t * (double)N_LAYERS / (double)b->n_layers;
    }
    omp_set_num_threads(b->threads);
    if (r != KVEC_OK)
        fprintf(stderr, "speed: %s: kvec_score_layer failed at %d threads: %s (%d)\n", bp->name, threads,
                kvec_result_string(r), (int)r);
    else
        memcpy(keep_scores, b->scores, (size_t)N_KVHEADS * (size_t)b->n * sizeof(float));
    free(scratch);
    return r;
}

static float f16_to_f32(uint16_t h)
{
#ifdef __F16C__
    return _cvtsh_ss(h); /* a billion conversions per sgemm repeat at 32K */
#else
    return kvec_f16_to_f32(h);
#endif
}

/* >>sgemm reference: the window-attention dot products as one GEMM per
   (layer, KV head): C[g*R x N] = Q[g*R x D] * K^T, fp32. K is converted from
   fp16 and Q regrouped outside the timed region; only cblas_sgemm is timed. */
static void run_sgemm(bench *b, int threads, double *times)
{
    const int64_t m = GROUP * N_QROWS; /* 128 query rows per KV head */
    size_t held = 0, q_elems = (size_t)N_QROWS * N_QHEADS * HEAD_DIM;
    float *k32 = (float *)xmalloc(b->layer_elems * sizeof(float), &held);        /* [N][Hk][D] */
    float *qg = (float *)xmalloc(q_elems * sizeof(float), &held);                /* [Hk][g*R][D] */
    float *c = (float *)xmalloc((size_t)m * (size_t)b->n * sizeof(float), &held); /* [g*R][N] */
    int rep;

    memset(c, 0, (size_t)m * (size_t)b->n * sizeof(float));
    openblas_set_num_threads(threads);
    for (rep = 0; rep < b->repeats; rep++) {
        double t = 0;
        int64_t l, j;
        fprintf(stderr, "  [N=%lld] sgemm, %d thread%s, repeat %d/%d\n", (long long)b->n, threads,
                threads == 1 ? "" : "s", rep + 1, b->repeats);
        for (l = 0; l < b->n_layers; l++) {
            const uint16_t *k16 = layer_k(b->pristine, b, l);
            const float *q = b->queries + (size_t)l * q_elems;
            int64_t e, r, h;
            double t0;
            /* Serial on purpose: right after an OpenMP region libgomp's
               threads spin-wait, and on a small machine they take the cores
               OpenBLAS's own pthreads need (measured: sgemm up to 2x slower). */
            for (e = 0; e < (int64_t)b->layer_elems; e++) k32[e] = f16_to_f32(k16[e]);
            for (h = 0; h < N_QHEADS; h++)
                for (r = 0; r < N_QROWS; r++)
                    memcpy(qg + ((size_t)(h / GROUP) * (size_t)m + (size_t)(h % GROUP) * N_QROWS + (size_t)r) * HEAD_DIM,
                           q + ((size_t)r * N_QHEADS + (size_t)h) * HEAD_DIM, HEAD_DIM * sizeof(float));
            t0 = omp_get_wtime();
            for (j = 0; j < N_KVHEADS; j++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)b->n, HEAD_DIM, 1.0f,
                            qg + (size_t)j * (size_t)m * HEAD_DIM, HEAD_DIM,
                            k32 + (size_t)j * HEAD_DIM, N_KVHEADS * HEAD_DIM, 0.0f, c, (int)b->n);
            t += omp_get_wtime() - t0;
        }
        times[rep] = t * (double)N_LAYERS / (double)b->n_layers;
    }
    openblas_set_num_threads(b->threads);
    free(k32);
    free(qg);
    free(c);
}

/* >>reconstruction: kvec_reconstruction_scores on one layer of the
   Llama-3.1-8B shape, a chunk of C context tokens (fp16 keys of an 8K-token
   cache, [N][Hk][D]) repeated by a pass of R = C + 16 rows (fp32 queries
   [R][32][128], fp16 pass keys [R][8][128]), 4 sinks; beside sgemm of the
   same products: per KV head, Q [g*R x D] times the S + C + R keys. Useful
   FLOPs: 2D per (query head, row, visible key), row r seeing S + C + r + 1
   keys; sgemm computes the whole rectangle and is credited with all of it. */
static void run_reconstruction(int64_t chunk, int repeats)
{
    const int64_t N = 8192, S = 4, R = chunk + 16, begin = N - chunk, D = HEAD_DIM, m = GROUP * R;
    const int64_t n_keys = S + chunk + R;
    size_t held = 0;
    uint16_t *k = (uint16_t *)xmalloc((size_t)(N * N_KVHEADS * D) * 2, &held);
    uint16_t *pk = (uint16_t *)xmalloc((size_t)(R * N_KVHEADS * D) * 2, &held);
    float *q = (float *)xmalloc((size_t)(R * N_QHEADS * D) * sizeof(float), &held);
    float *scores = (float *)xmalloc((size_t)(N_KVHEADS * N) * sizeof(float), &held);
    float *qg = (float *)xmalloc((size_t)(N_KVHEADS * m * D) * sizeof(float), &held);  /* [Hk][g*R][D] */
    float *k32 = (float *)xmalloc((size_t)(N_KVHEADS * n_keys * D) * sizeof(float), &held); /* [Hk][keys][D] */
    float *c = (float *)xmalloc((size_t)(m * n_keys) * sizeof(float), &held);
    kvec_layer layer;
    kvec_reconstruction pass;
    size_t scratch_bytes = 0;
    void *scratch;
    double kvec_t[MAX_REPEATS], blas_t[MAX_REPEATS], useful, rect;
    uint64_t seed = DATA_SEED + 7;
    int64_t i, j, r, h, x;
    int rep;
    stats ks, bs;
    fill_normal_f16(k, (size_t)(N * N_KVHEADS * D), DATA_SEED + 5);
    fill_normal_f16(pk, (size_t)(R * N_KVHEADS * D), DATA_SEED + 6);
    for (i = 0; i < R * N_QHEADS * D; i++) q[i] = (float)normal01(&seed);
    memset(&layer, 0, sizeof layer);
    layer.keys = kvec_tensor_contiguous(k, KVEC_DTYPE_F16, N, N_KVHEADS, D);
    pass.queries = kvec_tensor_contiguous(q, KVEC_DTYPE_F32, R, N_QHEADS, D);
    pass.keys = kvec_tensor_contiguous(pk, KVEC_DTYPE_F16, R, N_KVHEADS, D);
    pass.chunk_begin = begin;
    pass.chunk_end = N;
    if (kvec_reconstruction_scratch_bytes(NULL, &layer, &pass, &scratch_bytes) != KVEC_OK) {
        problem("reconstruction", "scratch query failed", 0, 0, 0, 0);
        return;
    }
    scratch = xmalloc(scratch_bytes, &held);
    /* the sgemm operands, regrouped and converted outside the timed region */
    for (j = 0; j < N_KVHEADS; j++) {
        for (x = 0; x < n_keys; x++) {
            const uint16_t *row = x < S ? k + (x * N_KVHEADS + j) * D
                                : x < S + chunk ? k + ((begin + x - S) * N_KVHEADS + j) * D
                                : pk + ((x - S - chunk) * N_KVHEADS + j) * D;
            for (i = 0; i < D; i++) k32[(j * n_keys + x) * D + i] = f16_to_f32(row[i]);
        }
        for (r = 0; r < R; r++)
            for (h = 0; h < GROUP; h++)
                memcpy(qg + ((size_t)j * (size_t)m + (size_t)(r * GROUP + h)) * (size_t)D,
                       q + ((size_t)r * N_QHEADS + (size_t)(j * GROUP + h)) * (size_t)D, (size_t)D * sizeof(float));
    }
    for (rep = 0; rep < repeats; rep++) {
        double t0 = omp_get_wtime();
        fprintf(stderr, "  reconstruction, chunk %lld, repeat %d/%d\n", (long long)chunk, rep + 1, repeats);
        if (kvec_reconstruction_scores(NULL, &layer, &pass, scores, scratch, scratch_bytes) != KVEC_OK)
            problem("reconstruction", "kvec_reconstruction_scores failed", 0, 0, 0, 0);
        kvec_t[rep] = omp_get_wtime() - t0;
        t0 = omp_get_wtime();
        for (j = 0; j < N_KVHEADS; j++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n_keys, (int)D, 1.0f,
                        qg + (size_t)j * (size_t)m * (size_t)D, (int)D, k32 + (size_t)j * (size_t)n_keys * (size_t)D,
                        (int)D, 0.0f, c, (int)n_keys);
        blas_t[rep] = omp_get_wtime() - t0;
    }
    for (i = 0; i < N_KVHEADS * chunk; i++) { /* the scores are probabilities */
        const float v = scores[(i / chunk) * N + begin + i % chunk];
        if (!(v >= 0.0f && v <= 1.0f)) { problem("reconstruction", "score outside [0, 1] at %lld", i, 0, 0, 0); break; }
    }
    useful = 2.0 * (double)D * N_QHEADS * ((double)R * (double)(S + chunk) + (double)R * (double)(R + 1) / 2.0);
    rect = 2.0 * (double)D * N_QHEADS * (double)R * (double)n_keys;
    ks = stats_of(kvec_t, repeats);
    bs = stats_of(blas_t, repeats);
    printf("\n==== reconstruction scores (KVzip): one layer, a %lld-token chunk of an %lld-token fp16 cache, "
           "a pass of %lld rows, %lld sinks; %d repeat%s ====\n",
           (long long)chunk, (long long)N, (long long)R, (long long)S, repeats, repeats == 1 ? "" : "s");
    printf("  kvec_reconstruction_scores  median %8.1f ms [%.1f, %.1f]  useful %.1f GFLOP -> %.1f GFLOP/s\n",
           1e3 * ks.med, 1e3 * ks.min, 1e3 * ks.max, useful / 1e9, useful / ks.med / 1e9);
    printf("  sgemm, same products        median %8.1f ms [%.1f, %.1f]  %.1f GFLOP (the whole rectangle) -> %.1f GFLOP/s\n",
           1e3 * bs.med, 1e3 * bs.min, 1e3 * bs.max, rect / 1e9, rect / bs.med / 1e9);
    printf("  ratio of useful rates (kvec / sgemm): %.2f   (kvec also converts the keys, takes every softmax,\n"
           "  and keeps the max over rows; the causal triangle of the pass's own keys is not useful work)\n",
           (useful / ks.med) / (rect / bs.med));
    free(k); free(pk); free(q); free(scores); free(qg); free(k32); free(c); free(scratch);
}

/* >>learned: kvec_learned_scores on one layer of the Llama-3.1-8B shape, a
   linear scorer ([8][4096]) over a T-token prefill chunk of fp32 hidden
   states ([T][1][4096]); beside sgemm of the same products ([T x E] x
   [E x Hk]) and of the layer's K projection ([T x E] x [E x Hk*D]), whose
   rate stands for the prefill's. The prefill of one layer is 2 T P FLOPs
   for its P weights (attention 4096 x (4096 + 2 x 1024 + 4096), MLP
   3 x 4096 x 14336), plus attention over the context; the share printed
   counts the weights' products only, so the real share is smaller. */
static void run_learned(int64_t T, int repeats)
{
    const int64_t E = 4096, Hk = N_KVHEADS, KD = N_KVHEADS * HEAD_DIM;
    const double layer_weights = 4096.0 * (4096.0 + 2.0 * 1024.0 + 4096.0) + 3.0 * 4096.0 * 14336.0;
    size_t held = 0;
    float *hidden = (float *)xmalloc((size_t)(T * E) * sizeof(float), &held);
    float *weights = (float *)xmalloc((size_t)(Hk * E + Hk) * sizeof(float), &held);
    float *wk = (float *)xmalloc((size_t)(KD * E) * sizeof(float), &held);
    float *scores = (float *)xmalloc((size_t)(Hk * T) * sizeof(float), &held);
    float *same = (float *)xmalloc((size_t)(T * Hk) * sizeof(float), &held);
    float *kproj = (float *)xmalloc((size_t)(T * KD) * sizeof(float), &held);
    kvec_scorer scorer;
    kvec_tensor view;
    size_t scratch_bytes = 0;
    void *scratch;
    double kvec_t[MAX_REPEATS], same_t[MAX_REPEATS], kproj_t[MAX_REPEATS], flops, kproj_rate;
    uint64_t seed = DATA_SEED + 11;
    int64_t i;
    int rep;
    stats ks, ss, kp;
    for (i = 0; i < T * E; i++) hidden[i] = (float)normal01(&seed);
    for (i = 0; i < Hk * E + Hk; i++) weights[i] = 0.02f * (float)normal01(&seed);
    for (i = 0; i < KD * E; i++) wk[i] = 0.02f * (float)normal01(&seed);
    memset(&scorer, 0, sizeof scorer);
    scorer.kind = KVEC_SCORER_LINEAR;
    scorer.output = KVEC_SCORER_SCORE;
    scorer.n_embd = E;
    scorer.n_kv_heads = Hk;
    scorer.weight = weights;
    scorer.bias = weights + Hk * E;
    view = kvec_tensor_contiguous(hidden, KVEC_DTYPE_F32, T, 1, E);
    if (kvec_learned_scores_scratch_bytes(&scorer, &scratch_bytes) != KVEC_OK) {
        problem("learned", "scratch query failed", 0, 0, 0, 0);
        return;
    }
    scratch = xmalloc(scratch_bytes, &held);
    for (rep = 0; rep < repeats; rep++) {
        double t0 = omp_get_wtime();
        fprintf(stderr, "  learned scores, %lld tokens, repeat %d/%d\n", (long long)T, rep + 1, repeats);
        if (kvec_learned_scores(&scorer, &view, scores, T, scratch, scratch_bytes) != KVEC_OK)
            problem("learned", "kvec_learned_scores failed", 0, 0, 0, 0);
        kvec_t[rep] = omp_get_wtime() - t0;
        t0 = omp_get_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)Hk, (int)E, 1.0f, hidden, (int)E, weights,
                    (int)E, 0.0f, same, (int)Hk);
        same_t[rep] = omp_get_wtime() - t0;
        t0 = omp_get_wtime();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)KD, (int)E, 1.0f, hidden, (int)E, wk,
                    (int)E, 0.0f, kproj, (int)KD);
        kproj_t[rep] = omp_get_wtime() - t0;
    }
    for (i = 0; i < T * Hk; i++) { /* the same products, summed in another order */
        const double a = scores[(i % Hk) * T + i / Hk] - weights[Hk * E + i % Hk], b = same[i];
        if (!(fabs(a - b) <= 1e-3 * (1.0 + fabs(b)))) { problem("learned", "score %lld differs from sgemm's", i, 0, 0, 0); break; }
    }
    ks = stats_of(kvec_t, repeats);
    ss = stats_of(same_t, repeats);
    kp = stats_of(kproj_t, repeats);
    flops = 2.0 * (double)T * (double)E * (double)Hk;
    kproj_rate = 2.0 * (double)T * (double)E * (double)KD / kp.med;
    printf("\n==== learned scores: one layer of the Llama-3.1-8B shape, a linear scorer [%lld][%lld] over a "
           "%lld-token prefill chunk (fp32 hidden states); %d repeat%s ====\n",
           (long long)Hk, (long long)E, (long long)T, repeats, repeats == 1 ? "" : "s");
    printf("  kvec_learned_scores         median %8.2f ms [%.2f, %.2f]  %.3f GFLOP -> %.1f GFLOP/s\n",
           1e3 * ks.med, 1e3 * ks.min, 1e3 * ks.max, flops / 1e9, flops / ks.med / 1e9);
    printf("  sgemm, same products        median %8.2f ms [%.2f, %.2f]  -> %.1f GFLOP/s (ratio kvec / sgemm %.2f)\n",
           1e3 * ss.med, 1e3 * ss.min, 1e3 * ss.max, flops / ss.med / 1e9, ss.med / ks.med);
    printf("  sgemm, the K projection     median %8.2f ms [%.2f, %.2f]  -> %.1f GFLOP/s (the prefill's rate here)\n",
           1e3 * kp.med, 1e3 * kp.min, 1e3 * kp.max, kproj_rate / 1e9);
    printf("  share of the layer's prefill (its weights' products at that rate, %.1f GFLOP): %.3f%%\n",
           2.0 * (double)T * layer_weights / 1e9, 100.0 * ks.med / (2.0 * (double)T * layer_weights / kproj_rate));
    free(hidden); free(weights); free(wk); free(scores); free(same); free(kproj); free(scratch);
}

/* >>machine */
static void cpuinfo_field(const char *key, char *out, size_t out_size)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    size_t klen = strlen(key);
    snprintf(out, out_size, "unknown");
    if (!f) return;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon += 1 + (colon[1] == ' ');
                colon[strcspn(colon, "\n")] = '\0';
                snprintf(out, out_size, "%s", colon);
            }
            break;
        }
    fclose(f);
}

/* First line of a small text file (sysfs), or "unknown". */
static void first_line(const char *path, char *out, size_t out_size)
{
    FILE *f = fopen(path, "r");
    snprintf(out, out_size, "unknown");
    if (!f) return;
    if (fgets(out, (int)out_size, f)) out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

static void print_machine(const options *o)
{
    char model[256], cores[64], cache[64], date[64], memtotal[64], thp[128];
    const char *env[] = { "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "OMP_PROC_BIND", "GOMP_SPINCOUNT",
                          "OPENBLAS_NUM_THREADS" };
    size_t e;
    time_t now = time(NULL);
    const char *blas_parallel[] = { "sequential", "pthreads", "OpenMP" };
    int par = openblas_get_parallel();
    int s;

    cpuinfo_field("model name", model, sizeof model);
    cpuinfo_field("cpu cores", cores, sizeof cores);
    cpuinfo_field("cache size", cache, sizeof cache);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
    first_line("/sys/kernel/mm/transparent_hugepage/enabled", thp, sizeof thp);
    {
        FILE *f = fopen("/proc/meminfo", "r");
        snprintf(memtotal, sizeof memtotal, "unknown");
        if (f) {
            char line[256];
            while (fgets(line, sizeof line, f))
                if (strncmp(line, "MemTotal:", 9) == 0) {
                    long long kib = atoll(line + 9);
                    snprintf(memtotal, sizeof memtotal, "%.1f GiB", (double)kib / 1048576.0);
                    break;
                }
            fclose(f);
        }
    }

    printf("kvec %d.%d.%d speed benchmark (bench/speed.c)\n\n", KVEC_VERSION_MAJOR, KVEC_VERSION_MINOR,
           KVEC_VERSION_PATCH);
    printf("machine\n");
    printf("  cpu        %s\n", model);
    printf("  cores      %ld logical CPUs online, %s cores per package (/proc/cpuinfo), cache size %s\n",
           sysconf(_SC_NPROCESSORS_ONLN), cores, cache);
    printf("  memory     %s; transparent huge pages: %s\n", memtotal, thp);
    printf("  openmp     max threads %d, num procs %d, _OPENMP %d\n", omp_get_max_threads(), omp_get_num_procs(),
           _OPENMP);
    printf("  openblas   %s; core %s; %s, %d threads\n", openblas_get_config(), openblas_get_corename(),
           par >= 0 && par <= 2 ? blas_parallel[par] : "?", openblas_get_num_threads());
#if defined(__clang__)
    printf("  compiler   clang %s\n", __VERSION__);
#elif defined(__GNUC__)
    printf("  compiler   gcc %s\n", __VERSION__);
#elif defined(__VERSION__)
    printf("  compiler   %s\n", __VERSION__);
#endif
    printf("  flags      C %ld,%s OpenMP; ISA macros:", (long)__STDC_VERSION__,
#ifdef __OPTIMIZE__
           " optimised,"
#else
           " NOT optimised,"
#endif
    );
#ifdef __SSE4_2__
    printf(" sse4.2");
#endif
#ifdef __AVX__
    printf(" avx");
#endif
#ifdef __AVX2__
    printf(" avx2");
#endif
#ifdef __FMA__
    printf(" fma");
#endif
#ifdef __F16C__
    printf(" f16c");
#endif
#ifdef __AVX512F__
    printf(" avx512f");
#endif
#ifdef __AVX512BW__
    printf(" avx512bw");
#endif
#ifdef __AVX512VL__
    printf(" avx512vl");
#endif
#ifdef __AVX512FP16__
    printf(" avx512fp16");
#endif
#ifdef __ARM_NEON
    printf(" neon");
#endif
    printf("\n");
    printf("  date       %s\n", date);
    {   /* other jobs on the machine make every time longer and the ratios noisier */
        char load[128];
        first_line("/proc/loadavg", load, sizeof load);
        printf("  loadavg    %s (/proc/loadavg at the start: 1, 5, 15 min)\n", load);
    }
    printf("  env       ");
    for (e = 0; e < sizeof env / sizeof env[0]; e++)
        printf(" %s=%s", env[e], getenv(env[e]) ? getenv(env[e]) : "(unset)");
    printf("\n");
    printf("  run        sizes");
    for (s = 0; s < o->n_sizes; s++) printf("%s%lld", s ? "," : " ", (long long)o->sizes[s]);
    if (o->repeats)
        printf("; %d repeat%s each", o->repeats, o->repeats == 1 ? "" : "s");
    else
        printf("; 5 repeats up to 8192 tokens, 3 above");
    printf("%s\n\n", o->quick ? " (--quick)" : "");

    printf("cache shape (Llama-3.1-8B)\n");
    printf("  %d layers, %d query heads, %d KV heads, head dim %d; K and V fp16 [token][kv_head][dim];\n",
           N_LAYERS, N_QHEADS, N_KVHEADS, HEAD_DIM);
    printf("  window queries fp32 [%d rows][%d heads][%d] per layer; window %d; budget %d%% of N per KV head.\n",
           N_QROWS, N_QHEADS, HEAD_DIM, WINDOW, BUDGET_PCT);
    printf("  Data: seeded N(0,1) keys, values and queries (logit std 1 after 1/sqrt(D)).\n");
    printf("  Every policy runs with a zeroed kvec_config (defaults) except .policy; coverage NULL.\n");
    printf("  h2o gets the window queries only (Wq = %d), not the whole prefix's.\n", N_QROWS);
    printf("  Times are wall-clock (omp_get_wtime), summed over the %d layers of one repeat;\n", N_LAYERS);
    printf("  where fewer layers are timed (layers 0 .. L-1; the note says L), each time is multiplied\n"
           "  by %d / L: all layers have the same shape and work.\n", N_LAYERS);
    printf("  each row gives the median over repeats and the min and max.\n");
}

/* >>report */
static void print_stat_row(const char *policy, const char *what, const double *x, int n, double scale)
{
    stats s = stats_of(x, n);
    printf("  %-10s %-22s %12.2f %12.2f %12.2f\n", policy, what, s.med * scale, s.min * scale, s.max * scale);
}

static int policy_index(const char *name)
{
    int p;
    for (p = 0; p < N_POLICIES; p++)
        if (strcmp(POLICIES[p].name, name) == 0) return p;
    return -1;
}

/* One size: every selected policy (selected[p]), n_layers layers held and
   timed; repeats 0 = the options' choice. */
static void run_size(const options *o, int64_t n, int64_t n_layers, const int *selected, int repeats_wanted)
{
    bench b;
    policy_run *runs = (policy_run *)calloc(N_POLICIES, sizeof *runs);
    double sgemm_t[MAX_REPEATS], scale_t[2][3][MAX_REPEATS]; /* [threads 1,2][snapkv,kvec,sgemm] */
    int scale_ok[2] = { 0, 0 }, scores_equal[2] = { -1, -1 };
    int repeats = repeats_wanted ? repeats_wanted : o->repeats ? o->repeats : (n <= 8192 ? 5 : 3);
    int p, k, output_aware = 0;
    int scaled[2] = { policy_index("snapkv"), policy_index("kvec") };
    size_t sgemm_bytes = (size_t)n * N_KVHEADS * HEAD_DIM * sizeof(float) +
                         (size_t)N_QROWS * N_QHEADS * HEAD_DIM * sizeof(float) +
                         (size_t)GROUP * N_QROWS * (size_t)n * sizeof(float);
    double useful_sgemm = useful_flops(N_QROWS, n); /* 2 x 128 x 128 x N per (layer, KV head) */
    stats sg;
    float *scores_1t = NULL, *scores_2t = NULL;

    if (!runs) {
        fprintf(stderr, "speed: out of memory\n");
        exit(1);
    }
    fprintf(stderr, "[N=%lld] filling %.2f GiB of K and V, twice (working + pristine copy)\n", (long long)n,
            gib(2.0 * 2 * (double)n_layers * (double)n * N_KVHEADS * HEAD_DIM * sizeof(uint16_t)));
    for (p = 0; p < N_POLICIES; p++)
        output_aware |= selected[p] && (POLICIES[p].policy == KVEC_POLICY_CRITICALKV ||
                                        POLICIES[p].policy == KVEC_POLICY_LAPROX);
    bench_init(&b, n, repeats, n_layers, output_aware);

    for (p = 0; p < N_POLICIES; p++)
        if (selected[p]) run_policy(&b, &POLICIES[p], &runs[p]);
    /* Thread scaling: scoring alone, 1 and 2 threads, on a restored cache.
       Before any sgemm, whose pthreads spin for a while after each call. */
    copy_parallel(b.work, b.pristine, b.kv_bytes);
    scores_1t = (float *)xmalloc((size_t)N_KVHEADS * (size_t)n * sizeof(float), &b.allocated);
    scores_2t = (float *)xmalloc((size_t)N_KVHEADS * (size_t)n * sizeof(float), &b.allocated);
    for (k = 0; k < 2; k++) {
        if (scaled[k] < 0 || !selected[scaled[k]] || !runs[scaled[k]].ran) continue;
        if (run_scoring(&b, &POLICIES[scaled[k]], 1, scale_t[0][k], scores_1t) == KVEC_OK &&
            run_scoring(&b, &POLICIES[scaled[k]], 2, scale_t[1][k], scores_2t) == KVEC_OK) {
            scale_ok[k] = 1;
            scores_equal[k] = memcmp(scores_1t, scores_2t, (size_t)N_KVHEADS * (size_t)n * sizeof(float)) == 0;
            if (!scores_equal[k]) {
                problem(POLICIES[scaled[k]].name, "scores of layer %lld differ between 1 and 2 threads",
                        b.n_layers - 1, 0, 0, 0);
            }
        } else {
            g_problems++;
        }
    }
    run_sgemm(&b, b.threads, sgemm_t);
    sg = stats_of(sgemm_t, repeats);
    run_sgemm(&b, 1, scale_t[0][2]);
    run_sgemm(&b, 2, scale_t[1][2]);

    /* ---- report ---- */
    printf("\n==== N = %lld tokens: budget %lld per KV head (%d%%), window %d; %d repeat%s, %d OpenMP threads ====\n",
           (long long)n, (long long)b.budget, BUDGET_PCT, WINDOW, repeats, repeats == 1 ? "" : "s", b.threads);
    if (b.n_layers < N_LAYERS)
        printf("TIMED: layers 0..%lld only (%lld of %d held in memory); every time below is the time of those\n"
               "       layers x %d/%lld = %.2f, i.e. the whole model's if each layer costs the same\n",
               (long long)b.n_layers - 1, (long long)b.n_layers, N_LAYERS, N_LAYERS, (long long)b.n_layers,
               (double)N_LAYERS / (double)b.n_layers);
    printf("memory: K+V one copy %.2f GiB (%lld layers); held: working + pristine copy + queries + scores %.2f GiB,\n"
           "        sgemm buffers %.2f GiB, per policy plan and scratch (below)\n",
           gib((double)b.kv_bytes), (long long)b.n_layers, gib((double)b.allocated), gib((double)sgemm_bytes));

    printf("\n[1] time over all %d layers, ms (score = kvec_score_layer; select = kvec_select_layer;\n"
           "    compact = kvec_compact_layer; total = score + select + compact, per repeat)\n", N_LAYERS);
    printf("  %-10s %-22s %12s %12s %12s\n", "policy", "step", "median", "min", "max");
    for (p = 0; p < N_POLICIES; p++) {
        const policy_run *r = &runs[p];
        if (!selected[p]) continue;
        if (!r->ran) {
            printf("  %-10s FAILED: %s: %s (%d)\n", POLICIES[p].name, r->where, kvec_result_string(r->error),
                   (int)r->error);
            continue;
        }
        print_stat_row(POLICIES[p].name, "score", r->score, repeats, 1e3);
        print_stat_row("", "select", r->select, repeats, 1e3);
        print_stat_row("", "compact", r->compact, repeats, 1e3);
        {
            double sc[MAX_REPEATS];
            int i;
            for (i = 0; i < repeats; i++) sc[i] = r->select[i] + r->compact[i];
            print_stat_row("", "select + compact", sc, repeats, 1e3);
        }
        print_stat_row("", "total", r->total, repeats, 1e3);
        printf("  %-10s scratch: score %.1f MiB, select %.1f MiB%s%s\n", "",
               (double)r->score_scratch / 1048576.0, (double)r->select_scratch / 1048576.0,
               POLICIES[p].note[0] ? "; " : "", POLICIES[p].note);
        if (r->layers < N_LAYERS)
            printf("  %-10s TIMED on layers 0..%lld only; times x %d/%lld\n", "", (long long)r->layers - 1, N_LAYERS,
                   (long long)r->layers);
    }

    printf("\n[2] compute roofline: window-attention scoring vs OpenBLAS sgemm of the same shape\n");
    printf("  sgemm: per layer and KV head C[%d x N] = Q[%d x %d] * K^T[%d x N], fp32 (K converted from fp16\n"
           "         untimed), %d x %d = %d calls, %d OpenBLAS threads: %.1f GFLOP in %.2f ms [min %.2f, max %.2f]\n"
           "         = %.2f GFLOP/s (median)\n",
           GROUP * N_QROWS, GROUP * N_QROWS, HEAD_DIM, HEAD_DIM, N_KVHEADS, (int)b.n_layers, N_KVHEADS * (int)b.n_layers,
           b.threads, useful_sgemm * 1e-9, sg.med * 1e3, sg.min * 1e3, sg.max * 1e3, useful_sgemm * 1e-9 / sg.med);
    printf("  useful FLOPs   = %d layers x %d query heads x R rows x N keys x %d dims x 2 (q.k once per pair;\n"
           "                   the R(R-1)/2 causally masked pairs are counted, < 0.2%% at 8K)\n",
           N_LAYERS, N_QHEADS, HEAD_DIM);
    printf("  executed FLOPs = %d layers x %d KV heads x pad(%d x R) rows x N keys x %d dims x 2 x %d pass over K\n"
           "                   (each logit computed once and kept until the row's softmax normaliser is\n"
           "                   known), rows padded to a multiple of %d as kvec.h does\n",
           N_LAYERS, N_KVHEADS, GROUP, HEAD_DIM, SCORE_PASSES_OVER_K, SCORE_ROW_MULTIPLE);
    printf("  not counted: softmax exps, the normalisation pass over the kept values, pooling, the NaN/Inf\n"
           "  scan of K and queries, K-VEC's cosine pass over K (its key direction is summed from the\n"
           "  attention pass's key tiles), the output norms of criticalkv and laprox -- all inside the score time\n");
    printf("  %-10s %4s %10s %10s %11s %10s %10s %10s %10s\n", "policy", "R", "useful", "executed", "score ms",
           "useful", "executed", "sgemm", "score ms /");
    printf("  %-10s %4s %10s %10s %11s %10s %10s %10s %10s\n", "", "", "GFLOP", "GFLOP", "(median)", "GFLOP/s",
           "GFLOP/s", "GFLOP/s", "sgemm ms");
    for (p = 0; p < N_POLICIES; p++) {
        const policy_run *r = &runs[p];
        double useful, executed, t;
        if (!selected[p] || !r->ran || POLICIES[p].rows == 0) continue;
        useful = useful_flops(POLICIES[p].rows, n);
        executed = executed_flops(POLICIES[p].rows, n);
        t = stats_of(r->score, repeats).med;
        printf("  %-10s %4lld %10.1f %10.1f %11.2f %10.2f %10.2f %10.2f %10.2f%s\n", POLICIES[p].name,
               (long long)POLICIES[p].rows, useful * 1e-9, executed * 1e-9, t * 1e3, useful * 1e-9 / t,
               executed * 1e-9 / t, useful_sgemm * 1e-9 / sg.med, t / sg.med,
               POLICIES[p].rows == 1 ? "  (R=1: matrix-vector work, rows padded)" : "");
    }
    printf("  (score ms / sgemm ms compares with the sgemm of the R=%d shape: same useful FLOPs for R=%d)\n",
           N_QROWS, N_QROWS);

    printf("\n[3] memory roofline: select + compact vs memcpy of the bytes compaction moves\n");
    printf("  bytes = kept rows (all layers, KV heads) x (%d K + %d V dims) x 2 bytes, read once and written\n"
           "  once; memcpy copies that many bytes in one block, split over %d threads. GB/s = 2 x bytes / time.\n",
           HEAD_DIM, HEAD_DIM, b.threads);
    printf("  %-10s %10s %9s %26s %10s %10s %10s %8s %8s %8s\n", "policy", "kept rows", "MiB", "memcpy ms median [min, max]",
           "select ms", "compact ms", "sel+comp", "compact", "sel+comp", "compact");
    printf("  %-10s %10s %9s %26s %10s %10s %10s %8s %8s %8s\n", "", "", "copied", "", "(median)", "(median)",
           "ms (med)", "/memcpy", "/memcpy", "GB/s");
    for (p = 0; p < N_POLICIES; p++) {
        const policy_run *r = &runs[p];
        double sc[MAX_REPEATS], bytes;
        stats m, sel, cmp, sc_s;
        char mbuf[64];
        int i;
        if (!selected[p] || !r->ran) continue;
        for (i = 0; i < repeats; i++) sc[i] = r->select[i] + r->compact[i];
        m = stats_of(r->memcpy_ref, repeats);
        sel = stats_of(r->select, repeats);
        cmp = stats_of(r->compact, repeats);
        sc_s = stats_of(sc, repeats);
        bytes = (double)r->kept_rows * 2 * HEAD_DIM * sizeof(uint16_t);
        snprintf(mbuf, sizeof mbuf, "%.2f [%.2f, %.2f]", m.med * 1e3, m.min * 1e3, m.max * 1e3);
        printf("  %-10s %10lld %9.1f %26s %10.2f %10.2f %10.2f %8.2f %8.2f %8.2f\n", POLICIES[p].name,
               (long long)r->kept_rows, bytes / 1048576.0, mbuf, sel.med * 1e3, cmp.med * 1e3, sc_s.med * 1e3,
               cmp.med / m.med, sc_s.med / m.med, 2.0 * bytes / cmp.med * 1e-9);
    }
    printf("  memcpy GB/s (2 x bytes / median time), per policy's byte count:");
    for (p = 0; p < N_POLICIES; p++) {
        const policy_run *r = &runs[p];
        if (!selected[p] || !r->ran) continue;
        printf(" %s %.2f", POLICIES[p].name,
               2.0 * (double)r->kept_rows * 2 * HEAD_DIM * sizeof(uint16_t) / stats_of(r->memcpy_ref, repeats).med * 1e-9);
    }
    printf("\n");

    printf("\n[4] thread scaling of scoring, all %d layers (omp_set_num_threads; sgemm: openblas_set_num_threads)\n",
           N_LAYERS);
    printf("  %-10s %30s %30s %8s %14s\n", "what", "1 thread ms median [min, max]", "2 threads ms median [min, max]",
           "speedup", "scores 1t==2t");
    for (k = 0; k < 3; k++) {
        char a[64], c[64];
        stats s1, s2;
        const char *name = k < 2 ? (scaled[k] >= 0 ? POLICIES[scaled[k]].name : "?") : "sgemm";
        if (k < 2 && !scale_ok[k]) {
            if (scaled[k] >= 0 && selected[scaled[k]]) printf("  %-10s FAILED (see stderr)\n", name);
            continue;
        }
        s1 = stats_of(scale_t[0][k], repeats);
        s2 = stats_of(scale_t[1][k], repeats);
        snprintf(a, sizeof a, "%.2f [%.2f, %.2f]", s1.med * 1e3, s1.min * 1e3, s1.max * 1e3);
        snprintf(c, sizeof c, "%.2f [%.2f, %.2f]", s2.med * 1e3, s2.min * 1e3, s2.max * 1e3);
        printf("  %-10s %30s %30s %8.2f %14s\n", name, a, c, s1.med / s2.med,
               k == 2 ? "-" : scores_equal[k] ? "bit-identical" : "DIFFER");
    }
    if (omp_get_num_procs() < 2) printf("  (fewer than 2 processors: the 2-thread run is oversubscribed)\n");

    {
        int ik = policy_index("kvec"), is = policy_index("snapkv");
        if (selected[ik] && selected[is] && runs[ik].ran && runs[is].ran) {
            double sck[MAX_REPEATS], scs[MAX_REPEATS];
            int i;
            for (i = 0; i < repeats; i++) {
                sck[i] = runs[ik].select[i] + runs[ik].compact[i];
                scs[i] = runs[is].select[i] + runs[is].compact[i];
            }
            printf("\n[5] K-VEC / SnapKV, ratio of medians: total %.3f, score %.3f, select + compact %.3f\n",
                   stats_of(runs[ik].total, repeats).med / stats_of(runs[is].total, repeats).med,
                   stats_of(runs[ik].score, repeats).med / stats_of(runs[is].score, repeats).med,
                   stats_of(sck, repeats).med / stats_of(scs, repeats).med);
        }
        for (p = 0; p < N_POLICIES; p++) /* the output-aware policies against SnapKV */
            if ((POLICIES[p].policy == KVEC_POLICY_CRITICALKV || POLICIES[p].policy == KVEC_POLICY_LAPROX) &&
                selected[p] && runs[p].ran && selected[is] && runs[is].ran)
                printf("    %s / SnapKV, ratio of medians: total %.2f, score %.2f\n", POLICIES[p].name,
                       stats_of(runs[p].total, repeats).med / stats_of(runs[is].total, repeats).med,
                       stats_of(runs[p].score, repeats).med / stats_of(runs[is].score, repeats).med);
        if (o->summary && (selected[is] || selected[ik])) {
            FILE *f = fopen(o->summary, "a");
            if (!f) {
                fprintf(stderr, "speed: cannot write %s\n", o->summary);
                g_problems++;
            } else {
                for (k = 0; k < 2; k++) {
                    const int q = k == 0 ? is : ik;
                    if (!selected[q] || !runs[q].ran) continue;
                    fprintf(f, "{\"tokens\": %lld, \"policy\": \"%s\", \"total_ms\": %.3f, \"score_ms\": %.3f, "
                               "\"repeats\": %d, \"layers_timed\": %lld, \"threads\": %d}\n",
                            (long long)n, POLICIES[q].name, stats_of(runs[q].total, repeats).med * 1e3,
                            stats_of(runs[q].score, repeats).med * 1e3, repeats, (long long)runs[q].layers, b.threads);
                }
                fclose(f);
            }
        }
    }
    fflush(stdout);

    free(scores_1t);
    free(scores_2t);
    free(runs);
    bench_free(&b);
}

int main(int argc, char **argv)
{
    options o;
    int s;
    if (!parse_options(argc, argv, &o)) {
        usage(stderr);
        return 2;
    }
    /* OpenBLAS gets the same thread count as kvec's OpenMP loops. */
    openblas_set_num_threads(omp_get_max_threads());
    init_normal_table();
    print_machine(&o);
    if (o.summary) { /* this run's lines only */
        FILE *f = fopen(o.summary, "w");
        if (!f) {
            fprintf(stderr, "speed: cannot write %s\n", o.summary);
            return 2;
        }
        fclose(f);
    }
    for (s = 0; s < o.n_sizes; s++) run_size(&o, o.sizes[s], o.layers, o.selected, 0);
    if (o.long_n > 0) {
        int long_selected[N_POLICIES] = { 0 };
        long_selected[policy_index("snapkv")] = 1;
        long_selected[policy_index("kvec")] = 1;
        printf("\n==== the long run: SnapKV and K-VEC alone, %lld tokens, 1 repeat, %lld of %d layers timed ====\n",
               (long long)o.long_n, (long long)o.long_layers, N_LAYERS);
        run_size(&o, o.long_n, o.long_layers, long_selected, 1);
    }
    if (o.recon_chunk > 0) run_reconstruction(o.recon_chunk, o.repeats ? o.repeats : 3);
    if (o.learned_tokens > 0) run_learned(o.learned_tokens, o.repeats ? o.repeats : 3);
    if (g_problems) {
        printf("\n%d PROBLEM%s with kvec's results (details on stderr)\n", g_problems, g_problems == 1 ? "" : "S");
        return 1;
    }
    return 0;
}
