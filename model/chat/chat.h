/* chat — a model's chat template, rendered as transformers'
 * tokenizer.apply_chat_template renders it (docs/chat.md).
 *
 * Where the template comes from (transformers' from_pretrained order):
 * DIR/chat_template.jinja (as transformers >= 4.43 saves it) and the named
 * templates of DIR/additional_chat_templates/, else "chat_template" in
 * DIR/tokenizer_config.json: a string, or a list of {"name", "template"}.
 * Of several named templates, "tool_use" is used for a conversation with
 * tools when there is one, "default" otherwise.
 *
 * What the template sees (apply_chat_template → render_jinja_template):
 * messages (each with its null-valued keys dropped, and reasoning under
 * "reasoning_content" and "thinking" whichever of reasoning_content /
 * thinking / reasoning it came as), tools and documents (null when not
 * given), add_generation_prompt, the tokenizer's special tokens
 * (bos_token, eos_token, unk_token, sep_token, pad_token, cls_token,
 * mask_token and any other *_token string of tokenizer_config.json), and
 * any extra variables given.
 *
 * The text is tokenized as apply_chat_template(tokenize=True) does: the
 * whole rendered text at once, without the tokenizer's special tokens (the
 * template writes BOS itself). */
#ifndef FL_MODEL_CHAT_CHAT_H
#define FL_MODEL_CHAT_CHAT_H

#include "model/tokenizer/tokenizer.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_template chat_template;

/* The chat template of the model directory dir. *out is NULL (and 0 is
 * returned) when the model has none; a template that does not compile is an
 * error naming the construct and line. */
int chat_template_find(const char *dir, chat_template **out);
/* A template from a .jinja file, with the special tokens of
 * config_dir/tokenizer_config.json (config_dir may be NULL: none). */
int chat_template_load(const char *jinja_path, const char *config_dir, chat_template **out);
void chat_template_free(chat_template *ct);
/* Where it came from, for messages ("base/tokenizer_config.json"). */
const char *chat_template_origin(const chat_template *ct);
/* 1 when the template (the default one) marks assistant text with
 * {% generation %}. */
int chat_template_has_generation(const chat_template *ct);

/* One conversation to render. messages is a JSON array of objects with a
 * "role"; tools, documents (arrays) and vars (an object of extra template
 * variables, e.g. {"enable_thinking": false}) may be NULL. */
typedef struct {
    json_t *messages, *tools, *documents, *vars;
    int add_generation_prompt;
    /* the last message is left open for the model to continue (an assistant
     * prefill), as apply_chat_template(continue_final_message=True) */
    int continue_final_message;
} chat_request;

/* The rendered text (malloc'd, NUL-terminated). */
int chat_render(const chat_template *ct, const chat_request *rq, char **text, size_t *len);

typedef enum {
    CHAT_LOSS_ASSISTANT, /* the assistant's turns only (docs/chat.md) */
    CHAT_LOSS_ALL        /* every token */
} chat_loss;

/* A conversation for training: the ids of its rendered text (no generation
 * prompt) and a 0/1 flag per id for the tokens that carry loss. With
 * CHAT_LOSS_ASSISTANT these are transformers' assistant_masks: the tokens
 * that overlap the text of a {% generation %} block, or, for a template
 * without one, of an assistant turn found by rendering the conversation's
 * prefixes (docs/chat.md). ids and *mask are replaced; free *mask. */
int chat_encode(const chat_template *ct, tokenizer *tok, const chat_request *rq, chat_loss loss,
                tokenizer_ids *ids, uint8_t **mask);

/* The ids generation stops at: eos_token_id of dir/generation_config.json
 * and of dir/config.json (each an integer or a list of integers; a missing
 * file or key adds none), without repeats. At most cap ids; *n gets the
 * count. */
int chat_eos_ids(const char *dir, int32_t *ids, size_t cap, size_t *n);

#endif
