/* util.c - see util.h. */
#define _POSIX_C_SOURCE 199309L
#include "util.h"

#include "gguf.h" /* ggml's reader of GGUF files */

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef _OPENMP
#include <omp.h>
#endif

double util_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

char *util_read_file(const char *path, size_t *length) {
    FILE *f = fopen(path, "rb");
    char *text;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(text = (char *)malloc((size_t)n + 1))) {
        fclose(f);
        return NULL;
    }
    if (fread(text, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(text); return NULL; }
    fclose(f);
    text[n] = '\0';
    if (length) *length = (size_t)n;
    return text;
}

llama_token *util_tokenize(const struct llama_vocab *vocab, const char *text, size_t length,
                           int add_special, int64_t *n) {
    int32_t cap = (int32_t)length + 16, got;
    llama_token *tokens = (llama_token *)malloc((size_t)cap * sizeof *tokens);
    if (!tokens) return NULL;
    got = llama_tokenize(vocab, text, (int32_t)length, tokens, cap, add_special != 0, true);
    if (got < 0) { free(tokens); return NULL; }
    *n = got;
    return tokens;
}

char *util_chat_prompt(const struct llama_model *model, const char *user) {
    struct llama_chat_message message;
    const char *tmpl = llama_model_chat_template(model, NULL);
    int32_t cap = (int32_t)strlen(user) * 2 + 256, got;
    char *out = (char *)malloc((size_t)cap);
    if (!out) return NULL;
    message.role = "user";
    message.content = user;
    got = llama_chat_apply_template(tmpl, &message, 1, true, out, cap);
    if (got >= cap) {
        char *grown = (char *)realloc(out, (size_t)got + 1);
        if (!grown) { free(out); return NULL; }
        out = grown;
        got = llama_chat_apply_template(tmpl, &message, 1, true, out, got + 1);
    }
    if (got < 0) { free(out); return NULL; }
    out[got] = '\0';
    return out;
}

int util_decode(struct llama_context *ctx, const llama_token *tokens, int64_t n, int64_t pos0,
                int all_logits) {
    int64_t n_batch = llama_n_batch(ctx), done = 0, i;
    struct llama_batch batch = llama_batch_init((int32_t)(n < n_batch ? n : n_batch), 0, 1);
    int rc = 0;
    while (done < n && rc == 0) {
        int64_t m = n - done < n_batch ? n - done : n_batch;
        batch.n_tokens = (int32_t)m;
        for (i = 0; i < m; i++) {
            batch.token[i] = tokens[done + i];
            batch.pos[i] = (llama_pos)(pos0 + done + i);
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = (int8_t)(all_logits || done + i == n - 1);
        }
        rc = llama_decode(ctx, batch);
        done += m;
    }
    llama_batch_free(batch);
    return rc;
}

llama_token util_argmax(const float *logits, int64_t n_vocab) {
    int64_t i, best = 0;
    for (i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best]) best = i;
    return (llama_token)best;
}

static double util_logsumexp(const float *x, int64_t n) {
    double m = x[0], s = 0;
    int64_t i;
    for (i = 1; i < n; i++) if (x[i] > m) m = x[i];
    for (i = 0; i < n; i++) s += exp(x[i] - m);
    return m + log(s);
}

double util_kl(const float *logits_p, const float *logits_q, int64_t n_vocab, int *top1_agree) {
    double lp = util_logsumexp(logits_p, n_vocab), lq = util_logsumexp(logits_q, n_vocab), kl = 0;
    int64_t i;
    for (i = 0; i < n_vocab; i++) {
        double a = logits_p[i] - lp, b = logits_q[i] - lq;
        kl += exp(a) * (a - b);
    }
    if (top1_agree) *top1_agree = util_argmax(logits_p, n_vocab) == util_argmax(logits_q, n_vocab);
    return kl > 0 ? kl : 0; /* rounding can give -1e-12 for equal rows */
}

void util_append_piece(const struct llama_vocab *vocab, llama_token token, char *out, size_t out_cap) {
    char piece[256];
    size_t used = strlen(out);
    int32_t n = llama_token_to_piece(vocab, token, piece, (int32_t)sizeof piece - 1, 0, false);
    if (n <= 0) return;
    if (used + (size_t)n + 1 > out_cap) n = (int32_t)(out_cap - used - 1);
    memcpy(out + used, piece, (size_t)n);
    out[used + (size_t)n] = '\0';
}

int util_flash_attn(const char *value, enum llama_flash_attn_type *type) {
    if (!strcmp(value, "on")) { *type = LLAMA_FLASH_ATTN_TYPE_ENABLED; return 0; }
    if (!strcmp(value, "off")) { *type = LLAMA_FLASH_ATTN_TYPE_DISABLED; return 0; }
    return -1;
}

int util_cache_type(const char *value, enum ggml_type *type) {
    static const struct { const char *name; enum ggml_type type; } types[] = {
        {"f32", GGML_TYPE_F32}, {"f16", GGML_TYPE_F16}, {"bf16", GGML_TYPE_BF16},
        {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}};
    size_t i;
    for (i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(value, types[i].name)) { *type = types[i].type; return 0; }
    return -1;
}

void util_threads(int64_t n_threads) {
#ifdef _OPENMP
    omp_set_num_threads((int)n_threads);
#else
    (void)n_threads;
#endif
}

static void util_log(enum ggml_log_level level, const char *text, void *user_data) {
    (void)user_data;
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

void util_quiet_logs(void) {
    llama_log_set(util_log, NULL);
}

int util_add_rpc_servers(const char *endpoints, ggml_backend_dev_t *devices, int cap, char *error, size_t error_cap) {
    typedef ggml_backend_reg_t (*add_server_fn)(const char *endpoint);
    ggml_backend_reg_t rpc = ggml_backend_reg_by_name("RPC");
    void *symbol = rpc ? ggml_backend_reg_get_proc_address(rpc, "ggml_backend_rpc_add_server") : NULL;
    add_server_fn add_server = NULL;
    char endpoint[256];
    const char *at = endpoints, *comma;
    int n = 0;
    /* ISO C has no cast from an object pointer to a function pointer; POSIX
       (dlsym) guarantees that the two have the same representation */
    if (symbol) memcpy(&add_server, &symbol, sizeof add_server);
    if (!add_server) {
        snprintf(error, error_cap, "this llama.cpp was built without its RPC backend (GGML_RPC=ON)");
        return -1;
    }
    while (*at) {
        ggml_backend_reg_t server;
        size_t length;
        comma = strchr(at, ',');
        length = comma ? (size_t)(comma - at) : strlen(at);
        if (length == 0 || length >= sizeof endpoint) {
            snprintf(error, error_cap, "bad RPC endpoint list '%s' (HOST:PORT[,HOST:PORT...])", endpoints);
            return -1;
        }
        if (n == cap) {
            snprintf(error, error_cap, "more than %d RPC endpoints", cap);
            return -1;
        }
        memcpy(endpoint, at, length);
        endpoint[length] = '\0';
        if (!(server = add_server(endpoint)) || ggml_backend_reg_dev_count(server) < 1) {
            snprintf(error, error_cap, "no rpc-server answers at %s", endpoint);
            return -1;
        }
        devices[n++] = ggml_backend_reg_dev_get(server, 0);
        at += length + (comma != NULL);
    }
    if (n == 0) {
        snprintf(error, error_cap, "empty RPC endpoint list");
        return -1;
    }
    devices[n] = NULL;
    return n;
}

/* The fingerprint of llm_model_fingerprint, from the GGUF file itself:
   metadata through ggml's reader, the attention norms read from the file. */
static int util_gguf_fingerprint(const char *model_path, int64_t n_layers, int64_t n_embd, int64_t n_kv_heads,
                                 uint64_t *fingerprint, char *error, size_t error_cap) {
    struct gguf_init_params params = { true, NULL };
    struct gguf_context *g = gguf_init_from_file(model_path, params);
    uint64_t elements[GGML_TYPE_COUNT] = {0}, most = 0, h;
    char weight_type[32], name[64];
    float *norm = NULL;
    void *raw = NULL;
    FILE *f = NULL;
    int64_t t, l, e;
    int best = 0, type, rc = -1;
    if (!g) { snprintf(error, error_cap, "%s: not a GGUF file ggml can read", model_path); return -1; }
    for (t = 0; t < gguf_get_n_tensors(g); t++) { /* matrices of the blocks, by type */
        const int64_t *ne = gguf_get_tensor_ne(g, t);
        const enum ggml_type tt = gguf_get_tensor_type(g, t);
        if (!strncmp(gguf_get_tensor_name(g, t), "blk.", 4) && ne[1] > 1 && ne[2] == 1 && ne[3] == 1 &&
            (int)tt >= 0 && tt < GGML_TYPE_COUNT)
            elements[tt] += (uint64_t)(ne[0] * ne[1]);
    }
    for (type = 0; type < GGML_TYPE_COUNT; type++)
        if (elements[type] > most) { most = elements[type]; best = type; }
    snprintf(weight_type, sizeof weight_type, "%s", ggml_type_name((enum ggml_type)best));
    for (e = 0; weight_type[e]; e++) weight_type[e] = (char)toupper((unsigned char)weight_type[e]);
    h = llm_fingerprint_start(n_layers, n_embd, n_kv_heads, weight_type);
    norm = (float *)malloc((size_t)n_embd * sizeof *norm);
    raw = malloc((size_t)n_embd * sizeof(float));
    if (!norm || !raw || !(f = fopen(model_path, "rb"))) { snprintf(error, error_cap, "cannot read %s", model_path); goto done; }
    for (l = 0; l < n_layers; l++) {
        int64_t id;
        enum ggml_type tt;
        size_t bytes;
        snprintf(name, sizeof name, "blk.%lld.attn_norm.weight", (long long)l);
        if ((id = gguf_find_tensor(g, name)) < 0 || gguf_get_tensor_ne(g, id)[0] != n_embd ||
            gguf_get_tensor_ne(g, id)[1] != 1) {
            snprintf(error, error_cap, "%s: no %s of %lld values", model_path, name, (long long)n_embd);
            goto done;
        }
        tt = gguf_get_tensor_type(g, id);
        if (tt != GGML_TYPE_F32 && tt != GGML_TYPE_F16 && tt != GGML_TYPE_BF16) {
            snprintf(error, error_cap, "%s: %s is %s (f32, f16 or bf16 expected)", model_path, name, ggml_type_name(tt));
            goto done;
        }
        bytes = (size_t)n_embd * ggml_type_size(tt);
        if (fseek(f, (long)(gguf_get_data_offset(g) + gguf_get_tensor_offset(g, id)), SEEK_SET) ||
            fread(raw, 1, bytes, f) != bytes) {
            snprintf(error, error_cap, "%s: cannot read %s", model_path, name);
            goto done;
        }
        for (e = 0; e < n_embd; e++) {
            uint16_t half;
            if (tt == GGML_TYPE_F32) { memcpy(&norm[e], (char *)raw + 4 * e, 4); continue; }
            memcpy(&half, (char *)raw + 2 * e, 2);
            norm[e] = tt == GGML_TYPE_F16 ? kvec_f16_to_f32(half) : kvec_bf16_to_f32(half);
        }
        h = llm_fingerprint_layer(h, norm, n_embd);
    }
    *fingerprint = h;
    rc = 0;
done:
    if (f) fclose(f);
    free(norm);
    free(raw);
    gguf_free(g);
    return rc;
}

int util_load_scorer(llm_scorer *scorer, const char *scorer_path, const char *model_path,
                     const struct llama_model *model, char *error, size_t error_cap) {
    llm_scorer_target want;
    want.n_layers = llama_model_n_layer(model);
    want.n_embd = llama_model_n_embd(model);
    want.n_kv_heads = llama_model_n_head_kv(model);
    memset(scorer, 0, sizeof *scorer);
    if (util_gguf_fingerprint(model_path, want.n_layers, want.n_embd, want.n_kv_heads, &want.fingerprint, error,
                              error_cap))
        return -1;
    return llm_scorer_load_for(scorer, scorer_path, &want, error, error_cap);
}
