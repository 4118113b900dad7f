/* node model sync: a model version is named by the SHA-256 of its weights
 * (content-addressed, wire/version.h): of its one model.safetensors, or,
 * when the ROUND says it is sharded, of its model.safetensors.index.json,
 * which lists every shard's SHA-256 and size. Each file is fetched with
 * GET_MODEL in chunks of MSG_CHUNK_MAX bytes into a .part file, whose size
 * is where a download goes on after a restart, and its hash is checked over
 * the whole file before it is renamed into place: a sharded version's index
 * first (checked against the version hash, then parsed with the bounds of
 * version_index_parse), then each shard by its own hash (a shard the node
 * already holds in its previous version, unchanged, is linked instead of
 * fetched), the index last. So a version directory only ever holds verified
 * bytes, and it is complete once its model.safetensors or index is there.
 * config.json never changes within a federation and comes from the node's
 * base model directory.
 *
 * Low-rank sync (docs/protocol.md): when the ROUND names the low-rank update
 * that makes its base from version update_from, and that version is here,
 * the node fetches the update object (another content-addressed download,
 * into versions/<new>/update.safetensors.part), loads update_from, writes
 * the version the update makes with the aggregator's own step
 * (update_write_version: one file, or shards past the shard limit), seals
 * it (version_seal) and takes it only when its hash is the round's base.
 * Anything else falls back to the full download. */
#include "node/internal.h"

#include "lora/update.h"
#include "model/checkpoint.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_FILE VERSION_MODEL_FILE
#define PART_FILE VERSION_MODEL_FILE ".part"
#define INDEX_FILE VERSION_INDEX_FILE
#define INDEX_PART VERSION_INDEX_FILE ".part"
#define UPDATE_PART "update.safetensors.part"
#define LOWRANK_DIR "lowrank.tmp" /* where the made version is saved before its check */
#define CONFIG_FILE "config.json"
#define CONFIG_MAX (16u << 20)

int node_version_dir(const node_ctx *n, const uint8_t version[MSG_HASH_LEN], char *dir) {
    char hex[2 * MSG_HASH_LEN + 1];
    hex_encode(version, MSG_HASH_LEN, hex);
    return node_path(n, dir, "versions/%s", hex);
}

/* Only one version is kept: the newest. Older ones (and abandoned .part
 * downloads of other versions) are removed once a new one is verified. */
static int remove_other_versions(const node_ctx *n, const char *keep_dir) {
    char root[NODE_PATH_MAX], path[NODE_PATH_MAX];
    if (node_path(n, root, "versions") != 0) return -1;
    DIR *d = opendir(root);
    if (!d) return err_errno("cannot list %s", root);
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (fio_join(path, sizeof path, root, e->d_name) != 0) {
            rc = -1;
            break;
        }
        if (strcmp(path, keep_dir) != 0 && fio_remove_tree(path) != 0) {
            rc = -1;
            break;
        }
    }
    closedir(d);
    return rc;
}

static int write_current(node_ctx *n, uint64_t round, const uint8_t version[MSG_HASH_LEN]) {
    char path[NODE_PATH_MAX], hex[2 * MSG_HASH_LEN + 1];
    if (node_path(n, path, "current.json") != 0) return -1;
    hex_encode(version, MSG_HASH_LEN, hex);
    char text[256];
    int len = snprintf(text, sizeof text, "{\"round\": %llu, \"version\": \"%s\"}\n",
                       (unsigned long long)round, hex);
    if (fio_write_atomic(path, text, (size_t)len, 0644) != 0) return -1;
    n->have_model = 1;
    n->have_round = round;
    memcpy(n->have_version, version, MSG_HASH_LEN);
    return 0;
}

int node_load_current(node_ctx *n) {
    char path[NODE_PATH_MAX];
    if (node_path(n, path, "current.json") != 0) return -1;
    if (!fio_exists(path)) return 0;
    char *text;
    size_t len;
    if (fio_read_all(path, 4096, &text, &len) != 0) return -1;
    json_error_t e;
    json_t *j = json_loadb(text, len, 0, &e);
    free(text);
    json_t *r = j ? json_object_get(j, "round") : NULL,
           *v = j ? json_object_get(j, "version") : NULL;
    int rc = 0;
    if (!json_is_integer(r) || json_integer_value(r) < 0 || !json_is_string(v) ||
        hex_decode(json_string_value(v), n->have_version, MSG_HASH_LEN) != 0) {
        rc = err_set("%s: want {\"round\": N, \"version\": \"<64 hex digits>\"}; remove it to "
                     "start the sync afresh",
                     path);
    } else {
        n->have_model = 1;
        n->have_round = (uint64_t)json_integer_value(r);
    }
    json_decref(j);
    return rc;
}

/* Where a download's chunks go: appended to the .part file. */
typedef struct {
    node_ctx *n;
    int fd;
    const char *part;
} part_sink;

static int to_part(void *arg, const uint8_t *data, size_t len) {
    part_sink *p = arg;
    if (fio_write_full(p->fd, data, len, p->part) != 0) return -1;
    p->n->download_bytes += len;
    return 0;
}

/* Appends the missing bytes of the object named by its hash (a model
 * file, an index, a shard, or a low-rank update; of `want_total` bytes, 0:
 * any size up to max_total) to the .part file, through client_download from
 * the .part's size on. 0 complete, 1 stop asked, -1 error. */
static int download(node_ctx *n, const uint8_t version[MSG_HASH_LEN], const char *part,
                    uint64_t want_total, uint64_t max_total) {
    int fd = open(part, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return err_errno("cannot open %s", part);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return err_errno("cannot stat %s", part);
    }
    uint64_t offset = (uint64_t)st.st_size;
    if (offset > 0) node_log(n, "resuming the download at byte %llu", (unsigned long long)offset);
    part_sink sink = {n, fd, part};
    int k = client_download(n->cl, version, offset, want_total, max_total, to_part, &sink, NULL);
    int rc = k == CLIENT_OK ? 0 : k == CLIENT_STOPPED ? 1 : -1;
    if (rc == 0 && fsync(fd) != 0) rc = err_errno("cannot fsync %s", part);
    if (close(fd) != 0 && rc == 0) rc = err_errno("cannot close %s", part);
    return rc;
}

static double mb(uint64_t bytes) {
    return (double)bytes / 1e6;
}

/* Fetches the object `hash` (of `want` bytes; 0: at most max) into part
 * and checks that the whole file hashes to it. Two tries: a .part left by
 * an earlier run may hold bytes of something else; it is removed and
 * fetched again once. `what` names the object in messages. 0 part holds
 * exactly the object, 1 stop asked, -1 error. */
static int fetch_verified(node_ctx *n, const uint8_t hash[MSG_HASH_LEN], const char *part,
                          uint64_t want, uint64_t max, const char *what) {
    for (int attempt = 0;; attempt++) {
        int k = download(n, hash, part, want, max);
        if (k != 0) return k;
        uint8_t got[MSG_HASH_LEN];
        if (crypto_sha256_file(part, got, NULL) != 0) return -1;
        if (memcmp(got, hash, MSG_HASH_LEN) == 0) return 0;
        if (unlink(part) != 0) return err_errno("cannot remove %s", part);
        if (attempt == 1)
            return err_set("%s: the downloaded bytes hash to something else twice; the "
                           "aggregator serves corrupt data",
                           what);
        node_log(n, "the downloaded bytes do not match %s; fetching again", what);
    }
}

/* The shard of the version the node holds (an earlier round's) with the
 * same hash, linked to part when there is one and it still hashes to it: a
 * shard no update touched (embeddings, norms) is not fetched again. 1
 * taken, 0 not. */
static int reuse_shard(const node_ctx *n, const version_index *held, const char *held_dir,
                       const version_shard *s, const char *part) {
    char src[NODE_PATH_MAX];
    uint8_t got[MSG_HASH_LEN];
    for (int k = 0; held && k < held->n_shards; k++) {
        if (memcmp(held->shards[k].hash, s->hash, MSG_HASH_LEN) != 0) continue;
        if (fio_join(src, sizeof src, held_dir, held->shards[k].name) != 0) return 0;
        (void)unlink(part);
        if (link(src, part) != 0) return 0; /* another file system: fetch it */
        if (crypto_sha256_file(part, got, NULL) == 0 && memcmp(got, s->hash, MSG_HASH_LEN) == 0) {
            node_log(n, "shard %s is unchanged since the version held: linked, not fetched",
                     s->name);
            return 1;
        }
        (void)unlink(part);
        return 0;
    }
    return 0;
}

/* The version held now, when it is sharded: its index and directory, for
 * reuse_shard (NULL when there is none). */
static version_index *held_index(const node_ctx *n, char dir[NODE_PATH_MAX]) {
    char path[NODE_PATH_MAX];
    version_index *x = NULL;
    if (!n->have_model || node_version_dir(n, n->have_version, dir) != 0 ||
        fio_join(path, NODE_PATH_MAX, dir, INDEX_FILE) != 0 || !fio_exists(path) ||
        version_index_read(&x, path, NULL) != 0)
        return NULL;
    return x;
}

/* A sharded version's full download into dir: its index into INDEX_PART
 * (checked against the version hash, then parsed: untrusted until then),
 * then every shard by its hash into <shard>.part, checked and renamed to
 * its name. The caller renames the index into place last. A shard already
 * under its name was verified before it got it. 0 done, 1 stop, -1 error. */
static int fetch_sharded(node_ctx *n, const uint8_t version[MSG_HASH_LEN], const char *dir,
                         const char *index_part) {
    char hex[2 * MSG_HASH_LEN + 1], what[128];
    hex_encode(version, MSG_HASH_LEN, hex);
    snprintf(what, sizeof what, "the index of version %.16s…", hex);
    uint64_t max = n->c->max_model_bytes;
    int k = fetch_verified(n, version, index_part, 0,
                           max < VERSION_INDEX_MAX ? max : VERSION_INDEX_MAX, what);
    if (k != 0) return k;
    version_index *x;
    struct stat st;
    if (version_index_read(&x, index_part, NULL) != 0 || stat(index_part, &st) != 0)
        return err_context("model version %.16s…", hex);
    int rc = 0;
    uint64_t index_bytes = (uint64_t)st.st_size;
    if (x->bytes > max || index_bytes > max - x->bytes)
        rc = err_set("model version %.16s… is %llu bytes in %d shards, over max_model_bytes %llu",
                     hex, (unsigned long long)(x->bytes + index_bytes), x->n_shards,
                     (unsigned long long)max);
    char held_dir[NODE_PATH_MAX];
    version_index *held = rc == 0 ? held_index(n, held_dir) : NULL;
    for (int i = 0; rc == 0 && i < x->n_shards; i++) {
        const version_shard *s = &x->shards[i];
        char final[NODE_PATH_MAX], part[NODE_PATH_MAX];
        if (fio_join(final, sizeof final, dir, s->name) != 0 ||
            snprintf(part, sizeof part, "%s.part", final) >= (int)sizeof part) {
            rc = err_set("path too long: %s", final);
            break;
        }
        if (fio_exists(final)) continue;
        snprintf(what, sizeof what, "shard %s of version %.16s…", s->name, hex);
        if (!fio_exists(part) && reuse_shard(n, held, held_dir, s, part))
            k = 0;
        else
            k = fetch_verified(n, s->hash, part, s->size, s->size, what);
        if (k != 0) {
            rc = k;
            break;
        }
        if (rename(part, final) != 0)
            rc = err_errno("cannot rename %s to %s", part, final);
        else if (fio_fsync_dir_of(final) != 0)
            rc = -1;
    }
    version_index_free(held);
    version_index_free(x);
    return rc;
}

/* Moves the version sealed in tmp (shards and index) into dir: each shard
 * under its name, the index as INDEX_PART (the caller renames it last). Its
 * hash was checked, so these are verified bytes. */
static int install_shards(const char *tmp, const char *dir, const char *index_part) {
    char src[NODE_PATH_MAX], dst[NODE_PATH_MAX];
    version_index *x;
    if (fio_join(src, sizeof src, tmp, INDEX_FILE) != 0 || version_index_read(&x, src, NULL) != 0)
        return -1;
    int rc = 0;
    for (int i = 0; rc == 0 && i < x->n_shards; i++)
        if (fio_join(src, sizeof src, tmp, x->shards[i].name) != 0 ||
            fio_join(dst, sizeof dst, dir, x->shards[i].name) != 0)
            rc = -1;
        else if (rename(src, dst) != 0)
            rc = err_errno("cannot rename %s to %s", src, dst);
    version_index_free(x);
    if (rc == 0 && (fio_join(src, sizeof src, tmp, INDEX_FILE) != 0 || rename(src, index_part)))
        rc = err_errno("cannot rename %s to %s", src, index_part);
    if (rc == 0) rc = fio_fsync_dir_of(index_part);
    return rc;
}

/* Makes round r's base from version update_from and the round's low-rank
 * update, into dir: PART_FILE, or (sharded) its shards and INDEX_PART,
 * verified against the base's hash. 0 done, 1 stop asked, 2 update_from is
 * not here (nothing tried), -1 failed (err_msg says why; the caller falls
 * back to the full download). A download that breaks off keeps its .part
 * for the next try; an update or a result that fails its check is removed. */
static int lowrank(node_ctx *n, const struct msg_round *r, const char *dir) {
    char from[NODE_PATH_MAX], from_cfg[NODE_PATH_MAX], upart[NODE_PATH_MAX], tmp[NODE_PATH_MAX],
        made[NODE_PATH_MAX], part[NODE_PATH_MAX], index_part[NODE_PATH_MAX];
    char from_hex[2 * MSG_HASH_LEN + 1], to_hex[2 * MSG_HASH_LEN + 1],
        got_hex[2 * MSG_HASH_LEN + 1];
    if (node_version_dir(n, r->update_from, from) != 0 ||
        fio_join(from_cfg, sizeof from_cfg, from, CONFIG_FILE) ||
        fio_join(upart, sizeof upart, dir, UPDATE_PART) ||
        fio_join(tmp, sizeof tmp, dir, LOWRANK_DIR) ||
        fio_join(made, sizeof made, tmp, MODEL_FILE) ||
        fio_join(part, sizeof part, dir, PART_FILE) ||
        fio_join(index_part, sizeof index_part, dir, INDEX_PART))
        return -1;
    /* A version directory is complete once its weights' name is there. */
    if (!fio_exists(from_cfg) || version_is_sharded(from) < 0) return 2;
    hex_encode(r->update_from, MSG_HASH_LEN, from_hex);
    hex_encode(r->base, MSG_HASH_LEN, to_hex);
    if (r->update_size > n->c->max_model_bytes)
        return err_set("the update is %llu bytes, over max_model_bytes %llu",
                       (unsigned long long)r->update_size,
                       (unsigned long long)n->c->max_model_bytes);
    node_log(n,
             "round %llu: making model version %.16s… from %.16s… and its %.1f MB low-rank update",
             (unsigned long long)r->round, to_hex, from_hex, mb(r->update_size));
    int k = download(n, r->update_hash, upart, r->update_size, n->c->max_model_bytes);
    if (k != 0) return k;
    uint8_t got[MSG_HASH_LEN];
    model *m = NULL;
    update *u = NULL;
    int rc = -1;
    if (crypto_sha256_file(upart, got, NULL) != 0) goto done;
    if (memcmp(got, r->update_hash, MSG_HASH_LEN) != 0) {
        err_set("the update's bytes do not hash to the ROUND's update_hash");
        goto done;
    }
    /* The version held, mapped: read as it is written (memory stays at a
     * tensor, not the model). */
    if (checkpoint_map(&m, from, MODEL_PRECISION_FP32) != 0) {
        err_context("loading version %.16s…", from_hex);
        goto done;
    }
    if (update_read(&u, upart, m) != 0) goto done;
    if (memcmp(u->from, r->update_from, MSG_HASH_LEN) != 0 ||
        memcmp(u->to, r->base, MSG_HASH_LEN) != 0) {
        err_set("the update file is for another pair of versions than the ROUND's");
        goto done;
    }
    /* The aggregator's own step: update_write_version, the same bytes
     * (sharded as the aggregator shards), sealed as it seals. */
    if (fio_remove_tree(tmp) != 0 || update_write_version(m, u, tmp, 1) != 0) goto done;
    model_free(m);
    m = NULL;
    int sharded = version_is_sharded(tmp);
    if (sharded < 0 || version_seal(tmp, got) != 0) goto done;
    if (memcmp(got, r->base, MSG_HASH_LEN) != 0) {
        hex_encode(got, MSG_HASH_LEN, got_hex);
        err_set("the version made from %.16s… and the update hashes to %.16s…, not to the "
                "round's base",
                from_hex, got_hex);
        goto done;
    }
    if (sharded ? install_shards(tmp, dir, index_part) != 0 : rename(made, part) != 0) {
        if (!sharded) err_errno("cannot rename %s to %s", made, part);
        goto done;
    }
    rc = sharded ? 0 : fio_fsync_dir_of(part);
done:
    update_free(u);
    model_free(m);
    char why[ERR_MSG_MAX];
    snprintf(why, sizeof why, "%s", err_msg()); /* the cleanup must not hide it */
    if (fio_remove_tree(tmp) != 0 || (unlink(upart) != 0 && errno != ENOENT))
        node_log(n, "could not clean up after the low-rank sync: %s", err_msg());
    if (rc != 0) err_set("%s", why);
    return rc;
}

/* Bytes of a complete version's weights (its file, or index and shards). */
static uint64_t version_bytes(const char *dir) {
    char path[NODE_PATH_MAX];
    struct stat st;
    version_index *x;
    uint64_t bytes = 0;
    if (fio_join(path, sizeof path, dir, MODEL_FILE) == 0 && stat(path, &st) == 0)
        return (uint64_t)st.st_size;
    if (fio_join(path, sizeof path, dir, INDEX_FILE) == 0 && stat(path, &st) == 0 &&
        version_index_read(&x, path, NULL) == 0) {
        bytes = (uint64_t)st.st_size + x->bytes;
        version_index_free(x);
    }
    return bytes;
}

int node_sync(node_ctx *n, const struct msg_round *r) {
    char dir[NODE_PATH_MAX], model[NODE_PATH_MAX], part[NODE_PATH_MAX], index[NODE_PATH_MAX],
        index_part[NODE_PATH_MAX], cfg[NODE_PATH_MAX], src[NODE_PATH_MAX], upart[NODE_PATH_MAX],
        tmp[NODE_PATH_MAX], hex[2 * MSG_HASH_LEN + 1], what[128];
    const uint8_t *version = r->base;
    uint64_t round = r->round, start = n->download_bytes;
    hex_encode(version, MSG_HASH_LEN, hex);
    if (node_version_dir(n, version, dir) != 0 || fio_join(model, sizeof model, dir, MODEL_FILE) ||
        fio_join(part, sizeof part, dir, PART_FILE) ||
        fio_join(index, sizeof index, dir, INDEX_FILE) ||
        fio_join(index_part, sizeof index_part, dir, INDEX_PART) ||
        fio_join(cfg, sizeof cfg, dir, CONFIG_FILE) ||
        fio_join(src, sizeof src, n->c->base_model, CONFIG_FILE) ||
        fio_join(upart, sizeof upart, dir, UPDATE_PART) ||
        fio_join(tmp, sizeof tmp, dir, LOWRANK_DIR))
        return -1;
    if (n->sync_round != round) {
        n->sync_round = round;
        snprintf(n->sync_method, sizeof n->sync_method, "held");
    }
    if ((fio_exists(model) || fio_exists(index)) && fio_exists(cfg)) {
        if (!n->have_model || memcmp(n->have_version, version, MSG_HASH_LEN) != 0 ||
            n->have_round != round)
            return write_current(n, round, version);
        return 0;
    }
    if (fio_mkdirs(dir, 0755) != 0) return -1;
    /* A full download already under way (a .part) goes on as it is. */
    int made = 0;
    if (r->has_update && !fio_exists(part) && !fio_exists(index_part) &&
        node_sync_prefer_update(n, r)) {
        int k = lowrank(n, r, dir);
        if (k == 1) return 1;
        made = k == 0;
        if (k < 0)
            node_log(n, "round %llu: low-rank sync failed (%s); downloading the full version",
                     (unsigned long long)round, err_msg());
    }
    /* What the directory will be named by: the version's one file or its
     * index, each of which holds only verified bytes once renamed. */
    int sharded = made ? fio_exists(index_part) : r->base_sharded;
    if (!made) {
        node_log(n, "round %llu: syncing model version %.16s…%s", (unsigned long long)round, hex,
                 sharded ? " (sharded)" : "");
        snprintf(what, sizeof what, "version %.16s…", hex);
        int k = sharded ? fetch_sharded(n, version, dir, index_part)
                        : fetch_verified(n, version, part, r->has_base_size ? r->base_size : 0,
                                         n->c->max_model_bytes, what);
        if (k != 0) return k;
    }
    char *text;
    size_t len;
    if (fio_read_all(src, CONFIG_MAX, &text, &len) != 0)
        return err_context("the base model directory (base_model) must hold config.json");
    int rc = fio_write_atomic(cfg, text, len, 0644);
    free(text);
    if (rc != 0) return -1;
    const char *from = sharded ? index_part : part, *to = sharded ? index : model;
    if (rename(from, to) != 0) return err_errno("cannot rename %s to %s", from, to);
    if (fio_fsync_dir_of(to) != 0) return -1;
    /* What a low-rank try interrupted by a crash may have left. */
    if (fio_remove_tree(tmp) != 0 || (unlink(upart) != 0 && errno != ENOENT))
        return err_errno("cannot clean up %s", dir);
    uint64_t size = version_bytes(dir), moved = n->download_bytes - start;
    snprintf(n->sync_method, sizeof n->sync_method, "%s", made ? "lowrank" : "full");
    if (made)
        node_log(n,
                 "round %llu: model version %.16s… made and verified (%llu bytes); sync: "
                 "low-rank update %.1f MB instead of %.1f MB",
                 (unsigned long long)round, hex, (unsigned long long)size, mb(moved), mb(size));
    else
        node_log(n, "round %llu: model version %.16s… verified (%llu bytes); sync: %.1f MB",
                 (unsigned long long)round, hex, (unsigned long long)size, mb(moved));
    if (write_current(n, round, version) != 0) return -1;
    return remove_other_versions(n, dir);
}

int node_fetch_object(node_ctx *n, const uint8_t hash[MSG_HASH_LEN], const char *part,
                      uint64_t size, const char *what) {
    return fetch_verified(n, hash, part, size, size, what);
}
