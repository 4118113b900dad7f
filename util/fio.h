/* fio — file I/O that either succeeds durably or says why.
 *
 * fio_write_atomic follows the classic recipe for crash-safe replacement
 * (write a temporary file in the same directory, fsync it, rename it over the
 * target, fsync the directory), so a reader sees the old or the new bytes,
 * never a mix, and the new bytes survive a power cut once it returns 0. */
#ifndef FL_UTIL_FIO_H
#define FL_UTIL_FIO_H

#include <stddef.h>
#include <stdint.h>

/* Reads a whole file into a malloc'd, NUL-terminated buffer. Files larger
 * than max_bytes are refused (untrusted input must not allocate without
 * bound). *len excludes the terminator. */
int fio_read_all(const char *path, size_t max_bytes, char **data, size_t *len);
/* Writes len bytes to path atomically and durably (see above). mode is the
 * new file's permission bits (e.g. 0644, 0600 for private keys). */
int fio_write_atomic(const char *path, const void *data, size_t len, unsigned mode);
/* write(2) until done, retrying on EINTR; `what` names the file in errors. */
int fio_write_full(int fd, const void *data, size_t len, const char *what);
/* fsync of the directory holding path (needed after create/rename). */
int fio_fsync_dir_of(const char *path);
/* mkdir -p with the given mode for new components. */
int fio_mkdirs(const char *path, unsigned mode);
/* Joins dir and name into out (size n); error if it does not fit. */
int fio_join(char *out, size_t n, const char *dir, const char *name);
/* The directory part of path into out (size n): "." when path has no '/',
 * "/" for a file at the root; error if it does not fit. */
int fio_dirname(char *out, size_t n, const char *path);
int fio_exists(const char *path);
/* 1 when path is a directory with no entries (or does not exist). */
int fio_dir_empty(const char *path);
/* rm -r: a file, or a directory and everything under it (symbolic links
 * are removed, never followed); a missing path is fine. */
int fio_remove_tree(const char *path);
/* Copies the regular file src (a symbolic link is refused, not followed;
 * at most max_bytes) to dst as fio_write_atomic writes, streamed: memory
 * stays at one buffer whatever the size. mode: dst's permission bits. */
int fio_copy(const char *src, const char *dst, uint64_t max_bytes, unsigned mode);

#endif
