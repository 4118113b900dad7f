/* fuzz_mctask — multiple-choice task files from untrusted bytes
 * (data/mctask.c): parsing must succeed or fail with a message, never
 * crash, leak or hang. A file that parses must hold what the rules promise
 * (2 to 64 non-empty choices, gold among them, strings without NUL), and
 * every choice's request, built with the byte-level tokenizer for a model
 * that reads 16 tokens, must fit those 16 tokens and score at least one
 * continuation token (or fail with a message). */
#include "data/mctask.h"
#include "model/tokenizer/tokenizer.h"
#include "util/fio.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static tokenizer *tok;

static void setup(void) {
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "/tmp/fuzz_mctask_%d", (int)getpid());
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    if (fio_mkdirs(dir, 0700) != 0 || tokenizer_save_bytelevel(path, &eot, 1, NULL) != 0 ||
        tokenizer_load(path, &tok) != 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) setup();
    if (size > (1u << 16)) return 0;
    mctask *t = NULL;
    if (mctask_parse(&t, (const char *)data, size, "fuzz") != 0) {
        if (t) abort();
        return 0;
    }
    if (mctask_count(t) == 0) abort();
    for (size_t i = 0; i < mctask_count(t); i++) {
        const mctask_doc *d = mctask_get(t, i);
        if (d->n_choices < 2 || d->n_choices > MCTASK_CHOICES_MAX || d->gold < 0 ||
            d->gold >= d->n_choices || d->line < 1)
            abort();
        for (int c = 0; c < d->n_choices; c++) {
            if (!d->choices[c][0] || mctask_codepoints(d->choices[c], strlen(d->choices[c])) == 0)
                abort();
            mctask_request r;
            if (mctask_request_build(d, c, tok, 256, 16, 257, &r) != 0) continue;
            if (r.n < 1 || r.n > 16 || r.cont < 1 || r.cont > r.n) abort();
            for (int k = 0; k <= r.n; k++)
                if (r.ids[k] < 0 || r.ids[k] >= 257) abort();
            free(r.ids);
        }
    }
    mctask_free(t);
    return 0;
}
