/* json.c - see json.h. A recursive-descent parser in two passes: the first
   counts nodes and string bytes so that the second can place everything in
   one block, which json_free releases at once. */
#include "json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct parser {
    const char *text;
    size_t      length, at;
    int         depth;
    /* second pass only */
    json_value *nodes;
    char       *strings;
    size_t      n_nodes, n_string_bytes;
    char       *error;
    size_t      error_size;
} parser;

enum { JSON_MAX_DEPTH = 64 };

static int fail(parser *p, const char *what) {
    if (p->error && p->error_size)
        snprintf(p->error, p->error_size, "JSON: %s at byte %zu", what, p->at);
    return -1;
}

static void skip_space(parser *p) {
    while (p->at < p->length && (p->text[p->at] == ' ' || p->text[p->at] == '\n' ||
                                 p->text[p->at] == '\r' || p->text[p->at] == '\t'))
        p->at++;
}

static json_value *new_node(parser *p, json_type type) {
    json_value *v = NULL;
    if (p->nodes) {
        v = &p->nodes[p->n_nodes];
        memset(v, 0, sizeof *v);
        v->type = type;
    }
    p->n_nodes++;
    return v;
}

/* Copies a string literal (p->at on the opening quote); returns its copy in
   the second pass. */
/* Four hex digits at text[at..at+4) into *code; 0, or -1 when not hex. */
static int hex4(const parser *p, size_t at, unsigned long *code) {
    size_t i;
    *code = 0;
    if (at + 4 > p->length) return -1;
    for (i = at; i < at + 4; i++) {
        char c = p->text[i];
        int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (digit < 0) return -1;
        *code = *code << 4 | (unsigned long)digit;
    }
    return 0;
}

/* Writes code point `code` as UTF-8 into out (when not NULL); returns its bytes. */
static size_t utf8_encode(unsigned long code, char *out) {
    unsigned char b[4];
    size_t n, i;
    if (code < 0x80) { b[0] = (unsigned char)code; n = 1; }
    else if (code < 0x800) { b[0] = (unsigned char)(0xC0 | code >> 6); b[1] = (unsigned char)(0x80 | (code & 63)); n = 2; }
    else if (code < 0x10000) {
        b[0] = (unsigned char)(0xE0 | code >> 12); b[1] = (unsigned char)(0x80 | (code >> 6 & 63));
        b[2] = (unsigned char)(0x80 | (code & 63)); n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | code >> 18); b[1] = (unsigned char)(0x80 | (code >> 12 & 63));
        b[2] = (unsigned char)(0x80 | (code >> 6 & 63)); b[3] = (unsigned char)(0x80 | (code & 63)); n = 4;
    }
    for (i = 0; out && i < n; i++) out[i] = (char)b[i];
    return n;
}

static int parse_string(parser *p, const char **out, size_t *out_length) {
    size_t n = 0;
    p->at++; /* opening quote */
    char *copy = p->strings ? p->strings + p->n_string_bytes : NULL;
    while (p->at < p->length && p->text[p->at] != '"') {
        char c = p->text[p->at];
        if ((unsigned char)c < 0x20) return fail(p, "control character in string");
        if (c == '\\') {
            if (++p->at >= p->length) break;
            c = p->text[p->at];
            if (c == 'u') { /* \uXXXX (a surrogate pair: two of them) as UTF-8 */
                unsigned long code;
                size_t bytes;
                if (hex4(p, p->at + 1, &code)) return fail(p, "bad \\u escape");
                p->at += 5;
                if (code >= 0xD800 && code <= 0xDBFF && p->at + 1 < p->length && p->text[p->at] == '\\' &&
                    p->text[p->at + 1] == 'u') {
                    unsigned long low;
                    if (hex4(p, p->at + 2, &low)) return fail(p, "bad \\u escape");
                    if (low >= 0xDC00 && low <= 0xDFFF) {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        p->at += 6;
                    }
                }
                if (code >= 0xD800 && code <= 0xDFFF) code = 0xFFFD; /* a lone surrogate */
                bytes = utf8_encode(code, copy ? copy + n : NULL);
                n += bytes;
                continue;
            }
            c = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c == 'b' ? '\b' : c == 'f' ? '\f' : c;
        }
        if (copy) copy[n] = c;
        n++;
        p->at++;
    }
    if (p->at >= p->length) return fail(p, "unterminated string");
    p->at++; /* closing quote */
    if (copy) copy[n] = '\0';
    p->n_string_bytes += n + 1;
    if (out) *out = copy;
    if (out_length) *out_length = n;
    return 0;
}

static int parse_value(parser *p, json_value **out);

static int parse_container(parser *p, json_value *v, char close) {
    json_value **link = v ? &v->child : NULL;
    int is_object = close == '}';
    p->at++; /* opening bracket */
    if (++p->depth > JSON_MAX_DEPTH) return fail(p, "nesting too deep");
    skip_space(p);
    if (p->at < p->length && p->text[p->at] == close) { p->at++; p->depth--; return 0; }
    for (;;) {
        const char *key = NULL;
        json_value *element = NULL;
        skip_space(p);
        if (is_object) {
            if (p->at >= p->length || p->text[p->at] != '"') return fail(p, "expected a member name");
            if (parse_string(p, &key, NULL)) return -1;
            skip_space(p);
            if (p->at >= p->length || p->text[p->at] != ':') return fail(p, "expected ':'");
            p->at++;
        }
        if (parse_value(p, &element)) return -1;
        if (v) {
            element->key = key;
            *link = element;
            link = &element->next;
            v->length++;
        }
        skip_space(p);
        if (p->at < p->length && p->text[p->at] == ',') { p->at++; continue; }
        if (p->at < p->length && p->text[p->at] == close) { p->at++; p->depth--; return 0; }
        return fail(p, is_object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int parse_value(parser *p, json_value **out) {
    json_value *v = NULL;
    char c;
    skip_space(p);
    if (p->at >= p->length) return fail(p, "unexpected end of input");
    c = p->text[p->at];
    if (c == '{' || c == '[') {
        v = new_node(p, c == '{' ? JSON_OBJECT : JSON_ARRAY);
        if (parse_container(p, v, c == '{' ? '}' : ']')) return -1;
    } else if (c == '"') {
        const char *s = NULL;
        size_t n = 0;
        v = new_node(p, JSON_STRING);
        if (parse_string(p, &s, &n)) return -1;
        if (v) { v->string = s; v->length = n; }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        char buffer[64], *end;
        size_t n = 0;
        while (p->at + n < p->length && n < sizeof buffer - 1 &&
               strchr("+-0123456789.eE", p->text[p->at + n]))
            n++;
        memcpy(buffer, p->text + p->at, n);
        buffer[n] = '\0';
        v = new_node(p, JSON_NUMBER);
        if (v) v->number = strtod(buffer, &end); else strtod(buffer, &end);
        if (end != buffer + n || n == 0) return fail(p, "malformed number");
        p->at += n;
    } else if (p->length - p->at >= 4 && !memcmp(p->text + p->at, "true", 4)) {
        v = new_node(p, JSON_TRUE); p->at += 4;
    } else if (p->length - p->at >= 5 && !memcmp(p->text + p->at, "false", 5)) {
        v = new_node(p, JSON_FALSE); p->at += 5;
    } else if (p->length - p->at >= 4 && !memcmp(p->text + p->at, "null", 4)) {
        v = new_node(p, JSON_NULL); p->at += 4;
    } else {
        return fail(p, "unexpected character");
    }
    *out = v;
    return 0;
}

json_value *json_parse(const char *text, size_t length, char *error, size_t error_size) {
    parser p;
    json_value *root = NULL;
    void *block;
    memset(&p, 0, sizeof p);
    p.text = text; p.length = length; p.error = error; p.error_size = error_size;
    if (error && error_size) error[0] = '\0';
    /* Pass 1: validate and count. */
    if (parse_value(&p, &root)) return NULL;
    skip_space(&p);
    if (p.at != p.length) { fail(&p, "trailing characters"); return NULL; }
    /* Pass 2: fill one block of nodes followed by the strings. */
    block = malloc(p.n_nodes * sizeof(json_value) + p.n_string_bytes + 1);
    if (!block) { fail(&p, "out of memory"); return NULL; }
    {
        size_t n_nodes = p.n_nodes;
        memset(&p, 0, sizeof p);
        p.text = text; p.length = length;
        p.nodes = (json_value *)block;
        p.strings = (char *)block + n_nodes * sizeof(json_value);
        if (parse_value(&p, &root)) { free(block); return NULL; } /* cannot happen */
    }
    return root; /* == block */
}

void json_free(json_value *root) { free(root); }

const json_value *json_get(const json_value *object, const char *key) {
    const json_value *v;
    if (!object || object->type != JSON_OBJECT) return NULL;
    for (v = object->child; v; v = v->next)
        if (v->key && !strcmp(v->key, key)) return v;
    return NULL;
}

const json_value *json_at(const json_value *array, size_t index) {
    const json_value *v;
    if (!array || array->type != JSON_ARRAY) return NULL;
    for (v = array->child; v && index; v = v->next) index--;
    return v;
}

void json_lines_init(json_lines *lines, const char *text, size_t length) {
    lines->text = text;
    lines->length = length;
    lines->at = 0;
    lines->line = 0;
}

int json_lines_next(json_lines *lines, json_value **value, char *error, size_t error_size) {
    while (lines->at < lines->length) {
        const char *start = lines->text + lines->at;
        size_t end = lines->at, width, blank = 0;
        while (end < lines->length && lines->text[end] != '\n') end++;
        width = end - lines->at;
        lines->at = end + 1;
        lines->line++;
        *value = json_parse(start, width, error, error_size);
        if (*value) return 1;
        while (blank < width && (start[blank] == ' ' || start[blank] == '\t' || start[blank] == '\r')) blank++;
        if (blank < width) return -1; /* not a blank line: the parse error stands */
    }
    *value = NULL;
    return 0;
}

char *json_read_file(const char *path, size_t *length) {
    FILE *f = fopen(path, "rb");
    char *data = NULL;
    long size;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        data = (char *)malloc((size_t)size + 1);
        if (data && fread(data, 1, (size_t)size, f) != (size_t)size) { free(data); data = NULL; }
        if (data) { data[size] = '\0'; if (length) *length = (size_t)size; }
    }
    fclose(f);
    return data;
}
