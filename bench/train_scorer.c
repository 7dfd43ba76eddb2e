/* train_scorer.c - fits a learned scorer (kvec_learned_scores, KVzap's
   linear form) for one model, on this machine's CPUs, and writes it as a
   scorer file (examples/engine/scorer.h).

     build/train_scorer --model FILE.gguf --corpus TEXT --out FILE.kvs
         [--windows 200] [--chars 4000] [--per-window 128] [--ridge 1e-3]
         [--seed 1] [--threads N]

   What it learns: for every layer l and KV head j, a linear map from a
   token's attention input (the layer's normalised hidden state, [E]) to the
   log of its reconstruction score (kvec_reconstruction_scores, the pass the
   policy `kvzip` runs), floored at 1e-6. The scorer then stands in for the
   pass: the prefill computes its scores as it goes (policy `learned`).

   The data: --windows windows of about --chars characters, evenly spread
   over the corpus (each starts at a paragraph break when one is near, and
   ends at a space); they may not overlap. Every tenth window is held out,
   the others train.
   Each window is read as build/quality reads a document (the instruction
   and the text in the chat template, the question-agnostic prefix), the
   reconstruction pass scores it, and --per-window positions of the user's
   text, drawn with the seed, give one (hidden state, log score) pair per
   layer and KV head.

   The fit: ridge regression per layer, solved in double from the sums
   X'X and X'y (no sample is kept but the held-out ones): (X'X + lambda I) w
   = X'y, lambda = r times the mean of X'X's diagonal, the bias not
   penalised, for each r of --ridge; per layer, the r whose map ranks the
   held-out windows best is kept (ties: the later r of the list). The
   report, per layer: that r, R^2 on the held-out pairs, and the share of
   each held-out window's and head's top quarter (by the pass) that the map
   also ranks in its top quarter; the same windows chose r, so these lean
   optimistic (the tasks of build/quality are the measurement). */
#include "train_corpus.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define SCORE_FLOOR 1e-6 /* log(1e-6) = -13.8: the scores below are noise */

typedef struct options {
    const char *model, *corpus, *out;
    int64_t windows, chars, per_window;
    double ridges[16];
    int64_t n_ridges;
    uint64_t seed;
} options;

static int usage(void) {
    fprintf(stderr,
            "usage: train_scorer --model FILE.gguf --corpus TEXT --out FILE.kvs [--windows 200] [--chars 4000]\n"
            "                    [--per-window 128] [--ridge 1e-4,1e-3,1e-2,0.1,1] [--seed 1] [--threads N]\n");
    return 2;
}

/* Solves (A + lambda D) w = b for the upper triangle of A ([n][n], sums),
   by Cholesky, in place (A destroyed). Returns 0, or -1 when not positive. */
static int ridge_solve(double *A, const double *b, double *w, int64_t n, int64_t n_out, double ridge) {
    double mean_diag = 0.0, lambda;
    int64_t i, j, k, o;
    for (i = 0; i < n - 1; i++) mean_diag += A[i * n + i];
    lambda = ridge * mean_diag / (double)(n - 1);
    for (i = 0; i < n; i++) /* full symmetric, ridge on every weight but the bias (the last) */
        for (j = 0; j < i; j++) A[i * n + j] = A[j * n + i];
    for (i = 0; i < n - 1; i++) A[i * n + i] += lambda;
    for (j = 0; j < n; j++) { /* A = L L', L in the lower triangle */
        double d = A[j * n + j];
        for (k = 0; k < j; k++) d -= A[j * n + k] * A[j * n + k];
        if (!(d > 0.0)) return -1;
        A[j * n + j] = sqrt(d);
        for (i = j + 1; i < n; i++) {
            double s = A[i * n + j];
            for (k = 0; k < j; k++) s -= A[i * n + k] * A[j * n + k];
            A[i * n + j] = s / A[j * n + j];
        }
    }
    for (o = 0; o < n_out; o++) {
        double *x = w + o * n;
        for (i = 0; i < n; i++) { /* L z = b */
            double s = b[i * n_out + o];
            for (k = 0; k < i; k++) s -= A[i * n + k] * x[k];
            x[i] = s / A[i * n + i];
        }
        for (i = n - 1; i >= 0; i--) { /* L' w = z */
            double s = x[i];
            for (k = i + 1; k < n; k++) s -= A[k * n + i] * x[k];
            x[i] = s / A[i * n + i];
        }
    }
    return 0;
}

typedef struct held_pair { /* one held-out position of one window */
    int64_t window;
    float  *x;  /* [L][E] its hidden states */
    float  *y;  /* [L][Hk] its log scores */
} held_pair;

static double r_squared(double sse, double sum, double sum_sq, double count) {
    const double variance = sum_sq - sum * sum / count;
    return variance > 0 ? 1.0 - sse / variance : 0.0;
}

/* A layer's map (candidate: [Hk][E] weights, then [Hk] biases) on the
   held-out pairs: R^2 over every (pair, head), and the share of each
   window's and head's top quarter (by the pass) that it ranks in its own
   top quarter (ties: the lower index). */
static void held_out_quality(const held_pair *held, int64_t n_held, const float *candidate, int64_t l, int64_t E,
                             int64_t Hk, double *r2, double *overlap_share) {
    double sse = 0, sum = 0, sq = 0, overlap = 0, possible = 0;
    int64_t j, first, last, q, a, d;
    for (j = 0; j < Hk; j++)
        for (first = 0; first < n_held; first = last) {
            int64_t cnt, top;
            double truth[4096], pred[4096];
            for (last = first; last < n_held && held[last].window == held[first].window && last - first < 4096; last++) {}
            cnt = last - first;
            top = cnt / 4 > 0 ? cnt / 4 : 1;
            for (q = first; q < last; q++) {
                double y = candidate[Hk * E + j];
                for (d = 0; d < E; d++) y += (double)candidate[j * E + d] * held[q].x[l * E + d];
                truth[q - first] = held[q].y[l * Hk + j];
                pred[q - first] = y;
                sse += (y - truth[q - first]) * (y - truth[q - first]);
                sum += truth[q - first];
                sq += truth[q - first] * truth[q - first];
            }
            for (q = 0; q < cnt; q++) {
                int64_t above_truth = 0, above_pred = 0;
                for (a = 0; a < cnt; a++) {
                    above_truth += truth[a] > truth[q] || (truth[a] == truth[q] && a < q);
                    above_pred += pred[a] > pred[q] || (pred[a] == pred[q] && a < q);
                }
                if (above_truth < top) { possible += 1; overlap += above_pred < top; }
            }
        }
    *r2 = n_held ? r_squared(sse, sum, sq, (double)(n_held * Hk)) : 0.0;
    *overlap_share = possible ? overlap / possible : 0.0;
}

int main(int argc, char **argv) {
    options o = { NULL, NULL, NULL, 200, 4000, 128, { 1e-4, 1e-3, 1e-2, 1e-1, 1.0 }, 5, 1 };
    text_model m;
    llm_cache cache;
    char error[512], *text;
    int status;
    size_t length;
    int64_t L, E, Hk, n1, i, w, l, j, n_train = 0, n_held = 0, held_cap, n_windows_total;
    double *A, *B, *solution, *system, started, mean_overlap = 0.0;
    float *logits, *scores = NULL, *weights, *candidate;
    kvec_scorer *layers;
    held_pair *held;
    uint64_t rng;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int64_t x;
        if (!v) return usage();
        if (!strcmp(a, "--model")) o.model = v;
        else if (!strcmp(a, "--corpus")) o.corpus = v;
        else if (!strcmp(a, "--out")) o.out = v;
        else if (!strcmp(a, "--windows") && !parse_int(v, 2, 100000, &x)) o.windows = x;
        else if (!strcmp(a, "--chars") && !parse_int(v, 200, 400000, &x)) o.chars = x;
        else if (!strcmp(a, "--per-window") && !parse_int(v, 1, 100000, &x)) o.per_window = x;
        else if (!strcmp(a, "--seed") && !parse_int(v, 0, INT64_MAX, &x)) o.seed = (uint64_t)x;
        else if (!strcmp(a, "--ridge")) { /* a comma-separated list */
            const char *p = v;
            char *end;
            for (o.n_ridges = 0; *p; p = *end ? end + 1 : end) {
                const double r = strtod(p, &end);
                if (end == p || (*end && *end != ',') || !(r > 0 && r < 1e6) || o.n_ridges == 16) {
                    fprintf(stderr, "train_scorer: bad --ridge '%s' (up to 16 values in (0, 1e6), commas between)\n", v);
                    return 2;
                }
                o.ridges[o.n_ridges++] = r;
            }
            if (!o.n_ridges) { fprintf(stderr, "train_scorer: --ridge names no value\n"); return 2; }
        } else if (!strcmp(a, "--threads") && !parse_int(v, 1, 1024, &x)) {
#ifdef _OPENMP
            omp_set_num_threads((int)x);
#endif
        } else {
            fprintf(stderr, "train_scorer: bad option or value: %s %s\n", a, v);
            return usage();
        }
        i++;
    }
    if (!o.model || !o.corpus || !o.out) return usage();
    if ((status = train_open("train_scorer", o.corpus, o.model, o.windows, o.chars, &text, &length, &m))) return status;
    L = m.model.config.n_layers; E = m.model.config.hidden_size; Hk = m.model.config.n_kv_heads; n1 = E + 1;
    if (E > 4096) { fprintf(stderr, "train_scorer: hidden size %lld above 4096\n", (long long)E); return 1; }
    n_windows_total = o.windows;
    held_cap = (n_windows_total / 10 + 1) * o.per_window;
    A = (double *)calloc((size_t)(L * n1 * n1), sizeof(double));
    B = (double *)calloc((size_t)(L * n1 * Hk), sizeof(double));
    solution = (double *)calloc((size_t)(Hk * n1), sizeof(double));
    system = (double *)malloc((size_t)(n1 * n1) * sizeof(double));
    held = (held_pair *)calloc((size_t)held_cap, sizeof(held_pair));
    logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float));
    if (!A || !B || !solution || !system || !held || !logits) {
        fprintf(stderr, "train_scorer: out of memory\n");
        return 1;
    }
    cache.memory = NULL;
    rng = o.seed * 2654435761ULL + 1;
    started = text_seconds();
    printf("train_scorer: %s, corpus %s (%zu bytes), %lld windows of about %lld characters (every tenth held out), "
           "%lld positions each, %lld ridge values, seed %llu\n",
           m.name, o.corpus, length, (long long)o.windows, (long long)o.chars, (long long)o.per_window,
           (long long)o.n_ridges, (unsigned long long)o.seed);
    for (w = 0; w < n_windows_total; w++) {
        const int is_held = w % 10 == 9;
        text_prompt prompt;
        size_t begin, end;
        int64_t n, header, *pick, count, k;
        window_bounds(text, length, w, n_windows_total, o.chars, &begin, &end);
        if (text_question_prompt(&m, TEXT_INSTRUCTION, text + begin, end - begin, "", 0, 0, &prompt, error,
                                 sizeof error)) {
            fprintf(stderr, "train_scorer: window %lld: %s\n", (long long)w, error);
            return 1;
        }
        n = prompt.n_prefix;
        if (!cache.memory || text_reconstruction_positions(n) > cache.capacity) {
            if (cache.memory) llm_cache_free(&cache);
            if (llm_cache_init(&cache, &m.model, text_reconstruction_positions(n) + 512) ||
                llm_cache_log_hidden(&cache, 1)) {
                fprintf(stderr, "train_scorer: out of memory for a cache of %lld positions\n", (long long)n);
                return 1;
            }
        }
        llm_cache_reset(&cache);
        free(scores);
        if (!(scores = (float *)malloc((size_t)(L * Hk * n) * sizeof(float))) ||
            text_prefill(&m, &cache, prompt.prefix, n, logits, NULL) ||
            text_reconstruction_scores(&m, &cache, prompt.prefix, n, scores, error, sizeof error)) {
            fprintf(stderr, "train_scorer: window %lld (%lld tokens): %s\n", (long long)w, (long long)n,
                    scores ? error : "out of memory");
            return 1;
        }
        header = text_user_start(&m, prompt.prefix, n);
        count = n - header < o.per_window ? n - header : o.per_window;
        /* positions of the user's text, drawn without replacement */
        if (n - header < 1 || !(pick = (int64_t *)malloc((size_t)(n - header) * sizeof(int64_t)))) {
            fprintf(stderr, "train_scorer: window %lld: %s\n", (long long)w,
                    n - header < 1 ? "no user text after the chat header" : "out of memory");
            return 1;
        }
        for (i = 0; i < n - header; i++) pick[i] = header + i;
        for (i = 0; i < count; i++) {
            const int64_t r = i + (int64_t)(next_random(&rng) % (uint64_t)(n - header - i)), t = pick[i];
            pick[i] = pick[r];
            pick[r] = t;
        }
        for (k = 0; k < count; k++) {
            const int64_t p = pick[k];
            if (is_held) {
                held_pair *h = &held[n_held++];
                h->window = w;
                h->x = (float *)malloc((size_t)(L * E) * sizeof(float));
                h->y = (float *)malloc((size_t)(L * Hk) * sizeof(float));
                if (!h->x || !h->y) { fprintf(stderr, "train_scorer: out of memory\n"); return 1; }
                for (l = 0; l < L; l++) {
                    memcpy(h->x + l * E, cache.hidden_log + (l * cache.capacity + p) * E, (size_t)E * sizeof(float));
                    for (j = 0; j < Hk; j++) {
                        const double s = scores[(l * Hk + j) * n + p];
                        h->y[l * Hk + j] = (float)log(s > SCORE_FLOOR ? s : SCORE_FLOOR);
                    }
                }
            }
        }
        if (!is_held) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
            for (l = 0; l < L; l++) { /* each layer's sums by one thread, positions in order */
                double *a = A + l * n1 * n1, *b = B + l * n1 * Hk, x[4096 + 1];
                int64_t kk, r, c2, jj;
                for (kk = 0; kk < count; kk++) {
                    const int64_t p = pick[kk];
                    const float *h = cache.hidden_log + (l * cache.capacity + p) * E;
                    for (r = 0; r < E; r++) x[r] = h[r];
                    x[E] = 1.0;
                    for (r = 0; r < n1; r++) {
                        const double xr = x[r];
                        double *row = a + r * n1;
                        for (c2 = r; c2 < n1; c2++) row[c2] += xr * x[c2];
                    }
                    for (jj = 0; jj < Hk; jj++) {
                        const double s = scores[(l * Hk + jj) * n + p];
                        const double y = log(s > SCORE_FLOOR ? s : SCORE_FLOOR);
                        for (r = 0; r < n1; r++) b[r * Hk + jj] += x[r] * y;
                    }
                }
            }
            n_train += count;
        }
        free(pick);
        text_prompt_free(&prompt);
        fprintf(stderr, "\rwindow %lld/%lld (%lld tokens), %.0f s", (long long)w + 1, (long long)n_windows_total,
                (long long)n, text_seconds() - started);
    }
    fprintf(stderr, "\n");
    /* The fit and the report, per layer: each ridge of the list solved, the
       one whose held-out top-quarter overlap is best kept (ties: the
       larger ridge, the simpler map). */
    weights = (float *)malloc((size_t)(L * (Hk * E + Hk)) * sizeof(float));
    layers = (kvec_scorer *)calloc((size_t)L, sizeof(kvec_scorer));
    candidate = (float *)malloc((size_t)(Hk * E + Hk) * sizeof(float));
    if (!weights || !layers || !candidate) { fprintf(stderr, "train_scorer: out of memory\n"); return 1; }
    printf("\n%d training pairs per layer and head, %d held out\n", (int)n_train, (int)n_held);
    printf("%-6s %8s %10s %14s\n", "layer", "ridge", "R2 held", "top-25% held");
    for (l = 0; l < L; l++) {
        const double *a = A + l * n1 * n1, *b = B + l * n1 * Hk;
        double best_overlap = -1.0, best_r2 = 0.0, best_ridge = 0.0;
        float *wl = weights + l * (Hk * E + Hk);
        int64_t k;
        for (k = 0; k < o.n_ridges; k++) {
            double r2, overlap;
            int64_t d;
            memcpy(system, a, (size_t)(n1 * n1) * sizeof(double));
            if (ridge_solve(system, b, solution, n1, Hk, o.ridges[k])) continue; /* singular at this ridge */
            for (j = 0; j < Hk; j++) {
                for (d = 0; d < E; d++) candidate[j * E + d] = (float)solution[j * n1 + d];
                candidate[Hk * E + j] = (float)solution[j * n1 + E];
            }
            held_out_quality(held, n_held, candidate, l, E, Hk, &r2, &overlap);
            if (overlap >= best_overlap) {
                best_overlap = overlap; best_r2 = r2; best_ridge = o.ridges[k];
                memcpy(wl, candidate, (size_t)(Hk * E + Hk) * sizeof(float));
            }
        }
        if (best_overlap < 0) {
            fprintf(stderr, "train_scorer: layer %lld: the normal equations are singular at every ridge\n", (long long)l);
            return 1;
        }
        layers[l].kind = KVEC_SCORER_LINEAR; layers[l].output = KVEC_SCORER_SCORE;
        layers[l].n_embd = E; layers[l].n_kv_heads = Hk;
        layers[l].weight = wl; layers[l].bias = wl + Hk * E;
        printf("%-6lld %8g %10.3f %14.3f\n", (long long)l, best_ridge, best_r2, best_overlap);
        mean_overlap += best_overlap / (double)L;
    }
    printf("mean top-25%% overlap on the held-out windows: %.3f (a random ranking: 0.25; the same windows chose "
           "the ridge)\n", mean_overlap);
    if (llm_scorer_save(o.out, layers, &m.model, m.name, "log reconstruction score (kvzip), linear", error,
                        sizeof error)) {
        fprintf(stderr, "train_scorer: %s\n", error);
        return 1;
    }
    printf("\nwrote %s: %lld layers x %lld KV heads, linear, %.1f KB; %.0f s in all on %d thread(s)\n", o.out,
           (long long)L, (long long)Hk, (double)(L * (Hk * E + Hk) * 4) / 1024.0, text_seconds() - started,
#ifdef _OPENMP
           omp_get_max_threads()
#else
           1
#endif
    );
    for (i = 0; i < n_held; i++) { free(held[i].x); free(held[i].y); }
    free(held); free(A); free(B); free(solution); free(system); free(weights); free(candidate); free(layers);
    free(logits); free(scores);
    free(text);
    llm_cache_free(&cache);
    text_model_free(&m);
    return 0;
}
