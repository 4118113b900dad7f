/* real — the floating type of the CPU backend.
 *
 * The product computes in fp32. The same sources are compiled a second time
 * with -DFL_REAL_F64 into a double-precision library that exists only so the
 * finite-difference gradient checks can reach 1e-6 relative error (in fp32,
 * central differences are limited to ~1e-3 by rounding). */
#ifndef FL_MODEL_REAL_H
#define FL_MODEL_REAL_H

#include <cblas.h>

#ifdef FL_REAL_F64
typedef double real;
#define real_gemm cblas_dgemm
#define real_gemv cblas_dgemv
#define REAL_NAME "f64"
#else
typedef float real;
#define real_gemm cblas_sgemm
#define real_gemv cblas_sgemv
#define REAL_NAME "f32"
#endif

#endif
