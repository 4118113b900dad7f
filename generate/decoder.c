/* decoder.c — generation's forward on the CPU or a GPU (decoder.h). */
#include "generate/decoder.h"

#include "gpu/gpu_load.h"
#include "train/trainer.h"
#include "util/err.h"

#include <stdlib.h>

_Static_assert(sizeof(real) == sizeof(float), "gpu_decode writes float logits");

struct decoder {
    model *m;
    lora_set *s; /* attached to m (CPU) */
    int max_T, len;
    const char *name;
    /* CPU */
    model_kv_cache *cache;
    /* GPU */
    const gpu_api *gpu;
    gpu_model *g;
};

int decoder_open(decoder **out, model *m, lora_set *s, int max_T, const char *device,
                 const char *precision) {
    *out = NULL;
    if (max_T < 1 || max_T > m->cfg.max_position)
        return err_set("a generation context of %d positions: it must be between 1 and the "
                       "model's %d",
                       max_T, m->cfg.max_position);
    if (trainer_device_check(device, precision) != 0) return -1;
    decoder *d = calloc(1, sizeof *d);
    if (!d) return err_set("out of memory for a decoder");
    d->m = m;
    d->max_T = max_T;
    if (s) lora_set_training(s, 0); /* generation is evaluation: no dropout */
    if (trainer_device_is_cuda(device)) {
        int bf16 = trainer_device_bf16(device, precision);
        d->name = bf16 ? "cuda bf16" : "cuda fp32";
        d->gpu = gpu_load_api(); /* loaded by trainer_device_check */
        if (trainer_gpu_upload(d->gpu, &d->g, m, s, 1, max_T, bf16) != 0) {
            free(d);
            return -1;
        }
    } else {
        model_precision p;
        if (trainer_cpu_precision(m, device, precision, &p) != 0) {
            free(d);
            return -1;
        }
        d->name = p == MODEL_PRECISION_BF16 ? "cpu bf16" : "cpu fp32";
        if (s && lora_attach(s, m) != 0) {
            free(d);
            return -1;
        }
        d->s = s;
        if (model_kv_cache_create(&d->cache, m, max_T) != 0) {
            decoder_free(d);
            return -1;
        }
    }
    *out = d;
    return 0;
}

void decoder_free(decoder *d) {
    if (!d) return;
    if (d->g) d->gpu->model_free(d->g);
    model_kv_cache_free(d->cache);
    if (d->s) lora_detach(d->s);
    free(d);
}

int decoder_step(decoder *d, const int32_t *tokens, int n, real *logits) {
    if (n < 1) return err_set("a decoder step needs at least one token");
    if (n > d->max_T - d->len)
        return err_set("%d more tokens do not fit: %d of the context's %d positions are used", n,
                       d->len, d->max_T);
    if (d->cache) {
        if (model_decode(d->m, d->cache, tokens, n, logits) != 0) return -1;
    } else if (d->gpu->decode(d->g, tokens, n, d->len, logits) != 0) {
        return -1;
    }
    d->len += n;
    return 0;
}

int decoder_len(const decoder *d) {
    return d->len;
}

int decoder_capacity(const decoder *d) {
    return d->max_T;
}

void decoder_reset(decoder *d) {
    d->len = 0;
    if (d->cache) model_kv_cache_reset(d->cache);
}

const char *decoder_device(const decoder *d) {
    return d->name;
}
