"""Explainer and Explanation: run a compiled model in onnxruntime (CUDA when it really works, else CPU)."""
from __future__ import annotations

import contextlib
import ctypes.util
import difflib
import os
import threading
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .compiled_options import refuse_other_options
from .compiler import POSITION_INPUT, TARGET_INPUT, compile as compile_model, compiled_metadata
from .errors import ArgumentError, ArgumentTypeError, InputError, ModelLoadError, OnnxLrpError
from .graph import ModelLike, inconsistency, load_model
from .session_tuning import release_freed_memory, tune_options
from .targets import MASK_INPUT, build_mask
from .trust import CONSERVATION_KEY, check_conservation, verify_digest

_PROBE_LOCK = threading.Lock()
# onnxruntime 1.31's FastGeluFusion fuses x * 0.5 * (1 + tanh(...)) (GPT-2's GELU) into one node and drops the
# intermediate x * 0.5 although the relevance graph reads it ("Node input ... is not a graph input"): it stays off
DISABLED_OPTIMIZERS = ["FastGeluFusion"]
MAX_TARGETS_PER_RUN = 16  # targets per session.run; more are explained in several runs (graph size grows with K)
_CUDA_WORKS: Optional[bool] = None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the process's stderr (file descriptor 2) while onnxruntime probes providers."""
    try:
        fd = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def provider_name(provider) -> str:
    """The name of a provider given as a name or as a (name, options dict) pair."""
    return provider if isinstance(provider, str) else provider[0]


def refuse_fallback(session, providers: Optional[Sequence[str]]) -> None:
    """Raise when the caller named a provider and onnxruntime fell back to another one instead of running it."""
    if providers and session.get_providers()[0] != provider_name(providers[0]):
        raise OnnxLrpError(f"execution provider {provider_name(providers[0])} did not initialise on this machine "
                           f"(onnxruntime would run on {session.get_providers()[0]}): leave the provider out, or "
                           f"name that one")


def cuda_available() -> bool:
    """True if onnxruntime's CUDA provider really initialises here (probed once, quietly)."""
    global _CUDA_WORKS
    with _PROBE_LOCK:
        if _CUDA_WORKS is not None:
            return _CUDA_WORKS
        import onnxruntime as ort
        _CUDA_WORKS = False
        if "CUDAExecutionProvider" in ort.get_available_providers() and ctypes.util.find_library("cuda"):
            model = onnx.helper.make_model(
                onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                                       [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                       [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
                opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=8)
            options = ort.SessionOptions()
            options.log_severity_level = 4
            try:
                with _quiet_stderr():
                    session = ort.InferenceSession(model.SerializeToString(), options,
                                                   providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                _CUDA_WORKS = session.get_providers()[0] == "CUDAExecutionProvider"
            except Exception:
                _CUDA_WORKS = False
        return _CUDA_WORKS


def choose_providers(providers: Optional[Sequence[str]]) -> list:
    """Providers to ask for: the caller's (each known to onnxruntime, the first one usable here), else CUDA (when
    it works) then CPU."""
    if providers:
        import onnxruntime as ort
        available = ort.get_available_providers()
        for name in map(provider_name, providers):
            if name not in available:
                close = [a for a in available if a.lower().startswith(str(name).lower())]
                close = close or difflib.get_close_matches(str(name), available, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise OnnxLrpError(f"unknown execution provider {name!r} (onnxruntime here has: "
                                   f"{', '.join(available)}){hint}")
        if provider_name(providers[0]) == "CUDAExecutionProvider" and not cuda_available():
            raise OnnxLrpError("execution provider CUDAExecutionProvider does not initialise on this machine (no "
                               "usable CUDA device or driver): leave the provider out to run on the CPU")
        return list(providers)
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_available() else ["CPUExecutionProvider"]


@dataclass
class Explanation:
    """One batch's explanation: total == sum(relevance) + sum(bias) + stabilizer per sample."""

    output: np.ndarray                  # (N, classes): the explained logits
    target: np.ndarray                  # (N,) int64
    total: np.ndarray                   # (N,) relevance put in at the output
    relevance: dict                     # input name -> array shaped like the input
    bias: dict                          # node name -> (N, units)
    stabilizer: np.ndarray              # (N,) what stabilizers (and rules that drop relevance) took
    nodes: dict = field(default_factory=dict)           # tensor name -> relevance (or (N,) sums)
    node_stabilizer: dict = field(default_factory=dict)  # node name -> (N,) stabilizer share
    rules: dict = field(default_factory=dict)           # node name -> rule description
    graph: list = field(default_factory=list)           # [(node, op type, relevance inputs, outputs)], graph order
    edges: dict = field(default_factory=dict)           # tensor -> {consumer node: (N,) relevance it sent back}
    gradient: dict = field(default_factory=dict)        # gradient composite: input name -> df/dx (see gradient.py)
    target_mask: Optional[np.ndarray] = None            # the mask M where one was given (then target is -1)

    def conservation(self) -> dict:
        """Per sample: inputs, biases, stabilizer, their sum, the total and the relative error."""
        n = self.total.shape[0]
        inputs = sum(r.reshape(n, -1).sum(axis=1, dtype=np.float64) for r in self.relevance.values())
        biases = sum((v.reshape(n, -1).sum(axis=1, dtype=np.float64) for v in self.bias.values()), np.zeros(n))
        stab = self.stabilizer.astype(np.float64)
        explained = inputs + biases + stab
        scale = np.maximum(np.abs(self.total.astype(np.float64)), 1e-30)
        return {"inputs": inputs, "biases": biases, "stabilizer": stab, "sum": explained,
                "total": self.total.astype(np.float64), "relative_error": np.abs(explained - self.total) / scale}


class Explainer:
    """Compiles a model on the fly (or loads a compiled one) and explains batches with onnxruntime."""

    def __init__(self, model: Union[ModelLike, onnx.ModelProto], composite: Optional[str] = None, *,
                 params: Optional[dict] = None, output: Optional[str] = None, init: Optional[str] = None,
                 providers: Optional[Sequence[str]] = None, node_relevance=None,
                 session_options=None, shapes: Optional[Mapping[str, Sequence[int]]] = None,
                 max_constant_bytes: Optional[int] = None, threads: Optional[int] = None,
                 sequence: Optional[bool] = None) -> None:
        """session_options: an onnxruntime.SessionOptions used as given (thread pools, graph optimisation level,
        profiling, ...) but for the memory settings of session_tuning.tune_options (memory pattern off); threads:
        onnxruntime's intra-op thread count (None: onnxruntime's default, one per core);
        sequence: explain one position of an (N, T, C) output (None: decided by the compiler, see is_sequence)."""
        import onnxruntime as ort
        _check_explainer_arguments(model, providers)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 1):
            raise OnnxLrpError(f"threads must be a positive integer, got {threads!r}")
        proto = source = load_model(model)
        where = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "the model"
        meta = compiled_metadata(proto, where)
        if meta is None:
            proto = compile_model(proto, composite or "epsilon_plus", params=params, output=output,
                                  init=init or "logit", node_relevance=node_relevance, shapes=shapes,
                                  max_constant_bytes=max_constant_bytes, sequence=sequence)
            meta = compiled_metadata(proto)
        else:  # a compiled model: an option that needs a new compilation is refused, not ignored
            refuse_other_options(meta, composite, params, output, init)
            if shapes:
                raise OnnxLrpError("shapes= specialises a model while compiling it; this model is already compiled "
                                   "(compile the original with shapes=, or pass the compiled one without it)")
            if sequence is not None and bool(sequence) != bool(meta.get("position_input")):
                raise OnnxLrpError(f"this model is already compiled with sequence={not sequence}: "
                                   f"sequence={sequence} needs a new compilation (explain the original model)")
            verify_digest(proto, meta, where)  # and a file edited after compilation is refused
        self.model = proto
        self.meta = meta
        options = session_options or ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 4  # fatal only: a failing run raises (one error line), it need not log too
        tune_options(options, proto)
        # a compiled model given as a file: onnxruntime reads the file itself, and the proto is reloaded on demand
        from_file = proto is source and not isinstance(model, onnx.ModelProto)
        try:
            with _quiet_stderr():
                self.session = ort.InferenceSession(os.fspath(model) if from_file else proto.SerializeToString(),
                                                    options, providers=choose_providers(providers),
                                                    disabled_optimizers=DISABLED_OPTIMIZERS)
        except Exception as exc:
            raise _session_error(source, exc) from None
        refuse_fallback(self.session, providers)
        self._static_classes = _static_classes(proto, meta["explained"], bool(meta.get("position_input")))
        if from_file:
            self._model, self._model_path = None, os.fspath(model)
        model_bytes = proto.ByteSize()
        del proto, source
        release_freed_memory(model_bytes)
        self.provider = self.session.get_providers()[0]
        self.inputs = [i for i in self.session.get_inputs() if i.name not in (TARGET_INPUT, MASK_INPUT, POSITION_INPUT)]
        self._shapes: dict = {}  # input shapes -> explained output shape (see _output_shape)
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._options, self._providers = options, self.session.get_providers()
        self._many: dict = {}  # K -> (session, output names, stacked outputs): see many_targets.py
        self._many_lock = threading.Lock()

    @property
    def model(self) -> onnx.ModelProto:
        """The compiled model (reloaded from its file on first use when the Explainer was given a compiled file)."""
        if self._model is None:
            self._model = load_model(self._model_path)
        return self._model

    @model.setter
    def model(self, value: onnx.ModelProto) -> None:
        self._model = value

    @property
    def composite(self) -> str:
        """Name of the composite the model was compiled with."""
        return self.meta["composite"]

    def _feeds(self, inputs) -> dict:
        """Validate and convert the user's inputs into onnxruntime feeds (clear errors for every mismatch)."""
        if not isinstance(inputs, Mapping):
            if len(self.inputs) != 1:
                names = ", ".join(i.name for i in self.inputs)
                raise InputError(f"the model has {len(self.inputs)} inputs ({names}): pass a dict name -> array")
            inputs = {self.inputs[0].name: inputs}
        expected = {i.name: i for i in self.inputs}
        unknown = sorted(set(inputs) - set(expected))
        missing = sorted(set(expected) - set(inputs))
        if unknown or missing:
            raise InputError(f"inputs do not match the model: missing {missing or 'none'}, unknown {unknown or 'none'} "
                             f"(expected: {', '.join(expected)})")
        feeds, batch = {}, None
        for name, spec in expected.items():
            dtype = _ORT_TYPES.get(spec.type)
            if dtype is None:
                raise InputError(f"input {name!r} has an unsupported type {spec.type}")
            value = _converted(name, inputs[name], np.dtype(dtype))
            shape = spec.shape
            if value.ndim != len(shape):
                raise InputError(f"input {name!r} has shape {value.shape}, expected rank {len(shape)} "
                                 f"({_shape_text(shape)})")
            for axis, (got, want) in enumerate(zip(value.shape, shape)):
                if isinstance(want, int) and got != want:
                    raise InputError(f"input {name!r} has shape {value.shape}, expected {_shape_text(shape)} "
                                     f"(axis {axis} must be {want})")
            if value.ndim == 0:
                raise InputError(f"input {name!r} must have a batch axis")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise InputError(f"input {name!r} has batch size {value.shape[0]}, other inputs have {batch}")
            feeds[name] = np.ascontiguousarray(value)
        if batch == 0:
            raise InputError("the batch is empty")
        return feeds, batch

    @property
    def sequence(self) -> bool:
        """True when the explained output is a sequence (N, T, C) and explain() takes a position."""
        return bool(self.meta.get("position_input"))

    def explain(self, inputs, target: Union[None, int, Sequence[int], Sequence[Sequence[int]]] = None,
                position: Union[None, int, Sequence[int]] = None, *, targets: Optional[int] = None,
                target_mask=None, region=None, channel=None, anchor=None,
                check: bool = True) -> Union[Explanation, list]:
        """Explain a batch: target None (argmax), one int for every sample, or N ints; or, for a dense output, the
        sum of the output over a mask: target_mask (shaped like the explained output, or without its batch axis),
        region=(y0, y1, x0, x1) and/or channel=k of a map, anchor=(anchor, class) (or one pair per sample) of a
        detection tensor (N, C, A) or (N, A, C) (see targets.py). The explained quantity is sum(M * output).
        Several targets per sample: target as an (N, K) array of classes, or targets=K (each sample's K highest
        outputs, best first), return a list of K Explanations, the forward pass computed once (many_targets.py).
        With check (the default) the identity total = inputs + biases + stabilizer is verified for every sample
        (ConservationError if it fails beyond rounding; the model's metadata may say that it promises none).
        For a sequence output (N, T, C), position picks the explained position (one int or N ints, default -1: the
        last); targets and masks then refer to the (N, C) logits at that position."""
        if not isinstance(check, bool):
            raise ArgumentTypeError(f"check must be True or False, got {type(check).__name__}")
        classes = self._classes()
        if classes == 0:
            raise InputError(f"output {self.meta['output']!r} has no classes: nothing to explain")
        feeds, batch = self._feeds(inputs)
        if self.sequence:
            feeds[POSITION_INPUT] = self._positions(position, batch)
        elif position is not None:
            raise InputError(f"position applies to sequence outputs (N, T, C); output {self.meta['output']!r} is "
                             f"not one")
        masked = any(v is not None for v in (target_mask, region, channel, anchor))
        if targets is not None or _is_matrix(target):
            if masked:
                raise InputError("several targets per sample (targets=, or target as an (N, K) array) cannot be "
                                 "combined with a mask (target_mask=, region=, channel=, anchor=)")
            if self.sequence:
                raise InputError("several targets per sample (targets=, or target as an (N, K) array) are not "
                                 "supported on sequence outputs (N, T, C) yet: explain one target per call")
            return self._explain_many(feeds, batch, target, targets, check)
        mask = None
        if masked:
            if target is not None:
                raise InputError("target= and a mask (target_mask=, region=, channel=, anchor=) are exclusive")
            mask = build_mask(self._output_shape(feeds, batch), self._mask_dtype(), target_mask, region, channel,
                              anchor)
            feeds[TARGET_INPUT] = np.full(batch, -1, dtype=np.int64)
            feeds[MASK_INPUT] = mask
        else:
            feeds[TARGET_INPUT] = self._targets(target, batch)
        values = self._run(self.session, self._output_names, feeds, batch)
        if self.sequence:
            self._check_positions(feeds[POSITION_INPUT], values[self.meta["output"]])
        return self._explanation(values, feeds[TARGET_INPUT], batch, masked, mask, check)

    def _run(self, session, names: list, feeds: dict, batch: int) -> dict:
        """session.run as {output name: value}; a failure is an InputError (or the batch-first error)."""
        try:
            return dict(zip(names, session.run(None, feeds)))
        except Exception as exc:
            self._check_rows(self._forward_logits(feeds), batch)  # the seed cannot pick a target per sample
            raise InputError(f"onnxruntime rejected the inputs: {_one_line(exc)}") from None

    def _explanation(self, values: dict, target: np.ndarray, batch: int, masked: bool, mask, check: bool):
        """The Explanation of one run's outputs for the targets fed (negative: argmax)."""
        logits = values[self.meta["logits"]]
        self._check_rows(logits, batch)
        flat = logits.reshape(batch, -1)
        _check_finite(values, self.meta, flat)
        if np.any(target >= flat.shape[1]):
            raise InputError(f"target {int(target.max())} is out of range: output {self.meta['output']!r} has "
                             f"{flat.shape[1]} classes")
        targets = np.where(target < 0, flat.argmax(axis=1), target).astype(np.int64)
        if masked:
            targets = np.full(batch, -1, dtype=np.int64)
            mask = np.broadcast_to(mask, logits.shape)
        meta = self.meta
        relevance = {k: values[v] for k, v in meta["relevance"].items()}
        bias = {k: values[v] for k, v in meta["bias"].items()}
        if check and meta.get(CONSERVATION_KEY, True):
            check_conservation(values[meta["total"]], relevance, bias, values[meta["stabilizer"]])
        return Explanation(
            output=logits, target=targets, total=values[meta["total"]], relevance=relevance, bias=bias,
            stabilizer=values[meta["stabilizer"]],
            nodes={**{k: values[v] for k, v in meta["nodes"].items()}, **{k: values[v] for k, v in meta["sums"].items()}},
            node_stabilizer={k: values[v] for k, v in meta["node_stabilizer"].items()},
            rules=dict(meta.get("rules", {})),
            graph=[tuple(entry) for entry in meta.get("graph", [])],
            edges={t: {n: values[v] for n, v in sent.items()} for t, sent in meta.get("edges", {}).items()},
            gradient={k: values[v] for k, v in meta.get("gradient", {}).items()},
            target_mask=mask)

    def _explain_many(self, feeds: dict, batch: int, target, targets: Optional[int], check: bool) -> list:
        """K Explanations per batch, at most MAX_TARGETS_PER_RUN targets per session.run (see many_targets.py)."""
        classes = self._classes() or int(np.prod(self._output_shape(feeds, batch)[1:]))
        matrix = self._target_matrix(target, targets, batch, classes)
        explanations: list = []
        for start in range(0, matrix.shape[1], MAX_TARGETS_PER_RUN):
            columns = matrix[:, start:start + MAX_TARGETS_PER_RUN]
            session, names, stacked = self._many_session(columns.shape[1])
            values = self._run(session, names, dict(feeds, **{TARGET_INPUT: columns}), batch)
            flat = values[self.meta["logits"]].reshape(batch, -1)
            order = np.argsort(-flat, axis=1, kind="stable")  # ties: the lower index first, as TopK
            for j in range(columns.shape[1]):
                column = columns[:, j]
                chosen = np.where(column < 0, order[np.arange(batch), np.maximum(-column - 1, 0)], column)
                picked = {name: (value[j] if name in stacked else value) for name, value in values.items()}
                explanations.append(self._explanation(picked, chosen.astype(np.int64), batch, False, None, check))
        return explanations

    def _target_matrix(self, target, targets: Optional[int], batch: int, classes: int) -> np.ndarray:
        """(N, K) int64 targets: the user's matrix (classes checked), or -1 ... -K (the K best classes)."""
        if targets is not None:
            if target is not None:
                raise InputError("target= and targets= are exclusive (targets=K explains each sample's K best "
                                 "classes)")
            if isinstance(targets, (bool, np.bool_)) or not isinstance(targets, (int, np.integer)) or targets < 1:
                raise InputError(f"targets must be a positive int (the number of best classes), got {targets!r}")
            if targets > classes:
                raise InputError(f"targets={targets} asks for more classes than output {self.meta['output']!r} "
                                 f"has ({classes})")
            return np.tile(-np.arange(1, int(targets) + 1, dtype=np.int64), (batch, 1))
        array = np.asarray(target)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            raise InputError(f"target must hold integers, got {array.dtype}")
        if array.shape[0] != batch or array.shape[1] == 0:
            raise InputError(f"target has shape {array.shape}; several targets per sample need ({batch}, K)")
        if np.any(array < 0):
            raise InputError(f"target {int(array.min())} is negative")
        if np.any(array >= classes):
            raise InputError(f"target {int(array.max())} is out of range: output {self.meta['output']!r} has "
                             f"{classes} classes")
        return array.astype(np.int64)

    def _many_session(self, k: int) -> tuple:
        """(session, output names, stacked outputs) of the compiled graph rewritten for k targets, built once."""
        with self._many_lock:
            if k not in self._many:
                import onnxruntime as ort

                from .many_targets import many_targets
                model, stacked = many_targets(self.model, k, self.meta["explained"])
                with _quiet_stderr():
                    session = ort.InferenceSession(model.SerializeToString(), self._options,
                                                   providers=self._providers)
                self._many[k] = (session, [o.name for o in session.get_outputs()], stacked)
            return self._many[k]

    def _inferred_output_shape(self, feeds: dict) -> Optional[tuple]:
        """The explained output's shape by ONNX shape inference on the weightless compiled graph with the inputs'
        dims fixed to these feeds' (a fraction of a forward pass; a sequence's (N, C) row at the position), None
        where inference cannot tell."""
        from onnx import shape_inference

        from .shapes import weightless
        from .specialise import specialise
        try:
            light = specialise(weightless(self.model), {name: value.shape for name, value in feeds.items()})
            inferred = shape_inference.infer_shapes(light, data_prop=True)
        except Exception:
            return None
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.name == self.meta["explained"]:
                dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
                if self.sequence and len(dims) == 3:  # the logits at lrp_position: (N, C)
                    dims = [dims[0], dims[2]]
                return tuple(dims) if dims and all(d > 0 for d in dims) else None
        return None

    def _mask_dtype(self) -> np.dtype:
        """The float type of the lrp_target_mask input (refused for models compiled before it existed)."""
        spec = next((i for i in self.session.get_overridable_initializers() if i.name == MASK_INPUT), None)
        if spec is None or self.meta.get("target_mask_input") != MASK_INPUT:
            raise OnnxLrpError("this compiled model has no lrp_target_mask input (compiled by an older onnxlrp): "
                               "compile the original model again to explain masks, regions or anchors")
        return np.dtype(_ORT_TYPES.get(spec.type, np.float32))

    def _output_shape(self, feeds: dict, batch: int) -> tuple:
        """The explained output's shape for these inputs: from the declared dims where they are static, else from
        shape inference at these input sizes, else from a run; cached per input shape."""
        declared = next((o.shape for o in self.session.get_outputs() if o.name == self.meta["logits"]), None)
        if declared and all(isinstance(d, int) and d > 0 for d in declared[1:]):
            return (batch,) + tuple(declared[1:])
        key = tuple((name, value.shape) for name, value in sorted(feeds.items()))
        if key not in self._shapes:
            inferred = self._inferred_output_shape(feeds)
            if inferred is not None:
                self._shapes[key] = inferred
                return inferred
            probe = dict(feeds, **{TARGET_INPUT: np.full(batch, -1, dtype=np.int64)})
            try:
                self._shapes[key] = self.session.run([self.meta["logits"]], probe)[0].shape
            except Exception as exc:
                raise InputError(f"onnxruntime rejected the inputs: {_one_line(exc)}") from None
        return self._shapes[key]

    def _forward_logits(self, feeds: dict) -> Optional[np.ndarray]:
        """The explained logits alone, from a session of the nodes they need (built on this failure path only;
        onnxruntime runs every node of a session whatever the outputs asked for), None if they fail too."""
        import onnxruntime as ort
        try:
            forward = _pruned(self.model, self.meta["logits"])
            options = ort.SessionOptions()
            options.log_severity_level = 4
            with _quiet_stderr():
                session = ort.InferenceSession(forward.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
            wanted = {i.name for i in session.get_inputs()}
            return session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0]
        except Exception:
            return None

    def _check_rows(self, logits: Optional[np.ndarray], batch: int) -> None:
        """Refuse logits that are not one row per sample: the explained output is not batch-first (a layout the
        declared shapes could not reveal at compile time)."""
        if logits is None:
            return
        if logits.size == 0 or logits.size % batch or logits.shape[:1] != (batch,):
            raise OnnxLrpError(f"output {self.meta['output']!r} has shape {logits.shape}, which is not one row per "
                               f"sample of the batch of {batch}")

    def _targets(self, target, batch: int) -> np.ndarray:
        """Targets as (N,) int64; -1 means argmax (computed in the graph)."""
        if target is None:
            return np.full(batch, -1, dtype=np.int64)
        try:
            array = np.asarray(target)
        except (ValueError, TypeError):
            raise InputError("target must be one int or a flat list of ints, one per sample") from None
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
            if not (np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array))
                    and np.all(array == np.round(array))):
                raise InputError(f"target must be integers, got {array.dtype}")
        if array.ndim > 1:
            raise InputError(f"target must be one int, a flat list of ints (one per sample) or an (N, K) array of "
                             f"ints (K per sample); got shape {array.shape}")
        if array.size and np.any(array > np.iinfo(np.int64).max):  # before the cast to int64 wraps it around
            raise InputError(f"target {array.max()} is out of range")
        array = _per_sample(array, batch, "targets")
        if np.any(array < 0):
            raise InputError(f"target {int(array.min())} is negative")
        classes = self._classes()
        if classes is not None and np.any(array >= classes):
            raise InputError(f"target {int(array.max())} is out of range: output {self.meta['output']!r} "
                             f"has {classes} classes")
        return array

    def _positions(self, position, batch: int) -> np.ndarray:
        """Positions as (N,) int64 (negative ones count from the end); None is -1, the last position."""
        if position is None:
            return np.full(batch, -1, dtype=np.int64)
        array = np.asarray(position)
        if array.dtype == bool or not np.issubdtype(array.dtype, np.integer) or array.ndim > 1:
            raise InputError(f"position must be one int or one int per sample, got {position!r}")
        array = _per_sample(array, batch, "positions")
        return array

    def _check_positions(self, positions: np.ndarray, output: np.ndarray) -> None:
        """Every position must lie in [-T, T) for the sequence length T of the explained output."""
        length = output.shape[1] if output.ndim >= 2 else 0
        bad = positions[(positions >= length) | (positions < -length)]
        if bad.size:
            raise InputError(f"position {int(bad[0])} is out of range: output {self.meta['output']!r} has "
                             f"{length} positions")

    def _classes(self) -> Optional[int]:
        """Number of classes of the explained output if static."""
        for out in self.session.get_outputs():
            if out.name == self.meta["logits"] and out.shape and all(isinstance(d, int) for d in out.shape[1:]):
                return int(np.prod(out.shape[1:]))
        return self._static_classes



def _per_sample(array: np.ndarray, batch: int, what: str) -> np.ndarray:
    """One int64 per sample: a single value repeated over the batch, or exactly batch values."""
    array = array.astype(np.int64).reshape(-1)
    if array.size == 1:
        array = np.full(batch, int(array[0]), dtype=np.int64)
    if array.size != batch:
        raise InputError(f"got {array.size} {what} for a batch of {batch}")
    return array

def _is_matrix(target) -> bool:
    """True for a target given as a 2-D array (several targets per sample)."""
    if target is None or isinstance(target, (int, np.integer)):
        return False
    try:
        return np.asarray(target).ndim == 2
    except (ValueError, TypeError):
        return False


def _pruned(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """The part of a model that computes one output: its producing nodes, their initializers and inputs."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack, names = [], [output], set()
    while stack:
        name = stack.pop()
        if name in names:
            continue
        names.add(name)
        node = producer.get(name)
        if node is not None:
            needed.append(node)
            stack.extend(i for i in node.input if i)
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    needed = sorted({id(n): n for n in needed}.values(), key=lambda n: order[id(n)])
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    graph = out.graph
    graph.node.extend(needed)
    graph.input.extend(i for i in model.graph.input if i.name in names)
    graph.initializer.extend(t for t in model.graph.initializer if t.name in names)
    graph.output.extend(o for o in model.graph.output if o.name == output)
    return out


def _check_explainer_arguments(model, providers) -> None:
    """Explainer's own arguments (compile() checks the ones it passes on): ArgumentTypeError naming the argument."""
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise ArgumentTypeError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")
    if providers is None:
        return
    if isinstance(providers, str) or not isinstance(providers, Sequence):
        raise ArgumentTypeError(f"providers must be a list of onnxruntime provider names, got "
                                f"{type(providers).__name__} (one provider: [{providers!r}])")
    names = [p if isinstance(p, str) else p[0] if (isinstance(p, (tuple, list)) and len(p) == 2 and
                                                    isinstance(p[0], str) and isinstance(p[1], dict)) else None
             for p in providers]
    if None in names:
        raise ArgumentTypeError("providers must list provider names (strings) or (name, options dict) pairs")
    import onnxruntime as ort
    unknown = [p for p in names if p not in ort.get_all_providers()]
    if unknown:
        raise ArgumentError(f"providers: unknown onnxruntime provider {unknown[0]!r} (known: "
                            f"{', '.join(ort.get_all_providers()[:6])}, ...)")


def _static_classes(model: onnx.ModelProto, name: str, sequence: bool = False) -> Optional[int]:
    """Number of classes of a value from the model's declared outputs/value_info (a sequence's last axis), None if
    unknown."""
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim[-1 if sequence else 1:]
            if dims and all(d.HasField("dim_value") for d in dims):
                return int(np.prod([d.dim_value for d in dims]))
    return None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line of at most limit characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _session_error(source: onnx.ModelProto, exc: Exception) -> OnnxLrpError:
    """Tell a model that onnxruntime cannot run at all from a compiled graph that it cannot run (an onnxlrp bug)."""
    import onnxruntime as ort
    problem = inconsistency(source)
    if problem is not None:
        return ModelLoadError(problem)
    try:
        with _quiet_stderr():
            ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as own:
        return ModelLoadError(f"onnxruntime cannot run the model itself: {_one_line(own)}")
    return OnnxLrpError(f"onnxruntime cannot run the compiled model (please report this): {_one_line(exc)}")


def _check_finite(values: dict, meta: dict, flat: np.ndarray) -> None:
    """Refuse to hand back NaN or Inf: a forward pass that overflowed has nothing to explain, and relevance that
    overflowed while the output is finite is reported instead of returned."""
    bad = np.flatnonzero(~np.all(np.isfinite(flat), axis=1))
    if bad.size:
        raise InputError(f"output {meta['output']!r} is NaN or Inf for sample(s) {bad[:8].tolist()}: the model's "
                         f"forward pass overflows on this input, nothing to explain")
    names = [meta["total"], meta["stabilizer"], *meta["relevance"].values(), *meta["bias"].values()]
    broken = [name for name in names if not np.all(np.isfinite(values[name]))]
    if broken:
        raise OnnxLrpError(f"relevance overflowed ({broken[0]} holds NaN or Inf) although the output is finite: "
                           f"scale the input down or explain a float64 model")


def _converted(name: str, data, dtype: np.dtype) -> np.ndarray:
    """The user's data for one input as an array of the input's dtype: a float input takes any float array, an
    integer input any integer array whose values fit; NaN, Inf and values beyond the dtype's range are refused."""
    try:
        value = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise InputError(f"input {name!r} cannot be read as an array: {' '.join(str(exc).split())[:200]}") from None
    kinds_match = (np.issubdtype(value.dtype, np.floating) and np.issubdtype(dtype, np.floating)) or (
        np.issubdtype(value.dtype, np.integer) and np.issubdtype(dtype, np.integer))
    if value.dtype != dtype and not kinds_match:
        raise InputError(f"input {name!r} has dtype {value.dtype}, expected {dtype.name}")
    if np.issubdtype(value.dtype, np.floating):
        bad = ~np.isfinite(value)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            what = "NaN" if np.isnan(value).any() else "Inf"
            raise InputError(f"input {name!r} contains {what} ({int(bad.sum())} non-finite value(s), the first at "
                             f"index {first}): replace them before explaining")
        if value.dtype != dtype and value.size and np.abs(value).max() > np.finfo(dtype).max:
            raise InputError(f"input {name!r} has values up to {np.abs(value).max():.3g}, beyond the range of the "
                             f"model's {dtype.name} (max {np.finfo(dtype).max:.3g})")
    elif value.dtype != dtype and value.size:
        info = np.iinfo(dtype)
        if value.min() < info.min or value.max() > info.max:
            raise InputError(f"input {name!r} has values in [{value.min()}, {value.max()}], outside the range of "
                             f"the model's {dtype.name}")
    return value.astype(dtype, copy=False)


def _shape_text(shape) -> str:
    """A declared shape as text, symbolic dims by name."""
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_, "tensor(int16)": np.int16,
}
