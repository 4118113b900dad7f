#!/usr/bin/env python3
"""Hugging Face tokenizers' encode throughput, the reference for bench_tokenizer.

    ref_hf_tokenizers.py TOKENIZER_JSON TEXT_FILE [SECONDS]

Same protocol as bench_tokenizer.c: every non-empty line is a document,
encoded without special tokens; best pass after a warm-up, passes repeated for
at least SECONDS. Single-threaded: RAYON_NUM_THREADS=1 and
TOKENIZERS_PARALLELISM=false are set before tokenizers is imported. Two modes:
  per-doc  tok.encode(doc) for one document at a time
  batch    tok.encode_batch(all documents) (on one rayon thread)
The ids hash is FNV-1a over the ids, as in bench_tokenizer.c.
"""
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402

MASK = (1 << 64) - 1


def ids_hash(encodings):
    h = 0xCBF29CE484222325
    n = 0
    for e in encodings:
        for i in e.ids:
            h = ((h ^ i) * 0x100000001B3) & MASK
        n += len(e.ids)
    return h, n


def best_time(fn, seconds):
    fn()  # warm-up
    best, passes, start = float("inf"), 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - start < seconds:
        a = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - a)
        passes += 1
    return best, passes, out


def main():
    path, text_path = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(path)
    load_s = time.perf_counter() - t0
    with open(text_path, "rb") as f:
        raw = f.read()
    docs = [d for d in raw.decode("utf-8").split("\n") if d]
    mb = len(raw) / 1e6
    modes = {
        "per-doc": lambda: [tok.encode(d, add_special_tokens=False) for d in docs],
        "batch": lambda: tok.encode_batch(docs, add_special_tokens=False),
    }
    for name, fn in modes.items():
        best, passes, encs = best_time(fn, seconds)
        h, n = ids_hash(encs)
        print("hf       %-14s %8.2f MB/s  %d docs, %d tokens, %.2f MB, best of %d passes, "
              "load %.2f s, ids_hash=%016x" % (name, mb / best, len(docs), n, mb, passes, load_s, h))


if __name__ == "__main__":
    main()
