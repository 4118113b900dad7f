"""PyTorch reference for bench_model: forward+backward tokens/s of the same
shapes in fp32 on the CPU, with the same number of threads, every weight
trainable (a full fine-tuning step's work), Hugging Face transformers models
with SDPA attention (PyTorch's fastest CPU path).

    python3 bench/model/ref_torch.py --arch gpt2 --preset 124m --batch 4 --seq 256 --threads 2
"""
import argparse
import os
import sys
import time

import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from hf_presets import hf_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="gpt2")
    ap.add_argument("--preset", default="124m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, cfg = hf_model(a.arch, a.preset)
    model.train()
    model.config.use_cache = False
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq))
    best = float("inf")
    for it in range(a.steps + 1):
        t0 = time.perf_counter()
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        dt = time.perf_counter() - t0
        model.zero_grad(set_to_none=False)
        if it > 0:
            best = min(best, dt)
    n = sum(p.numel() for p in model.parameters())
    print(f"pytorch {a.arch}-{a.preset} threads={a.threads} B={a.batch} T={a.seq} params={n} "
          f"loss={out.loss.item():.4f} tokens/s={a.batch * a.seq / best:.1f} "
          f"torch={torch.__version__} transformers={transformers.__version__}")


if __name__ == "__main__":
    main()
