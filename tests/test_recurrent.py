"""Recurrent layers: ONNX LSTM / GRU / RNN unrolled at compile time (numerically checked against onnxruntime's own
ops: directions, layouts, initial states, peepholes, linear_before_reset, activations), refusals that name the
node, and LRP against a dense float64 NumPy implementation of Arras et al.'s (2017) LSTM-LRP on torch's nn.LSTM /
nn.GRU (epsilon on the linear maps, gates as constants, the cell sum shared in proportion), both exporters."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxlrp
from onnxlrp.canonicalize import canonicalize
from onnxlrp.errors import UnsupportedModelError
from ops_harness import forward
from torch_utils import EXPORTERS, export

FLOAT = onnx.TensorProto.FLOAT
T, N, I, H = 4, 3, 5, 3
EPS = 1e-6


def _recurrent(op: str, direction: str = "forward", layout: int = 0, initial: bool = False, peephole: bool = False,
               seed: int = 0, opset: int = 14, **attrs) -> onnx.ModelProto:
    """One LSTM / GRU / RNN node with random weights reading x (and initial states as graph inputs), all its
    outputs graph outputs."""
    g = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    inits = {"W": g.normal(size=(dirs, gates * H, I)) * 0.6, "R": g.normal(size=(dirs, gates * H, H)) * 0.6,
             "B": g.normal(size=(dirs, 2 * gates * H)) * 0.3}
    x_shape = [N, T, I] if layout else [T, N, I]
    state_shape = [N, dirs, H] if layout else [dirs, N, H]
    inputs = [helper.make_tensor_value_info("x", FLOAT, x_shape)]
    names = ["x", "W", "R", "B", "", "h0" if initial else ""]
    if initial:
        inputs.append(helper.make_tensor_value_info("h0", FLOAT, state_shape))
    if op == "LSTM":
        names.append("c0" if initial else "")
        if initial:
            inputs.append(helper.make_tensor_value_info("c0", FLOAT, state_shape))
        if peephole:
            names.append("P")
            inits["P"] = g.normal(size=(dirs, 3 * H)) * 0.5
    if layout:
        attrs["layout"] = 1
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    y_shape = [N, T, dirs, H] if layout else [T, dirs, N, H]
    node = helper.make_node(op, names, outs, name=f"the_{op.lower()}", hidden_size=H, direction=direction, **attrs)
    outputs = [helper.make_tensor_value_info(o, FLOAT, y_shape if o == "Y" else state_shape) for o in outs]
    graph = helper.make_graph([node], "rnn", inputs, outputs,
                              [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


UNROLL_CASES = {
    "lstm_forward": ("LSTM", {}),
    "lstm_reverse_initial": ("LSTM", dict(direction="reverse", initial=True)),
    "lstm_bidirectional_layout1_peephole": ("LSTM", dict(direction="bidirectional", layout=1, peephole=True,
                                                         initial=True)),
    "lstm_hard_sigmoid_gates": ("LSTM", dict(activations=["HardSigmoid", "Tanh", "Tanh"], activation_alpha=[0.3],
                                             activation_beta=[0.4])),
    "gru_forward": ("GRU", {}),
    "gru_linear_before_reset_bidirectional": ("GRU", dict(direction="bidirectional", linear_before_reset=1)),
    "gru_linear_before_reset_initial_layout1": ("GRU", dict(linear_before_reset=1, initial=True, layout=1)),
    "gru_reverse_initial": ("GRU", dict(direction="reverse", initial=True)),
    "rnn_bidirectional_initial": ("RNN", dict(direction="bidirectional", initial=True)),
    "rnn_relu": ("RNN", dict(activations=["Relu"])),
    "rnn_layout1": ("RNN", dict(layout=1, initial=True)),
}


@pytest.mark.parametrize("case", list(UNROLL_CASES))
def test_unrolled_layer_computes_what_onnxruntime_computes(case):
    """Every output (Y, Y_h, Y_c) of the unrolled graph equals onnxruntime's LSTM / GRU / RNN on random inputs
    (onnx's reference evaluator for layout 1, which onnxruntime does not run)."""
    from onnx.reference import ReferenceEvaluator
    op, kwargs = UNROLL_CASES[case]
    model = _recurrent(op, **kwargs)
    canon = canonicalize(model)
    assert op not in {n.op_type for n in canon.graph.node}
    g = np.random.default_rng(1)
    feeds = {vi.name: g.normal(size=[d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in model.graph.input}
    expected = ReferenceEvaluator(model).run(None, feeds) if kwargs.get("layout") else forward(model, feeds)
    for want, got in zip(expected, forward(canon, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_unrolled_layer_conserves_with_initial_states_receiving_relevance():
    """A bidirectional LSTM (layout 1: every input batch first) with peepholes and initial states as inputs: x, h0
    and c0 all receive relevance, and inputs + biases + stabilizer == the explained output."""
    model = _recurrent("LSTM", direction="bidirectional", peephole=True, initial=True, layout=1)
    del model.graph.output[:]  # explain Y (N, T, dirs, H) flattened
    model.graph.node.append(helper.make_node("Flatten", ["Y"], ["out"]))
    model.graph.output.append(helper.make_tensor_value_info("out", FLOAT, [N, T * 2 * H]))
    g = np.random.default_rng(2)
    feeds = {vi.name: g.normal(size=[d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in model.graph.input}
    exp = onnxlrp.Explainer(model, "epsilon").explain(feeds, target=7)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
    for name in ("x", "h0", "c0"):
        assert np.abs(exp.relevance[name]).sum() > 1e-6 * np.abs(exp.total).sum(), name


REFUSALS = {
    "dynamic_length": ({}, "its sequence length (axis 0 of 'x') is not known at compile time"),
    "sequence_lens": ({"sequence_lens": True}, "sequence_lens (sequences of different lengths) is not supported"),
    "clip": ({"clip": 1.0}, "clip (clipped pre-activations) is not supported"),
    "tanh_gates": ({"activations": ["Tanh", "Tanh", "Tanh"]}, "its gate activation 'Tanh' is not a sigmoid"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_what_cannot_be_unrolled_is_refused_naming_the_node(case):
    """One line naming the LSTM node and why."""
    extra, message = REFUSALS[case]
    extra = dict(extra)
    lens = extra.pop("sequence_lens", False)
    model = _recurrent("LSTM", **extra)
    if case == "dynamic_length":
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "T"
    if lens:
        model.graph.node[0].input[4] = "lens"
        model.graph.input.append(helper.make_tensor_value_info("lens", onnx.TensorProto.INT32, [N]))
    del model.graph.output[1:]
    with pytest.raises(UnsupportedModelError, match=r"LSTM x1 \(the_lstm\): " + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        onnxlrp.compile(model)


# ---- LRP against Arras et al.'s rules in NumPy, on torch's own parameters ------------------------------------
def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _epsilon(W, b, x, R):
    """LRP-epsilon on z = W x + b: (R_x, R_b, stabilizer)."""
    z = W @ x + b
    s = R / (z + EPS * np.where(z < 0, -1.0, 1.0))
    return x * (W.T @ s), b * s, float((s * EPS * np.where(z < 0, -1.0, 1.0)).sum())


def _norm(terms: list, R):
    """The Norm rule on a sum of terms: (each term's relevance, stabilizer)."""
    total = sum(terms)
    s = R / (total + EPS * np.where(total < 0, -1.0, 1.0))
    return [t * s for t in terms], float((s * EPS * np.where(total < 0, -1.0, 1.0)).sum())


def arras_lstm_lrp(p: dict, x: np.ndarray, target: int) -> tuple:
    """Arras et al.'s LSTM-LRP for torch's nn.LSTM (gates i, f, g, o; zero initial state) then a Linear on the last
    hidden state: (R_x (T, I), total, bias and absorbed sum, stabilizer)."""
    Wi, Wh, b = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"] + p["bias_hh_l0"]
    hidden = Wh.shape[1]
    hs, cs, gs, fs, iss, cs_prev = [np.zeros(hidden)], [np.zeros(hidden)], [], [], [], []
    for t in range(len(x)):
        pre = Wi @ x[t] + Wh @ hs[-1] + b
        i, f, g, o = (pre[k * hidden:(k + 1) * hidden] for k in range(4))
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        cs_prev.append(cs[-1])
        cs.append(f * cs[-1] + i * g)
        hs.append(o * np.tanh(cs[-1]))
        gs.append(g), fs.append(f), iss.append(i)
    y = p["fc.weight"] @ hs[-1] + p["fc.bias"]
    R_y = np.zeros_like(y)
    R_y[target] = y[target]
    R_h, bias, stab = _epsilon(p["fc.weight"], p["fc.bias"], hs[-1], R_y)
    bias = float(bias.sum())
    R_c = np.zeros(hidden)
    R_x = np.zeros_like(x)
    for t in reversed(range(len(x))):
        R_c = R_c + R_h  # h = o * tanh(c): the output gate is a constant, tanh passes
        if t > 0:
            (R_fc, R_ig), st = _norm([fs[t] * cs_prev[t], iss[t] * gs[t]], R_c)
            stab += st
        else:  # c_0 = 0: c_1 = i * g
            R_fc, R_ig = np.zeros(hidden), R_c
        Wg = np.concatenate([Wi[2 * hidden:3 * hidden], Wh[2 * hidden:3 * hidden]], axis=1)
        R_in, R_b, st = _epsilon(Wg, b[2 * hidden:3 * hidden], np.concatenate([x[t], hs[t]]), R_ig)
        R_x[t], R_h = R_in[: x.shape[1]], R_in[x.shape[1]:]
        bias, stab, R_c = bias + float(R_b.sum()), stab + st, R_fc
    return R_x, float(y[target]), bias, stab


def arras_gru_lrp(p: dict, x: np.ndarray, target: int) -> tuple:
    """The same rules for torch's nn.GRU (gates r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), zero
    initial state): the candidate's two linear parts shared by the Norm rule, r and z constants, the update
    h = (1 - z) * n + z * h_prev shared in proportion; r * b_hn at the first step (no h_prev) is absorbed."""
    Wi, Wh, bi, bh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    hidden = Wh.shape[1]
    sl = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]
    hs, rs, zs, ns, xparts, recs = [np.zeros(hidden)], [], [], [], [], []
    for t in range(len(x)):
        r = _sigmoid(Wi[sl[0]] @ x[t] + bi[sl[0]] + Wh[sl[0]] @ hs[-1] + bh[sl[0]])
        z = _sigmoid(Wi[sl[1]] @ x[t] + bi[sl[1]] + Wh[sl[1]] @ hs[-1] + bh[sl[1]])
        xpart, rec = Wi[sl[2]] @ x[t] + bi[sl[2]], Wh[sl[2]] @ hs[-1] + bh[sl[2]]
        n = np.tanh(xpart + r * rec)
        hs.append((1 - z) * n + z * hs[-1])
        rs.append(r), zs.append(z), ns.append(n), xparts.append(xpart), recs.append(rec)
    y = p["fc.weight"] @ hs[-1] + p["fc.bias"]
    R_y = np.zeros_like(y)
    R_y[target] = y[target]
    R_h, bias, stab = _epsilon(p["fc.weight"], p["fc.bias"], hs[-1], R_y)
    bias = float(bias.sum())
    R_x = np.zeros_like(x)
    for t in reversed(range(len(x))):
        if t > 0:
            (R_n, R_prev), st = _norm([(1 - zs[t]) * ns[t], zs[t] * hs[t]], R_h)
            stab += st
        else:
            R_n, R_prev = R_h, np.zeros(hidden)
        (R_xpart, R_rec), st = _norm([xparts[t], rs[t] * recs[t]], R_n)  # tanh passes; the candidate's sum
        stab += st
        R_x[t], R_b, st = _epsilon(Wi[sl[2]], bi[sl[2]], x[t], R_xpart)
        bias, stab = bias + float(R_b.sum()), stab + st
        if t > 0:
            R_hh, R_b, st = _epsilon(Wh[sl[2]], bh[sl[2]], hs[t], R_rec)  # r is a constant: all to the signal
            R_prev, bias, stab = R_prev + R_hh, bias + float(R_b.sum()), stab + st
        else:
            bias += float(R_rec.sum())  # r * b_hn: absorbed
        R_h = R_prev
    return R_x, float(y[target]), bias, stab


def _torch_rnn(kind: str):
    """nn.LSTM / nn.GRU (batch_first) and a Linear on the last step, with torch's own float64 parameters."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, kind)(I, H, batch_first=True)
            self.fc = torch.nn.Linear(H, 3)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    torch.manual_seed(11)
    net = Net().eval()
    params = {k.replace("rnn.", ""): v.detach().double().numpy() for k, v in net.named_parameters()}
    return net, params


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_recurrent_layer_matches_arras_lrp(tmp_path, kind, exporter):
    """onnxlrp's epsilon relevance of the exported nn.LSTM / nn.GRU equals Arras et al.'s LRP computed in NumPy
    on torch's parameters, the bias and absorbed relevance too, and conservation holds to 1e-5."""
    import torch
    net, params = _torch_rnn(kind)
    path = export(net, torch.randn(2, T, I), tmp_path / f"{kind}.onnx", exporter)
    x = np.random.default_rng(4).normal(size=(2, T, I)).astype(np.float32)
    exp = onnxlrp.Explainer(str(path), "epsilon").explain(x, target=[0, 2])
    lrp = arras_lstm_lrp if kind == "LSTM" else arras_gru_lrp
    for i, target in enumerate([0, 2]):
        R_x, total, bias, stab = lrp(params, x[i].astype(np.float64), target)
        scale = abs(total)
        np.testing.assert_allclose(exp.total[i], total, rtol=1e-5)
        np.testing.assert_allclose(exp.relevance["input"][i], R_x, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(sum(v[i].sum() for v in exp.bias.values()), bias, rtol=1e-4, atol=1e-5 * scale)
    assert np.all(exp.conservation()["relative_error"] < 1e-5)
