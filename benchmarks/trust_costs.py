"""What trust costs: the graph digest recomputed when a compiled file is loaded, and the conservation check that
every Explainer.explain() runs (explain(check=False) / --no-check skips it).

    .venv/bin/python benchmarks/trust_costs.py [--rounds 30] [--sizes-mb 1,100,500]

Prints two tables: digest seconds against the compiled file's size (with the whole Explainer load for scale),
and explain() with and without the check (median of --rounds calls, after a warm-up), with the check timed alone
(median of 10x --rounds calls: the difference of two explain() medians drowns in a shared machine's noise)."""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxlrp
from onnxlrp.trust import check_conservation, graph_digest

MODELS = Path(__file__).resolve().parent.parent / "models"


def dense_model(megabytes: int) -> onnx.ModelProto:
    """x (N, k) -> Gemm with a (k, 16) float32 weight of about `megabytes` MB -> y (N, 16)."""
    k = max(1, megabytes * 2 ** 20 // (16 * 4))
    w = (np.random.default_rng(0).normal(size=(k, 16)) / np.sqrt(k)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")], "dense",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def median_seconds(fn, rounds: int) -> float:
    """Median wall time of fn() over rounds calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def digest_table(sizes_mb: list, folder: Path) -> None:
    """Digest time and Explainer load time of compiled files of growing size."""
    print("| compiled model | file MB | digest s | Explainer(file) s | digest share |")
    print("|---|---|---|---|---|")
    cases = [("digits_mlp", onnx.load(str(MODELS / "digits_mlp.onnx"))),
             ("digits_cnn", onnx.load(str(MODELS / "digits_cnn.onnx")))]
    cases += [(f"dense {mb} MB", dense_model(mb)) for mb in sizes_mb]
    for name, model in cases:
        path = folder / f"{name.replace(' ', '_')}.onnx"
        compiled = onnxlrp.compile(model, "epsilon")
        onnx.save(compiled, str(path))
        del compiled
        loaded = onnx.load(str(path))
        digest = median_seconds(lambda: graph_digest(loaded), 3)
        load = median_seconds(lambda: onnxlrp.Explainer(path, providers=["CPUExecutionProvider"]), 1)
        print(f"| {name} | {path.stat().st_size / 2 ** 20:.1f} | {digest:.4f} | {load:.3f} | "
              f"{100 * digest / load:.0f} % |", flush=True)


def check_table(rounds: int) -> None:
    """explain() with and without the conservation check on the shipped models."""
    samples = np.load(MODELS / "digits_samples.npz")
    print("\n| model | batch | explain() ms, check on | check off | the check alone | its share of explain() |")
    print("|---|---|---|---|---|---|")
    for name, key in (("digits_mlp", "flat"), ("digits_cnn", "images")):
        explainer = onnxlrp.Explainer(MODELS / f"{name}.onnx", "epsilon_plus", providers=["CPUExecutionProvider"])
        for batch in (1, 16, 64):
            x = np.concatenate([samples[key]] * (1 + batch // len(samples[key])))[:batch]
            on = median_seconds(lambda: explainer.explain(x), rounds)
            off = median_seconds(lambda: explainer.explain(x, check=False), rounds)
            exp = explainer.explain(x, check=False)
            alone = median_seconds(lambda: check_conservation(exp.total, exp.relevance, exp.bias, exp.stabilizer),
                                   rounds * 10)
            print(f"| {name} | {batch} | {on * 1e3:.3f} | {off * 1e3:.3f} | {alone * 1e3:.3f} ms | "
                  f"{100 * alone / off:.1f} % |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sizes-mb", default="1,100,500")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        digest_table([int(v) for v in args.sizes_mb.split(",")], Path(folder))
    check_table(args.rounds)


if __name__ == "__main__":
    main()
