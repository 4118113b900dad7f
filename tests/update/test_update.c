/* lora/update.h: the factored update of a round and its portable kernel.
 *
 *   - update_apply gives what the BLAS merge (ts_blas_merge) gives, to
 *     1e-6 relative, on Llama and GPT-2 (Conv1D) weights, with adapters of
 *     different ranks, some modules adapted by only some members; it leaves
 *     every other parameter untouched;
 *   - its bits are exactly the documented formula (an element-wise double
 *     sum in fixed order, computed here independently), and identical for
 *     1, 2 and 3 OpenMP threads;
 *   - update_add (explicit factors, e.g. a truncated SVD's) keeps the
 *     model's order, copies, refuses what is not a new 2-D weight with a
 *     rank >= 1, and applies as the formula computed here in double;
 *   - the file round trip keeps every byte, and writing twice gives the same
 *     file; the metadata says format, from, to and round;
 *   - the reader refuses every malformed file with an error naming the rule:
 *     shapes, ranks, unknown names, missing partners, dtypes, NaN and Inf,
 *     bad metadata; update_build and update_apply refuse another base's
 *     adapters or update and leave the model unchanged. */
#include "lora/update.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "tests/check.h"
#include "tests/support/blas_merge.h"
#include "tests/support/ts_model.h"
#include "util/err.h"
#include "util/fio.h"

#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

static double uniform(uint64_t *s) {
    *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
    return (double)(*s >> 11) / 9007199254740992.0 - 0.5;
}

/* A rank-r adapter on targets with random A and B (B non-zero, so B·A != 0). */
static lora_set *make_adapter(const model *m, const char *targets, int rank, double alpha,
                              uint64_t seed) {
    lora_config c;
    lora_config_init(&c);
    c.rank = rank;
    c.alpha = alpha;
    c.seed = seed;
    lora_set *s = NULL;
    if (lora_config_set_targets(&c, targets) != 0 || lora_create(&s, m, &c) != 0) s = NULL;
    lora_config_free(&c);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 7;
    for (int i = 0; s && i < s->n_modules; i++) {
        lora_module *mod = &s->modules[i];
        for (int64_t j = 0; j < mod->A.numel; j++) mod->A.data[j] = (real)(0.5 * uniform(&x));
        for (int64_t j = 0; j < mod->B.numel; j++) mod->B.data[j] = (real)(0.2 * uniform(&x));
    }
    return s;
}

static int same_params(const model *a, const model *b) {
    for (int i = 0; i < a->n_params; i++)
        if (memcmp(a->params[i].data, b->params[i].data,
                   (size_t)a->params[i].numel * sizeof(real)) != 0)
            return 0;
    return 1;
}

static model *copy_of(const model *m) {
    model *c = NULL;
    if (model_create(&c, &m->cfg) != 0) return NULL;
    for (int i = 0; i < m->n_params; i++)
        memcpy(c->params[i].data, m->params[i].data, (size_t)m->params[i].numel * sizeof(real));
    return c;
}

/* ---- against the BLAS merge ----------------------------------------------------- */

static void check_against_blas(const char *arch, const char *t0, const char *t1, const char *t2) {
    model *m0 = ts_preset_model(arch, 3), *m1 = copy_of(m0), *m2 = copy_of(m0);
    CHECK(m0 && m1 && m2);
    if (!m0 || !m1 || !m2) return;
    /* Ranks 2, 4, 3; the third member adapts fewer modules. */
    lora_set *sets[3] = {make_adapter(m0, t0, 2, 4, 1), make_adapter(m0, t1, 4, 16, 2),
                         make_adapter(m0, t2, 3, 3, 3)};
    CHECK(sets[0] && sets[1] && sets[2]);
    const double w[3] = {0.2, 0.3, 0.5};
    update *u = NULL;
    CHECK_OK(update_build(&u, m0, sets, w, 3));
    CHECK_OK(ts_blas_merge(m2, sets, w, 3));
    CHECK_OK(update_apply(m1, u));
    double max_err = 0, max_w = 0, max_delta = 0;
    int changed_elsewhere = 0;
    for (int i = 0; i < m0->n_params; i++) {
        const model_param *p0 = &m0->params[i], *p1 = &m1->params[i], *p2 = &m2->params[i];
        int adapted = 0;
        for (int k = 0; k < u->n_modules; k++) adapted |= !strcmp(u->modules[k].name, p0->name);
        if (!adapted) {
            changed_elsewhere += memcmp(p0->data, p1->data, (size_t)p0->numel * sizeof(real)) != 0;
            continue;
        }
        for (int64_t j = 0; j < p0->numel; j++) {
            max_err = fmax(max_err, fabs((double)p1->data[j] - (double)p2->data[j]));
            max_w = fmax(max_w, fabs((double)p2->data[j]));
            max_delta = fmax(max_delta, fabs((double)p2->data[j] - (double)p0->data[j]));
        }
    }
    CHECK_MSG(max_delta > 1e-3, "%s: the update changes nothing (%g)", arch, max_delta);
    CHECK_MSG(max_err <= 1e-6 * max_w, "%s: update_apply vs ts_blas_merge: %g (|W| %g)", arch,
              max_err, max_w);
    CHECK_MSG(changed_elsewhere == 0, "%s: %d unadapted params changed", arch, changed_elsewhere);
    /* Every adapted weight is a module, with R = the ranks that adapt it. */
    CHECK(u->n_modules == sets[0]->n_modules);
    for (int k = 0; k < u->n_modules; k++) {
        char path[MODEL_NAME_MAX];
        snprintf(path, sizeof path, "%s", u->modules[k].name);
        *strrchr(path, '.') = '\0';
        int R = 0;
        for (int s = 0; s < 3; s++)
            R += lora_find(sets[s], path) ? lora_find(sets[s], path)->rank : 0;
        CHECK_MSG(u->modules[k].rank == R, "%s: rank %d, want %d", u->modules[k].name,
                  u->modules[k].rank, R);
    }
    update_free(u);
    for (int k = 0; k < 3; k++) lora_free(sets[k]);
    model_free(m0);
    model_free(m1);
    model_free(m2);
}

/* ---- bits: the formula, and thread counts ----------------------------------------- */

static void check_bits(void) {
    model *m0 = ts_preset_model("llama", 5);
    lora_set *sets[2] = {make_adapter(m0, "q_proj,v_proj,down_proj", 4, 8, 11),
                         make_adapter(m0, "q_proj,v_proj,down_proj", 5, 10, 12)};
    const double w[2] = {0.375, 0.625};
    update *u = NULL;
    CHECK_OK(update_build(&u, m0, sets, w, 2));
    if (!u) return;
    /* The documented formula, element by element, written out here. */
    model *ref = copy_of(m0);
    for (int k = 0; k < u->n_modules; k++) {
        const update_module *um = &u->modules[k];
        model_param *p = model_find_param(ref, um->name);
        for (int i = 0; i < um->out; i++)
            for (int j = 0; j < um->in; j++) {
                double acc = (double)p->data[(int64_t)i * um->in + j];
                for (int r = 0; r < um->rank; r++) {
                    double prod = (double)um->B[(int64_t)i * um->rank + r] *
                                  (double)um->A[(int64_t)r * um->in + j];
                    acc = acc + prod;
                }
                p->data[(int64_t)i * um->in + j] = (float)acc;
            }
    }
    int threads[3] = {1, 2, 3};
    for (int t = 0; t < 3; t++) {
        model *m = copy_of(m0);
        omp_set_num_threads(threads[t]);
        CHECK_OK(update_apply(m, u));
        CHECK_MSG(same_params(m, ref), "%d thread(s): not the formula's bits", threads[t]);
        model_free(m);
    }
    omp_set_num_threads(2);
    /* The B blocks carry c_k = (float)(w_k s_k) times B_k, as ts_blas_product forms them. */
    const update_module *q = &u->modules[0];
    const lora_module *q0 = lora_find(sets[0], "model.layers.0.self_attn.q_proj");
    const lora_module *q1 = lora_find(sets[1], "model.layers.0.self_attn.q_proj");
    CHECK(!strcmp(q->name, "model.layers.0.self_attn.q_proj.weight") && q0 && q1 && q->rank == 9);
    if (q0 && q1) {
        float c0 = (float)(w[0] * q0->scale), c1 = (float)(w[1] * q1->scale);
        CHECK(q->B[0] == c0 * q0->B.data[0] && q->B[4] == c1 * q1->B.data[0]);
        CHECK(q->B[9 + 3] == c0 * q0->B.data[4 + 3]);
        CHECK(q->A[0] == q0->A.data[0] && q->A[4 * 64] == q1->A.data[0]);
    }
    CHECK(update_data_bytes(u) ==
          (uint64_t)4 * (2 * 9 * (64 + 64) + 2 * 9 * (32 + 64) + 2 * 9 * (64 + 176)));
    update_free(u);
    model_free(ref);
    lora_free(sets[0]);
    lora_free(sets[1]);
    model_free(m0);
}

/* ---- explicit factors ------------------------------------------------------------ */

/* update_add: factors given as they are (a truncated SVD's, FedIT's), added
 * out of parameter order; the update keeps the model's order, holds copies,
 * and applies as the double-precision formula computed here; refusals leave
 * it unchanged. */
static void check_explicit(void) {
    model *m0 = ts_preset_model("llama", 13);
    const char *names[3] = {"model.layers.1.mlp.down_proj.weight",
                            "model.layers.0.self_attn.q_proj.weight",
                            "model.layers.0.self_attn.v_proj.weight"};
    const int ranks[3] = {3, 1, 6};
    update *u = NULL;
    CHECK_OK(update_create(&u));
    if (!u) return;
    CHECK(u->n_modules == 0 && u->round == 0);
    float *B[3], *A[3];
    uint64_t x = 99;
    for (int k = 0; k < 3; k++) {
        const model_param *p = model_find_param(m0, names[k]);
        int64_t out = p->shape[0], in = p->shape[1];
        B[k] = malloc((size_t)(out * ranks[k]) * sizeof(float));
        A[k] = malloc((size_t)(ranks[k] * in) * sizeof(float));
        for (int64_t j = 0; j < out * ranks[k]; j++) B[k][j] = (float)(0.3 * uniform(&x));
        for (int64_t j = 0; j < ranks[k] * in; j++) A[k][j] = (float)(0.7 * uniform(&x));
        CHECK_OK(update_add(u, m0, names[k], ranks[k], B[k], A[k]));
    }
    /* Refused, u unchanged. */
    CHECK_FAILS_WITH(update_add(u, m0, "model.norm.weight", 1, B[1], A[1]), "not a 2-D weight");
    CHECK_FAILS_WITH(update_add(u, m0, "model.layers.0.nope.weight", 1, B[1], A[1]),
                     "not a 2-D weight");
    CHECK_FAILS_WITH(update_add(u, m0, "model.layers.0.self_attn.o_proj.weight", 0, B[1], A[1]),
                     "rank 0");
    CHECK_FAILS_WITH(update_add(u, m0, names[1], ranks[1], B[1], A[1]), "already in the update");
    CHECK(u->n_modules == 3);
    /* Model order, shapes from the weights. */
    const int order[3] = {1, 2, 0};
    for (int i = 0; i < u->n_modules; i++) {
        const update_module *um = &u->modules[i];
        const model_param *p = model_find_param(m0, names[order[i]]);
        CHECK_MSG(!strcmp(um->name, names[order[i]]), "module %d is %s", i, um->name);
        CHECK(um->rank == ranks[order[i]] && um->out == p->shape[0] && um->in == p->shape[1]);
    }
    /* Copies: the caller's arrays may change afterwards. Reference first. */
    model *ref = copy_of(m0);
    for (int k = 0; k < 3; k++) {
        model_param *p = model_find_param(ref, names[k]);
        int out = (int)p->shape[0], in = (int)p->shape[1], R = ranks[k];
        for (int i = 0; i < out; i++)
            for (int j = 0; j < in; j++) {
                double acc = (double)p->data[(int64_t)i * in + j];
                for (int r = 0; r < R; r++)
                    acc =
                        acc + (double)B[k][(int64_t)i * R + r] * (double)A[k][(int64_t)r * in + j];
                p->data[(int64_t)i * in + j] = (float)acc;
            }
        B[k][0] += 1;
        A[k][0] -= 1;
    }
    model *m = copy_of(m0);
    CHECK_OK(update_apply(m, u));
    CHECK_MSG(same_params(m, ref), "update_add's factors do not apply as the formula");
    /* The file keeps them. */
    char path[TS_PATH];
    update *v = NULL;
    ts_path(path, "explicit.safetensors");
    CHECK_OK(update_write(u, path));
    CHECK_OK(update_read(&v, path, m0));
    model *m2 = copy_of(m0);
    if (v) CHECK_OK(update_apply(m2, v));
    CHECK(v && v->n_modules == 3 && same_params(m2, ref));
    update_free(v);
    update_free(u);
    for (int k = 0; k < 3; k++) free(B[k]), free(A[k]);
    model_free(m2);
    model_free(m);
    model_free(ref);
    model_free(m0);
}

/* ---- the file --------------------------------------------------------------------- */

static update *sample_update(const model *m) {
    lora_set *sets[2] = {make_adapter(m, "q_proj,v_proj", 2, 4, 21),
                         make_adapter(m, "q_proj", 3, 6, 22)};
    const double w[2] = {0.5, 0.5};
    update *u = NULL;
    if (update_build(&u, m, sets, w, 2) != 0) u = NULL;
    lora_free(sets[0]);
    lora_free(sets[1]);
    if (u) {
        for (int i = 0; i < UPDATE_HASH_LEN; i++)
            u->from[i] = (uint8_t)i, u->to[i] = (uint8_t)(255 - i);
        u->round = 7;
    }
    return u;
}

static void check_file(void) {
    model *m = ts_preset_model("llama", 9);
    update *u = sample_update(m), *v = NULL;
    CHECK(u != NULL);
    if (!u) return;
    char p1[TS_PATH], p2[TS_PATH];
    ts_path(p1, "u1.safetensors");
    ts_path(p2, "u2.safetensors");
    CHECK_OK(update_write(u, p1));
    CHECK_OK(update_write(u, p2));
    char *a, *b;
    size_t la, lb;
    CHECK_OK(fio_read_all(p1, 1 << 24, &a, &la));
    CHECK_OK(fio_read_all(p2, 1 << 24, &b, &lb));
    CHECK(la == lb && memcmp(a, b, la) == 0);
    CHECK(la == 8 + (size_t)(a[0] & 0xff) + (size_t)(a[1] & 0xff) * 256 + update_data_bytes(u));
    free(b);
    CHECK_OK(update_read(&v, p1, m));
    if (v) {
        CHECK(v->round == 7 && !memcmp(v->from, u->from, 32) && !memcmp(v->to, u->to, 32));
        CHECK(v->n_modules == u->n_modules);
        for (int i = 0; i < u->n_modules && i < v->n_modules; i++) {
            const update_module *x = &u->modules[i], *y = &v->modules[i];
            CHECK(!strcmp(x->name, y->name) && x->out == y->out && x->in == y->in &&
                  x->rank == y->rank);
            CHECK(!memcmp(x->B, y->B, (size_t)x->out * x->rank * 4) &&
                  !memcmp(x->A, y->A, (size_t)x->rank * x->in * 4));
        }
        update_free(v);
    }
    /* The same from memory, and the names and metadata as documented. */
    CHECK_OK(update_parse(&v, a, la, "mem", m));
    update_free(v);
    safetensors_file *f;
    CHECK_OK(safetensors_open(&f, p1));
    CHECK(!strcmp(safetensors_metadata(f, "format"), "fedlora-update"));
    CHECK(!strcmp(safetensors_metadata(f, "round"), "7"));
    CHECK(!strncmp(safetensors_metadata(f, "from"), "000102", 6));
    CHECK(!strncmp(safetensors_metadata(f, "to"), "fffefd", 6));
    const safetensors_tensor *t =
        safetensors_find(f, "model.layers.0.self_attn.q_proj.weight.update_B");
    CHECK(t && t->dtype == SAFETENSORS_F32 && t->shape[0] == 64 && t->shape[1] == 5);
    t = safetensors_find(f, "model.layers.1.self_attn.v_proj.weight.update_A");
    CHECK(t && t->shape[0] == 2 && t->shape[1] == 64);
    CHECK(safetensors_count(f) == 8);
    safetensors_close(f);
    free(a);
    update_free(u);
    model_free(m);
}

/* ---- refusals --------------------------------------------------------------------- */

static const char *const good_meta[] = {
    "format", "fedlora-update",
    "from",   "0000000000000000000000000000000000000000000000000000000000000000",
    "to",     "1111111111111111111111111111111111111111111111111111111111111111",
    "round",  "3",
    NULL};

static float zeros[4096];

/* Writes a file with the given tensors (data: zeros) and metadata, and
 * checks that update_read refuses it with `needle`. */
static void refused(const model *m, const safetensors_entry *e, int n, const char *const *meta,
                    const char *needle) {
    char p[TS_PATH];
    static int count;
    ts_path(p, "bad%d.safetensors", count++);
    safetensors_entry copy[8];
    for (int i = 0; i < n; i++) {
        copy[i] = e[i];
        if (!copy[i].data) copy[i].data = zeros;
    }
    CHECK_OK(safetensors_write(p, copy, n, meta));
    update *u = (update *)1;
    CHECK_FAILS_WITH(update_read(&u, p, m), needle);
    CHECK(u == NULL);
}

#define Q "model.layers.0.self_attn.q_proj.weight"
#define V "model.layers.0.self_attn.v_proj.weight"

static void check_refusals(void) {
    model *m = ts_preset_model("llama", 1);
    const safetensors_entry ok[2] = {{Q ".update_B", SAFETENSORS_F32, 2, {64, 2}, NULL},
                                     {Q ".update_A", SAFETENSORS_F32, 2, {2, 64}, NULL}};
    /* The control: the same tensors with good metadata are accepted. */
    {
        char p[TS_PATH];
        ts_path(p, "good.safetensors");
        safetensors_entry e[2] = {ok[0], ok[1]};
        e[0].data = e[1].data = zeros;
        CHECK_OK(safetensors_write(p, e, 2, good_meta));
        update *u;
        CHECK_OK(update_read(&u, p, m));
        CHECK(u && u->n_modules == 1 && u->modules[0].rank == 2 && u->round == 3);
        update_free(u);
    }
    safetensors_entry e[3];
    /* shapes */
    memcpy(e, ok, sizeof ok);
    e[0].shape[0] = 32;
    refused(m, e, 2, good_meta, "must be (64, 2) for this model");
    memcpy(e, ok, sizeof ok);
    e[1].shape[1] = 32;
    refused(m, e, 2, good_meta, "must be (2, 64) for this model");
    memcpy(e, ok, sizeof ok);
    e[1].shape[0] = 3; /* R of A differs from R of B */
    refused(m, e, 2, good_meta, "must be (2, 64) for this model");
    memcpy(e, ok, sizeof ok);
    e[0].shape[1] = 0, e[1].shape[0] = 0; /* rank 0 */
    refused(m, e, 2, good_meta, "rank R of 1");
    memcpy(e, ok, sizeof ok);
    e[0].ndim = 3, e[0].shape[2] = 1;
    refused(m, e, 2, good_meta, "not 2-D");
    /* names */
    memcpy(e, ok, sizeof ok);
    e[0].name = "model.layers.9.self_attn.q_proj.weight.update_B";
    e[1].name = "model.layers.9.self_attn.q_proj.weight.update_A";
    refused(m, e, 2, good_meta, "is not \"<weight>.update_B\"");
    memcpy(e, ok, sizeof ok);
    e[2] = (safetensors_entry){"extra", SAFETENSORS_F32, 1, {4}, NULL};
    refused(m, e, 3, good_meta, "tensor 'extra' is not");
    refused(m, ok, 1, good_meta, "has no partner");
    memcpy(e, ok, sizeof ok);
    e[0].name = "model.norm.weight.update_B";
    e[1].name = "model.norm.weight.update_A";
    refused(m, e, 2, good_meta, "not a 2-D weight");
    refused(m, e, 0, good_meta, "without tensors");
    /* dtype */
    memcpy(e, ok, sizeof ok);
    e[1].dtype = SAFETENSORS_F64;
    refused(m, e, 2, good_meta, "is F64, an update is F32");
    /* values */
    memcpy(e, ok, sizeof ok);
    float bad[128] = {0};
    bad[77] = NAN;
    e[1].data = bad;
    refused(m, e, 2, good_meta, "element 77 is nan");
    bad[77] = 0, bad[3] = -INFINITY;
    e[0].data = bad, e[1].data = NULL;
    refused(m, e, 2, good_meta, "element 3 is -inf");
    /* metadata */
    refused(m, ok, 2, NULL, "not an update file");
    const char *meta[9];
    memcpy(meta, good_meta, sizeof meta);
    meta[1] = "pt";
    refused(m, ok, 2, meta, "not an update file");
    memcpy(meta, good_meta, sizeof meta);
    meta[3] = "00";
    refused(m, ok, 2, meta, "\"from\" must be a version hash");
    memcpy(meta, good_meta, sizeof meta);
    meta[5] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    refused(m, ok, 2, meta, "\"to\" must be a version hash");
    memcpy(meta, good_meta, sizeof meta);
    meta[7] = "-1";
    refused(m, ok, 2, meta, "\"round\" must be a decimal");
    memcpy(meta, good_meta, sizeof meta);
    meta[6] = NULL; /* no round */
    refused(m, ok, 2, meta, "\"round\" must be a decimal");
    /* Not safetensors at all. */
    update *u = (update *)1;
    CHECK_FAILS_WITH(update_parse(&u, "garbage!", 8, "mem", m), "mem");
    CHECK(u == NULL);

    /* Another base: an adapter of a GPT-2 model, an update made for Llama. */
    model *g = ts_preset_model("gpt2", 1), *before = copy_of(m);
    lora_set *s = make_adapter(g, "c_attn", 2, 4, 1);
    const double one = 1;
    CHECK_FAILS_WITH(update_build(&u, m, &s, &one, 1), "made for another base");
    update *lu = sample_update(m);
    CHECK_FAILS_WITH(update_apply(g, lu), "made for another base");
    lora_set *wide = make_adapter(m, "q_proj", 2, 4, 5);
    model_config small = m->cfg;
    small.intermediate_size = 64;
    model *other = NULL;
    CHECK_OK(model_create(&other, &small));
    update *wu = NULL;
    lora_set *ws[2] = {wide, make_adapter(m, "down_proj", 2, 4, 6)};
    const double w2[2] = {0.5, 0.5};
    CHECK_OK(update_build(&wu, m, ws, w2, 2));
    model *other_before = copy_of(other);
    /* q_proj fits, down_proj does not: nothing may change. */
    CHECK_FAILS_WITH(update_apply(other, wu), "down_proj.weight (out 64, in 176)");
    CHECK(same_params(other, other_before));
    CHECK(same_params(m, before));
    update_free(wu);
    update_free(lu);
    lora_free(ws[1]);
    lora_free(wide);
    lora_free(s);
    model_free(other);
    model_free(other_before);
    model_free(before);
    model_free(g);
    model_free(m);
}

int main(void) {
    check_against_blas("llama", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                       "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "q_proj,v_proj");
    check_against_blas("gpt2", "c_attn,c_proj,c_fc", "c_attn,c_proj,c_fc", "c_attn");
    check_bits();
    check_explicit();
    check_file();
    check_refusals();
    return check_finish();
}
