/* session.h - text in, text out on the example engine: what build/generate
   and build/demo share. A model and its tokenizer from one GGUF file,
   prefill with a progress line, and greedy answers from a (possibly
   compressed) cache. */
#ifndef KVEC_EXAMPLE_SESSION_H
#define KVEC_EXAMPLE_SESSION_H

#include "model.h"
#include "scorer.h"
#include "tokenizer.h"

#include <stdio.h>

typedef struct text_model {
    llm_model model;
    tokenizer tok;
    char      name[128];   /* the file's name */
    int32_t   stop[3];     /* ids that end an answer (<|im_end|>, EOS), -1 unused */
    /* the learned scorer (policies learned, learned-kvec), read on first use
       from scorer_path, or when that is empty from scorers/NAME.kvs (NAME:
       the model file's name without .gguf) */
    char       scorer_path[512];
    llm_scorer scorer;
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

/* What build/demo and build/quality put before a document. */
#define TEXT_INSTRUCTION "Read the document below, then answer the question after it in a few words.\n\n"

/* A question about a context as the model reads it: one chat turn (raw: the
   text as it is) holding instruction + context + "\n\nQuestion: " +
   question, tokenized in two parts. prefix: up to the end of the context
   (aware: the whole prompt, question included), what is compressed; suffix:
   the rest (aware: nothing), read after compression. The context's trailing
   white space is dropped, so the split falls after a character the
   pre-tokenizers always split after, and the two parts are the ids of the
   whole prompt. */
typedef struct text_prompt {
    int32_t *prefix, *suffix;  /* [n_prefix], [n_suffix] */
    int64_t  n_prefix, n_suffix;
} text_prompt;

/* Returns 0, or -1 with a message (invalid UTF-8, a NUL byte in the text,
   no chat tokens in the vocabulary). Free with text_prompt_free. */
int  text_question_prompt(const text_model *m, const char *instruction, const char *context,
                          size_t context_length, const char *question, int aware, int raw,
                          text_prompt *prompt, char *error, size_t error_size);
void text_prompt_free(text_prompt *prompt);

/* One answer from a prefilled prefix: work = base (same model and
   capacity), compressed to floor(fraction * prefix) rows per KV head with
   config (config NULL: the full cache), then the suffix read and up to
   max_new tokens generated greedily into reply. scores (NULL: config's
   policy scores the cache) are [L][Hk][prefix] scores to select by instead
   (text_reconstruction_scores'). base_logits: base's last
   logits ([vocab]); logits: [vocab] work memory. *evict_seconds gets kvec's
   time. Returns 0, or -1 with a message. */
int text_answer(const text_model *m, const llm_cache *base, const float *base_logits, llm_cache *work,
                float *logits, const kvec_config *config, const float *scores, double fraction,
                const int32_t *suffix, int64_t n_suffix, int64_t max_new, char *reply, size_t reply_capacity,
                double *evict_seconds, char *error, size_t error_size);

/* Question-agnostic scores from a reconstruction pass (KVzip; policy name
   `kvzip`): after the prefill of ids[0 .. n) into cache (not yet evicted),
   the model is asked to repeat the user's text (everything after the chat
   header "<|im_start|>user\n"; a prompt without it is repeated whole):
   "\n\nRepeat the previous context exactly." + end of the user turn + the
   text, in chunks of TEXT_RECONSTRUCTION_CHUNK tokens, later chunks asked
   "... starting with" the previous chunk's last 8 tokens. Every context
   token gets kvec_reconstruction_scores' score; the header's first 4
   tokens score 1 (kept first), the rest of it 0. scores: [L][Hk][n]. The
   pass's rows are dropped: the cache holds the prompt again, unevicted.
   The cache needs text_reconstruction_positions(n) positions. Returns 0, or
   -1 with a message. Pass the scores to text_answer or llm_evict_scores. */
#define TEXT_RECONSTRUCTION_CHUNK 2048
int     text_reconstruction_scores(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n,
                                   float *scores, char *error, size_t error_size);
int64_t text_reconstruction_positions(int64_t n);

/* Where a policy (text_policy_parse's name) gets its scores: from kvec
   scoring the cache itself (TEXT_SCORES_SELF), from the reconstruction pass
   (kvzip, kvzip-kvec), from expected attention over the query log
   (expected, expected-kvec), or from a learned scorer run by the prefill
   (learned, learned-kvec). */
enum { TEXT_SCORES_SELF = 0, TEXT_SCORES_PASS = 1, TEXT_SCORES_EXPECTED = 2, TEXT_SCORES_LEARNED = 4 };
int text_policy_scores(const char *name);

/* What a cache needs before its prefill for the sources asked (TEXT_SCORES_*
   bits): with TEXT_SCORES_LEARNED, the model's scorer (read once, checked
   against the model) attached to the cache, so that the prefill computes
   the learned scores as it goes. Call it after llm_cache_init, before the
   prefill. Returns 0, or -1 with a message (no scorer for this model, a
   scorer for another one). */
int text_scores_prepare(text_model *m, llm_cache *cache, int sources, char *error, size_t error_size);

/* The scores of the policies that do not score the cache themselves, for one
   prefix, computed once and shared by every budget and policy that reads
   them. sources: TEXT_SCORES_* bits (OR of text_policy_scores over the
   policies in use). text_scores_compute runs on a prefilled cache of n
   positions that no eviction has touched (the pass needs
   text_scores_positions(sources, n) of capacity) and leaves it so; each
   computation's seconds are added to pass_seconds / expected_seconds.
   text_scores_of gives the [L][Hk][n] scores a policy selects by, or NULL
   for a policy that scores the cache itself. Returns 0, or -1 with a
   message. */
typedef struct text_scores {
    float  *pass, *expected, *learned; /* [L][Hk][n] each, when their source was asked for */
    int64_t entries;         /* floats each array holds */
    double  pass_seconds, expected_seconds;
    double  learned_seconds; /* the scorer's time inside the prefills */
} text_scores;
int64_t      text_scores_positions(int sources, int64_t n);
int          text_scores_compute(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, int sources,
                                 text_scores *scores, char *error, size_t error_size);
const float *text_scores_of(const text_scores *scores, const char *policy);
void         text_scores_free(text_scores *scores);
/* The index after the first "<|im_start|>user\n" in ids, or 0 (no chat header). */
int64_t text_user_start(const text_model *m, const int32_t *ids, int64_t n);

/* Whether reply contains answer, ignoring ASCII case: how answers are graded. */
int text_contains(const char *reply, const char *answer);

/* Bytes of the K and V rows in use in the cache (fp32, as the engine keeps
   them). */
int64_t text_cache_bytes(const llm_cache *cache);

/* Sets config (zeroed first) to the policy named `name`: kvec, snapkv,
   pyramidkv, streaming, h2o, tova, knorm, keydiff, random, criticalkv,
   laprox, and the budget modes adakv (SnapKV scores, Ada-KV's per-layer
   pool), kvec-ada, snap-global, kvec-global, laprox-global; with scores
   from elsewhere (text_policy_scores): kvzip (one budget for the model, no
   per-head floor), expected (uniform, as kvpress), and kvzip-kvec,
   expected-kvec: the same scores under K-VEC's coverage term
   (kvec_coverage_scores, mu 1 unless :mu= says). Returns 0, or -1 for an
   unknown name. */
int text_policy(const char *name, kvec_config *config);

/* As text_policy, and the name may carry K-VEC options after colons:
   `kvec:mu=0.5:terms=uniqueness+cross-layer:gamma=1:budget=adaptive`.
   Options: mu, beta, gamma, focus (terms.focus_cv), share
   (terms.attention_share), numbers > 0 (beta at most 1, share below 1); terms, names joined by '+' from uniqueness, rank-union,
   cross-head, cross-layer, head-focus, or `none` alone (= SnapKV's
   scores); budget, one of uniform, pyramid, adaptive, global; window, the
   last positions always kept (1..4096, default 32). The weights
   and terms need a K-VEC base name. Returns 0, or -1 with a message in
   error for an unknown name, a bad option or a combination kvec refuses. */
int text_policy_parse(const char *name, kvec_config *config, char *error, size_t error_size);
extern const char *const TEXT_POLICY_NAMES; /* the names above, for usage lines */
extern const char *const TEXT_POLICY_OPTIONS; /* text_policy_parse's options, for usage lines */

/* Seconds on a monotonic clock. */
double text_seconds(void);

#endif
