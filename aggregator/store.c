/* store — content-addressed model versions (see store.h). */
#include "aggregator/store.h"

#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"
#include "wire/crypto.h"

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

int store_has(const char *state, const uint8_t hash[STORE_HASH_LEN]) {
    char p[4096];
    if (store_model_path(state, hash, p, sizeof p) < 0) return 0;
    return fio_exists(p);
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

int store_remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return err_errno("opening directory %s", dir);
    }
    struct dirent *e;
    char p[4096];
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (fio_join(p, sizeof p, dir, e->d_name) < 0 || (unlink(p) != 0 && errno != ENOENT)) {
            rc = err_errno("removing %s", p);
            break;
        }
    }
    closedir(d);
    if (rc == 0 && rmdir(dir) != 0 && errno != ENOENT) rc = err_errno("removing %s", dir);
    return rc;
}

int store_publish(const char *state, const char *tmpdir, uint8_t hash[STORE_HASH_LEN]) {
    char model[4096], vdir[4096], versions[4096];
    if (fio_join(model, sizeof model, tmpdir, "model.safetensors") < 0 ||
        fio_join(versions, sizeof versions, state, "versions") < 0)
        return -1;
    if (crypto_sha256_file(model, hash, NULL) < 0 ||
        store_version_dir(state, hash, vdir, sizeof vdir) < 0)
        return err_context("publishing %s", tmpdir);
    if (fio_mkdirs(versions, 0755) < 0) return -1;
    if (store_has(state, hash)) {
        /* Same bytes, published before a crash: keep what is there. */
        return store_remove_dir(tmpdir);
    }
    if (rename(tmpdir, vdir) != 0) return err_errno("renaming %s to %s", tmpdir, vdir);
    if (fio_fsync_dir_of(vdir) < 0) return err_context("publishing %s", vdir);
    return 0;
}

int store_read(const char *state, const uint8_t hash[STORE_HASH_LEN], uint64_t offset, void *buf,
               size_t cap, size_t *got, uint64_t *total) {
    char p[4096];
    if (store_model_path(state, hash, p, sizeof p) < 0) return -1;
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
