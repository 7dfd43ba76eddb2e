/* measure.c - how much of the full cache's behaviour each route keeps, in
   llama.cpp, on real text.

   kvec-llama-measure --model FILE.gguf [--prompts A.txt,B.txt,..]
                      [--budgets 0.5,0.25,0.1] [--policies kvec,snapkv,..]
                      [--modes uniform,pyramid,adaptive,global]
                      [--continuation T] [--max-prefix N] [--flash-attn on|off]
                      [--threads N] [--qa-document FILE --qa-questions FILE | --tasks FILE.jsonl | --no-qa]
                      [--no-kl] [--decode N [--decode-prefix P] [--decode-length L]]

   KL and top-1: each prompt's last T tokens (64) are a teacher-forced
   continuation of the prefix before them. The prefix is prefilled once
   (kvec's callback capturing the last 32 queries), saved with
   llama_state_seq_get_data, and restored before each route; the route
   evicts down to B = budget * prefix cells per KV head; the continuation is
   decoded in one batch and its T next-token distributions compared with the
   full cache's: KL(full || route) in nats, and whether the argmax agrees,
   averaged over steps and prompts.

   Routes: kvec per head (each policy: every KV head keeps its own tokens,
   moved to the last B cells, llama_memory_seq_rm of the first N-B
   positions); "vote" (one position set for all heads: the B positions most
   heads of K-VEC's plan keep, the rest removed with llama_memory_seq_rm);
   "seq_rm middle" (the first 4 positions and the last B-4, what
   llama_memory_seq_rm alone gives); "n_keep shift" (the same set, then
   llama_memory_seq_add moves the recent part down to follow the 4 kept
   ones, as llama.cpp's context shift with --keep 4 does: K is re-rotated
   and decoding goes on at position B).

   --decode N: eviction during decoding instead. Each prompt's first
   --decode-prefix tokens (256) are prefilled and the cache evicted to
   B = budget * prefix cells; the next --decode-length tokens (768, or what
   the prompt has) are teacher-forced in chunks of N, and after each chunk
   the cache is evicted back to B: kvec per head (kvec_llama_reevict, each
   policy), and StreamingLLM through llama_memory_seq_rm (the first 4
   positions and the last B - 4). "kvec once" evicts after the prefill only
   and lets the cache grow. KL and top-1 against the full cache over every
   continuation token; the cache never holds more than B + N cells.

   --modes: the kvec budget modes of the per-head routes. Anything but
   uniform gives heads different lengths (B is then their average) and
   needs the build against kvec-per-head.patch (make llama-measure-patched);
   the "longest head" column is the cells the cache still holds after the
   eviction (the longest head's; shorter heads' surplus cells are masked,
   not freed), as a share of the prefix.

   Task accuracy: the document is prefilled and evicted once per route and
   budget, then each question is read from the evicted cache and answered
   greedily (24 tokens); right when the reply contains the answer (case
   ignored). --tasks FILE.jsonl (the files in bench/tasks, bench/make_tasks.py)
   does the same for each sample's context and question (a 24-token reply
   holds every answer there). The question comes after the eviction (one cached document,
   many questions), as in kvec's own engine demo (examples/engine/demo.c). */
#define KVEC_IMPLEMENTATION
#include "kvec_llama.h"
#include "util.h"
#include "../engine/json.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROMPTS   16
#define MAX_BUDGETS   8
#define MAX_METHODS   32
#define MAX_QUESTIONS 32
#define N_SINKS       4
#define ANSWER_TOKENS 24

static const char *INSTRUCTION = "Read the document below, then answer the question after it in a few words.\n\n";

enum { ROUTE_FULL, ROUTE_PER_HEAD, ROUTE_VOTE, ROUTE_MIDDLE, ROUTE_SHIFT };

typedef struct method {
    char        name[40];
    int         route;
    kvec_policy policy;
    kvec_budget_mode mode;
    /* [budget] sums over prompts and steps */
    double      kl[MAX_BUDGETS], kl_sq[MAX_BUDGETS], agree[MAX_BUDGETS], steps[MAX_BUDGETS];
    double      evict_ms[MAX_BUDGETS], evictions[MAX_BUDGETS], held[MAX_BUDGETS];
    int         correct[MAX_BUDGETS], asked[MAX_BUDGETS];
} method;

typedef struct run {
    struct llama_context *ctx;
    const struct llama_vocab *vocab;
    kvec_llama *kl;
    uint8_t *state;        /* the prefilled prefix, llama_state_seq_get_data */
    size_t state_bytes;
    uint8_t *k0;           /* layer 0's K over the prefix cells, to check each restore */
    size_t k0_bytes;
} run;

static int split_list(char *list, char **items, int cap) {
    int n = 0;
    char *s = strtok(list, ",");
    while (s && n < cap) { items[n++] = s; s = strtok(NULL, ","); }
    return n;
}

static int contains_ignoring_case(const char *text, const char *needle) {
    size_t n = strlen(needle), i, j;
    for (i = 0; text[i]; i++) {
        for (j = 0; j < n && text[i + j] && tolower((unsigned char)text[i + j]) == tolower((unsigned char)needle[j]); j++) {}
        if (j == n) return 1;
    }
    return 0;
}

/* Prefill the prefix with the capture on, and save it. */
static int prefill(run *r, const llama_token *tokens, int64_t N, double *capture_ms, double *plain_ms) {
    llama_memory_t mem = llama_get_memory(r->ctx);
    kvec_layer layer0;
    double t0;
    int64_t t;
    llama_memory_clear(mem, true);
    t0 = util_ms();
    if (util_decode(r->ctx, tokens, N, 0, 0)) return -1;
    *plain_ms = util_ms() - t0;
    llama_memory_clear(mem, true);
    if (kvec_llama_begin(r->kl, N)) return -1;
    t0 = util_ms();
    if (util_decode(r->ctx, tokens, N, 0, 0)) return -1;
    *capture_ms = util_ms() - t0;
    if (kvec_llama_check(r->kl, r->ctx)) return -1;
    free(r->state);
    r->state_bytes = llama_state_seq_get_size(r->ctx, 0);
    if (!(r->state = (uint8_t *)malloc(r->state_bytes)) ||
        llama_state_seq_get_data(r->ctx, r->state, r->state_bytes, 0) != r->state_bytes)
        return -1;
    /* the K rows of layer 0, copied from the view, to compare after restores */
    {
        kvec_layer *layers = (kvec_layer *)calloc((size_t)r->kl->n_layers, sizeof *layers);
        if (!layers) return -1;
        kvec_llama_views(r->kl, layers);
        layer0 = layers[0];
        free(layers);
    }
    free(r->k0);
    r->k0_bytes = (size_t)(N * layer0.keys.stride_token);
    if (!(r->k0 = (uint8_t *)malloc(r->k0_bytes))) return -1;
    for (t = 0; t < N; t++)
        memcpy(r->k0 + t * layer0.keys.stride_token, (char *)layer0.keys.data + t * layer0.keys.stride_token,
               (size_t)layer0.keys.stride_token);
    return 0;
}

static int restore(run *r) {
    llama_memory_t mem = llama_get_memory(r->ctx);
    kvec_layer *layers;
    int same;
    llama_memory_seq_rm(mem, 0, -1, -1);
#ifdef KVEC_LLAMA_PER_HEAD
    llama_memory_set_head_pos_min(mem, NULL, 0); /* the state does not carry the head limits */
#endif
    if (llama_state_seq_set_data(r->ctx, r->state, r->state_bytes, 0) == 0) return -1;
    if (kvec_llama_check(r->kl, r->ctx)) return -1;
    if (!(layers = (kvec_layer *)calloc((size_t)r->kl->n_layers, sizeof *layers))) return -1;
    kvec_llama_views(r->kl, layers);
    /* the restore must put the prefix back into the cells the capture saw */
    same = memcmp(layers[0].keys.data, r->k0, r->k0_bytes) == 0;
    free(layers);
    if (!same) { fprintf(stderr, "measure: the restored prefix is not in its original cells\n"); return -1; }
    return 0;
}

/* Evicts by one route to B cells per head; *next_pos gets where decoding
   goes on, *held the cells the sequence still holds. */
static int evict(run *r, const method *m, int64_t B, int64_t *next_pos, double *ms, int64_t *held) {
    kvec_llama *kl = r->kl;
    int64_t N = kl->n_prefix, p;
    double t0 = util_ms();
    uint8_t *keep = NULL;
    int rc = -1;
    kvec_config config;
    memset(&config, 0, sizeof config);
    *next_pos = N;
    *held = m->route == ROUTE_FULL ? N : B;
    if (m->route == ROUTE_FULL) { *ms = 0; return 0; }
    if (m->route == ROUTE_PER_HEAD) {
        kvec_llama_stats stats;
        config.policy = m->policy;
        config.budget_mode = m->mode;
        rc = kvec_llama_evict(kl, r->ctx, &config, B, &stats);
        *ms = util_ms() - t0;
        *held = stats.kept_max;
        return rc;
    }
    if (!(keep = (uint8_t *)calloc((size_t)N, 1))) return -1;
    if (m->route == ROUTE_VOTE) {
        kvec_plan plan;
        plan.n_layers = kl->n_layers;
        plan.n_kv_heads = kl->n_kv_heads;
        plan.capacity = B;
        plan.kept_count = (int64_t *)malloc((size_t)(kl->n_layers * kl->n_kv_heads) * sizeof(int64_t));
        plan.kept_positions = (int64_t *)malloc((size_t)(kl->n_layers * kl->n_kv_heads * B) * sizeof(int64_t));
        if (plan.kept_count && plan.kept_positions && kvec_llama_plan(kl, r->ctx, &config, B, &plan) == 0) {
            kvec_llama_vote(&plan, N, B, kl->window, keep);
            rc = kvec_llama_keep_positions(kl, r->ctx, keep);
        }
        free(plan.kept_count);
        free(plan.kept_positions);
    } else {
        for (p = 0; p < N; p++) keep[p] = p < N_SINKS || p >= N - (B - N_SINKS);
        rc = kvec_llama_keep_positions(kl, r->ctx, keep);
        if (rc == 0 && m->route == ROUTE_SHIFT) {
            llama_memory_t mem = llama_get_memory(r->ctx);
            if (!llama_memory_can_shift(mem)) { fprintf(stderr, "measure: this cache cannot shift\n"); rc = -1; }
            else {
                llama_memory_seq_add(mem, 0, (llama_pos)(N - (B - N_SINKS)), (llama_pos)N, (llama_pos)-(N - B));
                *next_pos = B;
            }
        }
    }
    *ms = util_ms() - t0;
    free(keep);
    return rc;
}

enum { DEC_FULL, DEC_KVEC, DEC_ONCE, DEC_STREAMING };

/* --decode: eviction every `interval` tokens; see the top of the file. */
static int measure_decoding(struct llama_model *model, run *r, char **prompts, int n_prompts,
                            const double *budgets, int n_budgets, char **policies, int n_policies,
                            int64_t interval, int64_t prefix, int64_t length) {
    kvec_llama *kl = r->kl;
    const int64_t n_vocab = llama_vocab_n_tokens(r->vocab);
    llama_memory_t mem = llama_get_memory(r->ctx);
    float *ref = (float *)malloc((size_t)(length * n_vocab) * sizeof *ref);
    double kl_sum[MAX_METHODS][MAX_BUDGETS], kl_sq[MAX_METHODS][MAX_BUDGETS], agree[MAX_METHODS][MAX_BUDGETS];
    double steps[MAX_METHODS][MAX_BUDGETS];
    double evict_ms[MAX_METHODS][MAX_BUDGETS], evictions[MAX_METHODS][MAX_BUDGETS], wall0 = util_ms();
    char names[MAX_METHODS][48];
    int kind[MAX_METHODS], n_routes = 0, i, b, m;
    kvec_policy policy[MAX_METHODS];
    (void)model;
    if (!ref) return 1;
    memset(kl_sum, 0, sizeof kl_sum); memset(kl_sq, 0, sizeof kl_sq); memset(agree, 0, sizeof agree); memset(steps, 0, sizeof steps);
    memset(evict_ms, 0, sizeof evict_ms); memset(evictions, 0, sizeof evictions);
    for (i = 0; i < n_policies && n_routes < MAX_METHODS - 3; i++) {
        if (kvec_llama_policy(policies[i], &policy[n_routes])) { fprintf(stderr, "measure: unknown policy %s\n", policies[i]); return 2; }
        kind[n_routes] = DEC_KVEC;
        snprintf(names[n_routes], sizeof names[0], "kvec per head, %s, every %lld", kvec_policy_name(policy[n_routes]), (long long)interval);
        n_routes++;
    }
    kind[n_routes] = DEC_ONCE; policy[n_routes] = KVEC_POLICY_KVEC;
    snprintf(names[n_routes++], sizeof names[0], "K-VEC once (the cache grows)");
    kind[n_routes] = DEC_STREAMING; policy[n_routes] = KVEC_POLICY_KVEC;
    snprintf(names[n_routes++], sizeof names[0], "StreamingLLM (4 + recent), every %lld", (long long)interval);
    for (i = 0; i < n_prompts; i++) {
        size_t text_length;
        char *text = util_read_file(prompts[i], &text_length);
        int64_t n, C, t, done;
        llama_token *tokens;
        if (!text || !(tokens = util_tokenize(r->vocab, text, text_length, 1, &n))) { fprintf(stderr, "measure: cannot read %s\n", prompts[i]); return 1; }
        free(text);
        C = n - prefix < length ? n - prefix : length;
        C -= C % interval;
        if (C < interval) { fprintf(stderr, "measure: %s is too short\n", prompts[i]); return 1; }
        /* the full cache, decoded in the same chunks */
        llama_memory_clear(mem, true);
        if (util_decode(r->ctx, tokens, prefix, 0, 0)) return 1;
        for (done = 0; done < C; done += interval) {
            if (util_decode(r->ctx, tokens + prefix + done, interval, prefix + done, 1)) return 1;
            for (t = 0; t < interval; t++)
                memcpy(ref + (done + t) * n_vocab, llama_get_logits_ith(r->ctx, (int32_t)t), (size_t)n_vocab * sizeof *ref);
        }
        fprintf(stderr, "measure: %s: prefix %lld, %lld tokens decoded in chunks of %lld\n", prompts[i],
                (long long)prefix, (long long)C, (long long)interval);
        for (b = 0; b < n_budgets; b++) {
            int64_t B = (int64_t)(budgets[b] * (double)prefix + 0.5);
            if (B < kl->window + N_SINKS) B = kl->window + N_SINKS;
            for (m = 0; m < n_routes; m++) {
                kvec_config config;
                kvec_llama_stats stats;
                double t0;
                memset(&config, 0, sizeof config);
                config.policy = policy[m];
                llama_memory_clear(mem, true);
                if (kvec_llama_begin(kl, prefix) || util_decode(r->ctx, tokens, prefix, 0, 0)) return 1;
                t0 = util_ms();
                if (kind[m] == DEC_STREAMING) {
                    kvec_llama_check(kl, r->ctx); /* disarms the capture */
                    llama_memory_seq_rm(mem, 0, N_SINKS, (llama_pos)(prefix - (B - N_SINKS)));
                } else if (kvec_llama_evict(kl, r->ctx, &config, B, NULL)) {
                    fprintf(stderr, "measure: %s: %s\n", names[m], kl->error); return 1;
                }
                evict_ms[m][b] += util_ms() - t0;
                evictions[m][b] += 1;
                for (done = 0; done < C; done += interval) {
                    int64_t p_end = prefix + done + interval;
                    if (kind[m] == DEC_KVEC && kvec_llama_continue(kl, p_end)) { fprintf(stderr, "measure: %s\n", kl->error); return 1; }
                    if (util_decode(r->ctx, tokens + prefix + done, interval, prefix + done, 1)) {
                        fprintf(stderr, "measure: %s: decode failed\n", names[m]); return 1;
                    }
                    for (t = 0; t < interval; t++) {
                        int same;
                        double d = util_kl(ref + (done + t) * n_vocab, llama_get_logits_ith(r->ctx, (int32_t)t), n_vocab, &same);
                        kl_sum[m][b] += d;
                        kl_sq[m][b] += d * d;
                        agree[m][b] += same;
                        steps[m][b] += 1;
                    }
                    if (done + interval >= C) break;
                    t0 = util_ms();
                    if (kind[m] == DEC_KVEC) {
                        if (kvec_llama_reevict(kl, r->ctx, &config, B, &stats)) { fprintf(stderr, "measure: %s: %s\n", names[m], kl->error); return 1; }
                    } else if (kind[m] == DEC_STREAMING) {
                        llama_memory_seq_rm(mem, 0, N_SINKS, (llama_pos)(p_end - (B - N_SINKS)));
                    } else {
                        continue;
                    }
                    evict_ms[m][b] += util_ms() - t0;
                    evictions[m][b] += 1;
                }
            }
        }
        free(tokens);
    }
    printf("\neviction during decoding: %d prompts, prefix %lld, %lld tokens after it at most, re-eviction every %lld\n",
           n_prompts, (long long)prefix, (long long)length, (long long)interval);
    printf("\n| route | cache (share of the prefix) | KL (nats, +- s.e. over steps) | top-1 agree | ms per eviction |\n|---|---|---|---|---|\n");
    for (m = 0; m < n_routes; m++)
        for (b = 0; b < n_budgets; b++) {
            double mean = kl_sum[m][b] / steps[m][b], var = kl_sq[m][b] / steps[m][b] - mean * mean;
            printf("| %s | %.0f%% | %.3f +- %.3f | %.1f%% | %.1f |\n", names[m], 100.0 * budgets[b], mean,
                   sqrt((var > 0 ? var : 0) / steps[m][b]), 100.0 * agree[m][b] / steps[m][b],
                   evict_ms[m][b] / (evictions[m][b] ? evictions[m][b] : 1));
        }
    printf("\nwall %.0f s\n", (util_ms() - wall0) / 1e3);
    free(ref);
    return 0;
}

/* Questions about one document, asked after the eviction: the document is
   prefilled once (instruction and document, the prefix every question
   shares), then for each route and budget evicted once and every question
   answered greedily from the evicted cache. 0 on success. */
static int ask_about(run *r, struct llama_model *model, method *methods, int n_methods, const double *budgets,
                     int n_budgets, const char *doc, char **question, char **answer, int n_q, double *prefix_tokens) {
    const int64_t n_vocab = llama_vocab_n_tokens(r->vocab);
    size_t split;
    char *user, *prompt;
    llama_token *prefix, *suffix;
    int64_t N, n_suffix;
    int b, mi, q;
    double capture_ms, plain_ms;
    if (!(user = (char *)malloc(strlen(INSTRUCTION) + strlen(doc) + 4096))) return 1;
    /* the prefix (instruction and document) is the same for every question */
    sprintf(user, "%s%s\n\nQuestion: %s", INSTRUCTION, doc, question[0]);
    if (!(prompt = util_chat_prompt(model, user))) return 1;
    if (!strstr(prompt, doc)) { fprintf(stderr, "measure: the chat template changed the document\n"); return 1; }
    split = (size_t)(strstr(prompt, doc) - prompt) + strlen(doc);
    if (!(prefix = util_tokenize(r->vocab, prompt, split, 1, &N))) return 1;
    free(prompt);
    if (prefill(r, prefix, N, &capture_ms, &plain_ms)) { fprintf(stderr, "measure: prefill: %s\n", r->kl->error); return 1; }
    *prefix_tokens += (double)N;
    for (b = 0; b < n_budgets; b++) {
        int64_t B = (int64_t)(budgets[b] * (double)N + 0.5);
        if (B < r->kl->window + N_SINKS) B = r->kl->window + N_SINKS;
        for (mi = 0; mi < n_methods; mi++) {
            method *m = &methods[mi];
            int64_t pos0, pos, t, held;
            double ms;
            if (m->route == ROUTE_FULL && b > 0) continue;
            if (restore(r) || evict(r, m, B, &pos0, &ms, &held)) { fprintf(stderr, "measure: %s: %s\n", m->name, r->kl->error); return 1; }
            for (q = 0; q < n_q; q++) {
                char reply[1024] = "";
                llama_token next;
                sprintf(user, "%s%s\n\nQuestion: %s", INSTRUCTION, doc, question[q]);
                if (!(prompt = util_chat_prompt(model, user))) return 1;
                if (!(suffix = util_tokenize(r->vocab, prompt + split, strlen(prompt + split), 0, &n_suffix))) return 1;
                free(prompt);
                if (util_decode(r->ctx, suffix, n_suffix, pos0, 0)) { fprintf(stderr, "measure: question decode failed\n"); return 1; }
                free(suffix);
                pos = pos0 + n_suffix;
                next = util_argmax(llama_get_logits_ith(r->ctx, -1), n_vocab);
                for (t = 0; t < ANSWER_TOKENS && !llama_vocab_is_eog(r->vocab, next); t++, pos++) {
                    util_append_piece(r->vocab, next, reply, sizeof reply);
                    if (util_decode(r->ctx, &next, 1, pos, 0)) { fprintf(stderr, "measure: decode failed\n"); return 1; }
                    next = util_argmax(llama_get_logits_ith(r->ctx, -1), n_vocab);
                }
                m->correct[b] += contains_ignoring_case(reply, answer[q]);
                m->asked[b]++;
                /* drop the question and reply: the next question reads the same evicted cache */
                llama_memory_seq_rm(llama_get_memory(r->ctx), 0, (llama_pos)pos0, -1);
            }
        }
    }
    free(user);
    free(prefix);
    return 0;
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *qa_document = "examples/demo/lighthouse.txt", *qa_questions = "examples/demo/questions.tsv";
    char prompt_list[4096] = "examples/demo/lighthouse.txt,examples/llama.cpp/prompts/orchard.txt,"
                             "examples/llama.cpp/prompts/ferry.txt,examples/llama.cpp/prompts/glassworks.txt";
    char budget_list[256] = "0.5,0.25,0.1", policy_list[256] = "kvec,snapkv,tova,keydiff,knorm,random";
    char mode_list[256] = "uniform", *modes[4];
    int n_modes, mo;
    int64_t decode_every = 0, decode_prefix = 256, decode_length = 768;
    const char *tasks_path = NULL;
    int n_samples = 0, kl_part = 1;
    double qa_tokens = 0;
    char *prompts[MAX_PROMPTS], *items[MAX_METHODS];
    double budgets[MAX_BUDGETS];
    int n_prompts, n_budgets, n_methods = 0, n_policies, qa = 1, i, b, mi;
    int64_t T = 64, max_prefix = 1536, n_threads = 1, step;
    enum llama_flash_attn_type flash = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    static method methods[MAX_METHODS];
    double prefill_capture_ms = 0, prefill_plain_ms = 0, prefix_tokens = 0, wall0 = util_ms();
    struct llama_model_params mparams;
    struct llama_context_params cparams;
    struct llama_model *model = NULL;
    kvec_llama kl;
    run r;
    float *ref = NULL;
    int64_t n_vocab;

    memset(&kl, 0, sizeof kl);
    memset(&r, 0, sizeof r);
    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--no-qa")) { qa = 0; continue; }
        if (!strcmp(argv[i], "--no-kl")) { kl_part = 0; continue; }
        if (!value) { fprintf(stderr, "measure: %s needs a value\n", argv[i]); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--prompts")) snprintf(prompt_list, sizeof prompt_list, "%s", value);
        else if (!strcmp(argv[i], "--budgets")) snprintf(budget_list, sizeof budget_list, "%s", value);
        else if (!strcmp(argv[i], "--policies")) snprintf(policy_list, sizeof policy_list, "%s", value);
        else if (!strcmp(argv[i], "--modes")) snprintf(mode_list, sizeof mode_list, "%s", value);
        else if (!strcmp(argv[i], "--decode")) decode_every = atoll(value);
        else if (!strcmp(argv[i], "--tasks")) tasks_path = value;
        else if (!strcmp(argv[i], "--decode-prefix")) decode_prefix = atoll(value);
        else if (!strcmp(argv[i], "--decode-length")) decode_length = atoll(value);
        else if (!strcmp(argv[i], "--continuation")) T = atoll(value);
        else if (!strcmp(argv[i], "--max-prefix")) max_prefix = atoll(value);
        else if (!strcmp(argv[i], "--threads")) n_threads = atoll(value);
        else if (!strcmp(argv[i], "--qa-document")) qa_document = value;
        else if (!strcmp(argv[i], "--qa-questions")) qa_questions = value;
        else if (!strcmp(argv[i], "--flash-attn")) {
            if (util_flash_attn(value, &flash)) { fprintf(stderr, "measure: --flash-attn on|off\n"); return 2; }
        } else { fprintf(stderr, "measure: unknown option %s\n", argv[i]); return 2; }
        i++;
    }
    if (!model_path) { fprintf(stderr, "measure: --model FILE.gguf is required\n"); return 2; }
    n_prompts = split_list(prompt_list, prompts, MAX_PROMPTS);
    n_budgets = split_list(budget_list, items, MAX_BUDGETS);
    for (b = 0; b < n_budgets; b++) budgets[b] = atof(items[b]);
    n_modes = split_list(mode_list, modes, 4);
    n_policies = split_list(policy_list, items, (MAX_METHODS - 4) / (n_modes ? n_modes : 1));
    snprintf(methods[n_methods].name, sizeof methods[0].name, "full cache (restored)");
    methods[n_methods++].route = ROUTE_FULL;
    for (mo = 0; mo < n_modes; mo++) {
        static const char *mode_names[5] = { "", "uniform", "pyramid", "adaptive", "global" };
        kvec_budget_mode mode;
        if (!strcmp(modes[mo], "uniform")) mode = KVEC_BUDGET_UNIFORM;
        else if (!strcmp(modes[mo], "pyramid")) mode = KVEC_BUDGET_PYRAMID;
        else if (!strcmp(modes[mo], "adaptive")) mode = KVEC_BUDGET_ADAPTIVE;
        else if (!strcmp(modes[mo], "global")) mode = KVEC_BUDGET_GLOBAL;
        else { fprintf(stderr, "measure: unknown budget mode %s (uniform, pyramid, adaptive, global)\n", modes[mo]); return 2; }
        for (i = 0; i < n_policies; i++) {
            method *m = &methods[n_methods++];
            if (kvec_llama_policy(items[i], &m->policy)) { fprintf(stderr, "measure: unknown policy %s\n", items[i]); return 2; }
            m->route = ROUTE_PER_HEAD;
            m->mode = mode;
            snprintf(m->name, sizeof m->name, "kvec per head, %s%s%s", kvec_policy_name(m->policy),
                     mode == KVEC_BUDGET_UNIFORM ? "" : ", ", mode == KVEC_BUDGET_UNIFORM ? "" : mode_names[mode]);
        }
    }
    snprintf(methods[n_methods].name, sizeof methods[0].name, "vote (K-VEC plans), seq_rm");
    methods[n_methods++].route = ROUTE_VOTE;
    snprintf(methods[n_methods].name, sizeof methods[0].name, "seq_rm middle (keep 4 + recent)");
    methods[n_methods++].route = ROUTE_MIDDLE;
    snprintf(methods[n_methods].name, sizeof methods[0].name, "n_keep shift (keep 4, seq_add)");
    methods[n_methods++].route = ROUTE_SHIFT;

    util_quiet_logs();
    util_threads(n_threads);
    llama_backend_init();
    mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    if (!(model = llama_model_load_from_file(model_path, mparams))) { fprintf(stderr, "measure: cannot load %s\n", model_path); return 1; }
    if (kvec_llama_init(&kl, model, 32)) { fprintf(stderr, "measure: refused: %s\n", kl.error); return 1; }
    r.kl = &kl;
    r.vocab = llama_model_get_vocab(model);
    n_vocab = llama_vocab_n_tokens(r.vocab);
    cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)(max_prefix + T + 512);
    cparams.n_batch = cparams.n_ctx;
    cparams.n_threads = cparams.n_threads_batch = (int32_t)n_threads;
    cparams.flash_attn_type = flash;
    kvec_llama_context_params(&kl, &cparams);
    if (!(r.ctx = llama_init_from_model(model, cparams))) { fprintf(stderr, "measure: cannot create the context\n"); return 1; }
    if (decode_every) {
        int rc;
        if (decode_every < kl.window || decode_prefix <= 4 * kl.window || decode_length < decode_every) {
            fprintf(stderr, "measure: --decode N needs N >= %lld, --decode-prefix > %lld, --decode-length >= N\n",
                    (long long)kl.window, (long long)(4 * kl.window));
            return 2;
        }
        rc = measure_decoding(model, &r, prompts, n_prompts, budgets, n_budgets, items, n_policies,
                              decode_every, decode_prefix, decode_length);
        llama_free(r.ctx);
        llama_model_free(model);
        kvec_llama_free(&kl);
        llama_backend_free();
        return rc;
    }
    if (!(ref = (float *)malloc((size_t)(T * n_vocab) * sizeof *ref))) return 1;

    /* KL and top-1 over teacher-forced continuations */
    if (!kl_part) n_prompts = 0;
    for (i = 0; i < n_prompts; i++) {
        size_t length;
        char *text = util_read_file(prompts[i], &length);
        int64_t n, N, B;
        llama_token *tokens;
        double capture_ms, plain_ms;
        if (!text || !(tokens = util_tokenize(r.vocab, text, length, 1, &n))) { fprintf(stderr, "measure: cannot read %s\n", prompts[i]); return 1; }
        free(text);
        if (n > max_prefix + T) n = max_prefix + T;
        N = n - T;
        if (N < 4 * kl.window) { fprintf(stderr, "measure: %s is too short (%lld tokens)\n", prompts[i], (long long)n); return 1; }
        if (prefill(&r, tokens, N, &capture_ms, &plain_ms)) { fprintf(stderr, "measure: prefill: %s\n", kl.error); return 1; }
        prefill_capture_ms += capture_ms;
        prefill_plain_ms += plain_ms;
        prefix_tokens += (double)N;
        if (util_decode(r.ctx, tokens + N, T, N, 1)) { fprintf(stderr, "measure: continuation failed\n"); return 1; }
        for (step = 0; step < T; step++)
            memcpy(ref + step * n_vocab, llama_get_logits_ith(r.ctx, (int32_t)step), (size_t)n_vocab * sizeof *ref);
        fprintf(stderr, "measure: %s: prefix %lld tokens, continuation %lld, prefill %.0f ms (%.0f ms with the capture)\n",
                prompts[i], (long long)N, (long long)T, plain_ms, capture_ms);
        for (b = 0; b < n_budgets; b++) {
            B = (int64_t)(budgets[b] * (double)N + 0.5);
            if (B < kl.window + N_SINKS) B = kl.window + N_SINKS;
            for (mi = 0; mi < n_methods; mi++) {
                method *m = &methods[mi];
                int64_t pos0, held;
                double ms;
                if (m->route == ROUTE_FULL && b > 0) continue;
                if (restore(&r)) { fprintf(stderr, "measure: restore failed: %s\n", kl.error); return 1; }
                if (evict(&r, m, B, &pos0, &ms, &held)) { fprintf(stderr, "measure: %s: %s\n", m->name, kl.error); return 1; }
                if (util_decode(r.ctx, tokens + N, T, pos0, 1)) { fprintf(stderr, "measure: %s: continuation failed\n", m->name); return 1; }
                for (step = 0; step < T; step++) {
                    int agree;
                    double d = util_kl(ref + step * n_vocab, llama_get_logits_ith(r.ctx, (int32_t)step), n_vocab, &agree);
                    m->kl[b] += d;
                    m->kl_sq[b] += d * d;
                    m->agree[b] += agree;
                    m->steps[b] += 1;
                }
                m->evict_ms[b] += ms;
                m->evictions[b] += 1;
                m->held[b] += (double)held / (double)N;
            }
        }
        free(tokens);
    }

    /* Task accuracy: questions about one document, asked after the eviction */
    if (qa && tasks_path) {
        /* one sample per line: {"context", "question", "answer", ...} */
        size_t length;
        char *text = json_read_file(tasks_path, &length), *line, *next_line, error[128];
        if (!text) { fprintf(stderr, "measure: cannot read %s\n", tasks_path); return 1; }
        for (line = text; line && *line; line = next_line) {
            json_value *sample;
            const json_value *context, *question, *answer;
            char *q, *a;
            int rc_task;
            next_line = strchr(line, '\n');
            if (next_line) *next_line++ = '\0';
            if (strspn(line, " \t\r") == strlen(line)) continue;
            if (!(sample = json_parse(line, strlen(line), error, sizeof error))) {
                fprintf(stderr, "measure: %s, sample %d: %s\n", tasks_path, n_samples + 1, error); return 1;
            }
            context = json_get(sample, "context");
            question = json_get(sample, "question");
            answer = json_get(sample, "answer");
            if (!context || !question || !answer || context->type != JSON_STRING || question->type != JSON_STRING ||
                answer->type != JSON_STRING) {
                fprintf(stderr, "measure: %s, sample %d: needs string fields context, question, answer\n", tasks_path, n_samples + 1);
                return 1;
            }
            q = (char *)question->string;
            a = (char *)answer->string;
            rc_task = ask_about(&r, model, methods, n_methods, budgets, n_budgets, context->string, &q, &a, 1, &qa_tokens);
            json_free(sample);
            if (rc_task) return rc_task;
            n_samples++;
            fprintf(stderr, "measure: %s: sample %d done (%.0f s)\n", tasks_path, n_samples, (util_ms() - wall0) / 1e3);
        }
        free(text);
        fprintf(stderr, "measure: %s: %d samples, %.0f prefix tokens on average\n", tasks_path, n_samples, qa_tokens / n_samples);
    } else if (qa) {
        size_t length;
        char *doc = util_read_file(qa_document, NULL), *qtext = util_read_file(qa_questions, &length);
        char *question[MAX_QUESTIONS], *answer[MAX_QUESTIONS], *line;
        int n_q = 0, rc_qa;
        if (!doc || !qtext) { fprintf(stderr, "measure: cannot read %s or %s\n", qa_document, qa_questions); return 1; }
        for (line = strtok(qtext, "\n"); line && n_q < MAX_QUESTIONS; line = strtok(NULL, "\n")) {
            char *tab = strchr(line, '\t');
            if (line[0] == '#' || !tab) continue;
            *tab = '\0';
            question[n_q] = line;
            answer[n_q] = tab + 1;
            answer[n_q][strcspn(answer[n_q], "\r")] = '\0';
            n_q++;
        }
        rc_qa = ask_about(&r, model, methods, n_methods, budgets, n_budgets, doc, question, answer, n_q, &qa_tokens);
        if (rc_qa) return rc_qa;
        fprintf(stderr, "measure: %s: %d questions after a prefix of %.0f tokens\n", qa_document, n_q, qa_tokens);
        free(doc);
        free(qtext);
    }

    if (n_prompts)
        printf("\n%d prompts, %.0f prefix tokens on average, continuation %lld tokens; flash attention %s; %lld threads\n",
               n_prompts, prefix_tokens / n_prompts, (long long)T, flash == LLAMA_FLASH_ATTN_TYPE_ENABLED ? "on" : "off",
               (long long)n_threads);
    if (n_samples) printf("\n%s: %d samples, %.0f prefix tokens on average\n", tasks_path, n_samples, qa_tokens / n_samples);
    printf("\n| route | budget | longest head | KL (nats, +- s.e. over steps) | top-1 agree | QA right (+- s.e.) | eviction ms |\n|---|---|---|---|---|---|---|\n");
    for (mi = 0; mi < n_methods; mi++) {
        method *m = &methods[mi];
        for (b = 0; b < n_budgets; b++) {
            double p = m->asked[b] ? (double)m->correct[b] / m->asked[b] : 0;
            char kl_text[32] = "-", agree_text[32] = "-", held_text[32] = "-", qa_text[48] = "-";
            if (m->route == ROUTE_FULL && b > 0) continue;
            if (m->steps[b] > 0) {
                double mean = m->kl[b] / m->steps[b], var = m->kl_sq[b] / m->steps[b] - mean * mean;
                snprintf(kl_text, sizeof kl_text, "%.3f +- %.3f", mean, sqrt((var > 0 ? var : 0) / m->steps[b]));
                snprintf(agree_text, sizeof agree_text, "%.1f%%", 100.0 * m->agree[b] / m->steps[b]);
                snprintf(held_text, sizeof held_text, "%.0f%%", 100.0 * m->held[b] / m->evictions[b]);
            }
            if (m->asked[b])
                snprintf(qa_text, sizeof qa_text, "%d/%d (%.2f +- %.2f)", m->correct[b], m->asked[b], p,
                         sqrt(p * (1 - p) / m->asked[b]));
            printf("| %s | %.0f%% | %s | %s | %s | %s | %.1f |\n", m->name,
                   m->route == ROUTE_FULL ? 100.0 : 100.0 * budgets[b], held_text, kl_text, agree_text, qa_text,
                   m->evict_ms[b] / (m->evictions[b] ? m->evictions[b] : 1));
        }
    }
    if (n_prompts)
        printf("\nprefill of the KL prompts: %.0f ms on average without the capture, %.0f ms with it\n",
               prefill_plain_ms / n_prompts, prefill_capture_ms / n_prompts);
    printf("wall %.0f s\n", (util_ms() - wall0) / 1e3);
    free(ref);
    free(r.state);
    free(r.k0);
    llama_free(r.ctx);
    llama_model_free(model);
    kvec_llama_free(&kl);
    llama_backend_free();
    return 0;
}
