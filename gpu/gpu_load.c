/* gpu_load.c — dlopen()s the CUDA backend module on first use (gpu_load.h).
 *
 * FEDLORA_HAVE_CUDA (defined for this file alone) says that this build made
 * the module; it only changes the advice a failure gives. Whether the GPU
 * path runs is decided here, at run time, by whether the module loads. */
#include "gpu/gpu_load.h"

#include "util/err.h"
#include "util/fio.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PATH_LEN 4096

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const gpu_api *loaded; /* once set, never changes */
static char loaded_path[PATH_LEN];

#ifdef FEDLORA_HAVE_CUDA
#define ADVICE_MISSING                                                                             \
    "it is built with fedlora (-DFEDLORA_CUDA=on): keep it next to the fedlora binary or name it " \
    "in " GPU_LOAD_ENV ", or use --device cpu"
#else
#define ADVICE_MISSING                                                                             \
    "this build has no CUDA backend: build with -DFEDLORA_CUDA=on where nvcc is found "            \
    "(docs/gpu.md), or use --device cpu"
#endif
#define ADVICE_BROKEN                                                                              \
    "it must be the " GPU_MODULE_FILE " built with this fedlora, and the CUDA libraries it needs " \
    "(cudart, cuBLAS, cuBLASLt, NCCL when built with it) on the library path (ldconfig or "        \
    "LD_LIBRARY_PATH); or use --device cpu"
#define ADVICE_ENV "correct " GPU_LOAD_ENV " or unset it, or use --device cpu"

/* The module's failures, into the program's err.h (gpu_api.h). */
static void set_error(const char *msg) {
    err_set("%s", msg);
}

/* Opens the module at `file` (a path, or a bare name for the dynamic
 * loader's search) and checks that it is this build's. `what` names it in
 * errors, `where` says where a bare name was looked for. */
static int open_module(const char *file, const char *what, const char *where) {
    dlerror();
    void *h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        /* The dynamic loader names the file it could not find: the module
         * itself, or a library the module needs. */
        if (why && strncmp(why, GPU_MODULE_FILE ":", strlen(GPU_MODULE_FILE ":")) == 0)
            return err_set("CUDA backend module %s not found%s (%s) — " ADVICE_MISSING, what, where,
                           why);
        return err_set("CUDA backend module %s cannot be loaded (%s) — " ADVICE_BROKEN, what,
                       why ? why : "?");
    }
    gpu_api_entry entry = (gpu_api_entry)dlsym(h, GPU_API_ENTRY);
    const gpu_api *api = entry ? entry(GPU_API_VERSION, set_error) : NULL;
    if (!api) {
        dlclose(h);
        return err_set("%s is not a fedlora CUDA backend module (it has no %s) — use the %s built "
                       "with this fedlora, or use --device cpu",
                       what, GPU_API_ENTRY, GPU_MODULE_FILE);
    }
    /* The layout is only read from a table of our version's shape. */
    if (api->version != GPU_API_VERSION || api->layout != gpu_api_layout()) {
        err_set("CUDA backend module %s is from another build of fedlora (interface version %d, "
                "this fedlora's %d%s) — use the %s built with this fedlora, or use --device cpu",
                what, api->version, GPU_API_VERSION,
                api->version == GPU_API_VERSION ? ", but other structure sizes" : "",
                GPU_MODULE_FILE);
        dlclose(h);
        return -1;
    }
    Dl_info info;
    const char *at = dladdr((void *)entry, &info) && info.dli_fname ? info.dli_fname : file;
    snprintf(loaded_path, sizeof loaded_path, "%s", at);
    loaded = api;
    return 0;
}

/* The running executable's path into exe, and its directory into dir. */
static int exe_location(char *exe, char *dir) {
    ssize_t n = readlink("/proc/self/exe", exe, PATH_LEN - 1);
    if (n <= 0) return err_errno("cannot find the CUDA backend module: reading /proc/self/exe");
    exe[n] = '\0';
    memcpy(dir, exe, (size_t)n + 1);
    char *slash = strrchr(dir, '/');
    if (!slash) return err_set("cannot find the CUDA backend module: /proc/self/exe is %s", exe);
    slash[slash == dir] = '\0'; /* "/fedlora" lies in "/" */
    return 0;
}

static int load(void) {
    const char *env = getenv(GPU_LOAD_ENV);
    if (env && *env) {
        char what[PATH_LEN];
        snprintf(what, sizeof what, "%.3000s (from %s)", env, GPU_LOAD_ENV);
        if (!fio_exists(env))
            return err_set("CUDA backend module %s not found — " ADVICE_ENV, what);
        return open_module(env, what, "");
    }
    char exe[PATH_LEN], dir[PATH_LEN], path[PATH_LEN];
    if (exe_location(exe, dir) != 0 || fio_join(path, sizeof path, dir, GPU_MODULE_FILE) != 0)
        return -1;
    if (fio_exists(path)) return open_module(path, path, "");
    char where[PATH_LEN + 64];
    snprintf(where, sizeof where, " next to %s nor on the library path", exe);
    return open_module(GPU_MODULE_FILE, GPU_MODULE_FILE, where);
}

const gpu_api *gpu_load_api(void) {
    pthread_mutex_lock(&lock);
    const gpu_api *api = loaded;
    if (!api && load() == 0) api = loaded;
    pthread_mutex_unlock(&lock);
    return api;
}

const char *gpu_load_path(void) {
    pthread_mutex_lock(&lock);
    const char *path = loaded ? loaded_path : NULL;
    pthread_mutex_unlock(&lock);
    return path;
}
