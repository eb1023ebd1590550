"""Dense float64 NumPy references of the LRP rules in matrix form, written straight from lrp-conventions.md.

A linear node is z = W x + b with W of shape (out, in); x (in,), R (out,). Each function returns
(R_x (in,), R_b (out,), stabilizer (scalar)) for one sample. Independent of onnxlrp's own rule code.
"""
from __future__ import annotations

import numpy as np


def sgn0(z):
    """sign with sign(0) = +1."""
    return np.where(z < 0, -1.0, 1.0)


def stab(z, eps):
    """z + eps * sgn0(z)."""
    return z + eps * sgn0(z)


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


def _divide(R, z, eps):
    """s = R / stab(z) and the stabilizer's elementwise share; with eps = 0, units with z == 0 pass nothing."""
    if eps == 0:
        zero = z == 0
        s = np.where(zero, 0.0, R / np.where(zero, 1.0, z))
        return s, np.where(zero, R, 0.0)
    s = R / stab(z, eps)
    return s, s * eps * sgn0(z)


def epsilon(W, b, x, R, eps=1e-6):
    """LRP-epsilon."""
    z = W @ x + b
    s, share = _divide(R, z, eps)
    return x * (W.T @ s), b * s, share.sum()


def zplus(W, b, x, R, eps=1e-6):
    """z+: z = W+ x+ + W- x- + b+."""
    z = _pos(W) @ _pos(x) + _neg(W) @ _neg(x) + _pos(b)
    s, share = _divide(R, z, eps)
    return _pos(x) * (_pos(W).T @ s) + _neg(x) * (_neg(W).T @ s), _pos(b) * s, share.sum()


def alpha_beta(W, b, x, R, alpha=2.0, beta=1.0, eps=1e-6):
    """alpha-beta with separately stabilized positive and negative parts."""
    za = _pos(W) @ _pos(x) + _neg(W) @ _neg(x) + _pos(b)
    zb = _neg(W) @ _pos(x) + _pos(W) @ _neg(x) + _neg(b)
    sa, sha = _divide(R, za, eps)
    sb, shb = _divide(R, zb, eps)
    Rx = alpha * (_pos(x) * (_pos(W).T @ sa) + _neg(x) * (_neg(W).T @ sa)) \
        - beta * (_pos(x) * (_neg(W).T @ sb) + _neg(x) * (_pos(W).T @ sb))
    Rb = alpha * _pos(b) * sa - beta * _neg(b) * sb
    return Rx, Rb, alpha * sha.sum() - beta * shb.sum()


def gamma(W, b, x, R, g=0.25, eps=1e-6):
    """Generalized gamma: separate treatment of units with z > 0 and z < 0; z == 0 passes nothing."""
    z = W @ x + b
    Wup, Wdn = W + g * _pos(W), W + g * _neg(W)
    bup, bdn = b + g * _pos(b), b + g * _neg(b)
    Rp, Rn = np.where(z > 0, R, 0.0), np.where(z < 0, R, 0.0)
    sp, shp = _divide(Rp, Wup @ _pos(x) + Wdn @ _neg(x) + bup, eps)
    sn, shn = _divide(Rn, Wdn @ _pos(x) + Wup @ _neg(x) + bdn, eps)
    Rx = _pos(x) * (Wup.T @ sp) + _neg(x) * (Wdn.T @ sp) + _pos(x) * (Wdn.T @ sn) + _neg(x) * (Wup.T @ sn)
    dropped = np.where(z == 0, R, 0.0).sum()
    return Rx, bup * sp + bdn * sn, shp.sum() + shn.sum() + dropped


def zbox(W, b, x, R, low, high, eps=1e-6):
    """z^B with bounds low/high (arrays shaped like x); biases cancel."""
    z = W @ x - _pos(W) @ low - _neg(W) @ high
    s, share = _divide(R, z, eps)
    Rx = x * (W.T @ s) - low * (_pos(W).T @ s) - high * (_neg(W).T @ s)
    return Rx, np.zeros_like(b), share.sum()


def wsquare(W, b, x, R, eps=1e-6):
    """w^2: z = W^2 1 + b^2."""
    W2 = W * W
    z = W2 @ np.ones_like(x) + b * b
    s, share = _divide(R, z, eps)
    return W2.T @ s, b * b * s, share.sum()


def flat(F, b, x, R, eps=1e-6):
    """flat: F is the op linearised with unit weights (ones over the receptive field), bias zero."""
    z = F @ np.ones_like(x)
    s, share = _divide(R, z, eps)
    return F.T @ s, np.zeros_like(b), share.sum()
