"""PNG plots for evaluation reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exp3rt.artifacts import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: Path, title: str, xlabel: str, ylabel: str, legend: bool = True) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def rating_distributions(
    truth: np.ndarray, pred: np.ndarray, levels: list[float], path: Path, title: str
) -> Path:
    """Side-by-side bars: how often each rating is true and how often it is predicted (rounded)."""
    plt = _plt()
    levels = list(levels)
    t_counts = [int(np.sum(np.isclose(truth, lv))) for lv in levels]
    snapped = (
        np.array([levels[int(np.argmin([abs(p - lv) for lv in levels]))] for p in pred])
        if len(pred)
        else np.array([])
    )
    p_counts = [int(np.sum(np.isclose(snapped, lv))) for lv in levels]
    x = np.arange(len(levels))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(x - 0.2, t_counts, width=0.4, label="true")
    ax.bar(x + 0.2, p_counts, width=0.4, label="predicted (nearest level)")
    ax.set_xticks(x, [f"{lv:g}" for lv in levels])
    return _finish(plt, fig, ax, path, title, "rating", "pairs")


def confusion(truth: np.ndarray, pred: np.ndarray, levels: list[float], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix of true rating × predicted rating (nearest level)."""
    plt = _plt()
    levels = list(levels)
    idx = {lv: i for i, lv in enumerate(levels)}
    m = np.zeros((len(levels), len(levels)))
    for t, p in zip(truth, pred, strict=True):
        ti = idx.get(float(t), int(np.argmin([abs(t - lv) for lv in levels])))
        pi = int(np.argmin([abs(p - lv) for lv in levels]))
        m[ti, pi] += 1
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(range(len(levels)), [f"{lv:g}" for lv in levels])
    ax.set_yticks(range(len(levels)), [f"{lv:g}" for lv in levels])
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _finish(plt, fig, ax, path, title, "predicted", "true", legend=False)


def calibration(truth: np.ndarray, expected: np.ndarray, path: Path, title: str, bins: int = 8) -> Path:
    """Mean true rating per bin of the expected rating, against the diagonal."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if len(expected):
        edges = np.linspace(expected.min(), expected.max() + 1e-9, bins + 1)
        which = np.digitize(expected, edges) - 1
        xs, ys = [], []
        for b in range(bins):
            sel = which == b
            if sel.any():
                xs.append(float(expected[sel].mean()))
                ys.append(float(truth[sel].mean()))
        ax.plot(xs, ys, "o-", label="mean true rating")
        lo, hi = float(min(truth.min(), expected.min())), float(max(truth.max(), expected.max()))
        ax.plot([lo, hi], [lo, hi], "--", color="grey", label="ideal")
    return _finish(plt, fig, ax, path, title, "expected rating (readout)", "true rating")


def metric_bars(
    labels: list[str], metrics: list[str], values: list[list[float | None]], path: Path, title: str
) -> Path:
    """One panel per metric (their scales differ: RMSE, nDCG, seconds), one horizontal bar per run;
    a missing value gets no bar and a "–" (never a zero-length bar that reads as 0)."""
    plt = _plt()
    n = max(1, len(metrics))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    height = max(2.2, 0.35 * len(labels) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, height * rows), squeeze=False)
    y = np.arange(len(labels))
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= len(metrics):
            ax.axis("off")
            continue
        col = [row[j] for row in values]
        shown = [v if v is not None else 0.0 for v in col]
        bars = ax.barh(y, shown, color=[f"C{i % 10}" for i in range(len(labels))])
        for bar, v in zip(bars, col, strict=True):
            if v is None:
                bar.set_visible(False)
                ax.text(0, bar.get_y() + bar.get_height() / 2, " –", va="center")
            else:
                ax.text(
                    bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:.3g}", va="center", fontsize=8
                )
        ax.set_yticks(y, labels if j % cols == 0 else [""] * len(labels), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(metrics[j], fontsize=9)
        ax.margins(x=0.25)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no metrics", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
