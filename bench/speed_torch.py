"""speed_torch.py - a straightforward PyTorch SnapKV: the baseline of bench/speed_cuda
(--device cuda, the default) and of bench/speed.c (--device cpu, run by `make bench`).

Same shape and data sizes as speed_cuda: 32 layers, 32 query heads, 8 KV
heads, head dim 128, fp16 K, V and window queries, window 32, keep 20%.
Per layer: window attention in fp32 (the 32 last queries against every key,
causal inside the window), softmax, mean over the window, average pooling of
width 5, mean over the query heads of each KV head, topk of the free slots,
then gather of the kept K and V rows (window appended). The time is the
median over --repeats of all 32 layers, measured with CUDA events after a
warm-up.

On the CPU (--device cpu) the same code runs with torch's own threads
(--threads, default all CPUs), timed with time.perf_counter after a warm-up
layer, and the repeats follow bench/speed.c: 5 up to 8192 tokens, 3 above,
and from --long-from tokens on one repeat of --long-layers layers, scaled
to 32 layers (said in the output). With --kvec-summary (the JSON lines
`build/speed --summary` writes) each length is printed beside kvec's
SnapKV and K-VEC totals, with the ratio.

    python3 bench/speed_torch.py [--tokens 8192,32768,131072] [--repeats 10] [--json FILE]
    python3 bench/speed_torch.py --device cpu [--threads 2] [--kvec-summary FILE]
"""

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

LAYERS, HEADS, KV_HEADS, DIM, WINDOW, KEEP, KERNEL = 32, 32, 8, 128, 32, 0.2, 5


def snapkv_layer(keys, values, queries, budget):
    """keys, values: [N][Hk][D] fp16; queries: [W][H][D] fp16. Returns the kept K and V, [Hk][B][D]."""
    n, hk, d = keys.shape
    w, h, _ = queries.shape
    g = h // hk
    k = keys.float().permute(1, 2, 0)                                   # [Hk][D][N]
    q = queries.float().reshape(w, hk, g, d).permute(1, 2, 0, 3)        # [Hk][g][W][D]
    logits = torch.matmul(q.reshape(hk, g * w, d), k) / math.sqrt(d)    # [Hk][g*W][N]
    logits = logits.reshape(hk, g, w, n)
    position = torch.arange(n - w, n, device=keys.device)               # of each window row
    causal = torch.arange(n, device=keys.device)[None, :] > position[:, None]   # [W][N]
    logits = logits.masked_fill(causal, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    scores = probs[..., : n - w].mean(dim=2)                            # [Hk][g][N-W]
    pooled = F.avg_pool1d(scores.reshape(hk * g, 1, n - w), KERNEL, stride=1, padding=KERNEL // 2)
    pooled = pooled.reshape(hk, g, n - w).mean(dim=1)                   # [Hk][N-W]
    top = pooled.topk(budget - w, dim=-1).indices                       # [Hk][B-W]
    window = torch.arange(n - w, n, device=keys.device).expand(hk, w)
    kept = torch.cat([top, window], dim=-1)                             # [Hk][B]
    index = kept.unsqueeze(-1).expand(-1, -1, d)
    return keys.permute(1, 0, 2).gather(1, index), values.permute(1, 0, 2).gather(1, index)


def cpu_main(args):
    """The CPU peer of bench/speed.c: same shape, same repeats, times beside kvec's."""
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    kvec = {}
    if args.kvec_summary:
        with open(args.kvec_summary) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    kvec[(row["tokens"], row["policy"])] = row
    print(f"speed_torch (CPU): torch {torch.__version__}, {threads} intra-op threads; SnapKV as kvpress computes it "
          f"(fp32 window attention over fp16 K, softmax, mean, avg pool {KERNEL}, mean over the group, topk, gather); "
          f"{LAYERS} layers, {HEADS}/{KV_HEADS} heads, dim {DIM}, window {WINDOW}, keep {KEEP:.0%}")
    print("  time: time.perf_counter over the layers of one repeat, after one untimed layer; median over repeats")
    rows = []
    for n in [int(t) for t in args.tokens.split(",")]:
        long_run = n >= args.long_from
        n_layers = args.long_layers if long_run else LAYERS
        repeats = 1 if long_run else (args.repeats or (5 if n <= 8192 else 3))
        budget = int(KEEP * n)
        generator = torch.Generator().manual_seed(n)
        layers = []
        for _ in range(n_layers):
            k = torch.randn(n, KV_HEADS, DIM, dtype=torch.float16, generator=generator)
            v = torch.randn(n, KV_HEADS, DIM, dtype=torch.float16, generator=generator)
            q = torch.randn(WINDOW, HEADS, DIM, dtype=torch.float16, generator=generator)
            layers.append((k, v, q))
        with torch.inference_mode():
            snapkv_layer(*layers[0], budget)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                out = [snapkv_layer(k, v, q, budget) for k, v, q in layers]
                times.append((time.perf_counter() - start) * 1e3 * LAYERS / n_layers)
                del out
        ms = statistics.median(times)
        note = f"layers 0..{n_layers - 1} timed, x {LAYERS}/{n_layers}" if n_layers < LAYERS else f"all {LAYERS} layers"
        print(f"  {n:7d} tokens: snapkv-torch {ms:10.1f} ms (median of {repeats}; {note})", flush=True)
        rows.append((n, ms, repeats, n_layers))
        del layers
    if kvec:
        print("\n  kvec (build/speed, same run of make bench) beside PyTorch, ms for all 32 layers, median:")
        print(f"  {'tokens':>7} {'torch snapkv':>13} {'kvec snapkv':>12} {'kvec K-VEC':>11} {'torch / kvec snapkv':>20} "
              f"{'torch / kvec K-VEC':>19}")
        for n, ms, repeats, n_layers in rows:
            s, k = kvec.get((n, "snapkv")), kvec.get((n, "kvec"))
            def cell(row, width):
                return f"{row['total_ms']:{width}.1f}" if row else f"{'-':>{width}}"
            def lead(row, width):
                return f"{ms / row['total_ms']:{width - 1}.2f}x" if row else f"{'-':>{width}}"
            print(f"  {n:7d} {ms:13.1f} {cell(s, 12)} {cell(k, 11)} {lead(s, 20)} {lead(k, 19)}")
        print("  (kvec total = score + select + compact, in place; torch = the same steps, gather into new tensors;"
              " both scaled to 32 layers where fewer were timed)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tokens", default="8192,32768,131072")
    parser.add_argument("--repeats", type=int, default=None, help="default: 10 on CUDA; 5 up to 8K, 3 above on the CPU")
    parser.add_argument("--threads", type=int, default=0, help="CPU: torch threads (default: all CPUs)")
    parser.add_argument("--long-from", type=int, default=131072, help="CPU: from this length on, 1 repeat")
    parser.add_argument("--long-layers", type=int, default=4, help="CPU: layers timed at the long lengths")
    parser.add_argument("--kvec-summary", help="CPU: build/speed --summary output, printed beside")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.device == "cpu":
        cpu_main(args)
        return
    if args.repeats is None:
        args.repeats = 10
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    print(f"speed_torch: {name}, torch {torch.__version__}; SnapKV, {LAYERS} layers, {HEADS}/{KV_HEADS} heads, "
          f"dim {DIM}, fp16, window {WINDOW}, keep {KEEP:.0%}, median of {args.repeats}")
    results = []
    for n in [int(t) for t in args.tokens.split(",")]:
        budget = int(KEEP * n)
        generator = torch.Generator(device=device).manual_seed(n)
        layers = []
        for _ in range(LAYERS):
            k = torch.randn(n, KV_HEADS, DIM, device=device, dtype=torch.float16, generator=generator)
            v = torch.randn(n, KV_HEADS, DIM, device=device, dtype=torch.float16, generator=generator)
            q = 2 * torch.randn(WINDOW, HEADS, DIM, device=device, dtype=torch.float16, generator=generator)
            layers.append((k, v, q))

        def run():
            return [snapkv_layer(k, v, q, budget) for k, v, q in layers]

        run()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = run()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
            del out
        ms = statistics.median(times)
        print(f"{n:8d} snapkv-torch {ms:9.3f} ms")
        results.append({"tokens": n, "policy": "snapkv-torch", "evict_ms": ms})
        del layers
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
