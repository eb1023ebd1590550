"""Which explanation is faithful? Perturbation metrics for composites and gradient baselines on one ONNX model.

    evaluation = onnxlrp.evaluate("cnn.onnx", x, composites=["epsilon_plus", "zero"],
                                  baselines=["gradient", "integrated_gradients", "smoothgrad", "random"])
    evaluation.table()      # ScoreRow per method: AUC MoRF / LeRF / difference with 95 % intervals, shares, time
    evaluation.methods[0].morf, evaluation.fractions   # the curves: explained logit after each step, per sample

Every attribution comes from onnxruntime (the compiled LRP graphs, the `gradient` composite's graph for the
gradient baselines); every perturbed input goes through the model's own forward pass (see perturbation.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .baselines import (BASELINES, IG_BASELINES, integrated_gradients, ig_reference_point, random_attribution,
                        smoothgrad)
from .canonicalize import explained_tensor
from .errors import InputError, OnnxLrpError
from .graph import ModelLike, infer_shapes, load_model
from .perturbation import (DEFAULT_FILL, FILLS, METRICS, Features, auc, curves, feature_scores, features,
                           fill_values, removal_steps, removed_fraction)
from .runtime import _ORT_TYPES, Explainer, _converted, _quiet_stderr, _session_error, choose_providers
from .session_tuning import tune_options

Z95 = 1.959963984540054  # two-sided 95 % quantile of the normal distribution


@dataclass
class MethodResult:
    """One method's attributions, curves and timing over the evaluated samples."""

    name: str
    kind: str                            # "composite", "baseline" or "given"
    attribution: np.ndarray              # (N, ...) like the perturbed input
    morf: np.ndarray                     # (N, S + 1) explained logit, most relevant removed first
    lerf: np.ndarray                     # (N, S + 1) least relevant first
    input_share: Optional[np.ndarray]    # (N,) sum of the input attributions / the logit (None: not meaningful)
    bias_share: Optional[np.ndarray]     # (N,) sum of the bias relevance / the logit (LRP and gradient x input)
    seconds: float                       # computing the attributions of all N samples (no compile, no session)
    setup_seconds: float = 0.0           # compiling and starting the session

    @property
    def auc_morf(self) -> np.ndarray:
        """(N,) area under the MoRF curve (lower: more faithful)."""
        return auc(self.morf)

    @property
    def auc_lerf(self) -> np.ndarray:
        """(N,) area under the LeRF curve (higher: more faithful)."""
        return auc(self.lerf)


@dataclass
class ScoreRow:
    """One line of the table: means over the samples with the half-widths of their 95 % confidence intervals."""

    method: str
    auc_morf: float
    auc_morf_ci: float
    auc_lerf: float
    auc_lerf_ci: float
    difference: float                    # LeRF - MoRF: higher is more faithful
    difference_ci: float
    input_share: Optional[float]
    input_share_ci: Optional[float]
    bias_share: Optional[float]
    ms_per_sample: float
    setup_s: float


def mean_ci(values: np.ndarray) -> tuple:
    """(mean, half-width of the 95 % confidence interval of the mean: 1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(Z95 * values.std(ddof=1) / np.sqrt(values.size))


@dataclass
class Evaluation:
    """The result of evaluate(): settings, the explained logits and every method's curves."""

    metric: str
    fill: str
    patch: int
    steps: int
    input_name: str
    targets: np.ndarray                  # (N,) explained class per sample
    logits: np.ndarray                   # (N,) the explained logit of the unperturbed input
    fractions: np.ndarray                # (S + 1,) fraction of the features removed after each step
    methods: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def table(self) -> list:
        """A ScoreRow per method, in the order evaluated."""
        rows = []
        for m in self.methods:
            morf, morf_ci = mean_ci(m.auc_morf)
            lerf, lerf_ci = mean_ci(m.auc_lerf)
            diff, diff_ci = mean_ci(m.auc_lerf - m.auc_morf)
            share, share_ci = mean_ci(m.input_share) if m.input_share is not None else (None, None)
            bias = float(np.mean(m.bias_share)) if m.bias_share is not None else None
            rows.append(ScoreRow(m.name, morf, morf_ci, lerf, lerf_ci, diff, diff_ci, share, share_ci, bias,
                                 1e3 * m.seconds / max(len(self.targets), 1), m.setup_seconds))
        return rows

    def method(self, name: str) -> MethodResult:
        """The result of one method by name."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(name)


class ModelForward:
    """The model's own forward pass in onnxruntime, returning the explained logits (before a bypassed Softmax)."""

    def __init__(self, model: onnx.ModelProto, output: Optional[str], providers: Optional[Sequence[str]]) -> None:
        import onnxruntime as ort
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
        _, self.explained = explained_tensor(proto, output)
        if self.explained not in {o.name for o in proto.graph.output}:  # the logits before a bypassed Softmax
            known = {vi.name: vi for vi in infer_shapes(proto).graph.value_info}
            elem = known[self.explained].type.tensor_type.elem_type if self.explained in known else 1
            proto.graph.output.append(onnx.helper.make_tensor_value_info(self.explained, elem, None))
        options = ort.SessionOptions()
        options.log_severity_level = 4
        tune_options(options, proto)
        try:
            with _quiet_stderr():
                self.session = ort.InferenceSession(proto.SerializeToString(), options,
                                                    providers=choose_providers(providers))
        except Exception as exc:
            raise _session_error(model, exc) from None
        self.inputs = {i.name: i for i in self.session.get_inputs()}

    def __call__(self, feeds: dict) -> np.ndarray:
        """(rows, classes) explained logits, float64."""
        try:
            out = self.session.run([self.explained], feeds)[0]
        except Exception as exc:
            raise InputError(f"onnxruntime rejected the perturbed inputs: {' '.join(str(exc).split())[:300]}") from None
        return np.asarray(out, dtype=np.float64).reshape(out.shape[0], -1)


def _inputs(data, forward: ModelForward, samples: int) -> dict:
    """The first `samples` samples of data (an array for a single-input model, or a dict name -> array) checked
    against the model's inputs and converted to their types."""
    expected = forward.inputs
    if not isinstance(data, Mapping):
        if len(expected) != 1:
            raise InputError(f"the model has {len(expected)} inputs ({', '.join(expected)}): pass a dict name -> array")
        data = {next(iter(expected)): data}
    missing, unknown = sorted(set(expected) - set(data)), sorted(set(data) - set(expected))
    if missing or unknown:
        raise InputError(f"inputs do not match the model: missing {missing or 'none'}, unknown {unknown or 'none'} "
                         f"(expected: {', '.join(expected)})")
    out, batch = {}, None
    for name, spec in expected.items():
        dtype = _ORT_TYPES.get(spec.type)
        if dtype is None:
            raise InputError(f"input {name!r} has an unsupported type {spec.type}")
        value = _converted(name, data[name], np.dtype(dtype))
        if value.ndim != len(spec.shape) or value.ndim == 0:
            raise InputError(f"input {name!r} has shape {value.shape}, expected rank {len(spec.shape)}")
        if batch is not None and value.shape[0] != batch:
            raise InputError(f"input {name!r} has batch size {value.shape[0]}, other inputs have {batch}")
        batch = value.shape[0]
        out[name] = np.ascontiguousarray(value[:samples])
    if not batch:
        raise InputError("the data holds no sample")
    return out


def _perturbed_input(inputs: dict, input_name: Optional[str]) -> str:
    """The input whose features are removed: as named, else the only input, else the only floating-point one."""
    if input_name is not None:
        if input_name not in inputs:
            raise InputError(f"the model has no input {input_name!r} (inputs: {', '.join(inputs)})")
        return input_name
    if len(inputs) == 1:
        return next(iter(inputs))
    floats = [k for k, v in inputs.items() if np.issubdtype(v.dtype, np.floating)]
    if len(floats) == 1:
        return floats[0]
    raise InputError(f"the model has several inputs ({', '.join(inputs)}): name the one to perturb (input_name= / "
                     f"--input-name)")


def _params_for(composite: str, params: Optional[dict]) -> Optional[dict]:
    """The parameters of `params` that the composite has (a value for a composite name is that composite's dict)."""
    from .composites import load_composite
    if not params:
        return None
    if composite in params and isinstance(params[composite], Mapping):
        return dict(params[composite])
    known = load_composite(composite).params
    return {k: v for k, v in params.items() if k in known and not isinstance(v, Mapping)} or None


def _check_params(composites: Sequence[str], params: Optional[dict]) -> None:
    """Every shared parameter must belong to at least one composite evaluated."""
    from .composites import load_composite
    shared = {k for k, v in (params or {}).items() if not isinstance(v, Mapping)}
    known = set()
    for name in composites:
        known |= set(load_composite(name).params)
    unknown = sorted(shared - known)
    if unknown:
        raise OnnxLrpError(f"no composite evaluated has the parameter {unknown[0]!r} "
                           f"(they have: {', '.join(sorted(known)) or 'none'})")


def _shares(exp, name: str) -> tuple:
    """(input share, bias share) per sample: the sums of the input and bias relevance over the explained logit."""
    n = exp.total.shape[0]
    total = exp.total.astype(np.float64)
    safe = np.where(total == 0, np.nan, total)
    inputs = sum(r.reshape(n, -1).sum(axis=1, dtype=np.float64) for r in exp.relevance.values())
    biases = sum((v.reshape(n, -1).sum(axis=1, dtype=np.float64) for v in exp.bias.values()), np.zeros(n))
    return inputs / safe, biases / safe


def _explained(explainer: Explainer, inputs: dict, name: str, targets: np.ndarray, batch_rows: int) -> tuple:
    """(attribution of `name`, input share, bias share) from an explainer, in batches of batch_rows samples."""
    n = targets.shape[0]
    parts, shares, biases = [], [], []
    for start in range(0, n, batch_rows):
        part = slice(start, min(start + batch_rows, n))
        exp = explainer.explain({k: v[part] for k, v in inputs.items()}, targets[part])
        if name not in exp.relevance:
            raise OnnxLrpError(f"composite {explainer.composite!r} gives no relevance for input {name!r} "
                               f"(an integer input carries none; pass attributions= for it)")
        parts.append(exp.relevance[name].astype(np.float64))
        share, bias = _shares(exp, name)
        shares.append(share)
        biases.append(bias)
    return np.concatenate(parts), np.concatenate(shares), np.concatenate(biases)


@dataclass
class _Setting:
    """What every method's run shares."""

    model: onnx.ModelProto
    inputs: dict
    name: str
    targets: np.ndarray
    output: Optional[str]
    providers: Optional[Sequence[str]]
    feats: Features
    batch_rows: int
    seed: int
    ig_steps: int
    ig_baseline: str
    smoothgrad_samples: int
    noise: float
    blur_sigma: Optional[float]
    gradient: Optional[Explainer] = None


def _gradient_explainer(s: _Setting) -> tuple:
    """The gradient composite's explainer (built once) and the seconds building it took (0 when it existed)."""
    if s.gradient is not None:
        return s.gradient, 0.0
    start = time.perf_counter()
    s.gradient = _warm(Explainer(s.model, "gradient", output=s.output, providers=s.providers), s)
    return s.gradient, time.perf_counter() - start


def _warm(explainer: Explainer, s: _Setting) -> Explainer:
    """The explainer after one untimed run on the first sample (onnxruntime prepares its kernels on the first)."""
    explainer.explain({k: v[:1] for k, v in s.inputs.items()}, s.targets[:1])
    return explainer


def _baseline(s: _Setting, method: str) -> tuple:
    """(attribution, input share, bias share, seconds, setup seconds) of a baseline."""
    x = s.inputs[s.name]
    if method == "random":
        start = time.perf_counter()
        value = random_attribution(x.shape, s.seed)
        return value, None, None, time.perf_counter() - start, 0.0
    if not np.issubdtype(x.dtype, np.floating):
        raise OnnxLrpError(f"baseline {method!r} needs a floating-point input; {s.name!r} holds integers "
                           f"(use random, or pass attributions=)")
    explainer, setup = _gradient_explainer(s)
    start = time.perf_counter()
    if method == "gradient":
        value, share, bias = _explained(explainer, s.inputs, s.name, s.targets, s.batch_rows)
        return value, share, bias, time.perf_counter() - start, setup
    if method == "integrated_gradients":
        x0 = ig_reference_point(x, s.ig_baseline, s.feats, s.blur_sigma)
        value = integrated_gradients(explainer, s.inputs, s.name, s.targets, s.ig_steps, x0, s.batch_rows)
    elif method == "smoothgrad":
        value = smoothgrad(explainer, s.inputs, s.name, s.targets, s.smoothgrad_samples, s.noise, s.seed,
                           s.batch_rows)
    else:
        raise OnnxLrpError(f"unknown baseline {method!r} (known: {', '.join(BASELINES)})")
    return value, None, None, time.perf_counter() - start, setup


def _composite(s: _Setting, composite: str, params: Optional[dict]) -> tuple:
    """(attribution, input share, bias share, seconds, setup seconds) of an LRP composite."""
    start = time.perf_counter()
    explainer = _warm(Explainer(s.model, composite, params=_params_for(composite, params), output=s.output,
                                providers=s.providers), s)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    value, share, bias = _explained(explainer, s.inputs, s.name, s.targets, s.batch_rows)
    return value, share, bias, time.perf_counter() - start, setup


def _fit(attribution: np.ndarray, x: np.ndarray, method: str) -> np.ndarray:
    """An attribution as (N, ...) like x: extra trailing axes (a token's embedding) summed, checked shape."""
    a = np.asarray(attribution, dtype=np.float64)
    while a.ndim > x.ndim:
        a = a.sum(axis=-1)
    if a.shape != x.shape:
        raise InputError(f"attribution {method!r} has shape {a.shape}, the perturbed input {x.shape}")
    if not np.all(np.isfinite(a)):
        raise InputError(f"attribution {method!r} holds NaN or Inf")
    return a


def evaluate(model: Union[ModelLike, onnx.ModelProto], data, *, composites: Sequence[str] = ("epsilon_plus",),
             baselines: Sequence[str] = BASELINES, attributions: Optional[Mapping[str, np.ndarray]] = None,
             metric: str = "pixel_flipping", patch: Optional[int] = None, steps: int = 20,
             fill: Optional[str] = None, samples: int = 256, target=None, input_name: Optional[str] = None,
             output: Optional[str] = None, params: Optional[dict] = None, ig_steps: int = 32,
             ig_baseline: str = "zero", smoothgrad_samples: int = 16, noise: float = 0.1,
             mask_token: Optional[int] = None, blur_sigma: Optional[float] = None, seed: int = 0,
             providers: Optional[Sequence[str]] = None, batch_rows: int = 1024) -> Evaluation:
    """Perturbation curves (pixel flipping or region perturbation) and their table for every composite, baseline and
    given attribution, on the first `samples` samples of data; the explained class is the predicted one unless
    `target` (one int, or one per sample) says otherwise. params: composite parameters, shared ({"low": 0}) or per
    composite ({"epsilon_gamma_box": {"low": 0}})."""
    if metric not in METRICS:
        raise OnnxLrpError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")
    fill = fill or DEFAULT_FILL[metric]
    if fill not in FILLS:
        raise OnnxLrpError(f"unknown fill {fill!r} (known: {', '.join(FILLS)})")
    if ig_baseline not in IG_BASELINES:
        raise OnnxLrpError(f"unknown Integrated Gradients baseline {ig_baseline!r} (known: {', '.join(IG_BASELINES)})")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise OnnxLrpError(f"unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)})")
    if samples < 1 or batch_rows < 1:
        raise OnnxLrpError("samples and batch_rows must be at least 1")
    composites = [c.strip() for c in composites]
    if not composites and not baselines and not attributions:
        raise OnnxLrpError("nothing to evaluate: give composites, baselines or attributions")
    _check_params(composites, params)
    source = load_model(model)
    forward = ModelForward(source, output, providers)
    inputs = _inputs(data, forward, samples)
    name = _perturbed_input(inputs, input_name)
    x = inputs[name]
    n = x.shape[0]
    clean = forward(inputs)
    targets = _targets(target, clean)
    patch = patch if patch is not None else (2 if metric == "region_perturbation" else 1)
    feats = features(x.shape[1:], not np.issubdtype(x.dtype, np.floating), patch)
    fill_rng = np.random.default_rng([seed, 1])
    filled = fill_values(x, feats, fill, fill_rng, mask_token, blur_sigma)
    setting = _Setting(source, inputs, name, targets, output, providers, feats, batch_rows, seed, ig_steps,
                       ig_baseline, smoothgrad_samples, noise, blur_sigma)
    runs = [(c, "composite") for c in composites] + [(b, "baseline") for b in baselines]
    runs += [(k, "given") for k in (attributions or {})]
    names = [r[0] for r in runs]
    if len(set(names)) != len(names):
        raise OnnxLrpError(f"method names must be unique, got {', '.join(names)}")
    result = Evaluation(metric, fill, patch, min(steps, feats.count), name, targets,
                        clean[np.arange(n), targets], removed_fraction(metric, feats.count, steps),
                        settings=dict(samples=n, seed=seed, ig_steps=ig_steps, ig_baseline=ig_baseline,
                                      smoothgrad_samples=smoothgrad_samples, noise=noise, features=feats.count,
                                      feature_kind=feats.kind, mask_token=mask_token, provider=_provider(forward)))
    for method, kind in runs:
        if kind == "composite":
            value, share, bias, seconds, setup = _composite(setting, method, params)
        elif kind == "baseline":
            value, share, bias, seconds, setup = _baseline(setting, method)
        else:
            value, share, bias, seconds, setup = np.asarray(attributions[method])[:n], None, None, 0.0, 0.0
        value = _fit(value, x, method)
        if share is None and method != "random":  # Integrated Gradients, SmoothGrad, given attributions
            share = value.reshape(n, -1).sum(axis=1) / np.where(result.logits == 0, np.nan, result.logits)
        scores = feature_scores(value, feats)
        lines = []
        for most_first in (True, False):
            rng = np.random.default_rng([seed, int(most_first)])  # the same tie order for every method
            removed_at, count = removal_steps(scores, feats, metric, steps, most_first, rng)
            lines.append(curves(forward, inputs, name, filled, removed_at, count, targets))
        result.methods.append(MethodResult(method, kind, value, lines[0], lines[1], share, bias, seconds, setup))
    return result


def _provider(forward: ModelForward) -> str:
    """The execution provider the forward session runs on."""
    return forward.session.get_providers()[0]


def _targets(target, clean: np.ndarray) -> np.ndarray:
    """(N,) int64 explained classes: the predicted ones, one int for all, or one per sample (checked)."""
    n, classes = clean.shape
    if target is None:
        return clean.argmax(axis=1).astype(np.int64)
    array = np.asarray(target)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"target must be integers, got {array.dtype}")
    array = np.broadcast_to(array.reshape(-1), (n,)) if array.size == 1 else array.reshape(-1)[:n]
    if array.shape != (n,):
        raise InputError(f"got {array.size} targets for {n} samples")
    if np.any(array < 0) or np.any(array >= classes):
        raise InputError(f"target {int(array.max() if np.any(array >= classes) else array.min())} is out of range: "
                         f"the explained output has {classes} classes")
    return array.astype(np.int64)
