/* kvec_llama.h - kvec on llama.cpp's own KV cache - MIT license (see LICENSE)

   A helper any llama.cpp program can copy (with kvec_llama.c): it captures
   what kvec reads while llama.cpp prefills, describes llama.cpp's cache
   tensors as kvec views (no copy), evicts per KV head at a uniform budget and
   hands the cache back so that llama_decode goes on. Stock llama.cpp, public
   API only (llama.h, ggml.h, ggml-backend.h).

       kvec_llama kl;
       kvec_llama_init(&kl, model, 32);             // refuses SWA, recurrent, ...
       kvec_llama_context_params(&kl, &cparams);    // sets cb_eval, one sequence
       ctx = llama_init_from_model(model, cparams);
       kvec_llama_begin(&kl, n_prompt);             // capture the next prefill
       llama_decode(ctx, prompt batch of n_prompt tokens at positions 0..);
       kvec_llama_evict(&kl, ctx, &config, budget, NULL);
       // decode on at position n_prompt: llama.cpp now attends over `budget`
       // cells per KV head, each head over its own tokens.

   How it works, and why it needs no patch:
   - cb_eval sees every graph node. The post-RoPE queries of layer il are the
     GGML_OP_ROPE node named "Qcur-<il>" (the matmul and reshape before it
     carry the same name), f32 [token][head][dim]; its src[1] holds the
     ubatch's positions, so the last `window` prefix rows are kept however
     the prefill was split into ubatches.
   - The cache tensors are the roots of the views that GGML_OP_SET_ROWS
     writes, named "cache_k_l<il>" / "cache_v_l<il>": K is [kv_size] rows of
     [Hk*D]; V the same, or transposed ([Hk*D][kv_size]) when flash attention
     is off (the V write is then to a [1][kv_size*Hk*D] view). The index
     input of layer 0's K write says which cell each position went to.
   - A cell's position feeds only the attention mask; keys keep the RoPE of
     the position they were computed at. So each head's kept rows can be
     moved into the last B cells of the prefix (which the next token may see,
     as it may see every position before it), the first N - B positions
     removed with llama_memory_seq_rm, and decoding goes on at N, which
     llama.cpp requires (seq_pos_max + 1).

   Heads of different lengths (pyramid, adaptive and global budgets): built
   with KVEC_LLAMA_PER_HEAD against llama.cpp with kvec-per-head.patch, each
   head's c kept rows go to the last c cells, the positions below the
   longest head's are removed, and llama_memory_set_head_pos_min masks, for
   each head, the cells below its own c. Without the define such plans are
   refused.

   Caches in any backend: a layer whose cache is in device memory (layers
   offloaded to a GPU, or to another machine through the RPC backend) is
   read into a host copy of the prefix cells with ggml_backend_tensor_get
   and scored there; its kept rows are then moved inside the device buffer
   by a ggml graph run on that device (GET_ROWS of each head's kept cells,
   SET_ROWS into the last cells), so only indices go back. A backend that
   cannot run the graph gets the cells that changed (the last B) written
   back from the host copy instead. Layers in host memory are used in
   place, so mixed placements work. kvec_llama_reevict goes through the
   host copy (the span of held cells read, the span written back).

   Refused, with a message: recurrent and hybrid models, sliding-window
   attention (SWA, iSWA), MLA and other caches whose K rows are not Hk*D, a
   cache type kvec cannot read (quantised: q8_0, q4_0, ...), more than one
   sequence, and a prefix whose cells are not in position order. */
#ifndef KVEC_LLAMA_H
#define KVEC_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "llama.h"
#include "ggml.h"
#include "../../kvec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Layer cells [first, first + count) as this helper reads and writes them:
   the cache tensors themselves when their buffer is host memory, else a host
   copy read with ggml_backend_tensor_get and written back with
   ggml_backend_tensor_set (CUDA, Vulkan, Metal, RPC: any backend). Element d
   of KV head h of cell c is at
       k + (c - first) * k_cell + (h * D + d) * k_elem     (K)
       v + (c - first) * v_cell + (h * D + d) * v_elem     (V, either layout) */
typedef struct kvec_llama_cells {
    char   *k, *v;
    int64_t k_cell, k_elem, v_cell, v_elem;   /* bytes */
    int64_t first, count;
    char   *copy;              /* the host copy (NULL: the cache's own memory) */
    size_t  copy_bytes;        /* its capacity (freed when an eviction ends) */
} kvec_llama_cells;

typedef struct kvec_llama {
    /* the model */
    int64_t n_layers, n_heads, n_kv_heads, head_dim;
    int64_t window;            /* query rows captured per layer */

    /* found by the eval callback in the graphs it sees */
    struct ggml_tensor **k;    /* [n_layers] cache_k_l<il> */
    struct ggml_tensor **v;    /* [n_layers] cache_v_l<il> */
    int     v_trans;           /* -1 not seen yet, 0 [cell][Hk*D], 1 [Hk*D][cell] */

    /* the capture of one prefill */
    int     armed;
    int64_t n_prefix;          /* N: the prefix is positions 0 .. N-1 */
    float  *queries;           /* [n_layers][window][n_heads][head_dim] post-RoPE */
    int64_t *rows_seen;        /* [n_layers] query rows of the window captured */
    int32_t *ubatch_pos;       /* [ubatch_cap] positions of the ubatch being computed */
    int64_t n_ubatch_pos, ubatch_cap;
    int64_t *cell_of_pos;      /* [N] cell of each prefix position, -1 unseen */

    int     head_limits;       /* the last eviction gave heads different lengths (patched llama.cpp) */

    /* learned scores (kvec_llama_set_scorers): each layer's scorer reads
       attn_norm-<il> (the layer's attention input) as the prefill computes
       it; the scores wait in `pending` until Qcur-<il> gives the ubatch's
       positions */
    int64_t n_embd;
    const kvec_scorer *scorers;    /* [n_layers], the caller's; NULL: none */
    float  *learned;           /* [n_layers][n_kv_heads][n_prefix] the scorers' outputs by position */
    int64_t *learned_seen;     /* [n_layers] prefix positions scored */
    float  *hidden_rows;       /* [hidden_cap][n_embd] one ubatch's attn_norm rows copied from a device */
    float  *pending;           /* [n_kv_heads][pending_cap] one ubatch's scores */
    int64_t pending_layer, pending_rows, pending_cap, hidden_cap;
    void   *learned_scratch;
    size_t  learned_scratch_bytes;
    double  learned_ms;        /* the last prefill's time in the scorers (copy to the host and scoring) */

    /* the cells an eviction reads and writes, per layer, in host memory */
    struct kvec_llama_cells *cells;  /* [n_layers] */
    int64_t moved_on_device;   /* layers the last eviction moved inside their device buffers */

    char    error[256];        /* why the last call failed */
} kvec_llama;

typedef struct kvec_llama_stats {
    double plan_ms;            /* scoring and selection */
    double move_ms;            /* compaction, the move to the tail, seq_rm */
    int64_t kept;              /* cells per KV head after eviction (the mean over heads) */
    int64_t kept_max;          /* the longest head (= kept under a uniform budget) */
} kvec_llama_stats;

/* kvec, snapkv, pyramidkv, streaming, h2o, tova, knorm, keydiff, random,
   criticalkv, laprox -> the policy; -1 for anything else. */
int  kvec_llama_policy(const char *name, kvec_policy *policy);

/* Refusals that depend on the model only. Returns 0, or -1 with kl->error. */
int  kvec_llama_init(kvec_llama *kl, const struct llama_model *model, int64_t window);
void kvec_llama_free(kvec_llama *kl);

/* Installs the eval callback and asks for one sequence; keep the caller's
   other settings. The callback may also be called from a caller's own. */
void kvec_llama_context_params(kvec_llama *kl, struct llama_context_params *params);
bool kvec_llama_eval_cb(struct ggml_tensor *t, bool ask, void *user_data);

/* Capture the next decodes, which prefill positions 0 .. n_prefix-1. */
int  kvec_llama_begin(kvec_llama *kl, int64_t n_prefix);

/* After the prefill: the cache, the sequence and the capture are what the
   eviction needs (every refusal that needs the context is here). */
int  kvec_llama_check(kvec_llama *kl, struct llama_context *ctx);

/* The cache as kvec sees it: layers[l] viewing the N prefix cells (and the
   captured queries). layers is [n_layers]. A layer in device memory is
   viewed in a host copy read by this call (kvec_llama_apply writes what it
   moves back to the device). Returns 0, or -1 with kl->error. */
int  kvec_llama_views(kvec_llama *kl, kvec_layer *layers);

/* Learned scores (kvec_learned_scores, docs/LEARNED.md): scorers ([n_layers],
   kept by the caller until kvec_llama_free or another call) are run on each
   layer's attention input during the prefills that kvec_llama_begin arms,
   at the cost of one small matrix product per layer; NULL turns them off.
   Refused when a layer's scorer does not take this model's hidden size and
   KV heads. */
int  kvec_llama_set_scorers(kvec_llama *kl, const kvec_scorer *scorers);

/* kvec_llama_evict by the learned scores of the last prefill instead of
   the policy's own: a token's mass is exp of its predicted log score (for
   a retention gate, of its decayed log retention, (N-1-i)/N log beta), the
   first 4 positions (attention sinks, which no scorer is trained on) and
   the window are always kept. With config->policy KVEC_POLICY_KVEC, K-VEC's
   uniqueness term is added (kvec_coverage_scores; config->terms.enabled
   must be 0 or KVEC_TERM_UNIQUENESS); any other policy selects by the
   scores alone. config->budget_mode decides how the budget is shared: the
   scores compare across layers and heads, so KVEC_BUDGET_GLOBAL, as they
   were measured, which needs the per-head patch. Learned scores cover the
   prefill kvec_llama_begin armed: kvec_llama_reevict, after
   kvec_llama_continue, scores by the policy. */
int  kvec_llama_evict_learned(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config,
                              int64_t budget, kvec_llama_stats *stats);

/* What each KV head would keep (plan capacity >= budget), nothing moved. */
int  kvec_llama_plan(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config,
                     int64_t budget, kvec_plan *plan);

/* Applies a uniform plan: each head's kept rows go to the last B cells of
   the prefix, positions 0 .. N-B-1 are removed. Decode on at N. */
int  kvec_llama_apply(kvec_llama *kl, struct llama_context *ctx, const kvec_plan *plan);

/* plan + apply. config may be NULL (K-VEC defaults). stats may be NULL. */
int  kvec_llama_evict(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config,
                      int64_t budget, kvec_llama_stats *stats);

/* Position-level eviction, every head alike: keep[p] != 0 keeps prefix
   position p (the last one must be kept); the others are removed with
   llama_memory_seq_rm, nothing is moved. */
int  kvec_llama_keep_positions(kvec_llama *kl, struct llama_context *ctx, const uint8_t *keep);

/* One position set from per-head plans: the B positions kept by the most
   heads (ties to the later position; the window always). keep is [N]. */
void kvec_llama_vote(const kvec_plan *plan, int64_t n_prefix, int64_t budget, int64_t window,
                     uint8_t *keep);

/* Eviction during decoding, uniform budgets, every `interval` >= window
   tokens. After an eviction (kvec_llama_evict or kvec_llama_reevict):
       kvec_llama_continue(&kl, p_end);    // capture the decodes up to p_end-1
       llama_decode positions seq_pos_max+1 .. p_end-1 (in any batches);
       kvec_llama_reevict(&kl, ctx, &config, budget, &stats);
   The held positions (seq_pos_min .. p_end-1) sit in cells that are no
   longer in position order (new tokens fill the cells freed at the front),
   so each layer's held rows are gathered into position order (one layer's
   copy at a time), kvec selects `budget` per KV head over them with the
   last `window` queries, each head's kept rows are written into the cells
   of the last `budget` positions, and the positions before are removed. */
int  kvec_llama_continue(kvec_llama *kl, int64_t p_end);
int  kvec_llama_reevict(kvec_llama *kl, struct llama_context *ctx, const kvec_config *config,
                        int64_t budget, kvec_llama_stats *stats);

#ifdef __cplusplus
}
#endif
#endif /* KVEC_LLAMA_H */
