/* roster — see roster.h; the format is documented byte by byte in
 * docs/onboarding.md ("Roster file").
 *
 * The parser reads one line at a time from a cursor that never goes past the
 * end, refuses any byte outside printable ASCII, and allocates the member
 * array only after the declared count has been checked against the bytes
 * that are left (a member line is at least MEMBER_LINE_MIN bytes). Then it
 * re-encodes the parsed roster and compares: a file is accepted only in the
 * one canonical form the writer produces. */
#include "wire/roster.h"

#include "util/err.h"
#include "util/hex.h"
#include "util/fio.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC "fedlora-roster v1\n"
#define DATE_LEN 20
/* 9999-12-31T23:59:59Z: the last second a four-digit year can name. */
#define DATE_MAX 253402300799ll
/* "member: name=x role=member max-weight=1 status=active ed25519=<64> x25519=<64>
 *  added=<20> revoked=- rotated=-\n" */
#define MEMBER_LINE_MIN 246

/* Short form of a hash or fingerprint for messages: the first 8 bytes. */
struct short_hex {
    char s[17];
};

static struct short_hex short_hex(const uint8_t *b) {
    struct short_hex h;
    hex_encode(b, 8, h.s);
    return h;
}

const char *roster_role_name(roster_role role) {
    return role == ROSTER_ROLE_OBSERVER ? "observer" : "member";
}

/* ---- dates, weights, fingerprints -------------------------------------------------- */

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms", days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void roster_date_format(int64_t t, char out[21]) {
    time_t tt = (time_t)t;
    struct tm tm;
    if (t < 0 || t > DATE_MAX || !gmtime_r(&tt, &tm) ||
        strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm) != DATE_LEN)
        snprintf(out, 21, "invalid-date");
}

static int time_check(int64_t now) {
    if (now <= 0 || now > DATE_MAX)
        return err_set("time %lld is outside 1970-01-01..9999-12-31 UTC", (long long)now);
    return 0;
}

/* YYYY-MM-DDTHH:MM:SSZ, a real UTC date, after 1970-01-01T00:00:00Z. */
static int date_parse(const char *s, size_t n, int64_t *t) {
    static const char shape[] = "dddd-dd-ddTdd:dd:ddZ";
    if (n != DATE_LEN) return -1;
    for (size_t i = 0; i < DATE_LEN; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i]) return -1;
    }
#define NUM2(i) ((s[i] - '0') * 10 + (s[(i) + 1] - '0'))
    int y = NUM2(0) * 100 + NUM2(2), mo = NUM2(5), d = NUM2(8), h = NUM2(11), mi = NUM2(14),
        se = NUM2(17);
#undef NUM2
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap) || h > 23 ||
        mi > 59 || se > 59)
        return -1;
    *t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se;
    return *t > 0 ? 0 : -1;
}

int roster_weight_parse(const char *s, size_t n, uint32_t *w) {
    if (n == 1 && s[0] == '1') {
        *w = ROSTER_WEIGHT_ONE;
        return 0;
    }
    uint32_t v = 0, scale = ROSTER_WEIGHT_ONE;
    int ok = n >= 3 && n <= 8 && s[0] == '0' && s[1] == '.' && s[n - 1] != '0';
    for (size_t i = 2; ok && i < n; i++) {
        if (s[i] < '0' || s[i] > '9') ok = 0;
        scale /= 10;
        v += (uint32_t)(s[i] - '0') * scale;
    }
    if (!ok || v == 0)
        return err_set("max weight must be '1' or '0.' and 1 to 6 digits without a trailing "
                       "zero (e.g. 0.25), got '%.*s'",
                       (int)(n > 32 ? 32 : n), s);
    *w = v;
    return 0;
}

void roster_weight_format(uint32_t w, char out[10]) {
    if (w >= ROSTER_WEIGHT_ONE) {
        snprintf(out, 10, "1");
        return;
    }
    snprintf(out, 10, "0.%06u", (unsigned)w);
    size_t n = strlen(out);
    while (n > 3 && out[n - 1] == '0') out[--n] = '\0';
}

int roster_fingerprint_parse(const char *text, uint8_t fp[KEYS_FP_LEN]) {
    size_t digits = 0;
    for (size_t i = 0; text[i]; i++) {
        if (text[i] == ' ') continue;
        int v = hex_value(text[i], 1);
        if (v < 0)
            return err_set("fingerprint: character '%c' at position %zu is not a hex digit "
                           "(give the 64 hex digits `fedlora keygen` printed; spaces are fine)",
                           text[i] >= 0x20 && text[i] < 0x7f ? text[i] : '?', i + 1);
        if (digits < 2 * KEYS_FP_LEN) {
            if (digits % 2 == 0)
                fp[digits / 2] = (uint8_t)(v << 4);
            else
                fp[digits / 2] |= (uint8_t)v;
        }
        digits++;
    }
    if (digits != 2 * KEYS_FP_LEN)
        return err_set("fingerprint must be 64 hex digits (spaces allowed), got %zu", digits);
    return 0;
}

/* ---- building and changing ------------------------------------------------------------- */

static int consortium_check(const char *s, size_t n) {
    if (n == 0 || n > PAYLOAD_CONSORTIUM_NAME_MAX)
        return err_set("consortium id must be 1 to %d bytes, got %zu", PAYLOAD_CONSORTIUM_NAME_MAX,
                       n);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return err_set("consortium id has byte 0x%02x at position %zu: only printable ASCII",
                           (unsigned char)s[i], i + 1);
    if (s[0] == ' ' || s[n - 1] == ' ')
        return err_set("consortium id must not start or end with a space");
    return 0;
}

int roster_init(roster *r, const char *consortium, const keys_public *admin, int64_t now) {
    memset(r, 0, sizeof *r);
    if (consortium_check(consortium, strlen(consortium)) < 0 || keys_name_check(admin->name) < 0 ||
        time_check(now) < 0)
        return err_context("new roster");
    memcpy(r->consortium, consortium, strlen(consortium) + 1);
    r->version = 1;
    r->issued = now;
    r->admin = *admin;
    return keys_fingerprint(admin, r->admin_fp);
}

void roster_free(roster *r) {
    free(r->members);
    r->members = NULL;
    r->n_members = 0;
}

int roster_next_version(roster *r, int64_t now) {
    if (time_check(now) < 0) return -1;
    if (r->version >= ROSTER_VERSION_MAX)
        return err_set("roster version %llu is the last one allowed",
                       (unsigned long long)r->version);
    memcpy(r->previous, r->hash, sizeof r->previous);
    r->version++;
    r->issued = now;
    return 0;
}

const roster_member *roster_find_member(const roster *r, const uint8_t fp[KEYS_FP_LEN]) {
    for (uint32_t i = 0; i < r->n_members; i++)
        if (crypto_equal(r->members[i].fp, fp, KEYS_FP_LEN)) return &r->members[i];
    return NULL;
}

const roster_member *roster_find_name(const roster *r, const char *name) {
    for (uint32_t i = 0; i < r->n_members; i++)
        if (!strcmp(r->members[i].name, name)) return &r->members[i];
    return NULL;
}

/* Keys that are already somewhere in the roster may not be added again. */
static int keys_unused(const roster *r, const uint8_t fp[KEYS_FP_LEN]) {
    const roster_member *m = roster_find_member(r, fp);
    if (!m) return 0;
    char t[KEYS_FP_TEXT_LEN];
    keys_fingerprint_text(fp, t);
    return err_set("these keys (fingerprint %s) are already in the roster as '%s' (%s): every "
                   "member needs its own keys, made with `fedlora keygen`",
                   t, m->name, m->active ? "active" : "revoked");
}

int roster_add(roster *r, const keys_public *pub, roster_role role, uint32_t max_weight,
               int64_t now) {
    if (keys_name_check(pub->name) < 0) return err_context("adding a member");
    if (time_check(now) < 0) return -1;
    if (max_weight == 0 || max_weight > ROSTER_WEIGHT_ONE)
        return err_set("max weight must be in (0, 1], got %u millionths", (unsigned)max_weight);
    if (role != ROSTER_ROLE_MEMBER && role != ROSTER_ROLE_OBSERVER)
        return err_set("role must be member or observer");
    if (r->n_members >= ROSTER_MEMBERS_MAX)
        return err_set("the roster has %d members, the most allowed", ROSTER_MEMBERS_MAX);
    if (roster_find_name(r, pub->name))
        return err_set("a member named '%s' is already in the roster (member names are unique; "
                       "revoked members keep theirs)",
                       pub->name);
    roster_member m = {
        .role = role, .max_weight = max_weight, .active = 1, .pub = *pub, .added = now};
    memcpy(m.name, pub->name, strlen(pub->name) + 1);
    if (keys_fingerprint(pub, m.fp) < 0 || keys_unused(r, m.fp) < 0) return -1;
    roster_member *grown = realloc(r->members, (r->n_members + 1) * sizeof *grown);
    if (!grown) return err_set("out of memory for %u roster members", r->n_members + 1);
    r->members = grown;
    r->members[r->n_members++] = m;
    return 0;
}

static roster_member *find_name_mut(roster *r, const char *name) {
    for (uint32_t i = 0; i < r->n_members; i++)
        if (!strcmp(r->members[i].name, name)) return &r->members[i];
    return NULL;
}

int roster_revoke(roster *r, const char *name, int64_t now) {
    if (time_check(now) < 0) return -1;
    roster_member *m = find_name_mut(r, name);
    if (!m) return err_set("no member named '%s' in the roster (see `fedlora roster list`)", name);
    if (!m->active) return err_set("member '%s' is already revoked", name);
    m->active = 0;
    m->revoked = now;
    return 0;
}

int roster_rotate(roster *r, const char *name, const keys_public *pub, int64_t now) {
    if (time_check(now) < 0) return -1;
    if (keys_name_check(pub->name) < 0) return err_context("rotating keys of '%s'", name);
    roster_member *m = find_name_mut(r, name);
    if (!m) return err_set("no member named '%s' in the roster (see `fedlora roster list`)", name);
    if (!m->active)
        return err_set("member '%s' is revoked: a revoked member's keys are not rotated", name);
    uint8_t fp[KEYS_FP_LEN];
    if (keys_fingerprint(pub, fp) < 0 || keys_unused(r, fp) < 0) return -1;
    m->pub = *pub;
    memcpy(m->pub.name, m->name, sizeof m->name); /* as roster_parse fills it */
    memcpy(m->fp, fp, sizeof fp);
    m->rotated = now;
    return 0;
}

/* ---- encoding ----------------------------------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *fmt, ...) ERR_PRINTF(2, 3);
static void put(struct buf *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (w < 0 || (size_t)w >= b->cap - b->len)
        b->failed = 1;
    else
        b->len += (size_t)w;
}

static void put_date(struct buf *b, const char *key, int64_t t) {
    char d[21];
    if (t == 0) {
        put(b, " %s=-", key);
        return;
    }
    roster_date_format(t, d);
    put(b, " %s=%s", key, d);
}

/* Everything the signature covers: the file up to the signature line. The
 * buffer has room for the signature line as well. */
static int encode_body(const roster *r, struct buf *b) {
    b->cap = 1024 + (size_t)r->n_members * 512;
    b->len = 0;
    b->failed = 0;
    b->p = malloc(b->cap);
    if (!b->p) return err_set("out of memory for a %zu-byte roster", b->cap);
    char ed[65], x[65], prev[65], date[21], w[10];
    put(b, MAGIC "consortium: %s\nversion: %llu\n", r->consortium, (unsigned long long)r->version);
    if (r->version == 1) {
        put(b, "previous: none\n");
    } else {
        hex_encode(r->previous, sizeof r->previous, prev);
        put(b, "previous: %s\n", prev);
    }
    roster_date_format(r->issued, date);
    hex_encode(r->admin.sign_pub, 32, ed);
    hex_encode(r->admin.kx_pub, 32, x);
    put(b, "issued: %s\nadmin: %s ed25519=%s x25519=%s\nmembers: %u\n", date, r->admin.name, ed, x,
        (unsigned)r->n_members);
    for (uint32_t i = 0; i < r->n_members; i++) {
        const roster_member *m = &r->members[i];
        hex_encode(m->pub.sign_pub, 32, ed);
        hex_encode(m->pub.kx_pub, 32, x);
        roster_weight_format(m->max_weight, w);
        put(b, "member: name=%s role=%s max-weight=%s status=%s ed25519=%s x25519=%s", m->name,
            roster_role_name(m->role), w, m->active ? "active" : "revoked", ed, x);
        put_date(b, "added", m->added);
        put_date(b, "revoked", m->revoked);
        put_date(b, "rotated", m->rotated);
        put(b, "\n");
    }
    if (b->failed) {
        free(b->p);
        return err_set("roster encoding does not fit in %zu bytes", b->cap);
    }
    return 0;
}

static void put_signature(const roster *r, struct buf *b) {
    char sig[2 * CRYPTO_ED25519_SIG_LEN + 1];
    hex_encode(r->signature, sizeof r->signature, sig);
    put(b, "signature: %s\n", sig);
}

int roster_encode(const roster *r, char **text, size_t *len) {
    struct buf b;
    if (encode_body(r, &b) < 0) return -1;
    put_signature(r, &b);
    if (b.failed) {
        free(b.p);
        return err_set("roster encoding does not fit in %zu bytes", b.cap);
    }
    *text = b.p;
    *len = b.len;
    return 0;
}

/* ---- parsing -------------------------------------------------------------------------- */

struct cur {
    const char *text, *what;
    size_t len, pos;
    int line;
    const char *line_start; /* for columns in messages */
};

static int perr(const struct cur *c, const char *fmt, ...) ERR_PRINTF(2, 3);
static int perr(const struct cur *c, const char *fmt, ...) {
    char msg[640];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return err_set("%s: line %d: %s", c->what, c->line, msg);
}

/* The next line, without its '\n', which must be there; every byte of it
 * printable ASCII. */
static int next_line(struct cur *c, const char **s, size_t *n) {
    c->line++;
    if (c->pos >= c->len) return perr(c, "missing: the file ends early (truncated?)");
    const char *start = c->text + c->pos;
    const char *nl = memchr(start, '\n', c->len - c->pos);
    if (!nl) return perr(c, "not terminated by a newline (truncated?)");
    for (const char *p = start; p < nl; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
            return perr(c, "byte 0x%02x at column %zu is not printable ASCII", (unsigned char)*p,
                        (size_t)(p - start) + 1);
    c->line_start = start;
    *s = start;
    *n = (size_t)(nl - start);
    c->pos = (size_t)(nl - c->text) + 1;
    return 0;
}

/* A line "<key>: <value>"; *v, *vn the value. */
static int keyed_line(struct cur *c, const char *key, const char **v, size_t *vn) {
    const char *s;
    size_t n, kl = strlen(key);
    if (next_line(c, &s, &n) < 0) return -1;
    if (n < kl + 2 || memcmp(s, key, kl) != 0 || s[kl] != ':' || s[kl + 1] != ' ')
        return perr(c, "must start with '%s: '", key);
    *v = s + kl + 2;
    *vn = n - kl - 2;
    return 0;
}

static int parse_uint(struct cur *c, const char *field, const char *s, size_t n, uint64_t min,
                      uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    int ok = n > 0 && n <= 20 && !(n > 1 && s[0] == '0');
    for (size_t i = 0; ok && i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (max - (uint64_t)(s[i] - '0')) / 10)
            ok = 0;
        else
            v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (!ok || v < min)
        return perr(c, "%s must be a decimal integer from %llu to %llu without leading zeros",
                    field, (unsigned long long)min, (unsigned long long)max);
    *out = v;
    return 0;
}

static int parse_hex(struct cur *c, const char *field, const char *s, size_t n, uint8_t *out,
                     size_t bytes) {
    if (n != 2 * bytes)
        return perr(c, "%s must be %zu lowercase hex digits, found %zu characters", field,
                    2 * bytes, n);
    for (size_t i = 0; i < bytes; i++) {
        int hi = hex_value(s[2 * i], 0), lo = hex_value(s[2 * i + 1], 0);
        if (hi < 0 || lo < 0)
            return perr(c, "%s must be lowercase hex digits (0-9, a-f), found '%c'", field,
                        hi < 0 ? s[2 * i] : s[2 * i + 1]);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

/* One "key=value" token of a space-separated line at *p (< end); the value
 * runs to the next space or the end. */
static int token(struct cur *c, const char **p, const char *end, const char *key, const char **v,
                 size_t *vn) {
    size_t kl = strlen(key);
    if ((size_t)(end - *p) < kl + 1 || memcmp(*p, key, kl) != 0 || (*p)[kl] != '=')
        return perr(c, "expected '%s=' at column %zu", key, (size_t)(*p - c->line_start) + 1);
    const char *s = *p + kl + 1, *e = s;
    while (e < end && *e != ' ') e++;
    if (e == s) return perr(c, "%s has an empty value", key);
    if (e < end && e + 1 == end) return perr(c, "a space ends the line");
    *v = s;
    *vn = (size_t)(e - s);
    *p = e < end ? e + 1 : e;
    return 0;
}

static int parse_name(struct cur *c, const char *field, const char *s, size_t n, char *out) {
    if (n == 0 || n > KEYS_NAME_MAX)
        return perr(c, "%s must be 1 to %d characters, found %zu", field, KEYS_NAME_MAX, n);
    memcpy(out, s, n);
    out[n] = '\0';
    if (keys_name_check(out) < 0) return perr(c, "%s: %s", field, err_msg());
    return 0;
}

static int parse_date(struct cur *c, const char *field, const char *s, size_t n, int optional,
                      int64_t *t) {
    if (optional && n == 1 && s[0] == '-') {
        *t = 0;
        return 0;
    }
    if (date_parse(s, n, t) < 0)
        return perr(c, "%s must be a UTC date YYYY-MM-DDTHH:MM:SSZ from 1970 to 9999%s, got '%.*s'",
                    field, optional ? " or '-'" : "", (int)(n > 32 ? 32 : n), s);
    return 0;
}

static int parse_member(struct cur *c, roster_member *m) {
    const char *s, *v, *end;
    size_t n, vn;
    if (keyed_line(c, "member", &s, &n) < 0) return -1;
    end = s + n;
    memset(m, 0, sizeof *m);
    if (token(c, &s, end, "name", &v, &vn) < 0 || parse_name(c, "name", v, vn, m->name) < 0)
        return -1;
    if (token(c, &s, end, "role", &v, &vn) < 0) return -1;
    if (vn == 6 && !memcmp(v, "member", 6))
        m->role = ROSTER_ROLE_MEMBER;
    else if (vn == 8 && !memcmp(v, "observer", 8))
        m->role = ROSTER_ROLE_OBSERVER;
    else
        return perr(c, "role must be 'member' or 'observer'");
    if (token(c, &s, end, "max-weight", &v, &vn) < 0) return -1;
    if (roster_weight_parse(v, vn, &m->max_weight) < 0) return perr(c, "%s", err_msg());
    if (token(c, &s, end, "status", &v, &vn) < 0) return -1;
    if (vn == 6 && !memcmp(v, "active", 6))
        m->active = 1;
    else if (!(vn == 7 && !memcmp(v, "revoked", 7)))
        return perr(c, "status must be 'active' or 'revoked'");
    if (token(c, &s, end, "ed25519", &v, &vn) < 0 ||
        parse_hex(c, "ed25519", v, vn, m->pub.sign_pub, 32) < 0 ||
        token(c, &s, end, "x25519", &v, &vn) < 0 ||
        parse_hex(c, "x25519", v, vn, m->pub.kx_pub, 32) < 0 ||
        token(c, &s, end, "added", &v, &vn) < 0 ||
        parse_date(c, "added", v, vn, 0, &m->added) < 0 ||
        token(c, &s, end, "revoked", &v, &vn) < 0 ||
        parse_date(c, "revoked", v, vn, 1, &m->revoked) < 0 ||
        token(c, &s, end, "rotated", &v, &vn) < 0 ||
        parse_date(c, "rotated", v, vn, 1, &m->rotated) < 0)
        return -1;
    if (s != end)
        return perr(c, "unexpected text after 'rotated=' at column %zu",
                    (size_t)(s - c->line_start) + 1);
    if (m->active != (m->revoked == 0))
        return perr(c, "member '%s': status %s does not match revoked=%s", m->name,
                    m->active ? "active" : "revoked", m->revoked ? "<date>" : "-");
    /* The identity file's own label is not in the roster; the member's name stands in. */
    memcpy(m->pub.name, m->name, sizeof m->name);
    return keys_fingerprint(&m->pub, m->fp);
}

static int parse_admin(struct cur *c, keys_public *a) {
    const char *s, *v, *end, *sp;
    size_t n, vn;
    if (keyed_line(c, "admin", &s, &n) < 0) return -1;
    end = s + n;
    sp = memchr(s, ' ', n);
    if (!sp) return perr(c, "admin must be '<name> ed25519=<hex> x25519=<hex>'");
    if (parse_name(c, "admin name", s, (size_t)(sp - s), a->name) < 0) return -1;
    s = sp + 1;
    if (token(c, &s, end, "ed25519", &v, &vn) < 0 ||
        parse_hex(c, "admin ed25519", v, vn, a->sign_pub, 32) < 0 ||
        token(c, &s, end, "x25519", &v, &vn) < 0 ||
        parse_hex(c, "admin x25519", v, vn, a->kx_pub, 32) < 0)
        return -1;
    if (s != end) return perr(c, "unexpected text after the admin's x25519 key");
    return 0;
}

/* Names and keys are unique across all entries, revoked ones included. */
static int check_unique(const roster *r, const char *what) {
    for (uint32_t i = 0; i < r->n_members; i++)
        for (uint32_t j = 0; j < i; j++) {
            const roster_member *a = &r->members[j], *b = &r->members[i];
            if (!strcmp(a->name, b->name))
                return err_set("%s: duplicate member name '%s' (members %u and %u)", what, a->name,
                               j + 1, i + 1);
            if (crypto_equal(a->fp, b->fp, KEYS_FP_LEN))
                return err_set("%s: members '%s' and '%s' have the same keys (duplicate "
                               "fingerprint %s...)",
                               what, a->name, b->name, short_hex(a->fp).s);
        }
    return 0;
}

static int parse_into(const char *text, size_t len, roster *r, const char *what) {
    struct cur c = {.text = text, .what = what, .len = len};
    const char *s, *v;
    size_t n, vn;
    uint64_t u;
    if (len > ROSTER_FILE_MAX)
        return err_set("%s: %zu bytes, over the roster limit of %u", what, len, ROSTER_FILE_MAX);
    if (len < sizeof MAGIC - 1 || memcmp(text, MAGIC, sizeof MAGIC - 1) != 0)
        return err_set("%s: not a fedlora roster (the first line must be 'fedlora-roster v1')",
                       what);
    if (next_line(&c, &s, &n) < 0) return -1;
    if (keyed_line(&c, "consortium", &v, &vn) < 0) return -1;
    if (consortium_check(v, vn) < 0) return perr(&c, "%s", err_msg());
    memcpy(r->consortium, v, vn);
    r->consortium[vn] = '\0';
    if (keyed_line(&c, "version", &v, &vn) < 0 ||
        parse_uint(&c, "version", v, vn, 1, ROSTER_VERSION_MAX, &r->version) < 0)
        return -1;
    if (keyed_line(&c, "previous", &v, &vn) < 0) return -1;
    if (r->version == 1) {
        if (!(vn == 4 && !memcmp(v, "none", 4)))
            return perr(&c, "version 1 has no previous version: must be 'previous: none'");
    } else if (parse_hex(&c, "previous", v, vn, r->previous, sizeof r->previous) < 0) {
        return -1;
    }
    if (keyed_line(&c, "issued", &v, &vn) < 0 || parse_date(&c, "issued", v, vn, 0, &r->issued) < 0)
        return -1;
    if (parse_admin(&c, &r->admin) < 0 || keys_fingerprint(&r->admin, r->admin_fp) < 0) return -1;
    if (keyed_line(&c, "members", &v, &vn) < 0 ||
        parse_uint(&c, "members", v, vn, 0, ROSTER_MEMBERS_MAX, &u) < 0)
        return -1;
    r->n_members = (uint32_t)u;
    /* Bound the allocation by the bytes that are there before making it. */
    if ((uint64_t)r->n_members * MEMBER_LINE_MIN > len - c.pos)
        return perr(&c,
                    "declares %u members, but only %zu bytes follow (a member line takes at "
                    "least %d): truncated or corrupt",
                    r->n_members, len - c.pos, MEMBER_LINE_MIN);
    if (r->n_members > 0) {
        r->members = calloc(r->n_members, sizeof *r->members);
        if (!r->members) return err_set("out of memory for %u roster members", r->n_members);
    }
    for (uint32_t i = 0; i < r->n_members; i++)
        if (parse_member(&c, &r->members[i]) < 0) return -1;
    size_t body_len = c.pos;
    if (keyed_line(&c, "signature", &v, &vn) < 0 ||
        parse_hex(&c, "signature", v, vn, r->signature, sizeof r->signature) < 0)
        return -1;
    if (c.pos != len)
        return err_set("%s: %zu bytes after the signature line (the signature must be the last "
                       "line)",
                       what, len - c.pos);
    if (check_unique(r, what) < 0) return -1;

    /* Canonical form: the bytes must be exactly what roster_encode writes. */
    struct buf b;
    if (encode_body(r, &b) < 0) return -1;
    int same = b.len == body_len && memcmp(b.p, text, body_len) == 0;
    size_t at = 0;
    while (!same && at < body_len && at < b.len && b.p[at] == text[at]) at++;
    free(b.p);
    if (!same)
        return err_set("%s: not in canonical form (differs at byte %zu from the form fedlora "
                       "writes): was it edited by hand?",
                       what, at);
    return crypto_sha256(text, len, r->hash);
}

int roster_parse(const char *text, size_t len, roster *out, const char *what) {
    memset(out, 0, sizeof *out);
    if (parse_into(text, len, out, what) < 0) {
        roster_free(out);
        return -1;
    }
    return 0;
}

/* ---- verification ------------------------------------------------------------------------ */

int roster_verify(const roster *r, const uint8_t admin_fp[KEYS_FP_LEN], uint64_t min_version) {
    char want[KEYS_FP_TEXT_LEN], got[KEYS_FP_TEXT_LEN];
    if (!crypto_equal(r->admin_fp, admin_fp, KEYS_FP_LEN)) {
        keys_fingerprint_text(admin_fp, want);
        keys_fingerprint_text(r->admin_fp, got);
        return err_set("roster version %llu names admin '%s' (fingerprint %s), not the pinned "
                       "admin (fingerprint %s): refused; get the roster from your consortium's "
                       "admin, or check the pinned fingerprint",
                       (unsigned long long)r->version, r->admin.name, got, want);
    }
    struct buf b;
    if (encode_body(r, &b) < 0) return -1;
    int rc = crypto_ed25519_verify(r->signature, r->admin.sign_pub, b.p, b.len);
    free(b.p);
    if (rc != 0)
        return err_set("roster version %llu: the admin's signature does not verify: the file was "
                       "changed after the admin signed it (tampered or damaged) or was signed by "
                       "another key; refused",
                       (unsigned long long)r->version);
    if (r->version < min_version)
        return err_set("roster version %llu is older than version %llu in force: rollback "
                       "refused (use the newest roster from the admin)",
                       (unsigned long long)r->version, (unsigned long long)min_version);
    return 0;
}

int roster_load(const char *path, const uint8_t admin_fp[KEYS_FP_LEN], uint64_t min_version,
                roster *out) {
    char *text;
    size_t len;
    memset(out, 0, sizeof *out);
    if (fio_read_all(path, ROSTER_FILE_MAX, &text, &len) < 0)
        return err_context("reading roster %s", path);
    int rc = roster_parse(text, len, out, path);
    free(text);
    if (rc < 0) return -1;
    if (roster_verify(out, admin_fp, min_version) < 0) {
        roster_free(out);
        return err_context("%s", path);
    }
    return 0;
}

int roster_check_chain(const roster *older, const roster *newer) {
    if (strcmp(older->consortium, newer->consortium) != 0)
        return err_set("roster version %llu is for consortium '%s', version %llu for '%s': not "
                       "the same roster",
                       (unsigned long long)newer->version, newer->consortium,
                       (unsigned long long)older->version, older->consortium);
    if (!crypto_equal(older->admin_fp, newer->admin_fp, KEYS_FP_LEN))
        return err_set("roster version %llu has another admin than version %llu: broken hash "
                       "chain",
                       (unsigned long long)newer->version, (unsigned long long)older->version);
    if (newer->version != older->version + 1)
        return err_set("roster version %llu does not follow version %llu directly (expected "
                       "%llu): the hash chain can only be checked between consecutive versions",
                       (unsigned long long)newer->version, (unsigned long long)older->version,
                       (unsigned long long)older->version + 1);
    if (!crypto_equal(newer->previous, older->hash, CRYPTO_SHA256_LEN))
        return err_set("roster version %llu names previous %s..., but version %llu hashes to "
                       "%s...: broken hash chain",
                       (unsigned long long)newer->version, short_hex(newer->previous).s,
                       (unsigned long long)older->version, short_hex(older->hash).s);
    return 0;
}

/* ---- writing ------------------------------------------------------------------------------ */

int roster_write(roster *r, const keys_secret *admin, const char *path) {
    if (memcmp(admin->pub.sign_pub, r->admin.sign_pub, 32) != 0 ||
        memcmp(admin->pub.kx_pub, r->admin.kx_pub, 32) != 0) {
        char got[KEYS_FP_TEXT_LEN];
        uint8_t fp[KEYS_FP_LEN];
        if (keys_fingerprint(&admin->pub, fp) < 0) return -1;
        keys_fingerprint_text(fp, got);
        return err_set("identity '%s' (fingerprint %s) is not this roster's admin '%s': only the "
                       "admin signs the roster",
                       admin->pub.name, got, r->admin.name);
    }
    if (check_unique(r, path) < 0) return -1;
    struct buf b;
    if (encode_body(r, &b) < 0) return -1;
    if (crypto_ed25519_sign(r->signature, admin->sign_seed, b.p, b.len) < 0) {
        free(b.p);
        return err_context("signing roster %s", path);
    }
    put_signature(r, &b);
    /* Read back what was produced: the writer never emits a file readers refuse. */
    roster check;
    int rc = b.failed ? err_set("roster encoding does not fit in %zu bytes", b.cap)
                      : roster_parse(b.p, b.len, &check, path);
    if (rc == 0) {
        rc = roster_verify(&check, r->admin_fp, 0);
        memcpy(r->hash, check.hash, sizeof r->hash);
        roster_free(&check);
    }
    if (rc == 0) rc = fio_write_atomic(path, b.p, b.len, 0644);
    free(b.p);
    return rc == 0 ? 0 : err_context("writing roster %s", path);
}
