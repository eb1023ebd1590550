"""Conv (1-D, 2-D, 3-D, groups, depthwise, strides, dilations, pads, every auto_pad) and ConvTranspose as linear
nodes: every linear rule against the matrix-form rule on the node's linearisation (float64)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxlrp
from ops_harness import LINEAR_RULE_CASES, NEWEST_OPSET, check_linear, rng, single


def _conv(x_shape, w_shape, bias=True, opset=17, op="Conv", seed=1, **attrs):
    """A single Conv/ConvTranspose node with random weights (and bias) of the given shapes."""
    g = rng(seed)
    inits = {"W": g.normal(size=w_shape).astype(np.float32)}
    names = ["W"]
    if bias:
        out_ch = w_shape[0] if op == "Conv" else w_shape[1] * attrs.get("group", 1)
        inits["B"] = g.normal(size=out_ch).astype(np.float32)
        names.append("B")
    return single(op, x_shape, inits, names, opset=opset, **attrs), (w_shape[0] if op == "Conv" else
                                                                      w_shape[1] * attrs.get("group", 1))


CONV_CASES = {
    "2d_pad1": ((1, 3, 6, 6), (4, 3, 3, 3), dict(pads=[1, 1, 1, 1])),
    "2d_stride2_dil2_asym": ((1, 2, 9, 8), (3, 2, 3, 2), dict(strides=[2, 2], dilations=[2, 1], pads=[1, 0, 2, 1])),
    "2d_1x1_stride2": ((1, 4, 7, 7), (3, 4, 1, 1), dict(strides=[2, 2])),
    "2d_groups2": ((1, 4, 5, 5), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_depthwise": ((1, 4, 6, 6), (4, 1, 3, 3), dict(group=4, strides=[2, 2], pads=[1, 1, 1, 1])),
    "2d_depthwise_x2": ((1, 3, 5, 5), (6, 1, 3, 3), dict(group=3, pads=[0, 1, 1, 0])),
    "2d_groups_one_output_each": ((1, 4, 4, 4), (2, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_same_upper_s2": ((1, 2, 6, 7), (3, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d_same_lower_s2": ((1, 2, 6, 7), (3, 2, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "2d_same_upper_even_k": ((1, 2, 7, 6), (2, 2, 4, 2), dict(auto_pad="SAME_UPPER")),  # ORT: no dilation with SAME
    "2d_valid_dil": ((1, 2, 7, 6), (2, 2, 3, 2), dict(dilations=[2, 3], auto_pad="VALID")),
    "2d_valid": ((1, 2, 7, 6), (3, 2, 3, 3), dict(strides=[2, 1], auto_pad="VALID")),
    "2d_kernel_attr": ((1, 2, 5, 5), (3, 2, 2, 2), dict(kernel_shape=[2, 2], strides=[3, 3])),
    "1d": ((1, 3, 11), (4, 3, 3), dict(strides=[2], pads=[1, 2])),
    "1d_same_upper": ((1, 2, 10), (3, 2, 4), dict(strides=[3], auto_pad="SAME_UPPER")),
    "3d": ((1, 2, 4, 5, 4), (3, 2, 2, 3, 2), dict(strides=[1, 2, 1], pads=[0, 1, 1, 1, 1, 0])),
    "3d_depthwise": ((1, 2, 4, 4, 4), (2, 1, 3, 3, 3), dict(group=2, pads=[1] * 6, strides=[2, 2, 2])),
    # large strided kernels: the transpose is a sub-pixel Conv + DepthToSpace (emitters/subpixel.py) ...
    "2d_7x7_s2_stem": ((1, 3, 8, 8), (4, 3, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
    "2d_5x6_s2_asym": ((1, 2, 10, 8), (3, 2, 5, 6), dict(strides=[2, 2], pads=[2, 2, 2, 3])),
    "2d_7x7_s3": ((1, 2, 9, 9), (3, 2, 7, 7), dict(strides=[3, 3], pads=[2, 2, 2, 2])),
    # ... except where the transposed grid is not exactly the input's size (ConvTranspose with output_padding)
    "2d_7x7_s2_odd": ((1, 2, 9, 9), (3, 2, 7, 7), dict(strides=[2, 2], pads=[3, 3, 3, 3])),
}
SUBPIXEL = {"2d_7x7_s2_stem": True, "2d_5x6_s2_asym": True, "2d_7x7_s3": True, "2d_7x7_s2_odd": False,
            "2d_1x1_stride2": False, "2d_depthwise": False}


@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_conv_geometry(case, rule, params):
    """Every geometry under epsilon, z+ and gamma: R_x, bias per channel, stabilizer, conservation."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, units = _conv(x_shape, w_shape, **attrs)
    check_linear(model, x_shape, rule, params, "W", units)


@pytest.mark.parametrize("case", list(SUBPIXEL))
def test_subpixel_transpose_where_it_applies(case):
    """A 2-D stride-t transpose with a kernel of at least 2 t + 1 taps on a static grid t times the output's is a
    sub-pixel Conv (its phases as channels) + a one-hot ConvTranspose, nothing else is; the numbers are
    test_conv_geometry's."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, _ = _conv(x_shape, w_shape, **attrs)
    nodes = [n for n in onnxlrp.compile(model, "epsilon").graph.node if n.name.startswith("lrp/")]
    phases = [n for n in nodes if n.op_type == "Conv" and "bwd_phases" in n.output[0]]
    assert len(phases) == SUBPIXEL[case]
    if SUBPIXEL[case]:  # the interleaving ConvTranspose: kernel = stride
        (interleave,) = [n for n in nodes if n.op_type == "ConvTranspose"]
        attrs_of = {a.name: onnx.helper.get_attribute_value(a) for a in interleave.attribute}
        assert attrs_of["kernel_shape"] == attrs_of["strides"] == attrs["strides"]


@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("case", ["2d_depthwise", "1d", "3d", "2d_same_lower_s2", "2d_5x6_s2_asym"])
def test_conv_every_rule(case, rule, params):
    """Every linear rule on a few geometries (1-D, 3-D, depthwise, SAME_LOWER)."""
    x_shape, w_shape, attrs = CONV_CASES[case]
    model, units = _conv(x_shape, w_shape, **attrs)
    check_linear(model, x_shape, rule, params, "W", units)


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_conv_opsets_and_no_bias(opset):
    """Conv without bias at the oldest and newest opsets: no bias row, R_x exact."""
    x_shape, w_shape, attrs = CONV_CASES["2d_stride2_dil2_asym"]
    model, _ = _conv(x_shape, w_shape, bias=False, opset=opset, **attrs)
    res = check_linear(model, x_shape, "zplus", {}, "W", None)
    assert not res.bias


CONVT_CASES = {
    "2d_s2": ((1, 3, 4, 4), (3, 2, 3, 3), dict(strides=[2, 2])),
    "2d_s2_pads_outpad": ((1, 3, 4, 5), (3, 2, 3, 3), dict(strides=[2, 2], pads=[1, 1, 1, 1],
                                                           output_padding=[1, 0])),
    "2d_k2s2_unet": ((1, 4, 3, 3), (4, 2, 2, 2), dict(strides=[2, 2])),
    "2d_groups_dil": ((1, 4, 4, 3), (4, 1, 2, 3), dict(group=2, dilations=[2, 1], strides=[1, 2], pads=[0, 1, 1, 0])),
    "2d_output_shape": ((1, 2, 3, 4), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 8])),
    "2d_output_shape_big": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[8, 7])),
    "2d_output_shape_upper": ((1, 2, 3, 4), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 5],
                                                                auto_pad="SAME_UPPER")),
    "2d_same_upper": ((1, 2, 3, 4), (2, 3, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d_same_lower": ((1, 2, 3, 4), (2, 3, 3, 2), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "1d": ((1, 2, 5), (2, 3, 4), dict(strides=[3], pads=[1, 2])),
    "3d": ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1])),
    # SAME_* with a kernel shorter than the stride: the pads cannot be negative, so the output is the full grid
    # s*(in-1) + eff + output_padding, shorter than in*s (hypothesis found the first two in CI)
    "1d_same_upper_k1_s2": ((1, 1, 2), (1, 1, 1), dict(strides=[2], dilations=[1], group=1, auto_pad="SAME_UPPER")),
    "1d_same_upper_k1_s2_len1": ((1, 1, 1), (1, 1, 1), dict(strides=[2], dilations=[1], group=1,
                                                             auto_pad="SAME_UPPER")),
    "1d_same_lower_k2_s3": ((1, 2, 3), (2, 1, 2), dict(strides=[3], auto_pad="SAME_LOWER")),
    "1d_same_upper_k1_s3_outpad": ((1, 1, 2), (1, 2, 1), dict(strides=[3], output_padding=[1], auto_pad="SAME_UPPER")),
    "1d_same_lower_k3_s2_outpad": ((1, 1, 2), (1, 1, 3), dict(strides=[2], output_padding=[1], auto_pad="SAME_LOWER")),
    "2d_same_lower_k_lt_s_dil": ((1, 2, 3, 2), (2, 1, 1, 2), dict(strides=[3, 2], dilations=[1, 2], group=2,
                                                                  auto_pad="SAME_LOWER")),
}


@pytest.mark.parametrize("case", list(CONVT_CASES))
@pytest.mark.parametrize("rule,params", [LINEAR_RULE_CASES[i] for i in (0, 2, 4)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_conv_transpose_geometry(case, rule, params):
    """ConvTranspose as a forward layer (its transpose is a Conv): output_padding, output_shape, auto_pad."""
    x_shape, w_shape, attrs = CONVT_CASES[case]
    model, units = _conv(x_shape, w_shape, op="ConvTranspose", **attrs)
    check_linear(model, x_shape, rule, params, "W", units)


@pytest.mark.parametrize("rule,params", LINEAR_RULE_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_conv_transpose_every_rule(rule, params):
    """Every linear rule on a padded, strided ConvTranspose."""
    x_shape, w_shape, attrs = CONVT_CASES["2d_s2_pads_outpad"]
    model, units = _conv(x_shape, w_shape, op="ConvTranspose", **attrs)
    check_linear(model, x_shape, rule, params, "W", units)


@pytest.mark.parametrize("opset", [11, NEWEST_OPSET])
def test_conv_transpose_opsets(opset):
    """ConvTranspose at the oldest and newest opsets."""
    x_shape, w_shape, attrs = CONVT_CASES["2d_k2s2_unet"]
    model, units = _conv(x_shape, w_shape, op="ConvTranspose", opset=opset, **attrs)
    check_linear(model, x_shape, "gamma", {"gamma": 0.25}, "W", units)
