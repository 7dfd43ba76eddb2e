#!/usr/bin/env python3
"""Accuracy against budget, one line per policy, one panel per (model, setting).

    python3 bench/plot_quality.py bench/results/quality.json [more.json ...] -o out.png

Reads the JSON written by build/quality; needs matplotlib."""
import argparse
import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

SETTINGS = ["question-agnostic", "question-aware"]
BUDGETS = ["0.05", "0.1", "0.2"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="quality JSON files")
    parser.add_argument("-o", "--out", default="bench/results/quality.png")
    args = parser.parse_args()
    runs = [json.load(open(path)) for path in args.results]

    figure, axes = plt.subplots(len(runs), 2, figsize=(11, 4.2 * len(runs)), squeeze=False)
    for row, run in enumerate(runs):
        results = run["results"]
        for column, setting in enumerate(SETTINGS):
            ax = axes[row][column]
            for policy, by_setting in results.items():
                if policy == "full":
                    ax.axhline(by_setting[setting]["1.0"], color="black", linestyle="--", linewidth=1,
                               label="full cache")
                    continue
                xs = [100 * float(b) for b in BUDGETS]
                ys = [by_setting[setting][b] for b in BUDGETS]
                bold = policy == "kvec"
                ax.plot(xs, ys, marker="o", linewidth=2.8 if bold else 1.3, label=policy,
                        zorder=3 if bold else 2)
            ax.set_title(f"{run['model']}, {setting} ({run['samples']} samples per task and length)", fontsize=10)
            ax.set_xlabel("budget (% of the prefix kept per KV head)")
            ax.set_ylabel("accuracy (4 tasks, T = " + ", ".join(str(t) for t in run.get("lengths", [])) + ")")
            ax.set_xticks([5, 10, 20])
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
