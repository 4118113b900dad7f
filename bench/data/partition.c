/* partition — splits corpora made by make_corpora.sh among N universities.
 *
 *   partition --corpora DIR --out DIR --nodes N [--mode domain|iid|dirichlet]
 *             [--alpha A] [--seed S] [--domains a,b,c] [--heldout-bytes B]
 *             [--min-docs M]
 *
 * Reads DIR/<domain>/train.txt and heldout.txt (one document per line) and
 * writes OUT/<university>/train.txt (what a node's `data` key names),
 * OUT/heldout/<domain>.txt, the global held-out mixture OUT/heldout.txt, and
 * OUT/PARTITION (who got what, and the Dirichlet draws). Layout and modes are
 * documented in docs/corpora.md.
 *
 * Every training document of a used domain goes to exactly one university;
 * held-out documents come only from heldout.txt, so they are disjoint from
 * every training share by construction (make_corpora.sh removed duplicates
 * across the splits). Everything is a function of the inputs and the seed:
 * one SplitMix64 stream (Steele, Lea, Flood 2014), used in a fixed order.
 * The output is written into a temporary directory beside OUT and renamed to
 * OUT at the end, so a failed run leaves nothing.
 */
#include "util/err.h"
#include "util/fio.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES ((size_t)4 << 30)
#define MAX_DOMAINS 64
#define MAX_NODES 1000

typedef struct {
    char name[128];
    char *train_buf, *heldout_buf; /* file contents, '\n' replaced by '\0' */
    char **train, **heldout;       /* documents: pointers into the buffers */
    size_t n_train, n_heldout;
    int used;      /* has a share in this partition */
    double *q;     /* [nodes] expected share of the domain's training docs */
    size_t *count; /* [nodes] documents the domain gives each university */
    size_t *order; /* [n_train] shuffled document indices */
} domain;

typedef struct {
    const char *corpora, *out, *mode, *domains;
    int nodes, min_docs;
    double alpha;
    uint64_t seed;
    size_t heldout_bytes;
} options;

/* ---- random numbers ------------------------------------------------------------- */

/* The generator is local (model/ and lora/ keep their own static copies):
 * this tool depends on util/ only, and its streams must not change when
 * theirs do. */
static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform on (0, 1): the top 53 bits, offset by half a step so log() is finite. */
static double uniform01(uint64_t *s) {
    return ((double)(splitmix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* Uniform in [0, n) without modulo bias: rejection as in O'Neill's PCG. */
static size_t below(uint64_t *s, size_t n) {
    uint64_t threshold = (0 - (uint64_t)n) % n, r;
    do r = splitmix64(s);
    while (r < threshold);
    return (size_t)(r % n);
}

/* Standard normal by Box–Muller (one of the pair). */
static double normal(uint64_t *s) {
    double u1 = uniform01(s), u2 = uniform01(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* log of a Gamma(a, 1) draw. Marsaglia & Tsang, "A simple method for
 * generating gamma variables" (ACM TOMS 26(3), 2000) for a >= 1; for a < 1
 * their boost Gamma(a) = Gamma(a + 1) · U^(1/a), kept in logs because
 * U^(1/a) underflows for small a. */
static double log_gamma_draw(uint64_t *s, double a) {
    double boost = 0;
    if (a < 1) {
        boost = log(uniform01(s)) / a;
        a += 1;
    }
    double d = a - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = normal(s), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = uniform01(s);
        if (u < 1 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1 - v + log(v)))
            return log(d * v) + boost;
    }
}

/* q ~ Dirichlet(alpha, ..., alpha) over n: normalised Gamma(alpha) draws. */
static void dirichlet_draw(uint64_t *s, double alpha, int n, double *q) {
    double top = -INFINITY, sum = 0;
    for (int i = 0; i < n; i++) {
        q[i] = log_gamma_draw(s, alpha);
        if (q[i] > top) top = q[i];
    }
    for (int i = 0; i < n; i++) sum += q[i] = exp(q[i] - top);
    for (int i = 0; i < n; i++) q[i] /= sum;
}

static void shuffle(uint64_t *s, size_t *idx, size_t n) {
    for (size_t i = 0; i < n; i++) idx[i] = i;
    for (size_t i = n; i > 1; i--) { /* Fisher–Yates */
        size_t j = below(s, i), t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- reading -------------------------------------------------------------------- */

/* Splits buf at newlines in place; non-empty lines become documents. */
static int split_lines(char *buf, size_t len, const char *path, char ***docs, size_t *n) {
    size_t cap = 0;
    for (size_t i = 0; i < len; i++) cap += buf[i] == '\n';
    *docs = malloc((cap + 1) * sizeof **docs);
    if (!*docs) return err_set("%s: out of memory", path);
    *n = 0;
    char *p = buf, *end = buf + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) nl = end;
        if (memchr(p, '\0', (size_t)(nl - p)))
            return err_set("%s: document %zu contains a NUL byte; the corpora are text, one "
                           "document per line (remake them with make_corpora.sh)",
                           path, *n + 1);
        *nl = '\0';
        if (nl > p) (*docs)[(*n)++] = p;
        p = nl + 1;
    }
    return 0;
}

static int read_docs(const char *dir, const char *dom, const char *file, char **buf, char ***docs,
                     size_t *n) {
    char sub[4096], path[4096];
    size_t len;
    if (fio_join(sub, sizeof sub, dir, dom) != 0 || fio_join(path, sizeof path, sub, file) != 0)
        return -1;
    if (fio_read_all(path, MAX_FILE_BYTES, buf, &len) != 0)
        return err_context("reading domain '%s' (make it with bench/data/make_corpora.sh)", dom);
    if (split_lines(*buf, len, path, docs, n) != 0) return -1;
    if (*n == 0)
        return err_set("%s: no document (an empty domain); remake the corpora or leave the "
                       "domain out with --domains",
                       path);
    return 0;
}

static int valid_name(const char *s) {
    if (!*s || *s == '.' || strlen(s) >= 100) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '_' || *s == '.'))
            return 0;
    return 1;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The domains: --domains in its order, else every sub-directory of the corpora
 * with a train.txt, in byte order of the names. */
static int list_domains(const options *o, char names[][128], int *n) {
    *n = 0;
    if (o->domains) {
        const char *p = o->domains;
        while (*p) {
            size_t len = strcspn(p, ",");
            if (len == 0 || len >= 128)
                return err_set("--domains '%s': empty or overlong name", o->domains);
            if (*n == MAX_DOMAINS) return err_set("--domains: more than %d domains", MAX_DOMAINS);
            memcpy(names[*n], p, len);
            names[*n][len] = '\0';
            for (int i = 0; i < *n; i++)
                if (!strcmp(names[i], names[*n]))
                    return err_set("--domains names '%s' twice", names[i]);
            (*n)++;
            p += len + (p[len] == ',');
        }
    } else {
        DIR *d = opendir(o->corpora);
        if (!d) return err_errno("cannot open the corpora directory %s", o->corpora);
        char *found[MAX_DOMAINS];
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            char sub[4096], train[4096];
            if (e->d_name[0] == '.' || fio_join(sub, sizeof sub, o->corpora, e->d_name) != 0 ||
                fio_join(train, sizeof train, sub, "train.txt") != 0 || !fio_exists(train))
                continue;
            if (*n == MAX_DOMAINS || strlen(e->d_name) >= 128) {
                closedir(d);
                for (int i = 0; i < *n; i++) free(found[i]);
                return err_set("%s: more than %d domains or an overlong name", o->corpora,
                               MAX_DOMAINS);
            }
            found[(*n)++] = strdup(e->d_name);
            if (!found[*n - 1]) {
                closedir(d);
                return err_set("out of memory");
            }
        }
        closedir(d);
        qsort(found, (size_t)*n, sizeof *found, cmp_str);
        for (int i = 0; i < *n; i++) {
            strcpy(names[i], found[i]);
            free(found[i]);
        }
        if (*n == 0)
            return err_set("%s holds no domain (no <domain>/train.txt); make the corpora with "
                           "bench/data/make_corpora.sh",
                           o->corpora);
    }
    for (int i = 0; i < *n; i++)
        if (!valid_name(names[i]))
            return err_set("domain name '%s': use letters, digits, '-', '_' and '.'", names[i]);
    return 0;
}

/* ---- assignment ----------------------------------------------------------------- */

/* Cuts a domain's shuffled documents at round(n · cumulative q): university
 * i gets count[i] = b_i − b_{i−1}, within one document of n · q_i. */
static void cut_by_shares(domain *d, int nodes) {
    double cum = 0;
    size_t prev = 0;
    for (int i = 0; i < nodes; i++) {
        cum += d->q[i];
        size_t b = i == nodes - 1 ? d->n_train : (size_t)llround(cum * (double)d->n_train);
        if (b > d->n_train) b = d->n_train;
        if (b < prev) b = prev;
        d->count[i] = b - prev;
        prev = b;
    }
}

static void university_name(const options *o, const domain *doms, const int *node_domain, int u,
                            char *out, size_t n) {
    if (strcmp(o->mode, "domain") != 0) {
        snprintf(out, n, "uni-%0*d", o->nodes >= 100 ? 3 : 2, u + 1);
        return;
    }
    int k = 0, j = 0; /* universities sharing the domain, and u's place among them */
    for (int v = 0; v < o->nodes; v++)
        if (node_domain[v] == node_domain[u]) {
            if (v < u) j++;
            k++;
        }
    if (k == 1)
        snprintf(out, n, "uni-%s", doms[node_domain[u]].name);
    else
        snprintf(out, n, "uni-%s-%d", doms[node_domain[u]].name, j + 1);
}

/* ---- writing -------------------------------------------------------------------- */

static int write_docs(FILE *f, char *const *docs, const size_t *idx, size_t n, const char *path) {
    for (size_t i = 0; i < n; i++) {
        const char *doc = docs[idx ? idx[i] : i];
        if (fputs(doc, f) == EOF || fputc('\n', f) == EOF) return err_errno("writing %s", path);
    }
    return 0;
}

static FILE *open_out(const char *dir, const char *sub, const char *file, char *path, size_t n) {
    char d[4096];
    if (fio_join(d, sizeof d, dir, sub ? sub : "") != 0 || fio_mkdirs(d, 0755) != 0 ||
        fio_join(path, n, d, file) != 0)
        return NULL;
    FILE *f = fopen(path, "wx");
    if (!f) err_errno("cannot create %s", path);
    return f;
}

static int close_out(FILE *f, const char *path) {
    if (fflush(f) != 0 || ferror(f)) {
        fclose(f);
        return err_errno("writing %s", path);
    }
    if (fsync(fileno(f)) != 0) {
        fclose(f);
        return err_errno("fsync %s", path);
    }
    return fclose(f) == 0 ? 0 : err_errno("closing %s", path);
}

static size_t doc_bytes(char *const *docs, const size_t *idx, size_t n) {
    size_t b = 0;
    for (size_t i = 0; i < n; i++) b += strlen(docs[idx ? idx[i] : i]);
    return b;
}

/* rm -r of a directory this program made (two levels: OUT/x/file). */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char p[4096];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
            fio_join(p, sizeof p, dir, e->d_name) != 0)
            continue;
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* ---- the run -------------------------------------------------------------------- */

typedef struct {
    domain doms[MAX_DOMAINS];
    int n_doms, *node_domain;
    size_t **share; /* [nodes] document indices, per university, into a pooled list */
    size_t *counts; /* [nodes] documents per university */
    char tmp[4096];
} run_state;

static int partition_run(const options *o, run_state *r) {
    char names[MAX_DOMAINS][128];
    uint64_t rng = o->seed;
    if (list_domains(o, names, &r->n_doms) != 0) return -1;
    int N = o->nodes, D = r->n_doms;
    int is_domain = !strcmp(o->mode, "domain"), is_iid = !strcmp(o->mode, "iid");
    if (!is_domain && !is_iid && strcmp(o->mode, "dirichlet") != 0)
        return err_set("--mode '%s': use domain, iid or dirichlet", o->mode);

    r->node_domain = calloc((size_t)N, sizeof *r->node_domain);
    if (!r->node_domain) return err_set("out of memory");
    for (int d = 0; d < D; d++) {
        domain *dm = &r->doms[d];
        snprintf(dm->name, sizeof dm->name, "%s", names[d]);
        /* one domain each: university u gets domain u mod D; with N < D the
         * last domains are not used at all (not even held out) */
        dm->used = !is_domain || d < N;
        if (!dm->used) continue;
        if (read_docs(o->corpora, dm->name, "train.txt", &dm->train_buf, &dm->train,
                      &dm->n_train) != 0 ||
            read_docs(o->corpora, dm->name, "heldout.txt", &dm->heldout_buf, &dm->heldout,
                      &dm->n_heldout) != 0)
            return -1;
        dm->q = calloc((size_t)N, sizeof *dm->q);
        dm->count = calloc((size_t)N, sizeof *dm->count);
        dm->order = malloc((dm->n_train + 1) * sizeof *dm->order);
        if (!dm->q || !dm->count || !dm->order) return err_set("out of memory");
    }

    /* Training shares: each used domain's documents in a seeded random order,
     * cut into consecutive runs, one per university. */
    if (is_domain) {
        for (int u = 0; u < N; u++) r->node_domain[u] = u % D;
        for (int d = 0; d < D && d < N; d++) {
            domain *dm = &r->doms[d];
            int k = 0;
            for (int u = 0; u < N; u++) k += r->node_domain[u] == d;
            for (int u = 0; u < N; u++) dm->q[u] = r->node_domain[u] == d ? 1.0 / k : 0.0;
            shuffle(&rng, dm->order, dm->n_train);
            cut_by_shares(dm, N);
        }
    } else if (is_iid) {
        for (int d = 0; d < D; d++) {
            domain *dm = &r->doms[d];
            for (int u = 0; u < N; u++) dm->q[u] = 1.0 / N;
        }
    } else {
        /* Dirichlet label skew as in Hsu, Qi, Brown 2019 ("Measuring the effects
         * of non-identical data distribution"): per domain, q ~ Dir(α·1_N) over
         * the universities. Drawn again (all domains) until every university
         * has min_docs documents: a node cannot train on less. */
        int tries = 0;
        for (;;) {
            for (int d = 0; d < D; d++) {
                domain *dm = &r->doms[d];
                dirichlet_draw(&rng, o->alpha, N, dm->q);
                shuffle(&rng, dm->order, dm->n_train);
                cut_by_shares(dm, N);
            }
            int ok = 1;
            for (int u = 0; u < N && ok; u++) {
                size_t t = 0;
                for (int d = 0; d < D; d++) t += r->doms[d].count[u];
                ok = t >= (size_t)o->min_docs;
            }
            if (ok) break;
            if (++tries == 1000)
                return err_set("1000 Dirichlet(%g) draws all left a university with fewer than "
                               "%d documents; use a larger --alpha, fewer --nodes or a smaller "
                               "--min-docs",
                               o->alpha, o->min_docs);
        }
    }

    /* Pooled index space: domain d's document i is base[d] + i. */
    size_t base[MAX_DOMAINS + 1], total = 0;
    for (int d = 0; d < D; d++) {
        base[d] = total;
        total += r->doms[d].used ? r->doms[d].n_train : 0;
    }
    size_t *counts = r->counts = calloc((size_t)N, sizeof *counts);
    r->share = calloc((size_t)N, sizeof *r->share);
    size_t *pool = malloc((total + 1) * sizeof *pool);
    if (!counts || !r->share || !pool) {
        free(pool);
        return err_set("out of memory");
    }
    if (is_iid) {
        /* all documents in one seeded order, dealt in N near-equal runs */
        shuffle(&rng, pool, total);
        for (int u = 0; u < N; u++) {
            size_t lo = total * (size_t)u / (size_t)N, hi = total * (size_t)(u + 1) / (size_t)N;
            counts[u] = hi - lo;
            r->share[u] = malloc((counts[u] + 1) * sizeof **r->share);
            if (!r->share[u]) break;
            memcpy(r->share[u], pool + lo, counts[u] * sizeof *pool);
        }
        for (int d = 0; d < D; d++) /* per-domain counts for PARTITION */
            for (int u = 0; u < N; u++) {
                size_t lo = total * (size_t)u / (size_t)N, hi = total * (size_t)(u + 1) / (size_t)N;
                for (size_t i = lo; i < hi; i++)
                    r->doms[d].count[u] +=
                        pool[i] >= base[d] && pool[i] < base[d] + r->doms[d].n_train;
            }
    } else {
        for (int u = 0; u < N; u++) {
            for (int d = 0; d < D; d++) counts[u] += r->doms[d].used ? r->doms[d].count[u] : 0;
            r->share[u] = malloc((counts[u] + 1) * sizeof **r->share);
            if (!r->share[u]) break;
        }
        for (int d = 0; d < D; d++) {
            if (!r->doms[d].used) continue;
            size_t at = 0;
            for (int u = 0; u < N; u++) {
                size_t have = 0;
                for (int e = 0; e < d; e++) have += r->doms[e].used ? r->doms[e].count[u] : 0;
                if (r->share[u])
                    for (size_t i = 0; i < r->doms[d].count[u]; i++)
                        r->share[u][have + i] = base[d] + r->doms[d].order[at + i];
                at += r->doms[d].count[u];
            }
        }
    }
    free(pool);
    for (int u = 0; u < N; u++)
        if (!r->share[u]) return err_set("out of memory");
    for (int u = 0; u < N; u++)
        if (counts[u] < (size_t)o->min_docs)
            return err_set("university %d gets %zu training documents, fewer than --min-docs "
                           "%d; use fewer --nodes or more text",
                           u + 1, counts[u], o->min_docs);

    /* ---- write into a temporary directory beside OUT ---- */
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", o->out);
    for (size_t n = strlen(parent); n > 1 && parent[n - 1] == '/'; n--) parent[n - 1] = '\0';
    char *slash = strrchr(parent, '/');
    if (slash == parent)
        parent[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(parent, ".");
    if (fio_mkdirs(parent, 0755) != 0 ||
        fio_join(r->tmp, sizeof r->tmp, parent, ".partition-tmp.XXXXXX") != 0)
        return -1;
    if (!mkdtemp(r->tmp)) {
        r->tmp[0] = '\0';
        return err_errno("cannot create a temporary directory in %s", parent);
    }
    chmod(r->tmp, 0755);

    char path[4096], uni[160];
    FILE *pf = open_out(r->tmp, NULL, "PARTITION", path, sizeof path);
    if (!pf) return -1;
    char ppath[4096];
    snprintf(ppath, sizeof ppath, "%s", path);
    fprintf(pf, "# fedlora partition (bench/data/partition, docs/corpora.md)\n");
    fprintf(pf, "# mode %s, %d universities, seed %llu", o->mode, N, (unsigned long long)o->seed);
    if (!is_domain && !is_iid) fprintf(pf, ", alpha %.17g, min-docs %d", o->alpha, o->min_docs);
    fprintf(pf, ", heldout-bytes %zu per domain\n# corpora %s\n", o->heldout_bytes, o->corpora);
    fprintf(pf, "# proportion: the share of the domain's training documents the university "
                "was meant to get (dirichlet: the draw q; domain: 1/k or 0; iid: 1/N of the "
                "pooled documents); documents are within one of proportion x the domain's "
                "count, except in iid mode\n");
    fprintf(pf, "university\tdomain\tdocuments\tbytes\tproportion\n");

    /* pooled document pointer */
#define POOLED(ix, dd) (r->doms[dd].train[(ix)-base[dd]])
    for (int u = 0; u < N; u++) {
        /* a university's documents in corpus order (domains in order, each in
         * file order): the node shuffles its own data */
        qsort(r->share[u], counts[u], sizeof **r->share, cmp_size);
        university_name(o, r->doms, r->node_domain, u, uni, sizeof uni);
        FILE *f = open_out(r->tmp, uni, "train.txt", path, sizeof path);
        if (!f) goto fail;
        size_t per_bytes[MAX_DOMAINS] = {0}, per_docs[MAX_DOMAINS] = {0};
        for (size_t i = 0; i < counts[u]; i++) {
            size_t ix = r->share[u][i];
            int d = 0;
            while (d + 1 < D && ix >= base[d + 1]) d++;
            while (!r->doms[d].used) d--; /* unused domains hold no pooled index */
            const char *doc = POOLED(ix, d);
            per_docs[d]++;
            per_bytes[d] += strlen(doc);
            if (fputs(doc, f) == EOF || fputc('\n', f) == EOF) {
                err_errno("writing %s", path);
                fclose(f);
                goto fail;
            }
        }
        if (close_out(f, path) != 0) goto fail;
        for (int d = 0; d < D; d++) {
            if (!r->doms[d].used) continue;
            fprintf(pf, "%s\t%s\t%zu\t%zu\t", uni, r->doms[d].name, per_docs[d], per_bytes[d]);
            if (is_iid)
                fprintf(pf, "%.17g\n", 1.0 / N);
            else
                fprintf(pf, "%.17g\n", r->doms[d].q[u]);
        }
    }
#undef POOLED

    /* Held-out: per used domain, documents in a seeded random order while they
     * fit in heldout_bytes (at least one), written back in file order. */
    FILE *g = open_out(r->tmp, NULL, "heldout.txt", path, sizeof path);
    if (!g) goto fail;
    char gpath[4096];
    snprintf(gpath, sizeof gpath, "%s", path);
    for (int d = 0; d < D; d++) {
        domain *dm = &r->doms[d];
        if (!dm->used) continue;
        size_t *idx = malloc((dm->n_heldout + 1) * sizeof *idx), n = 0, bytes = 0;
        if (!idx) {
            fclose(g);
            err_set("out of memory");
            goto fail;
        }
        shuffle(&rng, idx, dm->n_heldout);
        for (size_t i = 0; i < dm->n_heldout; i++) {
            size_t b = strlen(dm->heldout[idx[i]]);
            if (o->heldout_bytes && n > 0 && bytes + b > o->heldout_bytes) continue;
            idx[n++] = idx[i];
            bytes += b;
        }
        qsort(idx, n, sizeof *idx, cmp_size);
        char file[160];
        snprintf(file, sizeof file, "%s.txt", dm->name);
        FILE *f = open_out(r->tmp, "heldout", file, path, sizeof path);
        int bad = !f || write_docs(f, dm->heldout, idx, n, path) != 0;
        if (f && (bad ? (fclose(f), 0) : close_out(f, path) != 0)) bad = 1;
        if (!bad) bad = write_docs(g, dm->heldout, idx, n, gpath) != 0;
        if (!bad)
            fprintf(pf, "heldout\t%s\t%zu\t%zu\t-\n", dm->name, n, doc_bytes(dm->heldout, idx, n));
        free(idx);
        if (bad) {
            fclose(g);
            goto fail;
        }
    }
    if (close_out(g, gpath) != 0) goto fail;
    if (close_out(pf, ppath) != 0) return -1;
    pf = NULL;

    /* OUT may be an empty directory: rename(2) replaces an empty one. */
    if (rename(r->tmp, o->out) != 0) return err_errno("cannot rename %s to %s", r->tmp, o->out);
    r->tmp[0] = '\0';
    return fio_fsync_dir_of(o->out);

fail:
    if (pf) fclose(pf);
    return -1;
}

static void run_free(run_state *r, int nodes) {
    for (int d = 0; d < r->n_doms; d++) {
        domain *dm = &r->doms[d];
        free(dm->train_buf);
        free(dm->heldout_buf);
        free(dm->train);
        free(dm->heldout);
        free(dm->q);
        free(dm->count);
        free(dm->order);
    }
    if (r->share)
        for (int u = 0; u < nodes; u++) free(r->share[u]);
    free(r->share);
    free(r->counts);
    free(r->node_domain);
}

static const char *usage =
    "usage: partition --corpora DIR --out DIR --nodes N [--mode domain|iid|dirichlet]\n"
    "                 [--alpha A] [--seed S] [--domains a,b,c] [--heldout-bytes B] "
    "[--min-docs M]\n"
    "\n"
    "Splits corpora made by bench/data/make_corpora.sh among N universities:\n"
    "  domain     university u trains on domain u mod D (one domain each; a domain\n"
    "             shared by k universities is split into k equal random shares)\n"
    "  iid        all training documents shuffled and dealt into N equal shares\n"
    "  dirichlet  per domain, shares q ~ Dirichlet(alpha) over the universities\n"
    "             (--alpha, default 0.5; redrawn until each has --min-docs)\n"
    "Writes OUT/<university>/train.txt (a node's `data`), OUT/heldout/<domain>.txt,\n"
    "OUT/heldout.txt (all used domains' held-out documents: at most --heldout-bytes\n"
    "per domain, default 16384, 0 = all) and OUT/PARTITION. Deterministic for --seed\n"
    "(default 1). Domains: --domains in that order, else all in name order.\n"
    "See docs/corpora.md.\n";

static int parse_num(const char *s, const char *flag, double lo, double hi, double *v) {
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (errno || end == s || *end || !(*v >= lo && *v <= hi))
        return err_set("%s '%s': expected a number in [%g, %g]", flag, s, lo, hi);
    return 0;
}

int main(int argc, char **argv) {
    options o = {.mode = "domain", .alpha = 0.5, .seed = 1, .heldout_bytes = 16384, .min_docs = 2};
    double v;
    int rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!val) {
            fprintf(stderr, "partition: %s needs a value\n%s", a, usage);
            return 2;
        }
        i++;
        if (!strcmp(a, "--corpora"))
            o.corpora = val;
        else if (!strcmp(a, "--out"))
            o.out = val;
        else if (!strcmp(a, "--mode"))
            o.mode = val;
        else if (!strcmp(a, "--domains"))
            o.domains = val;
        else if (!strcmp(a, "--nodes"))
            rc = parse_num(val, a, 1, MAX_NODES, &v), o.nodes = (int)v;
        else if (!strcmp(a, "--alpha"))
            rc = parse_num(val, a, 1e-3, 1e6, &o.alpha);
        else if (!strcmp(a, "--seed"))
            rc = parse_num(val, a, 0, 9007199254740992.0, &v), o.seed = (uint64_t)v;
        else if (!strcmp(a, "--heldout-bytes"))
            rc = parse_num(val, a, 0, 1e15, &v), o.heldout_bytes = (size_t)v;
        else if (!strcmp(a, "--min-docs"))
            rc = parse_num(val, a, 1, 1e9, &v), o.min_docs = (int)v;
        else {
            fprintf(stderr, "partition: unknown option %s\n%s", a, usage);
            return 2;
        }
        if (rc == 0 && (!strcmp(a, "--nodes") || !strcmp(a, "--min-docs")) && v != floor(v))
            rc = err_set("%s '%s': expected a whole number", a, val);
    }
    if (rc != 0) {
        fprintf(stderr, "partition: %s\n", err_msg());
        return 2;
    }
    if (!o.corpora || !o.out || o.nodes < 1) {
        fprintf(stderr, "partition: --corpora, --out and --nodes are required\n%s", usage);
        return 2;
    }
    if (fio_exists(o.out) && !fio_dir_empty(o.out)) {
        fprintf(stderr,
                "partition: %s already exists and is not empty; choose a new --out (nothing "
                "was written)\n",
                o.out);
        return 1;
    }
    run_state r;
    memset(&r, 0, sizeof r);
    rc = partition_run(&o, &r);
    if (rc != 0) fprintf(stderr, "partition: %s (nothing was written)\n", err_msg());
    if (r.tmp[0]) remove_tree(r.tmp);
    run_free(&r, o.nodes);
    return rc == 0 ? 0 : 1;
}
