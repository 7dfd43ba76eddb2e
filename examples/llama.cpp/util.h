/* util.h - what the llama.cpp example programs share: loading, tokenizing,
   decoding a run of tokens, timing. Not part of the helper (kvec_llama.h). */
#ifndef KVL_UTIL_H
#define KVL_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "llama.h"
#include "ggml-backend.h"
#include "../../kvec.h"
#include "../engine/scorer.h"

double util_ms(void);
char  *util_read_file(const char *path, size_t *length); /* NUL-terminated, NULL on failure */

/* Tokens of text ([*n], malloc'd), special tokens parsed, BOS added when
   the model asks for it (add_special). NULL on failure. */
llama_token *util_tokenize(const struct llama_vocab *vocab, const char *text, size_t length,
                           int add_special, int64_t *n);

/* One ChatML-style user turn through the model's own template, ending at
   the assistant's turn. malloc'd, NULL on failure. */
char *util_chat_prompt(const struct llama_model *model, const char *user);

/* Decodes tokens[0..n) of sequence 0 at positions pos0.., in batches of at
   most n_batch. all_logits: logits for every token (else the last only).
   0 or llama_decode's error. */
int util_decode(struct llama_context *ctx, const llama_token *tokens, int64_t n, int64_t pos0,
                int all_logits);

/* Greedy next token from logits [n_vocab]. */
llama_token util_argmax(const float *logits, int64_t n_vocab);

/* KL(p || q) in nats of the softmaxes of two logit rows, and whether their
   argmaxes agree. */
double util_kl(const float *logits_p, const float *logits_q, int64_t n_vocab, int *top1_agree);

/* A token's text appended to out (out_cap bytes, kept NUL-terminated). */
void util_append_piece(const struct llama_vocab *vocab, llama_token token, char *out, size_t out_cap);

/* "on" / "off" -> the flash attention setting; -1 for anything else. */
int util_flash_attn(const char *value, enum llama_flash_attn_type *type);

/* "f16", "f32", "bf16", "q8_0", "q4_0" -> ggml type; -1 for anything else. */
int util_cache_type(const char *value, enum ggml_type *type);

/* kvec's OpenMP team the size of llama.cpp's thread count. ggml names its
   own count in each parallel region, so this sizes kvec's alone; more
   threads than free cores make every parallel region wait for a descheduled
   thread (measured: a 50% eviction of 1,389 tokens took 1.6 s with 2
   threads on 2 busy cores, 0.23 s with 1). */
void util_threads(int64_t n_threads);

/* llama.cpp logs only errors (the examples print their own report). */
void util_quiet_logs(void);

/* Registers the rpc-servers of "HOST:PORT[,HOST:PORT...]" (llama.cpp's RPC
   backend; `rpc-server` on each machine), their first devices written to
   devices[0 .. n-1] (at most `cap`) and a NULL after them: devices holds
   cap + 1 entries (llama_model_params.devices is NULL-terminated). Found
   through ggml's backend registry, so a build without GGML_RPC links and
   says why it cannot. Returns n, or -1 with the reason in error. */
int util_add_rpc_servers(const char *endpoints, ggml_backend_dev_t *devices, int cap, char *error, size_t error_cap);

/* A learned scorer file (examples/engine/scorer.h, trained by
   build/train_scorer) loaded for model, read from model_path: refused
   unless it was trained for this model's shape and its GGUF file's
   fingerprint (the weight type that holds most elements of the blk.*
   matrices, every layer's attention-norm weights), the same fingerprint
   the C engine computes. Returns 0, or -1 with the reason in error. */
int util_load_scorer(llm_scorer *scorer, const char *scorer_path, const char *model_path,
                     const struct llama_model *model, char *error, size_t error_cap);

#endif
