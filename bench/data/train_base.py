#!/usr/bin/env python3
"""Pretrains the federation's small base model (run by make_base.sh).

    train_base.py --init DIR --corpora DIR --out DIR [--steps N] [--batch B]
                  [--seq T] [--lr X] [--layers L] [--seed S] [--threads N]

--init is what `fedlora init-model --arch llama --preset small` wrote: its
config.json (with num_hidden_layers set to --layers) and its byte-level
tokenizer.json are the model's, so fedlora reads the result as it reads its
own models. The weights are drawn by transformers (normal(0, 0.02), seeded).

Data: the `base.txt` share of every domain of the corpora (make_corpora.sh),
which no university's training share and no held-out document overlaps.
Tokens are fedlora's byte-level ids: the UTF-8 bytes of a document, then the
end-of-text id 256 (no BOS: the tokenizer has no post-processor template).
The documents are concatenated into one stream; each step takes B windows
of T + 1 tokens at offsets drawn from a seeded torch.Generator (inputs the
first T, targets the last T).

Optimiser: AdamW (β 0.9/0.95, weight decay 0.1 on matrices, none on norms),
linear warm-up over the first 5 % of the steps, cosine decay to 10 % of the
peak, gradient clipping at 1.0. fp32 throughout. With the same seed, steps
and thread count the run is repeated bit for bit (torch's deterministic
algorithms on; other thread counts change the summation order).

Writes OUT/config.json, OUT/model.safetensors (save_pretrained), OUT/
tokenizer.json (copied from --init), OUT/train_log.jsonl (one line per
logged step: step, lr, train loss, elapsed seconds; held-out loss every
--eval-every steps), OUT/heldout-sample.txt (the held-out mixture the eval
uses: the first documents of each domain's heldout.txt up to --eval-bytes
each) and OUT/TRAINING.json (settings, parameter count, wall time, final
losses).
"""
import argparse
import json
import math
import os
import shutil
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

EOS = 256


def read_docs(path):
    with open(path, "rb") as f:
        return [line for line in f.read().split(b"\n") if line]


def stream_of(docs):
    """fedlora's packing: each document's bytes, then EOS, concatenated."""
    buf = bytearray()
    for d in docs:
        buf += d
        buf.append(0)  # placeholder for EOS, fixed below
    t = torch.frombuffer(buf, dtype=torch.uint8).to(torch.int64)
    ends, at = [], 0
    for d in docs:
        at += len(d)
        ends.append(at)
        at += 1
    t[torch.tensor(ends, dtype=torch.int64)] = EOS
    return t


def packed_loss(model, stream, seq, batch=8):
    """Mean next-token loss over `stream` packed as `fedlora eval` packs a file
    (docs/training.md, "Packing"): row r holds stream[r·T : r·T + T + 1]; the
    last row is padded with EOS inputs whose targets are ignored; the mean is
    over every target of every row. Computed in float64 from fp32 logits."""
    n = stream.numel()
    rows = (n - 2) // seq + 1
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for r0 in range(0, rows, batch):
            inp, tgt = [], []
            for r in range(r0, min(rows, r0 + batch)):
                w = stream[r * seq: r * seq + seq + 1]
                x = torch.full((seq,), EOS, dtype=torch.int64)
                y = torch.full((seq,), -100, dtype=torch.int64)
                x[: min(seq, w.numel())] = w[:seq]
                y[: w.numel() - 1] = w[1:]
                inp.append(x)
                tgt.append(y)
            x, y = torch.stack(inp), torch.stack(tgt)
            logits = model(input_ids=x).logits.double()
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100,
                reduction="sum")
            total += ce.item()
            count += int((y != -100).sum())
    model.train()
    return total / count, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--corpora", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-bytes", type=int, default=8192)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(a.seed)
    t_start = time.time()

    domains = sorted(d for d in os.listdir(a.corpora)
                     if os.path.isfile(os.path.join(a.corpora, d, "base.txt")))
    if not domains:
        raise SystemExit(f"{a.corpora}: no <domain>/base.txt; make it with make_corpora.sh")
    base_docs, sample = [], []
    for d in domains:
        base_docs += read_docs(os.path.join(a.corpora, d, "base.txt"))
        size = 0
        for doc in read_docs(os.path.join(a.corpora, d, "heldout.txt")):
            if size and size + len(doc) > a.eval_bytes:
                break
            sample.append(doc)
            size += len(doc)
    train = stream_of(base_docs)
    heldout = stream_of(sample)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "heldout-sample.txt"), "wb") as f:
        f.write(b"".join(d + b"\n" for d in sample))

    with open(os.path.join(a.init, "config.json")) as f:
        cfg = json.load(f)
    cfg["num_hidden_layers"] = a.layers
    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    warm = max(1, a.steps // 20)

    def lr_at(step):  # step 0-based
        if step < warm:
            return a.lr * (step + 1) / warm
        p = (step - warm) / max(1, a.steps - warm)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    gen = torch.Generator().manual_seed(a.seed)
    log = open(os.path.join(a.out, "train_log.jsonl"), "w")
    loss0, _ = packed_loss(model, heldout, a.seq)
    log.write(json.dumps({"step": 0, "heldout_loss": round(loss0, 6), "elapsed_s": 0.0}) + "\n")
    t_train = time.time()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        offs = torch.randint(0, train.numel() - a.seq - 1, (a.batch,), generator=gen)
        w = torch.stack([train[o: o + a.seq + 1] for o in offs.tolist()])
        logits = model(input_ids=w[:, :-1]).logits  # (B, T, V): T targets per window
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = {"step": step + 1, "lr": round(lr_at(step), 8), "loss": round(loss.item(), 6),
               "elapsed_s": round(time.time() - t_train, 2)}
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            rec["heldout_loss"] = round(packed_loss(model, heldout, a.seq)[0], 6)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if (step + 1) % 25 == 0:
            print(f"step {step + 1}/{a.steps} loss {loss.item():.4f} "
                  f"{time.time() - t_train:.0f}s", flush=True)
    train_s = time.time() - t_train
    log.close()

    model.save_pretrained(a.out, safe_serialization=True)
    shutil.copy(os.path.join(a.init, "tokenizer.json"), os.path.join(a.out, "tokenizer.json"))
    for extra in ("generation_config.json",):
        p = os.path.join(a.out, extra)
        if os.path.exists(p):
            os.remove(p)  # fedlora needs only config, weights and tokenizer

    # The held-out loss as fedlora eval computes it, from the saved weights
    # read back (what fedlora will read).
    back = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    final, count = packed_loss(back, heldout, a.seq)
    info = {
        "parameters": n_params, "layers": a.layers, "hidden": cfg["hidden_size"],
        "steps": a.steps, "batch": a.batch, "seq": a.seq, "lr": a.lr, "seed": a.seed,
        "threads": a.threads, "tokens_seen": a.steps * a.batch * a.seq,
        "base_tokens": int(train.numel()), "domains": domains,
        "heldout_sample_tokens": int(heldout.numel()), "heldout_targets": count,
        "heldout_loss_init": loss0, "heldout_loss": final,
        "train_seconds": round(train_s, 1), "wall_seconds": round(time.time() - t_start, 1),
        "torch": torch.__version__,
    }
    with open(os.path.join(a.out, "TRAINING.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(f"pytorch heldout loss {final:.9f} over {count} targets")


if __name__ == "__main__":
    main()
