/* Forward and backward read only what they wrote: every tiny family of
 * tiny.h runs on a heap whose free chunks hold NaN, and its loss and every
 * gradient stay finite.
 *
 * Why: an unset value multiplied by zero is zero only while the heap happens
 * to leave a finite number there. Mixtral's router backward once scaled an
 * unfilled count by the load-balancing term's coefficient, 0 when the loss
 * is off, so one run in about a hundred (whatever bytes the allocator
 * recycled: keys, messages) trained into a NaN gradient norm.
 *
 * How the heap is poisoned: glibc hands back small chunks that were just
 * freed (its per-size caches and fast bins, last in first out), so filling
 * many chunks of every small size with 0xff bytes (a NaN as fp32 and fp64)
 * and freeing them leaves NaN in the small buffers the activations allocate
 * next (all but the allocator's first two words of each). Under
 * AddressSanitizer, whose allocator does not recycle that way, its
 * malloc_fill_byte does the same for every allocation (the defaults below;
 * ASAN_OPTIONS from the environment still applies on top). Large buffers
 * come fresh from the kernel as zeros in a release build, so there the test
 * covers the small ones, which is where such a count lives. */
#include "tests/cpu/tiny_lora.h"

#include <math.h>
#include <stdlib.h>

const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "malloc_fill_byte=255:max_malloc_fill_size=1073741824";
}

/* Many freed chunks of every size up to 2 KiB, each filled with 0xff. */
static void poison_heap(void) {
    enum { PER_SIZE = 24, MAX_SIZE = 2048, STEP = 8 };
    static void *chunks[PER_SIZE * (MAX_SIZE / STEP)];
    int n = 0;
    for (size_t size = STEP; size <= MAX_SIZE; size += STEP)
        for (int i = 0; i < PER_SIZE; i++) {
            void *p = malloc(size);
            if (!p) continue;
            memset(p, 0xff, size);
            chunks[n++] = p;
        }
    /* freed in reverse, so the first chunks come back first */
    while (n > 0) free(chunks[--n]);
}

/* The first non-finite value of x (n values), or -1. */
static int64_t first_non_finite(const real *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite((double)x[i])) return i;
    return -1;
}

/* The first non-finite gradient of the model's params (s NULL) or of the
 * adapter's tensors, reported. */
static void check_grads(const char *name, int step, model *m, lora_set *s) {
    int n = s ? lora_num_tensors(s) : m->n_params, checked = 0;
    for (int i = 0; i < n; i++) {
        const model_param *p = s ? lora_tensor(s, i) : &m->params[i];
        if (!p->grad) continue;
        checked++;
        int64_t at = first_non_finite(p->grad, p->numel);
        CHECK_MSG(at < 0, "%s step %d: %s's gradient is %g at %lld of %lld", name, step, p->name,
                  at < 0 ? 0.0 : (double)p->grad[at], (long long)at, (long long)p->numel);
    }
    CHECK_MSG(checked > 0, "%s step %d: no gradient to check", name, step);
}

/* dropout < 0: no adapter, every param's gradient. */
static void run_case(const tiny_case *tc, double dropout) {
    model *m = tiny_model(&tc->cfg, 11);
    if (!m) return;
    lora_set *s = NULL;
    if (dropout < 0) {
        CHECK_OK(model_want_all_grads(m));
    } else {
        s = tiny_adapter(m, 4, 8, dropout, 3, 0.05, 0);
        CHECK_MSG(s != NULL, "%s: %s", tc->name, err_msg());
        if (!s) {
            model_free(m);
            return;
        }
        CHECK_OK(lora_want_grads(s));
        CHECK_OK(lora_attach(s, m));
        lora_set_training(s, 1);
    }
    int N = tc->B * tc->T;
    int32_t *tokens = malloc(sizeof(int32_t) * (size_t)N);
    int32_t *targets = malloc(sizeof(int32_t) * (size_t)N);
    tiny_batch(tokens, targets, N, tc->cfg.vocab_size, 5);
    model_acts *a = NULL;
    poison_heap();
    CHECK_MSG(model_acts_create(&a, m, tc->B, tc->T) == 0, "%s: %s", tc->name, err_msg());
    /* two steps: the second backward runs on buffers the first one left */
    for (int step = 0; a && step < 2; step++) {
        double sum = 0;
        int64_t count = 0;
        poison_heap();
        CHECK_OK(model_forward(m, a, tokens, targets, &sum, &count));
        CHECK_MSG(isfinite(sum) && count > 0, "%s step %d: loss sum %g over %lld targets", tc->name,
                  step, sum, (long long)count);
        poison_heap();
        CHECK_OK(model_backward(m, a, 1.0 / (double)(count > 0 ? count : 1)));
        check_grads(tc->name, step, m, s);
    }
    model_acts_free(a);
    if (s) {
        lora_detach(s);
        lora_free(s);
    }
    free(tokens);
    free(targets);
    model_free(m);
}

int main(void) {
    tiny_case cases[TINY_MAX_CASES];
    int n = tiny_cases(cases);
    int moe_without_aux = 0;
    for (int i = 0; i < n; i++) {
        moe_without_aux += cases[i].cfg.num_experts > 0 && !cases[i].cfg.router_aux_loss;
        run_case(&cases[i], -1);
        run_case(&cases[i], 0);
        run_case(&cases[i], 0.1);
    }
    /* the case the router's bug needed is among them */
    CHECK(moe_without_aux > 0);
    return check_finish();
}
