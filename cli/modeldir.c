/* modeldir — companion files of a Hugging Face model directory. */
#include "cli/modeldir.h"

#include "util/err.h"
#include "util/fio.h"

#include <stdlib.h>

#define COPY_MAX ((size_t)1 << 30) /* a tokenizer file copied along: 1 GiB at most */

/* Files of a Hugging Face directory that belong with the weights. */
static const char *const companions[] = {"tokenizer.json",
                                         "tokenizer_config.json",
                                         "special_tokens_map.json",
                                         "tokenizer.model",
                                         "vocab.json",
                                         "merges.txt",
                                         "added_tokens.json",
                                         "generation_config.json",
                                         "chat_template.jinja"};

int modeldir_copy_companions(const char *from, const char *to) {
    for (size_t i = 0; i < sizeof companions / sizeof companions[0]; i++) {
        char src[4096], dst[4096], *buf;
        size_t len;
        if (fio_join(src, sizeof src, from, companions[i]) != 0 ||
            fio_join(dst, sizeof dst, to, companions[i]) != 0)
            return -1;
        if (!fio_exists(src)) continue;
        if (fio_read_all(src, COPY_MAX, &buf, &len) != 0)
            return err_context("copying %s to %s", src, to);
        int rc = fio_write_atomic(dst, buf, len, 0644);
        free(buf);
        if (rc != 0) return err_context("copying %s to %s", src, to);
    }
    return 0;
}
