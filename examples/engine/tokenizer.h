/* tokenizer.h - the byte-level BPE tokenizer of a GGUF model, for the example
   engine: GPT-2-style vocabularies (tokenizer.ggml.model "gpt2") such as
   SmolLM2's and Qwen2.5's.

   QUICK START

       gguf_file file;
       tokenizer tok;
       char error[256];
       int32_t ids[4096];
       int64_t n;
       if (gguf_open(&file, "model.gguf", error, sizeof error) ||
           tokenizer_load(&tok, &file, error, sizeof error)) { puts(error); return 1; }
       gguf_close(&file);                    (the tokenizer keeps copies)
       n = tokenizer_encode(&tok, text, strlen(text), TOKENIZER_PARSE_SPECIAL,
                            ids, 4096, error, sizeof error);
       (n < 0: error; n > 4096: call again with room for n ids)
       tokenizer_free(&tok);

   HOW TEXT BECOMES IDS (the Hugging Face tokenizers pipeline, step by step)

       text (UTF-8) --validate--> special tokens cut out (whole matches of
       their text, leftmost then longest) --> each stretch between them:
       NFC (qwen2 only) --> pre-tokenizer split into pieces (the regex of the
       model's tokenizer.ggml.pre) --> each piece's bytes as byte tokens
       --> BPE: merge the adjacent pair of lowest merge rank (leftmost on a
       tie) until no pair has a rank --> ids
   (A byte the vocabulary has no token for is dropped, as Hugging Face's BPE
   does without an unknown token: SmolLM2 lacks 0x04, 0x06 and 19 others.)

   The pre-tokenizers, by tokenizer.ggml.pre:

       gpt2       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
       smollm     every \p{N} its own piece, then the gpt2 pattern on the rest
       qwen2      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}
                  | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   (after NFC)
       llama-bpe  as qwen2 with \p{N}{1,3}, and no NFC

   Each pattern is matched by hand-written code (tokenizer.c), not a regex
   engine; the classes and the NFC data come from unicode_tables.h (Unicode
   16, the version of the Oniguruma engine inside Hugging Face tokenizers,
   so \p{L} and \p{N} agree code point for code point). One known
   difference: the tokenizers library's NFC uses an older Unicode (before
   11), so text with combining marks or compositions added since (U+07FD,
   U+08CA..U+08D3, U+1AC1.., Tulu-Tigalari vowel signs...) may normalize
   differently; random differential testing finds no other.

   Special tokens: tokens of type CONTROL (<|im_start|>, <|endoftext|>) are
   recognised in the text only with TOKENIZER_PARSE_SPECIAL, those of type
   USER_DEFINED (<tool_call>) always; elsewhere their text is ordinary text.

   Decoding is the reverse byte mapping: each id stands for a fixed byte
   string (its "piece"; control tokens for their own text), and the text is
   the pieces concatenated. A piece may end inside a UTF-8 sequence.

   MEMORY: tokenizer_load copies what it needs (nothing points into the
   gguf_file afterwards). tokenizer_encode allocates scratch proportional to
   the text and frees it before returning. Nothing is global: one tokenizer
   may be used by many threads at once (encode and decode do not write it).

   ERRORS: functions that can fail return -1 and, where they take one, write
   a message into `error` (error_size bytes). */
#ifndef KVEC_EXAMPLE_TOKENIZER_H
#define KVEC_EXAMPLE_TOKENIZER_H

#include "gguf.h"

#include <stddef.h>
#include <stdint.h>

/* tokenizer.ggml.token_type, llama.cpp's numbering */
enum tokenizer_token_type {
    TOKENIZER_NORMAL = 1, TOKENIZER_UNKNOWN = 2, TOKENIZER_CONTROL = 3,
    TOKENIZER_USER_DEFINED = 4, TOKENIZER_UNUSED = 5, TOKENIZER_BYTE = 6
};

enum tokenizer_pre {
    TOKENIZER_PRE_GPT2 = 1, TOKENIZER_PRE_SMOLLM = 2, TOKENIZER_PRE_QWEN2 = 3, TOKENIZER_PRE_LLAMA_BPE = 4
};

/* tokenizer_encode flags */
enum {
    TOKENIZER_PARSE_SPECIAL = 1, /* control tokens' text in the input becomes their ids */
    TOKENIZER_ADD_BOS = 2        /* prepend BOS when the model's metadata asks for it (add_bos) */
};

typedef struct tokenizer_merge {
    int32_t left, right;         /* the pair; left == -1 marks an empty slot */
    int32_t rank;                /* position in tokenizer.ggml.merges: lower merges first */
    int32_t merged;              /* the id of left's piece followed by right's */
} tokenizer_merge;

typedef struct tokenizer {
    int32_t  n_tokens;
    int      pre;                /* enum tokenizer_pre */
    char     pre_name[32];       /* tokenizer.ggml.pre as written */
    uint8_t *types;              /* [n_tokens] enum tokenizer_token_type */
    char    *pieces;             /* every token's bytes, back to back (each also NUL-terminated) */
    uint64_t *piece_start;       /* [n_tokens + 1]: token i is pieces[piece_start[i] .. piece_start[i+1] - 1) */

    int32_t *vocab_slots;        /* [vocab_mask + 1] open-addressing table: piece bytes -> id, -1 empty */
    uint64_t vocab_mask;
    tokenizer_merge *merge_slots; /* [merge_mask + 1] open-addressing table: (left, right) -> merge */
    uint64_t merge_mask;
    int64_t  n_merges;           /* merges in use (those whose three tokens exist) */
    int32_t  byte_token[256];    /* the single-byte token of each byte value, -1 when missing */

    int32_t *special;            /* [n_special] control and user-defined ids, by first byte then longest */
    int32_t  n_special;
    int32_t  special_first[257]; /* special[special_first[b] .. special_first[b+1]) start with byte b */

    int32_t  bos_id, eos_id;     /* -1 when the metadata names none */
    int32_t  im_end_id;          /* <|im_end|>, the ChatML end of turn; -1 when absent */
    int      add_bos;            /* tokenizer.ggml.add_bos_token (false when absent) */
    char    *default_system;     /* the chat template's default system prompt, or NULL */
} tokenizer;

/* Reads the vocabulary, merges, token types, special ids and chat template
   of a GGUF file. An unsupported tokenizer model or pre-tokenizer, or a
   missing or inconsistent array is an error. */
int  tokenizer_load(tokenizer *t, const gguf_file *file, char *error, size_t error_size);
void tokenizer_free(tokenizer *t);

/* Encodes text[0 .. length) (UTF-8; NUL bytes are text like any other).
   Writes up to `capacity` ids and returns how many the whole text takes,
   which may exceed capacity: then call again with that much room. Returns
   -1 with a message for invalid UTF-8 (naming the byte offset) or when out
   of memory. */
int64_t tokenizer_encode(const tokenizer *t, const char *text, size_t length, int flags,
                         int32_t *ids, int64_t capacity, char *error, size_t error_size);

/* The bytes token `id` stands for (NUL-terminated, but pieces may hold NUL
   bytes: use *length), or NULL when id is out of range. */
const char *tokenizer_piece(const tokenizer *t, int32_t id, size_t *length);

/* Decodes ids[0 .. n) into out (capacity bytes, NUL-terminated when it fits
   with the terminator) and returns the text's length in bytes, which may
   exceed capacity - 1: then call again with more room. -1 for an id out of
   range. */
int64_t tokenizer_decode(const tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t capacity);

/* The id whose piece is exactly `text` (e.g. "<|im_end|>"), or -1. */
int32_t tokenizer_find(const tokenizer *t, const char *text);

/* A one-turn ChatML prompt, ready for the assistant's answer:

       <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n

   system NULL means the model's default (tokenizer.default_system, taken
   from its chat template; SmolLM2: "You are a helpful AI assistant named
   SmolLM, trained by Hugging Face"), and no system turn at all when the
   template has none. Encode the result with TOKENIZER_PARSE_SPECIAL. Writes
   into out like snprintf and returns the prompt's length, or -1 when the
   vocabulary has no <|im_start|> / <|im_end|>. */
int64_t tokenizer_chat_prompt(const tokenizer *t, const char *system, const char *user,
                              char *out, size_t capacity);

#endif
