/* node model sync: a model version is the bytes of one model.safetensors, named
 * by their SHA-256 (content-addressed), fetched with GET_MODEL in chunks of
 * MSG_CHUNK_MAX bytes into a .part file. The .part file's size is where a
 * download goes on after a restart; the hash is checked over the whole file
 * before it is renamed into place, so a version directory only ever holds
 * verified bytes. config.json never changes within a federation and comes
 * from the node's base model directory.
 *
 * Low-rank sync (docs/protocol.md): when the ROUND names the low-rank update
 * that makes its base from version update_from, and that version is here,
 * the node fetches the update object (another content-addressed download,
 * into versions/<new>/update.safetensors.part), loads update_from, applies
 * the update with the aggregator's own kernel (lora/update.h), saves it as
 * the aggregator saves versions (checkpoint_save, float32) and takes the
 * result as the .part file of the new version only when it hashes to the
 * round's base. Anything else falls back to the full download. */
#include "node/internal.h"

#include "lora/update.h"
#include "model/checkpoint.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_FILE "model.safetensors"
#define PART_FILE "model.safetensors.part"
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
        if (strcmp(path, keep_dir) != 0 && node_remove_tree(path) != 0) {
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
 * version, or a low-rank update of `want_total` bytes; 0: any size up to
 * max_model_bytes) to the .part file, through client_download from the
 * .part's size on. 0 complete, 1 stop asked, -1 error. */
static int download(node_ctx *n, const uint8_t version[MSG_HASH_LEN], const char *part,
                    uint64_t want_total) {
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
    int k = client_download(n->cl, version, offset, want_total, n->c->max_model_bytes, to_part,
                            &sink, NULL);
    int rc = k == CLIENT_OK ? 0 : k == CLIENT_STOPPED ? 1 : -1;
    if (rc == 0 && fsync(fd) != 0) rc = err_errno("cannot fsync %s", part);
    if (close(fd) != 0 && rc == 0) rc = err_errno("cannot close %s", part);
    return rc;
}

static double mb(uint64_t bytes) {
    return (double)bytes / 1e6;
}

/* Makes round r's base from version update_from and the round's low-rank
 * update, into dir's PART_FILE, verified against the base's hash. 0 done, 1
 * stop asked, 2 update_from is not here (nothing tried), -1 failed (err_msg
 * says why; the caller falls back to the full download). A download that
 * breaks off keeps its .part for the next try; an update or a result that
 * fails its check is removed. */
static int lowrank(node_ctx *n, const struct msg_round *r, const char *dir, const char *part) {
    char from[NODE_PATH_MAX], from_model[NODE_PATH_MAX], from_cfg[NODE_PATH_MAX],
        upart[NODE_PATH_MAX], tmp[NODE_PATH_MAX], made[NODE_PATH_MAX];
    char from_hex[2 * MSG_HASH_LEN + 1], to_hex[2 * MSG_HASH_LEN + 1],
        got_hex[2 * MSG_HASH_LEN + 1];
    if (node_version_dir(n, r->update_from, from) != 0 ||
        fio_join(from_model, sizeof from_model, from, MODEL_FILE) ||
        fio_join(from_cfg, sizeof from_cfg, from, CONFIG_FILE) ||
        fio_join(upart, sizeof upart, dir, UPDATE_PART) ||
        fio_join(tmp, sizeof tmp, dir, LOWRANK_DIR) || fio_join(made, sizeof made, tmp, MODEL_FILE))
        return -1;
    if (!fio_exists(from_model) || !fio_exists(from_cfg)) return 2;
    hex_encode(r->update_from, MSG_HASH_LEN, from_hex);
    hex_encode(r->base, MSG_HASH_LEN, to_hex);
    if (r->update_size > n->c->max_model_bytes)
        return err_set("the update is %llu bytes, over max_model_bytes %llu",
                       (unsigned long long)r->update_size,
                       (unsigned long long)n->c->max_model_bytes);
    node_log(n,
             "round %llu: making model version %.16s… from %.16s… and its %.1f MB low-rank update",
             (unsigned long long)r->round, to_hex, from_hex, mb(r->update_size));
    int k = download(n, r->update_hash, upart, r->update_size);
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
    /* The aggregator's own step: update_write_version, the same bytes. */
    if (node_remove_tree(tmp) != 0 || update_write_version(m, u, tmp, 1) != 0) goto done;
    model_free(m);
    m = NULL;
    if (crypto_sha256_file(made, got, NULL) != 0) goto done;
    if (memcmp(got, r->base, MSG_HASH_LEN) != 0) {
        hex_encode(got, MSG_HASH_LEN, got_hex);
        err_set("the version made from %.16s… and the update hashes to %.16s…, not to the "
                "round's base",
                from_hex, got_hex);
        goto done;
    }
    if (rename(made, part) != 0) {
        err_errno("cannot rename %s to %s", made, part);
        goto done;
    }
    rc = fio_fsync_dir_of(part);
done:
    update_free(u);
    model_free(m);
    char why[ERR_MSG_MAX];
    snprintf(why, sizeof why, "%s", err_msg()); /* the cleanup must not hide it */
    if (node_remove_tree(tmp) != 0 || (unlink(upart) != 0 && errno != ENOENT))
        node_log(n, "could not clean up after the low-rank sync: %s", err_msg());
    if (rc != 0) err_set("%s", why);
    return rc;
}

int node_sync(node_ctx *n, const struct msg_round *r) {
    char dir[NODE_PATH_MAX], model[NODE_PATH_MAX], part[NODE_PATH_MAX], cfg[NODE_PATH_MAX],
        src[NODE_PATH_MAX], upart[NODE_PATH_MAX], tmp[NODE_PATH_MAX], hex[2 * MSG_HASH_LEN + 1];
    const uint8_t *version = r->base;
    uint64_t round = r->round, start = n->download_bytes;
    hex_encode(version, MSG_HASH_LEN, hex);
    if (node_version_dir(n, version, dir) != 0 || fio_join(model, sizeof model, dir, MODEL_FILE) ||
        fio_join(part, sizeof part, dir, PART_FILE) ||
        fio_join(cfg, sizeof cfg, dir, CONFIG_FILE) ||
        fio_join(src, sizeof src, n->c->base_model, CONFIG_FILE) ||
        fio_join(upart, sizeof upart, dir, UPDATE_PART) ||
        fio_join(tmp, sizeof tmp, dir, LOWRANK_DIR))
        return -1;
    if (n->sync_round != round) {
        n->sync_round = round;
        snprintf(n->sync_method, sizeof n->sync_method, "held");
    }
    if (fio_exists(model) && fio_exists(cfg)) {
        if (!n->have_model || memcmp(n->have_version, version, MSG_HASH_LEN) != 0 ||
            n->have_round != round)
            return write_current(n, round, version);
        return 0;
    }
    if (fio_mkdirs(dir, 0755) != 0) return -1;
    /* A full download already under way (a .part) goes on as it is. */
    int made = 0;
    if (r->has_update && !fio_exists(part) && node_sync_prefer_update(n, r)) {
        int k = lowrank(n, r, dir, part);
        if (k == 1) return 1;
        made = k == 0;
        if (k < 0)
            node_log(n, "round %llu: low-rank sync failed (%s); downloading the full version",
                     (unsigned long long)round, err_msg());
    }
    /* Two tries: a .part left by an earlier run may hold bytes of a version
     * that failed its check; it is removed and fetched again once. */
    for (int attempt = 0; !made; attempt++) {
        node_log(n, "round %llu: syncing model version %.16s…", (unsigned long long)round, hex);
        int k = download(n, version, part, 0);
        if (k != 0) return k;
        uint8_t got[MSG_HASH_LEN];
        if (crypto_sha256_file(part, got, NULL) != 0) return -1;
        if (memcmp(got, version, MSG_HASH_LEN) == 0) break;
        if (unlink(part) != 0) return err_errno("cannot remove %s", part);
        if (attempt == 1)
            return err_set("model version %s: the downloaded bytes hash to something else twice; "
                           "the aggregator serves corrupt data",
                           hex);
        node_log(n, "the downloaded bytes do not match version %.16s…; fetching again", hex);
    }
    char *text;
    size_t len;
    if (fio_read_all(src, CONFIG_MAX, &text, &len) != 0)
        return err_context("the base model directory (base_model) must hold config.json");
    int rc = fio_write_atomic(cfg, text, len, 0644);
    free(text);
    if (rc != 0) return -1;
    if (rename(part, model) != 0) return err_errno("cannot rename %s to %s", part, model);
    if (fio_fsync_dir_of(model) != 0) return -1;
    /* What a low-rank try interrupted by a crash may have left. */
    if (node_remove_tree(tmp) != 0 || (unlink(upart) != 0 && errno != ENOENT))
        return err_errno("cannot clean up %s", dir);
    struct stat st;
    uint64_t size = stat(model, &st) == 0 ? (uint64_t)st.st_size : 0,
             moved = n->download_bytes - start;
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

int node_download(node_ctx *n, const uint8_t hash[MSG_HASH_LEN], const char *part,
                  uint64_t want_total) {
    return download(n, hash, part, want_total);
}
