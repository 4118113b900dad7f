/* status_html — the status page: one self-contained HTML document (inline
 * CSS and SVG, no script, no external asset) that reloads itself every few
 * seconds (<meta http-equiv="refresh">), so the deadline's countdown and
 * the members' states follow the federation without anything running in
 * the browser. Every text from the view is HTML-escaped. */
#include "aggregator/status.h"

#include "util/err.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HISTORY_ROWS 50 /* rounds listed in the table (the chart shows all) */

static void esc(FILE *f, const char *s) {
    for (; *s; s++) switch (*s) {
            case '<':
                fputs("&lt;", f);
                break;
            case '>':
                fputs("&gt;", f);
                break;
            case '&':
                fputs("&amp;", f);
                break;
            case '"':
                fputs("&quot;", f);
                break;
            case '\'':
                fputs("&#39;", f);
                break;
            default: /* control bytes are no text (HTML's parse errors) */
                fputc((unsigned char)*s < 0x20 && *s != '\n' && *s != '\t' ? '?' : *s, f);
        }
}

static void short_hash(FILE *f, const char *hex) {
    if (!hex[0])
        fputs("&mdash;", f);
    else {
        fputs("<code title=\"", f);
        esc(f, hex);
        fputs("\">", f);
        fprintf(f, "%.12s", hex);
        fputs("</code>", f);
    }
}

/* A UTC time, in full or (short) as month-day and time of day. */
static void utc(FILE *f, int64_t t, int short_form) {
    time_t tt = (time_t)t;
    struct tm tm;
    char buf[32];
    if (t > 0 && gmtime_r(&tt, &tm) &&
        strftime(buf, sizeof buf, short_form ? "%m-%d %H:%M:%S" : "%Y-%m-%d %H:%M:%S UTC", &tm))
        fputs(buf, f);
    else
        fputs("&mdash;", f);
}

static void number(FILE *f, double x, int digits) {
    if (isfinite(x))
        fprintf(f, "%.*f", digits, x);
    else
        fputs("&mdash;", f);
}

static const char *style =
    "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;"
    "background:#f4f5f7;color:#1d2330}"
    "header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;"
    "align-items:baseline;gap:8px 28px}"
    "header h1{font-size:20px;margin:0;font-weight:600}"
    "header .round{font-size:18px}header .muted{color:#aab3c5}header code{color:#dfe4ee}"
    ".scroll{overflow-x:auto}"
    "main{padding:16px 24px;max-width:1400px}"
    "section{background:#fff;border-radius:8px;box-shadow:0 1px 2px rgba(0,0,0,.08);"
    "padding:12px 16px;margin-bottom:16px}"
    "h2{font-size:15px;margin:2px 0 10px;color:#39415a}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e8ee;white-space:nowrap}"
    "th{font-weight:600;color:#5b6479;font-size:12px;text-transform:uppercase;letter-spacing:.03em}"
    "td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
    "td.why{white-space:normal;color:#6b3a3a;max-width:380px}"
    "code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;color:#39415a}"
    ".badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;"
    "font-weight:600;color:#fff}"
    ".s-pending{background:#8a93a6}.s-training{background:#2f6fdb}.s-submitted{background:#d98e04}"
    ".s-accepted{background:#1e9e5a}.s-refused{background:#d0342c}.s-missed{background:#5b6479}"
    ".s-revoked{background:#7a1f1f}.s-observer{background:#7b4fc9}"
    ".st{font-weight:700;padding:2px 10px;border-radius:4px;background:#2f6fdb}"
    ".st-FINISHED{background:#1e9e5a}.st-FAILED{background:#d0342c}"
    ".kpis{display:flex;flex-wrap:wrap;gap:10px 34px}.kpi b{display:block;font-size:20px}"
    ".kpi span{color:#5b6479;font-size:12px}"
    "footer{color:#5b6479;font-size:12px;padding:0 24px 20px}"
    "footer a{color:#2f6fdb}";

static void header(FILE *f, const status_view *v, int64_t now) {
    fputs("<header><h1>", f);
    esc(f, v->consortium);
    fputs("</h1>", f);
    fprintf(f, "<span class=\"round\">Round %" PRIu64 " of %" PRIu64 "</span>", v->round,
            v->rounds);
    fputs("<span class=\"st st-", f);
    esc(f, v->state);
    fputs("\">", f);
    esc(f, v->state);
    fputs("</span>", f);
    char deadline[96], deltas[64];
    int open = status_round_words(v, now, deadline, sizeof deadline, deltas, sizeof deltas);
    if (deadline[0]) fprintf(f, "<span><b>%s</b></span>", deadline);
    if (open) fprintf(f, "<span>%s</span>", deltas);
    /* Open: what the round trains on; over: what it ended with. */
    fputs(open ? "<span class=\"muted\">base " : "<span class=\"muted\">version ", f);
    short_hash(f, open ? v->base : v->version);
    fputs("</span></header>\n", f);
}

static void kpis(FILE *f, const status_view *v) {
    uint64_t refused = 0;
    for (int i = 0; i < v->nrefused; i++) refused += v->refused[i].count;
    char in[32], out[32];
    status_fmt_bytes(v->bytes_received, in, sizeof in);
    status_fmt_bytes(v->bytes_served, out, sizeof out);
    fputs("<section class=\"kpis\">", f);
    fprintf(f, "<div class=\"kpi\"><b>%" PRIu64 "</b><span>deltas receipted</span></div>",
            v->deltas_accepted);
    fprintf(f, "<div class=\"kpi\"><b>%" PRIu64 "</b><span>refusals", refused);
    for (int i = 0; i < v->nrefused; i++) {
        fputs(i ? ", " : " (", f);
        esc(f, v->refused[i].reason);
        fprintf(f, " %" PRIu64, v->refused[i].count);
    }
    fputs(v->nrefused ? ")" : "", f);
    fputs("</span></div>", f);
    fprintf(f, "<div class=\"kpi\"><b>%s</b><span>uploaded to the aggregator</span></div>", in);
    fprintf(f, "<div class=\"kpi\"><b>%s</b><span>served by the aggregator</span></div>", out);
    if (v->dp) {
        fputs("<div class=\"kpi\"><b>&epsilon; ", f);
        number(f, v->epsilon, 3);
        fputs(" / ", f);
        number(f, v->epsilon_budget, 3);
        fputs("</b><span>DP budget spent at &delta; = ", f);
        fprintf(f, "%g</span></div>", v->delta);
    }
    fputs("</section>\n", f);
}

static void members(FILE *f, const status_view *v, int64_t now) {
    fprintf(f,
            "<section><h2>Members (%d)</h2><div "
            "class=\"scroll\"><table><tr><th>member</th><th>identity</th>"
            "<th>round %" PRIu64 "</th><th></th><th>last contact</th><th class=\"num\">"
            "uploaded</th><th class=\"num\">downloaded</th><th>previous round</th></tr>\n",
            v->nmembers, v->round);
    for (int i = 0; i < v->nmembers; i++) {
        const status_member *m = &v->members[i];
        char ago[48], in[32], out[32];
        status_fmt_ago(m->last_contact, now, ago, sizeof ago);
        status_fmt_bytes(m->bytes_in, in, sizeof in);
        status_fmt_bytes(m->bytes_out, out, sizeof out);
        const char *st = status_state_name(m->state);
        fputs("<tr><td><b>", f);
        esc(f, m->name);
        fputs("</b></td><td><code>", f);
        esc(f, m->fingerprint);
        fprintf(f, "</code></td><td><span class=\"badge s-%s\">%s</span></td><td class=\"why\">",
                st, st);
        esc(f, m->why);
        fprintf(f, "</td><td>%s</td><td class=\"num\">%s</td><td class=\"num\">%s</td><td>", ago,
                in, out);
        if (m->last_round) {
            const char *ls = status_state_name(m->last);
            fprintf(f, "%" PRIu64 ": <span class=\"badge s-%s\">%s</span> ", m->last_round, ls, ls);
            esc(f, m->last_why);
        } else {
            fputs("&mdash;", f);
        }
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div></section>\n", f);
}

/* ---- the loss chart ------------------------------------------------------------------------- */

#define CW 760
#define CH 280
#define ML 56 /* margins */
#define MR 230
#define MT 16
#define MB 36

typedef struct {
    const char *label, *color;
    int dashed;
    int set;   /* index into the eval sets, -1: a history field */
    int field; /* 0: loss_before, 1: loss_after */
} series;

static double series_value(const status_view *v, const status_round *r, const series *s) {
    if (s->set < 0) return s->field ? r->loss_after : r->loss_before;
    for (int i = 0; i < r->nscores; i++)
        if (!r->scores[i].choice && !strcmp(r->scores[i].name, v->eval_sets[s->set]))
            return r->scores[i].loss;
    return NAN;
}

static void chart(FILE *f, const status_view *v) {
    static const char *const colors[] = {"#1e9e5a", "#7b4fc9", "#d98e04", "#0f8fa8", "#c2185b"};
    series s[2 + STATUS_SCORES_MAX];
    int ns = 0;
    /* The members' own held-out losses (token-weighted means), and the
     * consortium's text sets on each version. */
    s[ns++] = (series){"members, before training", "#8a93a6", 1, -1, 0};
    s[ns++] = (series){"members, after training", "#2f6fdb", 0, -1, 1};
    for (int i = 0; i < v->neval_sets; i++) {
        int text = 0;
        for (int k = 0; k < v->nhistory && !text; k++)
            for (int j = 0; j < v->history[k].nscores; j++)
                text |= !v->history[k].scores[j].choice &&
                        !strcmp(v->history[k].scores[j].name, v->eval_sets[i]);
        if (text) {
            const char *color = colors[(ns - 2) % 5];
            s[ns++] = (series){v->eval_sets[i], color, 0, i, 0};
        }
    }
    double lo = INFINITY, hi = -INFINITY;
    uint64_t r0 = UINT64_MAX, r1 = 0;
    for (int k = 0; k < v->nhistory; k++) {
        const status_round *r = &v->history[k];
        for (int i = 0; i < ns; i++) {
            double y = series_value(v, r, &s[i]);
            if (!isfinite(y)) continue;
            lo = fmin(lo, y), hi = fmax(hi, y);
            if (r->round < r0) r0 = r->round;
            if (r->round > r1) r1 = r->round;
        }
    }
    fputs("<section><h2>Loss by round</h2>", f);
    if (!isfinite(lo)) {
        fputs("<p>No losses yet: the first round has not ended.</p></section>\n", f);
        return;
    }
    if (hi - lo < 1e-9) lo -= 0.5, hi += 0.5;
    double pad = (hi - lo) * 0.08;
    lo -= pad, hi += pad;
    if (r1 == r0) r1 = r0 + 1;
    double pw = CW - ML - MR, ph = CH - MT - MB;
#define X(r) (ML + pw * (double)((r)-r0) / (double)(r1 - r0))
#define Y(y) (MT + ph * (hi - (y)) / (hi - lo))
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 "
            "%d %d\" role=\"img\" aria-label=\"loss by round\" font-size=\"11\" "
            "font-family=\"system-ui,sans-serif\">",
            CW, CH, CW, CH);
    for (int t = 0; t <= 4; t++) {
        double y = lo + (hi - lo) * t / 4;
        fprintf(f,
                "<line x1=\"%d\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#e6e8ee\"/>"
                "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\" fill=\"#5b6479\">%.3f</text>",
                ML, ML + pw, Y(y), Y(y), ML - 6, Y(y) + 4, y);
    }
    uint64_t step = (r1 - r0 + 9) / 10;
    if (step == 0) step = 1;
    for (uint64_t r = r0; r <= r1; r += step)
        fprintf(f,
                "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#5b6479\">%" PRIu64
                "</text>",
                X(r), CH - MB + 16, r);
    fprintf(f,
            "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#5b6479\">round</text>"
            "<text x=\"14\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#5b6479\" "
            "transform=\"rotate(-90 14 %.1f)\">loss (nats)</text>",
            ML + pw / 2, CH - 4, MT + ph / 2, MT + ph / 2);
    for (int i = 0; i < ns; i++) {
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"",
                s[i].color, s[i].dashed ? " stroke-dasharray=\"5 4\"" : "");
        int any = 0;
        for (int k = 0; k < v->nhistory; k++) {
            double y = series_value(v, &v->history[k], &s[i]);
            if (isfinite(y))
                fprintf(f, "%s%.1f,%.1f", any++ ? " " : "", X(v->history[k].round), Y(y));
        }
        fputs("\"/>", f);
        for (int k = 0; k < v->nhistory; k++) {
            double y = series_value(v, &v->history[k], &s[i]);
            if (isfinite(y))
                fprintf(f,
                        "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"><title>round %" PRIu64
                        ": %.4f</title></circle>",
                        X(v->history[k].round), Y(y), s[i].color, v->history[k].round, y);
        }
        double ly = MT + 10 + 18 * i;
        fprintf(f,
                "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
                "stroke-width=\"2\"%s/><text x=\"%.1f\" y=\"%.1f\" fill=\"#1d2330\">",
                ML + pw + 14, ML + pw + 34, ly, ly, s[i].color,
                s[i].dashed ? " stroke-dasharray=\"5 4\"" : "", ML + pw + 40, ly + 4);
        esc(f, s[i].label);
        fputs("</text>", f);
    }
#undef X
#undef Y
    fputs("</svg><p style=\"color:#5b6479;font-size:12px;margin:4px 0 0\">The members' lines "
          "are their own held-out losses before and after training on the round's base (means "
          "weighted by tokens); the others are the consortium's evaluation sets on each version "
          "(round 0: the base).</p></section>\n",
          f);
}

static void history(FILE *f, const status_view *v) {
    fputs("<section><h2>Rounds</h2><div class=\"scroll\"><table><tr><th "
          "class=\"num\">round</th><th>status</th>"
          "<th>version</th><th class=\"num\">merged</th><th class=\"num\">dropped</th>"
          "<th class=\"num\">tokens</th><th class=\"num\">loss before &rarr; after</th>",
          f);
    for (int i = 0; i < v->neval_sets; i++) {
        fputs("<th class=\"num\">", f);
        esc(f, v->eval_sets[i]);
        fputs("</th>", f);
    }
    fputs("<th class=\"num\">merge / publish s</th><th>ended (UTC)</th></tr>\n", f);
    int shown = 0;
    for (int k = v->nhistory; k-- > 0 && shown < HISTORY_ROWS; shown++) {
        const status_round *r = &v->history[k];
        fprintf(f, "<tr><td class=\"num\">%" PRIu64 "</td><td>", r->round);
        esc(f, r->status);
        fputs("</td><td>", f);
        short_hash(f, r->version);
        if (r->round == 0)
            fputs("</td><td class=\"num\"></td><td class=\"num\"></td><td class=\"num\"></td>"
                  "<td class=\"num\"></td>",
                  f);
        else {
            fprintf(f,
                    "</td><td class=\"num\">%d</td><td class=\"num\">%d</td><td "
                    "class=\"num\">%" PRIu64 "</td><td class=\"num\">",
                    r->accepted, r->rejected, r->tokens);
            number(f, r->loss_before, 3);
            fputs(" &rarr; ", f);
            number(f, r->loss_after, 3);
            fputs("</td>", f);
        }
        for (int i = 0; i < v->neval_sets; i++) {
            fputs("<td class=\"num\">", f);
            const status_score *sc = NULL;
            for (int j = 0; j < r->nscores; j++)
                if (!strcmp(r->scores[j].name, v->eval_sets[i])) sc = &r->scores[j];
            if (sc && sc->choice) {
                number(f, sc->acc, 3);
                fputs(" / ", f);
                number(f, sc->acc_norm, 3);
            } else if (sc) {
                number(f, sc->loss, 3);
            } else if (!strcmp(r->eval, "failed")) {
                fputs("<span title=\"", f);
                esc(f, r->eval_error);
                fputs("\">failed</span>", f);
            } else {
                esc(f, r->eval[0] ? r->eval : "");
            }
            fputs("</td>", f);
        }
        fputs("<td class=\"num\">", f);
        if (r->round) {
            number(f, r->aggregate_s, 2);
            fputs(" / ", f);
            number(f, r->publish_s, 2);
        }
        fputs("</td><td>", f);
        utc(f, r->time, 1);
        fputs("</td></tr>\n", f);
    }
    fputs("</table></div>", f);
    if (v->neval_sets)
        fputs("<p style=\"color:#5b6479;font-size:12px\">Evaluation columns: loss in nats for "
              "text sets, acc / acc_norm for multiple-choice tasks.</p>",
              f);
    fputs("</section>\n", f);
}

int status_html(const status_view *v, int64_t now, int refresh_s, char **out, size_t *len) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return err_errno("open_memstream for the status page");
    fprintf(f,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"refresh\" content=\"%d\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            "<title>",
            refresh_s);
    esc(f, v->consortium);
    fprintf(f, ": round %" PRIu64 " ", v->round);
    esc(f, v->state);
    fprintf(f, "</title><style>%s</style></head><body>\n", style);
    header(f, v, now);
    fputs("<main>\n", f);
    kpis(f, v);
    members(f, v, now);
    chart(f, v);
    history(f, v);
    fputs("</main><footer>", f);
    utc(f, now, 0);
    fprintf(f,
            " &middot; the page reloads every %d s &middot; <a href=\"status.json\">status.json"
            "</a> &middot; <a href=\"metrics\">metrics</a> &middot; fedlora aggregator since ",
            refresh_s);
    utc(f, v->started, 0);
    fputs("</footer></body></html>\n", f);
    return status_stream_done(f, &buf, &n, "the status page", out, len);
}
