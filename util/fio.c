#define _XOPEN_SOURCE 700 /* nftw */
#include "util/fio.h"

#include "util/err.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int fio_read_all(const char *path, size_t max_bytes, char **data, size_t *len) {
    *data = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return err_errno("cannot open %s", path);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return err_errno("cannot stat %s", path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set("%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > (uint64_t)max_bytes) {
        close(fd);
        return err_set("%s is %lld bytes, more than the %zu allowed for this kind of file", path,
                       (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return err_set("out of memory reading %s (%zu bytes)", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            free(buf);
            close(fd);
            return err_errno("cannot read %s", path);
        }
        if (r == 0) break; /* file shrank under us: take what is there */
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return 0;
}

int fio_write_full(int fd, const void *data, size_t len, const char *what) {
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return err_errno("cannot write %s", what);
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

int fio_fsync_dir_of(const char *path) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return err_set("path too long: %s", path);
    const char *dir = dirname(tmp);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return err_errno("cannot open directory %s to fsync it", dir);
    int rc = fsync(fd);
    close(fd);
    if (rc != 0) return err_errno("cannot fsync directory %s", dir);
    return 0;
}

int fio_write_atomic(const char *path, const void *data, size_t len, unsigned mode) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return err_set("path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode);
    if (fd < 0) return err_errno("cannot create %s", tmp);
    int rc = fio_write_full(fd, data, len, tmp);
    if (rc == 0 && fsync(fd) != 0) rc = err_errno("cannot fsync %s", tmp);
    if (rc != 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (close(fd) != 0) {
        unlink(tmp);
        return err_errno("cannot close %s", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        errno = e;
        return err_errno("cannot rename %s to %s", tmp, path);
    }
    return fio_fsync_dir_of(path);
}

int fio_mkdirs(const char *path, unsigned mode) {
    char tmp[4096];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof tmp) return err_set("invalid directory path '%s'", path);
    memcpy(tmp, path, n + 1);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST)
            return err_errno("cannot create directory %s", tmp);
        *p = '/';
    }
    if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST)
        return err_errno("cannot create directory %s", tmp);
    struct stat st;
    if (stat(tmp, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set("%s exists and is not a directory", tmp);
    return 0;
}

int fio_dirname(char *out, size_t n, const char *path) {
    const char *slash = strrchr(path, '/');
    int keep = !slash ? 0 : slash == path ? 1 : (int)(slash - path);
    int w = slash ? snprintf(out, n, "%.*s", keep, path) : snprintf(out, n, ".");
    if (w < 0 || (size_t)w >= n) return err_set("path too long: %s", path);
    return 0;
}

int fio_join(char *out, size_t n, const char *dir, const char *name) {
    int w = snprintf(out, n, "%s/%s", dir, name);
    if (w < 0 || (size_t)w >= n) return err_set("path too long: %s/%s", dir, name);
    return 0;
}

int fio_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int fio_dir_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return !fio_exists(path);
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st;
    (void)ftw;
    int rc = type == FTW_DP ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT) return err_errno("cannot remove %s", path);
    return 0;
}

int fio_remove_tree(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : err_errno("cannot stat %s", path);
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return err_context("removing %s", path);
    return 0;
}

#define COPY_CHUNK ((size_t)1 << 20)

int fio_copy(const char *src, const char *dst, uint64_t max_bytes, unsigned mode) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid()) >= (int)sizeof tmp)
        return err_set("path too long: %s", dst);
    /* O_NOFOLLOW: a link planted where a file is expected is not followed. */
    int in = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (in < 0 && errno == ELOOP)
        return err_set("%s is a symbolic link: not followed (only regular files are copied)", src);
    if (in < 0) return err_errno("cannot open %s", src);
    struct stat st;
    int rc = 0;
    if (fstat(in, &st) != 0)
        rc = err_errno("cannot stat %s", src);
    else if (!S_ISREG(st.st_mode))
        rc = err_set("%s is not a regular file", src);
    else if ((uint64_t)st.st_size > max_bytes)
        rc = err_set("%s is %lld bytes, more than the %llu allowed for this kind of file", src,
                     (long long)st.st_size, (unsigned long long)max_bytes);
    if (rc != 0) {
        close(in);
        return -1;
    }
    char *buf = malloc(COPY_CHUNK);
    int out = buf ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, (mode_t)mode) : -1;
    if (!buf)
        rc = err_set("out of memory copying %s", src);
    else if (out < 0)
        rc = err_errno("cannot create %s", tmp);
    /* Up to the size seen at the start: a file growing under us cannot
     * take more than max_bytes. */
    for (uint64_t left = (uint64_t)st.st_size; rc == 0 && left > 0;) {
        ssize_t r = read(in, buf, left < COPY_CHUNK ? (size_t)left : COPY_CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = err_errno("cannot read %s", src);
        } else if (r == 0) {
            rc = err_set("%s shrank while it was copied", src);
        } else {
            rc = fio_write_full(out, buf, (size_t)r, tmp);
            left -= (uint64_t)r;
        }
    }
    free(buf);
    close(in);
    if (rc == 0 && fsync(out) != 0) rc = err_errno("cannot fsync %s", tmp);
    if (out >= 0 && close(out) != 0 && rc == 0) rc = err_errno("cannot close %s", tmp);
    if (rc == 0 && rename(tmp, dst) != 0) rc = err_errno("cannot rename %s to %s", tmp, dst);
    if (rc != 0) {
        if (out >= 0) unlink(tmp);
        return -1;
    }
    return fio_fsync_dir_of(dst);
}
