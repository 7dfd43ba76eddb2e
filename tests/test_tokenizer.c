/* test_tokenizer.c - the GGUF tokenizer against Hugging Face token ids.

   build/test_tokenizer [--vectors DIR] MODEL.gguf...

   For each model (SmolLM2's pre-tokenizer "smollm", Qwen2.5's "qwen2") it
   encodes every string of tests/vectors/tokenizer-<name>.json and compares
   the ids exactly, with and without special-token parsing; decodes them back
   to the (normalized) text; builds the ChatML prompt; refuses invalid UTF-8;
   and times a ~10K-token text. A model file that is absent is reported as
   skipped (run `make model`), not failed. A synthetic GGUF built here checks
   the loader's errors and the BPE merge order without any model. */
#define KVEC_IMPLEMENTATION /* gguf.c converts fp16 with kvec's helpers */
#include "../kvec.h"
#include "../examples/engine/gguf.h"
#include "../examples/engine/json.h"
#include "../examples/engine/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int n_passed, n_failed;

static void check(int ok, const char *what) {
    if (ok) n_passed++;
    else { n_failed++; printf("FAIL: %s\n", what); }
}

/* ------------------------------------------------ a GGUF built in memory */

typedef struct buffer { unsigned char *bytes; size_t size, capacity; } buffer;

static void put(buffer *b, const void *p, size_t n) {
    if (b->size + n > b->capacity) {
        b->capacity = (b->size + n) * 2;
        b->bytes = (unsigned char *)realloc(b->bytes, b->capacity);
        if (!b->bytes) { printf("out of memory\n"); exit(1); }
    }
    memcpy(b->bytes + b->size, p, n);
    b->size += n;
}

static void put_u32(buffer *b, uint32_t v) {
    unsigned char p[4];
    int i;
    for (i = 0; i < 4; i++) p[i] = (unsigned char)(v >> 8 * i);
    put(b, p, 4);
}

static void put_u64(buffer *b, uint64_t v) {
    unsigned char p[8];
    int i;
    for (i = 0; i < 8; i++) p[i] = (unsigned char)(v >> 8 * i);
    put(b, p, 8);
}

static void put_string(buffer *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}

static void put_kv_string(buffer *b, const char *key, const char *value) {
    put_string(b, key);
    put_u32(b, GGUF_STRING);
    put_string(b, value);
}

/* A GGUF holding only a tokenizer: the 256 byte tokens (GPT-2 spelling),
   then "he", "ll", "hell", "<|im_end|>" (control); merges "h e" (rank 0),
   "l l" (1), "he ll" (2). */
static buffer synthetic_gguf(const char *model, const char *pre) {
    static const char *extra[] = {"he", "ll", "hell", "<|im_end|>"};
    static const char *merges[] = {"h e", "l l", "he ll"};
    buffer b = {NULL, 0, 0};
    int i, next = 256;
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 0); /* tensors */
    put_u64(&b, 5); /* metadata */
    put_kv_string(&b, "tokenizer.ggml.model", model);
    put_kv_string(&b, "tokenizer.ggml.pre", pre);
    put_string(&b, "tokenizer.ggml.tokens");
    put_u32(&b, GGUF_ARRAY);
    put_u32(&b, GGUF_STRING);
    put_u64(&b, 260);
    for (i = 0; i < 256; i++) {
        int printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE);
        unsigned cp = printable ? (unsigned)i : (unsigned)next++;
        unsigned char utf8[2];
        if (cp < 0x80) { put_u64(&b, 1); utf8[0] = (unsigned char)cp; put(&b, utf8, 1); }
        else { put_u64(&b, 2); utf8[0] = (unsigned char)(0xC0 | cp >> 6); utf8[1] = (unsigned char)(0x80 | (cp & 63)); put(&b, utf8, 2); }
    }
    for (i = 0; i < 4; i++) put_string(&b, extra[i]);
    put_string(&b, "tokenizer.ggml.token_type");
    put_u32(&b, GGUF_ARRAY);
    put_u32(&b, GGUF_INT32);
    put_u64(&b, 260);
    for (i = 0; i < 260; i++) put_u32(&b, i == 259 ? TOKENIZER_CONTROL : TOKENIZER_NORMAL);
    put_string(&b, "tokenizer.ggml.merges");
    put_u32(&b, GGUF_ARRAY);
    put_u32(&b, GGUF_STRING);
    put_u64(&b, 3);
    for (i = 0; i < 3; i++) put_string(&b, merges[i]);
    return b;
}

static void test_synthetic(void) {
    char error[256] = "";
    buffer b;
    gguf_file file;
    tokenizer t;
    int32_t ids[16];
    int64_t n;

    b = synthetic_gguf("gpt2", "gpt2");
    check(gguf_parse(&file, b.bytes, b.size, error, sizeof error) == 0, "synthetic GGUF parses");
    check(tokenizer_load(&t, &file, error, sizeof error) == 0, "synthetic tokenizer loads");
    gguf_close(&file);
    free(b.bytes); /* the tokenizer holds no pointer into the file */
    n = tokenizer_encode(&t, "hello", 5, 0, ids, 16, error, sizeof error);
    check(n == 2 && ids[0] == 258 && ids[1] == 'o', "merges apply by rank: hello -> hell o");
    n = tokenizer_encode(&t, "lll", 3, 0, ids, 16, error, sizeof error);
    check(n == 2 && ids[0] == 257 && ids[1] == 'l', "equal ranks merge leftmost first: lll -> ll l");
    n = tokenizer_encode(&t, "he<|im_end|>", 12, TOKENIZER_PARSE_SPECIAL, ids, 16, error, sizeof error);
    check(n == 2 && ids[0] == 256 && ids[1] == 259, "control token parsed with TOKENIZER_PARSE_SPECIAL");
    n = tokenizer_encode(&t, "he<|im_end|>", 12, 0, ids, 16, error, sizeof error);
    check(n > 2 && ids[1] != 259, "control token is plain text without TOKENIZER_PARSE_SPECIAL");
    check(t.default_system == NULL, "no chat template: no default system prompt");
    tokenizer_free(&t);

    b = synthetic_gguf("gpt2", "no-such-pre");
    gguf_parse(&file, b.bytes, b.size, error, sizeof error);
    check(tokenizer_load(&t, &file, error, sizeof error) == -1 && strstr(error, "no-such-pre"),
          "an unknown pre-tokenizer is an error naming it");
    gguf_close(&file);
    free(b.bytes);
    b = synthetic_gguf("llama", "default");
    gguf_parse(&file, b.bytes, b.size, error, sizeof error);
    check(tokenizer_load(&t, &file, error, sizeof error) == -1 && strstr(error, "llama"),
          "an unsupported tokenizer model is an error naming it");
    gguf_close(&file);
    free(b.bytes);
}

/* ------------------------------------------------------- the real models */

static size_t from_hex(const char *hex, char *out) {
    size_t n = 0;
    unsigned v;
    while (hex[0] && hex[1] && sscanf(hex, "%2x", &v) == 1) { out[n++] = (char)v; hex += 2; }
    return n;
}

static int same_ids(const int32_t *ids, int64_t n, const json_value *want) {
    const json_value *x;
    int64_t i = 0;
    if (!want || (int64_t)want->length != n) return 0;
    for (x = want->child; x; x = x->next, i++)
        if (ids[i] != (int32_t)x->number) return 0;
    return 1;
}

static void print_ids(const char *label, const int32_t *ids, int64_t n, const json_value *want) {
    const json_value *x;
    int64_t i;
    printf("    %s mine:", label);
    for (i = 0; i < n && i < 40; i++) printf(" %d", ids[i]);
    printf("\n    %s want:", label);
    for (x = want ? want->child : NULL, i = 0; x && i < 40; x = x->next, i++) printf(" %d", (int)x->number);
    printf("\n");
}

static int file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

/* Every vector string encodes to the Hugging Face ids, with and without
   special-token parsing, and the ids decode to what Hugging Face decodes
   them to (the text, normalized). */
static void test_vectors(const tokenizer *t, const json_value *root, const char *name) {
    const json_value *cases = json_get(root, "cases"), *c;
    int matched = 0, total = 0;
    char what[512], error[256];
    for (c = cases ? cases->child : NULL; c; c = c->next) {
        const char *hex = json_get(c, "hex")->string, *normal_hex = json_get(c, "decoded_hex")->string;
        char *text = (char *)malloc(strlen(hex) / 2 + 1), *normal = (char *)malloc(strlen(normal_hex) / 2 + 1);
        size_t length = from_hex(hex, text), normal_length = from_hex(normal_hex, normal);
        int64_t capacity = (int64_t)length + 8, n, n_plain, decoded;
        int32_t *ids = (int32_t *)malloc((size_t)capacity * sizeof *ids);
        char *back = (char *)malloc(normal_length * 2 + 64);
        int ok;
        total++;
        n = tokenizer_encode(t, text, length, TOKENIZER_PARSE_SPECIAL, ids, capacity, error, sizeof error);
        ok = n >= 0 && n <= capacity && same_ids(ids, n, json_get(c, "ids"));
        snprintf(what, sizeof what, "%s: ids of %.60s", name, json_get(c, "text")->string);
        check(ok, what);
        if (!ok) print_ids("special", ids, n, json_get(c, "ids"));
        decoded = n >= 0 ? tokenizer_decode(t, ids, n, back, normal_length * 2 + 64) : -1;
        snprintf(what, sizeof what, "%s: decode(encode(x)) == x for %.60s", name, json_get(c, "text")->string);
        check(decoded == (int64_t)normal_length && !memcmp(back, normal, normal_length), what);
        n_plain = tokenizer_encode(t, text, length, 0, ids, capacity, error, sizeof error);
        snprintf(what, sizeof what, "%s: ids without special parsing of %.60s", name, json_get(c, "text")->string);
        check(n_plain >= 0 && n_plain <= capacity && same_ids(ids, n_plain, json_get(c, "ids_plain")), what);
        if (n_plain < 0 || !same_ids(ids, n_plain, json_get(c, "ids_plain"))) print_ids("plain", ids, n_plain, json_get(c, "ids_plain"));
        matched += ok;
        free(text); free(normal); free(ids); free(back);
    }
    printf("  %s: %d/%d strings encode to the Hugging Face ids\n", name, matched, total);
}

/* The ChatML prompt with the default and with a given system prompt is the
   chat template's text, and encodes to its ids. */
static void test_chat(const tokenizer *t, const json_value *root, const char *name) {
    const json_value *chats = json_get(root, "chat"), *c;
    char what[256], error[256];
    for (c = chats ? chats->child : NULL; c; c = c->next) {
        const json_value *system = json_get(c, "system");
        const char *hex = json_get(c, "prompt_hex")->string;
        char *want = (char *)malloc(strlen(hex) / 2 + 1), prompt[4096];
        size_t want_length = from_hex(hex, want);
        int32_t ids[1024];
        int64_t length = tokenizer_chat_prompt(t, system->type == JSON_STRING ? system->string : NULL,
                                               json_get(c, "user")->string, prompt, sizeof prompt);
        int64_t n;
        snprintf(what, sizeof what, "%s: chat prompt (%s system prompt) is the template's", name,
                 system->type == JSON_STRING ? "given" : "default");
        check(length == (int64_t)want_length && !memcmp(prompt, want, want_length), what);
        n = tokenizer_encode(t, prompt, (size_t)length, TOKENIZER_PARSE_SPECIAL, ids, 1024, error, sizeof error);
        snprintf(what, sizeof what, "%s: chat prompt (%s system prompt) ids", name,
                 system->type == JSON_STRING ? "given" : "default");
        check(same_ids(ids, n, json_get(c, "ids")), what);
        free(want);
    }
    check(tokenizer_chat_prompt(t, NULL, "x", NULL, 0) > 0, "chat prompt length query with no buffer");
}

/* Malformed UTF-8 is refused with a message naming the offset. */
static void test_invalid_utf8(const tokenizer *t, const char *name) {
    static const char *bad[] = {
        "\x80", "ok \xC3", "\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80",
        "\xF5\x80\x80\x80", "\xFF", "abc\xE2\x82", "\xE2\x28\xA1"
    };
    char what[256], error[256];
    int32_t ids[16];
    size_t i;
    for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int64_t n;
        error[0] = 0;
        n = tokenizer_encode(t, bad[i], strlen(bad[i]), TOKENIZER_PARSE_SPECIAL, ids, 16, error, sizeof error);
        snprintf(what, sizeof what, "%s: invalid UTF-8 case %lu refused with a message", name, (unsigned long)i);
        check(n == -1 && strstr(error, "invalid UTF-8") != NULL, what);
    }
}

/* Asking with too little room returns the full count and writes no more
   than the room. */
static void test_capacity(const tokenizer *t, const char *name) {
    const char *text = "The capacity protocol: call again with more room.";
    int32_t all[64], few[4] = {-7, -7, -7, -7};
    char what[256], error[256];
    int64_t n = tokenizer_encode(t, text, strlen(text), 0, all, 64, error, sizeof error);
    int64_t m = tokenizer_encode(t, text, strlen(text), 0, few, 3, error, sizeof error);
    snprintf(what, sizeof what, "%s: a short buffer gets the count and only its room filled", name);
    check(n > 3 && m == n && few[3] == -7 && !memcmp(few, all, 3 * sizeof *few), what);
    m = tokenizer_encode(t, text, strlen(text), 0, NULL, 0, error, sizeof error);
    snprintf(what, sizeof what, "%s: a NULL buffer counts the ids", name);
    check(m == n, what);
}

/* Encoding speed on ~10K+ tokens of mixed text (the vector strings repeated). */
static void test_speed(const tokenizer *t, const json_value *root, const char *name) {
    const json_value *c;
    char *text = NULL, what[256], error[256];
    size_t length = 0, capacity = 0;
    int32_t *ids;
    int64_t n = 0;
    clock_t start;
    double seconds;
    int round;
    while (length < 60000)
        for (c = json_get(root, "cases")->child; c; c = c->next) {
            const char *hex = json_get(c, "hex")->string;
            if (length + strlen(hex) / 2 + 1 > capacity) {
                capacity = (length + strlen(hex)) * 2 + 1024;
                text = (char *)realloc(text, capacity);
            }
            length += from_hex(hex, text + length);
        }
    ids = (int32_t *)malloc(length * sizeof *ids);
    start = clock();
    for (round = 0; round < 5; round++)
        n = tokenizer_encode(t, text, length, TOKENIZER_PARSE_SPECIAL, ids, (int64_t)length, error, sizeof error);
    seconds = (double)(clock() - start) / CLOCKS_PER_SEC / 5;
    printf("  %s: encoded %lld tokens (%lu bytes) in %.1f ms: %.2f M tokens/s\n", name, (long long)n,
           (unsigned long)length, seconds * 1e3, (double)n / seconds / 1e6);
    snprintf(what, sizeof what, "%s: 10K+ tokens encode in under 100 ms", name);
    check(n >= 10000 && seconds < 0.1, what);
    free(text);
    free(ids);
}

/* Inputs built to hit quadratic corners (one 300 KB piece for BPE, 150K
   pieces in one digit-free run, a 100 KB run of alternating combining marks
   for NFC's reordering) each encode in well under a second. */
static void test_hostile_inputs(const tokenizer *t, const char *name) {
    static const char *units[] = {"a", "a ", "\xcc\x81\xcc\x96", "\n \t"};
    static const char *labels[] = {"one 300 KB letter run", "300 KB of 'a '", "100 KB of alternating marks",
                                   "300 KB of mixed whitespace"};
    char what[256], error[256];
    int u;
    for (u = 0; u < 4; u++) {
        size_t unit = strlen(units[u]), length = u == 2 ? 100000 : 300000, i;
        char *text = (char *)malloc(length + 4);
        int64_t n;
        clock_t start;
        double seconds;
        text[0] = 'x';
        for (i = 1; i + unit <= length; i += unit) memcpy(text + i, units[u], unit);
        start = clock();
        n = tokenizer_encode(t, text, i, TOKENIZER_PARSE_SPECIAL, NULL, 0, error, sizeof error);
        seconds = (double)(clock() - start) / CLOCKS_PER_SEC;
        snprintf(what, sizeof what, "%s: %s encodes in under a second (%.0f ms, %lld tokens)", name, labels[u],
                 seconds * 1e3, (long long)n);
        check(n > 0 && seconds < 1.0, what);
        printf("  %s\n", what);
        free(text);
    }
}

static void test_model(const char *path, const char *vectors_dir) {
    char error[512], vectors[1024], what[1100];
    gguf_file file;
    tokenizer t;
    json_value *root;
    char *text;
    size_t length;
    const char *name;
    clock_t start;
    if (!file_exists(path)) {
        printf("  skipped: %s not found (run make model)\n", path);
        return;
    }
    if (gguf_open(&file, path, error, sizeof error)) {
        printf("FAIL: %s\n", error);
        n_failed++;
        return;
    }
    start = clock();
    if (tokenizer_load(&t, &file, error, sizeof error)) {
        printf("FAIL: tokenizer of %s: %s\n", path, error);
        n_failed++;
        gguf_close(&file);
        return;
    }
    printf("  %s: %d tokens, %lld merges, pre-tokenizer %s, loaded in %.0f ms\n", path, t.n_tokens,
           (long long)t.n_merges, t.pre_name, (double)(clock() - start) * 1e3 / CLOCKS_PER_SEC);
    gguf_close(&file); /* everything below runs on the tokenizer's own copies */
    name = t.pre == TOKENIZER_PRE_SMOLLM ? "smollm2" : t.pre == TOKENIZER_PRE_QWEN2 ? "qwen2" : NULL;
    if (!name) {
        printf("  skipped: no test vectors for pre-tokenizer %s\n", t.pre_name);
        tokenizer_free(&t);
        return;
    }
    snprintf(vectors, sizeof vectors, "%s/tokenizer-%s.json", vectors_dir, name);
    text = json_read_file(vectors, &length);
    root = text ? json_parse(text, length, error, sizeof error) : NULL;
    snprintf(what, sizeof what, "%s readable", vectors);
    check(root != NULL, what);
    if (root) {
        snprintf(what, sizeof what, "%s: no BOS added, <|im_end|> is the end of turn", name);
        check(!t.add_bos && t.im_end_id == (t.pre == TOKENIZER_PRE_SMOLLM ? 2 : 151645), what);
        test_vectors(&t, root, name);
        test_chat(&t, root, name);
        test_invalid_utf8(&t, name);
        test_capacity(&t, name);
        test_speed(&t, root, name);
        test_hostile_inputs(&t, name);
        json_free(root);
    }
    free(text);
    tokenizer_free(&t);
}

int main(int argc, char **argv) {
    const char *vectors_dir = "tests/vectors";
    int i, models = 0;
    test_synthetic();
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--vectors") && i + 1 < argc) { vectors_dir = argv[++i]; continue; }
        test_model(argv[i], vectors_dir);
        models++;
    }
    if (!models) printf("  skipped: no model given (build/test_tokenizer MODEL.gguf...; run make model)\n");
    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
