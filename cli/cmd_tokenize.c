/* fedlora tokenize — a text or JSONL corpus → the pre-tokenized corpus file
 * that fedlora train reads for large corpora (docs/tokenizer.md).
 *
 * Input, streamed line by line so that its size does not matter:
 *   text   each non-blank line is one document, as fedlora train and eval
 *          read text files (lib data/dataset.h); a line's final "\r" is
 *          dropped, so CRLF files read the same as LF files.
 *   jsonl  one JSON object per line with a "text" string; blank lines are
 *          skipped; each record is one document.
 * Format auto (the default) picks jsonl for *.jsonl and *.json, text otherwise. */
#include "cli/commands.h"
#include "model/tokenizer/tokcorpus.h"
#include "model/tokenizer/tokenizer.h"
#include "util/clock.h"
#include "util/err.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DOC_MAX ((size_t)256 << 20) /* one document or line: 256 MiB at most */

static void usage(FILE *f) {
    fprintf(f,
            "usage: fedlora tokenize --tokenizer tokenizer.json --data FILE --out FILE\n"
            "                        [--format auto|text|jsonl] [--no-special]\n"
            "                        [--invalid-utf8 error|replace]\n\n"
            "Encodes a corpus with a Hugging Face tokenizer.json into fedlora's pre-tokenized\n"
            "format (docs/tokenizer.md), which fedlora train reads for large corpora.\n\n"
            "  --tokenizer FILE   the base model's tokenizer.json\n"
            "  --data FILE        text (one document per non-blank line) or JSONL\n"
            "                     ({\"text\": ...} per line)\n"
            "  --out FILE         the token file to write (replaced atomically)\n"
            "  --format F         auto (default: jsonl for .jsonl/.json, else text), text, jsonl\n"
            "  --no-special       do not add the tokenizer's special tokens (BOS) per document\n"
            "  --invalid-utf8 M   error (default): stop at the first invalid byte;\n"
            "                     replace: replace invalid bytes with U+FFFD and count them\n");
}

typedef struct {
    tokenizer *tok;
    tokcorpus_writer *w;
    tokenizer_ids ids;
    int special, replace;
    const char *data;
    uint64_t docs, repaired_docs, bytes;
    double t0, last_report;
    off_t total;
    int tty;
} run_state;

static void progress(run_state *s, int final) {
    double t = clock_now_s(), dt = t - s->t0;
    if (!final && t - s->last_report < (s->tty ? 0.25 : 10.0)) return;
    s->last_report = t;
    double mb = (double)s->bytes / 1e6;
    char pct[32] = "";
    if (s->total > 0 && !final)
        snprintf(pct, sizeof pct, " (%.0f%%)", 100.0 * (double)s->bytes / (double)s->total);
    char secs[32] = "";
    if (final) snprintf(secs, sizeof secs, " in %.1f s", dt);
    fprintf(stderr, "%stokenize: %.1f MB%s, %llu documents, %llu tokens%s, %.1f MB/s%s",
            s->tty && !final ? "\r" : "", mb, pct, (unsigned long long)s->docs,
            (unsigned long long)tokcorpus_writer_tokens(s->w), secs, dt > 0 ? mb / dt : 0.0,
            s->tty && !final ? "  " : "\n");
}

/* Encodes one document; `where` names it in errors ("line 12", "document 3"). */
static int add_document(run_state *s, const char *text, size_t len, const char *where) {
    char *fixed = NULL;
    size_t bad = tokenizer_utf8_valid_prefix(text, len);
    if (bad != len) {
        if (!s->replace)
            return err_set("%s: %s: invalid UTF-8 at byte %zu of the document; convert the file "
                           "to UTF-8 or pass --invalid-utf8 replace",
                           s->data, where, bad);
        size_t n_bad;
        if (tokenizer_utf8_repair(text, len, &fixed, &len, &n_bad)) return -1;
        text = fixed;
        s->repaired_docs++;
    }
    s->ids.n = 0;
    int rc = tokenizer_encode(s->tok, text, len, s->special, &s->ids) ||
             tokcorpus_writer_add(s->w, s->ids.ids, s->ids.n);
    free(fixed);
    if (rc) return err_context("%s: %s", s->data, where);
    s->docs++;
    return 0;
}

static int is_blank(const char *line, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (line[i] != ' ' && line[i] != '\t') return 0;
    return 1;
}

static int read_text(run_state *s, FILE *f) {
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        s->bytes += (uint64_t)n;
        size_t len = (size_t)n;
        if (len && line[len - 1] == '\n') len--;
        if (len && line[len - 1] == '\r') len--;
        if (is_blank(line, len)) {
            progress(s, 0);
            continue;
        }
        if (len > DOC_MAX) {
            rc = err_set("%s:%zu: line longer than %zu MiB", s->data, lineno, DOC_MAX >> 20);
            break;
        }
        char where[64];
        snprintf(where, sizeof where, "line %zu", lineno);
        rc = add_document(s, line, len, where);
    }
    if (!rc && ferror(f)) rc = err_errno("cannot read %s", s->data);
    free(line);
    return rc;
}

static int read_jsonl(run_state *s, FILE *f) {
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    int rc = 0;
    while (!rc && (n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        s->bytes += (uint64_t)n;
        size_t len = (size_t)n;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (is_blank(line, len)) continue;
        if (len > DOC_MAX) {
            rc = err_set("%s:%zu: line longer than %zu MiB", s->data, lineno, DOC_MAX >> 20);
            break;
        }
        char *fixed = NULL;
        if (s->replace && tokenizer_utf8_valid_prefix(line, len) != len) {
            if (tokenizer_utf8_repair(line, len, &fixed, &len, NULL)) {
                rc = -1;
                break;
            }
            s->repaired_docs++;
        }
        json_error_t jerr;
        json_t *j = json_loadb(fixed ? fixed : line, len, JSON_ALLOW_NUL, &jerr);
        free(fixed);
        json_t *text = json_is_object(j) ? json_object_get(j, "text") : NULL;
        if (!j) {
            rc = err_set("%s:%zu: malformed JSON at column %d: %s", s->data, lineno, jerr.column,
                         jerr.text);
        } else if (!json_is_string(text)) {
            rc = err_set("%s:%zu: the record has no \"text\" string (fedlora tokenize reads "
                         "{\"text\": ...} records)",
                         s->data, lineno);
        } else {
            char where[64];
            snprintf(where, sizeof where, "line %zu", lineno);
            rc = add_document(s, json_string_value(text), json_string_length(text), where);
        }
        json_decref(j);
        progress(s, 0);
    }
    if (!rc && ferror(f)) rc = err_errno("cannot read %s", s->data);
    free(line);
    return rc;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int cmd_tokenize(int argc, char **argv) {
    const char *tok_path = NULL, *data = NULL, *out = NULL, *format = "auto", *invalid = "error";
    int special = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = !strcmp(a, "--tokenizer")      ? &tok_path
                           : !strcmp(a, "--data")         ? &data
                           : !strcmp(a, "--out")          ? &out
                           : !strcmp(a, "--format")       ? &format
                           : !strcmp(a, "--invalid-utf8") ? &invalid
                                                          : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-special")) {
            special = 0;
        } else if (dst && i + 1 < argc) {
            *dst = argv[++i];
        } else {
            fprintf(stderr, "fedlora tokenize: %s '%s'\n",
                    dst ? "missing value after" : "unknown option", a);
            usage(stderr);
            return 2;
        }
    }
    if (!tok_path || !data || !out) {
        fprintf(stderr, "fedlora tokenize: --tokenizer, --data and --out are required\n");
        usage(stderr);
        return 2;
    }
    int jsonl;
    if (!strcmp(format, "auto"))
        jsonl = ends_with(data, ".jsonl") || ends_with(data, ".json");
    else if (!strcmp(format, "jsonl"))
        jsonl = 1;
    else if (!strcmp(format, "text"))
        jsonl = 0;
    else {
        fprintf(stderr, "fedlora tokenize: --format must be auto, text or jsonl\n");
        return 2;
    }
    if (strcmp(invalid, "error") != 0 && strcmp(invalid, "replace") != 0) {
        fprintf(stderr, "fedlora tokenize: --invalid-utf8 must be error or replace\n");
        return 2;
    }

    run_state s = {.special = special, .replace = !strcmp(invalid, "replace"), .data = data};
    s.tty = isatty(STDERR_FILENO);
    FILE *f = NULL;
    int rc = tokenizer_load(tok_path, &s.tok);
    if (!rc && !(f = fopen(data, "rb"))) rc = err_errno("cannot open %s", data);
    if (!rc) {
        struct stat st;
        s.total = fstat(fileno(f), &st) == 0 ? st.st_size : 0;
        rc = tokcorpus_writer_open(out, tokenizer_vocab_size(s.tok),
                                   special ? TOKCORPUS_FLAG_SPECIAL : 0, &s.w);
    }
    if (!rc) {
        s.t0 = s.last_report = clock_now_s();
        rc = jsonl ? read_jsonl(&s, f) : read_text(&s, f);
        if (s.tty) fputc('\n', stderr);
        if (rc) {
            tokcorpus_writer_abort(s.w);
        } else {
            progress(&s, 1);
            uint64_t tokens = tokcorpus_writer_tokens(s.w);
            uint32_t vocab = tokenizer_vocab_size(s.tok);
            rc = tokcorpus_writer_finish(s.w);
            if (!rc) {
                printf("wrote %s: %llu documents, %llu tokens, vocab %u (%d-byte tokens)\n", out,
                       (unsigned long long)s.docs, (unsigned long long)tokens, vocab,
                       vocab <= 65536 ? 2 : 4);
                if (s.repaired_docs)
                    printf("%llu documents had invalid UTF-8, replaced with U+FFFD\n",
                           (unsigned long long)s.repaired_docs);
            }
        }
    }
    if (f) fclose(f);
    tokenizer_ids_free(&s.ids);
    tokenizer_free(s.tok);
    if (rc) {
        fprintf(stderr, "fedlora tokenize: %s\n", err_msg());
        return 1;
    }
    return 0;
}
