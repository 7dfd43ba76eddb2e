/* gguf.h - a reader for GGUF files (the llama.cpp model container), for the
   example engine.

   A GGUF v2/v3 file is:

       "GGUF" | u32 version | u64 n_tensors | u64 n_metadata
       n_metadata x  ( string key | u32 value_type | value )
       n_tensors  x  ( string name | u32 n_dims | u64 ne[n_dims] | u32 ggml_type | u64 offset )
       padding to `general.alignment` (default 32)
       tensor data: each tensor at data_start + offset (offset a multiple of the alignment)

   Strings are u64 length + bytes (no terminator); arrays are u32 element type
   + u64 count + elements. ne[0] is the contiguous axis: a Linear weight of
   Hugging Face shape [out][in] has ne = {in, out}.

   gguf_parse checks every length, count and offset against the bytes it was
   given, so a truncated or hostile file is an error, never a read outside the
   buffer. Views (gguf_string, tensor data) point into the file's bytes. */
#ifndef KVEC_EXAMPLE_GGUF_H
#define KVEC_EXAMPLE_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum gguf_value_type {
    GGUF_UINT8 = 0, GGUF_INT8 = 1, GGUF_UINT16 = 2, GGUF_INT16 = 3, GGUF_UINT32 = 4,
    GGUF_INT32 = 5, GGUF_FLOAT32 = 6, GGUF_BOOL = 7, GGUF_STRING = 8, GGUF_ARRAY = 9,
    GGUF_UINT64 = 10, GGUF_INT64 = 11, GGUF_FLOAT64 = 12
};

/* The ggml tensor types this reader converts to fp32 (ggml's numbering). */
enum gguf_tensor_type {
    GGML_F32 = 0, GGML_F16 = 1, GGML_Q4_0 = 2, GGML_Q4_1 = 3, GGML_Q5_0 = 6, GGML_Q8_0 = 8,
    GGML_Q4_K = 12, GGML_Q6_K = 14, GGML_BF16 = 30
};

typedef struct gguf_string {
    const char *data; /* not NUL-terminated */
    uint64_t    length;
} gguf_string;

typedef struct gguf_metadata {
    gguf_string          key;
    uint32_t             type;       /* gguf_value_type */
    uint32_t             item_type;  /* arrays: the elements' type; else == type */
    uint64_t             count;      /* arrays: elements; else 1 */
    const unsigned char *value;      /* the value's bytes (arrays: the first element) */
} gguf_metadata;

typedef struct gguf_tensor {
    gguf_string          name;
    uint32_t             n_dims;
    uint64_t             ne[4];      /* ne[0] contiguous; unused axes are 1 */
    uint32_t             type;       /* ggml type */
    uint64_t             n_elements;
    uint64_t             n_bytes;    /* 0 when the type is unknown to this reader */
    const unsigned char *data;       /* inside the file's bytes */
} gguf_tensor;

typedef struct gguf_file {
    const unsigned char *bytes;      /* the whole file */
    uint64_t             size;
    uint32_t             version;
    uint64_t             alignment;
    uint64_t             n_metadata, n_tensors;
    gguf_metadata       *metadata;   /* [n_metadata] */
    gguf_tensor         *tensors;    /* [n_tensors] */
    void                *owned;      /* the file's bytes when gguf_open read them */
} gguf_file;

/* Parses `size` bytes (the caller keeps them alive). Returns 0, or -1 with a
   message in error. */
int  gguf_parse(gguf_file *file, const void *bytes, uint64_t size, char *error, size_t error_size);
/* Reads a file into memory and parses it. */
int  gguf_open(gguf_file *file, const char *path, char *error, size_t error_size);
void gguf_close(gguf_file *file);

int  gguf_string_equals(gguf_string s, const char *text);

const gguf_metadata *gguf_find(const gguf_file *file, const char *key);
const gguf_tensor   *gguf_find_tensor(const gguf_file *file, const char *name);

/* Typed lookups: 0 when the key exists with a convertible type, else -1.
   gguf_get_int accepts every integer type and bool; gguf_get_float also
   accepts integers. */
int gguf_get_int(const gguf_file *file, const char *key, int64_t *out);
int gguf_get_float(const gguf_file *file, const char *key, double *out);
int gguf_get_string(const gguf_file *file, const char *key, gguf_string *out);
/* An array's elements: strings into out[count], integers into out[count]. */
int gguf_array_strings(const gguf_metadata *array, gguf_string *out);
int gguf_array_ints(const gguf_metadata *array, int64_t *out);

/* Writes a printf-style message into error (error_size bytes; nothing when
   error is NULL) and returns -1: the error convention of the engine's
   readers (this one, the tokenizer, the model loader). */
int gguf_error(char *error, size_t error_size, const char *format, ...);

/* Bytes of `n` elements of a ggml type (n a multiple of its block), or 0 when
   the type is not one this reader knows or n is not whole blocks. */
uint64_t    gguf_type_bytes(uint32_t type, uint64_t n);
const char *gguf_type_name(uint32_t type);
/* Converts n elements (whole blocks) of `type` at src to fp32. */
void        gguf_to_f32(uint32_t type, const void *src, float *dst, uint64_t n);

#endif
