/* gpu_api — the CUDA backend as a module loaded at run time (docs/gpu.md).
 *
 * The backend (gpu.h) is built into a shared module, libfedlora_cuda.so,
 * next to the `fedlora` binary; fedlora itself links no CUDA library, so a
 * process that never trains on a GPU (the aggregator, keygen, --help) does
 * not pay for loading cudart, cuBLAS, cuBLASLt and NCCL (about 200 MB of
 * resident memory and up to seconds at start). gpu/gpu_load.h finds and
 * loads the module on first use and hands out this table.
 *
 * The module exports one symbol, GPU_API_ENTRY, of type gpu_api_entry. The
 * table's members are gpu.h's functions with gpu.h's contracts, with one
 * difference: the module links its own copy of util/err.c, so it sends each
 * failure's message to the set_error the loader passes in, and errors read
 * with err_msg() in the program as they would with the backend linked in.
 *
 * Module and program share structures (model, lora_set, adamw, ...), so they
 * must come from the same sources: the table carries GPU_API_VERSION (the
 * table's own layout) and gpu_api_layout() (the sizes of everything they
 * share), and the loader refuses a module whose values differ from its own.
 * This header needs no CUDA header. */
#ifndef FL_GPU_GPU_API_H
#define FL_GPU_GPU_API_H

#include "gpu/gpu.h"

#include <stddef.h>
#include <stdint.h>

/* Raise whenever gpu_api's members change. */
#define GPU_API_VERSION 2
#define GPU_API_ENTRY "fedlora_gpu_api"
#define GPU_MODULE_FILE "libfedlora_cuda.so"

typedef struct {
    int version;     /* GPU_API_VERSION of the module: first, so any version can be read */
    uint64_t layout; /* gpu_api_layout() of the module */

    /* Why gpu_available() is 0, in the runtime's words, into why[len]
     * ("no NVIDIA driver is loaded", the driver's CUDA version against the
     * runtime's, the runtime's error, or "0 devices"). */
    void (*why_unavailable)(char *why, size_t len);

    int (*available)(void);
    int (*device_info)(int dev, char *name, size_t name_len, double *mem_gib, int *cc_major,
                       int *cc_minor);
    void (*options_init)(gpu_options *o);
    int (*model_upload)(gpu_model **out, const model *m, const lora_set *s, const gpu_options *o);
    void (*model_free)(gpu_model *g);
    size_t (*model_device_bytes)(const gpu_model *g);

    int (*forward)(gpu_model *g, const int32_t *tokens, const int32_t *targets, double *loss_sum,
                   int64_t *n_targets, float *logits_out);
    int (*forward_backward)(gpu_model *g, const int32_t *tokens, const int32_t *targets,
                            double scale, double *loss_sum, int64_t *n_targets);
    int (*decode)(gpu_model *g, const int32_t *tokens, int n, int pos, float *logits_out);

    void (*lora_zero_grads)(gpu_model *g);
    void (*lora_set_training)(gpu_model *g, int on);
    uint64_t (*lora_dropout_counter)(const gpu_model *g);
    void (*lora_set_dropout_counter)(gpu_model *g, uint64_t counter);
    int (*lora_download)(gpu_model *g, lora_set *s);
    int (*lora_upload)(gpu_model *g, const lora_set *s);
    int (*lora_download_grads)(gpu_model *g, lora_set *s);

    int (*adamw_init)(gpu_model *g, const adamw_config *cfg);
    int (*adamw_step)(gpu_model *g, double *lr, double *grad_norm);
    int (*adamw_download)(gpu_model *g, adamw *o);
    int (*adamw_upload)(gpu_model *g, const adamw *o);

    int (*train_step)(gpu_model *g, const int32_t *tokens, const int32_t *targets, int K,
                      gpu_step_result *r);

    int (*dist_supported)(void);
    int (*dist_init)(gpu_model *g, int rank, int world, const char *id_path, double timeout_s);
    int (*dist_init_env)(gpu_model *g, double timeout_s, int *enabled);
    int (*dist_rank)(const gpu_model *g);
    int (*dist_world)(const gpu_model *g);
} gpu_api;

/* The module's entry point: its table (never NULL). abi_version is the
 * caller's GPU_API_VERSION; only when it equals the module's does the module
 * keep set_error, which then receives the message of every failing call. */
typedef const gpu_api *(*gpu_api_entry)(int abi_version, void (*set_error)(const char *msg));

/* FNV-1a over the sizes of the structures program and module share; both
 * sides compute it from their own headers. */
static inline uint64_t gpu_api_layout(void) {
    const size_t sizes[] = {sizeof(gpu_api),      sizeof(gpu_options),  sizeof(gpu_step_result),
                            sizeof(model),        sizeof(model_config), sizeof(model_param),
                            sizeof(model_linear), sizeof(model_layer),  sizeof(lora_set),
                            sizeof(lora_module),  sizeof(lora_config),  sizeof(adamw),
                            sizeof(adamw_config), sizeof(real)};
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        h ^= (uint64_t)sizes[i];
        h *= 1099511628211ull;
    }
    return h;
}

#endif
