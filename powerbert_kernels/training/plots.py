"""Plots of a training report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_retention(report: dict, path: str) -> str:
    """Tokens kept per layer for every run (left) and the search's mass per layer over steps (right).

    Args:
        report: the pipeline's report (``runs`` with ``kept_per_layer``, ``lambda``, ``mass_history``).
        path: PNG to write.
    """
    plt = _pyplot()
    runs = report["runs"]
    histories = [r for r in runs if r.get("mass_history")]
    fig, axes = plt.subplots(1, 2 if histories else 1, figsize=(11 if histories else 6, 4), squeeze=False)
    ax = axes[0][0]
    n = report["max_length"]
    for run in runs:
        kept = run["kept_per_layer"]
        label = "given configuration" if run["lambda"] is None else f"lambda={run['lambda']:g}"
        ax.plot(range(1, len(kept) + 1), kept, marker="o", label=f"{label} ({run['flop_ratio']:.2f}x FLOPs)")
    ax.axhline(n, color="grey", linestyle="--", linewidth=1, label=f"stock (N={n})")
    ax.set_xlabel("encoder layer j")
    ax.set_ylabel("word-vectors kept l_j")
    ax.set_ylim(0, n * 1.05)
    ax.set_title("Retention configuration")
    ax.legend(fontsize=8)
    if histories:
        ax = axes[0][1]
        run = next((r for r in histories if r["lambda"] == report.get("lambda")), histories[0])
        steps = [h["step"] for h in run["mass_history"]]
        layers = len(run["mass_history"][0]["masses"])
        for j in range(layers):
            ax.plot(steps, [h["masses"][j] for h in run["mass_history"]], label=f"layer {j + 1}")
        ax.set_xlabel("search step")
        ax.set_ylabel("mass sum_k r_j[k]")
        ax.set_title(f"Configuration search (lambda={run['lambda']:g})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tradeoff(report: dict, path: str) -> str:
    """Eval metric against FLOP ratio, one point per lambda, with the baseline as a line."""
    plt = _pyplot()
    runs = sorted(report["runs"], key=lambda r: r["flop_ratio"])
    name = report["metric_name"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["flop_ratio"] for r in runs]
    ys = [r["metrics"][name] for r in runs]
    ax.plot(xs, ys, marker="o", label="PoWER-BERT")
    for r, x, y in zip(runs, xs, ys, strict=True):
        text = f"λ={r['lambda']:g}" if r["lambda"] is not None else "given"
        if r.get("speedup") is not None:
            text += f"\n{r['speedup']:.2f}x measured"
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    base = report["baseline_metric"]
    ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"fine-tuned baseline ({base:.1f})")
    ax.axhline(base - 1, color="grey", linestyle=":", linewidth=1, label="baseline - 1 point")
    ax.margins(x=0.15, y=0.15)  # room for the annotations of the outermost points
    ax.set_xlabel("FLOP ratio (stock / PoWER-BERT)")
    ax.set_ylabel(f"eval {name} (points)")
    ax.set_title(f"{name} / speed trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_tune(report: dict, path: str) -> str:
    """Metric against FLOP ratio of every configuration ``powerbert tune`` scored, its greedy path and the
    chosen point, with the unpatched model and the allowed drop as lines.

    Args:
        report: ``tune.json``'s content (``tried``, ``retention``, ``reference_search``, ``max_drop``).
        path: PNG to write.
    """
    plt = _pyplot()
    name = report["metric_name"]
    tried = report["tried"]
    path_points = sorted((e for e in tried if e["accepted"]), key=lambda e: e["flop_ratio"])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter(
        [e["flop_ratio"] for e in tried],
        [e["metric"] for e in tried],
        s=12,
        color="lightgrey",
        label=f"scored ({len(tried)})",
    )
    ax.plot(
        [e["flop_ratio"] for e in path_points],
        [e["metric"] for e in path_points],
        marker="o",
        markersize=3,
        label="greedy path",
    )
    chosen = next(e for e in tried if e["retention"] == report["retention"])
    ax.scatter([chosen["flop_ratio"]], [chosen["metric"]], marker="*", s=160, color="red", zorder=3, label="chosen")
    ax.annotate(
        ",".join(map(str, report["retention"])),
        (chosen["flop_ratio"], chosen["metric"]),
        textcoords="offset points",
        xytext=(6, -12),
        fontsize=7,
    )
    if report.get("holdout_metric") is not None:
        ax.scatter(
            [chosen["flop_ratio"]],
            [report["holdout_metric"] - report["reference_holdout"] + report["reference_search"]],
            marker="x",
            color="red",
            zorder=3,
            label="chosen, held-out rows (shifted by the unpatched gap)",
        )
    base = report["reference_search"]
    ax.axhline(base, color="grey", linestyle="--", linewidth=1, label=f"unpatched ({base:.1f})")
    if report.get("max_drop") is not None:
        ax.axhline(base - report["max_drop"], color="grey", linestyle=":", linewidth=1, label="allowed drop")
    ax.set_xlabel("FLOP ratio (stock / PoWER-BERT)")
    ax.set_ylabel(f"{name} on the search rows (points)")
    ax.margins(x=0.12)  # room for the chosen configuration's label
    ax.set_title("powerbert tune: configurations scored")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
