#!/usr/bin/env python3
r"""Train a small Llama-architecture model on kvec's synthetic retrieval tasks.

Reproduces the recipe of the models in bench/models/ (ref-4l, dev-6l), as
described in bench/models/ref-4l/TASKS.md. Needs only PyTorch (the
`safetensors` package is used when installed, else the file is written by hand).

    python3 bench/models/train.py --tasks bench/models/ref-4l/tasks.json \
        --config bench/models/ref-4l/config.json --out /tmp/ref-4l-repro
    # add --smoke for a few CPU steps at T=128 with a tiny batch

--out receives config.json (the input config, torch_dtype set to --dtype) and
model.safetensors with Hugging Face LlamaForCausalLM tensor names, which
transformers and kvec's example engine (examples/engine) both load. At the
end the script prints full-cache accuracy per task and length (TASKS.md's
numbers). Samples follow the rules of examples/engine/tasks.c, the C
benchmark's generator, so the model trains on the distribution it is
evaluated on; only the random number stream differs.
"""
import argparse
import bisect
import itertools
import json
import math
import os
import random
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

TASKS = ("single", "multikey", "multiquery", "vartrack")


# ---- Sample generator --------------------------------------------------

class Vocab:
    """Token layout and filler sentence bank from tasks.json."""

    def __init__(self, spec):
        special = spec["special"]
        self.bos, self.eos, self.dot = special["BOS"], special["EOS"], special["DOT"]
        self.key, self.qry, self.semi, self.var = special["KEY"], special["QRY"], special["SEMI"], special["VAR"]
        self.keys = range(spec["keys"]["first"], spec["keys"]["first"] + spec["keys"]["count"])
        self.values = range(spec["values"]["first"], spec["values"]["first"] + spec["values"]["count"])
        self.bank = [list(s) for s in spec["sentence_bank"]]
        # Cumulative weights 1/(i+1)^0.8: random.choices(cum_weights=...) then
        # inverts the CDF with a bisection, the same draw as the C generator.
        self.cum = list(itertools.accumulate(1.0 / (i + 1) ** 0.8 for i in range(len(self.bank))))
        self.mean_len = max(1, sum(map(len, self.bank)) // len(self.bank))


def build_task(task, vb, rng):
    """One task instance: (records in context order, question + answer
    tokens, their scored flags, possible inline recall blocks as (index of the
    record that must precede the block, tokens, scored flags))."""
    if task == "vartrack":
        n_chains = rng.choice((2, 3))
        starts = rng.sample(vb.values, n_chains)      # distinct start values
        xs = rng.sample(vb.keys, 3 * n_chains)         # all variables distinct
        chains = [[starts[c]] + xs[3 * c:3 * c + 3] for c in range(n_chains)]
        # Shuffling the multiset of chain labels makes every interleaving that
        # keeps each chain's hop order equally likely.
        order = [c for c in range(n_chains) for _ in range(3)]
        rng.shuffle(order)
        records, hop, last = [], [0] * n_chains, [0] * n_chains
        for c in order:
            records.append([vb.var, chains[c][hop[c]], chains[c][hop[c] + 1], vb.dot])
            hop[c], last[c] = hop[c] + 1, len(records) - 1
        # A chain can only be recalled once its last hop has been seen.
        recalls = [(last[c], [vb.qry] + chains[c] + [vb.eos], [0, 0, 1, 1, 1, 1]) for c in range(n_chains)]
        return records, [vb.qry] + chains[0] + [vb.eos], [0, 0, 1, 1, 1, 1], recalls

    n_keys = 1 if task == "single" else 16
    keys = rng.sample(vb.keys, n_keys)
    values = [[rng.choice(vb.values) for _ in range(3)] for _ in range(n_keys)]  # independent, may repeat
    records = [[vb.key, k] + v + [vb.dot] for k, v in zip(keys, values)]
    recalls = [(i, [vb.qry, k] + v + [vb.eos], [0, 0, 1, 1, 1, 1]) for i, (k, v) in enumerate(zip(keys, values))]
    asked = rng.sample(range(n_keys), 3 if task == "multiquery" else 1)  # distinct, random order
    tail, scored = [vb.qry], [0]
    for j, a in enumerate(asked):
        final = j == len(asked) - 1
        # Keys after the first and the SEMI separators are given to the model,
        # so only values and the closing EOS are scored.
        tail += [keys[a]] + values[a] + [vb.eos if final else vb.semi]
        scored += [0, 1, 1, 1, 1 if final else 0]
    return records, tail, scored, recalls


def make_filler(length, vb, rng):
    """Whole sentences drawn by weight, cut to `length` tokens. Returns
    (tokens, boundaries): 0 and the end of every sentence that fits whole."""
    out, bounds = [], [0]
    while len(out) < length:
        # Draw sentences in chunks: one random.choices call per sentence
        # would dominate the generator's time.
        for s in rng.choices(vb.bank, cum_weights=vb.cum, k=(length - len(out)) // vb.mean_len + 1):
            room = length - len(out)
            out += s[:room]
            if len(s) <= room:
                bounds.append(len(out))
            if len(out) >= length:
                break
    return out, bounds


def make_sample(task, T, n_inline, vb, rng):
    """(tokens, scored) of exactly T tokens: BOS, context, question, answer.
    n_inline recall blocks (training only; 0 is the evaluation format) go in
    the context, each at a sentence boundary after the record it asks about."""
    records, tail, tail_scored, recalls = build_task(task, vb, rng)
    room = T - 1 - len(tail) - sum(map(len, records))
    if room < 0:
        raise ValueError(f"T={T} is too short for task {task}")
    # Short samples of the 16-record tasks cannot hold T/24 blocks; keep as
    # many as fit rather than overflowing T.
    block_len = len(recalls[0][1])
    n_inline = min(n_inline, room // block_len)
    filler, bounds = make_filler(room - n_inline * block_len, vb, rng)

    # Records at boundaries drawn uniformly with replacement, sorted, so
    # records sharing a boundary stay adjacent and in order.
    at = sorted(rng.choice(bounds) for _ in records)
    slots = {}
    for b, rec in zip(at, records):
        slots.setdefault(b, []).append((rec, [0] * len(rec)))
    for _ in range(n_inline):
        index, block, block_scored = rng.choice(recalls)
        # Any boundary at or after the record's own; at the same boundary the
        # block goes after the records, which were all placed first.
        first = bisect.bisect_left(bounds, at[index])
        b = bounds[rng.randrange(first, len(bounds))]
        slots.setdefault(b, []).append((block, block_scored))

    tokens, scored, prev = [vb.bos], [0], 0
    for b in sorted(slots):
        tokens, scored, prev = tokens + filler[prev:b], scored + [0] * (b - prev), b
        for toks, sc in slots[b]:
            tokens += toks
            scored += sc
    tokens += filler[prev:] + tail
    scored += [0] * (len(filler) - prev) + tail_scored
    assert len(tokens) == T, (len(tokens), T)
    return tokens, scored


def pick_length(step, steps, rng):
    """Curriculum: returns (phase, T). Short contexts first: without them
    the model never discovers recall."""
    if 4 * step < steps:
        return 0, rng.choice((128, 256))
    if 2 * step < steps:
        return 1, rng.choice((256, 512, 1024))
    return 2, rng.choices((512, 1024, 2048, 4096), weights=(0.15, 0.25, 0.3, 0.3))[0]


INLINE_DIVISOR = (24, 64, 128)   # T/24, T/64, T/128 inline blocks per phase


class Batches(torch.utils.data.IterableDataset):
    """Yields (step, tokens, scored) for every step, generated in worker
    processes. Each step's batch comes from its own seeded stream, so the
    data does not depend on the number of workers."""

    def __init__(self, vb, steps, tokens_per_step, seed, fixed_length=None):
        self.vb, self.steps, self.tokens_per_step, self.seed, self.fixed_length = \
            vb, steps, tokens_per_step, seed, fixed_length

    def batch(self, step):
        rng = random.Random(f"train:{self.seed}:{step}")
        phase, T = pick_length(step, self.steps, rng)
        T = self.fixed_length or T
        n_inline = T // INLINE_DIVISOR[phase] if rng.random() < 0.75 else 0
        rows = [make_sample(rng.choice(TASKS), T, n_inline, self.vb, rng)
                for _ in range(max(1, self.tokens_per_step // T))]
        return (step, torch.tensor([r[0] for r in rows], dtype=torch.long),
                torch.tensor([r[1] for r in rows], dtype=torch.bool))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # The DataLoader reads workers round-robin, so striding the steps
        # this way delivers them in order.
        for step in range(worker, self.steps, n_workers):
            yield self.batch(step)


# ---- Model: a plain Llama decoder with Hugging Face parameter names ----

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        # Normalise in fp32 and cast back before the weight, as HF Llama does.
        h = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(T, head_dim, theta, device):
    # Angles pos / theta^(2i/d) in fp32 (outside autocast's reach: plain
    # elementwise ops), duplicated over both halves for rotate-half.
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)   # rotate_half([a, b]) = [-b, a]
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg["hidden_size"]
        self.n_heads, self.n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.head_dim = cfg.get("head_dim") or hidden // self.n_heads
        self.q_proj = nn.Linear(hidden, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, hidden, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # GQA: query head h reads KV head h // group, as HF's repeat_kv does.
        group = self.n_heads // self.n_kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        eps = cfg["rms_norm_eps"]
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LlamaForCausalLM(nn.Module):
    """Module names mirror transformers' LlamaForCausalLM, so state_dict()
    already has the names the saved file needs."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg)
        self.tied = cfg.get("tie_word_embeddings", False)
        if not self.tied:
            self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        self.head_dim = self.model.layers[0].self_attn.head_dim
        self.init_weights()

    def init_weights(self):
        # normal(0, 0.02) everywhere; the projections that write into the
        # residual stream are scaled by 1/sqrt(2*layers) so its variance does
        # not grow with depth. Norm weights stay at 1.
        residual_std = 0.02 / math.sqrt(2 * len(self.model.layers))
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, ids):
        cos, sin = rope_tables(ids.shape[1], self.head_dim, self.cfg["rope_theta"], ids.device)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        h = self.model.norm(x)
        return F.linear(h, self.model.embed_tokens.weight if self.tied else self.lm_head.weight)


# ---- Saving (safetensors) ----------------------------------------------

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def save_safetensors(tensors, path):
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    try:
        from safetensors.torch import save_file
        return save_file(tensors, path, metadata={"format": "pt"})
    except ImportError:
        pass
    # The format: u64 little-endian header size, JSON header, raw data.
    if sys.byteorder != "little":
        raise RuntimeError("the hand-written safetensors writer assumes a little-endian host")
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name]
        # Reinterpret as bytes; bfloat16 has no numpy dtype, so go via uint8.
        raw = t.reshape(-1).view(torch.uint8)
        try:
            data = raw.numpy().tobytes()
        except (RuntimeError, TypeError):      # torch built without numpy
            data = bytes(raw.tolist())
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs, offset = blobs + [data], offset + len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)   # pad so the data starts 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ---- Training and evaluation -------------------------------------------

def lr_at(step, steps, peak, warmup=100, floor=0.1):
    """Linear warm-up, then cosine from the peak down to floor * peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def recipe_loss(logits, tokens, scored):
    """Mean CE on answer tokens + 0.1 x mean CE on all other tokens.
    Position t predicts token t+1. Masked sums, not boolean indexing, keep
    the GPU from synchronising every step."""
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                         tokens[:, 1:].reshape(-1), reduction="none")
    answer = scored[:, 1:].reshape(-1).float()
    answer_loss = (ce * answer).sum() / answer.sum().clamp(min=1)
    other_loss = (ce * (1 - answer)).sum() / (1 - answer).sum().clamp(min=1)
    return answer_loss + 0.1 * other_loss, answer_loss, other_loss


@torch.no_grad()
def evaluate(model, vb, lengths, n_samples, seed, device, autocast, chunk_tokens=65536):
    """Full-cache accuracy: a sample is correct when every scored token is the
    argmax at the previous position (teacher forcing), as in TASKS.md."""
    model.eval()
    results = {}    # (task, T) -> number correct
    for T in lengths:
        for task in TASKS:
            rng = random.Random(f"eval:{seed}:{task}:{T}")
            rows = [make_sample(task, T, 0, vb, rng) for _ in range(n_samples)]
            correct, per_chunk = 0, max(1, chunk_tokens // T)
            for i in range(0, n_samples, per_chunk):
                tokens = torch.tensor([r[0] for r in rows[i:i + per_chunk]], device=device)
                scored = torch.tensor([r[1] for r in rows[i:i + per_chunk]], device=device, dtype=torch.bool)
                with autocast():
                    pred = model(tokens)[:, :-1].argmax(-1)
                ok = (pred == tokens[:, 1:]) | ~scored[:, 1:]
                correct += int(ok.all(dim=1).sum())
            results[(task, T)] = correct
    model.train()
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", required=True, help="tasks.json: vocabulary layout and sentence bank")
    p.add_argument("--config", required=True, help="Hugging Face Llama config.json giving the model shape")
    p.add_argument("--out", required=True, help="output directory for config.json and model.safetensors")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype of the saved weights")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--tokens-per-step", type=int, default=65536, help="batch size is this // T")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=4, help="data generator processes (0: in the main process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (one graph per batch shape)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-lengths", default="1024,2048,4096", help="comma-separated T; empty to skip evaluation")
    p.add_argument("--eval-samples", type=int, default=32, help="samples per task and length")
    p.add_argument("--smoke", action="store_true", help="a few CPU steps at T=128, tiny batch, quick evaluation")
    args = p.parse_args()

    fixed_length = None
    if args.smoke:
        args.device, args.steps, args.tokens_per_step, args.workers = "cpu", 4, 4 * 128, 0
        args.log_every, args.eval_lengths, args.eval_samples, fixed_length = 1, "256", 2, 128

    with open(args.tasks) as f:
        vb = Vocab(json.load(f))
    with open(args.config) as f:
        cfg = json.load(f)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(cfg).to(device)
    print(f"model: {cfg['num_hidden_layers']} layers, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, device {device}", flush=True)

    # Weight decay on matrices (projections and the embedding), not on norms.
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.05},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")

    # bf16 autocast on the GPU per the recipe; CPU runs (the smoke test) stay
    # in fp32, where bf16 matmuls are slow and gain nothing.
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    forward = torch.compile(model, dynamic=False) if args.compile else model
    data = torch.utils.data.DataLoader(
        Batches(vb, args.steps, args.tokens_per_step, args.seed, fixed_length), batch_size=None,
        num_workers=args.workers, pin_memory=device.type == "cuda",
        prefetch_factor=4 if args.workers > 0 else None)

    start = last = time.time()
    tokens_seen = 0
    for step, tokens, scored in data:
        lr = lr_at(step, args.steps, args.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        tokens, scored = tokens.to(device, non_blocking=True), scored.to(device, non_blocking=True)
        with autocast():
            logits = forward(tokens)
        loss, answer_loss, other_loss = recipe_loss(logits, tokens, scored)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += tokens.numel()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            # .item() waits for the GPU, so read the clock after it.
            losses = [x.item() for x in (loss, answer_loss, other_loss)]
            now = time.time()
            print(f"step {step + 1:5d}/{args.steps}  T {tokens.shape[1]:4d} x {tokens.shape[0]:3d}  "
                  "loss {:.4f}  answer {:.4f}  other {:.4f}  ".format(*losses) +
                  f"lr {lr:.2e}  {tokens_seen / (now - last):,.0f} tok/s", flush=True)
            last, tokens_seen = now, 0
    print(f"trained {args.steps} steps in {time.time() - start:.0f} s", flush=True)

    lengths = [int(x) for x in args.eval_lengths.split(",") if x.strip()]
    if lengths:
        results = evaluate(model, vb, lengths, args.eval_samples, args.seed, device, autocast)
        print("full-cache accuracy (correct / %d):" % args.eval_samples)
        for task in TASKS:
            print(f"  {task:10s} " + "  ".join(f"T={T}: {results[(task, T)]:3d}" for T in lengths))

    os.makedirs(args.out, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    save_safetensors({k: v.to(dtype) for k, v in model.state_dict().items()},
                     os.path.join(args.out, "model.safetensors"))
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(cfg, torch_dtype=args.dtype), f, indent=1)
    print(f"wrote {args.out}/config.json and {args.out}/model.safetensors ({args.dtype})")


if __name__ == "__main__":
    main()
