/* train_corpus.h - what the trainers of learned scorers share
   (bench/train_scorer.c, bench/train_gates.c): the corpus read whole, cut
   into windows the same way, a seeded random stream, and option parsing. */
#ifndef KVEC_BENCH_TRAIN_CORPUS_H
#define KVEC_BENCH_TRAIN_CORPUS_H

#include "../examples/engine/session.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_int(const char *text, int64_t low, int64_t high, int64_t *out) {
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end || v < low || v > high) return -1;
    *out = v;
    return 0;
}

static char *read_file(const char *path, size_t *length) {
    FILE *f = fopen(path, "rb");
    char *text = NULL;
    long size;
    if (!f) return NULL;
    if (!fseek(f, 0, SEEK_END) && (size = ftell(f)) > 0 && !fseek(f, 0, SEEK_SET) &&
        (text = (char *)malloc((size_t)size + 1)) && fread(text, 1, (size_t)size, f) == (size_t)size) {
        text[size] = '\0';
        *length = (size_t)size;
    } else {
        free(text);
        text = NULL;
    }
    fclose(f);
    return text;
}

/* Window w of n_windows cut from the text: about `chars` characters from an
   evenly spaced start, both ends moved forward to the next paragraph break
   (or space) so that no word is cut. *begin, *end: byte offsets. */
static void window_bounds(const char *text, size_t length, int64_t w, int64_t n_windows, int64_t chars,
                          size_t *begin, size_t *end) {
    const size_t span = length > (size_t)chars ? length - (size_t)chars : 0;
    size_t b = (size_t)((double)span * (double)w / (double)(n_windows > 1 ? n_windows - 1 : 1));
    size_t e, limit;
    const char *p;
    limit = b + 400 < length ? b + 400 : length;
    if (b > 0 && (p = strstr(text + b, "\n\n")) && (size_t)(p - text) < limit) b = (size_t)(p - text) + 2;
    else while (b > 0 && b < limit && text[b - 1] != ' ' && text[b - 1] != '\n') b++;
    e = b + (size_t)chars < length ? b + (size_t)chars : length;
    limit = e + 400 < length ? e + 400 : length;
    while (e < limit && text[e] != ' ' && text[e] != '\n') e++;
    *begin = b;
    *end = e;
}

/* The corpus read whole into *text and the model loaded, after checking
   that `windows` windows of `chars` characters need not share text.
   Returns 0, or the exit status (1, 2) after a message naming `program`. */
static int train_open(const char *program, const char *corpus, const char *model, int64_t windows, int64_t chars,
                      char **text, size_t *length, text_model *m) {
    char error[512];
    if (!(*text = read_file(corpus, length))) {
        fprintf(stderr, "%s: cannot read the corpus %s\n", program, corpus);
        return 1;
    }
    if ((double)*length / (double)windows < (double)(chars + 800)) { /* windows may not share text */
        fprintf(stderr, "%s: %lld windows of %lld characters overlap in a corpus of %zu bytes "
                "(fewer --windows or a smaller --chars)\n", program, (long long)windows, (long long)chars, *length);
        free(*text);
        return 2;
    }
    if (text_model_load(m, model, error, sizeof error)) {
        fprintf(stderr, "%s: %s\n", program, error);
        free(*text);
        return 1;
    }
    return 0;
}

static uint64_t next_random(uint64_t *state) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return *state >> 17;
}

#endif
