/* scorer.c - see scorer.h. */
#include "scorer.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char SCORER_MAGIC[8] = { 'K', 'V', 'E', 'C', 'S', 'C', 'R', '1' };
enum { SCORER_HEADER_BYTES = 8 + 6 * 4 + 8 + 2 * LLM_SCORER_NAME_BYTES };

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    size_t i;
    for (i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}
#define FNV_START 14695981039346656037ULL

/* A message into error and -1 (this file needs no other part of the engine,
   so that programs on other runtimes, the llama.cpp example, can link it). */
static int scorer_error(char *error, size_t error_size, const char *format, ...) {
    va_list args;
    if (error && error_size) {
        va_start(args, format);
        vsnprintf(error, error_size, format, args);
        va_end(args);
    }
    return -1;
}

uint64_t llm_fingerprint_start(int64_t n_layers, int64_t n_embd, int64_t n_kv_heads, const char *weight_dtype) {
    const int64_t shape[3] = { n_layers, n_embd, n_kv_heads };
    const uint64_t h = fnv1a(FNV_START, shape, sizeof shape);
    return fnv1a(h, weight_dtype, strlen(weight_dtype)); /* the file's weight type: another quantisation differs */
}

uint64_t llm_fingerprint_layer(uint64_t fingerprint, const float *attn_norm, int64_t n_embd) {
    return fnv1a(fingerprint, attn_norm, (size_t)n_embd * sizeof(float));
}

uint64_t llm_model_fingerprint(const llm_model *model) {
    const llm_config *c = &model->config;
    uint64_t h = llm_fingerprint_start(c->n_layers, c->hidden_size, c->n_kv_heads, c->weight_dtype);
    int64_t l;
    for (l = 0; l < c->n_layers; l++) h = llm_fingerprint_layer(h, model->layers[l].attn_norm, c->hidden_size);
    return h;
}

static uint32_t get_u32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get_u64(const unsigned char *p) { return (uint64_t)get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }
static void put_u32(unsigned char *p, uint32_t x) {
    p[0] = (unsigned char)x; p[1] = (unsigned char)(x >> 8); p[2] = (unsigned char)(x >> 16); p[3] = (unsigned char)(x >> 24);
}
static void put_u64(unsigned char *p, uint64_t x) { put_u32(p, (uint32_t)x); put_u32(p + 4, (uint32_t)(x >> 32)); }

/* Floats of one layer's arrays; 0 for a shape that cannot be (checked by the caller's limits). */
static int64_t layer_floats(uint32_t kind, int64_t E, int64_t Hk, int64_t F) {
    return kind == KVEC_SCORER_MLP ? F * E + F + Hk * F + Hk : Hk * E + Hk;
}

/* Points each layer's kvec_scorer into weights. */
static void lay_out(kvec_scorer *layers, float *weights, int64_t L, uint32_t kind, uint32_t output, int64_t E,
                    int64_t Hk, int64_t F) {
    int64_t l;
    for (l = 0; l < L; l++) {
        kvec_scorer *s = &layers[l];
        const int64_t rows = kind == KVEC_SCORER_MLP ? F : Hk;
        s->kind = (kvec_scorer_kind)kind; s->output = (kvec_scorer_output)output;
        s->n_embd = E; s->n_kv_heads = Hk; s->n_hidden = kind == KVEC_SCORER_MLP ? F : 0;
        s->weight = weights; weights += rows * E;
        s->bias = weights;   weights += rows;
        s->weight2 = s->bias2 = NULL;
        if (kind == KVEC_SCORER_MLP) {
            s->weight2 = weights; weights += Hk * F;
            s->bias2 = weights;   weights += Hk;
        }
    }
}

int llm_scorer_load(llm_scorer *scorer, const char *path, const llm_model *model, char *error, size_t error_size) {
    const llm_config *c = &model->config;
    llm_scorer_target want;
    want.n_layers = c->n_layers;
    want.n_embd = c->hidden_size;
    want.n_kv_heads = c->n_kv_heads;
    want.fingerprint = llm_model_fingerprint(model);
    return llm_scorer_load_for(scorer, path, &want, error, error_size);
}

int llm_scorer_load_for(llm_scorer *scorer, const char *path, const llm_scorer_target *want, char *error,
                        size_t error_size) {
    unsigned char header[SCORER_HEADER_BYTES], tail[8];
    uint32_t kind, output, L, E, Hk, F;
    int64_t floats, l, i;
    uint64_t h, fingerprint;
    long size;
    FILE *f;
    memset(scorer, 0, sizeof *scorer);
    if (!(f = fopen(path, "rb"))) return scorer_error(error, error_size, "cannot open the scorer %s", path);
    if (fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) ||
        fread(header, 1, sizeof header, f) != sizeof header || memcmp(header, SCORER_MAGIC, 8)) {
        fclose(f);
        return scorer_error(error, error_size, "%s is not a kvec scorer (no KVECSCR1 header)", path);
    }
    kind = get_u32(header + 8); output = get_u32(header + 12);
    L = get_u32(header + 16); E = get_u32(header + 20); Hk = get_u32(header + 24); F = get_u32(header + 28);
    fingerprint = get_u64(header + 32);
    memcpy(scorer->model_name, header + 40, LLM_SCORER_NAME_BYTES);
    memcpy(scorer->target, header + 40 + LLM_SCORER_NAME_BYTES, LLM_SCORER_NAME_BYTES);
    scorer->model_name[LLM_SCORER_NAME_BYTES - 1] = scorer->target[LLM_SCORER_NAME_BYTES - 1] = '\0';
    if ((kind != KVEC_SCORER_LINEAR && kind != KVEC_SCORER_MLP) ||
        (output != KVEC_SCORER_SCORE && output != KVEC_SCORER_LOG_RETENTION) || L < 1 || L > 1024 || E < 1 ||
        E > 65536 || Hk < 1 || Hk > 1024 || (kind == KVEC_SCORER_MLP ? F < 1 || F > 65536 : F != 0)) {
        fclose(f);
        return scorer_error(error, error_size, "%s: a scorer of an unknown kind or shape", path);
    }
    if ((int64_t)L != want->n_layers || (int64_t)E != want->n_embd || (int64_t)Hk != want->n_kv_heads ||
        fingerprint != want->fingerprint) {
        const int same_shape = (int64_t)L == want->n_layers && (int64_t)E == want->n_embd && (int64_t)Hk == want->n_kv_heads;
        fclose(f);
        return scorer_error(error, error_size,
                            "%s was trained for another model: '%s' (%lu layers, hidden size %lu, %lu KV heads); this "
                            "model has %lld layers, hidden size %lld, %lld KV heads%s",
                            path, scorer->model_name, (unsigned long)L, (unsigned long)E, (unsigned long)Hk,
                            (long long)want->n_layers, (long long)want->n_embd, (long long)want->n_kv_heads,
                            same_shape ? ", and other weights (its fingerprint differs)" : "");
    }
    floats = (int64_t)L * layer_floats(kind, E, Hk, F); /* at most 1024 * (2^32 + ...): fits */
    if ((int64_t)size != SCORER_HEADER_BYTES + floats * 4 + 8) {
        fclose(f);
        return scorer_error(error, error_size, "%s: %ld bytes, a scorer of this shape has %lld (truncated or padded)",
                          path, size, (long long)(SCORER_HEADER_BYTES + floats * 4 + 8));
    }
    scorer->weights = (float *)malloc((size_t)floats * sizeof(float));
    scorer->layers = (kvec_scorer *)calloc(L, sizeof(kvec_scorer));
    if (!scorer->weights || !scorer->layers) {
        fclose(f);
        llm_scorer_free(scorer);
        return scorer_error(error, error_size, "out of memory for the scorer %s", path);
    }
    /* the floats as they lie: a little-endian host, as every engine this runs on */
    if (fread(scorer->weights, 4, (size_t)floats, f) != (size_t)floats || fread(tail, 1, 8, f) != 8) {
        fclose(f);
        llm_scorer_free(scorer);
        return scorer_error(error, error_size, "%s: read error", path);
    }
    fclose(f);
    h = fnv1a(fnv1a(FNV_START, header, sizeof header), scorer->weights, (size_t)floats * 4);
    if (h != get_u64(tail)) {
        llm_scorer_free(scorer);
        return scorer_error(error, error_size, "%s: checksum mismatch (the file is corrupt)", path);
    }
    lay_out(scorer->layers, scorer->weights, L, kind, output, E, Hk, F);
    for (l = 0; l < (int64_t)L; l++) { /* each layer a scorer kvec takes */
        size_t bytes;
        if (kvec_learned_scores_scratch_bytes(&scorer->layers[l], &bytes) != KVEC_OK) {
            llm_scorer_free(scorer);
            return scorer_error(error, error_size, "%s: layer %lld is not a valid scorer", path, (long long)l);
        }
    }
    for (i = 0; i < floats; i++)
        if (!isfinite(scorer->weights[i])) {
            llm_scorer_free(scorer);
            return scorer_error(error, error_size, "%s: weight %lld is not finite", path, (long long)i);
        }
    scorer->n_layers = L;
    scorer->fingerprint = fingerprint;
    return 0;
}

int llm_scorer_save(const char *path, const kvec_scorer *layers, const llm_model *model, const char *model_name,
                    const char *target, char *error, size_t error_size) {
    const llm_config *c = &model->config;
    const kvec_scorer *s0 = &layers[0];
    const int64_t rows = s0->kind == KVEC_SCORER_MLP ? s0->n_hidden : s0->n_kv_heads;
    unsigned char header[SCORER_HEADER_BYTES], tail[8];
    char temporary[1100];
    uint64_t h;
    int64_t l;
    FILE *f;
    for (l = 0; l < c->n_layers; l++) { /* one shape, this model's, every layer valid */
        const kvec_scorer *s = &layers[l];
        size_t bytes;
        if (s->kind != s0->kind || s->output != s0->output || s->n_embd != c->hidden_size ||
            s->n_kv_heads != c->n_kv_heads || s->n_hidden != s0->n_hidden ||
            kvec_learned_scores_scratch_bytes(s, &bytes) != KVEC_OK)
            return scorer_error(error, error_size, "layer %lld's scorer has another shape than the model's", (long long)l);
    }
    if (snprintf(temporary, sizeof temporary, "%s.partial", path) >= (int)sizeof temporary)
        return scorer_error(error, error_size, "the path %s is too long", path);
    memset(header, 0, sizeof header);
    memcpy(header, SCORER_MAGIC, 8);
    put_u32(header + 8, (uint32_t)s0->kind); put_u32(header + 12, (uint32_t)s0->output);
    put_u32(header + 16, (uint32_t)c->n_layers); put_u32(header + 20, (uint32_t)s0->n_embd);
    put_u32(header + 24, (uint32_t)s0->n_kv_heads); put_u32(header + 28, (uint32_t)s0->n_hidden);
    put_u64(header + 32, llm_model_fingerprint(model));
    strncpy((char *)header + 40, model_name, LLM_SCORER_NAME_BYTES - 1);
    strncpy((char *)header + 40 + LLM_SCORER_NAME_BYTES, target, LLM_SCORER_NAME_BYTES - 1);
    if (!(f = fopen(temporary, "wb"))) return scorer_error(error, error_size, "cannot write %s", temporary);
    h = fnv1a(FNV_START, header, sizeof header);
    fwrite(header, 1, sizeof header, f);
#define PUT(array, count) do { fwrite(array, 4, (size_t)(count), f); h = fnv1a(h, array, (size_t)(count) * 4); } while (0)
    for (l = 0; l < c->n_layers; l++) {
        const kvec_scorer *s = &layers[l];
        PUT(s->weight, rows * s->n_embd);
        PUT(s->bias, rows);
        if (s->kind == KVEC_SCORER_MLP) {
            PUT(s->weight2, s->n_kv_heads * s->n_hidden);
            PUT(s->bias2, s->n_kv_heads);
        }
    }
#undef PUT
    put_u64(tail, h);
    fwrite(tail, 1, 8, f);
    if (ferror(f) | fclose(f)) { /* an existing scorer at path stays as it was */
        remove(temporary);
        return scorer_error(error, error_size, "cannot write %s (disk full?)", temporary);
    }
    if (rename(temporary, path)) {
        remove(temporary);
        return scorer_error(error, error_size, "cannot replace %s", path);
    }
    return 0;
}

void llm_scorer_free(llm_scorer *scorer) {
    free(scorer->weights);
    free(scorer->layers);
    memset(scorer, 0, sizeof *scorer);
}

int llm_scorer_path_in(const char *folder, const char *model_file, char *path, size_t path_size) {
    const char *base = strrchr(model_file, '/') ? strrchr(model_file, '/') + 1 : model_file;
    const size_t n = strlen(base), stem = n > 5 && !strcmp(base + n - 5, ".gguf") ? n - 5 : n;
    const int written = snprintf(path, path_size, "%s/%.*s.kvs", folder, (int)stem, base);
    return written < 0 || (size_t)written >= path_size ? -1 : 0;
}

void llm_scorer_default_path(const char *model_file, char *path, size_t path_size) {
    (void)llm_scorer_path_in("scorers", model_file, path, path_size); /* a path too long fails to open, by name */
}
