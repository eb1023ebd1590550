"""The conservation profile as a plot: relevance, bias and stabilizer shares layer by layer."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .heatmap import _figure, _save
from .tables import ProfileRow


def save_profile_plot(path: str, rows: Sequence[ProfileRow], title: str = "") -> tuple:
    """Line plot over tensors in graph order (means over the batch); returns the PNG size (width, height)."""
    x = np.arange(len(rows))
    mean = lambda values: np.array([float(np.mean(v)) for v in values])  # noqa: E731
    series = [
        ("relevance at the tensor", mean(r.relevance for r in rows), "tab:red", "-", "o"),
        ("on parallel branches", mean(r.elsewhere for r in rows), "tab:orange", "-", "s"),
        ("taken by biases so far", mean(r.bias for r in rows), "tab:blue", "-", "^"),
        ("taken by stabilizers so far", mean(r.stabilizer for r in rows), "tab:gray", "-", "v"),
        ("sum (= total at every layer)", mean(r.sum for r in rows), "black", "--", None),
    ]
    width, height = max(6.0, 0.45 * len(rows) + 3.4), 4.2
    fig = _figure(width, height)
    ax = fig.add_axes((0.75 / width, 1.3 / height, (width - 0.75 - 2.5) / width, (height - 1.3 - 0.4) / height))
    for label, values, color, style, marker in series:
        if label.startswith("on parallel") and not np.any(values):
            continue
        ax.plot(x, values, style, color=color, marker=marker, markersize=4, linewidth=1.4, label=label)
    ax.axhline(float(np.mean(rows[-1].total)) if rows else 0.0, color="black", linewidth=0.6, alpha=0.4)
    ax.set_xticks(x, [f"{r.op}" if r.node else "input" for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relevance (mean over the batch)", fontsize=9)
    ax.set_xlabel("tensor, graph order (input to output)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)
    return tuple(fig.canvas.get_width_height())
