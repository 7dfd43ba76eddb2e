/* quality_tasks.c - build/quality on your own documents: a GGUF model
   answers the questions of a task file from compressed caches.

   build/quality --model FILE.gguf --tasks FILE [--policies full,snapkv,kvec]
                 [--budgets 0.25,0.5] [--settings agnostic,aware]
                 [--max-tokens 32] [--limit N] [--out RESULT.json]

   The task file holds one JSON object per line:

       {"context": "...", "question": "...", "answer": "..."}

   Each sample becomes one chat turn: an instruction, the context, then
   "Question: ..." (TEXT_INSTRUCTION, session.h). Question-agnostic: the
   context is prefilled and compressed before the question is read;
   question-aware: context and question are prefilled together, then
   compressed. Each policy keeps floor(f * prefix) rows per KV head (window
   of 32 included) for each budget f; `full` is the uncompressed cache. A
   sample is correct when the greedy answer (at most --max-tokens new
   tokens) contains `answer`, ignoring ASCII case.

   RESULT.json has the shape of the synthetic benchmark's:

       {"model": .., "tasks": .., "samples": n, "max_new_tokens": ..,
        "results": {policy: {"agnostic" | "aware": {budget: accuracy}}},
        "stderr":  {policy: {setting: {budget: standard error}}},
        "correct": {policy: {setting: {budget: correct samples}}},
        "wall_seconds": ..}

   with `full` at budget "1.0" and the standard error sqrt(p (1 - p) / n). */
#include "../examples/engine/json.h"
#include "../examples/engine/session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { MAX_RUNS = 64, MAX_REPLY = 1024 };

static const char *const SETTING_NAMES[2] = {"agnostic", "aware"};

typedef struct task {
    char *context, *question, *answer;
} task;

/* One row: a policy at one budget (or the full cache). */
typedef struct task_run {
    char        policy[32];
    kvec_config config;
    int         full;
    double      fraction;
    int         correct[2];    /* by setting */
} task_run;

static void usage(void) {
    fprintf(stderr,
            "usage: quality --model FILE.gguf --tasks FILE [--policies full,snapkv,kvec] [--budgets 0.25,0.5]\n"
            "               [--settings agnostic,aware] [--max-tokens N] [--limit N] [--out RESULT.json]\n"
            "policies: full %s\n",
            TEXT_POLICY_NAMES);
}

/* Reads the JSON-lines task file into tasks (grown with realloc); returns
   the count, or -1 with a message naming the line. */
static int64_t read_tasks(const char *path, task **tasks, char *error, size_t error_size) {
    size_t length, at = 0;
    char *text = json_read_file(path, &length);
    int64_t n = 0, capacity = 0, line = 0;
    if (!text) return gguf_error(error, error_size, "cannot read the task file %s", path);
    *tasks = NULL;
    while (at < length) {
        size_t end = at;
        json_value *v;
        const json_value *fields[3];
        char json_error[160];
        int f;
        while (end < length && text[end] != '\n') end++;
        line++;
        v = json_parse(text + at, end - at, json_error, sizeof json_error);
        if (!v && strspn(text + at, " \t\r") >= end - at) { at = end + 1; continue; } /* a blank line */
        if (!v) {
            gguf_error(error, error_size, "%s:%lld: %s", path, (long long)line, json_error);
            goto fail;
        }
        fields[0] = json_get(v, "context"), fields[1] = json_get(v, "question"), fields[2] = json_get(v, "answer");
        for (f = 0; f < 3; f++)
            if (!fields[f] || fields[f]->type != JSON_STRING || (f == 2 && !fields[f]->string[0]) ||
                strlen(fields[f]->string) != fields[f]->length) {
                gguf_error(error, error_size, "%s:%lld: needs string fields \"context\", \"question\" and a non-empty \"answer\", without \\u0000",
                           path, (long long)line);
                json_free(v);
                goto fail;
            }
        if (n == capacity) {
            task *grown = (task *)realloc(*tasks, (size_t)(capacity = capacity ? 2 * capacity : 16) * sizeof(task));
            if (!grown) { json_free(v); gguf_error(error, error_size, "out of memory"); goto fail; }
            *tasks = grown;
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
        at = end + 1;
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

/* A JSON string: quotes, backslashes and control characters escaped. */
static void write_json_string(FILE *f, const char *text) {
    fputc('"', f);
    for (; *text; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

int quality_task_file(int argc, char **argv) {
    const char *model_path = NULL, *tasks_path = NULL, *out_path = NULL;
    char policies[512] = "full,snapkv,kvec", budgets[256] = "0.25,0.5", settings_list[64] = "agnostic,aware";
    char error[512], reply[MAX_REPLY], *name;
    int settings[2] = {0, 0}, n_runs = 0, i, s, r, n_policies = 0;
    int64_t max_tokens = 32, limit = 0, n_read, n_tasks, t;
    task *tasks = NULL;
    static task_run runs[MAX_RUNS];
    text_model m;
    llm_cache base, work;
    int64_t capacity = 0;
    float *base_logits, *logits;
    double started = text_seconds(), evict_seconds;
    FILE *f;

    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) { usage(); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--tasks")) tasks_path = value;
        else if (!strcmp(argv[i], "--out")) out_path = value;
        else if (!strcmp(argv[i], "--policies")) snprintf(policies, sizeof policies, "%s", value);
        else if (!strcmp(argv[i], "--budgets")) snprintf(budgets, sizeof budgets, "%s", value);
        else if (!strcmp(argv[i], "--settings")) snprintf(settings_list, sizeof settings_list, "%s", value);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atoll(value);
        else if (!strcmp(argv[i], "--limit")) limit = atoll(value);
        else { usage(); return 2; }
        i++;
    }
    if (!model_path || !tasks_path) { fprintf(stderr, "quality: --model FILE.gguf and --tasks FILE are both needed\n"); return 2; }
    if (max_tokens < 1 || max_tokens > 256 || limit < 0) { fprintf(stderr, "quality: --max-tokens 1..256, --limit >= 0\n"); return 2; }
    for (name = strtok(settings_list, ","); name; name = strtok(NULL, ",")) {
        if (!strcmp(name, "agnostic")) settings[0] = 1;
        else if (!strcmp(name, "aware")) settings[1] = 1;
        else { fprintf(stderr, "quality: unknown setting '%s' (agnostic, aware)\n", name); return 2; }
    }

    /* The rows: each policy at each budget; `full` once. */
    for (name = strtok(policies, ","); name; name = strtok(NULL, ",")) {
        const char *cut = budgets;
        task_run probe;
        memset(&probe, 0, sizeof probe);
        snprintf(probe.policy, sizeof probe.policy, "%s", name);
        if (!strcmp(name, "full")) {
            probe.full = 1;
            probe.fraction = 1;
            if (n_runs == MAX_RUNS) { fprintf(stderr, "quality: too many policy-budget pairs\n"); return 2; }
            runs[n_runs++] = probe;
            n_policies++;
            continue;
        }
        if (text_policy(name, &probe.config)) {
            fprintf(stderr, "quality: unknown policy '%s' (full %s)\n", name, TEXT_POLICY_NAMES);
            return 2;
        }
        while (*cut) {
            char *end;
            double fraction = strtod(cut, &end);
            if (end == cut || !(fraction > 0 && fraction < 1) || (*end && *end != ',')) {
                fprintf(stderr, "quality: budgets must be fractions in (0, 1), comma-separated: %s\n", budgets);
                return 2;
            }
            if (n_runs == MAX_RUNS) { fprintf(stderr, "quality: too many policy-budget pairs\n"); return 2; }
            probe.fraction = fraction;
            runs[n_runs++] = probe;
            cut = *end ? end + 1 : end;
        }
        n_policies++;
    }
    if (!n_runs) { usage(); return 2; }

    if ((n_read = read_tasks(tasks_path, &tasks, error, sizeof error)) < 0) { fprintf(stderr, "quality: %s\n", error); return 1; }
    n_tasks = limit && limit < n_read ? limit : n_read;
    if (text_model_load(&m, model_path, error, sizeof error)) { fprintf(stderr, "quality: %s\n", error); return 1; }
    if (!(base_logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float))) ||
        !(logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float)))) {
        fprintf(stderr, "quality: out of memory\n");
        return 1;
    }
    printf("kvec quality on a task file: %s, %lld samples of %s; %d policies; greedy, at most %lld new tokens\n",
           m.name, (long long)n_tasks, tasks_path, n_policies, (long long)max_tokens);
    memset(&base, 0, sizeof base);
    memset(&work, 0, sizeof work);

    for (t = 0; t < n_tasks; t++) {
        for (s = 0; s < 2; s++) {
            text_prompt prompt;
            int64_t need;
            if (!settings[s]) continue;
            if (text_question_prompt(&m, TEXT_INSTRUCTION, tasks[t].context, strlen(tasks[t].context),
                                     tasks[t].question, s == 1, 0, &prompt, error, sizeof error)) {
                fprintf(stderr, "quality: sample %lld: %s\n", (long long)t + 1, error);
                return 1;
            }
            need = prompt.n_prefix + prompt.n_suffix + max_tokens + 1;
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
            }
            llm_cache_reset(&base);
            if (text_prefill(&m, &base, prompt.prefix, prompt.n_prefix, base_logits, NULL)) {
                fprintf(stderr, "quality: sample %lld: prefill failed\n", (long long)t + 1);
                return 1;
            }
            for (r = 0; r < n_runs; r++) {
                if (text_answer(&m, &base, base_logits, &work, logits, runs[r].full ? NULL : &runs[r].config,
                                runs[r].fraction, prompt.suffix, prompt.n_suffix, max_tokens, reply, sizeof reply,
                                &evict_seconds, error, sizeof error)) {
                    fprintf(stderr, "quality: sample %lld, %s at %g: %s\n", (long long)t + 1, runs[r].policy,
                            runs[r].fraction, error);
                    return 1;
                }
                runs[r].correct[s] += text_contains(reply, tasks[t].answer);
            }
            text_prompt_free(&prompt);
        }
        fprintf(stderr, "\rsample %lld/%lld, %.0f s", (long long)t + 1, (long long)n_tasks, text_seconds() - started);
        fflush(stderr);
    }
    fprintf(stderr, "\n");

    /* The table: accuracy +- standard error per row and setting. */
    printf("\n%-14s %7s", "policy", "budget");
    for (s = 0; s < 2; s++) if (settings[s]) printf("   %-16s", SETTING_NAMES[s]);
    printf("\n");
    for (r = 0; r < n_runs; r++) {
        printf("%-14s %6.0f%%", runs[r].policy, 100 * runs[r].fraction);
        for (s = 0; s < 2; s++) {
            double p = (double)runs[r].correct[s] / (double)n_tasks;
            if (settings[s]) printf("   %.2f +- %.2f    ", p, sqrt(p * (1 - p) / (double)n_tasks));
        }
        printf("\n");
    }
    printf("\n%lld samples, wall time %.1f s; +- is the standard error sqrt(p(1-p)/n)\n", (long long)n_tasks,
           text_seconds() - started);

    if (out_path) {
        static const char *const TABLES[3] = {"results", "stderr", "correct"};
        int k;
        if (!(f = fopen(out_path, "w"))) { fprintf(stderr, "quality: cannot write %s\n", out_path); return 1; }
        fprintf(f, "{\n  \"model\": ");
        write_json_string(f, m.name);
        fprintf(f, ",\n  \"tasks\": ");
        write_json_string(f, tasks_path);
        fprintf(f, ",\n  \"samples\": %lld,\n  \"max_new_tokens\": %lld,\n", (long long)n_tasks, (long long)max_tokens);
        for (k = 0; k < 3; k++) {
            int first_policy = 1;
            fprintf(f, "  \"%s\": {", TABLES[k]);
            for (r = 0; r < n_runs; r++) {
                int p, first_setting = 1;
                if (r && !strcmp(runs[r - 1].policy, runs[r].policy)) continue; /* written with its first row */
                fprintf(f, "%s\n    \"%s\": {", first_policy ? "" : ",", runs[r].policy);
                first_policy = 0;
                for (s = 0; s < 2; s++) {
                    if (!settings[s]) continue;
                    fprintf(f, "%s\"%s\": {", first_setting ? "" : ", ", SETTING_NAMES[s]);
                    first_setting = 0;
                    for (p = r; p < n_runs && !strcmp(runs[p].policy, runs[r].policy); p++) {
                        double acc = (double)runs[p].correct[s] / (double)n_tasks;
                        fprintf(f, p > r ? ", " : "");
                        if (runs[p].full) fprintf(f, "\"1.0\": ");
                        else fprintf(f, "\"%g\": ", runs[p].fraction);
                        if (k == 0) fprintf(f, "%.4f", acc);
                        else if (k == 1) fprintf(f, "%.4f", sqrt(acc * (1 - acc) / (double)n_tasks));
                        else fprintf(f, "%d", runs[p].correct[s]);
                    }
                    fprintf(f, "}");
                }
                fprintf(f, "}");
            }
            fprintf(f, "\n  },\n");
        }
        fprintf(f, "  \"wall_seconds\": %.1f\n}\n", text_seconds() - started);
        fclose(f);
        printf("results in %s\n", out_path);
    }
    llm_cache_free(&base);
    llm_cache_free(&work);
    text_model_free(&m);
    for (t = 0; t < n_read; t++) { free(tasks[t].context); free(tasks[t].question); free(tasks[t].answer); }
    free(tasks);
    free(base_logits);
    free(logits);
    return 0;
}
