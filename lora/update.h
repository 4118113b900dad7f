/* update — a round's merged model update as low-rank factors, the same bytes
 * on every machine.
 *
 * The exact merge of K adapters (docs/architecture.md, "The exact merge") is,
 * for each adapted base weight W (out, in) (in-memory layout, model/model.h),
 *
 *   W' = W + B · A,   B (out, R) = [c_1 B_1 | … | c_K B_K],   A (R, in) = [A_1; …; A_K],
 *
 * with c_k = p_k · s_k (the member's weight times its LoRA scale) and
 * R = Σ r_k. Those two factors per weight are the "update" of a version:
 * usually a few percent of the model's bytes, so a node that holds version v
 * can reach v+1 by downloading them instead of the full weights
 * (docs/protocol.md, "Low-rank model sync"), then checks the SHA-256 of what
 * it made against v+1's hash.
 *
 * That check only passes when the node computes exactly the aggregator's
 * bits, on another CPU, with another thread count. A BLAS GEMM cannot give
 * that: OpenBLAS picks its kernel at run time (AVX2, AVX-512, …), and the
 * kernels block and sum in different orders, and may fuse multiply-adds. So
 * update_apply uses its own kernel, the one definition of W', element by
 * element, for i < out, j < in:
 *
 *   acc = (double)W[i][j]
 *   acc = fma((double)B[i][k], (double)A[k][j], acc)     for k = 0, 1, …, R-1 in turn
 *   W'[i][j] = (float)acc
 *
 * fma being IEEE 754's fused multiply-add in binary64 (the exact b·a + acc
 * rounded once to nearest, ties to even), and the last step the one
 * rounding of a double to float, also to nearest-even. No other operation
 * touches an element: no partial sums, no reordering of k, whatever the
 * tiles, vectors or threads. Since B[i][k] and A[k][j] are floats, their
 * product is exact in double (at most 48 significant bits, exponent within
 * [-298, 256]), so each step is also acc + B[i][k]·A[k][j] with the sum
 * rounded once: the same number as the earlier definition of this kernel,
 * a separate double multiply then add, and the same bytes as versions
 * published before it used FMA. Accuracy: before the final rounding acc is
 * within γ_R · (|W[i][j]| + Σ_k |B[i][k]·A[k][j]|) of the exact value,
 * γ_R = R·2⁻⁵³/(1 - R·2⁻⁵³) (Higham, "Accuracy and Stability of Numerical
 * Algorithms", §3.1; the products have no error), so W' is the correctly
 * rounded float unless the exact value lies within that distance of a
 * rounding boundary (tests/update/test_update_kernel.c checks the bound
 * against a double-double sum). The kernel (lora/update_kernel.c) picks at
 * run time a path with the same definition for the CPU: AVX-512F, AVX2 +
 * FMA3, a separate SSE2 multiply and add on x86-64 without FMA, C's fma()
 * elsewhere (AArch64's is one instruction). The aggregator publishes
 * exactly this W' (for the policies expressible as such factors), so the
 * node's bytes hash to the published version.
 *
 * Other merges whose change to a weight is a product are updates too: the
 * policies library's FedIT average (B = s·B̄, A = Ā, rank r) and truncated
 * SVD (B = U_k Σ_k^½, A = Σ_k^½ V_kᵀ, rank k) (policies/aggregate.h) give
 * their factors to update_add. The file and the kernel do not care where B
 * and A came from.
 *
 * File format (docs/formats.md, "Low-rank updates"): a safetensors file with,
 * per adapted weight "<name>" of the model (e.g.
 * "model.layers.0.self_attn.q_proj.weight"), the F32 tensors
 * "<name>.update_B" (out, R) and "<name>.update_A" (R, in), in model order,
 * and __metadata__ {"format": "fedlora-update", "from": <64 hex>, "to": <64
 * hex>, "round": "<decimal>"}: the version it applies to, the version it
 * makes, the round that made it. */
#ifndef FL_LORA_UPDATE_H
#define FL_LORA_UPDATE_H

#include "lora/lora.h"
#include "model/checkpoint.h"

#include <stdint.h>

#define UPDATE_HASH_LEN 32
#define UPDATE_FORMAT "fedlora-update"

/* One adapted weight's factors. */
typedef struct {
    char name[MODEL_NAME_MAX]; /* the base weight, as model_find_param knows it */
    int out, in, rank;         /* W (out, in), R = rank >= 1 */
    float *B;                  /* (out, rank), the coefficients already in */
    float *A;                  /* (rank, in) */
} update_module;

typedef struct {
    uint8_t from[UPDATE_HASH_LEN]; /* the version it applies to */
    uint8_t to[UPDATE_HASH_LEN];   /* the version it makes (set once known) */
    uint64_t round;                /* the round that made it */
    int n_modules;
    update_module *modules; /* in model parameter order */
} update;

/* The factored update W' = W + Σ_k coef[k] · s_k · B_k · A_k over K adapters
 * made for m's shapes: per weight, B's column block k is
 * (float)(coef[k] · s_k) · B_k (a float product, as delta_product forms
 * it) and A's row block k is A_k, k in the order given. A weight adapted by
 * only some of the sets takes only those. from, to and round are zero. */
int update_build(update **out, const model *m, lora_set *const *sets, const double *coef, int K);
void update_free(update *u);

/* An update without modules (from, to and round zero), for update_add. */
int update_create(update **out);

/* Adds weight `name` of m to u with explicit factors: W' = W + B·A, B (out,
 * rank) with any coefficients already in, A (rank, in), (out, in) the
 * weight's shape; both are copied. u's modules stay in m's parameter order
 * (the file's order) whatever the order of the calls. Refused, with u
 * unchanged: no 2-D weight of that name in m, a weight already in u, a rank
 * below 1 or above what the file allows. */
int update_add(update *u, const model *m, const char *name, int rank, const float *B,
               const float *A);

/* W' = W + B·A for every module of u, with the kernel described above,
 * rows shared among OpenMP threads (omp_get_max_threads()). Every module is
 * checked against m first (the weight exists, is 2-D, (out, in)) and the
 * kernel's scratch is allocated: on a refusal m is unchanged. */
int update_apply(model *m, const update *u);

/* The same kernel on one weight's rows, for callers that hold them
 * themselves (a tensor at a time, a block of rows at a time):
 * W (rows, in) += B (rows, R) · A (R, in), each a float matrix whose rows
 * are ldw, ldb and lda elements apart (ldw, lda >= in, ldb >= R; no
 * alignment needed), element by element as defined above. Refused (W
 * unchanged): sizes that break those rules, R < 1, out of memory for the
 * scratch (a panel of A as doubles, up to 0.75 MiB, and
 * 6·R doubles per thread). */
int update_apply_rows(float *W, int64_t ldw, const float *B, int64_t ldb, const float *A,
                      int64_t lda, int rows, int R, int in);

/* The version u makes from base, written into dir as a model directory
 * (model/checkpoint.h, checkpoint_write) in the base's dtype (config.json's
 * torch_dtype), a tensor at a time: every weight u changes as update_apply
 * makes it, every other tensor as it is; base may be mapped (read-only).
 * With a bf16 base the changed weights are rounded to bf16 stochastically,
 * keyed by update_version_key(u->from) (docs/formats.md, "Versions of a bf16 base"),
 * so updates below half an ulp are not lost; the same base and update give
 * the same bytes on every machine. release: base is not used afterwards
 * (its mapped pages are given back as they are written). */
int update_write_version(const model *base, const update *u, const char *dir, int release);
/* The stochastic-rounding key of a version made from `from`: its first 8
 * bytes, little-endian. */
uint64_t update_version_key(const uint8_t from[UPDATE_HASH_LEN]);

/* Bytes of tensor data (every B and A, F32). */
uint64_t update_data_bytes(const update *u);

/* Writes u to path as described above, durably (temporary file, fsync,
 * rename, fsync of the directory). The same update gives the same bytes. */
int update_write(const update *u, const char *path);

/* Reads an update file and checks it against m, the model it will be
 * applied to: safetensors rules (model/safetensors.h), the metadata (format,
 * from and to as 64 lowercase hex digits, round as a decimal), every tensor
 * named "<weight>.update_B" or ".update_A" of a 2-D weight of m, both of a
 * pair there, F32, shapes (out, R) and (R, in) with one R >= 1 for the pair,
 * every value finite. Refusals name the file, the tensor and the rule. */
int update_read(update **out, const char *path, const model *m);
/* The same on a file in memory; `where` names it in messages. */
int update_parse(update **out, const void *buf, size_t len, const char *where, const model *m);

#endif
