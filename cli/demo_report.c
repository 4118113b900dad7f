/* demo_report — the SVG report of `fedlora demo` (docs/federation.md): the
 * merged model's loss on the global held-out set after each round (thick)
 * and each university's local held-out loss before (dashed) and after
 * (solid) its training, in one self-contained file (no scripts, no links). */
#include "cli/demo_report.h"

#include "util/err.h"
#include "util/fio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static const char *const palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#bcbd22"};

int demo_report_svg(const char *path, const demo_report *d) {
    const double W = 820, H = 460, L = 70, R = 260, T = 50, Bm = 60;
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < d->n_hist; k++) {
        const demo_round *r = &d->hist[k];
        lo = fmin(lo, r->global_loss), hi = fmax(hi, r->global_loss);
        for (long long i = 0; k > 0 && i < d->n_nodes; i++)
            if (isfinite(r->loss_before[i]) && isfinite(r->loss_after[i])) {
                lo = fmin(lo, fmin(r->loss_before[i], r->loss_after[i]));
                hi = fmax(hi, fmax(r->loss_before[i], r->loss_after[i]));
            }
    }
    if (!(hi > lo)) hi = lo + 1;
    double pad = (hi - lo) * 0.08;
    lo = floor((lo - pad) * 2) / 2, hi = ceil((hi + pad) * 2) / 2;
    int nx = d->n_hist > 1 ? d->n_hist - 1 : 1;
#define X(k) (L + (W - L - R) * (double)(k) / nx)
#define Y(v) (T + (H - T - Bm) * (hi - (v)) / (hi - lo))
    size_t cap = 1u << 16, len = 0;
    char *s = malloc(cap);
    if (!s) return err_set("out of memory for the report");
#define OUT(...)                                                                                   \
    do {                                                                                           \
        int k_ = snprintf(s + len, cap - len, __VA_ARGS__);                                        \
        if (k_ < 0 || (size_t)k_ >= cap - len) {                                                   \
            free(s);                                                                               \
            return err_set("the report does not fit in %zu bytes", cap);                           \
        }                                                                                          \
        len += (size_t)k_;                                                                         \
    } while (0)
    OUT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
        "viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\" font-size=\"12\">\n",
        W, H, W, H);
    OUT("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    OUT("<text x=\"%.0f\" y=\"24\" font-size=\"16\" font-weight=\"bold\">fedlora demo: %lld "
        "universities, %lld rounds</text>\n",
        L, (long long)d->n_nodes, (long long)d->rounds);
    OUT("<text x=\"%.0f\" y=\"40\" fill=\"#555\">held-out loss (nats per token) after each "
        "round</text>\n",
        L);
    for (int t = 0; t <= 4; t++) { /* horizontal grid and y labels */
        double v = lo + (hi - lo) * t / 4;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, Y(v),
            W - R, Y(v));
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L - 6, Y(v) + 4, v);
    }
    /* At most about 20 round labels, and the values on the points only when
     * they have room. */
    int every = nx > 20 ? (nx + 19) / 20 : 1, values = d->n_hist <= 25;
    for (int k = 0; k < d->n_hist; k += every)
        OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", X(k), H - Bm + 18, k);
    OUT("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">round (0 = base model)</text>\n",
        (L + W - R) / 2, H - Bm + 40);
    OUT("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
        "stroke=\"#333\"/>\n",
        L, (double)T, W - L - R, H - T - Bm);
    for (long long i = 0; i < d->n_nodes; i++) {
        const char *c = palette[i % 8];
        for (int pass = 0; pass < 2; pass++) { /* 0: before (dashed), 1: after */
            OUT("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\"%s points=\"", c,
                pass ? "" : " stroke-dasharray=\"4 3\"");
            for (int k = 1; k < d->n_hist; k++) {
                double v = pass ? d->hist[k].loss_after[i] : d->hist[k].loss_before[i];
                if (isfinite(v)) OUT("%.1f,%.1f ", X(k), Y(v));
            }
            OUT("\"/>\n");
        }
        for (int k = 1; values && k < d->n_hist; k++)
            if (isfinite(d->hist[k].loss_after[i]))
                OUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", X(k),
                    Y(d->hist[k].loss_after[i]), c);
        double ly = T + 50 + 18.0 * (double)i;
        OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
            "stroke-width=\"1.5\"/>\n",
            W - R + 16, ly - 4, W - R + 40, ly - 4, c);
        OUT("<text x=\"%.1f\" y=\"%.1f\">%s (%s)</text>\n", W - R + 46, ly, d->names[i],
            d->domains[i]);
    }
    OUT("<polyline fill=\"none\" stroke=\"black\" stroke-width=\"3\" points=\"");
    for (int k = 0; k < d->n_hist; k++) /* not evaluated (--eval-every): no point */
        if (isfinite(d->hist[k].global_loss)) OUT("%.1f,%.1f ", X(k), Y(d->hist[k].global_loss));
    OUT("\"/>\n");
    for (int k = 0; k < d->n_hist; k++)
        if (isfinite(d->hist[k].global_loss) && (values || k == d->n_hist - 1 || k == 0))
            OUT("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"black\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" "
                "font-weight=\"bold\">%.3f</text>\n",
                X(k), Y(d->hist[k].global_loss), X(k), Y(d->hist[k].global_loss) - 9,
                d->hist[k].global_loss);
    OUT("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"black\" "
        "stroke-width=\"3\"/>\n<text x=\"%.1f\" y=\"%.1f\">merged model, global held-out</text>\n",
        W - R + 16, (double)T + 10, W - R + 40, (double)T + 10, W - R + 46, (double)T + 14);
    OUT("<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">dashed: local loss before training,</text>\n"
        "<text x=\"%.1f\" y=\"%.1f\" fill=\"#555\">solid: after (its own held-out lines)</text>\n",
        W - R + 16, T + 50 + 18.0 * (double)d->n_nodes + 10, W - R + 16,
        T + 50 + 18.0 * (double)d->n_nodes + 26);
    OUT("</svg>\n");
#undef OUT
#undef X
#undef Y
    int rc = fio_write_atomic(path, s, len, 0644);
    free(s);
    return rc;
}
