/* safetensors — Hugging Face's tensor file format, read (mmap) and written.
 *
 * Format (https://github.com/huggingface/safetensors, "Format"):
 *   8 bytes   N, a little-endian u64: the header length
 *   N bytes   a UTF-8 JSON object: name -> {"dtype", "shape", "data_offsets": [begin, end]},
 *             plus an optional "__metadata__" string -> string map; may end in spaces
 *   the rest  the byte buffer; data_offsets are relative to its start
 *
 * The reader trusts nothing in the file: every rule below is checked before a
 * single tensor byte is handed out, and a violation is an error that names
 * the file, the tensor and the rule, never a crash or an unbounded allocation.
 *   - N <= SAFETENSORS_HEADER_MAX and 8 + N <= file length
 *   - the header is well-formed JSON (UTF-8, no duplicate names), an object
 *   - every dtype is a safetensors dtype; every shape a list of non-negative
 *     integers (rank <= SAFETENSORS_MAX_NDIM) whose product does not overflow
 *   - end - begin == elements x dtype size
 *   - sorted by offset, the tensors tile the byte buffer exactly: no gap, no
 *     overlap, nothing past the end, no trailing bytes (8 + N + buffer == file)
 * These are the rules of the reference Rust implementation (which also
 * refuses gaps and trailing bytes), plus the duplicate-name check it lacks.
 *
 * Tensor bytes are little-endian and may be unaligned; the conversions below
 * copy them (memcpy or byte assembly), never dereference them in place. */
#ifndef FL_MODEL_SAFETENSORS_H
#define FL_MODEL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define SAFETENSORS_HEADER_MAX 100000000ull /* bytes, the reference library's bound */
#define SAFETENSORS_MAX_NDIM 8

typedef enum {
    SAFETENSORS_BOOL,
    SAFETENSORS_U8,
    SAFETENSORS_I8,
    SAFETENSORS_I16,
    SAFETENSORS_U16,
    SAFETENSORS_F16,
    SAFETENSORS_BF16,
    SAFETENSORS_I32,
    SAFETENSORS_U32,
    SAFETENSORS_F32,
    SAFETENSORS_F64,
    SAFETENSORS_I64,
    SAFETENSORS_U64,
    SAFETENSORS_F8_E4M3,
    SAFETENSORS_F8_E5M2,
} safetensors_dtype;

/* "F32", "BF16", … as the header spells them. */
const char *safetensors_dtype_name(safetensors_dtype d);
/* Bytes per element. */
size_t safetensors_dtype_size(safetensors_dtype d);
/* Parses a header dtype string; -1 (no message set) when unknown. */
int safetensors_dtype_parse(const char *s, safetensors_dtype *out);

typedef struct {
    const char *name; /* owned by the file */
    const char *file; /* the file it lives in, for error messages */
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_NDIM];
    int64_t numel;             /* product of shape (1 for a scalar) */
    uint64_t begin, end;       /* data_offsets, relative to the byte buffer */
    const unsigned char *data; /* end - begin bytes, possibly unaligned */
    int mapped;                /* data lies in a read-only mapping of the file */
} safetensors_tensor;

typedef struct safetensors_file safetensors_file;

/* Maps path read-only and validates it. */
int safetensors_open(safetensors_file **out, const char *path);
/* Validates a file already in memory. Zero-copy: buf must outlive the
 * result. `where` names the source in error messages. */
int safetensors_parse(safetensors_file **out, const void *buf, size_t len, const char *where);
void safetensors_close(safetensors_file *f);

/* Tensors in data-offset order. */
int safetensors_count(const safetensors_file *f);
const safetensors_tensor *safetensors_tensor_at(const safetensors_file *f, int i);
/* The tensor with that name, or NULL (binary search). */
const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name);
/* A "__metadata__" value, or NULL. */
const char *safetensors_metadata(const safetensors_file *f, const char *key);

/* Converts all t->numel elements to fp32 / fp64. F32, F64, BF16 and F16 are
 * converted exactly (F64 -> fp32 rounds to nearest); any other dtype is an
 * error naming the tensor. */
int safetensors_to_float(const safetensors_tensor *t, float *out);
int safetensors_to_double(const safetensors_tensor *t, double *out);

/* For a tensor of a mapped file: keep says its bytes will be read many
 * times (a weight used in place); drop gives the memory of its pages back
 * after a copy was made (the bytes stay readable). Memory in a buffer
 * (safetensors_parse) is left alone. Advice only: nothing can fail. */
void safetensors_tensor_keep(const safetensors_tensor *t);
void safetensors_tensor_drop(const safetensors_tensor *t);

/* Scalar conversions (IEEE 754 binary16 and bfloat16; narrowing rounds to
 * nearest, ties to even; NaN stays NaN, overflow becomes infinity). */
float safetensors_f16_to_f32(uint16_t h);
float safetensors_bf16_to_f32(uint16_t b);
uint16_t safetensors_f32_to_f16(float f);
uint16_t safetensors_f32_to_bf16(float f);

/* ---- a model directory ----------------------------------------------------
 * DIR/model.safetensors, or DIR/model.safetensors.index.json whose
 * "weight_map" sends each tensor name to a shard file in DIR (the same order
 * of preference as transformers). Every shard the index names must exist, be
 * valid, and hold the tensors the index puts in it. */
typedef struct safetensors_dir safetensors_dir;

int safetensors_dir_open(safetensors_dir **out, const char *dir);
void safetensors_dir_close(safetensors_dir *d);
/* Tensors sorted by name. */
int safetensors_dir_count(const safetensors_dir *d);
const safetensors_tensor *safetensors_dir_tensor_at(const safetensors_dir *d, int i);
const safetensors_tensor *safetensors_dir_find(const safetensors_dir *d, const char *name);
/* Gives back the memory of the whole pages of [p, p + n) when they lie in
 * one of d's mapped files (safetensors_tensor_drop for any range of it);
 * anything else is left alone. */
void safetensors_dir_release(const safetensors_dir *d, const void *p, size_t n);

/* ---- writing ----------------------------------------------------------------
 * The header is laid out first from the entries (offsets in the order given),
 * then the tensor bytes are streamed in that same order, so saving a model
 * never needs a second full copy of it in memory. The file appears at `path`
 * only when safetensors_writer_finish succeeds (temporary file, fsync,
 * rename, fsync of the directory). Output is deterministic: the same entries
 * and bytes give the same file; the header is padded with spaces to a
 * multiple of 8 bytes, as the reference library does. */
typedef struct {
    const char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_NDIM];
    const void *data; /* used only by safetensors_write */
} safetensors_entry;

typedef struct safetensors_writer safetensors_writer;

/* metadata: NULL, or key, value, key, value, …, NULL. */
int safetensors_writer_open(safetensors_writer **out, const char *path,
                            const safetensors_entry *entries, int n, const char *const *metadata);
/* Appends len bytes of tensor data (little-endian); a tensor may come in
 * several pieces, but never more bytes than the entries declare. */
int safetensors_writer_put(safetensors_writer *w, const void *bytes, size_t len);
/* Checks that every declared byte came, makes the file durable and visible,
 * and frees w (also on failure). */
int safetensors_writer_finish(safetensors_writer *w);
/* Drops the temporary file and frees w. */
void safetensors_writer_abort(safetensors_writer *w);

/* The whole file from entries that carry their data. */
int safetensors_write(const char *path, const safetensors_entry *entries, int n,
                      const char *const *metadata);

#endif
