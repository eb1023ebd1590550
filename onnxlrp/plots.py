"""The conservation profile as a plot: relevance, bias and stabilizer shares layer by layer."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .heatmap import Layout, _figure, _save
from .render import profile_label
from .tables import ProfileRow

LABEL_CHARS = 28  # node names on the x axis are shortened to this many characters


def save_profile_plot(path: str, rows: Sequence[ProfileRow], title: str = "") -> Layout:
    """Line plot over the node outputs in graph order (means over the batch), each point labelled by its node's
    short name; returns the picture's Layout (size in pixels, title, the x labels)."""
    x = np.arange(len(rows))
    mean = lambda values: np.array([float(np.mean(v)) for v in values])  # noqa: E731
    series = [
        ("relevance at the node output", mean(r.relevance for r in rows), "tab:red", "-", "o"),
        ("on parallel branches", mean(r.elsewhere for r in rows), "tab:orange", "-", "s"),
        ("taken by biases so far", mean(r.bias for r in rows), "tab:blue", "-", "^"),
        ("taken by stabilizers so far", mean(r.stabilizer for r in rows), "tab:gray", "-", "v"),
        ("sum (= total at every layer)", mean(r.sum for r in rows), "black", "--", None),
    ]
    from .names import short_name
    labels = [short_name(profile_label(r), LABEL_CHARS) for r in rows]
    below = 0.6 + 0.05 * max([len(label) for label in labels] + [5])  # rotated labels and the axis title
    width, height = max(6.0, 0.45 * len(rows) + 3.4), 2.9 + below
    fig = _figure(width, height)
    ax = fig.add_axes((0.75 / width, below / height, (width - 0.75 - 2.5) / width, (height - below - 0.4) / height))
    for label, values, color, style, marker in series:
        if label.startswith("on parallel") and not np.any(values):
            continue
        ax.plot(x, values, style, color=color, marker=marker, markersize=4, linewidth=1.4, label=label)
    ax.axhline(float(np.mean(rows[-1].total)) if rows else 0.0, color="black", linewidth=0.6, alpha=0.4)
    ax.set_xticks(x, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_ylabel("relevance (mean over the batch)", fontsize=9)
    ax.set_xlabel("output of node, graph order (input to output)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title, fontsize=10)
    _save(fig, path)
    return Layout(size=tuple(fig.canvas.get_width_height()), title=title, labels=labels)
