"""AttnLRP / CP-LRP of onnxlrp against LXT 2.1 on every tiny transformer of tests/transformer_models.py (BERT, GPT-2,
Llama, HF ViT), both torch exporters: the table that tests/test_transformers_lxt.py checks a subset of.

    .venv/bin/python benchmarks/transformers_lxt_parity.py [--kinds bert gpt2 llama vit] [--exporters legacy dynamo]

LXT's relevance comes from tests/lxt_reference.py in its own process (LXT patches transformers in place). Columns:
relative L2 of the input relevance (token ids: summed over hidden; ViT: pixels), the largest relative difference of
the explained logits, and the identity's largest relative error over the batch (total = inputs + absorbed +
stabilizer).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

CP_KINDS = ("gpt2", "llama", "vit")  # LXT has no CP-LRP map for BERT


def lxt_reference(keys: list, folder: Path) -> dict:
    """LXT's relevance and logits of every key ('kind' or 'kind:cp'), computed in one separate process."""
    out = folder / "lxt.npz"
    subprocess.run([sys.executable, str(TESTS / "lxt_reference.py"), str(out), *keys], check=True,
                   capture_output=True, cwd=TESTS)
    return dict(np.load(out))


def main(argv=None) -> int:
    """Export, explain, compare with LXT, print one row per (model, exporter, composite)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["bert", "gpt2", "llama", "vit"])
    parser.add_argument("--exporters", nargs="+", default=["legacy", "dynamo"])
    args = parser.parse_args(argv)
    from conftest import _install_torchvision_stub
    _install_torchvision_stub()
    import onnxlrp
    from transformer_models import CASES, export
    folder = Path(tempfile.mkdtemp(prefix="lxt_parity_"))
    keys = list(args.kinds) + [f"{k}:cp" for k in args.kinds if k in CP_KINDS]
    reference = lxt_reference(keys, folder)
    print("| model | exporter | composite | relative L2 vs LXT | logits max rel. diff | identity max rel. error |")
    print("|---|---|---|---|---|---|")
    for kind in args.kinds:
        case = CASES[kind]
        name = "pixel_values" if kind == "vit" else "input_ids"
        for exporter in args.exporters:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = export(case.build(), kind, case.inputs, folder / f"{kind}_{exporter}.onnx",
                              exporter == "dynamo")
            for composite in ("attnlrp", "cp_lrp") if kind in CP_KINDS else ("attnlrp",):
                key = kind if composite == "attnlrp" else f"{kind}:cp"
                exp = onnxlrp.Explainer(path, composite).explain(case.inputs, target=case.targets)
                got = exp.relevance[name].astype(np.float64)
                want = reference[f"{key}/relevance"].astype(np.float64)
                l2 = np.linalg.norm(got - want) / np.linalg.norm(want)
                logit = reference[f"{key}/logit"].astype(np.float64)
                logits = np.max(np.abs(exp.total - logit) / np.maximum(np.abs(logit), 1e-12))
                identity = exp.conservation()["relative_error"].max()
                print(f"| {kind} | {exporter} | {composite} | {l2:.1e} | {logits:.1e} | {identity:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
