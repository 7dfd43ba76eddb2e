/* generate.c - the example engine end to end on one sample: prefill,
   compress the cache with kvec, then decode greedily token by token.

   build/generate [--model DIR] [--task single|multikey|multiquery|vartrack]
                  [--length T] [--seed S] [--policy kvec|snapkv|...|none]
                  [--budget F]

   Prints the question, the expected answer and what the model answered from
   its compressed cache. */
#include "model.h"
#include "tasks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const POLICY_NAMES[] = {"kvec", "snapkv", "pyramidkv", "streaming", "h2o",
                                           "tova", "knorm", "keydiff", "random"};

int main(int argc, char **argv) {
    const char *model_dir = "bench/models/ref-4l", *task = "multikey", *policy = "kvec";
    int64_t length = 2048, budget, P, t, n_answer;
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
    int kind, i, correct = 1;

    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--task")) task = argv[i + 1];
        else if (!strcmp(argv[i], "--length")) length = atoll(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--policy")) policy = argv[i + 1];
        else if (!strcmp(argv[i], "--budget")) fraction = atof(argv[i + 1]);
        else break;
    }
    if (i < argc) {
        fprintf(stderr, "usage: generate [--model DIR] [--task NAME] [--length T] [--seed S]"
                        " [--policy NAME|none] [--budget F]\n");
        return 2;
    }
    for (kind = 0; kind < TASK_COUNT && strcmp(task, task_name((task_kind)kind)); kind++) {}
    memset(&config, 0, sizeof config);
    for (i = 0; i < 9 && strcmp(policy, POLICY_NAMES[i]); i++) {}
    if (kind == TASK_COUNT || (i == 9 && strcmp(policy, "none"))) {
        fprintf(stderr, "generate: unknown task or policy\n");
        return 2;
    }
    config.policy = (kvec_policy)(i + 1); /* the order of kvec_policy */

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
