/* gpu_load — finds and loads the CUDA backend module, libfedlora_cuda.so,
 * on first use (gpu/gpu_api.h; docs/gpu.md).
 *
 * No program links a CUDA library: only a process that asks for the GPU
 * (--device cuda, `fedlora doctor`) loads the module and, through it,
 * cudart, cuBLAS, cuBLASLt and NCCL. Where it looks, first match wins:
 *   1. $FEDLORA_CUDA_MODULE, the module's path, when set (nothing else then);
 *   2. next to the running executable (/proc/self/exe), where the build and
 *      an installation put it beside `fedlora`;
 *   3. the dynamic loader's search (LD_LIBRARY_PATH, ld.so.cache).
 * The module must come from the same sources as the program (its
 * GPU_API_VERSION and gpu_api_layout() equal ours). This file needs neither
 * CUDA headers nor CUDA libraries. */
#ifndef FL_GPU_GPU_LOAD_H
#define FL_GPU_GPU_LOAD_H

#include "gpu/gpu_api.h"

#define GPU_LOAD_ENV "FEDLORA_CUDA_MODULE"

/* The backend's table, loading the module on the first successful call (it
 * stays loaded). NULL when it cannot be loaded, with an error saying which
 * file was looked for, the dynamic loader's reason and what to do (build
 * with -DFEDLORA_CUDA=on, install the CUDA libraries, or use --device cpu);
 * a later call tries again. Thread-safe. */
const gpu_api *gpu_load_api(void);

/* The path the module was loaded from, or NULL before gpu_load_api succeeds. */
const char *gpu_load_path(void);

#endif
