"""Print the zoo table: model, exporter, nodes, compile time, parity error and conservation error per composite.

Run: /tmp/venv/bin/python tests/zoo_table.py [model ...]   (the same measurements test_models_zoo.py asserts on)
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _install_torchvision_stub  # noqa: E402

_install_torchvision_stub()

import zennit  # noqa: E402
import zennit.attribution  # noqa: E402,F401
import zennit.canonizers  # noqa: E402,F401
import zennit.composites  # noqa: E402,F401

from torch_utils import EXPORTERS  # noqa: E402
from zoo import ZOO, build  # noqa: E402
from zoo_eval import COMPOSITES, export_model, measure, zennit_reference  # noqa: E402

SHORT = {"epsilon_plus": "eps+", "epsilon_gamma_box": "gbox"}


def _error(exc: Exception) -> str:
    """One line naming the failure."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def rows(names: list) -> list:
    """One line per model and exporter: nodes, then compile time / parity / conservation per composite."""
    folder = Path(tempfile.mkdtemp())
    lines = []
    for name in names:
        model = build(name)
        refs = {c: zennit_reference(zennit, name, model, c) for c in COMPOSITES}
        for exporter in EXPORTERS:
            cells = [name, exporter]
            try:
                path = export_model(name, exporter, folder, model)
            except Exception as exc:  # report and go on
                lines.append(cells + [f"export failed: {_error(exc)}"])
                continue
            results, nodes = [], None
            for composite in COMPOSITES:
                try:
                    row, _ = measure(name, exporter, path, composite, model, refs[composite])
                    nodes = (row.nodes, row.compiled_nodes) if nodes is None else nodes
                    results += [f"{row.compiled_nodes}", f"{row.compile_s:.2f}", f"{row.parity:.1e}",
                                f"{row.conservation:.1e}"]
                except Exception as exc:
                    results += ["-", "-", "FAIL", _error(exc)]
            lines.append(cells + [str(nodes[0]) if nodes else "?"] + results)
    return lines


def main() -> None:
    """Print the table in Markdown."""
    names = sys.argv[1:] or list(ZOO)
    header = ["model", "exporter", "nodes"]
    for composite in COMPOSITES:
        s = SHORT[composite]
        header += [f"{s} compiled nodes", f"{s} compile s", f"{s} parity (rel L2)", f"{s} conservation"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in rows(names):
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
