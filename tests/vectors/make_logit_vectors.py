#!/usr/bin/env python3
"""Reference logits of the real GGUF models from Hugging Face transformers,
for tests/test_real_model.c.

    python3 tests/vectors/make_logit_vectors.py \
        $(scripts/fetch-model.sh smollm2) tests/vectors/logits-smollm2.json
    python3 tests/vectors/make_logit_vectors.py \
        $(scripts/fetch-model.sh qwen) tests/vectors/logits-qwen2.json

transformers reads the GGUF itself (gguf_file=), dequantises every tensor
to fp32 and undoes llama.cpp's Q/K row interleaving, so it is an
implementation independent of the engine's loader and forward pass. The
model runs in fp32 on the CPU. Prompts are fixed texts turned into ids by
the GGUF's own tokenizer (AutoTokenizer with gguf_file=); the ids are stored,
so the C test needs no tokenizer. (The texts have no digits: transformers'
GGUF tokenizer for SmolLM2 does not split digit runs as the model's own
tokenizer does.) For each checked position the file keeps
the 20 largest logits with their ids and the logits of a fixed set of 50
other ids spread over the vocabulary.
"""
import hashlib
import json
import os
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

ENGLISH = (
    "The old lighthouse on the northern cape had not been used for nearly forty years when the town "
    "council decided to restore it. Nobody remembered exactly why the light had gone dark. Some said "
    "a storm had broken the great lens, others that the keeper had simply grown too old to climb the "
    "stairs, and that no one younger had wanted the job. The building itself was in better shape than "
    "anyone expected. Its stone walls, almost a metre thick at the base, had kept out the wind and the "
    "rain, and the iron staircase that wound up the inside of the tower was rusty but sound. The first "
    "task was to clear out the rooms at the bottom, where the keeper had lived. They were full of "
    "broken furniture, old newspapers and a surprising number of empty tea tins. Behind a loose panel "
    "in the kitchen, one of the volunteers found a small notebook wrapped in oilcloth. It was the "
    "keeper's log for the last winter the light had burned. Every night he had written down the "
    "weather, the ships he had seen and the hour at which he had trimmed the wick. The entries were "
    "short and plain, but towards the end of the book they changed. He began to write about a boat "
    "that passed the cape every evening without lights, always heading south, always at the same time. "
    "He reported it to the harbour master twice, and twice he was told that no such boat was registered "
    "anywhere on the coast. The last entry, dated the fourteenth of February, said only that the boat "
    "had stopped below the tower and that he was going down to see who was on board. The council "
    "printed the notebook in the local paper, and for a few weeks the whole town talked of nothing else."
)
CHAT_QUESTION = "What is the capital of France? Answer in one word."
N_TOP = 20
N_FIXED = 50


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_logit_vectors.py MODEL.gguf OUT.json")
    path, out = sys.argv[1], sys.argv[2]
    directory, name = os.path.split(os.path.abspath(path))
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size

    english = tokenizer(ENGLISH, add_special_tokens=False)["input_ids"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_QUESTION}],
                                         add_generation_prompt=True, tokenize=True)
    if not isinstance(chat, list):  # some versions return a BatchEncoding
        chat = chat["input_ids"]
    prompts = [("english", english), ("chat", chat)]
    fixed = np.random.default_rng(20241130).choice(vocab, size=N_FIXED, replace=False)

    records = []
    for label, ids in prompts:
        n = len(ids)
        positions = sorted({0, n // 4, n // 2, (3 * n) // 4, n - 2, n - 1})
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].numpy()
        checked = []
        for p in positions:
            row = logits[p].astype(np.float64)
            top = np.argsort(-row, kind="stable")[:N_TOP]
            chosen = list(top) + [i for i in fixed if i not in set(top)]
            checked.append({
                "position": p,
                "argmax": int(top[0]),
                "ids": [int(i) for i in chosen],
                "logits": [float("%.9g" % row[i]) for i in chosen],  # round-trips fp32
            })
        records.append({"name": label, "tokens": [int(i) for i in ids], "checked": checked})
        print(f"{label}: {n} tokens, argmax at the last position {checked[-1]['argmax']}"
              f" ({tokenizer.decode([checked[-1]['argmax']])!r})", file=sys.stderr)

    document = {
        "model_file": name,
        "model_sha256": sha256(path),
        "architecture": model.config.model_type,
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 CPU",
        "command": f"python3 tests/vectors/make_logit_vectors.py MODEL.gguf {out}",
        "prompts": records,
    }
    with open(out, "w") as f:
        json.dump(document, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {out}: {os.path.getsize(out)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
