/* modeldir — what the commands that write a Hugging Face model directory
 * share besides the weights (model/checkpoint.h writes those). */
#ifndef FL_CLI_MODELDIR_H
#define FL_CLI_MODELDIR_H

/* Copies the base directory's tokenizer and generation files (tokenizer.json,
 * tokenizer_config.json, special_tokens_map.json, tokenizer.model,
 * vocab.json, merges.txt, added_tokens.json, generation_config.json,
 * chat_template.jinja; each
 * only if present, 1 GiB at most) from `from` into `to`, atomically each, so
 * the written directory loads as a complete model. */
int modeldir_copy_companions(const char *from, const char *to);

#endif
