/* fedlora roster init|add|revoke|rotate|list|verify — the consortium admin's
 * signed, versioned member list (wire/roster.h; docs/onboarding.md).
 *
 * Every change loads the roster, checks it against the admin key given with
 * --admin (the admin pins itself), makes version + 1 with the hash of the
 * file it replaces, signs it and replaces the file atomically. */
#include "cli/commands.h"
#include "cli/opts.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/keys.h"
#include "wire/roster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char USAGE[] =
    "usage: fedlora roster <action> [options]\n\n"
    "The consortium's signed, versioned list of members. Each change writes the next\n"
    "version, chained to the previous one by its SHA-256 and signed by the admin.\n\n"
    "  init    --admin DIR/NAME --consortium ID --out FILE\n"
    "  add     --roster FILE --admin DIR/NAME --member ID_FILE\n"
    "          [--role member|observer] [--max-weight W] [--fingerprint HEX]\n"
    "  revoke  --roster FILE --admin DIR/NAME --name NAME\n"
    "  rotate  --roster FILE --admin DIR/NAME --name NAME --member NEW_ID_FILE\n"
    "  list    --roster FILE [--admin-fingerprint HEX]\n"
    "  verify  --roster FILE --admin-fingerprint HEX [--min-version N] [--previous FILE]\n\n"
    "  --admin DIR/NAME       the admin's identity (fedlora keygen --name NAME --out DIR)\n"
    "  --member ID_FILE       the member's public identity file (NAME.id) it sent you\n"
    "  --fingerprint HEX      the fingerprint the member read to you: refused if it differs\n"
    "  --max-weight W         cap on the member's aggregation weight, in (0, 1] (default 1)\n"
    "  --admin-fingerprint H  the admin's fingerprint you pinned: the 64 hex digits\n"
    "                         `fedlora keygen` printed (spaces allowed)\n"
    "  --min-version N        refuse a roster older than version N (no rollback)\n"
    "  --previous FILE        also check that FILE's version is the one right before\n";

/* --admin DIR/NAME → the secret keys in DIR/NAME.{sign.pem,kx.pem,id}. */
static int load_admin(const char *spec, keys_secret *k) {
    char dir[4096];
    const char *slash = strrchr(spec, '/');
    const char *name = slash ? slash + 1 : spec;
    size_t dn = slash ? (size_t)(slash - spec) : 0;
    if (dn >= sizeof dir) return err_set("--admin: path too long");
    if (slash) {
        memcpy(dir, spec, dn);
        dir[dn] = '\0';
        if (dn == 0) snprintf(dir, sizeof dir, "/");
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    if (keys_load_secret(dir, name, k) < 0)
        return err_context("--admin %s (give DIR/NAME of a `fedlora keygen` identity)", spec);
    return 0;
}

static void print_fp(const char *label, const uint8_t fp[KEYS_FP_LEN]) {
    char t[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(fp, t);
    printf("%s%s\n", label, t);
}

static void print_written(const char *path, const roster *r) {
    printf("wrote %s: version %llu of consortium '%s', %u members, signed by admin '%s'\n", path,
           (unsigned long long)r->version, r->consortium, (unsigned)r->n_members, r->admin.name);
}

static int roster_cmd_init(int argc, char **argv) {
    const char *admin = NULL, *consortium = NULL, *out = NULL;
    const opts_spec spec[] = {
        {"admin", &admin, NULL}, {"consortium", &consortium, NULL}, {"out", &out, NULL}};
    int rc = opts_parse(argc, argv, spec, 3, USAGE);
    if (rc >= 0) return rc;
    if (!admin || !consortium || !out) return opts_missing(USAGE, "--admin, --consortium or --out");
    if (fio_exists(out)) {
        err_set("%s exists: a roster is started once; change it with add, revoke or rotate", out);
        return opts_fail();
    }
    keys_secret k;
    roster r;
    if (load_admin(admin, &k) < 0) return opts_fail();
    rc = roster_init(&r, consortium, &k.pub, (int64_t)time(NULL));
    if (rc == 0) rc = roster_write(&r, &k, out);
    keys_secret_wipe(&k);
    if (rc < 0) return opts_fail();
    print_written(out, &r);
    print_fp("admin fingerprint: ", r.admin_fp);
    printf("Nodes and the aggregator pin this fingerprint (--admin-fingerprint).\n");
    roster_free(&r);
    return 0;
}

/* The change commands: load FILE checked against --admin's own key, start
 * the next version, apply, sign, replace. */
enum change { CHANGE_ADD, CHANGE_REVOKE, CHANGE_ROTATE };

static int roster_cmd_change(int argc, char **argv, enum change what) {
    const char *file = NULL, *admin = NULL, *member = NULL, *name = NULL, *role = NULL,
               *weight = NULL, *fp_text = NULL;
    opts_spec spec[7] = {{"roster", &file, NULL}, {"admin", &admin, NULL}};
    int n = 2;
    if (what == CHANGE_REVOKE || what == CHANGE_ROTATE)
        spec[n++] = (opts_spec){"name", &name, NULL};
    if (what == CHANGE_ADD || what == CHANGE_ROTATE)
        spec[n++] = (opts_spec){"member", &member, NULL};
    if (what == CHANGE_ADD) {
        spec[n++] = (opts_spec){"role", &role, NULL};
        spec[n++] = (opts_spec){"max-weight", &weight, NULL};
    }
    if (what != CHANGE_REVOKE) spec[n++] = (opts_spec){"fingerprint", &fp_text, NULL};
    int rc = opts_parse(argc, argv, spec, n, USAGE);
    if (rc >= 0) return rc;
    if (!file || !admin) return opts_missing(USAGE, "--roster or --admin");
    if (what != CHANGE_ADD && !name) return opts_missing(USAGE, "--name");
    if (what != CHANGE_REVOKE && !member) return opts_missing(USAGE, "--member");

    roster_role r_role = ROSTER_ROLE_MEMBER;
    if (role && !strcmp(role, "observer"))
        r_role = ROSTER_ROLE_OBSERVER;
    else if (role && strcmp(role, "member") != 0) {
        err_set("--role must be member or observer, got '%s'", role);
        return opts_fail();
    }
    uint32_t max_weight = ROSTER_WEIGHT_ONE;
    if (weight) {
        double w;
        if (opts_double(weight, "--max-weight", 1e-6, 1.0, &w) < 0) return opts_fail();
        double micro = w * ROSTER_WEIGHT_ONE;
        max_weight = (uint32_t)(micro + 0.5);
        if (micro - max_weight > 1e-6 || max_weight - micro > 1e-6) {
            err_set("--max-weight has more than 6 decimals: '%s'", weight);
            return opts_fail();
        }
    }
    uint8_t expect_fp[KEYS_FP_LEN];
    if (fp_text && roster_fingerprint_parse(fp_text, expect_fp) < 0) {
        err_context("--fingerprint");
        return opts_fail();
    }

    keys_public pub;
    uint8_t fp[KEYS_FP_LEN];
    if (member && (keys_load_public(member, &pub) < 0 || keys_fingerprint(&pub, fp) < 0)) {
        err_context("--member");
        return opts_fail();
    }
    if (member && fp_text && memcmp(fp, expect_fp, KEYS_FP_LEN) != 0) {
        char got[KEYS_FP_TEXT_LEN], want[KEYS_FP_TEXT_LEN];
        keys_fingerprint_text(fp, got);
        keys_fingerprint_text(expect_fp, want);
        err_set("%s has fingerprint %s, not the %s given with --fingerprint: these are not the "
                "keys the member made; do not add them, ask the member to send the .id again",
                member, got, want);
        return opts_fail();
    }

    keys_secret k;
    if (load_admin(admin, &k) < 0) return opts_fail();
    uint8_t admin_fp[KEYS_FP_LEN];
    roster r;
    int64_t now = (int64_t)time(NULL);
    rc = keys_fingerprint(&k.pub, admin_fp);
    if (rc == 0) {
        rc = roster_load(file, admin_fp, 0, &r);
        if (rc < 0) err_context("checking against --admin %s", admin);
    }
    if (rc == 0) {
        uint64_t before = r.version;
        rc = roster_next_version(&r, now);
        if (rc == 0 && what == CHANGE_ADD) rc = roster_add(&r, &pub, r_role, max_weight, now);
        if (rc == 0 && what == CHANGE_REVOKE) rc = roster_revoke(&r, name, now);
        if (rc == 0 && what == CHANGE_ROTATE) rc = roster_rotate(&r, name, &pub, now);
        if (rc == 0) rc = roster_write(&r, &k, file);
        if (rc < 0)
            err_context("%s (version %llu, unchanged)", file, (unsigned long long)before);
        else
            print_written(file, &r);
        if (rc == 0 && what == CHANGE_ADD) {
            printf("added '%s' (%s, max weight %s)\n", pub.name, roster_role_name(r_role),
                   weight ? weight : "1");
            print_fp("fingerprint: ", fp);
            if (!fp_text)
                printf("Check that the member read you this same fingerprint over a channel you "
                       "trust.\n");
        }
        if (rc == 0 && what == CHANGE_REVOKE) printf("revoked '%s'\n", name);
        if (rc == 0 && what == CHANGE_ROTATE) {
            printf("rotated the keys of '%s'\n", name);
            print_fp("new fingerprint: ", fp);
        }
        roster_free(&r);
    }
    keys_secret_wipe(&k);
    if (rc < 0) return opts_fail();
    printf("Distribute %s to the aggregator and the nodes.\n", file);
    return 0;
}

static void print_roster(const roster *r) {
    char date[21], prev[2 * CRYPTO_SHA256_LEN + 1] = "none", w[10];
    if (r->version > 1)
        for (int i = 0; i < CRYPTO_SHA256_LEN; i++)
            snprintf(prev + 2 * i, 3, "%02x", r->previous[i]);
    roster_date_format(r->issued, date);
    unsigned active = 0;
    for (uint32_t i = 0; i < r->n_members; i++) active += (unsigned)r->members[i].active;
    printf("consortium: %s\nversion: %llu (issued %s)\nprevious: %s\n", r->consortium,
           (unsigned long long)r->version, date, prev);
    printf("admin: %s\n", r->admin.name);
    print_fp("admin fingerprint: ", r->admin_fp);
    printf("members: %u (%u active)\n", (unsigned)r->n_members, active);
    for (uint32_t i = 0; i < r->n_members; i++) {
        const roster_member *m = &r->members[i];
        roster_weight_format(m->max_weight, w);
        printf("\n  %s\n    role %s, max weight %s, %s\n", m->name, roster_role_name(m->role), w,
               m->active ? "active" : "REVOKED");
        print_fp("    fingerprint ", m->fp);
        roster_date_format(m->added, date);
        printf("    added %s", date);
        if (m->rotated) {
            roster_date_format(m->rotated, date);
            printf(", keys rotated %s", date);
        }
        if (m->revoked) {
            roster_date_format(m->revoked, date);
            printf(", revoked %s", date);
        }
        printf("\n");
    }
}

static int roster_cmd_list(int argc, char **argv) {
    const char *file = NULL, *fp_text = NULL;
    const opts_spec spec[] = {{"roster", &file, NULL}, {"admin-fingerprint", &fp_text, NULL}};
    int rc = opts_parse(argc, argv, spec, 2, USAGE);
    if (rc >= 0) return rc;
    if (!file) return opts_missing(USAGE, "--roster");
    uint8_t fp[KEYS_FP_LEN];
    roster r;
    if (fp_text) {
        if (roster_fingerprint_parse(fp_text, fp) < 0) {
            err_context("--admin-fingerprint");
            return opts_fail();
        }
        if (roster_load(file, fp, 0, &r) < 0) return opts_fail();
    } else {
        /* Nothing pinned: check the signature against the admin key the
         * file names, and say that this alone proves nothing about who. */
        char *text;
        size_t len;
        if (fio_read_all(file, ROSTER_FILE_MAX, &text, &len) < 0) return opts_fail();
        rc = roster_parse(text, len, &r, file);
        free(text);
        if (rc < 0) return opts_fail();
        if (roster_verify(&r, r.admin_fp, 0) < 0) {
            roster_free(&r);
            err_context("%s", file);
            return opts_fail();
        }
    }
    print_roster(&r);
    printf("\nsignature: valid, by the admin key above%s\n",
           fp_text ? ", which matches --admin-fingerprint"
                   : " (NOT pinned: compare the admin fingerprint out of band, or pass "
                     "--admin-fingerprint)");
    roster_free(&r);
    return 0;
}

static int roster_cmd_verify(int argc, char **argv) {
    const char *file = NULL, *fp_text = NULL, *min_text = NULL, *prev_file = NULL;
    const opts_spec spec[] = {{"roster", &file, NULL},
                              {"admin-fingerprint", &fp_text, NULL},
                              {"min-version", &min_text, NULL},
                              {"previous", &prev_file, NULL}};
    int rc = opts_parse(argc, argv, spec, 4, USAGE);
    if (rc >= 0) return rc;
    if (!file || !fp_text) return opts_missing(USAGE, "--roster or --admin-fingerprint");
    uint8_t fp[KEYS_FP_LEN];
    long long min_version = 0;
    if (roster_fingerprint_parse(fp_text, fp) < 0) {
        err_context("--admin-fingerprint");
        return opts_fail();
    }
    if (min_text &&
        opts_int(min_text, "--min-version", 0, (long long)ROSTER_VERSION_MAX, &min_version) < 0)
        return opts_fail();
    roster r, prev;
    if (roster_load(file, fp, (uint64_t)min_version, &r) < 0) return opts_fail();
    if (prev_file) {
        rc = roster_load(prev_file, fp, 0, &prev);
        if (rc == 0) {
            rc = roster_check_chain(&prev, &r);
            if (rc < 0) err_context("%s after %s", file, prev_file);
            roster_free(&prev);
        }
        if (rc < 0) {
            roster_free(&r);
            return opts_fail();
        }
    }
    unsigned active = 0;
    for (uint32_t i = 0; i < r.n_members; i++) active += (unsigned)r.members[i].active;
    printf("%s: valid: version %llu of consortium '%s', signed by the pinned admin '%s', "
           "%u members (%u active)%s\n",
           file, (unsigned long long)r.version, r.consortium, r.admin.name, (unsigned)r.n_members,
           active, prev_file ? ", follows the previous version" : "");
    roster_free(&r);
    return 0;
}

int cmd_roster(int argc, char **argv) {
    static char names[][16] = {"roster init",   "roster add",  "roster revoke",
                               "roster rotate", "roster list", "roster verify"};
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(USAGE, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(argv[1], names[i] + 7) != 0) continue;
        argv[1] = names[i]; /* "fedlora roster add: ..." in messages */
        switch (i) {
            case 0:
                return roster_cmd_init(argc - 1, argv + 1);
            case 1:
                return roster_cmd_change(argc - 1, argv + 1, CHANGE_ADD);
            case 2:
                return roster_cmd_change(argc - 1, argv + 1, CHANGE_REVOKE);
            case 3:
                return roster_cmd_change(argc - 1, argv + 1, CHANGE_ROTATE);
            case 4:
                return roster_cmd_list(argc - 1, argv + 1);
            default:
                return roster_cmd_verify(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "fedlora roster: unknown action '%s'\n\n%s", argv[1], USAGE);
    return 2;
}
