/* fuzz_dataset — training data files from untrusted bytes (data/dataset.c):
 * JSONL records of every kind, text, and anything starting with the
 * pre-tokenized corpus magic. Opening must succeed or fail with a message,
 * never crash, leak or hang; a dataset that opens must give every row of
 * both splits with ids below the vocabulary.
 *
 * Input: byte 0 picks the file name's extension (bit 0: ".jsonl", else
 * ".txt") and the held-out fraction (bit 1: 0.3, else 0); the rest is the
 * file. The tokenizer is the byte-level one (ids 0..255, EOS 256). */
#include "data/dataset.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "util/fio.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[64], tok_path[128];

static int setup(void) {
    snprintf(dir, sizeof dir, "/tmp/fuzz_dataset_%d", (int)getpid());
    snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir);
    tokenizer_special_token eot = {"<|endoftext|>", 256};
    if (fio_mkdirs(dir, 0700) != 0 || tokenizer_save_bytelevel(tok_path, &eot, 1, NULL) != 0)
        abort();
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) ready = setup();
    if (size < 1 || size > (1u << 16)) return 0;
    char path[128];
    snprintf(path, sizeof path, "%s/data%s", dir, data[0] & 1 ? ".jsonl" : ".txt");
    FILE *f = fopen(path, "wb"); /* no fsync: this file only has to be read back */
    if (!f || fwrite(data + 1, 1, size - 1, f) != size - 1 || fclose(f) != 0) abort();
    dataset_options o = {.path = path,
                         .tokenizer = tok_path,
                         .seq = 8,
                         .eos_id = 256,
                         .vocab_size = 300,
                         .eval_fraction = data[0] & 2 ? 0.3 : 0,
                         .seed = 1};
    dataset *d = NULL;
    if (dataset_open(&d, &o) != 0) return 0;
    for (int s = 0; s < 2; s++)
        for (size_t r = 0; r < dataset_num_rows(d, s); r++) {
            int32_t in[8], tg[8];
            if (dataset_row(d, s, r, in, tg) != 0) abort();
            for (int t = 0; t < 8; t++)
                if (in[t] < 0 || in[t] >= 300 || (tg[t] != MODEL_IGNORE_INDEX && tg[t] >= 300))
                    abort();
        }
    dataset_free(d);
    return 0;
}
