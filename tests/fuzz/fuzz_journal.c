/* fuzz_journal — the aggregator's journal (aggregator/journal.c) from
 * arbitrary bytes on disk: a crash, a full disk or a bad copy can leave any
 * bytes there, and the aggregator replays them before it answers anyone.
 *
 * Besides "no crash, no leak", it traps when a property fails:
 *  - every record handed to the replay is, written back with
 *    journal_format, exactly the bytes at that place of the file, in order;
 *  - when the replay succeeds, what follows the last good record is at most
 *    one torn line (no newline but possibly its last byte): anything more is
 *    corruption, which must be refused, never skipped;
 *  - opening for appends cuts exactly that torn line, and a record appended
 *    then is replayed after the same good records on the next open;
 *  - a record the grammar accepts (journal_record_decode) encodes back to a
 *    text that decodes to the same record.
 * The file lives in /dev/shm (tmpfs) when there is one, so the fsyncs of
 * the append path cost nothing. */
#include "aggregator/journal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], path[128];

/* libFuzzer ends with exit(): leave no scratch behind. */
static void cleanup(void) {
    unlink(path);
    rmdir(dir);
}

typedef struct {
    const unsigned char *data;
    size_t size, pos, records;
    int check;
} replay;

static int on_record(void *arg, const char *rec, size_t line) {
    replay *r = arg;
    char buf[JOURNAL_RECORD_MAX + 16];
    int n = journal_format(rec, buf, sizeof buf);
    if (n < 0 || r->records + 1 != line) __builtin_trap();
    if (r->check && (r->pos + (size_t)n > r->size || memcmp(r->data + r->pos, buf, (size_t)n) != 0))
        __builtin_trap();
    r->pos += (size_t)n;
    r->records++;
    journal_record a, b;
    char text[JOURNAL_RECORD_MAX + 1];
    if (journal_record_decode(rec, &a) == 0 &&
        (journal_record_encode(&a, text) != 0 || journal_record_decode(text, &b) != 0 ||
         memcmp(&a, &b, sizeof a) != 0))
        __builtin_trap();
    return 0;
}

static void write_file(const unsigned char *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
    if (!path[0]) {
        snprintf(dir, sizeof dir, "%s/fuzz_journal.XXXXXX",
                 access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
        if (!mkdtemp(dir)) abort();
        snprintf(path, sizeof path, "%s/journal", dir);
        atexit(cleanup);
    }
    write_file(data, size);
    replay r = {data, size, 0, 0, 1};
    if (journal_open(NULL, path, 1, on_record, &r) != 0) return 0;
    const unsigned char *rest = data + r.pos;
    size_t left = size - r.pos;
    const unsigned char *nl = memchr(rest, '\n', left);
    if (nl && nl != rest + left - 1) __builtin_trap(); /* a damaged record skipped */

    agg_journal *j = NULL;
    replay again = {data, size, 0, 0, 1};
    if (journal_open(&j, path, 0, on_record, &again) != 0) return 0;
    if (again.records != r.records || journal_append(j, "fuzz %zu", r.records) != 0)
        __builtin_trap();
    journal_close(j);
    replay last = {NULL, 0, 0, 0, 0};
    if (journal_open(NULL, path, 1, on_record, &last) != 0 || last.records != r.records + 1 ||
        last.pos != r.pos + (size_t)snprintf(NULL, 0, "fuzz %zu", r.records) + 11)
        __builtin_trap();
    return 0;
}
