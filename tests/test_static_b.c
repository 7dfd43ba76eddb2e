/* The second translation unit of the KVEC_STATIC test (see test_static_a.c). */
#define KVEC_STATIC
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#include <string.h>

int evict_in_b(void);

int evict_in_b(void) {
    float k[64 * 8], v[64 * 8];
    kvec_layer layer;
    kvec_cache cache;
    int i;
    for (i = 0; i < 64 * 8; i++) { k[i] = (float)((i * 41) % 13) - 6.0f; v[i] = (float)i; }
    layer.keys = kvec_tensor_contiguous(k, KVEC_DTYPE_F32, 64, 1, 8);
    layer.values = kvec_tensor_contiguous(v, KVEC_DTYPE_F32, 64, 1, 8);
    memset(&layer.queries, 0, sizeof layer.queries); /* no queries */
    cache.layers = &layer;
    cache.n_layers = 1;
    {
        kvec_config config = { 0 };
        config.policy = KVEC_POLICY_STREAMING;
        return kvec_evict(&cache, 40) == KVEC_ERROR_MISSING_QUERIES /* default policy needs queries */
            && kvec_validate_cache(&cache) == KVEC_OK && config.policy == KVEC_POLICY_STREAMING;
    }
}
