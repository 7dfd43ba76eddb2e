"""speed_torch.py - a straightforward PyTorch SnapKV, the baseline of bench/speed_cuda.

Same shape and data sizes as speed_cuda: 32 layers, 32 query heads, 8 KV
heads, head dim 128, fp16 K, V and window queries, window 32, keep 20%.
Per layer: window attention in fp32 (the 32 last queries against every key,
causal inside the window), softmax, mean over the window, average pooling of
width 5, mean over the query heads of each KV head, topk of the free slots,
then gather of the kept K and V rows (window appended). The time is the
median over --repeats of all 32 layers, measured with CUDA events after a
warm-up.

    python3 bench/speed_torch.py [--tokens 8192,32768,131072] [--repeats 10] [--json FILE]
"""

import argparse
import json
import math
import statistics

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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="8192,32768,131072")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
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
