/* gpu_module.c — the entry point of libfedlora_cuda.so, the CUDA backend as
 * a module loaded at run time (gpu_api.h): gpu.h's functions in a table.
 *
 * The module carries its own copy of util/err.c, so a failing call's message
 * is in the module's err buffer; each call that can fail is wrapped to hand
 * that message to the program's err.h through the set_error it gave. */
#include "gpu/gpu_api.h"

#include "util/err.h"

#include <cuda_runtime_api.h>
#include <stdio.h>

static void (*host_error)(const char *msg);

/* rc, after passing a failure's message to the program. */
static int pass(int rc) {
    if (rc != 0 && host_error) host_error(err_msg());
    return rc;
}

/* The runtime's "insufficient driver" also stands for no driver at all, so
 * the driver's version tells those apart. */
static void api_why_unavailable(char *why, size_t len) {
    int n = 0, drv = 0, rt = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    cudaGetLastError(); /* clear the sticky status */
    if (cudaDriverGetVersion(&drv) != cudaSuccess) drv = 0;
    if (cudaRuntimeGetVersion(&rt) != cudaSuccess) rt = 0;
    cudaGetLastError();
    if (drv == 0)
        snprintf(why, len, "no NVIDIA driver is loaded");
    else if (e == cudaErrorInsufficientDriver)
        snprintf(why, len, "the NVIDIA driver supports CUDA %d.%d, this build needs %d.%d",
                 drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    else
        snprintf(why, len, "CUDA runtime: %s",
                 e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
}

static int api_device_info(int dev, char *name, size_t name_len, double *mem_gib, int *cc_major,
                           int *cc_minor) {
    return pass(gpu_device_info(dev, name, name_len, mem_gib, cc_major, cc_minor));
}

static int api_model_upload(gpu_model **out, const model *m, const lora_set *s,
                            const gpu_options *o) {
    return pass(gpu_model_upload(out, m, s, o));
}

static int api_forward(gpu_model *g, const int32_t *tokens, const int32_t *targets,
                       double *loss_sum, int64_t *n_targets, float *logits_out) {
    return pass(gpu_forward(g, tokens, targets, loss_sum, n_targets, logits_out));
}

static int api_forward_backward(gpu_model *g, const int32_t *tokens, const int32_t *targets,
                                double scale, double *loss_sum, int64_t *n_targets) {
    return pass(gpu_forward_backward(g, tokens, targets, scale, loss_sum, n_targets));
}

static int api_decode(gpu_model *g, const int32_t *tokens, int n, int pos, float *logits_out) {
    return pass(gpu_decode(g, tokens, n, pos, logits_out));
}

static int api_lora_download(gpu_model *g, lora_set *s) {
    return pass(gpu_lora_download(g, s));
}

static int api_lora_upload(gpu_model *g, const lora_set *s) {
    return pass(gpu_lora_upload(g, s));
}

static int api_lora_download_grads(gpu_model *g, lora_set *s) {
    return pass(gpu_lora_download_grads(g, s));
}

static int api_adamw_init(gpu_model *g, const adamw_config *cfg) {
    return pass(gpu_adamw_init(g, cfg));
}

static int api_adamw_step(gpu_model *g, double *lr, double *grad_norm) {
    return pass(gpu_adamw_step(g, lr, grad_norm));
}

static int api_adamw_download(gpu_model *g, adamw *o) {
    return pass(gpu_adamw_download(g, o));
}

static int api_adamw_upload(gpu_model *g, const adamw *o) {
    return pass(gpu_adamw_upload(g, o));
}

static int api_train_step(gpu_model *g, const int32_t *tokens, const int32_t *targets, int K,
                          gpu_step_result *r) {
    return pass(gpu_train_step(g, tokens, targets, K, r));
}

static int api_dist_init(gpu_model *g, int rank, int world, const char *id_path, double timeout_s) {
    return pass(gpu_dist_init(g, rank, world, id_path, timeout_s));
}

static int api_dist_init_env(gpu_model *g, double timeout_s, int *enabled) {
    return pass(gpu_dist_init_env(g, timeout_s, enabled));
}

static gpu_api table = {
    .version = GPU_API_VERSION,
    .why_unavailable = api_why_unavailable,
    .available = gpu_available,
    .device_info = api_device_info,
    .options_init = gpu_options_init,
    .model_upload = api_model_upload,
    .model_free = gpu_model_free,
    .model_device_bytes = gpu_model_device_bytes,
    .forward = api_forward,
    .forward_backward = api_forward_backward,
    .decode = api_decode,
    .lora_zero_grads = gpu_lora_zero_grads,
    .lora_set_training = gpu_lora_set_training,
    .lora_dropout_counter = gpu_lora_dropout_counter,
    .lora_set_dropout_counter = gpu_lora_set_dropout_counter,
    .lora_download = api_lora_download,
    .lora_upload = api_lora_upload,
    .lora_download_grads = api_lora_download_grads,
    .adamw_init = api_adamw_init,
    .adamw_step = api_adamw_step,
    .adamw_download = api_adamw_download,
    .adamw_upload = api_adamw_upload,
    .train_step = api_train_step,
    .dist_supported = gpu_dist_supported,
    .dist_init = api_dist_init,
    .dist_init_env = api_dist_init_env,
    .dist_rank = gpu_dist_rank,
    .dist_world = gpu_dist_world,
};

/* The one exported symbol (gpu_module.map hides every other). */
__attribute__((visibility("default"))) const gpu_api *
fedlora_gpu_api(int abi_version, void (*set_error)(const char *msg)) {
    if (abi_version == GPU_API_VERSION) host_error = set_error;
    table.layout = gpu_api_layout();
    return &table;
}
