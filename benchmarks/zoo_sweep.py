"""The zoo sweep: export, compile and explain every model of the zoo and print one table row per case.

    .venv/bin/python benchmarks/zoo_sweep.py [NAME ...] [--exporter legacy|dynamo] [--weights untrained|trained]
                                             [--source timm|keras|sklearn] [--jobs N] [--markdown OUT.md]
                                             [--json OUT.json] [--compact OUT.md]

Sources: timm's CNNs (tests/timm_zoo.py; 64x64 inputs, untrained and trained-like weights, both torch exporters),
the Keras models exported through tf2onnx (tests/data/keras/, made by benchmarks/export_keras.py) and scikit-learn
models through skl2onnx (tests/sklearn_zoo.py). Each case is compiled with epsilon_plus and explained on a batch of
two; the row gives the status (tests/zoo_sweep_runs.py says what each means), the conservation error (max over the
batch of |inputs + biases + stabilizer - total| / |total|), the stabilizer's and the biases' shares of the total
(mean over the batch), the compiled logits' error against the source framework, the source's own float32 error (torch
float32 against float64 logits: above 1e-4 the source is ill-conditioned), and the compile time. Every timm
model runs in a fresh process (torch's exporters keep state).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

COLUMNS = ["model", "family", "exporter", "weights", "status", "conservation", "stabilizer", "bias",
           "output error", "source float32 error", "compile s"]
FORMATS = {"conservation": "{:.1e}", "stabilizer": "{:+.1%}", "bias": "{:+.1%}", "output error": "{:.0e}",
           "source float32 error": "{:.0e}", "compile s": "{:.2f}"}


def timm_model_rows(name: str, exporters: list, weights: list) -> list:
    """Every (weights, exporter) row of one timm model (run in a child process)."""
    warnings.simplefilter("ignore")
    from zoo_sweep_runs import timm_row
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for w in weights:
            for exporter in exporters:
                rows.append(timm_row(name, w, exporter, Path(folder)))
    return rows


def format_rows(rows: list, header: bool, columns: list = COLUMNS) -> str:
    """Markdown table rows (the header too when asked)."""
    lines = []
    if header:
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [FORMATS.get(c, "{}").format(r[c]) if c in r else "-" for c in columns]
        lines.append("| " + " | ".join(cells).replace("\n", " / ") + " |")
    return "\n".join(lines)


COMPACT = ["model", "family", "exporter", "status", "stabilizer"]


def compact_rows(rows: list) -> list:
    """One row per (model, exporter): the weight states' statuses and stabilizer shares joined as `untrained /
    trained` (README's zoo table)."""
    merged: dict = {}
    for r in rows:
        key = (r["model"], r.get("exporter", "-"))
        entry = merged.setdefault(key, {"model": r["model"], "family": r["family"], "exporter": key[1],
                                        "status": [], "stabilizer": []})
        entry["status"].append(r["status"])
        entry["stabilizer"].append(FORMATS["stabilizer"].format(r["stabilizer"]) if "stabilizer" in r else "-")
    out = []
    for entry in merged.values():
        statuses = entry["status"]
        status = statuses[0] if len(set(statuses)) == 1 else " / ".join(statuses)
        out.append({**entry, "status": status, "stabilizer": " / ".join(entry["stabilizer"])})
    return out


def format_compact(rows: list) -> str:
    """The compact markdown table of compact_rows (the stabilizer column already formatted)."""
    lines = ["| " + " | ".join(COMPACT) + " |", "|" + "---|" * len(COMPACT)]
    for r in compact_rows(rows):
        lines.append("| " + " | ".join(str(r[c]) for c in COMPACT).replace("\n", " / ") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the sweep, print the table as it grows and a summary; exit 1 if any case is not ok."""
    from timm_zoo import WEIGHTS, ZOO
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models to run (default: all of the chosen sources)")
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], action="append")
    parser.add_argument("--weights", choices=list(WEIGHTS), action="append")
    parser.add_argument("--source", choices=["timm", "keras", "sklearn"], action="append")
    parser.add_argument("--jobs", type=int, default=1, help="timm models exported and explained at once")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    parser.add_argument("--compact", type=Path, help="also write one row per model and exporter (README's table)")
    args = parser.parse_args(argv)
    exporters = args.exporter or ["legacy", "dynamo"]
    weights = args.weights or list(WEIGHTS)
    sources = args.source or ["timm", "keras", "sklearn"]
    rows: list = []

    def emit(new: list) -> None:
        print(format_rows(new, header=not rows), flush=True)
        rows.extend(new)

    if "timm" in sources:
        names = [n for n in args.names if n in ZOO] if args.names else list(ZOO)
        order = {name: i for i, name in enumerate(names)}
        context = multiprocessing.get_context("spawn")
        # a fresh process per model (torch's exporters keep state); --jobs models at a time
        with cf.ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
            futures = {pool.submit(timm_model_rows, name, exporters, weights): name for name in names}
            for future in cf.as_completed(futures):
                name = futures[future]
                try:
                    emit(future.result())
                except Exception as exc:  # the child died (memory): say so and go on
                    emit([{"model": name, "family": ZOO[name].family, "status": f"crashed: {exc!r}"}])
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
        rows.sort(key=lambda r: order[r["model"]])
    if "keras" in sources:
        from keras_zoo import keras_rows
        emit([r for r in keras_rows() if not args.names or r["model"] in args.names])
    if "sklearn" in sources:
        from sklearn_zoo import sklearn_rows
        emit([r for r in sklearn_rows() if not args.names or r["model"] in args.names])
    ok = sum(r["status"] == "ok" for r in rows)
    ill = sum(r["status"] == "ill-conditioned source" for r in rows)
    print(f"\n{ok} of {len(rows)} cases compile, reproduce the source's output and conserve to 1e-4 (epsilon_plus; "
          f"attnlrp for the transformer families)" + (f"; {ill} more conserve but their source is ill-conditioned in "
                                                      "float32" if ill else ""))
    if args.markdown:
        args.markdown.write_text(format_rows(rows, header=True) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.compact:
        args.compact.write_text(format_compact(rows) + "\n")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
