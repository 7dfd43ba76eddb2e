// test_nvcc.cu - kvec.h, implementation included, compiled by nvcc as a CUDA
// translation unit (host code only runs; no GPU is needed).
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#include <cstdio>

__global__ void touch(float *x) { x[0] = 1.0f; }

int main() {
    kvec_config config = {};
    kvec_config resolved;
    int64_t budget = 0;
    bool ok = kvec_resolve_config(&config, &resolved) == KVEC_OK && resolved.window == 32 &&
              kvec_layer_budget(&config, 100, 0, 4, 1000, &budget) == KVEC_OK && budget == 100;
    std::printf("nvcc build: %s\n", ok ? "ok" : "FAILED");
    return ok ? 0 : 1;
}
