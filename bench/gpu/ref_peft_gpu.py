"""PyTorch + PEFT reference for bench_gpu: LoRA training tokens/s and model
FLOP utilisation of the same shapes on the same GPU. Hugging Face
transformers models with bf16 weights and SDPA attention (PyTorch's fused
flash/memory-efficient kernels), random weights, PEFT LoRA r=16, alpha=32 on
target_modules="all-linear", and one training step as a PEFT user writes it:
forward with labels, backward, clip_grad_norm_(1.0), torch.optim.AdamW.step,
zero_grad. FLOPs per token use bench_gpu's formula (docs/gpu.md).

    python3 bench/gpu/ref_peft_gpu.py --model gpt2-124m --batch 8 --seq 1024
"""
import argparse
import time

import peft
import torch
import transformers

SHAPES = {
    # Must match shape_config() in bench/gpu/bench_gpu.c.
    "gpt2-124m": lambda: transformers.GPT2Config(
        vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "qwen2.5-0.5b": lambda: transformers.Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def flops_per_token(cfg, model, rank, seq):
    """4 N_mm + 6 L H D (T + 1) + 6 sum r (in + out), as bench_gpu."""
    n_mm, n_lora = 0, 0
    for mod in model.modules():
        if isinstance(mod, peft.tuners.lora.LoraLayer):
            base = mod.get_base_layer()
            w = base.weight
            n_mm += w.numel()
            n_lora += rank * (w.shape[0] + w.shape[1])
    n_mm += cfg.vocab_size * (cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd)
    layers = cfg.num_hidden_layers if hasattr(cfg, "num_hidden_layers") else cfg.n_layer
    heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
    hidden = cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd
    attn = 6.0 * layers * heads * (hidden // heads) * (seq + 1)
    return 4 * n_mm + attn + 6 * n_lora


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2-124m", choices=sorted(SHAPES))
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.4)
    a = ap.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    cfg = SHAPES[a.model]()
    cls = (transformers.GPT2LMHeadModel if a.model.startswith("gpt2")
           else transformers.Qwen2ForCausalLM)
    base = cls._from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16).to(dev)
    base.config.use_cache = False
    lcfg = peft.LoraConfig(r=a.rank, lora_alpha=2 * a.rank, target_modules="all-linear",
                           lora_dropout=0.0, task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, lcfg)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device=dev)

    def step():
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = a.steps * a.batch * a.seq / dt
    tflops = flops_per_token(cfg, model, a.rank, a.seq) * tps / 1e12
    print(f"ref_peft_gpu model={a.model} precision=bf16 batch={a.batch} seq={a.seq} "
          f"rank={a.rank} steps={a.steps} tokens_per_s={tps:.0f} "
          f"ms_per_step={1e3 * dt / a.steps:.2f} tflops={tflops:.1f} "
          f"mfu={100 * tflops / a.peak_tflops:.1f} "
          f"mem_gib={torch.cuda.max_memory_allocated() / 2**30:.2f} loss={loss.item():.4f} "
          f"torch={torch.__version__} peft={peft.__version__} "
          f"transformers={transformers.__version__} device=\"{torch.cuda.get_device_name()}\"")


if __name__ == "__main__":
    main()
