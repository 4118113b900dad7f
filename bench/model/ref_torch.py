"""PyTorch reference for bench_model: forward+backward tokens/s of the same
shapes in fp32 on the CPU, with the same number of threads, every weight
trainable (a full fine-tuning step's work), Hugging Face transformers models
with SDPA attention (PyTorch's fastest CPU path).

    python3 bench/model/ref_torch.py --arch gpt2 --preset 124m --batch 4 --seq 256 --threads 2
"""
import argparse
import time

import torch
import transformers

PRESETS = {
    # Must match model_config_preset() in model/config.c.
    ("gpt2", "124m"): lambda: transformers.GPT2Config(
        vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    ("llama", "100m"): lambda: transformers.LlamaConfig(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
        tie_word_embeddings=True),
}


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
    cfg = PRESETS[(a.arch, a.preset)]()
    cls = transformers.GPT2LMHeadModel if a.arch == "gpt2" else transformers.LlamaForCausalLM
    model = cls._from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.float32)
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
