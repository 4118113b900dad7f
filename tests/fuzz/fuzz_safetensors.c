/* fuzz_safetensors — the safetensors reader on arbitrary bytes: validate the
 * buffer, then look up and convert every tensor it accepted. Any crash,
 * sanitizer report or leak is a finding; refusals are the expected outcome. */
#include "model/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    safetensors_file *f;
    if (safetensors_parse(&f, data, size, "fuzz") != 0) return 0;
    (void)safetensors_metadata(f, "format");
    for (int i = 0; i < safetensors_count(f); i++) {
        const safetensors_tensor *t = safetensors_tensor_at(f, i);
        if (safetensors_find(f, t->name) != t) abort(); /* names are unique */
        /* Validation guarantees numel <= the tensor's bytes <= size. */
        float *fv = malloc((size_t)t->numel * sizeof *fv + 1);
        double *dv = malloc((size_t)t->numel * sizeof *dv + 1);
        if (fv && dv) {
            int a = safetensors_to_float(t, fv), b = safetensors_to_double(t, dv);
            if (a != b) abort(); /* the same dtypes convert either way */
        }
        free(fv);
        free(dv);
    }
    safetensors_close(f);
    return 0;
}
