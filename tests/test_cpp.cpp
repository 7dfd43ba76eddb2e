// test_cpp.cpp - kvec.h compiled as C++11 (-Wall -Wextra -Werror -pedantic):
// one eviction through the explicit API, checked.
#define KVEC_IMPLEMENTATION
#include "../kvec.h"

#include <cstdio>
#include <vector>

int main() {
    const int64_t layers = 2, tokens = 100, kv_heads = 2, q_heads = 4, dim = 16, window = 8, budget = 24;
    std::vector<float> k(layers * tokens * kv_heads * dim), v(k.size()), q(layers * window * q_heads * dim);
    for (size_t i = 0; i < k.size(); i++) { k[i] = float((i * 7919) % 101) / 50.0f - 1.0f; v[i] = float(i); }
    for (size_t i = 0; i < q.size(); i++) q[i] = float((i * 104729) % 97) / 48.0f - 1.0f;
    std::vector<kvec_layer> views(layers);
    for (int64_t l = 0; l < layers; l++) {
        views[l].keys = kvec_tensor_contiguous(&k[l * tokens * kv_heads * dim], KVEC_DTYPE_F32, tokens, kv_heads, dim);
        views[l].values = kvec_tensor_contiguous(&v[l * tokens * kv_heads * dim], KVEC_DTYPE_F32, tokens, kv_heads, dim);
        views[l].queries = kvec_tensor_contiguous(&q[l * window * q_heads * dim], KVEC_DTYPE_F32, window, q_heads, dim);
    }
    kvec_cache cache = { views.data(), layers };
    kvec_config config = {};
    config.window = window;
    size_t scratch_bytes = 0;
    int64_t capacity = 0;
    if (kvec_scratch_bytes(&config, &cache, 1, &scratch_bytes) != KVEC_OK ||
        kvec_plan_capacity(&config, budget, layers, tokens, &capacity) != KVEC_OK) return 1;
    std::vector<unsigned char> scratch(scratch_bytes);
    std::vector<int64_t> counts(layers * kv_heads), positions(layers * kv_heads * capacity);
    kvec_plan plan = { layers, kv_heads, capacity, counts.data(), positions.data() };
    kvec_result r = kvec_evict_ex(&config, &cache, budget, &plan, scratch.data(), scratch.size());
    bool ok = r == KVEC_OK;
    for (int64_t h = 0; ok && h < layers * kv_heads; h++) {
        ok = counts[h] == budget && positions[h * capacity + budget - 1] == tokens - 1;
        // value rows carry their element index: row r must now hold token positions[r]
        const int64_t l = h / kv_heads, j = h % kv_heads;
        for (int64_t r2 = 0; ok && r2 < budget; r2++)
            ok = v[((l * tokens + r2) * kv_heads + j) * dim] == float(((l * tokens + positions[h * capacity + r2]) * kv_heads + j) * dim);
    }
    std::printf("C++11 build: %s\n", ok ? "ok" : kvec_result_string(r));
    return ok ? 0 : 1;
}
