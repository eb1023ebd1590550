"""AttnLRP and CP-LRP on exported Hugging Face transformers equal LXT 2.1 (its efficient mode) on the same weights.

Tiny BERT, GPT-2, Llama and ViT with perturbed random weights (transformer_models.py), exported with both torch
exporters, a batch of two with a target per sample (a padded sample for BERT; the last position for the language
models); LXT's relevance is computed in a separate process (lxt_reference.py: LXT patches transformers in place).
A representative subset runs here (BERT with both exporters; GPT-2, Llama and ViT legacy exports; CP-LRP on Llama
and ViT);
benchmarks/transformers_lxt_parity.py runs every model, composite and exporter (GPT-2 too) and prints the table.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxlrp
from transformer_models import CASES

HERE = Path(__file__).resolve().parent
KINDS = ["bert", "gpt2", "llama", "vit"]
CP_KINDS = ["llama", "vit"]  # LXT has no CP-LRP map for BERT
# (composite, kind, exporter): the dynamo exports of the other models run in benchmarks/transformers_lxt_parity.py
PARITY = ([("attnlrp", k, "legacy") for k in KINDS] + [("cp_lrp", k, "legacy") for k in CP_KINDS]
          + [("attnlrp", "bert", "dynamo")])


@pytest.fixture(scope="session")
def lxt_relevance(tmp_path_factory) -> dict:
    """LXT's relevance of every case, AttnLRP and CP-LRP, from one process (its patches are global)."""
    out = tmp_path_factory.mktemp("lxt") / "lxt.npz"
    done = subprocess.run([sys.executable, str(HERE / "lxt_reference.py"), str(out), *KINDS,
                           *[f"{k}:cp" for k in CP_KINDS]], capture_output=True, text=True, cwd=HERE)
    assert done.returncode == 0, f"lxt_reference.py failed ({done.returncode}): {done.stderr[-3000:]}"
    return dict(np.load(out))


def _relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / ||want||."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("composite,kind,exporter", PARITY, ids=["-".join(p) for p in PARITY])
def test_lxt_parity(kind, composite, exporter, exports, lxt_relevance):
    """Input relevance within 1e-3 (relative L2) of LXT's, the same explained logits, and the identity
    total = inputs + absorbed + stabilizer per sample (float32 precision)."""
    case = CASES[kind]
    key = kind if composite == "attnlrp" else f"{kind}:cp"
    exp = onnxlrp.Explainer(exports(kind, exporter), composite).explain(case.inputs, target=case.targets)
    name = "pixel_values" if kind == "vit" else "input_ids"
    want = lxt_relevance[f"{key}/relevance"]
    assert exp.relevance[name].shape == want.shape
    assert _relative_l2(exp.relevance[name], want) < 1e-3
    assert np.allclose(exp.total, lxt_relevance[f"{key}/logit"], rtol=1e-4, atol=1e-6)
    assert exp.conservation()["relative_error"].max() < 1e-4


@pytest.mark.parametrize("kind", ["bert"])
def test_token_relevance_is_the_summed_embedding_relevance(kind, exports):
    """R(input_ids) (N, T) equals the relevance arriving at the embedding Gather's output, summed over hidden."""
    case = CASES[kind]
    path = exports(kind, "legacy")
    import onnx
    model = onnx.load(str(path))
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[1] == "input_ids")
    explainer = onnxlrp.Explainer(path, "attnlrp", node_relevance=[gather.output[0]])
    exp = explainer.explain(case.inputs, target=case.targets)
    rows = exp.nodes[gather.output[0]].astype(np.float64)
    assert rows.shape == case.inputs["input_ids"].shape + (16,)
    assert np.allclose(exp.relevance["input_ids"], rows.sum(axis=-1), rtol=1e-5, atol=1e-7 * np.abs(rows).max())


def test_absorbed_relevance_is_reported_by_node(exports):
    """BERT: LayerNorm betas, the token-type / position embeddings, the biases and the softmax remainders keep
    relevance; each is one row of Explanation.bias under its node's name, with its op type in the bias table."""
    from onnxlrp.tables import bias_table
    case = CASES["bert"]
    exp = onnxlrp.Explainer(exports("bert", "legacy"), "attnlrp").explain(case.inputs, target=case.targets)
    ops = {name: op for name, op, *_ in exp.graph}
    kinds = {ops[name] for name in exp.bias}
    assert {"LayerNormalization", "Softmax", "Add", "Gemm"} <= kinds
    absorbed = sum(v.reshape(2, -1).sum(axis=1, dtype=np.float64) for v in exp.bias.values())
    inputs = exp.relevance["input_ids"].sum(axis=1, dtype=np.float64)
    assert np.allclose(inputs + absorbed + exp.stabilizer, exp.total, rtol=1e-4, atol=1e-6)
    rows = {row.name: row.op for row in bias_table(exp) if row.kind == "bias"}
    assert any(op == "Softmax" for op in rows.values()) and any(op == "LayerNormalization" for op in rows.values())
