/* model.h - a small Llama-architecture inference engine in C, written as the
   worked example of calling kvec from an engine.

   It loads a Hugging Face model directory (config.json + model.safetensors,
   fp32/fp16/bf16 weights) or a GGUF file (architectures llama and qwen2;
   tensor types F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K), with tied
   or untied embeddings, grouped-query attention and optional Q/K/V biases;
   runs prefill and decoding on the CPU with OpenMP, keeps its KV cache in its
   own layout, and compresses that cache with kvec after prefill (llm_evict).
   Weights are converted to fp32 at load and everything is computed in fp32.
   Prefill, the engine's main job, is compute-bound, and fp32 matrices go
   straight into the tiled matrix product; a product on quantised weights
   would dequantise every weight again for each tile of 64 tokens. The cost
   is memory, 4 bytes per parameter (SmolLM2-135M: 0.54 GB; Qwen2.5-0.5B:
   2.52 GB, its output matrix untied; the GGUF file's bytes are held too
   while loading), and decoding, which reads every weight per token.

   Cache layout, per layer (chosen for this engine's attention loop, and to
   show that kvec works on the engine's layout, not a layout of its own):

       keys    [n_kv_heads][head_dim][capacity]   transposed: one query's logits
                                                  over all keys are D sweeps
                                                  over contiguous rows
       values  [n_kv_heads][capacity][head_dim]
       queries [capacity][n_heads][head_dim]      post-RoPE queries by position,
                                                  kept for the eviction scores

   Every KV head has its own length (rows in use). Kept keys carry the RoPE
   rotation of their original position, so after eviction decoding goes on at
   position n_positions while each head attends over its own rows. */
#ifndef KVEC_EXAMPLE_MODEL_H
#define KVEC_EXAMPLE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../../kvec.h"

typedef struct llm_config {
    char    architecture[16]; /* "llama" or "qwen2" (a safetensors directory: "llama") */
    int     vocab_size, hidden_size, intermediate_size;
    int     n_layers, n_heads, n_kv_heads, head_dim;
    float   rms_norm_eps, rope_theta;
    int64_t context_length;   /* positions the model was trained for; 0 when the file does not say */
    int     tied_embeddings;  /* logits use the token embedding (no separate output matrix) */
    int     attention_bias;   /* Q, K and V projections add a bias (qwen2) */
    char    weight_dtype[8];  /* as stored on disk: "F32", "F16", "BF16", or for GGUF the
                                 most common type of the layer matrices ("Q4_1", "Q5_0", ...) */
} llm_config;

typedef struct llm_layer_weights {
    float *attn_norm, *mlp_norm;    /* [hidden] */
    float *wq;                      /* [n_heads*head_dim][hidden]    (Linear: [out][in]) */
    float *wk, *wv;                 /* [n_kv_heads*head_dim][hidden] */
    float *bq;                      /* [n_heads*head_dim],    NULL without attention_bias */
    float *bk, *bv;                 /* [n_kv_heads*head_dim], NULL without attention_bias */
    float *wo;                      /* [hidden][n_heads*head_dim]    */
    float *w_gate, *w_up;           /* [intermediate][hidden]        */
    float *w_down;                  /* [hidden][intermediate]        */
} llm_layer_weights;

typedef struct llm_model {
    llm_config         config;
    float             *embed;       /* [vocab][hidden] */
    float             *final_norm;  /* [hidden] */
    float             *lm_head;     /* [vocab][hidden], == embed when tied */
    float             *rope_inv_freq; /* [head_dim/2] */
    llm_layer_weights *layers;      /* [n_layers] */
    void              *memory;      /* one block holding all of the above */
} llm_model;

/* Loads a GGUF file (a path ending in .gguf, or a file starting with the
   GGUF magic) or a Hugging Face directory (path/config.json and
   path/model.safetensors). Q and K rows of a GGUF llama model, which
   llama.cpp interleaves for its rotation of adjacent pairs, are put back in
   Hugging Face's order, as this engine rotates halves. Returns 0, or -1 with
   a message in error (a corrupt or truncated file, a missing tensor, a shape
   that disagrees with the metadata, an unsupported architecture, option or
   tensor type). */
int  llm_load(llm_model *model, const char *path, char *error, size_t error_size);
void llm_free(llm_model *model);

enum { LLM_DECODING = 1, LLM_DECODING_OBSERVED = 2 };

typedef struct llm_cache {
    const llm_model *model; /* whose weights the output-aware policies read */
    int      n_layers, n_heads, n_kv_heads, head_dim;
    int64_t  capacity;      /* rows per KV head, and positions of the query log */
    int64_t  n_positions;   /* tokens seen so far: the next token's position */
    int64_t *length;        /* [n_layers][n_kv_heads] rows in use */
    float  **keys;          /* [n_layers] -> [n_kv_heads][head_dim][capacity] */
    float  **values;        /* [n_layers] -> [n_kv_heads][capacity][head_dim] */
    float  **queries;       /* [n_layers] -> [capacity][n_heads][head_dim] */
    /* forward-pass work memory, sized for max_chunk tokens at a time */
    int      max_chunk, n_threads;
    float   *work;          /* activations of one chunk */
    float   *probabilities; /* [n_threads][4][capacity] attention weights of 4 query rows */
    void    *memory;
    /* kvec's scratch and plan, grown on demand by llm_evict */
    void    *kvec_scratch;
    size_t   kvec_scratch_bytes;
    int64_t *plan_memory;
    size_t   plan_entries;
    /* eviction while generating (llm_decode_begin .. llm_decode_evict) */
    int      decoding;      /* 0, LLM_DECODING, or LLM_DECODING_OBSERVED (H2O's attention) */
    kvec_decode_state decode;
    void    *decode_memory;
    float   *observed;      /* [max_chunk][n_heads][capacity] the chunk's attention, for H2O */
    /* learned scores (llm_cache_set_scorers): computed by the forward pass
       from each layer's attention input, for every position it runs */
    const kvec_scorer *scorers; /* [n_layers], NULL: none */
    float   *learned;       /* [n_layers][n_kv_heads][capacity] their output per position */
    void    *learned_scratch;
    size_t   learned_scratch_bytes;
    double   learned_seconds; /* time spent in kvec_learned_scores, summed */
    int      learned_failed;  /* a chunk's scores were refused since the last reset (non-finite states) */
    /* the attention input itself (llm_cache_log_hidden), for training a scorer */
    float   *hidden_log;    /* [n_layers][capacity][hidden] */
} llm_cache;

/* A cache for up to `capacity` positions (rounded up to a multiple of 64).
   Returns 0, or -1 when out of memory. */
int  llm_cache_init(llm_cache *cache, const llm_model *model, int64_t capacity);
void llm_cache_free(llm_cache *cache);
void llm_cache_reset(llm_cache *cache);
/* dst = src (same model and capacity): the rows in use and the query log. */
void llm_cache_copy(llm_cache *dst, const llm_cache *src);

/* A learned scorer per layer (kvec_learned_scores; scorers: [n_layers],
   each for this model's hidden size and KV heads, kept by the caller while
   the cache uses them; NULL detaches): from now on every forward pass
   scores the positions it runs into cache->learned[l][j][position], and
   adds its time to cache->learned_seconds. The memory is taken here, once.
   Returns 0, or -1 (a scorer of another shape, out of memory). */
int llm_cache_set_scorers(llm_cache *cache, const kvec_scorer *scorers);
/* Whether the forward pass keeps every layer's attention input (the
   normalised hidden state, [n_layers][capacity][hidden]) in
   cache->hidden_log: what a scorer is trained on. Returns 0, or -1 when
   out of memory. */
int llm_cache_log_hidden(llm_cache *cache, int on);

/* Runs n tokens at positions n_positions .. n_positions+n-1 (prefill when the
   cache is empty, decoding when n == 1), appending their keys and values.
   logits: [n][vocab] for every token, or NULL when not needed. Returns 0, or
   -1 when a token is out of range or the cache is full. */
int llm_forward(const llm_model *model, llm_cache *cache, const int32_t *tokens, int64_t n,
                float *logits);

/* Compresses every layer of the cache to `budget` rows per KV head with kvec
   (config: the policy and its options; NULL = kvec's defaults), using the
   captured queries. Call it after prefill, before any decoding. On success
   the cache's head lengths are the kept counts and, if plan is not NULL, *plan
   views the kept positions (valid until the next llm_evict). Returns the
   kvec result (KVEC_OK = 0), or KVEC_ERROR_OUT_OF_MEMORY. */
kvec_result llm_evict(llm_cache *cache, const kvec_config *config, int64_t budget,
                      kvec_plan *plan);

/* Eviction by scores the engine computed ([n_layers][n_kv_heads][N] fp32,
   higher = keep; a reconstruction pass's, say): kvec_select under config's
   budget mode (only window, budget_mode, head_floor and pyramid_beta
   matter), then kvec_compact. With config->policy KVEC_POLICY_KVEC, K-VEC's
   coverage (kvec_coverage_scores: ln s + mu z(uniqueness)) is applied to a
   copy of the scores first. As llm_evict otherwise. */
kvec_result llm_evict_scores(llm_cache *cache, const kvec_config *config, int64_t budget, const float *scores,
                             kvec_plan *plan);

/* One reconstruction pass (KVzip) over a prefilled, not yet evicted cache of
   N positions: pass[0 .. n_pass) runs at positions N .. N+n_pass-1, every
   layer's context tokens chunk_begin .. chunk_end-1 get their
   reconstruction scores (kvec_reconstruction_scores, kvec's defaults: 4
   sinks) in scores ([n_layers][n_kv_heads][N]; other columns untouched),
   and the pass's rows are dropped: the cache holds N positions again. The
   cache needs N + n_pass positions of capacity. Returns 0, or -1 (the pass
   does not fit, a bad token, out of memory). */
int llm_reconstruction_pass(const llm_model *model, llm_cache *cache, const int32_t *pass, int64_t n_pass,
                            int64_t chunk_begin, int64_t chunk_end, float *scores);

/* Expected attention (kvec_expected_attention_scores, kvpress's defaults:
   512 future positions, 4 sinks) for every layer of a prefilled, not yet
   evicted cache of N > 4 positions, from the statistics of the query log's
   positions 4 .. N-1, into scores ([n_layers][n_kv_heads][N]). Returns 0,
   or -1 (evicted, too short, out of memory). */
int llm_expected_scores(const llm_model *model, llm_cache *cache, float *scores);

/* Eviction while generating. llm_decode_begin starts it on a cache that has
   not been evicted (every head holds every position, possibly none yet);
   with observe_attention, every later llm_forward shows kvec the attention
   its queries computed (H2O's running sum). llm_decode_evict brings every
   head back to `budget` rows, the last config->window positions always
   kept; decoding goes on. llm_cache_reset ends it. Return 0 / kvec result. */
int         llm_decode_begin(llm_cache *cache, int observe_attention);
kvec_result llm_decode_evict(llm_cache *cache, const kvec_config *config, int64_t budget);

/* kvec's views of the cache (layers: [n_layers]): keys, values, every
   captured query of the prefix and the model's output projection, for
   engines that call kvec's steps (kvec_score_layer, kvec_select,
   kvec_compact) themselves. */
void llm_kvec_layers(const llm_cache *cache, kvec_layer *layers);

#endif
