/* model.c - see model.h. Read top to bottom: loading (config, safetensors, GGUF),
   the forward pass (matmul, RMSNorm, RoPE, attention, MLP), then eviction. */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#define KVEC_IMPLEMENTATION
#include "model.h"

#include "gguf.h"
#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { LLM_MAX_HEAD_DIM = 256 }; /* the attention keeps a tile's queries on the stack */

/* ---------------------------------------------------------------- loading */

/* What the forward pass assumes, whichever file the numbers came from. */
static int check_config(const llm_config *c, const char *source, char *error, size_t size) {
    if (c->n_heads % c->n_kv_heads != 0)
        return gguf_error(error, size, "%s: %d attention heads are not a multiple of %d KV heads",
                         source, c->n_heads, c->n_kv_heads);
    if (c->n_kv_heads > 64)
        return gguf_error(error, size, "%s: %d KV heads (at most 64 supported)", source, c->n_kv_heads);
    /* Llama models use 64 or 128; the attention works in 16s. */
    if (c->head_dim < 16 || c->head_dim % 16 != 0 || c->head_dim > LLM_MAX_HEAD_DIM)
        return gguf_error(error, size, "%s: head_dim %d is not a multiple of 16 up to %d", source, c->head_dim,
                         LLM_MAX_HEAD_DIM);
    return 0;
}

/* An integer field of config.json; fallback when absent (< 0: required). */
static int config_int(const json_value *root, const char *key, int fallback, int *out,
                      char *error, size_t size) {
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) {
        if (fallback < 0) return gguf_error(error, size, "config.json: missing \"%s\"", key);
        *out = fallback;
        return 0;
    }
    if (v->type != JSON_NUMBER || v->number != floor(v->number) || v->number < 1 || v->number > 1e7)
        return gguf_error(error, size, "config.json: \"%s\" must be a positive integer", key);
    *out = (int)v->number;
    return 0;
}

static int parse_config(llm_config *c, const char *text, size_t length, char *error, size_t size) {
    char json_error[128];
    json_value *root = json_parse(text, length, json_error, sizeof json_error);
    const json_value *v;
    int status = -1, context = 0;
    if (!root) return gguf_error(error, size, "config.json: %s", json_error);
    memset(c, 0, sizeof *c);
    if (config_int(root, "vocab_size", -1, &c->vocab_size, error, size) ||
        config_int(root, "hidden_size", -1, &c->hidden_size, error, size) ||
        config_int(root, "intermediate_size", -1, &c->intermediate_size, error, size) ||
        config_int(root, "num_hidden_layers", -1, &c->n_layers, error, size) ||
        config_int(root, "num_attention_heads", -1, &c->n_heads, error, size) ||
        config_int(root, "num_key_value_heads", c->n_heads, &c->n_kv_heads, error, size) ||
        config_int(root, "head_dim", c->hidden_size / c->n_heads, &c->head_dim, error, size) ||
        config_int(root, "max_position_embeddings", 0, &context, error, size))
        goto done;
    c->context_length = context;
    strcpy(c->architecture, "llama");
    c->rms_norm_eps = (v = json_get(root, "rms_norm_eps")) && v->type == JSON_NUMBER ? (float)v->number : 1e-6f;
    c->rope_theta = (v = json_get(root, "rope_theta")) && v->type == JSON_NUMBER ? (float)v->number : 10000.0f;
    /* LlamaConfig's default is untied. */
    c->tied_embeddings = (v = json_get(root, "tie_word_embeddings")) && v->type == JSON_TRUE;
    if (check_config(c, "config.json", error, size)) goto done;
    /* What this engine does not implement is refused rather than ignored. */
    if ((v = json_get(root, "model_type")) && (v->type != JSON_STRING || strcmp(v->string, "llama"))) {
        gguf_error(error, size, "config.json: model_type must be \"llama\" (other architectures load from GGUF)");
        goto done;
    }
    if ((v = json_get(root, "hidden_act")) && (v->type != JSON_STRING || strcmp(v->string, "silu"))) {
        gguf_error(error, size, "config.json: hidden_act must be \"silu\"");
        goto done;
    }
    if ((v = json_get(root, "rope_scaling")) && v->type != JSON_NULL) {
        gguf_error(error, size, "config.json: rope_scaling is not supported");
        goto done;
    }
    if (((v = json_get(root, "attention_bias")) && v->type == JSON_TRUE) ||
        ((v = json_get(root, "mlp_bias")) && v->type == JSON_TRUE)) {
        gguf_error(error, size, "config.json: biases are not supported");
        goto done;
    }
    status = 0;
done:
    json_free(root);
    return status;
}

/* The GGUF metadata of a llama or qwen2 model. Keys are `<arch>.<name>`. */
static int gguf_arch_int(const gguf_file *f, const char *arch, const char *name, int64_t fallback,
                         int *out, char *error, size_t size) {
    char key[96];
    int64_t v;
    snprintf(key, sizeof key, "%s.%s", arch, name);
    if (gguf_get_int(f, key, &v)) {
        if (fallback < 0 || gguf_find(f, key))
            return gguf_error(error, size, "GGUF: %s %s", key, gguf_find(f, key) ? "is not an integer" : "is missing");
        v = fallback;
    }
    if (v < 0 || v > 100000000 || (fallback < 0 && v == 0))
        return gguf_error(error, size, "GGUF: %s = %lld is out of range", key, (long long)v);
    *out = (int)v;
    return 0;
}

static int gguf_config(llm_config *c, const gguf_file *f, char *error, size_t size) {
    const gguf_tensor *embed = gguf_find_tensor(f, "token_embd.weight");
    gguf_string arch, scaling;
    char key[96];
    double number;
    int rope_dims, key_length, value_length, experts, context, vocab;
    memset(c, 0, sizeof *c);
    if (gguf_get_string(f, "general.architecture", &arch))
        return gguf_error(error, size, "GGUF: general.architecture is missing");
    if (!gguf_string_equals(arch, "llama") && !gguf_string_equals(arch, "qwen2"))
        return gguf_error(error, size, "GGUF: architecture \"%.*s\" is not supported (llama and qwen2 are)",
                         arch.length > 40 ? 40 : (int)arch.length, arch.data);
    memcpy(c->architecture, arch.data, (size_t)arch.length);
    if (gguf_arch_int(f, c->architecture, "block_count", -1, &c->n_layers, error, size) ||
        gguf_arch_int(f, c->architecture, "embedding_length", -1, &c->hidden_size, error, size) ||
        gguf_arch_int(f, c->architecture, "feed_forward_length", -1, &c->intermediate_size, error, size) ||
        gguf_arch_int(f, c->architecture, "attention.head_count", -1, &c->n_heads, error, size) ||
        gguf_arch_int(f, c->architecture, "attention.head_count_kv", c->n_heads, &c->n_kv_heads, error, size) ||
        gguf_arch_int(f, c->architecture, "attention.key_length", c->hidden_size / c->n_heads, &key_length, error, size) ||
        gguf_arch_int(f, c->architecture, "attention.value_length", key_length, &value_length, error, size) ||
        gguf_arch_int(f, c->architecture, "rope.dimension_count", key_length, &rope_dims, error, size) ||
        gguf_arch_int(f, c->architecture, "expert_count", 0, &experts, error, size) ||
        gguf_arch_int(f, c->architecture, "context_length", 0, &context, error, size))
        return -1;
    if (c->n_kv_heads == 0) return gguf_error(error, size, "GGUF: %s.attention.head_count_kv is 0", c->architecture);
    /* Each layer has 9 tensors or more: a larger count is a broken file,
       refused before anything is sized by it. */
    if ((uint64_t)c->n_layers * 9 > f->n_tensors)
        return gguf_error(error, size, "GGUF: %s.block_count %d, but the file holds %llu tensors", c->architecture,
                         c->n_layers, (unsigned long long)f->n_tensors);
    c->head_dim = key_length;
    c->context_length = context;
    if (value_length != key_length || rope_dims != key_length || experts > 0)
        return gguf_error(error, size, "GGUF: %s", experts > 0 ? "mixture-of-experts models are not supported"
                         : value_length != key_length ? "value and key head sizes differ (not supported)"
                         : "RoPE on part of each head is not supported");
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", c->architecture);
    if (gguf_get_float(f, key, &number) || !(number > 0.0 && number < 1.0))
        return gguf_error(error, size, "GGUF: %s is missing or out of range", key);
    c->rms_norm_eps = (float)number;
    snprintf(key, sizeof key, "%s.rope.freq_base", c->architecture);
    c->rope_theta = gguf_get_float(f, key, &number) ? 10000.0f : (float)number; /* llama.cpp's default */
    if (!(c->rope_theta > 1.0f)) return gguf_error(error, size, "GGUF: %s is out of range", key);
    snprintf(key, sizeof key, "%s.rope.scaling.type", c->architecture);
    if (!gguf_get_string(f, key, &scaling) && !gguf_string_equals(scaling, "none"))
        return gguf_error(error, size, "GGUF: RoPE scaling \"%.*s\" is not supported",
                         scaling.length > 40 ? 40 : (int)scaling.length, scaling.data);
    /* The vocabulary is the embedding's row count; the metadata may repeat it. */
    if (!embed) return gguf_error(error, size, "GGUF: missing tensor token_embd.weight");
    if (embed->n_dims != 2 || embed->ne[1] > 100000000)
        return gguf_error(error, size, "GGUF: token_embd.weight is not a [vocab][hidden] matrix");
    c->vocab_size = (int)embed->ne[1];
    if (gguf_arch_int(f, c->architecture, "vocab_size", c->vocab_size, &vocab, error, size)) return -1;
    if (vocab != c->vocab_size)
        return gguf_error(error, size, "GGUF: %s.vocab_size %d disagrees with token_embd.weight's %d rows",
                         c->architecture, vocab, c->vocab_size);
    c->tied_embeddings = gguf_find_tensor(f, "output.weight") == NULL;
    /* qwen2 always has Q/K/V biases; a llama file may. */
    c->attention_bias = !strcmp(c->architecture, "qwen2") || gguf_find_tensor(f, "blk.0.attn_q.bias") != NULL;
    return check_config(c, "GGUF", error, size);
}

/* One tensor the model needs: where its fp32 copy goes and its shape. */
typedef struct wanted_tensor {
    char    name[96];
    float **slot;
    int64_t rows, cols;  /* cols == 0: a vector of `rows` */
    int64_t pair_heads;  /* GGUF llama Q/K: heads whose rows llama.cpp interleaved; 0: rows as stored */
} wanted_tensor;

/* A tensor's name from its pattern ("blk.%d.attn_q.weight") and layer. */
static void name_tensor(char *name, size_t size, const char *pattern, int layer) {
    snprintf(name, size, pattern, layer);
}

/* The tensors of a Llama/Qwen2 model under either file's names, with their
   fp32 copies laid out in one block (model->memory). Returns the count, or
   -1 when out of memory. */
static int plan_weights(llm_model *model, int gguf, wanted_tensor **out) {
    const llm_config *c = &model->config;
    const int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const int64_t q_rows = (int64_t)c->n_heads * c->head_dim, kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
    /* llama.cpp stores a llama model's Q and K rows so that rotating adjacent
       pairs reproduces Hugging Face's rotation of halves; this engine rotates
       halves, so those rows are put back in Hugging Face's order at load. */
    const int64_t q_pairs = gguf && !strcmp(c->architecture, "llama") ? c->n_heads : 0;
    const int64_t k_pairs = q_pairs ? c->n_kv_heads : 0;
    size_t floats = 0;
    float *next;
    int n = 0, i, l;
    wanted_tensor *wanted = (wanted_tensor *)calloc((size_t)(3 + 12 * c->n_layers), sizeof *wanted);
    model->layers = (llm_layer_weights *)calloc((size_t)c->n_layers, sizeof *model->layers);
    *out = wanted;
    if (!wanted || !model->layers) return -1;
#define WANT(slot_, rows_, cols_, pairs_, hf_name, gguf_name, ...) do { \
        wanted_tensor *w_ = &wanted[n++]; \
        name_tensor(w_->name, sizeof w_->name, gguf ? gguf_name : hf_name, __VA_ARGS__); \
        w_->slot = (slot_); w_->rows = (rows_); w_->cols = (cols_); w_->pair_heads = (pairs_); \
        floats += (size_t)((rows_) * ((cols_) ? (cols_) : 1)); } while (0)
    WANT(&model->embed, V, H, 0, "model.embed_tokens.weight", "token_embd.weight", 0);
    WANT(&model->final_norm, H, 0, 0, "model.norm.weight", "output_norm.weight", 0);
    if (!c->tied_embeddings) WANT(&model->lm_head, V, H, 0, "lm_head.weight", "output.weight", 0);
    for (l = 0; l < c->n_layers; l++) {
        llm_layer_weights *w = &model->layers[l];
        WANT(&w->attn_norm, H, 0, 0, "model.layers.%d.input_layernorm.weight", "blk.%d.attn_norm.weight", l);
        WANT(&w->mlp_norm, H, 0, 0, "model.layers.%d.post_attention_layernorm.weight", "blk.%d.ffn_norm.weight", l);
        WANT(&w->wq, q_rows, H, q_pairs, "model.layers.%d.self_attn.q_proj.weight", "blk.%d.attn_q.weight", l);
        WANT(&w->wk, kv_rows, H, k_pairs, "model.layers.%d.self_attn.k_proj.weight", "blk.%d.attn_k.weight", l);
        WANT(&w->wv, kv_rows, H, 0, "model.layers.%d.self_attn.v_proj.weight", "blk.%d.attn_v.weight", l);
        if (c->attention_bias) {
            WANT(&w->bq, q_rows, 0, q_pairs, "model.layers.%d.self_attn.q_proj.bias", "blk.%d.attn_q.bias", l);
            WANT(&w->bk, kv_rows, 0, k_pairs, "model.layers.%d.self_attn.k_proj.bias", "blk.%d.attn_k.bias", l);
            WANT(&w->bv, kv_rows, 0, 0, "model.layers.%d.self_attn.v_proj.bias", "blk.%d.attn_v.bias", l);
        }
        WANT(&w->wo, H, q_rows, 0, "model.layers.%d.self_attn.o_proj.weight", "blk.%d.attn_output.weight", l);
        WANT(&w->w_gate, I, H, 0, "model.layers.%d.mlp.gate_proj.weight", "blk.%d.ffn_gate.weight", l);
        WANT(&w->w_up, I, H, 0, "model.layers.%d.mlp.up_proj.weight", "blk.%d.ffn_up.weight", l);
        WANT(&w->w_down, H, I, 0, "model.layers.%d.mlp.down_proj.weight", "blk.%d.ffn_down.weight", l);
    }
#undef WANT
    floats += (size_t)c->head_dim / 2;
    if (!(model->memory = malloc(floats * sizeof(float)))) return -1;
    next = (float *)model->memory;
    for (i = 0; i < n; i++) {
        *wanted[i].slot = next;
        next += wanted[i].rows * (wanted[i].cols ? wanted[i].cols : 1);
    }
    model->rope_inv_freq = next;
    return n;
}

static float element_to_f32(const unsigned char *p, const char *dtype) {
    float f;
    uint16_t h;
    if (dtype[1] == '3') { memcpy(&f, p, 4); return f; } /* F32 (little-endian hosts) */
    memcpy(&h, p, 2);
    return dtype[0] == 'B' ? kvec_bf16_to_f32(h) : kvec_f16_to_f32(h);
}

/* Checks one safetensors entry against what the model needs and converts it. */
static int load_safetensors_tensor(const json_value *entry, const wanted_tensor *w, const unsigned char *data,
                                   uint64_t data_bytes, char *dtype_seen, char *error, size_t size) {
    const json_value *dtype = json_get(entry, "dtype"), *shape = json_get(entry, "shape");
    const json_value *offsets = json_get(entry, "data_offsets");
    const json_value *b, *e;
    int64_t want_elems = w->cols ? w->rows * w->cols : w->rows, i;
    size_t element_size;
    double begin, end;
    if (!dtype || dtype->type != JSON_STRING || !shape || shape->type != JSON_ARRAY ||
        !offsets || offsets->type != JSON_ARRAY || offsets->length != 2)
        return gguf_error(error, size, "model.safetensors: malformed entry for %s", w->name);
    if (!strcmp(dtype->string, "F32")) element_size = 4;
    else if (!strcmp(dtype->string, "F16") || !strcmp(dtype->string, "BF16")) element_size = 2;
    else return gguf_error(error, size, "model.safetensors: %s has dtype %s (F32, F16, BF16 supported)",
                          w->name, dtype->string);
    if (shape->length != (size_t)(w->cols ? 2 : 1) ||
        json_at(shape, 0)->number != (double)w->rows ||
        (w->cols && json_at(shape, 1)->number != (double)w->cols)) {
        if (w->cols)
            return gguf_error(error, size, "model.safetensors: %s should be [%lld, %lld] by config.json",
                             w->name, (long long)w->rows, (long long)w->cols);
        return gguf_error(error, size, "model.safetensors: %s should be [%lld] by config.json",
                         w->name, (long long)w->rows);
    }
    b = json_at(offsets, 0); e = json_at(offsets, 1);
    begin = b->type == JSON_NUMBER ? b->number : -1; end = e->type == JSON_NUMBER ? e->number : -1;
    if (begin < 0 || end < begin || end > (double)data_bytes ||
        end - begin != (double)want_elems * (double)element_size)
        return gguf_error(error, size, "model.safetensors: %s lies outside the file (truncated?)", w->name);
    for (i = 0; i < want_elems; i++)
        (*w->slot)[i] = element_to_f32(data + (uint64_t)begin + (uint64_t)i * element_size, dtype->string);
    if (!dtype_seen[0]) strcpy(dtype_seen, dtype->string);
    return 0;
}

static int load_safetensors(llm_model *model, const char *dir, char *error, size_t size) {
    char path[1024], json_error[128];
    char *text = NULL, *file = NULL;
    size_t text_length = 0, file_length = 0;
    json_value *header = NULL;
    wanted_tensor *wanted = NULL;
    llm_config *c = &model->config;
    int status = -1, n_wanted, i;
    uint64_t header_bytes;

    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!(text = json_read_file(path, &text_length))) {
        gguf_error(error, size, "cannot read %s", path);
        goto done;
    }
    if (parse_config(c, text, text_length, error, size)) goto done;

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!(file = json_read_file(path, &file_length))) {
        gguf_error(error, size, "cannot read %s", path);
        goto done;
    }
    /* safetensors: u64 little-endian header size, JSON header, then data. */
    if (file_length < 8) { gguf_error(error, size, "model.safetensors: truncated (no header)"); goto done; }
    for (header_bytes = 0, i = 7; i >= 0; i--) header_bytes = header_bytes << 8 | (unsigned char)file[i];
    if (header_bytes > file_length - 8) {
        gguf_error(error, size, "model.safetensors: header of %llu bytes in a %zu-byte file (truncated?)",
                  (unsigned long long)header_bytes, file_length);
        goto done;
    }
    if (!(header = json_parse(file + 8, (size_t)header_bytes, json_error, sizeof json_error))) {
        gguf_error(error, size, "model.safetensors header: %s", json_error);
        goto done;
    }
    if ((n_wanted = plan_weights(model, 0, &wanted)) < 0) { gguf_error(error, size, "out of memory"); goto done; }
    for (i = 0; i < n_wanted; i++) {
        const json_value *entry = json_get(header, wanted[i].name);
        if (!entry) { gguf_error(error, size, "model.safetensors: missing tensor %s", wanted[i].name); goto done; }
        if (load_safetensors_tensor(entry, &wanted[i], (const unsigned char *)file + 8 + header_bytes,
                                    file_length - 8 - header_bytes, c->weight_dtype, error, size))
            goto done;
    }
    status = 0;
done:
    free(text);
    free(file);
    free(wanted);
    json_free(header);
    return status;
}

/* Checks one GGUF tensor against what the model needs and converts it, row
   by row (rows are whole blocks of every type), undoing llama.cpp's Q/K row
   interleaving where pair_heads says so. */
static int load_gguf_tensor(const gguf_file *f, const wanted_tensor *w, char *error, size_t size) {
    const gguf_tensor *t = gguf_find_tensor(f, w->name);
    /* A vector is one row; its interleaving is undone element-wise below. */
    const int64_t rows = w->cols ? w->rows : 1, cols = w->cols ? w->cols : w->rows;
    uint64_t row_bytes;
    int64_t r;
    if (!t) return gguf_error(error, size, "GGUF: missing tensor %s", w->name);
    if (w->cols ? t->n_dims != 2 || t->ne[0] != (uint64_t)cols || t->ne[1] != (uint64_t)rows
                : t->n_dims != 1 || t->ne[0] != (uint64_t)cols) {
        if (w->cols)
            return gguf_error(error, size, "GGUF: %s has ne [%llu, %llu, %llu, %llu], the metadata gives [%lld, %lld]",
                             w->name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                             (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                             (long long)cols, (long long)rows);
        return gguf_error(error, size, "GGUF: %s has ne [%llu, %llu, %llu, %llu], the metadata gives [%lld]",
                         w->name, (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                         (unsigned long long)t->ne[2], (unsigned long long)t->ne[3], (long long)cols);
    }
    if (!strcmp(gguf_type_name(t->type), "unsupported"))
        return gguf_error(error, size, "GGUF: %s has ggml type %u, which this engine does not read "
                         "(F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K)", w->name, t->type);
    if (!(row_bytes = gguf_type_bytes(t->type, (uint64_t)cols)) || !t->data)
        return gguf_error(error, size, "GGUF: the rows of %s (%lld elements) are not whole %s blocks",
                         w->name, (long long)cols, gguf_type_name(t->type));
    if (w->pair_heads && !w->cols) {
        /* Within a head, stored element 2i+s is Hugging Face's s*D/2 + i. */
        const int64_t D = cols / w->pair_heads;
        float *stored = (float *)malloc((size_t)cols * sizeof(float));
        if (!stored) return gguf_error(error, size, "out of memory");
        gguf_to_f32(t->type, t->data, stored, (uint64_t)cols);
        for (r = 0; r < cols; r++) (*w->slot)[r - r % D + (r % D) % 2 * (D / 2) + (r % D) / 2] = stored[r];
        free(stored);
        return 0;
    }
#pragma omp parallel for schedule(static)
    for (r = 0; r < rows; r++) {
        int64_t to = r;
        if (w->pair_heads) {
            const int64_t D = rows / w->pair_heads, within = r % D;
            to = r - within + within % 2 * (D / 2) + within / 2;
        }
        gguf_to_f32(t->type, t->data + (uint64_t)r * row_bytes, *w->slot + to * cols, (uint64_t)cols);
    }
    return 0;
}

/* The most common type of the layer matrices by element count: GGUF files
   mix types (Q4_K here, Q6_K there), and one name describes the file. */
static void gguf_weight_type(const gguf_file *f, char *name, size_t size) {
    uint64_t elements[64] = {0}, best = 0, i;
    uint32_t type, best_type = 0;
    for (i = 0; i < f->n_tensors; i++)
        if (f->tensors[i].n_dims == 2 && f->tensors[i].type < 64 && f->tensors[i].name.length > 4 &&
            !memcmp(f->tensors[i].name.data, "blk.", 4))
            elements[f->tensors[i].type] += f->tensors[i].n_elements;
    for (type = 0; type < 64; type++)
        if (elements[type] > best) { best = elements[type]; best_type = type; }
    snprintf(name, size, "%s", gguf_type_name(best_type));
}

static int load_gguf(llm_model *model, const char *path, char *error, size_t size) {
    gguf_file f;
    wanted_tensor *wanted = NULL;
    char gguf_message[256];
    int status = -1, n_wanted, i;
    if (gguf_open(&f, path, gguf_message, sizeof gguf_message))
        return gguf_error(error, size, "GGUF: %s", gguf_message);
    if (gguf_config(&model->config, &f, error, size)) goto done;
    if ((n_wanted = plan_weights(model, 1, &wanted)) < 0) { gguf_error(error, size, "out of memory"); goto done; }
    for (i = 0; i < n_wanted; i++)
        if (load_gguf_tensor(&f, &wanted[i], error, size)) goto done;
    gguf_weight_type(&f, model->config.weight_dtype, sizeof model->config.weight_dtype);
    status = 0;
done:
    free(wanted);
    gguf_close(&f);
    return status;
}

/* A GGUF file by its name or its first four bytes; anything else is taken
   for a Hugging Face model directory. */
static int is_gguf(const char *path) {
    const size_t n = strlen(path);
    unsigned char magic[4];
    FILE *f;
    int found;
    if (n >= 5 && !strcmp(path + n - 5, ".gguf")) return 1;
    if (!(f = fopen(path, "rb"))) return 0;
    found = fread(magic, 1, 4, f) == 4 && !memcmp(magic, "GGUF", 4);
    fclose(f);
    return found;
}

int llm_load(llm_model *model, const char *path, char *error, size_t size) {
    llm_config *c = &model->config;
    int i;
    memset(model, 0, sizeof *model);
    if (is_gguf(path) ? load_gguf(model, path, error, size) : load_safetensors(model, path, error, size)) {
        llm_free(model);
        return -1;
    }
    if (c->tied_embeddings) model->lm_head = model->embed;
    /* inv_freq_i = 1 / theta^(2i/d), in fp32 as PyTorch computes it: the
       models were trained with those exact angles. */
    for (i = 0; i < c->head_dim / 2; i++)
        model->rope_inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
    return 0;
}

void llm_free(llm_model *model) {
    free(model->memory);
    free(model->layers);
    memset(model, 0, sizeof *model);
}

/* ------------------------------------------------------------------ cache */

enum { LLM_MAX_CHUNK = 256 };
/* The attention's tiles (see attention): query rows, and keys per block. */
enum { ATT_ROWS = 4, ATT_KEYS = 64 };

int llm_cache_init(llm_cache *cache, const llm_model *model, int64_t capacity) {
    const llm_config *c = &model->config;
    const int64_t D = c->head_dim, L = c->n_layers, Hk = c->n_kv_heads, H = c->n_heads;
    const int64_t chunk = LLM_MAX_CHUNK;
    const int64_t width = c->intermediate_size > c->hidden_size ? c->intermediate_size : c->hidden_size;
    int64_t per_layer, work, probabilities, l;
    float *p;
    memset(cache, 0, sizeof *cache);
    if (capacity < 1 || Hk > 64) return -1;
    cache->model = model;
    capacity = (capacity + ATT_KEYS - 1) / ATT_KEYS * ATT_KEYS; /* the attention reads keys in blocks */
    cache->n_layers = (int)L; cache->n_heads = (int)H; cache->n_kv_heads = (int)Hk; cache->head_dim = (int)D;
    cache->capacity = capacity;
    cache->max_chunk = (int)chunk;
#ifdef _OPENMP
    cache->n_threads = omp_get_max_threads();
#else
    cache->n_threads = 1;
#endif
    per_layer = 2 * Hk * D * capacity + capacity * H * D;
    /* x, xn, q, k, v, att, gate, up, and the matmul's transposed tokens */
    work = chunk * (2 * c->hidden_size + 2 * H * D + 2 * Hk * D + 2 * width + (width > H * D ? width : H * D));
    probabilities = (int64_t)cache->n_threads * ATT_ROWS * capacity;
    cache->keys = (float **)calloc((size_t)(3 * L), sizeof(float *));
    cache->length = (int64_t *)calloc((size_t)(L * Hk), sizeof(int64_t));
    /* Zeroed, so that the attention loop's reads past a head's length (up to
       the next multiple of ATT_KEYS, discarded) never touch uninitialised memory. */
    cache->memory = calloc((size_t)(L * per_layer + work + probabilities), sizeof(float));
    if (!cache->keys || !cache->length || !cache->memory) { llm_cache_free(cache); return -1; }
    cache->values = cache->keys + L;
    cache->queries = cache->keys + 2 * L;
    p = (float *)cache->memory;
    for (l = 0; l < L; l++) {
        cache->keys[l] = p;    p += Hk * D * capacity;
        cache->values[l] = p;  p += Hk * capacity * D;
        cache->queries[l] = p; p += capacity * H * D;
    }
    cache->work = p;          p += work;
    cache->probabilities = p;
    return 0;
}

int llm_cache_set_scorers(llm_cache *cache, const kvec_scorer *scorers) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, E = cache->model->config.hidden_size;
    size_t bytes = 0, most = 0;
    int64_t l;
    if (!scorers) { cache->scorers = NULL; return 0; }
    for (l = 0; l < L; l++) {
        if (scorers[l].n_embd != E || scorers[l].n_kv_heads != Hk ||
            kvec_learned_scores_scratch_bytes(&scorers[l], &bytes) != KVEC_OK)
            return -1;
        most = bytes > most ? bytes : most;
    }
    if (!cache->learned && !(cache->learned = (float *)calloc((size_t)(L * Hk * cache->capacity), sizeof(float))))
        return -1;
    if (most > cache->learned_scratch_bytes) {
        void *grown = realloc(cache->learned_scratch, most);
        if (!grown) return -1;
        cache->learned_scratch = grown;
        cache->learned_scratch_bytes = most;
    }
    cache->scorers = scorers;
    return 0;
}

int llm_cache_log_hidden(llm_cache *cache, int on) {
    if (on && !cache->hidden_log &&
        !(cache->hidden_log = (float *)malloc((size_t)(cache->n_layers * cache->capacity *
                                                       cache->model->config.hidden_size) * sizeof(float))))
        return -1;
    if (!on) { free(cache->hidden_log); cache->hidden_log = NULL; }
    return 0;
}

void llm_cache_free(llm_cache *cache) {
    free(cache->learned);
    free(cache->learned_scratch);
    free(cache->hidden_log);
    free(cache->decode_memory);
    free(cache->observed);
    free(cache->memory);
    free(cache->keys);
    free(cache->length);
    free(cache->kvec_scratch);
    free(cache->plan_memory);
    memset(cache, 0, sizeof *cache);
}

void llm_cache_reset(llm_cache *cache) {
    int64_t i;
    cache->n_positions = 0;
    cache->decoding = 0;
    cache->learned_failed = 0;
    for (i = 0; i < (int64_t)cache->n_layers * cache->n_kv_heads; i++) cache->length[i] = 0;
}

void llm_cache_copy(llm_cache *dst, const llm_cache *src) {
    const int64_t D = src->head_dim, Hk = src->n_kv_heads, cap = src->capacity;
    int64_t l, j, d;
    for (l = 0; l < src->n_layers; l++) {
        for (j = 0; j < Hk; j++) {
            const int64_t n = src->length[l * Hk + j];
            for (d = 0; d < D; d++)
                memcpy(dst->keys[l] + (j * D + d) * cap, src->keys[l] + (j * D + d) * cap, (size_t)n * sizeof(float));
            memcpy(dst->values[l] + j * cap * D, src->values[l] + j * cap * D, (size_t)(n * D) * sizeof(float));
            dst->length[l * Hk + j] = n;
        }
        memcpy(dst->queries[l], src->queries[l], (size_t)(src->n_positions * src->n_heads * D) * sizeof(float));
    }
    dst->n_positions = src->n_positions;
}

/* ---------------------------------------------------------- forward pass */

/* The matrix product is most of the work. Two kernels, chosen by the number
   of tokens; each output is one thread's sum in a fixed order, so results do
   not depend on the thread count.

   Few tokens (decoding): dot products, four tokens sharing each pass over a
   weight row. The weights stream from memory once; that is the bound.

   Many tokens (prefill): the tokens are copied transposed, TILE_TOKENS at a
   time (xt: [in][TILE_TOKENS]), and a tile of TILE_ROWS weight rows x
   TILE_TOKENS tokens keeps its 16 sums (4 rows x 4 vectors of 16 tokens) in
   registers: per input element, 4 weight broadcasts and 4 token vectors feed
   16 vector multiply-adds. The input dimension goes TILE_DEPTH elements at a
   time over TILE_GROUPS tiles, so that the tokens' slice (16 KB) stays in
   the L1 cache; the tiles' sums wait in `partial` in between. Vectors of 16
   floats are spelt with GCC/Clang vector extensions (one AVX-512 register,
   two or four narrower ones elsewhere). */
enum { TILE_TOKENS = 64, TILE_ROWS = 4, TILE_DEPTH = 64, TILE_GROUPS = 16, TILED_MIN_TOKENS = 16 };

typedef float f32x16 __attribute__((vector_size(64)));
/* Reads and writes 16 floats at any 4-byte alignment. */
typedef float f32x16_unaligned __attribute__((vector_size(64), aligned(4)));

/* Holds a loaded vector in a register. Without it GCC folds the load into
   each multiply-add that uses the vector (4 loads instead of 1), and the
   loads, not the arithmetic, bound the loop: half the speed with AVX-512,
   where a vector is one register (elsewhere it spans several and there is
   no such constraint). */
#if defined(__GNUC__) && defined(__AVX512F__)
#define IN_REGISTER(v) __asm__("" : "+v"(v))
#else
#define IN_REGISTER(v) (void)0
#endif

/* The tiled kernel's copy of n tokens [n][in_dim]: xt [ceil(n/64)][in_dim][64],
   zeros past the last token. Several products share one copy (Q, K, V; gate,
   up). Nothing to do when n is below TILED_MIN_TOKENS. */
static void pack_tokens(float *xt, const float *in, int64_t n, int64_t in_dim) {
    const int64_t n_blocks = (n + TILE_TOKENS - 1) / TILE_TOKENS;
    int64_t b;
    if (n < TILED_MIN_TOKENS) return;
#pragma omp parallel for schedule(static) private(b)
    for (b = 0; b < n_blocks; b++) {
        float *block = xt + b * in_dim * TILE_TOKENS; /* [in][64] */
        int64_t i0, i, t;
        /* 16 inputs at a time, so the 16 rows written stay in the L1 cache. */
        for (i0 = 0; i0 < in_dim; i0 += 16) {
            const int64_t i_end = i0 + 16 < in_dim ? i0 + 16 : in_dim;
            for (t = 0; t < TILE_TOKENS; t++) {
                const float *row = in + (b * TILE_TOKENS + t) * in_dim;
                if (b * TILE_TOKENS + t < n)
                    for (i = i0; i < i_end; i++) block[i * TILE_TOKENS + t] = row[i];
                else /* past the last token: computed and discarded */
                    for (i = i0; i < i_end; i++) block[i * TILE_TOKENS + t] = 0.0f;
            }
        }
    }
}

/* out[t][o] (+)= sum_i in[t][i] * w[o][i] for t < n, w a Linear weight
   [out][in], the tokens as pack_tokens left them in xt. */
static void matmul_tiled(float *out, const float *xt, const float *w, int64_t n, int64_t in_dim,
                         int64_t out_dim, int accumulate) {
    const int64_t n_blocks = (n + TILE_TOKENS - 1) / TILE_TOKENS;
    const int64_t n_groups = (out_dim + TILE_ROWS - 1) / TILE_ROWS;
    const int64_t n_spans = (n_groups + TILE_GROUPS - 1) / TILE_GROUPS;
    int64_t b, span;
#pragma omp parallel for collapse(2) schedule(static) private(b, span)
    for (b = 0; b < n_blocks; b++) {
        for (span = 0; span < n_spans; span++) {
            const float *block = xt + b * in_dim * TILE_TOKENS;
            const int64_t g_first = span * TILE_GROUPS;
            const int64_t g_end = g_first + TILE_GROUPS < n_groups ? g_first + TILE_GROUPS : n_groups;
            f32x16 partial[TILE_GROUPS][TILE_ROWS][4]; /* each tile's sums: [row][16 x 4 tokens] */
            int64_t k0, g, t, r;
            for (k0 = 0; k0 < in_dim; k0 += TILE_DEPTH) {
                const int64_t k_end = k0 + TILE_DEPTH < in_dim ? k0 + TILE_DEPTH : in_dim;
                for (g = g_first; g < g_end; g++) {
                    f32x16(*sums)[4] = partial[g - g_first];
                    /* A short last group repeats its last row; the copies are discarded. */
                    const int64_t o0 = g * TILE_ROWS, rows = out_dim - o0 < TILE_ROWS ? out_dim - o0 : TILE_ROWS;
                    const float *w0 = w + o0 * in_dim;
                    const float *w1 = w + (o0 + (rows > 1 ? 1 : 0)) * in_dim;
                    const float *w2 = w + (o0 + (rows > 2 ? 2 : 0)) * in_dim;
                    const float *w3 = w + (o0 + (rows > 3 ? 3 : 0)) * in_dim;
                    f32x16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
                    f32x16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
                    int64_t i;
                    if (k0 > 0) {
                        a00 = sums[0][0]; a01 = sums[0][1]; a02 = sums[0][2]; a03 = sums[0][3];
                        a10 = sums[1][0]; a11 = sums[1][1]; a12 = sums[1][2]; a13 = sums[1][3];
                        a20 = sums[2][0]; a21 = sums[2][1]; a22 = sums[2][2]; a23 = sums[2][3];
                        a30 = sums[3][0]; a31 = sums[3][1]; a32 = sums[3][2]; a33 = sums[3][3];
                    }
                    for (i = k0; i < k_end; i++) {
                        const f32x16_unaligned *x = (const f32x16_unaligned *)(block + i * TILE_TOKENS);
                        f32x16 x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
                        const float v0 = w0[i], v1 = w1[i], v2 = w2[i], v3 = w3[i];
                        IN_REGISTER(x0); IN_REGISTER(x1); IN_REGISTER(x2); IN_REGISTER(x3);
                        a00 += v0 * x0; a01 += v0 * x1; a02 += v0 * x2; a03 += v0 * x3;
                        a10 += v1 * x0; a11 += v1 * x1; a12 += v1 * x2; a13 += v1 * x3;
                        a20 += v2 * x0; a21 += v2 * x1; a22 += v2 * x2; a23 += v2 * x3;
                        a30 += v3 * x0; a31 += v3 * x1; a32 += v3 * x2; a33 += v3 * x3;
                    }
                    sums[0][0] = a00; sums[0][1] = a01; sums[0][2] = a02; sums[0][3] = a03;
                    sums[1][0] = a10; sums[1][1] = a11; sums[1][2] = a12; sums[1][3] = a13;
                    sums[2][0] = a20; sums[2][1] = a21; sums[2][2] = a22; sums[2][3] = a23;
                    sums[3][0] = a30; sums[3][1] = a31; sums[3][2] = a32; sums[3][3] = a33;
                }
            }
            /* Token by token: each token's rows are adjacent in out. */
            for (g = g_first; g < g_end; g++) {
                const int64_t o0 = g * TILE_ROWS, rows = out_dim - o0 < TILE_ROWS ? out_dim - o0 : TILE_ROWS;
                for (t = 0; t < TILE_TOKENS && b * TILE_TOKENS + t < n; t++) {
                    float *dst = out + (b * TILE_TOKENS + t) * out_dim + o0;
                    for (r = 0; r < rows; r++) {
                        const float sum = ((const float *)partial[g - g_first][r])[t];
                        dst[r] = accumulate ? dst[r] + sum : sum;
                    }
                }
            }
        }
    }
}

/* out[t][o] (+)= sum_i in[t][i] * w[o][i]; w is a Linear weight [out][in].
   xt: pack_tokens(xt, in, n, in_dim) done by the caller. */
static void matmul(float *out, const float *in, const float *xt, const float *w, int64_t n, int64_t in_dim,
                   int64_t out_dim, int accumulate) {
    const int64_t n_blocks = (n + 3) / 4;
    int64_t b, o;
    if (n >= TILED_MIN_TOKENS) {
        matmul_tiled(out, xt, w, n, in_dim, out_dim, accumulate);
        return;
    }
#pragma omp parallel for collapse(2) schedule(static) private(b, o)
    for (b = 0; b < n_blocks; b++) {
        for (o = 0; o < out_dim; o++) {
            const int64_t t0 = b * 4, rows = n - t0 < 4 ? n - t0 : 4;
            const float *row = w + o * in_dim;
            /* Short blocks reuse their last token so the loop stays branch-free. */
            const float *x0 = in + t0 * in_dim;
            const float *x1 = in + (t0 + (rows > 1 ? 1 : 0)) * in_dim;
            const float *x2 = in + (t0 + (rows > 2 ? 2 : 0)) * in_dim;
            const float *x3 = in + (t0 + (rows > 3 ? 3 : 0)) * in_dim;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, sums[4];
            int64_t i, r;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (i = 0; i < in_dim; i++) {
                a0 += row[i] * x0[i];
                a1 += row[i] * x1[i];
                a2 += row[i] * x2[i];
                a3 += row[i] * x3[i];
            }
            sums[0] = a0; sums[1] = a1; sums[2] = a2; sums[3] = a3;
            for (r = 0; r < rows; r++) {
                float *dst = out + (t0 + r) * out_dim + o;
                *dst = accumulate ? *dst + sums[r] : sums[r];
            }
        }
    }
}

/* x[t][o] += bias[o] for t < n. */
static void add_bias(float *x, const float *bias, int64_t n, int64_t dim) {
    int64_t t, o;
    for (t = 0; t < n; t++)
        for (o = 0; o < dim; o++) x[t * dim + o] += bias[o];
}

static void rms_norm(float *out, const float *x, const float *weight, int64_t n, int64_t dim, float eps) {
    int64_t t, i;
    for (t = 0; t < n; t++) {
        const float *row = x + t * dim;
        float sum = 0.0f, scale;
        for (i = 0; i < dim; i++) sum += row[i] * row[i];
        scale = 1.0f / sqrtf(sum / (float)dim + eps);
        for (i = 0; i < dim; i++) out[t * dim + i] = weight[i] * (row[i] * scale);
    }
}

/* Rotate-half RoPE on n_heads vectors of one token at `position`:
   x' = x*cos + rotate_half(x)*sin, rotate_half([a, b]) = [-b, a]. */
static void rope(float *x, int64_t n_heads, int64_t D, int64_t position, const float *inv_freq) {
    const int64_t half = D / 2;
    int64_t h, i;
    for (i = 0; i < half; i++) {
        const float angle = (float)position * inv_freq[i]; /* fp32, as in training */
        const float c = (float)cos((double)angle), s = (float)sin((double)angle);
        for (h = 0; h < n_heads; h++) {
            float *v = x + h * D;
            const float a = v[i], b = v[i + half];
            v[i] = a * c - b * s;
            v[i + half] = b * c + a * s;
        }
    }
}

/* e^x for x <= 0 in a form the compiler vectorises: 2^(x log2 e) split into
   an integer power (exponent bits) and a degree-6 polynomial on [-0.5, 0.5]
   (relative error about 2e-7). */
static inline float fast_exp(float x) {
    const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float t, n, f, p, power;
    int32_t bits;
    x = x < -87.0f ? -87.0f : x;
    t = x * 1.44269504089f;
    n = (t + round) - round;
    f = t - n;
    p = 1.535336188e-4f;
    p = p * f + 1.339887440e-3f;
    p = p * f + 9.618437358e-3f;
    p = p * f + 5.550332471e-2f;
    p = p * f + 2.402264791e-1f;
    p = p * f + 6.931472028e-1f;
    p = p * f + 1.0f;
    bits = ((int32_t)n + 127) * (1 << 23); /* 2^n built in the exponent field */
    memcpy(&power, &bits, sizeof power);
    return p * power;
}

/* p[t] = e^(p[t] - max p) for t < n; returns their sum. The loops are
   vectorised; their reductions run in a fixed order, so results do not
   depend on the thread count. */
static float exp_shifted(float *restrict p, int64_t n) {
    float max = -INFINITY, sum = 0.0f;
    int64_t t;
#pragma omp simd reduction(max : max)
    for (t = 0; t < n; t++) max = p[t] > max ? p[t] : max;
    for (t = 0; t < n; t++) p[t] = fast_exp(p[t] - max);
#pragma omp simd reduction(+ : sum)
    for (t = 0; t < n; t++) sum += p[t];
    return sum;
}

/* Causal attention of n new tokens (already appended to the cache) for one
   layer. Query i of the chunk sees, in KV head j, the rows that were there
   before the chunk plus the chunk's first i+1 rows. q, out: [n][H][D].

   The g = H/Hk query heads of a KV head read the same keys and values, and
   so do neighbouring positions, so the work goes in tiles of ATT_ROWS query
   rows of one KV head (row r = i*g + h: position-major, the rows of a tile
   see nearly as many keys). Logits come ATT_KEYS keys at a time from the
   transposed keys, ATT_ROWS x 4 vectors of sums in registers over the D
   rows; the weighted values ATT_ROWS x 64 dimensions at a time over the
   keys. Each row's sums run in a fixed order whatever the tile's other
   rows, so results depend neither on the thread count nor on the tiling. */
static void attention(const llm_cache *cache, int64_t layer, const int64_t *length_before,
                      const float *q, float *out, int64_t n) {
    const int64_t D = cache->head_dim, H = cache->n_heads, Hk = cache->n_kv_heads, g = H / Hk;
    const int64_t cap = cache->capacity, rows_per_head = n * g;
    const int64_t n_tiles = (rows_per_head + ATT_ROWS - 1) / ATT_ROWS;
    const float scale = 1.0f / sqrtf((float)D);
    int64_t j, tile;
#pragma omp parallel for collapse(2) schedule(dynamic, 1) private(j, tile)
    for (j = 0; j < Hk; j++) {
        for (tile = 0; tile < n_tiles; tile++) {
#ifdef _OPENMP
            float *p = cache->probabilities + (int64_t)omp_get_thread_num() * ATT_ROWS * cap; /* [ATT_ROWS][cap] */
#else
            float *p = cache->probabilities;
#endif
            const float *keys_t = cache->keys[layer] + j * D * cap;  /* [D][cap] */
            const float *values = cache->values[layer] + j * cap * D; /* [cap][D] */
            float qs[ATT_ROWS][LLM_MAX_HEAD_DIM]; /* the tile's queries, scaled by 1/sqrt(D) */
            float *o[ATT_ROWS];                    /* [D] each: their outputs */
            float inv[ATT_ROWS];
            int64_t visible[ATT_ROWS], r, t, t0, d, d0, most = 0;
            const int64_t count = rows_per_head - tile * ATT_ROWS < ATT_ROWS ? rows_per_head - tile * ATT_ROWS
                                                                            : ATT_ROWS;
            for (r = 0; r < ATT_ROWS; r++) {
                /* A short last tile repeats its last row; the copies are discarded. */
                const int64_t row = tile * ATT_ROWS + (r < count ? r : count - 1), i = row / g, h = row % g;
                for (d = 0; d < D; d++) qs[r][d] = q[i * H * D + (j * g + h) * D + d] * scale;
                o[r] = out + i * H * D + (j * g + h) * D;
                visible[r] = length_before[j] + i + 1;
                if (visible[r] > most) most = visible[r];
            }
            /* Logits of every key any row of the tile sees. The capacity is
               a multiple of ATT_KEYS, so the last block stays inside the rows. */
            for (t0 = 0; t0 < most; t0 += ATT_KEYS) {
                f32x16 s00 = {0}, s01 = {0}, s02 = {0}, s03 = {0}, s10 = {0}, s11 = {0}, s12 = {0}, s13 = {0};
                f32x16 s20 = {0}, s21 = {0}, s22 = {0}, s23 = {0}, s30 = {0}, s31 = {0}, s32 = {0}, s33 = {0};
                for (d = 0; d < D; d++) {
                    const f32x16_unaligned *k = (const f32x16_unaligned *)(keys_t + d * cap + t0);
                    f32x16 k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3];
                    const float q0 = qs[0][d], q1 = qs[1][d], q2 = qs[2][d], q3 = qs[3][d];
                    IN_REGISTER(k0); IN_REGISTER(k1); IN_REGISTER(k2); IN_REGISTER(k3);
                    s00 += q0 * k0; s01 += q0 * k1; s02 += q0 * k2; s03 += q0 * k3;
                    s10 += q1 * k0; s11 += q1 * k1; s12 += q1 * k2; s13 += q1 * k3;
                    s20 += q2 * k0; s21 += q2 * k1; s22 += q2 * k2; s23 += q2 * k3;
                    s30 += q3 * k0; s31 += q3 * k1; s32 += q3 * k2; s33 += q3 * k3;
                }
#define ATT_STORE(row, v0, v1, v2, v3) do { \
                    f32x16_unaligned *dst_ = (f32x16_unaligned *)(p + (row) * cap + t0); \
                    dst_[0] = v0; dst_[1] = v1; dst_[2] = v2; dst_[3] = v3; } while (0)
                ATT_STORE(0, s00, s01, s02, s03);
                ATT_STORE(1, s10, s11, s12, s13);
                ATT_STORE(2, s20, s21, s22, s23);
                ATT_STORE(3, s30, s31, s32, s33);
#undef ATT_STORE
            }
            /* Softmax over each row's own keys; the keys it does not see get
               weight 0, so the tile's value sums skip nothing and add nothing. */
            for (r = 0; r < ATT_ROWS; r++) {
                float *pr = p + r * cap;
                inv[r] = 1.0f / exp_shifted(pr, visible[r]);
                for (t = visible[r]; t < most; t++) pr[t] = 0.0f;
            }
            if (cache->decoding == LLM_DECODING_OBSERVED)
                for (r = 0; r < count; r++) {
                    /* Row (i, h) of the chunk's attention, for H2O; the rows
                       this query cannot see yet are 0. */
                    const int64_t row = tile * ATT_ROWS + r, i = row / g, h = row % g;
                    float *seen = cache->observed + (i * H + j * g + h) * cap;
                    for (t = 0; t < visible[r]; t++) seen[t] = p[r * cap + t] * inv[r];
                    for (; t < length_before[j] + n; t++) seen[t] = 0.0f;
                }
            /* Weighted values: 64 dimensions at a time, then 16 (D is a
               multiple of 16, llm_load). */
            for (d0 = 0; d0 < D; d0 += D - d0 >= 64 ? 64 : 16) {
                const int64_t width = D - d0 >= 64 ? 4 : 1;
                f32x16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
                f32x16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};
                f32x16 sums[ATT_ROWS][4];
                if (width == 4) {
                    for (t = 0; t < most; t++) {
                        const f32x16_unaligned *v = (const f32x16_unaligned *)(values + t * D + d0);
                        f32x16 v0 = v[0], v1 = v[1], v2 = v[2], v3 = v[3];
                        const float w0 = p[t], w1 = p[cap + t], w2 = p[2 * cap + t], w3 = p[3 * cap + t];
                        IN_REGISTER(v0); IN_REGISTER(v1); IN_REGISTER(v2); IN_REGISTER(v3);
                        a00 += w0 * v0; a01 += w0 * v1; a02 += w0 * v2; a03 += w0 * v3;
                        a10 += w1 * v0; a11 += w1 * v1; a12 += w1 * v2; a13 += w1 * v3;
                        a20 += w2 * v0; a21 += w2 * v1; a22 += w2 * v2; a23 += w2 * v3;
                        a30 += w3 * v0; a31 += w3 * v1; a32 += w3 * v2; a33 += w3 * v3;
                    }
                } else {
                    for (t = 0; t < most; t++) {
                        const f32x16 v0 = *(const f32x16_unaligned *)(values + t * D + d0);
                        a00 += p[t] * v0; a10 += p[cap + t] * v0; a20 += p[2 * cap + t] * v0; a30 += p[3 * cap + t] * v0;
                    }
                }
                sums[0][0] = a00; sums[0][1] = a01; sums[0][2] = a02; sums[0][3] = a03;
                sums[1][0] = a10; sums[1][1] = a11; sums[1][2] = a12; sums[1][3] = a13;
                sums[2][0] = a20; sums[2][1] = a21; sums[2][2] = a22; sums[2][3] = a23;
                sums[3][0] = a30; sums[3][1] = a31; sums[3][2] = a32; sums[3][3] = a33;
                for (r = 0; r < count; r++)
                    for (d = 0; d < 16 * width; d++) o[r][d0 + d] = ((const float *)sums[r])[d] * inv[r];
            }
        }
    }
}

/* Seconds on a monotonic clock (the scorer's time inside the forward pass). */
static double llm_seconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + 1e-9 * (double)now.tv_nsec;
}

/* One chunk (n <= max_chunk tokens) through every layer. */

static void forward_chunk(const llm_model *model, llm_cache *cache, const int32_t *tokens, int64_t n,
                          float *logits) {
    const llm_config *c = &model->config;
    const int64_t E = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    const int64_t H = c->n_heads, Hk = c->n_kv_heads, cap = cache->capacity;
    const int64_t chunk = cache->max_chunk, width = I > E ? I : E;
    float *x = cache->work;               /* [chunk][E]      residual stream */
    float *xn = x + chunk * E;            /* [chunk][E]      normalised      */
    float *q = xn + chunk * E;            /* [chunk][H][D]   */
    float *k = q + chunk * H * D;         /* [chunk][Hk][D]  */
    float *v = k + chunk * Hk * D;        /* [chunk][Hk][D]  */
    float *att = v + chunk * Hk * D;      /* [chunk][H][D]   */
    float *gate = att + chunk * H * D;    /* [chunk][width]  */
    float *up = gate + chunk * width;     /* [chunk][width]  */
    float *xt = up + chunk * width;       /* [chunk][max(width, H*D)] a matmul's tokens, transposed */
    int64_t l, t, j, d, i;
    for (t = 0; t < n; t++) memcpy(x + t * E, model->embed + (int64_t)tokens[t] * E, (size_t)E * sizeof(float));
    for (l = 0; l < c->n_layers; l++) {
        const llm_layer_weights *w = &model->layers[l];
        int64_t *length = cache->length + l * Hk;
        int64_t length_before[64];
        rms_norm(xn, x, w->attn_norm, n, E, c->rms_norm_eps);
        if (cache->hidden_log)
            memcpy(cache->hidden_log + (l * cap + cache->n_positions) * E, xn, (size_t)(n * E) * sizeof(float));
        if (cache->scorers) { /* what the layer reads, scored before it is read */
            const kvec_tensor hidden = kvec_tensor_contiguous(xn, KVEC_DTYPE_F32, n, 1, E);
            const double started = llm_seconds();
            if (kvec_learned_scores(&cache->scorers[l], &hidden, cache->learned + l * Hk * cap + cache->n_positions, cap,
                                    cache->learned_scratch, cache->learned_scratch_bytes) != KVEC_OK)
                cache->learned_failed = 1; /* shapes were checked when set: NaN or Inf in the states */
            cache->learned_seconds += llm_seconds() - started;
        }
        pack_tokens(xt, xn, n, E);
        matmul(q, xn, xt, w->wq, n, E, H * D, 0);
        matmul(k, xn, xt, w->wk, n, E, Hk * D, 0);
        matmul(v, xn, xt, w->wv, n, E, Hk * D, 0);
        if (c->attention_bias) {
            add_bias(q, w->bq, n, H * D);
            add_bias(k, w->bk, n, Hk * D);
            add_bias(v, w->bv, n, Hk * D);
        }
        for (t = 0; t < n; t++) {
            const int64_t position = cache->n_positions + t;
            rope(q + t * H * D, H, D, position, model->rope_inv_freq);
            rope(k + t * Hk * D, Hk, D, position, model->rope_inv_freq);
            /* The query log, for eviction scores later. */
            memcpy(cache->queries[l] + position * H * D, q + t * H * D, (size_t)(H * D) * sizeof(float));
        }
        /* Append the chunk's keys (transposed) and values to every head. */
        for (j = 0; j < Hk; j++) {
            length_before[j] = length[j];
            for (t = 0; t < n; t++) {
                const int64_t row = length[j] + t;
                for (d = 0; d < D; d++) cache->keys[l][(j * D + d) * cap + row] = k[(t * Hk + j) * D + d];
                memcpy(cache->values[l] + (j * cap + row) * D, v + (t * Hk + j) * D, (size_t)D * sizeof(float));
            }
            length[j] += n;
        }
        attention(cache, l, length_before, q, att, n);
        if (cache->decoding == LLM_DECODING_OBSERVED)
            for (t = 0; t < n; t++) /* in query order: the sums do not depend on threads */
                kvec_decode_observe(&cache->decode, l, cache->observed + t * H * cap, H, cap);
        pack_tokens(xt, att, n, H * D);
        matmul(x, att, xt, w->wo, n, H * D, E, 1);
        rms_norm(xn, x, w->mlp_norm, n, E, c->rms_norm_eps);
        pack_tokens(xt, xn, n, E);
        matmul(gate, xn, xt, w->w_gate, n, E, I, 0);
        matmul(up, xn, xt, w->w_up, n, E, I, 0);
        for (i = 0; i < n * I; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i]; /* SwiGLU */
        pack_tokens(xt, gate, n, I);
        matmul(x, gate, xt, w->w_down, n, I, E, 1);
    }
    if (logits) {
        rms_norm(xn, x, model->final_norm, n, E, c->rms_norm_eps);
        pack_tokens(xt, xn, n, E);
        matmul(logits, xn, xt, model->lm_head, n, E, c->vocab_size, 0);
    }
    cache->n_positions += n;
}

int llm_forward(const llm_model *model, llm_cache *cache, const int32_t *tokens, int64_t n, float *logits) {
    const llm_config *c = &model->config;
    int64_t t, i;
    if (n < 0 || (n > 0 && !tokens)) return -1;
    for (t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size) return -1;
    /* Every head needs n free rows and the query log n free positions. */
    if (cache->n_positions + n > cache->capacity) return -1;
    for (i = 0; i < (int64_t)cache->n_layers * cache->n_kv_heads; i++)
        if (cache->length[i] + n > cache->capacity) return -1;
    for (t = 0; t < n; t += cache->max_chunk) {
        const int64_t m = n - t < cache->max_chunk ? n - t : cache->max_chunk;
        if (cache->decoding && kvec_decode_append(&cache->decode, m) != KVEC_OK) return -1;
        forward_chunk(model, cache, tokens + t, m, logits ? logits + t * c->vocab_size : NULL);
    }
    return 0;
}

/* --------------------------------------------------------------- eviction */

void llm_kvec_layers(const llm_cache *cache, kvec_layer *layers) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, H = cache->n_heads;
    const int64_t D = cache->head_dim, cap = cache->capacity, N = cache->n_positions;
    const int64_t e = (int64_t)sizeof(float);
    int64_t l;
    for (l = 0; l < L; l++) {
        kvec_tensor *k = &layers[l].keys, *v = &layers[l].values;
        /* Keys [Hk][D][cap]: consecutive tokens are adjacent floats. */
        k->data = cache->keys[l]; k->dtype = KVEC_DTYPE_F32;
        k->n_tokens = N; k->n_heads = Hk; k->head_dim = D;
        k->stride_token = e; k->stride_head = D * cap * e; k->stride_dim = cap * e;
        /* Values [Hk][cap][D]. */
        v->data = cache->values[l]; v->dtype = KVEC_DTYPE_F32;
        v->n_tokens = N; v->n_heads = Hk; v->head_dim = D;
        v->stride_token = D * e; v->stride_head = cap * D * e; v->stride_dim = e;
        /* Every prefix query: the window policies read the last rows, H2O all. */
        layers[l].queries = kvec_tensor_contiguous(cache->queries[l], KVEC_DTYPE_F32, N, H, D);
        /* W_o [hidden][H*D] is [hidden][H][D]: read by CriticalKV and LaProx. */
        layers[l].out_proj = kvec_tensor_contiguous(cache->model->layers[l].wo, KVEC_DTYPE_F32,
                                                    cache->model->config.hidden_size, H, D);
    }
}

/* kvec's scratch, at least `bytes`, grown on demand and kept for the next call. */
static int grow_scratch(llm_cache *cache, size_t bytes) {
    void *grown;
    if (bytes <= cache->kvec_scratch_bytes) return 0;
    if (!(grown = realloc(cache->kvec_scratch, bytes))) return -1;
    cache->kvec_scratch = grown;
    cache->kvec_scratch_bytes = bytes;
    return 0;
}

/* kvec's scratch and a plan of `capacity` positions per head, grown on demand. */
static kvec_result kvec_memory(llm_cache *cache, size_t scratch_bytes, int64_t capacity, kvec_plan *plan) {
    const int64_t heads = (int64_t)cache->n_layers * cache->n_kv_heads;
    if (grow_scratch(cache, scratch_bytes)) return KVEC_ERROR_OUT_OF_MEMORY;
    if ((size_t)(heads * (capacity + 1)) > cache->plan_entries) {
        int64_t *grown = (int64_t *)realloc(cache->plan_memory, (size_t)(heads * (capacity + 1)) * sizeof(int64_t));
        if (!grown) return KVEC_ERROR_OUT_OF_MEMORY;
        cache->plan_memory = grown;
        cache->plan_entries = (size_t)(heads * (capacity + 1));
    }
    plan->n_layers = cache->n_layers;
    plan->n_kv_heads = cache->n_kv_heads;
    plan->capacity = capacity;
    plan->kept_count = cache->plan_memory;
    plan->kept_positions = cache->plan_memory + heads;
    return KVEC_OK;
}

/* kvec's view of a cache every head of which still holds the whole prefix:
   what llm_evict, llm_evict_scores and the reconstruction pass start from. */
static kvec_result unevicted_view(const llm_cache *cache, kvec_layer *layers, kvec_cache *view) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, N = cache->n_positions;
    int64_t j;
    if (L > 64) return KVEC_ERROR_BAD_EXTENT;
    for (j = 0; j < L * Hk; j++)
        if (cache->length[j] != N) return KVEC_ERROR_SHAPE_MISMATCH;
    llm_kvec_layers(cache, layers);
    view->layers = layers;
    view->n_layers = L;
    return KVEC_OK;
}

/* Rows 0 .. kept-1 of every head now hold the kept tokens. */
static void take_plan(llm_cache *cache, const kvec_plan *plan, kvec_plan *plan_out) {
    int64_t j;
    for (j = 0; j < (int64_t)cache->n_layers * cache->n_kv_heads; j++) cache->length[j] = plan->kept_count[j];
    if (plan_out) *plan_out = *plan;
}

kvec_result llm_evict(llm_cache *cache, const kvec_config *config, int64_t budget, kvec_plan *plan_out) {
    const int64_t L = cache->n_layers, N = cache->n_positions;
    kvec_config defaults;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_plan plan;
    kvec_result r;
    size_t scratch_bytes;
    int64_t capacity;
    if (!config) { memset(&defaults, 0, sizeof defaults); config = &defaults; }
    if ((r = unevicted_view(cache, layers, &view)) != KVEC_OK) return r;
    if ((r = kvec_scratch_bytes(config, &view, 1, &scratch_bytes)) != KVEC_OK) return r;
    if ((r = kvec_plan_capacity(config, budget, L, N, &capacity)) != KVEC_OK) return r;
    if ((r = kvec_memory(cache, scratch_bytes, capacity, &plan)) != KVEC_OK) return r;
    r = kvec_evict_ex(config, &view, budget, &plan, cache->kvec_scratch, cache->kvec_scratch_bytes);
    if (r != KVEC_OK) return r;
    take_plan(cache, &plan, plan_out);
    return KVEC_OK;
}

kvec_result llm_evict_scores(llm_cache *cache, const kvec_config *config, int64_t budget, const float *scores,
                             kvec_plan *plan_out) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, N = cache->n_positions;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_plan plan;
    kvec_result r;
    int64_t capacity;
    float *adjusted = NULL; /* [L][Hk][N] K-VEC's coverage over the scores */
    int64_t l;
    size_t bytes, select_bytes;
    if ((r = unevicted_view(cache, layers, &view)) != KVEC_OK) return r;
    if ((r = kvec_plan_capacity(config, budget, L, N, &capacity)) != KVEC_OK) return r;
    select_bytes = kvec_select_scratch_bytes(config, L, Hk, N);
    if (config->policy == KVEC_POLICY_KVEC) { /* the scratch serves the coverage terms first */
        if ((r = kvec_coverage_scores_scratch_bytes(config, &layers[0], &bytes)) != KVEC_OK) return r;
        if (bytes > select_bytes) select_bytes = bytes;
    }
    if ((r = kvec_memory(cache, select_bytes, capacity, &plan)) != KVEC_OK) return r;
    if (config->policy == KVEC_POLICY_KVEC) {
        if (!(adjusted = (float *)malloc((size_t)(L * Hk * N) * sizeof(float)))) return KVEC_ERROR_OUT_OF_MEMORY;
        memcpy(adjusted, scores, (size_t)(L * Hk * N) * sizeof(float));
        for (l = 0; l < L; l++)
            if ((r = kvec_coverage_scores(config, &layers[l], adjusted + l * Hk * N, cache->kvec_scratch,
                                          cache->kvec_scratch_bytes)) != KVEC_OK) {
                free(adjusted);
                return r;
            }
        scores = adjusted;
    }
    /* select everything first, so that a refusal leaves the cache as it was */
    if ((r = kvec_select(config, scores, L, Hk, N, budget, &plan, cache->kvec_scratch, cache->kvec_scratch_bytes)) == KVEC_OK)
        r = kvec_compact(&view, &plan);
    free(adjusted);
    if (r != KVEC_OK) return r;
    take_plan(cache, &plan, plan_out);
    return KVEC_OK;
}

#define EXPECTED_SKIPPED 4 /* first positions left out of the query statistics */

int llm_expected_scores(const llm_model *model, llm_cache *cache, float *scores) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, H = cache->n_heads, D = cache->head_dim;
    const int64_t N = cache->n_positions, skipped = N > EXPECTED_SKIPPED ? EXPECTED_SKIPPED : 0;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_query_stats stats;
    kvec_expected_attention expected;
    size_t stats_bytes, bytes;
    void *stats_memory;
    int64_t l;
    int status = 0;
    if (cache->decoding || N < 1 || unevicted_view(cache, layers, &view) != KVEC_OK) return -1;
    if (kvec_query_stats_bytes(H, D, &stats_bytes) != KVEC_OK || !(stats_memory = malloc(stats_bytes))) return -1;
    expected.stats = &stats;
    expected.rope.theta = model->config.rope_theta;
    expected.rope.dims = 0;        /* every dimension rotates */
    expected.rope.interleaved = 0; /* rotate-half, as rope() */
    expected.first_position = N;
    expected.n_future = 0;         /* kvpress's 512 */
    for (l = 0; l < L && !status; l++) {
        /* The query log holds every position's post-RoPE query; the first
           few (the sinks' outlying queries) stay out, as in kvpress. */
        const kvec_tensor queries = kvec_tensor_contiguous(cache->queries[l] + skipped * H * D, KVEC_DTYPE_F32,
                                                           N - skipped, H, D);
        if (kvec_query_stats_init(&stats, stats_memory, stats_bytes, H, D) != KVEC_OK ||
            kvec_query_stats_add(&stats, &queries, skipped, &expected.rope) != KVEC_OK ||
            kvec_expected_attention_scratch_bytes(NULL, &layers[l], &expected, &bytes) != KVEC_OK) {
            status = -1;
            break;
        }
        if (grow_scratch(cache, bytes)) { status = -1; break; }
        if (kvec_expected_attention_scores(NULL, &layers[l], &expected, scores + l * Hk * N, cache->kvec_scratch,
                                           cache->kvec_scratch_bytes) != KVEC_OK)
            status = -1;
    }
    free(stats_memory);
    return status;
}

int llm_reconstruction_pass(const llm_model *model, llm_cache *cache, const int32_t *pass, int64_t n_pass,
                            int64_t chunk_begin, int64_t chunk_end, float *scores) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, H = cache->n_heads, D = cache->head_dim;
    const int64_t N = cache->n_positions;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_reconstruction views;
    size_t bytes;
    int64_t l, j;
    int status = 0;
    /* the pass scores a cache no eviction has touched */
    if (cache->decoding || unevicted_view(cache, layers, &view) != KVEC_OK) return -1;
    if (llm_forward(model, cache, pass, n_pass, NULL)) return -1;
    /* layers[] views the context, rows 0 .. N-1, whatever the pass appended */
    for (l = 0; l < L && !status; l++) {
        /* The pass's rows N .. N+n_pass-1: keys in the same [Hk][D][cap]
           layout, queries from the query log. */
        views.keys = layers[l].keys;
        views.keys.data = cache->keys[l] + N;
        views.keys.n_tokens = n_pass;
        views.queries = kvec_tensor_contiguous(cache->queries[l] + N * H * D, KVEC_DTYPE_F32, n_pass, H, D);
        views.chunk_begin = chunk_begin;
        views.chunk_end = chunk_end;
        if (kvec_reconstruction_scratch_bytes(NULL, &layers[l], &views, &bytes) != KVEC_OK) { status = -1; break; }
        if (grow_scratch(cache, bytes)) { status = -1; break; }
        if (kvec_reconstruction_scores(NULL, &layers[l], &views, scores + l * Hk * N, cache->kvec_scratch,
                                       cache->kvec_scratch_bytes) != KVEC_OK)
            status = -1;
    }
    /* the pass's rows are dropped: the cache holds the context again */
    cache->n_positions = N;
    for (j = 0; j < L * Hk; j++) cache->length[j] = N;
    return status;
}

int llm_decode_begin(llm_cache *cache, int observe_attention) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, N = cache->n_positions;
    size_t bytes;
    int64_t j;
    for (j = 0; j < L * Hk; j++)
        if (cache->length[j] != N) return -1; /* already evicted */
    if (kvec_decode_state_bytes(L, Hk, cache->capacity, &bytes) != KVEC_OK) return -1;
    if (!cache->decode_memory && !(cache->decode_memory = malloc(bytes))) return -1;
    if (observe_attention && !cache->observed &&
        !(cache->observed = (float *)malloc((size_t)(cache->max_chunk * cache->n_heads * cache->capacity) * sizeof(float))))
        return -1;
    if (kvec_decode_init(&cache->decode, cache->decode_memory, bytes, L, Hk, cache->capacity, N, N, NULL) != KVEC_OK)
        return -1;
    cache->decoding = observe_attention ? LLM_DECODING_OBSERVED : LLM_DECODING;
    return 0;
}

kvec_result llm_decode_evict(llm_cache *cache, const kvec_config *config, int64_t budget) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, H = cache->n_heads, D = cache->head_dim;
    const int64_t rows = cache->decode.n_rows, N = cache->n_positions;
    kvec_config resolved;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_plan plan;
    kvec_result r;
    size_t scratch_bytes;
    int64_t l, j, window_rows;
    if (!cache->decoding) return KVEC_ERROR_STATE_MISMATCH;
    if (L > 64) return KVEC_ERROR_BAD_EXTENT;
    if ((r = kvec_resolve_config(config, &resolved)) != KVEC_OK) return r;
    if (rows <= budget) return KVEC_OK; /* within budget already */
    /* The rows held now, and the queries of the last positions (4W covers
       K-VEC's head focus), as at prefill. */
    window_rows = 4 * resolved.window;
    if (window_rows > rows) window_rows = rows;
    llm_kvec_layers(cache, layers);
    for (l = 0; l < L; l++) {
        layers[l].keys.n_tokens = layers[l].values.n_tokens = rows;
        layers[l].queries = kvec_tensor_contiguous(cache->queries[l] + (N - window_rows) * H * D,
                                                   KVEC_DTYPE_F32, window_rows, H, D);
    }
    view.layers = layers;
    view.n_layers = L;
    if ((r = kvec_decode_scratch_bytes(&resolved, &view, &scratch_bytes)) != KVEC_OK) return r;
    if ((r = kvec_memory(cache, scratch_bytes, budget, &plan)) != KVEC_OK) return r;
    r = kvec_decode_evict(&resolved, &cache->decode, &view, NULL, budget, &plan, cache->kvec_scratch,
                          cache->kvec_scratch_bytes);
    if (r != KVEC_OK) return r;
    for (j = 0; j < L * Hk; j++) cache->length[j] = plan.kept_count[j];
    return KVEC_OK;
}
