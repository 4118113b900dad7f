/* test_decoder — generate/decoder.h, the device-independent generation forward
 * that `fedlora generate` uses, on the CPU (its GPU path is checked by
 * tests/gpu: gpu_parity's decode cases and gpu_device_cli):
 *   - with an adapter, a prefill and single steps give model_forward's
 *     logits of the merged graph at every position (within 1e-5), and the
 *     adapter is attached while the decoder lives and detached after;
 *   - decoder_reset starts over (the same logits again);
 *   - refusals: a context beyond the model's, a step that does not fit
 *     (the sequence unchanged: the next step still works), bad device and
 *     precision names, and --device cuda where this machine has no GPU or
 *     no backend module (a message that says to use --device cpu). */
#include "generate/decoder.h"
#include "tests/check.h"
#include "tests/cpu/tiny_lora.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double max_rel(const real *got, const real *want, int n) {
    double e = 0, mx = 1e-30;
    for (int i = 0; i < n; i++) {
        e = fmax(e, fabs((double)got[i] - want[i]));
        mx = fmax(mx, fabs((double)want[i]));
    }
    return e / mx;
}

static void run_case(const tiny_case *tc) {
    model_config cc = tc->cfg;
    const model_config *c = &cc;
    int T = c->max_position < 12 ? c->max_position : 12, V = c->vocab_size;
    /* within LongRoPE's original context: a whole forward is then what the
     * steps compute (test_decode says why) */
    if (cc.rope_longrope) cc.rope_original_max_position = T;
    model *m = NULL;
    CHECK_OK(model_create(&m, c));
    if (!m) return;
    tiny_weights(m, 5);
    lora_set *s = tiny_adapter(m, 4, 8, 0, 3, 0.2, 0);
    CHECK_MSG(s != NULL, "adapter: %s", err_msg());
    if (!s) exit(check_finish());
    int32_t tok[16], tg[16];
    tiny_batch(tok, tg, T, V, 77);

    /* the reference: a full forward with the adapter attached */
    model_acts *a = NULL;
    CHECK_OK(lora_attach(s, m));
    CHECK_OK(model_acts_create(&a, m, 1, T));
    double loss;
    int64_t nt;
    CHECK_OK(model_forward(m, a, tok, tg, &loss, &nt));
    real *want = malloc(sizeof *want * (size_t)T * V);
    memcpy(want, model_acts_logits(a), sizeof *want * (size_t)T * V);
    model_acts_free(a);
    lora_detach(s);

    decoder *d = NULL;
    real *got = malloc(sizeof *got * (size_t)V);
    CHECK_OK(decoder_open(&d, m, s, T, "cpu", NULL));
    if (!d) exit(check_finish());
    CHECK(strcmp(decoder_device(d), "cpu fp32") == 0);
    CHECK(decoder_capacity(d) == T && decoder_len(d) == 0);
    CHECK_MSG(s->attached, "%s: the adapter is not attached while decoding", tc->name);
    double worst = 0;
    int p = T / 3;
    CHECK_OK(decoder_step(d, tok, p, got));
    worst = fmax(worst, max_rel(got, want + (size_t)(p - 1) * V, V));
    for (int t = p; t < T; t++) {
        CHECK_OK(decoder_step(d, tok + t, 1, got));
        worst = fmax(worst, max_rel(got, want + (size_t)t * V, V));
    }
    CHECK(decoder_len(d) == T);
    /* full: refused, and nothing changes */
    CHECK_FAILS_WITH(decoder_step(d, tok, 1, got), "do not fit");
    CHECK(decoder_len(d) == T);
    decoder_reset(d);
    CHECK(decoder_len(d) == 0);
    CHECK_OK(decoder_step(d, tok, T, got));
    worst = fmax(worst, max_rel(got, want + (size_t)(T - 1) * V, V));
    printf("  %-20s decoder logits against model_forward: %.2e\n", tc->name, worst);
    CHECK_MSG(worst <= 1e-5, "%s: decoder logits differ by %.3e", tc->name, worst);
    decoder_free(d);
    CHECK_MSG(!s->attached, "%s: the adapter is still attached after decoder_free", tc->name);
    free(got);
    free(want);
    lora_free(s);
    model_free(m);
}

static void test_refusals(void) {
    tiny_case tc[TINY_MAX_CASES];
    tiny_cases(tc);
    model *m = NULL;
    CHECK_OK(model_create(&m, &tc[0].cfg));
    if (!m) return;
    tiny_weights(m, 5);
    decoder *d = NULL;
    int ctx = m->cfg.max_position;
    CHECK_FAILS_WITH(decoder_open(&d, m, NULL, ctx + 1, "cpu", NULL), "between 1 and the model");
    CHECK_FAILS_WITH(decoder_open(&d, m, NULL, 0, "cpu", NULL), "between 1 and the model");
    CHECK_FAILS_WITH(decoder_open(&d, m, NULL, 4, "tpu", NULL), "--device must be cpu or cuda");
    CHECK_FAILS_WITH(decoder_open(&d, m, NULL, 4, "cuda", "fp16"), "fp32, bf16 or auto");
    /* This machine's GPU path: a decoder on a GPU, or a message to use the CPU. */
    if (decoder_open(&d, m, NULL, 4, "cuda", NULL) == 0) {
        printf("  a CUDA device is here: %s\n", decoder_device(d));
        CHECK(strcmp(decoder_device(d), "cuda bf16") == 0);
        decoder_free(d);
        d = NULL;
    } else {
        printf("  --device cuda: %s\n", err_msg());
        CHECK(strstr(err_msg(), "use --device cpu") != NULL);
        CHECK(d == NULL);
    }
    CHECK_OK(decoder_open(&d, m, NULL, 4, NULL, NULL));
    real *logits = malloc(sizeof *logits * (size_t)m->cfg.vocab_size);
    int32_t tok[5] = {1, 2, 3, 4, 5};
    if (d) {
        CHECK_FAILS_WITH(decoder_step(d, tok, 0, logits), "at least one token");
        CHECK_FAILS_WITH(decoder_step(d, tok, 5, logits), "do not fit");
        tok[1] = m->cfg.vocab_size;
        CHECK_FAILS_WITH(decoder_step(d, tok, 2, logits), "vocabulary");
        CHECK(decoder_len(d) == 0);
        tok[1] = 2;
        CHECK_OK(decoder_step(d, tok, 4, logits));
        CHECK(decoder_len(d) == 4);
    }
    free(logits);
    decoder_free(d);
    model_free(m);
}

int main(void) {
    tiny_case tc[TINY_MAX_CASES];
    int n = tiny_cases(tc);
    for (int i = 0; i < n; i++) run_case(&tc[i]);
    test_refusals();
    return check_finish();
}
