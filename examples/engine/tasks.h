/* tasks.h - the synthetic long-context retrieval tasks of the bundled models
   (bench/models/ref-4l/TASKS.md), generated from a model directory's
   tasks.json (vocabulary layout and filler sentence bank), so the same code
   serves any model trained on that format.

   A sample is exactly `length` tokens:

       BOS | context (filler sentences, records inserted at sentence
       boundaries) | question | answer

   tokens [0, context_end) are BOS and the context, [context_end,
   answer_start) the question, [answer_start, length) the answer. scored[t]
   marks the answer tokens that decide correctness (multiquery gives the
   second and third keys and the separators; those are not scored). */
#ifndef KVEC_EXAMPLE_TASKS_H
#define KVEC_EXAMPLE_TASKS_H

#include <stddef.h>
#include <stdint.h>

typedef enum task_kind {
    TASK_SINGLE,     /* one key record, asked                      */
    TASK_MULTIKEY,   /* 16 key records, one asked                  */
    TASK_MULTIQUERY, /* 16 key records, three asked in turn        */
    TASK_VARTRACK,   /* 2-3 chains of 3 variable hops, first asked */
    TASK_COUNT
} task_kind;

typedef struct task_spec {
    int32_t pad, bos, eos, dot, key, query, semi, var;   /* special tokens */
    int32_t keys_first, keys_count, values_first, values_count;
    int     n_sentences;
    int32_t *sentence_tokens;   /* all sentences, concatenated */
    int64_t *sentence_start;    /* [n_sentences + 1] offsets into sentence_tokens */
    double  *sentence_cdf;      /* [n_sentences] cumulative weights 1/(i+1)^0.8, last = 1 */
} task_spec;

typedef struct task_sample {
    task_kind kind;
    int64_t   length, context_end, answer_start;
    int32_t  *tokens;   /* [length] */
    uint8_t  *scored;   /* [length] 1 = an answer token that is checked */
    int       n_records;
    int64_t   record_start[64], record_length[64]; /* where the records are */
} task_sample;

/* Reads tasks.json. Returns 0, or -1 with a message. */
int  task_spec_load(task_spec *spec, const char *path, char *error, size_t error_size);
void task_spec_free(task_spec *spec);

const char *task_name(task_kind kind);

/* Generates one sample of `length` tokens from `seed` (deterministic).
   Returns 0, or -1 when length is too short for the task (< 256) or memory
   runs out. Free with task_sample_free. */
int  task_generate(const task_spec *spec, task_kind kind, int64_t length, uint64_t seed,
                   task_sample *sample);
void task_sample_free(task_sample *sample);

#endif
