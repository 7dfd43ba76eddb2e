/* train_gates.c - trains retention gates (TRIM-KV, arXiv 2512.03324; "Make
   Each Token Count", arXiv 2605.09649) for one model by distillation
   against the full cache, on this machine's CPUs, and writes them as a
   scorer file (examples/engine/scorer.h, output KVEC_SCORER_LOG_RETENTION).

     build/train_gates --model FILE.gguf --corpus TEXT --out FILE.kvs
         [--windows 20] [--chars 4000] [--steps 200] [--query-stride 4]
         [--capacity 128] [--lambda 1] [--lr 0.05] [--init 8] [--seed 1]
         [--threads N] [--check-gradient]

   The gate. For every layer l and KV head j, a token with attention input x
   (the layer's normalised hidden state, [E]) gets z = w . x + b and the
   retention rate beta = sigmoid(z) in (0, 1): after a steps the token is
   worth beta^a of itself. Query t then attends to key i with its logit
   plus (t - i) log beta_i: a key of beta near 1 stays, one of small beta
   fades with age. At eviction the cache keeps the highest (t - i) log beta_i
   (kvec_learned_masses; the first 4 positions, the attention sinks, are not
   gated and always kept).

   The training, layer by layer (the model is frozen; each layer's gates see
   the inputs the full model gives that layer, so the layers train apart):

     distillation  the gated attention output of every query and query
                   head, against the full cache's, squared error over the
                   mean squared norm of the full cache's outputs;
     capacity      for every query t, the soft count of keys still held,
                   C_t = sum_i beta_i^(t - i), beyond --capacity M:
                   lambda * max(0, C_t - M) / M, averaged over queries.

   Without the second term every gate would stay at 1 (the full cache); with
   it the gates must choose which keys to let fade, and the first term says
   which ones the layer's outputs miss least. Both are means over a window's
   queries; a step is the gradient of one window (every layer and KV head),
   Adam, windows visited in a seeded shuffle. The gradient is exact:
   d loss / d logit_ti = p_ti (g_t . v_i - g_t . o_t) for output gradient
   g_t, so d loss / d log beta_i = sum_t (t - i) of it, times
   d log sigmoid(z) / dz = sigmoid(-z).

   The data: --windows windows of about --chars characters cut from the
   corpus as build/train_scorer cuts them (every tenth held out), each read as
   build/quality reads a document; the prefill's post-RoPE queries, keys,
   values and attention inputs are kept for every layer (about 250 KB per
   token for SmolLM2: 20 windows of 1,000 tokens take 5 GB). The report gives
   both terms on the held-out windows before and after. */
#include "train_corpus.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define N_SINKS 4 /* positions never gated, as kvec_learned_masses keeps them */

typedef struct options {
    const char *model, *corpus, *out;
    int64_t windows, chars, steps, query_stride;
    int check_gradient; /* --check-gradient: the analytic gradient against differences, then exit */
    double capacity, lambda, lr, init;
    uint64_t seed;
} options;

/* One window's prefill, layer by layer: everything the gates' loss reads. */
typedef struct window_data {
    int64_t n;        /* tokens */
    float **hidden;   /* [L] -> [n][E] attention inputs */
    float **queries;  /* [L] -> [n][H][D] post-RoPE */
    float **keys;     /* [L] -> [Hk][D][n] post-RoPE, transposed as the cache holds them */
    float **values;   /* [L] -> [Hk][n][D] */
    float **teacher;  /* [L] -> [n][H][D] the full cache's attention outputs */
} window_data;

typedef struct loss_parts {
    double distill, capacity;
} loss_parts;

static int usage(void) {
    fprintf(stderr,
            "usage: train_gates --model FILE.gguf --corpus TEXT --out FILE.kvs [--windows 20] [--chars 4000]\n"
            "                   [--steps 200] [--query-stride 4] [--capacity 128] [--lambda 1] [--lr 0.05] [--init 8]\n"
            "                   [--seed 1] [--threads N] [--check-gradient]\n");
    return 2;
}

static int parse_real(const char *text, double low, double high, double *out) {
    char *end;
    const double v = strtod(text, &end);
    if (end == text || *end || !(v >= low && v <= high)) return -1;
    *out = v;
    return 0;
}

/* log sigmoid(z) = -log(1 + e^-z), without overflow either way. */
static double log_sigmoid(double z) {
    return z >= 0 ? -log1p(exp(-z)) : z - log1p(exp(z));
}

/* The full cache's attention output of every query ([n][H][D]): causal
   softmax of q . k / sqrt(D) over keys 0 .. t, then the values. */
static void full_attention(const float *q, const float *k, const float *v, int64_t n, int64_t H, int64_t Hk,
                           int64_t D, float *out, double *p /* [n] */) {
    const int64_t group = H / Hk;
    const double scale = 1.0 / sqrt((double)D);
    int64_t t, h, i, d;
    for (t = 0; t < n; t++)
        for (h = 0; h < H; h++) {
            const int64_t j = h / group;
            const float *qt = q + (t * H + h) * D, *kj = k + j * D * n, *vj = v + j * n * D;
            double peak = -INFINITY, sum = 0.0, o[256];
            for (i = 0; i <= t; i++) p[i] = 0.0;
            for (d = 0; d < D; d++) { /* keys are [D][n]: along a row of them */
                const double qd = qt[d] * scale;
                for (i = 0; i <= t; i++) p[i] += qd * kj[d * n + i];
            }
            for (i = 0; i <= t; i++)
                if (p[i] > peak) peak = p[i];
            for (d = 0; d < D; d++) o[d] = 0.0;
            for (i = 0; i <= t; i++) { p[i] = exp(p[i] - peak); sum += p[i]; }
            for (i = 0; i <= t; i++)
                for (d = 0; d < D; d++) o[d] += p[i] * vj[i * D + d];
            for (d = 0; d < D; d++) out[(t * H + h) * D + d] = (float)(o[d] / sum);
        }
}

/* The loss of one window for layer l's KV head j, and (when grad is not
   NULL) its gradient with respect to the head's log retentions log_beta
   ([n], 0 at the sinks) added into grad ([n]). The distillation reads the
   queries t with t % query_stride == query_offset (a step's sample of them;
   1 and 0: all), the capacity every query. work: [3][n] doubles. */
static loss_parts gate_loss(const window_data *wd, int64_t l, int64_t j, int64_t H, int64_t Hk, int64_t D,
                            const double *log_beta, double capacity, double lambda, int64_t query_stride,
                            int64_t query_offset, double *grad, double *work) {
    const int64_t n = wd->n, group = H / Hk;
    const float *q = wd->queries[l], *k = wd->keys[l] + j * D * n, *v = wd->values[l] + j * n * D;
    const float *teacher = wd->teacher[l];
    const double scale = 1.0 / sqrt((double)D);
    double *p = work, *kept = work + n, *vg = work + 2 * n, norm = 0.0;
    loss_parts loss = { 0.0, 0.0 };
    int64_t t, h, i, d, n_queries;
    for (t = 0; t < n; t++) /* the distillation's scale: the mean squared norm of the outputs */
        for (h = j * group; h < (j + 1) * group; h++)
            for (d = 0; d < D; d++) norm += (double)teacher[(t * H + h) * D + d] * teacher[(t * H + h) * D + d];
    norm = norm > 0 ? norm / (double)(n * group) : 1.0;
    n_queries = (n - 1 - query_offset) / query_stride + 1;
    norm *= (double)(n_queries * group); /* the distillation is a mean over the queries read */
    for (t = 0; t < n; t++) {
        double held = 0.0;
        for (h = j * group; h < (j + 1) * group && t % query_stride == query_offset; h++) {
            const float *qt = q + (t * H + h) * D, *target = teacher + (t * H + h) * D;
            double peak = -INFINITY, sum = 0.0, o[256], g[256], go = 0.0, err = 0.0;
            for (i = 0; i <= t; i++) p[i] = (double)(t - i) * log_beta[i]; /* the gates' decay */
            for (d = 0; d < D; d++) {
                const double qd = qt[d] * scale;
                for (i = 0; i <= t; i++) p[i] += qd * k[d * n + i];
            }
            for (i = 0; i <= t; i++)
                if (p[i] > peak) peak = p[i];
            for (d = 0; d < D; d++) o[d] = 0.0;
            for (i = 0; i <= t; i++) { p[i] = exp(p[i] - peak); sum += p[i]; }
            for (i = 0; i <= t; i++) {
                p[i] /= sum;
                for (d = 0; d < D; d++) o[d] += p[i] * v[i * D + d];
            }
            for (d = 0; d < D; d++) { /* squared error over norm: a mean over the queries read and their heads */
                const double r = o[d] - target[d];
                err += r * r;
                g[d] = 2.0 * r / norm;
                go += g[d] * o[d];
            }
            loss.distill += err / norm;
            if (!grad) continue;
            for (i = 0; i <= t; i++) {
                double gv = 0.0;
                for (d = 0; d < D; d++) gv += g[d] * v[i * D + d];
                vg[i] = p[i] * (gv - go); /* d loss / d logit_ti */
            }
            for (i = 0; i < t; i++) grad[i] += (double)(t - i) * vg[i];
        }
        for (i = 0; i <= t; i++) { kept[i] = exp((double)(t - i) * log_beta[i]); held += kept[i]; }
        if (held > capacity) {
            const double c = lambda / (capacity * (double)n);
            loss.capacity += c * (held - capacity);
            if (grad)
                for (i = 0; i < t; i++) grad[i] += c * (double)(t - i) * kept[i];
        }
    }
    return loss;
}

/* log beta of every position of a window for layer l, KV head j: gate
   parameters theta = (w [E], b). Sinks: 0 (never fade). z: [n] out. */
static void gate_forward(const window_data *wd, int64_t l, int64_t E, const double *theta, double *z,
                         double *log_beta) {
    int64_t i, d;
    for (i = 0; i < wd->n; i++) {
        const float *x = wd->hidden[l] + i * E;
        double s = theta[E];
        for (d = 0; d < E; d++) s += theta[d] * x[d];
        z[i] = s;
        log_beta[i] = i < N_SINKS ? 0.0 : log_sigmoid(s);
    }
}

static void window_free(window_data *wd, int64_t L) {
    int64_t l;
    if (!wd->hidden) return;
    for (l = 0; l < L; l++) {
        free(wd->hidden[l]); free(wd->queries[l]); free(wd->keys[l]); free(wd->values[l]); free(wd->teacher[l]);
    }
    free(wd->hidden); free(wd->queries); free(wd->keys); free(wd->values); free(wd->teacher);
    memset(wd, 0, sizeof *wd);
}

/* Copies the prefilled cache's first n positions of every layer. */
static int window_keep(window_data *wd, const llm_cache *cache, int64_t n, int64_t E, double *scratch) {
    const int64_t L = cache->n_layers, H = cache->n_heads, Hk = cache->n_kv_heads, D = cache->head_dim;
    const int64_t cap = cache->capacity;
    int64_t l, j, d;
    wd->n = n;
    wd->hidden = (float **)calloc((size_t)L, sizeof(float *));
    wd->queries = (float **)calloc((size_t)L, sizeof(float *));
    wd->keys = (float **)calloc((size_t)L, sizeof(float *));
    wd->values = (float **)calloc((size_t)L, sizeof(float *));
    wd->teacher = (float **)calloc((size_t)L, sizeof(float *));
    if (!wd->hidden || !wd->queries || !wd->keys || !wd->values || !wd->teacher) return -1;
    for (l = 0; l < L; l++) {
        if (!(wd->hidden[l] = (float *)malloc((size_t)(n * E) * sizeof(float))) ||
            !(wd->queries[l] = (float *)malloc((size_t)(n * H * D) * sizeof(float))) ||
            !(wd->keys[l] = (float *)malloc((size_t)(Hk * D * n) * sizeof(float))) ||
            !(wd->values[l] = (float *)malloc((size_t)(Hk * n * D) * sizeof(float))) ||
            !(wd->teacher[l] = (float *)malloc((size_t)(n * H * D) * sizeof(float))))
            return -1;
        memcpy(wd->hidden[l], cache->hidden_log + l * cap * E, (size_t)(n * E) * sizeof(float));
        memcpy(wd->queries[l], cache->queries[l], (size_t)(n * H * D) * sizeof(float));
        for (j = 0; j < Hk; j++) {
            for (d = 0; d < D; d++)
                memcpy(wd->keys[l] + (j * D + d) * n, cache->keys[l] + (j * D + d) * cap, (size_t)n * sizeof(float));
            memcpy(wd->values[l] + j * n * D, cache->values[l] + j * cap * D, (size_t)(n * D) * sizeof(float));
        }
        full_attention(wd->queries[l], wd->keys[l], wd->values[l], n, H, Hk, D, wd->teacher[l], scratch);
    }
    return 0;
}

/* The gradient of gate_loss against central differences, at a few
   positions of one window's layer 0, KV head 0, with gates drawn around
   the initial value. Returns the largest relative error. */
static double check_gradient(const window_data *wd, int64_t H, int64_t Hk, int64_t D, double capacity,
                             double lambda, uint64_t *rng) {
    const int64_t n = wd->n;
    double *log_beta = (double *)malloc((size_t)(5 * n) * sizeof(double));
    double *grad = log_beta + n, *work = log_beta + 2 * n, worst = 0.0;
    int64_t i, probe;
    if (!log_beta) return INFINITY;
    for (i = 0; i < n; i++) /* log beta in about [-0.02, 0): some keys fade, most stay */
        log_beta[i] = i < N_SINKS ? 0.0 : -0.02 * (double)(next_random(rng) % 1000 + 1) / 1000.0;
    memset(grad, 0, (size_t)n * sizeof(double));
    gate_loss(wd, 0, 0, H, Hk, D, log_beta, capacity, lambda, 3, 1, grad, work);
    for (probe = 0; probe < 8; probe++) {
        const int64_t at = N_SINKS + (int64_t)(next_random(rng) % (uint64_t)(n - N_SINKS - 1));
        const double eps = 1e-5, keep = log_beta[at];
        loss_parts up, down;
        double numeric, error;
        log_beta[at] = keep + eps;
        up = gate_loss(wd, 0, 0, H, Hk, D, log_beta, capacity, lambda, 3, 1, NULL, work);
        log_beta[at] = keep - eps;
        down = gate_loss(wd, 0, 0, H, Hk, D, log_beta, capacity, lambda, 3, 1, NULL, work);
        log_beta[at] = keep;
        numeric = (up.distill + up.capacity - down.distill - down.capacity) / (2 * eps);
        error = fabs(numeric - grad[at]) / (fabs(numeric) + fabs(grad[at]) + 1e-12);
        printf("gradient at position %lld: analytic %.6e, differences %.6e, relative error %.2e\n", (long long)at,
               grad[at], numeric, error);
        if (error > worst) worst = error;
    }
    free(log_beta);
    return worst;
}

int main(int argc, char **argv) {
    options o = { NULL, NULL, NULL, 20, 4000, 200, 4, 0, 128.0, 1.0, 0.05, 8.0, 1 };
    text_model m;
    llm_cache cache;
    char error[512], *text, target[64];
    int status;
    size_t length;
    int64_t L, E, H, Hk, D, i, w, s, n_train = 0, n_held = 0, max_n = 0, *order;
    window_data *train, *held;
    double *theta, *adam_m, *adam_v, *task_memory, started, *scratch;
    float *logits, *weights;
    kvec_scorer *layers;
    uint64_t rng;
    loss_parts before = { 0, 0 }, after = { 0, 0 }, *task_loss;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t x;
        if (!strcmp(a, "--check-gradient")) { o.check_gradient = 1; continue; }
        if (!v) return usage();
        if (!strcmp(a, "--model")) o.model = v;
        else if (!strcmp(a, "--corpus")) o.corpus = v;
        else if (!strcmp(a, "--out")) o.out = v;
        else if (!strcmp(a, "--windows") && !parse_int(v, 2, 10000, &x)) o.windows = x;
        else if (!strcmp(a, "--chars") && !parse_int(v, 200, 100000, &x)) o.chars = x;
        else if (!strcmp(a, "--steps") && !parse_int(v, 0, 1000000, &x)) o.steps = x;
        else if (!strcmp(a, "--query-stride") && !parse_int(v, 1, 1000, &x)) o.query_stride = x;
        else if (!strcmp(a, "--seed") && !parse_int(v, 0, INT64_MAX, &x)) o.seed = (uint64_t)x;
        else if (!strcmp(a, "--capacity") && !parse_real(v, 1.0, 1e9, &o.capacity)) {}
        else if (!strcmp(a, "--lambda") && !parse_real(v, 0.0, 1e6, &o.lambda)) {}
        else if (!strcmp(a, "--lr") && !parse_real(v, 1e-8, 10.0, &o.lr)) {}
        else if (!strcmp(a, "--init") && !parse_real(v, -30.0, 30.0, &o.init)) {}
        else if (!strcmp(a, "--threads") && !parse_int(v, 1, 1024, &x)) {
#ifdef _OPENMP
            omp_set_num_threads((int)x);
#endif
        } else {
            fprintf(stderr, "train_gates: bad option or value: %s %s\n", a, v);
            return usage();
        }
        i++;
    }
    if (!o.model || !o.corpus || !o.out) return usage();
    if ((status = train_open("train_gates", o.corpus, o.model, o.windows, o.chars, &text, &length, &m))) return status;
    L = m.model.config.n_layers; E = m.model.config.hidden_size; Hk = m.model.config.n_kv_heads;
    H = m.model.config.n_heads; D = m.model.config.head_dim;
    if (D > 256 || E > 4095) {
        fprintf(stderr, "train_gates: head size %lld or hidden size %lld above 256 or 4095\n", (long long)D,
                (long long)E);
        return 1;
    }
    train = (window_data *)calloc((size_t)o.windows, sizeof(window_data));
    held = (window_data *)calloc((size_t)o.windows, sizeof(window_data));
    logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float));
    if (!train || !held || !logits) { fprintf(stderr, "train_gates: out of memory\n"); return 1; }
    cache.memory = NULL;
    started = text_seconds();
    printf("train_gates: %s, corpus %s (%zu bytes), %lld windows of about %lld characters (every tenth held out), "
           "%lld steps (a query in %lld each), capacity %g, lambda %g, lr %g, init %g, seed %llu\n",
           m.name, o.corpus, length, (long long)o.windows, (long long)o.chars, (long long)o.steps, (long long)o.query_stride,
           o.capacity, o.lambda, o.lr, o.init, (unsigned long long)o.seed);
    for (w = 0; w < o.windows; w++) { /* prefill every window, keep what the loss reads */
        text_prompt prompt;
        size_t begin, end;
        int64_t n;
        window_data *wd;
        window_bounds(text, length, w, o.windows, o.chars, &begin, &end);
        if (text_question_prompt(&m, TEXT_INSTRUCTION, text + begin, end - begin, "", 0, 0, &prompt, error,
                                 sizeof error)) {
            fprintf(stderr, "train_gates: window %lld: %s\n", (long long)w, error);
            return 1;
        }
        n = prompt.n_prefix;
        if (!cache.memory || n > cache.capacity) {
            if (cache.memory) llm_cache_free(&cache);
            if (llm_cache_init(&cache, &m.model, n + 512) || llm_cache_log_hidden(&cache, 1)) {
                fprintf(stderr, "train_gates: out of memory for a cache of %lld positions\n", (long long)n);
                return 1;
            }
        }
        llm_cache_reset(&cache);
        wd = w % 10 == 9 ? &held[n_held++] : &train[n_train++];
        if (!(scratch = (double *)malloc((size_t)n * sizeof(double))) ||
            text_prefill(&m, &cache, prompt.prefix, n, logits, NULL) || window_keep(wd, &cache, n, E, scratch)) {
            fprintf(stderr, "train_gates: window %lld (%lld tokens): prefill failed or out of memory\n",
                    (long long)w, (long long)n);
            return 1;
        }
        free(scratch);
        if (n > max_n) max_n = n;
        text_prompt_free(&prompt);
        fprintf(stderr, "\rwindow %lld/%lld (%lld tokens), %.0f s", (long long)w + 1, (long long)o.windows,
                (long long)n, text_seconds() - started);
    }
    fprintf(stderr, "\n");
    llm_cache_free(&cache);
    if (o.check_gradient) {
        uint64_t check_rng = o.seed + 17;
        const double worst = check_gradient(&train[0], H, Hk, D, o.capacity, o.lambda, &check_rng);
        printf("largest relative error %.2e: %s\n", worst, worst < 1e-4 ? "ok" : "WRONG");
        return worst < 1e-4 ? 0 : 1;
    }
    theta = (double *)malloc((size_t)(L * Hk * (E + 1)) * sizeof(double));
    adam_m = (double *)calloc((size_t)(L * Hk * (E + 1)), sizeof(double));
    adam_v = (double *)calloc((size_t)(L * Hk * (E + 1)), sizeof(double));
    order = (int64_t *)malloc((size_t)n_train * sizeof(int64_t));
    task_memory = (double *)malloc((size_t)(L * Hk * 6 * max_n) * sizeof(double)); /* z, log beta, grad, work [3] */
    task_loss = (loss_parts *)malloc((size_t)(L * Hk) * sizeof(loss_parts));
    if (!theta || !adam_m || !adam_v || !order || !task_memory || !task_loss || !n_train) {
        fprintf(stderr, "train_gates: %s\n", n_train ? "out of memory" : "no training window");
        return 1;
    }
    for (i = 0; i < L * Hk; i++) { /* every gate starts near 1: the full cache */
        memset(theta + i * (E + 1), 0, (size_t)E * sizeof(double));
        theta[i * (E + 1) + E] = o.init;
    }
    rng = o.seed * 2654435761ULL + 1;
    /* The held-out loss, before; then the steps; then after. Each (layer,
       KV head) is one task with its own parameters: any thread count gives
       the same bits. */
    for (s = -1; s <= o.steps; s++) {
        const int evaluate = s == -1 || s == o.steps;
        const window_data *step_window = NULL;
        loss_parts total = { 0, 0 };
        int64_t task;
        if (!evaluate) {
            if (s % n_train == 0) /* a new epoch: a fresh shuffle */
                for (i = 0; i < n_train; i++) {
                    const int64_t r = (int64_t)(next_random(&rng) % (uint64_t)(i + 1));
                    order[i] = order[r];
                    order[r] = i;
                }
            step_window = &train[order[s % n_train]];
        }
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
        for (task = 0; task < L * Hk; task++) {
            const int64_t l = task / Hk, j = task % Hk;
            task_loss[task].distill = task_loss[task].capacity = 0.0;
            double *th = theta + task * (E + 1), *mo = adam_m + task * (E + 1), *ve = adam_v + task * (E + 1);
            double *z = task_memory + task * 6 * max_n;
            double *log_beta = z + max_n, *grad = z + 2 * max_n, *work = z + 3 * max_n;
            int64_t k, d;
            if (evaluate) {
                for (k = 0; k < n_held; k++) {
                    loss_parts part;
                    gate_forward(&held[k], l, E, th, z, log_beta);
                    part = gate_loss(&held[k], l, j, H, Hk, D, log_beta, o.capacity, o.lambda, 1, 0, NULL, work);
                    task_loss[task].distill += part.distill / (double)(n_held * L * Hk);
                    task_loss[task].capacity += part.capacity / (double)(n_held * L * Hk);
                }
            } else {
                const window_data *wd = step_window;
                const double beta1 = 0.9, beta2 = 0.999, t_step = (double)(s + 1);
                /* a cosine schedule from lr to 0 over the steps */
                const double lr = o.lr * 0.5 * (1.0 + cos(3.141592653589793 * (double)s / (double)o.steps));
                double gb = 0.0, gw[4096];
                loss_parts part;
                gate_forward(wd, l, E, th, z, log_beta);
                memset(grad, 0, (size_t)wd->n * sizeof(double));
                part = gate_loss(wd, l, j, H, Hk, D, log_beta, o.capacity, o.lambda, o.query_stride,
                                 s % o.query_stride, grad, work);
                task_loss[task].distill = part.distill / (double)(L * Hk);
                task_loss[task].capacity = part.capacity / (double)(L * Hk);
                for (d = 0; d < E; d++) gw[d] = 0.0;
                for (k = N_SINKS; k < wd->n; k++) { /* through log sigmoid(z) to w and b */
                    const double dz = grad[k] * exp(log_sigmoid(-z[k]));
                    const float *x = wd->hidden[l] + k * E;
                    for (d = 0; d < E; d++) gw[d] += dz * x[d];
                    gb += dz;
                }
                gw[E] = gb;
                for (d = 0; d <= E; d++) { /* Adam */
                    mo[d] = beta1 * mo[d] + (1 - beta1) * gw[d];
                    ve[d] = beta2 * ve[d] + (1 - beta2) * gw[d] * gw[d];
                    th[d] -= lr * (mo[d] / (1 - pow(beta1, t_step))) /
                             (sqrt(ve[d] / (1 - pow(beta2, t_step))) + 1e-8);
                }
            }
        }
        for (task = 0; task < L * Hk; task++) { /* summed in order: the same for any thread count */
            total.distill += task_loss[task].distill;
            total.capacity += task_loss[task].capacity;
        }
        if (s == -1) before = total;
        else if (s == o.steps) after = total;
        if (!evaluate && (s % 10 == 0 || s == o.steps - 1))
            fprintf(stderr, "\rstep %lld/%lld: distillation %.4f, capacity %.4f, %.0f s", (long long)s + 1,
                    (long long)o.steps, total.distill, total.capacity, text_seconds() - started);
    }
    fprintf(stderr, "\n");
    printf("\nheld-out windows (%lld): distillation %.4f -> %.4f, capacity %.4f -> %.4f (means over layers and "
           "KV heads)\n", (long long)n_held, before.distill, after.distill, before.capacity, after.capacity);
    /* The report per layer: the gates' mean log beta over the held-out
       windows, and the soft count each would hold at the window's end. */
    printf("%-6s %14s %22s\n", "layer", "mean log beta", "soft count at end / n");
    weights = (float *)malloc((size_t)(L * (Hk * E + Hk)) * sizeof(float));
    layers = (kvec_scorer *)calloc((size_t)L, sizeof(kvec_scorer));
    scratch = (double *)malloc((size_t)(2 * (max_n > 0 ? max_n : 1)) * sizeof(double));
    if (!weights || !layers || !scratch) { fprintf(stderr, "train_gates: out of memory\n"); return 1; }
    for (i = 0; i < L; i++) {
        float *wl = weights + i * (Hk * E + Hk);
        double mean_log_beta = 0.0, count_share = 0.0;
        int64_t j, d, k, t;
        for (j = 0; j < Hk; j++) {
            const double *th = theta + (i * Hk + j) * (E + 1);
            for (d = 0; d < E; d++) wl[j * E + d] = (float)th[d];
            wl[Hk * E + j] = (float)th[E];
            for (k = 0; k < n_held; k++) {
                double held_count = 0.0;
                gate_forward(&held[k], i, E, th, scratch, scratch + max_n);
                for (t = 0; t < held[k].n; t++) {
                    mean_log_beta += scratch[max_n + t] / (double)(held[k].n * Hk * n_held);
                    held_count += exp((double)(held[k].n - 1 - t) * scratch[max_n + t]);
                }
                count_share += held_count / (double)(held[k].n * Hk * n_held);
            }
        }
        layers[i].kind = KVEC_SCORER_LINEAR; layers[i].output = KVEC_SCORER_LOG_RETENTION;
        layers[i].n_embd = E; layers[i].n_kv_heads = Hk;
        layers[i].weight = wl; layers[i].bias = wl + Hk * E;
        printf("%-6lld %14.5f %22.3f\n", (long long)i, mean_log_beta, count_share);
    }
    snprintf(target, sizeof target, "retention gate, distilled, capacity %g", o.capacity);
    if (llm_scorer_save(o.out, layers, &m.model, m.name, target, error, sizeof error)) {
        fprintf(stderr, "train_gates: %s\n", error);
        return 1;
    }
    printf("\nwrote %s: %lld layers x %lld KV heads, linear gates, %.1f KB; %.0f s in all on %d thread(s)\n", o.out,
           (long long)L, (long long)Hk, (double)(L * (Hk * E + Hk) * 4) / 1024.0, text_seconds() - started,
#ifdef _OPENMP
           omp_get_max_threads()
#else
           1
#endif
    );
    for (w = 0; w < n_train; w++) window_free(&train[w], L);
    for (w = 0; w < n_held; w++) window_free(&held[w], L);
    free(train); free(held); free(task_memory); free(task_loss); free(theta); free(adam_m); free(adam_v); free(order);
    free(weights); free(layers);
    free(scratch); free(logits); free(text);
    text_model_free(&m);
    return 0;
}
