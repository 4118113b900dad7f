/* members — the config's member list or the signed roster (members.h). */
#include "aggregator/members.h"

#include "aggregator/store.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/roster.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char name[KEYS_NAME_MAX + 1];
    uint8_t fp[KEYS_FP_LEN];
    keys_public pub;
} key_rec;

struct agg_roster {
    int from_roster; /* 0: the config's member list */
    char file[AGG_PATH_MAX], state[AGG_PATH_MAX];
    char consortium[PAYLOAD_CONSORTIUM_NAME_MAX + 1];
    uint8_t admin_fp[KEYS_FP_LEN];
    uint64_t version;
    uint8_t hash[KEYS_FP_LEN];
    uint64_t size;

    int n;
    agg_member *m; /* the version in force, revoked members included */

    int nkeys;
    key_rec *keys; /* every key any accepted version gave a member */

    int seen; /* the roster file's identity when last looked at */
    struct stat seen_st;
};

/* ---- building ---------------------------------------------------------------- */

static int add_key(agg_roster *r, const char *name, const keys_public *pub,
                   const uint8_t fp[KEYS_FP_LEN]) {
    for (int i = 0; i < r->nkeys; i++)
        if (memcmp(r->keys[i].fp, fp, KEYS_FP_LEN) == 0) return 0;
    key_rec *k = realloc(r->keys, (size_t)(r->nkeys + 1) * sizeof *k);
    if (!k) return err_set("out of memory for the key history");
    r->keys = k;
    key_rec *e = &r->keys[r->nkeys++];
    snprintf(e->name, sizeof e->name, "%s", name);
    memcpy(e->fp, fp, KEYS_FP_LEN);
    e->pub = *pub;
    return 0;
}

/* The members of ro as the view in force (keys added to the history). */
static int take_members(agg_roster *r, const roster *ro) {
    agg_member *m = calloc(ro->n_members ? ro->n_members : 1, sizeof *m);
    if (!m) return err_set("out of memory for %u members", ro->n_members);
    for (uint32_t i = 0; i < ro->n_members; i++) {
        const roster_member *x = &ro->members[i];
        snprintf(m[i].name, sizeof m[i].name, "%s", x->name);
        m[i].pub = x->pub;
        memcpy(m[i].fp, x->fp, KEYS_FP_LEN);
        m[i].max_weight = roster_weight(x);
        m[i].observer = x->role == ROSTER_ROLE_OBSERVER;
        m[i].active = x->active;
        if (add_key(r, x->name, &x->pub, x->fp) < 0) {
            free(m);
            return -1;
        }
    }
    free(r->m);
    r->m = m;
    r->n = (int)ro->n_members;
    r->version = ro->version;
    memcpy(r->hash, ro->hash, KEYS_FP_LEN);
    return 0;
}

static int history_path(const agg_roster *r, uint64_t version, char *out, size_t n) {
    if (snprintf(out, n, "%s/rosters/v%llu.roster", r->state, (unsigned long long)version) >=
        (int)n)
        return err_set("state path %s is too long", r->state);
    return 0;
}

/* Keeps an accepted version: STATE/rosters/v<N>.roster (the history) and
 * STATE/objects/<sha256> (what GET_MODEL serves), both durable before the
 * version is used. */
static int keep_version(agg_roster *r, const roster *ro, const char *text, size_t len) {
    char p[AGG_PATH_MAX], tmp[AGG_PATH_MAX];
    uint8_t h[32];
    if (history_path(r, ro->version, p, sizeof p) < 0 || fio_write_atomic(p, text, len, 0644) < 0 ||
        snprintf(tmp, sizeof tmp, "%s/tmp/roster-v%llu", r->state,
                 (unsigned long long)ro->version) >= (int)sizeof tmp ||
        fio_write_atomic(tmp, text, len, 0644) < 0 || store_put_object(r->state, tmp, h, NULL) < 0)
        return err_context("storing roster version %llu", (unsigned long long)ro->version);
    r->size = len;
    return 0;
}

/* Reads and verifies a roster file (any version) for this consortium. */
static int read_roster(const agg_roster *r, const char *path, uint64_t min_version, roster *ro,
                       char **text, size_t *len) {
    *text = NULL;
    if (fio_read_all(path, ROSTER_FILE_MAX, text, len) < 0)
        return err_context("reading roster %s", path);
    if (roster_parse(*text, *len, ro, path) < 0) goto fail;
    if (roster_verify(ro, r->admin_fp, min_version) < 0) {
        roster_free(ro);
        err_context("%s", path);
        goto fail;
    }
    if (strcmp(ro->consortium, r->consortium) != 0) {
        err_set("%s: roster version %llu is for consortium '%s', this aggregator serves '%s'; "
                "refused",
                path, (unsigned long long)ro->version, ro->consortium, r->consortium);
        roster_free(ro);
        goto fail;
    }
    return 0;
fail:
    free(*text);
    *text = NULL;
    return -1;
}

static int load_config_list(agg_roster *r, const agg_config *c) {
    r->m = calloc((size_t)c->n_members, sizeof *r->m);
    if (!r->m) return err_set("out of memory for the member list");
    for (int i = 0; i < c->n_members; i++) {
        agg_member *m = &r->m[i];
        if (keys_load_public(c->members[i].id_path, &m->pub) < 0 ||
            keys_fingerprint(&m->pub, m->fp) < 0)
            return err_context("%s: members[%d]", c->file, i);
        memcpy(m->name, m->pub.name, sizeof m->name);
        m->max_weight = c->members[i].max_weight;
        m->active = 1;
        for (int j = 0; j < i; j++)
            if (strcmp(r->m[j].name, m->name) == 0 || memcmp(r->m[j].fp, m->fp, KEYS_FP_LEN) == 0)
                return err_set("%s: members[%d] (%s) and members[%d] (%s) have the same %s",
                               c->file, j, r->m[j].name, i, m->name,
                               strcmp(r->m[j].name, m->name) == 0 ? "name" : "keys");
        r->n++;
        if (add_key(r, m->name, &m->pub, m->fp) < 0) return -1;
    }
    return 0;
}

/* Every stored version, oldest first into the key history; the newest one
 * becomes the version in force. 0 with r->version 0 when none is stored. */
static int load_history(agg_roster *r) {
    char dir[AGG_PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s/rosters", r->state) >= (int)sizeof dir)
        return err_set("state path %s is too long", r->state);
    if (fio_mkdirs(dir, 0700) < 0) return -1;
    DIR *d = opendir(dir);
    if (!d) return err_errno("listing %s", dir);
    uint64_t *vs = NULL;
    size_t nv = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        unsigned long long v;
        char tail[16];
        if (sscanf(e->d_name, "v%llu.%15s", &v, tail) != 2 || strcmp(tail, "roster") != 0) continue;
        uint64_t *g = realloc(vs, (nv + 1) * sizeof *vs);
        if (!g) {
            rc = err_set("out of memory listing %s", dir);
            break;
        }
        vs = g;
        vs[nv++] = v;
    }
    closedir(d);
    /* Oldest first, so the history's names follow the versions. */
    for (size_t i = 1; rc == 0 && i < nv; i++)
        for (size_t j = i; j > 0 && vs[j - 1] > vs[j]; j--) {
            uint64_t t = vs[j];
            vs[j] = vs[j - 1];
            vs[j - 1] = t;
        }
    for (size_t i = 0; rc == 0 && i < nv; i++) {
        char p[AGG_PATH_MAX], *text;
        size_t len;
        roster ro;
        if (history_path(r, vs[i], p, sizeof p) < 0 || read_roster(r, p, 0, &ro, &text, &len) < 0) {
            rc = err_context("the state directory's roster history is damaged");
            break;
        }
        free(text);
        if (ro.version != vs[i])
            rc = err_set("%s holds roster version %llu: the state directory is damaged", p,
                         (unsigned long long)ro.version);
        else if (take_members(r, &ro) < 0)
            rc = -1;
        else
            r->size = len;
        roster_free(&ro);
    }
    free(vs);
    return rc;
}

int agg_roster_load(agg_roster **out, const agg_config *c, int history_only) {
    agg_roster *r = calloc(1, sizeof *r);
    if (!r) return err_set("out of memory for the member list");
    if (!c->has_roster) {
        if (load_config_list(r, c) < 0) goto fail;
        *out = r;
        return 0;
    }
    r->from_roster = 1;
    snprintf(r->file, sizeof r->file, "%s", c->roster_path);
    snprintf(r->state, sizeof r->state, "%s", c->state);
    snprintf(r->consortium, sizeof r->consortium, "%s", c->consortium_name);
    memcpy(r->admin_fp, c->roster_admin, KEYS_FP_LEN);
    if (load_history(r) < 0) goto fail;
    if (history_only) {
        if (r->version == 0) {
            err_set("%s/rosters holds no roster version: nothing to recompute with", c->state);
            goto fail;
        }
        *out = r;
        return 0;
    }
    char summary[256];
    int got = agg_roster_reload(r, 1, summary, sizeof summary);
    if (got < 0) {
        if (r->version == 0) goto fail; /* nothing verified to run with */
        fprintf(stderr, "aggregator: roster file refused, version %llu stays in force: %s\n",
                (unsigned long long)r->version, err_msg());
    }
    *out = r;
    return 0;
fail:
    agg_roster_free(r);
    return -1;
}

void agg_roster_free(agg_roster *r) {
    if (!r) return;
    free(r->m);
    free(r->keys);
    free(r);
}

static int copy_roster(const agg_roster *r, agg_roster **out) {
    agg_roster *c = malloc(sizeof *c);
    if (!c) return err_set("out of memory");
    *c = *r;
    c->m = malloc((size_t)(r->n ? r->n : 1) * sizeof *c->m);
    c->keys = malloc((size_t)(r->nkeys ? r->nkeys : 1) * sizeof *c->keys);
    if (!c->m || !c->keys) {
        agg_roster_free(c);
        return err_set("out of memory");
    }
    memcpy(c->m, r->m, (size_t)r->n * sizeof *c->m);
    memcpy(c->keys, r->keys, (size_t)r->nkeys * sizeof *c->keys);
    *out = c;
    return 0;
}

int agg_roster_at(const agg_roster *r, uint64_t version, agg_roster **out) {
    if (!r->from_roster || version == 0 || version == r->version) return copy_roster(r, out);
    agg_roster *c;
    if (copy_roster(r, &c) < 0) return -1;
    char p[AGG_PATH_MAX], *text;
    size_t len;
    roster ro;
    if (history_path(r, version, p, sizeof p) < 0 || read_roster(r, p, 0, &ro, &text, &len) < 0) {
        agg_roster_free(c);
        return err_context("roster version %llu, which the journal names",
                           (unsigned long long)version);
    }
    free(text);
    int rc = take_members(c, &ro);
    roster_free(&ro);
    if (rc < 0) {
        agg_roster_free(c);
        return -1;
    }
    c->size = len;
    *out = c;
    return 0;
}

/* ---- reloading ----------------------------------------------------------------- */

static const agg_member *by_name(const agg_roster *r, const char *name) {
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->m[i].name, name) == 0) return &r->m[i];
    return NULL;
}

/* "added uni-d; revoked uni-b; rotated uni-a" between the view in force and ro. */
static void describe(const agg_roster *r, const roster *ro, char *s, size_t n) {
    size_t used = 0;
    s[0] = '\0';
#define SAY(...)                                                                                   \
    do {                                                                                           \
        if (used < n) {                                                                            \
            int k = snprintf(s + used, n - used, "%s", used ? "; " : "");                          \
            if (k > 0) used += (size_t)k;                                                          \
            if (used < n) {                                                                        \
                k = snprintf(s + used, n - used, __VA_ARGS__);                                     \
                if (k > 0) used += (size_t)k;                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)
    for (uint32_t i = 0; i < ro->n_members; i++) {
        const roster_member *x = &ro->members[i];
        const agg_member *old = by_name(r, x->name);
        if (!old)
            SAY("added %s%s", x->name, x->active ? "" : " (revoked)");
        else if (old->active && !x->active)
            SAY("revoked %s", x->name);
        else if (memcmp(old->fp, x->fp, KEYS_FP_LEN) != 0)
            SAY("rotated the keys of %s", x->name);
        else if (old->max_weight != roster_weight(x))
            SAY("changed the max weight of %s", x->name);
    }
    if (!used) SAY("no change to members");
#undef SAY
}

int agg_roster_reload(agg_roster *r, int force, char *summary, size_t n) {
    if (n) summary[0] = '\0';
    if (!r->from_roster) return 0;
    struct stat st;
    if (stat(r->file, &st) != 0) {
        int e = errno;
        if (r->seen && !force) return 0; /* said once already; keep what is in force */
        r->seen = 1;
        memset(&r->seen_st, 0, sizeof r->seen_st);
        errno = e;
        return err_errno("roster file %s", r->file);
    }
    if (!force && r->seen && st.st_dev == r->seen_st.st_dev && st.st_ino == r->seen_st.st_ino &&
        st.st_size == r->seen_st.st_size && st.st_mtim.tv_sec == r->seen_st.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == r->seen_st.st_mtim.tv_nsec)
        return 0;
    /* Remembered before reading: a refused file is refused once, not every
     * time we look, until it changes again. */
    r->seen = 1;
    r->seen_st = st;
    roster ro;
    char *text;
    size_t len;
    if (read_roster(r, r->file, r->version, &ro, &text, &len) < 0) return -1;
    int rc = -1;
    if (ro.version == r->version) {
        if (memcmp(ro.hash, r->hash, KEYS_FP_LEN) == 0)
            rc = 0;
        else
            err_set("%s: roster version %llu differs from the version %llu in force (same "
                    "number, other content): refused; the admin issues each change as a new "
                    "version",
                    r->file, (unsigned long long)ro.version, (unsigned long long)r->version);
        goto done;
    }
    if (r->version != 0 && ro.version == r->version + 1) {
        /* Consecutive versions: their hash chain must hold too. */
        char p[AGG_PATH_MAX], *ptext;
        size_t plen;
        roster prev;
        if (history_path(r, r->version, p, sizeof p) < 0 ||
            read_roster(r, p, 0, &prev, &ptext, &plen) < 0)
            goto done;
        free(ptext);
        int ok = roster_check_chain(&prev, &ro);
        roster_free(&prev);
        if (ok < 0) {
            err_context("%s", r->file);
            goto done;
        }
    }
    char what[256];
    describe(r, &ro, what, sizeof what);
    if (n) snprintf(summary, n, "version %llu: %s", (unsigned long long)ro.version, what);
    if (keep_version(r, &ro, text, len) < 0 || take_members(r, &ro) < 0) goto done;
    rc = 1;
done:
    free(text);
    roster_free(&ro);
    return rc;
}

/* ---- lookups -------------------------------------------------------------------- */

int agg_roster_find(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN], agg_member *m) {
    for (int i = 0; i < r->n; i++)
        if (r->m[i].active && memcmp(r->m[i].fp, fp, KEYS_FP_LEN) == 0) {
            *m = r->m[i];
            return 1;
        }
    return 0;
}

int agg_roster_find_kx(const agg_roster *r, const uint8_t kx_pub[32], agg_member *m) {
    for (int i = 0; i < r->n; i++)
        if (r->m[i].active && memcmp(r->m[i].pub.kx_pub, kx_pub, 32) == 0) {
            *m = r->m[i];
            return 1;
        }
    return 0;
}

int agg_roster_find_name(const agg_roster *r, const char *name, agg_member *m) {
    const agg_member *x = by_name(r, name);
    if (!x || !x->active) return 0;
    *m = *x;
    return 1;
}

int agg_roster_key_owner(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN], agg_member *m) {
    for (int i = 0; i < r->nkeys; i++)
        if (memcmp(r->keys[i].fp, fp, KEYS_FP_LEN) == 0) {
            const agg_member *x = by_name(r, r->keys[i].name);
            if (!x) return 0; /* a later version cannot drop a name; only a damaged history */
            *m = *x;
            m->pub = r->keys[i].pub; /* the key that signed, not the current one */
            memcpy(m->fp, fp, KEYS_FP_LEN);
            return 1;
        }
    return 0;
}

const char *agg_roster_key_status(const agg_roster *r, const uint8_t fp[KEYS_FP_LEN]) {
    agg_member m;
    if (agg_roster_key_owner(r, fp, &m) != 1) return "unknown";
    if (!m.active) return "revoked";
    const agg_member *cur = by_name(r, m.name);
    if (memcmp(cur->fp, fp, KEYS_FP_LEN) != 0) return "rotated";
    return m.observer ? "observer" : "active";
}

const char *agg_roster_kx_status(const agg_roster *r, const uint8_t kx_pub[32]) {
    for (int i = 0; i < r->nkeys; i++)
        if (memcmp(r->keys[i].pub.kx_pub, kx_pub, 32) == 0)
            return agg_roster_key_status(r, r->keys[i].fp);
    return "unknown";
}

int agg_roster_size(const agg_roster *r) {
    return r->n;
}

const agg_member *agg_roster_entry(const agg_roster *r, int i) {
    return &r->m[i];
}

int agg_roster_count(const agg_roster *r) {
    int k = 0;
    for (int i = 0; i < r->n; i++) k += r->m[i].active && !r->m[i].observer;
    return k;
}

uint64_t agg_roster_version(const agg_roster *r) {
    return r->from_roster ? r->version : 0;
}

int agg_roster_hash(const agg_roster *r, uint8_t hash[KEYS_FP_LEN], uint64_t *size) {
    if (!r->from_roster || r->version == 0) return 0;
    memcpy(hash, r->hash, KEYS_FP_LEN);
    *size = r->size;
    return 1;
}
