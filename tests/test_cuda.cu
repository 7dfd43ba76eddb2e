// test_cuda.cu - the device path (kvec_cuda.cu) against the CPU path (kvec.h).
//
// For random caches of many shapes, dtypes and layouts, and every policy the
// device supports: scores agree within 1e-3 relative (scores near zero: 1e-6
// of the head's largest), kept sets agree (a
// difference is allowed only between tokens whose CPU scores tie with the
// last kept score to rounding), compaction is byte-exact against the CPU's
// compaction by the same plan, and two runs give identical bits. Errors:
// host-side refusals queue nothing; NaN keys or queries and bad plans are
// reported through kvec_cuda_status and leave cache and plan untouched.
//
// Built three ways (Makefile): by nvcc against a GPU (bench/cuda_device.sh
// runs it, also under compute-sanitizer); by nvcc on a machine without one,
// where it prints that it skipped; and as C++ with tests/cuda_emulator.h,
// where the kernels run on the CPU (smaller shapes: fibers are slow).
#define KVEC_IMPLEMENTATION
#include "../kvec.h"
#ifndef KVEC_CUDA_EMULATE
#include <cuda_runtime.h>
#endif
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

static int g_checks = 0, g_failures = 0;
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        g_checks++;                                                        \
        if (!(cond)) {                                                     \
            g_failures++;                                                  \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);               \
            std::printf(__VA_ARGS__);                                      \
            std::printf("\n");                                             \
        }                                                                  \
    } while (0)

#define CUDA_OK(call)                                                                      \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) {                                                           \
            std::printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            std::exit(1);                                                                  \
        }                                                                                  \
    } while (0)

/* >>random data */
#ifndef TEST_CUDA_SEED /* other random data: compile with -DTEST_CUDA_SEED=N */
#define TEST_CUDA_SEED 0x1234567ull
#endif
static uint64_t g_rng = TEST_CUDA_SEED;
static uint64_t next_u64() {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return g_rng;
}
static double uniform() { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
static float normal() { return (float)(std::sqrt(-2.0 * std::log(uniform() + 1e-300)) * std::cos(6.283185307179586 * uniform())); }
static int64_t pick(int64_t lo, int64_t hi) { return lo + (int64_t)(next_u64() % (uint64_t)(hi - lo + 1)); }

static int64_t elem_size(kvec_dtype t) { return t == KVEC_DTYPE_F32 ? 4 : 2; }

static void store(kvec_dtype t, void *p, float v) {
    if (t == KVEC_DTYPE_F32) std::memcpy(p, &v, 4);
    else {
        uint16_t h = t == KVEC_DTYPE_F16 ? kvec_f32_to_f16(v) : kvec_f32_to_bf16(v);
        std::memcpy(p, &h, 2);
    }
}

/* A tensor in host memory with one of four layouts, and its device twin. */
enum { LAYOUT_TOKEN_MAJOR, LAYOUT_HEAD_MAJOR, LAYOUT_PADDED, LAYOUT_DIM_MAJOR, LAYOUT_COUNT };

struct tensor {
    std::vector<unsigned char> host;
    void *device = nullptr;
    kvec_tensor view;        /* host pointer */
    kvec_tensor device_view; /* device pointer */
};

static void make_tensor(tensor &t, kvec_dtype dtype, int64_t N, int64_t H, int64_t D, int layout, float scale) {
    const int64_t e = elem_size(dtype);
    kvec_tensor v;
    v.dtype = dtype; v.n_tokens = N; v.n_heads = H; v.head_dim = D;
    switch (layout) {
    case LAYOUT_HEAD_MAJOR: v.stride_dim = e; v.stride_token = D * e; v.stride_head = N * D * e; break;
    case LAYOUT_PADDED: /* rows padded to a multiple of 8 elements plus 8, tokens by 16 more bytes */
        v.stride_dim = e; v.stride_head = ((D + 7) / 8 * 8 + 8) * e; v.stride_token = H * v.stride_head + 16; break;
    case LAYOUT_DIM_MAJOR: v.stride_token = e; v.stride_dim = N * e; v.stride_head = D * N * e; break;
    default: v.stride_dim = e; v.stride_head = D * e; v.stride_token = H * D * e; break;
    }
    const int64_t span = (N - 1) * v.stride_token + (H - 1) * v.stride_head + (D - 1) * v.stride_dim + e;
    t.host.assign((size_t)span, 0xA5); /* padding holds a pattern compaction must not touch */
    for (int64_t i = 0; i < N; i++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t d = 0; d < D; d++)
                store(dtype, t.host.data() + i * v.stride_token + h * v.stride_head + d * v.stride_dim, normal() * scale);
    v.data = t.host.data();
    t.view = v;
    CUDA_OK(cudaMalloc(&t.device, (size_t)span));
    CUDA_OK(cudaMemcpy(t.device, t.host.data(), (size_t)span, cudaMemcpyHostToDevice));
    t.device_view = v;
    t.device_view.data = t.device;
}

static void free_tensor(tensor &t) { if (t.device) cudaFree(t.device); t.device = nullptr; }

static std::vector<unsigned char> device_bytes(const tensor &t) {
    std::vector<unsigned char> out(t.host.size());
    CUDA_OK(cudaMemcpy(out.data(), t.device, out.size(), cudaMemcpyDeviceToHost));
    return out;
}

/* One sequence: L layers of K, V and window queries, on host and device. */
struct model {
    int64_t L, Hk, g, D, Dv, N, Wq;
    std::vector<tensor> keys, values, queries, out_proj;
    std::vector<kvec_layer> host_layers, device_layers;
    kvec_cache host_cache, device_cache;
};

static void make_model(model &m, int64_t L, int64_t Hk, int64_t g, int64_t D, int64_t N, int64_t Wq,
                       kvec_dtype kv_dtype, kvec_dtype q_dtype, int layout) {
    m.L = L; m.Hk = Hk; m.g = g; m.D = D; m.Dv = D; m.N = N; m.Wq = Wq;
    m.keys.resize(L); m.values.resize(L); m.queries.resize(L); m.out_proj.resize(L);
    m.host_layers.assign(L, kvec_layer()); m.device_layers.assign(L, kvec_layer());
    for (int64_t l = 0; l < L; l++) {
        /* keys with a shared direction per head, so uniqueness has something to find */
        make_tensor(m.keys[l], kv_dtype, N, Hk, D, layout, 1.0f);
        make_tensor(m.values[l], kv_dtype, N, Hk, D, (layout + 1) % LAYOUT_COUNT, 1.0f);
        make_tensor(m.queries[l], q_dtype, Wq, Hk * g, D, LAYOUT_TOKEN_MAJOR, 2.0f);
        /* W_o as [E][H][Dv], E = 3 * Dv + 5 (CriticalKV, LaProx) */
        make_tensor(m.out_proj[l], q_dtype, 3 * D + 5, Hk * g, D, LAYOUT_TOKEN_MAJOR, 0.1f);
        m.host_layers[l].keys = m.keys[l].view;
        m.host_layers[l].values = m.values[l].view;
        m.host_layers[l].queries = m.queries[l].view;
        m.host_layers[l].out_proj = m.out_proj[l].view;
        m.device_layers[l].keys = m.keys[l].device_view;
        m.device_layers[l].values = m.values[l].device_view;
        m.device_layers[l].queries = m.queries[l].device_view;
        m.device_layers[l].out_proj = m.out_proj[l].device_view;
    }
    m.host_cache.layers = m.host_layers.data(); m.host_cache.n_layers = L;
    m.device_cache.layers = m.device_layers.data(); m.device_cache.n_layers = L;
}

static void free_model(model &m) {
    for (int64_t l = 0; l < m.L; l++) {
        free_tensor(m.keys[l]); free_tensor(m.values[l]); free_tensor(m.queries[l]); free_tensor(m.out_proj[l]);
    }
}

/* A plan in host memory and its device twin. */
struct plan_pair {
    std::vector<int64_t> counts, positions;
    int64_t *device_counts = nullptr, *device_positions = nullptr;
    kvec_plan host, device;
};

static void make_plan(plan_pair &p, int64_t L, int64_t Hk, int64_t capacity) {
    p.counts.assign((size_t)(L * Hk), -7);
    p.positions.assign((size_t)(L * Hk * capacity), -7);
    CUDA_OK(cudaMalloc((void **)&p.device_counts, p.counts.size() * 8));
    CUDA_OK(cudaMalloc((void **)&p.device_positions, p.positions.size() * 8));
    CUDA_OK(cudaMemcpy(p.device_counts, p.counts.data(), p.counts.size() * 8, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(p.device_positions, p.positions.data(), p.positions.size() * 8, cudaMemcpyHostToDevice));
    p.host.n_layers = p.device.n_layers = L;
    p.host.n_kv_heads = p.device.n_kv_heads = Hk;
    p.host.capacity = p.device.capacity = capacity;
    p.host.kept_count = p.counts.data(); p.host.kept_positions = p.positions.data();
    p.device.kept_count = p.device_counts; p.device.kept_positions = p.device_positions;
}

static void plan_to_host(plan_pair &p) {
    CUDA_OK(cudaMemcpy(p.counts.data(), p.device_counts, p.counts.size() * 8, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(p.positions.data(), p.device_positions, p.positions.size() * 8, cudaMemcpyDeviceToHost));
}

static void free_plan(plan_pair &p) { cudaFree(p.device_counts); cudaFree(p.device_positions); }

static const char *dtype_name(kvec_dtype t) { return t == KVEC_DTYPE_F32 ? "f32" : t == KVEC_DTYPE_F16 ? "f16" : "bf16"; }

/* >>one case */

struct case_desc {
    kvec_config config;
    const char *name;
    int64_t budget;
};

/* The CPU's scores of every layer, for the budget, into [L][Hk][N]. Under
   the cross-layer term each layer is selected before the next is scored,
   as kvec_evict_ex does (the cache itself is not compacted). */
static void cpu_scores(const kvec_config *c, model &m, int64_t budget, std::vector<float> &scores) {
    const bool cross_layer = c->terms.enabled & KVEC_TERM_CROSS_LAYER;
    std::vector<uint8_t> coverage_memory((size_t)m.N);
    kvec_coverage coverage;
    kvec_coverage_init(&coverage, coverage_memory.data(), coverage_memory.size(), m.N);
    int64_t capacity = 0;
    kvec_plan_capacity(c, budget, m.L, m.N, &capacity);
    std::vector<int64_t> counts((size_t)(m.L * m.Hk)), positions((size_t)(m.L * m.Hk * capacity));
    kvec_plan plan = { m.L, m.Hk, capacity, counts.data(), positions.data() };
    scores.assign((size_t)(m.L * m.Hk * m.N), 0.0f);
    for (int64_t l = 0; l < m.L; l++) {
        int64_t layer_budget = 0;
        size_t bytes = 0;
        kvec_layer_budget(c, budget, l, m.L, m.N, &layer_budget);
        kvec_layer_scratch_bytes(c, &m.host_layers[l], &bytes);
        std::vector<unsigned char> scratch(bytes + kvec_select_scratch_bytes(c, 1, m.Hk, m.N));
        float *layer_scores = scores.data() + l * m.Hk * m.N;
        kvec_result r = KVEC_OK;
        if (layer_budget < m.N)
            r = kvec_score_layer(c, &m.host_layers[l], l, layer_budget, cross_layer ? &coverage : NULL, layer_scores,
                                 scratch.data(), bytes);
        CHECK(r == KVEC_OK, "cpu score: %s", kvec_result_string(r));
        if (cross_layer) {
            r = kvec_select_layer(c, layer_scores, m.Hk, m.N, layer_budget, l, &coverage, &plan, scratch.data(),
                                  scratch.size());
            CHECK(r == KVEC_OK, "cpu select: %s", kvec_result_string(r));
        }
    }
}

/* Kept sets of head (l, j): equal, or every difference a tie with the last
   kept CPU score (relative tolerance; 2 ranks for the rank union). */
static bool sets_agree(const kvec_plan &cpu, const kvec_plan &gpu, int64_t l, int64_t j, const float *cpu_head_scores,
                       int64_t n_evictable, bool ranks, int64_t *differences) {
    const int64_t head = l * cpu.n_kv_heads + j;
    const int64_t nc = cpu.kept_count[head], ng = gpu.kept_count[head];
    const int64_t *pc = cpu.kept_positions + head * cpu.capacity, *pg = gpu.kept_positions + head * gpu.capacity;
    if (nc != ng) return false;
    bool same = true;
    for (int64_t r = 0; r < nc && same; r++) same = pc[r] == pg[r];
    if (same) return true;
    float boundary = INFINITY;
    for (int64_t r = 0; r < nc; r++)
        if (pc[r] < n_evictable && cpu_head_scores[pc[r]] < boundary) boundary = cpu_head_scores[pc[r]];
    std::vector<char> in_cpu((size_t)n_evictable + 1, 0), in_gpu((size_t)n_evictable + 1, 0);
    for (int64_t r = 0; r < nc; r++) if (pc[r] < n_evictable) in_cpu[pc[r]] = 1;
    for (int64_t r = 0; r < ng; r++)
        if (pg[r] >= 0 && pg[r] < n_evictable) in_gpu[pg[r]] = 1;
    for (int64_t r = nc - 1; r >= 0 && pc[r] >= n_evictable; r--) /* the window, in both */
        if (pg[r] != pc[r]) return false;
    const double tolerance = ranks ? 2.0 : 1e-4 * std::fmax(1e-30, std::fabs((double)boundary));
    for (int64_t i = 0; i < n_evictable; i++)
        if (in_cpu[i] != in_gpu[i]) {
            ++*differences;
            if (!(std::fabs((double)cpu_head_scores[i] - boundary) <= tolerance)) return false;
        }
    return true;
}

static void run_case(const case_desc &cd, model &m, bool quick) {
    kvec_config c;
    kvec_resolve_config(&cd.config, &c);
    const int64_t L = m.L, Hk = m.Hk, N = m.N;
    char what[256];
    std::snprintf(what, sizeof what, "%s L%lld Hk%lld g%lld D%lld N%lld Wq%lld %s B%lld", cd.name, (long long)L,
                  (long long)Hk, (long long)m.g, (long long)m.D, (long long)N, (long long)m.Wq,
                  dtype_name(m.keys[0].view.dtype), (long long)cd.budget);
    size_t scratch_bytes = 0;
    kvec_result r = kvec_cuda_scratch_bytes(&cd.config, &m.device_cache, &scratch_bytes);
    CHECK(r == KVEC_OK, "%s: scratch query: %s", what, kvec_result_string(r));
    if (r != KVEC_OK) return;
    void *scratch = nullptr;
    CUDA_OK(cudaMalloc(&scratch, scratch_bytes));

    /* Scores. */
    std::vector<float> ref, got((size_t)(L * Hk * N), NAN), got_again((size_t)(L * Hk * N));
    cpu_scores(&cd.config, m, cd.budget, ref);
    float *device_scores = nullptr;
    CUDA_OK(cudaMalloc((void **)&device_scores, got.size() * 4));
    CUDA_OK(cudaMemcpy(device_scores, got.data(), got.size() * 4, cudaMemcpyHostToDevice)); /* poisoned */
    kvec_result status = KVEC_ERROR_CUDA;
    const bool cross_layer = c.terms.enabled & KVEC_TERM_CROSS_LAYER;
    const bool ranks = c.policy == KVEC_POLICY_KVEC && (c.terms.enabled & KVEC_TERM_RANK_UNION) &&
                       (c.terms.enabled & (KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER));
    r = kvec_cuda_score(&cd.config, &m.device_cache, cd.budget, device_scores, scratch, scratch_bytes, NULL);
    if (cross_layer) { /* scores depend on selection: only kvec_cuda_evict runs this term */
        CHECK(r == KVEC_ERROR_BAD_CONFIG, "%s: kvec_cuda_score with the cross-layer term: %s", what, kvec_result_string(r));
    } else {
        CHECK(r == KVEC_OK, "%s: score: %s", what, kvec_result_string(r));
        CHECK(kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_OK, "%s: score status %d", what, (int)status);
        CUDA_OK(cudaMemcpy(got.data(), device_scores, got.size() * 4, cudaMemcpyDeviceToHost));
        r = kvec_cuda_score(&cd.config, &m.device_cache, cd.budget, device_scores, scratch, scratch_bytes, NULL);
        CUDA_OK(cudaMemcpy(got_again.data(), device_scores, got.size() * 4, cudaMemcpyDeviceToHost));
        CHECK(std::memcmp(got.data(), got_again.data(), got.size() * 4) == 0, "%s: two score runs differ", what);
        {
            double worst = 0.0;
            int64_t bad = 0, rank_mismatch = 0, compared = 0;
            const double term_weight = c.policy == KVEC_POLICY_KVEC && (c.terms.enabled & KVEC_TERM_UNIQUENESS)
                                           ? 1.0 + std::fabs((double)c.terms.mu) : 1.0;
            for (int64_t l = 0; l < L; l++) {
                int64_t layer_budget = 0;
                kvec_layer_budget(&c, cd.budget, l, L, N, &layer_budget);
                if (layer_budget >= N) continue;
                for (int64_t j = 0; j < Hk; j++) {
                    const float *a = ref.data() + (l * Hk + j) * N, *b = got.data() + (l * Hk + j) * N;
                    double scale = 0.0;
                    for (int64_t i = 0; i < N - c.window; i++) scale = std::fmax(scale, std::fabs((double)a[i]));
                    for (int64_t i = 0; i < N; i++) {
                        compared++;
                        if (std::isinf(a[i]) || std::isinf(b[i])) { bad += a[i] != b[i]; continue; }
                        /* rank scores are in rank units (kvec__union_score): a near-tie
                           swapped moves a token by a rank or two (1.5 or 0.5 units
                           each); only a move of more than 3 ranks counts */
                        if (ranks) { rank_mismatch += std::fabs((double)a[i] - b[i]) > 4.5; continue; }
                        const double err = std::fabs((double)a[i] - b[i]);
                        /* relative to the score, or to the head's largest score for scores
                           near zero (a cosine of 1e-6 carries the CPU's own fp32 rounding).
                           K-VEC's z-score sum z(I) + mu z(U) can cancel to near zero when mu
                           is large: its rounding is that of terms (1 + mu) times larger. */
                        const double rel = err / (std::fabs((double)a[i]) + 1e-3 * scale * term_weight + 1e-30);
                        worst = std::fmax(worst, rel);
                        bad += !(rel <= 1e-3);
                    }
                }
            }
            CHECK(bad == 0, "%s: %lld of %lld scores differ by more than 1e-3 relative (worst %.3g)", what,
                  (long long)bad, (long long)compared, worst);
            /* The rank union turns near-ties into swapped ranks: a few, never many. */
            CHECK(rank_mismatch * 200 <= compared, "%s: %lld of %lld rank scores differ by more than 3 ranks", what,
                  (long long)rank_mismatch, (long long)compared);
            if (!quick && worst > 1e-4) std::printf("  note: %s: worst relative score difference %.3g\n", what, worst);
        }
    }

    /* Eviction: plan against the CPU's, compaction against the CPU's by the same plan. */
    int64_t capacity = 0;
    kvec_plan_capacity(&cd.config, cd.budget, L, N, &capacity);
    plan_pair cpu_plan, gpu_plan;
    make_plan(cpu_plan, L, Hk, capacity);
    make_plan(gpu_plan, L, Hk, capacity);
    std::vector<std::vector<unsigned char>> before_k(L), before_v(L);
    for (int64_t l = 0; l < L; l++) { before_k[l] = m.keys[l].host; before_v[l] = m.values[l].host; }
    auto restore = [&](bool device_too) { /* the cache as it was before this case */
        for (int64_t l = 0; l < L; l++) {
            m.keys[l].host = before_k[l];
            m.values[l].host = before_v[l];
            if (!device_too) continue;
            CUDA_OK(cudaMemcpy(m.keys[l].device, before_k[l].data(), before_k[l].size(), cudaMemcpyHostToDevice));
            CUDA_OK(cudaMemcpy(m.values[l].device, before_v[l].data(), before_v[l].size(), cudaMemcpyHostToDevice));
        }
    };
    {
        size_t cpu_bytes = 0;
        kvec_scratch_bytes(&cd.config, &m.host_cache, 1, &cpu_bytes);
        std::vector<unsigned char> cpu_scratch(cpu_bytes);
        r = kvec_evict_ex(&cd.config, &m.host_cache, cd.budget, &cpu_plan.host, cpu_scratch.data(), cpu_bytes);
        CHECK(r == KVEC_OK, "%s: cpu evict: %s", what, kvec_result_string(r));
    }
    r = kvec_cuda_evict(&cd.config, &m.device_cache, cd.budget, &gpu_plan.device, scratch, scratch_bytes, NULL);
    CHECK(r == KVEC_OK, "%s: evict: %s", what, kvec_result_string(r));
    CHECK(kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_OK, "%s: evict status %d", what, (int)status);
    plan_to_host(gpu_plan);
    int64_t differences = 0, heads_differ = 0;
    for (int64_t l = 0; l < L; l++)
        for (int64_t j = 0; j < Hk; j++)
            if (!sets_agree(cpu_plan.host, gpu_plan.host, l, j, ref.data() + (l * Hk + j) * N, N - c.window, ranks,
                            &differences))
                heads_differ++;
    CHECK(heads_differ == 0, "%s: %lld heads keep other tokens than the CPU beyond ties", what, (long long)heads_differ);
    if (differences > 0) std::printf("  note: %s: %lld tokens swapped at ties with the CPU\n", what, (long long)differences);
    /* The CPU path's compaction by the device's plan, from the original bytes. */
    restore(false);
    r = kvec_compact(&m.host_cache, &gpu_plan.host);
    CHECK(r == KVEC_OK, "%s: cpu compaction by the device plan: %s", what, kvec_result_string(r));
    for (int64_t l = 0; l < L; l++) {
        CHECK(device_bytes(m.keys[l]) == m.keys[l].host, "%s: layer %lld keys not byte-exact", what, (long long)l);
        CHECK(device_bytes(m.values[l]) == m.values[l].host, "%s: layer %lld values not byte-exact", what, (long long)l);
    }
    /* Again from the same start: the same plan, bit for bit. */
    restore(true);
    {
        const std::vector<int64_t> counts = gpu_plan.counts, positions = gpu_plan.positions;
        r = kvec_cuda_evict(&cd.config, &m.device_cache, cd.budget, &gpu_plan.device, scratch, scratch_bytes, NULL);
        plan_to_host(gpu_plan);
        CHECK(r == KVEC_OK && counts == gpu_plan.counts && positions == gpu_plan.positions,
              "%s: a second eviction planned differently", what);
        restore(true); /* for the next case */
    }
    /* External scores: kvec_cuda_select on the CPU's scores plans what kvec_select plans. */
    {
        plan_pair ext;
        make_plan(ext, L, Hk, capacity);
        size_t select_bytes = kvec_select_scratch_bytes(&cd.config, L, Hk, N);
        std::vector<unsigned char> select_scratch(select_bytes + 1);
        r = kvec_select(&cd.config, ref.data(), L, Hk, N, cd.budget, &cpu_plan.host, select_scratch.data(), select_bytes);
        CHECK(r == KVEC_OK, "%s: cpu select: %s", what, kvec_result_string(r));
        CUDA_OK(cudaMemcpy(device_scores, ref.data(), ref.size() * 4, cudaMemcpyHostToDevice));
        CHECK(kvec_cuda_reset_status(scratch, NULL) == KVEC_OK, "%s: reset", what);
        r = kvec_cuda_select(&cd.config, device_scores, L, Hk, N, cd.budget, &ext.device, scratch, scratch_bytes, NULL);
        CHECK(r == KVEC_OK, "%s: device select: %s", what, kvec_result_string(r));
        plan_to_host(ext);
        bool same = true;
        for (int64_t h = 0; h < L * Hk && same; h++) {
            same = ext.counts[h] == cpu_plan.counts[h];
            for (int64_t q = 0; q < ext.counts[h] && same; q++)
                same = ext.positions[h * capacity + q] == cpu_plan.positions[h * capacity + q];
        }
        CHECK(same, "%s: kvec_cuda_select on the CPU's scores differs from kvec_select", what);
        free_plan(ext);
    }
    free_plan(cpu_plan);
    free_plan(gpu_plan);
    cudaFree(device_scores);
    cudaFree(scratch);
}

/* >>errors */

static void test_errors() {
    model m;
    make_model(m, 2, 2, 2, 32, 300, 32, KVEC_DTYPE_F16, KVEC_DTYPE_F32, LAYOUT_TOKEN_MAJOR);
    kvec_config c = {};
    size_t bytes = 0;
    CHECK(kvec_cuda_scratch_bytes(&c, &m.device_cache, &bytes) == KVEC_OK && bytes > 0, "scratch query");
    void *scratch = nullptr;
    CUDA_OK(cudaMalloc(&scratch, bytes));
    plan_pair p;
    make_plan(p, 2, 2, 100);
    const std::vector<int64_t> poisoned = p.positions;
    const std::vector<unsigned char> k0 = m.keys[0].host, v1 = m.values[1].host;
    auto untouched = [&](const char *what) {
        plan_to_host(p);
        CHECK(p.positions == poisoned, "%s: plan written", what);
        CHECK(device_bytes(m.keys[0]) == k0 && device_bytes(m.values[1]) == v1, "%s: cache written", what);
    };
    kvec_result r;
    /* Refused on the host: nothing is queued. */
    r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, NULL, bytes, NULL);
    CHECK(r == KVEC_ERROR_NULL_POINTER, "NULL scratch: %s", kvec_result_string(r));
    r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, scratch, bytes - 1, NULL);
    CHECK(r == KVEC_ERROR_SCRATCH_TOO_SMALL, "scratch one byte short: %s", kvec_result_string(r));
    r = kvec_cuda_evict(&c, &m.device_cache, 31, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_BUDGET_BELOW_WINDOW, "budget below window: %s", kvec_result_string(r));
    r = kvec_cuda_evict(&c, &m.device_cache, 101, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_PLAN_TOO_SMALL, "plan capacity below budget: %s", kvec_result_string(r));
    kvec_config unsupported = {};
    unsupported.budget_mode = KVEC_BUDGET_ADAPTIVE;
    r = kvec_cuda_evict(&unsupported, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_BAD_CONFIG, "adaptive budget on the device: %s", kvec_result_string(r));
    unsupported = kvec_config();
    unsupported.budget_mode = KVEC_BUDGET_GLOBAL;
    r = kvec_cuda_evict(&unsupported, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_BAD_CONFIG, "global budget on the device: %s", kvec_result_string(r));
    kvec_config critical = {};
    critical.policy = KVEC_POLICY_CRITICALKV;
    kvec_tensor no_out_proj = m.device_layers[0].out_proj;
    m.device_layers[0].out_proj.data = NULL;
    r = kvec_cuda_evict(&critical, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_MISSING_OUT_PROJ, "CriticalKV without out_proj: %s", kvec_result_string(r));
    m.device_layers[0].out_proj = no_out_proj;
    kvec_layer saved = m.device_layers[1];
    m.device_layers[1].queries.data = NULL;
    r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_MISSING_QUERIES, "no queries: %s", kvec_result_string(r));
    m.device_layers[1] = saved;
    /* Sizes past int64 and shared memory are refused on the host too. */
    r = kvec_cuda_select(&c, (const float *)scratch, INT64_MAX / 2, 4, 1, 100, &p.device, scratch, bytes, NULL);
    CHECK(r == KVEC_ERROR_SIZE_OVERFLOW, "select: L * Hk past int64: %s", kvec_result_string(r));
    {   /* a window past every length reads only the rows there are */
        kvec_config huge = {};
        huge.window = INT64_MAX;
        size_t huge_bytes = 0;
        r = kvec_cuda_scratch_bytes(&huge, &m.device_cache, &huge_bytes);
        CHECK(r == KVEC_OK && huge_bytes <= bytes, "scratch for a window of INT64_MAX: %s, %zu bytes",
              kvec_result_string(r), huge_bytes);
    }
    r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, m.keys[0].device, bytes, NULL);
    CHECK(r == KVEC_ERROR_OVERLAP, "scratch over the keys: %s", kvec_result_string(r));
    {
        kvec_plan shared = p.device;
        shared.kept_positions = shared.kept_count; /* counts and positions in one array */
        r = kvec_cuda_compact(&m.device_cache, &shared, scratch, bytes, NULL);
        CHECK(r == KVEC_ERROR_OVERLAP, "plan arrays overlapping: %s", kvec_result_string(r));
    }
    untouched("host-side refusals");

    /* NaN in the keys of layer 1, found on the device. */
    {
        std::vector<unsigned char> bad = m.keys[1].host;
        store(KVEC_DTYPE_F16, bad.data() + 77 * m.keys[1].view.stride_token, NAN);
        CUDA_OK(cudaMemcpy(m.keys[1].device, bad.data(), bad.size(), cudaMemcpyHostToDevice));
        r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
        kvec_result status = KVEC_OK;
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_NON_FINITE,
              "NaN key: queued %s, status %s", kvec_result_string(r), kvec_result_string(status));
        CHECK(device_bytes(m.keys[1]) == bad, "NaN key: layer 1 keys written");
        untouched("NaN key");
        /* A chain score -> select -> compact stops at the score's error. */
        float *scores = nullptr;
        CUDA_OK(cudaMalloc((void **)&scores, (size_t)(2 * 2 * 300 * 4)));
        r = kvec_cuda_score(&c, &m.device_cache, 100, scores, scratch, bytes, NULL);
        CHECK(r == KVEC_OK, "chain score: %s", kvec_result_string(r));
        r = kvec_cuda_select(&c, scores, 2, 2, 300, 100, &p.device, scratch, bytes, NULL);
        CHECK(r == KVEC_OK, "chain select: %s", kvec_result_string(r));
        r = kvec_cuda_compact(&m.device_cache, &p.device, scratch, bytes, NULL);
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_NON_FINITE,
              "chain after NaN: status %s", kvec_result_string(status));
        untouched("chain after a NaN key");
        cudaFree(scores);
        CUDA_OK(cudaMemcpy(m.keys[1].device, m.keys[1].host.data(), bad.size(), cudaMemcpyHostToDevice));
    }
    /* Inf in the queries. */
    {
        std::vector<unsigned char> bad = m.queries[0].host;
        store(KVEC_DTYPE_F32, bad.data() + 5 * m.queries[0].view.stride_token + 3 * 4, INFINITY);
        CUDA_OK(cudaMemcpy(m.queries[0].device, bad.data(), bad.size(), cudaMemcpyHostToDevice));
        r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, scratch, bytes, NULL);
        kvec_result status = KVEC_OK;
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_NON_FINITE,
              "Inf query: status %s", kvec_result_string(status));
        untouched("Inf query");
        CUDA_OK(cudaMemcpy(m.queries[0].device, m.queries[0].host.data(), bad.size(), cudaMemcpyHostToDevice));
    }
    /* An external plan that is not ascending: BAD_PLAN, nothing moved. */
    {
        std::vector<int64_t> counts(4, 3), positions(4 * 100, 0);
        for (int h = 0; h < 4; h++) { positions[h * 100] = 10; positions[h * 100 + 1] = 20; positions[h * 100 + 2] = 30; }
        positions[2 * 100 + 2] = 15; /* head 2: 10, 20, 15 */
        CUDA_OK(cudaMemcpy(p.device_counts, counts.data(), 32, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(p.device_positions, positions.data(), positions.size() * 8, cudaMemcpyHostToDevice));
        CHECK(kvec_cuda_reset_status(scratch, NULL) == KVEC_OK, "reset");
        r = kvec_cuda_compact(&m.device_cache, &p.device, scratch, bytes, NULL);
        kvec_result status = KVEC_OK;
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_BAD_PLAN,
              "descending plan: status %s", kvec_result_string(status));
        CHECK(device_bytes(m.keys[0]) == k0 && device_bytes(m.values[1]) == v1, "bad plan: cache written");
        /* The same plan made ascending compacts, byte-exact with the CPU. */
        positions[2 * 100 + 2] = 25;
        CUDA_OK(cudaMemcpy(p.device_positions, positions.data(), positions.size() * 8, cudaMemcpyHostToDevice));
        CHECK(kvec_cuda_reset_status(scratch, NULL) == KVEC_OK, "reset");
        r = kvec_cuda_compact(&m.device_cache, &p.device, scratch, bytes, NULL);
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_OK,
              "ascending plan: %s / %s", kvec_result_string(r), kvec_result_string(status));
        kvec_plan hp = p.host;
        hp.kept_count = counts.data(); hp.kept_positions = positions.data();
        CHECK(kvec_compact(&m.host_cache, &hp) == KVEC_OK, "cpu compaction");
        for (int l = 0; l < 2; l++)
            CHECK(device_bytes(m.keys[l]) == m.keys[l].host && device_bytes(m.values[l]) == m.values[l].host,
                  "external plan: layer %d not byte-exact", l);
    }
    /* Scratch at any alignment: the status word and the regions move with it. */
    {
        void *bigger = nullptr;
        CUDA_OK(cudaMalloc(&bigger, bytes + 8));
        void *odd = (char *)bigger + 8;
        r = kvec_cuda_evict(&c, &m.device_cache, 100, &p.device, odd, bytes, NULL);
        kvec_result status = KVEC_ERROR_CUDA;
        CHECK(r == KVEC_OK && kvec_cuda_status(odd, NULL, &status) == KVEC_OK && status == KVEC_OK,
              "scratch 8 bytes past an allocation: %s / %s", kvec_result_string(r), kvec_result_string(status));
        cudaFree(bigger);
    }
    free_plan(p);
    cudaFree(scratch);
    free_model(m);
}

/* >>main */

/* For a scorer's device test: `bytes` of device scratch (a size of 0 is
   the scratch query's refusal, a failed check) and a device copy of the
   scores' starting values, whose untouched columns are then compared. */
static void device_scratch_and_scores(size_t bytes, const std::vector<float> &initial, void **scratch,
                                      float **device_scores) {
    CHECK(bytes > 0, "device scratch");
    CUDA_OK(cudaMalloc(scratch, bytes ? bytes : 1));
    CUDA_OK(cudaMalloc((void **)device_scores, initial.size() * sizeof(float)));
    CUDA_OK(cudaMemcpy(*device_scores, initial.data(), initial.size() * sizeof(float), cudaMemcpyHostToDevice));
}

/* >>reconstruction scores: the device's against the CPU's, for shapes that
   cross several of the CPU's row blocks and key tiles, in every dtype and
   layout; columns outside the chunk untouched; a NaN in a pass query found
   on the device, the scores then left as they were; a host refusal. */
static void test_reconstruction(bool quick) {
    static const int64_t shapes[][8] = { /* N, Hk, g, D, R, begin, end, sinks */
        { 40, 1, 1, 8, 24, 10, 30, 4 },  { 200, 2, 3, 16, 150, 40, 190, 4 },
        { 96, 3, 2, 24, 100, 0, 96, 4 }, { 300, 2, 4, 64, 180, 120, 290, 70 },
    };
    const int n_shapes = quick ? 3 : 4;
    for (int s = 0; s < n_shapes; s++) {
        const int64_t *x = shapes[s];
        const int64_t N = x[0], Hk = x[1], g = x[2], D = x[3], R = x[4];
        const kvec_dtype dtype = (kvec_dtype)(1 + s % 3);
        tensor keys, pq, pk;
        make_tensor(keys, dtype, N, Hk, D, s % LAYOUT_COUNT, 1.0f);
        make_tensor(pq, dtype, R, Hk * g, D, LAYOUT_TOKEN_MAJOR, 1.5f);
        make_tensor(pk, dtype, R, Hk, D, (s + 1) % LAYOUT_COUNT, 1.0f);
        kvec_config c = {};
        c.sink_tokens = x[7];
        kvec_layer host_layer = {}, device_layer = {};
        host_layer.keys = keys.view;
        device_layer.keys = keys.device_view;
        kvec_reconstruction host_pass = { pq.view, pk.view, x[5], x[6] };
        kvec_reconstruction device_pass = { pq.device_view, pk.device_view, x[5], x[6] };
        std::vector<float> cpu((size_t)(Hk * N), -7.0f), gpu((size_t)(Hk * N), -7.0f);
        size_t cpu_bytes = 0;
        CHECK(kvec_reconstruction_scratch_bytes(&c, &host_layer, &host_pass, &cpu_bytes) == KVEC_OK, "cpu scratch");
        std::vector<unsigned char> cpu_scratch(cpu_bytes);
        CHECK(kvec_reconstruction_scores(&c, &host_layer, &host_pass, cpu.data(), cpu_scratch.data(), cpu_bytes) == KVEC_OK,
              "cpu scores");
        const size_t bytes = kvec_cuda_reconstruction_scratch_bytes(&c, &device_layer, &device_pass);
        void *scratch = nullptr;
        float *device_scores = nullptr;
        device_scratch_and_scores(bytes, gpu, &scratch, &device_scores);
        kvec_result r = kvec_cuda_reconstruction_scores(&c, &device_layer, &device_pass, device_scores, scratch, bytes, NULL);
        kvec_result status = KVEC_ERROR_CUDA;
        CHECK(r == KVEC_OK, "shape %d: %s", s, kvec_result_string(r));
        CHECK(kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_OK, "shape %d: status %d", s, (int)status);
        CUDA_OK(cudaMemcpy(gpu.data(), device_scores, gpu.size() * sizeof(float), cudaMemcpyDeviceToHost));
        double worst = 0.0;
        bool outside = true;
        for (int64_t i = 0; i < Hk * N; i++) {
            const int64_t t = i % N;
            if (t < x[5] || t >= x[6]) outside &= gpu[(size_t)i] == -7.0f;
            else worst = std::fmax(worst, std::fabs(gpu[(size_t)i] - cpu[(size_t)i]) / (cpu[(size_t)i] + 1e-6));
        }
        CHECK(worst < 1e-4, "shape %d (%s): device scores differ from the CPU's by %g relative", s, dtype_name(dtype), worst);
        CHECK(outside, "shape %d: a column outside the chunk was written", s);
        /* NaN in a pass query: found on the device, nothing written */
        std::vector<unsigned char> poisoned = pq.host;
        store(dtype, poisoned.data() + pq.view.stride_token * (R / 2), NAN);
        CUDA_OK(cudaMemcpy(pq.device, poisoned.data(), poisoned.size(), cudaMemcpyHostToDevice));
        std::vector<float> before = gpu;
        r = kvec_cuda_reconstruction_scores(&c, &device_layer, &device_pass, device_scores, scratch, bytes, NULL);
        CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_NON_FINITE,
              "shape %d: NaN in a pass query: %s / status %s", s, kvec_result_string(r), kvec_result_string(status));
        CUDA_OK(cudaMemcpy(gpu.data(), device_scores, gpu.size() * sizeof(float), cudaMemcpyDeviceToHost));
        CHECK(gpu == before, "shape %d: scores written after a NaN", s);
        /* refused on the host: a pass shorter than its chunk */
        kvec_reconstruction short_pass = device_pass;
        short_pass.chunk_begin = 0;
        short_pass.chunk_end = N < R + 1 ? N : R + 1;
        if (short_pass.chunk_end > R) {
            r = kvec_cuda_reconstruction_scores(&c, &device_layer, &short_pass, device_scores, scratch, bytes, NULL);
            CHECK(r == KVEC_ERROR_SHAPE_MISMATCH, "shape %d: a pass shorter than its chunk: %s", s, kvec_result_string(r));
        }
        cudaFree(scratch);
        cudaFree(device_scores);
        free_tensor(keys); free_tensor(pq); free_tensor(pk);
    }
    std::printf("test_cuda: reconstruction scores compared with the CPU's on %d shapes\n", n_shapes);
}

/* >>learned scores: the device's against the CPU's, linear and MLP, both
   outputs, every dtype and layout of the hidden states, columns past T
   untouched; a NaN weight found on the device, nothing written; a host
   refusal. */
static void test_learned(bool quick) {
    const uint64_t saved_rng = g_rng; /* its own numbers: the tests after it see the draws they saw before it */
    static const int64_t shapes[][4] = { /* T, E, Hk, F (0: linear) */
        { 40, 16, 2, 0 }, { 70, 24, 3, 9 }, { 33, 8, 1, 40 }, { 130, 48, 2, 0 },
    };
    const int n_shapes = quick ? 3 : 4;
    for (int sh = 0; sh < n_shapes; sh++) {
        const int64_t T = shapes[sh][0], E = shapes[sh][1], Hk = shapes[sh][2], F = shapes[sh][3], stride = T + 3;
        const int64_t rows = F ? F : Hk;
        const kvec_dtype dtype = (kvec_dtype)(1 + sh % 3);
        tensor hidden;
        make_tensor(hidden, dtype, T, 1, E, sh % 3 == 2 ? LAYOUT_PADDED : LAYOUT_TOKEN_MAJOR, 1.0f);
        std::vector<float> weights((size_t)(rows * E + rows + Hk * F + Hk));
        for (float &w : weights) w = normal() * 0.3f;
        float *device_weights = nullptr;
        CUDA_OK(cudaMalloc((void **)&device_weights, weights.size() * sizeof(float)));
        CUDA_OK(cudaMemcpy(device_weights, weights.data(), weights.size() * sizeof(float), cudaMemcpyHostToDevice));
        for (int output = 0; output < 2; output++) {
            kvec_scorer host = {}, device = {};
            host.kind = F ? KVEC_SCORER_MLP : KVEC_SCORER_LINEAR;
            host.output = (kvec_scorer_output)output;
            host.n_embd = E; host.n_kv_heads = Hk; host.n_hidden = F;
            host.weight = weights.data(); host.bias = host.weight + rows * E;
            if (F) { host.weight2 = host.bias + rows; host.bias2 = host.weight2 + Hk * F; }
            device = host;
            device.weight = device_weights; device.bias = device.weight + rows * E;
            if (F) { device.weight2 = device.bias + rows; device.bias2 = device.weight2 + Hk * F; }
            std::vector<float> cpu((size_t)(Hk * stride), -7.0f), gpu = cpu;
            size_t cpu_bytes = 0;
            CHECK(kvec_learned_scores_scratch_bytes(&host, &cpu_bytes) == KVEC_OK, "cpu scratch");
            std::vector<unsigned char> cpu_scratch(cpu_bytes);
            CHECK(kvec_learned_scores(&host, &hidden.view, cpu.data(), stride, cpu_scratch.data(), cpu_bytes) == KVEC_OK,
                  "cpu scores");
            const size_t bytes = kvec_cuda_learned_scores_scratch_bytes(&device, &hidden.device_view);
            void *scratch = nullptr;
            float *device_scores = nullptr;
            device_scratch_and_scores(bytes, gpu, &scratch, &device_scores);
            kvec_result r = kvec_cuda_learned_scores(&device, &hidden.device_view, device_scores, stride, scratch, bytes,
                                                     NULL);
            kvec_result status = KVEC_ERROR_CUDA;
            CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_OK,
                  "shape %d output %d: %s / status %s", sh, output, kvec_result_string(r), kvec_result_string(status));
            CUDA_OK(cudaMemcpy(gpu.data(), device_scores, gpu.size() * sizeof(float), cudaMemcpyDeviceToHost));
            double worst = 0.0;
            bool outside = true;
            for (int64_t j = 0; j < Hk; j++)
                for (int64_t t = 0; t < stride; t++) {
                    const size_t i = (size_t)(j * stride + t);
                    if (t >= T) outside &= gpu[i] == -7.0f;
                    else worst = std::fmax(worst, std::fabs(gpu[i] - cpu[i]) / (1.0 + std::fabs(cpu[i])));
                }
            CHECK(worst < 1e-5, "shape %d output %d (%s): device scores differ from the CPU's by %g", sh, output,
                  dtype_name(dtype), worst);
            CHECK(outside, "shape %d: a column past T was written", sh);
            /* a NaN bias: found on the device, nothing written */
            const float nan = NAN;
            std::vector<float> before = gpu;
            CUDA_OK(cudaMemcpy((void *)device.bias, &nan, sizeof nan, cudaMemcpyHostToDevice));
            r = kvec_cuda_learned_scores(&device, &hidden.device_view, device_scores, stride, scratch, bytes, NULL);
            CHECK(r == KVEC_OK && kvec_cuda_status(scratch, NULL, &status) == KVEC_OK && status == KVEC_ERROR_NON_FINITE,
                  "shape %d: a NaN bias: %s / status %s", sh, kvec_result_string(r), kvec_result_string(status));
            CUDA_OK(cudaMemcpy(gpu.data(), device_scores, gpu.size() * sizeof(float), cudaMemcpyDeviceToHost));
            CHECK(gpu == before, "shape %d: scores written after a NaN", sh);
            CUDA_OK(cudaMemcpy((void *)device.bias, host.bias, sizeof(float), cudaMemcpyHostToDevice));
            /* refused on the host */
            CHECK(kvec_cuda_learned_scores(&device, &hidden.device_view, device_scores, T - 1, scratch, bytes, NULL) ==
                      KVEC_ERROR_BAD_STRIDE, "shape %d: a stride below T", sh);
            CHECK(kvec_cuda_learned_scores(&device, &hidden.device_view, device_scores, stride, scratch, bytes - 1, NULL) ==
                      KVEC_ERROR_SCRATCH_TOO_SMALL, "shape %d: scratch one byte short", sh);
            cudaFree(scratch);
            cudaFree(device_scores);
        }
        cudaFree(device_weights);
        free_tensor(hidden);
    }
    g_rng = saved_rng;
    std::printf("test_cuda: learned scores compared with the CPU's on %d shapes\n", n_shapes);
}

int main(int argc, char **argv) {
    int devices = 0;
    /* --quick: four small shapes (make test-all's sanitizer build); --smoke:
       the same four kinds of shape at a few hundred tokens at most, every
       policy and term once (make test, which should answer in seconds). */
    const bool smoke = argc > 1 && std::strcmp(argv[1], "--smoke") == 0;
    const bool quick = smoke || (argc > 1 && std::strcmp(argv[1], "--quick") == 0);
    cudaError_t e = cudaGetDeviceCount(&devices);
    if (e != cudaSuccess || devices == 0) {
        std::printf("test_cuda: skipped: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found");
        return 0;
    }
#ifdef KVEC_CUDA_EMULATE
    std::printf("test_cuda: kernels emulated on the CPU (tests/cuda_emulator.h)\n");
#endif
    test_errors();
    test_reconstruction(quick);
    test_learned(quick);

    const kvec_policy policies[] = { KVEC_POLICY_KVEC, KVEC_POLICY_SNAPKV, KVEC_POLICY_PYRAMIDKV, KVEC_POLICY_H2O,
                                     KVEC_POLICY_TOVA, KVEC_POLICY_KNORM, KVEC_POLICY_KEYDIFF,
                                     KVEC_POLICY_STREAMING, KVEC_POLICY_RANDOM, KVEC_POLICY_CRITICALKV,
                                     KVEC_POLICY_LAPROX };
    const int n_shapes = quick ? 4 : 10;
    for (int shape = 0; shape < n_shapes; shape++) {
        /* Shapes: small ones of every kind, then (without --quick) larger ones. */
        /* Key dtypes rotate f32, f16, bf16, f16, bf16, f32, ...; fp16 and bf16 keys
           with head_dim a multiple of 16 and contiguous dims take the tensor-core
           tile, the others (and shape 3's odd multiple of 8, and the dim-major
           layout of shapes 3, 7) the SIMT tile. */
        const kvec_dtype kv = (kvec_dtype)(1 + (shape + shape / 3) % 3);
        const int64_t D = shape % 4 == 3       ? 8 * (2 * pick(0, quick ? 2 : 8) + 1)
                        : kv == KVEC_DTYPE_F32 ? pick(1, 40)
                                               : 16 * pick(1, quick ? 4 : 12);
        const int64_t Hk = pick(1, 3), g = pick(1, 4);
        /* Odd shapes carry 4W query rows, for K-VEC's head focus. */
        const int64_t W = pick(2, 12) * 2, Wq = shape % 2 ? 4 * W + pick(0, 10) : W + pick(0, 20);
        const int64_t N = smoke ? pick(Wq + 1, Wq + 160) : quick ? pick(Wq + 1, 600) : pick(Wq + 1, shape < 6 ? 1500 : 6000);
        const int64_t L = pick(1, 3);
        const kvec_dtype q = shape % 2 ? KVEC_DTYPE_F32 : kv;
        model m;
        make_model(m, L, Hk, g, D, N, Wq, kv, q, shape % LAYOUT_COUNT);
        for (const kvec_policy policy : policies) {
            case_desc cd;
            cd.config = kvec_config();
            cd.config.policy = policy;
            cd.config.window = W;
            cd.name = kvec_policy_name(policy);
            if (shape == 1 && policy == KVEC_POLICY_SNAPKV) { cd.config.pooling = KVEC_POOL_MAX; cd.config.pool_kernel = 7; cd.name = "snapkv max7"; }
            if (shape == 2 && policy == KVEC_POLICY_SNAPKV) { cd.config.pool_kernel = 1; cd.name = "snapkv unpooled"; }
            cd.budget = W + pick(0, N - W) ; /* from the window alone to everything */
            if (shape % 4 == 3) cd.budget = N + 5;
            run_case(cd, m, quick);
        }
        /* K-VEC without the rank union (z-scores compared directly), and with other weights. */
        case_desc cd;
        cd.config = kvec_config();
        cd.config.window = W;
        cd.config.terms.enabled = KVEC_TERM_UNIQUENESS;
        cd.config.terms.mu = 0.5f + (float)shape;
        cd.name = "kvec z-score sum";
        cd.budget = W + (N - W) / 3;
        run_case(cd, m, quick);
        cd.config.terms.enabled = KVEC_TERM_NONE;
        cd.name = "kvec no terms";
        run_case(cd, m, quick);
        /* The optional terms, alone and all together (focus where the queries allow). */
        const uint32_t base = KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION;
        const struct { uint32_t terms; const char *name; } optional[] = {
            { base | KVEC_TERM_CROSS_HEAD, "kvec cross-head" },
            { base | KVEC_TERM_CROSS_LAYER, "kvec cross-layer" },
            { KVEC_TERM_CROSS_LAYER, "kvec cross-layer alone" },
            { base | KVEC_TERM_HEAD_FOCUS, "kvec head focus" },
            { base | KVEC_TERM_CROSS_HEAD | KVEC_TERM_CROSS_LAYER | KVEC_TERM_HEAD_FOCUS, "kvec all terms" } };
        for (const auto &o : optional) {
            if ((o.terms & KVEC_TERM_HEAD_FOCUS) && Wq < 4 * W && Wq < N) continue;
            cd.config = kvec_config();
            cd.config.window = W;
            cd.config.terms.enabled = o.terms;
            cd.config.terms.focus_cv = 1.5f; /* random attention is flat: some heads widen, some not */
            cd.config.terms.gamma = 2.0f;    /* a coverage bonus large enough to move many tokens */
            cd.name = o.name;
            cd.budget = W + pick(1, N - W);
            if (shape % 2) { cd.config.policy = KVEC_POLICY_KVEC; cd.config.budget_mode = KVEC_BUDGET_PYRAMID; }
            run_case(cd, m, quick);
        }
        /* The rank union with an unequal split of the free slots. */
        cd.config = kvec_config();
        cd.config.window = W;
        cd.config.terms.attention_share = shape % 2 ? 0.25f : 0.7f;
        cd.config.terms.mu = 2.0f;
        cd.name = "kvec attention share";
        cd.budget = W + pick(1, N - W);
        run_case(cd, m, quick);
        free_model(m);
    }
    std::printf("test_cuda: %d checks, %d failed\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}
