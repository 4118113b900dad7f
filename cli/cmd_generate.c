/* fedlora generate — text from a model, with or without a LoRA adapter.
 *
 * Decoding: greedy (argmax, the lowest id on ties) when the temperature is
 * 0; otherwise softmax(logits / temperature), cut to the nucleus (Holtzman
 * et al. 2020: the smallest set of most likely tokens whose probability
 * reaches top_p), renormalised and sampled with a SplitMix64 stream from the
 * seed (generate/sampler.h). Generation stops at an end-of-turn id (the
 * eos_token_id of generation_config.json and config.json, each an id or a
 * list), after max_tokens, or when the context is full. With --chat the
 * prompt is the conversation rendered with the model's chat template and its
 * generation prompt (docs/chat.md).
 *
 * The prompt goes through the model once (a prefill), then each new token
 * once: a KV cache keeps every earlier position's keys and values, sized for
 * the prompt plus --max-tokens (at most the context), on the CPU or, with
 * --device cuda, on a GPU (generate/decoder.h). The adapter applies at every
 * step, with its dropout off. */
#include "cli/chatdata.h"
#include "cli/commands.h"
#include "cli/opts.h"
#include "generate/decoder.h"
#include "generate/sampler.h"
#include "lora/lora.h"
#include "lora/peft.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/tokenizer/tokenizer.h"
#include "train/trainer.h"
#include "util/clock.h"
#include "util/err.h"
#include "util/fio.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *usage_text =
    "usage: fedlora generate --model DIR --prompt TEXT [--adapter DIR] [options]\n"
    "       fedlora generate --model DIR --chat (--prompt TEXT | --messages FILE) [options]\n"
    "\n"
    "Continues TEXT with the model (and the PEFT LoRA adapter in --adapter DIR) and prints\n"
    "the continuation on stdout. Generation stops at the end-of-turn ids of\n"
    "generation_config.json and config.json.\n"
    "\n"
    "  --chat             TEXT is a user message: the prompt is the model's chat template\n"
    "                     with its generation prompt, as transformers renders it (docs/chat.md)\n"
    "  --messages FILE    with --chat: a JSON array of messages (or {\"messages\", \"tools\"}); a\n"
    "                     last assistant message is continued (a prefill)\n"
    "  --chat-template F  with --chat: a .jinja chat template instead of the model's\n"
    "  --tokenizer FILE   tokenizer.json (default: DIR/tokenizer.json)\n"
    "  --max-tokens N     tokens to generate at most (128)\n"
    "  --temperature T    0 for greedy decoding (default), else sample from softmax(logits/T)\n"
    "  --top-p P          nucleus sampling: sample among the most likely tokens whose\n"
    "                     probability adds up to P (1.0: all)\n"
    "  --seed S           the sampler's seed (0)\n"
    "  --device D         cpu (default) or cuda: run the model on a GPU (docs/gpu.md)\n"
    "  --precision P      fp32, bf16 or auto (default: bf16 on cuda and on CPUs with bf16\n"
    "                     instructions, else fp32); one-token steps on the CPU multiply\n"
    "                     bf16 weights in fp32 (docs/decoding.md)\n"
    "  --threads N        OpenMP threads\n";

int cmd_generate(int argc, char **argv) {
    const char *dir = NULL, *adapter = NULL, *prompt = NULL, *tok_path = NULL, *max_s = "128",
               *temp_s = "0", *top_p_s = "1.0", *seed_s = "0", *threads_s = NULL, *device = "cpu",
               *precision = NULL, *messages = NULL, *chat_tpl = NULL;
    int chat = 0;
    opts_spec spec[] = {
        {"model", &dir},          {"adapter", &adapter},       {"prompt", &prompt},
        {"tokenizer", &tok_path}, {"max-tokens", &max_s},      {"temperature", &temp_s},
        {"top-p", &top_p_s},      {"seed", &seed_s},           {"threads", &threads_s},
        {"device", &device},      {"precision", &precision},   {"chat", NULL, &chat},
        {"messages", &messages},  {"chat-template", &chat_tpl}};
    int rc = opts_parse(argc, argv, spec, sizeof spec / sizeof spec[0], usage_text);
    if (rc >= 0) return rc;
    if (!dir || (!prompt && !messages)) return opts_missing(usage_text, "--model and --prompt");
    if ((messages || chat_tpl) && !chat)
        return opts_missing(usage_text, "--chat (--messages and --chat-template go with it)");
    long long max_tokens, seed, threads;
    double temperature, top_p;
    if (opts_int(max_s, "--max-tokens", 0, 1 << 24, &max_tokens) != 0 ||
        opts_double(temp_s, "--temperature", 0, 100, &temperature) != 0 ||
        opts_double(top_p_s, "--top-p", 1e-9, 1, &top_p) != 0 ||
        opts_int(seed_s, "--seed", 0, (long long)1 << 62, &seed) != 0 ||
        (threads_s && opts_int(threads_s, "--threads", 1, 4096, &threads) != 0) ||
        trainer_device_check(device, precision) != 0)
        return opts_fail();
    if (threads_s) omp_set_num_threads((int)threads);

    model *m = NULL;
    lora_set *s = NULL;
    tokenizer *tok = NULL;
    tokenizer_ids ids = {0};
    decoder *dec = NULL;
    real *logits = NULL;
    int32_t *seq = NULL;
    sampler *smp = NULL;
    char *text = NULL, *rendered = NULL;
    rc = 1;
    char how[96];
    if (trainer_load_base(&m, dir, device, precision, how, sizeof how) != 0) goto done;
    fprintf(stderr, "generating on %s in %s\n", device, how);
    if (adapter && peft_load(&s, m, adapter) != 0) {
        err_context("loading adapter %s for model %s", adapter, dir);
        goto done;
    }
    char tok_default[4096];
    if (!tok_path) {
        if (fio_join(tok_default, sizeof tok_default, dir, "tokenizer.json") != 0) goto done;
        tok_path = tok_default;
    }
    /* --chat: the template writes the special tokens, so none are added (apply_chat_template) */
    size_t n_text = prompt ? strlen(prompt) : 0, n_stop;
    char tok_dir[4096];
    int32_t stop[64];
    if (chat && (fio_dirname(tok_dir, sizeof tok_dir, tok_path) != 0 ||
                 chatdata_prompt(chat_tpl, tok_dir, prompt, messages, &rendered, &n_text) != 0))
        goto done;
    if (chatdata_stop_ids(dir, m->cfg.eos_token_id, stop, 64, &n_stop) != 0 ||
        tokenizer_load(tok_path, &tok) != 0 ||
        tokenizer_encode(tok, chat ? rendered : prompt, n_text, !chat, &ids) != 0)
        goto done;
    int V = m->cfg.vocab_size, ctx = m->cfg.max_position;
    size_t n_prompt = ids.n;
    if (n_prompt == 0) {
        err_set("the prompt gives no tokens; give some text with --prompt");
        goto done;
    }
    if (n_prompt >= (size_t)ctx) {
        err_set("the prompt has %zu tokens and the model's context is %d: shorten it", n_prompt,
                ctx);
        goto done;
    }
    size_t cap =
        n_prompt + (size_t)max_tokens < (size_t)ctx ? n_prompt + (size_t)max_tokens : (size_t)ctx;
    seq = malloc(sizeof *seq * cap);
    logits = malloc(sizeof *logits * (size_t)V);
    if (!seq || !logits) {
        err_set("out of memory for generation");
        goto done;
    }
    if (sampler_create(&smp, V, temperature, top_p, (uint64_t)seed) != 0) goto done;
    for (size_t i = 0; i < n_prompt; i++) {
        if (ids.ids[i] >= (uint32_t)V) {
            err_set("the tokenizer gives id %u but the model has %d token embeddings; use the "
                    "base model's own tokenizer",
                    ids.ids[i], V);
            goto done;
        }
        seq[i] = (int32_t)ids.ids[i];
    }
    size_t len = n_prompt;
    double t0 = clock_now_s();
    /* logits always holds the next-token distribution after seq[len − 1]. */
    if (len < cap && (decoder_open(&dec, m, s, (int)cap, device, precision) != 0 ||
                      decoder_step(dec, seq, (int)len, logits) != 0))
        goto done;
    while (len < cap) {
        int next = sampler_next(smp, logits);
        if (next < 0) goto done;
        size_t k = 0;
        while (k < n_stop && stop[k] != next) k++;
        if (k < n_stop) break; /* an end-of-turn id */
        seq[len++] = next;
        if (len < cap && decoder_step(dec, &seq[len - 1], 1, logits) != 0) goto done;
    }
    double dt = clock_now_s() - t0;
    size_t n_new = len - n_prompt, text_len;
    uint32_t *out_ids = (uint32_t *)seq + n_prompt; /* ids are < V, so the bits are the same */
    if (tokenizer_decode(tok, out_ids, n_new, 1, &text, &text_len) != 0) goto done;
    fwrite(text, 1, text_len, stdout);
    printf("\n");
    fprintf(stderr, "%zu tokens in %.2f s (%.1f tokens/s, %s; prompt %zu tokens)%s\n", n_new, dt,
            dt > 0 ? (double)n_new / dt : 0.0, dec ? decoder_device(dec) : device, n_prompt,
            len == (size_t)ctx ? "; stopped at the model's context length" : "");
    rc = 0;
done:
    if (rc != 0) opts_fail();
    free(text);
    free(rendered);
    sampler_free(smp);
    free(seq);
    decoder_free(dec);
    free(logits);
    tokenizer_ids_free(&ids);
    tokenizer_free(tok);
    lora_free(s);
    model_free(m);
    return rc;
}
