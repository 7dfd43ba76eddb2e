/* test_static_a.c + test_static_b.c: two translation units, each with its
   own KVEC_STATIC copy of the implementation, linked into one program. */
#define KVEC_STATIC
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#include <string.h>
#include <stdio.h>

int check_in_b(void);

static int evict_in_a(void) {
    float k[64 * 8], v[64 * 8];
    kvec_layer layer;
    kvec_cache cache;
    int i;
    for (i = 0; i < 64 * 8; i++) { k[i] = (float)((i * 37) % 17) - 8.0f; v[i] = (float)i; }
    memset(&layer, 0, sizeof layer); /* fields a policy does not read stay zero */
    layer.keys = kvec_tensor_contiguous(k, KVEC_DTYPE_F32, 64, 1, 8);
    layer.values = kvec_tensor_contiguous(v, KVEC_DTYPE_F32, 64, 1, 8);
    cache.layers = &layer;
    cache.n_layers = 1;
    /* Knorm reads no queries; window 32 of the default config, keep 40 */
    {
        kvec_config config = { 0 };
        kvec_plan plan;
        int64_t counts[1], positions[40];
        static unsigned char scratch[1 << 16];
        size_t bytes;
        config.policy = KVEC_POLICY_KNORM;
        plan.n_layers = 1; plan.n_kv_heads = 1; plan.capacity = 40;
        plan.kept_count = counts; plan.kept_positions = positions;
        if (kvec_scratch_bytes(&config, &cache, 1, &bytes) != KVEC_OK || bytes > sizeof scratch) return 0;
        return kvec_evict_ex(&config, &cache, 40, &plan, scratch, bytes) == KVEC_OK && counts[0] == 40;
    }
}

int main(void) {
    int ok = evict_in_a() && check_in_b();
    printf("KVEC_STATIC build: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
