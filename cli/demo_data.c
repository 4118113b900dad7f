/* demo_data — a partition directory as a demo federation's data (demo_data.h). */
#include "cli/demo_data.h"

#include "util/err.h"
#include "util/fio.h"
#include "wire/keys.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The sorted entries of dir whose names start with prefix and end with
 * suffix (malloc'd strings in a malloc'd array). */
static int list_dir(const char *dir, const char *prefix, const char *suffix, char ***out, int *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return err_errno("cannot list %s", dir);
    int cap = 0, rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
        size_t len = strlen(e->d_name), lp = strlen(prefix), ls = strlen(suffix);
        if (e->d_name[0] == '.' || len <= lp + ls || strncmp(e->d_name, prefix, lp) != 0 ||
            strcmp(e->d_name + len - ls, suffix) != 0)
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **grown = realloc(*out, (size_t)cap * sizeof *grown);
            if (!grown) {
                rc = err_set("out of memory listing %s", dir);
                break;
            }
            *out = grown;
        }
        if (!((*out)[*n] = strdup(e->d_name)))
            rc = err_set("out of memory listing %s", dir);
        else
            (*n)++;
    }
    closedir(d);
    if (rc == 0 && *n) qsort(*out, (size_t)*n, sizeof **out, cmp_name);
    return rc;
}

static void free_list(char **v, int n) {
    for (int i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* From DIR/PARTITION ("university<TAB>domain<TAB>documents<TAB>..."): the
 * one domain the university holds documents of, or "mixed". */
static void label_of(const char *partition, const char *uni, char *label) {
    snprintf(label, DEMO_LABEL_MAX, "mixed");
    int found = 0;
    for (const char *p = partition; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512], dom[DEMO_LABEL_MAX];
        long long docs;
        if (len < sizeof line && p[0] != '#') {
            memcpy(line, p, len);
            line[len] = '\0';
            char *tab = strchr(line, '\t');
            if (tab && (size_t)(tab - line) == strlen(uni) && !strncmp(line, uni, strlen(uni)) &&
                sscanf(tab + 1, "%63[^\t]\t%lld", dom, &docs) == 2 && docs > 0) {
                if (found++ == 0)
                    snprintf(label, DEMO_LABEL_MAX, "%s", dom);
                else
                    snprintf(label, DEMO_LABEL_MAX, "mixed");
            }
        }
        p = nl ? nl + 1 : NULL;
    }
}

int demo_data_partition(demo_data *d, const char *dir) {
    memset(d, 0, sizeof *d);
    char **unis = NULL, **doms = NULL, path[HARNESS_PATH], heldout[HARNESS_PATH];
    int nu = 0, nd = 0, rc = -1;
    char *partition = NULL;
    size_t plen;
    const char *how = "make one with bench/data/partition (docs/corpora.md)";
    if (!fio_exists(dir)) {
        err_set("--data %s: no such directory; %s", dir, how);
        goto done;
    }
    if (harness_join(heldout, dir, "heldout") != 0 || list_dir(dir, "uni-", "", &unis, &nu) != 0)
        goto done;
    if (!fio_exists(heldout) || list_dir(heldout, "", ".txt", &doms, &nd) != 0 || nd == 0) {
        err_set("--data %s: no held-out files (heldout/<domain>.txt); %s", dir, how);
        goto done;
    }
    if (nu == 0) {
        err_set("--data %s: no universities (uni-*/train.txt); %s", dir, how);
        goto done;
    }
    if (nu > HARNESS_NODES_MAX || nd > DEMO_DOMAINS_MAX) {
        err_set("--data %s: %d universities and %d domains; the demo runs at most %d and %d", dir,
                nu, nd, HARNESS_NODES_MAX, DEMO_DOMAINS_MAX);
        goto done;
    }
    if (harness_join(path, dir, "PARTITION") == 0 && fio_exists(path) &&
        fio_read_all(path, 1u << 24, &partition, &plen) != 0)
        goto done;
    for (int i = 0; i < nu; i++) {
        if (keys_name_check(unis[i]) != 0 || strlen(unis[i]) > KEYS_NAME_MAX) {
            err_set("--data %s: %s is not a node name ([A-Za-z0-9._-], at most %d bytes)", dir,
                    unis[i], KEYS_NAME_MAX);
            goto done;
        }
        snprintf(d->name[i], sizeof d->name[i], "%s", unis[i]);
        if (harness_join(path, dir, unis[i]) != 0 ||
            harness_join(d->train[i], path, "train.txt") != 0)
            goto done;
        if (!fio_exists(d->train[i])) {
            err_set("--data %s: %s has no train.txt; %s", dir, unis[i], how);
            goto done;
        }
        label_of(partition, unis[i], d->label[i]);
    }
    for (int i = 0; i < nd; i++) {
        size_t len = strlen(doms[i]) - 4; /* without ".txt" */
        if (len >= DEMO_LABEL_MAX) {
            err_set("--data %s: domain name %s is too long", dir, doms[i]);
            goto done;
        }
        snprintf(d->domain[i], sizeof d->domain[i], "%.*s", (int)len, doms[i]);
        if (harness_join(d->heldout[i], heldout, doms[i]) != 0) goto done;
    }
    d->n = nu;
    d->n_domains = nd;
    rc = 0;
done:
    free(partition);
    free_list(unis, nu);
    free_list(doms, nd);
    return rc;
}
