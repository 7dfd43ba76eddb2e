/* kvec_cuda.cu - the device path of kvec.h - MIT license (see kvec.h)

   One translation unit: compile it with nvcc and link it beside your code.

       nvcc -O3 -std=c++17 -gencode=arch=compute_90,code=sm_90 -c kvec_cuda.cu

   The functions are declared in kvec.h (section ">>cuda api"); they take
   the same kvec_cache, kvec_config and kvec_plan as the CPU path, with
   device pointers inside. They select what the CPU path selects (same
   formulas, same tie rules; see "Agreement with the CPU path" below).

   WHAT RUNS WHERE

   The host checks descriptors, budgets and the scratch size, then queues
   kernels on the caller's stream and returns. Nothing is allocated and
   nothing waits, except kvec_cuda_status (it must read the device) and
   kvec_cuda_scratch_bytes (CUB's temporary-storage query needs the device).
   What the host cannot see is checked on the device: NaN or Inf in the
   keys or queries, and an external plan that is not ascending. Such an
   error is written into a status word at the start of the scratch; every
   later kernel of the chain reads it first and does nothing, so the cache
   and the plan stay as they were.

   STEPS, PER LAYER (every kernel is named kc_*)

     window attention    kc_attn_stats, kc_attn_combine, kc_attn_probs:
                         each row's softmax maximum and normaliser over key
                         splits (online update), combined in split order,
                         then the probabilities summed over the rows for
                         each key tile. Nothing of size rows x N is stored:
                         the logits are computed twice instead.
     pooling             kc_pool (same padding, padding not counted)
     K-VEC               kc_key_direction_part/_combine (mean normalised
                         key), kc_uniqueness, kc_moments (z-scores, in
                         double), the rank union by two radix sorts (CUB,
                         all heads of the layer in one), kc_kvec_combine,
                         kc_rank_union
     head focus          a second window attention over 4W rows, kc_focus_pick
     output-aware        kc_output_norm (W_o^h v through the SIMT tile,
                         |y| or y^2 summed), kc_output_mean, then
                         kc_criticalkv (first stage by block radix select)
                         or kc_laprox (the layer's mean, one block)
     other policies      kc_key_norm, kc_simple_scores (StreamingLLM,
                         Random), kc_finish (H2O's normalisation, the
                         window), kc_tova_average
   then, for all layers at once (up to KC_BATCH layers per launch):
     selection           kc_select: radix select of the top B - W per
                         (layer, KV head), ties to the lower position
     compaction          kc_compact: in place, rows moved front to back in
                         chunks; a chunk is loaded completely before any of
                         it is stored, and its sources lie at or after its
                         destinations, so no row is read after it is
                         overwritten
   K-VEC's cross-layer term selects layer by layer (kc_select for one
   layer, then kc_mark_coverage) so each layer sees what the earlier ones
   kept; the cross-head term selects the heads of a layer in order, in one
   block.

   NOT ON THE DEVICE YET (KVEC_ERROR_BAD_CONFIG): adaptive and global
   budgets (shared pools).

   AGREEMENT WITH THE CPU PATH

   Scores are the same formulas in fp32 (moments, norms and dot products in
   double), summed in another order: they agree to about 1e-5 relative, and
   StreamingLLM's and Random's exactly. Selection is the CPU's radix select
   on the same 32-bit order key, so equal scores give equal kept sets; two
   tokens whose scores differ by less than the rounding above may swap. The
   rank union's scores are ranks (integers), so such a swap shows as ranks
   exchanged between the two tokens. Every reduction runs in a fixed order:
   the same inputs give the same bits on every run.

   BUILD OPTIONS

   KVEC_CUDA_DEBUG   synchronise and check for errors after every launch
                     (slow; for tests and compute-sanitizer runs).
   KVEC_CUDA_EMULATE tests only: compiled as C++ with tests/cuda_emulator.h
                     force-included, the kernels run on the CPU, one block
                     at a time with a fiber per thread (see that file).
*/

#define KVEC_STATIC /* a private copy of the host helpers: no clash with the engine's */
#define KVEC_IMPLEMENTATION
#include "kvec.h"

#ifndef KVEC_CUDA_EMULATE /* tests/cuda_emulator.h stands in for these when testing without a GPU */
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_radix_sort.cuh>
#define KC_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* >>constants */

#define KC_TILE     64   /* keys per attention tile */
#define KC_ROWS     64   /* (query row, head) pairs per attention tile */
#define KC_DCHUNK   32   /* head dims staged in shared memory at a time */
#define KC_THREADS  256  /* attention block: 16 x 16 threads, 4 x 4 logits each */
#define KC_SPLITS   64   /* most key ranges the statistics pass splits a head into */
#define KC_SPLIT_BLOCKS 1024 /* blocks the statistics pass aims at per layer */
#define KC_KEY_SPLITS 32 /* key ranges of the mean key direction */
#define KC_SELECT_THREADS 1024
#define KC_BATCH    16   /* layers per selection or compaction launch */

/* >>device views */

/* A kvec_tensor as kernels take it, by value. */
struct kc_view {
    char   *data;
    int     dtype;
    int64_t n_tokens, n_heads, head_dim;
    int64_t stride_token, stride_head, stride_dim;
};

static kc_view kc_view_of(const kvec_tensor &t) {
    kc_view v;
    v.data = (char *)t.data; v.dtype = (int)t.dtype;
    v.n_tokens = t.n_tokens; v.n_heads = t.n_heads; v.head_dim = t.head_dim;
    v.stride_token = t.stride_token; v.stride_head = t.stride_head; v.stride_dim = t.stride_dim;
    return v;
}

__device__ __forceinline__ const char *kc_at(const kc_view &v, int64_t t, int64_t h, int64_t d) {
    return v.data + t * v.stride_token + h * v.stride_head + d * v.stride_dim;
}

__device__ __forceinline__ float kc_load(const kc_view &v, int64_t t, int64_t h, int64_t d) {
    const char *p = kc_at(v, t, h, d);
    if (v.dtype == KVEC_DTYPE_F32) return *(const float *)p;
    if (v.dtype == KVEC_DTYPE_F16) return __half2float(*(const __half *)p);
    return __bfloat162float(*(const __nv_bfloat16 *)p);
}

/* The CPU's keep order as an unsigned key (kvec__order_key): larger score,
   larger key; NaN below everything; -0 equal to +0. */
__device__ __forceinline__ uint32_t kc_order_key(float score) {
    uint32_t bits;
    if (score != score) return 0;
    if (score == 0.0f) score = 0.0f;
    bits = __float_as_uint(score);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ uint64_t kc_mix(uint64_t x) { /* kvec__mix: splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The first error wins; later ones leave it. */
__device__ __forceinline__ void kc_fail(int32_t *status, int32_t code) { atomicCAS(status, 0, code); }

/* Every kernel starts here: an error earlier in the chain means "do nothing".
   A barrier that ORs the flag over the block, so that a status set by
   another block in the middle of the check cannot split this block (some
   threads gone, the rest waiting at a later barrier). */
#define KC_STOP_ON_ERROR(status) \
    do { if (__syncthreads_or(*(volatile const int32_t *)(status) != 0)) return; } while (0)

/* >>window attention

   The flattened rows x = r * g + hh (position-major, as on the CPU): query
   row row_first + x / g of query head kv_head * g + x % g, at position
   first_position + x / g, sees keys 0 .. its position. */
struct kc_attn {
    kc_view keys, queries;
    int64_t g;              /* query heads per KV head */
    int64_t row_first;      /* first query row used */
    int64_t total;          /* n_rows * g flattened rows */
    int64_t first_position; /* position of row row_first */
    int64_t n_out;          /* probabilities summed for keys 0 .. n_out-1 */
    float   scale;          /* 1 / sqrt(D) */
    float   weight;         /* factor on every probability (1/g: group mean) */
};

/* Logits of one tile, two ways (the kernels are templates on which):

     acc[i][k] = scale * q(x0 + 4*tr + i) . k(t0 + 4*tk + k),
     tr = thread / 16, tk = thread % 16, for the 256 threads of a block.

   Out-of-range rows and keys give 0. Keys are checked for NaN and Inf on
   the way when check_keys is set. Both begin with a barrier (the previous
   tile's readers of shared memory are done) and need no other care from
   their caller. */
enum { KC_TILE_SIMT = 0, KC_TILE_MMA_F16 = 1, KC_TILE_MMA_BF16 = 2 };

/* Element d0 + d of flattened row x0 + x, scaled: what both tiles stage
   (0 outside the chunk's rows or dims). */
__device__ __forceinline__ float kc_query(const kc_attn &a, int64_t j, int64_t x0, int x, int chunk, int64_t d0,
                                          int d, int dc) {
    if (x >= chunk || d >= dc) return 0.0f;
    const int64_t xx = x0 + x;
    return kc_load(a.queries, a.row_first + xx / a.g, j * a.g + xx % a.g, d0 + d) * a.scale;
}

/* SIMT: fp32 on the CUDA cores, D in chunks of 32 through shared memory. */
__device__ void kc_tile_logits_simt(const kc_attn &a, int64_t j, int64_t t0, int count, int64_t x0, int chunk,
                                    float acc[4][4], bool check_keys, int *bad) {
    __shared__ float ks[KC_DCHUNK][KC_TILE + 1];
    __shared__ float qs[KC_DCHUNK][KC_ROWS + 1];
    const int tid = threadIdx.x, tr = tid / 16, tk = tid % 16;
    const int64_t D = a.keys.head_dim;
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++) acc[i][k] = 0.0f;
    for (int64_t d0 = 0; d0 < D; d0 += KC_DCHUNK) {
        const int dc = (int)(D - d0 < KC_DCHUNK ? D - d0 : KC_DCHUNK);
        __syncthreads(); /* the previous chunk's reads of ks and qs are done */
        for (int e = tid; e < KC_TILE * KC_DCHUNK; e += KC_THREADS) {
            const int c = e / KC_DCHUNK, d = e % KC_DCHUNK;
            float v = 0.0f;
            if (c < count && d < dc) {
                v = kc_load(a.keys, t0 + c, j, d0 + d);
                if (check_keys && !isfinite(v)) atomicOr(bad, 1);
            }
            ks[d][c] = v;
        }
        for (int e = tid; e < KC_ROWS * KC_DCHUNK; e += KC_THREADS)
            qs[e % KC_DCHUNK][e / KC_DCHUNK] = kc_query(a, j, x0, e / KC_DCHUNK, chunk, d0, e % KC_DCHUNK, dc);
        __syncthreads();
        for (int d = 0; d < dc; d++) {
            float kv[4], qv[4];
            for (int i = 0; i < 4; i++) { qv[i] = qs[d][tr * 4 + i]; kv[i] = ks[d][tk * 4 + i]; }
            for (int i = 0; i < 4; i++)
                for (int k = 0; k < 4; k++) acc[i][k] = fmaf(qv[i], kv[k], acc[i][k]);
        }
    }
}

/* Tensor cores (WMMA, 16x16x16, fp32 accumulators) for fp16 and bf16 keys
   with head_dim a multiple of 16. The keys are exact in their own type; the
   scaled fp32 query is split into q_hi = T(q) and q_lo = T(q - q_hi), and
   both products go into the same accumulator, so the logits carry the
   query's error only at 2^-22 (fp16) or 2^-16 (bf16) instead of 2^-11 or
   2^-8: close to the fp32 SIMT path, at twice the tensor work. Warp w
   computes keys 16*(w % 4) .. +15 against rows 32*(w / 4) .. +31 (two
   accumulator fragments); the tile goes through shared memory, [key][row],
   to the 4 x 4 layout the kernels consume. */
#define KC_MMA_DCHUNK 32
#define KC_MMA_PAD    8 /* halves per staged row: 80-byte rows keep fragments 32-byte aligned */

template <typename T> __device__ __forceinline__ T kc_to(float v);
template <> __device__ __forceinline__ __half kc_to<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 kc_to<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ float kc_from(__half v) { return __half2float(v); }
__device__ __forceinline__ float kc_from(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ void kc_tile_logits_mma(const kc_attn &a, int64_t j, int64_t t0, int count, int64_t x0, int chunk,
                                   float acc[4][4], bool check_keys, int *bad) {
    using namespace nvcuda;
    const int ld = KC_MMA_DCHUNK + KC_MMA_PAD;
    __shared__ __align__(32) T ks[KC_TILE][KC_MMA_DCHUNK + KC_MMA_PAD];
    __shared__ __align__(32) T q_hi[KC_ROWS][KC_MMA_DCHUNK + KC_MMA_PAD];
    __shared__ __align__(32) T q_lo[KC_ROWS][KC_MMA_DCHUNK + KC_MMA_PAD];
    __shared__ __align__(32) float logits[KC_TILE][KC_ROWS + 4]; /* [key][row] */
    const int tid = threadIdx.x, tr = tid / 16, tk = tid % 16, warp = tid / 32;
    const int key_frag = warp % 4, row_frag = (warp / 4) * 2;
    const int64_t D = a.keys.head_dim;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2];
    wmma::fill_fragment(c[0], 0.0f);
    wmma::fill_fragment(c[1], 0.0f);
    for (int64_t d0 = 0; d0 < D; d0 += KC_MMA_DCHUNK) {
        const int dc = (int)(D - d0 < KC_MMA_DCHUNK ? D - d0 : KC_MMA_DCHUNK); /* a multiple of 16 */
        __syncthreads(); /* the previous chunk's (or tile's) readers are done */
        for (int e = tid; e < KC_TILE * KC_MMA_DCHUNK; e += KC_THREADS) {
            const int c_ = e / KC_MMA_DCHUNK, d = e % KC_MMA_DCHUNK;
            T v = kc_to<T>(0.0f);
            if (c_ < count && d < dc) {
                v = *(const T *)kc_at(a.keys, t0 + c_, j, d0 + d);
                if (check_keys && !isfinite(kc_from(v))) atomicOr(bad, 1);
            }
            ks[c_][d] = v;
        }
        for (int e = tid; e < KC_ROWS * KC_MMA_DCHUNK; e += KC_THREADS) {
            const int x = e / KC_MMA_DCHUNK, d = e % KC_MMA_DCHUNK;
            const float v = kc_query(a, j, x0, x, chunk, d0, d, dc);
            const T hi = kc_to<T>(v);
            q_hi[x][d] = hi;
            q_lo[x][d] = kc_to<T>(v - kc_from(hi));
        }
        __syncthreads();
        for (int kk = 0; kk < dc; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
            wmma::load_matrix_sync(fa, &ks[key_frag * 16][kk], ld);
            for (int f = 0; f < 2; f++) {
                wmma::load_matrix_sync(fb, &q_hi[(row_frag + f) * 16][kk], ld);
                wmma::mma_sync(c[f], fa, fb, c[f]);
                wmma::load_matrix_sync(fb, &q_lo[(row_frag + f) * 16][kk], ld);
                wmma::mma_sync(c[f], fa, fb, c[f]);
            }
        }
    }
    for (int f = 0; f < 2; f++)
        wmma::store_matrix_sync(&logits[key_frag * 16][(row_frag + f) * 16], c[f], KC_ROWS + 4, wmma::mem_row_major);
    __syncthreads();
    for (int i = 0; i < 4; i++)
        for (int k = 0; k < 4; k++) acc[i][k] = logits[tk * 4 + k][tr * 4 + i];
}

template <int KIND>
__device__ __forceinline__ void kc_tile_logits(const kc_attn &a, int64_t j, int64_t t0, int count, int64_t x0,
                                               int chunk, float acc[4][4], bool check_keys, int *bad) {
    if (KIND == KC_TILE_MMA_F16) kc_tile_logits_mma<__half>(a, j, t0, count, x0, chunk, acc, check_keys, bad);
    else if (KIND == KC_TILE_MMA_BF16) kc_tile_logits_mma<__nv_bfloat16>(a, j, t0, count, x0, chunk, acc, check_keys, bad);
    else kc_tile_logits_simt(a, j, t0, count, x0, chunk, acc, check_keys, bad);
}

/* Pass 1: for key split s (blockIdx.x) of KV head j (blockIdx.y) and the
   rows of chunk blockIdx.z, each row's running maximum and normaliser over
   the keys of the split it can see. part: [Hk][S][total] (max, sum). */
template <int KIND>
__global__ void __launch_bounds__(KC_THREADS)
kc_attn_stats(kc_attn a, int64_t keys_per_split, int S, float2 *part, int32_t *status) {
    __shared__ int bad;
    KC_STOP_ON_ERROR(status);
    const int s = blockIdx.x, tid = threadIdx.x, tr = tid / 16, tk = tid % 16;
    const int64_t j = blockIdx.y, x0 = (int64_t)blockIdx.z * KC_ROWS;
    const int chunk = (int)(a.total - x0 < KC_ROWS ? a.total - x0 : KC_ROWS);
    const int64_t last_key = a.first_position + (x0 + chunk - 1) / a.g;
    const int64_t begin = s * keys_per_split;
    const int64_t end = begin + keys_per_split < last_key + 1 ? begin + keys_per_split : last_key + 1;
    /* The last chunk's rows see every key: it checks them for NaN and Inf. */
    const bool check_keys = x0 + KC_ROWS >= a.total;
    float row_max[4], row_sum[4], acc[4][4];
    int64_t position[4];
    if (tid == 0) bad = 0;
    for (int i = 0; i < 4; i++) {
        row_max[i] = -INFINITY;
        row_sum[i] = 0.0f;
        position[i] = a.first_position + (x0 + tr * 4 + i) / a.g;
    }
    for (int64_t t0 = begin; t0 < end; t0 += KC_TILE) {
        const int count = (int)(end - t0 < KC_TILE ? end - t0 : KC_TILE);
        kc_tile_logits<KIND>(a, j, t0, count, x0, chunk, acc, check_keys, &bad);
        for (int i = 0; i < 4; i++) {
            const bool row_ok = tr * 4 + i < chunk;
            float tile_max = -INFINITY, tile_sum = 0.0f, m;
            for (int k = 0; k < 4; k++) {
                const int c = tk * 4 + k;
                if (row_ok && c < count && t0 + c <= position[i]) tile_max = fmaxf(tile_max, acc[i][k]);
            }
            /* The 16 threads of a row group are 16 consecutive lanes. */
            for (int off = 8; off > 0; off >>= 1)
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, off));
            m = fmaxf(row_max[i], tile_max);
            if (m != -INFINITY)
                for (int k = 0; k < 4; k++) {
                    const int c = tk * 4 + k;
                    if (row_ok && c < count && t0 + c <= position[i]) tile_sum += expf(acc[i][k] - m);
                }
            for (int off = 8; off > 0; off >>= 1) tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, off);
            if (m != -INFINITY) {
                row_sum[i] = row_sum[i] * expf(row_max[i] - m) + tile_sum; /* exp(-inf) = 0 */
                row_max[i] = m;
            }
        }
    }
    if (tk == 0)
        for (int i = 0; i < 4; i++)
            if (tr * 4 + i < chunk)
                part[((int64_t)j * S + s) * a.total + x0 + tr * 4 + i] = make_float2(row_max[i], row_sum[i]);
    __syncthreads();
    if (tid == 0 && bad) kc_fail(status, KVEC_ERROR_NON_FINITE);
}

/* Each row's maximum and weight / normaliser, from the splits in order. */
__global__ void kc_attn_combine(const float2 *part, int S, int64_t total, int64_t Hk, float weight,
                                float2 *stats, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t at = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (at >= Hk * total) return;
    const int64_t j = at / total, x = at % total;
    const float2 *p = part + j * S * total + x;
    float m = -INFINITY, sum = 0.0f;
    for (int s = 0; s < S; s++) m = fmaxf(m, p[(int64_t)s * total].x);
    for (int s = 0; s < S; s++) {
        const float2 v = p[(int64_t)s * total];
        if (v.x != -INFINITY) sum += v.y * expf(v.x - m);
    }
    stats[at] = make_float2(m, weight / sum);
}

/* Pass 2: key tile blockIdx.x of KV head blockIdx.y; every row chunk that
   can see the tile adds its probabilities. sums: [Hk][sums_stride], keys
   0 .. n_out-1 written (overwritten, not added). */
template <int KIND>
__global__ void __launch_bounds__(KC_THREADS)
kc_attn_probs(kc_attn a, const float2 *stats, float *sums, int64_t sums_stride, int32_t *status) {
    __shared__ float2 row_stats[KC_ROWS];
    __shared__ float reduce[16][KC_TILE + 1];
    KC_STOP_ON_ERROR(status);
    const int tid = threadIdx.x, tr = tid / 16, tk = tid % 16;
    const int64_t j = blockIdx.y, t0 = (int64_t)blockIdx.x * KC_TILE;
    const int count = (int)(a.n_out - t0 < KC_TILE ? a.n_out - t0 : KC_TILE);
    float key_sum[4] = { 0.0f, 0.0f, 0.0f, 0.0f }, acc[4][4];
    for (int64_t x0 = 0; x0 < a.total; x0 += KC_ROWS) {
        const int chunk = (int)(a.total - x0 < KC_ROWS ? a.total - x0 : KC_ROWS);
        if (a.first_position + (x0 + chunk - 1) / a.g < t0) continue; /* no row sees the tile */
        kc_tile_logits<KIND>(a, j, t0, count, x0, chunk, acc, false, NULL);
        if (tid < chunk) row_stats[tid] = stats[j * a.total + x0 + tid];
        __syncthreads();
        for (int i = 0; i < 4; i++) {
            const int x = tr * 4 + i;
            if (x >= chunk) continue;
            const int64_t position = a.first_position + (x0 + x) / a.g;
            const float2 st = row_stats[x];
            for (int k = 0; k < 4; k++) {
                const int c = tk * 4 + k;
                if (c < count && t0 + c <= position) key_sum[k] += expf(acc[i][k] - st.x) * st.y;
            }
        }
        /* row_stats is rewritten next chunk only after kc_tile_logits' barriers */
    }
    for (int k = 0; k < 4; k++) reduce[tr][tk * 4 + k] = key_sum[k];
    __syncthreads();
    if (tid < count) {
        float total = 0.0f;
        for (int r = 0; r < 16; r++) total += reduce[r][tid];
        sums[j * sums_stride + t0 + tid] = total;
    }
}

/* >>scores */

/* Pooling with stride 1, same padding, padding not counted (kvec__pool):
   the same additions in the same order as on the CPU. */
__global__ void kc_pool(const float *in, int64_t in_stride, float *out, int64_t out_stride, int64_t n,
                        int64_t kernel, int mode, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    const float *x = in + j * in_stride;
    const int64_t half = kernel / 2, lo = i - half < 0 ? 0 : i - half, hi = i + half >= n ? n - 1 : i + half;
    float acc = x[lo];
    for (int64_t m = lo + 1; m <= hi; m++)
        acc = mode == KVEC_POOL_MAX ? (x[m] > acc ? x[m] : acc) : acc + x[m];
    out[j * out_stride + i] = mode == KVEC_POOL_MAX ? acc : acc / (float)(hi - lo + 1);
}

/* The last step of every policy: H2O divides by how many rows see token i,
   and the window positions n .. N-1 get +inf (always kept). */
__global__ void kc_finish(float *scores, int64_t N, int64_t n, int64_t h2o_rows, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= N) return;
    float *s = scores + j * N;
    if (i >= n) s[i] = INFINITY;
    else if (h2o_rows > 0) s[i] /= (float)(h2o_rows < N - i ? h2o_rows : N - i);
}

/* TOVA: every KV head gets the attention of all query heads, summed in head
   order and averaged. */
__global__ void kc_tova_average(float *scores, int64_t N, int64_t n, int64_t Hk, float inv_heads,
                                int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float total = 0.0f;
    for (int64_t j = 0; j < Hk; j++) total += scores[j * N + i];
    for (int64_t j = 0; j < Hk; j++) scores[j * N + i] = total * inv_heads;
}

/* StreamingLLM and Random: no tensor is read. */
__global__ void kc_simple_scores(float *scores, int64_t N, int64_t n, int policy, int64_t sinks,
                                 uint64_t seed, int64_t layer, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    float v;
    if (policy == KVEC_POLICY_STREAMING) {
        v = i < sinks ? FLT_MAX : (float)i;
    } else {
        const uint64_t head_seed = kc_mix(kc_mix(seed ^ kc_mix((uint64_t)layer)) ^ (uint64_t)j);
        v = (float)(kc_mix(head_seed ^ (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
    }
    scores[j * N + i] = v;
}

/* Sum of a double over the 32 lanes of a warp, in a fixed tree. */
__device__ __forceinline__ double kc_warp_sum(double v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

/* Sum of a double over the block (a power of two of threads), in a fixed
   tree through part ([blockDim.x] shared). Every thread must call it and
   gets the total; part may be reused as soon as it returns. */
__device__ double kc_block_sum(double mine, double *part) {
    part[threadIdx.x] = mine;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) part[threadIdx.x] += part[threadIdx.x + half];
        __syncthreads();
    }
    const double total = part[0];
    __syncthreads(); /* everyone has read the total before part is written again */
    return total;
}

/* Sum of squares of row (i, j) of a view over the lanes of a warp (every
   lane gets it): each lane takes dims lane, lane + 32, ... */
__device__ __forceinline__ double kc_warp_row_squares(const kc_view &t, int64_t i, int64_t j, int lane) {
    double sq = 0.0;
    for (int64_t d = lane; d < t.head_dim; d += 32) {
        const double v = kc_load(t, i, j, d);
        sq += v * v;
    }
    return kc_warp_sum(sq);
}

/* Knorm: -||k_i||, one warp per (token, head). */
__global__ void kc_key_norm(kc_view keys, float *scores, int64_t N, int64_t n, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int lane = threadIdx.x % 32;
    const int64_t i = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, j = blockIdx.y;
    if (i >= n) return;
    const double sq = kc_warp_row_squares(keys, i, j, lane);
    if (lane == 0) scores[j * N + i] = (float)-sqrt(sq);
}

/* Mean key direction, part 1: split s (blockIdx.x) of head j (blockIdx.y)
   sums k / ||k|| over its keys. Warp w of the block's `warps` takes keys
   begin + w, + warps, ...; lane l owns dims l, l + 32, ...; the warps'
   sums are added in warp order. part: [Hk][KC_KEY_SPLITS][D] double.
   Dynamic shared memory: warps * D doubles (kc_direction_warps). */
__global__ void __launch_bounds__(256)
kc_key_direction_part(kc_view keys, int64_t keys_per_split, double *part, int32_t *status) {
    KC_DYNAMIC_SHARED(double, warp_acc); /* [warps][D] */
    KC_STOP_ON_ERROR(status);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    const int64_t s = blockIdx.x, j = blockIdx.y, D = keys.head_dim, N = keys.n_tokens;
    const int64_t begin = s * keys_per_split, end = begin + keys_per_split < N ? begin + keys_per_split : N;
    double *acc = warp_acc + warp * D;
    for (int64_t d = lane; d < D; d += 32) acc[d] = 0.0;
    for (int64_t i = begin + warp; i < end; i += warps) {
        const double sq = kc_warp_row_squares(keys, i, j, lane);
        if (sq > 0.0) {
            const double inverse = 1.0 / sqrt(sq);
            for (int64_t d = lane; d < D; d += 32) acc[d] += kc_load(keys, i, j, d) * inverse;
        }
    }
    __syncthreads();
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        double total = 0.0;
        for (int w = 0; w < warps; w++) total += warp_acc[w * D + d];
        part[(j * KC_KEY_SPLITS + s) * D + d] = total;
    }
}

/* Part 2: kbar[j][d] = (sum over splits, in order) / N, and its norm.
   One block per head. kbar_norm: [Hk] double. */
__global__ void kc_key_direction_combine(const double *part, int64_t D, int64_t N, float *kbar,
                                         double *kbar_norm, int32_t *status) {
    __shared__ double sq[256];
    KC_STOP_ON_ERROR(status);
    const int64_t j = blockIdx.x;
    double mine = 0.0;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        double total = 0.0;
        for (int s = 0; s < KC_KEY_SPLITS; s++) total += part[(j * KC_KEY_SPLITS + s) * D + d];
        const float v = (float)(total / (double)N);
        kbar[j * D + d] = v;
        mine += (double)v * v;
    }
    const double total = kc_block_sum(mine, sq);
    if (threadIdx.x == 0) kbar_norm[j] = sqrt(total);
}

/* out[j][i] = -cos(k_i, kbar_j) for i < n (0 where a norm is 0); one warp
   per (token, head). */
__global__ void kc_uniqueness(kc_view keys, const float *kbar, const double *kbar_norm, float *out,
                              int64_t out_stride, int64_t n, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int lane = threadIdx.x % 32;
    const int64_t i = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, j = blockIdx.y;
    const int64_t D = keys.head_dim;
    if (i >= n) return;
    double dot = 0.0, sq = 0.0;
    for (int64_t d = lane; d < D; d += 32) {
        const double v = kc_load(keys, i, j, d);
        dot += v * kbar[j * D + d];
        sq += v * v;
    }
    dot = kc_warp_sum(dot);
    sq = kc_warp_sum(sq);
    if (lane == 0) {
        const double key_norm = sqrt(sq), kn = kbar_norm[j];
        out[j * out_stride + i] = key_norm > 0.0 && kn > 0.0 ? (float)(-dot / (key_norm * kn)) : 0.0f;
    }
}

/* Mean and population standard deviation of x[j][0 .. n) in double, one
   block of 1024 per head, a fixed reduction tree. moments: [Hk][2]. */
__global__ void __launch_bounds__(1024)
kc_moments(const float *x, int64_t stride, int64_t n, double *moments, int32_t *status) {
    __shared__ double part[1024];
    KC_STOP_ON_ERROR(status);
    const int64_t j = blockIdx.x;
    const float *v = x + j * stride;
    double acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += 1024) acc += v[i];
    const double mean = kc_block_sum(acc, part) / (double)n;
    acc = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += 1024) acc += (v[i] - mean) * (v[i] - mean);
    const double squares = kc_block_sum(acc, part);
    if (threadIdx.x == 0) {
        moments[j * 2 + 0] = mean;
        moments[j * 2 + 1] = sqrt(squares / (double)n);
    }
}

/* Sort input of the rank union: one device-wide radix sort for all heads
   of the layer, the head in the key's high bits (so heads stay apart)
   above ~order_key (ascending key = descending score; ties keep position
   order, the sort being stable); value = position. */
__global__ void kc_sort_prep(const float *scores, int64_t stride, int64_t n, uint64_t *keys,
                             int32_t *positions, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    keys[j * n + i] = (uint64_t)j << 32 | ~kc_order_key(scores[j * stride + i]);
    positions[j * n + i] = (int32_t)i;
}

/* rank[j][position] = its place in the sorted order. */
__global__ void kc_rank_of(const int32_t *sorted_positions, int64_t n, int32_t *rank, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    rank[j * n + sorted_positions[j * n + i]] = (int32_t)i;
}

/* s = z(P) + mu z(U) + gamma C, as kvec__score_kvec computes it (double,
   then float). uniq is NULL without the uniqueness term, kept_before NULL
   without the cross-layer term. */
__global__ void kc_kvec_combine(float *scores, int64_t N, const float *uniq, int64_t n,
                                const double *moments_p, const double *moments_u, float mu,
                                const uint8_t *kept_before, float gamma, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    float *s = scores + j * N;
    double v = (s[i] - moments_p[j * 2]) / (moments_p[j * 2 + 1] + KVEC__Z_EPS);
    if (uniq) v += mu * ((uniq[j * n + i] - moments_u[j * 2]) / (moments_u[j * 2 + 1] + KVEC__Z_EPS));
    if (kept_before && !kept_before[i]) v += gamma;
    s[i] = (float)v;
}

/* Head focus: a head whose pool(I) is flat (coefficient of variation below
   focus_cv) takes pool(I) from the 4W-row window instead. */
__global__ void kc_focus_pick(float *scores, int64_t N, const float *wide, int64_t n, const double *moments_p,
                              float focus_cv, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    const double mean = moments_p[j * 2], std = moments_p[j * 2 + 1];
    if (mean > 0.0 && std / mean < (double)focus_cv) scores[j * N + i] = wide[j * N + i];
}

/* The rank union: s = n - the depth at which either list reaches the token,
   min(rank by P / share, rank by the combined score / (1 - share)), scaled
   by 2 share (1 - share); in double, exactly as kvec__union_score. */
__global__ void kc_rank_union(float *scores, int64_t N, int64_t n, const int32_t *sorted_positions,
                              const int32_t *rank_by_attention, float attention_share, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    const int64_t at = sorted_positions[j * n + i], by_attention = rank_by_attention[j * n + at];
    const double share = (double)attention_share;
    const double depth_a = 2.0 * (double)by_attention * (1.0 - share);
    const double depth_c = 2.0 * (double)i * share;
    scores[j * N + at] = (float)((double)n - (depth_a < depth_c ? depth_a : depth_c));
}

/* NaN or Inf anywhere in a tensor: KVEC_ERROR_NON_FINITE. One thread per
   element of [tokens][heads][dim]. */
__global__ void kc_check_finite(kc_view t, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t D = t.head_dim, H = t.n_heads;
    if (e >= t.n_tokens * H * D) return;
    if (!isfinite(kc_load(t, e / (H * D), (e / D) % H, e % D))) kc_fail(status, KVEC_ERROR_NON_FINITE);
}

/* >>reconstruction scores (KVzip)

   Two kernels, one thread per item, keys and queries read through the
   views (no tiling yet: correct first; the pass is one more prefill, and
   this is its attention once more). kc_recon_rows: per KV head j and pass
   row-head x = r*g + h, the softmax's running max and normaliser over the
   sinks, the chunk and pass keys 0 .. r. kc_recon_keys: per chunk key, the
   max over x of exp(logit - max_x) / normaliser_x, written to its column.
   Every probability is computed once per (x, key) in each kernel and the
   max is exact, so the result does not depend on the launch shape. */
__device__ float kc_recon_logit(const kc_view &q, int64_t r, int64_t h, const kc_view &k, int64_t t, int64_t j,
                                float scale) {
    float acc = 0.0f;
    for (int64_t d = 0; d < k.head_dim; d++) acc += kc_load(q, r, h, d) * kc_load(k, t, j, d);
    return acc * scale;
}

__device__ __forceinline__ void kc_online(float l, float &m, float &sum) {
    if (l > m) { sum = sum * expf(m - l) + 1.0f; m = l; } /* exp(-inf) = 0 on the first key */
    else sum += expf(l - m);
}

__global__ void kc_recon_rows(kc_view keys, kc_view pq, kc_view pk, int64_t sinks, int64_t begin, int64_t chunk,
                              int64_t g, float scale, float2 *stats, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t j = blockIdx.y, x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, R = pq.n_tokens;
    if (x >= R * g) return;
    const int64_t r = x / g, h = j * g + x % g;
    float m = -INFINITY, sum = 0.0f;
    for (int64_t t = 0; t < sinks; t++) kc_online(kc_recon_logit(pq, r, h, keys, t, j, scale), m, sum);
    for (int64_t t = begin; t < begin + chunk; t++) kc_online(kc_recon_logit(pq, r, h, keys, t, j, scale), m, sum);
    for (int64_t t = 0; t <= r; t++) kc_online(kc_recon_logit(pq, r, h, pk, t, j, scale), m, sum);
    stats[j * R * g + x] = make_float2(m, sum);
}

__global__ void kc_recon_keys(kc_view keys, kc_view pq, int64_t begin, int64_t chunk, int64_t g, float scale,
                              const float2 *stats, float *scores, int64_t N, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t j = blockIdx.y, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, R = pq.n_tokens;
    if (i >= chunk) return;
    float best = 0.0f;
    for (int64_t x = 0; x < R * g; x++) {
        const float2 st = stats[j * R * g + x];
        const float p = expf(kc_recon_logit(pq, x / g, j * g + x % g, keys, begin + i, j, scale) - st.x) / st.y;
        best = p > best ? p : best;
    }
    scores[j * N + begin + i] = best;
}

/* >>learned scores

   One thread per output: kc_learned_hidden fills the MLP's hidden layer
   ([T][F], in the scratch), kc_learned_out the scores. A dot product is 8
   fp32 partial sums added in double. */
__device__ double kc_learned_dot(const float *w, const kc_view &x, int64_t t, int64_t n) {
    float part[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    double total = 0.0;
    for (int64_t e = 0; e < n; e++) part[e % 8] += w[e] * kc_load(x, t, 0, e);
    for (int k = 0; k < 8; k++) total += part[k];
    return total;
}

/* kvec__saturate: a float that is always a number */
__device__ float kc_saturate(double y) {
    const double top = FLT_MAX;
    return y != y ? (float)-top : y > top ? (float)top : y < -top ? (float)-top : (float)y;
}

__global__ void kc_learned_hidden(kc_view x, const float *w1, const float *b1, int64_t F, float *mid,
                                  int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, T = x.n_tokens, E = x.head_dim;
    if (i >= T * F) return;
    const int64_t t = i / F, f = i % F;
    const double a = kc_learned_dot(w1 + f * E, x, t, E) + (double)b1[f];
    mid[i] = kc_saturate(0.5 * a * (1.0 + erf(a / sqrt(2.0))));
}

__global__ void kc_learned_out(kc_view x, const float *w, const float *b, const float *mid, int64_t F, int64_t Hk,
                               int log_retention, float *scores, int64_t stride, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, T = x.n_tokens, E = x.head_dim;
    if (i >= T * Hk) return;
    const int64_t t = i / Hk, j = i % Hk;
    double y;
    if (mid) { /* the MLP's second layer over the hidden units, in order */
        float part[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
        y = 0.0;
        for (int64_t f = 0; f < F; f++) part[f % 8] += w[j * F + f] * mid[t * F + f];
        for (int k = 0; k < 8; k++) y += part[k];
        y += (double)b[j];
    } else {
        y = kc_learned_dot(w + j * E, x, t, E) + (double)b[j];
    }
    scores[j * stride + t] = kc_saturate(log_retention ? (y >= 0 ? -log1p(exp(-y)) : y - log1p(exp(y))) : y);
}

/* >>output-aware scores (CriticalKV, LaProx) */

/* ||W_o^h v_i||_p for query head h = blockIdx.y and the tokens of tile
   blockIdx.x (64 per block), p = 1 or 2 (2 gives the squared norm's sum,
   the root is taken in kc_output_mean). The projections y = W_o^h v_i are
   the SIMT tile of window attention with V as the rows and W_o's E rows as
   the keys; |y| or y^2 is summed over the outputs, tile after tile, then
   over the 16 threads of a row group in a fixed tree. part: [H][n]. */
__global__ void __launch_bounds__(KC_THREADS)
kc_output_norm(kc_view values, kc_view out_proj, int64_t g, int64_t n, int p, float *part, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int tid = threadIdx.x, tr = tid / 16, tk = tid % 16;
    const int64_t h = blockIdx.y, x0 = (int64_t)blockIdx.x * KC_ROWS, E = out_proj.n_tokens;
    const int chunk = (int)(n - x0 < KC_ROWS ? n - x0 : KC_ROWS);
    kc_attn a; /* V of KV head h / g as the rows, W_o^h as the keys: both views pinned to one head */
    a.keys = out_proj;
    a.keys.data = out_proj.data + h * out_proj.stride_head;
    a.keys.stride_head = 0;
    a.queries = values;
    a.queries.data = values.data + (h / g) * values.stride_head;
    a.queries.stride_head = 0;
    a.g = 1; a.row_first = 0; a.total = n; a.first_position = 0; a.n_out = E; a.scale = 1.0f; a.weight = 1.0f;
    float acc[4][4], norm[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
    for (int64_t t0 = 0; t0 < E; t0 += KC_TILE) {
        const int count = (int)(E - t0 < KC_TILE ? E - t0 : KC_TILE);
        kc_tile_logits_simt(a, 0, t0, count, x0, chunk, acc, false, NULL);
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 4; k++)
                if (tk * 4 + k < count) norm[i] += p == 1 ? fabsf(acc[i][k]) : acc[i][k] * acc[i][k];
    }
    for (int i = 0; i < 4; i++) {
        for (int off = 8; off > 0; off >>= 1) norm[i] += __shfl_xor_sync(0xffffffffu, norm[i], off);
        if (tk == 0 && tr * 4 + i < chunk) part[h * n + x0 + tr * 4 + i] = norm[i];
    }
}

/* out[j][i] = mean over the query heads of KV head j of the norm (the root
   of the sum of squares for p = 2), summed in head order. */
__global__ void kc_output_mean(const float *part, int64_t n, int64_t g, int p, float *out, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, j = blockIdx.y;
    if (i >= n) return;
    const float inv_g = 1.0f / (float)g;
    float total = 0.0f;
    for (int64_t hh = 0; hh < g; hh++) {
        const float v = part[(j * g + hh) * n + i];
        total += (p == 1 ? v : sqrtf(v)) * inv_g;
    }
    out[j * n + i] = total;
}

/* >>selection */

/* Up to KC_BATCH layers per launch: free slots (B_l - W) per layer, or
   keep_all when the layer's budget covers every token; reserve > 0 turns
   on K-VEC's cross-head term (floor(beta * free slots) per head). */
struct kc_select_batch {
    int     n_layers;
    int64_t first_layer;
    int64_t free_slots[KC_BATCH];
    int64_t reserve[KC_BATCH];
    int     keep_all[KC_BATCH];
};

typedef cub::BlockScan<int, KC_SELECT_THREADS> kc_select_scan;

struct kc_select_shared {
    typename kc_select_scan::TempStorage scan;
    int      histogram[256];
    int64_t  chosen_need;
    uint32_t chosen_bucket;
    int      eligible;
};

/* kvec__select_top for one block: the k best of s[0 .. n) (ties to the
   lower position) among the positions not excluded (flags[i] & exclude;
   flags may be NULL); marks them with bit 0 of flags and/or writes them
   ascending to out. Returns how many it took (in every thread).

   A radix select on the order key: four byte-wide histogram passes find
   the key of the k-th best and how many of its ties to take; one pass in
   position order takes them (block scans give each its place, so ties go
   to the lowest positions as on the CPU). Every thread must call it. */
__device__ int64_t kc_block_select_top(const float *s, int64_t n, uint8_t *flags, uint8_t exclude, int64_t k,
                                       int64_t *out, kc_select_shared &sh) {
    const int tid = threadIdx.x;
    __syncthreads(); /* a previous call's readers of sh are done (it may have returned early) */
    if (tid == 0) sh.eligible = 0;
    __syncthreads();
    int mine = 0;
    for (int64_t i = tid; i < n; i += KC_SELECT_THREADS) mine += !(flags && (flags[i] & exclude));
    atomicAdd(&sh.eligible, mine); /* integer sums: the same in any order */
    __syncthreads();
    const int64_t eligible = sh.eligible;
    if (k <= 0) return 0;
    const bool partial = k < eligible; /* else take every eligible position */
    uint32_t prefix = 0, mask = 0;
    int64_t need = k;
    if (partial) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            for (int e = tid; e < 256; e += KC_SELECT_THREADS) sh.histogram[e] = 0;
            __syncthreads();
            for (int64_t i = tid; i < n; i += KC_SELECT_THREADS) {
                if (flags && (flags[i] & exclude)) continue;
                const uint32_t key = kc_order_key(s[i]);
                if ((key & mask) == prefix) atomicAdd(&sh.histogram[(key >> shift) & 0xffu], 1);
            }
            __syncthreads();
            if (tid == 0) {
                int bucket = 255;
                for (; bucket > 0 && sh.histogram[bucket] < need; bucket--) need -= sh.histogram[bucket];
                sh.chosen_bucket = (uint32_t)bucket;
                sh.chosen_need = need;
            }
            __syncthreads();
            prefix |= sh.chosen_bucket << shift;
            mask |= 0xffu << shift;
            need = sh.chosen_need;
            __syncthreads(); /* before the next pass clears the histogram */
        }
    }
    int64_t count = 0, ties_left = need;
    for (int64_t base = 0; base < n; base += KC_SELECT_THREADS) {
        const int64_t i = base + tid;
        int tie = 0, take = 0, tie_rank, ties, take_rank, taken;
        if (i < n && !(flags && (flags[i] & exclude))) {
            const uint32_t key = kc_order_key(s[i]);
            take = !partial || key > prefix;
            tie = partial && key == prefix;
        }
        kc_select_scan(sh.scan).ExclusiveSum(tie, tie_rank, ties);
        __syncthreads();
        take = take || (tie && tie_rank < ties_left);
        kc_select_scan(sh.scan).ExclusiveSum(take, take_rank, taken);
        __syncthreads();
        if (take) {
            if (flags) flags[i] |= 1u;
            if (out) out[count + take_rank] = i;
        }
        count += taken;
        ties_left -= ties < ties_left ? ties : ties_left;
    }
    return count;
}

/* Positions with bit 0 of flags, ascending, into out; they become bit 1
   (kept by an earlier head). Returns how many. */
__device__ int64_t kc_block_collect(uint8_t *flags, int64_t n, int64_t *out, kc_select_shared &sh) {
    int64_t count = 0;
    for (int64_t base = 0; base < n; base += KC_SELECT_THREADS) {
        const int64_t i = base + threadIdx.x;
        int take = i < n && (flags[i] & 1u), rank, taken;
        kc_select_scan(sh.scan).ExclusiveSum(take, rank, taken);
        __syncthreads();
        if (take) { out[count + rank] = i; flags[i] = 2u; }
        count += taken;
    }
    return count;
}

/* The plan of layer first_layer + blockIdx.y. Per head (blockIdx.x): the
   best free_slots evictable positions, ascending, then the window, as
   kvec__select_head. With the cross-head term one block (blockIdx.x = 0)
   takes the heads in order, as kvec__select_cross_head: each first takes
   its best free - reserve, then reserve more among tokens no earlier head
   of the layer kept (topped up from the rest if there are too few). A
   reserve of 0 (few free slots) is then each head's own best, as on the
   CPU, but still in the one block, which is all the launch has.
   scores: [L][Hk][N]; head_flags: [KC_BATCH][N] bytes, cross-head only. */
__global__ void __launch_bounds__(KC_SELECT_THREADS)
kc_select(const float *scores, int64_t N, int64_t Hk, int64_t window, kc_select_batch batch, int cross_head,
          int64_t *kept_count, int64_t *kept_positions, int64_t plan_heads, int64_t capacity,
          uint8_t *head_flags, int32_t *status) {
    __shared__ kc_select_shared sh;
    KC_STOP_ON_ERROR(status);
    const int tid = threadIdx.x, b = blockIdx.y;
    const int64_t l = batch.first_layer + b, n = N - window, F = batch.free_slots[b], reserve = batch.reserve[b];
    const int64_t first_head = cross_head ? 0 : blockIdx.x, last_head = cross_head ? Hk : blockIdx.x + 1;
    uint8_t *flags = cross_head ? head_flags + (int64_t)b * N : NULL;
    if (flags)
        for (int64_t i = tid; i < n; i += KC_SELECT_THREADS) flags[i] = 0;
    __syncthreads();
    for (int64_t j = first_head; j < last_head; j++) {
        const float *s = scores + (l * Hk + j) * N;
        int64_t *out = kept_positions + (l * plan_heads + j) * capacity, count;
        if (batch.keep_all[b]) {
            for (int64_t i = tid; i < N; i += KC_SELECT_THREADS) out[i] = i;
            if (tid == 0) kept_count[l * plan_heads + j] = N;
            continue;
        }
        if (flags) {
            kc_block_select_top(s, n, flags, 1u, F - reserve, NULL, sh);
            const int64_t got = kc_block_select_top(s, n, flags, 3u, reserve, NULL, sh);
            if (got < reserve) kc_block_select_top(s, n, flags, 1u, reserve - got, NULL, sh);
            __syncthreads(); /* every mark is in before the collection reads them */
            count = kc_block_collect(flags, n, out, sh);
        } else {
            count = kc_block_select_top(s, n, NULL, 0, F, out, sh);
        }
        for (int64_t i = tid; i < window; i += KC_SELECT_THREADS) out[count + i] = n + i;
        if (tid == 0) kept_count[l * plan_heads + j] = count + window;
        __syncthreads(); /* the next head reuses the shared state and the flags */
    }
}

/* CriticalKV: the best `first` tokens of head blockIdx.x by pool(I) keep
   FLT_MAX (kept first); the others score (pool(I) + eps) * O1. flags:
   [Hk][n]. */
__global__ void __launch_bounds__(KC_SELECT_THREADS)
kc_criticalkv(float *scores, int64_t N, int64_t n, const float *out_norm, int64_t first, uint8_t *flags,
              int32_t *status) {
    __shared__ kc_select_shared sh;
    KC_STOP_ON_ERROR(status);
    const int64_t j = blockIdx.x;
    float *s = scores + j * N;
    uint8_t *f = flags + j * n;
    for (int64_t i = threadIdx.x; i < n; i += KC_SELECT_THREADS) f[i] = 0;
    __syncthreads();
    kc_block_select_top(s, n, f, 1u, first, NULL, sh);
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += KC_SELECT_THREADS)
        s[i] = f[i] ? FLT_MAX : (s[i] + KVEC__CRITICAL_EPS) * out_norm[j * n + i];
}

/* LaProx: s = pool(I) * O2, then divided by the layer's mean score (summed
   in double, fixed tree) so that layers compare. One block for the layer. */
__global__ void __launch_bounds__(1024)
kc_laprox(float *scores, int64_t N, int64_t n, int64_t Hk, const float *out_norm, int32_t *status) {
    __shared__ double part[1024];
    KC_STOP_ON_ERROR(status);
    double acc = 0.0;
    for (int64_t e = threadIdx.x; e < Hk * n; e += 1024) {
        const int64_t j = e / n, i = e % n;
        const float v = scores[j * N + i] * out_norm[e];
        scores[j * N + i] = v;
        acc += v;
    }
    const double total = kc_block_sum(acc, part);
    if (!(total > 0.0)) return;
    const float inv_mean = (float)((double)(Hk * n) / total);
    for (int64_t e = threadIdx.x; e < Hk * n; e += 1024) scores[(e / n) * N + e % n] *= inv_mean;
}

/* K-VEC's cross-layer coverage: every position layer `layer` kept. One
   block per head; several heads write the same byte with the same value. */
__global__ void kc_mark_coverage(const int64_t *kept_count, const int64_t *kept_positions, int64_t layer,
                                 int64_t plan_heads, int64_t capacity, uint8_t *kept_before, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t head = layer * plan_heads + blockIdx.x, count = kept_count[head];
    for (int64_t r = threadIdx.x; r < count; r += blockDim.x) kept_before[kept_positions[head * capacity + r]] = 1;
}

/* An external plan: every count within 0 .. min(capacity, N), positions
   strictly ascending in 0 .. N-1; else KVEC_ERROR_BAD_PLAN. One block per
   (layer, head): blockIdx.x = layer * Hk + head. */
__global__ void kc_check_plan(const int64_t *kept_count, const int64_t *kept_positions,
                              int64_t plan_heads, int64_t Hk, int64_t capacity, int64_t N,
                              int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int64_t l = blockIdx.x / Hk, j = blockIdx.x % Hk;
    const int64_t count = kept_count[l * plan_heads + j];
    const int64_t *pos = kept_positions + (l * plan_heads + j) * capacity;
    if (count < 0 || count > capacity || count > N) {
        if (threadIdx.x == 0) kc_fail(status, KVEC_ERROR_BAD_PLAN);
        return;
    }
    for (int64_t r = threadIdx.x; r < count; r += blockDim.x)
        if (pos[r] < 0 || pos[r] >= N || (r > 0 && pos[r] <= pos[r - 1])) kc_fail(status, KVEC_ERROR_BAD_PLAN);
}

/* >>compaction */

struct kc_compact_batch {
    int     n_layers;
    int64_t first_layer;
    kc_view keys[KC_BATCH], values[KC_BATCH];
};

#define KC_COMPACT_THREADS 256
#define KC_COMPACT_UNITS   4  /* units each thread holds per chunk */

/* Rows pos[r] -> r of one (layer, head, tensor): blockIdx.x = head,
   blockIdx.y = layer in the batch, blockIdx.z = 0 keys, 1 values. Rows go
   in chunks, front to back. Every thread loads its part of the chunk into
   registers, the block waits, then stores. A chunk's sources pos[r] >= r
   lie at or after its own destinations and after every earlier chunk's, so
   no row is read after it was written: the chunk's own destinations are
   read before the barrier, and later chunks' sources are never written by
   an earlier chunk. A unit is 16 bytes where rows are contiguous and
   16-byte aligned, else one element. */
__global__ void __launch_bounds__(KC_COMPACT_THREADS)
kc_compact(kc_compact_batch batch, const int64_t *kept_count, const int64_t *kept_positions,
           int64_t plan_heads, int64_t capacity, int32_t *status) {
    KC_STOP_ON_ERROR(status);
    const int tid = threadIdx.x;
    const int64_t j = blockIdx.x, l = batch.first_layer + blockIdx.y;
    const kc_view t = blockIdx.z == 0 ? batch.keys[blockIdx.y] : batch.values[blockIdx.y];
    const int64_t count = kept_count[l * plan_heads + j];
    const int64_t *pos = kept_positions + (l * plan_heads + j) * capacity;
    const int64_t elem = t.dtype == KVEC_DTYPE_F32 ? 4 : 2, row_bytes = t.head_dim * elem;
    const bool vector = t.stride_dim == elem && row_bytes % 16 == 0 && t.stride_token % 16 == 0 &&
                        t.stride_head % 16 == 0 && ((uintptr_t)t.data % 16) == 0;
    const int64_t units_per_row = vector ? row_bytes / 16 : t.head_dim;
    const int64_t per_chunk = (int64_t)KC_COMPACT_THREADS * KC_COMPACT_UNITS;
    const int64_t rows_per_chunk = units_per_row >= per_chunk ? 1 : per_chunk / units_per_row;
    for (int64_t r0 = 0; r0 < count; r0 += rows_per_chunk) {
        const int64_t r_end = r0 + rows_per_chunk < count ? r0 + rows_per_chunk : count;
        /* A row wider than a chunk's units (very large head_dim): walk it. */
        for (int64_t u0 = 0; u0 < units_per_row; u0 += per_chunk) {
            uint4 held[KC_COMPACT_UNITS];
            int64_t dst[KC_COMPACT_UNITS];
            for (int q = 0; q < KC_COMPACT_UNITS; q++) {
                const int64_t e = (int64_t)tid + (int64_t)q * KC_COMPACT_THREADS;
                const int64_t r = r0 + (units_per_row >= per_chunk ? 0 : e / units_per_row);
                const int64_t u = units_per_row >= per_chunk ? u0 + e : e % units_per_row;
                dst[q] = -1;
                if (r < r_end && u < units_per_row && pos[r] != r) {
                    const char *from = t.data + pos[r] * t.stride_token + j * t.stride_head;
                    if (vector) {
                        held[q] = *(const uint4 *)(from + u * 16);
                        dst[q] = r * t.stride_token + j * t.stride_head + u * 16;
                    } else {
                        from += u * t.stride_dim;
                        held[q].x = elem == 4 ? *(const uint32_t *)from : *(const uint16_t *)from;
                        dst[q] = r * t.stride_token + j * t.stride_head + u * t.stride_dim;
                    }
                }
            }
            __syncthreads(); /* the whole chunk is read before any of it is written */
            for (int q = 0; q < KC_COMPACT_UNITS; q++) {
                if (dst[q] < 0) continue;
                char *to = t.data + dst[q];
                if (vector) *(uint4 *)to = held[q];
                else if (elem == 4) *(uint32_t *)to = held[q].x;
                else *(uint16_t *)to = (uint16_t)held[q].x;
            }
        }
    }
}

/* >>host: scratch */

/* One size serves every call; regions a configuration does not use are
   empty. The status word comes first. */
struct kc_scratch {
    int32_t  *status;       /* [1] */
    uint8_t  *select_flags; /* [KC_BATCH][N]     cross-head term */
    /* kvec_cuda_select needs only the two above: its scratch is this prefix. */
    uint8_t  *kept_before;  /* [N]               cross-layer term: coverage */
    float    *scores;       /* [L][Hk][N]        kvec_cuda_evict */
    float    *wide;         /* [Hk][N]           head focus: pool(I) from 4W rows */
    float    *norm_part;    /* [H][n]            output-aware: ||W_o^h v|| per query head */
    float    *out_norm;     /* [Hk][n]           output-aware: its group mean */
    uint8_t  *first_stage;  /* [Hk][n]           CriticalKV: kept by attention alone */
    float    *sums;         /* [Hk][N]           window attention before pooling */
    float2   *stats_part;   /* [Hk][S][R]        per split (max, sum) */
    float2   *stats;        /* [Hk][R]           (max, weight / sum) */
    double   *kbar_part;    /* [Hk][KEY_SPLITS][D] */
    float    *kbar;         /* [Hk][D] */
    double   *kbar_norm;    /* [Hk] */
    float    *uniq;         /* [Hk][n]           -cos(k, kbar) */
    double   *moments_p;    /* [Hk][2] */
    double   *moments_u;    /* [Hk][2] */
    uint64_t *sort_keys, *sort_keys_out;           /* [Hk][n] head << 32 | key */
    int32_t  *sort_positions, *sort_positions_out; /* [Hk][n] */
    int32_t  *rank;         /* [Hk][n] */
    void     *cub_temp;
    size_t    cub_bytes;
    int64_t   stats_part_count, stats_count; /* elements carved for the two above */
};

static int64_t kc_splits(int64_t N, int64_t Hk, int64_t total_rows);

/* Warps of the key-direction pass: 8, fewer for head dims above 768 so
   that their accumulators fit the 48 KiB of shared memory a block gets
   without asking; 0 above 6144 (kc_prepare refuses). */
static int64_t kc_direction_warps(int64_t D) {
    const int64_t warps = 6144 / D;
    return warps > 8 ? 8 : warps;
}

/* The sizes a cache needs: the largest over its layers. */
struct kc_dims {
    int64_t L, Hk, N, D, n;
    int64_t rows_g;     /* most flattened query rows (rows * g) a layer reads */
    int64_t split_rows; /* most splits * rows_g of a layer (the statistics pass) */
    int     attention;  /* the policy reads window attention */
    int     uniqueness; /* K-VEC's z(U) or KeyDiff: the key direction */
    int     rank_union;
    int     cross_layer, focus; /* K-VEC's optional terms with scratch of their own
                                   (the cross-head term's is kc_carve_selection's) */
    int     output;     /* CriticalKV or LaProx */
    int64_t H;          /* most query heads of a layer */
};

/* The start of every scratch: the status word, then (cross-head term only)
   kc_select's flags, [KC_BATCH][N] bytes. kvec_cuda_select's scratch is
   this prefix alone; kvec_cuda_compact's the status word alone. */
static void kc_carve_selection(kvec__bump *b, const kvec_config *c, int64_t N, int32_t **status, uint8_t **flags) {
    *status = (int32_t *)kvec__take(b, 1, sizeof(int32_t));
    *flags = (uint8_t *)kvec__take(b, (c->terms.enabled & KVEC_TERM_CROSS_HEAD) ? kvec__count(KC_BATCH, N) : 0, 1);
}

static void kc_carve(kvec__bump *b, const kvec_config *c, const kc_dims *d, kc_scratch *s) {
    const int64_t heads = d->Hk, n = d->n > 0 ? d->n : 0;
    const int64_t rows = d->attention ? d->rows_g : 0, sorted = d->rank_union ? kvec__count(heads, n) : 0;
    const int64_t direction = d->uniqueness ? 1 : 0;
    kc_carve_selection(b, c, d->N, &s->status, &s->select_flags);
    s->kept_before    = (uint8_t *)kvec__take(b, d->cross_layer ? d->N : 0, 1);
    s->scores         = (float *)kvec__take(b, kvec__count(kvec__count(d->L, heads), d->N), sizeof(float));
    s->wide           = (float *)kvec__take(b, d->focus ? kvec__count(heads, d->N) : 0, sizeof(float));
    s->norm_part      = (float *)kvec__take(b, d->output ? kvec__count(d->H, n) : 0, sizeof(float));
    s->out_norm       = (float *)kvec__take(b, d->output ? kvec__count(heads, n) : 0, sizeof(float));
    s->first_stage    = (uint8_t *)kvec__take(b, d->output ? kvec__count(heads, n) : 0, 1);
    s->sums           = (float *)kvec__take(b, d->attention ? kvec__count(heads, d->N) : 0, sizeof(float));
    s->stats_part_count = d->attention ? kvec__count(heads, d->split_rows) : 0;
    s->stats_count    = kvec__count(heads, rows);
    s->stats_part     = (float2 *)kvec__take(b, s->stats_part_count, sizeof(float2));
    s->stats          = (float2 *)kvec__take(b, s->stats_count, sizeof(float2));
    s->kbar_part      = (double *)kvec__take(b, kvec__count(kvec__count(direction * heads, KC_KEY_SPLITS), d->D), sizeof(double));
    s->kbar           = (float *)kvec__take(b, kvec__count(direction * heads, d->D), sizeof(float));
    s->kbar_norm      = (double *)kvec__take(b, direction * heads, sizeof(double));
    s->uniq           = (float *)kvec__take(b, kvec__count(direction * heads, n), sizeof(float));
    s->moments_p      = (double *)kvec__take(b, heads * 2, sizeof(double));
    s->moments_u      = (double *)kvec__take(b, heads * 2, sizeof(double));
    s->sort_keys      = (uint64_t *)kvec__take(b, sorted, sizeof(uint64_t));
    s->sort_keys_out  = (uint64_t *)kvec__take(b, sorted, sizeof(uint64_t));
    s->sort_positions = (int32_t *)kvec__take(b, sorted, sizeof(int32_t));
    s->sort_positions_out = (int32_t *)kvec__take(b, sorted, sizeof(int32_t));
    s->rank           = (int32_t *)kvec__take(b, sorted, sizeof(int32_t));
    s->cub_temp       = kvec__take(b, (int64_t)s->cub_bytes, 1);
}

/* Key bits of the rank union's sort: 32 of score, and the head's above. */
static int kc_sort_end_bit(int64_t Hk) {
    int bits = 0;
    while (((int64_t)1 << bits) < Hk) bits++;
    return 32 + bits;
}

/* CUB's temporary storage for one layer's sort (asks the device). */
static kvec_result kc_cub_bytes(const kc_dims *d, size_t *bytes) {
    *bytes = 0;
    if (!d->rank_union || d->n <= 0) return KVEC_OK;
    if (kvec__count(d->Hk, d->n) > INT32_MAX) return KVEC_ERROR_SIZE_OVERFLOW;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, *bytes, (const uint64_t *)NULL, (uint64_t *)NULL,
                                                    (const int32_t *)NULL, (int32_t *)NULL, (int)(d->Hk * d->n), 0,
                                                    kc_sort_end_bit(d->Hk), (cudaStream_t)0);
    return e == cudaSuccess ? KVEC_OK : KVEC_ERROR_CUDA;
}

/* >>host: checks */

/* What the device path does not do yet. */
static kvec_result kc_check_supported(const kvec_config *c) {
    if (c->budget_mode != KVEC_BUDGET_UNIFORM && c->budget_mode != KVEC_BUDGET_PYRAMID)
        return KVEC_ERROR_BAD_CONFIG;
    return KVEC_OK;
}

/* Rows of K-VEC's window: W, or with head focus 4W (as many as there are). */
static int64_t kc_focus_rows(const kvec_config *c, const kvec_layer *layer) {
    if (!(c->terms.enabled & KVEC_TERM_HEAD_FOCUS)) return c->window;
    return kvec__focus_rows(c, layer->queries.n_tokens);
}

/* Rows of the queries tensor a policy reads: the last `rows`. */
static int64_t kc_rows_read(const kvec_config *c, const kvec_layer *layer) {
    if (c->policy == KVEC_POLICY_H2O) return layer->queries.n_tokens;
    if (c->policy == KVEC_POLICY_TOVA) return 1;
    return kc_focus_rows(c, layer);
}

/* The larger of two counts; -1 (an overflow) stays -1. */
static int64_t kc_larger_count(int64_t a, int64_t b) {
    return a < 0 || b < 0 ? -1 : a > b ? a : b;
}

static kc_dims kc_dims_of(const kvec_config *c, const kvec_cache *cache) {
    kc_dims d;
    const kvec_layer *first = &cache->layers[0];
    d.L = cache->n_layers;
    d.Hk = first->keys.n_heads;
    d.N = first->keys.n_tokens;
    d.D = 0;
    d.n = d.N - c->window;
    d.attention = kvec__uses_attention(c);
    d.rank_union = c->policy == KVEC_POLICY_KVEC && (c->terms.enabled & KVEC_TERM_RANK_UNION) &&
                   (c->terms.enabled & (KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER));
    d.cross_layer = (c->terms.enabled & KVEC_TERM_CROSS_LAYER) != 0;
    d.focus = (c->terms.enabled & KVEC_TERM_HEAD_FOCUS) != 0;
    d.output = kvec__uses_output(c);
    d.H = 0;
    d.uniqueness = c->policy == KVEC_POLICY_KEYDIFF ||
                   (c->policy == KVEC_POLICY_KVEC && (c->terms.enabled & KVEC_TERM_UNIQUENESS));
    d.rows_g = d.split_rows = 0;
    for (int64_t l = 0; l < d.L; l++) {
        const kvec_layer *layer = &cache->layers[l];
        if (layer->keys.head_dim > d.D) d.D = layer->keys.head_dim;
        if (layer->queries.data && layer->queries.n_heads > d.H) d.H = layer->queries.n_heads;
        if (d.attention && kvec__validate_layer(c, layer, 1) == KVEC_OK) { /* shapes as they will be read */
            /* Head focus runs the window twice, W and 4W rows: the fewer rows
               may take more splits, so both are counted. */
            const int64_t g = layer->queries.n_heads / d.Hk;
            /* the window's rows, no more than there are (a window of 2^62 reads only the queries given) */
            const int64_t window_rows = c->window < layer->queries.n_tokens ? c->window : layer->queries.n_tokens;
            const int64_t row_counts[2] = { kvec__count(kc_rows_read(c, layer), g), kvec__count(window_rows, g) };
            for (int k = 0; k < 2; k++) {
                /* -1 (overflow) makes the carve refuse, and kc_prepare before it */
                const int64_t split_rows = row_counts[k] < 0 ? -1 : kvec__count(kc_splits(d.N, d.Hk, row_counts[k]), row_counts[k]);
                d.rows_g = kc_larger_count(d.rows_g, row_counts[k]);
                d.split_rows = kc_larger_count(d.split_rows, split_rows);
            }
        }
    }
    return d;
}

/* Config, cache, budget and what the device supports; queries only where a
   layer will be scored. */
static kvec_result kc_prepare(const kvec_config *config, const kvec_cache *cache, int64_t budget,
                              kvec_config *c) {
    kvec_result r;
    if ((r = kvec__resolve(config, c)) != KVEC_OK) return r;
    if ((r = kc_check_supported(c)) != KVEC_OK) return r;
    if ((r = kvec_validate_cache(cache)) != KVEC_OK) return r;
    if (budget < c->window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    for (int64_t l = 0; l < cache->n_layers; l++) {
        const kvec_layer *layer = &cache->layers[l];
        const int64_t n = layer->keys.n_tokens;
        if (n > kvec__layer_budget(c, budget, l, cache->n_layers, n) &&
            (r = kvec__validate_layer(c, layer, 1)) != KVEC_OK)
            return r;
        if (kvec__count(kvec__count(kvec__count(layer->keys.n_tokens, layer->keys.n_heads), layer->keys.head_dim), 8) < 0)
            return KVEC_ERROR_SIZE_OVERFLOW;
    }
    /* Limits of the launches: grid extents, shared memory of the key direction. */
    const kc_dims d = kc_dims_of(c, cache);
    if (d.Hk > 65535 || d.rows_g < 0 || d.split_rows < 0 || d.rows_g > (int64_t)65535 * KC_ROWS ||
        kvec__count(d.L, d.Hk) > INT32_MAX)
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (d.uniqueness && kc_direction_warps(d.D) == 0) return KVEC_ERROR_SIZE_OVERFLOW; /* head_dim above 6144 */
    return KVEC_OK;
}

static kvec_result kc_scratch_size(const kvec_config *c, const kvec_cache *cache, size_t *bytes,
                                   kc_dims *d_out, size_t *cub_out) {
    kc_dims d = kc_dims_of(c, cache);
    kvec__bump b;
    kc_scratch s;
    kvec__bump_init(&b, NULL, 0);
    kvec_result r = kc_cub_bytes(&d, &s.cub_bytes);
    if (r != KVEC_OK) return r;
    kc_carve(&b, c, &d, &s);
    if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
    *bytes = b.used;
    if (d_out) *d_out = d;
    if (cub_out) *cub_out = s.cub_bytes;
    return KVEC_OK;
}

/* Scratch from the caller: at least what the query says, carved. */
static kvec_result kc_scratch_in(const kvec_config *c, const kvec_cache *cache, void *scratch,
                                 size_t scratch_bytes, kc_scratch *s, kc_dims *d, size_t *needed) {
    size_t cub_bytes;
    kvec_result r;
    if (!scratch) return KVEC_ERROR_NULL_POINTER;
    if ((r = kc_scratch_size(c, cache, needed, d, &cub_bytes)) != KVEC_OK) return r;
    if (scratch_bytes < *needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__bump b;
    kvec__bump_init(&b, scratch, scratch_bytes);
    s->cub_bytes = cub_bytes;
    kc_carve(&b, c, d, s);
    return KVEC_OK;
}

/* The status word: the first thing carved from any scratch (kvec__bump
   aligns the start), so every call finds it at the same place. */
#define KC_STATUS_BYTES (KVEC__ALIGN + sizeof(int32_t)) /* the least scratch a call takes */
static int32_t *kc_status_word(const void *scratch) {
    kvec__bump b;
    kvec__bump_init(&b, (void *)scratch, KC_STATUS_BYTES);
    return (int32_t *)kvec__take(&b, 1, sizeof(int32_t));
}

static kvec_result kc_check_plan_descriptor(const kvec_plan *plan, int64_t L, int64_t Hk) {
    kvec_result r = kvec__check_plan_descriptor(plan);
    if (r != KVEC_OK) return r;
    if (plan->n_layers < L || plan->n_kv_heads != Hk || plan->capacity <= 0) return KVEC_ERROR_PLAN_TOO_SMALL;
    return KVEC_OK;
}

/* The overlap rule of kvec.h on device memory: a call's cache (written
   when it compacts), plan, scores and scratch share no byte that one of
   them writes. */
static kvec_result kc_check_overlaps(const kvec_config *c, const kvec_cache *cache, int cache_written,
                                     const kvec_plan *plan, int64_t plan_layers, int plan_written,
                                     const float *scores, int64_t n_scores, int scores_written,
                                     const void *scratch, size_t scratch_bytes) {
    kvec__call_memory m;
    kvec__call_init(&m, c, cache, cache ? 1 : 0, cache_written);
    if ((plan && !kvec__call_add_plan(&m, plan, 0, plan_layers, plan_written)) ||
        (scores && !kvec__call_add(&m, scores, n_scores, sizeof(float), scores_written)) ||
        !kvec__call_add(&m, scratch, (int64_t)scratch_bytes, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    return kvec__check_overlaps(&m);
}

/* >>host: launching */

/* After every launch: a launch error becomes KVEC_ERROR_CUDA (the CUDA
   error stays readable with cudaPeekAtLastError). With KVEC_CUDA_DEBUG the
   stream is also synchronised, so a fault is reported at its kernel. */
static kvec_result kc_launched(cudaStream_t stream) {
    if (cudaPeekAtLastError() != cudaSuccess) return KVEC_ERROR_CUDA;
#ifdef KVEC_CUDA_DEBUG
    if (cudaStreamSynchronize(stream) != cudaSuccess) return KVEC_ERROR_CUDA;
#else
    (void)stream;
#endif
    return KVEC_OK;
}

/* KC_LAUNCH(kernel, grid, block, shared_bytes, (arguments)) on `stream`. */
#ifndef KC_START /* tests/cuda_emulator.h defines its own, which runs the kernel on the CPU */
#define KC_START(kernel, grid, block, shared, args) kernel<<<(grid), (block), (shared), stream>>> args
#endif
#define KC_LAUNCH(kernel, grid, block, shared, args)                                            \
    do {                                                                                        \
        KC_START(kernel, grid, block, shared, args);                                            \
        kvec_result launch_result_ = kc_launched(stream);                                       \
        if (launch_result_ != KVEC_OK) return launch_result_;                                   \
    } while (0)

#define KC_CUDA(call) do { if ((call) != cudaSuccess) return KVEC_ERROR_CUDA; } while (0)

static unsigned kc_blocks(int64_t n, int64_t per_block) { return (unsigned)((n + per_block - 1) / per_block); }

/* Tensor cores where the keys allow them: fp16 or bf16, contiguous dims
   (so a row is whole 16-element pieces), head_dim a multiple of 16. Build
   with KVEC_CUDA_SIMT_ONLY to compare against the SIMT path. */
static int kc_tile_kind(const kvec_tensor &keys) {
#ifdef KVEC_CUDA_SIMT_ONLY
    (void)keys;
    return KC_TILE_SIMT;
#else
    const int64_t e = 2;
    if (keys.dtype == KVEC_DTYPE_F32 || keys.stride_dim != e || keys.head_dim % 16 != 0) return KC_TILE_SIMT;
    return keys.dtype == KVEC_DTYPE_F16 ? KC_TILE_MMA_F16 : KC_TILE_MMA_BF16;
#endif
}

/* The three launches of window attention for one tile kind. */
template <int KIND>
static kvec_result kc_attention_passes(const kc_attn &a, int64_t Hk, int64_t S, int64_t keys_per_split,
                                       int64_t row_chunks, float *sums, int64_t sums_stride, kc_scratch *s,
                                       cudaStream_t stream) {
    KC_LAUNCH(kc_attn_stats<KIND>, dim3((unsigned)S, (unsigned)Hk, (unsigned)row_chunks), KC_THREADS, 0, (
        a, keys_per_split, (int)S, s->stats_part, s->status));
    KC_LAUNCH(kc_attn_combine, kc_blocks(Hk * a.total, 256), 256, 0, (
        s->stats_part, (int)S, a.total, Hk, a.weight, s->stats, s->status));
    KC_LAUNCH(kc_attn_probs<KIND>, dim3(kc_blocks(a.n_out, KC_TILE), (unsigned)Hk), KC_THREADS, 0, (
        a, s->stats, sums, sums_stride, s->status));
    return KVEC_OK;
}

/* Key splits of the statistics pass: about KC_SPLIT_BLOCKS blocks per
   layer, at least 256 keys each, at most KC_SPLITS. It depends on the
   shape alone, not on the GPU's multiprocessor count, so the combine
   order is the same whatever GPU runs it. */
static int64_t kc_splits(int64_t N, int64_t Hk, int64_t total_rows) {
    const int64_t row_chunks = total_rows / KC_ROWS + (total_rows % KC_ROWS != 0), most = N / 256 + (N % 256 != 0);
    int64_t S = (KC_SPLIT_BLOCKS + Hk * row_chunks - 1) / (Hk * row_chunks);
    S = S > KC_SPLITS ? KC_SPLITS : S;
    S = S > most ? most : S;
    return S < 1 ? 1 : S;
}

/* Window attention of every KV head of a layer, summed over the last
   n_rows query rows (starting at row_first) and the heads of each group,
   times weight, into sums ([Hk][sums_stride], keys 0 .. n_out-1). */
static kvec_result kc_window_attention(const kvec_layer *layer, int64_t row_first, int64_t n_rows,
                                       int64_t n_out, float weight, float *sums, int64_t sums_stride,
                                       kc_scratch *s, cudaStream_t stream) {
    const int64_t N = layer->keys.n_tokens, Hk = layer->keys.n_heads;
    kc_attn a;
    a.keys = kc_view_of(layer->keys);
    a.queries = kc_view_of(layer->queries);
    a.g = layer->queries.n_heads / Hk;
    a.row_first = row_first;
    a.total = n_rows * a.g;
    a.first_position = N - layer->queries.n_tokens + row_first;
    a.n_out = n_out;
    a.scale = 1.0f / sqrtf((float)layer->keys.head_dim);
    a.weight = weight;
    if (n_out <= 0) return KVEC_OK;
    const int64_t row_chunks = (a.total + KC_ROWS - 1) / KC_ROWS;
    const int64_t S = kc_splits(N, Hk, a.total);
    const int64_t keys_per_split = ((N + S - 1) / S + KC_TILE - 1) / KC_TILE * KC_TILE;
    /* kc_dims_of sized these for every call; a miss here is a bug, refused rather than overrun */
    if (Hk * S * a.total > s->stats_part_count || Hk * a.total > s->stats_count) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    switch (kc_tile_kind(layer->keys)) {
    case KC_TILE_MMA_F16:
        return kc_attention_passes<KC_TILE_MMA_F16>(a, Hk, S, keys_per_split, row_chunks, sums, sums_stride, s, stream);
    case KC_TILE_MMA_BF16:
        return kc_attention_passes<KC_TILE_MMA_BF16>(a, Hk, S, keys_per_split, row_chunks, sums, sums_stride, s, stream);
    default:
        return kc_attention_passes<KC_TILE_SIMT>(a, Hk, S, keys_per_split, row_chunks, sums, sums_stride, s, stream);
    }
}

/* The mean key direction and -cos(k_i, kbar) of every head into s->uniq. */
static kvec_result kc_key_uniqueness(const kvec_layer *layer, int64_t n, float *out, int64_t out_stride,
                                     kc_scratch *s, cudaStream_t stream) {
    const kc_view keys = kc_view_of(layer->keys);
    const int64_t N = keys.n_tokens, Hk = keys.n_heads, D = keys.head_dim;
    const int64_t per_split = (N + KC_KEY_SPLITS - 1) / KC_KEY_SPLITS, warps = kc_direction_warps(D);
    const size_t shared = (size_t)(warps * D) * sizeof(double);
    KC_LAUNCH(kc_key_direction_part, dim3(KC_KEY_SPLITS, (unsigned)Hk), (unsigned)(32 * warps), shared, (
        keys, per_split, s->kbar_part, s->status));
    KC_LAUNCH(kc_key_direction_combine, (unsigned)Hk, 256, 0, (
        s->kbar_part, D, N, s->kbar, s->kbar_norm, s->status));
    KC_LAUNCH(kc_uniqueness, dim3(kc_blocks(n, 8), (unsigned)Hk), 256, 0, (
        keys, s->kbar, s->kbar_norm, out, out_stride, n, s->status));
    return KVEC_OK;
}

/* Positions of each head sorted by descending score (ties: lower position
   first) into s->sort_positions_out. */
static kvec_result kc_sort_descending(const float *scores, int64_t stride, int64_t Hk, int64_t n,
                                      kc_scratch *s, cudaStream_t stream) {
    size_t temp_bytes = s->cub_bytes;
    KC_LAUNCH(kc_sort_prep, dim3(kc_blocks(n, 256), (unsigned)Hk), 256, 0, (
        scores, stride, n, s->sort_keys, s->sort_positions, s->status));
    /* Runs even after a device-side error: it reads only scratch. */
    KC_CUDA(cub::DeviceRadixSort::SortPairs(s->cub_temp, temp_bytes, s->sort_keys, s->sort_keys_out,
                                            s->sort_positions, s->sort_positions_out, (int)(Hk * n), 0,
                                            kc_sort_end_bit(Hk), stream));
    return kc_launched(stream);
}

/* NaN or Inf anywhere in t sets KVEC_ERROR_NON_FINITE. */
static kvec_result kc_check_tensor(const kvec_tensor &t, int32_t *status, cudaStream_t stream) {
    KC_LAUNCH(kc_check_finite, kc_blocks(t.n_tokens * t.n_heads * t.head_dim, 256), 256, 0, (kc_view_of(t), status));
    return KVEC_OK;
}

/* Scores of one layer ([Hk][N] at `scores`) for the policy. */
static kvec_result kc_score_layer(const kvec_config *c, const kvec_layer *layer, int64_t l, int64_t layer_budget,
                                  float *scores, kc_scratch *s, cudaStream_t stream) {
    const int64_t N = layer->keys.n_tokens, Hk = layer->keys.n_heads, n = N - c->window;
    const dim3 per_token(kc_blocks(n > 0 ? n : 1, 256), (unsigned)Hk);
    const kvec_tensor *q = &layer->queries;
    kvec_result r;
    int64_t h2o_rows = 0;
    if (n <= 0) { /* everything is window */
        KC_LAUNCH(kc_finish, dim3(kc_blocks(N, 256), (unsigned)Hk), 256, 0, (scores, N, 0, 0, s->status));
        return KVEC_OK;
    }
    /* What the scores read must be finite, as on the CPU: the queries, and the
       keys (the attention passes check those tiles as they load them). */
    if (kvec__uses_attention(c)) r = kc_check_tensor(*q, s->status, stream);
    else r = kc_check_tensor(layer->keys, s->status, stream);
    if (r != KVEC_OK) return r;
    switch (c->policy) {
    case KVEC_POLICY_KVEC:
    case KVEC_POLICY_SNAPKV:
    case KVEC_POLICY_PYRAMIDKV: {
        const int64_t g = q->n_heads / Hk;
        const uint32_t terms = c->terms.enabled;
        if ((r = kc_window_attention(layer, q->n_tokens - c->window, c->window, n, 1.0f / (float)g, s->sums, N,
                                     s, stream)) != KVEC_OK)
            return r;
        KC_LAUNCH(kc_pool, per_token, 256, 0, (s->sums, N, scores, N, n, c->pool_kernel, (int)c->pooling, s->status));
        if (c->policy != KVEC_POLICY_KVEC) break;
        if (terms & KVEC_TERM_HEAD_FOCUS) { /* flat heads look again, at 4W rows */
            const int64_t rows = kc_focus_rows(c, layer);
            KC_LAUNCH(kc_moments, (unsigned)Hk, 1024, 0, (scores, N, n, s->moments_p, s->status));
            if ((r = kc_window_attention(layer, q->n_tokens - rows, rows, n, 1.0f / (float)g, s->sums, N, s,
                                         stream)) != KVEC_OK)
                return r;
            KC_LAUNCH(kc_pool, per_token, 256, 0, (s->sums, N, s->wide, N, n, c->pool_kernel, (int)c->pooling,
                                                    s->status));
            KC_LAUNCH(kc_focus_pick, per_token, 256, 0, (scores, N, s->wide, n, s->moments_p, c->terms.focus_cv,
                                                          s->status));
        }
        if (!(terms & (KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER))) break; /* rank by P, as SnapKV */
        /* K-VEC: z(P) + mu z(U) + gamma C, optionally as a rank union with P. */
        KC_LAUNCH(kc_moments, (unsigned)Hk, 1024, 0, (scores, N, n, s->moments_p, s->status));
        const int rank_union = (terms & KVEC_TERM_RANK_UNION) != 0;
        if (rank_union) {
            if ((r = kc_sort_descending(scores, N, Hk, n, s, stream)) != KVEC_OK) return r;
            KC_LAUNCH(kc_rank_of, per_token, 256, 0, (s->sort_positions_out, n, s->rank, s->status));
        }
        const int uniqueness = (terms & KVEC_TERM_UNIQUENESS) != 0;
        if (uniqueness) {
            if ((r = kc_key_uniqueness(layer, n, s->uniq, n, s, stream)) != KVEC_OK) return r;
            KC_LAUNCH(kc_moments, (unsigned)Hk, 1024, 0, (s->uniq, n, n, s->moments_u, s->status));
        }
        KC_LAUNCH(kc_kvec_combine, per_token, 256, 0, (scores, N, uniqueness ? s->uniq : NULL, n, s->moments_p,
                                                        s->moments_u, c->terms.mu,
                                                        (terms & KVEC_TERM_CROSS_LAYER) ? s->kept_before : NULL,
                                                        c->terms.gamma, s->status));
        if (rank_union) {
            if ((r = kc_sort_descending(scores, N, Hk, n, s, stream)) != KVEC_OK) return r;
            KC_LAUNCH(kc_rank_union, per_token, 256, 0, (scores, N, n, s->sort_positions_out, s->rank,
                                                          c->terms.attention_share, s->status));
        }
        break;
    }
    case KVEC_POLICY_H2O: {
        const int64_t g = q->n_heads / Hk;
        if ((r = kc_window_attention(layer, 0, q->n_tokens, n, 1.0f / (float)g, scores, N, s, stream)) !=
            KVEC_OK)
            return r;
        h2o_rows = q->n_tokens;
        break;
    }
    case KVEC_POLICY_TOVA:
        if ((r = kc_window_attention(layer, q->n_tokens - 1, 1, n, 1.0f, scores, N, s, stream)) != KVEC_OK)
            return r;
        KC_LAUNCH(kc_tova_average, kc_blocks(n, 256), 256, 0, (scores, N, n, Hk,
                                                                          1.0f / (float)q->n_heads, s->status));
        break;
    case KVEC_POLICY_KNORM:
        KC_LAUNCH(kc_key_norm, dim3(kc_blocks(n, 8), (unsigned)Hk), 256, 0, (
            kc_view_of(layer->keys), scores, N, n, s->status));
        break;
    case KVEC_POLICY_KEYDIFF:
        if ((r = kc_key_uniqueness(layer, n, scores, N, s, stream)) != KVEC_OK) return r;
        break;
    case KVEC_POLICY_CRITICALKV:
    case KVEC_POLICY_LAPROX: {
        const int p = c->policy == KVEC_POLICY_CRITICALKV ? 1 : 2;
        const kvec_tensor *V = &layer->values, *Wo = &layer->out_proj;
        const int64_t g = q->n_heads / Hk, g_out = Wo->n_heads / Hk;
        if ((r = kc_check_tensor(*V, s->status, stream)) != KVEC_OK ||
            (r = kc_check_tensor(*Wo, s->status, stream)) != KVEC_OK)
            return r;
        if ((r = kc_window_attention(layer, q->n_tokens - c->window, c->window, n, 1.0f / (float)g, s->sums, N,
                                     s, stream)) != KVEC_OK)
            return r;
        KC_LAUNCH(kc_pool, per_token, 256, 0, (s->sums, N, scores, N, n, c->pool_kernel, (int)c->pooling, s->status));
        KC_LAUNCH(kc_output_norm, dim3(kc_blocks(n, KC_ROWS), (unsigned)Wo->n_heads), KC_THREADS, 0, (
            kc_view_of(*V), kc_view_of(*Wo), g_out, n, p, s->norm_part, s->status));
        KC_LAUNCH(kc_output_mean, per_token, 256, 0, (s->norm_part, n, g_out, p, s->out_norm, s->status));
        if (p == 1) {
            const int64_t free_slots = layer_budget - c->window, first = free_slots > 0 ? free_slots / 2 : 0;
            KC_LAUNCH(kc_criticalkv, (unsigned)Hk, KC_SELECT_THREADS, 0, (scores, N, n, s->out_norm, first,
                                                                           s->first_stage, s->status));
        } else {
            KC_LAUNCH(kc_laprox, 1, 1024, 0, (scores, N, n, Hk, s->out_norm, s->status));
        }
        break;
    }
    default: /* StreamingLLM, Random */
        KC_LAUNCH(kc_simple_scores, per_token, 256, 0, (scores, N, n, (int)c->policy, c->sink_tokens,
                                                                    c->seed, l, s->status));
        break;
    }
    KC_LAUNCH(kc_finish, dim3(kc_blocks(N, 256), (unsigned)Hk), 256, 0, (scores, N, n, h2o_rows,
                                                                                     s->status));
    return KVEC_OK;
}

/* Scores of layers [first, last) into scores ([L][Hk][N]). */
static kvec_result kc_score_layers(const kvec_config *c, const kvec_cache *cache, int64_t budget, float *scores,
                                   int64_t first, int64_t last, kc_scratch *s, cudaStream_t stream) {
    const int64_t L = cache->n_layers, Hk = cache->layers[0].keys.n_heads, N = cache->layers[0].keys.n_tokens;
    kvec_result r;
    for (int64_t l = first; l < last; l++) {
        const kvec_layer *layer = &cache->layers[l];
        const int64_t layer_budget = kvec__layer_budget(c, budget, l, L, N);
        if (layer_budget >= N) { /* kept whole: no scores, but NaN keys are refused as on the CPU */
            if ((r = kc_check_tensor(layer->keys, s->status, stream)) != KVEC_OK) return r;
            continue;
        }
        if ((r = kc_score_layer(c, layer, l, layer_budget, scores + l * Hk * N, s, stream)) != KVEC_OK) return r;
    }
    return KVEC_OK;
}

/* Plans of layers [first, last), up to KC_BATCH per launch (one block per
   head, or per layer under the cross-head term). */
static kvec_result kc_select_layers(const kvec_config *c, const float *scores, int64_t L, int64_t Hk, int64_t N,
                                    int64_t budget, const kvec_plan *plan, int64_t first, int64_t last,
                                    uint8_t *select_flags, int32_t *status, cudaStream_t stream) {
    const int cross_head = (c->terms.enabled & KVEC_TERM_CROSS_HEAD) != 0;
    for (int64_t l0 = first; l0 < last; l0 += KC_BATCH) {
        kc_select_batch batch;
        batch.n_layers = (int)(last - l0 < KC_BATCH ? last - l0 : KC_BATCH);
        batch.first_layer = l0;
        for (int b = 0; b < batch.n_layers; b++) {
            const int64_t layer_budget = kvec__layer_budget(c, budget, l0 + b, L, N);
            batch.keep_all[b] = layer_budget >= N;
            batch.free_slots[b] = layer_budget - c->window;
            batch.reserve[b] = cross_head ? (int64_t)floor((double)c->terms.beta * (double)batch.free_slots[b]) : 0;
        }
        KC_LAUNCH(kc_select, dim3(cross_head ? 1u : (unsigned)Hk, (unsigned)batch.n_layers), KC_SELECT_THREADS, 0, (
            scores, N, Hk, c->window, batch, cross_head, plan->kept_count, plan->kept_positions, plan->n_kv_heads,
            plan->capacity, select_flags, status));
    }
    return KVEC_OK;
}

static kvec_result kc_compact_all(kvec_cache *cache, const kvec_plan *plan, int32_t *status, cudaStream_t stream) {
    const int64_t L = cache->n_layers, Hk = cache->layers[0].keys.n_heads;
    for (int64_t l0 = 0; l0 < L; l0 += KC_BATCH) {
        kc_compact_batch batch;
        batch.n_layers = (int)(L - l0 < KC_BATCH ? L - l0 : KC_BATCH);
        batch.first_layer = l0;
        for (int b = 0; b < batch.n_layers; b++) {
            batch.keys[b] = kc_view_of(cache->layers[l0 + b].keys);
            batch.values[b] = kc_view_of(cache->layers[l0 + b].values);
        }
        KC_LAUNCH(kc_compact, dim3((unsigned)Hk, (unsigned)batch.n_layers, 2), KC_COMPACT_THREADS, 0, (
            batch, plan->kept_count, plan->kept_positions, plan->n_kv_heads, plan->capacity, status));
    }
    return KVEC_OK;
}

/* The plan must hold each layer's budget (every head keeps that many). */
static kvec_result kc_check_plan_capacity(const kvec_config *c, const kvec_plan *plan, int64_t L, int64_t Hk,
                                          int64_t N, int64_t budget) {
    kvec_result r = kc_check_plan_descriptor(plan, L, Hk);
    if (r != KVEC_OK) return r;
    for (int64_t l = 0; l < L; l++)
        if (plan->capacity < kvec__layer_budget(c, budget, l, L, N)) return KVEC_ERROR_PLAN_TOO_SMALL;
    return KVEC_OK;
}

/* >>host: api */

extern "C" {

KVEC_CUDA_API kvec_result kvec_cuda_scratch_bytes(const kvec_config *config, const kvec_cache *cache,
                                                  size_t *bytes) {
    kvec_config c;
    kvec_result r;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kc_check_supported(&c)) != KVEC_OK) return r;
    if ((r = kvec_validate_cache(cache)) != KVEC_OK) return r;
    return kc_scratch_size(&c, cache, bytes, NULL, NULL);
}

KVEC_CUDA_API kvec_result kvec_cuda_score(const kvec_config *config, const kvec_cache *cache, int64_t budget,
                                          float *scores, void *scratch, size_t scratch_bytes, void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    kvec_config c;
    kc_scratch s;
    kc_dims d;
    kvec_result r;
    size_t needed;
    if (!scores) return KVEC_ERROR_NULL_POINTER;
    if ((r = kc_prepare(config, cache, budget, &c)) != KVEC_OK) return r;
    /* Later layers' scores depend on earlier layers' selection: kvec_cuda_evict. */
    if (c.terms.enabled & KVEC_TERM_CROSS_LAYER) return KVEC_ERROR_BAD_CONFIG;
    if ((r = kc_scratch_in(&c, cache, scratch, scratch_bytes, &s, &d, &needed)) != KVEC_OK) return r;
    if ((r = kc_check_overlaps(&c, cache, 0, NULL, 0, 0, scores, d.L * d.Hk * d.N, 1, scratch, needed)) != KVEC_OK)
        return r;
    KC_CUDA(cudaMemsetAsync(s.status, 0, sizeof(int32_t), stream));
    return kc_score_layers(&c, cache, budget, scores, 0, d.L, &s, stream);
}

/* kvec_cuda_select's scratch: the status word, and under the cross-head
   term one flag byte per token for each layer of a launch. The same
   layout begins every kvec_cuda_scratch_bytes scratch. */
static size_t kc_select_bytes(const kvec_config *c, int64_t n_tokens) {
    kvec__bump b;
    int32_t *status;
    uint8_t *flags;
    kvec__bump_init(&b, NULL, 0);
    kc_carve_selection(&b, c, n_tokens, &status, &flags);
    return b.used;
}

KVEC_CUDA_API size_t kvec_cuda_select_scratch_bytes(const kvec_config *config, int64_t n_tokens) {
    kvec_config c;
    if (kvec__resolve(config, &c) != KVEC_OK || n_tokens <= 0 || kvec__count(n_tokens, KC_BATCH) < 0) return 0;
    return kc_select_bytes(&c, n_tokens);
}

KVEC_CUDA_API kvec_result kvec_cuda_select(const kvec_config *config, const float *scores, int64_t n_layers,
                                           int64_t n_kv_heads, int64_t n_tokens, int64_t budget, kvec_plan *plan,
                                           void *scratch, size_t scratch_bytes, void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    kvec_config c;
    kvec_result r;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kc_check_supported(&c)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if (n_layers <= 0 || n_kv_heads <= 0 || n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (n_kv_heads > 65535 || kvec__count(kvec__count(n_layers, n_kv_heads), n_tokens) < 0 ||
        kvec__count(n_tokens, KC_BATCH) < 0)
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (scratch_bytes < kc_select_bytes(&c, n_tokens)) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    if (budget < c.window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    if ((r = kc_check_plan_capacity(&c, plan, n_layers, n_kv_heads, n_tokens, budget)) != KVEC_OK) return r;
    if ((r = kc_check_overlaps(&c, NULL, 0, plan, n_layers, 1, scores, n_layers * n_kv_heads * n_tokens, 0, scratch,
                               kc_select_bytes(&c, n_tokens))) != KVEC_OK)
        return r;
    kvec__bump b;
    int32_t *status;
    uint8_t *flags;
    kvec__bump_init(&b, scratch, scratch_bytes);
    kc_carve_selection(&b, &c, n_tokens, &status, &flags);
    return kc_select_layers(&c, scores, n_layers, n_kv_heads, n_tokens, budget, plan, 0, n_layers, flags, status,
                            stream);
}

KVEC_CUDA_API kvec_result kvec_cuda_compact(kvec_cache *cache, const kvec_plan *plan, void *scratch,
                                            size_t scratch_bytes, void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    kvec_result r;
    if ((r = kvec_validate_cache(cache)) != KVEC_OK) return r;
    if (!scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < KC_STATUS_BYTES) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    const int64_t L = cache->n_layers, Hk = cache->layers[0].keys.n_heads, N = cache->layers[0].keys.n_tokens;
    if ((r = kc_check_plan_descriptor(plan, L, Hk)) != KVEC_OK) return r;
    if (Hk > 65535 || kvec__count(L, Hk) > INT32_MAX) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kc_check_overlaps(NULL, cache, 1, plan, L, 0, NULL, 0, 0, scratch, KC_STATUS_BYTES)) != KVEC_OK) return r;
    int32_t *status = kc_status_word(scratch);
    KC_LAUNCH(kc_check_plan, (unsigned)(L * Hk), 256, 0, (plan->kept_count, plan->kept_positions,
                                                                     plan->n_kv_heads, Hk, plan->capacity, N,
                                                                     status));
    return kc_compact_all(cache, plan, status, stream);
}

KVEC_CUDA_API kvec_result kvec_cuda_evict(const kvec_config *config, kvec_cache *cache, int64_t budget,
                                          kvec_plan *plan, void *scratch, size_t scratch_bytes, void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    kvec_config c;
    kc_scratch s;
    kc_dims d;
    kvec_result r;
    size_t needed;
    if ((r = kc_prepare(config, cache, budget, &c)) != KVEC_OK) return r;
    if ((r = kc_scratch_in(&c, cache, scratch, scratch_bytes, &s, &d, &needed)) != KVEC_OK) return r;
    if ((r = kc_check_plan_capacity(&c, plan, d.L, d.Hk, d.N, budget)) != KVEC_OK) return r;
    if ((r = kc_check_overlaps(&c, cache, 1, plan, d.L, 1, NULL, 0, 0, scratch, needed)) != KVEC_OK) return r;
    KC_CUDA(cudaMemsetAsync(s.status, 0, sizeof(int32_t), stream));
    if (d.cross_layer) {
        /* Layer by layer: each layer's scores see which tokens the earlier ones kept. */
        KC_CUDA(cudaMemsetAsync(s.kept_before, 0, (size_t)d.N, stream));
        for (int64_t l = 0; l < d.L; l++) {
            if ((r = kc_score_layers(&c, cache, budget, s.scores, l, l + 1, &s, stream)) != KVEC_OK) return r;
            if ((r = kc_select_layers(&c, s.scores, d.L, d.Hk, d.N, budget, plan, l, l + 1, s.select_flags,
                                      s.status, stream)) != KVEC_OK)
                return r;
            KC_LAUNCH(kc_mark_coverage, (unsigned)d.Hk, 256, 0, (plan->kept_count, plan->kept_positions, l,
                                                                 plan->n_kv_heads, plan->capacity, s.kept_before,
                                                                 s.status));
        }
    } else {
        if ((r = kc_score_layers(&c, cache, budget, s.scores, 0, d.L, &s, stream)) != KVEC_OK) return r;
        if ((r = kc_select_layers(&c, s.scores, d.L, d.Hk, d.N, budget, plan, 0, d.L, s.select_flags, s.status,
                                  stream)) != KVEC_OK)
            return r;
    }
    return kc_compact_all(cache, plan, s.status, stream);
}

/* >>host: reconstruction scores */

/* The status word, then [Hk][R*g] (max, normaliser) pairs. */
static size_t kc_recon_bytes(const kvec__recon_dims *d) {
    kvec__bump b;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, 1, sizeof(int32_t));
    kvec__take(&b, kvec__count(d->n_kv_heads, kvec__count(d->pass_rows, d->group)), sizeof(float2));
    return b.overflow ? 0 : b.used;
}

KVEC_CUDA_API size_t kvec_cuda_reconstruction_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                            const kvec_reconstruction *pass) {
    kvec_config c;
    kvec__recon_dims d;
    if (kvec__resolve(config, &c) != KVEC_OK || kvec__check_recon(&c, layer, pass, &d) != KVEC_OK) return 0;
    return kc_recon_bytes(&d);
}

KVEC_CUDA_API kvec_result kvec_cuda_reconstruction_scores(const kvec_config *config, const kvec_layer *layer,
                                                          const kvec_reconstruction *pass, float *scores,
                                                          void *scratch, size_t scratch_bytes, void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    kvec_config c;
    kvec__recon_dims d;
    kvec__call_memory m;
    kvec__bump b;
    kvec_tensor sink_keys, chunk_keys;
    int32_t *status;
    float2 *stats;
    kvec_result r;
    size_t needed;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__check_recon(&c, layer, pass, &d)) != KVEC_OK) return r;
    if ((needed = kc_recon_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    if (d.n_kv_heads > 65535) return KVEC_ERROR_BAD_EXTENT; /* one grid row per KV head */
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&layer->keys, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&pass->queries, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&pass->keys, 0);
    if (!kvec__call_add(&m, scores, d.n_kv_heads * layer->keys.n_tokens, sizeof(float), 1) ||
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__bump_init(&b, scratch, scratch_bytes);
    status = (int32_t *)kvec__take(&b, 1, sizeof(int32_t));
    stats = (float2 *)kvec__take(&b, d.n_kv_heads * d.pass_rows * d.group, sizeof(float2));
    if (status != kc_status_word(scratch)) return KVEC_ERROR_CUDA; /* the layout every chain shares */
    KC_CUDA(cudaMemsetAsync(status, 0, sizeof(int32_t), stream));
    /* what the softmax reads must be finite: the sinks, the chunk, the pass */
    sink_keys = layer->keys;
    sink_keys.n_tokens = d.sinks;
    chunk_keys = layer->keys;
    chunk_keys.data = (char *)layer->keys.data + pass->chunk_begin * layer->keys.stride_token;
    chunk_keys.n_tokens = d.chunk;
    {
        const kvec_tensor *checked[4] = { &sink_keys, &chunk_keys, &pass->queries, &pass->keys };
        for (int i = 0; i < 4; i++)
            if (checked[i]->n_tokens > 0)
                KC_LAUNCH(kc_check_finite, kc_blocks(checked[i]->n_tokens * checked[i]->n_heads * checked[i]->head_dim, 256),
                          256, 0, (kc_view_of(*checked[i]), status));
    }
    {
        const float scale = 1.0f / sqrtf((float)d.head_dim);
        const dim3 rows(kc_blocks(d.pass_rows * d.group, 128), (unsigned)d.n_kv_heads);
        const dim3 keys(kc_blocks(d.chunk, 128), (unsigned)d.n_kv_heads);
        KC_LAUNCH(kc_recon_rows, rows, 128, 0,
                  (kc_view_of(layer->keys), kc_view_of(pass->queries), kc_view_of(pass->keys), d.sinks,
                   pass->chunk_begin, d.chunk, d.group, scale, stats, status));
        KC_LAUNCH(kc_recon_keys, keys, 128, 0,
                  (kc_view_of(layer->keys), kc_view_of(pass->queries), pass->chunk_begin, d.chunk, d.group, scale,
                   stats, scores, layer->keys.n_tokens, status));
    }
    return KVEC_OK;
}

/* What kvec_learned_scores checks on the host (the weights are device
   memory: their values are checked on the device): *first_rows gets the
   first layer's rows, *needed the scratch (the status word, and the MLP's
   hidden layer for every token). */
static kvec_result kc_learned_check(const kvec_scorer *s, const kvec_tensor *hidden, int64_t *first_rows,
                                    size_t *needed) {
    kvec_result r;
    size_t cpu_bytes;
    kvec__bump b;
    if ((r = kvec_learned_scores_scratch_bytes(s, &cpu_bytes)) != KVEC_OK) return r; /* the scorer's fields */
    if (!hidden) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec_validate_tensor(hidden)) != KVEC_OK) return r;
    if (hidden->n_heads != 1 || hidden->head_dim != s->n_embd) return KVEC_ERROR_SHAPE_MISMATCH;
    if (s->n_kv_heads > INT64_MAX / hidden->n_tokens) return KVEC_ERROR_SIZE_OVERFLOW;
    *first_rows = s->kind == KVEC_SCORER_MLP ? s->n_hidden : s->n_kv_heads;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, 1, sizeof(int32_t));
    if (s->kind == KVEC_SCORER_MLP) kvec__take(&b, kvec__count(hidden->n_tokens, s->n_hidden), sizeof(float));
    if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
    *needed = b.used;
    return KVEC_OK;
}

KVEC_CUDA_API size_t kvec_cuda_learned_scores_scratch_bytes(const kvec_scorer *scorer, const kvec_tensor *hidden) {
    int64_t rows;
    size_t needed = 0;
    return kc_learned_check(scorer, hidden, &rows, &needed) == KVEC_OK ? needed : 0;
}

KVEC_CUDA_API kvec_result kvec_cuda_learned_scores(const kvec_scorer *scorer, const kvec_tensor *hidden, float *scores,
                                                   int64_t scores_stride, void *scratch, size_t scratch_bytes,
                                                   void *stream_) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    const kvec_scorer *s = scorer;
    kvec__call_memory m;
    kvec__bump b;
    kvec_result r;
    size_t needed;
    int64_t rows, T, written;
    int32_t *status;
    float *mid = NULL;
    if ((r = kc_learned_check(s, hidden, &rows, &needed)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    T = hidden->n_tokens;
    if (scores_stride < T) return KVEC_ERROR_BAD_STRIDE;
    if ((written = kvec__count(s->n_kv_heads - 1, scores_stride)) < 0 || written > INT64_MAX - T)
        return KVEC_ERROR_SIZE_OVERFLOW;
    written += T;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(hidden, 0);
    if (!kvec__call_add(&m, s->weight, kvec__count(rows, s->n_embd), sizeof(float), 0) ||
        !kvec__call_add(&m, s->bias, rows, sizeof(float), 0) ||
        (s->kind == KVEC_SCORER_MLP &&
         (!kvec__call_add(&m, s->weight2, kvec__count(s->n_kv_heads, s->n_hidden), sizeof(float), 0) ||
          !kvec__call_add(&m, s->bias2, s->n_kv_heads, sizeof(float), 0))) ||
        !kvec__call_add(&m, scores, written, sizeof(float), 1) ||
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (T * (s->kind == KVEC_SCORER_MLP ? s->n_hidden : s->n_kv_heads) > (int64_t)INT32_MAX * 128)
        return KVEC_ERROR_BAD_EXTENT; /* one grid dimension of 128-thread blocks */
    kvec__bump_init(&b, scratch, scratch_bytes);
    status = (int32_t *)kvec__take(&b, 1, sizeof(int32_t));
    if (s->kind == KVEC_SCORER_MLP) mid = (float *)kvec__take(&b, T * s->n_hidden, sizeof(float));
    if (status != kc_status_word(scratch)) return KVEC_ERROR_CUDA;
    KC_CUDA(cudaMemsetAsync(status, 0, sizeof(int32_t), stream));
    {   /* every value read must be finite: the hidden states and each weight array, as [n][1][width] views */
        kvec_tensor arrays[5];
        int n = 0;
        arrays[n++] = *hidden;
        arrays[n++] = kvec_tensor_contiguous((void *)s->weight, KVEC_DTYPE_F32, rows, 1, s->n_embd);
        arrays[n++] = kvec_tensor_contiguous((void *)s->bias, KVEC_DTYPE_F32, rows, 1, 1);
        if (s->kind == KVEC_SCORER_MLP) {
            arrays[n++] = kvec_tensor_contiguous((void *)s->weight2, KVEC_DTYPE_F32, s->n_kv_heads, 1, s->n_hidden);
            arrays[n++] = kvec_tensor_contiguous((void *)s->bias2, KVEC_DTYPE_F32, s->n_kv_heads, 1, 1);
        }
        for (int i = 0; i < n; i++)
            KC_LAUNCH(kc_check_finite, kc_blocks(arrays[i].n_tokens * arrays[i].head_dim, 256), 256, 0,
                      (kc_view_of(arrays[i]), status));
    }
    if (mid)
        KC_LAUNCH(kc_learned_hidden, kc_blocks(T * s->n_hidden, 128), 128, 0,
                  (kc_view_of(*hidden), s->weight, s->bias, s->n_hidden, mid, status));
    KC_LAUNCH(kc_learned_out, kc_blocks(T * s->n_kv_heads, 128), 128, 0,
              (kc_view_of(*hidden), mid ? s->weight2 : s->weight, mid ? s->bias2 : s->bias, mid, s->n_hidden,
               s->n_kv_heads, s->output == KVEC_SCORER_LOG_RETENTION, scores, scores_stride, status));
    return KVEC_OK;
}

KVEC_CUDA_API kvec_result kvec_cuda_reset_status(void *scratch, void *stream_) {
    if (!scratch) return KVEC_ERROR_NULL_POINTER;
    KC_CUDA(cudaMemsetAsync(kc_status_word(scratch), 0, sizeof(int32_t), (cudaStream_t)stream_));
    return KVEC_OK;
}

KVEC_CUDA_API kvec_result kvec_cuda_status(const void *scratch, void *stream_, kvec_result *result) {
    const cudaStream_t stream = (cudaStream_t)stream_;
    int32_t value = 0;
    if (!scratch || !result) return KVEC_ERROR_NULL_POINTER;
    KC_CUDA(cudaMemcpyAsync(&value, kc_status_word(scratch), sizeof value, cudaMemcpyDeviceToHost, stream));
    KC_CUDA(cudaStreamSynchronize(stream));
    *result = (kvec_result)value;
    return KVEC_OK;
}

} /* extern "C" */
