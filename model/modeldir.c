/* modeldir — companion files of a Hugging Face model directory (modeldir.h). */
#include "model/modeldir.h"

#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const modeldir_companions[] = {"tokenizer.json",
                                           "tokenizer_config.json",
                                           "special_tokens_map.json",
                                           "tokenizer.model",
                                           "vocab.json",
                                           "merges.txt",
                                           "added_tokens.json",
                                           "generation_config.json",
                                           "chat_template.jinja",
                                           "chat_template.json",
                                           NULL};

/* A name transformers would save as a named template: <name>.jinja, no
 * path, no hidden file. */
static int template_name_ok(const char *name) {
    size_t n = strlen(name);
    return n > 6 && n < 256 && name[0] != '.' && !strchr(name, '/') &&
           strcmp(name + n - 6, ".jinja") == 0;
}

static int copy_templates(const char *from, const char *to) {
    char src_dir[4096], dst_dir[4096], src[4096], dst[4096];
    if (fio_join(src_dir, sizeof src_dir, from, MODELDIR_TEMPLATE_DIR) != 0 ||
        fio_join(dst_dir, sizeof dst_dir, to, MODELDIR_TEMPLATE_DIR) != 0)
        return -1;
    DIR *d = opendir(src_dir);
    if (!d) return errno == ENOENT ? 0 : err_errno("cannot list %s", src_dir);
    int rc = 0, n = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d)) != NULL;) {
        if (!template_name_ok(e->d_name)) continue;
        if (++n > MODELDIR_TEMPLATES_MAX) {
            rc = err_set("%s holds more than %d templates", src_dir, MODELDIR_TEMPLATES_MAX);
        } else if (fio_mkdirs(dst_dir, 0755) != 0 ||
                   fio_join(src, sizeof src, src_dir, e->d_name) != 0 ||
                   fio_join(dst, sizeof dst, dst_dir, e->d_name) != 0 ||
                   fio_copy(src, dst, MODELDIR_FILE_MAX, 0644) != 0) {
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}

int modeldir_copy_companions(const char *from, const char *to) {
    for (int i = 0; modeldir_companions[i]; i++) {
        char src[4096], dst[4096];
        if (fio_join(src, sizeof src, from, modeldir_companions[i]) != 0 ||
            fio_join(dst, sizeof dst, to, modeldir_companions[i]) != 0)
            return -1;
        if (!fio_exists(src)) continue;
        if (fio_copy(src, dst, MODELDIR_FILE_MAX, 0644) != 0)
            return err_context("copying %s to %s", src, to);
    }
    if (copy_templates(from, to) != 0) return err_context("copying the chat templates of %s", from);
    return 0;
}

int modeldir_ensure_generation_config(const model_config *cfg, const char *dir) {
    char path[4096], text[256];
    if (fio_join(path, sizeof path, dir, "generation_config.json") != 0) return -1;
    if (fio_exists(path)) return 0;
    /* As transformers writes it: json.dumps(indent=2, sort_keys=True) and a
     * newline; the ids the config has. */
    int n = snprintf(text, sizeof text, "{\n  \"_from_model_config\": true");
    if (cfg->bos_token_id >= 0)
        n += snprintf(text + n, sizeof text - (size_t)n, ",\n  \"bos_token_id\": %d",
                      cfg->bos_token_id);
    if (cfg->eos_token_id >= 0)
        n += snprintf(text + n, sizeof text - (size_t)n, ",\n  \"eos_token_id\": %d",
                      cfg->eos_token_id);
    n += snprintf(text + n, sizeof text - (size_t)n, "\n}\n");
    return fio_write_atomic(path, text, (size_t)n, 0644);
}
