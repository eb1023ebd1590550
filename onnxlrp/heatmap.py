"""Heatmap pictures: signed relevance of image inputs (red positive, blue negative), bar charts for flat inputs.

The format follows the file's suffix (.png, .jpg, .pdf, .svg, ...); at most MAX_SAMPLES samples are drawn (and
fewer bar charts where their height would pass MAX_HEIGHT), the first ones of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import OnnxLrpError

CMAP = "bwr"          # blue (negative) - white (zero) - red (positive)
DPI = 150
PANEL = 1.5           # inches per image panel
PAIR_GAP = 0.06       # between an image and its relevance
COL_GAP = 0.3         # between samples
ROW_GAP = 0.42        # room for the per-sample title
MARGIN = 0.15
COLORBAR = 1.0        # right-hand strip holding the colour bar and its label
TITLE_LINE = 0.22     # inches per line of the figure title
TITLE_CHAR = 0.085    # inches per character of the figure title (font size 10)
MAX_SAMPLES = 16      # samples drawn at most (the first ones)
MAX_HEIGHT = 12.0     # inches (1800 pixels): bar charts beyond it are left out
BAR = 0.22            # inches per bar
FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "pdf": "pdf", "svg": "svg", "tif": "tiff", "tiff": "tiff",
           "webp": "webp"}


@dataclass
class Layout:
    """Where things ended up in the PNG: size (width, height) and panel boxes (left, top, right, bottom) in pixels."""

    size: tuple
    relevance_panels: list = field(default_factory=list)
    image_panels: list = field(default_factory=list)
    samples: int = 0          # samples drawn
    total: int = 0            # samples in the batch
    title: str = ""           # the figure title as drawn (before wrapping)
    labels: list = field(default_factory=list)   # a plot's tick labels


def heatmap_format(path: str, option: str = "--heatmap") -> str:
    """The picture format a file's suffix asks for (png, jpeg, pdf, svg, tiff, webp); any other is refused."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        what = f"'.{suffix}'" if suffix else "a file without a suffix"
        raise OnnxLrpError(f"cannot write {option} {path}: onnxlrp writes {', '.join('.' + k for k in FORMATS)} "
                           f"pictures (the suffix sets the format), not {what}")
    return FORMATS[suffix]


def image_layout(shape: Sequence[int]) -> Optional[str]:
    """'NCHW', 'NHWC' or 'NHW' for image-shaped batches, None for flat/tabular (N, F) ones."""
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        first, last = int(shape[1]), int(shape[3])
        if last <= 4 < first:
            return "NHWC"
        if first <= 4 and last <= 4 and last < first:
            return "NHWC"
        return "NCHW"  # channels first is ONNX's convention; also for feature maps with many channels
    raise OnnxLrpError(f"cannot draw a heatmap for an input of rank {len(shape)} (shape {tuple(shape)}): "
                       f"expected (N, F), (N, H, W), (N, C, H, W) or (N, H, W, C)")


def channel_sum(relevance: np.ndarray, layout: str) -> np.ndarray:
    """Signed relevance summed over channels: (N, H, W)."""
    rel = np.asarray(relevance, dtype=np.float64)
    if layout == "NCHW":
        return rel.sum(axis=1)
    if layout == "NHWC":
        return rel.sum(axis=3)
    return rel


def display_images(inputs: np.ndarray, layout: str) -> np.ndarray:
    """Inputs as displayable pictures: (N, H, W) grey or (N, H, W, 3) RGB, each scaled to [0, 1]."""
    x = np.asarray(inputs, dtype=np.float64)
    if layout == "NCHW":
        x = np.moveaxis(x, 1, -1)
    elif layout == "NHW":
        x = x[..., None]
    x = x[..., :3] if x.shape[-1] >= 3 else x.mean(axis=-1, keepdims=True)
    low = x.reshape(len(x), -1).min(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    high = x.reshape(len(x), -1).max(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    x = (x - low) / np.where(high > low, high - low, 1.0)
    return x[..., 0] if x.shape[-1] == 1 else x


def ink_on_dark(picture: np.ndarray) -> bool:
    """True for a grey picture with a dark border (a digit: ink on black), drawn reversed as ink on paper."""
    if picture.ndim != 2:
        return False
    border = np.concatenate([picture[0], picture[-1], picture[:, 0], picture[:, -1]])
    return float(np.mean(border)) < 0.5


def grey_paper(picture: np.ndarray) -> np.ndarray:
    """A picture as grey values in [0, 1] with light paper: RGB as luminance, ink-on-dark grey pictures reversed."""
    grey = picture @ np.array([0.299, 0.587, 0.114]) if picture.ndim == 3 else picture
    return 1.0 - grey if ink_on_dark(grey) else grey


def _title_lines(title: str, width: float) -> list:
    """The figure title wrapped on word boundaries to a figure `width` inches wide."""
    import textwrap
    return textwrap.wrap(title, width=max(int((width - 0.3) / TITLE_CHAR), 20)) if title else []


def _figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _box(fig, ax) -> tuple:
    """An axes' box in pixels, origin at the top left: (left, top, right, bottom)."""
    x0, y0, x1, y1 = ax.get_position().extents
    w, h = fig.get_size_inches() * fig.dpi
    return (x0 * w, (1 - y1) * h, x1 * w, (1 - y0) * h)


def _save(fig, path: str) -> None:
    """Write the figure in the format its suffix asks for (exact figure size, no tight cropping)."""
    target = Path(path)
    fmt = heatmap_format(str(target), "picture")
    if not target.parent.exists():
        raise OnnxLrpError(f"folder {target.parent} does not exist")
    try:
        fig.savefig(str(target), dpi=DPI, format=fmt, **({"pil_kwargs": {"quality": 95}} if fmt == "jpeg" else {}))
    except OSError as exc:
        raise OnnxLrpError(f"cannot write {target}: {exc.strerror or exc}") from None


def save_image_heatmaps(path: str, relevance: np.ndarray, inputs: Optional[np.ndarray] = None, *,
                        titles: Optional[Sequence[str]] = None, overlay: bool = False, columns: int = 4,
                        image_cmap: Optional[str] = None, title: str = "",
                        max_samples: Optional[int] = None) -> Layout:
    """Grid of signed relevance maps (each beside its input, or alpha-blended over it in grey with overlay),
    symmetric colour limits, one colour bar, the first max_samples samples. Grey inputs with a dark border (digits)
    are drawn as ink on paper unless image_cmap says otherwise."""
    layout = image_layout(relevance.shape)
    if layout is None:
        raise OnnxLrpError(f"relevance of shape {tuple(relevance.shape)} is not image-shaped")
    total = int(relevance.shape[0])
    n = max(1, min(total, MAX_SAMPLES if max_samples is None else max_samples))
    maps = channel_sum(np.asarray(relevance)[:n], layout)
    pictures = display_images(np.asarray(inputs)[:n], layout) if inputs is not None else None
    h, w = maps.shape[1:]
    scale = np.abs(maps).reshape(n, -1).max(axis=1)
    per_sample = n > 1
    shown = maps / np.where(scale > 0, scale, 1.0)[:, None, None] if per_sample else maps
    vmax = 1.0 if per_sample else float(scale[0]) or 1.0
    side = pictures is not None and not overlay
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    ph, pw = (PANEL * h / max(h, w), PANEL * w / max(h, w))
    block = pw * (2 if side else 1) + (PAIR_GAP if side else 0)
    width = 2 * MARGIN + cols * block + (cols - 1) * COL_GAP + COLORBAR
    if total > n:
        title = f"{title} (the first {n} of {total} samples)" if title else f"the first {n} of {total} samples"
    lines = _title_lines(title, width)
    top_space = MARGIN + TITLE_LINE * len(lines) + (0.1 if lines else 0)
    height = top_space + rows * (ph + ROW_GAP) + MARGIN
    fig = _figure(width, height)
    result = Layout(size=tuple(fig.canvas.get_width_height()), samples=n, total=total, title=title)
    from matplotlib import colormaps
    cmap = colormaps[CMAP]
    for i in range(n):
        r, c = divmod(i, cols)
        left = MARGIN + c * (block + COL_GAP)
        bottom = height - top_space - r * (ph + ROW_GAP) - ROW_GAP - ph + 0.12
        if side:
            ax_img = fig.add_axes((left / width, bottom / height, pw / width, ph / height))
            _show_picture(ax_img, pictures[i], image_cmap)
            result.image_panels.append(_box(fig, ax_img))
            left += pw + PAIR_GAP
        ax = fig.add_axes((left / width, bottom / height, pw / width, ph / height))
        if overlay and pictures is not None:
            _show_overlay(ax, pictures[i], shown[i] / vmax, cmap)
        else:
            ax.imshow(shown[i], cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_linewidth(0.5)
        result.relevance_panels.append(_box(fig, ax))
        if titles is not None and i < len(titles):
            centre = (MARGIN + c * (block + COL_GAP) + block / 2) / width
            fig.text(centre, (bottom + ph + 0.06) / height, titles[i], ha="center", va="bottom", fontsize=9)
    _colorbar(fig, width, height, top_space, vmax, per_sample)
    if lines:
        fig.text(0.5, 1 - MARGIN / height, "\n".join(lines), ha="center", va="top", fontsize=10,
                 linespacing=1.3)
    _save(fig, path)
    return result


def _show_picture(ax, picture: np.ndarray, cmap: Optional[str]) -> None:
    """An input picture without ticks: RGB as is, grey through cmap (default: ink on paper for a dark border)."""
    if picture.ndim == 2:
        cmap = cmap or ("gray_r" if ink_on_dark(picture) else "gray")
        ax.imshow(picture, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(picture, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)


def _show_overlay(ax, picture: np.ndarray, values: np.ndarray, cmap) -> None:
    """The picture in light grey (paper white, ink dark grey) under the relevance in full red (for) and blue
    (against), alpha-blended with opacity |relevance| / max."""
    ax.imshow(grey_paper(picture), cmap="gray", vmin=-1.0, vmax=1.0, interpolation="nearest")
    strength = np.clip(np.abs(values), 0.0, 1.0)
    rgba = np.where(values[..., None] >= 0, np.array(cmap(1.0)), np.array(cmap(0.0)))
    rgba[..., 3] = 0.85 * strength ** 0.8
    ax.imshow(rgba, interpolation="nearest")


def _colorbar(fig, width: float, height: float, top_space: float, vmax: float, per_sample: bool) -> None:
    """One colour bar at the right: relevance / max |relevance| per sample, or absolute for a single sample."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    bar_height = min(height - top_space - MARGIN - ROW_GAP + 0.12, 3.0)
    ax = fig.add_axes(((width - COLORBAR + 0.15) / width, (height - top_space - ROW_GAP + 0.12 - bar_height) / height,
                       0.15 / width, bar_height / height))
    mappable = ScalarMappable(norm=Normalize(-vmax, vmax), cmap=colormaps[CMAP])
    bar = fig.colorbar(mappable, cax=ax)
    bar.ax.tick_params(labelsize=8)
    bar.set_label("relevance /\nmax |relevance| per sample" if per_sample else "relevance", fontsize=8)


def save_feature_bars(path: str, relevance: np.ndarray, *, names: Optional[Sequence[str]] = None, top: int = 10,
                      titles: Optional[Sequence[str]] = None, columns: int = 4, title: str = "",
                      max_samples: Optional[int] = None) -> Layout:
    """Per sample, a horizontal bar chart of the top features by |relevance| (red positive, blue negative); the
    first samples only, as many as fit in max_samples and MAX_HEIGHT."""
    rel = np.asarray(relevance, dtype=np.float64).reshape(len(relevance), -1)
    total, features = rel.shape
    if names is not None and len(names) != features:
        raise OnnxLrpError(f"got {len(names)} feature names for {features} features")
    labels = list(names) if names is not None else [f"feature {j}" for j in range(features)]
    k = max(1, min(top, features))
    panel_w, panel_h = 2.4, BAR * k + 0.25
    row_h = panel_h + ROW_GAP + 0.3
    max_samples = MAX_SAMPLES if max_samples is None else max_samples
    cols = max(1, min(columns, total, max_samples))
    rows_fit = max(1, int((MAX_HEIGHT - 2 * MARGIN - 3 * TITLE_LINE) // row_h))
    n = max(1, min(total, max_samples, cols * rows_fit))
    rows = -(-n // cols)
    shown = [np.argsort(-np.abs(rel[i]), kind="stable")[:k] for i in range(n)]
    label_w = 0.15 + 0.062 * max(len(labels[j]) for order in shown for j in order)
    width = 2 * MARGIN + cols * (label_w + panel_w) + (cols - 1) * COL_GAP + 0.1
    if total > n:
        title = f"{title} (the first {n} of {total} samples)" if title else f"the first {n} of {total} samples"
    lines = _title_lines(title, width)
    top_space = MARGIN + TITLE_LINE * len(lines) + (0.1 if lines else 0)
    height = top_space + rows * row_h + MARGIN
    fig = _figure(width, height)
    result = Layout(size=tuple(fig.canvas.get_width_height()), samples=n, total=total, title=title)
    from matplotlib import colormaps
    cmap = colormaps[CMAP]
    for i in range(n):
        r, c = divmod(i, cols)
        left = MARGIN + c * (label_w + panel_w + COL_GAP) + label_w
        bottom = height - top_space - r * row_h - ROW_GAP - panel_h + 0.1
        ax = fig.add_axes((left / width, bottom / height, panel_w / width, panel_h / height))
        order = shown[i]
        values = rel[i][order]
        ax.barh(np.arange(k), values, color=[cmap(1.0) if v > 0 else cmap(0.0) for v in values], height=0.7)
        ax.set_yticks(np.arange(k), [labels[j] for j in order], fontsize=8)
        ax.set_ylim(k - 0.5, -0.5)
        ax.axvline(0, color="black", linewidth=0.6)
        limit = float(np.abs(values).max()) or 1.0
        ax.set_xlim(-1.1 * limit, 1.1 * limit)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("relevance", fontsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=9)
        result.relevance_panels.append(_box(fig, ax))
    if lines:
        fig.text(0.5, 1 - MARGIN / height, "\n".join(lines), ha="center", va="top", fontsize=10,
                 linespacing=1.3)
    _save(fig, path)
    return result


def save_heatmap(path: str, relevance: np.ndarray, inputs: Optional[np.ndarray] = None, *,
                 names: Optional[Sequence[str]] = None, titles: Optional[Sequence[str]] = None,
                 overlay: bool = False, top: int = 10, title: str = "", max_samples: Optional[int] = None) -> Layout:
    """Heatmap grid for image-shaped relevance, bar chart of the top features for flat (N, F) relevance; the
    format follows the suffix of path."""
    if image_layout(np.shape(relevance)) is None:
        return save_feature_bars(path, relevance, names=names, top=top, titles=titles, title=title,
                                 max_samples=max_samples)
    return save_image_heatmaps(path, relevance, inputs, titles=titles, overlay=overlay, title=title,
                               max_samples=max_samples)


def save_explanation_heatmaps(path: str, exp, inputs: dict, *, names: Optional[Sequence[str]] = None,
                              overlay: bool = False, top: int = 10, title: str = "", named: Sequence[str] = (),
                              max_samples: Optional[int] = None) -> list:
    """One picture per explained input (path itself for a single input, '<stem>_<input><suffix>' for several):
    [(path, Layout)]. names label the bars of the inputs listed in named (all flat inputs when named is empty)."""
    n = exp.total.shape[0]
    predicted = exp.output.reshape(n, -1).argmax(axis=1)
    titles = [f"#{i}: target {int(exp.target[i])}, predicted {int(predicted[i])}" for i in range(n)]
    target = Path(path)
    written = []
    for name, rel in exp.relevance.items():
        out = target if len(exp.relevance) == 1 else target.with_name(
            f"{target.stem}_{''.join(c if c.isalnum() else '_' for c in name)}{target.suffix}")
        labels = names if (not named or name in named) else None
        layout = save_heatmap(str(out), rel, inputs.get(name), names=labels, titles=titles, overlay=overlay, top=top,
                              title=title, max_samples=max_samples)
        written.append((str(out), layout))
    return written
