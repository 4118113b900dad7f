/* dataset — training and evaluation rows from a data file (docs/training.md).
 *
 * Accepted files, told apart by their first bytes and name:
 *   - a pre-tokenized corpus (magic "FLTOKENS", model/tokenizer/tokcorpus.h):
 *     its documents as they are, read from the mapping row by row;
 *   - JSON Lines (".jsonl" or ".json"): one record per line, blank lines
 *     skipped, each record one document, of one of three kinds:
 *       {"text": "..."}                                        plain text
 *       {"instruction": "...", "input": "...", "output": "..."} instruction
 *                                                    ("input" may be absent)
 *       {"messages": [{"role": "system"|"user"|"assistant",
 *                      "content": "..."}, ...]}               chat
 *   - any other file is plain text: each non-empty line is one document.
 *
 * Templates (what a document's tokens are; "[t]" marks pieces that carry loss):
 *   text         BOS? text[t] EOS[t]
 *   instruction  BOS? prompt output[t] EOS[t], where prompt is Alpaca's
 *                (stanford_alpaca, PROMPT_DICT), with a newline after
 *                "### Response:" so the response starts on a line of its own:
 *       "Below is an instruction that describes a task, paired with an input
 *        that provides further context. Write a response that appropriately
 *        completes the request.\n\n### Instruction:\n{instruction}\n\n
 *        ### Input:\n{input}\n\n### Response:\n"
 *                (without an input: "Below is an instruction that describes a
 *                task. Write a response that appropriately completes the
 *                request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
 *   chat         with the model's chat template (model/chat/chat.h): the
 *                conversation as transformers' apply_chat_template renders and
 *                tokenizes it, with loss on the assistant's tokens (from the
 *                template's {% generation %} blocks or the prefix rule of
 *                docs/chat.md); no EOS is added (the template ends its turns).
 *                Without one (fedlora's own format): BOS? then per message
 *                "<|role|>\n" content EOS, where content and its EOS carry
 *                loss only for role "assistant".
 *   With loss_all, every token of instruction and chat records carries loss.
 * BOS is whatever the tokenizer's post-processor adds (Llama's <s>), added
 * once per document, to its first piece; pieces are encoded one at a time
 * (the template's boundaries are also token boundaries). EOS is the model's
 * eos_token_id; with none (-1) it is left out. A pre-tokenized document is
 * its tokens followed by EOS, all carrying loss.
 *
 * Packing: the documents of a split, one after the other, form one stream;
 * row r holds stream tokens [r·T, r·T + T] as T inputs and their T
 * next-token targets (consecutive rows share one token, as in llm.c). The
 * last row is padded (inputs EOS or 0, targets ignored); a target whose
 * token carries no loss is MODEL_IGNORE_INDEX; rows left with no target at
 * all are dropped.
 *
 * Held-out split: when eval_fraction > 0 and there are at least 2 documents,
 * round(eval_fraction · documents) of them (at least 1, at most all but 1)
 * are held out for evaluation,
 * chosen by a Fisher–Yates shuffle of the document indices with a
 * SplitMix64 stream seeded from the seed; both splits keep file order.
 *
 * Errors name the file and the line (JSONL) or document. */
#ifndef FL_DATA_DATASET_H
#define FL_DATA_DATASET_H

#include <stddef.h>
#include <stdint.h>

#define DATASET_MAX_BYTES ((size_t)1 << 34) /* a text or JSONL file: 16 GiB at most */

typedef enum { DATASET_TRAIN = 0, DATASET_EVAL = 1 } dataset_split;

typedef struct {
    const char *path;      /* the data file */
    const char *tokenizer; /* tokenizer.json; not read for a pre-tokenized corpus */
    int seq;               /* T: inputs per row */
    int eos_id;            /* the model's eos_token_id, or −1 */
    int vocab_size;        /* the model's V: every id must be below it */
    double eval_fraction;  /* share of documents held out, in [0, 1) */
    uint64_t seed;         /* decides which documents are held out */
    size_t max_bytes;      /* bound on a text or JSONL file (0: DATASET_MAX_BYTES) */
    /* How chat records are rendered: with `chat` when it is given; otherwise by
     * chat_format: DATASET_CHAT_AUTO (0) the model's chat template, found next
     * to the tokenizer (model/chat/chat.h) when the first chat record is read,
     * or fedlora's own format when the model has none; DATASET_CHAT_TEMPLATE
     * the model's template, an error when it has none; DATASET_CHAT_FEDLORA
     * fedlora's own format. */
    const struct chat_template *chat;
    int chat_format;
    int loss_all; /* every token of instruction and chat records carries loss */
} dataset_options;

enum { DATASET_CHAT_AUTO = 0, DATASET_CHAT_TEMPLATE = 1, DATASET_CHAT_FEDLORA = 2 };

typedef struct dataset dataset;

int dataset_open(dataset **out, const dataset_options *o);
void dataset_free(dataset *d);

/* "tokens" (pre-tokenized), "jsonl" or "text". */
const char *dataset_format(const dataset *d);
/* Chat records read (both splits), and the template they were rendered with
 * (NULL: fedlora's own format). */
size_t dataset_num_chats(const dataset *d);
const struct chat_template *dataset_chat_template(const dataset *d);
/* T, the inputs per row. */
int dataset_seq(const dataset *d);
size_t dataset_num_docs(const dataset *d, dataset_split s);
size_t dataset_num_rows(const dataset *d, dataset_split s);
/* Targets that carry loss, over all rows of the split. */
int64_t dataset_num_targets(const dataset *d, dataset_split s);
/* Row i (< dataset_num_rows) of the split: inputs (T) and targets (T). */
int dataset_row(const dataset *d, dataset_split s, size_t i, int32_t *inputs, int32_t *targets);
/* FNV-1a 64 of what the rows are made of (every document's tokens and loss
 * flags, the split, T and EOS): two datasets with the same fingerprint give
 * the same rows. */
uint64_t dataset_fingerprint(const dataset *d);

/* The training order. Epoch e = pos / n visits the n rows once each, in a
 * Fisher–Yates permutation drawn from a SplitMix64 stream (util/rng.h)
 * seeded with rng_next(seed) ^ e; so the row at any position is a function of (seed,
 * pos) alone, and a checkpoint needs to keep only pos. */
typedef struct {
    uint64_t seed;
    size_t n;
    uint64_t epoch; /* the epoch perm holds */
    size_t *perm;   /* (n) */
} dataset_order;

int dataset_order_init(dataset_order *o, size_t n_rows, uint64_t seed);
/* The row at position pos of the order. */
size_t dataset_order_row(dataset_order *o, uint64_t pos);
void dataset_order_free(dataset_order *o);

/* FNV-1a 64 (Fowler, Noll, Vo) of n bytes, continuing from h (start from
 * DATASET_FNV_OFFSET): the fingerprints' hash. */
#define DATASET_FNV_OFFSET 0xcbf29ce484222325ull
uint64_t dataset_fnv1a64(uint64_t h, const void *p, size_t n);

#endif
