/* test_lora_peft — fedlora's LoRA against Hugging Face PEFT.
 *
 * tests/fixtures/make_peft_fixtures.py made a PEFT LoRA (r 4, alpha 8, every
 * linear of the blocks) for the tiny Llama, GPT-2, Qwen3, OLMo 2, Apertus,
 * Gemma 2, Gemma 3, Phi-3, BLOOM and Mixtral checkpoints of tests/fixtures/hf
 * (Apertus's and Phi-3's by "all-linear", which PEFT writes as the list of
 * module paths it resolved: for Phi-3 the fused qkv_proj and gate_up_proj;
 * Mixtral's on the router and every expert's w1, w2, w3, the per-expert
 * format PEFT converts to transformers 5's fused experts on load),
 * saved it with save_pretrained, and recorded what PEFT computes (layout in
 * the script's docstring). For each case this test
 *   - loads the PEFT-written adapter with peft_load and checks PEFT's logits
 *     (max abs error < 1e-5) and loss (< 1e-5) on the base + adapter, and the
 *     base alone once detached;
 *   - checks every lora_A / lora_B gradient (max|g − ref| / max|ref| < 1e-4)
 *     and that no base weight got a gradient buffer;
 *   - runs the same 5 AdamW steps (warmup + cosine, clipping at 1.0, one
 *     batch each) and checks each step's loss, lr and gradient norm, and the
 *     adapter afterwards (max abs error < 1e-5);
 *   - writes the adapter with peft_save, reads it back and writes it again:
 *     both files byte for byte equal (the initial adapter and the trained
 *     one; these directories are what `make_peft_fixtures.py --check` loads
 *     with PeftModel.from_pretrained);
 *   - merges s·B·A into the base (delta_merge): every changed weight equals
 *     PEFT's merge_and_unload() (max abs error < 1e-6) and no other changes;
 *     the merged model's logits equal base + adapter to 1e-5, also after
 *     checkpoint_save and load (GPT-2's Conv1D weights go back to (in, out) on
 *     disk);
 *   - refuses bad inputs with clear errors: an adapter for another base
 *     (shape mismatch), an unknown peft_type, an adapter file with a tensor
 *     the config does not target, target names that match no module, rank 0
 *     and a rank above a layer's dimension. */
#include "lora/adamw.h"
#include "lora/delta.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "tests/lora/lora_test.h"

#include <sys/stat.h>

typedef struct {
    const char *name;  /* fixture folder under peft/ */
    const char *base;  /* base model under hf/ */
    const char *other; /* a base of the same family with other shapes */
    int per_layer;     /* modules per block */
    const char *one;   /* a module name of the family */
} peft_case;

static const peft_case CASES[] = {
    {"llama", "llama_gqa", "llama_bias", 7, "q_proj"},
    {"gpt2", "gpt2", "gpt2_bf16", 4, "c_attn"},
    /* llama_bias: the same module names, other k/v (and head) shapes */
    {"qwen3", "qwen3", "llama_bias", 7, "q_proj"},
    {"olmo2", "olmo2", "llama_bias", 7, "q_proj"},
    {"apertus", "apertus", "llama_bias", 6, "q_proj"}, /* "all-linear": no gate_proj */
    {"gemma2", "gemma2", "llama_bias", 7, "q_proj"},
    {"gemma3", "gemma3", "llama_bias", 7, "q_proj"},
    /* "all-linear": qkv_proj, o_proj, gate_up_proj, down_proj; phi3_short has
     * four kv heads (another qkv_proj) */
    {"phi3", "phi3", "phi3_short", 4, "qkv_proj"},
    {"bloom", "bloom", "bloom_bf16", 4, "query_key_value"},
    /* q, k, v, o, the router, 4 experts' w1, w2, w3; mixtral_aux: other k, v */
    {"mixtral", "mixtral", "mixtral_aux", 17, "w2"},
};

#define OUT_DIR "peft_out"

/* Forward of batch (tokens, targets); logits copied to out when non-NULL. */
static double forward(model *m, model_acts *a, const int32_t *tok, const int32_t *tgt, real *out,
                      int64_t n_logits, int64_t *n_targets) {
    double loss_sum = 0;
    CHECK_OK(model_forward(m, a, tok, tgt, &loss_sum, n_targets));
    if (out) memcpy(out, model_acts_logits(a), (size_t)n_logits * sizeof *out);
    return *n_targets > 0 ? loss_sum / (double)*n_targets : 0;
}

static void check_grads(const char *name, lora_set *s, const safetensors_file *exp) {
    double worst = 0;
    for (int i = 0; i < lora_num_tensors(s); i++) {
        model_param *p = lora_tensor(s, i);
        char key[MODEL_NAME_MAX + 16];
        snprintf(key, sizeof key, "grad.%s", p->name);
        double *ref = lt_read(exp, key, p->numel);
        if (!ref) continue;
        double e = ts_rel_err(p->grad, ref, p->numel);
        CHECK_MSG(e < 1e-4, "%s: gradient of %s: relative error %.3g", name, p->name, e);
        worst = fmax(worst, e);
        free(ref);
    }
    printf("%-6s gradients of %d adapter tensors: max rel err %.2e\n", name, lora_num_tensors(s),
           worst);
}

static void train5(const char *name, model *m, lora_set *s, const safetensors_file *exp) {
    int B, T;
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 1e-3;
    oc.weight_decay = 0.01;
    oc.warmup_steps = 2;
    oc.total_steps = 5;
    oc.max_grad_norm = 1.0;
    model_param *params[512];
    int n = lora_num_tensors(s);
    for (int i = 0; i < n; i++) params[i] = lora_tensor(s, i);
    adamw *opt = NULL;
    CHECK_OK(adamw_create(&opt, params, n, &oc));
    double *ref_loss = lt_read(exp, "step_loss", 5), *ref_lr = lt_read(exp, "step_lr", 5);
    double *ref_norm = lt_read(exp, "step_grad_norm", 5);
    model_acts *a = NULL;
    for (int k = 0; opt && ref_loss && ref_lr && ref_norm && k < 5; k++) {
        int32_t *tok = lt_ids(exp, "tokens", k, &B, &T), *lab = lt_ids(exp, "labels", k, &B, &T);
        int32_t *tgt = malloc((size_t)B * T * sizeof *tgt);
        if (!a) CHECK_OK(model_acts_create(&a, m, B, T));
        if (!tok || !lab || !tgt || !a) {
            free(tok);
            free(lab);
            free(tgt);
            break;
        }
        lt_shift(tgt, lab, B, T);
        lora_zero_grads(s);
        int64_t nt;
        double loss = forward(m, a, tok, tgt, NULL, 0, &nt);
        CHECK_OK(model_backward(m, a, 1.0 / (double)nt));
        CHECK_OK(adamw_step(opt));
        CHECK_MSG(fabs(loss - ref_loss[k]) < 1e-5, "%s step %d: loss %.7f vs PEFT %.7f", name, k,
                  loss, ref_loss[k]);
        CHECK_MSG(fabs(opt->last_lr - ref_lr[k]) < 1e-15, "%s step %d: lr %.17g vs %.17g", name, k,
                  opt->last_lr, ref_lr[k]);
        CHECK_MSG(fabs(opt->last_grad_norm - ref_norm[k]) < 1e-4 * ref_norm[k],
                  "%s step %d: grad norm %.7g vs %.7g", name, k, opt->last_grad_norm, ref_norm[k]);
        free(tok);
        free(lab);
        free(tgt);
    }
    CHECK(opt && opt->step == 5);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        char key[MODEL_NAME_MAX + 16];
        snprintf(key, sizeof key, "step5.%s", params[i]->name);
        double *ref = lt_read(exp, key, params[i]->numel);
        if (!ref) continue;
        double e = ts_max_err(params[i]->data, ref, params[i]->numel);
        CHECK_MSG(e < 1e-5, "%s: %s after 5 AdamW steps: max abs error %.3g", name, params[i]->name,
                  e);
        worst = fmax(worst, e);
        free(ref);
    }
    printf("%-6s adapter after 5 AdamW steps: max abs err %.2e\n", name, worst);
    model_acts_free(a);
    adamw_free(opt);
    free(ref_loss);
    free(ref_lr);
    free(ref_norm);
}

/* Writes s to OUT_DIR/<kind>_<case>, reads that back, writes it again to
 * OUT_DIR/<kind>2_<case>: both directories must be byte for byte the same. */
static void roundtrip(const char *name, const char *kind, const model *m, const lora_set *s) {
    char d1[256], d2[256], f1[320], f2[320];
    snprintf(d1, sizeof d1, OUT_DIR "/%s_%s", kind, name);
    snprintf(d2, sizeof d2, OUT_DIR "/%s2_%s", kind, name);
    CHECK_OK(peft_save(s, d1));
    lora_set *back = NULL;
    CHECK_OK(peft_load(&back, m, d1));
    if (!back) return;
    for (int i = 0; i < lora_num_tensors(back); i++) {
        model_param *p = lora_tensor(back, i), *q = lora_tensor((lora_set *)s, i);
        CHECK_MSG(strcmp(p->name, q->name) == 0 &&
                      memcmp(p->data, q->data, (size_t)p->numel * sizeof(real)) == 0,
                  "%s: %s changed in the round trip", name, q->name);
    }
    CHECK_OK(peft_save(back, d2));
    const char *files[] = {PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE};
    for (int i = 0; i < 2; i++) {
        snprintf(f1, sizeof f1, "%s/%s", d1, files[i]);
        snprintf(f2, sizeof f2, "%s/%s", d2, files[i]);
        CHECK_MSG(ts_same_file(f1, f2), "%s: %s differs after a read and a write", name, files[i]);
    }
    lora_free(back);
}

/* m's weights against merge_and_unload()'s (merged.<name>, in the on-disk
 * layout): those PEFT changed within 1e-6, the others unchanged from base. */
static void merged_weights_check(const char *name, const model *m, const model *base,
                                 const safetensors_file *exp) {
    double worst = 0;
    int changed = 0;
    for (int i = 0; i < m->n_params; i++) {
        const model_param *p = &m->params[i];
        char key[MODEL_NAME_MAX + 8];
        snprintf(key, sizeof key, "merged.%s", p->name);
        if (!safetensors_find(exp, key)) {
            CHECK_MSG(memcmp(p->data, base->params[i].data, (size_t)p->numel * sizeof(real)) == 0,
                      "%s: %s changed in the merge, PEFT's merge leaves it", name, p->name);
            continue;
        }
        double *ref = lt_read(exp, key, p->numel);
        if (!ref) continue;
        changed++;
        int64_t rows = p->shape[0], cols = p->ndim == 2 ? p->shape[1] : 1;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) {
                double want = p->conv1d ? ref[c * rows + r] : ref[r * cols + c];
                worst = fmax(worst, fabs((double)p->data[r * cols + c] - want));
            }
        free(ref);
    }
    int want_changed = 0;
    for (int i = 0; i < safetensors_count(exp); i++)
        want_changed += strncmp(safetensors_tensor_at(exp, i)->name, "merged.", 7) == 0;
    CHECK_MSG(changed == want_changed && changed > 0, "%s: %d merged weights, PEFT's merge has %d",
              name, changed, want_changed);
    CHECK_MSG(worst < 1e-6, "%s: merged weights vs merge_and_unload(): max abs error %.3g", name,
              worst);
    printf("%-7s merged weights: %d changed, max abs err %.2e vs merge_and_unload()\n", name,
           changed, worst);
}

static void merge_check(const char *name, const char *base_dir, const lora_set *s,
                        const safetensors_file *exp, const real *adapter_logits,
                        const double *peft_logits, const int32_t *tok, int B, int T) {
    model *m2 = NULL, *m3 = NULL, *base = NULL;
    model_acts *a = NULL;
    CHECK_OK(checkpoint_load(&m2, base_dir));
    CHECK_OK(checkpoint_load(&base, base_dir));
    if (!m2 || !base) {
        model_free(m2);
        model_free(base);
        return;
    }
    CHECK_OK(delta_merge(m2, s));
    merged_weights_check(name, m2, base, exp);
    model_free(base);
    int64_t n = (int64_t)B * T * m2->cfg.vocab_size, nt;
    real *logits = malloc((size_t)n * sizeof *logits);
    CHECK_OK(model_acts_create(&a, m2, B, T));
    if (a && logits) {
        forward(m2, a, tok, NULL, logits, n, &nt);
        double e1 = 0, e2 = ts_max_err(logits, peft_logits, n);
        for (int64_t i = 0; i < n; i++) e1 = fmax(e1, fabs((double)logits[i] - adapter_logits[i]));
        CHECK_MSG(e1 < 1e-5, "%s: merged logits vs base+adapter: max abs error %.3g", name, e1);
        CHECK_MSG(e2 < 1e-5, "%s: merged logits vs PEFT: max abs error %.3g", name, e2);
        printf("%-6s merged model: logits max abs err %.2e vs base+adapter, %.2e vs PEFT\n", name,
               e1, e2);
        /* On disk and back: Conv1D weights leave as (in, out) and return as (out, in). */
        char dir[256];
        snprintf(dir, sizeof dir, OUT_DIR "/merged_%s", name);
        CHECK_OK(checkpoint_save(m2, dir, "float32"));
        CHECK_OK(checkpoint_load(&m3, dir));
        model_acts_free(a);
        a = NULL;
        if (m3) CHECK_OK(model_acts_create(&a, m3, B, T));
        if (m3 && a) {
            const real *want = logits;
            real *again = malloc((size_t)n * sizeof *again);
            if (again) {
                forward(m3, a, tok, NULL, again, n, &nt);
                CHECK_MSG(memcmp(again, want, (size_t)n * sizeof *again) == 0,
                          "%s: the saved merged model gives other logits", name);
            }
            free(again);
        }
    }
    free(logits);
    model_acts_free(a);
    model_free(m2);
    model_free(m3);
}

static void bad_inputs(const peft_case *c, const char *fixtures, const model *m,
                       const char *adapter_dir) {
    char dir[512], path[600];
    /* An adapter for another base of the same family: shapes differ. */
    model *other = NULL;
    snprintf(dir, sizeof dir, "%s/hf/%s", fixtures, c->other);
    CHECK_OK(checkpoint_load(&other, dir));
    lora_set *s = NULL;
    if (other) CHECK_FAILS_WITH(peft_load(&s, other, adapter_dir), "made for another base");
    model_free(other);

    /* Unknown peft_type. */
    snprintf(dir, sizeof dir, OUT_DIR "/ia3_%s", c->name);
    CHECK_OK(fio_mkdirs(dir, 0755));
    snprintf(path, sizeof path, "%s/" PEFT_CONFIG_FILE, dir);
    CHECK_OK(ts_write(path, "{\"peft_type\": \"IA3\", \"target_modules\": [\"k_proj\"]}"));
    CHECK_FAILS_WITH(peft_load(&s, m, dir), "unknown peft_type \"IA3\"");
    CHECK_OK(ts_write(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, "
                            "\"use_dora\": true, \"target_modules\": [\"k_proj\"]}"));
    CHECK_FAILS_WITH(peft_load(&s, m, dir), "\"use_dora\" is set");
    CHECK_OK(ts_write(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, "
                            "\"target_modules\": \"all-linear\"}"));
    CHECK_FAILS_WITH(peft_load(&s, m, dir), "has no adapter_model.safetensors");
    CHECK_OK(ts_write(path, "{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8,"));
    CHECK_FAILS_WITH(peft_load(&s, m, dir), "invalid JSON");

    /* A config that targets fewer modules than the file holds. */
    lora_config cfg;
    lora_config_init(&cfg);
    cfg.rank = 4;
    CHECK_OK(lora_config_set_targets(&cfg, c->one));
    lora_set *one = NULL;
    CHECK_OK(lora_create(&one, m, &cfg));
    if (one) {
        char *json;
        size_t len;
        CHECK_OK(peft_config_json(one, &json, &len));
        snprintf(dir, sizeof dir, OUT_DIR "/extra_%s", c->name);
        CHECK_OK(fio_mkdirs(dir, 0755));
        snprintf(path, sizeof path, "%s/" PEFT_CONFIG_FILE, dir);
        CHECK_OK(fio_write_atomic(path, json, len, 0644));
        free(json);
        char src[600], dst[600];
        snprintf(src, sizeof src, "%s/" PEFT_WEIGHTS_FILE, adapter_dir);
        snprintf(dst, sizeof dst, "%s/" PEFT_WEIGHTS_FILE, dir);
        char *bytes;
        size_t n;
        CHECK_OK(fio_read_all(src, 1u << 24, &bytes, &n));
        CHECK_OK(fio_write_atomic(dst, bytes, n, 0644));
        free(bytes);
        CHECK_FAILS_WITH(peft_load(&s, m, dir), "belongs to no module");
        lora_free(one);
    }

    /* Targets that match nothing, rank 0, rank above the layer's size. */
    char list[128], nomatch[128];
    snprintf(list, sizeof list, "%s,%.3s", c->one, c->one + 1); /* "q_proj,_pr" */
    snprintf(nomatch, sizeof nomatch, "\"%.3s\" matches no linear layer", c->one + 1);
    CHECK_OK(lora_config_set_targets(&cfg, list));
    CHECK_FAILS_WITH(lora_create(&s, m, &cfg), nomatch);
    CHECK_OK(lora_config_set_targets(&cfg, c->one));
    cfg.rank = 0;
    CHECK_FAILS_WITH(lora_create(&s, m, &cfg), "the rank must be at least 1");
    cfg.rank = m->cfg.hidden_size + 1;
    CHECK_FAILS_WITH(lora_create(&s, m, &cfg), "is above min(in");
    lora_config_free(&cfg);
}

static void run_case(const char *fixtures, const peft_case *c) {
    char base_dir[512], adapter_dir[512], exp_path[512];
    snprintf(base_dir, sizeof base_dir, "%s/hf/%s", fixtures, c->base);
    snprintf(adapter_dir, sizeof adapter_dir, "%s/peft/%s/adapter", fixtures, c->name);
    snprintf(exp_path, sizeof exp_path, "%s/peft/%s/expected.safetensors", fixtures, c->name);
    model *m = NULL;
    lora_set *s = NULL;
    safetensors_file *exp = NULL;
    model_acts *a = NULL;
    int32_t *tok = NULL, *lab = NULL, *tgt = NULL;
    real *logits = NULL;
    double *ref_logits = NULL, *ref_base = NULL, *ref_loss = NULL;
    int B, T;

    CHECK_OK(checkpoint_load(&m, base_dir));
    CHECK_OK(safetensors_open(&exp, exp_path));
    if (m) CHECK_OK(peft_load(&s, m, adapter_dir));
    if (!m || !s || !exp) goto done;
    CHECK(s->n_modules == c->per_layer * m->cfg.num_layers);
    CHECK(s->modules[0].rank == 4 && s->modules[0].scale == 2.0);
    CHECK(s->cfg.base_model && strcmp(s->cfg.base_model, "tests/fixtures/hf/") > 0);

    tok = lt_ids(exp, "tokens", 0, &B, &T);
    lab = lt_ids(exp, "labels", 0, &B, &T);
    tgt = tok ? malloc((size_t)B * T * sizeof *tgt) : NULL;
    if (!tok || !lab || !tgt) goto done;
    lt_shift(tgt, lab, B, T);
    int64_t n = (int64_t)B * T * m->cfg.vocab_size, nt;
    logits = malloc((size_t)n * sizeof *logits);
    ref_logits = lt_read(exp, "logits", n);
    ref_base = lt_read(exp, "base_logits", n);
    ref_loss = lt_read(exp, "loss", 1);
    if (!logits || !ref_logits || !ref_base || !ref_loss) goto done;

    CHECK_OK(lora_attach(s, m));
    CHECK_OK(lora_want_grads(s));
    CHECK_OK(lora_reserve(s, B * T));
    CHECK_OK(model_acts_create(&a, m, B, T));
    if (!a) goto done;
    double loss = forward(m, a, tok, tgt, logits, n, &nt);
    double le = ts_max_err(logits, ref_logits, n);
    CHECK_MSG(le < 1e-5, "%s: logits with the PEFT adapter: max abs error %.3g", c->name, le);
    CHECK_MSG(fabs(loss - ref_loss[0]) < 1e-5, "%s: loss %.7f vs PEFT %.7f", c->name, loss,
              ref_loss[0]);
    printf("%-6s PEFT adapter loaded: logits max abs err %.2e, loss %.6f (PEFT %.6f)\n", c->name,
           le, loss, ref_loss[0]);
    CHECK_OK(model_backward(m, a, 1.0 / (double)nt));
    check_grads(c->name, s, exp);
    int base_grads = 0;
    for (int i = 0; i < m->n_params; i++) base_grads += m->params[i].grad != NULL;
    CHECK_MSG(base_grads == 0, "%s: %d base parameters have a gradient buffer", c->name,
              base_grads);

    /* The base alone, once the adapter is detached. */
    lora_detach(s);
    real *base_logits = malloc((size_t)n * sizeof *base_logits);
    if (base_logits) {
        forward(m, a, tok, NULL, base_logits, n, &nt);
        double be = ts_max_err(base_logits, ref_base, n);
        CHECK_MSG(be < 1e-5, "%s: base logits after detach: max abs error %.3g", c->name, be);
        free(base_logits);
    }

    merge_check(c->name, base_dir, s, exp, logits, ref_logits, tok, B, T);
    roundtrip(c->name, "roundtrip", m, s);
    bad_inputs(c, fixtures, m, adapter_dir);

    CHECK_OK(lora_attach(s, m));
    train5(c->name, m, s, exp);
    lora_detach(s);
    roundtrip(c->name, "trained", m, s);

done:
    free(tok);
    free(lab);
    free(tgt);
    free(logits);
    free(ref_logits);
    free(ref_base);
    free(ref_loss);
    model_acts_free(a);
    lora_free(s);
    safetensors_close(exp);
    model_free(m);
}

int main(void) {
    const char *fixtures = getenv("FEDLORA_FIXTURES");
    CHECK_MSG(fixtures != NULL, "FEDLORA_FIXTURES is not set (run through ctest)");
    if (!fixtures) return check_finish();
    CHECK_OK(fio_mkdirs(OUT_DIR, 0755));
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) run_case(fixtures, &CASES[i]);
    return check_finish();
}
