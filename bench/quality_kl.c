/* quality_kl.c - build/quality --kl: how far a compressed cache moves a GGUF
   model's next-token distributions on held natural text.

   build/quality --model FILE.gguf --kl SAMPLES.jsonl [--policies all | full,kvec,..]
                 [--budgets 0.1,0.25,0.5] [--limit N] [--quick] [--decode EVERY]
                 [--out RESULT.json]

   SAMPLES.jsonl holds one JSON object per line:

       {"text": "...", "prefix": P, "forced": F}

   The protocol (docs/REAL_TASKS.md, "The smooth metric", states it for a
   second implementation to match):

   1. The text is tokenized as it is: no chat template, no BOS or other token
      added (whatever the model's add_bos says), special-token text parsed as
      the tokenizer's special tokens. It must give at least P + F tokens;
      ids[0 .. P) are the prefix, ids[P .. P+F) the forced tokens, the rest
      is ignored.
   2. The prefix is prefilled once into the full cache.
   3. Reference: the F forced tokens are run after the full prefix (teacher
      forcing), giving F next-token distributions p_j (j = 0 .. F-1: the
      distribution after forced token j, over the token that follows it).
   4. For each policy and budget f: a copy of the prefilled cache is
      compressed to floor(f * P) rows per KV head (window of 32 included:
      its queries are the prefix's last 32), then the same F tokens are run,
      giving q_j.
   5. Per sample: KL = mean over j of sum_v p_j(v) (log p_j(v) - log q_j(v))
      in nats, and top-1 = the fraction of j where argmax p_j = argmax q_j
      (lowest id on ties). Samples are the unit: the tables give the mean
      over samples +- the standard error sd / sqrt(n) of the per-sample
      values, and for each row the paired difference of per-sample KL
      against kvec at the same budget (when kvec is in the sweep).

   --decode EVERY: eviction during decoding instead of once. Step 4 becomes:
   the cache of the prefix is brought to floor(f * P) rows per KV head
   (llm_decode_evict: the window policies score with the prefix's last
   queries, as at prefill; H2O with the attention it observed while the
   prefix was prefilled again for it), then the F forced tokens run EVERY at
   a time, and after each group but the last the cache is brought back to
   the same number of rows. The cache never holds more than floor(f * P) +
   EVERY rows per head, however long F is. Every head holds the same count
   here, so the policies whose budget is not uniform (pyramidkv, adakv,
   kvec-ada, snap-global, kvec-global, laprox-global, budget=...) are left
   out, with a note.

   --quick: the first 4 samples, and unless given, policies
   full,kvec,snapkv,keydiff,streaming. Defaults: every policy (`all`) at
   budgets 0.1, 0.25 and 0.5.

   RESULT.json: {"model", "samples_file", "samples", "prefix": [min, max],
   "forced": [min, max], "decode_every" (0 without --decode), "kl" | "kl_stderr" | "top1" | "top1_stderr" |
   "kl_minus_kvec" | "kl_minus_kvec_stderr": {policy: {budget: value}},
   "per_sample_kl" | "per_sample_top1": {policy: {budget: [value per
   sample]}}, "evict_seconds": {policy: {budget: mean}}, "wall_seconds",
   "cpu_seconds"},
   the full cache at budget "1.0" (KL 0, top-1 1 by construction). */
#include "../examples/engine/json.h"
#include "quality_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_FORCED = 1024, QUICK_SAMPLES = 4 };

typedef struct kl_sample {
    char   *text;
    int64_t prefix, forced;
} kl_sample;

static void usage(void) {
    fprintf(stderr,
            "usage: quality --model FILE.gguf --kl SAMPLES.jsonl [--policies all | full,kvec,..] [--budgets 0.1,0.25,0.5]\n"
            "               [--limit N] [--quick] [--decode EVERY] [--out RESULT.json] [--scorer FILE.kvs]\n"
            "SAMPLES.jsonl: one {\"text\": \"...\", \"prefix\": P, \"forced\": F} per line\n"
            "--decode EVERY: the cache held at the budget while the forced tokens run, re-evicted every EVERY tokens\n"
            "policies: full %s\n"
            "%s",
            TEXT_POLICY_NAMES, TEXT_POLICY_OPTIONS);
}

/* A JSON number that is a whole number in [low, high]. */
static int whole_in(const json_value *v, double low, double high) {
    return v && v->type == JSON_NUMBER && v->number >= low && v->number <= high && v->number == floor(v->number);
}

/* Reads the sample file; returns the count, or -1 with a message naming
   the line. */
static int64_t read_samples(const char *path, kl_sample **samples, char *error, size_t error_size) {
    size_t length;
    char *text = json_read_file(path, &length);
    int64_t n = 0, capacity = 0;
    json_lines lines;
    json_value *v;
    char json_error[160];
    int got;
    if (!text) return gguf_error(error, error_size, "cannot read the sample file %s", path);
    *samples = NULL;
    json_lines_init(&lines, text, length);
    while ((got = json_lines_next(&lines, &v, json_error, sizeof json_error)) != 0) {
        const long long line = lines.line;
        const json_value *body, *prefix, *forced;
        if (got < 0) {
            gguf_error(error, error_size, "%s:%lld: %s", path, line, json_error);
            goto fail;
        }
        body = json_get(v, "text"), prefix = json_get(v, "prefix"), forced = json_get(v, "forced");
        if (!body || body->type != JSON_STRING || !body->string[0] || strlen(body->string) != body->length ||
            !whole_in(prefix, 1, 1e9) || !whole_in(forced, 1, MAX_FORCED)) {
            gguf_error(error, error_size,
                       "%s:%lld: needs a non-empty string \"text\" (no \\u0000), a whole number \"prefix\" >= 1 "
                       "and a whole number \"forced\" in 1..%d",
                       path, line, MAX_FORCED);
            json_free(v);
            goto fail;
        }
        if (n == capacity) {
            kl_sample *grown = (kl_sample *)realloc(*samples, (size_t)(capacity = capacity ? 2 * capacity : 16) * sizeof(kl_sample));
            if (!grown) { json_free(v); gguf_error(error, error_size, "out of memory"); goto fail; }
            *samples = grown;
        }
        if (!((*samples)[n].text = (char *)malloc(body->length + 1))) {
            json_free(v);
            gguf_error(error, error_size, "out of memory");
            goto fail;
        }
        memcpy((*samples)[n].text, body->string, body->length + 1);
        (*samples)[n].prefix = (int64_t)prefix->number;
        (*samples)[n].forced = (int64_t)forced->number;
        n++;
        json_free(v);
    }
    free(text);
    if (n == 0) return gguf_error(error, error_size, "%s holds no samples", path);
    return n;
fail:
    while (n-- > 0) free((*samples)[n].text);
    free(*samples);
    *samples = NULL;
    free(text);
    return -1;
}

static int64_t argmax_row(const float *row, int64_t n) {
    int64_t best = 0, v;
    for (v = 1; v < n; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

/* logits [F][V] of the full cache -> probabilities in place, with each
   row's sum p log p ([F]) and argmax ([F]). */
static void reference_rows(float *logits, int64_t F, int64_t V, double *neg_entropy, int64_t *top) {
    int64_t j;
#pragma omp parallel for schedule(static)
    for (j = 0; j < F; j++) {
        float *row = logits + j * V;
        const int64_t best = argmax_row(row, V);
        const double max = row[best];
        double sum = 0, plogp = 0, log_sum;
        int64_t v;
        for (v = 0; v < V; v++) sum += exp((double)row[v] - max);
        log_sum = log(sum);
        for (v = 0; v < V; v++) {
            const double log_p = (double)row[v] - max - log_sum;
            const double p = exp(log_p);
            plogp += p * log_p;
            row[v] = (float)p;
        }
        neg_entropy[j] = plogp;
        top[j] = best;
    }
}

/* KL(p || softmax(logits)) of each row, averaged; *agreement gets the
   fraction of rows whose argmax matches the reference's. Rows are
   independent, then summed in order: the same result for any thread count. */
static double mean_kl(const float *p, const double *neg_entropy, const int64_t *top, const float *logits,
                      int64_t F, int64_t V, double *row_kl, double *agreement) {
    double total = 0;
    int64_t j, agree = 0;
#pragma omp parallel for schedule(static)
    for (j = 0; j < F; j++) {
        const float *row = logits + j * V, *p_row = p + j * V;
        const int64_t best = argmax_row(row, V);
        const double max = row[best];
        double sum = 0, p_dot_z = 0;
        int64_t v;
        for (v = 0; v < V; v++) {
            sum += exp((double)row[v] - max);
            p_dot_z += (double)p_row[v] * ((double)row[v] - max);
        }
        /* sum p (log p - log q), log q = z - max - log sum, sum p = 1 */
        row_kl[j] = neg_entropy[j] - p_dot_z + log(sum);
        if (row_kl[j] < 0) row_kl[j] = 0; /* rounding when q == p */
        row_kl[F + j] = best == top[j];
    }
    for (j = 0; j < F; j++) { total += row_kl[j]; agree += row_kl[F + j] != 0; }
    *agreement = (double)agree / (double)F;
    return total / (double)F;
}

static double mean_of(const double *x, int64_t n) {
    double s = 0;
    int64_t i;
    for (i = 0; i < n; i++) s += x[i];
    return s / (double)n;
}

/* The standard error of the mean of x (sample standard deviation / sqrt n). */
static double stderr_of(const double *x, int64_t n) {
    double mean = mean_of(x, n), s = 0;
    int64_t i;
    if (n < 2) return 0;
    for (i = 0; i < n; i++) s += (x[i] - mean) * (x[i] - mean);
    return sqrt(s / (double)(n - 1) / (double)n);
}

/* The row of kvec at run r's budget, or -1. */
static int kvec_row(const text_run *runs, int n_runs, int r) {
    int k;
    for (k = 0; k < n_runs; k++)
        if (!strcmp(runs[k].policy, "kvec") && runs[k].fraction == runs[r].fraction) return k;
    return -1;
}

/* --decode: the F forced tokens after the prefix ids[0 .. P), `every` at a
   time, with run's cache held at floor(fraction * P) rows per KV head
   (logits: [F][vocab]). The full cache runs the same groups without
   eviction, which shows the KL that grouping alone gives (the sums of a
   group of tokens may run in another order than those of all F at once).
   Adds the time spent evicting to *evict_seconds. Returns 0, or -1 with a
   message. */
static int forced_while_evicting(const text_model *m, const llm_cache *base, llm_cache *work, const int32_t *ids,
                                 int64_t P, int64_t F, const text_run *run, int64_t every, float *logits,
                                 double *evict_seconds) {
    const int64_t budget = (int64_t)(run->fraction * (double)P), V = m->model.config.vocab_size;
    const int observe = !run->full && run->config.policy == KVEC_POLICY_H2O;
    int64_t done, step;
    llm_cache_reset(work); /* also ends the previous run's decoding */
    if (observe) {
        /* H2O ranks rows by the attention they received while decoding: let
           it watch the prefix being prefilled. */
        if (llm_decode_begin(work, 1) || llm_forward(&m->model, work, ids, P, NULL)) {
            fprintf(stderr, "quality: %s: the prefix failed\n", run->policy);
            return -1;
        }
    } else {
        llm_cache_copy(work, base);
        if (!run->full && llm_decode_begin(work, 0)) {
            fprintf(stderr, "quality: %s: out of memory for the decoding state\n", run->policy);
            return -1;
        }
    }
    for (done = 0; done < F; done += step) {
        step = F - done < every ? F - done : every;
        if (!run->full) {
            const double start = text_seconds();
            const kvec_result status = llm_decode_evict(work, &run->config, budget);
            *evict_seconds += text_seconds() - start;
            if (status != KVEC_OK) {
                fprintf(stderr, "quality: %s at %g: kvec: %s\n", run->policy, run->fraction, kvec_result_string(status));
                return -1;
            }
        }
        if (llm_forward(&m->model, work, ids + P + done, step, logits + done * V)) {
            fprintf(stderr, "quality: %s: the forced tokens failed\n", run->policy);
            return -1;
        }
    }
    return 0;
}

/* --decode keeps every head at the same length: drops the runs whose budget
   is not uniform, saying which. Returns the runs left. */
/* --decode: rows whose heads keep one length and that re-score the held
   rows themselves (the reconstruction pass and expected attention score a
   prefix once). */
static int uniform_runs_only(text_run *runs, int n_runs) {
    int r, kept = 0, dropped = 0;
    for (r = 0; r < n_runs; r++) {
        kvec_config resolved;
        if (!runs[r].full && (runs[r].sources || kvec_resolve_config(&runs[r].config, &resolved) != KVEC_OK ||
                              resolved.budget_mode != KVEC_BUDGET_UNIFORM)) {
            fprintf(stderr, "%s%s at %g", dropped++ ? ", " : "quality: --decode holds every head at one length; left out: ",
                    runs[r].policy, runs[r].fraction);
            continue;
        }
        runs[kept++] = runs[r];
    }
    if (dropped) fprintf(stderr, "\n");
    return kept;
}

enum { STAT_KL, STAT_KL_SE, STAT_TOP1, STAT_TOP1_SE, STAT_DKL, STAT_DKL_SE, STAT_EVICT, STAT_COUNT };
static const char *const STAT_NAMES[STAT_COUNT] = {"kl", "kl_stderr", "top1", "top1_stderr", "kl_minus_kvec",
                                                   "kl_minus_kvec_stderr", "evict_seconds"};

int quality_kl_file(int argc, char **argv) {
    const char *model_path = NULL, *samples_path = NULL, *out_path = NULL, *policies = NULL, *budgets = NULL, *scorer_path = NULL;
    char error[512];
    int n_runs, i, r, quick = 0, k;
    int64_t limit = 0, n_read, n, t, max_positions = 0, max_forced = 0, capacity = 0, V, decode_every = 0;
    int64_t prefix_range[2] = {0, 0}, forced_range[2] = {0, 0};
    kl_sample *samples = NULL;
    static text_run runs[TEXT_MAX_RUNS];
    double *kl = NULL, *top1 = NULL, *evict = NULL, *row_stats = NULL, *neg_entropy = NULL, *diff = NULL;
    double stats[TEXT_MAX_RUNS][STAT_COUNT];
    int64_t *top = NULL;
    float *reference = NULL, *logits = NULL, *last = NULL;
    text_scores given; /* the kvzip and expected rows' scores, one computation per prefix */
    int sources = 0;
    text_model m;
    llm_cache base, work;
    double started = text_seconds();
    FILE *f;

    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--quick")) { quick = 1; continue; }
        if (!value) { usage(); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--kl")) samples_path = value;
        else if (!strcmp(argv[i], "--out")) out_path = value;
        else if (!strcmp(argv[i], "--policies")) policies = value;
        else if (!strcmp(argv[i], "--budgets")) budgets = value;
        else if (!strcmp(argv[i], "--limit")) {
            char *end;
            limit = strtoll(value, &end, 10);
            if (*end || end == value || limit < 0) { fprintf(stderr, "quality: --limit needs a count >= 0\n"); return 2; }
        } else if (!strcmp(argv[i], "--decode")) {
            char *end;
            decode_every = strtoll(value, &end, 10);
            if (*end || end == value || decode_every < 1 || decode_every > MAX_FORCED) {
                fprintf(stderr, "quality: --decode needs a token count in 1..%d\n", MAX_FORCED);
                return 2;
            }
        } else if (!strcmp(argv[i], "--scorer")) scorer_path = value;
        else { usage(); return 2; }
        i++;
    }
    if (!model_path || !samples_path) { fprintf(stderr, "quality: --model FILE.gguf and --kl SAMPLES.jsonl are both needed\n"); return 2; }
    if (!policies) policies = quick ? "full,kvec,snapkv,keydiff,streaming" : "all";
    if (!budgets) budgets = "0.1,0.25,0.5";
    if ((n_runs = text_parse_runs(policies, budgets, runs, TEXT_MAX_RUNS)) < 0) return 2;
    for (r = 0; r < n_runs; r++) sources |= runs[r].sources;
    memset(&given, 0, sizeof given);
    if (decode_every && (n_runs = uniform_runs_only(runs, n_runs)) == 0) {
        fprintf(stderr, "quality: no policy left for --decode\n");
        return 2;
    }
    if ((n_read = read_samples(samples_path, &samples, error, sizeof error)) < 0) { fprintf(stderr, "quality: %s\n", error); return 1; }
    n = n_read;
    if (quick && n > QUICK_SAMPLES) n = QUICK_SAMPLES;
    if (limit && limit < n) n = limit;
    for (t = 0; t < n; t++) {
        int64_t need = samples[t].prefix + samples[t].forced;
        if (text_scores_positions(sources, samples[t].prefix) > need) need = text_scores_positions(sources, samples[t].prefix);
        if (need > max_positions) max_positions = need;
        if (samples[t].forced > max_forced) max_forced = samples[t].forced;
        if (!t || samples[t].prefix < prefix_range[0]) prefix_range[0] = samples[t].prefix;
        if (!t || samples[t].prefix > prefix_range[1]) prefix_range[1] = samples[t].prefix;
        if (!t || samples[t].forced < forced_range[0]) forced_range[0] = samples[t].forced;
        if (!t || samples[t].forced > forced_range[1]) forced_range[1] = samples[t].forced;
    }
    for (r = 0; r < n_runs; r++) { /* every budget must leave room beyond the window */
        kvec_config probe = runs[r].config;
        int64_t window = probe.window ? probe.window : 32;
        if (!runs[r].full && (int64_t)(runs[r].fraction * (double)prefix_range[0]) <= window) {
            fprintf(stderr, "quality: budget %g of a %lld-token prefix keeps no more than the window of %lld\n",
                    runs[r].fraction, (long long)prefix_range[0], (long long)window);
            return 2;
        }
    }
    if (text_model_load(&m, model_path, error, sizeof error)) { fprintf(stderr, "quality: %s\n", error); return 1; }
    if (scorer_path) snprintf(m.scorer_path, sizeof m.scorer_path, "%s", scorer_path);
    V = m.model.config.vocab_size;
    if (m.model.config.context_length && max_positions > m.model.config.context_length) {
        fprintf(stderr, "quality: a sample needs %lld positions, past %s's context of %lld\n", (long long)max_positions,
                m.name, (long long)m.model.config.context_length);
        return 1;
    }
    capacity = max_positions;
    memset(&base, 0, sizeof base);
    memset(&work, 0, sizeof work);
    if (llm_cache_init(&base, &m.model, capacity) || llm_cache_init(&work, &m.model, capacity) ||
        !(kl = (double *)calloc((size_t)(n * n_runs), sizeof(double))) ||
        !(top1 = (double *)calloc((size_t)(n * n_runs), sizeof(double))) ||
        !(evict = (double *)calloc((size_t)n_runs, sizeof(double))) ||
        !(diff = (double *)calloc((size_t)n, sizeof(double))) ||
        !(row_stats = (double *)malloc((size_t)(2 * max_forced) * sizeof(double))) ||
        !(neg_entropy = (double *)malloc((size_t)max_forced * sizeof(double))) ||
        !(top = (int64_t *)malloc((size_t)max_forced * sizeof(int64_t))) ||
        !(last = (float *)malloc((size_t)V * sizeof(float))) ||
        !(reference = (float *)malloc((size_t)(max_forced * V) * sizeof(float))) ||
        !(logits = (float *)malloc((size_t)(max_forced * V) * sizeof(float)))) {
        fprintf(stderr, "quality: out of memory for %lld positions and %lld x %lld logits\n", (long long)capacity,
                (long long)max_forced, (long long)V);
        return 1;
    }
    if (text_scores_prepare(&m, &base, sources, error, sizeof error)) {
        fprintf(stderr, "quality: %s\n", error);
        return 1;
    }
    printf("kvec quality, next-token KL on held text: %s, %lld samples of %s%s (prefix %lld..%lld, forced %lld..%lld "
           "tokens); %d rows\n",
           m.name, (long long)n, samples_path, quick ? " (--quick)" : "", (long long)prefix_range[0],
           (long long)prefix_range[1], (long long)forced_range[0], (long long)forced_range[1], n_runs);
    if (decode_every)
        printf("eviction during decoding: the cache held at the budget, re-evicted every %lld forced tokens; the full "
               "cache's row runs the same groups of tokens without eviction\n", (long long)decode_every);

    for (t = 0; t < n; t++) {
        const int64_t P = samples[t].prefix, F = samples[t].forced;
        int32_t *ids = NULL;
        int64_t n_ids = text_encode(&m, samples[t].text, strlen(samples[t].text), &ids, error, sizeof error);
        if (n_ids < 0) { fprintf(stderr, "quality: sample %lld: %s\n", (long long)t + 1, error); return 1; }
        if (n_ids < P + F) {
            fprintf(stderr, "quality: sample %lld: the text has %lld tokens, fewer than prefix + forced = %lld\n",
                    (long long)t + 1, (long long)n_ids, (long long)(P + F));
            return 1;
        }
        llm_cache_reset(&base);
        base.learned_seconds = 0.0;
        if (text_prefill(&m, &base, ids, P, last, NULL)) { fprintf(stderr, "quality: sample %lld: prefill failed\n", (long long)t + 1); return 1; }
        if (sources && !decode_every && /* once per prefix, for every budget */
            text_scores_compute(&m, &base, ids, P, sources, &given, error, sizeof error)) {
            fprintf(stderr, "quality: sample %lld: %s\n", (long long)t + 1, error);
            return 1;
        }
        llm_cache_reset(&work); /* ends a --decode run's decoding */
        llm_cache_copy(&work, &base);
        if (llm_forward(&m.model, &work, ids + P, F, reference)) {
            fprintf(stderr, "quality: sample %lld: the forced tokens failed\n", (long long)t + 1);
            return 1;
        }
        reference_rows(reference, F, V, neg_entropy, top);
        for (r = 0; r < n_runs; r++) {
            double agreement = 1, start;
            if (decode_every) {
                if (forced_while_evicting(&m, &base, &work, ids, P, F, &runs[r], decode_every, logits, &evict[r])) {
                    fprintf(stderr, "quality: sample %lld failed\n", (long long)t + 1);
                    return 1;
                }
                kl[r * n + t] = mean_kl(reference, neg_entropy, top, logits, F, V, row_stats, &agreement);
                top1[r * n + t] = agreement;
                continue;
            }
            if (runs[r].full) { kl[r * n + t] = 0; top1[r * n + t] = 1; continue; }
            llm_cache_copy(&work, &base);
            start = text_seconds();
            {
                const int64_t budget = (int64_t)(runs[r].fraction * (double)P);
                kvec_result status = runs[r].sources ? llm_evict_scores(&work, &runs[r].config, budget,
                                                                        text_scores_of(&given, runs[r].policy), NULL)
                                                     : llm_evict(&work, &runs[r].config, budget, NULL);
                if (status != KVEC_OK) {
                    fprintf(stderr, "quality: sample %lld, %s at %g: kvec: %s\n", (long long)t + 1, runs[r].policy,
                            runs[r].fraction, kvec_result_string(status));
                    return 1;
                }
            }
            evict[r] += text_seconds() - start;
            if (llm_forward(&m.model, &work, ids + P, F, logits)) {
                fprintf(stderr, "quality: sample %lld, %s: the forced tokens failed\n", (long long)t + 1, runs[r].policy);
                return 1;
            }
            kl[r * n + t] = mean_kl(reference, neg_entropy, top, logits, F, V, row_stats, &agreement);
            top1[r * n + t] = agreement;
        }
        free(ids);
        {
            double elapsed = text_seconds() - started;
            fprintf(stderr, "\rsample %lld/%lld, %.0f s, about %.0f s left ", (long long)t + 1, (long long)n, elapsed,
                    elapsed / (double)(t + 1) * (double)(n - t - 1));
            fflush(stderr);
        }
    }
    fprintf(stderr, "\n");

    for (r = 0; r < n_runs; r++) {
        const int base_row = kvec_row(runs, n_runs, r);
        stats[r][STAT_KL] = mean_of(kl + r * n, n);
        stats[r][STAT_KL_SE] = stderr_of(kl + r * n, n);
        stats[r][STAT_TOP1] = mean_of(top1 + r * n, n);
        stats[r][STAT_TOP1_SE] = stderr_of(top1 + r * n, n);
        stats[r][STAT_DKL] = stats[r][STAT_DKL_SE] = NAN;
        if (base_row >= 0) {
            for (t = 0; t < n; t++) diff[t] = kl[r * n + t] - kl[base_row * n + t];
            stats[r][STAT_DKL] = mean_of(diff, n);
            stats[r][STAT_DKL_SE] = stderr_of(diff, n);
        }
        stats[r][STAT_EVICT] = evict[r] / (double)n;
    }
    printf("\n%-14s %7s   %-20s %-18s %s\n", "policy", "budget", "KL (nats)", "top-1 agreement", "KL - kvec (paired)");
    for (r = 0; r < n_runs; r++) {
        printf("%-14s %6.0f%%   %.4f +- %.4f     %.3f +- %.3f    ", runs[r].policy, 100 * runs[r].fraction,
               stats[r][STAT_KL], stats[r][STAT_KL_SE], stats[r][STAT_TOP1], stats[r][STAT_TOP1_SE]);
        if (!runs[r].full && !isnan(stats[r][STAT_DKL])) printf("%+.4f +- %.4f", stats[r][STAT_DKL], stats[r][STAT_DKL_SE]);
        printf("\n");
    }
    printf("\n%lld samples, wall time %.1f s, CPU time %.1f s (all threads); +- is the standard error over samples "
           "(per-sample means)\n", (long long)n, text_seconds() - started, (double)clock() / CLOCKS_PER_SEC);

    if (out_path) {
        if (!(f = fopen(out_path, "w"))) { fprintf(stderr, "quality: cannot write %s\n", out_path); return 1; }
        fprintf(f, "{\n  \"model\": ");
        text_write_json_string(f, m.name);
        fprintf(f, ",\n  \"samples_file\": ");
        text_write_json_string(f, samples_path);
        fprintf(f, ",\n  \"samples\": %lld,\n  \"quick\": %s,\n  \"prefix\": [%lld, %lld],\n  \"forced\": [%lld, %lld],\n"
                   "  \"decode_every\": %lld,\n",
                (long long)n, quick ? "true" : "false", (long long)prefix_range[0], (long long)prefix_range[1],
                (long long)forced_range[0], (long long)forced_range[1], (long long)decode_every);
        for (k = 0; k < STAT_COUNT + 2; k++) {
            int first_policy = 1;
            fprintf(f, "  \"%s\": {", k < STAT_COUNT ? STAT_NAMES[k] : k == STAT_COUNT ? "per_sample_kl" : "per_sample_top1");
            for (r = 0; r < n_runs; r++) {
                int p;
                if (r && !strcmp(runs[r - 1].policy, runs[r].policy)) continue; /* written with its first row */
                fprintf(f, "%s\n    \"%s\": {", first_policy ? "" : ",", runs[r].policy);
                first_policy = 0;
                for (p = r; p < n_runs && !strcmp(runs[p].policy, runs[r].policy); p++) {
                    fprintf(f, p > r ? ", " : "");
                    if (runs[p].full) fprintf(f, "\"1.0\": ");
                    else fprintf(f, "\"%g\": ", runs[p].fraction);
                    if (k < STAT_COUNT) {
                        if (isnan(stats[p][k])) fprintf(f, "null");
                        else fprintf(f, "%.6g", stats[p][k]);
                    } else {
                        const double *x = (k == STAT_COUNT ? kl : top1) + p * n;
                        for (t = 0; t < n; t++) fprintf(f, "%s%.6g", t ? ", " : "[", x[t]);
                        fprintf(f, "]");
                    }
                }
                fprintf(f, "}");
            }
            fprintf(f, "\n  },\n");
        }
        fprintf(f, "  \"wall_seconds\": %.1f,\n  \"cpu_seconds\": %.1f\n}\n", text_seconds() - started,
                (double)clock() / CLOCKS_PER_SEC);
        fclose(f);
        printf("results in %s\n", out_path);
    }
    llm_cache_free(&base);
    llm_cache_free(&work);
    text_model_free(&m);
    for (t = 0; t < n_read; t++) free(samples[t].text);
    free(samples);
    free(kl);
    free(top1);
    free(evict);
    free(diff);
    free(row_stats);
    free(neg_entropy);
    free(top);
    free(last);
    free(reference);
    free(logits);
    text_scores_free(&given);
    return 0;
}
