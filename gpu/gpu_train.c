/* gpu_train.c — AdamW on the GPU and the training step (gpu.h).
 *
 * adamw_step's arithmetic (lora/adamw.c): the global gradient norm (per-block
 * partial sums in double, added up in a fixed order on the host), clipping by
 * min(1, max_norm / (norm + 1e-6)), the warmup + cosine lr from
 * adamw_schedule, and the update with the same fp32 scalars and roundings,
 * so the same gradients move the adapter exactly as the CPU would. */
#include "gpu/gpu_internal.h"

#include "util/err.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

int gpu_adamw_init(gpu_model *g, const adamw_config *cfg) {
    if (g->n_lora == 0) return err_set("AdamW on the GPU: the model has no LoRA adapter");
    const adamw_config *c = cfg;
    if (!(c->lr >= 0) || !(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1) ||
        !(c->eps >= 0) || !(c->weight_decay >= 0) || !(c->max_grad_norm >= 0) ||
        c->warmup_steps < 0 || c->total_steps < 0)
        return err_set("AdamW: invalid hyper-parameters (lr %g, betas (%g, %g), eps %g, weight "
                       "decay %g, max grad norm %g): each must be >= 0, betas < 1",
                       c->lr, c->beta1, c->beta2, c->eps, c->weight_decay, c->max_grad_norm);
    OK(gpu_use(g));
    size_t bytes = (size_t)g->lora_numel * sizeof(float);
    CU(cudaMemsetAsync(g->lm, 0, bytes, g->stream));
    CU(cudaMemsetAsync(g->lv, 0, bytes, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    g->ocfg = *cfg;
    g->step = 0;
    g->last_lr = g->last_norm = 0;
    g->adam_ready = 1;
    return 0;
}

/* The 2-norm of all gradients as one vector. */
static int grad_norm(gpu_model *g, double *norm) {
    CU(gpu_sumsq(g->lg, g->lora_numel, g->d_partials, g->stream));
    CU(cudaMemcpyAsync(g->h_partials, g->d_partials, GPU_SUMSQ_BLOCKS * sizeof(double),
                       cudaMemcpyDeviceToHost, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    double sum = 0;
    for (int i = 0; i < GPU_SUMSQ_BLOCKS; i++) sum += g->h_partials[i];
    *norm = sqrt(sum);
    return 0;
}

int gpu_adamw_step(gpu_model *g, double *lr_out, double *norm_out) {
    if (!g->adam_ready) return err_set("gpu_adamw_step before gpu_adamw_init");
    const adamw_config *c = &g->ocfg;
    OK(gpu_use(g));
    double norm = 0;
    OK(grad_norm(g, &norm));
    if (!isfinite(norm))
        return err_set("AdamW step %" PRId64 ": the gradient norm is %g; the update was skipped "
                       "(lower the learning rate or check the data)",
                       g->step + 1, norm);
    if (c->max_grad_norm > 0) {
        double coef = c->max_grad_norm / (norm + 1e-6);
        if (coef < 1) CU(gpu_scale_f32(g->lg, g->lora_numel, (float)coef, g->stream));
    }
    double lr = c->lr * adamw_schedule(g->step, c->warmup_steps, c->total_steps);
    int64_t t = g->step + 1;
    double bc1 = 1 - pow(c->beta1, (double)t);
    double bc2_sqrt = sqrt(1 - pow(c->beta2, (double)t));
    float w1 = (float)(1 - c->beta1);
    gpu_adamw_scalars s = {.decay = (float)(1 - lr * c->weight_decay),
                           .w1 = w1,
                           .b1 = 1 - w1,
                           .b2 = (float)c->beta2,
                           .w2 = (float)(1 - c->beta2),
                           .bc2s = (float)bc2_sqrt,
                           .eps = (float)c->eps,
                           .neg_step = (float)(-(lr / bc1)),
                           .lerp_low = fabs((double)w1) < 0.5};
    CU(gpu_adamw_update(g->lp, g->lg, g->lm, g->lv, g->lora_numel, &s, g->stream));
    if (g->dt == GPU_BF16)
        CU(gpu_convert(g->lcast, GPU_BF16, g->lp, GPU_F32, g->lora_numel, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    g->step = t;
    g->last_lr = lr;
    g->last_norm = norm;
    if (lr_out) *lr_out = lr;
    if (norm_out) *norm_out = norm;
    return 0;
}

/* o must be over g's tensors in lora_tensor order. */
static int same_optimizer(const gpu_model *g, const adamw *o) {
    if (o->n != 2 * g->n_lora || o->numel != g->lora_numel)
        return err_set("the AdamW state has %d tensors of %lld values, the GPU adapter %d of %lld",
                       o->n, (long long)o->numel, 2 * g->n_lora, (long long)g->lora_numel);
    for (int i = 0; i < g->n_lora; i++) {
        const gpu_lora *l = &g->lora[i];
        if (o->params[2 * i]->numel != (int64_t)l->rank * l->in ||
            o->params[2 * i + 1]->numel != (int64_t)l->out * l->rank)
            return err_set("the AdamW state's tensors for %s do not match the GPU adapter's",
                           l->path);
    }
    return 0;
}

int gpu_adamw_download(gpu_model *g, adamw *o) {
    if (!g->adam_ready) return err_set("gpu_adamw_download before gpu_adamw_init");
    OK(same_optimizer(g, o));
    OK(gpu_use(g));
    size_t bytes = (size_t)g->lora_numel * sizeof(float);
    CU(cudaMemcpyAsync(o->exp_avg, g->lm, bytes, cudaMemcpyDeviceToHost, g->stream));
    CU(cudaMemcpyAsync(o->exp_avg_sq, g->lv, bytes, cudaMemcpyDeviceToHost, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    o->step = g->step;
    o->last_lr = g->last_lr;
    o->last_grad_norm = g->last_norm;
    return 0;
}

int gpu_adamw_upload(gpu_model *g, const adamw *o) {
    if (!g->adam_ready) return err_set("gpu_adamw_upload before gpu_adamw_init");
    OK(same_optimizer(g, o));
    OK(gpu_use(g));
    size_t bytes = (size_t)g->lora_numel * sizeof(float);
    CU(cudaMemcpyAsync(g->lm, o->exp_avg, bytes, cudaMemcpyHostToDevice, g->stream));
    CU(cudaMemcpyAsync(g->lv, o->exp_avg_sq, bytes, cudaMemcpyHostToDevice, g->stream));
    CU(cudaStreamSynchronize(g->stream));
    g->step = o->step;
    g->last_lr = o->last_lr;
    g->last_norm = o->last_grad_norm;
    return 0;
}

int gpu_train_step(gpu_model *g, const int32_t *tokens, const int32_t *targets, int K,
                   gpu_step_result *r) {
    memset(r, 0, sizeof *r);
    if (K < 1) return err_set("gpu_train_step: %d micro-batches; at least 1", K);
    if (!g->adam_ready) return err_set("gpu_train_step before gpu_adamw_init");
    OK(gpu_use(g)); /* the count's all-reduce below already runs on g's device */
    size_t per = (size_t)g->N;
    /* The mean is over every target of the step, on every rank. */
    double count = 0;
    for (size_t i = 0; i < per * (size_t)K; i++) count += targets[i] != MODEL_IGNORE_INDEX;
    OK(gpu_dist_sum_host(g, &count, 1));
    if (count == 0)
        return err_set("training step %lld has no target tokens", (long long)g->step + 1);
    CU(cudaMemsetAsync(g->lg, 0, (size_t)g->lora_numel * sizeof(float), g->stream));
    double sum = 0;
    for (int k = 0; k < K; k++) {
        double ls;
        int64_t nt;
        OK(gpu_forward_backward(g, tokens + (size_t)k * per, targets + (size_t)k * per, 1.0 / count,
                                &ls, &nt));
        sum += ls;
    }
    OK(gpu_dist_sum_f32(g, g->lg, g->lora_numel));
    OK(gpu_dist_sum_host(g, &sum, 1));
    if (gpu_adamw_step(g, &r->lr, &r->grad_norm) != 0)
        return err_context("step %lld (loss %g; a lower --lr or --clip may help)",
                           (long long)g->step + 1, sum / count);
    r->loss = sum / count;
    r->n_targets = (int64_t)count;
    return 0;
}
