/* fuzz_model_config — config.json from an untrusted model directory
 * (model/config.c): a base model downloaded from a hub is the first file
 * every command reads.
 *
 * Besides "no crash, no leak, no unbounded allocation", it traps when a
 * property fails: a config that model_config_parse accepts passes
 * model_config_check, counts its parameters without overflow, and is written
 * by model_config_save in a form that reads back to the same config, which is
 * saved again byte for byte (what `fedlora init-model` and merge-adapter write must
 * be what they read). */
#include "model/config.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];

/* libFuzzer ends with exit(): leave no scratch behind. */
static void cleanup(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/a.json", dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/b.json", dir);
    unlink(path);
    rmdir(dir);
}

static char *save_text(const model_config *c, const char *name, size_t *len) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (model_config_save(c, path) != 0) return NULL;
    char *text = NULL;
    if (fio_read_all(path, 1u << 20, &text, len) != 0) return NULL;
    return text;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/fuzz_model_config.XXXXXX");
        if (!mkdtemp(dir)) abort();
        atexit(cleanup);
    }
    model_config c;
    if (model_config_parse(&c, (const char *)data, size, "fuzz") != 0) return 0;
    if (model_config_check(&c, "fuzz-check") != 0) __builtin_trap();
    if (model_config_num_params(&c) <= 0) __builtin_trap();
    size_t n1, n2;
    char *t1 = save_text(&c, "a.json", &n1);
    if (!t1) __builtin_trap();
    model_config back;
    if (model_config_parse(&back, t1, n1, "fuzz-rewrite") != 0) __builtin_trap();
    /* Both structs were cleared by the parser, padding included. */
    if (memcmp(&back, &c, sizeof c) != 0) __builtin_trap();
    char *t2 = save_text(&back, "b.json", &n2);
    if (!t2 || n1 != n2 || memcmp(t1, t2, n1) != 0) __builtin_trap();
    free(t1);
    free(t2);
    return 0;
}
