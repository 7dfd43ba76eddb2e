/* demo.c - a real model reads a document; its KV cache is compressed with
   kvec at several budgets, and it answers questions from each compressed
   cache. What eviction costs, at a glance.

   build/demo [--model FILE.gguf] [--document FILE] [--questions FILE]
              [--policies kvec,kvzip,learned,snapkv,streaming] [--budgets 0.5,0.25,0.1]
              [--aware] [--max-tokens N] [--scorer FILE.kvs]

   The prompt is one ChatML user turn: an instruction, the document, then the
   question. kvzip's rows take their scores from one more pass in which the
   model repeats the document (text_reconstruction_scores); its time is
   printed beside the prefill's. learned's rows take theirs from the
   model's learned scorer (scorers/NAME.kvs, docs/LEARNED.md), run inside
   the prefill; without --policies they are shown when that file exists
   (or --scorer names one). Question-agnostic (the default): the document alone is prefilled
   and compressed, then the question is read from the compressed cache, as
   when one cached document serves many questions. --aware: the question is
   prefilled with the document and compressed with it (SnapKV's setting:
   the question is inside the observation window).

   The questions file has one `question<TAB>answer` per line (# comments); an
   answer is right when the reply contains it, ignoring case. Budgets are
   fractions of the compressed prefix, per KV head (window of 32 included). */
#include "json.h" /* json_read_file */
#include "session.h"

#include <stdlib.h>
#include <string.h>

#define MAX_QUESTIONS 32
#define MAX_RUNS      64
#define ANSWER_BYTES  256

typedef struct question {
    char *text, *answer;
} question;

/* One row of the table: the full cache, or one policy at one budget. */
typedef struct run {
    char        name[40];
    kvec_config config;
    int         sources;              /* TEXT_SCORES_*: where its scores come from */
    double      fraction;             /* 1 = the full cache */
    int         correct;
    double      evict_seconds, answer_seconds, cache_bytes; /* sums over questions */
    int64_t     kept;                 /* rows per KV head after eviction */
    char        replies[MAX_QUESTIONS][ANSWER_BYTES];
} run;

/* Splits the questions file in place into questions[]; returns the count or -1. */
static int parse_questions(char *text, question *questions, int capacity) {
    int n = 0;
    char *line = text, *next, *tab;
    for (; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (line[0] == '#' || line[0] == '\0' || line[0] == '\r') continue;
        if (!(tab = strchr(line, '\t')) || n == capacity) return -1;
        *tab = '\0';
        questions[n].text = line;
        questions[n].answer = tab + 1;
        tab = questions[n].answer + strlen(questions[n].answer);
        while (tab > questions[n].answer && (tab[-1] == '\r' || tab[-1] == ' ')) *--tab = '\0';
        if (!questions[n].answer[0]) return -1;
        n++;
    }
    return n;
}

/* The reply on one line, cut to `width` bytes (never inside a UTF-8 sequence). */
static void print_reply(const char *reply, int width) {
    int i = 0;
    putchar('"');
    for (; reply[i] && i < width; i++) {
        if (i == width - 3 && reply[width]) {
            while (i > 0 && (reply[i] & 0xC0) == 0x80) i--;
            printf("...");
            break;
        }
        putchar(reply[i] == '\n' || reply[i] == '\t' ? ' ' : reply[i]);
    }
    putchar('"');
}

static void usage(void) {
    fprintf(stderr,
            "usage: demo [--model FILE.gguf] [--document FILE] [--questions FILE]\n"
            "            [--policies P,P,..] [--budgets F,F,..] [--aware] [--max-tokens N] [--scorer FILE.kvs]\n"
            "policies: %s\n",
            TEXT_POLICY_NAMES);
}

int main(int argc, char **argv) {
    const char *model_path = NULL, *document_path = "examples/demo/lighthouse.txt";
    const char *questions_path = "examples/demo/questions.tsv", *scorer_path = NULL;
    char policies[256] = "", budgets[256] = "0.5,0.25,0.1";
    char error[512], *document, *questions_text, *name, *cut;
    size_t document_length, questions_length;
    question questions[MAX_QUESTIONS];
    static run runs[MAX_RUNS];
    int n_questions, n_runs = 1, aware = 0, sources = 0, q, r, i, name_width = 12; /* the table's first column */
    int64_t max_tokens = 24;
    text_model m;
    llm_cache base, work;
    float *base_logits, *logits;
    text_scores given; /* kvzip's and expected attention's scores, once per prefix */
    double start, prefill_seconds = 0;

    for (i = 1; i < argc; i++) {
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--aware")) { aware = 1; continue; }
        if (!value) { usage(); return 2; }
        if (!strcmp(argv[i], "--model")) model_path = value;
        else if (!strcmp(argv[i], "--document")) document_path = value;
        else if (!strcmp(argv[i], "--questions")) questions_path = value;
        else if (!strcmp(argv[i], "--policies")) snprintf(policies, sizeof policies, "%s", value);
        else if (!strcmp(argv[i], "--budgets")) snprintf(budgets, sizeof budgets, "%s", value);
        else if (!strcmp(argv[i], "--max-tokens")) max_tokens = atoll(value);
        else if (!strcmp(argv[i], "--scorer")) scorer_path = value;
        else { usage(); return 2; }
        i++;
    }
    if (!model_path) {
        fprintf(stderr, "demo: --model FILE.gguf is required (make demo fetches SmolLM2 and passes it)\n");
        return 2;
    }
    if (max_tokens < 1 || max_tokens > 256) { fprintf(stderr, "demo: --max-tokens must be 1..256\n"); return 2; }
    if (!policies[0]) { /* the default rows: learned ones when this model has a scorer */
        char scorer[600];
        FILE *f;
        llm_scorer_default_path(model_path, scorer, sizeof scorer);
        if ((f = fopen(scorer_path ? scorer_path : scorer, "rb"))) fclose(f);
        snprintf(policies, sizeof policies, "%s", f ? "kvec,kvzip,learned,snapkv,streaming" : "kvec,kvzip,snapkv,streaming");
    }

    memset(&given, 0, sizeof given);
    /* The table's rows: the full cache, then each policy at each budget. */
    memset(&runs[0], 0, sizeof runs[0]);
    snprintf(runs[0].name, sizeof runs[0].name, "full cache");
    runs[0].fraction = 1;
    for (name = strtok(policies, ","); name; name = strtok(NULL, ",")) {
        for (cut = budgets; *cut; ) {
            char *end;
            double f = strtod(cut, &end);
            run *x = &runs[n_runs];
            if (end == cut || f <= 0 || f >= 1 || (*end && *end != ',')) {
                fprintf(stderr, "demo: budgets must be fractions in (0, 1), comma-separated: %s\n", budgets);
                return 2;
            }
            if (n_runs == MAX_RUNS) { fprintf(stderr, "demo: at most %d policy-budget pairs\n", MAX_RUNS - 1); return 2; }
            memset(x, 0, sizeof *x);
            if (text_policy_parse(name, &x->config, error, sizeof error)) {
                fprintf(stderr, "demo: %s\n", error);
                return 2;
            }
            x->sources = text_policy_scores(name);
            sources |= x->sources;
            snprintf(x->name, sizeof x->name, "%s", name);
            x->fraction = f;
            if ((int)strlen(x->name) > name_width) name_width = (int)strlen(x->name);
            n_runs++;
            cut = *end ? end + 1 : end;
        }
    }

    if (!(document = json_read_file(document_path, &document_length))) {
        fprintf(stderr, "demo: cannot read the document %s\n", document_path);
        return 1;
    }
    if (!(questions_text = json_read_file(questions_path, &questions_length)) ||
        (n_questions = parse_questions(questions_text, questions, MAX_QUESTIONS)) < 1) {
        fprintf(stderr, "demo: cannot read questions from %s (one `question<TAB>answer` per line, at most %d)\n",
                questions_path, MAX_QUESTIONS);
        return 1;
    }

    start = text_seconds();
    if (text_model_load(&m, model_path, error, sizeof error)) { fprintf(stderr, "demo: %s\n", error); return 1; }
    if (scorer_path) snprintf(m.scorer_path, sizeof m.scorer_path, "%s", scorer_path);
    printf("%s: %d layers, %d KV heads of %d dims; loaded in %.1f s\n", m.name, m.model.config.n_layers,
           m.model.config.n_kv_heads, m.model.config.head_dim, text_seconds() - start);

    if (!(base_logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float))) ||
        !(logits = (float *)malloc((size_t)m.model.config.vocab_size * sizeof(float)))) {
        fprintf(stderr, "demo: out of memory\n");
        return 1;
    }

    for (q = 0; q < n_questions; q++) {
        text_prompt prompt;
        if (text_question_prompt(&m, TEXT_INSTRUCTION, document, document_length, questions[q].text, aware, 0, &prompt,
                                 error, sizeof error)) {
            fprintf(stderr, "demo: %s\n", error);
            return 1;
        }
        if (q == 0) {
            int64_t capacity = prompt.n_prefix + 512;
            if (text_scores_positions(sources, prompt.n_prefix) > capacity)
                capacity = text_scores_positions(sources, prompt.n_prefix);
            if (llm_cache_init(&base, &m.model, capacity) || llm_cache_init(&work, &m.model, capacity)) {
                fprintf(stderr, "demo: out of memory for a cache of %lld positions\n", (long long)capacity);
                return 1;
            }
            if (text_scores_prepare(&m, &base, sources, error, sizeof error)) {
                fprintf(stderr, "demo: %s\n", error);
                return 1;
            }
            printf("document: %s, %lld tokens in the %s prefix; %d questions; budgets per KV head\n\n",
                   document_path, (long long)prompt.n_prefix, aware ? "question-aware" : "question-agnostic",
                   n_questions);
        }
        /* question-agnostic, every question shares the document's prefix */
        if (q == 0 || aware) {
            llm_cache_reset(&base);
            base.learned_seconds = 0.0;
            start = text_seconds();
            if (text_prefill(&m, &base, prompt.prefix, prompt.n_prefix, base_logits, stderr)) {
                fprintf(stderr, "demo: prefill failed (the prompt is longer than the cache?)\n");
                return 1;
            }
            prefill_seconds = text_seconds() - start;
            if (q == 0) printf("prefill: %lld tokens in %.2f s\n", (long long)prompt.n_prefix, prefill_seconds);
            if (sources) { /* kvzip's reconstruction pass, expected attention: once per prefix */
                given.pass_seconds = given.expected_seconds = given.learned_seconds = 0;
                if (text_scores_compute(&m, &base, prompt.prefix, prompt.n_prefix, sources, &given, error, sizeof error)) {
                    fprintf(stderr, "demo: %s\n", error);
                    return 1;
                }
                if (q == 0 && (sources & TEXT_SCORES_PASS))
                    printf("reconstruction pass (kvzip's scores): %.2f s more, %.2fx the prefill\n", given.pass_seconds,
                           given.pass_seconds / prefill_seconds);
                if (q == 0 && (sources & TEXT_SCORES_EXPECTED))
                    printf("expected attention (query statistics and scores): %.2f s more, %.2fx the prefill\n",
                           given.expected_seconds, given.expected_seconds / prefill_seconds);
                if (q == 0 && (sources & TEXT_SCORES_LEARNED))
                    printf("learned scorer (%s): %.3f s inside the prefill, %.4fx it\n", m.scorer.model_name,
                           given.learned_seconds, given.learned_seconds / prefill_seconds);
            }
        }
        printf("Q%d  %s  (expected: %s)\n", q + 1, questions[q].text, questions[q].answer);
        for (r = 0; r < n_runs; r++) {
            run *x = &runs[r];
            double evict_seconds, t0 = text_seconds();
            int right;
            if (text_answer(&m, &base, base_logits, &work, logits, x->fraction < 1 ? &x->config : NULL,
                            text_scores_of(&given, x->name), x->fraction,
                            prompt.suffix, prompt.n_suffix, max_tokens, x->replies[q], ANSWER_BYTES,
                            &evict_seconds, error, sizeof error)) {
                fprintf(stderr, "demo: %s at %.0f%%: %s\n", x->name, 100 * x->fraction, error);
                return 1;
            }
            x->answer_seconds += text_seconds() - t0 - evict_seconds;
            x->evict_seconds += evict_seconds;
            {   /* the prefix's rows: what the rows read and generated after it added is taken off */
                const double per_row = (double)m.model.config.head_dim * 2 * sizeof(float);
                const double heads = (double)m.model.config.n_layers * m.model.config.n_kv_heads;
                double bytes = (double)text_cache_bytes(&work) -
                               (double)(work.n_positions - base.n_positions) * heads * per_row;
                x->cache_bytes += bytes;
                x->kept = (int64_t)(bytes / (heads * per_row) + 0.5); /* mean over heads */
            }
            right = text_contains(x->replies[q], questions[q].answer);
            x->correct += right;
            printf("    %-*s %4.0f%%  %s  ", name_width, x->name, 100 * x->fraction, right ? "right" : "wrong");
            print_reply(x->replies[q], 60);
            putchar('\n');
            fflush(stdout);
        }
        text_prompt_free(&prompt);
    }

    printf("\n%-*s %6s %12s %10s %10s %12s %8s\n", name_width, "policy", "budget", "kept/head", "cache MB", "evict ms",
           "answer ms", "right");
    for (r = 0; r < n_runs; r++) {
        const run *x = &runs[r];
        printf("%-*s %5.0f%% %12lld %10.1f %10.1f %12.0f %5d/%d\n", name_width, x->name, 100 * x->fraction, (long long)x->kept,
               x->cache_bytes / n_questions / 1e6, x->fraction < 1 ? 1e3 * x->evict_seconds / n_questions : 0.0,
               1e3 * x->answer_seconds / n_questions, x->correct, n_questions);
    }
    printf("\ncache MB: keys and values as this engine keeps them (fp32), all layers; kept/head: rows\n"
           "per KV head (window of 32 included; the mean over heads); evict ms: kvec's scoring,\n"
           "selection and compaction (kvzip: selection and compaction; its pass is timed above);\n"
           "answer ms: reading the question and generating, greedy, at most %lld tokens.\n"
           "Threads: OMP_NUM_THREADS.\n", (long long)max_tokens);

    llm_cache_free(&base);
    llm_cache_free(&work);
    text_model_free(&m);
    free(base_logits);
    free(logits);
    free(document);
    free(questions_text);
    text_scores_free(&given);
    return 0;
}
