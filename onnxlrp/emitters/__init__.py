"""Backward-relevance emitters, one per ONNX op type, in a registry keyed by op type.

An emitter receives the builder, a read-only NodeView, the node's rule, and the relevance value name for each
of the node's outputs (None where no relevance arrives). It returns an Emitted: one relevance name per node
input (None where none flows: weights, biases, shapes), plus the bias relevance (N, units) and the stabilizer
share (N,) it took, if any. Summing over several consumers is the compiler's business.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import helper

from ..builder import GraphBuilder
from ..graph import GraphIndex, TensorInfo
from ..rules import Rule


@dataclass
class NodeView:
    """What an emitter may know about its node: op, attributes with defaults, constants, shapes, relevance flags."""

    node: onnx.NodeProto
    index: GraphIndex
    relevant: frozenset  # names of the node's inputs that carry relevance
    nonnegative: frozenset = frozenset()  # names of values known to be >= 0 (after Relu, ...)
    vanishing: frozenset = frozenset()  # values whose relevance is provably 0 wherever they are 0 (vanishing.py)
    vanishing_nonpositive: frozenset = frozenset()  # ... wherever they are <= 0 (a Relu reads them)
    _inputs: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)
    _outputs: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    @property
    def op_type(self) -> str:
        """The node's op type."""
        return self.node.op_type

    @property
    def name(self) -> str:
        """The node's (canonical, unique) name."""
        return self.node.name

    @property
    def inputs(self) -> list:
        """Input value names ('' for an omitted optional input); a fresh list each time (callers may change it),
        copied from a tuple read once (emitters ask for it often)."""
        if self._inputs is None:
            self._inputs = tuple(self.node.input)
        return list(self._inputs)

    @property
    def outputs(self) -> list:
        """Output value names (a fresh list each time)."""
        if self._outputs is None:
            self._outputs = tuple(self.node.output)
        return list(self._outputs)

    def attr(self, name: str, default=None):
        """An attribute's value (ints, floats, strings decoded), or default."""
        for a in self.node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def const(self, name: str) -> Optional[np.ndarray]:
        """The constant array behind a value, None if it is not constant."""
        return self.index.constants.get(name) if name else None

    def not_constant(self, what: str, name: str) -> str:
        """'<what> <name> is not a constant (why: the input, dynamic axis or unfoldable node it comes from)'; a
        NeedsStaticSize (the error then says how to compile for one input size) when it reads a dynamic axis."""
        from ..fold import READS_DYNAMIC_AXIS, why_not_constant
        from ..specialise import NeedsStaticSize
        why = why_not_constant(self.index, name)
        text = f"{what} {name!r} is not a constant ({why})"
        return NeedsStaticSize(text) if why.startswith(READS_DYNAMIC_AXIS) else text

    def info(self, name: str) -> Optional[TensorInfo]:
        """Static type and shape of a value."""
        return self.index.info(name)

    def shape(self, name: str) -> Optional[tuple]:
        """Static shape of a value (None entries for unknown dims), None if the rank is unknown."""
        info = self.index.info(name)
        return info.shape if info is not None else None

    def is_relevant(self, name: str) -> bool:
        """True if relevance flows back into this input."""
        return name in self.relevant


@dataclass
class Emitted:
    """An emitter's result."""

    inputs: list                      # relevance name per node input, or None
    bias: Optional[str] = None        # (N, units) bias relevance
    stabilizer: Optional[str] = None  # (N,) stabilizer share (including relevance a rule had to drop)


EmitFn = Callable[[GraphBuilder, NodeView, Rule, list], Emitted]


@dataclass(frozen=True)
class EmitterSpec:
    """A registered emitter: the function, the op group it falls in, the rule types it accepts, a support check."""

    op_type: str
    fn: EmitFn
    group: Callable[[NodeView], str]
    rules: object  # tuple of rule classes, or a function NodeView -> tuple
    check: Optional[Callable[[NodeView], Optional[str]]] = None  # returns a reason when the node is unsupported
    # inputs that never receive relevance under the node's rule (None before rules are assigned): a gate's branch
    silent: Optional[Callable[[NodeView, Optional[Rule]], set]] = None
    domain: str = ""  # the op's domain ('' is ONNX's default domain, 'ai.onnx.ml' the classical-ML one)


REGISTRY: dict = {}  # (domain, op type) -> EmitterSpec


def canonical_domain(domain: str) -> str:
    """'' for ONNX's default domain however it is spelt ('' or 'ai.onnx'), the domain itself otherwise."""
    return "" if domain in ("", "ai.onnx") else domain


def register(op_types, *, group, rules, check=None, silent=None, domain: str = ""):
    """Decorator: register fn as the emitter of each op type of `domain` (default: ONNX's); group is a name or a
    function of the NodeView."""
    group_fn = group if callable(group) else (lambda view, _g=group: _g)
    names = [op_types] if isinstance(op_types, str) else list(op_types)
    domain = canonical_domain(domain)

    def wrap(fn: EmitFn) -> EmitFn:
        for op in names:
            if (domain, op) in REGISTRY:
                raise RuntimeError(f"emitter for {domain + '.' if domain else ''}{op} registered twice")
            REGISTRY[(domain, op)] = EmitterSpec(op, fn, group_fn, rules if callable(rules) else tuple(rules), check,
                                                 silent, domain)
        return fn

    return wrap


def accepted_rules(spec: EmitterSpec, view: NodeView) -> tuple:
    """The rule classes an emitter accepts for this node."""
    return spec.rules(view) if callable(spec.rules) else spec.rules


def lookup(op_type: str, domain: str = "") -> Optional[EmitterSpec]:
    """The emitter registered for an op type of a domain, None if there is none."""
    _load_families()
    return REGISTRY.get((canonical_domain(domain), op_type))


_LOADED = False


def _load_families() -> None:
    """Import every emitter family once so that their @register decorators run."""
    global _LOADED
    if _LOADED is True:
        return
    _LOADED = True
    from . import (arithmetic, attention, elementwise, linear, ml, normalization, pooling,  # noqa: F401
                   products, shape)
