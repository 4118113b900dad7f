/* aggregate.c — a round's aggregation under a policy (aggregate.h). */
#include "policies/aggregate.h"

#include "model/cpu/cpu.h"
#include "policies/handout.h"
#include "policies/robust.h"
#include "policies/svd.h"
#include "policies/validate.h"
#include "policies/weights.h"
#include "util/err.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void aggregate_report_free(aggregate_report *rep) {
    if (!rep) return;
    free(rep->coef);
    free(rep->norm);
    free(rep->clip);
    free(rep->selected);
    free(rep->krum_score);
    update_free(rep->factors);
    memset(rep, 0, sizeof *rep);
}

/* The base weight (out, in) of a module. */
static int module_weight(const model *m, const lora_module *mod, real **w) {
    char name[MODEL_NAME_MAX];
    snprintf(name, sizeof name, "%s.weight", mod->path);
    model_param *p = model_find_param(m, name);
    if (!p || p->ndim != 2 || p->shape[0] != mod->out || p->shape[1] != mod->in)
        return err_set("module %s (out %d, in %d) has no weight of that shape in the base model",
                       mod->path, mod->out, mod->in);
    *w = p->data;
    return 0;
}

/* Every member over the same modules, in the same order, with the same shapes. */
static int check_members(const model *m, const aggregate_member *mb, int K) {
    if (K < 1) return err_set("aggregate: no members to aggregate");
    for (int k = 0; k < K; k++)
        if (!mb[k].set) return err_set("aggregate: member %d (%s) has no adapter", k, mb[k].name);
    const lora_set *s0 = mb[0].set;
    for (int k = 1; k < K; k++) {
        const lora_set *s = mb[k].set;
        if (s->n_modules != s0->n_modules)
            return err_set("aggregate: %s adapts %d modules, %s %d: validate against the same "
                           "round config",
                           mb[k].name, s->n_modules, mb[0].name, s0->n_modules);
        for (int i = 0; i < s->n_modules; i++)
            if (strcmp(s->modules[i].path, s0->modules[i].path) != 0 ||
                s->modules[i].out != s0->modules[i].out || s->modules[i].in != s0->modules[i].in)
                return err_set("aggregate: %s's module %d is %s, %s's is %s", mb[k].name, i,
                               s->modules[i].path, mb[0].name, s0->modules[i].path);
    }
    for (int i = 0; i < s0->n_modules; i++) {
        real *w;
        if (module_weight(m, &s0->modules[i], &w) != 0) return -1;
    }
    return 0;
}

/* Concatenated factors of module i over the members with coef != 0:
 * Bc (out, R) = [f_1 B_1 | …], Ac (R, in) = [A_1; …] with f_k = coef_k·s_k·clip_k. */
static int concat_factors(const aggregate_member *mb, int K, int i, const double *coef,
                          const double *clip, real **Bc, real **Ac, int *R_out) {
    const lora_module *m0 = &mb[0].set->modules[i];
    int out = m0->out, in = m0->in;
    int64_t R = 0;
    for (int k = 0; k < K; k++)
        if (coef[k] != 0) R += mb[k].set->modules[i].rank;
    *Bc = malloc((size_t)out * (size_t)(R ? R : 1) * sizeof(real));
    *Ac = malloc((size_t)(R ? R : 1) * (size_t)in * sizeof(real));
    if (!*Bc || !*Ac) {
        free(*Bc);
        free(*Ac);
        return err_set("aggregate: out of memory for module %s (%d x %lld factors)", m0->path, out,
                       (long long)R);
    }
    int64_t col = 0;
    for (int k = 0; k < K; k++) {
        if (coef[k] == 0) continue;
        const lora_module *mod = &mb[k].set->modules[i];
        int r = mod->rank;
        real f = (real)(coef[k] * mod->scale * clip[k]);
        for (int o = 0; o < out; o++)
            for (int j = 0; j < r; j++)
                (*Bc)[(int64_t)o * R + col + j] = f * mod->B.data[o * r + j];
        memcpy(*Ac + col * in, mod->A.data, (size_t)r * (size_t)in * sizeof(real));
        col += r;
    }
    *R_out = (int)R;
    return 0;
}

/* The start's block of module i added once to the concatenated factors
 * (handout.h): B gets the columns f·B0, A the rows A0, f = −(Σ_k coef_k
 * clip_k)·s0 over the members the sum takes. */
static int append_start(const lora_module *g, const double *coef, const double *clip, int K,
                        real **Bc, real **Ac, int *R) {
    double sum = 0;
    for (int k = 0; k < K; k++) sum += coef[k] * clip[k];
    int out = g->out, in = g->in, r = g->rank, R0 = *R, R1 = R0 + r;
    real *B = malloc((size_t)out * (size_t)R1 * sizeof *B),
         *A = malloc((size_t)R1 * in * sizeof *A);
    if (!B || !A) {
        free(B);
        free(A);
        return err_set("aggregate: out of memory for module %s (%d x %d factors)", g->path, out,
                       R1);
    }
    real f = (real)(-sum * g->scale);
    for (int o = 0; o < out; o++) {
        if (R0) memcpy(B + (int64_t)o * R1, *Bc + (int64_t)o * R0, (size_t)R0 * sizeof *B);
        for (int j = 0; j < r; j++) B[(int64_t)o * R1 + R0 + j] = f * g->B.data[(int64_t)o * r + j];
    }
    if (R0) memcpy(A, *Ac, (size_t)R0 * in * sizeof *A);
    memcpy(A + (int64_t)R0 * in, g->A.data, (size_t)r * in * sizeof *A);
    free(*Bc);
    free(*Ac);
    *Bc = B;
    *Ac = A;
    *R = R1;
    return 0;
}

/* Inner products ⟨c_i Δ_i, c_j Δ_j⟩ summed over modules into ip (K×K):
 * with Bc, Ac as above (f_k = s_k c_k), GB = Bcᵀ Bc and GA = Ac Acᵀ (R×R),
 * ⟨i, j⟩ = Σ_{a ∈ i, b ∈ j} GB[a,b] · GA[a,b]. */
static int gram_module(const aggregate_member *mb, int K, int i, const double *clip, double *ip) {
    double *one = malloc((size_t)K * sizeof *one);
    int *off = malloc((size_t)(K + 1) * sizeof *off);
    if (!one || !off) {
        free(one);
        free(off);
        return err_set("aggregate: out of memory");
    }
    for (int k = 0; k < K; k++) one[k] = 1;
    real *Bc, *Ac, *G = NULL;
    int R, rc = concat_factors(mb, K, i, one, clip, &Bc, &Ac, &R);
    if (rc == 0 && R > 0) {
        const lora_module *m0 = &mb[0].set->modules[i];
        G = malloc(2 * (size_t)R * (size_t)R * sizeof *G);
        if (!G) rc = err_set("aggregate: out of memory for a %d x %d Gram matrix", R, R);
        if (rc == 0) {
            real *GA = G + (size_t)R * R;
            cpu_gemm(1, 0, R, R, m0->out, 1, Bc, R, Bc, R, 0, G, R);
            cpu_gemm(0, 1, R, R, m0->in, 1, Ac, m0->in, Ac, m0->in, 0, GA, R);
            off[0] = 0;
            for (int k = 0; k < K; k++) off[k + 1] = off[k] + mb[k].set->modules[i].rank;
            for (int a = 0; a < K; a++)
                for (int b = a; b < K; b++) {
                    double sum = 0;
                    for (int x = off[a]; x < off[a + 1]; x++)
                        for (int y = off[b]; y < off[b + 1]; y++)
                            sum += (double)G[(int64_t)x * R + y] * (double)GA[(int64_t)x * R + y];
                    ip[a * K + b] += sum;
                    if (b != a) ip[b * K + a] += sum;
                }
        }
    }
    if (rc == 0) {
        free(Bc);
        free(Ac);
    }
    free(G);
    free(one);
    free(off);
    return rc;
}

/* The multi-Krum selection over whole (clipped) updates. */
static int krum(const policy *pol, const aggregate_member *mb, int K, const double *clip,
                int *selected, double *score) {
    double *ip = calloc((size_t)K * K, sizeof *ip), *d2 = malloc((size_t)K * K * sizeof *d2);
    int rc = 0;
    if (!ip || !d2) rc = err_set("aggregate: out of memory for %d x %d distances", K, K);
    for (int i = 0; rc == 0 && i < mb[0].set->n_modules; i++) rc = gram_module(mb, K, i, clip, ip);
    if (rc == 0) {
        for (int a = 0; a < K; a++)
            for (int b = 0; b < K; b++)
                d2[a * K + b] = fmax(ip[a * K + a] + ip[b * K + b] - 2 * ip[a * K + b], 0);
        int f = pol->robust.krum_f, msel = pol->robust.krum_m ? pol->robust.krum_m : K - f;
        rc = robust_krum_select(K, d2, f, msel, selected, score);
    }
    free(ip);
    free(d2);
    return rc;
}

/* FedIT's factors of module i: B = s·(Σ p_k B_k) (out, r), A = Σ p_k A_k
 * (r, in), so that ΔW = B·A = s·B̄·Ā. */
static int fedit_module(const aggregate_member *mb, int K, int i, const double *coef, real **B,
                        real **A) {
    const lora_module *m0 = &mb[0].set->modules[i];
    int r = m0->rank, out = m0->out, in = m0->in;
    for (int k = 1; k < K; k++) {
        const lora_module *mod = &mb[k].set->modules[i];
        if (mod->rank != r || mod->scale != m0->scale)
            return err_set("merge.mode \"fedit\" averages the factors, so every member needs the "
                           "same rank and scale; %s has rank %d (scale %g), %s rank %d (scale %g)",
                           mb[k].name, mod->rank, mod->scale, mb[0].name, r, m0->scale);
    }
    real *Bm = calloc((size_t)out * r, sizeof *Bm), *Am = calloc((size_t)r * in, sizeof *Am);
    if (!Bm || !Am) {
        free(Bm);
        free(Am);
        return err_set("aggregate: out of memory");
    }
    for (int k = 0; k < K; k++) {
        const lora_module *mod = &mb[k].set->modules[i];
        for (int64_t j = 0; j < (int64_t)out * r; j++) Bm[j] += (real)coef[k] * mod->B.data[j];
        for (int64_t j = 0; j < (int64_t)r * in; j++) Am[j] += (real)coef[k] * mod->A.data[j];
    }
    for (int64_t j = 0; j < (int64_t)out * r; j++) Bm[j] *= (real)m0->scale;
    *B = Bm;
    *A = Am;
    return 0;
}

/* The coordinate rules: target (out, in) += (accumulate) or = the rule over
 * the members' clipped dense updates, a block of rows at a time. */
static int coordinate_module(const policy *pol, const aggregate_member *mb, int K, int i,
                             const double *clip, real *target, int accumulate) {
    const lora_module *m0 = &mb[0].set->modules[i];
    int out = m0->out, in = m0->in;
    int64_t rows = pol->merge.block_bytes / ((int64_t)K * in * (int64_t)sizeof(real));
    if (rows < 1) rows = 1;
    if (rows > out) rows = out;
    real *buf = malloc((size_t)K * (size_t)rows * (size_t)in * sizeof *buf);
    real *res = malloc((size_t)rows * (size_t)in * sizeof *res);
    if (!buf || !res) {
        free(buf);
        free(res);
        return err_set("aggregate: out of memory for a %d x %lld x %d block (merge.block_bytes)", K,
                       (long long)rows, in);
    }
    int trim = (int)floor(pol->robust.trim_beta * K);
    for (int r0 = 0; r0 < out; r0 += (int)rows) {
        int nr = out - r0 < rows ? out - r0 : (int)rows;
        int64_t n = (int64_t)nr * in;
        for (int k = 0; k < K; k++) {
            const lora_module *mod = &mb[k].set->modules[i];
            /* rows r0.. of c_k s_k B_k A_k: (nr, r) · (r, in) */
            cpu_gemm(0, 0, nr, in, mod->rank, (real)(mod->scale * clip[k]),
                     mod->B.data + (int64_t)r0 * mod->rank, mod->rank, mod->A.data, in, 0,
                     buf + k * n, in);
        }
        if (pol->robust.rule == POLICY_RULE_MEDIAN)
            robust_median(K, n, buf, n, res);
        else
            robust_trimmed_mean(K, n, buf, n, trim, res);
        real *t = target + (int64_t)r0 * in;
        if (accumulate)
            for (int64_t j = 0; j < n; j++) t[j] += res[j];
        else
            memcpy(t, res, (size_t)n * sizeof *t);
    }
    free(buf);
    free(res);
    return 0;
}

/* The rank-r truncated SVD of op as factors B (out, r) and A (r, in), which
 * also go to the global adapter module g (when non-NULL). */
static int svd_module(const policy *pol, const svd_operator *op, uint64_t seed, lora_module *g,
                      real **B, real **A) {
    int r = pol->merge.svd_rank;
    real *Bt = malloc((size_t)op->out * r * sizeof *Bt),
         *At = malloc((size_t)r * op->in * sizeof *At);
    int rc = 0;
    if (!Bt || !At) rc = err_set("aggregate: out of memory for rank-%d factors", r);
    if (rc == 0)
        rc = svd_truncated(op, r, pol->merge.svd_oversample, pol->merge.svd_power_iters, seed, Bt,
                           At, NULL);
    if (rc == 0 && g) {
        memcpy(g->B.data, Bt, (size_t)op->out * r * sizeof *Bt);
        memcpy(g->A.data, At, (size_t)r * op->in * sizeof *At);
    }
    if (rc != 0) {
        free(Bt);
        free(At);
        return rc;
    }
    *B = Bt;
    *A = At;
    return 0;
}

/* The global adapter: the members' modules at rank r with alpha = r (s = 1). */
static int make_global(const policy *pol, const model *m, const lora_set *s0, lora_set **out) {
    if (handout_set_like(m, s0, pol->merge.svd_rank, pol->merge.svd_rank, out) != 0)
        return err_context("merge.svd_rank %d for the global adapter", pol->merge.svd_rank);
    return 0;
}

static int report_alloc(aggregate_report *rep, int K) {
    memset(rep, 0, sizeof *rep);
    rep->K = K;
    rep->coef = calloc((size_t)K, sizeof *rep->coef);
    rep->norm = calloc((size_t)K, sizeof *rep->norm);
    rep->clip = calloc((size_t)K, sizeof *rep->clip);
    rep->selected = calloc((size_t)K, sizeof *rep->selected);
    rep->krum_score = calloc((size_t)K, sizeof *rep->krum_score);
    if (!rep->coef || !rep->norm || !rep->clip || !rep->selected || !rep->krum_score) {
        aggregate_report_free(rep);
        return err_set("aggregate: out of memory");
    }
    return 0;
}

/* Per-member norms, clipping, coefficients and selection. */
static int plan(const policy *pol, const aggregate_member *mb, int K,
                const aggregate_round_info *info, aggregate_report *rep) {
    uint64_t *tokens = malloc((size_t)K * sizeof *tokens);
    uint64_t *examples = malloc((size_t)K * sizeof *examples);
    int rc = 0;
    if (!tokens || !examples) rc = err_set("aggregate: out of memory");
    for (int k = 0; rc == 0 && k < K; k++) {
        tokens[k] = mb[k].tokens;
        examples[k] = mb[k].examples;
        rep->norm[k] = validate_update_norm(mb[k].set);
        if (!isfinite(rep->norm[k]))
            rc = err_set("aggregate: %s's update norm is not finite; validate updates first",
                         mb[k].name);
        rep->selected[k] = 1;
    }
    if (rc == 0 && pol->dp.enabled) {
        double E = pol->dp.expected_weight > 0
                       ? pol->dp.expected_weight
                       : pol->rounds.fraction * (info ? info->roster_size : 0);
        if (!(E > 0))
            rc = err_set("dp: the expected total weight is 0: set dp.expected_weight or pass the "
                         "roster size");
        if (rc == 0) rc = dp_weights(pol, K, tokens, examples, rep->coef);
        for (int k = 0; rc == 0 && k < K; k++) {
            rep->clip[k] = robust_clip_factor(rep->norm[k], pol->dp.clip);
            rep->coef[k] /= E;
        }
        rep->noise_sigma = pol->dp.noise_multiplier * pol->dp.clip / E;
    } else if (rc == 0) {
        rc = weights_compute(pol, K, tokens, examples, rep->coef);
        for (int k = 0; rc == 0 && k < K; k++)
            rep->clip[k] = robust_clip_factor(rep->norm[k], pol->robust.clip_norm);
        if (rc == 0 && pol->robust.rule == POLICY_RULE_KRUM) {
            rc = krum(pol, mb, K, rep->clip, rep->selected, rep->krum_score);
            double sum = 0;
            for (int k = 0; rc == 0 && k < K; k++) sum += rep->selected[k] ? rep->coef[k] : 0;
            for (int k = 0; rc == 0 && k < K; k++)
                rep->coef[k] = rep->selected[k] ? rep->coef[k] / sum : 0;
        }
    }
    free(tokens);
    free(examples);
    return rc;
}

struct aggregate_dense {
    const policy *pol;
    const aggregate_member *members;
    int K;
    double *clip, *coef; /* the plan's, K each (copies) */
    double sigma;        /* DP noise std */
    noise_source *noise;
    int next; /* the next module to apply, in the members' order */
};

void aggregate_dense_free(aggregate_dense *d) {
    if (!d) return;
    free(d->clip);
    free(d->coef);
    free(d);
}

/* W (out, in) += module i's dense ΔW: a coordinate rule over the clipped
 * updates, or DP-FedAvg's noisy sum. */
static int dense_module(const aggregate_dense *d, int i, real *W) {
    const aggregate_member *mb = d->members;
    const lora_module *m0 = &mb[0].set->modules[i];
    int out = m0->out, in = m0->in;
    if (d->pol->robust.rule == POLICY_RULE_MEDIAN ||
        d->pol->robust.rule == POLICY_RULE_TRIMMED_MEAN)
        return coordinate_module(d->pol, mb, d->K, i, d->clip, W, 1);
    real *Bc, *Ac;
    int Rc;
    if (concat_factors(mb, d->K, i, d->coef, d->clip, &Bc, &Ac, &Rc) != 0) return -1;
    /* DP-FedAvg: the sum made dense, plus the noise */
    if (Rc > 0) cpu_gemm(0, 0, out, in, Rc, 1, Bc, Rc, Ac, in, 1, W, in);
    free(Bc);
    free(Ac);
    return noise_add(d->noise, W, (int64_t)out * in, d->sigma);
}

int aggregate_dense_apply(aggregate_dense *d, const char *name, real *W) {
    const lora_set *s0 = d->members[0].set;
    if (d->next >= s0->n_modules)
        return err_set("aggregate_dense_apply: %s: every module was applied already", name);
    const lora_module *m0 = &s0->modules[d->next];
    char want[MODEL_NAME_MAX];
    snprintf(want, sizeof want, "%s.weight", m0->path);
    /* The modules go in order: DP noise is drawn module after module, and a
     * different order would draw other noise for each. */
    if (strcmp(want, name) != 0)
        return err_set("aggregate_dense_apply: %s given where %s was next", name, want);
    if (dense_module(d, d->next, W) != 0) return err_context("aggregating module %s", m0->path);
    d->next++;
    return 0;
}

int aggregate_prepare(const policy *pol, const model *m, const aggregate_member *members, int K,
                      const aggregate_round_info *info, noise_source *noise, lora_set **global,
                      aggregate_report *rep_out, update **factors, aggregate_dense **dense) {
    *factors = NULL;
    *dense = NULL;
    if (global) *global = NULL;
    if (check_members(m, members, K) != 0) return -1;
    if (pol->dp.enabled && !noise)
        return err_set("aggregate: dp is enabled but no noise source was given (noise_open)");
    int svd = pol->merge.mode == POLICY_MERGE_SVD, fedit = pol->merge.mode == POLICY_MERGE_FEDIT;
    int coordinate =
        pol->robust.rule == POLICY_RULE_MEDIAN || pol->robust.rule == POLICY_RULE_TRIMMED_MEAN;
    /* A start with B0 != 0: the rules see the difference adapters (handout.h). */
    const lora_set *start =
        info && info->start && lora_has_product(info->start) ? info->start : NULL;
    if (start && !svd && (coordinate || pol->dp.enabled))
        return err_set("aggregate: a round that started from a non-zero adapter needs a low-rank "
                       "merge (policy_check refuses %s%s with merge.start \"global\")",
                       policy_rule_name(pol->robust.rule), pol->dp.enabled ? " and dp" : "");
    aggregate_member *diff = NULL;
    if (start && !(diff = calloc((size_t)K, sizeof *diff)))
        return err_set("aggregate: out of memory");
    for (int k = 0; diff && k < K; k++) {
        diff[k] = members[k];
        if (handout_difference(m, members[k].set, start, (lora_set **)&diff[k].set) != 0) {
            for (int j = 0; j < k; j++) lora_free((lora_set *)diff[j].set);
            free(diff);
            return err_context("aggregate: %s's update from the round's start", members[k].name);
        }
    }
    const aggregate_member *rules = diff ? diff : members;
    aggregate_report rep;
    int rc = report_alloc(&rep, K);
    if (rc == 0) rc = plan(pol, rules, K, info, &rep);
    lora_set *g = NULL;
    /* Low rank: every module's ΔW is a product B·A (FedIT's, the truncated
     * SVD's, or the mean's / Krum's concatenated factors when no noise is
     * added), collected here as an update that the caller applies with the
     * portable kernel (lora/update.h), exactly as a node applies it. Dense:
     * the coordinate rules and DP noise, which aggregate_dense_apply adds to
     * each weight later, one module at a time, as the weight is written. */
    int lowrank = fedit || svd || !(coordinate || pol->dp.enabled);
    if (rc == 0 && lowrank) rc = update_create(&rep.factors);
    if (rc == 0 && svd && global) rc = make_global(pol, m, members[0].set, &g);
    const lora_set *s0 = members[0].set;
    for (int i = 0; rc == 0 && i < s0->n_modules; i++) {
        const lora_module *m0 = &s0->modules[i];
        int out = m0->out, in = m0->in;
        rep.n_modules++;
        rep.n_coords += (int64_t)out * in;
        for (int k = 0; k < K; k++) {
            const lora_module *mod = &members[k].set->modules[i];
            rep.bytes_in += (int64_t)mod->rank * (mod->in + mod->out) * (int64_t)sizeof(real);
        }
        if (!lowrank) continue;
        lora_module *gm = g ? lora_find(g, m0->path) : NULL;
        uint64_t seed = (info ? info->round : 0) * 1000003u + (uint64_t)i;
        real *D = NULL;            /* a dense module update, when svd needs one */
        real *B = NULL, *A = NULL; /* the module's factors, rank R */
        int R = 0;
        if (svd && (coordinate || pol->dp.enabled) &&
            !(D = calloc((size_t)out * (size_t)in, sizeof *D)))
            rc = err_set("aggregate: out of memory for module %s (%d x %d)", m0->path, out, in);
        if (rc == 0 && fedit) {
            rc = fedit_module(rules, K, i, rep.coef, &B, &A);
            R = rules[0].set->modules[i].rank;
        } else if (rc == 0 && coordinate) {
            rc = coordinate_module(pol, rules, K, i, rep.clip, D, 0);
        } else if (rc == 0) {
            real *Bc, *Ac;
            int Rc;
            rc = concat_factors(members, K, i, rep.coef, rep.clip, &Bc, &Ac, &Rc);
            if (rc == 0 && start)
                rc = append_start(&start->modules[i], rep.coef, rep.clip, K, &Bc, &Ac, &Rc);
            if (rc == 0) {
                if (pol->dp.enabled) { /* DP-FedAvg + svd: the noisy sum into D */
                    if (Rc > 0) cpu_gemm(0, 0, out, in, Rc, 1, Bc, Rc, Ac, in, 1, D, in);
                    rc = noise_add(noise, D, (int64_t)out * in, rep.noise_sigma);
                } else if (svd) {
                    svd_operator op = {.out = out, .in = in, .R = Rc, .B = Bc, .A = Ac};
                    rc = svd_module(pol, &op, seed, gm, &B, &A);
                    R = pol->merge.svd_rank;
                } else {
                    /* The exact merge: Σ_k f_k B_k A_k = [f_1 B_1 | …] · [A_1; …] */
                    B = Bc;
                    A = Ac;
                    R = Rc;
                    Bc = Ac = NULL;
                }
                free(Bc);
                free(Ac);
            }
        }
        if (rc == 0 && D) {
            svd_operator op = {.out = out, .in = in, .D = D};
            rc = svd_module(pol, &op, seed, gm, &B, &A);
            R = pol->merge.svd_rank;
        }
        if (rc == 0 && R > 0) {
            char name[MODEL_NAME_MAX];
            snprintf(name, sizeof name, "%s.weight", m0->path);
            rc = update_add(rep.factors, m, name, R, B, A);
        }
        free(B);
        free(A);
        free(D);
        if (rc != 0) rc = err_context("aggregating module %s", m0->path);
    }
    aggregate_dense *d = NULL;
    if (rc == 0 && !lowrank) {
        d = calloc(1, sizeof *d);
        if (d) {
            *d = (aggregate_dense){
                .pol = pol, .members = members, .K = K, .sigma = rep.noise_sigma, .noise = noise};
            d->clip = malloc((size_t)K * sizeof *d->clip);
            d->coef = malloc((size_t)K * sizeof *d->coef);
        }
        if (!d || !d->clip || !d->coef) {
            aggregate_dense_free(d);
            d = NULL;
            rc = err_set("aggregate: out of memory");
        } else {
            memcpy(d->clip, rep.clip, (size_t)K * sizeof *d->clip);
            memcpy(d->coef, rep.coef, (size_t)K * sizeof *d->coef);
        }
    }
    if (rc == 0 && global)
        *global = g;
    else
        lora_free(g);
    if (rc == 0) {
        *factors = rep.factors; /* the caller applies it */
        rep.factors = NULL;
        *dense = d;
    }
    if (rc == 0 && rep_out)
        *rep_out = rep;
    else
        aggregate_report_free(&rep);
    for (int k = 0; diff && k < K; k++) lora_free((lora_set *)diff[k].set);
    free(diff);
    return rc;
}

int aggregate_compute(const policy *pol, model *m, const aggregate_member *members, int K,
                      const aggregate_round_info *info, noise_source *noise, lora_set **global,
                      aggregate_report *rep, update **factors) {
    aggregate_dense *d;
    if (aggregate_prepare(pol, m, members, K, info, noise, global, rep, factors, &d) != 0)
        return -1;
    const lora_set *s0 = members[0].set;
    int rc = 0;
    for (int i = 0; d && rc == 0 && i < s0->n_modules; i++) {
        real *W;
        rc = module_weight(m, &s0->modules[i], &W);
        char name[MODEL_NAME_MAX];
        snprintf(name, sizeof name, "%s.weight", s0->modules[i].path);
        if (rc == 0 && !W)
            rc = err_set("aggregate: %s is held read-only (a mapped base): use aggregate_prepare "
                         "and aggregate_dense_apply as it is written",
                         name);
        if (rc == 0) rc = aggregate_dense_apply(d, name, W);
    }
    aggregate_dense_free(d);
    if (rc != 0) {
        if (global) {
            lora_free(*global);
            *global = NULL;
        }
        if (rep) aggregate_report_free(rep);
    }
    return rc;
}

int aggregate_round(const policy *pol, model *m, const aggregate_member *members, int K,
                    const aggregate_round_info *info, noise_source *noise, lora_set **global,
                    aggregate_report *rep) {
    update *u = NULL;
    if (aggregate_compute(pol, m, members, K, info, noise, global, rep, &u) != 0) return -1;
    if (u && update_apply(m, u) != 0) {
        update_free(u);
        if (global) {
            lora_free(*global);
            *global = NULL;
        }
        if (rep) aggregate_report_free(rep);
        return -1;
    }
    if (rep)
        rep->factors = u;
    else
        update_free(u);
    return 0;
}
