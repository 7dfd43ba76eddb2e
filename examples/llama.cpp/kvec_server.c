/* kvec_server.c - kvec in llama-server (see kvec_server.h). */
#include "kvec_server.h"
#include "util.h" /* util_load_scorer, and the engine's scorer files (examples/engine/scorer.h) */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int kvs_fail(kvec_server *kv, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(kv->error, sizeof kv->error, format, args);
    va_end(args);
    return -1;
}

/* The next ':'-separated field of *at into out (cap bytes); 0, or -1 when
   it is empty or too long. */
static int kvs_field(const char **at, char *out, size_t cap) {
    const char *end = strchr(*at, ':');
    size_t n = end ? (size_t)(end - *at) : strlen(*at);
    if (n == 0 || n >= cap) return -1;
    memcpy(out, *at, n);
    out[n] = '\0';
    *at += n + (end != NULL);
    return 0;
}

int kvec_server_parse(kvec_server *kv, const char *value) {
    static const char *const modes[] = {"uniform", "pyramid", "adaptive", "global"};
    static const kvec_budget_mode mode_values[] = {KVEC_BUDGET_UNIFORM, KVEC_BUDGET_PYRAMID, KVEC_BUDGET_ADAPTIVE,
                                                  KVEC_BUDGET_GLOBAL};
    char policy[32], budget[32], mode[32] = "", *end;
    const char *at = value ? value : "";
    kvec_config resolved;
    kvec_result r;
    size_t m;
    memset(kv, 0, sizeof *kv);
    if (!*at || at[strlen(at) - 1] == ':' || kvs_field(&at, policy, sizeof policy) ||
        kvs_field(&at, budget, sizeof budget) || (*at && kvs_field(&at, mode, sizeof mode)) || *at)
        return kvs_fail(kv, "'%s' is not POLICY:BUDGET[:MODE] (for example kvec:0.5, snapkv:512, kvec:25%%:global)",
                        value ? value : "");
    if (!strcmp(policy, "learned") || !strcmp(policy, "learned-kvec")) {
        /* by the learned scores alone (a policy that selects by the scores it is given), or with K-VEC's
           uniqueness term over them; no share per head: the scores compare across heads */
        kv->learned = 1;
        kv->config.policy = !strcmp(policy, "learned") ? KVEC_POLICY_SNAPKV : KVEC_POLICY_KVEC;
        kv->config.head_floor = -1.0f;
    } else if (kvec_llama_policy(policy, &kv->config.policy))
        return kvs_fail(kv, "unknown policy '%s' (kvec, snapkv, pyramidkv, streaming, h2o, tova, knorm, keydiff, random, "
                            "learned, learned-kvec)", policy);
    if (kv->config.policy == KVEC_POLICY_CRITICALKV || kv->config.policy == KVEC_POLICY_LAPROX)
        return kvs_fail(kv, "%s reads W_o, which llama.cpp holds quantised: not supported", policy);
    if (strchr(budget, '%') || strchr(budget, '.') || strchr(budget, 'e') || strchr(budget, 'E')) {
        double f = strtod(budget, &end);
        if (*end == '%' && end[1] == '\0') f /= 100;
        else if (*end != '\0') return kvs_fail(kv, "budget '%s' is not a number", budget);
        if (!(f == f) || f <= 0) return kvs_fail(kv, "a budget of %s keeps nothing: it must be above 0", budget);
        if (f > 1) return kvs_fail(kv, "a budget of %s is more than the whole prompt (at most 1.0 or 100%%)", budget);
        kv->fraction = f;
    } else {
        long long n = strtoll(budget, &end, 10);
        if (*end != '\0') return kvs_fail(kv, "budget '%s' is not a number", budget);
        if (n <= 0) return kvs_fail(kv, "a budget of %s cells keeps nothing: it must be above 0", budget);
        if (n > INT32_MAX) return kvs_fail(kv, "a budget of %s cells is more than any context holds", budget);
        if (n < KVEC_SERVER_WINDOW)
            return kvs_fail(kv, "a budget of %lld cells is below the window of %d always-kept cells "
                                "(a fraction needs a decimal point or %%: 0.5, 50%%)", n, KVEC_SERVER_WINDOW);
        kv->cells = (int64_t)n;
    }
    if (!*mode) { /* none given: uniform, or global for the learned scores where heads may differ in length */
#ifdef KVEC_LLAMA_PER_HEAD
        snprintf(mode, sizeof mode, "%s", kv->learned ? "global" : "uniform");
#else
        snprintf(mode, sizeof mode, "uniform");
#endif
    }
    for (m = 0; m < sizeof modes / sizeof *modes && strcmp(mode, modes[m]); m++) {}
    if (m == sizeof modes / sizeof *modes)
        return kvs_fail(kv, "unknown budget mode '%s' (uniform, pyramid, adaptive, global)", mode);
    kv->config.budget_mode = mode_values[m];
#ifndef KVEC_LLAMA_PER_HEAD
    if (kv->config.budget_mode != KVEC_BUDGET_UNIFORM)
        return kvs_fail(kv, "the %s budget mode gives heads different lengths: it needs llama.cpp built with "
                            "kvec-per-head.patch (this server was built without it)", mode);
#endif
    kv->config.window = KVEC_SERVER_WINDOW;
    if ((r = kvec_resolve_config(&kv->config, &resolved)) != KVEC_OK)
        return kvs_fail(kv, "kvec: %s", kvec_result_string(r));
    return 0;
}

#ifndef KVEC_SERVER_SCORERS
#define KVEC_SERVER_SCORERS "scorers"
#endif

/* The learned policies' scorer into kv->scorer, checked against the model
   and handed to the helper (kv->kl initialised). 0, or -1 with kv->error. */
static int kvs_load_scorer(kvec_server *kv, const struct llama_model *model, const char *model_path,
                           const char *scorer_path) {
    const int defaulted = !scorer_path || !*scorer_path;
    char default_path[1024], error[512];
    llm_scorer *scorer;
    if (!model_path || !*model_path)
        return kvs_fail(kv, "the learned policies need the model's file, to check the scorer against it");
    if (defaulted) {
        if (llm_scorer_path_in(KVEC_SERVER_SCORERS, model_path, default_path, sizeof default_path))
            return kvs_fail(kv, "the default scorer's path is too long: name one with --kv-evict-scorer");
        scorer_path = default_path;
    }
    if (!(scorer = (llm_scorer *)calloc(1, sizeof *scorer))) return kvs_fail(kv, "out of memory");
    if (util_load_scorer(scorer, scorer_path, model_path, model, error, sizeof error) ||
        kvec_llama_set_scorers(&kv->kl, scorer->layers)) {
        kvs_fail(kv, "%s%s", kv->kl.error[0] ? kv->kl.error : error,
                 defaulted ? " (scorers are trained per model: `make scorer MODEL=FILE.gguf` in the kvec checkout, "
                             "docs/LEARNED.md; --kv-evict-scorer FILE names another file)" : "");
        llm_scorer_free(scorer);
        free(scorer);
        return -1;
    }
    kv->scorer = scorer;
    return 0;
}

int kvec_server_init(kvec_server *kv, const struct llama_model *model, const char *model_path,
                     const char *scorer_path) {
    kvec_server_free(kv);
    if (kvec_llama_init(&kv->kl, model, KVEC_SERVER_WINDOW)) return kvs_fail(kv, "%s", kv->kl.error);
    if (kv->learned && kvs_load_scorer(kv, model, model_path, scorer_path)) {
        kvec_llama_free(&kv->kl);
        return -1;
    }
    kv->ready = 1;
    return 0;
}

void kvec_server_free(kvec_server *kv) {
    if (kv->ready) kvec_llama_free(&kv->kl);
    if (kv->scorer) {
        llm_scorer_free((llm_scorer *)kv->scorer);
        free(kv->scorer);
        kv->scorer = NULL;
    }
    kv->ready = 0;
    kv->armed = 0;
}

int kvec_server_begin(kvec_server *kv, struct llama_context *ctx, int64_t n_prompt) {
    kvec_server_disarm(kv);
    if (!kv->ready) return kvs_fail(kv, "kvec_server_init has not succeeded");
#ifdef KVEC_LLAMA_PER_HEAD
    /* the last prompt's heads of different lengths must not mask this one */
    if (kv->kl.head_limits) {
        if (llama_memory_set_head_pos_min(llama_get_memory(ctx), NULL, (int32_t)(kv->kl.n_layers * kv->kl.n_kv_heads)) != 0)
            return kvs_fail(kv, "llama_memory_set_head_pos_min refused to lift the per-head limits");
        kv->kl.head_limits = 0;
    }
#else
    (void)ctx;
#endif
    /* nothing to evict: a prompt no longer than the window, or within the budget */
    if (n_prompt <= KVEC_SERVER_WINDOW || (kv->cells && kv->cells >= n_prompt) || kv->fraction >= 1) return 0;
    if (kvec_llama_begin(&kv->kl, n_prompt)) return kvs_fail(kv, "%s", kv->kl.error);
    kv->armed = 1;
    return 0;
}

void kvec_server_disarm(kvec_server *kv) {
    kv->armed = 0;
    kv->kl.armed = 0;
}

int kvec_server_evict(kvec_server *kv, struct llama_context *ctx) {
    const int64_t N = kv->kl.n_prefix;
    kvec_llama_stats stats;
    int64_t B;
    if (!kv->armed) return 0;
    kv->armed = 0;
    B = kv->cells ? kv->cells : (int64_t)(kv->fraction * (double)N);
    if (B < KVEC_SERVER_WINDOW) B = KVEC_SERVER_WINDOW;
    kv->prompt_tokens = N;
    kv->kept_cells = kv->kept_mean = N;
    kv->evict_ms = 0;
    if (B >= N) { kvec_server_disarm(kv); return 0; }
    if ((kv->learned ? kvec_llama_evict_learned : kvec_llama_evict)(&kv->kl, ctx, &kv->config, B, &stats))
        return kvs_fail(kv, "%s", kv->kl.error);
    kv->kept_cells = stats.kept_max;
    kv->kept_mean = stats.kept;
    kv->evict_ms = stats.plan_ms + stats.move_ms;
    return 1;
}
