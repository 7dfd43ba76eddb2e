#!/usr/bin/env python3
"""Paired differences between policies, from build/quality's outputs.

    bench/paired.py [--against POLICY] FILE...

Each FILE is either a --kl RESULT.json (per_sample_kl, per_sample_top1) or
the stdout of --tasks --per-sample (lines `per-sample N SETTING POLICY
BUDGET 0|1`). Rows of the same metric, setting and budget are joined on the
sample; for every policy the table gives its mean, and its mean paired
difference to POLICY (default kvec) with the standard error of that mean
(sample standard deviation / sqrt(n)). KL: lower is better; top-1 and
accuracy: higher is better. Files may split the rows (one budget or
setting per file); a sample seen twice for one row must agree.
"""
import json
import math
import re
import sys
from collections import defaultdict


def load(paths):
    # values[(metric, setting, budget)][policy][sample] = value
    values = defaultdict(lambda: defaultdict(dict))

    def put(key, policy, sample, value, path):
        seen = values[key][policy].get(sample)
        if seen is not None and seen != value:
            sys.exit(f"paired: {path}: {policy} {key} sample {sample}: {value} here, {seen} before")
        values[key][policy][sample] = value

    for path in paths:
        with open(path, newline="") as f:
            # build/quality's progress line ("\rsample 3/40, 12 s, about 90 s
            # left ", the last one ended by a newline) goes to stderr; in a
            # capture of both streams it lands inside the per-sample lines,
            # and is taken out
            text = re.sub(r"\rsample (\d+)/\1, \d+ s, about \d+ s left \n", "", f.read())
            text = re.sub(r"\rsample \d+/\d+, \d+ s, about \d+ s left ", "", text)
        if text.lstrip().startswith("{"):
            result = json.loads(text)
            for metric, field in (("kl", "per_sample_kl"), ("top1", "per_sample_top1")):
                for policy, budgets in result[field].items():
                    for budget, samples in budgets.items():
                        for n, value in enumerate(samples):
                            put((metric, "-", float(budget)), policy, n + 1, value, path)
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 6 and parts[0] == "per-sample":
                    put(("accuracy", parts[2], float(parts[4])), parts[3], int(parts[1]), int(parts[5]), path)
    return values


def mean_se(xs):
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def main():
    args = sys.argv[1:]
    against = "kvec"
    if len(args) >= 2 and args[0] == "--against":
        against, args = args[1], args[2:]
    if not args:
        sys.exit(__doc__)
    values = load(args)
    print(f"{'metric':8} {'setting':8} {'budget':>6}  {'policy':58} {'n':>3} {'mean':>8}  {'minus ' + against:>20}")
    for key in sorted(values):
        rows = values[key]
        for policy in rows:
            samples = rows[policy]
            mean, _ = mean_se(list(samples.values()))
            paired = ""
            if against in rows and policy != against:
                common = sorted(set(samples) & set(rows[against]))
                if common:
                    d, se = mean_se([samples[s] - rows[against][s] for s in common])
                    flag = " *" if se > 0 and abs(d) > 2 * se else ""
                    paired = f"{d:+.4f} +- {se:.4f}{flag}"
            metric, setting, budget = key
            print(f"{metric:8} {setting:8} {budget:6.2f}  {policy:58} {len(samples):3d} {mean:8.4f}  {paired:>20}")
    print("* = beyond two standard errors")


if __name__ == "__main__":
    main()
