"""The data-set bias table as a picture: shares of the explained logit, terms x groups, on a diverging scale."""
from __future__ import annotations

import numpy as np

from ..heatmap import _figure, _save
from .report import DatasetReport


def save_report_plot(path: str, report: DatasetReport, max_groups: int = 20) -> tuple:
    """A grid of shares (percent, annotated) with 'all' first; returns the PNG size (width, height)."""
    groups = report.groups[: max_groups + 1]
    shares = np.array([[g.share[i] for g in groups] for i in range(len(report.terms))]) * 100
    rows, cols = shares.shape
    left, top, bottom, cell_w, cell_h = 2.4, 0.75, 0.45, 0.75, 0.32
    width, height = left + cols * cell_w + 0.3, bottom + rows * cell_h + top
    fig = _figure(width, height)
    ax = fig.add_axes((left / width, bottom / height, cols * cell_w / width, rows * cell_h / height))
    limit = float(np.nanmax(np.abs(shares))) if np.isfinite(shares).any() else 1.0
    ax.imshow(np.nan_to_num(shares), cmap="bwr", vmin=-limit, vmax=limit, aspect="auto")
    for r in range(rows):
        for c in range(cols):
            if np.isfinite(shares[r, c]):
                ax.text(c, r, f"{shares[r, c]:.1f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(rows), [t.name if len(t.name) <= 32 else "..." + t.name[-29:] for t in report.terms],
                  fontsize=7)
    ax.set_xticks(range(cols), [f"{g.group}\nn={g.samples}" for g in groups], fontsize=7)
    ax.xaxis.tick_top()
    settings = report.manifest["settings"]
    ax.set_xlabel(f"share of the explained logit in % (mean over samples), by {report.by}; "
                  f"composite {settings['composite']}", fontsize=8)
    _save(fig, path)
    return tuple(fig.canvas.get_width_height())
