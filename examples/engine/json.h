/* json.h - a small JSON reader for the example engine and the benchmarks.

   Parses a whole document into a tree of json_value nodes held in one
   allocation (free it with json_free). Enough for Hugging Face config.json,
   safetensors headers, tasks.json and the test vectors; not a general
   library: numbers are doubles; strings are decoded to UTF-8 (every escape,
   \uXXXX and surrogate pairs included) and NUL-terminated, their length in
   `length` (a \u0000 inside shows as length > strlen). */
#ifndef KVEC_EXAMPLE_JSON_H
#define KVEC_EXAMPLE_JSON_H

#include <stddef.h>

typedef enum json_type {
    JSON_NULL, JSON_FALSE, JSON_TRUE, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT
} json_type;

typedef struct json_value json_value;
struct json_value {
    json_type   type;
    double      number;   /* JSON_NUMBER */
    const char *string;   /* JSON_STRING: decoded, NUL-terminated copy */
    const char *key;      /* member name when inside an object, else NULL */
    json_value *child;    /* first element or member (arrays, objects) */
    json_value *next;     /* next sibling */
    size_t      length;   /* number of elements or members; a string's bytes */
};

/* Parses text[0..length). On failure returns NULL and writes a message with
   the byte offset into error (error_size bytes). */
json_value *json_parse(const char *text, size_t length, char *error, size_t error_size);
void        json_free(json_value *root);

/* Member of an object by name, element of an array by index; NULL if absent
   or if value is not an object/array. */
const json_value *json_get(const json_value *object, const char *key);
const json_value *json_at(const json_value *array, size_t index);

/* A JSON-lines text (one value per line; blank lines are skipped), read a
   line at a time:

       json_lines lines;
       json_lines_init(&lines, text, length);
       while ((got = json_lines_next(&lines, &value, error, sizeof error)) > 0) {
           ... use value (lines.line is its line number) ...; json_free(value);
       }

   json_lines_next returns 1 with the next line's value, 0 at the end, or -1
   with the line's parse error in error. */
typedef struct json_lines {
    const char *text;
    size_t      length, at;  /* the text, and where the next line starts */
    long long   line;        /* number of the line read last, from 1 */
} json_lines;

void json_lines_init(json_lines *lines, const char *text, size_t length);
int  json_lines_next(json_lines *lines, json_value **value, char *error, size_t error_size);

/* Reads whole files; the caller frees the returned buffer. NULL on failure. */
char *json_read_file(const char *path, size_t *length);

#endif
