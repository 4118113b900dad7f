"""PyTorch + PEFT reference for bench_lora: LoRA training tokens/s and peak
memory of the same shapes in fp32 on the CPU, with the same number of
threads. Hugging Face transformers models with SDPA attention (PyTorch's
fastest CPU path), random weights, PEFT LoRA r=16, alpha=32 on
target_modules="all-linear" (every linear layer of the blocks), and one
training step as a PEFT user writes it: forward with labels, backward,
torch.optim.AdamW.step, zero_grad. Peak memory is the process's ru_maxrss.

--precision bf16 is what a CPU user does with a bf16 checkpoint: the base
model in bf16 (as from_pretrained(torch_dtype=torch.bfloat16) loads it; the
LoRA weights stay fp32, PEFT's autocast_adapter_dtype default), and the
forward and backward under torch.autocast("cpu", dtype=torch.bfloat16).

Mixtral: transformers 5 holds the router and the experts as parameters,
not nn.Linear modules, so "all-linear" would adapt the attention only; the
router and the experts take adapters through PEFT's target_parameters
(gate.weight, the fused experts' gate_up_proj and down_proj, rank r per
expert), as a PEFT user adapts them. fedlora (bench_lora_model.h: q, k, v,
o, gate, w1, w2, w3 by name, as its all-linear leaves the router frozen)
adapts the same weights with rank r on each of an expert's w1, w3 and w2:
on w1 | w3 that is A (2r, C) and a block-diagonal B against PEFT's A (r, C),
B (2F, r), so fedlora trains 10% more numbers (both print theirs).

    python3 bench/lora/ref_peft.py --arch gpt2 --preset 124m --batch 4 --seq 256 --threads 2
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    bf16 = a.precision == "bf16"
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base, cfg = hf_model(a.arch, a.preset)
    base.config.use_cache = False
    if bf16:
        base = base.to(torch.bfloat16)
    targets = dict(target_modules="all-linear")
    if a.arch == "mixtral":
        targets = dict(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                       target_parameters=["gate.weight", "gate_up_proj", "down_proj"])
    lcfg = peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                           **targets)
    model = peft.get_peft_model(base, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))
    best = float("inf")
    for it in range(a.steps + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=False)
        dt = time.perf_counter() - t0
        if it > 0:
            best = min(best, dt)
    n = sum(p.numel() for p in trainable)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pytorch+peft {a.arch}-{a.preset} precision={a.precision} threads={a.threads} B={a.batch} T={a.seq} "
          f"r={a.rank} trainable={n} loss={out.loss.item():.4f} "
          f"tokens/s={a.batch * a.seq / best:.1f} peak_rss_mib={rss:.0f} "
          f"torch={torch.__version__} transformers={transformers.__version__} "
          f"peft={peft.__version__}")


if __name__ == "__main__":
    main()
