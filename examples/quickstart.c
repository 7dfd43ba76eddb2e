#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#include <stdio.h>
#include <stdlib.h>

/* Your engine's cache after prefill: per layer, K and V as
   [n_tokens][n_kv_heads][head_dim] fp16, and the post-RoPE queries of the
   last 32 prefix positions as [32][n_query_heads][head_dim] fp32. */
int compress_after_prefill(uint16_t **k, uint16_t **v, float **q, int n_layers,
                           int64_t n_tokens, int64_t n_kv_heads, int64_t n_query_heads,
                           int64_t head_dim, int64_t keep) {
    kvec_layer *layers = (kvec_layer *)calloc((size_t)n_layers, sizeof *layers);
    kvec_cache cache;
    kvec_result r;
    int l;
    if (!layers) return -1;
    for (l = 0; l < n_layers; l++) {
        layers[l].keys    = kvec_tensor_contiguous(k[l], KVEC_DTYPE_F16, n_tokens, n_kv_heads, head_dim);
        layers[l].values  = kvec_tensor_contiguous(v[l], KVEC_DTYPE_F16, n_tokens, n_kv_heads, head_dim);
        layers[l].queries = kvec_tensor_contiguous(q[l], KVEC_DTYPE_F32, 32, n_query_heads, head_dim);
    }
    cache.layers = layers;
    cache.n_layers = n_layers;
    r = kvec_evict(&cache, keep); /* K-VEC, window 32, avg-pool 5 */
    free(layers);
    if (r != KVEC_OK) {
        fprintf(stderr, "kvec: %s\n", kvec_result_string(r));
        return -1;
    }
    /* Rows 0 .. keep-1 of every KV head now hold the kept tokens, in their
       original order; attend over `keep` rows and decode on at n_tokens. */
    return 0;
}

int main(void) { /* a tiny cache of zeros, to show the call works */
    enum { LAYERS = 2, TOKENS = 256, KV_HEADS = 2, Q_HEADS = 4, DIM = 16 };
    static uint16_t k[LAYERS][TOKENS * KV_HEADS * DIM], v[LAYERS][TOKENS * KV_HEADS * DIM];
    static float q[LAYERS][32 * Q_HEADS * DIM];
    uint16_t *kp[LAYERS] = { k[0], k[1] }, *vp[LAYERS] = { v[0], v[1] };
    float *qp[LAYERS] = { q[0], q[1] };
    int ok = compress_after_prefill(kp, vp, qp, LAYERS, TOKENS, KV_HEADS, Q_HEADS, DIM, 64) == 0;
    printf("quickstart: %s\n", ok ? "evicted 256 -> 64 tokens per head" : "failed");
    return ok ? 0 : 1;
}
