/* hello.c - evict a random grouped-query cache with kvec and print what was kept.

   cc -std=c99 -O2 -fopenmp examples/hello.c -lm -o hello && ./hello

   The cache is shaped like a small model: 2 layers, 8 query heads sharing
   2 KV heads, head dim 64, 512 tokens, fp16, laid out [token][kv_head][dim]
   as many engines hold it. We keep 64 tokens per KV head. */
#define KVEC_IMPLEMENTATION
#include "../kvec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LAYERS = 2, Q_HEADS = 8, KV_HEADS = 2, DIM = 64, TOKENS = 512, WINDOW = 32, BUDGET = 64 };

static float random_normal(uint64_t *state) { /* sum of uniforms: cheap and good enough */
    float sum = 0.0f;
    int i;
    for (i = 0; i < 4; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        sum += (float)(*state >> 40) / 16777216.0f - 0.5f;
    }
    return sum * 1.7f;
}

int main(void) {
    static uint16_t keys[LAYERS][TOKENS][KV_HEADS][DIM];    /* fp16 */
    static uint16_t values[LAYERS][TOKENS][KV_HEADS][DIM];  /* fp16 */
    static float queries[LAYERS][WINDOW][Q_HEADS][DIM];     /* last 32 positions, post-RoPE */
    kvec_layer layers[LAYERS];
    kvec_cache cache;
    kvec_plan plan;
    kvec_config config = { 0 };  /* zero = defaults: K-VEC, window 32, avg pool 5 */
    int64_t capacity, *counts, *positions, l, j, i;
    size_t scratch_bytes;
    void *scratch;
    uint64_t rng = 42;
    kvec_result r;

    memset(layers, 0, sizeof layers); /* fields a policy does not read stay zero */
    for (l = 0; l < LAYERS; l++) {
        for (i = 0; i < TOKENS; i++)
            for (j = 0; j < KV_HEADS; j++) {
                int64_t d;
                for (d = 0; d < DIM; d++) {
                    keys[l][i][j][d] = kvec_f32_to_f16(random_normal(&rng));
                    values[l][i][j][d] = kvec_f32_to_f16((float)i); /* V remembers its position */
                }
            }
        for (i = 0; i < WINDOW * Q_HEADS * DIM; i++) (&queries[l][0][0][0])[i] = random_normal(&rng);
        layers[l].keys = kvec_tensor_contiguous(keys[l], KVEC_DTYPE_F16, TOKENS, KV_HEADS, DIM);
        layers[l].values = kvec_tensor_contiguous(values[l], KVEC_DTYPE_F16, TOKENS, KV_HEADS, DIM);
        layers[l].queries = kvec_tensor_contiguous(queries[l], KVEC_DTYPE_F32, WINDOW, Q_HEADS, DIM);
    }
    cache.layers = layers;
    cache.n_layers = LAYERS;

    /* The explicit form: ask how much memory, pass it in, get the plan back. */
    if ((r = kvec_plan_capacity(&config, BUDGET, LAYERS, TOKENS, &capacity)) != KVEC_OK ||
        (r = kvec_scratch_bytes(&config, &cache, 1, &scratch_bytes)) != KVEC_OK) {
        fprintf(stderr, "kvec: %s\n", kvec_result_string(r));
        return 1;
    }
    counts = (int64_t *)malloc(sizeof(int64_t) * LAYERS * KV_HEADS);
    positions = (int64_t *)malloc(sizeof(int64_t) * LAYERS * KV_HEADS * (size_t)capacity);
    scratch = malloc(scratch_bytes);
    if (!counts || !positions || !scratch) { fprintf(stderr, "out of memory\n"); return 1; }
    plan.n_layers = LAYERS; plan.n_kv_heads = KV_HEADS; plan.capacity = capacity;
    plan.kept_count = counts; plan.kept_positions = positions;

    r = kvec_evict_ex(&config, &cache, BUDGET, &plan, scratch, scratch_bytes);
    if (r != KVEC_OK) { fprintf(stderr, "kvec: %s\n", kvec_result_string(r)); return 1; }

    printf("kvec %d.%d.%d: %s kept %d of %d tokens per KV head (window %d, scratch %zu bytes)\n",
           KVEC_VERSION_MAJOR, KVEC_VERSION_MINOR, KVEC_VERSION_PATCH,
           kvec_policy_name(config.policy), BUDGET, TOKENS, WINDOW, scratch_bytes);
    for (l = 0; l < LAYERS; l++)
        for (j = 0; j < KV_HEADS; j++) {
            const int64_t *kept = positions + (l * KV_HEADS + j) * capacity;
            int64_t n = counts[l * KV_HEADS + j];
            printf("layer %d head %d (%d kept):", (int)l, (int)j, (int)n);
            for (i = 0; i < n; i++) printf(" %d", (int)kept[i]);
            printf("\n");
            /* Row i of V now holds token kept[i]: the compaction moved it. */
            for (i = 0; i < n; i++)
                if (kvec_f16_to_f32(values[l][i][j][0]) != (float)kept[i]) {
                    fprintf(stderr, "row %d does not hold token %d\n", (int)i, (int)kept[i]);
                    return 1;
                }
        }
    printf("rows 0..%d of every head now hold the kept tokens; decoding goes on at position %d\n",
           BUDGET - 1, TOKENS);
    free(counts); free(positions); free(scratch);
    return 0;
}
