/* fuzz_tokenizer.c - libFuzzer target: arbitrary bytes through
   tokenizer_encode, then decode of the ids.

   KVEC_FUZZ_MODEL=model.gguf build/fuzz_tokenizer CORPUS...   (make fuzz-tokenizer)

   The first input byte picks the flags (parse special tokens, add BOS); the
   rest is the text. Properties checked on every input:
     - invalid UTF-8 is refused with a message, valid text never is;
     - counting (no buffer) and encoding give the same count, every id is in
       the vocabulary, and a short buffer gets no more than its room;
     - for a pre-tokenizer without normalization (smollm, gpt2, llama-bpe),
       decode(encode(text)) is the text less the bytes the vocabulary has no
       token for. */
#define KVEC_IMPLEMENTATION /* gguf.c converts fp16 with kvec's helpers */
#include "../kvec.h"
#include "../examples/engine/gguf.h"
#include "../examples/engine/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libFuzzer's interface leaves no other place for the loaded model */
static tokenizer fuzz_tokenizer;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    const char *path = getenv("KVEC_FUZZ_MODEL");
    char error[512];
    gguf_file file;
    (void)argc;
    (void)argv;
    if (!path) {
        fprintf(stderr, "fuzz_tokenizer: set KVEC_FUZZ_MODEL to a GGUF file (make model fetches one)\n");
        exit(2);
    }
    if (gguf_open(&file, path, error, sizeof error) || tokenizer_load(&fuzz_tokenizer, &file, error, sizeof error)) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", error);
        exit(2);
    }
    gguf_close(&file);
    fprintf(stderr, "fuzz_tokenizer: %s, pre-tokenizer %s\n", path, fuzz_tokenizer.pre_name);
    return 0;
}

static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t length = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        size_t k;
        if (!length || i + length > n) return 0;
        for (k = 1; k < length; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[i + 1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && s[i + 1] >= 0xA0) return 0; /* surrogate */
        if (c == 0xF0 && s[i + 1] < 0x90) return 0;  /* overlong */
        if (c == 0xF4 && s[i + 1] >= 0x90) return 0; /* past U+10FFFF */
        i += length;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const tokenizer *t = &fuzz_tokenizer;
    int flags = size ? data[0] & 3 : 0;
    const char *text = (const char *)data + (size ? 1 : 0);
    size_t length = size ? size - 1 : 0, i, kept = 0, decoded_capacity;
    char error[256] = "";
    int32_t *ids, few[2] = {-1, -1};
    char *decoded, *expected;
    int64_t n = tokenizer_encode(t, text, length, flags, NULL, 0, error, sizeof error), m, d, k;
    if (!valid_utf8((const unsigned char *)text, length)) {
        if (n != -1 || !strstr(error, "invalid UTF-8")) abort();
        return 0;
    }
    if (n < 0) abort();
    ids = (int32_t *)malloc((size_t)(n + 1) * sizeof *ids);
    if (!ids) return 0;
    m = tokenizer_encode(t, text, length, flags, ids, n, error, sizeof error);
    if (m != n) abort();
    for (k = 0; k < n; k++)
        if (ids[k] < 0 || ids[k] >= t->n_tokens) abort();
    if (tokenizer_encode(t, text, length, flags, few, 1, error, sizeof error) != n || (n > 1 && few[1] != -1))
        abort();
    d = tokenizer_decode(t, ids, n, NULL, 0);
    if (d < 0) abort();
    decoded_capacity = (size_t)d + 1;
    decoded = (char *)malloc(decoded_capacity);
    expected = (char *)malloc(length + 1);
    if (decoded && expected && tokenizer_decode(t, ids, n, decoded, decoded_capacity) == d &&
        t->pre != TOKENIZER_PRE_QWEN2 && !((flags & TOKENIZER_ADD_BOS) && t->add_bos)) {
        for (i = 0; i < length; i++)
            if (t->byte_token[(unsigned char)text[i]] >= 0) expected[kept++] = text[i];
        if ((size_t)d != kept || memcmp(decoded, expected, kept)) abort();
    }
    free(decoded);
    free(expected);
    free(ids);
    return 0;
}
