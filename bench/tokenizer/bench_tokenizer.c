/* bench_tokenizer — single-thread encode throughput of fedlora's tokenizer.
 *
 *   bench_tokenizer TOKENIZER_JSON TEXT_FILE [SECONDS]
 *
 * Every non-empty line of TEXT_FILE is one document, encoded one at a time
 * without special tokens (as ref_hf_tokenizers.py does with Hugging Face).
 * Passes over the file repeat for at least SECONDS (default 3); the best pass
 * is reported, after one untimed warm-up pass. The ids hash (FNV-1a over the
 * ids) must equal the reference's: same ids, not just same speed. */
#include "bench/bench.h"
#include "model/tokenizer/tokenizer.h"
#include "util/err.h"
#include "util/fio.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One pass; returns the number of tokens and the FNV-1a hash of the ids. */
static int encode_all(tokenizer *t, const char *text, size_t len, size_t *n_docs, size_t *n_tokens,
                      uint64_t *hash) {
    tokenizer_ids ids = {0};
    uint64_t h = 0xCBF29CE484222325ull;
    *n_docs = *n_tokens = 0;
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (end > i) {
            ids.n = 0;
            if (tokenizer_encode(t, text + i, end - i, 0, &ids)) {
                tokenizer_ids_free(&ids);
                return -1;
            }
            for (size_t k = 0; k < ids.n; k++) h = (h ^ ids.ids[k]) * 0x100000001B3ull;
            *n_tokens += ids.n;
            (*n_docs)++;
        }
        i = end + 1;
    }
    tokenizer_ids_free(&ids);
    *hash = h;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_JSON TEXT_FILE [SECONDS]\n");
        return 2;
    }
    double seconds = argc > 3 ? atof(argv[3]) : 3.0;
    char *text;
    size_t len;
    tokenizer *t;
    double t0 = bench_now();
    if (tokenizer_load(argv[1], &t)) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    double load_s = bench_now() - t0;
    if (fio_read_all(argv[2], (size_t)1 << 31, &text, &len)) {
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    size_t docs, tokens;
    uint64_t hash;
    if (encode_all(t, text, len, &docs, &tokens, &hash)) { /* warm-up */
        fprintf(stderr, "%s\n", err_msg());
        return 1;
    }
    double best = 1e30, start = bench_now();
    int passes = 0;
    while (passes < 2 || bench_now() - start < seconds) {
        double a = bench_now();
        encode_all(t, text, len, &docs, &tokens, &hash);
        double dt = bench_now() - a;
        if (dt < best) best = dt;
        passes++;
    }
    printf("fedlora  %-14s %8.2f MB/s  %zu docs, %zu tokens, %.2f MB, best of %d passes, "
           "load %.2f s, ids_hash=%016llx\n",
           "per-doc", (double)len / 1e6 / best, docs, tokens, (double)len / 1e6, passes, load_s,
           (unsigned long long)hash);
    free(text);
    tokenizer_free(t);
    return 0;
}
