/* kvec.h - KV-cache eviction for LLM inference engines - v0.1.0 - MIT license (end of file)

   One header. In exactly one C or C++ file of your program:

       #define KVEC_IMPLEMENTATION
       #include "kvec.h"

   and include it plainly everywhere else.

QUICK START

       // One layer of your engine's cache, fp16, laid out [token][kv_head][dim].
       kvec_layer layers[32];
       for (int l = 0; l < 32; l++) {
           layers[l].keys    = kvec_tensor_contiguous(k_ptr[l], KVEC_DTYPE_F16, n_tokens, 8, 128);
           layers[l].values  = kvec_tensor_contiguous(v_ptr[l], KVEC_DTYPE_F16, n_tokens, 8, 128);
           // The last 32 post-RoPE queries of the prefix, all 32 query heads.
           layers[l].queries = kvec_tensor_contiguous(q_ptr[l], KVEC_DTYPE_F32, 32, 32, 128);
       }
       kvec_cache cache = { layers, 32 };
       kvec_result r = kvec_evict(&cache, 1024);   // keep 1024 tokens per KV head
       if (r != KVEC_OK) fprintf(stderr, "kvec: %s\n", kvec_result_string(r));
       // Rows 0..1023 of every head now hold the kept tokens; decode on at
       // position n_tokens (kept keys carry their original RoPE positions).

   kvec_evict uses K-VEC with window 32 and average pooling 5, and allocates
   its scratch with KVEC_MALLOC. kvec_evict_ex takes a config, a plan that
   receives the kept positions, and caller memory sized by kvec_scratch_bytes.
   Engines that compress during prefill, one layer at a time, call
   kvec_evict_layer with a kvec_coverage they own (see CONCEPTS).

CONCEPTS

   Tensor view. kvec never copies the engine's cache: a kvec_tensor is a data
   pointer, a dtype and three extents (tokens, heads, dim), each with a stride
   in BYTES. Any permutation or padding of the axes is one view:

       [token][head][dim]   stride_token = H*D*e   stride_head = D*e     stride_dim = e
       [head][token][dim]   stride_token = D*e     stride_head = N*D*e   stride_dim = e
       [head][dim][token]   stride_token = e       stride_head = D*N*e   stride_dim = N*e
       (e = element size; padded rows just have larger strides)

       keys of one layer, [token][head][dim]:
       +---------+---------+---------+---------+----
       | t0 h0 d | t0 h1 d | t1 h0 d | t1 h1 d | ...     one row = one (token, head)
       +---------+---------+---------+---------+----
         \_ stride_head _/
         \______ stride_token _____/

   Layer. keys and values of one layer ([n_tokens][n_kv_heads][head_dim], V
   may have its own head_dim) and, for policies that read attention, the
   post-RoPE queries of the last positions of the prefix
   ([n_window_rows][n_query_heads][head_dim]; row r is position
   N - n_window_rows + r). Query head h belongs to KV head h / (H / Hk), the
   usual grouped-query layout; K is never replicated per query head.

   Cache. An array of layers for one sequence; n_tokens (N) is the keys'
   token extent, identical across layers. A batch is an array of caches,
   each with its own N (kvec_evict_batch).

   Budget. B tokens kept per KV head, window included. The last W positions
   (the observation window) are always kept; the B - W free slots go to the
   highest-scoring evictable tokens (positions < N - W). Ties go to the lower
   position, a NaN score ranks lowest. B >= N keeps everything; B < W is an
   error.

   Plan. Kept positions per (layer, KV head), ascending, and a count per head
   (counts differ between layers under PyramidKV budgets), in caller memory.

   Steps. kvec_score_layer -> kvec_select_layer -> kvec_compact_layer.
   kvec_evict_layer does the three for one layer; kvec_evict_ex plans every
   layer first and compacts only when all succeeded, so an error leaves the
   whole cache untouched. Both give the same kept sets.

   Coverage. K-VEC's cross-layer term needs to know which tokens earlier
   layers kept. A kvec_coverage holds that (one byte per token) in caller
   memory and is passed from layer to layer in order.

POLICIES (kvec_config.policy; scores per KV head, higher = keep)

   KVEC_POLICY_KVEC        (default) z(pool(I)) + mu*z(U) + gamma*C_layer,
                           optional cross-head reserve and head focus.
   KVEC_POLICY_SNAPKV      pool(I): window attention summed over the window,
                           averaged over the query heads of the group, pooled.
   KVEC_POLICY_PYRAMIDKV   SnapKV scores, budgets shrinking with depth.
   KVEC_POLICY_STREAMING   first sink_tokens positions and the most recent.
   KVEC_POLICY_H2O         attention summed over ALL supplied query rows,
                           divided by how many of them see the token. Pass the
                           whole prefix's queries for the published one-shot
                           form; with only the window it is unpooled SnapKV.
   KVEC_POLICY_TOVA        attention of the last query row, averaged over all
                           query heads of the layer (every KV head keeps the
                           same tokens).
   KVEC_POLICY_KNORM       -||k_i||
   KVEC_POLICY_KEYDIFF     -cos(k_i, kbar), kbar = mean of normalised keys
   KVEC_POLICY_RANDOM      uniform, from seed, layer, head and position only

   I = window attention importance, U = -cos(k_i, kbar) (key uniqueness),
   z = per-head z-score over evictable tokens. The formulas and the evidence
   behind the defaults are in docs/ALGORITHMS.md.

OPTIONS (macros)

   KVEC_IMPLEMENTATION   every file must not; one file must: emit the code.
   KVEC_STATIC           every file: all functions static (private copy).
   KVEC_NO_OPENMP        implementation only: never use OpenMP pragmas, even
                         when compiled with -fopenmp.
   KVEC_MALLOC(bytes), KVEC_FREE(ptr)
                         implementation only: the allocator of the
                         convenience call kvec_evict (default malloc/free).
                         Nothing else in kvec allocates.

   kvec_config fields (zero = default, resolved in kvec_resolve_config):

   field          default  meaning
   policy         KVEC     scoring policy
   budget_mode    uniform  KVEC_BUDGET_UNIFORM, or KVEC_BUDGET_PYRAMID
                           (default for KVEC_POLICY_PYRAMIDKV)
   window         32       observation window W, always kept
   pool_kernel    5        odd; 1 = no pooling (SnapKV, PyramidKV, K-VEC)
   pooling        average  KVEC_POOL_AVERAGE or KVEC_POOL_MAX
   sink_tokens    4        StreamingLLM sinks
   pyramid_beta   20       PyramidKV: smallest budget = free slots / beta
   seed           0        Random policy
   terms.enabled  UNIQUENESS  K-VEC terms, KVEC_TERM_* bits; set
                           KVEC_TERM_NONE alone for "no term" (= SnapKV)
   terms.mu       0.5      weight of key uniqueness z(U)
   terms.beta     0.25     cross-head: fraction of free slots reserved for
                           tokens no earlier head of the layer kept
   terms.gamma    0.5      cross-layer: bonus for tokens no earlier layer kept
   terms.focus_cv 1.0      head focus: heads whose coefficient of variation
                           of pool(I) is below this use a 4W window (needs
                           4W query rows)

   Only the uniqueness term is on by default: it is the one measured to help
   (docs/ALGORITHMS.md). beta, gamma and focus_cv are the values used when
   you switch those terms on without a weight; they are not measured gains.

MEMORY

   No function allocates except kvec_evict. kvec_scratch_bytes (whole cache
   or batch) and kvec_layer_scratch_bytes (one layer) tell how much scratch
   to pass; kvec_plan_capacity tells how many positions per head the plan
   needs. Scratch need not be zeroed; any alignment works.

ERRORS

   Every function returns kvec_result: 0 = KVEC_OK, negative = error;
   kvec_result_string names each. Arguments are validated before anything is
   written: on error the cache, the plan and the coverage state are as they
   were. kvec never aborts, exits or prints.

THREADING

   Compiled with -fopenmp, (layer, KV head) work is spread over OpenMP
   threads. Each head is computed by one thread in a fixed order, so kept
   sets and scores are bit-identical for any thread count. kvec has no
   global state; concurrent calls on different caches are safe.

CUDA

   kvec.h includes no CUDA header and compiles under nvcc; the device path
   lives in kvec_cuda.cu (not part of this header).

NON-GOALS

   Attention for decoding, quantisation, paging or moving caches between
   devices; eviction during decoding and adaptive budgets are planned.
   Positions are int64; scores are fp32, so StreamingLLM's recency score is
   exact up to 2^24 tokens.
*/

#ifndef KVEC_H
#define KVEC_H

#include <stddef.h>
#include <stdint.h>

#define KVEC_VERSION_MAJOR 0
#define KVEC_VERSION_MINOR 1
#define KVEC_VERSION_PATCH 0

#ifdef KVEC_STATIC
#define KVEC_API static
#else
#define KVEC_API extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* >>errors */
typedef enum kvec_result {
    KVEC_OK                       =   0,
    KVEC_ERROR_NULL_POINTER       =  -1, /* a required pointer is NULL */
    KVEC_ERROR_BAD_EXTENT         =  -2, /* an extent is zero or negative */
    KVEC_ERROR_BAD_STRIDE         =  -3, /* negative stride, or rows overlap */
    KVEC_ERROR_MISALIGNED         =  -4, /* data or stride not a multiple of the element size */
    KVEC_ERROR_BAD_DTYPE          =  -5, /* dtype unset or unknown */
    KVEC_ERROR_SHAPE_MISMATCH     =  -6, /* K, V, queries or layers disagree */
    KVEC_ERROR_BUDGET_BELOW_WINDOW=  -7, /* budget < window */
    KVEC_ERROR_SCRATCH_TOO_SMALL  =  -8, /* scratch_bytes below the query's answer */
    KVEC_ERROR_NON_FINITE         =  -9, /* NaN or Inf in keys or queries */
    KVEC_ERROR_MISSING_QUERIES    = -10, /* policy needs queries; none or too few rows */
    KVEC_ERROR_BAD_CONFIG         = -11, /* unknown policy, even pool kernel, ... */
    KVEC_ERROR_PLAN_TOO_SMALL     = -12, /* plan capacity, layers or heads too small */
    KVEC_ERROR_OUT_OF_MEMORY      = -13, /* KVEC_MALLOC failed (kvec_evict only) */
    KVEC_ERROR_BAD_COVERAGE       = -14, /* coverage state for another length or layer */
    KVEC_ERROR_BAD_LAYER_INDEX    = -15, /* layer index outside 0 .. n_layers-1 */
    KVEC_ERROR_SIZE_OVERFLOW      = -16  /* a size does not fit in size_t / int64 */
} kvec_result;

KVEC_API const char *kvec_result_string(kvec_result result);

/* >>types */
typedef enum kvec_dtype {
    KVEC_DTYPE_UNSET = 0,
    KVEC_DTYPE_F32   = 1,
    KVEC_DTYPE_F16   = 2, /* IEEE half, stored as uint16_t */
    KVEC_DTYPE_BF16  = 3  /* bfloat16, stored as uint16_t */
} kvec_dtype;

/* A strided view of engine memory: element (t, h, d) is at
   (char *)data + t*stride_token + h*stride_head + d*stride_dim. */
typedef struct kvec_tensor {
    void      *data;
    kvec_dtype dtype;
    int64_t    n_tokens, n_heads, head_dim;            /* extents */
    int64_t    stride_token, stride_head, stride_dim;  /* bytes, >= 0 */
} kvec_tensor;

typedef struct kvec_layer {
    kvec_tensor keys;    /* [N][Hk][D]   post-RoPE, as the engine holds them */
    kvec_tensor values;  /* [N][Hk][Dv]  */
    kvec_tensor queries; /* [Wq][H][D]   last Wq prefix positions, post-RoPE;
                            data may be NULL for policies that read no queries */
} kvec_layer;

typedef struct kvec_cache {
    kvec_layer *layers;  /* [n_layers] */
    int64_t     n_layers;
} kvec_cache;

typedef enum kvec_policy {
    KVEC_POLICY_DEFAULT   = 0, /* = KVEC_POLICY_KVEC */
    KVEC_POLICY_KVEC      = 1,
    KVEC_POLICY_SNAPKV    = 2,
    KVEC_POLICY_PYRAMIDKV = 3,
    KVEC_POLICY_STREAMING = 4,
    KVEC_POLICY_H2O       = 5,
    KVEC_POLICY_TOVA      = 6,
    KVEC_POLICY_KNORM     = 7,
    KVEC_POLICY_KEYDIFF   = 8,
    KVEC_POLICY_RANDOM    = 9,
    KVEC_POLICY_COUNT_    = 10
} kvec_policy;

KVEC_API const char *kvec_policy_name(kvec_policy policy);

typedef enum kvec_budget_mode {
    KVEC_BUDGET_DEFAULT = 0, /* uniform, or pyramid for KVEC_POLICY_PYRAMIDKV */
    KVEC_BUDGET_UNIFORM = 1, /* every head keeps B */
    KVEC_BUDGET_PYRAMID = 2  /* PyramidKV: layer l keeps W + F_l */
} kvec_budget_mode;

typedef enum kvec_pooling {
    KVEC_POOL_DEFAULT = 0, /* average */
    KVEC_POOL_AVERAGE = 1,
    KVEC_POOL_MAX     = 2
} kvec_pooling;

/* K-VEC terms, bits of kvec_terms.enabled. 0 means the default set
   (UNIQUENESS); KVEC_TERM_NONE alone means no term, which selects exactly
   what SnapKV selects. */
enum {
    KVEC_TERM_UNIQUENESS  = 1u << 0, /* mu * z(U)                       */
    KVEC_TERM_CROSS_HEAD  = 1u << 1, /* beta reserve for uncovered tokens */
    KVEC_TERM_CROSS_LAYER = 1u << 2, /* gamma * C_layer                 */
    KVEC_TERM_HEAD_FOCUS  = 1u << 3, /* 4W window for low-focus heads   */
    KVEC_TERM_NONE        = 1u << 31 /* "explicitly this set", no defaults */
};

typedef struct kvec_terms {
    uint32_t enabled;  /* KVEC_TERM_* bits, 0 = KVEC_TERM_UNIQUENESS */
    float    mu;       /* 0 = 0.5  */
    float    beta;     /* 0 = 0.25 */
    float    gamma;    /* 0 = 0.5  */
    float    focus_cv; /* 0 = 1.0  */
} kvec_terms;

typedef struct kvec_config {
    kvec_policy      policy;       /* 0 = KVEC_POLICY_KVEC */
    kvec_budget_mode budget_mode;  /* 0 = uniform (pyramid for PyramidKV) */
    int64_t          window;       /* 0 = 32 */
    int64_t          pool_kernel;  /* 0 = 5, odd, 1 = none */
    kvec_pooling     pooling;      /* 0 = average */
    int64_t          sink_tokens;  /* 0 = 4 */
    float            pyramid_beta; /* 0 = 20 */
    uint64_t         seed;         /* Random policy */
    kvec_terms       terms;        /* K-VEC only */
} kvec_config;

/* Kept positions, in caller memory. Head (l, j) keeps kept_count[l*Hk + j]
   positions, ascending, at kept_positions[(l*Hk + j)*capacity ...]. */
typedef struct kvec_plan {
    int64_t  n_layers, n_kv_heads, capacity;
    int64_t *kept_count;     /* [n_layers][n_kv_heads] */
    int64_t *kept_positions; /* [n_layers][n_kv_heads][capacity] */
} kvec_plan;

/* Which tokens any head of an earlier layer kept (K-VEC cross-layer term). */
typedef struct kvec_coverage {
    uint8_t *kept_before; /* [n_tokens] 1 = kept by some head of an earlier layer */
    int64_t  n_tokens;
    int64_t  next_layer;  /* layers must arrive in order 0, 1, 2, ... */
} kvec_coverage;

/* >>api */

/* A view of contiguous [n_tokens][n_heads][head_dim] memory. */
KVEC_API kvec_tensor kvec_tensor_contiguous(void *data, kvec_dtype dtype,
                                            int64_t n_tokens, int64_t n_heads,
                                            int64_t head_dim);

/* Defaults filled in, and checked. */
KVEC_API kvec_result kvec_resolve_config(const kvec_config *config, kvec_config *resolved);

/* Descriptor checks only (no data is read). */
KVEC_API kvec_result kvec_validate_tensor(const kvec_tensor *tensor);
KVEC_API kvec_result kvec_validate_cache(const kvec_cache *cache);

/* Tokens kept by each head of layer_index (PyramidKV budgets differ by
   layer). config may be NULL for defaults. */
KVEC_API kvec_result kvec_layer_budget(const kvec_config *config, int64_t budget,
                                       int64_t layer_index, int64_t n_layers,
                                       int64_t n_tokens, int64_t *layer_budget);

/* Positions per head a plan needs: the largest layer budget. */
KVEC_API kvec_result kvec_plan_capacity(const kvec_config *config, int64_t budget,
                                        int64_t n_layers, int64_t n_tokens,
                                        int64_t *capacity);

/* Scratch for kvec_evict_ex / kvec_evict_batch (largest sequence). */
KVEC_API kvec_result kvec_scratch_bytes(const kvec_config *config, const kvec_cache *caches,
                                        int64_t n_caches, size_t *bytes);
/* Scratch for kvec_score_layer and kvec_evict_layer on this layer. */
KVEC_API kvec_result kvec_layer_scratch_bytes(const kvec_config *config,
                                              const kvec_layer *layer, size_t *bytes);

/* One call, defaults, allocates its scratch with KVEC_MALLOC. */
KVEC_API kvec_result kvec_evict(kvec_cache *cache, int64_t budget);

/* Explicit form: config (NULL = defaults), plan receives the kept positions
   (may be NULL), scratch from kvec_scratch_bytes. */
KVEC_API kvec_result kvec_evict_ex(const kvec_config *config, kvec_cache *cache,
                                   int64_t budget, kvec_plan *plan,
                                   void *scratch, size_t scratch_bytes);

/* A batch: n_caches sequences, each with its own length, one budget;
   plans is [n_caches] (may be NULL). */
KVEC_API kvec_result kvec_evict_batch(const kvec_config *config, kvec_cache *caches,
                                      int64_t n_caches, int64_t budget, kvec_plan *plans,
                                      void *scratch, size_t scratch_bytes);

/* Layer by layer, during prefill. coverage may be NULL unless K-VEC's
   cross-layer term is on; it must be initialised for this sequence and see
   the layers in order. Scratch from kvec_layer_scratch_bytes. */
KVEC_API kvec_result kvec_coverage_init(kvec_coverage *coverage, void *memory,
                                        size_t memory_bytes, int64_t n_tokens);
KVEC_API kvec_result kvec_evict_layer(const kvec_config *config, kvec_layer *layer,
                                      int64_t layer_index, int64_t n_layers, int64_t budget,
                                      kvec_coverage *coverage, kvec_plan *plan,
                                      void *scratch, size_t scratch_bytes);

/* The steps. scores is [Hk][N]; window positions get +inf. coverage is
   needed only by the cross-layer term (NULL otherwise is fine). select writes
   layer layer_index of the plan and, when coverage is given, marks the kept
   tokens in it. select's scratch: kvec_select_scratch_bytes. */
KVEC_API kvec_result kvec_score_layer(const kvec_config *config, const kvec_layer *layer,
                                      int64_t layer_index, const kvec_coverage *coverage,
                                      float *scores, void *scratch, size_t scratch_bytes);
KVEC_API kvec_result kvec_select_layer(const kvec_config *config, const float *scores,
                                       int64_t n_kv_heads, int64_t n_tokens,
                                       int64_t layer_budget, int64_t layer_index,
                                       kvec_coverage *coverage, kvec_plan *plan,
                                       void *scratch, size_t scratch_bytes);
KVEC_API size_t      kvec_select_scratch_bytes(int64_t n_tokens);
KVEC_API kvec_result kvec_compact_layer(kvec_layer *layer, const kvec_plan *plan,
                                        int64_t layer_index);
KVEC_API kvec_result kvec_compact(kvec_cache *cache, const kvec_plan *plan);

/* Element conversions, exposed for tests and for engines. */
KVEC_API float    kvec_f16_to_f32(uint16_t h);
KVEC_API uint16_t kvec_f32_to_f16(float f);   /* round to nearest even */
KVEC_API float    kvec_bf16_to_f32(uint16_t b);
KVEC_API uint16_t kvec_f32_to_bf16(float f);  /* round to nearest even */

#ifdef __cplusplus
}
#endif
#endif /* KVEC_H */
