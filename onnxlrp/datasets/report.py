"""The data-set bias table: over every row of a run, the mean share of the explained logit that each bias node,
the inputs and the stabilizer take, overall and per group (class label, predicted or explained class)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import OnnxLrpError
from .manifest import load_manifest

GROUPINGS = ("label", "predicted", "target")


@dataclass
class Term:
    """One row of the table: a Parquet column and what it is."""

    column: str
    name: str
    kind: str       # "bias", "biases", "inputs", "stabilizer"
    op: str = ""
    rule: str = ""


@dataclass
class GroupStats:
    """Per group: samples, mean relevance of every term, mean share of the explained logit (value / total) over
    the samples whose total is not 0, and the mean explained logit."""

    group: str
    samples: int
    shared: int            # samples whose total is not 0 (the shares' denominator)
    mean: np.ndarray       # per term
    share: np.ndarray      # per term
    logit: float


@dataclass
class DatasetReport:
    """The table: terms (rows) x groups (all, then one per class)."""

    folder: Path
    by: Optional[str]
    terms: list
    groups: list           # GroupStats, "all" first
    manifest: dict


def report_terms(manifest: dict) -> list:
    """Bias nodes in graph order, then all biases, the inputs and the stabilizer."""
    terms = [Term(column, info["node"], "bias", info.get("op", ""), info.get("rule", ""))
             for column, info in manifest["columns"]["bias"].items()]
    return terms + [Term("biases", "all biases", "biases"), Term("inputs", "inputs", "inputs"),
                    Term("stabilizer", "stabilizer", "stabilizer")]


def _committed_files(folder: Path, manifest: dict) -> list:
    """The shard files the manifest lists (a shard still being written is not read)."""
    files = [folder / s["file"] for s in manifest["shards"]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise OnnxLrpError(f"{folder} lacks shard file(s) its manifest lists: {', '.join(missing[:3])}")
    return files


def dataset_report(folder, by: Optional[str] = None) -> DatasetReport:
    """Read the scalar columns of every committed shard (streaming) and compute the table."""
    import pyarrow.dataset as pads
    folder = Path(folder)
    manifest = load_manifest(folder)
    if manifest is None:
        raise OnnxLrpError(f"{folder} holds no onnxlrp data-set run (no _manifest.json): run explain-dataset first")
    if by is not None and by not in GROUPINGS:
        raise OnnxLrpError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    terms = report_terms(manifest)
    files = _committed_files(folder, manifest)
    if by is None:
        by = "label" if manifest["settings"]["data"].get("labels") or manifest.get("classes") else "predicted"
    columns = [t.column for t in terms] + ["total", by]
    k = len(terms)
    sums: dict = {}   # group -> [samples, shared, value sums (k), share sums (k), total sum]

    def add(key, values: np.ndarray, shares: np.ndarray, ok: np.ndarray, totals: np.ndarray) -> None:
        entry = sums.setdefault(key, [0, 0, np.zeros(k), np.zeros(k), 0.0])
        entry[0] += len(totals)
        entry[1] += int(ok.sum())
        entry[2] += values.sum(axis=0)
        entry[3] += shares[ok].sum(axis=0)
        entry[4] += float(totals.sum())

    if files:
        for batch in pads.dataset([str(f) for f in files], format="parquet").to_batches(columns=columns):
            if batch.num_rows == 0:
                continue
            values = np.column_stack([batch.column(t.column).to_numpy(zero_copy_only=False) for t in terms])
            totals = batch.column("total").to_numpy(zero_copy_only=False)
            ok = totals != 0
            shares = np.zeros_like(values)
            shares[ok] = values[ok] / totals[ok, None]
            add(None, values, shares, ok, totals)
            keys = batch.column(by).to_numpy(zero_copy_only=False)
            valid = ~np.isnan(keys.astype(np.float64))
            for key in np.unique(keys[valid]).astype(np.int64):
                rows = valid & (keys == key)
                add(int(key), values[rows], shares[rows], ok[rows], totals[rows])
    classes = manifest.get("classes") or []
    groups = []
    for key in [None] + sorted(k for k in sums if k is not None):
        if key not in sums:
            continue
        samples, shared, value_sum, share_sum, total_sum = sums[key]
        name = "all" if key is None else (f"{key} ({classes[key]})" if by == "label" and key < len(classes) else
                                          str(key))
        groups.append(GroupStats(group=name, samples=samples, shared=shared, mean=value_sum / max(samples, 1),
                                 share=share_sum / shared if shared else np.full(k, np.nan),
                                 logit=total_sum / max(samples, 1)))
    return DatasetReport(folder=folder, by=by, terms=terms, groups=groups, manifest=manifest)


def report_records(report: DatasetReport) -> list:
    """Long format: one record per group and term."""
    return [{"group": g.group, "samples": g.samples, "term": t.name, "kind": t.kind, "op": t.op, "rule": t.rule,
             "mean_relevance": float(g.mean[i]), "mean_share": float(g.share[i])}
            for g in report.groups for i, t in enumerate(report.terms)]


def report_rich_table(report: DatasetReport, max_groups: int = 10):
    """Terms as rows; the mean relevance over all samples, then the mean share (in %) of the explained logit over
    all samples and over each of the max_groups largest groups as columns."""
    from rich.table import Table
    settings = report.manifest["settings"]
    shown = report.groups[:1] + sorted(sorted(report.groups[1:], key=lambda g: -g.samples)[:max_groups],
                                       key=lambda g: report.groups.index(g))
    samples = report.groups[0].samples if report.groups else 0
    title = (f"data-set bias table: {report.folder}, {samples} samples, {settings['composite']}; mean share of the "
             f"explained logit in %, overall and by {report.by} (n = samples)")
    table = Table(title=title, title_justify="left")
    table.add_column("term", overflow="fold", max_width=36)
    table.add_column("mean", justify="right")
    for g in shown:
        table.add_column(f"{g.group}\nn={g.samples}", justify="right")
    for i, t in enumerate(report.terms):
        table.add_row(_short_name(t.name), f"{report.groups[0].mean[i]:+.4g}" if report.groups else "-",
                      *[_percent(g.share[i]) for g in shown], style=None if t.kind == "bias" else "bold")
    table.add_row("explained logit", f"{report.groups[0].logit:+.4g}" if report.groups else "-",
                  *[f"{g.logit:.3g}" for g in shown], style="dim")
    if len(report.groups) - 1 > max_groups:
        table.caption = (f"{len(report.groups) - 1 - max_groups} smaller group(s) not shown: --groups N, or "
                         f"--format csv for all")
    return table


def _short_name(name: str, width: int = 36) -> str:
    """A node name that fits a column: its end, where the distinguishing part usually is."""
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _percent(value: float) -> str:
    """A share as a percentage with one decimal."""
    return "-" if not np.isfinite(value) else f"{100 * value:.1f}"
