"""Hugging Face reference for bench_generate: prefill time and greedy decode
rate of transformers' generate() for the same shapes in fp32 on the CPU,
with the same number of threads. Random weights, SDPA attention (PyTorch's
fastest CPU path), the KV cache (use_cache=True, transformers' default
DynamicCache), a PEFT LoRA adapter r=16, alpha=32 on target_modules=
"all-linear", unmerged (as PeftModel.generate runs an adapter), greedy
decoding with min_new_tokens = max_new_tokens so that EOS cannot stop it.

The prefill is timed as generate(max_new_tokens=1) (the prompt's forward and
one argmax); the decode rate as (G - 1) / (time(G new tokens) - time(1)),
i.e. the same G - 1 single-token steps that bench_generate times. Best of
N repeats after a warm-up; peak memory is the process's ru_maxrss.

    python3 bench/generate/ref_hf_generate.py --arch gpt2 --preset 124m --threads 2
"""
import argparse
import os
import resource
import sys
import time

import peft
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hf_presets import hf_model  # noqa: E402


def timed_generate(model, prompt, n):
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             use_cache=True, pad_token_id=0)
    dt = time.perf_counter() - t0
    assert out.shape[1] == prompt.shape[1] + n
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, cfg = hf_model(a.arch, a.preset)
    if a.rank > 0:
        lcfg = peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules="all-linear",
                               lora_dropout=0.0, task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lcfg)
    model.eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt))
    timed_generate(model, prompt, a.new)  # warm-up
    prefill = min(timed_generate(model, prompt, 1) for _ in range(a.repeats))
    full = min(timed_generate(model, prompt, a.new) for _ in range(a.repeats))
    decode = max(full - prefill, 1e-9)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hf-generate {a.arch}-{a.preset} threads={a.threads} P={a.prompt} G={a.new} "
          f"r={a.rank} prefill_s={prefill:.4f} prefill_tokens/s={a.prompt / prefill:.1f} "
          f"decode_ms/token={1e3 * decode / (a.new - 1):.2f} "
          f"decode_tokens/s={(a.new - 1) / decode:.1f} peak_rss_mib={rss:.0f} "
          f"torch={torch.__version__} transformers={transformers.__version__} "
          f"peft={peft.__version__}")


if __name__ == "__main__":
    main()
