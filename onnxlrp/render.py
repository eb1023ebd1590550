"""Rendering tables of records: rich tables for terminals, CSV and JSON for pipes and files."""
from __future__ import annotations

import csv
import io
import json
from typing import Optional, Sequence

import numpy as np

from .names import short_name, short_rule
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


def _short_units(top: list, width: Optional[int] = None) -> str:
    """Largest units for a terminal cell, breakable only between units: '3:+0.319, 6:+0.23, block/Add:+4.5e-06'
    (a node name cut so that its unit fits in width characters)."""
    units = []
    for label, value in top:
        number = f"{value:+.3g}"
        number = f"{value:+.2g}" if "e" in number else number
        room = None if width is None else max(width - len(number) - 2, 6)  # the ':' and the ',' after the unit
        units.append(f"{_unit_label(label, room)}:{number}")
    return ", ".join(units)


def _unit_label(label: str, width: Optional[int] = None) -> str:
    """A unit label without inner spaces: '(0,4,5)' for an input position, a short node name for a node."""
    return label.replace(" ", "") if label.startswith("(") else short_name(label, width)


def profile_label(row: ProfileRow) -> str:
    """Where a profile row's relevance is: the producing node's short name (its op type added where the name does
    not end in it), 'input' names for graph inputs."""
    if not row.node:
        return short_name(row.tensor)
    label = short_name(row.node)
    return label if label.rsplit("/", 1)[-1].startswith(row.op) else f"{label} ({row.op})"


def _fit(labels: Sequence[str], width: int) -> list:
    """Labels cut to width characters (short_name style: the end of a path is kept)."""
    return [label if len(label) <= width else short_name(label, width) for label in labels]


def _name_width(total: int, other: Sequence[Sequence[str]], longest: int, flexible: int = 0) -> int:
    """Width left for the name column of a table `total` characters wide whose other columns hold the given cells
    (a column of `flexible` characters wraps and is not counted), at least 12, at most the longest name."""
    used = sum(max(len(line) for cell in cells for line in str(cell).split("\n")) for cells in other)
    return max(12, min(longest, total - used - _padding(len(other) + 1 + bool(flexible)) - flexible))


def _padding(columns: int) -> int:
    """Characters a SIMPLE_HEAD table without edge padding spends besides its cells: an edge on each side, and
    a space, a divider and a space between columns."""
    return 2 + 3 * (columns - 1)


def bias_rich_table(rows: Sequence[TableRow], title: str = "", width: int = 80):
    """A rich Table of the bias table for a terminal `width` characters wide: short node names and rules, units
    wrapped between units (inputs, stabilizer and totals rows set apart)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    names = [short_name(r.name) if r.kind == "bias" else r.name for r in rows]
    rules = [short_rule(r.rule) for r in rows]
    shares = ["-" if r.share is None else f"{100 * r.share:.1f} %" for r in rows]
    values = [_number(r.mean, 3 if r.kind == "stabilizer" else 4) for r in rows]
    fixed = [["op"] + [r.op for r in rows], ["rule"] + rules, ["relevance"] + values, ["share"] + shares]
    longest_units = max([len(u) for r in rows for u in _short_units(r.top).split(", ")] + [13])
    name_width = _name_width(width, fixed, max(len(n) for n in names + ["node"]), min(longest_units, 20))
    names = _fit(names, name_width)
    unit_width = max(width - name_width - sum(max(len(c) for c in col) for col in fixed) - _padding(6), 13)
    units = [_short_units(r.top, unit_width) for r in rows]
    table = Table(title=escape(title) if title else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("node", no_wrap=True)
    table.add_column("op", no_wrap=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("relevance", justify="right", no_wrap=True)
    table.add_column("share", justify="right", no_wrap=True)
    table.add_column("largest units", overflow="fold")
    for i, r in enumerate(rows):
        last_bias = r.kind == "bias" and (i + 1 == len(rows) or rows[i + 1].kind != "bias")
        table.add_row(escape(names[i]), r.op, escape(rules[i]), values[i], shares[i], escape(units[i]),
                      end_section=last_bias or r.kind == "stabilizer", style="bold" if r.kind == "total" else None)
    return table


PROFILE_COLUMNS = ("relevance\nhere", "else-\nwhere", "bias\nso far", "stab.\nso far", "sum", "rel.\nerror")


def profile_rich_table(rows: Sequence[ProfileRow], title: str = "", width: int = 80):
    """A rich Table of the conservation profile for a terminal `width` characters wide, one row per node output
    (named by the node's short name)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table
    records = profile_records(rows)
    cells = [[_number(rec["relevance"]), _number(rec["elsewhere"]), _number(rec["bias_so_far"]),
              _number(rec["stabilizer_so_far"], 2), _number(rec["sum"], 5), f"{rec['relative_error']:.0e}"]
             for rec in records]
    labels = [profile_label(r) for r in rows]
    columns = [[header] + [row[k] for row in cells] for k, header in enumerate(PROFILE_COLUMNS)]
    labels = _fit(labels, _name_width(width, columns, max(len(label) for label in labels + ["output of"])))
    table = Table(title=escape(title) if title else None, title_justify="left", pad_edge=False, box=box.SIMPLE_HEAD)
    table.add_column("output of", no_wrap=True)
    for column in PROFILE_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    for label, row in zip(labels, cells):
        table.add_row(escape(label), *row)
    return table


def rich_text(table, width: int = 140) -> str:
    """Render a rich renderable to plain text (no colour), for logs and the demo."""
    from rich.console import Console
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False, no_color=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines()) + "\n"
