#include "wire/keys.h"

#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"
#include "wire/crypto.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define KEYS_PEM_MAX 4096 /* a PKCS#8 Ed25519/X25519 PEM is ~120 bytes */

static const char ID_MAGIC[] = "fedlora-identity v1\n";
static const char FP_LABEL[] = "fedlora-identity-v1";
static const char KX_FP_LABEL[] = "fedlora-x25519-v1";

int keys_name_check(const char *name) {
    size_t n = strlen(name);
    if (n == 0) return err_set("identity name is empty");
    if (n > KEYS_NAME_MAX)
        return err_set("identity name is %zu characters, at most %d allowed", n, KEYS_NAME_MAX);
    if (name[0] == '.' || name[0] == '-')
        return err_set("identity name '%s' must not start with '.' or '-'", name);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return err_set("identity name has character 0x%02x at position %zu: use only letters, "
                           "digits, '.', '_' and '-'",
                           c, i);
    }
    return 0;
}

int keys_generate(const char *name, keys_secret *out) {
    memset(out, 0, sizeof *out);
    if (keys_name_check(name) != 0) return -1;
    memcpy(out->pub.name, name, strlen(name) + 1);
    if (crypto_ed25519_keypair(out->sign_seed, out->pub.sign_pub) != 0 ||
        crypto_x25519_keypair(out->kx_priv, out->pub.kx_pub) != 0) {
        keys_secret_wipe(out);
        return err_context("generating keys for '%s'", name);
    }
    return 0;
}

void keys_secret_wipe(keys_secret *k) {
    crypto_wipe(k, sizeof *k);
}

/* ---- fingerprints ---------------------------------------------------------------- */

int keys_fingerprint(const keys_public *p, uint8_t fp[KEYS_FP_LEN]) {
    uint8_t buf[sizeof FP_LABEL - 1 + 64];
    memcpy(buf, FP_LABEL, sizeof FP_LABEL - 1);
    memcpy(buf + sizeof FP_LABEL - 1, p->sign_pub, 32);
    memcpy(buf + sizeof FP_LABEL - 1 + 32, p->kx_pub, 32);
    return crypto_sha256(buf, sizeof buf, fp);
}

int keys_kx_fingerprint(const uint8_t kx_pub[32], uint8_t fp[KEYS_FP_LEN]) {
    uint8_t buf[sizeof KX_FP_LABEL - 1 + 32];
    memcpy(buf, KX_FP_LABEL, sizeof KX_FP_LABEL - 1);
    memcpy(buf + sizeof KX_FP_LABEL - 1, kx_pub, 32);
    return crypto_sha256(buf, sizeof buf, fp);
}

void keys_fingerprint_text(const uint8_t fp[KEYS_FP_LEN], char out[KEYS_FP_TEXT_LEN]) {
    char *o = out;
    for (int i = 0; i < KEYS_FP_LEN; i++) {
        if (i > 0 && i % 2 == 0) *o++ = ' ';
        hex_encode(&fp[i], 1, o);
        o += 2;
    }
    *o = '\0';
}

/* ---- the .id file ------------------------------------------------------------------ */

int keys_format_public(const keys_public *p, char *buf, size_t cap) {
    if (keys_name_check(p->name) != 0) return -1;
    char ed[65], x[65];
    hex_encode(p->sign_pub, 32, ed);
    hex_encode(p->kx_pub, 32, x);
    int w = snprintf(buf, cap, "%sname: %s\ned25519: %s\nx25519: %s\n", ID_MAGIC, p->name, ed, x);
    if (w < 0 || (size_t)w >= cap) return err_set("identity text does not fit in %zu bytes", cap);
    return 0;
}

/* Takes one '\n'-terminated line starting with `key` from *pos; the value
 * (without the newline) goes to *val and *vlen. */
static int take_line(const char *text, size_t len, size_t *pos, const char *key, const char **val,
                     size_t *vlen, const char *what, int lineno) {
    size_t klen = strlen(key);
    if (*pos >= len) return err_set("%s: line %d ('%s') is missing", what, lineno, key);
    if (len - *pos < klen || memcmp(text + *pos, key, klen) != 0)
        return err_set("%s: line %d must start with '%s'", what, lineno, key);
    const char *start = text + *pos + klen;
    const char *nl = memchr(start, '\n', len - (*pos + klen));
    if (!nl) return err_set("%s: line %d is not terminated by a newline", what, lineno);
    *val = start;
    *vlen = (size_t)(nl - start);
    *pos = (size_t)(nl - text) + 1;
    return 0;
}

static int parse_hex_key(const char *val, size_t vlen, uint8_t out[32], const char *what,
                         int lineno, const char *field) {
    if (vlen != 64)
        return err_set("%s: line %d: %s key must be 64 lowercase hex digits, found %zu characters",
                       what, lineno, field, vlen);
    for (size_t i = 0; i < 32; i++) {
        int hi = hex_value(val[2 * i], 0), lo = hex_value(val[2 * i + 1], 0);
        if (hi < 0 || lo < 0)
            return err_set("%s: line %d: %s key has a character that is not a lowercase hex "
                           "digit at column %zu",
                           what, lineno, field, 2 * i + (hi < 0 ? 0 : 1) + 1);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

int keys_parse_public(const char *text, size_t len, keys_public *out, const char *what) {
    memset(out, 0, sizeof *out);
    if (len > KEYS_ID_FILE_MAX)
        return err_set("%s: %zu bytes, an identity file has at most %d", what, len,
                       KEYS_ID_FILE_MAX);
    if (memchr(text, '\0', len))
        return err_set("%s: contains a NUL byte: not an identity file", what);
    size_t magic_len = sizeof ID_MAGIC - 1;
    if (len < magic_len || memcmp(text, ID_MAGIC, magic_len) != 0)
        return err_set("%s: first line must be 'fedlora-identity v1': not a fedlora identity "
                       "file, or from a newer version",
                       what);
    size_t pos = magic_len;
    const char *val;
    size_t vlen;
    if (take_line(text, len, &pos, "name: ", &val, &vlen, what, 2) != 0) return -1;
    if (vlen > KEYS_NAME_MAX)
        return err_set("%s: line 2: name is %zu characters, at most %d allowed", what, vlen,
                       KEYS_NAME_MAX);
    memcpy(out->name, val, vlen);
    out->name[vlen] = '\0';
    if (keys_name_check(out->name) != 0) return err_context("%s: line 2", what);
    if (take_line(text, len, &pos, "ed25519: ", &val, &vlen, what, 3) != 0 ||
        parse_hex_key(val, vlen, out->sign_pub, what, 3, "ed25519") != 0)
        return -1;
    if (take_line(text, len, &pos, "x25519: ", &val, &vlen, what, 4) != 0 ||
        parse_hex_key(val, vlen, out->kx_pub, what, 4, "x25519") != 0)
        return -1;
    if (pos != len)
        return err_set("%s: %zu unexpected bytes after line 4: an identity file has exactly four "
                       "lines",
                       what, len - pos);
    return 0;
}

int keys_load_public(const char *path, keys_public *out) {
    char *text;
    size_t len;
    if (fio_read_all(path, KEYS_ID_FILE_MAX, &text, &len) != 0) return -1;
    int rc = keys_parse_public(text, len, out, path);
    free(text);
    return rc;
}

/* ---- PEM private keys ---------------------------------------------------------------- */

/* Encrypted PEM is not supported: refuse instead of prompting on a terminal
 * (OpenSSL's default when no callback is given). */
static int no_password(char *buf, int size, int rwflag, void *u) {
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* PKCS#8 PEM of a raw private key, in secure heap memory (wiped on free). */
static int pem_encode(int type, const uint8_t priv[32], char **pem, size_t *len) {
    *pem = NULL;
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(type, NULL, priv, 32);
    BIO *b = BIO_new(BIO_s_secmem());
    int rc = 0;
    if (!k || !b || PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) != 1) {
        ERR_clear_error();
        rc = err_set("encoding a private key as PEM failed");
    } else {
        char *data;
        long n = BIO_get_mem_data(b, &data);
        *pem = malloc(n > 0 ? (size_t)n : 1);
        if (n <= 0 || !*pem) {
            rc = err_set("encoding a private key as PEM produced no output");
        } else {
            memcpy(*pem, data, (size_t)n);
            *len = (size_t)n;
        }
    }
    BIO_free(b);
    EVP_PKEY_free(k);
    return rc;
}

/* Creates path exclusively (never follows a link, never truncates) with
 * exactly `mode`, writes, fsyncs. */
static int write_new_file(const char *path, const void *data, size_t n, unsigned mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) {
        if (errno == EEXIST)
            return err_set("%s already exists: refusing to overwrite a key file (move it away "
                           "first if you really mean to replace it)",
                           path);
        return err_errno("cannot create %s", path);
    }
    int rc = 0;
    if (fchmod(fd, (mode_t)mode) != 0) rc = err_errno("cannot set mode of %s", path);
    if (rc == 0) rc = fio_write_full(fd, data, n, path);
    if (rc == 0 && fsync(fd) != 0) rc = err_errno("cannot fsync %s", path);
    if (close(fd) != 0 && rc == 0) rc = err_errno("cannot close %s", path);
    if (rc != 0) unlink(path);
    return rc;
}

int keys_paths_of(keys_paths *out, const char *dir, const char *name) {
    if (keys_name_check(name) != 0) return -1;
    const char *suffix[3] = {".sign.pem", ".kx.pem", ".id"};
    char *path[3] = {out->sign, out->kx, out->id};
    for (int i = 0; i < 3; i++) {
        char file[KEYS_NAME_MAX + 16]; /* a checked name fits */
        snprintf(file, sizeof file, "%s%s", name, suffix[i]);
        if (fio_join(path[i], KEYS_PATH_MAX, dir, file) != 0) return -1;
    }
    return 0;
}

int keys_write(const keys_secret *k, const char *dir) {
    keys_paths p;
    if (keys_paths_of(&p, dir, k->pub.name) != 0) return -1;
    const char *path[3] = {p.sign, p.kx, p.id};
    /* Check all three first so a refusal leaves nothing half-written; the
     * O_EXCL opens below still close the race with a concurrent writer. */
    for (int i = 0; i < 3; i++)
        if (fio_exists(path[i]))
            return err_set("%s already exists: refusing to overwrite an identity (choose another "
                           "--name or --out, or move the old files away)",
                           path[i]);
    if (fio_mkdirs(dir, 0700) != 0) return -1;

    char *pem[2] = {NULL, NULL};
    size_t pem_len[2] = {0, 0};
    char id[KEYS_ID_FILE_MAX];
    int rc = pem_encode(EVP_PKEY_ED25519, k->sign_seed, &pem[0], &pem_len[0]);
    if (rc == 0) rc = pem_encode(EVP_PKEY_X25519, k->kx_priv, &pem[1], &pem_len[1]);
    if (rc == 0) rc = keys_format_public(&k->pub, id, sizeof id);
    int made = 0;
    if (rc == 0) rc = write_new_file(path[0], pem[0], pem_len[0], 0600);
    if (rc == 0) made = 1, rc = write_new_file(path[1], pem[1], pem_len[1], 0600);
    if (rc == 0) made = 2, rc = write_new_file(path[2], id, strlen(id), 0644);
    if (rc == 0) made = 3, rc = fio_fsync_dir_of(path[2]);
    if (rc != 0)
        for (int i = 0; i < made; i++) unlink(path[i]);
    for (int i = 0; i < 2; i++) {
        if (pem[i]) crypto_wipe(pem[i], pem_len[i]);
        free(pem[i]);
    }
    return rc;
}

static int pem_load(const char *path, int type, const char *type_name, uint8_t priv[32]) {
    struct stat st;
    if (stat(path, &st) != 0) return err_errno("cannot open private key %s", path);
    if (st.st_mode & 077)
        return err_set("private key %s has mode %04o: it must be readable only by its owner "
                       "(chmod 600 %s)",
                       path, (unsigned)(st.st_mode & 07777), path);
    char *text;
    size_t len;
    if (fio_read_all(path, KEYS_PEM_MAX, &text, &len) != 0) return -1;
    BIO *b = BIO_new_mem_buf(text, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, no_password, NULL) : NULL;
    BIO_free(b);
    crypto_wipe(text, len);
    free(text);
    if (!k) {
        ERR_clear_error();
        return err_set("%s: not an unencrypted PEM private key (encrypted keys are not "
                       "supported)",
                       path);
    }
    int rc = 0;
    size_t n = 32;
    if (EVP_PKEY_get_base_id(k) != type)
        rc = err_set("%s holds a %s key, expected %s", path, EVP_PKEY_get0_type_name(k), type_name);
    else if (EVP_PKEY_get_raw_private_key(k, priv, &n) != 1 || n != 32) {
        ERR_clear_error();
        rc = err_set("%s: cannot extract the raw %s private key", path, type_name);
    }
    EVP_PKEY_free(k);
    return rc;
}

int keys_load_secret(const char *dir, const char *name, keys_secret *out) {
    memset(out, 0, sizeof *out);
    keys_paths p;
    if (keys_paths_of(&p, dir, name) != 0 || keys_load_public(p.id, &out->pub) != 0) return -1;
    if (strcmp(out->pub.name, name) != 0) {
        int rc = err_set("%s names identity '%s', expected '%s'", p.id, out->pub.name, name);
        keys_secret_wipe(out);
        return rc;
    }
    uint8_t pub[32];
    int rc = pem_load(p.sign, EVP_PKEY_ED25519, "ED25519", out->sign_seed);
    if (rc == 0) rc = crypto_ed25519_public(out->sign_seed, pub);
    if (rc == 0 && memcmp(pub, out->pub.sign_pub, 32) != 0)
        rc = err_set("%s does not match the ed25519 key in %s.id: the files belong to different "
                     "identities",
                     p.sign, name);
    if (rc == 0) rc = pem_load(p.kx, EVP_PKEY_X25519, "X25519", out->kx_priv);
    if (rc == 0) rc = crypto_x25519_public(out->kx_priv, pub);
    if (rc == 0 && memcmp(pub, out->pub.kx_pub, 32) != 0)
        rc = err_set("%s does not match the x25519 key in %s.id: the files belong to different "
                     "identities",
                     p.kx, name);
    if (rc != 0) keys_secret_wipe(out);
    return rc;
}
