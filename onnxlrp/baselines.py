"""Gradient baselines as batched runs of the `gradient` composite's graph (see gradient.py), and a random one.

- gradient x input: x * df/dx, the gradient composite's relevance;
- Integrated Gradients (Sundararajan et al. 2017): (x - x0) * mean over k of df/dx at x0 + a_k (x - x0), with
  a_k = (k + 1/2) / m, k = 0 .. m - 1 (the midpoint rule), baseline x0 zero or the blurred input;
- SmoothGrad x input (Smilkov et al. 2017): x * mean over m noisy copies of df/dx at x + e, e ~ N(0, s^2),
  s = noise * (max(x) - min(x)) per sample;
- random: seeded standard normal values, a ranking that knows nothing of the model.

Every interpolation point or noisy copy of every sample in a chunk goes to onnxruntime as one batch, each with the
clean sample's target.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .errors import OnnxLrpError
from .perturbation import Features, gaussian_blur, blur_sigma

BASELINES = ("gradient", "integrated_gradients", "smoothgrad", "random")
IG_BASELINES = ("zero", "blur")


def _gradient_of(explainer, inputs: dict, name: str, targets: np.ndarray) -> np.ndarray:
    """df/dx of input `name` for a batch (the gradient composite's raw gradient output)."""
    exp = explainer.explain(inputs, targets)
    if name not in exp.gradient:
        raise OnnxLrpError(f"the model gives no gradient for input {name!r} (an integer input has none)")
    return exp.gradient[name]


def mean_gradient(explainer, inputs: dict, name: str, points: np.ndarray, targets: np.ndarray,
                  batch_rows: int) -> np.ndarray:
    """(N, ...) the mean over m of df/dx at points (N, m, ...) (input `name`; other inputs as given), computed
    in batches of at most batch_rows rows (whole samples)."""
    n, m = points.shape[:2]
    chunk = max(1, batch_rows // m)
    out = np.empty((n,) + points.shape[2:], dtype=np.float64)
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        rows = points[part].reshape((-1,) + points.shape[2:])
        feeds = {k: (rows if k == name else np.repeat(v[part], m, axis=0)) for k, v in inputs.items()}
        grads = _gradient_of(explainer, feeds, name, np.repeat(targets[part], m))
        out[part] = grads.reshape(points[part].shape).astype(np.float64).mean(axis=1)
    return out


def ig_reference_point(x: np.ndarray, baseline: str, feats: Optional[Features] = None,
                       sigma: Optional[float] = None) -> np.ndarray:
    """Integrated Gradients' baseline x0: zeros, or x under the Gaussian blur of the `blur` fill."""
    if baseline == "zero":
        return np.zeros_like(x)
    if baseline == "blur":
        if feats is None or feats.kind != "image":
            raise OnnxLrpError("the blurred Integrated Gradients baseline needs an image input")
        axes = tuple(a + 1 for a in feats.spatial)
        return gaussian_blur(x, axes, blur_sigma(feats, x.shape[1:], sigma)).astype(x.dtype)
    raise OnnxLrpError(f"unknown Integrated Gradients baseline {baseline!r} (known: {', '.join(IG_BASELINES)})")


def ig_alphas(steps: int) -> np.ndarray:
    """The midpoint rule's interpolation coefficients (k + 1/2) / m."""
    if steps < 1:
        raise OnnxLrpError(f"--ig-steps must be at least 1, got {steps}")
    return (np.arange(steps) + 0.5) / steps


def integrated_gradients(explainer, inputs: dict, name: str, targets: np.ndarray, steps: int = 32,
                         x0: Optional[np.ndarray] = None, batch_rows: int = 1024) -> np.ndarray:
    """(x - x0) * mean_k df/dx(x0 + a_k (x - x0)) for input `name` (x0 zeros unless given)."""
    x = np.asarray(inputs[name])
    x0 = np.zeros_like(x) if x0 is None else x0
    alphas = ig_alphas(steps).reshape((1, -1) + (1,) * (x.ndim - 1))
    points = (x0[:, None] + alphas * (x - x0)[:, None]).astype(x.dtype)
    return (x - x0).astype(np.float64) * mean_gradient(explainer, inputs, name, points, targets, batch_rows)


def smoothgrad_noise(x: np.ndarray, samples: int, level: float, seed: int) -> np.ndarray:
    """(N, m, ...) Gaussian noise, standard deviation level * (max - min) of each sample (seeded)."""
    if samples < 1:
        raise OnnxLrpError(f"--smoothgrad-samples must be at least 1, got {samples}")
    n = x.shape[0]
    span = np.ptp(x.reshape(n, -1).astype(np.float64), axis=1).reshape((n, 1) + (1,) * (x.ndim - 1))
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, samples) + x.shape[1:]) * (level * span)


def smoothgrad(explainer, inputs: dict, name: str, targets: np.ndarray, samples: int = 16, level: float = 0.1,
               seed: int = 0, batch_rows: int = 1024) -> np.ndarray:
    """x * the mean of df/dx over `samples` noisy copies of x (SmoothGrad x input)."""
    x = np.asarray(inputs[name])
    points = (x[:, None] + smoothgrad_noise(x, samples, level, seed)).astype(x.dtype)
    return x.astype(np.float64) * mean_gradient(explainer, inputs, name, points, targets, batch_rows)


def random_attribution(shape: tuple, seed: int) -> np.ndarray:
    """Seeded standard normal values: the ranking of an explanation that knows nothing of the model."""
    return np.random.default_rng(seed).standard_normal(shape)
