#!/usr/bin/env python3
"""The mean of a tuning round's cells, per policy, from build/quality's outputs.

    bench/cells_mean.py [--cells CELLS] [--policies P1,P2,...] FILE...

FILEs as bench/paired.py reads them (--kl RESULT.json, the stdout of
--tasks --per-sample). CELLS: comma-separated metric:setting:budget, default
the eight of docs/TUNING.md round 7:

    accuracy:agnostic:0.1, accuracy:agnostic:0.25, accuracy:agnostic:0.5,
    accuracy:aware:0.25, accuracy:aware:0.5, top1:-:0.1, top1:-:0.25, top1:-:0.5

Each cell is a fraction (accuracy over the samples, top-1 agreement with
the full cache averaged over the texts); a policy's score is the mean of its
cells, printed beside each cell. A policy missing a cell is listed without
a mean.
"""
import sys

from paired import load, mean_se

DEFAULT_CELLS = ("accuracy:agnostic:0.1,accuracy:agnostic:0.25,accuracy:agnostic:0.5,"
                 "accuracy:aware:0.25,accuracy:aware:0.5,top1:-:0.1,top1:-:0.25,top1:-:0.5")


def main():
    rest, files = sys.argv[1:], []
    cells_text, only = DEFAULT_CELLS, None
    while rest:
        if rest[0] in ("--cells", "--policies") and len(rest) >= 2:
            if rest[0] == "--cells":
                cells_text = rest[1]
            else:
                only = rest[1].split(",")
            rest = rest[2:]
        elif rest[0].startswith("--"):
            sys.exit(__doc__)
        else:
            files.append(rest.pop(0))
    if not files:
        sys.exit(__doc__)
    cells = []
    for cell in cells_text.split(","):
        parts = cell.strip().split(":")
        if len(parts) != 3:
            sys.exit(f"cells_mean: a cell is metric:setting:budget, not '{cell}'")
        cells.append((parts[0], parts[1], float(parts[2])))
    values = load(files)
    policies = only or sorted({p for key in values for p in values[key]})
    header = " ".join(f"{m[:3]}:{s[:3]}:{b:g}".rjust(13) for m, s, b in cells)
    print(f"{'policy':34} {header} {'mean':>7}")
    for policy in policies:
        row, means = [], []
        for cell in cells:
            samples = values.get(cell, {}).get(policy)
            if samples:
                m, _ = mean_se(list(samples.values()))
                means.append(m)
                row.append(f"{m:.3f} ({len(samples)})".rjust(13))
            else:
                row.append("-".rjust(13))
        mean = f"{sum(means) / len(means):.3f}" if len(means) == len(cells) else "-"
        print(f"{policy:34} {' '.join(row)} {mean:>7}")


if __name__ == "__main__":
    main()
