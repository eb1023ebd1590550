"""A hypothesis strategy for random valid ONNX graphs built from the ops onnxlrp supports (structure fuzzing).

Layers are drawn one after the other on a (N, C, H, W) image or a (N, F) vector: Conv, ConvTranspose, Gemm, MatMul
(+ Add of a constant), activations, BatchNormalization, Add/Sub/Mul of a constant, residual Adds of two activations,
Sum and Concat branches (fan-out), pools, Pad/Transpose/Slice, Flatten/Reshape; a Gemm to the classes ends the
graph (sometimes behind a Softmax). Weights hold exact zeros on request. Ops that are not registered (yet) are left
out, so the strategy follows the emitter table.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxlrp.emitters import lookup

OPSET = 17
ACTIVATIONS = ("Relu", "LeakyRelu", "Tanh", "Sigmoid", "Elu", "Clip", "Softplus", "Selu", "HardSigmoid", "Softsign")


@dataclass
class Net:
    """A graph under construction: nodes, initializers, a NumPy generator for the weights."""

    rng: np.random.Generator
    zero_fraction: float
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    ops: list = field(default_factory=list)
    count: int = 0

    def integer(self, low: int, high: int) -> int:
        """A uniform integer in [low, high] (both included)."""
        return int(self.rng.integers(low, high + 1))

    def coin(self, p: float = 0.5) -> bool:
        """True with probability p."""
        return bool(self.rng.random() < p)

    def pick(self, choices):
        """One of choices, uniformly."""
        choices = list(choices)
        return choices[int(self.rng.integers(len(choices)))]

    def fresh(self, kind: str) -> str:
        """A new unique name."""
        self.count += 1
        return f"{kind}{self.count}"

    def const(self, array, dtype=np.float32) -> str:
        """An initializer holding array."""
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def weight(self, shape: tuple, fan_in: int) -> str:
        """A random weight scaled by 1/sqrt(fan_in), with exact zeros at zero_fraction of its entries."""
        w = self.rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        w[self.rng.random(shape) < self.zero_fraction] = 0.0
        return self.const(w)

    def node(self, op: str, inputs: list, **attrs) -> str:
        """Append a node; returns its output name."""
        out = self.fresh(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(op), **attrs))
        self.ops.append(op)
        return out


def _supported(op: str) -> bool:
    """True if onnxlrp has an emitter for op."""
    return lookup(op) is not None


def _activation(net: Net, x: str) -> str:
    """One elementwise activation with random parameters."""
    op = net.pick([a for a in ACTIVATIONS if _supported(a)])
    if op == "LeakyRelu":
        return net.node(op, [x], alpha=net.pick([0.01, 0.2]))
    if op == "Clip":
        return net.node(op, [x, net.const(0.0), net.const(6.0)])
    return net.node(op, [x])


def _conv(net: Net, x: str, shape: tuple, out: int | None = None, same: bool = False) -> tuple:
    """Conv with random kernel, stride, pads/auto_pad, dilation, groups and bias; same=True keeps the shape."""
    c, h, w = shape
    if same:
        k, stride, dil, auto, pads = 3, 1, 1, "NOTSET", [1, 1, 1, 1]
        if min(h, w) < 3:
            k, pads = 1, [0, 0, 0, 0]
    else:
        k = net.integer(1, min(3, h, w))
        dil = net.integer(1, 2) if 2 * (k - 1) + 1 <= min(h, w) else 1
        stride = net.integer(1, 2)
        auto = net.pick(["NOTSET", "NOTSET", "SAME_UPPER", "VALID"] if dil == 1 else ["NOTSET", "VALID"])  # ORT
        pads = [net.integer(0, k - 1) for _ in range(4)]
    grouped = c > 1 and not same and net.coin()
    out = out or (c * net.integer(1, 2) if grouped else net.integer(1, 4))
    groups = c if grouped and out % c == 0 else 1
    weight = net.weight((out, c // groups, k, k), c // groups * k * k)
    inputs = [x, weight] + ([net.const(0.1 * net.rng.standard_normal(out))] if net.coin() else [])
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], dilations=[dil, dil], group=groups)
    if auto == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto
    y = net.node("Conv", inputs, **attrs)
    eff = (k - 1) * dil + 1
    if auto == "SAME_UPPER":
        size = [-(-d // stride) for d in (h, w)]
    elif auto == "VALID":
        size = [(d - eff) // stride + 1 for d in (h, w)]
    else:
        size = [(h + pads[0] + pads[2] - eff) // stride + 1, (w + pads[1] + pads[3] - eff) // stride + 1]
    return y, (out, size[0], size[1])


def _pool(net: Net, x: str, shape: tuple) -> tuple:
    """MaxPool or AveragePool (random kernel, stride, pads, count_include_pad) or a global pool."""
    c, h, w = shape
    kinds = [k for k in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool") if _supported(k)]
    op = net.pick(kinds)
    if op.startswith("Global"):
        return net.node(op, [x]), (c, 1, 1)
    k = net.integer(1, min(3, h, w))
    stride = net.integer(1, 2)
    pads = [net.integer(0, k - 1) for _ in range(4)]
    attrs = dict(kernel_shape=[k, k], strides=[stride, stride], pads=pads)
    if op == "AveragePool":
        attrs["count_include_pad"] = net.integer(0, 1)
    size = [(h + pads[0] + pads[2] - k) // stride + 1, (w + pads[1] + pads[3] - k) // stride + 1]
    return net.node(op, [x], **attrs), (c, size[0], size[1])


def _dense(net: Net, x: str, features: int, out: int | None = None) -> tuple:
    """Gemm (transB, alpha, beta, bias at random) or MatMul with a constant, maybe followed by Add of a bias."""
    out = out or net.integer(1, 8)
    if net.coin():
        trans = net.coin()
        weight = net.weight((out, features) if trans else (features, out), features)
        inputs = [x, weight] + ([net.const(0.1 * net.rng.standard_normal(out))] if net.coin() else [])
        alpha, beta = net.pick([(1.0, 1.0), (0.5, 2.0)])
        return net.node("Gemm", inputs, transB=int(trans), alpha=alpha, beta=beta), out
    y = net.node("MatMul", [x, net.weight((features, out), features)])
    if net.coin():
        y = net.node("Add", [y, net.const(0.1 * net.rng.standard_normal(out))])
    return y, out


def _batchnorm(net: Net, x: str, channels: int) -> str:
    """An (unfolded unless it follows a Conv) inference BatchNormalization with random statistics."""
    r = net.rng
    params = [net.const(r.uniform(0.5, 1.5, channels)), net.const(0.1 * r.standard_normal(channels)),
              net.const(0.1 * r.standard_normal(channels)), net.const(r.uniform(0.5, 1.5, channels))]
    return net.node("BatchNormalization", [x] + params)


def _affine(net: Net, x: str, shape: tuple) -> str:
    """Add or Mul of a per-channel / per-feature constant."""
    op = net.pick(["Add", "Mul", "Sub"])
    const_shape = (shape[0],) + (1,) * (len(shape) - 1)
    value = net.rng.uniform(0.5, 1.5, const_shape) if op == "Mul" else 0.1 * net.rng.standard_normal(const_shape)
    return net.node(op, [x, net.const(value)])


def _branch(net: Net, x: str, shape: tuple) -> str:
    """A shape-preserving branch: a Conv (3x3, pad 1) or a square dense layer, then an activation."""
    if len(shape) == 3:
        y, _ = _conv(net, x, shape, out=shape[0], same=True)
    else:
        y, _ = _dense(net, x, shape[0], out=shape[0])
    return _activation(net, y)


def _fan_out(net: Net, x: str, shape: tuple) -> tuple:
    """x read by several nodes: a residual Add, a Sum of three, or a Concat of two branches along axis 1."""
    kinds = ["residual", "sum"] + (["concat"] if _supported("Concat") else [])
    kind = net.pick(kinds)
    if kind == "residual":
        return net.node("Add", [x, _branch(net, x, shape)]), shape
    if kind == "sum":
        return net.node("Sum", [x, _branch(net, x, shape), _branch(net, x, shape)]), shape
    y = net.node("Concat", [_branch(net, x, shape), x], axis=1)
    return y, (2 * shape[0],) + tuple(shape[1:])


def _reshaping(net: Net, x: str, shape: tuple) -> tuple:
    """A shape op on an image, among those registered: Pad (constant), Transpose of H and W, a Slice crop, or a
    ConvTranspose (random kernel, stride, pads)."""
    c, h, w = shape
    kinds = [k for k in ("Pad", "Transpose", "Slice", "ConvTranspose") if _supported(k)]
    if not kinds:
        return _activation(net, x), shape
    op = net.pick(kinds)
    if op == "Pad":
        pads = [0, 0, net.integer(0, 1), net.integer(0, 1), 0, 0, net.integer(0, 1), net.integer(0, 1)]
        y = net.node("Pad", [x, net.const(pads, dtype=np.int64)], mode="constant")
        return y, (c, h + pads[2] + pads[6], w + pads[3] + pads[7])
    if op == "Transpose":
        return net.node("Transpose", [x], perm=[0, 1, 3, 2]), (c, w, h)
    if op == "Slice":
        if min(h, w) < 3:
            return _activation(net, x), shape
        starts, ends = [net.integer(0, 1), net.integer(0, 1)], [h - net.integer(0, 1), w - net.integer(0, 1)]
        y = net.node("Slice", [x, net.const(starts, dtype=np.int64), net.const(ends, dtype=np.int64),
                               net.const([2, 3], dtype=np.int64)])
        return y, (c, ends[0] - starts[0], ends[1] - starts[1])
    k, stride = net.integer(1, 3), net.integer(1, 2)
    pads = [net.integer(0, k - 1) for _ in range(4)]
    if min((h - 1) * stride + k - pads[0] - pads[2], (w - 1) * stride + k - pads[1] - pads[3]) < 1:
        pads = [0, 0, 0, 0]  # the pads would crop a small input away
    out = net.integer(1, 4)
    inputs = [x, net.weight((c, out, k, k), c * k * k)] + (
        [net.const(0.1 * net.rng.standard_normal(out))] if net.coin() else [])
    y = net.node("ConvTranspose", inputs, kernel_shape=[k, k], strides=[stride, stride], pads=pads)
    size = [(h - 1) * stride + k - pads[0] - pads[2], (w - 1) * stride + k - pads[1] - pads[3]]
    return y, (out, size[0], size[1])


def _flatten(net: Net, x: str, shape: tuple) -> tuple:
    """(N, C, H, W) -> (N, C*H*W) by Flatten or Reshape."""
    size = int(np.prod(shape))
    if net.coin():
        return net.node("Flatten", [x], axis=1), (size,)
    return net.node("Reshape", [x, net.const([0, -1], dtype=np.int64)]), (size,)


def _image_layer(net: Net, x: str, shape: tuple) -> tuple:
    """One random layer on an image."""
    kind = net.pick(["conv", "conv", "act", "pool", "bn", "affine", "fan_out", "shape"])
    if kind == "conv":
        return _conv(net, x, shape)
    if kind == "act":
        return _activation(net, x), shape
    if kind == "pool":
        return _pool(net, x, shape)
    if kind == "bn":
        return _batchnorm(net, x, shape[0]), shape
    if kind == "affine":
        return _affine(net, x, shape), shape
    if kind == "shape":
        return _reshaping(net, x, shape)
    return _fan_out(net, x, shape)


def _vector_layer(net: Net, x: str, shape: tuple) -> tuple:
    """One random layer on a feature vector."""
    kind = net.pick(["dense", "dense", "act", "bn", "affine", "fan_out"])
    if kind == "dense":
        y, out = _dense(net, x, shape[0])
        return y, (out,)
    if kind == "act":
        return _activation(net, x), shape
    if kind == "bn":
        return _batchnorm(net, x, shape[0]), shape
    if kind == "affine":
        return _affine(net, x, shape), shape
    return _fan_out(net, x, shape)


def random_model(seed: int, max_layers: int = 6) -> tuple:
    """(model, input shape without the batch axis): a random valid float32 graph, opset 17, dynamic batch.

    Hypothesis draws the seed; the structure comes from a NumPy generator so that every layer kind and attribute is
    drawn uniformly (hypothesis' own draws lean towards the smallest values, which flattens most images at once)."""
    net = Net(np.random.default_rng(seed), 0.0)
    net.zero_fraction = net.pick([0.0, 0.0, 0.3, 1.0])
    image = net.coin(0.6)
    shape = ((net.integer(1, 3), net.integer(3, 8), net.integer(3, 8)) if image
             else (net.integer(2, 12),))
    x, current = "x", shape
    for _ in range(net.integer(1, max_layers)):
        if len(current) == 3:
            if net.coin(0.15):
                x, current = _flatten(net, x, current)
            else:
                x, current = _image_layer(net, x, current)
        else:
            x, current = _vector_layer(net, x, current)
    if len(current) == 3:
        x, current = _flatten(net, x, current)
    classes = net.integer(2, 5)
    logits, _ = _dense(net, x, current[0], out=classes)
    outputs = [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["N", classes])]
    if net.coin(0.25):  # a trailing Softmax: bypassed, the logits are explained
        probs = net.node("Softmax", [logits], axis=1)
        outputs = [helper.make_tensor_value_info(probs, TensorProto.FLOAT, ["N", classes])]
    graph = helper.make_graph(net.nodes, "random", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  ["N", *shape])],
                              outputs, net.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model, shape


def random_models(max_layers: int = 6):
    """The hypothesis strategy: random_model of a drawn seed."""
    return st.integers(0, 2 ** 32 - 1).map(lambda seed: random_model(seed, max_layers))
