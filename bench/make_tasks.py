#!/usr/bin/env python3
"""make_tasks.py - RULER-style retrieval tasks on natural English prose, as
task files for `build/quality --tasks`.

    python3 bench/make_tasks.py --seed 1 --tokens 1024 --samples 10 \\
        --tasks passkey,needle,vartrack,fact --out FILE.jsonl

Each line is {"context", "question", "answer", "task", "seed", "tokens",
"index", "depth"}; build/quality reads the first three. The haystack is cut from the
essays of bench/texts/ and examples/llama.cpp/prompts/ (original prose
written for kvec, no digits in it) at a seeded paragraph, long enough for
about --tokens tokens of SmolLM2's tokenizer with the needles in place; the
needles go between sentences at seeded depths. The output depends only on
the arguments and the texts: the same seed writes the same file.
docs/REAL_TASKS.md describes the tasks and what the full cache scores.

--kl writes held-text samples for `build/quality --kl` instead (the
next-token KL metric): one {"text", "prefix", "forced"} line per sample,
the text a seeded run of whole paragraphs of one half of the prose
(--texts tune or report, KL_TEXTS below), long enough for --prefix +
--forced tokens with a margin:

    python3 bench/make_tasks.py --kl --texts report --seed 2 --prefix 2048 \\
        --forced 128 --samples 12 --out bench/tasks/kl-seed2-2048.jsonl

--check-model FILE.gguf counts each context's tokens with
`build/generate --model FILE.gguf --tokenize` and prints them to stderr; it
does not change the output.
"""
import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = sorted(glob.glob(os.path.join(ROOT, "bench", "texts", "*.txt"))) + sorted(
    glob.glob(os.path.join(ROOT, "examples", "llama.cpp", "prompts", "*.txt")))

# SmolLM2's tokens per word on these texts (measured on all of them with
# build/generate --tokenize: 1.14 to 1.17); needles are counted the same way.
TOKENS_PER_WORD = 1.15

# The held-text samples of the KL metric come from two disjoint halves of
# the prose: `tune` for tuning rounds, `report` for reported numbers. The
# report half adds the essays of bench/texts/held/, which no task uses.
KL_TEXTS = {
    "tune": [os.path.join(ROOT, "bench", "texts", n + ".txt")
             for n in ("bees", "bread", "garden", "library", "market", "railway")],
    "report": [os.path.join(ROOT, "bench", "texts", n + ".txt") for n in ("river", "weather")]
    + [os.path.join(ROOT, "examples", "llama.cpp", "prompts", n + ".txt") for n in ("ferry", "glassworks", "orchard")]
    + sorted(glob.glob(os.path.join(ROOT, "bench", "texts", "held", "*.txt"))),
}
# Words per sample: (prefix + forced) / TOKENS_PER_WORD times this margin,
# so that a tokenizer a little thriftier than SmolLM2's still gives enough
# tokens (Qwen2.5's gives about 5% fewer on these texts).
KL_MARGIN = 1.15

TASKS = ("passkey", "needle", "multikey", "multivalue", "vartrack", "fact")
# The tasks SmolLM2-135M answers at 0.9 or better from the full cache at 1K
# tokens; multikey and multivalue stay available for stronger models.
DEFAULT_TASKS = ("passkey", "needle", "vartrack", "fact")

COLOURS = ["blue", "red", "green", "yellow", "white", "black", "orange", "purple", "brown", "grey"]
THINGS = ["door", "gate", "box", "chest", "cupboard", "drawer", "locker", "suitcase", "shed", "cabinet"]
# Key words for the needles: plain nouns that do not occur in the texts.
KEYS = ["umbrella", "violin", "penguin", "tractor", "lemonade", "telescope", "giraffe", "saxophone",
        "volcano", "kangaroo", "pyramid", "submarine", "cactus", "dolphin", "helicopter", "pineapple",
        "tortoise", "trumpet", "avocado", "zebra", "compass", "rocket", "walrus", "banjo"]
FIRST = ["Martha", "Edwin", "Clara", "Rupert", "Hilda", "Oswald", "Nora", "Ambrose", "Greta", "Felix",
         "Mabel", "Jasper", "Ivy", "Cyril", "Agatha", "Bertram", "Winifred", "Leopold", "Rosalind", "Horace"]
LAST = ["Thornbury", "Pickering", "Ashworth", "Wetherby", "Fairbanks", "Hollings", "Kettleby", "Marchant",
        "Penhallow", "Quenby", "Ravensworth", "Stanbridge", "Tregarth", "Underwood", "Whitcombe", "Yardley"]
PETS = ["cat", "dog", "parrot", "goat", "pony", "rabbit", "tortoise", "donkey"]
PET_NAMES = ["Pepper", "Biscuit", "Marmalade", "Juniper", "Crumble", "Thistle", "Nutmeg", "Bramble",
             "Clover", "Saffron", "Pudding", "Domino", "Muffin", "Toffee", "Pickle", "Sprout"]
TOWNS = ["Lowmoor", "Ashcombe", "Brightwater", "Coldharbour", "Dunmere", "Elmstead", "Foxley", "Greyhaven",
         "Hartwell", "Kingsbridge", "Marlow End", "Netherby", "Oakhurst", "Pendle Cross", "Redbrook", "Stillwater"]
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def paragraphs(paths=TEXTS):
    """Every paragraph of every text, in file order."""
    out = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            out += [" ".join(p.split()) for p in f.read().split("\n\n") if p.strip()]
    return out


def sentences(paragraph):
    return [s for s in re.split(r"(?<=[.!?])\s+", paragraph) if s]


def words(text):
    return len(text.split())


def haystack(rng, paras, n_words):
    """Paragraphs from a seeded start, wrapping round, cut at a sentence end
    once n_words are reached: a list of paragraphs, each a list of sentences."""
    at, out, total = rng.randrange(len(paras)), [], 0
    while total < n_words:
        kept = []
        for s in sentences(paras[at % len(paras)]):
            if total >= n_words:
                break
            kept.append(s)
            total += words(s)
        out.append(kept)
        at += 1
    return out


def place(hay, needles, rng, ordered=False):
    """Inserts each needle sentence after a sentence at a seeded depth (a
    fraction of the haystack's sentences, 0.05 to 0.95); ordered keeps the
    needles in the given order. Returns the context and the depths."""
    slots = [(p, s) for p, para in enumerate(hay) for s in range(len(para))]
    depths = [rng.uniform(0.05, 0.95) for _ in needles]
    if ordered:
        depths.sort()
    at = {}
    for depth, needle in zip(depths, needles):
        at.setdefault(slots[min(int(depth * len(slots)), len(slots) - 1)], []).append(needle)
    paras = []
    for p, para in enumerate(hay):
        out = []
        for s, sentence in enumerate(para):
            out.append(sentence)
            out += at.get((p, s), [])
        paras.append(" ".join(out))
    return "\n\n".join(paras) + "\n", [round(d, 3) for d in depths]


def number(rng, digits):
    return str(rng.randrange(10 ** (digits - 1), 10 ** digits))


def distinct(rng, pool, n):
    return rng.sample(pool, n)


def passkey(rng):
    colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
    value = number(rng, 5)
    needle = f"The secret number for the {colour} {thing} is {value}. Remember it: the secret number for the {colour} {thing} is {value}."
    return [needle], f"What is the secret number for the {colour} {thing}?", value, False


def needle(rng):
    key, value = rng.choice(KEYS), number(rng, 7)
    return ([f"The special number for the {key} is {value}."],
            f"What is the special number for the {key}?", value, False)


def multikey(rng, n_keys=4):
    keys = distinct(rng, KEYS, n_keys)
    values = [number(rng, 7) for _ in keys]
    asked = rng.randrange(len(keys))
    needles = [f"The special code for the {k} is {v}." for k, v in zip(keys, values)]
    return needles, f"What is the special code for the {keys[asked]}?", values[asked], False


def multivalue(rng):
    # One key, two values told apart by a word; one asked (exact match scores one string).
    key = rng.choice(KEYS)
    values = [number(rng, 7) for _ in range(2)]
    kinds = ["morning", "evening"]
    asked = rng.randrange(2)
    needles = [f"The {kinds[i]} code for the {key} is {values[i]}." for i in range(2)]
    return needles, f"What is the {kinds[asked]} code for the {key}?", values[asked], False


def vartrack(rng, n_names=2):
    # n_names 2 is one hop (X = value, Y = X); SmolLM2 scored 0.7 with two hops and 0.3 with three.
    names, value = [], number(rng, 5)
    while len(names) < n_names:
        name = "".join(rng.choice(LETTERS) for _ in range(3))
        if name not in names:
            names.append(name)
    needles = [f"Let the variable {names[0]} equal {value}."]
    needles += [f"Let the variable {names[i]} equal {names[i - 1]}." for i in range(1, len(names))]
    return needles, f"What number does the variable {names[-1]} equal?", value, True


def fact(rng):
    person = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    if rng.randrange(2) == 0:
        pet, name = rng.choice(PETS), rng.choice(PET_NAMES)
        return ([f"An old neighbour called {person} had a {pet} named {name}, and everyone in the street knew {name}."],
                f"What was the name of {person}'s {pet}?", name, False)
    town = rng.choice(TOWNS)
    return ([f"The schoolteacher {person} was born in a small town called {town} and moved away as a child."],
            f"In which town was {person} born?", town, False)


MAKERS = {"passkey": passkey, "needle": needle, "multikey": multikey, "multivalue": multivalue,
          "vartrack": vartrack, "fact": fact}


def make(seed, tokens, samples, tasks):
    paras = paragraphs()
    rows = []
    for task in tasks:
        # One generator per (seed, task, length): adding a task leaves the others' samples as they were.
        rng = random.Random(f"{seed}/{task}/{tokens}")
        for i in range(samples):
            needles, question, answer, ordered = MAKERS[task](rng)
            # A digit is a token of its own for SmolLM2.
            needle_tokens = sum(TOKENS_PER_WORD * words(n) + sum(c.isdigit() for c in n) for n in needles)
            n_words = int((tokens - needle_tokens) / TOKENS_PER_WORD)
            context, depths = place(haystack(rng, paras, n_words), needles, rng, ordered)
            rows.append({"context": context, "question": question, "answer": answer, "task": task,
                         "seed": seed, "tokens": tokens, "index": i, "depth": depths})
    return rows


def make_kl(seed, texts, prefix, forced, samples):
    """Held-text samples: each a seeded run of whole paragraphs of one half
    of the prose, from a distinct starting paragraph, in order and wrapping
    round from the last paragraph to the first, never longer than the half
    itself (no paragraph twice in a sample)."""
    paras = paragraphs(KL_TEXTS[texts])
    total = sum(words(p) for p in paras)
    need = int((prefix + forced) / TOKENS_PER_WORD * KL_MARGIN) + 1
    if need > total:
        sys.exit(f"make_tasks: {prefix} + {forced} tokens need about {need} words; the {texts} texts hold {total}")
    if samples > len(paras):
        sys.exit(f"make_tasks: at most {len(paras)} samples (one per starting paragraph) from the {texts} texts")
    rng = random.Random(f"kl/{seed}/{texts}/{prefix}/{forced}")
    rows = []
    for i, start in enumerate(rng.sample(range(len(paras)), samples)):
        kept, n_words, at = [], 0, start
        while n_words < need:
            kept.append(paras[at % len(paras)])
            n_words += words(kept[-1])
            at += 1
        rows.append({"text": "\n\n".join(kept) + "\n", "prefix": prefix, "forced": forced, "seed": seed,
                     "texts": texts, "index": i, "start_paragraph": start})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=1024, help="about this many context tokens (SmolLM2's tokenizer)")
    ap.add_argument("--samples", type=int, default=10, help="samples per task")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="of " + ",".join(TASKS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--kl", action="store_true", help="held-text samples for build/quality --kl instead of tasks")
    ap.add_argument("--texts", choices=sorted(KL_TEXTS), default="tune", help="--kl: which half of the prose")
    ap.add_argument("--prefix", type=int, default=2048, help="--kl: tokens prefilled and compressed")
    ap.add_argument("--forced", type=int, default=128, help="--kl: tokens teacher-forced after compression")
    ap.add_argument("--interleave", action="store_true",
                    help="order the samples task by task in turn (first of each task, then second, ...), so that "
                         "the first N of a long run (--limit, --skip) cover every task")
    ap.add_argument("--check-model", help="a GGUF: print each context's token count (build/generate --tokenize)")
    a = ap.parse_args()
    if a.kl:
        if a.prefix < 64 or not 1 <= a.forced <= 1024 or a.samples < 1:
            sys.exit("make_tasks: --prefix >= 64, --forced 1..1024, --samples >= 1")
        rows = make_kl(a.seed, a.texts, a.prefix, a.forced, a.samples)
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"make_tasks: {len(rows)} held-text samples ({a.texts} texts), seed {a.seed}, prefix {a.prefix}, "
              f"forced {a.forced} -> {a.out}", file=sys.stderr)
        if a.check_model:
            counts = [len(subprocess.run([os.path.join(ROOT, "build", "generate"), "--model", a.check_model, "--tokenize"],
                                         input=r["text"].encode(), capture_output=True, check=True).stdout.split())
                      for r in rows]
            print(f"make_tasks: text tokens min {min(counts)}, max {max(counts)} (need {a.prefix + a.forced})",
                  file=sys.stderr)
        return
    tasks = [t for t in a.tasks.split(",") if t]
    for t in tasks:
        if t not in MAKERS:
            sys.exit(f"make_tasks: unknown task '{t}' ({', '.join(TASKS)})")
    if a.tokens < 128 or a.samples < 1:
        sys.exit("make_tasks: --tokens >= 128, --samples >= 1")
    rows = make(a.seed, a.tokens, a.samples, tasks)
    if a.interleave:  # same samples, only the order changes
        rows.sort(key=lambda r: (r["index"], tasks.index(r["task"])))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"make_tasks: {len(rows)} samples ({', '.join(tasks)}), seed {a.seed}, about {a.tokens} tokens -> {a.out}",
          file=sys.stderr)
    if a.check_model:
        generate = os.path.join(ROOT, "build", "generate")
        counts = []
        for r in rows:
            ids = subprocess.run([generate, "--model", a.check_model, "--tokenize"], input=r["context"].encode(),
                                 capture_output=True, check=True).stdout.split()
            counts.append(len(ids))
        print(f"make_tasks: context tokens min {min(counts)}, mean {sum(counts) / len(counts):.0f}, max {max(counts)}",
              file=sys.stderr)


if __name__ == "__main__":
    main()
