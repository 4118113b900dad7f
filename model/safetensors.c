/* safetensors.c — validating reader (mmap or memory), model directories
 * (single file or sharded index), and a streaming, atomic writer.
 *
 * Why one file of a little over 900 lines: the reader and the writer share
 * the header's rules (dtype names and sizes, offsets, canonical JSON, the
 * 100 MB header bound), which must not drift apart between what we write
 * and what we accept. */
#include "model/safetensors.h"

#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The format is little-endian; the fast paths below copy F32/F64 bytes
 * straight into host floats. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define INDEX_JSON_MAX                                                                             \
    (64u << 20) /* a model.safetensors.index.json larger than this is refused                      \
                 */

/* ---- dtypes ----------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [SAFETENSORS_BOOL] = {"BOOL", 1},       [SAFETENSORS_U8] = {"U8", 1},
    [SAFETENSORS_I8] = {"I8", 1},           [SAFETENSORS_I16] = {"I16", 2},
    [SAFETENSORS_U16] = {"U16", 2},         [SAFETENSORS_F16] = {"F16", 2},
    [SAFETENSORS_BF16] = {"BF16", 2},       [SAFETENSORS_I32] = {"I32", 4},
    [SAFETENSORS_U32] = {"U32", 4},         [SAFETENSORS_F32] = {"F32", 4},
    [SAFETENSORS_F64] = {"F64", 8},         [SAFETENSORS_I64] = {"I64", 8},
    [SAFETENSORS_U64] = {"U64", 8},         [SAFETENSORS_F8_E4M3] = {"F8_E4M3", 1},
    [SAFETENSORS_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

const char *safetensors_dtype_name(safetensors_dtype d) {
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].name : "?";
}

size_t safetensors_dtype_size(safetensors_dtype d) {
    return (int)d >= 0 && (int)d < N_DTYPES ? dtypes[d].size : 0;
}

int safetensors_dtype_parse(const char *s, safetensors_dtype *out) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (safetensors_dtype)i;
            return 0;
        }
    return -1;
}

/* ---- scalar conversions ------------------------------------------------------ */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Every half is
 * exactly representable in binary32. */
float safetensors_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000 | (mant << 13)); /* inf, NaN */
    if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero or subnormal: mant · 2^-24, exact in binary32 */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

/* bfloat16 is the top half of a binary32. */
float safetensors_bf16_to_f32(uint16_t b) {
    return f32_from_bits((uint32_t)b << 16);
}

uint16_t safetensors_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x0040); /* quiet NaN */
    /* Round to nearest, ties to even: add 0x7fff plus the lowest kept bit;
     * a carry into the exponent is the correct rounding (up to infinity). */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

uint16_t safetensors_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return sign | 0x7e00 | (uint16_t)((ax >> 13) & 0x3ff); /* quiet NaN */
    /* 65520 = halfway between 65504 (the largest half) and 65536: ties go to
     * the even neighbour, which is infinity. */
    if (ax >= 0x477ff000) return sign | 0x7c00;
    if (ax < 0x38800000) {
        /* Below 2^-14, the result is subnormal (or zero) in units of 2^-24.
         * Adding 0.5 puts the value where binary32's ulp is 2^-24, so the
         * hardware addition does the round-to-nearest-even for us. */
        uint32_t r = f32_bits(f32_from_bits(ax) + 0.5f) - 0x3f000000u;
        return sign | (uint16_t)r;
    }
    /* Normal: rebias the exponent (127 -> 15), round away 13 mantissa bits. */
    ax += ((uint32_t)(15 - 127) << 23) + 0xfff + ((ax >> 13) & 1);
    return sign | (uint16_t)(ax >> 13);
}

/* ---- reading ------------------------------------------------------------------ */

struct safetensors_file {
    char *where;
    void *map; /* mmap'd file, NULL when parsed from memory */
    size_t map_len;
    int n;
    safetensors_tensor *tensors;        /* data-offset order */
    const safetensors_tensor **by_name; /* the same tensors, sorted by name */
    char *names;                        /* the tensors' names, NUL-separated */
    int n_meta;
    char **meta; /* key, value, key, value, … (one allocation each) */
};

static uint64_t load_u64le(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void format_shape(char *buf, size_t n, const int64_t *shape, int ndim) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used +=
            (size_t)snprintf(buf + used, n - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

/* An integer member of a header entry that must be in [0, INT64_MAX]. */
static int header_uint(json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static int parse_entry(safetensors_file *f, safetensors_tensor *t, json_t *v) {
    const char *W = f->where, *N = t->name;
    if (!json_is_object(v))
        return err_set("%s: header entry for tensor '%s' is not an object", W, N);
    json_t *jd = json_object_get(v, "dtype");
    json_t *js = json_object_get(v, "shape");
    json_t *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return err_set("%s: tensor '%s' has no \"dtype\" string", W, N);
    if (safetensors_dtype_parse(json_string_value(jd), &t->dtype) != 0)
        return err_set("%s: tensor '%s' has unknown dtype '%s' (the format defines BOOL, U8, I8, "
                       "I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64, F8_E4M3, F8_E5M2)",
                       W, N, json_string_value(jd));
    if (!json_is_array(js)) return err_set("%s: tensor '%s' has no \"shape\" array", W, N);
    if (json_array_size(js) > SAFETENSORS_MAX_NDIM)
        return err_set("%s: tensor '%s' has rank %zu, more than the %d this reader supports", W, N,
                       json_array_size(js), SAFETENSORS_MAX_NDIM);
    t->ndim = (int)json_array_size(js);
    uint64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (header_uint(json_array_get(js, (size_t)i), &d) != 0)
            return err_set("%s: tensor '%s': shape entry %d is not a non-negative integer", W, N,
                           i);
        if (d != 0 && numel > (uint64_t)INT64_MAX / d)
            return err_set("%s: tensor '%s': shape overflows (more than 2^63 elements)", W, N);
        numel *= d;
        t->shape[i] = (int64_t)d;
    }
    t->numel = (int64_t)numel;
    size_t es = safetensors_dtype_size(t->dtype);
    if (numel > UINT64_MAX / es)
        return err_set("%s: tensor '%s': byte size overflows (shape x dtype size)", W, N);
    uint64_t nbytes = numel * es;
    if (!json_is_array(jo) || json_array_size(jo) != 2 ||
        header_uint(json_array_get(jo, 0), &t->begin) != 0 ||
        header_uint(json_array_get(jo, 1), &t->end) != 0)
        return err_set("%s: tensor '%s': \"data_offsets\" must be [begin, end], two non-negative "
                       "integers",
                       W, N);
    if (t->end < t->begin)
        return err_set("%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", W, N,
                       (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end - t->begin != nbytes) {
        char sh[256];
        format_shape(sh, sizeof sh, t->shape, t->ndim);
        return err_set(
            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, but shape %s of "
            "%s needs %llu: the header does not match the data",
            W, N, (unsigned long long)t->begin, (unsigned long long)t->end,
            (unsigned long long)(t->end - t->begin), sh, dtypes[t->dtype].name,
            (unsigned long long)nbytes);
    }
    return 0;
}

static int parse_metadata(safetensors_file *f, json_t *meta) {
    if (json_is_null(meta)) return 0;
    if (!json_is_object(meta))
        return err_set("%s: \"__metadata__\" must be an object of strings", f->where);
    f->meta = calloc(2 * json_object_size(meta) + 1, sizeof *f->meta);
    if (!f->meta) return err_set("%s: out of memory reading \"__metadata__\"", f->where);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return err_set("%s: \"__metadata__\" value of '%s' is not a string", f->where, k);
        char *kc = strdup(k), *vc = strdup(json_string_value(v));
        f->meta[2 * f->n_meta] = kc;
        f->meta[2 * f->n_meta + 1] = vc;
        f->n_meta++;
        if (!kc || !vc) return err_set("%s: out of memory reading \"__metadata__\"", f->where);
    }
    return 0;
}

static int cmp_offsets(const void *a, const void *b) {
    const safetensors_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_names(const void *a, const void *b) {
    const safetensors_tensor *x = *(const safetensors_tensor *const *)a;
    const safetensors_tensor *y = *(const safetensors_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Sorted by offset, the tensors must tile [0, buflen) exactly. */
static int check_layout(safetensors_file *f, uint64_t buflen) {
    uint64_t pos = 0;
    const safetensors_tensor *prev = NULL;
    for (int i = 0; i < f->n; i++) {
        const safetensors_tensor *t = &f->tensors[i];
        if (t->end > buflen)
            return err_set(
                "%s: tensor '%s': data_offsets [%llu, %llu] run past the end of the file "
                "(the data buffer has %llu bytes): truncated or corrupt",
                f->where, t->name, (unsigned long long)t->begin, (unsigned long long)t->end,
                (unsigned long long)buflen);
        if (t->begin < pos)
            return err_set("%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor '%s' [%llu, "
                           "%llu]",
                           f->where, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, prev->name, (unsigned long long)prev->begin,
                           (unsigned long long)prev->end);
        if (t->begin > pos)
            return err_set("%s: gap of %llu unused bytes before tensor '%s' (data_offsets [%llu, "
                           "%llu]): offsets must be contiguous",
                           f->where, (unsigned long long)(t->begin - pos), t->name,
                           (unsigned long long)t->begin, (unsigned long long)t->end);
        pos = t->end;
        prev = t;
    }
    if (pos != buflen)
        return err_set("%s: %llu trailing bytes after the last tensor (the header describes a "
                       "%llu-byte data buffer, the file holds %llu)",
                       f->where, (unsigned long long)(buflen - pos), (unsigned long long)pos,
                       (unsigned long long)buflen);
    return 0;
}

static int parse_into(safetensors_file *f, const unsigned char *b, size_t len) {
    const char *W = f->where;
    if (len < 8)
        return err_set("%s: truncated safetensors file: %zu bytes, less than the 8-byte header "
                       "length",
                       W, len);
    uint64_t n = load_u64le(b);
    if (n > SAFETENSORS_HEADER_MAX)
        return err_set("%s: header length %llu is over the %llu-byte limit: corrupt or not a "
                       "safetensors file",
                       W, (unsigned long long)n, SAFETENSORS_HEADER_MAX);
    if (n > len - 8)
        return err_set("%s: header length %llu runs past the end of the file (%zu bytes): "
                       "truncated or corrupt",
                       W, (unsigned long long)n, len);
    json_error_t je;
    json_t *root = json_loadb((const char *)b + 8, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return err_set("%s: header is not valid JSON: %s (at header byte %d)", W, je.text,
                       je.position);
    int rc = -1;
    if (!json_is_object(root)) {
        err_set("%s: header is not a JSON object", W);
        goto out;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta && parse_metadata(f, meta) != 0) goto out;
    size_t nt = json_object_size(root) - (meta ? 1 : 0), name_bytes = 0;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) name_bytes += strlen(key) + 1;
    /* Both bounded by the header length, itself bounded above. */
    f->tensors = calloc(nt + 1, sizeof *f->tensors);
    f->by_name = calloc(nt + 1, sizeof *f->by_name);
    f->names = malloc(name_bytes + 1);
    if (!f->tensors || !f->by_name || !f->names) {
        err_set("%s: out of memory for a header of %zu tensors", W, nt);
        goto out;
    }
    char *np = f->names;
    json_object_foreach(root, key, v) {
        if (strcmp(key, "__metadata__") == 0) continue;
        safetensors_tensor *t = &f->tensors[f->n++];
        size_t kl = strlen(key);
        memcpy(np, key, kl + 1);
        t->name = np;
        t->file = f->where;
        np += kl + 1;
        if (parse_entry(f, t, v) != 0) goto out;
    }
    uint64_t buflen = (uint64_t)len - 8 - n;
    qsort(f->tensors, (size_t)f->n, sizeof *f->tensors, cmp_offsets);
    if (check_layout(f, buflen) != 0) goto out;
    const unsigned char *data = b + 8 + n;
    for (int i = 0; i < f->n; i++) {
        f->tensors[i].data = data + f->tensors[i].begin;
        f->by_name[i] = &f->tensors[i];
    }
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_names);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

static safetensors_file *file_new(const char *where) {
    safetensors_file *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->where = strdup(where);
    if (!f->where) {
        free(f);
        return NULL;
    }
    return f;
}

int safetensors_parse(safetensors_file **out, const void *buf, size_t len, const char *where) {
    *out = NULL;
    safetensors_file *f = file_new(where);
    if (!f) return err_set("out of memory opening %s", where);
    if (parse_into(f, buf, len) != 0) {
        safetensors_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

int safetensors_open(safetensors_file **out, const char *path) {
    *out = NULL;
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
    safetensors_file *f = file_new(path);
    if (!f) {
        close(fd);
        return err_set("out of memory opening %s", path);
    }
    size_t len = (size_t)st.st_size;
    if (len > 0) {
        /* Read-only private mapping: pages come in as the tensors are
         * converted. (If another process truncates the file while it is
         * mapped, reads past the new end fault: do not rewrite a checkpoint
         * in place while it is being loaded; our writer replaces files by
         * rename, which leaves the mapped inode intact.) */
        void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            close(fd);
            safetensors_close(f);
            return err_errno("cannot mmap %s (%zu bytes)", path, len);
        }
        f->map = map;
        f->map_len = len;
        /* A hint only (the loader reads every tensor once, front to back);
         * its failure changes nothing. */
        (void)madvise(map, len, MADV_SEQUENTIAL);
    }
    close(fd);
    if (parse_into(f, f->map, len) != 0) {
        safetensors_close(f);
        return -1;
    }
    for (int i = 0; i < f->n; i++) f->tensors[i].mapped = f->map != NULL;
    *out = f;
    return 0;
}

void safetensors_close(safetensors_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    for (int i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    free(f->meta);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->where);
    free(f);
}

int safetensors_count(const safetensors_file *f) {
    return f->n;
}

const safetensors_tensor *safetensors_tensor_at(const safetensors_file *f, int i) {
    return i >= 0 && i < f->n ? &f->tensors[i] : NULL;
}

/* Binary search in an array of tensors sorted by name. */
static const safetensors_tensor *find_sorted(const safetensors_tensor *const *v, int n,
                                             const char *name) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(name, v[mid]->name);
        if (c == 0) return v[mid];
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const safetensors_tensor *safetensors_find(const safetensors_file *f, const char *name) {
    return find_sorted(f->by_name, f->n, name);
}

const char *safetensors_metadata(const safetensors_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

static int not_float(const safetensors_tensor *t) {
    return err_set("%s: tensor '%s' has dtype %s; only F32, BF16, F16 and F64 tensors can be "
                   "loaded as floating-point values",
                   t->file, t->name, safetensors_dtype_name(t->dtype));
}

static uint16_t load_u16le(const unsigned char *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}

int safetensors_to_float(const safetensors_tensor *t, float *out) {
    const unsigned char *p = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
        case SAFETENSORS_F32:
            if (n) memcpy(out, p, n * 4);
            return 0;
        case SAFETENSORS_BF16:
            for (size_t i = 0; i < n; i++) out[i] = safetensors_bf16_to_f32(load_u16le(p + 2 * i));
            return 0;
        case SAFETENSORS_F16:
            for (size_t i = 0; i < n; i++) out[i] = safetensors_f16_to_f32(load_u16le(p + 2 * i));
            return 0;
        case SAFETENSORS_F64:
            for (size_t i = 0; i < n; i++) {
                double d;
                memcpy(&d, p + 8 * i, 8);
                out[i] = (float)d;
            }
            return 0;
        default:
            return not_float(t);
    }
}

int safetensors_to_double(const safetensors_tensor *t, double *out) {
    const unsigned char *p = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
        case SAFETENSORS_F64:
            if (n) memcpy(out, p, n * 8);
            return 0;
        case SAFETENSORS_F32:
            for (size_t i = 0; i < n; i++) {
                float f;
                memcpy(&f, p + 4 * i, 4);
                out[i] = f;
            }
            return 0;
        case SAFETENSORS_BF16:
            for (size_t i = 0; i < n; i++) out[i] = safetensors_bf16_to_f32(load_u16le(p + 2 * i));
            return 0;
        case SAFETENSORS_F16:
            for (size_t i = 0; i < n; i++) out[i] = safetensors_f16_to_f32(load_u16le(p + 2 * i));
            return 0;
        default:
            return not_float(t);
    }
}

/* ---- advice on mapped bytes -------------------------------------------------------- */

/* The whole pages inside [p, p + n), or n = 0 when there are none. */
static void inner_pages(const void *p, size_t n, void **start, size_t *len) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + page - 1) / page * page, b = ((uintptr_t)p + n) / page * page;
    *start = (void *)a;
    *len = b > a ? b - a : 0;
}

void safetensors_tensor_keep(const safetensors_tensor *t) {
    void *p;
    size_t n;
    if (!t->mapped) return;
    inner_pages(t->data, (size_t)(t->end - t->begin), &p, &n);
    /* Undo the file's MADV_SEQUENTIAL for bytes read again and again. */
    if (n) (void)madvise(p, n, MADV_NORMAL);
}

void safetensors_tensor_drop(const safetensors_tensor *t) {
    void *p;
    size_t n;
    if (!t->mapped) return;
    inner_pages(t->data, (size_t)(t->end - t->begin), &p, &n);
    /* A private read-only mapping of a file: dropped pages fault back in
     * from the file if read again, so this only gives memory back. */
    if (n) (void)madvise(p, n, MADV_DONTNEED);
}

/* ---- model directories --------------------------------------------------------- */

struct safetensors_dir {
    int n_files;
    safetensors_file **files;
    char **file_names; /* shard names as the index spells them */
    int n;
    const safetensors_tensor **by_name;
};

void safetensors_dir_close(safetensors_dir *d) {
    if (!d) return;
    for (int i = 0; i < d->n_files; i++) {
        safetensors_close(d->files[i]);
        free(d->file_names[i]);
    }
    free(d->files);
    free(d->file_names);
    free(d->by_name);
    free(d);
}

void safetensors_dir_release(const safetensors_dir *d, const void *p, size_t n) {
    if (!d || !n) return;
    const unsigned char *a = p;
    for (int i = 0; i < d->n_files; i++) {
        const safetensors_file *f = d->files[i];
        const unsigned char *m = f->map;
        if (!m || a < m || a + n > m + f->map_len) continue;
        void *start;
        size_t len;
        inner_pages(p, n, &start, &len);
        if (len) (void)madvise(start, len, MADV_DONTNEED);
        return;
    }
}

int safetensors_dir_count(const safetensors_dir *d) {
    return d->n;
}

const safetensors_tensor *safetensors_dir_tensor_at(const safetensors_dir *d, int i) {
    return i >= 0 && i < d->n ? d->by_name[i] : NULL;
}

const safetensors_tensor *safetensors_dir_find(const safetensors_dir *d, const char *name) {
    return find_sorted(d->by_name, d->n, name);
}

static int dir_single(safetensors_dir *d, const char *path) {
    d->files = calloc(1, sizeof *d->files);
    d->file_names = calloc(1, sizeof *d->file_names);
    if (!d->files || !d->file_names) return err_set("out of memory opening %s", path);
    if (safetensors_open(&d->files[0], path) != 0) return -1;
    d->file_names[0] = NULL;
    d->n_files = 1;
    safetensors_file *f = d->files[0];
    d->by_name = calloc((size_t)f->n + 1, sizeof *d->by_name);
    if (!d->by_name) return err_set("out of memory opening %s", path);
    memcpy(d->by_name, f->by_name, (size_t)f->n * sizeof *d->by_name);
    d->n = f->n;
    return 0;
}

/* A shard name must be a plain file name in the model directory: an index
 * from elsewhere must not make us open /etc/passwd or ../../secret. */
static int shard_name_ok(const char *s) {
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int dir_shard(safetensors_dir *d, const char *dir, const char *index, const char *shard,
                     const char *tensor, size_t max_files, safetensors_file **out) {
    for (int i = 0; i < d->n_files; i++)
        if (strcmp(d->file_names[i], shard) == 0) {
            *out = d->files[i];
            return 0;
        }
    if ((size_t)d->n_files >= max_files) return err_set("%s: too many shard files", index);
    char path[4096];
    if (fio_join(path, sizeof path, dir, shard) != 0) return -1;
    char *name = strdup(shard);
    if (!name) return err_set("out of memory opening %s", path);
    safetensors_file *f = NULL;
    if (safetensors_open(&f, path) != 0) {
        free(name);
        return err_context("shard %s (named by %s for tensor '%s')", shard, index, tensor);
    }
    d->files[d->n_files] = f;
    d->file_names[d->n_files] = name;
    d->n_files++;
    *out = f;
    return 0;
}

static int dir_index(safetensors_dir *d, const char *dir, const char *index) {
    char *text;
    size_t len;
    if (fio_read_all(index, INDEX_JSON_MAX, &text, &len) != 0) return -1;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return err_set("%s: not valid JSON: %s (line %d, column %d)", index, je.text, je.line,
                       je.column);
    int rc = -1;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        err_set("%s: no \"weight_map\" object (tensor name -> shard file)", index);
        goto out;
    }
    size_t n = json_object_size(map);
    d->files = calloc(n + 1, sizeof *d->files);
    d->file_names = calloc(n + 1, sizeof *d->file_names);
    d->by_name = calloc(n + 1, sizeof *d->by_name);
    if (!d->files || !d->file_names || !d->by_name) {
        err_set("out of memory reading %s", index);
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v))) {
            err_set("%s: weight_map entry for '%s' must be a shard file name in the model "
                    "directory",
                    index, name);
            goto out;
        }
        const char *shard = json_string_value(v);
        safetensors_file *f = NULL;
        if (dir_shard(d, dir, index, shard, name, n, &f) != 0) goto out;
        const safetensors_tensor *t = safetensors_find(f, name);
        if (!t) {
            err_set("%s lists tensor '%s' in shard %s, but that shard does not contain it", index,
                    name, shard);
            goto out;
        }
        d->by_name[d->n++] = t;
    }
    qsort(d->by_name, (size_t)d->n, sizeof *d->by_name, cmp_names);
    rc = 0;
out:
    json_decref(root);
    return rc;
}

int safetensors_dir_open(safetensors_dir **out, const char *dir) {
    *out = NULL;
    char single[4096], index[4096];
    if (fio_join(single, sizeof single, dir, "model.safetensors") != 0 ||
        fio_join(index, sizeof index, dir, "model.safetensors.index.json") != 0)
        return -1;
    safetensors_dir *d = calloc(1, sizeof *d);
    if (!d) return err_set("out of memory opening %s", dir);
    int rc;
    if (fio_exists(single)) {
        rc = dir_single(d, single);
    } else if (fio_exists(index)) {
        rc = dir_index(d, dir, index);
    } else {
        char bin[4096];
        int has_bin = fio_join(bin, sizeof bin, dir, "pytorch_model.bin") == 0 && fio_exists(bin);
        rc = err_set("%s has neither model.safetensors nor model.safetensors.index.json%s", dir,
                     has_bin ? " (pytorch_model.bin is not read: convert it to safetensors)" : "");
    }
    if (rc != 0) {
        safetensors_dir_close(d);
        return -1;
    }
    *out = d;
    return 0;
}

/* ---- writing ---------------------------------------------------------------------- */

struct safetensors_writer {
    int fd;
    char *path, *tmp;
    uint64_t total, written;
};

static uint64_t entry_bytes(const safetensors_entry *e) {
    uint64_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= (uint64_t)e->shape[d];
    return n * safetensors_dtype_size(e->dtype);
}

static int entry_check(const safetensors_entry *e) {
    if (!e->name || strcmp(e->name, "__metadata__") == 0)
        return err_set("safetensors writer: invalid tensor name '%s'",
                       e->name ? e->name : "(null)");
    if ((int)e->dtype < 0 || (int)e->dtype >= N_DTYPES)
        return err_set("safetensors writer: tensor '%s' has an invalid dtype", e->name);
    if (e->ndim < 0 || e->ndim > SAFETENSORS_MAX_NDIM)
        return err_set("safetensors writer: tensor '%s' has rank %d", e->name, e->ndim);
    uint64_t n = 1;
    for (int d = 0; d < e->ndim; d++) {
        if (e->shape[d] < 0)
            return err_set("safetensors writer: tensor '%s' has a negative dimension", e->name);
        uint64_t s = (uint64_t)e->shape[d];
        if (s != 0 && n > ((uint64_t)INT64_MAX / 8) / s)
            return err_set("safetensors writer: tensor '%s' is too large", e->name);
        n *= s;
    }
    return 0;
}

/* The header JSON, compact, keys in the order given ("__metadata__" first),
 * padded with spaces to a multiple of 8 bytes. */
static char *build_header(const safetensors_entry *entries, int n, const char *const *metadata,
                          uint64_t *total, size_t *hlen) {
    json_t *root = json_object();
    char *text = NULL;
    if (!root) goto fail;
    if (metadata) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m) != 0) goto fail;
        for (int i = 0; metadata[i] && metadata[i + 1]; i += 2)
            if (json_object_set_new(m, metadata[i], json_string(metadata[i + 1])) != 0) goto fail;
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        const safetensors_entry *e = &entries[i];
        if (entry_check(e) != 0) goto fail_msg;
        if (json_object_get(root, e->name)) {
            err_set("safetensors writer: duplicate tensor name '%s'", e->name);
            goto fail_msg;
        }
        uint64_t nb = entry_bytes(e);
        if (nb > (uint64_t)INT64_MAX - off) {
            err_set("safetensors writer: more than 2^63 bytes of tensor data");
            goto fail_msg;
        }
        json_t *t = json_object(), *shape = json_array(), *offs = json_array();
        if (!t || !shape || !offs) {
            json_decref(t);
            json_decref(shape);
            json_decref(offs);
            goto fail;
        }
        int bad = json_object_set_new(t, "dtype", json_string(safetensors_dtype_name(e->dtype)));
        for (int d = 0; d < e->ndim; d++)
            bad |= json_array_append_new(shape, json_integer(e->shape[d]));
        bad |= json_object_set_new(t, "shape", shape);
        bad |= json_array_append_new(offs, json_integer((json_int_t)off));
        bad |= json_array_append_new(offs, json_integer((json_int_t)(off + nb)));
        bad |= json_object_set_new(t, "data_offsets", offs);
        bad |= json_object_set_new(root, e->name, t);
        if (bad) goto fail;
        off += nb;
    }
    text = json_dumps(root, JSON_COMPACT);
    if (!text) goto fail;
    size_t len = strlen(text), padded = (len + 7) / 8 * 8;
    char *out = realloc(text, padded + 1);
    if (!out) goto fail;
    text = out;
    memset(text + len, ' ', padded - len);
    text[padded] = '\0';
    json_decref(root);
    *total = off;
    *hlen = padded;
    return text;
fail:
    err_set("safetensors writer: out of memory building the header");
fail_msg:
    free(text);
    json_decref(root);
    return NULL;
}

void safetensors_writer_abort(safetensors_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->tmp) unlink(w->tmp);
    free(w->tmp);
    free(w->path);
    free(w);
}

int safetensors_writer_open(safetensors_writer **out, const char *path,
                            const safetensors_entry *entries, int n, const char *const *metadata) {
    *out = NULL;
    uint64_t total;
    size_t hlen;
    char *header = build_header(entries, n, metadata, &total, &hlen);
    if (!header) return err_context("writing %s", path);
    safetensors_writer *w = calloc(1, sizeof *w);
    if (w) w->fd = -1;
    size_t tl = strlen(path) + 32;
    char *tmp = malloc(tl);
    if (!w || !tmp || !(w->path = strdup(path))) {
        free(header);
        free(tmp);
        safetensors_writer_abort(w);
        return err_set("out of memory writing %s", path);
    }
    /* The temporary name is the target's plus our pid, in the same
     * directory, so the final rename is atomic (as fio_write_atomic). */
    snprintf(tmp, tl, "%s.tmp.%ld", path, (long)getpid());
    w->total = total;
    w->fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        err_errno("cannot create %s", tmp);
        free(tmp);
        free(header);
        safetensors_writer_abort(w);
        return -1;
    }
    w->tmp = tmp;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = fio_write_full(w->fd, len8, 8, w->tmp);
    if (rc == 0) rc = fio_write_full(w->fd, header, hlen, w->tmp);
    free(header);
    if (rc != 0) {
        safetensors_writer_abort(w);
        return -1;
    }
    *out = w;
    return 0;
}

int safetensors_writer_put(safetensors_writer *w, const void *bytes, size_t len) {
    if (len > w->total - w->written)
        return err_set("writing %s: %llu bytes more than the tensors declare", w->path,
                       (unsigned long long)(len - (w->total - w->written)));
    if (fio_write_full(w->fd, bytes, len, w->tmp) != 0) return -1;
    w->written += len;
    return 0;
}

int safetensors_writer_finish(safetensors_writer *w) {
    int rc = 0;
    if (w->written != w->total)
        rc = err_set("writing %s: only %llu of the %llu declared data bytes were written", w->path,
                     (unsigned long long)w->written, (unsigned long long)w->total);
    if (rc == 0 && fsync(w->fd) != 0) rc = err_errno("cannot fsync %s", w->tmp);
    if (rc == 0) {
        int fd = w->fd;
        w->fd = -1;
        if (close(fd) != 0) rc = err_errno("cannot close %s", w->tmp);
    }
    if (rc == 0 && rename(w->tmp, w->path) != 0)
        rc = err_errno("cannot rename %s to %s", w->tmp, w->path);
    if (rc != 0) {
        safetensors_writer_abort(w);
        return -1;
    }
    rc = fio_fsync_dir_of(w->path);
    free(w->tmp);
    w->tmp = NULL;
    safetensors_writer_abort(w); /* frees; nothing left to remove */
    return rc;
}

int safetensors_write(const char *path, const safetensors_entry *entries, int n,
                      const char *const *metadata) {
    safetensors_writer *w;
    if (safetensors_writer_open(&w, path, entries, n, metadata) != 0) return -1;
    for (int i = 0; i < n; i++) {
        uint64_t nb = entry_bytes(&entries[i]);
        if (nb && !entries[i].data) {
            safetensors_writer_abort(w);
            return err_set("writing %s: tensor '%s' has no data", path, entries[i].name);
        }
        if (nb && safetensors_writer_put(w, entries[i].data, (size_t)nb) != 0) {
            safetensors_writer_abort(w);
            return -1;
        }
    }
    return safetensors_writer_finish(w);
}
