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
 * last good record. A bad record that is followed by other records cannot
 * come from a crash (records are appended one at a time, each made durable
 * before the next is written): it is corruption, and opening fails with the
 * line and offset, since guessing which decisions were made would be worse. */
#ifndef FL_AGGREGATOR_JOURNAL_H
#define FL_AGGREGATOR_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#define JOURNAL_RECORD_MAX 480
#define JOURNAL_FILE_MAX (256u << 20) /* bytes of journal read at open */

typedef struct agg_journal agg_journal;

/* Called for each good record in order (rec is NUL-terminated, without the
 * checksum); line is 1-based. Returning -1 stops the replay with that error. */
typedef int (*journal_record_fn)(void *arg, const char *rec, size_t line);

/* Opens (creating it if missing) and replays the journal at path. With
 * readonly set, a torn tail is skipped but not cut, and *out is NULL
 * (no appends); otherwise *out is ready for journal_append. */
int journal_open(agg_journal **out, const char *path, int readonly, journal_record_fn fn,
                 void *arg);
/* Appends one record (printf-style) durably. */
int journal_append(agg_journal *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void journal_close(agg_journal *j);

/* The line for one record, "<record> #<8 hex>\n", into out (cap >=
 * JOURNAL_RECORD_MAX + 12); its length, or -1 when rec breaks the rules. */
int journal_format(const char *rec, char *out, size_t cap);

#endif
