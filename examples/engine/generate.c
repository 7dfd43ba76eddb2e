/* generate.c - the example engine end to end: prefill, compress the cache
   with kvec, then decode greedily token by token.

   On a GGUF model (text in, text out):

   build/generate --model FILE.gguf [--prompt-file F] [--question Q] [--raw]
                  [--policy NAME|none] [--budget F] [--max-tokens N]
   build/generate --model FILE.gguf --tokenize          (text on stdin)
   build/generate --model FILE.gguf --top-logits K      (prompt on stdin)

   The prompt (the file, or stdin) becomes the user turn of the model's chat
   template (--raw: used as it is, special tokens parsed, no BOS). It is
   prefilled and compressed to floor(F * prompt tokens) rows per KV head;
   with --question, the question is read after compression (the cached
   prompt serves a question it did not see). Prints the answer, the budget,
   the cache's memory before and after, and the time of each stage.
   --tokenize prints the text's token ids on one line; --top-logits prints
   the last position's K largest logits, `id logit` per line, largest first
   (prompt tokenized the same way: special tokens parsed, no BOS, no
   template).

   On the bundled synthetic models (a directory):

   build/generate [--model DIR] [--task single|multikey|multiquery|vartrack]
                  [--length T] [--seed S] [--policy kvec|snapkv|...|none]
                  [--budget F]

   Prints the question, the expected answer and what the model answered from
   its compressed cache. */
#include "session.h"
#include "tasks.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int is_gguf(const char *path) {
    size_t n = strlen(path);
    return n >= 5 && !strcmp(path + n - 5, ".gguf");
}

/* The whole of a stream (a file or stdin) as a NUL-terminated string. */
static char *read_all(FILE *f, size_t *length) {
    size_t used = 0, capacity = 1 << 16, got;
    char *text = (char *)malloc(capacity), *grown;
    while (text && (got = fread(text + used, 1, capacity - used - 1, f)) > 0) {
        used += got;
        if (used + 1 == capacity) {
            if (!(grown = (char *)realloc(text, capacity * 2))) { free(text); return NULL; }
            text = grown;
            capacity *= 2;
        }
    }
    if (text) text[used] = '\0';
    *length = used;
    return text;
}

static int fail(const char *what, const char *detail) {
    fprintf(stderr, "generate: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    return 1;
}

/* Text in, text out on a GGUF model. */
static int run_text(const char *model_path, const char *prompt_file, const char *question, int raw,
                    const char *policy, double fraction, int64_t max_tokens, int tokenize, int top_logits,
                    const char *scorer_path) {
    char error[512], *text, *prompt = NULL, answer[4096];
    size_t length;
    int64_t n, capacity, n_question = 0, kept, n_new, i, k;
    int32_t *ids = NULL, *question_ids = NULL;
    text_model m;
    llm_cache cache;
    float *logits;
    kvec_config config;
    double t0, t_prefill, t_evict = 0, t_answer, bytes_before, bytes_after;
    const int sources = strcmp(policy, "none") ? text_policy_scores(policy) : TEXT_SCORES_SELF;
    text_scores given; /* kvzip's and expected attention's scores, when the policy takes them */
    FILE *in = stdin;

    if (strcmp(policy, "none") && text_policy_parse(policy, &config, error, sizeof error)) {
        fprintf(stderr, "generate: %s (or none)\n", error);
        return 2;
    }
    if (prompt_file && !(in = fopen(prompt_file, "rb"))) return fail("cannot open the prompt file", prompt_file);
    text = read_all(in, &length);
    if (in != stdin) fclose(in);
    if (!text) return fail("out of memory reading the prompt", NULL);

    t0 = text_seconds();
    if (text_model_load(&m, model_path, error, sizeof error)) return fail(error, NULL);
    if (scorer_path) snprintf(m.scorer_path, sizeof m.scorer_path, "%s", scorer_path);
    if (question && !(tokenize || top_logits)) {
        /* the question ends the user turn and is read after compression */
        text_prompt parts;
        if (text_question_prompt(&m, "", text, length, question, 0, raw, &parts, error, sizeof error))
            return fail(error, NULL);
        ids = parts.prefix, n = parts.n_prefix;
        question_ids = parts.suffix, n_question = parts.n_suffix;
    } else {
        if (!(raw || tokenize || top_logits)) {
            /* A prompt piped in by echo ends with a newline the user did not
               mean as part of the turn. */
            int64_t total;
            while (length && (text[length - 1] == '\n' || text[length - 1] == ' ')) text[--length] = '\0';
            if (memchr(text, '\0', length)) return fail("the prompt holds a NUL byte (use --raw to send it as it is)", NULL);
            total = tokenizer_chat_prompt(&m.tok, NULL, text, NULL, 0);
            if (total < 0 || !(prompt = (char *)malloc((size_t)total + 1)))
                return fail("cannot build the chat prompt (no <|im_start|> in the vocabulary?)", NULL);
            tokenizer_chat_prompt(&m.tok, NULL, text, prompt, (size_t)total + 1);
            length = (size_t)total;
        } else {
            prompt = text;
        }
        if ((n = text_encode(&m, prompt, length, &ids, error, sizeof error)) < 0) return fail(error, NULL);
    }
    if (tokenize) {
        for (i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        return 0;
    }
    if (n < 1) return fail("the prompt is empty", NULL);
    capacity = n + n_question + max_tokens + 1;
    if (text_scores_positions(sources, n) > capacity) capacity = text_scores_positions(sources, n);
    if (m.model.config.context_length && capacity > m.model.config.context_length) {
        fprintf(stderr, "generate: the prompt (%lld tokens) and %lld new tokens exceed %s's context of %lld positions\n",
                (long long)(n + n_question), (long long)max_tokens, m.name, (long long)m.model.config.context_length);
        return 1;
    }
    if (llm_cache_init(&cache, &m.model, capacity) ||
        !(logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float))))
        return fail("out of memory for the cache", NULL);
    if (text_scores_prepare(&m, &cache, sources, error, sizeof error)) return fail(error, NULL);
    if (!top_logits)
        printf("%s loaded in %.1f s; prompt of %lld tokens\n", m.name, text_seconds() - t0, (long long)n);

    t0 = text_seconds();
    fflush(stdout);
    if (text_prefill(&m, &cache, ids, n, logits, top_logits ? NULL : stderr)) return fail("prefill failed", NULL);
    t_prefill = text_seconds() - t0;
    if (top_logits > 0) {
        /* k rounds of selection: K is small */
        for (k = 0; k < top_logits && k < m.model.config.vocab_size; k++) {
            int64_t best = -1, v;
            for (v = 0; v < m.model.config.vocab_size; v++)
                if (logits[v] == logits[v] && (best < 0 || logits[v] > logits[best])) best = v;
            printf("%lld %.6f\n", (long long)best, logits[best]);
            logits[best] = -INFINITY; /* taken */
        }
        return 0;
    }
    bytes_before = (double)text_cache_bytes(&cache);
    kept = n;
    memset(&given, 0, sizeof given);
    /* kvzip: the model repeats the prompt once more, with the full cache;
       expected: statistics of the prompt's queries */
    if (sources && text_scores_compute(&m, &cache, ids, n, sources, &given, error, sizeof error)) return fail(error, NULL);
    llm_cache_set_scorers(&cache, NULL); /* the answer's tokens need no scores */
    if (strcmp(policy, "none")) {
        kvec_result r;
        const int64_t budget = (int64_t)(fraction * (double)n);
        t0 = text_seconds();
        if ((r = sources ? llm_evict_scores(&cache, &config, budget, text_scores_of(&given, policy), NULL)
                         : llm_evict(&cache, &config, budget, NULL)) != KVEC_OK)
            return fail("kvec", kvec_result_string(r));
        t_evict = text_seconds() - t0;
        for (kept = 0, i = 0; i < (int64_t)cache.n_layers * cache.n_kv_heads; i++) kept += cache.length[i];
        kept /= (int64_t)cache.n_layers * cache.n_kv_heads; /* heads differ under shared budgets: the mean */
    }
    bytes_after = (double)text_cache_bytes(&cache);
    t0 = text_seconds();
    if (n_question && text_prefill(&m, &cache, question_ids, n_question, logits, NULL))
        return fail("reading the question failed", NULL);
    if ((n_new = text_generate(&m, &cache, logits, max_tokens, answer, sizeof answer)) < 0)
        return fail("the cache filled up while generating", NULL);
    t_answer = text_seconds() - t0;
    printf("answer: %s\n", answer);
    printf("policy %s: %lld of %lld prompt tokens kept per KV head (the mean over heads)\n", policy, (long long)kept,
           (long long)n);
    printf("cache (K and V, fp32, all layers): %.2f MB after prefill, %.2f MB after compression\n",
            bytes_before / 1e6, bytes_after / 1e6);
    printf("time: prefill %.2f s (%.0f tokens/s), eviction %.1f ms, %s%d new tokens %.2f s\n",
            t_prefill, (double)n / t_prefill, 1e3 * t_evict, n_question ? "question and " : "",
            (int)n_new, t_answer);
    if (sources & TEXT_SCORES_PASS)
        printf("reconstruction pass (kvzip's scores): %.2f s, %.2fx the prefill\n", given.pass_seconds,
               given.pass_seconds / t_prefill);
    if (sources & TEXT_SCORES_EXPECTED)
        printf("expected attention (query statistics and scores): %.2f s, %.2fx the prefill\n", given.expected_seconds,
               given.expected_seconds / t_prefill);
    if (sources & TEXT_SCORES_LEARNED)
        printf("learned scorer (%s): %.3f s inside the prefill, %.4fx it\n", m.scorer.model_name,
               given.learned_seconds, given.learned_seconds / t_prefill);
    llm_cache_free(&cache);
    text_model_free(&m);
    if (prompt != text) free(prompt); /* NULL with a question */
    free(text);
    free(ids);
    free(question_ids);
    free(logits);
    text_scores_free(&given);
    return 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: generate --model FILE.gguf [--prompt-file F] [--question Q] [--raw]\n"
            "                [--policy NAME|none] [--budget F] [--max-tokens N] [--scorer FILE.kvs]\n"
            "       generate --model FILE.gguf --tokenize | --top-logits K   (text on stdin)\n"
            "       generate [--model DIR] [--task NAME] [--length T] [--seed S] [--policy NAME|none] [--budget F]\n"
            "policies: %s\n"
            "%s",
            TEXT_POLICY_NAMES, TEXT_POLICY_OPTIONS);
}

/* A whole-string number in [low, high], or exit with the flag's name. */
static double number_flag(const char *flag, const char *value, double low, double high) {
    char *end;
    double x = strtod(value, &end);
    if (end == value || *end || !(x >= low && x <= high)) {
        fprintf(stderr, "generate: %s %s: expected a number in [%g, %g]\n", flag, value, low, high);
        exit(2);
    }
    return x;
}

int main(int argc, char **argv) {
    const char *model_dir = "bench/models/ref-4l", *task = "multikey", *policy = "kvec";
    const char *prompt_file = NULL, *question = NULL, *scorer_path = NULL;
    int64_t length = 2048, budget, P, t, n_answer, max_tokens = 64;
    double fraction = 0.1;
    uint64_t seed = 1;
    char error[512], path[1100];
    llm_model model;
    llm_cache cache;
    task_spec spec;
    task_sample sample;
    kvec_config config;
    kvec_result r;
    float *logits;
    int kind, i, correct = 1, raw = 0, tokenize = 0, top_logits = 0;

    for (i = 1; i < argc; i++) {
        const char *flag = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(flag, "--raw")) { raw = 1; continue; }
        if (!strcmp(flag, "--tokenize")) { tokenize = 1; continue; }
        if (!value || strncmp(flag, "--", 2)) { usage(); return 2; }
        i++;
        if (!strcmp(flag, "--model")) model_dir = value;
        else if (!strcmp(flag, "--task")) task = value;
        else if (!strcmp(flag, "--length")) length = (int64_t)number_flag(flag, value, 1, 1e7);
        else if (!strcmp(flag, "--seed")) seed = (uint64_t)number_flag(flag, value, 0, 1e18);
        else if (!strcmp(flag, "--policy")) policy = value;
        else if (!strcmp(flag, "--budget")) fraction = number_flag(flag, value, 1e-9, 1);
        else if (!strcmp(flag, "--prompt-file")) prompt_file = value;
        else if (!strcmp(flag, "--question")) question = value;
        else if (!strcmp(flag, "--max-tokens")) max_tokens = (int64_t)number_flag(flag, value, 1, 256);
        else if (!strcmp(flag, "--top-logits")) top_logits = (int)number_flag(flag, value, 1, 1e6);
        else if (!strcmp(flag, "--scorer")) scorer_path = value;
        else { usage(); return 2; }
    }
    if (is_gguf(model_dir))
        return run_text(model_dir, prompt_file, question, raw, policy, fraction, max_tokens, tokenize, top_logits,
                        scorer_path);
    if (prompt_file || question || raw || tokenize || top_logits || scorer_path) {
        fprintf(stderr, "generate: --prompt-file, --question, --raw, --tokenize, --top-logits and --scorer need a .gguf "
                "model\n");
        return 2;
    }
    if (strcmp(policy, "none") && text_policy_parse(policy, &config, error, sizeof error)) {
        fprintf(stderr, "generate: %s (or none)\n", error);
        return 2;
    }
    if (strcmp(policy, "none") && text_policy_scores(policy) != TEXT_SCORES_SELF) {
        fprintf(stderr, "generate: %s takes its scores from the reconstruction pass, the query statistics or a learned "
                "scorer of a text prompt: it needs a .gguf model with its tokenizer\n", policy);
        return 2;
    }
    for (kind = 0; kind < TASK_COUNT && strcmp(task, task_name((task_kind)kind)); kind++) {}
    if (kind == TASK_COUNT) {
        fprintf(stderr, "generate: unknown task '%s'\n", task);
        return 2;
    }

    if (llm_load(&model, model_dir, error, sizeof error)) { fprintf(stderr, "generate: %s\n", error); return 1; }
    snprintf(path, sizeof path, "%s/tasks.json", model_dir);
    if (task_spec_load(&spec, path, error, sizeof error)) { fprintf(stderr, "generate: %s\n", error); return 1; }
    if (task_generate(&spec, (task_kind)kind, length, seed, &sample)) {
        fprintf(stderr, "generate: cannot make a %s sample of %lld tokens\n", task, (long long)length);
        return 1;
    }
    if (llm_cache_init(&cache, &model, length) ||
        !(logits = (float *)malloc((size_t)model.config.vocab_size * sizeof(float)))) {
        fprintf(stderr, "generate: out of memory\n");
        return 1;
    }

    /* 1. Prefill the context and the question with the full cache; the last
       prefix token's logits predict the first answer token. */
    P = sample.answer_start;
    if (llm_forward(&model, &cache, sample.tokens, P - 1, NULL) ||
        llm_forward(&model, &cache, sample.tokens + P - 1, 1, logits))
        return 1;
    printf("%s, %lld tokens, seed %llu; prefix of %lld tokens ends with the question:", task,
           (long long)length, (unsigned long long)seed, (long long)P);
    for (t = sample.context_end; t < P; t++) printf(" %d", sample.tokens[t]);
    printf("\nexpected answer:");
    for (t = P; t < sample.length; t++) printf(" %d", sample.tokens[t]);
    printf("\n");

    /* 2. Compress: every KV head keeps floor(fraction * P) rows. kvec reads the
       cache and the captured queries where they are and compacts in place. */
    if (strcmp(policy, "none")) {
        budget = (int64_t)(fraction * (double)P);
        if ((r = llm_evict(&cache, &config, budget, NULL)) != KVEC_OK) {
            fprintf(stderr, "generate: kvec: %s\n", kvec_result_string(r));
            return 1;
        }
        printf("%s kept %lld of %lld tokens per KV head\n", policy, (long long)cache.length[0], (long long)P);
    }

    /* 3. Decode greedily, one token at a time, at positions P, P+1, ... */
    printf("model answer:   ");
    n_answer = sample.length - P;
    for (t = 0; t < n_answer + 2; t++) {
        int32_t next = 0;
        int v;
        for (v = 1; v < model.config.vocab_size; v++) if (logits[v] > logits[next]) next = v;
        printf(" %d", next);
        if (t >= n_answer || next != sample.tokens[P + t]) correct = 0;
        if (next == spec.eos || llm_forward(&model, &cache, &next, 1, logits)) break;
    }
    printf("\n%s\n", correct ? "correct" : kind == TASK_MULTIQUERY
                                               ? "differs (multiquery gives the 2nd and 3rd keys; free decoding cannot know them)"
                                               : "wrong");
    llm_cache_free(&cache);
    task_sample_free(&sample);
    task_spec_free(&spec);
    llm_free(&model);
    free(logits);
    return 0;
}
