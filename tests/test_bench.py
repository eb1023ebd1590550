"""`onnxlrp bench` and onnxlrp.bench (forward vs explanation timing), and a smoke run of benchmarks/compare.py.
No timing is asserted: only that the measurements exist, are consistent and errors are one readable line."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxlrp
from onnxlrp.bench import interleaved, parse_shapes, random_feeds, run_bench
from onnxlrp.cli import main
from onnxlrp.errors import InputError, OnnxLrpError

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def test_run_bench_measures_forward_and_explanation():
    result = run_bench(str(MODELS / "digits_mlp.onnx"), "epsilon", batch=3, repeats=3, warmup=1, threads=1, min_s=0.0)
    assert result.batch == 3 and result.rounds == 3 and result.provider == "CPUExecutionProvider"
    assert result.forward_s > 0 and result.explanation_s > 0 and result.explain_api_s > 0
    assert result.ratio == pytest.approx(result.explanation_s / result.forward_s)
    assert result.compiled_nodes > result.nodes > 0 and result.compile_s > 0


class _FakeClock:
    """perf_counter that advances by `step` seconds per call: interleaved() timed without a real clock."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def perf_counter(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.parametrize("step,rounds", [(1e-4, 60), (0.05, 3)])
def test_fast_models_get_more_rounds(monkeypatch, step, rounds):
    """A sub-millisecond call is timed for at least min_s seconds (up to 20x the rounds asked), so that its median
    is not one noisy round among three; a slow call stops at the rounds asked. A fake clock makes it exact."""
    import onnxlrp.bench as bench
    clock = _FakeClock(step)
    monkeypatch.setattr(bench.time, "perf_counter", clock.perf_counter)
    calls = {"forward": lambda: None, "explain": lambda: None}
    medians, timed = bench.interleaved(calls, warmup=1, repeats=3, min_s=0.3)
    assert timed == rounds
    assert medians == {"forward": pytest.approx(step), "explain": pytest.approx(step)}


def test_run_bench_times_the_shipped_mlp():
    """run_bench end to end on a real model: positive medians and at least the rounds asked."""
    result = run_bench(str(MODELS / "digits_mlp.onnx"), "epsilon", repeats=3, warmup=1, threads=1, min_s=0.0,
                       isolated=False)
    assert result.rounds == 3 and result.forward_s > 0 and result.explanation_s > 0


def test_cli_bench_prints_the_ratio_and_throughput():
    out = CliRunner().invoke(main, ["bench", str(MODELS / "digits_cnn.onnx"), "-b", "2", "-r", "3", "--threads", "1",
                                    "-c", "epsilon_gamma_box"])
    assert out.exit_code == 0, out.output
    assert "composite epsilon_gamma_box" in out.output and "batch 2" in out.output
    assert "x the forward pass" in out.output
    explain_ms = float(re.search(r"explain\(\): +([\d.]+) ms", out.output).group(1))
    samples, batches = (float(v) for v in re.search(
        r"throughput: +([\d.]+) samples explained/s \(([\d.]+) batches of 2/s\)", out.output).groups())
    assert samples == pytest.approx(2 * batches, rel=1e-3, abs=0.1)  # samples, not batches (it counted batches)
    assert batches == pytest.approx(1e3 / explain_ms, rel=0.01)


def test_cli_bench_refuses_a_compiled_model(tmp_path):
    compiled = tmp_path / "compiled.onnx"
    onnx.save(onnxlrp.compile(str(MODELS / "digits_mlp.onnx")), str(compiled))
    out = CliRunner().invoke(main, ["bench", str(compiled)])
    assert out.exit_code == 2 and "already compiled" in out.output and out.output.count("\n") == 1


def test_dynamic_axes_besides_the_batch_need_a_shape():
    class Spec:
        name, type, shape = "tokens", "tensor(float)", ["batch", "length", 8]
    with pytest.raises(InputError, match="--shape tokens="):
        random_feeds([Spec()], batch=2)
    feeds = random_feeds([Spec()], batch=2, shapes=parse_shapes(["tokens=2,5,8"], ["tokens"]))
    assert feeds["tokens"].shape == (2, 5, 8) and feeds["tokens"].dtype == np.float32
    assert parse_shapes(["1x3x4"], ["x"]) == {"x": (1, 3, 4)}
    for bad in (["a=1,2"], ["1,-2"], ["1,b"]):
        with pytest.raises(OnnxLrpError):
            parse_shapes(bad, ["x"])


def test_interleaved_rounds_and_budget():
    calls = {"a": lambda: None, "b": lambda: sum(range(1000))}
    medians, rounds = interleaved(calls, warmup=1, repeats=5)
    assert set(medians) == {"a", "b"} and rounds == 5
    _, rounds = interleaved(calls, warmup=0, repeats=50, budget_s=0.0)
    assert rounds == 3  # at least three rounds even when the budget is spent


def test_compare_script_quick_smoke(tmp_path):
    """benchmarks/compare.py on the MLP alone, batch 1, no Zennit/memory/depth: the table comes out. In a process
    of its own, as users run it: it sets up onnxruntime's process-wide thread pool."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compare.py"), "--models", "mlp", "--batches",
                           "1", "--repeats", "3", "--warmup", "1", "--no-zennit", "--no-memory", "--no-depth",
                           "--workdir", str(tmp_path), "--out", str(tmp_path / "t.md")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    text = (tmp_path / "t.md").read_text()
    assert "| mlp | 1 |" in text and "epsilon_gamma_box" in text and "compile s" in text
