"""The gradient backward mode: one vector-Jacobian product (VJP) per ONNX op, in a table keyed by op type (the shape
of JAX's primitive transposes).

A VJP receives the builder, the node's NodeView and the cotangent g_y = df/dy of each of its outputs (None where
none arrives) and returns g_x = (dy/dx)^T g_y for every input on the gradient's path (None for weights, shapes and
indices), and, for a linear node with a constant bias b, the bias's gradient times the bias, b * df/db, per unit.

- linear ops (Gemm, MatMul with a constant, Conv, ConvTranspose, BatchNormalization, Add/Sub of a constant) reuse
  the LinearOp transposes of emitters/linear.py: g_x = W^T g_z;
- activations multiply by their derivative: g_x = g_y * f'(x);
- products follow the product rule (g_a = g_y * b, g_b = g_y * a, summed over broadcast axes): the gate branch of
  x * sigmoid(.) receives its gradient, where LRP's gate rule sends it none;
- max pools route g_y to the window's maximum (the winner-takes-all emitter, first index on ties), and shape ops
  and Resize, whose relevance emitters are exact transposes already, are reused as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .builder import GraphBuilder
from .emitters import NodeView, lookup
from .emitters.generic_linear import _bias_axes, pad_rank
from .emitters.linear import LinearOp, affine_op, batchnorm_op, conv_op, conv_transpose_op, gemm_op, matmul_op
from .emitters.pooling import average_pool_transpose, reduce_axes
from .emitters.shape import unbroadcast
from .graph import opset_version
from .rules import Pass, WinnerTakesAll


@dataclass
class Backward:
    """A VJP's result: the cotangent per node input (or None), and b * df/db (N, units) of a biased linear node."""

    inputs: list
    bias: Optional[str] = None


VjpFn = Callable[[GraphBuilder, NodeView, list], Backward]


@dataclass(frozen=True)
class VjpSpec:
    """A registered VJP: the function and a support check that returns a reason when the node is unsupported."""

    op_type: str
    fn: VjpFn
    check: Optional[Callable[[NodeView], Optional[str]]] = None


VJPS: dict = {}
# relevance emitters that already are the exact VJP: shape ops move values back as the gradient does, max pools
# route to the winner; they are reused with these rules (they read nothing else of the rule)
REUSED_GROUPS = {"shape": Pass(), "maxpool": WinnerTakesAll()}


def vjp(op_types, check: Optional[Callable[[NodeView], Optional[str]]] = None):
    """Decorator: register fn as the VJP of each op type."""
    names = [op_types] if isinstance(op_types, str) else list(op_types)

    def wrap(fn: VjpFn) -> VjpFn:
        for op in names:
            if op in VJPS:
                raise RuntimeError(f"VJP for {op} registered twice")
            VJPS[op] = VjpSpec(op, fn, check)
        return fn

    return wrap


def lookup_vjp(view: NodeView) -> Optional[VjpSpec]:
    """The VJP of a node: its own entry, else the relevance emitter of a shape op or max pool; None if none."""
    spec = VJPS.get(view.op_type)
    if spec is not None:
        return spec
    emitter = lookup(view.op_type)
    if emitter is None or emitter.group(view) not in REUSED_GROUPS:
        return None
    rule = REUSED_GROUPS[emitter.group(view)]

    def reused(b: GraphBuilder, v: NodeView, g: list) -> Backward:
        """The relevance emitter run on the cotangent (its bias and stabilizer shares, if any, are not gradients)."""
        return Backward(list(emitter.fn(b, v, rule, g).inputs))

    return VjpSpec(view.op_type, reused, emitter.check)


def _lrp_check(op_type: str) -> Callable[[NodeView], Optional[str]]:
    """The support check of the op's relevance emitter (the same structural conditions hold for its VJP)."""
    def check(view: NodeView) -> Optional[str]:
        spec = lookup(op_type)
        return spec.check(view) if spec is not None and spec.check is not None else None
    return check


def _none_after(first: Optional[str], view: NodeView) -> list:
    """[first, None, None, ...] as long as the node's inputs."""
    return [first] + [None] * (len(view.inputs) - 1)


def _to_shape_of(b: GraphBuilder, view: NodeView, g: str, name: str) -> str:
    """g (shaped like the node's output) summed back to input `name`'s shape where that input was broadcast."""
    x_shape, out_shape = view.shape(name), view.shape(view.outputs[0])
    if x_shape is None or out_shape is None or tuple(x_shape) == tuple(out_shape):
        return g
    return unbroadcast(b, g, name, x_shape, len(out_shape))


def _known_ranks(view: NodeView) -> Optional[str]:
    """Products and sums of run-time tensors need every operand's rank (to sum g back over broadcast axes)."""
    for name in [n for n in view.inputs if n] + list(view.outputs[:1]):
        if view.shape(name) is None:
            return f"the rank of {name!r} is not known at compile time"
    return None


# ---------------------------------------------------------------------------------------------------------------
# linear ops: g_x = W^T g_z, and b * df/db = b * (g_z summed over the axes the bias is constant along)
def linear_backward(b: GraphBuilder, op: LinearOp, g: str) -> tuple:
    """(W^T g, b * df/db as (N, units) or None) for a linear op z = op(x, W) + bias."""
    g_x = op.transpose(b, g, "W")
    if op.bias is None or not np.any(op.bias):
        return g_x, None
    axes = _bias_axes(op)
    reduced = b.reduce("ReduceSum", g, axes, keepdims=True, hint="g_bias") if axes else g
    grad_bias = b.op("Mul", [reduced, b.const(pad_rank(op.bias, op.z_rank), hint="b")], "b_grad")
    if op.z_rank != 2:
        grad_bias = b.op("Reshape", [grad_bias, b.ints([0, -1])], "b_grad_units")
    return g_x, grad_bias


def _linear_vjp(make_op: Callable[[NodeView], LinearOp]) -> VjpFn:
    """A VJP for a linear op built by make_op (one of emitters/linear.py's factories)."""
    def fn(b: GraphBuilder, view: NodeView, g: list) -> Backward:
        op = make_op(view)
        g_x, grad_bias = linear_backward(b, op, g[0])
        return Backward([g_x if name == op.x else None for name in view.inputs], grad_bias)
    return fn


vjp("Gemm", check=_lrp_check("Gemm"))(_linear_vjp(gemm_op))
vjp("Conv", check=_lrp_check("Conv"))(_linear_vjp(conv_op))
vjp("ConvTranspose", check=_lrp_check("ConvTranspose"))(_linear_vjp(conv_transpose_op))
vjp("BatchNormalization", check=_lrp_check("BatchNormalization"))(_linear_vjp(batchnorm_op))


def _constant_operand(view: NodeView) -> bool:
    """Exactly two operands: one on the path, the other a constant."""
    return (len(view.inputs) == 2 and sum(view.is_relevant(n) for n in view.inputs) == 1
            and sum(view.const(n) is not None for n in view.inputs) == 1)


def _const_2d(view: NodeView) -> bool:
    """MatMul with one operand on the path and the other a 2-D constant (a dense linear node)."""
    return _constant_operand(view) and any(view.const(n) is not None and view.const(n).ndim == 2 for n in view.inputs)


def _check_matmul(view: NodeView) -> Optional[str]:
    """MatMul: a 2-D constant operand, or operands of rank >= 2 with known ranks."""
    if _const_2d(view):
        return None
    reason = _known_ranks(view)
    if reason:
        return reason
    if any(len(view.shape(n)) < 2 for n in view.inputs):
        return "a 1-D operand of a product of two run-time tensors is not supported"
    return None


@vjp("MatMul", check=_check_matmul)
def vjp_matmul(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = a @ c: a dense linear node when c (or a) is a 2-D constant; else g_a = g @ c^T, g_c = a^T @ g (the last
    two axes transposed), each summed back over the batch axes it was broadcast along."""
    if _const_2d(view):
        return _linear_vjp(matmul_op)(b, view, g)
    a, c = view.inputs
    grads = [None, None]
    for i, (name, other) in enumerate(((a, c), (c, a))):
        if not view.is_relevant(name):
            continue
        rank = len(view.shape(other))
        swapped = b.op("Transpose", [other], "swapped", perm=list(range(rank - 2)) + [rank - 1, rank - 2])
        full = b.op("MatMul", [g[0], swapped] if i == 0 else [swapped, g[0]], "g_matmul")
        grads[i] = _to_shape_of(b, view, full, name)
    return Backward(grads)


# ---------------------------------------------------------------------------------------------------------------
# sums and products
def _check_add(view: NodeView) -> Optional[str]:
    """Add/Sub: a constant operand that does not enlarge the activation, or operands of known rank."""
    if _constant_operand(view):
        return _lrp_check(view.op_type)(view)
    return _known_ranks(view)


@vjp(("Add", "Sub"), check=_check_add)
def vjp_add(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = a +- c: with a constant c an affine node (its bias reported as b * df/db); else g_a = g, g_c = +-g,
    summed back over broadcast axes."""
    if _constant_operand(view):
        return _linear_vjp(affine_op)(b, view, g)
    grads = []
    for k, name in enumerate(view.inputs):
        if not view.is_relevant(name):
            grads.append(None)
            continue
        g_x = _to_shape_of(b, view, g[0], name)
        grads.append(b.op("Neg", [g_x], "g_neg") if (view.op_type == "Sub" and k == 1) else g_x)
    return Backward(grads)


@vjp("Sum", check=_known_ranks)
def vjp_sum(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = sum_i x_i: g_i = g summed back over the axes x_i was broadcast along."""
    return Backward([_to_shape_of(b, view, g[0], n) if view.is_relevant(n) else None for n in view.inputs])


@vjp("Mul", check=_known_ranks)
def vjp_mul(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """Product rule, y = a * c: g_a = g * c, g_c = g * a (each summed back over its broadcast axes); a constant
    factor is the same formula."""
    a, c = view.inputs
    grads = [None, None]
    for i, (name, other) in enumerate(((a, c), (c, a))):
        if view.is_relevant(name):
            grads[i] = _to_shape_of(b, view, b.op("Mul", [g[0], other], "g_prod"), name)
    return Backward(grads)


@vjp("Div", check=_known_ranks)
def vjp_div(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """Quotient rule, y = a / c: g_a = g / c, g_c = -g * y / c."""
    a, c = view.inputs
    grads = [None, None]
    if view.is_relevant(a):
        grads[0] = _to_shape_of(b, view, b.op("Div", [g[0], c], "g_quot"), a)
    if view.is_relevant(c):
        ratio = b.op("Div", [view.outputs[0], c], "y_over_c")
        grads[1] = _to_shape_of(b, view, b.op("Neg", [b.op("Mul", [g[0], ratio], "g_quot")], "g_quot_neg"), c)
    return Backward(grads)


@vjp("Where", check=_known_ranks)
def vjp_where(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = where(c, a, e): g_a = g where c holds, g_e = g elsewhere (each summed back over its broadcast axes)."""
    condition, a, e = view.inputs
    zero = b.const(0.0)
    grads = [None, None, None]
    if view.is_relevant(a):
        grads[1] = _to_shape_of(b, view, b.op("Where", [condition, g[0], zero], "g_then"), a)
    if view.is_relevant(e):
        grads[2] = _to_shape_of(b, view, b.op("Where", [condition, zero, g[0]], "g_else"), e)
    return Backward(grads)


def _check_pow(view: NodeView) -> Optional[str]:
    """Pow: a run-time base raised to a constant exponent."""
    if view.is_relevant(view.inputs[1]):
        return "a run-time exponent is not supported (only x ** constant)"
    return None if view.const(view.inputs[1]) is not None else "its exponent is not a constant"


@vjp("Pow", check=_check_pow)
def vjp_pow(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = x ** p (constant p): g_x = g * p * x ** (p - 1)."""
    x = view.inputs[0]
    p = view.const(view.inputs[1]).astype(np.float64)
    slope = b.op("Mul", [b.op("Pow", [x, b.const(p - 1.0)], "x_pow"), b.const(p)], "pow_slope")
    return Backward([_to_shape_of(b, view, b.op("Mul", [g[0], slope], "g_x"), x), None])


# ---------------------------------------------------------------------------------------------------------------
# activations: g_x = g_y * f'(x)
def _where(b: GraphBuilder, condition: str, yes: str, no: str) -> str:
    """Where(condition, yes, no)."""
    return b.op("Where", [condition, yes, no], "g_where")


def _scaled(b: GraphBuilder, g: str, factor: str) -> str:
    """g * factor."""
    return b.op("Mul", [g, factor], "g_x")


ActivationFn = Callable[[GraphBuilder, NodeView, str], str]
ACTIVATIONS: dict = {}


def activation(op_types) -> Callable[[ActivationFn], ActivationFn]:
    """Decorator: register an activation's g_x = g_y * f'(x) (x = the node's first input, y its output)."""
    names = [op_types] if isinstance(op_types, str) else list(op_types)

    def wrap(fn: ActivationFn) -> ActivationFn:
        for op in names:
            ACTIVATIONS[op] = fn
            vjp(op)(_activation_vjp(fn))
        return fn

    return wrap


def _activation_vjp(fn: ActivationFn) -> VjpFn:
    """The VJP of an elementwise activation: g for its first input, nothing for constant parameters."""
    def run(b: GraphBuilder, view: NodeView, g: list) -> Backward:
        return Backward(_none_after(fn(b, view, g[0]), view))
    return run


@activation("Relu")
def d_relu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = [x > 0] (0 at the kink, as torch)."""
    x = view.inputs[0]
    return _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), g, b.const(0.0))


@activation("LeakyRelu")
def d_leaky_relu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 where x > 0, alpha elsewhere."""
    x = view.inputs[0]
    alpha = view.attr("alpha", 0.01)
    return _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), g, _scaled(b, g, b.const(alpha)))


@activation("PRelu")
def d_prelu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 where x > 0, the slope elsewhere (the slope broadcasts against x)."""
    x, slope = view.inputs[:2]
    return _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), g, _scaled(b, g, slope))


@activation("ThresholdedRelu")
def d_thresholded_relu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = [x > alpha]."""
    x = view.inputs[0]
    return _where(b, b.op("Greater", [x, b.const(view.attr("alpha", 1.0))], "x_above"), g, b.const(0.0))


def _clip_bounds(view: NodeView) -> tuple:
    """(low, high) value names of a Clip (inputs, opset >= 11), None where unbounded."""
    low = view.inputs[1] if len(view.inputs) > 1 and view.inputs[1] else None
    high = view.inputs[2] if len(view.inputs) > 2 and view.inputs[2] else None
    return low, high


@activation("Clip")
def d_clip(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = [low < x < high] (0 on the bounds, as torch's hardtanh / ReLU6)."""
    x = view.inputs[0]
    low, high = _clip_bounds(view)
    inside = None
    for bound, op in ((low, "Greater"), (high, "Less")):
        if bound is None:
            continue
        test = b.op(op, [x, bound], "x_inside")
        inside = test if inside is None else b.op("And", [inside, test], "x_inside")
    return g if inside is None else _where(b, inside, g, b.const(0.0))


@activation("Elu")
def d_elu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 where x > 0, alpha * exp(x) elsewhere."""
    x = view.inputs[0]
    negative = b.op("Mul", [b.op("Exp", [x], "exp_x"), b.const(view.attr("alpha", 1.0))], "elu_slope")
    return _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), g, _scaled(b, g, negative))


@activation("Selu")
def d_selu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = gamma where x > 0, gamma * alpha * exp(x) elsewhere."""
    x = view.inputs[0]
    alpha, gamma = view.attr("alpha", 1.67326319217681884765625), view.attr("gamma", 1.05070102214813232421875)
    negative = b.op("Mul", [b.op("Exp", [x], "exp_x"), b.const(alpha * gamma)], "selu_slope")
    slope = _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), b.const(gamma), negative)
    return _scaled(b, g, slope)


@activation("Celu")
def d_celu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 where x > 0, exp(x / alpha) elsewhere."""
    x = view.inputs[0]
    negative = b.op("Exp", [b.op("Div", [x, b.const(view.attr("alpha", 1.0))], "x_scaled")], "celu_slope")
    return _where(b, b.op("Greater", [x, b.const(0.0)], "x_pos"), g, _scaled(b, g, negative))


@activation("Sigmoid")
def d_sigmoid(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = y * (1 - y)."""
    y = view.outputs[0]
    return _scaled(b, g, b.op("Mul", [y, b.op("Sub", [b.const(1.0), y], "one_minus_y")], "sigmoid_slope"))


@activation("HardSigmoid")
def d_hard_sigmoid(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = alpha where 0 < alpha * x + beta < 1, 0 elsewhere."""
    x = view.inputs[0]
    alpha, beta = view.attr("alpha", 0.2), view.attr("beta", 0.5)
    return _hard_sigmoid_slope(b, x, g, alpha, beta, _scaled(b, g, b.const(alpha)))


def _hard_sigmoid_slope(b: GraphBuilder, x: str, g: str, alpha: float, beta: float, inside: str) -> str:
    """`inside` where 0 < alpha * x + beta < 1, else 0."""
    t = b.op("Add", [b.op("Mul", [x, b.const(alpha)], "ax"), b.const(beta)], "ax_b")
    within = b.op("And", [b.op("Greater", [t, b.const(0.0)], "t_pos"), b.op("Less", [t, b.const(1.0)], "t_lt1")],
                  "t_inside")
    return _where(b, within, inside, b.const(0.0))


@activation("HardSwish")
def d_hard_swish(b: GraphBuilder, view: NodeView, g: str) -> str:
    """y = x * hardsigmoid(x) (alpha 1/6, beta 1/2): f'(x) = 0 for x < -3, 2 alpha x + beta inside, 1 above 3."""
    x = view.inputs[0]
    alpha, beta = 1.0 / 6.0, 0.5
    t = b.op("Add", [b.op("Mul", [x, b.const(alpha)], "ax"), b.const(beta)], "ax_b")
    inside = b.op("Add", [b.op("Mul", [x, b.const(2.0 * alpha)], "ax2"), b.const(beta)], "hswish_inside")
    above = b.op("Greater", [t, b.const(1.0)], "t_gt1")
    below = b.op("Less", [t, b.const(0.0)], "t_lt0")
    slope = _where(b, below, b.const(0.0), _where(b, above, b.const(1.0), inside))
    return _scaled(b, g, slope)


@activation("Tanh")
def d_tanh(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 - y^2."""
    y = view.outputs[0]
    return _scaled(b, g, b.op("Sub", [b.const(1.0), b.op("Mul", [y, y], "y_sq")], "tanh_slope"))


@activation("Softplus")
def d_softplus(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = sigmoid(x)."""
    return _scaled(b, g, b.op("Sigmoid", [view.inputs[0]], "softplus_slope"))


@activation("Softsign")
def d_softsign(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 / (1 + |x|)^2."""
    one_plus = b.op("Add", [b.op("Abs", [view.inputs[0]], "abs_x"), b.const(1.0)], "one_plus")
    return b.op("Div", [g, b.op("Mul", [one_plus, one_plus], "one_plus_sq")], "g_x")


SQRT_HALF = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@activation("Gelu")
def d_gelu(b: GraphBuilder, view: NodeView, g: str) -> str:
    """erf form: f'(x) = Phi(x) + x phi(x); tanh form, u = k (x + c x^3), t = tanh(u):
    f'(x) = (1 + t) / 2 + x (1 - t^2) k (1 + 3 c x^2) / 2, k = sqrt(2 / pi), c = 0.044715."""
    x = view.inputs[0]
    x_sq = b.op("Mul", [x, x], "x_sq")
    if view.attr("approximate", "none") == "tanh":
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        u = b.op("Mul", [b.op("Add", [x, b.op("Mul", [b.op("Mul", [x_sq, x], "x_cube"), b.const(c)], "cx3")], "x_cx3"),
                         b.const(k)], "u")
        t = b.op("Tanh", [u], "t")
        half_one_plus = b.op("Mul", [b.op("Add", [t, b.const(1.0)], "one_plus_t"), b.const(0.5)], "cdf")
        du = b.op("Mul", [b.op("Add", [b.op("Mul", [x_sq, b.const(3.0 * c)], "c3x2"), b.const(1.0)], "du_inner"),
                          b.const(0.5 * k)], "du")
        sech = b.op("Sub", [b.const(1.0), b.op("Mul", [t, t], "t_sq")], "sech_sq")
        slope = b.op("Add", [half_one_plus, b.op("Mul", [b.op("Mul", [x, sech], "x_sech"), du], "x_sech_du")],
                     "gelu_slope")
        return _scaled(b, g, slope)
    cdf = b.op("Mul", [b.op("Add", [b.op("Erf", [b.op("Mul", [x, b.const(SQRT_HALF)], "x_s")], "erf"),
                                    b.const(1.0)], "one_plus_erf"), b.const(0.5)], "cdf")
    pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [x_sq, b.const(-0.5)], "neg_half_x2")], "exp"),
                       b.const(INV_SQRT_2PI)], "pdf")
    return _scaled(b, g, b.op("Add", [cdf, b.op("Mul", [x, pdf], "x_pdf")], "gelu_slope"))


@activation("Mish")
def d_mish(b: GraphBuilder, view: NodeView, g: str) -> str:
    """y = x tanh(softplus(x)): f'(x) = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))."""
    x = view.inputs[0]
    t = b.op("Tanh", [b.op("Softplus", [x], "softplus")], "t")
    sech = b.op("Sub", [b.const(1.0), b.op("Mul", [t, t], "t_sq")], "sech_sq")
    slope = b.op("Add", [t, b.op("Mul", [b.op("Mul", [x, b.op("Sigmoid", [x], "sig")], "x_sig"), sech], "rest")],
                 "mish_slope")
    return _scaled(b, g, slope)


@activation("Swish")
def d_swish(b: GraphBuilder, view: NodeView, g: str) -> str:
    """y = x sigmoid(alpha x): f'(x) = s + alpha x s (1 - s), s = sigmoid(alpha x)."""
    x = view.inputs[0]
    alpha = view.attr("alpha", 1.0)
    s = b.op("Sigmoid", [b.op("Mul", [x, b.const(alpha)], "ax")], "s")
    rest = b.op("Mul", [b.op("Mul", [x, b.const(alpha)], "ax2"), b.op("Mul", [s, b.op("Sub", [b.const(1.0), s],
                                                                                       "one_minus_s")], "s_ds")],
                "rest")
    return _scaled(b, g, b.op("Add", [s, rest], "swish_slope"))


@activation("Erf")
def d_erf(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 2 / sqrt(pi) * exp(-x^2)."""
    x = view.inputs[0]
    exp = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x], "x_sq")], "neg_x_sq")], "exp")
    return _scaled(b, g, b.op("Mul", [exp, b.const(2.0 / math.sqrt(math.pi))], "erf_slope"))


@activation("Abs")
def d_abs(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = sign(x) (0 at 0)."""
    return _scaled(b, g, b.op("Sign", [view.inputs[0]], "sign"))


@activation("Neg")
def d_neg(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = -1."""
    return b.op("Neg", [g], "g_x")


@activation("Exp")
def d_exp(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = y."""
    return _scaled(b, g, view.outputs[0])


@activation("Log")
def d_log(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 / x."""
    return b.op("Div", [g, view.inputs[0]], "g_x")


@activation("Sqrt")
def d_sqrt(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = 1 / (2 y)."""
    return b.op("Div", [g, b.op("Mul", [view.outputs[0], b.const(2.0)], "two_y")], "g_x")


@activation("Reciprocal")
def d_reciprocal(b: GraphBuilder, view: NodeView, g: str) -> str:
    """f'(x) = -y^2."""
    y = view.outputs[0]
    return b.op("Neg", [_scaled(b, g, b.op("Mul", [y, y], "y_sq"))], "g_x")


def _softmax_axes(view: NodeView) -> list:
    """The axes a Softmax / LogSoftmax normalises over: one axis from opset 13, all from `axis` on before."""
    rank = len(view.shape(view.inputs[0]))
    axis = view.attr("axis", -1 if _opset_at_least(view, 13) else 1) % rank
    return [axis] if _opset_at_least(view, 13) else list(range(axis, rank))


def _opset_at_least(view: NodeView, version: int) -> bool:
    """True when the model imports the default domain at `version` or later."""
    return opset_version(view.index.model) >= version


def _check_softmax(view: NodeView) -> Optional[str]:
    """Softmax needs its input's rank."""
    return None if view.shape(view.inputs[0]) is not None else f"the rank of {view.inputs[0]!r} is not known"


@vjp("Softmax", check=_check_softmax)
def vjp_softmax(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """g_x = y * (g - sum(g * y)) over the softmax axes."""
    y = view.outputs[0]
    inner = b.reduce("ReduceSum", b.op("Mul", [g[0], y], "g_y"), _softmax_axes(view), keepdims=True, hint="g_dot_y")
    return Backward([b.op("Mul", [y, b.op("Sub", [g[0], inner], "g_centred")], "g_x")])


@vjp("LogSoftmax", check=_check_softmax)
def vjp_log_softmax(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """g_x = g - softmax(x) * sum(g) over the softmax axes."""
    total = b.reduce("ReduceSum", g[0], _softmax_axes(view), keepdims=True, hint="g_total")
    softmax = b.op("Exp", [view.outputs[0]], "softmax")
    return Backward([b.op("Sub", [g[0], b.op("Mul", [softmax, total], "p_total")], "g_x")])


# ---------------------------------------------------------------------------------------------------------------
# pools and reductions
def _expand_like(b: GraphBuilder, g: str, x: str) -> str:
    """g broadcast to x's shape."""
    return b.op("Expand", [g, b.op("Shape", [x], "x_shape")], "g_x")


@vjp("AveragePool", check=_lrp_check("AveragePool"))
def vjp_average_pool(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """g_x = J^T g: each window's g divided by its divisor, added back over the window."""
    return Backward([average_pool_transpose(b, view, g[0])])


@vjp("GlobalAveragePool", check=_lrp_check("GlobalAveragePool"))
def vjp_global_average_pool(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """g_x = g / (number of spatial positions), broadcast over them."""
    x = view.inputs[0]
    size = float(np.prod(view.shape(x)[2:]))
    return Backward([_expand_like(b, b.op("Mul", [g[0], b.const(1.0 / size)], "g_mean"), x)])


@vjp(("ReduceMean", "ReduceSum"), check=_lrp_check("ReduceSum"))
def vjp_reduce(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """g_x = g (ReduceSum) or g / k (ReduceMean over k values), broadcast back over the reduced axes."""
    x = view.inputs[0]
    axes = reduce_axes(view)
    g_y = g[0]
    if axes and not view.attr("keepdims", 1):
        g_y = b.unsqueeze(g_y, axes, "g_keep")
    if view.op_type == "ReduceMean" and axes:
        g_y = b.op("Mul", [g_y, b.const(1.0 / float(np.prod([view.shape(x)[a] for a in axes])))], "g_mean")
    return Backward(_none_after(_expand_like(b, g_y, x), view))


def _check_layer_norm(view: NodeView) -> Optional[str]:
    """LayerNormalization: constant scale and bias, known rank, one output in use."""
    if view.shape(view.inputs[0]) is None:
        return f"the rank of {view.inputs[0]!r} is not known"
    if any(view.const(n) is None for n in view.inputs[1:] if n):
        return "its scale or bias is not a constant"
    if any(view.outputs[1:]):
        return "its Mean / InvStdDev outputs are read (not supported)"
    return None


@vjp("LayerNormalization", check=_check_layer_norm)
def vjp_layer_norm(b: GraphBuilder, view: NodeView, g: list) -> Backward:
    """y = xhat * scale + bias, xhat = (x - mean) / sigma over the axes from `axis` on:
    g_x = (h - mean(h) - xhat * mean(h * xhat)) / sigma with h = g * scale; bias gradient: g summed over the
    leading axes, times the bias."""
    x = view.inputs[0]
    rank = len(view.shape(x))
    axes = list(range(view.attr("axis", -1) % rank, rank))
    eps = view.attr("epsilon", 1e-5)
    centred = b.op("Sub", [x, b.reduce("ReduceMean", x, axes, keepdims=True, hint="mean")], "centred")
    var = b.reduce("ReduceMean", b.op("Mul", [centred, centred], "sq"), axes, keepdims=True, hint="var")
    sigma = b.op("Sqrt", [b.op("Add", [var, b.const(eps)], "var_eps")], "sigma")
    xhat = b.op("Div", [centred, sigma], "xhat")
    h = b.op("Mul", [g[0], view.inputs[1]], "h")
    mean_h = b.reduce("ReduceMean", h, axes, keepdims=True, hint="mean_h")
    mean_hx = b.reduce("ReduceMean", b.op("Mul", [h, xhat], "h_xhat"), axes, keepdims=True, hint="mean_hx")
    inner = b.op("Sub", [b.op("Sub", [h, mean_h], "h_c"), b.op("Mul", [xhat, mean_hx], "xhat_m")], "inner")
    g_x = b.op("Div", [inner, sigma], "g_x")
    grad_bias = None
    bias = view.const(view.inputs[2]) if len(view.inputs) > 2 and view.inputs[2] else None
    if bias is not None and np.any(bias):
        lead = list(range(1, axes[0]))
        summed = b.reduce("ReduceSum", g[0], lead, keepdims=False, hint="g_bias") if lead else g[0]
        product = b.op("Mul", [summed, b.const(bias.astype(np.float64), hint="b")], "b_grad")
        grad_bias = b.op("Reshape", [product, b.ints([0, -1])], "b_grad_units")
    return Backward(_none_after(g_x, view), grad_bias)
