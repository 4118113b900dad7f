/* gpu_gemm — row-major GEMMs through cuBLASLt, in the calling convention of
 * cpu_gemm (model/cpu/cpu.h), so the GPU backend's code reads as the CPU's.
 *
 * A and B share one storage type; C (= D, in place) has its own:
 *   fp32 × fp32 → fp32   CUBLAS_COMPUTE_32F: true fp32, no TF32 (the parity mode)
 *   bf16 × bf16 → bf16   fp32 accumulation
 *   bf16 × bf16 → fp32   fp32 accumulation (into the residual stream, gradients)
 * Scales are fp32. A plan (descriptors and the algorithm cuBLASLt's heuristic
 * picked) is made once per distinct call shape and pointer alignment, and
 * reused: the shapes of one model are few. Shapes cuBLASLt has no algorithm
 * for go to classic cuBLAS (cublasGemmEx) with the same types. */
#ifndef FL_GPU_GPU_GEMM_H
#define FL_GPU_GPU_GEMM_H

#include "gpu/gpu_kernels.h"

typedef struct gpu_blas gpu_blas;

/* A cuBLASLt handle and workspace working on stream. */
int gpu_blas_create(gpu_blas **out, cudaStream_t stream);
void gpu_blas_free(gpu_blas *b);

/* C (M, N) = alpha · op(A) · op(B) + beta · C, row-major; op(A) is (M, K),
 * op(B) is (K, N); trans* transposes. With beta == 0, C is not read. */
int gpu_gemm(gpu_blas *b, int transA, int transB, int M, int N, int K, float alpha, const void *A,
             int lda, const void *B, int ldb, gpu_dtype ab, float beta, void *C, int ldc,
             gpu_dtype ct);

#endif
