/* version — what names a model version: one SHA-256 over every byte of its
 * weights, whether they are one file or shards (docs/formats.md, "Model
 * versions").
 *
 * A version directory holds its weights as transformers writes them
 * (model/checkpoint.h): one model.safetensors, or, past the shard limit
 * (5 GB), shards model-NNNNN-of-MMMMM.safetensors and
 * model.safetensors.index.json. The version hash is
 *
 *   one file:  SHA-256(model.safetensors)                (as it always was)
 *   sharded:   SHA-256(model.safetensors.index.json)
 *
 * where the index's metadata lists every shard's SHA-256 and size:
 *
 *   "metadata": {"total_size": N,
 *                "fedlora_shards": {"model-00001-of-00002.safetensors":
 *                                       {"sha256": "<64 hex>", "size": BYTES}, …}}
 *
 * transformers reads the metadata as a dictionary and ignores keys it does
 * not know, so the index still loads as it is; one hash covers every byte
 * of every shard, and a shard can be fetched and checked on its own by its
 * own hash. version_seal writes those entries into an index checkpoint_write
 * made and returns the version hash; version_verify checks a directory
 * against a hash; version_index_parse reads an index that came from the
 * network or a state directory (untrusted: bounded in size, shard count and
 * names, every field checked, fuzzed by tests/fuzz/fuzz_version_index.c).
 * config.json, the tokenizer files and a model card in the directory are
 * not part of the identity. */
#ifndef FL_WIRE_VERSION_H
#define FL_WIRE_VERSION_H

#include <stddef.h>
#include <stdint.h>

#define VERSION_HASH_LEN 32
#define VERSION_MODEL_FILE "model.safetensors"
#define VERSION_INDEX_FILE "model.safetensors.index.json"
/* Bytes of an index read: an index lists every tensor, ~80 bytes each; the
 * largest public checkpoints (~10^5 tensors) stay below 10 MB. */
#define VERSION_INDEX_MAX ((size_t)16 << 20)
/* Shards: the five digits of transformers' file names. */
#define VERSION_SHARDS_MAX 99999
/* Tensors an index may list, and bytes of a tensor name. */
#define VERSION_TENSORS_MAX (1 << 18)
#define VERSION_TENSOR_NAME_MAX 1024
/* "model-00001-of-00004.safetensors" */
#define VERSION_SHARD_NAME_LEN 32

typedef struct {
    char name[VERSION_SHARD_NAME_LEN + 1]; /* model-NNNNN-of-MMMMM.safetensors */
    uint8_t hash[VERSION_HASH_LEN];        /* SHA-256 of the file */
    uint64_t size;                         /* its bytes */
} version_shard;

typedef struct {
    int n_shards;          /* 1..VERSION_SHARDS_MAX */
    version_shard *shards; /* shards[k] is model-(k+1)-of-n_shards */
    uint64_t total_size;   /* metadata.total_size: bytes of tensor data */
    uint64_t bytes;        /* the shards' sizes summed */
    int64_t n_tensors;     /* entries of weight_map */
} version_index;

/* Reads an index from memory (where names it in messages) and checks it:
 * at most VERSION_INDEX_MAX bytes of JSON without duplicate keys; an object
 * with "metadata" {"total_size": integer >= 0, "fedlora_shards": {NAME:
 * {"sha256": 64 lowercase hex, "size": integer >= 8}}} (other metadata keys
 * ignored) and "weight_map" {tensor: NAME} of 1..VERSION_TENSORS_MAX
 * tensors; shard names exactly model-NNNNN-of-MMMMM.safetensors with one
 * MMMMM = the number of shards and every NNNNN in 1..MMMMM present; every
 * weight_map value one of them and every shard named by some tensor; sizes
 * summing to at most 2^62 and to at least total_size. Refusals name the
 * index, the field and the rule. */
int version_index_parse(version_index **out, const void *buf, size_t len, const char *where);
/* The same on a file (at most VERSION_INDEX_MAX bytes); with `hash` not
 * NULL it also gets the SHA-256 of the bytes read. */
int version_index_read(version_index **out, const char *path, uint8_t hash[VERSION_HASH_LEN]);
void version_index_free(version_index *x);

/* 1 when dir's weights are sharded (an index, no model.safetensors), 0 when
 * they are one model.safetensors (no index), -1 when it has neither or both
 * (a version is one or the other: transformers would load the single file
 * and ignore the index). */
int version_is_sharded(const char *dir);

/* Seals the weights checkpoint_write wrote into dir: for one file its
 * SHA-256; for shards, hashes each shard the index's weight_map names, writes
 * their hashes and sizes into the index's metadata (fedlora_shards; sorted
 * keys, indent 2, a final newline, replaced atomically) and returns the
 * SHA-256 of the new index. Sealing again gives the same bytes. */
int version_seal(const char *dir, uint8_t hash[VERSION_HASH_LEN]);

/* Checks that dir holds exactly version `hash`: the single file hashes to
 * it, or the index does and every shard it lists has its size and hash.
 * The refusal names the file that differs. */
int version_verify(const char *dir, const uint8_t hash[VERSION_HASH_LEN]);

#endif
