/* gguf.c - see gguf.h. Parsing first (a bounds-checked cursor over the
   bytes), then lookups, then the conversion of each tensor type to fp32. */
#include "gguf.h"

#include "../../kvec.h" /* kvec_f16_to_f32 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int gguf_error(char *error, size_t size, const char *format, ...) {
    va_list args;
    if (error && size) {
        va_start(args, format);
        vsnprintf(error, size, format, args);
        va_end(args);
    }
    return -1;
}

/* ---------------------------------------------------------------- parsing */

/* Every read goes through the cursor; a read past the end sets `failed` and
   yields zeros, so the parser checks once per record instead of per field. */
typedef struct cursor {
    const unsigned char *bytes;
    uint64_t             size, at;
    int                  failed;
} cursor;

static const unsigned char *take(cursor *c, uint64_t n) {
    const unsigned char *p;
    if (c->failed || n > c->size - c->at) { c->failed = 1; return NULL; }
    p = c->bytes + c->at;
    c->at += n;
    return p;
}

static uint64_t read_u64(cursor *c) {
    const unsigned char *p = take(c, 8);
    uint64_t v = 0;
    int i;
    for (i = 7; p && i >= 0; i--) v = v << 8 | p[i]; /* little-endian on any host */
    return v;
}

static uint32_t read_u32(cursor *c) {
    const unsigned char *p = take(c, 4);
    return p ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24 : 0;
}

static gguf_string read_string(cursor *c) {
    gguf_string s;
    s.length = read_u64(c);
    s.data = (const char *)take(c, s.length);
    if (!s.data) s.length = 0;
    return s;
}

/* Bytes of one scalar of a metadata type; 0 for strings, arrays and
   unknown types. */
static uint64_t scalar_bytes(uint32_t type) {
    switch (type) {
    case GGUF_UINT8: case GGUF_INT8: case GGUF_BOOL: return 1;
    case GGUF_UINT16: case GGUF_INT16: return 2;
    case GGUF_UINT32: case GGUF_INT32: case GGUF_FLOAT32: return 4;
    case GGUF_UINT64: case GGUF_INT64: case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Skips one value of `type` (not an array); 0 on success. */
static int skip_value(cursor *c, uint32_t type) {
    if (type == GGUF_STRING) read_string(c);
    else if (scalar_bytes(type)) take(c, scalar_bytes(type));
    else return -1;
    return c->failed ? -1 : 0;
}

static int parse_metadata(cursor *c, gguf_metadata *m, char *error, size_t size) {
    uint64_t i;
    m->key = read_string(c);
    m->type = m->item_type = read_u32(c);
    m->count = 1;
    if (c->failed) return gguf_error(error, size, "truncated metadata");
    if (m->type == GGUF_ARRAY) {
        m->item_type = read_u32(c);
        m->count = read_u64(c);
        if (c->failed) return gguf_error(error, size, "truncated metadata array %.*s",
                                         (int)m->key.length, m->key.data);
        if (m->item_type == GGUF_ARRAY || (m->item_type != GGUF_STRING && !scalar_bytes(m->item_type)))
            return gguf_error(error, size, "metadata %.*s: unsupported array element type %u",
                              (int)m->key.length, m->key.data, m->item_type);
        m->value = c->bytes + c->at;
        if (m->item_type == GGUF_STRING) {
            /* each string is at least its 8-byte length: bounds the loop */
            if (m->count > (c->size - c->at) / 8)
                return gguf_error(error, size, "metadata %.*s: array longer than the file",
                                  (int)m->key.length, m->key.data);
            for (i = 0; i < m->count; i++) read_string(c);
        } else if (m->count > (c->size - c->at) / scalar_bytes(m->item_type)) {
            c->failed = 1;
        } else {
            take(c, m->count * scalar_bytes(m->item_type));
        }
        if (c->failed) return gguf_error(error, size, "truncated metadata array %.*s",
                                         (int)m->key.length, m->key.data);
        return 0;
    }
    m->value = c->bytes + c->at;
    if (skip_value(c, m->type))
        return gguf_error(error, size, "metadata %.*s: %s", (int)m->key.length, m->key.data,
                          c->failed ? "truncated" : "unknown value type");
    return 0;
}

int gguf_parse(gguf_file *file, const void *bytes, uint64_t size, char *error, size_t error_size) {
    cursor c;
    const unsigned char *magic;
    uint64_t i, data_start, *offsets = NULL;
    int64_t alignment = 32;
    memset(file, 0, sizeof *file);
    memset(&c, 0, sizeof c);
    c.bytes = (const unsigned char *)bytes;
    c.size = size;
    magic = take(&c, 4);
    if (!magic || memcmp(magic, "GGUF", 4))
        return gguf_error(error, error_size, "not a GGUF file (no GGUF magic)");
    file->bytes = c.bytes;
    file->size = size;
    file->version = read_u32(&c);
    file->n_tensors = read_u64(&c);
    file->n_metadata = read_u64(&c);
    if (c.failed) return gguf_error(error, error_size, "truncated GGUF header");
    if (file->version != 2 && file->version != 3)
        return gguf_error(error, error_size, "GGUF version %u (2 and 3 supported)", file->version);
    /* every record takes at least 12 bytes (a string length and a type) */
    if (file->n_metadata > size / 12 || file->n_tensors > size / 12)
        return gguf_error(error, error_size, "GGUF header claims more records than the file holds");

    file->metadata = (gguf_metadata *)calloc(file->n_metadata + 1, sizeof *file->metadata);
    file->tensors = (gguf_tensor *)calloc(file->n_tensors + 1, sizeof *file->tensors);
    offsets = (uint64_t *)calloc(file->n_tensors + 1, sizeof *offsets);
    if (!file->metadata || !file->tensors || !offsets) {
        free(offsets);
        gguf_close(file);
        return gguf_error(error, error_size, "out of memory");
    }
    for (i = 0; i < file->n_metadata; i++)
        if (parse_metadata(&c, &file->metadata[i], error, error_size)) goto fail;
    if (gguf_get_int(file, "general.alignment", &alignment) == 0 &&
        (alignment < 1 || alignment > 65536 || (alignment & (alignment - 1)))) {
        gguf_error(error, error_size, "general.alignment %lld is not a power of two",
                   (long long)alignment);
        goto fail;
    }
    file->alignment = (uint64_t)alignment;
    for (i = 0; i < file->n_tensors; i++) {
        gguf_tensor *t = &file->tensors[i];
        uint32_t d;
        t->name = read_string(&c);
        t->n_dims = read_u32(&c);
        if (c.failed) { gguf_error(error, error_size, "truncated tensor info"); goto fail; }
        if (t->n_dims < 1 || t->n_dims > 4) {
            gguf_error(error, error_size, "tensor %.*s: %u dimensions (1 to 4 allowed)",
                       (int)t->name.length, t->name.data, t->n_dims);
            goto fail;
        }
        t->n_elements = 1;
        for (d = 0; d < 4; d++) {
            t->ne[d] = d < t->n_dims ? read_u64(&c) : 1;
            /* elements bounded by 2^62, so byte sizes cannot wrap */
            if (!c.failed && (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 62) / t->n_elements)) {
                gguf_error(error, error_size, "tensor %.*s: invalid shape",
                           (int)t->name.length, t->name.data);
                goto fail;
            }
            t->n_elements *= t->ne[d];
        }
        t->type = read_u32(&c);
        offsets[i] = read_u64(&c);
        if (c.failed) { gguf_error(error, error_size, "truncated tensor info"); goto fail; }
        t->n_bytes = gguf_type_bytes(t->type, t->n_elements);
    }
    data_start = c.at + (file->alignment - c.at % file->alignment) % file->alignment;
    for (i = 0; i < file->n_tensors; i++) {
        gguf_tensor *t = &file->tensors[i];
        if (offsets[i] % file->alignment) {
            gguf_error(error, error_size, "tensor %.*s: offset not aligned to %llu",
                       (int)t->name.length, t->name.data, (unsigned long long)file->alignment);
            goto fail;
        }
        /* unknown types keep n_bytes 0 and no data: the loader names them */
        if (!t->n_bytes) continue;
        if (data_start > size || offsets[i] > size - data_start ||
            t->n_bytes > size - data_start - offsets[i]) {
            gguf_error(error, error_size, "tensor %.*s lies past the end of the file (truncated?)",
                       (int)t->name.length, t->name.data);
            goto fail;
        }
        t->data = c.bytes + data_start + offsets[i];
    }
    free(offsets);
    return 0;
fail:
    free(offsets);
    gguf_close(file);
    return -1;
}

int gguf_open(gguf_file *file, const char *path, char *error, size_t error_size) {
    FILE *f = fopen(path, "rb");
    long length;
    unsigned char *bytes;
    memset(file, 0, sizeof *file);
    if (!f) return gguf_error(error, error_size, "cannot open %s", path);
    if (fseek(f, 0, SEEK_END) || (length = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fclose(f);
        return gguf_error(error, error_size, "cannot read %s", path);
    }
    bytes = (unsigned char *)malloc(length ? (size_t)length : 1);
    if (!bytes) { fclose(f); return gguf_error(error, error_size, "out of memory reading %s", path); }
    if (fread(bytes, 1, (size_t)length, f) != (size_t)length) {
        fclose(f);
        free(bytes);
        return gguf_error(error, error_size, "cannot read %s", path);
    }
    fclose(f);
    if (gguf_parse(file, bytes, (uint64_t)length, error, error_size)) {
        size_t used = strlen(error);
        if (used + 1 < error_size) snprintf(error + used, error_size - used, " (%s)", path);
        free(bytes);
        return -1;
    }
    file->owned = bytes;
    return 0;
}

void gguf_close(gguf_file *file) {
    free(file->metadata);
    free(file->tensors);
    free(file->owned);
    memset(file, 0, sizeof *file);
}

/* ---------------------------------------------------------------- lookups */

int gguf_string_equals(gguf_string s, const char *text) {
    size_t n = strlen(text);
    return s.length == n && !memcmp(s.data, text, n);
}

const gguf_metadata *gguf_find(const gguf_file *file, const char *key) {
    uint64_t i;
    for (i = 0; i < file->n_metadata; i++)
        if (gguf_string_equals(file->metadata[i].key, key)) return &file->metadata[i];
    return NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *file, const char *name) {
    uint64_t i;
    for (i = 0; i < file->n_tensors; i++)
        if (gguf_string_equals(file->tensors[i].name, name)) return &file->tensors[i];
    return NULL;
}

/* One integer element of `type` at p; 0 when the type is not an integer. */
static int scalar_int(uint32_t type, const unsigned char *p, int64_t *out) {
    cursor c;
    memset(&c, 0, sizeof c);
    c.bytes = p;
    c.size = 8;
    switch (type) {
    case GGUF_UINT8: case GGUF_BOOL: *out = p[0]; return 1;
    case GGUF_INT8: *out = (int8_t)p[0]; return 1;
    case GGUF_UINT16: *out = (uint16_t)(p[0] | p[1] << 8); return 1;
    case GGUF_INT16: *out = (int16_t)(uint16_t)(p[0] | p[1] << 8); return 1;
    case GGUF_UINT32: *out = read_u32(&c); return 1;
    case GGUF_INT32: *out = (int32_t)read_u32(&c); return 1;
    case GGUF_UINT64: case GGUF_INT64: *out = (int64_t)read_u64(&c); return 1;
    default: return 0;
    }
}

int gguf_get_int(const gguf_file *file, const char *key, int64_t *out) {
    const gguf_metadata *m = gguf_find(file, key);
    return m && m->type != GGUF_ARRAY && scalar_int(m->type, m->value, out) ? 0 : -1;
}

int gguf_get_float(const gguf_file *file, const char *key, double *out) {
    const gguf_metadata *m = gguf_find(file, key);
    int64_t i;
    if (!m || m->type == GGUF_ARRAY) return -1;
    if (m->type == GGUF_FLOAT32) {
        uint32_t bits = (uint32_t)m->value[0] | (uint32_t)m->value[1] << 8 |
                        (uint32_t)m->value[2] << 16 | (uint32_t)m->value[3] << 24;
        float f;
        memcpy(&f, &bits, 4);
        *out = f;
        return 0;
    }
    if (m->type == GGUF_FLOAT64) {
        uint64_t bits = 0;
        int b;
        for (b = 7; b >= 0; b--) bits = bits << 8 | m->value[b];
        memcpy(out, &bits, 8);
        return 0;
    }
    if (scalar_int(m->type, m->value, &i)) { *out = (double)i; return 0; }
    return -1;
}

int gguf_get_string(const gguf_file *file, const char *key, gguf_string *out) {
    const gguf_metadata *m = gguf_find(file, key);
    cursor c;
    if (!m || m->type != GGUF_STRING) return -1;
    memset(&c, 0, sizeof c);
    c.bytes = m->value;
    c.size = file->size - (uint64_t)(m->value - file->bytes);
    *out = read_string(&c);
    return 0;
}

int gguf_array_strings(const gguf_metadata *array, gguf_string *out) {
    cursor c;
    uint64_t i;
    if (array->type != GGUF_ARRAY || array->item_type != GGUF_STRING) return -1;
    memset(&c, 0, sizeof c);
    c.bytes = array->value;
    c.size = UINT64_MAX; /* the parser already walked these strings inside the file */
    for (i = 0; i < array->count; i++) out[i] = read_string(&c);
    return 0;
}

int gguf_array_ints(const gguf_metadata *array, int64_t *out) {
    uint64_t i, step = scalar_bytes(array->item_type);
    if (array->type != GGUF_ARRAY || !step) return -1;
    for (i = 0; i < array->count; i++)
        if (!scalar_int(array->item_type, array->value + i * step, &out[i])) return -1;
    return 0;
}

/* -------------------------------------------------------- tensor types */

/* Block layouts (ggml's): weights come in blocks of 32 (or 256 for the K
   types) with fp16 scales; `d` scales, `m` / `dmin` offset. */
typedef struct type_info {
    uint32_t    type;
    const char *name;
    uint64_t    block, block_bytes;
} type_info;

static const type_info TYPES[] = {
    {GGML_F32, "F32", 1, 4},      {GGML_F16, "F16", 1, 2},       {GGML_BF16, "BF16", 1, 2},
    {GGML_Q4_0, "Q4_0", 32, 18},  {GGML_Q4_1, "Q4_1", 32, 20},   {GGML_Q5_0, "Q5_0", 32, 22},
    {GGML_Q8_0, "Q8_0", 32, 34},  {GGML_Q4_K, "Q4_K", 256, 144}, {GGML_Q6_K, "Q6_K", 256, 210},
};

static const type_info *find_type(uint32_t type) {
    size_t i;
    for (i = 0; i < sizeof TYPES / sizeof TYPES[0]; i++)
        if (TYPES[i].type == type) return &TYPES[i];
    return NULL;
}

uint64_t gguf_type_bytes(uint32_t type, uint64_t n) {
    const type_info *t = find_type(type);
    return t && n % t->block == 0 ? n / t->block * t->block_bytes : 0;
}

const char *gguf_type_name(uint32_t type) {
    const type_info *t = find_type(type);
    return t ? t->name : "unsupported";
}

static float half_at(const unsigned char *p) { return kvec_f16_to_f32((uint16_t)(p[0] | p[1] << 8)); }

/* Q4_K packs 8 six-bit (scale, min) pairs into 12 bytes. */
static void q4k_scale_min(int j, const unsigned char *q, int *scale, int *min) {
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4;
        *min = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
    }
}

void gguf_to_f32(uint32_t type, const void *source, float *dst, uint64_t n) {
    const unsigned char *p = (const unsigned char *)source;
    uint64_t i, b;
    int j, l;
    switch (type) {
    case GGML_F32:
        for (i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                            (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24;
            memcpy(&dst[i], &bits, 4);
        }
        break;
    case GGML_F16:
        for (i = 0; i < n; i++) dst[i] = half_at(p + 2 * i);
        break;
    case GGML_BF16:
        for (i = 0; i < n; i++) dst[i] = kvec_bf16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        break;
    case GGML_Q4_0: /* d | 16 bytes: low nibbles are weights 0..15, high 16..31 */
        for (b = 0; b < n / 32; b++, p += 18, dst += 32) {
            float d = half_at(p);
            for (j = 0; j < 16; j++) {
                dst[j] = d * (float)((p[2 + j] & 15) - 8);
                dst[j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        break;
    case GGML_Q4_1: /* d | m | 16 bytes of nibbles */
        for (b = 0; b < n / 32; b++, p += 20, dst += 32) {
            float d = half_at(p), m = half_at(p + 2);
            for (j = 0; j < 16; j++) {
                dst[j] = d * (float)(p[4 + j] & 15) + m;
                dst[j + 16] = d * (float)(p[4 + j] >> 4) + m;
            }
        }
        break;
    case GGML_Q5_0: /* d | 32 fifth bits | 16 bytes of nibbles */
        for (b = 0; b < n / 32; b++, p += 22, dst += 32) {
            float d = half_at(p);
            uint32_t high = (uint32_t)p[2] | (uint32_t)p[3] << 8 | (uint32_t)p[4] << 16 | (uint32_t)p[5] << 24;
            for (j = 0; j < 16; j++) {
                int lo = (p[6 + j] & 15) | (int)((high >> j) & 1) << 4;
                int hi = (p[6 + j] >> 4) | (int)((high >> (j + 16)) & 1) << 4;
                dst[j] = d * (float)(lo - 16);
                dst[j + 16] = d * (float)(hi - 16);
            }
        }
        break;
    case GGML_Q8_0: /* d | 32 int8 */
        for (b = 0; b < n / 32; b++, p += 34, dst += 32) {
            float d = half_at(p);
            for (j = 0; j < 32; j++) dst[j] = d * (float)(int8_t)p[2 + j];
        }
        break;
    case GGML_Q4_K: /* d | dmin | 12 bytes of 6-bit scales and mins | 128 bytes of nibbles */
        for (b = 0; b < n / 256; b++, p += 144) {
            float d = half_at(p), dmin = half_at(p + 2);
            const unsigned char *scales = p + 4, *q = p + 16;
            for (j = 0; j < 8; j += 2, q += 32) { /* 64 weights: 32 low nibbles, 32 high */
                int s0, m0, s1, m1;
                q4k_scale_min(j, scales, &s0, &m0);
                q4k_scale_min(j + 1, scales, &s1, &m1);
                for (l = 0; l < 32; l++) *dst++ = d * (float)s0 * (float)(q[l] & 15) - dmin * (float)m0;
                for (l = 0; l < 32; l++) *dst++ = d * (float)s1 * (float)(q[l] >> 4) - dmin * (float)m1;
            }
        }
        break;
    case GGML_Q6_K: /* 128 bytes low nibbles | 64 bytes 2-bit highs | 16 int8 scales | d */
        for (b = 0; b < n / 256; b++, p += 210) {
            const unsigned char *ql = p, *qh = p + 128;
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = half_at(p + 208);
            for (j = 0; j < 2; j++, ql += 64, qh += 32, sc += 8, dst += 128) {
                for (l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = ((ql[l] & 15) | ((qh[l] >> 0) & 3) << 4) - 32;
                    int q2 = ((ql[l + 32] & 15) | ((qh[l] >> 2) & 3) << 4) - 32;
                    int q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) - 32;
                    int q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) - 32;
                    dst[l] = d * (float)sc[is] * (float)q1;
                    dst[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    dst[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    dst[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            }
        }
        break;
    default:
        break;
    }
}
