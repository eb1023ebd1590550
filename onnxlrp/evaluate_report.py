"""The evaluation as records (CSV, JSON), a rich table for terminals, and the curves as a PNG."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .evaluate import Evaluation

METRIC_TITLES = {"pixel_flipping": "pixel flipping", "region_perturbation": "region perturbation"}


def score_records(evaluation: Evaluation) -> list:
    """One dict per method: means over the samples and the half-widths of their 95 % confidence intervals."""
    return [{"method": r.method, "auc_morf": r.auc_morf, "auc_morf_ci": r.auc_morf_ci, "auc_lerf": r.auc_lerf,
             "auc_lerf_ci": r.auc_lerf_ci, "difference": r.difference, "difference_ci": r.difference_ci,
             "input_share": r.input_share, "input_share_ci": r.input_share_ci, "bias_share": r.bias_share,
             "ms_per_sample": r.ms_per_sample, "setup_s": r.setup_s} for r in evaluation.table()]


def settings_record(evaluation: Evaluation) -> dict:
    """What was measured, for the JSON output."""
    return {"metric": evaluation.metric, "fill": evaluation.fill, "patch": evaluation.patch,
            "steps": evaluation.steps, "input": evaluation.input_name, **evaluation.settings,
            "mean_logit": float(np.mean(evaluation.logits))}


def curve_records(evaluation: Evaluation) -> dict:
    """Mean curves per method (the x axis: fraction of the features removed), for the JSON output."""
    return {"fraction_removed": evaluation.fractions.tolist(),
            **{m.name: {"morf": m.morf.mean(axis=0).tolist(), "lerf": m.lerf.mean(axis=0).tolist()}
               for m in evaluation.methods}}


def _pm(value: Optional[float], ci: Optional[float], digits: int = 2, percent: bool = False) -> str:
    """'1.23 ±0.04' ('-' for None)."""
    if value is None or not np.isfinite(value):
        return "-"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    text = f"{scale * value:.{1 if percent else digits}f}{unit}"
    if ci is not None and np.isfinite(ci):
        text += f" ±{scale * ci:.{1 if percent else digits}f}"
    return text


def score_rich_table(evaluation: Evaluation, title: str = ""):
    """A rich Table: AUCs with the half-widths of their 95 % intervals, shares (means), milliseconds per sample."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=escape(title) if title else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    for column in ("AUC MoRF ↓", "AUC LeRF ↑", "LeRF-MoRF ↑", "input share", "bias", "ms/sample"):
        table.add_column(column, justify="right", no_wrap=True)
    for r in evaluation.table():
        bias = "-" if r.bias_share is None else f"{100 * r.bias_share:.1f}%"
        table.add_row(escape(r.method), _pm(r.auc_morf, r.auc_morf_ci), _pm(r.auc_lerf, r.auc_lerf_ci),
                      _pm(r.difference, r.difference_ci), _pm(r.input_share, None, percent=True), bias,
                      f"{r.ms_per_sample:.2f}")
    return table


def describe(evaluation: Evaluation) -> str:
    """One line saying what was measured."""
    s = evaluation.settings
    p = evaluation.patch
    unit = {"tokens": "tokens" if p == 1 else f"groups of {p} tokens",
            "flat": "features" if p == 1 else f"groups of {p} features",
            "image": "pixels" if p == 1 else f"{p}x{p} patches"}[s["feature_kind"]]
    return (f"{METRIC_TITLES[evaluation.metric]} | {s['samples']} samples | {s['features']} {unit} of "
            f"{evaluation.input_name!r}, {evaluation.steps} steps | fill {evaluation.fill} | explained logit: mean "
            f"{float(np.mean(evaluation.logits)):.4g} | AUC: mean logit along the curve, 95 % intervals")


def save_curves(path: str, evaluation: Evaluation, title: str = "") -> tuple:
    """Two panels (MoRF, LeRF): the mean explained logit against the fraction removed, one line per method with
    its 95 % band, and a legend with the AUCs, most faithful (largest LeRF - MoRF) first; returns the PNG size."""
    from .heatmap import _figure, _save
    width, height = 12.5, 4.8
    fig = _figure(width, height)
    axes = [fig.add_axes((0.055, 0.12, 0.3, 0.7)), fig.add_axes((0.405, 0.12, 0.3, 0.7))]
    x = evaluation.fractions
    styles = _styles(evaluation)
    handles = {}
    for ax, order, label in ((axes[0], "morf", "most relevant first (lower is better)"),
                             (axes[1], "lerf", "least relevant first (higher is better)")):
        for m in evaluation.methods:
            curve = getattr(m, order)
            mean = curve.mean(axis=0)
            half = Z95 * curve.std(axis=0, ddof=1) / np.sqrt(len(curve)) if len(curve) > 1 else 0 * mean
            color, style = styles[m.name]
            handles[m.name], = ax.plot(x, mean, style, color=color, linewidth=1.6)
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.12, linewidth=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("fraction of the input removed", fontsize=9)
        ax.set_ylabel("explained logit (mean over samples)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(linewidth=0.4, alpha=0.5)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    rows = sorted(evaluation.table(), key=lambda r: -r.difference)
    width_name = max(len(r.method) for r in rows)
    labels = [f"{r.method:<{width_name}} {r.auc_morf:6.2f} {r.auc_lerf:6.2f} {r.difference:6.2f}" for r in rows]
    legend = fig.legend([handles[r.method] for r in rows], labels, loc="upper left", bbox_to_anchor=(0.72, 0.83),
                        frameon=False, prop={"family": "monospace", "size": 7},
                        title=f"{'method':<{width_name}}   MoRF   LeRF   diff", title_fontproperties={
                            "family": "monospace", "size": 7, "weight": "bold"})
    legend._legend_box.align = "left"
    lines = [title] if title else []
    lines.append(describe(evaluation))
    fig.text(0.055, 0.975, "\n".join(lines), fontsize=9, va="top")
    _save(fig, path)
    return tuple(fig.canvas.get_width_height())


Z95 = 1.959963984540054
BASELINE_STYLES = {"gradient": ("#555555", "--"), "integrated_gradients": ("#8c564b", "--"),
                   "smoothgrad": ("#e377c2", "--"), "random": ("#aaaaaa", ":")}


def _styles(evaluation: Evaluation) -> dict:
    """A colour and line style per method: composites solid in the tab10 colours, baselines dashed."""
    from matplotlib import colormaps
    palette = colormaps["tab10"].colors
    styles, k = {}, 0
    for m in evaluation.methods:
        if m.kind == "baseline" and m.name in BASELINE_STYLES:
            styles[m.name] = BASELINE_STYLES[m.name]
        else:
            styles[m.name] = (palette[[0, 1, 2, 3, 4, 9, 8, 5, 6, 7][k % 10]], "-")
            k += 1
    return styles
