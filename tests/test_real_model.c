/* test_real_model.c - the engine on real GGUF models against Hugging Face
   transformers' logits, and the GGUF loader against broken files.

   build/test_real_model [MODEL.gguf VECTORS.json]...

   For each pair: the model's logits on the prompts of VECTORS.json (made by
   tests/vectors/make_logit_vectors.py) must be within the tolerance below
   of the reference, with the same argmax; a truncated copy of the model must
   be refused. A model file that is not there is skipped with a message (run
   `make model`). The loader's error paths run on small GGUF files built
   here, model or not. */
#include "../examples/engine/gguf.h"
#include "../examples/engine/json.h"
#include "../examples/engine/session.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The largest |engine - transformers| allowed on a checked logit (logits
   reach 20-30 here). Measured: SmolLM2-135M Q4_1 8.4e-5, Qwen2.5-Coder-0.5B
   1.7e-5, both in fp32 with differently ordered sums; the tolerance is about
   5x the larger. A wrong RoPE convention, a missing bias or a misread
   quantisation block moves logits by tenths or whole units. */
#define LOGIT_TOLERANCE 4e-4

static int n_passed, n_failed;

static void check(int ok, const char *what) {
    if (ok) n_passed++;
    else { n_failed++; printf("FAIL: %s\n", what); }
}


static int write_file(const char *path, const void *data, size_t length) {
    FILE *f = fopen(path, "wb");
    int ok;
    if (!f) return 0;
    ok = fwrite(data, 1, length, f) == length;
    return fclose(f) == 0 && ok;
}

/* Where this test writes its temporary files: beside its own binary. */
static char scratch_dir[1024] = ".";

/* ------------------------------------------------------- real models */

/* Runs the prompt through the engine, stopping at each checked position for
   its logits, and compares them with the reference. Returns the largest
   difference seen. */
static double check_prompt(const llm_model *model, const json_value *prompt, const char *model_name) {
    const json_value *tokens = json_get(prompt, "tokens"), *checked = json_get(prompt, "checked"), *t, *c;
    const char *name = json_get(prompt, "name") ? json_get(prompt, "name")->string : "?";
    const int64_t V = model->config.vocab_size;
    char what[512];
    int32_t *ids;
    float *logits;
    llm_cache cache;
    int64_t n, i, done = 0;
    double worst = 0.0;
    if (!tokens || tokens->type != JSON_ARRAY || !checked || checked->type != JSON_ARRAY) {
        check(0, "vectors: a prompt without tokens or checked positions");
        return INFINITY;
    }
    n = (int64_t)tokens->length;
    ids = (int32_t *)malloc((size_t)n * sizeof *ids);
    logits = (float *)malloc((size_t)V * sizeof *logits);
    if (!ids || !logits || llm_cache_init(&cache, model, n)) {
        check(0, "memory for the prompt");
        free(ids); free(logits);
        return INFINITY;
    }
    for (t = tokens->child, i = 0; t; t = t->next) ids[i++] = (int32_t)t->number;
    for (c = checked->child; c; c = c->next) {
        const json_value *position = json_get(c, "position"), *want_ids = json_get(c, "ids");
        const json_value *want = json_get(c, "logits"), *argmax = json_get(c, "argmax"), *x, *y;
        int64_t p = position ? (int64_t)position->number : -1, best = 0;
        double diff = 0.0;
        if (p < done || p >= n || !want_ids || !want || !argmax || want_ids->length != want->length) {
            check(0, "vectors: a malformed checked position");
            break;
        }
        /* Positions before p without logits, then p alone with them. */
        if (llm_forward(model, &cache, ids + done, p - done, NULL) ||
            llm_forward(model, &cache, ids + p, 1, logits)) {
            check(0, "forward on the prompt");
            break;
        }
        done = p + 1;
        for (i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
        for (x = want_ids->child, y = want->child; x && y; x = x->next, y = y->next) {
            const double d = fabs((double)logits[(int64_t)x->number] - y->number);
            if (!(d <= diff)) diff = d; /* a NaN wins */
        }
        if (!(diff <= worst)) worst = diff;
        snprintf(what, sizeof what, "%s, %s, position %lld: argmax %lld (transformers %d)", model_name, name,
                 (long long)p, (long long)best, (int)argmax->number);
        check(best == (int64_t)argmax->number, what);
    }
    snprintf(what, sizeof what, "%s, %s (%lld tokens): logits within %.0e of transformers (max |diff| %.2e)",
             model_name, name, (long long)n, LOGIT_TOLERANCE, worst);
    check(worst <= LOGIT_TOLERANCE, what);
    printf("  %-34s %-8s %4lld tokens, %d positions: max |logit - transformers| = %.2e\n", model_name, name,
           (long long)n, (int)checked->length, worst);
    llm_cache_free(&cache);
    free(ids);
    free(logits);
    return worst;
}

/* The first `keep` bytes of the model as a file of their own: refused. */
static void check_truncated_copy(const char *model_path, const unsigned char *bytes, size_t keep, size_t size) {
    char path[1100], error[512] = "", what[700];
    llm_model model;
    int status;
    snprintf(path, sizeof path, "%s/truncated.gguf", scratch_dir);
    if (!write_file(path, bytes, keep)) { check(0, "write the truncated copy"); return; }
    status = llm_load(&model, path, error, sizeof error);
    snprintf(what, sizeof what, "the first %zu of %zu bytes of %s refused (got: %s)", keep, size, model_path, error);
    check(status == -1 && strstr(error, "truncated") != NULL, what);
    if (status == 0) llm_free(&model);
    remove(path);
}

static void test_real_model(const char *model_path, const char *vectors_path) {
    char error[512], what[700];
    const char *slash = strrchr(model_path, '/'), *name = slash ? slash + 1 : model_path;
    size_t length, size;
    char *text;
    unsigned char *bytes;
    json_value *root;
    const json_value *prompts, *prompt, *arch;
    llm_model model;
    FILE *f = fopen(model_path, "rb");
    double start;
    if (!f) {
        printf("skipped: model not found at %s, run `make model`\n", model_path);
        return;
    }
    fclose(f);
    if (!(text = json_read_file(vectors_path, &length))) { check(0, "the logit vectors are readable"); return; }
    if (!(root = json_parse(text, length, error, sizeof error))) {
        snprintf(what, sizeof what, "%s parses: %s", vectors_path, error);
        check(0, what);
        free(text);
        return;
    }
    start = text_seconds();
    if (llm_load(&model, model_path, error, sizeof error)) {
        snprintf(what, sizeof what, "load %s: %s", model_path, error);
        check(0, what);
        json_free(root); free(text);
        return;
    }
    printf("  %s: %s, %d layers, %d/%d heads of %d, hidden %d, vocab %d, context %lld, %s%s, %s; loaded in %.1f s\n",
           name, model.config.architecture, model.config.n_layers, model.config.n_heads, model.config.n_kv_heads,
           model.config.head_dim, model.config.hidden_size, model.config.vocab_size,
           (long long)model.config.context_length, model.config.tied_embeddings ? "tied" : "untied",
           model.config.attention_bias ? ", Q/K/V biases" : "", model.config.weight_dtype, text_seconds() - start);
    arch = json_get(root, "architecture");
    snprintf(what, sizeof what, "%s: architecture %s as in the vectors", name, model.config.architecture);
    check(arch && arch->type == JSON_STRING && !strcmp(arch->string, model.config.architecture), what);
    prompts = json_get(root, "prompts");
    check(prompts && prompts->length > 0, "the vectors hold prompts");
    for (prompt = prompts ? prompts->child : NULL; prompt; prompt = prompt->next) check_prompt(&model, prompt, name);
    llm_free(&model);
    json_free(root);
    free(text);

    /* Truncated copies: in the metadata, in the tensor infos, in the data. */
    if (!(bytes = (unsigned char *)json_read_file(model_path, &size))) { check(0, "read the model file"); return; }
    check_truncated_copy(model_path, bytes, 1000, size);
    check_truncated_copy(model_path, bytes, size / 2, size);
    check_truncated_copy(model_path, bytes, size - 1, size);
    free(bytes);
}

/* ------------------------------------------------ small GGUF files */

/* A GGUF file under construction. */
typedef struct gguf_writer {
    unsigned char *bytes;
    size_t         size, capacity;
} gguf_writer;

static void put(gguf_writer *w, const void *data, size_t n) {
    if (w->size + n > w->capacity) {
        w->capacity = 2 * (w->size + n);
        w->bytes = (unsigned char *)realloc(w->bytes, w->capacity);
        if (!w->bytes) { printf("out of memory\n"); exit(1); }
    }
    memcpy(w->bytes + w->size, data, n);
    w->size += n;
}

/* Little-endian hosts (the engine assumes them for safetensors too). */
static void put_u32(gguf_writer *w, uint32_t v) { put(w, &v, 4); }
static void put_u64(gguf_writer *w, uint64_t v) { put(w, &v, 8); }
static void put_string(gguf_writer *w, const char *s) { put_u64(w, strlen(s)); put(w, s, strlen(s)); }
static void put_key_u32(gguf_writer *w, const char *key, uint32_t v) {
    put_string(w, key); put_u32(w, GGUF_UINT32); put_u32(w, v);
}
static void put_key_f32(gguf_writer *w, const char *key, float v) {
    put_string(w, key); put_u32(w, GGUF_FLOAT32); put(w, &v, 4);
}
static void put_key_string(gguf_writer *w, const char *key, const char *v) {
    put_string(w, key); put_u32(w, GGUF_STRING); put_string(w, v);
}

/* A one-layer model: hidden 32, FFN 64, 2 heads and 1 KV head of 16,
   vocabulary 48, F32 weights in Hugging Face's row order. */
enum { TINY_HIDDEN = 32, TINY_FFN = 64, TINY_HEADS = 2, TINY_KV_HEADS = 1, TINY_DIM = 16, TINY_VOCAB = 48 };

typedef struct tiny_tensor {
    const char *name;
    uint64_t    ne0, ne1; /* ne1 == 0: a vector */
    int         pairs;    /* heads whose rows llama.cpp interleaves (Q, K of llama) */
} tiny_tensor;

static const tiny_tensor TINY[] = {
    {"token_embd.weight", TINY_HIDDEN, TINY_VOCAB, 0},
    {"output_norm.weight", TINY_HIDDEN, 0, 0},
    {"blk.0.attn_norm.weight", TINY_HIDDEN, 0, 0},
    {"blk.0.ffn_norm.weight", TINY_HIDDEN, 0, 0},
    {"blk.0.attn_q.weight", TINY_HIDDEN, TINY_HEADS * TINY_DIM, TINY_HEADS},
    {"blk.0.attn_k.weight", TINY_HIDDEN, TINY_KV_HEADS * TINY_DIM, TINY_KV_HEADS},
    {"blk.0.attn_v.weight", TINY_HIDDEN, TINY_KV_HEADS * TINY_DIM, 0},
    {"blk.0.attn_output.weight", TINY_HEADS * TINY_DIM, TINY_HIDDEN, 0},
    {"blk.0.ffn_gate.weight", TINY_HIDDEN, TINY_FFN, 0},
    {"blk.0.ffn_up.weight", TINY_HIDDEN, TINY_FFN, 0},
    {"blk.0.ffn_down.weight", TINY_FFN, TINY_HIDDEN, 0},
    {"blk.0.attn_q.bias", TINY_HEADS * TINY_DIM, 0, 0},
    {"blk.0.attn_k.bias", TINY_KV_HEADS * TINY_DIM, 0, 0},
    {"blk.0.attn_v.bias", TINY_KV_HEADS * TINY_DIM, 0, 0},
};
enum { TINY_N_TENSORS = sizeof TINY / sizeof TINY[0], TINY_N_BIASES = 3 };

/* How a tiny file departs from a valid one. */
typedef struct tiny_options {
    const char *architecture;  /* "llama", "qwen2", ... */
    const char *drop;          /* a tensor left out, or NULL */
    const char *odd_type;      /* a tensor given ggml type Q2_K, or NULL */
    const char *odd_shape;     /* a tensor one row short, or NULL */
} tiny_options;

/* Weight i of tensor `which`: fixed pseudo-random values in [-0.5, 0.5),
   norms near 1, biases 0 so that llama (no biases) and qwen2 agree. */
static float tiny_weight(int which, uint64_t i) {
    uint64_t x = (uint64_t)(which + 1) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
    x ^= x >> 31; x *= 0x94D049BB133111EBull; x ^= x >> 29;
    if (strstr(TINY[which].name, "bias")) return 0.0f;
    if (strstr(TINY[which].name, "norm")) return 1.0f + (float)(x >> 40) / (float)(1 << 24) * 0.2f;
    return (float)(x >> 40) / (float)(1 << 24) - 0.5f;
}

static gguf_writer tiny_gguf(const tiny_options *o) {
    const int qwen = !strcmp(o->architecture, "qwen2");
    const int n_tensors = TINY_N_TENSORS - (qwen ? 0 : TINY_N_BIASES) - (o->drop ? 1 : 0);
    gguf_writer w = {NULL, 0, 0};
    char key[96];
    uint64_t offset = 0;
    int i;
    put(&w, "GGUF", 4);
    put_u32(&w, 3);
    put_u64(&w, (uint64_t)n_tensors);
    put_u64(&w, 9); /* the metadata entries below */
    put_key_string(&w, "general.architecture", o->architecture);
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s." suffix, o->architecture), key)
    put_key_u32(&w, ARCH_KEY("block_count"), 1);
    put_key_u32(&w, ARCH_KEY("embedding_length"), TINY_HIDDEN);
    put_key_u32(&w, ARCH_KEY("feed_forward_length"), TINY_FFN);
    put_key_u32(&w, ARCH_KEY("attention.head_count"), TINY_HEADS);
    put_key_u32(&w, ARCH_KEY("attention.head_count_kv"), TINY_KV_HEADS);
    put_key_u32(&w, ARCH_KEY("context_length"), 256);
    put_key_f32(&w, ARCH_KEY("rope.freq_base"), 10000.0f);
    put_key_f32(&w, ARCH_KEY("attention.layer_norm_rms_epsilon"), 1e-5f);
#undef ARCH_KEY
    for (i = 0; i < TINY_N_TENSORS; i++) {
        const tiny_tensor *t = &TINY[i];
        const uint64_t ne1 = t->ne1 && o->odd_shape && !strcmp(o->odd_shape, t->name) ? t->ne1 - 1 : t->ne1;
        if ((!qwen && strstr(t->name, "bias")) || (o->drop && !strcmp(o->drop, t->name))) continue;
        put_string(&w, t->name);
        put_u32(&w, ne1 ? 2 : 1);
        put_u64(&w, t->ne0);
        if (ne1) put_u64(&w, ne1);
        put_u32(&w, o->odd_type && !strcmp(o->odd_type, t->name) ? 10u /* Q2_K */ : (uint32_t)GGML_F32);
        put_u64(&w, offset);
        offset += (t->ne0 * (t->ne1 ? t->ne1 : 1) * 4 + 31) / 32 * 32;
    }
    while (w.size % 32) put(&w, "", 1);
    for (i = 0; i < TINY_N_TENSORS; i++) {
        const tiny_tensor *t = &TINY[i];
        const uint64_t rows = t->ne1 ? t->ne1 : 1, cols = t->ne0, D = t->pairs ? rows / (uint64_t)t->pairs : 0;
        uint64_t r, k;
        if ((!qwen && strstr(t->name, "bias")) || (o->drop && !strcmp(o->drop, t->name))) continue;
        for (r = 0; r < rows; r++) {
            /* llama.cpp's order for llama Q/K: stored row 2i+s of a head is
               Hugging Face's row s*D/2+i. */
            const uint64_t within = D ? r % D : 0;
            const uint64_t hf_row = D && !qwen ? r - within + within % 2 * (D / 2) + within / 2 : r;
            for (k = 0; k < cols; k++) {
                const float v = tiny_weight(i, hf_row * cols + k);
                put(&w, &v, 4);
            }
        }
        while (w.size % 32) put(&w, "", 1);
    }
    return w;
}

/* Writes the tiny file and loads it; the status and message of llm_load. */
static int load_tiny(const tiny_options *o, llm_model *model, char *error, size_t size) {
    char path[1100];
    gguf_writer w = tiny_gguf(o);
    int status;
    snprintf(path, sizeof path, "%s/tiny.gguf", scratch_dir);
    if (!write_file(path, w.bytes, w.size)) {
        free(w.bytes);
        snprintf(error, size, "cannot write the small GGUF into %.200s", scratch_dir);
        return -2;
    }
    free(w.bytes);
    status = llm_load(model, path, error, size);
    remove(path);
    return status;
}

static void expect_tiny_error(const tiny_options *o, const char *expect) {
    char error[512] = "", what[800];
    llm_model model;
    const int status = load_tiny(o, &model, error, sizeof error);
    snprintf(what, sizeof what, "refused with \"%s\" (got: %s)", expect, error);
    check(status == -1 && strstr(error, expect) != NULL, what);
    if (status == 0) llm_free(&model);
}

/* The logits of tokens 0..n-1 at every position: [n][TINY_VOCAB]. */
static int tiny_logits(const llm_model *model, float *logits, int64_t n) {
    llm_cache cache;
    int32_t tokens[16];
    int64_t t;
    int status;
    for (t = 0; t < n; t++) tokens[t] = (int32_t)((t * 7 + 3) % TINY_VOCAB);
    if (llm_cache_init(&cache, model, n)) return -1;
    status = llm_forward(model, &cache, tokens, n, logits);
    llm_cache_free(&cache);
    return status;
}

static void test_small_files(void) {
    tiny_options o = {"llama", NULL, NULL, NULL};
    llm_model llama, qwen;
    char error[512] = "", what[700], path[1100];
    float llama_logits[16 * TINY_VOCAB], qwen_logits[16 * TINY_VOCAB];
    double diff = 0.0;
    gguf_writer w;
    size_t keep;
    int i, truncated_ok = 1;

    /* A valid llama file loads, with what its metadata says. */
    if (load_tiny(&o, &llama, error, sizeof error)) {
        snprintf(what, sizeof what, "small llama GGUF: %s", error);
        check(0, what);
        return;
    }
    check(!strcmp(llama.config.architecture, "llama") && llama.config.n_layers == 1 &&
              llama.config.n_heads == TINY_HEADS && llama.config.n_kv_heads == TINY_KV_HEADS &&
              llama.config.head_dim == TINY_DIM && llama.config.vocab_size == TINY_VOCAB &&
              llama.config.context_length == 256 && llama.config.tied_embeddings && !llama.config.attention_bias &&
              !strcmp(llama.config.weight_dtype, "F32"),
          "small llama GGUF: config from the metadata (tied, no biases, context 256)");
    /* The same weights as qwen2 (rows as Hugging Face has them, zero
       biases) must give the same logits as llama with llama.cpp's row
       interleaving: the loader undoes it exactly once. */
    o.architecture = "qwen2";
    if (load_tiny(&o, &qwen, error, sizeof error)) {
        snprintf(what, sizeof what, "small qwen2 GGUF: %s", error);
        check(0, what);
    } else {
        check(qwen.config.attention_bias && !strcmp(qwen.config.architecture, "qwen2"), "small qwen2 GGUF: biases");
        check(tiny_logits(&llama, llama_logits, 16) == 0 && tiny_logits(&qwen, qwen_logits, 16) == 0,
              "forward on the small models");
        for (i = 0; i < 16 * TINY_VOCAB; i++)
            if (!(fabs(llama_logits[i] - qwen_logits[i]) <= diff)) diff = fabs(llama_logits[i] - qwen_logits[i]);
        snprintf(what, sizeof what, "llama Q/K rows interleaved by llama.cpp give the qwen2 (not interleaved) "
                                    "logits (max |diff| %.1e)", diff);
        check(diff < 1e-5, what);
        llm_free(&qwen);
    }
    llm_free(&llama);

    o.architecture = "gpt2";
    expect_tiny_error(&o, "architecture \"gpt2\" is not supported");
    o.architecture = "llama";
    o.drop = "blk.0.ffn_up.weight";
    expect_tiny_error(&o, "missing tensor blk.0.ffn_up.weight");
    o.drop = NULL;
    o.architecture = "qwen2";
    o.drop = "blk.0.attn_k.bias";
    expect_tiny_error(&o, "missing tensor blk.0.attn_k.bias");
    o.drop = NULL;
    o.architecture = "llama";
    o.odd_type = "blk.0.attn_v.weight";
    expect_tiny_error(&o, "blk.0.attn_v.weight has ggml type 10");
    o.odd_type = NULL;
    o.odd_shape = "blk.0.ffn_gate.weight";
    expect_tiny_error(&o, "blk.0.ffn_gate.weight has ne [32, 63");
    o.odd_shape = NULL;
    o.drop = "token_embd.weight";
    expect_tiny_error(&o, "missing tensor token_embd.weight");
    o.drop = NULL;

    /* Every truncation of a valid file is refused with a message: 41 cuts
       through the header, the metadata, the tensor infos and the data. */
    w = tiny_gguf(&o);
    snprintf(path, sizeof path, "%s/tiny-truncated.gguf", scratch_dir);
    for (i = 0; i <= 40; i++) {
        llm_model model;
        keep = w.size * (size_t)i / 41;
        error[0] = 0;
        if (!write_file(path, w.bytes, keep) || llm_load(&model, path, error, sizeof error) != -1 || !error[0]) {
            if (truncated_ok) printf("  the first %zu of %zu bytes: %s\n", keep, w.size, error[0] ? error : "loaded");
            truncated_ok = 0;
        }
    }
    check(truncated_ok, "every truncation of a small GGUF refused with a message");
    remove(path);
    free(w.bytes);
    check(llm_load(&llama, "no-such-model.gguf", error, sizeof error) == -1 && strstr(error, "cannot open"),
          "a missing .gguf file refused");
}

int main(int argc, char **argv) {
    const char *slash = strrchr(argv[0], '/');
    int i;
    if (argc % 2 != 1) {
        fprintf(stderr, "usage: test_real_model [MODEL.gguf VECTORS.json]...\n");
        return 2;
    }
    if (slash) snprintf(scratch_dir, sizeof scratch_dir, "%.*s", (int)(slash - argv[0]), argv[0]);
    test_small_files();
    for (i = 1; i + 1 < argc; i += 2) test_real_model(argv[i], argv[i + 1]);
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed != 0;
}
