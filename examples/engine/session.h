/* session.h - text in, text out on the example engine: what build/generate
   and build/demo share. A model and its tokenizer from one GGUF file,
   prefill with a progress line, and greedy answers from a (possibly
   compressed) cache. */
#ifndef KVEC_EXAMPLE_SESSION_H
#define KVEC_EXAMPLE_SESSION_H

#include "model.h"
#include "tokenizer.h"

#include <stdio.h>

typedef struct text_model {
    llm_model model;
    tokenizer tok;
    char      name[128];   /* the file's name */
    int32_t   stop[3];     /* ids that end an answer (<|im_end|>, EOS), -1 unused */
} text_model;

/* Loads the weights and the tokenizer of a GGUF file. Returns 0, or -1 with
   a message in error. */
int  text_model_load(text_model *m, const char *path, char *error, size_t error_size);
void text_model_free(text_model *m);

/* Encodes text (special tokens such as <|im_start|> parsed) into a new
   array *ids (free it). Returns the count, or -1 with a message. */
int64_t text_encode(const text_model *m, const char *text, size_t length, int32_t **ids,
                    char *error, size_t error_size);

/* Runs ids[0 .. n) through the model at the cache's next positions, in
   chunks, writing the last token's logits ([vocab]) into last_logits.
   progress, when not NULL, gets a line updated as the chunks go (prompts
   longer than one chunk). Returns 0,
   or -1 when the cache is too small or a token is out of range. */
int text_prefill(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n,
                 float *last_logits, FILE *progress);

/* Greedy decoding from `logits` (the last position's, [vocab]; overwritten):
   up to max_new tokens, stopping at a stop id, appended to the cache. The
   answer's text goes into out (capacity bytes, NUL-terminated, cut short if
   it does not fit). Returns the number of tokens generated, or -1 when the
   cache fills up. */
int64_t text_generate(const text_model *m, llm_cache *cache, float *logits, int64_t max_new,
                      char *out, size_t capacity);

/* Bytes of the K and V rows in use in the cache (fp32, as the engine keeps
   them). */
int64_t text_cache_bytes(const llm_cache *cache);

/* Sets config (zeroed first) to the policy named `name`: kvec, snapkv,
   pyramidkv, streaming, h2o, tova, knorm, keydiff, random, criticalkv,
   laprox, and the budget modes adakv (SnapKV scores, Ada-KV's per-layer
   pool), kvec-ada, snap-global, kvec-global, laprox-global. Returns 0, or -1
   for an unknown name. */
int text_policy(const char *name, kvec_config *config);
extern const char *const TEXT_POLICY_NAMES; /* the names above, for usage lines */

/* Seconds on a monotonic clock. */
double text_seconds(void);

#endif
