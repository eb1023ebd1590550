"""Property: on random transformer graphs (attention with masks and rotary embeddings, fused and decomposed
norms, GELU / ReLU / gated MLPs) AttnLRP and CP-LRP keep total == inputs + absorbed + stabilizer (hypothesis)."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxlrp
from transformer_graphs import Block, transformer


@settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.sampled_from([1, 2]), layers=st.integers(1, 2),
       norm=st.sampled_from(["layernorm", "layernorm_decomposed", "rmsnorm"]),
       mlp=st.sampled_from(["gelu", "relu", "gated"]), mask=st.sampled_from(["none", "causal", "additive"]),
       rotary=st.booleans(), seq=st.integers(2, 5), seed=st.integers(0, 2 ** 16),
       composite=st.sampled_from(["attnlrp", "cp_lrp"]), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_random_transformers_conserve(heads, layers, norm, mlp, mask, rotary, seq, seed, composite, scale):
    """Every relevance, absorbed row and the stabilizer are finite and sum to the explained logit (1e-4)."""
    model = transformer(Block(hidden=8, heads=heads, layers=layers, norm=norm, mlp=mlp, mask=mask, rotary=rotary),
                        seq, seed)
    g = np.random.default_rng(seed)
    feeds = {"x": (g.normal(size=(3, seq, 8)) * scale).astype(np.float32)}
    if mask == "additive":
        feeds["mask"] = np.ones((3, seq), np.int64)
        feeds["mask"][1, -1] = 0
    exp = onnxlrp.Explainer(model, composite).explain(feeds)
    for value in (exp.total, exp.stabilizer, exp.relevance["x"], *exp.bias.values()):
        assert np.all(np.isfinite(value))
    assert set(exp.relevance) == {"x"}  # the mask input only feeds the mask: no relevance
    assert np.all(exp.conservation()["relative_error"] < 1e-4), exp.conservation()["relative_error"]
