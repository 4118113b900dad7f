/* gpu_dist.c — data parallelism over GPUs with NCCL (gpu.h, docs/gpu.md).
 *
 * One process per GPU. The communicator's ncclUniqueId travels through a
 * file: rank 0 writes it atomically (temporary file, fsync, rename) to a path
 * that must not exist yet, the others poll until it appears and read it;
 * ncclCommInitRank returns only once every rank has joined, so rank 0 then
 * removes the file. Gradients are summed in fp32 with ncclAllReduce on the
 * model's stream, in place. Built without NCCL, gpu_dist_init says so and
 * nothing else changes (a model that is not distributed never calls NCCL). */
#include "gpu/gpu_internal.h"

#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef FEDLORA_HAVE_NCCL
#include <nccl.h>

static int nccl_check(ncclResult_t r, ncclComm_t comm, const char *what) {
    if (r == ncclSuccess) return 0;
    const char *last = ncclGetLastError(comm);
    return err_set("NCCL %s failed: %s%s%s", what, ncclGetErrorString(r), last && *last ? ": " : "",
                   last ? last : "");
}

int gpu_dist_supported(void) {
    return 1;
}

/* Rank 0's side of the bootstrap. */
static int id_publish(const char *path, ncclUniqueId *id) {
    if (fio_exists(path))
        return err_set("the NCCL id file %s already exists (left from an earlier run?): remove it, "
                       "or give every rank a fresh path",
                       path);
    if (nccl_check(ncclGetUniqueId(id), NULL, "ncclGetUniqueId") != 0) return -1;
    return fio_write_atomic(path, id, sizeof *id, 0600);
}

/* The other ranks' side: wait for the file, read it. */
static int id_fetch(const char *path, ncclUniqueId *id, double timeout_s) {
    double t0 = clock_now_s();
    while (!fio_exists(path)) {
        if (clock_now_s() - t0 > timeout_s)
            return err_set("waited %.0f s for rank 0 to write the NCCL id file %s: is rank 0 "
                           "running, with the same %s?",
                           timeout_s, path, GPU_DIST_ENV_ID_FILE);
        usleep(20000);
    }
    char *data;
    size_t len;
    if (fio_read_all(path, sizeof *id + 1, &data, &len) != 0) return -1;
    int rc = 0;
    if (len != sizeof *id)
        rc = err_set("the NCCL id file %s holds %zu bytes, not an ncclUniqueId (%zu)", path, len,
                     sizeof *id);
    else
        memcpy(id, data, sizeof *id);
    free(data);
    return rc;
}

int gpu_dist_init(gpu_model *g, int rank, int world, const char *id_path, double timeout_s) {
    if (g->nccl) return err_set("this GPU model is already distributed");
    if (world < 1 || rank < 0 || rank >= world)
        return err_set("rank %d of %d ranks: need 0 <= rank < world", rank, world);
    if (!id_path || !*id_path)
        return err_set("distributed training needs an id file path (%s)", GPU_DIST_ENV_ID_FILE);
    OK(gpu_use(g));
    ncclUniqueId id;
    if (rank == 0 ? id_publish(id_path, &id) : id_fetch(id_path, &id, timeout_s)) return -1;
    ncclComm_t comm = NULL;
    int rc = nccl_check(ncclCommInitRank(&comm, world, id, rank), NULL, "ncclCommInitRank");
    if (rc != 0 && comm) { /* a half-made communicator holds resources */
        ncclCommAbort(comm);
        comm = NULL;
    }
    if (rank == 0 && unlink(id_path) != 0 && errno != ENOENT && rc == 0)
        rc = err_errno("cannot remove the NCCL id file %s", id_path);
    if (rc != 0) {
        if (comm && rank == 0) ncclCommAbort(comm); /* joined, but the id file stays */
        return err_context("joining %d GPU ranks as rank %d", world, rank);
    }
    g->nccl = comm;
    g->rank = rank;
    g->world = world;
    return 0;
}

int gpu_dist_sum_f32(gpu_model *g, float *d, int64_t n) {
    if (!g->nccl) return 0;
    return nccl_check(
        ncclAllReduce(d, d, (size_t)n, ncclFloat32, ncclSum, (ncclComm_t)g->nccl, g->stream),
        (ncclComm_t)g->nccl, "all-reduce of the LoRA gradients");
}

int gpu_dist_sum_host(gpu_model *g, double *v, int n) {
    if (!g->nccl) return 0;
    if (n > GPU_SUMSQ_BLOCKS)
        return err_set("gpu_dist_sum_host: %d values, at most %d", n, GPU_SUMSQ_BLOCKS);
    CU(cudaMemcpyAsync(g->d_partials, v, (size_t)n * sizeof *v, cudaMemcpyHostToDevice, g->stream));
    if (nccl_check(ncclAllReduce(g->d_partials, g->d_partials, (size_t)n, ncclFloat64, ncclSum,
                                 (ncclComm_t)g->nccl, g->stream),
                   (ncclComm_t)g->nccl, "all-reduce of the step's counts") != 0)
        return -1;
    CU(cudaMemcpyAsync(v, g->d_partials, (size_t)n * sizeof *v, cudaMemcpyDeviceToHost, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    return 0;
}

void gpu_dist_free(gpu_model *g) {
    if (g->nccl) ncclCommDestroy((ncclComm_t)g->nccl);
    g->nccl = NULL;
}

#else

int gpu_dist_supported(void) {
    return 0;
}

int gpu_dist_init(gpu_model *g, int rank, int world, const char *id_path, double timeout_s) {
    (void)g, (void)rank, (void)world, (void)id_path, (void)timeout_s;
    return err_set("this build has no NCCL, so it cannot train on several GPUs: rebuild with "
                   "NCCL installed (CMake finds libnccl and nccl.h; NCCL_ROOT points elsewhere)");
}

int gpu_dist_sum_f32(gpu_model *g, float *d, int64_t n) {
    (void)g, (void)d, (void)n;
    return 0;
}

int gpu_dist_sum_host(gpu_model *g, double *v, int n) {
    (void)g, (void)v, (void)n;
    return 0;
}

void gpu_dist_free(gpu_model *g) {
    (void)g;
}

#endif

/* An environment variable as a non-negative int. */
static int env_int(const char *name, int *out) {
    const char *s = getenv(name);
    if (!s || !*s) return err_set("%s is not set", name);
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > 1 << 20)
        return err_set("%s=\"%s\" is not a rank count or index", name, s);
    *out = (int)v;
    return 0;
}

int gpu_dist_init_env(gpu_model *g, double timeout_s, int *enabled) {
    *enabled = 0;
    const char *w = getenv(GPU_DIST_ENV_WORLD);
    if (!w || !*w) return 0;
    int rank, world;
    OK(env_int(GPU_DIST_ENV_WORLD, &world));
    OK(env_int(GPU_DIST_ENV_RANK, &rank));
    OK(gpu_dist_init(g, rank, world, getenv(GPU_DIST_ENV_ID_FILE), timeout_s));
    *enabled = 1;
    return 0;
}

int gpu_dist_rank(const gpu_model *g) {
    return g->rank;
}

int gpu_dist_world(const gpu_model *g) {
    return g->world;
}
