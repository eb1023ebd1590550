"""K targets per sample in one run against one target: the cost of `explain(x, targets=K)` in backward units.

    .venv/bin/python benchmarks/many_targets.py                     # K = 10, the models below, batch 1
    .venv/bin/python benchmarks/many_targets.py --k 4,10 --models full:resnet18 --batch 8

One backward unit is what one explanation costs above the forward pass: B = T(1 target) - T(forward), the onnxruntime
forward pass of the original model. The issue's target for K = 10 is T(K targets) - T(forward) <= (1 + 0.8 K) B,
i.e. at most 9 units (the forward pass once, all K backward passes). Also printed: T(K) against K separate calls
(K x T(1)). Times are medians of the calling thread's CPU time over interleaved rounds, one intra-op thread per
session (see small_models.py: on a shared machine wall-clock time also counts the time the core is taken away).
Models: small_models.py's ('zoo:<name>' at --size, 'full:<name>' full width), 'mlp' (benchmarks/models.py), and the
shipped digits CNN ('digits').
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODELS = ("digits", "mlp", "zoo:resnet18", "zoo:mobilenet_v2", "full:resnet18")
COMPOSITES = ("epsilon_plus", "epsilon_gamma_box")
PARAMS = {"epsilon_gamma_box": {"low": -3.0, "high": 3.0}}


def source(name: str, size: int, folder: Path) -> Path:
    """The ONNX file of a benchmark model (exported once into folder)."""
    if name == "digits":
        return HERE.parent / "models" / "digits_cnn.onnx"
    if name == "mlp":
        import compare
        import models
        path = folder / "mlp.onnx"
        return path if path.exists() else compare.export(*models.build("mlp"), path)
    import small_models
    return small_models.export(name, size, folder)


def main(argv=None) -> int:
    """One row per model, composite and K."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--composites", default=",".join(COMPOSITES))
    parser.add_argument("--k", default="10", help="comma-separated numbers of targets")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=64, help="input size of the zoo models")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    import onnxruntime as ort

    import onnxlrp
    from onnxlrp.bench import session_options
    from small_models import cpu_medians
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="onnxlrp-targets-"))
    folder.mkdir(parents=True, exist_ok=True)
    print("| model | batch | composite | K | forward ms | 1 target ms | K targets ms | K separate calls ms "
          "| x separate | backward units (target <= 1 + 0.8K) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        path = source(name, args.size, folder)
        forward = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
        spec = forward.get_inputs()[0]
        shape = [args.batch] + [d if isinstance(d, int) else args.size for d in spec.shape[1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32).clip(-3, 3)
        for composite in args.composites.split(","):
            explainer = onnxlrp.Explainer(str(path), composite, params=PARAMS.get(composite),
                                          session_options=session_options(1))
            feeds = {spec.name: x}
            calls = {"forward": lambda: forward.run(None, feeds),
                     "one": lambda e=explainer: e.session.run(None, dict(feeds, lrp_target=np.full(args.batch, -1)))}
            for k in [int(v) for v in args.k.split(",")]:
                session, _, _ = explainer._many_session(k)
                columns = np.tile(-np.arange(1, k + 1, dtype=np.int64), (args.batch, 1))
                calls[f"k{k}"] = lambda s=session, c=columns: s.run(None, dict(feeds, lrp_target=c))
            cpu = cpu_medians(calls, 2, args.repeats)
            unit = cpu["one"] - cpu["forward"]
            for k in [int(v) for v in args.k.split(",")]:
                many = cpu[f"k{k}"]
                units = (many - cpu["forward"]) / unit
                target = 1 + 0.8 * k
                print(f"| {name} | {args.batch} | {composite} | {k} | {cpu['forward'] * 1e3:.2f} | "
                      f"{cpu['one'] * 1e3:.2f} | {many * 1e3:.2f} | {k * cpu['one'] * 1e3:.2f} | "
                      f"{many / (k * cpu['one']):.2f} | {units:.2f} ({'yes' if units <= target else 'NO'}) |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
