/* kvec.h - KV-cache eviction for LLM inference engines - v0.6.0 - MIT license (end of file)

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
   usual grouped-query layout; K is never replicated per query head. The
   output-aware policies (CriticalKV, LaProx) also read the layer's output
   projection W_o as out_proj ([E][H][Dv]).

   Cache. An array of layers for one sequence; n_tokens (N) is the keys'
   token extent, identical across layers. A batch is an array of caches,
   each with its own N (kvec_evict_batch).

   Budget. B tokens kept per KV head, window included. The last W positions
   (the observation window) are always kept; the B - W free slots go to the
   highest-scoring evictable tokens (positions < N - W). Ties go to the lower
   position, a NaN score ranks lowest. B >= N keeps everything; B < W is an
   error.

   Budget modes (config.budget_mode). Uniform: every head keeps B. Pyramid:
   layer l keeps W + F_l (PyramidKV). Adaptive (Ada-KV): the heads of a layer
   share Hk*(B-W) free slots; each first takes its best head_floor*(B-W)
   (0.2), the rest go to the best scores of the layer's heads compared as
   they are. Global: the same with one pool of L*Hk*(B-W) for the whole
   model. Shared pools leave heads with different counts: compaction moves
   each head's rows to the front of its own rows, and the engine attends
   with per-head lengths (kvec_plan_offsets gives cu_seqlens for a
   flattened layout, kvec_compact_packed packs into one) or pads to the
   longest head and masks (kvec_plan_mask).

   Plan. Kept positions per (layer, KV head), ascending, and a count per head
   (counts differ between layers under PyramidKV budgets, and between heads
   under shared pools), in caller memory.

   Steps. kvec_score_layer -> kvec_select_layer -> kvec_compact_layer.
   Engines with scores of their own (learned retention gates, say) call
   kvec_select on them, then kvec_compact.
   kvec_evict_layer does the three for one layer; kvec_evict_ex plans every
   layer first and compacts only when all succeeded, so an error leaves the
   whole cache untouched. Both give the same kept sets.

   Coverage. K-VEC's cross-layer term needs to know which tokens earlier
   layers kept. A kvec_coverage holds that (one byte per token) in caller
   memory and is passed from layer to layer in order.

POLICIES (kvec_config.policy; scores per KV head, higher = keep)

   KVEC_POLICY_KVEC        (default) z(pool(I)) + mu*z(U) + gamma*C_layer,
                           by default ranked as a union with pool(I)'s own
                           ranking (KVEC_TERM_RANK_UNION); optional
                           cross-head reserve and head focus.
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
   KVEC_POLICY_CRITICALKV  half of the free slots by pool(I); the rest by
                           (pool(I) + 1e-4) * O1, O1 = mean over the group
                           of ||W_o^h v_i||_1 (reads values and out_proj)
   KVEC_POLICY_LAPROX      pool(I) * O2 (O2 with the 2-norm), divided by its
                           mean over the layer so scores compare across
                           layers (for KVEC_BUDGET_GLOBAL)

   Reconstruction scores (KVzip, kvec_reconstruction_scores): for a cache
   compressed before any question is read. The engine runs one more pass
   in which the model repeats its context; each context token scores the
   most attention it received while being reproduced. These scores go to
   kvec_select (KVzip uses one global budget), then kvec_compact.

   Expected attention (kvpress's ExpectedAttentionPress,
   kvec_expected_attention_scores): question-agnostic with no extra pass.
   The engine adds each prefill chunk's queries to running statistics
   (kvec_query_stats_add, one per layer); the queries still to come are
   modelled as a Gaussian with their mean and covariance, rotated to the
   next positions, and each key scores the attention it would expect,
   times its value's norm.

   Coverage over given scores (kvec_coverage_scores): K-VEC's uniqueness
   term applied to any of the above, in log space, so that global budgets
   still compare heads.

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
   budget_mode    uniform  KVEC_BUDGET_UNIFORM, KVEC_BUDGET_PYRAMID (default
                           for KVEC_POLICY_PYRAMIDKV), KVEC_BUDGET_ADAPTIVE,
                           KVEC_BUDGET_GLOBAL
   head_floor     0.2      adaptive, global: share of B - W each head keeps
                           by its own ranking; negative = no floor
   window         32       observation window W, always kept
   pool_kernel    5        odd; 1 = no pooling (SnapKV, PyramidKV, K-VEC)
   pooling        average  KVEC_POOL_AVERAGE or KVEC_POOL_MAX
   sink_tokens    4        StreamingLLM sinks
   pyramid_beta   20       PyramidKV: smallest budget = free slots / beta
   seed           0        Random policy
   terms.enabled  UNIQUENESS|RANK_UNION  K-VEC terms, KVEC_TERM_* bits;
                           set KVEC_TERM_NONE alone for "no term" (= SnapKV)
   terms.mu       1.0      weight of key uniqueness z(U)
   terms.beta     0.25     cross-head: fraction of free slots reserved for
                           tokens no earlier head of the layer kept
   terms.gamma    0.5      cross-layer: bonus for tokens no earlier layer kept
   terms.focus_cv 1.0      head focus: heads whose coefficient of variation
                           of pool(I) is below this use a 4W window (needs
                           4W query rows)
   terms.attention_share 0.25  rank union: share of the free slots that
                           attention's own ranking fills, in (0, 1)

   The default is uniqueness (mu = 1) with the rank union, attention's share
   0.25: the rank union walks two rankings at once, pool(I)'s own and the
   combined score's, and fills a quarter of the free slots from the first,
   so the tokens attention alone ranks highest are kept whatever mu says,
   and three quarters from the second, where the keys' uniqueness keeps
   tokens a window that has not seen the question would drop. The share was
   chosen on a real model (SmolLM2-135M-Instruct, docs/TUNING.md round 6):
   by the mean of retrieval accuracy and next-token agreement it was the
   best formulation measured, on samples it was not tuned on. beta, gamma
   and focus_cv are the values used when you switch those terms on without
   a weight; they are not measured gains.

MEMORY

   No function allocates except kvec_evict. kvec_scratch_bytes (whole cache
   or batch; it includes one layer's plan, used when the call is given no
   plan) and kvec_layer_scratch_bytes (one layer) tell how much scratch
   to pass; kvec_plan_capacity tells how many positions per head the plan
   needs. Scratch need not be zeroed; any alignment works.

ERRORS

   Every function returns kvec_result: 0 = KVEC_OK, negative = error;
   kvec_result_string names each. Every argument is validated before
   anything is written: on error the cache, the plan, the coverage, the
   decode state and every output are byte for byte as they were. Sizes,
   strides, counts and positions are combined only through overflow-checked
   arithmetic (>>checked arithmetic): a hostile value is an error, never
   undefined behaviour. kvec never aborts, exits or prints.

   Finite: the keys always (every policy and budget); the queries when a
   layer is scored by a policy that reads them; values and out_proj when
   CriticalKV or LaProx score a layer (the only policies that read values
   as numbers; the others move them as bytes, unchecked); for
   kvec_reconstruction_scores, the sink and chunk keys and the pass's
   queries and keys (the context's other keys are not read); for
   kvec_expected_attention_scores, keys and values past the sinks and the
   statistics' sums; for kvec_query_stats_add, the queries; for
   kvec_coverage_scores, every key, and its scores must be >= 0 or +inf
   (KVEC_ERROR_BAD_SCORES otherwise).

   Overlap rule (KVEC_ERROR_OVERLAP): nothing a call writes may share a
   byte with anything else it reads or writes: keys and values of every
   layer and sequence, queries, out_proj, both arrays of every plan, the
   scratch, the coverage, the decode state, scores, masks and offsets in or
   out. Reads may share memory with reads; K and V interleaved in one
   buffer are told apart; kvec_compact_packed may write exactly in place.

THREADING

   Compiled with -fopenmp, (layer, KV head) work is spread over OpenMP
   threads. Each head is computed by one thread in a fixed order, so kept
   sets and scores are bit-identical for any thread count. kvec has no
   global state; concurrent calls on different caches are safe.

CUDA

   kvec.h includes no CUDA header and compiles under nvcc. The device path
   is kvec_cuda.cu, a translation unit of its own (compile it with nvcc and
   link it); its functions, kvec_cuda_*, are declared below (>>cuda api)
   whatever KVEC_STATIC says, and take the same cache, config and plan
   with device pointers inside. Uniform and pyramid budgets, every policy,
   every K-VEC term, reconstruction scores. Expected attention, the
   coverage over given scores and kvec_learned_masses are host only: they
   run once per prefill on small statistics or [Hk][N] rows, and their
   scores go to kvec_cuda_select like any.

NON-GOALS

   Attention for decoding, quantisation, paging or moving caches between
   devices. Eviction during decoding (kvec_decode_*) keeps every head at
   the same length: uniform budgets only.
   Positions are int64; scores are fp32, so StreamingLLM's recency score is
   exact up to 2^24 tokens.
*/

#ifndef KVEC_H
#define KVEC_H

#include <stddef.h>
#include <stdint.h>

#define KVEC_VERSION_MAJOR 0
#define KVEC_VERSION_MINOR 6
#define KVEC_VERSION_PATCH 0

#if defined(KVEC_STATIC) && (defined(__GNUC__) || defined(__clang__))
#define KVEC_API static __attribute__((unused)) /* a file need not call them all */
#elif defined(KVEC_STATIC)
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
    KVEC_ERROR_SIZE_OVERFLOW      = -16, /* a size does not fit in size_t / int64 */
    KVEC_ERROR_BAD_PLAN           = -17, /* compaction plan: positions not ascending or out of range */
    KVEC_ERROR_OVERLAP            = -18, /* memory a call writes overlaps what else it reads or writes */
    KVEC_ERROR_MISSING_OUT_PROJ   = -19, /* output-aware policy, no layer.out_proj */
    KVEC_ERROR_STATE_MISMATCH     = -20, /* decode state full, not this cache's, or not one init made */
    KVEC_ERROR_CUDA               = -21, /* kvec_cuda.cu: a CUDA call or launch failed */
    KVEC_ERROR_BAD_SCORES         = -22  /* scores in: negative or NaN where masses are required */
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
    kvec_tensor out_proj; /* [E][H][Dv] the attention output projection W_o
                             (E = model width; a Hugging Face o_proj.weight
                             [E][H*Dv] is stride_token = H*Dv*e, stride_head =
                             Dv*e, stride_dim = e); read only by CriticalKV
                             and LaProx, data may be NULL otherwise */
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
    KVEC_POLICY_CRITICALKV = 10, /* reads values and out_proj */
    KVEC_POLICY_LAPROX    = 11, /* reads values and out_proj */
    KVEC_POLICY_COUNT_    = 12
} kvec_policy;

KVEC_API const char *kvec_policy_name(kvec_policy policy);

typedef enum kvec_budget_mode {
    KVEC_BUDGET_DEFAULT = 0, /* uniform, or pyramid for KVEC_POLICY_PYRAMIDKV */
    KVEC_BUDGET_UNIFORM  = 1, /* every head keeps B */
    KVEC_BUDGET_PYRAMID  = 2, /* PyramidKV: layer l keeps W + F_l */
    KVEC_BUDGET_ADAPTIVE = 3, /* Ada-KV: the heads of a layer share Hk*(B-W) free slots */
    KVEC_BUDGET_GLOBAL   = 4  /* all heads of all layers share L*Hk*(B-W) free slots */
} kvec_budget_mode;

typedef enum kvec_pooling {
    KVEC_POOL_DEFAULT = 0, /* average */
    KVEC_POOL_AVERAGE = 1,
    KVEC_POOL_MAX     = 2
} kvec_pooling;

/* K-VEC terms, bits of kvec_terms.enabled. 0 means the default set
   (UNIQUENESS | RANK_UNION); KVEC_TERM_NONE alone means no term, which selects exactly
   what SnapKV selects. */
enum {
    KVEC_TERM_UNIQUENESS  = 1u << 0, /* mu * z(U)                       */
    KVEC_TERM_CROSS_HEAD  = 1u << 1, /* beta reserve for uncovered tokens */
    KVEC_TERM_CROSS_LAYER = 1u << 2, /* gamma * C_layer                 */
    KVEC_TERM_HEAD_FOCUS  = 1u << 3, /* 4W window for low-focus heads   */
    KVEC_TERM_RANK_UNION  = 1u << 4, /* keep attention's top ranks too  */
    KVEC_TERM_NONE        = 1 << 30 /* "explicitly this set", no defaults */
};

typedef struct kvec_terms {
    uint32_t enabled;  /* KVEC_TERM_* bits, 0 = UNIQUENESS | RANK_UNION */
    float    mu;       /* 0 = 1.0  */
    float    beta;     /* 0 = 0.25 */
    float    gamma;    /* 0 = 0.5  */
    float    focus_cv; /* 0 = 1.0  */
    float    attention_share; /* rank union: share of the free slots taken by
                                 attention's own ranking, (0, 1); 0 = 0.25 */
} kvec_terms;

/* Zero-initialise: `kvec_config c = {0};` in C, `kvec_config c = {};` in C++. */
typedef struct kvec_config {
    int64_t          window;       /* 0 = 32 */
    kvec_policy      policy;       /* 0 = KVEC_POLICY_KVEC */
    kvec_budget_mode budget_mode;  /* 0 = uniform (pyramid for PyramidKV) */
    int64_t          pool_kernel;  /* 0 = 5, odd, 1 = none */
    kvec_pooling     pooling;      /* 0 = average */
    int64_t          sink_tokens;  /* 0 = 4 */
    float            pyramid_beta; /* 0 = 20 */
    uint64_t         seed;         /* Random policy */
    kvec_terms       terms;        /* K-VEC only */
    float            head_floor;   /* adaptive, global: share of B-W every head
                                      keeps by its own ranking; 0 = 0.2,
                                      negative = no floor */
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
   layer; under shared pools this is the heads' average). config may be
   NULL for defaults. */
KVEC_API kvec_result kvec_layer_budget(const kvec_config *config, int64_t budget,
                                       int64_t layer_index, int64_t n_layers,
                                       int64_t n_tokens, int64_t *layer_budget);

/* Positions per head a plan needs: the largest layer budget, or N under
   adaptive and global budgets (one head may take the whole pool). */
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
   (may be NULL: the call then plans each layer in the scratch and compacts
   it at once, with the same result), scratch from kvec_scratch_bytes. */
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
   the layers in order. Scratch from kvec_layer_scratch_bytes. A global
   budget needs every layer's scores first: KVEC_ERROR_BAD_CONFIG here and
   in kvec_select_layer (use kvec_evict_ex, or scores and kvec_select). */
KVEC_API kvec_result kvec_coverage_init(kvec_coverage *coverage, void *memory,
                                        size_t memory_bytes, int64_t n_tokens);
KVEC_API kvec_result kvec_evict_layer(const kvec_config *config, kvec_layer *layer,
                                      int64_t layer_index, int64_t n_layers, int64_t budget,
                                      kvec_coverage *coverage, kvec_plan *plan,
                                      void *scratch, size_t scratch_bytes);

/* The steps. scores is [Hk][N]; window positions get +inf. layer_budget is
   the budget the scores will be selected at: only CriticalKV reads it (its
   first stage keeps (layer_budget - W) / 2 tokens by attention alone; 0 =
   unknown, no first stage). coverage is needed only by the cross-layer term
   (NULL otherwise is fine). select writes
   layer layer_index of the plan and, when coverage is given, marks the kept
   tokens in it. select's scratch: kvec_select_scratch_bytes. */
KVEC_API kvec_result kvec_score_layer(const kvec_config *config, const kvec_layer *layer,
                                      int64_t layer_index, int64_t layer_budget,
                                      const kvec_coverage *coverage,
                                      float *scores, void *scratch, size_t scratch_bytes);
KVEC_API kvec_result kvec_select_layer(const kvec_config *config, const float *scores,
                                       int64_t n_kv_heads, int64_t n_tokens,
                                       int64_t layer_budget, int64_t layer_index,
                                       kvec_coverage *coverage, kvec_plan *plan,
                                       void *scratch, size_t scratch_bytes);
/* Scratch for kvec_select_layer (n_layers = 1) and kvec_select: one byte per
   token of the heads that compete in one selection (Hk under an adaptive
   budget, all L*Hk under a global one, 1 for the cross-head term, else 0). */
KVEC_API size_t      kvec_select_scratch_bytes(const kvec_config *config, int64_t n_layers,
                                               int64_t n_kv_heads, int64_t n_tokens);
KVEC_API kvec_result kvec_compact_layer(kvec_layer *layer, const kvec_plan *plan,
                                        int64_t layer_index);
KVEC_API kvec_result kvec_compact(kvec_cache *cache, const kvec_plan *plan);

/* External scores: the engine's own scores ([L][Hk][N] fp32, higher = keep,
   e.g. learned retention gates) select the plan under any budget mode;
   kvec_compact then applies it. The window is kept whatever its scores; of
   the config only window, budget_mode, head_floor, pyramid_beta and the
   cross-head term matter. Scratch: kvec_select_scratch_bytes. */
KVEC_API kvec_result kvec_select(const kvec_config *config, const float *scores,
                                 int64_t n_layers, int64_t n_kv_heads, int64_t n_tokens,
                                 int64_t budget, kvec_plan *plan,
                                 void *scratch, size_t scratch_bytes);

/* Reconstruction scores (KVzip, question-agnostic). After the prefill the
   engine runs one more forward pass over the cache: a short prompt asking to
   repeat the context, then the context itself, chunk by chunk for long ones
   (each chunk's pass is dropped from the cache before the next). A context
   token the model attends to while reproducing the text is needed to
   reproduce it, whatever the question will be. For the pass over chunk
   [chunk_begin, chunk_end) of layer l, query head h, pass row r:

     A[h, r, i] = softmax over i in S u [chunk_begin, chunk_end) u pass rows 0..r
                  of q_hr . k_i / sqrt(D)
     S = the first min(sink_tokens, chunk_begin) positions (attention sinks)

   and context token i of the chunk scores max over r and over the query
   heads h of its KV head of A[h, r, i]. Keys outside S and the chunk take
   no part in this softmax (the model saw them; the score does not).
   kvec_reconstruction_scores writes columns chunk_begin .. chunk_end-1 of
   scores ([Hk][N], higher = keep; one layer's rows of the [L][Hk][N] array
   kvec_select takes) and nothing else: positions that no chunk covers (a
   chat template's header, say) get scores from the engine. Only the
   layer's keys are read. Scratch (kvec_reconstruction_scratch_bytes)
   depends on the chunk and the pass, never on N. docs/SEMANTICS.md says
   what an engine does around it. */
typedef struct kvec_reconstruction {
    kvec_tensor queries;  /* [R][H][D]  post-RoPE queries of the pass, row r at position N + r */
    kvec_tensor keys;     /* [R][Hk][D] the pass's own keys, post-RoPE */
    int64_t chunk_begin, chunk_end; /* the context positions the pass repeats, 0 <= begin < end <= N,
                                       end - begin <= R */
} kvec_reconstruction;

KVEC_API kvec_result kvec_reconstruction_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                       const kvec_reconstruction *pass, size_t *bytes);
KVEC_API kvec_result kvec_reconstruction_scores(const kvec_config *config, const kvec_layer *layer,
                                                const kvec_reconstruction *pass, float *scores,
                                                void *scratch, size_t scratch_bytes);

/* Expected attention (kvpress's ExpectedAttentionPress, question-agnostic,
   no extra pass). The queries still to come are modelled as a Gaussian
   fitted to the queries seen so far: mean mu_h and covariance Sigma_h of
   query head h before RoPE, then rotated by the mean of the RoPE rotations
   of the next n_future positions (Rbar). Under that model the expected
   logit of key k is

     z_h(k) = (Rbar mu_h) . k / sqrt(D) + k' (Rbar Sigma_h Rbar') k / (2 D)

   (the log of E[exp(q.k / sqrt(D))] for a Gaussian q), and token i of KV
   head j scores

     mean over the query heads h of its group of softmax_i(z_h(k_i)) * ||v_i||

   over the positions from sink_tokens on; the first sink_tokens positions
   score +inf (always kept). What the engine hands over, per layer: the
   running sums of its queries (kvec_query_stats_add, called on each prefill
   chunk's post-RoPE queries: kvec undoes the rotation itself, so the
   engine's query log or its attention input serves as it is), the RoPE it
   uses (kvec_rope) and the position of the next query.

   kvec_query_stats: caller memory of kvec_query_stats_bytes, one per layer;
   sums in double so that long prefills do not lose precision. kvpress
   leaves the first 4 positions (attention sinks, outlying queries) out of
   the statistics: an engine does the same by passing rows from there on. */
typedef struct kvec_rope {
    double  theta;       /* base of the frequencies theta^(-2i/dims): 10000, 1e6, ... (> 1) */
    int64_t dims;        /* rotated dimensions, even, <= D; 0 = D (the rest pass unrotated) */
    int     interleaved; /* 0: rotate-half, dimension i pairs with i + dims/2 (Hugging Face,
                            llama.cpp's NEOX mode); 1: 2i pairs with 2i + 1 (llama.cpp's normal mode) */
} kvec_rope;

typedef struct kvec_query_stats {
    double  *sum;      /* [H][D]    sum of the un-rotated queries */
    double  *outer;    /* [H][D][D] sum of their outer products; the upper triangle (column >= row) */
    double  *work;     /* [H][D]    one un-rotated row per head, while adding */
    float   *load;     /* [H][D]    one row as fp32, while adding */
    int64_t  n_heads, head_dim;
    int64_t  count;    /* positions added */
} kvec_query_stats;

KVEC_API kvec_result kvec_query_stats_bytes(int64_t n_heads, int64_t head_dim, size_t *bytes);
KVEC_API kvec_result kvec_query_stats_init(kvec_query_stats *stats, void *memory, size_t memory_bytes,
                                           int64_t n_heads, int64_t head_dim);
/* Adds queries ([T][H][D], post-RoPE, row t at position first_position + t). */
KVEC_API kvec_result kvec_query_stats_add(kvec_query_stats *stats, const kvec_tensor *queries,
                                          int64_t first_position, const kvec_rope *rope);

typedef struct kvec_expected_attention {
    const kvec_query_stats *stats; /* the layer's queries so far (count >= 1) */
    kvec_rope rope;                /* the model's rotation, as for kvec_query_stats_add */
    int64_t   first_position;      /* position of the first query to come (N after a prefill of N) */
    int64_t   n_future;            /* positions averaged over; 0 = 512 (kvpress's default) */
} kvec_expected_attention;

/* scores ([Hk][N], every column written) for the layer's keys and values.
   Scratch: kvec_expected_attention_scratch_bytes. The scores go to
   kvec_select (kvpress keeps the same count per head: a uniform budget). */
KVEC_API kvec_result kvec_expected_attention_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                           const kvec_expected_attention *expected, size_t *bytes);
KVEC_API kvec_result kvec_expected_attention_scores(const kvec_config *config, const kvec_layer *layer,
                                                    const kvec_expected_attention *expected, float *scores,
                                                    void *scratch, size_t scratch_bytes);

/* K-VEC's coverage over scores from elsewhere (reconstruction, expected
   attention, an engine's own): scores ([Hk][N], one layer, probabilities or
   other non-negative masses, +inf = always keep) are rewritten, for the
   evictable positions i < N - window, as

     s_i <- ln(max(s_i, 1e-30)) + mu * z(U_i),  U_i = -cos(k_i, kbar)

   (kbar the head's mean key direction, z the z-score over the evictable
   positions; +inf stays). The log keeps the scores' scale across heads and
   layers, so a global budget still compares them; mu (config terms.mu)
   moves a token by mu standard deviations of uniqueness, a factor e^mu on
   its score. Window positions are not touched. A negative or NaN score is
   KVEC_ERROR_BAD_SCORES, nothing written. Scratch:
   kvec_coverage_scores_scratch_bytes. */
KVEC_API kvec_result kvec_coverage_scores_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                        size_t *bytes);
KVEC_API kvec_result kvec_coverage_scores(const kvec_config *config, const kvec_layer *layer, float *scores,
                                          void *scratch, size_t scratch_bytes);

/* Learned scores (KVzap, Fast KVzip, TRIM-KV's retention gates:
   question-agnostic, no extra pass). A small model trained once per model
   reads each token's hidden state where the layer's attention reads it
   (after the layer's input norm) and predicts one score per KV head: for
   hidden state x ([E]) and KV head j,

     linear: y_j = W[j] . x + b[j]
     MLP:    y_j = W2[j] . gelu(W1 x + b1) + b2[j],
             gelu(a) = a * (1 + erf(a / sqrt(2))) / 2

   The output is either the score itself (output = KVEC_SCORER_SCORE: a
   regression to the log of the reconstruction score, as KVzap; higher =
   keep, comparable across heads and layers, so a global budget works) or a
   retention gate (KVEC_SCORER_LOG_RETENTION: log sigmoid(y_j) = log beta,
   <= 0, for kvec_decode_retention; the score of a token i at step t is then
   (t - i) log beta_i). Weights are fp32, row-major, in the engine's or the
   weights file's memory:

     weight  linear: [Hk][E]   MLP: W1 [F][E]
     bias    linear: [Hk]      MLP: b1 [F]
     weight2 MLP: W2 [Hk][F]   (NULL for linear)
     bias2   MLP: b2 [Hk]      (NULL for linear)

   hidden: [T][1][E], any dtype and strides (the engine's own buffer).
   scores: Hk rows of scores_stride floats (>= T); column t of row j gets
   token t's score for KV head j, and nothing else is written, so an engine
   that prefills in chunks points each chunk at its columns of a [Hk][N]
   array. Dot products run in a fixed order: the same scores for any thread
   count. Scratch (kvec_learned_scores_scratch_bytes) depends on E and F,
   never on T. Non-finite weights or hidden states: KVEC_ERROR_NON_FINITE,
   nothing written. Finite inputs always give numbers: a sum past float's
   range saturates at +-FLT_MAX (NaN from such an overflow: -FLT_MAX). */
typedef enum kvec_scorer_kind {
    KVEC_SCORER_LINEAR = 1,
    KVEC_SCORER_MLP    = 2
} kvec_scorer_kind;

typedef enum kvec_scorer_output {
    KVEC_SCORER_SCORE         = 0, /* y itself: higher = keep */
    KVEC_SCORER_LOG_RETENTION = 1  /* log sigmoid(y): a gate's log retention per step */
} kvec_scorer_output;

typedef struct kvec_scorer {
    kvec_scorer_kind   kind;
    kvec_scorer_output output;
    int64_t      n_embd;     /* E: the hidden state's width */
    int64_t      n_kv_heads; /* Hk: one output per KV head */
    int64_t      n_hidden;   /* F: the MLP's hidden width; 0 for linear */
    const float *weight;     /* linear [Hk][E]; MLP [F][E] */
    const float *bias;       /* linear [Hk];    MLP [F]    */
    const float *weight2;    /* MLP [Hk][F]; NULL for linear */
    const float *bias2;      /* MLP [Hk];    NULL for linear */
} kvec_scorer;

KVEC_API kvec_result kvec_learned_scores_scratch_bytes(const kvec_scorer *scorer, size_t *bytes);
KVEC_API kvec_result kvec_learned_scores(const kvec_scorer *scorer, const kvec_tensor *hidden, float *scores,
                                         int64_t scores_stride, void *scratch, size_t scratch_bytes);

/* One head's learned scores at the end of a prefix of n positions as the
   masses to select by (kvec_select with external scores; higher = keep):
   y ([n], kvec_learned_scores' output for positions 0 .. n-1 of one layer
   and KV head) into masses ([n]; masses == y: in place).

     score (KVEC_SCORER_SCORE):         exp(y_i)
     gate (KVEC_SCORER_LOG_RETENTION):  exp((n - 1 - i) / n * y_i)

   The gate's is its decayed log retention at the prefix's end, (n - 1 - i)
   log beta_i, over n: the same order, in exp's range. Both are clamped to
   e^+-80. Positions below n_sinks (the attention sinks, which no scorer is
   trained on) get +inf, always kept; positions n_sinks .. header-1 (a chat
   header before the user's text; header 0 for none) get 0, first to go.
   Non-finite outputs: KVEC_ERROR_NON_FINITE, nothing written. */
KVEC_API kvec_result kvec_learned_masses(kvec_scorer_output output, const float *y, int64_t n, int64_t n_sinks,
                                         int64_t header, float *masses);

/* Heads of different lengths (adaptive and global budgets), two ways to
   attend over them. Varlen: head j of layer layer_index holds kept_count
   rows; cu_seqlens ([Hk + 1], int32 as varlen attention kernels take it)
   gets their running offsets in a flattened layout, and max_count (may be
   NULL) the longest head. Padded: every head is max_count long and rows at
   or past its count are masked; mask ([Hk][n_rows]) gets 0 for kept rows
   and -INFINITY for padding, to add to attention logits. */
KVEC_API kvec_result kvec_plan_offsets(const kvec_plan *plan, int64_t layer_index,
                                       int32_t *cu_seqlens, int64_t *max_count);
KVEC_API kvec_result kvec_plan_mask(const kvec_plan *plan, int64_t layer_index,
                                    int64_t n_rows, float *mask);
/* Compaction into a flattened layout: head j's r-th kept row goes to row
   cu_seqlens[j] + r of packed_keys / packed_values ([T][1][D] views, T at
   least the total kept, same dtype and head_dim). The packed views must not
   overlap the layer, except exactly in place over a [head][token][dim]
   layer (same data, same token and dim strides, stride_head = N *
   stride_token), where heads are packed front to back. */
KVEC_API kvec_result kvec_compact_packed(kvec_layer *layer, const kvec_plan *plan,
                                         int64_t layer_index, kvec_tensor *packed_keys,
                                         kvec_tensor *packed_values);

/* >>decoding api */

/* Eviction while generating: the cache is held at a budget. The engine
   appends tokens as usual and tells kvec (kvec_decode_append); for H2O it
   also shows kvec the attention it computed for each new query
   (kvec_decode_observe, O(H * rows) per token and layer, nothing else per
   token); every n tokens it calls kvec_decode_evict, which scores the rows
   now held, keeps `budget` per head (the last config.window rows, the recent
   buffer, always) and compacts cache and state alike. Every head holds the
   same number of rows, so budgets are uniform here. Policies: H2O ranks by
   the attention a row received since it entered the cache; StreamingLLM by
   position; the window policies (SnapKV, K-VEC, ...) re-score with the
   queries of the last window positions, passed in the cache's layers as at
   prefill; external scores ([L][Hk][rows]) replace the policy. Learned
   retention gates: the engine records each new token's log retention per
   head (kvec_decode_retention); kvec_decode_retention_scores turns them
   into log_retention * age, the decayed score to pass as external scores. */
typedef struct kvec_decode_state {
    int64_t  n_layers, n_kv_heads;
    int64_t  capacity;      /* rows per head the cache can hold */
    int64_t  n_rows;        /* rows in use, the same in every head */
    int64_t  next_position; /* position of the next token appended */
    int64_t *positions;     /* [L][Hk][capacity] original position of each row */
    float   *attention;     /* [L][Hk][capacity] attention the row received while decoding */
    float   *retention;     /* [L][Hk][capacity] log retention per step (learned gates), 0 unset */
} kvec_decode_state;

/* Memory for a state; init lays it out. plan (may be NULL) is the prefill
   eviction's: row r of head (l, j) holds its r-th kept position, every
   head with the same count; NULL means rows 0 .. n_rows-1 hold positions
   0 .. n_rows-1. next_position is where decoding goes on. */
KVEC_API kvec_result kvec_decode_state_bytes(int64_t n_layers, int64_t n_kv_heads,
                                             int64_t capacity, size_t *bytes);
KVEC_API kvec_result kvec_decode_init(kvec_decode_state *state, void *memory, size_t memory_bytes,
                                      int64_t n_layers, int64_t n_kv_heads, int64_t capacity,
                                      int64_t n_rows, int64_t next_position,
                                      const kvec_plan *plan);
/* n_new tokens were appended to every head (rows n_rows .., positions
   next_position ..). */
KVEC_API kvec_result kvec_decode_append(kvec_decode_state *state, int64_t n_new);
/* Learned retention: log_retention ([Hk][n], <= 0 for a gate in (0, 1])
   of the last n rows of layer layer_index; and the decayed scores
   ([L][Hk][n_rows]) log_retention * (next_position - 1 - position). */
KVEC_API kvec_result kvec_decode_retention(kvec_decode_state *state, int64_t layer_index,
                                           const float *log_retention, int64_t n);
KVEC_API kvec_result kvec_decode_retention_scores(const kvec_decode_state *state, float *scores);
/* One new query of layer layer_index: attention [H][row_stride], row h
   holds the softmax probabilities of query head h over the n_rows rows of
   its KV head h / (H / Hk). Adds their group mean to each row's total. */
KVEC_API kvec_result kvec_decode_observe(kvec_decode_state *state, int64_t layer_index,
                                         const float *attention, int64_t n_query_heads,
                                         int64_t row_stride);
/* Back to budget. cache: the engine's layers with n_tokens = state.n_rows
   (and window queries for the policies that read them); scores: NULL, or
   [L][Hk][n_rows] external scores. plan receives what was kept (capacity
   >= min(budget, n_rows)). Scratch: kvec_decode_scratch_bytes. */
KVEC_API kvec_result kvec_decode_scratch_bytes(const kvec_config *config, const kvec_cache *cache,
                                               size_t *bytes);
KVEC_API kvec_result kvec_decode_evict(const kvec_config *config, kvec_decode_state *state,
                                       kvec_cache *cache, const float *scores, int64_t budget,
                                       kvec_plan *plan, void *scratch, size_t scratch_bytes);

/* >>cuda api

   The device path, defined in kvec_cuda.cu (compile it with nvcc and link
   it; this header needs no CUDA headers). The same kvec_cache, kvec_config
   and kvec_plan describe device memory: every data pointer in the cache,
   the plan's two arrays and the scratch are device pointers; the structs
   themselves stay on the host. stream is a cudaStream_t passed as void *
   (NULL = the default stream).

   Every call checks its descriptors on the host and returns at once; the
   work is queued on the stream and nothing is allocated. What the host
   cannot see (NaN or Inf in the keys or queries, a bad external plan) is
   found on the device: the call then leaves the cache and the plan as they
   were, and writes the result code into the scratch, where
   kvec_cuda_status reads it (it synchronises the stream). Uniform and
   pyramid budgets only; every policy and every K-VEC term
   (docs/SEMANTICS.md). kvec_cuda_scratch_bytes asks the CUDA runtime
   (CUB's sort storage) and so needs a device: KVEC_ERROR_CUDA without. */
#define KVEC_CUDA_API extern /* defined in kvec_cuda.cu whatever KVEC_STATIC says */
KVEC_CUDA_API kvec_result kvec_cuda_scratch_bytes(const kvec_config *config, const kvec_cache *cache,
                                                  size_t *bytes);
KVEC_CUDA_API kvec_result kvec_cuda_evict(const kvec_config *config, kvec_cache *cache,
                                          int64_t budget, kvec_plan *plan,
                                          void *scratch, size_t scratch_bytes, void *stream);
/* The steps: scores ([L][Hk][N] fp32, device) for the budget, a plan from
   any scores (external ones too), compaction by a plan. kvec_cuda_score
   refuses K-VEC's cross-layer term (a layer's scores depend on what the
   layers before it kept: kvec_cuda_evict). kvec_cuda_select takes any
   scratch from kvec_cuda_scratch_bytes, or kvec_cuda_select_scratch_bytes
   (0 = bad arguments); kvec_cuda_compact takes any of these (it needs
   only the status word, 68 bytes). */
KVEC_CUDA_API kvec_result kvec_cuda_score(const kvec_config *config, const kvec_cache *cache,
                                          int64_t budget, float *scores,
                                          void *scratch, size_t scratch_bytes, void *stream);
KVEC_CUDA_API size_t      kvec_cuda_select_scratch_bytes(const kvec_config *config, int64_t n_tokens);
KVEC_CUDA_API kvec_result kvec_cuda_select(const kvec_config *config, const float *scores,
                                           int64_t n_layers, int64_t n_kv_heads, int64_t n_tokens,
                                           int64_t budget, kvec_plan *plan,
                                           void *scratch, size_t scratch_bytes, void *stream);
KVEC_CUDA_API kvec_result kvec_cuda_compact(kvec_cache *cache, const kvec_plan *plan,
                                            void *scratch, size_t scratch_bytes, void *stream);
/* Reconstruction scores on the device (kvec_reconstruction_scores's
   formula; the same views with device pointers). Scratch: the status word
   and 8 bytes per (KV head, pass row, query head of the group);
   kvec_cuda_reconstruction_scratch_bytes answers 0 for bad arguments.
   NaN or Inf in what the softmax reads is found on the device: the scores
   are then not written, and kvec_cuda_status says so. */
KVEC_CUDA_API size_t      kvec_cuda_reconstruction_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                                 const kvec_reconstruction *pass);
KVEC_CUDA_API kvec_result kvec_cuda_reconstruction_scores(const kvec_config *config, const kvec_layer *layer,
                                                          const kvec_reconstruction *pass, float *scores,
                                                          void *scratch, size_t scratch_bytes, void *stream);
/* Learned scores on the device (kvec_learned_scores's formula; weights,
   hidden states, scores and scratch in device memory, the scorer struct on
   the host). Scratch: the status word and, for an MLP, its hidden layer
   for every token ([T][F] floats, so here the scratch grows with T);
   kvec_cuda_learned_scores_scratch_bytes answers 0 for bad arguments.
   Sums run in fp32 partial sums added in double, as on the CPU but not in
   the same order: the scores agree to float rounding, not bit for bit.
   NaN or Inf in the weights or hidden states is found on the device: the
   scores are then not written, and kvec_cuda_status says so. */
KVEC_CUDA_API size_t      kvec_cuda_learned_scores_scratch_bytes(const kvec_scorer *scorer, const kvec_tensor *hidden);
KVEC_CUDA_API kvec_result kvec_cuda_learned_scores(const kvec_scorer *scorer, const kvec_tensor *hidden, float *scores,
                                                   int64_t scores_stride, void *scratch, size_t scratch_bytes,
                                                   void *stream);
/* The device-side status lives in the scratch. kvec_cuda_evict and
   kvec_cuda_score clear it first; kvec_cuda_select and kvec_cuda_compact
   continue a chain (score -> select -> compact): they do nothing once it
   holds an error. A chain that starts at select (external scores) clears it
   with kvec_cuda_reset_status. kvec_cuda_status waits for the stream and
   reads it: KVEC_OK, KVEC_ERROR_NON_FINITE or KVEC_ERROR_BAD_PLAN. */
KVEC_CUDA_API kvec_result kvec_cuda_reset_status(void *scratch, void *stream);
KVEC_CUDA_API kvec_result kvec_cuda_status(const void *scratch, void *stream, kvec_result *result);

/* Element conversions, exposed for tests and for engines. */
KVEC_API float    kvec_f16_to_f32(uint16_t h);
KVEC_API uint16_t kvec_f32_to_f16(float f);   /* round to nearest even */
KVEC_API float    kvec_bf16_to_f32(uint16_t b);
KVEC_API uint16_t kvec_f32_to_bf16(float f);  /* round to nearest even */

#ifdef __cplusplus
}
#endif
#endif /* KVEC_H */

/* ======================================================================== */
/*                            IMPLEMENTATION                                */
/* ======================================================================== */

#ifdef KVEC_IMPLEMENTATION
#ifndef KVEC_IMPLEMENTATION_DONE
#define KVEC_IMPLEMENTATION_DONE

#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__F16C__) && (defined(__x86_64__) || defined(__i386__))
#include <immintrin.h>
#define KVEC__HAVE_F16C 1
#endif

#if !defined(KVEC_MALLOC) || !defined(KVEC_FREE)
#include <stdlib.h>
#undef KVEC_MALLOC
#undef KVEC_FREE
#define KVEC_MALLOC(bytes) malloc(bytes)
#define KVEC_FREE(ptr) free(ptr)
#endif

/* OpenMP as a plain pragma on the outer loop; _Pragma keeps builds without
   -fopenmp free of unknown-pragma warnings. */
#if defined(_OPENMP) && !defined(KVEC_NO_OPENMP)
#include <omp.h>
#define KVEC__PRAGMA(x) _Pragma(#x)
#define KVEC__PARALLEL_FOR KVEC__PRAGMA(omp parallel for schedule(dynamic, 1))
/* one team for a whole sequence of loops, each shared out by KVEC__FOR (a
   barrier after each): for short loops repeated many times, where opening a
   region per loop would cost more than the loop */
#define KVEC__PARALLEL_REGION KVEC__PRAGMA(omp parallel)
#define KVEC__FOR KVEC__PRAGMA(omp for schedule(static))
#else
#define KVEC__PARALLEL_FOR
#define KVEC__PARALLEL_REGION
#define KVEC__FOR
#endif

#define KVEC__DEFAULT_WINDOW      32
#define KVEC__DEFAULT_POOL_KERNEL 5
#define KVEC__DEFAULT_SINKS       4
#define KVEC__DEFAULT_PYRAMID     20.0f
#define KVEC__DEFAULT_MU          1.0f
#define KVEC__DEFAULT_BETA        0.25f
#define KVEC__DEFAULT_GAMMA       0.5f
#define KVEC__DEFAULT_FOCUS_CV    1.0f
#define KVEC__DEFAULT_SHARE       0.25f /* rank union: attention's share */
#define KVEC__DEFAULT_HEAD_FLOOR  0.2f  /* Ada-KV's alpha */
#define KVEC__CRITICAL_EPS        1e-4f /* CriticalKV: (pool(I) + eps) * O1 */
#define KVEC__FOCUS_FACTOR        4     /* focus heads look at 4W rows */
#define KVEC__Z_EPS               1e-6  /* z = (x - mean) / (std + eps) */

/* Window attention works on tiles of KVEC__TILE keys against at most
   KVEC__ROW_CHUNK query rows; each tile's exponentiated logits are kept in
   an [N][KVEC__ROW_CHUNK] buffer of the scratch until the rows' normalisers
   are known (one pass over K). */
#define KVEC__TILE      64
#define KVEC__ROW_CHUNK 128
#define KVEC__ALIGN     64

/* >>results */

KVEC_API const char *kvec_result_string(kvec_result result) {
    switch (result) {
    case KVEC_OK:                        return "ok";
    case KVEC_ERROR_NULL_POINTER:        return "a required pointer is NULL";
    case KVEC_ERROR_BAD_EXTENT:          return "an extent (tokens, heads, head_dim, layers) is zero or negative";
    case KVEC_ERROR_BAD_STRIDE:          return "a stride is negative or makes rows overlap";
    case KVEC_ERROR_MISALIGNED:          return "data pointer or stride is not a multiple of the element size";
    case KVEC_ERROR_BAD_DTYPE:           return "dtype is unset or unknown";
    case KVEC_ERROR_SHAPE_MISMATCH:      return "keys, values, queries or layers have inconsistent shapes";
    case KVEC_ERROR_BUDGET_BELOW_WINDOW: return "budget is smaller than the observation window";
    case KVEC_ERROR_SCRATCH_TOO_SMALL:   return "scratch memory is smaller than the *_scratch_bytes query says";
    case KVEC_ERROR_NON_FINITE:          return "keys or queries contain NaN or Inf";
    case KVEC_ERROR_MISSING_QUERIES:     return "the policy needs window queries and none (or too few rows) were given";
    case KVEC_ERROR_BAD_CONFIG:          return "invalid config (unknown policy, mode or pooling, even pool kernel, negative value)";
    case KVEC_ERROR_PLAN_TOO_SMALL:      return "the plan has too few layers, heads or positions per head";
    case KVEC_ERROR_OUT_OF_MEMORY:       return "KVEC_MALLOC returned NULL";
    case KVEC_ERROR_BAD_COVERAGE:        return "coverage state missing, for another sequence length, or out of layer order";
    case KVEC_ERROR_BAD_LAYER_INDEX:     return "layer index outside 0 .. n_layers-1";
    case KVEC_ERROR_SIZE_OVERFLOW:       return "a size overflows size_t or int64";
    case KVEC_ERROR_BAD_PLAN:            return "plan positions are not strictly ascending within 0 .. n_tokens-1, or a count exceeds the capacity";
    case KVEC_ERROR_OVERLAP:             return "memory the call writes overlaps other memory it reads or writes (cache, plan, scratch, state, outputs)";
    case KVEC_ERROR_MISSING_OUT_PROJ:    return "the policy reads the output projection (layer.out_proj) and none was given";
    case KVEC_ERROR_STATE_MISMATCH:      return "decode state full (evict first), its layers, heads or rows differ from the cache, or it is not a state kvec_decode_init made";
    case KVEC_ERROR_CUDA:                return "a CUDA runtime call or kernel launch failed (cudaPeekAtLastError says which)";
    case KVEC_ERROR_BAD_SCORES:          return "a score given in is negative or NaN where non-negative masses are required";
    }
    return "unknown kvec_result";
}

KVEC_API const char *kvec_policy_name(kvec_policy policy) {
    switch (policy) {
    case KVEC_POLICY_DEFAULT:   return "default (K-VEC)";
    case KVEC_POLICY_KVEC:      return "K-VEC";
    case KVEC_POLICY_SNAPKV:    return "SnapKV";
    case KVEC_POLICY_PYRAMIDKV: return "PyramidKV";
    case KVEC_POLICY_STREAMING: return "StreamingLLM";
    case KVEC_POLICY_H2O:       return "H2O";
    case KVEC_POLICY_TOVA:      return "TOVA";
    case KVEC_POLICY_KNORM:     return "Knorm";
    case KVEC_POLICY_KEYDIFF:   return "KeyDiff";
    case KVEC_POLICY_RANDOM:    return "Random";
    case KVEC_POLICY_CRITICALKV: return "CriticalKV";
    case KVEC_POLICY_LAPROX:    return "LaProx";
    case KVEC_POLICY_COUNT_:    break;
    }
    return "unknown";
}

/* >>conversions */

static float kvec__bits_to_f32(uint32_t bits) { float f; memcpy(&f, &bits, 4); return f; }
static uint32_t kvec__f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

KVEC_API float kvec_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0) { /* zero or subnormal: mantissa * 2^-24 is exact in fp32 */
        float magnitude = (float)mantissa * (1.0f / 16777216.0f);
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) return kvec__bits_to_f32(sign | 0x7f800000u | (mantissa << 13));
    return kvec__bits_to_f32(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

KVEC_API uint16_t kvec_f32_to_f16(float f) {
    uint32_t bits = kvec__f32_to_bits(f);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    uint32_t magnitude = bits & 0x7fffffffu;
    if (magnitude >= 0x7f800000u) /* Inf stays Inf, NaN stays a quiet NaN */
        return (uint16_t)(sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u));
    if (magnitude >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds past 65504 */
    if (magnitude < 0x38800000u) { /* below 2^-14: subnormal half, round to nearest even */
        float scaled = kvec__bits_to_f32(magnitude) * 16777216.0f; /* in units of 2^-24 */
        float rounded = (scaled + 8388608.0f) - 8388608.0f;          /* RNE to integer */
        return (uint16_t)(sign | (uint16_t)rounded);
    }
    {
        uint32_t exponent_mantissa = magnitude - (112u << 23);       /* rebias 127 -> 15 */
        uint32_t round_bit = 1u << 12, lower = exponent_mantissa & 0x1fffu;
        uint32_t half = exponent_mantissa >> 13;
        if (lower > round_bit || (lower == round_bit && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
}

KVEC_API float kvec_bf16_to_f32(uint16_t b) { return kvec__bits_to_f32((uint32_t)b << 16); }

KVEC_API uint16_t kvec_f32_to_bf16(float f) {
    uint32_t bits = kvec__f32_to_bits(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40u); /* quiet NaN */
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (uint16_t)(bits >> 16);
}

static int64_t kvec__dtype_size(kvec_dtype dtype) {
    switch (dtype) {
    case KVEC_DTYPE_F32:  return 4;
    case KVEC_DTYPE_F16:  return 2;
    case KVEC_DTYPE_BF16: return 2;
    case KVEC_DTYPE_UNSET: break;
    }
    return 0;
}

/* Pointer to element (token, head, 0) of a view. */
static char *kvec__row(const kvec_tensor *t, int64_t token, int64_t head) {
    return (char *)t->data + token * t->stride_token + head * t->stride_head;
}

/* Asks for row `token` of a head ahead of its use: rows of one head are
   usually strided (other heads in between), which hardware prefetchers
   follow poorly. Contiguous rows only; a no-op elsewhere. */
static void kvec__prefetch_row(const kvec_tensor *t, int64_t token, int64_t head) {
#if defined(__GNUC__) || defined(__clang__)
    if (token < t->n_tokens && t->stride_dim == kvec__dtype_size(t->dtype)) {
        const char *row = kvec__row(t, token, head);
        int64_t line;
        for (line = 0; line < t->head_dim * t->stride_dim; line += 64) __builtin_prefetch(row + line);
    }
#else
    (void)t; (void)token; (void)head;
#endif
}

/* Loads head_dim elements of one row as fp32. */
static void kvec__load_row(const kvec_tensor *t, int64_t token, int64_t head, float *out) {
    const char *row = kvec__row(t, token, head);
    const int64_t n = t->head_dim, step = t->stride_dim;
    int64_t d = 0;
    if (t->dtype == KVEC_DTYPE_F32) {
        if (step == 4) { memcpy(out, row, (size_t)n * 4); return; }
        for (; d < n; d++) out[d] = *(const float *)(row + d * step);
    } else if (t->dtype == KVEC_DTYPE_F16) {
#ifdef KVEC__HAVE_F16C
        if (step == 2)
            for (; d + 8 <= n; d += 8)
                _mm256_storeu_ps(out + d, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + d * 2))));
#endif
        for (; d < n; d++) out[d] = kvec_f16_to_f32(*(const uint16_t *)(row + d * step));
    } else {
        for (; d < n; d++) out[d] = kvec_bf16_to_f32(*(const uint16_t *)(row + d * step));
    }
}

/* >>checked arithmetic

   Every product or sum of caller-controlled sizes, strides, counts or
   positions is formed here, so that a hostile value becomes an error
   (KVEC_ERROR_SIZE_OVERFLOW, mostly) instead of signed overflow. Each
   returns 1 when the exact result does not fit and then leaves *out alone. */
#if defined(__has_builtin) && !defined(__CUDACC__)
#if __has_builtin(__builtin_mul_overflow) && __has_builtin(__builtin_add_overflow)
#define KVEC__OVERFLOW_BUILTINS 1
#endif
#elif defined(__GNUC__) && __GNUC__ >= 5 && !defined(__CUDACC__)
#define KVEC__OVERFLOW_BUILTINS 1
#endif

static int kvec__mul_overflows(int64_t a, int64_t b, int64_t *out) {
#ifdef KVEC__OVERFLOW_BUILTINS
    int64_t product;
    if (__builtin_mul_overflow(a, b, &product)) return 1;
    *out = product;
#else
    if (a > 0 ? (b > 0 ? a > INT64_MAX / b : b < INT64_MIN / a)
              : (b > 0 ? a < INT64_MIN / b : (a != 0 && b < INT64_MAX / a)))
        return 1;
    *out = a * b;
#endif
    return 0;
}

static int kvec__add_overflows(int64_t a, int64_t b, int64_t *out) {
#ifdef KVEC__OVERFLOW_BUILTINS
    int64_t sum;
    if (__builtin_add_overflow(a, b, &sum)) return 1;
    *out = sum;
#else
    if (b > 0 ? a > INT64_MAX - b : a < INT64_MIN - b) return 1;
    *out = a + b;
#endif
    return 0;
}

/* a * b for element counts: -1 when either is negative or the product
   overflows. -1 propagates through nested counts, and kvec__take refuses
   it, so a carve of an impossible size reports overflow by itself. */
static int64_t kvec__count(int64_t a, int64_t b) {
    int64_t product;
    if (a < 0 || b < 0 || kvec__mul_overflows(a, b, &product)) return -1;
    return product;
}

/* The last byte of `bytes` (>= 1) bytes at p, or 1 when it lies past the
   end of the address space: a descriptor no real memory can have. */
static int kvec__end_overflows(const void *p, int64_t bytes, uintptr_t *last) {
    const uintptr_t start = (uintptr_t)p;
    if (bytes < 1 || (uint64_t)(bytes - 1) > (uint64_t)(UINTPTR_MAX - start)) return 1;
    *last = start + (uintptr_t)(bytes - 1);
    return 0;
}

/* >>config */

static kvec_result kvec__resolve(const kvec_config *in, kvec_config *out) {
    kvec_config c;
    if (in) c = *in; else memset(&c, 0, sizeof c);
    if (c.policy == KVEC_POLICY_DEFAULT) c.policy = KVEC_POLICY_KVEC;
    if ((int)c.policy < 0 || c.policy >= KVEC_POLICY_COUNT_) return KVEC_ERROR_BAD_CONFIG;
    if (c.budget_mode == KVEC_BUDGET_DEFAULT)
        c.budget_mode = c.policy == KVEC_POLICY_PYRAMIDKV ? KVEC_BUDGET_PYRAMID : KVEC_BUDGET_UNIFORM;
    if ((int)c.budget_mode < KVEC_BUDGET_UNIFORM || c.budget_mode > KVEC_BUDGET_GLOBAL)
        return KVEC_ERROR_BAD_CONFIG;
    if (c.head_floor == 0.0f) c.head_floor = KVEC__DEFAULT_HEAD_FLOOR;
    if (c.head_floor < 0.0f) c.head_floor = -1.0f; /* "none", stable when resolved again */
    if (!(c.head_floor <= 1.0f)) return KVEC_ERROR_BAD_CONFIG; /* also NaN */
    if (c.window == 0) c.window = KVEC__DEFAULT_WINDOW;
    if (c.pool_kernel == 0) c.pool_kernel = KVEC__DEFAULT_POOL_KERNEL;
    if (c.pooling == KVEC_POOL_DEFAULT) c.pooling = KVEC_POOL_AVERAGE;
    if (c.sink_tokens == 0) c.sink_tokens = KVEC__DEFAULT_SINKS;
    if (c.pyramid_beta == 0.0f) c.pyramid_beta = KVEC__DEFAULT_PYRAMID;
    if (c.window < 0 || c.pool_kernel < 0 || c.pool_kernel % 2 == 0 || c.sink_tokens < 0)
        return KVEC_ERROR_BAD_CONFIG;
    if (c.pooling != KVEC_POOL_AVERAGE && c.pooling != KVEC_POOL_MAX) return KVEC_ERROR_BAD_CONFIG;
    if (!(c.pyramid_beta >= 1.0f) || !(c.pyramid_beta <= 1e30f)) return KVEC_ERROR_BAD_CONFIG;
    if (c.terms.enabled == 0) c.terms.enabled = KVEC_TERM_UNIQUENESS | KVEC_TERM_RANK_UNION;
    /* KVEC_TERM_NONE stays set, so that resolving a resolved config again
       never turns an empty term set into the defaults. */
    if (c.terms.enabled & ~(uint32_t)(KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_HEAD |
                                      KVEC_TERM_CROSS_LAYER | KVEC_TERM_HEAD_FOCUS |
                                      KVEC_TERM_RANK_UNION | KVEC_TERM_NONE))
        return KVEC_ERROR_BAD_CONFIG;
    if (c.terms.mu == 0.0f) c.terms.mu = KVEC__DEFAULT_MU;
    if (c.terms.beta == 0.0f) c.terms.beta = KVEC__DEFAULT_BETA;
    if (c.terms.gamma == 0.0f) c.terms.gamma = KVEC__DEFAULT_GAMMA;
    if (c.terms.focus_cv == 0.0f) c.terms.focus_cv = KVEC__DEFAULT_FOCUS_CV;
    if (c.terms.attention_share == 0.0f) c.terms.attention_share = KVEC__DEFAULT_SHARE;
    if (!isfinite(c.terms.mu) || !isfinite(c.terms.gamma) || !isfinite(c.terms.focus_cv) ||
        !(c.terms.beta >= 0.0f && c.terms.beta <= 1.0f) ||
        !(c.terms.attention_share > 0.0f && c.terms.attention_share < 1.0f))
        return KVEC_ERROR_BAD_CONFIG;
    /* K-VEC terms only mean something for K-VEC; leave them out elsewhere so a
       SnapKV config never pays for (or validates) coverage state. */
    if (c.policy != KVEC_POLICY_KVEC) c.terms.enabled = KVEC_TERM_NONE;
    /* The cross-head reserve is a per-head budget rule, and a model-wide pool
       selects after every layer is scored, so no earlier layer's choice can
       feed the cross-layer term: these pairs have no meaning. */
    if ((c.terms.enabled & KVEC_TERM_CROSS_HEAD) && c.budget_mode >= KVEC_BUDGET_ADAPTIVE)
        return KVEC_ERROR_BAD_CONFIG;
    if ((c.terms.enabled & KVEC_TERM_CROSS_LAYER) && c.budget_mode == KVEC_BUDGET_GLOBAL)
        return KVEC_ERROR_BAD_CONFIG;
    *out = c;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_resolve_config(const kvec_config *config, kvec_config *resolved) {
    if (!resolved) return KVEC_ERROR_NULL_POINTER;
    return kvec__resolve(config, resolved);
}

static int kvec__uses_output(const kvec_config *c) {
    return c->policy == KVEC_POLICY_CRITICALKV || c->policy == KVEC_POLICY_LAPROX;
}

static int kvec__uses_attention(const kvec_config *c) {
    return c->policy == KVEC_POLICY_KVEC || c->policy == KVEC_POLICY_SNAPKV ||
           c->policy == KVEC_POLICY_PYRAMIDKV || c->policy == KVEC_POLICY_H2O ||
           c->policy == KVEC_POLICY_TOVA || kvec__uses_output(c);
}

/* K-VEC's widened window under head focus: 4W rows, or every row there is. */
static int64_t kvec__focus_rows(const kvec_config *c, int64_t available) {
    int64_t rows;
    if (kvec__mul_overflows(KVEC__FOCUS_FACTOR, c->window, &rows) || rows > available) return available;
    return rows;
}

/* Query rows a policy needs at least (it reads the last ones supplied). */
static int64_t kvec__rows_needed(const kvec_config *c, int64_t n_tokens) {
    int64_t rows = c->window;
    if (c->policy == KVEC_POLICY_TOVA) return 1;
    if (c->policy == KVEC_POLICY_KVEC && (c->terms.enabled & KVEC_TERM_HEAD_FOCUS))
        rows = kvec__focus_rows(c, n_tokens);
    return rows < n_tokens ? rows : n_tokens;
}

/* >>validation */

/* Largest byte offset of an element, or -1 on overflow. */
static int64_t kvec__span(const kvec_tensor *t) {
    const int64_t extent[3] = { t->n_tokens, t->n_heads, t->head_dim };
    const int64_t stride[3] = { t->stride_token, t->stride_head, t->stride_dim };
    int64_t span = 0, step;
    int a;
    for (a = 0; a < 3; a++)
        if (kvec__mul_overflows(extent[a] - 1, stride[a], &step) || kvec__add_overflows(span, step, &span))
            return -1;
    return span;
}

/* The axes of extent above 1, sorted by stride (extent-1 axes take no
   steps, so their strides do not matter). Returns how many there are. */
static int kvec__sorted_axes(const kvec_tensor *t, int64_t extent[3], int64_t stride[3]) {
    const int64_t e[3] = { t->n_tokens, t->n_heads, t->head_dim };
    const int64_t s[3] = { t->stride_token, t->stride_head, t->stride_dim };
    int a, b, n_axes = 0;
    for (a = 0; a < 3; a++)
        if (e[a] > 1) { extent[n_axes] = e[a]; stride[n_axes] = s[a]; n_axes++; }
    for (a = 1; a < n_axes; a++)
        for (b = a; b > 0 && stride[b] < stride[b - 1]; b--) {
            int64_t te = extent[b], ts = stride[b];
            extent[b] = extent[b - 1]; stride[b] = stride[b - 1];
            extent[b - 1] = te; stride[b - 1] = ts;
        }
    return n_axes;
}

KVEC_API kvec_result kvec_validate_tensor(const kvec_tensor *t) {
    int64_t extent[3], stride[3], elem, span, bytes, covered;
    uintptr_t last;
    int a, n_axes;
    if (!t || !t->data) return KVEC_ERROR_NULL_POINTER;
    elem = kvec__dtype_size(t->dtype);
    if (elem == 0) return KVEC_ERROR_BAD_DTYPE;
    if (t->n_tokens <= 0 || t->n_heads <= 0 || t->head_dim <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (t->stride_token < 0 || t->stride_head < 0 || t->stride_dim < 0) return KVEC_ERROR_BAD_STRIDE;
    if ((uintptr_t)t->data % (uintptr_t)elem || t->stride_token % elem ||
        t->stride_head % elem || t->stride_dim % elem)
        return KVEC_ERROR_MISALIGNED;
    /* Every element's address must exist: no offset overflows int64 and the
       last byte does not wrap past the end of the address space. */
    span = kvec__span(t);
    if (span < 0 || kvec__add_overflows(span, elem, &bytes) || kvec__end_overflows(t->data, bytes, &last))
        return KVEC_ERROR_SIZE_OVERFLOW;
    /* No two elements may share memory. Sorting the axes by stride, each must
       step past everything the smaller ones span (sufficient, and what every
       real layout satisfies). */
    n_axes = kvec__sorted_axes(t, extent, stride);
    covered = elem; /* bytes spanned by the smaller axes */
    for (a = 0; a < n_axes; a++) {
        if (stride[a] < covered) return KVEC_ERROR_BAD_STRIDE;
        /* past int64, no larger stride can step over it */
        if (a + 1 < n_axes && kvec__mul_overflows(stride[a], extent[a], &covered)) return KVEC_ERROR_BAD_STRIDE;
    }
    return KVEC_OK;
}

/* Strides that would overflow are left at -1, which validation refuses. */
KVEC_API kvec_tensor kvec_tensor_contiguous(void *data, kvec_dtype dtype, int64_t n_tokens,
                                            int64_t n_heads, int64_t head_dim) {
    kvec_tensor t;
    int64_t e = kvec__dtype_size(dtype);
    t.data = data; t.dtype = dtype;
    t.n_tokens = n_tokens; t.n_heads = n_heads; t.head_dim = head_dim;
    t.stride_dim = e;
    t.stride_head = kvec__count(head_dim, e);
    t.stride_token = kvec__count(n_heads, t.stride_head);
    return t;
}

/* >>overlap rule

   Nothing a call writes may share a byte with anything else the call reads
   or writes (KVEC_ERROR_OVERLAP): the keys and values of every layer (written
   by compaction), the queries and out_proj, the plan's arrays, the scratch,
   the coverage, the decode state, and scores, masks or offsets passed in or
   out. Otherwise a row could be moved twice, or scratch written before the
   checks could overwrite the cache. Reads may share memory with reads.

   A region is a byte range, and for a strided view the finer pattern of its
   outermost axis: blocks of `width` bytes every `period` bytes from `first`.
   So K and V interleaved in one buffer ([token][K or V][head][dim], say)
   are told apart, while the same memory passed as both is refused. */
typedef struct kvec__region {
    uintptr_t first, last;    /* first and last byte */
    uintptr_t period, width;  /* 0: one block from first to last */
    int       written;
} kvec__region;

/* A validated view's region. */
static kvec__region kvec__tensor_region(const kvec_tensor *t, int written) {
    const int64_t elem = kvec__dtype_size(t->dtype);
    int64_t extent[3], stride[3], lower = 0;
    const int n_axes = kvec__sorted_axes(t, extent, stride);
    int a;
    kvec__region r;
    for (a = 0; a + 1 < n_axes; a++) lower += (extent[a] - 1) * stride[a]; /* within the span: no overflow */
    r.first = (uintptr_t)t->data;
    r.last = r.first + (uintptr_t)(kvec__span(t) + elem - 1);
    r.period = n_axes > 0 ? (uintptr_t)stride[n_axes - 1] : 0;
    r.width = (uintptr_t)(lower + elem);
    r.written = written;
    return r;
}

/* count elements of elem bytes at p as a plain region; 0 when it touches
   nothing, -1 when it cannot exist (it wraps or its size overflows). */
static int kvec__flat_region(const void *p, int64_t count, int64_t elem, int written, kvec__region *r) {
    const int64_t bytes = kvec__count(count, elem);
    uintptr_t last;
    if (!p || count == 0) return 0;
    if (bytes < 0 || kvec__end_overflows(p, bytes, &last)) return -1;
    r->first = (uintptr_t)p; r->last = last;
    r->period = 0; r->width = 0;
    r->written = written;
    return 1;
}

static int kvec__regions_collide(const kvec__region *a, const kvec__region *b) {
    const kvec__region *lo = a->first <= b->first ? a : b, *hi = lo == a ? b : a;
    uintptr_t offset;
    if (!a->written && !b->written) return 0;
    if (lo->last < hi->first) return 0;
    if (lo->period == 0 || lo->period != hi->period) return 1;
    /* hi's blocks sit at a fixed offset inside lo's period: disjoint when
       they fit in the gap after lo's block, before lo's next one */
    offset = (hi->first - lo->first) % lo->period;
    return !(offset >= lo->width && offset <= lo->period - hi->width);
}

/* The regions of one layer's tensors: keys and values (written when the
   call compacts), and the queries and out_proj when the policy reads them
   and they are valid views. Returns how many. */
static int kvec__layer_regions(const kvec_config *c, const kvec_layer *layer, int written,
                               kvec__region out[4]) {
    int n = 0;
    out[n++] = kvec__tensor_region(&layer->keys, written);
    out[n++] = kvec__tensor_region(&layer->values, written);
    if (c && kvec__uses_attention(c) && kvec_validate_tensor(&layer->queries) == KVEC_OK)
        out[n++] = kvec__tensor_region(&layer->queries, 0);
    if (c && kvec__uses_output(c) && kvec_validate_tensor(&layer->out_proj) == KVEC_OK)
        out[n++] = kvec__tensor_region(&layer->out_proj, 0);
    return n;
}

/* Layers [first, first + n_layers) of a plan: its counts and positions;
   -1 when their sizes cannot exist. */
static int kvec__plan_regions(const kvec_plan *plan, int64_t first, int64_t n_layers, int written,
                              kvec__region out[2]) {
    const int64_t heads = kvec__count(n_layers, plan->n_kv_heads);
    const int64_t first_head = kvec__count(first, plan->n_kv_heads);
    const int64_t rows = kvec__count(heads, plan->capacity);
    const int64_t first_row = kvec__count(first_head, plan->capacity);
    int n, k;
    if (heads < 0 || first_head < 0 || rows < 0 || first_row < 0) return -1;
    if ((n = kvec__flat_region(plan->kept_count + first_head, heads, sizeof(int64_t), written, &out[0])) < 0)
        return -1;
    k = kvec__flat_region(plan->kept_positions + first_row, rows, sizeof(int64_t), written, &out[n]);
    return k < 0 ? -1 : n + k;
}

/* One call's memory: the layers of n_caches caches (each with its plan's
   arrays, when plans is given), and up to 8 more regions. */
typedef struct kvec__call_memory {
    const kvec_config *config;     /* which of queries and out_proj are read; NULL: neither */
    const kvec_cache  *caches;
    int64_t            n_caches;
    int                cache_written;
    const kvec_plan   *plans;      /* [n_caches] or NULL */
    int                plans_written;
    kvec__region       extra[8];
    int                n_extra;
} kvec__call_memory;

static void kvec__call_init(kvec__call_memory *m, const kvec_config *c, const kvec_cache *caches,
                            int64_t n_caches, int cache_written) {
    m->config = c; m->caches = caches; m->n_caches = caches ? n_caches : 0;
    m->cache_written = cache_written;
    m->plans = NULL; m->plans_written = 0; m->n_extra = 0;
}

/* Adds count elements of elem bytes at p; 0 when that size cannot exist. */
static int kvec__call_add(kvec__call_memory *m, const void *p, int64_t count, int64_t elem, int written) {
    const int k = kvec__flat_region(p, count, elem, written, &m->extra[m->n_extra]);
    if (k < 0) return 0;
    m->n_extra += k;
    return 1;
}

/* Adds layers [first, first + n_layers) of a plan; 0 when their sizes cannot exist. */
static int kvec__call_add_plan(kvec__call_memory *m, const kvec_plan *plan, int64_t first, int64_t n_layers,
                               int written) {
    const int k = kvec__plan_regions(plan, first, n_layers, written, m->extra + m->n_extra);
    if (k < 0) return 0;
    m->n_extra += k;
    return 1;
}

/* Regions of sequence s: its plan's two, then per layer its tensors'. */
static int kvec__sequence_regions(const kvec__call_memory *m, int64_t s, int64_t l, kvec__region out[4]) {
    if (l < 0) {
        const kvec_plan *plan = &m->plans[s];
        const int n = kvec__plan_regions(plan, 0, m->caches[s].n_layers, m->plans_written, out);
        return n < 0 ? 0 : n;
    }
    return kvec__layer_regions(m->config, &m->caches[s].layers[l], m->cache_written, out);
}

/* Every pair, each once: O(regions^2) with no memory of its own, a few
   thousand pairs for a model's layers. Descriptors were validated first,
   and plan sizes by kvec__check_plan_descriptor. */
static kvec_result kvec__check_overlaps(const kvec__call_memory *m) {
    kvec__region a[4], b[4];
    const int64_t first_l = m->plans ? -1 : 0;
    int64_t s, l, s2, l2;
    int i, j, na, nb;
    for (i = 0; i < m->n_extra; i++)
        for (j = i + 1; j < m->n_extra; j++)
            if (kvec__regions_collide(&m->extra[i], &m->extra[j])) return KVEC_ERROR_OVERLAP;
    for (s = 0; s < m->n_caches; s++)
        for (l = first_l; l < m->caches[s].n_layers; l++) {
            na = kvec__sequence_regions(m, s, l, a);
            for (i = 0; i < na; i++) {
                for (j = 0; j < m->n_extra; j++)
                    if (kvec__regions_collide(&a[i], &m->extra[j])) return KVEC_ERROR_OVERLAP;
                for (j = i + 1; j < na; j++)
                    if (kvec__regions_collide(&a[i], &a[j])) return KVEC_ERROR_OVERLAP;
            }
            for (s2 = s; s2 < m->n_caches; s2++)
                for (l2 = s2 == s ? l + 1 : first_l; l2 < m->caches[s2].n_layers; l2++) {
                    nb = kvec__sequence_regions(m, s2, l2, b);
                    for (i = 0; i < na; i++)
                        for (j = 0; j < nb; j++)
                            if (kvec__regions_collide(&a[i], &b[j])) return KVEC_ERROR_OVERLAP;
                }
        }
    return KVEC_OK;
}

/* Keys and values of a layer, and the queries when scoring will read them. */
static kvec_result kvec__validate_layer(const kvec_config *c, const kvec_layer *layer,
                                        int need_queries) {
    kvec_result r;
    if (!layer) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec_validate_tensor(&layer->keys)) != KVEC_OK) return r;
    if ((r = kvec_validate_tensor(&layer->values)) != KVEC_OK) return r;
    if (layer->values.n_tokens != layer->keys.n_tokens ||
        layer->values.n_heads != layer->keys.n_heads)
        return KVEC_ERROR_SHAPE_MISMATCH;
    if (need_queries && kvec__uses_attention(c)) {
        const kvec_tensor *q = &layer->queries;
        if (!q->data) return KVEC_ERROR_MISSING_QUERIES;
        if ((r = kvec_validate_tensor(q)) != KVEC_OK) return r;
        if (q->head_dim != layer->keys.head_dim || q->n_heads % layer->keys.n_heads != 0 ||
            q->n_tokens > layer->keys.n_tokens)
            return KVEC_ERROR_SHAPE_MISMATCH;
        if (q->n_tokens < kvec__rows_needed(c, layer->keys.n_tokens)) return KVEC_ERROR_MISSING_QUERIES;
    }
    if (need_queries && kvec__uses_output(c)) {
        const kvec_tensor *o = &layer->out_proj;
        if (!o->data) return KVEC_ERROR_MISSING_OUT_PROJ;
        if ((r = kvec_validate_tensor(o)) != KVEC_OK) return r;
        if (o->n_heads != layer->queries.n_heads || o->head_dim != layer->values.head_dim)
            return KVEC_ERROR_SHAPE_MISMATCH;
    }
    return KVEC_OK;
}

KVEC_API kvec_result kvec_validate_cache(const kvec_cache *cache) {
    kvec_config defaults;
    int64_t l;
    kvec_result r;
    if (!cache || !cache->layers) return KVEC_ERROR_NULL_POINTER;
    if (cache->n_layers <= 0) return KVEC_ERROR_BAD_EXTENT;
    kvec__resolve(NULL, &defaults);
    for (l = 0; l < cache->n_layers; l++) {
        const kvec_layer *layer = &cache->layers[l];
        if ((r = kvec__validate_layer(&defaults, layer, 0)) != KVEC_OK) return r;
        if (layer->keys.n_tokens != cache->layers[0].keys.n_tokens ||
            layer->keys.n_heads != cache->layers[0].keys.n_heads)
            return KVEC_ERROR_SHAPE_MISMATCH;
    }
    return KVEC_OK;
}

/* Does the row hold a NaN or Inf? Reads the raw bits (an all-ones exponent),
   so it needs no conversion and the compiler can vectorise it. */
static int kvec__row_has_non_finite(const kvec_tensor *t, int64_t token, int64_t head) {
    const char *row = kvec__row(t, token, head);
    const int64_t n = t->head_dim, step = t->stride_dim;
    int64_t d;
    uint32_t bad = 0;
    if (t->dtype == KVEC_DTYPE_F32) {
        const uint32_t exponent = 0x7f800000u;
        if (step == 4) { /* the common case, kept apart so it vectorises */
            const uint32_t *u = (const uint32_t *)row;
            for (d = 0; d < n; d++) bad |= (uint32_t)((u[d] & exponent) == exponent);
        } else {
            for (d = 0; d < n; d++) bad |= (uint32_t)((*(const uint32_t *)(row + d * step) & exponent) == exponent);
        }
    } else {
        const uint16_t exponent = t->dtype == KVEC_DTYPE_F16 ? 0x7c00u : 0x7f80u;
        if (step == 2) {
            const uint16_t *h = (const uint16_t *)row;
            for (d = 0; d < n; d++) bad |= (uint32_t)((h[d] & exponent) == exponent);
        } else {
            for (d = 0; d < n; d++) bad |= (uint32_t)((*(const uint16_t *)(row + d * step) & exponent) == exponent);
        }
    }
    return bad != 0;
}

/* Every element finite? One task per head, each with its own flag. */
static int kvec__tensor_is_finite(const kvec_tensor *t, int *head_finite) {
    int64_t h;
    KVEC__PARALLEL_FOR
    for (h = 0; h < t->n_heads; h++) {
        int64_t i;
        int ok = 1;
        for (i = 0; i < t->n_tokens && ok; i++) ok = !kvec__row_has_non_finite(t, i, h);
        head_finite[h] = ok;
    }
    for (h = 0; h < t->n_heads; h++)
        if (!head_finite[h]) return 0;
    return 1;
}

/* >>scratch */

/* One code path both measures and carves scratch: with base == NULL it only
   counts, so the *_scratch_bytes answers can never drift from the layout. */
typedef struct kvec__bump {
    char  *base;     /* NULL: measuring */
    size_t used, size;
    int    overflow;
} kvec__bump;

static void kvec__bump_init(kvec__bump *b, void *memory, size_t bytes) {
    size_t skip = 0;
    if (memory) skip = (KVEC__ALIGN - (size_t)((uintptr_t)memory % KVEC__ALIGN)) % KVEC__ALIGN;
    b->base = memory ? (char *)memory + skip : NULL;
    b->size = memory ? (bytes > skip ? bytes - skip : 0) : 0;
    b->used = memory ? 0 : KVEC__ALIGN; /* a measured answer covers any alignment */
    b->overflow = 0;
}

static void *kvec__take(kvec__bump *b, int64_t count, size_t elem) {
    size_t start = (b->used + KVEC__ALIGN - 1) / KVEC__ALIGN * KVEC__ALIGN, bytes;
    if (count < 0 || (uint64_t)count > SIZE_MAX / elem || start < b->used) { b->overflow = 1; return NULL; }
    bytes = (size_t)count * elem;
    if (bytes > SIZE_MAX - start) { b->overflow = 1; return NULL; }
    b->used = start + bytes;
    return b->base ? b->base + start : NULL;
}

/* Per-head work area of window attention and the token-level scores. */
typedef struct kvec__head_work {
    float   *queries_t; /* [D][ROW_CHUNK]  scaled query rows of one chunk, transposed */
    float   *logits;    /* [N4][ROW_CHUNK] exp(logit - running max), N4 = N rounded up to 4;
                                          attention policies only (else NULL) */
    float   *tile_ref;  /* [N/TILE+1][ROW_CHUNK] running max each tile's values are relative to */
    float   *row_max;   /* [ROW_CHUNK] */
    float   *row_sum;   /* [ROW_CHUNK]     normaliser, then weight / normaliser */
    float   *row_scale; /* [ROW_CHUNK]     one tile's factor to normalised probabilities */
    float   *probs;     /* [ROW_CHUNK] */
    int32_t *reach;     /* [ROW_CHUNK]     last key of the tile a row sees */
    float   *keys;      /* [TILE][D]       one key tile as fp32 */
    float  *row;       /* [D] */
    double *dim_acc;   /* [D]             kbar accumulation */
    float  *kbar;      /* [D]             mean key direction */
    float  *tmp_a;     /* [N] */
    /* rank union only (else NULL): */
    uint32_t *sort_key, *sort_key_b;    /* [N] radix sort keys, ping and pong */
    int32_t  *sort_index, *sort_index_b; /* [N] positions in sorted order */
    int32_t  *rank;                     /* [N] rank of each position by pool(I) */
    /* output-aware policies only (else NULL): */
    float    *projection;  /* [ceil(M/RC)][Dv][ROW_CHUNK] the matrix whose products with
                                    the values give the norm (CriticalKV: W_o^h, M = E;
                                    LaProx: W_o^h' W_o^h, M = Dv), transposed in chunks
                                    of ROW_CHUNK outputs, zero past M */
    double   *gram;        /* [Dv][Dv] W_o^h' W_o^h (LaProx's 2-norm)       */
    float    *value_tile;  /* [TILE][Dv] value rows as fp32 */
    float    *proj_tile;   /* [TILE][ROW_CHUNK] products of one tile and one chunk */
    float    *proj_row;    /* [Dv] */
    float    *out_norm;    /* [N]  mean over the group of ||W_o^h v_i||     */
    uint8_t  *first_stage; /* [N]  CriticalKV: taken by attention alone     */
} kvec__head_work;

typedef struct kvec__layer_work {
    kvec__head_work *heads;   /* [Hk] */
    int     *check_flags;     /* [max(H, Hk)] */
    float   *scores;          /* [Hk][N] */
    uint8_t *flags;           /* [Hk][N]  cross-head and adaptive selection */
} kvec__layer_work;

typedef struct kvec__dims {
    int64_t n_tokens, n_kv_heads, n_query_heads, head_dim;
    int     rank_union; /* K-VEC's rank union is on: carve its sort buffers */
    int     attention;  /* the policy runs window attention: carve its logit buffer */
    int64_t pool_heads; /* global budget: L*Hk heads scored before selection, else 0 */
    int     output_norm;             /* 1: CriticalKV, 2: LaProx, 0: no output term */
    int64_t out_rows, value_dim;     /* E and Dv of out_proj, when output_norm */
} kvec__dims;

static kvec__dims kvec__layer_dims(const kvec_config *c, const kvec_layer *layer) {
    kvec__dims d;
    d.rank_union = c->policy == KVEC_POLICY_KVEC && (c->terms.enabled & KVEC_TERM_RANK_UNION);
    d.attention = kvec__uses_attention(c);
    d.pool_heads = 0;
    d.output_norm = c->policy == KVEC_POLICY_CRITICALKV ? 1 : c->policy == KVEC_POLICY_LAPROX ? 2 : 0;
    d.out_rows = d.value_dim = 0;
    if (d.output_norm && layer->out_proj.data && layer->out_proj.n_tokens > 0 && layer->out_proj.head_dim > 0) {
        d.out_rows = layer->out_proj.n_tokens;
        d.value_dim = layer->out_proj.head_dim;
        if (d.out_rows > INT32_MAX || d.value_dim > INT32_MAX) d.out_rows = -1; /* cannot be carved */
    }
    d.n_tokens = layer->keys.n_tokens;
    d.n_kv_heads = layer->keys.n_heads;
    d.head_dim = layer->keys.head_dim;
    d.n_query_heads = layer->queries.data && layer->queries.n_heads > 0 ? layer->queries.n_heads
                                                                        : layer->keys.n_heads;
    return d;
}

static void kvec__carve_layer(kvec__bump *b, const kvec__dims *d, kvec__layer_work *w) {
    const int64_t n = d->n_tokens, D = d->head_dim;
    const int64_t rows = KVEC__ROW_CHUNK, tile = KVEC__TILE, attention = d->attention ? 1 : 0;
    const int64_t scan_heads = d->n_query_heads > d->n_kv_heads ? d->n_query_heads : d->n_kv_heads;
    int64_t j;
    w->heads = (kvec__head_work *)kvec__take(b, d->n_kv_heads, sizeof(kvec__head_work));
    for (j = 0; j < d->n_kv_heads; j++) {
        kvec__head_work h;
        h.queries_t = (float *)kvec__take(b, kvec__count(D, rows), sizeof(float));
        h.logits    = (float *)kvec__take(b, kvec__count(attention * (n / 4 + 1), 4 * rows), sizeof(float));
        h.tile_ref  = (float *)kvec__take(b, kvec__count(attention * (n / tile + 1), rows), sizeof(float));
        h.row_max   = (float *)kvec__take(b, rows, sizeof(float));
        h.row_sum   = (float *)kvec__take(b, rows, sizeof(float));
        h.row_scale = (float *)kvec__take(b, rows, sizeof(float));
        h.probs     = (float *)kvec__take(b, rows, sizeof(float));
        h.reach     = (int32_t *)kvec__take(b, rows, sizeof(int32_t));
        h.keys      = (float *)kvec__take(b, kvec__count(tile, D), sizeof(float));
        h.row     = (float *)kvec__take(b, D, sizeof(float));
        h.dim_acc = (double *)kvec__take(b, D, sizeof(double));
        h.kbar    = (float *)kvec__take(b, D, sizeof(float));
        h.tmp_a   = (float *)kvec__take(b, n, sizeof(float));
        {
            /* positions are int32 in the sort: a longer head cannot be carved */
            const int64_t m = !d->rank_union ? 0 : n <= INT32_MAX ? n : -1;
            h.sort_key     = (uint32_t *)kvec__take(b, m, sizeof(uint32_t));
            h.sort_key_b   = (uint32_t *)kvec__take(b, m, sizeof(uint32_t));
            h.sort_index   = (int32_t *)kvec__take(b, m, sizeof(int32_t));
            h.sort_index_b = (int32_t *)kvec__take(b, m, sizeof(int32_t));
            h.rank         = (int32_t *)kvec__take(b, m, sizeof(int32_t));
        }
        {
            const int64_t E = d->out_rows, Dv = d->value_dim, on = d->output_norm ? 1 : 0;
            const int64_t outputs = d->output_norm == 1 ? E : d->output_norm == 2 ? Dv : 0;
            const int64_t chunks = outputs < 0 ? -1 : outputs / rows + 1;
            h.projection  = (float *)kvec__take(b, kvec__count(kvec__count(chunks, Dv), rows), sizeof(float));
            h.gram        = (double *)kvec__take(b, d->output_norm == 2 ? kvec__count(Dv, Dv) : 0, sizeof(double));
            h.value_tile  = (float *)kvec__take(b, kvec__count(on * tile, Dv), sizeof(float));
            h.proj_tile   = (float *)kvec__take(b, kvec__count(on * tile, rows), sizeof(float));
            h.proj_row    = (float *)kvec__take(b, kvec__count(on, Dv), sizeof(float));
            h.out_norm    = (float *)kvec__take(b, kvec__count(on, n), sizeof(float));
            h.first_stage = (uint8_t *)kvec__take(b, kvec__count(on, n), 1);
        }
        if (w->heads) w->heads[j] = h;
    }
    w->check_flags = (int *)kvec__take(b, scan_heads, sizeof(int));
    w->scores      = (float *)kvec__take(b, kvec__count(d->n_kv_heads, n), sizeof(float));
    w->flags       = (uint8_t *)kvec__take(b, kvec__count(d->n_kv_heads, n), 1);
}

/* >>attention */

/* exp(x) without a library call, so loops over a tile vectorise:
   x = n*ln2 + r, |r| <= ln2/2, exp(r) by its degree-6 Taylor polynomial
   (relative error below 2e-7). x is clamped to [-87, 88]: below, the result
   is about 1e-38, not 0, so callers exclude masked keys explicitly. */
static float kvec__exp(float x) {
    const float log2e = 1.44269504f, ln2_hi = 0.693145752f, ln2_lo = 1.42860677e-6f;
    const float round_magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n, r, p;
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    n = (x * log2e + round_magic) - round_magic;
    r = x - n * ln2_hi - n * ln2_lo;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    return p * kvec__bits_to_f32((uint32_t)((int32_t)n + 127) << 23);
}

/* logits[c][x] = sum_d keys[c][d] * queries_t[d][x] for c < n_keys (a
   multiple of 4) and x < n_rows (a multiple of 2 * KVEC__LANES): the matrix
   product at the heart of window attention. Keys stay in their natural row
   order and the query chunk is transposed once, so a tile needs no shuffling;
   each block of four keys reuses every query vector it loads. With GCC or
   Clang the accumulators are explicit vectors (8 lanes with AVX, 4
   otherwise), which keeps them in registers; other compilers get scalars. */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#if defined(__AVX__)
#define KVEC__LANES 8
#else
#define KVEC__LANES 4
#endif
typedef float kvec__vf __attribute__((vector_size(KVEC__LANES * 4)));

static void kvec__tile_logits(const float *keys, int64_t n_keys, const float *queries_t,
                              int64_t n_rows, int64_t D, float *logits) {
    int64_t c, x, d;
    for (x = 0; x < n_rows; x += 2 * KVEC__LANES)
        for (c = 0; c < n_keys; c += 4) {
            const float *k0 = keys + c * D, *k1 = k0 + D, *k2 = k0 + 2 * D, *k3 = k0 + 3 * D;
            kvec__vf a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 };
            kvec__vf b0 = { 0 }, b1 = { 0 }, b2 = { 0 }, b3 = { 0 };
            for (d = 0; d < D; d++) {
                kvec__vf q, r;
                memcpy(&q, queries_t + d * KVEC__ROW_CHUNK + x, sizeof q);
                memcpy(&r, queries_t + d * KVEC__ROW_CHUNK + x + KVEC__LANES, sizeof r);
                a0 += k0[d] * q; a1 += k1[d] * q; a2 += k2[d] * q; a3 += k3[d] * q;
                b0 += k0[d] * r; b1 += k1[d] * r; b2 += k2[d] * r; b3 += k3[d] * r;
            }
#define KVEC__STORE(row, lo, hi)                                                           \
            memcpy(logits + (c + row) * KVEC__ROW_CHUNK + x, &lo, sizeof lo);               \
            memcpy(logits + (c + row) * KVEC__ROW_CHUNK + x + KVEC__LANES, &hi, sizeof hi)
            KVEC__STORE(0, a0, b0); KVEC__STORE(1, a1, b1);
            KVEC__STORE(2, a2, b2); KVEC__STORE(3, a3, b3);
#undef KVEC__STORE
        }
}
#else
#define KVEC__LANES 4
static void kvec__tile_logits(const float *keys, int64_t n_keys, const float *queries_t,
                              int64_t n_rows, int64_t D, float *logits) {
    int64_t c, x, d;
    for (c = 0; c < n_keys; c++) {
        float *out = logits + c * KVEC__ROW_CHUNK;
        for (x = 0; x < n_rows; x++) out[x] = 0.0f;
        for (d = 0; d < D; d++)
            for (x = 0; x < n_rows; x++) out[x] += keys[c * D + d] * queries_t[d * KVEC__ROW_CHUNK + x];
    }
}
#endif

/* Sum in a fixed order (KVEC__LANES partial sums, then those in order), so
   the compiler may vectorise it and the result never depends on threads. */
static float kvec__sum(const float *v, int64_t n) {
    float part[KVEC__LANES] = { 0 }, total = 0.0f;
    int64_t i;
    int j;
    for (i = 0; i + KVEC__LANES <= n; i += KVEC__LANES)
        for (j = 0; j < KVEC__LANES; j++) part[j] += v[i + j];
    for (j = 0; i < n; i++, j++) part[j] += v[i];
    for (j = 0; j < KVEC__LANES; j++) total += part[j];
    return total;
}

/* Keys [first, first + count) of one head as fp32 rows keys[TILE][D]; rows
   up to the next multiple of 4 are zero. */
static void kvec__load_key_tile(const kvec_tensor *keys, int64_t head, int64_t first,
                                int64_t count, float *tile) {
    const int64_t D = keys->head_dim, padded = (count + 3) / 4 * 4;
    int64_t c;
    for (c = 0; c < count; c++) {
        kvec__prefetch_row(keys, first + KVEC__TILE + c, head); /* the next tile's row */
        kvec__load_row(keys, first + c, head, tile + c * D);
    }
    for (; c < padded; c++) memset(tile + c * D, 0, (size_t)D * sizeof(float));
}

static double kvec__dot_norm(const float *a, const float *b, int64_t n, double *norm_a);

/* One tile of an online softmax: logits ([count][ROW_CHUNK], key-major) of
   padded_rows query rows become exp(logit - m) in place, m the row's running
   maximum after this tile, and the rows' normalisers follow. reach (NULL:
   every key visible) masks key c out of row x when c > reach[x]; masked
   entries become 0. ref, when not NULL, receives m per row: the maximum the
   stored values are relative to. tile_max: [ROW_CHUNK] work memory. */
static void kvec__softmax_tile(float *logits, int64_t count, int64_t padded_rows, const int32_t *reach,
                               float *row_max, float *row_sum, float *tile_max, float *ref) {
    const int64_t RC = KVEC__ROW_CHUNK;
    int64_t c, x;
    for (x = 0; x < padded_rows; x++) tile_max[x] = -INFINITY;
    for (c = 0; c < count; c++) {
        const float *l = logits + c * RC;
        if (!reach)
            for (x = 0; x < padded_rows; x++) tile_max[x] = l[x] > tile_max[x] ? l[x] : tile_max[x];
        else
            for (x = 0; x < padded_rows; x++)
                tile_max[x] = c <= reach[x] && l[x] > tile_max[x] ? l[x] : tile_max[x];
    }
    for (x = 0; x < padded_rows; x++) {
        const float m = tile_max[x] > row_max[x] ? tile_max[x] : row_max[x];
        row_sum[x] *= kvec__exp(row_max[x] - m);
        row_max[x] = m;
        if (ref) ref[x] = m;
    }
    for (c = 0; c < count; c++) {
        float *l = logits + c * RC;
        if (!reach)
            for (x = 0; x < padded_rows; x++) {
                l[x] = kvec__exp(l[x] - row_max[x]);
                row_sum[x] += l[x];
            }
        else
            for (x = 0; x < padded_rows; x++) {
                const float e = kvec__exp(l[x] - row_max[x]);
                l[x] = c <= reach[x] ? e : 0.0f;
                row_sum[x] += l[x];
            }
    }
}

/* Window attention of one KV head, reduced over its query heads:

     sums[i] += weight * sum over rows r, heads h of the group of A[h, r, i],  i < n_out

   for the query rows [row_first, row_first + n_rows) of the queries tensor
   (row r is position N - Wq + r and sees keys i <= its position). Rows are
   taken in chunks, position-major (x = r*g + h), and each chunk makes one
   pass over the keys it can see, computing every logit once:

     - a tile's logits go straight into w->logits ([N][ROW_CHUNK], the tile
       at its keys' place) and are turned there into exp(logit - m), m the
       row's running maximum so far, which is kept per tile (w->tile_ref);
       the row's normaliser is updated online as before;
     - once every tile is seen, each stored value is scaled by
       exp(m_tile - m_final) * weight / normaliser and the rows summed.

   The scale is exactly 1 for every tile after the row's maximum settles, so
   the result is the two-pass one up to one rounding on the few early tiles.
   The price is the [N][ROW_CHUNK] fp32 buffer in the caller's scratch
   (kvec_layer_scratch_bytes counts it); the gain is half the matrix products.

   With direction_sum non-NULL, the pass that sees all N keys also adds
   k / ||k|| of every key to it (K-VEC's key direction, from the tile already
   loaded) and the function returns 1; 0 when no pass saw all keys. */
static int kvec__window_attention(const kvec_tensor *keys, const kvec_tensor *queries,
                                  int64_t kv_head, int64_t row_first, int64_t n_rows,
                                  int64_t n_out, float weight, kvec__head_work *w,
                                  float *sums, double *direction_sum) {
    const int64_t N = keys->n_tokens, D = keys->head_dim;
    const int64_t g = queries->n_heads / keys->n_heads;
    const int64_t first_position = N - queries->n_tokens + row_first;
    const int64_t total = n_rows * g, RC = KVEC__ROW_CHUNK;
    const float scale = 1.0f / sqrtf((float)D);
    int64_t x0;
    int direction_done = 0;
    for (x0 = 0; x0 < total; x0 += RC) {
        const int64_t chunk = total - x0 < RC ? total - x0 : RC;
        const int64_t padded_rows = (chunk + 2 * KVEC__LANES - 1) / (2 * KVEC__LANES) * (2 * KVEC__LANES);
        const int64_t first_key_hidden = first_position + x0 / g + 1; /* first row sees keys below */
        const int64_t last_key = first_position + (x0 + chunk - 1) / g; /* last row's position */
        const int64_t last_out = last_key < n_out - 1 ? last_key : n_out - 1;
        const int add_direction = direction_sum && last_key == N - 1 && !direction_done;
        int64_t x, d, c, t0;
        for (x = 0; x < padded_rows; x++) { /* scaled, transposed; padding rows are zero */
            if (x < chunk)
                kvec__load_row(queries, row_first + (x0 + x) / g, kv_head * g + (x0 + x) % g, w->row);
            for (d = 0; d < D; d++) w->queries_t[d * RC + x] = x < chunk ? w->row[d] * scale : 0.0f;
        }
        for (x = 0; x < padded_rows; x++) { w->row_max[x] = -INFINITY; w->row_sum[x] = 0.0f; }
        /* The pass: logits, running max and normaliser, exp(logit - max) kept. */
        for (t0 = 0; t0 <= last_key; t0 += KVEC__TILE) {
            const int64_t count = last_key + 1 - t0 < KVEC__TILE ? last_key + 1 - t0 : KVEC__TILE;
            const int all_visible = t0 + count <= first_key_hidden;
            float *logits = w->logits + t0 * RC, *ref = w->tile_ref + t0 / KVEC__TILE * RC;
            float *tile_max = w->probs;
            kvec__load_key_tile(keys, kv_head, t0, count, w->keys);
            kvec__tile_logits(w->keys, (count + 3) / 4 * 4, w->queries_t, padded_rows, D, logits);
            if (add_direction)
                for (c = 0; c < count; c++) {
                    const float *k = w->keys + c * D;
                    double norm;
                    kvec__dot_norm(k, k, D, &norm);
                    if (norm > 0.0) {
                        const double inverse = 1.0 / norm; /* one division per key */
                        for (d = 0; d < D; d++) direction_sum[d] += k[d] * inverse;
                    }
                }
            for (x = 0; x < padded_rows; x++)
                w->reach[x] = (int32_t)(first_position + (x0 + x) / g - t0); /* last visible c */
            kvec__softmax_tile(logits, count, padded_rows, all_visible ? NULL : w->reach, w->row_max,
                               w->row_sum, tile_max, ref);
        }
        direction_done |= add_direction;
        for (x = 0; x < padded_rows; x++) w->row_sum[x] = x < chunk ? weight / w->row_sum[x] : 0.0f;
        /* Normalised probabilities, summed over the chunk's rows per key. */
        for (t0 = 0; t0 <= last_out; t0 += KVEC__TILE) {
            const int64_t count = last_out + 1 - t0 < KVEC__TILE ? last_out + 1 - t0 : KVEC__TILE;
            const float *ref = w->tile_ref + t0 / KVEC__TILE * RC;
            for (x = 0; x < padded_rows; x++)
                w->row_scale[x] = kvec__exp(ref[x] - w->row_max[x]) * w->row_sum[x];
            for (c = 0; c < count; c++) {
                const float *e = w->logits + (t0 + c) * RC;
                for (x = 0; x < padded_rows; x++) w->probs[x] = e[x] * w->row_scale[x];
                sums[t0 + c] += kvec__sum(w->probs, chunk);
            }
        }
    }
    return direction_done;
}

/* >>scores */

static int64_t kvec__select_top(const float *scores, int64_t n, uint8_t *flags, uint8_t exclude,
                                int64_t k, int64_t *out); /* in >>selection */

/* Pooling over [0, n) with stride 1, same padding, padding not counted. */
static void kvec__pool(const float *in, int64_t n, int64_t kernel, kvec_pooling mode, float *out) {
    const int64_t half = kernel / 2;
    int64_t i, m;
    for (i = 0; i < n; i++) {
        const int64_t lo = i - half < 0 ? 0 : i - half, hi = i + half >= n ? n - 1 : i + half;
        float acc = in[lo];
        for (m = lo + 1; m <= hi; m++)
            acc = mode == KVEC_POOL_MAX ? (in[m] > acc ? in[m] : acc) : acc + in[m];
        out[i] = mode == KVEC_POOL_MAX ? acc : acc / (float)(hi - lo + 1);
    }
}

/* Mean and population standard deviation, in double. */
static void kvec__moments(const float *x, int64_t n, double *mean, double *std) {
    double sum = 0.0, sq = 0.0;
    int64_t i;
    for (i = 0; i < n; i++) sum += x[i];
    *mean = n > 0 ? sum / (double)n : 0.0;
    for (i = 0; i < n; i++) sq += (x[i] - *mean) * (x[i] - *mean);
    *std = n > 0 ? sqrt(sq / (double)n) : 0.0;
}

/* a.b, and ||a|| into *norm_a. fp32 products summed in KVEC__LANES partial
   sums of a fixed order: vectorisable, deterministic, and for head dims in
   the hundreds within about 1e-6 of a double-precision sum. */
static double kvec__dot_norm(const float *a, const float *b, int64_t n, double *norm_a) {
    float dot[KVEC__LANES] = { 0 }, aa[KVEC__LANES] = { 0 };
    double dot_total = 0.0, aa_total = 0.0;
    int64_t d;
    int j;
    for (d = 0; d + KVEC__LANES <= n; d += KVEC__LANES)
        for (j = 0; j < KVEC__LANES; j++) {
            dot[j] += a[d + j] * b[d + j];
            aa[j] += a[d + j] * a[d + j];
        }
    for (j = 0; d < n; d++, j++) { dot[j] += a[d] * b[d]; aa[j] += a[d] * a[d]; }
    for (j = 0; j < KVEC__LANES; j++) { dot_total += dot[j]; aa_total += aa[j]; }
    *norm_a = sqrt(aa_total);
    return dot_total;
}

/* kbar = mean over all N keys of k / ||k|| (zero keys add nothing). With
   summed != 0, w->dim_acc already holds the sum (window attention added it
   from its key tiles, in this same order) and K is not read. */
static void kvec__key_direction(const kvec_tensor *keys, int64_t head, kvec__head_work *w, int summed,
                                float *kbar) {
    const int64_t N = keys->n_tokens, D = keys->head_dim;
    int64_t i, d;
    double norm;
    if (!summed) for (d = 0; d < D; d++) w->dim_acc[d] = 0.0;
    for (i = 0; i < N && !summed; i++) {
        kvec__load_row(keys, i, head, w->row);
        kvec__dot_norm(w->row, w->row, D, &norm);
        if (norm > 0.0) {
            const double inverse = 1.0 / norm; /* one division per key, not per element */
            for (d = 0; d < D; d++) w->dim_acc[d] += w->row[d] * inverse;
        }
    }
    for (d = 0; d < D; d++) kbar[d] = (float)(w->dim_acc[d] / (double)N);
}

/* out[i] = -cos(k_i, kbar) for i < n (0 where a norm is 0); `summed` as in
   kvec__key_direction. */
static void kvec__uniqueness(const kvec_tensor *keys, int64_t head, int64_t n, int summed,
                             kvec__head_work *w, float *kbar, float *out) {
    const int64_t D = keys->head_dim;
    double kbar_norm, key_norm;
    int64_t i;
    kvec__key_direction(keys, head, w, summed, kbar);
    kvec__dot_norm(kbar, kbar, D, &kbar_norm);
    for (i = 0; i < n; i++) {
        double dot;
        kvec__load_row(keys, i, head, w->row);
        dot = kvec__dot_norm(w->row, kbar, D, &key_norm);
        out[i] = key_norm > 0.0 && kbar_norm > 0.0 ? (float)(-dot / (key_norm * kbar_norm)) : 0.0f;
    }
}

static uint64_t kvec__mix(uint64_t x) { /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Everything one scoring pass over a layer needs. */
typedef struct kvec__layer_job {
    const kvec_config   *config;
    const kvec_layer    *layer;
    const kvec_coverage *coverage;
    int64_t              layer_index;
    int64_t              n_evictable;  /* N - W */
    int64_t              free_slots;   /* B_l - W the scores are for; <= 0 unknown */
    float               *scores;       /* [Hk][N] */
    kvec__layer_work    *work;
} kvec__layer_job;

/* SnapKV's pooled importance pool(I) of head j from the last `rows` window
   rows; direction_sum as in kvec__window_attention, whose answer it returns. */
static int kvec__pooled_importance(const kvec__layer_job *job, int64_t j, int64_t rows, float *out,
                                   double *direction_sum) {
    const kvec_layer *layer = job->layer;
    const int64_t n = job->n_evictable, g = layer->queries.n_heads / layer->keys.n_heads;
    kvec__head_work *w = &job->work->heads[j];
    int64_t i;
    int summed;
    for (i = 0; i < n; i++) w->tmp_a[i] = 0.0f;
    summed = kvec__window_attention(&layer->keys, &layer->queries, j, layer->queries.n_tokens - rows,
                                    rows, n, 1.0f / (float)g, w, w->tmp_a, direction_sum);
    kvec__pool(w->tmp_a, n, job->config->pool_kernel, job->config->pooling, out);
    return summed;
}

static uint32_t kvec__order_key(float score);

/* Positions 0 .. n-1 in descending order of v (ties: lower position first;
   NaN last) into w->sort_index. An LSD radix sort on the 32-bit order key:
   four stable byte passes, O(n), the same result on every machine. */
static void kvec__sort_descending(const float *v, int64_t n, kvec__head_work *w) {
    uint32_t *key = w->sort_key, *key_b = w->sort_key_b, *swap_key;
    int32_t *index = w->sort_index, *index_b = w->sort_index_b, *swap_index;
    int64_t i, count[257];
    int shift;
    for (i = 0; i < n; i++) {
        key[i] = ~kvec__order_key(v[i]); /* ascending key = descending score */
        index[i] = (int32_t)i;
    }
    for (shift = 0; shift < 32; shift += 8) {
        memset(count, 0, sizeof count);
        for (i = 0; i < n; i++) count[((key[i] >> shift) & 255u) + 1]++;
        for (i = 0; i < 256; i++) count[i + 1] += count[i];
        for (i = 0; i < n; i++) {
            const int64_t at = count[(key[i] >> shift) & 255u]++;
            key_b[at] = key[i];
            index_b[at] = index[i];
        }
        swap_key = key; key = key_b; key_b = swap_key;
        swap_index = index; index = index_b; index_b = swap_index;
    }
    /* four swaps: the sorted arrays are w->sort_key and w->sort_index again */
}

/* The rank union's score of a token ranked by_attention by P alone and
   by_combined by the combined score: both lists are walked at once, list P
   advancing share times as fast as the combined one's 1 - share, and a token
   counts from the first list that reaches it, at depth
   min(by_attention / share, by_combined / (1 - share)). Scaled by
   2 share (1 - share), that is min(1.5 by_attention, 0.5 by_combined) at
   the default share 0.25 and min(by_attention, by_combined) at 0.5: exact
   in float for n up to 2^23 at either. Computed in double, as the CUDA path
   does. */
static float kvec__union_score(int64_t n, int64_t by_attention, int64_t by_combined,
                               float attention_share) {
    const double share = (double)attention_share;
    const double depth_a = 2.0 * (double)by_attention * (1.0 - share);
    const double depth_c = 2.0 * (double)by_combined * share;
    return (float)((double)n - (depth_a < depth_c ? depth_a : depth_c));
}

/* K-VEC: s = z(P) + mu z(U) + gamma C, P possibly from a wider window.
   With the rank union, s becomes kvec__union_score of the token's rank by P
   and by s: the best tokens by attention alone and by the combined score
   interleave, so the top B-W slots hold the heads of both lists, in the
   proportion attention_share : 1 - attention_share. */
static void kvec__score_kvec(const kvec__layer_job *job, int64_t j, float *s) {
    const kvec_config *c = job->config;
    const kvec_layer *layer = job->layer;
    const int64_t n = job->n_evictable;
    const uint32_t terms = c->terms.enabled;
    kvec__head_work *w = &job->work->heads[j];
    double mean_p, std_p, mean_u = 0.0, std_u = 1.0;
    int64_t i, d;
    int direction_summed;
    /* The key direction of the uniqueness term is summed from the attention
       pass's key tiles: K is then read once more (the cosines), not twice. */
    for (d = 0; d < layer->keys.head_dim; d++) w->dim_acc[d] = 0.0;
    direction_summed = kvec__pooled_importance(job, j, c->window, s,
                                               (terms & KVEC_TERM_UNIQUENESS) ? w->dim_acc : NULL);
    if (terms & KVEC_TERM_HEAD_FOCUS) {
        /* A head whose importance is flat looked at too little: widen its window. */
        kvec__moments(s, n, &mean_p, &std_p);
        if (mean_p > 0.0 && std_p / mean_p < (double)c->terms.focus_cv) {
            kvec__pooled_importance(job, j, kvec__focus_rows(c, layer->queries.n_tokens), s, NULL);
        }
    }
    if (!(terms & (KVEC_TERM_UNIQUENESS | KVEC_TERM_CROSS_LAYER)))
        return; /* no additive term: rank by P itself, exactly as SnapKV */
    kvec__moments(s, n, &mean_p, &std_p);
    if (terms & KVEC_TERM_RANK_UNION) {
        kvec__sort_descending(s, n, w);
        for (i = 0; i < n; i++) w->rank[w->sort_index[i]] = (int32_t)i;
    }
    if (terms & KVEC_TERM_UNIQUENESS) {
        kvec__uniqueness(&layer->keys, j, n, direction_summed, w, w->kbar, w->tmp_a);
        kvec__moments(w->tmp_a, n, &mean_u, &std_u);
    }
    for (i = 0; i < n; i++) {
        double v = (s[i] - mean_p) / (std_p + KVEC__Z_EPS);
        if (terms & KVEC_TERM_UNIQUENESS)
            v += c->terms.mu * ((w->tmp_a[i] - mean_u) / (std_u + KVEC__Z_EPS));
        if ((terms & KVEC_TERM_CROSS_LAYER) && !job->coverage->kept_before[i])
            v += c->terms.gamma;
        s[i] = (float)v;
    }
    if (terms & KVEC_TERM_RANK_UNION) {
        kvec__sort_descending(s, n, w);
        for (i = 0; i < n; i++) {
            const int64_t at = w->sort_index[i];
            s[at] = kvec__union_score(n, w->rank[at], i, c->terms.attention_share);
        }
    }
}

/* out[i] = mean over the query heads h of KV head j of ||W_o^h v_i||_p for
   i < n: how far token i's value moves the layer's output when head h
   attends to it fully. The 2-norm needs no projection per token:
   ||W v||^2 = v' (W'W) v with the Dv x Dv Gram matrix W'W, built once per
   head (E*Dv^2, in double) instead of E*Dv per token. The 1-norm projects.

   Either way the per-token work is a matrix product, values [TILE][Dv]
   against a matrix M ([E][Dv] W_o^h, or the [Dv][Dv] Gram), done with the
   window-attention kernel: M is transposed once per head into chunks of
   ROW_CHUNK outputs (w->projection), each tile of 64 values is multiplied
   with each chunk (every M element loaded serves 64 tokens), and the
   products are reduced per token: |y| summed (p = 1) or y . v (p = 2), in a
   fixed order. */
static void kvec__output_norms(const kvec_layer *layer, int64_t j, int64_t n, int p,
                               kvec__head_work *w, float *out) {
    const kvec_tensor *V = &layer->values, *Wo = &layer->out_proj;
    const int64_t Dv = V->head_dim, E = Wo->n_tokens, g = Wo->n_heads / V->n_heads, RC = KVEC__ROW_CHUNK;
    const int64_t outputs = p == 2 ? Dv : E, chunks = (outputs + RC - 1) / RC;
    const float inv_g = 1.0f / (float)g;
    int64_t hh, i, o, a, b, k, c, t0, x;
    for (i = 0; i < n; i++) out[i] = 0.0f;
    for (hh = 0; hh < g; hh++) {
        const int64_t h = j * g + hh;
        memset(w->projection, 0, (size_t)(chunks * Dv * RC) * sizeof(float));
        if (p == 2) {
            for (a = 0; a < Dv * Dv; a++) w->gram[a] = 0.0;
            for (o = 0; o < E; o++) {
                kvec__load_row(Wo, o, h, w->proj_row);
                for (a = 0; a < Dv; a++)
                    for (b = 0; b < Dv; b++) w->gram[a * Dv + b] += (double)w->proj_row[a] * w->proj_row[b];
            }
            for (a = 0; a < Dv; a++) /* output a of chunk a / RC, column b */
                for (b = 0; b < Dv; b++)
                    w->projection[((a / RC) * Dv + b) * RC + a % RC] = (float)w->gram[a * Dv + b];
        } else {
            for (o = 0; o < E; o++) {
                kvec__load_row(Wo, o, h, w->proj_row);
                for (b = 0; b < Dv; b++) w->projection[((o / RC) * Dv + b) * RC + o % RC] = w->proj_row[b];
            }
        }
        for (t0 = 0; t0 < n; t0 += KVEC__TILE) {
            const int64_t count = n - t0 < KVEC__TILE ? n - t0 : KVEC__TILE, count4 = (count + 3) / 4 * 4;
            float norm[KVEC__TILE];
            for (c = 0; c < count; c++) kvec__load_row(V, t0 + c, j, w->value_tile + c * Dv);
            for (; c < count4; c++) memset(w->value_tile + c * Dv, 0, (size_t)Dv * sizeof(float));
            for (c = 0; c < count; c++) norm[c] = 0.0f;
            for (k = 0; k < chunks; k++) {
                const int64_t width = outputs - k * RC < RC ? outputs - k * RC : RC;
                const int64_t padded = (width + 2 * KVEC__LANES - 1) / (2 * KVEC__LANES) * (2 * KVEC__LANES);
                kvec__tile_logits(w->value_tile, count4, w->projection + k * Dv * RC, padded, Dv, w->proj_tile);
                for (c = 0; c < count; c++) {
                    const float *y = w->proj_tile + c * RC, *v = w->value_tile + c * Dv + k * RC;
                    if (p == 2) for (x = 0; x < width; x++) w->probs[x] = y[x] * v[x];
                    else        for (x = 0; x < width; x++) w->probs[x] = fabsf(y[x]);
                    norm[c] += kvec__sum(w->probs, width);
                }
            }
            for (c = 0; c < count; c++)
                out[t0 + c] += (p == 2 ? sqrtf(norm[c] > 0.0f ? norm[c] : 0.0f) : norm[c]) * inv_g;
        }
    }
}

/* CriticalKV: the first half of the free slots goes to the best tokens by
   pool(I) alone (scored FLT_MAX, so they are kept first); the others score
   (pool(I) + eps) * O1, attention weighted by how much the value can move
   the output. */
static void kvec__score_criticalkv(const kvec__layer_job *job, int64_t j, float *s) {
    const int64_t n = job->n_evictable;
    kvec__head_work *w = &job->work->heads[j];
    const int64_t first = job->free_slots > 0 ? job->free_slots / 2 : 0;
    int64_t i;
    kvec__pooled_importance(job, j, job->config->window, s, NULL);
    kvec__output_norms(job->layer, j, n, 1, w, w->out_norm);
    for (i = 0; i < n; i++) w->first_stage[i] = 0;
    kvec__select_top(s, n, w->first_stage, 1u, first, NULL);
    for (i = 0; i < n; i++)
        s[i] = w->first_stage[i] ? FLT_MAX : (s[i] + KVEC__CRITICAL_EPS) * w->out_norm[i];
}

/* Scores of the evictable tokens of KV head j into s[0 .. N-W). */
static void kvec__score_head(const kvec__layer_job *job, int64_t j) {
    const kvec_config *c = job->config;
    const kvec_layer *layer = job->layer;
    const kvec_tensor *keys = &layer->keys, *queries = &layer->queries;
    const int64_t N = keys->n_tokens, n = job->n_evictable;
    kvec__head_work *w = &job->work->heads[j];
    float *s = job->scores + j * N;
    double norm;
    int64_t i;
    switch (c->policy) {
    case KVEC_POLICY_SNAPKV:
    case KVEC_POLICY_PYRAMIDKV:
        kvec__pooled_importance(job, j, c->window, s, NULL);
        break;
    case KVEC_POLICY_KVEC:
        kvec__score_kvec(job, j, s);
        break;
    case KVEC_POLICY_H2O: {
        /* All supplied rows; normalise by how many of them can see token i. */
        const int64_t rows = queries->n_tokens, g = queries->n_heads / keys->n_heads;
        for (i = 0; i < n; i++) s[i] = 0.0f;
        kvec__window_attention(keys, queries, j, 0, rows, n, 1.0f / (float)g, w, s, NULL);
        for (i = 0; i < n; i++) s[i] /= (float)(rows < N - i ? rows : N - i);
        break;
    }
    case KVEC_POLICY_TOVA: /* this head's share; kvec__score_layer averages over heads */
        for (i = 0; i < n; i++) s[i] = 0.0f;
        kvec__window_attention(keys, queries, j, queries->n_tokens - 1, 1, n, 1.0f, w, s, NULL);
        break;
    case KVEC_POLICY_KNORM:
        for (i = 0; i < n; i++) {
            kvec__load_row(keys, i, j, w->row);
            kvec__dot_norm(w->row, w->row, keys->head_dim, &norm);
            s[i] = (float)-norm;
        }
        break;
    case KVEC_POLICY_KEYDIFF:
        kvec__uniqueness(keys, j, n, 0, w, w->kbar, s);
        break;
    case KVEC_POLICY_CRITICALKV:
        kvec__score_criticalkv(job, j, s);
        break;
    case KVEC_POLICY_LAPROX: /* kvec__score_layer normalises over the layer */
        kvec__pooled_importance(job, j, c->window, s, NULL);
        kvec__output_norms(layer, j, n, 2, w, w->out_norm);
        for (i = 0; i < n; i++) s[i] *= w->out_norm[i];
        break;
    case KVEC_POLICY_STREAMING:
        for (i = 0; i < n; i++) s[i] = i < c->sink_tokens ? FLT_MAX : (float)i;
        break;
    case KVEC_POLICY_RANDOM: {
        const uint64_t head_seed = kvec__mix(kvec__mix(c->seed ^ kvec__mix((uint64_t)job->layer_index)) ^ (uint64_t)j);
        for (i = 0; i < n; i++)
            s[i] = (float)(kvec__mix(head_seed ^ (uint64_t)i) >> 40) * (1.0f / 16777216.0f);
        break;
    }
    default:
        break;
    }
    for (i = n; i < N; i++) s[i] = INFINITY; /* the window is always kept */
}

static void kvec__score_layer(const kvec__layer_job *job) {
    const int64_t Hk = job->layer->keys.n_heads, N = job->layer->keys.n_tokens;
    int64_t j, i;
    KVEC__PARALLEL_FOR
    for (j = 0; j < Hk; j++) kvec__score_head(job, j);
    if (job->config->policy == KVEC_POLICY_TOVA) {
        /* TOVA ranks by the attention of all query heads of the layer: every
           KV head gets the same average. Summed in head order, so the result
           does not depend on threads. */
        const float inv_heads = 1.0f / (float)job->layer->queries.n_heads;
        for (i = 0; i < job->n_evictable; i++) {
            float total = 0.0f;
            for (j = 0; j < Hk; j++) total += job->scores[j * N + i];
            for (j = 0; j < Hk; j++) job->scores[j * N + i] = total * inv_heads;
        }
    }
    if (job->config->policy == KVEC_POLICY_LAPROX) {
        /* Divide by the layer's mean score, summed in a fixed order: layers
           then compare on one scale in a model-wide pool. */
        double total = 0.0;
        float inv_mean;
        for (j = 0; j < Hk; j++)
            for (i = 0; i < job->n_evictable; i++) total += job->scores[j * N + i];
        if (total > 0.0) {
            inv_mean = (float)((double)(Hk * job->n_evictable) / total);
            for (j = 0; j < Hk; j++)
                for (i = 0; i < job->n_evictable; i++) job->scores[j * N + i] *= inv_mean;
        }
    }
}

/* >>budgets */

static int64_t kvec__layer_budget(const kvec_config *c, int64_t budget, int64_t layer,
                                  int64_t n_layers, int64_t n_tokens) {
    const int64_t W = c->window, free_slots = budget - W, free_max = n_tokens - W;
    double lo, hi, f;
    int64_t layer_free, twice_free;
    if (budget >= n_tokens) return n_tokens;
    /* adaptive and global: B is the average; kvec__head_capacity bounds a head */
    if (c->budget_mode != KVEC_BUDGET_PYRAMID || n_layers == 1 ||
        kvec__mul_overflows(2, free_slots, &twice_free) || n_tokens < twice_free)
        return budget;
    /* PyramidKV: early layers see broad attention and get more, deep layers
       less, the total staying about L * F. */
    lo = (double)free_slots / c->pyramid_beta;
    hi = 2.0 * (double)free_slots - lo;
    if (hi >= (double)free_max) { hi = (double)free_max; lo = 2.0 * (double)free_slots - hi; }
    f = floor(hi - (double)layer * (hi - lo) / (double)(n_layers - 1) + 0.5);
    layer_free = f < 0.0 ? 0 : f > (double)free_max ? free_max : (int64_t)f;
    return W + layer_free;
}

/* Plan positions a head of this layer may need: its budget, or under a
   shared pool everything (one head may win the whole pool). */
static int64_t kvec__head_capacity(const kvec_config *c, int64_t layer_budget, int64_t n_tokens) {
    return c->budget_mode >= KVEC_BUDGET_ADAPTIVE && layer_budget < n_tokens ? n_tokens : layer_budget;
}

KVEC_API kvec_result kvec_layer_budget(const kvec_config *config, int64_t budget,
                                       int64_t layer_index, int64_t n_layers,
                                       int64_t n_tokens, int64_t *layer_budget) {
    kvec_config c;
    kvec_result r;
    if (!layer_budget) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (n_layers <= 0 || n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (layer_index < 0 || layer_index >= n_layers) return KVEC_ERROR_BAD_LAYER_INDEX;
    if (budget < c.window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    *layer_budget = kvec__layer_budget(&c, budget, layer_index, n_layers, n_tokens);
    return KVEC_OK;
}

KVEC_API kvec_result kvec_plan_capacity(const kvec_config *config, int64_t budget,
                                        int64_t n_layers, int64_t n_tokens, int64_t *capacity) {
    kvec_config c;
    kvec_result r;
    int64_t largest;
    if (!capacity) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (n_layers <= 0 || n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (budget < c.window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    /* Budgets shrink with depth (PyramidKV) or are equal: layer 0's is the
       largest, found without a loop over a caller-given layer count. */
    largest = kvec__layer_budget(&c, budget, 0, n_layers, n_tokens);
    /* A shared pool may give one head everything it has. */
    if (c.budget_mode >= KVEC_BUDGET_ADAPTIVE) largest = n_tokens;
    *capacity = largest;
    return KVEC_OK;
}

/* >>selection */

/* An unsigned key whose order is the keep order of scores: larger score,
   larger key; NaN below everything; -0 equal to +0. */
static uint32_t kvec__order_key(float score) {
    uint32_t bits;
    if (score != score) return 0;
    if (score == 0.0f) score = 0.0f;
    bits = kvec__f32_to_bits(score);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

/* Takes the k best of scores[0 .. n) (ties to the lower position) among the
   positions not excluded (flags[i] & exclude); marks them with bit 0 of
   flags and/or writes them ascending to out. Returns how many it took.

   A radix select on the 32-bit order key, most significant digit first
   (11, 11 and 10 bits): each digit's histogram narrows the key of the k-th
   best. As soon as the keys still in contention are few (at most
   KVEC__SELECT_FEW), they are copied to a small stack array and the later
   digits count only those, so a typical head costs three passes over its
   scores (first digit, the copy, the final take) instead of five. The final
   ascending scan takes everything above the k-th best key and the
   lowest-positioned ties. O(n), no sort, no scratch. */
#define KVEC__SELECT_FEW 1024
static int64_t kvec__select_top(const float *scores, int64_t n, uint8_t *flags, uint8_t exclude,
                                int64_t k, int64_t *out) {
    static const int shifts[3] = { 21, 10, 0 }, widths[3] = { 11, 11, 10 };
    uint32_t prefix = 0, mask = 0, few[KVEC__SELECT_FEW];
    int64_t need = k, eligible = n, taken = 0, n_few = -1, i; /* n_few < 0: not copied */
    int digit;
    if (flags)
        for (eligible = 0, i = 0; i < n; i++) eligible += !(flags[i] & exclude);
    if (k <= 0) return 0;
    if (k < eligible) {
        for (digit = 0; digit < 3; digit++) {
            const int shift = shifts[digit];
            const uint32_t digit_mask = (1u << widths[digit]) - 1u;
            int64_t histogram[2048] = { 0 };
            int bucket;
            if (n_few >= 0) {
                for (i = 0; i < n_few; i++)
                    if ((few[i] & mask) == prefix) histogram[(few[i] >> shift) & digit_mask]++;
            } else {
                for (i = 0; i < n; i++) {
                    const uint32_t key = kvec__order_key(scores[i]);
                    if ((flags && (flags[i] & exclude)) || (key & mask) != prefix) continue;
                    histogram[(key >> shift) & digit_mask]++;
                }
            }
            for (bucket = (int)digit_mask; bucket > 0 && histogram[bucket] < need; bucket--)
                need -= histogram[bucket];
            prefix |= (uint32_t)bucket << shift;
            mask |= digit_mask << shift;
            if (n_few < 0 && digit < 2 && histogram[bucket] <= KVEC__SELECT_FEW) {
                n_few = 0;
                for (i = 0; i < n; i++) {
                    const uint32_t key = kvec__order_key(scores[i]);
                    if ((flags && (flags[i] & exclude)) || (key & mask) != prefix) continue;
                    few[n_few++] = key;
                }
            }
        }
    } else {
        need = 0; prefix = 0; /* take every eligible position */
    }
    for (i = 0; i < n; i++) {
        uint32_t key;
        if (flags && (flags[i] & exclude)) continue;
        key = kvec__order_key(scores[i]);
        if (k < eligible && !(key > prefix || (key == prefix && need > 0))) continue;
        if (k < eligible && key == prefix) need--;
        if (flags) flags[i] |= 1u;
        if (out) out[taken] = i;
        taken++;
    }
    return taken;
}

/* Kept positions of one head: the best `free_slots` evictable tokens, then
   the window. */
static int64_t kvec__select_head(const float *scores, int64_t n_tokens, int64_t n_evictable,
                                 int64_t free_slots, int64_t *out) {
    int64_t count = kvec__select_top(scores, n_evictable, NULL, 0, free_slots, out), i;
    for (i = n_evictable; i < n_tokens; i++) out[count++] = i;
    return count;
}

/* Cross-head coverage: heads in order; each reserves floor(beta * F) of its
   free slots for tokens no earlier head of the layer kept. flags: bit 0 =
   taken by this head, bit 1 = kept by an earlier head. */
static void kvec__select_cross_head(const kvec_config *c, const float *scores, int64_t Hk,
                                    int64_t n_tokens, int64_t n_evictable, int64_t free_slots,
                                    uint8_t *flags, int64_t *counts, int64_t *positions,
                                    int64_t capacity) {
    const int64_t reserve = (int64_t)floor((double)c->terms.beta * (double)free_slots);
    int64_t j, i;
    memset(flags, 0, (size_t)n_evictable);
    for (j = 0; j < Hk; j++) {
        const float *s = scores + j * n_tokens;
        int64_t *out = positions + j * capacity, count = 0, got;
        kvec__select_top(s, n_evictable, flags, 1u, free_slots - reserve, NULL);
        got = kvec__select_top(s, n_evictable, flags, 3u, reserve, NULL);
        if (got < reserve) kvec__select_top(s, n_evictable, flags, 1u, reserve - got, NULL);
        for (i = 0; i < n_evictable; i++)
            if (flags[i] & 1u) { out[count++] = i; flags[i] = 2u; }
        for (i = n_evictable; i < n_tokens; i++) out[count++] = i;
        counts[j] = count;
    }
}

/* Shared pools (Ada-KV per layer, or model-wide): G heads, scores [G][N],
   each with N - W evictable tokens, share G * (B - W) slots for a budget
   B < N. Every head first takes its own best head_floor * (B - W); the rest
   of the pool goes to the best remaining scores of all heads together,
   compared as they are, ties to the lower (head, position). Heads end with
   different counts. flags [G][N]: bit 0 = taken, bit 1 = window (never
   competes). Marking and gathering are apart so that a whole-cache call
   without a plan can gather one layer at a time. */
static void kvec__pool_mark(const kvec_config *c, const float *scores, int64_t G, int64_t N,
                            int64_t budget, uint8_t *flags) {
    const int64_t W = c->window, n_evictable = N - W, free_slots = budget - W;
    const int64_t floor_slots =
        c->head_floor <= 0.0f ? 0 : (int64_t)floor((double)c->head_floor * (double)free_slots);
    int64_t g;
    for (g = 0; g < G; g++) {
        memset(flags + g * N, 0, (size_t)n_evictable);
        memset(flags + g * N + n_evictable, 2, (size_t)W);
    }
    /* floor_slots <= free_slots < n_evictable: every head takes exactly its floor */
    KVEC__PARALLEL_FOR
    for (g = 0; g < G; g++)
        kvec__select_top(scores + g * N, n_evictable, flags + g * N, 1u, floor_slots, NULL);
    /* One flat pass over [G][N]: flat order is (head, position) order, so the
       radix select's tie rule is the documented one. */
    kvec__select_top(scores, G * N, flags, 3u, G * (free_slots - floor_slots), NULL);
}

/* Kept positions of G heads from their pool flags (window included). */
static void kvec__pool_gather(const kvec_config *c, const uint8_t *flags, int64_t G, int64_t N,
                              int64_t *counts, int64_t *positions, int64_t capacity) {
    const int64_t n_evictable = N - c->window;
    int64_t g;
    KVEC__PARALLEL_FOR
    for (g = 0; g < G; g++) {
        int64_t *out = positions + g * capacity, count = 0, i;
        for (i = 0; i < n_evictable; i++)
            if (flags[g * N + i] & 1u) out[count++] = i;
        for (i = n_evictable; i < N; i++) out[count++] = i;
        counts[g] = count;
    }
}

static void kvec__select_pool(const kvec_config *c, const float *scores, int64_t G, int64_t N,
                              int64_t budget, uint8_t *flags, int64_t *counts, int64_t *positions,
                              int64_t capacity) {
    kvec__pool_mark(c, scores, G, N, budget, flags);
    kvec__pool_gather(c, flags, G, N, counts, positions, capacity);
}

/* The plan rows of one layer, for scores already computed (or keep-all). */
static void kvec__select_layer(const kvec_config *c, const float *scores, int64_t Hk,
                               int64_t n_tokens, int64_t layer_budget, int64_t layer,
                               kvec_coverage *coverage, kvec_plan *plan, uint8_t *flags) {
    int64_t *counts = plan->kept_count + layer * plan->n_kv_heads;
    int64_t *positions = plan->kept_positions + layer * plan->n_kv_heads * plan->capacity;
    const int64_t capacity = plan->capacity;
    int64_t j, i;
    if (layer_budget >= n_tokens) {
        for (j = 0; j < Hk; j++) {
            for (i = 0; i < n_tokens; i++) positions[j * capacity + i] = i;
            counts[j] = n_tokens;
        }
    } else if (c->budget_mode == KVEC_BUDGET_ADAPTIVE) {
        kvec__select_pool(c, scores, Hk, n_tokens, layer_budget, flags, counts, positions, capacity);
    } else if (c->terms.enabled & KVEC_TERM_CROSS_HEAD) {
        kvec__select_cross_head(c, scores, Hk, n_tokens, n_tokens - c->window,
                                layer_budget - c->window, flags, counts, positions, capacity);
    } else {
        KVEC__PARALLEL_FOR
        for (j = 0; j < Hk; j++)
            counts[j] = kvec__select_head(scores + j * n_tokens, n_tokens, n_tokens - c->window,
                                          layer_budget - c->window, positions + j * capacity);
    }
    if (coverage) {
        for (j = 0; j < Hk; j++)
            for (i = 0; i < counts[j]; i++) coverage->kept_before[positions[j * capacity + i]] = 1;
        coverage->next_layer++;
    }
}

/* >>compaction */

/* One row of `bytes` bytes; the usual row sizes as constants, which the
   compiler turns into a few vector moves instead of a library call. */
static void kvec__copy_row(char *dst, const char *src, size_t bytes) {
    if (bytes == 256) memcpy(dst, src, 256);      /* fp16 or bf16, head dim 128 */
    else if (bytes == 128) memcpy(dst, src, 128); /* fp16 64, fp32 32 */
    else if (bytes == 512) memcpy(dst, src, 512); /* fp32 128, fp16 256 */
    else memcpy(dst, src, bytes);
}

/* Rows pos[r] -> r of one head for a layout whose dims are strided:
   dims outermost, so a [head][dim][token] layout moves contiguous runs of
   tokens. pos is strictly ascending, so pos[r] >= r and a row is always
   read before anything overwrites it. */
static void kvec__move_strided(const kvec_tensor *t, int64_t head, const int64_t *pos, int64_t count) {
    const int64_t elem = kvec__dtype_size(t->dtype);
    int64_t r, d;
    for (d = 0; d < t->head_dim; d++)
        for (r = 0; r < count; r++)
            if (pos[r] != r)
                memcpy(kvec__row(t, r, head) + d * t->stride_dim, kvec__row(t, pos[r], head) + d * t->stride_dim,
                       (size_t)elem);
}

/* Threads kvec may run (1 without OpenMP). */
static int64_t kvec__max_threads(void) {
#if defined(_OPENMP) && !defined(KVEC_NO_OPENMP)
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Compaction of one layer: rows pos_j[r] -> r of every head j, r ascending
   per head. Each thread takes a contiguous group of heads and walks it
   rank-major: rank r of every head of the group, then rank r + 1. In the
   usual [token][kv_head][dim] layout the rows one rank writes are
   neighbours in memory, so writes stream and reads sweep the layer once,
   not once per head; the source rows KVEC__COMPACT_AHEAD ranks on are
   prefetched, since kept rows are scattered and the hardware prefetcher
   does not follow them. Safe in any order across heads: a head's rows are
   its own, and within a head pos[r] >= r, so a row is read before anything
   overwrites it. The bytes written do not depend on the grouping. Layouts
   with strided dims take the per-head path above. */
#define KVEC__COMPACT_AHEAD 2
static void kvec__compact_layer(kvec_layer *layer, const kvec_plan *plan, int64_t l) {
    const int64_t Hk = layer->keys.n_heads, threads = kvec__max_threads();
    const int64_t groups = threads < Hk ? (threads > 0 ? threads : 1) : Hk;
    const kvec_tensor *K = &layer->keys, *V = &layer->values;
    const int64_t elem_k = kvec__dtype_size(K->dtype), elem_v = kvec__dtype_size(V->dtype);
    const int rows_k = K->stride_dim == elem_k, rows_v = V->stride_dim == elem_v;
    const size_t bytes_k = (size_t)(K->head_dim * elem_k), bytes_v = (size_t)(V->head_dim * elem_v);
    const int64_t *counts = plan->kept_count + l * plan->n_kv_heads;
    int64_t group;
    KVEC__PARALLEL_FOR
    for (group = 0; group < groups; group++) {
        const int64_t j0 = Hk * group / groups, j1 = Hk * (group + 1) / groups;
        int64_t j, r, most = 0;
        for (j = j0; j < j1; j++) {
            const int64_t *pos = plan->kept_positions + (l * plan->n_kv_heads + j) * plan->capacity;
            most = counts[j] > most ? counts[j] : most;
            if (!rows_k) kvec__move_strided(K, j, pos, counts[j]);
            if (!rows_v) kvec__move_strided(V, j, pos, counts[j]);
        }
        for (r = 0; r < most && (rows_k || rows_v); r++)
            for (j = j0; j < j1; j++) {
                const int64_t *pos = plan->kept_positions + (l * plan->n_kv_heads + j) * plan->capacity;
                if (r >= counts[j]) continue;
                if (r + KVEC__COMPACT_AHEAD < counts[j]) {
                    if (rows_k) kvec__prefetch_row(K, pos[r + KVEC__COMPACT_AHEAD], j);
                    if (rows_v) kvec__prefetch_row(V, pos[r + KVEC__COMPACT_AHEAD], j);
                }
                if (pos[r] == r) continue;
                if (rows_k) kvec__copy_row(kvec__row(K, r, j), kvec__row(K, pos[r], j), bytes_k);
                if (rows_v) kvec__copy_row(kvec__row(V, r, j), kvec__row(V, pos[r], j), bytes_v);
            }
    }
}

/* >>entry points */

/* A plan's own description: positive layers and heads, a capacity, and
   two arrays whose sizes exist and that do not overlap (a call that writes
   one layer must not land in another layer's counts). */
static kvec_result kvec__check_plan_descriptor(const kvec_plan *plan) {
    kvec__region r[2];
    int n;
    if (!plan || !plan->kept_count || !plan->kept_positions) return KVEC_ERROR_NULL_POINTER;
    if (plan->n_layers <= 0 || plan->n_kv_heads <= 0 || plan->capacity < 0) return KVEC_ERROR_BAD_EXTENT;
    if ((n = kvec__plan_regions(plan, 0, plan->n_layers, 1, r)) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (n == 2 && kvec__regions_collide(&r[0], &r[1])) return KVEC_ERROR_OVERLAP;
    return KVEC_OK;
}

static kvec_result kvec__check_plan(const kvec_plan *plan, int64_t layer, int64_t Hk,
                                    int64_t layer_budget) {
    kvec_result r = kvec__check_plan_descriptor(plan);
    if (r != KVEC_OK) return r;
    if (layer >= plan->n_layers || plan->n_kv_heads != Hk || plan->capacity < layer_budget)
        return KVEC_ERROR_PLAN_TOO_SMALL;
    return KVEC_OK;
}

static kvec_result kvec__check_coverage(const kvec_config *c, const kvec_coverage *coverage,
                                        int64_t layer, int64_t n_tokens) {
    if (!coverage) return (c->terms.enabled & KVEC_TERM_CROSS_LAYER) ? KVEC_ERROR_BAD_COVERAGE : KVEC_OK;
    if (!coverage->kept_before || coverage->n_tokens != n_tokens || coverage->next_layer != layer)
        return KVEC_ERROR_BAD_COVERAGE;
    return KVEC_OK;
}

/* NaN or Inf in what must be numbers: the keys always (every policy and
   budget, so a cache's validity never depends on which layers are scored),
   the queries when the layer is scored by a policy that reads them, and
   values and out_proj when an output-aware policy scores the layer. */
static kvec_result kvec__check_finite(const kvec_config *c, const kvec_layer *layer,
                                      int scoring, kvec__layer_work *w) {
    if (!kvec__tensor_is_finite(&layer->keys, w->check_flags))
        return KVEC_ERROR_NON_FINITE;
    if (scoring && kvec__uses_attention(c) &&
        !kvec__tensor_is_finite(&layer->queries, w->check_flags))
        return KVEC_ERROR_NON_FINITE;
    if (scoring && kvec__uses_output(c) &&
        (!kvec__tensor_is_finite(&layer->values, w->check_flags) ||
         !kvec__tensor_is_finite(&layer->out_proj, w->check_flags)))
        return KVEC_ERROR_NON_FINITE;
    return KVEC_OK;
}

static size_t kvec__layer_bytes(const kvec__dims *d) {
    kvec__bump b;
    kvec__layer_work w;
    kvec__bump_init(&b, NULL, 0);
    kvec__carve_layer(&b, d, &w);
    return b.overflow ? 0 : b.used;
}

/* The whole-cache calls' scratch for one layer of a sequence: what must
   stay put from layer to layer first (the coverage state, under a global
   budget every layer's scores, and the plan of one layer for calls given
   none), then the layer's work. */
typedef struct kvec__sequence_work {
    uint8_t *kept_before;    /* [N]         coverage state */
    float   *model_scores;   /* [L][Hk][N]  global budget only */
    uint8_t *model_flags;    /* [L][Hk][N]  global budget only */
    kvec_plan own_plan;      /* [1][Hk][N]  used when the caller passes no plan */
    kvec__layer_work layer;
} kvec__sequence_work;

static void kvec__carve_sequence_layer(kvec__bump *b, const kvec__dims *d, kvec__sequence_work *s) {
    const int64_t pool = kvec__count(d->pool_heads, d->n_tokens);
    s->kept_before  = (uint8_t *)kvec__take(b, d->n_tokens, 1);
    s->model_scores = (float *)kvec__take(b, pool, sizeof(float));
    s->model_flags  = (uint8_t *)kvec__take(b, pool, 1);
    s->own_plan.n_layers = 1;
    s->own_plan.n_kv_heads = d->n_kv_heads;
    s->own_plan.capacity = d->n_tokens;
    s->own_plan.kept_count = (int64_t *)kvec__take(b, d->n_kv_heads, sizeof(int64_t));
    s->own_plan.kept_positions = (int64_t *)kvec__take(b, kvec__count(d->n_kv_heads, d->n_tokens), sizeof(int64_t));
    kvec__carve_layer(b, d, &s->layer);
}

/* The dims of layer l of a sequence of n_layers. */
static kvec__dims kvec__sequence_dims(const kvec_config *c, const kvec_cache *cache, int64_t l) {
    kvec__dims d = kvec__layer_dims(c, &cache->layers[l]);
    if (c->budget_mode == KVEC_BUDGET_GLOBAL) d.pool_heads = kvec__count(cache->n_layers, d.n_kv_heads);
    return d;
}

KVEC_API kvec_result kvec_layer_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                              size_t *bytes) {
    kvec_config c;
    kvec_result r;
    kvec__dims d;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kvec__validate_layer(&c, layer, 0)) != KVEC_OK) return r;
    d = kvec__layer_dims(&c, layer);
    if ((*bytes = kvec__layer_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    return KVEC_OK;
}

KVEC_API size_t kvec_select_scratch_bytes(const kvec_config *config, int64_t n_layers,
                                          int64_t n_kv_heads, int64_t n_tokens) {
    kvec_config c;
    int64_t heads, bytes;
    if (kvec__resolve(config, &c) != KVEC_OK || n_layers <= 0 || n_kv_heads <= 0 || n_tokens <= 0)
        return 0;
    /* one flag byte per token of every head that competes in one selection */
    heads = c.budget_mode == KVEC_BUDGET_GLOBAL   ? kvec__count(n_layers, n_kv_heads)
          : c.budget_mode == KVEC_BUDGET_ADAPTIVE ? n_kv_heads
          : (c.terms.enabled & KVEC_TERM_CROSS_HEAD) ? 1 : 0;
    bytes = kvec__count(heads, n_tokens);
    if (bytes < 0 || (uint64_t)bytes > SIZE_MAX) return 0;
    return (size_t)bytes;
}

KVEC_API kvec_result kvec_scratch_bytes(const kvec_config *config, const kvec_cache *caches,
                                        int64_t n_caches, size_t *bytes) {
    kvec_config c;
    kvec_result r;
    int64_t s, l;
    size_t largest = 0;
    if (!bytes || !caches) return KVEC_ERROR_NULL_POINTER;
    if (n_caches <= 0) return KVEC_ERROR_BAD_EXTENT;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    for (s = 0; s < n_caches; s++) {
        if ((r = kvec_validate_cache(&caches[s])) != KVEC_OK) return r;
        for (l = 0; l < caches[s].n_layers; l++) {
            kvec__dims d = kvec__sequence_dims(&c, &caches[s], l);
            kvec__bump b;
            kvec__sequence_work w;
            kvec__bump_init(&b, NULL, 0);
            kvec__carve_sequence_layer(&b, &d, &w);
            if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
            largest = b.used > largest ? b.used : largest;
        }
    }
    *bytes = largest;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_coverage_init(kvec_coverage *coverage, void *memory,
                                        size_t memory_bytes, int64_t n_tokens) {
    kvec__region r;
    if (!coverage || !memory) return KVEC_ERROR_NULL_POINTER;
    if (n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (memory_bytes < (uint64_t)n_tokens) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    if (kvec__flat_region(memory, n_tokens, 1, 1, &r) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    coverage->kept_before = (uint8_t *)memory;
    coverage->n_tokens = n_tokens;
    coverage->next_layer = 0;
    memset(memory, 0, (size_t)n_tokens);
    return KVEC_OK;
}

/* Scratch of one layer's work: how much, and whether the caller gave it. */
static kvec_result kvec__layer_scratch(const void *scratch, size_t scratch_bytes, const kvec__dims *d,
                                       size_t *needed) {
    if (!scratch) return KVEC_ERROR_NULL_POINTER;
    if ((*needed = kvec__layer_bytes(d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (scratch_bytes < *needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    return KVEC_OK;
}

static void kvec__layer_work_in(void *scratch, size_t scratch_bytes, const kvec__dims *d,
                                kvec__layer_work *w) {
    kvec__bump b;
    kvec__bump_init(&b, scratch, scratch_bytes);
    kvec__carve_layer(&b, d, w);
}

static void kvec__run_scoring(const kvec_config *c, const kvec_layer *layer, int64_t l,
                              int64_t layer_budget, const kvec_coverage *coverage, float *scores,
                              kvec__layer_work *w) {
    kvec__layer_job job;
    job.config = c; job.layer = layer; job.coverage = coverage; job.layer_index = l;
    job.n_evictable = layer->keys.n_tokens - c->window;
    job.free_slots = layer_budget > c->window ? layer_budget - c->window : 0; /* <= 0: unknown */
    job.scores = scores; job.work = w;
    if (job.n_evictable <= 0) { /* everything is window */
        int64_t i, n = layer->keys.n_tokens * layer->keys.n_heads;
        for (i = 0; i < n; i++) scores[i] = INFINITY;
        return;
    }
    kvec__score_layer(&job);
}

/* The one-layer cache view of a layer, for the overlap rule. */
static kvec_cache kvec__cache_of(const kvec_layer *layer) {
    kvec_cache cache;
    cache.layers = (kvec_layer *)layer;
    cache.n_layers = 1;
    return cache;
}

KVEC_API kvec_result kvec_score_layer(const kvec_config *config, const kvec_layer *layer,
                                      int64_t layer_index, int64_t layer_budget,
                                      const kvec_coverage *coverage,
                                      float *scores, void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__layer_work w;
    kvec__dims d;
    kvec__call_memory m;
    kvec_cache one;
    size_t needed;
    int scoring;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!layer || !scores) return KVEC_ERROR_NULL_POINTER;
    if (layer_index < 0) return KVEC_ERROR_BAD_LAYER_INDEX;
    scoring = layer->keys.n_tokens > c.window;
    if ((r = kvec__validate_layer(&c, layer, scoring)) != KVEC_OK) return r;
    if ((r = kvec__check_coverage(&c, coverage, layer_index, layer->keys.n_tokens)) != KVEC_OK) return r;
    d = kvec__layer_dims(&c, layer);
    if ((r = kvec__layer_scratch(scratch, scratch_bytes, &d, &needed)) != KVEC_OK) return r;
    one = kvec__cache_of(layer);
    kvec__call_init(&m, &c, &one, 1, 0);
    if (!kvec__call_add(&m, scores, d.n_kv_heads * d.n_tokens, sizeof(float), 1) || /* within K's extents */
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1) ||
        (coverage && !kvec__call_add(&m, coverage->kept_before, d.n_tokens, 1, 0)))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__layer_work_in(scratch, scratch_bytes, &d, &w);
    if ((r = kvec__check_finite(&c, layer, scoring, &w)) != KVEC_OK) return r;
    kvec__run_scoring(&c, layer, layer_index, layer_budget, coverage, scores, &w);
    return KVEC_OK;
}

KVEC_API kvec_result kvec_select_layer(const kvec_config *config, const float *scores,
                                       int64_t n_kv_heads, int64_t n_tokens,
                                       int64_t layer_budget, int64_t layer_index,
                                       kvec_coverage *coverage, kvec_plan *plan,
                                       void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__call_memory m;
    int64_t kept;
    size_t needed;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (c.budget_mode == KVEC_BUDGET_GLOBAL) return KVEC_ERROR_BAD_CONFIG; /* whole model: kvec_select */
    if (!scores) return KVEC_ERROR_NULL_POINTER;
    if (n_kv_heads <= 0 || n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (kvec__count(n_kv_heads, n_tokens) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (layer_index < 0) return KVEC_ERROR_BAD_LAYER_INDEX;
    if (layer_budget < c.window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    kept = kvec__head_capacity(&c, layer_budget < n_tokens ? layer_budget : n_tokens, n_tokens);
    if ((r = kvec__check_plan(plan, layer_index, n_kv_heads, kept)) != KVEC_OK) return r;
    if (coverage && (r = kvec__check_coverage(&c, coverage, layer_index, n_tokens)) != KVEC_OK) return r;
    needed = kvec_select_scratch_bytes(&c, 1, n_kv_heads, n_tokens);
    if (needed > 0 && !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if (!kvec__call_add(&m, scores, n_kv_heads * n_tokens, sizeof(float), 0) ||
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1) ||
        (coverage && !kvec__call_add(&m, coverage->kept_before, n_tokens, 1, 1)))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (!kvec__call_add_plan(&m, plan, layer_index, 1, 1)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__select_layer(&c, scores, n_kv_heads, n_tokens, layer_budget, layer_index, coverage,
                       plan, (uint8_t *)scratch);
    return KVEC_OK;
}

/* A plan layer is safe to compact: counts within capacity and the tensor,
   positions strictly ascending inside 0 .. N-1. */
static kvec_result kvec__check_plan_positions(const kvec_plan *plan, int64_t l, int64_t Hk,
                                              int64_t n_tokens) {
    int64_t j, r;
    for (j = 0; j < Hk; j++) {
        const int64_t head = l * plan->n_kv_heads + j, count = plan->kept_count[head];
        const int64_t *pos = plan->kept_positions + head * plan->capacity;
        if (count < 0 || count > plan->capacity || count > n_tokens) return KVEC_ERROR_BAD_PLAN;
        for (r = 0; r < count; r++)
            if (pos[r] < 0 || pos[r] >= n_tokens || (r > 0 && pos[r] <= pos[r - 1]))
                return KVEC_ERROR_BAD_PLAN;
    }
    return KVEC_OK;
}

/* The plan's layer l fits this (already validated) layer and is safe to compact. */
static kvec_result kvec__check_compaction(const kvec_layer *layer, const kvec_plan *plan, int64_t l) {
    kvec_result r = kvec__check_plan(plan, l, layer->keys.n_heads, 0);
    if (r != KVEC_OK) return r;
    return kvec__check_plan_positions(plan, l, layer->keys.n_heads, layer->keys.n_tokens);
}

KVEC_API kvec_result kvec_compact_layer(kvec_layer *layer, const kvec_plan *plan, int64_t layer_index) {
    kvec_result r;
    kvec__call_memory m;
    kvec_cache one;
    if ((r = kvec__validate_layer(NULL, layer, 0)) != KVEC_OK) return r;
    if (layer_index < 0) return KVEC_ERROR_BAD_LAYER_INDEX;
    if ((r = kvec__check_compaction(layer, plan, layer_index)) != KVEC_OK) return r;
    one = kvec__cache_of(layer);
    kvec__call_init(&m, NULL, &one, 1, 1);
    if (!kvec__call_add_plan(&m, plan, layer_index, 1, 0)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__compact_layer(layer, plan, layer_index);
    return KVEC_OK;
}

KVEC_API kvec_result kvec_compact(kvec_cache *cache, const kvec_plan *plan) {
    kvec_result r;
    kvec__call_memory m;
    int64_t l;
    if ((r = kvec_validate_cache(cache)) != KVEC_OK) return r;
    for (l = 0; l < cache->n_layers; l++)
        if ((r = kvec__check_compaction(&cache->layers[l], plan, l)) != KVEC_OK) return r;
    kvec__call_init(&m, NULL, cache, 1, 1);
    m.plans = plan;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    for (l = 0; l < cache->n_layers; l++) kvec__compact_layer(&cache->layers[l], plan, l);
    return KVEC_OK;
}

KVEC_API kvec_result kvec_select(const kvec_config *config, const float *scores,
                                 int64_t n_layers, int64_t n_kv_heads, int64_t n_tokens,
                                 int64_t budget, kvec_plan *plan,
                                 void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__call_memory m;
    int64_t l, capacity, n_scores;
    size_t needed;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!scores || !plan) return KVEC_ERROR_NULL_POINTER;
    if (n_layers <= 0 || n_kv_heads <= 0 || n_tokens <= 0) return KVEC_ERROR_BAD_EXTENT;
    if ((n_scores = kvec__count(kvec__count(n_layers, n_kv_heads), n_tokens)) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec_plan_capacity(&c, budget, n_layers, n_tokens, &capacity)) != KVEC_OK) return r;
    if ((r = kvec__check_plan_descriptor(plan)) != KVEC_OK) return r;
    if (plan->n_layers < n_layers) return KVEC_ERROR_PLAN_TOO_SMALL;
    if ((r = kvec__check_plan(plan, 0, n_kv_heads, capacity)) != KVEC_OK) return r;
    needed = kvec_select_scratch_bytes(&c, n_layers, n_kv_heads, n_tokens);
    if (needed > 0 && !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if (!kvec__call_add(&m, scores, n_scores, sizeof(float), 0) ||
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (!kvec__call_add_plan(&m, plan, 0, n_layers, 1)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (c.budget_mode == KVEC_BUDGET_GLOBAL && budget < n_tokens) {
        kvec__select_pool(&c, scores, n_layers * n_kv_heads, n_tokens, budget, (uint8_t *)scratch,
                          plan->kept_count, plan->kept_positions, plan->capacity);
        return KVEC_OK;
    }
    for (l = 0; l < n_layers; l++)
        kvec__select_layer(&c, scores + l * n_kv_heads * n_tokens, n_kv_heads, n_tokens,
                           kvec__layer_budget(&c, budget, l, n_layers, n_tokens), l, NULL, plan,
                           (uint8_t *)scratch);
    return KVEC_OK;
}

/* Counts of layer l, checked: within 0 .. capacity. */
static kvec_result kvec__plan_counts(const kvec_plan *plan, int64_t l, const int64_t **counts) {
    kvec_result r;
    int64_t j;
    if ((r = kvec__check_plan_descriptor(plan)) != KVEC_OK) return r;
    if (l < 0 || l >= plan->n_layers) return KVEC_ERROR_BAD_LAYER_INDEX;
    *counts = plan->kept_count + l * plan->n_kv_heads;
    for (j = 0; j < plan->n_kv_heads; j++)
        if ((*counts)[j] < 0 || (*counts)[j] > plan->capacity) return KVEC_ERROR_BAD_PLAN;
    return KVEC_OK;
}

/* The plan's counts of layer l (read) and an output the call writes. */
static kvec_result kvec__check_plan_output(const kvec_plan *plan, int64_t l, const void *out,
                                           int64_t count, int64_t elem) {
    kvec__call_memory m;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if (!kvec__call_add(&m, out, count, elem, 1) ||
        !kvec__call_add(&m, plan->kept_count + l * plan->n_kv_heads, plan->n_kv_heads, sizeof(int64_t), 0))
        return KVEC_ERROR_SIZE_OVERFLOW;
    return kvec__check_overlaps(&m);
}

KVEC_API kvec_result kvec_plan_offsets(const kvec_plan *plan, int64_t layer_index,
                                       int32_t *cu_seqlens, int64_t *max_count) {
    const int64_t *counts;
    int64_t j, total = 0, longest = 0;
    kvec_result r;
    if (!cu_seqlens) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__plan_counts(plan, layer_index, &counts)) != KVEC_OK) return r;
    for (j = 0; j < plan->n_kv_heads; j++) {
        if (counts[j] > INT32_MAX - total) return KVEC_ERROR_SIZE_OVERFLOW; /* offsets are int32 */
        total += counts[j];
        longest = counts[j] > longest ? counts[j] : longest;
    }
    if ((r = kvec__check_plan_output(plan, layer_index, cu_seqlens, plan->n_kv_heads + 1, sizeof(int32_t)))
        != KVEC_OK)
        return r;
    if (max_count && (r = kvec__check_plan_output(plan, layer_index, max_count, 1, sizeof(int64_t))) != KVEC_OK)
        return r;
    cu_seqlens[0] = 0;
    for (j = 0; j < plan->n_kv_heads; j++) cu_seqlens[j + 1] = cu_seqlens[j] + (int32_t)counts[j];
    if (max_count) *max_count = longest;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_plan_mask(const kvec_plan *plan, int64_t layer_index, int64_t n_rows,
                                    float *mask) {
    const int64_t *counts;
    int64_t j, i;
    kvec_result r;
    if (!mask) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__plan_counts(plan, layer_index, &counts)) != KVEC_OK) return r;
    if (n_rows < 0) return KVEC_ERROR_BAD_EXTENT;
    for (j = 0; j < plan->n_kv_heads; j++)
        if (counts[j] > n_rows) return KVEC_ERROR_BAD_EXTENT; /* rows below the longest head */
    if (kvec__count(plan->n_kv_heads, n_rows) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_plan_output(plan, layer_index, mask, plan->n_kv_heads * n_rows, sizeof(float)))
        != KVEC_OK)
        return r;
    for (j = 0; j < plan->n_kv_heads; j++)
        for (i = 0; i < n_rows; i++) mask[j * n_rows + i] = i < counts[j] ? 0.0f : -INFINITY;
    return KVEC_OK;
}

/* packed may be written from source: disjoint, or exactly in place over a
   [head][token][dim] source (then *in_place = 1). */
static kvec_result kvec__check_packed(const kvec_tensor *source, const kvec_tensor *packed,
                                      int64_t total, int *in_place) {
    kvec_result r;
    kvec__region a, b;
    int64_t head_bytes;
    if ((r = kvec_validate_tensor(packed)) != KVEC_OK) return r;
    if (packed->dtype != source->dtype || packed->head_dim != source->head_dim ||
        packed->n_heads != 1 || packed->n_tokens < total)
        return KVEC_ERROR_SHAPE_MISMATCH;
    *in_place = packed->data == source->data && packed->stride_token == source->stride_token &&
                packed->stride_dim == source->stride_dim &&
                !kvec__mul_overflows(source->n_tokens, source->stride_token, &head_bytes) &&
                source->stride_head == head_bytes;
    a = kvec__tensor_region(source, 1);
    b = kvec__tensor_region(packed, 1);
    return *in_place || !kvec__regions_collide(&a, &b) ? KVEC_OK : KVEC_ERROR_OVERLAP;
}

/* Head by head, front to back; in place each destination row is at or
   before its source and after every row already read (see the header). */
static void kvec__pack(const kvec_tensor *source, const kvec_tensor *packed, const kvec_plan *plan,
                       int64_t l) {
    const int64_t elem = kvec__dtype_size(source->dtype);
    int64_t j, r, d, row = 0;
    for (j = 0; j < source->n_heads; j++) {
        const int64_t head = l * plan->n_kv_heads + j;
        const int64_t *pos = plan->kept_positions + head * plan->capacity;
        for (r = 0; r < plan->kept_count[head]; r++, row++) {
            char *to = kvec__row(packed, row, 0);
            const char *from = kvec__row(source, pos[r], j);
            if (to == from) continue;
            if (source->stride_dim == elem && packed->stride_dim == elem)
                memcpy(to, from, (size_t)(source->head_dim * elem));
            else
                for (d = 0; d < source->head_dim; d++)
                    memcpy(to + d * packed->stride_dim, from + d * source->stride_dim, (size_t)elem);
        }
    }
}

KVEC_API kvec_result kvec_compact_packed(kvec_layer *layer, const kvec_plan *plan,
                                         int64_t layer_index, kvec_tensor *packed_keys,
                                         kvec_tensor *packed_values) {
    kvec_result r;
    kvec__call_memory m;
    kvec_cache one;
    int64_t j, total = 0;
    int keys_in_place, values_in_place;
    if (!packed_keys || !packed_values) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__validate_layer(NULL, layer, 0)) != KVEC_OK) return r;
    if (layer_index < 0) return KVEC_ERROR_BAD_LAYER_INDEX;
    if ((r = kvec__check_compaction(layer, plan, layer_index)) != KVEC_OK) return r;
    for (j = 0; j < layer->keys.n_heads; j++) total += plan->kept_count[layer_index * plan->n_kv_heads + j];
    if ((r = kvec__check_packed(&layer->keys, packed_keys, total, &keys_in_place)) != KVEC_OK) return r;
    if ((r = kvec__check_packed(&layer->values, packed_values, total, &values_in_place)) != KVEC_OK) return r;
    /* Everything else: K, V (written where packed in place), the outputs
       that are not in place, the plan. */
    one = kvec__cache_of(layer);
    kvec__call_init(&m, NULL, &one, 1, 1);
    if (!keys_in_place) m.extra[m.n_extra++] = kvec__tensor_region(packed_keys, 1);
    if (!values_in_place) m.extra[m.n_extra++] = kvec__tensor_region(packed_values, 1);
    if (!kvec__call_add_plan(&m, plan, layer_index, 1, 0)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__pack(&layer->keys, packed_keys, plan, layer_index);
    kvec__pack(&layer->values, packed_values, plan, layer_index);
    return KVEC_OK;
}

/* Everything kvec_evict_layer checks before it may write: layer, budget,
   plan (when given), coverage. */
static kvec_result kvec__prepare_layer(const kvec_config *c, const kvec_layer *layer, int64_t l,
                                       int64_t n_layers, int64_t budget, const kvec_coverage *coverage,
                                       const kvec_plan *plan, int check_coverage,
                                       int64_t *layer_budget) {
    kvec_result r;
    int64_t n;
    if (!layer) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__validate_layer(c, layer, 0)) != KVEC_OK) return r;
    if (n_layers <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (l < 0 || l >= n_layers) return KVEC_ERROR_BAD_LAYER_INDEX;
    if (budget < c->window) return KVEC_ERROR_BUDGET_BELOW_WINDOW;
    n = layer->keys.n_tokens;
    *layer_budget = kvec__layer_budget(c, budget, l, n_layers, n);
    if (n > *layer_budget && (r = kvec__validate_layer(c, layer, 1)) != KVEC_OK) return r;
    if (plan && (r = kvec__check_plan(plan, l, layer->keys.n_heads,
                                      kvec__head_capacity(c, *layer_budget, n))) != KVEC_OK)
        return r;
    return check_coverage ? kvec__check_coverage(c, coverage, l, n) : KVEC_OK;
}

KVEC_API kvec_result kvec_evict_layer(const kvec_config *config, kvec_layer *layer,
                                      int64_t layer_index, int64_t n_layers, int64_t budget,
                                      kvec_coverage *coverage, kvec_plan *plan,
                                      void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__layer_work w;
    kvec__dims d;
    kvec__call_memory m;
    kvec_cache one;
    int64_t layer_budget;
    size_t needed;
    int scoring;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (c.budget_mode == KVEC_BUDGET_GLOBAL) return KVEC_ERROR_BAD_CONFIG; /* needs every layer first */
    if (!plan) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__prepare_layer(&c, layer, layer_index, n_layers, budget, coverage, plan, 1,
                                 &layer_budget)) != KVEC_OK)
        return r;
    d = kvec__layer_dims(&c, layer);
    if ((r = kvec__layer_scratch(scratch, scratch_bytes, &d, &needed)) != KVEC_OK) return r;
    one = kvec__cache_of(layer);
    kvec__call_init(&m, &c, &one, 1, 1);
    if (!kvec__call_add(&m, scratch, (int64_t)needed, 1, 1) ||
        (coverage && !kvec__call_add(&m, coverage->kept_before, d.n_tokens, 1, 1)) ||
        !kvec__call_add_plan(&m, plan, layer_index, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    kvec__layer_work_in(scratch, scratch_bytes, &d, &w);
    scoring = d.n_tokens > layer_budget;
    if ((r = kvec__check_finite(&c, layer, scoring, &w)) != KVEC_OK) return r;
    if (scoring) kvec__run_scoring(&c, layer, layer_index, layer_budget, coverage, w.scores, &w);
    kvec__select_layer(&c, w.scores, d.n_kv_heads, d.n_tokens, layer_budget, layer_index,
                       coverage, plan, w.flags);
    kvec__compact_layer(layer, plan, layer_index);
    return KVEC_OK;
}

/* Plans one sequence and compacts it: into the caller's plan (compacted by
   the caller once every sequence is planned), or without one, layer by
   layer through the scratch's one-layer plan. Nothing here can fail. */
static void kvec__evict_sequence(const kvec_config *c, kvec_cache *cache, int64_t budget, kvec_plan *plan,
                                 void *scratch, size_t scratch_bytes) {
    const int64_t n = cache->layers[0].keys.n_tokens, L = cache->n_layers, Hk = cache->layers[0].keys.n_heads;
    /* Under a global budget every layer is scored first, then one pool selects. */
    const int global = c->budget_mode == KVEC_BUDGET_GLOBAL && budget < n;
    kvec__sequence_work w;
    kvec_coverage coverage;
    int64_t l, layer_budget;
    memset(&w, 0, sizeof w); /* carved at every layer; L >= 1 */
    for (l = 0; l < L; l++) {
        kvec_layer *layer = &cache->layers[l];
        kvec__dims d = kvec__sequence_dims(c, cache, l);
        kvec__bump b;
        kvec__bump_init(&b, scratch, scratch_bytes);
        kvec__carve_sequence_layer(&b, &d, &w);
        if (l == 0) kvec_coverage_init(&coverage, w.kept_before, (size_t)n, n);
        layer_budget = kvec__layer_budget(c, budget, l, L, n);
        if (global) {
            kvec__run_scoring(c, layer, l, budget, NULL, w.model_scores + l * Hk * n, &w.layer);
            continue;
        }
        if (n > layer_budget) kvec__run_scoring(c, layer, l, layer_budget, &coverage, w.layer.scores, &w.layer);
        kvec__select_layer(c, w.layer.scores, Hk, n, layer_budget, plan ? l : 0, &coverage,
                           plan ? plan : &w.own_plan, w.layer.flags);
        if (!plan) kvec__compact_layer(layer, &w.own_plan, 0);
    }
    if (!global) return;
    kvec__pool_mark(c, w.model_scores, L * Hk, n, budget, w.model_flags);
    for (l = 0; l < L; l++) {
        kvec_plan *into = plan ? plan : &w.own_plan;
        const int64_t first = plan ? l * Hk : 0;
        kvec__pool_gather(c, w.model_flags + l * Hk * n, Hk, n, into->kept_count + first,
                          into->kept_positions + first * into->capacity, into->capacity);
        if (!plan) kvec__compact_layer(&cache->layers[l], &w.own_plan, 0);
    }
}

KVEC_API kvec_result kvec_evict_batch(const kvec_config *config, kvec_cache *caches,
                                      int64_t n_caches, int64_t budget, kvec_plan *plans,
                                      void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__call_memory m;
    size_t needed;
    int64_t s, l, layer_budget;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!caches) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec_scratch_bytes(&c, caches, n_caches, &needed)) != KVEC_OK) return r;
    /* Check everything first; after these checks nothing can fail, so an
       error never leaves some layers compacted and others not. */
    for (s = 0; s < n_caches; s++) {
        if (plans && (r = kvec__check_plan_descriptor(&plans[s])) != KVEC_OK) return r;
        if (plans && plans[s].n_layers < caches[s].n_layers) return KVEC_ERROR_PLAN_TOO_SMALL;
        for (l = 0; l < caches[s].n_layers; l++)
            if ((r = kvec__prepare_layer(&c, &caches[s].layers[l], l, caches[s].n_layers, budget,
                                         NULL, plans ? &plans[s] : NULL, 0, &layer_budget)) != KVEC_OK)
                return r;
    }
    if (!scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__call_init(&m, &c, caches, n_caches, 1);
    m.plans = plans;
    m.plans_written = 1;
    if (!kvec__call_add(&m, scratch, (int64_t)needed, 1, 1)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    for (s = 0; s < n_caches; s++) {
        for (l = 0; l < caches[s].n_layers; l++) {
            const kvec_layer *layer = &caches[s].layers[l];
            kvec__dims d = kvec__layer_dims(&c, layer);
            kvec__layer_work w;
            kvec__layer_work_in(scratch, scratch_bytes, &d, &w);
            layer_budget = kvec__layer_budget(&c, budget, l, caches[s].n_layers, d.n_tokens);
            if ((r = kvec__check_finite(&c, layer, d.n_tokens > layer_budget, &w)) != KVEC_OK) return r;
        }
    }
    for (s = 0; s < n_caches; s++)
        kvec__evict_sequence(&c, &caches[s], budget, plans ? &plans[s] : NULL, scratch, scratch_bytes);
    if (plans)
        for (s = 0; s < n_caches; s++)
            for (l = 0; l < caches[s].n_layers; l++) kvec__compact_layer(&caches[s].layers[l], &plans[s], l);
    return KVEC_OK;
}

KVEC_API kvec_result kvec_evict_ex(const kvec_config *config, kvec_cache *cache, int64_t budget,
                                   kvec_plan *plan, void *scratch, size_t scratch_bytes) {
    return kvec_evict_batch(config, cache, 1, budget, plan, scratch, scratch_bytes);
}

KVEC_API kvec_result kvec_evict(kvec_cache *cache, int64_t budget) {
    kvec_result r;
    size_t scratch_bytes;
    void *scratch;
    if ((r = kvec_scratch_bytes(NULL, cache, 1, &scratch_bytes)) != KVEC_OK) return r;
    scratch = KVEC_MALLOC(scratch_bytes);
    if (!scratch) return KVEC_ERROR_OUT_OF_MEMORY;
    r = kvec_evict_ex(NULL, cache, budget, NULL, scratch, scratch_bytes);
    KVEC_FREE(scratch);
    return r;
}

/* >>reconstruction */

/* The sizes of one reconstruction call. */
typedef struct kvec__recon_dims {
    int64_t n_kv_heads, group, head_dim;
    int64_t sinks, chunk, pass_rows; /* S, C = end - begin, R */
} kvec__recon_dims;

/* Work of one KV head. Its keys in softmax order, as fp32 rows: the sinks,
   the chunk, the pass (the context's keys are read once, whatever their
   layout), then, per chunk of query rows, the chunk keys' exp(logit - m)
   kept until the rows' normalisers are known, as in window attention. */
typedef struct kvec__recon_work {
    float   *keys;      /* [S + C + R, padded to 4 per part][D] */
    float   *queries_t; /* [D][ROW_CHUNK] scaled query rows of one chunk, transposed */
    float   *logits;    /* [C4][ROW_CHUNK] the chunk keys' exp(logit - running max) */
    float   *tile_ref;  /* [C/TILE + 1][ROW_CHUNK] running max per tile of the chunk */
    float   *other;     /* [TILE][ROW_CHUNK] logits of a sink or pass tile (normaliser only) */
    float   *row_max, *row_sum, *row_scale, *tile_max; /* [ROW_CHUNK] */
    int32_t *reach;     /* [ROW_CHUNK] last pass key a row sees in the current tile */
    float   *row;       /* [D] */
    float   *best;      /* [C] max probability so far */
} kvec__recon_work;

static int64_t kvec__pad4(int64_t n) { return n < 0 || n > INT64_MAX - 3 ? -1 : (n + 3) / 4 * 4; }

static void kvec__carve_recon(kvec__bump *b, const kvec__recon_dims *d, kvec__recon_work *heads) {
    const int64_t D = d->head_dim, RC = KVEC__ROW_CHUNK, C = d->chunk;
    int64_t rows = kvec__pad4(d->sinks), j;
    if (rows >= 0 && kvec__add_overflows(rows, kvec__pad4(C), &rows)) rows = -1;
    if (rows >= 0 && kvec__add_overflows(rows, kvec__pad4(d->pass_rows), &rows)) rows = -1;
    for (j = 0; j < d->n_kv_heads; j++) {
        kvec__recon_work w;
        w.keys      = (float *)kvec__take(b, kvec__count(rows, D), sizeof(float));
        w.queries_t = (float *)kvec__take(b, kvec__count(D, RC), sizeof(float));
        w.logits    = (float *)kvec__take(b, kvec__count(kvec__pad4(C), RC), sizeof(float));
        w.tile_ref  = (float *)kvec__take(b, kvec__count(C / KVEC__TILE + 1, RC), sizeof(float));
        w.other     = (float *)kvec__take(b, KVEC__TILE * RC, sizeof(float));
        w.row_max   = (float *)kvec__take(b, RC, sizeof(float));
        w.row_sum   = (float *)kvec__take(b, RC, sizeof(float));
        w.row_scale = (float *)kvec__take(b, RC, sizeof(float));
        w.tile_max  = (float *)kvec__take(b, RC, sizeof(float));
        w.reach     = (int32_t *)kvec__take(b, RC, sizeof(int32_t));
        w.row       = (float *)kvec__take(b, D, sizeof(float));
        w.best      = (float *)kvec__take(b, C, sizeof(float));
        if (heads) heads[j] = w;
    }
}

/* Bytes for the work of every KV head, or 0 when that size overflows. */
static size_t kvec__recon_bytes(const kvec__recon_dims *d) {
    kvec__bump b;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, d->n_kv_heads, sizeof(kvec__recon_work));
    kvec__carve_recon(&b, d, NULL);
    return b.overflow ? 0 : b.used;
}

/* Checks the call's descriptors and fills the dims. */
static kvec_result kvec__check_recon(const kvec_config *c, const kvec_layer *layer,
                                     const kvec_reconstruction *pass, kvec__recon_dims *d) {
    const kvec_tensor *k, *pq, *pk;
    kvec_result r;
    if (!layer || !pass) return KVEC_ERROR_NULL_POINTER;
    k = &layer->keys; pq = &pass->queries; pk = &pass->keys;
    if ((r = kvec_validate_tensor(k)) != KVEC_OK) return r;
    if (!pq->data) return KVEC_ERROR_MISSING_QUERIES;
    if ((r = kvec_validate_tensor(pq)) != KVEC_OK) return r;
    if ((r = kvec_validate_tensor(pk)) != KVEC_OK) return r;
    if (pq->head_dim != k->head_dim || pk->head_dim != k->head_dim || pk->n_heads != k->n_heads ||
        pq->n_heads % k->n_heads != 0 || pq->n_tokens != pk->n_tokens)
        return KVEC_ERROR_SHAPE_MISMATCH;
    if (pass->chunk_begin < 0 || pass->chunk_end <= pass->chunk_begin || pass->chunk_end > k->n_tokens)
        return KVEC_ERROR_BAD_EXTENT;
    /* the pass repeats its chunk: it cannot be shorter */
    if (pass->chunk_end - pass->chunk_begin > pq->n_tokens) return KVEC_ERROR_SHAPE_MISMATCH;
    if (pq->n_tokens > INT32_MAX || pass->chunk_end - pass->chunk_begin > INT32_MAX)
        return KVEC_ERROR_SIZE_OVERFLOW; /* reach is int32 */
    d->n_kv_heads = k->n_heads;
    d->group = pq->n_heads / k->n_heads;
    d->head_dim = k->head_dim;
    d->sinks = c->sink_tokens < pass->chunk_begin ? c->sink_tokens : pass->chunk_begin;
    d->chunk = pass->chunk_end - pass->chunk_begin;
    d->pass_rows = pq->n_tokens;
    return KVEC_OK;
}

/* Rows [first, first + count) of one head of a view, as fp32 rows from out;
   rows up to the next multiple of 4 are zero. Returns the padded count. */
static int64_t kvec__load_rows(const kvec_tensor *t, int64_t head, int64_t first, int64_t count, float *out) {
    const int64_t D = t->head_dim, padded = kvec__pad4(count);
    int64_t c;
    for (c = 0; c < count; c++) {
        kvec__prefetch_row(t, first + c + 8, head);
        kvec__load_row(t, first + c, head, out + c * D);
    }
    for (; c < padded; c++) memset(out + c * D, 0, (size_t)D * sizeof(float));
    return padded;
}

/* One KV head: best[i] = max over the pass rows and the group's query
   heads of A[h, r, i], for the C chunk keys. */
static void kvec__recon_head(const kvec_layer *layer, const kvec_reconstruction *pass,
                             const kvec__recon_dims *dm, int64_t kv_head, kvec__recon_work *w) {
    const int64_t D = dm->head_dim, g = dm->group, C = dm->chunk, R = dm->pass_rows;
    const int64_t RC = KVEC__ROW_CHUNK, total = R * g;
    const float scale = 1.0f / sqrtf((float)D);
    const float *sink_keys = w->keys, *chunk_keys, *pass_keys;
    int64_t x0, i, S4, C4;
    S4 = kvec__load_rows(&layer->keys, kv_head, 0, dm->sinks, w->keys);
    chunk_keys = w->keys + S4 * D;
    C4 = kvec__load_rows(&layer->keys, kv_head, pass->chunk_begin, C, w->keys + S4 * D);
    pass_keys = chunk_keys + C4 * D;
    kvec__load_rows(&pass->keys, kv_head, 0, R, w->keys + (S4 + C4) * D);
    for (i = 0; i < C; i++) w->best[i] = 0.0f;
    for (x0 = 0; x0 < total; x0 += RC) {
        const int64_t chunk = total - x0 < RC ? total - x0 : RC;
        const int64_t padded_rows = (chunk + 2 * KVEC__LANES - 1) / (2 * KVEC__LANES) * (2 * KVEC__LANES);
        const int64_t last_row = (x0 + chunk - 1) / g; /* the last pass row of this chunk */
        int64_t x, d, c, t0;
        for (x = 0; x < padded_rows; x++) { /* scaled, transposed; padding rows are zero */
            if (x < chunk) kvec__load_row(&pass->queries, (x0 + x) / g, kv_head * g + (x0 + x) % g, w->row);
            for (d = 0; d < D; d++) w->queries_t[d * RC + x] = x < chunk ? w->row[d] * scale : 0.0f;
            w->row_max[x] = -INFINITY;
            w->row_sum[x] = 0.0f;
        }
        /* The sinks and the chunk: every row sees them all. */
        for (t0 = 0; t0 < dm->sinks; t0 += KVEC__TILE) {
            const int64_t count = dm->sinks - t0 < KVEC__TILE ? dm->sinks - t0 : KVEC__TILE;
            kvec__tile_logits(sink_keys + t0 * D, kvec__pad4(count), w->queries_t, padded_rows, D, w->other);
            kvec__softmax_tile(w->other, count, padded_rows, NULL, w->row_max, w->row_sum, w->tile_max, NULL);
        }
        for (t0 = 0; t0 < C; t0 += KVEC__TILE) {
            const int64_t count = C - t0 < KVEC__TILE ? C - t0 : KVEC__TILE;
            float *logits = w->logits + t0 * RC;
            kvec__tile_logits(chunk_keys + t0 * D, kvec__pad4(count), w->queries_t, padded_rows, D, logits);
            kvec__softmax_tile(logits, count, padded_rows, NULL, w->row_max, w->row_sum, w->tile_max,
                               w->tile_ref + t0 / KVEC__TILE * RC);
        }
        /* The pass's own keys, causally: row r sees pass keys 0 .. r. */
        for (t0 = 0; t0 <= last_row; t0 += KVEC__TILE) {
            const int64_t count = last_row + 1 - t0 < KVEC__TILE ? last_row + 1 - t0 : KVEC__TILE;
            for (x = 0; x < padded_rows; x++) w->reach[x] = (int32_t)((x0 + x) / g - t0);
            kvec__tile_logits(pass_keys + t0 * D, kvec__pad4(count), w->queries_t, padded_rows, D, w->other);
            kvec__softmax_tile(w->other, count, padded_rows, w->reach, w->row_max, w->row_sum, w->tile_max, NULL);
        }
        /* Normalised probabilities of the chunk keys; their max over rows. */
        for (t0 = 0; t0 < C; t0 += KVEC__TILE) {
            const int64_t count = C - t0 < KVEC__TILE ? C - t0 : KVEC__TILE;
            const float *ref = w->tile_ref + t0 / KVEC__TILE * RC;
            for (x = 0; x < chunk; x++)
                w->row_scale[x] = kvec__exp(ref[x] - w->row_max[x]) / w->row_sum[x];
            for (c = 0; c < count; c++) {
                const float *e = w->logits + (t0 + c) * RC;
                float best = w->best[t0 + c];
                for (x = 0; x < chunk; x++) {
                    const float p = e[x] * w->row_scale[x];
                    best = p > best ? p : best;
                }
                w->best[t0 + c] = best;
            }
        }
    }
}

static void kvec__recon_work_in(void *scratch, size_t scratch_bytes, const kvec__recon_dims *d,
                                kvec__recon_work **heads) {
    kvec__bump b;
    kvec__bump_init(&b, scratch, scratch_bytes);
    *heads = (kvec__recon_work *)kvec__take(&b, d->n_kv_heads, sizeof(kvec__recon_work));
    kvec__carve_recon(&b, d, *heads);
}

KVEC_API kvec_result kvec_reconstruction_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                       const kvec_reconstruction *pass, size_t *bytes) {
    kvec_config c;
    kvec__recon_dims d;
    kvec_result r;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kvec__check_recon(&c, layer, pass, &d)) != KVEC_OK) return r;
    if ((*bytes = kvec__recon_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    return KVEC_OK;
}

/* Rows [first, first + count) of a view, every head: all finite? */
static int kvec__rows_finite(const kvec_tensor *t, int64_t first, int64_t count) {
    int64_t i, h;
    for (i = first; i < first + count; i++)
        for (h = 0; h < t->n_heads; h++)
            if (kvec__row_has_non_finite(t, i, h)) return 0;
    return 1;
}

KVEC_API kvec_result kvec_reconstruction_scores(const kvec_config *config, const kvec_layer *layer,
                                                const kvec_reconstruction *pass, float *scores,
                                                void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec__recon_dims d;
    kvec__call_memory m;
    kvec__recon_work *heads;
    kvec_result r;
    size_t needed;
    int64_t j, i, N;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__check_recon(&c, layer, pass, &d)) != KVEC_OK) return r;
    if ((needed = kvec__recon_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    N = layer->keys.n_tokens;
    /* Written: scores and scratch. Read: the context's keys and the pass. */
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&layer->keys, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&pass->queries, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&pass->keys, 0);
    if (!kvec__call_add(&m, scores, d.n_kv_heads * N, sizeof(float), 1) || /* within K's extents */
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (!kvec__rows_finite(&layer->keys, 0, d.sinks) ||
        !kvec__rows_finite(&layer->keys, pass->chunk_begin, d.chunk) ||
        !kvec__rows_finite(&pass->queries, 0, d.pass_rows) || !kvec__rows_finite(&pass->keys, 0, d.pass_rows))
        return KVEC_ERROR_NON_FINITE;
    kvec__recon_work_in(scratch, scratch_bytes, &d, &heads);
    KVEC__PARALLEL_FOR
    for (j = 0; j < d.n_kv_heads; j++) kvec__recon_head(layer, pass, &d, j, &heads[j]);
    for (j = 0; j < d.n_kv_heads; j++)
        for (i = 0; i < d.chunk; i++) scores[j * N + pass->chunk_begin + i] = heads[j].best[i];
    return KVEC_OK;
}

/* >>expected attention */

/* The rope's dims resolved against head_dim D: 0 when the rope is invalid. */
static int64_t kvec__rope_dims(const kvec_rope *rope, int64_t D) {
    const int64_t dims = rope->dims == 0 ? D : rope->dims;
    if (!(rope->theta > 1.0) || rope->theta > 1e300) return 0; /* NaN fails too */
    if (rope->interleaved != 0 && rope->interleaved != 1) return 0;
    if (dims < 2 || dims > D || dims % 2 != 0) return 0;
    return dims;
}

/* Dimensions a and b of rotation pair i. */
static void kvec__rope_pair(const kvec_rope *rope, int64_t dims, int64_t i, int64_t *a, int64_t *b) {
    if (rope->interleaved) { *a = 2 * i; *b = 2 * i + 1; }
    else                   { *a = i;     *b = i + dims / 2; }
}

/* Frequency of pair i: theta^(-2i/dims), in double. */
static double kvec__rope_frequency(const kvec_rope *rope, int64_t dims, int64_t i) {
    return pow(rope->theta, -2.0 * (double)i / (double)dims);
}

static kvec_result kvec__check_stats(const kvec_query_stats *s) {
    if (!s || !s->sum || !s->outer || !s->work || !s->load) return KVEC_ERROR_NULL_POINTER;
    if (s->n_heads <= 0 || s->head_dim <= 0 || s->count < 0) return KVEC_ERROR_BAD_EXTENT;
    if (kvec__count(kvec__count(s->n_heads, s->head_dim), s->head_dim) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    return KVEC_OK;
}

/* The stats' arrays in memory (or measured with memory NULL). */
static void kvec__carve_stats(kvec__bump *b, int64_t H, int64_t D, kvec_query_stats *s) {
    s->sum   = (double *)kvec__take(b, kvec__count(H, D), sizeof(double));
    s->outer = (double *)kvec__take(b, kvec__count(kvec__count(H, D), D), sizeof(double));
    s->work  = (double *)kvec__take(b, kvec__count(H, D), sizeof(double));
    s->load  = (float *)kvec__take(b, kvec__count(H, D), sizeof(float));
}

KVEC_API kvec_result kvec_query_stats_bytes(int64_t n_heads, int64_t head_dim, size_t *bytes) {
    kvec__bump b;
    kvec_query_stats arrays;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if (n_heads <= 0 || head_dim <= 0) return KVEC_ERROR_BAD_EXTENT;
    kvec__bump_init(&b, NULL, 0);
    kvec__carve_stats(&b, n_heads, head_dim, &arrays);
    if (b.overflow || kvec__count(kvec__count(n_heads, head_dim), head_dim) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    *bytes = b.used;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_query_stats_init(kvec_query_stats *stats, void *memory, size_t memory_bytes,
                                           int64_t n_heads, int64_t head_dim) {
    size_t needed;
    kvec_result r;
    kvec__bump b;
    if (!stats || !memory) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec_query_stats_bytes(n_heads, head_dim, &needed)) != KVEC_OK) return r;
    if (memory_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__bump_init(&b, memory, memory_bytes);
    kvec__carve_stats(&b, n_heads, head_dim, stats);
    memset(stats->sum, 0, (size_t)(n_heads * head_dim) * sizeof(double));
    memset(stats->outer, 0, (size_t)(n_heads * head_dim * head_dim) * sizeof(double));
    stats->n_heads = n_heads;
    stats->head_dim = head_dim;
    stats->count = 0;
    return KVEC_OK;
}

/* The regions of a stats' arrays; `written` for the sums. */
static int kvec__stats_regions(kvec__call_memory *m, const kvec_query_stats *s, int sums_written, int work) {
    const int64_t HD = s->n_heads * s->head_dim;
    return kvec__call_add(m, s->sum, HD, sizeof(double), sums_written) &&
           kvec__call_add(m, s->outer, HD * s->head_dim, sizeof(double), sums_written) &&
           (!work || (kvec__call_add(m, s->work, HD, sizeof(double), 1) &&
                      kvec__call_add(m, s->load, HD, sizeof(float), 1)));
}

KVEC_API kvec_result kvec_query_stats_add(kvec_query_stats *stats, const kvec_tensor *queries,
                                          int64_t first_position, const kvec_rope *rope) {
    kvec__call_memory m;
    kvec_result r;
    int64_t H, D, T, dims, count, last, h;
    if (!queries || !rope) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__check_stats(stats)) != KVEC_OK) return r;
    if ((r = kvec_validate_tensor(queries)) != KVEC_OK) return r;
    H = stats->n_heads; D = stats->head_dim; T = queries->n_tokens;
    if (queries->n_heads != H || queries->head_dim != D) return KVEC_ERROR_SHAPE_MISMATCH;
    if (!(dims = kvec__rope_dims(rope, D))) return KVEC_ERROR_BAD_CONFIG;
    if (first_position < 0) return KVEC_ERROR_BAD_EXTENT;
    if (kvec__add_overflows(first_position, T, &last) || kvec__add_overflows(stats->count, T, &count))
        return KVEC_ERROR_SIZE_OVERFLOW;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(queries, 0);
    if (!kvec__stats_regions(&m, stats, 1, 1)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (!kvec__rows_finite(queries, 0, T)) return KVEC_ERROR_NON_FINITE;
    KVEC__PARALLEL_FOR
    for (h = 0; h < H; h++) {
        double *u = stats->work + h * D, *sum = stats->sum + h * D, *outer = stats->outer + h * D * D;
        float *row = stats->load + h * D;
        int64_t t, i, d, e;
        for (t = 0; t < T; t++) {
            const double position = (double)(first_position + t);
            kvec__load_row(queries, t, h, row);
            for (d = 0; d < D; d++) u[d] = row[d];
            for (i = 0; i < dims / 2; i++) { /* undo the rotation by angle position * w_i */
                const double angle = position * kvec__rope_frequency(rope, dims, i);
                const double c = cos(angle), s = sin(angle);
                int64_t a, b;
                kvec__rope_pair(rope, dims, i, &a, &b);
                u[a] = c * row[a] + s * row[b];
                u[b] = c * row[b] - s * row[a];
            }
            for (d = 0; d < D; d++) {
                const double ud = u[d];
                double *out = outer + d * D;
                sum[d] += ud;
                for (e = d; e < D; e++) out[e] += ud * u[e];
            }
        }
    }
    stats->count = count;
    return KVEC_OK;
}

typedef struct kvec__expected_dims {
    int64_t n_tokens, n_kv_heads, group, head_dim, value_dim, rope_dims, sinks, n_future;
} kvec__expected_dims;

typedef struct kvec__expected_work {
    double *mean;     /* [D] */
    double *cov;      /* [D][D] */
    float  *mean_q;   /* [g][D]    Rbar mu / sqrt(D) */
    float  *cov_q;    /* [g][D][D] Rbar Sigma Rbar' / (2D) */
    float  *key;      /* [D] */
    float  *product;  /* [D] */
    float  *value;    /* [Dv] */
    float  *logits;   /* [g][N] */
} kvec__expected_work;

static kvec_result kvec__check_expected(const kvec_config *c, const kvec_layer *layer,
                                        const kvec_expected_attention *ea, kvec__expected_dims *d) {
    const kvec_tensor *k, *v;
    kvec_result r;
    if (!layer || !ea) return KVEC_ERROR_NULL_POINTER;
    k = &layer->keys; v = &layer->values;
    if ((r = kvec_validate_tensor(k)) != KVEC_OK) return r;
    if ((r = kvec_validate_tensor(v)) != KVEC_OK) return r;
    if ((r = kvec__check_stats(ea->stats)) != KVEC_OK) return r;
    if (v->n_tokens != k->n_tokens || v->n_heads != k->n_heads) return KVEC_ERROR_SHAPE_MISMATCH;
    if (ea->stats->head_dim != k->head_dim || ea->stats->n_heads % k->n_heads != 0)
        return KVEC_ERROR_SHAPE_MISMATCH;
    if (ea->stats->count < 1) return KVEC_ERROR_MISSING_QUERIES;
    if (!(d->rope_dims = kvec__rope_dims(&ea->rope, k->head_dim))) return KVEC_ERROR_BAD_CONFIG;
    if (ea->first_position < 0 || ea->n_future < 0) return KVEC_ERROR_BAD_EXTENT;
    d->n_future = ea->n_future == 0 ? 512 : ea->n_future;
    if (ea->first_position > INT64_MAX - d->n_future) return KVEC_ERROR_SIZE_OVERFLOW;
    d->n_tokens = k->n_tokens;
    d->n_kv_heads = k->n_heads;
    d->group = ea->stats->n_heads / k->n_heads;
    d->head_dim = k->head_dim;
    d->value_dim = v->head_dim;
    d->sinks = c->sink_tokens < k->n_tokens ? c->sink_tokens : k->n_tokens;
    return KVEC_OK;
}

/* Rbar's pairs ([dims/2] cosines, then sines) and each KV head's work. */
static void kvec__carve_expected(kvec__bump *b, const kvec__expected_dims *d, double **rotation,
                                 kvec__expected_work *heads) {
    const int64_t D = d->head_dim, g = d->group;
    int64_t j;
    *rotation = (double *)kvec__take(b, d->rope_dims, sizeof(double));
    for (j = 0; j < d->n_kv_heads; j++) {
        kvec__expected_work w;
        w.mean    = (double *)kvec__take(b, D, sizeof(double));
        w.cov     = (double *)kvec__take(b, kvec__count(D, D), sizeof(double));
        w.mean_q  = (float *)kvec__take(b, kvec__count(g, D), sizeof(float));
        w.cov_q   = (float *)kvec__take(b, kvec__count(kvec__count(g, D), D), sizeof(float));
        w.key     = (float *)kvec__take(b, D, sizeof(float));
        w.product = (float *)kvec__take(b, D, sizeof(float));
        w.value   = (float *)kvec__take(b, d->value_dim, sizeof(float));
        w.logits  = (float *)kvec__take(b, kvec__count(g, d->n_tokens), sizeof(float));
        if (heads) heads[j] = w;
    }
}

static size_t kvec__expected_bytes(const kvec__expected_dims *d) {
    kvec__bump b;
    double *rotation;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, d->n_kv_heads, sizeof(kvec__expected_work));
    kvec__carve_expected(&b, d, &rotation, NULL);
    return b.overflow ? 0 : b.used;
}

KVEC_API kvec_result kvec_expected_attention_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                           const kvec_expected_attention *expected, size_t *bytes) {
    kvec_config c;
    kvec__expected_dims d;
    kvec_result r;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kvec__check_expected(&c, layer, expected, &d)) != KVEC_OK) return r;
    if ((*bytes = kvec__expected_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    return KVEC_OK;
}

/* M <- Rbar M (rows) or M Rbar' (columns), Rbar = [[c, -s], [s, c]] on each pair. */
static void kvec__rotate_pairs(double *m, int64_t D, const kvec_rope *rope, int64_t dims,
                               const double *rotation, int columns) {
    int64_t i, x;
    for (i = 0; i < dims / 2; i++) {
        const double c = rotation[i], s = rotation[dims / 2 + i];
        int64_t a, b;
        kvec__rope_pair(rope, dims, i, &a, &b);
        for (x = 0; x < D; x++) {
            double *pa = columns ? m + x * D + a : m + a * D + x;
            double *pb = columns ? m + x * D + b : m + b * D + x;
            const double va = *pa, vb = *pb;
            *pa = c * va - s * vb;
            *pb = s * va + c * vb;
        }
    }
}

/* a.b: fp32 products in KVEC__LANES partial sums of a fixed order, as
   kvec__dot_norm, without the norm. */
static double kvec__dot(const float *a, const float *b, int64_t n) {
    float dot[KVEC__LANES] = { 0 };
    double total = 0.0;
    int64_t d;
    int j;
    for (d = 0; d + KVEC__LANES <= n; d += KVEC__LANES)
        for (j = 0; j < KVEC__LANES; j++) dot[j] += a[d + j] * b[d + j];
    for (j = 0; d < n; d++, j++) dot[j] += a[d] * b[d];
    for (j = 0; j < KVEC__LANES; j++) total += dot[j];
    return total;
}

/* One KV head: the expected attention of its group, times ||v||. */
static void kvec__expected_head(const kvec_layer *layer, const kvec_expected_attention *ea,
                                const kvec__expected_dims *dm, const double *rotation, int64_t j,
                                kvec__expected_work *w, float *scores) {
    const kvec_query_stats *st = ea->stats;
    const int64_t D = dm->head_dim, g = dm->group, N = dm->n_tokens, S = dm->sinks;
    const double inv_count = 1.0 / (double)st->count;
    int64_t x, i, d, e;
    for (x = 0; x < g; x++) { /* mean and covariance of query head h, rotated by Rbar */
        const int64_t h = j * g + x;
        const double *sum = st->sum + h * D, *outer = st->outer + h * D * D;
        for (d = 0; d < D; d++) w->mean[d] = sum[d] * inv_count;
        for (d = 0; d < D; d++)
            for (e = d; e < D; e++)
                w->cov[d * D + e] = w->cov[e * D + d] = outer[d * D + e] * inv_count - w->mean[d] * w->mean[e];
        kvec__rotate_pairs(w->mean, 1, &ea->rope, dm->rope_dims, rotation, 0);
        kvec__rotate_pairs(w->cov, D, &ea->rope, dm->rope_dims, rotation, 0);
        kvec__rotate_pairs(w->cov, D, &ea->rope, dm->rope_dims, rotation, 1);
        for (d = 0; d < D; d++) w->mean_q[x * D + d] = (float)(w->mean[d] / sqrt((double)D));
        for (d = 0; d < D * D; d++) w->cov_q[x * D * D + d] = (float)(w->cov[d] / (2.0 * (double)D));
    }
    for (i = S; i < N; i++) { /* z_h(k_i) for every query head of the group */
        kvec__load_row(&layer->keys, i, j, w->key);
        for (x = 0; x < g; x++) {
            const float *cov = w->cov_q + x * D * D;
            for (d = 0; d < D; d++) w->product[d] = (float)kvec__dot(cov + d * D, w->key, D);
            w->logits[x * N + i] = (float)(kvec__dot(w->mean_q + x * D, w->key, D) + kvec__dot(w->product, w->key, D));
        }
    }
    for (i = 0; i < N; i++) scores[j * N + i] = i < S ? INFINITY : 0.0f;
    for (x = 0; x < g; x++) { /* softmax over positions S .. N-1, averaged over the group */
        const float *z = w->logits + x * N;
        double max = -INFINITY, total = 0.0;
        for (i = S; i < N; i++) max = z[i] > max ? z[i] : max;
        for (i = S; i < N; i++) total += exp((double)z[i] - max);
        for (i = S; i < N; i++) scores[j * N + i] += (float)(exp((double)z[i] - max) / total / (double)g);
    }
    for (i = S; i < N; i++) {
        double norm;
        kvec__load_row(&layer->values, i, j, w->value);
        kvec__dot_norm(w->value, w->value, dm->value_dim, &norm);
        scores[j * N + i] = (float)((double)scores[j * N + i] * norm);
    }
}

/* Every sum of the stats finite (the upper triangle of the outer sums)? */
static int kvec__stats_finite(const kvec_query_stats *s) {
    const int64_t H = s->n_heads, D = s->head_dim;
    int64_t x, d, e;
    for (x = 0; x < H * D; x++)
        if (!isfinite(s->sum[x])) return 0;
    for (x = 0; x < H; x++)
        for (d = 0; d < D; d++)
            for (e = d; e < D; e++)
                if (!isfinite(s->outer[(x * D + d) * D + e])) return 0;
    return 1;
}

KVEC_API kvec_result kvec_expected_attention_scores(const kvec_config *config, const kvec_layer *layer,
                                                    const kvec_expected_attention *expected, float *scores,
                                                    void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec__expected_dims d;
    kvec__call_memory m;
    kvec__expected_work *heads;
    kvec__bump b;
    kvec_result r;
    double *rotation;
    size_t needed;
    int64_t j, i;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__check_expected(&c, layer, expected, &d)) != KVEC_OK) return r;
    if ((needed = kvec__expected_bytes(&d)) == 0) return KVEC_ERROR_SIZE_OVERFLOW;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    /* Written: scores and scratch. Read: keys, values, the stats' sums. */
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&layer->keys, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&layer->values, 0);
    if (!kvec__stats_regions(&m, expected->stats, 0, 0) ||
        !kvec__call_add(&m, scores, d.n_kv_heads * d.n_tokens, sizeof(float), 1) || /* within K's extents */
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (!kvec__rows_finite(&layer->keys, d.sinks, d.n_tokens - d.sinks) ||
        !kvec__rows_finite(&layer->values, d.sinks, d.n_tokens - d.sinks) || !kvec__stats_finite(expected->stats))
        return KVEC_ERROR_NON_FINITE;
    kvec__bump_init(&b, scratch, scratch_bytes);
    heads = (kvec__expected_work *)kvec__take(&b, d.n_kv_heads, sizeof(kvec__expected_work));
    kvec__carve_expected(&b, &d, &rotation, heads);
    for (i = 0; i < d.rope_dims / 2; i++) {
        /* Rbar: the mean rotation over positions P .. P+F-1, in closed form
           (so that a huge F costs no more than a small one): the mean of
           e^(i p w) over them is e^(i w (P + (F-1)/2)) sin(F w / 2) / (F sin(w / 2));
           w is in (0, 1], so sin(w / 2) > 0. */
        const double w = kvec__rope_frequency(&expected->rope, d.rope_dims, i);
        const double F = (double)d.n_future;
        const double centre = w * ((double)expected->first_position + (F - 1.0) / 2.0);
        const double shrink = sin(F * w / 2.0) / (F * sin(w / 2.0));
        rotation[i] = cos(centre) * shrink;
        rotation[d.rope_dims / 2 + i] = sin(centre) * shrink;
    }
    KVEC__PARALLEL_FOR
    for (j = 0; j < d.n_kv_heads; j++) kvec__expected_head(layer, expected, &d, rotation, j, &heads[j], scores);
    return KVEC_OK;
}

/* >>coverage over given scores */

typedef struct kvec__given_work {
    kvec__head_work head;  /* row, dim_acc, kbar: what kvec__uniqueness uses */
    float          *uniqueness; /* [N] */
} kvec__given_work;

static void kvec__carve_given(kvec__bump *b, int64_t Hk, int64_t N, int64_t D, kvec__given_work *heads) {
    int64_t j;
    for (j = 0; j < Hk; j++) {
        kvec__given_work w;
        memset(&w, 0, sizeof w);
        w.head.row     = (float *)kvec__take(b, D, sizeof(float));
        w.head.dim_acc = (double *)kvec__take(b, D, sizeof(double));
        w.head.kbar    = (float *)kvec__take(b, D, sizeof(float));
        w.uniqueness   = (float *)kvec__take(b, N, sizeof(float));
        if (heads) heads[j] = w;
    }
}

static size_t kvec__given_bytes(int64_t Hk, int64_t N, int64_t D) {
    kvec__bump b;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, Hk, sizeof(kvec__given_work));
    kvec__carve_given(&b, Hk, N, D, NULL);
    return b.overflow ? 0 : b.used;
}

KVEC_API kvec_result kvec_coverage_scores_scratch_bytes(const kvec_config *config, const kvec_layer *layer,
                                                        size_t *bytes) {
    kvec_config c;
    kvec_result r;
    if (!bytes || !layer) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if ((r = kvec_validate_tensor(&layer->keys)) != KVEC_OK) return r;
    *bytes = kvec__given_bytes(layer->keys.n_heads, layer->keys.n_tokens, layer->keys.head_dim);
    return *bytes == 0 ? KVEC_ERROR_SIZE_OVERFLOW : KVEC_OK;
}

KVEC_API kvec_result kvec_coverage_scores(const kvec_config *config, const kvec_layer *layer, float *scores,
                                          void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec__call_memory m;
    kvec__given_work *heads;
    kvec__bump b;
    kvec_result r;
    size_t needed;
    int64_t Hk, N, n, j, i;
    if ((r = kvec_coverage_scores_scratch_bytes(config, layer, &needed)) != KVEC_OK) return r;
    if (!scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    kvec__resolve(config, &c); /* checked above */
    Hk = layer->keys.n_heads; N = layer->keys.n_tokens;
    n = N > c.window ? N - c.window : 0;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(&layer->keys, 0);
    if (!kvec__call_add(&m, scores, Hk * N, sizeof(float), 1) || !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    for (j = 0; j < Hk; j++)
        for (i = 0; i < n; i++)
            if (!(scores[j * N + i] >= 0.0f)) return KVEC_ERROR_BAD_SCORES; /* NaN fails too */
    if (!kvec__rows_finite(&layer->keys, 0, N)) return KVEC_ERROR_NON_FINITE; /* every key feeds the mean direction */
    if (n == 0) return KVEC_OK;
    kvec__bump_init(&b, scratch, scratch_bytes);
    heads = (kvec__given_work *)kvec__take(&b, Hk, sizeof(kvec__given_work));
    kvec__carve_given(&b, Hk, N, layer->keys.head_dim, heads);
    KVEC__PARALLEL_FOR
    for (j = 0; j < Hk; j++) {
        kvec__given_work *w = &heads[j];
        float *s = scores + j * N;
        double mean_u, std_u;
        int64_t t;
        kvec__uniqueness(&layer->keys, j, n, 0, &w->head, w->head.kbar, w->uniqueness);
        kvec__moments(w->uniqueness, n, &mean_u, &std_u);
        for (t = 0; t < n; t++) {
            if (isinf(s[t])) continue; /* always kept stays so */
            s[t] = (float)(log(s[t] > 1e-30f ? (double)s[t] : 1e-30) +
                           (double)c.terms.mu * ((w->uniqueness[t] - mean_u) / (std_u + KVEC__Z_EPS)));
        }
    }
    return KVEC_OK;
}

/* >>learned scores */

#define KVEC__LEARNED_BLOCK 32 /* tokens loaded and scored together; bounds the scratch */

/* One block's rows as fp32 ([B][E]) and, for the MLP, its hidden layer ([B][F]). */
static void kvec__carve_learned(kvec__bump *b, const kvec_scorer *s, float **rows, float **hidden) {
    *rows = (float *)kvec__take(b, kvec__count(KVEC__LEARNED_BLOCK, s->n_embd), sizeof(float));
    *hidden = s->kind == KVEC_SCORER_MLP
        ? (float *)kvec__take(b, kvec__count(KVEC__LEARNED_BLOCK, s->n_hidden), sizeof(float)) : NULL;
}

/* Checks a scorer; gives the rows of its first layer's arrays (F for the
   MLP, Hk for the linear map) and the scratch it needs. */
static kvec_result kvec__plan_scorer(const kvec_scorer *s, int64_t *first_rows, size_t *scratch_bytes) {
    kvec__bump b;
    float *rows, *hidden;
    int64_t count;
    if (!s) return KVEC_ERROR_NULL_POINTER;
    if ((s->kind != KVEC_SCORER_LINEAR && s->kind != KVEC_SCORER_MLP) ||
        (s->output != KVEC_SCORER_SCORE && s->output != KVEC_SCORER_LOG_RETENTION))
        return KVEC_ERROR_BAD_CONFIG;
    if (s->n_embd <= 0 || s->n_kv_heads <= 0 || (s->kind == KVEC_SCORER_MLP ? s->n_hidden <= 0 : s->n_hidden != 0))
        return KVEC_ERROR_BAD_EXTENT;
    if (!s->weight || !s->bias || (s->kind == KVEC_SCORER_MLP && (!s->weight2 || !s->bias2)))
        return KVEC_ERROR_NULL_POINTER;
    *first_rows = s->kind == KVEC_SCORER_MLP ? s->n_hidden : s->n_kv_heads;
    if ((count = kvec__count(*first_rows, s->n_embd)) < 0 || kvec__count(count, sizeof(float)) < 0 ||
        (s->kind == KVEC_SCORER_MLP && kvec__count(kvec__count(s->n_kv_heads, s->n_hidden), sizeof(float)) < 0))
        return KVEC_ERROR_SIZE_OVERFLOW;
    kvec__bump_init(&b, NULL, 0);
    kvec__carve_learned(&b, s, &rows, &hidden);
    if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
    *scratch_bytes = b.used;
    return KVEC_OK;
}

static int kvec__floats_finite(const float *x, int64_t n) {
    int64_t i;
    for (i = 0; i < n; i++)
        if (!isfinite(x[i])) return 0;
    return 1;
}

KVEC_API kvec_result kvec_learned_scores_scratch_bytes(const kvec_scorer *scorer, size_t *bytes) {
    int64_t first_rows;
    size_t needed;
    kvec_result r;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__plan_scorer(scorer, &first_rows, &needed)) != KVEC_OK) return r;
    *bytes = needed;
    return KVEC_OK;
}

/* A sum as a float that is always a number: past float's range it
   saturates, and NaN (an overflowed partial sum times 0, inf - inf) counts
   as the lowest score. */
static float kvec__saturate(double y) {
    const double top = FLT_MAX;
    return y != y ? (float)-top : y > top ? (float)top : y < -top ? (float)-top : (float)y;
}

static float kvec__gelu(double a) { return kvec__saturate(0.5 * a * (1.0 + erf(a / sqrt(2.0)))); }

/* log sigmoid(y), without overflow for large |y| */
static float kvec__log_sigmoid(double y) { return kvec__saturate(y >= 0 ? -log1p(exp(-y)) : y - log1p(exp(y))); }

KVEC_API kvec_result kvec_learned_scores(const kvec_scorer *scorer, const kvec_tensor *hidden, float *scores,
                                         int64_t scores_stride, void *scratch, size_t scratch_bytes) {
    const kvec_scorer *s = scorer;
    kvec__call_memory m;
    kvec__bump b;
    kvec_result r;
    size_t needed;
    float *rows, *mid;
    int64_t first_rows = 0, E, Hk, F, T, written;
    if ((r = kvec__plan_scorer(scorer, &first_rows, &needed)) != KVEC_OK) return r;
    if (!hidden || !scores || !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    if ((r = kvec_validate_tensor(hidden)) != KVEC_OK) return r;
    E = s->n_embd; Hk = s->n_kv_heads; F = s->n_hidden; T = hidden->n_tokens;
    if (hidden->n_heads != 1 || hidden->head_dim != E) return KVEC_ERROR_SHAPE_MISMATCH;
    if (scores_stride < T) return KVEC_ERROR_BAD_STRIDE;
    /* scores: Hk - 1 full rows and the last one's T columns */
    if ((written = kvec__count(Hk - 1, scores_stride)) < 0 || written > INT64_MAX - T) return KVEC_ERROR_SIZE_OVERFLOW;
    written += T;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    m.extra[m.n_extra++] = kvec__tensor_region(hidden, 0);
    if (!kvec__call_add(&m, s->weight, kvec__count(first_rows, E), sizeof(float), 0) ||
        !kvec__call_add(&m, s->bias, first_rows, sizeof(float), 0) ||
        (s->kind == KVEC_SCORER_MLP && (!kvec__call_add(&m, s->weight2, kvec__count(Hk, F), sizeof(float), 0) ||
                                        !kvec__call_add(&m, s->bias2, Hk, sizeof(float), 0))) ||
        !kvec__call_add(&m, scores, written, sizeof(float), 1) ||
        !kvec__call_add(&m, scratch, (int64_t)needed, 1, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (!kvec__floats_finite(s->weight, first_rows * E) || !kvec__floats_finite(s->bias, first_rows) ||
        (s->kind == KVEC_SCORER_MLP && (!kvec__floats_finite(s->weight2, Hk * F) ||
                                        !kvec__floats_finite(s->bias2, Hk))) ||
        !kvec__rows_finite(hidden, 0, T))
        return KVEC_ERROR_NON_FINITE;
    kvec__bump_init(&b, scratch, scratch_bytes);
    kvec__carve_learned(&b, s, &rows, &mid);
    /* One team for every block: each loop below is shared out and ends in a
       barrier; every value is computed whole by one thread, in a fixed
       order, so the bits do not depend on the thread count. */
    KVEC__PARALLEL_REGION
    {
        int64_t block;
        for (block = 0; block < T; block += KVEC__LEARNED_BLOCK) {
            const int64_t n = T - block < KVEC__LEARNED_BLOCK ? T - block : KVEC__LEARNED_BLOCK;
            int64_t t, f;
            KVEC__FOR
            for (t = 0; t < n; t++) kvec__load_row(hidden, block + t, 0, rows + t * E);
            if (s->kind == KVEC_SCORER_MLP) {
                /* each hidden unit by one thread, every token of the block */
                KVEC__FOR
                for (f = 0; f < F; f++) {
                    int64_t u;
                    for (u = 0; u < n; u++)
                        mid[u * F + f] = kvec__gelu(kvec__dot(s->weight + f * E, rows + u * E, E) + (double)s->bias[f]);
                }
            }
            KVEC__FOR
            for (t = 0; t < n; t++) {
                int64_t j;
                for (j = 0; j < Hk; j++) {
                    const double y = s->kind == KVEC_SCORER_MLP
                        ? kvec__dot(s->weight2 + j * F, mid + t * F, F) + (double)s->bias2[j]
                        : kvec__dot(s->weight + j * E, rows + t * E, E) + (double)s->bias[j];
                    scores[j * scores_stride + block + t] =
                        s->output == KVEC_SCORER_LOG_RETENTION ? kvec__log_sigmoid(y) : kvec__saturate(y);
                }
            }
        }
    }
    return KVEC_OK;
}

KVEC_API kvec_result kvec_learned_masses(kvec_scorer_output output, const float *y, int64_t n, int64_t n_sinks,
                                         int64_t header, float *masses) {
    kvec__call_memory m;
    int64_t i;
    if (!y || !masses) return KVEC_ERROR_NULL_POINTER;
    if (output != KVEC_SCORER_SCORE && output != KVEC_SCORER_LOG_RETENTION) return KVEC_ERROR_BAD_CONFIG;
    if (n < 1 || n_sinks < 0 || header < 0 || header > n) return KVEC_ERROR_BAD_EXTENT;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if ((masses != y && !kvec__call_add(&m, y, n, sizeof(float), 0)) || !kvec__call_add(&m, masses, n, sizeof(float), 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (kvec__check_overlaps(&m) != KVEC_OK) return KVEC_ERROR_OVERLAP; /* in place, or apart */
    if (!kvec__floats_finite(y, n)) return KVEC_ERROR_NON_FINITE;
    for (i = 0; i < n; i++) {
        double z = output == KVEC_SCORER_LOG_RETENTION ? (double)(n - 1 - i) / (double)n * y[i] : y[i];
        z = z < -80.0 ? -80.0 : z > 80.0 ? 80.0 : z;
        masses[i] = i < n_sinks ? INFINITY : i < header ? 0.0f : (float)exp(z);
    }
    return KVEC_OK;
}

/* >>decoding */

/* The state's arrays in its memory: positions, attention, retention. */
static void kvec__carve_decode(kvec__bump *b, int64_t rows, kvec_decode_state *s) {
    s->positions = (int64_t *)kvec__take(b, rows, sizeof(int64_t));
    s->attention = (float *)kvec__take(b, rows, sizeof(float));
    s->retention = (float *)kvec__take(b, rows, sizeof(float));
}

/* L * Hk * capacity, or -1 when an extent is not positive or it overflows. */
static int64_t kvec__decode_rows(int64_t n_layers, int64_t n_kv_heads, int64_t capacity) {
    if (n_layers <= 0 || n_kv_heads <= 0 || capacity <= 0) return -1;
    if (n_kv_heads > INT64_MAX / n_layers || n_layers * n_kv_heads > INT64_MAX / capacity) return -1;
    return n_layers * n_kv_heads * capacity;
}

KVEC_API kvec_result kvec_decode_state_bytes(int64_t n_layers, int64_t n_kv_heads, int64_t capacity,
                                             size_t *bytes) {
    const int64_t rows = kvec__decode_rows(n_layers, n_kv_heads, capacity);
    kvec__bump b;
    kvec_decode_state arrays;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if (n_layers <= 0 || n_kv_heads <= 0 || capacity <= 0) return KVEC_ERROR_BAD_EXTENT;
    if (rows < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    kvec__bump_init(&b, NULL, 0);
    kvec__carve_decode(&b, rows, &arrays);
    if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
    *bytes = b.used;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_init(kvec_decode_state *state, void *memory, size_t memory_bytes,
                                      int64_t n_layers, int64_t n_kv_heads, int64_t capacity,
                                      int64_t n_rows, int64_t next_position,
                                      const kvec_plan *plan) {
    size_t needed;
    kvec_result r;
    kvec__bump b;
    int64_t head, i;
    if (!state || !memory) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec_decode_state_bytes(n_layers, n_kv_heads, capacity, &needed)) != KVEC_OK) return r;
    if (memory_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    if (n_rows < 0 || n_rows > capacity || next_position < n_rows) return KVEC_ERROR_BAD_EXTENT;
    {   /* the plan is read while the memory is written */
        kvec__call_memory m;
        kvec__call_init(&m, NULL, NULL, 0, 0);
        if (!kvec__call_add(&m, memory, (int64_t)needed, 1, 1)) return KVEC_ERROR_SIZE_OVERFLOW;
        if (plan && (r = kvec__check_plan_descriptor(plan)) != KVEC_OK) return r;
        if (plan && !kvec__call_add_plan(&m, plan, 0, plan->n_layers, 0)) return KVEC_ERROR_SIZE_OVERFLOW;
        if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    }
    if (plan) {
        /* every head keeps n_rows positions, strictly ascending, below next_position */
        int64_t l;
        if (plan->n_layers < n_layers) return KVEC_ERROR_PLAN_TOO_SMALL;
        for (l = 0; l < n_layers; l++) {
            if ((r = kvec__check_plan(plan, l, n_kv_heads, n_rows)) != KVEC_OK) return r;
            if ((r = kvec__check_plan_positions(plan, l, n_kv_heads, next_position)) != KVEC_OK) return r;
        }
        for (head = 0; head < n_layers * n_kv_heads; head++)
            if (plan->kept_count[head] != n_rows) return KVEC_ERROR_BAD_PLAN;
    }
    state->n_layers = n_layers;
    state->n_kv_heads = n_kv_heads;
    state->capacity = capacity;
    state->n_rows = n_rows;
    state->next_position = next_position;
    kvec__bump_init(&b, memory, memory_bytes);
    kvec__carve_decode(&b, n_layers * n_kv_heads * capacity, state);
    for (head = 0; head < n_layers * n_kv_heads; head++)
        for (i = 0; i < capacity; i++) {
            state->positions[head * capacity + i] =
                i >= n_rows ? -1 : plan ? plan->kept_positions[head * plan->capacity + i] : i;
            state->attention[head * capacity + i] = 0.0f;
            state->retention[head * capacity + i] = 0.0f;
        }
    return KVEC_OK;
}

/* A state as kvec_decode_init and the other calls leave it: positive
   extents whose arrays can exist and do not overlap, rows within capacity
   and below the next position. Only its descriptor is checked (O(1)); the
   arrays' contents are kvec's own. The three arrays are added to m (which
   may be NULL), written or read. */
static kvec_result kvec__check_state(const kvec_decode_state *state, kvec__call_memory *m, int written) {
    kvec__call_memory own;
    int64_t rows;
    kvec_result r;
    if (!state || !state->positions || !state->attention || !state->retention) return KVEC_ERROR_NULL_POINTER;
    if (state->n_layers <= 0 || state->n_kv_heads <= 0 || state->capacity <= 0 || state->n_rows < 0 ||
        state->n_rows > state->capacity || state->next_position < state->n_rows)
        return KVEC_ERROR_STATE_MISMATCH;
    if ((rows = kvec__decode_rows(state->n_layers, state->n_kv_heads, state->capacity)) < 0)
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (!m) { kvec__call_init(&own, NULL, NULL, 0, 0); m = &own; }
    if (!kvec__call_add(m, state->positions, rows, sizeof(int64_t), written) ||
        !kvec__call_add(m, state->attention, rows, sizeof(float), written) ||
        !kvec__call_add(m, state->retention, rows, sizeof(float), written))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if (m == &own && (r = kvec__check_overlaps(m)) != KVEC_OK) return r;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_append(kvec_decode_state *state, int64_t n_new) {
    kvec_result r;
    int64_t head, t, next;
    if ((r = kvec__check_state(state, NULL, 1)) != KVEC_OK) return r;
    if (n_new < 0) return KVEC_ERROR_BAD_EXTENT;
    if (n_new > state->capacity - state->n_rows) return KVEC_ERROR_STATE_MISMATCH; /* evict first */
    if (kvec__add_overflows(state->next_position, n_new, &next)) return KVEC_ERROR_SIZE_OVERFLOW;
    for (head = 0; head < state->n_layers * state->n_kv_heads; head++)
        for (t = 0; t < n_new; t++) {
            state->positions[head * state->capacity + state->n_rows + t] = state->next_position + t;
            state->attention[head * state->capacity + state->n_rows + t] = 0.0f;
            state->retention[head * state->capacity + state->n_rows + t] = 0.0f;
        }
    state->n_rows += n_new;
    state->next_position = next;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_observe(kvec_decode_state *state, int64_t layer_index,
                                         const float *attention, int64_t n_query_heads,
                                         int64_t row_stride) {
    int64_t n, j, h, i, g, read;
    float inv_g;
    kvec_result r;
    kvec__call_memory m;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if ((r = kvec__check_state(state, &m, 1)) != KVEC_OK) return r;
    if (!attention) return KVEC_ERROR_NULL_POINTER;
    if (layer_index < 0 || layer_index >= state->n_layers) return KVEC_ERROR_BAD_LAYER_INDEX;
    n = state->n_rows;
    if (n_query_heads <= 0 || n_query_heads % state->n_kv_heads || row_stride < n) return KVEC_ERROR_SHAPE_MISMATCH;
    /* rows h < H of row_stride floats, the last one read up to n */
    read = kvec__count(n_query_heads - 1, row_stride);
    if (read < 0 || kvec__add_overflows(read, n, &read)) return KVEC_ERROR_SIZE_OVERFLOW;
    if (!kvec__call_add(&m, attention, read, sizeof(float), 0)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    for (h = 0; h < n_query_heads; h++) /* checked before anything is added */
        for (i = 0; i < n; i++)
            if (!isfinite(attention[h * row_stride + i])) return KVEC_ERROR_NON_FINITE;
    g = n_query_heads / state->n_kv_heads;
    inv_g = 1.0f / (float)g;
    for (j = 0; j < state->n_kv_heads; j++) {
        float *total = state->attention + (layer_index * state->n_kv_heads + j) * state->capacity;
        for (h = j * g; h < (j + 1) * g; h++) /* query heads in order: deterministic sums */
            for (i = 0; i < n; i++) total[i] += attention[h * row_stride + i] * inv_g;
    }
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_retention(kvec_decode_state *state, int64_t layer_index,
                                           const float *log_retention, int64_t n) {
    int64_t j, t;
    kvec_result r;
    kvec__call_memory m;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if ((r = kvec__check_state(state, &m, 1)) != KVEC_OK) return r;
    if (!log_retention) return KVEC_ERROR_NULL_POINTER;
    if (layer_index < 0 || layer_index >= state->n_layers) return KVEC_ERROR_BAD_LAYER_INDEX;
    if (n < 0 || n > state->n_rows) return KVEC_ERROR_BAD_EXTENT;
    if (!kvec__call_add(&m, log_retention, state->n_kv_heads * n, sizeof(float), 0)) return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    for (t = 0; t < state->n_kv_heads * n; t++)
        if (!isfinite(log_retention[t])) return KVEC_ERROR_NON_FINITE;
    for (j = 0; j < state->n_kv_heads; j++) {
        float *row = state->retention + (layer_index * state->n_kv_heads + j) * state->capacity;
        for (t = 0; t < n; t++) row[state->n_rows - n + t] = log_retention[j * n + t];
    }
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_retention_scores(const kvec_decode_state *state, float *scores) {
    int64_t head, i;
    double newest;
    kvec_result r;
    kvec__call_memory m;
    kvec__call_init(&m, NULL, NULL, 0, 0);
    if ((r = kvec__check_state(state, &m, 0)) != KVEC_OK) return r;
    if (!scores) return KVEC_ERROR_NULL_POINTER;
    if (!kvec__call_add(&m, scores, state->n_layers * state->n_kv_heads * state->n_rows, sizeof(float), 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    newest = (double)state->next_position - 1.0;
    for (head = 0; head < state->n_layers * state->n_kv_heads; head++)
        for (i = 0; i < state->n_rows; i++) {
            const int64_t at = head * state->capacity + i;
            scores[head * state->n_rows + i] =
                state->retention[at] * (float)(newest - (double)state->positions[at]); /* exact ages to 2^24 */
        }
    return KVEC_OK;
}

/* Scratch of the external-score path: [L][Hk][N] scores, then selection's. */
static kvec_result kvec__decode_score_bytes(const kvec_config *c, int64_t L, int64_t Hk, int64_t N,
                                            size_t *bytes) {
    kvec__bump b;
    if (kvec__decode_rows(L, Hk, N) < 0) return KVEC_ERROR_SIZE_OVERFLOW;
    kvec__bump_init(&b, NULL, 0);
    kvec__take(&b, L * Hk * N, sizeof(float));
    kvec__take(&b, (int64_t)kvec_select_scratch_bytes(c, L, Hk, N), 1);
    if (b.overflow) return KVEC_ERROR_SIZE_OVERFLOW;
    *bytes = b.used;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_scratch_bytes(const kvec_config *config, const kvec_cache *cache,
                                               size_t *bytes) {
    kvec_config c;
    kvec_result r;
    size_t evict_bytes, score_bytes;
    if (!bytes) return KVEC_ERROR_NULL_POINTER;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (c.budget_mode != KVEC_BUDGET_UNIFORM) return KVEC_ERROR_BAD_CONFIG;
    if ((r = kvec_scratch_bytes(&c, cache, 1, &evict_bytes)) != KVEC_OK) return r;
    if ((r = kvec__decode_score_bytes(&c, cache->n_layers, cache->layers[0].keys.n_heads,
                                      cache->layers[0].keys.n_tokens, &score_bytes)) != KVEC_OK)
        return r;
    *bytes = evict_bytes > score_bytes ? evict_bytes : score_bytes;
    return KVEC_OK;
}

KVEC_API kvec_result kvec_decode_evict(const kvec_config *config, kvec_decode_state *state,
                                       kvec_cache *cache, const float *scores, int64_t budget,
                                       kvec_plan *plan, void *scratch, size_t scratch_bytes) {
    kvec_config c;
    kvec_result r;
    kvec__call_memory m;
    size_t needed;
    int64_t L, Hk, N, head, i;
    if ((r = kvec__resolve(config, &c)) != KVEC_OK) return r;
    if (c.budget_mode != KVEC_BUDGET_UNIFORM) return KVEC_ERROR_BAD_CONFIG; /* heads stay equal */
    kvec__call_init(&m, &c, cache, 1, 1);
    if ((r = kvec__check_state(state, &m, 1)) != KVEC_OK) return r;
    if ((r = kvec_decode_scratch_bytes(&c, cache, &needed)) != KVEC_OK) return r;
    L = cache->n_layers; Hk = cache->layers[0].keys.n_heads; N = cache->layers[0].keys.n_tokens;
    if (L != state->n_layers || Hk != state->n_kv_heads || N != state->n_rows)
        return KVEC_ERROR_STATE_MISMATCH;
    /* the state follows the plan's rows: it is needed here */
    if (!plan || !scratch) return KVEC_ERROR_NULL_POINTER;
    if (scratch_bytes < needed) return KVEC_ERROR_SCRATCH_TOO_SMALL;
    /* The cache, the state, the scores, the plan and the scratch; the calls
       below check the plan's shape and capacity. */
    if ((r = kvec__check_plan_descriptor(plan)) != KVEC_OK) return r;
    if (!kvec__call_add(&m, scratch, (int64_t)needed, 1, 1) ||
        (scores && !kvec__call_add(&m, scores, L * Hk * N, sizeof(float), 0)) ||
        !kvec__call_add_plan(&m, plan, 0, plan->n_layers < L ? plan->n_layers : L, 1))
        return KVEC_ERROR_SIZE_OVERFLOW;
    if ((r = kvec__check_overlaps(&m)) != KVEC_OK) return r;
    if (scores || c.policy == KVEC_POLICY_H2O) {
        /* Scores known without reading the cache: select, then compact. */
        kvec__bump b;
        float *own;
        void *select_scratch;
        const size_t select_bytes = kvec_select_scratch_bytes(&c, L, Hk, N);
        kvec__bump_init(&b, scratch, scratch_bytes);
        own = (float *)kvec__take(&b, L * Hk * N, sizeof(float));
        select_scratch = kvec__take(&b, (int64_t)select_bytes, 1);
        if (!scores) {
            for (head = 0; head < L * Hk; head++)
                memcpy(own + head * N, state->attention + head * state->capacity, (size_t)N * sizeof(float));
            scores = own;
        }
        if ((r = kvec_select(&c, scores, L, Hk, N, budget, plan, select_scratch, select_bytes)) != KVEC_OK)
            return r;
        if ((r = kvec_compact(cache, plan)) != KVEC_OK) return r;
    } else if ((r = kvec_evict_ex(&c, cache, budget, plan, scratch, scratch_bytes)) != KVEC_OK) {
        return r;
    }
    /* The state follows the rows: row r of each head now holds its kept[r]. */
    for (head = 0; head < L * Hk; head++) {
        const int64_t *kept = plan->kept_positions + head * plan->capacity;
        int64_t *positions = state->positions + head * state->capacity;
        float *attention = state->attention + head * state->capacity;
        float *retention = state->retention + head * state->capacity;
        for (i = 0; i < plan->kept_count[head]; i++) { /* rows past the count: append rewrites them */
            positions[i] = positions[kept[i]];
            attention[i] = attention[kept[i]];
            retention[i] = retention[kept[i]];
        }
    }
    state->n_rows = plan->kept_count[0];
    return KVEC_OK;
}

#endif /* KVEC_IMPLEMENTATION_DONE */
#endif /* KVEC_IMPLEMENTATION */

/*
HISTORY
   0.6.0  expected attention (kvec_query_stats_*, kvec_expected_attention_*:
          scores from running statistics of the prefill's queries, no
          extra pass) and K-VEC's coverage over given scores
          (kvec_coverage_scores); KVEC_ERROR_BAD_SCORES. Host only.
   0.5.0  reconstruction scores (KVzip): kvec_reconstruction_scores and
          kvec_reconstruction_scratch_bytes score the context by the
          attention of a pass that repeats it; select with kvec_select.
   0.4.0  K-VEC's rank union splits the free slots by terms.attention_share,
          now 0.25 by default (0.5 before: set it to keep 0.3's selections);
          chosen on a real model, docs/TUNING.md round 6. Speed: one pass
          over K for window attention, K-VEC's key direction from the same
          tiles, 11/11/10-bit radix selection, rank-major compaction.
   0.3.1  hardening: one checked-arithmetic layer for every size, stride,
          count and position a caller gives; the overlap rule
          (KVEC_ERROR_OVERLAP between everything a call writes and anything
          else it touches); decode states validated by every decode call;
          kvec_evict_ex and kvec_evict_batch accept a NULL plan, as
          documented; plan descriptors validated by kvec_plan_offsets and
          kvec_plan_mask.
   0.3.0  the device path: kvec_cuda.cu (kvec_cuda_* declared here) and
          KVEC_ERROR_CUDA.
   0.2.0  budget modes adaptive (Ada-KV) and global; kvec_select for
          external scores; kvec_plan_offsets, kvec_plan_mask and
          kvec_compact_packed for heads of different lengths;
          kvec_select_scratch_bytes takes layers and heads; output-aware
          CriticalKV and LaProx (layer.out_proj; kvec_score_layer takes
          the layer budget); eviction during decoding (kvec_decode_*).
   0.1.0  first release: CPU scores, selection, compaction; K-VEC.

LICENSE
   MIT License. Copyright (c) 2026 the kvec authors.
   Permission is hereby granted, free of charge, to any person obtaining a
   copy of this software and associated documentation files (the
   "Software"), to deal in the Software without restriction, including
   without limitation the rights to use, copy, modify, merge, publish,
   distribute, sublicense, and/or sell copies of the Software, and to permit
   persons to whom the Software is furnished to do so, subject to the
   following conditions: The above copyright notice and this permission
   notice shall be included in all copies or substantial portions of the
   Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND,
   EXPRESS OR IMPLIED.
*/
