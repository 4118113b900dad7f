/* store — the content-addressed version store, and the objects served by
 * their SHA-256.
 *
 *   STATE/versions/<64 hex>/    a model version, named by its version hash
 *                               (wire/version.h): the SHA-256 of its
 *                               model.safetensors, or of its
 *                               model.safetensors.index.json when sharded
 *                               (the index lists every shard's SHA-256);
 *                               beside the weights the files that are not
 *                               part of its identity: config.json, the base's
 *                               tokenizer files and chat template,
 *                               generation_config.json, README.md (the card)
 *   STATE/versions/latest       a symbolic link to the newest version's
 *                               directory (<64 hex>), replaced atomically
 *   STATE/objects/<64 hex>      other objects served by hash: low-rank
 *                               updates, roster files, and every shard of a
 *                               sharded version (a hard link to the version's
 *                               own file: no extra space)
 *
 * A version appears only whole: it is written into a temporary directory
 * (STATE/tmp/...), sealed (its hash computed, shard hashes written into its
 * index), completed (store_finish_fn: the files beside the weights), and
 * renamed into place, then the versions directory is fsync'd. Publishing
 * bytes that are already there (a crash after the rename, then the same
 * aggregation again) finds the same hash and keeps the existing directory. */
#ifndef FL_AGGREGATOR_STORE_H
#define FL_AGGREGATOR_STORE_H

#include "util/hex.h"
#include "wire/version.h"

#include <stddef.h>
#include <stdint.h>

#define STORE_HASH_LEN 32
#define STORE_HEX_LEN 64
#define STORE_LATEST "latest" /* STATE/versions/latest */

/* STATE/versions/<hex> and .../model.safetensors. */
int store_version_dir(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
int store_model_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
/* 1 when that version is in the store (its model.safetensors or its
 * index), 0 when not. */
int store_has(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* 1 when that version is sharded (its directory holds the index), 0 when
 * not. */
int store_is_sharded(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* *out: the index of that stored version when it is sharded (checked by
 * version_index_read; free with version_index_free), NULL when it is one
 * file. Returns 0, or -1 with the error set. */
int store_version_index(const char *state, const uint8_t hash[STORE_HASH_LEN], version_index **out);
/* STATE/objects/<hex>. */
int store_object_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
/* 1 when a model version or an object with that hash is served, 0 when not. */
int store_has_any(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* Checks that the stored version or object named hash still hashes to
 * it: a version with version_verify (its one file, or its index and every
 * shard the index lists), an object of STATE/objects by its SHA-256; all
 * streamed. The refusal names the file that differs, says that the state
 * directory was damaged and what to restore (issue 17, case 6: a flipped
 * byte in a stored base was merged on and served). */
int store_verify(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* Moves the file tmp (already durable: fio_write_atomic or fsync'd) into
 * STATE/objects under its SHA-256, returned in hash (and its size in
 * *size, when not NULL); an object already there is kept and tmp removed. */
int store_put_object(const char *state, const char *tmp, uint8_t hash[STORE_HASH_LEN],
                     uint64_t *size);

/* Adds the files beside the weights to a sealed version directory before
 * it goes into the store (dir: the temporary directory, hash: the version's
 * hash). */
typedef int (*store_finish_fn)(void *ctx, const char *dir, const uint8_t hash[STORE_HASH_LEN]);

/* Seals tmpdir (the weights and config.json that checkpoint_write wrote,
 * each already durable; version_seal), lets finish (when not NULL) add its
 * files, and moves the directory into the store under the version hash,
 * returned in hash; then makes each shard of a sharded version an object.
 * When that version exists already, tmpdir is removed instead (its shard
 * objects are made if a crash left them out). */
int store_publish(const char *state, const char *tmpdir, store_finish_fn finish, void *ctx,
                  uint8_t hash[STORE_HASH_LEN]);

/* Points STATE/versions/latest at version hash (a relative symbolic link,
 * made beside it and renamed over it, then the directory fsync'd). */
int store_set_latest(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* The version STATE/versions/latest points at: 0, or -1 when there is none
 * or it is not a link to a version of the store. */
int store_latest(const char *state, uint8_t hash[STORE_HASH_LEN]);

/* The version `text` names: "latest", 64 hex digits, or a prefix of at
 * least 8 that only one version of the store starts with. */
int store_resolve(const char *state, const char *text, uint8_t hash[STORE_HASH_LEN]);

/* Writes version hash as a Hugging Face directory into out (created; the
 * caller sees that it is new or empty): its weights (copied, or hard-linked
 * with link — then out's files are the store's: a program that rewrites a
 * file in place would change the store), config.json, the tokenizer files
 * and chat templates, generation_config.json and README.md, each as the
 * store has it (a version published before versions were complete has no
 * tokenizer files or card: *complete is set to 0, else 1). Reads are
 * bounded and symbolic links in the store are refused; the weights are
 * verified against hash where they land (version_verify on out). */
int store_export(const char *state, const uint8_t hash[STORE_HASH_LEN], const char *out, int link,
                 int *complete);

/* Up to cap bytes from offset of the object named hash: a version's
 * model.safetensors, a sharded version's index, or an object of
 * STATE/objects (a shard, an update, a roster), looked up in that order;
 * *total is its size. 1 (with *total set) when offset is past the end. */
int store_read(const char *state, const uint8_t hash[STORE_HASH_LEN], uint64_t offset, void *buf,
               size_t cap, size_t *got, uint64_t *total);

#endif
