/* test_config — config.json of each supported family (as transformers 4 and
 * 5 write them), transformers' defaults, refusals by name, save -> parse
 * round trips and the presets. */
#include "model/config.h"
#include "model/model.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

static int parse(model_config *c, const char *json) {
    return model_config_parse(c, json, strlen(json), "test/config.json");
}

/* transformers 5 save_pretrained output for a small LlamaForCausalLM. */
static const char *llama_v5 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "
    "\"attention_dropout\": 0.0, \"bos_token_id\": 1, \"dtype\": \"bfloat16\", \"eos_token_id\": 2,"
    " \"head_dim\": 16, \"hidden_act\": \"silu\", \"hidden_size\": 64, \"initializer_range\": "
    "0.02, \"intermediate_size\": 128, \"max_position_embeddings\": 128, \"mlp_bias\": false, "
    "\"model_type\": \"llama\", \"num_attention_heads\": 4, \"num_hidden_layers\": 2, "
    "\"num_key_value_heads\": 2, \"pad_token_id\": null, \"pretraining_tp\": 1, \"rms_norm_eps\": "
    "1e-06, \"rope_parameters\": {\"rope_theta\": 10000.0, \"rope_type\": \"default\"}, "
    "\"tie_word_embeddings\": false, \"transformers_version\": \"5.24.0\", \"use_cache\": true, "
    "\"vocab_size\": 320}";

static void test_llama(void) {
    model_config c;
    CHECK_OK(parse(&c, llama_v5));
    CHECK(c.arch == MODEL_ARCH_LLAMA && c.family == MODEL_FAMILY_LLAMA);
    CHECK(c.vocab_size == 320 && c.hidden_size == 64 && c.intermediate_size == 128);
    CHECK(c.num_layers == 2 && c.num_heads == 4 && c.num_kv_heads == 2 && c.head_dim == 16);
    CHECK(c.max_position == 128 && c.norm_eps == 1e-6 && c.rope_theta == 10000.0);
    CHECK(!c.rope_llama3 && !c.tie_embeddings && !c.qkv_bias && !c.o_bias && !c.mlp_bias);
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.sliding_window == 0);
    CHECK(strcmp(c.torch_dtype, "bfloat16") == 0);
    /* untied embeddings 2·V·C, final norm C, per layer 2C + q,o C·C + k,v C·C/2 + 3·C·F */
    CHECK(model_config_num_params(&c) ==
          2 * 320 * 64 + 64 + 2 * (2 * 64 + 3 * 64 * 64 + 3 * 64 * 128));

    /* transformers 4 spelling of Llama 3.1: rope_theta + rope_scaling, eos a
     * list, torch_dtype, biases, head_dim and KV defaulted. */
    const char *v4 = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
                     "\"vocab_size\": 1000, \"hidden_size\": 96, \"intermediate_size\": 200, "
                     "\"num_hidden_layers\": 3, \"num_attention_heads\": 6, "
                     "\"attention_bias\": true, \"mlp_bias\": true, \"tie_word_embeddings\": true,"
                     " \"rope_theta\": 500000.0, \"rope_scaling\": {\"factor\": 8.0, "
                     "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
                     "\"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"}, "
                     "\"eos_token_id\": [128001, 128008, 128009], \"torch_dtype\": \"float16\"}";
    CHECK_OK(parse(&c, v4));
    CHECK(c.num_kv_heads == 6 && c.head_dim == 16 && c.max_position == 2048);
    CHECK(c.norm_eps == 1e-6 && c.rope_theta == 500000.0 && c.rope_llama3);
    CHECK(c.rope_factor == 8 && c.rope_low_freq_factor == 1 && c.rope_high_freq_factor == 4);
    CHECK(c.rope_original_max_position == 8192);
    CHECK(c.qkv_bias && c.o_bias && c.mlp_bias && c.tie_embeddings);
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 128001);
    CHECK(strcmp(c.torch_dtype, "float16") == 0);

    /* transformers 5 spelling of llama3, with the legacy "type" key. */
    const char *v5_llama3 = "{\"model_type\": \"llama\", \"vocab_size\": 10, \"hidden_size\": 8, "
                            "\"intermediate_size\": 8, \"num_hidden_layers\": 1, "
                            "\"num_attention_heads\": 2, \"max_position_embeddings\": 64, "
                            "\"rope_parameters\": {\"type\": \"llama3\", \"rope_theta\": 1000, "
                            "\"factor\": 2, \"low_freq_factor\": 1, \"high_freq_factor\": 2}, "
                            "\"bos_token_id\": null}";
    CHECK_OK(parse(&c, v5_llama3));
    CHECK(c.rope_llama3 && c.rope_theta == 1000 && c.rope_original_max_position == 64);
    CHECK(c.bos_token_id == -1 && c.eos_token_id == 2);
}

static void test_mistral_qwen2(void) {
    model_config c;
    const char *mistral = "{\"architectures\": [\"MistralForCausalLM\"], \"model_type\": "
                          "\"mistral\", \"vocab_size\": 320, \"hidden_size\": 64, "
                          "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                          "\"num_attention_heads\": 4, \"num_key_value_heads\": 1, "
                          "\"sliding_window\": null, \"rope_theta\": 1000000.0}";
    CHECK_OK(parse(&c, mistral));
    CHECK(c.family == MODEL_FAMILY_MISTRAL && c.arch == MODEL_ARCH_LLAMA);
    CHECK(c.sliding_window == 0 && c.num_kv_heads == 1 && c.max_position == 131072);
    CHECK(c.rope_theta == 1e6 && !c.qkv_bias && !c.tie_embeddings);

    const char *mistral_window = "{\"model_type\": \"mistral\", \"vocab_size\": 320, "
                                 "\"hidden_size\": 64, \"intermediate_size\": 128, "
                                 "\"num_hidden_layers\": 2, \"num_attention_heads\": 4}";
    CHECK_OK(parse(&c, mistral_window));
    CHECK(c.sliding_window == 4096); /* MistralConfig's default */

    const char *qwen2 = "{\"architectures\": [\"Qwen2ForCausalLM\"], \"model_type\": \"qwen2\", "
                        "\"vocab_size\": 320, \"hidden_size\": 64, \"intermediate_size\": 128, "
                        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                        "\"num_key_value_heads\": 2, \"layer_types\": [\"full_attention\", "
                        "\"full_attention\"], \"max_window_layers\": 28, \"sliding_window\": "
                        "131072, \"use_sliding_window\": false, \"tie_word_embeddings\": true, "
                        "\"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": "
                        "\"default\"}, \"bos_token_id\": 151643, \"eos_token_id\": 151645}";
    CHECK_OK(parse(&c, qwen2));
    CHECK(c.family == MODEL_FAMILY_QWEN2 && c.qkv_bias && !c.o_bias && !c.mlp_bias);
    CHECK(c.sliding_window == 0 && c.tie_embeddings && c.max_position == 32768);
    CHECK(c.bos_token_id == 151643 && c.eos_token_id == 151645);

    const char *qwen2_sliding = "{\"model_type\": \"qwen2\", \"vocab_size\": 320, "
                                "\"hidden_size\": 64, \"intermediate_size\": 128, "
                                "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                                "\"use_sliding_window\": true, \"sliding_window\": 16, "
                                "\"max_window_layers\": 0}";
    CHECK_OK(parse(&c, qwen2_sliding));
    CHECK(c.sliding_window == 16 && c.bos_token_id == -1);
    const char *qwen2_mixed = "{\"model_type\": \"qwen2\", \"vocab_size\": 320, "
                              "\"hidden_size\": 64, \"intermediate_size\": 128, "
                              "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                              "\"use_sliding_window\": true, \"sliding_window\": 16, "
                              "\"max_window_layers\": 1}";
    CHECK_FAILS_WITH(parse(&c, qwen2_mixed), "1 of 2 layers use a sliding window");
}

static const char *gpt2_hub = /* the original "gpt2" config.json, abridged */
    "{\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"], "
    "\"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1, \"eos_token_id\": 50256, "
    "\"initializer_range\": 0.02, \"layer_norm_epsilon\": 1e-05, \"model_type\": \"gpt2\", "
    "\"n_ctx\": 1024, \"n_embd\": 768, \"n_head\": 12, \"n_layer\": 12, \"n_positions\": 1024, "
    "\"resid_pdrop\": 0.1, \"summary_activation\": null, \"vocab_size\": 50257}";

static void test_gpt2(void) {
    model_config c;
    CHECK_OK(parse(&c, gpt2_hub));
    CHECK(c.arch == MODEL_ARCH_GPT2 && c.family == MODEL_FAMILY_GPT2);
    CHECK(c.hidden_size == 768 && c.num_layers == 12 && c.num_heads == 12 && c.num_kv_heads == 12);
    CHECK(c.head_dim == 64 && c.intermediate_size == 3072 && c.max_position == 1024);
    CHECK(c.norm_eps == 1e-5 && c.tie_embeddings && c.bos_token_id == 50256);
    CHECK(strcmp(c.torch_dtype, "float32") == 0);
    CHECK(model_config_num_params(&c) == 124439808); /* GPT-2 small, as transformers counts */

    const char *inner = "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 8, "
                        "\"n_layer\": 1, \"n_head\": 2, \"n_positions\": 16, \"n_inner\": 20, "
                        "\"activation_function\": \"gelu_pytorch_tanh\"}";
    CHECK_OK(parse(&c, inner));
    CHECK(c.intermediate_size == 20);
}

static void test_refusals(void) {
    model_config c;
    const char *missing = "{\"model_type\": \"llama\", \"vocab_size\": 320, "
                          "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                          "\"num_attention_heads\": 4}";
    CHECK_FAILS_WITH(parse(&c, missing), "test/config.json: required field \"hidden_size\" is "
                                         "missing");
    const char *missing_gpt2 = "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 8, "
                               "\"n_layer\": 1, \"n_head\": 2}";
    CHECK_FAILS_WITH(parse(&c, missing_gpt2), "required field \"n_positions\" is missing");
    CHECK_FAILS_WITH(parse(&c, "{\"architectures\": [\"BertForMaskedLM\"]}"),
                     "unsupported architecture 'BertForMaskedLM'");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"llama\", \"architectures\": "
                               "[\"LlamaForSequenceClassification\"]}"),
                     "unsupported architecture 'LlamaForSequenceClassification'");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"falcon\"}"), "unsupported model_type 'falcon'");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"gpt2\", \"architectures\": "
                               "[\"LlamaForCausalLM\"]}"),
                     "does not match model_type 'gpt2'");
    CHECK_FAILS_WITH(parse(&c, "{}"), "neither \"model_type\" nor \"architectures\"");
    CHECK_FAILS_WITH(parse(&c, "[]"), "not a JSON object");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"llama\",}"), "not valid JSON");

    char buf[2048];
    const char *base = "{\"model_type\": \"llama\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, %s}";
#define WITH(extra) (snprintf(buf, sizeof buf, base, extra), buf)
    CHECK_OK(parse(&c, WITH("\"use_cache\": true")));
    CHECK_FAILS_WITH(parse(&c, WITH("\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}")),
                     "rope type 'yarn' is not supported");
    /* linear scaling: every frequency divided by factor */
    CHECK_OK(parse(&c, WITH("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}")));
    CHECK(c.rope_linear && c.rope_factor == 2 && !c.rope_llama3);
    CHECK_FAILS_WITH(parse(&c, WITH("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 0.5}")),
                     "linear rope_scaling needs factor >= 1");
    CHECK_FAILS_WITH(parse(&c, WITH("\"rope_parameters\": {\"rope_type\": \"dynamic\"}")),
                     "rope type 'dynamic' is not supported");
    CHECK_FAILS_WITH(
        parse(&c, WITH("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8}")),
        "required field \"rope_scaling.low_freq_factor\" is missing");
    CHECK_FAILS_WITH(parse(&c, WITH("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8, "
                                    "\"low_freq_factor\": 4, \"high_freq_factor\": 1}")),
                     "llama3 rope_scaling needs");
    CHECK_FAILS_WITH(parse(&c, WITH("\"hidden_act\": \"gelu\"")),
                     "hidden_act 'gelu' is not supported");
    CHECK_FAILS_WITH(parse(&c, WITH("\"num_key_value_heads\": 3")),
                     "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
    CHECK_FAILS_WITH(parse(&c, WITH("\"hidden_size\": 0")), "duplicate object key"); /* 2nd one */
    CHECK_FAILS_WITH(parse(&c, WITH("\"head_dim\": 15")), "head_dim 15 is odd");
    CHECK_FAILS_WITH(parse(&c, WITH("\"num_key_value_heads\": 0")),
                     "\"num_key_value_heads\" = 0 is out of the supported range [1, 1024]");
    CHECK_FAILS_WITH(parse(&c, WITH("\"max_position_embeddings\": -1")),
                     "\"max_position_embeddings\" = -1 is out of the supported range");
    CHECK_FAILS_WITH(parse(&c, WITH("\"max_position_embeddings\": \"lots\"")),
                     "\"max_position_embeddings\" must be an integer");
    CHECK_FAILS_WITH(parse(&c, WITH("\"tie_word_embeddings\": 1")),
                     "\"tie_word_embeddings\" must be true or false");
    CHECK_FAILS_WITH(parse(&c, WITH("\"partial_rotary_factor\": 0.5")),
                     "partial_rotary_factor 0.5 is not supported");
    CHECK_FAILS_WITH(parse(&c, WITH("\"torch_dtype\": \"float64\"")), "dtype 'float64' is not");
    CHECK_FAILS_WITH(parse(&c, WITH("\"rms_norm_eps\": 0")), "norm epsilon must be > 0");

    const char *gpt2 = "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 8, "
                       "\"n_layer\": 1, \"n_head\": 2, \"n_positions\": 16, %s}";
#define GPT2(extra) (snprintf(buf, sizeof buf, gpt2, extra), buf)
    CHECK_FAILS_WITH(parse(&c, GPT2("\"activation_function\": \"relu\"")),
                     "activation_function 'relu' is not supported");
    CHECK_FAILS_WITH(parse(&c, GPT2("\"tie_word_embeddings\": false")),
                     "tie_word_embeddings false is not supported for GPT-2");
    CHECK_FAILS_WITH(parse(&c, GPT2("\"scale_attn_by_inverse_layer_idx\": true")),
                     "scale_attn_by_inverse_layer_idx true is not supported");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"gpt2\", \"vocab_size\": 50, \"n_embd\": 8, "
                               "\"n_layer\": 1, \"n_head\": 3, \"n_positions\": 16}"),
                     "n_embd 8 is not a multiple of n_head 3");
    CHECK_OK(parse(&c, GPT2("\"reorder_and_upcast_attn\": true")));

    CHECK_FAILS_WITH(model_config_load(&c, ts_tmp("no-config.json")), "cannot open");
}

/* What we write, we read back identically; transformers' own loading of it
 * is checked by the fixtures' tests. */
/* Qwen3, OLMo 2, Apertus: the block options, their configuration_*.py
 * defaults, and what is refused. */
static void test_newer_families(void) {
    model_config c;
    /* Qwen3's defaults: head_dim 128 and 32 kv heads whatever the sizes */
    CHECK_OK(parse(&c, "{\"model_type\": \"qwen3\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 32}"));
    CHECK(c.family == MODEL_FAMILY_QWEN3 && c.block.qk_norm == MODEL_QK_NORM_HEAD);
    CHECK(c.block.pre_norm && !c.block.post_norm && c.block.mlp == MODEL_MLP_GATED);
    CHECK(c.head_dim == 128 && c.num_kv_heads == 32 && c.max_position == 32768);
    CHECK(c.norm_eps == 1e-6 && c.bos_token_id == -1 && !c.qkv_bias && !c.tie_embeddings);
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"qwen3\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 128, "
                               "\"num_hidden_layers\": 4, \"num_attention_heads\": 4, "
                               "\"head_dim\": 16, \"num_key_value_heads\": 2, "
                               "\"use_sliding_window\": true, \"max_window_layers\": 2}"),
                     "2 of 4 layers use a sliding window");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"qwen3\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 128, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                               "\"num_key_value_heads\": 4, \"hidden_act\": \"gelu\"}"),
                     "hidden_act 'gelu' is not supported for qwen3 (only 'silu')");
    /* an architecture of another graph under a model_type */
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"qwen3\", \"architectures\": "
                               "[\"LlamaForCausalLM\"], \"vocab_size\": 320, \"hidden_size\": 64, "
                               "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                               "\"num_attention_heads\": 4, \"num_key_value_heads\": 4}"),
                     "architecture 'LlamaForCausalLM' does not match model_type 'qwen3'");

    /* OLMo 2: norms after the sublayers, QK-norm over the projections */
    CHECK_OK(parse(&c, "{\"architectures\": [\"Olmo2ForCausalLM\"], \"vocab_size\": 320, "
                       "\"hidden_size\": 64, \"intermediate_size\": 128, "
                       "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                       "\"attention_bias\": true}"));
    CHECK(c.family == MODEL_FAMILY_OLMO2 && c.block.qk_norm == MODEL_QK_NORM_PROJ);
    CHECK(!c.block.pre_norm && c.block.post_norm && c.qkv_bias && c.o_bias && !c.mlp_bias);
    CHECK(c.norm_eps == 1e-5 && c.bos_token_id == -1 && c.eos_token_id == 50279);
    CHECK(c.head_dim == 16 && c.num_kv_heads == 4 && c.max_position == 2048);

    /* Apertus: xIELU, plain MLP, llama3 RoPE of theta 1.2e7 by default */
    const char *apertus = "{\"model_type\": \"apertus\", \"vocab_size\": 320, \"hidden_size\": "
                          "64, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
                          "\"num_attention_heads\": 4, \"num_key_value_heads\": 2}";
    CHECK_OK(parse(&c, apertus));
    CHECK(c.family == MODEL_FAMILY_APERTUS && c.block.act == MODEL_ACT_XIELU);
    CHECK(c.block.mlp == MODEL_MLP_PLAIN && c.block.qk_norm == MODEL_QK_NORM_HEAD);
    CHECK(c.rope_llama3 && c.rope_theta == 12000000.0 && c.rope_factor == 8);
    CHECK(c.rope_original_max_position == 8192 && c.max_position == 65536);
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && c.norm_eps == 1e-5);
    /* per layer: 2 norms 2C, q/k norms 2D, q,o C·C, k,v C·C/2, up and down 2·C·F,
     * alpha_p and alpha_n (beta and eps are buffers) */
    CHECK(model_config_num_params(&c) ==
          2 * 320 * 64 + 64 + 2 * (2 * 64 + 2 * 16 + 3 * 64 * 64 + 2 * 64 * 256 + 2));
    CHECK_OK(parse(&c, "{\"model_type\": \"apertus\", \"vocab_size\": 320, \"hidden_size\": "
                       "64, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"rope_scaling\": null, \"rope_theta\": "
                       "12000000.0}"));
    CHECK(c.rope_llama3 && c.rope_theta == 12000000.0);
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"apertus\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 256, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                               "\"rope_theta\": 500000.0}"),
                     "rope_theta 500000 without rope_scaling: transformers 4 and 5 read this "
                     "Apertus config differently");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"apertus\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 256, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                               "\"hidden_act\": \"silu\"}"),
                     "hidden_act 'silu' is not supported for apertus (only 'xielu')");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"apertus\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 256, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
                               "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}"),
                     "rope type 'yarn' is not supported");
    /* the block options are the family's, nothing else */
    CHECK_OK(parse(&c, apertus));
    c.block.act = MODEL_ACT_SILU;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "are not those of apertus");
}

/* Mixtral and BLOOM: the options, MixtralConfig's and BloomConfig's
 * defaults and spellings, and what is refused. */
static void test_mixtral_bloom(void) {
    model_config c;
    const char *mixtral = "{\"model_type\": \"mixtral\", \"vocab_size\": 320, \"hidden_size\": 64, "
                          "\"intermediate_size\": 96, \"num_hidden_layers\": 2, "
                          "\"num_attention_heads\": 8, \"num_local_experts\": 4}";
    CHECK_OK(parse(&c, mixtral));
    CHECK(c.family == MODEL_FAMILY_MIXTRAL && c.arch == MODEL_ARCH_LLAMA);
    CHECK(c.block.mlp == MODEL_MLP_MOE && c.block.act == MODEL_ACT_SILU && c.block.pre_norm);
    /* MixtralConfig: 8 kv heads, top-2, no aux loss (coef 0.001), theta 1e6, no window */
    CHECK(c.num_experts == 4 && c.experts_per_tok == 2 && !c.router_aux_loss);
    CHECK(c.router_aux_loss_coef == 0.001 && c.num_kv_heads == 8 && c.rope_theta == 1e6);
    CHECK(c.sliding_window == 0 && c.max_position == 131072 && c.norm_eps == 1e-5);
    CHECK(c.bos_token_id == 1 && c.eos_token_id == 2 && !c.tie_embeddings && !c.qkv_bias);
    /* per layer: 2 norms, q and o C·C, k and v C·8·8, the router E·C, E experts 3·C·F */
    CHECK(model_config_num_params(&c) ==
          2 * 320 * 64 + 64 + 2 * (2 * 64 + 2 * 64 * 64 + 2 * 64 * 64 + 4 * 64 + 4 * 3 * 64 * 96));
    CHECK_OK(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 96, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 8, \"num_experts\": 8, \"num_experts_per_tok\": "
                       "3, \"output_router_logits\": true, \"router_aux_loss_coef\": 0.02, "
                       "\"sliding_window\": 4096, \"rope_theta\": 500000.0}"));
    CHECK(c.num_experts == 8 && c.experts_per_tok == 3 && c.router_aux_loss);
    CHECK(c.router_aux_loss_coef == 0.02 && c.sliding_window == 4096 && c.rope_theta == 5e5);
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 96, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 8}"),
                     "required field \"num_local_experts\" is missing");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 96, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
                               "\"num_local_experts\": 4, \"num_experts_per_tok\": 5}"),
                     "num_experts_per_tok 5 is more than num_local_experts 4");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 96, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
                               "\"num_local_experts\": 4, \"router_jitter_noise\": 0.01}"),
                     "router_jitter_noise 0.01 is not supported");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 96, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
                               "\"num_local_experts\": 4, \"num_experts\": 6}"),
                     "\"num_local_experts\" = 4 and its alias \"num_experts\" = 6 disagree");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 320, "
                               "\"hidden_size\": 64, \"intermediate_size\": 96, "
                               "\"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
                               "\"num_local_experts\": 4, \"hidden_act\": \"gelu\"}"),
                     "hidden_act 'gelu' is not supported for mixtral (only 'silu')");
    /* experts on a family without them, a dense MLP under mixtral */
    CHECK_OK(parse(&c, mixtral));
    c.experts_per_tok = 0;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "need 1 <= num_experts_per_tok");
    CHECK_OK(parse(&c, llama_v5));
    c.num_experts = 4;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "experts are set but the MLP is not");

    /* BLOOM: n_layer / n_head (or their aliases), 4C MLP, every bias, tied */
    const char *bloom = "{\"architectures\": [\"BloomForCausalLM\"], \"model_type\": \"bloom\", "
                        "\"vocab_size\": 320, \"hidden_size\": 48, \"n_layer\": 2, \"n_head\": "
                        "6, \"pretraining_tp\": 4, \"slow_but_exact\": false, "
                        "\"offset_alibi\": 100, \"n_inner\": null}";
    CHECK_OK(parse(&c, bloom));
    CHECK(c.family == MODEL_FAMILY_BLOOM && c.arch == MODEL_ARCH_BLOOM);
    CHECK(c.block.pos == MODEL_POS_ALIBI && c.block.qkv == MODEL_QKV_HEADS);
    CHECK(c.block.embed_norm && c.block.norm == MODEL_NORM_LAYER && c.block.pre_norm);
    CHECK(c.block.mlp == MODEL_MLP_PLAIN && c.block.act == MODEL_ACT_GELU_TANH);
    CHECK(c.num_heads == 6 && c.num_kv_heads == 6 && c.head_dim == 8);
    CHECK(c.intermediate_size == 192 && c.qkv_bias && c.o_bias && c.mlp_bias);
    CHECK(c.tie_embeddings && c.bos_token_id == 1 && c.eos_token_id == 2);
    CHECK(c.norm_eps == 1e-5 && c.max_position == 2048);
    /* word_embeddings, its LayerNorm; per layer two LayerNorms, query_key_value,
     * dense, dense_h_to_4h, dense_4h_to_h with biases; ln_f */
    CHECK(model_config_num_params(&c) ==
          320 * 48 + 2 * 48 +
              2 * (4 * 48 + 3 * 48 * 48 + 3 * 48 + 48 * 48 + 48 + 2 * 48 * 192 + 192 + 48) +
              2 * 48);
    /* the aliases of BloomConfig's attribute_map and old checkpoints' n_embed */
    CHECK_OK(parse(&c, "{\"model_type\": \"bloom\", \"vocab_size\": 320, \"n_embed\": 48, "
                       "\"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
                       "\"tie_word_embeddings\": false}"));
    CHECK(c.hidden_size == 48 && c.num_layers == 3 && c.num_heads == 4 && !c.tie_embeddings);
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"bloom\", \"vocab_size\": 320, "
                               "\"hidden_size\": 48, \"n_layer\": 2, \"n_head\": 6, "
                               "\"apply_residual_connection_post_layernorm\": true}"),
                     "apply_residual_connection_post_layernorm true is not supported");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"bloom\", \"vocab_size\": 320, "
                               "\"hidden_size\": 48, \"n_layer\": 2, \"n_head\": 5}"),
                     "hidden_size 48 is not a multiple of n_head 5");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"bloom\", \"vocab_size\": 320, "
                               "\"hidden_size\": 48, \"n_head\": 6}"),
                     "required field \"n_layer\" is missing");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"bloom\", \"vocab_size\": 320, "
                               "\"hidden_size\": 48, \"n_layer\": 2, \"n_head\": 6, "
                               "\"num_hidden_layers\": 3}"),
                     "\"n_layer\" = 2 and its alias \"num_hidden_layers\" = 3 disagree");
    CHECK_OK(parse(&c, bloom));
    c.mlp_bias = 0;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "every BLOOM linear has a bias");
    CHECK_OK(parse(&c, bloom));
    c.block.embed_norm = 0;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "are not those of bloom");
}

static void test_save_round_trip(void) {
    const char *srcs[] = {
        llama_v5, gpt2_hub,
        "{\"model_type\": \"qwen2\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"use_sliding_window\": true, "
        "\"sliding_window\": 16, \"max_window_layers\": 0, \"rms_norm_eps\": "
        "1e-5, \"initializer_range\": 0.1}",
        "{\"model_type\": \"mistral\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": "
        "\"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0, "
        "\"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 64}, "
        "\"rope_theta\": 123456.789}",
        "{\"model_type\": \"qwen3\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32, "
        "\"attention_bias\": true, \"use_sliding_window\": true, "
        "\"sliding_window\": 16, \"max_window_layers\": 0}",
        "{\"model_type\": \"olmo2\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"eos_token_id\": 3}",
        "{\"model_type\": \"apertus\", \"vocab_size\": 320, \"hidden_size\": "
        "64, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4}",
        /* Apertus with the default RoPE: written as rope_type default,
         * since null would mean Apertus's llama3 */
        "{\"model_type\": \"apertus\", \"vocab_size\": 320, \"hidden_size\": "
        "64, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"rope_parameters\": {\"rope_type\": "
        "\"default\", \"rope_theta\": 10000.0}}",
        "{\"model_type\": \"mixtral\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 8, "
        "\"num_key_value_heads\": 2, \"num_local_experts\": 6, \"num_experts_per_tok\": 3, "
        "\"output_router_logits\": true, \"router_aux_loss_coef\": 0.015, "
        "\"sliding_window\": 64}",
        "{\"model_type\": \"bloom\", \"vocab_size\": 320, \"hidden_size\": 56, \"n_layer\": 2, "
        "\"n_head\": 7, \"layer_norm_epsilon\": 1e-6, \"max_position_embeddings\": 4096, "
        "\"tie_word_embeddings\": false, \"bos_token_id\": 0, \"eos_token_id\": null}"};
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) ts_config_round_trip(srcs[i], i);
    /* Readable numbers and the fields transformers needs. */
    model_config c;
    CHECK_OK(parse(&c, llama_v5));
    const char *path = ts_tmp("llama-config.json");
    CHECK_OK(model_config_save(&c, path));
    size_t len;
    char *text = ts_read(path, &len);
    CHECK(text && strstr(text, "\"rms_norm_eps\": 1e-6") &&
          strstr(text, "\"rope_theta\": 10000.0"));
    CHECK(text && strstr(text, "\"architectures\": [\n    \"LlamaForCausalLM\"\n  ]"));
    CHECK(text && strstr(text, "\"model_type\": \"llama\"") && strstr(text, "\"torch_dtype\""));
    CHECK(text && strstr(text, "\"rope_scaling\": null"));
    free(text);
}

static void test_presets(void) {
    model_config c;
    CHECK_OK(model_config_preset(&c, "gpt2", "124m"));
    CHECK(model_config_num_params(&c) == 124439808);
    CHECK_OK(model_config_preset(&c, "llama", "100m"));
    long long n = model_config_num_params(&c);
    CHECK_MSG(n > 95000000 && n < 105000000, "llama 100m has %lld params", n);
    CHECK_OK(model_config_preset(&c, "mixtral", "400m"));
    n = model_config_num_params(&c);
    CHECK_MSG(n > 380000000 && n < 420000000, "mixtral 400m has %lld params", n);
    CHECK_OK(model_config_preset(&c, "llama", "small"));
    n = model_config_num_params(&c);
    CHECK_MSG(n > 8000000 && n < 12000000, "llama small has %lld params", n);
    CHECK_OK(model_config_preset(&c, "gpt2", "small"));
    n = model_config_num_params(&c);
    CHECK_MSG(n > 8000000 && n < 12000000, "gpt2 small has %lld params", n);
    CHECK_OK(model_config_preset(&c, "llama", "tiny"));
    n = model_config_num_params(&c);
    CHECK_MSG(n > 50000 && n < 500000, "llama tiny has %lld params", n);
    CHECK(c.vocab_size >= 256 + 4);
    CHECK_OK(model_config_preset(&c, "gpt2", "tiny"));
    CHECK_FAILS_WITH(model_config_preset(&c, "gpt2", "huge"),
                     "unknown preset 'huge' for gpt2 (valid: tiny, small, 124m)");
    CHECK_FAILS_WITH(model_config_preset(&c, "bert", "tiny"),
                     "unknown architecture 'bert' (valid: llama, mistral, qwen2, qwen3, olmo2, "
                     "apertus, gemma2, gemma3_text, phi3, mixtral, bloom, gpt2)");
    /* every family has a tiny preset, with the family's block and a number of
     * parameters that is the table's */
    const char *const tiny[] = {"llama",   "mistral", "qwen2",   "qwen3", "olmo2",
                                "apertus", "gpt2",    "mixtral", "bloom"};
    for (size_t i = 0; i < sizeof tiny / sizeof tiny[0]; i++)
        model_free(ts_preset_counted(tiny[i]));
    CHECK_FAILS_WITH(model_config_preset(&c, "qwen3", "small"),
                     "unknown preset 'small' for qwen3 (valid: tiny)");
}

int main(void) {
    test_llama();
    test_mistral_qwen2();
    test_gpt2();
    test_refusals();
    test_newer_families();
    test_mixtral_bloom();
    test_save_round_trip();
    test_presets();
    return check_finish();
}
