/* fuzz_version_index — the reader of a sharded version's index
 * (wire/version.h, version_index_parse) on arbitrary bytes: what a node
 * parses after the index's bytes hashed to the ROUND's version, and what
 * `fedlora export` reads from a state directory. Any crash, sanitizer report
 * or leak is a finding; refusals are the expected outcome. What it accepts
 * must hold the promises the callers rely on: shards 1..n in order, each
 * named model-<k>-of-<n>.safetensors, sizes that add up without overflow
 * and cover total_size. Seeds: tests/fuzz/corpus/fuzz_version_index/
 * (sealed indexes of 2 and 5 shards, and near misses). */
#include "wire/version.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    version_index *x;
    if (version_index_parse(&x, data, size, "fuzz") != 0) return 0;
    if (x->n_shards < 1 || x->n_shards > VERSION_SHARDS_MAX || x->n_tensors < x->n_shards) abort();
    uint64_t sum = 0;
    for (int k = 0; k < x->n_shards; k++) {
        char want[VERSION_SHARD_NAME_LEN + 8];
        snprintf(want, sizeof want, "model-%05d-of-%05d.safetensors", k + 1, x->n_shards);
        if (strcmp(x->shards[k].name, want) != 0 || x->shards[k].size < 8) abort();
        sum += x->shards[k].size;
    }
    if (sum != x->bytes || x->total_size > x->bytes) abort();
    version_index_free(x);
    return 0;
}
