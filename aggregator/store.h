/* store — the content-addressed version store and the inbox's file names.
 *
 *   STATE/versions/<64 hex>/model.safetensors   a model version; the hex is the
 *                                               SHA-256 of exactly these bytes
 *   STATE/versions/<64 hex>/config.json         its config (never part of the hash)
 *
 * A version appears only whole: it is written into a temporary directory
 * (STATE/tmp/...), hashed, and renamed into place, then the versions
 * directory is fsync'd. Publishing bytes that are already there (a crash
 * after the rename, then the same aggregation again) finds the same hash and
 * keeps the existing directory. */
#ifndef FL_AGGREGATOR_STORE_H
#define FL_AGGREGATOR_STORE_H

#include "util/hex.h"

#include <stddef.h>
#include <stdint.h>

#define STORE_HASH_LEN 32
#define STORE_HEX_LEN 64

/* STATE/versions/<hex> and .../model.safetensors. */
int store_version_dir(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
int store_model_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
/* 1 when that version is in the store, 0 when not. */
int store_has(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* STATE/objects/<hex>. */
int store_object_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n);
/* 1 when a model version or an object with that hash is served, 0 when not. */
int store_has_any(const char *state, const uint8_t hash[STORE_HASH_LEN]);
/* Moves the file tmp (already durable: fio_write_atomic or fsync'd) into
 * STATE/objects under its SHA-256, returned in hash (and its size in
 * *size, when not NULL); an object already there is kept and tmp removed. */
int store_put_object(const char *state, const char *tmp, uint8_t hash[STORE_HASH_LEN],
                     uint64_t *size);

/* Moves tmpdir (holding model.safetensors and config.json, each already
 * durable) into the store under the hash of its model.safetensors, returned
 * in hash. When that version exists already, tmpdir is removed instead. */
int store_publish(const char *state, const char *tmpdir, uint8_t hash[STORE_HASH_LEN]);

/* Up to cap bytes from offset of a version's model file, or of an object
 * (looked up in that order); *total is its size. 1 (with *total set) when
 * offset is past the end. */
int store_read(const char *state, const uint8_t hash[STORE_HASH_LEN], uint64_t offset, void *buf,
               size_t cap, size_t *got, uint64_t *total);

/* Removes a directory of plain files (one level), ignoring a missing one. */
int store_remove_dir(const char *dir);

#endif
