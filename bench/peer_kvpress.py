#!/usr/bin/env python3
"""peer_kvpress.py - NVIDIA kvpress's presses on the samples build/quality reads.

    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl [--per-task K]
        [--presses snapkv,streaming,...] [--budgets 0.1,0.25,0.5] [--settings agnostic,aware]
        [--kl FILE.jsonl] [--kl-limit N] [--out RESULT.json] [--subset-out FILE.jsonl]
    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl --kept-sample I
        --setting aware --budget 0.5 --compare-kvec snapkv   (kept positions, kvpress vs kvec)
    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl --check-replay
    python3 bench/peer_kvpress.py --model FILE.gguf --tasks FILE.jsonl --presses kvzip,expected,keydiff
        --settings agnostic --per-sample --out RESULT.json   (KVzipPress: see below)

The GGUF is loaded in Hugging Face transformers (gguf_file=, dequantised to
fp32, CPU, eager attention so that ObservedAttentionPress sees the attention
weights). Each sample's prompt is the one build/quality --tasks builds
(TEXT_INSTRUCTION and the context in the model's chat template, the split
between what is compressed and what is read after it), and kvpress runs on
the C engine's own ids for it, from `build/peer_dump --ids` (KL texts:
`--texts --ids`). The script also rebuilds each prompt with the transformers
tokenizer and reports how many differ from the engine's (a diagnostic
only): transformers' GGUF tokenizer lacks the model's digit split (GGUF
tokenizer.ggml.pre "smollm"), so a run of white space before a digit
comes out as other tokens than in the engine and in llama.cpp.

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

KVzipPress (--presses ...,kvzip) runs as `with press(model):` around its own
prefill, with three things set around it: the tokenizer it would fetch from
the Hub (AutoTokenizer.from_pretrained(name_or_path)) is the GGUF tokenizer
already loaded; the context it repeats starts after the engine's first
"<|im_start|>user\n" (its prefix_length, taken from the engine's ids; the
length kvpress derives from the chat template is checked against it); and
the model runs with sdpa attention for it, because KVzipPress evicts by
masking (module.masked_key_indices, which kvpress's attention patch turns
into keys of zero weight in the sdpa function, not in eager attention).
Scores do not depend on the budget, so one repeat pass per prompt serves
every budget: the press's own compress_post() selects for each. Its rows
decode with sdpa and the masks; --check-replay with kvzip in --presses
checks that selecting several budgets from one pass equals one press per
budget, and that the masked keys are ignored (the logits equal those of a
cache that drops the same keys in eager attention).

Budgets. kvec keeps floor(f * N) rows per KV head of an N-token prefix, the
last 32 (the observation window) always among them. kvpress keeps
max(1, int(N * (1 - compression_ratio))) rows; the script sets
compression_ratio = 1 - (floor(f * N) + 0.5) / N for each sample, which makes
that exactly floor(f * N). KVzipPress selects over the whole model
(layerwise=False): the script sets its ratio so that it keeps
L * Hk * floor(f * N) rows in all, the count kvec's `kvzip` policy keeps
(KVEC_BUDGET_GLOBAL). SnapKVPress runs with window_size 32 and
kernel_size 5 (kvec's defaults; kvpress's default window is 64).

Settings as build/quality: question-agnostic (the context is prefilled and
compressed, then the question is read), question-aware (context and question
prefilled together and compressed; the first answer token comes from the
prefill's own logits). Greedy, at most --max-tokens (32) new tokens, stopping
at <|im_end|> or EOS; correct when the answer contains the expected string,
ignoring ASCII case.

KL: a JSON-lines file of {"text", "prefix": P, "forced": F}; the text's
ids are the engine's raw encoding (no template), the first P prefilled and
compressed,
the next F fed (teacher forcing). At each of the F fed positions the
next-token distribution of the compressed cache is compared with the full
cache's: KL(full || compressed) in nats, and whether the two argmaxes agree;
mean per sample, then mean and standard error over samples.

Output: the shape of build/quality --out ({"results": {press: {setting:
{budget: accuracy}}}, "stderr", "correct", "samples", "wall_seconds"}), plus
"per_sample" (which samples each row answered), "sample_indices" (their
lines in --tasks, 0-based), "tokenization", "kl" and the machine; --out is
rewritten after every sample ("complete": false until the end), and
--per-sample prints build/quality's `per-sample N SETTING PRESS BUDGET 0|1`
lines. Paired against build/quality --per-sample output on the same samples:

    python3 bench/peer_kvpress.py --paired KVPRESS.json KVEC.txt [PRESS=POLICY,...]
"""
import argparse
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
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
        raise ValueError("KVzipPress runs through Peer.kvzip (one budget over the whole model)")
    raise SystemExit(f"peer_kvpress: unknown press {name} ({', '.join(PRESS_NAMES)})")


# Presses whose hook is not BasePress.forward_hook (KVzip re-reads the
# context with extra forward passes) run through `with press(model):` with a
# prefill of their own (Peer.kvzip), one for every budget.
def needs_own_prefill(name):
    return name == "kvzip"


def uniform(name):
    """Whether the press keeps the same count in every layer and head, so
    that its caches batch with the other presses' at the same budget."""
    return name != "pyramidkv" and not needs_own_prefill(name)


# What KVzipPress tokenizes itself (kvzip_press.py): the chat template's end
# of the user turn and start of the reply, and its two repeat prompts. The
# script checks that the GGUF tokenizer it is given encodes them as the
# engine does, and finds the repeated context after the engine's ids of the
# user turn's opening.
KVZIP_USER_OPENING = "<|im_start|>user\n"
KVZIP_TEXTS = ["<|im_end|>\n<|im_start|>assistant\n", "\n\nRepeat the previous context exactly.",
               "\n\nRepeat the part of the previous context exactly, starting with"]


def find_after(ids, pattern):
    """The index after the first occurrence of pattern in ids; 0 when none."""
    for i in range(len(ids) - len(pattern) + 1):
        if ids[i:i + len(pattern)] == pattern:
            return i + len(pattern)
    return 0


@contextlib.contextmanager
def loaded_tokenizer(tokenizer):
    """KVzipPress calls AutoTokenizer.from_pretrained(model.config.name_or_path),
    which needs the Hub; inside this block it gets the tokenizer already loaded."""
    from kvpress.presses import kvzip_press

    class Loaded:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return tokenizer
    original = kvzip_press.AutoTokenizer
    kvzip_press.AutoTokenizer = Loaded
    try:
        yield
    finally:
        kvzip_press.AutoTokenizer = original


_KVZIP = None


def kvzip_class():
    """KVzipPress with two changes around it, nothing inside its scoring:
    the context to repeat starts at `header` (the engine's ids) instead of
    the length the press derives from the chat template (that length is kept
    in derived_prefix_length), and compress_post, the press's own selection,
    runs once for each ratio in `ratios` on the same scores, keeping each
    one's masked_key_indices in `masks`."""
    global _KVZIP
    if _KVZIP is None:
        import kvpress

        class EngineKVzip(kvpress.KVzipPress):
            header = None
            ratios = {}

            def prepare(self, model, tokenizer, prev_postfix_size=8):
                self.derived_prefix_length = self.prefix_length
                self.derived_suffix_ids = self._suffix_ids[0].tolist()
                if self.header is not None:
                    self.prefix_length = self.header
                return super().prepare(model, tokenizer, prev_postfix_size)

            def compress_post(self, model):
                scores, ratio = self.score_val.clone(), self.compression_ratio
                self.masks = {}
                try:
                    for key, r in self.ratios.items():
                        self.score_val, self.compression_ratio = scores.clone(), r
                        super().compress_post(model)
                        self.masks[key] = [layer.self_attn.masked_key_indices for layer in model.model.layers]
                finally:
                    self.score_val, self.compression_ratio = scores, ratio
                    for layer in model.model.layers:
                        layer.self_attn.masked_key_indices = None
        _KVZIP = EngineKVzip
    return _KVZIP


def kvzip_ratio(n_layers, n_kv_heads, n, kept):
    """The compression_ratio at which KVzipPress (layerwise=False) prunes
    int(L * Hk * N * ratio) = L * Hk * (N - kept) entries, keeping L * Hk * kept."""
    total = n_layers * n_kv_heads * n
    pruned = n_layers * n_kv_heads * (n - kept)
    ratio = (pruned + 0.5) / total
    if int(total * ratio) != pruned:
        raise ValueError(f"no ratio prunes exactly {pruned} of {total}")
    return ratio


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
        import logging
        logging.getLogger("kvpress").setLevel(logging.ERROR)  # KVzipPress's warning about its cost, per press
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
        self.n_kv_heads = self.model.config.num_key_value_heads
        self.kvzip_opening = None  # the engine's ids of KVZIP_USER_OPENING (set_engine_texts)
        self.kvzip_derived = None  # what KVzipPress derived from the chat template, last run

    def set_engine_texts(self, engine):
        """engine: the engine's ids of [KVZIP_USER_OPENING] + KVZIP_TEXTS. The
        tokenizer KVzipPress is given must encode its own texts the same way."""
        self.kvzip_opening = engine[0]
        for text, ids in zip(KVZIP_TEXTS, engine[1:]):
            ours = self.encode(text)
            if ours != ids:
                sys.exit(f"peer_kvpress: the GGUF tokenizer encodes KVzipPress's text {text!r} as {ours}, "
                         f"the engine as {ids}")

    @contextlib.contextmanager
    def attention(self, name):
        """The model's attention implementation set to name inside the block."""
        before = self.model.config._attn_implementation
        self.model.set_attn_implementation(name)
        if self.model.config._attn_implementation != name:
            sys.exit(f"peer_kvpress: transformers would not switch the attention to {name}")
        try:
            yield
        finally:
            self.model.set_attn_implementation(before)

    @contextlib.contextmanager
    def masked(self, masks):
        """Decoding with KVzipPress's masks: masked_key_indices on each
        attention layer and sdpa attention (kvpress's patch masks there)."""
        if masks is None:
            yield
            return
        modules = [layer.self_attn for layer in self.language_model.layers]
        try:
            with self.attention("sdpa"):
                for module, indices in zip(modules, masks):
                    module.masked_key_indices = indices
                yield
        finally:
            for module in modules:
                module.masked_key_indices = None

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

    def kvzip(self, ids, kept_by_key):
        """KVzipPress on ids: its own prefill (sdpa) and repeat pass, then its
        selection at each kept count per KV head in kept_by_key ({key: kept}),
        as one budget over the whole model. Returns (the cache [(K, V)] per
        layer, full size: KVzipPress masks, it does not drop; {key: masks},
        what the press derived from the chat template)."""
        torch = self.torch
        from transformers import DynamicCache
        n = len(ids)
        ratios = {key: kvzip_ratio(self.n_layers, self.n_kv_heads, n, kept) for key, kept in kept_by_key.items()}
        press = kvzip_class()(compression_ratio=max(ratios.values()))
        press.ratios = ratios
        if self.kvzip_opening is None:
            raise ValueError("set_engine_texts first")
        press.header = find_after(list(ids), self.kvzip_opening)
        cache = DynamicCache()
        with loaded_tokenizer(self.tokenizer), self.attention("sdpa"), torch.no_grad(), press(self.model):
            self.model(input_ids=torch.tensor([ids]), past_key_values=cache, logits_to_keep=1)
        layers = [(cache.layers[l].keys, cache.layers[l].values) for l in range(self.n_layers)]
        for key, kept in kept_by_key.items():
            pruned = sum(len(m[2]) for m in press.masks[key])
            if pruned != self.n_layers * self.n_kv_heads * (n - kept):
                raise ValueError(f"KVzipPress masked {pruned} entries, not L * Hk * (N - kept)")
        derived = {"prefix_length": press.derived_prefix_length, "header": press.header,
                   "suffix_ids": press.derived_suffix_ids}
        self.kvzip_derived = derived
        return layers, press.masks, derived

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

    def answers(self, layer_sets, n_prefix, suffix, first_logits, max_new, masks=None):
        """Greedy replies, one per (compressed) cache of an n_prefix-token
        prefix, decoded as one batch (the rows never see each other); new
        tokens take positions n_prefix, n_prefix + 1, ... whatever the cache
        holds (kept keys keep their RoPE positions), as kvpress's pipeline
        does. masks: KVzipPress's, for a single cache."""
        torch = self.torch
        rows = len(layer_sets)
        cache = self.cache_of(layer_sets)
        position = n_prefix
        generated = [[] for _ in range(rows)]
        done = [False] * rows
        with torch.no_grad(), self.masked(masks):
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

    def forced_logprobs(self, layer_sets, n_prefix, forced, masks=None):
        """Log-probabilities [caches, F, vocab] at the F teacher-forced positions."""
        torch = self.torch
        rows = len(layer_sets)
        cache = self.cache_of(layer_sets)
        with torch.no_grad(), self.masked(masks):
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
    """The indices of the first per_task samples of each task (0: all)."""
    if not per_task:
        return list(range(len(samples)))
    seen, chosen = {}, []
    for i, s in enumerate(samples):
        t = s.get("task", "")
        if seen.get(t, 0) < per_task:
            seen[t] = seen.get(t, 0) + 1
            chosen.append(i)
    return chosen


def c_ids(peer_dump, model, path, flag):
    out = subprocess.run([peer_dump, "--model", model, flag, path, "--ids"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"peer_kvpress: {peer_dump} {flag} {path} --ids failed: {out.stderr.strip()}")
    return [json.loads(line) for line in out.stdout.splitlines()]


def first_difference(ours, theirs):
    """None when equal, else (index, ours[index:index + 5], theirs[index:index + 5])."""
    if list(ours) == list(theirs):
        return None
    at = next((i for i, (x, y) in enumerate(zip(ours, theirs)) if x != y), min(len(ours), len(theirs)))
    return at, list(ours[at:at + 5]), list(theirs[at:at + 5])


def engine_texts(peer_dump, model, texts):
    """The engine's raw ids (special tokens parsed, no BOS) of each text."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8", delete=False) as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
        path = f.name
    try:
        return [line["ids"] for line in c_ids(peer_dump, model, path, "--texts")]
    finally:
        os.unlink(path)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, load average {os.getloadavg()[0]:.1f} at the start"


# ---------------------------------------------------------------- runs
def run_tasks(peer, args, samples, c_prompts, on_sample=None):
    """Every row on every sample, on the engine's ids. on_sample(done, correct,
    replies, differ) after each sample."""
    settings = args.settings.split(",")
    budgets = [float(b) for b in args.budgets.split(",")]
    presses = args.presses.split(",") if args.presses else []
    rows = [("full", 1.0)] + [(p, b) for p in presses for b in budgets]
    correct = {(p, b, s): [] for p, b in rows for s in settings}
    replies = {}
    differ = []  # (sample, setting, part, first difference) where transformers' ids are not the engine's
    kvzip_checked = False
    started = time.time()
    for i, sample in enumerate(samples):
        for s in settings:
            aware = s == "aware"
            prefix, suffix = c_prompts[i][s]["prefix"], c_prompts[i][s]["suffix"]
            ours = peer.question_prompt(sample["context"], sample["question"], aware)
            for part, a, b in (("prefix", ours[0], prefix), ("suffix", ours[1], suffix)):
                d = first_difference(a, b)
                if d:
                    differ.append({"sample": i, "setting": s, "part": part, "index": d[0], "transformers": d[1],
                                   "engine": d[2], "lengths": [len(a), len(b)]})
            n = len(prefix)
            replayed = [((p, b), make_press(p, int(b * n), n)) for p, b in rows[1:] if not needs_own_prefill(p)]
            logits, compressed, full = peer.prefill(prefix, replayed)
            compressed[("full", 1.0)] = full
            # one batch per kept count: the full cache, then each budget's presses
            groups = [[("full", 1.0)]] + [[(p, b) for p, b in rows[1:] if b == budget and uniform(p)]
                                          for budget in budgets]
            groups += [[(p, b)] for p, b in rows[1:] if not uniform(p) and not needs_own_prefill(p)]
            for group in (g for g in groups if g):
                sets = [compressed[key] for key in group]
                for (p, b), reply in zip(group, peer.answers(sets, n, suffix, logits, args.max_tokens)):
                    correct[(p, b, s)].append(int(contains(reply, sample["answer"])))
                    replies[(p, b, s, i)] = reply
            del compressed, full
            if "kvzip" in presses:
                layers, masks, derived = peer.kvzip(prefix, {b: int(b * n) for b in budgets})
                if not kvzip_checked:
                    # what KVzipPress takes from the chat template, against the engine's prompt
                    tail = list(suffix if suffix else prefix)[-len(derived["suffix_ids"]):]
                    if tail != derived["suffix_ids"]:
                        sys.exit(f"peer_kvpress: KVzipPress's chat-template suffix {derived['suffix_ids']} is not "
                                 f"the end of the engine's prompt {tail}")
                    print(f"KVzipPress: the chat template's header is {derived['prefix_length']} tokens, the engine's "
                          f"prompt repeats from index {derived['header']}"
                          + ("" if derived["prefix_length"] == derived["header"] else " (the engine's is used)"),
                          file=sys.stderr)
                    kvzip_checked = True
                for b in budgets:
                    reply = peer.answers([layers], n, suffix, logits, args.max_tokens, masks=masks[b])[0]
                    correct[("kvzip", b, s)].append(int(contains(reply, sample["answer"])))
                    replies[("kvzip", b, s, i)] = reply
                del layers, masks
        if on_sample:
            on_sample(i + 1, correct, replies, differ)
        print(f"\rsample {i + 1}/{len(samples)}, {time.time() - started:.0f} s", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return rows, settings, correct, replies, differ


def run_kl(peer, args, budgets, presses):
    import torch
    texts = read_jsonl(args.kl)[: args.kl_limit or None]
    c_texts = c_ids(args.peer_dump, args.model, args.kl, "--texts")
    kl = {(p, b): [] for p in presses for b in budgets}
    agree = {(p, b): [] for p in presses for b in budgets}
    differ = 0
    for i, t in enumerate(texts):
        ids = c_texts[i]["ids"]
        differ += first_difference(peer.encode(t["text"]), ids) is not None
        P, F = int(t["prefix"]), int(t["forced"])
        if len(ids) < P + F:
            sys.exit(f"peer_kvpress: KL text {i} has {len(ids)} tokens, fewer than prefix + forced = {P + F}")
        prefix, forced = ids[:P], ids[P:P + F]
        replayed = [((p, b), make_press(p, int(b * P), P)) for p in presses for b in budgets if not needs_own_prefill(p)]
        _, compressed, full = peer.prefill(prefix, replayed)
        reference = peer.forced_logprobs([full], P, forced)[0]
        group = [p for p in presses if not needs_own_prefill(p)]
        if "kvzip" in presses:
            layers, masks, _ = peer.kvzip(prefix, {b: int(b * P) for b in budgets})
        for b in budgets:
            lps = list(peer.forced_logprobs([compressed[(p, b)] for p in group], P, forced)) if group else []
            if "kvzip" in presses:
                lps.append(peer.forced_logprobs([layers], P, forced, masks=masks[b])[0])
            for p, lp in zip(group + (["kvzip"] if "kvzip" in presses else []), lps):
                kl[(p, b)].append(float((reference.exp() * (reference - lp)).sum(-1).mean()))
                agree[(p, b)].append(float((reference.argmax(-1) == lp.argmax(-1)).float().mean()))
        print(f"\rKL text {i + 1}/{len(texts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    def mean_se(x):
        m = sum(x) / len(x)
        se = math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1) / len(x)) if len(x) > 1 else 0.0
        return m, se
    block = {"file": args.kl, "samples": len(texts), "kl": {}, "kl_stderr": {}, "top1": {}, "top1_stderr": {},
             "per_sample_kl": {}, "transformers_ids_differ": differ}
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


def check_replay(peer, args, samples, c_prompts):
    """The replay against `with press(model):`, press by press, on sample 0
    (question-aware prefix, the engine's ids); with kvzip in --presses, the
    checks of Peer.kvzip (check_kvzip)."""
    torch = peer.torch
    prefix = c_prompts[0]["aware"]["prefix"]
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
    if "kvzip" in args.presses.split(","):
        failures += check_kvzip(peer, prefix, [float(b) for b in args.budgets.split(",")])
    return failures


def hard_masks(peer, masks):
    """Forward pre-hooks that give each attention layer (eager) an attention
    mask which also hides KVzipPress's masked (KV head, position) pairs: the
    same eviction, as keys that no query can see."""
    torch = peer.torch
    groups = peer.model.config.num_attention_heads // peer.n_kv_heads
    hooks = []

    def make(indices):
        def hook(module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None:
                raise ValueError("eager attention without a mask")
            bsz, _, q, k = mask.shape
            mask = mask.expand(bsz, groups * peer.n_kv_heads, q, k).clone()
            batch, heads, positions = indices
            for j in range(groups):
                mask[batch, heads * groups + j, :, positions] = torch.finfo(mask.dtype).min
            kwargs["attention_mask"] = mask
            return args, kwargs
        return hook
    for layer, indices in zip(peer.language_model.layers, masks):
        hooks.append(layer.self_attn.register_forward_pre_hook(make(indices), with_kwargs=True))
    return hooks


def check_kvzip(peer, prefix, budgets):
    """KVzipPress as Peer.kvzip runs it: (1) its selection at several budgets
    from one repeat pass equals a plain KVzipPress per budget (when the
    header the press derives from the chat template is the engine's); (2)
    decoding ignores the masked keys: the log-probabilities of a few forced
    tokens with the masks (sdpa, kvpress's patch) equal those of eager
    attention with the same keys hidden by the attention mask, and at the
    smallest budget differ from the full cache's."""
    import kvpress
    from transformers import DynamicCache
    torch = peer.torch
    n = len(prefix)
    failures = 0
    layers, masks, derived = peer.kvzip(prefix, {b: int(b * n) for b in budgets})
    print(f"kvzip      the chat template's header: {derived['prefix_length']} tokens; the engine's prompt repeats "
          f"from index {derived['header']}; suffix ids {derived['suffix_ids']}")
    if derived["prefix_length"] != derived["header"]:
        print("kvzip      the headers differ: the plain press repeats from elsewhere, (1) not comparable")
    else:
        for b in budgets:
            press = kvpress.KVzipPress(compression_ratio=kvzip_ratio(peer.n_layers, peer.n_kv_heads, n, int(b * n)))
            with loaded_tokenizer(peer.tokenizer), peer.attention("sdpa"), torch.no_grad(), press(peer.model):
                peer.model(input_ids=torch.tensor([prefix]), past_key_values=DynamicCache(), logits_to_keep=1)
            plain = [layer.self_attn.masked_key_indices for layer in peer.language_model.layers]
            for layer in peer.language_model.layers:
                layer.self_attn.masked_key_indices = None

            def pairs(m):
                return sorted(zip(m[1].tolist(), m[2].tolist()))
            same = all(pairs(a) == pairs(b_) for a, b_ in zip(plain, masks[b]))
            print(f"kvzip      {b:g}: {sum(len(m[2]) for m in masks[b])} of {peer.n_layers * peer.n_kv_heads * n} "
                  f"entries masked; one pass for every budget against a press per budget: "
                  f"{'the same' if same else 'DIFFERENT'}")
            failures += not same
    forced = prefix[-16:]  # any tokens read after the prefix serve
    b = min(budgets)
    with peer.attention("sdpa"):
        full = peer.forced_logprobs([layers], n, forced)[0]
    masked = peer.forced_logprobs([layers], n, forced, masks=masks[b])[0]
    hooks = hard_masks(peer, masks[b])
    try:
        hidden = peer.forced_logprobs([layers], n, forced)[0]  # eager, the model's attention
    finally:
        for h in hooks:
            h.remove()
    to_hidden = float((masked - hidden).abs().max())
    to_full = float((masked - full).abs().max())
    ok = to_hidden < 1e-3 and to_full > 1e-2
    print(f"kvzip      {b:g}, 16 forced tokens: max |log p| difference, masks against hidden keys {to_hidden:.2e}, "
          f"masks against the full cache {to_full:.2e}: {'masked keys ignored' if ok else 'FAILED'}")
    return failures + (not ok)


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


def compare_kept(peer, args, samples, c_prompts):
    sample = samples[args.kept_sample]
    prefix = c_prompts[args.kept_sample][args.setting]["prefix"]
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


def read_per_sample(path):
    """build/quality --per-sample output (or this script's): the task file its
    first line names, and {(policy, setting, budget): {N: 0|1}}."""
    tasks, flags = None, {}
    with open(path, encoding="utf-8", newline="") as f:
        # build/quality's progress line (stderr) inside a capture of both
        # streams is taken out, as bench/paired.py does
        text = re.sub(r"\rsample (\d+)/\1, \d+ s, about \d+ s left \n", "", f.read())
        text = re.sub(r"\rsample \d+/\d+, \d+ s, about \d+ s left ", "", text)
        for line in text.split("\n"):
            if tasks is None and " samples of " in line:
                tasks = line.split(" samples of ", 1)[1].split(";", 1)[0].strip()
            words = line.split()
            if len(words) == 6 and words[0] == "per-sample":
                try:
                    n, budget, ok = int(words[1]), float(words[4]), int(words[5])
                except ValueError:
                    sys.exit(f"peer_kvpress: {path}: a bad per-sample line: {line.strip()}")
                flags.setdefault((words[3], words[2], f"{budget:g}"), {})[n] = ok
    if not flags:
        sys.exit(f"peer_kvpress: {path} has no `per-sample N SETTING POLICY BUDGET 0|1` lines (build/quality --per-sample)")
    return tasks, flags


PAIRS = "full=full,kvzip=kvzip,keydiff=keydiff,expected=expected,snapkv=snapkv,streaming=streaming,knorm=knorm,tova=tova,observed=h2o"


def paired(peer_path, kvec_path, pairs=PAIRS):
    """A markdown table: each kvpress row beside its kvec policy on the same
    samples (accuracy +- standard error), the paired difference kvec minus
    kvpress (mean +- standard error of the per-sample differences) and how
    many samples differ; then kvec's other policies on those samples."""
    peer = json.load(open(peer_path))
    tasks, kvec = read_per_sample(kvec_path)
    if tasks and os.path.normpath(tasks) != os.path.normpath(peer["tasks"]):
        sys.exit(f"peer_kvpress: {peer_path} ran {peer['tasks']}, {kvec_path} {tasks}: not the same samples")
    numbers = [i + 1 for i in peer.get("sample_indices", range(peer["samples"]))][: peer["samples"]]
    n = len(numbers)
    try:
        mapping = dict(pair.split("=", 1) for pair in pairs.split(","))
    except ValueError:
        sys.exit(f"peer_kvpress: pairs are PRESS=POLICY,... (not {pairs})")

    def cell(flags):
        a = sum(flags) / n
        return f"{a:.2f} +- {stderr_p(a, n):.2f}"

    def theirs(policy, setting, budget):
        got = kvec.get((policy, setting, f"{float(budget):g}"))
        if got is None:
            return None
        missing = [m for m in numbers if m not in got]
        if missing:
            sys.exit(f"peer_kvpress: {kvec_path} has no {policy} {setting} {budget} line for samples {missing[:5]}...")
        return [got[m] for m in numbers]
    lines = [f"{n} samples of {peer['tasks']} (lines {numbers[0]} to {numbers[-1]})", "",
             "| kvpress press | kvec policy | budget | setting | kvpress | kvec | kvec - kvpress (paired) | samples that differ |",
             "|---|---|---|---|---|---|---|---|"]
    used = set()
    for press, by_setting in peer["per_sample"].items():
        policy = mapping.get(press)
        for setting, by_budget in by_setting.items():
            for budget, flags in by_budget.items():
                flags = flags[:n]
                other = theirs(policy, setting, budget) if policy else None
                budget_text = f"{float(budget):.0%}"
                if other is None:
                    lines.append(f"| {press} | - | {budget_text} | {setting} | {cell(flags)} | - | - | - |")
                    continue
                used.add((policy, setting, f"{float(budget):g}"))
                d = [b - a for a, b in zip(flags, other)]
                m = sum(d) / n
                se = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1) / n) if n > 1 else 0.0
                lines.append(f"| {press} | {policy} | {budget_text} | {setting} | {cell(flags)} | {cell(other)} | "
                             f"{m:+.2f} +- {se:.2f} | {sum(x != 0 for x in d)} |")
    for key in sorted(k for k in kvec if k not in used and k[1] in {s for b in peer["per_sample"].values() for s in b}):
        policy, setting, budget = key
        lines.append(f"| - | {policy} | {float(budget):.0%} | {setting} | - | {cell(theirs(*key))} | - | - |")
    return "\n".join(lines)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--paired":
        # bench/peer_kvpress.py --paired KVPRESS.json KVEC.txt [PRESS=POLICY,...]
        if len(sys.argv) not in (4, 5):
            sys.exit("usage: peer_kvpress.py --paired KVPRESS.json KVEC.txt [PRESS=POLICY,...]")
        print(paired(*sys.argv[2:]))
        return
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
    ap.add_argument("--per-sample", action="store_true", help="print `per-sample N SETTING PRESS BUDGET 0|1` lines")
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
    samples, c_prompts, indices = [], [], []
    if args.tasks:
        everything = read_jsonl(args.tasks)
        indices = select_per_task(everything, args.per_task)
        if args.limit:
            indices = indices[: args.limit]
        samples = [everything[i] for i in indices]
        # the C side reads the chosen samples from a file of their own
        args.tasks_used = args.subset_out or args.tasks
        if args.subset_out:
            with open(args.subset_out, "w", encoding="utf-8") as f:
                for s in samples:
                    f.write(json.dumps(s, ensure_ascii=False) + "\n")
        elif args.per_task or args.limit:
            args.tasks_used = None
        c_all = c_ids(args.peer_dump, args.model, args.tasks, "--tasks")
        if len(c_all) != len(everything):
            sys.exit(f"peer_kvpress: build/peer_dump read {len(c_all)} samples of {args.tasks}, this script {len(everything)}")
        c_prompts = [c_all[i] for i in indices]
    if "kvzip" in args.presses.split(","):
        peer.set_engine_texts(engine_texts(args.peer_dump, args.model, [KVZIP_USER_OPENING] + KVZIP_TEXTS))
    if (args.check_replay or args.kept_sample is not None) and not samples:
        sys.exit("peer_kvpress: --check-replay and --kept-sample need --tasks")

    if args.check_replay:
        sys.exit(1 if check_replay(peer, args, samples, c_prompts) else 0)
    if args.kept_sample is not None:
        if not args.tasks_used:
            sys.exit("peer_kvpress: --kept-sample with --per-task/--limit needs --subset-out")
        if not 0 <= args.kept_sample < len(samples):
            sys.exit(f"peer_kvpress: --kept-sample {args.kept_sample} is not among the {len(samples)} samples")
        result = compare_kept(peer, args, samples, c_prompts)
        if args.out:
            json.dump(result, open(args.out, "w"))
        return

    attention = "eager attention" + ("; KVzipPress with sdpa attention (its masks need it)"
                                     if "kvzip" in args.presses.split(",") else "")
    result = {"model": os.path.basename(args.model), "tasks": args.subset_out or args.tasks, "samples": len(samples),
              "sample_indices": indices, "max_new_tokens": args.max_tokens,
              "implementation": "NVIDIA kvpress (" + versions + "), CPU fp32, " + attention,
              "machine": where, "threads": args.threads}
    if samples:
        def tabulate(done, correct, replies, differ):
            """result's tables over the first `done` samples; --out rewritten."""
            for table in ("results", "stderr", "correct", "per_sample"):
                result[table] = {}
            for (p, b, s), flags in correct.items():
                key = "1.0" if p == "full" else f"{b:g}"
                acc = sum(flags) / done
                for table, value in (("results", round(acc, 4)), ("stderr", round(stderr_p(acc, done), 4)),
                                     ("correct", sum(flags)), ("per_sample", list(flags))):
                    result[table].setdefault(p, {}).setdefault(s, {})[key] = value
            result["samples"] = done
            result["complete"] = done == len(samples)
            result["tokenization"] = {
                "ids": "the C engine's (build/peer_dump --ids)",
                "transformers_ids_differ": len({(d["sample"], d["setting"]) for d in differ}),
                "of": done * len(args.settings.split(",")),
                "differences": differ}
            result["replies"] = {f"{p}|{b:g}|{s}|{i}": r for (p, b, s, i), r in replies.items()}
            result["wall_seconds"] = round(time.time() - started, 1)
            if peer.kvzip_derived:
                result["kvzip"] = peer.kvzip_derived
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=1)

        rows, settings, correct, replies, differ = run_tasks(peer, args, samples, c_prompts, tabulate)
        n = len(samples)
        print(f"\nkvpress on {result['model']}, {n} samples of {result['tasks']}; greedy, at most {args.max_tokens} new tokens")
        print(f"prompts: the engine's ids; transformers' own tokenization differs on "
              f"{result['tokenization']['transformers_ids_differ']} of {result['tokenization']['of']} prompts")
        print(f"{'press':12s} {'budget':>7s}   " + "   ".join(f"{s:16s}" for s in settings))
        for p, b in rows:
            line = f"{p:12s} {100 * b:6.0f}%"
            for s in settings:
                acc = sum(correct[(p, b, s)]) / n
                line += f"   {acc:.2f} +- {stderr_p(acc, n):.2f}    "
            print(line)
        if args.per_sample:
            for i in range(n):
                for s in settings:
                    for p, b in rows:
                        print(f"per-sample {indices[i] + 1} {s} {p} {b:g} {correct[(p, b, s)][i]}")
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
    result["complete"] = True
    print(f"\nwall time {result['wall_seconds']:.1f} s on {where}; {versions}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"results in {args.out}")


if __name__ == "__main__":
    main()
