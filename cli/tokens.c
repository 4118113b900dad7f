#include "cli/tokens.h"

#include "model/tokenizer/tokenizer.h"
#include "util/err.h"
#include "util/fio.h"
int cli_write_tokenizer(const char *dir, const model_config *cfg) {
    if (cfg->eos_token_id < 256 || cfg->eos_token_id >= cfg->vocab_size)
        return err_set("the byte-level tokenizer needs an end-of-text id in [256, %d), the "
                       "config has %d",
                       cfg->vocab_size, cfg->eos_token_id);
    char path[4096];
    if (fio_join(path, sizeof path, dir, "tokenizer.json") != 0) return -1;
    tokenizer_special_token eot = {"<|endoftext|>", (uint32_t)cfg->eos_token_id};
    return tokenizer_save_bytelevel(path, &eot, 1, NULL);
}
