/* update_kernel.c — W += B·A in update.h's fixed order, one path per
 * instruction set, chosen at run time (update_kernel.h).
 *
 * Why every path gives the same bits. Each element is computed as
 *
 *   acc = (double)W[i][j];  acc = fma((double)B[i][k], (double)A[k][j], acc), k = 0..R-1;
 *   W'[i][j] = (float)acc
 *
 * and nothing else: no reassociation, no partial sums, the k order fixed.
 * A vector lane does exactly the scalar operation on its element, and how
 * elements are grouped into tiles, vectors or threads changes no element's
 * operations. Converting a float to double is exact; the product of two
 * floats (24-bit significands, exponents in [-149, 127]) is exact in double
 * (48 bits, exponents in [-298, 256]), so fma(b, a, acc) — the exact
 * b·a + acc rounded once — is also what the rounded sum acc + b·a of a
 * separate multiply and add gives: the MULADD path, for x86-64 CPUs without
 * FMA, computes the same number. The one rounding to float at the end is
 * round-to-nearest-even, the default mode (this code never changes it; a
 * process that sets another rounding mode, or flush-to-zero for
 * subnormals, gets other bits, as it would with any IEEE arithmetic). The
 * factors are finite (update_read refuses anything else); a NaN in W stays
 * a NaN on every path.
 *
 * How it is fast (GEMM blocking after Goto and van de Geijn, "Anatomy of
 * high-performance matrix multiplication", 2008): the columns of W are
 * taken in panels of nc columns; a panel of A (R, nc) is converted once to
 * double and packed in strips of NR columns (strip-major, then k, then
 * column), sized to stay in the L2 cache while every row of W streams past
 * it. Rows go in tiles of MR: the tile's B (MR, R) is converted to
 * doubles, then a register tile of MR × NR accumulators starts from W's
 * values and takes k = 0..R-1 in turn (per k: NR/lanes vector loads of A,
 * MR broadcasts of B, MR·NR/lanes FMAs), and is rounded back into W. Edge
 * tiles (rows or columns short of MR or NR) run the same code on a padded
 * copy. OpenMP threads split the row tiles of each panel; the panel is
 * packed by all threads between two barriers. Compiled with
 * -ffp-contract=off (lora/CMakeLists.txt) so that the MULADD path stays a
 * separate multiply and add (a fused one would give the same bits, by the
 * argument above, but the path is meant to be what it says). */
#include "lora/update.h"
#include "lora/update_kernel.h"

#include "util/err.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_PATHS 1
#include <immintrin.h>
#endif

/* The packed panel of A: at most this many bytes (unless one strip of the
 * rank is larger), so that it stays in L2 next to the B tile and W's rows.
 * CPUs with AVX-512 have 1 MiB or more of L2 per core (Skylake-SP, Zen 4
 * and later), AVX2 ones from 256 KiB (Haswell). On the Zen 5 development
 * machine (1 MiB L2), one thread, (4096, 4096): 1 MiB against 512 KiB gave
 * 53–55 against 46–53 G multiply-adds/s at R = 512, the same at R <= 256;
 * 128 KiB cost 15 % at R = 256. */
#define PANEL_BYTES_AVX512 (768 * 1024)
#define PANEL_BYTES (256 * 1024)
/* The largest register tile of any path (edge_tile's buffer). */
#define MR_MAX 6
#define NR_MAX 32

/* One register tile: W (MR, NR), row stride ldw, += Bp · Ap over k = 0..R-1,
 * Ap (R, NR) packed k-major and Bp (MR, R) row-major, as doubles. */
typedef void (*tile_fn)(int R, const double *Ap, const double *Bp, float *W, int64_t ldw);

typedef struct {
    const char *name;
    int mr, nr;
    tile_fn tile;
    int64_t panel_bytes;
} path_desc;

/* ---- the portable tiles -------------------------------------------------- */

/* Plain C: the compiler unrolls the constant loops completely, so the
 * accumulators live in registers, and may put the j loop in vector lanes
 * (NEON fmla on AArch64, where fma() is one instruction), each lane doing
 * the scalar operation on its element. 4 rows × 8 columns for fma (32 NEON
 * registers of 2 doubles), 4 × 4 for muladd (16 SSE2 registers). */
#define PORTABLE_TILE(name, MR, NR, MADD)                                                          \
    static void name(int R, const double *Ap, const double *Bp, float *W, int64_t ldw) {           \
        double c[MR][NR];                                                                          \
        _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++)                                       \
            _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) c[r][j] = (double)W[r * ldw + j]; \
        for (int k = 0; k < R; k++, Ap += NR) {                                                    \
            _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++) {                                 \
                const double b = Bp[(int64_t)r * R + k];                                           \
                _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) c[r][j] =                     \
                    MADD(b, Ap[j], c[r][j]);                                                       \
            }                                                                                      \
        }                                                                                          \
        _Pragma("GCC unroll 8") for (int r = 0; r < MR; r++)                                       \
            _Pragma("GCC unroll 8") for (int j = 0; j < NR; j++) W[r * ldw + j] = (float)c[r][j];  \
    }

#define MADD_FMA(b, a, c) fma((b), (a), (c))
#define MADD_SEPARATE(b, a, c) ((c) + (b) * (a))
#define PF_MR 4
#define PF_NR 8
#define PM_MR 4
#define PM_NR 4
PORTABLE_TILE(tile_fma, PF_MR, PF_NR, MADD_FMA)
PORTABLE_TILE(tile_muladd, PM_MR, PM_NR, MADD_SEPARATE)

/* ---- x86-64 tiles -------------------------------------------------------- */

#ifdef HAVE_X86_PATHS

/* AVX2 + FMA3: 6 rows × 8 columns = 12 ymm accumulators, 2 for A, 1 for
 * the broadcast B: 15 of 16 registers. Per k, 2 loads and 6 broadcasts feed
 * 12 FMAs. */
#define X2_MR 6
#define X2_NR 8

__attribute__((target("avx2,fma"))) static void tile_avx2(int R, const double *Ap, const double *Bp,
                                                          float *W, int64_t ldw) {
#define X2_LOAD(r)                                                                                 \
    __m256d c##r##0 = _mm256_cvtps_pd(_mm_loadu_ps(W + (r)*ldw));                                  \
    __m256d c##r##1 = _mm256_cvtps_pd(_mm_loadu_ps(W + (r)*ldw + 4))
    X2_LOAD(0);
    X2_LOAD(1);
    X2_LOAD(2);
    X2_LOAD(3);
    X2_LOAD(4);
    X2_LOAD(5);
    const double *b0 = Bp, *b1 = b0 + R, *b2 = b1 + R, *b3 = b2 + R, *b4 = b3 + R, *b5 = b4 + R;
    for (int k = 0; k < R; k++) {
        const __m256d a0 = _mm256_load_pd(Ap), a1 = _mm256_load_pd(Ap + 4);
#define X2_FMA(r)                                                                                  \
    do {                                                                                           \
        const __m256d b = _mm256_broadcast_sd(b##r + k);                                           \
        c##r##0 = _mm256_fmadd_pd(b, a0, c##r##0);                                                 \
        c##r##1 = _mm256_fmadd_pd(b, a1, c##r##1);                                                 \
    } while (0)
        X2_FMA(0);
        X2_FMA(1);
        X2_FMA(2);
        X2_FMA(3);
        X2_FMA(4);
        X2_FMA(5);
        Ap += X2_NR;
    }
#define X2_STORE(r)                                                                                \
    do {                                                                                           \
        _mm_storeu_ps(W + (r)*ldw, _mm256_cvtpd_ps(c##r##0));                                      \
        _mm_storeu_ps(W + (r)*ldw + 4, _mm256_cvtpd_ps(c##r##1));                                  \
    } while (0)
    X2_STORE(0);
    X2_STORE(1);
    X2_STORE(2);
    X2_STORE(3);
    X2_STORE(4);
    X2_STORE(5);
}

/* AVX-512F: 6 rows × 32 columns = 24 zmm accumulators, 4 for A, 1 for the
 * broadcast B: 29 of 32 registers. Per k, 4 loads and 6 broadcasts feed 24
 * FMAs. */
#define X5_MR 6
#define X5_NR 32

__attribute__((target("avx512f"))) static void
tile_avx512(int R, const double *Ap, const double *Bp, float *W, int64_t ldw) {
#define X5_LOAD(r)                                                                                 \
    __m512d c##r##0 = _mm512_cvtps_pd(_mm256_loadu_ps(W + (r)*ldw));                               \
    __m512d c##r##1 = _mm512_cvtps_pd(_mm256_loadu_ps(W + (r)*ldw + 8));                           \
    __m512d c##r##2 = _mm512_cvtps_pd(_mm256_loadu_ps(W + (r)*ldw + 16));                          \
    __m512d c##r##3 = _mm512_cvtps_pd(_mm256_loadu_ps(W + (r)*ldw + 24))
    X5_LOAD(0);
    X5_LOAD(1);
    X5_LOAD(2);
    X5_LOAD(3);
    X5_LOAD(4);
    X5_LOAD(5);
    const double *b0 = Bp, *b1 = b0 + R, *b2 = b1 + R, *b3 = b2 + R, *b4 = b3 + R, *b5 = b4 + R;
    for (int k = 0; k < R; k++) {
        const __m512d a0 = _mm512_load_pd(Ap), a1 = _mm512_load_pd(Ap + 8),
                      a2 = _mm512_load_pd(Ap + 16), a3 = _mm512_load_pd(Ap + 24);
#define X5_FMA(r)                                                                                  \
    do {                                                                                           \
        const __m512d b = _mm512_set1_pd(b##r[k]);                                                 \
        c##r##0 = _mm512_fmadd_pd(b, a0, c##r##0);                                                 \
        c##r##1 = _mm512_fmadd_pd(b, a1, c##r##1);                                                 \
        c##r##2 = _mm512_fmadd_pd(b, a2, c##r##2);                                                 \
        c##r##3 = _mm512_fmadd_pd(b, a3, c##r##3);                                                 \
    } while (0)
        X5_FMA(0);
        X5_FMA(1);
        X5_FMA(2);
        X5_FMA(3);
        X5_FMA(4);
        X5_FMA(5);
        Ap += X5_NR;
    }
#define X5_STORE(r)                                                                                \
    do {                                                                                           \
        _mm256_storeu_ps(W + (r)*ldw, _mm512_cvtpd_ps(c##r##0));                                   \
        _mm256_storeu_ps(W + (r)*ldw + 8, _mm512_cvtpd_ps(c##r##1));                               \
        _mm256_storeu_ps(W + (r)*ldw + 16, _mm512_cvtpd_ps(c##r##2));                              \
        _mm256_storeu_ps(W + (r)*ldw + 24, _mm512_cvtpd_ps(c##r##3));                              \
    } while (0)
    X5_STORE(0);
    X5_STORE(1);
    X5_STORE(2);
    X5_STORE(3);
    X5_STORE(4);
    X5_STORE(5);
}

#endif /* HAVE_X86_PATHS */

_Static_assert(PF_MR <= MR_MAX && PF_NR <= NR_MAX && PM_MR <= MR_MAX && PM_NR <= NR_MAX,
               "edge_tile's buffer holds every tile");
#ifdef HAVE_X86_PATHS
_Static_assert(X2_MR <= MR_MAX && X2_NR <= NR_MAX && X5_MR <= MR_MAX && X5_NR <= NR_MAX,
               "edge_tile's buffer holds every tile");
#endif

static const path_desc paths[UPDATE_KERNEL_COUNT] = {
    [UPDATE_KERNEL_FMA] = {"fma", PF_MR, PF_NR, tile_fma, PANEL_BYTES},
    [UPDATE_KERNEL_MULADD] = {"muladd", PM_MR, PM_NR, tile_muladd, PANEL_BYTES},
#ifdef HAVE_X86_PATHS
    [UPDATE_KERNEL_AVX2] = {"avx2", X2_MR, X2_NR, tile_avx2, PANEL_BYTES},
    [UPDATE_KERNEL_AVX512] = {"avx512", X5_MR, X5_NR, tile_avx512, PANEL_BYTES_AVX512},
#else
    [UPDATE_KERNEL_AVX2] = {"avx2", 0, 0, NULL, 0},
    [UPDATE_KERNEL_AVX512] = {"avx512", 0, 0, NULL, 0},
#endif
};

/* ---- dispatch -------------------------------------------------------------- */

int update_kernel_available(update_kernel_path p) {
    switch (p) {
        case UPDATE_KERNEL_AUTO:
        case UPDATE_KERNEL_FMA:
        case UPDATE_KERNEL_MULADD:
            return 1;
#ifdef HAVE_X86_PATHS
        /* libgcc's and compiler-rt's checks include the OS's support (XCR0)
         * for the wider registers. */
        case UPDATE_KERNEL_AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        case UPDATE_KERNEL_AVX512:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx512f");
#endif
        default:
            return 0;
    }
}

update_kernel_path update_kernel_auto(void) {
#ifdef HAVE_X86_PATHS
    if (update_kernel_available(UPDATE_KERNEL_AVX512)) return UPDATE_KERNEL_AVX512;
    if (update_kernel_available(UPDATE_KERNEL_AVX2)) return UPDATE_KERNEL_AVX2;
    return UPDATE_KERNEL_MULADD;
#else
    return UPDATE_KERNEL_FMA;
#endif
}

const char *update_kernel_name(update_kernel_path p) {
    if (p == UPDATE_KERNEL_AUTO) return "auto";
    return p > UPDATE_KERNEL_AUTO && p < UPDATE_KERNEL_COUNT ? paths[p].name : NULL;
}

/* ---- the blocked loop ------------------------------------------------------ */

/* Columns per panel for rank R: whole strips whose packed doubles fit the
 * path's panel_bytes (at least one strip), no more than W has. */
static int panel_cols(const path_desc *d, int R, int in) {
    int64_t strips = d->panel_bytes / ((int64_t)R * d->nr * (int64_t)sizeof(double));
    int64_t need = ((int64_t)in + d->nr - 1) / d->nr;
    if (strips < 1) strips = 1;
    if (strips > need) strips = need;
    return (int)(strips * d->nr);
}

struct update_kernel_ws {
    const path_desc *d;
    int max_R, threads;
    double *Ap; /* the packed panel: max(panel_bytes / 8, max_R · nr) doubles */
    double *Bp; /* per thread, one packed B tile: max_R · mr doubles */
};

int update_kernel_ws_create(update_kernel_ws **out, update_kernel_path p, int max_R) {
    *out = NULL;
    if (p == UPDATE_KERNEL_AUTO) p = update_kernel_auto();
    if (p <= UPDATE_KERNEL_AUTO || p >= UPDATE_KERNEL_COUNT || !update_kernel_available(p))
        return err_set("the update kernel's %s path does not run on this CPU",
                       p > UPDATE_KERNEL_AUTO && p < UPDATE_KERNEL_COUNT ? paths[p].name
                                                                         : "unknown");
    if (max_R < 1) return err_set("update kernel: rank %d, a rank is at least 1", max_R);
    update_kernel_ws *ws = calloc(1, sizeof *ws);
    if (!ws) return err_set("out of memory for the update kernel's workspace");
    ws->d = &paths[p];
    ws->max_R = max_R;
    ws->threads = omp_get_max_threads();
    size_t panel = (size_t)max_R * (size_t)ws->d->nr;
    if (panel < (size_t)ws->d->panel_bytes / sizeof(double))
        panel = (size_t)ws->d->panel_bytes / sizeof(double);
    size_t tile = (size_t)max_R * (size_t)ws->d->mr;
    /* 64-byte aligned: the tiles load A with aligned vector loads. */
    ws->Ap = aligned_alloc(64, (panel * sizeof(double) + 63) / 64 * 64);
    ws->Bp = malloc((size_t)ws->threads * tile * sizeof(double));
    if (!ws->Ap || !ws->Bp) {
        update_kernel_ws_free(ws);
        return err_set("out of memory for the update kernel's workspace (rank %d, %d threads)",
                       max_R, omp_get_max_threads());
    }
    *out = ws;
    return 0;
}

void update_kernel_ws_free(update_kernel_ws *ws) {
    if (!ws) return;
    free(ws->Ap);
    free(ws->Bp);
    free(ws);
}

/* Packs strip s of the panel at column j0 (nc columns): Ap[s][k][j] =
 * A[k][j0 + s·nr + j], zero past the panel's end. */
static void pack_strip(const path_desc *d, double *Ap, const float *A, int64_t lda, int R, int j0,
                       int nc, int s) {
    const int nr = d->nr, c0 = j0 + s * nr, n = nc - s * nr < nr ? nc - s * nr : nr;
    double *dst = Ap + (int64_t)s * R * nr;
    for (int k = 0; k < R; k++, dst += nr) {
        const float *src = A + (int64_t)k * lda + c0;
#pragma omp simd
        for (int j = 0; j < n; j++) dst[j] = (double)src[j];
        for (int j = n; j < nr; j++) dst[j] = 0;
    }
}

/* Packs the B tile of rows i0..i0+nrows-1: Bp[r][k] = B[i0 + r][k], zero
 * rows past nrows. (Row-major, so that the conversion is a plain vector
 * loop: a k-major tile, one 8-byte store at a time, cost 5–10 % at
 * R = 256.) */
static void pack_tile(const path_desc *d, double *Bp, const float *B, int64_t ldb, int R, int i0,
                      int nrows) {
    for (int r = 0; r < d->mr; r++) {
        double *dst = Bp + (int64_t)r * R;
        const float *src = B + (int64_t)(i0 + r) * ldb;
        if (r < nrows) {
#pragma omp simd
            for (int k = 0; k < R; k++) dst[k] = (double)src[k];
        } else
            memset(dst, 0, (size_t)R * sizeof *dst);
    }
}

/* A tile short of MR rows or NR columns: the same tile code on a padded
 * copy, of which only W's elements are written back. */
static void edge_tile(const path_desc *d, int R, const double *Ap, const double *Bp, float *W,
                      int64_t ldw, int nrows, int ncols) {
    float t[MR_MAX * NR_MAX];
    const int nr = d->nr;
    memset(t, 0, sizeof t);
    for (int r = 0; r < nrows; r++) memcpy(t + r * nr, W + r * ldw, (size_t)ncols * sizeof *t);
    d->tile(R, Ap, Bp, t, nr);
    for (int r = 0; r < nrows; r++) memcpy(W + r * ldw, t + r * nr, (size_t)ncols * sizeof *t);
}

int update_kernel_ws_apply(update_kernel_ws *ws, float *W, int64_t ldw, const float *B, int64_t ldb,
                           const float *A, int64_t lda, int rows, int R, int in) {
    if (rows < 0 || in < 0 || R < 1 || R > ws->max_R || ldw < in || lda < in || ldb < R)
        return err_set("update kernel: bad sizes (rows %d, in %d, rank %d of at most %d, strides "
                       "%lld, %lld, %lld)",
                       rows, in, R, ws->max_R, (long long)ldw, (long long)ldb, (long long)lda);
    if (rows == 0 || in == 0) return 0;
    const path_desc *d = ws->d;
    const int mr = d->mr, nr = d->nr, nc = panel_cols(d, R, in);
    const int tiles = (rows + mr - 1) / mr;
#pragma omp parallel num_threads(ws->threads)
    {
        double *Bp = ws->Bp + (size_t)omp_get_thread_num() * (size_t)ws->max_R * (size_t)mr;
        for (int j0 = 0; j0 < in; j0 += nc) {
            const int ncur = in - j0 < nc ? in - j0 : nc;
            const int strips = (ncur + nr - 1) / nr;
#pragma omp for schedule(static)
            for (int s = 0; s < strips; s++) pack_strip(d, ws->Ap, A, lda, R, j0, ncur, s);
                /* (implied barrier: the panel is whole before any tile reads it) */
#pragma omp for schedule(static)
            for (int t = 0; t < tiles; t++) {
                const int i0 = t * mr, nrows = rows - i0 < mr ? rows - i0 : mr;
                pack_tile(d, Bp, B, ldb, R, i0, nrows);
                for (int s = 0; s < strips; s++) {
                    const int ncols = ncur - s * nr < nr ? ncur - s * nr : nr;
                    const double *Ap = ws->Ap + (int64_t)s * R * nr;
                    float *w = W + (int64_t)i0 * ldw + j0 + (int64_t)s * nr;
                    if (nrows == mr && ncols == nr)
                        d->tile(R, Ap, Bp, w, ldw);
                    else
                        edge_tile(d, R, Ap, Bp, w, ldw, nrows, ncols);
                }
            }
            /* (implied barrier: every tile is done before the next panel is packed) */
        }
    }
    return 0;
}

int update_kernel_apply(update_kernel_path p, float *W, int64_t ldw, const float *B, int64_t ldb,
                        const float *A, int64_t lda, int rows, int R, int in) {
    update_kernel_ws *ws;
    if (update_kernel_ws_create(&ws, p, R) != 0) return -1;
    int rc = update_kernel_ws_apply(ws, W, ldw, B, ldb, A, lda, rows, R, in);
    update_kernel_ws_free(ws);
    return rc;
}

int update_apply_rows(float *W, int64_t ldw, const float *B, int64_t ldb, const float *A,
                      int64_t lda, int rows, int R, int in) {
    return update_kernel_apply(UPDATE_KERNEL_AUTO, W, ldw, B, ldb, A, lda, rows, R, in);
}
