/* main.c - kvec inside llama.cpp: a GGUF reads a document, its KV cache is
   evicted per KV head by kvec, and it answers from what is left.

   kvec-llama --model FILE.gguf [--document FILE] [--question TEXT]
              [--policy kvec|snapkv|tova|h2o|keydiff|knorm|streaming|random|learned|learned-kvec]
              [--budget F | --keep N] [--flash-attn on|off] [--threads N]
              [--cache-type f16|f32|bf16|q8_0|q4_0] [--n-predict N] [--full]
              [--budget-mode uniform|pyramid|adaptive|global] [--question-after]
              [--scorer FILE.kvs] [--mu X]

   The prompt is one chat turn: an instruction, the document, the question.
   The whole prompt is prefilled with kvec's callback capturing the last 32
   queries of every layer; then each KV head keeps `budget` of its cells
   (a fraction F of the prompt, or N cells), the rest is removed from
   llama.cpp's cache, and the reply is generated greedily from there.
   --full skips the eviction (the reference). --budget-mode other than
   uniform gives heads different lengths (budget is then their average) and
   needs the build against kvec-per-head.patch. Prints the prefill and the
   eviction time, what each head keeps and the reply.

   --question-after: the document is read and evicted first, the question
   is decoded after the eviction (the cache of a document asked about
   later: no policy can see the question). learned and learned-kvec score
   with the model's learned scorer (docs/LEARNED.md; --scorer FILE, by
   default scorers/NAME.kvs), computed during the prefill from each layer's
   attention input; their budget is global (as measured), which needs the
   per-head build; the stock build shares it uniformly and says so.
   learned-kvec adds K-VEC's uniqueness term (weight --mu, default 1). */
#define KVEC_IMPLEMENTATION
#include "kvec_llama.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *INSTRUCTION = "Read the document below, then answer the question after it in a few words.\n\n";

static void usage(void) {
    fprintf(stderr,
            "usage: kvec-llama --model FILE.gguf [--document FILE] [--question TEXT]\n"
            "                  [--policy NAME] [--budget F | --keep N] [--flash-attn on|off]\n"
            "                  [--threads N] [--cache-type f16|f32|bf16|q8_0|q4_0] [--n-predict N] [--full]\n"
            "                  [--budget-mode uniform|pyramid|adaptive|global] [--question-after]\n"
            "                  [--scorer FILE.kvs] [--mu X]   (policies learned, learned-kvec)\n"
            "                  [--gpu-layers N] [--rpc HOST:PORT[,HOST:PORT...]]\n"
            "  --gpu-layers N: the last N layers (and their caches) on the build's GPU or RPC devices\n"
            "  --rpc: layers on rpc-servers (llama.cpp's RPC backend); --gpu-layers defaults to all\n");
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *document_path = "examples/demo/lighthouse.txt";
    const char *question = "Who kept the light on Gull Point for thirty-one years?";
    double fraction = 0.5, t0, prefill_ms;
    int64_t keep = 0, n_predict = 32, n_threads = 2, n, budget, i, pos, gpu_layers = -1, device_layers = 0;
    const char *rpc = NULL;
    ggml_backend_dev_t rpc_devices[9] = {NULL}; /* 8 servers and the NULL after them */
    char error[256];
    int full = 0, rc = 1, learned = 0, question_after = 0, mode_given = 0;
    const char *scorer_path = NULL;
    char default_scorer[600];
    llm_scorer scorer;
    llama_token *question_tokens = NULL;
    int64_t n_question = 0;
    kvec_config config;
    enum llama_flash_attn_type flash = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    enum ggml_type cache_type = GGML_TYPE_F16;
    struct llama_model_params mparams;
    struct llama_context_params cparams;
    struct llama_model *model = NULL;
    struct llama_context *ctx = NULL;
    const struct llama_vocab *vocab;
    kvec_llama kl;
    kvec_llama_stats stats = {0, 0, 0, 0};
    char *document = NULL, *user = NULL, *prompt = NULL, reply[4096] = "";
    llama_token *tokens = NULL, next;
    size_t document_length;

    memset(&config, 0, sizeof config);
    memset(&kl, 0, sizeof kl);
    memset(&scorer, 0, sizeof scorer);
    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--full")) { full = 1; continue; }
        if (!strcmp(argv[i], "--question-after")) { question_after = 1; continue; }
        if (!value) { usage(); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--document")) document_path = value;
        else if (!strcmp(argv[i], "--question")) question = value;
        else if (!strcmp(argv[i], "--policy")) {
            /* learned: select by the scores alone; learned-kvec: with K-VEC's uniqueness term */
            learned = !strcmp(value, "learned") || !strcmp(value, "learned-kvec");
            if (learned) config.policy = !strcmp(value, "learned") ? KVEC_POLICY_SNAPKV : KVEC_POLICY_KVEC;
            else if (kvec_llama_policy(value, &config.policy)) { fprintf(stderr, "kvec-llama: unknown policy %s\n", value); return 2; }
        } else if (!strcmp(argv[i], "--scorer")) scorer_path = value;
        else if (!strcmp(argv[i], "--mu")) {
            char *end;
            config.terms.mu = strtof(value, &end);
            if (end == value || *end || !(config.terms.mu > 0 && config.terms.mu < 100)) {
                fprintf(stderr, "kvec-llama: --mu must be a number in (0, 100)\n");
                return 2;
            }
        } else if (!strcmp(argv[i], "--budget")) fraction = atof(value);
        else if (!strcmp(argv[i], "--keep")) keep = atoll(value);
        else if (!strcmp(argv[i], "--flash-attn")) {
            if (util_flash_attn(value, &flash)) { usage(); return 2; }
        } else if (!strcmp(argv[i], "--threads")) n_threads = atoll(value);
        else if (!strcmp(argv[i], "--cache-type")) {
            if (util_cache_type(value, &cache_type)) { usage(); return 2; }
        } else if (!strcmp(argv[i], "--n-predict")) n_predict = atoll(value);
        else if (!strcmp(argv[i], "--gpu-layers")) gpu_layers = atoll(value);
        else if (!strcmp(argv[i], "--rpc")) rpc = value;
        else if (!strcmp(argv[i], "--budget-mode")) {
            mode_given = 1;
            if (!strcmp(value, "uniform")) config.budget_mode = KVEC_BUDGET_UNIFORM;
            else if (!strcmp(value, "pyramid")) config.budget_mode = KVEC_BUDGET_PYRAMID;
            else if (!strcmp(value, "adaptive")) config.budget_mode = KVEC_BUDGET_ADAPTIVE;
            else if (!strcmp(value, "global")) config.budget_mode = KVEC_BUDGET_GLOBAL;
            else { usage(); return 2; }
        }
        else { usage(); return 2; }
        i++;
    }
    if (!model_path) {
        fprintf(stderr, "kvec-llama: --model FILE.gguf is required (`make model` fetches SmolLM2 and prints its path)\n");
        return 2;
    }
    if (!(fraction > 0 && fraction <= 1) || keep < 0 || n_threads < 1 || n_predict < 1 || n_predict > 1024 ||
        gpu_layers < -1 || gpu_layers > 100000) {
        usage();
        return 2;
    }

    util_quiet_logs();
    util_threads(n_threads);
    llama_backend_init();
    mparams = llama_model_default_params();
    if (rpc) {
        if (util_add_rpc_servers(rpc, rpc_devices, 8, error, sizeof error) < 0) {
            fprintf(stderr, "kvec-llama: --rpc: %s\n", error);
            goto done;
        }
        mparams.devices = rpc_devices;
    }
    /* every layer on the devices with --rpc, else none unless asked */
    mparams.n_gpu_layers = (int32_t)(gpu_layers >= 0 ? gpu_layers : rpc ? 999 : 0);
    if (!(model = llama_model_load_from_file(model_path, mparams))) {
        fprintf(stderr, "kvec-llama: cannot load %s\n", model_path);
        goto done;
    }
    vocab = llama_model_get_vocab(model);
    if (kvec_llama_init(&kl, model, 32)) { fprintf(stderr, "kvec-llama: refused: %s\n", kl.error); goto done; }
    if (learned && !full) {
        if (!scorer_path) {
            llm_scorer_default_path(model_path, default_scorer, sizeof default_scorer);
            scorer_path = default_scorer;
        }
        if (util_load_scorer(&scorer, scorer_path, model_path, model, error, sizeof error)) {
            fprintf(stderr, "kvec-llama: %s%s\n", error,
                    scorer_path == default_scorer ? " (scorers are trained per model: `make scorer MODEL=FILE.gguf`, "
                                                    "docs/LEARNED.md; --scorer FILE names another file)" : "");
            goto done;
        }
        if (kvec_llama_set_scorers(&kl, scorer.layers)) { fprintf(stderr, "kvec-llama: refused: %s\n", kl.error); goto done; }
        config.head_floor = -1.0f; /* no share per head: the scores compare across heads */
        if (!mode_given) {
#ifdef KVEC_LLAMA_PER_HEAD
            config.budget_mode = KVEC_BUDGET_GLOBAL;
#else
            config.budget_mode = KVEC_BUDGET_UNIFORM;
            printf("note: stock llama.cpp: the budget is shared uniformly over the heads; the learned scores were "
                   "measured with one global budget, which needs the build with kvec-per-head.patch\n");
#endif
        }
    }

    if (!(document = util_read_file(document_path, &document_length))) {
        fprintf(stderr, "kvec-llama: cannot read %s\n", document_path);
        goto done;
    }
    user = (char *)malloc(strlen(INSTRUCTION) + document_length + strlen(question) + 32);
    if (!user) goto done;
    sprintf(user, "%s%s\n\nQuestion: %s", INSTRUCTION, document, question);
    if (!(prompt = util_chat_prompt(model, user)) ||
        !(tokens = util_tokenize(vocab, prompt, strlen(prompt), 1, &n))) {
        fprintf(stderr, "kvec-llama: cannot build the prompt\n");
        goto done;
    }
    if (question_after) { /* the prompt cut before "\n\nQuestion:", each part tokenized alone */
        const char *cut = strstr(prompt, "\n\nQuestion: ");
        int64_t n_head;
        llama_token *head;
        if (!cut || !(head = util_tokenize(vocab, prompt, (size_t)(cut - prompt), 1, &n_head)) ||
            !(question_tokens = util_tokenize(vocab, cut, strlen(cut), 0, &n_question))) {
            fprintf(stderr, "kvec-llama: cannot split the prompt before the question\n");
            goto done;
        }
        free(tokens);
        tokens = head;
        n = n_head;
    }

    cparams = llama_context_default_params();
    cparams.n_ctx = (uint32_t)(n + n_question + n_predict + 256);
    cparams.n_batch = cparams.n_ctx;
    cparams.n_threads = cparams.n_threads_batch = (int32_t)n_threads;
    cparams.flash_attn_type = flash;
    cparams.type_k = cparams.type_v = cache_type;
    kvec_llama_context_params(&kl, &cparams);
    if (!(ctx = llama_init_from_model(model, cparams))) {
        fprintf(stderr, "kvec-llama: cannot create the context (a quantised V cache needs --flash-attn on)\n");
        goto done;
    }

    budget = keep ? keep : (int64_t)(fraction * (double)n + 0.5);
    if (budget < kl.window) budget = kl.window;
    if (kvec_llama_begin(&kl, n)) { fprintf(stderr, "kvec-llama: %s\n", kl.error); goto done; }
    t0 = util_ms();
    if (util_decode(ctx, tokens, n, 0, 0)) { fprintf(stderr, "kvec-llama: prefill failed\n"); goto done; }
    prefill_ms = util_ms() - t0;
    printf("model %s: %lld layers, %lld query heads, %lld KV heads, head dim %lld\n", model_path,
           (long long)kl.n_layers, (long long)kl.n_heads, (long long)kl.n_kv_heads, (long long)kl.head_dim);
    printf("prompt %lld tokens, prefill %.0f ms (%lld threads, flash attention %s, V %s)\n", (long long)n,
           prefill_ms, (long long)n_threads, flash == LLAMA_FLASH_ATTN_TYPE_ENABLED ? "on" : "off",
           kl.v_trans == 1 ? "transposed [Hk*D][cells]" : "[cells][Hk*D]");
    if (kl.learned)
        printf("learned scores computed during the prefill: %.1f ms, %.2f%% of it (the attention inputs scored on "
               "the host, copied there first from a device)\n", kl.learned_ms, 100.0 * kl.learned_ms / prefill_ms);
    for (i = 0; i < kl.n_layers; i++)
        device_layers += kl.k[i] && kl.k[i]->buffer && !ggml_backend_buffer_is_host(kl.k[i]->buffer);
    if (device_layers)
        printf("cache: %lld of %lld layers in device memory (read for scoring with ggml_backend_tensor_get)\n",
               (long long)device_layers, (long long)kl.n_layers);
    if (full) {
        if (kvec_llama_check(&kl, ctx)) { fprintf(stderr, "kvec-llama: refused: %s\n", kl.error); goto done; }
        printf("full cache: %lld cells per KV head\n", (long long)n);
    } else {
        if ((learned ? kvec_llama_evict_learned : kvec_llama_evict)(&kl, ctx, &config, budget, &stats)) {
            fprintf(stderr, "kvec-llama: refused: %s\n", kl.error);
            goto done;
        }
        printf("kvec %s: %lld of %lld cells per KV head kept (%.0f%%), eviction %.2f ms (scoring %.2f, moving %.2f) = %.2f%% of the prefill\n",
               learned ? (config.policy == KVEC_POLICY_KVEC ? "learned-kvec" : "learned")
                       : kvec_policy_name(config.policy ? config.policy : KVEC_POLICY_KVEC), (long long)stats.kept,
               (long long)n, 100.0 * (double)stats.kept / (double)n, stats.plan_ms + stats.move_ms,
               stats.plan_ms, stats.move_ms, 100.0 * (stats.plan_ms + stats.move_ms) / prefill_ms);
        if (kl.moved_on_device)
            printf("the kept rows of %lld layers moved inside their device buffers by a ggml graph (GET_ROWS/SET_ROWS)\n",
                   (long long)kl.moved_on_device);
        if (stats.kept_max != stats.kept)
            printf("heads of different lengths: %lld on average, the longest %lld (the cache holds %lld cells, "
                   "each head masked to its own)\n", (long long)stats.kept, (long long)stats.kept_max, (long long)stats.kept_max);
    }

    /* The question read after the eviction, or the prefill's last logits
       (they survive the eviction): the first reply token. */
    if (question_after && util_decode(ctx, question_tokens, n_question, n, 0)) {
        fprintf(stderr, "kvec-llama: decoding the question failed\n");
        goto done;
    }
    if (question_after)
        printf("question read after the eviction: %lld tokens at positions %lld..%lld\n", (long long)n_question,
               (long long)n, (long long)(n + n_question - 1));
    next = util_argmax(llama_get_logits_ith(ctx, -1), llama_vocab_n_tokens(vocab));
    t0 = util_ms();
    for (pos = n + n_question, i = 0; i < n_predict && !llama_vocab_is_eog(vocab, next); i++, pos++) {
        util_append_piece(vocab, next, reply, sizeof reply);
        if (util_decode(ctx, &next, 1, pos, 0)) { fprintf(stderr, "kvec-llama: decode failed at position %lld\n", (long long)pos); goto done; }
        next = util_argmax(llama_get_logits_ith(ctx, -1), llama_vocab_n_tokens(vocab));
    }
    printf("question: %s\nreply (%lld tokens, %.1f ms/token, sequence now positions %d..%d): %s\n", question,
           (long long)i, i ? (util_ms() - t0) / (double)i : 0.0,
           llama_memory_seq_pos_min(llama_get_memory(ctx), 0), llama_memory_seq_pos_max(llama_get_memory(ctx), 0), reply);
    rc = 0;
done:
    if (ctx) llama_free(ctx);
    if (model) llama_model_free(model);
    kvec_llama_free(&kl);
    llm_scorer_free(&scorer);
    free(question_tokens);
    free(tokens);
    free(prompt);
    free(user);
    free(document);
    llama_backend_free();
    return rc;
}
