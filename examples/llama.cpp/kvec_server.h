/* kvec_server.h - kvec in llama-server: what kvec-server.patch calls for
   `llama-server --kv-evict POLICY:BUDGET[:MODE] [--kv-evict-scorer FILE]`
   - MIT license (see LICENSE)

   One slot. The server reads the whole prompt from position 0 (no prefix
   reuse), with the helper's eval callback capturing the last `window`
   queries; after the prompt's last batch is decoded (its logits already on
   the host) and before the first token is sampled, the slot's cells are
   evicted to the budget: each KV head keeps its chosen rows in the last B
   cells of the prompt, positions 0 .. N-B-1 are removed, and generation goes
   on at position N over B cells per KV head.

       kvec_server kv;
       kvec_server_parse(&kv, "kvec:0.5");          // at start: a message for a bad value
       params.cb_eval = kvec_llama_eval_cb; params.cb_eval_user_data = &kv.kl;
       ... create the model and its context ...
       kvec_server_init(&kv, model, model_path, NULL); // refuses SWA, recurrent, ... models
       kvec_server_begin(&kv, ctx, n_prompt);       // before the prompt's first batch
       ... decode the prompt ...
       kvec_server_evict(&kv, ctx);                 // before the first sample

   BUDGET: a fraction of the prompt in (0, 1] with a decimal point or a
   percent sign ("0.5", "50%"; at least the window's 32 cells), or a count
   of cells per KV head ("512", at least 32). MODE: uniform (the default),
   or pyramid, adaptive, global (heads of different lengths: only with
   llama.cpp built with kvec-per-head.patch, KVEC_LLAMA_PER_HEAD). A prompt
   of at most 32 tokens, or one within the budget, is not evicted.

   POLICY learned or learned-kvec (docs/LEARNED.md): the model's learned
   scorer runs on each layer's attention input while the prompt is read
   (one small matrix product per layer) and the eviction selects by its
   scores, alone or with K-VEC's uniqueness term (mu = 1), with no
   per-head floor. Its budget mode is global when none is given and the
   server has the per-head patch (the scores compare across layers and
   heads, and were measured so), else uniform. The scorer is the file
   given to kvec_server_init, by default KVEC_SERVER_SCORERS/NAME.kvs
   (NAME the model file's name without ".gguf"; the kvec checkout's
   scorers/ folder when built by kvec-server.patch), checked against the
   model's GGUF: a scorer trained for another model is refused. */
#ifndef KVEC_SERVER_H
#define KVEC_SERVER_H

#include "kvec_llama.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KVEC_SERVER_WINDOW 32

typedef struct kvec_server {
    kvec_llama  kl;            /* capture, views, eviction (kvec_llama.h) */
    kvec_config config;
    double      fraction;      /* the budget as a fraction of the prompt, or 0 */
    int64_t     cells;         /* the budget in cells per KV head, or 0 */
    int         learned;       /* POLICY learned or learned-kvec */
    void       *scorer;        /* learned: the llm_scorer (examples/engine/scorer.h) read by kvec_server_init */
    int         ready;         /* kvec_server_init succeeded */
    int         armed;         /* the prompt being read is captured */

    /* the last eviction (written on the server's task thread) */
    int64_t     prompt_tokens; /* N */
    int64_t     kept_cells;    /* cells per KV head kept (the longest head) */
    int64_t     kept_mean;     /* their mean over heads */
    double      evict_ms;

    char        error[512];    /* why the last call failed */
} kvec_server;

/* Parses "POLICY:BUDGET[:MODE]" into a zeroed kv. Returns 0, or -1 with
   kv->error. */
int  kvec_server_parse(kvec_server *kv, const char *value);

/* After the model and its context exist (the eval callback installed with
   user data &kv->kl). model_path: the model's GGUF file; scorer_path: the
   learned policies' scorer, NULL or "" for the default (both are read
   only for a learned policy). Returns 0, or -1 with kv->error. */
int  kvec_server_init(kvec_server *kv, const struct llama_model *model, const char *model_path,
                      const char *scorer_path);
void kvec_server_free(kvec_server *kv);

/* Before the first batch of a prompt of n_prompt tokens read from position
   0 (the slot's cells removed): lifts the per-head limits an earlier
   eviction set (patched llama.cpp), and arms the capture when the prompt
   will be evicted. */
int  kvec_server_begin(kvec_server *kv, struct llama_context *ctx, int64_t n_prompt);

/* Stops a capture (a cancelled or failed prompt). */
void kvec_server_disarm(kvec_server *kv);

/* After the prompt's last batch: evicts when armed. Returns 1 when it
   evicted, 0 when there was nothing to do, -1 with kv->error when the
   eviction failed (the sequence must then be cleared: a failure after
   the rows moved leaves a cache that is not the prompt's). */
int  kvec_server_evict(kvec_server *kv, struct llama_context *ctx);

#ifdef __cplusplus
}
#endif
#endif /* KVEC_SERVER_H */
