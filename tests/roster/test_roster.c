/* The signed, versioned roster (wire/roster.h) and `fedlora roster`
 * (cli/cmd_roster.c, linked in directly): a round trip through every action,
 * then each refusal with its message — a roster signed by a non-admin key,
 * rollback to an older version, a flipped byte anywhere, a broken hash chain,
 * duplicate names or keys, malformed and non-canonical files. */
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/keys.h"
#include "wire/roster.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int cmd_roster(int argc, char **argv);

static char dir[TS_PATH];
static char out_text[16384], err_text[16384];
static uint8_t admin_fp[KEYS_FP_LEN];

static void slurp_into(const char *path, char *buf, size_t cap) {
    char *text;
    size_t len;
    buf[0] = '\0';
    if (fio_read_all(path, 1 << 20, &text, &len) == 0) {
        snprintf(buf, cap, "%s", text);
        free(text);
    }
    unlink(path);
}

/* Runs `fedlora roster ARGS...` (NULL-terminated) with stdout and stderr
 * captured into out_text and err_text. */
static int run(const char *first, ...) {
    char *argv[32];
    int argc = 0;
    argv[argc++] = "roster";
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 31; a = va_arg(ap, const char *))
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    char po[TS_PATH], pe[512];
    ts_in(po, dir, "stdout.txt");
    ts_in(pe, dir, "stderr.txt");
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0644),
        fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);
    close(fo);
    close(fe);
    int rc = cmd_roster(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    slurp_into(po, out_text, sizeof out_text);
    slurp_into(pe, err_text, sizeof err_text);
    return rc;
}

static char *slurp(const char *file, size_t *len) {
    char p[TS_PATH], *text;
    ts_in(p, dir, file);
    return fio_read_all(p, 1 << 21, &text, len) == 0 ? text : NULL;
}

static void copy_file(const char *from, const char *to) {
    size_t len;
    char *text = slurp(from, &len), p[512];
    ts_in(p, dir, to);
    CHECK(text && fio_write_atomic(p, text, len, 0644) == 0);
    free(text);
}

static void make_identity(const char *name) {
    keys_secret k;
    CHECK_OK(keys_generate(name, &k));
    CHECK_OK(keys_write(&k, dir));
    keys_secret_wipe(&k);
}

static void fp_of(const char *name, uint8_t fp[KEYS_FP_LEN], char text[KEYS_FP_TEXT_LEN]) {
    char p[TS_PATH], file[KEYS_NAME_MAX + 8];
    keys_public pub;
    snprintf(file, sizeof file, "%s.id", name);
    ts_in(p, dir, file);
    CHECK_OK(keys_load_public(p, &pub));
    CHECK_OK(keys_fingerprint(&pub, fp));
    if (text) keys_fingerprint_text(fp, text);
}

/* Loads dir/file against the real admin. */
static int load(const char *file, uint64_t min_version, roster *r) {
    char p[TS_PATH];
    ts_in(p, dir, file);
    return roster_load(p, admin_fp, min_version, r);
}

static char P_ROSTER[TS_PATH], P_ADMIN[TS_PATH], P_MALLORY[TS_PATH], ID_A[TS_PATH], ID_B[TS_PATH],
    ID_B2[TS_PATH], ID_C[TS_PATH];

static void test_round_trip(void) {
    char admin_text[KEYS_FP_TEXT_LEN], a_text[KEYS_FP_TEXT_LEN];
    uint8_t fp_a[KEYS_FP_LEN], fp_b[KEYS_FP_LEN], fp_b2[KEYS_FP_LEN];
    fp_of("admin", admin_fp, admin_text);
    fp_of("uni-a", fp_a, a_text);
    fp_of("uni-b", fp_b, NULL);
    fp_of("uni-b2", fp_b2, NULL);

    CHECK(run("init", "--admin", P_ADMIN, "--consortium", "swiss llm", "--out", P_ROSTER, NULL) ==
          0);
    CHECK(strstr(out_text, "version 1 of consortium 'swiss llm'") != NULL);
    CHECK(strstr(out_text, admin_text) != NULL); /* the admin fingerprint, to pin */
    copy_file("roster", "v1");
    /* A roster is started once. */
    CHECK(run("init", "--admin", P_ADMIN, "--consortium", "x", "--out", P_ROSTER, NULL) == 1);
    CHECK(strstr(err_text, "exists") != NULL);

    /* add, with the fingerprint the member read aloud */
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_A, "--fingerprint",
              a_text, NULL) == 0);
    CHECK(strstr(out_text, "version 2") && strstr(out_text, a_text));
    copy_file("roster", "v2");
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_B, "--role",
              "observer", "--max-weight", "0.25", NULL) == 0);
    copy_file("roster", "v3");
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_C, NULL) == 0);
    copy_file("roster", "v4");
    CHECK(run("revoke", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "uni-a", NULL) == 0);
    CHECK(strstr(out_text, "version 5") && strstr(out_text, "revoked 'uni-a'"));
    copy_file("roster", "v5");
    CHECK(run("rotate", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "uni-b", "--member",
              ID_B2, NULL) == 0);
    copy_file("roster", "v6");

    roster r;
    CHECK_OK(load("roster", 6, &r));
    CHECK(r.version == 6 && r.n_members == 3 && !strcmp(r.consortium, "swiss llm"));
    CHECK(!strcmp(r.admin.name, "admin") && !memcmp(r.admin_fp, admin_fp, KEYS_FP_LEN));
    const roster_member *m = roster_find_member(&r, fp_a);
    CHECK(m && !strcmp(m->name, "uni-a") && !m->active && m->revoked >= m->added && m->added > 0);
    CHECK(roster_find_member(&r, fp_b) == NULL); /* rotated away */
    m = roster_find_member(&r, fp_b2);
    CHECK(m && !strcmp(m->name, "uni-b") && m->active && m->role == ROSTER_ROLE_OBSERVER);
    CHECK(m && m->max_weight == 250000 && roster_weight(m) == 0.25 && m->rotated > 0);
    m = roster_find_name(&r, "uni-c");
    CHECK(m && m->active && m->role == ROSTER_ROLE_MEMBER && m->max_weight == ROSTER_WEIGHT_ONE);
    CHECK(roster_find_name(&r, "uni-d") == NULL);

    /* The canonical encoding of what was read is the file, byte for byte. */
    size_t len, elen;
    char *text = slurp("roster", &len), *enc;
    CHECK_OK(roster_encode(&r, &enc, &elen));
    CHECK(text && elen == len && memcmp(text, enc, len) == 0);
    free(enc);
    free(text);
    roster_free(&r);

    /* Every version chains to the one before it. */
    for (int v = 1; v < 6; v++) {
        char a[8], b[8];
        roster older, newer;
        snprintf(a, sizeof a, "v%d", v);
        snprintf(b, sizeof b, "v%d", v + 1);
        CHECK_OK(load(a, 0, &older));
        CHECK_OK(load(b, 0, &newer));
        CHECK(older.version == (uint64_t)v && newer.version == (uint64_t)v + 1);
        CHECK_OK(roster_check_chain(&older, &newer));
        roster_free(&older);
        roster_free(&newer);
    }

    CHECK(run("list", "--roster", P_ROSTER, NULL) == 0);
    CHECK(strstr(out_text, "uni-a") && strstr(out_text, "REVOKED") &&
          strstr(out_text, "NOT pinned"));
    CHECK(run("list", "--roster", P_ROSTER, "--admin-fingerprint", admin_text, NULL) == 0);
    CHECK(strstr(out_text, "matches --admin-fingerprint") &&
          strstr(out_text, "members: 3 (2 active)"));
    char p5[TS_PATH];
    ts_in(p5, dir, "v5");
    CHECK(run("verify", "--roster", P_ROSTER, "--admin-fingerprint", admin_text, "--min-version",
              "6", "--previous", p5, NULL) == 0);
    CHECK(strstr(out_text, "valid: version 6") && strstr(out_text, "follows the previous version"));
}

static void test_refusals_cli(void) {
    char admin_text[KEYS_FP_TEXT_LEN], mallory_text[KEYS_FP_TEXT_LEN], p[512];
    uint8_t fp[KEYS_FP_LEN];
    fp_of("admin", fp, admin_text);
    fp_of("mallory", fp, mallory_text);
    size_t len0, len1;
    char *before = slurp("roster", &len0);

    /* Another identity cannot change the roster. */
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_MALLORY, "--member", ID_A, NULL) == 1);
    CHECK(strstr(err_text, "not the pinned admin") != NULL);
    /* Keys the member did not make (fingerprint read aloud differs). */
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_A, "--fingerprint",
              mallory_text, NULL) == 1);
    CHECK(strstr(err_text, "not the keys the member made") != NULL);
    /* Duplicates: a revoked member's name and keys stay taken. */
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_A, NULL) == 1);
    CHECK(strstr(err_text, "a member named 'uni-a' is already in the roster") != NULL);
    CHECK(run("revoke", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "uni-a", NULL) == 1);
    CHECK(strstr(err_text, "already revoked") != NULL);
    CHECK(run("revoke", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "nobody", NULL) == 1);
    CHECK(strstr(err_text, "no member named 'nobody'") != NULL);
    CHECK(run("rotate", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "uni-a", "--member",
              ID_C, NULL) == 1);
    CHECK(strstr(err_text, "is revoked") != NULL);
    /* Rotating to keys another member has. */
    CHECK(run("rotate", "--roster", P_ROSTER, "--admin", P_ADMIN, "--name", "uni-b", "--member",
              ID_C, NULL) == 1);
    CHECK(strstr(err_text, "already in the roster as 'uni-c'") != NULL);
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_C, "--max-weight",
              "0.1234567", NULL) == 1);
    CHECK(strstr(err_text, "more than 6 decimals") != NULL);
    CHECK(run("add", "--roster", P_ROSTER, "--admin", P_ADMIN, "--member", ID_C, "--role", "boss",
              NULL) == 1);
    CHECK(run("frobnicate", NULL) == 2);
    CHECK(run("add", "--roster", P_ROSTER, NULL) == 2);

    /* None of the refused changes touched the file. */
    char *after = slurp("roster", &len1);
    CHECK(before && after && len0 == len1 && memcmp(before, after, len0) == 0);
    free(before);
    free(after);

    /* verify: wrong pin, rollback, wrong predecessor */
    CHECK(run("verify", "--roster", P_ROSTER, "--admin-fingerprint", mallory_text, NULL) == 1);
    CHECK(strstr(err_text, "not the pinned admin") != NULL);
    ts_in(p, dir, "v3");
    CHECK(run("verify", "--roster", p, "--admin-fingerprint", admin_text, "--min-version", "6",
              NULL) == 1);
    CHECK(strstr(err_text, "roster version 3 is older than version 6 in force: rollback refused"));
    char p4[TS_PATH];
    ts_in(p4, dir, "v4");
    CHECK(run("verify", "--roster", P_ROSTER, "--admin-fingerprint", admin_text, "--previous", p4,
              NULL) == 1);
    CHECK(strstr(err_text, "does not follow version 4") != NULL);
    CHECK(run("verify", "--roster", P_ROSTER, "--admin-fingerprint", "abcd", NULL) == 1);
    CHECK(strstr(err_text, "64 hex digits") != NULL);
}

/* A roster made and signed by mallory, naming mallory as admin. */
static void test_non_admin(void) {
    char p[TS_PATH];
    ts_in(p, dir, "mallory.roster");
    CHECK(run("init", "--admin", P_MALLORY, "--consortium", "swiss llm", "--out", p, NULL) == 0);
    CHECK(run("add", "--roster", p, "--admin", P_MALLORY, "--member", ID_A, NULL) == 0);
    roster r;
    CHECK_FAILS_WITH(roster_load(p, admin_fp, 0, &r), "not the pinned admin");

    /* Now claim the real admin in the admin line, keep mallory's signature. */
    size_t lm, la;
    char *mt = slurp("mallory.roster", &lm), *at = slurp("v2", &la);
    CHECK(mt && at);
    if (!mt || !at) return;
    char *ma = strstr(mt, "\nadmin: "), *aa = strstr(at, "\nadmin: ");
    char *me = strchr(ma + 1, '\n'), *ae = strchr(aa + 1, '\n');
    char forged[8192];
    size_t n = 0;
    memcpy(forged, mt, (size_t)(ma - mt));
    n = (size_t)(ma - mt);
    memcpy(forged + n, aa, (size_t)(ae - aa));
    n += (size_t)(ae - aa);
    memcpy(forged + n, me, lm - (size_t)(me - mt));
    n += lm - (size_t)(me - mt);
    CHECK_OK(roster_parse(forged, n, &r, "forged"));
    CHECK_FAILS_WITH(roster_verify(&r, admin_fp, 0), "signature does not verify");
    roster_free(&r);
    free(mt);
    free(at);
}

/* Flip one bit of every byte in turn: each copy must be refused. */
static void test_tampered(void) {
    size_t len;
    char *text = slurp("v6", &len);
    CHECK(text != NULL);
    if (!text) return;
    size_t refused = 0, by_signature = 0;
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit += 5) { /* bits 0 and 5: digits, letters, case */
            text[i] ^= (char)(1 << bit);
            roster r;
            err_clear();
            int rc = roster_parse(text, len, &r, "tampered");
            if (rc == 0) {
                rc = roster_verify(&r, admin_fp, 0);
                if (rc != 0 && strstr(err_msg(), "signature does not verify")) by_signature++;
                roster_free(&r);
            }
            if (rc != 0) refused++;
            text[i] ^= (char)(1 << bit);
        }
    }
    CHECK_MSG(refused == 2 * len, "%zu of %zu tampered copies refused", refused, 2 * len);
    CHECK(by_signature > 100); /* hex digits, dates, names: parse fine, then fail the signature */

    /* Truncated anywhere, or with bytes added after the signature. */
    roster r;
    for (size_t cut = 0; cut < len; cut += 7) {
        err_clear();
        int rc = roster_parse(text, cut, &r, "cut");
        CHECK(rc != 0);
        if (rc == 0) roster_free(&r);
    }
    char *longer = malloc(len + 1);
    memcpy(longer, text, len);
    longer[len] = '\n';
    CHECK_FAILS_WITH(roster_parse(longer, len + 1, &r, "longer"), "after the signature line");
    free(longer);
    free(text);
}

/* A version made by the admin, correctly signed, but chained to the wrong
 * predecessor. */
static void test_broken_chain(void) {
    roster v3, v4, alt;
    keys_secret k;
    char p[TS_PATH];
    CHECK_OK(keys_load_secret(dir, "admin", &k));
    CHECK_OK(load("v3", 0, &v3));
    CHECK_OK(load("v4", 0, &v4));
    CHECK_OK(load("v4", 0, &alt));
    CHECK_OK(roster_next_version(&alt, 1700000000));
    memcpy(alt.previous, v3.hash, sizeof alt.previous); /* not v4's hash */
    CHECK_OK(roster_revoke(&alt, "uni-c", 1700000000));
    ts_in(p, dir, "alt5");
    CHECK_OK(roster_write(&alt, &k, p));
    roster_free(&alt);
    CHECK_OK(load("alt5", 5, &alt)); /* signature and version are fine on their own */
    CHECK_FAILS_WITH(roster_check_chain(&v4, &alt), "broken hash chain");
    CHECK_FAILS_WITH(roster_check_chain(&v3, &alt), "does not follow version 3");

    roster other;
    CHECK_OK(roster_init(&other, "another consortium", &k.pub, 1700000000));
    other.version = 4;
    CHECK_FAILS_WITH(roster_check_chain(&other, &alt), "is for consortium 'swiss llm'");
    roster_free(&other);

    char p4[TS_PATH];
    ts_in(p4, dir, "v4");
    char admin_text[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(admin_fp, admin_text);
    CHECK(run("verify", "--roster", p, "--admin-fingerprint", admin_text, "--previous", p4, NULL) ==
          1);
    CHECK(strstr(err_text, "broken hash chain") != NULL);
    roster_free(&v3);
    roster_free(&v4);
    roster_free(&alt);
    keys_secret_wipe(&k);
}

static void test_duplicates_and_rules(void) {
    roster r;
    keys_secret k;
    char p[TS_PATH];
    CHECK_OK(keys_load_secret(dir, "admin", &k));
    CHECK_OK(load("v4", 0, &r));
    keys_public a = r.members[0].pub, renamed = a;
    snprintf(renamed.name, sizeof renamed.name, "uni-a-again");
    CHECK_FAILS_WITH(roster_add(&r, &a, ROSTER_ROLE_MEMBER, ROSTER_WEIGHT_ONE, 1700000000),
                     "a member named 'uni-a' is already in the roster");
    CHECK_FAILS_WITH(roster_add(&r, &renamed, ROSTER_ROLE_MEMBER, ROSTER_WEIGHT_ONE, 1700000000),
                     "already in the roster as 'uni-a'");
    CHECK_FAILS_WITH(roster_add(&r, &renamed, ROSTER_ROLE_MEMBER, 0, 1700000000), "max weight");

    /* Duplicates made behind the API's back: the writer and the parser refuse them. */
    roster_member saved = r.members[1];
    memcpy(r.members[1].name, "uni-a", 6);
    ts_in(p, dir, "dup");
    CHECK_FAILS_WITH(roster_write(&r, &k, p), "duplicate member name 'uni-a'");
    char *text;
    size_t len;
    CHECK_OK(roster_encode(&r, &text, &len));
    roster d;
    CHECK_FAILS_WITH(roster_parse(text, len, &d, "dup"), "duplicate member name 'uni-a'");
    free(text);
    r.members[1] = saved;
    memcpy(r.members[1].pub.sign_pub, r.members[0].pub.sign_pub, 32);
    memcpy(r.members[1].pub.kx_pub, r.members[0].pub.kx_pub, 32);
    memcpy(r.members[1].fp, r.members[0].fp, KEYS_FP_LEN);
    CHECK_OK(roster_encode(&r, &text, &len));
    CHECK_FAILS_WITH(roster_parse(text, len, &d, "dup"), "duplicate fingerprint");
    free(text);
    r.members[1] = saved;

    /* Status and dates must agree. */
    r.members[1].active = 0;
    CHECK_OK(roster_encode(&r, &text, &len));
    CHECK_FAILS_WITH(roster_parse(text, len, &d, "status"), "status revoked does not match");
    free(text);
    r.members[1] = saved;

    /* Only the admin signs. */
    keys_secret mk;
    CHECK_OK(keys_load_secret(dir, "mallory", &mk));
    CHECK_FAILS_WITH(roster_write(&r, &mk, p), "is not this roster's admin");
    keys_secret_wipe(&mk);
    roster_free(&r);
    keys_secret_wipe(&k);
}

/* Hand edits: each is refused with where and what. */
static void test_malformed(void) {
    size_t len;
    char *text = slurp("v4", &len);
    CHECK(text != NULL);
    if (!text) return;
    struct {
        const char *from, *to, *needle;
    } cases[] = {
        {"version: 4\n", "version: 04\n", "without leading zeros"},
        {"version: 4\n", "version: 0\n", "from 1 to"},
        {"max-weight=0.25 ", "max-weight=0.250 ", "without a trailing zero"},
        {"max-weight=0.25 ", "max-weight=1.25 ", "max weight must be"},
        {"role=observer", "role=overseer", "role must be"},
        {"status=active", "status=asleep", "status must be"},
        {"members: 3\n", "members: 4000\n", "only"},
        {"members: 3\n", "members: 2\n", "must start with 'signature: '"},
        {"fedlora-roster v1", "fedlora-roster v2", "not a fedlora roster"},
        {"consortium: ", "consortium:  ", "must not start or end with a space"},
        {"revoked=-", "revoked=2024-02-30T00:00:00Z", "UTC date"},
        {"\nsignature: ", "\r\nsignature: ", "not printable ASCII"},
        {"previous: ", "prev: ", "must start with 'previous: '"},
        {" rotated=-\n", " rotated=- \n", "a space ends the line"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *at = strstr(text, cases[i].from);
        CHECK_MSG(at != NULL, "case %zu: '%s' not in v4", i, cases[i].from);
        if (!at) continue;
        size_t fl = strlen(cases[i].from), tl = strlen(cases[i].to);
        char *edited = malloc(len - fl + tl);
        size_t pre = (size_t)(at - text);
        memcpy(edited, text, pre);
        memcpy(edited + pre, cases[i].to, tl);
        memcpy(edited + pre + tl, at + fl, len - pre - fl);
        roster r;
        CHECK_FAILS_WITH(roster_parse(edited, len - fl + tl, &r, "edited"), cases[i].needle);
        free(edited);
    }
    free(text);

    roster r;
    char p[TS_PATH];
    ts_in(p, dir, "missing-file");
    CHECK_FAILS_WITH(roster_load(p, admin_fp, 0, &r), "missing-file");
}

static void test_helpers(void) {
    uint8_t fp[KEYS_FP_LEN], back[KEYS_FP_LEN];
    char t[KEYS_FP_TEXT_LEN], upper[KEYS_FP_TEXT_LEN];
    for (int i = 0; i < KEYS_FP_LEN; i++) fp[i] = (uint8_t)(i * 37 + 5);
    keys_fingerprint_text(fp, t);
    CHECK_OK(roster_fingerprint_parse(t, back));
    CHECK(memcmp(fp, back, sizeof fp) == 0);
    for (size_t i = 0; i <= strlen(t); i++)
        upper[i] = (t[i] >= 'a' && t[i] <= 'f') ? (char)(t[i] - 32) : t[i];
    CHECK_OK(roster_fingerprint_parse(upper, back));
    CHECK(memcmp(fp, back, sizeof fp) == 0);
    t[strlen(t) - 1] = '\0';
    CHECK_FAILS_WITH(roster_fingerprint_parse(t, back), "got 63");
    CHECK_FAILS_WITH(roster_fingerprint_parse("zz", back), "not a hex digit");

    const char *good[] = {"1", "0.5", "0.25", "0.000001", "0.333333"};
    const uint32_t want[] = {1000000, 500000, 250000, 1, 333333};
    for (int i = 0; i < 5; i++) {
        uint32_t w;
        char f[10];
        CHECK_OK(roster_weight_parse(good[i], strlen(good[i]), &w));
        CHECK(w == want[i]);
        roster_weight_format(w, f);
        CHECK(!strcmp(f, good[i]));
    }
    const char *bad[] = {"0", "1.0", "0.", "0.0", "0.10", "0.1234567", ".5", "2", "-0.5", ""};
    for (int i = 0; i < 10; i++) {
        uint32_t w;
        CHECK_FAILS_WITH(roster_weight_parse(bad[i], strlen(bad[i]), &w), "max weight must be");
    }
    char d[21];
    roster_date_format(951782400, d); /* a leap day */
    CHECK(!strcmp(d, "2000-02-29T00:00:00Z"));
}

int main(void) {
    snprintf(dir, sizeof dir, "%s", ts_dir());
    const char *names[] = {"admin", "mallory", "uni-a", "uni-b", "uni-b2", "uni-c"};
    for (int i = 0; i < 6; i++) make_identity(names[i]);
    ts_in(P_ROSTER, dir, "roster");
    ts_in(P_ADMIN, dir, "admin");
    ts_in(P_MALLORY, dir, "mallory");
    ts_in(ID_A, dir, "uni-a.id");
    ts_in(ID_B, dir, "uni-b.id");
    ts_in(ID_B2, dir, "uni-b2.id");
    ts_in(ID_C, dir, "uni-c.id");

    test_round_trip();
    test_refusals_cli();
    test_non_admin();
    test_tampered();
    test_broken_chain();
    test_duplicates_and_rules();
    test_malformed();
    test_helpers();

    return check_finish();
}
