"""PNG figures for a leaderboard: the task x expert score heatmap and a classifier confusion matrix.

matplotlib runs on the Agg backend (no display needed); figures are written next to the results.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from leaderboard.derive import ScoreMatrix, averages, best_average, best_for_task  # noqa: E402
from leaderboard.metrics import ClassificationReport  # noqa: E402


def plot_leaderboard(matrix: ScoreMatrix, path: str | Path, title: str = "Leaderboard") -> Path:
    """Heatmap of scores (rows: evaluated tasks + 'average (unknown)', columns: experts), each cell
    annotated with its score and item count; the routed expert of each row is boxed."""
    path = Path(path)
    tasks = matrix.eval_tasks()
    experts = matrix.experts
    avg = averages(matrix)
    rows = tasks + ["average (unknown)"]
    data = np.full((len(rows), len(experts)), np.nan)
    for i, t in enumerate(tasks):
        for j, e in enumerate(experts):
            if e in matrix.scores.get(t, {}):
                data[i, j] = matrix.scores[t][e]
    for j, e in enumerate(experts):
        if e in avg:
            data[-1, j] = avg[e]
    fig, ax = plt.subplots(figsize=(1.6 + 1.7 * max(2, len(experts)), 1.2 + 0.55 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(experts)), labels=experts, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.axhline(len(tasks) - 0.5, color="white", linewidth=3)
    winners = [best_for_task(matrix, t) for t in tasks] + ([best_average(matrix)] if avg else [None])
    for i in range(len(rows)):
        for j, e in enumerate(experts):
            v = data[i, j]
            if np.isnan(v):
                ax.text(j, i, "—", ha="center", va="center", color="grey")
                continue
            n = matrix.counts.get(rows[i], {}).get(e) if i < len(tasks) else None
            label = f"{v:.2f}" + (f"\nn={n}" if n is not None else "")
            ax.text(j, i, label, ha="center", va="center", fontsize=8,
                    color="black" if v > 0.6 else "white", fontweight="bold" if winners[i] == e else "normal")
            if winners[i] == e:
                ax.add_patch(plt.Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, edgecolor="red",
                                           linewidth=2))
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="score")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_confusion(report: ClassificationReport, path: str | Path, title: str = "Classifier confusion matrix",
                   normalize: bool = True) -> Path:
    """Confusion matrix (rows: true task, columns: predicted, incl. an `unknown`/other column when
    present); cells show counts, colour is the row-normalised share."""
    path = Path(path)
    counts = np.array(report.confusion, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * len(report.columns), 2 + 0.5 * len(report.labels)))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1 if normalize else None, aspect="auto")
    ax.set_xticks(range(len(report.columns)), labels=report.columns, rotation=35, ha="right")
    ax.set_yticks(range(len(report.labels)), labels=report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_title(f"{title}\naccuracy {report.accuracy:.3f} · macro-F1 {report.macro_f1:.3f} · n={report.n}",
                 fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
