/* engine_speed.c - prefill and decoding speed of the example engine on a
   model (GGUF file or Hugging Face directory).

   build/engine_speed MODEL [PROMPT_TOKENS [DECODED_TOKENS]]   (4096, 32)

   Prefills PROMPT_TOKENS fixed pseudo-random token ids (logits of the last
   one only, as a benchmark's prefill does), then decodes DECODED_TOKENS
   greedily, one token per forward. Threads: OMP_NUM_THREADS. Prints the
   load time, prefill and decoding tokens per second, and a hash of the
   prefill's last logits (equal for every thread count). */
#include "../examples/engine/session.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif


int main(int argc, char **argv) {
    const int64_t prompt = argc > 2 ? atoll(argv[2]) : 4096, decoded = argc > 3 ? atoll(argv[3]) : 32;
    char error[512];
    llm_model model;
    llm_cache cache;
    int32_t *tokens;
    float *logits;
    double start, prefilled, done;
    uint64_t hash = 1469598103934665603ull; /* FNV-1a over the logits' bits */
    int64_t i, v, V;
    if (argc < 2 || prompt < 2 || decoded < 0) {
        fprintf(stderr, "usage: engine_speed MODEL [PROMPT_TOKENS [DECODED_TOKENS]]\n");
        return 2;
    }
    start = text_seconds();
    if (llm_load(&model, argv[1], error, sizeof error)) { fprintf(stderr, "engine_speed: %s\n", error); return 1; }
    V = model.config.vocab_size;
    printf("%s: %s, %d layers, weights %s (fp32 in memory), loaded in %.2f s, %d threads\n", argv[1],
           model.config.architecture, model.config.n_layers, model.config.weight_dtype, text_seconds() - start,
#ifdef _OPENMP
           omp_get_max_threads()
#else
           1
#endif
    );
    tokens = (int32_t *)malloc((size_t)(prompt + decoded) * sizeof *tokens);
    logits = (float *)malloc((size_t)V * sizeof *logits);
    if (!tokens || !logits || llm_cache_init(&cache, &model, prompt + decoded)) {
        fprintf(stderr, "engine_speed: out of memory\n");
        return 1;
    }
    /* Ids spread over the first 20000 (ordinary words in both vocabularies). */
    for (i = 0; i < prompt; i++) tokens[i] = (int32_t)(100 + (uint64_t)i * 2654435761u % 20000 % (uint64_t)(V - 100));
    start = text_seconds();
    if (llm_forward(&model, &cache, tokens, prompt - 1, NULL) ||
        llm_forward(&model, &cache, tokens + prompt - 1, 1, logits)) {
        fprintf(stderr, "engine_speed: forward failed\n");
        return 1;
    }
    prefilled = text_seconds();
    for (v = 0; v < V; v++) {
        uint32_t bits;
        memcpy(&bits, &logits[v], 4);
        hash = (hash ^ bits) * 1099511628211ull;
    }
    for (i = 0; i < decoded; i++) {
        int64_t best = 0;
        for (v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
        tokens[prompt + i] = (int32_t)best;
        if (llm_forward(&model, &cache, tokens + prompt + i, 1, logits)) {
            fprintf(stderr, "engine_speed: forward failed\n");
            return 1;
        }
    }
    done = text_seconds();
    printf("prefill %lld tokens: %.2f s, %.0f tokens/s (last logits hash %016llx)\n", (long long)prompt,
           prefilled - start, (double)prompt / (prefilled - start), (unsigned long long)hash);
    if (decoded)
        printf("decode %lld tokens after them: %.2f s, %.1f tokens/s\n", (long long)decoded, done - prefilled,
               (double)decoded / (done - prefilled));
    llm_cache_free(&cache);
    llm_free(&model);
    free(tokens);
    free(logits);
    return 0;
}
