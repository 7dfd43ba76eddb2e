/* model.c - see model.h. Read top to bottom: loading (config, safetensors),
   the forward pass (matmul, RMSNorm, RoPE, attention, MLP), then eviction. */
#define KVEC_IMPLEMENTATION
#include "model.h"

#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int set_error(char *error, size_t size, const char *format, ...) {
    va_list args;
    if (error && size) {
        va_start(args, format);
        vsnprintf(error, size, format, args);
        va_end(args);
    }
    return -1;
}

/* ---------------------------------------------------------------- loading */

/* An integer field of config.json; fallback when absent (< 0: required). */
static int config_int(const json_value *root, const char *key, int fallback, int *out,
                      char *error, size_t size) {
    const json_value *v = json_get(root, key);
    if (!v || v->type == JSON_NULL) {
        if (fallback < 0) return set_error(error, size, "config.json: missing \"%s\"", key);
        *out = fallback;
        return 0;
    }
    if (v->type != JSON_NUMBER || v->number != floor(v->number) || v->number < 1 || v->number > 1e7)
        return set_error(error, size, "config.json: \"%s\" must be a positive integer", key);
    *out = (int)v->number;
    return 0;
}

static int parse_config(llm_config *c, const char *text, size_t length, char *error, size_t size) {
    char json_error[128];
    json_value *root = json_parse(text, length, json_error, sizeof json_error);
    const json_value *v;
    int status = -1;
    if (!root) return set_error(error, size, "config.json: %s", json_error);
    memset(c, 0, sizeof *c);
    if (config_int(root, "vocab_size", -1, &c->vocab_size, error, size) ||
        config_int(root, "hidden_size", -1, &c->hidden_size, error, size) ||
        config_int(root, "intermediate_size", -1, &c->intermediate_size, error, size) ||
        config_int(root, "num_hidden_layers", -1, &c->n_layers, error, size) ||
        config_int(root, "num_attention_heads", -1, &c->n_heads, error, size) ||
        config_int(root, "num_key_value_heads", c->n_heads, &c->n_kv_heads, error, size) ||
        config_int(root, "head_dim", c->hidden_size / c->n_heads, &c->head_dim, error, size))
        goto done;
    c->rms_norm_eps = (v = json_get(root, "rms_norm_eps")) && v->type == JSON_NUMBER ? (float)v->number : 1e-6f;
    c->rope_theta = (v = json_get(root, "rope_theta")) && v->type == JSON_NUMBER ? (float)v->number : 10000.0f;
    /* LlamaConfig's default is untied. */
    c->tied_embeddings = (v = json_get(root, "tie_word_embeddings")) && v->type == JSON_TRUE;
    if (c->n_heads % c->n_kv_heads != 0) {
        set_error(error, size, "config.json: %d attention heads are not a multiple of %d KV heads",
                  c->n_heads, c->n_kv_heads);
        goto done;
    }
    if (c->head_dim % 16 != 0) {
        /* Llama models use 64 or 128; the attention loop works in 16s. */
        set_error(error, size, "config.json: head_dim %d is not a multiple of 16", c->head_dim);
        goto done;
    }
    /* What this engine does not implement is refused rather than ignored. */
    if ((v = json_get(root, "hidden_act")) && (v->type != JSON_STRING || strcmp(v->string, "silu"))) {
        set_error(error, size, "config.json: hidden_act must be \"silu\"");
        goto done;
    }
    if ((v = json_get(root, "rope_scaling")) && v->type != JSON_NULL) {
        set_error(error, size, "config.json: rope_scaling is not supported");
        goto done;
    }
    if (((v = json_get(root, "attention_bias")) && v->type == JSON_TRUE) ||
        ((v = json_get(root, "mlp_bias")) && v->type == JSON_TRUE)) {
        set_error(error, size, "config.json: biases are not supported");
        goto done;
    }
    status = 0;
done:
    json_free(root);
    return status;
}

/* One tensor the model needs: where its fp32 copy goes and its shape. */
typedef struct wanted_tensor {
    char    name[96];
    float **slot;
    int64_t rows, cols; /* cols == 0: a vector of `rows` */
} wanted_tensor;

static float element_to_f32(const unsigned char *p, const char *dtype) {
    float f;
    uint16_t h;
    if (dtype[1] == '3') { memcpy(&f, p, 4); return f; } /* F32 (little-endian hosts) */
    memcpy(&h, p, 2);
    return dtype[0] == 'B' ? kvec_bf16_to_f32(h) : kvec_f16_to_f32(h);
}

/* Checks one safetensors entry against what the model needs and converts it. */
static int load_tensor(const json_value *entry, const wanted_tensor *w, const unsigned char *data,
                       uint64_t data_bytes, char *dtype_seen, char *error, size_t size) {
    const json_value *dtype = json_get(entry, "dtype"), *shape = json_get(entry, "shape");
    const json_value *offsets = json_get(entry, "data_offsets");
    const json_value *b, *e;
    int64_t want_elems = w->cols ? w->rows * w->cols : w->rows, i;
    size_t element_size;
    double begin, end;
    if (!dtype || dtype->type != JSON_STRING || !shape || shape->type != JSON_ARRAY ||
        !offsets || offsets->type != JSON_ARRAY || offsets->length != 2)
        return set_error(error, size, "model.safetensors: malformed entry for %s", w->name);
    if (!strcmp(dtype->string, "F32")) element_size = 4;
    else if (!strcmp(dtype->string, "F16") || !strcmp(dtype->string, "BF16")) element_size = 2;
    else return set_error(error, size, "model.safetensors: %s has dtype %s (F32, F16, BF16 supported)",
                          w->name, dtype->string);
    if (shape->length != (size_t)(w->cols ? 2 : 1) ||
        json_at(shape, 0)->number != (double)w->rows ||
        (w->cols && json_at(shape, 1)->number != (double)w->cols)) {
        if (w->cols)
            return set_error(error, size, "model.safetensors: %s should be [%lld, %lld] by config.json",
                             w->name, (long long)w->rows, (long long)w->cols);
        return set_error(error, size, "model.safetensors: %s should be [%lld] by config.json",
                         w->name, (long long)w->rows);
    }
    b = json_at(offsets, 0); e = json_at(offsets, 1);
    begin = b->type == JSON_NUMBER ? b->number : -1; end = e->type == JSON_NUMBER ? e->number : -1;
    if (begin < 0 || end < begin || end > (double)data_bytes ||
        end - begin != (double)want_elems * (double)element_size)
        return set_error(error, size, "model.safetensors: %s lies outside the file (truncated?)", w->name);
    for (i = 0; i < want_elems; i++)
        (*w->slot)[i] = element_to_f32(data + (uint64_t)begin + (uint64_t)i * element_size, dtype->string);
    if (!dtype_seen[0]) strcpy(dtype_seen, dtype->string);
    return 0;
}

int llm_load(llm_model *model, const char *dir, char *error, size_t size) {
    char path[1024], json_error[128];
    char *text = NULL, *file = NULL;
    size_t text_length = 0, file_length = 0;
    json_value *header = NULL;
    wanted_tensor *wanted = NULL;
    llm_config *c = &model->config;
    int status = -1, n_wanted = 0, i, l;
    uint64_t header_bytes;
    memset(model, 0, sizeof *model);

    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!(text = json_read_file(path, &text_length))) {
        set_error(error, size, "cannot read %s", path);
        goto done;
    }
    if (parse_config(c, text, text_length, error, size)) goto done;

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!(file = json_read_file(path, &file_length))) {
        set_error(error, size, "cannot read %s", path);
        goto done;
    }
    /* safetensors: u64 little-endian header size, JSON header, then data. */
    if (file_length < 8) { set_error(error, size, "model.safetensors: truncated (no header)"); goto done; }
    for (header_bytes = 0, i = 7; i >= 0; i--) header_bytes = header_bytes << 8 | (unsigned char)file[i];
    if (header_bytes > file_length - 8) {
        set_error(error, size, "model.safetensors: header of %llu bytes in a %zu-byte file (truncated?)",
                  (unsigned long long)header_bytes, file_length);
        goto done;
    }
    if (!(header = json_parse(file + 8, (size_t)header_bytes, json_error, sizeof json_error))) {
        set_error(error, size, "model.safetensors header: %s", json_error);
        goto done;
    }

    {   /* The tensors a Llama model needs, and one block for their fp32 copies. */
        const int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
        const int64_t q_rows = (int64_t)c->n_heads * c->head_dim, kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
        size_t floats = 0;
        float *next;
        int n_max = 3 + 9 * c->n_layers;
        wanted = (wanted_tensor *)calloc((size_t)n_max, sizeof *wanted);
        model->layers = (llm_layer_weights *)calloc((size_t)c->n_layers, sizeof *model->layers);
        if (!wanted || !model->layers) { set_error(error, size, "out of memory"); goto done; }
#define WANT(slot_, rows_, cols_, ...) do { \
            wanted_tensor *w_ = &wanted[n_wanted++]; \
            snprintf(w_->name, sizeof w_->name, __VA_ARGS__); \
            w_->slot = (slot_); w_->rows = (rows_); w_->cols = (cols_); \
            floats += (size_t)((rows_) * ((cols_) ? (cols_) : 1)); } while (0)
        WANT(&model->embed, V, H, "model.embed_tokens.weight");
        WANT(&model->final_norm, H, 0, "model.norm.weight");
        if (!c->tied_embeddings) WANT(&model->lm_head, V, H, "lm_head.weight");
        for (l = 0; l < c->n_layers; l++) {
            llm_layer_weights *w = &model->layers[l];
            WANT(&w->attn_norm, H, 0, "model.layers.%d.input_layernorm.weight", l);
            WANT(&w->mlp_norm, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
            WANT(&w->wq, q_rows, H, "model.layers.%d.self_attn.q_proj.weight", l);
            WANT(&w->wk, kv_rows, H, "model.layers.%d.self_attn.k_proj.weight", l);
            WANT(&w->wv, kv_rows, H, "model.layers.%d.self_attn.v_proj.weight", l);
            WANT(&w->wo, H, q_rows, "model.layers.%d.self_attn.o_proj.weight", l);
            WANT(&w->w_gate, I, H, "model.layers.%d.mlp.gate_proj.weight", l);
            WANT(&w->w_up, I, H, "model.layers.%d.mlp.up_proj.weight", l);
            WANT(&w->w_down, H, I, "model.layers.%d.mlp.down_proj.weight", l);
        }
#undef WANT
        floats += (size_t)c->head_dim / 2;
        if (!(model->memory = malloc(floats * sizeof(float)))) { set_error(error, size, "out of memory"); goto done; }
        next = (float *)model->memory;
        for (i = 0; i < n_wanted; i++) {
            *wanted[i].slot = next;
            next += wanted[i].rows * (wanted[i].cols ? wanted[i].cols : 1);
        }
        model->rope_inv_freq = next;
    }
    for (i = 0; i < n_wanted; i++) {
        const json_value *entry = json_get(header, wanted[i].name);
        if (!entry) { set_error(error, size, "model.safetensors: missing tensor %s", wanted[i].name); goto done; }
        if (load_tensor(entry, &wanted[i], (const unsigned char *)file + 8 + header_bytes,
                        file_length - 8 - header_bytes, c->weight_dtype, error, size))
            goto done;
    }
    if (c->tied_embeddings) model->lm_head = model->embed;
    /* inv_freq_i = 1 / theta^(2i/d), in fp32 as PyTorch computes it: the
       models were trained with those exact angles. */
    for (i = 0; i < c->head_dim / 2; i++)
        model->rope_inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
    status = 0;
done:
    free(text);
    free(file);
    free(wanted);
    json_free(header);
    if (status) llm_free(model);
    return status;
}

void llm_free(llm_model *model) {
    free(model->memory);
    free(model->layers);
    memset(model, 0, sizeof *model);
}

/* ------------------------------------------------------------------ cache */

enum { LLM_MAX_CHUNK = 256 };

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
    capacity = (capacity + 15) / 16 * 16; /* the attention loop reads keys 16 at a time */
    cache->n_layers = (int)L; cache->n_heads = (int)H; cache->n_kv_heads = (int)Hk; cache->head_dim = (int)D;
    cache->capacity = capacity;
    cache->max_chunk = (int)chunk;
#ifdef _OPENMP
    cache->n_threads = omp_get_max_threads();
#else
    cache->n_threads = 1;
#endif
    per_layer = 2 * Hk * D * capacity + capacity * H * D;
    work = chunk * (2 * c->hidden_size + 2 * H * D + 2 * Hk * D + 2 * width);
    probabilities = (int64_t)cache->n_threads * (H / Hk) * capacity;
    cache->keys = (float **)calloc((size_t)(3 * L), sizeof(float *));
    cache->length = (int64_t *)calloc((size_t)(L * Hk), sizeof(int64_t));
    /* Zeroed, so that the attention loop's reads past a head's length (up to
       the next multiple of 16, discarded) never touch uninitialised memory. */
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

void llm_cache_free(llm_cache *cache) {
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

/* out[t][o] (+)= sum_i in[t][i] * w[o][i]; w is a Linear weight [out][in].
   Four tokens share each pass over a weight row. */
static void matmul(float *out, const float *in, const float *w, int64_t n, int64_t in_dim,
                   int64_t out_dim, int accumulate) {
    const int64_t n_blocks = (n + 3) / 4;
    int64_t b, o;
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
    union { int32_t bits; float value; } power; /* 2^n built in the exponent field */
    float t, n, f, p;
    x = x < -87.0f ? -87.0f : x;
    t = x * 1.44269504089f;
    n = floorf(t + 0.5f);
    f = t - n;
    p = 1.535336188e-4f;
    p = p * f + 1.339887440e-3f;
    p = p * f + 9.618437358e-3f;
    p = p * f + 5.550332471e-2f;
    p = p * f + 2.402264791e-1f;
    p = p * f + 6.931472028e-1f;
    p = p * f + 1.0f;
    power.bits = ((int32_t)n + 127) << 23;
    return p * power.value;
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
   before the chunk plus the chunk's first i+1 rows. q, out: [n][H][D]. */
static void attention(const llm_cache *cache, int64_t layer, const int64_t *length_before,
                      const float *q, float *out, int64_t n) {
    const int64_t D = cache->head_dim, H = cache->n_heads, Hk = cache->n_kv_heads, g = H / Hk;
    const int64_t cap = cache->capacity;
    const float scale = 1.0f / sqrtf((float)D);
    int64_t j, i;
#pragma omp parallel for collapse(2) schedule(dynamic, 4) private(j, i)
    for (j = 0; j < Hk; j++) {
        for (i = 0; i < n; i++) {
#ifdef _OPENMP
            float *logit = cache->probabilities + (int64_t)omp_get_thread_num() * g * cap; /* [g][cap] */
#else
            float *logit = cache->probabilities;
#endif
            const int64_t visible = length_before[j] + i + 1;
            const float *keys_t = cache->keys[layer] + j * D * cap;  /* [D][cap] */
            const float *values = cache->values[layer] + j * cap * D; /* [cap][D] */
            const float *q_group = q + i * H * D + j * g * D;        /* [g][D] */
            float *out_group = out + i * H * D + j * g * D;          /* [g][D] */
            int64_t h, d, t, t0;
            for (h = 0; h < g; h++) {
                float *restrict p = logit + h * cap;
                float *restrict o = out_group + h * D;
                const float *q_head = q_group + h * D;
                float sum, inv;
                /* Logits, 16 keys at a time: the 16 sums stay in registers
                   over the D rows of the transposed keys. Capacity is a
                   multiple of 16, so the last block stays inside the rows. */
                for (t0 = 0; t0 < visible; t0 += 16) {
                    float acc[16] = {0};
                    for (d = 0; d < D; d++) {
                        const float qd = q_head[d] * scale, *k = keys_t + d * cap + t0;
                        for (t = 0; t < 16; t++) acc[t] += qd * k[t];
                    }
                    for (t = 0; t < 16; t++) p[t0 + t] = acc[t];
                }
                sum = exp_shifted(p, visible);
                /* Weighted values, 16 dimensions at a time, summed in registers. */
                inv = 1.0f / sum;
                if (cache->decoding == LLM_DECODING_OBSERVED) {
                    /* Row (i, h) of the chunk's attention, for H2O; the rows
                       this query cannot see yet are 0. */
                    float *seen = cache->observed + (i * H + j * g + h) * cap;
                    for (t = 0; t < visible; t++) seen[t] = p[t] * inv;
                    for (; t < length_before[j] + n; t++) seen[t] = 0.0f;
                }
                for (d = 0; d < D; d += 16) { /* D is a multiple of 16 (llm_load) */
                    float acc[16] = {0};
                    int64_t x;
                    for (t = 0; t < visible; t++) {
                        const float w = p[t], *v = values + t * D + d;
                        for (x = 0; x < 16; x++) acc[x] += w * v[x];
                    }
                    for (x = 0; x < 16; x++) o[d + x] = acc[x] * inv;
                }
            }
        }
    }
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
    int64_t l, t, j, d, i;
    for (t = 0; t < n; t++) memcpy(x + t * E, model->embed + (int64_t)tokens[t] * E, (size_t)E * sizeof(float));
    for (l = 0; l < c->n_layers; l++) {
        const llm_layer_weights *w = &model->layers[l];
        int64_t *length = cache->length + l * Hk;
        int64_t length_before[64];
        rms_norm(xn, x, w->attn_norm, n, E, c->rms_norm_eps);
        matmul(q, xn, w->wq, n, E, H * D, 0);
        matmul(k, xn, w->wk, n, E, Hk * D, 0);
        matmul(v, xn, w->wv, n, E, Hk * D, 0);
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
        matmul(x, att, w->wo, n, H * D, E, 1);
        rms_norm(xn, x, w->mlp_norm, n, E, c->rms_norm_eps);
        matmul(gate, xn, w->w_gate, n, E, I, 0);
        matmul(up, xn, w->w_up, n, E, I, 0);
        for (i = 0; i < n * I; i++) gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i]; /* SwiGLU */
        matmul(x, gate, w->w_down, n, I, E, 1);
    }
    if (logits) {
        rms_norm(xn, x, model->final_norm, n, E, c->rms_norm_eps);
        matmul(logits, xn, model->lm_head, n, E, c->vocab_size, 0);
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

/* kvec's scratch and a plan of `capacity` positions per head, grown on demand. */
static kvec_result kvec_memory(llm_cache *cache, size_t scratch_bytes, int64_t capacity, kvec_plan *plan) {
    const int64_t heads = (int64_t)cache->n_layers * cache->n_kv_heads;
    if (scratch_bytes > cache->kvec_scratch_bytes) {
        void *grown = realloc(cache->kvec_scratch, scratch_bytes);
        if (!grown) return KVEC_ERROR_OUT_OF_MEMORY;
        cache->kvec_scratch = grown;
        cache->kvec_scratch_bytes = scratch_bytes;
    }
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

kvec_result llm_evict(llm_cache *cache, const kvec_config *config, int64_t budget, kvec_plan *plan_out) {
    const int64_t L = cache->n_layers, Hk = cache->n_kv_heads, N = cache->n_positions;
    kvec_config defaults;
    kvec_layer layers[64];
    kvec_cache view;
    kvec_plan plan;
    kvec_result r;
    size_t scratch_bytes;
    int64_t capacity, j;
    if (!config) { memset(&defaults, 0, sizeof defaults); config = &defaults; }
    if (L > 64) return KVEC_ERROR_BAD_EXTENT;
    /* kvec compresses a prefix that every head still holds in full. */
    for (j = 0; j < L * Hk; j++)
        if (cache->length[j] != N) return KVEC_ERROR_SHAPE_MISMATCH;
    llm_kvec_layers(cache, layers);
    view.layers = layers;
    view.n_layers = L;
    if ((r = kvec_scratch_bytes(config, &view, 1, &scratch_bytes)) != KVEC_OK) return r;
    if ((r = kvec_plan_capacity(config, budget, L, N, &capacity)) != KVEC_OK) return r;
    if ((r = kvec_memory(cache, scratch_bytes, capacity, &plan)) != KVEC_OK) return r;
    r = kvec_evict_ex(config, &view, budget, &plan, cache->kvec_scratch, cache->kvec_scratch_bytes);
    if (r != KVEC_OK) return r;
    /* Rows 0 .. kept-1 of every head now hold the kept tokens. */
    for (j = 0; j < L * Hk; j++) cache->length[j] = plan.kept_count[j];
    if (plan_out) *plan_out = plan;
    return KVEC_OK;
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
