/* config_family.c — the supported families (model/config.h) and what each
 * fixes: the block options (model_config_family), the consistency rules of
 * a config (model_config_check), its parameter count, and the presets of
 * `fedlora init-model`. config.c reads and writes config.json. */
#include "model/config_table.h"

#include "util/err.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The block options of each family (model/config.h): norms, their places,
 * positions, q/k/v layout, QK-norm, MLP and activation. */
#define LLAMA_BLOCK                                                                                \
    {                                                                                              \
        MODEL_NORM_RMS, 1, 0, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_NONE,              \
            MODEL_MLP_GATED, MODEL_ACT_SILU                                                        \
    }

const model_config_family_info model_config_families[] = {
    {"llama", "LlamaForCausalLM", MODEL_FAMILY_LLAMA, MODEL_ARCH_LLAMA, LLAMA_BLOCK},
    {"mistral", "MistralForCausalLM", MODEL_FAMILY_MISTRAL, MODEL_ARCH_LLAMA, LLAMA_BLOCK},
    {"qwen2", "Qwen2ForCausalLM", MODEL_FAMILY_QWEN2, MODEL_ARCH_LLAMA, LLAMA_BLOCK},
    {"gpt2",
     "GPT2LMHeadModel",
     MODEL_FAMILY_GPT2,
     MODEL_ARCH_GPT2,
     {MODEL_NORM_LAYER, 1, 0, MODEL_POS_LEARNED, MODEL_QKV_FUSED, MODEL_QK_NORM_NONE,
      MODEL_MLP_PLAIN, MODEL_ACT_GELU_TANH}},
    /* Qwen3: Llama's block with an RMSNorm of each q and k head (modeling_qwen3.py). */
    {"qwen3",
     "Qwen3ForCausalLM",
     MODEL_FAMILY_QWEN3,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS, 1, 0, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_HEAD, MODEL_MLP_GATED,
      MODEL_ACT_SILU}},
    /* OLMo 2: norms on the sublayers' outputs, none on their inputs; QK-norm
     * over the whole projections (modeling_olmo2.py). */
    {"olmo2",
     "Olmo2ForCausalLM",
     MODEL_FAMILY_OLMO2,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS, 0, 1, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_PROJ, MODEL_MLP_GATED,
      MODEL_ACT_SILU}},
    /* Apertus: per-head QK-norm, down(xielu(up(x))) (modeling_apertus.py). */
    {"apertus",
     "ApertusForCausalLM",
     MODEL_FAMILY_APERTUS,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS, 1, 0, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_HEAD, MODEL_MLP_PLAIN,
      MODEL_ACT_XIELU}},
    /* Gemma 2: RMSNorm with (1 + w) before and after each sublayer, GeGLU,
     * the embedding times √C (modeling_gemma2.py). */
    {"gemma2",
     "Gemma2ForCausalLM",
     MODEL_FAMILY_GEMMA2,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS_1P, 1, 1, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_NONE,
      MODEL_MLP_GATED, MODEL_ACT_GELU_TANH, 1}},
    /* Gemma 3's language model: Gemma 2's block with a per-head (1 + w)
     * QK-norm (modeling_gemma3.py). */
    {"gemma3_text",
     "Gemma3ForCausalLM",
     MODEL_FAMILY_GEMMA3,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS_1P, 1, 1, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_HEAD,
      MODEL_MLP_GATED, MODEL_ACT_GELU_TANH, 1}},
    /* Phi-3: Llama's block with q|k|v and gate|up each from one linear
     * (qkv_proj, gate_up_proj; modeling_phi3.py). */
    {"phi3",
     "Phi3ForCausalLM",
     MODEL_FAMILY_PHI3,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS, 1, 0, MODEL_POS_ROPE, MODEL_QKV_FUSED, MODEL_QK_NORM_NONE,
      MODEL_MLP_GATED_FUSED, MODEL_ACT_SILU}},
    /* Mixtral: Mistral's attention, a sparse mixture of SwiGLU experts as
     * the MLP (modeling_mixtral.py). */
    {"mixtral",
     "MixtralForCausalLM",
     MODEL_FAMILY_MIXTRAL,
     MODEL_ARCH_LLAMA,
     {MODEL_NORM_RMS, 1, 0, MODEL_POS_ROPE, MODEL_QKV_SEPARATE, MODEL_QK_NORM_NONE, MODEL_MLP_MOE,
      MODEL_ACT_SILU}},
    /* BLOOM (and Poro): LayerNorm, ALiBi, query_key_value interleaved by
     * head, a LayerNorm on the embedding, GELU-tanh (bloom_gelu_forward's
     * constants are sqrt(2/pi) and 3·0.044715·sqrt(2/pi) to 1e-9, the same
     * fp32 numbers) in a plain MLP (modeling_bloom.py). */
    {"bloom",
     "BloomForCausalLM",
     MODEL_FAMILY_BLOOM,
     MODEL_ARCH_BLOOM,
     {MODEL_NORM_LAYER, 1, 0, MODEL_POS_ALIBI, MODEL_QKV_HEADS, MODEL_QK_NORM_NONE, MODEL_MLP_PLAIN,
      MODEL_ACT_GELU_TANH, 0, 1}},
};
const int model_config_n_families =
    (int)(sizeof model_config_families / sizeof model_config_families[0]);

int model_config_family_index(model_family f) {
    for (int i = 0; i < model_config_n_families; i++)
        if (model_config_families[i].family == f) return i;
    return -1;
}

int model_config_same_block(const model_block *a, const model_block *b) {
    return a->norm == b->norm && a->pre_norm == b->pre_norm && a->post_norm == b->post_norm &&
           a->pos == b->pos && a->qkv == b->qkv && a->qk_norm == b->qk_norm && a->mlp == b->mlp &&
           a->act == b->act && a->embed_scale == b->embed_scale && a->embed_norm == b->embed_norm;
}

double model_config_attn_scale(const model_config *c) {
    double s = c->query_pre_attn_scalar > 0 ? c->query_pre_attn_scalar : c->head_dim;
    return 1.0 / sqrt(s);
}

int model_config_family(model_config *c, model_family f) {
    int fi = model_config_family_index(f);
    if (fi < 0) return err_set("unknown model family %d", (int)f);
    c->family = f;
    c->arch = model_config_families[fi].arch;
    c->block = model_config_families[fi].block;
    return 0;
}

void model_config_apertus_rope(model_config *c) {
    c->rope_theta = 12000000.0;
    c->rope_llama3 = 1;
    c->rope_factor = 8.0;
    c->rope_low_freq_factor = 1.0;
    c->rope_high_freq_factor = 4.0;
    c->rope_original_max_position = 8192;
}

/* ---- consistency ------------------------------------------------------------------ */

static int in_range(long long v, long long lo, long long hi) {
    return v >= lo && v <= hi;
}

static int positive_finite(double x) {
    return isfinite(x) && x > 0;
}

static int is_gemma(const model_config *c) {
    return c->family == MODEL_FAMILY_GEMMA2 || c->family == MODEL_FAMILY_GEMMA3;
}

/* Soft-capping, the score scale and per-layer windows: Gemma's options,
 * refused elsewhere (nothing else parses them). */
static int check_layer_options(const model_config *c, const char *where) {
    int gemma = is_gemma(c);
    if (!(c->attn_softcap == 0 || positive_finite(c->attn_softcap)) ||
        !(c->final_softcap == 0 || positive_finite(c->final_softcap)) ||
        !(c->query_pre_attn_scalar == 0 || positive_finite(c->query_pre_attn_scalar)))
        return err_set("%s: soft-capping and query_pre_attn_scalar must be > 0 (or absent)", where);
    if (c->attn_softcap && c->family != MODEL_FAMILY_GEMMA2)
        return err_set("%s: attention logit soft-capping is Gemma 2's option, not %s's", where,
                       model_config_families[model_config_family_index(c->family)].model_type);
    if ((c->final_softcap || c->query_pre_attn_scalar || c->layer_types) && !gemma)
        return err_set("%s: final logit soft-capping, query_pre_attn_scalar and layer_types are "
                       "Gemma's options",
                       where);
    int n_sliding = 0;
    for (int l = 0; l < MODEL_MAX_LAYERS; l++) {
        if (c->layer_sliding[l] > 1 ||
            (c->layer_sliding[l] && (!c->layer_types || l >= c->num_layers)))
            return err_set("%s: layer_sliding[%d] is not a flag of a layer of the model", where, l);
        n_sliding += c->layer_sliding[l];
    }
    if (n_sliding && !c->sliding_window)
        return err_set("%s: sliding_attention layers but no sliding_window", where);
    return 0;
}

/* RoPE beyond llama3 scaling: partial rotation and LongRoPE (Phi-3), linear
 * scaling, Gemma 3's local base. */
static int check_rope_options(const model_config *c, const char *where) {
    int phi3 = c->family == MODEL_FAMILY_PHI3;
    if (c->rope_dim && (c->rope_dim % 2 != 0 || c->rope_dim < 2 || c->rope_dim > c->head_dim ||
                        (!phi3 && c->rope_dim != c->head_dim)))
        return err_set("%s: RoPE over %d of head_dim %d dimensions: partial rotation is Phi-3's, "
                       "over an even number of dimensions up to head_dim",
                       where, c->rope_dim, c->head_dim);
    if (c->rope_llama3 + c->rope_linear + c->rope_longrope > 1)
        return err_set("%s: more than one RoPE scaling", where);
    if (c->rope_linear && !(isfinite(c->rope_factor) && c->rope_factor >= 1))
        return err_set("%s: linear rope_scaling needs factor >= 1", where);
    if (c->rope_local_theta &&
        (c->family != MODEL_FAMILY_GEMMA3 || !positive_finite(c->rope_local_theta)))
        return err_set("%s: a local RoPE base (rope_local_base_freq) is Gemma 3's, and > 0", where);
    for (int i = 0; i < MODEL_MAX_ROPE_FACTORS; i++) {
        int used = c->rope_longrope && i < model_config_rope_dim(c) / 2;
        if (used ? !(positive_finite(c->rope_short[i]) && positive_finite(c->rope_long[i]))
                 : c->rope_short[i] != 0 || c->rope_long[i] != 0)
            return err_set("%s: LongRoPE factor %d: %s", where, i,
                           used ? "short_factor and long_factor must be > 0"
                                : "beyond the rotary dimensions");
    }
    if (!c->rope_longrope) return 0;
    if (!phi3) return err_set("%s: LongRoPE scaling is Phi-3's", where);
    if (model_config_rope_dim(c) / 2 > MODEL_MAX_ROPE_FACTORS)
        return err_set("%s: LongRoPE over %d rotary dimensions: at most %d are supported", where,
                       model_config_rope_dim(c), 2 * MODEL_MAX_ROPE_FACTORS);
    if (!in_range(c->rope_original_max_position, 1, MAX_POSITIONS) ||
        !(c->rope_attn_factor == 0 || positive_finite(c->rope_attn_factor)) ||
        !(c->rope_factor == 0 || (isfinite(c->rope_factor) && c->rope_factor >= 1)))
        return err_set("%s: LongRoPE needs original_max_position_embeddings >= 1, an "
                       "attention_factor > 0 (or none) and factor >= 1 (or none)",
                       where);
    return 0;
}

/* The experts: only MLP_MOE has them, 1 <= k <= E. */
static int moe_check(const model_config *c, const char *where) {
    if (c->block.mlp != MODEL_MLP_MOE) {
        if (c->num_experts || c->experts_per_tok || c->router_aux_loss)
            return err_set("%s: experts are set but the MLP is not a mixture of experts", where);
        return 0;
    }
    if (c->num_experts < 1 || c->num_experts > MAX_EXPERTS || c->experts_per_tok < 1 ||
        c->experts_per_tok > c->num_experts || c->experts_per_tok > MAX_EXPERTS_PER_TOK)
        return err_set("%s: %d experts with %d per token: need 1 <= num_experts_per_tok <= "
                       "num_local_experts <= %d and num_experts_per_tok <= %d",
                       where, c->num_experts, c->experts_per_tok, MAX_EXPERTS, MAX_EXPERTS_PER_TOK);
    if (!isfinite(c->router_aux_loss_coef) || c->router_aux_loss_coef < 0)
        return err_set("%s: router_aux_loss_coef must be a finite number >= 0", where);
    return 0;
}

int model_config_seq_check(const model_config *c, long long seq, const char *what) {
    if (seq >= 1 && seq <= c->max_position) return 0;
    return err_set("%s = %lld is outside the model's context of 1 to %d tokens "
                   "(max_position_embeddings / n_positions in config.json): positions beyond it "
                   "were never trained, and the activations grow with every token",
                   what, seq, c->max_position);
}

int model_config_check(const model_config *c, const char *where) {
    int fi = model_config_family_index(c->family);
    if (fi < 0 || model_config_families[fi].arch != c->arch)
        return err_set("%s: invalid architecture/family in the model config", where);
    if (!model_config_same_block(&c->block, &model_config_families[fi].block))
        return err_set("%s: the block options (norms, QK-norm, MLP, activation, positions) are not "
                       "those of %s; set them with model_config_family",
                       where, model_config_families[fi].model_type);
    if (!in_range(c->vocab_size, 1, MAX_VOCAB) || !in_range(c->hidden_size, 1, MAX_HIDDEN) ||
        !in_range(c->intermediate_size, 1, MAX_FFN) || !in_range(c->num_layers, 1, MAX_LAYERS) ||
        !in_range(c->num_heads, 1, MAX_HEADS) || !in_range(c->num_kv_heads, 1, MAX_HEADS) ||
        !in_range(c->head_dim, 1, MAX_HEAD_DIM) || !in_range(c->max_position, 1, MAX_POSITIONS))
        return err_set("%s: a size is zero, negative or beyond the supported bounds (V %d, C %d, "
                       "F %d, L %d, H %d, KV %d, D %d, T %d)",
                       where, c->vocab_size, c->hidden_size, c->intermediate_size, c->num_layers,
                       c->num_heads, c->num_kv_heads, c->head_dim, c->max_position);
    if (c->num_heads % c->num_kv_heads != 0)
        return err_set("%s: num_attention_heads %d is not a multiple of num_key_value_heads %d",
                       where, c->num_heads, c->num_kv_heads);
    if (!positive_finite(c->norm_eps)) return err_set("%s: the norm epsilon must be > 0", where);
    if (!isfinite(c->initializer_range) || c->initializer_range < 0)
        return err_set("%s: initializer_range must be >= 0", where);
    if (c->bos_token_id < -1 || c->eos_token_id < -1)
        return err_set("%s: invalid bos/eos token id", where);
    if (c->sliding_window < 0) return err_set("%s: sliding_window must be >= 0", where);
    if (moe_check(c, where) != 0) return -1;
    if (strcmp(c->torch_dtype, "float32") != 0 && strcmp(c->torch_dtype, "bfloat16") != 0 &&
        strcmp(c->torch_dtype, "float16") != 0)
        return err_set("%s: torch_dtype '%s' is not float32, bfloat16 or float16", where,
                       c->torch_dtype);
    if (check_layer_options(c, where) != 0) return -1;
    if (c->arch == MODEL_ARCH_GPT2) {
        if (c->num_kv_heads != c->num_heads || c->head_dim * c->num_heads != c->hidden_size)
            return err_set("%s: GPT-2 needs KV = H and D = C / H", where);
        if (!c->tie_embeddings) return err_set("%s: GPT-2's lm_head is always tied", where);
        if (c->sliding_window || c->rope_llama3 || c->rope_linear || c->rope_longrope ||
            c->rope_local_theta || c->rope_dim)
            return err_set("%s: GPT-2 has no sliding window or RoPE scaling", where);
        return 0;
    }
    if (c->arch == MODEL_ARCH_BLOOM) {
        /* BloomAttention: KV = H, D = C / H; every linear has a bias. */
        if (c->num_kv_heads != c->num_heads || c->head_dim * c->num_heads != c->hidden_size)
            return err_set("%s: BLOOM needs KV = H and D = C / H", where);
        if (c->intermediate_size != 4 * c->hidden_size)
            return err_set("%s: BLOOM's MLP is 4 * hidden_size wide (dense_h_to_4h)", where);
        if (!c->qkv_bias || !c->o_bias || !c->mlp_bias)
            return err_set("%s: every BLOOM linear has a bias", where);
        if (c->sliding_window || c->rope_llama3 || c->rope_linear || c->rope_longrope ||
            c->rope_local_theta || c->rope_dim)
            return err_set("%s: BLOOM has no sliding window or RoPE scaling (ALiBi positions)",
                           where);
        return 0;
    }
    if (c->head_dim % 2 != 0)
        return err_set("%s: head_dim %d is odd; RoPE rotates pairs of dimensions", where,
                       c->head_dim);
    if (!positive_finite(c->rope_theta)) return err_set("%s: rope_theta must be > 0", where);
    if (check_rope_options(c, where) != 0) return -1;
    if (c->rope_llama3 && (!(isfinite(c->rope_factor) && c->rope_factor >= 1) ||
                           !positive_finite(c->rope_low_freq_factor) ||
                           !(isfinite(c->rope_high_freq_factor) &&
                             c->rope_high_freq_factor > c->rope_low_freq_factor) ||
                           !in_range(c->rope_original_max_position, 1, MAX_POSITIONS)))
        return err_set("%s: llama3 rope_scaling needs factor >= 1, 0 < low_freq_factor < "
                       "high_freq_factor and original_max_position_embeddings >= 1",
                       where);
    switch (c->family) {
        case MODEL_FAMILY_LLAMA:
            if (c->qkv_bias != c->o_bias)
                return err_set("%s: Llama's attention_bias covers q/k/v and o alike", where);
            if (c->sliding_window) return err_set("%s: Llama has no sliding window", where);
            break;
        case MODEL_FAMILY_MISTRAL:
            if (c->qkv_bias || c->o_bias || c->mlp_bias)
                return err_set("%s: Mistral has no linear biases", where);
            break;
        case MODEL_FAMILY_QWEN2:
            if (!c->qkv_bias || c->o_bias || c->mlp_bias)
                return err_set("%s: Qwen2 has q/k/v biases and no other", where);
            break;
        case MODEL_FAMILY_MIXTRAL:
            if (c->qkv_bias || c->o_bias || c->mlp_bias)
                return err_set("%s: Mixtral has no linear biases", where);
            break;
        case MODEL_FAMILY_PHI3:
            if (c->qkv_bias || c->o_bias || c->mlp_bias)
                return err_set("%s: Phi-3 has no linear biases", where);
            break;
        case MODEL_FAMILY_GEMMA2:
        case MODEL_FAMILY_GEMMA3:
        case MODEL_FAMILY_QWEN3:
        case MODEL_FAMILY_OLMO2:
        case MODEL_FAMILY_APERTUS:
            if (c->qkv_bias != c->o_bias || c->mlp_bias)
                return err_set("%s: %s's attention_bias covers q/k/v and o alike, and its MLP has "
                               "no bias",
                               where, model_config_families[fi].model_type);
            if (c->sliding_window &&
                (c->family == MODEL_FAMILY_OLMO2 || c->family == MODEL_FAMILY_APERTUS))
                return err_set("%s: %s has no sliding window", where,
                               model_config_families[fi].model_type);
            break;
        default:
            break;
    }
    return 0;
}

long long model_config_num_params(const model_config *c) {
    long long V = c->vocab_size, C = c->hidden_size, F = c->intermediate_size;
    long long L = c->num_layers, T = c->max_position;
    if (c->arch == MODEL_ARCH_GPT2)
        /* wte, wpe; per layer ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj; ln_f */
        return V * C + T * C +
               L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C) + 2 * C;
    if (c->arch == MODEL_ARCH_BLOOM)
        /* word_embeddings (and an untied lm_head), its LayerNorm; per layer
         * input_layernorm, query_key_value, dense, post_attention_layernorm,
         * dense_h_to_4h, dense_4h_to_h; ln_f */
        return V * C * (c->tie_embeddings ? 1 : 2) + 2 * C +
               L * (2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + C * F + F + F * C + C) + 2 * C;
    const model_block *b = &c->block;
    long long D = c->head_dim, Q = (long long)c->num_heads * D, K = (long long)c->num_kv_heads * D;
    int gated = b->mlp == MODEL_MLP_GATED || b->mlp == MODEL_MLP_GATED_FUSED;
    long long layer = C * Q + 2 * C * K + Q * C + (gated ? 3 : 2) * C * F;
    if (b->mlp == MODEL_MLP_MOE) /* the router (E, C) and E experts' w1, w2, w3 */
        layer = C * Q + 2 * C * K + Q * C + (long long)c->num_experts * (C + 3 * C * F);
    layer += (b->pre_norm + b->post_norm) * 2 * C;
    if (b->qk_norm) layer += b->qk_norm == MODEL_QK_NORM_HEAD ? 2 * D : Q + K;
    if (b->act == MODEL_ACT_XIELU) layer += 2; /* alpha_p, alpha_n (beta, eps are buffers) */
    layer += c->qkv_bias * (Q + 2 * K) + c->o_bias * C + c->mlp_bias * ((gated ? 2 : 1) * F + C);
    return V * C * (c->tie_embeddings ? 1 : 2) + L * layer + C;
}

/* ---- presets ------------------------------------------------------------------------ */

typedef struct {
    const char *arch, *name;
    int V, C, F, L, H, KV, T, tied;
    int E, k; /* experts (Mixtral) */
} preset;

/* tiny and small use a byte-level vocabulary (256 bytes + specials) so tests
 * and demos need no large tokenizer; 124m is GPT-2 small's shape, 100m a
 * Llama of about 100M parameters with the Llama-2 vocabulary. F for gated
 * MLPs is about 8C/3 (SwiGLU keeps the MLP's parameter count near GPT-2's
 * 8C²); Apertus's plain MLP is 4C as GPT-2's, BLOOM's always 4C. Every
 * family has a tiny; mixtral 400m is the shape of the MoE benchmark (8
 * experts, top-2, 402M parameters; 122M of them multiply each token: the
 * attention, the router, 2 of 8 experts and the head). */
static const preset presets[] = {
    {"llama", "tiny", 320, 64, 176, 2, 4, 2, 256, 0},
    {"llama", "small", 320, 384, 1024, 6, 6, 2, 1024, 1},
    {"llama", "100m", 32000, 768, 2048, 12, 12, 4, 2048, 1},
    {"gpt2", "tiny", 320, 64, 256, 2, 4, 4, 256, 1},
    {"gpt2", "small", 320, 384, 1536, 6, 6, 6, 1024, 1},
    {"gpt2", "124m", 50257, 768, 3072, 12, 12, 12, 1024, 1},
    {"mistral", "tiny", 320, 64, 176, 2, 4, 2, 256, 0},
    {"qwen2", "tiny", 320, 64, 176, 2, 4, 2, 256, 1},
    {"qwen3", "tiny", 320, 64, 176, 2, 4, 2, 256, 1},
    {"olmo2", "tiny", 320, 64, 176, 2, 4, 2, 256, 0},
    {"apertus", "tiny", 320, 64, 256, 2, 4, 2, 256, 0},
    {"gemma2", "tiny", 320, 64, 176, 2, 4, 2, 256, 1},
    {"gemma3_text", "tiny", 320, 64, 176, 2, 4, 2, 256, 1},
    {"phi3", "tiny", 320, 64, 176, 2, 4, 2, 256, 0},
    {"mixtral", "tiny", 320, 64, 128, 2, 4, 2, 256, 0, 4, 2},
    {"mixtral", "400m", 32000, 768, 2304, 8, 12, 4, 4096, 0, 8, 2},
    {"bloom", "tiny", 320, 64, 256, 2, 4, 4, 256, 1},
};

/* Gemma's attention in a tiny preset: a sliding layer then a global one
 * (window 64 < the preset's 256 positions), scores scaled by 1/√D; Gemma 2
 * soft-caps as its configs do (50, 30), Gemma 3 has its two RoPE bases. */
static void gemma_preset(model_config *c) {
    c->layer_types = 1;
    for (int l = 0; l < c->num_layers; l++) c->layer_sliding[l] = l % 2 == 0;
    c->sliding_window = 64;
    c->query_pre_attn_scalar = c->head_dim;
    c->norm_eps = 1e-6;
    if (c->family == MODEL_FAMILY_GEMMA2) {
        c->attn_softcap = 50.0;
        c->final_softcap = 30.0;
    } else {
        c->rope_theta = 1000000.0;
        c->rope_local_theta = 10000.0;
    }
}

int model_config_preset(model_config *cfg, const char *arch, const char *name) {
    memset(cfg, 0, sizeof *cfg);
    int fi = -1;
    for (int i = 0; i < model_config_n_families; i++)
        if (strcmp(model_config_families[i].model_type, arch) == 0) fi = i;
    if (fi < 0) return err_set("unknown architecture '%s' (valid: " MODEL_CONFIG_TYPES ")", arch);
    const preset *p = NULL;
    char valid[64] = "";
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (strcmp(presets[i].arch, arch) != 0) continue;
        if (strcmp(presets[i].name, name) == 0) p = &presets[i];
        size_t used = strlen(valid);
        snprintf(valid + used, sizeof valid - used, "%s%s", used ? ", " : "", presets[i].name);
    }
    if (!p) return err_set("unknown preset '%s' for %s (valid: %s)", name, arch, valid);
    model_config_family(cfg, model_config_families[fi].family);
    int gpt2 = cfg->arch == MODEL_ARCH_GPT2;
    cfg->vocab_size = p->V;
    cfg->hidden_size = p->C;
    cfg->intermediate_size = p->F;
    cfg->num_layers = p->L;
    cfg->num_heads = p->H;
    cfg->num_kv_heads = p->KV;
    cfg->head_dim = p->C / p->H;
    cfg->max_position = p->T;
    cfg->norm_eps = 1e-5;
    cfg->rope_theta = gpt2 ? 0.0 : 10000.0;
    cfg->tie_embeddings = p->tied;
    int bloom = cfg->arch == MODEL_ARCH_BLOOM;
    cfg->qkv_bias = cfg->o_bias = cfg->mlp_bias = gpt2 || bloom; /* GPT-2, BLOOM: every bias */
    if (bloom) cfg->rope_theta = 0.0;
    cfg->num_experts = p->E;
    cfg->experts_per_tok = p->k;
    if (p->E) {
        cfg->router_aux_loss_coef = 0.001; /* MixtralConfig's defaults */
        cfg->rope_theta = 1e6;
    }
    if (cfg->family == MODEL_FAMILY_QWEN2) cfg->qkv_bias = 1;
    if (cfg->family == MODEL_FAMILY_APERTUS) model_config_apertus_rope(cfg);
    if (is_gemma(cfg)) gemma_preset(cfg);
    cfg->initializer_range = 0.02;
    cfg->bos_token_id = cfg->eos_token_id = -1;
    if (p->V == 50257) cfg->bos_token_id = cfg->eos_token_id = 50256; /* <|endoftext|> */
    if (p->V == 32000) cfg->bos_token_id = 1, cfg->eos_token_id = 2;  /* Llama-2's <s>, </s> */
    snprintf(cfg->torch_dtype, sizeof cfg->torch_dtype, "float32");
    return model_config_check(cfg, "preset");
}
