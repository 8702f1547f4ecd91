"""Plots of a lab report: fidelity by age, tokens by age, and the tokens-saved vs fidelity frontier.

Reads only the report dict (so a saved report.json can be re-plotted), writes small PNGs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

STYLE = {"curve": "-", "drop": "-.", "truncation": "--", "full-text": ":"}
DPI = 90


def _colours(report: dict[str, Any]) -> dict[str, Any]:
    names = sorted({r["curve"] for r in report["rows"] if r["curve"]})
    cmap = plt.get_cmap("tab10")
    return {"": "black", **{name: cmap(i % 10) for i, name in enumerate(names)}}


def _budgets(report: dict[str, Any]) -> list[int | None]:
    return sorted({r["budget"] for r in report["rows"] if r["method"] != "full-text"}, key=lambda b: b or 0)


def _label(row: dict[str, Any]) -> str:
    if row["method"] == "truncation":
        return f"truncation ({row['curve']})" if row["curve"] else "truncation"
    if row["method"] == "drop":
        return f"{row['curve']} (before: drop)"
    return "full text" if row["method"] == "full-text" else row["curve"]


def _by_age(report: dict[str, Any], key: str, title: str, ylabel: str, path: Path, log: bool = False) -> Path:
    budgets = _budgets(report)
    colours = _colours(report)
    labels = [b["bucket"] for r in report["rows"] for b in r["buckets"]]
    order = sorted(set(labels), key=lambda b: int(b.split("-")[0].rstrip("+")))
    cols = min(len(budgets), 2)
    rows_ = -(-len(budgets) // cols)
    fig, grid = plt.subplots(rows_, cols, figsize=(6.5 * cols, 4.6 * rows_), squeeze=False, sharey=True)
    axes = [[ax for row_axes in grid for ax in row_axes]]
    for ax in axes[0][len(budgets):]:
        ax.set_visible(False)
    for ax, budget in zip(axes[0], budgets):
        for row in report["rows"]:
            if row["method"] != "full-text" and row["budget"] != budget:
                continue
            cells = {b["bucket"]: b[key] for b in row["buckets"]}
            # On a log axis a zero (nothing spent) can't be drawn: the line just stops there.
            xs = [i for i, b in enumerate(order) if cells.get(b) is not None and (cells[b] > 0 or not log)]
            ax.plot(xs, [cells[order[i]] for i in xs], STYLE[row["method"]], marker="o", ms=3,
                    color=colours[row["curve"]], label=_label(row), lw=1.4 if row["method"] == "curve" else 1,
                    alpha=0.55 if row["method"] == "drop" else 1.0)
        ax.set_xticks(range(len(order)), order, rotation=30, fontsize=8)
        ax.set_xlabel("age (turns since the content)")
        ax.set_title(f"{title}, {'no budget' if budget is None else f'budget {budget} tokens'}", fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    axes[0][len(budgets) - 1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def frontier(report: dict[str, Any], path: Path) -> Path:
    """Left: each tier's compression against its precision. Right: each context's share of tokens
    saved against the full text, and how much of the conversation it still reads back."""
    colours = _colours(report)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1, 1.25]})
    tiers = [t for t in report["tiers"] if t["compression"]]
    left.plot([t["compression"] for t in tiers], [t["precision"] for t in tiers], "o-", color="tab:blue")
    for t in tiers:
        left.annotate(t["tier"], (t["compression"], t["precision"]), fontsize=8, xytext=(4, 4),
                      textcoords="offset points")
    left.set_xscale("log")
    left.xaxis.set_major_locator(ticker.LogLocator(subs=(1, 2, 5)))
    left.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}x"))
    left.xaxis.set_minor_formatter(ticker.NullFormatter())
    left.set_xlabel("compression (text tokens per visual token)")
    left.set_ylabel("character precision of the reading")
    left.set_title("per tier: compression vs precision", fontsize=10)
    left.grid(alpha=0.3)

    full = next(r for r in report["rows"] if r["method"] == "full-text")["tokens"]
    markers = {"curve": "o", "drop": "v", "truncation": "x", "full-text": "*"}
    for row in report["rows"]:
        colour, budgeted = colours[row["curve"]], row["budget"] is not None
        paint = {"facecolors": "none", "edgecolors": colour} if budgeted and row["method"] == "curve" else {"color": colour}
        right.scatter(1 - row["tokens"] / full, row["fidelity"], marker=markers[row["method"]], s=50, **paint,
                      label=_label(row) + (f" @{row['budget']}" if budgeted else ""))
    right.set_xlabel("tokens saved against the full text")
    right.set_ylabel("fidelity (lost content counts as unread)")
    right.set_title("contexts: tokens saved vs fidelity (hollow: under the budget)", fontsize=10)
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(report: dict[str, Any], out: Path) -> list[Path]:
    return [
        _by_age(report, "fidelity", "fidelity by age", "fidelity (1 - CER, lost = 0)", out / "fidelity_vs_age.png"),
        _by_age(report, "tokens", "context tokens by age", "tokens spent on that age bucket",
                out / "tokens_vs_age.png", log=True),
        frontier(report, out / "frontier.png"),
    ]
