/* lora — LoRA adapters on a model's linear layers, as PEFT defines them.
 *
 * Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", in
 * the form of Hugging Face PEFT (peft/tuners/lora/layer.py, class Linear):
 *
 *   y = W x + b + s · B (A dropout(x)),   A (r, in), B (out, r)
 *   s = alpha / r, or alpha / sqrt(r) with use_rslora (Kalajdzievski 2023)
 *
 * Initialisation (PEFT init_lora_weights=True): A ~ kaiming_uniform_(a=√5),
 * which is U(−1/√in, 1/√in) (gain √(2/(1+a²)) = √(1/3), bound = gain·√3/√in),
 * B = 0, so a fresh adapter leaves the model unchanged. Values come from a
 * seeded generator: the same seed gives the same adapter.
 *
 * Layout: lora_A is (r, in) and lora_B is (out, r) row-major, PEFT's own
 * tensors, for Linear and for GPT-2's Conv1D alike (PEFT wraps a Conv1D with
 * fan_in_fan_out=True, which transposes only the merged B·A, never A or B).
 * In memory every base weight is (out, in) (model/model.h), so one
 * convention serves both architectures.
 *
 * Targets are chosen as PEFT's check_target_module_exists does, on module
 * paths ("model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn"):
 *   - a list of names: a path matches a name when it equals it or ends with
 *     "." + name (so "c_proj" takes both attn.c_proj and mlp.c_proj);
 *   - a single regular expression: a path matches when the whole path does
 *     (re.fullmatch; PCRE2, which agrees with Python's re on PEFT's patterns);
 *   - "all-linear": every linear layer of the blocks (PEFT excludes the output
 *     head; lm_head is not targetable here at all), except a mixture of
 *     experts' router (Mixtral's block_sparse_moe.gate), which stays frozen
 *     unless a list names it ("gate" or its path) or a regular expression
 *     matches it;
 *   - layers_to_transform restricts the names of a list that match as a
 *     suffix (not a name equal to the whole path) to those layer indices; it
 *     cannot be combined with a string target (PEFT refuses that too);
 *     exclude_modules (a list, or a regular expression) removes paths.
 * rank_pattern / alpha_pattern give one module its own r / alpha: keys are
 * regular expressions matched as Python's re.match(r"(.*\.)?(KEY)$")
 * (PEFT's get_pattern_key); the first that matches wins, keys taken in
 * sorted order, which is the order PEFT sees after adapter_config.json (saved
 * with sorted keys) is read back, so training and reloading agree.
 *
 * Strictness beyond PEFT, so that mistakes are errors rather than silent
 * no-ops: every name of a target list must match at least one module; a rank
 * must be in [1, min(in, out)] for each module it applies to (a mixture of
 * experts' router excepted: transformers 4's PEFT gives it the config's rank
 * under all-linear).
 *
 * Training: the set plugs into the model through model_linear's adapter hook
 * (lora_attach). Frozen base weights keep grad == NULL, so model_backward
 * computes no weight gradient for them; it calls the adapter's backward,
 * which accumulates into A.grad and B.grad (after lora_want_grads) and adds
 * the adapter's term to dx. Dropout (PEFT's lora_dropout: torch.nn.Dropout on
 * the adapter's input, inverted: kept values are scaled by 1/(1−p)) is applied
 * only while the set is in training mode; its mask is a counter-based hash of
 * (seed, module, forward counter, element), recomputed in backward rather than
 * stored, and reproducible across runs and resumes (lora_dropout_counter). */
#ifndef FL_LORA_LORA_H
#define FL_LORA_LORA_H

#include "model/model.h"

#include <stdint.h>

#define LORA_PATH_MAX                                                                              \
    96 /* module path; tensor names add "base_model.model." … ".lora_A.weight"                   \
        */

/* One rank_pattern / alpha_pattern entry. */
typedef struct {
    char *key; /* regular expression, matched as PEFT's get_pattern_key */
    double value;
} lora_pattern;

/* What PEFT's LoraConfig says about the adapter. Owns heap strings: set it up
 * with lora_config_init and the setters below, copy it with lora_config_copy,
 * release it with lora_config_free. */
typedef struct {
    int rank;       /* r (PEFT default 8) */
    double alpha;   /* lora_alpha (PEFT default 8) */
    int use_rslora; /* s = alpha/sqrt(r) instead of alpha/r */
    double dropout; /* lora_dropout, in [0, 1) */
    uint64_t seed;  /* A's initialisation and the dropout masks */
    char **targets; /* target_modules as a list of names (n_targets of them) … */
    int n_targets;
    char *target_regex; /* … or as one regular expression (then n_targets == 0) */
    char **exclude;     /* exclude_modules as a list … */
    int n_exclude;
    char *exclude_regex; /* … or as one regular expression; both empty: none */
    int *layers;         /* layers_to_transform (n_layers of them); NULL: all layers */
    int n_layers;
    lora_pattern *rank_pattern; /* per-module r, in order */
    int n_rank_pattern;
    lora_pattern *alpha_pattern; /* per-module alpha, in order */
    int n_alpha_pattern;
    char *base_model; /* base_model_name_or_path for adapter_config.json, or NULL */
} lora_config;

/* PEFT's defaults: r 8, alpha 8, no rsLoRA, dropout 0, seed 0, no targets. */
void lora_config_init(lora_config *c);
void lora_config_free(lora_config *c);
int lora_config_copy(lora_config *dst, const lora_config *src);
/* target_modules from a comma-separated list ("q_proj,v_proj"), or
 * "all-linear" (a mixture of experts' router left out). Empty names are an
 * error. */
int lora_config_set_targets(lora_config *c, const char *comma_list);
/* target_modules as one regular expression (PEFT's string form). */
int lora_config_set_target_regex(lora_config *c, const char *regex);
/* Appends a rank_pattern / alpha_pattern entry (a later duplicate key is an error). */
int lora_config_add_rank_pattern(lora_config *c, const char *key, int rank);
int lora_config_add_alpha_pattern(lora_config *c, const char *key, double alpha);
/* base_model_name_or_path (NULL clears it). */
int lora_config_set_base_model(lora_config *c, const char *name);

typedef struct lora_set lora_set;

/* One adapted linear layer. */
typedef struct {
    char path[LORA_PATH_MAX]; /* module path, e.g. "model.layers.0.self_attn.q_proj" */
    int layer;                /* the block it sits in */
    int in, out;              /* the base linear's sizes */
    int rank;
    double alpha, scale; /* scale s = alpha/rank, or alpha/sqrt(rank) with rsLoRA */
    int conv1d;          /* the base weight is a GPT-2 Conv1D (in, out) on disk */
    /* A.name / B.name are the PEFT tensor names,
     * "base_model.model.<path>.lora_A.weight" and "….lora_B.weight". */
    model_param A; /* (rank, in) */
    model_param B; /* (out, rank) */
    /* Set by lora_attach: the linear this module feeds. */
    model_linear *linear;
    /* Private to lora.c and lora_hook.c: what backward needs from the last
     * forward. */
    lora_set *set;
    int index;            /* position in the set, part of the dropout key */
    real *u;              /* (cap_rows, rank): x̃ Aᵀ of the last forward */
    int u_rows;           /* rows the last forward saved in u; −1 when it did not */
    int u_dropout;        /* the last forward applied dropout … */
    uint64_t u_counter;   /* … with this counter */
    uint64_t counter;     /* training forwards so far */
    int group, group_pos; /* its input group (lora_hook.c) and place in it; group −1: none */
} lora_module;

/* Adapted linears of one block that take the same input (q, k, v; gate,
 * up): lora_hook.c computes their A products as one (model.h, "Linears that
 * share an input"). Private to lora.c and lora_hook.c. */
typedef struct {
    int first, n;      /* modules[first … first + n − 1], in call order */
    int in, rank_sum;  /* their input size; Σ rank */
    const real *fwd_x; /* the forward that made every member's u: its input, */
    int fwd_n;         /* rows */
    uint64_t fwd_call; /* and call number */
    const real *bwd_x; /* the backward in progress: its input, */
    real *bwd_dx;      /* input gradient, */
    int bwd_n;         /* rows, */
    uint64_t bwd_call; /* first member's call number */
    int bwd_joined;    /* and members whose du waits in scratch_gdu (0: none) */
} lora_group;

struct lora_set {
    lora_config cfg; /* as given (patterns resolved into each module) */
    model_arch arch;
    int n_modules;
    lora_module *modules; /* in model order: by layer, then q, k, v / c_attn, o, gate, up, down */
    model *attached;      /* the model whose linears hold this set, or NULL */
    int training;         /* dropout active */
    /* Private to lora.c and lora_hook.c. */
    real *storage;                /* every A and B value */
    real *grad_storage;           /* every A and B gradient, after lora_want_grads */
    int cap_rows;                 /* rows one forward/backward chunk may have */
    int max_in, max_rank;         /* scratch sizing */
    real *scratch_x;              /* (cap_rows, max_in) the dropped-out input; dropout only */
    real *scratch_u, *scratch_du; /* (cap_rows, max_rank) */
    lora_group *groups;           /* set by lora_attach */
    int n_groups;
    int max_rank_sum;               /* the largest group's Σ rank */
    real *scratch_gA, *scratch_gdA; /* (max_rank_sum, max_in): the A's side by side; dA */
    real *scratch_gu, *scratch_gdu; /* (cap_rows, max_rank_sum) */
    lora_group *pending;            /* a group whose backward waits for members, or NULL */
    uint64_t calls;                 /* forward and backward calls so far */
};

/* Builds the adapter for model m: resolves targets, per-module rank and
 * alpha, checks them (clear errors: a target name that matches no module, no
 * module matched at all, rank 0 or above min(in, out), alpha not finite,
 * dropout outside [0, 1)), allocates A and B and initialises them as PEFT
 * does from cfg->seed. Does not attach: the model is left untouched. */
int lora_create(lora_set **out, const model *m, const lora_config *cfg);
/* Detaches (when attached) and frees. NULL is fine. */
void lora_free(lora_set *s);

/* Plugs every module into its linear of m (the model it was created for, or
 * one with the same config): model_forward / model_backward then include the
 * adapters. Refused if a linear already carries an adapter. */
int lora_attach(lora_set *s, model *m);
void lora_detach(lora_set *s);

/* Allocates zeroed gradients for every A and B (needed before a backward
 * that should train them). */
int lora_want_grads(lora_set *s);
void lora_zero_grads(lora_set *s);
/* Dropout on (training) or off (evaluation, generation). Off after create. */
void lora_set_training(lora_set *s, int on);
/* Sizes the per-module buffers so that a forward of up to rows = B·T tokens
 * keeps x̃Aᵀ for its backward and runs as one GEMM. Larger forwards still
 * work (in chunks, recomputing x̃Aᵀ in backward); this only saves time. */
int lora_reserve(lora_set *s, int rows);

/* The dropout masks' position: the number of training forwards so far (the
 * same for every module). A checkpoint stores it; a resume sets it back so
 * the masks continue where they were. */
uint64_t lora_dropout_counter(const lora_set *s);
void lora_set_dropout_counter(lora_set *s, uint64_t counter);

/* The trainable tensors, 2·n_modules of them: modules[i].A at 2i, .B at 2i+1. */
int lora_num_tensors(const lora_set *s);
model_param *lora_tensor(lora_set *s, int i);
/* Total trainable values. */
int64_t lora_num_params(const lora_set *s);
/* The module with that path, or NULL. */
lora_module *lora_find(const lora_set *s, const char *path);

/* Copies A and B values from src into dst, module by module; both must have
 * the same modules, ranks and shapes (used to restore a checkpoint). */
int lora_copy_values(lora_set *dst, const lora_set *src);

#endif
