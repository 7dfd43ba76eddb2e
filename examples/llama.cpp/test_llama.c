/* test_llama.c - kvec inside llama.cpp, on a real model (make test-llama).

   test_llama --model FILE.gguf [--document FILE] [--threads N]

   Properties checked, with flash attention off (V transposed) and on:
   - a 50% per-head eviction of a real-text prefix leaves llama.cpp a
     sequence it decodes on: the prefix's last B positions, the next token at
     N, generation continues for 16 tokens;
   - the next-token distributions over a teacher-forced continuation stay
     close to the full cache's: mean KL below KL_BOUND;
   - the same eviction with random scores exceeds KL_BOUND (the bound
     tells a scored eviction from an unscored one);
   - budget = N changes nothing (KL below 1e-9: the same cells, the same
     logits);
   - the refusals: a quantised KV cache, two sequences, a non-uniform budget.

   KL_BOUND: measured once on this document's first 512 tokens (a 448-token
   prefix, 64-token continuation, K-VEC at 50%, 1 thread): 0.0231 nats with
   flash attention off, 0.0194 on. The bound, 0.08, is 3.5 times the larger:
   room for other thread counts and CPU kernels (they change the last bits of
   every logit), while the same eviction with random scores (the control
   below, which must exceed the bound) measured 0.52 with either. */
#define KVEC_IMPLEMENTATION
#include "kvec_llama.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KL_BOUND 0.08
#define PREFIX   448
#define CONT     64

static int passed, failed;

static void check(int ok, const char *what) {
    printf("%s: %s\n", ok ? "pass" : "FAIL", what);
    if (ok) passed++; else failed++;
}

static struct llama_context *make_context(struct llama_model *model, kvec_llama *kl, int64_t threads,
                                          enum llama_flash_attn_type flash, enum ggml_type cache_type,
                                          uint32_t n_seq) {
    struct llama_context_params p = llama_context_default_params();
    p.n_ctx = 1024;
    p.n_batch = 1024;
    p.n_threads = p.n_threads_batch = (int32_t)threads;
    p.flash_attn_type = flash;
    p.type_k = p.type_v = cache_type;
    kvec_llama_context_params(kl, &p);
    p.n_seq_max = n_seq; /* after the helper, to test its refusal */
    return llama_init_from_model(model, p);
}

/* Mean KL over the continuation; reference logits are [CONT][n_vocab]. */
static double continuation_kl(struct llama_context *ctx, const llama_token *cont, int64_t pos0,
                              const float *ref, int64_t n_vocab) {
    double kl = 0;
    int64_t t;
    if (util_decode(ctx, cont, CONT, pos0, 1)) return 1e9;
    for (t = 0; t < CONT; t++) kl += util_kl(ref + t * n_vocab, llama_get_logits_ith(ctx, (int32_t)t), n_vocab, NULL);
    return kl / CONT;
}

static void run_flash(struct llama_model *model, const llama_token *tokens, int64_t threads,
                      enum llama_flash_attn_type flash) {
    const struct llama_vocab *vocab = llama_model_get_vocab(model);
    int64_t n_vocab = llama_vocab_n_tokens(vocab), N = PREFIX, B = PREFIX / 2, t, pos;
    const char *fa = flash == LLAMA_FLASH_ATTN_TYPE_ENABLED ? "flash attention on" : "flash attention off";
    char what[256];
    kvec_llama kl;
    struct llama_context *ctx;
    llama_memory_t mem;
    float *ref = (float *)malloc((size_t)(CONT * n_vocab) * sizeof *ref);
    double kl_half, kl_full, kl_random;
    kvec_config config;
    llama_token next;
    int ok;

    if (!ref || kvec_llama_init(&kl, model, 32)) { check(0, "kvec_llama_init"); free(ref); return; }
    ctx = make_context(model, &kl, threads, flash, GGML_TYPE_F16, 1);
    mem = llama_get_memory(ctx);

    /* the full cache's continuation */
    util_decode(ctx, tokens, N, 0, 0);
    util_decode(ctx, tokens + N, CONT, N, 1);
    for (t = 0; t < CONT; t++) memcpy(ref + t * n_vocab, llama_get_logits_ith(ctx, (int32_t)t), (size_t)n_vocab * sizeof *ref);

    /* budget = N: nothing moves, nothing is removed */
    llama_memory_clear(mem, true);
    kvec_llama_begin(&kl, N);
    util_decode(ctx, tokens, N, 0, 0);
    ok = kvec_llama_evict(&kl, ctx, NULL, N, NULL) == 0;
    kl_full = ok ? continuation_kl(ctx, tokens + N, N, ref, n_vocab) : 1e9;
    snprintf(what, sizeof what, "%s: budget = N leaves the logits as they were (KL %.2g)", fa, kl_full);
    check(ok && kl_full < 1e-9, what);

    /* 50% per head */
    llama_memory_clear(mem, true);
    kvec_llama_begin(&kl, N);
    util_decode(ctx, tokens, N, 0, 0);
    ok = kvec_llama_evict(&kl, ctx, NULL, B, NULL) == 0;
    if (!ok) printf("  kvec_llama_evict: %s\n", kl.error);
    snprintf(what, sizeof what, "%s: after a 50%% eviction the sequence is positions %lld..%lld",
             fa, (long long)(N - B), (long long)(N - 1));
    check(ok && llama_memory_seq_pos_min(mem, 0) == N - B && llama_memory_seq_pos_max(mem, 0) == N - 1, what);
    kl_half = continuation_kl(ctx, tokens + N, N, ref, n_vocab);
    snprintf(what, sizeof what, "%s: 50%% K-VEC per head, KL to the full cache %.4f nats < %.2f", fa, kl_half, KL_BOUND);
    check(kl_half < KL_BOUND, what);

    /* generation goes on after the continuation */
    pos = N + CONT;
    next = util_argmax(llama_get_logits_ith(ctx, CONT - 1), n_vocab);
    for (t = 0, ok = 1; t < 16 && ok; t++, pos++) {
        ok = util_decode(ctx, &next, 1, pos, 0) == 0;
        if (ok) next = util_argmax(llama_get_logits_ith(ctx, -1), n_vocab);
    }
    snprintf(what, sizeof what, "%s: 16 more tokens decode after the eviction (up to position %lld)", fa, (long long)pos - 1);
    check(ok && llama_memory_seq_pos_max(mem, 0) == pos - 1, what);

    /* the control: random scores at the same budget */
    llama_memory_clear(mem, true);
    kvec_llama_begin(&kl, N);
    util_decode(ctx, tokens, N, 0, 0);
    memset(&config, 0, sizeof config);
    config.policy = KVEC_POLICY_RANDOM;
    ok = kvec_llama_evict(&kl, ctx, &config, B, NULL) == 0;
    kl_random = ok ? continuation_kl(ctx, tokens + N, N, ref, n_vocab) : 0;
    snprintf(what, sizeof what, "%s: random scores at 50%%, KL %.4f nats > %.2f (the bound discriminates)", fa, kl_random, KL_BOUND);
    check(ok && kl_random > KL_BOUND, what);

    llama_free(ctx);
    kvec_llama_free(&kl);
    free(ref);
}

static void run_refusals(struct llama_model *model, const llama_token *tokens, int64_t threads) {
    kvec_llama kl;
    struct llama_context *ctx;
    kvec_config config;
    int refused;

    /* a quantised cache: kvec cannot read q8_0 rows (flash attention is
       required by llama.cpp for a quantised V) */
    kvec_llama_init(&kl, model, 32);
    ctx = make_context(model, &kl, threads, LLAMA_FLASH_ATTN_TYPE_ENABLED, GGML_TYPE_Q8_0, 1);
    kvec_llama_begin(&kl, 64);
    util_decode(ctx, tokens, 64, 0, 0);
    refused = ctx && kvec_llama_evict(&kl, ctx, NULL, 48, NULL) != 0 && strstr(kl.error, "quantised");
    check(refused, "a q8_0 cache is refused, and the refusal says why");
    if (ctx) llama_free(ctx);
    kvec_llama_free(&kl);

    /* two sequences */
    kvec_llama_init(&kl, model, 32);
    ctx = make_context(model, &kl, threads, LLAMA_FLASH_ATTN_TYPE_DISABLED, GGML_TYPE_F16, 2);
    kvec_llama_begin(&kl, 64);
    util_decode(ctx, tokens, 64, 0, 0);
    refused = ctx && kvec_llama_evict(&kl, ctx, NULL, 48, NULL) != 0 && strstr(kl.error, "one sequence");
    check(refused, "a context for two sequences is refused");
    if (ctx) llama_free(ctx);
    kvec_llama_free(&kl);

    /* heads of different lengths need the per-head-length patch; the cache is
       left as it was */
    kvec_llama_init(&kl, model, 32);
    ctx = make_context(model, &kl, threads, LLAMA_FLASH_ATTN_TYPE_DISABLED, GGML_TYPE_F16, 1);
    kvec_llama_begin(&kl, 64);
    util_decode(ctx, tokens, 64, 0, 0);
    memset(&config, 0, sizeof config);
    config.budget_mode = KVEC_BUDGET_ADAPTIVE;
    refused = kvec_llama_evict(&kl, ctx, &config, 48, NULL) != 0 &&
              llama_memory_seq_pos_min(llama_get_memory(ctx), 0) == 0;
    check(refused, "an adaptive budget is refused on stock llama.cpp, the cache untouched");
    llama_free(ctx);
    kvec_llama_free(&kl);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *document_path = "examples/demo/lighthouse.txt";
    int64_t threads = 1, n;
    int i;
    struct llama_model_params mparams;
    struct llama_model *model;
    llama_token *tokens;
    char *text;
    size_t length;
    for (i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model")) model_path = argv[i + 1];
        else if (!strcmp(argv[i], "--document")) document_path = argv[i + 1];
        else if (!strcmp(argv[i], "--threads")) threads = atoll(argv[i + 1]);
    }
    if (!model_path) { fprintf(stderr, "test_llama: --model FILE.gguf is required\n"); return 2; }
    util_quiet_logs();
    util_threads(threads);
    llama_backend_init();
    mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    if (!(model = llama_model_load_from_file(model_path, mparams))) { fprintf(stderr, "test_llama: cannot load %s\n", model_path); return 1; }
    if (!(text = util_read_file(document_path, &length)) ||
        !(tokens = util_tokenize(llama_model_get_vocab(model), text, length, 1, &n)) || n < PREFIX + CONT) {
        fprintf(stderr, "test_llama: %s must hold at least %d tokens\n", document_path, PREFIX + CONT);
        return 1;
    }
    run_flash(model, tokens, threads, LLAMA_FLASH_ATTN_TYPE_DISABLED);
    run_flash(model, tokens, threads, LLAMA_FLASH_ATTN_TYPE_ENABLED);
    run_refusals(model, tokens, threads);
    free(tokens);
    free(text);
    llama_model_free(model);
    llama_backend_free();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
