/* test_config_gemma_phi3 — config.json of Gemma 2, Gemma 3 (text) and Phi-3
 * as their hub checkpoints (transformers 4) and transformers 5 write them:
 * the block options, configuration_*.py's defaults, the per-layer windows
 * and RoPE bases, soft-capping, LongRoPE and partial rotation, what is
 * refused by name, and save -> load round trips. */
#include "model/config.h"
#include "model/model.h"
#include "tests/check.h"
#include "tests/support/ts.h"
#include "tests/support/ts_model.h"
#include "util/err.h"

#include <math.h>

static int parse(model_config *c, const char *json) {
    return model_config_parse(c, json, strlen(json), "test/config.json");
}

/* google/gemma-2-2b's config.json (transformers 4.42), sizes shrunk. */
static const char *gemma2_hub =
    "{\"architectures\": [\"Gemma2ForCausalLM\"], \"attention_bias\": false, "
    "\"attention_dropout\": 0.0, \"attn_logit_softcapping\": 50.0, \"bos_token_id\": 2, "
    "\"cache_implementation\": \"hybrid\", \"eos_token_id\": 1, \"final_logit_softcapping\": "
    "30.0, \"head_dim\": 32, \"hidden_act\": \"gelu_pytorch_tanh\", \"hidden_activation\": "
    "\"gelu_pytorch_tanh\", \"hidden_size\": 64, \"initializer_range\": 0.02, "
    "\"intermediate_size\": 128, \"max_position_embeddings\": 8192, \"model_type\": \"gemma2\", "
    "\"num_attention_heads\": 4, \"num_hidden_layers\": 5, \"num_key_value_heads\": 2, "
    "\"pad_token_id\": 0, \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, "
    "\"rope_theta\": 10000.0, \"sliding_window\": 4096, \"torch_dtype\": \"float32\", "
    "\"transformers_version\": \"4.42.4\", \"use_cache\": true, \"vocab_size\": 320}";

/* google/gemma-3-1b-it's config.json (transformers 4.50), sizes shrunk. */
static const char *gemma3_hub =
    "{\"architectures\": [\"Gemma3ForCausalLM\"], \"attention_bias\": false, "
    "\"attention_dropout\": 0.0, \"attn_logit_softcapping\": null, \"bos_token_id\": 2, "
    "\"cache_implementation\": \"hybrid\", \"eos_token_id\": [1, 106], "
    "\"final_logit_softcapping\": null, \"head_dim\": 32, \"hidden_activation\": "
    "\"gelu_pytorch_tanh\", \"hidden_size\": 64, \"initializer_range\": 0.02, "
    "\"intermediate_size\": 128, \"max_position_embeddings\": 32768, \"model_type\": "
    "\"gemma3_text\", \"num_attention_heads\": 4, \"num_hidden_layers\": 13, "
    "\"num_key_value_heads\": 1, \"pad_token_id\": 0, \"query_pre_attn_scalar\": 256, "
    "\"rms_norm_eps\": 1e-06, \"rope_local_base_freq\": 10000, \"rope_scaling\": null, "
    "\"rope_theta\": 1000000, \"sliding_window\": 512, \"sliding_window_pattern\": 6, "
    "\"torch_dtype\": \"bfloat16\", \"use_cache\": true, \"vocab_size\": 320}";

/* microsoft/Phi-3-mini-128k-instruct's config.json, sizes shrunk: LongRoPE
 * ("longrope" with the legacy "type" key) over whole heads of 16, 8 factors. */
static const char *phi3_128k =
    "{\"architectures\": [\"Phi3ForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": "
    "1, \"embd_pdrop\": 0.0, \"eos_token_id\": 32000, \"hidden_act\": \"silu\", "
    "\"hidden_size\": 64, \"initializer_range\": 0.02, \"intermediate_size\": 128, "
    "\"max_position_embeddings\": 131072, \"model_type\": \"phi3\", \"num_attention_heads\": 4, "
    "\"num_hidden_layers\": 2, \"num_key_value_heads\": 4, \"original_max_position_embeddings\": "
    "4096, \"pad_token_id\": 32000, \"resid_pdrop\": 0.0, \"rms_norm_eps\": 1e-05, "
    "\"rope_scaling\": {\"long_factor\": [1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62], "
    "\"short_factor\": [1.05, 1.05, 1.05, 1.1, 1.1, 1.15, 1.2, 1.25], \"type\": "
    "\"longrope\"}, \"rope_theta\": 10000.0, \"sliding_window\": 262144, "
    "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"vocab_size\": 320}";

static void test_gemma2(void) {
    model_config c;
    CHECK_OK(parse(&c, gemma2_hub));
    CHECK(c.family == MODEL_FAMILY_GEMMA2 && c.arch == MODEL_ARCH_LLAMA);
    CHECK(c.block.norm == MODEL_NORM_RMS_1P && c.block.pre_norm && c.block.post_norm);
    CHECK(c.block.mlp == MODEL_MLP_GATED && c.block.act == MODEL_ACT_GELU_TANH);
    CHECK(c.block.embed_scale && c.block.qk_norm == MODEL_QK_NORM_NONE);
    CHECK(c.head_dim == 32 && c.tie_embeddings && c.bos_token_id == 2 && c.eos_token_id == 1);
    CHECK(c.attn_softcap == 50 && c.final_softcap == 30 && c.query_pre_attn_scalar == 256);
    CHECK(c.sliding_window == 4096 && c.layer_types && c.rope_theta == 10000);
    /* no layer_types: layers 0, 2, 4 sliding (transformers' (l + 1) % 2) */
    for (int l = 0; l < 5; l++) CHECK(model_config_window(&c, l) == (l % 2 == 0 ? 4096 : 0));
    CHECK(!model_config_local_rope(&c, 0) && model_config_attn_scale(&c) == 1.0 / 16);
    /* per layer 4 norms 4C, q (C, 4·32), k, v (C, 2·32), o, GeGLU 3·C·F; tied */
    CHECK(model_config_num_params(&c) ==
          320 * 64 + 64 + 5 * (4 * 64 + 64 * 128 * 2 + 2 * 64 * 64 + 3 * 64 * 128));

    /* transformers 5: defaults (head_dim 256, softcaps 50 / 30, qpas 256,
     * window 4096), null softcapping is none, layer_types as listed */
    CHECK_OK(parse(&c, "{\"model_type\": \"gemma2\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 3, "
                       "\"num_attention_heads\": 8, \"final_logit_softcapping\": null, "
                       "\"layer_types\": [\"full_attention\", \"full_attention\", "
                       "\"sliding_attention\"], \"rope_parameters\": {\"rope_type\": "
                       "\"default\", \"rope_theta\": 10000.0}}"));
    CHECK(c.head_dim == 256 && c.num_kv_heads == 4 && c.attn_softcap == 50 && !c.final_softcap);
    CHECK(c.query_pre_attn_scalar == 256 && c.max_position == 8192 && c.norm_eps == 1e-6);
    CHECK(!model_config_window(&c, 0) && !model_config_window(&c, 1));
    CHECK(model_config_window(&c, 2) == 4096);

    char buf[2048];
    const char *base = "{\"model_type\": \"gemma2\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"head_dim\": 16, %s}";
#define GEMMA2(extra) (snprintf(buf, sizeof buf, base, extra), buf)
    CHECK_OK(parse(&c, GEMMA2("\"hidden_activation\": \"gelu_new\"")));
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"hidden_activation\": \"gelu\"")),
                     "hidden_activation 'gelu' is not supported for gemma2");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"sliding_window\": null")),
                     "sliding_attention layers but no sliding_window");
    CHECK_OK(parse(&c, GEMMA2("\"sliding_window\": null, \"layer_types\": [\"full_attention\", "
                              "\"full_attention\"]")));
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"layer_types\": [\"full_attention\"]")),
                     "\"layer_types\" must list one type per layer (2)");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"layer_types\": [\"full_attention\", \"chunked\"]")),
                     "layer_types[1] is not 'full_attention' or 'sliding_attention'");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"use_bidirectional_attention\": true")),
                     "use_bidirectional_attention true is not supported");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"attn_logit_softcapping\": -1")),
                     "soft-capping and query_pre_attn_scalar must be > 0");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"sliding_window\": 2.5")),
                     "\"sliding_window\" must be an integer");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"partial_rotary_factor\": 0.5")),
                     "partial_rotary_factor 0.5 is not supported");
    CHECK_FAILS_WITH(parse(&c, GEMMA2("\"rope_scaling\": {\"type\": \"longrope\", "
                                      "\"short_factor\": [1], \"long_factor\": [1]}")),
                     "rope type 'longrope' is supported for phi3 only");
    /* the options are Gemma's: set on another family, the check refuses them */
    CHECK_OK(parse(&c, "{\"model_type\": \"llama\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4}"));
    c.final_softcap = 30;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "are Gemma's options");
    c.final_softcap = 0;
    c.attn_softcap = 50;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "Gemma 2's option, not llama's");
}

static void test_gemma3(void) {
    model_config c;
    CHECK_OK(parse(&c, gemma3_hub));
    CHECK(c.family == MODEL_FAMILY_GEMMA3 && c.block.qk_norm == MODEL_QK_NORM_HEAD);
    CHECK(c.block.norm == MODEL_NORM_RMS_1P && c.block.embed_scale);
    CHECK(!c.attn_softcap && !c.final_softcap && c.query_pre_attn_scalar == 256);
    CHECK(c.rope_theta == 1000000 && c.rope_local_theta == 10000 && !c.rope_linear);
    CHECK(c.eos_token_id == 1 && c.num_kv_heads == 1 && strcmp(c.torch_dtype, "bfloat16") == 0);
    /* sliding_window_pattern 6: layers 5 and 11 global, the rest sliding
     * with the local RoPE */
    for (int l = 0; l < 13; l++) {
        int global = l == 5 || l == 11;
        CHECK(model_config_window(&c, l) == (global ? 0 : 512));
        CHECK(model_config_local_rope(&c, l) == !global);
    }

    /* transformers 5: RoPE per layer type, linear scaling on the global layers */
    const char *v5 = "{\"model_type\": \"gemma3_text\", \"vocab_size\": 320, \"hidden_size\": 64, "
                     "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                     "\"num_attention_heads\": 4, \"head_dim\": 16, \"layer_types\": "
                     "[\"sliding_attention\", \"full_attention\"], \"rope_parameters\": "
                     "{\"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": "
                     "10000.0}, \"full_attention\": {\"rope_type\": \"linear\", \"factor\": 8.0, "
                     "\"rope_theta\": 1000000.0}}, \"final_logit_softcapping\": 30.0}";
    CHECK_OK(parse(&c, v5));
    CHECK(c.rope_linear && c.rope_factor == 8 && c.rope_theta == 1e6 && c.rope_local_theta == 1e4);
    CHECK(c.final_softcap == 30 && model_config_window(&c, 0) == 4096);
    CHECK(model_config_local_rope(&c, 0) && !model_config_local_rope(&c, 1));
    /* transformers 4: rope_scaling is the global layers' */
    CHECK_OK(parse(&c, "{\"model_type\": \"gemma3_text\", \"vocab_size\": 320, \"hidden_size\": "
                       "64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"head_dim\": 16, \"rope_scaling\": "
                       "{\"rope_type\": \"linear\", \"factor\": 8.0}}"));
    CHECK(c.rope_linear && c.rope_factor == 8 && c.rope_theta == 1e6 && c.rope_local_theta == 1e4);

    char buf[2048];
    const char *base = "{\"model_type\": \"gemma3_text\", \"vocab_size\": 320, \"hidden_size\": "
                       "64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"head_dim\": 16, %s}";
#define GEMMA3(extra) (snprintf(buf, sizeof buf, base, extra), buf)
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"attn_logit_softcapping\": 50.0")),
                     "transformers' Gemma 3 does not apply it");
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"rope_parameters\": {\"rope_type\": \"default\", "
                                      "\"rope_theta\": 10000.0}")),
                     "must be given per layer type");
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"rope_parameters\": {\"sliding_attention\": "
                                      "{\"rope_type\": \"linear\", \"factor\": 2}}")),
                     "a scaled RoPE on Gemma 3's sliding layers is not supported");
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"rope_parameters\": {\"full_attention\": {}, "
                                      "\"chunked_attention\": {}}")),
                     "unknown layer type 'chunked_attention'");
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"rope_scaling\": {\"rope_type\": \"yarn\", "
                                      "\"factor\": 8.0}")),
                     "rope type 'yarn' is not supported");
    CHECK_FAILS_WITH(parse(&c, GEMMA3("\"sliding_window_pattern\": 0")),
                     "\"sliding_window_pattern\" = 0 is out of the supported range");
    CHECK_FAILS_WITH(parse(&c, "{\"model_type\": \"gemma3\", \"text_config\": {}}"),
                     "unsupported model_type 'gemma3'");
}

static void test_phi3(void) {
    model_config c;
    CHECK_OK(parse(&c, phi3_128k));
    CHECK(c.family == MODEL_FAMILY_PHI3 && c.block.qkv == MODEL_QKV_FUSED);
    CHECK(c.block.mlp == MODEL_MLP_GATED_FUSED && c.block.act == MODEL_ACT_SILU);
    CHECK(c.block.norm == MODEL_NORM_RMS && !c.block.post_norm && !c.block.embed_scale);
    CHECK(c.rope_longrope && c.rope_original_max_position == 4096 && !c.rope_factor);
    CHECK(c.rope_short[0] == 1.05 && c.rope_short[7] == 1.25 && c.rope_long[7] == 2.62);
    CHECK(c.rope_short[8] == 0 && model_config_rope_dim(&c) == 16);
    CHECK(c.sliding_window == 262144 && !c.layer_types && model_config_window(&c, 1) == 262144);
    /* the attention factor from max_position / original = 32 */
    CHECK_NEAR(model_config_rope_attn_factor(&c), sqrt(1 + log(32.0) / log(4096.0)), 1e-15);
    CHECK(!model_config_rope_long(&c, 4096) && model_config_rope_long(&c, 4097));
    /* fused or not, the parameters of a Llama block */
    CHECK(model_config_num_params(&c) ==
          2 * 320 * 64 + 64 + 2 * (2 * 64 + 4 * 64 * 64 + 3 * 64 * 128));

    char buf[2048];
    const char *base = "{\"model_type\": \"phi3\", \"vocab_size\": 320, \"hidden_size\": 64, "
                       "\"intermediate_size\": 128, \"num_hidden_layers\": 2, "
                       "\"num_attention_heads\": 4, \"max_position_embeddings\": 4096, %s}";
#define PHI3(extra) (snprintf(buf, sizeof buf, base, extra), buf)
    /* Phi-3-mini-4k: the default RoPE, window 2047 on every layer */
    CHECK_OK(parse(&c, PHI3("\"rope_scaling\": null, \"sliding_window\": 2047")));
    CHECK(!c.rope_longrope && c.sliding_window == 2047 && model_config_window(&c, 0) == 2047);
    CHECK(c.num_kv_heads == 4 && c.bos_token_id == 1 && c.eos_token_id == 32000);
    CHECK(!c.tie_embeddings && c.norm_eps == 1e-5);
    /* Phi-4-mini: partial_rotary_factor 0.75 of head_dim 16 = 12 dims, 6
     * factors; "su" is LongRoPE; the explicit attention factor and factor */
    CHECK_OK(parse(&c, PHI3("\"partial_rotary_factor\": 0.75, \"tie_word_embeddings\": true, "
                            "\"rope_scaling\": {\"type\": \"su\", \"short_factor\": [1, 1, 1, 1, "
                            "1, 2], \"long_factor\": [3, 3, 3, 3, 3, 4], \"attention_factor\": "
                            "1.19, \"factor\": 32}")));
    CHECK(c.rope_dim == 12 && c.rope_longrope && c.rope_long[5] == 4 && c.tie_embeddings);
    CHECK(c.rope_factor == 32 && model_config_rope_attn_factor(&c) == 1.19);
    CHECK(c.rope_original_max_position == 4096); /* Phi3Config's default */
    CHECK_FAILS_WITH(parse(&c, PHI3("\"rope_scaling\": {\"type\": \"longrope\", "
                                    "\"short_factor\": [1, 1], \"long_factor\": [1, 1]}")),
                     "\"rope_scaling.short_factor\" must list 8 numbers");
    CHECK_FAILS_WITH(parse(&c, PHI3("\"rope_scaling\": {\"type\": \"longrope\", "
                                    "\"short_factor\": [1, 1, 1, 1, 1, 1, 1, 0], "
                                    "\"long_factor\": [1, 1, 1, 1, 1, 1, 1, 1]}")),
                     "\"rope_scaling.short_factor\"[7] must be a number > 0");
    CHECK_FAILS_WITH(parse(&c, PHI3("\"rope_scaling\": {\"type\": \"longrope\", "
                                    "\"long_factor\": [1, 1, 1, 1, 1, 1, 1, 1]}")),
                     "LongRoPE needs \"rope_scaling.short_factor\"");
    /* int(16 · 0.3) = 4 dimensions, as transformers; int(16 · 0.2) = 3 is odd */
    CHECK_OK(parse(&c, PHI3("\"partial_rotary_factor\": 0.3")));
    CHECK(c.rope_dim == 4);
    CHECK_FAILS_WITH(parse(&c, PHI3("\"partial_rotary_factor\": 0.2")),
                     "partial_rotary_factor 0.2 rotates 3.2 of 16 dimensions");
    CHECK_FAILS_WITH(parse(&c, PHI3("\"hidden_act\": \"gelu\"")),
                     "hidden_act 'gelu' is not supported for phi3 (only 'silu')");
    CHECK_FAILS_WITH(parse(&c, PHI3("\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}")),
                     "rope type 'dynamic' is not supported");
    /* partial rotation is Phi-3's */
    CHECK_OK(parse(&c, PHI3("\"partial_rotary_factor\": 0.5")));
    c.family = MODEL_FAMILY_LLAMA;
    c.block.qkv = MODEL_QKV_SEPARATE;
    c.block.mlp = MODEL_MLP_GATED;
    CHECK_FAILS_WITH(model_config_check(&c, "x"), "partial rotation is Phi-3's");
}

/* What we write, we read back identically. */
static void test_round_trips(void) {
    const char *srcs[] = {
        gemma2_hub,
        gemma3_hub,
        phi3_128k,
        "{\"model_type\": \"gemma3_text\", \"vocab_size\": 320, \"hidden_size\": 64, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
        "\"head_dim\": 16, \"query_pre_attn_scalar\": 20.5, \"final_logit_softcapping\": 15.5, "
        "\"attention_bias\": true, \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": "
        "4.0}, \"rope_theta\": 123456.0, \"rope_local_base_freq\": 777.0}",
        "{\"model_type\": \"phi3\", \"vocab_size\": 320, \"hidden_size\": 96, "
        "\"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
        "\"partial_rotary_factor\": 0.4166666666666667, \"rope_scaling\": {\"type\": "
        "\"longrope\", \"short_factor\": [1.5, 2.25, 3.125, 4.0625, 5.5], \"long_factor\": "
        "[1.1, 2.2, 3.3, 4.4, 5.5], \"attention_factor\": 1.2, \"factor\": 16.0}, "
        "\"original_max_position_embeddings\": 128, \"max_position_embeddings\": 2048, "
        "\"sliding_window\": 100}",
    };
    for (size_t i = 0; i < sizeof srcs / sizeof srcs[0]; i++) ts_config_round_trip(srcs[i], i);
    model_config c;
    CHECK_OK(parse(&c, gemma2_hub));
    const char *path = ts_tmp("gemma2-config.json");
    CHECK_OK(model_config_save(&c, path));
    size_t len;
    char *text = ts_read(path, &len);
    CHECK(text && strstr(text, "\"hidden_activation\": \"gelu_pytorch_tanh\""));
    CHECK(text && strstr(text, "\"query_pre_attn_scalar\": 256,"));
    CHECK(text && strstr(text, "\"layer_types\": [\n    \"sliding_attention\",\n"));
    free(text);
}

/* init-model's tiny presets of the three families. */
static void test_presets(void) {
    const char *const tiny[] = {"gemma2", "gemma3_text", "phi3"};
    for (size_t i = 0; i < sizeof tiny / sizeof tiny[0]; i++) {
        model *m = ts_preset_counted(tiny[i]);
        if (!m) continue;
        const model_config c = m->cfg;
        /* Gemma's norms start at 0 (x̂ · (1 + 0)), others at 1 */
        model_init_random(m, 1);
        const model_param *nw = m->layers[0].mlp_in.w;
        CHECK(nw && nw->data[0] == (c.block.norm == MODEL_NORM_RMS_1P ? 0 : 1));
        if (c.layer_types) CHECK(model_config_window(&c, 0) == 64 && !model_config_window(&c, 1));
        model_free(m);
    }
}

int main(void) {
    test_gemma2();
    test_gemma3();
    test_phi3();
    test_round_trips();
    test_presets();
    return check_finish();
}
