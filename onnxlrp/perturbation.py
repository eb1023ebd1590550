"""Perturbation curves: remove an input's features in the order of an attribution and record the explained logit.

Features are the units removed together: single values of a flat (N, F) input, p x p patches over the spatial axes
of an image ((N, H, W), (N, C, H, W), (N, H, W, C); channels together), p consecutive tokens of an integer (N, T)
input. A feature's attribution is the sum over its values. Features are ranked most relevant first (MoRF) or least
relevant first (LeRF), ties in a seeded random order, and removed cumulatively in `steps` steps; a removed value
takes the fill: `mean` (the sample's mean), `zero`, `blur` (the sample under a Gaussian blur), `uniform` (seeded
noise between the sample's minimum and maximum) or, for tokens, the mask token.

- pixel flipping (Bach et al. 2015; Quantus's PixelFlipping): every feature is removed, in `steps` steps of equal
  size (`steps` >= the number of features removes one per step);
- region perturbation (Samek et al. 2017; Quantus's RegionPerturbation): one region (patch) per step, `steps`
  regions in all.

The curve holds the explained logit at step k = 0 (the unperturbed input) .. S. All steps of many samples go to
onnxruntime as one batch (the model's own forward pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .errors import OnnxLrpError

METRICS = ("pixel_flipping", "region_perturbation")
FILLS = ("mean", "zero", "blur", "uniform")
DEFAULT_FILL = {"pixel_flipping": "mean", "region_perturbation": "uniform"}
ROW_BYTES = 64 << 20  # perturbed copies held at once, at most


@dataclass(frozen=True)
class Features:
    """How one input is cut into features: the feature id of every value of a sample, and the layout's name."""

    ids: np.ndarray   # int64, the per-sample shape of the input: feature id of each value
    count: int        # number of features
    kind: str         # "flat", "image" or "tokens"
    spatial: tuple    # image: (H axis, W axis) in the per-sample shape; () otherwise


def image_axes(shape: tuple) -> tuple:
    """(H axis, W axis) of a per-sample image shape (H, W), (C, H, W) or (H, W, C)."""
    from .heatmap import image_layout
    layout = image_layout((1,) + tuple(shape))
    return {"NHW": (0, 1), "NCHW": (1, 2), "NHWC": (0, 1)}[layout]


def features(shape: tuple, integer: bool, patch: int) -> Features:
    """The features of a per-sample input shape: p consecutive tokens (integer input), p values (flat) or p x p
    patches over the spatial axes, channels together (image)."""
    if patch < 1:
        raise OnnxLrpError(f"--patch must be at least 1, got {patch}")
    shape = tuple(int(d) for d in shape)
    if integer:
        if len(shape) != 1:
            raise OnnxLrpError(f"an integer input is perturbed as tokens and must be (N, T); got per-sample shape "
                               f"{shape}")
        ids = np.arange(shape[0]) // patch
        return Features(ids, int(ids.max()) + 1, "tokens", ())
    if len(shape) == 1:
        ids = np.arange(shape[0]) // patch
        return Features(ids, int(ids.max()) + 1, "flat", ())
    if len(shape) not in (2, 3):
        raise OnnxLrpError(f"cannot cut an input of per-sample shape {shape} into features: expected (F,), (H, W), "
                           f"(C, H, W) or (H, W, C), or integer tokens (T,)")
    h_axis, w_axis = image_axes(shape)
    height, width = shape[h_axis], shape[w_axis]
    across = -(-width // patch)
    grid = (np.arange(height)[:, None] // patch) * across + (np.arange(width)[None, :] // patch)
    expand = [slice(None) if a in (h_axis, w_axis) else None for a in range(len(shape))]
    ids = np.broadcast_to(grid[tuple(expand)], shape).astype(np.int64)
    return Features(np.ascontiguousarray(ids), int(ids.max()) + 1, "image", (h_axis, w_axis))


def feature_scores(attribution: np.ndarray, feats: Features) -> np.ndarray:
    """(N, G): the attribution summed over each feature's values."""
    n = attribution.shape[0]
    flat = np.asarray(attribution, dtype=np.float64).reshape(n, -1)
    ids = feats.ids.reshape(-1)
    return np.stack([np.bincount(ids, weights=row, minlength=feats.count) for row in flat])


def ranking(scores: np.ndarray, most_relevant_first: bool, rng: np.random.Generator) -> np.ndarray:
    """(N, G) rank of every feature (0 = removed first): by score, descending (MoRF) or ascending (LeRF), ties in
    a random order drawn from rng."""
    n, count = scores.shape
    ranks = np.empty((n, count), dtype=np.int64)
    for i in range(n):
        key = -scores[i] if most_relevant_first else scores[i]
        order = np.lexsort((rng.permutation(count), key))
        ranks[i, order] = np.arange(count)
    return ranks


def schedule(metric: str, count: int, steps: int) -> np.ndarray:
    """(G,) the step (1..S) at which the feature of each rank is removed, S + 1 for never: pixel flipping splits all
    G features into S steps of (nearly) equal size; region perturbation removes one per step, S of them."""
    if steps < 1:
        raise OnnxLrpError(f"--steps must be at least 1, got {steps}")
    if metric not in METRICS:
        raise OnnxLrpError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    steps = min(steps, count)
    if metric == "region_perturbation":
        sizes = np.ones(steps, dtype=np.int64)
    else:
        edges = np.floor(np.linspace(0, count, steps + 1) + 0.5).astype(np.int64)
        sizes = np.diff(edges)
    at = np.repeat(np.arange(1, steps + 1), sizes)
    return np.concatenate([at, np.full(count - at.size, steps + 1, dtype=np.int64)])


def gaussian_blur(x: np.ndarray, axes: tuple, sigma: float) -> np.ndarray:
    """x blurred along `axes` by a Gaussian of standard deviation sigma, truncated at 3 sigma, values beyond the
    border mirrored (scipy.ndimage.gaussian_filter's mode 'reflect', truncate 3)."""
    out = np.asarray(x, dtype=np.float64)
    if sigma <= 0:
        return out
    radius = max(1, int(3.0 * sigma + 0.5))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="symmetric")
        size = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + size), axis=axis) for k, w in enumerate(taps))
    return out


def blur_sigma(feats: Features, shape: tuple, sigma: Optional[float]) -> float:
    """The blur's sigma: as given, else an eighth of the image's smaller side (at least one pixel)."""
    if sigma is not None:
        return float(sigma)
    return max(1.0, min(shape[a] for a in feats.spatial) / 8.0)


def fill_values(x: np.ndarray, feats: Features, fill: str, rng: np.random.Generator,
                mask_token: Optional[int] = None, sigma: Optional[float] = None) -> np.ndarray:
    """What each value becomes once removed, shaped like x (N, ...): the fill per sample."""
    n = x.shape[0]
    if feats.kind == "tokens":
        if mask_token is None:
            raise OnnxLrpError("the perturbed input holds integer tokens: give the token that replaces them "
                               "(--mask-token ID / mask_token=ID)")
        return np.full_like(x, mask_token)
    if fill not in FILLS:
        raise OnnxLrpError(f"unknown fill {fill!r} (known: {', '.join(FILLS)})")
    flat = x.reshape(n, -1).astype(np.float64)
    shape = (n,) + (1,) * (x.ndim - 1)
    if fill == "zero":
        return np.zeros_like(x)
    if fill == "mean":
        return np.broadcast_to(flat.mean(axis=1).reshape(shape), x.shape).astype(x.dtype)
    if fill == "uniform":
        low, high = flat.min(axis=1).reshape(shape), flat.max(axis=1).reshape(shape)
        return (low + (high - low) * rng.random(x.shape)).astype(x.dtype)
    if feats.kind != "image":
        raise OnnxLrpError("fill 'blur' needs an image input ((N, H, W), (N, C, H, W) or (N, H, W, C))")
    axes = tuple(a + 1 for a in feats.spatial)
    return gaussian_blur(x, axes, blur_sigma(feats, x.shape[1:], sigma)).astype(x.dtype)


Forward = Callable[[dict], np.ndarray]  # feeds -> (rows, classes) explained logits


def curves(forward: Forward, inputs: dict, name: str, fill: np.ndarray, removed_at: np.ndarray, steps: int,
           targets: np.ndarray) -> np.ndarray:
    """(N, S + 1) explained logit at steps 0..S; removed_at (N, ...) is, per value, the step that removes it.
    All steps of as many samples as fit in ROW_BYTES go to `forward` as one batch; other inputs are repeated."""
    x = inputs[name]
    n = x.shape[0]
    ks = np.arange(steps + 1)
    per_sample = (steps + 1) * max(x[0].nbytes, 1)
    chunk = max(1, min(n, ROW_BYTES // per_sample))
    out = np.empty((n, steps + 1), dtype=np.float64)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        m = part.stop - part.start
        gone = removed_at[part][:, None] <= ks.reshape((1, -1) + (1,) * (x.ndim - 1))
        batch = np.where(gone, fill[part][:, None], x[part][:, None]).reshape((m * (steps + 1),) + x.shape[1:])
        feeds = {k: (batch if k == name else np.repeat(v[part], steps + 1, axis=0)) for k, v in inputs.items()}
        logits = forward(feeds).reshape(m, steps + 1, -1)
        out[part] = np.take_along_axis(logits, targets[part].reshape(m, 1, 1), axis=2)[..., 0]
    return out


def removal_steps(scores: np.ndarray, feats: Features, metric: str, steps: int, most_relevant_first: bool,
                  rng: np.random.Generator) -> tuple:
    """(removed_at (N, ...) per value, S): the step that removes each value of each sample."""
    ranks = ranking(scores, most_relevant_first, rng)
    at = schedule(metric, feats.count, steps)
    per_feature = at[ranks]                                   # (N, G)
    return per_feature[:, feats.ids], min(steps, feats.count)


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under each curve (N, S + 1) by the trapezoid rule, the step axis scaled to [0, 1]."""
    steps = curve.shape[-1] - 1
    if steps == 0:
        return curve[..., 0].astype(np.float64)
    return ((curve[..., 1:] + curve[..., :-1]) * 0.5).sum(axis=-1) / steps


def removed_fraction(metric: str, count: int, steps: int) -> np.ndarray:
    """(S + 1,) the fraction of the features removed after each step (0 first)."""
    at = schedule(metric, count, steps)
    done = np.array([np.count_nonzero(at <= k) for k in range(min(steps, count) + 1)], dtype=np.float64)
    return done / count
