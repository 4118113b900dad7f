/* test_merge_generate — `fedlora merge-adapter` and `fedlora generate` as
 * real processes:
 *   - merge-adapter (tiny Llama, GPT-2, whose Conv1D weights are stored
 *     transposed, Qwen3, OLMo 2 and Apertus): the merged model's logits equal base + adapter logits
 *     (max |diff| < 1e-5 in fp32) while the adapter does change them; the
 *     tokenizer comes along; a bf16 base gives a bf16 merged model; a used
 *     --out is refused;
 *   - generate: greedy output (with an adapter) equals an argmax loop over
 *     full forward passes computed here; top-p 1e-9 at temperature 1 is
 *     greedy; sampling is reproducible for a seed and differs across seeds;
 *     generation stops at EOS. */
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/safetensors.h"
#include "tests/support/ts_model.h"

static char data[TS_PATH];

/* logits (1, n, V) of the model in dir, with the adapter when given. */
static real *logits_of(const char *dir, const char *adapter, const int32_t *tok, int n) {
    model *m = NULL;
    lora_set *s = NULL;
    model_acts *a = NULL;
    real *out = NULL;
    if (checkpoint_load(&m, dir) == 0 &&
        (!adapter || (peft_load(&s, m, adapter) == 0 && lora_attach(s, m) == 0)) &&
        model_acts_create(&a, m, 1, n) == 0 && model_forward(m, a, tok, NULL, NULL, NULL) == 0) {
        size_t len = (size_t)n * m->cfg.vocab_size;
        out = malloc(len * sizeof *out);
        if (out) memcpy(out, model_acts_logits(a), len * sizeof *out);
    }
    CHECK_MSG(out != NULL, "logits of %s: %s", dir, err_msg());
    model_acts_free(a);
    lora_free(s);
    model_free(m);
    return out;
}

static void test_merge(const char *arch) {
    char base[TS_PATH], ad[TS_PATH], merged[TS_PATH], tag[64], name[64];
    snprintf(name, sizeof name, "%s_base", arch);
    CHECK_OK(ts_model_dir(ts_path(base, "%s", name), arch, 0.1, 7, NULL));
    snprintf(name, sizeof name, "%s_adapter", arch);
    snprintf(tag, sizeof tag, "train_%s", arch);
    /* Mixtral's router by name too (all-linear leaves it frozen): its merge is covered */
    const char *targets =
        strcmp(arch, "mixtral") == 0 ? "q_proj,k_proj,v_proj,o_proj,gate,w1,w2,w3" : "all-linear";
    int rc = ts_run(tag, "train", "--model", base, "--data", data, "--out", ts_path(ad, "%s", name),
                    "--steps", "5", "--seq", "32", "--lr", "1e-2", "--targets", targets,
                    "--save-every", "0", NULL);
    CHECK_RUN_OK(rc, tag);
    snprintf(name, sizeof name, "%s_merged", arch);
    snprintf(tag, sizeof tag, "merge_%s", arch);
    rc = ts_run(tag, "merge-adapter", "--model", base, "--adapter", ad, "--out",
                ts_path(merged, "%s", name), NULL);
    CHECK_RUN_OK(rc, tag);

    int32_t tok[40];
    for (int i = 0; i < 40; i++) tok[i] = (int32_t)((i * 53 + 11) % 257);
    size_t n = 40 * 320;
    real *plain = logits_of(base, NULL, tok, 40);
    real *with = logits_of(base, ad, tok, 40);
    real *folded = logits_of(merged, NULL, tok, 40);
    double d_merge = ts_max_diff(with, folded, n), d_adapter = ts_max_diff(plain, with, n);
    printf("%s: merged vs base+adapter %.3g, base vs base+adapter %.3g\n", arch, d_merge,
           d_adapter);
    CHECK_MSG(d_merge < 1e-5, "%s: merged logits differ by %g", arch, d_merge);
    CHECK_MSG(d_adapter > 1e-3, "%s: the adapter changes logits by only %g", arch, d_adapter);
    free(plain);
    free(with);
    free(folded);
    char a[TS_PATH], b[TS_PATH];
    CHECK(ts_same_file(ts_in(a, base, "tokenizer.json"), ts_in(b, merged, "tokenizer.json")));

    /* A directory that is not empty is not written into. */
    snprintf(tag, sizeof tag, "merge_again_%s", arch);
    rc = ts_run(tag, "merge-adapter", "--model", base, "--adapter", ad, "--out", merged, NULL);
    CHECK_RUN_FAILS(rc, tag, "already exists and is not empty");
}

static void test_merge_bf16(void) {
    char base[TS_PATH], bf[TS_PATH], merged[TS_PATH], path[TS_PATH];
    model *m = NULL;
    CHECK_OK(checkpoint_load(&m, ts_path(base, "llama_base")));
    if (!m) return;
    CHECK_OK(checkpoint_save(m, ts_path(bf, "llama_bf16"), "bfloat16"));
    model_free(m);
    char *tok = ts_read(ts_in(path, base, "tokenizer.json"), NULL);
    CHECK_OK(ts_write(ts_in(path, bf, "tokenizer.json"), tok ? tok : ""));
    free(tok);
    int rc = ts_run("merge_bf16", "merge-adapter", "--model", bf, "--adapter",
                    ts_path(path, "llama_adapter"), "--out", ts_path(merged, "bf16_merged"), NULL);
    CHECK_RUN_OK(rc, "merge_bf16");
    model_config cfg;
    CHECK_OK(model_config_load(&cfg, ts_in(path, merged, "config.json")));
    CHECK(!strcmp(cfg.torch_dtype, "bfloat16"));
    safetensors_file *f = NULL;
    CHECK_OK(safetensors_open(&f, ts_in(path, merged, "model.safetensors")));
    for (int i = 0; f && i < safetensors_count(f); i++)
        CHECK(safetensors_tensor_at(f, i)->dtype == SAFETENSORS_BF16);
    safetensors_close(f);
}

/* What greedy decoding must give: argmax over full forward passes. */
static char *greedy_here(const char *dir, const char *adapter, const char *prompt, int max_new) {
    model *m = NULL;
    lora_set *s = NULL;
    tokenizer *tk = NULL;
    char path[TS_PATH], *text = NULL;
    size_t text_len;
    int32_t seq[256];
    uint32_t gen[256];
    int n = 0, g = 0;
    if (checkpoint_load(&m, dir) != 0 ||
        (adapter && (peft_load(&s, m, adapter) != 0 || lora_attach(s, m) != 0)) ||
        tokenizer_load(ts_in(path, dir, "tokenizer.json"), &tk) != 0)
        goto done;
    for (const char *p = prompt; *p; p++) seq[n++] = (unsigned char)*p;
    for (; g < max_new; g++) {
        model_acts *a = NULL;
        if (model_acts_create(&a, m, 1, n) != 0 || model_forward(m, a, seq, NULL, NULL, NULL) != 0)
            goto done;
        const real *row = model_acts_logits(a) + (size_t)(n - 1) * m->cfg.vocab_size;
        int best = 0;
        for (int v = 1; v < m->cfg.vocab_size; v++)
            if (row[v] > row[best]) best = v;
        model_acts_free(a);
        if (best == m->cfg.eos_token_id) break;
        seq[n++] = best;
        gen[g] = (uint32_t)best;
    }
    if (tokenizer_decode(tk, gen, (size_t)g, 1, &text, &text_len) != 0) text = NULL;
done:
    CHECK_MSG(text != NULL, "greedy here: %s", err_msg());
    tokenizer_free(tk);
    lora_free(s);
    model_free(m);
    return text;
}

static char *generated(const char *tag, const char *dir, const char *adapter, const char *temp,
                       const char *top_p, const char *seed) {
    const char *args[32] = {
        ts_bin(),       "generate", "--model",       dir,  "--prompt", "The telescope",
        "--max-tokens", "20",       "--temperature", temp, "--top-p",  top_p,
        "--seed",       seed};
    int n = 14;
    if (adapter) args[n++] = "--adapter", args[n++] = adapter;
    args[n] = NULL;
    int rc = ts_run_v(tag, args);
    CHECK_RUN_OK(rc, tag);
    return ts_output(tag, "out");
}

static void test_generate(void) {
    char base[TS_PATH], ad[TS_PATH];
    ts_path(base, "llama_base");
    ts_path(ad, "llama_adapter");
    char *want = greedy_here(base, ad, "The telescope", 20);
    char *greedy = generated("gen_greedy", base, ad, "0", "1", "0");
    char *nucleus = generated("gen_nucleus", base, ad, "1", "1e-9", "3");
    char *s1 = generated("gen_s1", base, NULL, "1", "0.9", "1");
    char *s1b = generated("gen_s1b", base, NULL, "1", "0.9", "1");
    char *s2 = generated("gen_s2", base, NULL, "1", "0.9", "2");
    if (want && greedy) {
        size_t n = strlen(want);
        CHECK_MSG(strlen(greedy) == n + 1 && !memcmp(greedy, want, n) && greedy[n] == '\n',
                  "generate printed '%s', greedy decoding gives '%s'", greedy, want);
    }
    CHECK(greedy && nucleus && !strcmp(greedy, nucleus));
    CHECK(s1 && s1b && s2 && !strcmp(s1, s1b) && strcmp(s1, s2) != 0);
    free(want);
    free(greedy);
    free(nucleus);
    free(s1);
    free(s1b);
    free(s2);

    /* A GPT-2 whose final norm always gives the EOS embedding: stops at once. */
    model *m = NULL;
    char eos_dir[TS_PATH], path[TS_PATH];
    CHECK_OK(checkpoint_load(&m, ts_path(path, "gpt2_base")));
    if (!m) return;
    int C = m->cfg.hidden_size;
    for (int c = 0; c < C; c++) {
        m->norm_f.w->data[c] = 0;
        m->norm_f.b->data[c] = 10 * m->wte->data[256 * C + c];
    }
    CHECK_OK(checkpoint_save(m, ts_path(eos_dir, "gpt2_eos"), "float32"));
    model_free(m);
    char *tok = ts_read(ts_in(path, ts_path(base, "gpt2_base"), "tokenizer.json"), NULL);
    CHECK_OK(ts_write(ts_in(path, eos_dir, "tokenizer.json"), tok ? tok : ""));
    free(tok);
    char *out = generated("gen_eos", eos_dir, NULL, "0", "1", "0");
    char *err = ts_output("gen_eos", "err");
    CHECK_MSG(out && !strcmp(out, "\n"), "generated '%s'", out ? out : "");
    CHECK_MSG(err && strstr(err, "\n0 tokens"), "stderr '%s'", err ? err : "");
    free(out);
    free(err);
}

int main(void) {
    char path[TS_PATH];
    char *text = ts_read(ts_example(path, "corpus/mixed.txt"), NULL);
    CHECK_MSG(text != NULL, "cannot read %s", path);
    CHECK_OK(ts_write(ts_path(data, "mixed.txt"), text ? text : ""));
    free(text);
    test_merge("llama");
    test_merge("gpt2");
    test_merge("qwen3");
    test_merge("olmo2");
    test_merge("apertus");
    test_merge("gemma2");
    test_merge("gemma3_text");
    test_merge("phi3");
    test_merge("bloom");
    test_merge("mixtral");
    test_merge_bf16();
    test_generate();
    return check_finish();
}
