/* quality_text.h - what the two real-model modes of build/quality share:
   --tasks (quality_tasks.c, accuracy on question files) and --kl
   (quality_kl.c, next-token divergence on held text). */
#ifndef KVEC_BENCH_QUALITY_TEXT_H
#define KVEC_BENCH_QUALITY_TEXT_H

#include "../examples/engine/session.h"

#include <stdio.h>

enum { TEXT_MAX_RUNS = 64, TEXT_MAX_SETTINGS = 3 };

/* One row of a table: a policy at one budget, or the full cache. */
typedef struct text_run {
    char        policy[96];  /* name, with K-VEC options (text_policy_parse) */
    kvec_config config;
    int         full;                         /* the uncompressed cache */
    int         sources;                      /* TEXT_SCORES_*: scores from the pass or expected attention */
    double      fraction;                     /* budget: rows kept per KV head / prefix */
    int         correct[TEXT_MAX_SETTINGS];   /* --tasks: correct samples by setting */
} text_run;

/* The rows for a comma-separated policy list (`all`: full and every policy
   of TEXT_POLICY_NAMES) at each budget of a comma-separated list of
   fractions in (0, 1); `full` gets one row at 1.0. Returns the count, or -1
   after printing what is wrong. */
int text_parse_runs(const char *policies, const char *budgets, text_run *runs, int max_runs);

/* Writes text as a JSON string (quotes, backslashes, control characters
   escaped). */
void text_write_json_string(FILE *f, const char *text);

int quality_task_file(int argc, char **argv); /* quality_tasks.c: --tasks */
int quality_kl_file(int argc, char **argv);   /* quality_kl.c: --kl */

#endif
