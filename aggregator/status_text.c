/* status_text — the status view for a terminal (`fedlora status`): the
 * round and its deadline, one line per member, the last rounds with their
 * losses and evaluation scores. Plain text; names and reasons from the view
 * are printed with anything but printable ASCII replaced by '?', so a
 * status page cannot send control sequences to the terminal. */
#include "aggregator/status.h"

#include "util/err.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT_ROUNDS 10 /* rounds listed */

/* s, at most width columns, printable ASCII only (UTF-8 shows as '?'). */
static void put(FILE *f, const char *s, int width) {
    int n = 0;
    for (; *s && (width < 0 || n < width); s++, n++)
        fputc((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? *s : '?', f);
    for (; n < width; n++) fputc(' ', f);
}

static void num(FILE *f, double x, int digits, int width) {
    if (isfinite(x))
        fprintf(f, "%*.*f", width, digits, x);
    else
        fprintf(f, "%*s", width, "-");
}

int status_text(const status_view *v, int64_t now, int width, char **out, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return err_errno("open_memstream for the status text");
    if (width < 60) width = 60;
    char in[32], o[32];
    put(f, v->consortium, -1);
    fprintf(f, ": round %" PRIu64 " of %" PRIu64 ", ", v->round, v->rounds);
    put(f, v->state, -1);
    char deadline[96], deltas[64];
    int open = status_round_words(v, now, deadline, sizeof deadline, deltas, sizeof deltas);
    if (deadline[0]) fprintf(f, ", %s", deadline);
    if (open) fprintf(f, ", %s", deltas);
    fputc('\n', f);
    status_fmt_bytes(v->bytes_received, in, sizeof in);
    status_fmt_bytes(v->bytes_served, o, sizeof o);
    uint64_t refused = 0;
    for (int i = 0; i < v->nrefused; i++) refused += v->refused[i].count;
    const char *hash = open ? v->base : v->version;
    fprintf(f, "%s %.16s  deltas receipted %" PRIu64 "  refusals %" PRIu64 "  in %s  out %s",
            open ? "base" : "version", hash[0] ? hash : "-", v->deltas_accepted, refused, in, o);
    if (v->dp) {
        fputs("  DP epsilon ", f);
        num(f, v->epsilon, 3, 0);
        fputs(" of ", f);
        num(f, v->epsilon_budget, 3, 0);
    }
    fputs("\n\n", f);

    int why_w = width - 76;
    if (why_w < 12) why_w = 12;
    fprintf(f, "%-20s %-10s %-14s %10s %10s  %s\n", "member", "state", "last contact", "up", "down",
            "why / previous round");
    for (int i = 0; i < v->nmembers; i++) {
        const status_member *m = &v->members[i];
        char ago[48];
        status_fmt_ago(m->last_contact, now, ago, sizeof ago);
        status_fmt_bytes(m->bytes_in, in, sizeof in);
        status_fmt_bytes(m->bytes_out, o, sizeof o);
        put(f, m->name, 20);
        fputc(' ', f);
        put(f, status_state_name(m->state), 10);
        fprintf(f, " %-14s %10s %10s  ", ago, in, o);
        if (m->why[0])
            put(f, m->why, -1);
        else if (m->last_round) {
            fprintf(f, "round %" PRIu64 ": %s", m->last_round, status_state_name(m->last));
            if (m->last_why[0]) {
                fputs(" (", f);
                put(f, m->last_why, -1);
                fputc(')', f);
            }
        }
        fputc('\n', f);
    }

    fprintf(f, "\n%5s  %-15s %-16s %6s %7s %17s", "round", "status", "version", "merged", "dropped",
            "loss before/after");
    for (int i = 0; i < v->neval_sets; i++) {
        /* Right-aligned over the numbers, 16 columns. */
        char h[17];
        snprintf(h, sizeof h, "%.16s", v->eval_sets[i]);
        fprintf(f, " %*s", (int)(16 - strlen(h)), "");
        put(f, h, -1);
    }
    fputc('\n', f);
    int first = v->nhistory > TEXT_ROUNDS ? v->nhistory - TEXT_ROUNDS : 0;
    for (int k = first; k < v->nhistory; k++) {
        const status_round *r = &v->history[k];
        fprintf(f, "%5" PRIu64 "  ", r->round);
        put(f, r->status, 15);
        fprintf(f, " %-16.16s ", r->version[0] ? r->version : "-");
        if (r->round) {
            fprintf(f, "%6d %7d ", r->accepted, r->rejected);
            num(f, r->loss_before, 3, 8);
            fputc('/', f);
            num(f, r->loss_after, 3, -8);
        } else {
            fprintf(f, "%6s %7s %17s", "", "", "");
        }
        for (int i = 0; i < v->neval_sets; i++) {
            const status_score *sc = NULL;
            for (int j = 0; j < r->nscores; j++)
                if (!strcmp(r->scores[j].name, v->eval_sets[i])) sc = &r->scores[j];
            fputc(' ', f);
            if (sc && sc->choice) {
                num(f, sc->acc, 3, 7);
                fputc('/', f);
                num(f, sc->acc_norm, 3, -8);
            } else if (sc) {
                num(f, sc->loss, 4, 16);
            } else {
                fprintf(f, "%16.16s", r->eval[0] ? r->eval : "-");
            }
        }
        fputc('\n', f);
    }
    return status_stream_done(f, &buf, &n, "the status text", out, len);
}
