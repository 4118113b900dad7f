/* modeldir — what a Hugging Face model directory holds besides config.json
 * and the weights (model/checkpoint.h writes those): the tokenizer files, the
 * chat templates and generation_config.json, which every directory fedlora
 * writes for people to load (merge-adapter, merge, the aggregator's
 * published versions, export) carries along from its base. */
#ifndef FL_MODEL_MODELDIR_H
#define FL_MODEL_MODELDIR_H

#include "model/config.h"

/* Bytes of one companion file copied along (1 GiB: tokenizer files are a
 * few MB, the largest vocabularies tens of MB). */
#define MODELDIR_FILE_MAX ((uint64_t)1 << 30)
/* Files of additional_chat_templates/ copied along. */
#define MODELDIR_TEMPLATES_MAX 256

/* The file names (NULL-terminated): tokenizer.json, tokenizer_config.json,
 * special_tokens_map.json, tokenizer.model, vocab.json, merges.txt,
 * added_tokens.json, generation_config.json, chat_template.jinja and
 * chat_template.json (transformers' file names: the templates as
 * transformers 4.43+ and processors before it save them). */
extern const char *const modeldir_companions[];
/* The folder of a tokenizer's named extra templates (transformers 4.54+):
 * additional_chat_templates/<name>.jinja. */
#define MODELDIR_TEMPLATE_DIR "additional_chat_templates"

/* Copies every companion file `from` has (and additional_chat_templates/
 * *.jinja) into `to`, each streamed, atomically and durably (fio_copy):
 * regular files only, a symbolic link is refused, each at most
 * MODELDIR_FILE_MAX bytes, at most MODELDIR_TEMPLATES_MAX named templates.
 * A file `from` does not have is skipped, so `to` loads as `from` does. */
int modeldir_copy_companions(const char *from, const char *to);

/* Writes dir/generation_config.json from the model's config when dir has
 * none, as transformers' GenerationConfig.from_model_config writes it
 * ({"_from_model_config": true, "bos_token_id": …, "eos_token_id": …},
 * the ids the config has), so every directory carries one. */
int modeldir_ensure_generation_config(const model_config *cfg, const char *dir);

#endif
