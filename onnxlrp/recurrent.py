"""Recurrent layers (ONNX LSTM, GRU, RNN) unrolled at compile time into standard ops, for a static sequence length.

The unrolled step is written so that the existing rules give the LRP rules for LSTMs of Arras et al. (2017,
"Explaining recurrent neural network predictions in sentiment analysis"):
- each pre-activation is one linear node over the step's input and the previous hidden state together,
  Gemm(Concat(x_t, h_{t-1}), [W; R]^T, W_b + R_b): any linear rule, its bias reported;
- gates are sigmoid (or hard-sigmoid) outputs multiplying a signal: the gate rule treats them as constants and
  gives the signal all the relevance (c~ in i * c~, c_{t-1} in f * c_{t-1}, tanh(c_t) in o * tanh(c_t); GRU:
  h~ in (1 - z) * h~, h_{t-1} in z * h_{t-1} and r * h_{t-1}); the gate branches receive none and need no rule;
- the cell update c_t = f * c_{t-1} + i * c~ (GRU: h_t = (1 - z) * h~ + z * h_{t-1}) is a sum of two activations:
  the Norm (epsilon) rule shares R in proportion to the two terms;
- tanh / the candidate's activation pass relevance unchanged.

Zero initial states (absent, a zero constant, or the ConstantOfShape zeros the exporters write) are left out of the
first step; an initial state computed from the model's inputs receives relevance. What is not unrolled is left in
place and refused by the compiler with `unroll_problem`'s reason, naming the node.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import GraphIndex, opset_version

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # weight blocks per direction: LSTM i, o, f, c; GRU z, r, h; RNN one
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
GATE_ACTIVATIONS = ("Sigmoid", "HardSigmoid")  # what the gate rule recognises as a gate
ACTIVATION_OPS = {name.lower(): name for name in ("Sigmoid", "Tanh", "Relu", "HardSigmoid", "LeakyRelu", "Elu",
                                                  "Softsign", "Softplus", "ThresholdedRelu")}
TAKES_ALPHA = {"HardSigmoid": 0.2, "LeakyRelu": 0.01, "Elu": 1.0, "ThresholdedRelu": 1.0}
TAKES_BETA = {"HardSigmoid": 0.5}


def _attr(node: onnx.NodeProto, name: str, default=None):
    """An attribute value (strings decoded)."""
    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, list) and value and isinstance(value[0], bytes):
                return [v.decode() for v in value]
            return value
    return default


def _input(node: onnx.NodeProto, k: int) -> str:
    """The name of optional input k ('' when omitted)."""
    return node.input[k] if len(node.input) > k else ""


def _directions(node: onnx.NodeProto) -> list:
    """The directions in weight order: ['forward'], ['reverse'] or ['forward', 'reverse']."""
    direction = _attr(node, "direction", "forward")
    return {"forward": ["forward"], "reverse": ["reverse"], "bidirectional": ["forward", "reverse"]}.get(direction, [])


def _activations(node: onnx.NodeProto) -> Optional[list]:
    """Per direction, the activations as (ONNX op, attributes); None if one is not supported. alpha / beta values
    are taken in order by the activations that use them (onnxruntime's reading), defaults otherwise."""
    per = len(DEFAULT_ACTIVATIONS[node.op_type])
    dirs = len(_directions(node))
    names = _attr(node, "activations") or DEFAULT_ACTIVATIONS[node.op_type] * dirs
    if len(names) == per and dirs == 2:
        names = names * 2
    if len(names) != per * dirs:
        return None
    alphas, betas = list(_attr(node, "activation_alpha") or []), list(_attr(node, "activation_beta") or [])
    result = []
    for name in names:
        op = ACTIVATION_OPS.get(str(name).lower())
        if op is None:
            return None
        attrs = {}
        if op in TAKES_ALPHA:
            attrs["alpha"] = float(alphas.pop(0)) if alphas else TAKES_ALPHA[op]
        if op in TAKES_BETA:
            attrs["beta"] = float(betas.pop(0)) if betas else TAKES_BETA[op]
        result.append((op, attrs))
    return [result[d * per:(d + 1) * per] for d in range(dirs)]


ZERO_KEEPING = ("Expand", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Cast", "Identity", "Tile", "Slice")


def _is_zero(index: GraphIndex, name: str, depth: int = 0) -> bool:
    """True for an absent value, an all-zero constant, a ConstantOfShape of zeros, or a copy of one (Expand,
    Reshape, ...: how the exporters write a zero initial state of the run-time batch size)."""
    if not name:
        return True
    const = index.constants.get(name)
    if const is not None:
        return not np.any(const)
    node = index.producer.get(name)
    if node is None or depth > 8:
        return False
    if node.op_type in ZERO_KEEPING:
        return _is_zero(index, node.input[0], depth + 1)
    if node.op_type != "ConstantOfShape":
        return False
    value = next((a.t for a in node.attribute if a.name == "value"), None)
    return value is None or not np.any(numpy_helper.to_array(value))


def _reaches_input(index: GraphIndex, name: str) -> bool:
    """True when a value is computed from a floating-point graph input (so it carries relevance)."""
    stack, seen = [name], set()
    while stack:
        value = stack.pop()
        if value in seen or not value or value in index.constants:
            continue
        seen.add(value)
        info = index.info(value)
        if value in index.graph_inputs:
            return info is not None and info.is_float
        node = index.producer.get(value)
        if node is not None and (info is None or info.is_float):
            stack.extend(node.input)
    return False


def unroll_problem(node: onnx.NodeProto, index: GraphIndex) -> Optional[str]:
    """Why an LSTM / GRU / RNN node cannot be unrolled (and explained), None when it can."""
    op = node.op_type
    layout = _attr(node, "layout", 0)
    x_shape = index.info(node.input[0]).shape if index.info(node.input[0]) is not None else None
    if x_shape is None or len(x_shape) != 3:
        return f"the rank of its input {node.input[0]!r} is not known at compile time"
    seq_axis = 1 if layout else 0
    if x_shape[seq_axis] is None or x_shape[seq_axis] < 1:
        return (f"its sequence length (axis {seq_axis} of {node.input[0]!r}) is not known at compile time: "
                f"export with a fixed sequence length to unroll it")
    if x_shape[2] is None:
        return f"the feature size of {node.input[0]!r} is not known at compile time"
    for k, what in ((1, "W"), (2, "R")):
        if index.constants.get(_input(node, k)) is None:
            return f"its weights {what} ({_input(node, k)!r}) are not constant"
    if _input(node, 3) and index.constants.get(_input(node, 3)) is None:
        return f"its bias B ({_input(node, 3)!r}) is not constant"
    lens = _input(node, 4)
    if lens:
        const = index.constants.get(lens)
        if const is None or np.any(const != x_shape[seq_axis]):
            return "sequence_lens (sequences of different lengths) is not supported: export padded sequences " \
                   "without sequence_lens"
    if not _directions(node):
        return f"direction {_attr(node, 'direction')!r} is not an ONNX direction"
    if _attr(node, "clip") is not None:
        return "clip (clipped pre-activations) is not supported"
    if op == "LSTM" and _attr(node, "input_forget", 0):
        return "input_forget (coupled input and forget gates) is not supported"
    activations = _activations(node)
    if activations is None:
        return f"its activations {_attr(node, 'activations')} are not supported (Sigmoid, Tanh, Relu, HardSigmoid, " \
               f"LeakyRelu, Elu, Softsign, Softplus, ThresholdedRelu are)"
    if op != "RNN" and any(acts[0][0] not in GATE_ACTIVATIONS for acts in activations):
        return f"its gate activation {activations[0][0][0]!r} is not a sigmoid: the gate rule needs sigmoid gates"
    states = [(5, "initial_h")] + ([(6, "initial_c")] if op == "LSTM" else [])
    for k, what in states:
        name = _input(node, k)
        if not _is_zero(index, name) and not _reaches_input(index, name):
            return f"its {what} ({name!r}) is neither zero nor computed from the model's inputs"
    return None


class _Step:
    """Appends the unrolled nodes and constants of one recurrent node, with unique names under its own."""

    def __init__(self, node: onnx.NodeProto, taken: set, opset: int, dtype: np.dtype) -> None:
        self.prefix = node.name or node.op_type
        self.taken, self.opset, self.dtype = taken, opset, dtype
        self.nodes: list = []
        self.inits: list = []

    def fresh(self, hint: str) -> str:
        """A value / node name not used in the model yet."""
        name, k = f"{self.prefix}/{hint}", 1
        while name in self.taken:
            k += 1
            name = f"{self.prefix}/{hint}_{k}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: list, hint: str, output: Optional[str] = None, n_out: int = 1, **attrs):
        """One node; returns its output name (or names)."""
        outs = [output] if output else [self.fresh(f"{hint}_{k}" if n_out > 1 else hint) for k in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(f"{hint}_node"), **attrs))
        return outs if n_out > 1 else outs[0]

    def const(self, array: np.ndarray, hint: str, dtype=None) -> str:
        """An initializer (in the layer's float type unless dtype says otherwise)."""
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype or self.dtype), name))
        return name

    def ints(self, values: list, hint: str) -> str:
        """An int64 initializer."""
        return self.const(np.asarray(values, np.int64), hint, np.int64)

    def squeeze(self, x: str, axes: list, hint: str, output: Optional[str] = None) -> str:
        """Squeeze (axes as attribute before opset 13)."""
        if self.opset < 13:
            return self.op("Squeeze", [x], hint, output, axes=axes)
        return self.op("Squeeze", [x, self.ints(axes, "axes")], hint, output)

    def unsqueeze(self, x: str, axes: list, hint: str) -> str:
        """Unsqueeze (axes as attribute before opset 13)."""
        if self.opset < 13:
            return self.op("Unsqueeze", [x], hint, axes=axes)
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")], hint)

    def split(self, x: str, axis: int, sizes: list, hint: str) -> list:
        """Split into parts of the given sizes (attribute before opset 13)."""
        if len(sizes) == 1:
            return [x]
        if self.opset < 13:
            return self.op("Split", [x], hint, n_out=len(sizes), axis=axis, split=sizes)
        return self.op("Split", [x, self.ints(sizes, "sizes")], hint, n_out=len(sizes), axis=axis)

    def concat(self, parts: list, axis: int, hint: str, output: Optional[str] = None) -> str:
        """Concat (a single part is itself, or an Identity when it must take a given name)."""
        if len(parts) == 1:
            return self.op("Identity", parts, hint, output) if output else parts[0]
        return self.op("Concat", parts, hint, output, axis=axis)

    def act(self, x: str, activation: tuple, hint: str) -> str:
        """An activation function as its ONNX op."""
        op, attrs = activation
        return self.op(op, [x], hint, **attrs)

    def gemm(self, x: str, w: np.ndarray, b: Optional[np.ndarray], hint: str) -> str:
        """x @ w + b (w: (in, out))."""
        inputs = [x, self.const(w, f"{hint}_W")] + ([self.const(b, f"{hint}_B")] if b is not None else [])
        return self.op("Gemm", inputs, hint)


def unroll_recurrent(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every LSTM / GRU / RNN node that can be unrolled (see unroll_problem) by its unrolled steps."""
    if not any(n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return model
    index = GraphIndex.build(model)
    taken = {o for n in model.graph.node for o in n.output} | {n.name for n in model.graph.node}
    taken |= {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    opset = opset_version(model)
    nodes = []
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS or node.domain not in ("", "ai.onnx") or unroll_problem(node, index):
            nodes.append(node)
            continue
        weight = index.constants[node.input[1]]
        step = _Step(node, taken, opset, weight.dtype)
        _unroll(step, node, index)
        nodes.extend(step.nodes)
        model.graph.initializer.extend(step.inits)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _unroll(step: _Step, node: onnx.NodeProto, index: GraphIndex) -> None:
    """The unrolled graph of one node: per direction, per time step, then the outputs Y, Y_h (and Y_c)."""
    op = node.op_type
    layout = _attr(node, "layout", 0)
    seq_axis, batch_axis = (1, 0) if layout else (0, 1)
    x = node.input[0]
    length = index.info(x).shape[seq_axis]
    hidden = _attr(node, "hidden_size") or index.constants[node.input[2]].shape[-1]
    gates = GATES[op]
    W, R = (index.constants[node.input[k]].astype(np.float64) for k in (1, 2))
    B = index.constants.get(_input(node, 3))
    dirs = _directions(node)
    B = np.zeros((len(dirs), 2 * gates * hidden)) if B is None else B.astype(np.float64)
    P = index.constants.get(_input(node, 7)) if op == "LSTM" else None
    activations = _activations(node)
    xs = [step.squeeze(part, [seq_axis], f"x_t{t}")
          for t, part in enumerate(step.split(x, seq_axis, [1] * length, "x_steps"))]
    hs_all, h_last, c_last = [], [], []
    for d, direction in enumerate(dirs):
        w = W[d].reshape(gates, hidden, -1)
        r = R[d].reshape(gates, hidden, hidden)
        wb, rb = B[d][: gates * hidden].reshape(gates, hidden), B[d][gates * hidden:].reshape(gates, hidden)
        h = _initial(step, node, index, 5, d, layout, f"{direction}_h0")
        c = _initial(step, node, index, 6, d, layout, f"{direction}_c0") if op == "LSTM" else None
        peep = None if P is None else P[d].astype(np.float64).reshape(3, hidden)
        order = range(length) if direction == "forward" else range(length - 1, -1, -1)
        hs = [None] * length
        for t in order:
            tag = f"{direction}/t{t}"
            if op == "LSTM":
                h, c = _lstm_step(step, xs[t], h, c, w, r, wb, rb, peep, activations[d], tag)
            elif op == "GRU":
                h = _gru_step(step, xs[t], h, w, r, wb, rb, _attr(node, "linear_before_reset", 0), activations[d],
                              hidden, tag)
            else:
                h = _rnn_step(step, xs[t], h, w, r, wb, rb, activations[d], tag)
            hs[t] = h
        hs_all.append(hs)
        h_last.append(h)
        c_last.append(c)
    _outputs(step, node, hs_all, h_last, c_last, layout)


def _initial(step: _Step, node, index, k: int, d: int, layout: int, hint: str) -> Optional[str]:
    """Direction d's initial state (N, H), None when it is zero."""
    name = _input(node, k)
    if _is_zero(index, name):
        return None
    dir_axis = 1 if layout else 0
    parts = step.split(name, dir_axis, [1] * len(_directions(node)), f"{hint}_dirs")
    return step.squeeze(parts[d], [dir_axis], hint)


def _joint(w_blocks: list, r_blocks: list, with_h: bool) -> np.ndarray:
    """The (in [+ H], units) weight of a pre-activation over Concat(x_t, h_{t-1}) for the given gate blocks."""
    w = np.concatenate(w_blocks, axis=0)  # (units, in)
    if with_h:
        w = np.concatenate([w, np.concatenate(r_blocks, axis=0)], axis=1)
    return np.ascontiguousarray(w.T)


def _lstm_step(step: _Step, x: str, h, c, w, r, wb, rb, peep, acts, tag: str) -> tuple:
    """c_t = f * c_{t-1} + i * g(W_c [x, h] + b_c), h_t = o * h(c_t); gates i, o, f = sigmoid(W [x, h] + b
    (+ peephole * cell state))."""
    I, O, F, C = range(4)
    v = step.concat([x, h], 1, f"{tag}/xh") if h is not None else x
    cand = step.act(step.gemm(v, _joint([w[C]], [r[C]], h is not None), wb[C] + rb[C], f"{tag}/cand_pre"),
                    acts[1], f"{tag}/cand")
    pre = step.gemm(v, _joint([w[I], w[O], w[F]], [r[I], r[O], r[F]], h is not None),
                    np.concatenate([wb[g] + rb[g] for g in (I, O, F)]), f"{tag}/gates_pre")
    i_pre, o_pre, f_pre = step.split(pre, 1, [w.shape[1]] * 3, f"{tag}/gate_pre")
    if peep is not None and c is not None:
        i_pre = step.op("Add", [i_pre, step.op("Mul", [c, step.const(peep[0], f"{tag}/P_i")], f"{tag}/peep_i")],
                        f"{tag}/i_peep")
        f_pre = step.op("Add", [f_pre, step.op("Mul", [c, step.const(peep[2], f"{tag}/P_f")], f"{tag}/peep_f")],
                        f"{tag}/f_peep")
    gate_i = step.act(i_pre, acts[0], f"{tag}/i")
    kept = step.op("Mul", [gate_i, cand], f"{tag}/i_cand")
    if c is not None:
        gate_f = step.act(f_pre, acts[0], f"{tag}/f")
        c_new = step.op("Add", [step.op("Mul", [gate_f, c], f"{tag}/f_c"), kept], f"{tag}/c")
    else:
        c_new = kept
    if peep is not None:
        o_pre = step.op("Add", [o_pre, step.op("Mul", [c_new, step.const(peep[1], f"{tag}/P_o")], f"{tag}/peep_o")],
                        f"{tag}/o_peep")
    gate_o = step.act(o_pre, acts[0], f"{tag}/o")
    h_new = step.op("Mul", [gate_o, step.act(c_new, acts[2], f"{tag}/c_act")], f"{tag}/h")
    return h_new, c_new


def _gru_step(step: _Step, x: str, h, w, r, wb, rb, linear_before_reset: int, acts, hidden: int, tag: str) -> str:
    """h_t = (1 - z) * g(W_h x + (r * h) R_h^T + b_h) + z * h_{t-1} (linear_before_reset: W_h x + W_bh +
    r * (R_h h + R_bh)); gates z, r = sigmoid(W [x, h] + b)."""
    Z, Rg, H = range(3)
    v = step.concat([x, h], 1, f"{tag}/xh") if h is not None else x
    pre = step.gemm(v, _joint([w[Z], w[Rg]], [r[Z], r[Rg]], h is not None),
                    np.concatenate([wb[Z] + rb[Z], wb[Rg] + rb[Rg]]), f"{tag}/gates_pre")
    z_pre, r_pre = step.split(pre, 1, [hidden, hidden], f"{tag}/gate_pre")
    gate_z = step.act(z_pre, acts[0], f"{tag}/z")
    if not linear_before_reset:
        if h is not None:
            gate_r = step.act(r_pre, acts[0], f"{tag}/r")
            u = step.concat([x, step.op("Mul", [gate_r, h], f"{tag}/r_h")], 1, f"{tag}/x_rh")
            cand_pre = step.gemm(u, _joint([w[H]], [r[H]], True), wb[H] + rb[H], f"{tag}/cand_pre")
        else:
            cand_pre = step.gemm(x, _joint([w[H]], [r[H]], False), wb[H] + rb[H], f"{tag}/cand_pre")
    else:
        gate_r = step.act(r_pre, acts[0], f"{tag}/r")
        if h is not None:
            recurrent = step.gemm(h, np.ascontiguousarray(r[H].T), rb[H], f"{tag}/rec")
        else:  # r * R_bh: a gate times a run-time copy of the bias, whose relevance the Mul reports as absorbed
            batch = step.op("Gather", [step.op("Shape", [x], f"{tag}/x_shape"), step.ints([0], "first")],
                            f"{tag}/n")
            shape = step.op("Concat", [batch, step.ints([hidden], "hidden")], f"{tag}/nh", axis=0)
            recurrent = step.op("Expand", [step.const(rb[H], f"{tag}/R_bh"), shape], f"{tag}/rec")
        cand_pre = step.op("Add", [step.gemm(x, np.ascontiguousarray(w[H].T), wb[H], f"{tag}/in"),
                                   step.op("Mul", [gate_r, recurrent], f"{tag}/r_rec")], f"{tag}/cand_pre")
    cand = step.act(cand_pre, acts[1], f"{tag}/cand")
    keep = step.op("Sub", [step.const(np.array(1.0), f"{tag}/one"), gate_z], f"{tag}/one_minus_z")
    new = step.op("Mul", [keep, cand], f"{tag}/new")
    if h is None:
        return new
    return step.op("Add", [new, step.op("Mul", [gate_z, h], f"{tag}/z_h")], f"{tag}/h")


def _rnn_step(step: _Step, x: str, h, w, r, wb, rb, acts, tag: str) -> str:
    """h_t = f(W [x, h] + b)."""
    v = step.concat([x, h], 1, f"{tag}/xh") if h is not None else x
    return step.act(step.gemm(v, _joint([w[0]], [r[0]], h is not None), wb[0] + rb[0], f"{tag}/pre"), acts[0],
                    f"{tag}/h")


def _outputs(step: _Step, node: onnx.NodeProto, hs_all: list, h_last: list, c_last: list, layout: int) -> None:
    """Y (T, dirs, N, H) or (N, T, dirs, H) with layout 1; Y_h, Y_c (dirs, N, H) or (N, dirs, H)."""
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if outputs[0]:
        seq_axis, dir_axis = (1, 2) if layout else (0, 1)
        per_dir = []
        for d, hs in enumerate(hs_all):
            steps = [step.unsqueeze(h, sorted([seq_axis, dir_axis]), f"y_d{d}_t{t}") for t, h in enumerate(hs)]
            per_dir.append(step.concat(steps, seq_axis, f"y_d{d}"))
        step.concat(per_dir, dir_axis, "y", output=outputs[0])
    dir_axis = 1 if layout else 0
    finals = [(outputs[1], h_last)] + ([(outputs[2], c_last)] if node.op_type == "LSTM" else [])
    for name, states in finals:
        if name:
            parts = [step.unsqueeze(v, [dir_axis], f"final_d{d}") for d, v in enumerate(states)]
            step.concat(parts, dir_axis, "final", output=name)
