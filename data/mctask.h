/* mctask — multiple-choice evaluation tasks: their JSON Lines file and their
 * scoring by log-likelihood, as lm-evaluation-harness scores its
 * `output_type: multiple_choice` tasks (docs/training.md, "Multiple-choice
 * tasks"; docs/formats.md has the file).
 *
 * A task file holds one question per line (blank lines skipped):
 *
 *   {"context": "The capital of France is", "choices": ["Paris", "Rome"], "gold": 0}
 *
 * with an optional "delimiter" (default " ", lm-evaluation-harness's
 * target_delimiter) put between the context and each choice. Other fields are
 * ignored. The file is untrusted: its size, the number of questions, of
 * choices and the length of every string are bounded, and every error names
 * the file, the line and the field.
 *
 * Scoring, for each question and each choice c (lm_eval/api/model.py
 * TemplateLM.loglikelihood and _encode_pair, lm_eval/models/huggingface.py
 * HFLM._loglikelihood_tokens, lm_eval/api/task.py process_results):
 *
 *   continuation = delimiter + c
 *   context "":  ctx = [prefix token], cont = encode(continuation)
 *   otherwise:   the context's trailing whitespace (Python's str.rstrip())
 *                moves to the front of the continuation; then
 *                whole = encode(context + continuation), ctx = encode(context),
 *                cont = whole[len(ctx):]
 *   (encode adds no special tokens; the prefix token is the model's
 *    bos_token_id, or its eos_token_id when it has none)
 *   input        = (ctx + cont)[-(max_length + 1):][:-1]
 *   ll(c)        = Σ log_softmax(logits)[t] over the len(cont) last positions
 *                  of the input, t the continuation's tokens in turn
 *   greedy(c)    = every one of those t is its position's argmax
 *
 * and for the question: pred = argmax_c ll(c), pred_norm = argmax_c ll(c) /
 * len(c), len the choice's length in Unicode code points (Python's len() of
 * the choice without the delimiter), the first index on ties (numpy.argmax);
 * acc and acc_norm are the means of pred == gold and pred_norm == gold.
 *
 * log_softmax and the sums are computed in double from the model's logits. */
#ifndef FL_DATA_MCTASK_H
#define FL_DATA_MCTASK_H

#include "model/model.h"
#include "model/tokenizer/tokenizer.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MCTASK_MAX_BYTES ((size_t)1 << 30) /* a task file */
#define MCTASK_DOCS_MAX 1000000            /* questions in one file */
#define MCTASK_CHOICES_MAX 64              /* choices of one question */
#define MCTASK_TEXT_MAX ((size_t)1 << 20)  /* bytes of a context, choice or delimiter */

typedef struct {
    const char *context; /* UTF-8, NUL-terminated, no NUL inside */
    const char *delimiter;
    const char **choices;
    int n_choices;
    int gold;
    size_t line; /* 1-based line in the file */
} mctask_doc;

typedef struct mctask mctask;

/* Reads and checks a task file (name: the path, for messages). */
int mctask_load(mctask **out, const char *path);
/* The same from bytes in memory; name appears in error messages. */
int mctask_parse(mctask **out, const char *data, size_t len, const char *name);
void mctask_free(mctask *t);
size_t mctask_count(const mctask *t);
const mctask_doc *mctask_get(const mctask *t, size_t i);

/* Length of s without its trailing whitespace, as Python's str.rstrip()
 * sees whitespace (str.isspace: U+0009-000D, U+001C-0020, U+0085, U+00A0,
 * U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000). s is valid
 * UTF-8. */
size_t mctask_rstrip(const char *s, size_t len);
/* Unicode code points in valid UTF-8. */
size_t mctask_codepoints(const char *s, size_t len);

/* One choice's request: the token ids the model reads and the number of
 * continuation tokens scored at its end (lm-evaluation-harness's inp and
 * len(cont)); ids malloc'd. */
typedef struct {
    int32_t *ids;
    int n;
    int cont;
} mctask_request;

/* Builds the request of choice c of doc d (see the top of this file). */
int mctask_request_build(const mctask_doc *d, int c, tokenizer *tok, int prefix_token,
                         int max_length, int vocab_size, mctask_request *r);

typedef struct {
    size_t docs, choices; /* questions and choices scored */
    double acc, acc_norm;
    /* Per choice, in file order (doc by doc, choice by choice): */
    double *ll;     /* log-likelihood of the continuation */
    int *greedy;    /* 1 when it is the greedy continuation */
    int *cont_len;  /* tokens scored */
    size_t *first;  /* per doc: the index of its first choice in the arrays above */
    int *pred;      /* per doc: argmax ll */
    int *pred_norm; /* per doc: argmax ll / length in code points */
} mctask_result;

typedef struct {
    int batch;        /* requests per forward (>= 1) */
    int max_length;   /* tokens the model reads at most (<= its context) */
    int prefix_token; /* the context of an empty context */
    FILE *progress;   /* a line rewritten on a terminal, or NULL */
} mctask_options;

/* Scores every question of t with m as it is (an adapter attached to m
 * applies; dropout off). res is filled (free with mctask_result_free). */
int mctask_score(const mctask *t, const model *m, tokenizer *tok, const mctask_options *o,
                 mctask_result *res);
void mctask_result_free(mctask_result *r);

#endif
