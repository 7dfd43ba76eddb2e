#!/usr/bin/env python3
"""real_report.py - markdown tables (and a plot, with matplotlib) from the
JSON files of `build/quality --kl` and `build/quality --tasks`.

    python3 bench/real_report.py bench/results/real-smollm2-kl.json bench/results/real-smollm2-tasks.json \\
        [--plot bench/results/real-smollm2.png] [--plot-policies kvec,snapkv,...]

KL files: one row per policy, KL +- standard error and top-1 agreement per
budget, then the paired KL difference against kvec. Task files: accuracy
+- standard error per setting and budget, then correct counts per task.
Rows keep the order of the JSON file; nothing is re-ranked or filtered."""
import argparse
import json
import math


def budgets_of(table):
    keys = []
    for by_budget in table.values():
        for b in by_budget:
            if b != "1.0" and b not in keys:
                keys.append(b)
    return sorted(keys, key=float)


def pct(b):
    return f"{100 * float(b):g}%"


def kl_tables(r):
    budgets = budgets_of(r["kl"])
    out = [f"**{r['model']}**, {r['samples']} samples of `{r['samples_file']}` (prefix {r['prefix'][0]}..{r['prefix'][1]}, "
           f"forced {r['forced'][0]}), wall {r['wall_seconds']:.0f} s, CPU {r.get('cpu_seconds', float('nan')):.0f} s", "",
           "KL to the full cache (nats, lower is better) / top-1 agreement, mean +- standard error over samples:", "",
           "| policy | " + " | ".join(pct(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for policy, by_budget in r["kl"].items():
        if policy == "full":
            continue
        cells = [f"{r['kl'][policy][b]:.4f} +- {r['kl_stderr'][policy][b]:.4f} / {r['top1'][policy][b]:.3f}"
                 for b in budgets]
        out.append(f"| {policy} | " + " | ".join(cells) + " |")
    if any(v is not None for by in r["kl_minus_kvec"].values() for v in by.values()):
        out += ["", "Paired KL difference against kvec at the same budget (negative: closer to the full cache than kvec):",
                "", "| policy | " + " | ".join(pct(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for policy in r["kl"]:
            if policy in ("full", "kvec"):
                continue
            cells = []
            for b in budgets:
                d, se = r["kl_minus_kvec"][policy].get(b), r["kl_minus_kvec_stderr"][policy].get(b)
                cells.append("" if d is None else f"{d:+.4f} +- {se:.4f}" + (" *" if abs(d) > 2 * se else ""))
            out.append(f"| {policy} | " + " | ".join(cells) + " |")
        out.append("\n(* beyond two standard errors)")
    return "\n".join(out)


def task_tables(r):
    settings = list(next(iter(r["results"].values())).keys())
    budgets = budgets_of({p: by[settings[0]] for p, by in r["results"].items()})
    n = r["samples"]
    out = [f"**{r['model']}**, {n} samples of `{r['tasks']}`, wall {r['wall_seconds']:.0f} s, "
           f"CPU {r.get('cpu_seconds', float('nan')):.0f} s", "",
           "Accuracy +- standard error, " + " / ".join(settings) + ":", "",
           "| policy | " + " | ".join(pct(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for policy, by_setting in r["results"].items():
        keys = ["1.0"] if policy == "full" else budgets
        cells = [" / ".join(f"{by_setting[s][b]:.2f} +- {r['stderr'][policy][s][b]:.2f}" for s in settings) for b in keys]
        out.append(f"| {policy} | " + " | ".join(cells) + " |")
    kinds = r.get("per_task", {})
    if kinds:
        out += ["", "Correct per task (" + " / ".join(settings) + "; n per task: " +
                ", ".join(f"{k} {v['samples']}" for k, v in kinds.items()) + "):", "",
                "| policy | budget | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
        for policy, by_setting in r["results"].items():
            for b in (["1.0"] if policy == "full" else budgets):
                cells = [" / ".join(str(v["correct"][policy][s][b]) for s in settings) for v in kinds.values()]
                out.append(f"| {policy} | {pct(b)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(runs, path, only=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = []
    for r in runs:
        if "kl" in r:
            panels.append((r, "kl", None))
        else:
            for s in next(iter(r["results"].values())):
                panels.append((r, "results", s))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    names = []
    for r, key, setting in panels:
        for policy in r[key]:
            if policy != "full" and policy not in names and (not only or policy in only):
                names.append(policy)
    # one colour and marker per policy, the same in every panel (up to 20 policies)
    colours = {p: plt.get_cmap("tab20")(i % 20) for i, p in enumerate(names)}
    markers = {p: "osD^v<>"[i % 7] for i, p in enumerate(names)}
    for ax, (r, key, setting) in zip(axes[0], panels):
        table = r[key] if setting is None else {p: by[setting] for p, by in r[key].items()}
        for policy, by_budget in table.items():
            if policy == "full":
                if setting:
                    ax.axhline(by_budget["1.0"], color="black", linestyle="--", linewidth=1, label="full cache")
                continue
            if only and policy not in only:
                continue
            bs = sorted((b for b in by_budget if b != "1.0"), key=float)
            bold = policy == "kvec"
            ax.plot([100 * float(b) for b in bs], [by_budget[b] for b in bs], marker=markers[policy],
                    color="black" if bold else colours[policy], linewidth=2.8 if bold else 1.2, label=policy,
                    zorder=3 if bold else 2)
        ax.set_xlabel("budget (% of the prefix kept per KV head)")
        if setting:
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{r['model']}, tasks, {setting} (n {r['samples']})", fontsize=9)
        else:
            ax.set_ylabel("KL to the full cache (nats)")
            ax.set_yscale("log")
            ax.set_title(f"{r['model']}, held text (n {r['samples']})", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = [], []
    for ax in axes[0]:
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 9), frameon=False, fontsize=8)
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--plot", help="write a PNG (needs matplotlib)")
    ap.add_argument("--plot-policies", help="comma-separated: only these policies in the plot (default: all)")
    a = ap.parse_args()
    runs = [json.load(open(p)) for p in a.results]
    for r in runs:
        print(kl_tables(r) if "kl" in r else task_tables(r))
        print()
    if a.plot:
        plot(runs, a.plot, a.plot_policies.split(",") if a.plot_policies else None)


if __name__ == "__main__":
    main()
