"""Token relevance for people: the tokens coloured by relevance on a terminal, and drawn into a PNG (red for the
explained logit, blue against, white for nothing; one scale per sample, symmetric around zero)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError

RED, BLUE = (214, 39, 40), (31, 119, 180)


def load_tokens(path: str) -> list:
    """A tokens file: one token per line; blank lines separate samples (one block serves every sample)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"tokens file not found: {file}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read tokens file {file}: {exc}") from None
    blocks, block = [], []
    for line in text.splitlines():
        if line.strip() == "":
            if block:
                blocks.append(block)
            block = []
        else:
            block.append(line.rstrip("\n"))
    if block:
        blocks.append(block)
    if not blocks:
        raise InputError(f"tokens file {file} holds no tokens")
    return blocks


def tokens_for(blocks: Optional[list], ids: np.ndarray) -> list:
    """The token strings of every sample: from the tokens file (one block per sample, or one for all), else the
    ids themselves; each sample's list has as many entries as its ids."""
    n, length = ids.shape[0], ids.shape[1]
    result = []
    for i in range(n):
        if blocks is None:
            result.append([f"#{int(v)}" for v in ids[i]])
            continue
        block = blocks[i] if len(blocks) > 1 else blocks[0]
        if len(blocks) > 1 and len(blocks) != n:
            raise InputError(f"the tokens file has {len(blocks)} samples (blocks), the batch has {n}")
        if len(block) != length:
            raise InputError(f"the tokens file gives {len(block)} tokens for sample {i}, its ids have {length}")
        result.append(block)
    return result


def shade(value: float, scale: float) -> tuple:
    """The RGB colour of a relevance: white at 0, red (positive) or blue (negative) at +-scale."""
    t = 0.0 if scale <= 0 else min(abs(value) / scale, 1.0)
    base = RED if value > 0 else BLUE
    return tuple(int(round(255 + t * (c - 255))) for c in base)


def coloured_line(tokens: Sequence[str], relevance: np.ndarray) -> str:
    """The tokens with their relevance as background colour (ANSI 24-bit; click.echo strips it off a terminal)
    and, after each, its value in brackets."""
    import click
    scale = float(np.max(np.abs(relevance))) if relevance.size else 0.0
    parts = []
    for token, value in zip(tokens, relevance):
        colour = shade(float(value), scale)
        dark = sum(colour) < 3 * 150
        parts.append(click.style(f"{token}", bg=colour, fg="white" if dark else "black") + f"[{value:+.3g}]")
    return " ".join(parts)


def save_token_heatmap(path: str, tokens: list, relevance: np.ndarray, titles: Optional[list] = None,
                       width: float = 9.0) -> Path:
    """A PNG: every sample's tokens in reading order on boxes coloured by relevance (wrapped at `width` inches),
    a title line per sample."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    line_h, char_w, pad = 0.32, 0.085, 0.08
    layouts, heights = [], []
    for sample in tokens:
        x, rows, placed = 0.0, 0, []
        for token in sample:
            w = max(len(token), 1) * char_w + 2 * pad
            if x + w > width and x > 0:
                x, rows = 0.0, rows + 1
            placed.append((x, rows, w))
            x += w + pad
        layouts.append(placed)
        heights.append((rows + 1) * line_h + 0.45)
    fig = plt.figure(figsize=(width + 0.4, sum(heights) + 0.2))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(-0.2, width + 0.2)
    total = sum(heights) + 0.2
    ax.set_ylim(total, 0)
    ax.axis("off")
    top = 0.1
    for i, (sample, placed) in enumerate(zip(tokens, layouts)):
        values = relevance[i]
        scale = float(np.max(np.abs(values))) if values.size else 0.0
        ax.text(0, top + 0.18, titles[i] if titles else f"sample {i}", fontsize=8, va="center", color="0.3")
        for token, value, (x, row, w) in zip(sample, values, placed):
            y = top + 0.45 + row * line_h
            colour = tuple(c / 255 for c in shade(float(value), scale))
            ax.add_patch(plt.Rectangle((x, y - line_h / 2 + 0.03), w, line_h - 0.06, facecolor=colour,
                                       edgecolor="0.85", linewidth=0.5))
            dark = sum(colour) < 1.5
            ax.text(x + w / 2, y, token, fontsize=9, family="monospace", ha="center", va="center",
                    color="white" if dark else "black")
        top += heights[i]
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
