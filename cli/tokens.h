/* tokens — the byte-level tokenizer that `fedlora init-model` writes next to
 * a fresh model. (Data files become token rows in data/dataset.h.) */
#ifndef FL_CLI_TOKENS_H
#define FL_CLI_TOKENS_H

#include "model/config.h"

/* The byte-level tokenizer.json of a fresh model: bytes are ids 0..255 and
 * "<|endoftext|>" is cfg->eos_token_id (which must be >= 256). */
int cli_write_tokenizer(const char *dir, const model_config *cfg);

#endif
