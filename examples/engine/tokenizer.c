/* tokenizer.c - see tokenizer.h. Sections: UTF-8, Unicode classes and NFC,
   the byte-level alphabet, hash tables, loading, the pre-tokenizers, BPE,
   encode, decode and the chat prompt. */
#include "tokenizer.h"
#include "unicode_tables.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ UTF-8 */

/* Decodes the sequence at s[0 .. n) into *cp and returns its length, or 0
   when it is not well-formed UTF-8 (overlong forms, surrogates and code
   points past U+10FFFF included). */
static int utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    uint32_t c = s[0], min;
    int length, i;
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) { length = 2; c &= 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { length = 3; c &= 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { length = 4; c &= 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)length > n) return 0;
    for (i = 1; i < length; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
    *cp = c;
    return length;
}

static int utf8_encode(uint32_t c, unsigned char *out) {
    if (c < 0x80) { out[0] = (unsigned char)c; return 1; }
    if (c < 0x800) {
        out[0] = (unsigned char)(0xC0 | c >> 6);
        out[1] = (unsigned char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (unsigned char)(0xE0 | c >> 12);
        out[1] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (unsigned char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | c >> 18);
    out[1] = (unsigned char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (unsigned char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (unsigned char)(0x80 | (c & 0x3F));
    return 4;
}

/* ------------------------------------------------- Unicode classes, NFC */

/* The row of a sorted [first, last, value] range table holding c, or -1. */
static int64_t range_find(const uint32_t (*ranges)[3], int64_t n, uint32_t c) {
    int64_t lo = 0, hi = n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (c < ranges[mid][0]) hi = mid - 1;
        else if (c > ranges[mid][1]) lo = mid + 1;
        else return mid;
    }
    return -1;
}

static uint8_t unicode_class(uint32_t c) {
    int64_t row;
    if (c < 128) return unicode_ascii_class[c];
    row = range_find(unicode_class_ranges, UNICODE_CLASS_RANGES, c);
    return (uint8_t)(row < 0 ? 0 : unicode_class_ranges[row][2]); /* 0: UNICODE_OTHER */
}

static uint32_t combining_class(uint32_t c) {
    int64_t row;
    if (c < 0x300) return 0;
    row = range_find(unicode_combining_ranges, UNICODE_COMBINING_RANGES, c);
    return row < 0 ? 0 : unicode_combining_ranges[row][2];
}

/* Hangul syllables compose and decompose by arithmetic (Unicode 3.12). */
#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_L_COUNT 19u
#define HANGUL_V_COUNT 21u
#define HANGUL_T_COUNT 28u
#define HANGUL_N_COUNT (HANGUL_V_COUNT * HANGUL_T_COUNT)
#define HANGUL_S_COUNT (HANGUL_L_COUNT * HANGUL_N_COUNT)

/* Writes c's full canonical decomposition (itself when it has none) into
   out[UNICODE_MAX_DECOMPOSITION] and returns its length. */
static int decompose(uint32_t c, uint32_t *out) {
    int64_t lo = 0, hi = UNICODE_DECOMPOSITIONS - 1;
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_S_COUNT) {
        uint32_t s = c - HANGUL_S;
        out[0] = HANGUL_L + s / HANGUL_N_COUNT;
        out[1] = HANGUL_V + s % HANGUL_N_COUNT / HANGUL_T_COUNT;
        if (s % HANGUL_T_COUNT == 0) return 2;
        out[2] = HANGUL_T + s % HANGUL_T_COUNT;
        return 3;
    }
    while (c >= 0xC0 && lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (c < unicode_decompositions[mid][0]) hi = mid - 1;
        else if (c > unicode_decompositions[mid][0]) lo = mid + 1;
        else {
            uint32_t i, at = unicode_decompositions[mid][1], n = unicode_decompositions[mid][2];
            for (i = 0; i < n; i++) out[i] = unicode_decomposition_pool[at + i];
            return (int)n;
        }
    }
    out[0] = c;
    return 1;
}

/* The primary composite of the pair, or 0 when there is none. */
static uint32_t compose(uint32_t first, uint32_t second) {
    int64_t lo = 0, hi = UNICODE_COMPOSITIONS - 1;
    if (first >= HANGUL_L && first < HANGUL_L + HANGUL_L_COUNT &&
        second >= HANGUL_V && second < HANGUL_V + HANGUL_V_COUNT)
        return HANGUL_S + ((first - HANGUL_L) * HANGUL_V_COUNT + (second - HANGUL_V)) * HANGUL_T_COUNT;
    if (first >= HANGUL_S && first < HANGUL_S + HANGUL_S_COUNT && (first - HANGUL_S) % HANGUL_T_COUNT == 0 &&
        second > HANGUL_T && second < HANGUL_T + HANGUL_T_COUNT)
        return first + (second - HANGUL_T);
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        const uint32_t *row = unicode_compositions[mid];
        if (first < row[0] || (first == row[0] && second < row[1])) hi = mid - 1;
        else if (first > row[0] || second > row[1]) lo = mid + 1;
        else return row[2];
    }
    return 0;
}

/* Orders marks[0 .. n) by combining class, keeping the order of equal
   classes: a counting sort (classes are below 256), so a hostile run of
   alternating marks costs linear time. scratch: [n]. */
static void order_marks(uint32_t *marks, int64_t n, uint32_t *scratch) {
    int64_t count[257], i;
    memset(count, 0, sizeof count);
    for (i = 0; i < n; i++) count[combining_class(marks[i]) + 1]++;
    for (i = 1; i < 257; i++) count[i] += count[i - 1];
    for (i = 0; i < n; i++) scratch[count[combining_class(marks[i])]++] = marks[i];
    memcpy(marks, scratch, (size_t)n * sizeof *marks);
}

/* NFC of in[0 .. n) into out[n * UNICODE_MAX_DECOMPOSITION] (Hangul needs at
   most 3 per code point, the table at most UNICODE_MAX_DECOMPOSITION), with
   scratch[n * UNICODE_MAX_DECOMPOSITION]; returns the length. Decompose,
   order each run of marks by combining class, then compose each mark with
   the last starter unless a mark of the same or a higher class lies between
   them (the algorithm of UAX #15). */
static int64_t nfc(const uint32_t *in, int64_t n, uint32_t *out, uint32_t *scratch) {
    int64_t i, m = 0, starter = -1, kept, run = 0;
    uint32_t last_class = 0;
    for (i = 0; i < n; i++) m += decompose(in[i], out + m);
    for (i = 0; i <= m; i++) {
        if (i < m && combining_class(out[i]) != 0) continue;
        if (i - run > 1) order_marks(out + run, i - run, scratch);
        run = i + 1;
    }
    kept = 0;
    for (i = 0; i < m; i++) {
        uint32_t c = out[i], cc = combining_class(c), composite;
        if (starter >= 0 && (last_class < cc || last_class == 0) &&
            (composite = compose(out[starter], c)) != 0) {
            out[starter] = composite;
            continue;
        }
        if (cc == 0) starter = kept;
        last_class = cc;
        out[kept++] = c;
    }
    return kept;
}

/* ---------------------------------------------------- byte-level alphabet */

/* GPT-2 spells each byte as one printable code point: the printable Latin-1
   bytes as themselves, the other 68 as U+0100 onwards in byte order (space
   0x20 is U+0120 'Ġ', newline 0x0A is U+010A 'Ċ'). */
static void byte_alphabet(uint32_t byte_to_cp[256], int16_t cp_to_byte[324]) {
    uint32_t next = 256;
    int b;
    for (b = 0; b < 324; b++) cp_to_byte[b] = -1;
    for (b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        byte_to_cp[b] = printable ? (uint32_t)b : next++;
        cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
}

/* Writes the bytes a byte-level spelling s[0 .. n) stands for into out
   (at least n bytes) and returns their count, or -1 when s holds a code
   point outside the alphabet (a token written as raw text). */
static int64_t unmap_bytes(const char *s, uint64_t n, const int16_t cp_to_byte[324], char *out) {
    uint64_t i = 0;
    int64_t m = 0;
    while (i < n) {
        uint32_t c;
        int length = utf8_decode((const unsigned char *)s + i, (size_t)(n - i), &c);
        if (!length || c >= 324 || cp_to_byte[c] < 0) return -1;
        out[m++] = (char)cp_to_byte[c];
        i += (uint64_t)length;
    }
    return m;
}

/* ------------------------------------------------------------ hash tables */

static uint64_t hash_bytes(const char *s, uint64_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    uint64_t i;
    for (i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_pair(int32_t left, int32_t right) {
    uint64_t h = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    h ^= h >> 33; /* murmur3's finalizer */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    return h ^ h >> 33;
}

static uint64_t table_size(uint64_t n) {
    uint64_t size = 16;
    while (size < 2 * n) size *= 2;
    return size;
}

static int32_t vocab_lookup(const tokenizer *t, const char *s, uint64_t n) {
    uint64_t at = hash_bytes(s, n) & t->vocab_mask;
    for (;; at = (at + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[at];
        if (id < 0) return -1;
        if (t->piece_start[id + 1] - t->piece_start[id] - 1 == n &&
            !memcmp(t->pieces + t->piece_start[id], s, (size_t)n))
            return id;
    }
}

static const tokenizer_merge *merge_lookup(const tokenizer *t, int32_t left, int32_t right) {
    uint64_t at = hash_pair(left, right) & t->merge_mask;
    for (;; at = (at + 1) & t->merge_mask) {
        const tokenizer_merge *m = &t->merge_slots[at];
        if (m->left < 0) return NULL;
        if (m->left == left && m->right == right) return m;
    }
}

/* ---------------------------------------------------------------- loading */

static int string_is(gguf_string s, const char *text) { return gguf_string_equals(s, text); }

typedef struct special_entry { unsigned char first; uint64_t length; int32_t id; } special_entry;

static int special_order(const void *a, const void *b) {
    const special_entry *x = (const special_entry *)a, *y = (const special_entry *)b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->length != y->length) return x->length > y->length ? -1 : 1; /* longest first */
    return x->id < y->id ? -1 : x->id > y->id;
}

/* The default system prompt of a ChatML template: the text of the first
   string literal that holds "<|im_start|>system" + newline + text +
   "<|im_end|>" (SmolLM2's and Qwen2.5's templates write their default that
   way; the newline may be a real one or the escape \n). NULL when absent. */
static char *template_default_system(gguf_string template_text) {
    static const char opening[] = "<|im_start|>system";
    static const char closing[] = "<|im_end|>";
    const char *s = template_text.data;
    uint64_t n = template_text.length, i, j;
    for (i = 0; i + sizeof opening - 1 <= n; i++) {
        char *out;
        uint64_t used = 0;
        if (memcmp(s + i, opening, sizeof opening - 1)) continue;
        j = i + sizeof opening - 1;
        if (j < n && s[j] == '\n') j += 1;
        else if (j + 1 < n && s[j] == '\\' && s[j + 1] == 'n') j += 2;
        else continue;
        out = (char *)malloc((size_t)(n - j + 1));
        if (!out) return NULL;
        for (; j < n; j++) {
            if (j + sizeof closing - 1 <= n && !memcmp(s + j, closing, sizeof closing - 1)) {
                out[used] = 0;
                return out;
            }
            if (s[j] == '\'' || s[j] == '"') break; /* the literal ended: not a default */
            if (s[j] == '\\' && j + 1 < n) {
                j++;
                out[used++] = s[j] == 'n' ? '\n' : s[j] == 't' ? '\t' : s[j];
            } else {
                out[used++] = s[j];
            }
        }
        free(out);
    }
    return NULL;
}

static int32_t get_id(const gguf_file *file, const char *key, int32_t n_tokens) {
    int64_t v;
    return gguf_get_int(file, key, &v) == 0 && v >= 0 && v < n_tokens ? (int32_t)v : -1;
}

int tokenizer_load(tokenizer *t, const gguf_file *file, char *error, size_t error_size) {
    const gguf_metadata *tokens_md, *merges_md, *types_md;
    gguf_string model, pre, template_text, *strings = NULL;
    int64_t *types = NULL, flag;
    uint32_t byte_to_cp[256];
    int16_t cp_to_byte[324];
    uint64_t i, total = 0, longest = 0;
    char *scratch = NULL;
    special_entry *specials = NULL;
    int32_t id;
    int b;

    memset(t, 0, sizeof *t);
    t->bos_id = t->eos_id = t->im_end_id = -1;
    if (gguf_get_string(file, "tokenizer.ggml.model", &model))
        return gguf_error(error, error_size, "no tokenizer in this GGUF file (tokenizer.ggml.model missing)");
    if (!string_is(model, "gpt2"))
        return gguf_error(error, error_size,
                               "tokenizer model '%.*s' is not supported (byte-level BPE, 'gpt2', only)",
                               (int)(model.length > 64 ? 64 : model.length), model.data);
    if (gguf_get_string(file, "tokenizer.ggml.pre", &pre))
        return gguf_error(error, error_size, "tokenizer.ggml.pre missing: the pre-tokenizer is unknown");
    if (string_is(pre, "gpt2")) t->pre = TOKENIZER_PRE_GPT2;
    else if (string_is(pre, "smollm")) t->pre = TOKENIZER_PRE_SMOLLM;
    else if (string_is(pre, "qwen2")) t->pre = TOKENIZER_PRE_QWEN2;
    else if (string_is(pre, "llama-bpe")) t->pre = TOKENIZER_PRE_LLAMA_BPE;
    else
        return gguf_error(error, error_size,
                               "pre-tokenizer '%.*s' is not supported (gpt2, smollm, qwen2, llama-bpe)",
                               (int)(pre.length > 64 ? 64 : pre.length), pre.data);
    snprintf(t->pre_name, sizeof t->pre_name, "%.*s", (int)pre.length, pre.data);

    tokens_md = gguf_find(file, "tokenizer.ggml.tokens");
    merges_md = gguf_find(file, "tokenizer.ggml.merges");
    types_md = gguf_find(file, "tokenizer.ggml.token_type");
    if (!tokens_md || tokens_md->type != GGUF_ARRAY || tokens_md->item_type != GGUF_STRING ||
        tokens_md->count < 256 || tokens_md->count > INT32_MAX / 2)
        return gguf_error(error, error_size, "tokenizer.ggml.tokens missing or not a string array of 256+");
    if (!merges_md || merges_md->type != GGUF_ARRAY || merges_md->item_type != GGUF_STRING ||
        merges_md->count > INT32_MAX / 2)
        return gguf_error(error, error_size, "tokenizer.ggml.merges missing or not a string array");
    if (types_md && (types_md->type != GGUF_ARRAY || types_md->count != tokens_md->count))
        return gguf_error(error, error_size, "tokenizer.ggml.token_type does not match the tokens");
    t->n_tokens = (int32_t)tokens_md->count;

    strings = (gguf_string *)malloc((size_t)(tokens_md->count > merges_md->count ? tokens_md->count
                                                                                 : merges_md->count + 1) * sizeof *strings);
    types = (int64_t *)malloc((size_t)t->n_tokens * sizeof *types);
    t->types = (uint8_t *)malloc((size_t)t->n_tokens);
    t->piece_start = (uint64_t *)malloc(((size_t)t->n_tokens + 1) * sizeof *t->piece_start);
    if (!strings || !types || !t->types || !t->piece_start) goto out_of_memory;
    if (gguf_array_strings(tokens_md, strings)) goto malformed;
    if (types_md) {
        if (gguf_array_ints(types_md, types)) goto malformed;
    } else {
        for (i = 0; i < (uint64_t)t->n_tokens; i++) types[i] = TOKENIZER_NORMAL;
    }

    /* Pieces: a normal token's spelling is byte-level, every other type's
       (and a normal token with characters outside the alphabet) raw text. */
    byte_alphabet(byte_to_cp, cp_to_byte);
    for (i = 0; i < (uint64_t)t->n_tokens; i++) {
        total += strings[i].length + 1;
        if (strings[i].length > longest) longest = strings[i].length;
    }
    t->pieces = (char *)malloc((size_t)total);
    scratch = (char *)malloc((size_t)longest * 2 + 2);
    if (!t->pieces || !scratch) goto out_of_memory;
    total = 0;
    for (i = 0; i < (uint64_t)t->n_tokens; i++) {
        int64_t n = -1;
        t->types[i] = (uint8_t)(types[i] >= 1 && types[i] <= 6 ? types[i] : TOKENIZER_NORMAL);
        t->piece_start[i] = total;
        if (t->types[i] == TOKENIZER_NORMAL || t->types[i] == TOKENIZER_BYTE)
            n = unmap_bytes(strings[i].data, strings[i].length, cp_to_byte, t->pieces + total);
        if (n < 0) {
            memcpy(t->pieces + total, strings[i].data, (size_t)strings[i].length);
            n = (int64_t)strings[i].length;
        }
        total += (uint64_t)n;
        t->pieces[total++] = 0;
    }
    t->piece_start[t->n_tokens] = total;

    /* piece bytes -> id; the first of equal pieces wins */
    t->vocab_mask = table_size((uint64_t)t->n_tokens) - 1;
    t->vocab_slots = (int32_t *)malloc((size_t)(t->vocab_mask + 1) * sizeof *t->vocab_slots);
    if (!t->vocab_slots) goto out_of_memory;
    for (i = 0; i <= t->vocab_mask; i++) t->vocab_slots[i] = -1;
    for (id = 0; id < t->n_tokens; id++) {
        const char *s = t->pieces + t->piece_start[id];
        uint64_t n = t->piece_start[id + 1] - t->piece_start[id] - 1;
        uint64_t at = hash_bytes(s, n) & t->vocab_mask;
        if (vocab_lookup(t, s, n) >= 0) continue;
        while (t->vocab_slots[at] >= 0) at = (at + 1) & t->vocab_mask;
        t->vocab_slots[at] = id;
    }
    /* SmolLM2 has no token for 21 bytes (0x04, 0xC0, 0xFF...): like Hugging
       Face's BPE without an unknown token, encoding drops those bytes. */
    for (b = 0; b < 256; b++) {
        char byte = (char)b;
        t->byte_token[b] = vocab_lookup(t, &byte, 1);
    }

    /* merges "A B" (byte-level spellings) -> (id A, id B) -> rank, id AB */
    if (gguf_array_strings(merges_md, strings)) goto malformed;
    t->merge_mask = table_size(merges_md->count) - 1;
    t->merge_slots = (tokenizer_merge *)malloc((size_t)(t->merge_mask + 1) * sizeof *t->merge_slots);
    if (!t->merge_slots) goto out_of_memory;
    for (i = 0; i <= t->merge_mask; i++) t->merge_slots[i].left = -1;
    free(scratch);
    longest = 0;
    for (i = 0; i < merges_md->count; i++)
        if (strings[i].length > longest) longest = strings[i].length;
    scratch = (char *)malloc((size_t)longest + 1);
    if (!scratch) goto out_of_memory;
    for (i = 0; i < merges_md->count; i++) {
        const char *s = strings[i].data;
        uint64_t n = strings[i].length, space = 1, at;
        int64_t left_n, right_n;
        int32_t left, right, merged;
        while (space < n && s[space] != ' ') space++;
        if (space >= n) continue;
        left_n = unmap_bytes(s, space, cp_to_byte, scratch);
        right_n = left_n < 0 ? -1 : unmap_bytes(s + space + 1, n - space - 1, cp_to_byte, scratch + left_n);
        if (right_n < 0) continue;
        left = vocab_lookup(t, scratch, (uint64_t)left_n);
        right = vocab_lookup(t, scratch + left_n, (uint64_t)right_n);
        merged = vocab_lookup(t, scratch, (uint64_t)(left_n + right_n));
        if (left < 0 || right < 0 || merged < 0 || merge_lookup(t, left, right)) continue;
        at = hash_pair(left, right) & t->merge_mask;
        while (t->merge_slots[at].left >= 0) at = (at + 1) & t->merge_mask;
        t->merge_slots[at].left = left;
        t->merge_slots[at].right = right;
        t->merge_slots[at].rank = (int32_t)i;
        t->merge_slots[at].merged = merged;
        t->n_merges++;
    }

    /* special tokens, grouped by first byte, longest first within a group */
    specials = (special_entry *)malloc((size_t)t->n_tokens * sizeof *specials);
    if (!specials) goto out_of_memory;
    for (id = 0; id < t->n_tokens; id++) {
        uint64_t n = t->piece_start[id + 1] - t->piece_start[id] - 1;
        if ((t->types[id] != TOKENIZER_CONTROL && t->types[id] != TOKENIZER_USER_DEFINED) || n == 0) continue;
        specials[t->n_special].first = (unsigned char)t->pieces[t->piece_start[id]];
        specials[t->n_special].length = n;
        specials[t->n_special].id = id;
        t->n_special++;
    }
    qsort(specials, (size_t)t->n_special, sizeof *specials, special_order);
    t->special = (int32_t *)malloc((size_t)(t->n_special + 1) * sizeof *t->special);
    if (!t->special) goto out_of_memory;
    for (b = 0, id = 0; b <= 256; b++) {
        while (id < t->n_special && specials[id].first < b) id++;
        t->special_first[b] = id;
    }
    for (id = 0; id < t->n_special; id++) t->special[id] = specials[id].id;

    t->bos_id = get_id(file, "tokenizer.ggml.bos_token_id", t->n_tokens);
    t->eos_id = get_id(file, "tokenizer.ggml.eos_token_id", t->n_tokens);
    t->im_end_id = tokenizer_find(t, "<|im_end|>");
    t->add_bos = gguf_get_int(file, "tokenizer.ggml.add_bos_token", &flag) == 0 && flag && t->bos_id >= 0;
    if (gguf_get_string(file, "tokenizer.chat_template", &template_text) == 0)
        t->default_system = template_default_system(template_text);

    free(strings);
    free(types);
    free(scratch);
    free(specials);
    return 0;
out_of_memory:
    gguf_error(error, error_size, "out of memory loading the tokenizer");
    goto fail;
malformed:
    gguf_error(error, error_size, "malformed tokenizer arrays");
fail:
    free(strings);
    free(types);
    free(scratch);
    free(specials);
    tokenizer_free(t);
    return -1;
}

void tokenizer_free(tokenizer *t) {
    free(t->types);
    free(t->pieces);
    free(t->piece_start);
    free(t->vocab_slots);
    free(t->merge_slots);
    free(t->special);
    free(t->default_system);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------- pre-tokenizers */

/* Each matcher returns the length (in code points) of the pattern's match
   at position i of c[0 .. n), whose classes are cls[0 .. n); n is the end of
   the stretch being split, which a lookahead treats as the end of text. The
   alternatives are tried in the pattern's order, as the regex engine does. */

/* 's 't 're 've 'm 'll 'd; `fold` matches them case-insensitively, where
   U+017F LATIN SMALL LETTER LONG S folds to s as in the Unicode case folding. */
static int64_t match_contraction(const uint32_t *c, int64_t i, int64_t n, int fold) {
    uint32_t a, b;
    if (c[i] != '\'' || i + 1 >= n) return 0;
    a = c[i + 1];
    if (fold) a = a == 0x17F ? 's' : (a >= 'A' && a <= 'Z') ? a + 32 : a;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (i + 2 >= n) return 0;
    b = c[i + 2];
    if (fold && b >= 'A' && b <= 'Z') b += 32;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

static int64_t run_of(const uint8_t *cls, int64_t j, int64_t n, uint8_t want) {
    while (j < n && cls[j] == want) j++;
    return j;
}

/* \s+(?!\S)|\s+ at a whitespace run of k: all of it at the end of the text,
   else all but the last (which goes with the next piece), but never nothing. */
static int64_t match_spaces(const uint8_t *cls, int64_t i, int64_t n) {
    int64_t k = run_of(cls, i, n, UNICODE_SPACE) - i;
    return i + k == n || k < 2 ? k : k - 1;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int64_t match_gpt2(const uint32_t *c, const uint8_t *cls, int64_t i, int64_t n) {
    static const uint8_t runs[3] = {UNICODE_LETTER, UNICODE_NUMBER, UNICODE_OTHER};
    int64_t m = match_contraction(c, i, n, 0);
    int r;
    if (m) return m;
    for (r = 0; r < 3; r++) {
        if (c[i] == ' ' && i + 1 < n && cls[i + 1] == runs[r]) return run_of(cls, i + 1, n, runs[r]) - i;
        if (cls[i] == runs[r]) return run_of(cls, i, n, runs[r]) - i;
    }
    return match_spaces(cls, i, n);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}
   | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static int64_t match_qwen2(const uint32_t *c, const uint8_t *cls, int64_t i, int64_t n, int64_t max_digits) {
    int64_t m = match_contraction(c, i, n, 1), j, last_newline = -1;
    if (m) return m;
    if (cls[i] == UNICODE_LETTER) return run_of(cls, i, n, UNICODE_LETTER) - i;
    if (c[i] != '\r' && c[i] != '\n' && cls[i] != UNICODE_NUMBER && i + 1 < n && cls[i + 1] == UNICODE_LETTER)
        return run_of(cls, i + 1, n, UNICODE_LETTER) - i;
    if (cls[i] == UNICODE_NUMBER) {
        j = run_of(cls, i, n, UNICODE_NUMBER) - i;
        return j < max_digits ? j : max_digits;
    }
    j = c[i] == ' ' && i + 1 < n && cls[i + 1] == UNICODE_OTHER ? i + 1 : cls[i] == UNICODE_OTHER ? i : -1;
    if (j >= 0) {
        j = run_of(cls, j, n, UNICODE_OTHER);
        while (j < n && (c[j] == '\r' || c[j] == '\n')) j++;
        return j - i;
    }
    /* c[i] is whitespace: up to its run's last line break, if it has one */
    for (j = i; j < n && cls[j] == UNICODE_SPACE; j++)
        if (c[j] == '\r' || c[j] == '\n') last_newline = j;
    if (last_newline >= 0) return last_newline + 1 - i;
    return match_spaces(cls, i, n);
}

/* ---------------------------------------------------------------------- BPE */

typedef struct bpe_symbol { int32_t id, prev, next; } bpe_symbol; /* prev/next -1 at the ends */
typedef struct bpe_pair { int32_t rank, left, right, left_id, right_id, merged; } bpe_pair;

/* Scratch reused across one encode call; each array grows on demand. */
typedef struct encode_state {
    const tokenizer *t;
    int32_t   *ids;
    int64_t    capacity, count;
    uint32_t  *nfc;       /* [nfc_cap] the stretch's code points after NFC, then as much scratch */
    int64_t    nfc_cap;
    bpe_symbol *symbols;  /* [symbols_cap] one per byte of the piece */
    int64_t    symbols_cap;
    bpe_pair  *heap;      /* [heap_cap] pairs to merge, a min-heap by (rank, left): 3 per byte at most */
    int64_t    heap_cap;
    unsigned char *bytes; /* [bytes_cap] the piece as UTF-8 */
    int64_t    bytes_cap;
} encode_state;

static int grow(void **p, int64_t *capacity, int64_t need, size_t element) {
    void *q;
    int64_t n = *capacity ? *capacity : 64;
    if (need <= *capacity) return 0;
    while (n < need) n *= 2;
    q = realloc(*p, (size_t)n * element);
    if (!q) return -1;
    *p = q;
    *capacity = n;
    return 0;
}

static void emit(encode_state *s, int32_t id) {
    if (s->count < s->capacity) s->ids[s->count] = id;
    s->count++;
}

static int pair_before(const bpe_pair *a, const bpe_pair *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bpe_pair *heap, int64_t *n, bpe_pair p) {
    int64_t at = (*n)++;
    while (at > 0 && pair_before(&p, &heap[(at - 1) / 2])) {
        heap[at] = heap[(at - 1) / 2];
        at = (at - 1) / 2;
    }
    heap[at] = p;
}

static bpe_pair heap_pop(bpe_pair *heap, int64_t *n) {
    bpe_pair top = heap[0], last = heap[--*n];
    int64_t at = 0;
    for (;;) {
        int64_t child = 2 * at + 1;
        if (child >= *n) break;
        if (child + 1 < *n && pair_before(&heap[child + 1], &heap[child])) child++;
        if (!pair_before(&heap[child], &last)) break;
        heap[at] = heap[child];
        at = child;
    }
    if (*n > 0) heap[at] = last;
    return top;
}

static void push_pair(encode_state *s, int64_t *n_heap, int32_t left, int32_t right) {
    const tokenizer_merge *m;
    bpe_pair p;
    if (left < 0 || right < 0) return;
    m = merge_lookup(s->t, s->symbols[left].id, s->symbols[right].id);
    if (!m) return;
    p.rank = m->rank;
    p.left = left;
    p.right = right;
    p.left_id = m->left;
    p.right_id = m->right;
    p.merged = m->merged;
    heap_push(s->heap, n_heap, p);
}

/* Merges the bytes of one piece and emits its ids. A pair is applied only if
   both symbols still hold the ids it was made from and are still adjacent;
   other heap entries are stale and skipped. */
static int bpe_piece(encode_state *s, const unsigned char *bytes, int64_t n_bytes) {
    int64_t i, n = 0, n_heap = 0;
    int32_t at;
    if (grow((void **)&s->symbols, &s->symbols_cap, n_bytes, sizeof *s->symbols) ||
        grow((void **)&s->heap, &s->heap_cap, 3 * n_bytes, sizeof *s->heap))
        return -1;
    for (i = 0; i < n_bytes; i++) /* bytes without a token are dropped, their neighbours joined */
        if (s->t->byte_token[bytes[i]] >= 0) s->symbols[n++].id = s->t->byte_token[bytes[i]];
    if (n == 0) return 0;
    for (i = 0; i < n; i++) {
        s->symbols[i].prev = (int32_t)(i - 1);
        s->symbols[i].next = i + 1 < n ? (int32_t)(i + 1) : -1;
    }
    for (i = 0; i + 1 < n; i++) push_pair(s, &n_heap, (int32_t)i, (int32_t)(i + 1));
    while (n_heap > 0) {
        bpe_pair p = heap_pop(s->heap, &n_heap);
        bpe_symbol *left = &s->symbols[p.left], *right = &s->symbols[p.right];
        if (left->id != p.left_id || right->id != p.right_id || left->next != p.right) continue;
        left->id = p.merged;
        left->next = right->next;
        if (right->next >= 0) s->symbols[right->next].prev = p.left;
        right->id = -1;
        right->next = right->prev = -1;
        push_pair(s, &n_heap, left->prev, p.left);
        push_pair(s, &n_heap, p.left, left->next);
    }
    for (at = 0; at >= 0; at = s->symbols[at].next) emit(s, s->symbols[at].id);
    return 0;
}

/* --------------------------------------------------------------- encoding */

/* Splits one stretch of text (no special tokens in it) into pieces and
   encodes each. cps[0 .. n) are its code points. */
static int encode_stretch(encode_state *s, const uint32_t *cps, int64_t n, uint8_t *cls) {
    const tokenizer *t = s->t;
    int64_t i, j, m, end, digit_free_end = 0;
    int needs_nfc = 0;
    if (t->pre == TOKENIZER_PRE_QWEN2)
        for (i = 0; i < n && !needs_nfc; i++) needs_nfc = cps[i] >= 0x300; /* below: NFC changes nothing */
    if (needs_nfc) {
        if (grow((void **)&s->nfc, &s->nfc_cap, 2 * n * UNICODE_MAX_DECOMPOSITION, sizeof *s->nfc)) return -1;
        n = nfc(cps, n, s->nfc, s->nfc + n * UNICODE_MAX_DECOMPOSITION);
        cps = s->nfc;
    }
    for (i = 0; i < n; i++) cls[i] = unicode_class(cps[i]);
    for (i = 0; i < n; i += m) {
        end = n;
        if (t->pre == TOKENIZER_PRE_SMOLLM) {
            /* every digit is a piece of its own; the rest is split by the
               gpt2 pattern as if each digit ended the text */
            if (cls[i] == UNICODE_NUMBER) end = i + 1;
            else {
                if (digit_free_end <= i) /* found once per run, not once per piece */
                    for (digit_free_end = i; digit_free_end < n && cls[digit_free_end] != UNICODE_NUMBER;)
                        digit_free_end++;
                end = digit_free_end;
            }
        }
        switch (t->pre) {
        case TOKENIZER_PRE_QWEN2: m = match_qwen2(cps, cls, i, end, 1); break;
        case TOKENIZER_PRE_LLAMA_BPE: m = match_qwen2(cps, cls, i, end, 3); break;
        default: m = match_gpt2(cps, cls, i, end); break;
        }
        if (grow((void **)&s->bytes, &s->bytes_cap, 4 * m, 1)) return -1;
        for (j = 0, end = 0; j < m; j++) end += utf8_encode(cps[i + j], s->bytes + end);
        if (bpe_piece(s, s->bytes, end)) return -1;
    }
    return 0;
}

int64_t tokenizer_encode(const tokenizer *t, const char *text, size_t length, int flags,
                         int32_t *ids, int64_t capacity, char *error, size_t error_size) {
    const unsigned char *u = (const unsigned char *)text;
    encode_state s;
    uint32_t *cps = NULL;  /* [length] code points of the current stretch */
    uint8_t *cls = NULL;   /* [length * UNICODE_MAX_DECOMPOSITION] their classes */
    size_t i;
    int64_t n_cps = 0, result = -1;
    memset(&s, 0, sizeof s);
    s.t = t;
    s.ids = ids;
    s.capacity = ids ? capacity : 0;
    for (i = 0; i < length;) { /* validate everything before producing anything */
        uint32_t c;
        int n = utf8_decode(u + i, length - i, &c);
        if (!n) {
            gguf_error(error, error_size, "invalid UTF-8 at byte %lu of the text (0x%02X)",
                            (unsigned long)i, u[i]);
            return -1;
        }
        i += (size_t)n;
    }
    cps = (uint32_t *)malloc((length + 1) * sizeof *cps);
    cls = (uint8_t *)malloc((length + 1) * UNICODE_MAX_DECOMPOSITION);
    if (!cps || !cls) goto out_of_memory;
    if ((flags & TOKENIZER_ADD_BOS) && t->add_bos) emit(&s, t->bos_id);
    for (i = 0; i <= length;) {
        int32_t special = -1, k;
        uint32_t c;
        int n;
        if (i < length)
            for (k = t->special_first[u[i]]; k < t->special_first[u[i] + 1]; k++) {
                int32_t id = t->special[k];
                uint64_t size = t->piece_start[id + 1] - t->piece_start[id] - 1;
                if (t->types[id] == TOKENIZER_CONTROL && !(flags & TOKENIZER_PARSE_SPECIAL)) continue;
                /* a match must end where a character ends: a hostile
                   vocabulary's special piece may stop inside one, and the
                   text after it would then not decode */
                if (size > 0 && size <= length - i && !memcmp(text + i, t->pieces + t->piece_start[id], (size_t)size) &&
                    (size == length - i || (u[i + size] & 0xC0) != 0x80)) {
                    special = id;
                    break;
                }
            }
        if (special >= 0 || i == length) {
            if (n_cps && encode_stretch(&s, cps, n_cps, cls)) goto out_of_memory;
            n_cps = 0;
            if (i == length) break;
            emit(&s, special);
            i += t->piece_start[special + 1] - t->piece_start[special] - 1;
            continue;
        }
        n = utf8_decode(u + i, length - i, &c);
        cps[n_cps++] = c;
        i += (size_t)n;
    }
    result = s.count;
    goto done;
out_of_memory:
    gguf_error(error, error_size, "out of memory encoding %lu bytes", (unsigned long)length);
done:
    free(cps);
    free(cls);
    free(s.nfc);
    free(s.symbols);
    free(s.heap);
    free(s.bytes);
    return result;
}

/* --------------------------------------------------------------- decoding */

const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *length) {
    if (id < 0 || id >= t->n_tokens) return NULL;
    if (length) *length = (size_t)(t->piece_start[id + 1] - t->piece_start[id] - 1);
    return t->pieces + t->piece_start[id];
}

int64_t tokenizer_decode(const tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t capacity) {
    int64_t i;
    uint64_t used = 0;
    for (i = 0; i < n; i++) {
        size_t size;
        const char *piece = tokenizer_piece(t, ids[i], &size);
        if (!piece) return -1;
        if (used + size < capacity) memcpy(out + used, piece, size);
        used += size;
    }
    if (capacity) out[used < capacity ? used : capacity - 1] = 0;
    return (int64_t)used;
}

int32_t tokenizer_find(const tokenizer *t, const char *text) {
    return vocab_lookup(t, text, strlen(text));
}

/* ------------------------------------------------------------ chat prompt */

int64_t tokenizer_chat_prompt(const tokenizer *t, const char *system, const char *user,
                              char *out, size_t capacity) {
    int written;
    if (tokenizer_find(t, "<|im_start|>") < 0 || t->im_end_id < 0) return -1;
    if (!system) system = t->default_system;
    if (system)
        written = snprintf(out, capacity,
                           "<|im_start|>system\n%s<|im_end|>\n<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n",
                           system, user);
    else
        written = snprintf(out, capacity, "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
    return written;
}
