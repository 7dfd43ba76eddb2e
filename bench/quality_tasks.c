/* quality_tasks.c - build/quality on your own documents: a GGUF model
   answers the questions of a task file from compressed caches.

   build/quality --model FILE.gguf --tasks FILE [--policies full,snapkv,kvec | all]
                 [--budgets 0.25,0.5] [--settings agnostic,aware,both]
                 [--max-tokens 32] [--limit N] [--skip N] [--per-task N] [--quick] [--trace-answer] [--per-sample]
                 [--out RESULT.json]

   The task file holds one JSON object per line:

       {"context": "...", "question": "...", "answer": "...", "task": "..."}

   ("task", optional, names the sample's kind for the per-task table.) Each
   sample becomes one chat turn: an instruction, the context, then
   "Question: ..." (TEXT_INSTRUCTION, session.h). Question-agnostic: the
   context is prefilled and compressed before the question is read;
   question-aware: context and question are prefilled together, then
   compressed; both: the question is also put before the context
   ("Question: ...\n\n" after the instruction), and the prompt up to the end
   of the context is compressed before the second copy is read. Each policy
   keeps floor(f * prefix) rows per KV head (window of 32 included) for each
   budget f; `full` is the uncompressed cache. A sample is correct when the
   greedy answer (at most --max-tokens new tokens) contains `answer`,
   ignoring ASCII case. --trace-answer: no answers; instead, for each
   compressed row, which layers keep the answer: the answer's tokens are its
   first occurrence in the prefix (its ids alone, else with a leading
   space), and per layer the table gives the fraction of KV heads that keep
   every one of them, averaged over the samples where it was found (printed
   as a digit per layer, 0 = none .. 9 = all; "answer_kept" in RESULT.json).
   --per-sample: also a line `per-sample N SETTING POLICY BUDGET 0|1` for
   each answer, for paired differences between policies.
   --limit N: the first N samples of the file; --skip N: leave out the
   first N of those (a long run split in parts keeps the file's sample
   numbers, so the parts' per-sample lines join);
   --per-task N: the first N samples of each task. --quick: --per-task 2,
   and unless given, policies full,kvec,snapkv,keydiff,streaming at budget
   0.5.

   RESULT.json has the shape of the synthetic benchmark's:

       {"model": .., "tasks": .., "samples": n, "max_new_tokens": ..,
        "results": {policy: {"agnostic" | "aware" | "both": {budget: accuracy}}},
        "stderr":  {policy: {setting: {budget: standard error}}},
        "correct": {policy: {setting: {budget: correct samples}}},
        "per_task": {task: {"samples": n, "correct": {policy: {setting: {budget: correct}}}}},
        "wall_seconds": .., "cpu_seconds": ..}

   with `full` at budget "1.0" and the standard error sqrt(p (1 - p) / n). */
#include "../examples/engine/json.h"
#include "quality_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MAX_REPLY = 1024, MAX_KINDS = 16, MAX_LAYERS = 64 };

static const char *const SETTING_NAMES[TEXT_MAX_SETTINGS] = {"agnostic", "aware", "both"};

typedef struct task {
    char *context, *question, *answer;
    int   kind;                 /* index into the task names */
} task;

/* The kinds of task seen in the file ("task" field; "all" without one). */
typedef struct task_kinds {
    char name[MAX_KINDS][32];
    int  count;
} task_kinds;

static void usage(void) {
    fprintf(stderr,
            "usage: quality --model FILE.gguf --tasks FILE [--policies full,snapkv,kvec | all] [--budgets 0.25,0.5]\n"
            "               [--settings agnostic,aware,both] [--max-tokens N] [--limit N] [--skip N] [--per-task N] [--quick]\n"
            "               [--trace-answer] [--per-sample] [--out RESULT.json] [--scorer FILE.kvs]\n"
            "policies: full %s\n"
            "%s",
            TEXT_POLICY_NAMES, TEXT_POLICY_OPTIONS);
}

void text_write_json_string(FILE *f, const char *text) {
    fputc('"', f);
    for (; *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* Appends the rows of one policy name (no `all`) at every budget. */
static int add_policy(const char *name, const char *budgets, text_run *runs, int n_runs, int max_runs) {
    const char *cut = budgets;
    char error[512];
    text_run probe;
    memset(&probe, 0, sizeof probe);
    snprintf(probe.policy, sizeof probe.policy, "%s", name);
    if (!strcmp(name, "full")) {
        if (n_runs == max_runs) { fprintf(stderr, "quality: too many policy-budget pairs (at most %d)\n", max_runs); return -1; }
        probe.full = 1;
        probe.fraction = 1;
        runs[n_runs++] = probe;
        return n_runs;
    }
    if (strlen(name) >= sizeof probe.policy) {
        fprintf(stderr, "quality: policy name too long: '%s'\n", name);
        return -1;
    }
    if (text_policy_parse(name, &probe.config, error, sizeof error)) {
        fprintf(stderr, "quality: %s (or full, all)\n", error);
        return -1;
    }
    probe.sources = text_policy_scores(name);
    while (*cut) {
        char *end;
        double fraction = strtod(cut, &end);
        if (end == cut || !(fraction > 0 && fraction < 1) || (*end && *end != ',')) {
            fprintf(stderr, "quality: budgets must be fractions in (0, 1), comma-separated: %s\n", budgets);
            return -1;
        }
        if (n_runs == max_runs) { fprintf(stderr, "quality: too many policy-budget pairs (at most %d)\n", max_runs); return -1; }
        probe.fraction = fraction;
        runs[n_runs++] = probe;
        cut = *end ? end + 1 : end;
    }
    if (cut == budgets) { fprintf(stderr, "quality: --budgets is empty\n"); return -1; }
    return n_runs;
}

/* Calls add_policy for each name of a separated list; returns the row count or -1. */
static int add_policies(const char *list, char separator, const char *budgets, text_run *runs, int n_runs, int max_runs) {
    while (*list) {
        char name[sizeof ((text_run *)0)->policy];
        size_t n = 0;
        while (list[n] && list[n] != separator) n++;
        if (n >= sizeof name) { fprintf(stderr, "quality: unknown policy '%.*s'\n", (int)n, list); return -1; }
        memcpy(name, list, n);
        name[n] = '\0';
        if (!strcmp(name, "all")) { /* full, then every policy name but the learned ones (they need a scorer file) */
            char every[sizeof name * 32] = "", *word;
            char names[1024];
            snprintf(names, sizeof names, "%s", TEXT_POLICY_NAMES);
            for (word = strtok(names, " "); word; word = strtok(NULL, " "))
                if (text_policy_scores(word) != TEXT_SCORES_LEARNED) {
                    strncat(every, word, sizeof every - strlen(every) - 2);
                    strcat(every, " ");
                }
            if ((n_runs = add_policy("full", budgets, runs, n_runs, max_runs)) < 0 ||
                (n_runs = add_policies(every, ' ', budgets, runs, n_runs, max_runs)) < 0)
                return -1;
        } else if (n && (n_runs = add_policy(name, budgets, runs, n_runs, max_runs)) < 0) {
            return -1;
        }
        list += list[n] ? n + 1 : n;
    }
    return n_runs;
}

int text_parse_runs(const char *policies, const char *budgets, text_run *runs, int max_runs) {
    int n_runs = add_policies(policies, ',', budgets, runs, 0, max_runs);
    if (n_runs == 0) fprintf(stderr, "quality: --policies names no policy\n");
    return n_runs > 0 ? n_runs : -1;
}

/* The index of a task kind, added when new; -1 when there are too many. */
static int kind_index(task_kinds *kinds, const char *name) {
    int k;
    for (k = 0; k < kinds->count; k++)
        if (!strcmp(kinds->name[k], name)) return k;
    if (kinds->count == MAX_KINDS) return -1;
    snprintf(kinds->name[kinds->count], sizeof kinds->name[0], "%s", name);
    return kinds->count++;
}

/* Reads the JSON-lines task file into tasks (grown with realloc); returns
   the count, or -1 with a message naming the line. */
static int64_t read_tasks(const char *path, task **tasks, task_kinds *kinds, char *error, size_t error_size) {
    size_t length;
    char *text = json_read_file(path, &length);
    int64_t n = 0, capacity = 0;
    json_lines lines;
    json_value *v;
    char json_error[160];
    int got;
    if (!text) return gguf_error(error, error_size, "cannot read the task file %s", path);
    *tasks = NULL;
    json_lines_init(&lines, text, length);
    while ((got = json_lines_next(&lines, &v, json_error, sizeof json_error)) != 0) {
        const long long line = lines.line;
        const json_value *fields[3], *kind;
        int f;
        if (got < 0) {
            gguf_error(error, error_size, "%s:%lld: %s", path, line, json_error);
            goto fail;
        }
        fields[0] = json_get(v, "context"), fields[1] = json_get(v, "question"), fields[2] = json_get(v, "answer");
        for (f = 0; f < 3; f++)
            if (!fields[f] || fields[f]->type != JSON_STRING || (f == 2 && !fields[f]->string[0]) ||
                strlen(fields[f]->string) != fields[f]->length) {
                gguf_error(error, error_size, "%s:%lld: needs string fields \"context\", \"question\" and a non-empty \"answer\", without \\u0000",
                           path, line);
                json_free(v);
                goto fail;
            }
        kind = json_get(v, "task");
        if (kind && (kind->type != JSON_STRING || !kind->string[0] || kind->length >= sizeof kinds->name[0])) {
            gguf_error(error, error_size, "%s:%lld: \"task\" must be a non-empty string of at most 31 bytes", path, line);
            json_free(v);
            goto fail;
        }
        if (n == capacity) {
            task *grown = (task *)realloc(*tasks, (size_t)(capacity = capacity ? 2 * capacity : 16) * sizeof(task));
            if (!grown) { json_free(v); gguf_error(error, error_size, "out of memory"); goto fail; }
            *tasks = grown;
        }
        if (((*tasks)[n].kind = kind_index(kinds, kind ? kind->string : "all")) < 0) {
            json_free(v);
            gguf_error(error, error_size, "%s:%lld: more than %d task kinds", path, line, MAX_KINDS);
            goto fail;
        }
        (*tasks)[n].context = (char *)malloc(strlen(fields[0]->string) + 1);
        (*tasks)[n].question = (char *)malloc(strlen(fields[1]->string) + 1);
        (*tasks)[n].answer = (char *)malloc(strlen(fields[2]->string) + 1);
        if (!(*tasks)[n].context || !(*tasks)[n].question || !(*tasks)[n].answer) {
            json_free(v);
            gguf_error(error, error_size, "out of memory");
            n++;
            goto fail;
        }
        strcpy((*tasks)[n].context, fields[0]->string);
        strcpy((*tasks)[n].question, fields[1]->string);
        strcpy((*tasks)[n].answer, fields[2]->string);
        n++;
        json_free(v);
    }
    free(text);
    if (n == 0) return gguf_error(error, error_size, "%s holds no tasks", path);
    return n;
fail:
    while (n-- > 0) { free((*tasks)[n].context); free((*tasks)[n].question); free((*tasks)[n].answer); }
    free(*tasks);
    *tasks = NULL;
    free(text);
    return -1;
}

/* One budget key of RESULT.json: "1.0" for the full cache. */
static void write_budget_key(FILE *f, const text_run *run) {
    if (run->full) fprintf(f, "\"1.0\": ");
    else fprintf(f, "\"%g\": ", run->fraction);
}

/* The answer's first occurrence in the prompt's prefix: its ids encoded
   alone, else with a leading space. Returns the first position (*count gets
   the number of ids), or -1 when neither is there. */
static int64_t find_answer(const text_model *m, const text_prompt *prompt, const char *answer, int64_t *count) {
    char spaced[300];
    int variant;
    snprintf(spaced, sizeof spaced, " %s", answer);
    for (variant = 0; variant < 2; variant++) {
        const char *text = variant ? spaced : answer;
        int32_t *ids = NULL;
        char error[160];
        int64_t n = text_encode(m, text, strlen(text), &ids, error, sizeof error), at, j;
        for (at = 0; n > 0 && at + n <= prompt->n_prefix; at++) {
            for (j = 0; j < n && prompt->prefix[at + j] == ids[j]; j++) {}
            if (j == n) { free(ids); *count = n; return at; }
        }
        free(ids);
    }
    return -1;
}

int quality_task_file(int argc, char **argv) {
    const char *model_path = NULL, *tasks_path = NULL, *out_path = NULL, *policies = NULL, *budgets = NULL, *scorer_path = NULL;
    char settings_list[64] = "agnostic,aware", error[512], reply[MAX_REPLY], *name;
    int settings[TEXT_MAX_SETTINGS] = {0, 0, 0}, n_runs, i, s, r, k, quick = 0, trace = 0, per_sample = 0, l;
    static double answer_kept[TEXT_MAX_RUNS][TEXT_MAX_SETTINGS][MAX_LAYERS]; /* --trace-answer: sums over samples */
    int traced[TEXT_MAX_SETTINGS] = {0, 0, 0};                              /* samples where the answer was found */
    unsigned char *kept_mark = NULL;                                         /* [prefix] */
    int64_t max_tokens = 32, limit = 0, skip = 0, per_task = 0, n_read, n_tasks, t, done = 0, to_do;
    task *tasks = NULL;
    task_kinds kinds;
    static text_run runs[TEXT_MAX_RUNS];
    static int correct_by_kind[TEXT_MAX_RUNS][TEXT_MAX_SETTINGS][MAX_KINDS];
    int samples_by_kind[MAX_KINDS], seen_by_kind[MAX_KINDS];
    char *use = NULL;            /* [n_tasks] whether --quick keeps the sample */
    text_model m;
    llm_cache base, work;
    int64_t capacity = 0;
    float *base_logits, *logits;
    text_scores given; /* the kvzip and expected rows' scores, one computation per prompt */
    double started = text_seconds(), evict_seconds, prefill_seconds = 0;
    int sources = 0;
    FILE *f;

    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--quick")) { quick = 1; continue; }
        if (!strcmp(argv[i], "--trace-answer")) { trace = 1; continue; }
        if (!strcmp(argv[i], "--per-sample")) { per_sample = 1; continue; }
        if (!value) { usage(); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--tasks")) tasks_path = value;
        else if (!strcmp(argv[i], "--out")) out_path = value;
        else if (!strcmp(argv[i], "--policies")) policies = value;
        else if (!strcmp(argv[i], "--budgets")) budgets = value;
        else if (!strcmp(argv[i], "--settings")) snprintf(settings_list, sizeof settings_list, "%s", value);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atoll(value);
        else if (!strcmp(argv[i], "--limit")) limit = atoll(value);
        else if (!strcmp(argv[i], "--skip")) skip = atoll(value);
        else if (!strcmp(argv[i], "--per-task")) per_task = atoll(value);
        else if (!strcmp(argv[i], "--scorer")) scorer_path = value;
        else { usage(); return 2; }
        i++;
    }
    if (!model_path || !tasks_path) { fprintf(stderr, "quality: --model FILE.gguf and --tasks FILE are both needed\n"); return 2; }
    if (max_tokens < 1 || max_tokens > 256 || limit < 0 || skip < 0 || per_task < 0) {
        fprintf(stderr, "quality: --max-tokens 1..256, --limit >= 0, --skip >= 0, --per-task >= 0\n");
        return 2;
    }
    if (quick && !per_task) per_task = 2;
    for (name = strtok(settings_list, ","); name; name = strtok(NULL, ",")) {
        for (s = 0; s < TEXT_MAX_SETTINGS && strcmp(name, SETTING_NAMES[s]); s++) {}
        if (s == TEXT_MAX_SETTINGS) { fprintf(stderr, "quality: unknown setting '%s' (agnostic, aware, both)\n", name); return 2; }
        settings[s] = 1;
    }
    if (!policies) policies = quick ? "full,kvec,snapkv,keydiff,streaming" : "full,snapkv,kvec";
    if (!budgets) budgets = quick ? "0.5" : "0.25,0.5";
    if ((n_runs = text_parse_runs(policies, budgets, runs, TEXT_MAX_RUNS)) < 0) return 2;
    for (r = 0; r < n_runs; r++) sources |= runs[r].sources;
    memset(&given, 0, sizeof given);

    memset(&kinds, 0, sizeof kinds);
    memset(correct_by_kind, 0, sizeof correct_by_kind);
    memset(samples_by_kind, 0, sizeof samples_by_kind);
    memset(seen_by_kind, 0, sizeof seen_by_kind);
    if ((n_read = read_tasks(tasks_path, &tasks, &kinds, error, sizeof error)) < 0) { fprintf(stderr, "quality: %s\n", error); return 1; }
    n_tasks = limit && limit < n_read ? limit : n_read;
    if (!(use = (char *)calloc((size_t)n_tasks, 1))) { fprintf(stderr, "quality: out of memory\n"); return 1; }
    for (t = 0, to_do = 0; t < n_tasks; t++) { /* --per-task: the first N samples of each kind */
        use[t] = !per_task || seen_by_kind[tasks[t].kind] < per_task;
        seen_by_kind[tasks[t].kind] += use[t];
        if (t < skip) use[t] = 0; /* chosen as without --skip, then left out */
        samples_by_kind[tasks[t].kind] += use[t];
        to_do += use[t];
    }
    if (!to_do) { fprintf(stderr, "quality: no samples left to run (--limit, --skip, --per-task)\n"); return 2; }
    if (text_model_load(&m, model_path, error, sizeof error)) { fprintf(stderr, "quality: %s\n", error); return 1; }
    if (scorer_path) snprintf(m.scorer_path, sizeof m.scorer_path, "%s", scorer_path);
    if (m.model.config.n_layers > MAX_LAYERS) { fprintf(stderr, "quality: more than %d layers\n", MAX_LAYERS); return 1; }
    if (!(base_logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float))) ||
        !(logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float)))) {
        fprintf(stderr, "quality: out of memory\n");
        return 1;
    }
    printf("kvec quality on a task file: %s, %lld samples of %s%s; %d rows; greedy, at most %lld new tokens\n",
           m.name, (long long)to_do, tasks_path, quick ? " (--quick)" : "", n_runs, (long long)max_tokens);
    memset(&base, 0, sizeof base);
    memset(&work, 0, sizeof work);

    for (t = 0; t < n_tasks; t++) {
        if (!use[t]) continue;
        for (s = 0; s < TEXT_MAX_SETTINGS; s++) {
            text_prompt prompt;
            int64_t need;
            char *instruction = NULL;
            if (!settings[s]) continue;
            if (s == 2) { /* both: the question before the context too */
                size_t bytes = strlen(TEXT_INSTRUCTION) + strlen(tasks[t].question) + 16;
                if (!(instruction = (char *)malloc(bytes))) { fprintf(stderr, "quality: out of memory\n"); return 1; }
                snprintf(instruction, bytes, "%sQuestion: %s\n\n", TEXT_INSTRUCTION, tasks[t].question);
            }
            if (text_question_prompt(&m, instruction ? instruction : TEXT_INSTRUCTION, tasks[t].context,
                                     strlen(tasks[t].context), tasks[t].question, s == 1, 0, &prompt, error,
                                     sizeof error)) {
                fprintf(stderr, "quality: sample %lld: %s\n", (long long)t + 1, error);
                return 1;
            }
            free(instruction);
            need = prompt.n_prefix + prompt.n_suffix + max_tokens + 1;
            if (text_scores_positions(sources, prompt.n_prefix) > need) need = text_scores_positions(sources, prompt.n_prefix);
            if (m.model.config.context_length && need > m.model.config.context_length) {
                fprintf(stderr, "quality: sample %lld needs %lld positions, past %s's context of %lld\n", (long long)t + 1,
                        (long long)need, m.name, (long long)m.model.config.context_length);
                return 1;
            }
            if (need > capacity) { /* the caches grow to the longest sample */
                llm_cache_free(&base);
                llm_cache_free(&work);
                capacity = need;
                if (llm_cache_init(&base, &m.model, capacity) || llm_cache_init(&work, &m.model, capacity)) {
                    fprintf(stderr, "quality: out of memory for a cache of %lld positions\n", (long long)capacity);
                    return 1;
                }
                if (text_scores_prepare(&m, &base, sources, error, sizeof error)) {
                    fprintf(stderr, "quality: %s\n", error);
                    return 1;
                }
            }
            llm_cache_reset(&base);
            base.learned_seconds = 0.0; /* the scorer's time in this prefill alone */
            prefill_seconds -= text_seconds();
            if (text_prefill(&m, &base, prompt.prefix, prompt.n_prefix, base_logits, NULL)) {
                fprintf(stderr, "quality: sample %lld: prefill failed\n", (long long)t + 1);
                return 1;
            }
            prefill_seconds += text_seconds();
            if (sources && text_scores_compute(&m, &base, prompt.prefix, prompt.n_prefix, sources, &given, error,
                                               sizeof error)) { /* once per prompt, for every budget */
                fprintf(stderr, "quality: sample %lld: %s\n", (long long)t + 1, error);
                return 1;
            }
            if (trace) { /* which layers keep the answer, no decoding */
                int64_t answer_tokens = 0, at = find_answer(&m, &prompt, tasks[t].answer, &answer_tokens);
                if (at >= 0) {
                    traced[s]++;
                    free(kept_mark);
                    if (!(kept_mark = (unsigned char *)malloc((size_t)prompt.n_prefix))) { fprintf(stderr, "quality: out of memory\n"); return 1; }
                }
                for (r = 0; r < n_runs && at >= 0; r++) {
                    kvec_plan plan;
                    kvec_result status;
                    int64_t h, j;
                    if (runs[r].full) { for (l = 0; l < m.model.config.n_layers; l++) answer_kept[r][s][l] += 1; continue; }
                    llm_cache_copy(&work, &base);
                    status = runs[r].sources
                                 ? llm_evict_scores(&work, &runs[r].config, (int64_t)(runs[r].fraction * (double)prompt.n_prefix),
                                                    text_scores_of(&given, runs[r].policy), &plan)
                                 : llm_evict(&work, &runs[r].config, (int64_t)(runs[r].fraction * (double)prompt.n_prefix), &plan);
                    if (status != KVEC_OK) { fprintf(stderr, "quality: kvec: %s\n", kvec_result_string(status)); return 1; }
                    for (l = 0; l < plan.n_layers; l++) {
                        int heads = 0;
                        for (h = 0; h < plan.n_kv_heads; h++) {
                            const int64_t *kept = plan.kept_positions + (l * plan.n_kv_heads + h) * plan.capacity;
                            int all = 1;
                            memset(kept_mark, 0, (size_t)prompt.n_prefix);
                            for (j = 0; j < plan.kept_count[l * plan.n_kv_heads + h]; j++) kept_mark[kept[j]] = 1;
                            for (j = at; j < at + answer_tokens; j++) all &= kept_mark[j];
                            heads += all;
                        }
                        answer_kept[r][s][l] += (double)heads / (double)plan.n_kv_heads;
                    }
                }
                text_prompt_free(&prompt);
                continue;
            }
            for (r = 0; r < n_runs; r++) {
                int right;
                if (text_answer(&m, &base, base_logits, &work, logits, runs[r].full ? NULL : &runs[r].config,
                                text_scores_of(&given, runs[r].policy), runs[r].fraction, prompt.suffix, prompt.n_suffix, max_tokens, reply, sizeof reply,
                                &evict_seconds, error, sizeof error)) {
                    fprintf(stderr, "quality: sample %lld, %s at %g: %s\n", (long long)t + 1, runs[r].policy,
                            runs[r].fraction, error);
                    return 1;
                }
                right = text_contains(reply, tasks[t].answer);
                runs[r].correct[s] += right;
                /* --per-sample: one line per answer, for paired differences */
                if (per_sample)
                    printf("per-sample %lld %s %s %g %d\n", (long long)t + 1, SETTING_NAMES[s], runs[r].policy,
                           runs[r].fraction, right);
                correct_by_kind[r][s][tasks[t].kind] += right;
            }
            text_prompt_free(&prompt);
        }
        done++;
        /* a run stopped early keeps the per-sample lines of every finished sample */
        if (per_sample) fflush(stdout);
        {
            double elapsed = text_seconds() - started;
            fprintf(stderr, "\rsample %lld/%lld, %.0f s, about %.0f s left ", (long long)done, (long long)to_do, elapsed,
                    elapsed / (double)done * (double)(to_do - done));
            fflush(stderr);
        }
    }
    fprintf(stderr, "\n");

    if (trace) { /* per row and setting: the fraction of KV heads keeping the answer, per layer */
        const int L = m.model.config.n_layers;
        printf("\nwhich layers keep every token of the answer: the fraction of KV heads, per layer (0 = none .. 9 = all),"
               "\nand its mean over layers; samples where the answer was found:");
        for (s = 0; s < TEXT_MAX_SETTINGS; s++) if (settings[s]) printf(" %s %d", SETTING_NAMES[s], traced[s]);
        printf("\n");
        for (s = 0; s < TEXT_MAX_SETTINGS; s++) {
            if (!settings[s] || !traced[s]) continue;
            printf("\n%s\n%-14s %7s  %-*s  mean\n", SETTING_NAMES[s], "policy", "budget", L, "layers 0..");
            for (r = 0; r < n_runs; r++) {
                double mean = 0;
                printf("%-14s %6.0f%%  ", runs[r].policy, 100 * runs[r].fraction);
                for (l = 0; l < L; l++) {
                    double fraction = answer_kept[r][s][l] / traced[s];
                    mean += fraction / L;
                    printf("%d", (int)floor(9 * fraction + 0.5));
                }
                printf("  %.2f\n", mean);
            }
        }
        if (out_path) {
            if (!(f = fopen(out_path, "w"))) { fprintf(stderr, "quality: cannot write %s\n", out_path); return 1; }
            fprintf(f, "{\n  \"model\": ");
            text_write_json_string(f, m.name);
            fprintf(f, ",\n  \"tasks\": ");
            text_write_json_string(f, tasks_path);
            fprintf(f, ",\n  \"samples\": %lld,\n  \"traced\": {", (long long)to_do);
            for (s = 0, i = 0; s < TEXT_MAX_SETTINGS; s++)
                if (settings[s]) fprintf(f, "%s\"%s\": %d", i++ ? ", " : "", SETTING_NAMES[s], traced[s]);
            fprintf(f, "},\n  \"answer_kept\": [");
            for (r = 0; r < n_runs; r++)
                for (s = 0; s < TEXT_MAX_SETTINGS; s++) {
                    if (!settings[s] || !traced[s]) continue;
                    fprintf(f, "%s\n    {\"policy\": \"%s\", \"budget\": %g, \"setting\": \"%s\", \"by_layer\": [",
                            r || s ? "," : "", runs[r].policy, runs[r].fraction, SETTING_NAMES[s]);
                    for (l = 0; l < L; l++) fprintf(f, "%s%.4f", l ? ", " : "", answer_kept[r][s][l] / traced[s]);
                    fprintf(f, "]}");
                }
            fprintf(f, "\n  ],\n  \"wall_seconds\": %.1f\n}\n", text_seconds() - started);
            fclose(f);
            printf("results in %s\n", out_path);
        }
        printf("\nwall time %.1f s\n", text_seconds() - started);
        goto done; /* --trace-answer prints no accuracy table */
    }
    /* The table: accuracy +- standard error per row and setting. */
    printf("\n%-14s %7s", "policy", "budget");
    for (s = 0; s < TEXT_MAX_SETTINGS; s++) if (settings[s]) printf("   %-16s", SETTING_NAMES[s]);
    printf("\n");
    for (r = 0; r < n_runs; r++) {
        printf("%-14s %6.0f%%", runs[r].policy, 100 * runs[r].fraction);
        for (s = 0; s < TEXT_MAX_SETTINGS; s++) {
            double p = (double)runs[r].correct[s] / (double)to_do;
            if (settings[s]) printf("   %.2f +- %.2f    ", p, sqrt(p * (1 - p) / (double)to_do));
        }
        printf("\n");
    }
    if (kinds.count > 1) { /* per task: correct / samples, settings separated by '/' */
        printf("\nper task, correct of n (");
        for (s = 0, i = 0; s < TEXT_MAX_SETTINGS; s++) if (settings[s]) printf("%s%s", i++ ? " / " : "", SETTING_NAMES[s]);
        printf(")\n%-14s %7s", "policy", "budget");
        for (k = 0; k < kinds.count; k++) printf(" %12.12s", kinds.name[k]);
        printf("\n%-14s %7s", "", "n");
        for (k = 0; k < kinds.count; k++) printf(" %12d", samples_by_kind[k]);
        printf("\n");
        for (r = 0; r < n_runs; r++) {
            printf("%-14s %6.0f%%", runs[r].policy, 100 * runs[r].fraction);
            for (k = 0; k < kinds.count; k++) {
                char cell[64];
                int at = 0;
                for (s = 0, i = 0; s < TEXT_MAX_SETTINGS; s++)
                    if (settings[s]) at += snprintf(cell + at, sizeof cell - (size_t)at, "%s%d", i++ ? "/" : "", correct_by_kind[r][s][k]);
                printf(" %12s", cell);
            }
            printf("\n");
        }
    }
    printf("\n%lld samples, wall time %.1f s, CPU time %.1f s (all threads); +- is the standard error sqrt(p(1-p)/n)\n",
           (long long)to_do, text_seconds() - started, (double)clock() / CLOCKS_PER_SEC);
    if (sources & TEXT_SCORES_PASS)
        printf("prefill %.1f s in all; the reconstruction passes (kvzip's scores, one per prompt) %.1f s more, %.2fx the prefill\n",
               prefill_seconds, given.pass_seconds, given.pass_seconds / prefill_seconds);
    if (sources & TEXT_SCORES_EXPECTED)
        printf("expected attention (statistics and scores, once per prompt) %.1f s, %.3fx the prefill\n",
               given.expected_seconds, given.expected_seconds / prefill_seconds);
    if (sources & TEXT_SCORES_LEARNED)
        printf("the learned scorer (%s, inside the prefills, counted in them) %.2f s, %.4fx the prefill\n",
               m.scorer.model_name, given.learned_seconds, given.learned_seconds / prefill_seconds);

    if (out_path) {
        static const char *const TABLES[3] = {"results", "stderr", "correct"};
        if (!(f = fopen(out_path, "w"))) { fprintf(stderr, "quality: cannot write %s\n", out_path); return 1; }
        fprintf(f, "{\n  \"model\": ");
        text_write_json_string(f, m.name);
        fprintf(f, ",\n  \"tasks\": ");
        text_write_json_string(f, tasks_path);
        fprintf(f, ",\n  \"samples\": %lld,\n  \"quick\": %s,\n  \"max_new_tokens\": %lld,\n", (long long)to_do,
                quick ? "true" : "false", (long long)max_tokens);
        for (k = 0; k < 3 + kinds.count; k++) {
            int first_policy = 1, kind = k - 3;
            if (k == 3) fprintf(f, "  \"per_task\": {\n");
            if (kind >= 0) {
                fprintf(f, "    ");
                text_write_json_string(f, kinds.name[kind]);
                fprintf(f, ": {\"samples\": %d, \"correct\": {", samples_by_kind[kind]);
            } else {
                fprintf(f, "  \"%s\": {", TABLES[k]);
            }
            for (r = 0; r < n_runs; r++) {
                int p, first_setting = 1;
                if (r && !strcmp(runs[r - 1].policy, runs[r].policy)) continue; /* written with its first row */
                fprintf(f, "%s%s\"%s\": {", first_policy ? "" : ",", kind >= 0 ? " " : "\n    ", runs[r].policy);
                first_policy = 0;
                for (s = 0; s < TEXT_MAX_SETTINGS; s++) {
                    if (!settings[s]) continue;
                    fprintf(f, "%s\"%s\": {", first_setting ? "" : ", ", SETTING_NAMES[s]);
                    first_setting = 0;
                    for (p = r; p < n_runs && !strcmp(runs[p].policy, runs[r].policy); p++) {
                        double acc = (double)runs[p].correct[s] / (double)to_do;
                        fprintf(f, p > r ? ", " : "");
                        write_budget_key(f, &runs[p]);
                        if (kind >= 0) fprintf(f, "%d", correct_by_kind[p][s][kind]);
                        else if (k == 0) fprintf(f, "%.4f", acc);
                        else if (k == 1) fprintf(f, "%.4f", sqrt(acc * (1 - acc) / (double)to_do));
                        else fprintf(f, "%d", runs[p].correct[s]);
                    }
                    fprintf(f, "}");
                }
                fprintf(f, "}");
            }
            if (kind >= 0) fprintf(f, "}}%s\n", kind + 1 < kinds.count ? "," : "\n  },");
            else fprintf(f, "\n  },\n");
        }
        fprintf(f, "  \"prefill_seconds\": %.2f,\n  \"pass_seconds\": %.2f,\n  \"expected_seconds\": %.2f,\n"
                   "  \"learned_seconds\": %.3f,\n",
                prefill_seconds, given.pass_seconds, given.expected_seconds, given.learned_seconds);
        fprintf(f, "  \"wall_seconds\": %.1f,\n  \"cpu_seconds\": %.1f\n}\n", text_seconds() - started,
                (double)clock() / CLOCKS_PER_SEC);
        fclose(f);
        printf("results in %s\n", out_path);
    }
done:
    llm_cache_free(&base);
    llm_cache_free(&work);
    text_model_free(&m);
    for (t = 0; t < n_read; t++) { free(tasks[t].context); free(tasks[t].question); free(tasks[t].answer); }
    free(tasks);
    free(use);
    free(base_logits);
    free(logits);
    free(kept_mark);
    text_scores_free(&given);
    return 0;
}
