/* journal — the aggregator's append-only log of decisions, one record a line.
 *
 *   <record> #<checksum>\n
 *
 * record: printable ASCII without '#', at most JOURNAL_RECORD_MAX bytes;
 * checksum: the first 8 hex digits of SHA-256(record). Each append is one
 * write(2) followed by fsync(2), so when journal_append returns, the record
 * survives a crash or a power cut.
 *
 * A crash can leave only the LAST record incomplete (a line without its
 * '\n', or with bytes the checksum refuses): on open such a torn tail is
 * ignored and cut off (ftruncate + fsync), and appending goes on after the
 * last good record; journal_cut tells the caller what was cut, and whether
 * the line was complete (damage rather than a crash: then it is logged
 * loudly and what it may have recorded is recovered, docs/protocol.md). A bad record that is
 * followed by other records cannot come from a crash (records are appended one at a time, each made
 * durable before the next is written): it is corruption, and opening fails with the line and
 * offset, since guessing which decisions were made would be worse. */
#ifndef FL_AGGREGATOR_JOURNAL_H
#define FL_AGGREGATOR_JOURNAL_H

#include "wire/keys.h"
#include "wire/msg.h"

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_RECORD_MAX 480
#define JOURNAL_FILE_MAX (256u << 20) /* bytes of journal read at open */

/* ---- records ------------------------------------------------------------------
 *
 * The aggregator's decisions, one record each, in the order they happen
 * (docs/protocol.md, "Journal"):
 *
 *   init <consortium hex> <version hex>          the first round's base, imported
 *   open <r> <version hex> <deadline>            round r trains on that version
 *   accept <r> <member> <msgid hex> <digest hex> <bytes> <time>
 *                                                a delta is in the inbox, durably
 *   close <r> <n>                                no more submissions; n accepted
 *   publish <r> <version hex> [<update hex> <bytes>]
 *                                                round r's model is in the store,
 *                                                and its low-rank update (from
 *                                                round r's base) when it has one
 *   fail <r> <reason>                            round r ends with no new version
 *   roster <version> <sha256 hex>                a signed roster version is in force
 *                                                from here on (members.h)
 *
 * Fields are separated by single spaces; numbers are unsigned decimals, hashes
 * 64 and message ids 32 lowercase hex digits, names as keys_name_check. This
 * file is the only place that writes or reads that grammar: the aggregator
 * deals in journal_record values (rounds.c applies them). */

typedef enum {
    JOURNAL_INIT = 1,
    JOURNAL_OPEN,
    JOURNAL_ACCEPT,
    JOURNAL_CLOSE,
    JOURNAL_PUBLISH,
    JOURNAL_FAIL,
    JOURNAL_ROSTER,
} journal_kind;

#define JOURNAL_REASON_MAX 64 /* bytes of a fail record's reason (one word) */

typedef struct {
    journal_kind kind;
    uint64_t round;                   /* every kind but init; roster: the roster's version */
    uint8_t hash[MSG_HASH_LEN];       /* init: the imported base; open: the round's base;
                                         publish: the new version; roster: the file's SHA-256 */
    uint8_t consortium[MSG_HASH_LEN]; /* init */
    uint64_t deadline;                /* open: unix seconds */
    char member[KEYS_NAME_MAX + 1];   /* accept: */
    uint8_t msgid[MSG_ID_LEN];
    uint8_t digest[MSG_HASH_LEN]; /* SHA-256 of the envelope */
    uint64_t size, time;          /* its bytes; when it was accepted, unix seconds */
    uint64_t count;               /* close: deltas accepted */
    int has_update;               /* publish: the low-rank update object, when there is one */
    uint8_t update_hash[MSG_HASH_LEN];
    uint64_t update_size;                /* > 0 */
    char reason[JOURNAL_REASON_MAX + 1]; /* fail: one word, e.g. "below-quorum" */
} journal_record;

/* "init", "open", ... */
const char *journal_kind_name(journal_kind k);

/* The record's text (without the checksum), NUL-terminated, into out. -1 when
 * a field breaks the grammar (a name, an empty or spaced reason). */
int journal_record_encode(const journal_record *r, char out[JOURNAL_RECORD_MAX + 1]);
/* Parses a record's text. -1 with a message quoting it when it is not one of
 * the records above with well-formed fields. Only the fields of its kind are
 * set; the rest are zero. */
int journal_record_decode(const char *text, journal_record *r);

typedef struct agg_journal agg_journal;

/* Called for each good record in order (rec is NUL-terminated, without the
 * checksum); line is 1-based. Returning -1 stops the replay with that error. */
typedef int (*journal_record_fn)(void *arg, const char *rec, size_t line);

/* Opens (creating it if missing) and replays the journal at path. With
 * readonly set, a torn tail is skipped but not cut, and *out is NULL
 * (no appends); otherwise *out is ready for journal_append. */
int journal_open(agg_journal **out, const char *path, int readonly, journal_record_fn fn,
                 void *arg);
/* What journal_open cut off the end, for the caller's log: 0 when nothing;
 * else the 1-based line and byte offset of the cut record, and whether it
 * was a complete line (ending in '\n') whose checksum failed: not the trace
 * of a crash mid-append (that leaves a line without its '\n', or nothing)
 * but damage after it was written, which the caller must say and may have
 * to repair (a lost acceptance: aggregator/uploads.c recovers it). */
int journal_cut(const agg_journal *j, size_t *line, size_t *offset, int *complete);
/* Appends one record (printf-style) durably. */
int journal_append(agg_journal *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends r (journal_record_encode) durably. */
int journal_write(agg_journal *j, const journal_record *r);
void journal_close(agg_journal *j);
/* 0 once an append failed and could not be cut back (the file may hold a
 * partial line): the aggregator must stop; 1 while appends can go on (a
 * failed one, cut back, left the file as it was). */
int journal_usable(const agg_journal *j);

/* The line for one record, "<record> #<8 hex>\n", into out (cap >=
 * JOURNAL_RECORD_MAX + 12); its length, or -1 when rec breaks the rules. */
int journal_format(const char *rec, char *out, size_t cap);

#endif
