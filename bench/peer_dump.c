/* peer_dump.c - what bench/peer_kvpress.py checks against the C engine: the
   token ids of every prompt, and the positions a policy keeps.

   build/peer_dump --model FILE.gguf --tasks FILE --ids
       One JSON line per sample: {"sample": i, "agnostic": {"prefix": [..],
       "suffix": [..]}, "aware": {...}}, the ids build/quality --tasks feeds
       (text_question_prompt with TEXT_INSTRUCTION, inside the chat template).
   build/peer_dump --model FILE.gguf --texts FILE --ids
       One JSON line per line {"text": ..} of FILE: {"sample": i, "ids": [..]},
       the text encoded raw (special tokens parsed, no BOS, no template).
   build/peer_dump --model FILE.gguf --tasks FILE --sample I --setting agnostic|aware
                   --policy NAME --budget F --kept OUT.json
       Prefills sample I (0-based) in that setting, compresses it with the
       policy to floor(F * prefix) rows per KV head as build/quality does (the
       policies with scores from elsewhere, kvzip and expected, included), and
       writes {"policy", "budget", "n_prefix", "n_layers", "n_kv_heads",
       "kept": [layer][kv head][positions, ascending]} to OUT.json. */
#include "../examples/engine/json.h"
#include "../examples/engine/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "peer_dump: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* The JSON object on line `index` (0-based, blank lines skipped) of a
   JSON-lines file; NULL with a message when there is none or it is bad. */
static json_value *read_line(const char *text, size_t length, int64_t index, char *error, size_t error_size) {
    json_lines lines;
    json_value *v;
    char parse_error[160];
    int64_t seen = 0;
    int got;
    json_lines_init(&lines, text, length);
    while ((got = json_lines_next(&lines, &v, parse_error, sizeof parse_error)) > 0) {
        if (seen++ == index) return v;
        json_free(v);
    }
    if (got < 0) snprintf(error, error_size, "line %lld: %s", lines.line, parse_error);
    else snprintf(error, error_size, "no line %lld", (long long)index);
    return NULL;
}

static void print_ids(const int32_t *ids, int64_t n) {
    int64_t i;
    putchar('[');
    for (i = 0; i < n; i++) printf(i ? ",%d" : "%d", ids[i]);
    putchar(']');
}

/* A string field of a line, or NULL with a message. */
static const char *field(const json_value *line, const char *name, char *error, size_t error_size) {
    const json_value *v = json_get(line, name);
    if (!v || v->type != JSON_STRING || strlen(v->string) != v->length) {
        snprintf(error, error_size, "needs a string field \"%s\" without \\u0000", name);
        return NULL;
    }
    return v->string;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *tasks_path = NULL, *texts_path = NULL, *kept_path = NULL;
    const char *policy = NULL, *setting = NULL;
    char error[512], *text;
    double budget = 0;
    int64_t sample = -1, i;
    int ids_mode = 0;
    size_t length;
    text_model m;

    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--ids")) { ids_mode = 1; continue; }
        if (!value) return fail("a flag needs a value", argv[i]);
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--tasks")) tasks_path = value;
        else if (!strcmp(argv[i], "--texts")) texts_path = value;
        else if (!strcmp(argv[i], "--kept")) kept_path = value;
        else if (!strcmp(argv[i], "--policy")) policy = value;
        else if (!strcmp(argv[i], "--setting")) setting = value;
        else if (!strcmp(argv[i], "--sample")) sample = atoll(value);
        else if (!strcmp(argv[i], "--budget")) budget = atof(value);
        else return fail("unknown flag", argv[i]);
        i++;
    }
    if (!model_path || !!tasks_path == !!texts_path || ids_mode == !!kept_path)
        return fail("usage: --model F.gguf (--tasks F | --texts F) --ids, or --model F.gguf --tasks F --sample I "
                    "--setting agnostic|aware --policy NAME --budget F --kept OUT.json", NULL);
    if (!(text = json_read_file(tasks_path ? tasks_path : texts_path, &length)))
        return fail("cannot read", tasks_path ? tasks_path : texts_path);
    if (text_model_load(&m, model_path, error, sizeof error)) return fail(error, NULL);

    if (ids_mode) {
        int64_t n;
        for (n = 0;; n++) {
            json_value *line = read_line(text, length, n, error, sizeof error);
            int s;
            if (!line && !strncmp(error, "no line", 7)) break;
            if (!line) return fail(error, NULL);
            printf("{\"sample\": %lld", (long long)n);
            if (texts_path) {
                const char *t = field(line, "text", error, sizeof error);
                int32_t *ids;
                int64_t count;
                if (!t) return fail(error, NULL);
                if ((count = text_encode(&m, t, strlen(t), &ids, error, sizeof error)) < 0) return fail(error, NULL);
                printf(", \"ids\": ");
                print_ids(ids, count);
                free(ids);
            }
            for (s = 0; tasks_path && s < 2; s++) {
                const char *context = field(line, "context", error, sizeof error);
                const char *question = context ? field(line, "question", error, sizeof error) : NULL;
                text_prompt prompt;
                if (!question) return fail(error, NULL);
                if (text_question_prompt(&m, TEXT_INSTRUCTION, context, strlen(context), question, s, 0, &prompt,
                                         error, sizeof error))
                    return fail(error, NULL);
                printf(", \"%s\": {\"prefix\": ", s ? "aware" : "agnostic");
                print_ids(prompt.prefix, prompt.n_prefix);
                printf(", \"suffix\": ");
                print_ids(prompt.suffix, prompt.n_suffix);
                printf("}");
                text_prompt_free(&prompt);
            }
            printf("}\n");
            json_free(line);
        }
    } else {
        json_value *line = read_line(text, length, sample, error, sizeof error);
        const char *context, *question;
        text_prompt prompt;
        llm_cache cache;
        kvec_config config;
        kvec_plan plan;
        kvec_result r;
        float *logits;
        text_scores given;
        int64_t l, j, k, budget_rows;
        int sources;
        FILE *out;
        if (!line) return fail(error, NULL);
        if (!policy || text_policy(policy, &config)) return fail("--policy must name a policy", TEXT_POLICY_NAMES);
        if (!setting || (strcmp(setting, "agnostic") && strcmp(setting, "aware")))
            return fail("--setting agnostic or aware", NULL);
        if (!(budget > 0 && budget < 1)) return fail("--budget must be in (0, 1)", NULL);
        if (!(context = field(line, "context", error, sizeof error)) ||
            !(question = field(line, "question", error, sizeof error)))
            return fail(error, NULL);
        if (text_question_prompt(&m, TEXT_INSTRUCTION, context, strlen(context), question, !strcmp(setting, "aware"), 0,
                                 &prompt, error, sizeof error))
            return fail(error, NULL);
        sources = text_policy_scores(policy);
        memset(&given, 0, sizeof given);
        if (llm_cache_init(&cache, &m.model, text_scores_positions(sources, prompt.n_prefix) + 1) ||
            !(logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float))))
            return fail("out of memory", NULL);
        if (text_scores_prepare(&m, &cache, sources, error, sizeof error)) return fail(error, NULL);
        if (text_prefill(&m, &cache, prompt.prefix, prompt.n_prefix, logits, NULL)) return fail("prefill failed", NULL);
        /* kvzip's pass, expected attention: the scores build/quality selects by */
        if (sources && text_scores_compute(&m, &cache, prompt.prefix, prompt.n_prefix, sources, &given, error, sizeof error))
            return fail(error, NULL);
        /* the budget exactly as text_answer computes it */
        budget_rows = (int64_t)(budget * (double)prompt.n_prefix);
        if ((r = sources ? llm_evict_scores(&cache, &config, budget_rows, text_scores_of(&given, policy), &plan)
                         : llm_evict(&cache, &config, budget_rows, &plan)) != KVEC_OK)
            return fail("kvec", kvec_result_string(r));
        if (!(out = fopen(kept_path, "w"))) return fail("cannot write", kept_path);
        fprintf(out, "{\"policy\": \"%s\", \"setting\": \"%s\", \"budget\": %g, \"n_prefix\": %lld, \"n_layers\": %lld, "
                     "\"n_kv_heads\": %lld, \"kept\": [",
                policy, setting, budget, (long long)prompt.n_prefix, (long long)plan.n_layers,
                (long long)plan.n_kv_heads);
        for (l = 0; l < plan.n_layers; l++) {
            fprintf(out, l ? ",\n [" : "\n [");
            for (j = 0; j < plan.n_kv_heads; j++) {
                const int64_t head = l * plan.n_kv_heads + j;
                fprintf(out, j ? ", [" : "[");
                for (k = 0; k < plan.kept_count[head]; k++)
                    fprintf(out, k ? ",%lld" : "%lld", (long long)plan.kept_positions[head * plan.capacity + k]);
                fprintf(out, "]");
            }
            fprintf(out, "]");
        }
        fprintf(out, "]}\n");
        fclose(out);
        llm_cache_free(&cache);
        text_prompt_free(&prompt);
        free(logits);
        text_scores_free(&given);
        json_free(line);
    }
    text_model_free(&m);
    free(text);
    return 0;
}
