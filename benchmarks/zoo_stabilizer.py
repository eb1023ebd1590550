"""Where the stabilizer's share of a zoo model goes: per-node shares, and a dense float64 NumPy z+ of each culprit Conv.

    .venv/bin/python benchmarks/zoo_stabilizer.py NAME [--weights untrained|trained] [--exporter legacy|dynamo]
                                                  [--epsilon E ...] [--top K] [--check K]

Exports one timm zoo model (tests/timm_zoo.py, the zoo sweep's 64x64 batch of two), compiles it with epsilon_plus at
each epsilon / stabilizer E (default 1e-6 and 0) and prints the total (the explained logit), the stabilizer's share
of it and the K nodes taking the largest shares (compile(node_relevance="sums")). --check K recomputes, for the K
Convs that take most at stabilizer 0, the relevance z+ drops (units whose positive contributions sum to zero pass
nothing on) from the Conv's input activations, its weights and the relevance at its output in float64 NumPy, and
prints it beside onnxlrp's figure for that node.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def export_zoo_model(name: str, weights: str, exporter: str, folder: Path) -> tuple:
    """(path of the exported model, its input batch) for a timm zoo entry."""
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    import torch
    from timm_zoo import build, inputs
    from torch_utils import export
    x = inputs(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(build(name, weights), torch.from_numpy(x), folder / f"{name}_{weights}_{exporter}.onnx", exporter)
    return path, x


def node_shares(path, x: np.ndarray, eps: float, relevance_of: tuple = ()) -> tuple:
    """(total (N,), stabilizer share (N,), {node: share (N,)}, {tensor: relevance}) with epsilon = stabilizer = eps."""
    import onnxlrp
    nodes = list(relevance_of) or "sums"
    compiled = onnxlrp.compile(str(path), "epsilon_plus", params={"epsilon": eps, "stabilizer": eps},
                               node_relevance=nodes)
    exp = onnxlrp.Explainer(compiled, providers=["CPUExecutionProvider"]).explain(x)
    check = exp.conservation()
    total = check["total"]
    shares = {k: v / total for k, v in exp.node_stabilizer.items()}
    return total, check["stabilizer"] / total, shares, dict(exp.nodes)


def zplus_dropped(x: np.ndarray, W: np.ndarray, b: np.ndarray, attrs: dict, R: np.ndarray) -> np.ndarray:
    """Per sample, the relevance z+ (stabilizer 0) cannot pass on: sum of R over output units whose
    z+ = sum_taps (W+ x+ + W- x-) + b+ is zero (a grouped 2-D Conv, float64)."""
    N = x.shape[0]
    O, Cg, kh, kw = W.shape
    G = attrs.get("group", 1)
    st, dl, p = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    Ho, Wo = R.shape[2:]
    zplus = np.broadcast_to(np.maximum(b, 0)[None, :, None, None], (N, O, Ho, Wo)).copy()
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dl[0]: i * dl[0] + st[0] * (Ho - 1) + 1: st[0],
                     j * dl[1]: j * dl[1] + st[1] * (Wo - 1) + 1: st[1]].reshape(N, G, Cg, Ho, Wo)
            w = W[:, :, i, j].reshape(G, O // G, Cg)
            zplus += (np.einsum("goc,ngchw->ngohw", np.maximum(w, 0), np.maximum(tap, 0))
                      + np.einsum("goc,ngchw->ngohw", np.minimum(w, 0), np.minimum(tap, 0))).reshape(N, O, Ho, Wo)
    return np.where(zplus == 0, R, 0.0).reshape(N, -1).sum(1)


def numpy_dropped_share(path, x_in: np.ndarray, node_name: str) -> np.ndarray:
    """NumPy's relevance dropped by z+ at one Conv of the canonical model (stabilizer 0), as a share of the total."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnxlrp.canonicalize import canonicalize
    from onnxlrp.fold import fold_constants
    canon = canonicalize(fold_constants(onnx.load(str(path))))
    node = next(n for n in canon.graph.node if n.name == node_name)
    consts = {t.name: numpy_helper.to_array(t) for t in canon.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in canon.graph.node
                   if n.op_type == "Constant"})
    W = consts[node.input[1]].astype(np.float64)
    b = consts[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(W.shape[0])
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    canon.graph.output.append(helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(canon.SerializeToString(), providers=["CPUExecutionProvider"])
    x = session.run([node.input[0]], {canon.graph.input[0].name: x_in})[0].astype(np.float64)
    total, _, _, rel = node_shares(path, x_in, 0.0, (node.output[0],))
    return zplus_dropped(x, W, b, attrs, rel[node.output[0]].astype(np.float64)) / total


def main(argv=None) -> int:
    """Print the per-node stabilizer shares (and the NumPy check) of one zoo model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--weights", choices=["untrained", "trained"], default="untrained")
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--epsilon", type=float, action="append", help="epsilon = stabilizer (default 1e-6, 0)")
    parser.add_argument("--top", type=int, default=5, help="nodes listed per epsilon")
    parser.add_argument("--check", type=int, default=0, help="Convs checked against NumPy z+ at stabilizer 0")
    args = parser.parse_args(argv)
    import onnx
    with tempfile.TemporaryDirectory() as folder:
        path, x = export_zoo_model(args.name, args.weights, args.exporter, Path(folder))
        ops = {n.name: n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        print(f"{args.name} ({args.weights}, {args.exporter}), epsilon_plus, batch of {len(x)}")
        zero_shares = {}
        for eps in args.epsilon or [1e-6, 0.0]:
            total, share, shares, _ = node_shares(path, x, eps)
            print(f"epsilon {eps:g}: explained logit {' '.join(f'{t:.3g}' for t in total)}, stabilizer share "
                  f"{np.array2string(share, precision=4)}")
            ranked = sorted(shares, key=lambda k: -float(np.mean(np.abs(shares[k]))))
            for k in ranked[:args.top]:
                print(f"    {np.array2string(shares[k], precision=4):>20}  {ops.get(k, '?'):<18} {k}")
            if eps == 0.0:
                zero_shares = shares
        convs = [k for k in sorted(zero_shares, key=lambda k: -float(np.mean(np.abs(zero_shares[k]))))
                 if ops.get(k) == "Conv"][:args.check]
        for k in convs:
            numpy_share, got = numpy_dropped_share(path, x, k), zero_shares[k]
            print(f"z+ at stabilizer 0, {k}: NumPy float64 drops {np.array2string(numpy_share, precision=5)} of the "
                  f"total, onnxlrp's stabilizer {np.array2string(got, precision=5)}; max difference "
                  f"{float(np.max(np.abs(numpy_share - got))):.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
