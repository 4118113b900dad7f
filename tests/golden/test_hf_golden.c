/* test_hf_golden — the transformer core against Hugging Face transformers.
 *
 * tests/fixtures/make_hf_golden.py saved tiny random Llama, Mistral, Qwen2,
 * Qwen3, OLMo 2, Apertus, Gemma 2, Gemma 3, Phi-3, Mixtral, BLOOM and GPT-2 models with
 * save_pretrained and recorded what transformers computes for a fixed batch:
 * logits, the mean causal-LM loss and the gradient of every parameter, and
 * for Gemma and Phi-3 the logits of generating with its KV cache
 * (tests/fixtures/hf/<case>/expected.safetensors, layout in the script's docstring). Here each
 * checkpoint is loaded with checkpoint_load, run forward and backward, and every number is
 * compared.
 *
 * Built twice. Against fl_model_f32 (the product) the bounds are those of
 * fp32 arithmetic: logits max abs error < 1e-4, loss < 1e-5, gradients
 * max|g - ref| / max|ref| < 1e-4 per tensor. Against fl_model_f64 the cases
 * with a float64 reference (f64.* entries) must agree to 1e-9: there rounding
 * is ~1e-15, so any larger gap is a formula that differs from transformers',
 * which fp32 noise could hide. Cases without a float64 reference (bf16
 * checkpoints, qwen2) keep the fp32 bounds in both builds. The bloom case
 * also holds transformers' ALiBi slopes for many head counts, which
 * cpu_alibi_slopes must give (alibi.c says where torch's pow may differ by
 * an ulp). */
#include "model/checkpoint.h"
#include "model/cpu/cpu.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "util/err.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const CASES[] = {
    "llama_gqa",  "llama_bias", "llama3_rope", "mistral", "qwen2",      "gpt2",   "gpt2_bf16",
    "llama_bf16", "qwen3",      "olmo2",       "apertus", "gemma2",     "gemma3", "phi3",
    "phi3_short", "mixtral",    "mixtral_aux", "bloom",   "bloom_bf16",
};

typedef struct {
    double logits, loss, grad;
} bounds;

static const bounds BOUNDS_F32 = {1e-4, 1e-5, 1e-4};
static const bounds BOUNDS_F64 = {1e-9, 1e-9, 1e-9};

/* The named tensor converted to double, with its element count checked;
 * NULL (after a failed CHECK) when absent or of another size. */
static double *expected_read(const safetensors_file *f, const char *name, int64_t numel) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t != NULL, "expected.safetensors has no '%s'", name);
    if (!t) return NULL;
    CHECK_MSG(t->numel == numel, "'%s' has %lld elements, wanted %lld", name, (long long)t->numel,
              (long long)numel);
    if (t->numel != numel) return NULL;
    double *out = malloc((size_t)numel * sizeof *out);
    if (!out) {
        CHECK_MSG(0, "out of memory reading '%s'", name);
        return NULL;
    }
    if (safetensors_to_double(t, out) != 0) {
        CHECK_MSG(0, "%s", err_msg());
        free(out);
        return NULL;
    }
    return out;
}

/* (B, T) I64 ids or labels as int32; *B and *T from the shape. */
static int32_t *expected_ids(const safetensors_file *f, const char *name, int *B, int *T) {
    const safetensors_tensor *t = safetensors_find(f, name);
    CHECK_MSG(t && t->dtype == SAFETENSORS_I64 && t->ndim == 2,
              "expected.safetensors needs '%s' as I64 (B, T)", name);
    if (!t || t->dtype != SAFETENSORS_I64 || t->ndim != 2) return NULL;
    *B = (int)t->shape[0];
    *T = (int)t->shape[1];
    int32_t *out = malloc((size_t)t->numel * sizeof *out);
    if (!out) return NULL;
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        memcpy(&v, t->data + 8 * i, 8); /* little-endian host, as the format */
        out[i] = (int32_t)v;
    }
    return out;
}

/* max |ours - ref| over n elements. */
static double max_abs_err(const real *ours, const double *ref, int64_t n) {
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)ours[i] - ref[i]));
    return e;
}

/* max|g - ref| / max|ref| for one parameter; *ref_max = max|ref|. ref is in
 * the on-disk layout, which for a GPT-2 Conv1D weight is the transpose,
 * (in, out), of ours. */
static double grad_rel_err(const model_param *p, const double *ref, double *ref_max) {
    double err = 0, scale = 0;
    int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double want = p->conv1d ? ref[c * rows + r] : ref[r * cols + c];
            err = fmax(err, fabs((double)p->grad[r * cols + c] - want));
            scale = fmax(scale, fabs(want));
        }
    *ref_max = scale;
    return scale > 0 ? err / scale : err;
}

static int count_prefix(const safetensors_file *f, const char *prefix) {
    int n = 0;
    for (int i = 0; i < safetensors_count(f); i++)
        if (strncmp(safetensors_tensor_at(f, i)->name, prefix, strlen(prefix)) == 0) n++;
    return n;
}

/* Generation against transformers' (decode.logits: batch row 0 with its KV
 * cache, a prefill then one token per call; make_hf_golden.py's
 * DECODE_PREFILL): model_decode in the same calls gives the same logits
 * (fp32 bounds: the reference is transformers' fp32 run). */
static void check_decode(const model *m, const safetensors_file *exp, const char *name,
                         const int32_t *tokens, int T) {
    const safetensors_tensor *t = safetensors_find(exp, "decode.logits");
    int V = m->cfg.vocab_size;
    CHECK_MSG(t->ndim == 2 && t->shape[1] == V && t->shape[0] >= 1 && t->shape[0] <= T,
              "%s: decode.logits has the wrong shape", name);
    if (t->ndim != 2 || t->shape[1] != V || t->shape[0] < 1 || t->shape[0] > T) return;
    int calls = (int)t->shape[0], prefill = T - calls + 1;
    double *ref = expected_read(exp, "decode.logits", t->numel);
    model_kv_cache *c = NULL;
    real *logits = malloc((size_t)V * sizeof *logits);
    CHECK_OK(model_kv_cache_create(&c, m, T));
    double err = 0;
    for (int k = 0, pos = 0; ref && c && logits && k < calls; k++) {
        int n = k == 0 ? prefill : 1;
        CHECK_OK(model_decode(m, c, tokens + pos, n, logits));
        pos += n;
        err = fmax(err, max_abs_err(logits, ref + (size_t)k * V, V));
    }
    CHECK_MSG(err < BOUNDS_F32.logits, "%s: decoded logits max abs error %.3g (bound %g)", name,
              err, BOUNDS_F32.logits);
    printf("%-12s %s decoding (prefill %d, %d steps) against transformers' cache: max abs err "
           "%.2e\n",
           name, REAL_NAME, prefill, calls - 1, err);
    free(ref);
    free(logits);
    model_kv_cache_free(c);
}

static void run_case(const char *fixtures, const char *name) {
    char dir[1024], path[1100];
    snprintf(dir, sizeof dir, "%s/hf/%s", fixtures, name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);

    model *m = NULL;
    model_acts *acts = NULL;
    safetensors_file *exp = NULL;
    int32_t *tokens = NULL, *labels = NULL, *targets = NULL;
    double *ref_logits = NULL, *ref_loss = NULL;
    real *logits = NULL;

    CHECK_OK(checkpoint_load(&m, dir));
    CHECK_OK(safetensors_open(&exp, path));
    if (!m || !exp) goto done;

    /* Tight bounds only where the reference is float64 and so are we. */
    int have_f64 = safetensors_find(exp, "f64.logits") != NULL;
    int tight = have_f64 && sizeof(real) == sizeof(double);
    const bounds *bd = tight ? &BOUNDS_F64 : &BOUNDS_F32;
    const char *pre = have_f64 ? "f64." : "";
    char key[MODEL_NAME_MAX + 16];

    int B = 0, T = 0, Bl = 0, Tl = 0;
    tokens = expected_ids(exp, "tokens", &B, &T);
    labels = expected_ids(exp, "labels", &Bl, &Tl);
    if (!tokens || !labels) goto done;
    CHECK(B == Bl && T == Tl);
    if (B != Bl || T != Tl) goto done;

    /* HF's loss compares logits[:, t] with labels[:, t + 1]; model_forward
     * takes that shift already done: targets[b, t] = labels[b, t + 1], and
     * the last position of each row predicts nothing. */
    targets = malloc((size_t)B * T * sizeof *targets);
    if (!targets) goto done;
    int64_t want_targets = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int32_t y = t + 1 < T ? labels[b * T + t + 1] : MODEL_IGNORE_INDEX;
            targets[b * T + t] = y;
            want_targets += y != MODEL_IGNORE_INDEX;
        }

    CHECK_OK(model_want_all_grads(m));
    CHECK_OK(model_acts_create(&acts, m, B, T));
    if (!acts) goto done;
    double loss_sum = 0;
    int64_t n_targets = 0;
    CHECK_OK(model_forward(m, acts, tokens, targets, &loss_sum, &n_targets));
    CHECK(n_targets == want_targets);
    if (n_targets <= 0) goto done;

    /* model_backward reuses the logits buffer for their gradient: keep a copy. */
    int V = m->cfg.vocab_size;
    int64_t n_logits = (int64_t)B * T * V;
    logits = malloc((size_t)n_logits * sizeof *logits);
    if (!logits) goto done;
    memcpy(logits, model_acts_logits(acts), (size_t)n_logits * sizeof *logits);
    CHECK_OK(model_backward(m, acts, 1.0 / (double)n_targets));

    snprintf(key, sizeof key, "%slogits", tight ? "f64." : "");
    ref_logits = expected_read(exp, key, n_logits);
    snprintf(key, sizeof key, "%sloss", tight ? "f64." : "");
    ref_loss = expected_read(exp, key, 1);
    if (!ref_logits || !ref_loss) goto done;

    double logits_err = max_abs_err(logits, ref_logits, n_logits);
    double loss = loss_sum / (double)n_targets;
    double loss_err = fabs(loss - ref_loss[0]);
    CHECK_MSG(logits_err < bd->logits, "%s: logits max abs error %.3g (bound %g)", name, logits_err,
              bd->logits);
    CHECK_MSG(loss_err < bd->loss, "%s: loss %.9f vs HF %.9f (bound %g)", name, loss, ref_loss[0],
              bd->loss);

    /* Every parameter has a reference gradient, and every reference gradient
     * a parameter: nothing of HF's model is missing from ours or extra.
     * Buffers (xIELU's beta, eps) are not parameters and have none. */
    int n_trained = 0;
    for (int i = 0; i < m->n_params; i++) n_trained += !m->params[i].buffer;
    snprintf(key, sizeof key, "%sgrad.", pre);
    CHECK_MSG(count_prefix(exp, key) == n_trained, "%s: %d reference gradients, %d parameters",
              name, count_prefix(exp, key), n_trained);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        if (p->buffer) continue;
        snprintf(key, sizeof key, "%sgrad.%s", pre, p->name);
        double *ref = expected_read(exp, key, p->numel);
        if (!ref) continue;
        const safetensors_tensor *t = safetensors_find(exp, key);
        int64_t d0 = p->conv1d ? p->shape[1] : p->shape[0];
        CHECK_MSG(t->ndim == p->ndim && t->shape[0] == d0, "%s: %s has another shape on disk", name,
                  key);
        double ref_max = 0, e = grad_rel_err(p, ref, &ref_max);
        /* A zero reference would make the relative bound an absolute one. */
        CHECK_MSG(ref_max > 0, "%s: the reference gradient of %s is all zero", name, p->name);
        CHECK_MSG(e < bd->grad, "%s: gradient of %s: relative error %.3g (bound %g)", name, p->name,
                  e, bd->grad);
        if (e >= worst) {
            worst = e;
            worst_name = p->name;
        }
        free(ref);
    }
    if (safetensors_find(exp, "decode.logits")) check_decode(m, exp, name, tokens, T);

    printf("%-12s %s ref %s: logits max abs err %.2e, loss err %.2e (loss %.6f, %lld targets), "
           "grad max rel err %.2e (%s)\n",
           name, REAL_NAME, have_f64 ? "f64" : "f32", logits_err, loss_err, loss,
           (long long)n_targets, worst, worst_name);

done:
    free(tokens);
    free(labels);
    free(targets);
    free(logits);
    free(ref_logits);
    free(ref_loss);
    model_acts_free(acts);
    safetensors_close(exp);
    model_free(m);
}

/* The ALiBi slopes against transformers' (alibi_slopes.<H> of the bloom
 * case): equal for H < 32 and 64 <= H < 128, within one fp32 ulp (torch's
 * CPU pow) elsewhere. */
static void check_slopes(const char *fixtures) {
    char path[1100];
    snprintf(path, sizeof path, "%s/hf/bloom/expected.safetensors", fixtures);
    safetensors_file *exp = NULL;
    CHECK_OK(safetensors_open(&exp, path));
    if (!exp) return;
    int n = 0, off_by_ulp = 0;
    for (int i = 0; i < safetensors_count(exp); i++) {
        const safetensors_tensor *t = safetensors_tensor_at(exp, i);
        int H;
        if (sscanf(t->name, "alibi_slopes.%d", &H) != 1 || t->numel != H) continue;
        double *ref = expected_read(exp, t->name, H);
        real mine[256];
        if (!ref || H > 256) {
            free(ref);
            continue;
        }
        cpu_alibi_slopes(mine, H);
        int exact = H < 32 || (H >= 64 && H < 128);
        for (int h = 0; h < H; h++) {
            float want = (float)ref[h], got = (float)mine[h];
            CHECK_MSG(got == (real)mine[h], "slope %d of %d heads is not an fp32 value", h, H);
            if (got == want) continue;
            off_by_ulp++;
            CHECK_MSG(!exact && (nextafterf(want, 0) == got || nextafterf(want, 1) == got),
                      "ALiBi slope %d of %d heads: %a, transformers %a", h, H, (double)got,
                      (double)want);
        }
        n++;
        free(ref);
    }
    CHECK_MSG(n == 70, "the bloom case holds %d sets of slopes, 70 expected", n);
    printf("ALiBi slopes of %d head counts: %d of their values one ulp from torch's pow\n", n,
           off_by_ulp);
    safetensors_close(exp);
}

int main(void) {
    const char *fixtures = getenv("FEDLORA_FIXTURES");
    CHECK_MSG(fixtures != NULL, "FEDLORA_FIXTURES is not set (run through ctest)");
    if (!fixtures) return check_finish();
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) run_case(fixtures, CASES[i]);
    check_slopes(fixtures);
    return check_finish();
}
