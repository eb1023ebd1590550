"""The ops together through the real pipeline (onnxlrp.Explainer, built-in composites): a small network written
with onnx.helper at the oldest and newest opsets, dynamic batch, every op of the conv-net issue once; each
explanation conserves (inputs + biases + stabilizer == total)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxlrp
from ops_harness import NEWEST_OPSET, make_model, rng, tensor


def _net(opset: int):
    """Conv+BN, Relu, MaxPool 3x3/2, depthwise Conv + Clip (ReLU6), residual Add, squeeze-excitation
    (GAP, 1x1 convs, HardSigmoid gate), swish, ConvTranspose, Resize, Concat skip, Pad + AveragePool, Slice,
    ReduceMean, Reshape via Shape, Gemm."""
    g = rng(21)
    w = lambda *s: (g.normal(size=s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    f = lambda *v: np.array(v, dtype=np.float32)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    inits = {
        "W1": w(4, 3, 3, 3), "B1": w(4), "bn_s": g.uniform(0.5, 1.5, 4).astype(np.float32), "bn_b": w(4),
        "bn_m": w(4), "bn_v": g.uniform(0.5, 1.5, 4).astype(np.float32),
        "Wd": w(4, 1, 3, 3), "lo": f(0.0), "hi": f(6.0), "Ws1": w(2, 4, 1, 1), "Ws2": w(4, 2, 1, 1),
        "Wt": w(4, 2, 2, 2), "roi": np.zeros(0, np.float32), "scales": f(1, 1, 2, 2), "pads": i64(0, 0, 1, 1, 0, 0, 1, 1),
        "st": i64(0), "en": i64(4), "ax": i64(1), "Wf": w(5, 12), "Bf": w(5), "zero": np.array(0, np.int64),
        "m1": i64(-1),
    }
    unsq = (helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]) if opset < 13 else
            helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]))
    if opset >= 13:
        inits["zero1"] = i64(0)
    reduce = (helper.make_node("ReduceMean", ["cat"], ["rm"], axes=[2], keepdims=0) if opset < 18 else
              helper.make_node("ReduceMean", ["cat", "ax2"], ["rm"], keepdims=0))
    if opset >= 18:
        inits.update(ax2=i64(2), ax23=i64(2, 3))
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "Wd"], ["dw"], group=4, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["r6"]),
        helper.make_node("Add", ["p1", "r6"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["gap"]),
        helper.make_node("Conv", ["gap", "Ws1"], ["s1"]), helper.make_node("Relu", ["s1"], ["s1r"]),
        helper.make_node("Conv", ["s1r", "Ws2"], ["s2"]),
        helper.make_node("HardSigmoid", ["s2"], ["gate"], alpha=1 / 6),
        helper.make_node("Mul", ["res", "gate"], ["se"]),
        helper.make_node("Sigmoid", ["se"], ["sg"]), helper.make_node("Mul", ["se", "sg"], ["sw"]),
        helper.make_node("ConvTranspose", ["sw", "Wt"], ["up"], strides=[2, 2]),
        helper.make_node("Resize", ["sw", "roi", "scales"], ["rs"], mode="nearest"),
        helper.make_node("Slice", ["rs", "st", "en", "ax"], ["rs4"]),
        helper.make_node("Concat", ["up", "rs4"], ["cat"], axis=1),
        helper.make_node("Pad", ["cat", "pads"], ["pd"]),
        helper.make_node("AveragePool", ["pd"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        reduce,
        helper.make_node("ReduceMax", ["ap"], ["mx"], axes=[2, 3], keepdims=0) if opset < 18 else
        helper.make_node("ReduceMax", ["ap", "ax23"], ["mx"], keepdims=0),
        helper.make_node("ReduceSum", ["rm"], ["rsum"], axes=[2], keepdims=0) if opset < 13 else
        helper.make_node("ReduceSum", ["rm", "ax2s"], ["rsum"], keepdims=0),
        helper.make_node("Concat", ["mx", "rsum"], ["feat0"], axis=1),
        helper.make_node("Shape", ["feat0"], ["shp"]), helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
        unsq, helper.make_node("Concat", ["n1", "m1"], ["target"], axis=0),
        helper.make_node("Reshape", ["feat0", "target"], ["feat"]),
        helper.make_node("Gemm", ["feat", "Wf", "Bf"], ["logits"], transB=1),
    ]
    if opset >= 13:
        inits["ax2s"] = i64(2)
    return make_model(nodes, [tensor("x", ["N", 3, 8, 8])], [tensor("logits", ["N", 5])], inits, opset)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_small_convnet_compiles_runs_and_conserves(opset, composite):
    """Every op compiles in one graph, runs in onnxruntime with a dynamic batch, and conserves to 1e-4."""
    model = _net(opset)
    explainer = onnxlrp.Explainer(model, composite, providers=["CPUExecutionProvider"])
    x = rng(5).normal(size=(3, 3, 8, 8)).astype(np.float32)
    exp = explainer.explain(x, target=[0, 2, 4])
    assert np.all(np.isfinite(exp.relevance["x"]))
    assert np.abs(exp.relevance["x"]).sum() > 0
    err = exp.conservation()["relative_error"]
    assert np.all(err < 1e-4), err


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_gamma_box"])
def test_small_convnet_compiles_at_the_newest_onnx_opset(composite):
    """At the newest opset onnx writes (newer than onnxruntime runs) the compiled graph passes the full check."""
    import onnx
    newest = onnx.defs.onnx_opset_version()
    compiled = onnxlrp.compile(_net(newest), composite)
    assert compiled.opset_import[0].version == newest
    onnx.checker.check_model(compiled, full_check=True)
