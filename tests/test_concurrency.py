"""Explainer.explain from several threads at once gives what one call at a time gives; repeated runs, and a second
explainer of the same model, give bit-identical results on the CPU provider."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from onnxlrp.runtime import Explainer

MODELS = Path(__file__).resolve().parent.parent / "models"
THREADS = 6
ROUNDS = 3


def fields(exp) -> dict:
    """Every array of an explanation, by a flat name."""
    out = {"output": exp.output, "target": exp.target, "total": exp.total, "stabilizer": exp.stabilizer}
    out.update({f"relevance/{k}": v for k, v in exp.relevance.items()})
    out.update({f"bias/{k}": v for k, v in exp.bias.items()})
    out.update({f"node/{k}": v for k, v in exp.nodes.items()})
    return out


def assert_identical(a, b) -> None:
    """Same fields, same dtypes, the same bits."""
    fa, fb = fields(a), fields(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        assert fa[name].tobytes() == fb[name].tobytes(), name


@pytest.fixture(scope="module", params=["digits_mlp", "digits_cnn"])
def setup(request):
    """An explainer (CPU) with per-tensor sums, and THREADS different batches with different targets."""
    samples = np.load(MODELS / "digits_samples.npz")
    x = samples["flat"] if request.param == "digits_mlp" else samples["images"]
    explainer = Explainer(MODELS / f"{request.param}.onnx", "epsilon_plus", node_relevance="sums",
                          providers=["CPUExecutionProvider"])
    batches = [(np.roll(x, k, axis=0)[: 4 + k % 3], None if k % 2 else (k % 10)) for k in range(THREADS)]
    return explainer, batches


def test_threads_at_once_give_what_one_at_a_time_gives(setup):
    explainer, batches = setup
    alone = [explainer.explain(x, t) for x, t in batches]
    jobs = [batches[k % THREADS] for k in range(THREADS * ROUNDS)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        together = list(pool.map(lambda job: explainer.explain(*job), jobs))
    for k, exp in enumerate(together):
        assert_identical(exp, alone[k % THREADS])


def test_repeated_runs_and_a_second_explainer_are_bit_identical(setup):
    explainer, batches = setup
    x, t = batches[0]
    first = explainer.explain(x, t)
    for _ in range(3):
        assert_identical(explainer.explain(x, t), first)
    again = Explainer(explainer.model, providers=["CPUExecutionProvider"])
    assert_identical(again.explain(x, t), first)
    assert np.all(first.conservation()["relative_error"] < 1e-5)
