/* tmpdir.h — a scratch directory per test run, removed at exit. */
#ifndef FL_TESTS_SAFETENSORS_TMPDIR_H
#define FL_TESTS_SAFETENSORS_TMPDIR_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp_root[512];

static inline int tmp_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void tmp_cleanup(void) {
    if (tmp_root[0]) nftw(tmp_root, tmp_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* Creates the directory once; returns it. */
static inline const char *tmp_dir(void) {
    if (!tmp_root[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmp_root, sizeof tmp_root, "%s/fedlora-test-XXXXXX",
                 base && *base ? base : "/tmp");
        if (!mkdtemp(tmp_root)) {
            perror("mkdtemp");
            exit(2);
        }
        atexit(tmp_cleanup);
    }
    return tmp_root;
}

/* tmp_dir()/name in a static rotating buffer (enough for a few at once). */
static inline const char *tmp_path(const char *name) {
    static char bufs[8][1024];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir(), name);
    return b;
}

static inline void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
        perror(path);
        exit(2);
    }
}

/* The whole file, malloc'd; *len its size. */
static inline unsigned char *read_bytes(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

#endif
