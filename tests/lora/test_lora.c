/* test_lora — unit tests of the adapter core (fp32): target resolution as
 * PEFT matches module names (Mixtral's router only when named), PEFT's
 * initialisation, attach/detach, dropout, chunked forward/backward, AdamW
 * and its schedule, clipping and state files, dense and product deltas, and
 * adapter_config.json. */
#include "lora/adamw.h"
#include "lora/delta.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "tests/cpu/tiny.h"
#include "tests/lora/lora_test.h"
#include "tests/support/blas_merge.h"

static model_config tiny_gpt2(void) {
    tiny_case c[TINY_MAX_CASES];
    int n = tiny_cases(c), g = 0;
    for (int i = 0; i < n; i++)
        if (c[i].cfg.family == MODEL_FAMILY_GPT2) g = i;
    return c[g].cfg;
}

/* Modules resolved for targets (NULL on error, message left in err_msg). */
static lora_set *resolve(const model *m, const char *targets, int rank) {
    lora_config c;
    lora_config_init(&c);
    c.rank = rank;
    lora_set *s = NULL;
    if (lora_config_set_targets(&c, targets) == 0) lora_create(&s, m, &c);
    lora_config_free(&c);
    return s;
}

static void test_targets(void) {
    model_config lc = tiny_llama(), gc = tiny_gpt2();
    model *ll = tiny_model(&lc, 1), *g2 = tiny_model(&gc, 2);
    if (!ll || !g2) goto done;
    int L = lc.num_layers;
    lora_set *s = resolve(ll, "q_proj,v_proj", 2);
    CHECK(s && s->n_modules == 2 * L);
    if (s) {
        CHECK(strcmp(s->modules[0].path, "model.layers.0.self_attn.q_proj") == 0);
        CHECK(strcmp(s->modules[1].path, "model.layers.0.self_attn.v_proj") == 0);
        CHECK(strcmp(s->modules[0].A.name,
                     "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == 0);
        CHECK(strcmp(s->modules[1].B.name,
                     "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight") == 0);
        CHECK(s->modules[0].A.shape[0] == 2 && s->modules[0].A.shape[1] == lc.hidden_size);
        CHECK(s->modules[1].B.shape[0] == lc.num_kv_heads * lc.head_dim);
    }
    lora_free(s);
    /* GPT-2: "c_proj" takes attn.c_proj and mlp.c_proj, as PEFT's suffix rule. */
    s = resolve(g2, "c_proj", 2);
    CHECK(s && s->n_modules == 2 * L);
    if (s) {
        CHECK(strcmp(s->modules[0].path, "transformer.h.0.attn.c_proj") == 0);
        CHECK(strcmp(s->modules[1].path, "transformer.h.0.mlp.c_proj") == 0);
        CHECK(s->modules[0].conv1d && s->modules[1].in == gc.intermediate_size);
    }
    lora_free(s);
    s = resolve(g2, "all-linear", 2);
    CHECK(s && s->n_modules == 4 * L);
    lora_free(s);
    s = resolve(ll, "ALL-LINEAR", 2);
    CHECK(s && s->n_modules == 7 * L);
    lora_free(s);
    /* A full path names one module. */
    s = resolve(ll, "model.layers.1.mlp.down_proj", 2);
    CHECK(s && s->n_modules == 1 && s->modules[0].layer == 1);
    lora_free(s);
    /* The suffix must start at a dot: "proj" is no module. */
    err_clear();
    CHECK(resolve(ll, "proj", 2) == NULL);
    CHECK(strstr(err_msg(), "\"proj\" matches no linear layer") &&
          strstr(err_msg(), "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"));
    CHECK(resolve(g2, "q_proj", 2) == NULL);
    CHECK(strstr(err_msg(), "c_attn, c_proj, c_fc") != NULL);
    CHECK(resolve(ll, "q_proj,,v_proj", 2) == NULL);
    CHECK(strstr(err_msg(), "empty module name") != NULL);

    lora_config c;
    lora_config_init(&c);
    c.rank = 2;
    /* A string target is a regular expression over the whole path. */
    CHECK_OK(lora_config_set_target_regex(&c, "model\\.layers\\.1\\..*_proj"));
    CHECK_OK(lora_create(&s, ll, &c));
    CHECK(s && s->n_modules == 7 && s->modules[0].layer == 1);
    lora_free(s);
    CHECK_OK(lora_config_set_target_regex(&c, "q_proj"));
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "match no linear layer");
    CHECK_OK(lora_config_set_target_regex(&c, "model.layers.(0"));
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "not a valid regular expression");
    /* exclude_modules, then layers_to_transform, which filters suffix
     * matches but not a name equal to the whole path (PEFT's order). */
    CHECK_OK(lora_config_set_targets(&c, "all-linear"));
    c.exclude = calloc(1, sizeof *c.exclude);
    c.exclude[0] = strdup("k_proj");
    c.n_exclude = 1;
    CHECK_OK(lora_create(&s, ll, &c));
    CHECK(s && s->n_modules == 6 * L);
    if (s)
        for (int i = 0; i < s->n_modules; i++) CHECK(!strstr(s->modules[i].path, "k_proj"));
    lora_free(s);
    c.layers = malloc(sizeof *c.layers);
    c.layers[0] = 1;
    c.n_layers = 1;
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "layers_to_transform cannot be used");
    CHECK_OK(lora_config_set_targets(&c, "q_proj,k_proj,v_proj,model.layers.0.mlp.up_proj"));
    CHECK_OK(lora_create(&s, ll, &c));
    CHECK(s && s->n_modules == 3);
    if (s && s->n_modules == 3) {
        CHECK(strcmp(s->modules[0].path, "model.layers.0.mlp.up_proj") == 0);
        CHECK(strcmp(s->modules[1].path, "model.layers.1.self_attn.q_proj") == 0);
        CHECK(strcmp(s->modules[2].path, "model.layers.1.self_attn.v_proj") == 0);
    }
    lora_free(s);
    lora_config_free(&c);

    /* rank_pattern / alpha_pattern: the first key that matches, as get_pattern_key. */
    lora_config_init(&c);
    c.rank = 2;
    c.alpha = 4;
    CHECK_OK(lora_config_set_targets(&c, "q_proj,o_proj"));
    /* Keys are tried in sorted order (see lora.h), whatever order they came in. */
    CHECK_OK(lora_config_add_rank_pattern(&c, "q_proj", 1));
    CHECK_OK(lora_config_add_rank_pattern(&c, "layers.1.self_attn.q_proj", 3));
    CHECK_OK(lora_config_add_alpha_pattern(&c, "o_proj", 9));
    CHECK_FAILS_WITH(lora_config_add_rank_pattern(&c, "q_proj", 5), "given twice");
    CHECK_OK(lora_create(&s, ll, &c));
    if (s) {
        CHECK(lora_find(s, "model.layers.0.self_attn.q_proj")->rank == 1);
        CHECK(lora_find(s, "model.layers.1.self_attn.q_proj")->rank == 3);
        CHECK(lora_find(s, "model.layers.0.self_attn.o_proj")->rank == 2);
        CHECK(lora_find(s, "model.layers.1.self_attn.q_proj")->scale == 4.0 / 3);
        CHECK(lora_find(s, "model.layers.0.self_attn.o_proj")->scale == 9.0 / 2);
    }
    lora_free(s);
    c.use_rslora = 1;
    CHECK_OK(lora_create(&s, ll, &c));
    if (s) CHECK(lora_find(s, "model.layers.0.self_attn.o_proj")->scale == 9.0 / sqrt(2.0));
    lora_free(s);
    /* Bad values, each with its message. */
    CHECK_OK(lora_config_add_rank_pattern(&c, "o_proj", 17));
    CHECK_FAILS_WITH(lora_create(&s, ll, &c),
                     "rank 17 for model.layers.0.self_attn.o_proj is above min(in 16, out 16)");
    lora_config_free(&c);
    lora_config_init(&c);
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "no LoRA target modules");
    CHECK_OK(lora_config_set_targets(&c, "k_proj"));
    c.rank = 9; /* k_proj is (8, 16) */
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "above min(in 16, out 8)");
    c.rank = 0;
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "the rank must be at least 1");
    c.rank = 2;
    c.dropout = 1;
    CHECK_FAILS_WITH(lora_create(&s, ll, &c), "lora_dropout = 1");
    lora_config_free(&c);
done:
    model_free(ll);
    model_free(g2);
}

static void test_init(void) {
    model_config lc = tiny_llama();
    model *m = tiny_model(&lc, 3);
    if (!m) return;
    lora_config c;
    lora_config_init(&c);
    c.rank = 4;
    c.seed = 5;
    CHECK_OK(lora_config_set_targets(&c, "q_proj,down_proj"));
    lora_set *s1 = NULL, *s2 = NULL, *s3 = NULL, *s4 = NULL;
    CHECK_OK(lora_create(&s1, m, &c));
    CHECK_OK(lora_create(&s2, m, &c));
    c.seed = 6;
    CHECK_OK(lora_create(&s3, m, &c));
    c.seed = 5;
    CHECK_OK(lora_config_set_targets(&c, "down_proj"));
    CHECK_OK(lora_create(&s4, m, &c));
    if (!s1 || !s2 || !s3 || !s4) goto done;
    for (int i = 0; i < s1->n_modules; i++) {
        lora_module *a = &s1->modules[i];
        /* kaiming_uniform_(a=√5): U(−1/√in, 1/√in); B = 0. */
        double bound = 1 / sqrt((double)a->in), lo = 1, hi = -1, sum = 0;
        for (int64_t j = 0; j < a->A.numel; j++) {
            lo = fmin(lo, a->A.data[j]);
            hi = fmax(hi, a->A.data[j]);
            sum += a->A.data[j];
        }
        CHECK_MSG(lo >= -bound && hi <= bound && hi - lo > bound, "%s: A in [%g, %g], bound %g",
                  a->path, lo, hi, bound);
        CHECK(fabs(sum / (double)a->A.numel) < bound / 2);
        int zero = 1;
        for (int64_t j = 0; j < a->B.numel; j++) zero &= a->B.data[j] == 0;
        CHECK(zero);
        CHECK(memcmp(a->A.data, s2->modules[i].A.data, (size_t)a->A.numel * sizeof(real)) == 0);
        CHECK(memcmp(a->A.data, s3->modules[i].A.data, (size_t)a->A.numel * sizeof(real)) != 0);
    }
    /* A module's values depend on its path, not on which others are targeted. */
    lora_module *d1 = lora_find(s1, "model.layers.1.mlp.down_proj");
    lora_module *d4 = lora_find(s4, "model.layers.1.mlp.down_proj");
    CHECK(d1 && d4 && memcmp(d1->A.data, d4->A.data, (size_t)d1->A.numel * sizeof(real)) == 0);
    CHECK(lora_num_tensors(s1) == 2 * s1->n_modules && lora_num_params(s1) > 0);
    CHECK(lora_tensor(s1, 1) == &s1->modules[0].B && lora_tensor(s1, 2 * s1->n_modules) == NULL);

    /* A fresh adapter changes nothing (B = 0), bit for bit. */
    int B = 2, T = 5, N = B * T;
    int32_t tok[10], tgt[10];
    tiny_batch(tok, tgt, N, lc.vocab_size, 4);
    model_acts *a = NULL;
    CHECK_OK(model_acts_create(&a, m, B, T));
    if (a) {
        double l0, l1;
        int64_t n;
        size_t bytes = (size_t)N * lc.vocab_size * sizeof(real);
        real *before = malloc(bytes);
        CHECK_OK(model_forward(m, a, tok, tgt, &l0, &n));
        if (before) memcpy(before, model_acts_logits(a), bytes);
        CHECK_OK(lora_attach(s1, m));
        CHECK_FAILS_WITH(lora_attach(s1, m), "already attached");
        CHECK_FAILS_WITH(lora_attach(s2, m), "already carries an adapter");
        CHECK_OK(model_forward(m, a, tok, tgt, &l1, &n));
        CHECK(before && memcmp(before, model_acts_logits(a), bytes) == 0 && l0 == l1);
        lora_detach(s1);
        CHECK(m->layers[0].q.adapter == NULL);
        free(before);
    }
    model_acts_free(a);
    /* An adapter for another shape does not attach. */
    model_config other = lc;
    other.hidden_size = 24;
    other.head_dim = 6;
    model *m2 = tiny_model(&other, 1);
    if (m2) CHECK_FAILS_WITH(lora_attach(s1, m2), "made for another base");
    model_free(m2);
done:
    lora_free(s1);
    lora_free(s2);
    lora_free(s3);
    lora_free(s4);
    lora_config_free(&c);
    model_free(m);
}

/* Dropout through one module's hook: A = e_0 (rank 1) makes u_n = x̃_n0. */
static void test_dropout(void) {
    model_config lc = tiny_llama();
    model *m = tiny_model(&lc, 4);
    if (!m) return;
    lora_config c;
    lora_config_init(&c);
    c.rank = 1;
    c.alpha = 1;
    c.dropout = 0.3;
    CHECK_OK(lora_config_set_targets(&c, "model.layers.0.self_attn.q_proj"));
    lora_set *s = NULL;
    CHECK_OK(lora_create(&s, m, &c));
    int N = 4000, in = lc.hidden_size, out = lc.num_heads * lc.head_dim;
    real *x = malloc((size_t)N * in * sizeof *x), *y = calloc((size_t)N * out, sizeof *y);
    real *y2 = calloc((size_t)N * out, sizeof *y2);
    if (!s || !x || !y || !y2) goto done;
    CHECK_OK(lora_attach(s, m));
    CHECK_OK(lora_reserve(s, N));
    lora_module *mod = &s->modules[0];
    memset(mod->A.data, 0, (size_t)mod->A.numel * sizeof(real));
    mod->A.data[0] = 1;
    for (int o = 0; o < out; o++) mod->B.data[o] = 1;
    for (int64_t i = 0; i < (int64_t)N * in; i++) x[i] = 1;
    const model_adapter_ops *ops = mod->linear->adapter;
    /* Evaluation: no dropout, y = x_0 = 1 everywhere. */
    ops->forward(mod, x, y, N);
    int ones = 0;
    for (int n = 0; n < N; n++) ones += y[(int64_t)n * out] == 1;
    CHECK(ones == N && lora_dropout_counter(s) == 0);
    /* Training: a fraction p of rows dropped, the rest scaled by 1/(1 − p). */
    lora_set_training(s, 1);
    memset(y, 0, (size_t)N * out * sizeof *y);
    ops->forward(mod, x, y, N);
    int dropped = 0, scaled = 0;
    for (int n = 0; n < N; n++) {
        dropped += y[(int64_t)n * out] == 0;
        scaled += fabs(y[(int64_t)n * out] - 1 / 0.7) < 1e-6;
    }
    CHECK_MSG(fabs(dropped / (double)N - 0.3) < 0.03, "dropped fraction %g", dropped / (double)N);
    CHECK(dropped + scaled == N);
    CHECK(lora_dropout_counter(s) == 1);
    /* The next forward draws another mask; resetting the counter replays it. */
    ops->forward(mod, x, y2, N);
    CHECK(memcmp(y, y2, (size_t)N * out * sizeof *y) != 0);
    lora_set_dropout_counter(s, 0);
    memset(y2, 0, (size_t)N * out * sizeof *y2);
    ops->forward(mod, x, y2, N);
    CHECK(memcmp(y, y2, (size_t)N * out * sizeof *y) == 0 && lora_dropout_counter(s) == 1);
done:
    free(x);
    free(y);
    free(y2);
    lora_free(s);
    lora_config_free(&c);
    model_free(m);
}

/* A batch larger than the reserved rows runs in chunks and recomputes x̃Aᵀ
 * in backward: the same gradients as one chunk. */
static void test_chunks(void) {
    model_config lc = tiny_llama();
    model *m = tiny_model(&lc, 5);
    if (!m) return;
    int B = 5, T = 60, N = B * T; /* 300 rows > the 256 reserved by default */
    int32_t *tok = malloc((size_t)N * sizeof *tok), *tgt = malloc((size_t)N * sizeof *tgt);
    lora_set *s[2] = {NULL, NULL};
    model_acts *a = NULL;
    real *g[2] = {NULL, NULL};
    lora_config c;
    lora_config_init(&c);
    c.rank = 3;
    c.dropout = 0.2;
    CHECK_OK(lora_config_set_targets(&c, "all-linear"));
    CHECK_OK(model_acts_create(&a, m, B, T));
    if (!tok || !tgt || !a) goto done;
    tiny_batch(tok, tgt, N, lc.vocab_size, 8);
    for (int k = 0; k < 2; k++) {
        CHECK_OK(lora_create(&s[k], m, &c));
        if (!s[k]) goto done;
        uint64_t seed = 77;
        for (int i = 0; i < s[k]->n_modules; i++)
            for (int64_t j = 0; j < s[k]->modules[i].B.numel; j++)
                s[k]->modules[i].B.data[j] = (real)(0.3 * tiny_uniform(&seed));
        if (k == 1) CHECK_OK(lora_reserve(s[k], N));
        CHECK(s[k]->cap_rows == (k ? N : 256));
        CHECK_OK(lora_attach(s[k], m));
        CHECK_OK(lora_want_grads(s[k]));
        lora_set_training(s[k], 1);
        double sum;
        int64_t n;
        CHECK_OK(model_forward(m, a, tok, tgt, &sum, &n));
        CHECK_OK(model_backward(m, a, 1.0 / (double)n));
        lora_detach(s[k]);
        g[k] = s[k]->grad_storage;
    }
    int64_t n = lora_num_params(s[0]);
    double e = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)g[0][i] - g[1][i]));
        mx = fmax(mx, fabs((double)g[1][i]));
    }
    CHECK_MSG(mx > 0 && e <= 1e-5 * mx, "chunked gradients differ: %g of %g", e, mx);
done:
    lora_free(s[0]);
    lora_free(s[1]);
    lora_config_free(&c);
    model_acts_free(a);
    free(tok);
    free(tgt);
    model_free(m);
}

static void test_adamw(void) {
    /* transformers' get_cosine_schedule_with_warmup(warmup 2, total 5). */
    const double want[] = {0, 0.5, 1, 0.75, 0.25, 0};
    for (int k = 0; k < 6; k++) CHECK_NEAR(adamw_schedule(k, 2, 5), want[k], 1e-15);
    CHECK(adamw_schedule(3, 0, 0) == 1 && adamw_schedule(1, 4, 0) == 0.25);

    /* Clipping: torch's clip_grad_norm_. */
    real d1[2] = {0, 0}, g1[2] = {3, 0}, d2[1] = {0}, g2[1] = {4};
    model_param p1 = {.name = "p1", .ndim = 1, .shape = {2}, .numel = 2, .data = d1, .grad = g1};
    model_param p2 = {.name = "p2", .ndim = 1, .shape = {1}, .numel = 1, .data = d2, .grad = g2};
    model_param *ps[2] = {&p1, &p2};
    CHECK_NEAR(adamw_clip_grad_norm(ps, 2, 10), 5, 1e-6);
    CHECK(g1[0] == 3 && g2[0] == 4);
    CHECK_NEAR(adamw_clip_grad_norm(ps, 2, 1), 5, 1e-6);
    CHECK_NEAR(g1[0], 3 / (5 + 1e-6), 1e-6);
    CHECK_NEAR(g2[0], 4 / (5 + 1e-6), 1e-6);

    /* Three updates of one value against torch's formula in double. */
    real x[1] = {0.5f}, gx[1];
    model_param px = {.name = "x", .ndim = 1, .shape = {1}, .numel = 1, .data = x, .grad = gx};
    model_param *pp = &px;
    adamw_config oc;
    adamw_config_init(&oc);
    oc.lr = 0.1;
    oc.weight_decay = 0.1;
    oc.max_grad_norm = 0;
    adamw *o = NULL;
    CHECK_OK(adamw_create(&o, &pp, 1, &oc));
    if (!o) return;
    double X = 0.5, M = 0, V = 0;
    const double grads[] = {0.3, -0.2, 0.05};
    for (int t = 1; t <= 3; t++) {
        gx[0] = (real)grads[t - 1];
        CHECK_OK(adamw_step(o));
        double g = (real)grads[t - 1];
        X *= 1 - 0.1 * 0.1;
        M = 0.9 * M + 0.1 * g;
        V = 0.999 * V + 0.001 * g * g;
        X -= 0.1 / (1 - pow(0.9, t)) * M / (sqrt(V) / sqrt(1 - pow(0.999, t)) + 1e-8);
        CHECK_NEAR(x[0], X, 1e-6);
    }
    CHECK(o->step == 3);
    /* A non-finite gradient stops the update and leaves the value alone. */
    real keep = x[0];
    gx[0] = NAN;
    CHECK_FAILS_WITH(adamw_step(o), "gradient norm is nan");
    CHECK(x[0] == keep && o->step == 3);

    /* State files: a restored optimizer continues bit for bit. */
    CHECK_OK(adamw_save(o, "adamw_state.safetensors"));
    adamw *o2 = NULL;
    real y[1] = {x[0]}, gy[1];
    model_param py = {.name = "x", .ndim = 1, .shape = {1}, .numel = 1, .data = y, .grad = gy};
    model_param *ppy = &py;
    CHECK_OK(adamw_create(&o2, &ppy, 1, &oc));
    if (o2) {
        CHECK_OK(adamw_load(o2, "adamw_state.safetensors"));
        gx[0] = gy[0] = 0.7f;
        CHECK_OK(adamw_step(o));
        CHECK_OK(adamw_step(o2));
        CHECK(o2->step == 4 && x[0] == y[0]);
        CHECK_OK(adamw_save(o, "adamw_a.safetensors"));
        CHECK_OK(adamw_save(o2, "adamw_b.safetensors"));
        CHECK(ts_same_file("adamw_a.safetensors", "adamw_b.safetensors"));
    }
    adamw_free(o2);
    /* Another configuration (other shapes) is refused. */
    real z[2], gz[2];
    model_param pz = {.name = "x", .ndim = 1, .shape = {2}, .numel = 2, .data = z, .grad = gz};
    model_param *ppz = &pz;
    o2 = NULL;
    CHECK_OK(adamw_create(&o2, &ppz, 1, &oc));
    if (o2) CHECK_FAILS_WITH(adamw_load(o2, "adamw_state.safetensors"), "another configuration");
    adamw_free(o2);
    model_param nograd = px;
    nograd.grad = NULL;
    model_param *png = &nograd;
    CHECK_FAILS_WITH(adamw_create(&o2, &png, 1, &oc), "has no gradient buffer");
    adamw_free(o);
}

/* Σ_k c_k B_k A_k by loops, in double. */
static void naive_sum(double *W, int out, int in, int K, real **B, real **A, const int *r,
                      const double *c) {
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0;
            for (int k = 0; k < K; k++)
                for (int j = 0; j < r[k]; j++) acc += c[k] * B[k][o * r[k] + j] * A[k][j * in + i];
            W[o * in + i] += acc;
        }
}

static void test_delta(void) {
    enum { OUT = 12, IN = 10, K = 3 };
    uint64_t seed = 9;
    int rank[K] = {1, 2, 3};
    double coef[K] = {0.5, -1.25, 2};
    real *A[K], *B[K];
    for (int k = 0; k < K; k++) {
        A[k] = malloc((size_t)rank[k] * IN * sizeof(real));
        B[k] = malloc((size_t)OUT * rank[k] * sizeof(real));
        for (int j = 0; j < rank[k] * IN; j++) A[k][j] = (real)tiny_uniform(&seed);
        for (int j = 0; j < OUT * rank[k]; j++) B[k][j] = (real)tiny_uniform(&seed);
    }
    real W[OUT * IN];
    double ref[OUT * IN];
    for (int i = 0; i < OUT * IN; i++) ref[i] = W[i] = (real)tiny_uniform(&seed);
    CHECK_OK(ts_blas_product(W, IN, OUT, IN, K, (const real *const *)B, (const real *const *)A,
                             rank, coef));
    naive_sum(ref, OUT, IN, K, B, A, rank, coef);
    CHECK_MSG(ts_max_err(W, ref, OUT * IN) < 1e-5, "product merge vs sum of deltas: %g",
              ts_max_err(W, ref, OUT * IN));

    /* Averaging A and B separately is not the same update (K adapters of rank 2). */
    int r2[K] = {2, 2, 2};
    double p[K] = {1.0 / 3, 1.0 / 3, 1.0 / 3};
    real A2[K][2 * IN], B2[K][OUT * 2];
    real *A2p[K], *B2p[K];
    for (int k = 0; k < K; k++) {
        for (int j = 0; j < 2 * IN; j++) A2[k][j] = (real)tiny_uniform(&seed);
        for (int j = 0; j < OUT * 2; j++) B2[k][j] = (real)tiny_uniform(&seed);
        A2p[k] = A2[k];
        B2p[k] = B2[k];
    }
    real Wp[OUT * IN] = {0}, Am[2 * IN] = {0}, Bm[OUT * 2] = {0};
    CHECK_OK(ts_blas_product(Wp, IN, OUT, IN, K, (const real *const *)B2p, (const real *const *)A2p,
                             r2, p));
    double sum[OUT * IN] = {0}, avg[OUT * IN] = {0}, diff = 0, norm = 0;
    naive_sum(sum, OUT, IN, K, B2p, A2p, r2, p);
    CHECK_MSG(ts_max_err(Wp, sum, OUT * IN) < 1e-5, "mean of products: %g",
              ts_max_err(Wp, sum, OUT * IN));
    for (int k = 0; k < K; k++) {
        for (int j = 0; j < 2 * IN; j++) Am[j] += A2[k][j] / K;
        for (int j = 0; j < OUT * 2; j++) Bm[j] += B2[k][j] / K;
    }
    real *Bmp = Bm, *Amp = Am;
    int one_r = 2;
    double one = 1;
    naive_sum(avg, OUT, IN, 1, &Bmp, &Amp, &one_r, &one);
    for (int i = 0; i < OUT * IN; i++) {
        diff += (Wp[i] - avg[i]) * (Wp[i] - avg[i]);
        norm += (double)Wp[i] * Wp[i];
    }
    CHECK_MSG(sqrt(diff) > 0.1 * sqrt(norm), "mean(B)·mean(A) should differ from mean(B·A)");
    CHECK_FAILS_WITH(ts_blas_product(W, IN, OUT, IN, 0, NULL, NULL, NULL, NULL), "no adapters");
    for (int k = 0; k < K; k++) {
        free(A[k]);
        free(B[k]);
    }

    /* On a model: dense deltas, merge of one set, product merge of two sets
     * with different ranks and partly different targets. */
    model_config gc = tiny_gpt2();
    model *m = tiny_model(&gc, 6), *m1 = tiny_model(&gc, 6), *m2 = tiny_model(&gc, 6);
    lora_set *s1 = NULL, *s2 = NULL;
    lora_config c;
    lora_config_init(&c);
    c.rank = 2;
    c.alpha = 3;
    CHECK_OK(lora_config_set_targets(&c, "c_attn,c_fc"));
    if (m) CHECK_OK(lora_create(&s1, m, &c));
    c.rank = 3;
    c.alpha = 2;
    c.seed = 4;
    CHECK_OK(lora_config_set_targets(&c, "c_fc"));
    if (m) CHECK_OK(lora_create(&s2, m, &c));
    lora_config_free(&c);
    if (!m || !m1 || !m2 || !s1 || !s2) goto done;
    lora_set *sets[2] = {s1, s2};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < sets[k]->n_modules; i++)
            for (int64_t j = 0; j < sets[k]->modules[i].B.numel; j++)
                sets[k]->modules[i].B.data[j] = (real)tiny_uniform(&seed);
    const lora_module *mod = &s1->modules[0];
    real *dw = malloc((size_t)mod->out * mod->in * sizeof *dw);
    real *dwt = malloc((size_t)mod->out * mod->in * sizeof *dwt);
    if (dw && dwt) {
        delta_dense(mod, dw, 0);
        delta_dense(mod, dwt, 1);
        double e = 0, t = 0;
        for (int o = 0; o < mod->out; o++)
            for (int i = 0; i < mod->in; i++) {
                double want = 0;
                for (int j = 0; j < mod->rank; j++)
                    want += mod->B.data[o * mod->rank + j] * mod->A.data[j * mod->in + i];
                e = fmax(e, fabs(dw[o * mod->in + i] - mod->scale * want));
                t = fmax(t, fabs(dwt[i * mod->out + o] - dw[o * mod->in + i]));
            }
        CHECK_MSG(e < 1e-5 && t < 1e-6, "dense delta: %g, transposed: %g", e, t);
    }
    free(dw);
    free(dwt);
    /* delta_merge: W += s·B·A on every targeted weight, nothing else. */
    CHECK_OK(delta_merge(m1, s1));
    const double weights[2] = {0.25, 0.75};
    CHECK_OK(ts_blas_merge(m2, sets, weights, 2));
    double e1 = 0, e2 = 0;
    for (int i = 0; i < m->n_params; i++) {
        model_param *p = &m->params[i], *q1 = &m1->params[i], *q2 = &m2->params[i];
        double *w1 = malloc((size_t)p->numel * sizeof *w1),
               *w2 = malloc((size_t)p->numel * sizeof *w2);
        for (int64_t j = 0; j < p->numel; j++) w1[j] = w2[j] = p->data[j];
        char path[MODEL_NAME_MAX];
        snprintf(path, sizeof path, "%s", p->name);
        char *dot = strrchr(path, '.');
        if (dot && strcmp(dot, ".weight") == 0) *dot = '\0';
        for (int k = 0; k < 2; k++) {
            const lora_module *md = lora_find(sets[k], path);
            if (!md) continue;
            real *Bk = md->B.data, *Ak = md->A.data;
            double c1 = md->scale, c2 = weights[k] * md->scale;
            if (k == 0) naive_sum(w1, md->out, md->in, 1, &Bk, &Ak, &md->rank, &c1);
            naive_sum(w2, md->out, md->in, 1, &Bk, &Ak, &md->rank, &c2);
        }
        e1 = fmax(e1, ts_max_err(q1->data, w1, p->numel));
        e2 = fmax(e2, ts_max_err(q2->data, w2, p->numel));
        free(w1);
        free(w2);
    }
    CHECK_MSG(e1 < 1e-5 && e2 < 1e-5, "merge into the model: %g, product merge: %g", e1, e2);
    /* Sets made for another base are refused before anything changes. */
    model_config other = gc;
    other.hidden_size = 32;
    other.head_dim = 16;
    model *m3 = tiny_model(&other, 1);
    if (m3) {
        CHECK_FAILS_WITH(delta_merge(m3, s1), "made for another base");
        CHECK_FAILS_WITH(ts_blas_merge(m3, sets, weights, 2), "made for another base");
    }
    model_free(m3);
done:
    lora_free(s1);
    lora_free(s2);
    model_free(m);
    model_free(m1);
    model_free(m2);
}

/* adapter_config.json as Python's json.dumps(indent=2, sort_keys=True). */
static const char *const WANT_JSON = "{\n"
                                     "  \"alpha_pattern\": {\n"
                                     "    \"o_proj\": 0.5\n"
                                     "  },\n"
                                     "  \"base_model_name_or_path\": \"org/base-\\u00e9\",\n"
                                     "  \"bias\": \"none\",\n"
                                     "  \"exclude_modules\": null,\n"
                                     "  \"fan_in_fan_out\": false,\n"
                                     "  \"inference_mode\": true,\n"
                                     "  \"init_lora_weights\": true,\n"
                                     "  \"layers_pattern\": null,\n"
                                     "  \"layers_to_transform\": [\n"
                                     "    0,\n"
                                     "    1\n"
                                     "  ],\n"
                                     "  \"lora_alpha\": 16,\n"
                                     "  \"lora_dropout\": 0.05,\n"
                                     "  \"modules_to_save\": null,\n"
                                     "  \"peft_type\": \"LORA\",\n"
                                     "  \"r\": 4,\n"
                                     "  \"rank_pattern\": {\n"
                                     "    \"k_proj\": 1,\n"
                                     "    \"layers.0.self_attn.q_proj\": 2\n"
                                     "  },\n"
                                     "  \"revision\": null,\n"
                                     "  \"target_modules\": [\n"
                                     "    \"q_proj\",\n"
                                     "    \"k_proj\",\n"
                                     "    \"o_proj\"\n"
                                     "  ],\n"
                                     "  \"task_type\": \"CAUSAL_LM\",\n"
                                     "  \"use_dora\": false,\n"
                                     "  \"use_rslora\": true\n"
                                     "}";

static void test_peft_config(void) {
    model_config lc = tiny_llama();
    model *m = tiny_model(&lc, 7);
    lora_config c, back;
    lora_config_init(&c);
    lora_set *s = NULL, *s2 = NULL;
    char *json = NULL, *json2 = NULL;
    size_t len, len2;
    if (!m) return;
    c.rank = 4;
    c.alpha = 16;
    c.dropout = 0.05;
    c.use_rslora = 1;
    CHECK_OK(lora_config_set_targets(&c, "q_proj,k_proj,o_proj"));
    CHECK_OK(lora_config_add_rank_pattern(&c, "layers.0.self_attn.q_proj", 2));
    CHECK_OK(lora_config_add_rank_pattern(&c, "k_proj", 1));
    CHECK_OK(lora_config_add_alpha_pattern(&c, "o_proj", 0.5));
    CHECK_OK(lora_config_set_base_model(&c, "org/base-\xc3\xa9"));
    c.layers = malloc(2 * sizeof *c.layers);
    c.layers[0] = 0;
    c.layers[1] = 1;
    c.n_layers = 2;
    CHECK_OK(lora_create(&s, m, &c));
    if (!s) goto done;
    CHECK_OK(peft_config_json(s, &json, &len));
    CHECK_MSG(json && strcmp(json, WANT_JSON) == 0, "got:\n%s", json ? json : "");
    /* Read back: the same config, so the same bytes. */
    CHECK_OK(peft_parse_config(&back, json, len, "test"));
    CHECK(back.rank == 4 && back.alpha == 16 && back.dropout == 0.05 && back.use_rslora);
    CHECK(back.n_targets == 3 && back.n_rank_pattern == 2 && back.n_layers == 2);
    CHECK(back.base_model && strcmp(back.base_model, c.base_model) == 0);
    CHECK_OK(lora_create(&s2, m, &back));
    if (s2) CHECK_OK(peft_config_json(s2, &json2, &len2));
    CHECK(json2 && len2 == len && memcmp(json, json2, len) == 0);
    lora_config_free(&back);

    /* PEFT's other spellings. */
    const char *regex_cfg = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4.5, "
                            "\"target_modules\": \".*\\\\.v_proj\", \"layers_to_transform\": [1], "
                            "\"exclude_modules\": null, \"loftq_config\": {}, \"use_dora\": false}";
    CHECK_OK(peft_parse_config(&back, regex_cfg, strlen(regex_cfg), "t"));
    CHECK(back.target_regex && strcmp(back.target_regex, ".*\\.v_proj") == 0);
    CHECK(back.n_layers == 1 && back.layers[0] == 1 && back.alpha == 4.5);
    lora_free(s2);
    s2 = NULL;
    CHECK_FAILS_WITH(lora_create(&s2, m, &back), "layers_to_transform cannot be used");
    free(back.layers);
    back.layers = NULL;
    back.n_layers = 0;
    CHECK_OK(lora_create(&s2, m, &back));
    CHECK(s2 && s2->n_modules == 2 &&
          strcmp(s2->modules[1].path, "model.layers.1.self_attn.v_proj") == 0);
    lora_config_free(&back);
    const char *all = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 2, "
                      "\"target_modules\": \"all-linear\"}";
    CHECK_OK(peft_parse_config(&back, all, strlen(all), "t"));
    CHECK(back.n_targets == 1 && !back.target_regex);
    lora_config_free(&back);

    /* Negative zero (found by fuzz_peft_config): written as "-0.0", so the
     * second write equals the first instead of turning into the integer 0. */
    const char *neg0 = "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": -0.0, "
                       "\"alpha_pattern\": {\"q_proj\": -0.0}, \"target_modules\": [\"q_proj\"]}";
    CHECK_OK(peft_parse_config(&back, neg0, strlen(neg0), "t"));
    lora_free(s2);
    s2 = NULL;
    free(json2);
    json2 = NULL;
    CHECK_OK(lora_create(&s2, m, &back));
    if (s2) CHECK_OK(peft_config_json(s2, &json2, &len2));
    CHECK_MSG(json2 && strstr(json2, "\"lora_alpha\": -0.0") && strstr(json2, "\"q_proj\": -0.0"),
              "got:\n%s", json2 ? json2 : "");
    lora_config_free(&back);
    if (json2) {
        char *json3 = NULL;
        size_t len3 = 0;
        lora_set *s3 = NULL;
        CHECK_OK(peft_parse_config(&back, json2, len2, "t"));
        CHECK_OK(lora_create(&s3, m, &back));
        if (s3) CHECK_OK(peft_config_json(s3, &json3, &len3));
        CHECK(json3 && len3 == len2 && memcmp(json2, json3, len2) == 0);
        free(json3);
        lora_free(s3);
        lora_config_free(&back);
    }

    /* Refusals, each naming the field. */
    struct {
        const char *json, *needle;
    } bad[] = {
        {"[1]", "not a JSON object"},
        {"{\"r\": 4}", "no \"peft_type\""},
        {"{\"peft_type\": \"LOHA\"}", "unknown peft_type \"LOHA\""},
        {"{\"peft_type\": \"LORA\", \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
         "\"r\" must be an integer"},
        {"{\"peft_type\": \"LORA\", \"r\": 0, \"lora_alpha\": 8, \"target_modules\": [\"q_proj\"]}",
         "the rank must be at least 1"},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8}", "no \"target_modules\""},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"target_modules\": [1]}",
         "\"target_modules\" item 0"},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"bias\": \"all\", "
         "\"target_modules\": [\"q_proj\"]}",
         "bias must be \"none\""},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"modules_to_save\": "
         "[\"lm_head\"], "
         "\"target_modules\": [\"q_proj\"]}",
         "\"modules_to_save\" is set"},
        {"{\"peft_type\": \"LORA\", \"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"q\": 1.5}, "
         "\"target_modules\": [\"q_proj\"]}",
         "rank must be a whole number"},
        {"{\"peft_type\": \"LORA\", \"peft_type\": \"LORA\"}", "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK_FAILS_WITH(peft_parse_config(&back, bad[i].json, strlen(bad[i].json), "cfg.json"),
                         bad[i].needle);
done:
    free(json);
    free(json2);
    lora_free(s);
    lora_free(s2);
    lora_config_free(&c);
    model_free(m);
}

/* Mixtral's router (block_sparse_moe.gate) is frozen unless named (issue
 * 16): all-linear adapts q, k, v, o and every expert's w1, w2, w3 and writes
 * that list into adapter_config.json; "gate", the router's path or a regular
 * expression adds it. */
static void test_router_targets(void) {
    model_config mc;
    CHECK_OK(model_config_preset(&mc, "mixtral", "tiny"));
    model *mx = tiny_model(&mc, 3);
    if (!mx) return;
    int L = mc.num_layers, E = mc.num_experts;
    lora_set *s = resolve(mx, "all-linear", 2);
    CHECK_MSG(s && s->n_modules == (4 + 3 * E) * L, "all-linear: %d modules, want %d",
              s ? s->n_modules : -1, (4 + 3 * E) * L);
    if (s) {
        for (int i = 0; i < s->n_modules; i++)
            CHECK_MSG(!strstr(s->modules[i].path, "block_sparse_moe.gate"),
                      "all-linear adapts the router %s", s->modules[i].path);
        char *json = NULL;
        size_t len;
        CHECK_OK(peft_config_json(s, &json, &len));
        CHECK(json && strstr(json, "\"w1\"") && !strstr(json, "\"gate\""));
        free(json);
    }
    lora_free(s);
    /* named: one router per layer, (E, C) */
    s = resolve(mx, "q_proj,k_proj,v_proj,o_proj,gate,w1,w2,w3", 2);
    CHECK(s && s->n_modules == (5 + 3 * E) * L);
    int routers = 0;
    for (int i = 0; s && i < s->n_modules; i++) {
        char want[64];
        snprintf(want, sizeof want, "model.layers.%d.block_sparse_moe.gate", s->modules[i].layer);
        if (strcmp(s->modules[i].path, want) != 0) continue;
        routers++;
        CHECK(s->modules[i].out == E && s->modules[i].in == mc.hidden_size);
    }
    CHECK_MSG(routers == L, "%d routers adapted by name, want %d", routers, L);
    lora_free(s);
    s = resolve(mx, "gate", 2);
    CHECK(s && s->n_modules == L);
    lora_free(s);
    s = resolve(mx, "model.layers.1.block_sparse_moe.gate", 2);
    CHECK(s && s->n_modules == 1 && s->modules[0].layer == 1);
    lora_free(s);
    lora_config c;
    lora_config_init(&c);
    c.rank = 2;
    CHECK_OK(lora_config_set_target_regex(&c, ".*\\.block_sparse_moe\\.gate"));
    CHECK_OK(lora_create(&s, mx, &c));
    CHECK(s && s->n_modules == L);
    lora_free(s);
    lora_config_free(&c);
    model_free(mx);
}

int main(void) {
    test_targets();
    test_router_targets();
    test_init();
    test_dropout();
    test_chunks();
    test_adamw();
    test_delta();
    test_peft_config();
    return check_finish();
}
