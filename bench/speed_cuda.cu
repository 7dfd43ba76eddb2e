// speed_cuda.cu - how fast kvec_cuda.cu evicts a Llama-3.1-8B-shaped cache.
//
// Default shape: 32 layers, 32 query heads, 8 KV heads, head dim 128, fp16
// K, V and window queries, window 32, keep 20%, at 8K, 32K and 128K tokens.
// For each policy: the median over --repeats (3 where one call takes over
// 200 ms) of one kvec_cuda_evict over all layers (CUDA events on one
// stream, after a warm-up call), and of its three
// steps run alone (score, select, compact). Beside it, in the same run:
//
//   copy     a device-to-device cudaMemcpyAsync of 2 GiB: the bandwidth
//            ceiling, counting bytes read plus bytes written
//   floor    the fewest bytes an eviction must move (read K once, read and
//            write the kept K and V rows) at that copy bandwidth
//
// and it prints, per policy: ms, floor / ms, and for compaction alone its
// bandwidth as a share of the copy's. The cache is compacted by every call;
// later calls evict the already compacted cache again, which is the same
// work on other data (every row is still read).
//
//   build/speed_cuda [--tokens 8192,32768,131072] [--repeats 10]
//                    [--policies kvec,snapkv,...] [--json FILE]
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CUDA_OK(call)                                                                            \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            std::fprintf(stderr, "speed_cuda: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,       \
                         cudaGetErrorString(e_));                                                \
            std::exit(1);                                                                        \
        }                                                                                        \
    } while (0)

#define KVEC_OK_OR_DIE(call)                                                                     \
    do {                                                                                         \
        kvec_result r_ = (call);                                                                 \
        if (r_ != KVEC_OK) {                                                                     \
            std::fprintf(stderr, "speed_cuda: %s:%d: %s: %s\n", __FILE__, __LINE__, #call,       \
                         kvec_result_string(r_));                                                \
            std::exit(1);                                                                        \
        }                                                                                        \
    } while (0)

/* Random fp16 values, about N(0, 1) (sum of four uniforms), from a hash:
   never zeros, which would flatter the memory system and the arithmetic. */
__global__ void fill_random(__half *x, size_t n, uint32_t seed, float scale) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        float sum = 0.0f;
        for (int k = 0; k < 4; k++) {
            h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
            sum += (float)(h >> 8) * (1.0f / 16777216.0f);
        }
        x[i] = __float2half((sum - 2.0f) * 1.7320508f * scale);
    }
}

struct timer {
    cudaEvent_t start, stop;
    timer() { CUDA_OK(cudaEventCreate(&start)); CUDA_OK(cudaEventCreate(&stop)); }
    ~timer() { cudaEventDestroy(start); cudaEventDestroy(stop); }
};

static double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

/* Median ms of `repeats` runs of f on stream, after one warm-up (3 runs
   when the warm-up took over 200 ms, to fit a device call's time). */
template <typename F> static double time_ms(cudaStream_t stream, int repeats, F f) {
    timer t;
    std::vector<double> ms;
    float warm = 0.0f;
    CUDA_OK(cudaEventRecord(t.start, stream));
    f();
    CUDA_OK(cudaEventRecord(t.stop, stream));
    CUDA_OK(cudaEventSynchronize(t.stop));
    CUDA_OK(cudaEventElapsedTime(&warm, t.start, t.stop));
    if (warm > 200.0f && repeats > 3) repeats = 3;
    for (int i = 0; i < repeats; i++) {
        float elapsed = 0.0f;
        CUDA_OK(cudaEventRecord(t.start, stream));
        f();
        CUDA_OK(cudaEventRecord(t.stop, stream));
        CUDA_OK(cudaEventSynchronize(t.stop));
        CUDA_OK(cudaEventElapsedTime(&elapsed, t.start, t.stop));
        ms.push_back(elapsed);
    }
    return median(ms);
}

static std::vector<std::string> split(const char *s) {
    std::vector<std::string> out;
    std::string cur;
    for (; *s; s++) {
        if (*s == ',') { if (!cur.empty()) out.push_back(cur); cur.clear(); }
        else cur += *s;
    }
    if (!cur.empty()) out.push_back(cur);
    return out;
}

static bool policy_of(const std::string &name, kvec_policy *p) {
    static const struct { const char *name; kvec_policy policy; } table[] = {
        { "kvec", KVEC_POLICY_KVEC }, { "snapkv", KVEC_POLICY_SNAPKV }, { "pyramidkv", KVEC_POLICY_PYRAMIDKV },
        { "h2o", KVEC_POLICY_H2O }, { "tova", KVEC_POLICY_TOVA }, { "knorm", KVEC_POLICY_KNORM },
        { "keydiff", KVEC_POLICY_KEYDIFF }, { "streaming", KVEC_POLICY_STREAMING }, { "random", KVEC_POLICY_RANDOM } };
    for (const auto &entry : table)
        if (name == entry.name) { *p = entry.policy; return true; }
    return false;
}

int main(int argc, char **argv) {
    std::vector<int64_t> token_counts = { 8192, 32768, 131072 };
    std::vector<std::string> policy_names = { "kvec", "snapkv", "pyramidkv", "h2o", "tova", "knorm", "keydiff",
                                              "streaming", "random" };
    int repeats = 10;
    const char *json_path = nullptr;
    const int64_t L = 32, H = 32, Hk = 8, D = 128, W = 32;
    const double keep = 0.2;
    for (int i = 1; i < argc; i++) {
        if (!std::strcmp(argv[i], "--tokens") && i + 1 < argc) {
            token_counts.clear();
            for (const std::string &t : split(argv[++i])) token_counts.push_back(std::atoll(t.c_str()));
        } else if (!std::strcmp(argv[i], "--policies") && i + 1 < argc) {
            policy_names = split(argv[++i]);
        } else if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) {
            repeats = std::atoi(argv[++i]);
        } else if (!std::strcmp(argv[i], "--json") && i + 1 < argc) {
            json_path = argv[++i];
        } else {
            std::fprintf(stderr, "usage: %s [--tokens N,N,..] [--policies a,b,..] [--repeats R] [--json FILE]\n", argv[0]);
            return 2;
        }
    }
    int device = 0;
    cudaDeviceProp prop;
    CUDA_OK(cudaGetDevice(&device));
    CUDA_OK(cudaGetDeviceProperties(&prop, device));
    std::printf("speed_cuda: %s, %d SMs, %.0f MiB, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
                prop.totalGlobalMem / 1048576.0, prop.l2CacheSize >> 20);
    std::printf("shape: %lld layers, %lld query heads, %lld KV heads, head dim %lld, fp16, window %lld, keep %.0f%%, "
                "median of %d\n", (long long)L, (long long)H, (long long)Hk, (long long)D, (long long)W, keep * 100,
                repeats);
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreate(&stream));

    /* The copy ceiling: 2 GiB device to device, bytes read plus written. */
    double copy_gbs;
    {
        const size_t bytes = (size_t)2 << 30;
        void *a, *b;
        CUDA_OK(cudaMalloc(&a, bytes));
        CUDA_OK(cudaMalloc(&b, bytes));
        CUDA_OK(cudaMemset(a, 1, bytes));
        const double ms = time_ms(stream, repeats, [&] { CUDA_OK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, stream)); });
        copy_gbs = 2.0 * (double)bytes / (ms * 1e6);
        CUDA_OK(cudaFree(a));
        CUDA_OK(cudaFree(b));
        std::printf("copy: 2 GiB device to device in %.3f ms = %.0f GB/s (read + write)\n\n", ms, copy_gbs);
    }

    FILE *json = json_path ? std::fopen(json_path, "w") : nullptr;
    if (json) std::fprintf(json, "{\"device\": \"%s\", \"copy_gbs\": %.1f, \"results\": [\n", prop.name, copy_gbs);
    bool first_row = true;
    std::printf("%8s %-10s %9s %9s %9s %9s %9s %8s %10s\n", "tokens", "policy", "evict ms", "score", "select",
                "compact", "floor ms", "floor/t", "compact/cp");
    for (const int64_t N : token_counts) {
        const int64_t budget = (int64_t)(keep * (double)N);
        const size_t kv_elems = (size_t)(N * Hk * D), q_elems = (size_t)(W * H * D);
        __half *kv = nullptr, *queries = nullptr;
        CUDA_OK(cudaMalloc((void **)&kv, 2 * L * kv_elems * sizeof(__half)));
        CUDA_OK(cudaMalloc((void **)&queries, L * q_elems * sizeof(__half)));
        fill_random<<<4096, 256, 0, stream>>>(kv, 2 * L * kv_elems, 17u, 1.0f);
        fill_random<<<256, 256, 0, stream>>>(queries, L * q_elems, 91u, 2.0f);
        CUDA_OK(cudaGetLastError());
        std::vector<kvec_layer> layers(L);
        for (int64_t l = 0; l < L; l++) {
            layers[l] = kvec_layer();
            layers[l].keys = kvec_tensor_contiguous(kv + (2 * l) * kv_elems, KVEC_DTYPE_F16, N, Hk, D);
            layers[l].values = kvec_tensor_contiguous(kv + (2 * l + 1) * kv_elems, KVEC_DTYPE_F16, N, Hk, D);
            layers[l].queries = kvec_tensor_contiguous(queries + l * q_elems, KVEC_DTYPE_F16, W, H, D);
        }
        kvec_cache cache = { layers.data(), L };
        /* Floor bytes: read K once, read and write the kept K and V rows. */
        const double row_bytes = (double)(D * 2), kept_rows = (double)(L * Hk * budget);
        const double floor_bytes = (double)(L * Hk * N) * row_bytes + 4.0 * kept_rows * row_bytes;
        const double floor_ms = floor_bytes / (copy_gbs * 1e6);
        const double compact_bytes = 4.0 * kept_rows * row_bytes; /* read + write, K and V */
        for (const std::string &name : policy_names) {
            kvec_config config = kvec_config();
            if (!policy_of(name, &config.policy)) { std::fprintf(stderr, "unknown policy %s\n", name.c_str()); return 2; }
            config.window = W;
            size_t scratch_bytes = 0;
            int64_t capacity = 0;
            KVEC_OK_OR_DIE(kvec_cuda_scratch_bytes(&config, &cache, &scratch_bytes));
            KVEC_OK_OR_DIE(kvec_plan_capacity(&config, budget, L, N, &capacity));
            void *scratch = nullptr;
            float *scores = nullptr;
            int64_t *plan_memory = nullptr;
            CUDA_OK(cudaMalloc(&scratch, scratch_bytes));
            CUDA_OK(cudaMalloc((void **)&scores, (size_t)(L * Hk * N) * sizeof(float)));
            CUDA_OK(cudaMalloc((void **)&plan_memory, (size_t)(L * Hk * (capacity + 1)) * sizeof(int64_t)));
            kvec_plan plan = { L, Hk, capacity, plan_memory, plan_memory + L * Hk };
            const double evict = time_ms(stream, repeats, [&] {
                KVEC_OK_OR_DIE(kvec_cuda_evict(&config, &cache, budget, &plan, scratch, scratch_bytes, stream));
            });
            kvec_result status = KVEC_ERROR_CUDA;
            KVEC_OK_OR_DIE(kvec_cuda_status(scratch, stream, &status));
            if (status != KVEC_OK) { std::fprintf(stderr, "device status: %s\n", kvec_result_string(status)); return 1; }
            const double score = time_ms(stream, repeats, [&] {
                KVEC_OK_OR_DIE(kvec_cuda_score(&config, &cache, budget, scores, scratch, scratch_bytes, stream));
            });
            const double select = time_ms(stream, repeats, [&] {
                KVEC_OK_OR_DIE(kvec_cuda_select(&config, scores, L, Hk, N, budget, &plan, scratch, scratch_bytes, stream));
            });
            const double compact = time_ms(stream, repeats, [&] {
                KVEC_OK_OR_DIE(kvec_cuda_compact(&cache, &plan, scratch, scratch_bytes, stream));
            });
            const double compact_share = compact_bytes / (compact * 1e6) / copy_gbs;
            std::printf("%8lld %-10s %9.3f %9.3f %9.3f %9.3f %9.3f %8.3f %9.0f%%\n", (long long)N, name.c_str(), evict,
                        score, select, compact, floor_ms, floor_ms / evict, 100.0 * compact_share);
            std::fflush(stdout);
            if (json)
                std::fprintf(json,
                             "%s  {\"tokens\": %lld, \"policy\": \"%s\", \"evict_ms\": %.4f, \"score_ms\": %.4f, "
                             "\"select_ms\": %.4f, \"compact_ms\": %.4f, \"floor_ms\": %.4f, \"compact_copy_share\": %.4f}",
                             first_row ? "" : ",\n", (long long)N, name.c_str(), evict, score, select, compact, floor_ms,
                             compact_share);
            first_row = false;
            CUDA_OK(cudaFree(scratch));
            CUDA_OK(cudaFree(scores));
            CUDA_OK(cudaFree(plan_memory));
        }
        CUDA_OK(cudaFree(kv));
        CUDA_OK(cudaFree(queries));
    }
    if (json) { std::fprintf(json, "\n]}\n"); std::fclose(json); }
    std::printf("\nfloor/t: the memory floor at the measured copy bandwidth over the eviction's time (1 = at the floor).\n"
                "compact/cp: compaction's bytes (kept K and V rows read and written) per second, as a share of the copy's.\n");
    CUDA_OK(cudaStreamDestroy(stream));
    return 0;
}
