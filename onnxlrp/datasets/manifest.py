"""The run's record in OUT/: _manifest.json (what was explained how, which shards are done) and _failed.jsonl.

Both names start with '_' so that pandas, pyarrow, polars, Spark and Ray, reading OUT/ as a Parquet data set, skip
them (the Hadoop convention, as for _SUCCESS)."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

from ..errors import OnnxLrpError

MANIFEST = "_manifest.json"
FAILED = "_failed.jsonl"
FORMAT = "onnxlrp-dataset/1"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2 ** 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_plan(samples: int, shard_size: int) -> list:
    """[(shard, first, stop)] covering [0, samples)."""
    return [(k, first, min(first + shard_size, samples)) for k, first in enumerate(range(0, samples, shard_size))]


def load_manifest(folder: Path) -> Optional[dict]:
    """The manifest of a run in folder, None if there is none."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxLrpError(f"{path} is not a readable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise OnnxLrpError(f"{path} is not an onnxlrp data-set manifest (format {FORMAT})")
    return manifest


def save_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest atomically (a reader never sees half a file)."""
    path = Path(folder) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp.write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def identity_difference(old: dict, new: dict) -> Optional[str]:
    """'composite: epsilon_plus (in OUT) vs epsilon (now)' for the first setting that differs, None if none."""
    for key in sorted(set(old) | set(new)):
        if key == "shard_size" and new.get(key) is None:
            continue
        same = json.dumps(old.get(key), sort_keys=True, default=str) == json.dumps(new.get(key), sort_keys=True,
                                                                                   default=str)
        if not same:
            return f"{key}: {_short(old.get(key))} (in the folder) vs {_short(new.get(key))} (now)"
    return None


def _short(value) -> str:
    """A setting as short text."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def append_failures(folder: Path, records: Iterable[dict]) -> None:
    """Append failure records (one JSON object per line) and flush them to disk."""
    lines = "".join(json.dumps(r, default=str) + "\n" for r in records)
    if not lines:
        return
    with open(Path(folder) / FAILED, "a", encoding="utf-8") as handle:
        handle.write(lines)
        handle.flush()
        os.fsync(handle.fileno())


def read_failures(folder: Path) -> list:
    """Every failure record of a run."""
    path = Path(folder) / FAILED
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def keep_failures_of(folder: Path, shards: set) -> None:
    """Drop failure records of shards that were never committed (a run stopped between the two writes)."""
    path = Path(folder) / FAILED
    if not path.is_file():
        return
    kept = [r for r in read_failures(folder) if r.get("shard") in shards]
    tmp = path.with_name(f".{FAILED}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)
