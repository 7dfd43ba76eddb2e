/* test_engine.c - the example engine against Hugging Face transformers'
   logits, its loader against broken model files, and the task generator.

   build/test_engine [model_dir]   (default bench/models/ref-4l) */
#include "../examples/engine/json.h"
#include "../examples/engine/model.h"
#include "../examples/engine/scorer.h"
#include "../examples/engine/tasks.h"


#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int n_passed, n_failed;

static void check(int ok, const char *what) {
    if (ok) n_passed++;
    else { n_failed++; printf("FAIL: %s\n", what); }
}

/* The engine's logits at the test positions of each vector of
   reference_logits.json, within 1e-4 of the largest reference logit. */
static void test_reference_logits(const char *dir) {
    char path[1024], error[256], what[256];
    size_t length;
    char *text;
    json_value *root;
    const json_value *vectors, *vector;
    llm_model model;
    llm_cache cache;
    snprintf(path, sizeof path, "%s/reference_logits.json", dir);
    text = json_read_file(path, &length);
    check(text != NULL, "reference_logits.json readable");
    if (!text) return;
    root = json_parse(text, length, error, sizeof error);
    check(root != NULL, "reference_logits.json parses");
    if (!root) { free(text); return; }
    if (llm_load(&model, dir, error, sizeof error)) {
        printf("FAIL: load %s: %s\n", dir, error);
        n_failed++;
        json_free(root); free(text);
        return;
    }
    vectors = json_get(root, "vectors");
    for (vector = vectors ? vectors->child : NULL; vector; vector = vector->next) {
        const json_value *tokens = json_get(vector, "tokens"), *positions = json_get(vector, "positions");
        const json_value *logits = json_get(vector, "logits"), *t, *p, *row;
        const int64_t V = model.config.vocab_size, n = (int64_t)tokens->length;
        int32_t *ids = (int32_t *)malloc((size_t)n * sizeof *ids);
        float *out = (float *)malloc((size_t)(n * V) * sizeof *out);
        double worst = 0.0;
        int64_t i = 0;
        for (t = tokens->child; t; t = t->next) ids[i++] = (int32_t)t->number;
        llm_cache_init(&cache, &model, n);
        check(llm_forward(&model, &cache, ids, n, out) == 0, "forward runs");
        for (p = positions->child, row = logits->child; p && row; p = p->next, row = row->next) {
            const float *mine = out + (int64_t)p->number * V;
            const json_value *x;
            double largest = 0.0, diff = 0.0;
            for (x = row->child, i = 0; x; x = x->next, i++) {
                if (fabs(x->number) > largest) largest = fabs(x->number);
                if (fabs(mine[i] - x->number) > diff) diff = fabs(mine[i] - x->number);
            }
            if (diff / largest > worst) worst = diff / largest;
        }
        snprintf(what, sizeof what, "%s, %lld tokens: logits within 1e-4 relative (worst %.2e)",
                 json_get(vector, "task")->string, (long long)n, worst);
        check(worst <= 1e-4, what);
        printf("  logits %-10s %5lld tokens: max |diff| / max |logit| = %.2e\n",
               json_get(vector, "task")->string, (long long)n, worst);
        llm_cache_free(&cache);
        free(ids); free(out);
    }
    llm_free(&model);
    json_free(root);
    free(text);
}


/* ------------------------------------------------------------- the loader */

static void write_file(const char *path, const char *data, size_t length) {
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(data, 1, length, f); fclose(f); }
}

/* A copy of the model directory in build/, with one file changed; llm_load
   must fail with a message containing `expect`. */
static void expect_load_error(const char *config, size_t config_length,
                              const char *weights, size_t weights_length, const char *expect) {
    const char *broken = "build/broken-model";
    char path[1024], error[512] = "", what[700];
    llm_model model;
    int status;
    snprintf(path, sizeof path, "mkdir -p %s", broken);
    if (system(path) != 0) { check(0, "mkdir build/broken-model"); return; }
    snprintf(path, sizeof path, "%s/config.json", broken);
    write_file(path, config, config_length);
    snprintf(path, sizeof path, "%s/model.safetensors", broken);
    write_file(path, weights, weights_length);
    status = llm_load(&model, broken, error, sizeof error);
    snprintf(what, sizeof what, "broken model rejected with \"%s\" (got: %s)", expect, error);
    check(status == -1 && strstr(error, expect) != NULL, what);
    if (status == 0) llm_free(&model);
}

static void test_loader_errors(const char *dir) {
    char path[1024], error[256];
    size_t config_length, weights_length;
    char *config, *weights, *copy, *hit;
    llm_model model;
    snprintf(path, sizeof path, "%s/config.json", dir);
    config = json_read_file(path, &config_length);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    weights = json_read_file(path, &weights_length);
    check(config && weights, "model files readable");
    if (!config || !weights) { free(config); free(weights); return; }
    copy = (char *)malloc(weights_length > config_length ? weights_length : config_length);

    check(llm_load(&model, "build/no-such-model", error, sizeof error) == -1 && strstr(error, "cannot read"),
          "missing directory rejected");
    /* Truncated weights: the data of the last tensors is gone. */
    expect_load_error(config, config_length, weights, weights_length / 2, "truncated");
    /* A file too short to hold its header. */
    expect_load_error(config, config_length, weights, 100, "truncated");
    /* Corrupt header JSON: its first '{' overwritten. */
    memcpy(copy, weights, weights_length);
    copy[8] = '#';
    expect_load_error(config, config_length, copy, weights_length, "header");
    /* A missing tensor: one name misspelt, same length, offsets intact. */
    memcpy(copy, weights, weights_length);
    hit = strstr(copy + 8, "model.norm.weight");
    if (hit) memcpy(hit, "model.nrom", 10);
    expect_load_error(config, config_length, copy, weights_length, "missing tensor model.norm.weight");
    /* A config that disagrees with the weights' shapes. */
    memcpy(copy, config, config_length);
    hit = strstr(copy, "\"intermediate_size\": 640");
    if (hit) memcpy(hit, "\"intermediate_size\": 512", 24);
    check(hit != NULL, "config.json has intermediate_size 640");
    expect_load_error(copy, config_length, weights, weights_length, "should be [512, 256]");
    /* Malformed config.json. */
    expect_load_error("{\"vocab_size\": 512,", 19, weights, weights_length, "config.json: JSON");
    free(copy);
    free(config);
    free(weights);
}

/* ------------------------------------------------------ decoding, eviction */

/* The model of dir and its tasks.json; -1 (a failed check) if either fails. */
static int load_model_and_tasks(const char *dir, llm_model *model, task_spec *spec) {
    char error[256], spec_path[1024];
    if (llm_load(model, dir, error, sizeof error)) { check(0, error); return -1; }
    snprintf(spec_path, sizeof spec_path, "%s/tasks.json", dir);
    if (task_spec_load(spec, spec_path, error, sizeof error)) { check(0, error); llm_free(model); return -1; }
    return 0;
}

/* Token-by-token decoding gives the logits of one chunked forward, and an
   eviction that keeps everything changes nothing. */
static void test_decode_and_evict(const char *dir) {
    llm_model model;
    task_spec spec;
    task_sample s;
    llm_cache chunked, stepwise;
    float *all, *one, *one_run;
    double worst = 0.0;
    int64_t t, i, V, P;
    kvec_plan plan;
    kvec_config config;
    if (load_model_and_tasks(dir, &model, &spec)) return;
    task_generate(&spec, TASK_SINGLE, 512, 7, &s);
    V = model.config.vocab_size;
    all = (float *)malloc((size_t)(s.length * V) * sizeof(float));
    one = (float *)malloc((size_t)V * sizeof(float));
    one_run = (float *)malloc((size_t)(s.length * V) * sizeof(float));
    llm_cache_init(&chunked, &model, s.length);
    llm_cache_init(&stepwise, &model, s.length);
    llm_forward(&model, &chunked, s.tokens, s.length, all);
    for (t = 0; t < s.length; t++) {
        llm_forward(&model, &stepwise, s.tokens + t, 1, one);
        for (i = 0; i < V; i++) {
            const double d = fabs(one[i] - all[t * V + i]);
            if (d > worst) worst = d;
        }
    }
    printf("  decode token by token vs one chunk: max |diff| = %.2e\n", worst);
    check(worst < 1e-4, "token-by-token decoding matches the chunked forward");

    /* Evict the context with a budget that keeps all of it: same logits. */
    P = s.context_end;
    memset(&config, 0, sizeof config);
    llm_cache_reset(&stepwise);
    llm_forward(&model, &stepwise, s.tokens, P, NULL);
    check(llm_evict(&stepwise, &config, P, &plan) == KVEC_OK, "evict with budget = prefix");
    llm_forward(&model, &stepwise, s.tokens + P, s.length - P, one_run);
    worst = 0.0;
    for (i = 0; i < (s.length - P) * V; i++)
        if (fabs(one_run[i] - all[P * V + i]) > worst) worst = fabs(one_run[i] - all[P * V + i]);
    check(worst < 1e-4, "keeping the whole prefix leaves the logits as they were");
    /* A real eviction: every head keeps the budget, positions go on at P. */
    llm_cache_reset(&stepwise);
    llm_forward(&model, &stepwise, s.tokens, P, NULL);
    check(llm_evict(&stepwise, &config, 64, &plan) == KVEC_OK, "evict to 64 tokens per head");
    for (i = 0; i < model.config.n_layers * model.config.n_kv_heads; i++)
        check(stepwise.length[i] == 64 && plan.kept_count[i] == 64, "every head keeps 64 rows");
    check(stepwise.n_positions == P, "positions continue at the prefix length");
    check(llm_forward(&model, &stepwise, s.tokens + P, s.length - P, one_run) == 0, "decoding after eviction");
    check(llm_evict(&stepwise, &config, 64, &plan) == KVEC_ERROR_SHAPE_MISMATCH,
          "a second eviction after decoding is refused, cache unchanged");
    config.window = 128;
    llm_cache_reset(&stepwise);
    llm_forward(&model, &stepwise, s.tokens, P, NULL);
    check(llm_evict(&stepwise, &config, 64, &plan) == KVEC_ERROR_BUDGET_BELOW_WINDOW &&
              stepwise.length[0] == P, "budget below the window: error, cache untouched");
    check(llm_forward(&model, &stepwise, s.tokens, 0, NULL) == 0, "empty forward");
    {
        int32_t bad = (int32_t)V;
        check(llm_forward(&model, &stepwise, &bad, 1, NULL) == -1, "out-of-vocabulary token refused");
    }
    llm_cache_free(&chunked);
    llm_cache_free(&stepwise);
    free(all); free(one); free(one_run);
    task_sample_free(&s);
    task_spec_free(&spec);
    llm_free(&model);
}

/* The context streamed in chunks with eviction during decoding. */
static void test_streamed_eviction(const char *dir) {
    llm_model model;
    task_spec spec;
    task_sample s;
    llm_cache full, streamed;
    float *all, *rest;
    double worst = 0.0, total = 0.0;
    int64_t i, at, V, P, L, Hk;
    int rows_ok = 1, positions_ok = 1;
    kvec_config config;
    if (load_model_and_tasks(dir, &model, &spec)) return;
    task_generate(&spec, TASK_MULTIKEY, 512, 9, &s);
    V = model.config.vocab_size; P = s.context_end; L = model.config.n_layers; Hk = model.config.n_kv_heads;
    all = (float *)malloc((size_t)(s.length * V) * sizeof(float));
    rest = (float *)malloc((size_t)(s.length * V) * sizeof(float));
    llm_cache_init(&full, &model, s.length);
    llm_cache_init(&streamed, &model, s.length);
    llm_forward(&model, &full, s.tokens, s.length, all);

    /* H2O, budget above the context: nothing is evicted, nothing changes,
       and every observed query adds one unit of attention per head. */
    memset(&config, 0, sizeof config);
    config.policy = KVEC_POLICY_H2O;
    check(llm_decode_begin(&streamed, 1) == 0, "decode begins on an empty cache");
    for (at = 0; at < P; at += 64) {
        const int64_t m = P - at < 64 ? P - at : 64;
        llm_forward(&model, &streamed, s.tokens + at, m, NULL);
        check(llm_decode_evict(&streamed, &config, P) == KVEC_OK, "evict within budget");
    }
    for (i = 0; i < streamed.decode.n_rows; i++) total += streamed.decode.attention[i];
    printf("  H2O attention observed in layer 0, head 0: %.4f for %ld queries\n", total, (long)P);
    check(fabs(total - (double)P) < 1e-3 * (double)P, "observed attention sums to one per query");
    llm_forward(&model, &streamed, s.tokens + P, s.length - P, rest);
    for (i = 0; i < (s.length - P) * V; i++)
        if (fabs(rest[i] - all[P * V + i]) > worst) worst = fabs(rest[i] - all[P * V + i]);
    check(worst < 1e-4, "streaming with nothing evicted leaves the logits as they were");

    /* H2O and SnapKV at 96 rows: held at the budget, positions go on. */
    for (i = 0; i < 2; i++) {
        int64_t j, r;
        config.policy = i == 0 ? KVEC_POLICY_H2O : KVEC_POLICY_SNAPKV;
        llm_cache_reset(&streamed);
        llm_decode_begin(&streamed, i == 0);
        for (at = 0; at < P; at += 64) {
            const int64_t m = P - at < 64 ? P - at : 64;
            llm_forward(&model, &streamed, s.tokens + at, m, NULL);
            check(llm_decode_evict(&streamed, &config, 96) == KVEC_OK, "evict while streaming");
            for (j = 0; j < L * Hk; j++) rows_ok &= streamed.length[j] == (at + m < 96 ? at + m : 96);
        }
        for (j = 0; j < L * Hk; j++)
            for (r = 0; r < 96; r++) {
                const int64_t pos = streamed.decode.positions[j * streamed.decode.capacity + r];
                positions_ok &= r == 0 || pos > streamed.decode.positions[j * streamed.decode.capacity + r - 1];
                if (r >= 96 - 32) positions_ok &= pos == P - 96 + r; /* the recent buffer */
            }
        check(streamed.n_positions == P, "positions continue at the context length");
        check(llm_forward(&model, &streamed, s.tokens + P, s.length - P, rest) == 0, "decoding after streamed eviction");
    }
    check(rows_ok, "every head holds min(seen, budget) rows after each chunk");
    check(positions_ok, "kept positions ascending, the last 32 always kept");
    llm_cache_reset(&streamed);
    check(llm_decode_evict(&streamed, &config, 96) == KVEC_ERROR_STATE_MISMATCH, "evict without decode_begin refused");
    llm_cache_free(&full);
    llm_cache_free(&streamed);
    free(all); free(rest);
    task_sample_free(&s);
    task_spec_free(&spec);
    llm_free(&model);
}

/* ------------------------------------------------------------- generator */

static void test_generator(const char *dir) {
    static const int lengths[] = {256, 1024, 2048, 4096};
    char path[1024], error[256], what[256];
    task_spec spec;
    int kind, li, seed, bad = 0, n_samples = 0;
    snprintf(path, sizeof path, "%s/tasks.json", dir);
    if (task_spec_load(&spec, path, error, sizeof error)) { check(0, error); return; }
    task_spec_free(&spec);
    check(task_spec_load(&spec, "build/no-such-tasks.json", error, sizeof error) == -1, "missing tasks.json refused");
    task_spec_load(&spec, path, error, sizeof error);
    for (kind = 0; kind < TASK_COUNT; kind++) {
        for (li = 0; li < 4; li++) {
            for (seed = 0; seed < 25; seed++) {
                task_sample s, again;
                int64_t t, r, n_scored = 0, records_tokens = 0;
                const int32_t *a;
                if (task_generate(&spec, (task_kind)kind, lengths[li], (uint64_t)seed, &s)) { bad++; continue; }
                n_samples++;
                a = s.tokens + s.answer_start;
                /* Shape: exact length, BOS, question after the context. */
                if (s.length != lengths[li] || s.tokens[0] != spec.bos || s.tokens[s.context_end] != spec.query ||
                    s.answer_start != s.context_end + 2 || s.tokens[s.length - 1] != spec.eos)
                    bad++;
                /* Records: in order, inside the context, at sentence boundaries, well formed. */
                for (r = 0; r < s.n_records; r++) {
                    const int64_t at = s.record_start[r];
                    const int32_t *rec = s.tokens + at;
                    records_tokens += s.record_length[r];
                    if (at < 1 || at + s.record_length[r] > s.context_end ||
                        (r > 0 && at < s.record_start[r - 1] + s.record_length[r - 1]) ||
                        (at > 1 && s.tokens[at - 1] != spec.dot) || rec[s.record_length[r] - 1] != spec.dot ||
                        (kind == TASK_VARTRACK ? rec[0] != spec.var || s.record_length[r] != 4
                                               : rec[0] != spec.key || s.record_length[r] != 6))
                        bad++;
                }
                /* Everything else in the context is filler. */
                for (t = 1, r = 0; t < s.context_end; t++) {
                    if (r < s.n_records && t == s.record_start[r]) { t += s.record_length[r] - 1; r++; continue; }
                    if (s.tokens[t] != spec.dot && (s.tokens[t] < 16 || s.tokens[t] >= spec.keys_first)) bad++;
                }
                if (s.n_records != (kind == TASK_SINGLE ? 1 : kind == TASK_VARTRACK ? s.n_records : 16) ||
                    (kind == TASK_VARTRACK && s.n_records != 6 && s.n_records != 9))
                    bad++;
                for (t = 0; t < s.length; t++) n_scored += s.scored[t];
                if (n_scored != (kind == TASK_MULTIQUERY ? 10 : 4)) bad++;
                /* The answer is what the records say. */
                if (kind == TASK_VARTRACK) {
                    int32_t from = s.tokens[s.context_end + 1];
                    int hop;
                    for (hop = 0; hop < 3; hop++) {
                        for (r = 0; r < s.n_records && s.tokens[s.record_start[r] + 1] != from; r++) {}
                        if (r == s.n_records || s.tokens[s.record_start[r] + 2] != a[hop]) { bad++; break; }
                        from = a[hop];
                    }
                } else {
                    const int n_asked = kind == TASK_MULTIQUERY ? 3 : 1;
                    int q;
                    for (q = 0; q < n_asked; q++) {
                        /* answer: va1 va2 va3 SEMI kb vb1 vb2 vb3 SEMI kc vc1 vc2 vc3 EOS */
                        const int32_t key = q == 0 ? s.tokens[s.context_end + 1] : a[5 * q - 1];
                        const int32_t *values = a + 5 * q;
                        for (r = 0; r < s.n_records && s.tokens[s.record_start[r] + 1] != key; r++) {}
                        if (r == s.n_records || memcmp(s.tokens + s.record_start[r] + 2, values, 3 * sizeof(int32_t)))
                            bad++;
                    }
                }
                /* The same seed gives the same sample. */
                task_generate(&spec, (task_kind)kind, lengths[li], (uint64_t)seed, &again);
                if (memcmp(again.tokens, s.tokens, (size_t)s.length * sizeof(int32_t))) bad++;
                task_sample_free(&again);
                task_sample_free(&s);
            }
        }
    }
    snprintf(what, sizeof what, "%d generated samples valid (%d problems)", n_samples, bad);
    check(bad == 0 && n_samples == TASK_COUNT * 4 * 25, what);
    printf("  generator: %d samples, 4 tasks x lengths 256-4096, %d problems\n", n_samples, bad);
    {
        task_sample s;
        check(task_generate(&spec, TASK_SINGLE, 100, 1, &s) == -1, "too-short length refused");
    }
    task_spec_free(&spec);
}

/* JSON lines: blank lines skipped, line numbers counted, a bad line an
   error, a last line without a newline read, text past `length` never. */
static void test_json_lines(void) {
    const char text[] = "\n{\"a\": 1}\n \t\r\n[2, 3]\nnot json\n\"last\"[9]";
    json_lines lines;
    json_value *v = NULL;
    char error[160];
    json_lines_init(&lines, text, sizeof text - 1 - 3); /* the trailing [9] is outside */
    check(json_lines_next(&lines, &v, error, sizeof error) == 1 && lines.line == 2 && v->type == JSON_OBJECT,
          "json_lines: first value on line 2");
    json_free(v);
    check(json_lines_next(&lines, &v, error, sizeof error) == 1 && lines.line == 4 && v->type == JSON_ARRAY &&
              v->length == 2, "json_lines: blank line 3 skipped");
    json_free(v);
    check(json_lines_next(&lines, &v, error, sizeof error) == -1 && lines.line == 5 && !v && error[0],
          "json_lines: line 5 is an error");
    check(json_lines_next(&lines, &v, error, sizeof error) == 1 && lines.line == 6 && v->type == JSON_STRING &&
              !strcmp(v->string, "last"), "json_lines: a last line without a newline");
    json_free(v);
    check(json_lines_next(&lines, &v, error, sizeof error) == 0 && !v, "json_lines: then the end");
    json_lines_init(&lines, text, 0);
    check(json_lines_next(&lines, &v, error, sizeof error) == 0, "json_lines: empty text");
}

/* ------------------------------------------------------- learned scorers */

static int file_bytes(const char *path, unsigned char **data, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    *data = (unsigned char *)malloc((size_t)*size);
    if (fread(*data, 1, (size_t)*size, f) != (size_t)*size) { fclose(f); return -1; }
    fclose(f);
    return 0;
}

static void write_bytes(const char *path, const unsigned char *data, long size) {
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, (size_t)size, f);
    fclose(f);
}

/* A scorer file written and read back scores what kvec_learned_scores
   scores on the forward pass's own attention input, chunk by chunk; files
   for another model, truncated or corrupt, are refused with a message. */
static void test_learned_scorer(const char *dir) {
    const char *path = "build/test-scorer.kvs", *bad = "build/test-scorer-bad.kvs";
    llm_model model;
    task_spec spec;
    task_sample s;
    llm_cache cache;
    llm_scorer loaded;
    kvec_scorer *layers;
    float *weights;
    unsigned char *bytes;
    long size;
    char error[512];
    int64_t L, E, Hk, l, j, t, d, i, T;
    double worst = 0.0;
    uint64_t state = 99;
    if (load_model_and_tasks(dir, &model, &spec)) return;
    L = model.config.n_layers; E = model.config.hidden_size; Hk = model.config.n_kv_heads;
    layers = (kvec_scorer *)calloc((size_t)L, sizeof(kvec_scorer));
    weights = (float *)malloc((size_t)(L * (Hk * E + Hk)) * sizeof(float));
    for (i = 0; i < L * (Hk * E + Hk); i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        weights[i] = (float)((double)(state >> 40) / (double)(1 << 24) - 0.5) * 0.2f;
    }
    for (l = 0; l < L; l++) {
        layers[l].kind = KVEC_SCORER_LINEAR; layers[l].output = KVEC_SCORER_SCORE;
        layers[l].n_embd = E; layers[l].n_kv_heads = Hk;
        layers[l].weight = weights + l * (Hk * E + Hk);
        layers[l].bias = layers[l].weight + Hk * E;
    }
    check(llm_scorer_save(path, layers, &model, "test model", "random", error, sizeof error) == 0, "scorer written");
    check(llm_scorer_load(&loaded, path, &model, error, sizeof error) == 0, "scorer read back");
    check(loaded.n_layers == L && !memcmp(loaded.weights, weights, (size_t)(L * (Hk * E + Hk)) * sizeof(float)) &&
              !strcmp(loaded.model_name, "test model"), "the same weights and name");
    /* the forward pass scores every position, in chunks, as one call would */
    task_generate(&spec, TASK_SINGLE, 600, 3, &s);
    T = s.length;
    llm_cache_init(&cache, &model, T);
    check(llm_cache_set_scorers(&cache, loaded.layers) == 0 && llm_cache_log_hidden(&cache, 1) == 0, "scorer attached");
    llm_forward(&model, &cache, s.tokens, 300, NULL);          /* two chunks */
    llm_forward(&model, &cache, s.tokens + 300, T - 300, NULL); /* and the rest */
    for (l = 0; l < L; l++)
        for (t = 0; t < T; t++) {
            const float *x = cache.hidden_log + (l * cache.capacity + t) * E;
            for (j = 0; j < Hk; j++) {
                double y = loaded.layers[l].bias[j];
                for (d = 0; d < E; d++) y += (double)loaded.layers[l].weight[j * E + d] * x[d];
                y = fabs(y - cache.learned[(l * Hk + j) * cache.capacity + t]);
                worst = y > worst ? y : worst;
            }
        }
    printf("  learned scores in the forward pass vs the formula on its attention input: max |diff| = %.2e\n", worst);
    check(worst < 1e-4, "the forward pass's learned scores are the scorer's on each layer's attention input");
    check(cache.learned_seconds > 0.0, "the scorer's time is counted");
    {
        kvec_scorer wrong = loaded.layers[0];
        kvec_scorer *few = (kvec_scorer *)malloc((size_t)L * sizeof(kvec_scorer));
        for (l = 0; l < L; l++) few[l] = loaded.layers[l];
        wrong.n_embd = E - 1;
        few[L - 1] = wrong;
        check(llm_cache_set_scorers(&cache, few) == -1 && cache.scorers == loaded.layers,
              "a scorer of another width is refused, the attached one kept");
        free(few);
    }
    /* refusals */
    check(llm_scorer_load(&loaded, "build/no-such-scorer.kvs", &model, error, sizeof error) == -1 &&
              strstr(error, "cannot open"), "a missing file");
    llm_scorer_free(&loaded);
    if (file_bytes(path, &bytes, &size) == 0) {
        write_bytes(bad, bytes, size - 3);
        check(llm_scorer_load(&loaded, bad, &model, error, sizeof error) == -1 && strstr(error, "truncated"),
              "a truncated file");
        bytes[200] ^= 0x40;
        write_bytes(bad, bytes, size);
        check(llm_scorer_load(&loaded, bad, &model, error, sizeof error) == -1 && strstr(error, "checksum"),
              "a corrupt byte");
        bytes[200] ^= 0x40;
        bytes[0] = 'X';
        write_bytes(bad, bytes, size);
        check(llm_scorer_load(&loaded, bad, &model, error, sizeof error) == -1 && strstr(error, "not a kvec scorer"),
              "another kind of file");
        free(bytes);
    }
    model.layers[0].attn_norm[0] += 0.5f; /* other weights, the same shape */
    check(llm_scorer_load(&loaded, path, &model, error, sizeof error) == -1 && strstr(error, "another model") &&
              strstr(error, "fingerprint"), "a scorer for other weights of the same shape");
    model.layers[0].attn_norm[0] -= 0.5f;
    model.config.n_layers -= 1;
    check(llm_scorer_load(&loaded, path, &model, error, sizeof error) == -1 && strstr(error, "another model"),
          "a scorer for another number of layers");
    model.config.n_layers += 1;
    llm_cache_free(&cache);
    free(layers); free(weights);
    task_sample_free(&s);
    task_spec_free(&spec);
    llm_free(&model);
    remove(bad);
    remove(path);
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "bench/models/ref-4l";
    test_json_lines();
    test_reference_logits(dir);
    test_loader_errors(dir);
    test_decode_and_evict(dir);
    test_streamed_eviction(dir);
    test_generator(dir);
    test_learned_scorer(dir);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed != 0;
}
