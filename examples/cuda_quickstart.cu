// cuda_quickstart.cu - kvec_cuda_evict on a cache in device memory.
//
//     nvcc -std=c++17 -O2 examples/cuda_quickstart.cu kvec_cuda.cu -o cuda_quickstart
//
// A 2-layer cache of 1024 tokens with 8 KV heads of dim 128 (fp16,
// [token][kv_head][dim]) and 32 fp16 window queries of 32 query heads per
// layer is filled with random numbers, evicted to 128 tokens per head with the
// default policy (K-VEC), and the first kept positions of one head are
// printed. `make test` also runs it with the kernels emulated on the CPU.
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#ifndef KVEC_CUDA_EMULATE
#include <cuda_runtime.h>
#endif
#include <cstdio>
#include <cstdlib>
#include <vector>

static bool cuda_ok(cudaError_t e, const char *what) {
    if (e != cudaSuccess) std::fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(e));
    return e == cudaSuccess;
}

int main() {
    const int64_t L = 2, N = 1024, Hk = 8, H = 32, D = 128, W = 32, budget = 128;
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        std::printf("cuda_quickstart: skipped: no CUDA device\n");
        return 0;
    }
    /* The engine's tensors, made up here: K, V [L][N][Hk][D] and queries [L][W][H][D], fp16. */
    const size_t kv_elems = (size_t)(L * N * Hk * D), q_elems = (size_t)(L * W * H * D);
    std::vector<uint16_t> host(2 * kv_elems + q_elems);
    uint64_t state = 42;
    for (uint16_t &x : host) { /* uniform in [-1, 1) */
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        x = kvec_f32_to_f16((float)(state >> 40) / 8388608.0f - 1.0f);
    }
    uint16_t *device = nullptr;
    if (!cuda_ok(cudaMalloc((void **)&device, host.size() * 2), "cudaMalloc") ||
        !cuda_ok(cudaMemcpy(device, host.data(), host.size() * 2, cudaMemcpyHostToDevice), "cudaMemcpy"))
        return 1;
    std::vector<kvec_layer> layers(L);
    for (int64_t l = 0; l < L; l++) {
        uint16_t *k = device + l * N * Hk * D, *v = device + kv_elems + l * N * Hk * D;
        uint16_t *q = device + 2 * kv_elems + l * W * H * D;
        layers[l] = kvec_layer();
        layers[l].keys = kvec_tensor_contiguous(k, KVEC_DTYPE_F16, N, Hk, D);
        layers[l].values = kvec_tensor_contiguous(v, KVEC_DTYPE_F16, N, Hk, D);
        layers[l].queries = kvec_tensor_contiguous(q, KVEC_DTYPE_F16, W, H, D);
    }
    kvec_cache cache = { layers.data(), L };

    /* Scratch and plan in device memory, sized by the queries. */
    kvec_config config = kvec_config(); /* defaults: K-VEC, window 32, pooling 5 */
    size_t scratch_bytes = 0;
    int64_t capacity = 0;
    kvec_result r = kvec_cuda_scratch_bytes(&config, &cache, &scratch_bytes);
    if (r == KVEC_OK) r = kvec_plan_capacity(&config, budget, L, N, &capacity);
    if (r != KVEC_OK) { std::fprintf(stderr, "kvec: %s\n", kvec_result_string(r)); return 1; }
    void *scratch = nullptr;
    int64_t *plan_memory = nullptr;
    if (!cuda_ok(cudaMalloc(&scratch, scratch_bytes), "cudaMalloc") ||
        !cuda_ok(cudaMalloc((void **)&plan_memory, (size_t)(L * Hk * (capacity + 1)) * 8), "cudaMalloc"))
        return 1;
    kvec_plan plan = { L, Hk, capacity, plan_memory, plan_memory + L * Hk };

    /* Queued on the default stream; the status says how it went on the device. */
    r = kvec_cuda_evict(&config, &cache, budget, &plan, scratch, scratch_bytes, NULL);
    kvec_result status = KVEC_ERROR_CUDA;
    if (r == KVEC_OK) r = kvec_cuda_status(scratch, NULL, &status);
    if (r != KVEC_OK || status != KVEC_OK) {
        std::fprintf(stderr, "kvec: %s\n", kvec_result_string(r != KVEC_OK ? r : status));
        return 1;
    }
    std::vector<int64_t> counts((size_t)(L * Hk)), kept((size_t)capacity);
    cudaMemcpy(counts.data(), plan.kept_count, counts.size() * 8, cudaMemcpyDeviceToHost);
    cudaMemcpy(kept.data(), plan.kept_positions + (1 * Hk + 5) * capacity, kept.size() * 8, cudaMemcpyDeviceToHost);
    std::printf("cuda_quickstart: layer 1, KV head 5 keeps %lld of %lld tokens:", (long long)counts[1 * Hk + 5],
                (long long)N);
    for (int i = 0; i < 8; i++) std::printf(" %lld", (long long)kept[i]);
    std::printf(" ... %lld (the window ends the list)\n", (long long)kept[counts[1 * Hk + 5] - 1]);
    cudaFree(device);
    cudaFree(scratch);
    cudaFree(plan_memory);
    return counts[1 * Hk + 5] == budget ? 0 : 1;
}
