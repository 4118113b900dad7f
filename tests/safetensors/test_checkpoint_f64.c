/* test_checkpoint_f64 — the fp64 build of checkpoint.c (used by the gradient
 * checks) loads and saves the same files as the fp32 product. */
#include "model/checkpoint.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"

int main(void) {
    const char *archs[] = {"llama", "gpt2"};
    for (int k = 0; k < 2; k++) {
        model_config c;
        model *m = NULL, *back = NULL;
        CHECK_OK(model_config_preset(&c, archs[k], "tiny"));
        CHECK_OK(model_create(&m, &c));
        if (!m) continue;
        model_init_random(m, 11);
        const char *dir = ts_tmp(archs[k]);
        CHECK_OK(checkpoint_save(m, dir, "float32"));
        CHECK_OK(checkpoint_load(&back, dir));
        if (back) {
            /* fp64 -> F32 on disk -> fp64: each value rounded once to fp32,
             * Conv1D transposed there and back. */
            int bad = 0;
            for (int i = 0; i < m->n_params; i++)
                for (int64_t j = 0; j < m->params[i].numel; j++)
                    bad += back->params[i].data[j] != (double)(float)m->params[i].data[j];
            CHECK_MSG(bad == 0, "%s: %d values differ", archs[k], bad);
            model_free(back);
        }
        model_free(m);
    }
    CHECK(sizeof(real) == 8);
    return check_finish();
}
