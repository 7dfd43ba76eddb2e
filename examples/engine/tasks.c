/* tasks.c - see tasks.h and TASKS.md. */
#include "tasks.h"

#include "json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *error, size_t size, const char *message) {
    if (error && size) snprintf(error, size, "%s", message);
    return -1;
}

static int32_t special(const json_value *specials, const char *name) {
    const json_value *v = json_get(specials, name);
    return v && v->type == JSON_NUMBER ? (int32_t)v->number : -1;
}

static int range(const json_value *root, const char *name, int32_t *first, int32_t *count) {
    const json_value *r = json_get(root, name);
    const json_value *f = json_get(r, "first"), *c = json_get(r, "count");
    if (!f || !c || f->type != JSON_NUMBER || c->type != JSON_NUMBER || c->number < 1) return -1;
    *first = (int32_t)f->number;
    *count = (int32_t)c->number;
    return 0;
}

int task_spec_load(task_spec *spec, const char *path, char *error, size_t size) {
    char json_error[128];
    size_t length;
    char *text = json_read_file(path, &length);
    json_value *root;
    const json_value *specials, *bank, *sentence, *token;
    int64_t n_tokens = 0, at = 0;
    double total = 0.0;
    int i, status = -1;
    memset(spec, 0, sizeof *spec);
    if (!text) return fail(error, size, "cannot read tasks.json");
    root = json_parse(text, length, json_error, sizeof json_error);
    free(text);
    if (!root) return fail(error, size, json_error);
    specials = json_get(root, "special");
    bank = json_get(root, "sentence_bank");
    spec->pad = special(specials, "PAD");   spec->bos = special(specials, "BOS");
    spec->eos = special(specials, "EOS");   spec->dot = special(specials, "DOT");
    spec->key = special(specials, "KEY");   spec->query = special(specials, "QRY");
    spec->semi = special(specials, "SEMI"); spec->var = special(specials, "VAR");
    if (spec->bos < 0 || spec->eos < 0 || spec->dot < 0 || spec->key < 0 || spec->query < 0 ||
        spec->semi < 0 || spec->var < 0 ||
        range(root, "keys", &spec->keys_first, &spec->keys_count) ||
        range(root, "values", &spec->values_first, &spec->values_count) ||
        !bank || bank->type != JSON_ARRAY || bank->length == 0) {
        fail(error, size, "tasks.json: missing special tokens, key/value ranges or sentence_bank");
        goto done;
    }
    if (spec->keys_count < 16 || spec->values_count < 3) {
        fail(error, size, "tasks.json: too few keys or values for the tasks");
        goto done;
    }
    for (sentence = bank->child; sentence; sentence = sentence->next) {
        if (sentence->type != JSON_ARRAY || sentence->length == 0) {
            fail(error, size, "tasks.json: a sentence is not a non-empty array");
            goto done;
        }
        n_tokens += (int64_t)sentence->length;
    }
    spec->n_sentences = (int)bank->length;
    spec->sentence_tokens = (int32_t *)malloc((size_t)n_tokens * sizeof(int32_t));
    spec->sentence_start = (int64_t *)malloc((size_t)(spec->n_sentences + 1) * sizeof(int64_t));
    spec->sentence_cdf = (double *)malloc((size_t)spec->n_sentences * sizeof(double));
    if (!spec->sentence_tokens || !spec->sentence_start || !spec->sentence_cdf) {
        fail(error, size, "out of memory");
        goto done;
    }
    for (sentence = bank->child, i = 0; sentence; sentence = sentence->next, i++) {
        spec->sentence_start[i] = at;
        for (token = sentence->child; token; token = token->next) spec->sentence_tokens[at++] = (int32_t)token->number;
        total += 1.0 / pow((double)(i + 1), 0.8);
        spec->sentence_cdf[i] = total;
    }
    spec->sentence_start[i] = at;
    for (i = 0; i < spec->n_sentences; i++) spec->sentence_cdf[i] /= total;
    status = 0;
done:
    json_free(root);
    if (status) task_spec_free(spec);
    return status;
}

void task_spec_free(task_spec *spec) {
    free(spec->sentence_tokens);
    free(spec->sentence_start);
    free(spec->sentence_cdf);
    memset(spec, 0, sizeof *spec);
}

const char *task_name(task_kind kind) {
    switch (kind) {
    case TASK_SINGLE:     return "single";
    case TASK_MULTIKEY:   return "multikey";
    case TASK_MULTIQUERY: return "multiquery";
    case TASK_VARTRACK:   return "vartrack";
    default:              return "?";
    }
}

/* splitmix64: small, fast, and the same on every platform. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform01(uint64_t *state) { return (double)(next_random(state) >> 11) * (1.0 / 9007199254740992.0); }
static int64_t uniform_int(uint64_t *state, int64_t n) { return (int64_t)(uniform01(state) * (double)n); }

/* k distinct integers from [first, first + count), in random order. */
static void distinct(uint64_t *state, int32_t first, int32_t count, int k, int32_t *out) {
    int i, j;
    for (i = 0; i < k; i++) {
        int32_t candidate;
        do {
            candidate = first + (int32_t)uniform_int(state, count);
            for (j = 0; j < i && out[j] != candidate; j++) {}
        } while (j < i);
        out[i] = candidate;
    }
}

static int compare_int64(const void *a, const void *b) {
    const int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* What a task puts in the context and after it, before the filler. */
typedef struct task_parts {
    int32_t records[64][6];
    int     record_length[64], n_records;
    int32_t tail[32];   /* question then answer */
    uint8_t tail_scored[32];
    int     question_length, tail_length;
} task_parts;

static void key_record(task_parts *p, const task_spec *s, int32_t key, const int32_t *value) {
    int32_t *r = p->records[p->n_records];
    r[0] = s->key; r[1] = key; r[2] = value[0]; r[3] = value[1]; r[4] = value[2]; r[5] = s->dot;
    p->record_length[p->n_records++] = 6;
}

static void append_tail(task_parts *p, int32_t token, int scored) {
    p->tail_scored[p->tail_length] = (uint8_t)scored;
    p->tail[p->tail_length++] = token;
}

static void build_parts(const task_spec *s, task_kind kind, uint64_t *rng, task_parts *p) {
    int32_t keys[16], values[16][3];
    int i, k;
    memset(p, 0, sizeof *p);
    if (kind == TASK_VARTRACK) {
        /* Chains: val -> x1 -> x2 -> x3; each chain's records in order,
           chains interleaved at random. */
        const int n_chains = 2 + (int)uniform_int(rng, 2);
        int32_t starts[3], vars[9];
        int next_hop[3] = {0, 0, 0}, order[9], n = 0;
        distinct(rng, s->values_first, s->values_count, n_chains, starts);
        distinct(rng, s->keys_first, s->keys_count, 3 * n_chains, vars);
        for (k = 0; k < n_chains; k++) for (i = 0; i < 3; i++) order[n++] = k;
        for (i = n - 1; i > 0; i--) { /* Fisher-Yates over chain labels */
            const int j = (int)uniform_int(rng, i + 1), t = order[i];
            order[i] = order[j]; order[j] = t;
        }
        for (i = 0; i < n; i++) {
            const int chain = order[i], hop = next_hop[chain]++;
            int32_t *r = p->records[p->n_records];
            r[0] = s->var;
            r[1] = hop == 0 ? starts[chain] : vars[3 * chain + hop - 1];
            r[2] = vars[3 * chain + hop];
            r[3] = s->dot;
            p->record_length[p->n_records++] = 4;
        }
        append_tail(p, s->query, 0);
        append_tail(p, starts[0], 0);
        p->question_length = 2;
        for (i = 0; i < 3; i++) append_tail(p, vars[i], 1);
        append_tail(p, s->eos, 1);
        return;
    }
    {
        const int n_keys = kind == TASK_SINGLE ? 1 : 16;
        const int n_asked = kind == TASK_MULTIQUERY ? 3 : 1;
        int asked[3];
        distinct(rng, s->keys_first, s->keys_count, n_keys, keys);
        for (k = 0; k < n_keys; k++) {
            for (i = 0; i < 3; i++) values[k][i] = s->values_first + (int32_t)uniform_int(rng, s->values_count);
            key_record(p, s, keys[k], values[k]);
        }
        { /* which records are asked: distinct, in random order */
            int32_t picks[3];
            distinct(rng, 0, n_keys, n_asked, picks);
            for (i = 0; i < n_asked; i++) asked[i] = picks[i];
        }
        append_tail(p, s->query, 0);
        for (k = 0; k < n_asked; k++) {
            append_tail(p, keys[asked[k]], 0);
            if (k == 0) p->question_length = 2;
            for (i = 0; i < 3; i++) append_tail(p, values[asked[k]][i], 1);
            append_tail(p, k + 1 < n_asked ? s->semi : s->eos, k + 1 == n_asked);
        }
    }
}

int task_generate(const task_spec *s, task_kind kind, int64_t length, uint64_t seed, task_sample *sample) {
    uint64_t rng = seed * 0x2545F4914F6CDD1Dull + (uint64_t)kind * 0x9E3779B97F4A7C15ull + (uint64_t)length;
    task_parts parts;
    int64_t record_tokens = 0, filler_length, n_filler = 0, n_boundaries = 0, at, f, i;
    int64_t insert_at[64];
    int32_t *filler = NULL;
    int64_t *boundaries = NULL;
    int r;
    memset(sample, 0, sizeof *sample);
    if (kind < 0 || kind >= TASK_COUNT || length < 256) return -1;
    build_parts(s, kind, &rng, &parts);
    for (r = 0; r < parts.n_records; r++) record_tokens += parts.record_length[r];
    filler_length = length - 1 - parts.tail_length - record_tokens;
    /* Filler: whole sentences drawn by weight, cut to length. Boundaries:
       0 and the end of each complete sentence. */
    filler = (int32_t *)malloc((size_t)(filler_length + 64) * sizeof(int32_t));
    boundaries = (int64_t *)malloc((size_t)(filler_length + 2) * sizeof(int64_t));
    sample->tokens = (int32_t *)malloc((size_t)length * sizeof(int32_t));
    sample->scored = (uint8_t *)calloc((size_t)length, 1);
    if (!filler || !boundaries || !sample->tokens || !sample->scored) {
        free(filler); free(boundaries); task_sample_free(sample);
        return -1;
    }
    boundaries[n_boundaries++] = 0;
    while (n_filler < filler_length) {
        const double u = uniform01(&rng);
        int lo = 0, hi = s->n_sentences - 1;
        while (lo < hi) { const int mid = (lo + hi) / 2; if (s->sentence_cdf[mid] > u) hi = mid; else lo = mid + 1; }
        for (i = s->sentence_start[lo]; i < s->sentence_start[lo + 1] && n_filler < filler_length; i++)
            filler[n_filler++] = s->sentence_tokens[i];
        if (i == s->sentence_start[lo + 1]) boundaries[n_boundaries++] = n_filler;
    }
    /* Records at boundaries drawn with replacement, in order. */
    for (r = 0; r < parts.n_records; r++) insert_at[r] = boundaries[uniform_int(&rng, n_boundaries)];
    qsort(insert_at, (size_t)parts.n_records, sizeof insert_at[0], compare_int64);
    at = 0;
    sample->tokens[at++] = s->bos;
    for (f = 0, r = 0; f <= filler_length; f++) {
        while (r < parts.n_records && insert_at[r] == f) {
            sample->record_start[r] = at;
            sample->record_length[r] = parts.record_length[r];
            memcpy(sample->tokens + at, parts.records[r], (size_t)parts.record_length[r] * sizeof(int32_t));
            at += parts.record_length[r];
            r++;
        }
        if (f < filler_length) sample->tokens[at++] = filler[f];
    }
    sample->kind = kind;
    sample->n_records = parts.n_records;
    sample->length = length;
    sample->context_end = at;
    sample->answer_start = at + parts.question_length;
    for (i = 0; i < parts.tail_length; i++) {
        sample->scored[at] = parts.tail_scored[i];
        sample->tokens[at++] = parts.tail[i];
    }
    free(filler);
    free(boundaries);
    return 0;
}

void task_sample_free(task_sample *sample) {
    free(sample->tokens);
    free(sample->scored);
    memset(sample, 0, sizeof *sample);
}
