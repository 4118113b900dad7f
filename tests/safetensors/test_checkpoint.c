/* test_checkpoint — model directories: save -> load round trips (bit exact
 * in fp32, correctly rounded in bf16/fp16), the on-disk layout transformers
 * expects (Conv1D (in, out), no tied lm_head), GPT-2 hub names, sharded
 * directories, and mismatches between config.json and the weights. */
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "util/err.h"

#include <sys/stat.h>

static model *make(const char *arch, const char *preset, int family, int tie, uint64_t seed) {
    model_config c;
    if (model_config_preset(&c, arch, preset) != 0) return NULL;
    if (family == MODEL_FAMILY_QWEN2) {
        c.family = MODEL_FAMILY_QWEN2;
        c.qkv_bias = 1;
    }
    if (tie >= 0) c.tie_embeddings = tie;
    model *m;
    if (model_create(&m, &c) != 0) return NULL;
    model_init_random(m, seed);
    /* Make biases and norms non-trivial so a dropped or swapped one shows. */
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i].ndim == 1)
            for (int64_t j = 0; j < m->params[i].numel; j++)
                m->params[i].data[j] += 0.001f * (float)(j % 7) - 0.002f * (float)i;
    return m;
}

static int same_values(const model *a, const model *b) {
    if (a->n_params != b->n_params) return 0;
    for (int i = 0; i < a->n_params; i++) {
        const model_param *p = &a->params[i], *q = &b->params[i];
        if (strcmp(p->name, q->name) != 0 || p->numel != q->numel ||
            memcmp(p->data, q->data, (size_t)p->numel * sizeof(real)) != 0) {
            fprintf(stderr, "differs: %s\n", p->name);
            return 0;
        }
    }
    return 1;
}

static void round_trip(model *m, const char *dirname) {
    const char *dir = ts_tmp(dirname);
    CHECK_OK(checkpoint_save(m, dir, "float32"));
    model *back = NULL;
    CHECK_OK(checkpoint_load(&back, dir));
    if (back) {
        CHECK(memcmp(&back->cfg, &m->cfg, sizeof m->cfg) == 0);
        CHECK_MSG(same_values(m, back), "%s: values changed", dirname);
        model_free(back);
    }
}

static void test_round_trips(void) {
    model *m = make("llama", "tiny", 0, 0, 1);
    CHECK(m && !m->cfg.tie_embeddings);
    if (m) {
        round_trip(m, "llama-untied");
        /* The untied head is stored. */
        safetensors_dir *d;
        CHECK_OK(safetensors_dir_open(&d, ts_tmp("llama-untied")));
        if (d) {
            CHECK(safetensors_dir_find(d, "lm_head.weight") != NULL);
            CHECK(safetensors_dir_count(d) == m->n_params);
            safetensors_dir_close(d);
        }
        model_free(m);
    }
    m = make("llama", "tiny", 0, 1, 2);
    if (m) {
        round_trip(m, "llama-tied");
        safetensors_file *f;
        CHECK_OK(safetensors_open(&f, ts_tmp("llama-tied/model.safetensors")));
        if (f) {
            /* save_pretrained leaves the tied head out; metadata as it writes. */
            CHECK(safetensors_find(f, "lm_head.weight") == NULL);
            CHECK(safetensors_find(f, "model.embed_tokens.weight") != NULL);
            CHECK(safetensors_metadata(f, "format") &&
                  !strcmp(safetensors_metadata(f, "format"), "pt"));
            safetensors_close(f);
        }
        model_free(m);
    }
    m = make("llama", "tiny", MODEL_FAMILY_QWEN2, 1, 3);
    CHECK(m && model_find_param(m, "model.layers.1.self_attn.k_proj.bias"));
    if (m) {
        round_trip(m, "qwen2");
        model_free(m);
    }
    m = make("gpt2", "tiny", 0, -1, 4);
    if (m) {
        round_trip(m, "gpt2");
        /* Conv1D weights are (in, out) on disk: element [i][o] is W[o][i]. */
        safetensors_file *f;
        CHECK_OK(safetensors_open(&f, ts_tmp("gpt2/model.safetensors")));
        const model_param *p = model_find_param(m, "transformer.h.1.attn.c_attn.weight");
        if (f && p) {
            const safetensors_tensor *t = safetensors_find(f, p->name);
            CHECK(t && t->ndim == 2 && t->shape[0] == 64 && t->shape[1] == 192);
            CHECK(p->shape[0] == 192 && p->shape[1] == 64);
            float *v = malloc((size_t)p->numel * sizeof *v);
            CHECK(t && safetensors_to_float(t, v) == 0);
            int ok = 1;
            for (int i = 0; t && i < 64; i++)
                for (int o = 0; o < 192; o++) ok &= v[i * 192 + o] == p->data[o * 64 + i];
            CHECK(ok);
            free(v);
            CHECK(safetensors_find(f, "lm_head.weight") == NULL);
            CHECK(safetensors_find(f, "transformer.wpe.weight") != NULL);
        }
        safetensors_close(f);
        model_free(m);
    }
}

/* Saved in bf16 and fp16, every value comes back as the correctly rounded
 * narrow value. */
static void test_narrow_dtypes(void) {
    model *m = make("gpt2", "tiny", 0, -1, 5);
    if (!m) return;
    const char *dtypes[] = {"bfloat16", "float16"};
    for (int k = 0; k < 2; k++) {
        const char *dir = ts_tmp(k ? "gpt2-f16" : "gpt2-bf16");
        CHECK_OK(checkpoint_save(m, dir, dtypes[k]));
        model *back = NULL;
        CHECK_OK(checkpoint_load(&back, dir));
        if (!back) continue;
        CHECK(strcmp(back->cfg.torch_dtype, dtypes[k]) == 0);
        int bad = 0;
        for (int i = 0; i < m->n_params; i++)
            for (int64_t j = 0; j < m->params[i].numel; j++) {
                float x = m->params[i].data[j];
                float want = k ? safetensors_f16_to_f32(safetensors_f32_to_f16(x))
                               : safetensors_bf16_to_f32(safetensors_f32_to_bf16(x));
                bad += back->params[i].data[j] != want;
            }
        CHECK_MSG(bad == 0, "%s: %d values not correctly rounded", dtypes[k], bad);
        safetensors_file *f;
        char path[1024];
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        CHECK_OK(safetensors_open(&f, path));
        if (f) {
            CHECK(safetensors_tensor_at(f, 0)->dtype == (k ? SAFETENSORS_F16 : SAFETENSORS_BF16));
            safetensors_close(f);
        }
        model_free(back);
    }
    CHECK_FAILS_WITH(checkpoint_save(m, ts_tmp("x"), "float64"), "unknown dtype 'float64'");
    model_free(m);
}

/* Copies src (a safetensors file) to dst, renaming or dropping tensors via
 * edit(name) (NULL drops; returns the new name) and appending extra. */
typedef const char *(*edit_fn)(const char *name, char *buf, size_t n);

static void rewrite(const char *src, const char *dst, edit_fn edit, const safetensors_entry *extra,
                    int n_extra) {
    safetensors_file *f;
    if (safetensors_open(&f, src) != 0) {
        fprintf(stderr, "%s\n", err_msg());
        exit(2);
    }
    int n = safetensors_count(f);
    safetensors_entry *e = calloc((size_t)(n + n_extra), sizeof *e);
    char(*names)[256] = calloc((size_t)n, sizeof *names);
    int k = 0;
    for (int i = 0; i < n; i++) {
        const safetensors_tensor *t = safetensors_tensor_at(f, i);
        const char *name = edit ? edit(t->name, names[k], sizeof names[k]) : t->name;
        if (!name) continue;
        e[k].name = name;
        e[k].dtype = t->dtype;
        e[k].ndim = t->ndim;
        memcpy(e[k].shape, t->shape, sizeof t->shape);
        e[k].data = t->data;
        k++;
    }
    for (int i = 0; i < n_extra; i++) e[k++] = extra[i];
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.new", dst);
    CHECK_OK(safetensors_write(tmp, e, k, NULL));
    rename(tmp, dst);
    safetensors_close(f);
    free(names);
    free(e);
}

static const char *strip_transformer(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s", strncmp(name, "transformer.", 12) == 0 ? name + 12 : name);
    return buf;
}

static const char *drop_norm(const char *name, char *buf, size_t n) {
    (void)buf, (void)n;
    return strcmp(name, "model.norm.weight") == 0 ? NULL : name;
}

static const char *keep_all(const char *name, char *buf, size_t n) {
    (void)buf, (void)n;
    return name;
}

/* The original hub "gpt2" layout: no "transformer." prefix, causal-mask
 * buffers, and (in some conversions) a stored copy of the tied head. */
static void test_gpt2_hub_names(void) {
    model *m = make("gpt2", "tiny", 0, -1, 6);
    if (!m) return;
    const char *dir = ts_tmp("gpt2-hub");
    CHECK_OK(checkpoint_save(m, dir, "float32"));
    static float mask[4] = {1, 0, 1, 1};
    static float head[320 * 64];
    safetensors_entry extra[] = {
        {"h.0.attn.bias", SAFETENSORS_F32, 4, {1, 1, 2, 2}, mask},
        {"h.1.attn.masked_bias", SAFETENSORS_F32, 0, {0}, mask},
        {"lm_head.weight", SAFETENSORS_F32, 2, {320, 64}, head},
    };
    char path[1024];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    rewrite(path, path, strip_transformer, extra, 3);
    model *back = NULL;
    CHECK_OK(checkpoint_load(&back, dir));
    if (back) {
        CHECK(same_values(m, back));
        model_free(back);
    }
    /* Both spellings at once is ambiguous. */
    char other[1024];
    snprintf(other, sizeof other, "%s/../gpt2-both", dir);
    mkdir(other, 0755);
    CHECK_OK(checkpoint_save(m, other, "float32"));
    char opath[1100];
    snprintf(opath, sizeof opath, "%s/model.safetensors", other);
    safetensors_entry wte = {"wte.weight", SAFETENSORS_F32, 2, {320, 64}, head};
    rewrite(opath, opath, keep_all, &wte, 1);
    CHECK_FAILS_WITH(checkpoint_load(&back, other),
                     "both 'transformer.wte.weight' and 'wte.weight' are present");
    model_free(m);
}

static void test_mismatches(void) {
    model *m = make("llama", "tiny", 0, 0, 7);
    if (!m) return;
    const char *dir = ts_tmp("llama-bad");
    CHECK_OK(checkpoint_save(m, dir, "float32"));
    char cfgpath[1024], stpath[1024];
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
    snprintf(stpath, sizeof stpath, "%s/model.safetensors", dir);
    model *back = NULL;

    /* config.json says a different MLP width than the weights have. */
    model_config c = m->cfg;
    c.intermediate_size = 200;
    CHECK_OK(model_config_save(&c, cfgpath));
    CHECK_FAILS_WITH(checkpoint_load(&back, dir),
                     "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [176, 64], but "
                     "config.json implies [200, 64]");
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "loading model directory");
    CHECK(back == NULL);

    /* config.json says the attention has biases; the weights have none. */
    c = m->cfg;
    c.qkv_bias = c.o_bias = 1;
    CHECK_OK(model_config_save(&c, cfgpath));
    CHECK_FAILS_WITH(checkpoint_load(&back, dir),
                     "tensor 'model.layers.0.self_attn.q_proj.bias' is missing from the weights");

    /* A parameter the config implies is not in the file. */
    CHECK_OK(model_config_save(&m->cfg, cfgpath));
    rewrite(stpath, stpath, drop_norm, NULL, 0);
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "tensor 'model.norm.weight' is missing");

    /* A tensor the config does not describe. */
    static float bias[64];
    safetensors_entry norm = {"model.norm.weight", SAFETENSORS_F32, 1, {64}, bias};
    safetensors_entry qb = {"model.layers.0.self_attn.q_proj.bias", SAFETENSORS_F32, 1, {64}, bias};
    safetensors_entry both[] = {norm, qb};
    rewrite(stpath, stpath, keep_all, both, 2);
    CHECK_FAILS_WITH(checkpoint_load(&back, dir),
                     "tensor 'model.layers.0.self_attn.q_proj.bias' is not a parameter of the "
                     "model config.json describes");

    /* A parameter stored with an integer dtype. */
    CHECK_OK(checkpoint_save(m, dir, "float32"));
    static int32_t ints[64];
    safetensors_entry inorm = {"model.norm.weight", SAFETENSORS_I32, 1, {64}, ints};
    rewrite(stpath, stpath, drop_norm, &inorm, 1);
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "tensor 'model.norm.weight' has dtype I32");

    /* No config.json; a broken one. */
    CHECK_OK(checkpoint_save(m, dir, "float32"));
    remove(cfgpath);
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "config.json: No such file or directory");
    CHECK_OK(ts_write_bytes(cfgpath, "{\"model_type\": \"llama\"}", 23));
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "required field \"vocab_size\" is missing");
    model_free(m);
}

/* A sharded directory loads like a single file; a missing shard is named. */
static void test_sharded(void) {
    model *m = make("llama", "tiny", 0, 0, 8);
    if (!m) return;
    const char *dir = ts_tmp("llama-sharded");
    CHECK_OK(checkpoint_save(m, dir, "bfloat16"));
    char single[1024], s1[1024], s2[1024], index[1024];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    snprintf(s1, sizeof s1, "%s/model-00001-of-00002.safetensors", dir);
    snprintf(s2, sizeof s2, "%s/model-00002-of-00002.safetensors", dir);
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", dir);
    model *ref = NULL;
    CHECK_OK(checkpoint_load(&ref, dir));

    /* Shard 1: layer 0 and the embedding; shard 2: the rest. */
    safetensors_file *f;
    CHECK_OK(safetensors_open(&f, single));
    if (!f || !ref) return;
    int n = safetensors_count(f);
    safetensors_entry *a = calloc((size_t)n, sizeof *a), *b = calloc((size_t)n, sizeof *b);
    int na = 0, nb = 0;
    size_t cap = 65536, used = 0;
    char *json = malloc(cap);
    used += (size_t)snprintf(json, cap, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < n; i++) {
        const safetensors_tensor *t = safetensors_tensor_at(f, i);
        int first = strstr(t->name, "layers.0.") || strstr(t->name, "embed_tokens");
        safetensors_entry *e = first ? &a[na++] : &b[nb++];
        e->name = t->name;
        e->dtype = t->dtype;
        e->ndim = t->ndim;
        memcpy(e->shape, t->shape, sizeof t->shape);
        e->data = t->data;
        used += (size_t)snprintf(
            json + used, cap - used, "%s\"%s\": \"%s\"", i ? ", " : "", t->name,
            first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors");
    }
    snprintf(json + used, cap - used, "}}");
    CHECK_OK(safetensors_write(s1, a, na, NULL));
    CHECK_OK(safetensors_write(s2, b, nb, NULL));
    safetensors_close(f);
    free(a);
    free(b);
    remove(single);
    CHECK_OK(ts_write_bytes(index, json, strlen(json)));
    free(json);

    model *back = NULL;
    CHECK_OK(checkpoint_load(&back, dir));
    if (back) {
        CHECK(same_values(ref, back));
        model_free(back);
    }
    char moved[1100];
    snprintf(moved, sizeof moved, "%s.moved", s2);
    rename(s2, moved);
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "shard model-00002-of-00002.safetensors (named "
                                                  "by");
    CHECK_FAILS_WITH(checkpoint_load(&back, dir), "No such file or directory");
    model_free(ref);
    model_free(m);
}

int main(void) {
    test_round_trips();
    test_narrow_dtypes();
    test_gpt2_hub_names();
    test_mismatches();
    test_sharded();
    return check_finish();
}
