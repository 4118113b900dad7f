/* store — content-addressed model versions (see store.h). */
#include "aggregator/store.h"

#include "model/modeldir.h"
#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* STATE/<dir>/<hex><leaf>. */
static int hash_path(const char *state, const char *dir, const uint8_t hash[STORE_HASH_LEN],
                     const char *leaf, char *out, size_t n) {
    char hex[STORE_HEX_LEN + 1];
    hex_encode(hash, STORE_HASH_LEN, hex);
    if (snprintf(out, n, "%s/%s/%s%s", state, dir, hex, leaf) >= (int)n)
        return err_set("state path %s is too long", state);
    return 0;
}

int store_version_dir(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n) {
    return hash_path(state, "versions", hash, "", out, n);
}

int store_model_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n) {
    return hash_path(state, "versions", hash, "/model.safetensors", out, n);
}

static int index_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n) {
    return hash_path(state, "versions", hash, "/" VERSION_INDEX_FILE, out, n);
}

int store_has(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char p[4096];
    if (store_model_path(state, hash, p, sizeof p) < 0) return 0;
    if (fio_exists(p)) return 1;
    return index_path(state, hash, p, sizeof p) == 0 && fio_exists(p);
}

int store_is_sharded(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char p[4096];
    return index_path(state, hash, p, sizeof p) == 0 && fio_exists(p);
}

int store_version_index(const char *state, const uint8_t hash[STORE_HASH_LEN],
                        version_index **out) {
    *out = NULL;
    char p[4096];
    if (index_path(state, hash, p, sizeof p) < 0) return -1;
    if (!fio_exists(p)) return 0;
    return version_index_read(out, p, NULL);
}

int store_object_path(const char *state, const uint8_t hash[STORE_HASH_LEN], char *out, size_t n) {
    return hash_path(state, "objects", hash, "", out, n);
}

int store_has_any(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char p[4096];
    if (store_has(state, hash)) return 1;
    if (store_object_path(state, hash, p, sizeof p) < 0) return 0;
    return fio_exists(p);
}

int store_verify(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char p[4096], hex[STORE_HEX_LEN + 1], why[ERR_MSG_MAX];
    hex_encode(hash, STORE_HASH_LEN, hex);
    int version = store_has(state, hash);
    int rc = 0;
    if (version) {
        /* One file hashed, or the index and then each shard: streamed
         * (crypto_sha256_file), never a whole version in memory. */
        if (store_version_dir(state, hash, p, sizeof p) < 0) return -1;
        rc = version_verify(p, hash);
    } else {
        uint8_t got[STORE_HASH_LEN];
        if (store_object_path(state, hash, p, sizeof p) < 0) return -1;
        if (!fio_exists(p))
            return err_set("no stored version or object %.16s... in %s", hex, state);
        if (crypto_sha256_file(p, got, NULL) < 0) {
            rc = -1;
        } else if (memcmp(got, hash, STORE_HASH_LEN) != 0) {
            char got_hex[STORE_HEX_LEN + 1];
            hex_encode(got, STORE_HASH_LEN, got_hex);
            rc = err_set("%s hashes to %.16s...: the file was changed", p, got_hex);
        }
    }
    if (rc == 0) return 0;
    snprintf(why, sizeof why, "%s", err_msg());
    return err_set("stored %s %.16s... does not hash to its name (%s). The state directory %s "
                   "was damaged (a disk error, or a file edited by hand); nothing is built on "
                   "it or served from it. Restore %s from a backup%s, then start the "
                   "aggregator again",
                   version ? "model version" : "object", hex, why, state, p,
                   version ? ", or copy the directory of that version from a node that holds it "
                             "(its state/versions/<hash>/, checked when it was downloaded)"
                           : "");
}

int store_put_object(const char *state, const char *tmp, uint8_t hash[STORE_HASH_LEN],
                     uint64_t *size) {
    char dir[4096], p[4096];
    if (fio_join(dir, sizeof dir, state, "objects") < 0 || fio_mkdirs(dir, 0755) < 0) return -1;
    if (crypto_sha256_file(tmp, hash, size) < 0 || store_object_path(state, hash, p, sizeof p) < 0)
        return err_context("storing %s", tmp);
    if (fio_exists(p)) {
        if (unlink(tmp) != 0) return err_errno("removing %s", tmp);
        return 0;
    }
    if (rename(tmp, p) != 0) return err_errno("renaming %s to %s", tmp, p);
    if (fio_fsync_dir_of(p) < 0) return err_context("storing %s", p);
    return 0;
}

/* Every shard of the sharded version in vdir served as STATE/objects/<its
 * SHA-256>: a hard link to the version's file (an object already there, the
 * same bytes in an earlier version, is kept). */
static int link_shards(const char *state, const char *vdir) {
    char index[4096], dir[4096], src[4096], obj[4096];
    if (fio_join(index, sizeof index, vdir, VERSION_INDEX_FILE) < 0) return -1;
    if (!fio_exists(index)) return 0;
    version_index *x;
    if (version_index_read(&x, index, NULL) < 0) return -1;
    int rc = fio_join(dir, sizeof dir, state, "objects") < 0 || fio_mkdirs(dir, 0755) < 0 ? -1 : 0;
    int linked = 0;
    for (int k = 0; rc == 0 && k < x->n_shards; k++) {
        if (fio_join(src, sizeof src, vdir, x->shards[k].name) < 0 ||
            store_object_path(state, x->shards[k].hash, obj, sizeof obj) < 0) {
            rc = -1;
        } else if (!fio_exists(obj)) {
            if (link(src, obj) != 0)
                rc = err_errno("linking %s as %s (the state directory must be on a file system "
                               "with hard links)",
                               src, obj);
            linked++;
        }
    }
    version_index_free(x);
    if (rc == 0 && linked && fio_fsync_dir_of(obj) < 0) rc = -1;
    return rc < 0 ? err_context("serving the shards of %s", vdir) : 0;
}

int store_publish(const char *state, const char *tmpdir, store_finish_fn finish, void *ctx,
                  uint8_t hash[STORE_HASH_LEN]) {
    char vdir[4096], versions[4096];
    if (fio_join(versions, sizeof versions, state, "versions") < 0 ||
        fio_mkdirs(versions, 0755) < 0)
        return -1;
    if (version_seal(tmpdir, hash) < 0 || store_version_dir(state, hash, vdir, sizeof vdir) < 0)
        return err_context("publishing %s", tmpdir);
    if (store_has(state, hash)) {
        /* Same bytes, published before a crash: keep what is there. */
        if (fio_remove_tree(tmpdir) < 0) return -1;
    } else {
        if (finish && finish(ctx, tmpdir, hash) < 0) return err_context("publishing %s", tmpdir);
        if (rename(tmpdir, vdir) != 0) return err_errno("renaming %s to %s", tmpdir, vdir);
        if (fio_fsync_dir_of(vdir) < 0) return err_context("publishing %s", vdir);
    }
    return link_shards(state, vdir);
}

int store_set_latest(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char link_path[4096], tmp[4096], hex[STORE_HEX_LEN + 1];
    hex_encode(hash, STORE_HASH_LEN, hex);
    if (snprintf(link_path, sizeof link_path, "%s/versions/%s", state, STORE_LATEST) >=
            (int)sizeof link_path ||
        snprintf(tmp, sizeof tmp, "%s.tmp", link_path) >= (int)sizeof tmp)
        return err_set("state path %s is too long", state);
    if (unlink(tmp) != 0 && errno != ENOENT) return err_errno("removing %s", tmp);
    /* Relative: the state directory can move. */
    if (symlink(hex, tmp) != 0) return err_errno("making the link %s", tmp);
    if (rename(tmp, link_path) != 0) return err_errno("renaming %s to %s", tmp, link_path);
    return fio_fsync_dir_of(link_path);
}

int store_latest(const char *state, uint8_t hash[STORE_HASH_LEN]) {
    char link_path[4096], target[STORE_HEX_LEN + 2];
    if (snprintf(link_path, sizeof link_path, "%s/versions/%s", state, STORE_LATEST) >=
        (int)sizeof link_path)
        return err_set("state path %s is too long", state);
    ssize_t n = readlink(link_path, target, sizeof target);
    if (n < 0) return err_errno("reading the link %s (no version published yet?)", link_path);
    target[n < (ssize_t)sizeof target ? n : (ssize_t)sizeof target - 1] = '\0';
    if (n != STORE_HEX_LEN || hex_decode(target, hash, STORE_HASH_LEN) != 0 ||
        !store_has(state, hash))
        return err_set("%s does not point at a version of the store (want a link to one of "
                       "versions/<64 hex digits>)",
                       link_path);
    return 0;
}

int store_resolve(const char *state, const char *text, uint8_t hash[STORE_HASH_LEN]) {
    if (strcmp(text, STORE_LATEST) == 0) return store_latest(state, hash);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i++)
        if (hex_value(text[i], 0) < 0) n = 0;
    if (n == STORE_HEX_LEN && hex_decode(text, hash, STORE_HASH_LEN) == 0) {
        if (!store_has(state, hash))
            return err_set("version %.16s... is not in %s/versions", text, state);
        return 0;
    }
    if (n < 8 || n > STORE_HEX_LEN)
        return err_set("'%.80s' names no version: want latest, 64 lowercase hex digits, or the "
                       "first 8 or more of them",
                       text);
    char dir[4096], found[STORE_HEX_LEN + 1] = "";
    if (fio_join(dir, sizeof dir, state, "versions") < 0) return -1;
    DIR *d = opendir(dir);
    if (!d) return err_errno("cannot list %s", dir);
    int matches = 0;
    uint8_t h[STORE_HASH_LEN];
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (strncmp(e->d_name, text, n) == 0 && hex_decode(e->d_name, h, STORE_HASH_LEN) == 0 &&
            store_has(state, h) && matches++ == 0)
            memcpy(found, e->d_name, STORE_HEX_LEN); /* 64 digits: hex_decode says so */
    closedir(d);
    if (matches != 1)
        return err_set(matches ? "%d versions in %s start with %s: give more digits"
                               : "%d versions in %s start with %s",
                       matches, dir, text);
    return hex_decode(found, hash, STORE_HASH_LEN);
}

#define CARD_MAX ((uint64_t)1 << 20)    /* README.md */
#define CONFIG_MAX ((uint64_t)16 << 20) /* config.json */

/* A file of the version into out: hard-linked (link) or copied. */
static int export_file(const char *vdir, const char *out, const char *name, uint64_t max,
                       int link_it) {
    char src[4096], dst[4096];
    if (fio_join(src, sizeof src, vdir, name) < 0 || fio_join(dst, sizeof dst, out, name) < 0)
        return -1;
    struct stat st;
    if (link_it && lstat(src, &st) == 0 && S_ISREG(st.st_mode) && link(src, dst) == 0) return 0;
    return fio_copy(src, dst, max, 0644);
}

int store_export(const char *state, const uint8_t hash[STORE_HASH_LEN], const char *out, int link,
                 int *complete) {
    char vdir[4096], path[4096], hex[STORE_HEX_LEN + 1];
    hex_encode(hash, STORE_HASH_LEN, hex);
    if (store_version_dir(state, hash, vdir, sizeof vdir) < 0 || fio_mkdirs(out, 0755) < 0)
        return -1;
    int sharded = version_is_sharded(vdir), rc = 0;
    if (sharded < 0) return err_context("exporting version %.16s...", hex);
    if (sharded) {
        version_index *x;
        if (fio_join(path, sizeof path, vdir, VERSION_INDEX_FILE) < 0 ||
            version_index_read(&x, path, NULL) < 0)
            return err_context("exporting version %.16s...", hex);
        for (int k = 0; rc == 0 && k < x->n_shards; k++)
            rc = export_file(vdir, out, x->shards[k].name, x->shards[k].size, link);
        version_index_free(x);
        if (rc == 0) rc = export_file(vdir, out, VERSION_INDEX_FILE, VERSION_INDEX_MAX, 0);
    } else {
        rc = export_file(vdir, out, VERSION_MODEL_FILE, UINT64_MAX, link);
    }
    if (rc < 0 || export_file(vdir, out, "config.json", CONFIG_MAX, 0) < 0 ||
        modeldir_copy_companions(vdir, out) < 0)
        return err_context("exporting version %.16s...", hex);
    if (fio_join(path, sizeof path, vdir, "README.md") < 0) return -1;
    *complete = fio_exists(path);
    if (*complete && export_file(vdir, out, "README.md", CARD_MAX, 0) < 0)
        return err_context("exporting version %.16s...", hex);
    /* What was written is what is checked. */
    if (version_verify(out, hash) < 0)
        return err_context("exporting version %.16s... from %s: the weights written are not the "
                           "version's (its files in the store were changed after it was "
                           "published)",
                           hex, state);
    return 0;
}

int store_read(const char *state, const uint8_t hash[STORE_HASH_LEN], uint64_t offset, void *buf,
               size_t cap, size_t *got, uint64_t *total) {
    char p[4096];
    if (store_model_path(state, hash, p, sizeof p) < 0) return -1;
    if (!fio_exists(p) && index_path(state, hash, p, sizeof p) < 0) return -1;
    if (!fio_exists(p) && store_object_path(state, hash, p, sizeof p) < 0) return -1;
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("opening %s", p);
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) != 0) {
        err_errno("stat of %s", p);
        goto done;
    }
    *total = (uint64_t)st.st_size;
    *got = 0;
    if (offset > *total) {
        rc = 1; /* the asker's mistake, not ours */
        goto done;
    }
    uint64_t want = *total - offset < cap ? *total - offset : cap;
    while (*got < want) {
        ssize_t n = pread(fd, (uint8_t *)buf + *got, want - *got, (off_t)(offset + *got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            err_errno("reading %s at %llu", p, (unsigned long long)(offset + *got));
            goto done;
        }
        *got += (size_t)n;
    }
    rc = 0;
done:
    close(fd);
    return rc;
}
