/* tokcorpus — the pre-tokenized corpus file (`fedlora tokenize` writes it,
 * `fedlora train` reads it). Layout, all integers little-endian
 * (docs/tokenizer.md, "Pre-tokenized corpus format"):
 *
 *   offset  size              field
 *   0       8                 magic "FLTOKENS"
 *   8       4                 version (1)
 *   12      4                 token width in bytes: 2 (vocab_size <= 65536) or 4
 *   16      4                 vocab_size: every token id is < vocab_size
 *   20      4                 flags: bit 0 = special tokens added (BOS/EOS template)
 *   24      8                 n_docs
 *   32      8                 n_tokens
 *   40      24                reserved, zero
 *   64      n_tokens * width  the tokens of all documents, one after the other
 *   ...     (n_docs + 1) * 8  document boundaries: document i is tokens
 *                             [bound[i], bound[i+1]); bound[0] = 0, bound[n_docs] = n_tokens
 *
 * The reader maps the file and validates all of it at open (sizes, bounds,
 * every token < vocab_size): a corrupt or truncated file is an error, never a
 * crash or an out-of-range id for the trainer. */
#ifndef FL_MODEL_TOKCORPUS_H
#define FL_MODEL_TOKCORPUS_H

#include <stddef.h>
#include <stdint.h>

#define TOKCORPUS_MAGIC "FLTOKENS"
#define TOKCORPUS_VERSION 1u
#define TOKCORPUS_HEADER_SIZE 64u
#define TOKCORPUS_FLAG_SPECIAL 1u

/* ---- writing ---- */
typedef struct tokcorpus_writer tokcorpus_writer;

/* Starts path.tmp; nothing appears at path until tokcorpus_writer_finish. */
int tokcorpus_writer_open(const char *path, uint32_t vocab_size, uint32_t flags,
                          tokcorpus_writer **out);
/* Appends one document (n may be 0). Every id must be < vocab_size. */
int tokcorpus_writer_add(tokcorpus_writer *w, const uint32_t *ids, size_t n);
uint64_t tokcorpus_writer_tokens(const tokcorpus_writer *w);
/* Writes the boundaries and the header, fsyncs, renames over path; frees w
 * (also on failure, after removing the temporary file). */
int tokcorpus_writer_finish(tokcorpus_writer *w);
/* Gives up: removes the temporary file and frees w. */
void tokcorpus_writer_abort(tokcorpus_writer *w);

/* ---- reading ---- */
typedef struct tokcorpus tokcorpus;

int tokcorpus_open(const char *path, tokcorpus **out);
void tokcorpus_close(tokcorpus *c);
uint64_t tokcorpus_n_docs(const tokcorpus *c);
uint64_t tokcorpus_n_tokens(const tokcorpus *c);
uint32_t tokcorpus_vocab_size(const tokcorpus *c);
uint32_t tokcorpus_flags(const tokcorpus *c);
/* Document doc covers tokens [*start, *start + *n). */
int tokcorpus_doc(const tokcorpus *c, uint64_t doc, uint64_t *start, uint64_t *n);
/* Copies tokens [start, start + n) into out. */
int tokcorpus_read(const tokcorpus *c, uint64_t start, size_t n, uint32_t *out);

#endif
