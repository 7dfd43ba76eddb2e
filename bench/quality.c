/* quality.c - how much of what the model needs does each eviction policy
   keep? The protocol of bench/models/ref-4l/TASKS.md, end to end on a real
   trained model, through the example engine (examples/engine).

   For every sample: prefill the prefix with the full cache, compress it once
   with a policy at a budget of floor(f * P) tokens per KV head (window of 32
   included), then run the rest of the sequence against the compressed
   cache, positions continuing at P. A sample is correct when every answer
   token is the argmax of the logits at the previous position.

     question-agnostic   P = BOS + context (the question comes after eviction)
     question-aware      P = BOS + context + question (up to the first
                         answer token, whose logits come from the prefill)

   build/quality [--model DIR] [--samples N] [--seed S] [--quick]
                 [--lengths 2048,4096] [--policies full,kvec,snapkv,...]
                 [--mu X] [--terms BITS] [--out FILE] [--decode CHUNK]

   Prints a table on stdout, a progress bar on stderr, and writes JSON:
   {"model", "samples", "lengths", "seed", "wall_seconds",
    "results":  {policy: {setting: {"0.05": accuracy, "0.1": .., "0.2": ..}}},
    "coverage": {policy: {setting: {budget: unique-token coverage}}},
    "tasks":    {policy: {setting: {budget: {task: accuracy}}}}}
   The full cache is policy "full" with budget "1.0". Coverage is the share
   of evictable positions that at least one head of a layer keeps, averaged
   over layers and samples.

   --decode CHUNK replaces the two settings by "streamed-context": the
   context arrives CHUNK tokens at a time and the cache is brought back to
   the budget after each chunk (eviction during decoding), then the
   question is asked. */
#include "../examples/engine/session.h"
#include "quality_text.h"
#include "../examples/engine/tasks.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { N_SETTINGS = 2, N_BUDGETS = 3, MAX_POLICIES = 20, MAX_LENGTHS = 4 };
static const char *const PREFILL_SETTINGS[N_SETTINGS] = {"question-agnostic", "question-aware"};
/* --decode: one setting, the context streamed in chunks at the budget. */
static const char *const DECODE_SETTINGS[1] = {"streamed-context"};
static const char *const *g_setting_names = PREFILL_SETTINGS;
static int g_n_settings = N_SETTINGS;
static const double BUDGET_FRACTIONS[N_BUDGETS] = {0.05, 0.10, 0.20};
static const char *const BUDGET_KEYS[N_BUDGETS] = {"0.05", "0.1", "0.2"};

typedef struct policy_run {
    char        name[32];
    int         full;     /* the uncompressed reference */
    kvec_config config;
    /* tallies, [setting][budget][task] */
    int         correct[N_SETTINGS][N_BUDGETS][TASK_COUNT];
    int         total[N_SETTINGS][N_BUDGETS][TASK_COUNT];
    double      coverage[N_SETTINGS][N_BUDGETS];
} policy_run;

/* Policies by name (text_policy in examples/engine/session.c): the budget
   modes other than the policy's own are named after the score: adakv is
   SnapKV scores in Ada-KV's per-layer pool, *-global one pool for the whole
   model (floor 0.2 of B - W). */
static int parse_policy(const char *name, policy_run *run) {
    memset(run, 0, sizeof *run);
    snprintf(run->name, sizeof run->name, "%s", name);
    if (!strcmp(name, "full")) { run->full = 1; return 0; }
    if (text_policy_scores(name) != TEXT_SCORES_SELF) return -1; /* the pass, statistics and scorers need a text model */
    return text_policy(name, &run->config);
}

static int64_t argmax(const float *row, int64_t n) {
    int64_t i, best = 0;
    for (i = 1; i < n; i++) if (row[i] > row[best]) best = i;
    return best;
}

/* The cache holds the first P positions of the sample and last_logits are
   the logits at position P-1. Runs the rest of the sequence and says whether
   every scored answer token is the argmax at the position before it. */
static int run_rest(const llm_model *model, llm_cache *cache, const task_sample *s,
                    const float *last_logits, float *logits) {
    const int64_t P = cache->n_positions, V = model->config.vocab_size;
    int64_t t;
    if (llm_forward(model, cache, s->tokens + P, s->length - 1 - P, logits)) return -1;
    for (t = s->answer_start; t < s->length; t++) {
        const float *row = t - 1 == P - 1 ? last_logits : logits + (t - 1 - P) * V;
        if (s->scored[t] && argmax(row, V) != s->tokens[t]) return 0;
    }
    return 1;
}

/* Share of evictable positions kept by at least one head, mean over layers. */
static double unique_coverage(const kvec_plan *plan, int64_t n_tokens, int64_t window, uint8_t *mark) {
    const int64_t evictable = n_tokens - window;
    double sum = 0.0;
    int64_t l, j, i;
    for (l = 0; l < plan->n_layers; l++) {
        int64_t covered = 0;
        memset(mark, 0, (size_t)n_tokens);
        for (j = 0; j < plan->n_kv_heads; j++) {
            const int64_t head = l * plan->n_kv_heads + j;
            for (i = 0; i < plan->kept_count[head]; i++) mark[plan->kept_positions[head * plan->capacity + i]] = 1;
        }
        for (i = 0; i < evictable; i++) covered += mark[i];
        sum += (double)covered / (double)evictable;
    }
    return sum / (double)plan->n_layers;
}

/* Working memory of one benchmark process. */
typedef struct bench {
    const llm_model *model;
    llm_cache  work;
    float     *scores;       /* [L][Hk][capacity] one policy's scores, reused across budgets */
    void      *scratch;      /* kvec scratch for scoring and selection */
    size_t     scratch_bytes;
    int64_t   *plan_memory;
    uint8_t   *mark;
    float     *logits;       /* [rest of a sample][vocab] */
} bench;

static int grow(void **buffer, size_t *have, size_t want) {
    void *p;
    if (want <= *have) return 0;
    if (!(p = realloc(*buffer, want))) return -1;
    *buffer = p;
    *have = want;
    return 0;
}

/* Evicts `work` (a copy of the prefix cache) for every budget with one
   policy and tallies the results. Scores that do not depend on the budget
   (every policy except K-VEC with its cross-layer term, whose scores depend
   on what earlier layers kept, and CriticalKV, whose first stage is half of
   the budget) are computed once and selected three times:
   kvec's steps give what kvec_evict_ex gives (tests/test_kvec.c checks it). */
static int run_policy(bench *b, policy_run *run, const llm_cache *prefix, const task_sample *s,
                      int setting, const float *last_logits) {
    const llm_model *model = b->model;
    const int64_t L = model->config.n_layers, Hk = model->config.n_kv_heads, N = prefix->n_positions;
    const int reuse = !(run->config.policy == KVEC_POLICY_KVEC &&
                        (run->config.terms.enabled & KVEC_TERM_CROSS_LAYER)) &&
                      run->config.policy != KVEC_POLICY_CRITICALKV;
    kvec_config resolved;
    kvec_layer layers[64];
    int k, correct;
    int64_t l, j;
    kvec_resolve_config(&run->config, &resolved);
    if (reuse) {
        llm_kvec_layers(prefix, layers);
        for (l = 0; l < L; l++) {
            size_t bytes;
            kvec_result r = kvec_layer_scratch_bytes(&run->config, &layers[l], &bytes);
            if (r == KVEC_OK && grow(&b->scratch, &b->scratch_bytes, bytes)) r = KVEC_ERROR_OUT_OF_MEMORY;
            if (r == KVEC_OK)
                r = kvec_score_layer(&run->config, &layers[l], l, 0, NULL, b->scores + l * Hk * N, b->scratch,
                                     b->scratch_bytes);
            if (r != KVEC_OK) { fprintf(stderr, "\nkvec scoring (%s): %s\n", run->name, kvec_result_string(r)); return -1; }
        }
    }
    for (k = 0; k < N_BUDGETS; k++) {
        const int64_t budget = (int64_t)floor(BUDGET_FRACTIONS[k] * (double)N);
        kvec_plan plan;
        kvec_result r = KVEC_OK;
        llm_cache_copy(&b->work, prefix);
        if (reuse) {
            int64_t capacity;
            kvec_plan_capacity(&run->config, budget, L, N, &capacity);
            plan.n_layers = L; plan.n_kv_heads = Hk; plan.capacity = capacity;
            plan.kept_count = b->plan_memory;
            plan.kept_positions = b->plan_memory + L * Hk;
            if (grow(&b->scratch, &b->scratch_bytes, kvec_select_scratch_bytes(&run->config, L, Hk, N)))
                r = KVEC_ERROR_OUT_OF_MEMORY;
            if (r == KVEC_OK)
                r = kvec_select(&run->config, b->scores, L, Hk, N, budget, &plan, b->scratch, b->scratch_bytes);
            if (r == KVEC_OK) {
                kvec_cache view;
                llm_kvec_layers(&b->work, layers);
                view.layers = layers;
                view.n_layers = L;
                r = kvec_compact(&view, &plan);
            }
            if (r == KVEC_OK)
                for (j = 0; j < L * Hk; j++) b->work.length[j] = plan.kept_count[j];
        } else {
            r = llm_evict(&b->work, &run->config, budget, &plan);
        }
        if (r != KVEC_OK) { fprintf(stderr, "\nkvec (%s): %s\n", run->name, kvec_result_string(r)); return -1; }
        correct = run_rest(model, &b->work, s, last_logits, b->logits);
        if (correct < 0) return -1;
        run->correct[setting][k][s->kind] += correct;
        run->total[setting][k][s->kind] += 1;
        run->coverage[setting][k] += unique_coverage(&plan, N, resolved.window, b->mark);
    }
    return 0;
}

/* The decoding scenario: the context arrives in chunks of `chunk` tokens
   and, after each, kvec brings the cache back to the budget
   (llm_decode_evict: the policy re-scores what the cache holds, H2O from
   the attention observed while the chunks ran); then the question comes
   and the answer is scored. The budget is the same floor(f * P) as after
   prefill, P the context's length. */
static int run_decode(bench *b, policy_run *run, const task_sample *s, int64_t chunk) {
    const llm_model *model = b->model;
    const int64_t P = s->context_end;
    int k, correct;
    for (k = 0; k < N_BUDGETS; k++) {
        const int64_t budget = (int64_t)floor(BUDGET_FRACTIONS[k] * (double)P);
        kvec_plan held;
        kvec_config resolved;
        int64_t at;
        llm_cache_reset(&b->work);
        if (llm_decode_begin(&b->work, run->config.policy == KVEC_POLICY_H2O)) return -1;
        for (at = 0; at < P; at += chunk) {
            const int64_t m = P - at < chunk ? P - at : chunk;
            kvec_result r;
            if (llm_forward(model, &b->work, s->tokens + at, m, NULL)) return -1;
            if ((r = llm_decode_evict(&b->work, &run->config, budget)) != KVEC_OK) {
                fprintf(stderr, "\nkvec decode (%s): %s\n", run->name, kvec_result_string(r));
                return -1;
            }
        }
        correct = run_rest(model, &b->work, s, NULL, b->logits);
        if (correct < 0) return -1;
        run->correct[0][k][s->kind] += correct;
        run->total[0][k][s->kind] += 1;
        /* coverage of what the cache holds at the question */
        held.n_layers = model->config.n_layers;
        held.n_kv_heads = model->config.n_kv_heads;
        held.capacity = b->work.decode.capacity;
        held.kept_count = b->work.length;
        held.kept_positions = b->work.decode.positions;
        kvec_resolve_config(&run->config, &resolved);
        run->coverage[0][k] += unique_coverage(&held, P, resolved.window, b->mark);
    }
    return 0;
}

static double accuracy(const policy_run *run, int setting, int k, int task) {
    int correct = 0, total = 0, t;
    for (t = 0; t < TASK_COUNT; t++) {
        if (task >= 0 && t != task) continue;
        correct += run->correct[setting][k][t];
        total += run->total[setting][k][t];
    }
    return total ? (double)correct / (double)total : 0.0;
}

static int total_runs(const policy_run *run, int setting, int k) {
    int t, total = 0;
    for (t = 0; t < TASK_COUNT; t++) total += run->total[setting][k][t];
    return total;
}

static void progress(int done, int total, double started) {
    const int width = 30, filled = total ? done * width / total : width;
    const double elapsed = text_seconds() - started;
    const double left = done ? elapsed * (double)(total - done) / (double)done : 0.0;
    int i;
    fputc('\r', stderr);
    fputc('[', stderr);
    for (i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d samples  %.0fs elapsed, ~%.0fs left ", done, total, elapsed, left);
    fflush(stderr);
}

static void write_json(FILE *f, const char *model_name, int samples, const int *lengths, int n_lengths,
                       uint64_t seed, double wall, policy_run *runs, int n_runs) {
    int p, s, k, t, i;
    fprintf(f, "{\n  \"model\": \"%s\",\n  \"samples\": %d,\n  \"lengths\": [", model_name, samples);
    for (i = 0; i < n_lengths; i++) fprintf(f, "%s%d", i ? ", " : "", lengths[i]);
    fprintf(f, "],\n  \"seed\": %llu,\n  \"wall_seconds\": %.1f,\n", (unsigned long long)seed, wall);
    for (i = 0; i < 3; i++) {
        fprintf(f, "  \"%s\": {\n", i == 0 ? "results" : i == 1 ? "coverage" : "tasks");
        for (p = 0; p < n_runs; p++) {
            if (i == 1 && runs[p].full) continue;
            fprintf(f, "    \"%s\": {", runs[p].name);
            for (s = 0; s < g_n_settings; s++) {
                fprintf(f, "%s\"%s\": {", s ? ", " : "", g_setting_names[s]);
                for (k = 0; k < (runs[p].full ? 1 : N_BUDGETS); k++) {
                    const char *key = runs[p].full ? "1.0" : BUDGET_KEYS[k];
                    if (i == 0) fprintf(f, "%s\"%s\": %.4f", k ? ", " : "", key, accuracy(&runs[p], s, k, -1));
                    if (i == 1) fprintf(f, "%s\"%s\": %.4f", k ? ", " : "", key,
                                        runs[p].coverage[s][k] / (total_runs(&runs[p], s, k) ? total_runs(&runs[p], s, k) : 1));
                    if (i == 2) {
                        fprintf(f, "%s\"%s\": {", k ? ", " : "", key);
                        for (t = 0; t < TASK_COUNT; t++)
                            fprintf(f, "%s\"%s\": %.4f", t ? ", " : "", task_name((task_kind)t), accuracy(&runs[p], s, k, t));
                        fputc('}', f);
                    }
                }
                fputc('}', f);
            }
            fprintf(f, "}%s\n", p + 1 < n_runs && !(i == 1 && p + 1 == n_runs) ? "," : "");
        }
        fprintf(f, "  }%s\n", i < 2 ? "," : "");
    }
    fprintf(f, "}\n");
}

static void usage(void) {
    fprintf(stderr,
            "usage: quality [--model DIR] [--samples N] [--seed S] [--quick] [--lengths 2048,4096]\n"
            "               [--policies full,kvec,snapkv,...] [--mu X] [--terms BITS] [--out FILE]\n"
            "               [--decode CHUNK]   (context streamed in chunks, cache held at the budget)\n"
            "       quality --model FILE.gguf --tasks FILE [--policies ..] [--budgets ..] [--settings ..]\n"
            "               [--max-tokens N] [--limit N] [--quick] [--out RESULT.json]   (your own documents)\n"
            "       quality --model FILE.gguf --kl SAMPLES.jsonl [--policies all | ..] [--budgets ..] [--limit N]\n"
            "               [--quick] [--out RESULT.json]   (next-token KL on held text)\n"
            "       both: [--scorer FILE.kvs] for the policies learned, learned-kvec (default scorers/MODEL.kvs)\n");
}


int main(int argc, char **argv) {
    const char *model_dir = "bench/models/ref-4l", *out_path = "bench/results/quality.json";
    const char *policy_list =
        "full,kvec,snapkv,pyramidkv,h2o,tova,keydiff,knorm,streaming,random,criticalkv,laprox";
    int samples = 64, quick = 0, lengths[MAX_LENGTHS] = {2048, 4096}, n_lengths = 2;
    uint64_t seed = 1;
    int64_t decode_chunk = 0; /* --decode: the streamed-context scenario */
    float mu = 0.0f;
    long terms = -1;
    char error[512], path[1200], list[512], *token;
    llm_model model;
    task_spec spec;
    llm_cache prefix, aware;
    policy_run runs[MAX_POLICIES];
    int n_runs = 0, i, p, s, k, t, task, done = 0, total;
    int64_t max_length = 0;
    bench b;
    float *aware_logits;
    double started;
    FILE *f;

    for (i = 1; i < argc; i++) /* a task file: your own documents on a GGUF model */
        if (!strcmp(argv[i], "--tasks")) return quality_task_file(argc, argv);
    for (i = 1; i < argc; i++) /* held text: next-token KL to the full cache */
        if (!strcmp(argv[i], "--kl")) return quality_kl_file(argc, argv);
    for (i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(arg, "--quick")) { quick = 1; continue; }
        if (!value) { usage(); return 2; }
        if (!strcmp(arg, "--model")) model_dir = value;
        else if (!strcmp(arg, "--samples")) samples = atoi(value);
        else if (!strcmp(arg, "--seed")) seed = strtoull(value, NULL, 10);
        else if (!strcmp(arg, "--policies")) policy_list = value;
        else if (!strcmp(arg, "--out")) out_path = value;
        else if (!strcmp(arg, "--mu")) mu = (float)atof(value);
        else if (!strcmp(arg, "--terms")) terms = strtol(value, NULL, 0);
        else if (!strcmp(arg, "--decode")) decode_chunk = atoi(value);
        else if (!strcmp(arg, "--lengths")) {
            snprintf(list, sizeof list, "%s", value);
            for (n_lengths = 0, token = strtok(list, ","); token && n_lengths < MAX_LENGTHS; token = strtok(NULL, ","))
                lengths[n_lengths++] = atoi(token);
        } else { usage(); return 2; }
        i++;
    }
    if (quick) samples = samples == 64 ? 4 : samples; /* --quick: 4 samples per task and length */
    if (samples < 1 || n_lengths < 1 || decode_chunk < 0) { usage(); return 2; }
    if (decode_chunk > 0) { g_setting_names = DECODE_SETTINGS; g_n_settings = 1; }
    for (i = 0; i < n_lengths; i++) {
        if (lengths[i] < 256) { fprintf(stderr, "quality: length %d is below 256\n", lengths[i]); return 2; }
        if (lengths[i] > max_length) max_length = lengths[i];
    }
    snprintf(list, sizeof list, "%s", policy_list);
    for (token = strtok(list, ","); token; token = strtok(NULL, ",")) {
        if (n_runs == MAX_POLICIES || parse_policy(token, &runs[n_runs])) {
            fprintf(stderr, "quality: unknown policy '%s'\n", token);
            return 2;
        }
        if (runs[n_runs].config.policy == KVEC_POLICY_KVEC) {
            if (mu > 0.0f) runs[n_runs].config.terms.mu = mu;
            if (terms >= 0) runs[n_runs].config.terms.enabled = (uint32_t)terms;
        }
        n_runs++;
    }

    if (llm_load(&model, model_dir, error, sizeof error)) { fprintf(stderr, "quality: %s\n", error); return 1; }
    snprintf(path, sizeof path, "%s/tasks.json", model_dir);
    if (task_spec_load(&spec, path, error, sizeof error)) { fprintf(stderr, "quality: %s: %s\n", path, error); return 1; }
    memset(&b, 0, sizeof b);
    b.model = &model;
    if (llm_cache_init(&prefix, &model, max_length) || llm_cache_init(&aware, &model, max_length) ||
        llm_cache_init(&b.work, &model, max_length)) {
        fprintf(stderr, "quality: out of memory\n");
        return 1;
    }
    b.scores = (float *)malloc((size_t)(model.config.n_layers * model.config.n_kv_heads * max_length) * sizeof(float));
    b.plan_memory = (int64_t *)malloc((size_t)(model.config.n_layers * model.config.n_kv_heads * (max_length + 1)) * sizeof(int64_t));
    b.mark = (uint8_t *)malloc((size_t)max_length);
    b.logits = (float *)malloc((size_t)(64 * model.config.vocab_size) * sizeof(float));
    aware_logits = (float *)malloc((size_t)(64 * model.config.vocab_size) * sizeof(float));
    if (!b.scores || !b.plan_memory || !b.mark || !b.logits || !aware_logits) { fprintf(stderr, "quality: out of memory\n"); return 1; }

    printf("kvec quality benchmark: %s (%d layers, %d query heads, %d KV heads, head dim %d, %s weights)\n",
           model_dir, model.config.n_layers, model.config.n_heads, model.config.n_kv_heads, model.config.head_dim,
           model.config.weight_dtype);
    printf("%d samples per task and length, lengths", samples);
    for (i = 0; i < n_lengths; i++) printf(" %d", lengths[i]);
#ifdef _OPENMP
    printf(", seed %llu, %d threads\n\n", (unsigned long long)seed, omp_get_max_threads());
#else
    printf(", seed %llu, 1 thread\n\n", (unsigned long long)seed);
#endif
    fflush(stdout);

    total = samples * TASK_COUNT * n_lengths;
    started = text_seconds();
    progress(0, total, started);
    for (i = 0; i < n_lengths; i++) {
        for (s = 0; s < samples; s++) {
            for (task = 0; task < TASK_COUNT; task++) {
                task_sample sample;
                const uint64_t sample_seed = seed * 1000003ull + (uint64_t)s;
                const float *last_aware;
                int64_t q;
                if (task_generate(&spec, (task_kind)task, lengths[i], sample_seed, &sample)) {
                    fprintf(stderr, "\nquality: cannot generate a sample\n");
                    return 1;
                }
                /* Prefix caches: the context, and the context plus question. */
                llm_cache_reset(&prefix);
                if (llm_forward(&model, &prefix, sample.tokens, sample.context_end, NULL)) return 1;
                llm_cache_copy(&aware, &prefix);
                q = sample.answer_start - sample.context_end;
                if (llm_forward(&model, &aware, sample.tokens + sample.context_end, q, aware_logits)) return 1;
                last_aware = aware_logits + (q - 1) * model.config.vocab_size;
                for (p = 0; p < n_runs; p++) {
                    if (runs[p].full) {
                        /* One full-cache run answers for both settings. */
                        int correct;
                        llm_cache_copy(&b.work, &aware);
                        correct = run_rest(&model, &b.work, &sample, last_aware, b.logits);
                        if (correct < 0) return 1;
                        for (k = 0; k < g_n_settings; k++) {
                            runs[p].correct[k][0][task] += correct;
                            runs[p].total[k][0][task] += 1;
                        }
                        continue;
                    }
                    if (decode_chunk > 0) {
                        if (run_decode(&b, &runs[p], &sample, decode_chunk)) return 1;
                        continue;
                    }
                    for (k = 0; k < N_SETTINGS; k++)
                        if (run_policy(&b, &runs[p], k == 0 ? &prefix : &aware, &sample, k,
                                       k == 0 ? NULL : last_aware))
                            return 1;
                }
                task_sample_free(&sample);
                progress(++done, total, started);
            }
        }
    }
    fputc('\n', stderr);

    /* The table: accuracy averaged over tasks and lengths, then coverage. */
    printf("accuracy, all tasks and lengths  %-21s  %s\n", g_setting_names[0], g_n_settings > 1 ? g_setting_names[1] : "");
    printf("%-29s %6s %6s %6s", "policy / budget", "5%", "10%", "20%");
    if (g_n_settings > 1) printf("  %6s %6s %6s", "5%", "10%", "20%");
    printf("\n");
    for (p = 0; p < n_runs; p++) {
        printf("%-14s", runs[p].name);
        for (s = 0; s < g_n_settings; s++) {
            printf(s ? "  " : "               ");
            for (k = 0; k < N_BUDGETS; k++)
                printf(" %6.3f", accuracy(&runs[p], s, runs[p].full ? 0 : k, -1));
        }
        printf("\n");
    }
    printf("\nunique-token coverage            %-21s  %s\n", g_setting_names[0], g_n_settings > 1 ? g_setting_names[1] : "");
    for (p = 0; p < n_runs; p++) {
        if (runs[p].full) continue;
        printf("%-14s", runs[p].name);
        for (s = 0; s < g_n_settings; s++) {
            printf(s ? "  " : "               ");
            for (k = 0; k < N_BUDGETS; k++)
                printf(" %6.3f", runs[p].coverage[s][k] / (total_runs(&runs[p], s, k) ? total_runs(&runs[p], s, k) : 1));
        }
        printf("\n");
    }
    printf("\nper task, %s at 10%% (full: full cache)\n%-14s",
           g_n_settings > 1 ? "question-agnostic / question-aware" : g_setting_names[0], "policy");
    for (t = 0; t < TASK_COUNT; t++) printf(" %19s", task_name((task_kind)t));
    printf("\n");
    for (p = 0; p < n_runs; p++) {
        printf("%-14s", runs[p].name);
        for (t = 0; t < TASK_COUNT; t++) {
            const int kk = runs[p].full ? 0 : 1;
            if (g_n_settings > 1)
                printf("         %.2f / %.2f", accuracy(&runs[p], 0, kk, t), accuracy(&runs[p], 1, kk, t));
            else
                printf(" %19.2f", accuracy(&runs[p], 0, kk, t));
        }
        printf("\n");
    }
    {
        const double wall = text_seconds() - started;
        const char *slash = strrchr(model_dir, '/');
        char name[256];
        snprintf(name, sizeof name, "%s", slash && slash[1] ? slash + 1 : model_dir);
        printf("\nwall time %.1f s; results in %s\n", wall, out_path);
        if (!(f = fopen(out_path, "w"))) { fprintf(stderr, "quality: cannot write %s\n", out_path); return 1; }
        write_json(f, name, samples, lengths, n_lengths, seed, wall, runs, n_runs);
        fclose(f);
    }
    llm_cache_free(&prefix); llm_cache_free(&aware); llm_cache_free(&b.work);
    free(b.scores); free(b.scratch); free(b.plan_memory); free(b.mark); free(b.logits); free(aware_logits);
    task_spec_free(&spec);
    llm_free(&model);
    return 0;
}
