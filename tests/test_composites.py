"""Composite loading: every shipped file loads; every validation error names file, entry and reason."""
from __future__ import annotations

import numpy as np
import pytest

import onnxlrp
from onnxlrp.composites import builtin_dir, builtin_names, load_composite
from onnxlrp.errors import CompositeError, RuleParameterError
from mlp_models import random_mlp

EXPECTED = {"base", "epsilon", "zero", "epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1",
            "epsilon_alpha2_beta1_flat", "epsilon_gamma_box"}


def test_every_shipped_composite_loads():
    """All of rules/*.toml load and validate; the issue's composites are all there."""
    assert EXPECTED <= set(builtin_names())
    for path in builtin_dir().glob("*.toml"):
        comp = load_composite(path.stem)
        assert comp.entries, path.name
        assert all(comp.rules_for_entries())


def _write(tmp_path, text: str, name: str = "mine.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


BAD = [
    ('[[match]]\ngroup = "convolution"\nrule = "alpha_beta"\nalpha = 2.0\nbeta = 2.0\n',
     RuleParameterError, r"mine\.toml, \[\[match\]\] entry 1: alpha - beta must equal 1"),
    ('[[match]]\ngroup = "convolution"\nrule = "gamma"\ngamma = -0.5\n',
     RuleParameterError, r"entry 1: gamma must be a finite number >= 0, got -0.5"),
    ('[[match]]\ngroup = "convolution"\nrule = "zbox"\nlow = 2.0\nhigh = 1.0\n',
     RuleParameterError, r"entry 1: low must not exceed high"),
    ('[[match]]\ngroup = "convolution"\nrule = "zbox"\nlow = [-1.0, -2.0]\nhigh = [1.0, 2.0, 3.0]\n',
     RuleParameterError, r"low has 2 channels but high has 3"),
    ('[[match]]\ngroup = "dense"\nrule = "epsilonn"\n', CompositeError, r"entry 1: unknown rule 'epsilonn'"),
    ('[[match]]\ngroup = "denseish"\nrule = "epsilon"\n', CompositeError, r"entry 1: unknown group 'denseish'"),
    ('[[match]]\ngroup = "dense"\nrule = "epsilon"\ncolour = 3\n', CompositeError, r"entry 1: unknown key 'colour'"),
    ('[[match]]\ngroup = "dense"\nrule = "epsilon"\nepsilon = "$nope"\n', CompositeError,
     r"entry 1: unknown parameter reference '\$nope'"),
    ('mystery = 1\n', CompositeError, r"mine\.toml: unknown key 'mystery'"),
    ('[[match]]\nrule = "epsilon"\n', CompositeError, r"entry 1: no selector"),
    ('[[match]]\ngroup = "dense"\n', CompositeError, r"entry 1: no 'rule' given"),
    ('[[match]]\ngroup = "dense"\nposition = "last"\nrule = "flat"\n', CompositeError, r"position must be \"first\""),
    ('[[match]]\nname_regex = "("\nrule = "flat"\n', CompositeError, r"invalid name_regex"),
    ('[[match]\n', CompositeError, r"mine\.toml: not valid TOML"),
    ('extends = "nonexistent_parent"\n', CompositeError, r"unknown composite 'nonexistent_parent'"),
]


@pytest.mark.parametrize("text,error,message", BAD, ids=[m for _, _, m in BAD])
def test_validation_errors_name_file_entry_and_reason(tmp_path, text, error, message):
    """Each malformed composite is refused when loaded, with a message naming what and where."""
    with pytest.raises(error, match=message):
        load_composite(_write(tmp_path, text))


def test_bad_parameter_override_is_refused():
    """Overrides are validated like file values: a per-channel list of the wrong length, low > high."""
    with pytest.raises(RuleParameterError, match="low must not exceed high"):
        load_composite("epsilon_gamma_box", {"low": 3.0, "high": -3.0})
    with pytest.raises(RuleParameterError, match="alpha - beta must equal 1"):
        load_composite("epsilon_alpha2_beta1", {"alpha": 3.0})


def test_per_channel_bounds_must_match_channel_count():
    """A per-channel list whose length is not the channel count is refused with the tensor's name."""
    from single_node import make_model
    w = np.ones((2, 3, 3, 3), np.float32)
    model = make_model("Conv", (1, 3, 5, 5), 4, {"W": w}, ["x", "W"])
    with pytest.raises(onnxlrp.OnnxLrpError, match="per-channel bounds have 2 values but input 'x' has 3 channels"):
        onnxlrp.compile(model, "epsilon_gamma_box", params={"low": [-1, -1], "high": [1, 1]})


def test_extends_puts_user_entries_first_and_unmatched_nodes_fail(tmp_path):
    """extends: the user's entries win; a node no entry matches is an error naming it."""
    mine = _write(tmp_path, 'extends = "epsilon"\n\n[[match]]\nname = "dense1"\nrule = "zplus"\n')
    comp = load_composite(mine)
    assert comp.entries[0].names == ("dense1",) and comp.parents == ["epsilon", "base"]
    compiled = onnxlrp.compile(random_mlp([6, 8, 4]), mine)
    rules = onnxlrp.compiled_metadata(compiled)["rules"]
    assert rules["dense1"].startswith("zplus") and rules["dense0"].startswith("epsilon")
    only_dense = _write(tmp_path, '[[match]]\ngroup = "dense"\nrule = "epsilon"\n', "only_dense.toml")
    with pytest.raises(onnxlrp.UnsupportedModelError, match=r"Relu x1 \(act0\): no entry of composite 'only_dense'"):
        onnxlrp.compile(random_mlp([6, 8, 4]), only_dense)


def test_selectors_op_regex_and_position(tmp_path):
    """op, name_regex and position='first' select the intended nodes."""
    text = ('extends = "epsilon"\n\n[[match]]\ngroup = "linear"\nposition = "first"\nrule = "wsquare"\n\n'
            '[[match]]\nname_regex = "^dense[12]$"\nop = "Gemm"\nrule = "flat"\n')
    compiled = onnxlrp.compile(random_mlp([6, 8, 8, 4]), _write(tmp_path, text))
    rules = onnxlrp.compiled_metadata(compiled)["rules"]
    assert rules["dense0"].startswith("wsquare")
    assert rules["dense1"].startswith("flat") and rules["dense2"].startswith("flat")
    assert rules["act0"] == "pass"


def test_rule_that_does_not_apply_to_an_op_is_reported(tmp_path):
    """zplus on a Relu is refused at compile time, naming node, rule and entry."""
    bad = _write(tmp_path, 'extends = "epsilon"\n\n[[match]]\nop = "Relu"\nrule = "zplus"\n')
    with pytest.raises(onnxlrp.UnsupportedModelError, match=r"Relu x2 \(act0, act1\): rule 'zplus' from mine.toml"):
        onnxlrp.compile(random_mlp([6, 8, 8, 4]), bad)
