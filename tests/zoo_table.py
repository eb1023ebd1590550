"""Print the zoo table: model, exporter, composite, nodes, compile time, parity and conservation errors.

Run: /tmp/venv/bin/python tests/zoo_table.py [model ...]   (the measurements tests/test_models_zoo.py asserts on)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_utils import EXPORTERS  # noqa: E402
from zoo import ZOO  # noqa: E402  (installs the torchvision stand-in zennit needs)
from zoo_eval import COMPOSITES, ZooRuns  # noqa: E402

HEADER = ("model", "exporter", "composite", "nodes", "compiled nodes", "compile s", "parity f32", "parity f64",
          "conservation f32", "conservation f64", "Zennit f32 vs f64")


def _error(exc: Exception) -> str:
    """One line naming the failure."""
    return f"FAIL {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def lines(names: list) -> list:
    """One table line per model, exporter and composite (a failure is reported in the line, not raised)."""
    runs = ZooRuns(Path(tempfile.mkdtemp()))
    out = []
    for name in names:
        for exporter in EXPORTERS:
            for composite in COMPOSITES:
                cells = [name, exporter, composite]
                try:
                    row, _ = runs.result(name, exporter, composite)
                except Exception as exc:  # report and go on
                    out.append(cells + [_error(exc)])
                    continue
                out.append(cells + [str(row.nodes), str(row.compiled_nodes), f"{row.compile_s:.2f}",
                                    f"{row.parity:.1e}", f"{row.parity_f64:.1e}", f"{row.conservation:.1e}",
                                    f"{row.conservation_f64:.1e}", f"{row.zennit_f32:.1e}"])
    return out


def main() -> None:
    """Print the table in Markdown."""
    import zennit  # noqa: F401  (after the stand-in is installed)
    names = sys.argv[1:] or list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; the zoo has: {', '.join(ZOO)}")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for line in lines(names):
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
