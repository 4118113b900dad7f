/* `fedlora keygen` (cli/cmd_keygen.c, linked in directly) and the identity
 * files of wire/keys.h: modes, refusal to overwrite, the printed fingerprint
 * and paths, loading back, the strict parser's refusals, and keys_paths_of. */
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"
#include "util/fio.h"
#include "wire/crypto.h"
#include "wire/keys.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

int cmd_keygen(int argc, char **argv);

static char dir[TS_PATH];

/* Runs cmd_keygen with its stdout captured into out. */
static int run_keygen(char *out, size_t cap, int argc, char **argv) {
    char path[TS_PATH];
    ts_in(path, dir, "stdout.txt");
    fflush(stdout);
    int saved = dup(1);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    close(fd);
    int rc = cmd_keygen(argc, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    char *text;
    size_t len;
    out[0] = '\0';
    if (fio_read_all(path, 1 << 16, &text, &len) == 0) {
        snprintf(out, cap, "%s", text);
        free(text);
    }
    unlink(path);
    return rc;
}

static unsigned mode_of(const char *file) {
    char p[TS_PATH];
    struct stat st;
    ts_in(p, dir, file);
    return stat(p, &st) == 0 ? (unsigned)(st.st_mode & 07777) : 0;
}

static char *slurp(const char *file) {
    char p[TS_PATH], *text;
    size_t len;
    ts_in(p, dir, file);
    return fio_read_all(p, 1 << 16, &text, &len) == 0 ? text : NULL;
}

static void test_keygen_writes_identity(void) {
    char out[4096];
    char *argv[] = {"keygen", "--name", "uni-zurich", "--out", dir};
    CHECK(run_keygen(out, sizeof out, 5, argv) == 0);
    CHECK(mode_of("uni-zurich.sign.pem") == 0600);
    CHECK(mode_of("uni-zurich.kx.pem") == 0600);
    CHECK(mode_of("uni-zurich.id") == 0644);

    keys_secret k;
    CHECK_OK(keys_load_secret(dir, "uni-zurich", &k));
    CHECK(strcmp(k.pub.name, "uni-zurich") == 0);
    uint8_t fp[KEYS_FP_LEN];
    char fp_text[KEYS_FP_TEXT_LEN], line[128];
    CHECK_OK(keys_fingerprint(&k.pub, fp));
    keys_fingerprint_text(fp, fp_text);
    snprintf(line, sizeof line, "fingerprint: %s\n", fp_text);
    CHECK_MSG(strstr(out, line) != NULL, "printed:\n%s\nexpected the line: %s", out, line);
    /* The printed paths are the files written (keys_paths_of), as before. */
    char wrote[3 * TS_PATH + 256];
    snprintf(wrote, sizeof wrote,
             "wrote %s/uni-zurich.sign.pem and %s/uni-zurich.kx.pem (private: keep them on this "
             "machine)\nwrote %s/uni-zurich.id (public identity: send it to the consortium "
             "admin)\n",
             dir, dir, dir);
    CHECK_MSG(strstr(out, wrote) != NULL, "printed:\n%s\nexpected:\n%s", out, wrote);
    /* 16 groups of 4 lowercase hex digits. */
    CHECK(strlen(fp_text) == 79);
    for (int i = 0; i < 79; i++)
        CHECK(i % 5 == 4 ? fp_text[i] == ' ' : strchr("0123456789abcdef", fp_text[i]) != NULL);

    /* The keys work: a signature verifies with the published key, and key
     * agreement with the published X25519 key matches. */
    uint8_t sig[64], eph[32], eph_pub[32], s1[32], s2[32];
    CHECK_OK(crypto_ed25519_sign(sig, k.sign_seed, "roster", 6));
    keys_public pub;
    char idp[TS_PATH];
    ts_in(idp, dir, "uni-zurich.id");
    CHECK_OK(keys_load_public(idp, &pub));
    CHECK_OK(crypto_ed25519_verify(sig, pub.sign_pub, "roster", 6));
    CHECK_OK(crypto_x25519_keypair(eph, eph_pub));
    CHECK_OK(crypto_x25519(s1, eph, pub.kx_pub));
    CHECK_OK(crypto_x25519(s2, k.kx_priv, eph_pub));
    CHECK(memcmp(s1, s2, 32) == 0);
    keys_secret_wipe(&k);

    /* A second identity gets other keys. */
    char out_dir_arg[TS_PATH + 8];
    snprintf(out_dir_arg, sizeof out_dir_arg, "--out=%s", dir);
    char *argv2[] = {"keygen", "--name=uni-bern", out_dir_arg};
    CHECK(run_keygen(out, sizeof out, 3, argv2) == 0);
    keys_public bern;
    ts_in(idp, dir, "uni-bern.id");
    CHECK_OK(keys_load_public(idp, &bern));
    CHECK(memcmp(bern.sign_pub, pub.sign_pub, 32) != 0 && memcmp(bern.kx_pub, pub.kx_pub, 32) != 0);
}

static void test_keygen_refuses_overwrite(void) {
    char out[4096];
    char *before_sign = slurp("uni-zurich.sign.pem"), *before_id = slurp("uni-zurich.id");
    char *argv[] = {"keygen", "--name", "uni-zurich", "--out", dir};
    CHECK(run_keygen(out, sizeof out, 5, argv) == 1);
    CHECK(strstr(err_msg(), "already exists: refusing to overwrite") != NULL);
    char *after_sign = slurp("uni-zurich.sign.pem"), *after_id = slurp("uni-zurich.id");
    CHECK(before_sign && after_sign && strcmp(before_sign, after_sign) == 0);
    CHECK(before_id && after_id && strcmp(before_id, after_id) == 0);
    free(before_sign), free(after_sign), free(before_id), free(after_id);

    /* Only the public file exists: still refused, and no private key is written. */
    char p[TS_PATH];
    ts_in(p, dir, "lonely.id");
    CHECK_OK(fio_write_atomic(p, "x", 1, 0644));
    char *argv2[] = {"keygen", "--name", "lonely", "--out", dir};
    CHECK(run_keygen(out, sizeof out, 5, argv2) == 1);
    CHECK(mode_of("lonely.sign.pem") == 0 && mode_of("lonely.kx.pem") == 0);
    unlink(p);

    /* keys_write refuses too (O_EXCL), with a clear message. */
    keys_secret k;
    CHECK_OK(keys_generate("uni-zurich", &k));
    CHECK_FAILS_WITH(keys_write(&k, dir), "already exists");
    keys_secret_wipe(&k);
}

static void test_keygen_usage(void) {
    char out[4096];
    char *none[] = {"keygen"};
    CHECK(run_keygen(out, sizeof out, 1, none) == 2);
    char *no_out[] = {"keygen", "--name", "x"};
    CHECK(run_keygen(out, sizeof out, 3, no_out) == 2);
    char *no_value[] = {"keygen", "--out", dir, "--name"};
    CHECK(run_keygen(out, sizeof out, 4, no_value) == 2);
    char *bad_name[] = {"keygen", "--name", "../evil", "--out", dir};
    CHECK(run_keygen(out, sizeof out, 5, bad_name) == 2);
    CHECK(strstr(err_msg(), "must not start with") != NULL);
    char *slash[] = {"keygen", "--name", "a/b", "--out", dir};
    CHECK(run_keygen(out, sizeof out, 5, slash) == 2);
    char *unknown[] = {"keygen", "--frobnicate"};
    CHECK(run_keygen(out, sizeof out, 2, unknown) == 2);
    char *help[] = {"keygen", "--help"};
    CHECK(run_keygen(out, sizeof out, 2, help) == 0);
    CHECK(strstr(out, "usage: fedlora keygen --name NAME --out DIR") != NULL);
}

/* A valid .id text for the parser tests. */
static const char VALID_ID[] =
    "fedlora-identity v1\n"
    "name: uni-x\n"
    "ed25519: d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a\n"
    "x25519: 8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a\n";

static void parse_fails(const char *text, size_t len, const char *needle) {
    keys_public p;
    CHECK_FAILS_WITH(keys_parse_public(text, len, &p, "test.id"), needle);
}

/* VALID_ID with the first occurrence of `from` replaced by `to`. */
static void parse_edit_fails(const char *from, const char *to, const char *needle) {
    char buf[1024];
    const char *at = strstr(VALID_ID, from);
    size_t head = (size_t)(at - VALID_ID);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)head, VALID_ID, to, at + strlen(from));
    parse_fails(buf, strlen(buf), needle);
}

static void test_identity_parser(void) {
    keys_public p;
    CHECK_OK(keys_parse_public(VALID_ID, strlen(VALID_ID), &p, "test.id"));
    CHECK(strcmp(p.name, "uni-x") == 0 && p.sign_pub[0] == 0xd7 && p.kx_pub[31] == 0x6a);
    char again[KEYS_ID_FILE_MAX];
    CHECK_OK(keys_format_public(&p, again, sizeof again));
    CHECK(strcmp(again, VALID_ID) == 0);

    parse_fails("", 0, "first line must be 'fedlora-identity v1'");
    parse_edit_fails("v1", "v2", "first line must be");
    parse_edit_fails("name: ", "Name: ", "line 2 must start with 'name: '");
    parse_edit_fails("uni-x", "uni x", "character 0x20");
    parse_edit_fails("uni-x", "-x", "must not start with");
    parse_edit_fails("name: uni-x", "name: ", "identity name is empty");
    parse_edit_fails("d75a98", "D75A98", "not a lowercase hex digit at column 1");
    parse_edit_fails("d75a98", "d75a9", "found 63 characters");
    parse_edit_fails("8520f0", "8520f0aa", "found 66 characters");
    parse_edit_fails("x25519: ", "x25519:  ", "found 65 characters");
    parse_edit_fails("ed25519:", "x25519:", "line 3 must start with 'ed25519: '");
    parse_edit_fails("name: uni-x\n", "name: uni-x\r\n", "character 0x0d");
    parse_edit_fails("6a\n", "6a", "line 4 is not terminated by a newline");
    parse_edit_fails("6a\n", "6a\n\n", "1 unexpected bytes after line 4");
    parse_edit_fails("6a\n", "6a\nextra: 1\n", "unexpected bytes after line 4");
    char longname[100];
    memset(longname, 'n', 65);
    longname[65] = '\0';
    parse_edit_fails("uni-x", longname, "65 characters, at most 64");
    /* A NUL byte inside, and an oversized file. */
    char nul[sizeof VALID_ID];
    memcpy(nul, VALID_ID, sizeof VALID_ID);
    nul[25] = '\0';
    parse_fails(nul, sizeof VALID_ID - 1, "NUL byte");
    char big[KEYS_ID_FILE_MAX + 2];
    memset(big, 'a', sizeof big);
    parse_fails(big, sizeof big, "at most 512");
    /* Truncated after each line. */
    size_t cut = strchr(VALID_ID, '\n') - VALID_ID + 1;
    parse_fails(VALID_ID, cut, "line 2 ('name: ') is missing");
}

static void copy_file(const char *from, const char *to, unsigned mode) {
    char *text = slurp(from), p[512];
    ts_in(p, dir, to);
    CHECK(text && fio_write_atomic(p, text, strlen(text), mode) == 0);
    free(text);
}

static void test_load_refusals(void) {
    char p[TS_PATH];
    /* A private key readable by others. */
    ts_in(p, dir, "uni-zurich.sign.pem");
    CHECK(chmod(p, 0644) == 0);
    keys_secret k;
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-zurich", &k), "mode 0644");
    CHECK(chmod(p, 0600) == 0);
    CHECK_OK(keys_load_secret(dir, "uni-zurich", &k));

    /* Files of two identities mixed: zurich's public keys (renamed
     * uni-mixed.id) with bern's private keys. */
    char *id = slurp("uni-zurich.id");
    CHECK(id != NULL);
    if (id) {
        char *at = strstr(id, "uni-zurich");
        char fixed[KEYS_ID_FILE_MAX];
        snprintf(fixed, sizeof fixed, "%.*suni-mixed%s", (int)(at - id), id, at + 10);
        ts_in(p, dir, "uni-mixed.id");
        CHECK_OK(fio_write_atomic(p, fixed, strlen(fixed), 0644));
        free(id);
    }
    copy_file("uni-bern.sign.pem", "uni-mixed.sign.pem", 0600);
    copy_file("uni-bern.kx.pem", "uni-mixed.kx.pem", 0600);
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-mixed", &k), "does not match the ed25519 key");

    /* Key files swapped: the signing file holds an X25519 key. */
    copy_file("uni-zurich.kx.pem", "uni-swap.sign.pem", 0600);
    copy_file("uni-zurich.kx.pem", "uni-swap.kx.pem", 0600);
    char *zid = slurp("uni-zurich.id");
    if (zid) {
        char *at = strstr(zid, "uni-zurich");
        char fixed[KEYS_ID_FILE_MAX];
        snprintf(fixed, sizeof fixed, "%.*suni-swap%s", (int)(at - zid), zid, at + 10);
        ts_in(p, dir, "uni-swap.id");
        CHECK_OK(fio_write_atomic(p, fixed, strlen(fixed), 0644));
        free(zid);
    }
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-swap", &k), "expected ED25519");

    /* Not PEM at all. */
    ts_in(p, dir, "uni-swap.sign.pem");
    CHECK_OK(fio_write_atomic(p, "hello\n", 6, 0600));
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-swap", &k), "not an unencrypted PEM private key");

    /* An encrypted PEM is refused (and does not prompt for a passphrase). */
    uint8_t seed[32], pub[32];
    CHECK_OK(crypto_ed25519_keypair(seed, pub));
    EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, 32);
    FILE *f = fopen(p, "w");
    CHECK(key && f);
    if (key && f)
        CHECK(PEM_write_PrivateKey(f, key, EVP_aes_256_cbc(), (unsigned char *)"pw", 2, NULL,
                                   NULL) == 1);
    if (f) fclose(f);
    EVP_PKEY_free(key);
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-swap", &k), "encrypted keys are not supported");

    /* The .id names another identity than asked for. */
    copy_file("uni-zurich.id", "uni-other.id", 0644);
    CHECK_FAILS_WITH(keys_load_secret(dir, "uni-other", &k), "names identity 'uni-zurich'");
    /* Missing files. */
    CHECK_FAILS_WITH(keys_load_secret(dir, "nobody", &k), "cannot open");
}

/* keys_paths_of: the three names, and refusals of a bad name or a path one
 * byte over KEYS_PATH_MAX (the longest file, NAME.sign.pem, decides). */
static void test_keys_paths(void) {
    keys_paths p;
    CHECK_OK(keys_paths_of(&p, "nodes/keys", "uni-x"));
    CHECK(strcmp(p.sign, "nodes/keys/uni-x.sign.pem") == 0);
    CHECK(strcmp(p.kx, "nodes/keys/uni-x.kx.pem") == 0);
    CHECK(strcmp(p.id, "nodes/keys/uni-x.id") == 0);
    CHECK_FAILS_WITH(keys_paths_of(&p, "nodes/keys", "a/b"), "identity name has character 0x2f");
    CHECK_FAILS_WITH(keys_paths_of(&p, "nodes/keys", ""), "identity name is empty");

    /* DIR/n.sign.pem is strlen(DIR) + 11 bytes: at most KEYS_PATH_MAX - 1. */
    static char long_dir[KEYS_PATH_MAX + 1];
    size_t fits = KEYS_PATH_MAX - 1 - strlen("/n.sign.pem");
    memset(long_dir, 'd', fits);
    long_dir[fits] = '\0';
    CHECK_OK(keys_paths_of(&p, long_dir, "n"));
    CHECK(strlen(p.sign) == KEYS_PATH_MAX - 1 && strncmp(p.sign, long_dir, fits) == 0 &&
          strcmp(p.sign + fits, "/n.sign.pem") == 0);
    CHECK(strcmp(p.id + fits, "/n.id") == 0);
    long_dir[fits] = 'd';
    long_dir[fits + 1] = '\0';
    CHECK_FAILS_WITH(keys_paths_of(&p, long_dir, "n"), "path too long: ");

    /* Its callers fail the same way, before touching the disk. */
    keys_secret k;
    CHECK_OK(keys_generate("n", &k));
    CHECK_FAILS_WITH(keys_write(&k, long_dir), "path too long: ");
    keys_secret_wipe(&k);
    CHECK_FAILS_WITH(keys_load_secret(long_dir, "n", &k), "path too long: ");
    char out[4096];
    char *argv[] = {"keygen", "--name", "n", "--out", long_dir};
    CHECK(run_keygen(out, sizeof out, 5, argv) == 1);
    CHECK(strstr(err_msg(), "path too long: ") != NULL && out[0] == '\0');
}

static void remove_dir(void) {
    const char *files[] = {"uni-zurich", "uni-bern", "uni-mixed", "uni-swap", "uni-other"};
    const char *suffix[] = {".sign.pem", ".kx.pem", ".id"};
    char p[TS_PATH], f[128];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        for (size_t j = 0; j < 3; j++) {
            snprintf(f, sizeof f, "%s%s", files[i], suffix[j]);
            ts_in(p, dir, f);
            unlink(p);
        }
    CHECK_MSG(rmdir(dir) == 0, "directory %s not empty after the test", dir);
}

int main(void) {
    /* A directory of its own inside the scratch one: at the end it must
     * hold nothing but the identities the test made (no stray temporary
     * files). */
    ts_path(dir, "keys");
    if (fio_mkdirs(dir, 0700) != 0) return fprintf(stderr, "%s\n", err_msg()), 2;
    test_keygen_writes_identity();
    test_keygen_refuses_overwrite();
    test_keygen_usage();
    test_identity_parser();
    test_load_refusals();
    test_keys_paths();
    remove_dir();
    return check_finish();
}
