/* fuzz_gguf.c - libFuzzer target: arbitrary bytes through gguf_parse, every
   metadata accessor, the tensor conversions and the tokenizer loader.

   make fuzz-gguf   (clang -fsanitize=fuzzer,address,undefined; seeds in
                     tests/corpus/gguf, made by tests/corpus/make_corpus.py)

   Whatever the bytes, parsing either fails with a message or yields views
   that every accessor can walk without reading outside the input. */
#define KVEC_IMPLEMENTATION /* gguf.c converts fp16 with kvec's helpers */
#include "../kvec.h"
#include "../examples/engine/gguf.h"
#include "../examples/engine/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* conversions are bounded so one input cannot ask for gigabytes of floats */
#define MAX_CONVERTED_ELEMENTS (1 << 20)

static void walk_metadata(const gguf_file *file) {
    uint64_t i;
    for (i = 0; i < file->n_metadata; i++) {
        const gguf_metadata *m = &file->metadata[i];
        char key[256];
        int64_t integer;
        double real;
        gguf_string text;
        snprintf(key, sizeof key, "%.*s", (int)(m->key.length < 255 ? m->key.length : 255), m->key.data);
        if (gguf_find(file, key) == NULL && m->key.length < 255 && !memchr(m->key.data, 0, m->key.length))
            abort(); /* a key the parser stored must be found again */
        gguf_get_int(file, key, &integer);
        gguf_get_float(file, key, &real);
        if (gguf_get_string(file, key, &text) == 0 && text.length && text.data[text.length - 1] == 0x7f)
            integer = 0; /* touches the string's last byte: ASan checks it is inside the input */
        if (m->type == GGUF_ARRAY && m->count) {
            if (m->item_type == GGUF_STRING) {
                gguf_string *strings = (gguf_string *)malloc((size_t)m->count * sizeof *strings);
                uint64_t j, sum = 0;
                if (strings && gguf_array_strings(m, strings) == 0)
                    for (j = 0; j < m->count; j++)
                        if (strings[j].length) sum += (unsigned char)strings[j].data[strings[j].length - 1];
                free(strings);
                (void)sum;
            } else {
                int64_t *values = (int64_t *)malloc((size_t)m->count * sizeof *values);
                if (values) gguf_array_ints(m, values);
                free(values);
            }
        }
    }
}

static void walk_tensors(const gguf_file *file) {
    uint64_t i;
    for (i = 0; i < file->n_tensors; i++) {
        const gguf_tensor *t = &file->tensors[i];
        char name[256];
        float *values;
        snprintf(name, sizeof name, "%.*s", (int)(t->name.length < 255 ? t->name.length : 255), t->name.data);
        gguf_find_tensor(file, name);
        gguf_type_name(t->type);
        if (!t->data || t->n_elements > MAX_CONVERTED_ELEMENTS) continue;
        values = (float *)malloc((size_t)t->n_elements * sizeof *values);
        if (values) gguf_to_f32(t->type, t->data, values, t->n_elements);
        free(values);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file file;
    tokenizer tok;
    char error[256];
    /* a private copy: libFuzzer's buffer is exactly `size` bytes, so any
       read past it is caught, and the parser may not keep pointers to it */
    unsigned char *bytes = (unsigned char *)malloc(size ? size : 1);
    if (!bytes) return 0;
    memcpy(bytes, data, size);
    if (gguf_parse(&file, bytes, size, error, sizeof error) == 0) {
        walk_metadata(&file);
        walk_tensors(&file);
        if (tokenizer_load(&tok, &file, error, sizeof error) == 0) {
            static const char text[] = "Hello <|im_start|>world's 123 caf\xc3\xa9!";
            int32_t ids[64];
            char out[256];
            int64_t n = tokenizer_encode(&tok, text, sizeof text - 1, TOKENIZER_PARSE_SPECIAL, ids, 64,
                                         error, sizeof error);
            if (n > 0) tokenizer_decode(&tok, ids, n < 64 ? n : 64, out, sizeof out);
            tokenizer_chat_prompt(&tok, NULL, "hi", out, sizeof out);
            tokenizer_free(&tok);
        } else if (!error[0]) {
            abort(); /* every refusal says why */
        }
        gguf_close(&file);
    } else if (!error[0]) {
        abort();
    }
    free(bytes);
    return 0;
}
