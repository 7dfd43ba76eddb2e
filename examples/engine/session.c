/* session.c - see session.h. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include "session.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int text_model_load(text_model *m, const char *path, char *error, size_t error_size) {
    gguf_file file;
    const char *base = strrchr(path, '/');
    memset(m, 0, sizeof *m);
    if (llm_load(&m->model, path, error, error_size)) return -1;
    if (gguf_open(&file, path, error, error_size)) { llm_free(&m->model); return -1; }
    if (tokenizer_load(&m->tok, &file, error, error_size)) {
        gguf_close(&file);
        llm_free(&m->model);
        return -1;
    }
    snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : path);
    gguf_close(&file);
    m->stop[0] = m->tok.im_end_id;
    m->stop[1] = m->tok.eos_id;
    m->stop[2] = -1;
    return 0;
}

void text_model_free(text_model *m) {
    llm_scorer_free(&m->scorer);
    tokenizer_free(&m->tok);
    llm_free(&m->model);
    memset(m, 0, sizeof *m);
}

int64_t text_encode(const text_model *m, const char *text, size_t length, int32_t **ids,
                    char *error, size_t error_size) {
    /* every token covers at least one byte of the text: length ids suffice */
    if (!(*ids = (int32_t *)malloc((length + 1) * sizeof(int32_t)))) {
        snprintf(error, error_size, "out of memory for a text of %zu bytes", length);
        return -1;
    }
    return tokenizer_encode(&m->tok, text, length, TOKENIZER_PARSE_SPECIAL, *ids, (int64_t)length + 1,
                            error, error_size);
}

int text_prefill(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n,
                 float *last_logits, FILE *progress) {
    const int64_t step = 256; /* tokens between progress updates */
    double start = text_seconds();
    int64_t done = 0;
    if (n < 1) return -1;
    if (n - 1 <= step) progress = NULL; /* short: nothing to watch */
    while (done < n - 1) { /* every token but the last: no logits needed */
        int64_t m_tokens = n - 1 - done < step ? n - 1 - done : step;
        if (llm_forward(&m->model, cache, ids + done, m_tokens, NULL)) return -1;
        done += m_tokens;
        if (progress) {
            double elapsed = text_seconds() - start;
            fprintf(progress, "\rprefill: %lld/%lld tokens, %.1f s, %.0f tokens/s", (long long)done,
                    (long long)n, elapsed, (double)done / (elapsed > 0 ? elapsed : 1e-9));
            fflush(progress);
        }
    }
    if (progress && n > 1) fputc('\n', progress);
    return llm_forward(&m->model, cache, ids + n - 1, 1, last_logits);
}

static int32_t argmax(const float *logits, int64_t n) {
    int64_t best = 0, v;
    for (v = 1; v < n; v++)
        if (logits[v] > logits[best]) best = v;
    return (int32_t)best;
}

int64_t text_generate(const text_model *m, llm_cache *cache, float *logits, int64_t max_new,
                      char *out, size_t capacity) {
    int32_t generated[256];
    int64_t n = 0, length;
    if (max_new > 256) max_new = 256;
    while (n < max_new) {
        int32_t next = argmax(logits, m->model.config.vocab_size);
        if (next == m->stop[0] || next == m->stop[1]) break;
        generated[n++] = next;
        if (n == max_new) break;
        if (llm_forward(&m->model, cache, &next, 1, logits)) return -1;
    }
    length = tokenizer_decode(&m->tok, generated, n, out, capacity);
    if (capacity) out[length < 0 ? 0 : (size_t)length < capacity ? (size_t)length : capacity - 1] = '\0';
    return n;
}

int text_question_prompt(const text_model *m, const char *instruction, const char *context,
                         size_t context_length, const char *question, int aware, int raw,
                         text_prompt *prompt, char *error, size_t error_size) {
    size_t user_bytes, head, split;
    int64_t total;
    char *user = NULL, *text = NULL;
    int status = -1;
    memset(prompt, 0, sizeof *prompt);
    while (context_length && (context[context_length - 1] == ' ' || context[context_length - 1] == '\n' ||
                              context[context_length - 1] == '\r' || context[context_length - 1] == '\t'))
        context_length--;
    if (memchr(context, '\0', context_length)) {
        gguf_error(error, error_size, "the text holds a NUL byte");
        return -1;
    }
    user_bytes = strlen(instruction) + context_length + strlen(question) + 16;
    if (!(user = (char *)malloc(user_bytes))) goto out_of_memory;
    head = strlen(instruction);
    memcpy(user, instruction, head);
    memcpy(user + head, context, context_length);
    snprintf(user + head + context_length, user_bytes - head - context_length, "\n\nQuestion: %s", question);
    if (raw) {
        text = user;
        user = NULL;
        total = (int64_t)strlen(text);
    } else {
        total = tokenizer_chat_prompt(&m->tok, NULL, user, NULL, 0);
        if (total < 0) {
            gguf_error(error, error_size, "the vocabulary has no <|im_start|> / <|im_end|> for the chat prompt");
            goto done;
        }
        if (!(text = (char *)malloc((size_t)total + 1))) goto out_of_memory;
        tokenizer_chat_prompt(&m->tok, NULL, user, text, (size_t)total + 1);
    }
    /* the user turn starts where the chat template put it */
    split = (size_t)total;
    if (!aware) {
        const char *turn = user ? strstr(text, user) : text;
        split = (size_t)(turn - text) + head + context_length;
    }
    if ((prompt->n_prefix = text_encode(m, text, split, &prompt->prefix, error, error_size)) < 0 ||
        (prompt->n_suffix = text_encode(m, text + split, (size_t)total - split, &prompt->suffix, error,
                                        error_size)) < 0)
        goto done;
    status = 0;
    goto done;
out_of_memory:
    gguf_error(error, error_size, "out of memory for the prompt");
done:
    free(user);
    free(text);
    if (status) text_prompt_free(prompt);
    return status;
}

void text_prompt_free(text_prompt *prompt) {
    free(prompt->prefix);
    free(prompt->suffix);
    memset(prompt, 0, sizeof *prompt);
}

int text_answer(const text_model *m, const llm_cache *base, const float *base_logits, llm_cache *work,
                float *logits, const kvec_config *config, const float *scores, double fraction,
                const int32_t *suffix, int64_t n_suffix, int64_t max_new, char *reply, size_t reply_capacity,
                double *evict_seconds, char *error, size_t error_size) {
    double start;
    llm_cache_copy(work, base);
    start = text_seconds();
    if (config) {
        const int64_t budget = (int64_t)(fraction * (double)base->n_positions);
        kvec_result r = scores ? llm_evict_scores(work, config, budget, scores, NULL)
                               : llm_evict(work, config, budget, NULL);
        if (r != KVEC_OK) return gguf_error(error, error_size, "kvec: %s", kvec_result_string(r));
    }
    *evict_seconds = text_seconds() - start;
    if (n_suffix) {
        if (text_prefill(m, work, suffix, n_suffix, logits, NULL))
            return gguf_error(error, error_size, "the question does not fit in the cache");
    } else {
        memcpy(logits, base_logits, (size_t)m->model.config.vocab_size * sizeof(float));
    }
    if (text_generate(m, work, logits, max_new, reply, reply_capacity) < 0)
        return gguf_error(error, error_size, "the cache filled up while answering");
    return 0;
}

int text_contains(const char *reply, const char *answer) {
    size_t n = strlen(answer), i;
    for (; *reply; reply++) {
        for (i = 0; i < n && reply[i] && tolower((unsigned char)reply[i]) == tolower((unsigned char)answer[i]); i++) {}
        if (i == n) return 1;
    }
    return n == 0;
}

int64_t text_cache_bytes(const llm_cache *cache) {
    int64_t rows = 0, i;
    for (i = 0; i < (int64_t)cache->n_layers * cache->n_kv_heads; i++) rows += cache->length[i];
    return rows * cache->head_dim * 2 * (int64_t)sizeof(float);
}

const char *const TEXT_POLICY_NAMES =
    "kvec snapkv pyramidkv streaming h2o tova knorm keydiff random criticalkv laprox"
    " adakv kvec-ada snap-global kvec-global laprox-global kvzip kvzip-kvec expected expected-kvec"
    " learned learned-kvec";

/* Whether the base of a policy name (before any ':') is `base`. */
static int base_is(const char *name, const char *base) {
    const size_t n = strcspn(name, ":");
    return n == strlen(base) && !strncmp(name, base, n);
}

int text_policy_scores(const char *name) {
    if (base_is(name, "kvzip") || base_is(name, "kvzip-kvec")) return TEXT_SCORES_PASS;
    if (base_is(name, "expected") || base_is(name, "expected-kvec")) return TEXT_SCORES_EXPECTED;
    if (base_is(name, "learned") || base_is(name, "learned-kvec")) return TEXT_SCORES_LEARNED;
    return TEXT_SCORES_SELF;
}

int text_scores_prepare(text_model *m, llm_cache *cache, int sources, char *error, size_t error_size) {
    if (!(sources & TEXT_SCORES_LEARNED)) return 0;
    if (!m->scorer.layers) {
        char path[600];
        if (m->scorer_path[0]) snprintf(path, sizeof path, "%s", m->scorer_path);
        else llm_scorer_default_path(m->name, path, sizeof path);
        if (llm_scorer_load(&m->scorer, path, &m->model, error, error_size)) {
            if (!m->scorer_path[0]) { /* the default: say how to get one */
                const size_t used = strlen(error);
                snprintf(error + used, error_size > used ? error_size - used : 0,
                         " (scorers are trained per model: `make scorer MODEL=FILE.gguf`, docs/LEARNED.md; "
                         "--scorer FILE names another file)");
            }
            return -1;
        }
    }
    if (llm_cache_set_scorers(cache, m->scorer.layers))
        return gguf_error(error, error_size, "out of memory for the learned scores");
    return 0;
}

/* The scorer's output for positions 0 .. n-1 of a prefilled cache, as the
   masses kvec selects by ([L][Hk][n], kvec_learned_masses): the 4 sinks
   always kept, the rest of a chat header before the user's text first to
   go, as in the reconstruction pass. */
static int learned_scores(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, float *scores) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, cap = cache->capacity;
    int64_t header, h;
    if (!cache->scorers || cache->learned_failed || cache->n_positions < n) return -1;
    header = text_user_start(m, ids, n);
    for (h = 0; h < L * Hk; h++)
        if (kvec_learned_masses(cache->scorers[0].output, cache->learned + h * cap, n, 4, header, scores + h * n) !=
            KVEC_OK)
            return -1;
    return 0;
}

int64_t text_scores_positions(int sources, int64_t n) {
    return (sources & TEXT_SCORES_PASS) ? text_reconstruction_positions(n) : n;
}

/* *array grown to hold `entries` floats. */
static int scores_array(float **array, int64_t entries, int64_t *have) {
    float *grown;
    if (*array && entries <= *have) return 0;
    if (!(grown = (float *)realloc(*array, (size_t)entries * sizeof(float)))) return -1;
    *array = grown;
    return 0;
}

int text_scores_compute(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, int sources,
                        text_scores *s, char *error, size_t error_size) {
    const int64_t entries = (int64_t)m->model.config.n_layers * m->model.config.n_kv_heads * n;
    int64_t have = s->entries;
    double started;
    if (((sources & TEXT_SCORES_PASS) && scores_array(&s->pass, entries, &have)) ||
        ((sources & TEXT_SCORES_EXPECTED) && scores_array(&s->expected, entries, &have)) ||
        ((sources & TEXT_SCORES_LEARNED) && scores_array(&s->learned, entries, &have)))
        return gguf_error(error, error_size, "out of memory for the scores of %lld positions", (long long)n);
    if (entries > s->entries) s->entries = entries; /* every array asked for now holds as much */
    if (sources & TEXT_SCORES_PASS) {
        started = text_seconds();
        if (text_reconstruction_scores(m, cache, ids, n, s->pass, error, error_size)) return -1;
        s->pass_seconds += text_seconds() - started;
    }
    if (sources & TEXT_SCORES_EXPECTED) {
        started = text_seconds();
        if (llm_expected_scores(&m->model, cache, s->expected))
            return gguf_error(error, error_size, "expected attention failed (an evicted cache, or out of memory)");
        s->expected_seconds += text_seconds() - started;
    }
    if (sources & TEXT_SCORES_LEARNED) {
        if (learned_scores(m, cache, ids, n, s->learned))
            return gguf_error(error, error_size, "no learned scores: the prefill ran without the scorer "
                              "(text_scores_prepare), or its states were not finite");
        s->learned_seconds += cache->learned_seconds; /* spent inside the prefill */
        cache->learned_seconds = 0.0;
    }
    return 0;
}

const float *text_scores_of(const text_scores *s, const char *policy) {
    switch (text_policy_scores(policy)) {
    case TEXT_SCORES_PASS: return s->pass;
    case TEXT_SCORES_EXPECTED: return s->expected;
    case TEXT_SCORES_LEARNED: return s->learned;
    default: return NULL;
    }
}

void text_scores_free(text_scores *s) {
    free(s->pass);
    free(s->expected);
    free(s->learned);
    memset(s, 0, sizeof *s);
}

int64_t text_user_start(const text_model *m, const int32_t *ids, int64_t n) {
    const int32_t start = tokenizer_find(&m->tok, "<|im_start|>");
    int32_t user[2], newline[2];
    char error[64];
    int64_t i;
    /* "user" and "\n" are one token each in both vocabularies; where they
       are not, no header is recognised and the whole prefix is context */
    if (start < 0 || tokenizer_encode(&m->tok, "user", 4, 0, user, 2, error, sizeof error) != 1 ||
        tokenizer_encode(&m->tok, "\n", 1, 0, newline, 2, error, sizeof error) != 1)
        return 0;
    for (i = 0; i + 3 <= n; i++)
        if (ids[i] == start && ids[i + 1] == user[0] && ids[i + 2] == newline[0]) return i + 3;
    return 0;
}

/* KVzip's repeat prompts: the first chunk's, and the later chunks', which
   quote the last REPEAT_TAIL tokens of the chunk before. */
#define REPEAT_FIRST "\n\nRepeat the previous context exactly."
#define REPEAT_NEXT  "\n\nRepeat the part of the previous context exactly, starting with"
#define REPEAT_TAIL  8 /* tokens of the previous chunk quoted before the next */

int64_t text_reconstruction_positions(int64_t n) {
    const int64_t chunk = n < TEXT_RECONSTRUCTION_CHUNK ? n : TEXT_RECONSTRUCTION_CHUNK;
    return n + chunk + 64; /* the prompt, the turn's end and the quoted tail take under 64 */
}

static int reconstruction_scores(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, float *scores,
                                 char *error, size_t error_size);

int text_reconstruction_scores(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, float *scores,
                               char *error, size_t error_size) {
    const kvec_scorer *scorers = cache->scorers; /* the pass's rows are not the prompt's: no learned scores for them */
    int status;
    cache->scorers = NULL;
    status = reconstruction_scores(m, cache, ids, n, scores, error, error_size);
    cache->scorers = scorers;
    return status;
}

static int reconstruction_scores(const text_model *m, llm_cache *cache, const int32_t *ids, int64_t n, float *scores,
                                 char *error, size_t error_size) {
    const int64_t L = m->model.config.n_layers, Hk = m->model.config.n_kv_heads;
    const int64_t header = text_user_start(m, ids, n);
    const int chat = header > 0;
    int32_t *pass = NULL, *first = NULL, *next = NULL, *turn_end = NULL;
    int64_t n_first, n_next, n_turn_end, begin, i, j;
    int status = -1;
    if (cache->n_positions != n) return gguf_error(error, error_size, "the cache does not hold the prompt");
    if ((n_first = text_encode(m, REPEAT_FIRST, strlen(REPEAT_FIRST), &first, error, error_size)) < 0 ||
        (n_next = text_encode(m, REPEAT_NEXT, strlen(REPEAT_NEXT), &next, error, error_size)) < 0 ||
        (n_turn_end = chat ? text_encode(m, "<|im_end|>\n<|im_start|>assistant\n", 33, &turn_end, error, error_size)
                           : text_encode(m, "\n", 1, &turn_end, error, error_size)) < 0)
        goto done;
    if (!(pass = (int32_t *)malloc((size_t)(n_next + REPEAT_TAIL + n_turn_end + TEXT_RECONSTRUCTION_CHUNK) * sizeof(int32_t)))) {
        gguf_error(error, error_size, "out of memory for the reconstruction pass");
        goto done;
    }
    /* The header before the user's text is not repeated: its first 4
       tokens (the attention sinks) are kept, the rest scores 0. */
    for (i = 0; i < L * Hk; i++)
        for (j = 0; j < header; j++) scores[i * n + j] = j < 4 ? 1.0f : 0.0f;
    for (begin = header; begin < n; begin += TEXT_RECONSTRUCTION_CHUNK) {
        const int64_t end = n - begin < TEXT_RECONSTRUCTION_CHUNK ? n : begin + TEXT_RECONSTRUCTION_CHUNK;
        int64_t used = 0;
        if (begin == header) {
            memcpy(pass, first, (size_t)n_first * sizeof(int32_t));
            used = n_first;
        } else { /* "... starting with" the last tokens of the chunk before */
            memcpy(pass, next, (size_t)n_next * sizeof(int32_t));
            memcpy(pass + n_next, ids + begin - REPEAT_TAIL, REPEAT_TAIL * sizeof(int32_t));
            used = n_next + REPEAT_TAIL;
        }
        memcpy(pass + used, turn_end, (size_t)n_turn_end * sizeof(int32_t));
        used += n_turn_end;
        memcpy(pass + used, ids + begin, (size_t)(end - begin) * sizeof(int32_t));
        used += end - begin;
        if (llm_reconstruction_pass(&m->model, cache, pass, used, begin, end, scores)) {
            gguf_error(error, error_size, "the reconstruction pass failed (%lld positions needed, the cache holds %lld)",
                       (long long)(n + used), (long long)cache->capacity);
            goto done;
        }
    }
    status = 0;
done:
    free(pass);
    free(first);
    free(next);
    free(turn_end);
    return status;
}

const char *const TEXT_POLICY_OPTIONS =
    "K-VEC options after the name: kvec:share=0.5:mu=2:terms=uniqueness+rank-union+cross-layer:gamma=1:budget=adaptive\n"
    "  (share: attention's share of the rank union, default 0.25; mu, beta, gamma, focus: term weights)\n"
    "Any policy: budget=uniform|pyramid|adaptive|global, window=N (the last N positions always kept, default 32)\n";

/* One `key=value` option of a policy name; returns 0, or -1 with a message. */
static int policy_option(const char *option, kvec_config *config, char *error, size_t error_size) {
    static const struct { const char *name; uint32_t bit; } terms[] = {
        {"uniqueness", KVEC_TERM_UNIQUENESS},   {"rank-union", KVEC_TERM_RANK_UNION},
        {"cross-head", KVEC_TERM_CROSS_HEAD},   {"cross-layer", KVEC_TERM_CROSS_LAYER},
        {"head-focus", KVEC_TERM_HEAD_FOCUS},   {"none", KVEC_TERM_NONE}};
    static const struct { const char *name; kvec_budget_mode mode; } modes[] = {
        {"uniform", KVEC_BUDGET_UNIFORM}, {"pyramid", KVEC_BUDGET_PYRAMID},
        {"adaptive", KVEC_BUDGET_ADAPTIVE}, {"global", KVEC_BUDGET_GLOBAL}};
    const char *equals = strchr(option, '='), *value;
    size_t key_length, i;
    if (!equals || equals == option || !equals[1])
        return gguf_error(error, error_size, "option '%s' is not key=value", option);
    key_length = (size_t)(equals - option);
    value = equals + 1;
#define KEY_IS(k) (key_length == strlen(k) && !strncmp(option, k, key_length))
    if (KEY_IS("mu") || KEY_IS("beta") || KEY_IS("gamma") || KEY_IS("focus") || KEY_IS("share")) {
        char *end;
        double number = strtod(value, &end);
        /* Zero means "the default" in kvec_config, so it cannot be asked for
           here: leave the term out instead. */
        if (end == value || *end || !(number > 0 && number <= 1e6))
            return gguf_error(error, error_size, "%.*s must be a number in (0, 1e6]: '%s'", (int)key_length, option,
                              value);
        if (KEY_IS("beta") && number > 1) return gguf_error(error, error_size, "beta must be in (0, 1]: '%s'", value);
        if (KEY_IS("share") && number >= 1) return gguf_error(error, error_size, "share must be in (0, 1): '%s'", value);
        if (config->policy != KVEC_POLICY_KVEC)
            return gguf_error(error, error_size, "%.*s is a K-VEC weight", (int)key_length, option);
        if (KEY_IS("mu")) config->terms.mu = (float)number;
        else if (KEY_IS("beta")) config->terms.beta = (float)number;
        else if (KEY_IS("gamma")) config->terms.gamma = (float)number;
        else if (KEY_IS("share")) config->terms.attention_share = (float)number;
        else config->terms.focus_cv = (float)number;
        return 0;
    }
    if (KEY_IS("terms")) { /* names joined by '+' */
        uint32_t bits = 0;
        if (config->policy != KVEC_POLICY_KVEC) return gguf_error(error, error_size, "terms are K-VEC's");
        while (*value) {
            size_t n = strcspn(value, "+");
            for (i = 0; i < sizeof terms / sizeof terms[0]; i++)
                if (n == strlen(terms[i].name) && !strncmp(value, terms[i].name, n)) break;
            if (i == sizeof terms / sizeof terms[0])
                return gguf_error(error, error_size,
                                  "unknown term '%.*s' (uniqueness, rank-union, cross-head, cross-layer, head-focus, "
                                  "none; joined by +)", (int)n, value);
            bits |= terms[i].bit;
            value += value[n] ? n + 1 : n;
        }
        if ((bits & KVEC_TERM_NONE) && bits != KVEC_TERM_NONE)
            return gguf_error(error, error_size, "term 'none' goes alone");
        config->terms.enabled = bits;
        return 0;
    }
    if (KEY_IS("window")) { /* the last positions always kept (and, for attention policies, the query rows) */
        char *end;
        long long rows = strtoll(value, &end, 10);
        if (end == value || *end || rows < 1 || rows > 4096)
            return gguf_error(error, error_size, "window must be a whole number of positions in 1..4096: '%s'", value);
        config->window = (int64_t)rows;
        return 0;
    }
    if (KEY_IS("budget")) {
        for (i = 0; i < sizeof modes / sizeof modes[0]; i++)
            if (!strcmp(value, modes[i].name)) { config->budget_mode = modes[i].mode; return 0; }
        return gguf_error(error, error_size, "unknown budget '%s' (uniform, pyramid, adaptive, global)", value);
    }
#undef KEY_IS
    return gguf_error(error, error_size, "unknown option '%.*s' (mu, beta, gamma, focus, share, terms, budget, window)",
                      (int)key_length, option);
}

int text_policy_parse(const char *name, kvec_config *config, char *error, size_t error_size) {
    static const struct { const char *name; kvec_policy policy; kvec_budget_mode mode; } known[] = {
        {"kvec", KVEC_POLICY_KVEC, KVEC_BUDGET_DEFAULT},
        {"snapkv", KVEC_POLICY_SNAPKV, KVEC_BUDGET_DEFAULT},
        {"pyramidkv", KVEC_POLICY_PYRAMIDKV, KVEC_BUDGET_DEFAULT},
        {"streaming", KVEC_POLICY_STREAMING, KVEC_BUDGET_DEFAULT},
        {"h2o", KVEC_POLICY_H2O, KVEC_BUDGET_DEFAULT},
        {"tova", KVEC_POLICY_TOVA, KVEC_BUDGET_DEFAULT},
        {"knorm", KVEC_POLICY_KNORM, KVEC_BUDGET_DEFAULT},
        {"keydiff", KVEC_POLICY_KEYDIFF, KVEC_BUDGET_DEFAULT},
        {"random", KVEC_POLICY_RANDOM, KVEC_BUDGET_DEFAULT},
        {"criticalkv", KVEC_POLICY_CRITICALKV, KVEC_BUDGET_DEFAULT},
        {"laprox", KVEC_POLICY_LAPROX, KVEC_BUDGET_DEFAULT},
        {"laprox-global", KVEC_POLICY_LAPROX, KVEC_BUDGET_GLOBAL},
        {"adakv", KVEC_POLICY_SNAPKV, KVEC_BUDGET_ADAPTIVE},
        {"kvec-ada", KVEC_POLICY_KVEC, KVEC_BUDGET_ADAPTIVE},
        {"snap-global", KVEC_POLICY_SNAPKV, KVEC_BUDGET_GLOBAL},
        {"kvec-global", KVEC_POLICY_KVEC, KVEC_BUDGET_GLOBAL},
        /* scores from the reconstruction pass (text_reconstruction_scores);
           one budget for the whole model and no per-head floor, as KVzip */
        {"kvzip", KVEC_POLICY_SNAPKV, KVEC_BUDGET_GLOBAL},
        {"kvzip-kvec", KVEC_POLICY_KVEC, KVEC_BUDGET_GLOBAL},
        /* expected attention, one budget per head as kvpress */
        {"expected", KVEC_POLICY_SNAPKV, KVEC_BUDGET_DEFAULT},
        {"expected-kvec", KVEC_POLICY_KVEC, KVEC_BUDGET_DEFAULT},
        /* a learned scorer's predictions (text_scores_prepare): one budget
           for the model, as the reconstruction scores they stand in for */
        {"learned", KVEC_POLICY_SNAPKV, KVEC_BUDGET_GLOBAL},
        {"learned-kvec", KVEC_POLICY_KVEC, KVEC_BUDGET_GLOBAL}};
    char option[64];
    const char *rest;
    size_t base_length = strcspn(name, ":"), i;
    kvec_config resolved;
    memset(config, 0, sizeof *config);
    for (i = 0; i < sizeof known / sizeof known[0]; i++)
        if (base_length == strlen(known[i].name) && !strncmp(name, known[i].name, base_length)) break;
    if (i == sizeof known / sizeof known[0])
        return gguf_error(error, error_size, "unknown policy '%.*s' (%s)", (int)base_length, name, TEXT_POLICY_NAMES);
    config->policy = known[i].policy;
    config->budget_mode = known[i].mode;
    if (text_policy_scores(name) == TEXT_SCORES_PASS || text_policy_scores(name) == TEXT_SCORES_LEARNED)
        config->head_floor = -1.0f;
    /* over given scores K-VEC has one term, uniqueness (kvec_coverage_scores) */
    if (text_policy_scores(name) != TEXT_SCORES_SELF && config->policy == KVEC_POLICY_KVEC)
        config->terms.enabled = KVEC_TERM_UNIQUENESS;
    for (rest = name + base_length; *rest == ':'; rest += strlen(option) + 1) {
        size_t n = strcspn(rest + 1, ":");
        if (n >= sizeof option) return gguf_error(error, error_size, "option '%.*s' is too long", (int)n, rest + 1);
        memcpy(option, rest + 1, n);
        option[n] = '\0';
        if (policy_option(option, config, error, error_size)) { memset(config, 0, sizeof *config); return -1; }
    }
    if (text_policy_scores(name) != TEXT_SCORES_SELF &&
        ((config->policy == KVEC_POLICY_KVEC && config->terms.enabled != KVEC_TERM_UNIQUENESS) ||
         config->terms.beta != 0 || config->terms.gamma != 0 || config->terms.focus_cv != 0 ||
         config->terms.attention_share != 0)) {
        memset(config, 0, sizeof *config);
        return gguf_error(error, error_size, "'%s': over given scores only mu and budget apply", name);
    }
    /* Pairs kvec.h refuses (the cross-head reserve with a pooled budget, the
       cross-layer term with a model-wide pool) are refused here, by name. */
    if (kvec_resolve_config(config, &resolved) != KVEC_OK) {
        memset(config, 0, sizeof *config);
        return gguf_error(error, error_size, "'%s': kvec refuses this combination (cross-head needs a per-head "
                          "budget, cross-layer cannot go with budget=global)", name);
    }
    return 0;
}

int text_policy(const char *name, kvec_config *config) {
    char error[256];
    return text_policy_parse(name, config, error, sizeof error);
}

double text_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}
