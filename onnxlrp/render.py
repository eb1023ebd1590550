"""Rendering tables of records: rich tables for terminals, CSV and JSON for pipes and files."""
from __future__ import annotations

import csv
import io
import json
from typing import Optional, Sequence

import numpy as np

from .tables import ProfileRow, TableRow

FORMATS = ("table", "csv", "json")


def _units(top: list) -> str:
    """'3: +0.35, 6: +0.26' for a row's largest units."""
    return ", ".join(f"{label}: {value:+.4g}" for label, value in top)


def bias_records(rows: Sequence[TableRow]) -> list:
    """Bias-table rows as plain dicts (means over the batch)."""
    return [{"kind": r.kind, "name": r.name, "op": r.op, "rule": r.rule, "relevance": r.mean,
             "share": r.share, "top_units": _units(r.top)} for r in rows]


def profile_records(rows: Sequence[ProfileRow]) -> list:
    """Profile rows as plain dicts (means over the batch; max relative error over the batch)."""
    return [{"tensor": r.tensor, "node": r.node, "op": r.op, "relevance": float(r.relevance.mean()),
             "elsewhere": float(r.elsewhere.mean()), "bias_so_far": float(r.bias.mean()),
             "stabilizer_so_far": float(r.stabilizer.mean()), "sum": float(r.sum.mean()),
             "total": float(r.total.mean()), "relative_error": float(r.relative_error.max())} for r in rows]


def to_csv(records: Sequence[dict]) -> str:
    """Records as CSV with a header line (None as an empty field)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else [], lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in record.items()})
    return out.getvalue()


def to_json(records: Sequence[dict], **extra) -> str:
    """Records (and any extra top-level fields) as indented JSON."""
    return json.dumps({**extra, "rows": list(records)}, indent=2, default=_plain)


def _plain(value):
    """JSON fallback for numpy scalars and arrays."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _number(value: Optional[float], digits: int = 4) -> str:
    """A number for a table cell ('-' for None)."""
    return "-" if value is None else f"{value:.{digits}g}"


def _short_units(top: list) -> str:
    """Largest units for a terminal cell: '3: +0.319, 6: +0.23'."""
    return ", ".join(f"{label}: {value:+.3g}" for label, value in top)


def bias_rich_table(rows: Sequence[TableRow], title: str = ""):
    """A rich Table of the bias table (inputs, stabilizer and totals rows set apart)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=escape(title) if title else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("node", overflow="fold", ratio=3, min_width=12)
    table.add_column("op", no_wrap=True)
    table.add_column("rule", overflow="fold", ratio=2)
    table.add_column("relevance", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("largest units", overflow="fold", ratio=3)
    for i, r in enumerate(rows):
        share = "-" if r.share is None else f"{100 * r.share:.1f} %"
        digits = 3 if r.kind == "stabilizer" else 4
        last_bias = r.kind == "bias" and (i + 1 == len(rows) or rows[i + 1].kind != "bias")
        table.add_row(escape(r.name), r.op, escape(r.rule), _number(r.mean, digits), share, escape(_short_units(r.top)),
                      end_section=last_bias or r.kind == "stabilizer", style="bold" if r.kind == "total" else None)
    return table


def profile_rich_table(rows: Sequence[ProfileRow], title: str = ""):
    """A rich Table of the conservation profile."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    table = Table(title=escape(title) if title else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("tensor (producer op)", overflow="fold", min_width=16)
    for column in ("relevance\nhere", "elsewhere", "bias\nso far", "stab.\nso far", "sum", "rel.\nerror"):
        table.add_column(column, justify="right", no_wrap=True)
    for rec in profile_records(rows):
        table.add_row(f"{escape(rec['tensor'])} [dim]({rec['op']})[/dim]", _number(rec["relevance"]),
                      _number(rec["elsewhere"]), _number(rec["bias_so_far"]), _number(rec["stabilizer_so_far"], 2),
                      _number(rec["sum"], 5), f"{rec['relative_error']:.0e}")
    return table


def rich_text(table, width: int = 140) -> str:
    """Render a rich renderable to plain text (no colour), for logs and the demo."""
    from rich.console import Console
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, no_color=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"
