#!/usr/bin/env python3
"""peer_kvpress.py - NVIDIA kvpress's presses on the samples build/quality reads.

    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl [--per-task K]
        [--presses snapkv,streaming,...] [--budgets 0.1,0.25,0.5] [--settings agnostic,aware]
        [--kl FILE.jsonl] [--kl-limit N] [--out RESULT.json] [--subset-out FILE.jsonl]
    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl --kept-sample I
        --setting aware --budget 0.5 --compare-kvec snapkv   (kept positions, kvpress vs kvec)
    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl --check-replay

The GGUF is loaded in Hugging Face transformers (gguf_file=, dequantised to
fp32, CPU, eager attention so that ObservedAttentionPress sees the attention
weights). Each sample's prompt is the one build/quality --tasks builds
(TEXT_INSTRUCTION and the context in the model's chat template, the split
between what is compressed and what is read after it): the script rebuilds it
with the transformers tokenizer and compares every id with
`build/peer_dump --ids` (the C engine's own text_question_prompt); one
differing id stops the run.

How a press runs. kvpress compresses in a forward hook on each attention
layer during prefill, after that layer's output is computed: compressing
layer l changes nothing that later layers of the same prefill read. So one
prefill serves every press and budget: the script hooks the attention layers
the way BasePress.__call__ does and calls each press's own compress() on the
same (module, hidden_states, keys, values, attentions, kwargs) the press's hook
would get, keeping each press's compressed keys and values. --check-replay
verifies on one sample that this gives exactly the cache `with press(model):`
gives, press by press. The caches of one budget (one shape) are decoded as
one batch; its rows never attend to each other.

Budgets. kvec keeps floor(f * N) rows per KV head of an N-token prefix, the
last 32 (the observation window) always among them. kvpress keeps
max(1, int(N * (1 - compression_ratio))) rows; the script sets
compression_ratio = 1 - (floor(f * N) + 0.5) / N for each sample, which makes
that exactly floor(f * N). SnapKVPress runs with window_size 32 and
kernel_size 5 (kvec's defaults; kvpress's default window is 64).

Settings as build/quality: question-agnostic (the context is prefilled and
compressed, then the question is read), question-aware (context and question
prefilled together and compressed; the first answer token comes from the
prefill's own logits). Greedy, at most --max-tokens (32) new tokens, stopping
at <|im_end|> or EOS; correct when the answer contains the expected string,
ignoring ASCII case.

KL: a JSON-lines file of {"text", "prefix": P, "forced": F}; the text is
tokenized raw (no template), the first P tokens prefilled and compressed,
the next F fed (teacher forcing). At each of the F fed positions the
next-token distribution of the compressed cache is compared with the full
cache's: KL(full || compressed) in nats, and whether the two argmaxes agree;
mean per sample, then mean and standard error over samples.

Output: the shape of build/quality --out ({"results": {press: {setting:
{budget: accuracy}}}, "stderr", "correct", "samples", "wall_seconds"}), plus
"per_sample" (which samples each row answered), "kl" and the machine.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF conversion bar

TESTED = "kvpress 0.5.5, transformers 5.2.0, torch 2.15.0, gguf 0.19.0 (python 3.11)"
INSTALL = ("pip install kvpress==0.5.5 gguf   # kvpress 0.5.5 wants transformers<5.3 (it installs 5.2.0);\n"
           "    # beside a newer system transformers use a venv: python3 -m venv --system-site-packages "
           "~/.cache/kvec/venv && . ~/.cache/kvec/venv/bin/activate")

TEXT_INSTRUCTION = "Read the document below, then answer the question after it in a few words.\n\n"
WINDOW = 32          # kvec's observation window (kvec_config.window default)
POOL_KERNEL = 5      # kvec's pool_kernel default
PRESS_NAMES = ["snapkv", "streaming", "knorm", "tova", "keydiff", "observed", "expected", "pyramidkv", "kvzip"]
DEFAULT_PRESSES = "snapkv,streaming,knorm,tova,keydiff,observed,expected"


def require_packages():
    missing = []
    for name in ("torch", "transformers", "gguf", "kvpress"):
        try:
            __import__(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        sys.exit("peer_kvpress: missing " + ", ".join(missing) + "\n  " + INSTALL + "\n  tested with " + TESTED)


def make_press(name, kept, n_tokens):
    """The kvpress press `name` keeping exactly `kept` of n_tokens rows per KV head."""
    import kvpress
    ratio = 1.0 - (kept + 0.5) / n_tokens
    if name == "snapkv":
        return kvpress.SnapKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=POOL_KERNEL)
    if name == "pyramidkv":
        return kvpress.PyramidKVPress(compression_ratio=ratio, window_size=WINDOW, kernel_size=POOL_KERNEL)
    if name == "streaming":
        return kvpress.StreamingLLMPress(compression_ratio=ratio, n_sink=4)
    if name == "knorm":
        return kvpress.KnormPress(compression_ratio=ratio)
    if name == "tova":
        return kvpress.TOVAPress(compression_ratio=ratio)
    if name == "keydiff":
        return kvpress.KeyDiffPress(compression_ratio=ratio)
    if name == "observed":
        return kvpress.ObservedAttentionPress(compression_ratio=ratio)
    if name == "expected":
        return kvpress.ExpectedAttentionPress(compression_ratio=ratio)
    if name == "kvzip":
        return kvpress.KVzipPress(compression_ratio=ratio)
    raise SystemExit(f"peer_kvpress: unknown press {name} ({', '.join(PRESS_NAMES)})")


# Presses whose hook is not BasePress.forward_hook (KVzip re-reads the
# context with extra forward passes) run through `with press(model):`, one
# prefill per budget.
def needs_own_prefill(name):
    return name == "kvzip"


def uniform(name):
    """Whether the press keeps the same count in every layer and head, so
    that its caches batch with the other presses' at the same budget."""
    return name != "pyramidkv" and not needs_own_prefill(name)


def contains(reply, answer):
    """build/quality's rule (text_contains): answer inside reply, ASCII case ignored."""
    def fold(s):
        return "".join(c.lower() if "A" <= c <= "Z" else c for c in s)
    return fold(answer) in fold(reply)


def stderr_p(p, n):
    return math.sqrt(p * (1 - p) / n) if n else 0.0


class Peer:
    def __init__(self, model_path, threads):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        torch.set_num_threads(threads)
        self.torch = torch
        folder, name = os.path.split(os.path.abspath(model_path))
        self.tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        self.model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                          attn_implementation="eager")
        self.model.eval()
        self.system = default_system(model_path)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop = {i for i in (im_end, self.tokenizer.eos_token_id) if i is not None and i >= 0}
        self.language_model = self.model.model
        self.n_layers = self.model.config.num_hidden_layers

    # ------------------------------------------------------------ prompts
    def encode(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def question_prompt(self, context, question, aware):
        """text_question_prompt (session.c): the prefix and suffix ids."""
        context = context.rstrip(" \n\r\t")
        user = TEXT_INSTRUCTION + context + "\n\nQuestion: " + question
        head = f"<|im_start|>system\n{self.system}<|im_end|>\n" if self.system is not None else ""
        text = head + "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n"
        split = len(text) if aware else len(head) + len("<|im_start|>user\n") + len(TEXT_INSTRUCTION) + len(context)
        return self.encode(text[:split]), self.encode(text[split:])

    # ------------------------------------------------------------ prefill
    def prefill(self, ids, presses):
        """Prefills ids once; every (key, press) in presses compresses each
        layer as its own hook would. Returns (last logits, {key: [(K, V)] per
        layer}, full [(K, V)] per layer)."""
        torch = self.torch
        from transformers import DynamicCache
        compressed = {key: [None] * self.n_layers for key, _ in presses}
        full = [None] * self.n_layers
        for _, press in presses:
            press.post_init_from_model(self.model)

        def hook(module, args, kwargs, output):
            cache = kwargs["past_key_values"]
            layer = module.layer_idx
            keys, values = cache.layers[layer].keys, cache.layers[layer].values
            full[layer] = (keys, values)
            for key, press in presses:
                k, v = press.compress(module, kwargs["hidden_states"], keys, values, output[1], kwargs)
                compressed[key][layer] = (k, v)
            return output

        hooks = []
        try:
            for layer in self.language_model.layers:
                layer.self_attn.rotary_emb = self.language_model.rotary_emb  # as BasePress.__call__
                hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), logits_to_keep=1)
        finally:
            for h in hooks:
                h.remove()
        return out.logits[0, -1].clone(), compressed, full

    def prefill_with_press(self, ids, press):
        """The plain kvpress way: `with press(model):` around the prefill."""
        torch = self.torch
        from transformers import DynamicCache
        cache = DynamicCache()
        with torch.no_grad(), press(self.model):
            out = self.model(input_ids=torch.tensor([ids]), past_key_values=cache, logits_to_keep=1)
        layers = [(cache.layers[l].keys, cache.layers[l].values) for l in range(self.n_layers)]
        return out.logits[0, -1].clone(), layers

    def cache_of(self, layer_sets):
        """One cache holding several compressed caches as a batch (each
        [1, Hk, kept, D] per layer, the same kept count in each)."""
        torch = self.torch
        from transformers import DynamicCache
        cache = DynamicCache()
        for l in range(self.n_layers):
            keys = [layers[l][0] for layers in layer_sets]
            if len({k.shape for k in keys}) != 1:
                raise ValueError("a batch of caches needs one shape per layer")
            cache.update(torch.cat(keys), torch.cat([layers[l][1] for layers in layer_sets]), l)
        return cache

    def answers(self, layer_sets, n_prefix, suffix, first_logits, max_new):
        """Greedy replies, one per (compressed) cache of an n_prefix-token
        prefix, decoded as one batch (the rows never see each other); new
        tokens take positions n_prefix, n_prefix + 1, ... whatever the cache
        holds (kept keys keep their RoPE positions), as kvpress's pipeline
        does."""
        torch = self.torch
        rows = len(layer_sets)
        cache = self.cache_of(layer_sets)
        position = n_prefix
        generated = [[] for _ in range(rows)]
        done = [False] * rows
        with torch.no_grad():
            if suffix:
                pos = torch.arange(position, position + len(suffix)).unsqueeze(0).expand(rows, -1)
                logits = self.model(input_ids=torch.tensor([suffix] * rows), past_key_values=cache, position_ids=pos,
                                    logits_to_keep=1).logits[:, -1]
                position += len(suffix)
            else:
                logits = first_logits.unsqueeze(0).expand(rows, -1)
            while True:
                tokens = torch.argmax(logits, dim=-1).tolist()
                for r, token in enumerate(tokens):
                    if done[r]:
                        continue
                    if token in self.stop:
                        done[r] = True
                    else:
                        generated[r].append(token)
                        done[r] = len(generated[r]) == max_new
                if all(done):
                    break
                logits = self.model(input_ids=torch.tensor(tokens).unsqueeze(1), past_key_values=cache,
                                    position_ids=torch.full((rows, 1), position)).logits[:, -1]
                position += 1
        return [self.tokenizer.decode(g) for g in generated]

    def forced_logprobs(self, layer_sets, n_prefix, forced):
        """Log-probabilities [caches, F, vocab] at the F teacher-forced positions."""
        torch = self.torch
        rows = len(layer_sets)
        cache = self.cache_of(layer_sets)
        with torch.no_grad():
            pos = torch.arange(n_prefix, n_prefix + len(forced)).unsqueeze(0).expand(rows, -1)
            logits = self.model(input_ids=torch.tensor([forced] * rows), past_key_values=cache, position_ids=pos).logits
        return torch.log_softmax(logits.float(), dim=-1)


def default_system(model_path):
    """The system turn the C engine writes (tokenizer.c, template_default_system):
    the first "<|im_start|>system" + newline + text + "<|im_end|>" literal of
    the GGUF's chat template, escapes decoded; None when there is none."""
    from gguf import GGUFReader
    reader = GGUFReader(model_path)
    f = reader.fields.get("tokenizer.chat_template")
    if f is None:
        return None
    s = bytes(f.parts[f.data[0]]).decode("utf-8")
    opening, closing = "<|im_start|>system", "<|im_end|>"
    at = 0
    while True:
        i = s.find(opening, at)
        if i < 0:
            return None
        at = i + 1
        j = i + len(opening)
        if s[j:j + 1] == "\n":
            j += 1
        elif s[j:j + 2] == "\\n":
            j += 2
        else:
            continue
        out = []
        while j < len(s):
            if s.startswith(closing, j):
                return "".join(out)
            if s[j] in "'\"":
                break
            if s[j] == "\\" and j + 1 < len(s):
                j += 1
                out.append({"n": "\n", "t": "\t"}.get(s[j], s[j]))
            else:
                out.append(s[j])
            j += 1


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def select_per_task(samples, per_task):
    if not per_task:
        return samples
    seen, chosen = {}, []
    for s in samples:
        t = s.get("task", "")
        if seen.get(t, 0) < per_task:
            seen[t] = seen.get(t, 0) + 1
            chosen.append(s)
    return chosen


def c_ids(peer_dump, model, path, flag):
    out = subprocess.run([peer_dump, "--model", model, flag, path, "--ids"], check=True, capture_output=True, text=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def check_ids(name, ours, theirs):
    if list(ours) != list(theirs):
        at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        sys.exit(f"peer_kvpress: {name}: token ids differ from the C engine's at index {at} "
                 f"(ours {ours[at:at + 5]}, C {theirs[at:at + 5]}; lengths {len(ours)} and {len(theirs)})")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at the start"


# ---------------------------------------------------------------- runs
def run_tasks(peer, args, samples, c_prompts):
    settings = args.settings.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    presses = args.presses.split(",") if args.presses else []
    rows = [("full", 1.0)] + [(p, b) for p in presses for b in budgets]
    correct = {(p, b, s): [] for p, b in rows for s in settings}
    replies = {}
    started = time.time()
    for i, sample in enumerate(samples):
        for s in settings:
            aware = s == "aware"
            prefix, suffix = peer.question_prompt(sample["context"], sample["question"], aware)
            check_ids(f"sample {i} ({s}) prefix", prefix, c_prompts[i][s]["prefix"])
            check_ids(f"sample {i} ({s}) suffix", suffix, c_prompts[i][s]["suffix"])
            n = len(prefix)
            replayed = [((p, b), make_press(p, int(b * n), n)) for p, b in rows[1:] if not needs_own_prefill(p)]
            logits, compressed, full = peer.prefill(prefix, replayed)
            compressed[("full", 1.0)] = full
            # one batch per kept count: the full cache, then each budget's presses
            groups = [[("full", 1.0)]] + [[(p, b) for p, b in rows[1:] if b == budget and uniform(p)]
                                          for budget in budgets]
            groups += [[(p, b)] for p, b in rows[1:] if not uniform(p)]
            for group in (g for g in groups if g):
                if needs_own_prefill(group[0][0]):
                    p, b = group[0]
                    first, layers = peer.prefill_with_press(prefix, make_press(p, int(b * n), n))
                    sets = [layers]
                else:
                    first, sets = logits, [compressed[key] for key in group]
                for (p, b), reply in zip(group, peer.answers(sets, n, suffix, first, args.max_tokens)):
                    correct[(p, b, s)].append(int(contains(reply, sample["answer"])))
                    replies[(p, b, s, i)] = reply
            del compressed, full
        print(f"\rsample {i + 1}/{len(samples)}, {time.time() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows, settings, correct, replies


def run_kl(peer, args, budgets, presses):
    import torch
    texts = read_jsonl(args.kl)[: args.kl_limit or None]
    c_texts = c_ids(args.peer_dump, args.model, args.kl, "--texts")
    kl = {(p, b): [] for p in presses for b in budgets}
    agree = {(p, b): [] for p in presses for b in budgets}
    for i, t in enumerate(texts):
        ids = peer.encode(t["text"])
        check_ids(f"KL text {i}", ids, c_texts[i]["ids"])
        P, F = int(t["prefix"]), int(t["forced"])
        if len(ids) < P + F:
            sys.exit(f"peer_kvpress: KL text {i} has {len(ids)} tokens, fewer than prefix + forced = {P + F}")
        prefix, forced = ids[:P], ids[P:P + F]
        replayed = [((p, b), make_press(p, int(b * P), P)) for p in presses for b in budgets if not needs_own_prefill(p)]
        _, compressed, full = peer.prefill(prefix, replayed)
        reference = peer.forced_logprobs([full], P, forced)[0]
        for b in budgets:
            group = [p for p in presses if not needs_own_prefill(p)]
            lps = list(peer.forced_logprobs([compressed[(p, b)] for p in group], P, forced)) if group else []
            lps += [peer.forced_logprobs([peer.prefill_with_press(prefix, make_press(p, int(b * P), P))[1]], P, forced)[0]
                    for p in presses if needs_own_prefill(p)]
            for p, lp in zip(group + [p for p in presses if needs_own_prefill(p)], lps):
                kl[(p, b)].append(float((reference.exp() * (reference - lp)).sum(-1).mean()))
                agree[(p, b)].append(float((reference.argmax(-1) == lp.argmax(-1)).float().mean()))
        print(f"\rKL text {i + 1}/{len(texts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def mean_se(x):
        m = sum(x) / len(x)
        se = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1) / len(x)) if len(x) > 1 else 0.0
        return m, se
    block = {"file": args.kl, "samples": len(texts), "kl": {}, "kl_stderr": {}, "top1": {}, "top1_stderr": {},
             "per_sample_kl": {}}
    for p in presses:
        for key in ("kl", "kl_stderr", "top1", "top1_stderr", "per_sample_kl"):
            block[key][p] = {}
        for b in budgets:
            m, se = mean_se(kl[(p, b)])
            a, ase = mean_se(agree[(p, b)])
            block["kl"][p][f"{b:g}"], block["kl_stderr"][p][f"{b:g}"] = round(m, 5), round(se, 5)
            block["top1"][p][f"{b:g}"], block["top1_stderr"][p][f"{b:g}"] = round(a, 4), round(ase, 4)
            block["per_sample_kl"][p][f"{b:g}"] = [round(v, 5) for v in kl[(p, b)]]
    return block


def check_replay(peer, args, samples):
    """The replay against `with press(model):`, press by press, on sample 0."""
    torch = peer.torch
    prefix, _ = peer.question_prompt(samples[0]["context"], samples[0]["question"], True)
    n = len(prefix)
    budget = float(args.budgets.split(",")[0])
    presses = [p for p in args.presses.split(",") if not needs_own_prefill(p)]
    _, compressed, _ = peer.prefill(prefix, [(p, make_press(p, int(budget * n), n)) for p in presses])
    failures = 0
    for p in presses:
        _, layers = peer.prefill_with_press(prefix, make_press(p, int(budget * n), n))
        same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(layers, compressed[p]))
        close = all(torch.allclose(a[0], b[0]) and torch.allclose(a[1], b[1]) for a, b in zip(layers, compressed[p]))
        print(f"{p:10s} {int(budget * n)} of {n} rows: {'identical' if same else 'close' if close else 'DIFFERENT'}")
        failures += not close
    return failures


def kept_positions(peer, ids, press_name, kept):
    """kvpress's kept positions [layer][kv head], ascending, for a scorer press:
    its own score(), then ScorerPress.compress's top-k (checked against what
    compress() itself keeps)."""
    torch = peer.torch
    from kvpress.utils import compute_n_kept
    n = len(ids)
    press = make_press(press_name, kept, n)
    _, compressed, full = peer.prefill(ids, [("p", press)])
    result = []
    captured = []

    def hook(module, args, kwargs, output):
        cache = kwargs["past_key_values"]
        k, v = cache.layers[module.layer_idx].keys, cache.layers[module.layer_idx].values
        scores = press.score(module, kwargs["hidden_states"], k, v, output[1], kwargs)
        captured.append(scores.topk(compute_n_kept(k.shape[2], press.compression_ratio), dim=-1).indices[0])
        return output
    from transformers import DynamicCache
    hooks = []
    try:
        for layer in peer.language_model.layers:
            hooks.append(layer.self_attn.register_forward_hook(hook, with_kwargs=True))
        with torch.no_grad():
            peer.model(input_ids=torch.tensor([ids]), past_key_values=DynamicCache(), logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    for l, indices in enumerate(captured):
        keys_full = full[l][0][0]
        gathered = torch.stack([keys_full[h][indices[h]] for h in range(indices.shape[0])])
        if not torch.equal(gathered, compressed["p"][l][0][0]):
            sys.exit(f"peer_kvpress: layer {l}: the top-k of score() is not what compress() kept")
        result.append([sorted(int(i) for i in indices[h]) for h in range(indices.shape[0])])
    return result


def compare_kept(peer, args, samples):
    sample = samples[args.kept_sample]
    aware = args.setting == "aware"
    prefix, _ = peer.question_prompt(sample["context"], sample["question"], aware)
    n, kept = len(prefix), int(args.budget * len(prefix))
    ours = kept_positions(peer, prefix, args.compare_press, kept)
    out_c = args.kept_out or "/tmp/peer-kept-kvec.json"
    subprocess.run([args.peer_dump, "--model", args.model, "--tasks", args.tasks_used, "--sample", str(args.kept_sample),
                    "--setting", args.setting, "--policy", args.compare_kvec, "--budget", str(args.budget),
                    "--kept", out_c], check=True)
    theirs = json.load(open(out_c))
    if theirs["n_prefix"] != n:
        sys.exit(f"peer_kvpress: the C prefix has {theirs['n_prefix']} tokens, ours {n}")
    evictable = n - WINDOW
    print(f"sample {args.kept_sample} ({sample.get('task', '?')}, {args.setting}), {n} prefix tokens, {kept} kept per "
          f"KV head: kvpress {args.compare_press} vs kvec {args.compare_kvec}")
    print("layer  head  kept  same  only-kvpress (first 8)            only-kvec (first 8)")
    total_same = total = 0
    per_layer = []
    for l in range(len(ours)):
        row = []
        for h in range(len(ours[l])):
            a, b = set(ours[l][h]), set(theirs["kept"][l][h])
            same = len(a & b)
            total_same += same
            total += len(b)
            row.append(same / max(1, len(b)))
            print(f"{l:5d} {h:5d} {len(a):5d} {same:5d}  {str(sorted(a - b)[:8]):34s} {str(sorted(b - a)[:8])}")
        per_layer.append(row)
    print(f"overlap: {total_same} of {total} kept rows the same ({100.0 * total_same / total:.2f}%); "
          f"{evictable} evictable positions, {kept - WINDOW} free slots per head")
    return {"sample": args.kept_sample, "setting": args.setting, "budget": args.budget, "n_prefix": n, "kept": kept,
            "press": args.compare_press, "kvec_policy": args.compare_kvec, "overlap": total_same / total,
            "overlap_per_layer_head": per_layer, "kvpress_kept": ours, "kvec_kept": theirs["kept"]}


KVEC_OF_PRESS = {"full": "full", "snapkv": "snapkv", "streaming": "streaming", "knorm": "knorm", "tova": "tova",
                 "keydiff": "keydiff", "observed": "h2o", "pyramidkv": "pyramidkv"}


def merge(paths):
    """Runs on disjoint samples (same presses, budgets, settings) as one result."""
    parts = [json.load(open(p)) for p in paths]
    out = {k: parts[0][k] for k in ("model", "max_new_tokens", "implementation", "machine", "threads")}
    out["tasks"] = [p["tasks"] for p in parts]
    out["samples"] = n = sum(p["samples"] for p in parts)
    out["wall_seconds_each"] = [p["wall_seconds"] for p in parts]
    for table in ("results", "stderr", "correct", "per_sample"):
        out[table] = {}
    for press, by_setting in parts[0]["per_sample"].items():
        for setting, by_budget in by_setting.items():
            for budget in by_budget:
                flags = sum((p["per_sample"][press][setting][budget] for p in parts), [])
                acc = sum(flags) / n
                for table, value in (("results", round(acc, 4)), ("stderr", round(stderr_p(acc, n), 4)),
                                     ("correct", sum(flags)), ("per_sample", flags)):
                    out[table].setdefault(press, {}).setdefault(setting, {})[budget] = value
    out["replies"] = {}
    for i, p in enumerate(parts):
        for key, reply in p.get("replies", {}).items():
            press, budget, setting, _ = key.split("|")
            out["replies"][f"{press}|{budget}|{setting}|{i}"] = reply
    return out


def side_by_side(peer, kvec_paths):
    """A markdown table: each press beside its kvec policy, accuracy +- standard
    error, and the samples where the two disagree (kvec_paths: build/quality
    --out files of one sample each, in the order of peer's samples)."""
    kvec = [json.load(open(p)) for p in kvec_paths]
    n = len(kvec)
    if n != peer["samples"]:
        sys.exit(f"peer_kvpress: {n} kvec files for {peer['samples']} kvpress samples")
    lines = ["| kvpress press | kvec policy | budget | setting | kvpress | kvec | samples that differ |",
             "|---|---|---|---|---|---|---|"]
    for press, by_setting in peer["per_sample"].items():
        policy = KVEC_OF_PRESS.get(press)
        for setting, by_budget in by_setting.items():
            for budget, flags in by_budget.items():
                a = sum(flags) / n
                cell_k, differ = "-", "-"
                if policy and policy in kvec[0]["correct"]:
                    theirs = [k["correct"][policy][setting][budget] for k in kvec]
                    b = sum(theirs) / n
                    cell_k = f"{b:.2f} +- {stderr_p(b, n):.2f}"
                    differ = ", ".join(f"{i}" for i in range(n) if flags[i] != theirs[i]) or "none"
                lines.append(f"| {press} | {policy or '-'} | {float(budget):.0%} | {setting} | "
                             f"{a:.2f} +- {stderr_p(a, n):.2f} | {cell_k} | {differ} |")
    if "kvec" in kvec[0]["correct"]:
        for setting, by_budget in kvec[0]["correct"]["kvec"].items():
            for budget in by_budget:
                b = sum(k["correct"]["kvec"][setting][budget] for k in kvec) / n
                lines.append(f"| - | kvec | {float(budget):.0%} | {setting} | - | {b:.2f} +- {stderr_p(b, n):.2f} | - |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--merge":
        # bench/peer_kvpress.py --merge OUT.json A.json B.json ... [--kvec K1.json K2.json ...]
        rest = sys.argv[2:]
        kvec_paths = rest[rest.index("--kvec") + 1:] if "--kvec" in rest else []
        rest = rest[:rest.index("--kvec")] if "--kvec" in rest else rest
        merged = merge(rest[1:])
        with open(rest[0], "w") as f:
            json.dump(merged, f, indent=1)
        if kvec_paths:
            print(side_by_side(merged, kvec_paths))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tasks")
    ap.add_argument("--per-task", type=int, default=0, help="the first K samples of each task (0: all)")
    ap.add_argument("--limit", type=int, default=0, help="the first N samples (after --per-task)")
    ap.add_argument("--subset-out", help="write the chosen samples here (for build/quality --tasks)")
    ap.add_argument("--presses", default=DEFAULT_PRESSES, help="of " + ",".join(PRESS_NAMES))
    ap.add_argument("--budgets", default="0.1,0.25,0.5")
    ap.add_argument("--settings", default="agnostic,aware")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--kl", help="JSON lines {text, prefix, forced}")
    ap.add_argument("--kl-limit", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-dump", default="build/peer_dump")
    ap.add_argument("--check-replay", action="store_true")
    ap.add_argument("--kept-sample", type=int)
    ap.add_argument("--setting", default="aware")
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--compare-press", default="snapkv")
    ap.add_argument("--compare-kvec", default="snapkv")
    ap.add_argument("--kept-out")
    args = ap.parse_args()
    require_packages()
    if not os.path.isfile(args.peer_dump):
        sys.exit(f"peer_kvpress: {args.peer_dump} is missing (make build/peer_dump)")
    for b in args.budgets.split(","):
        if not 0 < float(b) < 1:
            sys.exit("peer_kvpress: budgets are fractions in (0, 1)")
    for p in (args.presses.split(",") if args.presses else []):
        if p not in PRESS_NAMES:
            sys.exit(f"peer_kvpress: unknown press {p} ({', '.join(PRESS_NAMES)})")
    for s in args.settings.split(","):
        if s not in ("agnostic", "aware"):
            sys.exit(f"peer_kvpress: unknown setting {s} (agnostic, aware)")

    started = time.time()
    where = machine()
    peer = Peer(args.model, args.threads)
    import kvpress, torch, transformers
    versions = f"kvpress {getattr(kvpress, '__version__', '0.5.5?')}, transformers {transformers.__version__}, torch {torch.__version__}"
    try:
        from importlib.metadata import version
        versions = (f"kvpress {version('kvpress')}, transformers {version('transformers')}, torch {version('torch')}, "
                    f"gguf {version('gguf')}")
    except Exception:
        pass
    samples = []
    if args.tasks:
        samples = select_per_task(read_jsonl(args.tasks), args.per_task)
        if args.limit:
            samples = samples[: args.limit]
        # the C side reads the chosen samples from a file of their own
        args.tasks_used = args.subset_out or args.tasks
        if args.subset_out:
            with open(args.subset_out, "w", encoding="utf-8") as f:
                for s in samples:
                    f.write(json.dumps(s, ensure_ascii=False) + "\n")
        elif args.per_task or args.limit:
            args.tasks_used = None

    if args.check_replay:
        sys.exit(1 if check_replay(peer, args, samples) else 0)
    if args.kept_sample is not None:
        if not args.tasks_used:
            sys.exit("peer_kvpress: --kept-sample with --per-task/--limit needs --subset-out")
        result = compare_kept(peer, args, samples)
        if args.out:
            json.dump(result, open(args.out, "w"))
        return

    result = {"model": os.path.basename(args.model), "tasks": args.subset_out or args.tasks, "samples": len(samples),
              "max_new_tokens": args.max_tokens, "implementation": "NVIDIA kvpress (" + versions + "), CPU fp32, eager attention",
              "machine": where, "threads": args.threads}
    if samples:
        c_prompts_raw = c_ids(args.peer_dump, args.model, args.tasks_used or args.tasks, "--tasks")
        if not args.tasks_used:  # map the chosen samples back to their lines
            everything = read_jsonl(args.tasks)
            index = [everything.index(s) for s in samples]
            c_prompts_raw = [c_prompts_raw[i] for i in index]
        rows, settings, correct, replies = run_tasks(peer, args, samples, c_prompts_raw)
        n = len(samples)
        for table in ("results", "stderr", "correct", "per_sample"):
            result[table] = {}
        print(f"\nkvpress on {result['model']}, {n} samples of {result['tasks']}; greedy, at most {args.max_tokens} new tokens")
        print(f"{'press':12s} {'budget':>7s}   " + "   ".join(f"{s:16s}" for s in settings))
        for p, b in rows:
            key = "1.0" if p == "full" else f"{b:g}"
            line = f"{p:12s} {100 * b:6.0f}%"
            for s in settings:
                c = sum(correct[(p, b, s)])
                acc = c / n
                for table, value in (("results", round(acc, 4)), ("stderr", round(stderr_p(acc, n), 4)), ("correct", c),
                                     ("per_sample", correct[(p, b, s)])):
                    result[table].setdefault(p, {}).setdefault(s, {})[key] = value
                line += f"   {acc:.2f} +- {stderr_p(acc, n):.2f}    "
            print(line)
        result["replies"] = {f"{p}|{b:g}|{s}|{i}": r for (p, b, s, i), r in replies.items()}
    if args.kl:
        budgets = [float(b) for b in args.budgets.split(",")]
        presses = args.presses.split(",")
        result["kl"] = run_kl(peer, args, budgets, presses)
        print(f"\nKL(full || compressed), nats, and top-1 agreement over {result['kl']['samples']} texts of {args.kl}")
        for p in presses:
            for b in budgets:
                k = f"{b:g}"
                print(f"{p:12s} {100 * b:6.0f}%   KL {result['kl']['kl'][p][k]:.4f} +- {result['kl']['kl_stderr'][p][k]:.4f}"
                      f"   top-1 {result['kl']['top1'][p][k]:.3f} +- {result['kl']['top1_stderr'][p][k]:.3f}")
    result["wall_seconds"] = round(time.time() - started, 1)
    print(f"\nwall time {result['wall_seconds']:.1f} s on {where}; {versions}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"results in {args.out}")


if __name__ == "__main__":
    main()
