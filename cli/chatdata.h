/* chatdata — the chat options that train, eval and generate share: which
 * chat template renders chat records and prompts (docs/chat.md), which of
 * their tokens carry loss, and where generation stops. */
#ifndef FL_CLI_CHATDATA_H
#define FL_CLI_CHATDATA_H

#include "data/dataset.h"
#include "model/chat/chat.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *format;   /* --chat-format template|fedlora (NULL: template if the model has one) */
    const char *tpl_path; /* --chat-template FILE: a .jinja to use instead of the model's */
    const char *loss_on;  /* --loss-on assistant|all (NULL: assistant) */
} chatdata_opts;

/* Sets dopt's chat_format, loss_all and, for --chat-template, chat (with
 * the special tokens of the tokenizer's tokenizer_config.json: the
 * directory of dopt->tokenizer, else model_dir). The dataset finds the
 * model's own template itself, when it meets a chat record. *ct gets the
 * template to free after the dataset (NULL: none). */
int chatdata_setup(const chatdata_opts *o, const char *model_dir, dataset_options *dopt,
                   chat_template **ct);
/* One line on stdout saying how the chat records were rendered, when there
 * were any. */
void chatdata_report(const chatdata_opts *o, const dataset *d);

/* The prompt of fedlora generate --chat: the conversation of messages_file
 * (a JSON array of messages, or {"messages": [...], "tools": [...]}), or
 * else prompt as one user message, rendered with the model's template (or
 * tpl_path) with the generation prompt; a conversation that ends with an
 * assistant message is continued instead (a prefill). text is malloc'd. */
int chatdata_prompt(const char *tpl_path, const char *tok_dir, const char *prompt,
                    const char *messages_file, char **text, size_t *len);

/* The ids generation stops at: generation_config.json's and config.json's
 * eos_token_id (an integer or a list) in model_dir, and config_eos (-1:
 * none). */
int chatdata_stop_ids(const char *model_dir, int config_eos, int32_t *ids, size_t cap, size_t *n);

#endif
