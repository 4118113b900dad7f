#!/usr/bin/env python3
"""Prepares the tokenizer benchmark inputs (deterministic, seed 1).

    prepare.py OUT_DIR [MEGABYTES]

Writes into OUT_DIR:
  corpus.txt         MEGABYTES (default 8) of multilingual text, one document
                     per line: sentences of the example corpus and of the
                     fixture languages (German, French, Spanish, Russian,
                     Greek, Japanese, Chinese, Korean, code, numbers, emoji),
                     with invented words, numbers and casing mixed in so that
                     the encoder sees rare pre-tokens too, not only cache hits
  gpt2_32k.json      byte-level BPE, GPT-2 pre-tokenizer, 32k vocabulary
  llama3_32k.json    byte-level BPE, Llama 3 pre-tokenizer (Split + ByteLevel,
                     ignore_merges), 32k vocabulary, trained on the same text
"""
import os
import random
import sys

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "tokenizer"))
from make_fixtures import GPT2_PAT, LLAMA3_PAT, MULTI, TEXTS  # noqa: E402,F401

SYLLABLES = ["ka", "lo", "mi", "ne", "tor", "ung", "schaft", "ité", "ción", "ство", "λο", "ση",
             "の", "学", "研", "究", "대", "학", "ing", "ed", "ül", "ör", "ß", "ça", "que"]


def sentences():
    pool = []
    corpus = os.path.join(ROOT, "examples", "corpus")
    for name in sorted(os.listdir(corpus)):
        path = os.path.join(corpus, name)
        if not os.path.isfile(path):  # heldout/: the demo's held-out lines, not text to train on
            continue
        with open(path, encoding="utf-8") as f:
            pool += [l for l in f.read().split("\n") if l.strip()]
    pool += [l for l in MULTI.split("\n") if l.strip()]
    pool += [t for t in TEXTS if t and "{S" not in t and len(t) < 200]
    return pool


def mutate(rng, line):
    words = line.split(" ")
    for i in range(len(words)):
        r = rng.random()
        if r < 0.06:
            words[i] = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 5)))
        elif r < 0.09:
            words[i] = str(rng.randint(0, 10 ** rng.randint(1, 9)))
        elif r < 0.11:
            words[i] = words[i].upper()
        elif r < 0.12:
            words[i] = words[i] + rng.choice(["😀", "!", "?!", "...", "\t", "  ", "—"])
    return " ".join(words)


def main():
    out = sys.argv[1]
    megabytes = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
    os.makedirs(out, exist_ok=True)
    rng = random.Random(1)
    pool = sentences()
    lines, size = [], 0
    while size < megabytes * 1e6:
        doc = " ".join(mutate(rng, rng.choice(pool)) for _ in range(rng.randint(1, 8)))
        lines.append(doc)
        size += len(doc.encode("utf-8")) + 1
    with open(os.path.join(out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")

    for name, pat in [("gpt2_32k", None), ("llama3_32k", LLAMA3_PAT)]:
        tok = Tokenizer(models.BPE(ignore_merges=pat is not None))
        if pat is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pat), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=32000, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(lines, trainer)
        tok.save(os.path.join(out, name + ".json"))
        print(name, tok.get_vocab_size())
    print("corpus", size, "bytes,", len(lines), "documents")


if __name__ == "__main__":
    main()
